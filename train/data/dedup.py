"""Optional clean-up of a known label-noise pattern: near-identical frames with contradictory masks.

In the Kaggle data, consecutive frames of one video can be practically the same image while one is
labelled with the brachial plexus and the other left empty (the annotator missed it). Such a pair
teaches a model both answers for one input. The rule applied here:

    Within one subject, an empty-mask frame whose image is at least ``threshold`` similar to some
    BP-positive frame's image is removed; the positive frame is kept. Positive frames are never
    removed, and frames of different subjects are never compared.

Similarity is the Pearson correlation of the two images shrunk to 32x24 pixels (area averaging,
which averages out speckle while keeping the anatomy), so 1.0 is "the same picture up to
brightness and contrast". The step is off by default everywhere and reports every pair it acted on.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from bpedge.train.data.kaggle import Frame, read_image

__all__ = ["DEFAULT_THRESHOLD", "DuplicateReport", "drop_frames", "find_contradictory_duplicates"]

#: Correlation of the 32x24 thumbnails above which two frames count as the same picture. On the
#: phantom, successive frames of the drifting probe reach about 0.98 and an empty frame's closest
#: positive about 0.97 (checked in the tests); a copy of a frame with mild added noise scores above
#: 0.999. Not tuned on the real data: lower it to catch more, and read the report.
DEFAULT_THRESHOLD = 0.99

_THUMB_WH = (32, 24)


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_contradictory_duplicates` found: the removed (empty-mask) frame keys, and
    for each one ``(kept key, removed key, similarity)`` with its most similar positive frame."""

    removed: tuple[str, ...]
    pairs: tuple[tuple[str, str, float], ...]


def _thumbnail(frame: Frame) -> np.ndarray:
    """Zero-mean, unit-norm float64 vector of the frame's image shrunk to 32x24."""
    small = cv2.resize(read_image(frame.image_path), _THUMB_WH, interpolation=cv2.INTER_AREA)
    v = small.astype(np.float64).ravel()
    v -= v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v  # a flat image correlates with nothing


def find_contradictory_duplicates(
    frames: Sequence[Frame], *, threshold: float = DEFAULT_THRESHOLD
) -> DuplicateReport:
    """Find empty-mask frames that are near-copies of a BP-positive frame of the same subject.

    ``frames``: all frames of a dataset (positive and empty), e.g. ``index.frames``. Reads every
    image once. ``threshold`` is a correlation in (0, 1]. Returns the keys to remove, sorted by
    (subject, frame); apply them with :func:`drop_frames`.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be a correlation within (0, 1], got {threshold}")
    by_subject: dict[int, list[Frame]] = defaultdict(list)
    for f in frames:
        by_subject[f.subject].append(f)
    # Only subjects with both kinds of frame can hold a contradiction; read only their images.
    candidates = [
        f
        for fs in by_subject.values()
        if any(f.present for f in fs) and not all(f.present for f in fs)
        for f in fs
    ]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        thumbs = dict(zip([f.key for f in candidates], pool.map(_thumbnail, candidates)))

    pairs: list[tuple[str, str, float]] = []
    for subject in sorted(by_subject):
        positives = [f for f in by_subject[subject] if f.present]
        empties = [f for f in by_subject[subject] if not f.present]
        if not positives or not empties:
            continue
        pos = np.stack([thumbs[f.key] for f in positives])  # (P, 768)
        emp = np.stack([thumbs[f.key] for f in empties])    # (E, 768)
        similarity = emp @ pos.T                             # (E, P) Pearson correlations
        best = similarity.argmax(axis=1)
        for i, empty in enumerate(empties):
            score = float(similarity[i, best[i]])
            if score >= threshold:
                pairs.append((positives[best[i]].key, empty.key, round(score, 6)))
    pairs.sort(key=lambda p: (int(p[1].split("_")[0]), int(p[1].split("_")[1])))
    return DuplicateReport(removed=tuple(p[1] for p in pairs), pairs=tuple(pairs))


def drop_frames(frames: Sequence[Frame], report: DuplicateReport) -> tuple[Frame, ...]:
    """``frames`` without those the report removed, in their original order."""
    removed = set(report.removed)
    return tuple(f for f in frames if f.key not in removed)
