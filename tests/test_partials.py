"""Partials a killed run left: removed only while the name still is the file whose lock was
tested, and never where locks cannot be tested at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bpedge import _partials
from bpedge._partials import hold, remove_if_abandoned

try:
    import fcntl
except ImportError:  # not POSIX: the module's whole subject is missing
    fcntl = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    fcntl is None or _partials.fcntl is None,
    reason="needs POSIX file locks (fcntl.flock), which this platform does not have")


def _flock_that_first(monkeypatch: pytest.MonkeyPatch, meanwhile) -> None:
    """Make the next lock test run ``meanwhile`` first: what another process does between
    remove_if_abandoned's open and its lock."""
    done = []

    def flock(fd: int, operation: int) -> None:
        if not done:
            done.append(True)
            meanwhile()
        fcntl.flock(fd, operation)

    monkeypatch.setattr(_partials, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX,
                                                            LOCK_NB=fcntl.LOCK_NB))


def test_a_partial_another_run_removed_meanwhile_is_left_without_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs cleaning the same folder: the second locked the partial the first had just
    removed and failed with FileNotFoundError removing it again."""
    partial = tmp_path / ".v.ab12cd34.partial.avi"
    partial.write_bytes(b"left by a killed run")
    _flock_that_first(monkeypatch, partial.unlink)
    assert remove_if_abandoned(partial, Path.unlink) is False


def test_a_file_put_at_the_name_after_the_lock_test_opened_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock proved the old file abandoned, and the removal went by name: whatever was
    there by then, a file of the user's too, was deleted."""
    partial = tmp_path / ".v.ab12cd34.partial.avi"
    partial.write_bytes(b"left by a killed run")
    mine = tmp_path / "mine.avi"
    mine.write_bytes(b"the user's")
    _flock_that_first(monkeypatch, lambda: mine.replace(partial))
    assert remove_if_abandoned(partial, Path.unlink) is False
    assert partial.read_bytes() == b"the user's"


def test_where_flock_is_refused_a_partial_is_written_unlocked_and_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS emulates flock with byte-range locks, which need a file open for writing (a folder
    never is): the lock failed with a bare "Bad file descriptor" and the run with it."""
    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(_partials, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX,
                                                            LOCK_NB=fcntl.LOCK_NB))
    partial = tmp_path / ".v.ab12cd34.partial.avi"
    partial.write_bytes(b"being written")
    held = hold(partial)
    assert remove_if_abandoned(partial, Path.unlink) is False
    assert partial.read_bytes() == b"being written"
    held.release()


def test_a_fifo_at_a_partial_name_is_not_waited_on(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: a FIFO put at a partial's name
    must not hang the next run's cleanup (it is not a partial bpedge made either)."""
    import threading

    fifo = tmp_path / ".v.abcdefgh.partial.avi"
    os.mkfifo(fifo)
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(remove_if_abandoned(fifo, Path.unlink)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "remove_if_abandoned waited on a FIFO"
    assert fifo.exists()
