"""DICOM in: every photometric interpretation and transfer syntax a cart sends, written by the test
with pydicom, decoded to the grey frame the BGR rule gives, with the spacing carried along."""

from __future__ import annotations

import builtins

import cv2
import numpy as np
import pytest

from bpedge._dicom import DicomUnavailableError, iter_dicom_frames, looks_like_dicom
from bpedge._frames import as_grey_frame


def _bgr_grey(rgb: np.ndarray) -> np.ndarray:
    return as_grey_frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_monochrome2_multiframe_with_pixel_spacing_and_frame_time(dicom_writer, tmp_path):
    write, picture = dicom_writer
    grey = np.stack([_bgr_grey(picture(seed=k)) for k in range(3)])
    path = write(tmp_path / "cine.dcm", grey, "MONOCHROME2", pixel_spacing=(0.2, 0.1),
                 frame_time_ms=40.0)
    info, frames = iter_dicom_frames(path)
    decoded = list(frames)
    assert info.frames == 3 and len(decoded) == 3
    for got, want in zip(decoded, grey):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
    # PixelSpacing is (row, column): x spacing is the second value.
    assert info.spacing_mm == pytest.approx((0.1, 0.2)) and info.spacing_from == "PixelSpacing"
    assert info.fps == pytest.approx(25.0)


def test_ultrasound_region_spacing_wins_over_pixel_spacing(dicom_writer, tmp_path):
    write, picture = dicom_writer
    grey = _bgr_grey(picture())[None]
    regions = [
        # A Doppler strip in cm/s x seconds: not a distance, ignored.
        {"RegionSpatialFormat": 3, "PhysicalUnitsXDirection": 4, "PhysicalUnitsYDirection": 7,
         "PhysicalDeltaX": 0.01, "PhysicalDeltaY": 0.5},
        # The B-mode region, in cm per pixel.
        {"RegionSpatialFormat": 1, "PhysicalUnitsXDirection": 3, "PhysicalUnitsYDirection": 3,
         "PhysicalDeltaX": 0.008, "PhysicalDeltaY": 0.0075},
    ]
    path = write(tmp_path / "us.dcm", grey, "MONOCHROME2", regions=regions,
                 pixel_spacing=(0.5, 0.5))
    info, _ = iter_dicom_frames(path)
    assert info.spacing_mm == pytest.approx((0.08, 0.075))
    assert info.spacing_from == "ultrasound region"


@pytest.mark.parametrize("header", [
    {"regions": [{"RegionSpatialFormat": 1, "PhysicalUnitsXDirection": 3,
                  "PhysicalUnitsYDirection": 3, "PhysicalDeltaX": float("inf"),
                  "PhysicalDeltaY": 0.01}]},
    {"pixel_spacing": (1e200, 1e200)},
    {"pixel_spacing": (float("nan"), 0.1)},
    {"frame_time_ms": 1e-9},
    {"cine_rate": -25},
    {"cine_rate": 5000},
])
def test_header_values_no_cine_can_have_are_read_as_absent(dicom_writer, tmp_path, header):
    """An infinite or overflowing spacing gave areas of NaN mm2 and boxes of Infinity mm in
    results.jsonl (not JSON); a CineRate of -25 negative timestamps; a Frame Time of 1e-9 ms
    1e12 fps, on which the video writer failed. The picture is read, uncalibrated."""
    import pydicom

    write, picture = dicom_writer
    grey = np.stack([_bgr_grey(picture(seed=k)) for k in range(2)])
    rate = header.pop("cine_rate", None)
    path = write(tmp_path / "odd.dcm", grey, "MONOCHROME2", **header)
    if rate is not None:
        ds = pydicom.dcmread(path)
        ds.CineRate = rate
        ds.save_as(path)
    info, frames = iter_dicom_frames(path)
    assert info.spacing_mm is None and info.fps is None
    assert len(list(frames)) == 2


def test_no_calibration_gives_no_spacing(dicom_writer, tmp_path):
    write, picture = dicom_writer
    path = write(tmp_path / "plain.dcm", _bgr_grey(picture())[None], "MONOCHROME2")
    info, _ = iter_dicom_frames(path)
    assert info.spacing_mm is None and info.fps is None


@pytest.mark.parametrize("photometric,tolerance", [("RGB", 0), ("YBR_FULL", 2),
                                                    ("YBR_FULL_422", 8)])
def test_colour_frames_go_to_grey_like_bgr_frames(dicom_writer, tmp_path, photometric, tolerance):
    write, picture = dicom_writer
    rgb = np.stack([picture(seed=1), picture(seed=2)])
    path = write(tmp_path / f"{photometric}.dcm", rgb, photometric)
    _, frames = iter_dicom_frames(path)
    decoded = list(frames)
    assert len(decoded) == 2
    for got, want in zip(decoded, rgb):
        assert got.shape == want.shape[:2] and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - _bgr_grey(want).astype(int))
        # RGB is exact; YCbCr round trips lose a level or two (4:2:2 halves the chroma too).
        assert diff.max() <= tolerance, (photometric, diff.max())


def test_rle_lossless_is_exact(dicom_writer, tmp_path):
    write, picture = dicom_writer
    grey = np.stack([_bgr_grey(picture(seed=k)) for k in range(2)])
    path = write(tmp_path / "rle.dcm", grey, "MONOCHROME2", syntax="rle")
    import pydicom

    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    _, frames = iter_dicom_frames(path)
    np.testing.assert_array_equal(np.stack(list(frames)), grey)


@pytest.mark.parametrize("colour", [False, True])
def test_jpeg_baseline(dicom_writer, tmp_path, colour):
    pytest.importorskip("libjpeg", reason="pylibjpeg-libjpeg (the [dicom] extra) decodes JPEG")
    write, picture = dicom_writer
    rgb = picture(seed=3)
    frames = rgb[None] if colour else _bgr_grey(rgb)[None]
    path = write(tmp_path / "jpeg.dcm", frames, "", syntax="jpeg")
    _, decoded = iter_dicom_frames(path)
    got = next(decoded)
    want = _bgr_grey(rgb)
    # JPEG is lossy: close to the picture, not equal.
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3.0


def test_not_dicom_and_missing_pixels_are_named(dicom_writer, tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match="x.dcm"):
        _, frames = iter_dicom_frames(bad)
        list(frames)
    with pytest.raises(FileNotFoundError, match="nope.dcm"):
        iter_dicom_frames(tmp_path / "nope.dcm")


def test_dicom_magic_without_suffix(dicom_writer, tmp_path):
    write, picture = dicom_writer
    path = write(tmp_path / "IM0001", _bgr_grey(picture())[None], "MONOCHROME2")
    assert looks_like_dicom(path)
    other = tmp_path / "notes"
    other.write_text("hello")
    assert not looks_like_dicom(other)


def test_missing_pydicom_names_the_extra(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(DicomUnavailableError, match=r"bpedge\[dicom\]"):
        iter_dicom_frames(tmp_path / "any.dcm")


def test_runtime_imports_do_not_load_pydicom():
    import subprocess
    import sys

    code = ("import sys, bpedge, bpedge.segmenter, bpedge.sources, bpedge._cli.app; "
            "print('pydicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
