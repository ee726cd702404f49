"""Finding ONNX *external data* references in a model's bytes, without the ``onnx`` package.

A TensorProto may keep its values in another file: ``data_location = EXTERNAL`` and
``external_data`` entries naming a ``location`` (a path), ``offset`` and ``length``. A runtime
given such a model reads that path: ONNX Runtime, loading from bytes, resolves it against the
process's working directory (1.32 refuses absolute and escaping paths, older releases did not
check), and the TensorRT and OpenVINO parsers have their own rules. A bundle is self-contained,
so bpedge refuses every model that refers to external data, before any runtime sees it.

The ONNX package is not a runtime dependency, so this walks the protobuf wire format
(https://protobuf.dev/programming-guides/encoding/) through exactly the messages that can hold a
tensor, with the field numbers of ``onnx/onnx.proto`` (ONNX 1.23): ModelProto.graph = 7,
.training_info = 20, .functions = 25; TrainingInfoProto.initialization = 1, .algorithm = 2;
GraphProto.node = 1, .initializer = 5, .sparse_initializer = 15; NodeProto.attribute = 5;
FunctionProto.node = 7, .attribute_proto = 11; AttributeProto.t = 5, .g = 6, .tensors = 10,
.graphs = 11, .sparse_tensor = 22, .sparse_tensors = 23; SparseTensorProto.values = 1,
.indices = 2; TensorProto.name = 8, .external_data = 13 (StringStringEntryProto key = 1,
value = 2), .data_location = 14 (EXTERNAL = 1). Everything else (weights' raw bytes included)
is skipped by its length, so a model is walked in a fraction of the time ONNX Runtime takes
to load it.
"""

from __future__ import annotations

from collections.abc import Iterator

_MODEL, _TRAINING, _GRAPH, _NODE, _FUNCTION, _ATTRIBUTE, _SPARSE, _TENSOR = range(8)

#: For each message kind, its fields that hold one of the messages above.
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1
#: Nesting (subgraphs of subgraphs) beyond this is refused; protobuf's own parsers stop at 100.
_MAX_DEPTH = 100


class NotOnnx(ValueError):
    """The bytes are not a protobuf message (truncated, or not an ONNX file at all)."""


def external_data_references(data: bytes) -> list[tuple[str, str]]:
    """``(tensor name, location)`` for every tensor of the ONNX model ``data`` whose values live
    in another file (``location`` is ``""`` when the entry names none). Raises :class:`NotOnnx`
    when ``data`` is not a well-formed protobuf message."""
    found: list[tuple[str, str]] = []
    _walk(memoryview(data), 0, len(data), _MODEL, 0, found)
    return found


def _walk(buf: memoryview, start: int, end: int, kind: int, depth: int,
          found: list[tuple[str, str]]) -> None:
    if depth > _MAX_DEPTH:
        raise NotOnnx(f"messages nested more than {_MAX_DEPTH} deep")
    children = _CHILDREN[kind]
    name, location, external = "", "", False
    for number, wire, value in _fields(buf, start, end):
        if kind == _TENSOR:
            if number == _TENSOR_NAME and wire == 2:
                name = _text(buf, value)
            elif number == _TENSOR_DATA_LOCATION and wire == 0:
                external = external or value[0] == _EXTERNAL
            elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                external = True
                key, text = _entry(buf, value)
                if key == "location":
                    location = text
        elif number in children and wire == 2:
            _walk(buf, value[0], value[1], children[number], depth + 1, found)
    if external:
        found.append((name, location))


def _entry(buf: memoryview, span: tuple[int, int]) -> tuple[str, str]:
    key = text = ""
    for number, wire, value in _fields(buf, *span):
        if wire == 2 and number == 1:
            key = _text(buf, value)
        elif wire == 2 and number == 2:
            text = _text(buf, value)
    return key, text


def _text(buf: memoryview, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """(field number, wire type, value) of each field in ``buf[pos:end]``: a varint as
    ``(value, 0)``, a length-delimited field as its ``(start, end)``, fixed-size ones as spans."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise NotOnnx(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, (value, 0)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise NotOnnx(f"a field runs past the end of its message at byte {pos}")
            yield number, wire, (pos, pos + size)
            pos += size
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise NotOnnx(f"a field of {size} bytes runs past the end of its message at "
                              f"byte {pos} (the file is truncated?)")
            yield number, wire, (pos, pos + size)
            pos += size
        elif wire == 3:  # a (deprecated) group: ONNX declares none, so it is an unknown field
            pos = _skip_group(buf, pos, end, number)
        else:  # 4 outside a group; 6 and 7 do not exist
            raise NotOnnx(f"wire type {wire} at byte {pos}")


def _skip_group(buf: memoryview, pos: int, end: int, number: int, depth: int = 0) -> int:
    """The position after the group ``number`` that starts at ``pos`` (its end tag included).
    Protobuf parsers keep groups in unknown fields, so skipping them (instead of refusing the
    model) keeps every tensor after one in view."""
    if depth > _MAX_DEPTH:
        raise NotOnnx(f"groups nested more than {_MAX_DEPTH} deep")
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        inner, wire = tag >> 3, tag & 7
        if wire == 4:
            if inner != number:
                raise NotOnnx(f"group {number} ends as group {inner} at byte {pos}")
            return pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            pos += size
        elif wire == 3:
            pos = _skip_group(buf, pos, end, inner, depth + 1)
        else:
            raise NotOnnx(f"wire type {wire} at byte {pos}")
        if pos > end:
            raise NotOnnx(f"a field runs past the end of its message at byte {pos}")
    raise NotOnnx(f"group {number} has no end")


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise NotOnnx(f"a malformed number at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
