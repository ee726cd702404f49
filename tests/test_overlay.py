"""Overlay pictures: outlines and box drawn where the masks and box are, in their colours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bpedge._overlay import (
    BOX_PRESENT_BGR,
    PREDICTION_BGR,
    TRUTH_BGR,
    draw_overlay,
    write_png,
)


def _square(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((100, 120), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def _has_colour(region: np.ndarray, bgr: tuple[int, int, int]) -> bool:
    return bool(np.all(region == np.array(bgr, np.uint8), axis=-1).any())


def test_outlines_and_box_land_where_they_belong(tmp_path):
    frame = np.full((100, 120), 40, np.uint8)
    truth, pred = _square(10, 10, 40, 40), _square(70, 50, 100, 90)
    img = draw_overlay(frame, pred, truth, (60.0, 45.0, 110.0, 95.0), present=True)
    assert img.shape == (100, 120, 3) and img.dtype == np.uint8
    assert _has_colour(img[5:45, 5:45], TRUTH_BGR) and not _has_colour(img[5:45, 5:45], PREDICTION_BGR)
    assert _has_colour(img[47:93, 67:103], PREDICTION_BGR)
    assert _has_colour(img[44:47, 58:112], BOX_PRESENT_BGR)
    # Inside the truth square, away from its outline, the frame is untouched.
    assert (img[20:30, 20:30] == 40).all()
    write_png(tmp_path / "o.png", img)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o.png")), img)


@pytest.mark.parametrize("label", ["4_22 score 1.00 Dice 0.86", "subject 12 frame 104 score 0.97"])
def test_label_halo_stays_with_the_label(label):
    """The label's dark halo covers the same columns as the light text (give or take the halo's
    pixel): under OpenCV 5 a thickness-3 halo ran tens of pixels past the text's end."""
    img = draw_overlay(np.full((420, 580), 128, np.uint8), label=label)
    grey = img[:40].max(axis=2).astype(int)
    light = np.nonzero((grey > 200).any(axis=0))[0]
    dark = np.nonzero((grey < 50).any(axis=0))[0]
    assert light.size and dark.size
    assert abs(int(dark.max()) - int(light.max())) <= 2 and abs(int(dark.min()) - int(light.min())) <= 2


def test_shapes_are_checked():
    frame = np.zeros((100, 120), np.uint8)
    with pytest.raises(ValueError, match="prediction mask shape"):
        draw_overlay(frame, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(frame.astype(np.float32))


def test_argument_types_are_checked_with_their_names():
    frame = np.zeros((100, 120), np.uint8)
    with pytest.raises(TypeError, match="truth must be an"):
        draw_overlay(frame, truth=np.zeros((100, 120), np.uint8).tolist())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="label must be a str"):
        draw_overlay(frame, label=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frame must be"):
        draw_overlay(frame.tolist())  # type: ignore[arg-type]
