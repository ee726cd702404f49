"""The machine's measured matrix-multiply ceilings: float32 GEMM GFLOP/s (NumPy and PyTorch), and
the bf16 and int8 GEMM ceilings measured the same way (PyTorch: ``torch.mm`` on bfloat16 tensors,
``torch._int_mm`` int8 x int8 -> int32; ONNX Runtime: ``MatMulInteger`` uint8 x int8 -> int32, the
MLAS kernels its INT8 models run, where ``onnx`` is installed to build that one-node model).

A precision's ceiling is never below the float32 one: bf16 and int8 values are exact in float32,
so a CPU without native bf16 or int8 arithmetic can always multiply them at the float32 rate
(on such a CPU PyTorch's bf16 and int8 products take a slow reference path: 0.7 and 1.9 G op/s
against 70 GFLOP/s float32 on an AVX2-only EPYC, which would put every row at 2,000% "of the
ceiling").

A model's achieved GFLOP/s means little on its own; against what this CPU reaches on a large,
cache-friendly GEMM of the row's precision in the same run (same load, same thread count) it says
how far a runtime is from the hardware limit. Each ceiling is the best of several timed products (a
ceiling, not an average), each ``2 * n**3`` operations. fp16 rows are read against the fp32
ceiling (CPUs without native FP16 arithmetic convert to float32).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GemmCeiling:
    """Best float32 GEMM throughput measured per library, GFLOP/s, for ``n`` x ``n`` matrices.

    ``numpy_threads`` is ``None`` because NumPy's BLAS picks its own thread count (set
    ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` before starting Python to pin it); ``torch`` is
    ``None`` where PyTorch is not installed.
    """

    n: int
    numpy_gflops: float
    torch_gflops: float | None
    torch_threads: int | None
    bf16_gflops: float | None = None
    int8_gops: float | None = None
    int8_onnxruntime_gops: float | None = None

    @property
    def gflops(self) -> float:
        """The ceiling: the faster of the two libraries."""
        return max(self.numpy_gflops, self.torch_gflops or 0.0)

    def for_precision(self, precision: str) -> float | None:
        """The ceiling a row of ``precision`` is read against: the best product measured in that
        precision, and never below the float32 ceiling (see the module docstring)."""
        if precision == "bf16":
            return max(self.bf16_gflops or 0.0, self.gflops)
        if precision == "int8":
            return max(self.int8_gops or 0.0, self.int8_onnxruntime_gops or 0.0, self.gflops)
        return self.gflops

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "numpy_gflops": self.numpy_gflops, "torch_gflops": self.torch_gflops,
                "torch_threads": self.torch_threads, "gflops": self.gflops,
                "bf16_gflops": self.bf16_gflops, "int8_gops": self.int8_gops,
                "int8_onnxruntime_gops": self.int8_onnxruntime_gops}


def best_gflops(matmul: Callable[[], object], n: int, seconds: float, min_repeats: int = 3) -> float:
    """Time ``matmul`` (one ``n`` x ``n`` product) repeatedly for about ``seconds`` (at least
    ``min_repeats`` times, after one untimed call) and return the best GFLOP/s."""
    if n < 1 or seconds < 0 or min_repeats < 1:
        raise ValueError(f"need n >= 1, seconds >= 0, min_repeats >= 1; got {n}, {seconds}, "
                         f"{min_repeats}")
    matmul()  # first call: thread pool start-up, page faults
    best = float("inf")
    deadline = time.perf_counter() + seconds
    repeats = 0
    while repeats < min_repeats or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - t0)
        repeats += 1
    return 2.0 * n**3 / best / 1e9


def measure_ceiling(n: int = 1024, seconds: float = 1.0, threads: int | None = None,
                    low_precision: bool = True) -> GemmCeiling:
    """Measure NumPy's and (if installed) PyTorch's float32 GEMM for about ``seconds`` each, and
    with ``low_precision`` PyTorch's bf16 and int8 GEMM and ONNX Runtime's int8 GEMM too.

    ``threads`` sets ``torch.set_num_threads`` for the PyTorch product (the same count the
    benchmarked runtimes use); ``None`` keeps PyTorch's current setting.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    numpy_gflops = best_gflops(lambda: a @ b, n, seconds)
    int8_ort = _onnxruntime_int8_gops(n, seconds, threads) if low_precision else None
    try:
        import torch
    except ImportError:
        return GemmCeiling(n, numpy_gflops, None, None, int8_onnxruntime_gops=int8_ort)
    if threads is not None:
        torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.inference_mode():
        torch_gflops = best_gflops(lambda: torch.mm(ta, tb), n, seconds)
        bf16 = int8 = None
        if low_precision:
            ha, hb = ta.bfloat16(), tb.bfloat16()
            bf16 = best_gflops(lambda: torch.mm(ha, hb), n, seconds)
            qa = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            qb = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            try:
                int8 = best_gflops(lambda: torch._int_mm(qa, qb), n, seconds)
            except RuntimeError:  # a PyTorch build without a CPU int8 GEMM
                int8 = None
    return GemmCeiling(n, numpy_gflops, torch_gflops, torch.get_num_threads(), bf16, int8, int8_ort)


def _onnxruntime_int8_gops(n: int, seconds: float, threads: int | None) -> float | None:
    """ONNX Runtime's ``MatMulInteger`` (uint8 activations x int8 weights -> int32, the weights a
    constant as in a model) in G op/s; None where ``onnx`` is not installed to build the model."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(1)
    weights = rng.integers(-128, 128, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
        [numpy_helper.from_array(weights, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    return best_gflops(lambda: session.run(None, feed), n, seconds)
