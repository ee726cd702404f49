"""Threshold choice on constructed validation data whose best threshold is known by design."""

from __future__ import annotations

import json
from pathlib import Path

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
from bpedge.train.experiment import crossval
from bpedge.train.experiment.layout import StudyLayout


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
    assert choice.how["method"] == "grid search maximising balanced accuracy"
    assert choice.how["data"] == {"note": "x", "frames_with_bp": 3, "frames_without_bp": 2}
    assert presence_accuracy(scores, present, 0.25) == 0.8


def test_score_threshold_weighs_a_missed_bp_and_a_false_alarm_equally() -> None:
    # 20 frames with BP (18 scored 0.8, 2 scored 0.4) and 4 without (1 scored 0.5, 3 scored 0.1):
    # plain accuracy is best on (0.1, 0.4] (23/24; middle 0.25), balanced accuracy on (0.5, 0.8]
    # (sensitivity 0.9, specificity 1.0; middle 0.65). See tests/test_presence.py.
    scores = np.array([0.8] * 18 + [0.4] * 2 + [0.5] + [0.1] * 3)
    present = np.array([True] * 20 + [False] * 4)
    choice = choose_score_threshold(scores, present)
    assert choice.value == 0.65
    assert choice.metric == pytest.approx(0.95)
    assert (choice.how["sensitivity"], choice.how["specificity"]) == (pytest.approx(0.9), 1.0)
    assert presence_accuracy(scores, present, 0.25) > presence_accuracy(scores, present, 0.65)
    assert choice.how["data"] == {"frames_with_bp": 20, "frames_without_bp": 4}


def test_export_and_the_study_choose_the_same_threshold_on_the_same_scores(
        tmp_path: Path) -> None:
    # The study reads each fold's validation scores from its eval JSON; export gets them from
    # the ONNX detector. Same scores, same frames -> the same threshold, defaulted the same way.
    rng = np.random.default_rng(3)
    folds = {
        "subject-fold1": (np.array([0.8] * 18 + [0.4] * 2 + [0.5] + [0.1] * 3),
                          np.array([True] * 20 + [False] * 4)),
        "subject-fold2": (rng.uniform(0, 1, 60), np.arange(60) % 5 == 0),
        "subject-fold3": (rng.uniform(0, 1, 10), np.ones(10, bool)),  # no empty validation frame
    }
    layout = StudyLayout(tmp_path / "run")
    for name, (scores, present) in folds.items():
        rows = [{"key": f"{k % 3 + 1}_{k}", "score": float(s), "present": bool(p)}
                for k, (s, p) in enumerate(zip(scores, present))]
        for path in (layout.detector_val_eval(name, 2.0), layout.detector_eval(name, 2.0)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"images": rows}))
    study = crossval._presence(layout, list(folds), {name: 2.0 for name in folds}, seed=0)
    for fold, (scores, present) in zip(study["folds"], folds.values()):
        exported = choose_score_threshold(scores, present)
        assert fold["threshold"] == exported.value
        assert fold["method"] == exported.how["method"]
        assert fold["val_balanced_accuracy"] == (exported.metric if fold["method"] != "default"
                                                 else None)
    assert study["folds"][0]["threshold"] == 0.65
    assert study["folds"][2]["method"] == "default"


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
