"""JSON for the manifest's dataclasses, derived from their fields: writing, strict reading, and
a JSON Schema (``manifest.schema.json``, shipped in the package for readers in other languages).

A field's type hint says how it is read: a nested record (a :class:`JsonRecord`) through its own
``from_json``, a ``tuple[Record, ...]`` as a list of them, ``Record | None`` as an object or
null, anything else as the plain JSON value (the record's ``__post_init__`` checks it). Field
metadata adds what a type cannot say: ``OMIT_IF_DEFAULT`` (an optional field, written only when
it differs from its default) and ``schema`` (extra JSON Schema keywords: a pattern, an enum).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, Union

from bpedge._manifest_fields import reading

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; README and pyproject say 3.10

#: Field metadata: the field may be missing from the JSON (then its default) and is written only
#: when it differs from the default.
OMIT_IF_DEFAULT = "omit_if_default"

R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """Mixin for a frozen dataclass of the manifest: ``to_json``/``from_json`` from its fields."""

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, obj: object) -> Self:
        return read_record(cls, obj)


def to_json_value(value: Any) -> Any:
    """A field value as plain JSON types (records and dataclasses as objects, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        return to_json() if callable(to_json) else record_json(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_json_value(v) for v in value]
    return value


def record_json(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` in declaration order (``OMIT_IF_DEFAULT`` fields only when
    they differ from their default)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get(OMIT_IF_DEFAULT) and value == f.default:
            continue
        out[f.name] = to_json_value(value)
    return out


def read_record(cls: type[R], obj: object) -> R:
    """Construct ``cls`` from a parsed JSON object, reading fields in declaration order; unknown
    fields, missing required fields and bad values raise a ``FieldError`` naming the field."""
    hints = typing.get_type_hints(cls)
    with reading(obj) as r:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.metadata.get(OMIT_IF_DEFAULT):
                kwargs[f.name] = r.take_or(f.name, f.default)
                continue
            tp = hints[f.name]
            record, optional, many = _record_type(tp)
            if record is None:
                kwargs[f.name] = r.take(f.name)
            elif many:
                kwargs[f.name] = r.take_list(f.name, record)
            elif optional:
                kwargs[f.name] = r.take_opt_obj(f.name, record)
            else:
                kwargs[f.name] = r.take_obj(f.name, record)
        return cls(**kwargs)


def _record_type(tp: Any) -> tuple[type | None, bool, bool]:
    """(record class or None, optional, a tuple of them) for a field's type hint."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and _is_record(inner[0]):
            return inner[0], True, False
        return None, False, False
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and _is_record(args[0]):
        return args[0], False, True
    if _is_record(tp):
        return tp, False, False
    return None, False, False


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, JsonRecord)


# --- JSON Schema -------------------------------------------------------------------------------


def json_schema(cls: type, title: str) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of ``cls``'s JSON, with one ``$defs`` entry per record."""
    defs: dict[str, Any] = {}
    root = _record_schema(cls, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **root,
            "$defs": dict(sorted(defs.items()))}


def _record_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        props[f.name] = {**_type_schema(hints[f.name], defs), **f.metadata.get("schema", {})}
        if not f.metadata.get(OMIT_IF_DEFAULT):
            required.append(f.name)
    doc = (cls.__doc__ or "").strip()
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required,
                              "additionalProperties": False}
    return {"description": " ".join(doc.split()), **schema} if doc else schema


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type_schema(args[0], defs)}
        return {"type": "array", "prefixItems": [_type_schema(a, defs) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": _type_schema(value, defs)}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder: a record that refers to itself stays finite
            defs[name] = _record_schema(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"no JSON Schema for type {tp!r}")
