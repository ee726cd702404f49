"""A DICOM file whose Rows/Columns declare a frame no probe sends (a decompression bomb: a few KB
of JPEG can declare gigabytes) is refused from its header, before any pixel data is decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bpedge._dicom import iter_dicom_frames
from bpedge._frames import MAX_SIDE
from bpedge.sources import open_frames


@pytest.mark.parametrize("rows,columns", [(MAX_SIDE + 1, 64), (64, 60000), (1, 64)])
def test_a_dicom_declaring_frames_of_an_impossible_size_is_refused_undecoded(
        dicom_writer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, columns: int):
    import pydicom
    import pydicom.pixels

    write, _ = dicom_writer
    path = write(tmp_path / "bomb.dcm", np.full((1, 64, 64), 90, np.uint8), "MONOCHROME2",
                 syntax="jpeg")
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(pydicom.pixels, "iter_pixels", no_decoding)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    words = rf"bomb\.dcm: declares {columns}x{rows} \(width x height\) frames"
    with pytest.raises(ValueError, match=words):
        _, frames = iter_dicom_frames(path)
        list(frames)
    with pytest.raises(ValueError, match=words):
        list(open_frames(path))
