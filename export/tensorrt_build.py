"""``bpedge build-engines``: build (or reuse) one TensorRT engine per model and precision for the
GPU and TensorRT of this machine, store it in the bundle and list it in the manifest.

Order of work, so that nothing is wasted or left half done:
1. TensorRT and the GPU are checked first; without either, :class:`TargetUnavailable` says what
   is missing and how to fix it, before the bundle is even read.
2. The bundle is opened (manifest validated, ONNX hashes checked), every requested ONNX is
   found, and every engine's name is checked free or bpedge's (a file of someone else's there is
   named and refused) before any build starts.
3. Per (model, precision): an engine listed for this exact target whose file still matches its
   sha256 is reused; otherwise the engine is built from the hash-checked ONNX bytes and stored
   (atomic write, then an atomic manifest update; see :meth:`bpedge.bundle.Bundle.store_engine`).
   The timing cache, if asked for, is saved (atomically) after every build. It is a file the user
   names, so it is read and replaced only when ``build-engines`` wrote it (a record beside it says
   so, :mod:`bpedge._out_file`); any other file there is refused before anything is built.

The TensorRT calls themselves are the small steps in :mod:`bpedge.export._trt_steps`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpedge.export._trt_steps import (
    ENGINE_MATH,
    BuildProgress,
    EngineBuildError,
    TensorRTApi,
    add_batch_profile,
    attach_progress,
    attach_timing_cache,
    build_serialized,
    check_inputs,
    create_builder,
    create_config,
    network_inputs,
    parse_onnx,
    serialize_timing_cache,
)

from bpedge._engine_key import (
    ENGINE_ONNX,
    PRECISIONS,
    EngineKey,
    GpuInfo,
    TargetUnavailable,
    key_for,
    load_tensorrt,
    query_gpu,
    require_target,
    tensorrt_version,
)
from bpedge._manifest import MODEL_NAMES, EngineEntry
from bpedge._out_file import OutFile
from bpedge.bundle import Bundle

__all__ = ["BuiltPlan", "EngineBuildError", "TargetUnavailable", "build_engines", "build_plan",
           "timing_cache_file"]

DEFAULT_WORKSPACE_MB = 1024
DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class BuiltPlan:
    """A serialized TensorRT engine, the grown timing cache and the build time in seconds."""

    plan: bytes
    timing_cache: bytes
    seconds: float


def build_plan(
    trt: TensorRTApi,
    onnx: bytes,
    onnx_name: str,
    input_names: Sequence[str],
    *,
    max_batch: int,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: bytes = b"",
    progress: BuildProgress | None = None,
    log: Callable[[str], None] | None = None,
) -> BuiltPlan:
    """ONNX bytes -> serialized engine, the steps of :mod:`._trt_steps` in order.

    ``onnx`` must already be hash-checked; ``input_names`` are the manifest's input names, which
    the network must have (each with a dynamic batch dimension). The profile allows batch 1 ..
    ``max_batch``. ``timing_cache`` is a serialized timing cache (b"": start a new one).
    """
    builder, logger = create_builder(trt)
    parsed = parse_onnx(trt, builder, logger, onnx, onnx_name)
    inputs = network_inputs(parsed.network)
    check_inputs(inputs, input_names, onnx_name)
    config = create_config(trt, builder, workspace_mb)
    add_batch_profile(trt, builder, config, inputs, max_batch)
    if not attach_timing_cache(config, timing_cache) and log is not None:
        log("the timing cache is from another GPU or TensorRT version: starting a new one")
    monitor = attach_progress(trt, config, progress) if progress is not None else None
    try:
        plan, seconds = build_serialized(builder, parsed.network, config, onnx_name)
    finally:
        if progress is not None:
            progress.close()
    del monitor  # only now may the monitor go: TensorRT used it until the build returned
    return BuiltPlan(plan=plan, timing_cache=serialize_timing_cache(config), seconds=seconds)


def build_engines(
    bundle_path: str | os.PathLike[str],
    precisions: Sequence[str] = ("fp16",),
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
    *,
    models: Sequence[str] = MODEL_NAMES,
    trt: TensorRTApi | None = None,
    gpu: GpuInfo | None = None,
    log: Callable[[str], None] | None = None,
) -> list[EngineEntry]:
    """Make sure the bundle has an engine for every model in ``models`` and precision in
    ``precisions`` that fits this machine; returns their entries (reused or newly built).

    ``max_batch``: largest batch the engines accept (profile batch 1 .. max_batch, tuned for 1).
    ``workspace_mb``: TensorRT workspace memory limit in MiB. ``timing_cache``: a file to load
    and update, so that rebuilds on this machine are fast; it must be new or one that
    ``build_engines`` wrote (a file of anyone else's is never read or replaced). ``force``:
    rebuild even when a fitting engine exists. ``progress``: show TensorRT's build phases as progress bars on stderr.

    ``trt`` and ``gpu`` replace the real TensorRT module and GPU query (tests); ``log`` receives
    one line per decision (default: stderr).

    Raises :class:`TargetUnavailable` (no TensorRT or no GPU; checked before anything else),
    :class:`bpedge.bundle.BundleError` (a bad bundle or a missing ONNX for a precision: fp16, or
    int8's symmetric QDQ, which exists only where it passed the export's gate),
    :class:`EngineBuildError` (TensorRT could not parse or build) and ``ValueError`` for bad
    arguments (:class:`bpedge._out_file.OutFileRefused` for a ``timing_cache`` that is not
    build-engines', checked with the other arguments, before anything else).
    """
    say = log if log is not None else _stderr_line
    precisions = _check_args(precisions, max_batch, workspace_mb, models)
    cache_file = timing_cache_file(timing_cache) if timing_cache is not None else None
    if cache_file is not None:
        cache_file.check()
    trt_api, gpu_info = _resolve_target(trt, gpu)
    version = tensorrt_version(trt_api)

    bundle = Bundle.open(bundle_path)
    jobs = [(model, precision) for model in models for precision in precisions]
    # Every ONNX found before any build (INT8 engines: the symmetric QDQ file).
    onnx_refs = {(model, p): bundle.onnx_ref(model, ENGINE_ONNX[p]) for model, p in jobs}
    cache = _read_timing_cache(cache_file, say)

    # What is reused, and every engine's name free or bpedge's, before the first build: a file
    # in the way of the second engine was refused only after the first had been built.
    planned = []
    for model, precision in jobs:
        key = key_for(gpu_info, version, precision, max_batch)
        reusable = None if force else _reusable_engine(bundle, model, key, say)
        if reusable is None:
            bundle.check_engine_slot(model, key)
        planned.append((model, precision, key, reusable))

    entries = []
    for model, precision, key, reusable in planned:
        if reusable is not None:
            say(f"reusing {reusable.file} ({model} {precision}, batch <= {reusable.key.max_batch})")
            entries.append(reusable)
            continue
        ref = onnx_refs[(model, precision)]
        say(f"building the {model} {precision} engine from {ref.file} for {key.describe()}")
        built = build_plan(
            trt_api,
            bundle.read_verified(ref.file),
            str(bundle.root / ref.file),
            [t.name for t in bundle.manifest.models[model].inputs],
            max_batch=max_batch,
            workspace_mb=workspace_mb,
            timing_cache=cache,
            progress=BuildProgress(f"{model} {precision}") if progress else None,
            log=say,
        )
        entry = bundle.store_engine(model, key, built.plan, built.seconds,
                                    math=ENGINE_MATH[precision])
        cache = built.timing_cache
        if cache_file is not None:
            cache_file.write_bytes(cache)  # checked again: still absent or still ours
        say(f"built {entry.file} in {built.seconds:.1f} s")
        entries.append(entry)
    return entries


def _check_args(
    precisions: Sequence[str], max_batch: int, workspace_mb: int, models: Sequence[str]
) -> tuple[str, ...]:
    if isinstance(precisions, str):
        precisions = (precisions,)
    chosen = tuple(dict.fromkeys(precisions))  # unique, in the order given
    if not chosen or any(p not in PRECISIONS for p in chosen):
        raise ValueError(f"precisions must be some of {list(PRECISIONS)}, got {list(precisions)}")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    if not isinstance(workspace_mb, int) or isinstance(workspace_mb, bool) or workspace_mb < 1:
        raise ValueError(f"workspace_mb must be an integer >= 1 (MiB), got {workspace_mb!r}")
    if not models or any(m not in MODEL_NAMES for m in models):
        raise ValueError(f"models must be some of {list(MODEL_NAMES)}, got {list(models)}")
    return chosen


def _resolve_target(trt: TensorRTApi | None, gpu: GpuInfo | None) -> tuple[TensorRTApi, GpuInfo]:
    # Both checks run before any work, and one message names everything that is missing.
    if trt is None and gpu is None:
        module, found_gpu = require_target()
        return module, found_gpu
    module_api: Any = trt if trt is not None else load_tensorrt()
    return module_api, gpu if gpu is not None else query_gpu()


def _reusable_engine(
    bundle: Bundle, model: str, key: EngineKey, say: Callable[[str], None]
) -> EngineEntry | None:
    entry = bundle.find_engine(model, key)
    if entry is None:
        return None
    problem = bundle.file_problem(entry.file)
    if problem is not None:
        say(f"not reusing {entry.file}: {problem}")
        return None
    return entry


def timing_cache_file(path: str | os.PathLike[str]) -> OutFile:
    """The ``--timing-cache`` file: replaced only while it holds what build-engines wrote."""
    return OutFile(Path(path), "build-engines", "--timing-cache")


def _read_timing_cache(cache_file: OutFile | None, say: Callable[[str], None]) -> bytes:
    if cache_file is None or cache_file.check() == "absent":
        return b""
    say(f"using the timing cache {cache_file.path}")
    return cache_file.path.read_bytes()


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
