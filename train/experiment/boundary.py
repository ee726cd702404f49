"""Boundary metrics of a predicted mask against the truth: HD95 and mean surface distance.

Dice rewards overlap and says little about where an outline runs; a needle guided by the outline
cares about the boundary. Both metrics follow the usual definitions (as in MedPy's ``hd95`` and
``assd``), on the outer-boundary pixels of each mask (the mask minus its 3x3 erosion):

- ``d(A->B)``: for every boundary pixel of A, the Euclidean distance (pixel centres, exact, via
  OpenCV's ``DIST_MASK_PRECISE`` distance transform) to the nearest boundary pixel of B;
- HD95 = ``max(percentile95(d(A->B)), percentile95(d(B->A)))``;
- mean surface distance (MSD, symmetric) = the mean of ``d(A->B)`` and ``d(B->A)`` together.

Both are in pixels; multiply by the pixel spacing for millimetres. Undefined (``None``) when either
mask is empty: a missed BP has no boundary to measure, and is counted as a miss instead.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["boundary_distances", "surface_metrics"]


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def boundary_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (pixels, float64 ``(P,)``) from each boundary pixel of mask ``a`` to the nearest
    boundary pixel of mask ``b``; both masks ``(H, W)``, non-zero = inside, and non-empty."""
    ba, bb = _boundary(a), _boundary(b)
    # distanceTransform measures to the nearest zero pixel: make b's boundary the zeros.
    dist = cv2.distanceTransform(np.where(bb, 0, 255).astype(np.uint8), cv2.DIST_L2,
                                 cv2.DIST_MASK_PRECISE)
    return dist[ba].astype(np.float64)


def surface_metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[float | None, float | None]:
    """``(HD95, mean surface distance)`` in pixels of two ``(H, W)`` masks, or ``(None, None)``
    when either is empty."""
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    if not pred.any() or not truth.any():
        return None, None
    d_pt, d_tp = boundary_distances(pred, truth), boundary_distances(truth, pred)
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    msd = float(np.concatenate([d_pt, d_tp]).mean())
    return hd95, msd
