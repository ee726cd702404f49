"""Training datasets: inputs are exactly the shared stages' output; augmentation is seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bpedge.train.data import read_image, read_mask, scan_dataset
from bpedge.train.datasets import (
    DetectorDataset,
    FrameStore,
    Normalization,
    SegmenterDataset,
    fit_normalization,
    full_frame_box,
)

from bpedge._stages import crop_resize, crop_resize_normalize, scale_box

NORM = Normalization(mean=100.0, std=50.0)


@pytest.fixture(scope="module")
def store(phantom_dir: Path) -> FrameStore:
    return FrameStore(scan_dataset(phantom_dir).positive()[:6])


def test_store_keeps_frames_and_masks_exactly(phantom_dir: Path, store: FrameStore) -> None:
    frames = scan_dataset(phantom_dir).positive()[:6]
    assert store.keys == tuple(f.key for f in frames)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(store.images[i], read_image(f.image_path))
        np.testing.assert_array_equal(store.mask(i), read_mask(f.mask_path))
    assert store.frame_hw() == (420, 580)


def test_detector_samples_are_the_reference_resize(store: FrameStore) -> None:
    ds = DetectorDataset(store, [0, 1], (160, 224), NORM)
    x, box, _ = ds[1]
    expected = crop_resize_normalize(store.images[1], (0, 0, 580, 420), 224, 160, 100.0, 50.0)
    assert x.shape == (1, 160, 224) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[0].numpy(), expected)
    np.testing.assert_allclose(box.numpy(), scale_box(store.boxes[1], 224 / 580, 160 / 420),
                               rtol=1e-6)


def test_segmenter_samples_are_the_reference_crop(store: FrameStore) -> None:
    box = store.boxes[2]
    ds = SegmenterDataset(store, [2], [box], (96, 96), NORM)
    x, y = ds[0]
    np.testing.assert_array_equal(
        x[0].numpy(), crop_resize_normalize(store.images[2], box, 96, 96, 100.0, 50.0)
    )
    target = (crop_resize(store.mask(2), box, 96, 96) > 127.5).astype(np.float32)
    np.testing.assert_array_equal(y[0].numpy(), target)
    assert 0 < float(y.mean()) < 1


def test_flips_are_seeded_per_epoch_and_move_the_box_too(store: FrameStore) -> None:
    idx = list(range(6))
    a = DetectorDataset(store, idx, (160, 224), NORM, hflip=True, seed=3)
    b = DetectorDataset(store, idx, (160, 224), NORM, hflip=True, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    flips1 = [not torch.equal(a[k][0], DetectorDataset(store, idx, (160, 224), NORM)[k][0])
              for k in idx]
    assert [torch.equal(a[k][0], b[k][0]) for k in idx] == [True] * 6
    a.set_epoch(2)
    flips2 = [not torch.equal(a[k][0], DetectorDataset(store, idx, (160, 224), NORM)[k][0])
              for k in idx]
    assert flips1 != flips2  # another epoch, other draws (6 coin flips, this seed differs)
    k = flips2.index(True)
    plain_x, plain_box, _ = DetectorDataset(store, idx, (160, 224), NORM)[k]
    x, box, _ = a[k]
    torch.testing.assert_close(x, plain_x.flip(-1))
    expected = torch.tensor([224 - plain_box[2], plain_box[1], 224 - plain_box[0], plain_box[3]])
    torch.testing.assert_close(box, expected)


def test_box_jitter_stays_near_the_box_and_inside_the_frame(store: FrameStore) -> None:
    boxes = [store.boxes[i] for i in range(6)]
    ds = SegmenterDataset(store, list(range(6)), boxes, (96, 96), NORM, jitter=0.2, seed=0)
    ds.set_epoch(1)
    moved = 0
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        j = ds.box(k)
        w, h = x1 - x0, y1 - y0
        assert abs(j[0] - x0) <= 0.2 * w + 1e-9 and abs(j[2] - x1) <= 0.2 * w + 1e-9
        assert abs(j[1] - y0) <= 0.2 * h + 1e-9 and abs(j[3] - y1) <= 0.2 * h + 1e-9
        assert 0 <= j[0] < j[2] <= 580 and 0 <= j[1] < j[3] <= 420
        moved += j != (x0, y0, x1, y1)
    assert moved == 6
    with pytest.raises(ValueError, match="jitter"):
        SegmenterDataset(store, [0], boxes[:1], (96, 96), NORM, jitter=0.6)


def test_fit_normalization_is_the_mean_and_std_of_the_inputs(store: FrameStore) -> None:
    boxes = [full_frame_box(store.hw(i)) for i in (0, 3)]
    norm = fit_normalization(store, [0, 3], boxes, (40, 56))
    px = np.stack([crop_resize(store.images[i], b, 56, 40) for i, b in zip((0, 3), boxes)])
    assert norm.mean == pytest.approx(float(px.astype(np.float64).mean()), rel=1e-9)
    assert norm.std == pytest.approx(float(px.astype(np.float64).std()), rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        fit_normalization(store, [], [], (40, 56))


def test_empty_frames_are_drawn_per_epoch_as_negatives(phantom_dir: Path) -> None:
    frames = scan_dataset(phantom_dir).frames
    positives = [f for f in frames if f.present][:4]
    empties = [f for f in frames if not f.present][:5]
    assert len(empties) == 5, "the test phantom needs empty frames"
    store = FrameStore(positives + empties)
    pos_idx, empty_idx = [0, 1, 2, 3], [4, 5, 6, 7, 8]
    ds = DetectorDataset(store, pos_idx, (160, 224), NORM, hflip=True, seed=2,
                         empties=empty_idx, empties_per_epoch=2)
    assert len(ds) == 6
    drawn = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        drawn.append(tuple(ds._drawn))
        for k in (4, 5):
            _, box, present = ds[k]
            assert float(present) == 0.0 and box.tolist() == [0.0, 0.0, 0.0, 0.0]
        _, box, present = ds[0]
        assert float(present) == 1.0 and float(box[2]) > float(box[0])
    assert len(set(drawn)) > 1  # a fresh draw each epoch
    assert {i for d in drawn for i in d} <= set(empty_idx)
    twin = DetectorDataset(store, pos_idx, (160, 224), NORM, hflip=True, seed=2,
                           empties=empty_idx, empties_per_epoch=2)
    twin.set_epoch(5)
    assert torch.equal(twin[5][0], ds[5][0])  # seeded: the same frame, flip and all


def test_a_frame_with_a_mask_is_not_taken_as_empty(phantom_dir: Path, store: FrameStore) -> None:
    with pytest.raises(ValueError, match="have a BP mask"):
        DetectorDataset(store, [0], (160, 224), NORM, empties=[1], empties_per_epoch=1)
