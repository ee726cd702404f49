"""Ground-truth masks beside the frames of ``bpedge segment`` made to hang or exhaust it: a FIFO
named ``x_mask.png``, a link to /dev/zero, a PNG of a few hundred KB declaring a frame far too
large. The mask reader refuses each by name, with the guards the frame reader has."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from bpedge._cli._segment_outputs import _read_truth
from bpedge._frames import MAX_SIDE

# A regression here hangs or allocates without end: every test is bounded.
pytestmark = pytest.mark.timeout(120)


def png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of a grey PNG of ``width`` x ``height``: all the reader may
    look at before it refuses the size (decoding is what must not happen)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + b"IHDR" + header + crc


def test_a_good_mask_still_reads_as_0_and_255(tmp_path: Path) -> None:
    mask = np.zeros((20, 30), np.uint16)
    mask[5:10, 5:20] = 255
    cv2.imwrite(str(tmp_path / "x_mask.png"), mask)
    got = _read_truth(tmp_path / "x_mask.png")
    assert got.dtype == np.uint8 and got.shape == (20, 30)
    assert set(np.unique(got)) == {0, 255} and int(got[7, 10]) == 255


def test_a_png_bomb_mask_is_refused_before_it_is_decoded(tmp_path: Path, monkeypatch) -> None:
    side = MAX_SIDE + 2000
    path = tmp_path / "x_mask.png"
    path.write_bytes(png_header(side, side))

    def no_decode(*args, **kwargs):
        raise AssertionError("a mask declaring a frame too large was decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ValueError, match=rf"x_mask\.png: .*declares a {side}x{side}.*not decoded"):
        _read_truth(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_a_mask_is_refused_without_hanging(tmp_path: Path, read_fifo) -> None:
    pipe = tmp_path / "x_mask.png"
    os.mkfifo(pipe)
    _, error = read_fifo(_read_truth, pipe)
    assert isinstance(error, ValueError), error
    assert str(pipe) in str(error) and "FIFO" in str(error)


# In a child with its address space capped: an unbounded read of /dev/zero fails there in
# seconds with MemoryError instead of taking this machine's memory.
_CHILD = textwrap.dedent("""
    import resource, sys
    from bpedge._cli._segment_outputs import _read_truth
    cap = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        _read_truth(sys.argv[1])
    except ValueError as exc:
        print("REFUSED", exc)
""")


@pytest.mark.skipif(not Path("/dev/zero").exists() or sys.platform == "win32",
                    reason="needs /dev/zero and symbolic links")
def test_a_mask_linked_to_dev_zero_is_refused_not_read_without_end(tmp_path: Path) -> None:
    link = tmp_path / "x_mask.png"
    link.symlink_to("/dev/zero")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(link)], check=False,
                          capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"REFUSED ground-truth mask {link} is a device" in done.stdout, done.stdout
