"""Tracking for video: skip the detector while the segmentation stays confident.

Frames of one video move little between frames, so once the cascade has found the BP, the next
frame's crop can come from where the mask was: a box of the last detection's size centred on the
previous mask. The detector (the costly model) then runs only:

- on the first frame, and every ``detect_every`` frames after the last detection once a track
  has been confirmed. A new track is checked sooner: ``first_check`` frames after the detection
  that started it, and the interval doubles with each detection whose mask lies where the track's
  last mask was (IoU at least ``min_overlap``), up to ``detect_every``; a detection elsewhere
  starts a new track at ``first_check`` again;
- on the first frame of another sequence (a :class:`SequenceFrame` naming another sequence: the
  next video, subject or folder of a ``segment`` run), and on a frame whose size differs from the
  previous frame's (another source: the last box is not about this picture);
- whenever the last frame had no confident segmentation to track (no BP, an empty mask); a frame
  on which the detector finds no BP is not cropped or segmented at all (its mask is empty
  whatever the segmenter would say), which is most of the cost of frames without a track;
- on a tracked frame whose segmentation is not confident, not inside its crop, or not where the
  last frame's mask was: that frame is run again with the detector, so a lost track costs one
  extra segmenter call.

"Confident": the mask holds at least ``min_pixels`` crop pixels and their mean probability is at
least ``min_confidence``. "Inside": the segmenter is trained on tight boxes, so a mask reaches the
crop's edges at a few points; a BP that extends past the crop is cut along a stretch of an edge,
so no edge may have more than ``max_edge_fraction`` of its pixels in the mask. "Where the last
mask was": the tracked mask's IoU with the previous frame's mask is at least ``min_overlap``. The
segmenter still draws a confident mask on most crops the BP has left (measured with the demo's
tiny models on two unseen phantom seeds, 8 subjects of 16 frames each: mean probability in the mask
0.89-0.95 on tracked frames without a BP, 0.95 on BP frames), so confidence alone kept a track
running over frames without a BP until the next scheduled detection. That mask rarely lies where
the BP was: IoU with the last frame's mask, median 0.25 / 0.36 on the two seeds against about
0.9 on tracked BP frames (5th percentile 0.64 / 0.67), and below 0.5 on the first BP-less frame
of 10 of the 12 runs of such frames (the other two: a mask of the BP's shape where it was, 0.84
and 0.86, which this rule does not catch).

The next crop box is centred on the previous mask's box and has the size of the last detector box
(widened by ``margin`` of its width/height on each side, 0 by default), then is treated like a
detector box (the bundle's crop margin applied, clamped to the frame), so a tracked crop shows
the BP at the scale the segmenter saw on the detector's crops. It used to be the previous mask's
own box widened by 0.1 on each side: a mask a little wider than the BP widened the next crop,
and the crops grew frame after frame (the demo's tiny models on its held-out subject: 149 to 242
px wide within 9 tracked frames, Dice 0.93 down to 0.84). Measured with the demo bundles of two
presets (the tiny preset with and without its presence head and grey-level augmentation) on
phantom seeds 5-8 that no model saw (8 subjects of 16 frames each): tracked Dice on BP frames
against per-frame detection -0.053 / -0.041 / -0.006 / -0.166 -> +0.006 / -0.024 / +0.004 /
-0.103 with the current preset, +0.066 / +0.048 / -0.001 / -0.064 -> +0.095 / +0.056 / +0.012 /
-0.042 with the earlier one (benchmarks/results/README.md, "Tracking: crops keep the detection's size").

Why new tracks are checked sooner: a false alarm (the detector boxing a look-alike on a frame
without a BP) starts a track like a true detection does, and its mask is as confident and stays
where it was, so no rule on the segmenter's output ends it; with one detection every
``detect_every`` frames, the track stayed on the look-alike while the BP came back and per-frame
detection found it. Measured with the tiny demo bundle of 2026-12-07 (`bpedge demo`, then
`bpedge export --int8`; ONNX Runtime FP32, `benchmarks/tracking_dice.py`) on its held-out subject
and four phantom seeds no model saw (5-8, 8 subjects of 16 frames), tracked minus per-frame Dice
over all frames, and the detector's share of tracked frames: with one check every 10 frames,
+0.000 / -0.071 / +0.029 / +0.027 / -0.060 (detector on 97% / 60% / 53% / 49% / 46% of frames);
with checks after 1, 2, 4, 8 frames, +0.000 / -0.000 / -0.014 / +0.013 / +0.008 (100% / 83% / 73%
/ 87% / 80%); with a second demo bundle (``--seed 1``) on seeds 5-8, -0.027 / +0.028 / +0.016 /
-0.052 -> +0.007 / +0.006 / -0.006 / +0.002 (benchmarks/results/README.md). On seed 5 a track
begun on an empty frame's look-alike held on it through the subject's next 5 and 6 BP frames
(two subjects); on seed 8 it lost 6 of the 7 BP frames before the next scheduled detection. The
doubling costs about
log2(``detect_every``) extra detections per new track, which a long video amortises and these
16-frame sequences do not: with this bundle, whose detector boxes are about 20% narrower than the
BP on unseen subjects (the masks reach the crop's edges, so few detections start a track at all),
tracking gains little speed either way.

A tracked frame's :class:`~bpedge._result.Result` has ``present`` True, ``score`` the last
detector score, ``box`` the crop box it used, and no ``preprocess``/``detector`` timings.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from bpedge._result import Result

if TYPE_CHECKING:
    from bpedge._cascade import HostCascade


class SequenceFrame(NamedTuple):
    """A grey frame and the sequence it belongs to (any hashable; frames given as plain arrays
    are all one sequence). A track never crosses from one sequence into the next: a frame of a
    new sequence runs the detector."""

    grey: np.ndarray
    sequence: Hashable


@dataclass(frozen=True)
class TrackOptions:
    """How tracking decides (see the module docstring). ``margin``: fraction of the last
    detector box's width/height added on each side of the next crop (before the bundle's crop
    margin). ``first_check``: frames after a new track's first detection before the detector
    checks it (doubling with each check that agrees, up to ``detect_every``; equal to
    ``detect_every``, new tracks are checked like confirmed ones)."""

    detect_every: int = 10
    first_check: int = 1
    margin: float = 0.0
    min_confidence: float = 0.75
    min_pixels: int = 16
    max_edge_fraction: float = 0.3
    min_overlap: float = 0.5

    def __post_init__(self) -> None:
        for name in ("detect_every", "first_check", "min_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.first_check > self.detect_every:
            raise ValueError(f"first_check must be at most detect_every ({self.detect_every}), "
                             f"got {self.first_check}")
        for name, high, what in (("margin", 2.0, " (a fraction of the box side)"),
                                 ("min_confidence", 1.0, ""), ("max_edge_fraction", 1.0, ""),
                                 ("min_overlap", 1.0, "")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                                 np.floating)) \
                    or not (math.isfinite(value) and 0.0 <= value <= high):
                raise ValueError(f"{name} must be a number in [0, {high:g}]{what}, got {value!r}")


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


def mask_overlap(mask: np.ndarray, previous: np.ndarray,
                 box: tuple[float, float, float, float]) -> float:
    """IoU of two uint8 (H, W) masks whose non-zero pixels lie inside ``box`` (frame pixels): a
    tracked mask and the previous frame's, which the tracked crop box contains by construction
    (it is that mask's box, widened). Only the box's pixels are read. Two empty masks: 0."""
    h, w = mask.shape
    x0, y0 = max(math.floor(box[0]), 0), max(math.floor(box[1]), 0)
    x1, y1 = min(math.ceil(box[2]), w), min(math.ceil(box[3]), h)
    a, b = mask[y0:y1, x0:x1] != 0, previous[y0:y1, x0:x1] != 0
    union = int(np.count_nonzero(a | b))
    return 0.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def next_box(mask: np.ndarray, margin: float,
             size: tuple[float, float] | None = None) -> tuple[float, float, float, float] | None:
    """The box (frame pixels) around a uint8 mask's non-zero pixels, widened by ``margin`` times
    its width/height on each side; None for an empty mask. With ``size`` (width, height) the box
    has that size instead, centred where the mask's box is."""
    return _box_around(_rect(mask), margin, size)


def _rect(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the non-zero pixels of a uint8 mask; zero size when there are none."""
    x, y, w, h = cv2.boundingRect(mask)
    return int(x), int(y), int(w), int(h)


def _box_around(rect: tuple[int, int, int, int], margin: float,
                size: tuple[float, float] | None) -> tuple[float, float, float, float] | None:
    """:func:`next_box` from the mask's bounding rectangle ``(x, y, w, h)``."""
    x, y, w, h = rect
    if w == 0 or h == 0:
        return None
    cx, cy = x + w / 2, y + h / 2
    width, height = size if size is not None else (float(w), float(h))
    half_w, half_h = (0.5 + margin) * width, (0.5 + margin) * height
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


class Tracker:
    """Runs a sequence of frames through ``cascade`` with tracking (one frame at a time)."""

    def __init__(self, cascade: HostCascade, options: TrackOptions) -> None:
        self._cascade = cascade
        self._options = options

    def run(self, frames: Iterable[np.ndarray | SequenceFrame]) -> Iterator[Result]:
        cascade, options = self._cascade, self._options
        threshold = cascade.spec.mask_threshold
        box: tuple[float, float, float, float] | None = None
        since_detection = 0
        interval = options.first_check  # detections due this many frames after the last one
        score = float("nan")
        shape: tuple[int, ...] | None = None
        sequence: Hashable = None
        last_mask: np.ndarray | None = None
        last_rect = (0, 0, 0, 0)  # last_mask's bounding rectangle (x, y, w, h)
        size: tuple[float, float] | None = None
        for frame in frames:
            grey, this_sequence = frame if isinstance(frame, SequenceFrame) else (frame, None)
            result: Result | None = None
            # Another sequence, or another size (another source): the last box is not about
            # this picture. Within one run of `segment --track`, the next subject's first frame
            # was reported with the last subject's box, score and mask.
            if grey.shape != shape or this_sequence != sequence:
                box, shape, sequence = None, grey.shape, this_sequence
            if box is not None and since_detection < interval:
                tracked, prob = cascade.run_crop(grey, box)
                if (confident(prob, threshold, options) and last_mask is not None
                        and mask_overlap(tracked.mask, last_mask, tracked.box)
                        >= options.min_overlap):
                    result = replace(tracked, score=score)
                    since_detection += 1
            if result is None:
                detected, detected_prob = cascade.run_with_probability(grey)
                result, score, since_detection = detected, detected.score, 1
                if detected_prob is None or not confident(detected_prob, threshold, options):
                    box = None
                    yield result
                    continue
                # A detection where the track was confirms it (the next check comes twice as
                # late); anywhere else it starts a new track, checked soon: a track begun on a
                # look-alike is as confident as one on the BP (module docstring).
                # Both masks lie in the union of the detection's crop box and the last mask's
                # rectangle: reading only that costs ~0.01 ms, the whole frame ~0.17 ms.
                x, y, w, h = last_rect
                x0, y0, x1, y1 = result.box
                both = (min(x0, x), min(y0, y), max(x1, x + w), max(y1, y + h))
                agrees = box is not None and last_mask is not None \
                    and mask_overlap(result.mask, last_mask, both) >= options.min_overlap
                interval = min(2 * interval, options.detect_every) if agrees \
                    else options.first_check
                # Tracked crops keep the size of this detection's crop (the detector's box; the
                # crop margin is applied again by run_crop): built from each mask's own box, a
                # mask a little too wide widened the next crop, frame after frame.
                grown = 1.0 + cascade.spec.crop_margin
                size = ((x1 - x0) / grown, (y1 - y0) / grown)
            last_rect = _rect(result.mask)
            box = _box_around(last_rect, options.margin, size)
            # The tracker's own copy: the result's mask is the caller's, who may change it
            # before asking for the next frame (whose overlap test reads this one).
            if last_mask is None or last_mask.shape != result.mask.shape:
                last_mask = np.empty_like(result.mask)
            np.copyto(last_mask, result.mask)
            yield result
