#!/usr/bin/env bash
# The bench suite in one command: builds the benchmarks in Release, runs
# every benchmark one after the other, and writes the results, a Markdown
# report and gnuplot plots to bench/results/<YYYY-MM-DD>-<short commit>/.
#
#   bench/run.sh --quick | --full
#                [--users N]            population of the latency sweep and the peer
#                [--rates "50 100 ..."] offered reports/s of the broker and peer sweeps
#                [--duration S]         seconds per broker/peer rate
#                [--populations "..."]  populations of bench_route and the broker
#                                       (given: no extra 10M bench_route run)
#                [--steps "route-* peer-sweep"]  only the steps matching these globs
#                [--build DIR] [--out DIR] [--no-install]
#                [--list]               print the steps and exit
#
#   --quick  a smoke run for CI (< 3 minutes on 2 cores): 20k users, two
#            rates of 5 s, small worker backlogs, a few hundred e-mails.
#   --full   populations 20k, 200k, 2M (bench_route also 10M); broker
#            latency against offered load at 200k, 50..1000 reports/s of
#            20 s; --mix group at 1000/s; the Redis-native peer at the same
#            rates until it saturates; worker fcm, smtp, file; Apprise.
#
# Steps run one at a time; progress (step i of n, elapsed) goes to stderr,
# each step's own output to <out>/logs/. Exits non-zero only when a step
# breaks (a tool fails or writes no figures), never because a figure is slow.
# Threads: none; one process at a time besides the Redis servers it starts.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
here="$top/bench"
py=/usr/bin/python3

mode=""
users="" rates="" duration="" populations="" route_extra_pops=""
build="$top/build-release"
out=""
install=1
only=""
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --users) users=$2; shift ;;
    --rates) rates=$2; shift ;;
    --duration) duration=$2; shift ;;
    --populations) populations=$2; route_extra_pops=" "; shift ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --no-install) install=0 ;;
    --steps) only=$2; shift ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$mode" ]; then
  sed -n '2,26p' "$0" >&2
  exit 2
fi

# Parameters of each mode; the overrides above win.
if [ "$mode" = quick ]; then
  : "${users:=20000}" "${rates:=50 200}" "${duration:=5}" "${populations:=20000}"
  route_args=(--reports 2000 --runs 3)
  route_extra_args=()
  group_rate=""                     # no group-mix run
  pop_rate=""                       # no separate population runs: one population
  worker_users=20000
  file_backlog=(100 500)            # batches, recipients
  smtp_backlog=(2 250)
  fcm_backlog=()
  emails=500
else
  : "${users:=200000}" "${rates:=50 100 200 400 600 800 1000}" "${duration:=20}"
  : "${populations:=20000 200000 2000000}"
  : "${route_extra_pops:=10000000}"   # bench_route only, for memory per user:
  route_args=(--reports 5000 --runs 3)
  route_extra_args=(--reports 1000 --runs 1)
  group_rate=1000
  pop_rate=100
  worker_users=100000
  file_backlog=(400 500)
  smtp_backlog=(10 500)
  fcm_backlog=(200 500)
  emails=5000
fi

commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=false
git -C "$top" diff --quiet HEAD -- 2>/dev/null || dirty=true
[ -n "$out" ] || out="$here/results/$(date -u +%F)-$commit"
tmp=$(mktemp -d /tmp/bb-bench-run.XXXXXX)

# Kills a step and everything it started, by process id: the whole tree is
# listed first, then signalled at once.
pid_tree() {
  local c
  echo "$1"
  for c in $(pgrep -P "$1" 2>/dev/null); do pid_tree "$c"; done
}
kill_tree() {
  # shellcheck disable=SC2046  # one pid a word
  kill $(pid_tree "$1") 2>/dev/null || true
}
step_pid=""
cleanup() {
  if [ -n "$step_pid" ]; then kill_tree "$step_pid"; wait "$step_pid" 2>/dev/null || true; fi
  if [ -s "$tmp/peer-redis.pid" ]; then kill "$(cat "$tmp/peer-redis.pid")" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

free_port() {
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# One JSON object from KEY=string and KEY:=json arguments.
json_obj() {
  "$py" -c 'import json, sys
obj = {}
for a in sys.argv[1:]:
    k, _, v = a.partition("=")
    if k.endswith(":"):
        obj[k[:-1]] = json.loads(v)
    else:
        obj[k] = v
print(json.dumps(obj))' "$@"
}

# --- the steps: each prints its figures (JSON lines or run_worker's table) on stdout ---

step_build() {
  if [ "$install" = 1 ]; then
    # shellcheck source=/dev/null
    . "$top/deploy/deps.sh"
    bb_install_deps apprise gnuplot-nox
  fi
  cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBB_TESTS=OFF -DBB_BENCH=ON
  local targets=(bench_route bench_broker peer_redis bench_worker buurtbus-broker
                 buurtbus-worker bb-channel-file bb-channel-smtp)
  [ ${#fcm_backlog[@]} -eq 0 ] || targets+=(bb-channel-fcm)
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
  echo '{"built":true}'
}

step_route() { # users dict|no-dict main|extra
  local dict=(--dict) args=("${route_args[@]}")
  [ "$2" = no-dict ] && dict=()
  [ "$3" = extra ] && args=("${route_extra_args[@]}")
  "$build/bench/bench_route" --users "$1" "${dict[@]}" --zorder "${args[@]}" --json
}

step_broker() { # users rates mix
  "$here/run_broker.sh" --build "$build" --users "$1" --rates "$2" --duration "$duration" \
    --mix "$3"
}

# The Redis-native peer: its own throwaway redis-server, the population written
# by bench_broker load, the homes by peer_redis load, then each rate until the
# peer saturates (its run outlasts 1.5 x the duration or p99 passes 1 s). A run
# still going after 4 x the duration + 30 s is stopped and recorded as such.
step_peer() { # users rates
  local port rpid rate line wall p99 rc
  port=$(free_port)
  mkdir -p "$tmp/peer-redis"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$tmp/peer-redis" --logfile "$tmp/peer-redis/redis.log" >/dev/null &
  rpid=$!
  echo "$rpid" >"$tmp/peer-redis.pid"
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  "$build/bench/bench_broker" load --redis "127.0.0.1:$port" --users "$1" >&2
  "$build/bench/peer_redis" load --redis "127.0.0.1:$port" --users "$1" >&2
  local limit
  limit=$("$py" -c "print(int(4 * $duration + 30))")
  for rate in $2; do
    rc=0
    line=$(timeout -k 5 "$limit" "$build/bench/peer_redis" run --redis "127.0.0.1:$port" \
      --users "$1" --rate "$rate" --duration "$duration" --radius 1000 --threads 2 \
      --redis-pid "$rpid" --json) || rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      json_obj peer=redis-native users:="$1" rate:="$rate" duration_s:="$duration" \
        timed_out_after_s:="$limit" saturated:=true
      break
    fi
    [ "$rc" = 0 ] || { echo "peer_redis run exited $rc" >&2; kill "$rpid"; return 1; }
    wall=$(sed -n 's/.*"wall_s":\([0-9.]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.*"p99_ms":\([0-9.]*\).*/\1/p' <<<"$line")
    if "$py" -c "import sys; sys.exit(0 if $wall > 1.5 * $duration or $p99 > 1000 else 1)"; then
      echo "${line%\}},\"saturated\":true}"
      break
    fi
    echo "${line%\}},\"saturated\":false}"
  done
  kill "$rpid"; wait "$rpid" 2>/dev/null || true
  : >"$tmp/peer-redis.pid"
}

step_worker() { # plugin batches recipients
  "$here/run_worker.sh" --build "$build" --plugin "$1" --users "$worker_users" \
    --batches "$2" --recipients "$3"
}

# Apprise sending the same e-mails to the same bb-smtp-sink the smtp worker writes to.
step_apprise() { # emails
  local sink="$build/bench/bb-smtp-sink" spid mport rc=0 line
  if [ ! -x "$sink" ] || [ "$top/tests/smtp-sink/smtp_sink.c" -nt "$sink" ]; then
    # shellcheck disable=SC2046  # pkg-config's flags are words
    cc -std=gnu11 -O2 -g -D_GNU_SOURCE -o "$sink" "$top/tests/smtp-sink/smtp_sink.c" \
      $(pkg-config --cflags --libs libevent libevent_openssl openssl)
  fi
  "$sink" --port 0 --count-only >"$tmp/apprise-sink.out" 2>&1 &
  spid=$!
  for _ in $(seq 1 100); do grep -q listening "$tmp/apprise-sink.out" && break; sleep 0.05; done
  mport=$(awk '/listening/ {n = split($2, a, ":"); print a[n]}' "$tmp/apprise-sink.out")
  line=$("$py" "$here/peer_apprise.py" --port "$mport" --count "$1" --json) || rc=$?
  kill "$spid"; wait "$spid" 2>/dev/null || true
  [ "$rc" = 0 ] || return "$rc"
  local got
  got=$(sed -n 's/.*stats messages=\([0-9]*\).*/\1/p' "$tmp/apprise-sink.out")
  echo "${line%\}}, \"sink_messages\": ${got:-null}}"
}

# --- the plan ---

names=() descs=() cmds=() expects=() sets=() kinds=()
plan() { # name description expected-records collect-kind "set fields" command...
  if [ -n "$only" ] && [ "$1" != build ]; then
    local g hit=0
    for g in $only; do
      # shellcheck disable=SC2053  # $g is a glob on purpose
      [[ $1 == $g ]] && hit=1
    done
    [ "$hit" = 1 ] || return 0
  fi
  names+=("$1"); descs+=("$2"); expects+=("$3"); kinds+=("$4"); sets+=("$5")
  shift 5
  cmds+=("$(printf '%q ' "$@")")
}
nrates=$(wc -w <<<"$rates")
plan build "build (Release) in $build" 1 none "" step_build
for n in $populations; do
  plan "route-$n" "bench_route, $n users, dictionary" 1 json "step=route" step_route "$n" dict main
done
for n in $route_extra_pops; do
  plan "route-$n" "bench_route, $n users, dictionary, ${route_extra_args[*]}" 1 json \
    "step=route" step_route "$n" dict extra
done
plan "route-$users-nodict" "bench_route, $users users, no dictionary" 1 json "step=route" \
  step_route "$users" no-dict main
plan "broker-sweep" "broker, $users users, field mix, rates $rates" "$nrates" json \
  "step=broker-sweep mix=field" step_broker "$users" "$rates" field
if [ -n "$group_rate" ]; then
  plan "broker-group" "broker, $users users, group mix, $group_rate/s" 1 json \
    "step=broker-group mix=group" step_broker "$users" "$group_rate" group
fi
if [ -n "$pop_rate" ]; then
  for n in $populations; do
    plan "broker-$n" "broker, $n users, field mix, $pop_rate/s" 1 json \
      "step=broker-population mix=field" step_broker "$n" "$pop_rate" field
  done
fi
plan "peer-sweep" "Redis-native peer, $users users, rates $rates (until it saturates)" \
  "$nrates" json "step=peer-sweep" step_peer "$users" "$rates"
plan "worker-file" "worker, file plug-in, ${file_backlog[0]} x ${file_backlog[1]}" 1 markdown \
  "step=worker plugin=file" step_worker file "${file_backlog[@]}"
if [ ${#fcm_backlog[@]} -gt 0 ]; then
  plan "worker-fcm" "worker, fcm plug-in, ${fcm_backlog[0]} x ${fcm_backlog[1]}" 1 markdown \
    "step=worker plugin=fcm" step_worker fcm "${fcm_backlog[@]}"
fi
plan "worker-smtp" "worker, smtp plug-in, ${smtp_backlog[0]} x ${smtp_backlog[1]} e-mails" 1 \
  markdown "step=worker plugin=smtp" step_worker smtp "${smtp_backlog[@]}"
plan "apprise" "Apprise, $emails e-mails to the same SMTP sink" 1 json "step=apprise" \
  step_apprise "$emails"

# --- the run ---

total=${#names[@]}
if [ "$list" = 1 ]; then
  for i in "${!names[@]}"; do printf '%2d. %-22s %s\n' $((i + 1)) "${names[$i]}" "${descs[$i]}"; done
  exit 0
fi
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
results="$out/results.jsonl"
: >"$results"
t0=$(date +%s)
mmss() { printf '%02d:%02d' $(($1 / 60)) $(($1 % 60)); }
tty=0
[ -t 2 ] && tty=1
mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
all_pops=$(tr -s ' ' <<<"$populations $route_extra_pops" | sed 's/^ //; s/ $//')
params=$(json_obj "mode=$mode" "users=$users" "rates=$rates" "duration_s=$duration" \
  "populations=$all_pops" "route_args=${route_args[*]}" \
  "route_args_10m=${route_extra_args[*]}" \
  "group_rate=$group_rate" "population_rate=$pop_rate" "worker_users=$worker_users" \
  "file_backlog=${file_backlog[*]}" "smtp_backlog=${smtp_backlog[*]}" \
  "fcm_backlog=${fcm_backlog[*]}" "emails=$emails" "peer=radius 1000 m, 2 threads")
json_obj step=meta date="$(date -u +%FT%TZ)" commit="$commit" dirty:="$dirty" \
  nproc:="$(nproc)" cpu="$cpu" mem_kb:="$mem_kb" kernel="$(uname -r)" \
  loadavg_before="$(cut -d' ' -f1-3 /proc/loadavg)" params:="$params" >>"$results"
echo "bench: $mode run, $total steps, results in $out" >&2

failed=()
for i in "${!names[@]}"; do
  name=${names[$i]}
  n=$((i + 1))
  s0=$(date +%s)
  echo "[$n/$total $(mmss $((s0 - t0)))] ${descs[$i]}" >&2
  bash_cmd=${cmds[$i]}
  ( eval "$bash_cmd" ) >"$tmp/$name.out" 2>"$out/logs/$name.log" &
  step_pid=$!
  last=$s0
  while kill -0 "$step_pid" 2>/dev/null; do
    sleep 1
    now=$(date +%s)
    got=$(grep -c '^[{|]' "$tmp/$name.out" 2>/dev/null || true)
    [ "${kinds[$i]}" = markdown ] && got=$((got > 2 ? got - 2 : 0))
    msg="[$n/$total] $name: $(mmss $((now - s0))) in step, ${got}/${expects[$i]} results,"
    [ "${kinds[$i]}" = none ] && msg="[$n/$total] $name: $(mmss $((now - s0))) in step,"
    msg="$msg $(mmss $((now - t0))) total"
    if [ "$tty" = 1 ]; then
      printf '\r%s ' "$msg" >&2
    elif [ $((now - last)) -ge 30 ]; then
      echo "$msg" >&2
      last=$now
    fi
  done
  rc=0
  wait "$step_pid" || rc=$?
  step_pid=""
  [ "$tty" = 1 ] && printf '\r\033[K' >&2
  cat "$tmp/$name.out" >>"$out/logs/$name.log"
  records=0
  if [ "${kinds[$i]}" != none ]; then
    collect_args=(--step "$name")
    for kv in ${sets[$i]}; do collect_args+=(--set "$kv"); done
    [ "${kinds[$i]}" = markdown ] && collect_args+=(--markdown)
    records=$("$py" "$here/report/collect.py" "${collect_args[@]}" "$results" \
      <"$tmp/$name.out") || { [ "$rc" != 0 ] || rc=1; }
  fi
  secs=$(($(date +%s) - s0))
  status=ok
  [ "$rc" = 0 ] || status=failed
  json_obj step=status name="$name" description="${descs[$i]}" status="$status" exit:="$rc" \
    records:="${records:-0}" seconds:="$secs" >>"$results"
  if [ "$status" != ok ]; then
    failed+=("$name")
    echo "[$n/$total] $name FAILED (exit $rc, ${records:-0} results)," \
      "last lines of logs/$name.log:" >&2
    tail -5 "$out/logs/$name.log" | sed 's/^/    /' >&2
    if [ "$name" = build ]; then
      break
    fi
  else
    counted=""
    [ "${kinds[$i]}" = none ] || counted=", ${records:-0} results"
    echo "[$n/$total] $name: $(mmss "$secs")$counted" >&2
  fi
done

json_obj step=end seconds:="$(($(date +%s) - t0))" \
  loadavg_after="$(cut -d' ' -f1-3 /proc/loadavg)" failed="${failed[*]:-}" >>"$results"
"$py" "$here/report/report.py" "$out" || failed+=(report)
echo "bench: done in $(mmss $(($(date +%s) - t0))); report: $out/report.md" >&2
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: broken steps: ${failed[*]}" >&2
  exit 1
fi
