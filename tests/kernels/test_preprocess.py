"""preprocess.cu under host emulation against the one reference, bpedge._stages.

Tolerances: FP32 within 1e-5 (absolute, in normalised units; the kernel interpolates in float32
from float64 taps, the reference in float64, and their difference stays near 1e-6 for frames of
0..255). FP16: the kernel's FP16 output is exactly the round-to-nearest-even of its FP32 result, and
within 1 ulp of ``ref.astype(float16)`` where that ulp exceeds the FP32 tolerance (|ref| >= 2^-6);
nearer zero, within the FP32 tolerance plus one ulp.
"""

from __future__ import annotations

import numpy as np
import pytest
from bpedge.kernels import emulated_preprocess

from bpedge import _stages

pytestmark = pytest.mark.usefixtures("host_library")

FP32_ATOL = 1e-5
POISON_BYTE = 0xAB


def _reference(frames, boxes, out_w, out_h, scale=(1.0, 1.0), mean=None, std=None):
    """Per item: the clamped frame box and the reference crop, from bpedge._stages only."""
    n, h, w = frames.shape
    refs, ref_boxes = [], []
    for i in range(n):
        box = (0.0, 0.0, float(w), float(h)) if boxes is None else _stages.clamp_box(
            _stages.scale_box(np.asarray(boxes[i][:4], np.float32).astype(np.float64), *scale), w, h)
        ref_boxes.append(box)
        refs.append(_stages.crop_resize_normalize(frames[i], box, out_w, out_h, mean, std))
    return np.stack(refs)[:, None], np.array(ref_boxes)


def _poisoned(shape, dtype):
    out = np.empty(shape, dtype)
    out.view(np.uint8)[...] = POISON_BYTE
    if np.dtype(dtype).kind == "f":
        out[...] = np.nan
    return out


def _ordered(half: np.ndarray) -> np.ndarray:
    bits = half.view(np.int16).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFF), bits)


def _run_and_compare(frames, boxes, out_w, out_h, *, scale=(1.0, 1.0), mean=None, std=None, **kw):
    n = frames.shape[0]
    ref, ref_boxes = _reference(frames, boxes, out_w, out_h, scale, mean, std)
    out32 = _poisoned((n, 1, out_h, out_w), np.float32)
    boxes_out = _poisoned((n, 4), np.float32)
    emulated_preprocess(frames, boxes, out_w, out_h, scale=scale, mean=mean, std=std, out=out32,
                        boxes_out=boxes_out, **kw)
    assert np.isfinite(out32).all(), "some output elements were never written"
    np.testing.assert_allclose(out32, ref, rtol=0, atol=FP32_ATOL)
    np.testing.assert_array_equal(boxes_out, ref_boxes.astype(np.float32))

    out16 = _poisoned((n, 1, out_h, out_w), np.float16)
    emulated_preprocess(frames, boxes, out_w, out_h, scale=scale, mean=mean, std=std,
                        dtype=np.float16, out=out16, **kw)
    assert np.isfinite(out16).all(), "some FP16 output elements were never written"
    np.testing.assert_array_equal(out16, out32.astype(np.float16))  # the conversion is exact RNE
    ref16 = ref.astype(np.float16)
    big = np.abs(ref) >= 2.0**-6
    assert np.abs(_ordered(out16) - _ordered(ref16))[big].max(initial=0) <= 1
    near_zero_err = np.abs(out16.astype(np.float64) - ref)[~big]
    assert (near_zero_err <= FP32_ATOL + np.spacing(np.abs(ref16[~big]))).all()
    return out32, boxes_out


def _frames(rng, n, h, w):
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8)


BOXES = {
    "inside_fractional": (3.3, 4.7, 40.2, 30.9),
    "partly_outside": (-12.5, 20.0, 30.0, 80.0),
    "wholly_outside": (70.0, -40.0, 95.0, -5.0),
    "one_pixel": (10.3, 11.6, 11.3, 12.6),
    "zero_area": (20.0, 20.0, 20.0, 20.0),
    "reversed": (40.0, 35.0, 5.0, 2.0),
}


@pytest.mark.parametrize("mode", [(None, None), (101.5, 47.25)], ids=["per_crop", "dataset"])
@pytest.mark.parametrize("box_name", list(BOXES))
def test_crop_matches_reference(box_name, mode):
    rng = np.random.default_rng(list(BOXES).index(box_name))
    frames = _frames(rng, 1, 47, 61)
    boxes = np.array([BOXES[box_name]], np.float32)
    _run_and_compare(frames, boxes, 96, 96, mean=mode[0], std=mode[1])


@pytest.mark.parametrize("mode", [(None, None), (90.0, 60.0)], ids=["per_crop", "dataset"])
def test_batch_non_square_crop_scaled_boxes_and_odd_frame(mode):
    rng = np.random.default_rng(1)
    frames = _frames(rng, 3, 421, 579)
    # Detector-input boxes (a 416x576 input) mapped to frame pixels by a non-trivial scale.
    boxes = np.array([[100.2, 50.7, 300.9, 200.1], [-20, 390, 60, 430], [570, 10, 600, 15.5]],
                     np.float32)
    _run_and_compare(frames, boxes, 96, 64, scale=(579 / 576, 421 / 416), mean=mode[0], std=mode[1])


@pytest.mark.parametrize("mode", [(None, None), (120.0, 50.0)], ids=["per_crop", "dataset"])
def test_whole_frame_detector_input(mode):
    rng = np.random.default_rng(2)
    frames = _frames(rng, 2, 101, 139)
    _run_and_compare(frames, None, 160, 112, mean=mode[0], std=mode[1])  # upsampling
    _run_and_compare(frames, None, 64, 48, mean=mode[0], std=mode[1])  # downsampling


def test_random_frames_sizes_and_boxes():
    rng = np.random.default_rng(3)
    for trial in range(6):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        frames = _frames(rng, 2, h, w)
        if trial % 2:  # smooth content: per-crop std much smaller than on noise
            yy, xx = np.mgrid[:h, :w]
            frames[:] = (128 + 60 * np.sin(xx / 9.0 + yy / 13.0)).astype(np.uint8)
        boxes = rng.uniform(-0.3 * w, 1.3 * max(h, w), (2, 4)).astype(np.float32)
        out_w, out_h = (int(v) for v in rng.integers(1, 100, 2))
        mean, std = (None, None) if trial < 3 else (float(rng.uniform(0, 255)), float(rng.uniform(1, 90)))
        _run_and_compare(frames, boxes, out_w, out_h, mean=mean, std=std)


def test_row_pitch_and_box_stride_are_honoured():
    rng = np.random.default_rng(4)
    wide = _frames(rng, 2, 40, 64)
    frames = wide[:, :, :50]  # row pitch 64 bytes, width 50
    detector_out = rng.uniform(0, 40, (2, 6)).astype(np.float32)  # e.g. [x0, y0, x1, y1, score, cls]
    detector_out[:, 2:4] += 8
    _run_and_compare(frames, detector_out, 32, 24)


def test_flat_crop_normalises_to_exact_zeros():
    frames = np.full((1, 30, 40), 201, np.uint8)
    out, _ = emulated_preprocess(frames, np.array([[3.7, 2.2, 30.1, 25.9]], np.float32), 96, 96)
    assert not out.any()


@pytest.mark.parametrize("block", [(96, 1, 1), (7, 1, 1), (16, 4, 2)])
def test_result_does_not_depend_on_block_shape(block):
    rng = np.random.default_rng(5)
    frames = _frames(rng, 2, 33, 45)
    boxes = np.array([[2, 3, 30, 31], [10.5, 0.5, 44.5, 20.5]], np.float32)
    for mean, std in [(None, None), (100.0, 40.0)]:
        expected, _ = emulated_preprocess(frames, boxes, 96, 96, mean=mean, std=std)
        got, _ = emulated_preprocess(frames, boxes, 96, 96, mean=mean, std=std, block=block)
        np.testing.assert_allclose(got, expected, rtol=0, atol=FP32_ATOL)


def test_grid_size_extra_blocks_idle_per_crop_and_share_work_for_dataset():
    rng = np.random.default_rng(6)
    frames = _frames(rng, 2, 33, 45)
    boxes = np.array([[2, 3, 30, 31], [10.5, 0.5, 44.5, 20.5]], np.float32)
    for mean, std in [(None, None), (100.0, 40.0)]:
        ref, _ = _reference(frames, boxes, 96, 96, mean=mean, std=std)
        for grid_x in (1, 5):
            out = _poisoned((2, 1, 96, 96), np.float32)
            emulated_preprocess(frames, boxes, 96, 96, mean=mean, std=std, out=out, grid_x=grid_x)
            np.testing.assert_allclose(out, ref, rtol=0, atol=FP32_ATOL)


def test_non_finite_box_crops_the_whole_frame_and_reports_nan():
    rng = np.random.default_rng(7)
    frames = _frames(rng, 2, 20, 30)
    boxes = np.array([[np.nan, 1, 5, 5], [1, 2, np.inf, 9]], np.float32)
    out, boxes_out = emulated_preprocess(frames, boxes, 16, 16)
    ref, _ = _reference(frames, None, 16, 16)
    np.testing.assert_allclose(out, ref, rtol=0, atol=FP32_ATOL)
    assert np.isnan(boxes_out).all()


def test_bad_arguments_raise_value_errors():
    frames = np.zeros((1, 10, 10), np.uint8)
    with pytest.raises(ValueError, match="both mean and std"):
        emulated_preprocess(frames, None, 8, 8, mean=1.0)
    with pytest.raises(ValueError, match="at most 1024"):
        emulated_preprocess(frames, None, 2048, 8)
    with pytest.raises(ValueError, match="uint8"):
        emulated_preprocess(frames.astype(np.float32), None, 8, 8)
    with pytest.raises(ValueError, match="one box per frame"):
        emulated_preprocess(frames, np.zeros((2, 4), np.float32), 8, 8)
    with pytest.raises(ValueError, match="at most 256 threads"):
        emulated_preprocess(frames, None, 8, 8, block=(512, 1, 1))


# --- the crop margin: the kernel's box is bpedge._preprocessing's crop box ------------------------

MARGINS = (0.0, 0.1, 0.25)


def _margin_reference(frames, raw_boxes, detector_hw, crop, margin):
    """Per item, from bpedge._preprocessing only: the crop box (frame_box -> crop_box, NaN where
    box_found is False) and the segmenter input cropped from it."""
    from bpedge._preprocessing import ModelInput, Normalization, box_found, crop_box, frame_box

    detector = ModelInput(detector_hw, Normalization(None, None))
    n, h, w = frames.shape
    refs, ref_boxes = [], []
    for i in range(n):
        raw = np.asarray(raw_boxes[i][:4], np.float32)  # what the kernel reads
        box = crop_box("detector", (h, w), margin, detected=frame_box(raw, (h, w), detector))
        refs.append(_stages.crop_resize_normalize(frames[i], box, crop.hw[1], crop.hw[0],
                                                  crop.norm.mean, crop.norm.std))
        ref_boxes.append(box if box_found(raw) else (np.nan,) * 4)
    return np.stack(refs)[:, None], np.array(ref_boxes)


def _run_margin(frames, raw_boxes, detector_hw, margin, *, out_hw=(40, 48), mean=None, std=None):
    from bpedge._preprocessing import ModelInput, Normalization

    n, h, w = frames.shape
    crop = ModelInput(out_hw, Normalization(mean, std))
    ref, ref_boxes = _margin_reference(frames, raw_boxes, detector_hw, crop, margin)
    scale = (w / detector_hw[1], h / detector_hw[0])
    out = _poisoned((n, 1, *out_hw), np.float32)
    boxes_out = _poisoned((n, 4), np.float32)
    emulated_preprocess(frames, np.asarray(raw_boxes, np.float32), out_hw[1], out_hw[0],
                        scale=scale, mean=mean, std=std, crop_margin=margin, out=out,
                        boxes_out=boxes_out)
    np.testing.assert_allclose(out, ref, rtol=0, atol=FP32_ATOL)
    np.testing.assert_array_equal(boxes_out, ref_boxes.astype(np.float32))
    return boxes_out


@pytest.mark.parametrize("mode", [(None, None), (101.5, 47.25)], ids=["per_crop", "dataset"])
@pytest.mark.parametrize("margin", MARGINS)
def test_crop_margin_expands_the_box_like_the_reference(margin, mode):
    rng = np.random.default_rng(int(margin * 100))
    frames = _frames(rng, 4, 57, 73)
    # Detector-input boxes (a 48x64 input, so a non-trivial scale): inside, fractional, reversed,
    # a thin one (clamped to MIN_BOX_SIDE before and after the margin).
    raw = np.array([[10.3, 8.6, 40.2, 30.9], [5.5, 3.25, 17.75, 44.0], [50.0, 30.0, 20.0, 12.5],
                    [31.2, 20.1, 31.4, 20.2]], np.float32)
    boxes_out = _run_margin(frames, raw, (48, 64), margin, mean=mode[0], std=mode[1])
    if margin > 0:  # the margin moved the box the kernel crops (and reports)
        unexpanded = _run_margin(frames, raw, (48, 64), 0.0, mean=mode[0], std=mode[1])
        assert (boxes_out[:3, :2] < unexpanded[:3, :2]).all()
        assert (boxes_out[:3, 2:] > unexpanded[:3, 2:]).all()


@pytest.mark.parametrize("margin", MARGINS)
def test_crop_margin_at_the_frame_edges_clamps_like_the_reference(margin):
    rng = np.random.default_rng(11)
    frames = _frames(rng, 6, 45, 61)
    # Detector input 45x61 (scale 1): boxes touching each edge, the whole frame, a box past two
    # edges, a box wholly outside, a thin box on the right edge.
    raw = np.array([[0.0, 0.0, 20.0, 15.0], [40.0, 30.0, 61.0, 45.0], [0.0, 0.0, 61.0, 45.0],
                    [-5.0, 10.0, 30.0, 50.0], [70.0, -9.0, 80.0, -1.0], [60.5, 3.0, 61.0, 40.0]],
                   np.float32)
    boxes_out = _run_margin(frames, raw, (45, 61), margin)
    assert (boxes_out[:, [0, 1]] >= 0).all() and (boxes_out[:, 2] <= 61).all()
    assert (boxes_out[:, 3] <= 45).all()
    np.testing.assert_array_equal(boxes_out[2], [0, 0, 61, 45])  # the whole frame stays whole


@pytest.mark.parametrize("margin", MARGINS)
def test_crop_margin_non_finite_box_crops_the_whole_frame_and_reports_nan(margin):
    rng = np.random.default_rng(12)
    frames = _frames(rng, 3, 20, 30)
    raw = np.array([[np.nan, 1, 5, 5], [1, 2, np.inf, 9], [2, -np.inf, 8, 9]], np.float32)
    boxes_out = _run_margin(frames, raw, (20, 30), margin, out_hw=(16, 16))
    assert np.isnan(boxes_out).all()


def test_crop_margin_must_be_finite_and_non_negative():
    frames = np.zeros((1, 10, 10), np.uint8)
    boxes = np.array([[1, 1, 5, 5]], np.float32)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="crop_margin"):
            emulated_preprocess(frames, boxes, 8, 8, crop_margin=bad)
