#!/usr/bin/env bash
# The GPU benchmark, one self-contained run for a GPU machine (it needs no network; only the
# working tree travels): builds the CUDA backend when build/cuda/kvseek is missing, writes a
# random-weight GGUF in the Llama-3-8B shape (kvseek synth-model: 32 layers, 32 heads, 8 KV heads,
# dim 4096, head dim 128), then for each context length prefills that many random token ids and decodes
# N tokens with each selector under a GPU memory budget (default 24 GB, an RTX 4090-class card;
# the f16 weights take 16 GB of it), and measures the sparse-attention kernel's bandwidth
# (kvseek bench-gpu). Everything is printed as JSON lines and appended to --out.
#
# usage: scripts/bench_gpu.sh [--lengths 32768,131072] [--selectors dense,retrieval,centroids]
#            [-n 32] [--budget-gb 24] [--type q8_0] [--model FILE] [--out FILE] [--timeout S]
#            [--chunk 4096]   (prefill rows per forward pass: each pass re-reads the layer's KV)
#            [--no-kernel-checks]   (skip test_gpu and bench-gpu: a second call on one machine)
set -uo pipefail
cd "$(dirname "$0")/.."
lengths=32768,131072 selectors=dense,retrieval,centroids n=32 budget=24 type=q8_0
model="" out=build/bench/gpu.jsonl timeout_s=1500 chunk=4096 checks=1
while [ $# -gt 0 ]; do
  case $1 in
    --lengths) lengths=$2; shift 2;;
    --selectors) selectors=$2; shift 2;;
    -n) n=$2; shift 2;;
    --budget-gb) budget=$2; shift 2;;
    --type) type=$2; shift 2;;
    --model) model=$2; shift 2;;
    --out) out=$2; shift 2;;
    --timeout) timeout_s=$2; shift 2;;
    --chunk) chunk=$2; shift 2;;
    --no-kernel-checks) checks=0; shift;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "bench_gpu.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
mkdir -p "$(dirname "$out")"
emit() { echo "$1"; echo "$1" >> "$out"; }

exe=build/cuda/kvseek
if [ ! -x "$exe" ]; then
  echo "bench_gpu.sh: building the CUDA backend (make cuda-build)" >&2
  make -j"$(nproc)" cuda-build >&2 || { emit '{"error": "make cuda-build failed"}'; exit 1; }
fi
[ -x "$exe" ] || { emit '{"error": "no build/cuda/kvseek (is nvcc installed?)"}'; exit 1; }
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
emit "{\"bench\": \"env\", \"date\": \"$(date -u +%FT%TZ)\", \"gpu\": \"${gpu:-none}\", \"cpus\": $(nproc), \"budget_gb\": $budget, \"type\": \"$type\", \"chunk\": $chunk, \"prefill_kernel\": \"${KVSEEK_GPU_PREFILL:-auto}\"}"

if [ "$checks" = 1 ]; then
  # the kernels against their CPU references first: a failing kernel makes every figure moot
  if ! build/cuda/tests/test_gpu > build/bench/test_gpu.log 2>&1; then
    emit "{\"bench\": \"test_gpu\", \"ok\": false, \"log\": \"build/bench/test_gpu.log\"}"
    tail -n 20 build/bench/test_gpu.log >&2
    exit 1
  fi
  if grep -q '^skipped' build/bench/test_gpu.log; then
    emit "{\"bench\": \"gpu\", \"skipped\": \"$(head -n 1 build/bench/test_gpu.log | tr -d '"\\')\"}"
    exit 0
  fi
  emit "{\"bench\": \"test_gpu\", \"ok\": true, \"checks\": $(grep -c '^ok' build/bench/test_gpu.log)}"

  # the sparse-attention kernel's bandwidth: pages in device memory, read in place from pinned
  # host memory, or gathered on the CPU into a pinned staging buffer and copied
  "$exe" bench-gpu --keys 131072 --dim 128 --group 4 --select 0.02 2>>build/bench/gpu.log | tee -a "$out"
fi

tmp=${TMPDIR:-/tmp}/kvseek-bench-gpu
mkdir -p "$tmp"
if [ -z "$model" ]; then
  model=$tmp/llama3-8b-$type.gguf
  [ -f "$model" ] || "$exe" synth-model --preset llama3-8b --type "$type" -o "$model" | tee -a "$out" ||
    { emit '{"error": "synth-model failed"}'; exit 1; }
fi

IFS=, read -ra L <<< "$lengths"
IFS=, read -ra S <<< "$selectors"
for len in "${L[@]}"; do
  ids=$tmp/ids-$len.txt
  # random ids in [3, 128000): no BOS/EOS among them (the synthetic model's special ids are 0-2)
  awk -v n="$len" 'BEGIN { srand(1); for (i = 0; i < n; i++) printf "%d%s", 3 + int(rand() * 127997), (i + 1 < n ? "," : "\n") }' > "$ids"
  for sel in "${S[@]}"; do
    # dense "when it fits": on the emulated card the f16 weights and the whole f16 KV cache
    # (32 layers x 8 KV heads x (128 + 128) x 2 bytes per token) must share the budget
    if [ "$sel" = dense ] && [ -z "${KVSEEK_BENCH_DENSE_ANYWAY:-}" ] &&
       awk -v l="$len" -v b="$budget" 'BEGIN { exit !(16.06e9 + l * 32 * 8 * 256 * 2 > b * 1e9) }'; then
      emit "{\"bench\": \"decode\", \"length\": $len, \"selector\": \"dense\", \"skipped\": \"f16 weights + f16 KV exceed ${budget} GB\"}"
      continue
    fi
    log=build/bench/gpu-$len-$sel.log
    res=$(timeout "$timeout_s" "$exe" generate -m "$model" --device cuda --gpu-mem-gb "$budget" \
            --prompt-ids "$ids" -n "$n" --temp 0 --json --attn "$sel" --kv-f16 -c $((len + n + 8)) --chunk "$chunk" \
            -t "$(nproc)" 2>"$log")
    rc=$?
    if [ $rc -ne 0 ] || [ -z "$res" ]; then
      emit "{\"bench\": \"decode\", \"length\": $len, \"selector\": \"$sel\", \"error\": \"rc $rc: $(tail -n 1 "$log" | tr -d '"\\' | cut -c1-200)\"}"
      continue
    fi
    emit "$(python3 - "$len" "$sel" "$res" <<'EOF' 2>/dev/null || echo "{\"bench\": \"decode\", \"length\": $len, \"selector\": \"$sel\", \"raw\": $res}"
import json, sys
length, sel, d = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
n_dec = max(0, d["generated_tokens"] - 1)
a = d.get("attn", {})
print(json.dumps({"bench": "decode", "length": length, "selector": sel, "device": d.get("device"),
                  "prefill_s": round(d["prefill_ms"] / 1e3, 2), "prefill_tok_s": round(d["prefill_tok_s"], 1),
                  "decode_ms_per_token": round(d["decode_ms"] / n_dec, 2) if n_dec else None,
                  "decode_tok_s": round(d["decode_tok_s"], 2), "index_build_s": round(a.get("index_build_ms", 0) / 1e3, 2),
                  "keys_read_fraction": a.get("keys_read_fraction"), "search_ms": a.get("search_ms"),
                  "kv_bytes": a.get("kv_bytes")}))
EOF
)"
  done
done
