"""Tracking against per-frame detection on frame sequences: frames per second and Dice.

The benchmark frames are grouped into sequences by subject (the part of a frame's name before its
first ``_``: phantom and Kaggle frames are ``{subject}_{frame}``, in frame order), which is what a
subject is in this data: one video. Each pass runs every sequence through
``Segmenter.stream(depth=1)``, once with per-frame detection and once with ``track``; the two
alternate sequence by sequence for ``rounds`` rounds so that load from other jobs falls on both
alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bpedge._bench.frames import BenchFrames
from bpedge._metrics import dice
from bpedge._tracking import TrackOptions


def sequences(frames: BenchFrames) -> list[list[int]]:
    """Frame indices grouped by subject, in the order the frames come."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(frames.names):
        groups.setdefault(name.split("_", 1)[0], []).append(i)
    return list(groups.values())


def _run_sequence(segment: Any, frames: BenchFrames, seq: Sequence[int],
                  track: TrackOptions | bool) -> tuple[float, float, list[np.ndarray], int]:
    """Wall seconds, CPU seconds of this process (all its threads), masks, detector runs."""
    t0, c0 = time.perf_counter(), time.process_time()
    results = list(segment.stream((frames.images[i] for i in seq), depth=1, track=track))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (seconds, cpu, [r.mask for r in results],
            sum("detector" in r.timings for r in results))


def measure_tracking(segment: Any, frames: BenchFrames, options: TrackOptions,
                     rounds: int = 3) -> dict[str, Any]:
    """Per-frame detection vs tracking on ``segment``: FPS of each (frames over the summed wall
    time of its passes), the FPS ratio (and the median ratio of back-to-back runs of one
    sequence, and the ratio of the process's CPU time), mean Dice over BP-positive frames of each and over all
    frames (empty vs empty = 1), the mean Dice between the two runs' masks, and the share of frames
    on which the detector ran.

    The two modes alternate sequence by sequence (which goes first alternates too), not pass by
    pass, so a burst of load from other jobs (seconds long on a shared machine) falls on both."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    seqs = sequences(frames)
    order = [i for seq in seqs for i in seq]
    wall = {"per_frame": 0.0, "tracked": 0.0}
    cpu = {"per_frame": 0.0, "tracked": 0.0}
    masks: dict[str, list[np.ndarray]] = {"per_frame": [], "tracked": []}
    detections = {"per_frame": 0, "tracked": 0}
    _run_sequence(segment, frames, seqs[0], options)  # warm the crop-only path
    modes: tuple[tuple[str, TrackOptions | bool], ...] = (("per_frame", False),
                                                          ("tracked", options))
    pair_ratios = []  # per-frame seconds / tracked seconds of one sequence, run back to back
    for r in range(rounds):
        for k, seq in enumerate(seqs):
            pair = {}
            for mode, track in (modes if (r + k) % 2 == 0 else modes[::-1]):
                seconds, cpu_seconds, got, det = _run_sequence(segment, frames, seq, track)
                wall[mode] += seconds
                cpu[mode] += cpu_seconds
                pair[mode] = seconds
                if r == 0:
                    masks[mode] += got
                    detections[mode] += det
            pair_ratios.append(pair["per_frame"] / pair["tracked"])
    n = len(order)
    positives = [k for k, i in enumerate(order) if frames.masks[i].any()]

    def mean_dice(mode: str, ks: Sequence[int] | None = None) -> float | None:
        ks = positives if ks is None else ks
        if not ks:
            return None
        return float(np.mean([dice(masks[mode][k], frames.masks[order[k]], empty=1.0)
                              for k in ks]))

    fps = {mode: n * rounds / wall[mode] for mode in wall}
    per_frame_dice, tracked_dice = mean_dice("per_frame"), mean_dice("tracked")
    return {
        "sequences": len(seqs), "frames": n, "positives": len(positives), "rounds": rounds,
        "options": dict(options.__dict__),
        "fps_per_frame_detection": fps["per_frame"], "fps_tracked": fps["tracked"],
        "fps_ratio": fps["tracked"] / fps["per_frame"],
        # The median over (round, sequence) of the ratio of two runs made back to back: a burst
        # of load that hits one run of a pair moves this less than the summed ratio above.
        "fps_ratio_median_of_pairs": float(np.median(pair_ratios)),
        # CPU seconds of the whole process (model threads included) per-frame over tracked: the
        # work each mode costs, which waiting for cores that other jobs hold does not inflate.
        "cpu_time_ratio": cpu["per_frame"] / cpu["tracked"] if cpu["tracked"] > 0 else None,
        "dice_positive_per_frame_detection": per_frame_dice,
        "dice_positive_tracked": tracked_dice,
        "dice_change": (tracked_dice - per_frame_dice
                        if tracked_dice is not None and per_frame_dice is not None else None),
        # Every frame, empty-vs-empty scoring 1 (Kaggle's metric): a mask on a frame without the
        # BP costs here, which the BP-frame Dice above cannot show.
        "dice_all_frames_per_frame_detection": mean_dice("per_frame", range(n)),
        "dice_all_frames_tracked": mean_dice("tracked", range(n)),
        "mask_dice_tracked_vs_per_frame": float(np.mean([
            dice(a, b, empty=1.0) for a, b in zip(masks["tracked"], masks["per_frame"])])),
        "detector_share_tracked": detections["tracked"] / n,
    }
