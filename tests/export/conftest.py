"""Fixtures of the export tests. The trained checkpoints (``tiny_checkpoints``) and the bundle
exported from them once per session (``tiny_bundle``) live in ``tests/conftest.py``, so the
runtime tests use the same bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpedge.bundle import Bundle


@pytest.fixture(scope="session")
def bundle(tiny_bundle: Path) -> Bundle:
    """The session bundle, opened (manifest validated, hashes checked)."""
    return Bundle.open(tiny_bundle)


@pytest.fixture(scope="session")
def detector_crop_segmenter(tiny_checkpoints: tuple[Path, Path],
                            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny U-Net's checkpoint re-saved as if it had been trained on detector crops, so an
    export takes the ``crop_mode == "detector"`` path without training another model."""
    from bpedge.train.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(tiny_checkpoints[1])
    payload["crop_mode"] = "detector"
    path = tmp_path_factory.mktemp("variant") / "unet_detector_crops.pt"
    save_checkpoint(path, {k: v for k, v in payload.items()
                           if k not in ("format", "format_version")})
    return path

