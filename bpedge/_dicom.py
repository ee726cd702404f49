"""Ultrasound DICOM in: single- and multi-frame files decoded with pydicom (the ``[dicom]`` extra),
each frame turned into the uint8 (H, W) grey frame the Segmenter takes, with the pixel spacing in mm.

Colour: pydicom hands RGB for ``RGB``, ``YBR_FULL`` and ``YBR_FULL_422`` (it converts YCbCr to RGB
unless ``raw=True``: https://pydicom.github.io/pydicom/stable/reference/generated/pydicom.pixels.utils.pixel_array.html),
and the RGB frame goes to grey through :func:`bpedge._frames.as_grey_frame` with its channels put in
BGR order, so a DICOM frame and the same picture handed over as BGR give the same grey levels.
Compressed transfer syntaxes are decoded by pydicom's plugins: RLE Lossless natively (faster with
pylibjpeg-rle), JPEG Baseline with pylibjpeg + pylibjpeg-libjpeg (or Pillow); see
https://pydicom.github.io/pydicom/stable/guides/user/image_data_handlers.html.

Spacing: the ultrasound region's physical deltas (Sequence of Ultrasound Regions, PS3.3 C.8.5.5)
when a region measures space in cm, else Pixel Spacing (0028,0030, mm, row spacing first).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bpedge._frames import MAX_SIDE, MAX_SPACING_MM, as_grey_frame, plausible_fps

DICOM_SUFFIXES = (".dcm", ".dicom")

#: PhysicalUnitsX/YDirection code for centimetres (PS3.3 C.8.5.5.1.15); the other codes are
#: percent, dB, seconds, hertz... which do not measure distance across the picture.
_UNITS_CM = 3
#: RegionSpatialFormat code for a 2D (B-mode) region (PS3.3 C.8.5.5.1.1).
_SPATIAL_2D = 1

_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
_GREY = ("MONOCHROME1", "MONOCHROME2")


class DicomUnavailableError(ImportError):
    """pydicom (or a decoder it needs) is not installed."""


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise DicomUnavailableError(
            "reading DICOM needs pydicom: pip install 'bpedge[dicom]' (pydicom with the "
            "pylibjpeg decoders for JPEG and RLE compressed files)"
        ) from exc
    return pydicom


def looks_like_dicom(path: Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or any file with the DICOM preamble's ``DICM`` magic
    at byte 128 (carts often send files without a suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class DicomInfo:
    """What bpedge takes from a DICOM header.

    Attributes:
        frames: number of frames (1 for a single-frame file).
        spacing_mm: ``(x, y)`` millimetres per pixel along columns and rows, or None when the file
            gives no spatial calibration.
        spacing_from: ``"ultrasound region"``, ``"PixelSpacing"`` or ``None``.
        fps: frames per second from Frame Time (0018,1063) or Cine Rate, None if absent.
        photometric: the Photometric Interpretation as stored.
    """

    frames: int
    spacing_mm: tuple[float, float] | None
    spacing_from: str | None
    fps: float | None
    photometric: str


def _region_spacing(ds: Any) -> tuple[float, float] | None:
    regions = getattr(ds, "SequenceOfUltrasoundRegions", None) or []
    candidates = []
    for region in regions:
        ux = getattr(region, "PhysicalUnitsXDirection", None)
        uy = getattr(region, "PhysicalUnitsYDirection", None)
        dx = getattr(region, "PhysicalDeltaX", None)
        dy = getattr(region, "PhysicalDeltaY", None)
        if ux != _UNITS_CM or uy != _UNITS_CM or dx is None or dy is None:
            continue
        if not (_plausible_mm(float(dx) * 10.0) and _plausible_mm(float(dy) * 10.0)):
            continue
        # The B-mode (2D) region first: a Doppler strip beside it may also be in cm.
        rank = 0 if getattr(region, "RegionSpatialFormat", None) == _SPATIAL_2D else 1
        candidates.append((rank, float(dx) * 10.0, float(dy) * 10.0))
    if not candidates:
        return None
    _, dx_mm, dy_mm = min(candidates, key=lambda c: c[0])
    return dx_mm, dy_mm


def _plausible_mm(value: float) -> bool:
    """A pixel spacing a header may give (finite, in (0, MAX_SPACING_MM] mm): any other is read
    as no calibration (areas and sizes in pixels only)."""
    return math.isfinite(value) and 0 < value <= MAX_SPACING_MM


def _declared_frames(ds: Any) -> int:
    """Number of Frames as declared: 1 when it is absent or empty (a single-frame file), else
    its value as it stands, 0 or negative included, for :func:`_check_header` to refuse (read
    as 1, a file declaring 0 frames was decoded as one and failed inside pydicom)."""
    value = getattr(ds, "NumberOfFrames", None)
    return 1 if value is None or value == "" else int(value)


def read_info(ds: Any) -> DicomInfo:
    """The header facts of an opened pydicom dataset (see :class:`DicomInfo`)."""
    spacing = _region_spacing(ds)
    source: str | None = "ultrasound region" if spacing else None
    if spacing is None and getattr(ds, "PixelSpacing", None) is not None:
        row, col = (float(v) for v in ds.PixelSpacing)  # PS3.3 10.7.1.3: row spacing first
        if _plausible_mm(row) and _plausible_mm(col):
            spacing, source = (col, row), "PixelSpacing"
    # A rate no cine has (negative, zero, infinite, past MAX_FPS) is read as none: a CineRate of
    # -25 gave negative timestamps, a Frame Time of 1e-9 ms 1e12 fps for the video writer.
    fps = None
    frame_time = getattr(ds, "FrameTime", None)  # ms between frames
    if frame_time is not None and float(frame_time) > 0:
        fps = plausible_fps(1000.0 / float(frame_time))
    elif getattr(ds, "CineRate", None):
        fps = plausible_fps(float(ds.CineRate))
    return DicomInfo(frames=_declared_frames(ds), spacing_mm=spacing,
                     spacing_from=source, fps=fps,
                     photometric=str(getattr(ds, "PhotometricInterpretation", "")))


def _to_grey(array: np.ndarray, photometric: str, bits_stored: int, path: Path) -> np.ndarray:
    if array.dtype.kind not in "ui":
        raise ValueError(f"{path}: DICOM pixels are {array.dtype}; expected unsigned integers")
    if array.dtype != np.uint8 or bits_stored > 8:
        # 10-16 bit ultrasound (rare): scale the stored range onto 0..255.
        top = float(2 ** min(max(bits_stored, 1), 16) - 1)
        array = np.rint(np.clip(array, 0, top).astype(np.float32) * (255.0 / top)).astype(np.uint8)
    if photometric in _COLOUR:
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"{path}: {photometric} frame has shape {array.shape}, expected (H, W, 3)")
        return as_grey_frame(array[:, :, ::-1])  # RGB -> BGR: the same rule as BGR frames
    grey = as_grey_frame(array)
    return (255 - grey) if photometric == "MONOCHROME1" else grey  # MONOCHROME1: 0 is white


def _damage_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises for a damaged file when it parses an element, which it mostly does
    lazily (on first access, not in ``dcmread``): an unknown VR (NotImplementedError), a missing
    required element (AttributeError), a value whose length does not fit its VR
    (BytesLengthException), a value that does not parse (ValueError, OverflowError), bytes that
    end early (EOFError, struct.error)."""
    from pydicom.errors import BytesLengthException

    return (BytesLengthException, NotImplementedError, AttributeError, KeyError, TypeError,
            ValueError, OverflowError, EOFError, struct.error)


@contextlib.contextmanager
def _named_damage(path: Path) -> Iterator[None]:
    """Re-raise a damaged file's pydicom error as a ValueError naming the file, so a caller can
    skip it (``on_error="skip"``) and a user can tell which file it was."""
    try:
        yield
    except _damage_errors() as exc:
        raise ValueError(f"{path}: damaged DICOM file ({type(exc).__name__}: {exc})") from exc


def _read_header(path: Path, *, pixels: bool) -> Any:
    """``pydicom.dcmread``; ValueError naming the file when it is not DICOM or damaged."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        with _named_damage(path):
            return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError as exc:
        raise ValueError(f"{path}: not a DICOM file ({exc})") from exc


def dicom_frame_count(path: str | os.PathLike[str]) -> int:
    """The number of frames a DICOM file declares, read from its header only. ``ValueError``
    naming the file when it is not DICOM or its header is damaged."""
    path = Path(path)
    ds = _read_header(path, pixels=False)
    with _named_damage(path):
        frames = _declared_frames(ds)
    if frames < 1:
        raise ValueError(f"{path}: declares {frames} frames (Number of Frames); a DICOM image "
                         "has 1 or more")
    return frames


@dataclass(frozen=True)
class _Layout:
    """The header elements that say how the pixel data is laid out."""

    rows: int
    columns: int
    samples: int | None  # Samples per Pixel; None when absent
    allocated: int | None  # Bits Allocated; None when absent
    stored: int  # Bits Stored
    pixel_bytes: int  # length of the Pixel Data value
    syntax: Any  # the Transfer Syntax UID, None when the file meta has none


def _optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _check_header(path: Path, info: DicomInfo, layout: _Layout) -> None:
    """Refuse a header that contradicts itself or that bpedge cannot read, before any pixel data
    is decoded. pydicom decodes some contradictions without a word (3 samples per pixel under
    MONOCHROME2 came out as a colour frame), and fails on others with a message about its own
    internals (an empty Pixel Data: "object of type 'NoneType' has no len()")."""
    if layout.pixel_bytes == 0:
        raise ValueError(f"{path}: DICOM file holds no image (its Pixel Data element is empty)")
    if info.frames < 1:
        raise ValueError(f"{path}: declares {info.frames} frames (Number of Frames); a DICOM "
                         "image has 1 or more")
    if info.photometric not in _COLOUR + _GREY:
        raise ValueError(f"{path}: Photometric Interpretation {info.photometric!r} is not "
                         f"supported; bpedge reads {', '.join(_GREY + _COLOUR)}")
    rows, columns = layout.rows, layout.columns
    if not (2 <= rows <= MAX_SIDE and 2 <= columns <= MAX_SIDE):
        # Checked before any pixel data is decoded: a few KB of JPEG can declare a frame of
        # gigabytes (a decompression bomb), which the frame check would refuse only afterwards.
        raise ValueError(f"{path}: declares {columns}x{rows} (width x height) frames; frames "
                         f"must be 2 to {MAX_SIDE} pixels per side, so its pixel data is not "
                         "decoded")
    samples = 1 if info.photometric in _GREY else 3
    if layout.samples != samples:
        given = "no Samples per Pixel" if layout.samples is None \
            else f"Samples per Pixel {layout.samples}"
        raise ValueError(f"{path}: the header contradicts itself: Photometric Interpretation "
                         f"{info.photometric} has {samples} sample(s) per pixel, but it declares "
                         f"{given}; its pixels are not read")
    if layout.allocated not in (8, 16):
        given = "no Bits Allocated" if layout.allocated is None \
            else f"Bits Allocated {layout.allocated}"
        raise ValueError(f"{path}: declares {given}; bpedge reads samples of 8 or 16 bits")
    if not 1 <= layout.stored <= layout.allocated:
        raise ValueError(f"{path}: the header contradicts itself: Bits Stored {layout.stored} "
                         f"does not fit in Bits Allocated {layout.allocated}")
    if layout.syntax is None:
        return  # pydicom's decoder says what a file without a transfer syntax lacks
    if not layout.syntax.is_transfer_syntax:
        raise ValueError(f"{path}: its Transfer Syntax UID {layout.syntax} is not one pydicom "
                         "knows, so its pixel data cannot be decoded")
    if layout.syntax.is_encapsulated:
        _check_decoder(path, layout.syntax)
        return
    # Native data has a fixed size (PS3.5 8.1.1: the declared frames, then one padding byte when
    # that is odd). A short one is a cut file or a wrong header, refused by what it declares
    # (pydicom's message for it ended in advice to install decoders). A longer one is a wrong
    # header too: pydicom read what the header declared and only warned about the rest, so a
    # file declaring too few rows or frames gave a cut image, or some of its frames, as if whole.
    # YBR_FULL_422 stores 2 samples per pixel (PS3.5 8.2.1).
    per_pixel = 2 if info.photometric == "YBR_FULL_422" else samples
    frame_bytes = rows * columns * per_pixel * layout.allocated // 8
    declared = info.frames * frame_bytes
    if layout.pixel_bytes < declared or layout.pixel_bytes > declared + declared % 2:
        whole = layout.pixel_bytes // frame_bytes
        cause = ("The file is cut short, or its" if layout.pixel_bytes < declared
                 else "More data than declared: its")
        raise ValueError(
            f"{path}: its Pixel Data holds {layout.pixel_bytes} bytes, but the header declares "
            f"{info.frames} frame(s) of {columns}x{rows} pixels, {samples} sample(s) of "
            f"{layout.allocated} bits: {declared} bytes ({whole} whole frame(s) are there). "
            f"{cause} Number of Frames, Rows, Columns, Samples per Pixel or Bits Allocated is "
            "wrong; its pixels are not read")


#: Compressed transfer syntaxes whose decoders the ``[dicom]`` extra installs: pylibjpeg-libjpeg
#: reads the JPEG and JPEG-LS ones; pydicom reads RLE itself (faster with pylibjpeg-rle).
_EXTRA_DECODES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.5",
})


def _check_decoder(path: Path, syntax: Any) -> None:
    """Refuse compressed pixel data no installed decoder reads, naming what would read it: the
    ``[dicom]`` extra for the JPEG, JPEG-LS and RLE syntaxes, else pydicom's list of plugins."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ValueError(f"{path}: its pixel data is compressed as {syntax.name}, which no "
                         "pydicom decoder reads") from None
    if decoder.is_available:
        return
    if str(syntax) in _EXTRA_DECODES:
        advice = "pip install 'bpedge[dicom]' installs the JPEG and RLE decoders"
    else:
        advice = ("pydicom reads it with one of: "
                  + "; ".join(str(d) for d in decoder.missing_dependencies))
    raise ValueError(f"{path}: its pixel data is compressed as {syntax.name} and no installed "
                     f"decoder reads it: {advice}")


def iter_dicom_frames(path: str | os.PathLike[str]) -> tuple[DicomInfo, Iterator[np.ndarray]]:
    """Open a DICOM file: its :class:`DicomInfo` and an iterator over its frames as uint8 (H, W).

    Raises :class:`DicomUnavailableError` when pydicom is missing, ``ValueError`` naming the file
    when it is not a DICOM image bpedge can use (damaged, no or empty pixel data, palette colour,
    a header that contradicts itself or its pixel data, a transfer syntax no installed decoder
    handles), and ``FileNotFoundError`` when it does not exist. Everything but the decoding of
    the pixel data is checked now; a frame that does not decode raises when it is reached.
    """
    _pydicom()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file {path} does not exist")
    ds = _read_header(path, pixels=True)
    # pydicom parses values when they are first read: a damaged element fails here, named.
    with _named_damage(path):
        has_pixels = "PixelData" in ds
        info = read_info(ds)
        rows, columns = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        layout = _Layout(
            rows=rows, columns=columns,
            samples=_optional_int(getattr(ds, "SamplesPerPixel", None)),
            allocated=_optional_int(getattr(ds, "BitsAllocated", None)), stored=bits,
            pixel_bytes=len(ds.PixelData or b"") if has_pixels else 0,
            syntax=ds.file_meta.get("TransferSyntaxUID"))
    if not has_pixels:
        raise ValueError(f"{path}: DICOM file holds no image (no Pixel Data element)")
    _check_header(path, info, layout)

    def frames() -> Iterator[np.ndarray]:
        from pydicom.pixels import iter_pixels, pixel_array

        failures: tuple[type[Exception], ...] = (RuntimeError, *_damage_errors())
        try:
            if (info.photometric == "YBR_FULL_422" and info.frames > 1
                    and not ds.file_meta.TransferSyntaxUID.is_compressed):
                # pydicom 3.0.2's iter_pixels sizes native 4:2:2 frames as if they held 3 full
                # samples per pixel and stops at frame 2 ("insufficient pixel data"); the
                # whole-array decode sizes them right (seen here; a test covers it).
                decoded: Iterator[np.ndarray] = iter(pixel_array(ds))
            else:
                decoded = iter_pixels(ds)
            for array in decoded:
                yield _to_grey(array, info.photometric, bits, path)
        except failures as exc:
            # A missing decoder was refused before decoding (_check_decoder), with the advice
            # that installs it: what fails here is the data itself, and pydicom's words say how.
            syntax = ds.file_meta.get("TransferSyntaxUID", "?")
            raise ValueError(
                f"{path}: cannot decode pixel data ({getattr(syntax, 'name', syntax)}): {exc}"
            ) from exc

    return info, frames()
