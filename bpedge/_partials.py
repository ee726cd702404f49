"""Partial outputs (a video being encoded, a bundle being built) that a killed run leaves, told
apart from live ones.

A run writes such an output under a fresh hidden name and renames it into place when it is done;
a run killed outright (SIGKILL, SIGTERM, a power cut) never gets to remove it. So the writer holds
an exclusive ``flock`` on the partial for as long as it writes it, and the kernel drops that lock
when the process ends, however it ends. A later run removes a partial only when

* its name is one only bpedge makes and a record or marker of bpedge's claims it (the caller
  checks both), and
* nobody holds its lock (:func:`remove_if_abandoned`): a partial another run is writing now is
  left alone.

Without ``fcntl`` (not POSIX) no lock can be taken or tested, so nothing is ever removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["Held", "hold", "remove_if_abandoned"]


class Held:
    """The lock on one partial, held until :meth:`release` (or the process ends)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def _open(path: Path) -> int:
    # O_NOFOLLOW: a symbolic link put at the name is never followed to someone else's file.
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))


def hold(path: str | os.PathLike[str]) -> Held:
    """Lock the partial ``path`` (a file or a folder this process has just made under a fresh
    name) for as long as it is written."""
    if fcntl is None:
        return Held(None)
    fd = _open(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return Held(fd)


def remove_if_abandoned(path: str | os.PathLike[str], remove: Callable[[Path], None]) -> bool:
    """Call ``remove(path)`` while holding ``path``'s lock, when no other process holds it (the
    run that wrote it is gone). Returns whether it was removed; False too when ``path`` is gone
    already, is a symbolic link, or locks are not available here."""
    if fcntl is None:
        return False
    try:
        fd = _open(Path(path))
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False  # a symbolic link put at the name: not ours to follow or remove
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a run is writing it now
        remove(Path(path))
        return True
    finally:
        os.close(fd)
