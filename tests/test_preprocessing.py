"""One preprocessing contract: the typed spec round-trips, and a training crop, an export-validation
crop and a runtime crop of one frame are the same array (the train/serve skew DESIGN.md warns of).

Each side runs its own code path: training through ``predict_boxes`` (a stand-in torch detector)
-> ``crop_box`` -> ``SegmenterDataset``; export through ``_validation.segmenter_boxes`` ->
``segmenter_crops``; the runtime through ``HostCascade`` with recording model runners.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bpedge.export import _validation as val
from bpedge.train.data import scan_dataset
from bpedge.train.datasets import DetectorDataset, SegmenterDataset
from bpedge.train.predict import predict_boxes
from torch import nn

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._manifest import Manifest, Preprocessing
from bpedge._preprocessing import (
    ModelInput,
    Normalization,
    PreprocessingSpec,
    box_found,
    crop_box,
    detector_input,
    frame_box,
)

SPEC = PreprocessingSpec((160, 224), 120.0, 40.0, (96, 96), 130.0, 45.0, crop_margin=0.25)
#: Raw detector boxes in detector-input pixels: inside, overshooting the input, non-finite.
RAW = np.array([[56, 40, 112, 80], [200, 100, 260, 190], [np.nan, 10, 20, 20]], np.float32)


class _FixedDetector(nn.Module):
    """A torch detector that answers ``RAW`` and records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.inputs: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs.append(x.numpy().copy())
        n = x.shape[0]
        return torch.full((n,), 0.9), torch.from_numpy(RAW[:n])


@pytest.fixture(scope="module")
def frames(phantom_dir: Path):
    return [f for f in scan_dataset(phantom_dir).frames if f.present][:3]


@pytest.mark.parametrize("margin", [0.0, 0.25])
def test_train_export_and_runtime_crops_of_a_frame_are_identical(frames, margin: float) -> None:
    from dataclasses import replace

    spec = replace(SPEC, crop_margin=margin)
    store = val.load_store(frames)
    images = store.images

    # Training: predicted boxes (train_segmenter's --crop detector), the one crop rule, the dataset.
    model = _FixedDetector()
    payload = {"input_hw": list(spec.detector_input_hw),
               "normalization": {"mean": spec.detector_mean, "std": spec.detector_std}}
    preds = predict_boxes(model, payload, images)
    assert [p.found for p in preds] == [True, True, False]
    train_boxes = [crop_box("detector", store.hw(i), margin, detected=preds[i].box)
                   for i in range(3)]
    dataset = SegmenterDataset(store, [0, 1, 2], train_boxes, spec.crop_hw,
                               Normalization(spec.crop_mean, spec.crop_std))
    train_crops = np.stack([dataset[k][0].numpy() for k in range(3)])

    # Export validation: the exported detector's boxes through the validation helpers.
    export_boxes = val.segmenter_boxes(
        "detector", store, detect=lambda x: RAW[: len(x)],
        detector_input=lambda s: val.detector_inputs(s, spec.detector_input_hw,
                                                      spec.detector_mean, spec.detector_std),
        detector_input_hw=spec.detector_input_hw, margin=margin)
    export_crops, _ = val.segmenter_crops(store, export_boxes, spec.crop_hw, spec.crop_mean,
                                          spec.crop_std)

    # Runtime: the host cascade with runners that answer RAW and record the crops.
    seen: dict[str, np.ndarray] = {}

    def detect(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen["detector"] = x.copy()
        return np.full(len(x), 0.9, np.float32), RAW[: len(x)]

    def segment(x: np.ndarray) -> np.ndarray:
        seen["crops"] = x.copy()
        return np.zeros_like(x)

    cascade_spec = CascadeSpec(*(getattr(spec, n) for n in (
        "detector_input_hw", "detector_mean", "detector_std", "crop_hw", "crop_mean", "crop_std")),
        0.5, 0.5, crop_margin=margin)
    results = HostCascade(detect, segment, cascade_spec).run_batch(images)

    assert train_boxes == export_boxes == [r.box for r in results]
    np.testing.assert_array_equal(train_crops, export_crops)
    np.testing.assert_array_equal(train_crops, seen["crops"])
    # The detector inputs too: training dataset, predict, export validation, runtime.
    det_set = DetectorDataset(store, [0, 1, 2], spec.detector_input_hw,
                              Normalization(spec.detector_mean, spec.detector_std))
    train_inputs = np.stack([det_set[k][0].numpy() for k in range(3)])
    export_inputs = val.detector_inputs(store, spec.detector_input_hw, spec.detector_mean,
                                        spec.detector_std)
    np.testing.assert_array_equal(train_inputs, model.inputs[0])
    np.testing.assert_array_equal(train_inputs, export_inputs)
    np.testing.assert_array_equal(train_inputs, seen["detector"])
    # The non-finite box: the whole frame everywhere, absent at run time.
    h, w = store.hw(2)
    assert train_boxes[2] == (0.0, 0.0, float(w), float(h))
    assert not results[2].present and results[0].present


def test_margin_grows_the_box_about_its_centre_and_stays_in_the_frame() -> None:
    assert crop_box("gt", (100, 200), 0.5, truth=(40, 40, 80, 60)) == (30, 35, 90, 65)
    assert crop_box("gt", (100, 200), 1.0, truth=(0, 0, 40, 40)) == (0, 0, 60, 60)
    assert crop_box("none", (100, 200), 0.5) == (0, 0, 200, 100)
    assert crop_box("detector", (100, 200), 0.0, detected=(1.5, 2, 3, 4)) == (1.5, 2, 3, 4)
    with pytest.raises(ValueError, match="crop mode must be one of"):
        crop_box("random", (100, 200), 0.0)
    with pytest.raises(ValueError, match="needs the truth box"):
        crop_box("gt", (100, 200), 0.0)


def test_non_finite_boxes_follow_one_rule() -> None:
    spec = ModelInput((16, 24), Normalization(None, None))
    for raw in ([np.nan, 0, 1, 1], [0, 0, np.inf, 1]):
        assert not box_found(raw)
        assert frame_box(raw, (40, 60), spec) == (0.0, 0.0, 60.0, 40.0)
    assert box_found([0, 0, 12, 8]) and frame_box([0, 0, 12, 8], (40, 60), spec) == (0, 0, 30, 20)


def test_spec_json_round_trip_and_errors() -> None:
    again = PreprocessingSpec.from_json(json.loads(SPEC.dumps()))
    assert again == SPEC and isinstance(again.crop_hw, tuple)
    old = {k: v for k, v in SPEC.to_json().items() if k != "crop_margin"}
    assert PreprocessingSpec.from_json(old).crop_margin == 0.0
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        PreprocessingSpec.from_json({**SPEC.to_json(), "extra": 1})
    with pytest.raises(ValueError, match="crop_margin"):
        PreprocessingSpec((2, 2), None, None, (1, 1), None, None, crop_margin=-0.1)
    x = detector_input(np.full((4, 6), 7, np.uint8), SPEC)
    assert x.shape == (1, 160, 224) and x.dtype == np.float32


def test_manifest_and_cascade_spec_carry_the_spec() -> None:
    per_image = PreprocessingSpec((16, 24), None, None, (8, 8), None, None, crop_margin=0.1)
    for spec in (SPEC, per_image):
        assert Preprocessing.from_spec(spec).spec == spec
        section = Preprocessing.from_json(Preprocessing.from_spec(spec).to_json())
        assert section.spec == spec
    cascade = CascadeSpec((16, 24), 1.0, 2.0, (8, 8), None, None, 0.5, 0.5, crop_margin=0.1)
    assert cascade.preprocessing == PreprocessingSpec((16, 24), 1.0, 2.0, (8, 8), None, None,
                                                      crop_margin=0.1)


def test_a_schema_1_manifest_reads_with_no_margin() -> None:
    from tests.test_manifest import sample_json

    obj = sample_json()
    obj["schema_version"] = 1
    assert "crop_margin" not in obj["preprocessing"]["segmenter"]  # as schema 1 wrote it
    manifest = Manifest.from_json(obj)
    assert manifest.preprocessing.spec.crop_margin == 0.0
    assert manifest.schema_version == 2
    assert "crop_margin" not in manifest.to_json()["preprocessing"]["segmenter"]  # 0.0: omitted
    obj["preprocessing"]["segmenter"]["crop_margin"] = 0.2
    assert Manifest.loads(Manifest.from_json(obj).dumps()).preprocessing.spec.crop_margin == 0.2
