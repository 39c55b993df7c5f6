#!/usr/bin/env bash
# Runs the offline bundle that `scripts/gpu_bundle.sh pack` fills (.devlibs/) on the GPU machine:
# unpacks the carried libraries and binaries, then scripts/bench_gpu.sh at 32K (which runs
# test_gpu first and stops on a failing kernel), test_gpu_logits on the tiny models, and 128K
# retrieval (then centroids) while time is left. Everything lands in $OUT (default ./gpu-out).
# usage: bash .devlibs/run.sh BUDGET_SECONDS [sparse|long]
#   sparse: no tests (for a second run after a full one): the sparse selectors at 32K, then
#   retrieval at 64K and 128K as time allows
#   long: no tests, retrieval at 128K (about 5 minutes on an H200), then centroids if time is left
set -u
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${1:-560}
MODE=${2:-full}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
cap() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }
exec > >(tee -a "$OUT/run.log") 2>&1
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

say "env"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
nproc; grep -m1 "model name" /proc/cpuinfo; grep -m1 -o 'avx512[a-z_]*' /proc/cpuinfo | head -1
head -2 /etc/os-release; free -g | head -2; df -h /tmp | tail -1

# binaries where the scripts expect them; libraries only for what the image lacks
mkdir -p build/cuda/tests /tmp/kvall /tmp/kvlibs
cp .devlibs/bin/kvseek build/cuda/kvseek; cp .devlibs/bin/test_gpu build/cuda/tests/test_gpu
tar xJf .devlibs/libs.tar.xz -C /tmp/kvall
cudadirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && cudadirs="$cudadirs:$d"; done
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13; do
  if ! ls /usr/local/cuda/lib64/$lib >/dev/null 2>&1; then
    f=$(find / -xdev -name "$lib*" -not -path '/proc/*' 2>/dev/null | head -1)
    [ -n "$f" ] && cudadirs="$cudadirs:$(dirname "$f")"
  fi
done
export LD_LIBRARY_PATH="/tmp/kvlibs${cudadirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for round in 1 2 3 4; do
  for lib in $(ldd build/cuda/kvseek build/cuda/tests/test_gpu | awk '/not found/ {print $1}' | sort -u); do
    if [ -f /tmp/kvall/libs/$lib ]; then ln -sf /tmp/kvall/libs/$lib /tmp/kvlibs/$lib; echo "carried lib: $lib"; fi
  done
done
ldd build/cuda/kvseek | grep -E "not found|cublas|cudart|blas" 
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devlibs/whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

mkdir -p build/bench
export TMPDIR=/tmp
# one bench_gpu.sh run (no kernel checks) at LEN with SELECTOR, given the rest of the budget,
# when more than MIN seconds are left
bench_rest() {
  if [ "$(left)" -gt "$3" ]; then
    say "bench_gpu $1 $2 ($(left)s left)"
    timeout "$(cap 600)" scripts/bench_gpu.sh --lengths "$1" --selectors "$2" -n 16 --no-kernel-checks \
        --out "$OUT/gpu.jsonl" --timeout "$(( $(left) - 10 ))"
  else
    say "no $1 $2 run: $(left)s left"
  fi
}
finish() { tar czf "$OUT/benchlogs.tgz" build/bench 2>/dev/null; say "end"; exit 0; }

if [ "$MODE" = long ]; then
  bench_rest 131072 retrieval 150
  bench_rest 131072 centroids 150
  finish
fi
if [ "$MODE" = sparse ]; then
  say "bench_gpu 32K retrieval, centroids (no kernel checks)"
  timeout "$(cap 200)" scripts/bench_gpu.sh --lengths 32768 --selectors retrieval,centroids -n 16 \
      --out "$OUT/gpu.jsonl" --timeout 90 --no-kernel-checks
  bench_rest 65536 retrieval 100
  bench_rest 131072 retrieval 100
  finish
fi

# bench_gpu.sh runs test_gpu first and stops when a kernel fails: the 32K figures come first,
# then the logits test, then 128K with whatever time is left
say "bench_gpu 32K (test_gpu first)"
timeout "$(cap 280)" scripts/bench_gpu.sh --lengths 32768 --selectors dense,retrieval,centroids -n 16 \
    --out "$OUT/gpu.jsonl" --timeout 100
cp build/bench/test_gpu.log "$OUT/test_gpu.log" 2>/dev/null
grep -v '^ok' "$OUT/test_gpu.log" | head -40
rc_kern=1; grep -q '"test_gpu", "ok": true' "$OUT/gpu.jsonl" 2>/dev/null && rc_kern=0
say "bench_gpu 32K done (test_gpu rc $rc_kern, $(grep -c '^ok' "$OUT/test_gpu.log" 2>/dev/null) ok lines)"
if [ "$rc_kern" -ne 0 ]; then
  say "compute-sanitizer on test_gpu"
  timeout "$(cap 120)" compute-sanitizer --tool memcheck --print-limit 20 build/cuda/tests/test_gpu > "$OUT/sanitizer.log" 2>&1
  grep -v '^ok' "$OUT/sanitizer.log" | head -80
  exit 1
fi

say "tiny models: test_gpu_logits"
timeout 60 python3 tests/make_tiny.py build/tiny > /dev/null 2>&1 || say "make_tiny failed"
timeout "$(cap 120)" python3 tests/test_gpu_logits.py build /nonexistent > "$OUT/logits.log" 2>&1; rc_log=$?
cat "$OUT/logits.log"
say "test_gpu_logits rc $rc_log"

# 128K: the f16 KV (16 GB) stays in pinned host memory; retrieval first, centroids if time is left
bench_rest 131072 retrieval 150
bench_rest 131072 centroids 150
finish
