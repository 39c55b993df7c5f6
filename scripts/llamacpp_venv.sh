#!/usr/bin/env bash
# Builds llama-cpp-python once into a cached virtual environment outside the repo and prints its
# python's path. Used only to compare kvseek with llama.cpp; no llama.cpp code enters the repo.
#
# The build is native (GGML_NATIVE=ON: -march=native, as a user building llama.cpp on this
# machine gets) unless KVSEEK_LLAMACPP_BUILD says otherwise. Each build must pass a smoke test (load
# a model, prefill, decode a few tokens) before it is used; where one fails (a native build with
# AMX tiles crashed in the first decode on a Sapphire Rapids guest), the next is tried, and stderr
# says which was used and why:
#   native   GGML_NATIVE=ON
#   avx512   AVX-512 (F, BW, VL, VBMI, VNNI, BF16) and AVX-VNNI, AMX off: native minus AMX
#            (tried only where /proc/cpuinfo lists avx512f and avx512_vnni)
#   avx2     AVX2, FMA, F16C only
# The chosen build's name is in <venv>/kvseek-build; scripts/bench_llamacpp.py reports it.
#
# usage: scripts/llamacpp_venv.sh [MODEL]   (the smoke test's model; default: the default model)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/gemma-3-270m-q4_k_m.gguf}
want=${KVSEEK_LLAMACPP_BUILD:-native}
cache=${KVSEEK_LLAMACPP_CACHE:-$HOME/.cache/kvseek}
ver=${KVSEEK_LLAMACPP_VERSION:-0.3.36}

flags_of() {
  case $1 in
    native) echo "-DGGML_NATIVE=ON";;
    avx512) echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF";;
    avx2) echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF";;
    *) echo "llamacpp_venv: unknown build '$1' (native, avx512 or avx2)" >&2; exit 2;;
  esac
}

# A build works when a child process loads the model, prefills and decodes without crashing.
smoke() {
  [ -f "$model" ] || { echo "llamacpp_venv: no model at $model for the smoke test; not tested" >&2; return 0; }
  timeout 300 "$1/bin/python" - "$model" <<'EOF' >/dev/null 2>&1
import sys
from llama_cpp import Llama
m = Llama(sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
ids = m.tokenize(b"The quick brown fox jumps over the lazy dog. " * 8)
m.eval(ids)
import numpy as np
for _ in range(4):
    m.eval([int(np.argmax(np.ctypeslib.as_array(m._ctx.get_logits(), shape=(m.n_vocab(),))))])
EOF
}

build() {   # build NAME: builds (or reuses) the venv of that build; 0 when it passes the smoke test
  local name=$1 venv="$cache/llamacpp-$1"
  if [ -f "$venv/kvseek-build" ] && "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    grep -q '^ok' "$venv/kvseek-build" && return 0
    echo "llamacpp_venv: the $name build failed its smoke test before: $(cat "$venv/kvseek-build")" >&2
    return 1
  fi
  echo "llamacpp_venv: building llama-cpp-python $ver ($name: $(flags_of "$name")) into $venv (~10 minutes on 2 cores)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  CMAKE_ARGS="$(flags_of "$name")" "$venv/bin/pip" install -q --no-cache-dir "llama-cpp-python==$ver" numpy >&2
  local rc=0
  smoke "$venv" || rc=$?
  if [ "$rc" = 0 ]; then
    printf 'ok %s %s\n' "$name" "$(flags_of "$name")" > "$venv/kvseek-build"
    return 0
  fi
  printf 'failed %s %s (exit %s)\n' "$name" "$(flags_of "$name")" "$rc" > "$venv/kvseek-build"
  echo "llamacpp_venv: the $name build failed its smoke test (exit $rc: 139 is a segfault, 124 a timeout)" >&2
  return 1
}

order="$want"
case $want in
  native) order="native avx512 avx2";;
  avx512) order="avx512 avx2";;
esac
for name in $order; do
  if [ "$name" = avx512 ] && ! grep -q 'avx512f' /proc/cpuinfo 2>/dev/null; then continue; fi
  if [ "$name" = avx512 ] && ! grep -q 'avx512_vnni' /proc/cpuinfo 2>/dev/null; then continue; fi
  if build "$name"; then
    [ "$name" = "$want" ] || echo "llamacpp_venv: using the $name build (the $want build failed here)" >&2
    echo "$cache/llamacpp-$name/bin/python"
    exit 0
  fi
done
echo "llamacpp_venv: no llama-cpp-python build passed its smoke test" >&2
exit 1
