"""The shared epoch loop on a toy regression: metrics, checkpoints, resume, run-folder rules."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from bpedge.train._loop import (
    LoopSettings,
    WeightAverage,
    config_differences,
    lr_factor,
    prepare_run_dir,
    run_epochs,
    write_config,
)
from bpedge.train.checkpoint import load_checkpoint
from bpedge.train.distributed import DistContext

CPU = DistContext(0, 1, 0, torch.device("cpu"), initialized=False)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # On a 2-core machine shared with other test processes, two spinning intra-op threads make
    # these tiny models 10x slower than one; restore the setting for the rest of the session.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Loss(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.model(x), y)


class ToyTrainee:
    """y = 3x - 1 plus noise, fitted by a linear layer behind dropout (so RNG state matters)."""

    metric_name = "val_neg_mse"

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1, 1))
        self.loss_module = _Loss(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(64, 1, generator=g)
        y = 3 * x - 1 + 0.01 * torch.randn(64, 1, generator=g)
        self.train_set = torch.utils.data.TensorDataset(x[:48], y[:48])
        self.val_set = torch.utils.data.TensorDataset(x[48:], y[48:])

    def evaluate_batch(self, batch: list[torch.Tensor]) -> tuple[float, float, int]:
        x, y = batch
        per_sample = ((self.model(x) - y) ** 2).mean(dim=1)
        return float(per_sample.sum()), float(-per_sample.sum()), int(x.shape[0])

    def static_payload(self) -> dict[str, Any]:
        return {
            "kind": "segmenter", "arch": "toy", "model_config": {}, "config": {"toy": True},
            "normalization": {"mean": 0.0, "std": 1.0}, "input_hw": [1, 1],
        }


def _settings(run_dir: Path, epochs: int) -> LoopSettings:
    return LoopSettings(run_dir=run_dir, epochs=epochs, batch_size=8, seed=5, progress=False)


def test_loop_learns_and_writes_metrics_and_checkpoints(tmp_path: Path) -> None:
    history = run_epochs(ToyTrainee(), _settings(tmp_path, 4), CPU)

    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["val_loss"]) == pytest.approx(history[-1]["val_loss"])
    summary = json.loads((tmp_path / "metrics.json").read_text())
    best = max(history, key=lambda r: r["val_metric"])
    assert summary["best_epoch"] == best["epoch"]

    last, best_ckpt = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["epoch"] == 4
    assert best_ckpt["epoch"] == best["epoch"]
    assert best_ckpt["best_metric"] == pytest.approx(best["val_metric"])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_resume_continues_exactly_where_the_run_stopped(tmp_path: Path) -> None:
    straight = run_epochs(ToyTrainee(), _settings(tmp_path / "a", 4), CPU)

    run_epochs(ToyTrainee(), _settings(tmp_path / "b", 2), CPU)
    # A fresh process would rebuild the trainee from scratch; resume must restore all state.
    resumed = run_epochs(
        ToyTrainee(seed=123), _settings(tmp_path / "b", 4), CPU,
        resume_from=load_checkpoint(tmp_path / "b" / "last.pt"),
    )
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    rows = list(csv.DictReader((tmp_path / "b" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


def test_weight_average_is_the_decayed_mean_and_swaps_back() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    average = WeightAverage(model, 0.5)
    expected = 0.0
    for step, value in enumerate([4.0, 8.0, 2.0], start=1):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model[1].num_batches_tracked += 1
        average.update(model)
        d = min(0.5, (1 + step) / (10 + step))  # the warm-up decay, then 0.5
        expected = d * expected + (1 - d) * value
        assert float(average.state["0.weight"]) == pytest.approx(expected)
    assert int(average.state["1.num_batches_tracked"]) == 3  # counters are copied, not averaged
    with average.swapped_in(model) as raw:
        assert float(model[0].weight.detach()) == pytest.approx(expected)
        assert float(raw["0.weight"]) == 2.0
    assert float(model[0].weight.detach()) == 2.0
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


def test_weight_average_is_what_is_validated_saved_and_resumed(tmp_path: Path) -> None:
    def settings(run_dir: Path, epochs: int) -> LoopSettings:
        return LoopSettings(run_dir=run_dir, epochs=epochs, batch_size=8, seed=5,
                            progress=False, ema_decay=0.9)

    straight = run_epochs(ToyTrainee(), settings(tmp_path / "a", 4), CPU)
    plain = run_epochs(ToyTrainee(), _settings(tmp_path / "p", 4), CPU)
    # Same optimiser steps (the training loss does not see the average), other validation.
    assert [r["train_loss"] for r in straight] == pytest.approx([r["train_loss"] for r in plain])
    assert [r["val_loss"] for r in straight] != pytest.approx([r["val_loss"] for r in plain])
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    assert last["ema_updates"] == 4 * 6  # 48 samples in batches of 8, 4 epochs
    assert not torch.equal(last["model_state"]["1.weight"], last["raw_model_state"]["1.weight"])
    trainee = ToyTrainee()
    trainee.model.load_state_dict(last["model_state"])
    trainee.model.eval()
    x, y = trainee.val_set.tensors
    with torch.no_grad():
        mse = float(((trainee.model(x) - y) ** 2).mean())
    assert mse == pytest.approx(straight[-1]["val_loss"], rel=1e-5)  # the average was validated

    run_epochs(ToyTrainee(), settings(tmp_path / "b", 2), CPU)
    resumed = run_epochs(ToyTrainee(seed=123), settings(tmp_path / "b", 4), CPU,
                         resume_from=load_checkpoint(tmp_path / "b" / "last.pt"))
    for a, b in zip(straight, resumed):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="no weight average"):
        run_epochs(ToyTrainee(), settings(tmp_path / "p", 5), CPU,
                   resume_from=load_checkpoint(tmp_path / "p" / "last.pt"))


def test_a_cosine_schedule_sets_each_epochs_rate_and_resumes_on_it(tmp_path: Path) -> None:
    def settings(run_dir: Path, epochs: int) -> LoopSettings:
        return LoopSettings(run_dir=run_dir, epochs=epochs, batch_size=8, seed=5,
                            progress=False, lr_schedule="cosine")

    straight = run_epochs(ToyTrainee(), settings(tmp_path / "a", 4), CPU)
    # Epoch e of 4 at 0.05 * (1 + cos(pi (e - 1) / 4)) / 2: full, 85%, 50%, 15% of the rate.
    factors = [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [r["lr"] for r in straight] == pytest.approx([0.05 * f for f in factors])
    assert [lr_factor("cosine", e, 4) for e in (1, 2, 3, 4)] == pytest.approx(factors)
    plain = run_epochs(ToyTrainee(), _settings(tmp_path / "p", 4), CPU)
    assert [r["lr"] for r in plain] == [0.05] * 4
    assert straight[1]["train_loss"] != pytest.approx(plain[1]["train_loss"])

    # Killed after epoch 2 of 4, then resumed: the optimizer state it saved holds epoch 2's
    # rate, and epoch 3 still gets its own.
    class Killed(Exception):
        """Stands in for the SIGKILL that stops a real run."""

    def kill_after_two(row: dict[str, Any]) -> None:
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run_epochs(ToyTrainee(), dataclasses.replace(settings(tmp_path / "b", 4),
                                                     on_epoch=kill_after_two), CPU)
    resumed = run_epochs(ToyTrainee(seed=123), settings(tmp_path / "b", 4), CPU,
                         resume_from=load_checkpoint(tmp_path / "b" / "last.pt"))
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in straight])
    for a, b in zip(straight, resumed):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        run_epochs(ToyTrainee(), LoopSettings(run_dir=tmp_path / "c", epochs=2, batch_size=8,
                                              seed=5, progress=False, lr_schedule="step"), CPU)
    assert not (tmp_path / "c").exists()


def test_resume_after_a_kill_between_the_first_epochs_checkpoints_starts_that_epoch_again(
        tmp_path: Path) -> None:
    # best.pt is written before last.pt and the metrics: a kill in between left a folder that
    # the plain command sent to --resume and --resume sent back (no last.pt).
    config = {"kind": "toy", "model": {"lr": 0.05, "epochs": 2}}
    (tmp_path / "best.pt").write_bytes(b"orphan of epoch 1")
    with pytest.raises(ValueError, match="pass --resume"):
        prepare_run_dir(tmp_path, config, resume=False)
    assert prepare_run_dir(tmp_path, config, resume=True) is None  # epoch 1 starts again
    (tmp_path / "metrics.json").write_text("{}")  # a run past epoch 1 without last.pt: refused
    for resume in (True, False):  # by both commands, with the same advice
        with pytest.raises(ValueError, match="holds best.pt but not last.pt.*new --out"):
            prepare_run_dir(tmp_path, config, resume=resume)


def test_non_finite_weights_after_an_epoch_are_never_saved(tmp_path: Path) -> None:
    trainee = ToyTrainee()
    for group in trainee.optimizer.param_groups:
        group["lr"] = float("inf")  # the first step makes the weights non-finite
    # One batch an epoch: its loss is finite, the step after it is what breaks the weights.
    settings = LoopSettings(run_dir=tmp_path, epochs=2, batch_size=48, seed=5, progress=False)
    with pytest.raises(FloatingPointError, match="validation loss became (nan|inf)"):
        run_epochs(trainee, settings, CPU)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_run_folder_rules(tmp_path: Path) -> None:
    config = {"kind": "toy", "model": {"lr": 0.05, "epochs": 2}, "data": {"root": "/a"}}
    assert prepare_run_dir(tmp_path, config, resume=False) is None
    with pytest.raises(ValueError, match="no last.pt"):
        prepare_run_dir(tmp_path, config, resume=True)

    trainee = ToyTrainee()
    write_config(tmp_path, config)
    trainee.static_payload = lambda: {**ToyTrainee.static_payload(trainee), "config": config}
    run_epochs(trainee, _settings(tmp_path, 1), CPU)

    with pytest.raises(ValueError, match="--resume.*new --out"):
        prepare_run_dir(tmp_path, config, resume=False)
    # More epochs and a moved data folder are fine; a changed hyper-parameter is not.
    longer = {**config, "model": {"lr": 0.05, "epochs": 9}, "data": {"root": "/b"}}
    assert prepare_run_dir(tmp_path, longer, resume=True)["epoch"] == 1
    changed = {**config, "model": {"lr": 0.01, "epochs": 2}}
    with pytest.raises(ValueError, match=r"model\.lr: 0\.05 -> 0\.01"):
        prepare_run_dir(tmp_path, changed, resume=True)


def test_config_differences_walks_nested_dicts() -> None:
    a = {"model": {"input_hw": (160, 224), "lr": 1.0}, "x": 1}
    assert config_differences(a, {"model": {"input_hw": [160, 224], "lr": 1.0}, "x": 1}) == []
    diffs = config_differences(a, {"model": {"input_hw": [160, 224]}, "x": 2})
    assert diffs == ["model.lr: 1.0 -> '<unset>'", "x: 1 -> 2"]


def test_config_differences_takes_a_missing_stored_field_as_its_default() -> None:
    stored = {"model": {"lr": 1.0}}
    defaults = {"model": {"lr": 0.1, "ema_decay": 0.0, "pair": (1, 2)}}
    same = {"model": {"lr": 1.0, "ema_decay": 0.0, "pair": [1, 2]}}
    assert config_differences(stored, same, defaults) == []
    changed = {"model": {"lr": 1.0, "ema_decay": 0.5, "pair": [1, 2]}}
    assert config_differences(stored, changed, defaults) == [
        "model.ema_decay: '<unset>' (default 0.0) -> 0.5"]
    # A stored value is compared as stored, whatever the default; without defaults, as before.
    assert config_differences(stored, {"model": {"lr": 0.1}}, defaults) == ["model.lr: 1.0 -> 0.1"]
    assert config_differences(stored, same) == ["model.ema_decay: '<unset>' -> 0.0",
                                                "model.pair: '<unset>' -> [1, 2]"]
