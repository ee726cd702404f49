"""The "BP present" threshold rule (bpedge._presence) on validation sets built so that the right
answer is known: the objective, the tie-break, and the edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bpedge._presence import (
    DEFAULT_PRESENCE_THRESHOLD,
    PRESENCE_GRID,
    balanced_accuracy,
    choose_presence_threshold,
    middle_of_best,
)


def imbalanced_validation() -> tuple[np.ndarray, np.ndarray]:
    """20 frames with BP (18 scored 0.8, 2 scored 0.4) and 4 without (1 scored 0.5, 3 scored 0.1).

    threshold in   sensitivity  specificity  accuracy  balanced accuracy
    (0.1, 0.4]     1.0          0.75         23/24     0.875
    (0.4, 0.5]     0.9          0.75         21/24     0.825
    (0.5, 0.8]     0.9          1.0          22/24     0.95
    Plain accuracy is best on (0.1, 0.4] (middle 0.25): losing two BP frames to drop one false
    alarm does not pay when BP frames outnumber empty ones 5 to 1. Balanced accuracy is best on
    (0.5, 0.8], grid 0.51 .. 0.80, whose middle is 0.65."""
    scores = np.array([0.8] * 18 + [0.4] * 2 + [0.5] + [0.1] * 3)
    present = np.array([True] * 20 + [False] * 4)
    return scores, present


def test_the_rule_maximises_balanced_accuracy_not_accuracy() -> None:
    scores, present = imbalanced_validation()
    choice = choose_presence_threshold(scores, present)
    assert choice.value == 0.65
    assert choice.method == "grid search maximising balanced accuracy"
    assert choice.balanced_accuracy == pytest.approx(0.95) == choice.metric
    assert (choice.sensitivity, choice.specificity) == (pytest.approx(0.9), 1.0)
    by_threshold = dict(zip(choice.how["grid"], choice.how["metric_by_threshold"]))
    assert by_threshold[0.25] == pytest.approx(0.875)
    assert by_threshold[0.45] == pytest.approx(0.825)
    assert choice.how["grid"] == list(PRESENCE_GRID)
    for t in (0.25, 0.45, 0.65, 0.9):
        assert by_threshold[t] == pytest.approx(balanced_accuracy(scores, present, t))
    # A threshold equal to a score calls that frame present (the runtime's score >= threshold).
    assert balanced_accuracy(scores, present, 0.4) == pytest.approx(0.875)


def test_ties_take_the_lower_middle_of_the_first_longest_run() -> None:
    assert middle_of_best([0.1, 0.9, 0.9, 0.2]) == 1  # even run: lower middle
    assert middle_of_best([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9]) == 1  # equal runs: the first
    assert middle_of_best([0.9, 0.1, 0.9, 0.9, 0.9]) == 3  # the longest run, not the first best
    with pytest.raises(ValueError, match="no metric"):
        middle_of_best([])
    # Perfectly separated frames: every threshold in (0.3, 0.7] scores 1; 0.31 .. 0.70 -> 0.50.
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
    present = np.array([True, True, True, False, False])
    assert choose_presence_threshold(scores, present).value == 0.5
    assert choose_presence_threshold(scores, present, [0.1, 0.4, 0.5, 0.8]).value == 0.4


@pytest.mark.parametrize(("present", "missing", "sensitivity", "specificity"), [
    ([True, True, True], "without", 2 / 3, None),
    ([False, False, False], "with", None, 1 / 3),
])
def test_one_kind_of_frame_keeps_the_recorded_default(present: list[bool], missing: str,
                                                      sensitivity: float | None,
                                                      specificity: float | None) -> None:
    scores = np.array([0.9, 0.5, 0.01])
    choice = choose_presence_threshold(scores, np.array(present))
    assert choice.value == DEFAULT_PRESENCE_THRESHOLD
    assert choice.method == choice.how["method"] == "default"
    assert choice.balanced_accuracy is None
    assert f"no frame {missing} BP" in choice.how["reason"]
    assert choice.sensitivity == (None if sensitivity is None else pytest.approx(sensitivity))
    assert choice.specificity == (None if specificity is None else pytest.approx(specificity))
    assert choice.metric == pytest.approx(sensitivity if sensitivity is not None else specificity)
    assert choose_presence_threshold(scores, np.array(present), default=0.2).value == 0.2
    with pytest.raises(ValueError, match="with and without BP"):
        balanced_accuracy(scores, np.array(present), 0.5)


def test_no_frames_at_all_keeps_the_default_with_no_metric() -> None:
    choice = choose_presence_threshold(np.array([]), np.array([]))
    assert (choice.value, choice.method, choice.metric) == (DEFAULT_PRESENCE_THRESHOLD,
                                                            "default", None)


def test_nan_scores_count_as_no_bp_at_every_threshold_and_are_recorded() -> None:
    scores, present = imbalanced_validation()
    with_nan = scores.copy()
    with_nan[[0, 21]] = np.nan  # one BP frame, one empty frame
    below_all = scores.copy()
    below_all[[0, 21]] = -1.0  # what NaN is equivalent to under score >= threshold
    choice = choose_presence_threshold(with_nan, present)
    reference = choose_presence_threshold(below_all, present)
    assert choice.value == reference.value
    assert choice.how["metric_by_threshold"] == reference.how["metric_by_threshold"]
    assert choice.how["nonfinite_scores"] == 2 and reference.how["nonfinite_scores"] == 0


def test_the_record_is_strict_json() -> None:
    for present in (np.array([True] * 20 + [False] * 4), np.ones(24, bool)):
        choice = choose_presence_threshold(imbalanced_validation()[0], present)
        assert json.loads(json.dumps(choice.how, allow_nan=False)) == choice.how


def test_bad_input_is_refused_with_what_to_fix() -> None:
    with pytest.raises(ValueError, match="equal-length 1-D"):
        choose_presence_threshold(np.zeros(3), np.zeros(2, bool))
    with pytest.raises(ValueError, match="present must be booleans"):
        choose_presence_threshold(np.zeros(3), np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="default score threshold"):
        choose_presence_threshold(np.zeros(2), np.array([True, False]), default=1.5)
    with pytest.raises(ValueError, match="grid"):
        choose_presence_threshold(np.zeros(2), np.array([True, False]), [0.5, 0.4])
