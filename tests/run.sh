#!/usr/bin/env bash
# The test command: installs what is missing, builds, runs the suite with
# ctest. Integration tests start their own redis-server on a free loopback
# port and always stop it.
#
#   tests/run.sh              build in build/ and run every test
#   tests/run.sh --sanitize   the same under ASan + UBSan, in build-asan/
#   tests/run.sh --tsan       ThreadSanitizer build of the concurrent tests, in build-tsan/
#   tests/run.sh --faults [long] [NAME...]  the fault suite (tests/fault/): real Redis, brokers
#                             and workers under load and injected faults, checked against a
#                             delivery ledger; short profile unless "long"
#   tests/run.sh --fuzz [S]   every libFuzzer target of tests/fuzz/ for S seconds (20), clang
#                             with ASan + UBSan, in build-fuzz/; the seeds are copied, not grown
#   tests/run.sh -- ARGS      pass ARGS to ctest (e.g. -R route -V)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/deploy/deps.sh"
bb_install_deps

mode=plain
ctest_args=()
fuzz_seconds=20
fault_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) mode=asan ;;
    --tsan) mode=tsan ;;
    --faults) mode=faults; shift; fault_args=("$@"); break ;;
    --fuzz) mode=fuzz
            if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then fuzz_seconds=$2; shift; fi ;;
    --) shift; ctest_args+=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "tests/run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# Each fuzz target runs on a temporary copy of its seed corpus (the repository is not
# changed) for fuzz_seconds; a crash, leak, timeout or sanitizer report fails the run.
# Executions and coverage are reported per target; the reproducer is kept in
# build-fuzz/artifacts/.
run_fuzzers() {
  bb_install_deps clang
  local build="$top/build-fuzz"
  CC=clang cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g" -DBB_FUZZ=ON -DBB_BENCH=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target fuzzers
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:suppressions=$top/tests/ubsan.supp}
  local work failed=() t log dict
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$build/artifacts"
  for t in "$top"/tests/fuzz/corpus/*/; do
    t=$(basename "$t")
    cp -r "$top/tests/fuzz/corpus/$t" "$work/$t"
    log="$work/$t.log"
    dict=()
    if [ -f "$top/tests/fuzz/$t.dict" ]; then dict=(-dict="$top/tests/fuzz/$t.dict"); fi
    if (cd "$work" && "$build/tests/fuzz/fuzz_$t" -max_total_time="$fuzz_seconds" \
          -rss_limit_mb=2048 -timeout=25 -print_final_stats=1 "${dict[@]}" \
          -artifact_prefix="$build/artifacts/$t-" "$work/$t") >"$log" 2>&1; then
      printf 'fuzz_%-10s ok     %s\n' "$t" \
        "$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | sed -E 's/^#([0-9]+)[[:space:]]+DONE +cov: ([0-9]+).* exec\/s: ([0-9]+).*/\1 runs, \3 exec\/s, cov \2/')"
    else
      printf 'fuzz_%-10s FAILED\n' "$t"
      grep -E 'ERROR: |SUMMARY: |fuzz invariant|runtime error|Test unit written' "$log" | head -20 >&2
      failed+=("$t")
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]} (reproducers in $build/artifacts/)" >&2
    return 1
  fi
}
if [ "$mode" = fuzz ]; then
  run_fuzzers
  exit $?
fi

# The fault suite runs the plain build's programs; Debian's Python with its redis module.
if [ "$mode" = faults ]; then
  bb_install_deps python3-redis
  cmake -S "$top" -B "$top/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$top/build" -j"$(nproc)"
  profile=short
  if [ ${#fault_args[@]} -gt 0 ] && [ "${fault_args[0]}" = long ]; then
    profile=long
    fault_args=("${fault_args[@]:1}")
  fi
  exec /usr/bin/python3 "$top/tests/fault/run.py" --build "$top/build" --profile "$profile" \
    "${fault_args[@]}"
fi

# The console's browser test drives Debian's Chromium over the DevTools protocol.
if [ "$mode" = plain ] || [ "$mode" = asan ]; then
  bb_install_deps chromium python3-websocket
fi

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
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$top/tests/tsan.supp}
cd "$build"
ctest --output-on-failure -j"$(nproc)" "${ctest_args[@]}"
