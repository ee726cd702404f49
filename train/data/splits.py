"""Train / validation / test splits of frame keys, saved as JSON beside every run.

Two modes:

- ``random`` reproduces the method: ``test_fraction`` of the frames (223 of the 2,323 BP-positive
  Kaggle frames) are the test set, and the rest is split ``1 - val_fraction`` / ``val_fraction``
  into train and validation. Frames of one subject are video frames, so this puts near-duplicates on
  both sides and overstates accuracy; it is offered to compare with the published numbers.
- ``subject`` assigns whole subjects, so no subject is in two splits, aiming at the same fractions
  counted in frames.

Both are deterministic functions of the frame keys and the seed (the input order does not matter).

Subject-wise K-fold cross-validation (:func:`make_kfold_split`) deals the subjects, in a seeded
order, into K groups of near-equal frame counts; fold ``f`` tests on group ``f`` and validates on
``val_fraction`` of the other subjects (at least one), so every subject is tested exactly once over
the K folds and no subject is ever in two parts of one fold.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from bpedge.train.data.kaggle import Frame

from bpedge._atomic import atomic_write_json

__all__ = [
    "Split", "SplitMode", "kfold_groups", "load_split", "make_kfold_split", "make_split",
    "save_split",
]

SplitMode = Literal["random", "subject"]
_MODES = ("random", "subject")
_SCHEMA = "bpedge.split/1"

#: The method's test share: 223 of the 2,323 BP-positive frames.
PAPER_TEST_FRACTION = 223 / 2323


def _sort_key(key: str) -> tuple[int, int] | tuple[float, str]:
    # Numeric order ("2_10" after "2_9"); keys of another shape sort after, by text.
    subject, _, frame = key.partition("_")
    if subject.isdigit() and frame.isdigit():
        return (int(subject), int(frame))
    return (float("inf"), key)


@dataclass(frozen=True)
class Split:
    """Frame keys (``"{subject}_{frame}"``) of each part, each sorted by (subject, frame)."""

    mode: SplitMode
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    #: Subject-wise K-fold: this split is fold ``fold`` (from 1) of ``folds``; None otherwise.
    fold: int | None = None
    folds: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"split mode must be one of {_MODES}, got {self.mode!r}")
        if (self.fold is None) != (self.folds is None):
            raise ValueError("a K-fold split needs both fold and folds")
        if self.folds is not None and not (
            isinstance(self.fold, int) and isinstance(self.folds, int) and 1 <= self.fold <= self.folds
        ):
            raise ValueError(f"fold must be in 1..folds, got fold {self.fold} of {self.folds}")
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for key in getattr(self, part):
                if not isinstance(key, str):
                    # A malformed split file is bad input (CLI exit 2), hence ValueError.
                    raise ValueError(  # noqa: TRY004
                        f"split keys must be strings, got {key!r} in {part}"
                    )
                if key in seen:
                    raise ValueError(f"frame {key} is in both {seen[key]} and {part}")
                seen[key] = part

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``counts`` is informational and ignored by :meth:`from_json`."""
        fold = {} if self.folds is None else {"fold": self.fold, "folds": self.folds}
        return {
            "schema": _SCHEMA,
            "mode": self.mode,
            "seed": self.seed,
            **fold,
            "counts": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Split:
        """Inverse of :meth:`to_json`; raises ValueError saying which field is missing or wrong."""
        if not isinstance(d, dict):
            raise ValueError(  # noqa: TRY004 - malformed input file, CLI exit 2
                f"a split must be a JSON object, got {type(d).__name__}"
            )
        if d.get("schema", _SCHEMA) != _SCHEMA:
            raise ValueError(f"unknown split schema {d.get('schema')!r}, expected {_SCHEMA!r}")
        missing = [k for k in ("mode", "seed", "train", "val", "test") if k not in d]
        if missing:
            raise ValueError(f"split is missing field(s) {missing}")
        parts = {}
        for part in ("train", "val", "test"):
            if not isinstance(d[part], list):
                raise ValueError(  # noqa: TRY004 - malformed input file, CLI exit 2
                    f"split field {part!r} must be a list of frame keys"
                )
            parts[part] = tuple(d[part])
        if isinstance(d["seed"], bool) or not isinstance(d["seed"], int):
            raise ValueError(  # noqa: TRY004 - malformed input file, CLI exit 2
                f"split seed must be an integer, got {d['seed']!r}"
            )
        return cls(mode=d["mode"], seed=d["seed"], fold=d.get("fold"), folds=d.get("folds"),
                   **parts)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")


def _part_sizes(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) frame counts, each at least 1."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round((n - n_test) * val_fraction))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise ValueError(
            f"{n} frames are too few for non-empty train, validation and test splits "
            f"(test_fraction={test_fraction}, val_fraction={val_fraction})"
        )
    return n_train, n_val, n_test


def _sorted(keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(keys, key=_sort_key))


def make_split(
    frames: Sequence[Frame],
    mode: SplitMode,
    seed: int,
    test_fraction: float = PAPER_TEST_FRACTION,
    val_fraction: float = 0.2,
) -> Split:
    """Split ``frames`` (usually ``index.positive()``) into train / val / test.

    ``random``: exactly ``round(n * test_fraction)`` test frames, then ``round(rest * val_fraction)``
    validation frames, the rest train (at least one each). ``subject``: whole subjects, in a seeded
    random order, are taken into test and then validation while that brings each part's frame count
    closer to its target, and at least one subject each; the rest is train. Raises ValueError for
    fractions outside (0, 1), repeated frame keys, or too few frames / subjects (3 needed).
    """
    if mode not in _MODES:
        raise ValueError(f"split mode must be one of {_MODES}, got {mode!r}")
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("val_fraction", val_fraction)
    keys = [f.key for f in frames]
    if len(set(keys)) != len(keys):
        dupes = sorted((k for k, c in Counter(keys).items() if c > 1), key=_sort_key)
        raise ValueError(f"frames repeat key(s) {dupes[:10]}; pass each frame once")
    rng = np.random.default_rng(seed)
    if mode == "random":
        _, n_val, n_test = _part_sizes(len(keys), test_fraction, val_fraction)
        ordered = _sorted(keys)  # shuffle a canonical order, so the input order does not matter
        shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
        test, val = shuffled[:n_test], shuffled[n_test : n_test + n_val]
        train = shuffled[n_test + n_val :]
    else:
        test, val, train = _subject_parts(frames, rng, test_fraction, val_fraction)
    return Split(mode=mode, seed=seed, train=_sorted(train), val=_sorted(val), test=_sorted(test))


#: Said with a count of subjects: train and experiment split the BP frames, so a subject whose
#: frames are all empty is not counted (a user counting the data's subjects finds one more).
_COUNTED = " (subjects with a BP frame: only those are split)"


def _subject_parts(
    frames: Sequence[Frame], rng: np.random.Generator, test_fraction: float, val_fraction: float
) -> tuple[list[str], list[str], list[str]]:
    by_subject: dict[int, list[str]] = defaultdict(list)
    for f in frames:
        by_subject[f.subject].append(f.key)
    subjects = sorted(by_subject)
    if len(subjects) < 3:
        raise ValueError(
            f"a subject split needs at least 3 subjects (one each for train, validation and "
            f"test), got {len(subjects)}: {subjects}{_COUNTED}; use --split random, or more "
            "subjects"
        )
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    total = len(frames)
    test_target = total * test_fraction
    val_target = (total - test_target) * val_fraction

    def take(target: float, keep_for_rest: int) -> list[int]:
        # Greedy over the shuffled subjects: add while it moves the count closer to the target.
        chosen = [order.pop(0)]
        count = len(by_subject[chosen[0]])
        while len(order) > keep_for_rest:
            nxt = len(by_subject[order[0]])
            if abs(count + nxt - target) >= abs(count - target):
                break
            chosen.append(order.pop(0))
            count += nxt
        return chosen

    test_subjects = take(test_target, keep_for_rest=2)
    val_subjects = take(val_target, keep_for_rest=1)

    def keys_of(subs: list[int]) -> list[str]:
        return [k for s in subs for k in by_subject[s]]

    return keys_of(test_subjects), keys_of(val_subjects), keys_of(order)


def kfold_groups(frames: Sequence[Frame], folds: int, seed: int) -> list[list[int]]:
    """The subjects of ``frames`` dealt into ``folds`` groups: subjects in a seeded random order,
    each given to the group with the fewest frames so far (ties: the lower group). Deterministic
    in the frames' subjects and counts and the seed. ValueError when there are fewer subjects than
    ``folds + 2`` (each fold needs a test group and at least one validation and one training
    subject) or ``folds < 2``."""
    if folds < 2:
        raise ValueError(f"K-fold cross-validation needs at least 2 folds, got {folds}")
    counts = Counter(f.subject for f in frames)
    subjects = sorted(counts)
    if len(subjects) < folds + 2:
        raise ValueError(
            f"{folds} folds need at least {folds + 2} subjects (a test group per fold plus one "
            f"validation and one training subject), got {len(subjects)}{_COUNTED}; use fewer "
            "folds"
        )
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    groups: list[list[int]] = [[] for _ in range(folds)]
    sizes = [0] * folds
    for s in order:
        g = min(range(folds), key=lambda i: (sizes[i], i))
        groups[g].append(s)
        sizes[g] += counts[s]
    return [sorted(g) for g in groups]


def make_kfold_split(
    frames: Sequence[Frame], folds: int, fold: int, seed: int, val_fraction: float = 0.2
) -> Split:
    """Fold ``fold`` (1..``folds``) of a subject-wise K-fold split of ``frames``: test = that
    fold's group of subjects (:func:`kfold_groups`), validation = ``round(val_fraction x the
    other subjects)`` of them (at least 1, at most all but one) in a seeded order, train = the
    rest. ``mode`` is ``subject``."""
    _check_fraction("val_fraction", val_fraction)
    if not 1 <= fold <= folds:
        raise ValueError(f"fold must be in 1..{folds}, got {fold}")
    groups = kfold_groups(frames, folds, seed)
    test_subjects = set(groups[fold - 1])
    rest = sorted({f.subject for f in frames} - test_subjects)
    n_val = min(max(1, round(len(rest) * val_fraction)), len(rest) - 1)
    rng = np.random.default_rng([seed, fold])
    val_subjects = {rest[i] for i in rng.permutation(len(rest))[:n_val]}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for f in frames:
        part = "test" if f.subject in test_subjects else "val" if f.subject in val_subjects else "train"
        parts[part].append(f.key)
    return Split(mode="subject", seed=seed, train=_sorted(parts["train"]), val=_sorted(parts["val"]),
                 test=_sorted(parts["test"]), fold=fold, folds=folds)


def save_split(split: Split, path: Path) -> None:
    """Write ``split`` as JSON to ``path`` atomically (a crash leaves the old file or the new)."""
    atomic_write_json(path, split.to_json())


def load_split(path: Path) -> Split:
    """Read a split written by :func:`save_split`; ValueError if the file is not a valid split."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return Split.from_json(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
