"""One in-flight frame (or batch) of the GPU cascade: a slot with its own stream, events, pinned
and device buffers, an execution context per engine, and its CUDA graphs; plus the two pieces of
pure logic around it, the graph cache and the in-order slot ring.

CUDA graphs. Sources: the TensorRT developer guide's "CUDA Graphs" section (linked by the
TensorRT maintainers in NVIDIA/TensorRT#2112 as
https://docs.nvidia.com/deeplearning/tensorrt/developer-guide/index.html#cuda-graphs; in the
10.x/11.x docs it is part of performance/optimization.html), and trtexec's capture in
``samples/common/sampleInference.cpp``, whose comment reads "Avoid capturing initialization calls
by executing the enqueue function at least once before starting CUDA graph capture", followed by a
stream synchronize, and which falls back to plain enqueues when the capture fails ("the built TRT
engine may contain operations that are not permitted under CUDA graph capture mode"). Here: a
chain key runs eagerly the first time (that run is the warm-up, and its frame's result; the slot
is synchronised when the result is collected), and is captured the next time; a key whose capture
fails runs eagerly from then on. A captured enqueue is only valid for the shapes it was captured
with, so when a slot's contexts change shape (another batch size) its graphs are dropped and its
keys warmed up again; frame sizes at one batch size only change kernel arguments and keep their
graphs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._gpu._chain import (
    N_EVENTS,
    STAGES,
    ChainKey,
    ChainPlan,
    Copy,
    DeviceSource,
    Launch,
    SlotLayout,
    engine_bindings,
    enqueue_compute,
    enqueue_upload,
    plan_chain,
    read_results,
)
from bpedge._gpu._cuda import (
    DeviceBuffer,
    Event,
    GraphCaptureError,
    GraphExec,
    PinnedBuffer,
    Stream,
    bind_device,
    capture_graph,
    copy_2d_async,
    runtime_api,
)
from bpedge._gpu._engine import EngineContext, TrtEngine
from bpedge._gpu._kernels import CascadeKernels
from bpedge._result import Result

_log = logging.getLogger("bpedge")

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")


def in_order(items: Iterable[T], depth: int, submit: Callable[[T, int], P],
             collect: Callable[[P], R], abandon: Callable[[P], None]) -> Iterator[R]:
    """Keep up to ``depth`` items in flight on slots ``0 .. depth-1`` and yield their results in
    input order. ``submit(item, slot)`` enqueues and returns a ticket, ``collect(ticket)`` waits
    for it; slot ``k`` is reused only after its previous ticket was collected. Tickets still in
    flight when the consumer stops (or an error escapes) are ``abandon``-ed: waited for, dropped."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    pending: deque[P] = deque()
    try:
        for i, item in enumerate(items):
            if len(pending) == depth:
                yield collect(pending.popleft())
            pending.append(submit(item, i % depth))
        while pending:
            yield collect(pending.popleft())
    finally:
        while pending:
            abandon(pending.popleft())


class Replayable(Protocol):
    def launch(self) -> None: ...
    def free(self) -> None: ...


_WARM = "warm"


class GraphCache:
    """A slot's executable graphs by :class:`ChainKey`, least recently used evicted beyond
    ``capacity``. ``capture(enqueue)`` captures and instantiates (raising
    :class:`GraphCaptureError` when it cannot); ``enabled=False`` runs everything eagerly."""

    def __init__(self, capacity: int, capture: Callable[[Callable[[], None]], Replayable],
                 enabled: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.enabled = enabled
        self._capture = capture
        # A key maps to its graph, or to _WARM: enqueued eagerly since the shapes last changed.
        self._entries: OrderedDict[ChainKey, Replayable | str] = OrderedDict()
        self._refused: set[ChainKey] = set()  # capture failed once: always eager, warn once

    def run(self, key: ChainKey, enqueue: Callable[[], None], shapes_changed: bool) -> str:
        """Run ``key``'s chain: replay its graph (``"graph"``), capture then replay it
        (``"captured"``) or enqueue it directly (``"eager"``). Returns which.
        ``shapes_changed``: the engines' input shapes (or tensor addresses) were just changed, so
        every graph and warm-up of this slot is void."""
        if shapes_changed:
            self.clear()
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        if entry is not None and not isinstance(entry, str):
            entry.launch()
            return "graph"
        if entry == _WARM and self.enabled and key not in self._refused:
            try:
                graph = self._capture(enqueue)
            except GraphCaptureError as exc:
                _log.warning("bpedge: running %s without a CUDA graph: %s", key, exc)
                self._refused.add(key)
            else:
                self._entries[key] = graph
                graph.launch()
                return "captured"
        enqueue()
        if entry is None:
            self._entries[key] = _WARM
            self._evict()
        return "eager"

    def keys(self) -> list[ChainKey]:
        return list(self._entries)

    def graphs(self) -> int:
        return sum(not isinstance(e, str) for e in self._entries.values())

    def _evict(self) -> None:
        while len(self._entries) > self.capacity:
            _, entry = self._entries.popitem(last=False)
            if not isinstance(entry, str):
                entry.free()

    def clear(self) -> None:
        """Free every graph and forget every warm-up (shapes or buffer addresses changed, or the
        slot closes)."""
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            if not isinstance(entry, str):
                entry.free()


class _BoundGraph:
    def __init__(self, graph: GraphExec, stream: Stream) -> None:
        self._graph = graph
        self._stream = stream

    def launch(self) -> None:
        self._graph.launch(self._stream)

    def free(self) -> None:
        self._graph.free()


class FrameSlot:
    """Everything one in-flight batch needs; enqueues its chain on its own stream
    (:class:`._chain.ChainOps`) and is not touched again until :meth:`collect`."""

    def __init__(self, layout: SlotLayout, spec: CascadeSpec, kernels: CascadeKernels,
                 engines: Mapping[str, TrtEngine], graph_capacity: int = 4,
                 use_graphs: bool = True, device: int = 0) -> None:
        self.spec = spec
        # Every submit and close binds it: the caller's thread may have another device current
        # (or none), and kernels, engines and streams only work on their own device.
        self.cuda_device = device
        self._kernels = kernels
        self._pending: tuple[ChainKey, float] | None = None
        self._stack = contextlib.ExitStack()
        self._buffers = contextlib.ExitStack()
        try:
            self.stream: Stream = self._stack.enter_context(Stream())
            # The last event is the one the host waits on: let the thread sleep there.
            self.events = [self._stack.enter_context(Event(blocking=i == N_EVENTS - 1))
                           for i in range(N_EVENTS)]
            self._producer_event = self._stack.enter_context(Event())
            self.contexts: dict[str, EngineContext] = {}
            for label, engine in engines.items():
                self.contexts[label] = engine.create_context()
                self._stack.callback(self.contexts[label].close)
            # Unwound in reverse: graphs, then the buffers they use, then the contexts.
            self._stack.callback(self._free_buffers)
            self.graphs = GraphCache(graph_capacity, self._capture, enabled=use_graphs)
            self._stack.callback(self.graphs.clear)
            self._allocate(layout)
        except BaseException:
            self._stack.close()
            raise

    # --- buffers ----------------------------------------------------------------------------

    def _free_buffers(self) -> None:
        buffers, self._buffers = self._buffers, contextlib.ExitStack()
        buffers.close()

    def _allocate(self, layout: SlotLayout) -> None:
        self.graphs.clear()
        self._free_buffers()
        self.layout = layout
        self._rebound = True  # new tensor addresses: the contexts must be enqueued before capture
        device = {name: self._buffers.enter_context(DeviceBuffer(size))
                  for name, size in layout.device_nbytes().items()}
        pinned = {name: self._buffers.enter_context(PinnedBuffer(size))
                  for name, size in layout.host_nbytes().items()}
        self.device = {name: buf.ptr for name, buf in device.items()}
        self.host = {name: buf.ptr for name, buf in pinned.items()}
        b, px = layout.max_batch, layout.max_pixels
        self._frames_in = pinned["frames"].view(np.uint8, (b * px,))
        self._masks_out = pinned["masks"].view(np.uint8, (b * px,))
        self._scores_out = pinned["score"].view(np.float32, (b,))
        self._boxes_out = pinned["boxes"].view(np.float32, (b, 4))
        for label, addresses in engine_bindings(self.device).items():
            self.contexts[label].bind(addresses)

    def _ensure(self, key: ChainKey) -> None:
        if not self.layout.fits(key.batch, key.height, key.width):
            grown = SlotLayout(self.layout.max_batch,
                               max(self.layout.max_pixels, key.height * key.width),
                               self.layout.detector_hw, self.layout.crop_hw, self.layout.types)
            if key.batch > grown.max_batch:
                raise ValueError(f"batch {key.batch} exceeds this cascade's max_batch "
                                 f"{grown.max_batch}")
            self._allocate(grown)

    # --- submitting and collecting -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit_host(self, greys: Sequence[np.ndarray]) -> FrameSlot:
        """Enqueue the chain for equal-sized uint8 (H, W) host frames (at most max_batch)."""
        self._check_idle()
        start = time.perf_counter()
        bind_device(self.cuda_device)
        h, w = greys[0].shape
        key = ChainKey(len(greys), h, w, "host")
        self._ensure(key)
        staged = self._frames_in[: key.batch * h * w].reshape(key.batch, h, w)
        for i, grey in enumerate(greys):
            staged[i] = grey
        plan = plan_chain(key, self.device, self.host, self.spec, self.layout.types)
        self._run(plan, include_upload=True)
        self._pending = (key, start)
        return self

    def submit_device(self, source: DeviceSource, producer_stream: int | None) -> FrameSlot:
        """Enqueue the chain for one frame already on the device. ``producer_stream``: the stream
        the frame's producer wrote it on (``__cuda_array_interface__`` v3), waited for on the
        device; None when the producer says no synchronisation is needed."""
        self._check_idle()
        start = time.perf_counter()
        bind_device(self.cuda_device)
        key = ChainKey(1, source.height, source.width, "device")
        self._ensure(key)
        plan = plan_chain(key, self.device, self.host, self.spec, self.layout.types, source)
        if producer_stream is not None:
            self._producer_event.record(runtime_api().cudaStream_t(producer_stream))
            self.stream.wait_for(self._producer_event)
        # The source address changes per call, so the copy stays outside the graph.
        enqueue_upload(plan, self)
        self._run(plan, include_upload=False)
        self._pending = (key, start)
        return self

    def _run(self, plan: ChainPlan, include_upload: bool) -> None:
        changed, self._rebound = self._rebound, False
        for context in self.contexts.values():
            changed = context.set_batch(plan.key.batch) or changed

        def enqueue() -> None:
            if include_upload:
                enqueue_upload(plan, self)
            enqueue_compute(plan, self)

        self.graphs.run(plan.key, enqueue, changed)

    def collect(self) -> list[Result]:
        """Wait for the submitted chain (its last event) and read its results."""
        if self._pending is None:
            raise RuntimeError("nothing was submitted to this slot")
        key, start = self._pending
        self._pending = None
        self.events[-1].synchronize()
        stage_ms = {stage: self.events[i].elapsed_ms(self.events[i + 1])
                    for i, stage in enumerate(STAGES)}
        return read_results(key, self._masks_out, self._scores_out, self._boxes_out, self.spec,
                            stage_ms, (time.perf_counter() - start) * 1e3)

    def abandon(self) -> None:
        """Wait for a submitted chain and drop its results."""
        if self._pending is not None:
            self._pending = None
            self.events[-1].synchronize()

    def _check_idle(self) -> None:
        if self._pending is not None:
            raise RuntimeError("this slot still has a batch in flight: collect() it first")

    # --- ChainOps on this slot's stream ------------------------------------------------------

    def record(self, event_index: int) -> None:
        self.events[event_index].record(self.stream)

    def copy(self, copy: Copy) -> None:
        copy_2d_async(copy.dst, copy.dst_pitch, copy.src, copy.src_pitch, copy.row_bytes,
                      copy.rows, copy.kind, self.stream)

    def launch(self, launch: Launch) -> None:
        self._kernels.launch(launch.entry_point, launch.args, launch.shape, self.stream)

    def run_engine(self, label: str) -> None:
        self.contexts[label].execute(self.stream.address)

    def _capture(self, enqueue: Callable[[], None]) -> Replayable:
        return _BoundGraph(capture_graph(self.stream, enqueue), self.stream)

    # --- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the stream, then free graphs, buffers, contexts, events and the stream (all of
        them even if one release fails; the first failure is raised after)."""
        stack, self._stack = self._stack, contextlib.ExitStack()
        with stack:
            self._pending = None
            bind_device(self.cuda_device)
            if not self.stream.freed:
                self.stream.synchronize()

