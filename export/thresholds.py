"""Choose the cascade's two thresholds on validation data, and say how they were chosen.

- Mask threshold: the probability at or above which a crop pixel is BP. Chosen on a grid
  (:data:`MASK_GRID`, 0.05 to 0.95) to maximise the mean Dice of the thresholded 96x96 crops
  against their ground truth over the BP-positive validation frames. A crop whose ground truth is
  empty (a detector box that missed the BP) scores 0, as in the segmenter's training metric.
- Score threshold ("no BP present" below it): the rule of :mod:`bpedge._presence`, the one the
  K-fold study uses too: the grid value (:data:`SCORE_GRID`) maximising balanced accuracy
  ((sensitivity + specificity) / 2) over validation frames with and without BP; when the
  validation data holds frames of one kind only, :data:`DEFAULT_SCORE_THRESHOLD` (low: it only
  drops frames the detector is sure are empty), and ``how_chosen`` says so.

Ties (a plateau of equally good values, common on small validation sets) are broken by taking the
middle of the longest run of best values, which keeps the widest margin on both sides
(:func:`bpedge._presence.middle_of_best`, for both thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpedge._metrics import dice
from bpedge._presence import (
    DEFAULT_PRESENCE_THRESHOLD,
    PRESENCE_GRID,
    TIE_BREAK,
    check_grid,
    choose_presence_threshold,
    middle_of_best,
)

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "MASK_GRID",
    "SCORE_GRID",
    "ThresholdChoice",
    "choose_mask_threshold",
    "choose_score_threshold",
    "mean_dice",
    "presence_accuracy",
]

MASK_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: The score threshold's grid and default are the presence rule's (:mod:`bpedge._presence`).
SCORE_GRID: tuple[float, ...] = PRESENCE_GRID
DEFAULT_SCORE_THRESHOLD = DEFAULT_PRESENCE_THRESHOLD


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold, the metric it reached, and a JSON record of how it was chosen."""

    value: float
    metric: float | None
    how: dict[str, Any]


def mean_dice(probs: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    """Mean Dice of ``probs >= threshold`` against ``targets`` over the crops.

    ``probs`` float (N, 1, h, w) or (N, h, w) in [0, 1]; ``targets`` the same shape, non-zero =
    BP. Both empty scores 0 (a BP-positive frame whose crop holds no BP is a miss)."""
    p, t = _as_crops(probs, "probs"), _as_crops(targets, "targets")
    if p.shape != t.shape:
        raise ValueError(f"probs {p.shape} and targets {t.shape} must have the same shape")
    if p.shape[0] == 0:
        raise ValueError("mean Dice needs at least one crop")
    masks = p >= threshold
    return float(np.mean([dice(masks[k], t[k], empty=0.0) for k in range(p.shape[0])]))


def _as_crops(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (N, 1, h, w) or (N, h, w), got shape {a.shape}")
    return a


def choose_mask_threshold(
    probs: np.ndarray,
    targets: np.ndarray,
    grid: Sequence[float] = MASK_GRID,
    *,
    data: dict[str, Any] | None = None,
) -> ThresholdChoice:
    """The ``grid`` value maximising :func:`mean_dice` of ``probs`` against ``targets``.

    ``data`` (JSON) describes where the crops came from and is recorded in ``how``."""
    values = check_grid(grid)
    scores = [mean_dice(probs, targets, t) for t in values]
    i = middle_of_best(scores)
    how = {
        "method": "grid search maximising mean Dice of the thresholded crops",
        "metric": "mean Dice over BP-positive validation crops (empty ground truth scores 0)",
        "grid": values,
        "metric_by_threshold": [round(s, 6) for s in scores],
        "value": round(scores[i], 6),
        "tie_break": TIE_BREAK,
        "data": dict(data or {}),
    }
    return ThresholdChoice(value=values[i], metric=scores[i], how=how)


def presence_accuracy(scores: np.ndarray, present: np.ndarray, threshold: float) -> float:
    """Share of frames where ``scores >= threshold`` agrees with ``present`` (bool per frame).
    Reported only: the score threshold is chosen by balanced accuracy, not by this."""
    s, p = np.asarray(scores, dtype=np.float64), np.asarray(present, dtype=bool)
    if s.shape != p.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores and present must be equal-length non-empty 1-D arrays, got "
                         f"{s.shape} and {p.shape}")
    return float(np.mean((s >= threshold) == p))


def choose_score_threshold(
    scores: np.ndarray,
    present: np.ndarray,
    grid: Sequence[float] = SCORE_GRID,
    *,
    default: float = DEFAULT_SCORE_THRESHOLD,
    data: dict[str, Any] | None = None,
) -> ThresholdChoice:
    """The "BP present" score threshold by :func:`bpedge._presence.choose_presence_threshold`
    (balanced accuracy over frames with and without BP; ``default`` when ``present`` holds
    frames of one kind only). ``scores`` float (N,) in [0, 1]; ``present`` bool (N,). ``data``
    (JSON) describes the frames and is recorded in ``how`` with their counts. ``metric`` is the
    balanced accuracy reached (when defaulted, the one rate measurable at the default)."""
    choice = choose_presence_threshold(scores, present, grid, default=default)
    p = np.asarray(present, dtype=bool)
    counts = {"frames_with_bp": int(p.sum()), "frames_without_bp": int((~p).sum())}
    how = {**choice.how, "data": {**dict(data or {}), **counts}}
    return ThresholdChoice(value=choice.value, metric=choice.metric, how=how)
