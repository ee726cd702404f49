"""A reduced study end to end (phantom, --limit, one epoch, two gammas, one segmenter): every
table and figure file, the report's numbers against the metrics files, skipping finished steps,
and continuing an interrupted study (including a training run stopped part-way)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from bpedge.train.experiment import ExperimentOptions, StudyLayout, plan_study, run_study
from bpedge.train.experiment._steps import StepRecord, read_step_log
from bpedge.train.experiment.figures import figure_paths
from bpedge.train.experiment.options import CONDITIONS
from bpedge.train.experiment.report import fmt

GAMMAS = (1.0, 2.0)


def _options(data: Path, out: Path, **kw: Any) -> ExperimentOptions:
    base: dict[str, Any] = {
        "preset": "tiny", "gammas": GAMMAS, "split": "random", "archs": ("unet",),
        "detector_epochs": 1, "segmenter_epochs": 1, "limit": 30, "figure_images": 2,
        "progress": False,
    }
    return ExperimentOptions(data=data, out=out, **{**base, **kw})


@pytest.fixture(scope="module")
def study(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyLayout:
    out = tmp_path_factory.mktemp("study") / "run"
    outcome = run_study(_options(phantom_dir, out), command="bpedge experiment (test)")
    assert all(r.status == "ran" for r in outcome.records)
    return outcome.layout


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of a report as a list of {header: cell} rows."""
    tables, lines = [], markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            headers = [c.strip() for c in lines[i].strip("|").split(" | ")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("| "):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]]
                rows.append(dict(zip(headers, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _table_with(tables: list[list[dict[str, str]]], header: str) -> list[dict[str, str]]:
    found = [t for t in tables if t and header in t[0]]
    assert found, f"no table with a {header!r} column"
    return found[0]


def test_every_table_and_figure_file_is_written(study: StudyLayout) -> None:
    for path in (study.summary_json, study.report_md, study.report_html, study.data_json,
                 study.study_json, study.models_json, study.split_json("random"), study.testset_json("random"),
                 study.gamma_choice("random")):
        assert path.is_file(), path
    for g in GAMMAS:
        assert (study.detector_run("random", g) / "best.pt").is_file()
        assert study.detector_eval("random", g).is_file()
    for cond in CONDITIONS:
        assert (study.segmenter_run("random", "unet", cond) / "best.pt").is_file()
        assert study.segmenter_eval("random", "unet", cond).is_file()
    for png in figure_paths(study, ["random"]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert png.stat().st_size < 600_000, png
    report = study.report_md.read_text()
    html = study.report_html.read_text()
    for png in figure_paths(study, ["random"]):
        rel = png.relative_to(study.root).as_posix()
        assert f"]({rel})" in report and f'src="{rel}"' in html


def test_gamma_is_chosen_on_validation_and_used_downstream(study: StudyLayout) -> None:
    val = {g: _read(study.detector_run("random", g) / "metrics.json")["best_val_metric"]
           for g in GAMMAS}
    chosen = _read(study.gamma_choice("random"))["chosen_gamma"]
    assert val[chosen] == max(val.values())
    boxes = _read(study.segmenter_run("random", "unet", "detector") / "detector_boxes.json")
    assert boxes["detector"] == str((study.detector_run("random", chosen) / "best.pt").resolve())


def test_summary_is_the_per_image_metrics(study: StudyLayout) -> None:
    summary = _read(study.summary_json)
    for g, row in zip(GAMMAS, summary["detection"]["random"]["rows"]):
        ev = _read(study.detector_eval("random", g))
        ious = [r["iou"] for r in ev["images"] if r["present"]]
        assert row["test_miou"] == pytest.approx(np.mean(ious))
        assert row["val_metric"] == _read(study.detector_run("random", g) /
                                        "metrics.json")["best_val_metric"]
    split = _read(study.split_json("random"))
    assert summary["split_sizes"]["random"]["test"] == len(split["test"])
    for cond in CONDITIONS:
        ev = _read(study.segmenter_eval("random", "unet", cond))
        dices = [r["dice_frame"] for r in ev["images"] if r["present"]]
        assert len(dices) == len(split["test"])
        assert summary["segmentation"]["random"]["unet"][cond]["frame"]["mean"] == \
            pytest.approx(np.mean(dices))
    configs = summary["trained_configs"]
    assert sorted(configs) == ["detector", "unet"]
    assert [c["epochs"] for c in configs["detector"]] == [1]  # one config, as the options said
    assert [c["epochs"] for c in configs["unet"]] == [1]
    assert "focal_gamma" not in configs["detector"][0]
    rows = {r["subset"]: r for r in summary["dice_vs_iou"]["random"]["rows"]}
    assert rows["all test images"]["n"] == len(split["test"])
    assert rows["IoU >= 0.7"]["n"] + rows["IoU < 0.7"]["n"] == len(split["test"])


def test_report_numbers_equal_the_metrics_files(study: StudyLayout) -> None:
    summary = _read(study.summary_json)
    report = study.report_md.read_text()
    tables = _tables(report)

    table2 = _table_with(tables, "random: test mIoU")
    assert [r["gamma"] for r in table2] == ["1", "2"]
    for r, s in zip(table2, summary["detection"]["random"]["rows"]):
        assert r["random: test mIoU"] == fmt(s["test_miou"])
        assert r["random: val mIoU"].split()[0] == fmt(s["val_metric"])
        assert r["published test mIoU"] == fmt(summary["published"]["miou"][f"{s['gamma']:g}"])
    chosen = [r["gamma"] for r in table2 if "(chosen)" in r["random: val mIoU"]]
    assert chosen == [f"{summary['detection']['random']['chosen_gamma']:g}"]

    detail = _table_with(tables, "Dice mean (full frame)")
    assert len(detail) == len(CONDITIONS)
    for r, cond in zip(detail, CONDITIONS):
        e = summary["segmentation"]["random"]["unet"][cond]
        assert r["Dice mean (full frame)"] == fmt(e["frame"]["mean"])
        assert r["sd"] == fmt(e["frame"]["sd"])
        assert r["median"] == fmt(e["frame"]["median"])
        assert r["n"] == str(e["frame"]["n"])
        crop_col = next(k for k in r if k.startswith("in-box crop Dice"))
        assert r[crop_col] == fmt(e["crop"]["mean"])
    overview = _table_with(tables, "random: Dice mean ± sd")
    for r, cond in zip(overview, CONDITIONS):
        e = summary["segmentation"]["random"]["unet"][cond]["frame"]
        assert r["random: Dice mean ± sd"] == f"{fmt(e['mean'])} ± {fmt(e['sd'])}"
        assert r["published Dice"] == fmt(summary["published"]["dice"]["unet"][cond])

    dvi = _table_with(tables, "U-Net: RetinaNet-crop Dice")
    subsets = [r["subset"] for r in dvi]
    assert "all test images" in subsets and "IoU >= 0.7" in subsets  # both, always
    for r, s in zip(dvi, summary["dice_vs_iou"]["random"]["rows"]):
        assert r["n"] == str(s["n"])
        assert r["U-Net: RetinaNet-crop Dice"] == fmt(s["unet"]["detector"])
        assert r["U-Net: GT-crop Dice"] == fmt(s["unet"]["gt"])

    empty = summary["empty_frames"]["random"]
    assert empty is not None and empty["n_empty"] > 0  # the phantom has empty frames
    kaggle = _table_with(tables, "Kaggle-style mean Dice (all frames)")
    for r, cond in zip(kaggle, CONDITIONS):
        e = empty["unet"][cond]
        if e is None:
            assert r["presence accuracy (all frames)"] == "n/a"
        else:
            assert r["presence accuracy (all frames)"] == fmt(e["presence_accuracy"])
            assert r["Kaggle-style mean Dice (all frames)"] == fmt(e["kaggle_mean_dice"])

    models = _read(study.models_json)
    complexity = _table_with(tables, "GFLOPs per inference")
    assert [r["model"] for r in complexity] == ["RetinaNet", "U-Net"]
    assert [r["parameters"] for r in complexity] == [
        f"{models[k]['parameters']:,}" for k in ("detector", "unet")]

    sizes = _table_with(tables, "test (empty)")
    assert sizes[0]["test (BP)"] == str(summary["split_sizes"]["random"]["test"])
    data = _read(study.data_json)
    assert data["fingerprint"] in report
    assert "bpedge experiment (test)" in report
    html = study.report_html.read_text()
    for r in table2:
        assert f"<td>{r['random: test mIoU']}</td>" in html


def test_a_second_run_skips_every_finished_step(study: StudyLayout, phantom_dir: Path) -> None:
    checkpoints = sorted(study.root.rglob("*.pt"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    report_before = study.report_md.read_text()
    t0 = time.perf_counter()
    outcome = run_study(_options(phantom_dir, study.root), command="bpedge experiment (test)")
    elapsed = time.perf_counter() - t0
    assert [r.status for r in outcome.records] == ["skipped"] * len(outcome.records)
    assert [r.step for r in outcome.records] == [s.name for s in plan_study(
        _options(phantom_dir, study.root))]
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before
    assert study.report_md.read_text() == report_before
    assert elapsed < 20


def test_changed_study_defining_options_are_refused(study: StudyLayout, phantom_dir: Path) -> None:
    with pytest.raises(ValueError, match="--seed"):
        run_study(_options(phantom_dir, study.root, seed=5))


def _stop_after(step: str):
    def hook(record: StepRecord) -> None:
        if record.step == step:
            raise KeyboardInterrupt

    return hook


def _stop_after_first_run():
    def hook(record: StepRecord) -> None:
        if record.status != "skipped":
            raise KeyboardInterrupt

    return hook


def test_an_interrupted_study_resumes(phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    opts = _options(phantom_dir, out, gammas=(2.0,))
    train = "random/detector/gamma_2/train"
    with pytest.raises(KeyboardInterrupt):
        run_study(opts, on_step_done=_stop_after(train))
    first = read_step_log(out / "steps.jsonl")
    assert [r["step"] for r in first] == ["data", "models", "random/split", train]
    run_dir = StudyLayout(out).detector_run("random", 2.0)
    epoch1 = _read(run_dir / "metrics.json")["epochs"][0]

    # Started again: the finished steps are skipped and the study goes on where it stopped.
    with pytest.raises(KeyboardInterrupt):
        run_study(opts, on_step_done=_stop_after_first_run())
    second = read_step_log(out / "steps.jsonl")[len(first):]
    assert [(r["step"], r["status"]) for r in second] == [
        ("data", "skipped"), ("models", "skipped"), ("random/split", "skipped"),
        (train, "skipped"),
        ("random/detector/gamma_2/evaluate", "ran"),
    ]

    # Asked for more epochs, the detector's run folder holds an unfinished checkpoint: resumed
    # from it (epoch 1 kept as it was).
    best_before = (run_dir / "best.pt").read_bytes()
    more = _options(phantom_dir, out, gammas=(2.0,), detector_epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run_study(more, on_step_done=_stop_after("random/detector/gamma_2/evaluate"))
    third = read_step_log(out / "steps.jsonl")[len(first) + len(second):]
    # The evaluation reruns exactly when the kept checkpoint changed (epoch 2 was better).
    improved = (run_dir / "best.pt").read_bytes() != best_before
    assert [(r["step"], r["status"]) for r in third] == [
        ("data", "skipped"), ("models", "skipped"), ("random/split", "skipped"),
        (train, "resumed"),
        ("random/detector/gamma_2/evaluate", "ran" if improved else "skipped"),
    ]
    epochs = _read(run_dir / "metrics.json")["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[0] == epoch1


def test_both_split_modes_are_reported_side_by_side(study: StudyLayout, tmp_path: Path) -> None:
    """The tables, figures and report of two split modes, from the random mode's files copied
    as a second mode (no training: only how two modes are laid out is checked here)."""
    import shutil

    from bpedge.train.experiment.figures import make_figures
    from bpedge.train.experiment.report import write_report
    from bpedge.train.experiment.runner import _write_timings
    from bpedge.train.experiment.tables import build_summary

    root = tmp_path / "both"
    shutil.copytree(study.root, root)
    shutil.copytree(root / "random", root / "subject")
    layout = StudyLayout(root)
    summary = build_summary(layout, ("random", "subject"), GAMMAS, ("unet",), CONDITIONS, 0.5)
    make_figures(layout)
    _write_timings(layout)
    write_report(layout)
    for png in figure_paths(layout, ["random", "subject"]):
        assert png.is_file(), png
    tables = _tables(layout.report_md.read_text())
    table2 = _table_with(tables, "subject: test mIoU")
    assert "random: test mIoU" in table2[0]
    overview = _table_with(tables, "subject: Dice mean ± sd")
    for r, cond in zip(overview, CONDITIONS):
        for mode in ("random", "subject"):
            e = summary["segmentation"][mode]["unet"][cond]["frame"]
            assert r[f"{mode}: Dice mean ± sd"] == f"{fmt(e['mean'])} ± {fmt(e['sd'])}"
    sizes = _table_with(tables, "test (empty)")
    assert [r["split mode"] for r in sizes] == ["random", "subject"]
