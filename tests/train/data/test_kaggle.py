"""The Kaggle-layout reader: every bad file reported by name, skip vs fail, the cv2 channel trap."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from bpedge.train.data.kaggle import (
    DatasetError,
    read_image,
    read_mask,
    scan_dataset,
)

from bpedge._metrics import box_from_mask


def _write(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array, compression="lzw")


def _pair(root: Path, key: str, image: np.ndarray, mask: np.ndarray) -> None:
    _write(root / f"{key}.tif", image)
    _write(root / f"{key}_mask.tif", mask)


@pytest.fixture
def broken_copy(phantom_dir: Path, tmp_path: Path) -> Path:
    """The phantom with one file of each kind of fault, plus stray files."""
    root = tmp_path / "train"
    shutil.copytree(phantom_dir, root)
    data = (root / "1_3.tif").read_bytes()
    (root / "1_3.tif").write_bytes(data[: len(data) // 2])  # truncated TIFF
    _write(root / "2_4_mask.tif", np.zeros((100, 100), np.uint8))  # mask of another size
    (root / "3_5_mask.tif").unlink()  # image without mask
    (root / "4_6.tif").unlink()  # mask without image
    (root / "notes.txt").write_text("stray")
    shutil.copy(root / "1_1.tif", root / "1_1 copy.tif")
    return root


BAD = {
    "1_3.tif": "truncated",
    "2_4_mask.tif": "mask is 100x100",
    "3_5.tif": "image without mask",
    "4_6_mask.tif": "mask without image",
}
STRAY = ("notes.txt", "1_1 copy.tif")


def test_scan_indexes_every_frame_sorted(phantom_dir: Path) -> None:
    index = scan_dataset(phantom_dir)
    assert len(index.frames) == 4 * 12
    assert [(f.subject, f.frame) for f in index.frames] == sorted(
        (s, f) for s in range(1, 5) for f in range(1, 13)
    )
    assert index.problems == ()
    assert len(index.positive()) == 4 * (12 - round(12 * 0.2))
    assert all(f.present for f in index.positive())
    assert index.subjects() == (1, 2, 3, 4)
    for f in index.frames[:6]:
        assert f.key == f"{f.subject}_{f.frame}"
        assert f.image_path.name == f"{f.key}.tif" and f.mask_path.name == f"{f.key}_mask.tif"
        assert f.box == box_from_mask(read_mask(f.mask_path))


def test_kaggle_download_folder_resolves_to_train(phantom_dir: Path) -> None:
    # phantom_dir is ".../train": pointing at its parent finds it.
    index = scan_dataset(phantom_dir.parent)
    assert index.root == phantom_dir
    assert len(index.frames) == 48


def test_fail_names_every_bad_file(broken_copy: Path) -> None:
    with pytest.raises(DatasetError) as info:
        scan_dataset(broken_copy, on_error="fail")
    reported = {p.path.name: p.reason for p in info.value.problems}
    assert set(reported) == set(BAD)  # stray files never fail a scan
    message = str(info.value)
    for name, reason in BAD.items():
        assert name in message
        assert reason in reported[name]


def test_skip_leaves_bad_frames_out_and_keeps_reports(
    broken_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bpedge.train.data.kaggle"):
        index = scan_dataset(broken_copy, on_error="skip")
    keys = {f.key for f in index.frames}
    assert keys.isdisjoint({"1_3", "2_4", "3_5", "4_6"})
    assert len(keys) == 48 - 4
    reported = {p.path.name: p.reason for p in index.problems}
    for name, reason in BAD.items():
        assert reason in reported[name]
        assert name in caplog.text
    for name in STRAY:
        assert reported[name].startswith("ignored")
        assert name in caplog.text


def test_only_stray_files_do_not_fail(phantom_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "train"
    shutil.copytree(phantom_dir, root)
    (root / "README.md").write_text("x")
    (root / "extra").mkdir()
    index = scan_dataset(root, on_error="fail")
    assert len(index.frames) == 48
    assert sorted(p.path.name for p in index.problems) == ["README.md", "extra"]


def test_expected_size_is_enforced(phantom_dir: Path) -> None:
    assert len(scan_dataset(phantom_dir, expected_hw=(420, 580)).frames) == 48
    with pytest.raises(DatasetError, match="expected 400x580"):
        scan_dataset(phantom_dir, expected_hw=(400, 580))
    with pytest.raises(ValueError, match="expected_hw"):
        scan_dataset(phantom_dir, expected_hw=(0, 580))


def test_duplicate_frame_names_are_reported(tmp_path: Path) -> None:
    img, mask = np.full((20, 30), 7, np.uint8), np.zeros((20, 30), np.uint8)
    _pair(tmp_path, "1_1", img, mask)
    _write(tmp_path / "1_01.tif", img)  # names the same frame as 1_1.tif
    with pytest.raises(DatasetError, match="1_01.tif"):
        scan_dataset(tmp_path)


def test_unreadable_permissions_are_reported(
    phantom_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chmod 000 does not stop root (CI runs as root), so the OS refusal is simulated.
    from bpedge.train.data import kaggle

    real_read = kaggle.read_regular_file

    def read_regular_file(path: Path, max_bytes: int) -> bytes:
        if Path(path).name == "2_2.tif":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, max_bytes)

    monkeypatch.setattr(kaggle, "read_regular_file", read_regular_file)
    index = scan_dataset(phantom_dir, on_error="skip")
    reasons = {p.path.name: p.reason for p in index.problems}
    assert reasons == {"2_2.tif": "unreadable: permission denied"}
    assert "2_2" not in {f.key for f in index.frames}


def test_box_comes_from_the_mask(tmp_path: Path) -> None:
    img = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50).astype(np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:9, 10:20] = 255
    _pair(tmp_path, "7_2", img, mask)
    _pair(tmp_path, "7_1", img, np.zeros_like(mask))
    index = scan_dataset(tmp_path)
    first, second = index.frames
    assert (first.key, first.box, first.present) == ("7_1", None, False)
    assert second.box == (10.0, 5.0, 20.0, 9.0)
    assert index.positive() == (second,)


def test_select_by_keys(phantom_dir: Path) -> None:
    index = scan_dataset(phantom_dir)
    picked = index.select(["2_3", "1_1"])
    assert [f.key for f in picked] == ["2_3", "1_1"]
    with pytest.raises(ValueError, match="9_9"):
        index.select(["1_1", "9_9"])


def test_fingerprint_tracks_content(phantom_dir: Path, tmp_path: Path) -> None:
    before = scan_dataset(phantom_dir).fingerprint
    assert scan_dataset(phantom_dir).fingerprint == before
    root = tmp_path / "train"
    shutil.copytree(phantom_dir, root)
    assert scan_dataset(root).fingerprint == before  # a copy is the same data
    mask = read_mask(root / "1_1_mask.tif")
    mask[0, 0] = 255 - mask[0, 0]  # one label pixel
    _write(root / "1_1_mask.tif", mask)
    assert scan_dataset(root).fingerprint != before


def test_plain_cv2_imread_trap_is_avoided(phantom_dir: Path) -> None:
    path = phantom_dir / "1_1.tif"
    assert cv2.imread(str(path)).shape == (420, 580, 3)  # the trap
    image = read_image(path)
    assert image.shape == (420, 580) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


def test_colour_tiff_becomes_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _write(tmp_path / "1_1.tif", rgb)
    grey = read_image(tmp_path / "1_1.tif")
    assert grey.shape == (30, 40)
    np.testing.assert_array_equal(grey, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def test_mask_values_become_0_and_255(tmp_path: Path) -> None:
    raw = np.array([[0, 1, 128], [255, 0, 3]], np.uint8)
    _write(tmp_path / "m.tif", raw)
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.tif"), np.array([[0, 255, 255], [255, 0, 255]], np.uint8)
    )


def test_unreadable_files_raise_naming_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "deep.tif", np.full((10, 10), 4095, np.uint16))  # 12-bit: not rescaled
    with pytest.raises(ValueError, match=r"deep\.tif.*8-bit"):
        read_image(tmp_path / "deep.tif")
    # Read as `bpedge segment` reads it, so refused in its words.
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"junk\.tif: not a readable image"):
        read_mask(tmp_path / "junk.tif")
    (tmp_path / "cut.tif").write_bytes(b"II*\x00\xff\xff")
    with pytest.raises(ValueError, match=r"cut\.tif: unreadable or truncated TIFF"):
        read_mask(tmp_path / "cut.tif")


def test_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        scan_dataset(tmp_path / "f.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no usable frame"):
        scan_dataset(empty, on_error="skip")
    (empty / "1_1.tif").write_bytes(b"broken")
    with pytest.raises(DatasetError, match=r"no usable frame(.|\n)*1_1\.tif: image without mask"):
        scan_dataset(empty, on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        scan_dataset(empty, on_error="ignore")  # type: ignore[arg-type]
