"""``bpedge demo`` resumed or repeated never deletes or overwrites a file of the user's under
``--out``: held-out frames, a partial copy, metrics, summaries and overlays of the user's are
refused by name (exit 2) and kept; the demo's own leftovers are still redone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpedge._cli.app import build_app

runner = CliRunner()
SMALLEST = ["--fast", "--subjects", "3", "--frames", "4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = runner.invoke(build_app(), ["demo", "--out", str(out), *SMALLEST])
    assert result.exit_code == 0, result.output
    return out


def _copy(finished: Path, tmp_path: Path, *, undo: tuple[str, ...] = ()) -> Path:
    """A copy of the finished demo, as a run killed before the steps ``undo`` finished left it."""
    out = tmp_path / "demo"
    shutil.copytree(finished, out)
    state = json.loads((out / "demo.json").read_text())
    for step in undo:
        del state["done"][step]
    (out / "demo.json").write_text(json.dumps(state))
    return out


def _frame(out: Path) -> str:
    return json.loads((out / "metrics.json").read_text())["per_frame"][0]["frame"]


@pytest.mark.parametrize("where", ["heldout/my_frame.tif", ".heldout.partial/keep.txt",
                                   "metrics.json", "summary.md", "summary.html", "overlay"])
def test_a_users_file_is_refused_by_name_and_kept(finished: Path, tmp_path: Path,
                                                  where: str) -> None:
    out = _copy(finished, tmp_path, undo=("heldout",))
    path = out / "overlays" / f"{_frame(out)}.png" if where == "overlay" else out / where
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"mine")
    heldout_before = sorted(p.name for p in (out / "heldout").iterdir())
    result = runner.invoke(build_app(), ["demo", "--out", str(out), *SMALLEST])
    assert result.exit_code == 2, result.output
    assert path.name in result.output
    assert path.read_bytes() == b"mine"
    assert sorted(p.name for p in (out / "heldout").iterdir()) == heldout_before


def test_the_demos_own_leftovers_are_redone_and_only_its_overlays_counted(
        finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path, undo=("heldout",))
    # A run killed while copying: a partial copy of the demo's own frames, and the finished
    # copy renamed into place before demo.json said so. Both are the demo's: redone.
    partial = out / ".heldout.partial"
    partial.mkdir()
    first = min((out / "heldout").iterdir())
    shutil.copy2(first, partial / first.name)
    (out / "overlays" / "my_drawing.png").write_bytes(b"mine")  # a name no overlay has
    result = runner.invoke(build_app(), ["demo", "--out", str(out), *SMALLEST])
    assert result.exit_code == 0, result.output
    assert not partial.exists()
    frames = json.loads((out / "metrics.json").read_text())["frames"]
    assert f"{frames} overlays in" in result.output
    assert (out / "overlays" / "my_drawing.png").read_bytes() == b"mine"


def test_a_second_demo_into_the_same_folder_is_refused_while_one_runs(finished: Path,
                                                                      tmp_path: Path) -> None:
    from bpedge._out_dir import lock_out_dir

    out = _copy(finished, tmp_path)
    before = (out / "metrics.json").read_bytes()
    with lock_out_dir(out, "demo"):  # as a demo writing there now holds it
        result = runner.invoke(build_app(), ["demo", "--out", str(out), *SMALLEST])
    assert result.exit_code == 2 and "another `bpedge demo`" in result.output, result.output
    assert (out / "metrics.json").read_bytes() == before
