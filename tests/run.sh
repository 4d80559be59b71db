#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs the suite with
# ctest. Integration tests start their own redis-server on a free loopback
# port and always stop it.
#
#   tests/run.sh              build in build/ and run every test
#   tests/run.sh --sanitize   the same under ASan + UBSan, in build-asan/
#   tests/run.sh --tsan       ThreadSanitizer build of the concurrent tests, in build-tsan/
#   tests/run.sh -- ARGS      pass ARGS to ctest (e.g. -R route -V)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/deploy/deps.sh"
bb_install_deps

mode=plain
ctest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) mode=asan ;;
    --tsan) mode=tsan ;;
    --) shift; ctest_args+=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "tests/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

case "$mode" in
  plain) build="$top/build"; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) build="$top/build-asan"; flags=(-DCMAKE_BUILD_TYPE=Debug -DBB_SANITIZE=ON -DBB_BENCH=OFF) ;;
  tsan) build="$top/build-tsan"; flags=(-DCMAKE_BUILD_TYPE=Debug -DBB_TSAN=ON -DBB_BENCH=OFF)
        ctest_args=(-L concurrency "${ctest_args[@]}") ;;
esac

cmake -S "$top" -B "$build" "${flags[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
# protobuf-c 1.4.1's own parser trips UBSan's shift check: out of our scope.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:suppressions=$top/tests/ubsan.supp}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
cd "$build"
ctest --output-on-failure -j"$(nproc)" "${ctest_args[@]}"
