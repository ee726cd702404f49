"""The bundle manifest (``manifest.json``): schema, typed frozen dataclasses and validation.

Every class checks its own values when constructed (so export cannot write an invalid manifest)
and ``from_json`` checks structure (required fields, no unknown fields, JSON types), so a bad
manifest fails with an error that names the field: ``models.detector.onnx.fp32.sha256 must be
64 lower-case hex characters``. The JSON written is strict (no NaN/Infinity) so that C++ parsers
read it as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from bpedge._engine_key import PRECISIONS, EngineKey
from bpedge._manifest_fields import (
    MANIFEST_NAME,
    BundleError,
    FieldError,
    check_choice,
    check_file_name,
    check_float,
    check_free_form,
    check_hw,
    check_int,
    check_iso_time,
    check_str,
    check_type,
    is_int,
    now_iso,
    reading,
    set_field,
    sha256_bytes,
    sha256_file,
)
from bpedge._preprocessing import PreprocessingSpec
from bpedge._version import __version__

__all__ = [
    "DTYPES", "MANIFEST_NAME", "MODEL_NAMES", "NORMS", "SCHEMA_VERSION", "BundleError",
    "DetectorPreprocessing", "EngineEntry", "FieldError", "FileRef", "Manifest", "ModelEntry",
    "OnnxFiles", "Preprocessing", "SegmenterPreprocessing", "TensorSpec", "Thresholds",
    "Training", "now_iso", "sha256_bytes", "sha256_file",
]  # fmt: skip

SCHEMA_VERSION = 2
"""The manifest schema this bpedge writes and reads. Bump it (and add a migration below) whenever
a field changes meaning or a required field is added. 2: ``preprocessing.segmenter.crop_margin``."""

MODEL_NAMES = ("detector", "segmenter")
NORMS = ("dataset", "per_image")
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")



def _v1_to_v2(obj: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no crop margin: its crops were the boxes as found (margin 0.0)."""
    new: dict[str, Any] = json.loads(json.dumps(obj))  # a deep copy of plain JSON
    segmenter = (new.get("preprocessing") or {}).get("segmenter")
    if isinstance(segmenter, dict):
        segmenter.setdefault("crop_margin", 0.0)
    new["schema_version"] = 2
    return new


# Older schema versions this bpedge upgrades on read: {version: function(old json) -> newer json}.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
        with reading(obj) as r:
            return cls(file=r.take("file"), sha256=r.take("sha256"))


@dataclass(frozen=True)
class TensorSpec:
    """An ONNX input or output: ``shape`` holds ints >= 1 and ``"N"`` for the dynamic batch."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __post_init__(self) -> None:
        check_str("name", self.name)
        if not isinstance(self.shape, (tuple, list)) or not all(
            d == "N" or (is_int(d) and d >= 1) for d in self.shape
        ):
            raise FieldError(
                "shape",
                f"must be a list of integers >= 1 or 'N' (dynamic batch), got {self.shape!r}",
            )
        set_field(self, "shape", tuple(d if isinstance(d, str) else int(d) for d in self.shape))
        check_choice("dtype", self.dtype, DTYPES)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: object) -> TensorSpec:
        with reading(obj) as r:
            return cls(name=r.take("name"), shape=r.take("shape"), dtype=r.take("dtype"))


@dataclass(frozen=True)
class OnnxFiles:
    """The FP32 ONNX (always) and the mixed-precision FP16 ONNX (when exported)."""

    fp32: FileRef
    fp16: FileRef | None = None

    def __post_init__(self) -> None:
        check_type("fp32", self.fp32, FileRef)
        if self.fp16 is not None:
            check_type("fp16", self.fp16, FileRef)

    def to_json(self) -> dict[str, Any]:
        return {"fp32": self.fp32.to_json(), "fp16": _opt_json(self.fp16)}

    @classmethod
    def from_json(cls, obj: object) -> OnnxFiles:
        with reading(obj) as r:
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
        check_type("onnx", self.onnx, OnnxFiles)
        for name in ("inputs", "outputs"):
            specs = getattr(self, name)
            if not isinstance(specs, (tuple, list)) or not specs:
                raise FieldError(name, f"must be a non-empty list of tensors, got {specs!r}")
            for i, spec in enumerate(specs):
                check_type(f"{name}[{i}]", spec, TensorSpec)
            set_field(self, name, tuple(specs))
        check_str("arch", self.arch)
        set_field(self, "flops", check_int("flops", self.flops, 0))
        set_field(self, "params", check_int("params", self.params, 0))
        if self.checkpoint is not None:
            check_type("checkpoint", self.checkpoint, FileRef)

    def onnx_file(self, precision: str) -> FileRef | None:
        """The ONNX file for ``precision`` (``"fp32"`` or ``"fp16"``), None if not exported."""
        check_choice("precision", precision, PRECISIONS)
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
        with reading(obj) as r:
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
        set_field(self, "input_hw", check_hw("input_hw", self.input_hw))
        set_field(self, "mean", check_float("mean", self.mean))
        set_field(self, "std", check_float("std", self.std, lo=1e-12))
        check_choice("norm", self.norm, NORMS)

    def to_json(self) -> dict[str, Any]:
        return {"input_hw": list(self.input_hw), "mean": self.mean, "std": self.std,
                "norm": self.norm}

    @classmethod
    def from_json(cls, obj: object) -> DetectorPreprocessing:
        with reading(obj) as r:
            return cls(input_hw=r.take("input_hw"), mean=r.take("mean"), std=r.take("std"),
                       norm=r.take("norm"))


@dataclass(frozen=True)
class SegmenterPreprocessing:
    """Box expanded by ``crop_margin`` (a fraction of its side, about its centre; optional in
    the JSON, 0.0 when absent) -> ``crop_hw`` crop, then ``(v - mean) / std`` (``norm="dataset"``, mean and std required) or per-crop
    z-score (``norm="per_image"``, mean and std may be null)."""

    crop_hw: tuple[int, int]
    mean: float | None
    std: float | None
    norm: str
    crop_margin: float = 0.0

    def __post_init__(self) -> None:
        set_field(self, "crop_hw", check_hw("crop_hw", self.crop_hw))
        check_choice("norm", self.norm, NORMS)
        if self.norm == "dataset" and (self.mean is None or self.std is None):
            raise FieldError("mean", "and std are required when norm is 'dataset'")
        if self.mean is not None:
            set_field(self, "mean", check_float("mean", self.mean))
        if self.std is not None:
            set_field(self, "std", check_float("std", self.std, lo=1e-12))
        set_field(self, "crop_margin", check_float("crop_margin", self.crop_margin, lo=0.0))

    def to_json(self) -> dict[str, Any]:
        # crop_margin is written only when set, so a margin-free bundle's section reads as
        # schema 1 wrote it (and a reader without margins sees nothing it would misread).
        margin = {"crop_margin": self.crop_margin} if self.crop_margin else {}
        return {"crop_hw": list(self.crop_hw), "mean": self.mean, "std": self.std,
                "norm": self.norm, **margin}

    @classmethod
    def from_json(cls, obj: object) -> SegmenterPreprocessing:
        with reading(obj) as r:
            return cls(crop_hw=r.take("crop_hw"), mean=r.take("mean"), std=r.take("std"),
                       norm=r.take("norm"), crop_margin=r.take_or("crop_margin", 0.0))


@dataclass(frozen=True)
class Preprocessing:
    detector: DetectorPreprocessing
    segmenter: SegmenterPreprocessing

    def __post_init__(self) -> None:
        check_type("detector", self.detector, DetectorPreprocessing)
        check_type("segmenter", self.segmenter, SegmenterPreprocessing)

    @property
    def spec(self) -> PreprocessingSpec:
        """The typed spec the stages take (``norm="per_image"`` -> mean and std ``None``)."""
        det, seg = self.detector, self.segmenter
        per_det, per_seg = det.norm == "per_image", seg.norm == "per_image"
        return PreprocessingSpec(
            det.input_hw, None if per_det else det.mean, None if per_det else det.std,
            seg.crop_hw, None if per_seg else seg.mean, None if per_seg else seg.std,
            crop_margin=seg.crop_margin,
        )

    @classmethod
    def from_spec(cls, spec: PreprocessingSpec) -> Preprocessing:
        """The manifest section of ``spec``. A per-image detector normalisation is written with
        the neutral constants mean 0, std 1 (the field is required; ``norm`` says they are
        unused)."""
        det, seg = spec.detector.norm, spec.crop.norm
        if det.mean is None or det.std is None:
            detector = DetectorPreprocessing(spec.detector_input_hw, 0.0, 1.0, "per_image")
        else:
            detector = DetectorPreprocessing(spec.detector_input_hw, det.mean, det.std, "dataset")
        return cls(
            detector=detector,
            segmenter=SegmenterPreprocessing(
                spec.crop_hw, seg.mean, seg.std, "per_image" if seg.per_image else "dataset",
                crop_margin=spec.crop_margin),
        )

    def to_json(self) -> dict[str, Any]:
        return {"detector": self.detector.to_json(), "segmenter": self.segmenter.to_json()}

    @classmethod
    def from_json(cls, obj: object) -> Preprocessing:
        with reading(obj) as r:
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
        set_field(self, "score", check_float("score", self.score, 0.0, 1.0))
        set_field(self, "mask", check_float("mask", self.mask, 0.0, 1.0))
        set_field(self, "how_chosen", check_free_form("how_chosen", self.how_chosen))

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "mask": self.mask, "how_chosen": self.how_chosen}

    @classmethod
    def from_json(cls, obj: object) -> Thresholds:
        with reading(obj) as r:
            return cls(score=r.take("score"), mask=r.take("mask"), how_chosen=r.take("how_chosen"))


@dataclass(frozen=True)
class Training:
    """Where the weights came from: data fingerprint, metrics, split summary, presets used."""

    data_fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str("data_fingerprint", self.data_fingerprint)
        for name in ("metrics", "split", "presets"):
            set_field(self, name, check_free_form(name, getattr(self, name)))

    def to_json(self) -> dict[str, Any]:
        return {"data_fingerprint": self.data_fingerprint, "metrics": self.metrics,
                "split": self.split, "presets": self.presets}

    @classmethod
    def from_json(cls, obj: object) -> Training:
        with reading(obj) as r:
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
        check_choice("model", self.model, MODEL_NAMES)
        check_choice("precision", self.precision, PRECISIONS)
        FileRef(self.file, self.sha256)  # same rules as every other file
        check_type("key", self.key, EngineKey)
        if self.key.precision != self.precision:
            raise FieldError("precision", f"is {self.precision!r} but key.precision is "
                                          f"{self.key.precision!r}")
        check_iso_time("built", self.built)
        set_field(self, "build_seconds", check_float("build_seconds", self.build_seconds, lo=0.0))

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
        with reading(obj) as r:
            key_obj = r.take("key")
            with reading(key_obj, "key") as k:
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
        check_str("bpedge_version", self.bpedge_version)
        check_iso_time("created", self.created)
        if not isinstance(self.models, Mapping) or set(self.models) != set(MODEL_NAMES):
            got = sorted(self.models) if isinstance(self.models, Mapping) else self.models
            raise FieldError("models", f"must have exactly {list(MODEL_NAMES)}, got {got!r}")
        for name in MODEL_NAMES:
            check_type(f"models.{name}", self.models[name], ModelEntry)
        set_field(self, "models", MappingProxyType({name: self.models[name] for name in MODEL_NAMES}))
        check_type("preprocessing", self.preprocessing, Preprocessing)
        check_type("thresholds", self.thresholds, Thresholds)
        check_type("training", self.training, Training)
        set_field(self, "parity", check_free_form("parity", self.parity))
        if not isinstance(self.engines, (tuple, list)):
            raise FieldError("engines", f"must be a list of engine entries, got {self.engines!r}")
        for i, engine in enumerate(self.engines):
            check_type(f"engines[{i}]", engine, EngineEntry)
        set_field(self, "engines", tuple(self.engines))
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
        with reading(obj) as r:
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
    with reading(obj, "models") as m:
        return {name: m.take_obj(name, ModelEntry) for name in MODEL_NAMES}


def _upgrade(obj: dict[str, Any]) -> dict[str, Any]:
    if "schema_version" not in obj:
        raise FieldError("schema_version", "is required but missing")
    version = obj["schema_version"]
    if not is_int(version):
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


def _opt_json(ref: FileRef | None) -> dict[str, Any] | None:
    return None if ref is None else ref.to_json()
