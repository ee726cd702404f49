"""A study resumed or repeated never deletes or overwrites a file of the user's in its folder:
a checkpoint put in a training folder, a report, a summary or a figure under a study's name is
refused by name before anything is trained, and only the study's own files are replaced."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from bpedge.train.experiment import ExperimentOptions, StudyLayout, run_study
from bpedge.train.experiment._steps import StepRecord, read_step_log


def _options(data: Path, out: Path) -> ExperimentOptions:
    return ExperimentOptions(data=data, out=out, preset="tiny", gammas=(1.0,), split="random",
                             archs=("unet",), detector_epochs=1, segmenter_epochs=1, limit=16,
                             figure_images=1, progress=False)


def _stop_after(step: str):
    def hook(record: StepRecord) -> None:
        if record.step == step:
            raise KeyboardInterrupt

    return hook


@pytest.fixture(scope="module")
def stopped_after_split(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study stopped once its split was written (no model trained yet)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(KeyboardInterrupt):
        run_study(_options(phantom_dir, out), on_step_done=_stop_after("random/split"))
    return out


def _users_file(layout: StudyLayout, which: str) -> Path:
    return {
        "detector best.pt": layout.detector_run("random", 1.0) / "best.pt",
        "segmenter best.pt": layout.segmenter_run("random", "unet", "none") / "best.pt",
        "report.md": layout.report_md,
        "summary.json": layout.summary_json,
        "figure": layout.figure("fig7_dice_boxplots"),
        "timings.json": layout.root / "timings.json",
    }[which]


@pytest.mark.parametrize("which", ["detector best.pt", "segmenter best.pt", "report.md",
                                   "summary.json", "figure", "timings.json"])
def test_a_users_file_in_the_study_folder_is_refused_by_name_and_kept(
        stopped_after_split: Path, phantom_dir: Path, tmp_path: Path, which: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(stopped_after_split, out)
    path = _users_file(StudyLayout(out), which)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"mine")
    log_before = read_step_log(out / "steps.jsonl")
    with pytest.raises(ValueError, match=path.name) as refused:
        run_study(_options(phantom_dir, out))
    assert str(path) in str(refused.value)
    assert path.read_bytes() == b"mine"
    # Refused before any step ran (nothing trained, nothing logged).
    assert read_step_log(out / "steps.jsonl") == log_before


def test_the_best_pt_a_killed_first_epoch_left_is_still_replaced(phantom_dir: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    train = "random/detector/gamma_1/train"
    with pytest.raises(KeyboardInterrupt):
        run_study(_options(phantom_dir, out), on_step_done=_stop_after(train))
    run_dir = StudyLayout(out).detector_run("random", 1.0)
    # What a kill between the first epoch's best.pt and last.pt leaves (metrics come after both).
    for name in ("last.pt", "metrics.json", "metrics.csv"):
        (run_dir / name).unlink()
    with pytest.raises(KeyboardInterrupt):
        run_study(_options(phantom_dir, out), on_step_done=_stop_after(train))
    records: list[dict[str, Any]] = read_step_log(out / "steps.jsonl")
    assert [r["status"] for r in records if r["step"] == train] == ["ran", "ran"]
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()


def test_the_studys_own_files_are_replaced_and_an_edited_one_is_refused(
        phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    layout = run_study(_options(phantom_dir, out)).layout
    # The report step runs again (one of its outputs is gone) and replaces the study's own
    # report.md.
    layout.report_html.unlink()
    records = run_study(_options(phantom_dir, out)).records
    assert [r.status for r in records if r.step == "report"] == ["ran"]
    assert layout.report_html.is_file()
    # Once edited, summary.json is no longer the study's: refused, kept, nothing run.
    edited = layout.summary_json.read_text() + " "
    layout.summary_json.write_text(edited)
    with pytest.raises(ValueError, match="summary.json"):
        run_study(_options(phantom_dir, out))
    assert layout.summary_json.read_text() == edited
