"""Property tests of the reference stages (bpedge._stages) on random frame sizes, boxes and values.

Boxes come inside the frame, partly or wholly outside, degenerate (zero width or height),
reversed, huge, and non-finite. The invariants: a finite box clamps to one inside the frame with
sides of at least one pixel; crops have the asked shape, are finite and stay within the range of
the pixels they sample; masks have the frame's shape, hold only 0 and 255, are empty outside the
box and when there is no BP, and shrink as the threshold rises; anything else is a ValueError.

Derandomized, so CI sees the same examples every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bpedge._stages import MIN_BOX_SIDE, clamp_box, crop_resize, crop_resize_normalize, paste_back

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)

sides = st.integers(1, 48)
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def boxes(draw: st.DrawFn, width: int, height: int) -> tuple[float, float, float, float]:
    """A finite box of one of the shapes a detector can produce for a ``width`` x ``height`` frame."""
    kind = draw(st.sampled_from(["inside", "anywhere", "degenerate", "reversed", "huge"]))
    if kind == "inside":
        x0 = draw(st.floats(0, width, exclude_max=True))
        y0 = draw(st.floats(0, height, exclude_max=True))
        return (x0, y0, draw(st.floats(x0, width)), draw(st.floats(y0, height)))
    if kind == "huge":
        return (draw(finite), draw(finite), draw(finite), draw(finite))
    near_x = st.floats(-2.0 * width, 3.0 * width)
    near_y = st.floats(-2.0 * height, 3.0 * height)
    x0, y0, x1, y1 = draw(near_x), draw(near_y), draw(near_x), draw(near_y)
    if kind == "degenerate":
        return (x0, y0, x0, y1) if draw(st.booleans()) else (x0, y0, x1, y0)
    if kind == "reversed":
        return (max(x0, x1), max(y0, y1), min(x0, x1), min(y0, y1))
    return (x0, y0, x1, y1)


@st.composite
def frame_and_box(draw: st.DrawFn) -> tuple[int, int, tuple[float, float, float, float]]:
    w, h = draw(sides), draw(sides)
    return w, h, draw(boxes(w, h))


@st.composite
def images(draw: st.DrawFn, max_side: int = 40) -> np.ndarray:
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["uint8", "constant", "float"]))
    if kind == "uint8":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "constant":
        return np.full((h, w), draw(st.integers(0, 255)), np.uint8)
    return (rng.random((h, w)) * draw(st.floats(1e-3, 1e4))).astype(np.float32)


def covered(box: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """(height, width) bool: pixels whose centre lies in the box (the definition, not the stage)."""
    x0, y0, x1, y1 = box
    cx, cy = np.arange(width) + 0.5, np.arange(height) + 0.5
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


# --- clamp_box -----------------------------------------------------------------------------------


@FAST
@given(frame_and_box())
def test_a_clamped_box_lies_inside_the_frame_with_sides_of_at_least_one_pixel(case):
    w, h, box = case
    x0, y0, x1, y1 = clamp_box(box, w, h)
    assert all(math.isfinite(v) for v in (x0, y0, x1, y1))
    assert 0.0 <= x0 < x1 <= w and 0.0 <= y0 < y1 <= h
    assert x1 - x0 >= min(MIN_BOX_SIDE, w) - 1e-9 * w
    assert y1 - y0 >= min(MIN_BOX_SIDE, h) - 1e-9 * h
    assert clamp_box((x0, y0, x1, y1), w, h) == pytest.approx((x0, y0, x1, y1), abs=1e-9 * max(w, h))


@FAST
@given(st.data())
def test_a_box_inside_the_frame_with_sides_of_a_pixel_or_more_is_kept(data):
    w, h = data.draw(st.integers(2, 48)), data.draw(st.integers(2, 48))
    x0 = data.draw(st.floats(0, w - 1))
    y0 = data.draw(st.floats(0, h - 1))
    box = (x0, y0, data.draw(st.floats(x0 + 1, w)), data.draw(st.floats(y0 + 1, h)))
    assume(box[2] - x0 >= MIN_BOX_SIDE and box[3] - y0 >= MIN_BOX_SIDE)  # x0 + 1 may round down
    assert clamp_box(box, w, h) == box
    assert clamp_box((box[2], box[3], box[0], box[1]), w, h) == box  # corners in either order


@FAST
@given(frame_and_box(), st.integers(0, 3), non_finite)
def test_a_non_finite_box_is_a_value_error(case, position, bad):
    w, h, box = case
    broken = list(box)
    broken[position] = bad
    with pytest.raises(ValueError, match="finite"):
        clamp_box(broken, w, h)


@pytest.mark.parametrize(("w", "h"), [(0, 10), (10, 0), (-1, 5)])
def test_clamping_to_an_empty_frame_is_a_value_error(w, h):
    with pytest.raises(ValueError, match="at least 1x1"):
        clamp_box((0, 0, 1, 1), w, h)


# --- crop / resize / normalise -----------------------------------------------------------------


@FAST
@given(images(), st.data(), st.integers(1, 24), st.integers(1, 24))
def test_a_crop_has_the_asked_shape_is_finite_and_within_the_sampled_range(image, data, out_w, out_h):
    h, w = image.shape
    box = data.draw(boxes(w, h))
    if not (box[2] > box[0] and box[3] > box[1]):
        with pytest.raises(ValueError, match="x0 < x1"):
            crop_resize(image, box, out_w, out_h)
        box = clamp_box(box, w, h)
    crop = crop_resize(image, box, out_w, out_h)
    assert crop.shape == (out_h, out_w) and crop.dtype == np.float32
    assert np.isfinite(crop).all()
    # Bilinear weights are convex: nothing outside the image's own range appears.
    lo, hi = float(image.min()), float(image.max())
    tol = 1e-5 * max(1.0, abs(hi))
    assert crop.min() >= lo - tol and crop.max() <= hi + tol


@FAST
@given(images(), st.data(), st.floats(-300, 300), st.floats(1e-3, 300))
def test_normalised_crops_are_finite_for_dataset_and_per_image_statistics(image, data, mean, std):
    h, w = image.shape
    box = clamp_box(data.draw(boxes(w, h)), w, h)
    dataset = crop_resize_normalize(image, box, 12, 10, mean, std)
    assert dataset.shape == (10, 12) and dataset.dtype == np.float32
    assert np.isfinite(dataset).all()
    np.testing.assert_allclose(dataset * np.float32(std) + np.float32(mean),
                               crop_resize(image, box, 12, 10), rtol=1e-4, atol=1e-3 * (1 + std))
    per_image = crop_resize_normalize(image, box, 12, 10, None, None)
    assert np.isfinite(per_image).all()
    assert abs(float(per_image.mean(dtype=np.float64))) < 1e-3 * (1 + float(np.abs(per_image).max()))
    if np.ptp(crop_resize(image, box, 12, 10)) == 0:
        assert not per_image.any()  # a flat crop is all zeros, never a division by zero


@FAST
@given(images(), st.integers(0, 3), non_finite)
def test_a_non_finite_crop_box_is_a_value_error(image, position, bad):
    h, w = image.shape
    box = [0.0, 0.0, float(w), float(h)]
    box[position] = bad
    with pytest.raises(ValueError, match="box"):
        crop_resize_normalize(image, box, 8, 8, 0.0, 1.0)


@FAST
@given(images(), st.sampled_from([(0, 4), (4, 0), (-1, 3)]))
def test_an_empty_output_size_is_a_value_error(image, size):
    h, w = image.shape
    with pytest.raises(ValueError, match="output size"):
        crop_resize(image, (0, 0, w, h), *size)


# --- paste-back --------------------------------------------------------------------------------


@st.composite
def probabilities(draw: st.DrawFn) -> np.ndarray:
    ch, cw = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["random", "ones", "zeros", "binary"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "ones":
        return np.ones((ch, cw), np.float32)
    if kind == "zeros":
        return np.zeros((ch, cw), np.float32)
    if kind == "binary":
        return (rng.random((ch, cw)) > 0.5).astype(np.float32)
    return rng.random((ch, cw), dtype=np.float32)


@FAST
@given(frame_and_box(), probabilities(), st.floats(0.0, 1.0), st.booleans())
def test_a_pasted_mask_is_0_255_in_the_frames_shape_and_empty_outside_the_box(
    case, prob, threshold, clamp
):
    w, h, box = case
    if clamp or not (box[2] > box[0] and box[3] > box[1]):
        box = clamp_box(box, w, h)
    mask = paste_back(prob, box, w, h, threshold)
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert not mask[~covered(box, w, h)].any()
    assert not paste_back(prob, box, w, h, threshold, present=False).any()


@FAST
@given(frame_and_box(), st.integers(1, 24), st.integers(1, 24), st.floats(0.0, 1.0))
def test_a_certain_probability_fills_the_clamped_box_and_a_zero_one_fills_nothing(
    case, cw, ch, threshold
):
    w, h, box = case
    box = clamp_box(box, w, h)
    inside = covered(box, w, h)
    assert inside.any()  # a clamped box always covers at least one pixel centre
    full = paste_back(np.ones((ch, cw), np.float32), box, w, h, threshold)
    np.testing.assert_array_equal(full == 255, inside)
    if np.float32(threshold) > 0:  # masks compare in float32, where 5e-324 is 0
        assert not paste_back(np.zeros((ch, cw), np.float32), box, w, h, threshold).any()


@FAST
@given(frame_and_box(), probabilities(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_a_higher_threshold_never_adds_pixels(case, prob, t1, t2):
    w, h, box = case
    box = clamp_box(box, w, h)
    low, high = sorted((t1, t2))
    loose, strict = paste_back(prob, box, w, h, low), paste_back(prob, box, w, h, high)
    assert not (strict & ~loose).any()


@FAST
@given(frame_and_box(), probabilities(), st.integers(0, 3), non_finite)
def test_a_non_finite_paste_box_is_a_value_error(case, prob, position, bad):
    w, h, box = case
    broken = list(clamp_box(box, w, h))
    broken[position] = bad
    with pytest.raises(ValueError, match="box"):
        paste_back(prob, broken, w, h, 0.5)
