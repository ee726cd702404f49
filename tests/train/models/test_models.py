"""Every model through the same checks (smp/timm style): one contract, one subclass per model.

Tiny presets only: shapes and ranges in eval mode, batch independence, gradients reach every
parameter, input validation, model_complexity, and ONNX export (opset 17, dynamic batch) against
ONNX Runtime.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from bpedge.train.losses import segmentation_loss
from bpedge.train.models import build_detector, build_segmenter, model_complexity
from bpedge.train.presets import get_preset
from torch import Tensor, nn

TINY = get_preset("tiny")


def export_onnx(model: nn.Module, example: Tensor, output_names: tuple[str, ...], path) -> None:
    """The export the bundle uses: opset 17, batch axis dynamic on every input and output."""
    axes = {name: {0: "batch"} for name in ["input", *output_names]}
    with warnings.catch_warnings():
        # torch 2.14 warns that the TorchScript exporter is legacy; the dynamo one needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=list(output_names), dynamic_axes=axes,
        )


class ModelContract:
    """Checks shared by every model; subclasses say how to build, feed and read it."""

    output_names: tuple[str, ...] = ("prob",)
    onnx_tolerances: tuple[float, ...] = (1e-4,)

    def build(self) -> nn.Module:
        raise NotImplementedError

    def input_shape(self, batch: int) -> tuple[int, ...]:
        raise NotImplementedError

    def check_eval_outputs(self, outputs: list[Tensor], x: Tensor) -> None:
        raise NotImplementedError

    def training_loss(self, model: nn.Module, x: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def as_list(out) -> list[Tensor]:
        return list(out) if isinstance(out, (tuple, list)) else [out]

    @pytest.fixture
    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build().eval()

    def example(self, batch: int, seed: int = 1) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape(batch), generator=g)

    def test_eval_outputs_have_the_promised_shapes_dtypes_and_ranges(self, model):
        x = self.example(3)
        with torch.no_grad():
            outputs = self.as_list(model(x))
        assert all(o.dtype == torch.float32 and bool(torch.isfinite(o).all()) for o in outputs)
        self.check_eval_outputs(outputs, x)

    def test_each_image_is_predicted_independently_of_its_batch(self, model):
        x = self.example(3)
        with torch.no_grad():
            together = self.as_list(model(x))
            alone = [self.as_list(model(x[i : i + 1])) for i in range(3)]
        for k, out in enumerate(together):
            separate = torch.cat([a[k] for a in alone])
            torch.testing.assert_close(out, separate, atol=1e-5, rtol=1e-5)

    def test_training_step_reaches_every_parameter(self, model):
        model.train()
        loss = self.training_loss(model, self.example(2))
        assert loss.ndim == 0 and bool(torch.isfinite(loss))
        loss.backward()
        unreached = [n for n, p in model.named_parameters() if p.grad is None]
        assert unreached == []
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())

    def test_rejects_input_of_the_wrong_shape(self, model):
        shape = self.input_shape(1)
        with pytest.raises(ValueError, match="input"):
            model(torch.zeros((1, 3, *shape[2:])))
        with pytest.raises(ValueError, match="input"):
            model(torch.zeros(shape[1:]))

    def test_model_complexity_counts_parameters_and_scales_flops_with_batch(self, model):
        model.train()
        params, flops = model_complexity(model, self.input_shape(1))
        _, flops2 = model_complexity(model, self.input_shape(2))
        assert params == sum(p.numel() for p in model.parameters())
        assert flops > params  # every weight is used at least once per output pixel
        assert flops2 == 2 * flops
        assert model.training  # mode restored

    def test_onnx_export_with_dynamic_batch_matches_onnxruntime(self, model, tmp_path):
        path = tmp_path / "model.onnx"
        export_onnx(model, self.example(1), self.output_names, path)
        x = self.example(3, seed=2)  # another batch size than the export's
        with torch.no_grad():
            expected = [o.numpy() for o in self.as_list(model(x))]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(list(self.output_names), {"input": x.numpy()})
        for name, e, g, tol in zip(self.output_names, expected, got, self.onnx_tolerances):
            assert g.shape == e.shape and g.dtype == np.float32, name
            assert float(np.abs(g - e).max()) < tol, name


class SegmenterContract(ModelContract):
    arch = "unet"

    def build(self) -> nn.Module:
        return build_segmenter(TINY.segmenter(self.arch))

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 1, *TINY.segmenter(self.arch).crop_hw)

    def check_eval_outputs(self, outputs, x):
        (prob,) = outputs
        assert prob.shape == x.shape
        assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0

    def training_loss(self, model, x):
        target = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) > 0.7).float()
        return segmentation_loss(model(x), target)

    def test_rejects_sizes_the_pooling_cannot_halve(self, model):
        with pytest.raises(ValueError, match="multiples of"):
            model(torch.zeros(1, 1, 90, 96))


class TestUNet(SegmenterContract):
    arch = "unet"


class TestMNet(SegmenterContract):
    arch = "mnet"


class TestRetinaNetDetector(ModelContract):
    output_names = ("scores", "boxes")
    onnx_tolerances = (1e-4, 0.5)

    def build(self) -> nn.Module:
        model = build_detector(TINY.detector)
        # At initialisation every anchor scores the prior (~0.01) within float noise, so the
        # top-1 anchor is a near-tie that ONNX Runtime may break differently; spread the
        # logits so the comparison tests the graph, not rounding.
        for layer in model.classification_head.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        return model

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 1, *TINY.detector.input_hw)

    def check_eval_outputs(self, outputs, x):
        scores, boxes = outputs
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
        assert scores.shape == (n,) and boxes.shape == (n, 4)
        assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
        assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all())
        assert bool((boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all())
        assert bool((boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all())

    def training_loss(self, model, x):
        n = x.shape[0]
        boxes = torch.tensor([[40.0, 30.0, 100.0, 80.0]]).repeat(n, 1)
        return sum(model(x, boxes).values())

    def test_onnx_export_with_dynamic_batch_matches_onnxruntime(self, model, tmp_path):
        with torch.no_grad():
            logits, _ = model.head_outputs(self.example(3, seed=2))
        top2 = logits[..., 0].topk(2, dim=1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4  # the winner is not a near-tie
        super().test_onnx_export_with_dynamic_batch_matches_onnxruntime(model, tmp_path)

