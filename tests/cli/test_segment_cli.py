"""``bpedge segment`` through typer's runner: images, a Kaggle folder and a video in; masks,
overlays and the CSV out, the masks equal to the Segmenter's own."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
from bpedge.train.data import read_image
from typer.testing import CliRunner

from bpedge._cli.app import build_app
from bpedge.segmenter import Segmenter

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(phantom_dir, tmp_path_factory):
    """A folder with 3 frames and their masks (Kaggle layout), one PNG, and a 3-frame video."""
    root = tmp_path_factory.mktemp("segment_inputs")
    folder = root / "kaggle"
    folder.mkdir()
    for stem in ("1_1", "1_2", "1_10"):
        for suffix in (".tif", "_mask.tif"):
            shutil.copy(phantom_dir / f"{stem}{suffix}", folder / f"{stem}{suffix}")
    png = root / "scan.png"
    cv2.imwrite(str(png), read_image(phantom_dir / "2_1.tif"))
    video = root / "probe.avi"
    frames = [read_image(phantom_dir / f"3_{k}.tif") for k in (1, 2, 3)]
    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return folder, png, video


def test_help_has_examples():
    result = runner.invoke(build_app(), ["segment", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_images_folder_and_video(tiny_bundle, inputs, tmp_path):
    folder, png, video = inputs
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(png), str(folder),
                                         str(video), "--out", str(out), "--backend",
                                         "onnxruntime", "--no-progress"])
    assert result.exit_code == 0, result.output
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "frame", "present", "score", "x0", "y0", "x1", "y1", "ms"]
    # The PNG, the folder's frames in natural order (masks skipped), then the video's frames.
    assert [(r["file"].rsplit("/", 1)[-1], r["frame"]) for r in rows] == [
        ("scan.png", "0"), ("1_1.tif", "0"), ("1_2.tif", "0"), ("1_10.tif", "0"),
        ("probe.avi", "0"), ("probe.avi", "1"), ("probe.avi", "2")]
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == sorted(["scan.png", "1_1.png", "1_2.png", "1_10.png", "probe_f000000.png",
                            "probe_f000001.png", "probe_f000002.png"])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == names
    # A written mask is exactly what the Segmenter returns for that frame.
    with Segmenter.from_bundle(tiny_bundle, "onnxruntime") as seg:
        expected = seg(read_image(folder / "1_2.tif"))
    written = cv2.imread(str(out / "masks" / "1_2.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, expected.mask)
    row = rows[2]
    assert float(row["score"]) == pytest.approx(expected.score, abs=1e-5)
    assert float(row["x0"]) == pytest.approx(expected.box[0], abs=0.01)
    assert int(row["present"]) == int(expected.present)
    overlay = cv2.imread(str(out / "overlays" / "1_2.png"))
    assert overlay.shape == (*expected.mask.shape, 3)


def test_refuses_to_overwrite_results(tiny_bundle, inputs, tmp_path):
    _, png, _ = inputs
    args = ["segment", str(tiny_bundle), str(png), "--out", str(tmp_path), "--no-progress",
            "--no-overlays", "--backend", "onnxruntime"]
    assert runner.invoke(build_app(), args).exit_code == 0
    again = runner.invoke(build_app(), args)
    assert again.exit_code == 2 and "--force" in again.output
    assert runner.invoke(build_app(), [*args, "--force"]).exit_code == 0


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.png", "does not exist"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "unsupported file type"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no images"),
    (lambda p: (p / "bad.png").write_bytes(b"not a png") and p / "bad.png", "not a readable image"),
])
def test_bad_inputs_exit_2(tiny_bundle, tmp_path, make, message):
    source = make(tmp_path)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(source), "--out",
                                         str(tmp_path / "out"), "--no-progress", "--backend",
                                         "onnxruntime"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_not_a_bundle_exits_2(tmp_path, inputs):
    _, png, _ = inputs
    result = runner.invoke(build_app(), ["segment", str(tmp_path), str(png), "--out",
                                         str(tmp_path / "out")])
    assert result.exit_code == 2 and "manifest.json" in result.output


def test_tensorrt_without_a_gpu_fails_with_exit_1(tiny_bundle, inputs, tmp_path):
    from bpedge._doctor import probe_gpu

    if probe_gpu().devices:
        pytest.skip("this machine has a GPU; the no-GPU failure cannot be shown here")
    _, png, _ = inputs
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(png), "--out",
                                         str(tmp_path / "out"), "--backend", "tensorrt"])
    assert result.exit_code == 1, result.output
    assert "cannot run" in result.output and "Traceback" not in result.output
