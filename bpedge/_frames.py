"""Frame validation: everything a probe, a file or a caller can hand to the Segmenter is checked here,
once, and turned into a contiguous uint8 (H, W) grey frame or a ValueError that says what was expected."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Frames larger than this on either side are refused: no ultrasound frame is, and a mistaken
#: (e.g. transposed video tensor) input would otherwise allocate gigabytes.
MAX_SIDE = 8192

#: Highest frame rate (frames per second) taken from a source's header or ``--video-fps``: no
#: ultrasound cine runs faster, and a header's 1e12 (a DICOM Frame Time of 1e-9 ms) reached the
#: video writer, which failed on it.
MAX_FPS = 1000.0

#: Largest pixel spacing (mm per pixel) taken from a DICOM header: a frame 10 m wide at 100
#: pixels; an infinite or overflowing one gave areas of NaN mm2 and boxes of Infinity mm, which
#: are not JSON.
MAX_SPACING_MM = 100.0


def plausible_fps(fps: float) -> float | None:
    """``fps`` when it is a frame rate a source can have (finite, in (0, :data:`MAX_FPS`]),
    else None (the rate is unknown)."""
    return fps if math.isfinite(fps) and 0 < fps <= MAX_FPS else None


def as_grey_frame(frame: Any) -> np.ndarray:
    """Return ``frame`` as a C-contiguous ``uint8`` array of shape ``(H, W)``.

    Accepted: (H, W), (H, W, 1) or (H, W, 3) BGR (converted with OpenCV's BGR->grey weights) of

    * ``uint8``: used as it is;
    * any other integer dtype: 8-bit values held in a wider type, every value in [0, 255]
      (12/16-bit data must be scaled to 8 bits first: it is refused, never clipped);
    * ``float16/32/64``: 8-bit units [0, 255], finite, rounded to the nearest integer. Float
      frames normalised to [0, 1] are refused (every value in [0, 1] and the largest above 0):
      taken as 8-bit units they would be an all-black frame and silently give ``present=False``.

    ``bool``, complex, object, string and time dtypes are refused, and so are masked arrays
    (which pixels to fill is the caller's call). A PIL image is read in its grey ("L", "I",
    "I;16", "F") or RGB mode; its other modes (palette, YCbCr, HSV, ...) are refused, since
    their numbers are not grey levels. Anything else raises ``ValueError`` naming what was
    expected.
    """
    frame = host_array(frame)
    if frame.dtype == np.bool_ or not (
        np.issubdtype(frame.dtype, np.integer) or np.issubdtype(frame.dtype, np.floating)
    ):
        raise ValueError(f"frame dtype must be uint8 (or float in [0, 255]), got {frame.dtype}")
    if frame.ndim == 3:
        channels = frame.shape[2]
        if channels not in (1, 3):
            raise ValueError(
                f"frame must have 1 or 3 (BGR) channels, got shape {frame.shape} ({channels} channels)"
            )
    elif frame.ndim != 2:
        raise ValueError(f"frame must be (H, W), (H, W, 1) or (H, W, 3), got shape {frame.shape}")
    h, w = frame.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"frame must be at least 2x2 pixels, got {h}x{w}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"frame sides must be at most {MAX_SIDE} pixels, got {h}x{w}")
    if frame.dtype != np.uint8:
        frame = _to_uint8(frame)
    if frame.ndim == 3:
        frame = frame[:, :, 0] if frame.shape[2] == 1 else _bgr_to_grey(frame)
    return np.ascontiguousarray(frame)


#: PIL modes whose array is grey levels (one channel) or RGB (converted with RGB weights).
_PIL_GREY_MODES = frozenset({"L", "I", "I;16", "I;16L", "I;16B", "F"})


def host_array(frame: Any) -> np.ndarray:
    """``frame`` as the NumPy array :func:`as_grey_frame` reads: an ndarray as it is, anything
    with ``__array_interface__`` / ``__array__`` (a PIL image, a CPU torch tensor, a capture
    object) through ``np.asarray``, which may return the caller's own memory."""
    if isinstance(frame, np.ma.MaskedArray):
        raise ValueError(  # noqa: TRY004 - the SDK's contract: a bad frame is a ValueError
            "frame is a masked array: its masked pixels would be read as whatever "
            "they hold; pass frame.filled(value) (a plain array)")
    if isinstance(frame, np.ndarray):
        return frame
    if type(frame).__module__.split(".")[0] == "PIL" and hasattr(frame, "mode"):
        mode = frame.mode
        if mode == "RGB":  # PIL's channel order is RGB, bpedge's 3-channel frames are BGR
            return np.ascontiguousarray(np.asarray(frame)[:, :, ::-1])
        if mode not in _PIL_GREY_MODES:
            raise ValueError(f"PIL image mode {mode!r} does not hold grey levels; convert it "
                             "first: image.convert('L')")
    if hasattr(frame, "__array_interface__") or hasattr(frame, "__array__"):
        return np.asarray(frame)
    if hasattr(frame, "__cuda_array_interface__"):
        # Reached from segment_batch/stream (seg(frame) sends GPU arrays to the TensorRT path
        # first): the generic message below did not say what to do with one.
        raise ValueError(
            f"frame is a GPU array ({type(frame).__name__}): segment_batch and stream take host "
            "frames; pass it to seg(frame) on the TensorRT backend, or copy it to the host first "
            "(e.g. tensor.cpu().numpy(), cupy.asnumpy(array))")
    raise ValueError(
        f"frame must be a numpy array of shape (H, W) uint8, got {type(frame).__name__}"
    )


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    floating = np.issubdtype(frame.dtype, np.floating)
    if floating and not np.isfinite(frame).all():
        raise ValueError("frame holds NaN or infinite values; expected finite values in [0, 255]")
    lo, hi = frame.min(), frame.max()
    if lo < 0 or hi > 255:
        raise ValueError(f"frame values must lie in [0, 255], got range [{lo}, {hi}] ({frame.dtype}); "
                         "bpedge reads 8-bit grey levels and does not guess how wider data "
                         "maps to them: convert the frames to 8-bit first")
    if floating and 0 < hi <= 1:
        raise ValueError(f"float frame values all lie in [0, 1] (largest {hi}): bpedge takes "
                         "8-bit units [0, 255]; multiply a normalised frame by 255, or pass uint8")
    return np.rint(frame).astype(np.uint8)


def _bgr_to_grey(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2GRAY)
