#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, run and test kvseek:
# the Debian -dev packages and the Python test tooling. Idempotent and quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."
# nginx: the load balancer of scripts/cluster.sh and tests/test_cluster.py (never started as a service);
# chromium, chromium-driver, python3-selenium: tests/test_ui.py drives the web UI in a headless browser
pkgs=(build-essential libmicrohttpd-dev libcjson-dev libfaiss-dev libopenblas-openmp-dev python3 python3-pip nginx curl
      chromium chromium-driver python3-selenium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  # RUNLEVEL=1: the packages' scripts do not start services (nginx would take port 80)
  $sudo env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
py=${PYTHON:-python3}
if ! LITELLM_LOCAL_MODEL_COST_MAP=True "$py" -c 'import numpy, gguf, tokenizers, openai, yaml, huggingface_hub, jinja2, jsonschema, litellm, text_generation' 2>/dev/null; then
  echo "setup: installing Python test tooling (tests/requirements.txt)" >&2
  "$py" -m pip install -q -r tests/requirements.txt 2>/dev/null \
    || "$py" -m pip install -q --break-system-packages -r tests/requirements.txt
  "$py" -m pip install -q --no-deps -r tests/requirements-nodeps.txt 2>/dev/null \
    || "$py" -m pip install -q --no-deps --break-system-packages -r tests/requirements-nodeps.txt
fi
