"""Frame validation: everything a probe, a file or a caller can hand to the Segmenter is checked here,
once, and turned into a contiguous uint8 (H, W) grey frame or a ValueError that says what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Frames larger than this on either side are refused: no ultrasound frame is, and a mistaken
#: (e.g. transposed video tensor) input would otherwise allocate gigabytes.
MAX_SIDE = 8192


def as_grey_frame(frame: Any) -> np.ndarray:
    """Return ``frame`` as a C-contiguous ``uint8`` array of shape ``(H, W)``.

    Accepted: ``uint8`` (H, W), (H, W, 1) or (H, W, 3) BGR (converted with OpenCV's BGR->grey
    weights); float (H, W[, 1|3]) with finite values in [0, 255] (rounded). Anything else raises
    ``ValueError`` naming what was expected.
    """
    if not isinstance(frame, np.ndarray):
        if hasattr(frame, "__array_interface__") or hasattr(frame, "__array__"):
            frame = np.asarray(frame)
        else:
            raise ValueError(
                f"frame must be a numpy array of shape (H, W) uint8, got {type(frame).__name__}"
            )
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


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    if np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            raise ValueError("frame holds NaN or infinite values; expected finite values in [0, 255]")
    lo, hi = frame.min(), frame.max()
    if lo < 0 or hi > 255:
        raise ValueError(f"frame values must lie in [0, 255], got range [{lo}, {hi}] ({frame.dtype})")
    return np.rint(frame).astype(np.uint8)


def _bgr_to_grey(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGR2GRAY)
