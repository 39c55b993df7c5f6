#!/usr/bin/env python3
"""Differential test of kvseek's block decoders against gguf-py's numpy dequantizer.

usage: test_dequant_ref.py BUILD_DIR [MODEL_PATH]   (the model is not needed)

For every supported type, random block bytes (scale fields forced to finite f16: mostly
uniform in +-[0.01, 2], some tiny, subnormal or zero) go through BUILD_DIR/tests/tool_dequant
and gguf.quants.dequantize. Both compute in f32 with the same operation order, so the
expected difference is 0; the pass limit is max|diff| <= 1e-6 * max|ref| (room for an FMA
contraction), with NaN in exactly the same places. Exit status 0 on success, 1 on failure.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# type -> (elements per block, bytes per block, byte offsets of f16 scale fields)
TYPES = {
    T.F32: (1, 4, []), T.F16: (1, 2, []), T.BF16: (1, 2, []),
    T.Q4_0: (32, 18, [0]), T.Q4_1: (32, 20, [0, 2]),
    T.Q5_0: (32, 22, [0]), T.Q5_1: (32, 24, [0, 2]), T.Q8_0: (32, 34, [0]),
    T.Q4_K: (256, 144, [0, 2]), T.Q5_K: (256, 176, [0, 2]), T.Q6_K: (256, 210, [208]),
}
N_BLOCKS = 4096
N_PLAIN = 65536 * 4   # elements for the plain f32/f16/bf16 types


def random_scales(rng, n):
    """n finite f16 scales: 90% uniform in +-[0.01, 2], the rest tiny, subnormal or zero."""
    v = rng.uniform(0.01, 2.0, n) * rng.choice([-1.0, 1.0], n)
    odd = rng.random(n) < 0.1
    special = rng.choice([0.0, -0.0, 6e-8, -6e-8, 3e-5, 1e-3, 6.1e-5], n)
    return np.where(odd, special, v).astype(np.float16)


def make_blocks(rng, qtype):
    bs, bb, scale_offs = TYPES[qtype]
    if bs == 1:                         # plain arrays: every bit pattern, NaN and inf included
        return rng.integers(0, 256, N_PLAIN * bb, dtype=np.uint8), N_PLAIN
    blocks = rng.integers(0, 256, (N_BLOCKS, bb), dtype=np.uint8)
    for off in scale_offs:
        blocks[:, off:off + 2] = random_scales(rng, N_BLOCKS).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1), N_BLOCKS * bs


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    tool = os.path.join(sys.argv[1], "tests", "tool_dequant")
    if not os.access(tool, os.X_OK):
        print(f"FAIL: {tool} not built")
        return 1
    rng = np.random.default_rng(1234)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
        for qtype in TYPES:
            data, n = make_blocks(rng, qtype)
            data.tofile(src)
            r = subprocess.run([tool, src, str(int(qtype)), str(n), out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL {qtype.name:5s} tool_dequant exited {r.returncode}: {r.stderr.strip()}")
                failed += 1
                continue
            got = np.fromfile(out, dtype="<f4")
            ref = dequantize(data, qtype).astype(np.float32).reshape(-1)
            if got.shape != ref.shape:
                print(f"FAIL {qtype.name:5s} got {got.size} values, expected {ref.size}")
                failed += 1
                continue
            nan_g, nan_r = np.isnan(got), np.isnan(ref)
            fin = ~nan_r & np.isfinite(ref)
            same_inf = np.array_equal(got[np.isinf(ref)], ref[np.isinf(ref)])
            diff = np.abs(got[fin].astype(np.float64) - ref[fin])
            maxdiff = float(diff.max()) if diff.size else 0.0
            scale = float(np.abs(ref[fin]).max()) if fin.any() else 1.0
            ok = np.array_equal(nan_g, nan_r) and same_inf and maxdiff <= 1e-6 * scale
            tag = "exact" if maxdiff == 0 else f"(limit {1e-6 * scale:.3g})"
            print(f"{'ok  ' if ok else 'FAIL'} {qtype.name:5s} n={n:8d} max|diff|={maxdiff:.3g} {tag}"
                  f" nan={int(nan_r.sum())}")
            failed += not ok
    print("test_dequant_ref:", "FAILED" if failed else "all types match gguf-py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
