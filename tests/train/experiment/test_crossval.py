"""K-fold statistics: subject bootstrap, calibration, boundary metrics, the balanced threshold."""

from __future__ import annotations

import numpy as np
import pytest
from bpedge.train.experiment.boundary import surface_metrics
from bpedge.train.experiment.crossval import (
    cluster_bootstrap,
    expected_calibration_error,
    reliability_table,
)

from bpedge._presence import balanced_accuracy, choose_presence_threshold


def test_bootstrap_interval_brackets_the_mean_and_widens_with_subject_spread():
    rng = np.random.default_rng(0)
    subjects = [str(s) for s in range(8) for _ in range(10)]
    tight = [0.5 + 0.01 * rng.standard_normal() for _ in subjects]
    spread = [0.1 * int(s) + 0.01 * rng.standard_normal() for s in subjects]
    a = cluster_bootstrap(tight, subjects)
    b = cluster_bootstrap(spread, subjects)
    assert a["ci_low"] <= a["value"] <= a["ci_high"]
    assert b["ci_low"] <= b["value"] <= b["ci_high"]
    assert (b["ci_high"] - b["ci_low"]) > 10 * (a["ci_high"] - a["ci_low"])
    assert a["groups"] == 8 and a["n"] == 80
    assert cluster_bootstrap(tight, subjects) == a  # seeded


def test_bootstrap_without_two_subjects_has_no_interval():
    one = cluster_bootstrap([0.2, 0.4], ["1", "1"])
    assert one["value"] == pytest.approx(0.3) and one["ci_low"] is None
    assert cluster_bootstrap([], [])["value"] is None
    with pytest.raises(ValueError, match="one group per value"):
        cluster_bootstrap([1.0], ["a", "b"])


def test_calibration_error_of_known_bins():
    # Bin 0.8-0.9: 10 frames scored 0.85, half with BP -> |0.5 - 0.85| = 0.35; bin 0.1-0.2: 10
    # frames scored 0.15, none with BP -> 0.15. ECE = 0.5 * 0.35 + 0.5 * 0.15 = 0.25.
    scores = [0.85] * 10 + [0.15] * 10
    present = [True] * 5 + [False] * 5 + [False] * 10
    assert expected_calibration_error(scores, present) == pytest.approx(0.25)
    table = reliability_table(scores, present)
    assert sum(r["n"] for r in table) == 20 and table[8]["fraction_present"] == 0.5
    assert expected_calibration_error([1.0, 0.0], [True, False]) == pytest.approx(0.0)


def test_surface_metrics_of_shifted_squares():
    a = np.zeros((60, 60), bool)
    b = np.zeros((60, 60), bool)
    a[10:30, 10:30] = True
    b[10:30, 14:34] = True  # shifted 4 px right
    hd95, msd = surface_metrics(a, b)
    assert hd95 == pytest.approx(4.0)
    assert 0 < msd < 4.0
    assert surface_metrics(a, a) == (0.0, 0.0)
    assert surface_metrics(a, np.zeros_like(a)) == (None, None)


def test_balanced_threshold_ignores_class_imbalance():
    # 90 BP frames scored 0.6-0.9, 10 empty frames scored 0.4-0.7. Accuracy alone is happy to
    # call everything present; balanced accuracy separates the empty frames where it can.
    scores = np.r_[np.linspace(0.6, 0.9, 90), np.linspace(0.4, 0.7, 10)]
    present = np.r_[np.ones(90, bool), np.zeros(10, bool)]
    choice = choose_presence_threshold(scores, present)
    value, metric = choice.value, choice.balanced_accuracy
    assert metric is not None
    assert balanced_accuracy(scores, present, value) == pytest.approx(metric)
    assert metric >= balanced_accuracy(scores, present, 0.05) + 0.3
    assert 0.55 <= value <= 0.72
    with pytest.raises(ValueError, match="with and without BP"):
        balanced_accuracy(scores, np.ones(100, bool), value)
    # The shared rule (bpedge._presence) keeps a recorded default for one kind of frame, as
    # export always did, instead of refusing: the study and the bundle share that behaviour.
    assert choose_presence_threshold(scores, np.ones(100, bool)).method == "default"
