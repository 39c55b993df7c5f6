#!/usr/bin/env bash
# One run on a lent GPU machine, from the .devlibs/ that `scripts/gpu_lease.sh pack` fills:
# unpacks the carried libraries and binaries, runs test_gpu, test_gpu_logits on the tiny models
# (with either prefill kernel), tiny-model decode through every selector on CPU and GPU, then
# scripts/bench_gpu.sh at 32K and, when the 32K prefill says it fits in what is left, 128K.
# Everything lands in $OUT (default ./gpu-out).
# usage: bash .devlibs/run.sh BUDGET_SECONDS
set -u
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${1:-560}
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
ldd build/cuda/kvseek | grep -E "not found|cublas|cudart" 
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devlibs/whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

say "test_gpu"
timeout "$(cap 150)" build/cuda/tests/test_gpu > "$OUT/test_gpu.log" 2>&1; rc_kern=$?
grep -v '^ok' "$OUT/test_gpu.log" | head -60
say "test_gpu rc $rc_kern ($(grep -c '^ok' "$OUT/test_gpu.log") ok lines)"
if [ "$rc_kern" -ne 0 ]; then
  say "compute-sanitizer on test_gpu"
  timeout "$(cap 120)" compute-sanitizer --tool memcheck --print-limit 20 build/cuda/tests/test_gpu > "$OUT/sanitizer.log" 2>&1
  grep -v '^ok' "$OUT/sanitizer.log" | head -80
fi

say "tiny models"
timeout 60 python3 tests/make_tiny.py build/tiny > /dev/null 2>&1 || say "make_tiny failed"
ls build/tiny
timeout "$(cap 150)" python3 tests/test_gpu_logits.py build /nonexistent > "$OUT/logits.log" 2>&1; rc_log=$?
cat "$OUT/logits.log"
say "test_gpu_logits rc $rc_log"
say "test_gpu_logits with the tensor-core prefill forced (KVSEEK_GPU_PREFILL=gemm)"
KVSEEK_GPU_PREFILL=gemm timeout "$(cap 100)" python3 tests/test_gpu_logits.py build /nonexistent > "$OUT/logits-gemm.log" 2>&1
rc_g=$?; cat "$OUT/logits-gemm.log"; say "gemm test_gpu_logits rc $rc_g"
if [ "$rc_log" -ne 0 ]; then
  ids=$(python3 -c "import random; random.seed(1); print(','.join(str(random.randint(3, 200)) for _ in range(40)))")
  timeout "$(cap 90)" compute-sanitizer --tool memcheck --print-limit 20 build/cuda/kvseek logits \
      -m build/tiny/tiny-llama.gguf --tokens "$ids" --out /tmp/l.f32 --device cuda --chunk 7 > "$OUT/sanitizer2.log" 2>&1
  head -80 "$OUT/sanitizer2.log"
fi

say "tiny decode through the selectors, cpu vs cuda (informational: random weights, near ties)"
timeout "$(cap 90)" python3 - <<'EOF'
import json, random, subprocess
exe = "build/cuda/kvseek"
for m in ["build/tiny/tiny-llama-f32.gguf", "build/tiny/tiny-gemma3-f32.gguf", "build/tiny/tiny-qwen2-f32.gguf"]:
    nv = json.loads(subprocess.run([exe, "info", "-m", m], capture_output=True, text=True).stdout)["n_vocab"]
    random.seed(5)
    open("/tmp/ids.txt", "w").write(",".join(str(random.randint(3, nv - 1)) for _ in range(400)))
    for sel in ["dense", "window", "retrieval", "centroids"]:
        r = {}
        for dev in ["cpu", "cuda"]:
            p = subprocess.run([exe, "generate", "-m", m, "--prompt-ids", "/tmp/ids.txt", "-n", "12", "--temp", "0",
                                "--json", "--attn", sel, "--sink", "16", "--window", "64", "--device", dev],
                               capture_output=True, text=True, timeout=60)
            if p.returncode:
                r[dev] = "ERR " + p.stderr.strip()[-300:]
            else:
                d = json.loads(p.stdout); r[dev] = (d["tokens"], d.get("device"))
        same = r["cpu"] == r["cuda"] or (isinstance(r["cpu"], tuple) and isinstance(r["cuda"], tuple) and r["cpu"][0] == r["cuda"][0])
        print(("same " if same else "DIFF ") + m.split("/")[-1] + " " + sel + ": cpu " + str(r["cpu"]) + " | cuda " + str(r["cuda"]), flush=True)
EOF

if [ "$rc_kern" -ne 0 ]; then
  say "kernel tests failed: no benchmark"; exit 1
fi

say "bench_gpu 32K"
mkdir -p build/bench
export TMPDIR=/tmp
timeout "$(cap 300)" scripts/bench_gpu.sh --lengths 32768 --selectors retrieval,centroids,dense -n 16 \
    --out "$OUT/gpu.jsonl" --timeout 120
say "bench_gpu 32K done"
# 128K: attention grows with the square, so 16x the 32K prefill plus the index builds
pf=$(python3 -c "
import json
for l in open('$OUT/gpu.jsonl'):
    d = json.loads(l)
    if d.get('bench') == 'decode' and d.get('selector') == 'retrieval' and d.get('prefill_s'): print(int(d['prefill_s']) + 1); break
" 2>/dev/null)
for sel in retrieval centroids; do
  if [ -n "$pf" ] && [ $(( pf * 10 + 30 )) -lt "$(left)" ]; then
    say "bench_gpu 128K $sel (32K prefill ${pf}s, $(left)s left)"
    t1=$(date +%s)
    timeout "$(cap 600)" scripts/bench_gpu.sh --lengths 131072 --selectors $sel -n 16 \
        --out "$OUT/gpu.jsonl" --timeout "$(( $(left) - 8 ))"
    pf=$(( ($(date +%s) - t1) / 10 ))
  else
    say "no 128K $sel run: ${pf:-?}, $(left)s left"
  fi
done
tar czf "$OUT/benchlogs.tgz" build/bench 2>/dev/null
say "end"
