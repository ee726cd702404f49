"""The per-frame chain of the GPU cascade as data: buffer sizes, the copies and kernel launches for
one (batch, frame size, source), the order in which they and the two engines are enqueued, and
the results read back. No CUDA here: :class:`ChainOps` does the enqueueing (on a CUDA stream in
:mod:`._slot`, on NumPy buffers under the kernels' host emulation in the tests), so the wiring of
addresses, strides and scales is tested on a machine without a GPU.

One frame, all on one stream, no host synchronisation between the stages (events 0..7 between):
```
0 upload: pinned frame -> device (or device frame -> slot buffer)                1
  preprocess kernel: whole frame -> detector input "image"                       2
  detector engine: "image" -> "score" (N,), "box" (N, 4) detector-input px       3
  preprocess kernel: frame + "box" read on device, scaled by (W/in_w, H/in_h),
                     grown by the crop margin -> "crop" (N, 1, ch, cw),
                     the frame-px crop box -> "boxes_out"                         4
  segmenter engine: "crop" -> "prob"                                             5
  paste kernel: "prob" + "boxes_out" + "score" (device) -> "masks"               6
  download: masks, score, boxes_out -> pinned                                    7
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._gpu._engine import Expected
from bpedge._preprocessing import box_found, full_frame_box
from bpedge._result import Result
from bpedge.kernels import (
    PASTE_ENTRY_POINTS,
    PREPROCESS_ENTRY_POINTS,
    LaunchShape,
    PasteArgs,
    PreprocessArgs,
    paste_args,
    paste_launch,
    preprocess_args,
    preprocess_launch,
)

#: Stage i runs between events i and i + 1.
STAGES: tuple[str, ...] = ("upload", "preprocess", "detector", "crop", "segmenter", "paste",
                           "download")
N_EVENTS = len(STAGES) + 1

#: Engine tensor names (the export contract) and the device buffers bound to them.
DETECTOR, SEGMENTER = "detector", "segmenter"
ENGINE_TENSORS: dict[str, tuple[str, ...]] = {DETECTOR: ("image", "score", "box"),
                                              SEGMENTER: ("crop", "prob")}
SOURCES = ("host", "device")


@dataclass(frozen=True)
class TensorTypes:
    """Element types (``"float32"``/``"float16"``) of the engine tensors the kernels touch, read
    from the engines: they pick the ``_f32``/``_f16`` entry points."""

    image: str = "float32"
    crop: str = "float32"
    prob: str = "float32"

    def __post_init__(self) -> None:
        for name in ("image", "crop", "prob"):
            if getattr(self, name) not in PREPROCESS_ENTRY_POINTS:
                raise ValueError(f"{name} must be float32 or float16, got {getattr(self, name)!r}")


def expected_tensors(spec: CascadeSpec) -> dict[str, dict[str, Expected]]:
    """What each engine must offer the chain (checked with :func:`._engine.check_io`). The box and
    score are read by the kernels as float32."""
    in_h, in_w = spec.detector_input_hw
    ch, cw = spec.crop_hw
    return {
        DETECTOR: {
            "image": Expected(True, (1, in_h, in_w)),
            "score": Expected(False, item_size=1, dtypes=("float32",)),
            "box": Expected(False, item_size=4, dtypes=("float32",)),
        },
        SEGMENTER: {
            "crop": Expected(True, (1, ch, cw)),
            "prob": Expected(False, item_size=ch * cw),
        },
    }


@dataclass(frozen=True)
class SlotLayout:
    """Byte sizes of one slot's buffers for up to ``max_batch`` frames of up to ``max_pixels``
    pixels each (frame n at byte ``n * H * W``: frames are packed, row pitch = width)."""

    max_batch: int
    max_pixels: int
    detector_hw: tuple[int, int]
    crop_hw: tuple[int, int]
    types: TensorTypes

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_pixels < 1:
            raise ValueError(f"max_batch and max_pixels must be >= 1, got {self.max_batch}, "
                             f"{self.max_pixels}")

    def device_nbytes(self) -> dict[str, int]:
        b = self.max_batch
        det = math.prod(self.detector_hw)
        crop = math.prod(self.crop_hw)
        return {
            "frames": b * self.max_pixels,
            "image": b * det * _itemsize(self.types.image),
            "score": b * 4,
            "box": b * 4 * 4,
            "crop": b * crop * _itemsize(self.types.crop),
            "boxes_out": b * 4 * 4,
            "prob": b * crop * _itemsize(self.types.prob),
            "masks": b * self.max_pixels,
        }

    def host_nbytes(self) -> dict[str, int]:
        b = self.max_batch
        return {"frames": b * self.max_pixels, "masks": b * self.max_pixels, "score": b * 4,
                "boxes": b * 4 * 4}

    def fits(self, batch: int, height: int, width: int) -> bool:
        return batch <= self.max_batch and height * width <= self.max_pixels


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


@dataclass(frozen=True)
class ChainKey:
    """What a captured chain depends on: the batch, the frame size and where the frame comes from
    (``"host"``: pinned upload inside the chain; ``"device"``: copied in before it)."""

    batch: int
    height: int
    width: int
    source: str = "host"

    def __post_init__(self) -> None:
        if self.batch < 1 or self.height < 2 or self.width < 2:
            raise ValueError(f"need batch >= 1 and a frame of at least 2x2, got {self}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True)
class Copy:
    """``rows`` rows of ``row_bytes`` from ``src`` to ``dst`` (a 1-D copy is one row)."""

    dst: int
    dst_pitch: int
    src: int
    src_pitch: int
    row_bytes: int
    rows: int
    kind: str  # "h2d", "d2h", "d2d"


@dataclass(frozen=True, eq=False)
class Launch:
    entry_point: str
    args: PreprocessArgs | PasteArgs
    shape: LaunchShape


@dataclass(frozen=True, eq=False)
class ChainPlan:
    key: ChainKey
    upload: tuple[Copy, ...]
    detector_input: Launch
    crop: Launch
    paste: Launch
    download: tuple[Copy, ...]


@dataclass(frozen=True)
class DeviceSource:
    """A frame already on the device: ``ptr`` to ``height`` rows of ``width`` bytes, ``pitch``
    bytes apart."""

    ptr: int
    height: int
    width: int
    pitch: int


def plan_chain(key: ChainKey, device: Mapping[str, int], host: Mapping[str, int],
               spec: CascadeSpec, types: TensorTypes,
               source: DeviceSource | None = None) -> ChainPlan:
    """The copies and launches of one chain. ``device`` / ``host``: buffer addresses by the names
    of :meth:`SlotLayout.device_nbytes` / :meth:`SlotLayout.host_nbytes`; ``source``: the device
    frame when ``key.source == "device"``."""
    n, h, w = key.batch, key.height, key.width
    in_h, in_w = spec.detector_input_hw
    ch, cw = spec.crop_hw
    if key.source == "device":
        if source is None or (source.height, source.width) != (h, w) or n != 1:
            raise ValueError(f"a device-source chain needs one {h}x{w} DeviceSource, got {source}")
        upload = (Copy(device["frames"], w, source.ptr, source.pitch, w, h, "d2d"),)
    else:
        # Contiguous frames copied as n*h rows of w bytes, not one row of n*h*w: a 2D copy's
        # pitch may not exceed cudaDeviceProp::memPitch (cudaMemcpy2DAsync), which 32 frames of
        # 8192x8192 would.
        upload = (Copy(device["frames"], w, host["frames"], w, w, n * h, "h2d"),)
    detector_input = Launch(
        PREPROCESS_ENTRY_POINTS[types.image],
        preprocess_args(frames=device["frames"], out=device["image"], batch=n, width=w, height=h,
                        pitch=w, out_w=in_w, out_h=in_h, mean=spec.detector_mean,
                        std=spec.detector_std),
        preprocess_launch(n, in_w, in_h, per_crop=spec.detector_mean is None),
    )
    # The crop kernel turns the detector box into the host cascade's crop box on the device
    # (frame_box, expand_box by the margin, clamp_box: _preprocessing.crop_box's "detector" mode);
    # paste and the result use that same box.
    crop = Launch(
        PREPROCESS_ENTRY_POINTS[types.crop],
        preprocess_args(frames=device["frames"], out=device["crop"], batch=n, width=w, height=h,
                        pitch=w, out_w=cw, out_h=ch, mean=spec.crop_mean, std=spec.crop_std,
                        boxes=device["box"], box_stride=4, scale=(w / in_w, h / in_h),
                        crop_margin=spec.crop_margin, boxes_out=device["boxes_out"]),
        preprocess_launch(n, cw, ch, per_crop=spec.crop_mean is None),
    )
    paste = Launch(
        PASTE_ENTRY_POINTS[types.prob],
        paste_args(prob=device["prob"], boxes=device["boxes_out"], scores=device["score"],
                   masks=device["masks"], batch=n, width=w, height=h, pitch=w, crop_w=cw,
                   crop_h=ch, threshold=spec.mask_threshold,
                   score_threshold=spec.score_threshold),
        paste_launch(n, w, h),
    )
    download = (
        Copy(host["masks"], w, device["masks"], w, w, n * h, "d2h"),
        Copy(host["score"], n * 4, device["score"], n * 4, n * 4, 1, "d2h"),
        Copy(host["boxes"], n * 16, device["boxes_out"], n * 16, n * 16, 1, "d2h"),
    )
    return ChainPlan(key, upload, detector_input, crop, paste, download)


def engine_bindings(device: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Device address of every engine tensor, by engine: the buffers of the same names."""
    return {label: {name: device[name] for name in names} for label, names in ENGINE_TENSORS.items()}


class ChainOps(Protocol):
    """Where a chain is enqueued: a CUDA stream, or the host emulation in the tests."""

    def record(self, event_index: int) -> None: ...
    def copy(self, copy: Copy) -> None: ...
    def launch(self, launch: Launch) -> None: ...
    def run_engine(self, label: str) -> None: ...


def enqueue_upload(plan: ChainPlan, ops: ChainOps) -> None:
    """Events 0 and 1 around the upload copy."""
    ops.record(0)
    for copy in plan.upload:
        ops.copy(copy)
    ops.record(1)


def enqueue_compute(plan: ChainPlan, ops: ChainOps) -> None:
    """Everything after the upload, through the download and the last event (7)."""
    ops.launch(plan.detector_input)
    ops.record(2)
    ops.run_engine(DETECTOR)
    ops.record(3)
    ops.launch(plan.crop)
    ops.record(4)
    ops.run_engine(SEGMENTER)
    ops.record(5)
    ops.launch(plan.paste)
    ops.record(6)
    for copy in plan.download:
        ops.copy(copy)
    ops.record(7)


def read_results(key: ChainKey, masks: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                 spec: CascadeSpec, stage_ms: Mapping[str, float], host_ms: float) -> list[Result]:
    """Results from the downloaded buffers: ``masks`` uint8 (>= n*H*W,), ``scores`` float32
    (>= n,), ``boxes`` float32 (>= n, 4) frame-pixel crop boxes (the detector's, grown by the
    crop margin and clamped: the box the host cascade reports). Masks are copied out (the
    buffers are reused). Timings are per frame: a batch's stage times divided by its size.

    ``present`` is the paste kernel's rule: score >= threshold and a finite box. A non-finite
    detector box (the kernel cropped the whole frame and wrote NaN) is reported as the whole
    frame with ``present=False``, exactly as the host cascade does."""
    n, h, w = key.batch, key.height, key.width
    frames = np.array(masks[: n * h * w], copy=True).reshape(n, h, w)
    timings = {stage: float(ms) / n for stage, ms in stage_ms.items()}
    timings["total"] = host_ms / n
    results = []
    for i in range(n):
        score = float(scores[i])
        x0, y0, x1, y1 = (float(v) for v in boxes[i, :4])
        found = box_found((x0, y0, x1, y1))
        present = bool(score >= spec.score_threshold and found)
        box = (x0, y0, x1, y1) if found else full_frame_box((h, w))
        results.append(Result(frames[i], box, score, present, dict(timings)))
    return results
