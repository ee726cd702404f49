"""The size an image file declares in its header, read before anything is decoded.

A PNG, JPEG or TIFF of a few hundred KB can declare 100000 x 100000 pixels (a decompression
bomb): OpenCV refuses only images above 2^30 pixels by default (``CV_IO_MAX_IMAGE_PIXELS``, a
process-wide setting read from the environment), so a 30000 x 30000 one is decoded into
900 MB before bpedge's frame check could refuse it. :func:`declared_hw` reads the header of the
formats bpedge opens as stills, so a frame that is too large is refused unread.

Header layouts: PNG IHDR (width, height: big-endian uint32 at bytes 16 and 20, W3C PNG
specification, section 11.2.2); JPEG start-of-frame markers SOF0-SOF15 except DHT (C4), JPG (C8)
and DAC (CC), with height then width as big-endian uint16 after the length and precision
(ITU-T T.81, B.2.2); BMP BITMAPCOREHEADER (12 bytes, uint16 sizes) or later headers (int32
width, int32 height, negative for top-down rows); TIFF through ``tifffile`` (a bpedge
dependency), which reads only the IFDs.
"""

from __future__ import annotations

import io
import struct

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0 + i for i in range(16)} - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RST0-7, SOI, EOI


def declared_hw(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` that the image file ``data`` declares (the first page of a TIFF), or
    None when the format is not one of PNG, JPEG, BMP and TIFF or a PNG/JPEG/BMP header is cut
    short (the decoder then decides). A TIFF whose header tifffile cannot read raises
    ``ValueError``."""
    if data.startswith(_PNG) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data.startswith(b"\xff\xd8"):
        return _jpeg_hw(data)
    if data.startswith(b"BM") and len(data) >= 26:
        header = struct.unpack("<I", data[14:18])[0]
        if header == 12:
            width, height = struct.unpack("<HH", data[18:22])
        else:
            width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_hw(data)
    return None


def _jpeg_hw(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return height, width
        if marker == 0xDA:  # start of scan before any frame header: not a usable JPEG
            return None
        pos += 2 + length
    return None


def _tiff_hw(data: bytes) -> tuple[int, int] | None:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)  # type: ignore[union-attr]
    except Exception as exc:  # tifffile raises its own TiffFileError, struct.error, ValueError
        raise ValueError(f"not a readable TIFF ({exc})") from exc


def refuse_frame_size(path: object, hw: tuple[int, int], what: str = "") -> None:
    """ValueError naming ``path`` unless a declared ``(height, width)`` is one a frame may have
    (2 to ``MAX_SIDE`` pixels per side): said before decoding, so the file is never decoded.
    ``what`` (e.g. ``"ground-truth mask "``) starts the description."""
    from bpedge._frames import MAX_SIDE

    if not (2 <= hw[0] <= MAX_SIDE and 2 <= hw[1] <= MAX_SIDE):
        raise ValueError(f"{path}: {what}declares a {hw[1]}x{hw[0]} (width x height) image; "
                         f"frames must be 2 to {MAX_SIDE} pixels per side, so it is not decoded")
