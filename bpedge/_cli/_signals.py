"""SIGTERM (``kill``, systemd, ``docker stop``) stops a command the way Ctrl-C does.

Python's default for SIGTERM is the operating system's: the process dies at once, as with
SIGKILL, so a ``segment`` run left masks without their rows, no "interrupted" line and not the
video of the frames it had finished. While a command runs, :func:`sigterm_as_interrupt` turns the
first SIGTERM into :class:`Terminated`, a ``KeyboardInterrupt``, raised where Ctrl-C's would be:
every command then cleans up and reports exactly as after Ctrl-C, and the entry point exits with
:data:`EXIT_TERMINATED` (128 + 15, as a shell reports a process SIGTERM ended; Ctrl-C exits 130).

The handler belongs to the command line alone: library code never installs one (an application
that embeds bpedge keeps its own), and the previous handler is restored when the command ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: The exit status of a command stopped by SIGTERM (128 + the signal's number).
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C runs."""

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)")


class SigtermWatch:
    """Whether SIGTERM arrived while :func:`sigterm_as_interrupt` held it."""

    def __init__(self) -> None:
        self.received = False


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[SigtermWatch]:
    """Raise :class:`Terminated` in the main thread at the first SIGTERM during the block.

    A second SIGTERM while the first unwinds is ignored: raised inside the cleanup it would cut
    short the very work (removing a frame's files, writing the tables, publishing the video) it
    asks for; SIGKILL still ends the process at once. Outside the main thread (where Python allows
    no handler) the block runs with the signal as it was."""
    watch = SigtermWatch()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return
    owner = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # A forked child (a DataLoader worker) inherits the handler; its parent ends it with
            # SIGTERM, and it must die of it as it did before, not unwind as if it were the CLI.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if watch.received:
            return
        watch.received = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield watch
    finally:
        signal.signal(signal.SIGTERM, previous)
