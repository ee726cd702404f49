"""Boundary distance between two masks: the 95th-percentile Hausdorff distance (HD95), in pixels.

Each mask's boundary is its pixels that touch the background (4-neighbourhood); the distance from
every boundary pixel of one mask to the nearest boundary pixel of the other is taken in both
directions, and HD95 is the larger of the two directed 95th percentiles (the convention of
MONAI's ``compute_hausdorff_distance(percentile=95)``). Distances are exact Euclidean
(``cv2.distanceTransform`` with ``DIST_MASK_PRECISE``).
"""

from __future__ import annotations

import cv2
import numpy as np

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = (mask != 0).astype(np.uint8)
    # Pad so pixels on the frame's edge count as boundary (the region ends there).
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    inner = cv2.erode(padded, _CROSS)[1:-1, 1:-1]
    return (m != 0) & (inner == 0)


def _directed(from_edge: np.ndarray, to_edge: np.ndarray) -> np.ndarray:
    # distanceTransform gives each pixel's distance to the nearest zero pixel: zeros on to_edge.
    field = cv2.distanceTransform(np.where(to_edge, 0, 1).astype(np.uint8), cv2.DIST_L2,
                                  cv2.DIST_MASK_PRECISE)
    return field[from_edge]


def hd95(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """HD95 in pixels between two (H, W) masks (non-zero = foreground). 0.0 when both are empty;
    None when exactly one is (the distance is undefined: count it as a presence error instead)."""
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"masks must be 2-D and the same shape: {pred.shape} vs {truth.shape}")
    p, t = _boundary(pred), _boundary(truth)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return None
    return float(max(np.percentile(_directed(p, t), 95), np.percentile(_directed(t, p), 95)))
