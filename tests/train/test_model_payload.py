"""The typed checkpoint payload: what the trainers save is ``ModelPayload.to_dict()``, and a
saved checkpoint reads back into the same payload."""

from __future__ import annotations

from pathlib import Path

import pytest
from bpedge.train.checkpoint import ModelPayload, load_checkpoint, preprocessing_spec
from bpedge.train.presets import get_preset

from bpedge._preprocessing import ModelInput, Normalization


def test_the_trainers_checkpoints_read_back_into_the_same_payload(
    tiny_checkpoints: tuple[Path, Path],
) -> None:
    for path, kind in zip(tiny_checkpoints, ("detector", "segmenter")):
        saved = load_checkpoint(path)
        typed = ModelPayload.from_dict(saved)
        assert typed.kind == kind
        assert {k: saved[k] for k in typed.to_dict()} == typed.to_dict()
    det, seg = (load_checkpoint(p) for p in tiny_checkpoints)
    assert "crop_margin" not in det
    assert seg["crop_margin"] == get_preset("tiny").unet.crop_margin  # what the trainer used
    spec = preprocessing_spec(det, seg)
    assert spec.detector == ModelPayload.from_dict(det).input
    assert spec.crop == ModelPayload.from_dict(seg).input


def test_kind_and_crop_mode_go_together() -> None:
    common = {"arch": "unet", "model_config": {}, "config": {}, "frame_hw": None, "split": {},
              "data_fingerprint": "x", "input": ModelInput((96, 96), Normalization(1.0, 2.0))}
    with pytest.raises(ValueError, match="crop mode"):
        ModelPayload(kind="segmenter", **common)
    with pytest.raises(ValueError, match="crop mode"):
        ModelPayload(kind="detector", crop_mode="gt", **common)
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelPayload(kind="classifier", **common)
    old = ModelPayload(kind="segmenter", crop_mode="gt", **common).to_dict()
    del old["crop_margin"]  # a checkpoint from before crop margins
    assert ModelPayload.from_dict(old).crop_margin == 0.0
