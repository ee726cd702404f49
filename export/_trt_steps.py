"""The steps of a TensorRT engine build, each small and testable alone (Polygraphy style):
ONNX bytes -> strongly typed network -> builder config (+ batch profile, timing cache, progress)
-> serialized plan.

Every step takes the ``tensorrt`` module (or a test double) as ``trt``, typed by the
:class:`TensorRTApi` protocol, whose members are the real TensorRT classes: mypy checks each call
against ``tensorrt-stubs`` (tests/test_typecheck.py), so a misspelt method or a wrong argument
fails CI although TensorRT cannot be installed there.

TensorRT 10 vs 11 (the two differ here; nothing else used below changed):
- Precision comes from the ONNX, never from builder flags. TensorRT 11 removed ``BuilderFlag.FP16``
  / ``INT8`` (weak typing); "Removed Python APIs and Replacements",
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  So the fp16 engine is built from the mixed-precision FP16 ONNX, the fp32 one from the FP32 ONNX.
- ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is required in 10.x for that (10.x Builder page,
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Builder.html)
  and "deprecated ... always enabled ... retained for API compatibility but is ignored" in 11.0
  (https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html),
  so passing it serves both. ``EXPLICIT_BATCH`` is gone from 11.x and is never used.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    import tensorrt
    from tensorrt import IProgressMonitor as _MonitorBase
else:
    _MonitorBase = object


class TensorRTApi(Protocol):
    """The parts of the ``tensorrt`` module the build uses (the real module satisfies it)."""

    @property
    def Builder(self) -> type[tensorrt.Builder]: ...
    @property
    def Logger(self) -> type[tensorrt.Logger]: ...
    @property
    def OnnxParser(self) -> type[tensorrt.OnnxParser]: ...
    @property
    def NetworkDefinitionCreationFlag(self) -> type[tensorrt.NetworkDefinitionCreationFlag]: ...
    @property
    def MemoryPoolType(self) -> type[tensorrt.MemoryPoolType]: ...
    @property
    def IProgressMonitor(self) -> type[tensorrt.IProgressMonitor]: ...
    @property
    def Dims(self) -> type[tensorrt.Dims]: ...
    @property
    def BuilderFlag(self) -> type[tensorrt.BuilderFlag]: ...


if TYPE_CHECKING:
    _THE_REAL_MODULE_FITS: TensorRTApi = tensorrt  # mypy proves the protocol matches the stubs


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a network; the message says which file and why."""


@dataclass(frozen=True)
class ParsedNetwork:
    """A network and the parser that filled it: TensorRT's parser owns weight memory the network
    refers to, so both must live until the build is done."""

    network: tensorrt.INetworkDefinition
    parser: tensorrt.OnnxParser


@dataclass(frozen=True)
class InputShape:
    """A network input as TensorRT sees it; -1 marks a dynamic dimension."""

    name: str
    shape: tuple[int, ...]


def create_builder(trt: TensorRTApi) -> tuple[tensorrt.Builder, tensorrt.Logger]:
    """A builder and its logger (warnings and errors only)."""
    logger = trt.Logger(trt.Logger.WARNING)
    return trt.Builder(logger), logger


def strongly_typed_flags(trt: TensorRTApi) -> int:
    """``create_network`` flags for a strongly typed network. The member is read defensively:
    TensorRT 11 deprecated it (strong typing is always on, the flag "is retained for API
    compatibility but is ignored"), so a later version may drop it, and then no flag is needed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


#: What the engine's arithmetic is, by precision, as recorded in the manifest (``math``).
ENGINE_MATH: dict[str, str] = {
    "fp32": "fp32: IEEE fp32 everywhere (TF32 disabled)",
    "fp16": "fp16: as typed in the fp16 ONNX; its fp32 layers IEEE fp32 (TF32 disabled)",
    "int8": "int8: explicit quantisation where the symmetric QDQ ONNX has Q/DQ pairs; its other "
            "layers IEEE fp32 (TF32 disabled)",
}


def parse_onnx(
    trt: TensorRTApi,
    builder: tensorrt.Builder,
    logger: tensorrt.Logger,
    onnx: bytes,
    onnx_name: str,
) -> ParsedNetwork:
    """Parse ONNX bytes (already hash-checked by the caller) into a strongly typed network.

    ``onnx_name`` is the file's path, used for messages and for any external weights file beside
    it. Raises :class:`EngineBuildError` with the parser's errors.
    """
    network = builder.create_network(strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx, onnx_name):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT could not parse {onnx_name}: " + ("; ".join(errors) or "no parser message")
        )
    return ParsedNetwork(network=network, parser=parser)


def network_inputs(network: tensorrt.INetworkDefinition) -> list[InputShape]:
    """Names and shapes of the network's inputs, in order."""
    inputs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tensor.shape
        inputs.append(InputShape(tensor.name, tuple(int(dims[d]) for d in range(len(dims)))))
    return inputs


def check_inputs(
    inputs: Sequence[InputShape], expected_names: Sequence[str], onnx_name: str
) -> None:
    """The ONNX inputs must be the manifest's, with only the batch (first) dimension dynamic."""
    names = [i.name for i in inputs]
    if names != list(expected_names):
        raise EngineBuildError(
            f"{onnx_name} has inputs {names}, the manifest lists {list(expected_names)}: the "
            "bundle is inconsistent; re-export it"
        )
    for tensor in inputs:
        if not tensor.shape or tensor.shape[0] != -1:
            raise EngineBuildError(
                f"input {tensor.name!r} of {onnx_name} has shape {list(tensor.shape)} without a "
                "dynamic batch dimension: re-export the ONNX with a dynamic batch"
            )
        if any(d < 1 for d in tensor.shape[1:]):
            raise EngineBuildError(
                f"input {tensor.name!r} of {onnx_name} has shape {list(tensor.shape)}: only the "
                "batch dimension may be dynamic; re-export with fixed image sizes"
            )


def create_config(
    trt: TensorRTApi, builder: tensorrt.Builder, workspace_mb: int
) -> tensorrt.IBuilderConfig:
    """A builder config with the workspace pool capped at ``workspace_mb`` MiB. No precision
    flags: precision comes from the (strongly typed) network.

    TF32 is cleared: ``BuilderFlag.TF32`` is set by default and strongly typed networks honour
    it, so on Ampere and later the "fp32" engine's convolutions and matrix multiplies would run
    with a 10-bit mantissa (TensorRT Python API, ``IBuilderConfig`` / ``BuilderFlag.TF32``,
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/BuilderConfig.html;
    TF32 is not among the flags TensorRT 11 removed). :data:`ENGINE_MATH` says what runs."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.clear_flag(trt.BuilderFlag.TF32)
    return config


def add_batch_profile(
    trt: TensorRTApi,
    builder: tensorrt.Builder,
    config: tensorrt.IBuilderConfig,
    inputs: Sequence[InputShape],
    max_batch: int,
    opt_batch: int = 1,
) -> None:
    """One optimization profile: batch 1 .. ``max_batch``, tuned for ``opt_batch`` (1: a frame
    at a time, the latency case); other dimensions as in the network."""
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt_batch must be in [1, max_batch={max_batch}], got {opt_batch}")
    profile = builder.create_optimization_profile()
    for tensor in inputs:
        rest = list(tensor.shape[1:])
        profile.set_shape(
            tensor.name,
            trt.Dims([1, *rest]),
            trt.Dims([opt_batch, *rest]),
            trt.Dims([max_batch, *rest]),
        )
    config.add_optimization_profile(profile)


def attach_timing_cache(config: tensorrt.IBuilderConfig, serialized: bytes) -> bool:
    """Give the config a timing cache made from ``serialized`` (b"" for a new one).

    Returns False (and attaches a new, empty cache) when TensorRT refuses the given cache,
    e.g. one recorded on another GPU or TensorRT version, or a corrupted file: a timing cache
    only saves time, so it must never stop a build. See "Optimizing Builder Performance",
    https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/performance/builder-performance.html
    """
    if serialized:
        try:
            cache = config.create_timing_cache(serialized)
        except (RuntimeError, TypeError, ValueError):
            cache = None  # an unreadable cache is treated like a mismatched one: start anew
        if cache is not None and config.set_timing_cache(cache, False):
            return True
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return not serialized


def serialize_timing_cache(config: tensorrt.IBuilderConfig) -> bytes:
    """The config's timing cache, grown by the build, as bytes for the next build."""
    return bytes(config.get_timing_cache().serialize())


def build_serialized(
    builder: tensorrt.Builder,
    network: tensorrt.INetworkDefinition,
    config: tensorrt.IBuilderConfig,
    onnx_name: str,
) -> tuple[bytes, float]:
    """Build the plan: (plan bytes, seconds the build took)."""
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:  # TensorRT returns None (and logs why) when the build fails
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_name} (see the TensorRT errors above)"
        )
    data = bytes(plan)
    if not data:
        raise EngineBuildError(f"TensorRT built an empty engine from {onnx_name}")
    return data, seconds


# --- progress ---------------------------------------------------------------------------------


class BuildProgress:
    """TensorRT builder phases shown as nested progress bars (tqdm) on ``stream``.

    TensorRT reports phases (with a number of steps, possibly nested) from its own threads, so
    every method takes a lock ("The implementation of IProgressMonitor must be thread-safe",
    https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ProgressMonitor.html
    ). A failure of the display never stops the build: it is kept in :attr:`error` and the bars
    are switched off.
    """

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.error: BaseException | None = None
        self._stream = stream
        self._lock = threading.Lock()
        self._bars: dict[str, Any] = {}
        self._depth: dict[str, int] = {}

    def phase_start(self, name: str, parent: str | None, num_steps: int) -> None:
        with self._lock:
            self._guard(self._start, name, parent, num_steps)

    def step_complete(self, name: str, step: int) -> bool:
        with self._lock:
            self._guard(self._step, name, step)
        return True  # False would ask TensorRT to cancel the build

    def phase_finish(self, name: str) -> None:
        with self._lock:
            self._guard(self._finish, name)

    def close(self) -> None:
        with self._lock:
            for name in list(self._bars):
                self._guard(self._finish, name)

    def _guard(self, fn: Any, *args: Any) -> None:
        if self.error is not None:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a broken display must not kill a 10-minute build
            self.error = exc

    def _start(self, name: str, parent: str | None, num_steps: int) -> None:
        from tqdm import tqdm

        depth = self._depth.get(parent, -1) + 1 if parent else 0
        self._depth[name] = depth
        self._bars[name] = tqdm(
            total=max(int(num_steps), 1),
            desc=f"{self.label}: {name}",
            position=depth,
            leave=depth == 0,
            file=self._stream,
            dynamic_ncols=True,
        )

    def _step(self, name: str, step: int) -> None:
        bar = self._bars.get(name)
        if bar is not None:
            bar.update(max(step + 1 - bar.n, 0))

    def _finish(self, name: str) -> None:
        bar = self._bars.pop(name, None)
        self._depth.pop(name, None)
        if bar is not None:
            bar.close()


class _ProgressMonitorMethods(_MonitorBase):
    # The methods of our trt.IProgressMonitor subclass. Type-checked against the stubs' base
    # class; at run time the class is combined with the real base in make_progress_monitor.
    def __init__(self, progress: BuildProgress) -> None:
        super().__init__()  # the real base's __init__ must run (pybind11 trampoline)
        self._progress = progress

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self._progress.phase_start(phase_name, parent_phase, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        return self._progress.step_complete(phase_name, step)

    def phase_finish(self, phase_name: str) -> None:
        self._progress.phase_finish(phase_name)


def attach_progress(
    trt: TensorRTApi, config: tensorrt.IBuilderConfig, progress: BuildProgress
) -> tensorrt.IProgressMonitor:
    """Report the build's phases to ``progress``. Keep the returned monitor referenced until the
    build ends: TensorRT requires it to outlive the objects that use it."""
    cls = types.new_class("BpedgeProgressMonitor", (_ProgressMonitorMethods, trt.IProgressMonitor))
    monitor = cast("tensorrt.IProgressMonitor", cls(progress))
    config.progress_monitor = monitor
    return monitor
