"""Data-parallel training: two gloo processes on the CPU, launched the way torchrun launches them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bpedge.train.checkpoint import load_checkpoint
from bpedge.train.data import scan_dataset
from bpedge.train.distributed import ShardSampler, launched_by_torchrun
from bpedge.train.predict import predict_frames

from bpedge._metrics import box_iou


def test_two_process_gloo_run_completes_and_reduces_metrics(
    phantom_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "bpedge._cli.app", "train", "detector", "--data", str(phantom_dir),
         "--out", str(out), "--epochs", "1", "--batch-size", "4", "--no-progress"],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) on cpu" in result.stdout
    assert result.stdout.count("done: best val_miou") == 1  # only rank 0 reports

    payload = load_checkpoint(out / "last.pt")
    assert payload["epoch"] == 1
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1]

    # Each rank scored half of the validation frames; the all-reduced mean must equal the
    # single-process score of the saved model over all of them.
    val = set(payload["split"]["val"])
    frames = [f for f in scan_dataset(phantom_dir).frames if f.key in val]
    preds = predict_frames(out / "last.pt", frames)
    expected = sum(box_iou(preds[f.key].box, f.box) for f in frames) / len(frames)
    assert rows[0]["val_metric"] == pytest.approx(expected, abs=2e-3)


def test_shard_sampler_covers_every_index_once() -> None:
    import torch
    from bpedge.train.distributed import DistContext

    shards = [
        list(ShardSampler(11, DistContext(r, 3, r, torch.device("cpu"), initialized=False)))
        for r in range(3)
    ]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_not_under_torchrun_without_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert not launched_by_torchrun()
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    assert launched_by_torchrun()


@pytest.mark.parametrize(("name", "value"), [("WORLD_SIZE", "abc"), ("RANK", "x"),
                                             ("WORLD_SIZE", "1e3"), ("LOCAL_RANK", "-1")])
def test_a_bad_torchrun_variable_is_named(monkeypatch: pytest.MonkeyPatch, name: str,
                                          value: str) -> None:
    from bpedge.train.distributed import init_distributed

    for key, good in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(key, good)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}="):
        init_distributed("cpu")
