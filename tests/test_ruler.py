"""The RULER-style suite (scripts/ruler.py): its scorer on hand-made answers; its samples without
the engine (every reference answer in the text, the needles each task hides, the length in the
model's own tokens, the same text for the same seed); and, when `kvseek eval` is built, a smoke
run at 2K tokens where dense attention must score above a sinks-only selector.

Run as: python3 tests/test_ruler.py BUILD_DIR MODEL_PATH
"""
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
from kvserver import Checks  # noqa: E402
import ruler  # noqa: E402

BUILD, MODEL = sys.argv[1], sys.argv[2]
KV = os.path.join(BUILD, "kvseek")
check = Checks()

# --- (a) the scorer: RULER's string_match_all ---
sm = ruler.string_match_all
check(sm("The special magic number is 1234567.", ["1234567"]) == 100, "one reference found: 100")
check(sm("the number is 7654321", ["1234567"]) == 0, "no reference found: 0")
check(sm("Answer: APPLE, Banana", ["apple", "bANANA"]) == 100, "case-insensitive")
check(sm("1. liberty 2. green", ["liberty", "green", "thick", "valet"]) == 50, "2 of 4 references: 50")
check(abs(sm("VAR ABCDE", ["ABCDE", "FGHIJ", "KLMNO"]) - 100 / 3) < 1e-9, "1 of 3 references: 33.3")
check(sm("\x00 1234567\x01", ["1234567"]) == 100, "control characters do not hide a reference")
rows = [{"model": "m", "task": "vt", "length": 4096, "selector": "dense", "score": s, "n_context": 4000,
         "keys_read": None, "mass_recall": None, "decode_s": 1.0} for s in (100.0, 50.0, 0.0)]
g = ruler.aggregate(rows, {})
check(g["score"] == 50 and g["n"] == 3 and g["errors"] == 0, f"a task's score is the mean of its samples ({g})")

# --- (b) generation, measured with the model's tokenizer ---
tok = ruler.Tokenizer(KV, MODEL)
hay = ruler.Haystack()
check(tok.sep is not None, f"tokens of many texts counted in one call (separator {tok.sep!r})")
check(not tok.chatml, "the base model gets no chat template (its vocabulary has no <|im_start|>)")
check(len(hay.vocab) > 3000 and len(hay.adjs) > 200 and len(hay.nouns) > 300,
      f"word lists from the haystack: {len(hay.vocab)} words, {len(hay.adjs)} adjectives, {len(hay.nouns)} nouns")

LENGTH = 4096
calls = tok.calls
samples = ruler.build(tok, list(ruler.TASKS), LENGTH, 2, 42, hay, "none")
check(tok.calls - calls <= 8, f"11 tasks x 2 samples fitted with {tok.calls - calls} tokenize calls")
check(sorted({s["task"] for s in samples}) == sorted(ruler.TASKS) and len(samples) == 22, "2 samples of each task")

for s in samples:
    t, c = s["task"], ruler.TASKS[s["task"]]
    ctx, q = s["context"], s["question"]
    budget = LENGTH - c["max_new"]
    check(all(a in ctx for a in s["answers"]) and s["answers"], f"{s['id']}: every answer is in the context")
    check(not any(a in q for a in s["answers"]), f"{s['id']}: no answer in the question")
    check(0.96 * budget <= s["n_prompt"] <= budget,
          f"{s['id']}: {s['n_prompt']} prompt tokens + {c['max_new']} new within 4% below {LENGTH}")
    if c["kind"] == "niah":
        needles = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", ctx)
        asked = [n for n in needles if n[0] in s["keys"]]
        want = {"niah_multikey_1": 4, "niah_multivalue": 4, "niah_multiquery": 4}.get(t, 1)
        if c["hay"] == "needle":
            check(len(needles) >= s["size"] and len(asked) == 1,
                  f"{s['id']}: a haystack of {len(needles)} needles, one for the key asked")
        else:
            check(len(needles) == want, f"{s['id']}: {len(needles)} needles hidden (want {want})")
        check(sorted(v for _, v in asked) == sorted(s["answers"]) and len(s["keys"]) == c["nq"],
              f"{s['id']}: the needles of the {c['nq']} key(s) asked hold exactly the answers")
        check(all(k in q for k in s["keys"]), f"{s['id']}: the question names the key(s)")
    elif t == "vt":
        hay_part = ctx[ctx.rindex("following text.\n\n"):]
        chain = re.findall(r"VAR (\w+) = (?:VAR (\w+)|(\d+))", hay_part)
        order = [x[0] for x in chain]
        check(order == s["answers"] and chain[0][2] in q and all(chain[i][1] == order[i - 1] for i in range(1, 5)),
              f"{s['id']}: one chain of 4 hops in order, its value in the question")
        check(len(re.findall(r"VAR [A-Z]{3} =", ctx)) == 5, f"{s['id']}: a solved example chain (3-letter names)")
    elif t == "cwe":
        listed = re.findall(r"\d+\. (\w+)", ctx[ctx.rindex("most often.\n"):])
        n = collections.Counter(listed)
        check(all(n[w] == 30 for w in s["answers"]) and set(n.values()) == {30, 3} and len(s["answers"]) == 10,
              f"{s['id']}: the 10 answers 30 times each, {len(n) - 10} other words 3 times")
    elif t == "fwe":
        n = collections.Counter(ctx[ctx.rindex("coded words. "):].split()[2:])
        top = [w for w, _ in n.most_common(4) if w != "..."][:3]
        check(sorted(top) == sorted(s["answers"]) and n.most_common(1)[0][0] == "...",
              f"{s['id']}: the answers are the 3 most frequent coded words after '...'")
    check(q.startswith("\n") and not ctx.endswith("\n"), f"{s['id']}: the context ends at the haystack")

# the counts above came from one call per round; the engine tokenizes each part alone
for s in samples[::2]:
    own = len(tok.ids(s["context"], bos=True)) + len(tok.ids(s["question"]))
    check(own == s["n_prompt"], f"{s['id']}: batched count {s['n_prompt']} == separate count {own}")

again = ruler.build(tok, list(ruler.TASKS), LENGTH, 2, 42, hay, "none")
check([(s["context"], s["question"], s["answers"]) for s in again] ==
      [(s["context"], s["question"], s["answers"]) for s in samples], "the same seed gives the same samples")
other = ruler.build(tok, ["niah_single_2", "vt"], LENGTH, 2, 43, hay, "none")
check(all(o["answers"] != s["answers"] for o in other for s in samples if s["id"] == o["id"]),
      "another seed gives other answers")

# the smoke length: below 4K, cwe repeats its common words 6 times and the others once (RULER)
small = ruler.build(tok, ["niah_single_1", "niah_multikey_1", "cwe"], 2048, 1, 42, hay, "none")
for s in small:
    budget = 2048 - ruler.TASKS[s["task"]]["max_new"]
    check(0.96 * budget <= s["n_prompt"] <= budget, f"{s['id']}: {s['n_prompt']} prompt tokens (budget {budget})")
n = collections.Counter(re.findall(r"\d+\. (\w+)", small[2]["context"][small[2]["context"].rindex("most often.\n"):]))
check(set(n.values()) == {6, 1} and all(n[w] == 6 for w in small[2]["answers"]), "cwe at 2K: 6 and 1 repeats")

# an instruct model's chat template (RULER's wrapping; the answer prefix after the assistant turn)
s = ruler.make_sample("niah_single_1", 4096, 0, 20, 42, hay, "chatml")
check(s["context"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                              "A special magic number is hidden")
      and s["question"].endswith("<|im_end|>\n<|im_start|>assistant\n The special magic number for "
                                 f"{s['keys'][0]} mentioned in the provided text is"), "ChatML wrapping")

# --- (c) a smoke run through kvseek eval: dense must beat attention to 4 sink tokens only ---
# window=1: the 4 sinks and the current token only (a decode row always sees itself)
sinks = "window:window=1:sink=4"
with tempfile.TemporaryDirectory(prefix="kvseek-ruler-") as tmp:
    out = os.path.join(tmp, "ruler.jsonl")
    cmd = [sys.executable, os.path.join(HERE, "..", "scripts", "ruler.py"), "--smoke", "--n", "2",
           "--kvseek", KV, "--model", MODEL, "--selectors", "dense," + sinks, "--out", out, "--table",
           "--", "--no-recall"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(p.stderr[-1500:])
    printed = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    check(p.returncode == 0 and len(printed) == 4, f"smoke run: {len(printed)} task rows printed (want 4)")
    with open(out) as f:
        kept = [json.loads(x) for x in f]
    per_sample = [r for r in kept if r["row"] == "sample"]
    check(len(per_sample) == 8 and all("error" not in r for r in per_sample), "8 sample rows kept, no errors")
    fields = {"model", "task", "length", "n_context", "selector", "score", "n", "keys_read", "mass_recall",
              "decode_s", "date", "commit", "cmd"}
    check(all(fields <= set(g) and g["n"] == 2 and g["length"] == 2048 for g in printed),
          "task rows carry model, task, length, n_context, selector, score, n, keys read, recall, time, commit")
    score = {sel: sum(g["score"] for g in printed if g["selector"] == sel) / 2 for sel in ("dense", sinks)}
    print(f"smoke scores: {score}")
    check(score["dense"] > score[sinks], f"dense ({score['dense']:.1f}) scores above sinks only "
                                           f"({score[sinks]:.1f})")
    check("| **average** |" in p.stdout, "--table prints the average row")
    p = subprocess.run(cmd[:-2] + ["--resume"], capture_output=True, text=True, timeout=120)
    check(p.returncode == 0 and not [x for x in p.stdout.splitlines() if x.startswith("{")]
          and "| **average** |" in p.stdout, "--resume runs nothing already in --out, still prints the table")
    # --report reads the file only: no kvseek (a path that does not exist), no model, no defaults run
    before = open(out).read()
    p = subprocess.run([sys.executable, os.path.join(HERE, "..", "scripts", "ruler.py"), "--report", "--out", out,
                        "--kvseek", os.path.join(tmp, "no-such-kvseek")], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0 and "| **average** |" in p.stdout and "2048 tokens" in p.stdout
          and open(out).read() == before, "--report prints the stored table and runs nothing")
    p = subprocess.run([sys.executable, os.path.join(HERE, "..", "scripts", "ruler.py"), "--report"],
                       capture_output=True, text=True, timeout=60)
    check(p.returncode != 0 and "--out" in p.stderr, "--report without --out: a one-line error")

print(f"{'FAIL' if check.failures else 'ok'}: test_ruler ({check.failures} failed)")
sys.exit(1 if check.failures else 0)
