"""What a bundle writer is in the middle of, kept in the bundle's lock file (``.bpedge.lock``).

A bundle's writers (:class:`bpedge.bundle.Bundle`) replace only the files they wrote there: an
engine file is replaced only while it holds the bytes the manifest lists for it, and a
temporary file is removed only when a writer listed it. Two moments would otherwise lose that
knowledge to a kill:

* replacing an engine unlists it, writes the new plan, then lists it again: killed in between,
  the manifest no longer vouches for the file at the engine's name. So before it starts, the
  writer records here the engine's name and the sha256 of the bytes there and of the new ones
  (``replacing``); a file holding either is still the writer's to replace.
* every write goes through a temporary file (``.NAME.RANDOM.tmp``), which a kill leaves behind.
  The writer lists each one here (name, device and inode) right after creating it, and the next
  writer (holding the lock, so no writer is using it) removes a listed temporary that is still
  that same file under a name of that pattern, and nothing else: a file of the user's that only
  looks like one is never removed.

The lock file is already bpedge's own in every bundle (export leaves it be), empty while no
writer is in the middle of something; one that holds anything else (a file of the user's under
that name) is refused, never written. It is an ordinary file, so what it says is only taken
together with what the files themselves show (their sha256, their inode).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bpedge._atomic import TEMPORARY_NAME, free_temporary_name, is_listed_temporary
from bpedge._manifest_fields import BundleError

_FORMAT = "bpedge-bundle-journal"
_MAX_BYTES = 64 * 1024



class Journal:
    """The journal in the lock file open as ``fd`` (held locked by the caller)."""

    def __init__(self, root: Path, fd: int, path: Path) -> None:
        self._root = root
        self._fd = fd
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"{path} is not a regular file, so it cannot be the bundle's lock: "
                              "move it out of the bundle and run again")
        state = self._read()
        if state is None:
            raise BundleError(f"{path} holds something other than bpedge's lock and journal, so "
                              "it is never overwritten: move it out of the bundle and run again")
        self._state = state
        self._written = False

    # --- replacing an engine -----------------------------------------------------------------

    def _replacing(self) -> dict[str, Any]:
        replacing = self._state.get("replacing")
        if not isinstance(replacing, dict):
            replacing = self._state["replacing"] = {}
        return replacing

    def replacing_hashes(self, file: str) -> set[str]:
        """The sha256 values recorded for ``file`` by a writer that was replacing it."""
        hashes = self._replacing().get(file)
        if not isinstance(hashes, list):
            return set()
        return {h for h in hashes if isinstance(h, str)}

    def begin_replacing(self, file: str, hashes: list[str]) -> None:
        self._replacing()[file] = hashes
        self._save()

    def done_replacing(self, file: str) -> None:
        """``file`` is listed in the manifest again: the manifest vouches for it from now on.
        (Saved by :meth:`finish`; killed before that, the old entry still names these bytes.)"""
        self._replacing().pop(file, None)

    # --- temporary files ---------------------------------------------------------------------

    def new_temporary(self, target: str) -> tuple[int, Path]:
        """A new temporary file for ``target``, listed by name before it exists and by inode
        before it is written into (a kill between mkstemp and the listing left an empty file
        nobody could prove was a writer's, kept for ever). Returns its open descriptor and
        path."""
        path = free_temporary_name(self._root, target)
        entry: dict[str, Any] = {"name": path.name}
        self._state.setdefault("temporaries", []).append(entry)
        self._save()
        # O_EXCL: a file that took the name since is never opened; 0600 as mkstemp made them.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            info = os.fstat(fd)
            entry.update(dev=info.st_dev, ino=info.st_ino)
            self._save()
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd, path

    def remove_abandoned_temporaries(self, is_target: Callable[[str], bool]) -> None:
        """Remove the listed temporaries a killed writer left (the caller holds the lock, so no
        writer is using them): each must still be a regular file with the inode it was listed
        with, under a temporary's name for a file ``is_target(name)`` accepts."""
        listed = self._state.get("temporaries")
        if not isinstance(listed, list) or not listed:
            return
        for entry in listed:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
                continue
            found = TEMPORARY_NAME.fullmatch(entry["name"])
            if found is None or not is_target(found.group("name")):
                continue
            path = self._root / entry["name"]
            if is_listed_temporary(path, entry):
                path.unlink(missing_ok=True)
        self._state["temporaries"] = []
        self._save()

    # --- reading and writing -------------------------------------------------------------------

    def finish(self) -> None:
        """The writer's change is complete and its temporaries are gone: the journal keeps only
        what other writers, killed while replacing an engine, left unfinished (empty when
        nothing is)."""
        self._state.pop("temporaries", None)
        if not self._replacing():
            self._state = {}
            if self._written or os.fstat(self._fd).st_size:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
        else:
            self._save()

    def _read(self) -> dict[str, Any] | None:
        """The journal, ``{}`` for an empty lock file, None when the file holds anything else.
        """
        return _parse(os.pread(self._fd, _MAX_BYTES + 1, 0))

    def _save(self) -> None:
        data = json.dumps({"format": _FORMAT, **self._state}).encode("utf-8")
        # Padded with spaces over what was there: killed before the truncation, the file still
        # reads as this journal (JSON allows trailing white space).
        old = os.fstat(self._fd).st_size
        os.pwrite(self._fd, data + b" " * max(0, old - len(data)), 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)
        self._written = True


def _parse(data: bytes) -> dict[str, Any] | None:
    """The journal in a lock file's bytes, ``{}`` for none, None when they are anything else."""
    if not data:
        return {}
    if len(data) > _MAX_BYTES:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        return None
    obj.pop("format")
    return obj


def is_lock_file(path: Path) -> bool:
    """Whether the regular file ``path`` holds only what bpedge writes in a bundle's lock: nothing,
    or its journal (so replacing the bundle may delete it)."""
    with open(path, "rb") as f:
        return _parse(f.read(_MAX_BYTES + 1)) is not None


__all__ = ["Journal", "is_lock_file"]
