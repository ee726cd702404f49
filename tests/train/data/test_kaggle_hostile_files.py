"""Dataset folders holding files made to hang or exhaust the reader: a FIFO named like a mask, a
link to /dev/zero, a TIFF decompression bomb. Each is refused by name, before it is read whole or
decoded, the way ``bpedge segment`` refuses such stills; and the way out the error suggests works
for every command that scans a folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bpedge.train.data.kaggle import DatasetError, read_image, read_mask, scan_dataset

from bpedge._frames import MAX_SIDE

# A regression here hangs or allocates without end: every test is bounded.
pytestmark = pytest.mark.timeout(120)


def _write(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array, compression="lzw")


def _good_pair(root: Path, key: str = "1_1") -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 48), dtype=np.uint8)
    mask = np.zeros_like(image)
    mask[8:16, 10:30] = 255
    _write(root / f"{key}.tif", image)
    _write(root / f"{key}_mask.tif", mask)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_a_mask_is_reported_without_hanging(tmp_path: Path,
                                                              read_fifo) -> None:
    _good_pair(tmp_path, "1_1")
    _write(tmp_path / "1_2.tif", np.zeros((32, 48), np.uint8))
    pipe = tmp_path / "1_2_mask.tif"
    os.mkfifo(pipe)
    index, error = read_fifo(lambda _: scan_dataset(tmp_path, on_error="skip"), pipe)
    assert error is None, error
    assert [f.key for f in index.frames] == ["1_1"]
    reasons = {p.path.name: p.reason for p in index.problems}
    assert "FIFO" in reasons["1_2_mask.tif"], reasons


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_read_image_and_mask_refuse_a_fifo_naming_it(tmp_path: Path, reader, read_fifo) -> None:
    pipe = tmp_path / "1_1_mask.tif"
    os.mkfifo(pipe)
    _, exc = read_fifo(reader, pipe)
    assert isinstance(exc, ValueError), exc
    assert str(pipe) in str(exc) and "FIFO" in str(exc)


# Run in a child with its address space capped: an unbounded read of /dev/zero then fails there
# in seconds with MemoryError instead of taking this machine's memory.
_CHILD = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from bpedge.train.data.kaggle import read_mask, scan_dataset
    cap = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    root = Path(sys.argv[1])
    index = scan_dataset(root, on_error="skip")
    print("FRAMES", [f.key for f in index.frames])
    for p in index.problems:
        print("PROBLEM", p.path.name, p.reason)
    try:
        read_mask(root / "1_2_mask.tif")
    except ValueError as exc:
        print("READ_MASK", exc)
""")


@pytest.mark.skipif(not Path("/dev/zero").exists() or sys.platform == "win32",
                    reason="needs /dev/zero and symbolic links")
def test_a_link_to_dev_zero_is_refused_not_read_without_end(tmp_path: Path) -> None:
    _good_pair(tmp_path, "1_1")
    _write(tmp_path / "1_2.tif", np.zeros((32, 48), np.uint8))
    (tmp_path / "1_2_mask.tif").symlink_to("/dev/zero")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], check=False,
                          capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FRAMES ['1_1']" in done.stdout, done.stdout
    assert "PROBLEM 1_2_mask.tif not read: it is a device" in done.stdout, done.stdout
    assert f"READ_MASK {tmp_path / '1_2_mask.tif'}: not read: it is a device" in done.stdout


def _bomb(path: Path, side: int) -> None:
    """A zlib TIFF of zeros: ~100 KB on disk that decodes to ``side * side`` bytes."""
    tifffile.imwrite(path, np.zeros((side, side), np.uint8), compression="zlib",
                     tile=(512, 512))


def test_a_tiff_bomb_is_refused_from_its_header_naming_the_file(tmp_path: Path,
                                                             monkeypatch) -> None:
    side = MAX_SIDE + 1000
    _good_pair(tmp_path, "1_1")
    _write(tmp_path / "1_2.tif", np.zeros((32, 48), np.uint8))
    _bomb(tmp_path / "1_2_mask.tif", side)
    assert (tmp_path / "1_2_mask.tif").stat().st_size < 2_000_000

    decode = tifffile.TiffPage.asarray

    def small_only(page, *args, **kwargs):
        assert max(page.shape) <= MAX_SIDE, "a page declaring a frame too large was decoded"
        return decode(page, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", small_only, raising=True)
    with pytest.raises(DatasetError) as raised:
        scan_dataset(tmp_path, on_error="fail")
    message = str(raised.value)
    assert f"1_2_mask.tif: declares a {side}x{side}" in message, message
    assert "not decoded" in message and "was decoded" not in message
    with pytest.raises(ValueError, match=rf"1_2_mask\.tif: declares a {side}x{side}"):
        read_mask(tmp_path / "1_2_mask.tif")


def test_a_tiff_declaring_too_many_samples_is_refused_undecoded(tmp_path: Path,
                                                              monkeypatch) -> None:
    path = tmp_path / "1_1.tif"
    # Sides within the limit but 80 samples per pixel: more than any frame holds.
    tifffile.imwrite(path, np.zeros((80, 2048, 2048), np.uint8), compression="zlib",
                     planarconfig="separate", photometric="minisblack")

    def no_decode(*args, **kwargs):
        raise AssertionError("a page of too many samples was decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decode, raising=True)
    with pytest.raises(ValueError, match=r"1_1\.tif: declares \d+ samples.*not decoded"):
        read_image(path)


def test_the_error_names_the_way_out_only_where_it_exists(tmp_path: Path) -> None:
    _good_pair(tmp_path, "1_1")
    (tmp_path / "1_2.tif").write_bytes(b"not a tiff")
    _write(tmp_path / "1_2_mask.tif", np.zeros((32, 48), np.uint8))
    with pytest.raises(DatasetError) as raised:
        scan_dataset(tmp_path, on_error="fail")
    headline = str(raised.value).splitlines()[0]
    # bench and export scan folders too, and take no --on-error: the fix must not need it.
    assert "fix or remove them" in headline
    assert "`bpedge train` and `bpedge experiment` can skip them with --on-error skip" in headline
    assert "on_error='skip'" in headline
