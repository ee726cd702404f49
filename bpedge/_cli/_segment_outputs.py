"""What ``bpedge segment`` writes per frame and at the end: mask and overlay PNGs, ``results.csv``,
``results.jsonl`` (``Result.to_dict`` per frame), ``accuracy.csv`` against ground-truth masks found
beside the frames, and the annotated video (``--save-video``).

``results.csv`` keeps the same columns whatever the input, so scripts that parse it never meet
columns that come and go; accuracy goes to its own file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bpedge._atomic import atomic_write_text
from bpedge._cli._segment_output import own_entries
from bpedge._display_text import spreadsheet_cell
from bpedge._out_file import OutFile, OutFileRefused
from bpedge._result import Result
from bpedge.sources import SourceFrame

CSV_COLUMNS = ("file", "frame", "present", "score", "x0", "y0", "x1", "y1", "ms")
ACCURACY_COLUMNS = ("file", "frame", "truth_present", "present", "presence_correct",
                    "dice", "hd95_px")


def _read_truth(path: Path) -> np.ndarray:
    """A ground-truth mask as uint8 0/255 (non-zero is BP at any depth), read with the frame
    reader's guards (:func:`bpedge.sources.read_image_samples`)."""
    from bpedge.sources import read_image_samples

    mask = read_image_samples(path, "ground-truth mask ")
    return np.where(mask != 0, 255, 0).astype(np.uint8)


@dataclass
class _Accuracy:
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    dice_positive: list[float] = field(default_factory=list)
    dice_all: list[float] = field(default_factory=list)
    hd95: list[float] = field(default_factory=list)
    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0

    def add(self, frame: SourceFrame, result: Result, truth: np.ndarray) -> None:
        from bpedge._metrics import dice
        from bpedge._surface import hd95

        if truth.shape != result.mask.shape:
            raise ValueError(f"{frame.truth_path}: mask is {truth.shape[1]}x{truth.shape[0]}, "
                             f"the frame {result.mask.shape[1]}x{result.mask.shape[0]}")
        has_bp = bool(truth.any())
        d = dice(result.mask, truth, empty=1.0)
        h = hd95(result.mask, truth)
        self.dice_all.append(d)
        if has_bp:
            self.dice_positive.append(d)
        if h is not None and has_bp:
            self.hd95.append(h)
        correct = has_bp == bool(result.present)
        if has_bp:
            self.tp, self.fn = self.tp + int(correct), self.fn + int(not correct)
        else:
            self.tn, self.fp = self.tn + int(correct), self.fp + int(not correct)
        self.rows.append((spreadsheet_cell(frame.source), frame.index, int(has_bp),
                          int(result.present),
                          int(correct), f"{d:.6f}", "" if h is None else f"{h:.3f}"))

    def summary(self) -> str:
        n = len(self.rows)
        parts: list[str] = []
        if self.dice_positive:
            parts.append(f"Dice over BP frames {np.mean(self.dice_positive):.4f} "
                         f"({len(self.dice_positive)} frames)")
        parts.append(f"Dice over all frames (empty vs empty = 1) {np.mean(self.dice_all):.4f}")
        if self.hd95:
            parts.append(f"HD95 median {np.median(self.hd95):.1f} px")
        parts.append(f"presence correct {self.tp + self.tn}/{n} (sensitivity {self.tp}/"
                     f"{self.tp + self.fn}, specificity {self.tn}/{self.tn + self.fp})")
        return f"accuracy against {n} ground-truth mask(s): " + "; ".join(parts)


class SegmentOutputs:
    """Writes everything for one ``segment`` run under ``out``; :meth:`finish` writes the tables
    (also after a failure, so the frames done are kept) and returns the summary lines."""

    def __init__(self, out: Path, *, masks: bool, overlays: bool, video: OutFile | None,
                 video_fps: float | None, replace_video: bool = False,
                 skip_truth: Callable[[str, str], None] | None = None) -> None:
        """``skip_truth`` (``--on-error skip``): called with a ground-truth mask's path and why
        it cannot be used; its frame is then written without accuracy. Without it such a mask
        raises ``ValueError``."""
        self.out = out
        self._skip_truth = skip_truth
        self.masks, self.overlays = masks, overlays
        self.rows: list[tuple[Any, ...]] = []
        self.jsonl: list[str] = []
        self.accuracy = _Accuracy()
        self._video_path = video
        self._replace_video = replace_video
        self._video_fps = video_fps
        self._video: _VideoOut | None = None
        for sub, wanted in (("masks", masks), ("overlays", overlays)):
            if wanted:
                (out / sub).mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def add(self, frame: SourceFrame, result: Result) -> None:
        from bpedge._overlay import write_png

        truth = None
        if frame.truth_path is not None:
            try:
                truth = _read_truth(frame.truth_path)
                self.accuracy.add(frame, result, truth)  # checks the size before it adds
            except ValueError as exc:
                if self._skip_truth is None:
                    raise
                self._skip_truth(str(frame.truth_path),
                                 f"{exc} ({frame.name} is written without accuracy)")
                truth = None
        if self.masks:
            write_png(self.out / "masks" / f"{frame.name}.png", result.mask)
        picture = None
        if self.overlays or self._video_path is not None:
            picture = result.plot(truth=truth)
        if self.overlays and picture is not None:
            write_png(self.out / "overlays" / f"{frame.name}.png", picture)
        if self._video_path is not None and picture is not None:
            if self._video is None:
                fps = self._video_fps or frame.fps or 10.0
                self._video = _VideoOut(self._video_path, fps, picture.shape[1], picture.shape[0],
                                        replace=self._replace_video)
            self._video.write(picture)
        x0, y0, x1, y1 = result.box
        self.rows.append((spreadsheet_cell(frame.source), frame.index, int(result.present),
                          f"{result.score:.6f}",
                          f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}", f"{y1:.2f}",
                          f"{result.timings.get('total', float('nan')):.3f}"))
        self.jsonl.append(json.dumps({"file": frame.source, "frame": frame.index,
                                      **result.to_dict()}))

    def finish(self, complete: bool = True) -> list[str]:
        """Write the tables (and close the video); the lines to show the user. A run that did
        not finish writes its tables as ``*.partial.*`` (``results.csv`` means complete)."""
        lines = []
        refused: OutFileRefused | None = None
        if self._video is not None:
            try:
                lines.append(self._video.close())
            except OutFileRefused as exc:  # a file appeared at --save-video: the tables still go
                refused = exc
        tag = "" if complete else ".partial"
        # Recorded as segment's before they are written (a folder it adds to; see own_entries).
        own_entries(self.out, [f"results{tag}.csv", f"results{tag}.jsonl",
                               *([f"accuracy{tag}.csv"] if self.accuracy.rows else [])])
        _write_csv(self.out / f"results{tag}.csv", CSV_COLUMNS, self.rows)
        atomic_write_text(self.out / f"results{tag}.jsonl",
                          "".join(f"{j}\n" for j in self.jsonl))
        if self.accuracy.rows:
            path = self.out / f"accuracy{tag}.csv"
            _write_csv(path, ACCURACY_COLUMNS, self.accuracy.rows)
            lines.append(self.accuracy.summary() + f"; per frame in {path}")
        if refused is not None:
            raise refused
        return lines


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class _VideoOut:
    """The annotated video, written to a hidden temporary file of its own (a fresh name beside
    it, never a user's file) and published by :meth:`close` (also after a failure: the frames
    done are a valid, shorter video) under the rules of :class:`bpedge._out_file.OutFile`: a
    file there is replaced only if it is a video segment wrote, and only with ``replace``."""

    def __init__(self, target: OutFile, fps: float, width: int, height: int, *,
                 replace: bool) -> None:
        import cv2

        path = target.path
        self.target, self.replace = target, replace
        self.path, self.fps, self.size, self.frames = path, fps, (width, height), 0
        self.partial = target.new_temporary()
        fourcc = cv2.VideoWriter.fourcc(*("mp4v" if path.suffix.lower() in (".mp4", ".m4v",
                                                                            ".mov") else "MJPG"))
        self._writer = cv2.VideoWriter(str(self.partial), fourcc, fps, self.size)
        if not self._writer.isOpened():
            self.partial.unlink(missing_ok=True)
            raise RuntimeError(f"--save-video {path}: OpenCV cannot write this container here "
                               "(try .mp4 or .avi)")
        self.resized = False

    def write(self, picture: np.ndarray) -> None:
        import cv2

        if (picture.shape[1], picture.shape[0]) != self.size:
            # A video has one frame size: frames of another size are scaled to the first's.
            picture = cv2.resize(picture, self.size, interpolation=cv2.INTER_AREA)
            self.resized = True
        self._writer.write(picture)
        self.frames += 1

    def close(self) -> str:
        self._writer.release()
        try:
            self.target.publish(self.partial, replace=self.replace, replace_flag="--force")
        finally:
            self.partial.unlink(missing_ok=True)  # gone once published; else not left behind
        note = "; frames of other sizes were scaled to the first's" if self.resized else ""
        return (f"wrote {self.path}: {self.frames} frame(s) at {self.fps:g} fps, "
                f"{self.size[0]}x{self.size[1]}{note}")
