"""A synthetic neck-ultrasound dataset in the Kaggle layout, for tests, the demo and benchmarks.

Each subject is a short "video": one anatomy (tissue layers, vessels, an optional bone with its
acoustic shadow, a decoy cluster, and the brachial plexus) seen through a probe that drifts a few
pixels from frame to frame. Frames are rendered as B-mode images: an echogenicity map modulates
complex Gaussian scatterers, a point-spread function (wider laterally than axially) turns them into
Rayleigh speckle, depth attenuation and a per-subject time-gain curve shape the brightness, and the
envelope is log-compressed to 8 bits.

The brachial plexus (BP) is a cluster of 3-8 hypoechoic fascicles with bright rims inside a
moderately bright sheath, 60-160 px wide in a 580 px frame; its mask is the filled convex outline
of the fascicles. The phantom is built to make detection matter: at the resolution of a whole frame
shrunk to 96x96, the rims vanish and the BP looks much like the decoys that every frame carries (a
cluster of rimless hypoechoic blobs in muscle, small vessels with bright walls, bright fascia
lines), whereas a crop around the BP keeps the rims that tell it apart.

Everything is vectorised NumPy/OpenCV and drawn from ``numpy.random.default_rng((seed, subject))``,
so a subject's frames do not depend on how many other subjects are generated.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from bpedge._atomic import current_umask, exchange
from bpedge._out_dir import OutDirRefused, refuse_unless_new_or_empty

__all__ = ["PhantomConfig", "generate_phantom", "render_subject"]

#: The real data's frame size, to which every size in pixels below refers.
_REF_H, _REF_W = 420, 580


#: Largest frame side in pixels (a 4096 x 4096 frame's float32 noise fields are 128 MiB each).
MAX_SIDE = 4096
MAX_FRAMES = 100_000
MAX_SUBJECTS = 10_000
#: Frames rendered ahead of the TIFF writers: memory stays a few frames, whatever --frames is.
_WRITES_AHEAD = 8


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate: ``subjects`` x ``frames`` frames of ``height`` x ``width`` pixels, of which
    ``round(frames * empty_fraction)`` per subject (one contiguous run) have no BP."""

    subjects: int = 6
    frames: int = 40
    seed: int = 0
    height: int = 420
    width: int = 580
    empty_fraction: float = 0.2

    def __post_init__(self) -> None:
        # Upper bounds too: --height 100000 asked numpy for 37 GiB and failed with its message
        # after the output folder had been made.
        if not (1 <= self.subjects <= MAX_SUBJECTS and 1 <= self.frames <= MAX_FRAMES):
            raise ValueError(
                f"subjects must be within 1..{MAX_SUBJECTS} and frames within 1..{MAX_FRAMES}, "
                f"got {self.subjects} and {self.frames}"
            )
        if not (96 <= self.height <= MAX_SIDE and 96 <= self.width <= MAX_SIDE):
            raise ValueError(f"height and width must be within 96..{MAX_SIDE}, got "
                             f"{self.height}x{self.width}")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be within [0, 1], got {self.empty_fraction}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class _Anatomy:
    """One subject's scene, in frame pixels: echogenicity (linear amplitude) without and with the
    BP, the BP mask, and the imaging settings that stay fixed during the video."""

    echo_empty: np.ndarray   # float32 (H, W)
    echo_bp: np.ndarray      # float32 (H, W)
    mask: np.ndarray         # uint8 (H, W), 0/255
    depth_gain: np.ndarray   # float32 (H, 1): attenuation x time-gain compensation
    psf_sigma: tuple[float, float]  # (lateral, axial) in pixels
    ref_level: float         # envelope level shown at full brightness
    dynamic_range_db: float


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int], sx: float, sy: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise smoothed with std (sx, sy) pixels: float32 (H, W)."""
    field = cv2.GaussianBlur(rng.standard_normal(hw, dtype=np.float32), (0, 0), sx, sigmaY=sy)
    return (field - field.mean()) / (field.std() + 1e-6)


def _curve(rng: np.random.Generator, width: int, base: float, wobble: float, tilt: float) -> np.ndarray:
    """A smooth horizontal-ish boundary: depth in pixels at each column, float32 (W,)."""
    x = np.arange(width, dtype=np.float32) / width
    y = base + tilt * (x - 0.5)
    for _ in range(2):
        y = y + wobble * rng.uniform(0.3, 1.0) * np.sin(
            2 * np.pi * rng.uniform(0.4, 1.8) * x + rng.uniform(0, 2 * np.pi)
        )
    return y.astype(np.float32)


def _place(
    rng: np.random.Generator,
    taken: list[tuple[float, float, float]],
    radius: float,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
) -> tuple[float, float]:
    """A centre in the ranges whose circle of ``radius`` overlaps none already taken (best effort:
    after 300 tries, the least overlapping candidate)."""
    best, best_gap = (0.0, 0.0), -math.inf
    for _ in range(300):
        x, y = rng.uniform(*x_range), rng.uniform(*y_range)
        gap = min((math.hypot(x - tx, y - ty) - r - radius for tx, ty, r in taken), default=1.0)
        if gap > 0:
            best = (x, y)
            break
        if gap > best_gap:
            best, best_gap = (x, y), gap
    taken.append((best[0], best[1], radius))
    return best


def _pack_blobs(
    rng: np.random.Generator, n: int, half_w: float, half_h: float, gap: float, r_min: float
) -> list[tuple[float, float, float]]:
    """Up to ``n`` non-overlapping circles ``(dx, dy, r)`` inside an ellipse of half-axes
    (half_w, half_h) about the origin, spaced by at least ``gap``. Fewer (down to 3) when circles of
    radius ``r_min`` would not fit: fascicles much smaller than the speckle grain would vanish."""
    def mean_radius(k: int) -> float:
        return math.sqrt(0.5 * half_w * half_h / k) - gap / 2

    while n > 3 and mean_radius(n) < r_min:
        n -= 1
    r_mean = max(mean_radius(n), 1.0)
    best: list[tuple[float, float, float]] = []
    for _ in range(10):  # random packing can stall: retry smaller, then with fewer circles
        blobs: list[tuple[float, float, float]] = []
        for _ in range(40 * n):
            r = r_mean * rng.uniform(0.75, 1.1)
            ang, rad = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0, 1))
            dx = rad * max(half_w - r, 1.0) * math.cos(ang)
            dy = rad * max(half_h - r, 1.0) * math.sin(ang)
            if all(math.hypot(dx - bx, dy - by) >= r + br + gap for bx, by, br in blobs):
                blobs.append((dx, dy, r))
                if len(blobs) == n:
                    return blobs
        best = max(best, blobs, key=len)
        if r_mean * 0.9 >= min(r_min, mean_radius(n)) * 0.8:
            r_mean *= 0.9
        elif n > 1:
            n -= 1
    return best


def _ellipse(img: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float, value: float) -> None:
    """Fill an ellipse in place (sub-pixel centre and axes via cv2's fixed-point ``shift``)."""
    s = 16
    cv2.ellipse(
        img,
        (round(cx * s), round(cy * s)),
        (max(1, round(ax * s)), max(1, round(ay * s))),
        angle, 0, 360, float(value), thickness=-1, lineType=cv2.LINE_AA, shift=4,
    )


def _draw_layers(rng: np.random.Generator, yy: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue layers, top to bottom: skin, subcutaneous fat (lobules and septa), sternocleidomastoid
    (striated), scalene layer (oblique fibres), deep tissue; bright fascia between them.
    Returns the echogenicity map and the muscle texture (both float32 (H, W))."""
    sx, sy = w / _REF_W, h / _REF_H
    s = math.sqrt(sx * sy)
    b_skin = _curve(rng, w, rng.uniform(5, 9) * sy, 1.0 * sy, 0.0)
    b_fat = _curve(rng, w, rng.uniform(0.07, 0.13) * h, 0.02 * h, rng.uniform(-0.04, 0.04) * h)
    b_scm = b_fat + _curve(rng, w, rng.uniform(0.12, 0.2) * h, 0.03 * h, rng.uniform(-0.12, 0.12) * h)
    b_deep = _curve(rng, w, rng.uniform(0.74, 0.86) * h, 0.04 * h, rng.uniform(-0.08, 0.08) * h)
    striation = _smooth_noise(rng, (h, w), 10 * sx, 1.2 * sy)
    oblique = cv2.warpAffine(
        _smooth_noise(rng, (h, w), 12 * sx, 1.5 * sy),
        cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-20, 20), 1.0), (w, h),
        borderMode=cv2.BORDER_REFLECT_101,
    )
    lobules = _smooth_noise(rng, (h, w), 5 * s, 3 * s)
    septa = np.exp(-0.5 * (lobules / 0.18) ** 2)  # thin bright lines between fat lobules
    echo = np.where(yy < b_skin, 2.4, 0.0).astype(np.float32)
    echo = np.where((yy >= b_skin) & (yy < b_fat), 0.3 + 1.6 * septa, echo)
    echo = np.where((yy >= b_fat) & (yy < b_scm), 0.7 * np.exp(0.6 * striation), echo)
    echo = np.where((yy >= b_scm) & (yy < b_deep), 0.6 * np.exp(0.5 * oblique), echo)
    echo = np.where(yy >= b_deep, 0.45 * np.exp(0.6 * lobules), echo)
    # Patchy large-scale brightness, as in real scans (uneven coupling, tissue heterogeneity).
    echo = (echo * np.exp(0.3 * _smooth_noise(rng, (h, w), 40 * s, 30 * s))).astype(np.float32)
    for boundary in (b_fat, b_scm, b_deep):  # fascia: bright lines of varying strength
        strength = 1.8 + 1.2 * _smooth_noise(rng, (1, w), 40 * sx, 0.1)
        thick = rng.uniform(1.2, 2.2) * sy
        echo += np.clip(strength, 0.3, None) * np.exp(-0.5 * ((yy - boundary[None, :]) / thick) ** 2)
    return echo, striation


def _draw_vessels(
    rng: np.random.Generator, echo: np.ndarray, shade: np.ndarray, taken: list, s: float
) -> None:
    """Carotid artery (round, thick bright wall), jugular vein (flattened oval, faint wall) and 1-3
    small vessels with bright rims (locally much like one fascicle), all anechoic with posterior
    enhancement. Draws into ``echo`` and ``shade`` in place."""
    h, w = echo.shape
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for kind in ("artery", "vein"):
        r = rng.uniform(22, 36) * s if kind == "artery" else rng.uniform(18, 32) * s
        ry = r if kind == "artery" else r * rng.uniform(0.4, 0.7)
        cx, cy = _place(rng, taken, r + 4 * s, (0.06 * w, 0.94 * w), (0.2 * h, 0.6 * h))
        wall = rng.uniform(2.5, 3.5) * s if kind == "artery" else 1.2 * s
        _ellipse(echo, cx, cy, r + wall, ry + wall, 0, 2.6 if kind == "artery" else 1.4)
        _ellipse(echo, cx, cy, r, ry, 0, 0.01)
        _posterior_enhancement(shade, yy, xx, cx, cy + ry, r, h, rng.uniform(0.4, 0.8))
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(5, 11) * s
        cx, cy = _place(rng, taken, r + 3 * s, (0.05 * w, 0.95 * w), (0.15 * h, 0.85 * h))
        _ellipse(echo, cx, cy, r + 2.5 * s, r + 2.5 * s, 0, 2.4)
        _ellipse(echo, cx, cy, r, r, 0, 0.02)
        _posterior_enhancement(shade, yy, xx, cx, cy + r, r, h, 0.3)


def _draw_decoys(
    rng: np.random.Generator, echo: np.ndarray, taken: list, texture: np.ndarray, s: float
) -> np.ndarray:
    """1-2 clusters of hypoechoic blobs of the BP's size without bright rims, most in a bright
    sheath like the BP's. Shrunk to a 96x96 whole frame they look like the BP; only the rims (a few
    pixels at full resolution) tell them apart. Returns the new echogenicity map."""
    h, w = echo.shape
    sx, sy = w / _REF_W, h / _REF_H
    for _ in range(int(rng.integers(1, 3))):
        d_w = rng.uniform(60, 150) * sx
        d_h = d_w * rng.uniform(0.5, 0.9) * sy / sx
        d_r = 0.5 * math.hypot(d_w, d_h)
        dx, dy = _place(rng, taken, d_r, (0.08 * w + d_r, 0.92 * w - d_r),
                        (0.2 * h + d_h / 2, 0.8 * h - d_h / 2))
        blobs = _pack_blobs(rng, int(rng.integers(3, 8)), d_w / 2, d_h / 2, 4 * s, 7 * s)
        sheathed = rng.random() < 0.7
        echo, _ = _cluster(rng, echo, dx, dy, blobs, rim=0.0, sheath=sheathed, texture=texture, s=s)
    return echo


def _draw_bone(rng: np.random.Generator, echo: np.ndarray, shade: np.ndarray) -> None:
    """In most subjects, a transverse process or rib: a bright dome with an acoustic shadow below."""
    if rng.random() >= 0.7:
        return
    h, w = echo.shape
    sx, sy = w / _REF_W, h / _REF_H
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    bone_w = rng.uniform(80, 200) * sx
    cx = rng.uniform(0.1 * w, 0.9 * w)
    top = rng.uniform(0.8, 0.9) * h
    u = (xx - cx) / (bone_w / 2)
    arc = top + u**2 * rng.uniform(15, 35) * sy  # the bone's surface facing the probe
    across = np.exp(-0.5 * u**8)  # flat-topped, soft-edged profile across the bone
    echo += 4.0 * across * np.exp(-0.5 * ((yy - arc) / (2.5 * sy)) ** 2)
    behind = 1.0 / (1.0 + np.exp(np.clip((arc + 4 * sy - yy) / (1.5 * sy), -30, 30)))
    shade *= (1.0 - 0.93 * across * behind).astype(np.float32)


def _build_anatomy(rng: np.random.Generator, h: int, w: int) -> _Anatomy:
    sx, sy = w / _REF_W, h / _REF_H
    s = math.sqrt(sx * sy)
    yy = np.arange(h, dtype=np.float32)[:, None]
    echo, striation = _draw_layers(rng, yy, h, w)
    taken: list[tuple[float, float, float]] = []
    shade = np.ones((h, w), np.float32)  # posterior enhancement and shadows, applied at the end

    # The brachial plexus's place is fixed first so that everything else avoids it.
    bp_w = rng.uniform(60, 160) * sx
    bp_h = bp_w * rng.uniform(0.55, 0.9) * sy / sx
    bp_r = 0.5 * math.hypot(bp_w, bp_h)
    bp_x, bp_y = _place(rng, taken, bp_r + 6 * s, (0.15 * w + bp_r, 0.85 * w - bp_r),
                        (max(0.28 * h, bp_h / 2 + 20 * sy), min(0.68 * h, h - bp_h / 2 - 20 * sy)))
    _draw_vessels(rng, echo, shade, taken, s)
    echo = _draw_decoys(rng, echo, taken, striation, s)
    _draw_bone(rng, echo, shade)
    echo *= shade
    echo_empty = cv2.GaussianBlur(echo, (0, 0), 0.8 * s)

    # The BP: bright sheath around 3-8 hypoechoic fascicles, each with a bright rim; the mask is
    # the sheath's convex outline.
    rim = rng.uniform(3.0, 4.5) * s
    blobs = _pack_blobs(rng, int(rng.integers(3, 9)), bp_w / 2, bp_h / 2, rim + 1.5 * s, 7 * s)
    bp_echo, hull = _cluster(rng, echo, bp_x, bp_y, blobs, rim=rim, sheath=True, texture=striation, s=s)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [hull], 255, lineType=cv2.LINE_8)
    echo_bp = cv2.GaussianBlur(bp_echo, (0, 0), 0.8 * s)

    # Depth attenuation, partly undone by a per-subject time-gain curve.
    depth = yy / h
    alpha = rng.uniform(1.0, 2.0)
    knots = np.interp(depth[:, 0], np.linspace(0, 1, 5), rng.uniform(-0.25, 0.25, 5))
    depth_gain = np.exp(-alpha * depth * (1 - rng.uniform(0.4, 0.8)) + knots[:, None])
    psf = (rng.uniform(1.8, 2.8) * sx, rng.uniform(0.9, 1.4) * sy)
    return _Anatomy(
        echo_empty=echo_empty.astype(np.float32),
        echo_bp=echo_bp.astype(np.float32),
        mask=mask,
        depth_gain=depth_gain.astype(np.float32),
        psf_sigma=psf,
        ref_level=_unit_envelope(psf) * 12.0 * 10 ** (rng.uniform(-4, 4) / 20),
        dynamic_range_db=rng.uniform(48, 60),
    )


def _cluster(
    rng: np.random.Generator,
    echo: np.ndarray,
    cx: float,
    cy: float,
    blobs: list[tuple[float, float, float]],
    *,
    rim: float,
    sheath: bool,
    texture: np.ndarray,
    s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a cluster of hypoechoic blobs centred at (cx, cy): each with a bright rim of ``rim``
    pixels (none if 0), optionally inside a bright sheath filling the blobs' convex outline.
    Returns the new echogenicity map and the outline (int32 points, ``cv2.fillPoly`` ready) that
    runs ``rim + 3 * s`` pixels outside the blobs."""
    outlines = [
        cv2.ellipse2Poly((round(cx + bx), round(cy + by)), (round(br + rim + 3 * s),) * 2,
                         0, 0, 360, 20)
        for bx, by, br in blobs
    ]
    hull = cv2.convexHull(np.concatenate(outlines))
    out = echo.copy()
    if sheath:
        weight = np.zeros(echo.shape, np.float32)
        cv2.fillPoly(weight, [hull], 1.0, lineType=cv2.LINE_AA)
        weight = cv2.GaussianBlur(weight, (0, 0), 3 * s)
        level = rng.uniform(1.0, 1.5) * np.exp(0.25 * texture)
        out = echo * (1 - weight) + weight * level
    for bx, by, br in blobs:
        ax, ay, ang = br * rng.uniform(0.9, 1.15), br * rng.uniform(0.75, 1.0), rng.uniform(0, 180)
        if rim > 0:
            _ellipse(out, cx + bx, cy + by, ax + rim, ay + rim, ang, rng.uniform(2.2, 3.2))
        _ellipse(out, cx + bx, cy + by, ax, ay, ang, rng.uniform(0.08, 0.2))
    return out.astype(np.float32), hull


def _posterior_enhancement(shade: np.ndarray, yy: np.ndarray, xx: np.ndarray, cx: float,
                           bottom: float, r: float, h: int, amount: float) -> None:
    """Brighten the column below a fluid-filled structure (less attenuation through fluid)."""
    column = np.exp(-0.5 * ((xx - cx) / (0.8 * r)) ** 2)
    below = np.where(yy > bottom, np.exp(-(yy - bottom) / (0.35 * h)), 0.0)
    shade *= (1.0 + amount * column * below).astype(np.float32)


def _unit_envelope(psf: tuple[float, float]) -> float:
    """Mean speckle envelope for echogenicity 1 through this PSF (Rayleigh mean of the blurred
    complex white noise: sqrt(pi/4 * 2 var), var of one component = 1 / (4 pi sx sy))."""
    var = 1.0 / (4 * math.pi * psf[0] * psf[1])
    return math.sqrt(math.pi / 4 * 2 * var)


def _frame_motion(rng: np.random.Generator, n: int, h: int, w: int) -> list[np.ndarray]:
    """Per-frame 2x3 affine maps of a probe that drifts: random-walk shift (within +-12 px) and tilt
    (within +-2.5 degrees), and a periodic axial compression (pulsation, +-2%)."""
    s = math.sqrt(w / _REF_W * h / _REF_H)
    shift = np.clip(np.cumsum(rng.normal(0, 1.2 * s, (n, 2)), axis=0), -12 * s, 12 * s)
    tilt = np.clip(np.cumsum(rng.normal(0, 0.2, n)), -2.5, 2.5)
    period, phase = rng.uniform(8, 20), rng.uniform(0, 2 * np.pi)
    maps = []
    for i in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(tilt[i]), 1.0)
        squeeze = 1.0 + 0.02 * math.sin(2 * math.pi * i / period + phase)
        m[1] *= squeeze  # compress about the skin line (y = 0), as the probe presses
        m[:, 2] += shift[i]
        maps.append(m)
    return maps


def _bmode(
    echo: np.ndarray, anatomy: _Anatomy, noise: np.ndarray, gain_db: float
) -> np.ndarray:
    """Speckle, attenuation and log compression: echogenicity float32 (H, W) -> uint8 (H, W)."""
    scatter = noise * echo[None]
    sl, sa = anatomy.psf_sigma
    re = cv2.GaussianBlur(scatter[0], (0, 0), sl, sigmaY=sa)
    im = cv2.GaussianBlur(scatter[1], (0, 0), sl, sigmaY=sa)
    envelope = np.sqrt(re * re + im * im) * anatomy.depth_gain
    level = anatomy.ref_level / 10 ** (gain_db / 20)
    db = 20 * np.log10(np.maximum(envelope / level, 1e-6))
    out = (db + anatomy.dynamic_range_db) * (255.0 / anatomy.dynamic_range_db)
    # The scanner's scan conversion interpolates between beam lines: a slight display blur.
    out = cv2.GaussianBlur(out, (0, 0), 0.6)
    return np.clip(out, 0, 255).astype(np.uint8)


def render_subject(config: PhantomConfig, subject: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(frame number from 1, image uint8 (H, W), mask uint8 (H, W) of 0/255)`` for one
    subject (numbered from 1) of the phantom ``config`` describes."""
    if not 1 <= subject <= config.subjects:
        raise ValueError(f"subject must be within 1..{config.subjects}, got {subject}")
    rng = np.random.default_rng((config.seed, subject))
    h, w = config.height, config.width
    anatomy = _build_anatomy(rng, h, w)
    n = config.frames
    n_empty = round(n * config.empty_fraction)
    first_empty = int(rng.integers(0, n - n_empty + 1))
    motion = _frame_motion(rng, n, h, w)
    base_noise = rng.standard_normal((2, h, w), dtype=np.float32)
    for i in range(n):
        empty = first_empty <= i < first_empty + n_empty
        m = motion[i]
        echo = anatomy.echo_empty if empty else anatomy.echo_bp
        echo = cv2.warpAffine(echo, m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
        if empty:
            mask = np.zeros((h, w), np.uint8)
        else:
            mask = cv2.warpAffine(anatomy.mask, m, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            mask = np.where(mask >= 128, np.uint8(255), np.uint8(0))
        # Speckle decorrelates only partly between frames of a video: part of the scatterer field
        # moves with the probe (integer roll keeps its statistics), part is new.
        shift = (round(float(m[1, 2])), round(float(m[0, 2])))
        fresh = rng.standard_normal((2, h, w), dtype=np.float32)
        noise = 0.7 * np.roll(base_noise, shift, axis=(1, 2)) + 0.714 * fresh
        yield i + 1, _bmode(echo, anatomy, noise, rng.normal(0, 0.5)), mask


def _write_tiff(path: Path, array: np.ndarray) -> None:
    # LZW like the real data (tifffile encodes it through imagecodecs).
    tifffile.imwrite(path, array, compression="lzw", photometric="minisblack")


def _refuse_any_entry(out_dir: Path) -> None:
    """Refuse (:class:`OutDirRefused`) a folder that holds any entry at all. The dataset is
    published by renaming a finished folder onto ``out_dir``, which only works over an empty
    one: even a ``.bpedge-out.lock`` (which other commands take as their own and let pass)
    cannot be removed here, since phantom never made one and it may be anybody's."""
    if not out_dir.is_dir():
        return
    entry = min(out_dir.iterdir(), default=None)
    if entry is not None:
        raise OutDirRefused(f"--out {out_dir} is not empty: it holds {entry.name}, which is "
                            "never removed; choose a new output folder")


def generate_phantom(out_dir: Path, config: PhantomConfig, *, progress: bool = False) -> Path:
    """Write ``config.subjects`` x ``config.frames`` frames to ``out_dir`` in the Kaggle layout
    (``{subject}_{frame}.tif`` and ``{subject}_{frame}_mask.tif``, 8-bit grey LZW TIFF, subjects and
    frames numbered from 1) and return ``out_dir``.

    ``out_dir`` must not exist or be empty. Frames are written into a hidden sibling folder that is
    swapped in for ``out_dir`` at the end, so an interrupted run leaves no half dataset behind. An
    empty ``out_dir`` keeps its permissions, owner and group (the dataset folder takes them); one
    that cannot (another user's, a mount point) is refused before any frame is rendered.
    """
    given = Path(out_dir)
    refuse_unless_new_or_empty(given)
    out_dir = _real_out(given)
    if out_dir == Path(os.getcwd()).resolve():
        # The dataset folder replaces it: a shell in it is left in a deleted folder.
        raise OutDirRefused(f"--out {given} is the current folder, which the finished dataset "
                            "would take the place of: give a new folder path")
    _refuse_any_entry(out_dir)
    existing = out_dir.stat() if out_dir.is_dir() else None
    if existing is not None and _is_mount_point(out_dir):
        raise OutDirRefused(f"--out {out_dir} is a mount point, which the finished dataset cannot "
                            "take the place of: give a new folder inside it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"--out {out_dir}: a part of its path is a file, not a "
                                 "folder") from None
    partial, mode = _partial_folder(out_dir, existing)
    total = config.subjects * config.frames
    bar = None
    swapped = False
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="phantom frames", unit="frame")
    try:
        # Encoding runs beside rendering: LZW and the file writes release the GIL.
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = []
            for subject in range(1, config.subjects + 1):
                for frame, image, mask in render_subject(config, subject):
                    stem = partial / f"{subject}_{frame}"
                    pending.append(pool.submit(_write_tiff, Path(f"{stem}.tif"), image))
                    pending.append(pool.submit(_write_tiff, Path(f"{stem}_mask.tif"), mask))
                    while len(pending) > 2 * _WRITES_AHEAD:
                        pending.pop(0).result()
                    if bar is not None:
                        bar.update(1)
                for job in pending:
                    job.result()
                pending.clear()
        # The final mode only now: an empty --out of mode 0555 given to the hidden folder at
        # the start failed the first frame's write.
        os.chmod(partial, mode)
        # What is at out_dir now, not at the start: something may have been put there meanwhile.
        if out_dir.is_symlink() or (os.path.lexists(out_dir) and not out_dir.is_dir()):
            raise OutDirRefused(f"--out {out_dir} was made a file or link while phantom ran: it "
                                "is left as it is; run again with a new folder")
        if out_dir.exists():
            _refuse_any_entry(out_dir)
            # One swap, so the path holds the empty folder or the dataset at every moment (a
            # kill between rmdir and rename left neither); the empty folder, now at the hidden
            # name, is removed after. Two steps where the system has no swap.
            if exchange(partial, out_dir):
                swapped = True
                try:
                    partial.rmdir()
                except OSError as exc:
                    # Not the empty folder: something took out_dir's place between the last
                    # check and the swap (another run's dataset, a file). Swap back, so each is
                    # where it was (ours to remove), and refuse.
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                        raise
                    swapped = not exchange(partial, out_dir)
                    raise OutDirRefused(
                        f"--out {out_dir} was filled while phantom ran (another run, or a file "
                        "put there): it is left as it is; run again with a new folder") from None
            else:
                out_dir.rmdir()  # os.replace cannot replace even an empty folder on every OS
                os.replace(partial, out_dir)
        else:
            os.replace(partial, out_dir)
    except BaseException:
        if not swapped:  # after the swap, that name is the user's folder
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return out_dir


def _real_out(given: Path) -> Path:
    """``given`` as an absolute path with its parent's links resolved, as the shell's ``mkdir``
    would place it (``lnk/../ds`` is ``ds`` beside ``lnk``'s target, not beside ``lnk``); the
    last part is not resolved (a link there is refused by the caller)."""
    if given.name in ("", ".", ".."):
        return Path(os.path.realpath(given))
    return Path(os.path.realpath(given.parent)) / given.name


def _is_mount_point(path: Path) -> bool:
    """Whether ``path`` is a mount point, bind mounts of the same filesystem included (which
    :func:`os.path.ismount` does not see: the swap then failed with EBUSY after every frame)."""
    if os.path.ismount(path):
        return True
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    real = os.path.realpath(path)
    # Field 5 is the mount point, with spaces, tabs, newlines and backslashes as octal escapes.
    points = {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
              for fields in (line.split(" ") for line in lines) if len(fields) > 4}
    return real in points


def _partial_folder(out_dir: Path, existing: os.stat_result | None) -> tuple[Path, int]:
    """The hidden folder beside ``out_dir`` the frames are written into, with the owner and group
    of the empty folder it will replace, and the mode to give it once the frames are in (that
    folder's, else 0777 less the umask, keeping a set-group-ID bit inherited from the parent)."""
    # A new folder of its own (never a fixed name that could be someone else's folder), its
    # name cut so that it fits where out_dir's own 255-byte name does.
    stem = os.fsencode(out_dir.name)[:200].decode(errors="ignore")
    try:
        partial = Path(tempfile.mkdtemp(prefix=f".{stem}.partial-", dir=out_dir.parent))
    except OSError as exc:  # a parent this user may not write: it named the hidden folder
        raise OutDirRefused(f"--out {out_dir}: cannot make a folder in {out_dir.parent} "
                            f"({exc.strerror})") from None
    try:
        made = partial.stat()
        if existing is None:
            return partial, (0o777 & ~current_umask()) | (made.st_mode & stat.S_ISGID)
        # Compared with what the new folder got, not with this process's ids: in a set-group-ID
        # parent it takes the parent's group.
        if (made.st_uid, made.st_gid) != (existing.st_uid, existing.st_gid):
            try:
                os.chown(partial, existing.st_uid, existing.st_gid)
            except PermissionError:
                raise OutDirRefused(
                    f"--out {out_dir} is an empty folder whose owner or group this user cannot "
                    "give the dataset folder that replaces it: give a new folder path") from None
        # Set after chown (which clears set-ID bits). A user's empty 0700 folder had become 0755.
        return partial, stat.S_IMODE(existing.st_mode)
    except BaseException:
        partial.rmdir()
        raise
