"""prepare_data: the empty frames a detector may train on come from train-only subjects, those
it may be validated on from validation-only subjects."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from bpedge.train._run_setup import RunOptions, prepare_data
from bpedge.train.data import scan_dataset
from bpedge.train.distributed import DistContext

CTX = DistContext(0, 1, 0, torch.device("cpu"), initialized=False)


@pytest.mark.parametrize("split", [{"split": "subject"}, {"folds": 2, "fold": 2}])
def test_train_empty_frames_are_those_of_train_only_subjects(
    phantom_dir: Path, tmp_path: Path, split: dict
) -> None:
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path, **split), 0, CTX, None)
    train_subjects = {f.subject for f in data.train}
    held_out = {f.subject for f in (*data.val, *data.test)}
    all_empty = [f for f in scan_dataset(phantom_dir).frames if not f.present]
    expected = sorted(f.key for f in all_empty if f.subject in train_subjects - held_out)
    assert expected, "the test phantom needs empty frames in train subjects"
    assert sorted(f.key for f in data.train_empty) == expected
    assert not {f.subject for f in data.train_empty} & held_out
    assert all(not f.present for f in data.train_empty)


def test_a_random_split_gives_no_empty_frame_of_a_subject_also_held_out(
    phantom_dir: Path, tmp_path: Path
) -> None:
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path, split="random"), 0, CTX, None)
    held_out = {f.subject for f in (*data.val, *data.test)}
    assert not {f.subject for f in data.train_empty} & held_out


@pytest.mark.parametrize("split", [{"split": "subject"}, {"folds": 2, "fold": 1}])
def test_val_empty_frames_are_those_of_validation_only_subjects(
    phantom_dir: Path, tmp_path: Path, split: dict
) -> None:
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path, **split), 0, CTX, None)
    val_subjects = {f.subject for f in data.val}
    elsewhere = {f.subject for f in (*data.train, *data.test)}
    all_empty = [f for f in scan_dataset(phantom_dir).frames if not f.present]
    expected = sorted(f.key for f in all_empty if f.subject in val_subjects - elsewhere)
    assert expected, "the test phantom needs empty frames in validation subjects"
    assert sorted(f.key for f in data.val_empty) == expected
    assert not {f.subject for f in data.val_empty} & elsewhere
    assert not {f.key for f in data.val_empty} & {f.key for f in data.train_empty}


def test_a_random_split_validates_on_no_empty_frame_of_a_subject_also_trained_on(
    phantom_dir: Path, tmp_path: Path
) -> None:
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path, split="random"), 0, CTX, None)
    elsewhere = {f.subject for f in (*data.train, *data.test)}
    assert not {f.subject for f in data.val_empty} & elsewhere
