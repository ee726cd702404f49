"""``bpedge bench`` through typer's runner on the session's tiny bundle."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from bpedge._cli.app import build_app

runner = CliRunner()

SMALL = ["--phantom-subjects", "1", "--phantom-frames", "3", "--iterations", "3",
         "--warmup-seconds", "0", "--ceiling-seconds", "0.01", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def bench_json(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run.json"
    result = runner.invoke(build_app(), ["bench", str(tiny_bundle), *SMALL, "--precisions",
                                         "fp32,fp16", "--json", str(out), "--note", "test run"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_help_has_examples():
    result = runner.invoke(build_app(), ["bench", "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.output and "--compare" in result.output


def test_a_small_run_measures_every_available_row(bench_json):
    path, output = bench_json
    record = json.loads(path.read_text())
    rows = {(r["backend"], r["precision"]): r for r in record["rows"]}
    assert next(iter(rows)) == ("torch", "fp32")  # the baseline first
    for key in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")):
        row = rows[key]
        assert row["status"] == "ran", row
        assert row["end_to_end"]["n"] == 3 and row["frames_timed"] == 3
        assert set(row["stages"]) >= {"preprocess", "detector", "crop", "segmenter", "paste"}
        assert row["gflops"]["models"] > 0
        assert row["accuracy"]["frames"] == 3
    assert rows[("torch", "fp32")]["speedup_vs_baseline"]["end_to_end_mean"] == 1.0
    assert rows[("onnxruntime", "fp32")]["speedup_vs_baseline"]["end_to_end_mean"] > 0
    # Same models, same frames: the runtimes agree on accuracy.
    assert rows[("onnxruntime", "fp32")]["accuracy"]["dice_all"] == pytest.approx(
        rows[("torch", "fp32")]["accuracy"]["dice_all"], abs=0.02)
    for precision in ("fp32", "fp16"):
        trt = rows[("tensorrt", precision)]
        assert trt["status"] == "skipped" and "TensorRT" in trt["reason"]
    assert record["settings"]["threads"] == 1 and record["notes"] == ["test run"]
    assert record["machine"]["cores"] >= 1 and record["versions"]["onnxruntime"]
    ceiling = record["ceiling"]
    assert ceiling["gflops"] == max(ceiling["before_rows_gflops"], ceiling["after_rows_gflops"]) > 0
    ort = rows[("onnxruntime", "fp32")]
    assert ort["gflops"]["models_fraction_of_ceiling"] == pytest.approx(
        ort["gflops"]["models"] / ceiling["gflops"])
    assert "skipped TensorRT fp16" in output and "ONNX Runtime fp32" in output


def test_compare_prints_ratios(bench_json, tmp_path):
    path, _ = bench_json
    other = tmp_path / "b.json"
    shutil.copy(path, other)
    result = runner.invoke(build_app(), ["bench", "--compare", str(path), str(other)])
    assert result.exit_code == 0, result.output
    assert "1.000" in result.output and "skipped in A and B" in result.output


@pytest.mark.parametrize("args,message", [
    (["bench"], "missing BUNDLE"),
    (["bench", "/nonexistent/bundle"], "does not exist"),
    (["bench", "BUNDLE", "--backends", "cuda"], "unknown backend"),  # openvino is known (issue 15)
    (["bench", "BUNDLE", "--iterations", "2", "--seconds", "1"], "exactly one"),
    (["bench", "BUNDLE", "--limit", "3"], "--limit applies to --data"),
    (["bench", "BUNDLE", "--compare", "a.json", "b.json"], "not both"),
    (["bench", "--compare", "/nonexistent/a.json", "/nonexistent/b.json"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(args, message, tiny_bundle):
    args = [str(tiny_bundle) if a == "BUNDLE" else a for a in args]
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_kaggle_folder_frames(tiny_bundle, phantom_dir, tmp_path):
    out = tmp_path / "run.json"
    result = runner.invoke(build_app(), [
        "bench", str(tiny_bundle), "--data", str(phantom_dir), "--limit", "4", "--backends",
        "onnxruntime", "--precisions", "fp32", "--iterations", "2", "--warmup-seconds", "0",
        "--ceiling-seconds", "0.01", "--json", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["frames"]["count"] == 4 and str(phantom_dir) in record["frames"]["source"]
    assert [r["backend"] for r in record["rows"]] == ["onnxruntime"]
    assert record["rows"][0]["speedup_vs_baseline"] == {}  # no baseline in this run


def test_phantom_run_is_a_speed_workload_without_dice(bench_json):
    # Issue 16: phantom frames the bundle never saw are timed, not scored.
    path, output = bench_json
    assert "a speed workload, accuracy not shown" in output
    assert "Dice" not in output and "0.0000" not in output
    assert json.loads(path.read_text())["frames"]["speed_workload"] is True


def test_data_run_shows_accuracy(tiny_bundle, phantom_dir):
    result = runner.invoke(build_app(), [
        "bench", str(tiny_bundle), "--data", str(phantom_dir), "--limit", "2", "--backends",
        "onnxruntime", "--precisions", "fp32", "--iterations", "1", "--warmup-seconds", "0",
        "--ceiling-seconds", "0.01", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Dice (BP frames)" in result.output and "speed workload" not in result.output


def test_a_run_in_which_no_row_ran_fails(tiny_bundle, tmp_path):
    # Here TensorRT cannot run, so its only row is skipped: exit 0 would read as a measurement.
    out = tmp_path / "run.json"
    result = runner.invoke(build_app(), ["bench", str(tiny_bundle), *SMALL, "--backends",
                                         "tensorrt", "--precisions", "fp16", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "skipped TensorRT fp16" in result.output
    assert "no row ran" in result.output and "not written" in result.output
    assert not out.exists()
