"""``bpedge demo --out DIR``: the whole pipeline on the CPU in minutes, from nothing to segmented
held-out frames with Dice, box IoU and per-stage latency, overlays and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bpedge._cli._errors import command_errors

if TYPE_CHECKING:
    from bpedge._cli._demo_steps import DemoConfig, DemoPaths, DemoState

_EPILOG = """Examples:

  bpedge demo --out demo_out                 # ~2.5 min on 2 idle cores, 4-10 if shared

  bpedge demo --out demo_fast --fast         # a smoke test: tiny data, 2 epochs, under a minute

  bpedge demo --out demo_out                 # again: finished steps are reused

Writes under DIR: data/train (phantom, Kaggle layout), runs/detector and runs/unet (training),
bundle/ (the exported bundle), heldout/ (the test subjects' frames), overlays/*.png,
metrics.json, summary.md, summary.html and demo.json (settings and finished steps).
"""

FAST = {"subjects": 4, "frames": 8, "epochs": 2}


def register(app: typer.Typer) -> None:
    @app.command("demo", epilog=_EPILOG)
    @command_errors
    def demo(
        out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes "
                                          "(new, or a previous demo's to resume it).")],
        subjects: Annotated[
            int | None, typer.Option("--subjects", help="Phantom subjects, >= 3 (default 6; "
                                     "--fast: 4).")
        ] = None,
        frames: Annotated[
            int | None,
            typer.Option("--frames", help="Frames per subject, >= 4 (default 30; --fast: 8)."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the phantom, split and "
                                          "training.")] = 0,
        epochs: Annotated[
            int | None, typer.Option("--epochs", help="Epochs of both models (default: the "
                                     "tiny preset's; --fast: 2).")
        ] = None,
        fast: Annotated[
            bool, typer.Option("--fast", help="Smoke test: fewer frames and 2 epochs per model "
                               "(the models will be poor).")
        ] = False,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Progress bars and step lines.")
        ] = True,
    ) -> None:
        """Make a phantom dataset, train the tiny detector and U-Net, export a bundle, run the
        Segmenter on held-out subjects, and report Dice, box IoU and per-stage latency."""
        import time

        from bpedge._cli import _demo_steps as steps
        from bpedge._out_dir import check_out_dir, claim_out_dir, lock_out_dir

        t0 = time.perf_counter()
        config = steps.DemoConfig(
            subjects=subjects if subjects is not None else (FAST["subjects"] if fast else 6),
            frames=frames if frames is not None else (FAST["frames"] if fast else 30),
            seed=seed,
            epochs=epochs if epochs is not None else (FAST["epochs"] if fast else None),
        )
        paths = steps.DemoPaths(out)
        check_out_dir(out, "demo")  # a folder the demo did not make is refused before any write
        state = steps.load_state(paths, config)
        steps.refuse_users_files(paths, state)  # before any training, not after it
        claim_out_dir(out, "demo")
        with lock_out_dir(out, "demo"):  # two demos into one folder would write the same files
            _run(paths, state, config, progress, t0)


def _run(paths: DemoPaths, state: DemoState, config: DemoConfig, progress: bool,
         t0: float) -> None:
    """The steps, under the output lock (see ``demo``)."""
    import time

    from bpedge._cli import _demo_report as report
    from bpedge._cli import _demo_steps as steps

    steps.save_state(paths, state)

    def say(line: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(line)

    steps.run_step("phantom", paths, state,
                   lambda: steps.make_phantom(paths, config, progress), say)
    steps.run_step("detector", paths, state,
                   lambda: steps.train_detector_step(paths, config, progress), say)
    steps.run_step("segmenter", paths, state,
                   lambda: steps.train_segmenter_step(paths, config, progress), say)
    steps.run_step("export", paths, state, lambda: steps.export_step(paths, config, say), say)
    steps.run_step("heldout", paths, state, lambda: steps.copy_heldout(paths), say)
    metrics: dict = {}

    def evaluate() -> None:
        metrics.update(report.evaluate(paths, progress))

    # Evaluation is cheap and its latency numbers belong to this run: always redo it.
    state.done.pop("evaluate", None)
    steps.run_step("evaluate", paths, state, evaluate, say)
    report.write_summaries(paths, state, metrics, time.perf_counter() - t0)

    for label, value in report.summary_lines(metrics):
        typer.echo(f"{label}: {value}")
    typer.echo("latency per frame, ms (ONNX Runtime fp32): " + ", ".join(
        f"{stage} {median}" for stage, median, *_ in report.latency_rows(metrics)) + " (median)")
    typer.echo(f"wrote {paths.out / 'summary.html'}, {paths.out / 'summary.md'} and "
               f"{metrics['frames']} overlays in {paths.overlays}; "
               f"total {time.perf_counter() - t0:.0f} s")
    typer.echo(f"next: bpedge bench {paths.bundle} --data {paths.heldout}")
