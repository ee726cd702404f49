"""PyTorch model -> simplified, checked ONNX with the bundle's I/O contract.

The contract the runtimes (ONNX Runtime here, TensorRT and C++ on the device) are written against:

=========  ==========  =============================  ==========================================
model      tensor      shape (N = dynamic batch)      meaning
=========  ==========  =============================  ==========================================
detector   ``image``   float32 (N, 1, H, W)           frame resized to ``input_hw``, z-scored
detector   ``score``   float32 (N,)                   top-1 anchor's sigmoid score in [0, 1]
detector   ``box``     float32 (N, 4)                 its box x0, y0, x1, y1 in input pixels
segmenter  ``crop``    float32 (N, 1, h, w)           box region resized to ``crop_hw``, z-scored
segmenter  ``prob``    float32 (N, 1, h, w)           BP probability per crop pixel
=========  ==========  =============================  ==========================================

Steps: ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: torch 2.14 defaults to
the dynamo exporter, which needs onnxscript), opset 17, the batch axis named ``N`` on every input
and output; then onnxsim (constant folding, shape simplification); then ``onnx.checker`` with
``full_check`` (which includes strict shape inference). The written graph's I/O is read back and
compared with the contract, so a model whose forward changed cannot silently break the runtimes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bpedge._atomic import atomic_write_bytes
from bpedge._manifest import TensorSpec

if TYPE_CHECKING:
    import onnx
    from torch import nn

__all__ = [
    "BATCH_DIM",
    "IO_NAMES",
    "OPSET",
    "ExportedOnnx",
    "OnnxExportError",
    "check_contract",
    "contract_specs",
    "export_onnx",
    "read_io_specs",
    "set_metadata",
]

OPSET = 17
#: Name of the dynamic batch dimension, in the ONNX graphs and in the manifest's shapes.
BATCH_DIM = "N"
#: (input name, output names) of each model.
IO_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "detector": ("image", ("score", "box")),
    "segmenter": ("crop", ("prob",)),
}

_ONNX_DTYPES = {1: "float32", 10: "float16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool"}


class OnnxExportError(RuntimeError):
    """An exported graph is unusable (checker failure, or I/O that breaks the bundle contract)."""


@dataclass(frozen=True)
class ExportedOnnx:
    """An ONNX file written by :func:`export_onnx` and the I/O it was checked to have."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    nodes: int


def _check_kind(kind: str) -> None:
    if kind not in IO_NAMES:
        raise ValueError(f"model kind must be one of {sorted(IO_NAMES)}, got {kind!r}")


def contract_specs(kind: str, input_hw: Sequence[int]) -> tuple[tuple[TensorSpec, ...],
                                                                  tuple[TensorSpec, ...]]:
    """The (inputs, outputs) a ``kind`` model with input ``(H, W)`` = ``input_hw`` must have."""
    _check_kind(kind)
    h, w = (int(v) for v in input_hw)
    name, outputs = IO_NAMES[kind]
    image = TensorSpec(name, (BATCH_DIM, 1, h, w), "float32")
    if kind == "detector":
        score, box = outputs
        return (image,), (TensorSpec(score, (BATCH_DIM,), "float32"),
                          TensorSpec(box, (BATCH_DIM, 4), "float32"))
    return (image,), (TensorSpec(outputs[0], (BATCH_DIM, 1, h, w), "float32"),)


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor.elem_type)
    if dtype is None:
        raise OnnxExportError(f"tensor {value.name!r} has ONNX element type {tensor.elem_type}, "
                              f"which the bundle does not support ({sorted(_ONNX_DTYPES.values())})")
    shape: list[int | str] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        else:
            shape.append(dim.dim_param or "?")
    if any(d == "?" for d in shape):
        raise OnnxExportError(f"tensor {value.name!r} has an unnamed dynamic dimension: "
                              f"{shape} (only the batch axis {BATCH_DIM!r} may be dynamic)")
    return TensorSpec(value.name, tuple(shape), dtype)


def read_io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's (inputs, outputs) as manifest tensor specs; initializers listed as inputs (old
    exporters do that) are left out."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_value_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_value_spec(v) for v in model.graph.output)
    return inputs, outputs


def check_contract(model: onnx.ModelProto, kind: str, input_hw: Sequence[int], where: str) -> None:
    """Raise :class:`OnnxExportError` unless ``model``'s I/O is exactly the contract's."""
    got = read_io_specs(model)
    want = contract_specs(kind, input_hw)
    if got != want:
        def show(specs: tuple[tuple[TensorSpec, ...], ...]) -> str:
            return "; ".join(f"{t.name} {t.dtype} {list(t.shape)}" for part in specs for t in part)

        raise OnnxExportError(f"{where}: the graph's inputs/outputs are [{show(got)}], the bundle "
                              f"contract is [{show(want)}]")


def export_onnx(
    model: nn.Module,
    kind: str,
    input_hw: Sequence[int],
    path: str | os.PathLike[str],
    *,
    opset: int = OPSET,
    example_batch: int = 2,
) -> ExportedOnnx:
    """Export an eval-mode ``model`` (``kind`` "detector" or "segmenter", input ``(N, 1, H, W)``
    with ``(H, W)`` = ``input_hw``) to ``path``: TorchScript export, onnxsim, ``onnx.checker``.

    The model must be on the CPU. Raises :class:`OnnxExportError` if the simplified graph fails the
    checker or its I/O differs from :func:`contract_specs`.
    """
    import onnx
    import torch
    from onnxsim import simplify

    _check_kind(kind)
    if opset < OPSET:
        raise ValueError(f"opset must be >= {OPSET} (TensorRT 10/11 parse it), got {opset}")
    if example_batch < 1:
        raise ValueError(f"example_batch must be >= 1, got {example_batch}")
    if model.training:
        raise ValueError(f"the {kind} must be in eval mode (model.eval()) to be exported")
    h, w = (int(v) for v in input_hw)
    input_name, output_names = IO_NAMES[kind]
    example = torch.zeros(example_batch, 1, h, w, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="bpedge-onnx-") as scratch:
        raw = Path(scratch) / f"{kind}.raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # torch 2.14 warns that the TorchScript exporter is deprecated; it is the one that
            # works without onnxscript, and its graphs are checked below.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(raw), dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=list(output_names),
                dynamic_axes={name: {0: BATCH_DIM} for name in (input_name, *output_names)},
                do_constant_folding=True,
            )
        exported = onnx.load(str(raw))
    simplified, ok = simplify(exported)
    if not ok:
        raise OnnxExportError(f"onnxsim could not validate the simplified {kind} graph")
    where = str(path)
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{where}: onnx.checker refused the {kind} graph: {exc}") from exc
    check_contract(simplified, kind, (h, w), where)
    set_metadata(simplified, {"bpedge.model": kind, "bpedge.precision": "fp32"})
    atomic_write_bytes(path, simplified.SerializeToString())
    inputs, outputs = read_io_specs(simplified)
    return ExportedOnnx(Path(path), inputs, outputs, len(simplified.graph.node))


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Record what a file is inside it too (``metadata_props``), for consumers that see the ONNX
    without the manifest; existing keys not in ``values`` are kept."""
    import onnx

    merged = {p.key: p.value for p in model.metadata_props}
    merged.update(values)
    onnx.helper.set_model_props(model, merged)  # replaces the whole list
