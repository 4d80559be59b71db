#!/bin/sh
# The plug-in guide's example builds out of tree against the ABI header
# alone, and the real host loads it, checks its ABI and initialises it.
#   example_plugin.sh SRC_DIR WORK_DIR WORKER
set -eu
src=$1 work=$2 worker=$3
mkdir -p "$work"
make -s -C "$src/docs/examples/hello-channel" BB_INCLUDE="$src/workers/include" OUT="$work"
printf 'channels hello\nchannel.hello.plugin hello\nchannel.hello.greeting hoi\n' > "$work/hello.conf"
"$worker" -c "$work/hello.conf" --set plugin_dir="$work" --check-config 2>"$work/check.log"
grep -q 'plug-in loaded.*name=hello abi=1' "$work/check.log"
echo "example plug-in built out of tree and accepted by the host"
