"""Passkey (needle) retrieval across context lengths, needle depths and attention selectors.

Each run hides a 5-digit pass key at a depth of a filler text of about LENGTH tokens, asks for it,
and runs `kvseek generate --json` greedily with one selector. Prints one JSON line per run:
length, depth, selector, correct, keys-read fraction, mass recall, timings; with --plot, draws a
heatmap PNG (accuracy by depth x length, one panel per selector). --multi N hides N keys, each
for a different name, and asks for one of them, so that recall of the right keys matters.

Usage: python3 scripts/needle.py [--model M] [--lengths 2048,8192] [--depths 0,0.5,1]
                                 [--selectors dense,window,retrieval] [--multi N] [--plot out.png]
                                 [--context] [--merge old.jsonl] [extra kvseek generate options after --]

--context registers the filler text (everything but the question) once per length and depth with
`kvseek context build` and asks the question after it with each selector (`generate --context`):
one prefill serves every selector. Selectors there: dense, window, centroids (two levels) and
centroids-1 (one level, the fine centroids only). --merge adds the rows of an earlier run's JSON
lines to the plot (e.g. the prompt-mode panels of retrieval).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
HEAD = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information there.\n")
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
FILLER_TOKENS = 22  # gemma tokenizer; the prompt's real length is reported by kvseek


def build_prompt(length, depth, multi, rng):
    n = max(1, (length - 60 * max(1, multi)) // FILLER_TOKENS)
    keys = [str(rng.randint(10000, 99999)) for _ in range(max(1, multi))]
    if multi <= 1:
        needles = [f"The pass key is {keys[0]}. Remember it. {keys[0]} is the pass key. "]
        question, answer = "\nWhat is the pass key? The pass key is", keys[0]
    else:
        needles = [f"The pass key of {NAMES[i]} is {k}. Remember it. " for i, k in enumerate(keys)]
        which = rng.randrange(len(keys))
        question = f"\nWhat is the pass key of {NAMES[which]}? The pass key of {NAMES[which]} is"
        answer = keys[which]
    # the asked needle sits at `depth`; the others spread evenly over the filler
    if multi <= 1:
        placed = [(int(depth * n), needles[0])]
    else:
        others = [x for i, x in enumerate(needles) if i != which]
        placed = [(int(depth * n), needles[which])] + [(int(n * (i + 0.5) / len(others)), x) for i, x in enumerate(others)]
    parts = [FILLER] * n
    for pos, nd in sorted(placed, key=lambda x: -x[0]):  # from the end, so earlier slots stay put
        parts.insert(min(pos, len(parts)), nd)
    return HEAD + "".join(parts) + question, answer


def run_one(cmd, length, depth, sel, multi, answer, extra=None):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        return {"length": length, "depth": depth, "selector": sel, "error": p.stderr.strip()[-200:]}
    d = json.loads(p.stdout)
    at = d.get("attn", {})
    r = {"length": length, "prompt_tokens": d["prompt_tokens"] + d.get("context_tokens", 0), "depth": depth,
         "selector": sel, "multi": multi, "correct": answer in d["text"],
         "keys_read_fraction": round(at.get("keys_read_fraction", 1.0 if sel == "dense" else 0), 4),
         "mass_recall": round(at.get("mass_recall", 1.0 if sel == "dense" else 0), 4),
         "prefill_ms": round(d["prefill_ms"]), "index_build_ms": round(at.get("index_build_ms", 0)),
         "decode_tok_s": round(d["decode_tok_s"], 2), "answer": answer, "text": d["text"].strip()[:24]}
    r.update(extra or {})
    return r


def run_context(a, length, depth, prompt, answer):
    """Registers the filler once, then asks the question after it with every selector."""
    cut = prompt.rindex("\nWhat is the pass key")
    hay, question = prompt[:cut], prompt[cut:]
    out = []
    with tempfile.TemporaryDirectory(prefix="kvseek-needle-") as tmp:
        path, ctx = os.path.join(tmp, "hay.txt"), os.path.join(tmp, "ctx")
        with open(path, "w") as f:
            f.write(hay)
        p = subprocess.run([a.kvseek, "context", "build", "-m", a.model, "-f", path, "-o", ctx], capture_output=True,
                           text=True)
        if p.returncode:
            r = {"length": length, "depth": depth, "selector": "centroids", "error": p.stderr.strip()[-200:]}
            print(json.dumps(r), flush=True)
            return [r]
        info = json.loads(p.stdout.strip().splitlines()[-1])
        for sel in a.selectors.split(","):
            att = ["--attn", "centroids", "--attn-levels", "1"] if sel == "centroids-1" else ["--attn", sel]
            cmd = [a.kvseek, "generate", "-m", a.model, "--context", ctx, "-p", question, "-n", "8", "--temp", "0",
                   "--json"] + att + (["--measure-recall"] if sel != "dense" else []) + a.extra
            r = run_one(cmd, length, depth, sel, a.multi, answer,
                        {"mode": "context", "build_prefill_s": info["prefill_s"], "build_cluster_s": info["cluster_s"]})
            print(json.dumps(r), flush=True)
            out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--kvseek", default="build/kvseek")
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--selectors", default="dense,window,retrieval")
    ap.add_argument("--multi", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plot", default="")
    ap.add_argument("--context", action="store_true", help="register the filler as a context, ask after it")
    ap.add_argument("--merge", default="", help="JSON lines of an earlier run to add to the plot")
    ap.add_argument("extra", nargs="*", help="options passed to kvseek generate (after --)")
    a = ap.parse_args()
    results = []
    for length in [int(x) for x in a.lengths.split(",")]:
        for depth in [float(x) for x in a.depths.split(",")]:
            rng = random.Random(a.seed * 1000003 + length * 101 + int(depth * 100))
            prompt, answer = build_prompt(length, depth, a.multi, rng)
            if a.context:
                results += run_context(a, length, depth, prompt, answer)
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.write(prompt)
                path = f.name
            try:
                for sel in a.selectors.split(","):
                    cmd = [a.kvseek, "generate", "-m", a.model, "-f", path, "-n", "8", "--temp", "0",
                           "--json", "--attn", sel] + (["--measure-recall"] if sel != "dense" else []) + a.extra
                    r = run_one(cmd, length, depth, sel, a.multi, answer)
                    print(json.dumps(r), flush=True)
                    results.append(r)
            finally:
                os.unlink(path)
    if a.merge:
        with open(a.merge) as f:
            old = [json.loads(line) for line in f if line.strip()]
        have = {r["selector"] for r in results}
        results += [r for r in old if r.get("selector") not in have]
    if a.plot:
        plot(results, a.plot)


def plot(results, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("needle: matplotlib is not installed; no plot", file=sys.stderr)
        return
    order = ["dense", "window", "oracle", "retrieval", "ivf", "centroids-1", "centroids"]
    sels = sorted({r["selector"] for r in results}, key=lambda s: order.index(s) if s in order else 9)
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    fig, axes = plt.subplots(1, len(sels), figsize=(3.2 * len(sels), 3.2), squeeze=False)
    for ax, sel in zip(axes[0], sels):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in results:
            if r["selector"] == sel and "correct" in r:
                grid[depths.index(r["depth"])][lengths.index(r["length"])] = 1.0 if r["correct"] else 0.0
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{l // 1024}K" if l >= 1024 else str(l) for l in lengths])
        ax.set_yticks(range(len(depths)), [f"{int(d * 100)}%" for d in depths])
        reads = [r["keys_read_fraction"] for r in results if r["selector"] == sel and "correct" in r]
        title = sel if sel == "dense" else f"{sel} (reads {100 * sum(reads) / max(1, len(reads)):.1f}%)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("context length")
    axes[0][0].set_ylabel("needle depth")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"needle: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
