"""Both trainers end to end on the phantom: they learn, and their run folders hold what they claim."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bpedge.train._run_files import RECORD_NAME
from bpedge.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from bpedge.train.data import read_image, scan_dataset
from bpedge.train.predict import predict_frames
from bpedge.train.train_detector import DetectorOptions, train_detector
from bpedge.train.train_segmenter import SegmenterOptions, train_segmenter

from bpedge._stages import crop_resize


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # On a 2-core machine shared with other test processes, two spinning intra-op threads make
    # these tiny models 10x slower than one; restore the setting for the rest of the session.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector_run(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("det") / "run"
    train_detector(DetectorOptions(data=phantom_dir, out=out, preset="tiny", epochs=3,
                                   batch_size=4, progress=False))
    return out


def _epochs(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_detector_learns_and_writes_a_complete_run(detector_run: Path, phantom_dir: Path) -> None:
    rows = _epochs(detector_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert 0.0 <= float(r["val_metric"]) <= 1.0

    config = json.loads((detector_run / "config.json").read_text())
    assert config["kind"] == "detector" and config["model"]["epochs"] == 3
    split = json.loads((detector_run / "split.json").read_text())
    assert split["train"] and split["val"] and split["test"]
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))

    model, payload = load_model(detector_run / "best.pt")
    assert not model.training
    assert payload["kind"] == "detector" and payload["crop_mode"] is None
    assert payload["split"]["train"] == split["train"]
    index = scan_dataset(phantom_dir)
    assert payload["data_fingerprint"] == index.fingerprint
    # z-score statistics: those of the resized training frames only, not of val or test.
    in_h, in_w = payload["input_hw"]
    frames = {f.key: f for f in index.frames}

    def resized(keys: list[str]) -> np.ndarray:
        return np.stack([
            crop_resize(read_image(frames[k].image_path), (0, 0, 580, 420), in_w, in_h)
            for k in keys
        ])

    train_px = resized(split["train"])
    assert payload["normalization"]["mean"] == pytest.approx(float(train_px.mean()), rel=1e-6)
    assert payload["normalization"]["std"] == pytest.approx(float(train_px.std()), rel=1e-5)
    other_px = resized(split["val"] + split["test"])
    assert abs(float(other_px.mean()) - float(train_px.mean())) > 1e-3  # the check can tell

    best = max(rows, key=lambda r: float(r["val_metric"]))
    assert load_checkpoint(detector_run / "best.pt")["epoch"] == int(best["epoch"])
    assert load_checkpoint(detector_run / "last.pt")["epoch"] == 3


def test_predicted_boxes_are_clamped_to_the_frame(detector_run: Path, phantom_dir: Path) -> None:
    frames = scan_dataset(phantom_dir).positive()[:5]
    preds = predict_frames(detector_run, frames)
    assert list(preds) == [f.key for f in frames]
    for p in preds.values():
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= 580 and 0 <= y0 < y1 <= 420
        assert 0.0 <= p.score <= 1.0


def test_unet_on_gt_crops_learns(phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "unet"
    result = train_segmenter(SegmenterOptions(
        data=phantom_dir, out=out, preset="tiny", arch="unet", crop="gt", epochs=3,
        batch_size=4, progress=False,
    ))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert [int(r["epoch"]) for r in _epochs(out)] == [1, 2, 3]
    model, payload = load_model(out / "best.pt")
    assert payload["arch"] == "unet" and payload["crop_mode"] == "gt"
    assert payload["input_hw"] == [96, 96]
    x = torch.zeros(2, 1, 96, 96)
    with torch.no_grad():
        prob = model(x)
    assert prob.shape == (2, 1, 96, 96) and float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_mnet_on_detector_crops_caches_boxes(
    detector_run: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    detector = tmp_path / "detector.pt"
    shutil.copyfile(detector_run / "best.pt", detector)
    out = tmp_path / "mnet"
    opts = SegmenterOptions(
        data=phantom_dir, out=out, preset="tiny", arch="mnet", crop="detector",
        detector=detector, epochs=1, batch_size=8, progress=False, verbose=False,
    )
    result = train_segmenter(opts)
    assert len(result.history) == 1 and 0.0 <= result.history[0]["val_metric"] <= 1.0
    cache = out / "detector_boxes.json"
    cached = json.loads(cache.read_text())
    split = json.loads((out / "split.json").read_text())
    assert set(cached["frames"]) == set(split["train"]) | set(split["val"]) | set(split["test"])
    # The cache holds exactly what the detector predicts (clamped), not something re-derived.
    frames = [f for f in scan_dataset(phantom_dir).frames if f.key in split["val"]]
    direct = predict_frames(detector, frames)
    for key, pred in direct.items():
        assert cached["frames"][key]["box"] == pytest.approx(list(pred.box), abs=1e-4)
    payload = load_checkpoint(out / "last.pt")
    assert payload["crop_mode"] == "detector" and payload["arch"] == "mnet"
    assert payload["config"]["crop"]["detector"] == str(detector.resolve())

    # Resuming reuses the cached boxes as they are...
    before = cache.stat().st_mtime_ns
    resumed = train_segmenter(dataclasses.replace(opts, epochs=2, resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert cache.stat().st_mtime_ns == before
    # ...and refuses them once the detector they came from has changed.
    changed = load_checkpoint(detector)
    changed["epoch"] += 1
    save_checkpoint(detector, changed)
    with pytest.raises(ValueError, match="changed since this run cached its boxes"):
        train_segmenter(dataclasses.replace(opts, epochs=3, resume=True))


def test_a_run_saved_before_a_config_field_existed_resumes(
        detector_run: Path, phantom_dir: Path, tmp_path: Path) -> None:
    # A run from an older bpedge lacks the fields added since; it ran with their defaults (new
    # options are added switched off), so --resume must accept it unless a field is now set to
    # something else.
    run = tmp_path / "run"
    shutil.copytree(detector_run, run)
    payload = load_checkpoint(run / "last.pt")
    for name in ("paste_fraction", "ema_decay", "focal_gamma"):
        del payload["config"]["model"][name]
    save_checkpoint(run / "last.pt", payload)
    # Nor does it have the record of its files that a run keeps now: the files are taken as its.
    (run / RECORD_NAME).unlink()
    opts = DetectorOptions(data=phantom_dir, out=run, preset="tiny", epochs=4, batch_size=4,
                           progress=False, verbose=False, resume=True)
    with pytest.raises(ValueError, match=r"model\.focal_gamma: '<unset>' \(default 2\.0\) -> 0\.5"):
        train_detector(dataclasses.replace(opts, gamma=0.5))
    resumed = train_detector(opts)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_decoys_are_the_best_boxes_that_miss_the_bp(detector_run: Path, phantom_dir: Path) -> None:
    from bpedge.train.predict import load_detector, predict_boxes, predict_decoys

    from bpedge._metrics import box_iou

    frames = scan_dataset(phantom_dir).frames[:12]
    images = [read_image(f.image_path) for f in frames]
    model, payload = load_detector(detector_run / "best.pt")
    top = predict_boxes(model, payload, images)
    decoys = predict_decoys(model, payload, images, [f.box for f in frames], candidates=8)
    assert any(d is not None for d in decoys)
    for f, t, d in zip(frames, top, decoys):
        if d is None:
            continue
        h, w = read_image(f.image_path).shape
        assert 0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h
        assert d.score <= t.score + 1e-6  # never better than the top box
        if f.box is None:  # no BP: the top box is the detector's mistake
            assert d.box == pytest.approx(t.box, abs=1e-3) and d.score == pytest.approx(t.score)
        else:
            assert box_iou(d.box, f.box) < 0.1
    with pytest.raises(ValueError, match="one truth per frame"):
        predict_decoys(model, payload, images, [None])


def test_decoy_crops_train_on_the_detectors_wrong_boxes(
    detector_run: Path, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bpedge.train import presets

    tiny = presets.PRESETS["tiny"]
    monkeypatch.setitem(presets.PRESETS, "tiny-decoys", dataclasses.replace(
        tiny, name="tiny-decoys", unet=dataclasses.replace(tiny.unet, decoy_crops=True)))
    out = tmp_path / "unet"
    opts = SegmenterOptions(data=phantom_dir, out=out, preset="tiny-decoys", crop="gt",
                            detector=detector_run / "best.pt", epochs=1, batch_size=8,
                            progress=False, verbose=False)
    result = train_segmenter(opts)
    assert len(result.history) == 1
    cached = json.loads((out / "detector_boxes.json").read_text())
    split = json.loads((out / "split.json").read_text())
    subjects = {part: {k.split("_")[0] for k in split[part]} for part in ("train", "val", "test")}
    train_only = subjects["train"] - subjects["val"] - subjects["test"]
    empty_train = {f.key for f in scan_dataset(phantom_dir).frames
                   if not f.present and str(f.subject) in train_only}
    assert empty_train
    # A decoy (or None) for every training frame, BP or empty, and for no other frame: finding
    # one reads the frame's ground truth, so validation and test frames are never looked at.
    assert set(cached["decoys"]) == set(split["train"]) | empty_train
    assert any(v is not None for v in cached["decoys"].values())
    with pytest.raises(ValueError, match="decoy crops"):
        SegmenterOptions(data=phantom_dir, out=tmp_path / "x", preset="tiny-decoys").check()
    with pytest.raises(ValueError, match="--detector is only used"):
        SegmenterOptions(data=phantom_dir, out=tmp_path / "y", preset="tiny", crop="gt",
                         detector=detector_run / "best.pt").check()


@pytest.fixture
def presence_preset(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The tiny preset with a presence head, registered under its own name (and removed after)."""
    from bpedge.train import presets

    tiny = presets.get_preset("tiny")
    detector = dataclasses.replace(tiny.detector, presence_head=True, empty_fraction=1.0)
    monkeypatch.setitem(presets.PRESETS, "tiny+presence",
                        dataclasses.replace(tiny, name="tiny+presence", detector=detector))
    yield "tiny+presence"


def test_a_detector_with_a_presence_head_trains_on_empty_frames_and_scores_with_it(
        presence_preset: str, phantom_dir: Path, tmp_path: Path) -> None:
    from bpedge.train.predict import load_detector, predict_boxes

    out = tmp_path / "run"
    train_detector(DetectorOptions(data=phantom_dir, out=out, preset=presence_preset, epochs=2,
                                   batch_size=4, progress=False))
    model, payload = load_detector(out / "best.pt", "cpu")
    assert payload["model_config"]["presence_head"] is True
    assert model.presence_head is not None
    split = json.loads((out / "split.json").read_text())
    frames = [f for f in scan_dataset(phantom_dir).frames
              if f"{f.subject}_{f.frame}" in split["test"]][:4]
    assert len(frames) == 4
    images = [read_image(f.image_path) for f in frames]
    with_head = predict_boxes(model, payload, images)
    model.presence_head = None
    anchors = predict_boxes(model, payload, images)
    # The score is the head's; the box is still the best anchor's.
    assert [p.score for p in with_head] != pytest.approx([p.score for p in anchors], abs=1e-4)
    assert [p.box for p in with_head] == [p.box for p in anchors]


def test_a_per_image_detector_exports_and_runs_blind_to_the_scanner_gain(
        phantom_dir: Path, tiny_checkpoints: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bpedge.export.bundle_export import ExportOptions, export_bundle
    from bpedge.train import presets
    from bpedge.train.predict import load_detector, predict_boxes

    from bpedge import Segmenter
    from bpedge._preprocessing import crop_box
    from bpedge.bundle import Bundle

    tiny = presets.get_preset("tiny")
    detector = dataclasses.replace(tiny.detector, normalization="per_image")
    monkeypatch.setitem(presets.PRESETS, "tiny+per-image",
                        dataclasses.replace(tiny, name="tiny+per-image", detector=detector))
    run = tmp_path / "det"
    train_detector(DetectorOptions(data=phantom_dir, out=run, preset="tiny+per-image", epochs=2,
                                   batch_size=4, progress=False))
    model, payload = load_detector(run / "best.pt", "cpu")
    assert payload["normalization"] == {"mean": None, "std": None}

    bundle = tmp_path / "bundle"
    export_bundle(ExportOptions(detector=run, segmenter=tiny_checkpoints[1].parent, out=bundle,
                                data=phantom_dir))
    preprocessing = Bundle.open(bundle).manifest.preprocessing
    assert preprocessing.detector.norm == "per_image"

    frame = read_image(scan_dataset(phantom_dir).frames[0].image_path)
    # The same scene with the overall gain turned down and an offset (a linear map of grey
    # levels that stays inside 0-255): only the 8-bit rounding differs after z-scoring.
    dimmer = np.rint(frame.astype(np.float64) * 0.6 + 30).astype(np.uint8)
    want = predict_boxes(model, payload, [frame])[0]
    with Segmenter.from_bundle(bundle, backend="onnxruntime") as seg:
        got, got_dimmer = seg(frame), seg(dimmer)
    # The bundle runs what was trained (the result's box is the detector's, with the margin).
    crop = crop_box("detector", frame.shape, preprocessing.segmenter.crop_margin, detected=want.box)
    assert np.allclose(got.box, crop, atol=0.5)
    assert np.allclose(got_dimmer.box, got.box, atol=2.0)
    assert abs(got_dimmer.score - got.score) < 0.02


def test_a_detector_chosen_on_its_presence_call_validates_on_validation_only_empty_frames(
        presence_preset: str, phantom_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bpedge.train import presets
    from bpedge.train._run_setup import RunOptions, prepare_data
    from bpedge.train.distributed import DistContext

    preset = presets.get_preset(presence_preset)
    monkeypatch.setitem(presets.PRESETS, presence_preset, dataclasses.replace(
        preset, detector=dataclasses.replace(preset.detector, select_on="miou_presence")))
    out = tmp_path / "run"
    result = train_detector(DetectorOptions(data=phantom_dir, out=out, preset=presence_preset,
                                            epochs=2, batch_size=4, progress=False))
    metrics = json.loads((out / "metrics.json").read_text())
    assert result.metric_name == metrics["metric_name"] == "val_miou_presence"
    assert load_checkpoint(out / "best.pt")["metric_name"] == "val_miou_presence"
    # What the run validated on: every empty frame of its validation-only subjects.
    ctx = DistContext(0, 1, 0, torch.device("cpu"), initialized=False)
    data = prepare_data(RunOptions(data=phantom_dir, out=tmp_path / "again"), 0, ctx, None)
    assert list(data.split.val) == json.loads((out / "split.json").read_text())["val"]
    assert data.val_empty, "the test phantom needs empty frames of validation-only subjects"
    assert f"; {len(data.val_empty)} val empty frames;" in capsys.readouterr().out


class _FixedDetector:
    """Stands in for the detector in ``evaluate_batch``: fixed scores and boxes, no losses."""

    def __init__(self, scores: list[float], boxes: list[list[float]]) -> None:
        self.scores, self.boxes = torch.tensor(scores), torch.tensor(boxes)

    def losses(self, images: torch.Tensor, boxes: torch.Tensor,
               present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.present = present
        return {"focal": torch.tensor(0.0)}

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores, self.boxes


class _ValSet:
    def __init__(self, n_bp: int, n_empty: int) -> None:
        self.indices, self._n_empty = list(range(n_bp)), n_empty


def test_the_presence_metric_weighs_the_box_and_the_call_on_bp_and_empty_frames_by_halves() -> None:
    from bpedge.train.train_detector import DetectorTrainee

    truth = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]
    boxes = [[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 6.0, 6.0]]
    scores = [0.8, 0.6, 0.3]  # two BP frames (IoU 0.5 and 1), one empty frame
    batch = [torch.zeros(3, 1, 8, 8), torch.tensor(truth), torch.tensor([1.0, 1.0, 0.0])]
    trainee = DetectorTrainee(_FixedDetector(scores, boxes), None, None, _ValSet(2, 1), {},
                              select_on="miou_presence")
    _, total, n = trainee.evaluate_batch(batch)
    assert trainee.metric_name == "val_miou_presence"
    # The loop divides the batch sums by the frame count.
    assert total / n == pytest.approx(0.5 * (0.5 * 0.8 + 1.0 * 0.6) / 2 + 0.5 * (1 - 0.3))
    assert trainee.model.present is batch[2]  # the empty frame's presence loss is validated too
    # Chosen on mIoU: the box alone, over BP frames (validation then holds no empty frame).
    plain = DetectorTrainee(_FixedDetector(scores[:2], boxes[:2]), None, None, _ValSet(2, 0), {})
    _, total, n = plain.evaluate_batch([batch[0][:2], batch[1][:2], batch[2][:2]])
    assert (plain.metric_name, total / n) == ("val_miou", pytest.approx(0.75))
    assert plain.model.present is None


@pytest.mark.parametrize("fields, words", [
    ({"normalization": "minmax"}, "normalization must be one of"),
    ({"presence_head": True, "empty_fraction": 0.0}, "presence_head learns from empty frames"),
    ({"gain_scale": -0.1}, "gain_scale must be >= 0"),
    ({"select_on": "dice"}, "select_on must be one of"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of"),
    ({"presence_head": False, "select_on": "miou_presence"}, "weighs the presence head"),
])
def test_detector_options_that_cannot_train_are_refused_before_anything_is_written(
        fields: dict, words: str, phantom_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bpedge.train import presets

    tiny = presets.get_preset("tiny")
    monkeypatch.setitem(presets.PRESETS, "tiny+bad", dataclasses.replace(
        tiny, name="tiny+bad", detector=dataclasses.replace(tiny.detector, **fields)))
    with pytest.raises(ValueError, match=words):
        train_detector(DetectorOptions(data=phantom_dir, out=tmp_path / "run", preset="tiny+bad",
                                       epochs=1, progress=False))
    assert not (tmp_path / "run").exists()


def test_a_segmenter_augmentation_range_that_cannot_train_is_refused_before_anything_is_written(
        phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bpedge.train import presets

    tiny = presets.get_preset("tiny")
    monkeypatch.setitem(presets.PRESETS, "tiny+bad", dataclasses.replace(
        tiny, name="tiny+bad", unet=dataclasses.replace(tiny.unet, augment=True, gain_scale=-0.1)))
    with pytest.raises(ValueError, match="gain_scale must be >= 0"):
        train_segmenter(SegmenterOptions(data=phantom_dir, out=tmp_path / "run", preset="tiny+bad",
                                         arch="unet", crop="gt", epochs=1, progress=False))
    assert not (tmp_path / "run").exists()
