"""What the Segmenter returns for one frame."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

#: File types :meth:`Result.save` writes: the overlay picture, or the JSON of :meth:`Result.to_dict`.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Result:
    """The cascade's answer for one frame.

    Attributes:
        mask: ``uint8`` array ``(H, W)`` of 0/255, the frame's size; all 0 when ``present`` is False.
        box: ``(x0, y0, x1, y1)`` float, frame pixels (pixel-edge coordinates): the crop box, i.e.
            the detector's top box clamped to the frame, grown by the bundle's crop margin and
            clamped again (the box the mask is pasted into; on a tracked frame, the crop box it
            used); reported even when ``present`` is False.
        score: detector confidence in [0, 1] for ``box``. A model output outside [0, 1] is
            clamped into it; a NaN output is reported as 0.0 with ``present`` False and an empty
            mask (a diverged model never claims the BP).
        present: ``score >= `` the bundle's score threshold: the frame is judged to show the BP.
        timings: milliseconds per stage (``preprocess``, ``detector``, ``crop``, ``segmenter``,
            ``paste``, ``total``; GPU backends add ``upload``/``download``), host monotonic clock
            unless the backend says otherwise. With tracking a frame lists only the stages it
            ran (no ``preprocess``/``detector`` on a tracked frame; no ``crop``/``segmenter``/
            ``paste`` on one the detector found no BP in).
        frame: the ``uint8`` (H, W) grey frame this result belongs to (what :meth:`plot` draws on);
            set by :class:`~bpedge.segmenter.Segmenter`, which copies a caller's array so a reused
            buffer cannot change it. None on results built by hand.
        name, timestamp: the frame's name and time in seconds when it came from
            :func:`bpedge.sources.open_frames` (else None).
        spacing_mm: ``(x, y)`` millimetres per pixel when the frame is calibrated (DICOM), else None.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    present: bool
    timings: dict[str, float] = field(default_factory=dict)
    frame: np.ndarray | None = field(default=None, repr=False, compare=False)
    name: str | None = None
    timestamp: float | None = None
    spacing_mm: tuple[float, float] | None = None

    # --- measurements ------------------------------------------------------------------------

    @property
    def area_px(self) -> int:
        """Pixels of the predicted mask (0 when ``present`` is False)."""
        return int(np.count_nonzero(self.mask))

    @property
    def area_mm2(self) -> float | None:
        """Mask area in mm² (``area_px`` x x-spacing x y-spacing), None without ``spacing_mm``."""
        if self.spacing_mm is None:
            return None
        return self.area_px * self.spacing_mm[0] * self.spacing_mm[1]

    @property
    def box_size_mm(self) -> tuple[float, float] | None:
        """``(width, height)`` of ``box`` in mm, None without ``spacing_mm``."""
        if self.spacing_mm is None:
            return None
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * self.spacing_mm[0], (y1 - y0) * self.spacing_mm[1]

    # --- outputs -----------------------------------------------------------------------------

    def plot(self, truth: np.ndarray | None = None, label: str | None = None) -> np.ndarray:
        """The overlay picture, ``uint8`` (H, W, 3) BGR, drawn as the demo and ``bpedge segment``
        draw theirs: prediction outlined magenta, ground truth (``truth``, optional (H, W) mask)
        green, box yellow (grey when the BP is judged absent), ``label`` (default: name and score)
        top left. Needs :attr:`frame` (set on every result a Segmenter returns)."""
        from bpedge._overlay import draw_overlay

        if self.frame is None:
            raise ValueError("this Result has no frame to draw on (results from a Segmenter "
                             "carry one); draw it with bpedge._overlay.draw_overlay(frame, ...)")
        if label is None:
            label = (f"{self.name}  " if self.name else "") + f"score {self.score:.2f}" + (
                "" if self.present else " (no BP)")
        return draw_overlay(self.frame, self.mask, truth, self.box, self.present, label)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: ``name``, ``timestamp`` (s), ``present``, ``score``, ``box``
        ``[x0, y0, x1, y1]`` (frame pixels), ``box_size_mm`` ``[w, h]``, ``area_px``,
        ``area_mm2``, ``spacing_mm`` ``[x, y]``, ``frame_hw`` ``[H, W]`` and ``timings_ms``.
        mm values are None when the frame carries no spacing."""
        size = self.box_size_mm
        return {
            # str/float: a SourceFrame built by hand may carry NumPy values, which json refuses.
            "name": None if self.name is None else str(self.name),
            "timestamp": None if self.timestamp is None else float(self.timestamp),
            "present": bool(self.present),
            "score": float(self.score),
            "box": [float(v) for v in self.box],
            "box_size_mm": None if size is None else [float(size[0]), float(size[1])],
            "area_px": self.area_px,
            "area_mm2": None if self.area_mm2 is None else float(self.area_mm2),
            "spacing_mm": None if self.spacing_mm is None else [float(v) for v in self.spacing_mm],
            "frame_hw": [int(self.mask.shape[0]), int(self.mask.shape[1])],
            "timings_ms": {k: float(v) for k, v in self.timings.items()},
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a JSON string (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the overlay picture (``.png``, ``.jpg``, ``.bmp``, ``.tif``: :meth:`plot`) or the
        JSON (``.json``: :meth:`to_dict`) to ``path``, atomically. Nothing at ``path`` (a file, a
        symbolic link, even a dangling one, also one that appears while the picture is encoded)
        is ever replaced unless ``overwrite=True`` (FileExistsError naming it); a killed process
        leaves no partial file under the name. Folders of ``path`` that do not exist are made.
        Returns the path."""
        from bpedge._atomic import atomic_write_bytes

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (*IMAGE_SUFFIXES, ".json"):
            raise ValueError(f"{path}: cannot tell what to write from {suffix or 'no suffix'}; "
                             f"use .json or one of {', '.join(IMAGE_SUFFIXES)}")
        refusal = f"{path} exists: choose another name, or save(..., overwrite=True)"
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(refusal)
        if suffix == ".json":
            data = (self.to_json(indent=2) + "\n").encode("utf-8")
        else:
            import cv2

            ok, encoded = cv2.imencode(suffix, self.plot())
            if not ok:
                raise ValueError(f"{path}: OpenCV could not encode the overlay as {suffix}")
            data = encoded.tobytes()
        try:
            atomic_write_bytes(path, data, replace=overwrite)
        except FileExistsError as exc:
            if exc.filename != str(path):
                # Not the file: a file where a folder of the path should be (mkdir's refusal).
                raise FileExistsError(f"{path} cannot be written: {exc.filename} is not a "
                                      "folder") from None
            raise FileExistsError(refusal) from None  # it appeared meanwhile: still not replaced
        return path


def with_valid_score(result: Result) -> Result:
    """``result`` with its score brought into the documented range: clamped into [0, 1]; NaN
    becomes 0.0, ``present`` False and an all-zero mask. Every backend's results pass here."""
    score = result.score
    if math.isnan(score):
        return replace(result, score=0.0, present=False, mask=np.zeros_like(result.mask))
    if 0.0 <= score <= 1.0:
        return result
    return replace(result, score=min(max(score, 0.0), 1.0))
