"""Frames that arrive through files and captures made to mislead: a still whose header declares a
frame too large to decode (a decompression bomb), a FIFO named like an image, a capture that
refills one buffer for every frame, and a SourceFrame wrapping the caller's reused buffer. Each
result or frame keeps the pixels it was given, and nothing too large is decoded."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from bpedge import Segmenter
from bpedge._frames import MAX_SIDE
from bpedge._image_size import declared_hw
from bpedge.sources import SourceError, SourceFrame, open_frames


@pytest.fixture(scope="module")
def seg(tiny_bundle: Path):
    with Segmenter.from_bundle(tiny_bundle, backend="onnxruntime") as segmenter:
        yield segmenter


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 96), dtype=np.uint8)


def zero_png(width: int, height: int) -> bytes:
    """A valid grey PNG of zeros: a few hundred KB that decode to ``width * height`` bytes."""
    compressor, rows = zlib.compressobj(9), []
    row = b"\x00" * (width + 1)  # filter byte + pixels
    rows = [compressor.compress(row) for _ in range(height)]
    body = b"".join(rows) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def test_a_png_declaring_a_frame_too_large_is_refused_before_it_is_decoded(tmp_path: Path):
    bomb = tmp_path / "bomb.png"
    side = MAX_SIDE + 2000  # 10192^2: ~100 MB decoded, from a file of ~100 KB
    bomb.write_bytes(zero_png(side, side))
    with pytest.raises(ValueError, match=rf"bomb\.png: declares a {side}x{side}.*not decoded"):
        list(open_frames(bomb))


def test_a_jpeg_whose_header_declares_a_huge_frame_is_refused_unread(tmp_path: Path):
    _, encoded = cv2.imencode(".jpg", frame())
    data = bytearray(encoded.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    (tmp_path / "big.jpg").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"big\.jpg: declares a 60000x60000"):
        list(open_frames(tmp_path / "big.jpg"))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_the_declared_size_is_the_decoded_size_for_every_still_format(tmp_path: Path,
                                                                     suffix: str):
    image = frame()[:37, :91]
    path = tmp_path / f"x{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image, compression="lzw")
    else:
        cv2.imwrite(str(path), image)
    assert declared_hw(path.read_bytes()) == (37, 91)


def test_a_fifo_named_like_an_image_is_refused_without_hanging(tmp_path: Path, read_fifo):
    pipe = tmp_path / "frame.png"
    os.mkfifo(pipe)
    _, error = read_fifo(lambda p: list(open_frames(p)), pipe)
    assert isinstance(error, ValueError) and "FIFO" in str(error), error


class RingCapture:
    """A frame grabber handing out one buffer it refills for every frame, then ending."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames, self.buffer, self.index = frames, np.zeros_like(frames[0]), 0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.index == len(self.frames):
            return False, None
        self.buffer[:] = self.frames[self.index]
        self.index += 1
        return True, self.buffer

    def isOpened(self) -> bool:
        return True

    def get(self, prop: int) -> float:
        return float(len(self.frames)) if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0


def test_frames_from_a_capture_that_refills_one_buffer_keep_their_own_pixels(seg: Segmenter):
    given = [frame(seed) for seed in range(4)]
    with open_frames(RingCapture(given)) as frames:
        kept = list(frames)
    assert len(kept) == 4
    for source, original in zip(kept, given):
        np.testing.assert_array_equal(source.image, original)
    # ...and results computed later, in one batch, are those of their own frames.
    batch = seg.segment_batch(kept)
    for result, original in zip(batch, given):
        np.testing.assert_array_equal(result.mask, seg(original).mask)
        np.testing.assert_array_equal(result.frame, original)


@pytest.mark.parametrize("call", ["single", "batch"])
def test_a_source_frame_around_a_reused_buffer_keeps_its_result_frame(seg: Segmenter, call: str):
    buffer = frame(1)
    wrapped = SourceFrame(buffer, "cart_f000001")
    result = seg(wrapped) if call == "single" else seg.segment_batch([wrapped])[0]
    before_mask, before_frame = result.mask.copy(), result.frame.copy()
    buffer[:] = 0  # the capture loop refills its buffer
    np.testing.assert_array_equal(result.frame, before_frame)
    np.testing.assert_array_equal(result.mask, before_mask)
    assert result.name == "cart_f000001"


def test_tracking_detects_again_when_the_frame_size_changes():
    # A stream whose frames change size mid-way comes from another source (a probe or cart
    # switched): the last frame's box says nothing about the new picture, so it is not tracked.
    from bpedge._cascade import HostCascade
    from bpedge._cascade_spec import CascadeSpec
    from bpedge._tracking import TrackOptions

    def disc(h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        return np.where((xx - 50) ** 2 + (yy - 60) ** 2 <= 144, 220, 20).astype(np.uint8)

    def detector(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.nonzero(batch[0, 0] > 0.4)
        box = [xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3]
        return np.array([0.9], np.float32), np.array([box], np.float32)

    def segmenter(batch: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-(batch - 0.47) * 40))).astype(np.float32)

    spec = CascadeSpec((60, 80), 0.0, 255.0, (32, 32), 0.0, 255.0, score_threshold=0.5,
                       mask_threshold=0.5)
    cascade = HostCascade(detector, segmenter, spec)
    frames = [disc(120, 160), disc(120, 160), disc(240, 320), disc(240, 320)]
    results = list(cascade.stream(iter(frames), depth=1,
                                  track=TrackOptions(detect_every=10, first_check=10)))
    detected = ["detector" in r.timings for r in results]
    assert detected == [True, False, True, False]
    assert all(r.mask.shape == f.shape for r, f in zip(results, frames))


class HugeCapture(RingCapture):
    """A capture declaring 100000 x 100000 frames; reading one would decode gigabytes."""

    def read(self) -> tuple[bool, np.ndarray | None]:
        raise AssertionError("a frame was decoded")

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: 1e5, cv2.CAP_PROP_FRAME_HEIGHT: 1e5}.get(prop, 0.0)


def test_a_capture_declaring_frames_too_large_is_refused_before_the_first_read():
    with pytest.raises(SourceError, match=r"declares 100000x100000 .*none is decoded"):
        list(open_frames(HugeCapture([frame()])))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_entries_named_like_images_that_are_not_files_are_reported_not_dropped(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    os.mkfifo(folder / "a.png")
    (folder / "b.tif").mkdir()
    cv2.imwrite(str(folder / "c.png"), frame())
    skipped: list[str] = []
    got = list(open_frames(folder, on_error="skip", on_skip=lambda name, why: skipped.append(name)))
    assert [f.name for f in got] == ["c"]
    assert len(skipped) == 2 and any("a.png" in s for s in skipped) \
        and any("b.tif" in s for s in skipped)
    with pytest.raises(ValueError, match=r"a\.png.*FIFO"):
        list(open_frames(folder))  # fail mode: the first one stops the run, by name


@pytest.mark.parametrize("ext", [".webp", ".jp2"])
def test_other_formats_under_an_image_name_are_refused_before_they_are_decoded(
        tmp_path: Path, monkeypatch, ext: str):
    # OpenCV decodes by content: a 10 KB WebP of 16000x16000 named x.png took 1.1 GB to decode
    # before the size check; only headers bpedge reads (PNG, JPEG, BMP, TIFF) are decoded.
    ok, encoded = cv2.imencode(ext, frame())
    if not ok:
        pytest.skip(f"this OpenCV cannot write {ext}")
    path = tmp_path / "x.png"
    path.write_bytes(encoded.tobytes())

    def no_decode(*args, **kwargs):
        raise AssertionError("a file whose header bpedge cannot read was decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ValueError, match=r"x\.png: not a readable image.*not PNG, JPEG, BMP or TIFF"):
        list(open_frames(path))
