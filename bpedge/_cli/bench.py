"""``bpedge bench BUNDLE``: latency, throughput and accuracy of a bundle per backend and precision,
against the PyTorch-eager baseline of the same run; ``--compare A.json B.json`` for two runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import UsageError, command_errors

_EPILOG = """Examples:

  bpedge bench demo_out/bundle                      # phantom frames made on the fly

  bpedge bench BUNDLE --data kaggle/train --limit 200 --seconds 30 --json run.json

  bpedge bench BUNDLE --backends onnxruntime --precisions fp32,fp16 --batch 8

  bpedge bench BUNDLE --backends tensorrt --depth 3         # on a GPU, after build-engines

  bpedge bench --compare before.json after.json
"""


def register(app: typer.Typer) -> None:
    @app.command("bench", epilog=_EPILOG)
    @command_errors
    def bench(
        bundle: Annotated[
            Path | None, typer.Argument(help="Bundle directory (holds manifest.json).")
        ] = None,
        data: Annotated[
            Path | None, typer.Option("--data", help="Kaggle-layout folder of frames and masks "
                                      "(default: phantom frames made in memory).")
        ] = None,
        limit: Annotated[
            int | None, typer.Option("--limit", help="Use the first N frames of --data.")
        ] = None,
        phantom_subjects: Annotated[
            int, typer.Option("--phantom-subjects", help="Phantom subjects when no --data.")
        ] = 2,
        phantom_frames: Annotated[
            int, typer.Option("--phantom-frames", help="Phantom frames per subject.")
        ] = 8,
        seed: Annotated[
            int, typer.Option("--seed", help="Phantom seed (default: one no training default "
                              "uses, so the frames are held out).")
        ] = 90210,
        backends: Annotated[
            str, typer.Option("--backends", help="Comma-separated: torch (PyTorch eager, the "
                              "baseline), onnxruntime, tensorrt.")
        ] = "torch,onnxruntime,tensorrt",
        precisions: Annotated[
            str, typer.Option("--precisions", help="Comma-separated: fp32, fp16.")
        ] = "fp32,fp16",
        warmup_seconds: Annotated[
            float, typer.Option("--warmup-seconds", help="Untimed warm-up per row, seconds.")
        ] = 2.0,
        iterations: Annotated[
            int | None, typer.Option("--iterations", help="Timed calls per row (a call is one "
                                     "frame, or one batch).")
        ] = None,
        seconds: Annotated[
            float | None, typer.Option("--seconds", help="Timed seconds per row (default 10 "
                                       "when --iterations is not given).")
        ] = None,
        batch: Annotated[int, typer.Option("--batch", help="Frames per call.")] = 1,
        depth: Annotated[
            int, typer.Option("--depth", help="Frames in flight (Segmenter.stream).")
        ] = 1,
        threads: Annotated[
            int | None, typer.Option("--threads", help="Intra-op threads of every CPU runtime "
                                     "(default: the cores this process may use).")
        ] = None,
        json_file: Annotated[
            Path | None, typer.Option("--json", help="Write the run (machine, versions, "
                                      "settings, rows) as JSON.")
        ] = None,
        note: Annotated[
            list[str] | None, typer.Option("--note", help="Free text stored in the JSON "
                                           "(repeatable), e.g. how the bundle was made.")
        ] = None,
        compare: Annotated[
            tuple[Path, Path] | None,
            typer.Option("--compare", help="Show B relative to A for two --json files, instead "
                         "of running.", metavar="A.json B.json"),
        ] = None,
        ceiling_seconds: Annotated[
            float, typer.Option("--ceiling-seconds", help="Seconds spent measuring the GEMM "
                                "ceiling, per library.")
        ] = 1.0,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Status lines on stderr.")
        ] = True,
    ) -> None:
        """Time the cascade per stage (upload, preprocess, detector, crop, segmenter, paste,
        download) and end to end for each backend and precision available, with Dice and box IoU
        against the frames' masks, achieved GFLOP/s against this machine's measured GEMM
        ceiling, and the speed-up over PyTorch eager on the same models and frames."""
        from rich.console import Console
        from rich.markup import escape

        from bpedge._bench import tables

        # Tables are wide: keep them readable when piped into a log or CI (no terminal width).
        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 180)
        if compare is not None:
            if bundle is not None:
                raise UsageError("give either BUNDLE (to run) or --compare A.json B.json, not both")
            from bpedge._bench.compare import compare_records
            from bpedge._bench.record import read_record

            a, b = (read_record(p) for p in compare)
            console.print(tables.compare_table(compare_records(a, b), str(compare[0]),
                                               str(compare[1])))
            return
        if bundle is None:
            raise UsageError("missing BUNDLE: the bundle directory to benchmark (or use "
                             "--compare A.json B.json)")

        from bpedge._bench.backends import parse_choices
        from bpedge._bench.frames import kaggle_frames
        from bpedge._bench.frames import phantom_frames as make_phantom
        from bpedge._bench.harness import RunSettings
        from bpedge._bench.machine import usable_cores
        from bpedge._bench.record import write_record
        from bpedge._bench.run import run_bench
        from bpedge.bundle import Bundle

        choices = parse_choices(backends, precisions)
        settings = RunSettings(
            warmup_seconds=warmup_seconds, iterations=iterations,
            seconds=seconds if seconds is not None or iterations is not None else 10.0,
            batch=batch, depth=depth,
        )
        if json_file is not None:
            _check_json_target(json_file)  # before the run: a bad --json must not cost a run
        if limit is not None and data is None:
            raise UsageError("--limit applies to --data frames; for phantom frames use "
                             "--phantom-subjects/--phantom-frames")
        Bundle.open(bundle)  # a bad bundle is bad input: fail before making frames
        say = (lambda line: typer.echo(line, err=True)) if progress else (lambda line: None)
        if data is not None:
            say(f"reading frames from {data}")
            frames = kaggle_frames(data, limit)
        else:
            say(f"making {phantom_subjects * phantom_frames} phantom frames (seed {seed})")
            frames = make_phantom(phantom_subjects, phantom_frames, seed)
        record = run_bench(bundle, frames, choices, settings, threads or usable_cores(),
                           ceiling_seconds=ceiling_seconds, notes=tuple(note or ()), say=say)
        console.print(tables.summary_table(record))
        for line in tables.skipped_lines(record):
            console.print(escape(line))
        console.print(tables.stage_table(record))
        if json_file is not None:
            write_record(json_file, record)
            typer.echo(f"wrote {json_file}")


def _check_json_target(path: Path) -> None:
    """``--json`` must name a file that can be written: not a folder, not under a file, and not a
    file of the user's (an existing file is replaced only when it is a bench record)."""
    from bpedge._bench.record import read_record

    if path.is_dir():
        raise UsageError(f"--json {path} is a folder: give a file name, e.g. {path / 'bench.json'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--json {path}: {parent} is a file, not a folder")
            break
    if path.exists() or path.is_symlink():
        try:
            read_record(path)
        except (OSError, ValueError):
            raise UsageError(f"--json {path} exists and is not a bench record, so it is not "
                             "overwritten: choose another file name") from None
