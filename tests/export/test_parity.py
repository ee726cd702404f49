"""Parity measurements and gates on constructed outputs, and the two runners on a real graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from bpedge.export.parity import (
    DetectorOutputs,
    OnnxModel,
    Tolerances,
    compare_detectors,
    compare_segmenters,
    fp16_problems,
    fp32_problems,
    run_torch,
)

TOL = Tolerances()


def detector(scores: list[float], boxes: list[list[float]]) -> DetectorOutputs:
    return DetectorOutputs(np.array(scores, np.float32), np.array(boxes, np.float32))


def passing_segmenter(crops: int = 2) -> dict:
    p = np.full((crops, 1, 4, 4), 0.25, np.float32)
    return compare_segmenters(p, p)


def test_detector_differences_and_iou_against_the_truth() -> None:
    ref = detector([0.9, 0.2], [[10, 10, 20, 20], [0, 0, 10, 10]])
    cand = detector([0.9, 0.25], [[10, 10, 20, 20.5], [0, 0, 10, 10]])
    truth = np.array([[10, 10, 20, 20], [np.nan] * 4])  # the second frame has no BP
    report = compare_detectors(ref, cand, truth)
    assert report["max_score_diff"] == pytest.approx(0.05)
    assert report["max_box_diff_px"] == 0.5
    assert report["min_box_iou_with_reference"] == pytest.approx(100 / 105)
    assert report["frames_with_bp"] == 1
    assert report["reference_mean_iou_vs_truth"] == 1.0
    assert report["mean_iou_change"] == pytest.approx(100 / 105 - 1)


def test_a_nan_is_counted_and_never_hides_in_a_maximum() -> None:
    ref = detector([0.5, 0.5], [[0, 0, 4, 4]] * 2)
    cand = detector([np.nan, 0.5], [[0, 0, 4, 4]] * 2)
    report = compare_detectors(ref, cand)
    assert report["nonfinite_outputs"] == 1
    assert report["max_score_diff"] == 0.0  # over the finite entries only ...
    problems = fp32_problems(report, passing_segmenter(), TOL)
    assert problems == ["FP32 detector vs PyTorch: produced 1 NaN/infinite value(s)"]  # ... so
    # the count is what fails it


def test_fp32_gates_sit_at_the_documented_tolerances() -> None:
    ref = detector([0.5], [[0, 0, 100, 100]])
    at_limit = compare_detectors(ref, detector([0.5 + 0.5e-4], [[0, 0, 100.5, 100]]))
    assert fp32_problems(at_limit, passing_segmenter(), TOL) == []
    over = compare_detectors(ref, detector([0.5 + 2e-4], [[0, 0, 100.75, 100]]))
    problems = fp32_problems(over, passing_segmenter(), TOL)
    assert len(problems) == 2
    assert "score differs from PyTorch by 0.0002" in problems[0]
    assert "box differs from PyTorch by 0.75 px (limit 0.5 px)" in problems[1]
    p = np.full((1, 1, 4, 4), 0.5, np.float32)
    seg = compare_segmenters(p, p + 2e-4)
    ok = compare_detectors(ref, ref)
    assert fp32_problems(ok, seg, TOL) == [
        "FP32 segmenter probability differs from PyTorch by 0.0002 (limit 0.0001)"]


def dice_case(drop_pixels: int) -> dict:
    """Reference: perfect crops. Candidate: ``drop_pixels`` BP pixels of one of 10 crops fall
    below the threshold."""
    targets = np.zeros((10, 1, 10, 10), np.float32)
    targets[:, :, :5, :] = 1  # 50 BP pixels per crop
    ref = np.where(targets > 0, 0.9, 0.1).astype(np.float32)
    cand = ref.copy()
    cand[0, 0, 0, :drop_pixels] = 0.4
    return compare_segmenters(ref, cand, targets, 0.5)


def test_fp16_fails_on_a_dice_drop_over_0_005_and_not_under() -> None:
    ok_detector = compare_detectors(detector([0.5], [[0, 0, 4, 4]]), detector([0.5], [[0, 0, 4, 4]]))
    # One pixel of 50 in one crop of 10: Dice 99/100 there, mean drop 0.001.
    small = dice_case(1)
    assert small["dice_change"] == pytest.approx(-(1 - 2 * 49 / 99) / 10)
    assert fp16_problems(ok_detector, small, TOL) == []
    # Ten pixels: crop Dice 2*40/90, mean drop 0.0111.
    large = dice_case(10)
    (problem,) = fp16_problems(ok_detector, large, TOL)
    assert "below FP32's" in problem and "limit 0.005" in problem


def test_fp16_nan_fails_even_when_dice_is_unchanged() -> None:
    ok_detector = compare_detectors(detector([0.5], [[0, 0, 4, 4]]), detector([0.5], [[0, 0, 4, 4]]))
    report = dice_case(0)
    report["nonfinite_outputs"] = 3
    assert fp16_problems(ok_detector, report, TOL) == [
        "FP16 segmenter: produced 3 NaN/infinite value(s)"]


def test_tolerances_must_be_finite_and_non_negative() -> None:
    with pytest.raises(ValueError, match="box_px"):
        Tolerances(box_px=-1.0)
    with pytest.raises(ValueError, match="prob"):
        Tolerances(prob=float("nan"))


def test_onnx_runner_batches_like_one_call(tiny_bundle: Path) -> None:
    x = np.random.default_rng(0).normal(size=(5, 1, 96, 96)).astype(np.float32)
    (whole,) = OnnxModel(tiny_bundle / "segmenter.fp32.onnx", "crop", ["prob"], batch_size=8)(x)
    (batched,) = OnnxModel(tiny_bundle / "segmenter.fp32.onnx", "crop", ["prob"], batch_size=2)(x)
    assert whole.shape == (5, 1, 96, 96)
    np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-6)  # kernels differ by batch


def test_torch_runner_refuses_a_model_in_training_mode() -> None:
    model = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="eval mode"):
        run_torch(model.train(), np.zeros((1, 1, 2, 2), np.float32))
    (out,) = run_torch(model.eval(), np.ones((3, 1, 2, 2), np.float32), batch_size=2)
    assert out.shape == (3, 1, 2, 2) and out.dtype == np.float32
