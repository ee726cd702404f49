"""Plausible variants of the Kaggle layout that the training reader must read as ``bpedge segment``
reads them: masks of any depth (a NumPy bool mask, 0/65535, float 0/1), frames that hold 8-bit
values in a wider type, planar RGB, RGBA, palette pages, tiles, min-is-white and the TIFF
orientation tag. A model is trained on what ``read_image``/``read_mask`` return and scored on what
segment reads: the two must be equal, pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from bpedge.train.data.kaggle import read_image, read_mask, scan_dataset

from bpedge._cli._segment_outputs import _read_truth
from bpedge.sources import open_frames


def picture() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (40, 60), dtype=np.uint8)


def truth() -> np.ndarray:
    mask = np.zeros((40, 60), np.uint8)
    mask[10:25, 20:45] = 255
    return mask


def segment_reads(path: Path) -> np.ndarray:
    (frame,) = list(open_frames(path))
    return frame.image


@pytest.mark.parametrize("stored", [
    pytest.param(lambda m: m > 0, id="numpy-bool"),  # tifffile: 1-bit min-is-white, True as 1
    pytest.param(lambda m: (m > 0).astype(np.uint8), id="0-1"),
    pytest.param(lambda m: (m > 0).astype(np.uint16) * 65535, id="uint16-0-65535"),
    pytest.param(lambda m: (m > 0).astype(np.float32), id="float32-0-1"),
])
def test_a_mask_of_any_depth_is_its_non_zero_pixels_in_training_and_in_segment(
    tmp_path: Path, stored
) -> None:
    """bool, uint16 and float masks were refused as "not 8-bit"; segment read the bool one inside
    out (every empty mask as all BP)."""
    for key, mask in (("1_1", truth()), ("1_2", np.zeros_like(truth()))):
        tifffile.imwrite(tmp_path / f"{key}.tif", picture(), compression="lzw")
        tifffile.imwrite(tmp_path / f"{key}_mask.tif", stored(mask))
        np.testing.assert_array_equal(read_mask(tmp_path / f"{key}_mask.tif"), mask)
        np.testing.assert_array_equal(_read_truth(tmp_path / f"{key}_mask.tif"), mask)
    index = scan_dataset(tmp_path)
    assert [f.present for f in index.frames] == [True, False]
    assert index.frames[0].box == (20.0, 10.0, 45.0, 25.0)


def test_a_colour_mask_is_bp_wherever_any_colour_is_non_zero_in_segment_too(tmp_path: Path):
    """The grey weights made a red 1 a 0: a 0/1 mask in the red channel was scored as empty."""
    red = np.zeros((*truth().shape, 3), np.uint8)
    red[..., 0] = truth() > 0
    tifffile.imwrite(tmp_path / "1_1_mask.tif", red, photometric="rgb")
    np.testing.assert_array_equal(read_mask(tmp_path / "1_1_mask.tif"), truth())
    np.testing.assert_array_equal(_read_truth(tmp_path / "1_1_mask.tif"), truth())


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_a_frame_holding_8_bit_values_in_a_wider_type_is_read_as_segment_reads_it(
    tmp_path: Path, dtype
) -> None:
    path = tmp_path / "1_1.tif"
    tifffile.imwrite(path, picture().astype(dtype), compression="lzw")
    np.testing.assert_array_equal(read_image(path), picture())
    np.testing.assert_array_equal(read_image(path), segment_reads(path))


def test_a_12_bit_frame_is_refused_with_advice_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "1_1.tif"
    tifffile.imwrite(path, picture().astype(np.uint16) << 4, compression="lzw")
    with pytest.raises(ValueError, match=r"1_1\.tif: .*\[0, 4080\].*convert the frames to 8-bit"):
        read_image(path)


@pytest.mark.parametrize("kind", ["planar-rgb", "min-is-white", "grey-and-alpha", "tiled"])
def test_tiff_layouts_segment_reads_are_read_as_the_same_frame(tmp_path: Path, kind: str):
    """Planar RGB was refused as shape (3, H, W); a min-is-white frame was read inverted, the
    negative of the frame segment scores; segment (OpenCV's imdecode) refused uncompressed tiles."""
    path = tmp_path / "1_1.tif"
    grey = picture()
    if kind == "planar-rgb":
        tifffile.imwrite(path, np.stack([grey, grey, grey]), photometric="rgb",
                         planarconfig="separate", compression="lzw")
    elif kind == "min-is-white":
        tifffile.imwrite(path, 255 - grey, photometric="miniswhite", compression="lzw")
    elif kind == "grey-and-alpha":
        tifffile.imwrite(path, np.dstack([grey, np.full_like(grey, 255)]),
                         photometric="minisblack", extrasamples=[2])
    else:
        tifffile.imwrite(path, grey, tile=(16, 16))
    np.testing.assert_array_equal(read_image(path), grey)
    np.testing.assert_array_equal(read_image(path), segment_reads(path))


def _colour_lookup_table(bits: int) -> np.ndarray:
    i = np.arange(256, dtype=np.uint16)
    return (np.stack([255 - i, i, (i * 7) % 256]) << (bits - 8)).astype(np.uint16)


@pytest.mark.parametrize("bits", [16, 8], ids=["16-bit-colormap", "8-bit-colormap"])
def test_a_palette_frame_is_the_colours_its_indices_pick_as_segment_reads_it(
    tmp_path: Path, bits: int
) -> None:
    """ImageJ saves a frame shown with a lookup table as a palette TIFF: training read the
    indices as grey levels, segment (OpenCV) the colours they pick, two different pictures."""
    path = tmp_path / "1_1.tif"
    tifffile.imwrite(path, picture(), photometric="palette", colormap=_colour_lookup_table(bits))
    assert not np.array_equal(read_image(path), picture())
    # Exactly: segment's IMREAD_GRAYSCALE rounded the colours to grey its own way, one grey
    # level off the frame rule's cv2.cvtColor in 7 of these 2400 pixels.
    np.testing.assert_array_equal(read_image(path), segment_reads(path))
    lut = _colour_lookup_table(bits) >> (bits - 8)
    bgr = np.ascontiguousarray(np.moveaxis(lut[::-1, picture()], 0, -1).astype(np.uint8))
    np.testing.assert_array_equal(read_image(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_a_colour_frame_is_grey_by_the_frame_rule_in_training_and_in_segment(tmp_path: Path):
    """Segment read colour stills with IMREAD_GRAYSCALE, whose rounding differs from the
    cv2.cvtColor a colour frame passed as an array (or a video frame) goes through: 162 of these
    60000 pixels were one grey level apart between training and segment."""
    rgb = np.random.default_rng(7).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    want = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    tifffile.imwrite(tmp_path / "1_1.tif", rgb, photometric="rgb", compression="lzw")
    cv2.imwrite(str(tmp_path / "2_1.png"), rgb[:, :, ::-1])
    for name in ("1_1.tif", "2_1.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name), want)
        np.testing.assert_array_equal(segment_reads(tmp_path / name), want)


def test_an_rgba_frame_and_mask_are_their_colours_with_alpha_ignored(tmp_path: Path) -> None:
    """libtiff (segment's OpenCV) multiplies colour by an unassociated alpha: the frame read
    darker where it is see-through, and the mask lost its labels where alpha is 0."""
    grey, alpha = picture(), np.random.default_rng(9).integers(0, 256, (40, 60), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "1_1.tif", np.dstack([grey, grey, grey, alpha]),
                     photometric="rgb", extrasamples=[2])
    tifffile.imwrite(tmp_path / "1_1_mask.tif", np.dstack([truth(), truth(), truth(), alpha]),
                     photometric="rgb", extrasamples=[2])
    np.testing.assert_array_equal(read_image(tmp_path / "1_1.tif"), grey)
    np.testing.assert_array_equal(segment_reads(tmp_path / "1_1.tif"), grey)
    np.testing.assert_array_equal(read_mask(tmp_path / "1_1_mask.tif"), truth())
    np.testing.assert_array_equal(_read_truth(tmp_path / "1_1_mask.tif"), truth())


@pytest.mark.parametrize("index_0_shows", ["white", "black"])
def test_a_palette_mask_is_its_non_zero_indices_in_training_and_in_segment(
    tmp_path: Path, index_0_shows: str
) -> None:
    """A label image's labels are its indices, the palette only how it is shown: segment read
    the colours, so a mask whose index 0 is shown white was all BP, and training the indices."""
    shade = np.arange(256, dtype=np.uint16) * 257
    if index_0_shows == "white":
        shade = shade[::-1]  # an inverted lookup table: index 0 white, index 255 black
    path = tmp_path / "1_1_mask.tif"
    tifffile.imwrite(path, truth(), photometric="palette", colormap=np.stack([shade] * 3))
    np.testing.assert_array_equal(read_mask(path), truth())
    np.testing.assert_array_equal(_read_truth(path), truth())


def test_a_cmyk_frame_is_converted_by_opencv_for_training_too(tmp_path: Path) -> None:
    """tifffile returns CMYK samples unconverted (training read them as RGBA); OpenCV converts."""
    path = tmp_path / "1_1.tif"
    cmyk = np.random.default_rng(3).integers(0, 256, (40, 60, 4), dtype=np.uint8)
    tifffile.imwrite(path, cmyk, photometric="separated")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    np.testing.assert_array_equal(segment_reads(path), read_image(path))


@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
def test_a_1_bit_frame_is_read_as_segment_reads_it(tmp_path: Path, photometric: str) -> None:
    """Segment reads a 1-bit frame as 0 and 255; training refused it as a frame of dtype bool."""
    path = tmp_path / "1_1.tif"
    tifffile.imwrite(path, picture() > 128, photometric=photometric)
    np.testing.assert_array_equal(read_image(path), segment_reads(path))
    assert set(np.unique(read_image(path))) == {0, 255}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_tiff_orientation_tag_turns_frame_and_mask_as_segment_turns_them(
    tmp_path: Path, orientation: int
) -> None:
    """OpenCV applies the tag and tifffile does not: a frame tagged "rotated 90" was 40x60 in
    training and 60x40 in segment."""
    tag = [(274, 3, 1, orientation, True)]
    colour = np.dstack([picture(), picture() // 2, picture() // 3])
    tifffile.imwrite(tmp_path / "1_1.tif", colour, photometric="rgb", extratags=tag)
    tifffile.imwrite(tmp_path / "1_1_mask.tif", truth(), extratags=tag)
    image = read_image(tmp_path / "1_1.tif")
    assert image.shape == ((40, 60) if orientation <= 4 else (60, 40))
    np.testing.assert_array_equal(image, segment_reads(tmp_path / "1_1.tif"))
    np.testing.assert_array_equal(read_mask(tmp_path / "1_1_mask.tif"),
                                  _read_truth(tmp_path / "1_1_mask.tif"))
    assert scan_dataset(tmp_path).frames[0].present
