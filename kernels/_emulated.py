"""NumPy-in, NumPy-out launches of the kernels under host emulation: what the tests compare with
``bpedge._stages``. Slow (real threads per CUDA thread); for checking logic, not for serving."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import numpy as np
from bpedge.kernels._host_build import load_host_library
from bpedge.kernels._launch_args import (
    MAX_THREADS_PER_BLOCK,
    LaunchShape,
    paste_args,
    paste_launch,
    preprocess_args,
    preprocess_launch,
)

_TYPE_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}


def _batched(array: np.ndarray, ndim: int, what: str) -> np.ndarray:
    if array.ndim == ndim - 1:
        return array[None]
    if array.ndim != ndim:
        raise ValueError(f"{what} must have {ndim - 1} or {ndim} dimensions, got shape {array.shape}")
    return array


def _row_pitch(image: np.ndarray) -> int | None:
    """Row pitch in bytes of a uint8 (N, H, W) array the kernels can address, else None."""
    n, h, w = image.shape
    pitch = image.strides[1]
    if image.strides[2] != 1 or pitch < w or (n > 1 and image.strides[0] != h * pitch):
        return None
    return pitch


def _float_rows(values: np.ndarray, columns: int, what: str) -> tuple[np.ndarray, int]:
    """(N, >=columns) float32 rows and their stride in floats, copying only when needed."""
    if values.ndim != 2 or values.shape[1] < columns:
        raise ValueError(f"{what} must have shape (N, {columns}) or wider, got {values.shape}")
    if values.dtype != np.float32 or values.strides[1] != 4 or values.strides[0] % 4:
        values = np.ascontiguousarray(values, dtype=np.float32)
    return values, max(values.strides[0] // 4, columns)


def _launch_dims(shape: LaunchShape, block: Sequence[int] | None) -> tuple[ctypes.Array, ctypes.Array]:
    block = tuple(block) if block is not None else shape.block
    if len(block) != 3 or min(block) < 1 or int(np.prod(block)) > MAX_THREADS_PER_BLOCK:
        raise ValueError(
            f"block must be 3 positive sizes with at most {MAX_THREADS_PER_BLOCK} threads, got {block}"
        )
    dims = ctypes.c_uint * 3
    return dims(*shape.grid), dims(*block)


def emulated_preprocess(
    frames: np.ndarray,
    boxes: np.ndarray | None,
    out_w: int,
    out_h: int,
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    crop_margin: float = 0.0,
    mean: float | None = None,
    std: float | None = None,
    eps: float = 1e-6,
    dtype: type | np.dtype = np.float32,
    out: np.ndarray | None = None,
    boxes_out: np.ndarray | None = None,
    grid_x: int | None = None,
    block: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the preprocess kernel on the CPU.

    ``frames``: uint8 ``(N, H, W)`` or ``(H, W)`` (a row pitch wider than W is kept as is);
    ``boxes``: ``(N, >=4)`` ``[x0, y0, x1, y1]`` in detector-input pixels, or None for whole frames;
    ``scale``: detector-input -> frame pixel factors ``(sx, sy)``; ``crop_margin``: each box grown
    and clamped as :func:`bpedge._preprocessing.crop_box` does; ``mean``/``std``: dataset
    statistics, or both None for per-crop statistics. ``out`` / ``boxes_out`` may be given
    (e.g. poisoned) and are filled in place. Returns ``out`` ``(N, 1, out_h, out_w)`` of ``dtype``
    and ``boxes_out`` float32 ``(N, 4)``, the frame-pixel crop boxes (NaN for a non-finite box).
    """
    frames = _batched(np.asarray(frames), 3, "frames")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if _row_pitch(frames) is None:
        frames = np.ascontiguousarray(frames)
    n, height, width = frames.shape
    box_stride = 4
    if boxes is not None:
        boxes, box_stride = _float_rows(np.asarray(boxes), 4, "boxes")
        if boxes.shape[0] != n:
            raise ValueError(f"need one box per frame: {n} frames, {boxes.shape[0]} boxes")
    dtype = np.dtype(dtype)
    if dtype not in _TYPE_FLAGS:
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    if out is None:
        out = np.empty((n, 1, out_h, out_w), dtype)
    if out.shape != (n, 1, out_h, out_w) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {dtype} of shape {(n, 1, out_h, out_w)}")
    if boxes_out is None:
        boxes_out = np.empty((n, 4), np.float32)
    if boxes_out.shape != (n, 4) or boxes_out.dtype != np.float32 or not boxes_out.flags.c_contiguous:
        raise ValueError(f"boxes_out must be C-contiguous float32 of shape {(n, 4)}")
    args = preprocess_args(
        frames=frames.ctypes.data, boxes=None if boxes is None else boxes.ctypes.data,
        box_stride=box_stride, boxes_out=boxes_out.ctypes.data, out=out.ctypes.data, batch=n,
        width=width, height=height, pitch=_row_pitch(frames) or width, out_w=out_w, out_h=out_h,
        scale=scale, crop_margin=crop_margin, mean=mean, std=std, eps=eps,
    )
    shape = preprocess_launch(n, out_w, out_h, per_crop=mean is None)
    if grid_x is not None:
        shape = LaunchShape(grid=(grid_x, n, 1), block=shape.block)
    grid, threads = _launch_dims(shape, block)
    rc = load_host_library().bp_host_preprocess(ctypes.byref(args), _TYPE_FLAGS[dtype], grid, threads)
    if rc != 0:
        raise RuntimeError(f"the emulated preprocess launch was refused (grid {shape.grid})")
    return out, boxes_out


def emulated_paste(
    prob: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    width: int,
    height: int,
    *,
    threshold: float,
    score_threshold: float,
    masks: np.ndarray | None = None,
    block: Sequence[int] | None = None,
) -> np.ndarray:
    """Run the paste kernel on the CPU.

    ``prob``: float32/float16 ``(N, crop_h, crop_w)`` or ``(crop_h, crop_w)``; ``boxes``: ``(N, >=4)``
    frame-pixel boxes; ``scores``: ``(N,)``. ``masks`` (uint8 ``(N, height, width)``, a wider row
    pitch allowed) may be given, e.g. poisoned, and is filled in place. Returns the 0/255 masks.
    """
    prob = _batched(np.asarray(prob), 3, "prob")
    if prob.dtype not in _TYPE_FLAGS:
        raise ValueError(f"prob must be float32 or float16, got {prob.dtype}")
    prob = np.ascontiguousarray(prob)
    n, crop_h, crop_w = prob.shape
    boxes, box_stride = _float_rows(np.asarray(boxes), 4, "boxes")
    scores_2d, score_stride = _float_rows(np.asarray(scores).reshape(-1, 1), 1, "scores")
    if boxes.shape[0] != n or scores_2d.shape[0] != n:
        raise ValueError(f"need one box and one score per map: {n} maps, {boxes.shape[0]} boxes, "
                         f"{scores_2d.shape[0]} scores")
    if masks is None:
        masks = np.empty((n, height, width), np.uint8)
    if masks.shape != (n, height, width) or masks.dtype != np.uint8 or _row_pitch(masks) is None:
        raise ValueError(f"masks must be uint8 of shape {(n, height, width)} with unit pixel stride")
    args = paste_args(
        prob=prob.ctypes.data, boxes=boxes.ctypes.data, scores=scores_2d.ctypes.data,
        masks=masks.ctypes.data, batch=n, width=width, height=height, pitch=_row_pitch(masks) or width,
        crop_w=crop_w, crop_h=crop_h, threshold=threshold, score_threshold=score_threshold,
        box_stride=box_stride, score_stride=score_stride,
    )
    shape = paste_launch(n, width, height)
    if block is not None:
        bx, by, _ = block
        shape = LaunchShape(grid=(-(-width // bx), -(-height // by), n), block=tuple(block))
    grid, threads = _launch_dims(shape, block)
    rc = load_host_library().bp_host_paste(ctypes.byref(args), _TYPE_FLAGS[prob.dtype], grid, threads)
    if rc != 0:
        raise RuntimeError(f"the emulated paste launch was refused (grid {shape.grid})")
    return masks
