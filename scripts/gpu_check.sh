#!/usr/bin/env bash
# The GPU check, in one go on one GPU, in under 8 minutes:
#   1. `fkt bench` on cuda, bf16-mixed, ResNet-18 (small stem) at 32 px, batch 512, all four methods,
#      fkt against the bare PyTorch loop;
#   2. "100 epochs of functional ResNet-18 on 50,000 32x32 images", extrapolated from the measured
#      functional-clean throughput;
#   3. a real bf16 `fkt train` (functional, TRAIN_EPOCHS epochs) on generated data in the CIFAR-10
#      python layout (the GPU machine has no datasets), with the 100-epoch time it implies;
#   4. optionally (COMPILE_METHODS, empty to skip) `fkt bench --compile-mode COMPILE_MODE` for those
#      methods (default reduce-overhead: the backbone as CUDA graphs, for the launch-bound 32 px step);
#   5. optionally (CACHE_JPEGS, 0 to skip) ResNet-50 at 224 px from the image cache
#      (benchmarks/cache_bench.py --cached-only): images/s and the share of time waiting for data.
#
# Usage: scripts/gpu_check.sh [OUTDIR]        (default: $OUT, else ./gpu-check)
# Everything goes to OUTDIR: env.txt, bench.json, bench.txt, extrapolation.txt, data/, train/,
# train.log, summary.txt.
#
# Every size is an environment variable, so that the logic runs on a CPU too, e.g.
#   DEVICE=cpu PRECISION=32-true BATCH=8 SIZE=16 STEPS=1 WARMUP=1 REPEATS=1 \
#   TRAIN_PER_CLASS=4 TEST_PER_CLASS=2 TRAIN_BATCH=8 scripts/gpu_check.sh /tmp/check
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"  # REPO, PY, PYTHONPATH, carried wheels
OUTDIR="${1:-${OUT:-./gpu-check}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

DEVICE="${DEVICE:-cuda}"
PRECISION="${PRECISION:-bf16-mixed}"
METHODS="${METHODS:-supervised,simclr,functional-clean,functional-view}"
BACKBONE="${BACKBONE:-resnet18}"
STEM="${STEM:-small}"
SIZE="${SIZE:-32}"
BATCH="${BATCH:-512}"
STEPS="${STEPS:-30}"
WARMUP="${WARMUP:-10}"
REPEATS="${REPEATS:-3}"
EPOCHS_X="${EPOCHS_X:-100}"            # the extrapolation: epochs ...
IMAGES_X="${IMAGES_X:-50000}"          # ... over this many images
TRAIN_PER_CLASS="${TRAIN_PER_CLASS:-5000}"
TEST_PER_CLASS="${TEST_PER_CLASS:-1000}"
TRAIN_BATCH="${TRAIN_BATCH:-$BATCH}"
TRAIN_EPOCHS="${TRAIN_EPOCHS:-3}"
COMPILE_METHODS="${COMPILE_METHODS-functional-clean}"
COMPILE_TIMEOUT="${COMPILE_TIMEOUT:-150}"
COMPILE_MODE="${COMPILE_MODE:-reduce-overhead}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-300}"  # seconds; with the training's, well under 8 minutes
TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-150}"
CACHE_JPEGS="${CACHE_JPEGS:-6000}"     # Intel-size JPEGs for the ResNet-50 224 px epoch from the cache
CACHE_BACKBONE="${CACHE_BACKBONE:-resnet50}"
CACHE_SIZE="${CACHE_SIZE:-224}"
CACHE_BATCH="${CACHE_BATCH:-128}"
CACHE_TIMEOUT="${CACHE_TIMEOUT:-240}"

case "$DEVICE" in cpu) ACCEL=cpu ;; *) ACCEL=gpu ;; esac

SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
FAILED=()   # a phase that fails is noted and the next one still runs: one GPU session, all the evidence
START=$SECONDS

# run_bench TIMEOUT NAME METHODS [FLAGS...]: the run's sizes, NAME.json and NAME.txt in OUTDIR
run_bench() {
  local limit="$1" name="$2" methods="$3"
  shift 3
  timeout "$limit" "$PY" -m fkt bench --device "$DEVICE" --precision "$PRECISION" --backbone "$BACKBONE" \
    --stem "$STEM" --image-size "$SIZE" --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" \
    --repeats "$REPEATS" --methods "$methods" --out "$OUTDIR/$name.json" "$@" | tee "$OUTDIR/$name.txt"
}

# --- 0. where this ran
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "uptime: $(uptime)"
  "$PY" -c 'import os, torch; print("python", __import__("platform").python_version(), "torch", torch.__version__,
"cuda", torch.version.cuda, "gpus", torch.cuda.device_count(), "cpus", os.cpu_count())'
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
  fi
} 2>&1 | tee "$OUTDIR/env.txt"

# --- 1. throughput, fkt against bare PyTorch
note "== fkt bench: $BACKBONE ($STEM stem) ${SIZE}px batch $BATCH $PRECISION on $DEVICE, methods $METHODS"
if run_bench "$BENCH_TIMEOUT" bench "$METHODS"; then
  cat "$OUTDIR/bench.txt" >> "$SUMMARY"
  note "bench done at $((SECONDS - START)) s"
  # --- 2. the long run, extrapolated
  XMETHOD=functional-clean
  [[ ",$METHODS," == *",functional-clean,"* ]] || XMETHOD="${METHODS%%,*}"
  "$PY" "$REPO/benchmarks/extrapolate.py" "$OUTDIR/bench.json" --method "$XMETHOD" --epochs "$EPOCHS_X" \
    --images "$IMAGES_X" | tee "$OUTDIR/extrapolation.txt" || FAILED+=(extrapolation)
  cat "$OUTDIR/extrapolation.txt" >> "$SUMMARY" 2>/dev/null || true
else
  FAILED+=("bench (exit or timeout after $BENCH_TIMEOUT s)")
  note "bench FAILED at $((SECONDS - START)) s"
fi

# --- 3. a real bf16 training epoch on generated CIFAR-10-layout data
"$PY" "$REPO/benchmarks/synthetic_cifar.py" "$OUTDIR/data" --train-per-class "$TRAIN_PER_CLASS" \
  --test-per-class "$TEST_PER_CLASS" | tee -a "$SUMMARY"
TRAIN_START=$SECONDS
if ! timeout "$TRAIN_TIMEOUT" "$PY" -m fkt train --method functional --dataset cifar10 --data-root "$OUTDIR/data" \
    --backbone "$BACKBONE" --stem "$STEM" --image-size 32 --batch-size "$TRAIN_BATCH" --epochs "$TRAIN_EPOCHS" \
    --precision "$PRECISION" --accelerator "$ACCEL" --devices 1 --no-progress --out "$OUTDIR/train" \
    > "$OUTDIR/train.log" 2>&1; then
  FAILED+=("train (exit or timeout after $TRAIN_TIMEOUT s; see train.log)")
  tail -n 20 "$OUTDIR/train.log"
fi
TRAIN_WALL=$((SECONDS - TRAIN_START))
[[ -f "$OUTDIR/train/metrics.json" ]] && "$PY" - "$OUTDIR/train/metrics.json" "$TRAIN_WALL" "$EPOCHS_X" <<'EOF' | tee -a "$SUMMARY"
import json, sys
m = json.load(open(sys.argv[1]))
c = m["compute"]
epochs, target = c["epochs"], int(sys.argv[3])
images = c["image_passes"] / 3  # functional with the clean input: 3 passes per image
rate = images / c["train_seconds"] if c["train_seconds"] else float("nan")
per_epoch = c["train_seconds"] / epochs
print(f"train: functional {m['backbone']}, {epochs} epoch(s) on {m['dataset']} (generated): {c['image_passes']:,} image "
      f"passes, fit {c['train_seconds']:.1f} s ({rate:,.0f} images/s, validation and start-up included), "
      f"wall {sys.argv[2]} s with data loading and test evaluation; "
      f"val acc {100 * m['val']['accuracy']:.1f}%, test acc {100 * m['test']['accuracy']:.1f}%")
print(f"from the real run: {target} epochs of {images / epochs:,.0f} images at {per_epoch:.1f} s an epoch "
      f"(validation and start-up included) -> {target * per_epoch / 60:.1f} min")
EOF
# --- 4. torch.compile, optional
if [[ -n "$COMPILE_METHODS" ]]; then
  note "== fkt bench --compile-mode $COMPILE_MODE: methods $COMPILE_METHODS"
  if run_bench "$COMPILE_TIMEOUT" bench-compile "$COMPILE_METHODS" --compile-mode "$COMPILE_MODE"; then
    cat "$OUTDIR/bench-compile.txt" >> "$SUMMARY"
  else
    FAILED+=("bench --compile-mode $COMPILE_MODE (exit or timeout after $COMPILE_TIMEOUT s)")
  fi
fi

# --- 5. ResNet-50 at 224 px from the image cache
if ((CACHE_JPEGS > 0)); then
  note "== ${CACHE_BACKBONE} at ${CACHE_SIZE} px from the image cache: $CACHE_JPEGS generated JPEGs"
  if timeout "$CACHE_TIMEOUT" "$PY" "$REPO/benchmarks/cache_bench.py" --pngs 0 --jpegs "$CACHE_JPEGS" --cached-only \
      --backbone "$CACHE_BACKBONE" --image-size "$CACHE_SIZE" --batch-size "$CACHE_BATCH" --accelerator "$ACCEL" \
      --precision "$PRECISION" > "$OUTDIR/cache.txt" 2>&1; then
    cat "$OUTDIR/cache.txt" >> "$SUMMARY"
  else
    FAILED+=("cache bench (exit or timeout after $CACHE_TIMEOUT s; see cache.txt)")
    tail -n 20 "$OUTDIR/cache.txt"
  fi
fi

note "gpu check done in $((SECONDS - START)) s; everything is in $OUTDIR"
if ((${#FAILED[@]})); then
  note "FAILED: ${FAILED[*]}"
  exit 1
fi
