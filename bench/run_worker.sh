#!/usr/bin/env bash
# Worker throughput on this machine: a throwaway redis-server on a free
# loopback port, N users in it, a backlog of B DeliveryBatch entries of R
# recipients in bb:out:push, the provider stand-in bb-h2-sink
# (tests/h2-sink) on loopback, and the built buurtbus-worker draining the
# backlog through one plug-in; bench_worker times the drain.
#
#   bench/run_worker.sh [--plugin fcm|webhook|smtp|file] [--users N] [--batches B]
#                       [--recipients R] [--max-unconfirmed "256 1024"]
#                       [--max-inflight "64"] [--read-count "16"] [--concurrency "0"]
#                       [--workers "1 2"]   (worker processes sharing the consumer group)
#                       [--repeat K] [--sink-delay-ms MS] [--build DIR] [--keep]
#                       [--host-connections N]   (the worker's max_host_connections, 16)
#                       [--perf DIR]   (perf record -g of the worker per run: DIR/<n>.data)
#                       [--preload LIB] (LD_PRELOAD for the worker, e.g. libjemalloc.so.2)
#
#   fcm      the real fcm plug-in: OAuth2 token from the sink (/token), one
#            POST per delivery over HTTP/2 with TLS (ALPN) to the sink; TLS
#            because libcurl 7.88 cannot reuse an h2c prior-knowledge
#            connection (curl#10634).
#   webhook  the webhook plug-in: HMAC-signed JSON POSTs over HTTP/1.1.
#   smtp     the smtp plug-in: one SMTP transaction per e-mail (MIME text +
#            HTML) to bb-smtp-sink --count-only, max_host_connections at a time.
#   file     the file plug-in writing to /dev/null: the host's own cost.
#
# Every value of the space-separated lists is combined with every other;
# each combination runs --repeat times. Prints the machine, the commit and
# a Markdown table, one row per run (see bench_worker.c for the columns).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
plugin=""
users=100000
batches=200
recipients=500
unconfirmed_list="256"
inflight_list="64"
readcount_list="16"
concurrency_list="0"
workers_list="1"
repeat=1
sink_delay=0
host_conns=16
build="$top/build-release"
keep=0
perf_dir=""
preload=""
while [ $# -gt 0 ]; do
  case "$1" in
    --plugin) plugin=$2; shift ;;
    --users) users=$2; shift ;;
    --batches) batches=$2; shift ;;
    --recipients) recipients=$2; shift ;;
    --max-unconfirmed) unconfirmed_list=$2; shift ;;
    --max-inflight) inflight_list=$2; shift ;;
    --read-count) readcount_list=$2; shift ;;
    --concurrency) concurrency_list=$2; shift ;;
    --workers) workers_list=$2; shift ;;
    --repeat) repeat=$2; shift ;;
    --sink-delay-ms) sink_delay=$2; shift ;;
    --host-connections) host_conns=$2; shift ;;
    --build) build=$2; shift ;;
    --keep) keep=1 ;;
    --perf) perf_dir=$2; shift ;;
    --preload) preload=$2; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run_worker.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
. "$top/deploy/deps.sh"
bb_install_deps libnghttp2-dev openssl
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBB_TESTS=OFF >/dev/null
if [ -z "$plugin" ]; then
  plugin=webhook
  if [ -d "$top/workers/plugins/fcm" ] &&
     cmake --build "$build" -j"$(nproc)" --target bb-channel-fcm >/dev/null 2>&1; then
    plugin=fcm
  fi
fi
cmake --build "$build" -j"$(nproc)" --target buurtbus-worker bench_worker \
  "bb-channel-$plugin" >/dev/null
# The sink lives with the tests (BB_TESTS=OFF here): built directly.
sink="$build/bench/bb-h2-sink"
cc -std=gnu11 -O2 -g -D_GNU_SOURCE -o "$sink" "$top/tests/h2-sink/h2_sink.c" \
  $(pkg-config --cflags --libs libevent libevent_openssl libnghttp2 openssl)
worker="$build/workers/buurtbus-worker"
[ -x "$worker" ] || worker=$(find "$build" -name buurtbus-worker -type f -perm -u+x | head -1)
plugin_dir=$(dirname "$(find "$build" -name "bb-channel-$plugin.so" | head -1)")

tmp=$(mktemp -d /tmp/bb-bench-worker.XXXXXX)
rpid="" spid=""
cleanup() {
  if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
  if [ -n "$rpid" ]; then kill "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true; fi
  if [ "$keep" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp" \
  --logfile "$tmp/redis.log" &
rpid=$!
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The provider stand-in: TLS with a throwaway certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$tmp/sink.key" -out "$tmp/sink.crt" 2>/dev/null
sink_args=(--port 0 --port-file "$tmp/sink.port" --stats-file "$tmp/sink.json"
           --token-path /token --delay-ms "$sink_delay")
if [ "$plugin" = fcm ]; then
  sink_args+=(--tls-cert "$tmp/sink.crt" --tls-key "$tmp/sink.key")
fi
"$sink" "${sink_args[@]}" 2>"$tmp/sink.log" &
spid=$!
for _ in $(seq 1 100); do [ -s "$tmp/sink.port" ] && break; sleep 0.05; done
sport=$(cat "$tmp/sink.port")

platform=fcm
case "$plugin" in
  fcm)
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/sa.pem" 2>/dev/null
    python3 - "$tmp/sa.pem" "$tmp/sa.json" "$sport" <<'PY'
import json, sys
key = open(sys.argv[1]).read()
json.dump({"type": "service_account", "project_id": "bench", "private_key_id": "k1",
           "private_key": key, "client_email": "bench@bench.iam.gserviceaccount.com",
           "token_uri": "https://127.0.0.1:%s/token" % sys.argv[3]}, open(sys.argv[2], "w"))
PY
    plugin_conf="channel.push.plugin fcm
channel.push.service_account_file \"$tmp/sa.json\"
channel.push.endpoint https://127.0.0.1:$sport
channel.push.ca_file \"$tmp/sink.crt\"" ;;
  webhook)
    echo "bench-secret" >"$tmp/hook.secret"
    plugin_conf="channel.push.plugin webhook
channel.push.url http://127.0.0.1:$sport/hook
channel.push.secret_file \"$tmp/hook.secret\"" ;;
  smtp)
    # E-mail to bb-smtp-sink counting messages (the peer_apprise.py figure's server).
    msink="$build/bench/bb-smtp-sink"
    cc -std=gnu11 -O2 -g -D_GNU_SOURCE -o "$msink" "$top/tests/smtp-sink/smtp_sink.c" \
      $(pkg-config --cflags --libs libevent libevent_openssl openssl)
    "$msink" --port 0 --count-only >"$tmp/msink.out" 2>"$tmp/msink.log" &
    kill "$spid"; wait "$spid" 2>/dev/null || true
    spid=$!
    for _ in $(seq 1 100); do grep -q listening "$tmp/msink.out" 2>/dev/null && break; sleep 0.05; done
    mport=$(awk '/listening/ {n = split($2, a, ":"); print a[n]}' "$tmp/msink.out")
    plugin_conf="channel.push.plugin smtp
channel.push.url smtp://127.0.0.1:$mport
channel.push.from meldingen@bench.buurtbus.example" ;;
  file)
    ln -s /dev/null "$tmp/out.jsonl"
    plugin_conf="channel.push.plugin file
channel.push.path \"$tmp/out.jsonl\"" ;;
  *) echo "run_worker.sh: unknown plug-in $plugin" >&2; exit 2 ;;
esac

"$build/bench/bench_worker" load --redis "127.0.0.1:$port" --users "$users" --platform "$platform"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "commit: $(git -C "$top" rev-parse --short HEAD)$(git -C "$top" diff --quiet HEAD -- workers common || echo ' (+ local changes)')"
echo "plug-in: $plugin, users $users, $batches batches x $recipients recipients, sink delay ${sink_delay} ms${preload:+, LD_PRELOAD $preload}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
header=--header
run_no=0
for mu in $unconfirmed_list; do
  for mi in $inflight_list; do
    for rcnt in $readcount_list; do
      for conc in $concurrency_list; do
       for nw in $workers_list; do
        for i in $(seq 1 "$repeat"); do
          run_no=$((run_no + 1))
          perf_args=()
          if [ -n "$preload" ]; then
            perf_args=(--preload "$preload")
          fi
          if [ -n "$perf_dir" ]; then
            mkdir -p "$perf_dir"
            perf_args+=(--perf "$perf_dir/$run_no.data")
          fi
          cat >"$tmp/worker.conf" <<CONF
redis 127.0.0.1:$port
plugin_dir "$plugin_dir"
log_level warn
channels push
max_unconfirmed $mu
max_inflight $mi
read_count $rcnt
block 100ms
$plugin_conf
channel.push.concurrency $conc
max_host_connections $host_conns
CONF
          "$build/bench/bench_worker" run --redis "127.0.0.1:$port" --users "$users" \
            --batches "$batches" --recipients "$recipients" --worker "$worker" \
            --conf "$tmp/worker.conf" --sink-pid "$spid" --log "$tmp/worker.log" \
            --label "$plugin w=$nw mu=$mu mi=$mi rc=$rcnt conc=$conc #$i" --workers "$nw" \
            $header "${perf_args[@]}" || true
          header=""
        done
       done
      done
    done
  done
done
if [ "$plugin" != smtp ]; then kill -USR1 "$spid"; sleep 0.2; fi
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$plugin" = smtp ]; then
  kill "$spid"; wait "$spid" 2>/dev/null || true; spid=""
  echo "sink: $(cat "$tmp/msink.out" | tail -1)"
else
  echo "sink: $(cat "$tmp/sink.json")"
fi
if grep -qv '^$' "$tmp/worker.log" 2>/dev/null; then
  echo "worker log (last lines):"; tail -5 "$tmp/worker.log"
fi
