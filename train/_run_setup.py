"""What both trainers do before the first epoch: options, data, split, run folder, optimizer,
and the driver that runs them in order (:func:`run_training`).

Data preparation, in order: scan the folder (``on_error``), optionally drop contradictory
near-duplicates (``--dedup``, over all frames since a contradiction pairs a BP frame with an empty
one), keep the BP-positive frames (what the method trains and tests on), optionally keep a seeded
random ``--limit`` of them, then split once with the seed and save RUN/split.json. The empty
frames of subjects that are wholly in train are kept aside (``PreparedData.train_empty``) for a
detector that learns what "no BP" looks like; a subject with a frame in validation or test gives
none, so no empty frame of a held-out subject is ever trained on. The empty frames of subjects
that are wholly in validation (``PreparedData.val_empty``) let the detector's checkpoint be
chosen on its presence call too. A resumed run
takes the split stored in its checkpoint instead (and rewrites RUN/split.json from it), after
checking that the data fingerprint is the one the checkpoint recorded.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bpedge.train._loop import RUN_FILES
from bpedge.train._run_files import write_run_json
from bpedge.train.distributed import DistContext

from bpedge._out_dir import LOCK_NAME, check_out_dir


def made_before_markers(folder: Path) -> bool:
    """A run folder ``train`` made before output markers existed (so ``--resume`` still takes
    it): only run files (and their atomic-write temporaries), with ``last.pt`` and a
    ``config.json`` that is a run's config. Anything else in it, such as a user's own file, and
    the folder is not train's."""
    import json

    names = {p.name for p in folder.iterdir()}
    if not {"last.pt", "config.json"} <= names:
        return False
    temporaries = {n for n in names if n.startswith(".") and n.endswith(".tmp")
                   and any(n.startswith(f".{run_file}.") for run_file in RUN_FILES)}
    # LOCK_NAME: the lock a run holds (kept after it), bpedge's own file like the temporaries
    if not names - temporaries - {LOCK_NAME} <= set(RUN_FILES):
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and {"model", "data"} <= config.keys()

if TYPE_CHECKING:
    import torch
    from bpedge.train._loop import Trainee
    from bpedge.train.data import DatasetIndex, Frame, Split

SPLIT_MODES = ("random", "subject")
ON_ERROR = ("skip", "fail")


#: Most DataLoader worker processes a run may ask for.
MAX_WORKERS = 64
#: Largest seed: NumPy's and torch's generators take 32-bit seeds (a larger one ended the run
#: with "Overflow when unpacking long long").
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class RunOptions:
    """Options every ``bpedge train`` command takes. ``None`` means "the preset's value"."""

    data: Path
    out: Path
    preset: str = "tiny"
    split: str = "subject"
    seed: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "cpu"
    resume: bool = False
    dedup: bool = False
    on_error: str = "fail"
    limit: int | None = None
    workers: int = 0
    progress: bool = True  # progress bars
    verbose: bool = True   # status and per-epoch lines
    #: Subject-wise K-fold: train on fold ``fold`` (1..folds) of ``folds``; both or neither.
    folds: int | None = None
    fold: int | None = None

    def check(self) -> None:
        """ValueError naming the option and the valid values for anything out of range."""
        if self.split not in SPLIT_MODES:
            raise ValueError(f"--split must be one of {SPLIT_MODES}, got {self.split!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"--on-error must be one of {ON_ERROR}, got {self.on_error!r}")
        for name in ("epochs", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            # inf trained to NaN weights that were saved as best.pt
            raise ValueError(f"--lr must be positive and finite, got {self.lr}")
        if not 0 <= self.workers <= MAX_WORKERS:
            # Each worker is a process holding a copy of the dataset: 99999999 forked until the
            # machine ran out of memory, and the orphans kept the run folder locked.
            raise ValueError(f"--workers must be in [0, {MAX_WORKERS}], got {self.workers}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed must be in [0, {MAX_SEED}], got {self.seed}")
        if (self.folds is None) != (self.fold is None):
            raise ValueError("--folds and --fold go together (e.g. --folds 5 --fold 1)")
        if self.folds is not None and self.fold is not None:
            if self.folds < 2 or not 1 <= self.fold <= self.folds:
                raise ValueError(f"need --folds >= 2 and --fold in 1..--folds, got --folds "
                                 f"{self.folds} --fold {self.fold}")
            if self.split != "subject":
                raise ValueError("--folds is a subject-wise K-fold split: use --split subject")
        if not self.data.exists():
            raise FileNotFoundError(f"--data folder {self.data} does not exist")
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"--out {self.out} exists and is not a folder")
        # A run writes config.json, split.json, metrics.* and checkpoints: only into a run folder
        # that train made (or a new or empty one), never over a user's files of those names.
        check_out_dir(self.out, "train", made_before_markers=made_before_markers)

    def overrides(self) -> dict[str, Any]:
        """Model-config fields this run sets explicitly."""
        names = {"seed": self.seed, "epochs": self.epochs, "batch_size": self.batch_size,
                 "lr": self.lr}
        return {k: v for k, v in names.items() if v is not None}


def say(ctx: DistContext, verbose: bool, message: str) -> None:
    """One status line from rank 0 (through tqdm, so progress bars are not torn)."""
    if ctx.is_main and verbose:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stdout)


def data_section(opts: RunOptions) -> dict[str, Any]:
    """The ``data`` entry of a run config."""
    folds = {} if opts.folds is None else {"folds": opts.folds, "fold": opts.fold}
    return {
        "root": str(opts.data.resolve()),
        "split": opts.split,
        **folds,
        "dedup": opts.dedup,
        "on_error": opts.on_error,
        "limit": opts.limit,
    }


@dataclass(frozen=True)
class PreparedData:
    """The scanned index, the split, and the frames of each part (BP-positive only), plus the
    empty frames of train-only subjects (``train_empty``) and of validation-only subjects
    (``val_empty``), each in (subject, frame) order."""

    index: DatasetIndex
    split: Split
    train: tuple[Frame, ...]
    val: tuple[Frame, ...]
    test: tuple[Frame, ...]
    train_empty: tuple[Frame, ...] = ()
    val_empty: tuple[Frame, ...] = ()

    @property
    def fingerprint(self) -> str:
        return self.index.fingerprint


def prepare_data(
    opts: RunOptions, seed: int, ctx: DistContext, resume_from: dict[str, Any] | None
) -> PreparedData:
    """Scan, de-duplicate, keep positives, limit and split (or reload the run's split)."""
    from bpedge.train.data import (
        drop_frames,
        find_contradictory_duplicates,
        make_kfold_split,
        make_split,
        scan_dataset,
    )

    index = scan_dataset(opts.data, on_error=opts.on_error,  # type: ignore[arg-type]
                         progress=opts.progress and ctx.is_main)
    if resume_from is not None and resume_from.get("data_fingerprint") != index.fingerprint:
        raise ValueError(
            f"--resume: the data in {opts.data} is not what the run in {opts.out} trained on "
            f"(fingerprint {index.fingerprint[:12]}..., the checkpoint recorded "
            f"{str(resume_from.get('data_fingerprint'))[:12]}...); start a new run with a new --out"
        )
    frames: tuple[Frame, ...] = index.frames
    if opts.dedup:
        report = find_contradictory_duplicates(frames)
        frames = tuple(drop_frames(frames, report))
        say(ctx, opts.verbose, f"--dedup: dropped {len(report.removed)} frame(s) "
            f"from {len(report.pairs)} contradictory near-duplicate pair(s)")
    positives = [f for f in frames if f.present]
    if not positives:
        raise ValueError(f"no frame in {opts.data} has a non-empty mask; nothing to train on")
    if opts.limit is not None and opts.limit < len(positives):
        # A seeded random subset, so a limited subject split still sees several subjects.
        keep = np.sort(np.random.default_rng(seed).choice(len(positives), opts.limit, replace=False))
        positives = [positives[i] for i in keep]

    if resume_from is not None:
        # The checkpoint's copy is authoritative: it is the split the weights were trained on.
        split = _split_from(resume_from)
    elif opts.folds is not None and opts.fold is not None:
        split = make_kfold_split(positives, opts.folds, opts.fold, seed)
    else:
        split = make_split(positives, opts.split, seed)  # type: ignore[arg-type]
    if ctx.is_main:
        write_run_json(opts.out, "split.json", split.to_json())
    by_key = {f.key: f for f in positives}
    missing = [k for k in (*split.train, *split.val, *split.test) if k not in by_key]
    if missing:
        raise ValueError(
            f"{len(missing)} frame(s) of the run's split are not usable in {opts.data} "
            f"(e.g. {missing[:3]}); was the data or --dedup/--limit changed?"
        )
    train = tuple(by_key[k] for k in split.train)
    val = tuple(by_key[k] for k in split.val)
    test = tuple(by_key[k] for k in split.test)
    subjects = {part: {f.subject for f in frames_of} for part, frames_of in
                (("train", train), ("val", val), ("test", test))}
    train_only = subjects["train"] - subjects["val"] - subjects["test"]
    val_only = subjects["val"] - subjects["train"] - subjects["test"]

    def empty_frames_of(kept: set[str]) -> tuple[Frame, ...]:
        return tuple(sorted((f for f in frames if not f.present and f.subject in kept),
                            key=lambda f: (f.subject, f.frame)))

    return PreparedData(index=index, split=split, train=train, val=val, test=test,
                        train_empty=empty_frames_of(train_only),
                        val_empty=empty_frames_of(val_only))


def _split_from(payload: dict[str, Any]) -> Split:
    from bpedge.train.data import Split

    return Split.from_json(payload["split"])


def build_optimizer(
    name: str, params: Any, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``adam`` (the detector), ``rmsprop`` (the segmenters) or ``sgd`` (momentum 0.9)."""
    import torch

    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        # Keras' RMSprop (what the method was trained with): rho 0.9, eps 1e-7; PyTorch's
        # defaults (alpha 0.99, eps 1e-8) adapt more slowly.
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam', 'rmsprop' or 'sgd'")


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run left behind."""

    run_dir: Path
    history: list[dict[str, Any]]
    metric_name: str

    @property
    def best(self) -> dict[str, Any]:
        """The epoch row with the best validation metric."""
        return max(self.history, key=lambda r: r["val_metric"])

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


@dataclass(frozen=True)
class TrainingStart:
    """What a trainer has when its run folder and data are ready: the process group, the data
    and split, and the checkpoint being resumed (None for a new run)."""

    ctx: DistContext
    data: PreparedData
    resume_from: dict[str, Any] | None


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy's global generator and Python's ``random`` (model init, dropout)."""
    import random

    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run_training(opts: RunOptions, config: dict[str, Any], *, seed: int, epochs: int,
                 batch_size: int, label: str, metric_name: str,
                 make_trainee: Callable[[TrainingStart], Trainee],
                 ema_decay: float = 0.0, lr_schedule: str = "constant",
                 defaults: dict[str, Any] | None = None) -> TrainResult:
    """The one trainer driver: process group, run folder (refusing to overwrite a run, or the
    checkpoint to resume), seeds, data and split, RUN/config.json, then ``make_trainee`` (the
    model, its datasets and payload) and the epoch loop; the process group is shut down however
    it ends. ``defaults`` (config-shaped field defaults) lets ``--resume`` continue a run saved
    before a config field was added."""
    from bpedge.train._loop import (
        LoopSettings,
        prepare_run_dir,
        remove_stale_temporaries,
        run_epochs,
        write_config,
    )
    from bpedge.train._run_files import check_run_files
    from bpedge.train.distributed import init_distributed, shutdown

    from bpedge._out_dir import claim_out_dir, lock_out_dir

    ctx = init_distributed(opts.device)
    held = contextlib.ExitStack()
    try:
        resume_from = prepare_run_dir(opts.out, config, opts.resume, defaults)
        if ctx.is_main:
            claim_out_dir(opts.out, "train", made_before_markers=made_before_markers)
            # One run per folder: a second (a --resume started while the first still runs)
            # would write the same checkpoints and remove the first's temporary files.
            held.enter_context(lock_out_dir(opts.out, "train"))
            remove_stale_temporaries(opts.out)
            # Before any work: a file of the user's at a run file's name is named and kept.
            check_run_files(opts.out, RUN_FILES, adopt=resume_from is not None)
        seed_everything(seed)
        data = prepare_data(opts, seed, ctx, resume_from)
        if ctx.is_main:
            write_config(opts.out, config)
        trainee = make_trainee(TrainingStart(ctx, data, resume_from))
        settings = LoopSettings(
            run_dir=opts.out, epochs=epochs, batch_size=batch_size, seed=seed,
            workers=opts.workers, label=label, progress=opts.progress, verbose=opts.verbose,
            ema_decay=ema_decay, lr_schedule=lr_schedule,
        )
        history = run_epochs(trainee, settings, ctx, resume_from)
    finally:
        held.close()
        shutdown(ctx)
    return TrainResult(run_dir=opts.out, history=history, metric_name=metric_name)


__all__ = [
    "PreparedData", "RunOptions", "TrainResult", "TrainingStart", "build_optimizer",
    "data_section", "prepare_data", "run_training", "say", "seed_everything",
]
