"""Threshold choice on constructed validation data whose best threshold is known by design."""

from __future__ import annotations

import numpy as np
import pytest
from bpedge.export.thresholds import (
    DEFAULT_SCORE_THRESHOLD,
    MASK_GRID,
    choose_mask_threshold,
    choose_score_threshold,
    mean_dice,
    presence_accuracy,
)


def crops_with_known_best() -> tuple[np.ndarray, np.ndarray]:
    """Two 8x8 crops: BP pixels at probability 0.75, a ring of background at 0.5, the rest at 0.2
    (all exact in float32). Any threshold in (0.5, 0.75] segments them perfectly; lower ones add
    the ring, higher ones lose the BP."""
    probs = np.full((2, 1, 8, 8), 0.2, np.float32)
    targets = np.zeros((2, 1, 8, 8), np.float32)
    probs[:, :, 1:7, 1:7] = 0.5
    probs[:, :, 2:6, 2:6] = 0.75
    targets[:, :, 2:6, 2:6] = 1
    return probs, targets


def test_mask_threshold_is_the_middle_of_the_perfect_range() -> None:
    probs, targets = crops_with_known_best()
    choice = choose_mask_threshold(probs, targets, data={"crops": 2})
    # Perfect from 0.55 to 0.75 on the 0.05 grid; the middle of that run of five is 0.65.
    assert choice.value == 0.65
    assert choice.metric == 1.0
    by_threshold = dict(zip(choice.how["grid"], choice.how["metric_by_threshold"]))
    assert by_threshold[0.5] == pytest.approx(2 * 16 / (36 + 16))  # the ring is included
    assert by_threshold[0.8] == 0.0
    assert choice.how["data"] == {"crops": 2}
    assert choice.how["grid"] == list(MASK_GRID)


def test_mean_dice_counts_a_crop_without_bp_as_a_miss() -> None:
    probs = np.zeros((2, 4, 4), np.float32)
    targets = np.zeros((2, 4, 4), np.float32)
    targets[0, :2, :2] = 1
    probs[0, :2, :2] = 0.9
    # Crop 0 is perfect; crop 1 has no BP in its ground truth (a missed box): 0, not 1.
    assert mean_dice(probs, targets, 0.5) == 0.5


def test_score_threshold_separates_frames_with_and_without_bp() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
    present = np.array([True, True, True, False, False])
    choice = choose_score_threshold(scores, present, data={"note": "x"})
    # Accuracy 1 for every threshold in (0.3, 0.7]: grid 0.31 .. 0.70, whose middle is 0.50.
    assert choice.value == 0.5
    assert choice.metric == 1.0
    assert choice.how["method"] == "grid search maximising presence accuracy"
    assert choice.how["data"] == {"note": "x", "frames_with_bp": 3, "frames_without_bp": 2}
    assert presence_accuracy(scores, present, 0.25) == 0.8


def test_without_empty_frames_the_score_threshold_is_the_documented_default() -> None:
    choice = choose_score_threshold(np.array([0.9, 0.01]), np.array([True, True]))
    assert choice.value == DEFAULT_SCORE_THRESHOLD
    assert choice.how["method"] == "default"
    assert "no frame without BP" in choice.how["reason"]
    assert choice.metric == 0.5  # the 0.01 frame falls below the default


@pytest.mark.parametrize("grid", [[], [0.5, 0.4], [0.2, 1.2], [0.3, 0.3]])
def test_bad_grids_are_refused(grid: list[float]) -> None:
    probs, targets = crops_with_known_best()
    with pytest.raises(ValueError, match="grid"):
        choose_mask_threshold(probs, targets, grid)


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mean_dice(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)), 0.5)
    with pytest.raises(ValueError, match="equal-length"):
        choose_score_threshold(np.zeros(3), np.zeros(2, bool))
