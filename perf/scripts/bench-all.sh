#!/usr/bin/env bash
# `make bench`: the whole benchmark run. Installs rtpengine if missing (make deps), builds the
# release binaries, starts Switchboard twice (io_uring and epoll drivers) and rtpengine
# (userspace, --table=-1) on loopback with distinct port ranges, runs every scenario of
# switchboard-load (capacity ramps with --compare where rtpengine can take part), the machine
# probe, the ACD router and the criterion micro-benchmarks, then rewrites the generated block
# of docs/performance.md and its charts in docs/perf/. Every process it starts is stopped on
# exit, Ctrl-C included. A full run takes about 20 minutes.
#
# Environment (defaults in brackets):
#   OUT [target/bench]    reports, logs and raw charts
#   STEP_SECONDS [5]      measurement window of every ramp step
#   QUICK [0]             1: smoke run (tiny loads, 1 s windows, short criterion); the docs are
#                         then rewritten only with WRITE_DOC=1
#   WRITE_DOC             1 or 0: rewrite docs/performance.md (default: 1, or 0 with QUICK=1)
#   SKIP_CRITERION [0]    1: no micro-benchmarks
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
CARGO=${CARGO:-cargo}
OUT=${OUT:-target/bench}
QUICK=${QUICK:-0}
STEP_SECONDS=${STEP_SECONDS:-5}
SKIP_CRITERION=${SKIP_CRITERION:-0}
if [ "$QUICK" = 1 ]; then WRITE_DOC=${WRITE_DOC:-0}; else WRITE_DOC=${WRITE_DOC:-1}; fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
LOAD=$BIN/switchboard-load

# Ports: each server has its own NG/control/HTTP ports and media range.
# PORT_BASE moves all of them (default 22200: NG/control/HTTP on 22200-22212). Media ranges,
# from MEDIA_BASE (default 10000): Switchboard io_uring +0..+19999 (10,000 pairs: a 4,000-call
# ramp step needs 8,000), Switchboard epoll +20000..+34999, rtpengine +35000..+54999.
PORT_BASE=${PORT_BASE:-22200}
MEDIA_BASE=${MEDIA_BASE:-10000}
RTPE_NG=127.0.0.1:$((PORT_BASE))
SB_NG=127.0.0.1:$((PORT_BASE + 1)) SB_CTL=127.0.0.1:$((PORT_BASE + 2))
SB_HTTP=127.0.0.1:$((PORT_BASE + 3))
EP_NG=127.0.0.1:$((PORT_BASE + 11)) EP_CTL=127.0.0.1:$((PORT_BASE + 12))
EP_HTTP=127.0.0.1:$((PORT_BASE + 13))

if ! command -v rtpengine >/dev/null || ! command -v espeak-ng >/dev/null; then
  make deps
fi
$CARGO build --release --locked -q -p switchboard-engine -p switchboard-bench

mkdir -p "$OUT"
rm -rf "$OUT/svg" "$OUT"/*.json "$OUT"/*.log "$OUT/criterion.txt"
: >"$OUT/commands.txt"
state=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started() { # NAME PID: fails when the process died at start
  sleep 1.5
  kill -0 "$2" 2>/dev/null || { echo "$1 did not start; see $OUT/$1.server.log" >&2; exit 1; }
}

rtpengine --config-file=none --table=-1 --interface=127.0.0.1 --listen-ng=$RTPE_NG \
  --port-min=$((MEDIA_BASE + 35000)) --port-max=$((MEDIA_BASE + 54999)) --foreground \
  --log-stderr --log-level=3 \
  >"$OUT/rtpengine.server.log" 2>&1 &
RTPE=$!; pids+=("$RTPE"); started rtpengine "$RTPE"
mkdir -p "$state/uring" "$state/epoll"
# Ramp steps follow each other within seconds: a 1 s port quarantine (default 5 s) keeps the
# pairs of the step before from crowding the next one out of the range.
printf '[media]\nport_quarantine = 1\n' >"$state/bench.toml"
"$BIN/switchboard" serve --driver io_uring --listen-ng $SB_NG --listen-control $SB_CTL \
  --listen-http $SB_HTTP --port-min $MEDIA_BASE --port-max $((MEDIA_BASE + 19999)) \
  --state-dir "$state/uring" --config "$state/bench.toml" \
  >"$OUT/switchboard-io_uring.server.log" 2>&1 &
SB=$!; pids+=("$SB"); started switchboard-io_uring "$SB"
"$BIN/switchboard" serve --driver epoll --listen-ng $EP_NG --listen-control $EP_CTL \
  --listen-http $EP_HTTP --port-min $((MEDIA_BASE + 20000)) --port-max $((MEDIA_BASE + 34999)) \
  --state-dir "$state/epoll" --config "$state/bench.toml" \
  >"$OUT/switchboard-epoll.server.log" 2>&1 &
EP=$!; pids+=("$EP"); started switchboard-epoll "$EP"

{
  echo "rtpengine: $(rtpengine --version 2>&1 | head -1)"
  echo "Switchboard: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$OUT/versions.txt"

failures=0
# run NAME ARGS...: one switchboard-load run, its JSON report in $OUT/NAME.json, charts in
# $OUT/svg/NAME; a failure is logged and the run goes on.
run() {
  local name=$1; shift
  local shown
  shown="switchboard-load --json --svg \$OUT/svg/$name $(printf '%q ' "$@")"
  shown=${shown//--pid $RTPE /--pid \$RTPENGINE_PID }
  shown=${shown//--pid $SB /--pid \$SWITCHBOARD_PID }
  shown=${shown//--pid-b $SB /--pid-b \$SWITCHBOARD_PID }
  shown=${shown//--pid $EP /--pid \$SWITCHBOARD_EPOLL_PID }
  echo "$shown" >>"$OUT/commands.txt"
  echo "== $name: $*" >&2
  sleep 2 # the previous run's ports leave quarantine
  if "$LOAD" --json --svg "$OUT/svg/$name" "$@" >"$OUT/$name.json.tmp" 2>"$OUT/$name.log"; then
    mv "$OUT/$name.json.tmp" "$OUT/$name.json"
    tail -n 2 "$OUT/$name.log" >&2 || true
  else
    rm -f "$OUT/$name.json.tmp"
    failures=$((failures + 1))
    echo "   failed: $(tail -n 1 "$OUT/$name.log")" >&2
  fi
}

if [ "$QUICK" = 1 ]; then
  STEP_SECONDS=1
  RELAY=(--ramp-start 10 --ramp-step 10 --ramp-max 20)
  TRANS=(--ramp-start 4 --ramp-step 4 --ramp-max 8)
  OPUS=(--ramp-start 2 --ramp-step 2 --ramp-max 4)
  RECORD=(--ramp-start 10 --ramp-step 10 --ramp-max 20)
  MIX=(--ramp-start 2 --ramp-step 2 --ramp-max 4)
  PROBE=(--rate 5000 --duration 1)
  ACD=(--sim-hours 10)
else
  RELAY=(--ramp-start 500 --ramp-step 500 --ramp-max 4000 --threads 2)
  TRANS=(--ramp-start 100 --ramp-step 100 --ramp-max 800)
  OPUS=(--ramp-start 25 --ramp-step 25 --ramp-max 300)
  RECORD=(--ramp-start 500 --ramp-step 500 --ramp-max 3000 --threads 2)
  MIX=(--ramp-start 50 --ramp-step 50 --ramp-max 600)
  PROBE=(--rate 100000 --duration 5)
  ACD=(--sim-hours 200)
fi
STEP=(--duration "$STEP_SECONDS" --ramp-up 1 --ramp --max-loss 0 --max-p99-ms 20)
# Transcoders play out through a jitter buffer or on their own 20 ms clock: their p99 limit is
# the one-way delay budget of ITU-T G.114 (150 ms), not the relay's 20 ms.
TSTEP=(--duration "$STEP_SECONDS" --ramp-up 1 --ramp --max-loss 0 --max-p99-ms 150)
RTPE_A=(--ng $RTPE_NG --pid "$RTPE" --name "rtpengine (userspace)")

run probe probe "${PROBE[@]}"
run relay relay "${STEP[@]}" "${RELAY[@]}" "${RTPE_A[@]}" --compare \
  --ng-b $SB_NG --pid-b "$SB" --name-b "Switchboard io_uring"
run relay-epoll relay "${STEP[@]}" "${RELAY[@]}" --ng $EP_NG --pid "$EP" \
  --name "Switchboard epoll"
run transcode-pcma transcode --from pcmu --to pcma "${TSTEP[@]}" "${TRANS[@]}" "${RTPE_A[@]}" \
  --compare --ng-b $SB_NG --pid-b "$SB" --name-b "Switchboard io_uring"
run transcode-opus transcode --from pcmu --to opus "${TSTEP[@]}" "${OPUS[@]}" "${RTPE_A[@]}" \
  --compare --ng-b $SB_NG --pid-b "$SB" --name-b "Switchboard io_uring"
run record record "${STEP[@]}" "${RECORD[@]}" --ng $SB_NG --pid "$SB" --name "Switchboard"
run conference conference --members 3 --speakers 3 "${STEP[@]}" "${MIX[@]}" \
  --control $SB_CTL --pid "$SB" --name "Switchboard io_uring"
run barge barge "${STEP[@]}" "${MIX[@]}" --control $SB_CTL --pid "$SB" \
  --name "Switchboard io_uring"
run acd acd --agents 54 --arrivals-per-hour 720 --aht 240 "${ACD[@]}"

cleanup
pids=()

if [ "$SKIP_CRITERION" != 1 ]; then
  if [ "$QUICK" = 1 ]; then crit=(--warm-up-time 0.2 --measurement-time 0.3); else
    crit=(--warm-up-time 0.5 --measurement-time 1); fi
  echo "cargo bench --locked -p switchboard-perf --bench '*' -- ${crit[*]}" >>"$OUT/commands.txt"
  echo "== criterion micro-benchmarks" >&2
  $CARGO bench --locked -q -p switchboard-perf --bench '*' -- "${crit[@]}" >"$OUT/criterion.txt" 2>&1 \
    || { failures=$((failures + 1)); echo "   criterion failed (see $OUT/criterion.txt)" >&2; }
fi

if [ "$WRITE_DOC" = 1 ]; then
  "$LOAD" doc --dir "$OUT" --doc docs/performance.md --charts docs/perf \
    --date "$(date -u '+%Y-%m-%d %H:%M UTC')"
fi
echo "reports in $OUT; $failures step(s) failed" >&2
