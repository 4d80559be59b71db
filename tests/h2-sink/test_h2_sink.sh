#!/bin/sh
# bb-h2-sink driven by curl: HTTP/2 with prior knowledge and HTTP/1.1
# keep-alive on one port, default and scripted answers (path and body
# rules, x-sink-status, the token endpoint), apns-id echoed, the request
# log, bodies larger than a flow-control window, and the stats file on
# SIGUSR1 and SIGTERM; then over TLS (ALPN h2 and http/1.1): 200 streams
# multiplexed on one connection. (curl 7.88 cannot reuse an h2c
# prior-knowledge connection, curl#10634, hence TLS for those.)
#
#   test_h2_sink.sh /path/to/bb-h2-sink
set -eu
sink=$1
tmp=$(mktemp -d /tmp/bb-h2-sink-test.XXXXXX)
pid=""
fails=0
passes=0
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ "$fails" -eq 0 ]; then rm -rf "$tmp"; else echo "kept $tmp"; fi
}
trap cleanup EXIT

check() { # name expected actual
  if [ "$2" = "$3" ]; then
    passes=$((passes + 1))
  else
    fails=$((fails + 1))
    echo "FAIL $1: expected [$2], got [$3]"
  fi
}

"$sink" --port 0 --port-file "$tmp/port" --stats-file "$tmp/stats.json" --log "$tmp/req.log" \
  --log-header apns-id --token-path /token --rule 'unregistered=410' --rule 'busy=503:7' \
  --rule 'body:tok-13=404:0:{"error":{"status":"NOT_FOUND"}}' 2>"$tmp/sink.err" &
pid=$!
for _ in $(seq 1 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
port=$(cat "$tmp/port")
url="http://127.0.0.1:$port"
h2="curl -sS --http2-prior-knowledge"
h1="curl -sS --http1.1"

# Default answer over both protocols.
check "h2 default" '200 {"name":"projects/p/messages/1"}' \
  "$($h2 -w '%{http_code} ' -o "$tmp/b" -d '{"m":1}' "$url/v1/projects/p/messages:send")$(cat "$tmp/b")"
check "h2 version" '2' "$($h2 -o /dev/null -w '%{http_version}' -d x "$url/a")"
check "h1 version" '1.1' "$($h1 -o /dev/null -w '%{http_version}' -d x "$url/a")"

# Rules by path, with Retry-After; by body; the header override; the token endpoint.
check "path rule" '410' "$($h2 -o /dev/null -w '%{http_code}' -d x "$url/3/device/unregistered")"
check "retry-after" 'retry-after: 7' \
  "$($h2 -D - -o /dev/null -d x "$url/busy" | tr -d '\r' | grep -i '^retry-after')"
check "body rule" '404 {"error":{"status":"NOT_FOUND"}}' \
  "$($h2 -w '%{http_code} ' -o "$tmp/b" -d '{"message":{"token":"tok-13"}}' "$url/v1/x")$(cat "$tmp/b")"
check "header status h1" '429 Retry-After: 3' \
  "$($h1 -D - -o /dev/null -H 'x-sink-status: 429' -H 'x-sink-retry-after: 3' -d x "$url/a" | \
     tr -d '\r' | sed -n 's/^HTTP\/1.1 \([0-9]*\).*/\1/p; /^Retry-After/p' | tr '\n' ' ' | sed 's/ $//')"
check "token" '{"access_token":"sink-access-token","expires_in":3600,"token_type":"Bearer"}' \
  "$($h2 -d 'grant_type=x' "$url/token")"
check "apns-id echoed" 'apns-id: id-42' \
  "$($h2 -D - -o /dev/null -H 'apns-id: id-42' -d x "$url/3/device/abc" | tr -d '\r' | grep -i '^apns-id')"

sink_stat() { # field of the stats file after SIGUSR1
  rm -f "$tmp/stats.json"
  kill -USR1 "$pid"
  for _ in $(seq 1 100); do [ -s "$tmp/stats.json" ] && break; sleep 0.02; done
  sed "s/.*\"$1\":\([0-9]*\).*/\1/" "$tmp/stats.json"
}

# Keep-alive: two HTTP/1.1 requests on one connection.
before=$(sink_stat connections)
$h1 -o /dev/null -d a "$url/k1" -: -o /dev/null -d b "$url/k2"
check "h1 keep-alive" 1 $(($(sink_stat connections) - before))

# Bodies larger than the 64 KiB stream window, both protocols.
head -c 300000 /dev/zero | tr '\0' 'x' >"$tmp/big"
check "h2 big body" 200 "$($h2 -o /dev/null -w '%{http_code}' --data-binary @"$tmp/big" "$url/big")"
check "h1 big body" 200 "$($h1 -o /dev/null -w '%{http_code}' --data-binary @"$tmp/big" "$url/big")"

# The log line of a request with apns-id, and the stats on SIGTERM.
check "log line" 'POST /3/device/abc 200 id-42' "$(grep 'id-42' "$tmp/req.log")"
kill "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
check "clean exit on SIGTERM (and no sanitizer report)" 0 "$rc"
stats=$(cat "$tmp/stats.json")
total=$(grep -c . "$tmp/req.log")
check "stats requests" "$total" "$(echo "$stats" | sed 's/.*"requests":\([0-9]*\).*/\1/')"
check "stats 410" 1 "$(echo "$stats" | sed 's/.*"410":\([0-9]*\).*/\1/')"
check "stats bytes" yes "$([ "$(echo "$stats" | sed 's/.*"bytes_in":\([0-9]*\).*/\1/')" -gt 600000 ] && echo yes || echo no)"
check "no protocol errors" 0 "$(echo "$stats" | sed 's/.*"protocol_errors":\([0-9]*\).*/\1/')"

# TLS: ALPN picks the protocol; 200 streams share one HTTP/2 connection.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
rm -f "$tmp/port" "$tmp/stats.json"
"$sink" --port 0 --port-file "$tmp/port" --stats-file "$tmp/stats.json" \
  --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" 2>>"$tmp/sink.err" &
pid=$!
for _ in $(seq 1 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
url="https://127.0.0.1:$(cat "$tmp/port")"
tls="curl -sS --cacert $tmp/cert.pem"
check "tls h2" 2 "$($tls --http2 -o /dev/null -w '%{http_version}' -d x "$url/a")"
check "tls h1" 1.1 "$($tls --http1.1 -o /dev/null -w '%{http_version}' -d x "$url/a")"
: >"$tmp/urls"
for i in $(seq 1 200); do
  echo "url = \"$url/m/$i\"" >>"$tmp/urls"
  echo 'output = "/dev/null"' >>"$tmp/urls"
done
before=$(sink_stat connections)
$tls --http2 -Z --parallel-max 100 -d x -K "$tmp/urls" 2>/dev/null
check "multiplexed: one connection" 1 $(($(sink_stat connections) - before))
check "multiplexed: streams" 201 "$(sink_stat h2_streams)"
check "multiplexed: answered" 202 "$(sink_stat requests)"

kill "$pid"
rc=0
wait "$pid" || rc=$?
pid=""
check "tls: clean exit on SIGTERM" 0 "$rc"
if grep -q "Sanitizer\|runtime error" "$tmp/sink.err"; then
  fails=$((fails + 1))
  echo "FAIL sanitizer report:"
  cat "$tmp/sink.err"
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
