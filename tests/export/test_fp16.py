"""FP16 conversion: the FP32 tail, Cast round trips folded exactly, graph order, and the converted
segmenter against its FP32 graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bpedge.export.fp16 import (
    convert_to_fp16,
    fold_cast_round_trips,
    fp32_tail_nodes,
    name_unnamed_nodes,
    sort_topologically,
)
from bpedge.export.onnx_export import OnnxExportError, read_io_specs
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def graph_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def value(name: str, elem: int = FLOAT, shape=(1, 1, 4, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_the_tail_is_every_node_that_reaches_no_convolution() -> None:
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),          # feeds conv2: not tail
        helper.make_node("Exp", ["c1"], ["side"], name="exp"),          # a side output: tail
        helper.make_node("Conv", ["r", "w"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["s"], name="sigmoid"),     # tail
        helper.make_node("Mul", ["s", "side"], ["y"], name="mul"),      # tail
    ]
    model = graph_model(nodes, [value("x")], [value("y")], [w])
    assert fp32_tail_nodes(model.graph) == ["exp", "sigmoid", "mul"]


def test_a_cast_round_trip_is_folded_exactly() -> None:
    # x -> Relu -> Cast(fp16) -> Cast(fp32) -> Exp -> y1, and the same pair straight into y2.
    to16 = {"to": FLOAT16}
    to32 = {"to": FLOAT}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["r16"], name="a", **to16),
        helper.make_node("Cast", ["r16"], ["r32"], name="b", **to32),
        helper.make_node("Exp", ["r32"], ["y1"], name="exp"),
        helper.make_node("Cast", ["r"], ["q16"], name="c", **to16),
        helper.make_node("Cast", ["q16"], ["y2"], name="d", **to32),
    ]
    model = graph_model(nodes, [value("x")], [value("y1"), value("y2")])
    model = onnx.shape_inference.infer_shapes(model)
    x = np.full((1, 1, 4, 4), 1.0001, np.float32)  # not representable in FP16
    before = run(model, x)
    assert before[1][0, 0, 0, 0] != x[0, 0, 0, 0]  # the round trip rounds
    assert fold_cast_round_trips(model.graph) == 2
    onnx.checker.check_model(model, full_check=True)
    y1, y2 = run(model, x)
    np.testing.assert_array_equal(y2, x)
    np.testing.assert_allclose(y1, np.exp(x), rtol=1e-6)
    assert [n.name for n in model.graph.node] == ["relu", "exp", "d"]  # a, b, c removed


def test_nodes_are_named_uniquely_and_sorted_into_graph_order() -> None:
    nodes = [
        helper.make_node("Neg", ["r"], ["y"]),           # needs r, listed first
        helper.make_node("Relu", ["x"], ["r"], name="dup"),
        helper.make_node("Abs", ["x"], ["z"], name="dup"),
    ]
    model = graph_model(nodes, [value("x")], [value("y"), value("z")])
    name_unnamed_nodes(model.graph)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == 3 and all(names)
    sort_topologically(model.graph)
    order = [n.op_type for n in model.graph.node]
    assert order.index("Relu") < order.index("Neg")
    onnx.checker.check_model(model, full_check=True)

    cyclic = graph_model([helper.make_node("Neg", ["y"], ["y2"], name="n1"),
                          helper.make_node("Neg", ["y2"], ["y"], name="n2")],
                         [value("x")], [value("y")])
    with pytest.raises(OnnxExportError, match="cycle"):
        sort_topologically(cyclic.graph)


def test_the_segmenter_in_fp16_keeps_float32_io_and_an_fp32_sigmoid(tiny_bundle: Path) -> None:
    fp32 = onnx.load(str(tiny_bundle / "segmenter.fp32.onnx"))
    original = fp32.SerializeToString()
    converted, info = convert_to_fp16(fp32)
    assert fp32.SerializeToString() == original  # the input model is not changed
    onnx.checker.check_model(converted, full_check=True)
    assert read_io_specs(converted) == read_io_specs(fp32)
    assert info.tail_op_types == ("Sigmoid",)
    assert info.fp16_tensors > 0
    inferred = onnx.shape_inference.infer_shapes(converted)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    (sigmoid,) = [n for n in inferred.graph.node if n.op_type == "Sigmoid"]
    assert types[sigmoid.input[0]] == FLOAT
    x = np.random.default_rng(1).normal(size=(3, 1, 96, 96)).astype(np.float32)
    (p32,), (p16,) = run(fp32, x), run(converted, x)
    assert p16.dtype == np.float32
    assert 0 < np.abs(p16 - p32).max() < 1e-2
