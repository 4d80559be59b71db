#!/bin/sh
# buurtbus-demo (the demo image's command; deploy/container/compose.yaml,
# profile "demo"): loads the demo neighbourhood of 's-Hertogenbosch into the
# compose Redis, gives every resident an e-mail address, posts the demo
# reports, and prints what the broker routed. As the buurtbus-ctl Redis
# user, with its password from the secrets volume (never in argv).
set -eu
redis=${BB_REDIS:-172.30.57.10:6379}
secrets=${BB_SECRETS:-/run/buurtbus/secrets}
users=${BB_DEMO_USERS:-3000}
share=/usr/local/share/buurtbus
ctl() { buurtbusctl --redis "$redis" --redis-user buurtbus-ctl \
    --password-file "$secrets/ctl.password" "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 "$share/demo/denbosch.py" --users "$users" >"$tmp/demo.jsonl"
ctl load "$tmp/demo.jsonl"
# Contact addresses live in Redis for the workers, written by "the app".
REDISCLI_AUTH=$(head -n1 "$secrets/ctl.password")
export REDISCLI_AUTH
host=${redis%:*}
port=${redis##*:}
redis-cli -h "$host" -p "$port" --user buurtbus-ctl --no-auth-warning --raw \
    smembers bb:users >"$tmp/users"
awk '{print "HSET bb:user:" $1 " email buur" $1 "@demo.buurtbus.example"}' "$tmp/users" |
    redis-cli -h "$host" -p "$port" --user buurtbus-ctl --no-auth-warning >/dev/null
ctl post --file "$share/demo/reports.jsonl" >/dev/null
sleep 2
ctl outputs --examples 3
echo "e-mails land in the mail volume (compose: podman-compose exec mail ls /mail)"
