"""U-Net as published for the BP crops: 96x96 grey in, 96x96 probability out.

Encoder level l (0..depth-1): two kxk convolutions (padding "same") + ReLU, BatchNorm, dropout,
with ``base_filters * 2**l`` filters; 2x2 average pooling between levels. Decoder: 2x2 stride-2
transposed convolution, concatenation with the encoder's skip, two kxk convolutions + ReLU,
BatchNorm (no dropout). A 1x1 convolution and a sigmoid give the probability map.
The building blocks are shared with :mod:`.mnet`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def double_conv(in_ch: int, out_ch: int, kernel_size: int, dropout: float = 0.0) -> nn.Sequential:
    """(conv kxk + ReLU) x 2, BatchNorm, then dropout if ``dropout > 0``: spatial size kept."""
    pad = kernel_size // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, kernel_size, padding=pad),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_ch),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class UpLevel(nn.Module):
    """Transposed conv 2x2/2 (in_ch -> out_ch), concat the skip (out_ch), then ``double_conv``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = double_conv(2 * out_ch, out_ch, kernel_size)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """(N, in_ch, h, w) and (N, out_ch, 2h, 2w) -> (N, out_ch, 2h, 2w)."""
        return self.conv(torch.cat([self.up(x), skip], dim=1))


def check_segmenter_args(base_filters: int, depth: int, kernel_size: int, dropout: float) -> None:
    """ValueError unless the U-Net / M-Net hyper-parameters make a network."""
    if base_filters <= 0:
        raise ValueError(f"base_filters must be positive, got {base_filters}")
    if depth < 2:
        raise ValueError(f"depth (encoder levels) must be >= 2, got {depth}")
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number ('same' padding), got {kernel_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def check_segmenter_input(x: Tensor, depth: int) -> None:
    """ValueError unless ``x`` is float (N, 1, H, W) with H and W divisible by 2**(depth-1)."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"segmenter input must be (N, 1, H, W) z-scored grey crops, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"segmenter input must be floating point, got {x.dtype}")
    factor = 2 ** (depth - 1)
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(
            f"segmenter input height and width must be multiples of {factor} for depth {depth}, "
            f"got {tuple(x.shape[2:])}"
        )


class UNet(nn.Module):
    """``forward(x (N,1,H,W) float32)`` -> probabilities (N,1,H,W) in [0, 1] (after sigmoid).

    H and W must be multiples of ``2**(depth-1)`` (96 works for depth <= 6).
    """

    def __init__(
        self, base_filters: int = 32, depth: int = 5, kernel_size: int = 5, dropout: float = 0.4
    ) -> None:
        super().__init__()
        check_segmenter_args(base_filters, depth, kernel_size, dropout)
        self.depth = depth
        widths = [base_filters * 2**level for level in range(depth)]
        in_widths = [1, *widths[:-1]]
        self.encoder = nn.ModuleList(
            double_conv(i, o, kernel_size, dropout) for i, o in zip(in_widths, widths)
        )
        self.pool = nn.AvgPool2d(2)
        # Decoder levels run from depth-2 up to 0; stored coarse to fine.
        self.decoder = nn.ModuleList(
            UpLevel(widths[level + 1], widths[level], kernel_size)
            for level in reversed(range(depth - 1))
        )
        self.out = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) -> (N, 1, H, W) probabilities."""
        check_segmenter_input(x, self.depth)
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck is the deepest level's output, not a skip
        for up in self.decoder:
            x = up(x, skips.pop())
        return torch.sigmoid(self.out(x))
