#!/bin/sh
# deploy/systemd_verify: systemd-analyze verify on deploy/systemd/'s units.
# verify wants every ExecStart binary to exist, so it checks copies whose
# /usr/local/bin paths point at the built programs. Any message at all
# (an unknown key, a value it cannot parse, a missing binary) fails the
# test: verify itself exits 0 on most of them. Then `systemd-analyze
# security --offline` prints each unit's exposure score, for the log.
# --man=no: Documentation= names the man pages docs/ builds with help2man,
# installed or not on this machine.
#
#   systemd_verify.sh SRC_DIR BROKER WORKER WORK_DIR
#
# Exit 77 (ctest SKIP_RETURN_CODE) when systemd-analyze is missing or
# cannot verify even a trivial unit here.
set -eu
src=$1
broker=$2
worker=$3
work=$4

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze is not installed (Debian: package systemd)"
    exit 77
fi
rm -rf "$work"
mkdir -p "$work"
printf '[Service]\nExecStart=/bin/true\n' >"$work/bb-probe.service"
if ! systemd-analyze verify --man=no "$work/bb-probe.service" >"$work/probe.log" 2>&1 ||
    [ -s "$work/probe.log" ]; then
    echo "SKIP: systemd-analyze verify does not work here:"
    cat "$work/probe.log"
    exit 77
fi
rm "$work/bb-probe.service"

for f in "$src"/deploy/systemd/*.service; do
    sed -e "s#/usr/local/bin/buurtbus-broker#$broker#g" \
        -e "s#/usr/local/bin/buurtbus-worker#$worker#g" "$f" >"$work/$(basename "$f")"
done
# The template as itself (instance "i") and as an instance.
cp "$work/buurtbus-worker@.service" "$work/buurtbus-worker@mail.service"

failed=0
for unit in buurtbus-broker.service buurtbus-worker@.service buurtbus-worker@mail.service; do
    if systemd-analyze verify --man=no "$work/$unit" >"$work/$unit.log" 2>&1 && [ ! -s "$work/$unit.log" ]; then
        echo "ok: $unit"
    else
        echo "FAIL: $unit"
        cat "$work/$unit.log"
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1

# The exposure score (0 = locked down, 10 = not at all); informational.
for unit in buurtbus-broker.service buurtbus-worker@mail.service; do
    score=$(systemd-analyze security --offline=yes "$work/$unit" 2>/dev/null | tail -1 || true)
    echo "security: $unit: $score"
done
exit 0
