"""``bpedge bench BUNDLE``: latency, throughput and accuracy of a bundle per backend and precision,
against the PyTorch-eager baseline of the same run; ``--compare A.json B.json`` for two runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bpedge._cli._errors import CommandFailed, UsageError, command_errors
from bpedge._cli._track_option import track_options

if TYPE_CHECKING:
    from bpedge._out_file import OutFile

_EPILOG = """Examples:

  bpedge bench demo_out/bundle                      # phantom frames: speed only, no accuracy

  bpedge bench demo_out/bundle --data demo_out/heldout      # speed and accuracy on held-out data

  bpedge bench BUNDLE --data kaggle/train --limit 200 --seconds 30 --json run.json

  bpedge bench BUNDLE --backends onnxruntime --precisions fp32,fp16 --batch 8

  bpedge bench BUNDLE --backends torch,onnxruntime,openvino --rounds 5 --track

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
                              "baseline), onnxruntime, openvino, tensorrt.")
        ] = "torch,onnxruntime,openvino,tensorrt",
        precisions: Annotated[
            str, typer.Option("--precisions", help="Comma-separated: fp32, fp16, bf16, int8 "
                              "(each backend runs those it supports).")
        ] = "fp32,fp16,bf16,int8",
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
        rounds: Annotated[
            int, typer.Option("--rounds", help="Interleave the rows: each of N rounds runs "
                              "every row for 1/N of its time, so load from other jobs falls on "
                              "all rows alike.")
        ] = 1,
        track: Annotated[
            bool, typer.Option("--track", help="Also compare tracking with per-frame detection "
                               "on the frames as sequences (one per subject): FPS and Dice.")
        ] = False,
        detect_every: Annotated[
            int | None, typer.Option("--detect-every", help="With --track: run the detector at "
                                     "least every N frames (default 10).")
        ] = None,
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
        tracking = track_options(track, detect_every)

        from bpedge._bench.backends import parse_choices
        from bpedge._bench.frames import kaggle_frames
        from bpedge._bench.frames import phantom_frames as make_phantom
        from bpedge._bench.harness import RunSettings
        from bpedge._bench.machine import usable_cores
        from bpedge._bench.run import run_bench
        from bpedge.bundle import Bundle

        choices = parse_choices(backends, precisions)
        settings = RunSettings(
            warmup_seconds=warmup_seconds, iterations=iterations,
            seconds=seconds if seconds is not None or iterations is not None else 10.0,
            batch=batch, depth=depth, rounds=rounds,
        )
        json_target = _json_target(json_file) if json_file is not None else None
        if json_target is not None:
            json_target.check()  # before the run: a bad --json must not cost a run
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
                           ceiling_seconds=ceiling_seconds, notes=tuple(note or ()), say=say,
                           speed_workload=data is None, track=tracking)
        console.print(tables.summary_table(record))
        if track:
            console.print(tables.tracking_table(record))
        for line in tables.skipped_lines(record):
            console.print(escape(line))
        if not any(row.ran for row in record.rows):
            # every row skipped (a damaged model, a runtime missing): exit 0 would read as a run
            raise CommandFailed("no row ran (each one's reason is above): nothing was measured"
                                + (f"; {json_file} not written" if json_file is not None else ""))
        console.print(tables.stage_table(record))
        if json_target is not None:
            # Through JSON and back: dumps() writes the strict JSON (no NaN) that gets sealed.
            json_target.write_sealed_json(json.loads(record.dumps()))
            typer.echo(f"wrote {json_file}")


def _json_target(path: Path) -> OutFile:
    """``--json``: a new file, or a bench record (one an earlier run wrote), never a user's
    file, a folder or a symbolic link. Checked before the run and again when writing, since a
    run takes minutes and the file may appear in between."""
    from bpedge._bench.record import read_record
    from bpedge._out_file import OutFile

    def is_bench_record(p: Path) -> bool:
        try:
            read_record(p)
        except (OSError, ValueError):
            return False
        return True

    return OutFile(path, "bench", "--json", recognise=is_bench_record, sealed=True)
