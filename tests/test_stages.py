"""The reference stages against OpenCV and against their own inverse."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bpedge._metrics import box_from_mask, box_iou, dice
from bpedge._stages import (
    MIN_BOX_SIDE,
    clamp_box,
    crop_resize,
    crop_resize_normalize,
    normalize,
    paste_back,
    paste_probability,
    scale_box,
)

rng = np.random.default_rng(0)


@pytest.mark.parametrize(
    "box,out",
    [((10, 20, 74, 60), (96, 96)), ((0, 0, 580, 420), (224, 160)), ((3, 5, 4, 6), (96, 96)),
     ((100, 50, 300, 90), (96, 64)), ((5, 7, 200, 400), (31, 17))],
)
def test_integer_box_equals_cv2_resize_of_the_crop(box, out):
    img = rng.random((420, 580), dtype=np.float32) * 255
    x0, y0, x1, y1 = box
    expected = cv2.resize(img[y0:y1, x0:x1], out, interpolation=cv2.INTER_LINEAR)
    got = crop_resize(img, box, *out)
    np.testing.assert_allclose(got, expected, atol=2e-3)


def test_uint8_input_matches_float_input():
    img = rng.integers(0, 256, (50, 70), dtype=np.uint8)
    np.testing.assert_array_equal(crop_resize(img, (3, 4, 40, 30), 16, 16),
                                  crop_resize(img.astype(np.float32), (3, 4, 40, 30), 16, 16))


def test_fractional_box_moves_samples_continuously():
    img = np.tile(np.arange(100, dtype=np.float32), (10, 1))  # value = x
    # A ramp is reproduced exactly by bilinear sampling away from the clamped edges.
    out = crop_resize(img, (10.25, 0, 50.25, 10), 40, 10)
    np.testing.assert_allclose(out[0, 1:-1], np.arange(1, 39) + 10.25, atol=1e-4)


def test_box_partly_outside_is_edge_clamped_to_the_frame():
    img = rng.random((30, 40), dtype=np.float32)
    out = crop_resize(img, (-10, -10, 20, 20), 8, 8)
    assert np.isfinite(out).all()
    assert out.min() >= img.min() - 1e-6 and out.max() <= img.max() + 1e-6


def test_normalize_dataset_and_per_image():
    v = rng.random((96, 96), dtype=np.float32) * 200
    np.testing.assert_allclose(normalize(v, 10.0, 2.0), (v - 10) / 2, rtol=1e-6)
    per = normalize(v, None, None)
    assert abs(per.mean()) < 1e-4 and abs(per.std() - 1) < 1e-4
    flat = normalize(np.full((4, 4), 7, np.float32), None, None)
    assert np.all(flat == 0)
    np.testing.assert_allclose(crop_resize_normalize(v, (0, 0, 96, 96), 96, 96, 1.0, 4.0), (v - 1) / 4, rtol=1e-5)


def test_clamp_box_clips_and_keeps_min_side():
    assert clamp_box((-5, -5, 50, 60), 40, 30) == (0, 0, 40, 30)
    x0, y0, x1, y1 = clamp_box((10, 10, 10, 10), 40, 30)
    assert x1 - x0 == pytest.approx(MIN_BOX_SIDE) and y1 - y0 == pytest.approx(MIN_BOX_SIDE)
    x0, y0, x1, y1 = clamp_box((100, 100, 120, 130), 40, 30)  # wholly outside: collapses to the edge
    assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 30
    with pytest.raises(ValueError, match="finite"):
        clamp_box((0, 0, float("nan"), 1), 10, 10)
    assert scale_box((1, 2, 3, 4), 2, 0.5) == (2, 1, 6, 2)


def test_paste_integer_box_equals_cv2_resize_of_probability():
    prob = rng.random((96, 96), dtype=np.float32)
    box = (40, 30, 140, 110)
    canvas = paste_probability(prob, box, 580, 420)
    expected = cv2.resize(prob, (100, 80), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(canvas[30:110, 40:140], expected, atol=1e-5)
    canvas[30:110, 40:140] = 0
    assert not canvas.any()


def test_crop_then_paste_round_trips_a_smooth_mask():
    yy, xx = np.mgrid[0:420, 0:580]
    truth = ((xx - 300) ** 2 / 60**2 + (yy - 200) ** 2 / 40**2 <= 1).astype(np.uint8) * 255
    box = box_from_mask(truth)
    crop = crop_resize(truth, box, 96, 96) / 255.0
    back = paste_back(crop, box, 580, 420, threshold=0.5)
    assert set(np.unique(back)) <= {0, 255}
    assert dice(back, truth) > 0.98


def test_paste_back_absent_and_partly_outside():
    prob = np.ones((96, 96), np.float32)
    assert not paste_back(prob, (0, 0, 10, 10), 20, 20, 0.5, present=False).any()
    m = paste_back(prob, (-5.0, -5.0, 5.0, 5.0), 20, 20, 0.5)
    assert m[:5, :5].all() and m.sum() == 25 * 255


def test_metrics():
    m = np.zeros((10, 10), np.uint8)
    assert box_from_mask(m) is None
    m[2:4, 3:7] = 255
    assert box_from_mask(m) == (3, 2, 7, 4)
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert dice(m, m) == 1.0 and dice(np.zeros_like(m), np.zeros_like(m)) == 1.0
    assert dice(np.zeros_like(m), np.zeros_like(m), empty=0.0) == 0.0
    assert dice(m, np.zeros_like(m)) == 0.0
