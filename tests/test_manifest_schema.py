"""The JSON Schema shipped in the package (``bpedge/manifest.schema.json``) is the one derived
from the manifest's dataclasses, accepts what bpedge writes and refuses what it refuses."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from bpedge._manifest import Manifest, manifest_schema
from tests.test_manifest import sample_json

jsonschema = pytest.importorskip("jsonschema")


def shipped() -> dict:
    return json.loads(resources.files("bpedge").joinpath("manifest.schema.json").read_text())


def test_the_shipped_schema_is_the_derived_one() -> None:
    # If this fails after a manifest change: regenerate the file with
    # python -c "import json; from bpedge._manifest import manifest_schema as s; print(json.dumps(s(), indent=2))" > bpedge/manifest.schema.json
    assert shipped() == manifest_schema()
    jsonschema.Draft202012Validator.check_schema(shipped())


def test_what_bpedge_writes_is_valid() -> None:
    validator = jsonschema.Draft202012Validator(shipped())
    obj = sample_json()
    assert list(validator.iter_errors(obj)) == []
    assert list(validator.iter_errors(Manifest.from_json(obj).to_json())) == []
    obj["preprocessing"]["segmenter"]["crop_margin"] = 0.25
    assert list(validator.iter_errors(obj)) == []


@pytest.mark.parametrize(("path", "value"), [
    (("models", "detector", "onnx", "fp32", "sha256"), "not-a-hash"),
    (("models", "detector", "inputs", 0, "dtype"), "complex64"),
    (("preprocessing", "segmenter", "norm"), "global"),
    (("preprocessing", "detector", "input_hw"), [64]),
    (("thresholds", "unknown_field"), 1),
])
def test_what_bpedge_refuses_the_schema_refuses(path: tuple, value: object) -> None:
    obj = sample_json()
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError):  # bpedge's own reader (BundleError is a ValueError)
        Manifest.from_json(obj)
    assert list(jsonschema.Draft202012Validator(shipped()).iter_errors(obj))


def test_a_missing_model_fails_both() -> None:
    obj = sample_json()
    del obj["models"]["segmenter"]
    with pytest.raises(ValueError):
        Manifest.from_json(obj)
    assert list(jsonschema.Draft202012Validator(shipped()).iter_errors(obj))
