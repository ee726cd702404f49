"""Overlay pictures of a result: the frame with the ground-truth outline, the predicted outline and
the detector box drawn on it, written as PNG (``demo`` and ``segment``).

Colours (BGR) are fixed so pictures from different runs read the same: ground truth green,
prediction magenta, box yellow when the detector says the BP is present and grey when not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from bpedge._atomic import atomic_open
from bpedge._display_text import ascii_printable

TRUTH_BGR = (80, 220, 60)
PREDICTION_BGR = (255, 60, 255)
BOX_PRESENT_BGR = (0, 215, 255)
BOX_ABSENT_BGR = (150, 150, 150)


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    contours, _ = cv2.findContours((mask != 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, 2, lineType=cv2.LINE_AA)


def draw_overlay(
    frame: np.ndarray,
    prediction: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    box: Sequence[float] | None = None,
    present: bool = True,
    label: str | None = None,
) -> np.ndarray:
    """The overlay picture: uint8 (H, W, 3) BGR.

    Args:
        frame: uint8 (H, W) grey frame.
        prediction: (H, W) mask, non-zero = BP (e.g. ``Result.mask``); outlined in magenta.
        truth: (H, W) ground-truth mask; outlined in green.
        box: ``(x0, y0, x1, y1)`` frame pixels, pixel-edge coordinates (``Result.box``).
        present: whether the detector judged the BP present (box colour).
        label: text written in the top-left corner (e.g. score and Dice).
    """
    if not isinstance(frame, np.ndarray) or frame.ndim != 2 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be a uint8 (H, W) array, got {_described(frame)}")
    for name, mask in (("prediction", prediction), ("truth", truth)):
        if mask is None:
            continue
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"{name} must be an (H, W) numpy array, got {type(mask).__name__}")
        if mask.shape != frame.shape:
            raise ValueError(f"{name} mask shape {mask.shape} differs from the frame's {frame.shape}")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__}")
    canvas = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if truth is not None:
        _outline(canvas, truth, TRUTH_BGR)
    if prediction is not None:
        _outline(canvas, prediction, PREDICTION_BGR)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        # Pixel-edge box -> the pixels it covers: the last covered pixel is x1 - 1.
        cv2.rectangle(canvas, (round(x0), round(y0)), (max(round(x1) - 1, round(x0)),
                      max(round(y1) - 1, round(y0))),
                      BOX_PRESENT_BGR if present else BOX_ABSENT_BGR, 1, lineType=cv2.LINE_8)
    if label:
        # Hershey fonts draw ASCII only, and a name with undecodable bytes crashed putText
        label = ascii_printable(label)
        scale = max(frame.shape[1] / 900.0, 0.35)
        origin = (6, int(22 * scale) + 4)
        # A dark halo for reading on bright tissue: the label itself, thickness 1, at the eight
        # one-pixel offsets. Not one thickness-3 copy: OpenCV 5 spaces thick text wider than
        # thin text, so from the first letters on the halo drifted away from the label.
        for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
            cv2.putText(canvas, label, (origin[0] + dx, origin[1] + dy), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


def _described(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    return type(value).__name__


def write_png(path: str | os.PathLike[str], image: np.ndarray, *, replace: bool = True,
              before_publish: Callable[[os.stat_result, bytes], None] | None = None) -> None:
    """Encode ``image`` (uint8 (H, W) or (H, W, 3) BGR) as PNG and write it atomically
    (``replace=False``: never over a file at ``path``, ``FileExistsError``).

    ``before_publish`` is called with the ``os.fstat`` of the temporary file and the PNG bytes
    it will hold, before it can take the name: its ``(st_dev, st_ino)`` are those of the file at
    ``path`` once published (a hard link or a rename keeps them), so a caller stopped at any
    later point, even inside the publishing step, can tell the file it wrote from another at that
    name (the bytes too: a file deleted and made again may get the same inode number)."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.dtype} {image.shape} image as PNG")
    data = encoded.tobytes()
    with atomic_open(path, "wb", replace=replace) as f:
        if before_publish is not None:
            before_publish(os.fstat(f.fileno()), data)
        f.write(data)
