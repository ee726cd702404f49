"""ONNX export of an untrained tiny segmenter: the I/O contract, the dynamic batch, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bpedge.export.onnx_export import (
    OnnxExportError,
    check_contract,
    contract_specs,
    export_onnx,
    read_io_specs,
)
from bpedge.train.models import build_segmenter
from bpedge.train.presets import get_preset

from bpedge._manifest import TensorSpec


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenter(get_preset("tiny").unet).eval()


def test_contracts_of_both_models() -> None:
    (image,), (score, box) = contract_specs("detector", (160, 224))
    assert image == TensorSpec("image", ("N", 1, 160, 224), "float32")
    assert (score, box) == (TensorSpec("score", ("N",), "float32"),
                            TensorSpec("box", ("N", 4), "float32"))
    assert contract_specs("segmenter", (96, 96)) == (
        (TensorSpec("crop", ("N", 1, 96, 96), "float32"),),
        (TensorSpec("prob", ("N", 1, 96, 96), "float32"),),
    )
    with pytest.raises(ValueError, match="kind"):
        contract_specs("classifier", (96, 96))


def test_export_keeps_the_contract_and_a_dynamic_batch(unet: torch.nn.Module,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "segmenter.fp32.onnx"
    exported = export_onnx(unet, "segmenter", (96, 96), path, example_batch=2)
    model = onnx.load(str(path))
    assert (exported.inputs, exported.outputs) == contract_specs("segmenter", (96, 96))
    assert read_io_specs(model) == contract_specs("segmenter", (96, 96))
    props = {p.key: p.value for p in model.metadata_props}
    assert (props["bpedge.model"], props["bpedge.precision"]) == ("segmenter", "fp32")
    assert model.opset_import[0].version == 17
    x = np.random.default_rng(0).normal(size=(3, 1, 96, 96)).astype(np.float32)  # batch 3 != 2
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["prob"], {"crop": x})
    with torch.no_grad():
        want = unet(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-5


def test_a_graph_that_breaks_the_contract_is_refused(unet: torch.nn.Module,
                                                     tmp_path: Path) -> None:
    path = tmp_path / "s.onnx"
    export_onnx(unet, "segmenter", (96, 96), path)
    model = onnx.load(str(path))
    with pytest.raises(OnnxExportError, match=r"prob float32 \['N', 1, 96, 96\]"):
        check_contract(model, "segmenter", (64, 64), "s.onnx")
    model.graph.output[0].name = "probability"
    with pytest.raises(OnnxExportError, match="probability"):
        check_contract(model, "segmenter", (96, 96), "s.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = ""
    with pytest.raises(OnnxExportError, match="unnamed dynamic dimension"):
        read_io_specs(model)


def test_bad_requests_are_refused(unet: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval mode"):
        export_onnx(unet.train(), "segmenter", (96, 96), tmp_path / "a.onnx")
    unet.eval()
    with pytest.raises(ValueError, match="opset"):
        export_onnx(unet, "segmenter", (96, 96), tmp_path / "a.onnx", opset=13)
    with pytest.raises(ValueError, match="kind"):
        export_onnx(unet, "unet", (96, 96), tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())


def test_a_detector_with_a_presence_head_exports_its_score_and_keeps_the_head_fp32(
        tmp_path: Path) -> None:
    import dataclasses

    from bpedge.export.fp16 import name_unnamed_nodes
    from bpedge.export.int8 import excluded_nodes
    from bpedge.train.models import build_detector

    cfg = dataclasses.replace(get_preset("tiny").detector, presence_head=True, empty_fraction=0.5)
    torch.manual_seed(0)
    detector = build_detector(cfg).eval()
    path = tmp_path / "detector.fp32.onnx"
    export_onnx(detector, "detector", cfg.input_hw, path, example_batch=2)
    model = onnx.load(str(path))
    assert read_io_specs(model) == contract_specs("detector", cfg.input_hw)  # (score, box) still
    x = np.random.default_rng(0).normal(size=(3, 1, *cfg.input_hw)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, box = session.run(["score", "box"], {"image": x})
    with torch.no_grad():
        want_score, want_box = detector(torch.from_numpy(x))
        presence = detector.all_head_outputs(torch.from_numpy(x))[2]
    assert presence is not None
    assert np.abs(score - torch.sigmoid(presence).numpy()).max() <= 1e-5
    assert np.abs(score - want_score.numpy()).max() <= 1e-5
    assert np.abs(box - want_box.numpy()).max() <= 1e-3
    name_unnamed_nodes(model.graph)
    head = {n.name for n in model.graph.node if n.name.startswith("/presence_head/")}
    assert any(n.op_type in ("Gemm", "MatMul") for n in model.graph.node if n.name in head)
    assert head <= set(excluded_nodes(model, "detector", 0))
