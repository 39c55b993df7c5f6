#!/usr/bin/env bash
# Greedy tokens of one kvseek binary for every selector, on prompts cut from a text file, and on
# a registered context: the behaviour record a refactoring must keep. Prints JSON lines
# {"model", "n_prompt", "selector", "context", "tokens"}; two runs (before, after) diff cleanly.
#   scripts/greedy_tokens.sh KVSEEK MODEL TEXT_FILE [LENGTHS] [N_PREDICT] > out.jsonl
# LENGTHS: prompt lengths in tokens (default "1024 8192"); N_PREDICT default 16. The context case
# registers the first LENGTH-64 tokens as a context and asks with the last 64.
set -euo pipefail
bin=$1 model=$2 text=$3
lengths=${4:-1024 8192}
n=${5:-16}
selectors="dense window oracle retrieval ivf centroids"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=${PYTHON:-python3}

ids_all="$work/ids_all"
"$bin" tokenize -m "$model" -f "$text" --no-bos | tr -d '[] \n' > "$ids_all"

emit() { # selector context jsonfile
  "$py" - "$model" "$L" "$1" "$2" "$3" <<'PY'
import json, os, sys
model, L, sel, ctx, f = sys.argv[1:]
try:
    toks = json.load(open(f))["tokens"]
except Exception as e:
    toks = "error: " + open(f).read().strip()[-200:]
print(json.dumps({"model": os.path.basename(model), "n_prompt": int(L), "selector": sel,
                  "context": ctx == "1", "tokens": toks}))
PY
}

for L in $lengths; do
  cut_ids() { "$py" -c 'import sys; a=open(sys.argv[1]).read().split(","); lo,hi=int(sys.argv[2]),int(sys.argv[3]); print(",".join(a[lo:hi]))' "$@"; }
  [ "$(tr ',' '\n' < "$ids_all" | wc -l)" -ge "$L" ] || { echo "error: $text has fewer than $L tokens" >&2; exit 1; }
  cut_ids "$ids_all" 0 "$L" > "$work/p$L"
  for s in $selectors; do
    "$bin" generate -m "$model" --prompt-ids "$work/p$L" -n "$n" --temp 0 --attn "$s" --json \
      > "$work/out" 2>"$work/err" || cp "$work/err" "$work/out"
    emit "$s" 0 "$work/out"
  done
  cut_ids "$ids_all" 0 $((L - 64)) > "$work/c$L"
  cut_ids "$ids_all" $((L - 64)) "$L" > "$work/q$L"
  rm -rf "$work/ctx$L"
  "$bin" context build -m "$model" --tokens "$(cat "$work/c$L")" -o "$work/ctx$L" >/dev/null 2>"$work/err" \
    || { echo "error: context build: $(tail -1 "$work/err")" >&2; exit 1; }
  for s in dense window centroids retrieval; do
    "$bin" generate -m "$model" --context "$work/ctx$L" --prompt-ids "$work/q$L" -n "$n" --temp 0 \
      --attn "$s" --json > "$work/out" 2>"$work/err" || cp "$work/err" "$work/out"
    emit "$s" 1 "$work/out"
  done
done
