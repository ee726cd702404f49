"""``build_engines`` SIGKILLed at random moments, then run again until it finishes.

TensorRT is not installed here, so the builds run on the fake ``tensorrt`` module of
tests/export/test_tensorrt_build.py (loaded from that file), slowed down and with plans of
several MiB so that kills land in builds, in engine writes and in manifest updates.

After every kill: manifest.json parses and validates, every engine it lists matches its sha256,
and the timing cache is whole. After the run that finishes: every (model, precision) has its
engine, built from the right ONNX; engines that were intact before the last kill are reused, not
rebuilt (a kill loses at most the build in progress); and no temporary file is left in the bundle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpedge.bundle import Bundle

FAKE_TRT_TESTS = Path(__file__).resolve().parents[1] / "export" / "test_tensorrt_build.py"
JOBS = [(m, p) for m in ("detector", "segmenter") for p in ("fp16", "fp32")]

CHILD = r"""
import importlib.util, os, random, sys, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("fake_trt_tests", sys.argv[1])
fake_tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fake_tests)
from bpedge.export.tensorrt_build import build_engines

bundle, cache, seed = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
trt = fake_tests.FakeTensorRT()


class SlowBuilder(trt.Builder):
    # A build takes a while and its plan is large: kills land in builds and in writes.
    def build_serialized_network(self, network, config):
        time.sleep(rng.uniform(0.3, 0.6))
        record = bytes(super().build_serialized_network(network, config))
        return memoryview(record + b"\n" + os.urandom(rng.randint(2, 6) << 20))


trt.Builder = SlowBuilder
print("ready", flush=True)
build_engines(bundle, precisions=("fp16", "fp32"), max_batch=4, timing_cache=cache,
              progress=False, trt=trt, gpu=fake_tests.GPU, log=lambda line: print(line, flush=True))
print("finished", flush=True)
"""


def load_fake_trt_tests():
    spec = importlib.util.spec_from_file_location("fake_trt_tests_parent", FAKE_TRT_TESTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(root: Path, cache: Path, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(FAKE_TRT_TESTS), str(root), str(cache), str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        pytest.fail(f"the build process did not start: {line} {proc.stderr.read()[-2000:]}")
    return proc


def intact_engines(root: Path) -> dict[str, str]:
    """{engine file: sha256} of what the manifest lists, after checking everything it promises."""
    json.loads((root / "manifest.json").read_text())  # whole JSON, never half a file
    bundle = Bundle.open(root)  # validated, every ONNX hash checked
    for engine in bundle.manifest.engines:
        assert bundle.file_problem(engine.file) is None, engine.file
    return {e.file: e.sha256 for e in bundle.manifest.engines}


def assert_whole_cache(cache: Path) -> None:
    # The fake's timing cache is "+tag" per build; a torn write would cut a tag.
    if cache.exists():
        tags = cache.read_bytes().split(b"+")[1:]
        assert tags and all(t.decode() in {f"{m} {p}" for m, p in JOBS} for t in tags), tags


@pytest.mark.slow
def test_build_engines_killed_at_random_moments_finishes_with_a_consistent_bundle(tmp_path):
    fake_tests = load_fake_trt_tests()
    root = fake_tests.write_bundle(tmp_path / "bundle")
    cache = tmp_path / "cache" / "timing.cache"
    rng = random.Random(7)
    before_last_kill: dict[str, str] = {}
    for round_ in range(6):
        left = len(JOBS) - len(intact_engines(root))
        proc = start(root, cache, seed=round_)
        # A moment anywhere in a build, a write of an engine, the manifest or the timing cache,
        # or between them; but before the work left can be done (each build sleeps >= 0.3 s),
        # so that every round is a kill and the last run still has an engine to build.
        time.sleep(rng.uniform(0.0, 0.3 * left))
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        before_last_kill = intact_engines(root)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        intact_engines(root)
        assert_whole_cache(cache)
    assert len(intact_engines(root)) < len(JOBS)
    # Files named like what a kill in the middle of a write leaves, but that no writer listed
    # (the kills above may or may not have left real ones): they may be anybody's, so they are
    # kept, while the run that finishes removes what killed runs listed.
    stale = [root / ".manifest.json.k1ll3d00.tmp", root / ".detector.x.engine.k1ll3d00.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")

    proc = start(root, cache, seed=100)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()  # from the text buffer start() read "ready" through
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err[-2000:]
    assert out.rstrip().endswith("finished")
    engines = intact_engines(root)
    bundle = Bundle.open(root)
    assert sorted((e.model, e.key.precision) for e in bundle.manifest.engines) == sorted(JOBS)
    for entry in bundle.manifest.engines:
        record = json.loads(bundle.read_verified(entry.file).split(b"\n", 1)[0])
        assert record["tag"] == f"{entry.model} {entry.key.precision}"  # from the right ONNX
    # What was built and intact before the last kill was reused, not built again.
    for file, sha in before_last_kill.items():
        assert engines.get(file) == sha, f"{file} was rebuilt or dropped"
        assert f"reusing {file}" in out
    assert_whole_cache(cache)
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == sorted(
        p.name for p in stale)
    assert all(p.read_bytes() == b"half a file" for p in stale)
