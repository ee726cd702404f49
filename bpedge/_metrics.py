"""Box and mask metrics shared by training, export checks, the experiment report and `bench`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bpedge._stages import Box


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Tight box ``(x0, y0, x1, y1)`` in pixel-edge coordinates around the non-zero pixels of a
    2-D mask (so a single pixel at (x, y) gives ``(x, y, x+1, y+1)``); ``None`` for an empty mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def dice(pred: np.ndarray, truth: np.ndarray, empty: float = 1.0) -> float:
    """Dice ``2|P∩T| / (|P| + |T|)`` of two masks (non-zero = foreground). ``empty`` is returned
    when both are empty: 1.0 is Kaggle's convention; the method reports BP-positive frames only,
    where it never arises."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    p, t = pred != 0, truth != 0
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return float(empty)
    return 2.0 * float(np.logical_and(p, t).sum()) / denom
