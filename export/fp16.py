"""FP32 ONNX -> mixed-precision FP16 ONNX, with float32 inputs and outputs.

Why an FP16 ONNX at all: TensorRT 11 removed the builder's FP16 flag; reduced precision must be
written in the model, and the network built strongly typed (DESIGN.md, "TensorRT facts").

Converter: ``onnxruntime.transformers.float16.convert_float_to_float16``, ONNX Runtime's maintained
fork of onnxconverter-common's ``float16`` module (the converter ONNX Runtime documents for this
job: https://onnxruntime.ai/docs/performance/model-optimizations/float16.html). It needs no
calibration data and takes exactly the controls needed here: ``keep_io_types=True`` (graph I/O
stays float32 with Cast nodes inside, so the runtime feeds the same arrays to both precisions),
``op_block_list`` (op types kept FP32) and ``node_block_list`` (single nodes kept FP32).

Why the fork and not ``onnxconverter_common.float16`` itself (1.16, also installed): read in its
source, (1) ``keep_io_types`` is lost for a graph output produced by a blocked node: the output is
retyped float16, which breaks the float32 I/O contract (found when the detector's ``box`` came out
float16); (2) it clips constants to +-1e4 by default (FP16 reaches 65504); (3) its Cast-pair
clean-up compares the ``to`` attribute with 16/32 instead of the ONNX type codes for
multi-consumer casts, so it never fires there. The fork adds explicit I/O casts for (1), uses FP16's
real range for (2), and keeps an initializer FP32 when only blocked nodes use it (its module header
lists its changes). Alternatives: ``auto_mixed_precision`` (searches the block list by running
data; slow, and the result depends on the data) and NVIDIA ModelOpt's AutoCast (not a dependency).

Both converters hand every blocked node's output back as FP16 (to them a blocked op is one without
an FP16 kernel), so a chain of blocked nodes would still round every intermediate value to FP16.
:func:`fold_cast_round_trips` bypasses those FP32 -> FP16 -> FP32 Cast pairs afterwards, which is
exact (it only removes roundings), so the blocked region really computes in FP32.

What stays FP32, and why:

- ``op_block_list``: the converter's defaults (``DEFAULT_OP_BLOCK_LIST``: TopK, Min, Max, Range,
  ...), Resize (interpolation weights), plus ops whose FP16 result loses range or precision: Exp and Log (the box
  decode's ``exp(dw)``), Sigmoid/Softmax (probabilities near 0 and 1), reductions
  (ReduceMean/ReduceSum/Pow/Sqrt/Reciprocal, as in normalisation layers) and the normalisations
  that compute statistics at run time (Instance/Layer/Group normalisation).
- ``node_block_list``: the *post-network tail*, every node from which no convolution or matrix
  product can be reached. For the detector that is the top-1 selection and the box decode: in
  FP16 a box coordinate near 576 px is only representable to 0.5 px, and the anchors (kept FP32
  with their consumers) would be rounded too. For the segmenters it is the final Sigmoid and, for
  M-Net, the upsampled side outputs and their average. The tail is a few element-wise ops, so
  keeping it FP32 costs nothing measurable.

Everything else (convolutions, BatchNorm at inference, ReLU, pooling, concatenation) runs in FP16.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpedge.export.onnx_export import OnnxExportError, check_contract, set_metadata

from bpedge._atomic import atomic_write_bytes

if TYPE_CHECKING:
    import onnx

__all__ = [
    "CONVERTER",
    "HEAVY_OPS",
    "SENSITIVE_OPS",
    "Fp16Conversion",
    "convert_to_fp16",
    "fold_cast_round_trips",
    "fp32_tail_nodes",
    "write_fp16_onnx",
]

CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16"

#: Ops kept in FP32 beyond the converter's defaults (see the module docstring).
SENSITIVE_OPS: tuple[str, ...] = (
    "Exp", "Log", "Sigmoid", "Softmax", "LogSoftmax", "Resize",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization",
)

#: Ops that do the network's real work; the FP32 tail is what comes after the last of them.
HEAVY_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")

_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16


@dataclass(frozen=True)
class Fp16Conversion:
    """What :func:`convert_to_fp16` did: the converter, the op types and tail nodes kept FP32,
    the Cast round trips folded away, and the size of the result."""

    converter: str
    converter_version: str
    blocked_ops: tuple[str, ...]
    tail_nodes: tuple[str, ...]
    tail_op_types: tuple[str, ...]
    folded_round_trips: int
    nodes: int
    fp16_tensors: int

    def to_json(self) -> dict[str, Any]:
        return {
            "converter": self.converter,
            "converter_version": self.converter_version,
            "keep_io_types": True,
            "fp32_op_types": list(self.blocked_ops),
            "fp32_tail_nodes": len(self.tail_nodes),
            "fp32_tail_op_types": list(self.tail_op_types),
            "folded_cast_round_trips": self.folded_round_trips,
            "nodes": self.nodes,
            "fp16_tensors": self.fp16_tensors,
        }


def name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name: ``node_block_list`` matches by name, and an empty or
    repeated name would block (or miss) other nodes with it."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base, k = f"{node.name or node.op_type}__{i}", 0
            candidate = base
            while candidate in seen:
                k += 1
                candidate = f"{base}_{k}"
            node.name = candidate
        seen.add(node.name)


def fp32_tail_nodes(graph: onnx.GraphProto, heavy_ops: Iterable[str] = HEAVY_OPS) -> list[str]:
    """Names of the nodes from which no ``heavy_ops`` node can be reached, in graph order.

    Nodes must be named (see :func:`name_unnamed_nodes`); subgraphs (If/Loop bodies) are not
    entered: the bundle's models have none.
    """
    heavy = set(heavy_ops)
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name:
                consumers[name].append(i)
    reaches = [False] * len(graph.node)
    # Graph order is topological, so walking it backwards sees every consumer before its producer.
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        reaches[i] = node.op_type in heavy or any(
            reaches[c] for out in node.output for c in consumers.get(out, [])
        )
    return [node.name for i, node in enumerate(graph.node) if not reaches[i]]


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((int(a.i) for a in node.attribute if a.name == "to"), None)


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def fold_cast_round_trips(graph: onnx.GraphProto) -> int:
    """Bypass every ``x (float32) -> Cast(float16) -> Cast(float32)`` pair: consumers of the second
    Cast read ``x`` itself. Exact (only a rounding is removed); Cast
    nodes left without consumers are removed. Returns the number of pairs bypassed."""
    types = _elem_types(graph)
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {v.name for v in graph.output}
    replace: dict[str, str] = {}
    bypassed = 0
    for node in graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if (
            _cast_to(node) == _FLOAT
            and first is not None
            and _cast_to(first) == _FLOAT16
            and types.get(first.input[0]) == _FLOAT
        ):
            bypassed += 1
            if node.output[0] in graph_outputs:
                node.input[0] = first.input[0]  # a float32 -> float32 Cast: an identity
            else:
                replace[node.output[0]] = first.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    _remove_dead_casts(graph)
    return bypassed


def _remove_dead_casts(graph: onnx.GraphProto) -> None:
    keep_names = {v.name for v in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | keep_names
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    produced = {out for node in graph.node for out in node.output}
    stale = [v for v in graph.value_info if v.name not in produced]
    for value in stale:
        graph.value_info.remove(value)


def sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (the
    converter appends its Cast nodes at the end; ``onnx.checker`` wants graph order)."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    waiting: dict[str, list[int]] = defaultdict(list)
    missing = []
    for i, node in enumerate(nodes):
        need = {name for name in node.input if name not in available}
        missing.append(len(need))
        for name in need:
            waiting[name].append(i)
    ready = deque(i for i, m in enumerate(missing) if m == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for out in nodes[i].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    ready.append(j)
    if len(order) != len(nodes):
        raise OnnxExportError("the FP16 graph has a cycle or an input nothing produces")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def convert_to_fp16(
    model: onnx.ModelProto, extra_fp32_ops: Sequence[str] = ()
) -> tuple[onnx.ModelProto, Fp16Conversion]:
    """A mixed-precision FP16 copy of an FP32 ``model`` (float32 I/O kept; see the module
    docstring for what stays FP32). ``model`` itself is not changed."""
    import onnxruntime
    from onnxruntime.transformers import float16

    source = copy.deepcopy(model)
    name_unnamed_nodes(source.graph)
    tail = fp32_tail_nodes(source.graph)
    tail_set = set(tail)
    tail_types = tuple(sorted({n.op_type for n in source.graph.node if n.name in tail_set}))
    blocked = tuple(dict.fromkeys([*float16.DEFAULT_OP_BLOCK_LIST, *SENSITIVE_OPS,
                                   *extra_fp32_ops]))
    converted = float16.convert_float_to_float16(
        source, keep_io_types=True, op_block_list=list(blocked), node_block_list=tail
    )
    folded = fold_cast_round_trips(converted.graph)
    sort_topologically(converted.graph)
    fp16_tensors = _count_fp16_tensors(converted)
    if fp16_tensors == 0:
        raise OnnxExportError("the FP16 conversion left no tensor in float16: the graph has "
                              "nothing the converter could convert")
    info = Fp16Conversion(
        converter=CONVERTER,
        converter_version=f"onnxruntime {onnxruntime.__version__}",
        blocked_ops=blocked,
        tail_nodes=tuple(tail),
        tail_op_types=tail_types,
        folded_round_trips=folded,
        nodes=len(converted.graph.node),
        fp16_tensors=fp16_tensors,
    )
    return converted, info


def _count_fp16_tensors(model: onnx.ModelProto) -> int:
    values = [v for v in model.graph.value_info if v.type.tensor_type.elem_type == _FLOAT16]
    weights = [t for t in model.graph.initializer if t.data_type == _FLOAT16]
    return len(values) + len(weights)


def write_fp16_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    kind: str,
    input_hw: Sequence[int],
) -> Fp16Conversion:
    """Read the FP32 ONNX ``src``, convert it (:func:`convert_to_fp16`), check it
    (``onnx.checker`` and the bundle's I/O contract: float32 I/O, same names and shapes) and write
    it to ``dst``. Raises :class:`OnnxExportError` if a check fails."""
    import onnx

    model = onnx.load(str(src))
    converted, info = convert_to_fp16(model)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{dst}: onnx.checker refused the FP16 {kind} graph: {exc}") from exc
    check_contract(converted, kind, input_hw, str(dst))
    set_metadata(converted, {"bpedge.model": kind, "bpedge.precision": "fp16"})
    atomic_write_bytes(Path(dst), converted.SerializeToString())
    return info
