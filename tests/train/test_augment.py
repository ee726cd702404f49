"""B-mode augmentation: the box follows the anatomy, draws are reproducible, grey levels stay valid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from bpedge.train.augment import BModeAugment, augment_grey, random_similarity, transform_points
from bpedge.train.datasets import DetectorDataset, FrameStore, Normalization

from bpedge._metrics import box_from_mask, box_iou


def test_photometric_changes_the_image_within_grey_levels_and_repeats_with_the_seed():
    grey = np.random.default_rng(0).uniform(0, 255, (40, 60)).astype(np.float32)
    aug = BModeAugment()
    a = augment_grey(grey, aug, np.random.default_rng(5))
    b = augment_grey(grey, aug, np.random.default_rng(5))
    c = augment_grey(grey, aug, np.random.default_rng(6))
    assert a.dtype == np.float32 and a.shape == grey.shape
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, grey)


def test_all_ranges_zero_is_the_identity():
    off = BModeAugment(gain=0, tgc=0, gamma=0, contrast=0, speckle=0, blur=0, scale=0, shift=0,
                       rotate=0)
    grey = np.random.default_rng(1).uniform(0, 255, (30, 50)).astype(np.float32)
    np.testing.assert_allclose(augment_grey(grey, off, np.random.default_rng(0)), grey)
    assert random_similarity(off, (30, 50), np.random.default_rng(0)) is None


def test_negative_range_is_refused():
    with pytest.raises(ValueError, match="gain"):
        BModeAugment(gain=-1)


def test_the_transformed_outline_box_matches_the_warped_mask():
    h, w = 120, 160
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (70, 60), (25, 15), 20, 0, 360, 255, -1)
    aug = BModeAugment(p_geometric=1.0)
    for seed in range(5):
        m = random_similarity(aug, (h, w), np.random.default_rng(seed))
        assert m is not None
        warped = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST)
        ys, xs = np.nonzero(mask)
        corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
        pts = transform_points(corners - 0.5, m) + 0.5
        moved = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
        assert box_iou(moved, box_from_mask(warped)) > 0.9


def test_detector_dataset_augments_per_epoch_and_keeps_the_box_on_the_bp(phantom_dir):
    from bpedge.train.data import scan_dataset

    store = FrameStore(scan_dataset(phantom_dir).positive()[:4])
    idx = [i for i in range(len(store)) if store.boxes[i] is not None][:4]
    norm = Normalization(100.0, 50.0)
    plain = DetectorDataset(store, idx, (80, 112), norm)
    aug = DetectorDataset(store, idx, (80, 112), norm, augment=BModeAugment(p_geometric=1.0),
                          seed=3)
    aug.set_epoch(1)
    x1, b1, _ = aug[0]
    x1b, b1b, _ = aug[0]
    aug.set_epoch(2)
    x2, b2, _ = aug[0]
    torch_equal = bool((x1 == x1b).all()) and bool((b1 == b1b).all())
    assert torch_equal, "the same epoch and sample must give the same augmentation"
    assert not bool((x1 == x2).all())
    x0, b0, _ = plain[0]
    assert not bool((x0 == x1).all())
    for b in (b1, b2):
        x_0, y_0, x_1, y_1 = b.tolist()
        assert 0 <= x_0 < x_1 <= 112 and 0 <= y_0 < y_1 <= 80
        # A small similarity transform moves the box, but not off the anatomy entirely.
        assert box_iou(b.tolist(), b0.tolist()) > 0.2
