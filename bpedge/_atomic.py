"""Atomic file writes: a killed process leaves either the old file or the new one, never half of one.

Every write goes to a temporary file beside the target (``.NAME.RANDOM.tmp``) that is renamed
over it only once it is complete and on disk. ``replace=False`` publishes without ever replacing:
the target must not exist (not even as a dangling symbolic link) at the moment of publishing, so
a file that appears while the content is being written is kept and the write fails with
``FileExistsError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

#: The name of a temporary file of a write of NAME: ``.NAME.RANDOM.tmp``, RANDOM 8 of
#: "abcdefghijklmnopqrstuvwxyz0123456789_" (:func:`free_temporary_name`; the pattern of
#: ``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")`` too, which made them before) (group
#: ``name``: NAME, cut short as :func:`_short_name` cuts it).
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")

#: The characters of a temporary name's random part (mkstemp's, so TEMPORARY_NAME matches both).
_RANDOM_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def free_temporary_name(folder: str | os.PathLike[str], target: str) -> Path:
    """A ``.TARGET.RANDOM.tmp`` path in ``folder`` that nothing holds now, for a writer that
    lists the name in its record before it makes the file (with ``O_EXCL``): mkstemp makes the
    file first, and a kill before the listing left an empty file no one could prove was a
    writer's."""
    import secrets

    while True:
        random = "".join(secrets.choice(_RANDOM_CHARACTERS) for _ in range(8))
        path = Path(folder) / f".{target}.{random}.tmp"
        if not os.path.lexists(path):
            return path


def is_listed_temporary(path: Path, entry: dict[str, Any]) -> bool:
    """Whether ``path`` is still the temporary a killed writer listed as ``entry``: a regular
    file with the listed ``dev`` and ``ino``, or (listed by name only: killed between making it
    and listing its inode) an empty one."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    if type(entry.get("dev")) is int and type(entry.get("ino")) is int:
        return (info.st_dev, info.st_ino) == (entry["dev"], entry["ino"])
    return info.st_size == 0


#: Longest file name kept whole in a temporary name: the "." before it and the ".RANDOM.tmp" after
#: it (RANDOM: 8 characters) take 14 bytes, and most file systems allow 255.
_MAX_NAME_BYTES = 240


def _short_name(target: Path) -> str:
    """``target.name``, or (when the temporary name would pass 255 bytes: a frame named with
    240 characters aborted a whole run) its stem cut short, its suffix kept."""
    name = target.name
    if len(os.fsencode(name)) <= _MAX_NAME_BYTES:
        return name
    keep = _MAX_NAME_BYTES - len(os.fsencode(target.suffix))
    return os.fsdecode(os.fsencode(target.stem)[:keep]) + target.suffix


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *,
                replace: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it, rename it over ``path`` and
    fsync the directory. On an exception the temporary file is removed and ``path`` is untouched.
    ``replace=False``: never replace an existing ``path`` (``FileExistsError``, see
    :func:`publish`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only; mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        # Named before it is made (O_EXCL), inside the try: with mkstemp, a Ctrl-C landing as
        # the file was made, before its name came back, left a hidden .NAME.RANDOM.tmp for
        # good. The mode a plain open() gives (0666 less the umask), so a bundle or run written
        # by one user can be read by another.
        while True:
            tmp = free_temporary_name(target.parent, _short_name(target))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:  # taken since it was found free
                continue
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, target, replace=replace)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str], *,
            replace: bool = True) -> None:
    """Move the finished file ``tmp`` to ``target`` (same folder) in one step.

    ``replace=True``: an existing ``target`` is replaced (``os.replace``). ``replace=False``: the
    file is hard-linked to ``target``, which fails when anything is there, then ``tmp`` is
    removed; so nothing that exists at that moment is ever replaced (``FileExistsError``). On a
    filesystem without hard links the check and the rename are two steps.
    """
    if replace:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists and is not replaced", str(target)) from None
    except OSError:
        # No hard links here (some FUSE, SMB or FAT mounts): check, then rename.
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists and is not replaced",
                                  str(target)) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


#: Linux's renameat2 flag that swaps two names (rename(2): "Atomically exchange oldpath and
#: newpath"; kernel 3.15, glibc 2.28; ext4, btrfs, tmpfs, xfs and more).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the entries at ``a`` and ``b`` (both present, same filesystem) in one step, so each
    name holds one of the two at every moment, also for a process killed outright. Linux's
    ``renameat2(RENAME_EXCHANGE)``; returns False, having done nothing, where the system, its
    C library or the filesystem has no such call (the caller then renames twice), and raises
    ``OSError`` for any other failure."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc before 2.28, or a C library without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # not on this kernel or filesystem
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the names created in or renamed into ``directory`` survive a power loss, where the
    filesystem allows it (a file's own fsync does not cover its directory entry)."""
    _fsync_dir(Path(directory))


def _fsync_dir(directory: Path) -> None:
    # Directory fsync makes the rename itself durable; not every filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. some network filesystems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *,
                       replace: bool = True) -> None:
    with atomic_open(path, "wb", replace=replace) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> None:
    with atomic_open(path, "w", replace=replace) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_with(path: str | os.PathLike[str], save: Callable[[IO[bytes]], None]) -> None:
    """Atomically write whatever ``save(fileobj)`` writes (e.g. ``lambda f: torch.save(obj, f)``)."""
    with atomic_open(path, "wb") as f:
        save(f)
