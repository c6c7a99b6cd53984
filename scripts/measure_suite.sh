#!/usr/bin/env bash
# What the test suite costs, measured as CI sees it: a fresh clone of this repository, then
# `bash .ci/run` (= make test, set-up included) timed, the peak disk under pytest's temporary
# folder sampled every 2 s, then `make test-fast`. Run it with nothing else on the machine.
#   bash scripts/measure_suite.sh [WORKDIR]      (default: a new folder under /tmp)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/fkt-suite.XXXXXX)}"
TMPBASE="/tmp/pytest-of-$(id -un)"
rm -rf "$TMPBASE"
git clone -q "$REPO" "$WORK/clone"
cd "$WORK/clone"
echo "commit $(git log --oneline -1); $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) cores; $(date -u +%FT%TZ)"
( set +e; while true; do s=$(du -sk "$TMPBASE" 2>/dev/null | cut -f1); echo "${s:-0}"; sleep 2; done ) \
  > "$WORK/disk.txt" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT
start=$SECONDS
bash .ci/run > "$WORK/ci.log" 2>&1 || { echo "make test failed: see $WORK/ci.log"; exit 1; }
echo "make test (fresh clone, set-up included): $((SECONDS - start)) s; $(grep -E '[0-9]+ passed' "$WORK/ci.log" | tail -1)"
kill $SAMPLER 2>/dev/null || true
peak=$(sort -n "$WORK/disk.txt" | tail -1)
echo "peak disk under $TMPBASE: $((peak / 1024)) MB; left after: $(du -sk "$TMPBASE" 2>/dev/null | cut -f1) KB"
start=$SECONDS
make test-fast > "$WORK/fast.log" 2>&1 || { echo "make test-fast failed: see $WORK/fast.log"; exit 1; }
echo "make test-fast: $((SECONDS - start)) s; $(grep -E '[0-9]+ passed' "$WORK/fast.log" | tail -1)"
