#!/usr/bin/env bash
# Relay comparison: rtpengine (userspace) and Switchboard side by side on loopback, in one
# alternating run per call count. Writes JSON reports to $OUT (default target/bench/).
# Usage: perf/scripts/relay-compare.sh [CALLS...]   (default: 100 1000)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/bench}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
calls=("$@")
[ ${#calls[@]} -gt 0 ] || calls=(100 1000)

command -v rtpengine >/dev/null || { echo "rtpengine is not installed (make deps)" >&2; exit 1; }
cargo build --release --locked -q -p switchboard-engine -p switchboard-bench

state=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$state"; }
trap cleanup EXIT

rtpengine --config-file=none --table=-1 --interface=127.0.0.1 --listen-ng=127.0.0.1:22222 \
  --port-min=50000 --port-max=57999 --foreground --log-stderr --log-level=3 \
  >"$OUT/rtpengine.log" 2>&1 &
rtpe=$!; pids+=("$rtpe")
target/release/switchboard serve --listen-ng 127.0.0.1:22300 --listen-control 127.0.0.1:22301 \
  --listen-http 127.0.0.1:22302 --port-min 30000 --port-max 39999 --state-dir "$state" \
  >"$OUT/switchboard.log" 2>&1 &
sb=$!; pids+=("$sb")
sleep 1

for n in "${calls[@]}"; do
  threads=1; [ "$n" -ge 500 ] && threads=2
  echo "== $n calls =="
  target/release/switchboard-load --quiet relay --compare \
    --ng 127.0.0.1:22222 --pid "$rtpe" --ng-b 127.0.0.1:22300 --pid-b "$sb" \
    --calls "$n" --duration "$DURATION" --rounds "$ROUNDS" --threads "$threads" \
    | tee "$OUT/relay-$n.txt"
  target/release/switchboard-load --quiet --json relay --compare \
    --ng 127.0.0.1:22222 --pid "$rtpe" --ng-b 127.0.0.1:22300 --pid-b "$sb" \
    --calls "$n" --duration "$DURATION" --rounds 1 --threads "$threads" >"$OUT/relay-$n.json"
done
echo "reports in $OUT"
