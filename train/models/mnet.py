"""M-Net: the U-Net with a multi-scale input and deep supervision through four side outputs.

Compared with :class:`.unet.UNet`: the input, average-pooled by 2, 4 and 8, is concatenated to
the (pooled) input of encoder levels 1, 2 and 3 (one extra channel each); and the last four
feature maps of the decoder path (for depth 4: the bottleneck and the three decoder levels)
each feed a 1x1 convolution + sigmoid, upsampled bilinearly to the input size. The output is the
average of those four probability maps; training supervises each (``forward_sides``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import UpLevel, check_segmenter_args, check_segmenter_input, double_conv

MULTISCALE_LEVELS = (1, 2, 3)  # encoder levels that also get the input pooled by 2**level
NUM_SIDES = 4


def _upsample(prob: Tensor, factor: int) -> Tensor:
    """Bilinear (half-pixel centres) by an integer factor: a constant-scale Resize in ONNX."""
    if factor == 1:
        return prob
    return F.interpolate(prob, scale_factor=float(factor), mode="bilinear", align_corners=False)


class MNet(nn.Module):
    """``forward(x (N,1,H,W) float32)`` -> mean of the side probabilities (N,1,H,W) in [0, 1].

    Needs ``depth >= 4`` (levels 1..3 take the multi-scale input and four side outputs are
    needed); H and W must be multiples of ``2**(depth-1)``.
    """

    def __init__(
        self, base_filters: int = 32, depth: int = 5, kernel_size: int = 5, dropout: float = 0.4
    ) -> None:
        super().__init__()
        check_segmenter_args(base_filters, depth, kernel_size, dropout)
        if depth < NUM_SIDES:
            raise ValueError(f"M-Net needs depth >= {NUM_SIDES} encoder levels, got {depth}")
        self.depth = depth
        widths = [base_filters * 2**level for level in range(depth)]
        in_widths = [1] + [
            widths[level - 1] + (1 if level in MULTISCALE_LEVELS else 0)
            for level in range(1, depth)
        ]
        self.encoder = nn.ModuleList(
            double_conv(i, o, kernel_size, dropout) for i, o in zip(in_widths, widths)
        )
        self.pool = nn.AvgPool2d(2)
        self.decoder = nn.ModuleList(
            UpLevel(widths[level + 1], widths[level], kernel_size)
            for level in reversed(range(depth - 1))
        )
        # Decoder path, coarse to fine: bottleneck (level depth-1), then levels depth-2 .. 0.
        path_widths = list(reversed(widths))
        self.sides = nn.ModuleList(
            nn.Conv2d(w, 1, kernel_size=1) for w in path_widths[-NUM_SIDES:]
        )

    def forward_sides(self, x: Tensor) -> list[Tensor]:
        """The four side outputs, coarsest first: each (N, 1, H, W) probabilities in [0, 1]."""
        check_segmenter_input(x, self.depth)
        image = x
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            if level in MULTISCALE_LEVELS:
                scale = 2**level
                x = torch.cat([x, F.avg_pool2d(image, kernel_size=scale, stride=scale)], dim=1)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        path = [x]
        for up in self.decoder:
            x = up(x, skips.pop())
            path.append(x)
        levels = range(NUM_SIDES - 1, -1, -1)  # the side maps' pyramid levels, coarse to fine
        return [
            _upsample(torch.sigmoid(side(feat)), 2**level)
            for side, feat, level in zip(self.sides, path[-NUM_SIDES:], levels)
        ]

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> (N, 1, H, W): the average of the four side probabilities."""
        sides = self.forward_sides(x)
        return torch.stack(sides, dim=0).mean(dim=0)
