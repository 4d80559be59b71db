#!/usr/bin/env bash
# buurtbus quickstart: installs what is missing, builds, starts a throwaway
# redis-server on a free loopback port, loads a demo neighbourhood
# ('s-Hertogenbosch: a few thousand residents in a dozen groups), starts the
# broker, posts a handful of reports of different kinds and prints, per
# report, how many people got it on which channel, with example recipients.
#
#   deploy/quickstart.sh          stay up showing live counts until Ctrl-C
#   deploy/quickstart.sh --once   run through and exit
#   deploy/quickstart.sh --users N   size of the demo population (default 3000)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
once=0
users=3000
while [ $# -gt 0 ]; do
  case "$1" in
    --once) once=1 ;;
    --users) users=$2; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

. "$top/deploy/deps.sh"
bb_install_deps python3

build="$top/build"
echo "==> building in $build"
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBB_TESTS=OFF -DBB_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" >/dev/null
broker="$build/broker/buurtbus-broker"
ctl="$build/broker/ctl/buurtbusctl"

tmp=$(mktemp -d /tmp/buurtbus-quickstart.XXXXXX)
redis_pid=""
broker_pid=""
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  echo "quickstart: no free port found" >&2
  return 1
}

rport=$(pick_port)
echo "==> redis-server on 127.0.0.1:$rport (throwaway, in $tmp)"
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" >/dev/null &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$rport" ping >/dev/null 2>&1 && break
  sleep 0.1
done
R=(--redis "127.0.0.1:$rport")

echo "==> loading the demo neighbourhood ('s-Hertogenbosch, $users residents)"
/usr/bin/python3 "$top/deploy/demo/denbosch.py" --users "$users" > "$tmp/demo.jsonl"
"$ctl" "${R[@]}" load "$tmp/demo.jsonl"

mport=$(pick_port)
cat > "$tmp/broker.conf" <<CONF
redis 127.0.0.1:$rport
name quickstart-1
router_threads 1
metrics_addr 127.0.0.1:$mport
log_level warn
CONF
echo "==> starting buurtbus-broker (metrics on http://127.0.0.1:$mport/metrics)"
"$broker" -c "$tmp/broker.conf" 2>"$tmp/broker.log" &
broker_pid=$!

echo "==> posting reports"
"$ctl" "${R[@]}" post --file "$top/deploy/demo/reports.jsonl" >/dev/null
"$ctl" "${R[@]}" post-status '{"id":"demo-status-1","report_id":"demo-inbraak-muntel","status":"police_on_site","text":"Politie is ter plaatse, dank voor de snelle melding","source":"police","reporter_id":1004,"category":"burglary","urgency":"recent"}' >/dev/null

drained() {
  local n pending
  n=$(redis-cli -p "$rport" xlen bb:reports)
  pending=$(redis-cli -p "$rport" xpending bb:reports bb-brokers | head -1)
  [ "$pending" = "0" ] && [ "$(redis-cli -p "$rport" xinfo groups bb:reports | \
      awk '/entries-read/{getline; print; exit}')" = "$n" ]
}
for _ in $(seq 1 100); do
  drained && break
  sleep 0.1
done
if ! kill -0 "$broker_pid" 2>/dev/null; then
  echo "quickstart: the broker stopped; its log:" >&2
  cat "$tmp/broker.log" >&2
  exit 1
fi
sleep 0.3

echo
echo "==> who got what (per report: deliveries per channel, example recipients)"
"$ctl" "${R[@]}" outputs --examples 3
echo
echo "==> why a resident did (not) get the police-only city-centre report:"
"$ctl" "${R[@]}" route --entry "$(redis-cli -p "$rport" xrange bb:reports - + | sed -n '4p')" \
  | head -8
dead=$(redis-cli -p "$rport" xlen bb:dead)
echo
echo "dead letters: $dead"

if [ "$once" = 1 ]; then
  exit 0
fi
echo
echo "==> live counts (post more with: $ctl ${R[*]} post '{...}'); Ctrl-C to stop"
while kill -0 "$broker_pid" 2>/dev/null; do
  m=$(curl -s "http://127.0.0.1:$mport/metrics" 2>/dev/null || true)
  get() { echo "$m" | awk -v k="$1" '$1==k {print $2}'; }
  printf '\rreports routed: %s  deliveries: %s  dead letters: %s  users: %s   ' \
    "$(get bb_routed_total)" "$(get bb_deliveries_total)" "$(get bb_dead_letters_total)" \
    "$(get bb_directory_users)"
  sleep 2
done
