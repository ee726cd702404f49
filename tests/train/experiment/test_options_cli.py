"""Options checked where they enter (library and CLI), epochs resolution, and the study plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpedge.train.experiment.options import (
    ExperimentOptions,
    parse_float_list,
    parse_name_list,
)
from bpedge.train.presets import get_preset
from typer.testing import CliRunner

from bpedge._cli import app as cli_app


def _opts(tmp_path: Path, **kw) -> ExperimentOptions:
    return ExperimentOptions(data=tmp_path, out=tmp_path / "run", **kw)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("gammas", (), "--gammas"),
    ("gammas", (1.0, 1.0), "repeats"),
    ("gammas", (-1.0,), "--gammas"),
    ("split", "leaky", "--split"),
    ("archs", ("segformer",), "--archs"),
    ("device", "tpu", "--device"),
    ("epochs_scale", 0.0, "--epochs-scale"),
    ("epochs_scale", float("inf"), "--epochs-scale must be in"),
    ("epochs_scale", float("nan"), "--epochs-scale must be in"),
    ("epochs_scale", 1e300, "--epochs-scale must be in"),
    ("gammas", (float("nan"),), "--gammas must be finite"),
    ("detector_epochs", 0, "--detector-epochs"),
    ("limit", 0, "--limit"),
    ("on_error", "ignore", "--on-error"),
    ("score_threshold", 1.5, "--score-threshold"),
    ("preset", "huge", "preset"),
])
def test_bad_options_say_what_is_expected(tmp_path: Path, field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _opts(tmp_path, **{field: value}).check()


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--data"):
        ExperimentOptions(data=tmp_path / "nope", out=tmp_path / "run").check()


def test_epochs_come_from_the_preset_scaled_or_overridden(tmp_path: Path) -> None:
    tiny = get_preset("tiny")
    assert _opts(tmp_path).detector_epoch_count() == tiny.detector.epochs
    scaled = _opts(tmp_path, epochs_scale=0.5)
    assert scaled.detector_epoch_count() == max(1, round(tiny.detector.epochs * 0.5))
    assert scaled.segmenter_epoch_count("mnet") == max(1, round(tiny.mnet.epochs * 0.5))
    assert _opts(tmp_path, epochs_scale=0.001).detector_epoch_count() == 1
    both = _opts(tmp_path, epochs_scale=0.5, segmenter_epochs=7)
    assert both.segmenter_epoch_count("unet") == 7
    assert both.detector_epoch_count() == max(1, round(tiny.detector.epochs * 0.5))
    assert both.to_json()["resolved_epochs"]["unet"] == 7


def test_split_both_runs_both_modes(tmp_path: Path) -> None:
    assert _opts(tmp_path, split="both").split_modes == ("random", "subject")
    assert _opts(tmp_path, split="subject").split_modes == ("subject",)


def test_list_parsing() -> None:
    assert parse_float_list("1, 2,3.5", "--gammas") == (1.0, 2.0, 3.5)
    with pytest.raises(ValueError, match="--gammas"):
        parse_float_list("1,two", "--gammas")
    assert parse_name_list("UNet,mnet", "--archs", ("unet", "mnet")) == ("unet", "mnet")
    with pytest.raises(ValueError, match="--archs"):
        parse_name_list("unet,vit", "--archs", ("unet", "mnet"))


def test_plan_lists_every_step_in_order(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from bpedge.train.experiment import plan_study

    names = [s.name for s in plan_study(_opts(tmp_path, split="both", gammas=(1.0, 5.0),
                                              archs=("mnet",)))]
    assert names[:2] == ["data", "models"] and names[-3:] == ["summary", "figures", "report"]
    for mode in ("random", "subject"):
        mine = [n for n in names if n.startswith(f"{mode}/")]
        assert mine[0] == f"{mode}/split"
        choose = mine.index(f"{mode}/choose-gamma")
        # every detector is trained and evaluated before the choice, every segmenter after it
        assert {f"{mode}/detector/gamma_1/train", f"{mode}/detector/gamma_5/evaluate"} <= set(
            mine[:choose])
        assert mine[choose + 1:] == [f"{mode}/segmenter/mnet_{c}/{w}"
                                     for c in ("none", "detector", "gt")
                                     for w in ("train", "evaluate")]


def _app():
    try:
        return cli_app.build_app()
    except ModuleNotFoundError as exc:  # another engineer's command module not in the tree yet
        pytest.skip(f"CLI app incomplete in this tree: {exc}")


def test_cli_help_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(_app(), ["experiment", "--help"])
    assert result.exit_code == 0
    for option in ("--gammas", "--split", "--archs", "--epochs-scale", "--limit", "--dedup"):
        assert option in result.output
    result = runner.invoke(_app(), ["experiment", "--data", str(tmp_path), "--out",
                                    str(tmp_path / "run"), "--split", "leaky"])
    assert result.exit_code == 2
    assert "--split" in result.output
    result = runner.invoke(_app(), ["experiment", "--data", str(tmp_path), "--out",
                                    str(tmp_path / "run"), "--gammas", "1,x"])
    assert result.exit_code == 2 and "--gammas" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_subject_split_is_the_default_and_folds_name_their_splits(tmp_path: Path) -> None:
    assert _opts(tmp_path).split_modes == ("subject",)
    folds = _opts(tmp_path, folds=3)
    assert folds.split_modes == ("subject-fold1", "subject-fold2", "subject-fold3")
    assert folds.split_of("subject-fold2") == ("subject", 2)
    both = _opts(tmp_path, split="both", folds=2)
    assert both.split_modes == ("random", "subject-fold1", "subject-fold2")
    assert both.fold_names == ("subject-fold1", "subject-fold2")
    with pytest.raises(ValueError, match="--folds"):
        _opts(tmp_path, folds=1).check()
    with pytest.raises(ValueError, match="--folds"):
        _opts(tmp_path, split="random", folds=3).check()
    with pytest.raises(FileNotFoundError, match="--backbone-weights"):
        _opts(tmp_path, backbone_weights=tmp_path / "missing.pt").check()
    with pytest.raises(ValueError, match="--backbone-weights file .* is a directory, not a file"):
        _opts(tmp_path, backbone_weights=tmp_path).check()  # said "does not exist"
    for spacing in (0.0, float("inf"), float("nan")):  # inf was taken: Infinity in study.json
        with pytest.raises(ValueError, match="--pixel-spacing-mm"):
            _opts(tmp_path, pixel_spacing_mm=spacing).check()


def test_backbone_weights_reach_every_detector_run(tmp_path: Path, monkeypatch) -> None:
    """``--backbone-weights`` is handed to each detector training run as its initial weights."""
    import torch
    from bpedge.train.experiment import runner
    from bpedge.train.experiment.layout import StudyLayout
    from torchvision.models import resnet18

    weights = tmp_path / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), weights)
    seen = {}

    def fake_train(opts):
        seen["weights"], seen["fold"] = opts.weights, (opts.folds, opts.fold)
        raise RuntimeError("stop")

    monkeypatch.setattr("bpedge.train.train_detector.train_detector", fake_train)
    opts = _opts(tmp_path, folds=3, backbone_weights=weights)
    with pytest.raises(RuntimeError, match="stop"):
        runner._train_detector(opts, StudyLayout(tmp_path / "run"), "subject-fold2", 2.0, False)
    assert seen == {"weights": weights, "fold": (3, 2)}


def test_a_second_study_into_a_folder_a_study_is_running_in_is_refused(tmp_path: Path) -> None:
    from bpedge.train.experiment.runner import run_study

    from bpedge._out_dir import OutDirRefused, claim_out_dir, lock_out_dir

    opts = _opts(tmp_path)
    claim_out_dir(opts.out, "experiment")
    with lock_out_dir(opts.out, "experiment"), \
            pytest.raises(OutDirRefused, match="another `bpedge experiment` is writing"):
        run_study(opts)
    assert not (opts.out / "study.json").exists()


def test_a_study_continues_when_its_data_is_spelled_another_way(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Started with a relative --data, continued with the absolute path of the same folder: it
    was refused as a study made with other options; another folder still is."""
    from bpedge.train.experiment.layout import StudyLayout
    from bpedge.train.experiment.runner import _write_study_json

    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    layout = StudyLayout(tmp_path / "run")
    layout.root.mkdir()
    monkeypatch.chdir(tmp_path)
    _write_study_json(ExperimentOptions(data=Path("data"), out=layout.root), layout, None)
    monkeypatch.chdir("/")
    _write_study_json(ExperimentOptions(data=tmp_path / "data", out=layout.root), layout, None)
    with pytest.raises(ValueError, match="--data"):
        _write_study_json(ExperimentOptions(data=tmp_path / "other", out=layout.root), layout,
                          None)


def test_an_unloadable_backbone_weights_file_is_refused_before_the_study_folder(
        tmp_path: Path) -> None:
    """An empty --backbone-weights file was refused only after study.json had recorded it: the
    folder then refused every run without it."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    opts = _opts(tmp_path, backbone_weights=empty)
    with pytest.raises(ValueError, match="empty.pt"):
        opts.check()
    assert not opts.out.exists()


def test_other_files_at_the_same_data_path_are_refused_before_any_step(tmp_path: Path) -> None:
    """Another dataset put at the study's --data path: every finished step was skipped as done
    and the report kept the old data's models; a step still to run trained on the new files."""
    from bpedge.train.data import PhantomConfig, generate_phantom, scan_dataset
    from bpedge.train.experiment.layout import StudyLayout
    from bpedge.train.experiment.runner import _refuse_changed_data

    data = generate_phantom(tmp_path / "data", PhantomConfig(subjects=2, frames=2, height=96,
                                                            width=96))
    layout = StudyLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.data_json.write_text(json.dumps({"root": str(data.resolve()),
                                            "fingerprint": scan_dataset(data).fingerprint}))
    layout.study_json.write_text(json.dumps({"options": {"data": str(data.resolve())}}))
    opts = ExperimentOptions(data=data, out=layout.root)
    _refuse_changed_data(opts, layout)  # the same files: goes on
    generate_phantom(tmp_path / "other", PhantomConfig(subjects=2, frames=2, seed=3, height=96,
                                                       width=96))
    (data / "1_1.tif").write_bytes((tmp_path / "other" / "1_1.tif").read_bytes())
    with pytest.raises(ValueError, match="does not hold the files this study was made from"):
        _refuse_changed_data(opts, layout)
    # Another folder is left to study.json's check, which names the option that changed.
    _refuse_changed_data(ExperimentOptions(data=tmp_path / "other", out=layout.root), layout)


def test_other_files_in_a_kaggle_folders_train_subfolder_are_refused(tmp_path: Path) -> None:
    """A Kaggle folder's frames are in train/: data.json's root (train/) never equalled --data,
    and the fingerprint was not compared."""
    from bpedge.train.data import PhantomConfig, generate_phantom, scan_dataset
    from bpedge.train.experiment.layout import StudyLayout
    from bpedge.train.experiment.runner import _refuse_changed_data

    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    train = generate_phantom(kaggle / "train", PhantomConfig(subjects=2, frames=2, height=96,
                                                             width=96))
    index = scan_dataset(kaggle)
    assert index.root.resolve() == train.resolve()
    layout = StudyLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.data_json.write_text(json.dumps({"root": str(index.root.resolve()),
                                            "fingerprint": index.fingerprint}))
    layout.study_json.write_text(json.dumps({"options": {"data": str(kaggle.resolve())}}))
    opts = ExperimentOptions(data=kaggle, out=layout.root)
    _refuse_changed_data(opts, layout)
    (train / "1_1.tif").write_bytes((train / "2_1.tif").read_bytes())
    with pytest.raises(ValueError, match="does not hold the files this study was made from"):
        _refuse_changed_data(opts, layout)


def test_other_bytes_at_the_same_backbone_weights_path_are_refused(tmp_path: Path) -> None:
    """Only the path was compared: a rerun with other weights at that path started the new
    detectors from them."""
    import torch
    from bpedge.train.experiment.layout import StudyLayout
    from bpedge.train.experiment.runner import _write_study_json

    weights = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, weights)
    layout = StudyLayout(tmp_path / "run")
    layout.root.mkdir()
    opts = ExperimentOptions(data=tmp_path, out=layout.root, backbone_weights=weights)
    _write_study_json(opts, layout, None)
    _write_study_json(opts, layout, None)  # the same bytes: goes on
    torch.save({"conv.weight": torch.ones(2, 2)}, weights)
    with pytest.raises(ValueError, match="--backbone-weights: the file's contents changed"):
        _write_study_json(opts, layout, None)
