"""Fixtures for the ``gpu_emulated`` tests: the TensorRT cascade on the CPU, through the
rule-checking stand-in for ``cuda.bindings`` and ``tensorrt`` in ``bpedge_cuda_standin/`` (test
code, never part of the bpedge package). The stand-in is in ``sys.modules`` only inside the
``machine`` fixture (and while the session's engines are built), so no other test sees it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the stand-in package lives beside this file

from bpedge_cuda_standin import Machine, install

#: Engines' largest batch, and the frame size of the emulated runs: the kernels' host emulation
#: runs a thread per CUDA thread, so frames are a quarter of the Kaggle size to keep it quick.
MAX_BATCH = 4
FRAME_HW = (105, 145)


@pytest.fixture
def machine() -> Iterator[Machine]:
    """A fresh stand-in GPU machine (two devices), installed for this test only; every rule
    broken is listed in ``machine.violations`` (the cascade tests assert it stays empty)."""
    with install(Machine()) as m:
        yield m


@pytest.fixture(scope="session")
def emulated_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny bundle with fp32 and fp16 engines built by ``build_engines`` against
    the stand-in (batch 1 .. MAX_BATCH)."""
    from bpedge.export.tensorrt_build import build_engines

    out = tmp_path_factory.mktemp("emulated_bundle") / "bundle"
    shutil.copytree(tiny_bundle, out)
    with install(Machine()):
        build_engines(out, precisions=("fp32", "fp16"), max_batch=MAX_BATCH, progress=False,
                      log=lambda line: None)
    return out


@pytest.fixture(scope="session")
def small_frames(phantom_dir: Path) -> list[np.ndarray]:
    """Eight phantom frames (with and without BP), resized to FRAME_HW."""
    import cv2

    files = sorted(p for p in phantom_dir.glob("*.tif") if not p.stem.endswith("_mask"))[:8]
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
    h, w = FRAME_HW
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]


#: The crop margin of :func:`margin_bundle` (issue 14 trains with margins of this order).
#: Not the tiny preset's margin, so the margin bundle crops differently from the base bundle.
CROP_MARGIN = 0.3


@pytest.fixture(scope="session")
def margin_bundle(emulated_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`emulated_bundle` (same models and engines) whose manifest says the segmenter crops
    the detector box grown by ``CROP_MARGIN``. Only ``manifest.json`` changes: the model files and
    their sha256 entries are untouched, so the bundle still verifies."""
    import json

    from bpedge._manifest import MANIFEST_NAME

    out = tmp_path_factory.mktemp("margin_bundle") / "bundle"
    shutil.copytree(emulated_bundle, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["preprocessing"]["segmenter"].get("crop_margin", 0.0) != CROP_MARGIN
    manifest["preprocessing"]["segmenter"]["crop_margin"] = CROP_MARGIN
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def int8_engine_bundle(open_gate_int8_bundle: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's ``--int8`` export (gate opened, tests/conftest.py) with INT8
    engines built by ``build_engines -p int8`` against the stand-in."""
    from bpedge.export.tensorrt_build import build_engines

    out = tmp_path_factory.mktemp("int8_engine_bundle") / "bundle"
    shutil.copytree(open_gate_int8_bundle, out)
    with install(Machine()):
        build_engines(out, precisions=("int8",), max_batch=MAX_BATCH, progress=False,
                      log=lambda line: None)
    return out
