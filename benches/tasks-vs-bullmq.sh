#!/usr/bin/env bash
# herald's task cycle side by side with BullMQ, from the same Node process
# shape (benches/node/tasks.mjs): P producers each enqueue a small JSON job
# and wait for its result, W workers complete each at once.
#
# Three cases, each RUNS times, alternating herald and BullMQ, every run on
# a fresh server (and a fresh redis-server):
#   memory   herald --store memory          vs  BullMQ on Redis without persistence
#                                                (--save '' --appendonly no)
#   durable  herald --store file:DIR (fresh)  vs  BullMQ on Redis
#                                                --appendonly yes --appendfsync always
#   redis    herald --store redis:// on that appendfsync-always Redis
#                                            vs  BullMQ on it
# The servers (herald and redis-server) run on core SERVER_CPU, Node on
# CLIENT_CPU, so each figure is one server core against one client core;
# the server CPU per task sums herald's and redis-server's where both serve.
# Each run prints one JSON line; the end prints, per case, the ranges and
# herald ÷ BullMQ (of the medians, and the range over the run pairs).
#
# Usage (from the repository root, after `cargo build --release`):
#   benches/tasks-vs-bullmq.sh
#   RUNS=5 SECS=20 CASES="memory durable" FLOW=ws benches/tasks-vs-bullmq.sh
# Environment: HERALD_BIN (target/release/herald), RUNS (3), SECS (10),
# WARMUP (2), PRODUCERS (16), WORKERS (16), FLOW (http | ws: herald's flow,
# see tasks.mjs), CASES ("memory durable redis"), SERVER_CPU (0),
# CLIENT_CPU (1), OUT (a file for the JSON lines; a temporary one by
# default). Needs node and npm (the first run installs benches/node's
# packages with `npm ci`), redis-server, redis-cli, curl and taskset.
# Not run by CI.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
HERALD_BIN=${HERALD_BIN:-target/release/herald}
RUNS=${RUNS:-3}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
PRODUCERS=${PRODUCERS:-16}
WORKERS=${WORKERS:-16}
FLOW=${FLOW:-http}
CASES=${CASES:-memory durable redis}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$(mktemp -t tasks-vs-bullmq.XXXXXX.jsonl)}

[ -x "$HERALD_BIN" ] || { echo "no herald at $HERALD_BIN (set HERALD_BIN)" >&2; exit 1; }
for tool in node npm redis-server redis-cli curl taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -d "$here/node/node_modules" ] || (cd "$here/node" && npm ci --no-audit --no-fund >&2)

# Servers this script started, stopped however it ends.
pids=()
scratch=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${scratch[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# A TCP port nobody listens on.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Stops one server we started and forgets it.
stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=()
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# start_redis none|always: a fresh redis-server on core SERVER_CPU; sets
# RPORT and RPID.
start_redis() {
  local dir
  dir=$(mktemp -d -t tvb-redis.XXXXXX)
  scratch+=("$dir")
  RPORT=$(free_port)
  local persist=(--save '' --appendonly no)
  if [ "$1" = always ]; then
    persist=(--save '' --appendonly yes --appendfsync always)
  fi
  taskset -c "$SERVER_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$dir" \
    "${persist[@]}" >"$dir/log" 2>&1 &
  RPID=$!
  pids+=("$RPID")
  for _ in $(seq 100); do
    redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "redis-server did not start: $(cat "$dir/log")" >&2
  exit 1
}

# start_herald STORE: a fresh herald on core SERVER_CPU; sets HPORT, HPID.
start_herald() {
  HPORT=$(free_port)
  local log
  log=$(mktemp -t tvb-herald.XXXXXX.log)
  scratch+=("$log")
  taskset -c "$SERVER_CPU" "$HERALD_BIN" serve --store "$1" --listen "127.0.0.1:$HPORT" \
    >"$log" 2>&1 &
  HPID=$!
  pids+=("$HPID")
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$HPORT/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "herald did not start: $(cat "$log")" >&2
  exit 1
}

# node_run CASE RUN ARGS…: one tasks.mjs run on core CLIENT_CPU; its JSON
# line, labelled, on stdout and in OUT (a failed run is a line too).
node_run() {
  local case=$1 run=$2 line
  shift 2
  if line=$(taskset -c "$CLIENT_CPU" node "$here/node/tasks.mjs" --producers "$PRODUCERS" \
      --workers "$WORKERS" --seconds "$SECS" --warmup "$WARMUP" "$@"); then
    :
  else
    line="{\"failed\":true,\"args\":\"$*\"}"
  fi
  line="{\"case\":\"$case\",\"run\":$run,${line#\{}"
  echo "$line" | tee -a "$OUT"
}

# One herald run of CASE.
herald_run() {
  local case=$1 run=$2
  case "$case" in
    memory)
      start_herald memory
      node_run "$case" "$run" --system herald --flow "$FLOW" \
        --url "http://127.0.0.1:$HPORT" --server-pid "$HPID"
      stop "$HPID"
      ;;
    durable)
      local dir
      dir=$(mktemp -d -t tvb-herald-data.XXXXXX)
      scratch+=("$dir")
      start_herald "file:$dir"
      node_run "$case" "$run" --system herald --flow "$FLOW" \
        --url "http://127.0.0.1:$HPORT" --server-pid "$HPID"
      stop "$HPID"
      ;;
    redis)
      start_redis always
      start_herald "redis://127.0.0.1:$RPORT"
      node_run "$case" "$run" --system herald --flow "$FLOW" \
        --url "http://127.0.0.1:$HPORT" --server-pid "$HPID,$RPID"
      stop "$HPID"
      stop "$RPID"
      ;;
  esac
}

# One BullMQ run of CASE.
bullmq_run() {
  local case=$1 run=$2
  if [ "$case" = memory ]; then start_redis none; else start_redis always; fi
  node_run "$case" "$run" --system bullmq --redis "redis://127.0.0.1:$RPORT" \
    --server-pid "$RPID"
  stop "$RPID"
}

echo "results in $OUT" >&2
for case in $CASES; do
  for run in $(seq "$RUNS"); do
    herald_run "$case" "$run"
    bullmq_run "$case" "$run"
  done
done

# The summary: per case and system the ranges, then herald ÷ BullMQ.
node - "$OUT" <<'EOF'
const fs = require('node:fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const range = (xs) => {
  if (!xs.length) return '–';
  const [lo, hi] = [Math.min(...xs), Math.max(...xs)];
  return lo === hi ? `${lo}` : `${lo}–${hi}`;
};
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};
console.log('\n| case | herald tasks/s | BullMQ tasks/s | herald ÷ BullMQ (median; pairs) | p50 / p99 ms herald | p50 / p99 ms BullMQ | server CPU µs/task herald | BullMQ | failed runs |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const c of [...new Set(rows.map((r) => r.case))]) {
  const of = (sys) => rows.filter((r) => r.case === c && r.system === sys && !r.failed);
  const h = of('herald');
  const b = of('bullmq');
  const failed = rows.filter((r) => r.case === c && r.failed).length;
  const pairs = h
    .map((hr) => [hr, b.find((br) => br.run === hr.run)])
    .filter(([, br]) => br)
    .map(([hr, br]) => +(hr.tasks_per_s / br.tasks_per_s).toFixed(2));
  const ratio = (median(h.map((r) => r.tasks_per_s)) / median(b.map((r) => r.tasks_per_s))).toFixed(2);
  const col = (rs, k) => range(rs.map((r) => r[k]).filter((x) => x !== null && x !== undefined));
  console.log(
    `| ${c} | ${col(h, 'tasks_per_s')} | ${col(b, 'tasks_per_s')} | ${ratio}; ${range(pairs)} | ` +
      `${col(h, 'p50_ms')} / ${col(h, 'p99_ms')} | ${col(b, 'p50_ms')} / ${col(b, 'p99_ms')} | ` +
      `${col(h, 'server_cpu_us_per_task')} | ${col(b, 'server_cpu_us_per_task')} | ${failed} |`,
  );
}
EOF
