#!/usr/bin/env bash
# The one command sent to a lent GPU machine (see /work/.library/device): the GPU check, with
# everything kept out of $OUT except the small files that come back.
set -uo pipefail
WORK=/tmp/gpu-check
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240} TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-150} COMPILE_TIMEOUT=${COMPILE_TIMEOUT:-130} \
  bash scripts/gpu_check.sh "$WORK" > "$OUT/log.txt" 2>&1
rc=$?
for f in summary.txt env.txt bench.json bench-compile.json train.log; do
  [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "$OUT/"
done
[[ -f "$WORK/train/metrics.json" ]] && cp "$WORK/train/metrics.json" "$OUT/train-metrics.json"
tail -c 6000 "$OUT/log.txt"
exit $rc
