"""Bundles on disk: create/open, hash checks right before use, engine keys and engine lookup,
atomic manifest updates, and the no-GPU / no-TensorRT behaviour of this machine (not mocked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpedge._engine_key import (
    EngineKey,
    GpuInfo,
    TargetUnavailable,
    current_key,
    gpu_slug,
    key_for,
    load_tensorrt,
    query_gpu,
    require_target,
)
from bpedge._manifest import (
    DetectorPreprocessing,
    Manifest,
    ModelEntry,
    OnnxFiles,
    Preprocessing,
    SegmenterPreprocessing,
    TensorSpec,
    Thresholds,
    Training,
)
from bpedge.bundle import Bundle, BundleError, file_ref

A2000 = GpuInfo("NVIDIA RTX A2000", "8.6", 26)
TRT = "10.13.0.35"


def write_bundle(root: Path, fp16: bool = True) -> Bundle:
    """A small bundle: fake ONNX bytes (the bundle never parses them) and a full manifest."""
    root.mkdir(parents=True, exist_ok=True)

    def model(name: str) -> ModelEntry:
        (root / f"{name}.onnx").write_bytes(f"{name} fp32 graph".encode())
        fp16_ref = None
        if fp16:
            (root / f"{name}.fp16.onnx").write_bytes(f"{name} fp16 graph".encode())
            fp16_ref = file_ref(root, f"{name}.fp16.onnx")
        return ModelEntry(
            onnx=OnnxFiles(file_ref(root, f"{name}.onnx"), fp16_ref),
            inputs=(TensorSpec("image", ("N", 1, 64, 96), "float32"),),
            outputs=(TensorSpec("prob", ("N", 1, 64, 96), "float32"),),
            arch=name, flops=1000, params=10,
        )

    manifest = Manifest(
        models={"detector": model("detector"), "segmenter": model("segmenter")},
        preprocessing=Preprocessing(
            DetectorPreprocessing((64, 96), 100.0, 50.0, "dataset"),
            SegmenterPreprocessing((96, 96), None, None, "per_image"),
        ),
        thresholds=Thresholds(0.5, 0.5, {"method": "fixed"}),
        training=Training("fingerprint", {"dice": 0.8}),
    )
    return Bundle.create(root, manifest)


def key(**changes) -> EngineKey:
    fields = {"gpu_name": A2000.name, "compute_capability": "8.6", "sm_count": 26,
              "trt_version": TRT, "precision": "fp16", "max_batch": 8}
    return EngineKey(**{**fields, **changes})


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# --- create / open / verify -----------------------------------------------------------------


def test_create_then_open_gives_the_same_manifest(tmp_path):
    created = write_bundle(tmp_path / "b")
    opened = Bundle.open(tmp_path / "b")
    assert opened.manifest == created.manifest
    assert opened.onnx_path("detector", "fp16") == tmp_path / "b" / "detector.fp16.onnx"
    assert opened.read_verified("segmenter.onnx") == b"segmenter fp32 graph"


def test_create_refuses_to_overwrite_a_bundle(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        Bundle.create(tmp_path / "b", bundle.manifest)
    assert Bundle.write(tmp_path / "b", bundle.manifest).manifest == bundle.manifest


def test_create_refuses_a_manifest_whose_hash_does_not_match_the_file(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    other = tmp_path / "c"
    other.mkdir()
    for name in ("detector.onnx", "detector.fp16.onnx", "segmenter.onnx", "segmenter.fp16.onnx"):
        (other / name).write_bytes((tmp_path / "b" / name).read_bytes())
    flip_one_byte(other / "segmenter.fp16.onnx")
    with pytest.raises(BundleError, match="segmenter.fp16.onnx"):
        Bundle.create(other, bundle.manifest)
    assert not (other / "manifest.json").exists()


@pytest.mark.parametrize("name", ["detector.onnx", "segmenter.fp16.onnx"])
def test_one_changed_byte_is_refused_by_name_with_the_fix(tmp_path, name):
    write_bundle(tmp_path / "b")
    flip_one_byte(tmp_path / "b" / name)
    with pytest.raises(BundleError) as info:
        Bundle.open(tmp_path / "b")
    assert repr(name) in str(info.value) and "sha256" in str(info.value)
    assert "re-export" in str(info.value)


def test_a_missing_file_is_refused_by_name(tmp_path):
    write_bundle(tmp_path / "b")
    (tmp_path / "b" / "detector.fp16.onnx").unlink()
    with pytest.raises(BundleError, match=r"'detector\.fp16\.onnx'.*missing"):
        Bundle.open(tmp_path / "b")


def test_verified_path_checks_again_right_before_use(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    assert bundle.verified_path("detector.onnx").read_bytes() == b"detector fp32 graph"
    flip_one_byte(tmp_path / "b" / "detector.onnx")  # changed after open
    for use in (bundle.verified_path, bundle.read_verified):
        with pytest.raises(BundleError, match=r"'detector\.onnx'"):
            use("detector.onnx")
    with pytest.raises(BundleError, match="changed or corrupted"):
        bundle.onnx_path("detector")
    assert "detector.onnx" in bundle.file_problem("detector.onnx")
    assert bundle.file_problem("segmenter.onnx") is None


def test_only_listed_files_can_be_verified(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    (tmp_path / "b" / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a file listed"):
        bundle.verified_path("extra.bin")


def test_missing_fp16_onnx_says_what_to_do(tmp_path):
    bundle = write_bundle(tmp_path / "b", fp16=False)
    with pytest.raises(BundleError, match="no fp16 ONNX for the detector"):
        bundle.onnx_path("detector", "fp16")
    with pytest.raises(ValueError, match="model must be one of"):
        bundle.onnx_path("classifier")


def test_open_explains_a_directory_that_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(tmp_path)
    (tmp_path / "manifest.json").write_text('{"schema_version": 1}')
    with pytest.raises(BundleError, match=r"manifest\.json: field 'bpedge_version'"):
        Bundle.open(tmp_path)


def test_import_needs_neither_torch_nor_tensorrt_nor_cuda():
    code = ("import sys, bpedge.bundle, bpedge._cli.build_engines; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'cuda.bindings') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- engine keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"gpu_name": "NVIDIA GeForce RTX 3060"}, "built for GPU"),
        ({"compute_capability": "8.7"}, "compute capability 8.7"),
        ({"sm_count": 28}, "28 SMs"),
        ({"trt_version": "10.3.0.30"}, "TensorRT 10.3.0.30"),
        ({"precision": "fp32"}, "precision fp32"),
        ({"max_batch": 4}, "max batch 4"),
    ],
)
def test_a_key_differing_in_anything_but_a_larger_batch_does_not_match(change, words):
    built, wanted = key(**change), key()
    assert not built.matches(wanted)
    reasons = built.mismatches(wanted)
    assert len(reasons) == 1 and words in reasons[0]


def test_a_larger_max_batch_serves_a_smaller_one_not_the_reverse():
    assert key(max_batch=16).matches(key(max_batch=8))
    assert key(max_batch=8).matches(key(max_batch=8))
    assert not key(max_batch=8).matches(key(max_batch=16))


def test_file_names_are_filesystem_safe_and_name_the_target():
    name = key().file_name("detector")
    assert name == "detector.fp16.sm86.rtx-a2000.26sm.trt10.13.0.35.engine"
    odd = key(gpu_name="NVIDIA Jetson AGX Orin (nvgpu)/x", trt_version="10.3.0+cuda12")
    assert odd.file_name("segmenter") == (
        "segmenter.fp16.sm86.jetson-agx-orin-nvgpu-x.26sm.trt10.3.0-cuda12.engine"
    )
    assert key(max_batch=1).file_name("detector") == name  # one engine per target, any batch
    assert gpu_slug("   ") == "gpu"
    with pytest.raises(ValueError, match="model"):
        key().file_name("../x")


@pytest.mark.parametrize(
    ("change", "words"),
    [({"compute_capability": "86"}, "major.minor"), ({"sm_count": 0}, "sm_count"),
     ({"precision": "bf16"}, "precision"), ({"max_batch": True}, "max_batch"),
     ({"gpu_name": ""}, "gpu_name"), ({"trt_version": "ten"}, "trt_version")],
)
def test_engine_keys_validate_their_fields(change, words):
    with pytest.raises(ValueError, match=words):
        key(**change)


# --- engines in a bundle ---------------------------------------------------------------------


def test_store_engine_writes_the_plan_and_lists_it(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    entry = bundle.store_engine("detector", key(), b"plan bytes", 12.5)
    assert (tmp_path / "b" / entry.file).read_bytes() == b"plan bytes"
    reopened = Bundle.open(tmp_path / "b")
    assert reopened.manifest.engines == (entry,) == bundle.manifest.engines
    assert reopened.find_engine("detector", key(max_batch=2)) == entry
    assert reopened.read_verified(entry.file) == b"plan bytes"
    assert reopened.find_engine("segmenter", key()) is None


def test_find_engine_picks_the_fitting_target_and_explains_misses(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    orin = key(gpu_name="Orin", compute_capability="8.7", sm_count=16, trt_version="10.3.0.30")
    bundle.store_engine("detector", orin, b"orin plan", 1.0)
    bundle.store_engine("detector", key(precision="fp32"), b"fp32 plan", 1.0)
    assert bundle.find_engine("detector", key()) is None
    reason = bundle.engine_mismatch_reason("detector", key())
    assert "none of the 2 detector engine(s) fits" in reason
    assert "built for GPU 'Orin'" in reason and "TensorRT 10.3.0.30" in reason
    assert "precision fp32, asked for fp16" in reason
    assert "bpedge build-engines" in reason
    assert "no segmenter engine" in bundle.engine_mismatch_reason("segmenter", key())
    fp32 = bundle.find_engine("detector", key(precision="fp32"))
    assert fp32 is not None and fp32.key.precision == "fp32"
    assert "fits" in bundle.engine_mismatch_reason("detector", key(precision="fp32"))


def test_a_tampered_engine_is_refused_but_the_onnx_still_opens(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    entry = bundle.store_engine("segmenter", key(), b"segmenter plan", 1.0)
    flip_one_byte(tmp_path / "b" / entry.file)
    reopened = Bundle.open(tmp_path / "b")  # engines are a cache: checked when used
    with pytest.raises(BundleError, match="build-engines") as info:
        reopened.read_verified(entry.file)
    assert entry.file in str(info.value)
    assert reopened.onnx_path("segmenter").exists()


def test_add_engine_checks_the_file_and_replaces_the_entry_for_it(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    entry = bundle.store_engine("detector", key(max_batch=4), b"old plan", 1.0)
    (tmp_path / "b" / entry.file).write_bytes(b"a plan built by trtexec")
    with pytest.raises(BundleError, match="sha256"):
        bundle.add_engine(entry)
    from dataclasses import replace

    from bpedge._manifest import sha256_bytes

    newer = replace(entry, sha256=sha256_bytes(b"a plan built by trtexec"))
    bundle.add_engine(newer)
    assert Bundle.open(tmp_path / "b").manifest.engines == (newer,)


def test_rebuilding_replaces_the_engine_and_keeps_other_processes_entries(tmp_path):
    first = write_bundle(tmp_path / "b")
    second = Bundle.open(tmp_path / "b")  # another process, opened before first wrote
    first.store_engine("detector", key(max_batch=4), b"small", 1.0)
    second.store_engine("segmenter", key(), b"seg", 1.0)
    bigger = first.store_engine("detector", key(max_batch=16), b"bigger", 2.0)
    engines = Bundle.open(tmp_path / "b").manifest.engines
    assert sorted(e.model for e in engines) == ["detector", "segmenter"]
    assert [e for e in engines if e.model == "detector"] == [bigger]
    assert (tmp_path / "b" / bigger.file).read_bytes() == b"bigger"


def test_a_crash_while_writing_an_engine_leaves_a_consistent_bundle(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "b")
    old = bundle.store_engine("detector", key(), b"old plan", 1.0)
    import bpedge.bundle as bundle_module

    real_write = bundle_module._write_file

    def crash(root, name, data, journal, *, replace):
        if not name.endswith(".engine"):
            return real_write(root, name, data, journal, replace=replace)
        (root / name).write_bytes(data[:3])  # a torn write, as a kill without atomic writes would
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_module, "_write_file", crash)
    with pytest.raises(KeyboardInterrupt):
        bundle.store_engine("detector", key(), b"new plan!", 1.0)
    reopened = Bundle.open(tmp_path / "b")
    # The old entry was unlisted before its file was touched: nothing listed mismatches.
    assert old.file not in [e.file for e in reopened.manifest.engines]
    for engine in reopened.manifest.engines:
        assert reopened.file_problem(engine.file) is None


def test_a_crash_before_the_manifest_update_leaves_a_consistent_bundle(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "b")
    bundle.store_engine("detector", key(), b"old plan", 1.0)
    import bpedge.bundle as bundle_module

    real_write = bundle_module._write_manifest
    calls = []

    def crash_on_second(root, manifest, journal):
        calls.append(manifest)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(root, manifest, journal)

    monkeypatch.setattr(bundle_module, "_write_manifest", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        bundle.store_engine("detector", key(), b"new plan!", 1.0)
    reopened = Bundle.open(tmp_path / "b")
    assert reopened.manifest.engines == ()
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["engines"] == []


KILLED_WRITER = """
import itertools, sys
from bpedge._engine_key import EngineKey
from bpedge.bundle import Bundle
bundle = Bundle.open(sys.argv[1])
keys = [EngineKey("NVIDIA RTX A2000", "8.6", 26, "10.13.0.35", p, 8) for p in ("fp16", "fp32")]
print("ready", flush=True)
for i in itertools.count():
    model = ("detector", "segmenter")[i % 2]
    bundle.store_engine(model, keys[(i // 2) % 2], bytes([i % 251]) * (1 << 20 + i % 3), 1.0)
"""


def test_kill_9_at_any_moment_leaves_only_matching_files_listed(tmp_path):
    import random
    import signal
    import time

    root = tmp_path / "b"
    write_bundle(root)
    rng = random.Random(0)
    listed = set()
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        bundle = Bundle.open(root)  # the manifest is whole and valid
        for engine in bundle.manifest.engines:
            assert bundle.file_problem(engine.file) is None, engine.file
            listed.add((engine.file, engine.sha256))
    assert len(listed) >= 3  # the writer really was replacing engines when it was killed
    entry = Bundle.open(root).store_engine("detector", key(), b"after the kills", 1.0)
    assert not list(root.glob(".*.tmp"))  # what the killed writers left is cleaned up
    for path in (root / "manifest.json", root / entry.file):
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the service that runs it


def test_store_engine_refuses_an_empty_plan(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="empty"):
        bundle.store_engine("detector", key(), b"", 1.0)
    assert bundle.manifest.engines == ()


# --- this machine: no GPU driver, TensorRT type stubs only (real checks, nothing mocked) -----


def test_without_a_gpu_the_query_names_the_cuda_error_and_the_fix():
    with pytest.raises(TargetUnavailable) as info:
        query_gpu()
    message = str(info.value)
    if "cuda-python is not installed" not in message:
        assert "cudaError" in message
    assert "pip install 'bpedge[tensorrt]'" in message


def test_tensorrt_stubs_are_not_taken_for_tensorrt():
    import tensorrt

    assert not hasattr(tensorrt, "Builder")  # this machine: stubs only
    with pytest.raises(TargetUnavailable, match="TensorRT is not installed"):
        load_tensorrt()


def test_current_key_names_everything_missing_in_one_message():
    with pytest.raises(TargetUnavailable) as info:
        current_key("fp16", 8)
    message = str(info.value)
    assert "TensorRT is not installed" in message and "GPU" in message
    assert message.count("fix:") == 1
    with pytest.raises(TargetUnavailable):
        require_target()


@pytest.mark.gpu
def test_current_key_on_a_real_gpu():
    try:
        found = current_key("fp16", 4)
    except TargetUnavailable as exc:
        pytest.skip(f"needs an NVIDIA GPU ({exc})")
    assert found == key_for(query_gpu(), found.trt_version, "fp16", 4)
    assert found.sm_count >= 1 and "." in found.compute_capability


# --- engines replace only what bpedge wrote ----------------------------------------------------


@pytest.mark.parametrize("there", ["a file of the user's", "a listed engine edited since",
                                   "a folder", "a symbolic link"])
def test_store_engine_never_overwrites_what_it_did_not_write(tmp_path, there):
    bundle = write_bundle(tmp_path / "b")
    path = tmp_path / "b" / key().file_name("detector")
    if there == "a listed engine edited since":
        bundle.store_engine("detector", key(), b"bpedge's plan", 1.0)
        path.write_bytes(b"a plan built by trtexec")
    elif there == "a folder":
        path.mkdir()
    elif there == "a symbolic link":
        (tmp_path / "mine.plan").write_bytes(b"my plan")
        path.symlink_to(tmp_path / "mine.plan")
    else:
        path.write_bytes(b"my own plan")
    before = {p.name: (p.is_symlink(), p.is_file() and p.read_bytes())
              for p in (tmp_path / "b").iterdir()}
    with pytest.raises(BundleError, match=str(path)):
        bundle.store_engine("detector", key(), b"new plan", 1.0)
    assert {p.name: (p.is_symlink(), p.is_file() and p.read_bytes())
            for p in (tmp_path / "b").iterdir()} == before


def test_store_engine_never_removes_a_users_file_named_like_a_temporary(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    engine = key().file_name("detector")
    mine = [tmp_path / "b" / f".{engine}.mynotes1.tmp", tmp_path / "b" / ".manifest.json.x.tmp",
            tmp_path / "b" / f".{engine}.k1ll3dxx.tmp"]
    for p in mine:
        p.write_bytes(b"keep me")
    bundle.store_engine("detector", key(), b"plan", 1.0)
    bundle.store_engine("detector", key(), b"plan 2", 1.0)
    assert all(p.read_bytes() == b"keep me" for p in mine)


def test_a_writer_killed_while_replacing_an_engine_leaves_it_replaceable(tmp_path, monkeypatch):
    import bpedge.bundle as bundle_module

    bundle = write_bundle(tmp_path / "b")
    old = bundle.store_engine("detector", key(), b"old plan", 1.0)
    real_write = bundle_module._write_file

    def killed(root, name, data, journal, *, replace):
        if not name.endswith(".engine"):
            return real_write(root, name, data, journal, replace=replace)
        fd, _tmp = journal.new_temporary(name)
        os.write(fd, data[:3])
        raise SystemExit(137)  # a kill: the temporary is left behind, listed

    monkeypatch.setattr(bundle_module, "_write_file", killed)
    with pytest.raises(SystemExit):
        bundle.store_engine("detector", key(), b"new plan", 1.0)
    monkeypatch.undo()
    root = tmp_path / "b"
    left = [p for p in root.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1
    assert (root / old.file).read_bytes() == b"old plan"  # unlisted, but the journal knows it
    assert Bundle.open(root).manifest.engines == ()
    # Another engine stored meanwhile keeps what the journal knows of the unfinished one.
    Bundle.open(root).store_engine("segmenter", key(), b"segmenter plan", 1.0)
    entry = Bundle.open(root).store_engine("detector", key(), b"new plan", 1.0)
    assert (root / entry.file).read_bytes() == b"new plan"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    assert (root / ".bpedge.lock").read_bytes() == b""  # the journal is empty once done


@pytest.mark.parametrize("bytes_there,removed", [(b"", True), (b"half a plan", False)])
def test_a_writer_killed_before_listing_its_temporarys_inode_leaves_it_removable(
        tmp_path, monkeypatch, bytes_there, removed):
    """Killed between making a temporary and listing it (mkstemp, then the journal), a writer
    left an empty file no later writer could prove was one's, kept for ever (a random-kill test
    met it). Now the name is listed first: empty, it goes; with bytes, it is someone's."""
    import bpedge._bundle_journal as journal_module

    bundle = write_bundle(tmp_path / "b")
    root = tmp_path / "b"

    real_open = os.open

    def killed_after_creating(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not str(path).endswith(".tmp"):
            return fd  # the journal's own files
        os.close(fd)
        Path(path).write_bytes(bytes_there)  # bytes only if someone else wrote there
        raise SystemExit(137)

    monkeypatch.setattr(journal_module.os, "open", killed_after_creating)
    with pytest.raises(SystemExit):
        bundle.store_engine("detector", key(), b"plan", 1.0)
    monkeypatch.undo()
    [left] = [p for p in root.iterdir() if p.name.endswith(".tmp")]
    Bundle.open(root).store_engine("segmenter", key(), b"segmenter plan", 1.0)
    assert left.exists() != removed


def test_a_lock_file_of_the_users_is_never_written(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    lock = tmp_path / "b" / ".bpedge.lock"
    lock.write_bytes(b"my notes")
    with pytest.raises(BundleError, match=str(lock)):
        bundle.store_engine("detector", key(), b"plan", 1.0)
    assert lock.read_bytes() == b"my notes"
