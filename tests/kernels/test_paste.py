"""paste.cu under host emulation against the one reference, bpedge._stages.paste_back.

The masks must be equal pixel for pixel, except where the reference's pasted probability lies within
1e-6 of the threshold (the kernel interpolates in float32, the reference in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
from bpedge.kernels import emulated_paste, emulated_preprocess

from bpedge import _stages

pytestmark = pytest.mark.usefixtures("host_library")

NEAR_THRESHOLD = 1e-6
POISON_BYTE = 0xAB


def _expected(prob, box, width, height, threshold, present):
    box = tuple(float(v) for v in np.asarray(box, np.float32))  # the kernel reads float32 boxes
    mask = _stages.paste_back(prob.astype(np.float32), box, width, height, threshold, present)
    pasted = _stages.paste_probability(prob.astype(np.float32), box, width, height)
    undecided = np.abs(pasted.astype(np.float64) - threshold) < NEAR_THRESHOLD if present else None
    return mask, undecided


def _check(prob, boxes, scores, width, height, threshold=0.5, score_threshold=0.5, **kw):
    n = prob.shape[0]
    masks = np.full((n, height, width), POISON_BYTE, np.uint8)
    emulated_paste(prob, boxes, scores, width, height, threshold=threshold,
                   score_threshold=score_threshold, masks=masks, **kw)
    assert set(np.unique(masks)) <= {0, 255}, "some mask pixels were never written"
    for i in range(n):
        present = bool(scores[i] >= score_threshold)
        expected, undecided = _expected(prob[i], boxes[i], width, height, threshold, present)
        differ = masks[i] != expected
        if undecided is not None:
            differ &= ~undecided
        assert not differ.any(), f"item {i}: {int(differ.sum())} pixels differ from paste_back"
    return masks


def _prob(rng, n, h=96, w=96, dtype=np.float32):
    return rng.random((n, h, w)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("box", [
    (10.3, 5.7, 50.2, 40.9),      # fractional, inside
    (-12.0, -3.5, 20.0, 30.0),    # partly outside
    (30.0, 20.0, 90.0, 70.0),     # past the right and bottom edges
    (22.4, 17.1, 23.4, 18.1),     # one pixel
    (0.0, 0.0, 61.0, 47.0),       # the whole frame
])
def test_paste_matches_reference(box, dtype):
    rng = np.random.default_rng(int(box[0] * 10) % 97)
    prob = _prob(rng, 1, dtype=dtype)
    _check(prob, np.array([box], np.float32), np.array([0.9], np.float32), 61, 47)


def test_smooth_probability_non_square_crop_and_thresholds():
    yy, xx = np.mgrid[:64, :96]
    blob = np.exp(-((xx - 40) ** 2 / 500 + (yy - 30) ** 2 / 300)).astype(np.float32)[None]
    for threshold in (0.1, 0.5, 0.93):
        masks = _check(blob, np.array([[5.5, 7.25, 52.75, 40.5]], np.float32),
                       np.array([1.0], np.float32), 60, 50, threshold=threshold)
        assert masks.any()


def test_batch_with_absent_item_and_score_threshold():
    rng = np.random.default_rng(1)
    prob = _prob(rng, 3)
    boxes = np.array([[3, 4, 30, 28], [10, 10, 50, 40], [0.5, 0.5, 60.5, 46.5]], np.float32)
    scores = np.array([0.8, 0.29, 0.3], np.float32)
    masks = _check(prob, boxes, scores, 61, 47, score_threshold=0.3)
    assert not masks[1].any() and masks[0].any() and masks[2].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_probabilities_count_as_zero_as_the_reference_says(dtype):
    """NaN, +inf and -inf taps (a diverged model) are 0 before interpolation: the kernel's lerp
    made any pixel with such a tap NaN (never BP), even at weight 0 (0 * inf)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:96, :96]
    prob = np.exp(-((xx - 45) ** 2 + (yy - 50) ** 2) / 900)[None].astype(dtype)
    where = rng.choice(prob.size, 400, replace=False)
    prob.flat[where] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype), where.size)
    masks = _check(prob, np.array([[5.5, 7.25, 52.75, 40.5]], np.float32),
                   np.array([1.0], np.float32), 60, 50, threshold=0.3)
    assert masks.any()


def test_score_below_threshold_or_nan_and_bad_boxes_give_empty_masks():
    prob = np.ones((4, 96, 96), np.float32)
    boxes = np.array([[2, 2, 20, 20], [2, 2, 20, 20], [np.nan, 2, 20, 20], [20, 2, 20, 20]], np.float32)
    scores = np.array([0.1, np.nan, 0.9, 0.9], np.float32)
    masks = np.full((4, 30, 40), POISON_BYTE, np.uint8)
    emulated_paste(prob, boxes, scores, 40, 30, threshold=0.5, score_threshold=0.5, masks=masks)
    assert not masks.any()


def test_odd_frame_size():
    rng = np.random.default_rng(2)
    prob = _prob(rng, 1)
    _check(prob, np.array([[10.5, 20.25, 400.7, 300.1]], np.float32), np.array([1.0], np.float32),
           579, 421)


def test_row_pitch_leaves_padding_untouched():
    rng = np.random.default_rng(3)
    prob = _prob(rng, 2)
    boxes = np.array([[3, 4, 30, 28], [1, 1, 40, 25]], np.float32)
    wide = np.full((2, 30, 48), POISON_BYTE, np.uint8)
    emulated_paste(prob, boxes, np.ones(2, np.float32), 40, 30, threshold=0.5, score_threshold=0.5,
                   masks=wide[:, :, :40])
    assert (wide[:, :, 40:] == POISON_BYTE).all()
    for i in range(2):
        expected, undecided = _expected(prob[i], boxes[i], 40, 30, 0.5, True)
        assert not ((wide[i, :, :40] != expected) & ~undecided).any()


@pytest.mark.parametrize("block", [(16, 16, 1), (64, 2, 1), (5, 3, 1), (256, 1, 1)])
def test_result_does_not_depend_on_block_shape(block):
    rng = np.random.default_rng(4)
    prob = _prob(rng, 1)
    boxes = np.array([[3.5, 4.5, 50.5, 40.5]], np.float32)
    scores = np.ones(1, np.float32)
    expected = emulated_paste(prob, boxes, scores, 61, 47, threshold=0.5, score_threshold=0.5)
    got = emulated_paste(prob, boxes, scores, 61, 47, threshold=0.5, score_threshold=0.5, block=block)
    np.testing.assert_array_equal(got, expected)


def test_crop_then_paste_chain_uses_the_box_preprocess_wrote():
    """The device chain: preprocess clamps the detector box and writes it; paste reads it back."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (2, 47, 61), dtype=np.uint8)
    detector_boxes = np.array([[-10, 5, 30, 30], [20, 10, 90, 60]], np.float32)
    _, boxes_out = emulated_preprocess(frames, detector_boxes, 96, 96)
    prob = _prob(rng, 2)
    _check(prob, boxes_out, np.ones(2, np.float32), 61, 47)
    for i in range(2):
        clamped = _stages.clamp_box(detector_boxes[i].astype(np.float64), 61, 47)
        np.testing.assert_array_equal(boxes_out[i], np.float32(clamped))


def test_bad_arguments_raise_value_errors():
    prob = np.zeros((1, 96, 96), np.float32)
    boxes, scores = np.zeros((1, 4), np.float32), np.ones(1, np.float32)
    with pytest.raises(ValueError, match="float32 or float16"):
        emulated_paste(prob.astype(np.float64), boxes, scores, 10, 10, threshold=0.5, score_threshold=0.5)
    with pytest.raises(ValueError, match="one box and one score"):
        emulated_paste(prob, np.zeros((2, 4), np.float32), scores, 10, 10, threshold=0.5,
                       score_threshold=0.5)
    with pytest.raises(ValueError, match="finite"):
        emulated_paste(prob, boxes, scores, 10, 10, threshold=float("nan"), score_threshold=0.5)


def test_probability_and_score_equal_to_their_thresholds_count_as_present():
    """``>=`` on both: the near-threshold exclusion above cannot see this, so it is pinned here."""
    prob = np.full((1, 96, 96), 0.5, np.float32)
    box = np.array([[4.0, 3.0, 20.0, 15.0]], np.float32)
    masks = emulated_paste(prob, box, np.array([0.25], np.float32), 30, 20, threshold=0.5,
                           score_threshold=0.25)
    expected = _stages.paste_back(prob[0], tuple(map(float, box[0])), 30, 20, 0.5)
    assert expected.any()
    np.testing.assert_array_equal(masks[0], expected)


@pytest.mark.parametrize("threshold", [0.7, 0.3, 0.1])
def test_a_threshold_not_exact_in_float32_counts_equal_probabilities_as_the_reference_does(
        threshold):
    """The reference compares float32 probabilities with the threshold in float32; the kernel
    in double got 0.7 above float32(0.7), so a probability equal to it was dropped."""
    prob = np.full((1, 96, 96), np.float32(threshold), np.float32)
    box = np.array([[4.0, 3.0, 20.0, 15.0]], np.float32)
    masks = emulated_paste(prob, box, np.array([0.9], np.float32), 30, 20, threshold=threshold,
                           score_threshold=0.25)
    expected = _stages.paste_back(prob[0], tuple(map(float, box[0])), 30, 20, threshold)
    assert expected.any()
    np.testing.assert_array_equal(masks[0], expected)
