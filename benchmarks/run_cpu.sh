#!/usr/bin/env bash
# Regenerate benchmarks/results/ on this CPU: every row of the committed table comes from one of
# the `bpedge bench` commands below (each JSON also records its own command line, the machine,
# library versions and the load average before and after).
#
#   benchmarks/run_cpu.sh                 # both bundles
#   WORK=/scratch/bench benchmarks/run_cpu.sh
#
# Bundles and training runs go to $WORK (default /tmp/bpedge-bench), outside the repository;
# finished steps are reused when the script is run again.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
RESULTS="$HERE/results"
WORK="${WORK:-/tmp/bpedge-bench}"
THREADS="${THREADS:-$(python -c 'import os; print(len(os.sched_getaffinity(0)))')}"
SECONDS_PER_ROW="${SECONDS_PER_ROW:-30}"
mkdir -p "$RESULTS" "$WORK"

# 1. The tiny models, trained by the demo (phantom data, subject split), on the demo's held-out
#    subject: speed and accuracy of the models the demo ships.
bpedge demo --out "$WORK/demo" --no-progress
bpedge bench "$WORK/demo/bundle" --data "$WORK/demo/heldout" \
  --threads "$THREADS" --warmup-seconds 5 --seconds "$SECONDS_PER_ROW" \
  --note "tiny preset, trained by 'bpedge demo' (default settings)" \
  --json "$RESULTS/cpu_tiny.json" --no-progress
# The same with one thread per runtime: small models on a busy 2-core machine are where PyTorch's
# OpenMP threads suffer most from other jobs, so this row is the less load-sensitive comparison.
bpedge bench "$WORK/demo/bundle" --data "$WORK/demo/heldout" \
  --threads 1 --warmup-seconds 5 --seconds "$SECONDS_PER_ROW" \
  --note "tiny preset, trained by 'bpedge demo' (default settings); one thread per runtime" \
  --json "$RESULTS/cpu_tiny_1thread.json" --no-progress

# 2. Paper-sized models (RetinaNet ResNet-50 FPN at 416x576, U-Net 32 filters x 5 levels, 5x5):
#    trained for one epoch on 12 phantom frames only, so their accuracy means nothing; they are
#    here for speed, where the runtime matters most.
if [ ! -f "$WORK/paper/bundle/manifest.json" ]; then
  [ -d "$WORK/paper/data" ] || bpedge phantom --out "$WORK/paper/data" --subjects 4 --frames 8 \
    --no-progress
  [ -f "$WORK/paper/detector/best.pt" ] || bpedge train detector --data "$WORK/paper/data" \
    --out "$WORK/paper/detector" --preset paper --epochs 1 --limit 12 --batch-size 2 \
    --no-progress
  [ -f "$WORK/paper/unet/best.pt" ] || bpedge train segmenter --data "$WORK/paper/data" \
    --out "$WORK/paper/unet" --preset paper --arch unet --crop gt --epochs 1 --limit 12 \
    --batch-size 4 --no-progress
  bpedge export --detector "$WORK/paper/detector" --segmenter "$WORK/paper/unet" \
    --out "$WORK/paper/bundle" --data "$WORK/paper/data" --force --include-checkpoints
fi
bpedge bench "$WORK/paper/bundle" --phantom-subjects 1 --phantom-frames 8 \
  --threads "$THREADS" --warmup-seconds 5 --iterations "${PAPER_ITERATIONS:-20}" \
  --note "paper preset sizes, 1 epoch on 12 phantom frames: speed only, accuracy meaningless" \
  --json "$RESULTS/cpu_paper.json" --no-progress

python "$HERE/results_table.py" "$RESULTS/cpu_tiny.json" "$RESULTS/cpu_tiny_1thread.json" \
  "$RESULTS/cpu_paper.json" > "$RESULTS/README.md"
echo "wrote $RESULTS/README.md"
