"""The slot ring (in-order delivery with N frames in flight) and the per-slot CUDA graph cache,
driven by fake executors: the scheduling logic of the GPU cascade without a GPU."""

from __future__ import annotations

import logging

import pytest

from bpedge._gpu._chain import ChainKey
from bpedge._gpu._cuda import GraphCaptureError
from bpedge._gpu._slot import GraphCache, in_order


class FakeExecutor:
    """Slots that finish out of order: a ticket's result is only readable once collected, and a
    slot may not be submitted to while its previous ticket is outstanding."""

    def __init__(self, depth: int) -> None:
        self.busy = [None] * depth
        self.log: list[tuple[str, int, int]] = []
        self.max_in_flight = 0

    def submit(self, item: int, slot: int) -> tuple[int, int]:
        assert self.busy[slot] is None, f"slot {slot} reused while item {self.busy[slot]} in flight"
        self.busy[slot] = item
        self.log.append(("submit", item, slot))
        self.max_in_flight = max(self.max_in_flight, sum(b is not None for b in self.busy))
        return item, slot

    def collect(self, ticket: tuple[int, int]) -> int:
        item, slot = ticket
        assert self.busy[slot] == item
        self.busy[slot] = None
        self.log.append(("collect", item, slot))
        return item * 10

    def abandon(self, ticket: tuple[int, int]) -> None:
        item, slot = ticket
        self.busy[slot] = None
        self.log.append(("abandon", item, slot))


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_results_come_back_in_input_order_with_depth_in_flight(depth):
    ex = FakeExecutor(depth)
    out = list(in_order(range(7), depth, ex.submit, ex.collect, ex.abandon))
    assert out == [i * 10 for i in range(7)]
    assert ex.max_in_flight == min(depth, 7)
    assert all(b is None for b in ex.busy)
    # Item i + depth is submitted only after item i was collected (its slot is then free).
    order = [(kind, item) for kind, item, _ in ex.log]
    for i in range(7 - depth):
        assert order.index(("collect", i)) < order.index(("submit", i + depth))


def test_a_consumer_that_stops_early_leaves_no_slot_in_flight():
    ex = FakeExecutor(3)
    results = in_order(range(10), 3, ex.submit, ex.collect, ex.abandon)
    assert next(results) == 0 and next(results) == 10
    results.close()
    assert all(b is None for b in ex.busy)
    # Suspended at the second result: items 2 and 3 were in flight (4 is not submitted until
    # item 1's slot is free again, which needs the consumer to come back).
    assert [e for e in ex.log if e[0] == "abandon"] == [("abandon", 2, 2), ("abandon", 3, 0)]


def test_a_bad_item_mid_stream_abandons_what_is_in_flight_and_raises():
    ex = FakeExecutor(2)

    def items():
        yield from (0, 1, 2)
        raise ValueError("frame 3 is not uint8")

    with pytest.raises(ValueError, match="frame 3"):
        list(in_order(items(), 2, ex.submit, ex.collect, ex.abandon))
    assert all(b is None for b in ex.busy)


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(in_order([1], 0, lambda i, s: i, lambda t: t, lambda t: None))


class FakeGraph:
    def __init__(self, name: str, launches: list[str]) -> None:
        self.name = name
        self.launches = launches
        self.freed = 0

    def launch(self) -> None:
        self.launches.append(self.name)

    def free(self) -> None:
        self.freed += 1


class Recorder:
    """A capture function: runs the enqueue (as a capture would record it) and returns a graph;
    fails for keys listed in ``refuse``."""

    def __init__(self, refuse=()) -> None:
        self.captured: list[str] = []
        self.launches: list[str] = []
        self.graphs: list[FakeGraph] = []
        self.refuse = set(refuse)
        self.current = ""

    def __call__(self, enqueue):
        if self.current in self.refuse:
            raise GraphCaptureError(f"{self.current} enqueues something not capturable")
        enqueue()
        self.captured.append(self.current)
        graph = FakeGraph(self.current, self.launches)
        self.graphs.append(graph)
        return graph


def run(cache: GraphCache, rec: Recorder, key: ChainKey, eager: list, changed=False) -> str:
    rec.current = f"{key.batch}x{key.height}x{key.width}"
    return cache.run(key, lambda: eager.append(rec.current), changed)


A, B, C = ChainKey(1, 420, 580), ChainKey(1, 480, 640), ChainKey(2, 420, 580)


def test_a_key_runs_eagerly_once_then_is_captured_then_replayed():
    rec, eager = Recorder(), []
    cache = GraphCache(4, rec)
    assert run(cache, rec, A, eager, changed=True) == "eager"
    assert run(cache, rec, A, eager) == "captured"
    assert run(cache, rec, A, eager) == "graph"
    assert run(cache, rec, A, eager) == "graph"
    assert rec.captured == ["1x420x580"] and rec.launches == ["1x420x580"] * 3
    assert eager == ["1x420x580", "1x420x580"]  # the warm-up run, then the captured enqueue


def test_a_change_of_engine_shapes_drops_graphs_and_warm_ups():
    rec, eager = Recorder(), []
    cache = GraphCache(4, rec)
    run(cache, rec, A, eager, changed=True)
    assert run(cache, rec, A, eager) == "captured"
    # B has A's batch: only the frame size (kernel arguments) differs, A's graph stays.
    assert run(cache, rec, B, eager) == "eager"
    assert run(cache, rec, B, eager) == "captured"
    assert cache.graphs() == 2
    assert run(cache, rec, C, eager, changed=True) == "eager"  # batch 2: set_input_shape ran
    graph_a, graph_b = rec.graphs
    assert graph_a.freed == graph_b.freed == 1 and cache.keys() == [C]
    # Back to batch 1: warmed up again before A is captured again.
    assert run(cache, rec, A, eager, changed=True) == "eager"
    assert run(cache, rec, A, eager) == "captured"


def test_least_recently_used_graphs_are_freed_beyond_capacity():
    rec, eager = Recorder(), []
    cache = GraphCache(2, rec)
    for key in (A, A, B, B):
        run(cache, rec, key, eager)
    graph_a, graph_b = rec.graphs
    run(cache, rec, A, eager)  # A is now the most recently used
    run(cache, rec, ChainKey(1, 100, 100), eager)
    assert graph_b.freed == 1 and graph_a.freed == 0
    assert cache.keys() == [A, ChainKey(1, 100, 100)]
    cache.clear()
    assert graph_a.freed == 1 and cache.keys() == [] and cache.graphs() == 0


def test_a_key_that_cannot_be_captured_runs_eagerly_from_then_on(caplog):
    rec, eager = Recorder(refuse={"1x420x580"}), []
    cache = GraphCache(4, rec)
    run(cache, rec, A, eager)
    with caplog.at_level(logging.WARNING, logger="bpedge"):
        assert run(cache, rec, A, eager) == "eager"
        assert run(cache, rec, A, eager) == "eager"
        run(cache, rec, C, eager, changed=True)
        assert run(cache, rec, A, eager, changed=True) == "eager"
        assert run(cache, rec, A, eager) == "eager"
    assert caplog.text.count("without a CUDA graph") == 1
    assert rec.captured == [] and eager.count("1x420x580") == 5


def test_graphs_disabled_always_enqueue():
    rec, eager = Recorder(), []
    cache = GraphCache(4, rec, enabled=False)
    assert [run(cache, rec, A, eager) for _ in range(3)] == ["eager"] * 3
    assert rec.captured == []
