"""B-mode augmentation: the box follows the anatomy, draws are reproducible, grey levels stay valid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from bpedge.train.augment import (
    BModeAugment,
    augment_grey,
    paste_bp,
    random_similarity,
    transform_points,
)
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


def test_paste_bp_moves_the_mask_and_changes_only_the_patch():
    rng = np.random.default_rng(0)
    background = rng.uniform(90, 110, (60, 80)).astype(np.float32)
    source = np.full((60, 80), 60.0, np.float32)
    mask = np.zeros((60, 80), np.uint8)
    cv2.circle(mask, (20, 25), 8, 1, -1)
    source[mask > 0] = 20.0
    out, moved = paste_bp(background, source, mask, np.random.default_rng(4), pad=3)
    assert out.dtype == np.float32 and out.shape == background.shape
    assert moved.sum() == mask.sum()
    # The same disc, shifted: its box has the source box's size, inside the frame.
    (sx0, sy0, sx1, sy1), (mx0, my0, mx1, my1) = box_from_mask(mask), box_from_mask(moved)
    assert (mx1 - mx0, my1 - my0) == (sx1 - sx0, sy1 - sy0)
    assert 0 <= mx0 and mx1 <= 80 and 0 <= my0 and my1 <= 60
    # Outside the patch (the mask's box grown by pad) the background is untouched...
    patch = np.zeros_like(mask, bool)
    patch[max(int(my0) - 3, 0):int(my1) + 3, max(int(mx0) - 3, 0):int(mx1) + 3] = True
    np.testing.assert_array_equal(out[~patch], background[~patch])
    # ...and the disc is darker than its new surroundings, as in the source (gain-matched).
    assert out[moved > 0].mean() < 0.6 * background[~patch].mean()
    again, _ = paste_bp(background, source, mask, np.random.default_rng(4), pad=3)
    np.testing.assert_array_equal(out, again)
    with pytest.raises(ValueError, match="empty"):
        paste_bp(background, source, np.zeros_like(mask), rng)
    with pytest.raises(ValueError, match="shape"):
        paste_bp(background[:50], source, mask, rng)


def test_copy_paste_samples_are_bp_frames_with_the_pasted_box(phantom_dir):
    from bpedge.train.data import scan_dataset

    frames = scan_dataset(phantom_dir).frames
    positives = [f for f in frames if f.present][:4]
    empties = [f for f in frames if not f.present][:2]
    store = FrameStore(positives + empties)
    norm = Normalization(100.0, 50.0)
    ds = DetectorDataset(store, [0, 1, 2, 3], (80, 112), norm, empties=[4, 5],
                         pastes_per_epoch=3, seed=2)
    assert len(ds) == 4 + 3  # no empty frames drawn as such: only the pastes use them
    ds.set_epoch(1)
    sizes = {(round(b[2] - b[0], 3), round(b[3] - b[1], 3))
             for b in (ds.target_box(k) for k in range(4))}
    for k in range(4, 7):
        x, box, present = ds[k]
        x0, y0, x1, y1 = box.tolist()
        assert float(present) == 1.0 and 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 80
        # A BP of one of the BP frames, moved: its box keeps that frame's box size (to the pixel
        # the resized mask gives).
        assert any(abs((x1 - x0) - w) <= 2 and abs((y1 - y0) - h) <= 2 for w, h in sizes)
        torch.testing.assert_close(ds[k][0], x)  # the same sample within an epoch
    first = ds[4][0]
    ds.set_epoch(2)
    assert not bool((ds[4][0] == first).all())
    with pytest.raises(ValueError, match="copy-paste"):
        DetectorDataset(store, [0, 1], (80, 112), norm, pastes_per_epoch=1)


def test_gain_scale_multiplies_every_grey_level_by_one_factor():
    grey = np.random.default_rng(2).uniform(20, 120, (30, 40)).astype(np.float32)
    only_scale = BModeAugment(gain=0, tgc=0, gain_scale=0.5, gamma=0, contrast=0, speckle=0,
                              blur=0)
    ratios = []
    for seed in range(20):
        out = augment_grey(grey, only_scale, np.random.default_rng(seed))
        ratio = out / grey
        # One factor for the whole image (grey levels up to 120 x e^0.5 < 255: nothing clipped).
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
        ratios.append(float(ratio.flat[0]))
    assert min(ratios) >= np.exp(-0.5) - 1e-6 and max(ratios) <= np.exp(0.5) + 1e-6
    assert min(ratios) < 0.85 and max(ratios) > 1.15  # both ways, not a fixed factor
    with pytest.raises(ValueError, match="gain_scale"):
        BModeAugment(gain_scale=-0.1)


def test_segmenter_dataset_augments_the_crop_per_epoch_and_keeps_the_target(phantom_dir):
    from bpedge.train.data import scan_dataset
    from bpedge.train.datasets import SegmenterDataset

    from bpedge._preprocessing import ModelInput, segmenter_input

    store = FrameStore(scan_dataset(phantom_dir).positive()[:3])
    boxes = [store.boxes[i] for i in range(3)]
    norm = Normalization(100.0, 50.0)
    plain = SegmenterDataset(store, [0, 1, 2], boxes, (48, 48), norm)
    aug = SegmenterDataset(store, [0, 1, 2], boxes, (48, 48), norm, seed=1,
                           augment=BModeAugment(gain_scale=0.5))
    x_plain, y_plain = plain[1]
    np.testing.assert_array_equal(
        x_plain[0].numpy(), segmenter_input(store.images[1], boxes[1],
                                            ModelInput((48, 48), norm))[0])
    aug.set_epoch(1)
    x1, y1 = aug[1]
    torch.testing.assert_close(aug[1][0], x1)  # the same sample within an epoch
    aug.set_epoch(2)
    x2, y2 = aug[1]
    assert not bool((x1 == x2).all()) and not bool((x1 == x_plain).all())
    for y in (y1, y2):
        torch.testing.assert_close(y, y_plain)  # photometric only: the mask does not move
    # Still z-scored grey levels 0-255: within the normalised range of 0 and 255.
    assert float(x1.min()) >= (0 - 100) / 50 - 1e-5 and float(x1.max()) <= (255 - 100) / 50 + 1e-5
