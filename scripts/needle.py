"""Passkey (needle) retrieval across context lengths, needle depths and attention selectors.

Each run hides a 5-digit pass key at a depth of a filler text of about LENGTH tokens, asks for it,
and runs `kvseek generate --json` greedily with one selector. Prints one JSON line per run:
length, depth, selector, correct, keys-read fraction, mass recall, timings; with --plot, draws a
heatmap PNG (accuracy by depth x length, one panel per selector). --multi N hides N keys, each
for a different name, and asks for one of them, so that recall of the right keys matters.

Usage: python3 scripts/needle.py [--model M] [--lengths 2048,8192] [--depths 0,0.5,1]
                                 [--selectors dense,window,retrieval] [--multi N] [--plot out.png]
                                 [extra kvseek generate options after --]
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
    ap.add_argument("extra", nargs="*", help="options passed to kvseek generate (after --)")
    a = ap.parse_args()
    results = []
    for length in [int(x) for x in a.lengths.split(",")]:
        for depth in [float(x) for x in a.depths.split(",")]:
            rng = random.Random(a.seed * 1000003 + length * 101 + int(depth * 100))
            prompt, answer = build_prompt(length, depth, a.multi, rng)
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.write(prompt)
                path = f.name
            try:
                for sel in a.selectors.split(","):
                    cmd = [a.kvseek, "generate", "-m", a.model, "-f", path, "-n", "8", "--temp", "0",
                           "--json", "--attn", sel] + (["--measure-recall"] if sel != "dense" else []) + a.extra
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    if p.returncode:
                        r = {"length": length, "depth": depth, "selector": sel, "error": p.stderr.strip()[-200:]}
                    else:
                        d = json.loads(p.stdout)
                        at = d.get("attn", {})
                        r = {"length": length, "prompt_tokens": d["prompt_tokens"], "depth": depth,
                             "selector": sel, "multi": a.multi, "correct": answer in d["text"],
                             "keys_read_fraction": round(at.get("keys_read_fraction", 1.0 if sel == "dense" else 0), 4),
                             "mass_recall": round(at.get("mass_recall", 1.0 if sel == "dense" else 0), 4),
                             "prefill_ms": round(d["prefill_ms"]), "index_build_ms": round(at.get("index_build_ms", 0)),
                             "decode_tok_s": round(d["decode_tok_s"], 2), "answer": answer, "text": d["text"].strip()[:24]}
                    print(json.dumps(r), flush=True)
                    results.append(r)
            finally:
                os.unlink(path)
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
    sels = sorted({r["selector"] for r in results}, key=lambda s: ["dense", "window", "oracle", "retrieval", "ivf"].index(s)
                  if s in ["dense", "window", "oracle", "retrieval", "ivf"] else 9)
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
