"""U-Net and M-Net as DESIGN.md describes them: layer counts, sizes, multi-scale input, side outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from bpedge.train.models import MNet, UNet, build_segmenter, model_complexity
from bpedge.train.presets import get_preset
from torch import nn

PAPER = get_preset("paper")
TINY = get_preset("tiny")


def conv_params(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def unet_params_by_design(base: int, depth: int, k: int, extra_inputs: dict[int, int] | None = None) -> int:
    """Parameters of the U-Net the design text describes, counted layer by layer.

    Encoder level l: two kxk convs, BatchNorm (2 per channel); decoder level l: 2x2 transposed
    conv from level l+1, two kxk convs on the concatenation, BatchNorm; 1x1 output conv.
    ``extra_inputs`` adds input channels to encoder levels (M-Net's multi-scale input).
    """
    extra_inputs = extra_inputs or {}
    widths = [base * 2**level for level in range(depth)]
    total = 0
    for level, width in enumerate(widths):
        cin = (1 if level == 0 else widths[level - 1]) + extra_inputs.get(level, 0)
        total += conv_params(k, cin, width) + conv_params(k, width, width) + 2 * width
    for level in range(depth - 1):
        width = widths[level]
        total += conv_params(2, widths[level + 1], width)
        total += conv_params(k, 2 * width, width) + conv_params(k, width, width) + 2 * width
    return total


@pytest.mark.parametrize("preset", [PAPER, TINY], ids=["paper", "tiny"])
def test_unet_has_exactly_the_published_layers(preset):
    cfg = preset.unet
    model = build_segmenter(cfg)
    assert isinstance(model, UNet)
    expected = unet_params_by_design(cfg.base_filters, cfg.depth, cfg.kernel_size) + cfg.base_filters + 1
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("preset", [PAPER, TINY], ids=["paper", "tiny"])
def test_mnet_adds_the_multiscale_inputs_and_four_side_convs(preset):
    cfg = preset.mnet
    model = build_segmenter(cfg)
    assert isinstance(model, MNet)
    widths = [cfg.base_filters * 2**level for level in range(cfg.depth)]
    sides = sum(w + 1 for w in list(reversed(widths))[-4:])
    expected = unet_params_by_design(cfg.base_filters, cfg.depth, cfg.kernel_size, {1: 1, 2: 1, 3: 1})
    assert sum(p.numel() for p in model.parameters()) == expected + sides


def test_paper_and_tiny_sizes_are_in_the_expected_ranges():
    paper_params, paper_flops = model_complexity(build_segmenter(PAPER.unet), (1, 1, 96, 96))
    # Published: about 20 M parameters and 9 GFLOPs for the 96x96 U-Net.
    assert 15e6 < paper_params < 25e6
    assert 6e9 < paper_flops < 12e9
    for arch in ("unet", "mnet"):
        assert sum(p.numel() for p in build_segmenter(TINY.segmenter(arch)).parameters()) < 500_000


@pytest.mark.parametrize("cls", [UNet, MNet])
def test_dropout_is_in_the_encoder_only_and_pooling_is_average(cls):
    model = cls(base_filters=4, depth=4, kernel_size=3, dropout=0.25)
    assert [m.p for m in model.encoder.modules() if isinstance(m, nn.Dropout)] == [0.25] * 4
    assert not any(isinstance(m, nn.Dropout) for m in model.decoder.modules())
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert cls(base_filters=4, depth=4, kernel_size=3, dropout=0.0).training  # builds without dropout


@pytest.mark.parametrize("depth", [4, 5])
def test_mnet_output_is_the_mean_of_four_full_size_side_probabilities(depth):
    torch.manual_seed(0)
    model = MNet(base_filters=4, depth=depth, kernel_size=3, dropout=0.1).eval()
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        sides = model.forward_sides(x)
        out = model(x)
    assert len(sides) == 4
    for side in sides:
        assert side.shape == (2, 1, 96, 96)
        assert float(side.min()) >= 0 and float(side.max()) <= 1
    torch.testing.assert_close(out, sum(sides) / 4)
    # Coarser sides are smoother: the coarsest varies less between neighbouring pixels.
    roughness = [float((s[..., 1:] - s[..., :-1]).abs().mean()) for s in sides]
    assert roughness[0] < roughness[-1]


def test_mnet_sees_the_pooled_input_at_levels_one_to_three():
    model = MNet(base_filters=4, depth=5, kernel_size=3, dropout=0.0)
    in_channels = [block[0].in_channels for block in model.encoder]
    assert in_channels == [1, 4 + 1, 8 + 1, 16 + 1, 32]


def test_side_outputs_give_gradients_for_deep_supervision():
    model = MNet(base_filters=4, depth=4, kernel_size=3, dropout=0.1).train()
    sides = model.forward_sides(torch.randn(2, 1, 32, 32))
    sides[0].mean().backward()  # the coarsest side alone reaches the bottleneck, not the finer sides
    assert model.sides[0].weight.grad is not None
    assert model.sides[-1].weight.grad is None


@pytest.mark.parametrize(
    "change,match",
    [
        ({"arch": "segformer"}, "unet"),
        ({"crop_hw": (90, 96)}, "multiples of"),
        ({"kernel_size": 4}, "odd"),
        ({"depth": 1}, "depth"),
        ({"dropout": 1.0}, "dropout"),
        ({"base_filters": 0}, "base_filters"),
    ],
)
def test_bad_segmenter_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        build_segmenter(dataclasses.replace(TINY.unet, **change))


def test_mnet_needs_four_levels():
    with pytest.raises(ValueError, match="depth >= 4"):
        build_segmenter(dataclasses.replace(TINY.mnet, depth=3))
