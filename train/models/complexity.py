"""Model size and cost: parameter count and FLOPs at a given input shape."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_complexity(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, FLOPs) of one eval-mode forward pass on a zero tensor of ``input_shape``.

    FLOPs are as ``torch.utils.flop_counter.FlopCounterMode`` counts them: 2 per multiply-add in
    convolutions, transposed convolutions and matrix products; element-wise ops, pooling and
    normalisation are not counted. The input goes on the model's device with its dtype; the
    model's train/eval mode is restored afterwards.
    """
    if not input_shape or any(int(d) <= 0 for d in input_shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {input_shape}")
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(tuple(int(d) for d in input_shape), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return int(params), int(counter.get_total_flops())
