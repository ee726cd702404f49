"""One benchmark run: the GEMM ceilings, every backend/precision on the same frames with the same
thread count (interleaved in rounds), the ceilings again, optionally tracking against per-frame
detection, and the record that holds it all."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bpedge._bench.backends import RowChoice, RowUnavailable, open_row
from bpedge._bench.ceiling import measure_ceiling
from bpedge._bench.frames import BenchFrames
from bpedge._bench.harness import Accuracy, RowTimings, RunSettings, measure_accuracy, time_rows
from bpedge._bench.machine import library_versions, machine_info
from bpedge._bench.record import (
    MODEL_STAGES,
    BenchRecord,
    BenchRow,
    measured_row,
    skipped_row,
    with_speedups,
)
from bpedge._bench.tracking import measure_tracking
from bpedge._manifest_fields import now_iso
from bpedge._tracking import TrackOptions
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
    track: TrackOptions | None = None,
) -> BenchRecord:
    """Measure every choice on ``frames`` and return the record (rows in ``choices`` order).

    ``threads`` is the intra-op thread count of every CPU runtime (ONNX Runtime's session option
    and ``torch.set_num_threads``) and of the PyTorch GEMM ceiling, so rows compare like for like.
    A row that cannot run here is kept, skipped, with the reason. ``speed_workload``: the frames
    are only something to time (phantom frames the bundle never saw): the accuracy pass still
    runs, as a check that the runtimes agree, but the tables do not show it as a result. With
    ``track``, every CPU row but the PyTorch baseline is also run on the frames as sequences,
    tracked and per-frame (:mod:`bpedge._bench.tracking`).
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
    # higher is kept (on a shared machine one measurement can land in a busy moment). All rows are
    # open together and timed in interleaved rounds (settings.rounds).
    rows: list[BenchRow | tuple[RowChoice, RowTimings, Accuracy]] = []
    opened: list[tuple[RowChoice, Any, Accuracy]] = []
    tracking: dict[str, Any] = {}
    try:
        for choice in choices:
            try:
                segment = open_row(bundle, choice, threads, settings.batch)
            except RowUnavailable as exc:
                say(f"{choice.label}: skipped ({exc})")
                rows.append(skipped_row(choice, str(exc)))
                continue
            opened.append((choice, segment, None))  # type: ignore[arg-type]
            say(f"{choice.label}: accuracy pass over {len(frames.images)} frame(s)")
            opened[-1] = (choice, segment, measure_accuracy(segment, frames))
        if opened:
            say(f"timing {len(opened)} row(s): warm-up {settings.warmup_seconds:g} s each, then "
                + (f"{settings.iterations} iteration(s)" if settings.iterations
                   else f"{settings.seconds:g} s") + f" per row in {settings.rounds} round(s)")
            timed = time_rows([seg for _, seg, _ in opened], frames, settings)
            for (choice, _, accuracy), timings in zip(opened, timed):
                rows.append((choice, timings, accuracy))
        if track is not None:
            for choice, segment, _ in opened:
                if choice.backend in ("onnxruntime", "openvino"):
                    say(f"{choice.label}: tracking vs per-frame detection")
                    tracking[choice.label] = measure_tracking(segment, frames, track,
                                                              rounds=settings.rounds)
    finally:
        for _, segment, _ in opened:
            segment.close()
    order = {c: i for i, c in enumerate(choices)}
    rows.sort(key=lambda r: order[RowChoice(r.backend, r.precision) if isinstance(r, BenchRow)
                                  else r[0]])
    after = measure_ceiling(seconds=ceiling_seconds, threads=threads)
    ceiling = before if before.gflops >= after.gflops else after
    best = {p: max((c.for_precision(p) or 0.0) for c in (before, after)) or None
            for p in ("fp32", "fp16", "bf16", "int8")}
    finished = [r if isinstance(r, BenchRow) else measured_row(*r, flops, best[r[0].precision])
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
            "batch": settings.batch, "depth": settings.depth, "rounds": settings.rounds,
            "backends": [f"{c.backend} {c.precision}" for c in choices],
        },
        "bundle": {"path": str(Path(bundle_path).resolve()), "models": models,
                   "thresholds": {"score": bundle.manifest.thresholds.score,
                                  "mask": bundle.manifest.thresholds.mask}},
        "frames": {"source": frames.source, "count": len(frames.images),
                   "positives": frames.positives, "frame_hw": list(frames.frame_hw),
                   "speed_workload": speed_workload},
        "ceiling": {**ceiling.to_json(), "before_rows_gflops": before.gflops,
                    "after_rows_gflops": after.gflops,
                    "per_precision": best},
        "notes": list(notes),
        **({"tracking": tracking} if track is not None else {}),
    }
    return BenchRecord(context, tuple(with_speedups(finished)))
