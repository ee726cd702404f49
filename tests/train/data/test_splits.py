"""Splits: the method's random split sizes, no subject leak in subject mode, determinism, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpedge.train.data.kaggle import Frame
from bpedge.train.data.splits import Split, load_split, make_split, save_split
from hypothesis import given, settings
from hypothesis import strategies as st


def _frames(counts: list[int]) -> list[Frame]:
    """Frames of subjects 1..len(counts), with counts[i] frames for subject i+1 (no files)."""
    return [
        Frame(s, f, Path(f"{s}_{f}.tif"), Path(f"{s}_{f}_mask.tif"), (0.0, 0.0, 1.0, 1.0))
        for s, n in enumerate(counts, start=1)
        for f in range(1, n + 1)
    ]


def _subject(key: str) -> int:
    return int(key.split("_")[0])


def test_random_split_reproduces_the_method_sizes() -> None:
    frames = _frames([49] * 47 + [20])[:2323]  # 2,323 BP-positive frames, as in the paper
    assert len(frames) == 2323
    split = make_split(frames, "random", seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (1680, 420, 223)
    assert len(split.train) + len(split.val) == 2100
    everything = split.train + split.val + split.test
    assert sorted(everything) == sorted(f.key for f in frames)


def test_random_split_is_a_function_of_seed_not_input_order() -> None:
    frames = _frames([30] * 10)
    a = make_split(frames, "random", seed=3)
    assert make_split(list(reversed(frames)), "random", seed=3) == a
    assert make_split(frames, "random", seed=4) != a
    # A random split does mix subjects: that is the leak the subject mode exists to avoid.
    assert {_subject(k) for k in a.test} & {_subject(k) for k in a.train}


def test_subject_split_has_no_subject_in_two_parts() -> None:
    frames = _frames([40, 55, 61, 38, 47, 52, 44, 49, 58, 36, 41, 50])
    split = make_split(frames, "subject", seed=1)
    parts = [{_subject(k) for k in getattr(split, p)} for p in ("train", "val", "test")]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    assert all(parts)
    assert sorted(split.train + split.val + split.test) == sorted(f.key for f in frames)
    # Whole subjects of <= 61 frames: each part is within one subject of its frame target.
    n = len(frames)
    test_target = n * 223 / 2323
    val_target = (n - test_target) * 0.2
    assert abs(len(split.test) - test_target) <= 61
    assert abs(len(split.val) - val_target) <= 61
    assert make_split(list(reversed(frames)), "subject", seed=1) == split
    assert make_split(frames, "subject", seed=2) != split


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=3, max_size=25),
    seed=st.integers(0, 2**31),
    test_fraction=st.floats(0.05, 0.4),
    val_fraction=st.floats(0.05, 0.4),
)
def test_subject_split_properties(
    counts: list[int], seed: int, test_fraction: float, val_fraction: float
) -> None:
    frames = _frames(counts)
    split = make_split(frames, "subject", seed, test_fraction, val_fraction)
    subjects = [{_subject(k) for k in getattr(split, p)} for p in ("train", "val", "test")]
    assert all(subjects)
    assert sum(len(s) for s in subjects) == len(counts)  # each subject in exactly one part
    assert len(split.train) + len(split.val) + len(split.test) == len(frames)


def test_too_few_frames_or_subjects_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 subjects"):
        make_split(_frames([50, 50]), "subject", seed=0)
    with pytest.raises(ValueError, match="too few"):
        make_split(_frames([2]), "random", seed=0)
    assert len(make_split(_frames([3]), "random", seed=0).train) == 1


def test_bad_arguments_are_refused() -> None:
    frames = _frames([10] * 4)
    with pytest.raises(ValueError, match="mode"):
        make_split(frames, "video", seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(frames, "random", seed=0, test_fraction=1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        make_split(frames, "random", seed=0, val_fraction=0.0)
    with pytest.raises(ValueError, match="repeat"):
        make_split(frames + frames[:1], "random", seed=0)


def test_keys_sort_numerically() -> None:
    split = make_split(_frames([12] * 3), "random", seed=0)
    for part in (split.train, split.val, split.test):
        assert list(part) == sorted(part, key=lambda k: tuple(int(x) for x in k.split("_")))


def test_save_load_round_trip(tmp_path: Path) -> None:
    for mode in ("random", "subject"):
        split = make_split(_frames([20, 25, 30, 22]), mode, seed=5)
        path = tmp_path / mode / "split.json"
        save_split(split, path)
        assert load_split(path) == split
        data = json.loads(path.read_text())
        assert data["counts"]["test"] == len(split.test)
        assert list(tmp_path.joinpath(mode).iterdir()) == [path]  # no temporary file left


def test_invalid_split_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_split(path)
    good = make_split(_frames([10, 10, 10]), "subject", seed=0).to_json()
    path.write_text(json.dumps({**good, "val": good["val"] + good["test"][:1]}))
    with pytest.raises(ValueError, match="in both"):
        load_split(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "train"}))
    with pytest.raises(ValueError, match="missing"):
        load_split(path)
    with pytest.raises(ValueError, match="seed"):
        Split.from_json({**good, "seed": "0"})
