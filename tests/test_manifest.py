"""The manifest schema: round trip, every required field, types, schema versions."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from bpedge._engine_key import EngineKey
from bpedge._manifest import (
    SCHEMA_VERSION,
    BundleError,
    DetectorPreprocessing,
    EngineEntry,
    FieldError,
    Manifest,
    ModelEntry,
    SegmenterPreprocessing,
    TensorSpec,
    Thresholds,
)

SHA = "ab" * 32

# Fields that hold free-form JSON: their contents are not part of the schema.
FREE_FORM = {"how_chosen", "metrics", "split", "presets", "parity"}


def sample_json(engines: int = 1) -> dict:
    """A valid manifest as parsed JSON (hashes need not match files: no files here)."""

    def model(name: str, fp16: bool) -> dict:
        return {
            "onnx": {"fp32": {"file": f"{name}.onnx", "sha256": SHA},
                     "fp16": {"file": f"{name}.fp16.onnx", "sha256": SHA} if fp16 else None},
            "inputs": [{"name": "image", "shape": ["N", 1, 64, 96], "dtype": "float32"}],
            "outputs": [{"name": "prob", "shape": ["N", 1, 64, 96], "dtype": "float32"}],
            "checkpoint": {"file": f"{name}.pt", "sha256": SHA},
            "arch": f"{name}-arch",
            "flops": 123456,
            "params": 789,
        }

    key = {"gpu_name": "NVIDIA RTX A2000", "compute_capability": "8.6", "sm_count": 26,
           "trt_version": "10.13.0.35", "precision": "fp16", "max_batch": 8}
    return {
        "schema_version": SCHEMA_VERSION,
        "bpedge_version": "0.1.0",
        "created": "2025-01-31T12:00:00+00:00",
        "models": {"detector": model("detector", True), "segmenter": model("segmenter", False)},
        "preprocessing": {
            "detector": {"input_hw": [64, 96], "mean": 99.5, "std": 52.25, "norm": "dataset"},
            "segmenter": {"crop_hw": [96, 96], "mean": None, "std": None, "norm": "per_image"},
        },
        "thresholds": {"score": 0.4, "mask": 0.5,
                       "how_chosen": {"method": "grid", "data": "val", "metric": "dice"}},
        "training": {"data_fingerprint": "f" * 16, "metrics": {"dice": 0.79},
                     "split": {"kind": "subject", "test": 5}, "presets": {"detector": "tiny"}},
        "parity": {"fp16_vs_fp32_max_abs": 0.002},
        "engines": [
            {"model": "detector", "precision": "fp16", "file": f"detector.{i}.engine",
             "sha256": SHA, "key": key, "built": "2025-01-31T12:30:00+00:00",
             "build_seconds": 61.5}
            for i in range(engines)
        ],
    }


def _required_paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of the schema's structured part (all of them are required)."""
    paths = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths.append((*prefix, key))
            if key not in FREE_FORM:
                paths += _required_paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            paths += _required_paths(value, (*prefix, i))
    return paths


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _parent(obj: dict, path: tuple):
    for part in path[:-1]:
        obj = obj[part]
    return obj


def test_round_trip_through_json_text_is_lossless():
    manifest = Manifest.from_json(sample_json())
    again = Manifest.loads(manifest.dumps())
    assert again == manifest
    assert again.to_json() == sample_json()


def test_fields_are_typed_and_read_only():
    manifest = Manifest.from_json(sample_json())
    assert manifest.models["detector"].inputs[0].shape == ("N", 1, 64, 96)
    assert manifest.preprocessing.detector.input_hw == (64, 96)
    assert manifest.engines[0].key == EngineKey("NVIDIA RTX A2000", "8.6", 26, "10.13.0.35",
                                                "fp16", 8)
    with pytest.raises(AttributeError):
        manifest.thresholds = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        manifest.models["detector"] = manifest.models["segmenter"]  # type: ignore[index]


@pytest.mark.parametrize("path", _required_paths(sample_json()), ids=_dotted)
def test_every_required_field_is_checked_by_name(path):
    obj = sample_json()
    del _parent(obj, path)[path[-1]]
    with pytest.raises(FieldError) as info:
        Manifest.from_json(obj)
    assert info.value.path == _dotted(path)
    assert "required" in str(info.value)


@pytest.mark.parametrize(
    "path",
    [p for p in _required_paths(sample_json()) if p[-1] not in FREE_FORM and p[0] != "engines"]
    + [("engines", 0, "key", "sm_count"), ("engines", 0, "build_seconds")],
    ids=_dotted,
)
def test_a_value_of_the_wrong_type_is_refused_by_name(path):
    obj = sample_json()
    parent = _parent(obj, path)
    parent[path[-1]] = {"not": "valid"} if not isinstance(parent[path[-1]], dict) else [1]
    with pytest.raises(BundleError) as info:
        Manifest.from_json(obj)
    # Reported at the field itself, inside it (a dict where a null was) or at the object that
    # holds it (engine keys are checked as a whole), and the field is named either way.
    error = info.value
    assert isinstance(error, FieldError)
    assert error.path.startswith(_dotted(path)) or _dotted(path).startswith(error.path)
    assert str(path[-1]) in str(error)


def test_unknown_fields_are_refused_by_name():
    obj = sample_json()
    obj["models"]["segmenter"]["onnx"]["fp8"] = None
    with pytest.raises(FieldError, match=r"models\.segmenter\.onnx\.fp8"):
        Manifest.from_json(obj)
    obj = sample_json()
    obj["thresholds"]["scores"] = 0.1
    with pytest.raises(FieldError, match=r"thresholds\.scores"):
        Manifest.from_json(obj)


def test_free_form_sections_accept_any_strict_json_but_no_nan():
    obj = sample_json()
    obj["training"]["metrics"] = {"nested": {"list": [1, 2.5, None, "x"]}}
    assert Manifest.from_json(obj).training.metrics["nested"]["list"][1] == 2.5
    obj["parity"] = {"max_abs": math.nan}
    with pytest.raises(FieldError, match="parity"):
        Manifest.from_json(obj)


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        (("models", "detector", "onnx", "fp32", "sha256"), "AB" * 32, "hex"),
        (("models", "detector", "onnx", "fp32", "file"), "../outside.onnx", "inside the bundle"),
        (("models", "detector", "onnx", "fp32", "file"), "/abs/detector.onnx", "inside the bundle"),
        (("models", "detector", "onnx", "fp32", "file"), "manifest.json", "inside the bundle"),
        (("models", "detector", "inputs", 0, "shape"), ["M", 1, 64, 96], "'N'"),
        (("models", "detector", "inputs", 0, "dtype"), "float64", "float32"),
        (("models", "detector", "flops"), -1, ">= 0"),
        (("models", "detector", "flops"), True, "integer"),
        (("preprocessing", "detector", "std"), 0.0, "finite number"),
        (("preprocessing", "detector", "norm"), "minmax", "per_image"),
        (("preprocessing", "segmenter", "crop_hw"), [96], "height, width"),
        (("thresholds", "score"), 1.5, "[0, 1]"),
        (("created",), "yesterday", "ISO 8601"),
        (("engines", 0, "model"), "classifier", "detector"),
        (("engines", 0, "key", "compute_capability"), "86", "8.6"),
        (("engines", 0, "key", "max_batch"), 0, "max_batch"),
        (("engines", 0, "precision"), "fp32", "key.precision"),
    ],
    ids=lambda v: _dotted(v) if isinstance(v, tuple) else None,
)
def test_bad_values_are_refused_with_the_field_and_what_was_expected(path, value, words):
    obj = sample_json()
    _parent(obj, path)[path[-1]] = value
    with pytest.raises(FieldError) as info:
        Manifest.from_json(obj)
    assert words in str(info.value)
    assert _dotted(path).startswith(info.value.path) and info.value.path.startswith(
        _dotted(path[:2])
    )


def test_segmenter_dataset_norm_needs_mean_and_std():
    obj = sample_json()
    obj["preprocessing"]["segmenter"]["norm"] = "dataset"
    with pytest.raises(FieldError, match=r"preprocessing\.segmenter\.mean"):
        Manifest.from_json(obj)
    obj["preprocessing"]["segmenter"].update(mean=10, std=3)
    pre = Manifest.from_json(obj).preprocessing.segmenter
    assert (pre.mean, pre.std) == (10.0, 3.0) and isinstance(pre.mean, float)


def test_a_file_has_one_role():
    obj = sample_json(engines=2)
    obj["engines"][1]["file"] = obj["engines"][0]["file"]
    with pytest.raises(FieldError, match=r"engines\[1\]\.file"):
        Manifest.from_json(obj)
    obj = sample_json()
    obj["models"]["segmenter"]["checkpoint"]["file"] = "detector.onnx"
    with pytest.raises(FieldError, match="one role"):
        Manifest.from_json(obj)


def test_models_must_be_exactly_detector_and_segmenter():
    obj = sample_json()
    del obj["models"]["segmenter"]
    with pytest.raises(FieldError, match=r"models\.segmenter"):
        Manifest.from_json(obj)
    obj = sample_json()
    obj["models"]["classifier"] = obj["models"]["detector"]
    with pytest.raises(FieldError, match=r"models\.classifier"):
        Manifest.from_json(obj)


def test_a_newer_schema_is_refused_with_the_upgrade_hint():
    obj = sample_json()
    obj["schema_version"] = SCHEMA_VERSION + 2
    with pytest.raises(BundleError) as info:
        Manifest.from_json(obj)
    assert str(info.value) == (
        f"bundle schema {SCHEMA_VERSION + 2} is newer than this bpedge (reads "
        f"<={SCHEMA_VERSION}): upgrade bpedge"
    )


@pytest.mark.parametrize("version", [0, -1, "1", None, 1.0])
def test_unknown_older_or_malformed_schema_versions_are_refused(version):
    obj = sample_json()
    obj["schema_version"] = version
    with pytest.raises(BundleError, match="schema"):
        Manifest.from_json(obj)


def test_not_json_and_not_an_object_are_refused():
    with pytest.raises(BundleError, match="not valid JSON"):
        Manifest.loads("{ not json")
    with pytest.raises(BundleError, match="JSON object"):
        Manifest.from_json([1, 2])


def test_constructors_validate_too_and_accept_numpy_scalars():
    spec = TensorSpec("x", [np.int64(2), "N"], "uint8")
    assert spec.shape == (2, "N") and type(spec.shape[0]) is int
    pre = DetectorPreprocessing((np.int32(64), 96), np.float32(99.5), np.float64(52.0), "dataset")
    assert type(pre.mean) is float and pre.input_hw == (64, 96)
    json.dumps(pre.to_json())  # plain Python numbers only
    with pytest.raises(FieldError, match="mask"):
        Thresholds(score=0.5, mask=-0.1)
    with pytest.raises(FieldError, match="norm"):
        SegmenterPreprocessing((96, 96), None, None, "zscore")


def test_entries_can_be_added_and_replaced_by_file():
    manifest = Manifest.from_json(sample_json(engines=1))
    first = manifest.engines[0]
    newer = EngineEntry(
        model="segmenter", precision="fp32", file=first.file, sha256="cd" * 32,
        key=EngineKey("Orin", "8.7", 16, "10.3.0.30", "fp32", 4), built=first.built,
        build_seconds=3.0,
    )
    replaced = manifest.with_engine(newer)
    assert replaced.engines == (newer,) and manifest.engines == (first,)
    assert replaced.hash_of(first.file) == "cd" * 32
    assert replaced.without_engine(first.file).engines == ()


def test_model_entry_needs_inputs_and_outputs():
    obj = copy.deepcopy(sample_json()["models"]["detector"])
    obj["outputs"] = []
    with pytest.raises(FieldError, match="outputs"):
        ModelEntry.from_json(obj)
