"""Rich tables for people: one summary table per run (speed and accuracy side by side), the
per-stage statistics, and the ratios between two runs (``--compare``)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from bpedge._bench.compare import RowComparison
from bpedge._bench.record import BenchRecord
from bpedge._bench.stats import STAT_NAMES


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def summary_table(record: BenchRecord) -> Table:
    """One row per backend/precision: end-to-end latency, throughput, speed-up against the
    baseline, accuracy, and achieved GFLOP/s against the GEMM ceiling."""
    ceiling = record.context.get("ceiling", {})
    per = ceiling.get("per_precision") or {}
    known = ", ".join(f"{p} {per[p]:.1f}" for p in ("fp32", "bf16", "int8") if per.get(p))
    # Phantom frames from subjects the bundle never saw are a speed workload: a Dice on them
    # says nothing about the models, so it is left out rather than printed as a result.
    speed_only = bool(record.context.get("frames", {}).get("speed_workload"))
    title = (f"bpedge bench: {record.context.get('frames', {}).get('count', '?')} frames, "
             f"{record.context.get('settings', {}).get('threads', '?')} threads"
             + (f"; GEMM ceilings (G op/s) {known}" if known
                else f"; float32 GEMM ceiling {ceiling['gflops']:.1f} GFLOP/s"
                if ceiling.get("gflops") else "")
             + ("; phantom frames: a speed workload, accuracy not shown (give --data for it)"
                if speed_only else ""))
    table = Table(title=escape(title), title_justify="left")
    columns = [("backend", "left"), ("e2e median ms", "right"), ("p90", "right"),
               ("p99", "right"), ("FPS", "right"), ("speed-up", "right"),
               ("models ms", "right"), ("Dice (BP frames)", "right"), ("box IoU", "right"),
               ("GFLOP/s (% of its precision's ceiling)", "right")]
    if speed_only:
        columns = [c for c in columns if c[0] not in ("Dice (BP frames)", "box IoU")]
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in record.rows:
        if not row.ran or row.end_to_end is None:
            table.add_row(escape(row.label), "[yellow]skipped[/] (see below)",
                          *[""] * (len(columns) - 2))
            continue
        acc: dict[str, Any] = row.accuracy or {}
        speed = row.speedup.get("end_to_end_mean")
        models = row.gflops.get("models")
        fraction = row.gflops.get("models_fraction_of_ceiling")
        accuracy = [] if speed_only else [_num(acc.get("dice_positive"), "{:.4f}"),
                                          _num(acc.get("box_iou_positive"), "{:.4f}")]
        table.add_row(
            escape(row.label),
            _num(row.end_to_end.median), _num(row.end_to_end.p90), _num(row.end_to_end.p99),
            _num(row.fps, "{:.1f}"),
            _num(speed, "{:.2f}x"),
            _num(row.model_ms),
            *accuracy,
            f"{_num(models, '{:.1f}')} ({_num(fraction * 100 if fraction is not None else None, '{:.0f}')}%)",
        )
    return table


def tracking_table(record: BenchRecord) -> Table:
    """Tracking against per-frame detection, per CPU row (``bench --track``)."""
    table = Table(title="tracking vs per-frame detection (frames as sequences, one per subject)",
                  title_justify="left")
    for name in ("backend", "FPS per-frame", "FPS tracked",
                 "FPS ratio (median of pairs; CPU time ratio)",
                 "Dice per-frame",
                 "Dice tracked", "Dice change", "all-frames Dice per-frame / tracked",
                 "detector share"):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for label, t in (record.context.get("tracking") or {}).items():
        table.add_row(escape(label), _num(t["fps_per_frame_detection"], "{:.1f}"),
                      _num(t["fps_tracked"], "{:.1f}"),
                      f'{_num(t["fps_ratio"], "{:.2f}x")} '
                      f'({_num(t.get("fps_ratio_median_of_pairs"), "{:.2f}x")}; '
                      f'{_num(t.get("cpu_time_ratio"), "{:.2f}x")})',
                      _num(t["dice_positive_per_frame_detection"], "{:.4f}"),
                      _num(t["dice_positive_tracked"], "{:.4f}"),
                      _num(t["dice_change"], "{:+.4f}"),
                      f'{_num(t.get("dice_all_frames_per_frame_detection"), "{:.4f}")} / '
                      f'{_num(t.get("dice_all_frames_tracked"), "{:.4f}")}',
                      _num(t["detector_share_tracked"], "{:.2f}"))
    return table


def skipped_lines(record: BenchRecord) -> list[str]:
    """One line per skipped row: the backend and why it did not run here."""
    return [f"skipped {row.label}: {row.reason}" for row in record.rows if not row.ran]


def stage_table(record: BenchRecord) -> Table:
    """min/mean/median/p90/p99/max ms and FPS of every stage and end to end, per row."""
    table = Table(title="per stage, ms per frame (stage clock per row; end to end: "
                  "time.perf_counter around each call)", title_justify="left")
    table.add_column("backend")
    table.add_column("stage")
    for name in (*STAT_NAMES, "FPS"):
        table.add_column(name, justify="right")
    table.add_column("clock")
    for row in record.rows:
        if not row.ran or row.end_to_end is None:
            continue
        items = [*row.stages.items(), ("end to end", row.end_to_end)]
        for i, (stage, stats) in enumerate(items):
            values = [getattr(stats, name) for name in STAT_NAMES]
            clock = ("time.perf_counter" if stage == "end to end" else row.stage_clock or "")
            table.add_row(escape(row.label) if i == 0 else "", stage,
                          *[_num(v, "{:.3f}") for v in values], _num(stats.fps, "{:.1f}"),
                          escape(clock), end_section=i == len(items) - 1)
    return table


def compare_table(comparisons: list[RowComparison], a_name: str, b_name: str) -> Table:
    """B relative to A per row: time ratios (< 1: B faster), FPS ratio, accuracy changes."""
    table = Table(title=escape(f"B / A   (A = {a_name}, B = {b_name}); time ratio < 1 means B is "
                               "faster"), title_justify="left")
    for name in ("backend", "e2e median B/A", "e2e mean B/A", "e2e p99 B/A", "FPS B/A",
                 "models ms B/A", "Dice B-A", "box IoU B-A", "note"):
        table.add_column(name, justify="left" if name in ("backend", "note") else "right")
    for c in comparisons:
        table.add_row(
            escape(c.label), _num(c.median_ratio, "{:.3f}"), _num(c.mean_ratio, "{:.3f}"),
            _num(c.p99_ratio, "{:.3f}"), _num(c.fps_ratio, "{:.3f}"),
            _num(c.models_ratio, "{:.3f}"), _num(c.dice_change, "{:+.4f}"),
            _num(c.box_iou_change, "{:+.4f}"), escape(c.note or ""),
        )
    return table
