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


def _rewrite(path: Path, **elements: object) -> Path:
    """Set header elements of a DICOM file the test wrote (None deletes one)."""
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword, value in elements.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def _grey_cine(write, path: Path, n: int = 3) -> Path:
    frames = np.random.default_rng(0).integers(0, 255, (n, 24, 32), dtype=np.uint8)
    return write(path, frames, "MONOCHROME2")


def _refusal(path: Path) -> str:
    with pytest.raises(ValueError) as caught:
        _, frames = iter_dicom_frames(path)
        list(frames)
    message = str(caught.value)
    assert path.name in message
    # Advice to install decoders belongs only to compressed data whose decoder is missing.
    assert "pip install" not in message
    return message


@pytest.mark.parametrize("declared", [0, 3])
def test_an_empty_pixel_data_element_is_refused_as_no_image(dicom_writer, tmp_path: Path,
                                                            declared: int):
    write, _ = dicom_writer
    # What a cart sent with NumberOfFrames 0 and no pixels; pydicom answered with
    # "object of type 'NoneType' has no len()".
    path = _rewrite(_grey_cine(write, tmp_path / "empty.dcm"), NumberOfFrames=declared,
                    PixelData=b"")
    assert "holds no image (its Pixel Data element is empty)" in _refusal(path)
    with pytest.raises(ValueError, match="empty"):
        list(open_frames(path))


def test_a_file_declaring_zero_frames_is_refused(dicom_writer, tmp_path: Path):
    from bpedge._dicom import dicom_frame_count

    write, _ = dicom_writer
    path = _rewrite(_grey_cine(write, tmp_path / "zero.dcm", n=1), NumberOfFrames=0)
    assert "declares 0 frames (Number of Frames)" in _refusal(path)
    with pytest.raises(ValueError, match="declares 0 frames"):
        dicom_frame_count(path)
    assert open_frames(path).length is None  # uncountable, not an error of the count


def _colour_as(write, path: Path, photometric: str) -> Path:
    rgb = np.random.default_rng(1).integers(0, 255, (2, 24, 32, 3), dtype=np.uint8)
    return _rewrite(write(path, rgb, "RGB"), PhotometricInterpretation=photometric)


def _grey_as(write, path: Path, photometric: str) -> Path:
    return _rewrite(_grey_cine(write, path), PhotometricInterpretation=photometric)


@pytest.mark.parametrize("make,photometric,declared", [
    (_colour_as, "MONOCHROME2", 3), (_colour_as, "MONOCHROME1", 3),
    (_grey_as, "RGB", 1), (_grey_as, "YBR_FULL", 1),
])
def test_samples_per_pixel_that_contradict_the_photometric_interpretation_are_refused(
        dicom_writer, tmp_path: Path, make, photometric: str, declared: int):
    write, _ = dicom_writer
    path = make(write, tmp_path / "odd.dcm", photometric)
    message = _refusal(path)
    assert (f"the header contradicts itself: Photometric Interpretation {photometric} has "
            f"{4 - declared} sample(s) per pixel, but it declares Samples per Pixel "
            f"{declared}") in message


@pytest.mark.parametrize("elements,words", [
    ({"BitsAllocated": 32}, "declares Bits Allocated 32; bpedge reads samples of 8 or 16 bits"),
    ({"BitsAllocated": None}, "declares no Bits Allocated"),
    ({"BitsStored": 12, "HighBit": 11}, "Bits Stored 12 does not fit in Bits Allocated 8"),
])
def test_bits_the_pixel_data_cannot_have_are_refused(dicom_writer, tmp_path: Path,
                                                     elements: dict, words: str):
    write, _ = dicom_writer
    path = _rewrite(_grey_cine(write, tmp_path / "bits.dcm"), **elements)
    assert words in _refusal(path)


def _short(write, tmp_path: Path, how: str) -> Path:
    path = _grey_cine(write, tmp_path / f"{how}.dcm")  # 3 frames of 32x24, 8 bits: 2304 bytes
    if how == "more frames declared":
        return _rewrite(path, NumberOfFrames=5)
    if how == "16 bits declared":
        return _rewrite(path, BitsAllocated=16, BitsStored=16, HighBit=15)
    if how == "pixel data cut short":
        import pydicom

        return _rewrite(path, PixelData=pydicom.dcmread(path).PixelData[:-8])
    data = path.read_bytes()
    path.write_bytes(data[:-1000])  # the file itself cut short
    return path


@pytest.mark.parametrize("how,holds,declared", [
    ("more frames declared", 2304, "5 frame(s) of 32x24 pixels, 1 sample(s) of 8 bits: 3840"),
    ("16 bits declared", 2304, "3 frame(s) of 32x24 pixels, 1 sample(s) of 16 bits: 4608"),
    ("pixel data cut short", 2296, "3 frame(s) of 32x24 pixels, 1 sample(s) of 8 bits: 2304"),
    ("file cut short", None, "3 frame(s) of 32x24 pixels, 1 sample(s) of 8 bits: 2304"),
])
def test_pixel_data_shorter_than_the_header_declares_is_refused_without_decoder_advice(
        dicom_writer, tmp_path: Path, how: str, holds: int | None, declared: str):
    write, _ = dicom_writer
    path = _short(write, tmp_path, how)
    message = _refusal(path)
    assert f"the header declares {declared} bytes" in message
    if holds is not None:
        assert f"its Pixel Data holds {holds} bytes" in message


@pytest.mark.parametrize("how,holds,declared", [
    ("fewer frames declared", 2304, "2 frame(s) of 32x24 pixels, 1 sample(s) of 8 bits: 1536"),
    ("fewer rows declared", 2304, "3 frame(s) of 32x20 pixels, 1 sample(s) of 8 bits: 1920"),
    ("data appended", 2312, "3 frame(s) of 32x24 pixels, 1 sample(s) of 8 bits: 2304"),
])
def test_pixel_data_longer_than_the_header_declares_is_refused(
        dicom_writer, tmp_path: Path, how: str, holds: int, declared: str):
    """pydicom reads what the header declares and only warns about the rest: a header declaring
    too few frames or rows gave some of the frames, or each cut at the bottom, as if whole."""
    import pydicom

    write, _ = dicom_writer
    path = _grey_cine(write, tmp_path / f"{how}.dcm")  # 3 frames of 32x24, 8 bits: 2304 bytes
    if how == "fewer frames declared":
        _rewrite(path, NumberOfFrames=2)
    elif how == "fewer rows declared":
        _rewrite(path, Rows=20)
    else:
        _rewrite(path, PixelData=pydicom.dcmread(path).PixelData + bytes(8))
    message = _refusal(path)
    assert f"its Pixel Data holds {holds} bytes" in message
    assert f"the header declares {declared} bytes" in message
    assert "More data than declared" in message


def test_one_padding_byte_after_an_odd_length_is_read(dicom_writer, tmp_path: Path):
    """PS3.5 8.1.1: a value of odd length is padded to even; that byte is no excess."""
    import pydicom

    write, _ = dicom_writer
    pixels = np.random.default_rng(1).integers(0, 255, (1, 5, 7), dtype=np.uint8)  # 35 bytes
    path = write(tmp_path / "odd.dcm", pixels, "MONOCHROME2")
    assert len(pydicom.dcmread(path).PixelData) == 36
    _, frames = iter_dicom_frames(path)
    np.testing.assert_array_equal(np.stack(list(frames)), pixels)


class _NoDecoder:
    is_available = False
    missing_dependencies = ("pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0",)


@pytest.mark.parametrize("syntax,advice", [
    ("jpeg", "no installed decoder reads it: pip install 'bpedge[dicom]' installs the JPEG"),
    ("jpeg2000", ("no installed decoder reads it: pydicom reads it with one of: pylibjpeg - "
                  "requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0")),
])
def test_compressed_data_without_its_decoder_names_what_installs_one(
        dicom_writer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, advice: str):
    import pydicom.pixels
    from pydicom.uid import JPEG2000

    write, _ = dicom_writer
    path = write(tmp_path / "c.dcm", np.full((1, 24, 32), 90, np.uint8), "MONOCHROME2",
                 syntax="jpeg")
    if syntax == "jpeg2000":
        import pydicom

        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEG2000  # the bytes are never decoded
        ds.save_as(path)
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _NoDecoder())
    with pytest.raises(ValueError, match="c.dcm: its pixel data is compressed as") as caught:
        iter_dicom_frames(path)
    assert advice in str(caught.value)
    assert ("bpedge[dicom]" in str(caught.value)) == (syntax == "jpeg")
