"""The layer contracts (pyproject.toml ``[tool.importlinter]``) hold, checked by ``lint-imports``
through ``.ci/lint-imports``, and a forbidden import is caught (so the check can fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "lint-imports"

pytestmark = pytest.mark.skipif(shutil.which("lint-imports") is None,
                                reason="lint-imports not installed (pip install -e '.[dev]')")


def _lint(source: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if source is not None:
        env["BPEDGE_LINT_SOURCE"] = str(source)
    return subprocess.run(["bash", str(SCRIPT), "--no-logo"], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_the_layer_contracts_hold() -> None:
    result = _lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("bpedge/_result.py", "import torch", "runtime core imports nothing"),
    ("bpedge/_gpu/_chain.py", "from bpedge._cli import app", "runtime core imports nothing"),
    ("bpedge/_gpu/_kernels.py", "from bpedge.kernels._nvrtc import compile_kernel",
     "used through their public modules"),
    ("train/datasets.py", "from bpedge.export import bundle_export", "Training does not import"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str,
                                              contract: str) -> None:
    for part in ("bpedge", "train", "export", "kernels"):
        shutil.copytree(REPO / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{line}\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert contract in result.stdout and "BROKEN" in result.stdout


def test_every_bpedge_module_has_a_layer() -> None:
    """A new module under bpedge/ must be named in the runtime-core contract or be part of the
    application layer, so no module escapes the contracts by being new."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    core = next(c for c in config["contracts"] if c["id"] == "runtime-core")["source_modules"]
    application = {"bpedge._cli", "bpedge._bench", "bpedge._doctor"}
    found = {f"bpedge.{p.stem}" for p in (REPO / "bpedge").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert found - set(core) - application == set()
