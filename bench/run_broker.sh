#!/usr/bin/env bash
# End-to-end broker figures on this machine: a throwaway redis-server on a
# free loopback port, the synthetic population written into it, the broker,
# and bench_broker posting reports open-loop at each offered rate.
#
#   bench/run_broker.sh [--users N] [--rates "50 100 200"] [--duration S] [--threads T]
#                       [--mix field|group]   (group: each report reaches one street group)
#                       [--storm burglary|citywide|sensors|churn] [--storm-at S]
#                       [--storm-reports N] [--churn-rate N] [--citywide] [--seed S]
#                       [--with-worker]   (the built worker, file plug-in on the inbox)
#                       [--build DIR]
#
#   --storm citywide implies --citywide: the population gets one group per town.
#   --with-worker starts build/workers/buurtbus-worker per rate with
#   "channels inbox" and the file plug-in writing to a temporary inbox.jsonl,
#   and bench_broker times each report to its last line there.
#
# Prints one JSON line per rate (see bench_broker for the fields).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
users=200000
rates="50 100 200"
duration=20
threads=1
mix=field
seed=1
storm=""
storm_at=""
storm_reports=""
churn_rate=""
citywide=0
with_worker=0
build="$top/build-release"
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users=$2; shift ;;
    --rates) rates=$2; shift ;;
    --duration) duration=$2; shift ;;
    --threads) threads=$2; shift ;;
    --mix) mix=$2; shift ;;
    --seed) seed=$2; shift ;;
    --storm) storm=$2; shift ;;
    --storm-at) storm_at=$2; shift ;;
    --storm-reports) storm_reports=$2; shift ;;
    --churn-rate) churn_rate=$2; shift ;;
    --citywide) citywide=1 ;;
    --with-worker) with_worker=1 ;;
    --build) build=$2; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run_broker.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$storm" = citywide ] && citywide=1
. "$top/deploy/deps.sh"
bb_install_deps
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBB_TESTS=OFF >/dev/null
targets=(buurtbus-broker bench_broker)
[ "$with_worker" = 1 ] && targets+=(buurtbus-worker bb-channel-file)
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null
commit="$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$top" diff --quiet HEAD -- broker common proto bench workers 2>/dev/null ||
  commit="$commit+local"

pop_args=(--users "$users" --seed "$seed")
[ "$citywide" = 1 ] && pop_args+=(--citywide)
run_args=(--mix "$mix" --commit "$commit")
[ -n "$storm" ] && run_args+=(--storm "$storm")
[ -n "$storm_at" ] && run_args+=(--storm-at "$storm_at")
[ -n "$storm_reports" ] && run_args+=(--storm-reports "$storm_reports")
[ -n "$churn_rate" ] && run_args+=(--churn-rate "$churn_rate")

tmp=$(mktemp -d /tmp/bb-bench.XXXXXX)
rpid="" bpid="" wpid=""
cleanup() {
  if [ -n "$wpid" ]; then kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true; fi
  if [ -n "$bpid" ]; then kill "$bpid" 2>/dev/null || true; wait "$bpid" 2>/dev/null || true; fi
  if [ -n "$rpid" ]; then kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 30000))
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" &
rpid=$!
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$build/bench/bench_broker" load --redis "127.0.0.1:$port" "${pop_args[@]}" >&2

if [ "$with_worker" = 1 ]; then
  worker="$build/workers/buurtbus-worker"
  plugin_dir="$build/workers/plugins-out"
  [ -f "$plugin_dir/bb-channel-file.so" ] ||
    plugin_dir=$(dirname "$(find "$build" -name bb-channel-file.so | head -1)")
fi

for rate in $rates; do
  # A fresh run: no reports, batches, delivery records or receipts of the last one (report
  # ids repeat from run to run, so old bb:sent records would make the worker skip them).
  redis-cli -p "$port" del bb:reports bb:out:push bb:out:email bb:out:inbox bb:out:digest \
    bb:out:social bb:dead bb:receipts >/dev/null
  redis-cli -p "$port" eval "local cur, n = '0', 0
    repeat
      local r = redis.call('SCAN', cur, 'MATCH', 'bb:sent:*', 'COUNT', 10000)
      cur = r[1]
      for _, k in ipairs(r[2]) do redis.call('UNLINK', k); n = n + 1 end
    until cur == '0'
    return n" 0 >/dev/null
  cat > "$tmp/broker.conf" <<CONF
redis 127.0.0.1:$port
name bench-1
router_threads $threads
metrics_addr ""
log_level warn
CONF
  "$build/broker/buurtbus-broker" -c "$tmp/broker.conf" 2>>"$tmp/broker.log" &
  bpid=$!
  for _ in $(seq 1 600); do
    redis-cli -p "$port" xinfo groups bb:reports 2>/dev/null | grep -q bb-brokers && break
    sleep 0.1
  done
  worker_args=()
  if [ "$with_worker" = 1 ]; then
    rm -f "$tmp/inbox.jsonl"
    cat > "$tmp/worker.conf" <<CONF
redis 127.0.0.1:$port
plugin_dir "$plugin_dir"
log_level warn
block 100ms
channels inbox
channel.inbox.plugin file
channel.inbox.path "$tmp/inbox.jsonl"
CONF
    "$worker" -c "$tmp/worker.conf" 2>>"$tmp/worker.log" &
    wpid=$!
    for _ in $(seq 1 100); do [ -e "$tmp/inbox.jsonl" ] && break; sleep 0.1; done
    worker_args=(--worker-file "$tmp/inbox.jsonl" --worker-pid "$wpid")
  fi
  "$build/bench/bench_broker" run --redis "127.0.0.1:$port" "${pop_args[@]}" --rate "$rate" \
    --duration "$duration" --broker-pid "$bpid" "${run_args[@]}" "${worker_args[@]}" --json
  if [ -n "$wpid" ]; then kill "$wpid"; wait "$wpid" 2>/dev/null || true; wpid=""; fi
  kill "$bpid"; wait "$bpid" 2>/dev/null || true
  bpid=""
done
if [ -s "$tmp/worker.log" ]; then echo "worker log (last lines):" >&2; tail -5 "$tmp/worker.log" >&2; fi
