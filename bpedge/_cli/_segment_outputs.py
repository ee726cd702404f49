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
from dataclasses import dataclass
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

    mask = read_image_samples(path, "ground-truth mask ", labels=True)
    return np.where(mask != 0, 255, 0).astype(np.uint8)


@dataclass(frozen=True)
class _FrameAccuracy:
    """One frame's prediction against its ground-truth mask: its accuracy.csv row and what the
    summary line counts."""

    row: tuple[Any, ...]
    has_bp: bool
    dice: float
    hd95: float | None
    correct: bool


def _measure(frame: SourceFrame, result: Result, truth: np.ndarray) -> _FrameAccuracy:
    from bpedge._metrics import dice
    from bpedge._surface import hd95

    if truth.shape != result.mask.shape:
        raise ValueError(f"{frame.truth_path}: mask is {truth.shape[1]}x{truth.shape[0]}, "
                         f"the frame {result.mask.shape[1]}x{result.mask.shape[0]}")
    has_bp = bool(truth.any())
    d = dice(result.mask, truth, empty=1.0)
    h = hd95(result.mask, truth)
    correct = has_bp == bool(result.present)
    row = (spreadsheet_cell(frame.source), frame.index, int(has_bp), int(result.present),
           int(correct), f"{d:.6f}", "" if h is None else f"{h:.3f}")
    return _FrameAccuracy(row, has_bp, d, h, correct)


def _accuracy_summary(frames: list[_FrameAccuracy]) -> str:
    n = len(frames)
    dice_positive = [f.dice for f in frames if f.has_bp]
    hd95 = [f.hd95 for f in frames if f.has_bp and f.hd95 is not None]
    tp = sum(f.has_bp and f.correct for f in frames)
    fn = sum(f.has_bp and not f.correct for f in frames)
    tn = sum(not f.has_bp and f.correct for f in frames)
    fp = sum(not f.has_bp and not f.correct for f in frames)
    parts: list[str] = []
    if dice_positive:
        parts.append(f"Dice over BP frames {np.mean(dice_positive):.4f} "
                     f"({len(dice_positive)} frames)")
    parts.append(f"Dice over all frames (empty vs empty = 1) "
                 f"{np.mean([f.dice for f in frames]):.4f}")
    if hd95:
        parts.append(f"HD95 median {np.median(hd95):.1f} px")
    parts.append(f"presence correct {tp + tn}/{n} (sensitivity {tp}/{tp + fn}, specificity "
                 f"{tn}/{tn + fp})")
    return f"accuracy against {n} ground-truth mask(s): " + "; ".join(parts)


@dataclass(frozen=True)
class _Done:
    """A frame's lines in the tables, recorded in one step once its files are written."""

    row: tuple[Any, ...]
    jsonl: str
    accuracy: _FrameAccuracy | None


@dataclass(frozen=True)
class _InFlight:
    """The frame being written: its record and the files written for it so far (each listed
    once its write has returned: a file that failed to be written is not this run's to remove,
    whoever holds that name)."""

    done: _Done
    files: list[Path]


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
        self.done: list[_Done] = []
        self._in_flight: _InFlight | None = None
        self._video_path = video
        self._replace_video = replace_video
        self._video_fps = video_fps
        self._video: _VideoOut | None = None
        for sub, wanted in (("masks", masks), ("overlays", overlays)):
            if wanted:
                (out / sub).mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The results.csv rows of the frames done, in order."""
        return [d.row for d in self.done]

    def add(self, frame: SourceFrame, result: Result) -> None:
        """Write the frame's mask and overlay, then record its rows, then add it to the video.

        The record is one list append after the files: a run stopped (Ctrl-C) before it leaves
        files whose frame has no row, which :meth:`remove_unrecorded_frame` removes; the video
        gets the frame only once it is recorded."""
        from bpedge._overlay import write_png

        truth, accuracy = self._accuracy(frame, result)
        picture = None
        if self.overlays or self._video_path is not None:
            picture = result.plot(truth=truth)
        x0, y0, x1, y1 = result.box
        done = _Done(
            row=(spreadsheet_cell(frame.source), frame.index, int(result.present),
                 f"{result.score:.6f}", f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}", f"{y1:.2f}",
                 f"{result.timings.get('total', float('nan')):.3f}"),
            jsonl=json.dumps({"file": frame.source, "frame": frame.index, **result.to_dict()}),
            accuracy=accuracy)
        mask_path = self.out / "masks" / f"{frame.name}.png" if self.masks else None
        overlay_path = self.out / "overlays" / f"{frame.name}.png" if self.overlays else None
        flight = self._in_flight = _InFlight(done, [])
        if mask_path is not None:
            write_png(mask_path, result.mask)
            flight.files.append(mask_path)
        if overlay_path is not None and picture is not None:
            write_png(overlay_path, picture)
            flight.files.append(overlay_path)
        self.done.append(done)
        if self._video_path is not None and picture is not None:
            self._add_to_video(self._video_path, frame, picture)

    def _accuracy(self, frame: SourceFrame,
                  result: Result) -> tuple[np.ndarray | None, _FrameAccuracy | None]:
        """The frame's ground truth and accuracy, (None, None) without a usable mask."""
        if frame.truth_path is None:
            return None, None
        try:
            truth = _read_truth(frame.truth_path)
            return truth, _measure(frame, result, truth)  # checks the size first
        except ValueError as exc:
            if self._skip_truth is None:
                raise
            self._skip_truth(str(frame.truth_path),
                             f"{exc} ({frame.name} is written without accuracy)")
            return None, None

    def _add_to_video(self, target: OutFile, frame: SourceFrame, picture: np.ndarray) -> None:
        if self._video is None:
            fps = self._video_fps or frame.fps or 10.0
            self._video = _VideoOut(target, fps, picture.shape[1], picture.shape[0],
                                    replace=self._replace_video)
        self._video.write(picture)

    def remove_unrecorded_frame(self) -> None:
        """Remove the mask and overlay of a frame whose rows were not recorded (the run stopped
        while :meth:`add` wrote it), so every file in masks/ and overlays/ has its row. Only
        files whose write returned are removed: this run wrote them."""
        flight = self._in_flight
        if flight is None or (self.done and self.done[-1] is flight.done):
            return
        for path in flight.files:
            path.unlink(missing_ok=True)
        self._in_flight = None

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
        accuracy = [d.accuracy for d in self.done if d.accuracy is not None]
        # Recorded as segment's before they are written (a folder it adds to; see own_entries).
        own_entries(self.out, [f"results{tag}.csv", f"results{tag}.jsonl",
                               *([f"accuracy{tag}.csv"] if accuracy else [])])
        _write_csv(self.out / f"results{tag}.csv", CSV_COLUMNS, self.rows)
        atomic_write_text(self.out / f"results{tag}.jsonl",
                          "".join(f"{d.jsonl}\n" for d in self.done))
        if accuracy:
            path = self.out / f"accuracy{tag}.csv"
            _write_csv(path, ACCURACY_COLUMNS, [a.row for a in accuracy])
            lines.append(_accuracy_summary(accuracy) + f"; per frame in {path}")
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
            target.discard(self.partial)
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
            self.target.discard(self.partial)  # gone once published; else not left behind
        note = "; frames of other sizes were scaled to the first's" if self.resized else ""
        return (f"wrote {self.path}: {self.frames} frame(s) at {self.fps:g} fps, "
                f"{self.size[0]}x{self.size[1]}{note}")
