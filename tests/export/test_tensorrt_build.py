"""``build_engines`` and ``bpedge build-engines``.

The orchestration runs against a fake ``tensorrt`` module that follows the documented API (the
calls themselves are type-checked against tensorrt-stubs in tests/test_typecheck.py); the "no
TensorRT / no GPU" paths run for real on this machine. A real build is marked ``gpu``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import pytest
import typer
from bpedge.export._trt_steps import BuildProgress, EngineBuildError, attach_progress
from bpedge.export.tensorrt_build import build_engines, timing_cache_file
from typer.testing import CliRunner

from bpedge._cli import app as cli_app
from bpedge._cli import build_engines as build_engines_cli
from bpedge._engine_key import GpuInfo, TargetUnavailable
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
from bpedge._out_file import OutFileRefused, record_path
from bpedge.bundle import Bundle, BundleError, file_ref

GPU = GpuInfo("NVIDIA RTX A2000", "8.6", 26)
SHAPE = [-1, 1, 64, 96]


# --- a fake tensorrt module ------------------------------------------------------------------
# Its "ONNX" is JSON: {"inputs": [{"name", "shape"}], "tag": ...}; its plan is JSON recording
# what the build was given, so tests can check what reached TensorRT.


class FakeTensorRT:
    def __init__(self, version: str = "10.13.0.35", fail_build: bool = False) -> None:
        self.__version__ = version
        self.fail_build = fail_build
        self.builds: list[dict] = []
        self.cache_inputs: list[bytes] = []
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, severity):
                self.severity = severity

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class BuilderFlag:
            TF32 = "tf32"

        class Dims(tuple):
            def __new__(cls, shape):
                return super().__new__(cls, shape)

        class IProgressMonitor:
            def __init__(self):
                self.base_initialised = True

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, Dims(shape)

        class Network:
            def __init__(self, flags):
                self.flags, self.inputs, self.tag = flags, [], None

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            def parse(self, data, path=None):
                try:
                    graph = json.loads(bytes(data))
                except ValueError as exc:
                    self.errors.append(f"In node -1: {exc}")
                    return False
                self.network.inputs = [Tensor(i["name"], i["shape"]) for i in graph["inputs"]]
                self.network.tag = graph["tag"]
                return True

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return memoryview(self.data)

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = [list(lo), list(opt), list(hi)]

        class Config:
            def __init__(self):
                self.pools, self.profiles, self.cache, self.progress_monitor = {}, [], None, None
                self.flags = {BuilderFlag.TF32}  # as in TensorRT: TF32 is on by default

            def clear_flag(self, flag):
                self.flags.discard(flag)

            def set_memory_pool_limit(self, pool, size):
                self.pools[pool] = size

            def add_optimization_profile(self, profile):
                self.profiles.append(profile)
                return len(self.profiles) - 1

            def create_timing_cache(self, data):
                fake.cache_inputs.append(bytes(data))
                if bytes(data).startswith(b"corrupt"):
                    raise RuntimeError("invalid timing cache")
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                if cache.data.startswith(b"other-gpu"):
                    return False
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                if monitor is not None:
                    monitor.phase_start("Building engine", None, 2)
                    monitor.phase_start("Tactic selection", "Building engine", 3)
                    for step in range(3):
                        assert monitor.step_complete("Tactic selection", step)
                    monitor.phase_finish("Tactic selection")
                    monitor.step_complete("Building engine", 1)
                    monitor.phase_finish("Building engine")
                if fake.fail_build:
                    return None
                record = {
                    "tag": network.tag,
                    "flags": network.flags,
                    "pools": config.pools,
                    "profiles": [p.shapes for p in config.profiles],
                    "cache_in": config.cache.data.decode(),
                    "trt": fake.__version__,
                    "monitor": type(monitor).__name__ if monitor is not None else None,
                    "tf32": BuilderFlag.TF32 in config.flags,
                }
                fake.builds.append(record)
                config.cache.data += b"+" + network.tag.encode()
                return memoryview(json.dumps(record).encode())

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
        self.MemoryPoolType, self.Dims = MemoryPoolType, Dims
        self.BuilderFlag = BuilderFlag
        self.IProgressMonitor = IProgressMonitor


def fake_onnx(tag: str, inputs=(("image", SHAPE),)) -> bytes:
    return json.dumps({"inputs": [{"name": n, "shape": s} for n, s in inputs], "tag": tag}).encode()


def write_bundle(root: Path, fp16: bool = True, onnx: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True)
    files = {f"{m}.onnx": fake_onnx(f"{m} fp32") for m in ("detector", "segmenter")}
    if fp16:
        files |= {f"{m}.fp16.onnx": fake_onnx(f"{m} fp16") for m in ("detector", "segmenter")}
    files |= onnx or {}
    for name, data in files.items():
        (root / name).write_bytes(data)

    def model(name: str) -> ModelEntry:
        half = file_ref(root, f"{name}.fp16.onnx") if fp16 else None
        return ModelEntry(
            onnx=OnnxFiles(file_ref(root, f"{name}.onnx"), half),
            inputs=(TensorSpec("image", ("N", 1, 64, 96), "float32"),),
            outputs=(TensorSpec("prob", ("N", 1, 64, 96), "float32"),),
            arch=name, flops=1, params=1,
        )

    Bundle.create(root, Manifest(
        models={"detector": model("detector"), "segmenter": model("segmenter")},
        preprocessing=Preprocessing(DetectorPreprocessing((64, 96), 100.0, 50.0, "dataset"),
                                    SegmenterPreprocessing((96, 96), None, None, "per_image")),
        thresholds=Thresholds(0.5, 0.5),
        training=Training("fingerprint"),
    ))
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def build(root: Path, trt: FakeTensorRT, lines: list[str] | None = None, **kwargs):
    kwargs.setdefault("progress", False)
    log = lines.append if lines is not None else (lambda line: None)
    return build_engines(root, trt=trt, gpu=GPU, log=log, **kwargs)


# --- building and reusing ----------------------------------------------------------------------


def test_builds_one_engine_per_model_and_precision_from_the_matching_onnx(tmp_path):
    root = write_bundle(tmp_path / "b")
    trt = FakeTensorRT()
    entries = build(root, trt, precisions=("fp16", "fp32"), max_batch=4, workspace_mb=256)
    assert [(e.model, e.precision) for e in entries] == [
        ("detector", "fp16"), ("detector", "fp32"), ("segmenter", "fp16"), ("segmenter", "fp32")]
    bundle = Bundle.open(root)
    for entry in entries:
        plan = json.loads(bundle.read_verified(entry.file))
        assert plan["tag"] == f"{entry.model} {entry.precision}"  # precision comes from the ONNX
        assert plan["flags"] == 1 << 1  # strongly typed
        assert plan["pools"] == {"workspace": 256 << 20}
        assert plan["profiles"] == [{"image": [[1, 1, 64, 96], [1, 1, 64, 96], [4, 1, 64, 96]]}]
        assert plan["monitor"] is None
        assert entry.key.max_batch == 4 and entry.key.sm_count == 26
        assert entry.file == entry.key.file_name(entry.model)
    assert bundle.manifest.engines == tuple(entries)


def test_engines_are_built_without_tf32_and_the_manifest_says_which_math(tmp_path):
    root = write_bundle(tmp_path / "b")
    entries = build(root, FakeTensorRT(), precisions=("fp32", "fp16"))
    bundle = Bundle.open(root)
    for entry in entries:
        assert json.loads(bundle.read_verified(entry.file))["tf32"] is False
        assert "TF32 disabled" in entry.math and entry.math.startswith(entry.precision)
    assert Bundle.open(root).manifest.engines == tuple(entries)  # the math survives a reload


def test_a_tensorrt_without_the_strongly_typed_flag_builds_with_no_flag(tmp_path):
    trt = FakeTensorRT(version="12.0.0.1")
    trt.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {})
    build(write_bundle(tmp_path / "b"), trt, precisions=("fp32",))
    assert [b["flags"] for b in trt.builds] == [0, 0]


def test_a_second_run_reuses_fitting_engines_without_building(tmp_path):
    root = write_bundle(tmp_path / "b")
    trt = FakeTensorRT()
    first = build(root, trt, max_batch=8)
    lines: list[str] = []
    again = build(root, trt, lines, max_batch=2)  # a smaller batch fits the batch-8 engines
    assert again == first and len(trt.builds) == 2
    assert sum("reusing" in line for line in lines) == 2


def test_a_larger_batch_or_another_tensorrt_builds_new_engines(tmp_path):
    root = write_bundle(tmp_path / "b")
    build(root, FakeTensorRT(), max_batch=2, models=("detector",))
    bigger = build(root, FakeTensorRT(), max_batch=16, models=("detector",))
    assert Bundle.open(root).manifest.engines == tuple(bigger)  # same target: replaced
    other = build(root, FakeTensorRT(version="10.3.0.30"), max_batch=16, models=("detector",))
    files = {e.file for e in Bundle.open(root).manifest.engines}
    assert files == {bigger[0].file, other[0].file} and len(files) == 2


def test_a_tampered_engine_is_neither_reused_nor_overwritten(tmp_path):
    # Its bytes are no longer the ones bpedge wrote (a plan of someone else's copied over it,
    # or damage): it is not bpedge's to replace, so it is named and kept.
    root = write_bundle(tmp_path / "b")
    trt = FakeTensorRT()
    [entry] = build(root, trt, models=("segmenter",))
    path = root / entry.file
    tampered = path.read_bytes()[:-1] + b"!"
    path.write_bytes(tampered)
    lines: list[str] = []
    with pytest.raises(BundleError, match=str(path)):
        build(root, trt, lines, models=("segmenter",))
    assert any("not reusing" in line and "sha256" in line for line in lines)
    assert path.read_bytes() == tampered


def test_a_file_in_the_way_of_any_engine_is_refused_before_the_first_build(tmp_path):
    # The segmenter's engine name is taken by a file of the user's: refused before the
    # detector's engine is built (a build takes minutes, and its plan was thrown away).
    [learned] = build(write_bundle(tmp_path / "scratch"), FakeTensorRT(), models=("segmenter",))
    root = write_bundle(tmp_path / "b")
    mine = root / learned.file
    mine.write_bytes(b"my own plan")
    trt = FakeTensorRT()
    with pytest.raises(BundleError, match=str(mine)):
        build(root, trt, models=("detector", "segmenter"))
    assert trt.builds == []
    assert mine.read_bytes() == b"my own plan"


def test_force_rebuilds_a_fitting_engine(tmp_path):
    root = write_bundle(tmp_path / "b")
    trt = FakeTensorRT()
    build(root, trt, models=("detector",))
    build(root, trt, models=("detector",), force=True)
    assert len(trt.builds) == 2 and len(Bundle.open(root).manifest.engines) == 1


def test_the_timing_cache_is_saved_and_fed_to_the_next_build(tmp_path):
    root = write_bundle(tmp_path / "b")
    cache = tmp_path / "timing.cache"
    trt = FakeTensorRT()
    build(root, trt, timing_cache=cache)
    assert cache.read_bytes() == b"+detector fp16+segmenter fp16"
    assert trt.builds[1]["cache_in"] == "+detector fp16"  # shared between the models
    build(root, trt, timing_cache=cache, force=True, models=("detector",))
    assert trt.builds[2]["cache_in"] == "+detector fp16+segmenter fp16"


@pytest.mark.parametrize("content", [b"other-gpu cache", b"corrupt cache"])
def test_a_timing_cache_from_another_gpu_or_corrupt_is_replaced_by_a_new_one(tmp_path, content):
    root = write_bundle(tmp_path / "b")
    cache = tmp_path / "timing.cache"
    # A cache build-engines wrote (on another GPU or TensorRT, or one TensorRT cannot read): only
    # such a file is ever replaced; a file of anyone else's is refused (tests below).
    timing_cache_file(cache).write_bytes(content)
    lines: list[str] = []
    trt = FakeTensorRT()
    build(root, trt, lines, timing_cache=cache, models=("detector",))
    assert trt.builds[0]["cache_in"] == ""
    assert any("starting a new one" in line for line in lines)
    assert cache.read_bytes() == b"+detector fp16"


USER_BYTES = b"my own notes, not a timing cache\n"


@pytest.mark.parametrize("kind", ["a user file", "a cache of ours the user wrote over",
                                  "a trtexec cache", "a folder", "a link to a cache of ours",
                                  "a user file at the record's name"])
def test_a_timing_cache_file_build_engines_did_not_write_is_never_read_or_replaced(tmp_path, kind):
    root = write_bundle(tmp_path / "b")
    cache = tmp_path / "timing.cache"
    if kind == "a user file":
        cache.write_bytes(USER_BYTES)
    elif kind == "a cache of ours the user wrote over":
        timing_cache_file(cache).write_bytes(b"+detector fp16")
        cache.write_bytes(USER_BYTES)  # their bytes now: no longer what build-engines wrote
    elif kind == "a trtexec cache":
        cache.write_bytes(b"+detector fp16")  # valid for TensorRT, but not written by bpedge
    elif kind == "a folder":
        cache.mkdir()
        (cache / "notes.txt").write_bytes(USER_BYTES)
    elif kind == "a user file at the record's name":
        record_path(cache).write_bytes(USER_BYTES)  # the cache itself does not exist yet
    else:
        ours = tmp_path / "ours.cache"
        timing_cache_file(ours).write_bytes(b"+detector fp16")
        cache.symlink_to(ours)
    before_bundle, before_dir = snapshot(root), sorted(p.name for p in tmp_path.iterdir())
    before_cache = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
                    and root not in p.parents}
    trt = FakeTensorRT()
    with pytest.raises(OutFileRefused, match=re.escape(f"--timing-cache {cache}")):
        build(root, trt, timing_cache=cache)
    assert trt.builds == [] and trt.cache_inputs == []  # nothing built, the file never read
    assert snapshot(root) == before_bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == before_dir  # nothing written beside it
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
            and root not in p.parents} == before_cache  # byte for byte
    assert cache.is_symlink() == (kind == "a link to a cache of ours")


def test_a_timing_cache_that_appears_during_the_build_is_left_as_it_is(tmp_path):
    root = write_bundle(tmp_path / "b")
    cache = tmp_path / "timing.cache"
    trt = FakeTensorRT()
    plain_build = trt.Builder.build_serialized_network

    def build_while_the_user_saves_a_file(self, network, config):
        cache.write_bytes(USER_BYTES)
        return plain_build(self, network, config)

    trt.Builder.build_serialized_network = build_while_the_user_saves_a_file
    with pytest.raises(OutFileRefused, match=re.escape(f"--timing-cache {cache}")):
        build(root, trt, timing_cache=cache, models=("detector",))
    assert cache.read_bytes() == USER_BYTES
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name or p.suffix == ".tmp"]


def test_a_timing_cache_killed_between_its_record_and_its_bytes_is_still_ours(tmp_path,
                                                                              monkeypatch):
    # The record lists the new bytes and the old before the file is renamed: a kill between
    # the two leaves the old bytes, which the next run still recognises and replaces.
    import bpedge._out_file as out_file

    root = write_bundle(tmp_path / "b")
    cache = tmp_path / "timing.cache"
    build(root, FakeTensorRT(), timing_cache=cache, models=("detector",))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for SIGKILL between the record and the rename

    monkeypatch.setattr(out_file, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        build(root, FakeTensorRT(), timing_cache=cache, models=("segmenter",))
    monkeypatch.undo()
    assert cache.read_bytes() == b"+detector fp16"
    trt = FakeTensorRT()
    build(root, trt, timing_cache=cache, models=("segmenter",), force=True)
    assert trt.builds[0]["cache_in"] == "+detector fp16"
    assert cache.read_bytes() == b"+detector fp16+segmenter fp16"


def test_progress_shows_the_tensorrt_phases(tmp_path, capsys):
    root = write_bundle(tmp_path / "b")
    trt = FakeTensorRT()
    build(root, trt, models=("detector",), progress=True)
    assert trt.builds[0]["monitor"] == "BpedgeProgressMonitor"
    err = capsys.readouterr().err
    assert "detector fp16: Building engine" in err and "Tactic selection" in err


# --- failing cleanly -----------------------------------------------------------------------------


def test_a_missing_fp16_onnx_fails_before_any_build(tmp_path):
    root = write_bundle(tmp_path / "b", fp16=False)
    before = snapshot(root)
    trt = FakeTensorRT()
    with pytest.raises(BundleError, match="no fp16 ONNX for the detector"):
        build(root, trt, precisions=("fp32", "fp16"))
    assert trt.builds == [] and snapshot(root) == before


def test_int8_engines_need_the_symmetric_int8_onnx_and_say_how_to_get_it(tmp_path):
    root = write_bundle(tmp_path / "b")  # exported without --int8
    before = snapshot(root)
    trt = FakeTensorRT()
    with pytest.raises(BundleError, match=r"no symmetric INT8 ONNX .* for the detector.*"
                                          r"bpedge export --int8"):
        build(root, trt, precisions=("fp16", "int8"))
    assert trt.builds == [] and snapshot(root) == before


def test_a_parse_error_names_the_file_and_writes_nothing(tmp_path):
    root = write_bundle(tmp_path / "b", onnx={"segmenter.fp16.onnx": b"not a graph"})
    trt = FakeTensorRT()
    with pytest.raises(EngineBuildError, match=r"segmenter\.fp16\.onnx: In node -1"):
        build(root, trt)
    # The detector was built and listed; the segmenter left nothing behind.
    assert [e.model for e in Bundle.open(root).manifest.engines] == ["detector"]
    assert not list(root.glob("segmenter*.engine"))


def test_a_failed_build_writes_nothing(tmp_path):
    root = write_bundle(tmp_path / "b")
    before = snapshot(root)
    with pytest.raises(EngineBuildError, match="failed to build"):
        build(root, FakeTensorRT(fail_build=True), progress=True)
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("inputs", "words"),
    [((("input", SHAPE),), "inputs ['input']"),
     ((("image", [1, 1, 64, 96]),), "dynamic batch"),
     ((("image", [-1, 1, -1, 96]),), "only the batch dimension")],
)
def test_onnx_inputs_must_be_the_manifests_with_a_dynamic_batch(tmp_path, inputs, words):
    root = write_bundle(tmp_path / "b", onnx={"detector.fp16.onnx": fake_onnx("d", inputs)})
    with pytest.raises(EngineBuildError, match=re.escape(words)):
        build(root, FakeTensorRT(), models=("detector",))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"precisions": ("int4",)}, "precisions"), ({"max_batch": 0}, "max_batch"),
     ({"workspace_mb": 0}, "workspace_mb"), ({"models": ("classifier",)}, "models")],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        build(tmp_path, FakeTensorRT(), **kwargs)


def test_without_tensorrt_and_gpu_nothing_is_read_or_written(tmp_path):
    # Real checks on this machine (TensorRT stubs only, cudaErrorInsufficientDriver).
    with pytest.raises(TargetUnavailable) as info:
        build_engines(tmp_path / "no-such-bundle")  # the target is checked before the bundle
    message = str(info.value)
    assert "TensorRT is not installed" in message and "GPU" in message
    assert "pip install 'bpedge[tensorrt]'" in message


def test_with_tensorrt_but_no_gpu_the_gpu_is_named(tmp_path):
    root = write_bundle(tmp_path / "b")
    before = snapshot(root)
    with pytest.raises(TargetUnavailable) as info:
        build_engines(root, trt=FakeTensorRT(), log=lambda line: None)
    assert "TensorRT is not installed" not in str(info.value) and "GPU" in str(info.value)
    assert snapshot(root) == before


# --- progress display ----------------------------------------------------------------------------


def test_build_progress_draws_nested_phases():
    stream = io.StringIO()
    progress = BuildProgress("segmenter fp32", stream)
    progress.phase_start("Building engine", None, 2)
    progress.phase_start("Tactic selection", "Building engine", 4)
    assert all(progress.step_complete("Tactic selection", s) for s in range(4))
    progress.phase_finish("Tactic selection")
    progress.step_complete("Building engine", 1)
    progress.close()  # the outer bar stays on screen, nested ones are cleared
    text = stream.getvalue()
    assert "segmenter fp32: Tactic selection" in text
    assert "segmenter fp32: Building engine: 100%" in text and "2/2" in text
    assert progress.error is None


def test_a_broken_display_never_stops_the_build():
    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("terminal gone")

    progress = BuildProgress("detector fp16", Broken())
    progress.phase_start("Building engine", None, 2)
    assert progress.step_complete("Building engine", 0) is True
    progress.phase_finish("Building engine")
    assert isinstance(progress.error, OSError)


def test_the_monitor_subclasses_the_modules_progress_monitor():
    trt = FakeTensorRT()

    class Config:
        progress_monitor = None

    config = Config()
    progress = BuildProgress("x", io.StringIO())
    monitor = attach_progress(trt, config, progress)  # type: ignore[arg-type]
    assert isinstance(monitor, trt.IProgressMonitor) and monitor.base_initialised
    assert config.progress_monitor is monitor
    monitor.phase_start("Phase", None, 1)
    assert monitor.step_complete("Phase", 0) is True


# --- the command line ------------------------------------------------------------------------


def _app() -> typer.Typer:
    """The real app; while another command module is still missing from the tree, an app with
    only this command."""
    try:
        return cli_app.build_app()
    except ModuleNotFoundError as exc:
        if exc.name == "bpedge._cli.build_engines":
            raise
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        pass

    build_engines_cli.register(app)
    return app


def test_command_is_registered():
    assert "bpedge._cli.build_engines" in cli_app._COMMAND_MODULES


def test_cli_help_lists_the_options():
    result = CliRunner().invoke(_app(), ["build-engines", "--help"])
    assert result.exit_code == 0
    for option in ("--precision", "--max-batch", "--workspace-mb", "--timing-cache", "--force"):
        assert option in result.output


# A missing bundle is reported before a missing TensorRT (issue 12): see
# test_cli_reports_a_missing_bundle_before_a_missing_tensorrt below.
@pytest.mark.parametrize("exists", [True])
def test_cli_without_tensorrt_exits_1_with_one_clear_line_and_writes_nothing(tmp_path, exists):
    root = write_bundle(tmp_path / "b") if exists else tmp_path / "missing"
    before = snapshot(root) if exists else None
    result = CliRunner().invoke(_app(), ["build-engines", str(root), "--precision", "fp32"])
    assert result.exit_code == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "TensorRT is not installed" in error_lines[0]
    assert "pip install 'bpedge[tensorrt]' on a machine with an NVIDIA GPU" in error_lines[0]
    assert result.stdout == ""
    if exists:
        assert snapshot(root) == before
    else:
        assert not root.exists()


def test_cli_reports_a_missing_bundle_before_a_missing_tensorrt(tmp_path):
    root = tmp_path / "missing"
    result = CliRunner().invoke(_app(), ["build-engines", str(root), "--precision", "fp32"])
    assert result.exit_code == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(root) in error_lines[0]
    assert "does not exist" in error_lines[0] and "TensorRT" not in result.stderr
    assert result.stdout == "" and not root.exists()


def test_cli_bad_precision_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(_app(), ["build-engines", str(tmp_path), "-p", "bf16"])
    assert result.exit_code == 2 and "precisions must be some of" in result.stderr


# --- a real build (GPU machines only) -------------------------------------------------------------


@pytest.mark.gpu
def test_real_tensorrt_builds_a_loadable_engine(tmp_path):
    from bpedge._engine_key import require_target

    try:
        trt, _ = require_target()
    except TargetUnavailable as exc:
        pytest.skip(f"needs an NVIDIA GPU ({exc})")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["prob"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 64, 96])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, 64, 96])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    root = write_bundle(tmp_path / "b", fp16=False,
                        onnx={"detector.onnx": data, "segmenter.onnx": data})
    entries = build_engines(root, precisions=("fp32",), max_batch=2, progress=False)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for entry in entries:
        engine = runtime.deserialize_cuda_engine(Bundle.open(root).read_verified(entry.file))
        assert engine is not None and engine.num_io_tensors == 2
