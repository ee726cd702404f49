"""TIFF stills, decoded by tifffile: the one definition of a TIFF frame's and mask's pixels.

``bpedge segment`` reads stills and ``bpedge train`` reads the Kaggle layout's ``.tif`` frames and
masks through :func:`bpedge.sources.decode_image_samples`, which hands TIFF content here. OpenCV
(libtiff's RGBA reader) decodes the other still formats, but not TIFF, because it cannot return
what a TIFF stores:

* an unassociated alpha sample is multiplied into the colour (``IMREAD_UNCHANGED`` too), so an
  RGBA frame read darker where it is transparent and a mask lost its labels where alpha is 0,
  while OpenCV drops a PNG's alpha untouched;
* a palette page comes back as the colours its indices pick, and a mask's labels are the
  indices (a label image whose index 0 is shown white read as all BP);
* some tiled TIFFs that tifffile writes are refused ("Invalid tile byte count").

The header is parsed once: the declared sides and samples are checked before anything is
decoded (a 435 KB TIFF declaring 20000x20000 took 1.6 GB and half a minute to decode), and the
same parse then decodes the first page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

#: Byte orders and versions of classic and BigTIFF files.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: TIFF Orientation tag, and how each value turns the stored rows into the picture: OpenCV and
#: viewers apply it, so a frame tagged "rotated" is the rotated picture (even its size changes).
_ORIENTATION = 274
_ORIENTED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def is_tiff(data: bytes) -> bool:
    """Whether ``data`` starts like a TIFF (classic or BigTIFF, either byte order)."""
    return data[:4] in TIFF_MAGIC


@contextmanager
def _damaged(path: object, what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # tifffile raises many types for damaged files; report them all alike
        raise ValueError(f"{path}: {what}unreadable or truncated TIFF ({exc})") from exc


def tiff_samples(path: object, data: bytes, what: str = "", *,
                 labels: bool = False) -> np.ndarray | None:
    """The first page of the TIFF ``data``: ``(H, W)`` or ``(H, W, 3)`` BGR samples of the
    stored depth, turned by the Orientation tag, alpha dropped. A frame (``labels`` false) is the
    picture a viewer shows: palette indices become the colours they pick, 1-bit samples 0 and
    255, and 1- and 8-bit min-is-white pages are inverted (as OpenCV does). A mask (``labels``)
    keeps its stored values: the palette indices, min-is-white pages not inverted (tifffile
    writes a NumPy bool mask as 1-bit min-is-white with True stored as 1).

    None for a page whose samples are neither grey, RGB nor palette indices (CMYK, YCbCr,
    CIE L*a*b*): tifffile returns those unconverted, so the caller has OpenCV convert them.
    Raises ValueError naming ``path`` for a damaged file, a declared size no frame has (before
    decoding) or a layout that is not one image. ``what`` (e.g. ``"ground-truth mask "``)
    starts the messages' description.
    """
    import tifffile

    from bpedge._frames import MAX_SIDE
    from bpedge._image_size import refuse_frame_size

    # Only tifffile's own calls are wrapped: the refusals below keep their words.
    with _damaged(path, what):
        tif = tifffile.TiffFile(io.BytesIO(data))
    with tif:
        with _damaged(path, what):
            if not tif.pages:
                raise ValueError("no image in the file")
            # The first page, as OpenCV reads it; always a TiffPage, never a TiffFrame.
            page: tifffile.TiffPage = tif.pages[0]  # type: ignore[assignment]
            photometric, shape = page.photometric, page.shape
            hw = (int(page.imagelength), int(page.imagewidth))
        refuse_frame_size(path, hw, what)
        # The sides bound only part of it: a TIFF may declare thousands of samples per pixel.
        if math.prod(shape) > MAX_SIDE * MAX_SIDE * 4:
            raise ValueError(f"{path}: {what}declares {math.prod(shape)} samples (shape {shape}), "
                             f"more than a {MAX_SIDE}x{MAX_SIDE} RGBA image holds, so it is not "
                             "decoded")
        if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.MINISWHITE,
                               tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.PALETTE):
            return None
        with _damaged(path, what):
            array = page.asarray()
            colormap = page.colormap if photometric == tifffile.PHOTOMETRIC.PALETTE else None
            orientation = page.tags.get(_ORIENTATION)
            turn = orientation.value if orientation is not None else 1
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    if planar and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # planar RGB comes as (C, H, W)
    # 1 and values the tag does not define: the rows as stored.
    if isinstance(turn, int) and turn in _ORIENTED:
        array = _ORIENTED[turn](array)
    if array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[:, :, 0]  # grey, or grey and alpha
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{path}: {what}expected a single-channel or RGB(A) image, got shape "
                         f"{array.shape}")
    if colormap is not None and not labels:
        array = _palette_colours(path, array, colormap, what)
    if array.dtype == np.bool_:
        array = np.where(array, np.uint8(255), np.uint8(0))  # 1-bit: as OpenCV reads it
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and array.dtype == np.uint8 and not labels:
        array = 255 - array
    if array.ndim == 3:
        array = array[:, :, 2::-1]  # RGB(A) to the BGR OpenCV gives; alpha dropped
    return np.ascontiguousarray(array)


def _palette_colours(path: object, indices: np.ndarray, colormap: np.ndarray,
                     what: str) -> np.ndarray:
    """The RGB picture of a palette page, as libtiff's RGBA reader (OpenCV) decodes it: a
    colormap whose entries all fit in 8 bits is used as it is, any other keeps the high byte of
    each."""
    cmap = np.asarray(colormap)
    if cmap.ndim != 2 or cmap.shape[0] != 3 or indices.ndim != 2:
        raise ValueError(f"{path}: {what}palette TIFF with an unreadable colormap (shape "
                         f"{cmap.shape}) or samples of shape {indices.shape}; save it as 8-bit "
                         "grey")
    if int(indices.max()) >= cmap.shape[1]:
        raise ValueError(f"{path}: {what}palette TIFF whose samples index past its "
                         f"{cmap.shape[1]}-entry colormap; save it as 8-bit grey")
    cmap = (cmap if int(cmap.max()) < 256 else cmap >> 8).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(cmap[:, indices], 0, -1))
