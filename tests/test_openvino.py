"""The OpenVINO backend against ONNX Runtime on the session bundle (skipped without openvino)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bpedge.train.data import read_image, scan_dataset

from bpedge import Segmenter
from bpedge._metrics import box_iou, dice

pytest.importorskip("openvino", reason="OpenVINO is not installed here: .ci/openvino-tests runs these "
                    "in a virtual environment that adds it")


@pytest.fixture(scope="module")
def frames(phantom_dir: Path) -> list[np.ndarray]:
    index = scan_dataset(phantom_dir)
    return [read_image(f.image_path) for f in index.frames[::4]]


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path, frames):
    with Segmenter.from_bundle(tiny_bundle, "onnxruntime", threads=1) as seg:
        return [seg(f) for f in frames]


@pytest.mark.parametrize("path,value,words", [
    (("models", "detector", "inputs", 0, "name"), "pixels",
     r"detector\.fp32\.onnx.*inputs \['pixels'\] in the manifest, \['image'\] in the model"),
    (("models", "detector", "inputs", 0, "dtype"), "uint8",
     r"input 'image' is uint8 in the manifest, float32 in the model"),
    (("models", "segmenter", "inputs", 0, "shape"), ["N", 1, 64, 64],
     r"input 'crop' is \['N', 1, 64, 64\] in the manifest, \['\?', 1, 96, 96\] in the model"),
    (("models", "segmenter", "outputs", 0, "name"), "mask",
     r"segmenter\.fp32\.onnx.*outputs \['mask'\] in the manifest"),
])
def test_a_manifest_that_misdescribes_its_models_is_refused_when_openvino_loads_them(
        tiny_bundle: Path, tmp_path: Path, path: tuple, value: object, words: str):
    # OpenVINO would run these models; the manifest is what C++ firmware and TensorRT builds read,
    # so a bundle that lies about them is refused at load, as with ONNX Runtime.
    from bpedge._manifest_fields import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=words):
        Segmenter.from_bundle(bundle, "openvino", precision="fp32", threads=1)


def test_openvino_fp32_gives_onnxruntime_fp32_results(tiny_bundle, frames, reference):
    with Segmenter.from_bundle(tiny_bundle, "openvino", precision="fp32", threads=1) as seg:
        assert seg.backend == "openvino" and seg.precision == "fp32"
        got = [seg(f) for f in frames]
    for a, b in zip(got, reference):
        assert a.present == b.present
        assert box_iou(a.box, b.box) > 0.99
        assert dice(a.mask, b.mask) > 0.99
        assert abs(a.score - b.score) < 1e-3


def test_auto_prefers_openvino_when_installed(tiny_bundle):
    from bpedge._openvino import default_precision

    with Segmenter.from_bundle(tiny_bundle, "auto") as seg:
        assert seg.backend == "openvino" and seg.precision == default_precision()
        assert seg.fallback_reason and "TensorRT" in seg.fallback_reason


def test_precisions_it_does_not_run_are_refused(tiny_bundle):
    # The caller's choice, not a fault of the machine: a ValueError (exit 2 in the CLI, one
    # line), where it was a RuntimeError (exit 1 and a --debug hint).
    with pytest.raises(ValueError, match="OpenVINO runs"):
        Segmenter.from_bundle(tiny_bundle, "openvino", precision="fp16")
    with pytest.raises(ValueError, match="bf16 is an OpenVINO precision"):
        Segmenter.from_bundle(tiny_bundle, "onnxruntime", precision="bf16")


def test_bf16_where_the_cpu_has_it(tiny_bundle, frames, reference):
    from bpedge._openvino import cpu_capabilities

    if "BF16" not in cpu_capabilities():
        for backend in ("openvino", "auto"):  # auto: ONNX Runtime has no bf16 either
            with pytest.raises(ValueError, match="no native BF16"):
                Segmenter.from_bundle(tiny_bundle, backend, precision="bf16")
        return
    with Segmenter.from_bundle(tiny_bundle, "openvino", precision="bf16", threads=1) as seg:
        got = [seg(f) for f in frames]
    assert np.mean([dice(a.mask, b.mask) for a, b in zip(got, reference)]) > 0.9


def test_stream_on_worker_threads_matches_one_by_one(tiny_bundle, frames):
    with Segmenter.from_bundle(tiny_bundle, "openvino", precision="fp32", threads=1) as seg:
        one = [seg(f).mask for f in frames]
        streamed = [r.mask for r in seg.stream(iter(frames), depth=3)]
    for a, b in zip(one, streamed):
        np.testing.assert_array_equal(a, b)


def test_batches_of_several_frames_match_frame_by_frame(tiny_bundle, frames):
    # Batch 1 runs a copy compiled for the static shape; a larger batch compiles the dynamic
    # model on first use: both must give each frame its own answer.
    with Segmenter.from_bundle(tiny_bundle, "openvino", precision="fp32", threads=1) as seg:
        single = [seg(f) for f in frames[:3]]
        batched = seg.segment_batch(frames[:3])
        again = seg(frames[0])
    for a, b in zip(single, batched):
        assert a.present == b.present and box_iou(a.box, b.box) > 0.99
        assert dice(a.mask, b.mask) > 0.99 and abs(a.score - b.score) < 1e-4
    assert abs(again.score - single[0].score) < 1e-6


def test_each_infer_requests_first_call_is_serialised(monkeypatch):
    # OpenVINO's binding can deadlock two threads making their first inference at once (see
    # bpedge._openvino._FIRST_INFER): each request's first call must hold the lock, later calls
    # must not (they would serialise the stream's workers for nothing).
    import threading

    import onnx
    from onnx import TensorProto, helper

    from bpedge import _openvino

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    runner = _openvino.OvModel(model.SerializeToString(), "relu", ["y"], "fp32", threads=1)

    held: list[bool] = []

    class Watched:
        def __init__(self, request):
            self.request = request

        def infer(self, *args, **kwargs):
            held.append(_openvino._FIRST_INFER.locked())
            return self.request.infer(*args, **kwargs)

    real = _openvino.OvModel._request

    def watched_request(self, n):
        request, outputs, called = real(self, n)
        return Watched(request), outputs, called

    monkeypatch.setattr(_openvino.OvModel, "_request", watched_request)
    batch = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4)

    def twice():
        for _ in range(2):
            np.testing.assert_array_equal(runner(batch)[0], np.maximum(batch, 0))

    for _ in range(2):  # one thread after the other: each has its own request
        worker = threading.Thread(target=twice)
        worker.start()
        worker.join()
    assert held == [True, False, True, False]


_SIGNAL_AFTER_CLOSE = """
import os, signal, sys, time
import numpy as np
from bpedge import Segmenter
frame = np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)
first = Segmenter.from_bundle(sys.argv[1], "openvino", threads=1)
second = Segmenter.from_bundle(sys.argv[1], "openvino", threads=1)
first(frame), second(frame)
first.close()  # closed in the order they were made, as a Segmenter closes its two models
second.close()
signal.signal(signal.SIGINT, lambda *args: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("after", flush=True)
"""


def test_a_signal_after_openvino_models_are_closed_is_handled(tiny_bundle):
    """Each OpenVINO Core gave the compiling thread a signal stack and put back, when destroyed,
    the one it found: Cores destroyed first-made-first left the thread on a freed stack, and the
    next signal, even one Python handles, ended the process with SIGSEGV (Ctrl-C during bench)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_CLOSE, str(tiny_bundle)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.split() == ["handled", "after"]
