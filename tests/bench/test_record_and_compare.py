"""Rows, speed-ups, GFLOP/s, the JSON record and --compare ratios, on hand-made timings."""

from __future__ import annotations

import json

import pytest

from bpedge._bench.backends import RowChoice, parse_choices
from bpedge._bench.compare import compare_records
from bpedge._bench.harness import Accuracy, RowTimings
from bpedge._bench.record import (
    BenchRecord,
    measured_row,
    read_record,
    skipped_row,
    with_speedups,
    write_record,
)
from bpedge._bench.stats import summarize

FLOPS = {"detector": 4_000_000_000, "segmenter": 1_000_000_000}


def _timings(det_ms: float, seg_ms: float, other_ms: float) -> RowTimings:
    e2e = det_ms + seg_ms + other_ms
    return RowTimings(
        stages={"preprocess": summarize([other_ms]), "detector": summarize([det_ms, det_ms]),
                "segmenter": summarize([seg_ms]), "total": summarize([e2e])},
        end_to_end=summarize([e2e, e2e]), frames=10, wall_seconds=e2e * 10 / 1e3,
    )


ACC = Accuracy(dice_positive=0.8, box_iou_positive=0.7, dice_all=0.85, detected=1.0,
               positives=8, frames=10)


def _record(torch_scale: float = 1.0) -> BenchRecord:
    rows = [
        measured_row(RowChoice("torch", "fp32"), _timings(40 * torch_scale, 10 * torch_scale, 5),
                     ACC, FLOPS, ceiling_gflops=100.0),
        measured_row(RowChoice("onnxruntime", "fp32"), _timings(8, 2, 5), ACC, FLOPS, 100.0),
        skipped_row(RowChoice("tensorrt", "fp16"), "no NVIDIA driver"),
    ]
    return BenchRecord({"settings": {"threads": 2}, "ceiling": {"gflops": 100.0}},
                       tuple(with_speedups(rows)))


def test_gflops_and_speedups_follow_from_the_times():
    rec = _record()
    ort = rec.row("onnxruntime", "fp32")
    assert ort is not None and ort.ran
    assert ort.gflops["detector"] == pytest.approx(4e9 / 8e-3 / 1e9)          # 500
    assert ort.gflops["models"] == pytest.approx(5e9 / 10e-3 / 1e9)           # 500
    assert ort.gflops["end_to_end"] == pytest.approx(5e9 / 15e-3 / 1e9)
    assert ort.gflops["models_fraction_of_ceiling"] == pytest.approx(5.0)
    assert ort.speedup["end_to_end_mean"] == pytest.approx(55 / 15)
    assert ort.speedup["models_mean"] == pytest.approx(50 / 10)
    base = rec.row("torch", "fp32")
    assert base is not None and base.speedup["end_to_end_mean"] == pytest.approx(1.0)
    assert ort.fps == pytest.approx(1e3 / 15)
    skipped = rec.row("tensorrt", "fp16")
    assert skipped is not None and not skipped.ran and skipped.reason == "no NVIDIA driver"


def test_no_baseline_means_no_speedups():
    rows = [measured_row(RowChoice("onnxruntime", "fp32"), _timings(8, 2, 5), ACC, FLOPS, 100.0)]
    assert with_speedups(rows)[0].speedup == {}


def test_json_round_trip_is_strict_and_refuses_foreign_files(tmp_path):
    rec = _record()
    path = tmp_path / "run.json"
    write_record(path, rec)
    obj = json.loads(path.read_text())
    assert obj["schema"] == "bpedge-bench" and obj["baseline"] == "torch fp32"
    assert [r["status"] for r in obj["rows"]] == ["ran", "ran", "skipped"]
    back = read_record(path)
    assert back.rows == rec.rows
    (tmp_path / "other.json").write_text('{"schema": "something-else"}')
    with pytest.raises(ValueError, match="not a bpedge bench record"):
        read_record(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        read_record(tmp_path / "broken.json")


def test_compare_gives_b_over_a_ratios():
    a, b = _record(torch_scale=1.0), _record(torch_scale=2.0)
    by_key = {(c.backend, c.precision): c for c in compare_records(a, b)}
    torch_row = by_key[("torch", "fp32")]
    assert torch_row.mean_ratio == pytest.approx((80 + 20 + 5) / 55)
    assert torch_row.models_ratio == pytest.approx(2.0)
    assert torch_row.fps_ratio == pytest.approx(55 / 105)
    assert torch_row.dice_change == pytest.approx(0.0)
    assert by_key[("onnxruntime", "fp32")].median_ratio == pytest.approx(1.0)
    assert by_key[("tensorrt", "fp16")].note == "skipped in A and B"


def test_parse_choices_puts_the_fp32_baseline_first_and_checks_names():
    choices = parse_choices("onnxruntime,torch", "fp16,fp32")
    assert [(c.backend, c.precision) for c in choices] == [
        ("torch", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "fp32")]
    assert [(c.backend, c.precision) for c in parse_choices("torch", "fp16")] == [("torch", "fp32")]
    # openvino and int8 became known names with issue 15; unknown names are still refused by name.
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        parse_choices("cuda", "fp32")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        parse_choices("onnxruntime", "int4")


def _edited(tmp_path, name: str, edit) -> object:
    path = tmp_path / "good.json"
    write_record(path, _record())
    obj = json.loads(path.read_text())
    edit(obj)
    out = tmp_path / name
    out.write_text(json.dumps(obj))
    return out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda o: o["rows"].__setitem__(0, "a row"), "not a bench row: a str"),
    (lambda o: o["rows"][0].__setitem__("accuracy", [1, 2]), '"accuracy" must be an object'),
    (lambda o: o["rows"][0].__setitem__("stages", [1]), '"stages" must be an object'),
    (lambda o: o["rows"][0].__setitem__("fps", "fast"), '"fps" must be a finite number'),
    (lambda o: o["rows"][0].__setitem__("fps", -3.0), '"fps" must be a finite number'),
    (lambda o: o["rows"][0]["end_to_end"].__setitem__("median", 10**400),
     "finite numbers >= 0"),
    (lambda o: o["rows"][0]["end_to_end"].__setitem__("median", -1.0), "finite numbers >= 0"),
])
def test_hostile_records_are_refused_with_the_file_named(tmp_path, edit, message):
    path = _edited(tmp_path, "hostile.json", edit)
    with pytest.raises(ValueError, match=message) as info:
        read_record(path)
    assert "hostile.json" in str(info.value) and len(str(info.value)) < 400


def test_nan_infinity_deep_nesting_and_special_files_are_refused(tmp_path):
    import os

    (tmp_path / "nan.json").write_text('{"schema": "bpedge-bench", "x": NaN}')
    with pytest.raises(ValueError, match="NaN and Infinity"):
        read_record(tmp_path / "nan.json")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="not JSON"):
        read_record(tmp_path / "deep.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="regular JSON file"):
        read_record(tmp_path / "folder.json")
    if hasattr(os, "mkfifo"):  # a FIFO hung the read
        os.mkfifo(tmp_path / "fifo.json")
        with pytest.raises(ValueError, match="regular JSON file"):
            read_record(tmp_path / "fifo.json")
    if os.path.exists("/dev/zero"):  # read until memory ran out
        (tmp_path / "zero.json").symlink_to("/dev/zero")
        with pytest.raises(ValueError, match="regular JSON file"):
            read_record(tmp_path / "zero.json")
