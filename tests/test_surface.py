"""HD95 on shapes whose boundary distances are known."""

from __future__ import annotations

import numpy as np
import pytest

from bpedge._surface import hd95


def _square(x0: int, y0: int, side: int, shape=(60, 80)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[y0:y0 + side, x0:x0 + side] = 255
    return m


def test_identical_masks_are_zero_apart():
    assert hd95(_square(10, 10, 20), _square(10, 10, 20)) == 0.0


def test_shifted_square_is_its_shift_apart():
    # Every boundary pixel of one square is at most 3 px (along x) from the other's boundary,
    # and the left/right edges, a large share of the boundary, are exactly 3 px away.
    assert hd95(_square(10, 10, 20), _square(13, 10, 20)) == pytest.approx(3.0)


def test_symmetric_and_uses_the_larger_direction():
    small, large = _square(20, 20, 4), _square(10, 10, 24)
    assert hd95(small, large) == hd95(large, small)
    assert hd95(small, large) > 9  # the large square's far edges are ~10-16 px from the small one


def test_empty_cases():
    empty = np.zeros((60, 80), np.uint8)
    assert hd95(empty, empty) == 0.0
    assert hd95(_square(1, 1, 5), empty) is None and hd95(empty, _square(1, 1, 5)) is None
    with pytest.raises(ValueError, match="same shape"):
        hd95(empty, empty[:10])
