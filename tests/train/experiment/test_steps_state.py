"""A training folder's state as the study runner reads it, including what a kill leaves behind."""

from __future__ import annotations

import json

import pytest
from bpedge.train.experiment._steps import StepState, training_state

_CONFIG = {"model": {"epochs": 2, "input_hw": [64, 64]}, "data": {"root": "/data"}}


def _orphan(run_dir, *, epoch=1, config=_CONFIG):
    """What a kill between the first epoch's best.pt and last.pt leaves: a folder train made,
    its config.json, and a bpedge checkpoint of epoch 1 holding that config."""
    pytest.importorskip("torch")
    from bpedge.train.checkpoint import save_checkpoint

    from bpedge._out_dir import claim_out_dir

    claim_out_dir(run_dir, "train")
    (run_dir / "config.json").write_text(json.dumps(_CONFIG))
    save_checkpoint(run_dir / "best.pt", {
        "kind": "segmenter", "arch": "unet", "model_config": {}, "model_state": {},
        "normalization": {"mean": 0.0, "std": 1.0}, "input_hw": [64, 64], "epoch": epoch,
        "config": config,
    })


def test_orphan_best_checkpoint_from_a_killed_first_epoch_is_discarded(tmp_path):
    _orphan(tmp_path)
    assert training_state(tmp_path, 2) is StepState.NOT_STARTED
    assert not (tmp_path / "best.pt").exists()


def test_a_users_best_pt_is_refused_by_name_and_kept(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"A")  # no marker, not a checkpoint
    with pytest.raises(ValueError, match=r"best\.pt is not a checkpoint .*never deleted"):
        training_state(tmp_path, 2)
    assert (tmp_path / "best.pt").read_bytes() == b"A"


@pytest.mark.parametrize("change", ["not_a_checkpoint", "other_config", "later_epoch",
                                    "no_marker"])
def test_only_this_runs_own_orphan_is_ever_removed(tmp_path, change):
    from bpedge._out_dir import MARKER_NAME

    if change == "other_config":
        _orphan(tmp_path, config={**_CONFIG, "data": {"root": "/elsewhere"}})
    elif change == "later_epoch":
        _orphan(tmp_path, epoch=3)
    else:
        _orphan(tmp_path)
    if change == "not_a_checkpoint":
        (tmp_path / "best.pt").write_bytes(b"mine")
    if change == "no_marker":
        (tmp_path / MARKER_NAME).unlink()  # the folder the user made, the checkpoint a copy
    before = (tmp_path / "best.pt").read_bytes()
    with pytest.raises(ValueError, match="never deleted"):
        training_state(tmp_path, 2)
    assert (tmp_path / "best.pt").read_bytes() == before


def test_states(tmp_path):
    assert training_state(tmp_path, 2) is StepState.NOT_STARTED
    (tmp_path / "last.pt").write_bytes(b"x")
    assert training_state(tmp_path, 2) is StepState.UNFINISHED
    (tmp_path / "best.pt").write_bytes(b"x")
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": [{}, {}]}))
    assert training_state(tmp_path, 2) is StepState.DONE
    assert training_state(tmp_path, 3) is StepState.UNFINISHED


def test_a_finished_run_whose_last_checkpoint_was_removed_stays_done(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"model")
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": [{}, {}]}))
    assert training_state(tmp_path, 2) is StepState.DONE
    assert (tmp_path / "best.pt").read_bytes() == b"model"  # never deleted nor retrained


def test_an_unfinished_run_without_last_checkpoint_is_refused_not_deleted(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"model")
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": [{}]}))
    with pytest.raises(ValueError, match="best.pt after 1 epoch.*no last.pt"):
        training_state(tmp_path, 3)
    assert (tmp_path / "best.pt").read_bytes() == b"model"
