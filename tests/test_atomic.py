"""Atomic writes: the target is either old or new, never partial, and readable like a normal file."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from bpedge._atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    exchange,
)


def test_replaces_and_keeps_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(ValueError, match="mode"), atomic_open(target, "a"):
        pass


@pytest.mark.parametrize("kind", ["file", "dangling link", "appears while writing"])
def test_replace_false_never_replaces_what_is_there(tmp_path, kind):
    target = tmp_path / "a.bin"
    if kind == "file":
        target.write_bytes(b"mine")
    elif kind == "dangling link":
        target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="a.bin"), atomic_open(target, replace=False) as f:
        f.write(b"new")
        if kind == "appears while writing":
            target.write_bytes(b"mine")
    assert target.is_symlink() if kind == "dangling link" else target.read_bytes() == b"mine"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary left
    atomic_write_bytes(tmp_path / "b.bin", b"new", replace=False)  # a free name is written
    assert (tmp_path / "b.bin").read_bytes() == b"new"


@pytest.mark.parametrize("stem_length", [238, 245, 251])
def test_a_long_name_is_written_though_its_temporary_name_would_be_too_long(tmp_path,
                                                                          stem_length):
    # ".NAME.RANDOM.tmp" (8 random characters) passed 255 bytes for names a file system
    # allows: a frame named with 240 characters aborted a whole segment run.
    target = tmp_path / ("x" * stem_length + ".png")
    atomic_write_bytes(target, b"png")
    assert target.read_bytes() == b"png"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("in a")
    (b / "f").write_text("in b")
    assert exchange(a, b)  # tmp_path's filesystem here swaps (ext4, tmpfs, overlayfs)
    assert (a / "f").read_text() == "in b" and (b / "f").read_text() == "in a"
    with pytest.raises(FileNotFoundError):
        exchange(a, tmp_path / "missing")  # a failure is raised, never taken for "no such call"


def test_an_interrupt_right_after_the_temporary_is_made_leaves_nothing(tmp_path, monkeypatch):
    """The temporary file was made before the try that removes it: a Ctrl-C landing there left
    a hidden .NAME.RANDOM.tmp in the user's folder for good."""
    import bpedge._atomic as atomic

    real_open = os.open

    def made_then_interrupted(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        os.close(fd)
        raise KeyboardInterrupt  # as the file is made, before its descriptor comes back

    monkeypatch.setattr(atomic.os, "open", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write_text(tmp_path / "results.csv", "a,b\n")
    assert list(tmp_path.iterdir()) == []
