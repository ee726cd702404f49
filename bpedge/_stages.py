"""The one definition of each per-frame stage's maths, in plain NumPy.

Training crops, the CPU runtime, the CUDA kernels (under host emulation) and the exported graphs
are all tested against these functions; nothing else may re-derive the formulas.

Coordinates are continuous pixel-edge coordinates: pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``
and its centre is ``(x + 0.5, y + 0.5)``. A box is ``(x0, y0, x1, y1)`` with ``x0 < x1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]

#: Smallest box side, in frame pixels, that the cascade will crop. A detector box thinner than this
#: is widened about its centre, so the segmenter never sees a zero-area crop.
MIN_BOX_SIDE = 1.0


def clamp_box(box: Sequence[float], width: int, height: int) -> Box:
    """Clip ``box`` to a ``width`` x ``height`` frame and give it at least ``MIN_BOX_SIDE`` per side.

    A box wholly outside the frame collapses onto the nearest edge strip; NaN coordinates raise.
    Returns floats in frame pixels.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box must be finite, got {tuple(box)}")
    if width < 1 or height < 1:
        raise ValueError(f"frame must be at least 1x1, got {width}x{height}")
    x0, x1 = _clamp_interval(min(x0, x1), max(x0, x1), float(width))
    y0, y1 = _clamp_interval(min(y0, y1), max(y0, y1), float(height))
    return (x0, y0, x1, y1)


def _clamp_interval(lo: float, hi: float, size: float) -> tuple[float, float]:
    lo, hi = min(max(lo, 0.0), size), min(max(hi, 0.0), size)
    side = min(MIN_BOX_SIDE, size)
    if hi - lo < side:
        centre = min(max((lo + hi) / 2.0, side / 2.0), size - side / 2.0)
        lo, hi = centre - side / 2.0, centre + side / 2.0
    return lo, hi


def scale_box(box: Sequence[float], sx: float, sy: float) -> Box:
    """Map a box between two pixel grids (e.g. detector input -> frame): multiply x by ``sx``, y by ``sy``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def _source_index(start: float, length: float, n_out: int, n_src: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps along one axis: lower index, upper index and upper weight for each output."""
    u = np.arange(n_out, dtype=np.float64)
    s = start + (u + 0.5) * (length / n_out) - 0.5
    # Clamp to the pixels the box covers (within the frame): for an integer box this is exactly
    # cv2.resize(img[y0:y1, x0:x1]) with INTER_LINEAR, which replicates the crop's own edge.
    lo = min(max(math.floor(start), 0), n_src - 1)
    hi = min(max(math.ceil(start + length) - 1, lo), n_src - 1)
    s = np.clip(s, lo, hi)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, hi)
    w = s - i0
    return i0, i1, w


def crop_resize(image: np.ndarray, box: Sequence[float], out_w: int, out_h: int) -> np.ndarray:
    """Bilinear resample the ``box`` region of a 2-D ``image`` to ``(out_h, out_w)`` float32.

    Output pixel ``(u, v)`` samples the source at ``sx = x0 + (u + 0.5) * (x1 - x0) / out_w - 0.5``
    (same for y), edge-clamped to the box's pixels inside the frame.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {image.shape}")
    if out_w < 1 or out_h < 1:
        raise ValueError(f"output size must be positive, got {out_w}x{out_h}")
    h, w = image.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0 and math.isfinite(x1 - x0) and math.isfinite(y1 - y0)):
        raise ValueError(f"box must be finite with x0 < x1 and y0 < y1, got {tuple(box)}")
    xi0, xi1, wx = _source_index(x0, x1 - x0, out_w, w)
    yi0, yi1, wy = _source_index(y0, y1 - y0, out_h, h)
    src = image.astype(np.float64, copy=False)
    top = src[yi0][:, xi0] * (1 - wx) + src[yi0][:, xi1] * wx
    bottom = src[yi1][:, xi0] * (1 - wx) + src[yi1][:, xi1] * wx
    out = top * (1 - wy)[:, None] + bottom * wy[:, None]
    return out.astype(np.float32)


#: The floor of the std a normalisation divides by, so a flat crop does not divide by zero.
NORMALIZE_EPS = 1e-6


def normalize(values: np.ndarray, mean: float | None, std: float | None,
              eps: float = NORMALIZE_EPS) -> np.ndarray:
    """``(values - mean) / std`` in float32. ``mean``/``std`` of ``None`` means per-image statistics
    (population std), floored at ``eps`` so a flat crop does not divide by zero."""
    v = values.astype(np.float32, copy=False)
    if mean is None or std is None:
        m = float(v.mean(dtype=np.float64))
        s = float(v.std(dtype=np.float64))
        mean = m if mean is None else mean
        std = s if std is None else std
    return ((v - np.float32(mean)) / np.float32(max(std, eps))).astype(np.float32)


def crop_resize_normalize(
    image: np.ndarray,
    box: Sequence[float],
    out_w: int,
    out_h: int,
    mean: float | None,
    std: float | None,
) -> np.ndarray:
    """Crop ``box`` from a 2-D uint8/float ``image``, resize bilinearly to ``(out_h, out_w)``,
    then normalise: the reference for the fused preprocessing kernel. Returns float32."""
    return normalize(crop_resize(image, box, out_w, out_h), mean, std)


def paste_probability(prob: np.ndarray, box: Sequence[float], width: int, height: int) -> np.ndarray:
    """Inverse of :func:`crop_resize`: resample a crop-sized probability map into the ``box`` region
    of a ``height`` x ``width`` float32 canvas (0 outside the box).

    Frame pixel ``(x, y)`` whose centre lies in the box samples the crop at
    ``u = (x + 0.5 - x0) * out_w / (x1 - x0) - 0.5``, bilinear, edge-clamped to the crop.

    A non-finite probability (NaN, +inf or -inf: a diverged model) counts as 0, not BP, before
    the interpolation, so it also weighs 0 in its neighbours' samples. This is the definition
    every paste follows (:func:`bpedge._fast_stages.paste_mask`, ``kernels/paste.cu``): left in,
    a NaN or inf tap makes the bilinear sum NaN or +-inf by the order of its operations (even
    at weight 0, as ``0 * inf`` is NaN), which differs between NumPy, OpenCV and CUDA.
    """
    if prob.ndim != 2:
        raise ValueError(f"probability map must be 2-D, got shape {prob.shape}")
    out_h, out_w = prob.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0 and math.isfinite(x1 - x0) and math.isfinite(y1 - y0)):
        raise ValueError(f"box must be finite with x0 < x1 and y0 < y1, got {tuple(box)}")
    canvas = np.zeros((height, width), np.float32)
    xs, ys = _covered_pixels(x0, x1, width), _covered_pixels(y0, y1, height)
    if xs.size == 0 or ys.size == 0:
        return canvas
    # The same formula as crop_resize with the roles of frame and crop swapped.
    xi0, xi1, wx = _paste_taps(xs, x0, x1 - x0, out_w)
    yi0, yi1, wy = _paste_taps(ys, y0, y1 - y0, out_h)
    p = prob.astype(np.float64, copy=False)
    finite = np.isfinite(p)
    if not finite.all():
        p = np.where(finite, p, 0.0)
    top = p[yi0][:, xi0] * (1 - wx) + p[yi0][:, xi1] * wx
    bottom = p[yi1][:, xi0] * (1 - wx) + p[yi1][:, xi1] * wx
    canvas[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = top * (1 - wy)[:, None] + bottom * wy[:, None]
    return canvas


def _covered_range(lo: float, hi: float, size: int) -> tuple[int, int]:
    """First and one-past-last pixel whose centre lies in ``[lo, hi)``, inside ``[0, size)``
    (empty when ``last <= first``)."""
    return max(math.ceil(lo - 0.5), 0), min(math.ceil(hi - 0.5), size)


def _covered_pixels(lo: float, hi: float, size: int) -> np.ndarray:
    """Pixels whose centre lies in ``[lo, hi)``, inside ``[0, size)``."""
    return np.arange(*_covered_range(lo, hi, size), dtype=np.int64)


def _paste_taps(pix: np.ndarray, start: float, length: float, n_crop: int) -> tuple[np.ndarray, ...]:
    s = (pix + 0.5 - start) * (n_crop / length) - 0.5
    s = np.clip(s, 0, n_crop - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_crop - 1)
    return i0, i1, s - i0


def paste_back(
    prob: np.ndarray,
    box: Sequence[float],
    width: int,
    height: int,
    threshold: float,
    present: bool = True,
) -> np.ndarray:
    """Paste a crop probability map into the frame and threshold it: uint8 mask of 0/255, shape
    ``(height, width)``; a pixel is 255 where the pasted probability is ``>= threshold``
    (:func:`paste_probability`: a non-finite probability counts as 0). ``present=False`` (the detector score says no BP) gives an empty mask."""
    if not present:
        return np.zeros((height, width), np.uint8)
    pasted = paste_probability(prob, box, width, height)
    inside = np.zeros((height, width), bool)
    xs = _covered_pixels(float(box[0]), float(box[2]), width)
    ys = _covered_pixels(float(box[1]), float(box[3]), height)
    if xs.size and ys.size:
        inside[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = True
    return np.where(inside & (pasted >= threshold), 255, 0).astype(np.uint8)
