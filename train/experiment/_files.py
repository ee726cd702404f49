"""The files a study writes into its folder (RUN/summary.json, the figures, the report, every
evaluation): each is replaced only when the study wrote it, never a file of the user's.

The study folder is ``bpedge experiment``'s, but a user may put files there between two
invocations (a report of their own, a figure under a study's name). Each file goes through
:class:`bpedge._out_file.OutFile`, the machinery ``bench --json`` and ``segment --save-video``
use: a record beside it (``.NAME.bpedge-out.json``) holds the sha256 of what the study wrote,
written before the file is renamed into place, so a killed study's file is still known as its
own, and a file whose bytes are not those recorded is refused with
:class:`~bpedge._out_file.OutFileRefused` (a ``ValueError``: exit 2), naming it. :func:`refuse_foreign`
checks a list of paths up front, so a study refuses before it trains anything.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from bpedge._out_file import OutFile, OutFileRefused

__all__ = ["refuse_foreign", "save_with", "write_bytes", "write_json", "write_text"]

COMMAND = "experiment"


def _out_file(path: Path) -> OutFile:
    return OutFile(Path(path), COMMAND, "--out")


def refuse_foreign(paths: Iterable[Path]) -> None:
    """:class:`OutFileRefused` naming the first of ``paths`` that exists and is not a file this
    study wrote (nor a plain file at all); nothing is written."""
    for path in paths:
        if _out_file(path).state() == "foreign":
            raise OutFileRefused(
                f"{path} was not written by `bpedge experiment` (a file of yours?), so it is "
                "never overwritten: move it out of the study folder, then run again")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, refusing a file there the study did not write."""
    out = _out_file(path)
    refuse_foreign([out.path])  # this module's message, naming the study folder's rule
    out.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    # The layout atomic_write_json gives, so the files read the same as before.
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_with(path: Path, save: Callable[[IO[bytes]], None]) -> None:
    """Write whatever ``save(fileobj)`` writes (e.g. ``np.savez_compressed``) to ``path``."""
    buf = io.BytesIO()
    save(buf)
    write_bytes(path, buf.getvalue())
