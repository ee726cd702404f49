"""The frames a benchmark runs on, with their masks: a Kaggle-layout folder, or phantom frames made
in memory (no files written), held out from training by their seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Phantom frames made on the fly unless told otherwise: a seed no default training set uses
#: (``bpedge phantom`` and ``demo`` default to small seeds), so the frames are unseen.
DEFAULT_PHANTOM_SEED = 90210


@dataclass(frozen=True)
class BenchFrames:
    """Grey uint8 (H, W) frames and their 0/255 masks (same order), and where they came from."""

    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("a benchmark needs at least one frame")
        if not len(self.images) == len(self.masks) == len(self.names):
            raise ValueError("images, masks and names must have the same length")

    @property
    def positives(self) -> int:
        """Frames whose mask shows the BP."""
        return sum(bool(m.any()) for m in self.masks)

    @property
    def frame_hw(self) -> tuple[int, int]:
        h, w = self.images[0].shape
        return int(h), int(w)


def kaggle_frames(root: Path, limit: int | None = None) -> BenchFrames:
    """The frames of a Kaggle-layout folder (``{subject}_{frame}.tif`` + ``_mask.tif``), sorted by
    subject and frame; ``limit`` keeps the first N. Bad files fail with the dataset reader's
    message (the benchmark must not silently measure a different set)."""
    from bpedge.train.data import read_image, read_mask, scan_dataset

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    index = scan_dataset(Path(root), on_error="fail")
    frames = index.frames[:limit] if limit else index.frames
    return BenchFrames(
        images=tuple(read_image(f.image_path) for f in frames),
        masks=tuple(read_mask(f.mask_path) for f in frames),
        names=tuple(f.key for f in frames),
        source=f"{index.root} ({len(frames)} of {len(index.frames)} frames)",
    )


def phantom_frames(
    subjects: int = 2,
    frames: int = 8,
    seed: int = DEFAULT_PHANTOM_SEED,
    height: int = 420,
    width: int = 580,
) -> BenchFrames:
    """``subjects`` x ``frames`` phantom frames rendered in memory (20% without BP, as
    ``bpedge phantom`` makes them)."""
    from bpedge.train.data import PhantomConfig, render_subject

    config = PhantomConfig(subjects=subjects, frames=frames, seed=seed, height=height, width=width)
    images, masks, names = [], [], []
    for subject in range(1, subjects + 1):
        for number, image, mask in render_subject(config, subject):
            images.append(image)
            masks.append(mask)
            names.append(f"{subject}_{number}")
    return BenchFrames(tuple(images), tuple(masks), tuple(names),
                       f"phantom, {subjects} subject(s) x {frames} frames of {height}x{width}, "
                       f"seed {seed} (made in memory)")
