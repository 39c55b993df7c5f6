#!/usr/bin/env bash
# kvseek against llama.cpp on the same GGUF, the same prompt tokens, lengths and thread count:
# prefill and decode tok/s per length, runs alternating (kvseek, llama.cpp, kvseek, ...) to
# cancel drift, and per length the median kvseek/llama.cpp ratios over the repeats, as JSON lines
# (scripts/bench_llamacpp.py does the work). llama.cpp comes from llama-cpp-python in the cached
# virtual environment of scripts/llamacpp_venv.sh (outside the repo; built on first use, ~10 min;
# native for this CPU, or the fallback it names). --flash-attn both runs llama.cpp with and without
# flash attention in turn and prints a summary for each.
# Decode: N tokens greedy (-n, default 64); llama.cpp ignores end-of-generation, kvseek stops at
# it (its generated_tokens says so). --long 32768 adds that length with kvseek's --long-selectors
# (default retrieval) against llama.cpp dense, --long-repeat times (default 1). Read the ratios
# only from an idle machine (--wait-idle: as in scripts/bench.sh).
#
# usage: scripts/bench_vs_llamacpp.sh [-m MODEL] [--lengths 512,1024] [-n 64] [-t THREADS]
#            [--repeat 3] [--long L] [--long-selectors S,S] [--long-repeat 1] [--flash-attn [on|off|both]] [--out FILE.jsonl]
#            [--wait-idle] [--max-load X] [--wait-minutes M] [-- extra kvseek generate options]
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/gemma-3-270m-q4_k_m.gguf
args=() wait_idle=0 max_load=1.5 wait_minutes=15 out=build/bench/vs-llamacpp.jsonl
threads=$(nproc)
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -m|--model) model=$2; shift 2;;
    -t|--threads) threads=$2; shift 2;;
    --lengths|-n|--repeat|--long|--long-selectors|--long-repeat) args+=("$1" "$2"); shift 2;;
    --flash-attn)   # on (bare), off or both
      case ${2:-} in on|off|both) args+=("$1" "$2"); shift 2;; *) args+=("$1" on); shift;; esac;;
    --out) out=$2; shift 2;;
    --wait-idle) wait_idle=1; shift;;
    --max-load) max_load=$2; shift 2;;
    --wait-minutes) wait_minutes=$2; shift 2;;
    --) shift; extra=("$@"); break;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "bench_vs_llamacpp.sh: unknown option $1 (see --help)" >&2; exit 2;;
  esac
done
[ -x build/kvseek ] || { echo "bench_vs_llamacpp.sh: build/kvseek is missing: run make first" >&2; exit 2; }
[ -f "$model" ] || { echo "bench_vs_llamacpp.sh: no model at $model" >&2; exit 2; }
py=$(bash scripts/llamacpp_venv.sh "$model")

. scripts/wait_idle.sh
[ "$wait_idle" = 1 ] && wait_idle bench_vs_llamacpp.sh "$max_load" "$wait_minutes"

tmp=$(mktemp -d /tmp/kvseek-vs-llamacpp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp build/kvseek "$tmp/kvseek"   # a private copy: a rebuild meanwhile does not disturb the runs
mkdir -p "$(dirname "$out")"
echo "bench_vs_llamacpp.sh: $(date -u +%FT%TZ), load average $(load1), $threads threads, results appended to $out" >&2
"$py" scripts/bench_llamacpp.py compare --model "$model" --kvseek "$tmp/kvseek" -t "$threads" \
  --out "$out" --tmp "$tmp" "${args[@]}" -- "${extra[@]}"
