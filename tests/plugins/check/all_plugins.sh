#!/bin/sh
# Every bb-channel-*.so built into the plug-in directory passes
# buurtbus-plugin-check's load and option-table checks (run without
# options: checks that need init() are skipped for plug-ins with required
# options; plug-ins whose options all have defaults are checked in full).
#
#   all_plugins.sh TOOL PLUGIN_DIR
tool=$1 dir=$2
n=0 bad=0
for so in "$dir"/bb-channel-*.so; do
    [ -e "$so" ] || continue
    n=$((n + 1))
    if ! "$tool" --timeout 2000 "$so" 2>/dev/null; then
        echo "all_plugins.sh: $so FAILED" >&2
        bad=$((bad + 1))
    fi
done
echo "all_plugins.sh: $n plug-in(s) checked, $bad failed"
[ "$n" -gt 0 ] && [ "$bad" -eq 0 ]
