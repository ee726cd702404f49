"""What ``bpedge segment`` writes per frame and at the end: mask and overlay PNGs, ``results.csv``,
``results.jsonl`` (``Result.to_dict`` per frame), ``accuracy.csv`` against ground-truth masks found
beside the frames, and the annotated video (``--save-video``).

``results.csv`` keeps the same columns whatever the input, so scripts that parse it never meet
columns that come and go; accuracy goes to its own file.

While a run goes on, each frame's rows are appended to ``results.partial.csv``,
``results.partial.jsonl`` and ``accuracy.partial.csv`` as it is recorded (:class:`_PartialTables`),
so a run killed outright (SIGKILL, the OOM killer, power loss) keeps the rows of its frames; a
finished run replaces them with the final tables. Those are copied from a private spool of the
same lines (an unnamed temporary file beside the tables, which nobody else can open, change or
truncate; the partial tables are the user's to move or edit), not kept in memory: a camera run
that went on for hours held about 1 KB a frame until it ended. Only ground-truth scores, a few
numbers a frame, stay in memory for the summary.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import locale
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from bpedge._atomic import atomic_open, fsync_dir
from bpedge._cli._segment_output import PngRecord, disown_entries, own_entries
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


@dataclass(frozen=True)
class _Score:
    """What the accuracy summary counts of one frame (its row is in the tables, not here)."""

    has_bp: bool
    dice: float
    hd95: float | None
    correct: bool


def _accuracy_summary(frames: list[_Score]) -> str:
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
    """The frame being written: its record and the files begun for it, each with the
    ``(st_dev, st_ino)`` its file has once published. A file is listed before it can take its
    name: listed only once its write returned, a file published by a write that Ctrl-C stopped
    before returning (in its directory fsync) stayed without its row. The identity tells this
    run's file from another at the name (a write that failed is not this run's to remove)."""

    done: _Done
    files: list[tuple[Path, tuple[int, int]]]

    def begin(self, path: Path) -> Callable[[os.stat_result], None]:
        """What the ``before_publish`` of :func:`bpedge._overlay.write_png` for ``path`` calls
        with the temporary file's stat."""
        return lambda made: self.files.append((path, (made.st_dev, made.st_ino)))


#: Appends whole lines and never follows or replaces what is at the name: O_EXCL refuses any
#: existing file or symbolic link there. O_BINARY (Windows) keeps the bytes as given.
_APPEND_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


#: Longest time a recorded row waits to be forced to the disk itself (fsync). Written to the OS at
#: once, a row outlives a killed process; this bounds what a power loss takes. Measured on 300
#: frames of the tiny test bundle (40-70 ms a frame on 2 shared cores): writing a frame's lines
#: costs 0.08 ms; an fsync of the tables per frame cost 0.7 ms median, 12 ms at p95 (1 s in all),
#: once a second 0.25 s in all.
_SYNC_EVERY_S = 1.0


def _write_all(fd: int, data: bytes) -> None:
    while data:  # one call unless the OS takes part of it (a full disk then fails the next)
        data = data[os.write(fd, data):]


def _csv_line(row: tuple[Any, ...]) -> str:
    """``row`` as one CSV line: the format of every segment table, partial or final."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


class _AppendedTable:
    """One partial table: created (never over an existing file) with its header, then a line at
    a time, each in one ``write`` call on an unbuffered descriptor, so the line is with the OS
    when :meth:`append` returns and a SIGKILL cannot lose it. The same bytes go to a spool, an
    unnamed temporary file, from which :meth:`copy_recorded` gives the final table: reading the
    partial table back published whatever a user had written into it (``cp`` over it, an
    appended note, a truncation) as the run's rows."""

    def __init__(self, path: Path, header: str) -> None:
        self.path, self._header = path, header
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self.created = False
        self._spool: IO[bytes] | None = None
        self._size = 0  # bytes appended (whole calls)
        self._recorded = 0  # of which the lines of recorded frames (and the header)

    def create(self) -> None:
        """Create the file with its header. ``FileExistsError`` names it when something is
        already there (it appeared during the run: the run cleared or refused it at the start)."""
        try:
            self._fd = os.open(self.path, _APPEND_FLAGS, 0o666)
        except FileExistsError:
            raise _appeared(self.path) from None
        made = os.fstat(self._fd)
        self._identity = (made.st_dev, made.st_ino)
        self.created = True
        try:
            # On the tables' filesystem (its space is what the tables take anyway), nameless
            # where the system can (Linux's O_TMPFILE), else unlinked as soon as it is made.
            self._spool = tempfile.TemporaryFile(dir=self.path.parent)  # noqa: SIM115 - closed by close_spool()
        except OSError as exc:
            raise self._failed(exc, "making the spool of") from exc
        if self._header:
            self.append(self._header)

    def append(self, text: str) -> None:
        """Write ``text`` (whole lines) at the end of the file."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not open: create() it first")
        data = _as_text_file_bytes(text)
        try:
            _write_all(self._fd, data)
            if self._spool is not None:
                # At the spool's own end: after a failed write, the next append follows the
                # recorded lines, not a piece of a line.
                spool = self._spool.fileno()
                os.lseek(spool, self._size, os.SEEK_SET)
                _write_all(spool, data)
        except OSError as exc:
            raise self._failed(exc, "appending a row to") from exc
        self._size += len(data)

    def mark_recorded(self) -> None:
        """Everything appended so far belongs to recorded frames (a later line may not)."""
        self._recorded = self._size

    def copy_recorded(self, target: IO[bytes]) -> None:
        """Write the header and the lines of the recorded frames to ``target``, a megabyte at a
        time, from the spool (nothing when the table was never created)."""
        if self._spool is None:
            return
        spool, offset = self._spool.fileno(), 0
        try:
            while offset < self._recorded:
                chunk = os.pread(spool, min(self._recorded - offset, 1 << 20), offset)
                if not chunk:  # only this run has the spool: its bytes do not go away
                    raise OSError(errno.EIO, f"the spool of {self.path.name} ended at byte "
                                  f"{offset} of {self._recorded}")
                target.write(chunk)
                offset += len(chunk)
        except OSError as exc:
            raise self._failed(exc, "copying the rows of") from exc

    def sync(self) -> None:
        """Force what was appended to the disk (for a power loss; a kill loses nothing)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise self._failed(exc, "forcing to the disk") from exc

    def _failed(self, exc: OSError, doing: str) -> OSError:
        # os.write and os.fsync take a descriptor, so their error names no file: "[Errno 28] No
        # space left on device" alone says neither which table failed nor where the rows are.
        # Same errno, so the same OSError subclass and the same handling upstream.
        return OSError(exc.errno, f"{exc.strerror} while {doing} {self.path.name} (its earlier "
                       "lines are whole)", str(self.path))

    def close(self) -> None:
        """Close the partial table (the spool stays open for :meth:`copy_recorded`)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close_spool(self) -> None:
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()

    def still_ours(self) -> bool:
        """Whether the name still holds the file this run created: while the run went on, the
        user may have moved it away and put a file of their own at the name."""
        if not self.created:
            return False
        try:
            named = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (named.st_dev, named.st_ino) == self._identity

    def remove(self) -> None:
        """Close and delete the file, if this run created it and it is still at its name (only
        then is it this run's)."""
        self.close()
        if self.still_ours():
            self.path.unlink(missing_ok=True)
        self.created = False


def _as_text_file_bytes(text: str) -> bytes:
    # The bytes a text-mode file (atomic_write_text, which writes the final tables) would hold,
    # so a killed run's partial tables read like a failed run's rewritten ones.
    return text.replace("\n", os.linesep).encode(locale.getpreferredencoding(False))


class _PartialTables:
    """``results.partial.csv``, ``results.partial.jsonl`` and ``accuracy.partial.csv`` of the run
    in progress, appended to as each frame is recorded, so a run killed outright keeps the rows of
    every frame recorded before it, in order, each whole line after its mask and overlay; for a
    power loss, the lines are forced to the disk (fsync) with the first frame recorded
    :data:`_SYNC_EVERY_S` after the last time.

    Each file is recorded as segment's (:func:`own_entries`) before it is created, so ``--force``
    replaces it after a killed run; the accuracy table is made at the first frame with ground
    truth, the others at the first frame. A kill inside a ``write`` call can leave the last line
    cut short: it has no newline at its end and is not a row (a reader drops it)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results = _AppendedTable(out / "results.partial.csv", _csv_line(CSV_COLUMNS))
        self.jsonl = _AppendedTable(out / "results.partial.jsonl", "")
        self.accuracy = _AppendedTable(out / "accuracy.partial.csv", _csv_line(ACCURACY_COLUMNS))
        self._synced = time.monotonic()

    def append(self, done: _Done) -> None:
        """Append the frame's lines, creating the tables the first time each is needed."""
        if not self.results.created:
            self._create(self.results, self.jsonl)
        if done.accuracy is not None and not self.accuracy.created:
            self._create(self.accuracy)
        self.results.append(_csv_line(done.row))
        self.jsonl.append(f"{done.jsonl}\n")
        if done.accuracy is not None:
            self.accuracy.append(_csv_line(done.accuracy.row))
        if time.monotonic() - self._synced >= _SYNC_EVERY_S:
            self._sync()

    def mark_recorded(self) -> None:
        """The lines appended so far are all of recorded frames."""
        for table in (self.results, self.jsonl, self.accuracy):
            table.mark_recorded()

    def close_spools(self) -> None:
        for table in (self.results, self.jsonl, self.accuracy):
            table.close_spool()

    def _sync(self) -> None:
        for table in (self.results, self.jsonl, self.accuracy):
            table.sync()
        self._synced = time.monotonic()

    def _create(self, *tables: _AppendedTable) -> None:
        names = [t.path.name for t in tables]
        own_entries(self.out, names)
        try:
            for table in tables:
                table.create()
            fsync_dir(self.out)  # the new names, too, outlive a power loss
        except FileExistsError:
            # Someone else's file took a name recorded a moment ago: it must not be ours to
            # delete with --force. Ours of the pair, if created, stays recorded.
            disown_entries(self.out, [t.path.name for t in tables if not t.created])
            raise

    def close(self) -> None:
        for table in (self.results, self.jsonl, self.accuracy):
            table.close()

    def still_ours(self) -> list[Path]:
        """The tables this run created that are still at their names."""
        return [t.path for t in (self.results, self.jsonl, self.accuracy) if t.still_ours()]

    def holds(self, name: str) -> bool:
        """Whether ``name`` is one of these tables and still the file this run created."""
        return any(t.path.name == name and t.still_ours()
                   for t in (self.results, self.jsonl, self.accuracy))

    def remove_all_but(self, kept: set[str]) -> None:
        """Delete the tables this run created, but those named in ``kept``."""
        taken = []
        for table in (self.results, self.jsonl, self.accuracy):
            if table.path.name in kept:
                table.close()
                continue
            if table.created and not table.still_ours() and os.path.lexists(table.path):
                taken.append(table.path.name)  # a file put there during the run: its owner's
            table.remove()
        if taken:
            disown_entries(self.out, taken)


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
        #: Frames recorded, and of them those with the BP present.
        self.recorded_frames = self.present_frames = 0
        self._last_recorded: _Done | None = None
        self._scores: list[_Score] = []
        self._partial = _PartialTables(out)
        #: The tables :meth:`finish` has written so far (the frames done, and nothing else).
        self._written: list[Path] = []
        self._in_flight: _InFlight | None = None
        self._pngs = PngRecord(out)
        self._video_path = video
        self._replace_video = replace_video
        self._video_fps = video_fps
        self._video: _VideoOut | None = None
        for sub, wanted in (("masks", masks), ("overlays", overlays)):
            if wanted:
                (out / sub).mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def add(self, frame: SourceFrame, result: Result) -> None:
        """Write the frame's mask and overlay, then record its rows, then add it to the video.

        The record, after the files, is the frame's lines appended to the partial tables (on disk
        at once, for a run killed outright), then marking them recorded: a run stopped (Ctrl-C,
        an error) before that leaves files whose frame has no row, which
        :meth:`remove_unrecorded_frame` removes, and :meth:`finish` rewrites the partial tables
        with the recorded lines only; the video gets the frame only once it is recorded."""
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
            _write_new_png(mask_path, result.mask, flight, self._pngs)
        if overlay_path is not None and picture is not None:
            _write_new_png(overlay_path, picture, flight, self._pngs)
        self._partial.append(done)
        self._partial.mark_recorded()
        self.recorded_frames += 1
        self.present_frames += int(result.present)
        if accuracy is not None:
            self._scores.append(_Score(accuracy.has_bp, accuracy.dice, accuracy.hd95,
                                       accuracy.correct))
        self._last_recorded = done
        if self._video_path is not None and picture is not None:
            self._add_to_video(self._video_path, frame, picture)

    def tables_with_rows(self) -> list[Path]:
        """Where the rows of the frames done are, in order, first in each file: the tables
        :meth:`finish` wrote, and the partial tables appended to during the run that still hold
        this run's file (after a failed :meth:`finish`: their first rows are the frames done,
        then a line of the frame that stopped the run may follow). A name the user took during
        the run holds none of them."""
        return list(dict.fromkeys([*self._written, *self._partial.still_ours()]))

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
        while :meth:`add` wrote it), so every file in masks/ and overlays/ has its row. Only the
        file this run wrote is removed: one whose write was stopped before publishing left no
        file at the name, and another file there now is someone else's."""
        flight = self._in_flight
        if flight is None or self._last_recorded is flight.done:
            return
        for path, identity in flight.files:
            try:
                named = os.lstat(path)
            except FileNotFoundError:
                continue
            if (named.st_dev, named.st_ino) == identity:
                path.unlink()
        self._in_flight = None

    def finish(self, complete: bool = True) -> list[str]:
        """Write the tables (and close the video); the lines to show the user. A run that did
        not finish writes its tables as ``*.partial.*`` (``results.csv`` means complete), none
        when no frame was recorded.

        The partial tables appended during the run are rewritten whole from the frames recorded
        (atomically): a line appended for a frame that was then not recorded, or cut short by a
        failed write, is gone. A complete run's final tables replace them."""
        lines = []
        refused: OutFileRefused | None = None
        self._partial.close()
        self._pngs.close()
        if self._video is not None:
            try:
                lines.append(self._video.close())
            except OutFileRefused as exc:  # a file appeared at --save-video: the tables still go
                refused = exc
        written: set[str] = set()
        try:
            if complete or self.recorded_frames:
                written = self._write_tables("" if complete else ".partial", lines)
        finally:
            self._partial.close_spools()
        # After the final tables: a run killed in between still has every row on disk.
        self._partial.remove_all_but(written)
        if refused is not None:
            raise refused
        return lines

    def _write_tables(self, tag: str, lines: list[str]) -> set[str]:
        """Write the tables of the frames done, named with ``tag``, from the spools, and add the
        accuracy summary to ``lines``; the names written."""
        partial = self._partial
        # A recorded frame with ground truth, not the table's existence: a table made for a
        # frame whose recording then failed holds only its header.
        accuracy = bool(self._scores)
        names = [f"results{tag}.csv", f"results{tag}.jsonl",
                 *([f"accuracy{tag}.csv"] if accuracy else [])]
        # Only this run's own partial tables are replaced: the start of the run cleared (with
        # --force) or refused every other name, so a file there now was put there during the run
        # by someone else and is kept (FileExistsError; the rows stay in the partial tables).
        replace = {name: self._partial.holds(name) for name in names}
        taken = [n for n in names if not replace[n] and os.path.lexists(self.out / n)]
        if taken:
            disown_entries(self.out, taken)  # its owner's: a later --force must not delete it
            raise _appeared(self.out / taken[0])
        # Recorded as segment's before they are written (a folder it adds to; see own_entries).
        own_entries(self.out, names)
        # results.csv last: it is the name that means "complete", and a run stopped while the
        # tables were written had left it beside INCOMPLETE.txt and no results.jsonl.
        _write_table(self.out / f"results{tag}.jsonl", partial.jsonl.copy_recorded,
                     replace=replace[f"results{tag}.jsonl"])
        self._written.append(self.out / f"results{tag}.jsonl")
        if accuracy:
            path = self.out / f"accuracy{tag}.csv"
            _write_table(path, partial.accuracy.copy_recorded, replace=replace[path.name])
            self._written.append(path)
            lines.append(_accuracy_summary(self._scores) + f"; per frame in {path}")
        results = partial.results
        header = _as_text_file_bytes(_csv_line(CSV_COLUMNS))
        # Before the first frame the results table was never made: its header alone.
        _write_table(self.out / f"results{tag}.csv",
                     results.copy_recorded if results.created else lambda f: f.write(header),
                     replace=replace[f"results{tag}.csv"])
        self._written.insert(0, self.out / f"results{tag}.csv")
        return set(names)


def _write_new_png(path: Path, image: np.ndarray, flight: _InFlight, record: PngRecord) -> None:
    """Write a mask or overlay PNG of the frame in ``flight``, never over a file at its name:
    segment's masks/ and overlays/ start empty each run, so a file there was put there during
    the run, and is its owner's. Listed in ``record`` (on disk) before it takes its name."""
    from bpedge._overlay import write_png

    in_flight = flight.begin(path)

    def before_publish(made: os.stat_result, data: bytes) -> None:
        record.add(path, made, data)
        in_flight(made)

    try:
        write_png(path, image, replace=False, before_publish=before_publish)
    except FileExistsError:
        raise _appeared(path) from None


def _write_table(path: Path, write: Callable[[IO[bytes]], object], *, replace: bool) -> None:
    """Write a final table atomically: ``write`` gives its bytes (as a text file holds them)."""
    try:
        with atomic_open(path, "wb", replace=replace) as f:
            write(f)
    except FileExistsError:
        # Taken between the check and the write: its owner's, never to be deleted by --force.
        disown_entries(path.parent, [path.name])
        raise _appeared(path) from None
    except OSError as exc:
        if exc.filename is not None:
            raise
        # A full disk at the buffered file's last flush: "[Errno 28] No space left on device"
        # named no table.
        raise OSError(exc.errno, f"{exc.strerror} while writing {path.name}", str(path)) from exc


def _appeared(path: Path) -> FileExistsError:
    """A file at one of segment's table names that the start of the run had cleared or refused:
    put there during the run, so its owner's. The rows of the frames done stay in the partial
    tables (or, while those are being created, in nothing written yet)."""
    return FileExistsError(errno.EEXIST, "appeared while segment ran and is not overwritten: "
                           "move it away and run again with --force, or choose another --out",
                           str(path))


def video_signature(suffix: str) -> Callable[[bytes], bool]:
    """What the first bytes of a video OpenCV's writer has begun (:class:`_VideoOut`) look like
    for a ``--save-video`` name with ``suffix``: RIFF's ``AVI `` form for .avi, an ISO media
    file's leading ``ftyp`` box for .mp4/.m4v/.mov. The one test of a killed run's partial video
    that a forged record cannot pass for a file of the user's in another format
    (:attr:`bpedge._out_file.OutFile.partial_signature`)."""
    if suffix.lower() == ".avi":
        return lambda head: head[:4] == b"RIFF" and head[8:12] == b"AVI "
    return lambda head: head[4:8] == b"ftyp"


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
        # Opening truncated it (a new modification time): recorded again, so a run killed
        # before the writer's first bytes reach the file leaves a partial still known as ours.
        try:
            target.note_partial(self.partial)
        except BaseException:
            self._writer.release()
            target.discard(self.partial)
            raise
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
