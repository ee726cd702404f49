"""FP32 ONNX -> INT8 QDQ ONNX, calibrated on real frames and gated against FP32.

Quantiser: ``onnxruntime.quantization.quantize_static`` (static QDQ: QuantizeLinear /
DequantizeLinear pairs around the quantised ops, https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html),
weights int8 per output channel (symmetric), in one of two forms (:data:`FORMS`):

- ``"cpu"`` (the bundle's ``onnx.int8``, run by ONNX Runtime and OpenVINO): activations uint8,
  asymmetric, so a ReLU folds into its quantiser's range (ONNX Runtime's fast U8S8 kernels on x86),
  and weights in 7 bits (``reduce_range``, which the quantiser documents as possibly more accurate
  "on non-VNNI machine"): on an x86 CPU without VNNI the U8S8 kernels add pairs of 8-bit products
  in 16 bits, which saturates. Measured on such a CPU (AVX2), one-epoch tiny detector with a
  presence head, 48 frames: with 8-bit weights ONNX Runtime's fused kernels put the score up to
  0.0135 from FP32 (the same file's unfused graph 0.0026) and flipped the presence call on 6 of 48
  frames; with 7-bit weights fused and unfused agree (0.0043, 0.0042). A bundle runs on whatever
  CPU the cart has, so the CPU form is always written this way;
- ``"tensorrt"`` (``onnx.int8_symmetric``, what ``bpedge build-engines -p int8`` builds from):
  activations int8 with zero point 0, because "TensorRT uses a symmetric quantization scheme"
  with signed INT8 (TensorRT developer guide, "Working with Quantized Types",
  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html),
  and biases left float (INT32 is not among TensorRT's quantized types there).
  The quantiser then keeps each ReLU as a node with its own Q/DQ pair (30 on the demo's tiny
  detector, against 1 in the CPU form, where a ReLU folds into its quantiser's range), and ONNX
  Runtime runs this form slower: 13.6 ms a frame against 7.7 ms on that detector (OpenVINO
  3.6-4.1 ms in both; 2-core Xeon with AMX, 2 threads), which is why the CPU runtimes keep their
  own file.

Activation ranges are calibrated (MinMax) on frames of the checkpoint's *training* split, made by
the runtime's own preprocessing (the same ``crop_resize_normalize`` the cascade computes), so the
gate's validation frames were never seen by the calibration. Each form is gated on its own.

What stays FP32 (``nodes_to_exclude``), in escalating levels; the first level whose model passes
the gate is shipped, and a model that fails every level is not shipped (the manifest says why):

- level 0: the post-network tail (:func:`bpedge.export.fp16.fp32_tail_nodes`: the detector's top-1
  selection and box decode, the segmenter's sigmoid) and the layers that write the raw outputs
  (the detector's ``cls_logits`` / ``bbox_reg`` convolutions and presence head; the segmenter's
  last convolution).
  Quantising the detector's head and decode was measured to give wrong boxes (mask Dice vs truth
  0.00 on the tiny models; issue 15);
- level 1: also the whole detector heads (both conv towers), the segmenter's first convolution.

Gate (:class:`Int8Gate`), against FP32 ONNX Runtime on the validation frames, the CPU form run as
the runtime's ONNX Runtime session runs it (fused integer kernels) and the TensorRT form as written
(Q/DQ simulated in float, like TensorRT's exact INT8 products): no NaN/inf; detector
mean box IoU with FP32 >= 0.98 and the presence decision (score >= the bundle's threshold) the
same on >= 98% of frames; segmenter mean Dice of the thresholded crops against FP32's >= 0.99.
Every level's measurements are recorded.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bpedge.export.fp16 import HEAVY_OPS, fp32_tail_nodes, name_unnamed_nodes

from bpedge._metrics import box_iou

if TYPE_CHECKING:
    import onnx

__all__ = ["FORMS", "Int8Gate", "Int8Result", "QdqForm", "excluded_nodes", "gate_detector",
           "gate_segmenter", "quantize_int8", "tensorrt_qdq_problems"]

LEVELS = (0, 1)


@dataclass(frozen=True)
class QdqForm:
    """How activations are quantised: ``symmetric`` int8 with zero point 0 (TensorRT), or
    asymmetric uint8 (the CPU runtimes' U8S8); ``reduce_range``: weights in 7 bits (module
    docstring)."""

    name: str
    symmetric: bool
    reduce_range: bool = False


#: The two forms the bundle carries (module docstring): the CPU runtimes' and TensorRT's.
FORMS = {"cpu": QdqForm("cpu", symmetric=False, reduce_range=True),
         "tensorrt": QdqForm("tensorrt", symmetric=True)}

#: Module paths (TorchScript exporter node-name prefixes) of the detector's heads.
# The head runs once per FPN level: the exporter names its convolutions cls_logits/Conv,
# cls_logits_1/Conv, ... (one per level).
# The presence head (a pooled linear layer writing the score, when the detector has one) is
# kept FP32 with them: it is tiny and writes an output as they do.
_DETECTOR_OUTPUT_CONVS = ("/classification_head/cls_logits", "/regression_head/bbox_reg",
                          "/presence_head/")
_DETECTOR_HEADS = ("/classification_head/", "/regression_head/", "/presence_head/")


@dataclass(frozen=True)
class Int8Gate:
    """Limits an INT8 model must meet against FP32 on the validation frames."""

    min_box_iou: float = 0.98
    min_presence_agreement: float = 0.98
    min_mask_dice: float = 0.99

    def to_json(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Int8Result:
    """One model's INT8 outcome: ``shipped`` (written to ``file``) at ``level``, or not, and the
    gate measurements of every level tried."""

    kind: str
    shipped: bool
    level: int | None
    attempts: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"shipped": self.shipped, "fp32_level": self.level, "attempts": list(self.attempts)}


def excluded_nodes(model: onnx.ModelProto, kind: str, level: int) -> list[str]:
    """Names of the nodes kept FP32 at ``level`` (see the module docstring). Nodes must be named."""
    graph = model.graph
    keep = set(fp32_tail_nodes(graph))
    heavy = [n for n in graph.node if n.op_type in HEAVY_OPS]
    if kind == "detector":
        prefixes = _DETECTOR_OUTPUT_CONVS if level == 0 else _DETECTOR_HEADS
        keep |= {n.name for n in graph.node if n.name.startswith(prefixes)}
    else:
        if heavy:
            keep.add(heavy[-1].name)
        if level >= 1 and heavy:
            keep.add(heavy[0].name)
    return [n.name for n in graph.node if n.name in keep]


class _Reader:
    """``CalibrationDataReader``: one float32 (1, C, H, W) sample per call, then None."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self._input_name = input_name
        self._samples = samples
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._samples):
            return None
        x = np.ascontiguousarray(self._samples[self._i : self._i + 1], np.float32)
        self._i += 1
        return {self._input_name: x}

    def rewind(self) -> None:
        self._i = 0


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], kind: str,
                  input_name: str, calibration: np.ndarray, level: int,
                  form: QdqForm = FORMS["cpu"]) -> int:
    """Write the INT8 QDQ model of FP32 ``src`` in ``form`` to ``dst``, calibrated on
    ``calibration`` (float32 (N, 1, H, W) model inputs); returns the number of nodes kept FP32."""
    import onnx
    from bpedge.export.onnx_export import set_metadata
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be float32 (N, 1, H, W) with N >= 1, got "
                         f"{calibration.shape}")
    model = copy.deepcopy(onnx.load(str(src)))
    name_unnamed_nodes(model.graph)
    exclude = excluded_nodes(model, kind, level)

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="bpedge-int8-") as tmp:
        # quantize_static writes calibration scratch models beside its working directory.
        out = Path(tmp) / "model.int8.onnx"
        quantize_static(
            model, out, Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=form.reduce_range,
            activation_type=QuantType.QInt8 if form.symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
            # TensorRT's quantized types are INT8, INT4, FP8 and FP4 (same guide): its form keeps
            # biases float rather than ONNX Runtime's int32 bias DequantizeLinear.
            extra_options={"ActivationSymmetric": form.symmetric, "WeightSymmetric": True,
                           "QuantizeBias": not form.symmetric},
        )
        quantized = onnx.load(str(out))
    set_metadata(quantized, {"bpedge.model": kind, "bpedge.precision": "int8",
                             "bpedge.int8_fp32_level": str(level), "bpedge.int8_form": form.name})
    onnx.checker.check_model(quantized)
    if form.symmetric and (problems := tensorrt_qdq_problems(quantized)):
        raise RuntimeError(f"the quantiser wrote a {kind} QDQ model TensorRT cannot build: "
                           + "; ".join(problems[:3]))
    from bpedge._atomic import atomic_write_bytes

    atomic_write_bytes(Path(dst), quantized.SerializeToString())
    return len(exclude)


def tensorrt_qdq_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT's explicit quantisation would refuse ``model``'s Q/DQ nodes (empty: none
    found): every zero point must be a signed INT8 initializer of zeros (TensorRT: symmetric
    quantisation, signed INT8; "Working with Quantized Types", module docstring)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or not node.input[2]:
            # No zero point: ONNX's default is a uint8 zero, which TensorRT does not take.
            problems.append(f"{node.name}: no zero point (ONNX defaults it to uint8)")
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            problems.append(f"{node.name}: zero point {node.input[2]!r} is not a constant")
        elif zp.data_type != TensorProto.INT8:
            problems.append(f"{node.name}: zero point is {TensorProto.DataType.Name(zp.data_type)},"
                            " not INT8")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{node.name}: zero point is not 0 (asymmetric)")
    return problems


def gate_detector(fp32: tuple[np.ndarray, np.ndarray], int8: tuple[np.ndarray, np.ndarray],
                  score_threshold: float, gate: Int8Gate) -> tuple[dict[str, Any], list[str]]:
    """Measurements of INT8 detector outputs ``(scores (N,), boxes (N, 4))`` against FP32 and
    the reasons it fails the gate (empty: it passes)."""
    s32, b32 = fp32
    s8, b8 = int8
    nonfinite = int(s8.size - np.isfinite(s8).sum() + b8.size - np.isfinite(b8).sum())
    ious = [box_iou(a, b) for a, b in zip(b32.tolist(), b8.tolist())]
    finite = [v for v in ious if np.isfinite(v)]
    iou = float(np.mean(finite)) if finite else 0.0
    agree = float(np.mean((s32 >= score_threshold) == (s8 >= score_threshold)))
    report = {
        "frames": len(s32), "mean_box_iou_with_fp32": iou,
        "min_box_iou_with_fp32": float(np.min(finite)) if finite else None,
        "max_score_diff": float(np.abs(s32.astype(np.float64) - s8).max()) if len(s32) else 0.0,
        "presence_agreement": agree, "nonfinite_outputs": nonfinite,
    }
    problems = []
    if nonfinite:
        problems.append(f"INT8 detector gave {nonfinite} NaN/inf outputs")
    if iou < gate.min_box_iou:
        problems.append(f"INT8 detector mean box IoU with FP32 {iou:.4f} < {gate.min_box_iou}")
    if agree < gate.min_presence_agreement:
        problems.append(f"INT8 detector presence agrees with FP32 on {agree:.3f} of frames "
                        f"< {gate.min_presence_agreement}")
    return report, problems


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter, total = np.count_nonzero(a & b), np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * inter / total


def gate_segmenter(fp32: np.ndarray, int8: np.ndarray, mask_threshold: float,
                   gate: Int8Gate) -> tuple[dict[str, Any], list[str]]:
    """Measurements of INT8 segmenter probabilities (N, 1, h, w) against FP32 (mean Dice of the
    thresholded crops, empty vs empty = 1) and the reasons it fails the gate."""
    nonfinite = int(int8.size - np.isfinite(int8).sum())
    dices = [_dice(a >= mask_threshold, b >= mask_threshold) for a, b in zip(fp32, int8)]
    dice = float(np.mean(dices)) if dices else 1.0
    report = {
        "crops": len(fp32), "mean_mask_dice_with_fp32": dice,
        "min_mask_dice_with_fp32": float(np.min(dices)) if dices else None,
        "max_prob_diff": float(np.abs(fp32.astype(np.float64) - int8).max()) if len(fp32) else 0.0,
        "nonfinite_outputs": nonfinite,
    }
    problems = []
    if nonfinite:
        problems.append(f"INT8 segmenter gave {nonfinite} NaN/inf outputs")
    if dice < gate.min_mask_dice:
        problems.append(f"INT8 segmenter mask Dice with FP32 {dice:.4f} < {gate.min_mask_dice}")
    return report, problems


def quantize_gated(
    kind: str,
    src: Path,
    dst: Path,
    input_name: str,
    calibration: np.ndarray,
    run_and_gate: Callable[[Path], tuple[dict[str, Any], list[str]]],
    note: Callable[[str], None],
    levels: Sequence[int] = LEVELS,
    form: QdqForm = FORMS["cpu"],
) -> Int8Result:
    """Quantise ``src`` in ``form`` at each level in turn until ``run_and_gate(candidate path)``
    reports no problem; the passing model is left at ``dst``, a model that fails every level is
    removed."""
    attempts = []
    candidate = dst.with_name(dst.name + ".candidate")
    for level in levels:
        kept = quantize_int8(src, candidate, kind, input_name, calibration, level, form)
        report, problems = run_and_gate(candidate)
        attempts.append({"fp32_level": level, "fp32_nodes": kept, **report,
                         "passed": not problems, "problems": problems})
        note(f"{kind} INT8, {form.name} form (FP32 level {level}, {kept} nodes FP32): "
             + ("passed" if not problems else "; ".join(problems)))
        if not problems:
            os.replace(candidate, dst)
            return Int8Result(kind, True, level, tuple(attempts))
    candidate.unlink(missing_ok=True)
    return Int8Result(kind, False, None, tuple(attempts))
