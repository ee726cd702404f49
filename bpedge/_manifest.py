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
from bpedge._manifest_json import OMIT_IF_DEFAULT, JsonRecord, json_schema, record_json
from bpedge._preprocessing import PreprocessingSpec
from bpedge._version import __version__

__all__ = [
    "DTYPES", "MANIFEST_NAME", "MODEL_NAMES", "NORMS", "ONNX_PRECISIONS", "SCHEMA_VERSION", "BundleError",
    "DetectorPreprocessing", "EngineEntry", "FieldError", "FileRef", "Manifest", "ModelEntry",
    "OnnxFiles", "Preprocessing", "SegmenterPreprocessing", "TensorSpec", "Thresholds",
    "Training", "now_iso", "sha256_bytes", "sha256_file",
]  # fmt: skip

SCHEMA_VERSION = 2
"""The manifest schema this bpedge writes and reads. Bump it (and add a migration below) whenever
a field changes meaning or a required field is added. 2: ``preprocessing.segmenter.crop_margin``."""

MODEL_NAMES = ("detector", "segmenter")
#: Largest crop margin a manifest may give: the crop is 11 times the box, the whole frame for
#: any box a tenth of the frame's side. Without a bound a margin such as 1e308 made every box
#: infinite, and every frame failed.
MAX_CROP_MARGIN = 10.0
#: Precisions an ONNX file of the bundle can have (engines: ``bpedge._engine_key.PRECISIONS``).
#: ``int8`` is the CPU runtimes' QDQ form (uint8 activations), ``int8_symmetric`` TensorRT's
#: (int8 activations, zero point 0); see :mod:`bpedge.export.int8`.
ONNX_PRECISIONS = ("fp32", "fp16", "int8", "int8_symmetric")
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
class FileRef(JsonRecord):
    """A file of the bundle and the sha256 (64 lower-case hex characters) of its bytes."""

    file: str
    sha256: str = field(metadata={"schema": {"pattern": _SHA256.pattern}})

    def __post_init__(self) -> None:
        check_file_name("file", self.file)
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise FieldError("sha256", f"must be 64 lower-case hex characters, got {self.sha256!r}")


@dataclass(frozen=True)
class TensorSpec(JsonRecord):
    """An ONNX input or output: ``shape`` holds ints >= 1 and ``"N"`` for the dynamic batch."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = field(metadata={"schema": {"enum": list(DTYPES)}})

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


@dataclass(frozen=True)
class OnnxFiles(JsonRecord):
    """The FP32 ONNX (always), the mixed-precision FP16 ONNX (when exported) and the INT8 QDQ
    ONNX files (``bpedge export --int8``, each only when it passed its gate; absent from the JSON
    otherwise, so manifests without INT8 read and write as before): ``int8`` in the CPU runtimes'
    form (uint8 activations), ``int8_symmetric`` in TensorRT's (int8 activations, zero point 0)."""

    fp32: FileRef
    fp16: FileRef | None = None
    int8: FileRef | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})
    int8_symmetric: FileRef | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})

    def __post_init__(self) -> None:
        check_type("fp32", self.fp32, FileRef)
        for name in ("int8", "int8_symmetric"):
            value = getattr(self, name)
            if isinstance(value, dict):  # read from JSON: optional fields arrive as parsed JSON
                try:
                    set_field(self, name, FileRef.from_json(value))
                except FieldError as exc:
                    raise exc.within(name) from None
        for name in ("fp16", "int8", "int8_symmetric"):
            if getattr(self, name) is not None:
                check_type(name, getattr(self, name), FileRef)


@dataclass(frozen=True)
class ModelEntry(JsonRecord):
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
        """The ONNX file for ``precision`` (one of :data:`ONNX_PRECISIONS`), None if not
        exported."""
        check_choice("precision", precision, ONNX_PRECISIONS)
        return getattr(self.onnx, precision)  # type: ignore[no-any-return]

    def onnx_refs(self) -> list[FileRef]:
        """Every ONNX file listed for this model."""
        return [f for f in (getattr(self.onnx, p) for p in ONNX_PRECISIONS) if f is not None]

    def files(self) -> list[FileRef]:
        return [*self.onnx_refs(), *([self.checkpoint] if self.checkpoint is not None else [])]


#: Smallest normalisation std a manifest may carry, in grey levels. A std this small already
#: scales a 0-255 pixel to at most 25,500, inside FP16's range (65,504); a smaller one (a hostile
#: or corrupt manifest) would overflow FP16 engines to inf and NaN. No real B-mode set has pixels
#: that nearly constant.
MIN_STD = 0.01


@dataclass(frozen=True)
class DetectorPreprocessing(JsonRecord):
    """Full frame -> detector input: resize to ``input_hw``, then ``(v - mean) / std``
    (``norm="dataset"``) or per-image z-score (``norm="per_image"``). Values in 8-bit units:
    ``mean`` in [0, 255], ``std`` in [0.01, 255] (statistics of 8-bit pixels cannot lie above;
    see :data:`MIN_STD` for the floor)."""

    input_hw: tuple[int, int]
    mean: float
    std: float
    norm: str = field(metadata={"schema": {"enum": list(NORMS)}})

    def __post_init__(self) -> None:
        set_field(self, "input_hw", check_hw("input_hw", self.input_hw))
        set_field(self, "mean", check_float("mean", self.mean, 0.0, 255.0))
        set_field(self, "std", check_float("std", self.std, MIN_STD, 255.0))
        check_choice("norm", self.norm, NORMS)


@dataclass(frozen=True)
class SegmenterPreprocessing(JsonRecord):
    """Box expanded by ``crop_margin`` (a fraction of its side in [0, 10], about its centre;
    optional in the JSON, 0.0 when absent) -> ``crop_hw`` crop, then ``(v - mean) / std``
    (``norm="dataset"``, mean in [0, 255] and std in [0.01, 255] required) or per-crop z-score
    (``norm="per_image"``, mean and std may be null)."""

    crop_hw: tuple[int, int]
    mean: float | None
    std: float | None
    norm: str = field(metadata={"schema": {"enum": list(NORMS)}})
    # Written only when set, so a margin-free bundle's section reads as schema 1 wrote it.
    crop_margin: float = field(default=0.0, metadata={OMIT_IF_DEFAULT: True})

    def __post_init__(self) -> None:
        set_field(self, "crop_hw", check_hw("crop_hw", self.crop_hw))
        check_choice("norm", self.norm, NORMS)
        if self.norm == "dataset" and (self.mean is None or self.std is None):
            raise FieldError("mean", "and std are required when norm is 'dataset'")
        if self.mean is not None:
            set_field(self, "mean", check_float("mean", self.mean, 0.0, 255.0))
        if self.std is not None:
            set_field(self, "std", check_float("std", self.std, MIN_STD, 255.0))
        set_field(self, "crop_margin", check_float("crop_margin", self.crop_margin, 0.0,
                                                   MAX_CROP_MARGIN))


@dataclass(frozen=True)
class Preprocessing(JsonRecord):
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


@dataclass(frozen=True)
class Thresholds(JsonRecord):
    """Detector score and mask probability thresholds in [0, 1], and how they were chosen
    (free-form: method, data, metric)."""

    score: float
    mask: float
    how_chosen: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_field(self, "score", check_float("score", self.score, 0.0, 1.0))
        set_field(self, "mask", check_float("mask", self.mask, 0.0, 1.0))
        set_field(self, "how_chosen", check_free_form("how_chosen", self.how_chosen))


@dataclass(frozen=True)
class Training(JsonRecord):
    """Where the weights came from: data fingerprint, metrics, split summary, presets used."""

    data_fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str("data_fingerprint", self.data_fingerprint)
        for name in ("metrics", "split", "presets"):
            set_field(self, name, check_free_form(name, getattr(self, name)))


@dataclass(frozen=True)
class EngineEntry(JsonRecord):
    """A TensorRT plan file in the bundle and the target it was built for."""

    model: str = field(metadata={"schema": {"enum": list(MODEL_NAMES)}})
    precision: str = field(metadata={"schema": {"enum": list(PRECISIONS)}})
    file: str
    sha256: str = field(metadata={"schema": {"pattern": _SHA256.pattern}})
    key: EngineKey
    built: str
    build_seconds: float
    #: The engine's arithmetic, e.g. "fp32: IEEE fp32 everywhere (TF32 disabled)"; None in
    #: manifests written before bpedge recorded it.
    math: str | None = field(default=None, metadata={OMIT_IF_DEFAULT: True})

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODEL_NAMES)
        if self.math is not None and (not isinstance(self.math, str) or not self.math.strip()):
            raise FieldError("math", f"must be a non-empty string or absent, got {self.math!r}")
        check_choice("precision", self.precision, PRECISIONS)
        FileRef(self.file, self.sha256)  # same rules as every other file
        check_type("key", self.key, EngineKey)
        if self.key.precision != self.precision:
            raise FieldError("precision", f"is {self.precision!r} but key.precision is "
                                          f"{self.key.precision!r}")
        check_iso_time("built", self.built)
        set_field(self, "build_seconds", check_float("build_seconds", self.build_seconds, lo=0.0))

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
            math = r.take("math") if isinstance(obj, dict) and "math" in obj else None
            return cls(model=r.take("model"), precision=r.take("precision"), file=r.take("file"),
                       sha256=r.take("sha256"), key=key, built=r.take("built"),
                       build_seconds=r.take("build_seconds"), math=math)


@dataclass(frozen=True)
class Manifest:
    """Everything the device needs to know about a bundle (see DESIGN.md, "The bundle")."""

    models: Mapping[str, ModelEntry] = field(metadata={"schema": {
        "required": list(MODEL_NAMES), "propertyNames": {"enum": list(MODEL_NAMES)}}})
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
            if entry.onnx.int8 is not None:
                yield f"models.{name}.onnx.int8.file", entry.onnx.int8.file
            if entry.onnx.int8_symmetric is not None:
                yield (f"models.{name}.onnx.int8_symmetric.file",
                       entry.onnx.int8_symmetric.file)
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
        body = record_json(self)
        first = ("schema_version", "bpedge_version", "created")  # what a reader checks first
        return {**{k: body.pop(k) for k in first}, **body}

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
        too_deep = BundleError(f"{MANIFEST_NAME} is nested too deeply to be a manifest (a real "
                               "one is a few levels deep): it is damaged or not a bpedge manifest")
        try:
            obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON ({exc})") from None
        except RecursionError:
            raise too_deep from None
        except ValueError as exc:  # an integer of thousands of digits (Python's int limit)
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"{MANIFEST_NAME} holds a number thousands of digits long, which "
                              "no manifest has: it is damaged or not a bpedge manifest; copy the "
                              "bundle again, or re-export it") from None
        try:
            return cls.from_json(obj)
        except RecursionError:  # free-form fields are checked recursively
            raise too_deep from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 leaves duplicate names undefined: Python keeps the last, many C++ parsers the
    # first, so one manifest would mean two things (e.g. two mask thresholds). Refuse it.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise BundleError(f"{MANIFEST_NAME} names the field {key!r} twice in one object: "
                              "readers disagree on which one counts, so it is refused; keep one "
                              "and re-check the bundle, or re-export it")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); bpedge writes strict JSON and reads it strictly.
    raise BundleError(f"{MANIFEST_NAME} holds {name}, which is not JSON (a C++ parser refuses "
                      "it); write a finite number, or re-export the bundle")


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



def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of ``manifest.json`` (what ``manifest.schema.json`` in the package holds),
    derived from the dataclasses above."""
    return json_schema(Manifest, f"bpedge bundle manifest, schema {SCHEMA_VERSION}")
