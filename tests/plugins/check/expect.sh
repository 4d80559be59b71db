#!/bin/bash
# Runs buurtbus-plugin-check and checks its verdict.
#
#   expect.sh TOOL RC CHECK [tool arguments...]
#
# RC: the exit status wanted. CHECK: a check that must be reported FAIL
# ("-" for none). "@TMP@" in an argument becomes a fresh temporary
# directory (removed afterwards unless the test fails). With --json the
# output must parse as the JSON report. The report is printed either way,
# for the ctest log.
tool=$1 want=$2 check=$3
shift 3
tmp=$(mktemp -d)
args=()
json=0
for a in "$@"; do
    args+=("${a//@TMP@/$tmp}")
    [ "$a" = "--json" ] && json=1
done
out=$("$tool" "${args[@]}" 2>"$tmp/stderr")
rc=$?
printf '%s\n' "$out"
fail() {
    echo "expect.sh: $* (kept $tmp)" >&2
    exit 1
}
[ "$rc" = "$want" ] || fail "exit status $rc, wanted $want"
if [ "$check" != "-" ]; then
    if [ $json = 1 ]; then
        printf '%s' "$out" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(c["check"] == sys.argv[1] and c["result"] == "fail" for c in d["checks"]) else 1)
' "$check" || fail "no failed $check in the JSON report"
    else
        printf '%s\n' "$out" | grep -q "^FAIL  $check " || fail "no FAIL line for $check"
    fi
elif [ $json = 1 ]; then
    printf '%s' "$out" | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["fail"] == 0 and d["ok"] > 0 and len(d["checks"]) == d["ok"] + d["fail"] + d["skip"]
' || fail "the JSON report does not parse or says failed"
fi
rm -rf "$tmp"
exit 0
