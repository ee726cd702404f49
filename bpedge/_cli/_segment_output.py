"""Where ``bpedge segment`` writes, and the rules that keep a user's files safe there.

``OUT`` is claimed through :mod:`bpedge._out_dir`: a new or empty folder, or one segment made; a
non-empty folder it did not make only with ``--add-to-existing``, and then only new entries are
added. The entries of a run are ``masks/``, ``overlays/``, ``results.csv`` (with
``results.jsonl`` and ``accuracy.csv``) and, while it runs, ``INCOMPLETE.txt`` and the partial
tables its rows are appended to (``results.partial.csv``, ``results.partial.jsonl``,
``accuracy.partial.csv``), which a killed run leaves:

* ``INCOMPLETE.txt`` is written before the first mask and removed after ``results.csv``, which is
  written last (atomically), so a folder is a complete result set exactly when it has
  ``results.csv`` and no ``INCOMPLETE.txt``. A run that fails or is killed leaves the note saying
  so, and the next run into that folder is refused until ``--force`` replaces it.
* ``--force`` replaces only entries segment wrote: each is recorded in the marker before it is
  written (:func:`own_entries`), also in a folder segment made, where the user may add files
  afterwards; any other entry is named and refused. In ``masks/`` and ``overlays/`` each PNG is
  listed in :data:`PNG_RECORD` with the device and inode it will have before it takes its name
  (:class:`PngRecord`), and ``--force`` replaces such a folder only when it holds nothing but
  the files listed (a user's PNG dropped there, or one written over a run's, is named and
  refused, and nothing is removed).
* one run at a time per folder (:func:`bpedge._out_dir.lock_out_dir`).
* output names are unique across every image and video frame of the run, compared
  case-insensitively (a case-insensitive filesystem would merge ``A.png`` and ``a.png``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from bpedge._atomic import atomic_write_text
from bpedge._manifest_fields import sha256_file
from bpedge._out_dir import (
    OutDirRefused,
    claim_out_dir,
    lock_out_dir,
    set_written_entries,
    written_entries,
)

if TYPE_CHECKING:
    from bpedge._cli._frame_sources import FrameSource

COMMAND = "segment"
RESULTS = "results.csv"
INCOMPLETE = "INCOMPLETE.txt"
SUBFOLDERS = ("masks", "overlays")
#: One line per mask or overlay PNG a run writes (its path under OUT, device and inode), appended
#: before the file takes its name: what ``--force`` may remove from ``masks/`` and ``overlays/``.
PNG_RECORD = ".bpedge-segment-pngs.jsonl"
#: Issue 16's per-frame JSON and accuracy tables, written with results.csv, and the *.partial.*
#: tables a run that failed mid-way leaves (so --force replaces them and a foreign file of that
#: name is refused like results.csv).
EXTRA_TABLES = ("results.jsonl", "accuracy.csv", "results.partial.csv", "results.partial.jsonl",
                "accuracy.partial.csv")
ENTRIES = (*SUBFOLDERS, RESULTS, *EXTRA_TABLES, PNG_RECORD, INCOMPLETE)
_VIDEO_NAME = re.compile(r"^(?P<stem>.*)_f\d{6}$")


def output_names(sources: Sequence[FrameSource]) -> dict[Path, str]:
    """A unique output stem per source: two inputs may share a file name, and a video's frames
    (``STEM_fNNNNNN``) must not take the name of an image (``STEM_f000001.png``)."""
    video_stems = {m["stem"] for s in sources if not s.video
                   if (m := _VIDEO_NAME.match(s.path.stem.casefold()))}
    names: dict[Path, str] = {}
    used: set[str] = set()
    for source in sources:
        stem, k = source.path.stem, 2
        name = stem
        # A name is taken if used; a video stem also if an image is named like its frames.
        while name.casefold() in used or (source.video and name.casefold() in video_stems):
            name, k = f"{stem}-{k}", k + 1
        used.add(name.casefold())
        names[source.path] = name
    return names


def written_into(out: Path, path: Path) -> Path | None:
    """The subfolder of ``out`` that segment clears and writes (``masks/``, ``overlays/``) that
    ``path`` lies in (links resolved), or None."""
    where = Path(os.path.realpath(path))
    for sub in SUBFOLDERS:
        folder = Path(os.path.realpath(out / sub))
        if where == folder or folder in where.parents:
            return out / sub
    return None


def _clear_earlier_run(out: Path, *, force: bool) -> None:
    """Clear what an earlier run left (only with ``force``, only segment's own entries). Raises
    :class:`OutDirRefused` (exit 2) naming what is in the way and what to do."""
    present = _refuse_foreign_entries(out)
    if not present:
        return
    earlier = ("the partial results of an earlier run that did not finish (see "
               f"{out / INCOMPLETE})" if INCOMPLETE in present or RESULTS not in present
               else "the results of an earlier run")
    if not force:
        raise OutDirRefused(f"{out} holds {earlier}: choose a new --out, or pass --force to "
                            "replace them")
    listed = _listed_pngs(out)
    pngs = {sub: _run_pngs(out / sub, listed) for sub in SUBFOLDERS}  # all checked, then removed
    # results.csv goes first: from here on the folder reads as incomplete until this run is done.
    # The PNG record goes after the PNGs: a kill in between leaves each remaining PNG listed.
    for name in (RESULTS, *EXTRA_TABLES, *SUBFOLDERS, PNG_RECORD, INCOMPLETE):
        path = out / name
        if name in pngs:
            _remove_run_pngs(path, pngs[name])
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _refuse_foreign_entries(out: Path) -> list[str]:
    """The run entries present in ``out``; :class:`OutDirRefused` naming every one of them that
    segment is not recorded to have written (the user's, made after a run that wrote no such
    entry, or any in a folder whose marker predates the record)."""
    written = written_entries(out, COMMAND)
    present = [e for e in ENTRIES if os.path.lexists(out / e)]
    foreign = [e for e in present if written is None or e not in written]
    if foreign:
        listed = ", ".join(str(out / e) for e in foreign)
        it, they = ("it", "it is") if len(foreign) == 1 else ("them", "they are")
        why = (f"segment did not write {it}" if written is not None else
               f"this folder's marker is from a bpedge that did not record what segment wrote, "
               f"so {they} not known to be segment's")
        raise OutDirRefused(f"{listed}: {why}; {they} never overwritten or deleted: move {it} "
                            "away, or choose another --out")
    return present


def own_entries(out: Path, names: Iterable[str]) -> None:
    """Record ``names`` as written by segment before they are written, and forget recorded
    entries that are gone. Only recorded entries are ever replaced (``--force``): recording every
    name a run might write, or (in a folder segment made) none, made ``--force`` delete an
    ``overlays/`` or ``accuracy.csv`` the user put there after a run that never wrote one."""
    recorded = written_entries(out, COMMAND)
    present = {e for e in recorded or () if os.path.lexists(out / e)}
    if recorded is None or present | set(names) != recorded:
        set_written_entries(out, COMMAND, present | set(names))


def disown_entries(out: Path, names: Iterable[str]) -> None:
    """Forget ``names`` as segment's: a name recorded just before it was to be created, but
    found taken by a file that appeared meanwhile, is that file's owner's, and a later
    ``--force`` must never delete it."""
    recorded = written_entries(out, COMMAND)
    if recorded is not None and recorded & set(names):
        set_written_entries(out, COMMAND, recorded - set(names))


#: A PNG's temporary name while bpedge._atomic writes it (``tempfile.mkstemp``'s 8 random
#: characters): a run killed mid-write leaves one, and the rerun that replaces the folder must not
#: take it for the user's.
_ATOMIC_LEFTOVER = re.compile(r"\.(?P<name>.+\.png)\.[A-Za-z0-9_]{8}\.tmp", re.IGNORECASE)


class PngRecord:
    """The run's :data:`PNG_RECORD`: :meth:`add` appends a PNG's line before the file takes its
    name (each line one ``write`` to the OS, so it outlives a killed process). The record is made
    (exclusively: never over a file at its name) at the first PNG, and listed as segment's first."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._fd: int | None = None

    def add(self, path: Path, made: os.stat_result, data: bytes) -> None:
        """List ``path`` (under ``out``) as the file with ``made``'s device and inode and the
        bytes ``data`` (their sha256: an inode number is used again once its file is gone, so a
        PNG the user saved over the run's could have the run's inode number)."""
        if self._fd is None:
            own_entries(self.out, [PNG_RECORD])
            flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                     | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
            try:
                self._fd = os.open(self.out / PNG_RECORD, flags, 0o666)
            except FileExistsError:
                disown_entries(self.out, [PNG_RECORD])  # put there during the run: its owner's
                raise
        line = json.dumps({"file": path.relative_to(self.out).as_posix(), "dev": made.st_dev,
                           "ino": made.st_ino, "sha256": hashlib.sha256(data).hexdigest()}) + "\n"
        data = line.encode("utf-8")
        if os.write(self._fd, data) != len(data):
            raise OSError(errno.ENOSPC, "a line of the PNG record was cut short",
                          str(self.out / PNG_RECORD))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _listed_pngs(out: Path) -> dict[tuple[str, int, int], str]:
    """The PNGs an earlier run listed in its record: (path under ``out``, device, inode) -> the
    sha256 of its bytes. A line a kill cut short is not a listing."""
    path = out / PNG_RECORD
    if not path.is_file() or path.is_symlink():
        return {}
    listed = {}
    with path.open("rb") as f:
        for raw in f:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and type(entry.get("dev")) is int and type(entry.get("ino")) is int
                    and isinstance(entry.get("sha256"), str)):
                listed[(entry["file"], entry["dev"], entry["ino"])] = entry["sha256"]
    return listed


def _run_pngs(folder: Path, listed: dict[tuple[str, int, int], str]) -> list[Path]:
    """Every entry of ``folder``, each a PNG that the record lists as that very file with those
    very bytes, or the temporary of one (its file, or empty); :class:`OutDirRefused` naming the
    first that is not (nothing removed)."""
    if not folder.exists() and not folder.is_symlink():
        return []
    if folder.is_symlink() or not folder.is_dir():
        raise OutDirRefused(f"{folder} is not a folder segment made; it is left as it is: choose "
                            "another --out")
    entries = []
    for entry in folder.iterdir():
        info = os.lstat(entry)
        leftover = _ATOMIC_LEFTOVER.fullmatch(entry.name)
        name = leftover["name"] if leftover else entry.name
        digest = listed.get((f"{folder.name}/{name}", info.st_dev, info.st_ino))
        if entry.is_file() and not entry.is_symlink() and (
                # A temporary is cut short, so its bytes are not the listed ones yet.
                (digest is not None and leftover)
                or (digest is not None and entry.suffix.lower() == ".png"
                    and sha256_file(entry) == digest)
                # Killed between creating the temporary and listing it: empty, nobody's bytes.
                or (leftover and info.st_size == 0)):
            entries.append(entry)
            continue
        raise OutDirRefused(f"{folder} holds {entry.name}, which segment did not record writing "
                            "there; nothing was replaced: move it away, or choose another --out")
    return entries


def _remove_run_pngs(folder: Path, pngs: list[Path]) -> None:
    for png in pngs:
        png.unlink()
    if folder.is_dir() and not folder.is_symlink():
        try:
            folder.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise OutDirRefused(f"{folder}: a file appeared there while segment cleared it; it "
                                "was kept: move it away, and run again with --force") from None


@contextlib.contextmanager
def run_in(out: Path, *, force: bool, add_to_existing: bool, masks: bool,
           overlays: bool) -> Iterator[None]:
    """Hold ``out`` for one run: claim and lock it, clear an earlier run's entries (``force``),
    mark it incomplete and make the subfolders; the caller writes the masks, overlays and finally
    ``results.csv`` (:func:`finish`). On an error the incomplete note stays and says why.
    Raises :class:`OutDirRefused` before writing anything when ``out`` is not segment's to use."""
    if add_to_existing and out.is_dir():
        _refuse_foreign_entries(out)  # before the marker is written into the user's folder
    claim_out_dir(out, COMMAND, add_to_existing=add_to_existing, add_flag="--add-to-existing")
    with lock_out_dir(out, COMMAND):
        _clear_earlier_run(out, force=force)
        own_entries(out, [INCOMPLETE, *(sub for sub, wanted in zip(SUBFOLDERS, (masks, overlays))
                                        if wanted)])
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(out / INCOMPLETE, f"bpedge segment started at {started} and has not "
                          f"finished: {RESULTS} is written when every frame is done; until "
                          "then each frame's rows are in results.partial.csv (a last line "
                          "without its line break was cut short and is not a row). Re-run "
                          "with --force to replace these partial results.\n")
        for sub, wanted in zip(SUBFOLDERS, (masks, overlays)):
            if wanted:
                (out / sub).mkdir()
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(OSError):  # keep the original error; the note is a bonus
                note = (out / INCOMPLETE).read_text()
                atomic_write_text(out / INCOMPLETE, f"{note}It stopped: {type(exc).__name__}: "
                                  f"{exc}\n")
            raise


def finish(out: Path, csv_text: str) -> None:
    """Write ``results.csv``, then drop the incomplete note: the set is complete."""
    atomic_write_text(out / RESULTS, csv_text)
    (out / INCOMPLETE).unlink()
