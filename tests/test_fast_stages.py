"""The OpenCV stages against the NumPy reference in bpedge._stages: float rounding only, the same
masks, and per-thread buffers that frames in flight never share."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bpedge import _stages as ref
from bpedge._cascade import HostCascade, detector_input, segmenter_input
from bpedge._cascade_spec import CascadeSpec
from bpedge._fast_stages import (
    _tap_range,
    crop_into,
    detector_crop_box,
    normalize_resize_frame_into,
    paste_mask,
    resize_frame_into,
    stats_after_normalization,
)
from bpedge._preprocessing import box_found, crop_box, frame_box

# OpenCV computes the sampling coordinates in float32: at x ~ 580 px one float32 step is 6e-5 px,
# and a value moves by at most that times the image gradient (<= 255 per pixel on the random
# frames here): ~0.015 grey levels. Measured worst case on these boxes: 0.007.
CROP_ATOL = 1.5e-2  # uint8 units before normalisation


def _frame(seed: int, h: int = 420, w: int = 580) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _random_boxes(rng: np.random.Generator, n: int, w: int, h: int) -> list[ref.Box]:
    boxes = []
    for _ in range(n):
        bw, bh = rng.uniform(1.5, w * 0.8), rng.uniform(1.5, h * 0.8)
        x0, y0 = rng.uniform(-40, w), rng.uniform(-40, h)
        boxes.append(ref.clamp_box((x0, y0, x0 + bw, y0 + bh), w, h))
    boxes += [(0.0, 0.0, float(w), float(h)), (10.0, 20.0, 106.0, 116.0), (w - 1.0, h - 1.0, w, h)]
    return boxes


@pytest.mark.parametrize(("hw", "out_hw"), [((420, 580), (160, 224)), ((1080, 1920), (416, 576)),
                                            ((96, 96), (96, 96)), ((50, 70), (160, 224))])
@pytest.mark.parametrize(("mean", "std"), [(120.0, 40.0), (None, None)])
def test_whole_frame_resize_matches_reference(hw, out_hw, mean, std):
    grey = _frame(1, *hw)
    want = ref.crop_resize_normalize(grey, (0, 0, hw[1], hw[0]), out_hw[1], out_hw[0], mean, std)
    got = np.full(out_hw, np.nan, np.float32)
    resize_frame_into(grey, got, mean, std)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(("hw", "out_hw"), [((420, 580), (320, 448)), ((1080, 1920), (416, 576)),
                                            ((96, 96), (96, 96)), ((50, 70), (160, 224))])
def test_normalizing_before_the_resize_matches_reference(hw, out_hw):
    grey = _frame(3, *hw)
    want = ref.crop_resize_normalize(grey, (0, 0, hw[1], hw[0]), out_hw[1], out_hw[0], 114.9, 46.0)
    frame = np.full(hw, np.nan, np.float32)
    got = np.full(out_hw, np.nan, np.float32)
    normalize_resize_frame_into(grey, frame, got, 114.9, 46.0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(frame, (grey - 114.9) / 46.0, atol=1e-5)


@pytest.mark.parametrize(("mean", "std"), [(129.5, 44.3), (None, 44.3), (129.5, None),
                                           (None, None)])
def test_crops_of_the_normalized_frame_are_the_crops_of_the_frame(mean, std):
    """A crop read from the frame normalised with the detector's statistics, normalised with
    stats_after_normalization, is the crop of the frame itself (what the one-frame cascade does)."""
    grey = _frame(4)
    frame = np.empty(grey.shape, np.float32)
    normalize_resize_frame_into(grey, frame, np.empty((320, 448), np.float32), 114.9, 46.0)
    c_mean, c_std, eps = stats_after_normalization(mean, std, 114.9, 46.0)
    for box in _random_boxes(np.random.default_rng(5), 100, 580, 420):
        want = ref.crop_resize_normalize(grey, box, 96, 96, mean, std)
        got = np.empty((96, 96), np.float32)
        crop_into(frame, box, got, c_mean, c_std, eps)
        scale = 1.0 / max(float(std or ref.crop_resize(grey, box, 96, 96).std()), 1e-6)
        np.testing.assert_allclose(got, want, atol=CROP_ATOL * scale + 1e-4, err_msg=str(box))


@pytest.mark.parametrize(("mean", "std"), [(120.0, 40.0), (None, None)])
def test_subpixel_crop_matches_reference(mean, std):
    rng = np.random.default_rng(2)
    grey = _frame(2)
    for box in _random_boxes(rng, 200, 580, 420):
        want = ref.crop_resize(grey, box, 96, 96)
        got = np.full((96, 96), np.nan, np.float32)
        crop_into(grey, box, got, None if mean is None else 0.0, None if std is None else 1.0)
        if mean is not None:  # raw resampled values: the rounding bound in uint8 units
            np.testing.assert_allclose(got, want, atol=CROP_ATOL, err_msg=str(box))
        got_n = np.empty((96, 96), np.float32)
        crop_into(grey, box, got_n, mean, std)
        want_n = ref.crop_resize_normalize(grey, box, 96, 96, mean, std)
        scale = 1.0 / max(float(std or want.std()), 1e-6)
        np.testing.assert_allclose(got_n, want_n, atol=CROP_ATOL * scale + 1e-5, err_msg=str(box))


@pytest.mark.parametrize("margin", [0.0, 0.2, 1.5])
@pytest.mark.parametrize(("frame_hw", "input_hw"), [((420, 580), (320, 448)), ((1080, 1920), (416, 576)),
                                                    ((3, 5), (160, 224))])
def test_detector_crop_box_is_the_reference_bit_for_bit(margin, frame_hw, input_hw):
    rng = np.random.default_rng(7)
    in_h, in_w = input_hw
    raws = [rng.uniform([-60, -60, -60, -60], [in_w + 60, in_h + 60, in_w + 60, in_h + 60])
            for _ in range(300)]
    raws += [rng.uniform(0, 1e-3, 4), np.array([5.0, 5.0, 5.0, 5.0]),          # degenerate
             np.array([200.0, 100.0, 50.0, 20.0]),                                # reversed
             np.array([-500.0, -500.0, -400.0, -400.0]),                          # off the frame
             np.array([0.0, 0.0, in_w, in_h]), np.array([1e30, 0.0, 2e30, 5.0])]
    raws += [np.array(b) for b in ([np.nan, 1, 2, 3], [0, np.inf, 2, 3], [0, 1, -np.inf, 3])]
    spec = CascadeSpec(input_hw, 100.0, 50.0, (96, 96), None, None, 0.5, 0.5, crop_margin=margin)
    for raw in raws:
        raw32 = np.asarray(raw, np.float32)  # what a model returns
        got, found = detector_crop_box(raw32, frame_hw, input_hw, margin)
        want = crop_box("detector", frame_hw, margin, detected=frame_box(raw32, frame_hw, spec))
        assert got == want and all(type(v) is float for v in got), raw
        assert found is box_found(raw32), raw


def test_tap_range_is_the_reference_clamp():
    rng = np.random.default_rng(3)
    for _ in range(500):
        start, length, n = rng.uniform(-5, 100), rng.uniform(0.5, 80), int(rng.integers(1, 120))
        i0, i1, _ = ref._source_index(start, length, 7, n)
        lo, hi = _tap_range(start, length, n)
        assert lo <= i0.min() and i1.max() <= hi


def test_paste_back_masks_identical_away_from_the_threshold():
    """Random probabilities put many pixels right at the threshold: a pixel may differ only where
    the reference's pasted probability is within float rounding of it."""
    rng = np.random.default_rng(4)
    for box in _random_boxes(rng, 200, 580, 420):
        prob = rng.random((96, 96)).astype(np.float32)
        want = ref.paste_back(prob, box, 580, 420, 0.5)
        got = paste_mask(prob, box, 580, 420, 0.5)
        assert got.dtype == np.uint8 and got.shape == (420, 580)
        differ = got != want
        if differ.any():
            pasted = ref.paste_probability(prob, box, 580, 420)
            assert np.abs(pasted[differ] - 0.5).max() < 1e-5, box
    assert not paste_mask(np.ones((96, 96), np.float32), (0, 0, 10, 10), 20, 20, 0.5,
                          present=False).any()


def test_paste_back_identical_on_smooth_probabilities():
    """Segmenter-like (smooth) probability maps give exactly the reference's masks."""
    yy, xx = np.mgrid[0:96, 0:96]
    rng = np.random.default_rng(5)
    for box in _random_boxes(rng, 100, 580, 420):
        cx, cy, r = rng.uniform(20, 76), rng.uniform(20, 76), rng.uniform(8, 40)
        prob = (1 / (1 + np.exp(((xx - cx) ** 2 + (yy - cy) ** 2 - r * r) / 60))).astype(np.float32)
        np.testing.assert_array_equal(paste_mask(prob, box, 580, 420, 0.5),
                                      ref.paste_back(prob, box, 580, 420, 0.5))


def test_paste_back_identical_for_small_blobs_at_the_crop_edges():
    """Blobs in the corners and along the edges of the crop (where the taps are clamped), single
    pixels, and crops with nothing above the threshold give the reference's masks exactly."""
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[0:96, 0:96]
    centres = [(0, 0), (95, 0), (0, 95), (95, 95), (48, 0), (0, 48), (95, 48), (48, 95), (48, 48)]
    for box in _random_boxes(rng, 40, 580, 420):
        for cx, cy in centres:
            for r in (0.5, 3.0):
                prob = (1 / (1 + np.exp(((xx - cx) ** 2 + (yy - cy) ** 2 - r * r) / 2))
                        ).astype(np.float32)
                for t in (0.5, 0.85):
                    np.testing.assert_array_equal(paste_mask(prob, box, 580, 420, t),
                                                  ref.paste_back(prob, box, 580, 420, t),
                                                  err_msg=f"{box} {(cx, cy, r, t)}")
        below = np.full((96, 96), 0.3, np.float32)
        assert not paste_mask(below, box, 580, 420, 0.5).any()
    # A threshold equal to a probability keeps that pixel (>=), as the reference does.
    flat = np.full((96, 96), np.float32(0.7), np.float32)
    np.testing.assert_array_equal(paste_mask(flat, (10.3, 20.6, 90.2, 70.9), 120, 100, 0.7),
                                  ref.paste_back(flat, (10.3, 20.6, 90.2, 70.9), 120, 100, 0.7))
    assert paste_mask(flat, (10.3, 20.6, 90.2, 70.9), 120, 100, 0.7).any()


@pytest.mark.parametrize("threshold", [0.0, 1e-50, 0.5, 0.7, 1.0])
def test_paste_back_identical_with_probabilities_at_the_threshold(threshold):
    """Many probabilities equal to the threshold or one float32 step either side of it, on a box
    the crop maps onto pixel for pixel (so no interpolation rounding stands between the two
    paths, as it may elsewhere): the mask is the reference's, float32 ``>=`` on both."""
    rng = np.random.default_rng(11)
    t32 = np.float32(threshold)
    special = [t32, np.nextafter(t32, np.float32(-1)), np.nextafter(t32, np.float32(2))]
    for box in [(10.0, 20.0, 106.0, 116.0), (400.0, 300.0, 496.0, 396.0)]:
        prob = rng.random((96, 96)).astype(np.float32)
        prob.flat[rng.choice(prob.size, 2000, replace=False)] = rng.choice(special, 2000)
        np.testing.assert_array_equal(paste_mask(prob, box, 580, 420, threshold),
                                      ref.paste_back(prob, box, 580, 420, threshold),
                                      err_msg=str(box))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "mixed"])
def test_paste_back_identical_with_non_finite_probabilities(bad):
    """A diverged model's NaN, +inf and -inf taps count as 0 (not BP) before interpolation, on
    both paths: OpenCV's bilinear sum over such a tap differed from NumPy's at ~0.6% of the
    pasted pixels. Smooth maps, so no rounding near the threshold stands between the two."""
    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[0:96, 0:96]
    for box in [*_random_boxes(rng, 30, 580, 420), (10.0, 20.0, 106.0, 116.0)]:
        cx, cy, r = rng.uniform(20, 76), rng.uniform(20, 76), rng.uniform(8, 40)
        prob = (1 / (1 + np.exp(((xx - cx) ** 2 + (yy - cy) ** 2 - r * r) / 60))).astype(np.float32)
        where = rng.choice(prob.size, 300, replace=False)
        prob.flat[where] = (rng.choice([np.nan, np.inf, -np.inf], where.size) if bad == "mixed"
                            else bad)
        want = ref.paste_back(prob, box, 580, 420, 0.5)
        np.testing.assert_array_equal(paste_mask(prob, box, 580, 420, 0.5), want, err_msg=str(box))
        # The definition: the same mask as the map with those taps set to 0.
        np.testing.assert_array_equal(
            want, ref.paste_back(np.where(np.isfinite(prob), prob, 0), box, 580, 420, 0.5))


SPEC = CascadeSpec((160, 224), 120.0, 40.0, (96, 96), None, None, 0.5, 0.5)


@pytest.mark.parametrize("spec", [SPEC, CascadeSpec((320, 448), 114.9, 46.0, (96, 96), 129.5,
                                                  44.3, 0.5, 0.5, crop_margin=0.2)])
def test_cascade_feeds_the_models_what_the_reference_makes(spec):
    grey = _frame(6)
    seen: dict[str, np.ndarray] = {}

    def detector(batch):
        seen["detector"] = batch.copy()
        return np.array([0.9], np.float32), np.array([[30.5, 20.25, 130.75, 100.5]], np.float32)

    def segmenter(batch):
        seen["segmenter"] = batch.copy()
        return np.full_like(batch, 0.7)

    r = HostCascade(detector, segmenter, spec).run(grey)
    np.testing.assert_allclose(seen["detector"][0], detector_input(grey, spec), atol=1e-4)
    np.testing.assert_allclose(seen["segmenter"][0], segmenter_input(grey, r.box, spec), atol=1e-3)


@pytest.mark.parametrize(("crop_mean", "crop_std"), [(None, None), (None, 1e-3), (129.5, None)])
def test_a_flat_crop_with_its_own_statistics_is_the_same_alone_and_in_a_batch(crop_mean, crop_std):
    """A crop in a flat region (an ultrasound frame's black border) normalised with its own
    statistics: read from the detector-normalised frame, those statistics are float32 rounding
    noise, which the eps floor magnified into crop values of +-4 where the reference and the batch
    path give exactly 0."""
    spec = CascadeSpec((160, 224), 121.7, 40.1, (16, 16), crop_mean, crop_std, 0.5, 0.5,
                       crop_margin=0.2)
    grey = np.full((420, 580), 7, np.uint8)
    seen: list[np.ndarray] = []

    def detector(batch):
        return (np.full(len(batch), 0.9, np.float32),
                np.tile(np.array([5.0, 4.0, 40.0, 30.0], np.float32), (len(batch), 1)))

    def segmenter(batch):
        seen.append(batch.copy())
        return np.full_like(batch, 0.7)

    cascade = HostCascade(detector, segmenter, spec)
    alone = cascade.run(grey)
    cascade.run_batch([grey, grey])
    want = segmenter_input(grey, alone.box, spec)
    np.testing.assert_allclose(seen[0][0], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(seen[0][0], seen[1][1], rtol=1e-5, atol=1e-4)


def test_buffers_are_per_thread_and_reused():
    """The models get the same buffer frame after frame on one thread, and different buffers on
    different threads (stream() workers never share one)."""
    ids: dict[str, set[int]] = {"main": set(), "other": set()}
    where = threading.local()

    def detector(batch):
        ids[where.name].add(batch.__array_interface__["data"][0])
        return np.array([0.9], np.float32), np.array([[10, 10, 100, 100]], np.float32)

    cascade = HostCascade(detector, lambda b: np.zeros_like(b), SPEC)
    where.name = "main"
    for seed in range(3):
        cascade.run(_frame(seed))

    def other():
        where.name = "other"
        cascade.run(_frame(9))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(ids["main"]) == 1 and len(ids["other"]) == 1 and ids["main"] != ids["other"]


def test_masks_are_new_arrays_every_frame():
    def detector(batch):
        return np.array([0.9], np.float32), np.array([[10, 10, 100, 100]], np.float32)

    cascade = HostCascade(detector, lambda b: np.ones_like(b), SPEC)
    a, b = cascade.run(_frame(1)), cascade.run(_frame(2))
    assert not np.shares_memory(a.mask, b.mask)
    a.mask[:] = 0
    assert b.mask.any()
