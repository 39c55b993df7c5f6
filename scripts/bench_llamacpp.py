"""kvseek against llama.cpp (llama-cpp-python) on the same GGUF, prompt tokens, lengths and thread
count; run with the python that scripts/llamacpp_venv.sh prints (scripts/bench_vs_llamacpp.sh
does). Two modes:

  compare: per length, a prompt of that many tokens (scripts/bench_speed.py's, from the Jargon
           File excerpt); then per repeat one `kvseek generate --json --temp 0 -n N` run and one
           llama.cpp run, alternating (A B A B) so that drift hits both. Prints a JSON line per run
           and per length a summary: the median of each tool's prefill and decode tok/s and the
           median over repeats of the paired kvseek/llama.cpp ratios. --long L adds a length
           where kvseek runs with each of --long-selectors (llama.cpp dense, once per repeat).
           --flash-attn on|off|both (bare: on): llama.cpp with flash attention, without, or
           both in turn (A B C A B C), a summary per mode. Every summary names the llama.cpp
           build (scripts/llamacpp_venv.sh: native, avx512 or avx2) and its system info.
  run:     one llama.cpp run: prefill of the ids, then greedy decode of N tokens ignoring
           end-of-generation (the first from the prefill's logits, then N - 1 forwards, as kvseek
           counts), timed like kvseek's --json output.

Usage: python bench_llamacpp.py compare [--model M] [--kvseek EXE] [--lengths 512,1024] [-n 64]
           [-t THREADS] [--repeat 3] [--long 32768] [--long-selectors retrieval] [--flash-attn on|off|both]
           [--out FILE.jsonl] [-- extra kvseek generate options]
       python bench_llamacpp.py run MODEL IDS_FILE N THREADS [--flash-attn] [--n-batch B]
IDS_FILE: comma-separated token ids, BOS included (what `kvseek tokenize` prints for the prompt).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_llama(argv):
    import numpy as np
    from llama_cpp import Llama

    ap = argparse.ArgumentParser(prog="bench_llamacpp.py run")
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("n", type=int)
    ap.add_argument("threads", type=int)
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--n-batch", type=int, default=512)
    a = ap.parse_args(argv)
    ids = [int(x) for x in open(a.ids).read().replace("[", "").replace("]", "").split(",") if x.strip()]
    m = Llama(a.model, n_ctx=len(ids) + a.n + 8, n_batch=a.n_batch, n_ubatch=a.n_batch, n_threads=a.threads,
              n_threads_batch=a.threads, flash_attn=a.flash_attn, logits_all=False, verbose=False)
    n_vocab = m.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(m._ctx.get_logits(), shape=(n_vocab,))

    t0 = time.perf_counter()
    m.eval(ids)
    tok = int(np.argmax(last_logits()))   # reading the logits waits for the computation
    t_prefill = time.perf_counter() - t0
    out = [tok]
    t1 = time.perf_counter()
    for _ in range(a.n - 1):
        m.eval([tok])
        tok = int(np.argmax(last_logits()))
        out.append(tok)
    t_decode = time.perf_counter() - t1
    n_dec = a.n - 1
    print(json.dumps({
        "prompt_tokens": len(ids), "generated_tokens": len(out), "threads": a.threads,
        "n_batch": a.n_batch, "flash_attn": a.flash_attn,
        "prefill_ms": round(t_prefill * 1e3, 1), "prefill_tok_s": round(len(ids) / t_prefill, 2),
        "decode_ms": round(t_decode * 1e3, 1), "decode_tok_s": round(n_dec / t_decode, 2) if n_dec else 0.0,
        "tokens": out,
    }))


def kvseek_run(a, prompt, length, sel):
    cmd = [a.kvseek, "generate", "-m", a.model, "-f", prompt, "-n", str(a.n), "--temp", "0", "--json",
           "--attn", sel, "-t", str(a.threads)] + a.extra
    r = {"tool": "kvseek", "length": length, "selector": sel, "load1": round(os.getloadavg()[0], 2)}
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        r["error"] = p.stderr.strip()[-300:]
        return r
    d = json.loads(p.stdout)
    r.update({k: d[k] for k in ("prompt_tokens", "generated_tokens", "finish_reason", "tokens")})
    r.update({k: round(d[k], 2) for k in ("prefill_ms", "prefill_tok_s", "decode_ms", "decode_tok_s")})
    r["index_build_ms"] = round(d.get("attn", {}).get("index_build_ms", 0.0), 1)
    return r


def llama_build():
    """The llama.cpp build this python runs: scripts/llamacpp_venv.sh's name for it, the version
    and ggml's system info (the instruction sets it was compiled with)."""
    info = {"build": "unknown"}
    try:
        info["build"] = open(os.path.join(sys.prefix, "kvseek-build")).read().split()[1]
    except (OSError, IndexError):
        pass
    try:
        import llama_cpp
        info["version"] = llama_cpp.__version__
        info["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    except Exception as e:   # an older binding: the name alone
        info["system_info"] = f"unavailable: {e}"
    return info


def llama_run(a, ids_file, length, fa):
    cmd = [sys.executable, os.path.abspath(__file__), "run", a.model, ids_file, str(a.n), str(a.threads)]
    cmd += ["--flash-attn"] if fa else []
    r = {"tool": "llama.cpp", "length": length, "selector": "dense", "load1": round(os.getloadavg()[0], 2)}
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        r["error"] = p.stderr.strip()[-300:]
        return r
    r.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return r


def compare(argv):
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="bench_llamacpp.py compare")
    ap.add_argument("--model", "-m", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--kvseek", default=os.path.join("build", "kvseek"))
    ap.add_argument("--lengths", default="512,1024")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--long", type=int, default=0, help="also this length, kvseek with --long-selectors")
    ap.add_argument("--long-selectors", default="retrieval")
    ap.add_argument("--long-repeat", type=int, default=1,
                    help="repeats at --long (a 32K llama.cpp prefill alone takes minutes)")
    ap.add_argument("--flash-attn", nargs="?", const="on", default="off", choices=["off", "on", "both"],
                    help="llama.cpp with flash attention (on), without (off), or each in turn (both)")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--tmp", default=os.path.join("build", "bench"))
    a = ap.parse_args(argv)
    a.extra = extra
    fa_modes = {"off": [False], "on": [True], "both": [False, True]}[a.flash_attn]
    build = llama_build()
    print(f"bench_llamacpp.py: llama.cpp {build.get('version', '?')}, {build['build']} build: "
          f"{build.get('system_info', '')}", file=sys.stderr, flush=True)
    sys.path.insert(0, HERE)
    from bench_speed import make_prompt

    os.makedirs(a.tmp, exist_ok=True)
    out = open(a.out, "a") if a.out else None

    def emit(r):
        line = json.dumps(r)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    # untimed runs first: the model file into the page cache, llama.cpp's libraries loaded once
    subprocess.run([a.kvseek, "generate", "-m", a.model, "-p", "warm up", "-n", "2", "--temp", "0"],
                   capture_output=True)
    warm = os.path.join(a.tmp, "warm.txt")
    make_prompt(a.kvseek, a.model, 16, warm)
    for fa in fa_modes:
        llama_run(a, warm + ".ids", 16, fa)
    plan = [(int(x), ["dense"]) for x in a.lengths.split(",") if x.strip()]
    if a.long:
        plan.append((a.long, a.long_selectors.split(",")))
    for length, sels in plan:
        prompt = os.path.join(a.tmp, f"prompt-{length}.txt")
        ids = make_prompt(a.kvseek, a.model, length, prompt)
        runs = []
        for rep in range(a.long_repeat if a.long and length == a.long else a.repeat):
            for sel in sels:   # A B A B: kvseek, llama.cpp, kvseek, llama.cpp, ... (A B C with both)
                kv = kvseek_run(a, prompt, len(ids), sel)
                kv["rep"] = rep
                emit({k: v for k, v in kv.items() if k != "tokens"})
                for fa in fa_modes:
                    ll = llama_run(a, prompt + ".ids", len(ids), fa)
                    ll["rep"] = rep
                    ll["flash_attn"] = fa
                    emit({k: v for k, v in ll.items() if k != "tokens"})
                    runs.append((sel, fa, kv, ll))
        for sel, fa in [(s, f) for s in sels for f in fa_modes]:
            ok = [(kv, ll) for s, f, kv, ll in runs
                  if s == sel and f == fa and "error" not in kv and "error" not in ll]
            if not ok:
                continue
            same = 0
            for x, y in zip(ok[0][0]["tokens"], ok[0][1]["tokens"]):
                if x != y:
                    break
                same += 1
            med = lambda k, i: round(statistics.median(p[i][k] for p in ok), 2)
            ratio = lambda k: round(statistics.median(kv[k] / ll[k] for kv, ll in ok if ll[k] > 0), 3)
            emit({"summary": True, "length": len(ids), "kvseek_selector": sel, "threads": a.threads, "n": a.n,
                  "repeats": len(ok), "kvseek_prefill_tok_s": med("prefill_tok_s", 0),
                  "llamacpp_prefill_tok_s": med("prefill_tok_s", 1), "prefill_ratio": ratio("prefill_tok_s"),
                  "kvseek_decode_tok_s": med("decode_tok_s", 0), "llamacpp_decode_tok_s": med("decode_tok_s", 1),
                  "decode_ratio": ratio("decode_tok_s"),
                  "same_greedy_tokens": same,
                  "load1_range": [min(min(kv["load1"], ll["load1"]) for kv, ll in ok),
                                  max(max(kv["load1"], ll["load1"]) for kv, ll in ok)],
                  "flash_attn": fa, "llamacpp_build": build["build"],
                  "llamacpp_version": build.get("version"), "llamacpp_system_info": build.get("system_info")})


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        run_llama(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "compare":
        compare(sys.argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
