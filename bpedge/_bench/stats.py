"""Timing statistics: min/mean/median/p90/p99/max in milliseconds and frames per second."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The statistics every timing row carries, in display order.
STAT_NAMES = ("min", "mean", "median", "p90", "p99", "max")


@dataclass(frozen=True)
class TimingStats:
    """Summary of ``n`` per-frame times in milliseconds.

    Percentiles use linear interpolation between order statistics (NumPy's default), so with
    fewer than 100 samples ``p99`` lies between the two largest values rather than being one.
    ``fps`` is ``1000 / mean``: frames per second for that stage alone.
    """

    n: int
    min: float
    mean: float
    median: float
    p90: float
    p99: float
    max: float

    @property
    def fps(self) -> float:
        return 1e3 / self.mean if self.mean > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["fps"] = self.fps if math.isfinite(self.fps) else None
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TimingStats:
        need = f"timing statistics need n and {list(STAT_NAMES)} as finite numbers >= 0"
        try:
            stats = cls(n=int(obj["n"]), **{k: float(obj[k]) for k in STAT_NAMES})
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(need) from exc  # not the object itself: it may be huge
        values = [getattr(stats, k) for k in STAT_NAMES]
        if stats.n < 0 or not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(need)
        return stats


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    """Statistics of a non-empty sequence of finite times in milliseconds."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of times, got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("times must be finite and >= 0 milliseconds")
    p = np.percentile(values, [50, 90, 99])
    return TimingStats(
        n=int(values.size),
        min=float(values.min()),
        mean=float(values.mean()),
        median=float(p[0]),
        p90=float(p[1]),
        p99=float(p[2]),
        max=float(values.max()),
    )
