"""What INT8 would give a detector that did not ship in INT8 (speed only, never accuracy).

    python benchmarks/int8_detector_speed.py BUNDLE OUT.json [--threads 2] [--repeats 6]

A detector that fails its INT8 gate is not shipped, so ``bpedge bench`` runs it in FP32 and shows
nothing about INT8 speed. This quantises the bundle's FP32 detector at FP32 level 0 (the
export's first level) in both QDQ forms, calibrated on random inputs (speed does not depend on
the calibration; the files are written beside OUT.json and are NOT fit for use), and times one
batch-1 inference of each against the FP32 file, rows interleaved, on ONNX Runtime and OpenVINO
(FP32, BF16 where the CPU has it, and INT8), same input and thread count. Prints and writes the
median ms of each row and its ratio to ONNX Runtime FP32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bpedge.export.int8 import FORMS, quantize_int8

from bpedge.bundle import Bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    bundle = Bundle.open(args.bundle)
    entry = bundle.manifest.models["detector"]
    name = entry.inputs[0].name
    h, w = (int(d) for d in entry.inputs[0].shape[2:])
    src = str(bundle.onnx_path("detector", "fp32"))
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((8, 1, h, w)).astype(np.float32)
    files = {}
    for form in FORMS:
        files[form] = args.out.with_name(f"{args.out.stem}.detector.int8-{form}.onnx")
        quantize_int8(src, files[form], "detector", name, calibration, 0, FORMS[form])
    x = rng.standard_normal((1, 1, h, w)).astype(np.float32)

    def onnxruntime_row(path: str) -> Callable[[], object]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {name: x})

    rows = {"ONNX Runtime fp32": onnxruntime_row(src)}
    for form, path in files.items():
        rows[f"ONNX Runtime int8 ({form} form)"] = onnxruntime_row(str(path))
    try:
        import openvino as ov
    except ImportError:
        ov = None
    if ov is not None:
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")

        def openvino_row(path: str, hint: str) -> Callable[[], object]:
            model = core.read_model(path)
            model.reshape({name: [1, 1, h, w]})
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                         "INFERENCE_PRECISION_HINT": hint})
            request = compiled.create_infer_request()
            return lambda: request.infer({name: x})

        rows["OpenVINO fp32"] = openvino_row(src, "f32")
        if "BF16" in caps:
            rows["OpenVINO bf16"] = openvino_row(src, "bf16")
        for form, path in files.items():
            rows[f"OpenVINO int8 ({form} form)"] = openvino_row(str(path), "f32")

    for run in rows.values():  # warm-up
        run()
        run()
    times: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(args.repeats):
        for label, run in rows.items():
            start = time.perf_counter()
            run()
            times[label].append((time.perf_counter() - start) * 1e3)
    base = statistics.median(times["ONNX Runtime fp32"])
    result = {
        "bundle": str(args.bundle.resolve()), "detector_input_hw": [h, w],
        "threads": args.threads, "repeats": args.repeats,
        "rows": {label: {"median_ms": round(statistics.median(v), 1),
                         "speedup_vs_onnxruntime_fp32": round(base / statistics.median(v), 2)}
                 for label, v in times.items()},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for label, row in result["rows"].items():
        print(f"{label:34s} {row['median_ms']:9.1f} ms  {row['speedup_vs_onnxruntime_fp32']:.2f}x")


if __name__ == "__main__":
    main()
