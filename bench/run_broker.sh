#!/usr/bin/env bash
# End-to-end broker figures on this machine: a throwaway redis-server on a
# free loopback port, the synthetic population written into it, the broker,
# and bench_broker posting reports open-loop at each offered rate.
#
#   bench/run_broker.sh [--users N] [--rates "50 100 200"] [--duration S] [--threads T]
#                       [--mix field|group]   (group: each report reaches one street group)
#
# Prints one JSON line per rate (see bench_broker for the fields).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
users=200000
rates="50 100 200"
duration=20
threads=1
mix=field
build="$top/build-release"
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users=$2; shift ;;
    --rates) rates=$2; shift ;;
    --duration) duration=$2; shift ;;
    --threads) threads=$2; shift ;;
    --mix) mix=$2; shift ;;
    --build) build=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run_broker.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. "$top/deploy/deps.sh"
bb_install_deps
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBB_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target buurtbus-broker bench_broker >/dev/null

tmp=$(mktemp -d /tmp/bb-bench.XXXXXX)
rpid="" bpid=""
cleanup() {
  [ -n "$bpid" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null || true
  [ -n "$rpid" ] && kill "$rpid" 2>/dev/null && wait "$rpid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 30000))
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" &
rpid=$!
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$build/bench/bench_broker" load --redis "127.0.0.1:$port" --users "$users" >&2

for rate in $rates; do
  redis-cli -p "$port" del bb:reports bb:out:push bb:out:email bb:out:inbox bb:out:digest \
    bb:out:social bb:dead >/dev/null
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
  "$build/bench/bench_broker" run --redis "127.0.0.1:$port" --users "$users" --rate "$rate" \
    --duration "$duration" --broker-pid "$bpid" --mix "$mix" --json
  kill "$bpid"; wait "$bpid" 2>/dev/null || true
  bpid=""
done
