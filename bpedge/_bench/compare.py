"""``bpedge bench --compare A.json B.json``: the change between two runs, row by row, as ratios.

Rows are matched by (backend, precision). Time ratios are B / A (below 1: B is faster), the
throughput ratio is B / A (above 1: B is faster), accuracy is shown as the difference B - A.
A row measured in only one run, or skipped in either, is listed with a note.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpedge._bench.record import BenchRecord, BenchRow


@dataclass(frozen=True)
class RowComparison:
    backend: str
    precision: str
    label: str
    median_ratio: float | None = None
    mean_ratio: float | None = None
    p99_ratio: float | None = None
    fps_ratio: float | None = None
    models_ratio: float | None = None
    dice_change: float | None = None
    box_iou_change: float | None = None
    note: str | None = None


def _ratio(b: float | None, a: float | None) -> float | None:
    if a is None or b is None or a <= 0:
        return None
    return b / a


def _acc(row: BenchRow, key: str) -> float | None:
    value = (row.accuracy or {}).get(key)
    return float(value) if value is not None else None


def _change(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def compare_records(a: BenchRecord, b: BenchRecord) -> list[RowComparison]:
    """One comparison per (backend, precision) that appears in either run, in A's order then B's."""
    keys = list(dict.fromkeys([(r.backend, r.precision) for r in (*a.rows, *b.rows)]))
    out = []
    for backend, precision in keys:
        ra, rb = a.row(backend, precision), b.row(backend, precision)
        label = (ra or rb).label  # type: ignore[union-attr]
        if ra is None or rb is None:
            out.append(RowComparison(backend, precision, label,
                                     note=f"only in {'A' if rb is None else 'B'}"))
            continue
        if not ra.ran or not rb.ran or ra.end_to_end is None or rb.end_to_end is None:
            which = " and ".join(n for n, r in (("A", ra), ("B", rb)) if not r.ran)
            out.append(RowComparison(backend, precision, label, note=f"skipped in {which}"))
            continue
        out.append(RowComparison(
            backend, precision, label,
            median_ratio=_ratio(rb.end_to_end.median, ra.end_to_end.median),
            mean_ratio=_ratio(rb.end_to_end.mean, ra.end_to_end.mean),
            p99_ratio=_ratio(rb.end_to_end.p99, ra.end_to_end.p99),
            fps_ratio=_ratio(rb.fps, ra.fps),
            models_ratio=_ratio(rb.model_ms, ra.model_ms),
            dice_change=_change(_acc(rb, "dice_positive"), _acc(ra, "dice_positive")),
            box_iou_change=_change(_acc(rb, "box_iou_positive"), _acc(ra, "box_iou_positive")),
        ))
    return out
