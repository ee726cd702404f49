"""The JSON record of one ``bpedge bench`` run (``--json FILE``) and its rows.

One file holds everything needed to read a result later or on a dashboard: the machine, library
versions, the command and settings, the bundle's models and FLOPs, the measured GEMM ceiling, and
per backend/precision row the timings (per stage and end to end), throughput, accuracy, achieved
GFLOP/s and the speed-up against the PyTorch-eager baseline of the same run.

Schema ``bpedge-bench`` version 1 (``SCHEMA_VERSION``); :func:`read_record` refuses other schemas.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpedge._bench.backends import BASELINE, RowChoice
from bpedge._bench.harness import Accuracy, RowTimings
from bpedge._bench.stats import TimingStats

SCHEMA = "bpedge-bench"
SCHEMA_VERSION = 1
#: Stages that run a model, whose FLOPs the manifest records.
MODEL_STAGES = ("detector", "segmenter")


@dataclass(frozen=True)
class BenchRow:
    """One backend/precision of a run: measured, or skipped with the reason."""

    backend: str
    precision: str
    label: str
    reason: str | None = None                 # why skipped (None: it ran)
    stages: dict[str, TimingStats] = field(default_factory=dict)
    end_to_end: TimingStats | None = None
    fps: float | None = None
    frames_timed: int = 0
    accuracy: dict[str, Any] | None = None
    stage_clock: str | None = None
    gflops: dict[str, float | None] = field(default_factory=dict)
    speedup: dict[str, float | None] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return self.reason is None

    @property
    def model_ms(self) -> float | None:
        """Mean milliseconds per frame spent in the two models."""
        if not all(s in self.stages for s in MODEL_STAGES):
            return None
        return sum(self.stages[s].mean for s in MODEL_STAGES)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "precision": self.precision, "label": self.label,
            "status": "ran" if self.ran else "skipped", "reason": self.reason,
            "stage_clock": self.stage_clock, "end_to_end_clock": "time.perf_counter",
            "stages": {k: v.to_json() for k, v in self.stages.items()},
            "end_to_end": self.end_to_end.to_json() if self.end_to_end else None,
            "fps": self.fps, "frames_timed": self.frames_timed, "accuracy": self.accuracy,
            "gflops": self.gflops, "speedup_vs_baseline": self.speedup,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BenchRow:
        if not isinstance(obj, dict):
            raise ValueError(  # noqa: TRY004 - bad input: exit 2
                f"not a bench row: a {type(obj).__name__}, not an object")
        fps = obj.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                                or not math.isfinite(fps) or fps < 0):
            raise ValueError("not a bench row: \"fps\" must be a finite number >= 0")
        for key in ("stages", "accuracy", "gflops", "speedup_vs_baseline"):
            if not isinstance(obj.get(key) or {}, dict):
                raise ValueError(  # noqa: TRY004 - bad input: exit 2
                    f"not a bench row: \"{key}\" must be an object")
        try:
            e2e = obj.get("end_to_end")
            return cls(
                backend=str(obj["backend"]), precision=str(obj["precision"]),
                label=str(obj.get("label", f"{obj['backend']} {obj['precision']}")),
                reason=obj.get("reason"),
                stages={k: TimingStats.from_json(v) for k, v in (obj.get("stages") or {}).items()},
                end_to_end=TimingStats.from_json(e2e) if e2e else None,
                fps=obj.get("fps"), frames_timed=int(obj.get("frames_timed", 0)),
                accuracy=obj.get("accuracy"), stage_clock=obj.get("stage_clock"),
                gflops=dict(obj.get("gflops") or {}),
                speedup=dict(obj.get("speedup_vs_baseline") or {}),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"not a bench row: {exc}") from exc


def skipped_row(choice: RowChoice, reason: str) -> BenchRow:
    return BenchRow(choice.backend, choice.precision, choice.label, reason=reason)


def measured_row(choice: RowChoice, timings: RowTimings, accuracy: Accuracy,
                 flops: dict[str, int], ceiling_gflops: float | None) -> BenchRow:
    """A row from its measurements; ``flops`` per frame per model (from the manifest).

    Achieved GFLOP/s: a model's FLOPs over its mean stage time; ``models`` both models over
    their summed stage time; ``end_to_end`` both over the mean end-to-end time; and
    ``models_fraction_of_ceiling`` the ``models`` figure over the GEMM ceiling of the row's
    precision (``ceiling_gflops``, recorded as ``ceiling``; None where it was not measured).
    """
    stages = timings.stages
    gflops: dict[str, float | None] = {}
    for name in MODEL_STAGES:
        gflops[name] = _gflops(flops.get(name), stages[name].mean if name in stages else None)
    total_flops = sum(flops.get(n, 0) for n in MODEL_STAGES) or None
    model_ms = sum(stages[s].mean for s in MODEL_STAGES) if all(
        s in stages for s in MODEL_STAGES) else None
    gflops["models"] = _gflops(total_flops, model_ms)
    gflops["end_to_end"] = _gflops(total_flops, timings.end_to_end.mean)
    models = gflops["models"]
    gflops["ceiling"] = ceiling_gflops
    gflops["models_fraction_of_ceiling"] = (models / ceiling_gflops
                                            if models is not None and ceiling_gflops else None)
    return BenchRow(
        backend=choice.backend, precision=choice.precision, label=choice.label,
        stages=dict(stages), end_to_end=timings.end_to_end, fps=timings.fps,
        frames_timed=timings.frames, accuracy=accuracy.to_json(),
        stage_clock="CUDA events (device stages)" if choice.backend == "tensorrt"
        else "time.perf_counter",
        gflops=gflops,
    )


def _gflops(flops: int | None, ms: float | None) -> float | None:
    if not flops or not ms or ms <= 0:
        return None
    return flops / (ms * 1e-3) / 1e9


def with_speedups(rows: list[BenchRow]) -> list[BenchRow]:
    """Rows with ``speedup`` filled against the baseline row of the same run: baseline time /
    row time for the end-to-end mean, the end-to-end median, and the two models' mean."""
    base = next((r for r in rows if (r.backend, r.precision) == BASELINE and r.ran), None)
    if base is None or base.end_to_end is None:
        return rows
    out = []
    for r in rows:
        if not r.ran or r.end_to_end is None:
            out.append(r)
            continue
        ratios = {
            "end_to_end_mean": base.end_to_end.mean / r.end_to_end.mean,
            "end_to_end_median": base.end_to_end.median / r.end_to_end.median,
            "models_mean": (base.model_ms / r.model_ms
                            if base.model_ms and r.model_ms else None),
        }
        out.append(BenchRow(**{**r.__dict__, "speedup": ratios}))
    return out


@dataclass(frozen=True)
class BenchRecord:
    """A whole run: context plus rows (baseline first)."""

    context: dict[str, Any]
    rows: tuple[BenchRow, ...]

    def row(self, backend: str, precision: str) -> BenchRow | None:
        return next((r for r in self.rows if (r.backend, r.precision) == (backend, precision)),
                    None)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **self.context,
                "baseline": f"{BASELINE[0]} {BASELINE[1]}",
                "rows": [r.to_json() for r in self.rows]}

    def dumps(self) -> str:
        return json.dumps(_finite(self.to_json()), indent=2, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    # Strict JSON for dashboards: an infinite FPS (a zero time) is written as null.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_record(path: str | os.PathLike[str], record: BenchRecord) -> None:
    from bpedge._atomic import atomic_write_text

    atomic_write_text(path, record.dumps())


#: Largest bench record read: a real one is tens of KB.
MAX_RECORD_BYTES = 64 << 20


def _refuse_constant(name: str) -> float:
    # The writer emits strict JSON (allow_nan=False); NaN or Infinity shown as a time is nonsense.
    raise ValueError(f"NaN and Infinity are not bench numbers (found {name})")


def read_record(path: str | os.PathLike[str]) -> BenchRecord:
    """Read a ``--json`` file; ValueError naming the file if it is not a bench record."""
    from bpedge._regular_file import NotARegularFile, read_regular_file

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise FileNotFoundError(f"bench record {p} does not exist")
    try:
        # A FIFO hung the read and a link to /dev/zero read until memory ran out.
        data = read_regular_file(p, MAX_RECORD_BYTES)
        obj = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except NotARegularFile as exc:
        raise ValueError(f"{exc}: a bench record is a regular JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{p} is not JSON ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise ValueError(f"{p} is not a bpedge bench record (no \"schema\": \"{SCHEMA}\")")
    if obj.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{p} has bench schema version {obj.get('schema_version')!r}; this bpedge "
                         f"reads version {SCHEMA_VERSION}")
    rows = obj.pop("rows", None)
    if not isinstance(rows, list):
        raise ValueError(f"{p}: \"rows\" must be a list")  # noqa: TRY004 - bad input: exit 2
    for key in ("schema", "schema_version", "baseline"):
        obj.pop(key, None)
    try:
        return BenchRecord(obj, tuple(BenchRow.from_json(r) for r in rows))
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
