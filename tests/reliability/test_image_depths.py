"""Still images that are not 8-bit: a 16-bit PNG or TIFF, a float TIFF. OpenCV's
``IMREAD_GRAYSCALE`` shifts 16-bit samples right by 8 bits without a word, so a 16-bit file holding
8-bit values was segmented as an all-black frame (and a full-range one was scaled, which the frame
rule refuses). Every still goes through the frame rule of :func:`bpedge._frames.as_grey_frame`
with the values the file holds: the frame segmented is the frame in the file, or it is refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from bpedge.sources import open_frames


def picture() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 238, (48, 64), dtype=np.uint8)


def only_frame(path: Path) -> np.ndarray:
    frames = list(open_frames(path))
    assert len(frames) == 1
    return frames[0].image


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_image_holding_8_bit_values_is_read_as_those_values(tmp_path: Path, suffix: str):
    path = tmp_path / f"scan{suffix}"
    cv2.imwrite(str(path), picture().astype(np.uint16))
    image = only_frame(path)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, picture())  # was all zeros: 237 >> 8 == 0


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_full_range_16_bit_image_is_refused_not_rescaled(tmp_path: Path, suffix: str):
    path = tmp_path / f"scan{suffix}"
    cv2.imwrite(str(path), picture().astype(np.uint16) * 257)
    with pytest.raises(ValueError, match=r"scan.*\[0, 255\]"):
        only_frame(path)


def test_a_float_tiff_in_8_bit_units_is_read_and_a_normalised_one_refused(tmp_path: Path):
    units = tmp_path / "units.tif"
    tifffile.imwrite(units, picture().astype(np.float32))
    np.testing.assert_array_equal(only_frame(units), picture())
    normalised = tmp_path / "normalised.tif"
    tifffile.imwrite(normalised, picture().astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"normalised\.tif.*\[0, 1\]"):
        only_frame(normalised)


def test_a_colour_png_with_an_alpha_channel_is_still_read_as_grey(tmp_path: Path):
    path = tmp_path / "rgba.png"
    bgra = cv2.cvtColor(picture(), cv2.COLOR_GRAY2BGRA)
    bgra[..., 3] = 0  # fully transparent: the grey values are still the picture
    cv2.imwrite(str(path), bgra)
    np.testing.assert_array_equal(only_frame(path), picture())


def test_a_16_bit_ground_truth_mask_is_scored_as_the_mask_it_holds(tiny_bundle: Path,
                                                                  tmp_path: Path):
    """A 16-bit mask of 0/255 was read as all zeros: its frame counted as "no BP", Dice 0."""
    from typer.testing import CliRunner

    from bpedge._cli.app import build_app

    data = tmp_path / "data"
    data.mkdir()
    scan = np.random.default_rng(4).integers(0, 238, (120, 160), dtype=np.uint8)
    truth = np.zeros_like(scan)
    truth[40:80, 50:110] = 255
    for stem, mask in (("a", truth.astype(np.uint16)), ("b", truth)):
        tifffile.imwrite(data / f"{stem}.tif", scan)
        tifffile.imwrite(data / f"{stem}_mask.tif", mask)
    out = tmp_path / "out"
    result = CliRunner().invoke(build_app(), ["segment", str(tiny_bundle), str(data), "--out",
                                              str(out), "--backend", "onnxruntime",
                                              "--no-progress", "--no-overlays"])
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in (out / "accuracy.csv").read_text().splitlines()[1:]]
    assert [r[0].endswith(f"{s}.tif") for r, s in zip(rows, "ab")] == [True, True]
    assert rows[0][2:] == rows[1][2:]  # the same truth, the same scores
    assert rows[0][2] == "1"  # truth_present
