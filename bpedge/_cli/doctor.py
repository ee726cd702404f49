"""``bpedge doctor``: what this machine has (CPU, GPU, driver, CUDA, NVRTC, TensorRT, ONNX Runtime,
PyTorch), which backends will run, and the fix for each missing piece."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import CommandFailed, UsageError, command_errors

_EPILOG = """Examples:

  bpedge doctor

  bpedge doctor --json doctor.json --require "onnxruntime fp32"
"""


def register(app: typer.Typer) -> None:
    @app.command("doctor", epilog=_EPILOG)
    @command_errors
    def doctor(
        json_file: Annotated[
            Path | None, typer.Option("--json", help="Also write the report as JSON to this file "
                                      "(a new file, or a report doctor wrote; any other file "
                                      "is refused, never overwritten).")
        ] = None,
        require: Annotated[
            list[str] | None,
            typer.Option("--require", help="Exit 1 unless this backend will run (repeatable): "
                         "'onnxruntime fp32', 'onnxruntime fp16', 'tensorrt fp16', "
                         "'tensorrt fp32', 'pytorch eager'."),
        ] = None,
    ) -> None:
        """Check this machine: hardware, drivers and runtimes, and which backends will run."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from bpedge._doctor import diagnose, is_doctor_report
        from bpedge._out_file import OutFile

        target = None
        if json_file is not None:
            target = OutFile(json_file, "doctor", "--json", recognise=is_doctor_report,
                             sealed=True)
            target.check()  # before the probes: a file of the user's is refused at once
        report = diagnose()
        wanted = list(require or [])
        known = [v.backend for v in report.backends]
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise UsageError(f"--require {unknown[0]!r} is not a backend; choose from {known}")

        console = Console(soft_wrap=True)
        machine = Table(title="This machine", show_lines=False)
        for column in ("", "what", "found", "fix"):
            machine.add_column(column, overflow="fold")
        for f in report.findings:
            mark = "" if f.ok is None else ("[green]ok[/]" if f.ok else "[red]--[/]")
            machine.add_row(mark, escape(f.topic), escape(f.detail), escape(f.fix or ""))
        console.print(machine)
        backends = Table(title="Backends")
        for column in ("", "backend", "why", "fix"):
            backends.add_column(column, overflow="fold")
        for v in report.backends:
            backends.add_row("[green]runs[/]" if v.runs else "[red]won't run[/]",
                             escape(v.backend), escape(v.reason), escape(v.fix or ""))
        console.print(backends)

        if target is not None:
            target.write_sealed_json(report.to_json())
            typer.echo(f"wrote {json_file}")
        failing = [w for w in wanted if not report.verdict(w).runs]
        if failing:
            v = report.verdict(failing[0])
            raise CommandFailed(f"{v.backend} will not run here: {v.reason}; fix: {v.fix}")
