"""The detector's feature extractor: a one-channel ResNet with an FPN on top, giving P3..P7.

torchvision supplies every piece (``resnet18/34/50``, ``BasicBlock``, ``BackboneWithFPN``,
``FeaturePyramidNetwork`` and ``LastLevelP6P7``); this module only swaps the first convolution
for a grey one, adds a narrow ResNet for CPU-sized runs, and knows where the feature maps land
(:func:`feature_grid_sizes`), so anchors can be laid out once for a fixed input size.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.resnet import BasicBlock
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

# C3, C4, C5 come out of ResNet stages layer2..layer4; the FPN adds P6 and P7 on top of P5.
RETURN_LAYERS = {"layer2": "c3", "layer3": "c4", "layer4": "c5"}
FPN_LEVELS = (3, 4, 5, 6, 7)
TINY_WIDTHS = (16, 32, 64, 128)


def resnet_tiny(widths: tuple[int, ...] = TINY_WIDTHS) -> nn.Module:
    """A narrow ResNet (one torchvision ``BasicBlock`` per stage) with a 1-channel stem.

    Same layout and strides as torchvision's ResNet (stem /4, stages /4, /8, /16, /32) and the
    same child names (``conv1 bn1 relu maxpool layer1..layer4``), so ``BackboneWithFPN`` takes
    it as it takes ``resnet18``; widths 16/32/64/128 keep it near 0.3 M parameters.
    """
    if len(widths) != 4 or any(w <= 0 for w in widths):
        raise ValueError(f"resnet_tiny needs 4 positive stage widths, got {widths}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(1, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(widths[0]),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    in_ch = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or in_ch != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )
        layers[f"layer{i + 1}"] = nn.Sequential(BasicBlock(in_ch, width, stride, downsample))
        in_ch = width
    model = nn.Sequential(layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _grey_resnet(factory: Callable[..., nn.Module]) -> nn.Module:
    """A torchvision ResNet, untrained, whose stem convolution takes one channel."""
    model = factory(weights=None)
    old = model.get_submodule("conv1")
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{factory.__name__} has no Conv2d stem to replace")
    # torchvision's stem (7x7, stride 2, padding 3) with one input channel.
    model.conv1 = nn.Conv2d(1, old.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet_tiny": resnet_tiny,
    "resnet18": lambda: _grey_resnet(resnet18),
    "resnet34": lambda: _grey_resnet(resnet34),
    "resnet50": lambda: _grey_resnet(resnet50),
}


def _stage_channels(body: nn.Module) -> list[int]:
    """Output channels of layer2..layer4 (works for BasicBlock and Bottleneck stages)."""
    channels = []
    for name in RETURN_LAYERS:
        last_block = getattr(body, name)[-1]
        last_bn = [m for m in last_block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        channels.append(last_bn.num_features)
    return channels


def build_backbone(name: str, fpn_channels: int) -> BackboneWithFPN:
    """ResNet ``name`` + FPN: ``forward(x (N,1,H,W))`` -> OrderedDict of 5 maps P3..P7.

    Each map is (N, fpn_channels, ceil(H / 2**l), ceil(W / 2**l)) for level l in 3..7; P6 and P7
    are computed from P5 (torchvision's ``LastLevelP6P7`` with equal in/out channels).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown detector backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if fpn_channels <= 0:
        raise ValueError(f"fpn_channels must be positive, got {fpn_channels}")
    body = BACKBONES[name]()
    return BackboneWithFPN(
        body,
        return_layers=dict(RETURN_LAYERS),
        in_channels_list=_stage_channels(body),
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )


def feature_grid_sizes(input_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(rows, cols) of P3..P7 for an (H, W) input.

    Every stride-2 layer on the path (7x7/p3 stem, 3x3/p1 max-pool, 3x3/p1 and 1x1/p0 stride-2
    convolutions, P6/P7's 3x3/p1 convolutions) maps n to ceil(n / 2), so level l is n halved
    and rounded up l times. The test suite checks this against the real feature maps.
    """
    h, w = input_hw
    sizes = []
    for level in range(1, max(FPN_LEVELS) + 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        if level in FPN_LEVELS:
            sizes.append((h, w))
    return sizes
