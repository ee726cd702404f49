"""A training folder's state as the study runner reads it, including what a kill leaves behind."""

from __future__ import annotations

import json

import pytest
from bpedge.train.experiment._steps import StepState, training_state


def test_orphan_best_checkpoint_from_a_killed_first_epoch_is_discarded(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"x")
    assert training_state(tmp_path, 2) is StepState.TODO
    assert not (tmp_path / "best.pt").exists()


def test_states(tmp_path):
    assert training_state(tmp_path, 2) is StepState.TODO
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
