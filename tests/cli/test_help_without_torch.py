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


def test_a_command_that_needs_torch_names_the_extra(tmp_path):
    """Without PyTorch (``None`` in ``sys.modules`` is what an uninstalled module raises:
    ModuleNotFoundError with its name), `export` says which install adds it, not only
    "No module named 'torch'"."""
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not read: torch is missing first")
    script = ("import sys; sys.modules['torch'] = None\n"
              "from bpedge._cli.app import main\n"
              "main()\n")
    proc = subprocess.run(
        [sys.executable, "-c", script, "export", "--detector", str(checkpoint), "--segmenter",
         str(checkpoint), "--out", str(tmp_path / "bundle")],
        check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "torch is not installed" in proc.stderr
    assert "pip install 'bpedge[train]'" in proc.stderr
    assert not (tmp_path / "bundle").exists()


def test_a_missing_module_that_no_extra_installs_keeps_its_own_message():
    from bpedge._cli._errors import missing_extra

    assert missing_extra(ModuleNotFoundError("No module named 'bpedge.nope'",
                                             name="bpedge.nope")) is None
    advice = missing_extra(ModuleNotFoundError("No module named 'pydicom'", name="pydicom"))
    assert advice is not None and "bpedge[dicom]" in advice
