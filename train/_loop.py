"""The epoch loop shared by the detector and segmenter trainers.

It owns what is the same for both: the run folder (config.json, refusing to overwrite a run,
``--resume``), seeded shuffling (``DistributedSampler`` + ``set_epoch``, also when alone, so a
resumed run sees the same order), progress bars, per-epoch metrics (RUN/metrics.csv and
RUN/metrics.json), and checkpoints (RUN/best.pt by validation metric, then RUN/last.pt, each
written atomically). What differs (the model, its loss and its metric) comes in a
:class:`Trainee`.

With ``LoopSettings.ema_decay`` > 0 the loop also keeps an exponential moving average of the
weights (:class:`WeightAverage`, updated after every optimiser step): that average is what each
epoch validates and what best.pt and last.pt store as ``model_state`` (what export and
evaluation load); last.pt keeps the optimiser's own weights as ``raw_model_state`` for
``--resume``. Small validation sets make the per-epoch metric swing from epoch to epoch; the
average moves slowly, so the epoch it picks depends less on one lucky or unlucky step.

Order of writes after an epoch: best.pt (if improved), last.pt, metrics files. A process killed at
any point therefore loses at most the epoch in progress: ``--resume`` restarts after the epoch in
last.pt, and the metrics files are rebuilt from the history stored in last.pt, so every epoch
appears exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bpedge.train._run_files import (
    remove_abandoned_temporaries,
    write_run_file,
    write_run_json,
    write_run_text,
)
from bpedge.train.checkpoint import (
    capture_rng_state,
    checkpoint_writer,
    load_checkpoint,
    restore_rng_state,
)
from bpedge.train.distributed import (
    DistContext,
    ShardSampler,
    all_reduce_sums,
    broadcast_buffers,
    wrap_model,
)

from bpedge._version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds")

#: Files a run folder holds (all written atomically, and replaced only while they hold what the
#: run recorded writing: :mod:`bpedge.train._run_files`).
RUN_FILES = (
    "last.pt", "best.pt", "metrics.csv", "metrics.json", "config.json", "split.json",
    "detector_boxes.json",
)

#: Config entries that may differ between a run and its ``--resume``: more epochs extend a run;
#: the data folder may move (the data fingerprint is checked instead).
RESUMABLE_CHANGES = (("model", "epochs"), ("data", "root"))


class Trainee(Protocol):
    """What a trainer hands the loop.

    ``loss_module(*batch)`` returns the scalar training loss of a batch (it wraps ``model``, so
    DistributedDataParallel can wrap the whole forward); ``evaluate_batch(batch)`` runs ``model``
    in eval mode and returns ``(loss_sum, metric_sum, count)`` over the batch's samples.
    """

    model: nn.Module
    loss_module: nn.Module
    optimizer: torch.optim.Optimizer
    train_set: Dataset[Any]
    val_set: Dataset[Any]
    metric_name: str

    def evaluate_batch(self, batch: Sequence[torch.Tensor]) -> tuple[float, float, int]: ...

    def static_payload(self) -> dict[str, Any]: ...


class HeldParts:
    """What every trainee holds: the model, its loss module, the optimizer, the two datasets and
    the checkpoint payload (``static_payload`` returns it). Subclasses add ``metric_name`` and
    ``evaluate_batch``."""

    def __init__(self, model: nn.Module, loss_module: nn.Module,
                 optimizer: torch.optim.Optimizer, train_set: Dataset[Any],
                 val_set: Dataset[Any], payload: dict[str, Any]) -> None:
        self.model, self.loss_module, self.optimizer = model, loss_module, optimizer
        self.train_set, self.val_set = train_set, val_set
        self._payload = payload

    def static_payload(self) -> dict[str, Any]:
        return self._payload


class WeightAverage:
    """Exponential moving average of a model's floating-point weights and buffers (integer
    buffers, BatchNorm's batch counter, are copied). The decay after ``t`` updates is
    ``min(decay, (1 + t) / (10 + t))``, so the first steps are not dominated by the random
    initial weights."""

    def __init__(self, model: nn.Module, decay: float, state: dict[str, Any] | None = None,
                 updates: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, updates
        source = state if state is not None else model.state_dict()
        self.state = {k: v.detach().clone() for k, v in source.items()}

    def update(self, model: nn.Module) -> None:
        import torch

        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                avg = self.state[k]
                if avg.is_floating_point():
                    avg.lerp_(v.detach(), 1.0 - d)
                else:
                    avg.copy_(v)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[dict[str, Any]]:
        """The average loaded into ``model`` for the block; yields the model's own weights (a
        copy), which are put back afterwards."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield raw
        finally:
            model.load_state_dict(raw)


@dataclass
class LoopSettings:
    """How to run the loop: where to write, how long, how big the batches are (per process)."""

    run_dir: Path
    epochs: int
    batch_size: int
    seed: int
    workers: int = 0
    label: str = "train"
    progress: bool = True  # progress bars
    verbose: bool = True   # one summary line per epoch
    # Called on every rank with each epoch's row once rank 0 has written it (e.g. a study runner).
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    # > 0: validate and save an exponential moving average of the weights (WeightAverage).
    ema_decay: float = 0.0
    # "constant": the optimizer's learning rate throughout; "cosine": epoch e of E trains at
    # lr * (1 + cos(pi * (e - 1) / E)) / 2 (lr_factor), from the full rate down to near 0, so
    # the last epochs settle instead of bouncing between minima at the full rate.
    lr_schedule: str = "constant"


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of 1-based ``epoch`` of ``epochs`` as a fraction of the configured one."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


# --- Run folder -----------------------------------------------------------------------------


def prepare_run_dir(run_dir: Path, config: dict[str, Any], resume: bool,
                    defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Check ``run_dir`` against ``--resume`` and return the checkpoint to resume from (or None).

    Without ``resume`` a folder that already holds a checkpoint is refused (ValueError saying to
    pass ``--resume`` or a new ``--out``). With it, RUN/last.pt must exist and its stored config
    must equal ``config`` except for :data:`RESUMABLE_CHANGES`; ``defaults`` (see
    :func:`config_differences`) lets a run saved before a config field existed resume. Writes
    nothing; see :func:`remove_stale_temporaries` for the clean-up a killed run needs.
    """
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    # A finished or started run whose last.pt is gone (removed to save space: it is as large as
    # best.pt) has nothing to resume from and must not be trained over: both commands say so,
    # where each sent the user to the other.
    lost_last = (not last.is_file() and best.is_file()
                 and (run_dir / "metrics.json").exists())
    if lost_last:
        raise ValueError(f"{run_dir} holds best.pt but not last.pt, which a run continues from: "
                         "its model is best.pt; to train again, choose a new --out folder")
    if not resume:
        held = [p.name for p in (last, best) if p.exists()]
        if held:
            raise ValueError(
                f"{run_dir} already holds a checkpoint ({', '.join(held)}); pass --resume to "
                "continue that run, or choose a new --out folder"
            )
        return None
    if not last.is_file():
        if best.is_file():
            # A kill between the first epoch's two checkpoint writes (best.pt, then last.pt;
            # metrics come after both, see lost_last): nothing to resume, that epoch starts
            # again, and the plain command pointed here.
            return None
        raise ValueError(f"--resume: {run_dir} has no last.pt to resume from; run without --resume")
    payload = load_checkpoint(last)
    diffs = config_differences(payload.get("config", {}), config, defaults)
    if diffs:
        raise ValueError(
            f"--resume: the options differ from the run in {run_dir}: " + "; ".join(diffs)
            + ". Resume with the original options, or start a new run with a new --out"
        )
    return payload


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the half-written temporary files a killed run left beside its outputs
    (``.last.pt.<random>.tmp``): only those the run recorded making that are still those files
    (:func:`bpedge.train._run_files.remove_abandoned_temporaries`; the caller holds the run
    folder's lock), never a file of the user's that is merely named like one. Returns what was
    removed."""
    return remove_abandoned_temporaries(run_dir)


def config_differences(stored: dict[str, Any], given: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> list[str]:
    """Human-readable ``key: stored -> given`` lines for entries that differ (nested dicts are
    walked; lists and tuples compare equal when their items do).

    ``defaults`` is shaped like the config and holds the default of each field that may be
    missing from ``stored``: a run saved before a field was added ran with that field's default
    (new options are added switched off), so a missing key equals its default and only a given
    value other than the default is a difference.
    """
    out: list[str] = []
    _walk_diff(_jsonable(stored), _jsonable(given), _jsonable(defaults or {}), (), out)
    return out


def _walk_diff(a: Any, b: Any, default: Any, path: tuple[str, ...], out: list[str]) -> None:
    if path in RESUMABLE_CHANGES:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        under = default if isinstance(default, dict) else {}
        for k in sorted(set(a) | set(b)):
            if k not in a and k in under:
                if b.get(k, "<unset>") != under[k]:
                    out.append(f"{'.'.join((*path, str(k)))}: '<unset>' (default {under[k]!r}) "
                               f"-> {b.get(k, '<unset>')!r}")
                continue
            _walk_diff(a.get(k, "<unset>"), b.get(k, "<unset>"), under.get(k),
                       (*path, str(k)), out)
        return
    if a != b:
        out.append(f"{'.'.join(path)}: {a!r} -> {b!r}")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_run_json(run_dir, "config.json", config)


# --- Metrics files --------------------------------------------------------------------------


def write_metrics(run_dir: Path, history: Sequence[dict[str, Any]], metric_name: str) -> None:
    """RUN/metrics.csv (one row per epoch, :data:`METRIC_COLUMNS`) and RUN/metrics.json."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in METRIC_COLUMNS})
    write_run_text(run_dir, "metrics.csv", buf.getvalue())
    best = max(history, key=lambda r: r["val_metric"], default=None)
    write_run_json(run_dir, "metrics.json", {
        "metric_name": metric_name,
        "best_epoch": best["epoch"] if best else None,
        "best_val_metric": best["val_metric"] if best else None,
        "epochs": list(history),
    })


# --- The loop -------------------------------------------------------------------------------


def run_epochs(
    trainee: Trainee,
    settings: LoopSettings,
    ctx: DistContext,
    resume_from: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``trainee`` from epoch 1 (or after ``resume_from["epoch"]``) to ``settings.epochs``.

    Returns the full history (one dict per epoch with :data:`METRIC_COLUMNS`). Only rank 0
    writes files; every rank returns the same all-reduced history.
    """
    from torch.utils.data import DataLoader, DistributedSampler
    from tqdm.auto import tqdm

    start_epoch, best_metric = 0, -math.inf
    history: list[dict[str, Any]] = []
    # The configured rates, before a resumed optimizer state overwrites them with a scheduled one.
    base_lrs = [float(g["lr"]) for g in trainee.optimizer.param_groups]
    lr_factor(settings.lr_schedule, 1, max(settings.epochs, 1))  # an unknown schedule: refused now
    average = (WeightAverage(trainee.model, settings.ema_decay)
               if settings.ema_decay != 0 else None)
    if resume_from is not None:
        if average is not None:
            if "raw_model_state" not in resume_from:
                raise ValueError("--resume: this run's last.pt has no weight average; resume "
                                 "with the options it was started with")
            trainee.model.load_state_dict(resume_from["raw_model_state"])
            average = WeightAverage(trainee.model, settings.ema_decay,
                                    resume_from["model_state"], int(resume_from["ema_updates"]))
        else:
            trainee.model.load_state_dict(resume_from["model_state"])
        # load_state_dict moves the optimizer state onto the parameters' device.
        trainee.optimizer.load_state_dict(resume_from["optimizer_state"])
        restore_rng_state(resume_from["rng"])
        start_epoch = int(resume_from["epoch"])
        best_metric = float(resume_from["best_metric"])
        history = [dict(r) for r in resume_from["history"]][:start_epoch]
        if ctx.is_main:
            write_metrics(settings.run_dir, history, trainee.metric_name)

    train_module = wrap_model(trainee.loss_module, ctx)
    # Shuffled from the seed and the epoch, so the order does not depend on resuming.
    sampler: DistributedSampler[Any] = DistributedSampler(
        trainee.train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
        seed=settings.seed, drop_last=False,
    )
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(
        trainee.train_set, batch_size=settings.batch_size, sampler=sampler,
        num_workers=settings.workers, pin_memory=pin,
    )
    val_loader = DataLoader(
        trainee.val_set, batch_size=settings.batch_size,
        sampler=ShardSampler(len(trainee.val_set), ctx),  # type: ignore[arg-type]
        num_workers=settings.workers, pin_memory=pin,
    )
    show = settings.progress and ctx.is_main
    epochs_bar = tqdm(
        total=settings.epochs, initial=start_epoch, desc=f"{settings.label} epochs",
        unit="epoch", disable=not show, dynamic_ncols=True,
    )
    try:
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            factor = lr_factor(settings.lr_schedule, epoch, settings.epochs)
            for group, base in zip(trainee.optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            set_epoch = getattr(trainee.train_set, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)
            train_loss = _train_one_epoch(
                trainee, train_module, train_loader, ctx, epoch, settings, show, tqdm, average
            )
            if average is None:
                val_loss, val_metric = _evaluate(trainee, val_loader, ctx)
                saved, raw_state = trainee.model.state_dict(), None
            else:
                with average.swapped_in(trainee.model) as raw_state:
                    val_loss, val_metric = _evaluate(trainee, val_loader, ctx)
                saved = average.state
            if not math.isfinite(val_loss):
                # The last optimiser step can leave non-finite weights behind a finite training
                # loss: nothing of this epoch is saved (best.pt must never hold them).
                raise FloatingPointError(f"validation loss became {val_loss} in epoch {epoch}; "
                                         "lower --lr or check the data")
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_metric": val_metric,
                "lr": float(trainee.optimizer.param_groups[0]["lr"]),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(row)
            improved = val_metric > best_metric
            if improved:
                best_metric = val_metric
            if ctx.is_main:
                payload = {
                    **trainee.static_payload(),
                    "model_state": saved,
                    "optimizer_state": trainee.optimizer.state_dict(),
                    "epoch": epoch,
                    "rng": capture_rng_state(),
                    "metric_name": trainee.metric_name,
                    "best_metric": best_metric,
                    "history": [dict(r) for r in history],
                    "bpedge_version": __version__,
                }
                if average is not None:
                    payload.update(raw_model_state=raw_state, ema_updates=average.updates)
                write = checkpoint_writer(payload, settings.run_dir / "last.pt")
                if improved:
                    write_run_file(settings.run_dir, "best.pt", write)
                write_run_file(settings.run_dir, "last.pt", write)
                write_metrics(settings.run_dir, history, trainee.metric_name)
                epochs_bar.update(1)
                if settings.verbose:
                    tqdm.write(_summary_line(row, settings.epochs, trainee.metric_name, improved))
            if settings.on_epoch is not None:
                settings.on_epoch(row)
    finally:
        epochs_bar.close()
    return history


def _train_one_epoch(
    trainee: Trainee,
    train_module: nn.Module,
    loader: Any,
    ctx: DistContext,
    epoch: int,
    settings: LoopSettings,
    show: bool,
    tqdm: Any,
    average: WeightAverage | None = None,
) -> float:
    train_module.train()
    loss_sum, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", leave=False,
               disable=not show, dynamic_ncols=True)
    for batch in bar:
        batch = [t.to(ctx.device, non_blocking=True) for t in batch]
        loss = train_module(*batch)
        if not bool(loss.isfinite()):
            raise FloatingPointError(
                f"training loss became {float(loss)} in epoch {epoch}; lower --lr or check the data"
            )
        trainee.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainee.optimizer.step()
        if average is not None:
            average.update(trainee.model)
        n = int(batch[0].shape[0])
        loss_sum += float(loss.detach()) * n
        count += n
        bar.set_postfix(loss=f"{loss_sum / count:.4f}")
    loss_sum, count_f = all_reduce_sums([loss_sum, float(count)], ctx)
    return loss_sum / max(count_f, 1.0)


def _evaluate(trainee: Trainee, loader: Any, ctx: DistContext) -> tuple[float, float]:
    import torch

    broadcast_buffers(trainee.model, ctx)  # every shard scores the model rank 0 will save
    trainee.model.eval()
    loss_sum, metric_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for batch in loader:
            batch = [t.to(ctx.device, non_blocking=True) for t in batch]
            ls, ms, n = trainee.evaluate_batch(batch)
            loss_sum, metric_sum, count = loss_sum + ls, metric_sum + ms, count + n
    loss_sum, metric_sum, count_f = all_reduce_sums([loss_sum, metric_sum, float(count)], ctx)
    if count_f == 0:
        raise ValueError("the validation split is empty; use more frames or a larger val fraction")
    return loss_sum / count_f, metric_sum / count_f


def _summary_line(row: dict[str, Any], epochs: int, metric_name: str, improved: bool) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  {metric_name} {row['val_metric']:.4f}"
        f"{' (best)' if improved else '       '}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )


__all__ = [
    "LR_SCHEDULES",
    "METRIC_COLUMNS",
    "RESUMABLE_CHANGES",
    "RUN_FILES",
    "LoopSettings",
    "Trainee",
    "WeightAverage",
    "config_differences",
    "lr_factor",
    "prepare_run_dir",
    "remove_stale_temporaries",
    "run_epochs",
    "write_config",
    "write_metrics",
]
