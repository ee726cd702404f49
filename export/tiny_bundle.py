"""The one "tiny bundle" pipeline: phantom data -> ``tiny`` detector -> ``tiny`` U-Net on
ground-truth crops -> exported bundle.

``bpedge demo``, the CPU soak benchmark and the test suite's fixtures all make their models this
way; each step is a function of its own (the demo times and resumes them one by one) and
:func:`make_tiny_bundle` runs them all, skipping what is already there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TinyPaths", "TinyRecipe", "export_tiny", "make_phantom", "make_tiny_bundle",
           "train_tiny_detector", "train_tiny_segmenter"]


@dataclass(frozen=True)
class TinyRecipe:
    """What is made: a phantom of ``subjects`` x ``frames`` (``seed``), models of the ``tiny``
    preset trained ``epochs`` epochs (None: the preset's) on a ``split`` split, on at most
    ``limit`` BP frames (None: all)."""

    subjects: int = 4
    frames: int = 16
    seed: int = 0
    epochs: int | None = None
    split: str = "random"
    limit: int | None = None


@dataclass(frozen=True)
class TinyPaths:
    """Where the pipeline's parts go: the data folder, the two run folders and the bundle."""

    data: Path
    detector: Path
    segmenter: Path
    bundle: Path

    @classmethod
    def under(cls, work: Path, data: Path | None = None) -> TinyPaths:
        """The layout under ``work`` (``data`` elsewhere when given)."""
        return cls(data=data or work / "data" / "train", detector=work / "runs" / "detector",
                   segmenter=work / "runs" / "unet", bundle=work / "bundle")


def make_phantom(paths: TinyPaths, recipe: TinyRecipe, progress: bool = False) -> None:
    """The phantom data folder, unless a complete one is there (``generate_phantom`` renames a
    finished folder into place, so one that exists is complete unless empty)."""
    from bpedge.train.data import PhantomConfig, generate_phantom

    if paths.data.exists():
        if any(paths.data.iterdir()):
            return
        paths.data.rmdir()
    generate_phantom(paths.data, PhantomConfig(subjects=recipe.subjects, frames=recipe.frames,
                                               seed=recipe.seed), progress=progress)


def _common(paths: TinyPaths, recipe: TinyRecipe, progress: bool, run: Path) -> dict[str, Any]:
    # A best.pt alone is what a kill between the first epoch's two checkpoint writes leaves:
    # resuming restarts that epoch (bpedge.train's run folder rules); without --resume the
    # trainer refused the folder, and a killed demo could not be run again.
    resume = (run / "last.pt").is_file() or (run / "best.pt").is_file()
    return {"data": paths.data, "out": run, "preset": "tiny", "split": recipe.split,
            "seed": recipe.seed, "epochs": recipe.epochs, "limit": recipe.limit,
            "progress": progress, "resume": resume}


def _finished(run: Path, epochs: int | None) -> bool:
    """Whether the run in ``run`` trained all ``epochs`` (None: the preset's, as its
    config.json records them): its metrics list them, and its best.pt is there. A best.pt alone
    may be a killed run's first epoch, and a run killed later has one too."""
    import json

    metrics, config = run / "metrics.json", run / "config.json"
    if not ((run / "best.pt").is_file() and metrics.is_file() and config.is_file()):
        return False
    if epochs is None:
        epochs = json.loads(config.read_text(encoding="utf-8"))["model"]["epochs"]
    return len(json.loads(metrics.read_text(encoding="utf-8")).get("epochs", [])) >= epochs


def train_tiny_detector(paths: TinyPaths, recipe: TinyRecipe, progress: bool = False) -> Path:
    """Train (or resume, from ``last.pt``) the detector; its ``best.pt``."""
    from bpedge.train.train_detector import DetectorOptions, train_detector

    return train_detector(DetectorOptions(**_common(paths, recipe, progress, paths.detector))
                          ).best_checkpoint


def train_tiny_segmenter(paths: TinyPaths, recipe: TinyRecipe, progress: bool = False) -> Path:
    """Train (or resume) the U-Net on ground-truth crops; its ``best.pt``."""
    from bpedge.train.train_segmenter import SegmenterOptions, train_segmenter

    return train_segmenter(SegmenterOptions(
        **_common(paths, recipe, progress, paths.segmenter), arch="unet", crop="gt",
    )).best_checkpoint


def export_tiny(paths: TinyPaths, *, include_checkpoints: bool = False, force: bool = False,
                log: Callable[[str], None] = lambda line: None) -> Path:
    """Export the two runs' ``best.pt`` to ``paths.bundle`` (validated on ``paths.data``), unless
    a finished bundle is there (export publishes it whole: a manifest means finished).
    ``force``: replace a partial ``paths.bundle`` (see ``ExportOptions``)."""
    from bpedge.export.bundle_export import ExportOptions, export_bundle

    if not (paths.bundle / "manifest.json").is_file():
        export_bundle(ExportOptions(detector=paths.detector, segmenter=paths.segmenter,
                                    out=paths.bundle, data=paths.data, force=force,
                                    include_checkpoints=include_checkpoints), log=log)
    return paths.bundle


def make_tiny_bundle(paths: TinyPaths, recipe: TinyRecipe, *, include_checkpoints: bool = False,
                     progress: bool = False) -> Path:
    """Every step, each skipped when its output is complete; a training run that did not train
    all its epochs is resumed (one stopped before its first epoch ended starts again), never
    exported half-trained. A run folder that training did not make is refused by training
    (``OutDirRefused``), and nothing in one is removed but what training wrote there.
    Returns the bundle folder."""
    make_phantom(paths, recipe, progress)
    for run, train in ((paths.detector, train_tiny_detector),
                       (paths.segmenter, train_tiny_segmenter)):
        if not _finished(run, recipe.epochs):
            train(paths, recipe, progress)
    return export_tiny(paths, include_checkpoints=include_checkpoints)
