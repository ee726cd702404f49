"""The GPU cascade's chain run without a GPU: the same plan (buffer layout, addresses, strides,
scales, entry points, enqueue order) that a slot enqueues on a CUDA stream, enqueued here on NumPy
buffers, with the real kernels under host emulation and NumPy stand-ins for the two engines, and
compared frame by frame with the reference stages of the host cascade."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from bpedge.kernels._launch_args import PreprocessArgs, paste_launch, preprocess_launch

from bpedge import _stages
from bpedge._cascade import detector_input, frame_box, segmenter_input
from bpedge._cascade_spec import CascadeSpec
from bpedge._gpu._chain import (
    N_EVENTS,
    STAGES,
    ChainKey,
    Copy,
    DeviceSource,
    Launch,
    SlotLayout,
    TensorTypes,
    engine_bindings,
    enqueue_compute,
    enqueue_upload,
    expected_tensors,
    plan_chain,
    read_results,
)
from bpedge._metrics import dice

SPEC = CascadeSpec(
    detector_input_hw=(24, 32), detector_mean=100.0, detector_std=50.0,
    crop_hw=(16, 20), crop_mean=None, crop_std=None, score_threshold=0.5, mask_threshold=0.5,
)
GUARD = 64
GUARD_BYTE = 0xAB
F32, F16 = TensorTypes(), TensorTypes("float16", "float16", "float16")


@pytest.fixture(scope="module")
def host_library() -> ctypes.CDLL:
    from bpedge.kernels import CompilerNotFoundError, load_host_library

    try:
        return load_host_library()
    except CompilerNotFoundError as exc:
        pytest.skip(f"needs a C++20 compiler for the kernel host emulation: {exc}")


# --- NumPy stand-ins for the engines (used by both the chain and the reference) ----------------


def fake_detector(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) -> score (N,), box (N, 4) in detector-input px: a box around the softmax-weighted
    centroid of the input (smooth in the input, partly outside the frame for bright edges) and a
    score from the mean brightness."""
    x = image.astype(np.float64)[:, 0]
    _, h, w = x.shape
    weights = np.exp(2.0 * x)
    weights /= weights.sum(axis=(1, 2), keepdims=True)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    cx = (weights * xs).sum(axis=(1, 2))
    cy = (weights * ys).sum(axis=(1, 2))
    box = np.stack([cx - 0.3 * w, cy - 0.25 * h, cx + 0.35 * w, cy + 0.3 * h], axis=1)
    score = 1.0 / (1.0 + np.exp(-3.0 * x.mean(axis=(1, 2))))
    return score.astype(np.float32), box.astype(np.float32)


def fake_segmenter(crop: np.ndarray) -> np.ndarray:
    """(N, 1, h, w) -> probability (N, 1, h, w): brighter-than-average crop pixels are BP."""
    x = crop.astype(np.float64)
    return (1.0 / (1.0 + np.exp(-2.0 * x + 0.3))).astype(np.float32)


# --- the emulated slot ---------------------------------------------------------------------------


class EmulatedSlot:
    """NumPy buffers laid out by SlotLayout (plus poisoned guard bytes) and ChainOps that run the
    kernels' host emulation and the stand-in engines on them."""

    def __init__(self, library: ctypes.CDLL, layout: SlotLayout, spec: CascadeSpec = SPEC) -> None:
        self.library = library
        self.layout = layout
        self.spec = spec
        self.raw = {}
        for side, sizes in (("device", layout.device_nbytes()), ("host", layout.host_nbytes())):
            for name, size in sizes.items():
                buf = np.full(size + GUARD, GUARD_BYTE, np.uint8)
                self.raw[side, name] = buf
        self.device = {n: self.raw["device", n].ctypes.data for n in layout.device_nbytes()}
        self.host = {n: self.raw["host", n].ctypes.data for n in layout.host_nbytes()}
        self.events: list[int] = []
        self.key: ChainKey | None = None

    def array(self, side: str, name: str, dtype: str | type, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return self.raw[side, name][:-GUARD].view(dtype)[:count].reshape(shape)

    def guards_intact(self) -> bool:
        return all((buf[-GUARD:] == GUARD_BYTE).all() for buf in self.raw.values())

    # ChainOps
    def record(self, event_index: int) -> None:
        self.events.append(event_index)

    def copy(self, copy: Copy) -> None:
        assert copy.kind in ("h2d", "d2h", "d2d")
        for row in range(copy.rows):
            ctypes.memmove(copy.dst + row * copy.dst_pitch, copy.src + row * copy.src_pitch,
                           copy.row_bytes)

    def launch(self, launch: Launch) -> None:
        dims = ctypes.c_uint * 3
        grid, block = dims(*launch.shape.grid), dims(*launch.shape.block)
        flag = 1 if launch.entry_point.endswith("_f16") else 0
        if isinstance(launch.args, PreprocessArgs):
            rc = self.library.bp_host_preprocess(ctypes.byref(launch.args), flag, grid, block)
        else:
            rc = self.library.bp_host_paste(ctypes.byref(launch.args), flag, grid, block)
        assert rc == 0, f"emulated launch of {launch.entry_point} refused"

    def run_engine(self, label: str) -> None:
        n = self.key.batch
        types = self.layout.types
        if label == "detector":
            image = self.array("device", "image", types.image, (n, 1, *self.spec.detector_input_hw))
            score, box = fake_detector(image)
            self.array("device", "score", np.float32, (n,))[...] = score
            self.array("device", "box", np.float32, (n, 4))[...] = box
        else:
            crop = self.array("device", "crop", types.crop, (n, 1, *self.spec.crop_hw))
            prob = self.array("device", "prob", types.prob, (n, 1, *self.spec.crop_hw))
            prob[...] = fake_segmenter(crop).astype(types.prob)

    def run(self, greys: list[np.ndarray], source: DeviceSource | None = None):
        h, w = greys[0].shape
        self.key = ChainKey(len(greys), h, w, "device" if source else "host")
        if source is None:
            staged = self.array("host", "frames", np.uint8, (len(greys), h, w))
            staged[...] = np.stack(greys)
        plan = plan_chain(self.key, self.device, self.host, self.spec, self.layout.types, source)
        enqueue_upload(plan, self)
        enqueue_compute(plan, self)
        n = len(greys)
        return read_results(
            self.key, self.array("host", "masks", np.uint8, (n * h * w,)),
            self.array("host", "score", np.float32, (n,)),
            self.array("host", "boxes", np.float32, (n, 4)), self.spec,
            dict.fromkeys(STAGES, 0.5), host_ms=2.0,
        )


def reference(grey: np.ndarray):
    """The host cascade's stages with the same stand-in engines: (mask, box, score, present,
    pasted probability)."""
    score, raw_box = fake_detector(detector_input(grey, SPEC)[None])
    box = frame_box(raw_box[0], grey.shape, SPEC)
    prob = fake_segmenter(segmenter_input(grey, box, SPEC)[None])[0, 0]
    present = float(score[0]) >= SPEC.score_threshold
    h, w = grey.shape
    mask = _stages.paste_back(prob, box, w, h, SPEC.mask_threshold, present)
    return mask, box, float(score[0]), present, _stages.paste_probability(prob, box, w, h)


def frames(rng: np.random.Generator, n: int, h: int, w: int) -> list[np.ndarray]:
    """Speckled frames with a bright blob at a different place each, and different brightness
    (so some are judged present and some not)."""
    out = []
    ys, xs = np.mgrid[0:h, 0:w]
    for i in range(n):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.05, 0.95) * w
        blob = 120 * np.exp(-(((xs - cx) / (0.15 * w)) ** 2 + ((ys - cy) / (0.2 * h)) ** 2))
        base = 60 + 50 * i + rng.normal(0, 12, (h, w))
        out.append(np.clip(base + blob, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("n, h, w", [(1, 37, 53), (3, 30, 41)])
def test_fp32_chain_matches_the_reference_cascade_frame_by_frame(host_library, n, h, w):
    rng = np.random.default_rng(n * 100 + h)
    greys = frames(rng, n, h, w)
    slot = EmulatedSlot(host_library, SlotLayout(4, h * w, SPEC.detector_input_hw, SPEC.crop_hw, F32))
    results = slot.run(greys)
    assert slot.events == list(range(N_EVENTS))
    assert slot.guards_intact(), "a kernel or copy wrote outside the buffer sizes of SlotLayout"
    presents = []
    for grey, result in zip(greys, results):
        mask, box, score, present, pasted = reference(grey)
        assert result.score == pytest.approx(score, abs=1e-5)
        assert result.present == present
        np.testing.assert_allclose(result.box, box, atol=1e-3)
        assert result.mask.shape == grey.shape and result.mask.dtype == np.uint8
        differ = result.mask != mask
        # Only pixels whose reference probability sits at the threshold may flip.
        assert not (differ & (np.abs(pasted - SPEC.mask_threshold) > 1e-3)).any()
        presents.append(present)
    if n > 1:
        assert len(set(presents)) == 2, "the test frames should include present and absent ones"


def test_fp16_chain_agrees_with_the_reference_within_half_precision(host_library):
    rng = np.random.default_rng(7)
    greys = frames(rng, 2, 33, 47)
    slot = EmulatedSlot(host_library, SlotLayout(2, 33 * 47, SPEC.detector_input_hw, SPEC.crop_hw, F16))
    results = slot.run(greys)
    assert slot.guards_intact()
    for grey, result in zip(greys, results):
        mask, box, score, present, _ = reference(grey)
        assert result.score == pytest.approx(score, abs=2e-3)
        np.testing.assert_allclose(result.box, box, atol=0.5)
        if present:
            assert dice(result.mask > 0, mask > 0) > 0.95


def test_device_source_copies_a_pitched_frame_and_gives_the_same_result(host_library):
    rng = np.random.default_rng(3)
    (grey,) = frames(rng, 1, 29, 45)
    pitched = np.zeros((29, 64), np.uint8)
    pitched[:, :45] = grey
    layout = SlotLayout(1, 29 * 45, SPEC.detector_input_hw, SPEC.crop_hw, F32)
    from_host = EmulatedSlot(host_library, layout).run([grey])[0]
    slot = EmulatedSlot(host_library, layout)
    from_device = slot.run([grey], DeviceSource(pitched.ctypes.data, 29, 45, 64))[0]
    assert slot.guards_intact()
    np.testing.assert_array_equal(from_device.mask, from_host.mask)
    assert from_device.box == from_host.box and from_device.score == from_host.score


def test_plan_passes_the_launch_contract_the_kernels_expect():
    layout = SlotLayout(4, 100 * 120, SPEC.detector_input_hw, SPEC.crop_hw,
                        TensorTypes("float16", "float32", "float16"))
    device = {name: 0x10000 * (i + 1) for i, name in enumerate(layout.device_nbytes())}
    host = {name: 0x900000 * (i + 1) for i, name in enumerate(layout.host_nbytes())}
    plan = plan_chain(ChainKey(3, 100, 120), device, host, SPEC, layout.types)
    det, crop, paste = plan.detector_input, plan.crop, plan.paste
    assert det.entry_point == "bp_preprocess_f16" and crop.entry_point == "bp_preprocess_f32"
    assert paste.entry_point == "bp_paste_f16"
    assert (det.args.frames, det.args.out, det.args.boxes) == (device["frames"], device["image"], None)
    assert (det.args.per_crop, det.args.mean, det.args.stddev) == (0, 100.0, 50.0)
    assert (det.args.out_w, det.args.out_h, det.args.pitch, det.args.batch) == (32, 24, 120, 3)
    assert (crop.args.boxes, crop.args.box_stride, crop.args.boxes_out) == (
        device["box"], 4, device["boxes_out"])
    assert (crop.args.scale_x, crop.args.scale_y) == (120 / 32, 100 / 24)
    assert crop.args.per_crop == 1 and (crop.args.out_w, crop.args.out_h) == (20, 16)
    assert (paste.args.prob, paste.args.boxes, paste.args.scores, paste.args.masks) == (
        device["prob"], device["boxes_out"], device["score"], device["masks"])
    assert (paste.args.threshold, paste.args.score_threshold) == (0.5, 0.5)
    assert (paste.args.crop_w, paste.args.crop_h, paste.args.score_stride) == (20, 16, 1)
    assert det.shape == preprocess_launch(3, 32, 24, per_crop=False)
    assert crop.shape == preprocess_launch(3, 20, 16, per_crop=True)
    assert paste.shape == paste_launch(3, 120, 100)
    # n*h rows of w bytes: a 2D copy's pitch stays a row's width (cudaDeviceProp::memPitch)
    assert plan.upload == (Copy(device["frames"], 120, host["frames"], 120, 120, 300, "h2d"),)
    assert all(c.dst_pitch <= 120 and c.src_pitch <= 120 for c in plan.download)
    assert {c.src for c in plan.download} == {device["masks"], device["score"], device["boxes_out"]}
    bindings = engine_bindings(device)
    assert bindings["detector"] == {"image": device["image"], "score": device["score"],
                                    "box": device["box"]}
    assert set(bindings["segmenter"]) == set(expected_tensors(SPEC)["segmenter"])


def test_layout_sizes_follow_batch_frame_and_tensor_types():
    f32 = SlotLayout(2, 1000, (24, 32), (16, 20), F32)
    f16 = SlotLayout(2, 1000, (24, 32), (16, 20), F16)
    assert f32.device_nbytes()["image"] == 2 * 24 * 32 * 4
    assert f16.device_nbytes()["image"] == 2 * 24 * 32 * 2
    assert f16.device_nbytes()["prob"] == 2 * 16 * 20 * 2
    assert f32.device_nbytes()["frames"] == f32.host_nbytes()["masks"] == 2000
    assert f32.host_nbytes()["boxes"] == 2 * 16
    assert f32.fits(2, 25, 40) and not f32.fits(3, 10, 10) and not f32.fits(1, 30, 40)
    with pytest.raises(ValueError, match="float32 or float16"):
        TensorTypes(image="int8")


def test_device_source_plan_needs_one_frame_of_the_key_size():
    layout = SlotLayout(2, 1000, (24, 32), (16, 20), F32)
    device = dict.fromkeys(layout.device_nbytes(), 4096)
    host = dict.fromkeys(layout.host_nbytes(), 8192)
    with pytest.raises(ValueError, match="DeviceSource"):
        plan_chain(ChainKey(1, 20, 30, "device"), device, host, SPEC, F32, None)
    with pytest.raises(ValueError, match="DeviceSource"):
        plan_chain(ChainKey(1, 20, 30, "device"), device, host, SPEC, F32,
                   DeviceSource(1 << 20, 20, 31, 32))


def test_read_results_divides_batch_timings_and_flags_non_finite_boxes():
    key = ChainKey(2, 3, 4)
    masks = np.arange(24, dtype=np.uint8)
    scores = np.array([0.9, 0.8], np.float32)
    boxes = np.array([[0, 0, 2, 2], [np.nan, np.nan, np.nan, np.nan]], np.float32)
    results = read_results(key, masks, scores, boxes, SPEC, {"detector": 4.0}, host_ms=10.0)
    assert results[0].present and not results[1].present
    assert results[0].timings == {"detector": 2.0, "total": 5.0}
    np.testing.assert_array_equal(results[1].mask, np.arange(12, 24).reshape(3, 4))
    masks[:] = 0
    assert results[1].mask.any(), "masks must be copies, not views of the reused buffer"


@pytest.mark.parametrize("margin", [0.1, 0.25])
def test_a_crop_margin_chain_matches_the_host_cascade_frame_by_frame(host_library, margin):
    """The real HostCascade (crop_box with the margin) with the same stand-in engines: the chain
    crops, pastes into and reports the same grown and clamped box."""
    from dataclasses import replace

    from bpedge._cascade import HostCascade

    spec = replace(SPEC, crop_margin=margin)
    host = HostCascade(lambda x: fake_detector(x), lambda c: fake_segmenter(c), spec)
    rng = np.random.default_rng(int(margin * 100))
    greys = frames(rng, 3, 30, 41)
    slot = EmulatedSlot(host_library, SlotLayout(4, 30 * 41, spec.detector_input_hw, spec.crop_hw,
                                                 F32), spec)
    results = slot.run(greys)
    assert slot.guards_intact()
    plain = EmulatedSlot(host_library, SlotLayout(4, 30 * 41, SPEC.detector_input_hw,
                                                  SPEC.crop_hw, F32)).run(greys)
    for result, want, unexpanded in zip(results, host.run_batch(greys), plain):
        np.testing.assert_allclose(result.box, want.box, rtol=0, atol=1e-3)
        assert result.score == pytest.approx(want.score, abs=1e-5)
        assert result.present == want.present
        if want.present:
            assert dice(result.mask > 0, want.mask > 0) > 0.99
        assert (np.array(result.box[:2]) <= np.array(unexpanded.box[:2])).all()
        assert (np.array(result.box[2:]) >= np.array(unexpanded.box[2:])).all()
        assert result.box != unexpanded.box, "the margin grew no side of this box"


def test_plan_passes_the_crop_margin_to_the_crop_kernel_only():
    from dataclasses import replace

    layout = SlotLayout(1, 40 * 50, SPEC.detector_input_hw, SPEC.crop_hw, F32)
    device = {name: 0x10000 * (i + 1) for i, name in enumerate(layout.device_nbytes())}
    host = {name: 0x900000 * (i + 1) for i, name in enumerate(layout.host_nbytes())}
    plan = plan_chain(ChainKey(1, 40, 50), device, host, replace(SPEC, crop_margin=0.2), F32)
    assert plan.crop.args.crop_margin == 0.2
    assert plan.detector_input.args.crop_margin == 0.0
