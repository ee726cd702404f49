"""A real exported bundle (the session's tiny one) damaged every way a copy between machines can
damage it: each file listed in its manifest missing, one byte changed, truncated, or swapped for
another model's file; the manifest unreadable or of an unknown schema; engines built for another
GPU or TensorRT version; and a truncated ONNX whose hash was updated to match.

What must hold: ``Bundle.open`` and ``Segmenter.from_bundle`` refuse with a message that names the
file and the fix, and ONNX Runtime is never handed bytes whose sha256 differs from the manifest's
(every session created is checked against the manifest's hashes)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bpedge import Segmenter
from bpedge._engine_key import EngineKey
from bpedge._gpu import cascade as gpu_cascade
from bpedge.bundle import Bundle, BundleError

HERE_GPU = EngineKey("NVIDIA RTX A2000", "8.6", 26, "10.13.0.35", "fp16", 1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


@pytest.fixture(scope="module")
def listed_files(tiny_bundle: Path) -> list[str]:
    files = [ref.file for ref in Bundle.open(tiny_bundle).manifest.model_files()]
    assert {"detector.fp32.onnx", "segmenter.fp32.onnx"} <= set(files)
    return files


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every model ONNX Runtime is asked to load in this test, as the bytes it was given."""
    import onnxruntime

    real = onnxruntime.InferenceSession
    loaded: list[bytes] = []

    def recording(source, *args, **kwargs):
        loaded.append(source if isinstance(source, bytes) else Path(source).read_bytes())
        return real(source, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return loaded


def listed_hashes(root: Path) -> set[str]:
    manifest = json.loads((root / "manifest.json").read_text())
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("sha256"), str):
                found.add(node["sha256"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest)
    return found


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def swap_with_another(path: Path) -> None:
    others = sorted(p for p in path.parent.iterdir() if p.suffix == path.suffix and p != path)
    path.write_bytes(others[0].read_bytes())


DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": Path.unlink,
    "one changed byte": flip_one_byte,
    "truncated": truncate,
    "another model's file": swap_with_another,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_listed_file_damaged_is_refused_by_name_with_the_fix_and_nothing_is_loaded(
    tiny_bundle: Path, tmp_path: Path, listed_files: list[str], sessions: list[bytes], damage: str
):
    for file in listed_files:
        root = tmp_path / f"{damage}-{file}"
        shutil.copytree(tiny_bundle, root)
        DAMAGE[damage](root / file)
        with pytest.raises(BundleError) as opened:
            Bundle.open(root)
        message = str(opened.value)
        assert repr(file) in message, message
        assert ("missing" if damage == "missing" else "does not match its sha256") in message
        assert "copy the whole bundle directory again, or re-export it" in message
        for backend in ("auto", "onnxruntime"):
            with pytest.raises(BundleError, match=repr(file).replace(".", r"\.")):
                Segmenter.from_bundle(root, backend=backend)  # type: ignore[arg-type]
    assert sessions == []  # refused before ONNX Runtime saw a byte


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_file_changed_after_the_bundle_was_opened_is_still_never_loaded(
    copy: Path, sessions: list[bytes], precision: str
):
    bundle = Bundle.open(copy)  # checked and fine here
    truncate(copy / f"segmenter.{precision}.onnx")
    with pytest.raises(BundleError, match=rf"'segmenter\.{precision}\.onnx'.*re-export"):
        Segmenter.from_bundle(bundle, backend="onnxruntime", precision=precision)  # type: ignore[arg-type]
    hashes = listed_hashes(copy)
    assert all(sha256(s) in hashes for s in sessions)  # at most the intact detector was loaded


def rehash(root: Path, file: str) -> None:
    """Update the manifest's sha256 of ``file`` to the file's bytes: what a careless (or
    malicious) edit of the manifest does; the hash check then passes."""
    manifest = json.loads((root / "manifest.json").read_text())
    for model in manifest["models"].values():
        for ref in (*model["onnx"].values(), model.get("checkpoint")):
            if isinstance(ref, dict) and ref["file"] == file:
                ref["sha256"] = sha256((root / file).read_bytes())
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_truncated_onnx_with_a_matching_hash_is_refused_by_onnx_runtime_naming_the_file(
    copy: Path,
):
    truncate(copy / "segmenter.fp32.onnx")
    rehash(copy, "segmenter.fp32.onnx")
    Bundle.open(copy)  # the hash check cannot see this damage
    with pytest.raises(ValueError) as info:
        Segmenter.from_bundle(copy, backend="onnxruntime")
    message = str(info.value)
    assert str(copy / "segmenter.fp32.onnx") in message
    assert "ONNX Runtime cannot load this model" in message
    assert "bpedge export" in message  # the fix


def test_a_valid_onnx_of_the_wrong_model_with_a_matching_hash_is_refused_naming_the_file(
    copy: Path,
):
    (copy / "detector.fp32.onnx").write_bytes((copy / "segmenter.fp32.onnx").read_bytes())
    rehash(copy, "detector.fp32.onnx")
    with pytest.raises(ValueError, match=r"detector\.fp32\.onnx: model has no output\(s\)"):
        Segmenter.from_bundle(copy, backend="onnxruntime")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: {**m, "schema_version": 99}, "bundle schema 99 is newer than this bpedge"),
        (lambda m: {**m, "schema_version": 0}, "re-export the bundle with this bpedge"),
        (lambda m: {k: v for k, v in m.items() if k != "thresholds"}, "'thresholds'"),
    ],
)
def test_a_manifest_this_bpedge_cannot_read_is_refused_naming_it(copy: Path, edit, words: str):
    path = copy / "manifest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(BundleError) as info:
        Segmenter.from_bundle(copy)
    assert str(path) in str(info.value) and words in str(info.value)


def test_a_truncated_manifest_is_refused_naming_it(copy: Path):
    truncate(copy / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest\.json.*not valid JSON"):
        Segmenter.from_bundle(copy)


def test_engines_for_another_gpu_or_tensorrt_version_are_refused_with_the_reason(
    copy: Path, monkeypatch: pytest.MonkeyPatch, without_openvino: None
):
    bundle = Bundle.open(copy)
    orin = EngineKey("NVIDIA Jetson AGX Orin", "8.7", 16, "10.13.0.35", "fp16", 8)
    older_trt = EngineKey("NVIDIA RTX A2000", "8.6", 26, "10.3.0.30", "fp16", 8)
    for model in ("detector", "segmenter"):
        bundle.store_engine(model, orin, f"{model} plan for Orin".encode(), 1.0)
        bundle.store_engine(model, older_trt, f"{model} plan for TensorRT 10.3".encode(), 1.0)
    # This machine as if it had TensorRT 10.13 and an RTX A2000: only the engines can be wrong.
    monkeypatch.setattr(gpu_cascade, "current_key", lambda precision, batch, device: HERE_GPU)

    with pytest.raises(RuntimeError) as info:
        Segmenter.from_bundle(copy, backend="tensorrt")
    reason = str(info.value)
    for model in ("detector", "segmenter"):
        assert f"none of the 2 {model} engine(s) fits" in reason
        assert orin.file_name(model) in reason and older_trt.file_name(model) in reason
    assert "built for GPU 'NVIDIA Jetson AGX Orin'" in reason
    assert "TensorRT 10.3.0.30" in reason
    assert f"bpedge build-engines {copy}" in reason

    with Segmenter.from_bundle(copy, backend="auto") as seg:  # falls back, and says why
        assert seg.backend == "onnxruntime"
        assert seg.fallback_reason is not None and orin.file_name("detector") in seg.fallback_reason
        assert seg(np.zeros((40, 60), np.uint8)).mask.shape == (40, 60)


@pytest.fixture
def republished(copy: Path, tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    """``copy`` and a function that does what ``bpedge export --force`` does to it: another whole
    bundle (its detector file differs, its manifest matches it) renamed onto it, the old one
    renamed away first."""
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    (other / "detector.fp32.onnx").write_bytes((other / "detector.fp16.onnx").read_bytes())
    rehash(other, "detector.fp32.onnx")
    Bundle.open(other)

    def publish() -> None:
        copy.rename(tmp_path / "old")
        other.rename(copy)

    return copy, publish


def test_open_straddling_a_re_export_reads_the_new_bundle_not_a_corrupt_one(
    republished: tuple[Path, Callable[[], None]], monkeypatch: pytest.MonkeyPatch
):
    # The old manifest read, then export --force publishes: the files checked are the new
    # bundle's. Both bundles are whole, so "does not match its sha256 ... corrupted" was wrong.
    import bpedge.bundle as bundle_module

    root, publish = republished
    real = bundle_module._check_model_files
    calls = []

    def published_meanwhile(folder: Path, manifest):
        if not calls:
            publish()
        calls.append(folder)
        return real(folder, manifest)

    monkeypatch.setattr(bundle_module, "_check_model_files", published_meanwhile)
    opened = Bundle.open(root)
    assert len(calls) == 2
    assert opened.manifest.hash_of("detector.fp32.onnx") == sha256(
        (root / "detector.fp32.onnx").read_bytes())


def test_a_segmenter_built_while_the_bundle_is_re_exported_runs_the_new_bundle(
    republished: tuple[Path, Callable[[], None]], monkeypatch: pytest.MonkeyPatch,
    sessions: list[bytes]
):
    root, publish = republished
    real = Bundle.read_verified
    published = []

    def published_meanwhile(self: Bundle, file: str) -> bytes:
        if not published:  # after the open, before the first model is read
            publish()
            published.append(file)
        return real(self, file)

    monkeypatch.setattr(Bundle, "read_verified", published_meanwhile)
    with Segmenter.from_bundle(root, backend="onnxruntime") as seg:
        seg(np.zeros((64, 80), np.uint8))
    assert published
    assert sessions[-2:] == [(root / "detector.fp32.onnx").read_bytes(),
                             (root / "segmenter.fp32.onnx").read_bytes()]


def test_a_bundle_damaged_in_place_is_still_refused_at_once(copy: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    # Only a replaced folder is read again: the same folder with a bad file is refused.
    import bpedge.bundle as bundle_module

    real = bundle_module._check_model_files
    calls = []
    monkeypatch.setattr(bundle_module, "_check_model_files",
                        lambda folder, manifest: calls.append(folder) or real(folder, manifest))
    truncate(copy / "segmenter.fp32.onnx")
    with pytest.raises(BundleError, match="does not match its sha256"):
        Bundle.open(copy)
    assert len(calls) == 1
