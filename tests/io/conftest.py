"""DICOM files the tests write themselves with pydicom: ultrasound-like frames in the photometric
interpretations and transfer syntaxes carts send."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def picture(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """An RGB uint8 (H, W, 3) picture with smooth colour gradients and a bright blob."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    b = ((x + y) * 127 // max(h + w - 2, 1)).astype(np.uint8)
    rgb = np.stack([r, g, b], axis=2)
    rgb[h // 3: h // 2, w // 3: w // 2] = rng.integers(200, 255, 3, dtype=np.uint8)
    return rgb


def write_dicom(path: Path, frames: np.ndarray, photometric: str, *, syntax: str = "explicit",
                regions: list[dict] | None = None, pixel_spacing: tuple[float, float] | None = None,
                frame_time_ms: float | None = None) -> Path:
    """Write an ultrasound DICOM file.

    ``frames``: uint8 (N, H, W) grey or (N, H, W, 3) RGB. ``photometric``: MONOCHROME2, RGB,
    YBR_FULL or YBR_FULL_422 (colour converted by pydicom). ``syntax``: explicit (native), rle
    (pydicom's own RLE encoder) or jpeg (JPEG Baseline bytes from OpenCV, encapsulated).
    """
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        RLELossless,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    n, h, w = frames.shape[:3]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    colour = frames.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if n > 1:
        ds.NumberOfFrames = n
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if regions:
        items = []
        for r in regions:
            item = Dataset()
            for key, value in r.items():
                setattr(item, key, value)
            items.append(item)
        ds.SequenceOfUltrasoundRegions = items

    if syntax == "jpeg":
        fragments = []
        for f in frames:
            image = cv2.cvtColor(f, cv2.COLOR_RGB2BGR) if colour else f
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            fragments.append(data.tobytes())
        ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    else:
        data = frames if n > 1 else frames[0]
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            data = convert_color_space(data, "RGB", "YBR_FULL")
        if photometric == "YBR_FULL_422":
            raw = _subsample_422(data.reshape(n, h, w, 3))
        else:
            raw = np.ascontiguousarray(data).tobytes()
        ds.PhotometricInterpretation = photometric
        ds.PixelData = raw
        ds["PixelData"].VR = "OB"
        if syntax == "rle":
            ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path


def _subsample_422(ybr: np.ndarray) -> bytes:
    """Native YBR_FULL_422 byte order (PS3.5 8.2.1): per horizontal pixel pair Y1 Y2 Cb Cr."""
    y = ybr[..., 0]
    cb = ybr[..., 1].astype(np.uint16)
    cr = ybr[..., 2].astype(np.uint16)
    cb2 = ((cb[..., 0::2] + cb[..., 1::2] + 1) // 2).astype(np.uint8)
    cr2 = ((cr[..., 0::2] + cr[..., 1::2] + 1) // 2).astype(np.uint8)
    out = np.stack([y[..., 0::2], y[..., 1::2], cb2, cr2], axis=-1)
    return np.ascontiguousarray(out).tobytes()


import pytest


@pytest.fixture(scope="session")
def dicom_writer():
    """``(write_dicom, picture)``: the helpers above, for tests in this folder."""
    pytest.importorskip("pydicom", reason="the [dicom] extra is not installed")
    return write_dicom, picture
