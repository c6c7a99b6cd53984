#!/usr/bin/env bash
# The one command sent to a lent GPU machine (see /work/.library/device), with everything kept out
# of $OUT except the small files that come back (at most 8):
#   scripts/device_run.sh [gpu-check]   the speed checks (scripts/gpu_check.sh)
#   scripts/device_run.sh robustness    the robustness study (scripts/robustness_study.sh), on the
#                                       Fashion-MNIST files carried in .gpu-data/fashion-mnist
set -uo pipefail
JOB="${1:-gpu-check}"
WORK=/tmp/fkt-device
case "$JOB" in
  gpu-check)
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-240} TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-150} COMPILE_TIMEOUT=${COMPILE_TIMEOUT:-130} \
      bash scripts/gpu_check.sh "$WORK" > "$OUT/log.txt" 2>&1
    rc=$?
    for f in summary.txt env.txt bench.json bench-compile.json train.log; do
      [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "$OUT/"
    done
    [[ -f "$WORK/train/metrics.json" ]] && cp "$WORK/train/metrics.json" "$OUT/train-metrics.json" ;;
  robustness)
    DATA_ROOT="${DATA_ROOT:-$PWD/.gpu-data/fashion-mnist}" bash scripts/robustness_study.sh "$WORK" > "$OUT/log.txt" 2>&1
    rc=$?
    cp "$WORK/summary.txt" "$OUT/" 2>/dev/null
    for d in "$WORK"/budget-*/; do
      k="$(basename "$d")"
      for f in results.md results.csv; do [[ -f "$d/$f" ]] && cp "$d/$f" "$OUT/$k-$f"; done
    done
    for fmt in torchscript onnx; do
      [[ -f "$WORK/export-$fmt/model.json" ]] && cp "$WORK/export-$fmt/model.json" "$OUT/model-$fmt.json"
    done ;;
  *) echo "unknown job $JOB (gpu-check or robustness)"; exit 2 ;;
esac
tail -c 6000 "$OUT/log.txt"
exit $rc
