"""``bpedge experiment``: run the method's study end to end and write RUN/report.md (+ .html).

Re-running the same command skips finished steps and resumes unfinished training runs. torch and
matplotlib are imported inside the command.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import command_errors


def _command_line() -> str:
    """The command as typed, with the console script shown as ``bpedge``."""
    args = sys.argv[1:]
    return "bpedge " + " ".join(shlex.quote(a) for a in args)


def register(app: typer.Typer) -> None:
    @app.command("experiment", epilog="""Examples:

  bpedge experiment --data phantom --out study --preset tiny --split both

  bpedge experiment --data kaggle/train --out study_paper --preset paper --gammas 1,2,3,5
""")
    @command_errors
    def experiment(
        data: Annotated[Path, typer.Option("--data", help="Kaggle-layout folder (or its parent).")],
        out: Annotated[Path, typer.Option("--out", help="Study folder: every model, metric, "
                                          "figure and the report land here.")],
        preset: Annotated[str, typer.Option("--preset", help="'paper' (published sizes) or "
                                            "'tiny' (CPU-sized).")] = "tiny",
        gammas: Annotated[str, typer.Option("--gammas", help="Focal-loss gammas, comma list.")]
        = "1,2,3,5",
        split: Annotated[str, typer.Option("--split", help="'subject' (no subject on two sides; "
                                           "the default), 'random' (as published, frames of one "
                                           "subject on both sides) or 'both' (side by side).")]
        = "subject",
        folds: Annotated[int | None, typer.Option(
            "--folds", help="Subject-wise K-fold cross-validation of the subject split: every "
            "subject tested once, 95% bootstrap CIs over subjects.")] = None,
        backbone_weights: Annotated[Path | None, typer.Option(
            "--backbone-weights", help="Local state_dict file for the detector's backbone "
            "(torchvision ResNet keys) or the whole detector; nothing is downloaded.")] = None,
        pixel_spacing_mm: Annotated[float | None, typer.Option(
            "--pixel-spacing-mm", help="Pixel size in mm, when known: HD95 and surface "
            "distance also in mm.")] = None,
        archs: Annotated[str, typer.Option("--archs", help="Segmenters, comma list of unet, "
                                           "mnet.")] = "unet,mnet",
        device: Annotated[str, typer.Option("--device", help="'cpu' or 'cuda'.")] = "cpu",
        seed: Annotated[int, typer.Option("--seed", help="Seed for splits, initialisation and "
                                          "shuffling.")] = 0,
        epochs_scale: Annotated[float | None, typer.Option(
            "--epochs-scale", help="Multiply every preset epoch count (rounded, >= 1).")] = None,
        detector_epochs: Annotated[int | None, typer.Option(
            "--detector-epochs", help="Detector epochs (wins over --epochs-scale).")] = None,
        segmenter_epochs: Annotated[int | None, typer.Option(
            "--segmenter-epochs", help="Segmenter epochs (wins over --epochs-scale).")] = None,
        limit: Annotated[int | None, typer.Option(
            "--limit", help="Use a seeded random N of the BP frames (quick studies).")] = None,
        on_error: Annotated[str, typer.Option(
            "--on-error", help="Bad files: 'fail' (list and stop) or 'skip'.")] = "fail",
        dedup: Annotated[bool, typer.Option(
            "--dedup", help="Drop empty near-copies of BP frames (contradictory labels).")] = False,
        score_threshold: Annotated[float, typer.Option(
            "--score-threshold", help="Detector score for 'BP present' (Kaggle-style figures "
            "on empty frames only).")] = 0.5,
        figure_images: Annotated[int, typer.Option(
            "--figure-images", help="Test images in the Fig. 6 grid.")] = 4,
        progress: Annotated[bool, typer.Option(
            "--progress/--no-progress", help="Progress bars with time estimates.")] = True,
    ) -> None:
        """Reproduce the method's study: RetinaNet per focal-loss gamma (chosen on validation),
        U-Net/M-Net with no detection, the detector's crop and the ground-truth crop; tables,
        figures and a report with the published numbers beside the measured ones."""
        from bpedge.train.experiment.options import (
            ARCHS,
            ExperimentOptions,
            parse_float_list,
            parse_name_list,
        )
        from bpedge.train.experiment.runner import run_study

        opts = ExperimentOptions(
            data=data, out=out, preset=preset, gammas=parse_float_list(gammas, "--gammas"),
            split=split, archs=parse_name_list(archs, "--archs", ARCHS), device=device,
            seed=seed, epochs_scale=epochs_scale, detector_epochs=detector_epochs,
            segmenter_epochs=segmenter_epochs, limit=limit, on_error=on_error, dedup=dedup,
            score_threshold=score_threshold, figure_images=figure_images, progress=progress,
            folds=folds, backbone_weights=backbone_weights, pixel_spacing_mm=pixel_spacing_mm,
        )
        t0 = time.perf_counter()
        outcome = run_study(opts, command=_command_line())
        ran = sum(r.status != "skipped" for r in outcome.records)
        typer.echo(
            f"done in {time.perf_counter() - t0:.0f} s: {ran} step(s) run, "
            f"{len(outcome.records) - ran} already finished -> {outcome.report} "
            f"(and {outcome.layout.report_html.name})"
        )
