"""Frame validation: every malformed frame gets a ValueError that names what was expected."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bpedge._frames import MAX_SIDE, as_grey_frame


def test_accepted_forms_become_contiguous_uint8_grey():
    g = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    assert as_grey_frame(g) is g or np.array_equal(as_grey_frame(g), g)
    np.testing.assert_array_equal(as_grey_frame(g[:, :, None]), g)
    bgr = np.dstack([g, g // 2, 255 - g])
    np.testing.assert_array_equal(as_grey_frame(bgr), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(as_grey_frame(g.astype(np.float32)), g)
    strided = np.ascontiguousarray(np.repeat(g, 2, axis=1))[:, ::2]
    out = as_grey_frame(strided)
    assert out.flags.c_contiguous and np.array_equal(out, g)
    ro = g.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(as_grey_frame(ro), g)


@pytest.mark.parametrize(
    "frame,match",
    [
        (np.zeros((0, 10), np.uint8), "at least 2x2"),
        (np.zeros((1, 1), np.uint8), "at least 2x2"),
        (np.zeros((10,), np.uint8), r"\(H, W\)"),
        (np.zeros((2, 10, 10, 1), np.uint8), r"\(H, W\)"),
        (np.zeros((10, 10, 4), np.uint8), "1 or 3"),
        (np.zeros((10, 10, 2), np.uint8), "1 or 3"),
        (np.full((10, 10), np.nan, np.float32), "NaN"),
        (np.full((10, 10), np.inf, np.float64), "NaN or infinite"),
        (np.full((10, 10), 300.0, np.float32), r"\[0, 255\]"),
        (np.full((10, 10), -1, np.int16), r"\[0, 255\]"),
        (np.zeros((10, 10), bool), "dtype"),
        (np.zeros((10, 10), complex), "dtype"),
        (np.zeros((10, 10), object), "dtype"),
        ("not a frame", "numpy array"),
        (None, "numpy array"),
    ],
)
def test_malformed_frames_raise_value_error(frame, match):
    with pytest.raises(ValueError, match=match):
        as_grey_frame(frame)


def test_huge_frame_refused_without_allocating():
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (MAX_SIDE + 1, 10), (0, 0))
    with pytest.raises(ValueError, match="at most"):
        as_grey_frame(big)


def test_masked_arrays_are_refused():
    frame = np.ma.masked_array(np.full((8, 8), 300, np.uint16), mask=True)
    frame.mask[4:, :] = False
    frame.data[4:, :] = 10  # the unmasked pixels are valid 8-bit values; the masked ones are not
    with pytest.raises(ValueError, match="masked array.*filled"):
        as_grey_frame(frame)


def test_pil_images_are_read_by_mode():
    image_module = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    pil_rgb = image_module.fromarray(rgb)
    # PIL is RGB where bpedge's 3-channel frames are BGR: converted with RGB weights
    assert np.array_equal(as_grey_frame(pil_rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    grey = pil_rgb.convert("L")
    assert np.array_equal(as_grey_frame(grey), np.asarray(grey))
    for mode in ("P", "YCbCr", "HSV", "1", "LA", "RGBA", "CMYK"):
        with pytest.raises(ValueError, match=f"mode '{mode}'"):
            as_grey_frame(pil_rgb.convert(mode))
