"""The kernels' launch contract: ctypes mirrors of their argument structs, entry-point names and
launch shapes. The host emulation and the GPU runtime (``cuLaunchKernel``) both launch through it.

Each kernel takes ONE argument, a struct passed by value (``BpPreprocessArgs`` in preprocess.cu,
``BpPasteArgs`` in paste.cu); the ctypes classes below have the same fields in the same order, and a
test checks their offsets against the C compiler's. ``cuLaunchKernel`` wants ``kernelParams`` as an
array of one pointer per kernel parameter: :func:`kernel_params` builds that ``void*[1]`` array,
whose address (``ctypes.addressof``) is what cuda.bindings takes as an ``int`` kernelParams.
"""

from __future__ import annotations

import ctypes
import math
import struct
from dataclasses import dataclass

from bpedge._stages import MIN_BOX_SIDE

#: Kernel entry points by element type of the tensor that is not uint8 (output for preprocess,
#: probability input for paste).
PREPROCESS_ENTRY_POINTS: dict[str, str] = {"float32": "bp_preprocess_f32", "float16": "bp_preprocess_f16"}
PASTE_ENTRY_POINTS: dict[str, str] = {"float32": "bp_paste_f32", "float16": "bp_paste_f16"}

#: ``__launch_bounds__`` of both kernels: a launch with more threads per block fails.
MAX_THREADS_PER_BLOCK = 256
#: Largest ``out_w`` / ``out_h`` of the preprocess kernel (its tap tables are static shared memory).
PREPROCESS_MAX_SIDE = 1024
PREPROCESS_BLOCK = (256, 1, 1)
PASTE_BLOCK = (32, 8, 1)
#: Dataset-normalised preprocessing gives each block about this many pixels per thread: enough to
#: amortise the block's tap tables, few enough to spread a detector-sized input over many SMs.
PREPROCESS_PIXELS_PER_THREAD = 16


class PreprocessArgs(ctypes.Structure):
    """Mirror of ``BpPreprocessArgs`` (preprocess.cu); pointers are device (or host) addresses."""

    _fields_ = [
        ("frames", ctypes.c_void_p),
        ("boxes", ctypes.c_void_p),
        ("boxes_out", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("scale_x", ctypes.c_double),
        ("scale_y", ctypes.c_double),
        ("min_box_side", ctypes.c_double),
        ("crop_margin", ctypes.c_double),
        ("mean", ctypes.c_double),
        ("stddev", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("per_crop", ctypes.c_int),
        ("batch", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("pitch", ctypes.c_int),
        ("box_stride", ctypes.c_int),
        ("out_w", ctypes.c_int),
        ("out_h", ctypes.c_int),
    ]


class PasteArgs(ctypes.Structure):
    """Mirror of ``BpPasteArgs`` (paste.cu); pointers are device (or host) addresses."""

    _fields_ = [
        ("prob", ctypes.c_void_p),
        ("boxes", ctypes.c_void_p),
        ("scores", ctypes.c_void_p),
        ("masks", ctypes.c_void_p),
        ("threshold", ctypes.c_double),
        ("score_threshold", ctypes.c_double),
        ("batch", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("pitch", ctypes.c_int),
        ("crop_w", ctypes.c_int),
        ("crop_h", ctypes.c_int),
        ("box_stride", ctypes.c_int),
        ("score_stride", ctypes.c_int),
    ]


@dataclass(frozen=True)
class LaunchShape:
    """Grid and block of one launch, each ``(x, y, z)``."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def preprocess_args(
    *,
    frames: int,
    out: int,
    batch: int,
    width: int,
    height: int,
    pitch: int,
    out_w: int,
    out_h: int,
    mean: float | None,
    std: float | None,
    boxes: int | None = None,
    box_stride: int = 4,
    scale: tuple[float, float] = (1.0, 1.0),
    boxes_out: int | None = None,
    crop_margin: float = 0.0,
    eps: float = 1e-6,
) -> PreprocessArgs:
    """Checked :class:`PreprocessArgs`. Pointers are addresses (``int``); ``boxes=None`` crops the
    whole frame; ``mean=std=None`` normalises each crop by its own statistics (both or neither).

    ``frames``: uint8 ``[batch, height, pitch]``; ``boxes``: float32 ``[x0, y0, x1, y1]`` per item
    in detector-input pixels, ``box_stride`` floats apart, mapped to frame pixels by ``scale``;
    ``crop_margin``: :attr:`bpedge._preprocessing.PreprocessingSpec.crop_margin` (each box is
    cropped as :func:`bpedge._preprocessing.crop_box` grows and clamps it; ignored without
    ``boxes``); ``boxes_out``: float32 ``[batch, 4]`` frame-pixel crop boxes; ``out``:
    ``[batch, 1, out_h, out_w]`` of the entry point's type.
    """
    _check_positive(batch=batch, width=width, height=height, pitch=pitch, out_w=out_w, out_h=out_h,
                    box_stride=box_stride)
    if pitch < width:
        raise ValueError(f"pitch must be at least the width ({width}), got {pitch}")
    if box_stride < 4:
        raise ValueError(f"box_stride must be at least 4 floats, got {box_stride}")
    if out_w > PREPROCESS_MAX_SIDE or out_h > PREPROCESS_MAX_SIDE:
        raise ValueError(f"out_w and out_h must be at most {PREPROCESS_MAX_SIDE}, got {out_w}x{out_h}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (dataset statistics) or neither (per-crop statistics)")
    if std is not None and not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be finite and positive, got {std}")
    if mean is not None and not math.isfinite(mean):
        raise ValueError(f"mean must be finite, got {mean}")
    if not all(math.isfinite(s) and s > 0 for s in scale):
        raise ValueError(f"scale must be two finite positive factors, got {scale}")
    if not (math.isfinite(crop_margin) and crop_margin >= 0.0):
        raise ValueError(f"crop_margin must be a finite fraction >= 0, got {crop_margin}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and positive, got {eps}")
    return PreprocessArgs(
        frames=frames, boxes=boxes, boxes_out=boxes_out, out=out,
        scale_x=float(scale[0]), scale_y=float(scale[1]), min_box_side=MIN_BOX_SIDE,
        crop_margin=float(crop_margin),
        mean=0.0 if mean is None else float(mean), stddev=1.0 if std is None else float(std),
        eps=float(eps), per_crop=int(mean is None), batch=batch, width=width, height=height,
        pitch=pitch, box_stride=box_stride, out_w=out_w, out_h=out_h,
    )


def paste_args(
    *,
    prob: int,
    boxes: int,
    scores: int,
    masks: int,
    batch: int,
    width: int,
    height: int,
    pitch: int,
    crop_w: int,
    crop_h: int,
    threshold: float,
    score_threshold: float,
    box_stride: int = 4,
    score_stride: int = 1,
) -> PasteArgs:
    """Checked :class:`PasteArgs`. Pointers are addresses (``int``).

    ``prob``: ``[batch, crop_h, crop_w]`` of the entry point's type; ``boxes``: float32 frame-pixel
    ``[x0, y0, x1, y1]`` per item (preprocess's ``boxes_out``), ``box_stride`` floats apart;
    ``scores``: float32, ``score_stride`` floats apart; ``masks``: uint8 ``[batch, height, pitch]``.
    """
    _check_positive(batch=batch, width=width, height=height, pitch=pitch, crop_w=crop_w,
                    crop_h=crop_h, box_stride=box_stride, score_stride=score_stride)
    if pitch < width:
        raise ValueError(f"pitch must be at least the width ({width}), got {pitch}")
    if box_stride < 4:
        raise ValueError(f"box_stride must be at least 4 floats, got {box_stride}")
    if not (math.isfinite(threshold) and math.isfinite(score_threshold)):
        raise ValueError(f"thresholds must be finite, got {threshold} and {score_threshold}")
    # The reference compares its float32 canvas with the threshold in float32 (NumPy 2 takes a
    # Python float at the array's precision); the kernel compares in double, so it gets the
    # float32-rounded value (0.7 in double lies above float32(0.7): equal pixels were dropped).
    return PasteArgs(
        prob=prob, boxes=boxes, scores=scores, masks=masks,
        threshold=_as_float32(threshold),
        score_threshold=float(score_threshold), batch=batch, width=width, height=height,
        pitch=pitch, crop_w=crop_w, crop_h=crop_h, box_stride=box_stride, score_stride=score_stride,
    )


def _as_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (without NumPy, which this module does not need)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def preprocess_launch(batch: int, out_w: int, out_h: int, per_crop: bool) -> LaunchShape:
    """Grid and block for the preprocess kernel: one block per item when normalising per crop (the
    statistics are a block reduction), else enough blocks for ~16 pixels per thread."""
    _check_positive(batch=batch, out_w=out_w, out_h=out_h)
    threads = PREPROCESS_BLOCK[0]
    blocks = 1 if per_crop else -(-(out_w * out_h) // (threads * PREPROCESS_PIXELS_PER_THREAD))
    return LaunchShape(grid=(blocks, batch, 1), block=PREPROCESS_BLOCK)


def paste_launch(batch: int, width: int, height: int) -> LaunchShape:
    """Grid and block for the paste kernel: one 32x8 tile of the frame per block."""
    _check_positive(batch=batch, width=width, height=height)
    bx, by, _ = PASTE_BLOCK
    return LaunchShape(grid=(-(-width // bx), -(-height // by), batch), block=PASTE_BLOCK)


def kernel_params(args: PreprocessArgs | PasteArgs) -> ctypes.Array[ctypes.c_void_p]:
    """The ``void*[1]`` kernelParams array for a launch of a one-struct kernel. The driver copies the
    struct when the launch is enqueued (or captured), so ``args`` and the array must stay alive until
    the launch call returns."""
    if not isinstance(args, (PreprocessArgs, PasteArgs)):
        raise TypeError(f"args must be PreprocessArgs or PasteArgs, got {type(args).__name__}")
    return (ctypes.c_void_p * 1)(ctypes.addressof(args))
