"""Write the Markdown results table from ``bpedge bench --json`` files (stdout).

    python benchmarks/results_table.py benchmarks/results/cpu_*.json > benchmarks/results/README.md

Every number comes from the JSON files; nothing here measures anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bpedge._bench.record import BenchRecord, BenchRow, read_record


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _host_share(row: BenchRow) -> float | None:
    """Mean preprocess + crop + paste as a percentage of the mean end-to-end time."""
    if row.end_to_end is None or not all(k in row.stages for k in ("preprocess", "crop", "paste")):
        return None
    host = sum(row.stages[k].mean for k in ("preprocess", "crop", "paste"))
    return 100.0 * host / row.end_to_end.mean


def _targets(rec: BenchRecord) -> list[str]:
    """The issue-15 targets, read off this run's rows (ratios within the run)."""
    ran = [r for r in rec.rows if r.ran and r.end_to_end is not None and r.backend != "torch"
           and r.backend != "tensorrt"]
    if not ran:
        return []
    fastest = min(ran, key=lambda r: r.end_to_end.mean)  # type: ignore[union-attr]
    lines = ["", "Read off this run:", "",
             (f"- fastest CPU row: {fastest.label}, end to end "
              f"{_f(fastest.speedup.get('end_to_end_mean'), '{:.2f}x')} PyTorch eager (mean); "
              f"pre + crop + paste {_f(_host_share(fastest), '{:.1f}%')} of its end-to-end time")]
    ort32 = rec.row("onnxruntime", "fp32")
    for r in ran:
        if r.precision == "int8" and ort32 is not None and ort32.model_ms and r.model_ms:
            lines.append(f"- {r.label} models-only: {ort32.model_ms / r.model_ms:.2f}x ONNX "
                         "Runtime fp32")
    return lines


def _tracking(rec: BenchRecord) -> list[str]:
    tracking = rec.context.get("tracking") or {}
    if not tracking:
        return []
    lines = ["", ("Tracking against per-frame detection (frames as sequences, one per subject; "
                  "passes interleaved):"), "",
             ("| backend | FPS per-frame | FPS tracked | FPS ratio (median of back-to-back pairs; "
              "CPU time ratio) "
              "| Dice per-frame | Dice tracked "
              "| Dice change | all-frames Dice per-frame / tracked | detector ran on |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for label, t in tracking.items():
        lines.append(
            f"| {label} | {_f(t['fps_per_frame_detection'], '{:.1f}')} | "
            f"{_f(t['fps_tracked'], '{:.1f}')} | {_f(t['fps_ratio'], '{:.2f}x')} "
            f"({_f(t.get('fps_ratio_median_of_pairs'), '{:.2f}x')}; "
            f"{_f(t.get('cpu_time_ratio'), '{:.2f}x')}) | "
            f"{_f(t['dice_positive_per_frame_detection'], '{:.4f}')} | "
            f"{_f(t['dice_positive_tracked'], '{:.4f}')} | {_f(t['dice_change'], '{:+.4f}')} | "
            f"{_f(t.get('dice_all_frames_per_frame_detection'), '{:.4f}')} / "
            f"{_f(t.get('dice_all_frames_tracked'), '{:.4f}')} | "
            f"{100 * t['detector_share_tracked']:.0f}% of frames |")
    return lines


def section(path: Path, rec: BenchRecord) -> list[str]:
    c = rec.context
    m, s = c["machine"], c["settings"]
    load = m.get("load_average") or [None] * 3
    after = m.get("load_average_after") or [None] * 3
    models = c["bundle"]["models"]
    lines = [
        f"## {path.name}",
        "",
        *(f"> {note}" for note in c.get("notes", [])),
        "",
        f"- command: `{c['command']}`",
        (f"- machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']:.1f} GiB; "
        f"load average (1/5/15 min) before {', '.join(_f(v, '{:.1f}') for v in load)}, "
        f"after {', '.join(_f(v, '{:.1f}') for v in after)}"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in c["versions"].items() if v),
        f"- settings: {s['threads']} threads for every runtime, warm-up {s['warmup_seconds']} s, "
        + (f"{s['iterations']} iterations" if s["iterations"] else f"{s['seconds']} s")
        + f" per row, batch {s['batch']}, depth {s['depth']}, {s.get('rounds', 1)} interleaved "
        "round(s)",
        (f"- frames: {c['frames']['source']}; {c['frames']['positives']} of "
        f"{c['frames']['count']} show the BP"),
        (f"- models: detector {models['detector']['arch']} {models['detector']['input_hw']} "
        f"{models['detector']['flops_per_frame'] / 1e9:.2f} GFLOP/frame, segmenter "
        f"{models['segmenter']['arch']} {models['segmenter']['input_hw']} "
        f"{models['segmenter']['flops_per_frame'] / 1e9:.2f} GFLOP/frame"),
        (f"- float32 GEMM ceiling (n={c['ceiling']['n']}, the better of before and after the "
         f"rows): NumPy "
        f"{c['ceiling']['numpy_gflops']:.1f}, PyTorch {_f(c['ceiling']['torch_gflops'], '{:.1f}')}"
        " GFLOP/s" + (f"; bf16 GEMM {_f(c['ceiling'].get('bf16_gflops'), '{:.1f}')} GFLOP/s, "
                      f"int8 GEMM {_f(c['ceiling'].get('int8_gops'), '{:.1f}')} GOP/s (PyTorch, "
                      "same n and threads; best of before and after)"
                      + (f", ONNX Runtime int8 GEMM "
                         f"{_f(c['ceiling'].get('int8_onnxruntime_gops'), '{:.1f}')} GOP/s"
                         if "int8_onnxruntime_gops" in c["ceiling"] else "")
                      + "; ceilings per precision (never below float32's): "
                      + ", ".join(f"{p} {v:.1f}" for p, v in c["ceiling"]["per_precision"].items()
                                  if v)
                      if "per_precision" in c["ceiling"] else "")),
        "",
        ("| backend | e2e median ms | mean | p90 | p99 | FPS | speed-up vs PyTorch (e2e mean) "
        "| models ms | models speed-up | Dice (BP frames) | box IoU | models GFLOP/s (% of the "
        "ceiling of its precision) | pre+crop+paste % of e2e |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec.rows:
        if not r.ran or r.end_to_end is None:
            lines.append(f"| {r.label} | skipped: {r.reason} |" + " |" * 11)
            continue
        acc = r.accuracy or {}
        frac = r.gflops.get("models_fraction_of_ceiling")
        lines.append(
            f"| {r.label} | {_f(r.end_to_end.median)} | {_f(r.end_to_end.mean)} | "
            f"{_f(r.end_to_end.p90)} | {_f(r.end_to_end.p99)} | {_f(r.fps, '{:.1f}')} | "
            f"{_f(r.speedup.get('end_to_end_mean'), '{:.2f}x')} | {_f(r.model_ms)} | "
            f"{_f(r.speedup.get('models_mean'), '{:.2f}x')} | "
            f"{_f(acc.get('dice_positive'), '{:.4f}')} | {_f(acc.get('box_iou_positive'), '{:.4f}')} | "
            f"{_f(r.gflops.get('models'), '{:.1f}')} ({_f(frac * 100 if frac is not None else None, '{:.0f}')}%) | "
            f"{_f(_host_share(r), '{:.1f}%')} |"
        )
    stages = [s for s in ("preprocess", "detector", "crop", "segmenter", "paste", "total")
              if any(s in r.stages for r in rec.rows)]
    lines += ["", "Median ms per stage (stage clock: time.perf_counter on CPU rows):", "",
              "| backend | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
    for r in rec.rows:
        if r.ran:
            lines.append(f"| {r.label} | "
                         + " | ".join(_f(r.stages[s].median if s in r.stages else None, "{:.3f}")
                                      for s in stages) + " |")
    return [*lines, *_targets(rec), *_tracking(rec), ""]


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit("usage: results_table.py RUN.json...")
    out = ["# CPU benchmark results", "",
           ("Made by `benchmarks/run_cpu.sh` (see `benchmarks/README.md`); regenerate with it. "
           "Speed-ups are ratios within one run (same frames, same thread count, same "
           "pre/post-processing code; only the model runtime differs). Dice is over BP-positive "
           "frames, full frame after paste-back. Model FLOPs are nominal (2 per multiply-add of the "
           "convolutions as written), so an FP16 row, or a runtime that needs fewer operations, "
           "can exceed 100% of the float32 GEMM ceiling. Each row is read against the GEMM "
           "ceiling of its own precision (fp32/fp16: float32 GEMM; bf16 and int8: PyTorch's bf16 "
           "and int8 GEMM measured the same way, and ONNX Runtime's int8 GEMM in records that "
           "have it; in those, a precision's ceiling is never below the float32 one, which a CPU "
           "without native bf16 or int8 arithmetic reaches by converting)."), ""]
    for p in paths:
        out += section(Path(p), read_record(p))
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
