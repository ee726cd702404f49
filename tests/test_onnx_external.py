"""The external-data finder (``bpedge._onnx_external``) sees a tensor that keeps its values in
another file wherever ONNX can put a tensor (initializers, Constant attributes, sparse
initializers, If/Loop subgraphs, functions), agrees with ``onnx`` on models without any, and
keeps walking past unknown fields, groups included, as protobuf parsers do."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper

from bpedge._onnx_external import NotOnnx, external_data_references


def external(name: str, location: str = "w.bin") -> TensorProto:
    tensor = numpy_helper.from_array(np.ones((2,), np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def io(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])


def model(graph: onnx.GraphProto, **kwargs: object) -> bytes:
    made = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)], **kwargs)
    return bytes(made.SerializeToString())


def plain_graph(nodes: list, initializers: list = (), **kwargs: object) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", [io("x")], [io("y")], list(initializers), **kwargs)


def in_initializer() -> bytes:
    return model(plain_graph([helper.make_node("Add", ["x", "w"], ["y"])], [external("w")]))


def in_constant() -> bytes:
    return model(plain_graph([helper.make_node("Constant", [], ["w"], value=external("w")),
                              helper.make_node("Add", ["x", "w"], ["y"])]))


def in_sparse_initializer() -> bytes:
    values = external("w")
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "w_idx")
    sparse = helper.make_sparse_tensor(values, indices, [2])
    graph = plain_graph([helper.make_node("Add", ["x", "w"], ["y"])])
    graph.sparse_initializer.append(sparse)
    return model(graph)


def in_subgraph() -> bytes:
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "b", [], [io("y")],
                               [external("w")])
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    return model(plain_graph([node], [cond]))


def in_function() -> bytes:
    body = [helper.make_node("Constant", [], ["w"], value=external("w")),
            helper.make_node("Add", ["a", "w"], ["b"])]
    function = helper.make_function("local", "f", ["a"], ["b"], body,
                                    [helper.make_operatorsetid("", 17)])
    graph = plain_graph([helper.make_node("f", ["x"], ["y"], domain="local")])
    return model(graph, functions=[function])


@pytest.mark.parametrize("make", [in_initializer, in_constant, in_sparse_initializer,
                                  in_subgraph, in_function])
def test_a_tensor_with_external_data_is_found_wherever_onnx_puts_it(make):
    assert set(external_data_references(make())) == {("w", "w.bin")}


def test_a_model_with_its_weights_inside_has_no_references():
    graph = plain_graph([helper.make_node("Add", ["x", "w"], ["y"])],
                        [numpy_helper.from_array(np.ones((2,), np.float32), "w")])
    assert external_data_references(model(graph)) == []


def test_unknown_fields_and_groups_are_skipped_not_taken_for_the_end():
    # Field 99 as a group (wire type 3 .. 4) holding a varint, then the real graph: protobuf
    # keeps such an unknown group, so the tensor after it must still be seen.
    group = bytes([0x9B, 0x06, 0x08, 0x01, 0x9C, 0x06])  # tag(99, 3), tag(1, 0) 1, tag(99, 4)
    assert external_data_references(group + in_initializer()) == [("w", "w.bin")]


@pytest.mark.parametrize("junk", [b"\x00" * 8, b"root:x:0:0:root:/root:/bin/bash\n",
                                  b"\x3a\xff\xff\xff\x0f"])
def test_bytes_that_are_not_a_protobuf_message_raise_not_onnx(junk: bytes):
    with pytest.raises(NotOnnx):
        external_data_references(junk)
