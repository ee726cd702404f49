"""Checking and reading manifest fields: the errors that name a field, value checks used by the
schema's dataclasses, a reader that walks a JSON object field by field (required fields, no
unknown ones, errors prefixed with where they happened), and sha256 / time helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, TypeGuard, TypeVar

MANIFEST_NAME = "manifest.json"

_HASH_CHUNK = 1 << 20

T = TypeVar("T")


class BundleError(ValueError):
    """A bundle or its manifest is not usable as it is: the message names the file or field and
    says how to fix it."""


class FieldError(BundleError):
    """A manifest field is missing or has a bad value; ``path`` is dotted (``models.detector``)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"field '{path}' {problem}" if path else problem)

    def within(self, parent: str) -> FieldError:
        """The same error seen from the object that holds this one."""
        return FieldError(f"{parent}.{self.path}" if self.path else parent, self.problem)


# --- value checks (used by the dataclasses' __post_init__) -----------------------------------


def set_field(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise their fields this way


def is_int(value: object) -> TypeGuard[int]:
    # NumPy integers count: they are numbers.Integral (and compare like ints).
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_str(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise FieldError(name, f"must be a non-empty string, got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    number = int(value) if is_int(value) else None
    if number is None or number < minimum:
        raise FieldError(name, f"must be an integer >= {minimum}, got {value!r}")
    return number


def check_float(name: str, value: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    # Any real number (NumPy scalars included) is accepted and stored as a plain float.
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if is_real else None  # type: ignore[arg-type]
    if number is None or not math.isfinite(number) or not lo <= number <= hi:
        span = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g}]"
        raise FieldError(name, f"must be a finite number{span}, got {value!r}")
    return number


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise FieldError(name, f"must be one of {list(choices)}, got {value!r}")
    return str(value)


#: Largest model input side a manifest may declare (the frame limit, bpedge._frames.MAX_SIDE):
#: a model with dynamic sizes would otherwise be fed, and allocate, whatever the manifest says.
MAX_MODEL_SIDE = 8192


def check_hw(name: str, value: object) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        is_int(v) and 1 <= v <= MAX_MODEL_SIDE for v in value
    ):
        raise FieldError(name, f"must be [height, width] of two integers in [1, "
                               f"{MAX_MODEL_SIDE}], got {value!r}")
    return (int(value[0]), int(value[1]))


def check_iso_time(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"must be an ISO 8601 time string, got {value!r}")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise FieldError(name, f"must be an ISO 8601 time string, got {value!r}") from None
    return value


def check_free_form(name: str, value: object) -> dict[str, Any]:
    # Free-form sections (metrics, how thresholds were chosen...) must still be strict JSON.
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise FieldError(name, f"must be a JSON object with string keys, got {value!r}")
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FieldError(name, f"must hold only strict JSON values (no NaN, no objects): {exc}")
    return dict(json.loads(text))  # a private copy, so no caller can change it afterwards


def check_file_name(name: str, value: object) -> str:
    """A file named by the manifest: relative, inside the bundle, with '/' separators."""
    text = check_str(name, value)
    pure = PurePosixPath(text)
    if (
        "\\" in text
        or pure.is_absolute()
        or ".." in pure.parts
        or text != pure.as_posix()
        or text == MANIFEST_NAME
        or re.match(r"^[A-Za-z]:", text)
        or any(ord(c) < 32 or ord(c) == 127 for c in text)  # NUL, newlines: no file has them
    ):
        raise FieldError(
            name, f"must be a relative path inside the bundle such as 'detector.onnx', got {text!r}"
        )
    return text


# --- reading JSON objects field by field -------------------------------------------------------


class FieldReader:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj = obj
        self._taken: set[str] = set()

    def take(self, name: str) -> Any:
        if name not in self._obj:
            raise FieldError(name, "is required but missing")
        self._taken.add(name)
        return self._obj[name]

    def take_or(self, name: str, default: Any) -> Any:
        """An optional field: ``default`` when missing."""
        return self.take(name) if name in self._obj else default

    def take_obj(self, name: str, cls: type[T]) -> T:
        value = self.take(name)
        try:
            return cls.from_json(value)  # type: ignore[attr-defined, no-any-return]
        except FieldError as exc:
            raise exc.within(name) from None

    def take_opt_obj(self, name: str, cls: type[T]) -> T | None:
        return None if self.take(name) is None else self.take_obj(name, cls)

    def take_list(self, name: str, cls: type[T]) -> tuple[T, ...]:
        value = self.take(name)
        if not isinstance(value, list):
            raise FieldError(name, f"must be a list, got {value!r}")
        items = []
        for i, item in enumerate(value):
            try:
                items.append(cls.from_json(item))  # type: ignore[attr-defined]
            except FieldError as exc:
                raise exc.within(f"{name}[{i}]") from None
        return tuple(items)

    def finish(self) -> None:
        unknown = sorted(set(self._obj) - self._taken)
        if unknown:
            raise FieldError(unknown[0], "is not a field of this schema (a typo, or a manifest "
                                         "from another bpedge?)")


class reading:
    """``with reading(obj) as r:`` reads fields of a JSON object, prefixes errors raised while
    constructing with ``where`` and, on success, refuses fields nobody read."""

    def __init__(self, obj: object, where: str = "") -> None:
        if not isinstance(obj, dict):
            raise FieldError(where, f"must be a JSON object, got {obj!r}")
        self._reader = FieldReader(obj)
        self._where = where

    def __enter__(self) -> FieldReader:
        return self._reader

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, FieldError) and self._where:
            raise exc.within(self._where) from None
        if exc is None:
            try:
                self._reader.finish()
            except FieldError as err:
                raise (err.within(self._where) if self._where else err) from None


def check_type(name: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        raise FieldError(name, f"must be a {cls.__name__}, got {type(value).__name__}")


# --- hashing and time --------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    """UTC now as ISO 8601 with seconds (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
