"""Tracking for video: skip the detector while the segmentation stays confident.

Frames of one video move little between frames, so once the cascade has found the BP, the next
frame's crop can come from where the mask was: the box around the previous mask, widened by
``margin`` on each side. The detector (the costly model) then runs only:

- on the first frame, and every ``detect_every`` frames after the last detection;
- on a frame whose size differs from the previous frame's (another source: the last box is not
  about this picture);
- whenever the last frame had no confident segmentation to track (no BP, an empty mask); a frame
  on which the detector finds no BP is not cropped or segmented at all (its mask is empty
  whatever the segmenter would say), which is most of the cost of frames without a track;
- on a tracked frame whose segmentation is not confident or not inside its crop: that frame is run
  again with the detector, so a lost track costs one extra segmenter call.

"Confident": the mask holds at least ``min_pixels`` crop pixels and their mean probability is at
least ``min_confidence``. "Inside": the segmenter is trained on tight boxes, so a mask reaches the
crop's edges at a few points; a BP that extends past the crop is cut along a stretch of an edge,
so no edge may have more than ``max_edge_fraction`` of its pixels in the mask.

The next crop box is the previous mask's box, widened by ``margin`` on each side for motion, then
treated like a detector box (the bundle's crop margin applied, clamped to the frame).

A tracked frame's :class:`~bpedge._result.Result` has ``present`` True, ``score`` the last
detector score, ``box`` the crop box it used, and no ``preprocess``/``detector`` timings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from bpedge._result import Result

if TYPE_CHECKING:
    from bpedge._cascade import HostCascade


@dataclass(frozen=True)
class TrackOptions:
    """How tracking decides (see the module docstring). ``margin``: fraction of the previous
    mask box's width/height added on each side of the next crop."""

    detect_every: int = 10
    margin: float = 0.1
    min_confidence: float = 0.75
    min_pixels: int = 16
    max_edge_fraction: float = 0.3

    def __post_init__(self) -> None:
        if not isinstance(self.detect_every, int) or self.detect_every < 1:
            raise ValueError(f"detect_every must be an int >= 1, got {self.detect_every!r}")
        if not (math.isfinite(self.margin) and 0.0 <= self.margin <= 2.0):
            raise ValueError(f"margin must lie in [0, 2] (a fraction of the box side), got "
                             f"{self.margin!r}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1], got {self.min_confidence!r}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels!r}")
        if not 0.0 <= self.max_edge_fraction <= 1.0:
            raise ValueError(f"max_edge_fraction must lie in [0, 1], got "
                             f"{self.max_edge_fraction!r}")


def confident(prob: np.ndarray, threshold: float, options: TrackOptions) -> bool:
    """Whether a crop's probability map (float32 (h, w)) is a segmentation worth tracking: enough
    pixels at or above ``threshold``, their mean probability at least ``options.min_confidence``,
    and no crop edge with more than ``options.max_edge_fraction`` of its pixels in the mask (the
    BP is not cut off by the crop)."""
    keep = prob >= threshold
    n = int(np.count_nonzero(keep))
    if n < options.min_pixels:
        return False
    edges = (keep[0], keep[-1], keep[:, 0], keep[:, -1])
    if max(float(edge.mean()) for edge in edges) > options.max_edge_fraction:
        return False
    return float(prob[keep].mean()) >= options.min_confidence


def next_box(mask: np.ndarray, margin: float) -> tuple[float, float, float, float] | None:
    """The box (frame pixels) around a uint8 mask's non-zero pixels, widened by ``margin`` times
    its width/height on each side; None for an empty mask."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return (x - margin * w, y - margin * h, x + w + margin * w, y + h + margin * h)


class Tracker:
    """Runs a sequence of frames through ``cascade`` with tracking (one frame at a time)."""

    def __init__(self, cascade: HostCascade, options: TrackOptions) -> None:
        self._cascade = cascade
        self._options = options

    def run(self, greys: Iterable[np.ndarray]) -> Iterator[Result]:
        cascade, options = self._cascade, self._options
        threshold = cascade.spec.mask_threshold
        box: tuple[float, float, float, float] | None = None
        since_detection = 0
        score = float("nan")
        shape: tuple[int, ...] | None = None
        for grey in greys:
            result: Result | None = None
            if grey.shape != shape:  # another size is another source: its box is not ours
                box, shape = None, grey.shape
            if box is not None and since_detection < options.detect_every:
                tracked, prob = cascade.run_crop(grey, box)
                if confident(prob, threshold, options):
                    result = replace(tracked, score=score)
                    since_detection += 1
            if result is None:
                detected, detected_prob = cascade.run_with_probability(grey)
                result, score, since_detection = detected, detected.score, 1
                if detected_prob is None or not confident(detected_prob, threshold, options):
                    box = None
                    yield result
                    continue
            box = next_box(result.mask, options.margin)
            yield result
