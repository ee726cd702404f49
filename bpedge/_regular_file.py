"""Reading bundle files safely: regular files only, with a size cap.

A FIFO, a character device or a symbolic link to one would make a plain ``open().read()`` block
forever or read without end, and a directory raises ``IsADirectoryError``; a huge sparse file
would be read into memory whole. :func:`read_regular_file` and :func:`sha256_regular_file` open
without blocking (``O_NONBLOCK``: a FIFO opens at once), check with ``fstat`` on the opened file
(so a swap after the check cannot slip through) that it is a regular file no larger than the cap,
and raise :class:`NotARegularFile` otherwise. Symbolic links to regular files are followed (a
bundle copied with links still works) as long as they stay inside the folder given as ``inside``
(the bundle): a link that leads out of it is refused (:class:`LeadsOutside`) before the file it
points to is opened, so a bundle cannot make bpedge read, hash or load a file elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

#: Largest manifest.json accepted: real ones are a few KB.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: Largest model, checkpoint or engine file accepted (ONNX protobufs stop at 2 GiB; engines and
#: checkpoints of these models are far smaller).
MAX_BUNDLE_FILE_BYTES = 4 * 1024 * 1024 * 1024

_CHUNK = 1 << 20


class NotARegularFile(OSError):
    """The path is not a regular file (FIFO, device, socket, directory) or is over the size cap;
    the message names the path and what it is."""


class LeadsOutside(NotARegularFile):
    """The path is (or goes through) a symbolic link to somewhere outside the folder it must be
    in; the message names the path and where it leads."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file to read (links followed), as the end of a sentence
    about it: "does not exist", "is a directory", "is a FIFO (named pipe)", ...; None when it is
    one. For options that name an input file, which said "does not exist" of a folder or FIFO."""
    if not os.fspath(path):
        return "is empty: give a file path"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of the path is a file)"
    except OSError as exc:  # a link loop (ELOOP), a folder it may not enter (EACCES), ...
        return f"cannot be read: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return f"is {_kind(mode)}, not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return None


def refuse_unless_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse an input file option that names no regular file: FileNotFoundError when nothing
    is there, ValueError for a folder, FIFO or device, or a file this user cannot read (a link
    loop, a folder it may not enter); the message is ``what``, the path and :func:`not_a_file`'s
    reason."""
    why = not_a_file(path)
    if why is not None:
        raise (FileNotFoundError if why.startswith("does not exist") else ValueError)(
            f"{what} {os.fspath(path)} {why}")


def _open_checked(path: Path, max_bytes: int, inside: Path | None) -> tuple[int, int]:
    """An fd open for reading on ``path`` and its size, after the regular-file and size checks
    (and, with ``inside``, the check that it resolves to a file in that folder).
    FileNotFoundError passes through unchanged."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if inside is not None:
        real, folder = os.path.realpath(path), os.path.realpath(inside)
        if os.path.commonpath([real, folder]) != folder:
            raise LeadsOutside(f"{path} is a symbolic link that leads out of {inside} (to "
                               f"{real})")
        # Open what was checked, and refuse a link put in its place since.
        path, flags = Path(real), flags | getattr(os, "O_NOFOLLOW", 0)
    # stat first, so a device is never even opened (opening some has side effects).
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{path} is {_kind(mode)}, not a regular file")
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(f"{path} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise NotARegularFile(f"{path} is {info.st_size} bytes, over the {max_bytes}-byte "
                                  "limit for this file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_regular_file(path: str | os.PathLike[str], max_bytes: int,
                      inside: str | os.PathLike[str] | None = None) -> bytes:
    """The bytes of ``path``, refused (:class:`NotARegularFile`) unless it is a regular file of at
    most ``max_bytes`` (and, with ``inside``, resolves to a file within that folder)."""
    p = Path(path)
    fd, _ = _open_checked(p, max_bytes, None if inside is None else Path(inside))
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the check
        raise NotARegularFile(f"{p} is over the {max_bytes}-byte limit for this file")
    return data


def sha256_regular_file(path: str | os.PathLike[str], max_bytes: int,
                        inside: str | os.PathLike[str] | None = None) -> str:
    """Hex sha256 of ``path``, read in chunks, with the checks of :func:`read_regular_file`."""
    p = Path(path)
    fd, _ = _open_checked(p, max_bytes, None if inside is None else Path(inside))
    digest, total = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise NotARegularFile(f"{p} is over the {max_bytes}-byte limit for this file")
            digest.update(chunk)
    return digest.hexdigest()
