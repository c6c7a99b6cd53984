#!/usr/bin/env bash
# The robustness and representation study: the `quick` grid (3 arms x SEEDS seeds, compute-matched)
# with accuracy under common corruptions and both probes of each backbone, at the preset's budget
# and at BUDGETS x it (e.g. "1 5": 19,500 and 97,500 passes per arm); then `fkt predict` and
# `fkt export` (TorchScript and ONNX, each checked against the checkpoint) of one of its models.
#
# Usage: scripts/robustness_study.sh OUTDIR   (sizes from the environment; on a CPU, e.g.
#   ACCEL=cpu SEEDS=1 BUDGETS=1 EXTRA="--set data.limit_train=200 --set data.batch_size=32" ...)
# OUTDIR/budget-<k>/results.md per budget; summary.txt gathers them.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"  # REPO, PY, PYTHONPATH, carried wheels
OUTDIR="${1:?usage: robustness_study.sh OUTDIR}"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
ACCEL="${ACCEL:-gpu}"
SEEDS="${SEEDS:-3}"
BUDGETS="${BUDGETS:-1}"
DATA_ROOT="${DATA_ROOT:-}"
EXTRA="${EXTRA:-}"
STUDY_TIMEOUT="${STUDY_TIMEOUT:-300}"  # seconds per budget
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
FAILED=()
START=$SECONDS
"$PY" -c 'import os, platform, torch; print("python", platform.python_version(), "torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
"cpus", os.cpu_count())' | tee -a "$SUMMARY"
echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none), $(date -u +%FT%TZ)" | tee -a "$SUMMARY"

for k in $BUDGETS; do
  out="$OUTDIR/budget-$k"
  # shellcheck disable=SC2086
  if timeout "$STUDY_TIMEOUT" "$PY" -m fkt reproduce --preset quick --seeds "$SEEDS" --accelerator "$ACCEL" \
      ${DATA_ROOT:+--data-root "$DATA_ROOT"} --set trainer.epochs="$k" --set trainer.pretrain_epochs="$k" \
      --set evaluate.corruptions=true --set "evaluate.probes=[knn,linear]" --no-progress $EXTRA \
      --out "$out" > "$OUTDIR/budget-$k.log" 2>&1; then
    { echo; echo "== budget x$k: trainer.epochs=$k, pretrain_epochs=$k ($((SECONDS - START)) s so far)"
      cat "$out/results.md"; } | tee -a "$SUMMARY"
  else
    FAILED+=("budget x$k"); tail -n 20 "$OUTDIR/budget-$k.log"
  fi
done

# predict and export one functional checkpoint of the first budget, on this machine's device
first="${BUDGETS%% *}"
ckpt="$(ls "$OUTDIR/budget-$first"/runs/*-functional-seed0/checkpoints/best.ckpt 2>/dev/null | head -n 1)"
if [[ -n "$ckpt" ]]; then
  for fmt in torchscript onnx; do
    "$PY" -m fkt export --checkpoint "$ckpt" --format "$fmt" ${DATA_ROOT:+--data-root "$DATA_ROOT"} \
      --out "$OUTDIR/export-$fmt" 2>&1 | tee -a "$SUMMARY" || FAILED+=("export $fmt")
  done
else
  FAILED+=("no functional checkpoint to export")
fi
echo "done in $((SECONDS - START)) s" | tee -a "$SUMMARY"
if ((${#FAILED[@]})); then echo "FAILED: ${FAILED[*]}" | tee -a "$SUMMARY"; exit 1; fi
