"""Partial outputs (a video being encoded, a bundle being built) that a killed run leaves, told
apart from live ones.

A run writes such an output under a fresh hidden name and renames it into place when it is done;
a run killed outright (SIGKILL, a power cut, SIGTERM where nothing handles it) never gets to
remove it. So the writer holds an exclusive ``flock`` on the partial for as long as it writes it,
and the kernel drops that lock when the process ends, however it ends. A later run removes a
partial only when

* its name is one only bpedge makes and a record or marker of bpedge's claims it (the caller
  checks both), and
* nobody holds its lock (:func:`remove_if_abandoned`): a partial another run is writing now is
  left alone.

Without ``fcntl`` (not POSIX), or on a filesystem that refuses ``flock`` (NFS, for a file open
read-only or a folder), no lock can be taken or tested, so nothing is ever removed.
"""

from __future__ import annotations

import errno
import os
import stat
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
    # O_NOFOLLOW: a symbolic link put at the name is never followed to someone else's file;
    # O_NONBLOCK: a FIFO put at the name is not waited on (opening one for reading blocks until
    # a writer comes); for files and folders it changes nothing.
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))


def hold(path: str | os.PathLike[str]) -> Held:
    """Lock the partial ``path`` (a file or a folder this process has just made under a fresh
    name) for as long as it is written."""
    if fcntl is None:
        return Held(None)
    fd = _open(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in _NO_LOCKS and not isinstance(exc, BlockingIOError):
            # Such a filesystem (NFS) refuses every lock test as well, so the partial is never
            # taken for abandoned (:func:`remove_if_abandoned`); the write goes on unlocked
            # instead of failing with a bare "Bad file descriptor".
            return Held(None)
        raise
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
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                return False  # no lock can be tested here, so nothing is proven abandoned
            raise
        if not _still_named(fd, Path(path)):
            # The name changed hands between the open and the lock: another run removed the
            # partial (and removing it again failed with FileNotFoundError), or someone put a
            # file of their own there, which the lock just taken says nothing about.
            return False
        remove(Path(path))
        return True
    finally:
        os.close(fd)


#: What flock fails with where no lock can be taken at all (NFS emulates flock with byte-range
#: locks, which need a file open for writing; a folder never is), rather than being held.
_NO_LOCKS = frozenset({errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP,
                       getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``, and that is a file or a folder (what
    bpedge writes partials as; a FIFO or device at the name is someone else's)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return ((named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
            and (stat.S_ISREG(held.st_mode) or stat.S_ISDIR(held.st_mode)))
