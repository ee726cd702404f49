"""INT8 TensorRT engines: built from the bundle's symmetric QDQ files (explicit quantisation, strong
typing, no calibrator), refused from the CPU runtimes' U8S8 form (stand-in rule T5), and run by
the TensorRT cascade with the same results as ONNX Runtime on the same file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from bpedge_cuda_standin import Machine, install
from bpedge_cuda_standin.trt import PLAN_MAGIC
from conftest import MAX_BATCH

from bpedge._cascade_spec import CascadeSpec
from bpedge._manifest import MANIFEST_NAME
from bpedge._metrics import dice
from bpedge.bundle import Bundle

pytestmark = pytest.mark.gpu_emulated


def _plan_onnx(plan: bytes) -> tuple[dict, bytes]:
    # The stand-in's plan: magic, a JSON header line, then the ONNX the network was parsed from.
    assert plan.startswith(PLAN_MAGIC)
    header, _, onnx = plan[len(PLAN_MAGIC):].partition(b"\n")
    return json.loads(header), onnx


def test_int8_engines_are_built_from_the_symmetric_files_strongly_typed(int8_engine_bundle):
    bundle = Bundle.open(int8_engine_bundle)
    engines = {e.model: e for e in bundle.manifest.engines if e.key.precision == "int8"}
    assert set(engines) == {"detector", "segmenter"}
    for model, entry in engines.items():
        header, onnx = _plan_onnx(bundle.read_verified(entry.file))
        symmetric = bundle.onnx_ref(model, "int8_symmetric")
        assert onnx == bundle.read_verified(symmetric.file), model
        assert onnx != bundle.read_verified(bundle.onnx_ref(model, "int8").file)
        assert header["strongly_typed"] and not header["tf32"]
        assert entry.math.startswith("int8")


def _with_int8_pointing_at(src, dst, precision: str):
    """A copy of bundle ``src`` at ``dst`` whose ``onnx.int8`` (ONNX Runtime's INT8 file) and
    ``onnx.int8_symmetric`` (TensorRT's) both hold the ``precision`` file's bytes: the other
    entry names a copy of it (every file of a bundle has one role), with the same hash, so the
    bundle still verifies."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST_NAME).read_text())
    other = "int8_symmetric" if precision == "int8" else "int8"
    for name, entry in manifest["models"].items():
        ref = entry["onnx"][precision]
        copy = f"{name}.{precision}.as_{other}.onnx"
        shutil.copyfile(dst / ref["file"], dst / copy)
        entry["onnx"][other] = {**ref, "file": copy}
    for engine in manifest["engines"]:  # unlisted, they would be files bpedge did not write
        (dst / engine["file"]).unlink()
    manifest["engines"] = []
    (dst / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return dst


def test_the_cpu_form_is_refused_by_tensorrt(int8_engine_bundle, tmp_path):
    from bpedge.export.tensorrt_build import EngineBuildError, build_engines

    cpu_form = _with_int8_pointing_at(int8_engine_bundle, tmp_path / "bundle", "int8")
    with install(Machine()) as m, pytest.raises(EngineBuildError, match="symmetric"):
        build_engines(cpu_form, precisions=("int8",), max_batch=MAX_BATCH, progress=False,
                      log=lambda line: None)
    assert m.violations == []
    assert Bundle.open(cpu_form).manifest.engines == ()


def test_the_int8_cascade_matches_onnxruntime_on_the_same_file(machine, int8_engine_bundle,
                                                                 small_frames, tmp_path):
    from bpedge import Segmenter
    from bpedge._gpu.cascade import TensorRTCascade

    # ONNX Runtime running TensorRT's symmetric file: the same arithmetic as the stand-in's engine.
    same_file = _with_int8_pointing_at(int8_engine_bundle, tmp_path / "bundle", "int8_symmetric")
    bundle = Bundle.open(int8_engine_bundle)
    spec = CascadeSpec.from_manifest(bundle.manifest)
    with Segmenter.from_bundle(same_file, backend="onnxruntime", precision="int8") as cpu, \
            TensorRTCascade(bundle, spec, "int8", MAX_BATCH) as gpu:
        for grey in small_frames:
            got, want = gpu.run(grey), cpu(grey)
            np.testing.assert_allclose(got.box, want.box, atol=1.0)
            # The GPU preprocessing and OpenCV agree within float rounding, not bit for bit, and
            # quantisation is a step function: on a detector of this recipe with a presence head
            # (tiny preset), input noise of 1e-6 moved the INT8 score by up to 6.8e-4 (mean
            # 3.3e-4) in ONNX Runtime itself, where the FP32 file moved by 1.2e-7.
            assert got.score == pytest.approx(want.score, abs=2e-3)
            assert got.present == want.present
            if want.present:
                assert dice(got.mask, want.mask) > 0.99
    assert machine.violations == [] and machine.sticky is None


def test_auto_takes_int8_engines_when_asked(machine, int8_engine_bundle, small_frames):
    from bpedge import Segmenter

    with Segmenter.from_bundle(int8_engine_bundle, precision="int8", max_batch=MAX_BATCH) as seg:
        assert (seg.backend, seg.precision) == ("tensorrt", "int8")
        assert seg(small_frames[0]).mask.shape == small_frames[0].shape
    assert machine.violations == []
