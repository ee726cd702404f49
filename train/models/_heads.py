"""RetinaNet's two sub-networks, shared across FPN levels: class logits and box deltas per anchor.

torchvision's ``RetinaNetClassificationHead`` fixes four convolutions; here the count comes from
the config (``head_convs``), so the CPU-sized preset can use two.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn


def _conv_tower(channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _init_normal(module: nn.Module) -> None:
    """RetinaNet's head initialisation: weights N(0, 0.01), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _flatten_levels(maps: list[Tensor], per_anchor: int) -> Tensor:
    """Per-level (N, A*C, H, W) maps -> (N, sum HWA, C), levels then locations then anchors."""
    flat = []
    for m in maps:
        n, _, h, w = m.shape
        m = m.view(n, -1, per_anchor, h, w)  # (N, A*C, H, W) -> (N, A, C, H, W)
        m = m.permute(0, 3, 4, 1, 2)  # -> (N, H, W, A, C)
        flat.append(m.reshape(n, -1, per_anchor))  # -> (N, HWA, C)
    return torch.cat(flat, dim=1)


class ClassificationHead(nn.Module):
    """``head_convs`` x (3x3 conv + ReLU), then a 3x3 conv with A*K filters.

    The last bias starts at ``-log((1 - prior) / prior)`` so every anchor begins at probability
    ``prior``: with tens of thousands of background anchors, the focal loss would otherwise be
    swamped in the first steps (RetinaNet, section 4.1).
    """

    def __init__(
        self, channels: int, num_anchors: int, num_classes: int = 1, head_convs: int = 4,
        prior_probability: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0.0 < prior_probability < 1.0:
            raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability}")
        self.num_classes = num_classes
        self.conv = _conv_tower(channels, head_convs)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, kernel_size=3, padding=1)
        _init_normal(self)
        prior_logit = -math.log((1.0 - prior_probability) / prior_probability)
        nn.init.constant_(cast(Tensor, self.cls_logits.bias), prior_logit)

    def forward(self, features: list[Tensor]) -> Tensor:
        """P3..P7 maps -> logits (N, total anchors, K)."""
        return _flatten_levels([self.cls_logits(self.conv(f)) for f in features], self.num_classes)


class RegressionHead(nn.Module):
    """``head_convs`` x (3x3 conv + ReLU), then a 3x3 conv with 4*A filters (box deltas)."""

    def __init__(self, channels: int, num_anchors: int, head_convs: int = 4) -> None:
        super().__init__()
        self.conv = _conv_tower(channels, head_convs)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, kernel_size=3, padding=1)
        _init_normal(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        """P3..P7 maps -> box deltas (N, total anchors, 4), in the box coder's encoding."""
        return _flatten_levels([self.bbox_reg(self.conv(f)) for f in features], 4)


class PresenceHead(nn.Module):
    """Whether the frame holds a BP at all: each FPN level's channels max-pooled over the whole
    map, concatenated, then one linear layer -> a logit per frame (N,).

    The anchor score answers "is the BP *here*" at every location and is trained only against
    the frame's own background; this answers "is it in the frame", trained on BP and empty frames
    alike, from a view of the whole frame (a look-alike elsewhere is context, not a rival)."""

    def __init__(self, channels: int, levels: int) -> None:
        super().__init__()
        self.logit = nn.Linear(channels * levels, 1)
        nn.init.normal_(self.logit.weight, std=0.01)
        nn.init.zeros_(self.logit.bias)

    @staticmethod
    def pool(features: list[Tensor]) -> Tensor:
        """What the head reads: P3..P7 maps (N, C, h, w) each max-pooled, (N, levels * C)."""
        return torch.cat([f.amax(dim=(2, 3)) for f in features], dim=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """P3..P7 maps (N, C, h, w) -> presence logits (N,)."""
        return self.logit(self.pool(features))[:, 0]
