"""The bundle manifest (``manifest.json``): schema, typed frozen dataclasses and validation.

Every class checks its own values when constructed (so export cannot write an invalid manifest)
and ``from_json`` checks structure (required fields, no unknown fields, JSON types), so a bad
manifest fails with an error that names the field: ``models.detector.onnx.fp32.sha256 must be
64 lower-case hex characters``. The JSON written is strict (no NaN/Infinity) so that C++ parsers
read it as well.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, TypeGuard, TypeVar

from bpedge._engine_key import PRECISIONS, EngineKey
from bpedge._version import __version__

SCHEMA_VERSION = 1
"""The manifest schema this bpedge writes and reads. Bump it (and add a migration below) whenever
a field changes meaning or a required field is added."""

MODEL_NAMES = ("detector", "segmenter")
NORMS = ("dataset", "per_image")
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")
MANIFEST_NAME = "manifest.json"

# Older schema versions this bpedge upgrades on read: {version: function(old json) -> newer json}.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
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


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise their fields this way


def _is_int(value: object) -> TypeGuard[int]:
    # NumPy integers count: they are numbers.Integral (and compare like ints).
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_str(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise FieldError(name, f"must be a non-empty string, got {value!r}")
    return value


def _check_int(name: str, value: object, minimum: int) -> int:
    number = int(value) if _is_int(value) else None
    if number is None or number < minimum:
        raise FieldError(name, f"must be an integer >= {minimum}, got {value!r}")
    return number


def _check_float(name: str, value: object, lo: float = -math.inf, hi: float = math.inf) -> float:
    # Any real number (NumPy scalars included) is accepted and stored as a plain float.
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if is_real else None  # type: ignore[arg-type]
    if number is None or not math.isfinite(number) or not lo <= number <= hi:
        span = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g}]"
        raise FieldError(name, f"must be a finite number{span}, got {value!r}")
    return number


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise FieldError(name, f"must be one of {list(choices)}, got {value!r}")
    return str(value)


def _check_hw(name: str, value: object) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        _is_int(v) and v >= 1 for v in value
    ):
        raise FieldError(name, f"must be [height, width] of two integers >= 1, got {value!r}")
    return (int(value[0]), int(value[1]))


def _check_iso_time(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"must be an ISO 8601 time string, got {value!r}")
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise FieldError(name, f"must be an ISO 8601 time string, got {value!r}") from None
    return value


def _check_free_form(name: str, value: object) -> dict[str, Any]:
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
    text = _check_str(name, value)
    pure = PurePosixPath(text)
    if (
        "\\" in text
        or pure.is_absolute()
        or ".." in pure.parts
        or text != pure.as_posix()
        or text == MANIFEST_NAME
        or re.match(r"^[A-Za-z]:", text)
    ):
        raise FieldError(
            name, f"must be a relative path inside the bundle such as 'detector.onnx', got {text!r}"
        )
    return text


# --- the schema --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle and the sha256 (64 lower-case hex characters) of its bytes."""

    file: str
    sha256: str

    def __post_init__(self) -> None:
        check_file_name("file", self.file)
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise FieldError("sha256", f"must be 64 lower-case hex characters, got {self.sha256!r}")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj: object) -> FileRef:
        with _reading(obj) as r:
            return cls(file=r.take("file"), sha256=r.take("sha256"))


@dataclass(frozen=True)
class TensorSpec:
    """An ONNX input or output: ``shape`` holds ints >= 1 and ``"N"`` for the dynamic batch."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __post_init__(self) -> None:
        _check_str("name", self.name)
        if not isinstance(self.shape, (tuple, list)) or not all(
            d == "N" or (_is_int(d) and d >= 1) for d in self.shape
        ):
            raise FieldError(
                "shape",
                f"must be a list of integers >= 1 or 'N' (dynamic batch), got {self.shape!r}",
            )
        _set(self, "shape", tuple(d if isinstance(d, str) else int(d) for d in self.shape))
        _check_choice("dtype", self.dtype, DTYPES)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: object) -> TensorSpec:
        with _reading(obj) as r:
            return cls(name=r.take("name"), shape=r.take("shape"), dtype=r.take("dtype"))


@dataclass(frozen=True)
class OnnxFiles:
    """The FP32 ONNX (always) and the mixed-precision FP16 ONNX (when exported)."""

    fp32: FileRef
    fp16: FileRef | None = None

    def __post_init__(self) -> None:
        _check_type("fp32", self.fp32, FileRef)
        if self.fp16 is not None:
            _check_type("fp16", self.fp16, FileRef)

    def to_json(self) -> dict[str, Any]:
        return {"fp32": self.fp32.to_json(), "fp16": _opt_json(self.fp16)}

    @classmethod
    def from_json(cls, obj: object) -> OnnxFiles:
        with _reading(obj) as r:
            return cls(fp32=r.take_obj("fp32", FileRef), fp16=r.take_opt_obj("fp16", FileRef))


@dataclass(frozen=True)
class ModelEntry:
    """One network of the cascade: its ONNX files, I/O, optional checkpoint and size."""

    onnx: OnnxFiles
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    arch: str
    flops: int
    params: int
    checkpoint: FileRef | None = None

    def __post_init__(self) -> None:
        _check_type("onnx", self.onnx, OnnxFiles)
        for name in ("inputs", "outputs"):
            specs = getattr(self, name)
            if not isinstance(specs, (tuple, list)) or not specs:
                raise FieldError(name, f"must be a non-empty list of tensors, got {specs!r}")
            for i, spec in enumerate(specs):
                _check_type(f"{name}[{i}]", spec, TensorSpec)
            _set(self, name, tuple(specs))
        _check_str("arch", self.arch)
        _set(self, "flops", _check_int("flops", self.flops, 0))
        _set(self, "params", _check_int("params", self.params, 0))
        if self.checkpoint is not None:
            _check_type("checkpoint", self.checkpoint, FileRef)

    def onnx_file(self, precision: str) -> FileRef | None:
        """The ONNX file for ``precision`` (``"fp32"`` or ``"fp16"``), None if not exported."""
        _check_choice("precision", precision, PRECISIONS)
        return self.onnx.fp16 if precision == "fp16" else self.onnx.fp32

    def files(self) -> list[FileRef]:
        return [f for f in (self.onnx.fp32, self.onnx.fp16, self.checkpoint) if f is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "onnx": self.onnx.to_json(),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "checkpoint": _opt_json(self.checkpoint),
            "arch": self.arch,
            "flops": self.flops,
            "params": self.params,
        }

    @classmethod
    def from_json(cls, obj: object) -> ModelEntry:
        with _reading(obj) as r:
            return cls(
                onnx=r.take_obj("onnx", OnnxFiles),
                inputs=r.take_list("inputs", TensorSpec),
                outputs=r.take_list("outputs", TensorSpec),
                checkpoint=r.take_opt_obj("checkpoint", FileRef),
                arch=r.take("arch"),
                flops=r.take("flops"),
                params=r.take("params"),
            )


@dataclass(frozen=True)
class DetectorPreprocessing:
    """Full frame -> detector input: resize to ``input_hw``, then ``(v - mean) / std``
    (``norm="dataset"``) or per-image z-score (``norm="per_image"``). Values in 8-bit units."""

    input_hw: tuple[int, int]
    mean: float
    std: float
    norm: str

    def __post_init__(self) -> None:
        _set(self, "input_hw", _check_hw("input_hw", self.input_hw))
        _set(self, "mean", _check_float("mean", self.mean))
        _set(self, "std", _check_float("std", self.std, lo=1e-12))
        _check_choice("norm", self.norm, NORMS)

    def to_json(self) -> dict[str, Any]:
        return {"input_hw": list(self.input_hw), "mean": self.mean, "std": self.std,
                "norm": self.norm}

    @classmethod
    def from_json(cls, obj: object) -> DetectorPreprocessing:
        with _reading(obj) as r:
            return cls(input_hw=r.take("input_hw"), mean=r.take("mean"), std=r.take("std"),
                       norm=r.take("norm"))


@dataclass(frozen=True)
class SegmenterPreprocessing:
    """Box -> ``crop_hw`` crop, then ``(v - mean) / std`` (``norm="dataset"``, mean and std
    required) or per-crop z-score (``norm="per_image"``, mean and std may be null)."""

    crop_hw: tuple[int, int]
    mean: float | None
    std: float | None
    norm: str

    def __post_init__(self) -> None:
        _set(self, "crop_hw", _check_hw("crop_hw", self.crop_hw))
        _check_choice("norm", self.norm, NORMS)
        if self.norm == "dataset" and (self.mean is None or self.std is None):
            raise FieldError("mean", "and std are required when norm is 'dataset'")
        if self.mean is not None:
            _set(self, "mean", _check_float("mean", self.mean))
        if self.std is not None:
            _set(self, "std", _check_float("std", self.std, lo=1e-12))

    def to_json(self) -> dict[str, Any]:
        return {"crop_hw": list(self.crop_hw), "mean": self.mean, "std": self.std,
                "norm": self.norm}

    @classmethod
    def from_json(cls, obj: object) -> SegmenterPreprocessing:
        with _reading(obj) as r:
            return cls(crop_hw=r.take("crop_hw"), mean=r.take("mean"), std=r.take("std"),
                       norm=r.take("norm"))


@dataclass(frozen=True)
class Preprocessing:
    detector: DetectorPreprocessing
    segmenter: SegmenterPreprocessing

    def __post_init__(self) -> None:
        _check_type("detector", self.detector, DetectorPreprocessing)
        _check_type("segmenter", self.segmenter, SegmenterPreprocessing)

    def to_json(self) -> dict[str, Any]:
        return {"detector": self.detector.to_json(), "segmenter": self.segmenter.to_json()}

    @classmethod
    def from_json(cls, obj: object) -> Preprocessing:
        with _reading(obj) as r:
            return cls(detector=r.take_obj("detector", DetectorPreprocessing),
                       segmenter=r.take_obj("segmenter", SegmenterPreprocessing))


@dataclass(frozen=True)
class Thresholds:
    """Detector score and mask probability thresholds in [0, 1], and how they were chosen
    (free-form: method, data, metric)."""

    score: float
    mask: float
    how_chosen: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _set(self, "score", _check_float("score", self.score, 0.0, 1.0))
        _set(self, "mask", _check_float("mask", self.mask, 0.0, 1.0))
        _set(self, "how_chosen", _check_free_form("how_chosen", self.how_chosen))

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "mask": self.mask, "how_chosen": self.how_chosen}

    @classmethod
    def from_json(cls, obj: object) -> Thresholds:
        with _reading(obj) as r:
            return cls(score=r.take("score"), mask=r.take("mask"), how_chosen=r.take("how_chosen"))


@dataclass(frozen=True)
class Training:
    """Where the weights came from: data fingerprint, metrics, split summary, presets used."""

    data_fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("data_fingerprint", self.data_fingerprint)
        for name in ("metrics", "split", "presets"):
            _set(self, name, _check_free_form(name, getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        return {"data_fingerprint": self.data_fingerprint, "metrics": self.metrics,
                "split": self.split, "presets": self.presets}

    @classmethod
    def from_json(cls, obj: object) -> Training:
        with _reading(obj) as r:
            return cls(data_fingerprint=r.take("data_fingerprint"), metrics=r.take("metrics"),
                       split=r.take("split"), presets=r.take("presets"))


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT plan file in the bundle and the target it was built for."""

    model: str
    precision: str
    file: str
    sha256: str
    key: EngineKey
    built: str
    build_seconds: float

    def __post_init__(self) -> None:
        _check_choice("model", self.model, MODEL_NAMES)
        _check_choice("precision", self.precision, PRECISIONS)
        FileRef(self.file, self.sha256)  # same rules as every other file
        _check_type("key", self.key, EngineKey)
        if self.key.precision != self.precision:
            raise FieldError("precision", f"is {self.precision!r} but key.precision is "
                                          f"{self.key.precision!r}")
        _check_iso_time("built", self.built)
        _set(self, "build_seconds", _check_float("build_seconds", self.build_seconds, lo=0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "file": self.file,
            "sha256": self.sha256,
            "key": self.key.to_json(),
            "built": self.built,
            "build_seconds": self.build_seconds,
        }

    @classmethod
    def from_json(cls, obj: object) -> EngineEntry:
        with _reading(obj) as r:
            key_obj = r.take("key")
            with _reading(key_obj, "key") as k:
                try:
                    key = EngineKey(**{f.name: k.take(f.name) for f in fields(EngineKey)})
                except ValueError as exc:
                    if isinstance(exc, FieldError):
                        raise
                    raise FieldError("", f"is invalid: {exc}") from None
            return cls(model=r.take("model"), precision=r.take("precision"), file=r.take("file"),
                       sha256=r.take("sha256"), key=key, built=r.take("built"),
                       build_seconds=r.take("build_seconds"))


@dataclass(frozen=True)
class Manifest:
    """Everything the device needs to know about a bundle (see DESIGN.md, "The bundle")."""

    models: Mapping[str, ModelEntry]
    preprocessing: Preprocessing
    thresholds: Thresholds
    training: Training
    parity: dict[str, Any] = field(default_factory=dict)
    engines: tuple[EngineEntry, ...] = ()
    schema_version: int = SCHEMA_VERSION
    bpedge_version: str = __version__
    created: str = field(default_factory=lambda: now_iso())

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise FieldError(
                "schema_version",
                f"must be {SCHEMA_VERSION} (the schema this bpedge writes), got "
                f"{self.schema_version!r}",
            )
        _check_str("bpedge_version", self.bpedge_version)
        _check_iso_time("created", self.created)
        if not isinstance(self.models, Mapping) or set(self.models) != set(MODEL_NAMES):
            got = sorted(self.models) if isinstance(self.models, Mapping) else self.models
            raise FieldError("models", f"must have exactly {list(MODEL_NAMES)}, got {got!r}")
        for name in MODEL_NAMES:
            _check_type(f"models.{name}", self.models[name], ModelEntry)
        _set(self, "models", MappingProxyType({name: self.models[name] for name in MODEL_NAMES}))
        _check_type("preprocessing", self.preprocessing, Preprocessing)
        _check_type("thresholds", self.thresholds, Thresholds)
        _check_type("training", self.training, Training)
        _set(self, "parity", _check_free_form("parity", self.parity))
        if not isinstance(self.engines, (tuple, list)):
            raise FieldError("engines", f"must be a list of engine entries, got {self.engines!r}")
        for i, engine in enumerate(self.engines):
            _check_type(f"engines[{i}]", engine, EngineEntry)
        _set(self, "engines", tuple(self.engines))
        seen: dict[str, str] = {}
        for where, ref in self._named_files():
            if ref in seen:
                raise FieldError(where, f"names {ref!r}, which {seen[ref]} already names: every "
                                        "file of a bundle has one role")
            seen[ref] = where

    def _named_files(self) -> Iterator[tuple[str, str]]:
        for name, entry in self.models.items():
            yield f"models.{name}.onnx.fp32.file", entry.onnx.fp32.file
            if entry.onnx.fp16 is not None:
                yield f"models.{name}.onnx.fp16.file", entry.onnx.fp16.file
            if entry.checkpoint is not None:
                yield f"models.{name}.checkpoint.file", entry.checkpoint.file
        for i, engine in enumerate(self.engines):
            yield f"engines[{i}].file", engine.file

    def model_files(self) -> list[FileRef]:
        """ONNX and checkpoint files of both models."""
        return [ref for name in MODEL_NAMES for ref in self.models[name].files()]

    def hash_of(self, file: str) -> str | None:
        """The recorded sha256 of ``file``, None if the manifest does not list it."""
        for ref in self.model_files():
            if ref.file == file:
                return ref.sha256
        for engine in self.engines:
            if engine.file == file:
                return engine.sha256
        return None

    def with_engine(self, entry: EngineEntry) -> Manifest:
        """A copy listing ``entry`` in place of any engine entry with the same file."""
        kept = tuple(e for e in self.engines if e.file != entry.file)
        return replace(self, engines=(*kept, entry))

    def without_engine(self, file: str) -> Manifest:
        return replace(self, engines=tuple(e for e in self.engines if e.file != file))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "bpedge_version": self.bpedge_version,
            "created": self.created,
            "models": {name: self.models[name].to_json() for name in MODEL_NAMES},
            "preprocessing": self.preprocessing.to_json(),
            "thresholds": self.thresholds.to_json(),
            "training": self.training.to_json(),
            "parity": self.parity,
            "engines": [e.to_json() for e in self.engines],
        }

    def dumps(self) -> str:
        """The manifest as strict JSON text (what ``manifest.json`` holds)."""
        return json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, obj: object) -> Manifest:
        """Validate a parsed ``manifest.json``; raises :class:`BundleError` naming the field, and
        refuses schema versions this bpedge cannot read."""
        if not isinstance(obj, dict):
            raise FieldError("", f"the manifest must be a JSON object, got {type(obj).__name__}")
        obj = _upgrade(obj)
        with _reading(obj) as r:
            return cls(  # fields are read in schema order, so the first problem is reported
                schema_version=r.take("schema_version"),
                bpedge_version=r.take("bpedge_version"),
                created=r.take("created"),
                models=_read_models(r.take("models")),
                preprocessing=r.take_obj("preprocessing", Preprocessing),
                thresholds=r.take_obj("thresholds", Thresholds),
                training=r.take_obj("training", Training),
                parity=r.take("parity"),
                engines=r.take_list("engines", EngineEntry),
            )

    @classmethod
    def loads(cls, text: str) -> Manifest:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
        return cls.from_json(obj)


def _read_models(obj: object) -> dict[str, ModelEntry]:
    with _reading(obj, "models") as m:
        return {name: m.take_obj(name, ModelEntry) for name in MODEL_NAMES}


def _upgrade(obj: dict[str, Any]) -> dict[str, Any]:
    if "schema_version" not in obj:
        raise FieldError("schema_version", "is required but missing")
    version = obj["schema_version"]
    if not _is_int(version):
        raise FieldError("schema_version", f"must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema {version} is newer than this bpedge (reads <={SCHEMA_VERSION}): "
            "upgrade bpedge"
        )
    while version < SCHEMA_VERSION:
        if version not in _MIGRATIONS:
            raise BundleError(
                f"bundle schema {version} is not one this bpedge can read (reads "
                f"{sorted({*_MIGRATIONS, SCHEMA_VERSION})}): re-export the bundle with this bpedge"
            )
        obj = _MIGRATIONS[version](obj)
        version = obj["schema_version"]
    return obj


# --- reading JSON objects field by field -------------------------------------------------------


class _Reader:
    def __init__(self, obj: dict[str, Any]) -> None:
        self._obj = obj
        self._taken: set[str] = set()

    def take(self, name: str) -> Any:
        if name not in self._obj:
            raise FieldError(name, "is required but missing")
        self._taken.add(name)
        return self._obj[name]

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


class _reading:
    """``with _reading(obj) as r:`` reads fields of a JSON object, prefixes errors raised while
    constructing with ``where`` and, on success, refuses fields nobody read."""

    def __init__(self, obj: object, where: str = "") -> None:
        if not isinstance(obj, dict):
            raise FieldError(where, f"must be a JSON object, got {obj!r}")
        self._reader = _Reader(obj)
        self._where = where

    def __enter__(self) -> _Reader:
        return self._reader

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, FieldError) and self._where:
            raise exc.within(self._where) from None
        if exc is None:
            try:
                self._reader.finish()
            except FieldError as err:
                raise (err.within(self._where) if self._where else err) from None


def _check_type(name: str, value: object, cls: type) -> None:
    if not isinstance(value, cls):
        raise FieldError(name, f"must be a {cls.__name__}, got {type(value).__name__}")


def _opt_json(ref: FileRef | None) -> dict[str, Any] | None:
    return None if ref is None else ref.to_json()


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


def file_ref(root: str | os.PathLike[str], file: str) -> FileRef:
    """Hash ``root/file`` now and return its :class:`FileRef` (for building a manifest)."""
    check_file_name("file", file)
    path = Path(root) / file
    if not path.is_file():
        raise BundleError(f"cannot reference {file!r}: {path} is not a file")
    return FileRef(file=file, sha256=sha256_file(path))
