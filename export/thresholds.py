"""Choose the cascade's two thresholds on validation data, and say how they were chosen.

- Mask threshold: the probability at or above which a crop pixel is BP. Chosen on a grid
  (:data:`MASK_GRID`, 0.05 to 0.95) to maximise the mean Dice of the thresholded 96x96 crops
  against their ground truth over the BP-positive validation frames. A crop whose ground truth is
  empty (a detector box that missed the BP) scores 0, as in the segmenter's training metric.
- Score threshold ("no BP present" below it): when the validation data holds frames without BP,
  the grid value (:data:`SCORE_GRID`) maximising presence accuracy, the share of frames where
  ``score >= threshold`` equals "the frame has BP". Without such frames nothing can be measured,
  so :data:`DEFAULT_SCORE_THRESHOLD` (low: it only drops frames the detector is sure are empty)
  is used and ``how_chosen`` says so.

Ties (a plateau of equally good values, common on small validation sets) are broken by taking the
middle of the longest run of best values, which keeps the widest margin on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpedge._metrics import dice

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
SCORE_GRID: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 100))
DEFAULT_SCORE_THRESHOLD = 0.05


@dataclass(frozen=True)
class ThresholdChoice:
    """A chosen threshold, the metric it reached, and a JSON record of how it was chosen."""

    value: float
    metric: float | None
    how: dict[str, Any]


def _check_grid(grid: Sequence[float]) -> list[float]:
    values = [float(v) for v in grid]
    if not values or any(not 0.0 <= v <= 1.0 for v in values) or values != sorted(set(values)):
        raise ValueError(f"threshold grid must be increasing distinct values in [0, 1], got {grid}")
    return values


def _middle_of_best(grid: Sequence[float], metric: Sequence[float]) -> int:
    """Index of the middle of the longest run of grid points reaching the best metric."""
    best = max(metric)
    runs: list[tuple[int, int]] = []
    start = None
    for i, m in enumerate([*metric, -np.inf]):
        if m == best and start is None:
            start = i
        elif m != best and start is not None:
            runs.append((start, i - 1))
            start = None
    first, last = max(runs, key=lambda r: r[1] - r[0])  # max() keeps the first longest
    return (first + last) // 2


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
    values = _check_grid(grid)
    scores = [mean_dice(probs, targets, t) for t in values]
    i = _middle_of_best(values, scores)
    how = {
        "method": "grid search maximising mean Dice of the thresholded crops",
        "metric": "mean Dice over BP-positive validation crops (empty ground truth scores 0)",
        "grid": values,
        "metric_by_threshold": [round(s, 6) for s in scores],
        "value": round(scores[i], 6),
        "tie_break": "middle of the longest run of best values",
        "data": dict(data or {}),
    }
    return ThresholdChoice(value=values[i], metric=scores[i], how=how)


def presence_accuracy(scores: np.ndarray, present: np.ndarray, threshold: float) -> float:
    """Share of frames where ``scores >= threshold`` agrees with ``present`` (bool per frame)."""
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
    """The ``grid`` value maximising :func:`presence_accuracy`, or ``default`` when ``present``
    has no frame without BP (then nothing measures false alarms). ``scores`` float (N,) in
    [0, 1]; ``present`` bool (N,)."""
    values = _check_grid(grid)
    if not 0.0 <= default <= 1.0:
        raise ValueError(f"default score threshold must be in [0, 1], got {default}")
    s, p = np.asarray(scores, dtype=np.float64), np.asarray(present, dtype=bool)
    if s.shape != p.shape or s.ndim != 1:
        raise ValueError(f"scores and present must be equal-length 1-D arrays, got {s.shape} "
                         f"and {p.shape}")
    counts = {"frames_with_bp": int(p.sum()), "frames_without_bp": int((~p).sum())}
    info = {**dict(data or {}), **counts}
    if counts["frames_without_bp"] == 0 or counts["frames_with_bp"] == 0:
        missing = "without" if counts["frames_without_bp"] == 0 else "with"
        how = {
            "method": "default",
            "reason": f"the validation data has no frame {missing} BP, so presence accuracy "
                      "cannot be measured; a low default only drops frames the detector is "
                      "sure are empty",
            "default": default,
            "data": info,
        }
        accuracy = presence_accuracy(s, p, default) if s.size else None
        return ThresholdChoice(value=default, metric=accuracy, how=how)
    accuracies = [presence_accuracy(s, p, t) for t in values]
    i = _middle_of_best(values, accuracies)
    how = {
        "method": "grid search maximising presence accuracy",
        "metric": "share of validation frames where (score >= threshold) == (frame has BP)",
        "grid": values,
        "metric_by_threshold": [round(a, 6) for a in accuracies],
        "value": round(accuracies[i], 6),
        "tie_break": "middle of the longest run of best values",
        "data": info,
    }
    return ThresholdChoice(value=values[i], metric=accuracies[i], how=how)
