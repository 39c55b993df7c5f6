#!/usr/bin/env bash
# A portable offline bundle for a GPU machine without network (an offline cluster node) that has
# CUDA but none of kvseek's Debian libraries (for example an Ubuntu 24.04 image with CUDA 13):
# `scripts/gpu_bundle.sh pack` builds a portable CUDA binary here (x86-64-v3, sm_80 + sm_90) and
# puts it, the shared libraries such a machine lacks (libcjson, libmicrohttpd; the rest are used
# only where missing there), the gguf wheel for tests/make_tiny.py and the runner
# (scripts/gpu_bundle_run.sh as .devlibs/run.sh) into .devlibs/ (git-ignored through
# .git/info/exclude, about 16 MB). Copy the repository with .devlibs/ to the machine and run
# `bash .devlibs/run.sh SECONDS` there: scripts/bench_gpu.sh at 32K (test_gpu first),
# test_gpu_logits on the tiny models, then 128K as time allows. Results and logs land in $OUT
# (default ./gpu-out).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = pack ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
gd=$(git rev-parse --git-dir)
mkdir -p "$gd/info" .devlibs/bin .devlibs/whl
grep -qx '/.devlibs/' "$gd/info/exclude" 2>/dev/null || echo '/.devlibs/' >> "$gd/info/exclude"
make -j"$(nproc)" BUILD=build/devgpu CUDA=1 PORTABLE=1 build/devgpu/kvseek build/devgpu/tests/test_gpu
strip --strip-debug -o .devlibs/bin/kvseek build/devgpu/kvseek
strip --strip-debug -o .devlibs/bin/test_gpu build/devgpu/tests/test_gpu
tmp=$(mktemp -d)
mkdir -p "$tmp/libs"
for l in $(ldd build/devgpu/kvseek | awk '/=>/ {print $3}' | grep -v -e cuda -e 'libc\.so' -e 'libm\.so' \
             -e libstdc++ -e libgcc_s -e libpthread -e libdl -e librt); do
  cp -L "$l" "$tmp/libs/"
done
tar cJf .devlibs/libs.tar.xz -C "$tmp" libs
rm -rf "$tmp"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .devlibs/whl gguf==0.19.0
cp scripts/gpu_bundle_run.sh .devlibs/run.sh
du -sh .devlibs
