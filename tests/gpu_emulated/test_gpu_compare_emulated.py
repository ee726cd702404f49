"""benchmarks/gpu_compare.py (step 5 of gpu_check.sh) run through the stand-in, so the first GPU
run does not fail on the script itself: it must pass on a correct cascade and write its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu_emulated

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_compare.py"


def test_gpu_compare_passes_on_the_emulated_cascade(machine, emulated_bundle, small_frames,
                                                    tmp_path):
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, grey in enumerate(small_frames[:4]):
        assert cv2.imwrite(str(frames / f"9_{i}.tif"), grey)
    spec = importlib.util.spec_from_file_location("gpu_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "compare.json"
    assert module.main([str(emulated_bundle), str(frames), str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] is True
    for precision in ("fp32", "fp16"):
        assert report[precision]["vs_onnxruntime"]["frames"] == 4
        assert report[precision]["consistency"]["graphs_captured"] >= 1
    assert machine.violations == []
