"""Single output files at a path the user chose (``bench --json``, ``doctor --json``,
``build-engines --timing-cache``, ``segment --save-video``): a command replaces such a file only
when it wrote it itself, and everything else is refused before anything is written.

The folder rule of :mod:`bpedge._out_dir` for one file. A file is the command's when either

* its content says so (``recognise``: a bench record or a doctor report carries its schema name),
  or
* a record beside it, ``.NAME.bpedge-out.json``, names the command and the sha256 of the bytes it
  wrote, and the file still has those bytes (a file someone copied over it, or edited, is theirs).
  Used where the content cannot carry a mark of ours: a TensorRT timing cache is TensorRT's opaque
  serialisation (``ITimingCache.serialize``, no documented header:
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/TimingCache.html),
  which ``trtexec --timingCacheFile`` must still read as it is; a video is OpenCV's container.

Anything else at the path (a file of the user's, a folder, a symbolic link, a FIFO) is refused
with :class:`OutFileRefused` (a ``ValueError``: the CLI prints one line and exits 2) naming the
path and the flag. Writes are atomic (:mod:`bpedge._atomic`): a killed run leaves the old file or
the new one under the name, never part of one. A file that did not exist is published without
ever replacing, so one that appears while the content is written is kept.

With a record, a replacement is kill-safe too: the record is written first, listing the new
sha256 and the one being replaced, then the file is renamed into place, so whichever of the two
the name holds after a kill is still recognised as the command's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bpedge._atomic import atomic_write_json, publish
from bpedge._out_dir import OutDirRefused
from bpedge._version import __version__

__all__ = ["OutFile", "OutFileRefused", "record_path"]

RECORD_SUFFIX = ".bpedge-out.json"
_RECORD_FORMAT = "bpedge-out-file"
_MAX_RECORD_BYTES = 64 * 1024
_CHUNK = 1 << 20

State = Literal["absent", "ours", "foreign"]


class OutFileRefused(OutDirRefused):
    """A command was pointed at a file it did not write (or at something that is not a file):
    the message names the path, the flag and what to do. Nothing was written."""


def record_path(path: str | os.PathLike[str]) -> Path:
    """Where the record of ``path`` lives: ``.NAME.bpedge-out.json`` beside it."""
    p = Path(path)
    return p.with_name(f".{p.name}{RECORD_SUFFIX}")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class OutFile:
    """One file ``command`` writes at ``path``, which the user gave as ``flag``.

    ``recognise(path) -> bool``: True when the (regular) file at ``path`` is one of the command's
    by its content; None: the command's files are known by their record beside them."""

    path: Path
    command: str
    flag: str
    recognise: Callable[[Path], bool] | None = None

    # --- what is there ---------------------------------------------------------------------

    def state(self) -> State:
        """``absent`` (nothing at the path), ``ours`` (a file the command wrote, see the module
        docstring) or ``foreign``. Raises :class:`OutFileRefused` for a folder, a symbolic link
        or anything else that is not a regular file, and when a parent is not a folder."""
        for parent in self.path.parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise OutFileRefused(f"{self.flag} {self.path}: {parent} is a file, not a "
                                         "folder")
                break
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return "absent"
        if not stat.S_ISREG(info.st_mode):
            raise OutFileRefused(f"{self.flag} {self.path} is {_kind(info.st_mode)}, which is "
                                 f"never replaced: give the name of a new file")
        if self.recognise is not None:
            return "ours" if self.recognise(self.path) else "foreign"
        hashes = self._recorded_hashes()
        return "ours" if hashes and _sha256(self.path) in hashes else "foreign"

    def check(self, *, replace: bool = True, replace_flag: str | None = None) -> State:
        """Refuse (:class:`OutFileRefused`) unless the file may be written: absent, or the
        command's own and ``replace``. ``replace_flag``: the option that allows replacing (named
        in the message when ``replace`` is False). Returns the state."""
        state = self.state()
        if state == "foreign":
            raise OutFileRefused(
                f"{self.flag} {self.path} exists and was not written by `bpedge {self.command}`, "
                "so it is never overwritten: choose another file name")
        if state == "ours" and not replace:
            offer = f", or {replace_flag} to replace it" if replace_flag else ""
            raise OutFileRefused(f"{self.flag} {self.path} exists: choose a new name{offer}")
        if self.recognise is None:
            self._check_record_slot()
        return state

    # --- writing ---------------------------------------------------------------------------

    def write_bytes(self, data: bytes, *, replace: bool = True,
                    replace_flag: str | None = None) -> None:
        """Write ``data`` to the path atomically, after :meth:`check` (so a file that is not
        the command's, also one that appeared since an earlier check, is refused)."""
        with self.temporary() as tmp:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.publish(tmp, replace=replace, replace_flag=replace_flag)

    def write_text(self, text: str, *, replace: bool = True,
                   replace_flag: str | None = None) -> None:
        self.write_bytes(text.encode("utf-8"), replace=replace, replace_flag=replace_flag)

    def new_temporary(self) -> Path:
        """A new, empty hidden file beside the path, ``.STEM.RANDOM.partialSUFFIX`` (the suffix
        kept for writers that choose the format by it, such as OpenCV's VideoWriter): a fresh
        name, so never a file of anyone's. The caller publishes or removes it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial"
                                    f"{self.path.suffix}", dir=self.path.parent)
        os.close(fd)
        # mkstemp makes the file 0600; give it the mode a plain open() would.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(name, 0o666 & ~mask)
        return Path(name)

    @contextlib.contextmanager
    def temporary(self) -> Iterator[Path]:
        """:meth:`new_temporary`, removed on leaving unless published."""
        tmp = self.new_temporary()
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def publish(self, tmp: Path, *, replace: bool = True, replace_flag: str | None = None) -> None:
        """Rename the finished file ``tmp`` (from :meth:`temporary`) to the path, checked again
        now: a file of the user's there is never replaced, one that was absent must still be."""
        state = self.check(replace=replace, replace_flag=replace_flag)
        if self.recognise is None:
            current = _sha256(self.path) if state == "ours" else None
            self._write_record([_sha256(tmp), *([current] if current else [])])
        try:
            publish(tmp, self.path, replace=state == "ours")
        except FileExistsError:
            raise OutFileRefused(f"{self.flag} {self.path} appeared while bpedge was writing it; "
                                 "it was left as it is: choose another file name") from None

    # --- the record --------------------------------------------------------------------------

    def _read_record(self) -> dict[str, Any] | None:
        path = record_path(self.path)
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_RECORD_BYTES:
            return None
        try:
            obj = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or obj.get("format") != _RECORD_FORMAT:
            return None
        hashes = obj.get("sha256")
        if not (isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)):
            return None
        return obj

    def _recorded_hashes(self) -> set[str]:
        record = self._read_record()
        if record is None or record.get("command") != self.command \
                or record.get("file") != self.path.name:
            return set()
        return set(record["sha256"])

    def _check_record_slot(self) -> None:
        # The record's own name must be free or hold a record of ours: a file of the user's
        # that happens to have that name is never replaced either.
        path = record_path(self.path)
        if os.path.lexists(path) and self._read_record() is None:
            raise OutFileRefused(f"{self.flag} {self.path}: {path} exists and is not bpedge's "
                                 "record of it, so it is never overwritten: choose another file "
                                 "name")

    def _write_record(self, hashes: list[str]) -> None:
        atomic_write_json(record_path(self.path), {
            "format": _RECORD_FORMAT,
            "command": self.command,
            "file": self.path.name,
            "sha256": hashes,
            "bpedge_version": __version__,
            "note": f"{self.path.name} was written by `bpedge {self.command}`, which replaces it "
                    "only while it holds these bytes",
        })
