"""What the Segmenter returns for one frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Result:
    """The cascade's answer for one frame.

    Attributes:
        mask: ``uint8`` array ``(H, W)`` of 0/255, the frame's size; all 0 when ``present`` is False.
        box: ``(x0, y0, x1, y1)`` float, frame pixels (pixel-edge coordinates), the detector's top box
            clamped to the frame; reported even when ``present`` is False.
        score: detector confidence in [0, 1] for ``box``. A model output outside [0, 1] is
            clamped into it; a NaN output is reported as 0.0 with ``present`` False and an empty
            mask (a diverged model never claims the BP).
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


def with_valid_score(result: Result) -> Result:
    """``result`` with its score brought into the documented range: clamped into [0, 1]; NaN
    becomes 0.0, ``present`` False and an all-zero mask. Every backend's results pass here."""
    score = result.score
    if math.isnan(score):
        return replace(result, score=0.0, present=False, mask=np.zeros_like(result.mask))
    if 0.0 <= score <= 1.0:
        return result
    return replace(result, score=min(max(score, 0.0), 1.0))
