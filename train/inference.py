"""The one PyTorch batch runner: NumPy batches in, NumPy outputs out.

Used by export parity (``run_torch``), ``bpedge.train.predict``, the study's evaluation and the
bench's PyTorch-eager baseline, so model mode, gradient tracking, device transfer and output
conversion are decided once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["run_batches", "run_torch"]


def run_batches(model: nn.Module, batches: Iterable[np.ndarray],
                device: str | torch.device | None = None) -> Iterator[list[np.ndarray]]:
    """Run an eval-mode ``model`` on each float32 batch ``(N, ...)`` under
    ``torch.inference_mode()``; yields its output(s) per batch as a list of float32 arrays (one
    per model output, first axis N). ``device``: where the inputs go (default: the model's)."""
    import torch

    if model.training:
        raise ValueError("run the model in eval mode: call model.eval() first")
    if device is None:
        device = next(model.parameters()).device
    for batch in batches:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
            out = model(x)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            yield [o.detach().cpu().numpy().astype(np.float32, copy=False) for o in outs]


def run_torch(model: nn.Module, x: np.ndarray, batch_size: int = 8) -> list[np.ndarray]:
    """Run an eval-mode ``model`` on float32 ``x`` (N, ...) in batches of ``batch_size``; its
    output(s) as a list of float32 arrays concatenated over the batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts: list[list[np.ndarray]] = []
    starts = range(0, x.shape[0], batch_size)
    for outs in run_batches(model, (x[s : s + batch_size] for s in starts)):
        if not parts:
            parts = [[] for _ in outs]
        for part, o in zip(parts, outs):
            part.append(o)
    return [np.concatenate(p) for p in parts]
