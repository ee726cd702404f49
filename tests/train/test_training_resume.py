"""A training process killed with SIGKILL resumes from its last checkpoint and loses nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bpedge.train.checkpoint import load_checkpoint

EPOCHS = 6


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "bpedge._cli.app", "train", "segmenter", "--data", str(data),
        "--out", str(out), "--epochs", str(EPOCHS), "--limit", "24", "--batch-size", "4",
        "--no-progress", *extra,
    ]


def _env() -> dict[str, str]:
    # One thread per process: 2-core CI machines run several test processes side by side.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigkilled_run_resumes_from_last_checkpoint(phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(_command(phantom_dir, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared within 120 s")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done < EPOCHS, "the run finished before it could be interrupted"

    # Named like what a kill in the middle of a write leaves, but no run listed it: it may be
    # anybody's, so the resume keeps it (and removes what the killed run listed, if anything).
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")

    resumed = subprocess.run(_command(phantom_dir, out, "--resume"), check=False, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epoch_lines = [ln for ln in resumed.stdout.splitlines() if ln.startswith("epoch")]
    assert epoch_lines[0].startswith(f"epoch {done + 1:>3}/{EPOCHS}")
    assert len(epoch_lines) == EPOCHS - done

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == list(range(1, EPOCHS + 1))
    csv_epochs = [ln.split(",")[0] for ln in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_epochs == [str(e) for e in range(1, EPOCHS + 1)]
    final = load_checkpoint(out / "last.pt")
    assert final["epoch"] == EPOCHS
    assert [r["epoch"] for r in final["history"]] == list(range(1, EPOCHS + 1))
    assert json.loads((out / "split.json").read_text())["train"] == final["split"]["train"]
    # Nothing else is left: a temporary of the run's record that the kill cut off (empty, as
    # often as not, since the test kills just as last.pt appears) went too.
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == [".last.pt.k1ll3d.tmp"]
    assert (out / ".last.pt.k1ll3d.tmp").read_bytes() == b"half a checkpoint"
