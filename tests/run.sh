#!/usr/bin/env bash
# Runs every test: the C test binaries (build/tests/test_*) and the Python differential tests
# (tests/test_*.py, each given the build folder and the default model path). Prints one line per
# test and closes with "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
model=${2:-models/gemma-3-270m-q4_k_m.gguf}
py=${PYTHON:-python3}
pass=0; fail=0; failed=()
run_one() {
  local name=$1; shift
  local t0=$(date +%s.%N)
  if "$@" > "$build/tests/$name.log" 2>&1; then
    pass=$((pass+1)); printf 'ok    %-28s %6.1fs\n' "$name" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')"
  else
    fail=$((fail+1)); failed+=("$name")
    printf 'FAIL  %-28s (log: %s)\n' "$name" "$build/tests/$name.log"
    tail -n 20 "$build/tests/$name.log" | sed 's/^/      /'
  fi
}
mkdir -p "$build/tests"
for t in "$build"/tests/test_*; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  case "$t" in *.log|*.d) continue;; esac
  run_one "$(basename "$t")" "$t"
done
for t in tests/test_*.py; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t" .py)" "$py" "$t" "$build" "$model"
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
