#!/usr/bin/env bash
# The first GPU run of bpedge, prepared: everything GPU-side checked in one unattended command.
#
#   benchmarks/gpu_check.sh OUT_DIR
#
# On a machine with an NVIDIA GPU and driver, from a fresh checkout (run it from anywhere):
#   1. reads the CUDA major the driver supports (nvidia-smi) and, unless TensorRT and bpedge
#      already import, installs bpedge with the matching extra ([tensorrt-cu12] or
#      [tensorrt-cu13], plus [dev]) into OUT_DIR/venv;
#   2. bpedge doctor (JSON), requiring the TensorRT backend;
#   3. a tiny bundle: phantom data + short training + export (bpedge demo --fast);
#   4. build-engines fp32 and fp16 (batch <= 4);
#   5. TensorRT against ONNX Runtime on held-out frames (Dice, score, box), graphs against eager,
#      a batch against single frames, streaming (benchmarks/gpu_compare.py);
#   6. bpedge bench on the tensorrt and onnxruntime backends (JSON);
#   7. pytest -m gpu (the real-GPU tests);
#   8. INT8: the demo's checkpoints exported with --int8, INT8 engines built from the symmetric QDQ
#      files (build-engines -p int8), and bench of TensorRT fp16 against int8 (JSON);
# and writes OUT_DIR/summary.json: each step's status, seconds and log file. PYTHON=/path/to/python
# uses an interpreter that already has bpedge[dev] and TensorRT (no install, no network needed). Exit status 0 when
# every step passed, 1 otherwise. Without a GPU it exits 1 at once and runs nothing.
# Budget: every step after the install has a time limit, and the limits add up to 10 minutes
# (15 + 90 + 90 + 45 + 40 + 200 + 120 s; the INT8 step exports, builds four engines and benches);
# the install is bounded at 10 minutes. Not yet run on a GPU.
set -uo pipefail

usage() {
  echo "usage: $0 OUT_DIR   (run on a machine with an NVIDIA GPU and driver)" >&2
}

if [[ $# -ne 1 || "$1" == -* ]]; then
  usage
  exit 2
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU); nothing was run" >&2
  exit 1
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
STEPS="$OUT/steps.tsv"
: >"$STEPS"
START=$(date +%s)

# step NAME SECONDS COMMAND...: run it (killed after SECONDS) with its output in OUT/NAME.log,
# and record its exit status and duration.
step() {
  local name=$1 limit=$2
  shift 2
  local begin end status
  begin=$(date +%s)
  echo "gpu_check: $name (at most $limit s) ..." >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  status=$?
  end=$(date +%s)
  printf '%s\t%s\t%s\n' "$name" "$status" "$((end - begin))" >>"$STEPS"
  if [[ $status -eq 0 ]]; then
    echo "gpu_check: $name passed in $((end - begin)) s" >&2
  else
    echo "gpu_check: $name FAILED (exit $status), see $OUT/$name.log" >&2
  fi
  return "$status"
}

CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
case "$CUDA_MAJOR" in
  12 | 13) EXTRA="tensorrt-cu$CUDA_MAJOR" ;;
  *)
    echo "gpu_check: the driver supports CUDA '${CUDA_MAJOR:-unknown}'; bpedge needs 12 or 13" >&2
    exit 1
    ;;
esac
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

PYTHON=${PYTHON:-python3}
HOST_PYTHON=$PYTHON # writes the summary even when the install failed
already_installed() {
  "$PYTHON" - <<'EOF' >/dev/null 2>&1
import bpedge, tensorrt, cuda.bindings.runtime, torch  # noqa: F401
assert hasattr(tensorrt, "Builder")
EOF
}

install_bpedge() {
  "$PYTHON" -m venv "$OUT/venv" &&
    "$OUT/venv/bin/python" -m pip install --upgrade pip || return 1
  # The CPU build of torch is enough (training the tiny models runs on the CPU) and is a tenth of
  # the download of PyPI's CUDA build; where its index is unreachable, PyPI's comes with [dev].
  "$OUT/venv/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1" \
    --index-url https://download.pytorch.org/whl/cpu ||
    echo "gpu_check: the PyTorch CPU index is unreachable; torch comes from PyPI" >&2
  "$OUT/venv/bin/python" -m pip install -e "${REPO}[dev,${EXTRA}]"
}

if already_installed; then
  printf 'install\t0\t0\n' >>"$STEPS"
  echo "gpu_check: bpedge, TensorRT, cuda-bindings and torch already import: not installing" >&2
else
  export -f install_bpedge
  export PYTHON OUT REPO EXTRA
  # A function cannot be run by timeout itself: an inner bash runs it, killed as a whole.
  step install 600 bash -c 'install_bpedge' || true
  PYTHON="$OUT/venv/bin/python"
fi
BPEDGE=("$PYTHON" -m bpedge._cli.app)

cd "$REPO" || exit 1
step doctor 15 "${BPEDGE[@]}" doctor --json "$OUT/doctor.json" --require "tensorrt fp16" || true
step bundle 90 "${BPEDGE[@]}" demo --out "$OUT/demo" --fast --no-progress || true
BUNDLE="$OUT/demo/bundle"
step build_engines 90 "${BPEDGE[@]}" build-engines "$BUNDLE" -p fp32 -p fp16 --max-batch 4 \
  --timing-cache "$OUT/timing.cache" --no-progress || true
step compare 45 "$PYTHON" "$REPO/benchmarks/gpu_compare.py" "$BUNDLE" "$OUT/demo/heldout" \
  "$OUT/compare.json" || true
step bench 40 "${BPEDGE[@]}" bench "$BUNDLE" --data "$OUT/demo/heldout" \
  --backends tensorrt,onnxruntime --precisions fp32,fp16 --seconds 3 --warmup-seconds 1 \
  --json "$OUT/bench.json" --no-progress || true
step pytest_gpu 200 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider \
  --junitxml "$OUT/pytest_gpu.xml" tests || true
int8_engines() {
  local cli=("$PYTHON" -m bpedge._cli.app)
  "${cli[@]}" export --detector "$OUT/demo/runs/detector/best.pt" \
    --segmenter "$OUT/demo/runs/unet/best.pt" --out "$OUT/int8_bundle" --data "$OUT/demo/data" \
    --int8 --calibration-frames 8 &&
    "${cli[@]}" build-engines "$OUT/int8_bundle" -p fp16 -p int8 --max-batch 4 --no-progress &&
    "${cli[@]}" bench "$OUT/int8_bundle" --data "$OUT/demo/heldout" --backends tensorrt \
      --precisions fp16,int8 --seconds 2 --warmup-seconds 1 --json "$OUT/bench_int8.json" \
      --no-progress
}
export -f int8_engines
export PYTHON OUT
# As for the install: a function runs under timeout through an inner bash.
step int8 120 bash -c int8_engines || true

"$HOST_PYTHON" - "$OUT" "$START" "$CUDA_MAJOR" <<'EOF'
import json, sys, time
from pathlib import Path

out, start, cuda_major = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    steps.append({"step": name, "ok": status == "0", "exit_status": int(status),
                  "seconds": int(seconds), "log": str(out / f"{name}.log")})
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None
summary = {
    "ok": all(s["ok"] for s in steps) and len(steps) == 8,
    "driver_cuda_major": int(cuda_major),
    "seconds": round(time.time() - start),
    "steps": steps,
    "compare": load("compare.json"),
    "bench_json": str(out / "bench.json") if (out / "bench.json").is_file() else None,
    "bench_int8_json": (str(out / "bench_int8.json") if (out / "bench_int8.json").is_file()
                        else None),
    "doctor": load("doctor.json"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"gpu_check: {'all steps passed' if summary['ok'] else 'some steps FAILED'} in "
      f"{summary['seconds']} s; wrote {out / 'summary.json'}", file=sys.stderr)
sys.exit(0 if summary["ok"] else 1)
EOF
