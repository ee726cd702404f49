"""Pick and build the segmenter a :class:`SegmenterConfig` names."""

from __future__ import annotations

from torch import nn

from ..presets import SegmenterConfig
from .mnet import MNet
from .unet import UNet

ARCHS = {"unet": UNet, "mnet": MNet}


def build_segmenter(cfg: SegmenterConfig) -> nn.Module:
    """An untrained :class:`UNet` or :class:`MNet` (``cfg.arch``) with the config's sizes.

    Both map (N, 1, H, W) float32 z-scored crops to (N, 1, H, W) probabilities; the crop size
    ``cfg.crop_hw`` must be a multiple of ``2**(depth-1)``.
    """
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown segmenter arch {cfg.arch!r}; choose one of {sorted(ARCHS)}")
    factor = 2 ** (cfg.depth - 1)
    if cfg.crop_hw[0] % factor or cfg.crop_hw[1] % factor:
        raise ValueError(
            f"crop_hw {cfg.crop_hw} must be multiples of {factor} for a depth-{cfg.depth} {cfg.arch}"
        )
    return ARCHS[cfg.arch](cfg.base_filters, cfg.depth, cfg.kernel_size, cfg.dropout)
