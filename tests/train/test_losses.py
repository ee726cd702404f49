"""Losses against formulas written out here, and Dice on masks whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from bpedge.train.losses import focal_loss, segmentation_loss, soft_dice_loss


def focal_by_hand(logit: float, target: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    p_t = p if target == 1 else 1 - p
    alpha_t = 1.0 if alpha == -1 else (alpha if target == 1 else 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 5.0), (-1, 1.0)])
def test_focal_loss_matches_the_formula_elementwise_and_summed(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(5, 7, generator=g) > 0.6).double()
    expected = torch.tensor(
        [[focal_by_hand(float(z), float(t), alpha, gamma) for z, t in zip(zr, tr)]
         for zr, tr in zip(logits, targets)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(focal_loss(logits, targets, alpha, gamma, "none"), expected)
    torch.testing.assert_close(focal_loss(logits, targets, alpha, gamma), expected.sum())
    torch.testing.assert_close(focal_loss(logits, targets, alpha, gamma, "mean"), expected.mean())


def test_focal_loss_with_gamma_zero_and_no_alpha_is_binary_cross_entropy():
    logits = torch.linspace(-4, 4, 9)
    targets = (torch.arange(9) % 2).float()
    torch.testing.assert_close(
        focal_loss(logits, targets, alpha=-1, gamma=0.0),
        F.binary_cross_entropy_with_logits(logits, targets, reduction="sum"),
    )


def test_focal_loss_down_weights_easy_examples_more_than_hard_ones():
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    target = torch.tensor([1.0])
    ratio_easy = focal_loss(easy, target, 0.25, 2.0) / focal_loss(easy, target, 0.25, 0.0)
    ratio_hard = focal_loss(hard, target, 0.25, 2.0) / focal_loss(hard, target, 0.25, 0.0)
    assert float(ratio_easy) < 0.01 < float(ratio_hard)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"logits": torch.zeros(3), "targets": torch.zeros(4)}, "shapes differ"),
        ({"reduction": "max"}, "reduction"),
        ({"gamma": -1.0}, "gamma"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_focal_loss_refuses_bad_arguments(kwargs, match):
    args = {"logits": torch.zeros(3), "targets": torch.zeros(3), "alpha": 0.25, "gamma": 2.0}
    with pytest.raises(ValueError, match=match):
        focal_loss(**{**args, **kwargs})


def square_mask(size: int, x0: int, y0: int, side: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., y0 : y0 + side, x0 : x0 + side] = 1
    return mask


def test_soft_dice_on_known_masks():
    a = square_mask(32, 0, 0, 10)  # 100 pixels
    same, disjoint = a.clone(), square_mask(32, 20, 20, 10)
    half = square_mask(32, 5, 0, 10)  # overlaps a in 50 pixels
    assert float(soft_dice_loss(a, same)) == pytest.approx(0.0)
    assert float(soft_dice_loss(a, disjoint)) == pytest.approx(1 - 1 / 201)
    assert float(soft_dice_loss(a, half)) == pytest.approx(1 - 101 / 201)
    assert float(soft_dice_loss(a, half, eps=0.0)) == pytest.approx(0.5)
    empty = torch.zeros_like(a)
    assert float(soft_dice_loss(empty, empty)) == pytest.approx(0.0)  # empty-vs-empty is perfect


def test_soft_dice_averages_per_image_not_over_pooled_pixels():
    big = square_mask(32, 0, 0, 20)
    small = square_mask(32, 0, 0, 2)
    prob = torch.cat([big, torch.zeros_like(small)])  # image 1 perfect, image 2 missed entirely
    target = torch.cat([big, small])
    assert float(soft_dice_loss(prob, target)) == pytest.approx((0 + (1 - 1 / 5)) / 2)


def test_soft_dice_takes_soft_probabilities():
    target = square_mask(8, 0, 0, 4)
    prob = torch.full_like(target, 0.5)
    inter, total = 0.5 * 16, 0.5 * 64 + 16
    assert float(soft_dice_loss(prob, target)) == pytest.approx(1 - (2 * inter + 1) / (total + 1))


def test_segmentation_loss_is_bce_plus_soft_dice_and_is_smallest_at_the_truth():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    prob = torch.rand(2, 1, 16, 16, generator=g).requires_grad_()
    loss = segmentation_loss(prob, target)
    expected = F.binary_cross_entropy(prob, target) + soft_dice_loss(prob, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert bool(torch.isfinite(prob.grad).all())
    near_truth = target.clamp(1e-4, 1 - 1e-4)
    assert float(segmentation_loss(near_truth, target)) < float(loss.detach()) / 10


def test_dice_and_segmentation_loss_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        soft_dice_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="batch axis"):
        soft_dice_loss(torch.zeros(8), torch.zeros(8))
