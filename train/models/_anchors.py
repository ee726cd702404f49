"""Anchors for a fixed detector input size, laid out by torchvision's ``AnchorGenerator``.

Frames are always resized whole to the configured input size, so the anchor set depends only
on that size: it is computed once and kept as a buffer, and the exported graph indexes into it
with gather/argmax (no data-dependent shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator


def anchor_generator(
    anchor_sizes: Sequence[float],
    anchor_scales: Sequence[float],
    aspect_ratios: Sequence[float],
) -> AnchorGenerator:
    """One size per FPN level, multiplied by each scale, at each aspect ratio (height / width).

    Per location the anchors are ordered ratio-major, scale-minor (torchvision's order), which
    is the order the heads' output channels are read in.
    """
    if not anchor_sizes or not anchor_scales or not aspect_ratios:
        raise ValueError("anchor_sizes, anchor_scales and aspect_ratios must all be non-empty")
    if min(anchor_sizes) <= 0 or min(anchor_scales) <= 0 or min(aspect_ratios) <= 0:
        raise ValueError(
            f"anchor sizes, scales and aspect ratios must be positive, got {tuple(anchor_sizes)}, "
            f"{tuple(anchor_scales)}, {tuple(aspect_ratios)}"
        )
    sizes = tuple(tuple(float(s) * float(k) for k in anchor_scales) for s in anchor_sizes)
    ratios = (tuple(float(r) for r in aspect_ratios),) * len(sizes)
    return AnchorGenerator(sizes, ratios)


def anchors_for_grids(
    generator: AnchorGenerator,
    grid_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
) -> Tensor:
    """All anchors, (sum over levels of rows*cols*A, 4) float32, x0 y0 x1 y1 in input pixels.

    Levels in order P3..P7, then row-major locations, then the A anchors of a location: the
    same order as the heads' flattened outputs. ``strides`` are the nominal level strides
    (8, 16, ...), not ``input // grid`` as ``AnchorGenerator.forward`` would derive them,
    so anchors stay on the true feature-cell spacing when the input is not a multiple of 128.
    """
    if len(grid_sizes) != len(generator.cell_anchors) or len(strides) != len(grid_sizes):
        raise ValueError(
            f"need one grid size and stride per anchor level ({len(generator.cell_anchors)}), "
            f"got {len(grid_sizes)} grid sizes and {len(strides)} strides"
        )
    stride_tensors = [
        [torch.tensor(s, dtype=torch.int64), torch.tensor(s, dtype=torch.int64)] for s in strides
    ]
    per_level = generator.grid_anchors([list(g) for g in grid_sizes], stride_tensors)
    return torch.cat(per_level).to(torch.float32)
