"""The tiny pipeline (`bpedge demo`'s training steps) killed in its first epoch runs again: a kill
between the first epoch's two checkpoint writes leaves best.pt without last.pt, and the rerun
was refused ("already holds a checkpoint; pass --resume", a flag demo does not have)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bpedge.export.tiny_bundle import TinyPaths, TinyRecipe, train_tiny_segmenter

RECIPE = TinyRecipe(epochs=2, limit=8)

#: Trains the tiny U-Net into argv[2] on argv[1], and exits as SIGKILL would the moment its first
#: best.pt is written (the loop writes best.pt, then last.pt).
_KILLED_AFTER_FIRST_BEST = """
import os, sys
from pathlib import Path
from bpedge.export.tiny_bundle import TinyPaths, TinyRecipe, train_tiny_segmenter
from bpedge.train import _loop

real = _loop.write_run_file
def write_run_file(run_dir, name, write):
    real(run_dir, name, write)
    if name == "best.pt":
        os._exit(9)
_loop.write_run_file = write_run_file
paths = TinyPaths.under(Path(sys.argv[2]), data=Path(sys.argv[1]))
train_tiny_segmenter(paths, TinyRecipe(epochs=2, limit=8))
"""


def test_a_segmenter_run_killed_between_its_first_checkpoints_trains_again(phantom_dir: Path,
                                                                          tmp_path: Path):
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_FIRST_BEST, str(phantom_dir),
                             str(tmp_path)], check=False, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == 9, killed.stderr[-2000:]
    paths = TinyPaths.under(tmp_path, data=phantom_dir)
    run = paths.segmenter
    assert (run / "best.pt").is_file() and not (run / "last.pt").exists()
    train_tiny_segmenter(paths, RECIPE)  # refused before: "pass --resume"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
