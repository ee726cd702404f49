"""``bpedge segment`` reads its first frame before it makes --out: a source that fails before its
first frame (a damaged DICOM, an unreadable image) left a folder holding only INCOMPLETE.txt and
empty masks/ and overlays/, and the rerun with the same --out was refused until --force."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpedge._cli.app import build_app

BASE = ["--backend", "onnxruntime", "--no-progress"]


def _bad_png(tmp_path: Path) -> Path:
    path = tmp_path / "bad.png"
    path.write_bytes(b"not a png")
    return path


def _empty_dicom(tmp_path: Path) -> Path:
    pytest.importorskip("pydicom")
    import numpy as np

    from tests.io.conftest import write_dicom

    path = write_dicom(tmp_path / "empty.dcm", np.zeros((3, 24, 32), np.uint8), "MONOCHROME2")
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = b""
    ds.save_as(path)
    return path


@pytest.mark.parametrize("make,words", [(_bad_png, "not a readable image"),
                                        (_empty_dicom, "Pixel Data element is empty")])
def test_a_source_that_fails_before_its_first_frame_leaves_no_out_folder(
        tiny_bundle: Path, phantom_dir: Path, tmp_path: Path, make, words: str):
    bad, out = make(tmp_path), tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["segment", str(tiny_bundle), str(bad), "--out",
                                              str(out), *BASE])
    assert result.exit_code == 2 and words in result.output and bad.name in result.output
    assert not out.exists()
    # The rerun with the same --out, the bad file replaced by a good one, is not refused.
    result = CliRunner().invoke(build_app(), ["segment", str(tiny_bundle),
                                              str(phantom_dir / "1_1.tif"), "--out", str(out),
                                              *BASE])
    assert result.exit_code == 0, result.output
    assert (out / "results.csv").is_file() and not (out / "INCOMPLETE.txt").exists()


def test_a_failure_after_the_first_frame_still_keeps_the_folder_and_its_rows(
        tiny_bundle: Path, phantom_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["segment", str(tiny_bundle),
                                              str(phantom_dir / "1_1.tif"), str(_bad_png(tmp_path)),
                                              "--out", str(out), *BASE])
    assert result.exit_code == 2
    assert (out / "INCOMPLETE.txt").is_file() and (out / "masks" / "1_1.png").is_file()
