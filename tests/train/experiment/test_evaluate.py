"""Per-image evaluation without training: the test set, full-frame vs in-box Dice through
paste-back, the detector-score gate of the Kaggle view, gamma choice and the statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bpedge.train.data import make_split, read_mask, scan_dataset
from bpedge.train.experiment.evaluate import (
    build_testset,
    evaluate_segmenter,
    load_figure_masks,
)
from bpedge.train.experiment.layout import StudyLayout
from bpedge.train.experiment.tables import choose_gamma, describe

from bpedge._stages import crop_resize


@pytest.fixture(scope="module")
def frames(phantom_dir: Path):
    return scan_dataset(phantom_dir).frames


def test_random_testset_keeps_the_data_share_of_empty_frames(frames) -> None:
    positives = [f for f in frames if f.present]
    empties = [f for f in frames if not f.present]
    split = make_split(positives, "random", seed=3)
    ts = build_testset(split, frames, "random", seed=3, figure_images=3)
    assert [f["key"] for f in ts["positive"]] == list(split.test)
    want = round(len(split.test) * len(empties) / len(positives))
    assert len(ts["empty"]) == want > 0
    empty_keys = {f.key for f in empties}
    assert all(f["key"] in empty_keys and f["box"] is None for f in ts["empty"])
    assert all(f["box"] is not None for f in ts["positive"])
    assert build_testset(split, frames, "random", seed=3, figure_images=3) == ts
    assert len(ts["figure_keys"]) == 3 and set(ts["figure_keys"]) <= set(split.test)
    assert ts["figure_keys"][0] == split.test[0]


def test_subject_testset_takes_empty_frames_of_test_subjects_only(frames) -> None:
    positives = [f for f in frames if f.present]
    split = make_split(positives, "subject", seed=0)
    ts = build_testset(split, frames, "subject", seed=0, figure_images=10)
    test_subjects = {k.split("_")[0] for k in split.test}
    assert ts["empty"]
    assert {f["key"].split("_")[0] for f in ts["empty"]} <= test_subjects
    assert len(ts["figure_keys"]) == min(10, len(split.test))


class _ConstantSegmenter(torch.nn.Module):
    """Probability 1 everywhere: every pixel of the crop box is predicted BP."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


@pytest.fixture()
def constant_model(monkeypatch: pytest.MonkeyPatch):
    payload = {"kind": "segmenter", "arch": "unet", "input_hw": [96, 96], "epoch": 1,
               "normalization": {"mean": 0.0, "std": 1.0}}
    from bpedge.train import checkpoint

    monkeypatch.setattr(checkpoint, "load_model", lambda path, device="cpu": (
        _ConstantSegmenter(), payload))


def _detections(ts: dict, low_score_key: str) -> dict:
    """Left half of the frame as every detector box; one BP frame and half the empty frames
    below the score threshold."""
    rows = []
    for i, f in enumerate(ts["positive"] + ts["empty"]):
        score = 0.2 if f["key"] == low_score_key or (f["box"] is None and i % 2) else 0.9
        rows.append({"key": f["key"], "score": score, "box": [0.0, 0.0, 290.0, 420.0],
                     "iou": 0.5 if f["box"] is not None else None})
    return {"images": rows}


def test_full_frame_dice_pastes_through_the_box_and_the_gate_only_affects_kaggle(
    frames, tmp_path: Path, constant_model: None
) -> None:
    positives = [f for f in frames if f.present]
    split = make_split(positives, "random", seed=1)
    ts = build_testset(split, frames, "random", seed=1, figure_images=2)
    low = ts["positive"][0]["key"]
    det = _detections(ts, low)
    results = {}
    for cond in ("none", "gt", "detector"):
        results[cond] = evaluate_segmenter(
            Path("unused.pt"), cond, ts, tmp_path / f"{cond}.json", tmp_path / f"{cond}.npz",
            detector_eval=det, score_threshold=0.5)
        assert json.loads((tmp_path / f"{cond}.json").read_text()) == results[cond]

    scores = {r["key"]: r["score"] for r in det["images"]}
    for f in ts["positive"]:
        truth = read_mask(Path(f["mask"])) > 0
        t = int(truth.sum())
        x0, y0, x1, y1 = (int(v) for v in f["box"])
        gt_area = (x1 - x0) * (y1 - y0)
        left = int(truth[:, :290].sum())
        rows = {c: next(r for r in results[c]["images"] if r["key"] == f["key"]) for c in results}
        # All-ones prediction: the pasted mask is exactly the crop box on the full frame.
        assert rows["none"]["dice_frame"] == pytest.approx(2 * t / (t + truth.size))
        assert rows["gt"]["dice_frame"] == pytest.approx(2 * t / (t + gt_area))
        assert rows["detector"]["dice_frame"] == pytest.approx(2 * left / (t + 290 * 420))
        truth_crop = crop_resize(truth.astype(np.uint8) * 255, f["box"], 96, 96) > 127.5
        tc = int(truth_crop.sum())
        assert rows["gt"]["dice_crop"] == pytest.approx(2 * tc / (tc + 96 * 96))
        assert rows["detector"]["detector_iou"] == 0.5
        gated = scores[f["key"]] < 0.5
        assert rows["detector"]["emitted"] is (not gated)
        assert rows["detector"]["dice_kaggle"] == pytest.approx(
            0.0 if gated else rows["detector"]["dice_frame"])
        assert rows["none"]["dice_kaggle"] == pytest.approx(rows["none"]["dice_frame"])

    for f in ts["empty"]:
        rows = {c: next(r for r in results[c]["images"] if r["key"] == f["key"]) for c in results}
        assert rows["gt"]["dice_frame"] is None and rows["gt"]["emitted"] is None
        assert rows["none"]["emitted"] is True and rows["none"]["dice_kaggle"] == 0.0
        called_empty = scores[f["key"]] < 0.5
        assert rows["detector"]["emitted"] is (not called_empty)
        assert rows["detector"]["dice_kaggle"] == (1.0 if called_empty else 0.0)

    masks = load_figure_masks(tmp_path / "gt.npz")
    assert sorted(masks) == sorted(ts["figure_keys"])
    for key, mask in masks.items():
        f = next(p for p in ts["positive"] if p["key"] == key)
        x0, y0, x1, y1 = (int(v) for v in f["box"])
        assert mask.shape == (420, 580) and mask[y0:y1, x0:x1].all()
        assert int(mask.sum()) == (x1 - x0) * (y1 - y0)


def test_detector_condition_needs_the_detector_evaluation(frames, tmp_path: Path,
                                                          constant_model: None) -> None:
    split = make_split([f for f in frames if f.present], "random", seed=1)
    ts = build_testset(split, frames, "random", seed=1, figure_images=1)
    with pytest.raises(ValueError, match="detector"):
        evaluate_segmenter(Path("x.pt"), "detector", ts, tmp_path / "a.json", tmp_path / "a.npz",
                           detector_eval=None, score_threshold=0.5)
    with pytest.raises(ValueError, match="condition"):
        evaluate_segmenter(Path("x.pt"), "bogus", ts, tmp_path / "a.json", tmp_path / "a.npz",
                           detector_eval={"images": []}, score_threshold=0.5)


def _fake_detector_run(layout: StudyLayout, gamma: float, val: float,
                       metric: str | None = None) -> None:
    run = layout.detector_run("random", gamma)
    run.mkdir(parents=True)
    named = {} if metric is None else {"metric_name": metric}
    (run / "metrics.json").write_text(json.dumps({"best_val_metric": val, "best_epoch": 1,
                                                  "epochs": [{"epoch": 1}], **named}))


def test_gamma_is_chosen_on_validation_with_ties_to_the_first(tmp_path: Path) -> None:
    layout = StudyLayout(tmp_path)
    for g, v in ((1.0, 0.4), (2.0, 0.7), (3.0, 0.7), (5.0, 0.1)):
        _fake_detector_run(layout, g, v)
    choice = choose_gamma(layout, "random", (1.0, 2.0, 3.0, 5.0))
    assert choice["chosen_gamma"] == 2.0
    assert choice["val_metric"] == {"1": 0.4, "2": 0.7, "3": 0.7, "5": 0.1}
    assert choice["metric"] == "val_miou"  # runs that did not record it validated on mIoU
    assert json.loads(layout.gamma_choice("random").read_text()) == choice
    assert choose_gamma(layout, "random", (3.0, 2.0))["chosen_gamma"] == 3.0


def test_gamma_chosen_on_the_presence_metric_says_so_and_metrics_are_not_mixed(
        tmp_path: Path) -> None:
    layout = StudyLayout(tmp_path)
    _fake_detector_run(layout, 1.0, 0.4, "val_miou_presence")
    _fake_detector_run(layout, 2.0, 0.6, "val_miou_presence")
    _fake_detector_run(layout, 3.0, 0.9, "val_miou")
    choice = choose_gamma(layout, "random", (1.0, 2.0))
    assert (choice["chosen_gamma"], choice["metric"]) == (2.0, "val_miou_presence")
    assert "mIoU x presence" in choice["rule"]
    with pytest.raises(ValueError, match="different metrics"):
        choose_gamma(layout, "random", (1.0, 3.0))


def test_describe_by_hand() -> None:
    s = describe([0.0, 1.0, 2.0, 3.0])
    assert s["n"] == 4 and s["mean"] == 1.5 and s["median"] == 1.5
    assert s["sd"] == pytest.approx(math.sqrt(5 / 3))
    assert (s["q1"], s["q3"], s["min"], s["max"]) == (0.75, 2.25, 0.0, 3.0)
    assert describe([0.5])["sd"] == 0.0
    assert describe([])["mean"] is None and describe([])["n"] == 0


def test_the_study_can_label_every_metric_a_detector_validates_on() -> None:
    from bpedge.train.experiment.tables import DETECTOR_METRIC_LABELS
    from bpedge.train.train_detector import VALIDATION_METRICS

    assert set(VALIDATION_METRICS.values()) == set(DETECTOR_METRIC_LABELS)


def test_random_testset_never_takes_empty_frames_the_detector_trained_on(frames) -> None:
    from bpedge.train.data import Split

    # Every BP frame of subject 1 in train: the detector trains on its empty frames too (those of
    # train-only subjects), so none of them may be an empty test frame.
    positives = [f.key for f in frames if f.present]
    rest = [k for k in positives if not k.startswith("1_")]
    split = Split(mode="random", seed=0, train=tuple(k for k in positives if k.startswith("1_")),
                  val=tuple(rest[:2]), test=tuple(rest[2:]))
    for seed in range(10):
        ts = build_testset(split, frames, "random", seed=seed, figure_images=1)
        assert ts["empty"]
        assert not [f["key"] for f in ts["empty"] if f["key"].startswith("1_")]
