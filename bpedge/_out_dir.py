"""Output folders: a command writes only into a folder that it made (or that was empty), and
replaces or deletes only what it made.

Every command that writes ``--out`` (export, segment, train, experiment, demo) claims the folder
with :func:`claim_out_dir` before it writes anything. A folder is the command's when

* it did not exist (the command creates it), or it was empty (nothing in it can be lost); the
  command then writes a marker, ``.bpedge-out.json``, naming itself;
* it holds that marker naming the same command (a re-run, a resume, or ``--force``).

Anything else is refused with :class:`OutDirRefused` (a ``ValueError``, so the CLI prints one
line and exits 2) before a single file is written. ``bpedge segment --add-to-existing`` is the one
way to write into someone else's folder: only new entries are added there, and the marker lists
them (``entries``), so a later ``--force`` replaces those and nothing else. In a folder it made,
segment lists what it wrote too (``written``): the user may add files there afterwards, and a
replacing run deletes only the entries listed.

Export replaces a bundle whole (:func:`is_replaceable_bundle`), so besides its marker (or, for a
bundle made before markers existed, a readable manifest) every file in the folder must be one the
manifest lists, or the manifest itself, or bpedge's own lock/marker/temporary files: a file the
user put there later is never deleted with it.

Reading a marker never follows it into other files and never fails: an unreadable, oversized or
malformed marker simply does not count, so the folder is treated as not ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpedge._atomic import TEMPORARY_NAME, atomic_write_json
from bpedge._version import __version__

if TYPE_CHECKING:
    from bpedge._manifest import Manifest

MARKER_NAME = ".bpedge-out.json"
LOCK_NAME = ".bpedge-out.lock"
_MARKER_FORMAT = "bpedge-out"
_MAX_MARKER_BYTES = 64 * 1024

__all__ = [
    "LOCK_NAME",
    "MARKER_NAME",
    "OutDirRefused",
    "check_out_dir",
    "claim_out_dir",
    "foreign_bundle_entry",
    "is_replaceable_bundle",
    "lock_out_dir",
    "made_by",
    "mark_made_by",
    "owned_entries",
    "read_marker",
    "refuse_unless_new_or_empty",
    "set_owned_entries",
    "set_written_entries",
    "written_entries",
]


class OutDirRefused(ValueError):
    """A command was pointed at a folder (or file) it did not make: the message names the path
    and what to do instead. Nothing was written."""


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder`` as a dict, or None when there is none or it is not a valid one
    (a symlink, a FIFO, too big, not JSON, not ours)."""
    path = Path(folder) / MARKER_NAME
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_MARKER_BYTES:
        return None
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != _MARKER_FORMAT:
        return None
    if not isinstance(obj.get("command"), str):
        return None
    for key in ("entries", "written"):
        names = obj.get(key)
        if names is not None and not (isinstance(names, list)
                                      and all(isinstance(e, str) for e in names)):
            return None
    return obj


def made_by(folder: str | os.PathLike[str], command: str) -> bool:
    """True when ``folder`` holds the marker of ``command`` for the whole folder (it made it)."""
    marker = read_marker(Path(folder))
    return marker is not None and marker["command"] == command and marker.get("entries") is None


def owned_entries(folder: str | os.PathLike[str], command: str) -> set[str] | None:
    """What ``command`` owns in ``folder``: None for the whole folder, else the names of the
    entries it added (empty when it owns nothing there)."""
    marker = read_marker(Path(folder))
    if marker is None or marker["command"] != command:
        return set()
    entries = marker.get("entries")
    return None if entries is None else set(entries)


def written_entries(folder: str | os.PathLike[str], command: str) -> set[str] | None:
    """The entries ``command`` recorded as written in ``folder``: in a folder it adds to, those
    it owns (:func:`owned_entries`); in a folder it made, those listed by
    :func:`set_written_entries`. None for a folder it made whose marker lists none (an earlier
    bpedge did not record them): what is there is then not known to be the command's."""
    marker = read_marker(Path(folder))
    if marker is None or marker["command"] != command:
        return set()
    if marker.get("entries") is not None:
        return set(marker["entries"])
    written = marker.get("written")
    return None if written is None else set(written)


def set_written_entries(folder: str | os.PathLike[str], command: str,
                        entries: Iterable[str]) -> None:
    """Make ``entries`` exactly what ``command`` has written in ``folder`` (its own folder, or
    one it adds to: then they are what it owns there, as :func:`set_owned_entries`). A folder
    the command made stays all its own to write into; the list only says which entries a
    replacing run (``--force``) may delete: the user may add entries of their own there."""
    marker = read_marker(Path(folder))
    names = sorted(set(entries))
    if marker is not None and marker["command"] == command and marker.get("entries") is None:
        _write_marker(Path(folder), command, None, written=names)
    else:
        _write_marker(Path(folder), command, names)


def _write_marker(folder: Path, command: str, entries: list[str] | None, *,
                  written: list[str] | None = None) -> None:
    marker: dict[str, Any] = {
        "format": _MARKER_FORMAT,
        "command": command,
        "bpedge_version": __version__,
        "note": f"made by `bpedge {command}`; it replaces or deletes only what it made here",
    }
    if entries is not None:
        marker["entries"] = sorted(entries)
    elif written is not None:
        marker["written"] = sorted(written)
    atomic_write_json(folder / MARKER_NAME, marker)
    os.chmod(folder / MARKER_NAME, 0o644)


def mark_made_by(folder: str | os.PathLike[str], command: str) -> None:
    """Write ``command``'s marker for the whole of ``folder`` (a folder the command has just
    made, e.g. a staging folder that will be renamed into place)."""
    _write_marker(Path(folder), command, None)


def set_owned_entries(folder: str | os.PathLike[str], command: str,
                      entries: Iterable[str]) -> None:
    """Make ``entries`` exactly what ``command`` owns in ``folder``, a folder it adds entries to
    (``claim_out_dir(add_to_existing=True)``): a name is recorded just before it is written and
    dropped once it is gone, so a name the user takes later is never the command's to replace."""
    _write_marker(Path(folder), command, sorted(set(entries)))


def _is_empty_dir(folder: Path) -> bool:
    # The lock file is ours and holds nothing (a run that stopped before its first write).
    return folder.is_dir() and all(p.name == LOCK_NAME for p in folder.iterdir())


def _marker_leftover(entry: Path) -> bool:
    """Whether ``entry`` is a temporary of the marker (``..bpedge-out.json.RANDOM.tmp``) that a
    kill in :func:`claim_out_dir`'s first write left: empty (killed before the one write into
    it) or a marker (killed before the rename). Anything else under that name is someone's."""
    named = TEMPORARY_NAME.fullmatch(entry.name)
    if named is None or named["name"] != MARKER_NAME:
        return False
    info = os.lstat(entry)
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_MARKER_BYTES:
        return False
    if info.st_size == 0:
        return True
    try:
        obj = json.loads(entry.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("format") == _MARKER_FORMAT


def _killed_claim(folder: Path) -> list[Path] | None:
    """The marker temporaries in ``folder`` when it holds nothing else but the lock (a claim
    killed before its marker was in place: the folder is as good as empty), else None."""
    if not folder.is_dir():
        return None
    leftovers = []
    for entry in folder.iterdir():
        if _marker_leftover(entry):
            leftovers.append(entry)
        elif entry.name != LOCK_NAME:
            return None
    return leftovers


def claim_out_dir(
    folder: str | os.PathLike[str],
    command: str,
    *,
    flag: str = "--out",
    add_to_existing: bool = False,
    add_flag: str | None = None,
    entries: tuple[str, ...] = (),
    made_before_markers: Callable[[Path], bool] | None = None,
) -> Path:
    """Make ``folder`` ``command``'s output folder, or refuse (:class:`OutDirRefused`).

    A missing folder is created and an empty one taken over (both get the marker); a folder with
    ``command``'s marker is reused. A non-empty folder without it is refused, unless
    ``add_to_existing`` (offered to the user as ``add_flag``): then the marker records
    ``entries`` as the names this command adds, and the caller must add nothing else.
    ``made_before_markers``: the command's own test for a folder it made before markers existed
    (it recognises the folder by what is in it); such a folder is taken over. Returns the folder.
    """
    path = Path(folder)
    if path.is_symlink() and not path.exists():
        raise OutDirRefused(f"{flag} {path} is a broken symbolic link: choose another folder")
    if path.exists() and not path.is_dir():
        raise OutDirRefused(f"{flag} {path} exists and is not a folder: choose another path")
    if not path.exists():
        path.mkdir(parents=True)
        _write_marker(path, command, None)
        return path
    leftovers = _killed_claim(path)
    if leftovers is not None:
        for leftover in leftovers:
            leftover.unlink()
        _write_marker(path, command, None)
        return path
    marker = read_marker(path)
    if marker is None and made_before_markers is not None and made_before_markers(path):
        _write_marker(path, command, None)
        return path
    if marker is not None and marker["command"] == command:
        if marker.get("entries") is None:
            return path
        if add_to_existing:
            _write_marker(path, command, sorted({*marker["entries"], *entries}))
            return path
    if marker is not None and marker["command"] != command:
        raise OutDirRefused(f"{flag} {path} is the output of `bpedge {marker['command']}`, not of "
                            f"`bpedge {command}`: choose a new or empty folder")
    if add_to_existing:
        if (path / MARKER_NAME).exists() or (path / MARKER_NAME).is_symlink():
            # Here no marker was read, so this is the user's file under the marker's name.
            raise OutDirRefused(f"{path / MARKER_NAME} is not a bpedge marker: it is never "
                                "overwritten; choose another --out")
        _write_marker(path, command, list(entries))
        return path
    offer = (f", or pass {add_flag} to add only new entries to it (nothing in it is overwritten)"
             if add_flag else "")
    raise OutDirRefused(f"{flag} {path} is not an empty folder and was not made by "
                        f"`bpedge {command}`: choose a new or empty folder{offer}")


def check_out_dir(folder: str | os.PathLike[str], command: str, *, flag: str = "--out",
                  made_before_markers: Callable[[Path], bool] | None = None) -> None:
    """What :func:`claim_out_dir` would refuse, checked without writing anything (for callers
    that must fail before doing any work, or on processes that do not write)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutDirRefused(f"{flag} {path} exists and is not a folder: choose another path")
    if not path.exists() or _killed_claim(path) is not None or made_by(path, command):
        return
    if made_before_markers is not None and read_marker(path) is None \
            and made_before_markers(path):
        return
    marker = read_marker(path)
    if marker is not None and marker["command"] != command:
        raise OutDirRefused(f"{flag} {path} is the output of `bpedge {marker['command']}`, not of "
                            f"`bpedge {command}`: choose a new or empty folder")
    raise OutDirRefused(f"{flag} {path} is not an empty folder and was not made by "
                        f"`bpedge {command}`: choose a new or empty folder")


def refuse_unless_new_or_empty(folder: str | os.PathLike[str], *, flag: str = "--out") -> None:
    """For commands that only ever create: ``folder`` must not exist or be an empty folder."""
    path = Path(folder)
    if path.is_symlink():
        # Such a command publishes by renaming a finished folder onto the path, which would
        # replace the link itself: refused here, before the work, not after it.
        raise OutDirRefused(f"{flag} {path} is a symbolic link: give a real folder path (the "
                            "link's target, or a new name)")
    if path.exists() and not _is_empty_dir(path):
        raise OutDirRefused(f"{flag} {path} exists and is not an empty folder: choose a new "
                            "output folder")


def is_replaceable_bundle(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` is a bundle that export may replace: its marker names export, or
    (bundles written before markers) its manifest parses; and either way it holds nothing else
    (:func:`foreign_bundle_entry`)."""
    path = Path(folder)
    if not made_by(path, "export") and _bundle_manifest(path) is None:
        return False
    return foreign_bundle_entry(path) is None


def foreign_bundle_entry(folder: str | os.PathLike[str]) -> str | None:
    """The name of the first entry (by name) in ``folder`` that export did not write there, None
    when there is none. Export writes the files its manifest lists, the manifest, the marker,
    and bpedge's lock and temporary files; each must be a plain file, since replacing the bundle
    deletes it whole. Without a readable manifest, nothing counts as listed.

    A name is not enough, since the user may put a file of theirs there: a listed file counts
    only while its bytes are the ones the manifest records (sha256; a model the user retrained
    into the bundle by hand is theirs now), and a temporary file only with the name
    :mod:`bpedge._atomic` gives a write of one of those names (``.NAME.RANDOM.tmp``, RANDOM
    mkstemp's 8 characters): ``--force`` deleted any ``.*.tmp`` and any bytes at a listed name."""
    from bpedge._bundle_journal import is_lock_file
    from bpedge._manifest_fields import MANIFEST_NAME, sha256_file

    path = Path(folder)
    manifest = _bundle_manifest(path)
    listed = set() if manifest is None else (
        {ref.file for ref in manifest.model_files()} | {e.file for e in manifest.engines})
    own = {MANIFEST_NAME, MARKER_NAME, ".bpedge.lock", LOCK_NAME}
    for entry in sorted(path.iterdir()):
        name = entry.name
        if entry.is_symlink() or not entry.is_file():
            return name
        if name == ".bpedge.lock" and not is_lock_file(entry):
            return name  # the user's bytes under the bundle lock's name
        if name == LOCK_NAME and entry.stat().st_size != 0:
            return name  # bpedge's output lock is always empty
        if name in own:
            continue
        if name in listed:
            if manifest is not None and sha256_file(entry) == manifest.hash_of(name):
                continue
            return name
        temporary = TEMPORARY_NAME.fullmatch(name)
        if temporary is not None and temporary["name"] in listed | own:
            continue  # an atomic write killed mid-way (bpedge._atomic)
        return name
    return None


def _bundle_manifest(path: Path) -> Manifest | None:
    """The parsed manifest of the bundle ``path``, None when it has no readable one."""
    from bpedge._manifest import Manifest
    from bpedge._manifest_fields import MANIFEST_NAME, BundleError

    manifest_path = path / MANIFEST_NAME
    try:
        info = os.lstat(manifest_path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_MARKER_BYTES * 256:
            return None
        return Manifest.loads(manifest_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, BundleError):
        return None


@contextlib.contextmanager
def lock_out_dir(folder: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold ``folder``'s output lock for the block, so two runs never write into one folder at
    once; a second run is refused at once (:class:`OutDirRefused`) rather than waiting."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; runs are then not serialised
        yield
        return
    fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirRefused(f"another `bpedge {command}` is writing into {folder} now: wait for "
                                "it to finish, or choose another --out") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
