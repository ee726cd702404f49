"""The per-frame stages at OpenCV speed: whole-frame resize, subpixel crop and paste-back.

:mod:`bpedge._stages` defines each stage (plain NumPy, float64); these are the same formulas run by
OpenCV in float32, written into caller-owned buffers, and ``tests/test_fast_stages.py`` bounds the
difference (float rounding of the sampling coordinates; masks identical on the tests' frames and
boxes). Measured on the 2-core development CPU (420x580 frame, 96x96 crop of a 156x160 box; timeit
medians of back-to-back calls): whole frame to 160x224 0.59 -> ~0.1 ms (including the float32
copy), crop 0.36 -> ~0.03 ms (0.018 ms from a float32 frame), paste-back 0.42 -> ~0.05 ms. Inside
the cascade, between model calls, each function measures ~0.05-0.09 ms instead (timed with
``time.perf_counter`` around each call while ``Segmenter`` ran the demo bundle with ONNX Runtime
fp32 and OpenVINO bf16), with ~0 minor page faults per call (``getrusage``). It is not the model
runtime's threads: the same Python code (the reference box arithmetic, 16 us warm) took ~35 us
after a NumPy matmul, ~60 us after an ONNX Runtime call with spinning off, and ~70 us after a
7 ms ``time.sleep`` (medians, idle 2-core AVX2 EPYC VM; two to three times that with training
jobs on the cores): whatever ran before leaves the caches cold, and
every library call and Python call layer pays for it. So the hot path keeps the number of calls
between model calls small (:func:`detector_crop_box`, one-pass normalisation). OpenCV's thread
count made no measurable difference there (``OPENCV_FOR_THREADS_NUM=1``), and switching it per
call cost more than it saved.

How each maps onto OpenCV:

- whole frame: ``cv2.resize(INTER_LINEAR)`` samples output pixel ``u`` at
  ``(u + 0.5) * W / out_w - 0.5`` and replicates the edge, which is the reference's formula for the
  box ``(0, 0, W, H)``. The frame is converted to float32 first (OpenCV's uint8 resize rounds to
  integers in fixed point).
- crop: ``cv2.warpAffine(WARP_INVERSE_MAP)`` with ``sx = sw * u + (x0 + sw / 2 - 0.5)`` over the
  box's own pixels (a view of the frame) with ``BORDER_REPLICATE``, which is the reference's clamp to
  the pixels the box covers.
- paste-back: the inverse map ``u = (x + 0.5 - x0) * out_w / (x1 - x0) - 0.5`` over the frame pixels
  whose centre lies in the box, ``BORDER_REPLICATE`` on the crop (the reference clamps to the crop),
  then ``>= threshold`` into a zeroed uint8 mask.

Normalisation is one ``cv2.addWeighted`` pass (``x * (1/std) - mean/std``: float32 rounding away
from the reference's subtract-then-divide): with the bundle's fixed statistics the whole frame is
normalised as it is converted to float32, before the resize (:func:`normalize_resize_frame_into`);
otherwise in place on the small output. Per-image statistics come from ``cv2.meanStdDev``
(float64 accumulators, population std, like the reference).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import cv2
import numpy as np

from bpedge._preprocessing import full_frame_box
from bpedge._stages import NORMALIZE_EPS, Box, _clamp_interval, _covered_range

_WARP = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


class _Scratch(threading.local):
    """Per-thread float32 work areas (the crop's source pixels, the pasted probabilities), grown
    to the largest size seen. A fresh ~100 KB array per frame costs more than the OpenCV call
    that fills it: it is above glibc's mmap threshold, so every frame pays page faults on new
    pages (measured: paste 0.20 -> ~0.06 ms on a 420x580 frame). Nothing returned aliases them."""

    def __init__(self) -> None:
        self.areas: dict[str, np.ndarray] = {}

    def f32(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        need = shape[0] * shape[1]
        area = self.areas.get(name)
        if area is None or area.size < need:
            area = self.areas[name] = np.empty(need, np.float32)
        return area[:need].reshape(shape)


_scratch = _Scratch()


def _into(out: np.ndarray, result: np.ndarray) -> None:
    # OpenCV writes into ``dst`` when its shape and type fit, and silently allocates otherwise.
    if result is not out:
        np.copyto(out, result)


def _normalize_inplace(out: np.ndarray, mean: float | None, std: float | None,
                       eps: float = NORMALIZE_EPS) -> None:
    """``out = (out - mean) / max(std, eps)`` in place; ``None`` means the image's own statistic
    (as :func:`bpedge._stages.normalize`)."""
    if mean is None or std is None:
        m, s = cv2.meanStdDev(out)
        mean = float(m[0, 0]) if mean is None else mean
        std = float(s[0, 0]) if std is None else std
    # One pass, out * (1/std) - mean/std, instead of NumPy's subtract-then-divide: between two
    # model calls every library call starts with cold caches, and the call count, not the
    # arithmetic, is what this stage costs (the result differs from the reference by float32
    # rounding, within the tests' bound).
    scale = 1.0 / max(std, eps)
    cv2.addWeighted(out, scale, out, 0.0, -mean * scale, dst=out)


def _resize_into(grey: np.ndarray, out: np.ndarray) -> None:
    if grey.dtype != np.float32:
        grey = grey.astype(np.float32)
    if grey.shape == out.shape:
        np.copyto(out, grey)
    else:
        _into(out, cv2.resize(grey, (out.shape[1], out.shape[0]), dst=out,
                              interpolation=cv2.INTER_LINEAR))


def resize_frame_into(grey: np.ndarray, out: np.ndarray, mean: float | None,
                      std: float | None) -> None:
    """The whole ``grey`` (H, W) frame resized bilinearly into ``out`` (float32, (h, w),
    contiguous) and normalised: :func:`bpedge._stages.crop_resize_normalize` with the box
    ``(0, 0, W, H)``."""
    _resize_into(grey, out)
    _normalize_inplace(out, mean, std)


def normalize_resize_frame_into(grey: np.ndarray, frame_out: np.ndarray, out: np.ndarray,
                                mean: float, std: float,
                                eps: float = NORMALIZE_EPS) -> None:
    """:func:`resize_frame_into` for fixed statistics, normalising first: ``grey`` (H, W) is
    converted to float32 and normalised in one pass into ``frame_out`` (float32 (H, W),
    contiguous), which is then resized into ``out``. Bilinear resampling is a weighted mean of
    pixels (weights summing to 1), so normalising before it equals normalising after it up to
    float32 rounding, and the pass over the smaller output is saved (measured 0.23 -> 0.19 ms per
    420x580 frame into 320x448 with the caches evicted between calls, the cascade's case).

    ``frame_out`` keeps the normalised frame for crops: :func:`crop_into` it with
    :func:`stats_after_normalization`."""
    scale = 1.0 / max(std, eps)
    _into(frame_out, cv2.addWeighted(grey, scale, grey, 0.0, -mean * scale, dst=frame_out,
                                     dtype=cv2.CV_32F))
    _resize_into(frame_out, out)


def stats_after_normalization(mean: float | None, std: float | None, frame_mean: float,
                              frame_std: float, eps: float = NORMALIZE_EPS
                              ) -> tuple[float | None, float | None, float]:
    """The ``(mean, std, eps)`` that normalise a crop of a frame already normalised with
    ``(frame_mean, frame_std)`` as ``(mean, std, eps)`` normalise a crop of the frame itself: a
    pixel ``x`` is ``n * s + frame_mean`` there (``s = max(frame_std, eps)``, as the frame was
    normalised), so ``(x - mean) / max(std, eps) == (n - (mean - frame_mean) / s) /
    max(std / s, eps / s)``. ``None`` (the crop's own statistic) stays ``None``, which is exact
    in real arithmetic but not in float32: on a flat crop of the normalised frame the crop's own
    std is rounding noise instead of 0, and dividing by it magnifies the noise; so the cascade
    crops the normalised frame only when both crop statistics are fixed."""
    s = max(frame_std, eps)
    return (None if mean is None else (mean - frame_mean) / s,
            None if std is None else std / s, eps / s)


def detector_crop_box(raw_box: np.ndarray, frame_hw: tuple[int, int],
                      input_hw: tuple[int, int], margin: float) -> tuple[Box, bool]:
    """``crop_box("detector", frame_hw, margin, detected=frame_box(raw_box, frame_hw, ...))`` and
    ``box_found(raw_box)`` of :mod:`bpedge._preprocessing`: the arithmetic of the same reference
    steps (``scale_box``, ``clamp_box``'s interval clamp, ``expand_box``) in the same order,
    without their NumPy conversions and call layers.

    ``raw_box``: (4,) array, detector-input pixels; ``frame_hw`` and ``input_hw``: (H, W) of the
    frame and of the detector input. Runs right after the detector, with cold caches, where each
    NumPy call and Python call layer costs tens of microseconds (there the reference chain took
    0.06-0.11 ms and this 0.03 ms, medians of three runs on an idle 2-core AVX2 EPYC); the tests
    check the two agree bit for bit.
    """
    h, w = frame_hw
    x0, y0, x1, y1 = raw_box.tolist()
    found = (math.isfinite(x0) and math.isfinite(y0) and math.isfinite(x1)
             and math.isfinite(y1))  # box_found
    fw, fh = float(w), float(h)
    # The reference's arithmetic written out in its order (scale_box, clamp_box, expand_box,
    # clamp_box), so the result is the same floats: its four call layers and tuple rebuilds cost
    # ~0.014 ms more here, right after the detector (0.039 -> 0.025 ms, medians, loaded 2-core
    # AVX2 EPYC).
    if found:  # frame_box: scale_box, then clamp_box
        sx, sy = w / input_hw[1], h / input_hw[0]
        x0, y0, x1, y1 = x0 * sx, y0 * sy, x1 * sx, y1 * sy
        x0, x1 = _clamp_interval(min(x0, x1), max(x0, x1), fw)
        y0, y1 = _clamp_interval(min(y0, y1), max(y0, y1), fh)
    else:
        x0, y0, x1, y1 = full_frame_box(frame_hw)
    if margin != 0.0:  # expand_box
        dx, dy = (x1 - x0) * margin / 2.0, (y1 - y0) * margin / 2.0
        x0, y0, x1, y1 = x0 - dx, y0 - dy, x1 + dx, y1 + dy
    x0, x1 = _clamp_interval(min(x0, x1), max(x0, x1), fw)  # crop_box's "detector" mode
    y0, y1 = _clamp_interval(min(y0, y1), max(y0, y1), fh)
    return (x0, y0, x1, y1), found


def _tap_range(start: float, length: float, n_src: int) -> tuple[int, int]:
    # The source pixels a crop may read: those the box covers, inside the frame (the clamp of
    # bpedge._stages._source_index; tests check the two agree).
    lo = min(max(math.floor(start), 0), n_src - 1)
    hi = min(max(math.ceil(start + length) - 1, lo), n_src - 1)
    return lo, hi


def crop_into(grey: np.ndarray, box: Sequence[float], out: np.ndarray, mean: float | None,
              std: float | None, eps: float = NORMALIZE_EPS) -> None:
    """The ``box`` (x0, y0, x1, y1, frame pixels, subpixel) of ``grey`` resampled bilinearly into
    ``out`` (float32 (h, w), contiguous) and normalised: :func:`bpedge._stages.crop_resize_normalize`."""
    h_src, w_src = grey.shape
    out_h, out_w = out.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0 and math.isfinite(x1 - x0) and math.isfinite(y1 - y0)):
        raise ValueError(f"box must be finite with x0 < x1 and y0 < y1, got {tuple(box)}")
    lx, hx = _tap_range(x0, x1 - x0, w_src)
    ly, hy = _tap_range(y0, y1 - y0, h_src)
    roi = grey[ly:hy + 1, lx:hx + 1]
    if roi.dtype != np.float32:  # only the box's pixels, into this thread's work area
        roi_f32 = _scratch.f32("crop_source", roi.shape)
        np.copyto(roi_f32, roi, casting="unsafe")
        roi = roi_f32
    sw, sh = (x1 - x0) / out_w, (y1 - y0) / out_h
    matrix = np.array([[sw, 0.0, x0 + 0.5 * sw - 0.5 - lx],
                       [0.0, sh, y0 + 0.5 * sh - 0.5 - ly]])
    _into(out, cv2.warpAffine(roi, matrix, (out_w, out_h), dst=out, flags=_WARP,
                              borderMode=cv2.BORDER_REPLICATE))
    _normalize_inplace(out, mean, std, eps)


def paste_mask(prob: np.ndarray, box: Sequence[float], width: int, height: int,
               threshold: float, present: bool = True) -> np.ndarray:
    """:func:`bpedge._stages.paste_back`: the crop probability ``prob`` (float32 (h, w)) resampled
    into the ``box`` region of a new ``height`` x ``width`` uint8 mask, 255 where ``>= threshold``.
    The mask is always a new array (it belongs to the caller's result)."""
    mask = np.zeros((height, width), np.uint8)
    if not present:
        return mask
    out_h, out_w = prob.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0 and math.isfinite(x1 - x0) and math.isfinite(y1 - y0)):
        raise ValueError(f"box must be finite with x0 < x1 and y0 < y1, got {tuple(box)}")
    first_x, end_x = _covered_range(x0, x1, width)
    first_y, end_y = _covered_range(y0, y1, height)
    n_x, n_y = end_x - first_x, end_y - first_y
    if n_x <= 0 or n_y <= 0:
        return mask
    kx, ky = out_w / (x1 - x0), out_h / (y1 - y0)
    matrix = np.array([[kx, 0.0, (first_x + 0.5 - x0) * kx - 0.5],
                       [0.0, ky, (first_y + 0.5 - y0) * ky - 0.5]])
    src = prob if prob.dtype == np.float32 else prob.astype(np.float32)
    # Non-finite probabilities count as 0 (the reference's rule, paste_probability): OpenCV's
    # bilinear sum over a NaN or inf tap is not the reference's. Tested by the sum, accumulated
    # in float64 (which finite float32 values cannot overflow): NaN or inf exactly when an
    # element is. ~2 us on the 96x96 crop, against ~3 us for np.isfinite().all() and ~11 us for
    # cv2.checkRange (timeit, 2-core dev CPU); the copy is made only for a diverged model.
    if not math.isfinite(cv2.sumElems(src)[0]):
        src = np.nan_to_num(src, nan=0.0, posinf=0.0, neginf=0.0)
    pasted = _scratch.f32("pasted", (n_y, n_x))
    _into(pasted, cv2.warpAffine(np.ascontiguousarray(src), matrix, (n_x, n_y),
                                 dst=pasted, flags=_WARP, borderMode=cv2.BORDER_REPLICATE))
    region = mask[first_y:end_y, first_x:end_x]
    # 255 where ``threshold <= pasted <= inf``, written straight into the mask's region (OpenCV
    # takes the strided view as a sub-matrix): ``pasted >= threshold`` compared in float32 as the
    # reference compares it, NaN never in. One call instead of NumPy's compare into a bool view
    # then a multiply by 255, whose strided output made them the stage's slowest part (0.073 ->
    # 0.036 ms on a 102x152 region after a model call). (Not cv2.compare: with a Python float it
    # takes a 1x1 or 4x1 source for the scalar and returns a wrong-shaped result.)
    _into(region, cv2.inRange(pasted, threshold, math.inf, dst=region))
    return mask
