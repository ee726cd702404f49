"""Single output files at a path the user chose (``bench --json``, ``doctor --json``,
``build-engines --timing-cache``, ``segment --save-video``): a command replaces such a file only
when it wrote it itself, and everything else is refused before anything is written.

The folder rule of :mod:`bpedge._out_dir` for one file. A file is the command's when either

* its content says so (``recognise``: a bench record or a doctor report carries its schema name)
  and it is byte for byte what the command wrote: such a JSON file ends with a seal,
  ``"bpedge_sha256"``, the sha256 of the file with the seal's own value as 64 zeros
  (:func:`sealed_json`), so a report the user edited (a note added, a value changed) or one
  from a bpedge before seals no longer matches and is theirs; or
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

The content is written to a hidden partial file beside the path first
(:meth:`OutFile.new_temporary`; a video takes as long as the run). A run killed outright cannot
remove it, so the record also lists each partial before anything is written into it, and the
writer locks it (:mod:`bpedge._partials`). The next write to the same path removes a listed
partial that nobody holds (never one a run is writing now) and that is still the file bpedge
made, by evidence the record alone cannot give (:meth:`OutFile._is_our_partial`): the record is
a file anyone who can write the folder can write, so a record listing the inode of a file of
the user's (forged, or left behind from an earlier file) must not get that file removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from bpedge._atomic import atomic_write_json, publish
from bpedge._out_dir import OutDirRefused
from bpedge._partials import Held, hold, remove_if_abandoned
from bpedge._version import __version__

__all__ = ["SEAL_KEY", "OutFile", "OutFileRefused", "is_sealed", "record_path", "sealed_json"]

RECORD_SUFFIX = ".bpedge-out.json"
_RECORD_FORMAT = "bpedge-out-file"
_MAX_RECORD_BYTES = 64 * 1024
_CHUNK = 1 << 20
#: Largest sealed file recognised (a bench record is tens of KB): a bigger one is not ours.
_MAX_SEALED_BYTES = 64 << 20
#: How many first bytes of a partial ``OutFile.partial_signature`` is given.
SIGNATURE_BYTES = 64

State = Literal["absent", "ours", "foreign"]

#: The last key of a sealed JSON file (:func:`sealed_json`).
SEAL_KEY = "bpedge_sha256"
_UNSEALED = "0" * 64
_SEAL_AT_END = re.compile(rb'"' + SEAL_KEY.encode() + rb'": "([0-9a-f]{64})"\n}\n\Z')


def sealed_json(obj: dict[str, Any]) -> str:
    """``obj`` as indented JSON ending with :data:`SEAL_KEY`: the sha256 of this very text with
    the seal's value written as 64 zeros. Any change to the file breaks it (:func:`is_sealed`).
    ``obj``'s own value under that key (one read back from a sealed file) is replaced."""
    body = {k: v for k, v in obj.items() if k != SEAL_KEY}
    text = json.dumps({**body, SEAL_KEY: _UNSEALED}, indent=2, allow_nan=False) + "\n"
    # The seal is the outer object's last key, so its value is the last 64 zeros of the text.
    at = text.rindex(_UNSEALED)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return text[:at] + digest + text[at + len(_UNSEALED):]


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` is a file :func:`sealed_json` wrote, unchanged since."""
    found = _SEAL_AT_END.search(data)
    if found is None:
        return False
    unsealed = data[:found.start(1)] + _UNSEALED.encode() + data[found.end(1):]
    return hashlib.sha256(unsealed).hexdigest() == found.group(1).decode()


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


def _partial_entry(path: Path, digest: str | None = None) -> dict[str, Any]:
    """The record's entry for the partial ``path`` as it is now; ``digest``: its sha256, when
    the caller has it already."""
    info = os.lstat(path)
    entry: dict[str, Any] = {"name": path.name, "dev": info.st_dev, "ino": info.st_ino,
                             "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    if info.st_size:
        entry["sha256"] = digest or _sha256(path)
    return entry


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return _sha256_of(f)


def _sha256_of(f: BinaryIO) -> str:
    digest = hashlib.sha256()
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
    #: With ``recognise``: the command writes the file with :meth:`write_sealed_json`, and a
    #: recognised file is the command's only while its seal holds (:func:`is_sealed`).
    sealed: bool = False
    #: ``signature(head) -> bool``: True when ``head``, the first :data:`SIGNATURE_BYTES` bytes
    #: of a partial the writer has put bytes into, open the format the writer writes (a video
    #: container's header): lets a later write remove a partial that a run killed while
    #: writing it left. None: only a partial unchanged since bpedge last recorded it is removed.
    partial_signature: Callable[[bytes], bool] | None = None
    #: The locks on this process's partials, released once each is published or discarded.
    _held: dict[Path, Held] = field(default_factory=dict, init=False, repr=False, compare=False)

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
            if not self.recognise(self.path):
                return "foreign"
            return "ours" if not self.sealed or self._seal_holds() else "foreign"
        hashes = self._recorded_hashes()
        return "ours" if hashes and _sha256(self.path) in hashes else "foreign"

    def _seal_holds(self) -> bool:
        # recognise() has just read the file as a regular one of bounded size; read it the same
        # safe way here (never through a link, never waiting on a FIFO).
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return False  # gone or replaced by a link since: not a file of ours to replace
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            return is_sealed(f.read(_MAX_SEALED_BYTES + 1))

    def check(self, *, replace: bool = True, replace_flag: str | None = None) -> State:
        """Refuse (:class:`OutFileRefused`) unless the file may be written: absent, or the
        command's own and ``replace``. ``replace_flag``: the option that allows replacing (named
        in the message when ``replace`` is False). Returns the state."""
        state = self.state()
        if state == "foreign" and self.sealed and self.recognise is not None \
                and self.recognise(self.path):
            raise OutFileRefused(
                f"{self.flag} {self.path} is a `bpedge {self.command}` file that was changed "
                "since it was written (or was written before bpedge sealed its files), so it is "
                "never overwritten: choose another file name, or move it away")
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

    def write_sealed_json(self, obj: dict[str, Any], *, replace: bool = True,
                          replace_flag: str | None = None) -> None:
        """Write ``obj`` as :func:`sealed_json` (see :meth:`write_bytes`)."""
        self.write_text(sealed_json(obj), replace=replace, replace_flag=replace_flag)

    def write_text(self, text: str, *, replace: bool = True,
                   replace_flag: str | None = None) -> None:
        self.write_bytes(text.encode("utf-8"), replace=replace, replace_flag=replace_flag)

    def new_temporary(self) -> Path:
        """A new, empty hidden file beside the path, ``.STEM.RANDOM.partialSUFFIX`` (the suffix
        kept for writers that choose the format by it, such as OpenCV's VideoWriter): a fresh
        name, so never a file of anyone's. The caller publishes it (:meth:`publish`) or removes
        it (:meth:`discard`). Where the command's files are known by their record, partials that
        killed runs left are removed first and this one is listed (see the module docstring)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.recognise is None:
            self._remove_abandoned_partials()
        fd, name = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial"
                                    f"{self.path.suffix}", dir=self.path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            self._held[tmp] = hold(tmp)  # before it is listed: a listed partial is always locked
            # mkstemp makes the file 0600; give it the mode a plain open() would.
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            if self.recognise is None:
                self._list_partial(tmp)
        except BaseException:
            self.discard(tmp)
            raise
        return tmp

    def note_partial(self, tmp: Path) -> None:
        """Record the partial ``tmp`` as it is now (size, modification time, content), after its
        writer opened it again (OpenCV truncates the file it is given) or finished it, so a run
        killed from here on leaves it recognisably bpedge's (:meth:`_is_our_partial`)."""
        if self.recognise is not None:
            return
        record = self._own_record()
        if record is None:
            return  # beside a file that is not ours nothing is listed (see _list_partial)
        self._write_record(list(record["sha256"]), self._relisted(record, tmp))

    def _relisted(self, record: dict[str, Any] | None, tmp: Path,
                  digest: str | None = None) -> list[dict[str, Any]]:
        """The record's partials with ``tmp``'s entry made anew from the file as it is now."""
        others = [p for p in self._listed_partials(record) if p["name"] != tmp.name]
        return [*others, _partial_entry(tmp, digest)]

    def discard(self, tmp: Path) -> None:
        """Remove the partial ``tmp`` (from :meth:`new_temporary`) unless it was published, and
        drop its lock."""
        tmp.unlink(missing_ok=True)
        held = self._held.pop(tmp, None)
        if held is not None:
            held.release()

    @contextlib.contextmanager
    def temporary(self) -> Iterator[Path]:
        """:meth:`new_temporary`, removed on leaving unless published."""
        tmp = self.new_temporary()
        try:
            yield tmp
        finally:
            self.discard(tmp)

    def publish(self, tmp: Path, *, replace: bool = True, replace_flag: str | None = None) -> None:
        """Rename the finished file ``tmp`` (from :meth:`temporary`) to the path, checked again
        now: a file of the user's there is never replaced, one that was absent must still be."""
        state = self.check(replace=replace, replace_flag=replace_flag)
        if self.recognise is None:
            current = _sha256(self.path) if state == "ours" else None
            digest = _sha256(tmp)
            # tmp stays listed, as it is now: killed before the rename, it is still found (and
            # recognised by its content) and removed later.
            self._write_record([digest, *([current] if current else [])],
                               self._relisted(self._own_record(), tmp, digest))
        try:
            publish(tmp, self.path, replace=state == "ours")
        except FileExistsError:
            raise OutFileRefused(f"{self.flag} {self.path} appeared while bpedge was writing it; "
                                 "it was left as it is: choose another file name") from None
        self.discard(tmp)  # its name is gone; this drops the lock

    # --- partials that killed runs left ----------------------------------------------------

    def _is_partial_name(self, name: str) -> bool:
        """Whether ``name`` is one :meth:`new_temporary` makes for this path (mkstemp's eight
        characters between the stem and ``.partialSUFFIX``)."""
        return re.fullmatch(re.escape(f".{self.path.stem}.") + r"[a-z0-9_]{8}"
                            + re.escape(f".partial{self.path.suffix}"), name) is not None

    def _listed_partials(self, record: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The partials ``record`` lists that are well formed and still there."""
        listed = record.get("partials") if record is not None else None
        if not isinstance(listed, list):
            return []
        # An entry without size and mtime_ns (an older bpedge's) is dropped: its file is then
        # never removed, which loses nothing of anyone's.
        return [p for p in listed if isinstance(p, dict) and isinstance(p.get("name"), str)
                and self._is_partial_name(p["name"])
                and all(type(p.get(k)) is int for k in ("dev", "ino", "size", "mtime_ns"))
                and (p["size"] == 0 or isinstance(p.get("sha256"), str))
                and os.path.lexists(self.path.with_name(p["name"]))]

    def _is_listed_file(self, entry: dict[str, Any]) -> bool:
        # The same inode as when it was made: a file put under that name since is someone else's.
        try:
            info = os.lstat(self.path.with_name(entry["name"]))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == (entry["dev"],
                                                                             entry["ino"])

    def _is_our_partial(self, entry: dict[str, Any]) -> bool:
        """Whether the listed file (:meth:`_is_listed_file`) is, by what is in it, the partial
        bpedge made, so that removing it cannot lose a file of anyone's.

        The record is an ordinary file in the user's folder: whoever can write the folder can
        write a record listing any file there, and name, inode, size and times are all readable
        by that writer. So beside the record's word the file itself must show it is bpedge's:

        * unchanged since bpedge last recorded it (:meth:`note_partial`, :meth:`publish`): the
          same size and modification time, and content with the recorded sha256 (none when
          empty), so a record from another file's time (an inode reused) never matches; or
        * written to since (a run killed while writing it), and then its first bytes must be
          the writer's format (``partial_signature``: a video container's header), which no
          record can make a file of the user's have, and it is no older than the record says.

        What is left (no process running as the same user can be kept from it, and it could
        delete the file anyway): a record written by hand with the size, time and sha256 of a
        file, or listing a file in the writer's format, each under a name of bpedge's partials
        (``.STEM.RANDOM.partialSUFFIX``). Without a ``partial_signature`` (a TensorRT timing
        cache, an opaque format) a partial killed while being written is kept for good."""
        try:
            # As _partials opens it: never through a symbolic link, never waiting on a FIFO.
            fd = os.open(self.path.with_name(entry["name"]), os.O_RDONLY
                         | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except (FileNotFoundError, IsADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False  # a symbolic link put at the name
            raise
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (entry["dev"],
                                                                                entry["ino"]):
                return False
            if (info.st_size, info.st_mtime_ns) == (entry["size"], entry["mtime_ns"]):
                return info.st_size == 0 or _sha256_of(f) == entry["sha256"]
            if self.partial_signature is None or info.st_mtime_ns < entry["mtime_ns"]:
                return False
            return self.partial_signature(f.read(SIGNATURE_BYTES))

    def _remove_abandoned_partials(self) -> None:
        """Remove the partials the record lists that a killed run left (still the file it made,
        :meth:`_is_our_partial`, and unlocked), and forget those that are gone or are no
        longer that file. One that fails the content test stays listed and is never removed (a
        live run's may pass it once the run records it again)."""
        record = self._own_record()
        listed = self._listed_partials(record)
        if record is None or not listed:
            return
        kept = [entry for entry in listed if self._is_listed_file(entry)
                and not (self._is_our_partial(entry) and remove_if_abandoned(
                    self.path.with_name(entry["name"]), Path.unlink))]
        if kept != record.get("partials"):
            self._write_record(list(record["sha256"]), kept)

    def _list_partial(self, tmp: Path) -> None:
        """List ``tmp`` in the record, beside a file that is absent or is the record's; beside
        any other file nothing is written (publishing refuses to replace it anyway)."""
        record = self._own_record()
        if record is None and os.path.lexists(self.path):
            return
        self._check_record_slot()
        self._write_record(list(record["sha256"]) if record else [], self._relisted(record, tmp))

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

    def _own_record(self) -> dict[str, Any] | None:
        """The record beside the path when it is this command's record of this file."""
        record = self._read_record()
        if record is None or record.get("command") != self.command \
                or record.get("file") != self.path.name:
            return None
        return record

    def _recorded_hashes(self) -> set[str]:
        record = self._own_record()
        return set(record["sha256"]) if record is not None else set()

    def _check_record_slot(self) -> None:
        # The record's own name must be free or hold a record of ours: a file of the user's
        # that happens to have that name is never replaced either.
        path = record_path(self.path)
        if os.path.lexists(path) and self._read_record() is None:
            raise OutFileRefused(f"{self.flag} {self.path}: {path} exists and is not bpedge's "
                                 "record of it, so it is never overwritten: choose another file "
                                 "name")

    def _write_record(self, hashes: list[str], partials: list[dict[str, Any]]) -> None:
        atomic_write_json(record_path(self.path), {
            "format": _RECORD_FORMAT,
            "command": self.command,
            "file": self.path.name,
            "sha256": hashes,
            "partials": partials,
            "bpedge_version": __version__,
            "note": f"{self.path.name} was written by `bpedge {self.command}`, which replaces it "
                    "only while it holds these bytes; partials: its unfinished writes, removed "
                    "by the next write once no run holds them",
        })
