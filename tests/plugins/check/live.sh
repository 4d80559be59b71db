#!/bin/bash
# buurtbus-plugin-check's live modes against real servers: --live runs the
# smtp plug-in's curl() transfers against bb-smtp-sink, --redis the inbox
# plug-in's commands against a redis-server; both on free ports, and what
# the servers received is checked (202 messages / inbox entries: the first
# send, the live send and a batch of 200). Exit 77 (skipped) without
# redis-server.
#
#   live.sh TOOL SMTP_SINK PLUGIN_DIR
tool=$1 sink=$2 dir=$3
command -v redis-server >/dev/null || { echo "live.sh: no redis-server" >&2; exit 77; }
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait
}
trap cleanup EXIT
fail() {
    echo "live.sh: $* (kept $tmp)" >&2
    exit 1
}
free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 100); do
        /usr/bin/python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2)' "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

sp=$(free_port)
mkdir "$tmp/mail"
"$sink" --port "$sp" --maildir "$tmp/mail" >"$tmp/sink.log" 2>&1 &
pids+=($!)
rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
pids+=($!)
wait_port "$sp" || fail "bb-smtp-sink did not start"
wait_port "$rp" || fail "redis-server did not start"

out=$("$tool" --live --set "url=smtp://127.0.0.1:$sp" --set from=alerts@buurtbus.example \
      "$dir/bb-channel-smtp.so" 2>"$tmp/smtp.err") || { echo "$out"; fail "smtp --live failed"; }
echo "$out"
grep -q '^ok    send/curl_live ' <<<"$out" || fail "no ok send/curl_live"
n=$(find "$tmp/mail" -name '*.eml' | wc -l)
[ "$n" -eq 202 ] || fail "bb-smtp-sink got $n messages, wanted 202"

out=$("$tool" --redis "127.0.0.1:$rp" "$dir/bb-channel-inbox.so" 2>"$tmp/inbox.err") ||
    { echo "$out"; fail "inbox --redis failed"; }
echo "$out"
grep -q '^ok    send/redis_live ' <<<"$out" || fail "no ok send/redis_live"
n=$(redis-cli -p "$rp" eval "local n = 0
for _, k in ipairs(redis.call('KEYS', 'bb:inbox:*')) do n = n + redis.call('XLEN', k) end
return n" 0)
[ "$n" -eq 202 ] || fail "redis holds $n inbox entries, wanted 202"
rm -rf "$tmp"
echo "live.sh: 202 e-mails and 202 inbox entries received"
