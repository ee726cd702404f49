#!/usr/bin/env python
"""Soak test of the CPU cascade: ``Segmenter`` on ONNX Runtime over many frames, watching memory.

    python benchmarks/soak_cpu.py                       # makes a tiny bundle, 10,000 frames
    python benchmarks/soak_cpu.py --bundle BUNDLE --frames 10000 --threads 1

A few hundred distinct phantom frames (B-mode speckle with a brachial plexus, 420x580, plus some
at other sizes) are generated once and cycled, each use slightly perturbed (speckle-sized noise,
a pixel of shift, a brightness change), so no two frames the Segmenter sees are the same array.
Every ``--bad-every`` frames a malformed frame (NaN, wrong channels, 1x1, ...) is also sent: it
must be refused with ``ValueError`` and must not leak either.

Resident memory (``/proc/self/statm``) is sampled every ``--sample-every`` frames. Growth is the
median RSS over the last ``--window`` frames against the median over the ``--window`` frames
right after the warm-up (the first ``--warmup`` frames, when ONNX Runtime's arenas and NumPy's
allocator reach their working size). The run passes when growth is under ``--max-growth`` (5%)
and no good frame failed (an exception, or a result breaking its contract: mask shape, 0/255
values, box inside the frame, score in [0, 1], empty mask when absent).

Writes ``OUT/soak-cpu.json`` (every sample and number, the command, versions, load average),
``OUT/soak-cpu.md`` (a short summary) and ``OUT/soak-cpu.png`` (RSS vs frame). Exit status 0 when
the run passes, 1 when it does not. Without ``--bundle``, one is made in ``--work`` from the
``tiny`` preset trained briefly on a phantom (reused when it is already there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


# --- the bundle and the frames -----------------------------------------------------------------


def make_bundle(work: Path, epochs: int) -> Path:
    """A bundle exported from the ``tiny`` preset trained ``epochs`` epochs on a small phantom,
    made once in ``work`` by the shared tiny-bundle pipeline (finished parts are reused)."""
    from bpedge.export.tiny_bundle import TinyPaths, TinyRecipe, make_tiny_bundle

    return make_tiny_bundle(TinyPaths.under(work), TinyRecipe(subjects=4, frames=16, seed=0,
                                                              epochs=epochs))


def phantom_frames(distinct: int, seed: int) -> list[np.ndarray]:
    """``distinct`` phantom frames from ``render_subject``: most 420x580 like the real data, every
    fifth resized to another probe's size, so paste-back sees several frame sizes."""
    import cv2
    from bpedge.train.data.phantom import PhantomConfig, render_subject

    per_subject = 40
    subjects = max(1, math.ceil(distinct / per_subject))
    config = PhantomConfig(subjects=subjects, frames=per_subject, seed=seed)
    sizes = [(480, 640), (300, 400), (600, 800), (420, 560)]
    frames: list[np.ndarray] = []
    for subject in range(1, subjects + 1):
        for _, image, _ in render_subject(config, subject):
            if len(frames) % 5 == 4:
                h, w = sizes[(len(frames) // 5) % len(sizes)]
                image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            frames.append(image)
            if len(frames) == distinct:
                return frames
    return frames


def perturbed(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new frame near ``base``: +-3 grey levels of noise, up to one pixel of shift, +-5% gain."""
    noise = rng.integers(-3, 4, base.shape, dtype=np.int16)
    frame = np.clip(base.astype(np.int16) * rng.uniform(0.95, 1.05) + noise, 0, 255)
    frame = np.roll(frame.astype(np.uint8), tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    return frame


def malformed(k: int) -> Any:
    """The k-th kind of bad frame, in rotation."""
    kinds: list[Any] = [
        np.full((420, 580), np.nan, np.float32),
        np.zeros((420, 580, 4), np.uint8),
        np.zeros((1, 1), np.uint8),
        np.zeros((0, 580), np.uint8),
        np.zeros((2, 420, 580), np.uint8),
        np.full((420, 580), 300.0),
        None,
    ]
    return kinds[k % len(kinds)]


# --- measuring ---------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now (Linux: /proc/self/statm, field 2, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def contract_problem(result: Any, frame: np.ndarray) -> str | None:
    """Why ``result`` breaks the Segmenter's contract for ``frame``, or None."""
    h, w = frame.shape[:2]
    if result.mask.shape != (h, w) or result.mask.dtype != np.uint8:
        return "mask shape/dtype"
    if not np.isin(result.mask, (0, 255)).all():
        return "mask values other than 0/255"
    x0, y0, x1, y1 = result.box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        return "box outside the frame"
    if not 0.0 <= result.score <= 1.0:
        return "score outside [0, 1]"
    if not result.present and result.mask.any():
        return "mask not empty when absent"
    return None


def soak(seg: Any, frames: list[np.ndarray], n: int, sample_every: int, bad_every: int,
         seed: int, progress: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    samples: list[tuple[int, int, float]] = []
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    bad_refused = bad_accepted = present = 0
    t0 = time.perf_counter()
    samples.append((0, rss_bytes(), 0.0))
    for i in range(1, n + 1):
        frame = perturbed(frames[i % len(frames)], rng)
        start = time.perf_counter()
        try:
            result = seg(frame)
        except Exception as exc:  # noqa: BLE001 - a soak counts every failure by kind
            failures[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
        else:
            latencies.append((time.perf_counter() - start) * 1e3)
            problem = contract_problem(result, frame)
            if problem is not None:
                failures[problem] += 1
            present += bool(result.present)
        if bad_every and i % bad_every == 0:
            try:
                seg(malformed(i // bad_every))
            except ValueError:
                bad_refused += 1
            else:
                bad_accepted += 1
        if i % sample_every == 0 or i == n:
            samples.append((i, rss_bytes(), time.perf_counter() - t0))
            if progress and i % (sample_every * 20) == 0:
                print(f"{i:>6}/{n} frames  RSS {samples[-1][1] / 2**20:7.1f} MiB  "
                      f"{i / samples[-1][2]:6.1f} frames/s", file=sys.stderr, flush=True)
    return {"samples": samples, "latencies_ms": latencies, "failures": dict(failures),
            "bad_refused": bad_refused, "bad_accepted": bad_accepted, "present": present,
            "seconds": time.perf_counter() - t0}


def growth(samples: list[tuple[int, int, float]], warmup: int, window: int) -> dict[str, float]:
    """Median RSS just after the warm-up vs over the last ``window`` frames."""
    last = samples[-1][0]
    after = [rss for i, rss, _ in samples if warmup <= i < warmup + window]
    end = [rss for i, rss, _ in samples if i > last - window]
    peak = max(rss for i, rss, _ in samples if i >= warmup)
    base, final = statistics.median(after), statistics.median(end)
    return {"baseline_bytes": base, "final_bytes": final, "peak_after_warmup_bytes": peak,
            "growth_pct": 100.0 * (final - base) / base,
            "peak_growth_pct": 100.0 * (peak - base) / base}


# --- reporting ---------------------------------------------------------------------------------


def write_plot(path: Path, samples: list[tuple[int, int, float]], warmup: int, base: float,
               limit_pct: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [i for i, _, _ in samples]
    ys = [rss / 2**20 for _, rss, _ in samples]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    ax.axvspan(0, warmup, color="0.9", label="warm-up")
    ax.plot(xs, ys, lw=1.2, label="resident memory")
    ax.axhline(base / 2**20, color="tab:green", ls="--", lw=1, label="baseline (after warm-up)")
    ax.axhline(base * (1 + limit_pct / 100) / 2**20, color="tab:red", ls=":", lw=1,
               label=f"baseline + {limit_pct:g}%")
    ax.set_xlabel("frame")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("bpedge CPU cascade soak (ONNX Runtime)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def environment() -> dict[str, Any]:
    import onnxruntime

    from bpedge._version import __version__

    return {"bpedge": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform(), "processor": platform.processor(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def markdown(report: dict[str, Any]) -> str:
    g, r = report["memory"], report["result"]
    lat = report["latency_ms"]
    mib = 2**20
    lines = [
        "# CPU soak: the ONNX Runtime cascade over many frames",
        "",
        f"Command: `{report['command']}`",
        "",
        (f"- Frames: {report['frames']} ({report['distinct_frames']} distinct phantom frames, "
         f"each use perturbed; sizes {', '.join(report['frame_sizes'])}), "
         f"{report['threads']} ONNX Runtime thread(s); BP judged present in "
         f"{report['present']} frames."),
        (f"- Malformed frames sent too: {report['bad_refused'] + report['bad_accepted']}, "
         f"refused with ValueError: {report['bad_refused']}."),
        (f"- Resident memory: {g['baseline_bytes'] / mib:.1f} MiB after the "
         f"{report['warmup']}-frame warm-up, {g['final_bytes'] / mib:.1f} MiB over the last "
         f"{report['window']} frames: **growth {g['growth_pct']:+.2f}%** (limit "
         f"{report['max_growth_pct']:g}%); peak after warm-up "
         f"{g['peak_after_warmup_bytes'] / mib:.1f} MiB ({g['peak_growth_pct']:+.2f}%). "
         f"torch in the process: {report['torch_in_process']}."),
        (f"- Failed frames: **{report['failed_frames']}**"
         + (f" ({report['failures']})" if report["failures"] else "") + "."),
        (f"- Latency per frame (ms): p50 {lat['p50']:.2f}, p95 {lat['p95']:.2f}, p99 "
         f"{lat['p99']:.2f}; {report['frames_per_second']:.1f} frames/s over "
         f"{report['seconds']:.0f} s (load average {report['load_average_before']} before, "
         f"{report['load_average_after']} after, on {report['environment']['cpus']} CPUs: a "
         "shared machine, so these times are indicative only)."),
        f"- Result: **{'PASS' if r['passed'] else 'FAIL'}** ({r['criteria']}).",
        "",
        "![RSS vs frame](soak-cpu.png)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: make one in --work)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bpedge-soak"),
                        help="where a bundle is made when --bundle is not given")
    parser.add_argument("--train-epochs", type=int, default=3, help="epochs of the made bundle")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--distinct", type=int, default=300, help="distinct phantom frames")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=25)
    parser.add_argument("--bad-every", type=int, default=100, help="0: no malformed frames")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--make-bundle-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_bundle_only:
        print(make_bundle(args.work, args.train_epochs))
        return 0
    if args.frames < args.warmup + 2 * args.window:
        parser.error("--frames must be at least --warmup + 2 x --window")
    if min(args.distinct, args.sample_every, args.threads, args.window) < 1 or args.bad_every < 0:
        parser.error("--distinct, --sample-every, --threads and --window must be >= 1")

    from bpedge import Segmenter

    bundle = args.bundle
    if bundle is None:
        # Made in a child: training imports torch, and the soak must measure a process like the
        # device software's (the runtime only: NumPy, OpenCV, ONNX Runtime).
        subprocess.run([sys.executable, __file__, "--make-bundle-only", "--work", str(args.work),
                        "--train-epochs", str(args.train_epochs)], check=True)
        bundle = args.work / "bundle"
    frames = phantom_frames(args.distinct, args.seed)
    load_before = [round(v, 2) for v in os.getloadavg()]
    with Segmenter.from_bundle(bundle, backend="onnxruntime", threads=args.threads) as seg:
        run = soak(seg, frames, args.frames, args.sample_every, args.bad_every, args.seed,
                   not args.no_progress)
    load_after = [round(v, 2) for v in os.getloadavg()]

    memory = growth(run["samples"], args.warmup, args.window)
    failed = sum(run["failures"].values())
    passed = memory["growth_pct"] < args.max_growth and failed == 0 and run["bad_accepted"] == 0
    lat = np.asarray(run["latencies_ms"])
    report = {
        "command": "python benchmarks/soak_cpu.py " + " ".join(shlex.quote(a) for a in
                                                               (sys.argv[1:] if argv is None else argv)),
        "bundle": str(bundle), "frames": args.frames, "distinct_frames": len(frames),
        "frame_sizes": sorted({f"{f.shape[0]}x{f.shape[1]}" for f in frames}),
        "warmup": args.warmup, "window": args.window, "threads": args.threads,
        "max_growth_pct": args.max_growth, "memory": memory, "failed_frames": failed,
        "failures": run["failures"], "bad_refused": run["bad_refused"],
        "bad_accepted": run["bad_accepted"], "present": run["present"],
        "seconds": run["seconds"], "frames_per_second": args.frames / run["seconds"],
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p95", "p99")}
        if lat.size else {"p50": math.nan, "p95": math.nan, "p99": math.nan},
        "load_average_before": load_before, "load_average_after": load_after,
        "environment": environment(), "torch_in_process": "torch" in sys.modules,
        "result": {"passed": passed, "criteria": f"growth < {args.max_growth:g}%, 0 failed frames, "
                   "every malformed frame refused"},
        "samples": [{"frame": i, "rss_bytes": rss, "seconds": round(s, 3)}
                    for i, rss, s in run["samples"]],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak-cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "soak-cpu.md").write_text(markdown(report))
    write_plot(args.out / "soak-cpu.png", run["samples"], args.warmup, memory["baseline_bytes"],
               args.max_growth)
    print(markdown(report))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
