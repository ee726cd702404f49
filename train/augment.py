"""B-mode augmentation: what changes between scanners, settings and patients, drawn per sample.

A model that has seen ~100 frames of a few subjects learns their brightness, their time-gain
curve and their speckle grain as much as their anatomy. These transforms vary exactly those,
on the model input (grey levels 0-255, float32, before z-scoring):

- overall gain and a time-gain (TGC) ramp: B-mode is log-compressed, so a gain of G dB adds
  ``G * 255 / dynamic range`` grey levels; a TGC change adds a smooth function of depth (rows);
- the dynamic range of that compression (another scanner, preset or simulator): it scales every
  grey level by one factor;
- gamma and contrast (the display map);
- multiplicative speckle-like noise: the grey level times ``1 + s * n`` with ``n`` a slightly
  smoothed Gaussian field (a new speckle realisation);
- blur (a wider point-spread function);
- a small similarity transform (scale, shift, rotation: probe pressure, position and tilt),
  applied with the same matrix to the box's outline so the target follows the anatomy;
- left-right flip (the probe held either way round) stays the datasets' own ``hflip``;
- for the detector, copy-paste (:func:`paste_bp`): a training frame's BP, with the sheath around
  it, blended into an empty frame at a random place, so the BP is seen in other surroundings and
  at other depths than the few subjects show it in.

Every draw comes from a ``numpy.random.Generator`` the caller seeds from ``(seed, epoch,
sample)``, so an epoch's augmentation is the same whatever the number of DataLoader workers and
on a resumed run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["BModeAugment", "augment_grey", "paste_bp", "random_similarity", "transform_points"]


@dataclass(frozen=True)
class BModeAugment:
    """Ranges of each transform (0 switches one off). Grey levels are 0-255.

    ``gain``: +- grey levels added to the whole image; ``tgc``: +- grey levels of a linear ramp
    from the top row to the bottom row plus a smooth bump; ``gain_scale``: every grey level is
    multiplied by ``exp(U(-gain_scale, gain_scale))`` (the log-compression's dynamic range);
    ``gamma``: the exponent is ``exp(U(-gamma, gamma))``; ``contrast``: the spread about the mean
    is scaled by ``exp(U(-contrast, contrast))``; ``speckle``: the largest noise std ``s``
    (fraction of the grey level); ``blur``: the largest Gaussian sigma in input pixels (applied
    to half the samples); ``scale``: the zoom is ``exp(U(-scale, scale))``; ``shift``: the
    largest shift as a fraction of the image side; ``rotate``: the largest rotation in degrees;
    ``p_geometric``: the share of samples that get the similarity transform. Only the
    photometric fields (gain to blur) act in :func:`augment_grey`.
    """

    gain: float = 20.0
    tgc: float = 25.0
    gain_scale: float = 0.0
    gamma: float = 0.3
    contrast: float = 0.2
    speckle: float = 0.15
    blur: float = 1.0
    scale: float = 0.15
    shift: float = 0.08
    rotate: float = 8.0
    p_geometric: float = 0.7

    def __post_init__(self) -> None:
        for name in ("gain", "tgc", "gain_scale", "gamma", "contrast", "speckle", "blur", "scale",
                     "shift", "rotate"):
            if getattr(self, name) < 0:
                raise ValueError(f"BModeAugment.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.p_geometric <= 1.0:
            raise ValueError(f"BModeAugment.p_geometric must be in [0, 1], got {self.p_geometric}")


def augment_grey(grey: np.ndarray, aug: BModeAugment, rng: np.random.Generator) -> np.ndarray:
    """The photometric transforms of ``aug`` on a float32 ``(H, W)`` image of 0-255 grey levels;
    returns a new float32 ``(H, W)`` image clipped to 0-255."""
    h, w = grey.shape
    v: np.ndarray = grey.astype(np.float32, copy=True)
    if aug.blur > 0 and rng.random() < 0.5:
        v = cv2.GaussianBlur(v, (0, 0), float(rng.uniform(0.3, aug.blur)))
    if aug.speckle > 0:
        noise: np.ndarray = rng.standard_normal((h, w)).astype(np.float32)
        noise = cv2.GaussianBlur(noise, (0, 0), 0.7)
        noise = noise / max(float(noise.std()), 1e-6)
        v *= 1.0 + float(rng.uniform(0, aug.speckle)) * noise
    if aug.gain > 0 or aug.tgc > 0:
        depth = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
        offset = rng.uniform(-aug.gain, aug.gain) if aug.gain > 0 else 0.0
        ramp = rng.uniform(-aug.tgc, aug.tgc) * depth
        # A smooth bump: one TGC slider pushed up or down around a random depth.
        centre, width = rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.3)
        bump = rng.uniform(-aug.tgc, aug.tgc) * 0.5 * np.exp(-0.5 * ((depth - centre) / width) ** 2)
        v += np.float32(offset) + ramp + bump
    if aug.gain_scale > 0:
        v *= np.float32(math.exp(rng.uniform(-aug.gain_scale, aug.gain_scale)))
    v = np.clip(v, 0.0, 255.0)
    if aug.gamma > 0:
        v = 255.0 * (v / 255.0) ** np.float32(math.exp(rng.uniform(-aug.gamma, aug.gamma)))
    if aug.contrast > 0:
        mean = float(v.mean())
        v = mean + (v - mean) * np.float32(math.exp(rng.uniform(-aug.contrast, aug.contrast)))
    return np.clip(v, 0.0, 255.0).astype(np.float32)


def random_similarity(
    aug: BModeAugment, hw: tuple[int, int], rng: np.random.Generator
) -> np.ndarray | None:
    """A 2x3 float64 affine matrix (zoom, rotation about the image centre, shift) for an image of
    ``hw`` = (H, W), or ``None`` for this sample (no geometric change)."""
    if rng.random() >= aug.p_geometric or (aug.scale == 0 and aug.shift == 0 and aug.rotate == 0):
        return None
    h, w = hw
    zoom = math.exp(rng.uniform(-aug.scale, aug.scale))
    angle = rng.uniform(-aug.rotate, aug.rotate)
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, zoom)
    m[0, 2] += rng.uniform(-aug.shift, aug.shift) * w
    m[1, 2] += rng.uniform(-aug.shift, aug.shift) * h
    return m


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``(P, 2)`` x, y points through the 2x3 affine ``m``: ``(P, 2)`` float64."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def paste_bp(
    background: np.ndarray,
    source: np.ndarray,
    source_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    pad: int = 6,
    feather: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The BP of ``source`` blended into ``background`` at a random place.

    ``background`` and ``source``: float32 ``(H, W)`` grey levels 0-255 of the same size (model
    input); ``source_mask``: ``(H, W)``, non-zero on the BP (not empty). The patch is the mask's
    box grown by ``pad`` pixels; it is blended with the mask blurred by ``feather`` pixels (so the
    sheath's edge fades into the new surroundings rather than leaving a seam) and scaled by the
    ratio of the two patches' mean grey levels (clipped to 0.5-2: the gains of two subjects
    differ). Returns the new image (float32, 0-255) and its BP mask (uint8 0/1), the source mask
    moved with the patch."""
    if background.shape != source.shape or source_mask.shape != source.shape:
        raise ValueError(f"background, source and mask must have one shape, got "
                         f"{background.shape}, {source.shape}, {source_mask.shape}")
    on = source_mask > 0
    if not on.any():
        raise ValueError("the source mask is empty: there is no BP to paste")
    h, w = source.shape
    rows, cols = np.nonzero(on)
    y0, y1 = max(int(rows.min()) - pad, 0), min(int(rows.max()) + 1 + pad, h)
    x0, x1 = max(int(cols.min()) - pad, 0), min(int(cols.max()) + 1 + pad, w)
    ph, pw = y1 - y0, x1 - x0
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch_mask = on[y0:y1, x0:x1].astype(np.float32)
    alpha = cv2.GaussianBlur(patch_mask, (0, 0), feather) if feather > 0 else patch_mask
    patch = source[y0:y1, x0:x1].astype(np.float32)
    under = background[top:top + ph, left:left + pw].astype(np.float32)
    ratio = float(np.clip(under.mean() / max(float(patch.mean()), 1e-3), 0.5, 2.0))
    out = background.astype(np.float32, copy=True)
    out[top:top + ph, left:left + pw] = alpha * patch * ratio + (1.0 - alpha) * under
    mask = np.zeros((h, w), np.uint8)
    mask[top:top + ph, left:left + pw] = patch_mask.astype(np.uint8)
    return np.clip(out, 0.0, 255.0), mask
