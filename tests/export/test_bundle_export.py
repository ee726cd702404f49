"""``export_bundle`` end to end on tiny models trained on the phantom: the bundle's files and
manifest, parity re-measured independently of the exporter, and failures that leave nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bpedge.export.bundle_export import ExportOptions, export_bundle
from bpedge.export.onnx_export import read_io_specs
from bpedge.export.parity import OnnxModel, ParityError
from bpedge.train.checkpoint import load_checkpoint, load_model
from bpedge.train.data import scan_dataset

from bpedge._manifest import Manifest
from bpedge._metrics import dice
from bpedge._presence import middle_of_best
from bpedge._stages import crop_resize, crop_resize_normalize
from bpedge.bundle import Bundle

ONNX_FILES = ("detector.fp32.onnx", "detector.fp16.onnx", "segmenter.fp32.onnx",
              "segmenter.fp16.onnx")


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def val_frames(checkpoint: Path, data: Path) -> list:
    return list(scan_dataset(data).select(load_checkpoint(checkpoint)["split"]["val"]))


# --- the bundle as written -------------------------------------------------------------------


def test_the_bundle_holds_exactly_the_listed_files(tiny_bundle: Path, bundle: Bundle) -> None:
    listed = {ref.file for ref in bundle.manifest.model_files()}
    assert listed == {*ONNX_FILES, "detector.pt", "segmenter.pt"}
    on_disk = {p.name for p in tiny_bundle.iterdir() if not p.name.startswith(".")}
    assert on_disk == listed | {"manifest.json"}
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".bundle")]


def test_the_manifest_round_trips(tiny_bundle: Path, bundle: Bundle) -> None:
    text = (tiny_bundle / "manifest.json").read_text()
    again = Manifest.loads(text)
    assert again == bundle.manifest
    assert again.dumps() == text


def test_every_onnx_passes_the_checker_and_keeps_the_io_contract(tiny_bundle: Path,
                                                                 bundle: Bundle) -> None:
    for name in ONNX_FILES:
        model = onnx.load(str(tiny_bundle / name))
        onnx.checker.check_model(model, full_check=True)
        entry = bundle.manifest.models[name.split(".")[0]]
        assert read_io_specs(model) == (entry.inputs, entry.outputs), name
    det, seg = bundle.manifest.models["detector"], bundle.manifest.models["segmenter"]
    h, w = bundle.manifest.preprocessing.detector.input_hw
    assert [(t.name, t.shape, t.dtype) for t in det.inputs] == [("image", ("N", 1, h, w), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in det.outputs] == [
        ("score", ("N",), "float32"), ("box", ("N", 4), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in seg.inputs] == [("crop", ("N", 1, 96, 96), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in seg.outputs] == [("prob", ("N", 1, 96, 96), "float32")]


def test_fp16_files_compute_in_fp16_but_keep_the_decode_in_fp32(tiny_bundle: Path) -> None:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_bundle / "detector.fp16.onnx")))
    fp16 = onnx.TensorProto.FLOAT16
    weights = {t.name: t.data_type for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]] == fp16 for n in convs)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    decode = [n for n in model.graph.node if n.op_type in ("Exp", "ArgMax", "Sigmoid", "Clip")]
    assert decode
    for node in decode:
        assert all(types.get(name, onnx.TensorProto.FLOAT) != fp16 for name in node.input), node.name


def test_preprocessing_comes_from_each_checkpoint(bundle: Bundle,
                                                  tiny_checkpoints: tuple[Path, Path]) -> None:
    det, seg = (load_checkpoint(p) for p in tiny_checkpoints)
    pre = bundle.manifest.preprocessing
    assert pre.detector.input_hw == tuple(det["input_hw"])
    assert (pre.detector.mean, pre.detector.std) == (det["normalization"]["mean"],
                                                     det["normalization"]["std"])
    assert pre.segmenter.crop_hw == tuple(seg["input_hw"])
    assert (pre.segmenter.mean, pre.segmenter.std) == (seg["normalization"]["mean"],
                                                       seg["normalization"]["std"])
    assert bundle.manifest.training.data_fingerprint == det["data_fingerprint"]


def test_thresholds_record_how_they_were_chosen(bundle: Bundle) -> None:
    thresholds = bundle.manifest.thresholds
    mask = thresholds.how_chosen["mask"]
    assert thresholds.mask in mask["grid"]
    best = max(mask["metric_by_threshold"])
    assert mask["metric_by_threshold"][mask["grid"].index(thresholds.mask)] == best
    assert mask["data"]["fingerprint_matches_checkpoint"] is True
    score = thresholds.how_chosen["score"]
    # TINY_LIMIT BP frames -> 3 validation frames; the phantom's empty:BP ratio (8:40) gives one
    # empty frame of a validation subject, so the score threshold is measured, not defaulted.
    assert score["method"] == "grid search maximising balanced accuracy"
    assert score["data"]["frames_without_bp"] >= 1
    assert thresholds.score in score["grid"]
    # The recorded curve and tie-break reproduce the threshold (the rule of bpedge._presence).
    assert score["grid"][middle_of_best(score["metric_by_threshold"])] == thresholds.score
    assert score["value"] == max(score["metric_by_threshold"])
    assert score["value"] == pytest.approx((score["sensitivity"] + score["specificity"]) / 2,
                                           abs=1e-6)
    assert score["nonfinite_scores"] == 0


def test_recorded_parity_is_within_the_gates(bundle: Bundle) -> None:
    parity = bundle.manifest.parity
    assert parity["passed"] is True
    tol = parity["tolerances"]
    det32, seg32 = (parity["fp32_vs_pytorch"][k] for k in ("detector", "segmenter"))
    assert det32["max_score_diff"] <= tol["fp32_max_prob_diff"]
    assert det32["max_box_diff_px"] <= tol["fp32_max_box_diff_px"]
    assert seg32["max_prob_diff"] <= tol["fp32_max_prob_diff"]
    seg16 = parity["fp16_vs_fp32"]["segmenter"]
    assert abs(seg16["dice_change"]) <= tol["fp16_max_dice_drop"]
    assert seg16["mask_threshold"] == bundle.manifest.thresholds.mask
    for part in ("fp32_vs_pytorch", "fp16_vs_fp32"):
        for model in ("detector", "segmenter"):
            assert parity[part][model]["nonfinite_outputs"] == 0


# --- parity measured again, independently of the exporter --------------------------------------


def test_onnxruntime_fp32_equals_pytorch(tiny_bundle: Path, bundle: Bundle,
                                         phantom_dir: Path) -> None:
    frames = val_frames(tiny_bundle / "detector.pt", phantom_dir)
    pre = bundle.manifest.preprocessing
    h, w = pre.detector.input_hw
    images = [_image(f) for f in frames]
    x = np.stack([crop_resize_normalize(img, (0, 0, img.shape[1], img.shape[0]), w, h,
                                        pre.detector.mean, pre.detector.std)
                  for img in images])[:, None]
    model, _ = load_model(tiny_bundle / "detector.pt")
    with torch.no_grad():
        scores, boxes = (t.numpy() for t in model(torch.from_numpy(x)))
    got_scores, got_boxes = session(tiny_bundle / "detector.fp32.onnx").run(None, {"image": x})
    assert np.abs(got_scores - scores).max() <= 1e-4
    assert np.abs(got_boxes - boxes).max() <= 0.5

    crops = np.stack([crop_resize_normalize(_image(f), f.box, 96, 96, pre.segmenter.mean,
                                            pre.segmenter.std) for f in frames])[:, None]
    seg, _ = load_model(tiny_bundle / "segmenter.pt")
    with torch.no_grad():
        probs = seg(torch.from_numpy(crops)).numpy()
    (got,) = session(tiny_bundle / "segmenter.fp32.onnx").run(None, {"crop": crops})
    assert got.shape == probs.shape == (len(frames), 1, 96, 96)
    assert np.abs(got - probs).max() <= 1e-4


def test_fp16_dice_change_on_the_phantom_validation_crops(tiny_bundle: Path, bundle: Bundle,
                                                          phantom_dir: Path) -> None:
    frames = val_frames(tiny_bundle / "segmenter.pt", phantom_dir)
    pre = bundle.manifest.preprocessing.segmenter
    crops = np.stack([crop_resize_normalize(_image(f), f.box, 96, 96, pre.mean, pre.std)
                      for f in frames])[:, None]
    truth = [crop_resize(_mask(f), f.box, 96, 96) > 127.5 for f in frames]
    t = bundle.manifest.thresholds.mask
    (p32,) = session(tiny_bundle / "segmenter.fp32.onnx").run(None, {"crop": crops})
    (p16,) = session(tiny_bundle / "segmenter.fp16.onnx").run(None, {"crop": crops})
    assert p16.dtype == np.float32 and np.isfinite(p16).all()
    d32 = np.mean([dice(p32[k, 0] >= t, truth[k], empty=0.0) for k in range(len(frames))])
    d16 = np.mean([dice(p16[k, 0] >= t, truth[k], empty=0.0) for k in range(len(frames))])
    assert abs(d16 - d32) <= 0.005
    assert 0 < np.abs(p16 - p32).max() <= 1e-2  # really FP16 (not a copy), and close


def _image(frame) -> np.ndarray:
    from bpedge.train.data import read_image

    return read_image(frame.image_path)


def _mask(frame) -> np.ndarray:
    from bpedge.train.data import read_mask

    return read_mask(frame.mask_path)


# --- failures ------------------------------------------------------------------------------------


def test_fp32_drift_fails_the_export_and_leaves_nothing(
    tiny_checkpoints: tuple[Path, Path], phantom_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = OnnxModel.__call__

    def drifting(self: OnnxModel, x: np.ndarray) -> list[np.ndarray]:
        outs = run(self, x)
        return [o + 1e-3 for o in outs] if self.path.endswith(".fp32.onnx") else outs

    monkeypatch.setattr(OnnxModel, "__call__", drifting)
    out = tmp_path / "exports" / "bundle"
    detector, segmenter = tiny_checkpoints
    with pytest.raises(ParityError) as failure:
        export_bundle(ExportOptions(detector=detector, segmenter=segmenter, out=out,
                                    data=phantom_dir, max_val=2), log=lambda line: None)
    message = str(failure.value)
    assert "FP32 segmenter probability differs from PyTorch by 0.001" in message
    assert "FP32 detector score differs" in message
    assert "box" not in message  # 1e-3 px is well within 0.5 px
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no staging directory left behind


@pytest.mark.parametrize("at_out", ["empty folder", "new bundle"])
def test_the_old_bundle_a_kill_left_mid_replace_is_kept_until_out_holds_a_bundle(
    tiny_bundle: Path, tiny_checkpoints: tuple[Path, Path], phantom_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, at_out: str,
) -> None:
    """Killed between its two renames, a --force export leaves the old bundle, the only copy,
    in ``.OUT.replaced-RANDOM/``. A script's ``mkdir -p OUT`` then made out a folder, and the
    next export deleted the old bundle before any work, so an export that then failed left the
    user with no bundle at all."""
    import shutil

    from bpedge.export import bundle_export

    out = tmp_path / "bundle"
    old = tmp_path / ".bundle.replaced-ab12cd34" / "bundle"
    shutil.copytree(tiny_bundle, old)
    if at_out == "new bundle":
        shutil.copytree(tiny_bundle, out)
    else:
        out.mkdir()

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the export failed")

    monkeypatch.setattr(bundle_export, "_write_onnx_files", failing)
    detector, segmenter = tiny_checkpoints
    with pytest.raises(RuntimeError, match="the export failed"):
        export_bundle(ExportOptions(detector=detector, segmenter=segmenter, out=out,
                                    data=phantom_dir, max_val=2, force=True),
                      log=lambda line: None)
    assert old.parent.exists() == (at_out == "empty folder")
    if at_out == "empty folder":
        assert Bundle.open(old).manifest == Bundle.open(tiny_bundle).manifest


#: Publishes the bundle copy argv[1] over the bundle argv[2] (--force) and exits as SIGKILL would
#: right after the argv[3]-th filesystem step (a rename, an exchange, a removal).
_KILLED_AFTER_STEP = """
import os, shutil, sys
from pathlib import Path
from bpedge.export import bundle_export
step, calls = int(sys.argv[3]), [0]
def counted(call):
    def counting(*args, **kwargs):
        result = call(*args, **kwargs)
        calls[0] += 1
        if calls[0] == step:
            os._exit(9)
        return result
    return counting
os.replace = counted(os.replace)
shutil.rmtree = counted(shutil.rmtree)
bundle_export.exchange = counted(bundle_export.exchange)
bundle_export._publish(Path(sys.argv[1]), Path(sys.argv[2]), True)
"""


def test_a_force_export_killed_at_any_step_of_publishing_leaves_a_whole_bundle(
        tiny_bundle: Path, tmp_path: Path) -> None:
    """Device software opens the bundle's path at any moment: replacing a bundle renamed the old
    one away and then the new one in, and a kill between the two left nothing at that path."""
    import os
    import shutil
    import subprocess
    import sys

    for step in range(1, 10):
        work = tmp_path / f"step{step}"
        out, new = work / "bundle", work / ".bundle.export-ab12cd34"
        shutil.copytree(tiny_bundle, out)
        shutil.copytree(tiny_bundle, new)
        old_ino, new_ino = os.stat(out).st_ino, os.stat(new).st_ino
        proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_STEP, str(new), str(out),
                               str(step)], check=False, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode in (0, 9), proc.stderr[-2000:]
        assert os.stat(out).st_ino in (old_ino, new_ino), f"killed after step {step}"
        assert Bundle.open(out).manifest == Bundle.open(tiny_bundle).manifest
        if proc.returncode == 0:  # every step done: the new bundle is there, and nothing else
            assert os.stat(out).st_ino == new_ino
            assert sorted(p.name for p in work.iterdir()) == ["bundle"]
            return
    pytest.fail("publishing took more than 9 steps")


def test_a_non_empty_out_is_refused_before_any_work(tiny_checkpoints: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    detector, segmenter = tiny_checkpoints
    with pytest.raises(ValueError, match="not empty.*--force"):
        export_bundle(ExportOptions(detector=detector, segmenter=segmenter, out=out),
                      log=lambda line: None)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("target", ["empty folder", "nothing"])
def test_an_out_that_is_a_symbolic_link_is_refused_before_any_work(
        tiny_checkpoints: tuple[Path, Path], tmp_path: Path, target: str) -> None:
    # It used to do all the work, then fail on publishing with a raw "Not a directory".
    real = tmp_path / "real"
    if target == "empty folder":
        real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    detector, segmenter = tiny_checkpoints
    with pytest.raises(ValueError, match="symbolic link"):
        export_bundle(ExportOptions(detector=detector, segmenter=segmenter, out=link),
                      log=lambda line: pytest.fail(f"work started: {line}"))
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["link", *(["real"] if target == "empty folder" else [])])


def test_checkpoints_of_the_wrong_kind_are_refused(tiny_checkpoints: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    detector, segmenter = tiny_checkpoints
    with pytest.raises(ValueError, match="holds a segmenter checkpoint; --detector needs"):
        export_bundle(ExportOptions(detector=segmenter, segmenter=detector, out=tmp_path / "b"),
                      log=lambda line: None)
    assert not (tmp_path / "b").exists()


def test_data_that_is_not_the_training_data_is_refused(tiny_checkpoints: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    from bpedge.train.data import PhantomConfig, generate_phantom

    other = generate_phantom(tmp_path / "other", PhantomConfig(subjects=3, frames=2, seed=5,
                                                               height=96, width=128))
    detector, segmenter = tiny_checkpoints
    with pytest.raises(ValueError,
                       match="not what the detector was trained on.*--accept-other-data"):
        export_bundle(ExportOptions(detector=detector, segmenter=segmenter, out=tmp_path / "b",
                                    data=other), log=lambda line: None)
    assert not (tmp_path / "b").exists()


# --- what a device bundle holds ---------------------------------------------------------------


def test_a_plain_export_leaves_the_checkpoints_beside_the_bundle(
    tiny_bundle: Path, bundle: Bundle, tiny_checkpoints: tuple[Path, Path], tmp_path: Path,
) -> None:
    """Without ``include_checkpoints`` the bundle holds ONNX files and the manifest only; the
    manifest says where each checkpoint is and its sha256 (tiny_bundle itself is exported with
    the flag, and holds both, as test_the_bundle_holds_exactly_the_listed_files shows)."""
    import shutil

    from bpedge.export.bundle_export import _write_bundle, load_checkpoint_of

    from bpedge._manifest import sha256_file

    root = tmp_path / "device"
    root.mkdir()
    for name in ONNX_FILES:
        shutil.copyfile(tiny_bundle / name, root / name)
    det = load_checkpoint_of("detector", tiny_checkpoints[0])
    seg = load_checkpoint_of("segmenter", tiny_checkpoints[1])
    m = bundle.manifest
    _write_bundle(root, det, seg, m.thresholds, dict(m.parity))
    written = Bundle.open(root).manifest
    assert {ref.file for ref in written.model_files()} == set(ONNX_FILES)
    on_disk = {p.name for p in root.iterdir() if not p.name.startswith(".")}
    assert on_disk == {*ONNX_FILES, "manifest.json"}
    for kind, ck in (("detector", det), ("segmenter", seg)):
        assert written.models[kind].checkpoint is None
        assert written.training.presets[kind]["checkpoint"] == {
            "path": str(ck.path.resolve()), "sha256": sha256_file(ck.path)}
    assert written.preprocessing == m.preprocessing
