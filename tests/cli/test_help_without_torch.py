"""``bpedge --help`` and every command's ``--help`` work on a machine without PyTorch or TensorRT:
run in a fresh interpreter whose import system refuses both."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from bpedge._cli.app import build_app

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "tensorrt"):
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Refuse())
    import typer.main
    from bpedge._cli.app import build_app

    app = build_app()
    group = typer.main.get_command(app)

    def paths(command, prefix):
        yield prefix
        for name, sub in getattr(command, "commands", {}).items():
            yield from paths(sub, [*prefix, name])

    report = {}
    for args in paths(group, []):
        try:
            app([*args, "--help"], prog_name="bpedge")
        except SystemExit as exc:
            report[" ".join(args) or "(root)"] = exc.code
    report["__loaded__"] = sorted(m for m in sys.modules
                                  if m.split(".")[0] in ("torch", "tensorrt"))
    print("REPORT" + json.dumps(report))
""")


def test_every_help_works_without_torch_and_tensorrt():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.rsplit("REPORT", 1)[1])
    assert report.pop("__loaded__") == []
    expected = {"(root)", "demo", "bench", "doctor", "segment", "phantom", "build-engines"}
    assert expected <= set(report), sorted(report)
    assert all(code == 0 for code in report.values()), report


def test_every_command_has_help_with_a_description():
    import typer.main

    runner = CliRunner()
    group = typer.main.get_command(build_app())
    for name in ("demo", "bench", "doctor", "segment"):
        result = runner.invoke(build_app(), [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Examples" in result.output, name
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert (command.help or "").strip(), f"bpedge {name} has no help text"
