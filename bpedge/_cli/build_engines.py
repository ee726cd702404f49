"""``bpedge build-engines BUNDLE``: build (or reuse) the TensorRT engines of a bundle for this
machine's GPU and TensorRT. Bad options or a missing or damaged bundle exit 2 first; then, without
TensorRT or a GPU, it says what is missing and how to fix it, and exits 1 before doing any work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import UsageError, command_errors


def register(app: typer.Typer) -> None:
    @app.command("build-engines", epilog="""Examples:

  bpedge build-engines bundle                   # on the target GPU: FP16 engines

  bpedge build-engines bundle -p fp16 -p fp32 --max-batch 8
""")
    @command_errors
    def build_engines_command(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (holds manifest.json).")],
        precision: Annotated[
            list[str] | None,
            typer.Option(
                "--precision", "-p", help="fp16 (built from the FP16 ONNX), fp32, or int8 "
                "(from the symmetric INT8 QDQ ONNX of `bpedge export --int8`: explicit "
                "quantisation, no calibrator); repeat for several. Default: fp16."
            ),
        ] = None,
        max_batch: Annotated[
            int, typer.Option("--max-batch", min=1, help="Largest batch the engines accept.")
        ] = 8,
        workspace_mb: Annotated[
            int, typer.Option("--workspace-mb", min=1, help="TensorRT workspace limit, MiB.")
        ] = 1024,
        timing_cache: Annotated[
            Path | None,
            typer.Option("--timing-cache", help="Timing cache file to load and update "
                         "(makes rebuilds on this machine faster): a new file, or one an earlier "
                         "build-engines wrote; any other file is refused, never overwritten."),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Rebuild even if a fitting engine exists.")
        ] = False,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Show TensorRT build progress.")
        ] = True,
    ) -> None:
        """Build one TensorRT engine per model and precision for this GPU and TensorRT version
        and list it in the bundle's manifest; a fitting engine whose file is intact is reused."""
        # Lazy: the CLI must start (and --help work) without TensorRT installed.
        from bpedge._engine_key import PRECISIONS
        from bpedge.bundle import Bundle
        from bpedge.export.tensorrt_build import build_engines, timing_cache_file

        # The user's input first (the options, then the bundle), then what this machine lacks.
        chosen = list(precision or ["fp16"])
        if any(p not in PRECISIONS for p in chosen):
            raise UsageError(f"precisions must be some of {list(PRECISIONS)}, got {chosen}")
        if timing_cache is not None:
            timing_cache_file(timing_cache).check()
        Bundle.open(bundle)
        entries = build_engines(
            bundle,
            precisions=tuple(precision or ["fp16"]),
            max_batch=max_batch,
            workspace_mb=workspace_mb,
            timing_cache=timing_cache,
            force=force,
            progress=progress,
            log=lambda line: typer.echo(line, err=True),
        )
        for entry in entries:
            typer.echo(f"{entry.model}\t{entry.precision}\t{entry.file}")
