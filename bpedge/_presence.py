"""The "BP present" threshold: one rule, used by ``bpedge export`` and by the K-fold study.

The runtime calls a frame "BP present" when the detector's score is at or above the bundle's
score threshold (and its box is finite; :mod:`bpedge._cascade`). That threshold is chosen on
validation frames, frames with BP and frames without, by :func:`choose_presence_threshold`, the
only definition of the rule: ``bpedge export`` (the threshold in the bundle) and the study (a
threshold per fold) both call it.

- Candidates: :data:`PRESENCE_GRID`, 0.01 to 0.99 in steps of 0.01.
- Objective: balanced accuracy, ``(sensitivity + specificity) / 2`` of the call
  ``score >= threshold``, with sensitivity the share of frames with BP called present and
  specificity the share of frames without BP called absent. A missed BP and a false alarm weigh
  the same whatever the share of empty frames; plain accuracy would not: one phantom frame in
  five has no BP (192 of 240 frames have BP at the default settings), so calling every frame
  "present" already scores 0.80 accuracy, and validation keeps that ratio.
- Tie-break: among grid values reaching the best balanced accuracy, the middle of the longest run
  of consecutive ones (:func:`middle_of_best`: the first such run if several are equally long,
  the lower of the two middles for a run of even length). Small validation sets give plateaus;
  the middle keeps the widest margin on both sides, and the choice is deterministic.
- Validation frames of one kind only (no frame without BP, or none with BP, or none at all):
  balanced accuracy is undefined, so no threshold can be chosen for both rates. The rule then
  returns ``default`` (:data:`DEFAULT_PRESENCE_THRESHOLD`, low: it only drops frames the detector
  is sure are empty) and records ``method: "default"`` and the reason. It does not fall back to
  maximising the one rate it can measure: with only BP frames that is always the lowest
  threshold (and with only empty frames the highest), which says nothing.
- Non-finite scores are compared exactly as the runtime compares them: NaN is never ``>=`` a
  threshold, so a NaN frame is "no BP" at every threshold (+inf is "present" at all of them).
  Their number is recorded (``nonfinite_scores``); ``bpedge export`` fails its parity check on a
  detector that gives any.

NumPy only: the training layer and the export layer may both import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PRESENCE_THRESHOLD",
    "PRESENCE_GRID",
    "TIE_BREAK",
    "PresenceChoice",
    "balanced_accuracy",
    "check_grid",
    "choose_presence_threshold",
    "middle_of_best",
]

#: Score thresholds tried, 0.01 to 0.99.
PRESENCE_GRID: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 100))
#: The threshold when validation holds frames of one kind only (see the module docstring).
DEFAULT_PRESENCE_THRESHOLD = 0.05
#: How a plateau of equally good grid values is resolved, as recorded in ``how``.
TIE_BREAK = ("middle of the longest run of consecutive grid values reaching the best metric "
             "(the first run if several are equally long; the lower middle of an even run)")
METHOD_GRID = "grid search maximising balanced accuracy"
METHOD_DEFAULT = "default"
OBJECTIVE = ("balanced accuracy: (sensitivity + specificity) / 2 of the call 'BP present' = "
             "(score >= threshold), over validation frames with and without BP")


@dataclass(frozen=True)
class PresenceChoice:
    """The chosen score threshold and what it reached on the validation frames.

    ``method``: :data:`METHOD_GRID` or :data:`METHOD_DEFAULT`. ``balanced_accuracy`` is ``None``
    when defaulted; ``sensitivity`` is ``None`` without frames with BP, ``specificity`` without
    frames without BP (both at ``value``). ``how``: a JSON record of the choice (method,
    objective or reason, grid and metric per threshold, tie-break, counts)."""

    value: float
    method: str
    balanced_accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    how: dict[str, Any]

    @property
    def metric(self) -> float | None:
        """The objective reached: balanced accuracy; when defaulted, the one rate that can be
        measured at the default (sensitivity, else specificity; ``None`` for no frames)."""
        if self.balanced_accuracy is not None:
            return self.balanced_accuracy
        return self.sensitivity if self.sensitivity is not None else self.specificity


def check_grid(grid: Sequence[float]) -> list[float]:
    """``grid`` as floats; ValueError unless it is increasing distinct values in [0, 1]."""
    values = [float(v) for v in grid]
    if not values or any(not 0.0 <= v <= 1.0 for v in values) or values != sorted(set(values)):
        raise ValueError(f"threshold grid must be increasing distinct values in [0, 1], got {grid}")
    return values


def middle_of_best(metric: Sequence[float]) -> int:
    """Index of the middle of the longest run of consecutive entries equal to ``max(metric)``
    (the first run if several are equally long; the lower middle of an even run)."""
    if not len(metric):
        raise ValueError("no metric values to choose from")
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


def _as_arrays(scores: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, p = np.asarray(scores, dtype=np.float64), np.asarray(present)
    if s.shape != p.shape or s.ndim != 1:
        raise ValueError(f"scores and present must be equal-length 1-D arrays (one entry per "
                         f"frame), got shapes {s.shape} and {p.shape}")
    if p.size == 0:
        p = p.astype(bool)
    elif p.dtype != np.bool_:
        raise ValueError(f"present must be booleans (frame has BP), got dtype {p.dtype}")
    return s, p


def _rates(s: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of ``s >= t`` for every ``t``; NaN where undefined."""
    called = s[None, :] >= thresholds[:, None]  # (T, N); NaN scores compare false: "no BP"
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = called[:, p].sum(axis=1) / n_pos if n_pos else np.full(len(thresholds), np.nan)
        spec = (~called[:, ~p]).sum(axis=1) / n_neg if n_neg else np.full(len(thresholds), np.nan)
    return sens, spec


def balanced_accuracy(scores: np.ndarray, present: np.ndarray, threshold: float) -> float:
    """``(sensitivity + specificity) / 2`` of ``scores >= threshold`` as the call "BP present".

    ``scores`` float (N,), ``present`` bool (N,); ValueError unless ``present`` holds frames with
    and without BP (balanced accuracy is undefined otherwise)."""
    s, p = _as_arrays(scores, present)
    if not p.any() or p.all():
        raise ValueError("balanced accuracy needs frames with and without BP: got "
                         f"{int(p.sum())} with and {int((~p).sum())} without")
    sens, spec = _rates(s, p, np.array([float(threshold)]))
    return float((sens[0] + spec[0]) / 2)


def choose_presence_threshold(
    scores: np.ndarray,
    present: np.ndarray,
    grid: Sequence[float] = PRESENCE_GRID,
    *,
    default: float = DEFAULT_PRESENCE_THRESHOLD,
) -> PresenceChoice:
    """The score threshold for "BP present" by the rule in the module docstring.

    ``scores`` float (N,) detector scores of the validation frames (in [0, 1]; non-finite values
    are compared as the runtime compares them), ``present`` bool (N,) whether each frame has BP.
    ValueError for arrays of different lengths, a bad ``grid`` or a ``default`` outside [0, 1]."""
    values = check_grid(grid)
    if not 0.0 <= default <= 1.0:
        raise ValueError(f"default score threshold must be in [0, 1], got {default}")
    s, p = _as_arrays(scores, present)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    nonfinite = int(s.size - np.count_nonzero(np.isfinite(s)))
    if n_pos == 0 or n_neg == 0:
        sens, spec = _rates(s, p, np.array([default]))
        missing = "without" if n_neg == 0 else "with"
        sensitivity = None if n_pos == 0 else float(sens[0])
        specificity = None if n_neg == 0 else float(spec[0])
        how = {
            "method": METHOD_DEFAULT,
            "reason": f"the validation data has no frame {missing} BP, so balanced accuracy "
                      "(sensitivity and specificity) cannot be measured; a low default only "
                      "drops frames the detector is sure are empty",
            "default": default,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "nonfinite_scores": nonfinite,
        }
        return PresenceChoice(value=default, method=METHOD_DEFAULT, balanced_accuracy=None,
                              sensitivity=sensitivity, specificity=specificity, how=how)
    sens, spec = _rates(s, p, np.array(values))
    balanced = (sens + spec) / 2
    i = middle_of_best(balanced.tolist())
    how = {
        "method": METHOD_GRID,
        "objective": OBJECTIVE,
        "grid": values,
        "metric_by_threshold": [round(float(b), 6) for b in balanced],
        "value": round(float(balanced[i]), 6),
        "sensitivity": float(sens[i]),
        "specificity": float(spec[i]),
        "tie_break": TIE_BREAK,
        "nonfinite_scores": nonfinite,
    }
    return PresenceChoice(value=values[i], method=METHOD_GRID,
                          balanced_accuracy=float(balanced[i]), sensitivity=float(sens[i]),
                          specificity=float(spec[i]), how=how)
