"""The files a training run writes in its folder, and the record that makes them its own.

A run folder is train's (its ``.bpedge-out.json`` marker), but the user may still put files there:
their own ``metrics.csv`` after a run was killed, a note named like a temporary file. So a run
replaces a file at one of its names (``last.pt``, ``metrics.json``, ...) only when the file
holds the bytes the run recorded writing there, and removes a temporary file only when the run
recorded making it; anything else is refused with a ``ValueError`` naming the file (the CLI
prints one line, exit 2), and kept.

The record is ``.bpedge-train-files.json`` in the run folder:

* ``files``: for each name, the size and sha256 of what was written. While a file is being
  replaced it lists the old bytes and the new ones, written before the rename, so a run killed
  on either side of the rename leaves a file the next run still knows as its own.
* ``temporaries``: every temporary file (``.NAME.RANDOM.tmp``), listed by name before it is
  created (exclusively: a fresh name, never a file of anyone's) and by device and inode before
  anything is written into it. The next run (holding the folder's lock, so no run is writing
  them) removes a listed temporary that is still that very file (or, listed by name only, is
  still empty) under that pattern of name, and nothing else.

The record is a file anyone who can write the folder can write; it is only believed together
with what the files show (their bytes, their inode). The record's own temporary
(``..bpedge-train-files.json.RANDOM.tmp``, left by a kill while the record was written) is
removed when it holds a record (it opens as one) or nothing yet (a kill between creating it and
writing it, the likelier moment: the write is one call), and kept otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from bpedge._atomic import (
    TEMPORARY_NAME,
    atomic_write_json,
    free_temporary_name,
    fsync_dir,
    is_listed_temporary,
    publish,
)
from bpedge._manifest_fields import sha256_file

__all__ = ["RECORD_NAME", "check_run_files", "remove_abandoned_temporaries", "write_run_file",
           "write_run_json", "write_run_text"]

RECORD_NAME = ".bpedge-train-files.json"
_FORMAT = "bpedge-train-files"
_MAX_RECORD_BYTES = 1 << 20
#: How every record opens (its first key): a temporary of the record that a kill left (written
#: in one go by bpedge._atomic) is known by it.
_RECORD_HEAD = b'{\n  "format": "' + _FORMAT.encode() + b'"'


def _read_record(run_dir: Path) -> dict[str, Any]:
    """The record (an empty one when there is none). A file at the record's name that is not a
    record is the user's: refused, never written over."""
    path = run_dir / RECORD_NAME
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"files": {}, "temporaries": []}
    obj: Any = None
    if stat.S_ISREG(info.st_mode) and info.st_size <= _MAX_RECORD_BYTES:
        try:
            obj = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            obj = None
    if not (isinstance(obj, dict) and obj.get("format") == _FORMAT
            and isinstance(obj.get("files"), dict) and isinstance(obj.get("temporaries"), list)):
        raise ValueError(f"{path} is not bpedge's record of this run's files, so it is never "
                         "overwritten: move it away, or choose a new --out folder")
    return obj


def _save_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(run_dir / RECORD_NAME, {
        "format": _FORMAT,
        "files": record["files"],
        "temporaries": record["temporaries"],
        "note": "the files `bpedge train` wrote here (size and sha256): it replaces only these, "
                "and removes only the temporaries listed",
    })


def _recorded(record: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = record["files"].get(name)
    if not isinstance(found, list):
        return []
    return [i for i in found if isinstance(i, dict) and type(i.get("size")) is int
            and isinstance(i.get("sha256"), str)]


def _identity(path: Path) -> dict[str, Any]:
    return {"size": os.lstat(path).st_size, "sha256": sha256_file(path)}


def _check_slot(run_dir: Path, name: str, record: dict[str, Any]) -> bool:
    """Whether a file is at ``run_dir/name`` that the run may replace (False: the name is
    free); ValueError naming the file when something else is there."""
    path = run_dir / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(info.st_mode):
        known = _recorded(record, name)
        if any(i["size"] == info.st_size for i in known) \
                and _identity(path) in [{"size": i["size"], "sha256": i["sha256"]} for i in known]:
            return True
    raise ValueError(f"{path} was not written by this `bpedge train` run (it is not the file the "
                     "run recorded writing there), so it is never overwritten: move it away, or "
                     "choose a new --out folder")


def check_run_files(run_dir: Path, names: Iterable[str], *, adopt: bool = False) -> None:
    """Refuse (ValueError naming the file) unless every file at ``names`` in ``run_dir`` is one
    the run recorded writing: checked before the run does any work. ``adopt``: a run being
    resumed from its last.pt that has no record at all (one a bpedge before records wrote) has
    its files recorded as they are now."""
    record = _read_record(run_dir)
    if adopt and not (run_dir / RECORD_NAME).exists():
        for name in names:
            path = run_dir / name
            if path.is_file() and not path.is_symlink():
                record["files"][name] = [_identity(path)]
        _save_record(run_dir, record)
        return
    for name in names:
        _check_slot(run_dir, name, record)


def remove_abandoned_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporary files a killed run of this folder listed and left (the caller holds
    the folder's lock, so no run is writing them): each still the same file (device, inode)
    under a temporary's name. Returns what was removed."""
    removed = _remove_record_temporaries(run_dir)
    if not (run_dir / RECORD_NAME).exists():
        return removed
    record = _read_record(run_dir)
    for entry in record["temporaries"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and TEMPORARY_NAME.fullmatch(entry["name"])):
            continue
        path = run_dir / entry["name"]
        if is_listed_temporary(path, entry):
            path.unlink()
            removed.append(path)
    if record["temporaries"]:
        record["temporaries"] = []
        _save_record(run_dir, record)
    return removed


def _remove_record_temporaries(run_dir: Path) -> list[Path]:
    removed = []
    for path in run_dir.glob(f".{RECORD_NAME}.*.tmp"):
        if not TEMPORARY_NAME.fullmatch(path.name) or path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(len(_RECORD_HEAD))
        # Empty, or a record cut short: nothing of anyone else's is lost by removing it.
        if _RECORD_HEAD.startswith(head):
            path.unlink()
            removed.append(path)
    return removed


def _create_listed_temporary(run_dir: Path, name: str,
                             record: dict[str, Any]) -> tuple[int, Path, dict[str, Any]]:
    """A new temporary file for ``name``, listed in the record by name before it exists and by
    inode before anything is written into it. Returns its descriptor, path and entry."""
    tmp = free_temporary_name(run_dir, name)
    entry: dict[str, Any] = {"name": tmp.name}
    record["temporaries"].append(entry)
    _save_record(run_dir, record)
    # O_EXCL: a file that took the name since is never opened, let alone written.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o666)
    try:
        info = os.fstat(fd)
        entry.update(dev=info.st_dev, ino=info.st_ino)
        _save_record(run_dir, record)
    except BaseException:
        os.close(fd)
        tmp.unlink()
        raise
    return fd, tmp, entry


def write_run_file(run_dir: Path, name: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``run_dir/name`` atomically with ``write(f)``, replacing only a file the run
    recorded writing there (ValueError naming it otherwise, and it is kept)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = _read_record(run_dir)
    fd, tmp, listed = _create_listed_temporary(run_dir, name, record)
    try:
        with os.fdopen(fd, "wb") as f:
            fd = -1
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # Checked now, not before writing: a file put at the name meanwhile is kept too.
        replace = _check_slot(run_dir, name, record)
        new = _identity(tmp)
        old = _recorded(record, name) if replace else []
        record["files"][name] = [*old, new]  # both, until the rename is done
        _save_record(run_dir, record)
        try:
            publish(tmp, run_dir / name, replace=replace)
        except FileExistsError:
            raise ValueError(f"{run_dir / name} appeared while bpedge train was writing it; it "
                             "was left as it is: move it away, or choose a new --out") from None
        record["files"][name] = [new]
        record["temporaries"] = [t for t in record["temporaries"] if t != listed]
        _save_record(run_dir, record)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(run_dir)


def write_run_text(run_dir: Path, name: str, text: str) -> None:
    def write(f: IO[bytes]) -> None:
        f.write(text.encode("utf-8"))

    write_run_file(run_dir, name, write)


def write_run_json(run_dir: Path, name: str, obj: Any) -> None:
    write_run_text(run_dir, name, json.dumps(obj, indent=2) + "\n")
