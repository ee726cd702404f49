"""Kaggle-layout folders as ``bpedge segment`` finds them: a frame's ground-truth mask whose suffix
differs in case or as .tif/.tiff (training pairs those, so segment must score them), and a Kaggle
download pointed at instead of its ``train/`` folder."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bpedge.sources import open_frames


def write(path: Path) -> None:
    tifffile.imwrite(path, np.zeros((24, 32), np.uint8), compression="lzw")


@pytest.mark.parametrize(("frame", "mask"), [
    ("1_1.TIF", "1_1_mask.tif"),
    ("1_1.tif", "1_1_mask.TIF"),
    ("1_1.tif", "1_1_mask.tiff"),
    ("1_1.tiff", "1_1_mask.tif"),
    ("1_1.tif", "1_1_MASK.tif"),
    ("1_1.tif", "1_1_mask.tif"),
])
def test_the_mask_beside_a_frame_is_found_whatever_the_case_or_tif_spelling(
    tmp_path: Path, frame: str, mask: str
) -> None:
    """Such a frame was segmented without a word and left out of accuracy.csv."""
    write(tmp_path / frame)
    write(tmp_path / mask)
    (found,) = list(open_frames(tmp_path))
    assert found.truth_path is not None and found.truth_path.name == mask


def test_a_frame_without_a_mask_has_no_truth_nor_one_with_a_mask_in_another_format(tmp_path):
    write(tmp_path / "1_1.tif")
    write(tmp_path / "1_2.tif")
    (tmp_path / "1_2_mask.png").write_bytes(b"\x89PNG")
    assert [f.truth_path for f in open_frames(tmp_path)] == [None, None]


def test_a_kaggle_download_is_refused_naming_its_train_folder(tmp_path: Path) -> None:
    for part in ("train", "test"):
        (tmp_path / part).mkdir()
        write(tmp_path / part / "1_1.tif")
    with pytest.raises(ValueError, match=r"holds no images.*subfolder\(s\) test, train.*"
                                         + re.escape(str(tmp_path / "train"))):
        open_frames(tmp_path)
