"""Prefill and decode speed of `kvseek generate` by prompt length and attention selector.

For each length L (prompt tokens) a prompt of about L tokens is cut from tests/data's Jargon File
excerpt (tokenized once, the first L - 1 tokens detokenized; repeated past its 34K tokens), and
`kvseek generate --json --temp 0 -n N --attn S` runs once per selector S (repeats go round all
selectors before the next repeat, so drift hits every selector alike). Each run prints one JSON
line: prompt tokens, prefill tok/s, decode tok/s (N - 1 forwards after the prompt, so the
context grows from L to L + N), the index build that retrieval/centroids run at the end of the
prompt (inside the prefill time, as it delays the first token), keys read and the 1-minute
load average when the run started. --plot draws decode tok/s against context length, one line per
selector (and prefill tok/s in a second panel).

Usage: python3 scripts/bench_speed.py [--model M] [--kvseek build/kvseek] [--lengths 512,4096,16384,32768]
           [--selectors dense,window,retrieval,centroids] [-n 64] [-t THREADS] [--repeat 1]
           [--out FILE.jsonl] [--plot FILE.png] [-- extra kvseek generate options]
       python3 scripts/bench_speed.py --replot RUN.jsonl [RUN.jsonl ...] --plot FILE.png
       python3 scripts/bench_speed.py prompt [--model M] [--kvseek EXE] --length L --out PROMPT.txt
           (writes the prompt text for L, and PROMPT.txt.ids with the ids kvseek reads from it)
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TEXT = os.path.join(ROOT, "tests", "data", "jargon-4.4.7-excerpt.txt")


def kvseek(exe, *args):
    p = subprocess.run([exe, *args], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"kvseek {args[0]} failed: {p.stderr.strip()[-400:]}")
    return p.stdout


def make_prompt(exe, model, length, path, cache={}):
    """Writes a prompt of about `length` tokens (BOS included) to path and the ids kvseek reads
    from it to path + '.ids'; returns the ids."""
    key = (exe, model)
    if key not in cache:
        cache[key] = json.loads(kvseek(exe, "tokenize", "-m", model, "-f", TEXT, "--no-bos"))
    body = cache[key]
    need = max(1, length - 1)
    ids = (body * (need // len(body) + 1))[:need]
    with open(path + ".ids.tmp", "w") as f:
        f.write(",".join(map(str, ids)))
    text = kvseek(exe, "detokenize", "-m", model, "-f", path + ".ids.tmp")
    os.unlink(path + ".ids.tmp")
    text = text[:-1] if text.endswith("\n") else text   # detokenize ends with a newline
    with open(path, "w") as f:
        f.write(text)
    got = json.loads(kvseek(exe, "tokenize", "-m", model, "-f", path))
    with open(path + ".ids", "w") as f:
        f.write(",".join(map(str, got)))
    return got


def threads_used(stderr):
    """The thread count kvseek reports when it loads the model ("..., 2 threads")."""
    m = re.search(r"(\d+) threads", stderr)
    return int(m.group(1)) if m else None


def run_generate(a, prompt_path, length, sel, rep):
    load1 = os.getloadavg()[0]
    cmd = [a.kvseek, "generate", "-m", a.model, "-f", prompt_path, "-n", str(a.n),
           "--temp", "0", "--json", "--attn", sel] + (["-t", str(a.threads)] if a.threads else []) + a.extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    r = {"length": length, "selector": sel, "rep": rep, "load1": round(load1, 2)}
    if p.returncode:
        r["error"] = p.stderr.strip()[-300:]
        return r
    d = json.loads(p.stdout)
    at = d.get("attn", {})
    n_dec = max(0, d["generated_tokens"] - 1)
    build_ms = at.get("index_build_ms", 0.0)
    dec_ms = d["decode_ms"]
    r.update({
        "prompt_tokens": d["prompt_tokens"], "threads": threads_used(p.stderr),
        "prefill_ms": round(d["prefill_ms"], 1), "prefill_tok_s": round(d["prefill_tok_s"], 2),
        "generated_tokens": d["generated_tokens"], "finish_reason": d["finish_reason"],
        "decode_ms": round(dec_ms, 1), "decode_tok_s": round(d["decode_tok_s"], 2),
        "index_build_ms": round(build_ms, 1),
        "attn_ms": round(at.get("attn_ms", 0.0), 1), "search_ms": round(at.get("search_ms", 0.0), 1),
        "keys_read_fraction": round(at.get("keys_read_fraction", 0.0), 4), "kv_bytes": at.get("kv_bytes"),
    })
    return r


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_speed: matplotlib is not installed; no plot (pip install matplotlib)", file=sys.stderr)
        return
    ok = [r for r in rows if "error" not in r and "decode_tok_s" in r]
    sels = list(dict.fromkeys(r["selector"] for r in ok))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in sels:
        by_len = {}
        for r in ok:
            if r["selector"] == s:
                by_len.setdefault(r["prompt_tokens"], []).append(r)
        xs = sorted(by_len)
        ax1.plot(xs, [statistics.median(r["decode_tok_s"] for r in by_len[x]) for x in xs],
                 marker="o", label=s)
        ax2.plot(xs, [statistics.median(r["prefill_tok_s"] for r in by_len[x]) for x in xs], marker="o", label=s)
    for ax, t in ((ax1, "decode tok/s"), (ax2, "prefill tok/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (prompt tokens)")
        ax.set_title(t)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend()
    loads = [r["load1"] for r in ok]
    if ok:
        fig.suptitle(f"kvseek generate, {os.path.basename(ok[0].get('model', ''))}, "
                     f"1-min load average {min(loads):.1f}-{max(loads):.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"bench_speed: wrote {path}", file=sys.stderr)


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    if argv and argv[0] == "prompt":
        ap = argparse.ArgumentParser(prog="bench_speed.py prompt")
        ap.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
        ap.add_argument("--kvseek", default=os.path.join("build", "kvseek"))
        ap.add_argument("--length", type=int, required=True)
        ap.add_argument("--out", required=True)
        a = ap.parse_args(argv[1:])
        ids = make_prompt(a.kvseek, a.model, a.length, a.out)
        print(json.dumps({"prompt": a.out, "prompt_tokens": len(ids)}))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", "-m", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--kvseek", default=os.path.join("build", "kvseek"),
                    help="the binary (scripts/bench.sh passes a private copy, so rebuilds do not interfere)")
    ap.add_argument("--lengths", default="512,4096,16384,32768")
    ap.add_argument("--selectors", default="dense,window,retrieval,centroids")
    ap.add_argument("-n", type=int, default=64, help="tokens to generate (decode steps + 1)")
    ap.add_argument("-t", "--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--plot", help="PNG of decode (and prefill) tok/s against context length")
    ap.add_argument("--tmp", default=os.path.join("build", "bench"))
    ap.add_argument("--replot", nargs="+", metavar="JSONL",
                    help="no runs: plot (--plot) the generate lines of these earlier outputs")
    a = ap.parse_args(argv)
    a.extra = extra
    if a.replot:
        rows = [json.loads(line) for f in a.replot for line in open(f) if line.startswith("{")]
        plot([r for r in rows if "selector" in r], a.plot or os.path.join(a.tmp, "decode.png"))
        return
    os.makedirs(a.tmp, exist_ok=True)
    rows = []
    out = open(a.out, "a") if a.out else None
    # one untimed run first: it brings the model file into the page cache, so that the first
    # timed run does not pay for the disk
    subprocess.run([a.kvseek, "generate", "-m", a.model, "-p", "warm up", "-n", "2", "--temp", "0"],
                   capture_output=True)
    for length in [int(x) for x in a.lengths.split(",")]:
        path = os.path.join(a.tmp, f"prompt-{length}.txt")
        make_prompt(a.kvseek, a.model, length, path)
        for rep in range(a.repeat):
            for sel in a.selectors.split(","):
                r = run_generate(a, path, length, sel, rep)
                r["model"] = a.model
                rows.append(r)
                line = json.dumps(r)
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
    if a.plot:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
