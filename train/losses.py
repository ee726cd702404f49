"""Training losses: sigmoid focal loss (detector) and BCE + soft Dice (segmenters)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

REDUCTIONS = ("none", "mean", "sum")


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{what} takes tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: prediction and target shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
        )


def focal_loss(
    logits: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str = "sum"
) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017), element-wise then reduced.

    ``FL = -alpha_t * (1 - p_t)**gamma * log(p_t)`` with ``p = sigmoid(logits)``, ``p_t = p`` where
    the target is 1 and ``1 - p`` where it is 0, ``alpha_t`` likewise ``alpha`` / ``1 - alpha``
    (``alpha = -1`` disables the weighting). ``logits`` and ``targets`` share any shape; targets
    are 0/1 floats. ``reduction``: ``"none"`` (same shape), ``"mean"`` or ``"sum"`` (scalar).
    torchvision's ``sigmoid_focal_loss`` does the arithmetic.
    """
    _check_same_shape(logits, targets, "focal_loss")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if not (0.0 <= alpha <= 1.0 or alpha == -1):
        raise ValueError(f"focal alpha must be in [0, 1] (or -1 to disable), got {alpha}")
    return sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha, gamma, reduction)


def soft_dice_loss(prob: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """``1 - mean over images of (2 sum(p t) + eps) / (sum p + sum t + eps)``, a scalar.

    ``prob`` (N, ...) probabilities in [0, 1], ``target`` the same shape with 0/1 values; each
    image (first axis) is one Dice term. ``eps`` (default 1, in pixels) keeps an empty
    prediction of an empty mask at Dice 1 and smooths the gradient on near-empty ones.
    """
    _check_same_shape(prob, target, "soft_dice_loss")
    if prob.ndim < 2:
        raise ValueError(f"soft_dice_loss needs (N, ...) with a batch axis, got {tuple(prob.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    p = prob.flatten(1)
    t = target.flatten(1).to(p.dtype)
    dice = (2.0 * (p * t).sum(dim=1) + eps) / (p.sum(dim=1) + t.sum(dim=1) + eps)
    return 1.0 - dice.mean()


def segmentation_loss(prob: Tensor, target: Tensor) -> Tensor:
    """What the U-Net and M-Net train on: pixel-mean binary cross-entropy + soft Dice loss.

    Dice is the reported metric and ignores the large background, but alone its gradient is
    weak and noisy while predictions are near zero; BCE gives every pixel a gradient from the
    first step. Their sum trains stably and tracks Dice. ``prob`` and ``target``: (N, 1, H, W),
    probabilities (after sigmoid) and 0/1 masks. For M-Net's deep supervision apply it to each
    side output and average.
    """
    _check_same_shape(prob, target, "segmentation_loss")
    target = target.to(prob.dtype)
    return F.binary_cross_entropy(prob, target) + soft_dice_loss(prob, target)


__all__ = ["focal_loss", "segmentation_loss", "soft_dice_loss"]
