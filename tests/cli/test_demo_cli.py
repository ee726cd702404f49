"""``bpedge demo`` through typer's runner: the whole pipeline at its smallest, then a resume."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from bpedge._cli.app import build_app

runner = CliRunner()
SMALLEST = ["--fast", "--subjects", "3", "--frames", "4", "--epochs", "1", "--no-progress"]


def test_help_has_examples():
    result = runner.invoke(build_app(), ["demo", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = runner.invoke(build_app(), ["demo", "--out", str(out), *SMALLEST])
    assert first.exit_code == 0, first.output
    for label in ("Dice, BP-positive frames, full frame after paste-back", "box IoU",
                  "latency per frame"):
        assert label in first.output
    for path in ("summary.md", "summary.html", "metrics.json", "bundle/manifest.json",
                 "runs/detector/best.pt", "runs/unet/best.pt"):
        assert (out / path).is_file(), path
    metrics = json.loads((out / "metrics.json").read_text())
    heldout = sorted(p.name for p in (out / "heldout").iterdir())
    subject = metrics["test_subjects"][0]
    # The held-out frames are exactly the test subject's frames, with and without BP.
    assert heldout and all(name.startswith(f"{subject}_") for name in heldout)
    assert metrics["frames"] == len([n for n in heldout if not n.endswith("_mask.tif")]) == 4
    assert len(list((out / "overlays").glob("*.png"))) == metrics["frames"]
    assert 0.0 <= metrics["dice_all"] <= 1.0
    assert set(metrics["latency_ms"]) == {"preprocess", "detector", "crop", "segmenter",
                                          "paste", "total"}
    summary = (out / "summary.md").read_text()
    assert "overlays/" in summary and f"{metrics['dice_all']:.4f}" in summary

    # A run killed before the held-out step finished: the re-run redoes that step only.
    state = json.loads((out / "demo.json").read_text())
    del state["done"]["heldout"]
    (out / "demo.json").write_text(json.dumps(state))
    shutil.rmtree(out / "heldout")
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("runs/detector/best.pt",
                                                        "bundle/manifest.json")}
    again = runner.invoke(build_app(), ["demo", "--out", str(out), *SMALLEST[:-1]])
    assert again.exit_code == 0, again.output
    assert "detector: done in an earlier run" in again.output
    assert "export: done in an earlier run" in again.output
    assert "[5/6] heldout\n" in again.output
    assert sorted(p.name for p in (out / "heldout").iterdir()) == heldout
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps

    other = runner.invoke(build_app(), ["demo", "--out", str(out), "--fast", "--seed", "3"])
    assert other.exit_code == 2 and "other settings" in other.output


def test_bad_settings_exit_2(tmp_path):
    few = runner.invoke(build_app(), ["demo", "--out", str(tmp_path / "d"), "--subjects", "2"])
    assert few.exit_code == 2 and "--subjects must be >= 3" in few.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    busy = runner.invoke(build_app(), ["demo", "--out", str(tmp_path / "busy")])
    assert busy.exit_code == 2 and "not an empty folder" in busy.output
