"""One benchmark run: the GEMM ceiling, each backend/precision in turn on the same frames with the
same thread count, the ceiling again, and the record that holds it all."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bpedge._bench.backends import RowChoice, RowUnavailable, open_row
from bpedge._bench.ceiling import measure_ceiling
from bpedge._bench.frames import BenchFrames
from bpedge._bench.harness import Accuracy, RowTimings, RunSettings, measure_accuracy, time_row
from bpedge._bench.machine import library_versions, machine_info
from bpedge._bench.record import (
    MODEL_STAGES,
    BenchRecord,
    BenchRow,
    measured_row,
    skipped_row,
    with_speedups,
)
from bpedge._manifest_fields import now_iso
from bpedge.bundle import Bundle


def run_bench(
    bundle_path: str | os.PathLike[str],
    frames: BenchFrames,
    choices: Sequence[RowChoice],
    settings: RunSettings,
    threads: int,
    *,
    ceiling_seconds: float = 1.0,
    notes: Sequence[str] = (),
    say: Callable[[str], None] = lambda line: None,
    speed_workload: bool = False,
) -> BenchRecord:
    """Measure every choice on ``frames`` and return the record (rows in ``choices`` order).

    ``threads`` is the intra-op thread count of every CPU runtime (ONNX Runtime's session option
    and ``torch.set_num_threads``) and of the PyTorch GEMM ceiling, so rows compare like for like.
    A row that cannot run here is kept, skipped, with the reason. ``speed_workload``: the frames
    are only something to time (phantom frames the bundle never saw): the accuracy pass still
    runs, as a check that the runtimes agree, but the tables do not show it as a result.
    """
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if not choices:
        raise ValueError("nothing to benchmark: no backend/precision chosen")
    bundle = Bundle.open(bundle_path)
    flops = {name: bundle.manifest.models[name].flops for name in MODEL_STAGES}
    say(f"measuring the float32 GEMM ceiling ({threads} thread(s))")
    before = measure_ceiling(seconds=ceiling_seconds, threads=threads)
    host = machine_info()

    # Rows are finished once the ceiling is known: it is measured before and after them and the
    # higher is kept (on a shared machine one measurement can land in a busy moment).
    rows: list[BenchRow | tuple[RowChoice, RowTimings, Accuracy]] = []
    for choice in choices:
        try:
            segment = open_row(bundle, choice, threads, settings.batch)
        except RowUnavailable as exc:
            say(f"{choice.label}: skipped ({exc})")
            rows.append(skipped_row(choice, str(exc)))
            continue
        try:
            say(f"{choice.label}: accuracy pass over {len(frames.images)} frame(s)")
            accuracy = measure_accuracy(segment, frames)
            say(f"{choice.label}: warm-up {settings.warmup_seconds:g} s, then "
                + (f"{settings.iterations} iteration(s)" if settings.iterations
                   else f"{settings.seconds:g} s"))
            timings = time_row(segment, frames, settings)
        finally:
            segment.close()
        rows.append((choice, timings, accuracy))
    after = measure_ceiling(seconds=ceiling_seconds, threads=threads)
    ceiling = before if before.gflops >= after.gflops else after
    finished = [r if isinstance(r, BenchRow) else measured_row(*r, flops, ceiling.gflops)
                for r in rows]

    models = {
        name: {"arch": bundle.manifest.models[name].arch,
               "flops_per_frame": bundle.manifest.models[name].flops,
               "params": bundle.manifest.models[name].params}
        for name in MODEL_STAGES
    }
    models["detector"]["input_hw"] = list(bundle.manifest.preprocessing.detector.input_hw)
    models["segmenter"]["input_hw"] = list(bundle.manifest.preprocessing.segmenter.crop_hw)
    context = {
        "created": now_iso(),
        "command": shlex.join(["bpedge", *sys.argv[1:]]) if Path(sys.argv[0]).name == "bpedge"
        else shlex.join(sys.argv),
        "machine": {**host.to_json(), "load_average_after": list(os.getloadavg())
                    if hasattr(os, "getloadavg") else None},
        "versions": library_versions(),
        "settings": {
            "threads": threads, "warmup_seconds": settings.warmup_seconds,
            "iterations": settings.iterations, "seconds": settings.seconds,
            "batch": settings.batch, "depth": settings.depth,
            "backends": [f"{c.backend} {c.precision}" for c in choices],
        },
        "bundle": {"path": str(Path(bundle_path).resolve()), "models": models,
                   "thresholds": {"score": bundle.manifest.thresholds.score,
                                  "mask": bundle.manifest.thresholds.mask}},
        "frames": {"source": frames.source, "count": len(frames.images),
                   "positives": frames.positives, "frame_hw": list(frames.frame_hw),
                   "speed_workload": speed_workload},
        "ceiling": {**ceiling.to_json(), "before_rows_gflops": before.gflops,
                    "after_rows_gflops": after.gflops},
        "notes": list(notes),
    }
    return BenchRecord(context, tuple(with_speedups(finished)))
