"""A reduced subject-wise K-fold study end to end: every subject tested once, the pooled table
with confidence intervals, the "BP present" threshold from validation, and the report section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from bpedge.train.experiment import ExperimentOptions, StudyLayout, run_study
from bpedge.train.experiment.report_crossval import with_ci
from bpedge.train.presets import get_preset


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def study(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyLayout:
    out = tmp_path_factory.mktemp("cv") / "run"
    opts = ExperimentOptions(
        data=phantom_dir, out=out, preset="tiny", gammas=(2.0,), split="subject", folds=2,
        archs=("unet",), detector_epochs=1, segmenter_epochs=1, figure_images=1, progress=False,
    )
    assert opts.split_modes == ("subject-fold1", "subject-fold2")
    run_study(opts, command="bpedge experiment (test)")
    return StudyLayout(out)


def test_every_subject_is_tested_once_by_models_that_never_saw_it(study: StudyLayout) -> None:
    tested: list[str] = []
    for fold in (1, 2):
        split = _read(study.split_json(f"subject-fold{fold}"))
        assert (split["fold"], split["folds"]) == (fold, 2)
        train_subjects = {k.split("_")[0] for k in split["train"] + split["val"]}
        test_subjects = {k.split("_")[0] for k in split["test"]}
        assert not train_subjects & test_subjects
        run_split = _read(study.detector_run(f"subject-fold{fold}", 2.0) / "split.json")
        assert run_split["test"] == split["test"]
        tested += sorted(test_subjects)
        valset = _read(study.valset_json(f"subject-fold{fold}"))
        val_subjects = {f["key"].split("_")[0] for f in valset["positive"] + valset["empty"]}
        assert val_subjects == {k.split("_")[0] for k in split["val"]}
    assert sorted(tested) == ["1", "2", "3", "4"]


def test_pooled_table_has_intervals_over_subjects(study: StudyLayout) -> None:
    cv = _read(study.summary_json)["crossval"]
    assert cv["folds"] == ["subject-fold1", "subject-fold2"]
    assert {s["subject"] for s in cv["per_subject"]} == {"1", "2", "3", "4"}
    dice = cv["segmentation"]["unet"]["gt"]["dice"]
    assert dice["groups"] == 4 and dice["ci_low"] <= dice["value"] <= dice["ci_high"]
    n_pos = sum(len(_read(study.testset_json(f"subject-fold{k}"))["positive"]) for k in (1, 2))
    assert cv["detector_miou"]["n"] == dice["n"] == n_pos
    assert [p["a"] + "-" + p["b"] for p in cv["paired"]["unet"]] == \
        ["detector-none", "gt-detector", "gt-none"]
    presence = cv["presence"]
    assert len(presence["folds"]) == 2 and presence["test_frames_without_bp"] > 0
    assert 0.0 <= presence["ece"] <= 1.0
    sweep = cv["margin_sweep"]["unet"]
    trained_margin = get_preset("tiny").unet.crop_margin  # read back from the checkpoint
    assert sweep["trained_margin"] == pytest.approx(trained_margin)
    assert [r["margin"] for r in sweep["rows"]] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert sweep["chosen_on_validation"] == max(sweep["rows"], key=lambda r: r["val_dice"])["margin"]
    trained = next(r for r in sweep["rows"] if r["margin"] == pytest.approx(trained_margin))
    # The sweep at the trained margin crops exactly as the segmenter's own evaluation did.
    assert trained["test_dice"]["value"] == pytest.approx(
        cv["segmentation"]["unet"]["detector"]["dice"]["value"])
    for metric in ("hd95", "msd"):
        assert cv["segmentation"]["unet"]["gt"][metric]["n"] + \
            cv["segmentation"]["unet"]["gt"][f"{metric}_undefined"] == n_pos


def test_report_leads_with_the_cross_validation(study: StudyLayout) -> None:
    report = study.report_md.read_text()
    cv = _read(study.summary_json)["crossval"]
    assert "Subject-wise 2-fold cross-validation" in report
    assert report.index("cross-validation") < report.index("Detection: RetinaNet")
    assert with_ci(cv["segmentation"]["unet"]["detector"]["dice"]) in report
    assert (study.figures / "reliability.png").is_file()
