"""kvseek synth-model: the tiny preset written into a temp dir loads (info shows the shape),
generates deterministically from --prompt-ids with ids inside the vocab, and the q4_0 and f16
variants load and generate too; bad ids, a bad --type and a disk too small are one-line errors.

Run as: python3 tests/test_synth.py BUILD_DIR MODEL_PATH   (MODEL_PATH is not used)
"""
import json
import os
import subprocess
import sys
import tempfile

BUILD = sys.argv[1]
KV = os.path.join(BUILD, "kvseek")
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures += 1


def run(*args):
    p = subprocess.run([KV, *args], capture_output=True, text=True, errors="replace", timeout=600)
    return p.returncode, p.stdout, p.stderr


def one_line_error(rc, err):
    """A clean failure: nonzero status, an 'error:' line, no crash signal."""
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    return rc in (1, 2) and len(lines) == 1


TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_head_kv": 2, "head_dim": 16, "n_ff": 128,
        "n_vocab": 512, "arch": "llama", "bos": 1, "eos": 2}

rc, out, _ = run("synth-model", "--help")
check(rc == 0 and "usage: kvseek synth-model" in out, "synth-model --help")
rc, out, _ = run("generate", "--help")
check(rc == 0 and "--prompt-ids" in out, "generate --help lists --prompt-ids")

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "tiny.gguf")
    rc, out, err = run("synth-model", "-o", path, "--preset", "tiny", "--seed", "7")
    js = json.loads(out) if rc == 0 else {}
    check(rc == 0 and js.get("path") == path and js.get("bytes") == os.path.getsize(path)
          and js.get("params", 0) > 0 and "seconds" in js, f"tiny preset written: {out.strip()} {err.strip()}")
    check(not os.path.exists(path + ".tmp"), "no .tmp left behind")

    rc, out, err = run("info", "-m", path)
    info = json.loads(out) if rc == 0 else {}
    check(all(info.get(k) == v for k, v in TINY.items()), f"info shows the tiny shape: {out.strip()}")

    # the same seed gives the same bytes
    again = os.path.join(d, "again.gguf")
    rc, _, _ = run("synth-model", "-o", again, "--preset", "tiny", "--seed", "7", "-t", "1")
    check(rc == 0 and open(path, "rb").read() == open(again, "rb").read(),
          "the same seed gives the same file (1 thread vs the default)")

    ids = os.path.join(d, "ids.txt")
    with open(ids, "w") as f:
        f.write("1, 300 301,\n302\t400 511\n")
    outs = []
    for _ in range(2):
        rc, out, err = run("generate", "-m", path, "--prompt-ids", ids, "-n", "4", "--temp", "0", "--json")
        outs.append(json.loads(out) if rc == 0 else {"rc": rc, "err": err})
    toks = outs[0].get("tokens", [])
    check(outs[0].get("prompt_tokens") == 6 and len(toks) == 4 and all(0 <= t < 512 for t in toks),
          f"generate --prompt-ids: 6 prompt tokens, 4 ids within the vocab: {toks}")
    check(outs[0].get("tokens") == outs[1].get("tokens") and outs[0].get("text") == outs[1].get("text"),
          "greedy generation from ids repeats")

    # detokenizing every id of the vocab works
    rc, out, err = run("detokenize", "-m", path, "--special", "-p", ",".join(map(str, range(512))))
    check(rc == 0, "every id detokenizes")

    for bad, what in [("1 512", "an id past the vocab"), ("1 -3", "a negative id"), ("1 x2", "a non-number"),
                      ("", "an empty file")]:
        with open(ids, "w") as f:
            f.write(bad)
        rc, _, err = run("generate", "-m", path, "--prompt-ids", ids, "-n", "2", "--temp", "0")
        check(one_line_error(rc, err), f"--prompt-ids with {what} is a one-line error: {err.strip().splitlines()[-1] if err.strip() else ''}")
    rc, _, err = run("generate", "-m", path, "--prompt-ids", ids, "-p", "x")
    check(one_line_error(rc, err), "--prompt-ids with -p is a one-line error")
    rc, _, err = run("generate", "-m", path, "--prompt-ids", os.path.join(d, "missing.txt"))
    check(one_line_error(rc, err), "a missing --prompt-ids file is a one-line error")

    rc, _, err = run("synth-model", "-o", os.path.join(d, "x.gguf"), "--type", "q5_k")
    check(one_line_error(rc, err), "a bad --type is a one-line error")
    rc, _, err = run("synth-model", "-o", os.path.join(d, "x.gguf"), "--preset", "huge")
    check(one_line_error(rc, err), "a bad --preset is a one-line error")
    rc, _, err = run("synth-model", "-o", os.path.join(d, "x.gguf"), "--embd", "60")
    check(one_line_error(rc, err), "an embd not a multiple of 32 is a one-line error")
    rc, _, err = run("synth-model", "--preset", "tiny")
    check(one_line_error(rc, err), "no -o is a one-line error")
    # 4096 layers of the 8B shape: about 1 TB, more than any test disk holds; refused up front
    rc, _, err = run("synth-model", "-o", os.path.join(d, "x.gguf"), "--preset", "llama3-8b", "--layers", "4096")
    check(one_line_error(rc, err) and "disk space" in err and not os.listdir(d).count("x.gguf.tmp"),
          "a model larger than the free disk is refused: " + err.strip()[:100])

    with open(ids, "w") as f:
        f.write("1 260 261 262")
    for ty in ["q4_0", "f16"]:
        p = os.path.join(d, f"tiny-{ty}.gguf")
        rc, out, err = run("synth-model", "-o", p, "--type", ty)
        check(rc == 0 and json.loads(out).get("type") == ty, f"{ty} variant written")
        rc, out, err = run("generate", "-m", p, "--prompt-ids", ids, "-n", "4", "--temp", "0", "--json")
        toks = json.loads(out).get("tokens", []) if rc == 0 else []
        check(len(toks) == 4 and all(0 <= t < 512 for t in toks), f"{ty} variant loads and generates: {toks}")

    # a non-default shape: head dim apart from embd / heads, one KV head, larger vocab
    p = os.path.join(d, "shape.gguf")
    rc, out, err = run("synth-model", "-o", p, "--layers", "3", "--embd", "96", "--heads", "4", "--kv-heads", "1",
                       "--head-dim", "32", "--ff", "160", "--vocab", "1000", "--ctx", "131072", "--rope-base", "500000")
    rc2, out2, _ = run("info", "-m", p) if rc == 0 else (rc, "", "")
    info = json.loads(out2) if rc2 == 0 else {}
    check(info.get("n_layer") == 3 and info.get("head_dim") == 32 and info.get("n_head_kv") == 1
          and info.get("n_vocab") == 1000 and info.get("n_ctx_train") == 131072 and info.get("rope_base") == 500000,
          f"overridden shape reads back: {out2.strip()} {err.strip()}")

print("synth: %s" % ("all passed" if not failures else f"{failures} failed"))
sys.exit(1 if failures else 0)
