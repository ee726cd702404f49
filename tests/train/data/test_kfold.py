"""Subject-wise K-fold: every subject tested exactly once, no subject in two parts of a fold."""

from __future__ import annotations

from pathlib import Path

import pytest
from bpedge.train.data import Frame, Split, kfold_groups, make_kfold_split


def _frames(counts: dict[int, int]) -> list[Frame]:
    out = []
    for subject, n in counts.items():
        for i in range(1, n + 1):
            out.append(Frame(subject=subject, frame=i, image_path=Path(f"{subject}_{i}.tif"),
                             mask_path=Path(f"{subject}_{i}_mask.tif"), box=(1.0, 1.0, 5.0, 5.0)))
    return out


FRAMES = _frames({s: 5 + (s % 3) for s in range(1, 11)})


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_subject_is_tested_exactly_once(k):
    tested: list[str] = []
    for fold in range(1, k + 1):
        split = make_kfold_split(FRAMES, k, fold, seed=4)
        subjects = {part: {key.split("_")[0] for key in getattr(split, part)}
                    for part in ("train", "val", "test")}
        assert not subjects["train"] & subjects["val"]
        assert not subjects["train"] & subjects["test"]
        assert not subjects["val"] & subjects["test"]
        assert subjects["val"] and subjects["train"] and subjects["test"]
        assert len(split.train) + len(split.val) + len(split.test) == len(FRAMES)
        assert (split.fold, split.folds, split.mode) == (fold, k, "subject")
        tested += sorted(subjects["test"])
    assert sorted(tested, key=int) == [str(s) for s in range(1, 11)]


def test_groups_are_balanced_and_deterministic():
    groups = kfold_groups(FRAMES, 5, seed=1)
    assert groups == kfold_groups(list(reversed(FRAMES)), 5, seed=1)
    assert groups != kfold_groups(FRAMES, 5, seed=2)
    sizes = [sum(1 for f in FRAMES if f.subject in g) for g in groups]
    assert max(sizes) - min(sizes) <= 7  # at most one subject's frames apart


def test_split_json_round_trip_keeps_the_fold():
    split = make_kfold_split(FRAMES, 3, 2, seed=0)
    assert Split.from_json(split.to_json()) == split
    assert Split.from_json(make_kfold_split(FRAMES, 3, 2, seed=0).to_json()).fold == 2


def test_too_few_subjects_or_bad_fold_are_refused():
    with pytest.raises(ValueError, match="subjects"):
        make_kfold_split(_frames({1: 3, 2: 3, 3: 3}), 3, 1, seed=0)
    with pytest.raises(ValueError, match="fold"):
        make_kfold_split(FRAMES, 3, 4, seed=0)
    with pytest.raises(ValueError, match="2 folds"):
        kfold_groups(FRAMES, 1, seed=0)
