#!/usr/bin/env bash
# `make bench`: how fast kvseek runs on this machine, as JSON lines.
#   1. `kvseek bench-kernels --json`: memory bandwidth, matvec GB/s per weight type, attention GB/s,
#      the model's bytes read per decoded token and the implied tok/s ceilings (--no-kernels skips);
#   2. scripts/bench_speed.py: prefill tok/s and decode tok/s at each prompt length (512, 4K, 16K,
#      32K tokens by default) for dense and each selector, and a PNG of decode tok/s against
#      context length, one line per selector.
# One generate run per (length, selector): the 32K prefill alone takes minutes on 2 cores, so pick
# lengths and selectors for a quick run (--lengths 512,4096 --selectors dense,window).
# The runs use a private copy of build/kvseek, so a rebuild meanwhile does not disturb them.
# Timings on a shared machine are only worth reading when it is idle: --wait-idle waits (up to
# --wait-minutes, default 15, checking each minute) for the 1-minute load average to drop below
# --max-load (default 1.5) and gives up with status 3 if it does not. Every line records the load
# average at its start.
#
# usage: scripts/bench.sh [-m MODEL] [--lengths L,L] [--selectors S,S] [-n N] [-t THREADS]
#                         [--repeat R] [--out FILE.jsonl] [--plot FILE.png] [--no-kernels]
#                         [--wait-idle] [--max-load X] [--wait-minutes M] [-- generate options]
# Defaults: the default model, all four lengths and selectors, -n 64, output in build/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/gemma-3-270m-q4_k_m.gguf
lengths=512,4096,16384,32768
selectors=dense,window,retrieval,centroids
n=64 threads= repeat=1 kernels=1 wait_idle=0 max_load=1.5 wait_minutes=15
out=build/bench/bench.jsonl plot=build/bench/decode.png
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -m|--model) model=$2; shift 2;;
    --lengths) lengths=$2; shift 2;;
    --selectors) selectors=$2; shift 2;;
    -n) n=$2; shift 2;;
    -t|--threads) threads=$2; shift 2;;
    --repeat) repeat=$2; shift 2;;
    --out) out=$2; shift 2;;
    --plot) plot=$2; shift 2;;
    --no-kernels) kernels=0; shift;;
    --wait-idle) wait_idle=1; shift;;
    --max-load) max_load=$2; shift 2;;
    --wait-minutes) wait_minutes=$2; shift 2;;
    --) shift; extra=("$@"); break;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
[ -x build/kvseek ] || { echo "bench.sh: build/kvseek is missing: run make first" >&2; exit 2; }
[ -f "$model" ] || { echo "bench.sh: no model at $model" >&2; exit 2; }

. scripts/wait_idle.sh
[ "$wait_idle" = 1 ] && wait_idle bench.sh "$max_load" "$wait_minutes"

tmp=$(mktemp -d /tmp/kvseek-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp build/kvseek "$tmp/kvseek"
mkdir -p "$(dirname "$out")" "$(dirname "$plot")"
echo "bench.sh: $(date -u +%FT%TZ), load average $(load1), model $model, results appended to $out" >&2

if [ "$kernels" = 1 ]; then
  "$tmp/kvseek" bench-kernels --json -m "$model" ${threads:+-t "$threads"} | tee -a "$out"
fi
python3 scripts/bench_speed.py --kvseek "$tmp/kvseek" --model "$model" --lengths "$lengths" \
  --selectors "$selectors" -n "$n" ${threads:+-t "$threads"} --repeat "$repeat" --out "$out" \
  --plot "$plot" --tmp "$tmp" -- "${extra[@]}"
