#!/usr/bin/env bash
# Installs what the console's browser test needs (Debian's chromium and
# python3-websocket, through deploy/deps.sh's installer), builds, and runs
# the console tests. Usage: tests/console/run.sh [BUILD_DIR]
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$top/build}"
# shellcheck source=../../deploy/deps.sh
. "$top/deploy/deps.sh"
bb_install_deps chromium python3-websocket
cmake -S "$top" -B "$build" >/dev/null
cmake --build "$build" -j"$(nproc)" --target buurtbus-broker buurtbusctl
ctest --test-dir "$build" -L console --output-on-failure
