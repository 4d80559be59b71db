#!/usr/bin/env bash
# buurtbus quickstart: installs what is missing, builds, starts a throwaway
# redis-server on a free loopback port, loads a demo neighbourhood
# ('s-Hertogenbosch: a few thousand residents in a dozen groups), starts the
# broker and a worker (push, inbox and digest to files, e-mail to a local
# SMTP server), posts a handful of reports of different kinds and prints,
# per report, how many people got it on which channel, with example
# recipients, and what the worker delivered.
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
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBB_TESTS=ON -DBB_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target buurtbus-broker buurtbusctl buurtbus-worker \
  bb-channel-file bb-channel-smtp bb-smtp-sink >/dev/null
broker="$build/broker/buurtbus-broker"
ctl="$build/broker/ctl/buurtbusctl"
worker="$build/workers/buurtbus-worker"
sink="$build/tests/smtp-sink/bb-smtp-sink"

tmp=$(mktemp -d /tmp/buurtbus-quickstart.XXXXXX)
redis_pid=""
broker_pid=""
worker_pid=""
sink_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null || true
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

echo "==> a local SMTP server (bb-smtp-sink) and buurtbus-worker: push, inbox, digest to files, e-mail by SMTP"
mkdir -p "$tmp/mail"
"$sink" --port 0 --maildir "$tmp/mail" > "$tmp/sink.out" 2>"$tmp/sink.log" &
sink_pid=$!
for _ in $(seq 1 50); do grep -q listening "$tmp/sink.out" 2>/dev/null && break; sleep 0.1; done
sport=$(awk '/listening/ {n = split($2, a, ":"); print a[n]}' "$tmp/sink.out")
# Contact addresses live in Redis for the workers, never in the broker.
redis-cli -p "$rport" --raw smembers bb:users | \
  awk '{print "HSET bb:user:" $1 " email buur" $1 "@demo.buurtbus.example"}' | \
  redis-cli -p "$rport" >/dev/null
cat > "$tmp/worker.conf" <<CONF
redis 127.0.0.1:$rport
name quickstart-worker
plugin_dir $build/workers/plugins-out
log_level warn
channels push,inbox,digest,email
channel.push.plugin file
channel.push.path $tmp/push.jsonl
channel.inbox.plugin file
channel.inbox.path $tmp/inbox.jsonl
channel.digest.plugin smtp
channel.digest.collect user
channel.digest.url smtp://127.0.0.1:$sport
channel.digest.from digest@demo.buurtbus.example
channel.digest.from_name Buurtpreventie
channel.email.plugin smtp
channel.email.url smtp://127.0.0.1:$sport
channel.email.from meldingen@demo.buurtbus.example
channel.email.from_name Buurtpreventie
CONF
"$worker" -c "$tmp/worker.conf" 2>"$tmp/worker.log" &
worker_pid=$!

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
  > "$tmp/route.txt"
head -8 "$tmp/route.txt"
# Give the worker a moment to hand everything over.
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$rport" xpending bb:out:email bb-workers 2>/dev/null | head -1)" = "0" ] &&
    [ "$(redis-cli -p "$rport" xpending bb:out:push bb-workers 2>/dev/null | head -1)" = "0" ] && break
  sleep 0.1
done
sleep 0.5
count() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
echo
echo "==> delivered by buurtbus-worker"
echo "push (file channel):   $(count "$tmp/push.jsonl") deliveries, e.g.:"
head -1 "$tmp/push.jsonl" 2>/dev/null | cut -c1-220
echo "inbox (file channel):  $(count "$tmp/inbox.jsonl") deliveries"
echo "e-mail (SMTP):         $(ls "$tmp/mail" | wc -l) messages received by the local SMTP server, e.g.:"
first=$(ls "$tmp/mail" | head -1 || true)
[ -n "$first" ] && grep -m4 -E '^(Subject|To|List-Unsubscribe|Message-ID):' "$tmp/mail/$first"
waiting=$(redis-cli -p "$rport" zcard bb:later:digest)
echo "digest (collected):    $waiting residents have a digest waiting for their own hour"
who=$(redis-cli -p "$rport" zrange bb:later:digest 0 0)
if [ -n "$who" ]; then
  # Bring one resident's hour forward to show the digest e-mail.
  before=$(ls "$tmp/mail" | wc -l)
  redis-cli -p "$rport" zadd bb:later:digest 0 "$who" >/dev/null
  for _ in $(seq 1 50); do [ "$(ls "$tmp/mail" | wc -l)" -gt "$before" ] && break; sleep 0.1; done
  newest=$(ls -t "$tmp/mail" | head -1 || true)
  echo "  sent now for resident ${who#c:u}, e.g.:"
  [ -n "$newest" ] && grep -m2 -E '^(Subject|To):' "$tmp/mail/$newest"
fi
echo "receipts: $(redis-cli -p "$rport" xlen bb:receipts)"
dead=$(redis-cli -p "$rport" xlen bb:dead)
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
