"""``bpedge doctor`` through typer's runner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bpedge._cli.app import build_app
from bpedge._doctor import diagnose

runner = CliRunner()


def test_help_has_examples():
    result = runner.invoke(build_app(), ["doctor", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_reports_the_machine_and_writes_json(tmp_path):
    out = tmp_path / "doctor.json"
    result = runner.invoke(build_app(), ["doctor", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("CPU", "TensorRT", "ONNX Runtime", "NVRTC", "onnxruntime fp32", "tensorrt fp16"):
        assert word in result.output
    data = json.loads(out.read_text())
    assert {b["backend"] for b in data["backends"]} >= {"onnxruntime fp32", "tensorrt fp16"}


def test_require_exits_1_when_a_backend_will_not_run_and_2_for_a_bad_name():
    report = diagnose()
    runs = {v.backend: v.runs for v in report.backends}
    assert runner.invoke(build_app(), ["doctor", "--require", "onnxruntime fp32"]).exit_code == 0
    trt = runner.invoke(build_app(), ["doctor", "--require", "tensorrt fp16"])
    assert trt.exit_code == (0 if runs["tensorrt fp16"] else 1)
    if not runs["tensorrt fp16"]:
        assert "tensorrt fp16 will not run here" in trt.output
    bad = runner.invoke(build_app(), ["doctor", "--require", "openvino"])
    assert bad.exit_code == 2 and "not a backend" in bad.output
