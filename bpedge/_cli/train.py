"""``bpedge train detector|segmenter``: train the cascade's models on a Kaggle-layout folder.

Both commands write RUN (``--out``): config.json, split.json, metrics.csv/json, last.pt every
epoch and best.pt by validation metric. Run one under ``torchrun --nproc_per_node N`` to train
data-parallel (``--batch-size`` is then per process). torch is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bpedge._cli._errors import command_errors

_HELP_PRESET = "Sizes and hyper-parameters: 'tiny' (CPU-sized) or 'paper' (published)."


def _common(
    data: Path, out: Path, preset: str, split: str, seed: int | None, epochs: int | None,
    batch_size: int | None, lr: float | None, device: str, resume: bool, dedup: bool,
    on_error: str, limit: int | None, workers: int, progress: bool,
    folds: int | None = None, fold: int | None = None,
) -> dict[str, Any]:
    return {
        "data": data, "out": out, "preset": preset, "split": split, "seed": seed,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device,
        "resume": resume, "dedup": dedup, "on_error": on_error, "limit": limit,
        "workers": workers, "progress": progress, "folds": folds, "fold": fold,
    }


def _report(result: Any) -> None:
    best = result.best
    typer.echo(
        f"done: best {result.metric_name} {best['val_metric']:.4f} at epoch {best['epoch']} "
        f"-> {result.best_checkpoint}"
    )


# Options shared by both commands (typer needs them spelt out per command).
DATA = typer.Option(..., "--data", help="Folder of {subject}_{frame}.tif + _mask.tif (or its parent).")
OUT = typer.Option(..., "--out", help="Run folder to write (refused if it holds a checkpoint, "
                   "unless --resume).")
PRESET = typer.Option("tiny", "--preset", help=_HELP_PRESET)
SPLIT = typer.Option("subject", "--split", help="'subject' (no subject on two sides; the "
                     "default) or 'random' (as published; near-duplicate frames on both sides).")
FOLDS = typer.Option(None, "--folds", help="Subject-wise K-fold: the number of folds (with "
                     "--fold).")
FOLD = typer.Option(None, "--fold", help="Subject-wise K-fold: which fold (1..--folds) to train.")
SEED = typer.Option(None, "--seed", help="Seed for the split, initialisation and shuffling "
                    "(default: the preset's).")
EPOCHS = typer.Option(None, "--epochs", help="Epochs (default: the preset's).")
BATCH = typer.Option(None, "--batch-size", help="Batch size per process (default: the preset's).")
LR = typer.Option(None, "--lr", help="Learning rate (default: the preset's).")
DEVICE = typer.Option("cpu", "--device", help="'cpu' or 'cuda'.")
RESUME = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt.")
DEDUP = typer.Option(False, "--dedup", help="Drop empty frames that near-duplicate a BP frame "
                     "of the same subject (contradictory labels).")
ON_ERROR = typer.Option("fail", "--on-error", help="Bad files: 'fail' (list them and stop) or "
                        "'skip' (leave them out).")
LIMIT = typer.Option(None, "--limit", help="Use a seeded random N of the BP frames (quick runs).")
WORKERS = typer.Option(0, "--workers", help="DataLoader worker processes.")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Progress bars and epoch lines.")
WEIGHTS = typer.Option(None, "--weights", "--backbone-weights",
                       help="Initial weights: a local state_dict file of the whole detector or of "
                       "its backbone (torchvision ResNet keys); nothing is downloaded.")
DETECTOR = typer.Option(None, "--detector", help="Detector run folder or checkpoint (for "
                        "--crop detector).")


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(
        help="Train the RetinaNet detector or a U-Net/M-Net segmenter.", no_args_is_help=True,
        epilog="Example: bpedge train detector --data phantom --out runs/detector --preset tiny",
    )

    @train_app.command("detector", epilog="""Examples:

  bpedge train detector --data phantom --out runs/detector --preset tiny --split subject

  bpedge train detector --data kaggle/train --out runs/det_g3 --preset paper --gamma 3 --dedup

  bpedge train detector --data phantom --out runs/detector --preset tiny --split subject --resume
""")
    @command_errors
    def detector(
        data: Path = DATA, out: Path = OUT, preset: str = PRESET, split: str = SPLIT,
        seed: int | None = SEED, epochs: int | None = EPOCHS, batch_size: int | None = BATCH,
        lr: float | None = LR,
        gamma: float | None = typer.Option(None, "--gamma", help="Focal-loss gamma."),
        alpha: float | None = typer.Option(None, "--alpha", help="Focal-loss alpha."),
        backbone: str | None = typer.Option(
            None, "--backbone", help="resnet18 | resnet34 | resnet50 | resnet_tiny."
        ),
        weights: Path | None = WEIGHTS,
        device: str = DEVICE, resume: bool = RESUME, dedup: bool = DEDUP,
        on_error: str = ON_ERROR, limit: int | None = LIMIT, workers: int = WORKERS,
        progress: bool = PROGRESS, folds: int | None = FOLDS, fold: int | None = FOLD,
    ) -> None:
        """Train the detector (Adam, focal loss); validation metric: mean box IoU (mIoU)."""
        from bpedge.train.train_detector import DetectorOptions, train_detector

        opts = DetectorOptions(
            **_common(data, out, preset, split, seed, epochs, batch_size, lr, device, resume,
                      dedup, on_error, limit, workers, progress, folds, fold),
            gamma=gamma, alpha=alpha, backbone=backbone, weights=weights,
        )
        result = train_detector(opts)
        _report_main(result)

    @train_app.command("segmenter", epilog="""Examples:

  bpedge train segmenter --data phantom --out runs/unet --preset tiny --crop gt

  bpedge train segmenter --data phantom --out runs/mnet --arch mnet --crop detector --detector runs/detector
""")
    @command_errors
    def segmenter(
        data: Path = DATA, out: Path = OUT, preset: str = PRESET,
        arch: str = typer.Option("unet", "--arch", help="'unet' or 'mnet'."),
        crop: str = typer.Option(
            "gt", "--crop", help="'none' (whole frame), 'gt' (ground-truth box) or 'detector'."
        ),
        detector: Path | None = DETECTOR,
        split: str = SPLIT, seed: int | None = SEED, epochs: int | None = EPOCHS,
        batch_size: int | None = BATCH, lr: float | None = LR, device: str = DEVICE,
        resume: bool = RESUME, dedup: bool = DEDUP, on_error: str = ON_ERROR,
        limit: int | None = LIMIT, workers: int = WORKERS, progress: bool = PROGRESS,
        folds: int | None = FOLDS, fold: int | None = FOLD,
    ) -> None:
        """Train a segmenter (RMSprop, BCE + Dice) on 96x96 crops; validation metric: Dice."""
        from bpedge.train.train_segmenter import SegmenterOptions, train_segmenter

        opts = SegmenterOptions(
            **_common(data, out, preset, split, seed, epochs, batch_size, lr, device, resume,
                      dedup, on_error, limit, workers, progress, folds, fold),
            arch=arch, crop=crop, detector=detector,
        )
        result = train_segmenter(opts)
        _report_main(result)

    app.add_typer(train_app, name="train")


def _report_main(result: Any) -> None:
    # Under torchrun every rank returns; only rank 0 speaks.
    import os

    if os.environ.get("RANK", "0") == "0":
        _report(result)
