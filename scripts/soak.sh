#!/usr/bin/env bash
# Soak test of the HTTP server (see scripts/soak.py): N clients for a set time, then checks no
# 5xx but overload answers, no hang, flat RSS and consistent request counters.
#   scripts/soak.sh [--clients 8] [--seconds 60] [--model M]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/soak.py "$@"
