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


@pytest.mark.parametrize("split", [{"split": "subject"}, {"folds": 2, "fold": 1},
                                   {"folds": 2, "fold": 2}])
@pytest.mark.parametrize("part", ["train", "val"])
def test_empty_frames_are_those_of_subjects_only_in_their_part(
    phantom_dir: Path, tmp_path: Path, split: dict, part: str
) -> None:
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path, **split), 0, CTX, None)
    parts = {"train": data.train, "val": data.val, "test": data.test}
    own = {f.subject for f in parts[part]}
    elsewhere = {f.subject for name, frames in parts.items() if name != part for f in frames}
    all_empty = [f for f in scan_dataset(phantom_dir).frames if not f.present]
    expected = sorted(f.key for f in all_empty if f.subject in own - elsewhere)
    assert expected, f"the test phantom needs empty frames of {part}-only subjects"
    kept = data.train_empty if part == "train" else data.val_empty
    assert sorted(f.key for f in kept) == expected
    assert not {f.subject for f in kept} & elsewhere
    assert all(not f.present for f in kept)


def test_a_random_split_gives_no_empty_frame_of_a_subject_also_in_another_part(
    phantom_dir: Path, tmp_path: Path
) -> None:
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path, split="random"), 0, CTX, None)
    held_out = {f.subject for f in (*data.val, *data.test)}
    assert not {f.subject for f in data.train_empty} & held_out
    elsewhere = {f.subject for f in (*data.train, *data.test)}
    assert not {f.subject for f in data.val_empty} & elsewhere
