"""Parity checks run at export: ONNX Runtime FP32 against PyTorch, and FP16 against FP32.

Every check compares the two runs on the same validation inputs and returns a JSON-ready dict of
measurements, which the manifest records whether or not they pass; :func:`fp32_problems` and
:func:`fp16_problems` turn them into the reasons an export fails (:class:`ParityError`).

Gates (:class:`Tolerances`):

- FP32 ONNX vs PyTorch: max absolute difference of any probability (segmenter ``prob`` and
  detector ``score``) <= 1e-4, and of any box coordinate <= 0.5 detector-input pixels.
- FP16 vs FP32: no NaN or infinity anywhere, and the mean Dice of the thresholded crops may not
  drop by more than 0.005. The detector's box IoU change and score change are recorded, not gated:
  a top-1 detector can legitimately switch between two near-tied anchors, and what that costs the
  cascade shows in the segmenter's Dice on detector crops and in ``bpedge bench``.

Non-finite values are counted separately and never hide inside a maximum (``max`` over NaN is
NaN, and every comparison with NaN is false, so a NaN output would otherwise pass a tolerance).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bpedge.train.inference import run_torch  # the one torch batch runner, re-exported here

from bpedge._metrics import box_iou

__all__ = [
    "DetectorOutputs",
    "OnnxModel",
    "ParityError",
    "Tolerances",
    "compare_detectors",
    "compare_segmenters",
    "fp16_problems",
    "fp32_problems",
    "run_torch",
]


class ParityError(RuntimeError):
    """An exported model does not reproduce its reference closely enough (the message lists each
    failed check with the measured value and the limit)."""


@dataclass(frozen=True)
class Tolerances:
    """Export gates: ``prob`` (absolute), ``box_px`` (detector-input pixels), ``fp16_dice``
    (largest allowed drop of mean Dice from FP32 to FP16)."""

    prob: float = 1e-4
    box_px: float = 0.5
    fp16_dice: float = 0.005

    def __post_init__(self) -> None:
        for name in ("prob", "box_px", "fp16_dice"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"tolerance {name} must be a finite number >= 0, got {value!r}")

    def to_json(self) -> dict[str, float]:
        return {
            "fp32_max_prob_diff": self.prob,
            "fp32_max_box_diff_px": self.box_px,
            "fp16_max_dice_drop": self.fp16_dice,
        }


@dataclass(frozen=True)
class DetectorOutputs:
    """Detector answers for N frames: ``scores`` float32 (N,), ``boxes`` float32 (N, 4) x0, y0,
    x1, y1 in detector-input pixels."""

    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.ndim != 1 or self.boxes.shape != (self.scores.shape[0], 4):
            raise ValueError(f"detector outputs must be scores (N,) and boxes (N, 4), got "
                             f"{self.scores.shape} and {self.boxes.shape}")


class OnnxModel:
    """An ONNX Runtime CPU session over a bundle model with one float32 input.

    ``model(x)`` runs ``x`` (float32 (N, ...)) in batches of ``batch_size`` and returns the named
    outputs, each concatenated over the batches, as float32 arrays.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        input_name: str,
        output_names: Sequence[str],
        batch_size: int = 8,
    ) -> None:
        import onnxruntime as ort

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options = ort.SessionOptions()
        # Parity measures the graph as written: no fusions that could hide (or add) differences
        # that TensorRT or another runtime would not share.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self.path = str(path)
        self.input_name = input_name
        self.output_names = list(output_names)
        self.batch_size = batch_size

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for start in range(0, x.shape[0], self.batch_size):
            outs = self._session.run(self.output_names,
                                     {self.input_name: x[start : start + self.batch_size]})
            for part, out in zip(parts, outs):
                part.append(np.asarray(out, dtype=np.float32))
        return [np.concatenate(p) if p else np.zeros((0,), np.float32) for p in parts]


def _nonfinite(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| over the entries where both are finite (0.0 for none)."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare outputs of shapes {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return 0.0
    return float(np.abs(a[both].astype(np.float64) - b[both].astype(np.float64)).max())


def compare_detectors(
    reference: DetectorOutputs,
    candidate: DetectorOutputs,
    gt_boxes: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score and box differences of ``candidate`` from ``reference`` on the same frames.

    ``gt_boxes`` (N, 4) in detector-input pixels, NaN rows for frames without BP, adds the mean
    IoU of each run with the ground truth over the frames with BP, and its change.
    """
    n = reference.scores.shape[0]
    if candidate.scores.shape[0] != n:
        raise ValueError(f"reference has {n} frames, candidate {candidate.scores.shape[0]}")
    ious = [box_iou(a, b) for a, b in zip(reference.boxes.tolist(), candidate.boxes.tolist())]
    finite_ious = [v for v in ious if np.isfinite(v)]
    result: dict[str, Any] = {
        "frames": n,
        "max_score_diff": _max_abs_diff(reference.scores, candidate.scores),
        "max_box_diff_px": _max_abs_diff(reference.boxes, candidate.boxes),
        "mean_box_iou_with_reference": float(np.mean(finite_ious)) if finite_ious else None,
        "min_box_iou_with_reference": float(np.min(finite_ious)) if finite_ious else None,
        "nonfinite_outputs": _nonfinite(candidate.scores) + _nonfinite(candidate.boxes),
        "nonfinite_reference_outputs": _nonfinite(reference.scores) + _nonfinite(reference.boxes),
    }
    if gt_boxes is not None:
        if gt_boxes.shape != (n, 4):
            raise ValueError(f"gt_boxes must be ({n}, 4), got {gt_boxes.shape}")
        rows = [k for k in range(n) if np.isfinite(gt_boxes[k]).all()]
        if rows:
            ref_iou = float(np.mean([box_iou(reference.boxes[k], gt_boxes[k]) for k in rows]))
            cand_iou = float(np.mean([box_iou(candidate.boxes[k], gt_boxes[k]) for k in rows]))
            result.update({
                "frames_with_bp": len(rows),
                "reference_mean_iou_vs_truth": ref_iou,
                "mean_iou_vs_truth": cand_iou,
                "mean_iou_change": cand_iou - ref_iou,
            })
    return result


def compare_segmenters(
    reference: np.ndarray,
    candidate: np.ndarray,
    targets: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Probability differences of ``candidate`` from ``reference`` (float32 (N, 1, h, w)).

    With ``targets`` (same shape, non-zero = BP) and ``threshold``, adds both runs' mean Dice of
    the thresholded crops and its change (candidate minus reference).
    """
    from bpedge.export.thresholds import mean_dice

    result: dict[str, Any] = {
        "crops": int(reference.shape[0]),
        "max_prob_diff": _max_abs_diff(reference, candidate),
        "nonfinite_outputs": _nonfinite(candidate),
        "nonfinite_reference_outputs": _nonfinite(reference),
    }
    if targets is not None and threshold is not None:
        # NaN probabilities compare false with the threshold, so they count as background here;
        # the nonfinite counts above are what fails the export for them.
        ref_dice = mean_dice(reference, targets, threshold)
        cand_dice = mean_dice(candidate, targets, threshold)
        result.update({
            "mask_threshold": float(threshold),
            "reference_mean_dice": ref_dice,
            "mean_dice": cand_dice,
            "dice_change": cand_dice - ref_dice,
        })
    return result


def _nonfinite_problems(label: str, report: dict[str, Any]) -> list[str]:
    problems = []
    if report["nonfinite_reference_outputs"]:
        problems.append(f"{label}: the reference run produced {report['nonfinite_reference_outputs']}"
                        " NaN/infinite value(s)")
    if report["nonfinite_outputs"]:
        problems.append(f"{label}: produced {report['nonfinite_outputs']} NaN/infinite value(s)")
    return problems


def fp32_problems(detector: dict[str, Any], segmenter: dict[str, Any],
                  tol: Tolerances) -> list[str]:
    """Why the FP32 ONNX files fail parity with PyTorch (empty if they pass)."""
    problems = _nonfinite_problems("FP32 detector vs PyTorch", detector)
    problems += _nonfinite_problems("FP32 segmenter vs PyTorch", segmenter)
    if detector["max_score_diff"] > tol.prob:
        problems.append(f"FP32 detector score differs from PyTorch by {detector['max_score_diff']:.3g}"
                        f" (limit {tol.prob:g})")
    if detector["max_box_diff_px"] > tol.box_px:
        problems.append(f"FP32 detector box differs from PyTorch by "
                        f"{detector['max_box_diff_px']:.3g} px (limit {tol.box_px:g} px)")
    if segmenter["max_prob_diff"] > tol.prob:
        problems.append(f"FP32 segmenter probability differs from PyTorch by "
                        f"{segmenter['max_prob_diff']:.3g} (limit {tol.prob:g})")
    return problems


def fp16_problems(detector: dict[str, Any], segmenter: dict[str, Any],
                  tol: Tolerances) -> list[str]:
    """Why the FP16 ONNX files fail against FP32 (empty if they pass)."""
    problems = _nonfinite_problems("FP16 detector", detector)
    problems += _nonfinite_problems("FP16 segmenter", segmenter)
    drop = -float(segmenter.get("dice_change", 0.0))
    if drop > tol.fp16_dice:
        problems.append(
            f"FP16 segmenter mean Dice {segmenter['mean_dice']:.4f} is {drop:.4f} below FP32's "
            f"{segmenter['reference_mean_dice']:.4f} (limit {tol.fp16_dice:g}); keep more ops in "
            "FP32 or deploy the FP32 engine"
        )
    return problems
