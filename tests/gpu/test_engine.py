"""TensorRT at run time (bpedge._gpu._engine) with stand-in engines and contexts: the I/O table,
the checks against what the cascade needs, and checked context calls. TensorRT itself is absent
here (the tensorrt-stubs package only), which the runtime must say."""

from __future__ import annotations

import types

import numpy as np
import pytest

from bpedge._cascade_spec import CascadeSpec
from bpedge._engine_key import TargetUnavailable
from bpedge._gpu._chain import expected_tensors
from bpedge._gpu._engine import (
    TensorRTError,
    TrtEngine,
    TrtRuntime,
    check_io,
    io_table,
)

SPEC = CascadeSpec(detector_input_hw=(256, 352), detector_mean=None, detector_std=None,
                   crop_hw=(96, 96), crop_mean=None, crop_std=None, score_threshold=0.5,
                   mask_threshold=0.5)


def named(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name)


class FakeEngine:
    """The ICudaEngine methods the runtime reads; tensors are (name, mode, dtype, shape)."""

    def __init__(self, tensors, max_batch: int = 8) -> None:
        self.tensors = tensors
        self.max_batch = max_batch
        self.contexts: list[FakeContext] = []
        self.refuse_context = False

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0]

    def _find(self, name: str):
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name: str):
        return named(self._find(name)[1])

    def get_tensor_dtype(self, name: str):
        return named(self._find(name)[2])

    def get_tensor_shape(self, name: str):
        return self._find(name)[3]  # a tuple has len() and [i], like Dims

    def get_tensor_profile_shape(self, name: str, profile: int):
        item = self._find(name)[3][1:]
        return [(1, *item), (1, *item), (self.max_batch, *item)]

    def create_execution_context(self):
        if self.refuse_context:
            return None
        self.contexts.append(FakeContext())
        return self.contexts[-1]


class FakeContext:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse: set[str] = set()

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, shape))
        return "set_input_shape" not in self.refuse

    def set_tensor_address(self, name, address):
        self.calls.append(("set_tensor_address", name, address))
        return "set_tensor_address" not in self.refuse

    def execute_async_v3(self, stream):
        self.calls.append(("execute_async_v3", stream))
        return "execute_async_v3" not in self.refuse


def detector(image_dtype="FLOAT", score=("score", "OUTPUT", "FLOAT", (-1,))):
    return FakeEngine([("image", "INPUT", image_dtype, (-1, 1, 256, 352)), score,
                       ("box", "OUTPUT", "FLOAT", (-1, 4))])


def segmenter(dtype="HALF"):
    return FakeEngine([("crop", "INPUT", dtype, (-1, 1, 96, 96)),
                       ("prob", "OUTPUT", dtype, (-1, 1, 96, 96))])


def test_io_table_reads_names_roles_dtypes_and_shapes():
    table = io_table(segmenter("HALF"), "segmenter")
    assert list(table) == ["crop", "prob"]
    crop = table["crop"]
    assert crop.is_input and crop.dtype == np.float16 and crop.shape == (-1, 1, 96, 96)
    assert crop.item_shape == (1, 96, 96) and crop.item_nbytes() == 96 * 96 * 2
    assert not table["prob"].is_input


def test_io_table_refuses_dtypes_the_kernels_cannot_handle():
    engine = FakeEngine([("image", "INPUT", "INT64", (-1, 1, 8, 8))])
    with pytest.raises(TensorRTError, match="'image' is INT64.*FLOAT and HALF"):
        io_table(engine, "detector")


def test_engines_of_an_export_fit_the_cascade():
    expected = expected_tensors(SPEC)
    check_io(io_table(detector(), "detector"), expected["detector"], "detector")
    check_io(io_table(detector("HALF"), "detector"), expected["detector"], "detector")
    check_io(io_table(segmenter("HALF"), "segmenter"), expected["segmenter"], "segmenter")
    scalar_column = ("score", "OUTPUT", "FLOAT", (-1, 1))  # (N, 1) holds one value per item too
    check_io(io_table(detector(score=scalar_column), "detector"), expected["detector"], "detector")


@pytest.mark.parametrize("engine, message", [
    (FakeEngine([("image", "INPUT", "FLOAT", (-1, 1, 256, 352))]), "no output 'score'"),
    (detector(score=("score", "INPUT", "FLOAT", (-1,))), "'score' is not an output"),
    (detector(score=("score", "OUTPUT", "FLOAT", (1,))), "dynamic batch dimension"),
    (detector(score=("score", "OUTPUT", "HALF", (-1,))), "'score' is float16.*float32 there"),
    (detector(score=("score", "OUTPUT", "FLOAT", (-1, 2))), "2 values per item, expected 1"),
    (FakeEngine([("image", "INPUT", "FLOAT", (-1, 1, 256, 352)),
                 ("score", "OUTPUT", "FLOAT", (-1,)), ("box", "OUTPUT", "FLOAT", (-1, 4)),
                 ("logits", "OUTPUT", "FLOAT", (-1, 9))]), r"does not use: \['logits'\]"),
    (FakeEngine([("image", "INPUT", "FLOAT", (-1, 1, 224, 352)),
                 ("score", "OUTPUT", "FLOAT", (-1,)), ("box", "OUTPUT", "FLOAT", (-1, 4))]),
     r"item shape \(1, 224, 352\), the bundle says \(1, 256, 352\)"),
])
def test_an_engine_that_does_not_fit_is_refused_naming_the_tensor(engine, message):
    with pytest.raises(TensorRTError, match=message):
        check_io(io_table(engine, "detector"), expected_tensors(SPEC)["detector"], "detector")


def make_context(engine=None):
    engine = engine or segmenter()
    trt_engine = TrtEngine(engine, runtime=None, label="segmenter")  # type: ignore[arg-type]
    return trt_engine, trt_engine.create_context(), engine.contexts[-1]


def test_shapes_and_addresses_are_sent_only_when_they_change():
    _, context, fake = make_context()
    assert context.set_batch(2) is True
    assert context.set_batch(2) is False
    assert context.set_batch(3) is True
    assert [c for c in fake.calls if c[0] == "set_input_shape"] == [
        ("set_input_shape", "crop", (2, 1, 96, 96)), ("set_input_shape", "crop", (3, 1, 96, 96))]
    context.bind({"crop": 0x100, "prob": 0x200})
    context.bind({"crop": 0x100, "prob": 0x300})
    assert [c for c in fake.calls if c[0] == "set_tensor_address"] == [
        ("set_tensor_address", "crop", 0x100), ("set_tensor_address", "prob", 0x200),
        ("set_tensor_address", "prob", 0x300)]
    context.execute(0xABC)
    assert fake.calls[-1] == ("execute_async_v3", 0xABC)


@pytest.mark.parametrize("call, action, message", [
    ("set_input_shape", lambda c: c.set_batch(9), r"set_input_shape\('crop', \(9, 1, 96, 96\)\)"),
    ("set_tensor_address", lambda c: c.bind({"crop": 1, "prob": 2}), r"set_tensor_address\('crop'\)"),
    ("execute_async_v3", lambda c: c.execute(5), "execute_async_v3 failed for the segmenter"),
])
def test_a_refused_context_call_raises_naming_the_call(call, action, message):
    _, context, fake = make_context()
    fake.refuse.add(call)
    with pytest.raises(TensorRTError, match=message):
        action(context)


def test_every_tensor_needs_an_address():
    _, context, _ = make_context()
    with pytest.raises(ValueError, match=r"tensors \['prob'\]"):
        context.bind({"crop": 1})


def test_close_drops_contexts_then_the_engine():
    engine, context, _ = make_context()
    assert engine.profile_max_batch("crop") == 8
    engine.close()
    with pytest.raises(RuntimeError, match="context was closed"):
        context.execute(1)
    with pytest.raises(RuntimeError, match="engine was closed"):
        engine.create_context()


def test_a_context_that_cannot_be_created_is_an_error():
    fake = segmenter()
    fake.refuse_context = True
    engine = TrtEngine(fake, runtime=None, label="segmenter")  # type: ignore[arg-type]
    with pytest.raises(TensorRTError, match="create_execution_context returned None"):
        engine.create_context()


@pytest.mark.usefixtures("without_gpu_tensorrt")
def test_the_runtime_says_tensorrt_is_missing_when_only_the_stubs_are_installed():
    with pytest.raises(TargetUnavailable, match="TensorRT is not installed"):
        TrtRuntime()

