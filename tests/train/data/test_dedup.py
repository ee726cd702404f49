"""De-duplication: an injected near-copy with a contradictory (empty) mask is found and removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bpedge.train.data.dedup import (
    DEFAULT_THRESHOLD,
    DuplicateReport,
    drop_frames,
    find_contradictory_duplicates,
)
from bpedge.train.data.kaggle import read_image, scan_dataset


def _inject_copy(root: Path, source: str, new_key: str, *, seed: int = 0) -> None:
    """Write ``new_key`` as ``source``'s image plus mild noise, with an empty mask."""
    image = read_image(root / f"{source}.tif").astype(np.float64)
    noisy = image + np.random.default_rng(seed).normal(0, 4, image.shape)
    tifffile.imwrite(root / f"{new_key}.tif", np.clip(noisy, 0, 255).astype(np.uint8),
                     compression="lzw")
    tifffile.imwrite(root / f"{new_key}_mask.tif", np.zeros(image.shape, np.uint8),
                     compression="lzw")


@pytest.fixture
def with_copies(phantom_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "train"
    shutil.copytree(phantom_dir, root)
    index = scan_dataset(root)
    source = next(f for f in index.frames if f.subject == 2 and f.present)
    _inject_copy(root, source.key, "2_99")
    _inject_copy(root, source.key, "3_99", seed=1)  # same picture, but filed under another subject
    return root


def test_injected_contradictory_copy_is_removed(with_copies: Path) -> None:
    index = scan_dataset(with_copies)
    report = find_contradictory_duplicates(index.frames)
    assert report.removed == ("2_99",)  # 3_99 is in another subject: never compared with 2_x
    (kept, removed, similarity), = report.pairs
    assert removed == "2_99" and kept.startswith("2_")
    assert index.select([kept])[0].present
    assert DEFAULT_THRESHOLD <= similarity <= 1.0
    remaining = drop_frames(index.frames, report)
    assert len(remaining) == len(index.frames) - 1
    assert "2_99" not in {f.key for f in remaining}
    assert [f.key for f in remaining] == [f.key for f in index.frames if f.key != "2_99"]


def test_the_phantom_video_itself_has_no_contradictory_duplicates(phantom_dir: Path) -> None:
    # Successive frames of a drifting probe are similar but not copies: the default keeps them all.
    index = scan_dataset(phantom_dir)
    assert find_contradictory_duplicates(index.frames).removed == ()
    # ... while a permissive threshold does pair every empty frame with a positive one.
    loose = find_contradictory_duplicates(index.frames, threshold=0.5)
    assert set(loose.removed) == {f.key for f in index.frames if not f.present}


def test_positive_frames_are_never_removed(with_copies: Path) -> None:
    index = scan_dataset(with_copies)
    report = find_contradictory_duplicates(index.frames, threshold=0.01)
    positives = {f.key for f in index.positive()}
    assert report.removed and positives.isdisjoint(report.removed)


def test_drop_frames_with_empty_report_keeps_all(phantom_dir: Path) -> None:
    frames = scan_dataset(phantom_dir).frames
    assert drop_frames(frames, DuplicateReport((), ())) == frames


def test_threshold_is_checked(phantom_dir: Path) -> None:
    frames = scan_dataset(phantom_dir).frames
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            find_contradictory_duplicates(frames, threshold=bad)
