"""What the Segmenter returns for one frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Result:
    """The cascade's answer for one frame.

    Attributes:
        mask: ``uint8`` array ``(H, W)`` of 0/255, the frame's size; all 0 when ``present`` is False.
        box: ``(x0, y0, x1, y1)`` float, frame pixels (pixel-edge coordinates), the detector's top box
            clamped to the frame; reported even when ``present`` is False.
        score: detector confidence in [0, 1] for ``box``.
        present: ``score >= `` the bundle's score threshold: the frame is judged to show the BP.
        timings: milliseconds per stage (``preprocess``, ``detector``, ``crop``, ``segmenter``,
            ``paste``, ``total``; GPU backends add ``upload``/``download``), host monotonic clock
            unless the backend says otherwise.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    present: bool
    timings: dict[str, float] = field(default_factory=dict)
