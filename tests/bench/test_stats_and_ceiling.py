"""Timing statistics and the GEMM ceiling."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bpedge._bench.ceiling import best_gflops, measure_ceiling
from bpedge._bench.stats import TimingStats, summarize


def test_summarize_matches_numpy_and_round_trips():
    rng = np.random.default_rng(1)
    samples = rng.gamma(2.0, 3.0, 257)
    s = summarize(samples.tolist())
    assert s.n == 257
    assert s.min == samples.min() and s.max == samples.max()
    assert s.mean == pytest.approx(samples.mean())
    assert s.median == pytest.approx(np.median(samples))
    assert s.p90 == pytest.approx(np.percentile(samples, 90))
    assert s.p99 == pytest.approx(np.percentile(samples, 99))
    assert s.min <= s.median <= s.p90 <= s.p99 <= s.max
    assert s.fps == pytest.approx(1e3 / samples.mean())
    assert TimingStats.from_json(s.to_json()) == s


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [-1.0], [[1.0, 2.0]]])
def test_summarize_refuses_bad_samples(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_best_gflops_counts_two_n_cubed_over_the_fastest_call():
    durations = iter([0.05, 0.02, 0.08, 0.06])  # the first (untimed) call, then three timed ones

    def fake_matmul() -> None:
        time.sleep(next(durations, 0.06))

    gflops = best_gflops(fake_matmul, n=1000, seconds=0.0, min_repeats=3)
    # Best timed call >= 20 ms (sleep never returns early), so <= 2e9 / 0.02 / 1e9 = 100 GFLOP/s;
    # any other call is >= 60 ms (<= 33 GFLOP/s). The gap leaves room for sleep to overshoot on
    # a loaded machine (25 ms for a 20 ms sleep was seen with two studies on both cores).
    assert 50 < gflops <= 100


def test_measure_ceiling_reports_both_libraries():
    c = measure_ceiling(n=64, seconds=0.02, threads=1)
    assert c.numpy_gflops > 0 and c.torch_gflops is not None and c.torch_gflops > 0
    assert c.torch_threads == 1
    assert c.gflops == max(c.numpy_gflops, c.torch_gflops)
    assert c.to_json()["gflops"] == c.gflops
