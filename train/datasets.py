"""Torch datasets for the two models, built on frames held in memory.

Memory: every frame of a run is decoded once into a :class:`FrameStore`: the image as uint8
``(H, W)`` and its mask packed to one bit per pixel (for the 2,323 BP-positive Kaggle frames,
2,323 x 420 x 580 B = 566 MB of images plus 71 MB of masks). Model inputs are computed per sample
in ``__getitem__`` (so DataLoader workers share the work and augmentation can vary per epoch)
with the stage combinations of :mod:`bpedge._preprocessing` (the ones the runtime calls):

- detector input: ``detector_input(frame, ModelInput(input_hw, norm))``, target box
  ``scale_box(frame box, in_w / W, in_h / H)``;
- segmenter input: ``segmenter_input(frame, box, ModelInput(crop_hw, norm))``, target
  ``segmenter_target(mask, box, crop_hw)`` (``crop_resize(mask, box, ...) > 127.5`` as 0.0/1.0),
  at the boxes ``crop_box(mode, ...)`` gives (the caller's: see ``train_segmenter``).

Augmentation is drawn per epoch from ``(seed, epoch)`` (``set_epoch``; per sample from
``(seed, epoch, sample)``), so it is the same whatever the number of workers and on a resumed run:
horizontal flip (the probe can be held either way round; image, mask and box flip together), the
B-mode transforms of :mod:`bpedge.train.augment` (gain/TGC, gamma/contrast, speckle, blur, and for
the detector a small scale/shift/rotation that moves the target box with the anatomy), and, for
the segmenter, box jitter (each box edge moved by up to ``jitter`` x the box side, then clamped to
the frame) and a crop margin (the box grown by ``margin`` x its side on every edge, as the cascade
crops).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from bpedge._preprocessing import (
    ModelInput,
    Normalization,
    detector_input,
    full_frame_box,
    segmenter_input,
    segmenter_target,
)
from bpedge._stages import Box, clamp_box, crop_resize, normalize, scale_box

if TYPE_CHECKING:
    from bpedge.train.augment import BModeAugment
    from bpedge.train.data import Frame

__all__ = [
    "DetectorDataset",
    "FrameStore",
    "Normalization",
    "SegmenterDataset",
    "fit_normalization",
    "full_frame_box",
]


class FrameStore:
    """Decoded frames of a run, in the order of ``frames``: uint8 images, bit-packed masks and
    the ground-truth boxes (frame pixels, ``None`` for an empty mask)."""

    def __init__(self, frames: Sequence[Frame], *, progress: bool = False, workers: int = 4) -> None:
        from bpedge.train.data import read_image, read_mask

        self.keys: tuple[str, ...] = tuple(f.key for f in frames)
        self.boxes: tuple[Box | None, ...] = tuple(f.box for f in frames)

        def load(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
            # Decoding releases the GIL, so threads overlap the TIFF decodes.
            image, mask = read_image(frame.image_path), read_mask(frame.mask_path)
            return image, np.packbits(mask.ravel() != 0)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            loaded = pool.map(load, frames)
            if progress:
                from tqdm.auto import tqdm

                loaded = tqdm(loaded, total=len(frames), desc="loading frames", unit="frame")
            pairs = list(loaded)
        self.images: list[np.ndarray] = [p[0] for p in pairs]
        self._masks: list[np.ndarray] = [p[1] for p in pairs]

    def __len__(self) -> int:
        return len(self.images)

    def hw(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of frame ``i``."""
        return (int(self.images[i].shape[0]), int(self.images[i].shape[1]))

    def mask(self, i: int) -> np.ndarray:
        """Frame ``i``'s mask as uint8 ``(H, W)`` of 0/255."""
        h, w = self.hw(i)
        bits = np.unpackbits(self._masks[i], count=h * w).reshape(h, w)
        return bits * np.uint8(255)

    def frame_hw(self) -> tuple[int, int] | None:
        """The common ``(H, W)`` of all frames, or ``None`` when sizes differ."""
        sizes = {img.shape for img in self.images}
        return (int(self.images[0].shape[0]), int(self.images[0].shape[1])) if len(sizes) == 1 else None


def fit_normalization(
    store: FrameStore, indices: Sequence[int], boxes: Sequence[Box], out_hw: tuple[int, int]
) -> Normalization:
    """Mean and (population) std of the model inputs ``crop_resize(image[i], box, ...)`` over
    ``indices`` (the training split only), before normalisation. ``boxes[k]`` goes with
    ``indices[k]``; ``out_hw`` is the model's ``(H, W)`` input size."""
    if len(indices) == 0:
        raise ValueError("cannot fit normalisation on an empty training split")
    total, total_sq, count = 0.0, 0.0, 0
    for i, box in zip(indices, boxes):
        v = crop_resize(store.images[i], box, out_hw[1], out_hw[0]).astype(np.float64)
        total += float(v.sum())
        total_sq += float((v * v).sum())
        count += v.size
    mean = total / count
    std = max(total_sq / count - mean * mean, 0.0) ** 0.5
    if std < 1e-3:
        raise ValueError(
            f"the training inputs are flat (std {std:.2g} grey levels); cannot z-score them"
        )
    return Normalization(mean=mean, std=std)


def _epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def _mask_outline(mask: np.ndarray) -> np.ndarray:
    """The corners of the outer boundary pixels of a uint8 ``(H, W)`` mask, in continuous
    pixel-edge coordinates: ``(P, 2)`` float64 x, y (their min/max is the mask's box)."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float64)
    return (pts[:, None, :] + corners[None]).reshape(-1, 2)


class DetectorDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """``(image (1, H, W) float32 z-scored, box (4,) float32 x0, y0, x1, y1 in input pixels,
    present () float32 1/0)`` for BP-positive frames ``indices`` of ``store``, frames resized whole
    to ``input_hw``, then (when ``empties`` is given) ``empties_per_epoch`` empty frames drawn
    afresh each epoch from ``empties`` (their box is zeros and ``present`` 0: every anchor is
    background for them), then ``pastes_per_epoch`` copy-paste samples (needs ``empties``): the BP
    of a random frame of ``indices`` pasted into a random frame of ``empties``
    (:func:`bpedge.train.augment.paste_bp`), target the pasted mask's box, drawn per sample from
    ``(seed, epoch, sample)``.

    ``augment``: B-mode transforms per sample (see :mod:`bpedge.train.augment`); a geometric one
    moves the mask's outline with the same matrix and the target is the outline's box (a
    transform that would push more than half the box out of the image is not applied)."""

    def __init__(
        self,
        store: FrameStore,
        indices: Sequence[int],
        input_hw: tuple[int, int],
        norm: Normalization,
        *,
        hflip: bool = False,
        augment: BModeAugment | None = None,
        seed: int = 0,
        empties: Sequence[int] = (),
        empties_per_epoch: int = 0,
        pastes_per_epoch: int = 0,
    ) -> None:
        missing = [store.keys[i] for i in indices if store.boxes[i] is None]
        if missing:
            raise ValueError(f"the detector trains on BP-positive frames; {missing[:5]} have empty masks")
        labelled = [store.keys[i] for i in empties if store.boxes[i] is not None]
        if labelled:
            raise ValueError(f"frames given as empty have a BP mask: {labelled[:5]}")
        if empties_per_epoch < 0 or pastes_per_epoch < 0:
            raise ValueError(f"empties_per_epoch and pastes_per_epoch must be >= 0, got "
                             f"{empties_per_epoch} and {pastes_per_epoch}")
        if pastes_per_epoch and not (empties and indices):
            raise ValueError("copy-paste needs BP frames to take the BP from and empty frames "
                             "to paste it into")
        self.store, self.indices = store, list(indices)
        self.input_hw, self.norm = (int(input_hw[0]), int(input_hw[1])), norm
        self.hflip, self.augment, self.seed = hflip, augment, seed
        self.empties = list(empties)
        self._n_empty = min(int(empties_per_epoch), len(self.empties))
        self._drawn: list[int] = self.empties[: self._n_empty]
        self._n_paste = int(pastes_per_epoch)
        self._flips = np.zeros(len(self), bool)
        self._epoch = 0
        self._outlines: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's flips and empty frames from ``(seed, epoch)``; augmentation follows
        the epoch too."""
        self._epoch = epoch
        if self.hflip:
            self._flips = _epoch_rng(self.seed, epoch, 0).random(len(self)) < 0.5
        if self._n_empty:
            pick = _epoch_rng(self.seed, epoch, 1).permutation(len(self.empties))[: self._n_empty]
            self._drawn = [self.empties[j] for j in np.sort(pick)]

    def __len__(self) -> int:
        return len(self.indices) + self._n_empty + self._n_paste

    def target_box(self, k: int) -> Box:
        """Sample ``k``'s ground-truth box in detector-input pixels (before any flip)."""
        i = self.indices[k]
        h, w = self.store.hw(i)
        in_h, in_w = self.input_hw
        return scale_box(self.store.boxes[i], in_w / w, in_h / h)  # type: ignore[arg-type]

    def _outline(self, k: int) -> np.ndarray:
        """Sample ``k``'s mask outline in detector-input pixel edges, (P, 2)."""
        if k not in self._outlines:
            i = self.indices[k]
            h, w = self.store.hw(i)
            in_h, in_w = self.input_hw
            self._outlines[k] = _mask_outline(self.store.mask(i)) * [in_w / w, in_h / h]
        return self._outlines[k]

    def _resized(self, i: int) -> np.ndarray:
        in_h, in_w = self.input_hw
        return crop_resize(self.store.images[i], full_frame_box(self.store.hw(i)), in_w, in_h)

    def _pasted(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy-paste sample ``k``: the image at input size (0-255) and its mask's outline."""
        from bpedge.train.augment import paste_bp

        rng = np.random.default_rng([self.seed, self._epoch, k, 1])
        source = int(rng.integers(len(self.indices)))
        i = self.indices[source]
        in_h, in_w = self.input_hw
        mask = crop_resize(self.store.mask(i), full_frame_box(self.store.hw(i)), in_w, in_h) > 127.5
        background = self._resized(self.empties[int(rng.integers(len(self.empties)))])
        grey, pasted = paste_bp(background, self._resized(i), mask, rng)
        return grey, _mask_outline(pasted)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pasted = k >= len(self.indices) + self._n_empty
        present = k < len(self.indices) or pasted
        in_h, in_w = self.input_hw
        outline: np.ndarray | None = None
        if pasted:
            grey, outline = self._pasted(k)
            (x0, y0), (x1, y1) = outline.min(axis=0).tolist(), outline.max(axis=0).tolist()
        else:
            i = self.indices[k] if present else self._drawn[k - len(self.indices)]
            x0, y0, x1, y1 = self.target_box(k) if present else (0.0, 0.0, 0.0, 0.0)
        if self.augment is None and not pasted:
            x = detector_input(self.store.images[i], ModelInput(self.input_hw, self.norm))[0]
        elif self.augment is None:
            x = normalize(grey, self.norm.mean, self.norm.std)
        else:
            # detector_input's steps with the augmentation between resize and normalisation.
            from bpedge.train.augment import augment_grey, random_similarity, transform_points

            if not pasted:
                grey = self._resized(i)
                outline = self._outline(k) if present else None
            rng = _epoch_rng(self.seed, self._epoch, 2 + k)
            m = random_similarity(self.augment, (in_h, in_w), rng)
            if m is not None and outline is not None:
                # warpAffine maps pixel centres; box coordinates are pixel edges (centre + 0.5).
                pts = transform_points(outline - 0.5, m) + 0.5
                moved = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
                kept = clamp_box(moved, in_w, in_h)
                area = (moved[2] - moved[0]) * (moved[3] - moved[1])
                if (kept[2] - kept[0]) * (kept[3] - kept[1]) >= 0.5 * area:
                    x0, y0, x1, y1 = kept
                else:
                    m = None  # the box would leave the image: this sample is not moved
            if m is not None:
                grey = cv2.warpAffine(grey, m, (in_w, in_h), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REFLECT_101)
            x = normalize(augment_grey(grey, self.augment, rng), self.norm.mean, self.norm.std)
        if self._flips[k]:
            # Resizing the whole frame commutes with the flip, so flipping the input is exact.
            x = np.ascontiguousarray(x[:, ::-1])
            if present:
                x0, x1 = in_w - x1, in_w - x0
        return (torch.from_numpy(x)[None], torch.tensor([x0, y0, x1, y1], dtype=torch.float32),
                torch.tensor(1.0 if present else 0.0))


class SegmenterDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(crop (1, h, w) float32 z-scored, mask (1, h, w) float32 0/1)`` of frames ``indices``,
    each cropped at ``boxes[k]`` (frame pixels) and resized to ``crop_hw``.

    ``augment``: its photometric transforms (:func:`bpedge.train.augment.augment_grey`) on each
    crop between resize and normalisation, drawn from ``(seed, epoch, sample)``; the target is
    unchanged."""

    def __init__(
        self,
        store: FrameStore,
        indices: Sequence[int],
        boxes: Sequence[Box],
        crop_hw: tuple[int, int],
        norm: Normalization,
        *,
        hflip: bool = False,
        jitter: float = 0.0,
        seed: int = 0,
        augment: BModeAugment | None = None,
    ) -> None:
        if len(boxes) != len(indices):
            raise ValueError(f"one box per frame: got {len(boxes)} boxes for {len(indices)} frames")
        if not 0.0 <= jitter < 0.5:
            raise ValueError(f"box jitter must be in [0, 0.5) of the box side, got {jitter}")
        self.store, self.indices = store, list(indices)
        self.boxes = [clamp_box(b, store.hw(i)[1], store.hw(i)[0]) for b, i in zip(boxes, indices)]
        self.crop_hw, self.norm = (int(crop_hw[0]), int(crop_hw[1])), norm
        self.hflip, self.jitter, self.seed, self.augment = hflip, jitter, seed, augment
        self._flips = np.zeros(len(self.indices), bool)
        self._shifts = np.zeros((len(self.indices), 4))
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's flips and box jitter from ``(seed, epoch)``; augmentation follows
        the epoch too."""
        self._epoch = epoch
        n = len(self.indices)
        if self.hflip:
            self._flips = _epoch_rng(self.seed, epoch, 0).random(n) < 0.5
        if self.jitter > 0:
            self._shifts = _epoch_rng(self.seed, epoch, 1).uniform(-self.jitter, self.jitter, (n, 4))

    def __len__(self) -> int:
        return len(self.indices)

    def box(self, k: int) -> Box:
        """Sample ``k``'s crop box this epoch (frame pixels, jittered and clamped)."""
        box = self.boxes[k]
        if self.jitter > 0:
            x0, y0, x1, y1 = box
            bw, bh = x1 - x0, y1 - y0
            dx0, dy0, dx1, dy1 = self._shifts[k]
            h, w = self.store.hw(self.indices[k])
            box = clamp_box((x0 + dx0 * bw, y0 + dy0 * bh, x1 + dx1 * bw, y1 + dy1 * bh), w, h)
        return box

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.indices[k]
        box = self.box(k)
        if self.augment is None:
            x = segmenter_input(self.store.images[i], box, ModelInput(self.crop_hw, self.norm))[0]
        else:
            # segmenter_input's steps with the augmentation between resize and normalisation.
            from bpedge.train.augment import augment_grey

            ch, cw = self.crop_hw
            grey = crop_resize(self.store.images[i], box, cw, ch)
            rng = _epoch_rng(self.seed, self._epoch, 2 + k)
            x = normalize(augment_grey(grey, self.augment, rng), self.norm.mean, self.norm.std)
        y = segmenter_target(self.store.mask(i), box, self.crop_hw)[0]
        if self._flips[k]:
            x, y = np.ascontiguousarray(x[:, ::-1]), np.ascontiguousarray(y[:, ::-1])
        return torch.from_numpy(x)[None], torch.from_numpy(y)[None]
