"""The timing loop: warm-up by time, then a run of a set number of iterations or seconds, at a
batch size and stream depth, collecting per-stage and end-to-end times; and the accuracy pass.

Clocks: stage times are what the cascade reports in ``Result.timings`` (``time.perf_counter`` on
host rows; the TensorRT cascade reports its device stages from CUDA events). End-to-end times are
always taken here with ``time.perf_counter`` around the call, so they include everything a caller
waits for (frame validation, copies, Python overhead).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpedge._bench.frames import BenchFrames
from bpedge._bench.stats import TimingStats, summarize
from bpedge._metrics import box_from_mask, box_iou, dice

#: Stage order in tables (stages a cascade does not report are left out; unknown ones follow).
STAGE_ORDER = ("upload", "preprocess", "detector", "crop", "segmenter", "paste", "download",
               "total")


@dataclass(frozen=True)
class RunSettings:
    """How long and how to run each row.

    ``iterations`` counts calls (a call is one frame, or one batch of ``batch`` frames; with
    ``depth`` > 1 one frame through the stream); ``seconds`` runs calls until that much time has
    passed. Exactly one of the two is set. ``rounds`` > 1 interleaves the rows (:func:`time_rows`):
    each round runs every row for ``1/rounds`` of its budget, so a burst of load from other jobs
    lands on all rows alike and the ratios between rows stay meaningful.
    """

    warmup_seconds: float = 2.0
    iterations: int | None = None
    seconds: float | None = 10.0
    batch: int = 1
    depth: int = 1
    rounds: int = 1

    def __post_init__(self) -> None:
        if (self.iterations is None) == (self.seconds is None):
            raise ValueError("give exactly one of --iterations and --seconds")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {self.iterations}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"--seconds must be > 0, got {self.seconds}")
        if not self.warmup_seconds >= 0:
            raise ValueError(f"--warmup-seconds must be >= 0, got {self.warmup_seconds}")
        if self.batch < 1 or self.depth < 1:
            raise ValueError(f"--batch and --depth must be >= 1, got {self.batch}, {self.depth}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if self.batch > 1 and self.depth > 1:
            raise ValueError("use --batch or --depth above 1, not both (a stream runs one frame "
                             "per call)")


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of one row over the benchmark frames.

    ``dice_positive``: mean Dice over BP-positive frames, full frame after paste-back (the method's
    number); ``box_iou_positive``: mean IoU of the detector box with the mask's box over the same
    frames; ``dice_all``: Kaggle's mean over all frames (empty vs empty = 1); ``detected``: share
    of BP-positive frames the detector called present. ``None`` where there is no such frame.
    """

    dice_positive: float | None
    box_iou_positive: float | None
    dice_all: float
    detected: float | None
    positives: int
    frames: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RowTimings:
    """Per-stage statistics (ms per frame), end to end (ms per frame), and throughput."""

    stages: dict[str, TimingStats]
    end_to_end: TimingStats
    frames: int
    wall_seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else float("inf")


def measure_accuracy(segment: Any, frames: BenchFrames) -> Accuracy:
    """Run every frame once through ``segment`` (a Segmenter) and score it against the masks."""
    dice_pos, ious, all_dice, detected = [], [], [], 0
    for image, mask in zip(frames.images, frames.masks):
        result = segment(image)
        all_dice.append(dice(result.mask, mask, empty=1.0))
        truth_box = box_from_mask(mask)
        if truth_box is None:
            continue
        dice_pos.append(dice(result.mask, mask, empty=1.0))
        ious.append(box_iou(result.box, truth_box))
        detected += bool(result.present)
    n_pos = len(dice_pos)
    return Accuracy(
        dice_positive=float(np.mean(dice_pos)) if n_pos else None,
        box_iou_positive=float(np.mean(ious)) if n_pos else None,
        dice_all=float(np.mean(all_dice)),
        detected=detected / n_pos if n_pos else None,
        positives=n_pos,
        frames=len(frames.images),
    )


def _keep_going(start: float, calls: int, settings: RunSettings) -> bool:
    if settings.iterations is not None:
        return calls < settings.iterations
    return calls == 0 or time.perf_counter() - start < float(settings.seconds or 0.0)


def _warm_up(segment: Any, images: Sequence[np.ndarray], settings: RunSettings) -> None:
    segment(images[0])  # at least one call, so session start-up never lands in the timings
    if settings.warmup_seconds > 0:
        _run(segment, images, dataclasses.replace(settings, iterations=None,
                                                  seconds=settings.warmup_seconds))


def time_row(segment: Any, frames: BenchFrames, settings: RunSettings) -> RowTimings:
    """Warm up for ``settings.warmup_seconds``, then time ``segment`` over the frames, cycled."""
    return time_rows([segment], frames, dataclasses.replace(settings, rounds=1))[0]


def time_rows(segments: Sequence[Any], frames: BenchFrames,
              settings: RunSettings) -> list[RowTimings]:
    """Warm every segmenter up, then time them in ``settings.rounds`` interleaved rounds (each
    round runs every row for its share of ``iterations`` or ``seconds``); one RowTimings per
    segmenter, over all its rounds."""
    for segment in segments:
        _warm_up(segment, frames.images, settings)
    rounds = settings.rounds
    if settings.iterations is not None:
        shares = [settings.iterations // rounds + (r < settings.iterations % rounds)
                  for r in range(rounds)]
        per_round = [dataclasses.replace(settings, iterations=max(n, 1)) for n in shares if n]
    else:
        per_round = [dataclasses.replace(settings, seconds=float(settings.seconds or 0) / rounds)
                     ] * rounds
    samples = [_Samples() for _ in segments]
    for round_settings in per_round:
        for segment, acc in zip(segments, samples):
            _run(segment, frames.images, round_settings, acc)
    return [acc.timings() for acc in samples]


class _Samples:
    """Per-call samples of one row, gathered over one or more rounds."""

    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {}
        self.e2e: list[float] = []
        self.frames = 0
        self.wall = 0.0

    def record(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self.stages.setdefault(stage, []).append(ms)

    def timings(self) -> RowTimings:
        ordered = [s for s in STAGE_ORDER if s in self.stages]
        ordered += sorted(s for s in self.stages if s not in STAGE_ORDER)
        return RowTimings(
            stages={s: summarize(self.stages[s]) for s in ordered},
            end_to_end=summarize(self.e2e),
            frames=self.frames,
            wall_seconds=self.wall,
        )


def _run(segment: Any, images: Sequence[np.ndarray], settings: RunSettings,
         acc: _Samples | None = None) -> _Samples:
    acc = acc if acc is not None else _Samples()
    start = time.perf_counter()
    if settings.depth > 1:
        def feed() -> Iterator[np.ndarray]:
            for calls, image in enumerate(itertools.cycle(images)):
                if not _keep_going(start, calls, settings):
                    return
                yield image

        last = start
        for result in segment.stream(feed(), depth=settings.depth):
            now = time.perf_counter()
            # In a stream, the time between results is what a frame costs the caller.
            acc.e2e.append((now - last) * 1e3)
            last = now
            acc.record(result.timings)
            acc.frames += 1
    else:
        cycle = itertools.cycle(images)
        calls = 0
        while _keep_going(start, calls, settings):
            chunk = [next(cycle) for _ in range(settings.batch)]
            t0 = time.perf_counter()
            if settings.batch == 1:
                results = [segment(chunk[0])]
            else:
                results = segment.segment_batch(chunk)
            acc.e2e.append((time.perf_counter() - t0) * 1e3 / settings.batch)
            # A batch's results share one per-frame timing: count it once per call.
            acc.record(results[0].timings)
            acc.frames += settings.batch
            calls += 1
    acc.wall += time.perf_counter() - start
    return acc
