"""Every malformed frame the API can be given, against the real Segmenter (ONNX Runtime on the
session's exported bundle): each is refused with a ValueError that says what was expected, and
the next good frame gives exactly the answer it gave before. Odd but valid layouts (strided,
read-only, reversed, Fortran order, extra channel axis, float or wider integers holding 0..255)
give the same answer as the plain uint8 frame."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from bpedge.train.data import read_image

from bpedge import Segmenter
from bpedge._frames import MAX_SIDE


def zeros_view(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """An array of any size that allocates one element (every stride 0)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))


def with_pixel(value: float, dtype) -> np.ndarray:
    frame = np.full((24, 32), 100, dtype)
    frame[5, 7] = value
    return frame


class FakeGpuArray:
    """What a CuPy array or CUDA tensor looks like to the Segmenter."""

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": (24, 32), "typestr": "|u1", "data": (0, False), "version": 3}


MALFORMED = {
    # wrong dtype
    "bool": (np.zeros((24, 32), bool), "dtype"),
    "complex": (np.zeros((24, 32), np.complex64), "dtype"),
    "object": (np.zeros((24, 32), object), "dtype"),
    "string": (np.full((24, 32), "a"), "dtype"),
    "datetime": (np.zeros((24, 32), "datetime64[s]"), "dtype"),
    "int16 below 0": (np.full((24, 32), -1, np.int16), r"\[0, 255\]"),
    "uint16 above 255": (np.full((24, 32), 300, np.uint16), r"\[0, 255\]"),
    # wrong rank
    "scalar": (np.array(7, np.uint8), r"\(H, W\)"),
    "1-D": (np.zeros(32, np.uint8), r"\(H, W\)"),
    "4-D video": (np.zeros((2, 24, 32, 1), np.uint8), r"\(H, W\)"),
    # empty and too small
    "0x0": (np.zeros((0, 0), np.uint8), "at least 2x2"),
    "0 rows": (np.zeros((0, 32), np.uint8), "at least 2x2"),
    "0 columns, 3 channels": (np.zeros((24, 0, 3), np.uint8), "at least 2x2"),
    "1x1": (np.zeros((1, 1), np.uint8), "at least 2x2"),
    "1 row": (np.zeros((1, 32), np.uint8), "at least 2x2"),
    "1 column": (np.zeros((24, 1), np.uint8), "at least 2x2"),
    # huge (refused before anything the size of the frame is allocated)
    "too tall": (zeros_view((MAX_SIDE + 1, 16)), f"at most {MAX_SIDE}"),
    "too wide": (zeros_view((16, MAX_SIDE + 1)), f"at most {MAX_SIDE}"),
    "huge BGR": (zeros_view((MAX_SIDE * 4, MAX_SIDE * 4, 3)), f"at most {MAX_SIDE}"),
    # non-finite or out-of-range float input
    "NaN float32": (with_pixel(np.nan, np.float32), "NaN"),
    "+inf float64": (with_pixel(np.inf, np.float64), "NaN or infinite"),
    "-inf float16": (with_pixel(-np.inf, np.float16), "NaN or infinite"),
    "all NaN": (np.full((24, 32), np.nan), "NaN"),
    "float above 255": (with_pixel(255.6, np.float32), r"\[0, 255\]"),
    "float below 0": (with_pixel(-0.6, np.float64), r"\[0, 255\]"),
    # wrong channel count
    "0 channels": (np.zeros((24, 32, 0), np.uint8), "1 or 3"),
    "2 channels": (np.zeros((24, 32, 2), np.uint8), "1 or 3"),
    "4 channels (BGRA)": (np.zeros((24, 32, 4), np.uint8), "1 or 3"),
    "channels first": (np.zeros((3, 24, 32), np.uint8), "1 or 3"),
    # not an array at all
    "None": (None, "numpy array"),
    "str": ("frame.png", "numpy array"),
    "nested list": ([[0, 1], [2, 3]], "numpy array"),
    "GPU array on the CPU backend": (FakeGpuArray(), "GPU array"),
}


@pytest.fixture(scope="module")
def seg(tiny_bundle: Path):
    with Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def good(phantom_dir: Path) -> np.ndarray:
    return read_image(phantom_dir / "2_3.tif")


@pytest.fixture(scope="module")
def expected(seg, good):
    return seg(good)


def assert_same(result, expected) -> None:
    assert result.box == expected.box and result.score == expected.score
    assert result.present == expected.present
    np.testing.assert_array_equal(result.mask, expected.mask)


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_frame_is_refused_and_the_next_frame_is_unaffected(seg, good, expected, kind):
    frame, message = MALFORMED[kind]
    with pytest.raises(ValueError, match=message):
        seg(frame)
    assert_same(seg(good), expected)


@pytest.mark.parametrize("kind", ["NaN float32", "4 channels (BGRA)", "1x1", "too wide",
                                  "GPU array on the CPU backend"])
def test_a_malformed_frame_in_a_batch_refuses_the_batch_and_the_next_batch_works(
    seg, good, expected, kind
):
    frame, message = MALFORMED[kind]
    with pytest.raises(ValueError, match=message):
        seg.segment_batch([good, frame, good])
    for result in seg.segment_batch([good, good]):
        assert_same(result, expected)


@pytest.mark.parametrize("kind", ["all NaN", "0 rows", "string", "GPU array on the CPU backend"])
def test_a_malformed_frame_in_a_stream_stops_it_with_the_reason_and_leaks_no_thread(
    seg, good, expected, kind
):
    frame, message = MALFORMED[kind]
    threads_before = threading.active_count()
    delivered = 0
    with pytest.raises(ValueError, match=message):
        for result in seg.stream(iter([good, good, frame, good]), depth=2):
            assert_same(result, expected)  # the frames before the bad one are answered right
            delivered += 1
    assert delivered <= 2
    assert threading.active_count() == threads_before  # the stream's worker pool was shut down
    assert [r.box for r in seg.stream(iter([good, good]), depth=2)] == [expected.box] * 2


def odd_layouts(good: np.ndarray) -> dict[str, np.ndarray]:
    h, w = good.shape
    wide = np.zeros((h * 2, w * 3), np.uint8)
    wide[::2, ::3] = good
    read_only = good.copy()
    read_only.setflags(write=False)
    return {
        "strided view": wide[::2, ::3],
        "read-only": read_only,
        "reversed rows and columns": np.flip(np.flip(good).copy()),
        "Fortran order": np.asfortranarray(good),
        "transposed view": np.ascontiguousarray(good.T).T,
        "(H, W, 1)": good[:, :, None],
        "BGR, equal channels": np.dstack([good, good, good]),
        "non-contiguous BGR": np.dstack([good, good, good, good])[:, :, 1:],
        "float32": good.astype(np.float32),
        "float64 off the integers": good.astype(np.float64) - 0.3 * (good > 0),
        "int64": good.astype(np.int64),
        "uint16": good.astype(np.uint16),
        "big-endian uint16": good.astype(">u2"),
    }


def test_odd_but_valid_layouts_give_the_plain_frames_answer(seg, good, expected):
    for name, frame in odd_layouts(good).items():
        before = frame.copy()
        result = seg(frame)
        assert result.mask.shape == good.shape, name
        assert_same(result, expected)
        np.testing.assert_array_equal(frame, before)  # the caller's frame is never written to


@pytest.mark.parametrize("shape", [(2, 2), (MAX_SIDE, 2), (2, MAX_SIDE), (3, 5, 3)])
def test_the_smallest_and_largest_sides_accepted_run(seg, shape):
    frame = np.ascontiguousarray(zeros_view(shape) + np.uint8(90))
    result = seg(frame)
    assert result.mask.shape == shape[:2] and set(np.unique(result.mask)) <= {0, 255}
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= shape[1] and 0 <= y0 < y1 <= shape[0]
