"""The GPU cascade on a real GPU against the ONNX Runtime CPU cascade, frame by frame.

Marked ``gpu``: they need an NVIDIA GPU with TensorRT and cuda-python, and skip elsewhere. They
build engines for a copy of the session's tiny bundle (``tiny_bundle`` in tests/conftest.py).
None of them has run: no machine of this project has a GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bpedge._cascade_spec import CascadeSpec
from bpedge._metrics import dice

# Skipped by tests/gpu/conftest.py, with the reason, where TensorRT or a GPU is missing.
pytestmark = pytest.mark.gpu

MAX_BATCH = 4


@pytest.fixture(scope="module")
def gpu_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny bundle with FP32 and FP16 engines built for this GPU."""
    from bpedge.export.tensorrt_build import build_engines

    from bpedge.bundle import Bundle

    out = tmp_path_factory.mktemp("gpu_bundle") / "bundle"
    shutil.copytree(tiny_bundle, out)
    build_engines(out, precisions=("fp32", "fp16"), max_batch=MAX_BATCH, progress=False,
                  log=lambda line: None)
    return Bundle.open(out)


@pytest.fixture(scope="module")
def greys(phantom_dir: Path) -> list[np.ndarray]:
    import cv2

    files = sorted(p for p in phantom_dir.glob("*.tif") if not p.stem.endswith("_mask"))[:10]
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
    assert all(f is not None and f.dtype == np.uint8 for f in frames)
    return frames


def _cascade(bundle, precision: str, **kw):
    from bpedge._gpu.cascade import TensorRTCascade

    return TensorRTCascade(bundle, CascadeSpec.from_manifest(bundle.manifest), precision,
                           MAX_BATCH, **kw)


def _same_result(a, b) -> None:
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.box == b.box and a.score == b.score and a.present == b.present


def _close_result(a, b) -> None:
    """FP16 results of different batch sizes: TensorRT may pick other kernels per batch size
    within one dynamic profile, so they agree closely, not bit for bit."""
    np.testing.assert_allclose(a.box, b.box, atol=1.0)
    assert a.score == pytest.approx(b.score, abs=1e-2)
    if a.present and b.present:
        assert dice(a.mask, b.mask) > 0.98


@pytest.mark.parametrize("precision, min_dice", [("fp32", 0.99), ("fp16", 0.98)])
def test_gpu_matches_the_cpu_cascade_frame_by_frame(gpu_bundle, greys, precision, min_dice):
    from bpedge import Segmenter

    cpu = Segmenter.from_bundle(gpu_bundle, backend="onnxruntime", precision=precision)
    spec = CascadeSpec.from_manifest(gpu_bundle.manifest)
    with cpu, _cascade(gpu_bundle, precision) as gpu:
        for grey in greys:
            want, got = cpu(grey), gpu.run(grey)
            np.testing.assert_allclose(got.box, want.box, atol=1.0)
            assert got.score == pytest.approx(want.score, abs=1e-2 if precision == "fp16" else 1e-4)
            if abs(want.score - spec.score_threshold) > 1e-2:
                assert got.present == want.present
            if want.present and got.present:
                assert dice(got.mask, want.mask) > min_dice
            for stage in ("upload", "preprocess", "detector", "crop", "segmenter", "paste",
                          "download", "total"):
                assert got.timings[stage] >= 0.0


def test_graphs_replay_the_same_results_as_direct_enqueues(gpu_bundle, greys):
    with _cascade(gpu_bundle, "fp16", use_graphs=False) as direct, \
            _cascade(gpu_bundle, "fp16") as graphed:
        for grey in greys[:4] * 2:
            _same_result(graphed.run(grey), direct.run(grey))
        assert graphed._slots[0].graphs.graphs() >= 1, "a steady frame size should be captured"


def test_stream_keeps_order_across_frame_sizes(gpu_bundle, greys):
    import cv2

    frames = []
    for i, grey in enumerate(greys):
        frames.append(grey if i % 3 else cv2.resize(grey, (320, 240)))
    with _cascade(gpu_bundle, "fp16") as gpu:
        one_by_one = [gpu.run(f) for f in frames]
        streamed = list(gpu.stream(iter(frames), depth=3))
        batched = gpu.run_batch(frames)
    assert len(streamed) == len(batched) == len(frames)
    for a, b, c in zip(one_by_one, streamed, batched):
        _same_result(a, b)
        _close_result(a, c)  # fp16 at batch 1 vs batch up to MAX_BATCH


def test_run_device_takes_a_torch_cuda_tensor_without_a_host_copy(gpu_bundle, greys):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    grey = greys[0]
    with _cascade(gpu_bundle, "fp16") as gpu:
        want = gpu.run(grey)
        tensor = torch.from_numpy(grey).cuda()
        _same_result(gpu.run_device(tensor), want)
        padded = torch.zeros((grey.shape[0], grey.shape[1] + 64), dtype=torch.uint8, device="cuda")
        padded[:, : grey.shape[1]] = tensor
        _same_result(gpu.run_device(padded[:, : grey.shape[1]]), want)  # row pitch > width


def test_close_releases_the_gpu_memory_and_is_idempotent(gpu_bundle, greys):
    from bpedge._gpu._cuda import memory_info, use_device

    use_device(0)
    free_before, _ = memory_info()
    gpu = _cascade(gpu_bundle, "fp16", depth=3)
    list(gpu.stream(iter(greys), depth=3))
    free_during, _ = memory_info()
    gpu.close()
    gpu.close()
    free_after, _ = memory_info()
    assert free_during < free_before
    # Allocator caching in the driver may keep a little: allow 16 MiB.
    assert free_after >= free_before - (16 << 20)
    with pytest.raises(RuntimeError, match="closed"):
        gpu.run(greys[0])


def test_a_crop_margin_bundle_matches_the_cpu_cascade(gpu_bundle, greys, tmp_path):
    """The same engines under a manifest whose segmenter crops the detector box grown by 0.2:
    the GPU crops, pastes into and reports the CPU cascade's crop box, which is the GPU's own
    margin-free box grown as _preprocessing.crop_box grows it."""
    import json

    from bpedge import Segmenter
    from bpedge._manifest import MANIFEST_NAME
    from bpedge._preprocessing import crop_box
    from bpedge.bundle import Bundle

    out = tmp_path / "bundle"
    shutil.copytree(gpu_bundle.root, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["preprocessing"]["segmenter"]["crop_margin"] = 0.2
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    bundle = Bundle.open(out)
    spec = CascadeSpec.from_manifest(bundle.manifest)
    assert spec.crop_margin == 0.2
    cpu = Segmenter.from_bundle(out, backend="onnxruntime", precision="fp32")
    with cpu, _cascade(bundle, "fp32") as gpu, _cascade(gpu_bundle, "fp32") as plain:
        for grey in greys:
            want, got, unexpanded = cpu(grey), gpu.run(grey), plain.run(grey)
            np.testing.assert_allclose(got.box, want.box, atol=1.0)  # as the fp32 test above
            if unexpanded.present:  # the same engine, so the same detector box
                np.testing.assert_allclose(
                    got.box, crop_box("detector", grey.shape, 0.2, detected=unexpanded.box),
                    atol=1e-3)
            assert got.score == pytest.approx(want.score, abs=1e-4)
            if want.present and got.present:
                assert dice(got.mask, want.mask) > 0.99


@pytest.fixture(scope="module")
def int8_gpu_bundle(open_gate_int8_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the session's ``--int8`` export (gate opened, tests/conftest.py) with INT8
    engines built for this GPU from the symmetric QDQ files."""
    from bpedge.export.tensorrt_build import build_engines

    from bpedge.bundle import Bundle

    out = tmp_path_factory.mktemp("int8_gpu_bundle") / "bundle"
    shutil.copytree(open_gate_int8_bundle, out)
    build_engines(out, precisions=("int8",), max_batch=MAX_BATCH, progress=False,
                  log=lambda line: None)
    return Bundle.open(out)


def test_int8_engines_agree_with_onnxruntime_on_the_same_symmetric_files(int8_gpu_bundle, greys,
                                                                          tmp_path):
    # Real TensorRT parses the symmetric QDQ files (explicit quantisation, strongly typed) and its
    # INT8 results stay close to ONNX Runtime's on the same files: INT8 kernels round differently,
    # so the bound is looser than FP32's.
    import json

    from bpedge import Segmenter
    from bpedge._manifest import MANIFEST_NAME

    same_file = tmp_path / "bundle"
    shutil.copytree(int8_gpu_bundle.root, same_file)
    manifest = json.loads((same_file / MANIFEST_NAME).read_text())
    for entry in manifest["models"].values():
        entry["onnx"]["int8"] = entry["onnx"]["int8_symmetric"]
    manifest["engines"] = []
    (same_file / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    with Segmenter.from_bundle(same_file, backend="onnxruntime", precision="int8") as cpu, \
            _cascade(int8_gpu_bundle, "int8") as gpu:
        dices = []
        for grey in greys:
            got, want = gpu.run(grey), cpu(grey)
            if got.present and want.present:
                dices.append(dice(got.mask, want.mask))
    assert dices and float(np.mean(dices)) > 0.95, dices
