#!/usr/bin/env bash
# Builds llama-cpp-python once into a cached virtual environment outside the repo and prints its
# python's path. Used only to compare kvseek with llama.cpp; no llama.cpp code enters the repo.
# GGML_NATIVE is off and AMX disabled: the native build (AMX tiles on Sapphire Rapids under a
# hypervisor) segfaulted in the first decode on this machine.
set -euo pipefail
venv=${KVSEEK_LLAMACPP_VENV:-$HOME/.cache/kvseek/llamacpp-venv2}
if ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "llamacpp_venv: building llama-cpp-python into $venv (takes ~10 minutes on 2 cores)" >&2
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" \
    "$venv/bin/pip" install -q --no-cache-dir llama-cpp-python numpy >&2
fi
echo "$venv/bin/python"
