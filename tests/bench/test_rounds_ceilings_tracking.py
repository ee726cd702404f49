"""Bench additions of issue 15: interleaved rounds, per-precision ceilings, OpenVINO/INT8 rows,
and the tracking comparison."""

from __future__ import annotations

import numpy as np
import pytest

from bpedge._bench.backends import parse_choices
from bpedge._bench.ceiling import measure_ceiling
from bpedge._bench.frames import BenchFrames
from bpedge._bench.harness import RunSettings, time_rows
from bpedge._bench.tracking import measure_tracking, sequences
from bpedge._result import Result
from bpedge._tracking import TrackOptions


class Recorder:
    """A fake Segmenter that logs which row ran each call."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def __call__(self, image: np.ndarray) -> Result:
        self.log.append(self.name)
        return Result(np.zeros_like(image), (0, 0, 1, 1), 0.9, True, {"total": 1.0})


def _frames(names=("1_1", "1_2", "2_1")) -> BenchFrames:
    images = tuple(np.full((8, 8), i, np.uint8) for i in range(len(names)))
    masks = tuple(np.zeros((8, 8), np.uint8) for _ in names)
    return BenchFrames(images, masks, tuple(names), "test")


def test_rounds_interleave_the_rows_and_split_the_budget():
    log: list[str] = []
    rows = [Recorder("a", log), Recorder("b", log)]
    settings = RunSettings(warmup_seconds=0, iterations=6, seconds=None, rounds=3)
    timings = time_rows(rows, _frames(), settings)
    timed = log[2:]  # one untimed warm-up call per row first
    assert timed == ["a", "a", "b", "b"] * 3
    assert [t.frames for t in timings] == [6, 6]
    with pytest.raises(ValueError, match="rounds"):
        RunSettings(rounds=0)


def test_choices_keep_only_what_each_backend_runs():
    choices = parse_choices("torch,onnxruntime,openvino,tensorrt", "fp32,fp16,bf16,int8")
    assert [(c.backend, c.precision) for c in choices] == [
        ("torch", "fp32"),
        ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8"),
        ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
        ("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8"),
    ]
    assert choices[5].label == "OpenVINO bf16"


def test_ceilings_per_precision():
    c = measure_ceiling(n=64, seconds=0.02, threads=1)
    assert c.for_precision("fp32") == c.gflops == c.for_precision("fp16")
    assert c.bf16_gflops is not None and c.bf16_gflops > 0
    assert c.int8_onnxruntime_gops is not None and c.int8_onnxruntime_gops > 0
    assert c.for_precision("int8") == max(c.int8_gops or 0.0, c.int8_onnxruntime_gops, c.gflops)
    assert c.for_precision("bf16") == max(c.bf16_gflops, c.gflops)
    assert set(c.to_json()) >= {"bf16_gflops", "int8_gops", "int8_onnxruntime_gops"}


def test_a_precision_without_native_arithmetic_is_read_against_the_float32_ceiling():
    # Measured on an AVX2-only EPYC: PyTorch's bf16 and int8 products take a reference path
    # (0.75 and 1.9 G op/s) while float32 reaches 70 GFLOP/s; every bf16/int8 row then read
    # 2,000% "of the ceiling".
    from bpedge._bench.ceiling import GemmCeiling

    slow = GemmCeiling(1024, 70.7, 67.3, 2, bf16_gflops=0.75, int8_gops=1.9,
                       int8_onnxruntime_gops=None)
    assert slow.for_precision("bf16") == slow.for_precision("int8") == 70.7
    native = GemmCeiling(1024, 207.1, 188.6, 2, bf16_gflops=418.9, int8_gops=802.5,
                         int8_onnxruntime_gops=950.0)
    assert native.for_precision("bf16") == 418.9 and native.for_precision("int8") == 950.0


def test_sequences_group_frames_by_subject():
    assert sequences(_frames(("3_1", "3_2", "4_1", "3_3"))) == [[0, 1, 3], [2]]


class TrackingFake:
    """stream() with and without track: tracked frames skip a 'detector' that costs time."""

    def stream(self, frames, depth, track=False):
        import time

        for image in frames:
            if not track:
                time.sleep(0.002)
            mask = np.zeros_like(image)
            mask[2:5, 2:5] = 255
            timings = {"total": 1.0} if track else {"detector": 1.0, "total": 1.0}
            yield Result(mask, (0, 0, 8, 8), 0.9, True, timings)


def test_tracking_measure_reports_fps_ratio_and_dice():
    frames = _frames(("1_1", "1_2", "1_3", "2_1"))
    frames = BenchFrames(frames.images, tuple(np.pad(np.full((3, 3), 255, np.uint8), ((2, 3),
                                                                                      (2, 3)))
                                              for _ in frames.images), frames.names, "test")
    out = measure_tracking(TrackingFake(), frames, TrackOptions(), rounds=2)
    assert out["sequences"] == 2 and out["frames"] == 4 and out["positives"] == 4
    assert out["fps_ratio"] > 1.0 and out["fps_ratio_median_of_pairs"] > 1.0
    assert out["cpu_time_ratio"] is None or out["cpu_time_ratio"] > 0
    assert out["dice_positive_tracked"] == pytest.approx(1.0)
    assert out["dice_change"] == pytest.approx(0.0)
    assert out["detector_share_tracked"] == 0.0


def test_tracking_measure_scores_masks_on_empty_frames_over_all_frames():
    # Frame 1_2 has no BP: the BP-frame Dice ignores the masks put on it, the all-frames Dice
    # (empty vs empty = 1) counts them as a miss.
    frames = _frames(("1_1", "1_2", "1_3", "2_1"))
    bp = np.pad(np.full((3, 3), 255, np.uint8), ((2, 3), (2, 3)))
    masks = tuple(np.zeros_like(bp) if name == "1_2" else bp for name in frames.names)
    out = measure_tracking(TrackingFake(), BenchFrames(frames.images, masks, frames.names, "t"),
                           TrackOptions(), rounds=1)
    assert out["positives"] == 3 and out["dice_positive_tracked"] == pytest.approx(1.0)
    assert out["dice_all_frames_tracked"] == pytest.approx(0.75)
    assert out["dice_all_frames_per_frame_detection"] == pytest.approx(0.75)


def test_tracking_measure_alternates_the_modes_sequence_by_sequence():
    # Load from other jobs comes in bursts of seconds: per-frame and tracked passes interleave at
    # the sequence level (and swap which goes first), so a burst falls on both.
    calls: list[tuple[str, bool]] = []

    class Logging(TrackingFake):
        def stream(self, frames, depth, track=False):
            frames = list(frames)
            calls.append((str(len(frames)), bool(track)))
            yield from super().stream(iter(frames), depth, track)

    frames = _frames(("1_1", "1_2", "1_3", "2_1"))
    measure_tracking(Logging(), frames, TrackOptions(), rounds=2)
    assert calls[1:] == [("3", False), ("3", True), ("1", True), ("1", False),
                         ("3", True), ("3", False), ("1", False), ("1", True)]
