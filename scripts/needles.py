"""Needles in several styles: does a sparse selector give dense attention's answer?

Each sample hides one or several keyed codes in a filler text of about LENGTH tokens and asks for
one of them. Styles vary independently per sample (seeded): the filler (public-domain essays, the
Jargon File, generated shipping-log lines, repeated plain sentences), the needle's and the
question's phrasing, the code (digits, two words, letters and digits, a UUID fragment) and the
number of keys (1 or 4). `kvseek eval` prefills each sample once and answers through every
selector from forks; a selector agrees when the code it answers is dense's. Prints one JSON line
per (sample, selector) with --rows, and one summary line per selector: agreement with dense,
accuracy, mean keys read, mass recall and the attention output's relative error against dense
(out_err, per sparse row, layer and KV head).

Usage: python3 scripts/needles.py [--model M] [--length 8192] [--n 20] [--seed 7] [--first K]
                                  [--selectors dense,retrieval,centroids] [--out FILE] [--rows] [--dump FILE]
                                  [-- extra kvseek eval options]
"""
import argparse
import datetime
import json
import os
import random
import re
import string
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ruler  # noqa: E402  (its tokenizer, chat template, kvseek eval runner)

ROOT = ruler.ROOT

WORDS = ("amber copper velvet granite orchid falcon harbor lantern meadow quartz saffron thistle "
         "willow cobalt ember juniper marble nectar onyx pepper raven silver tundra violet").split()
LABELS = ["the north gate", "Dr. Okafor's locker", "project Heron", "the blue vault", "cabin 12",
          "the March audit", "Ms. Lindqvist's account", "the old observatory"]
NEEDLES = [
    "The access code for {label} is {code}. ",
    "Note for the archive: {label} opens with the code {code}, and nothing else. ",
    "(Remember this: the secret word for {label} is {code}.) ",
    "According to the records, the combination assigned to {label} was {code}. ",
]
QUESTIONS = [
    ("What is the access code for {label}?", "The access code for {label} is"),
    ("Which code opens {label}? Answer with the code only.", "The code for {label} is"),
    ("Tell me the secret code of {label} mentioned in the text.", "The secret code of {label} is"),
]
CODES = {
    "digits": (lambda r: str(r.randint(10000, 9999999)), r"\d{5,7}"),
    "words": (lambda r: "-".join(r.sample(WORDS, 2)), r"[a-z]+-[a-z]+"),
    "alnum": (lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(3)) + "-" + str(r.randint(100, 999)),
              r"[A-Z]{3}-\d{3}"),
    "hex": (lambda r: "%08x" % r.getrandbits(32), r"[0-9a-f]{8}"),
}
CITIES = ["Tromsø", "Valparaíso", "Dakar", "Osaka", "Gdańsk", "Hobart", "Recife", "Tallinn"]


def prose(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    paras = [p.strip().replace("\n", " ") for p in text.split("\n\n") if len(p.strip()) > 200]
    return paras


def filler_units(style, r, essays, jargon):
    """An endless supply of filler pieces of one style."""
    while True:
        if style == "essay":
            start = r.randrange(len(essays))
            for p in essays[start:] + essays[:start]:
                yield p + "\n\n"
        elif style == "jargon":
            start = r.randrange(len(jargon))
            for p in jargon[start:] + jargon[:start]:
                yield p + "\n\n"
        elif style == "log":
            yield ("Shipment %d left %s at %02d:%02d with %d crates; the manifest was checked by clerk %d.\n"
                   % (r.randint(1000, 9999), r.choice(CITIES), r.randint(0, 23), r.randint(0, 59),
                      r.randint(2, 90), r.randint(10, 99)))
        else:
            yield r.choice(["The river runs past the mill. ", "Birds sing in the early morning. ",
                            "A cart rolls down the lane. ", "The bell rings at noon. "])


def make_sample(i, length, r, chat, essays, jargon, chars_per_tok):
    fstyle = r.choice(["essay", "jargon", "log", "plain"])
    cstyle = r.choice(sorted(CODES))
    n_keys = r.choice([1, 4])
    labels = r.sample(LABELS, n_keys)
    gen, pattern = CODES[cstyle]
    codes = [gen(r) for _ in labels]
    needle_t = r.choice(NEEDLES)
    q_t, prefix_t = r.choice(QUESTIONS)
    ask = r.randrange(n_keys)
    head = "Read the following text carefully. Somewhere in it are codes you will be asked about.\n\n"
    budget = int((length - 120) * chars_per_tok[fstyle])
    units, size = [], 0
    for u in filler_units(fstyle, r, essays, jargon):
        if size + len(u) > budget:
            break
        units.append(u)
        size += len(u)
    # needles at random depths, the asked one anywhere from 5% to 95%
    for lab, code in zip(labels, codes):
        depth = r.uniform(0.05, 0.95)
        units.insert(int(depth * len(units)), needle_t.format(label=lab, code=code))
    body = head + "".join(units)
    question = "\n\n" + q_t.format(label=labels[ask])
    prefix = " " + prefix_t.format(label=labels[ask])
    pre, post = ruler.chat_wrap("chatml" if chat else "none")
    context = pre + body
    question = question + (post if chat else "\n") + prefix.strip()
    return {"id": i, "context": context, "question": question, "max_new": 16, "answer": codes[ask],
            "pattern": pattern, "filler": fstyle, "code": cstyle, "keys": n_keys}


def extract(text, pattern):
    m = re.search(pattern, text)
    return m.group(0) if m else text.strip()[:40]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--kvseek", default=os.path.join(ROOT, "build/kvseek"))
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--first", type=int, default=0,
                    help="run samples FIRST..N-1 only; they are the same samples a full run of N draws, "
                         "so an earlier run of FIRST samples can be extended")
    ap.add_argument("--selectors", default="dense,retrieval,centroids")
    ap.add_argument("--out", help="append the summary (and with --rows the rows) as JSON lines")
    ap.add_argument("--rows", action="store_true", help="print one line per (sample, selector) too")
    ap.add_argument("--dump", help="write the samples (kvseek eval's input) to this file and stop")
    ap.add_argument("extra", nargs="*", help="after --: kvseek eval options")
    a = ap.parse_args()
    if not 0 <= a.first < a.n:
        sys.exit(f"error: --first {a.first} must be at least 0 and below --n {a.n}")
    if not a.selectors.split(",")[0] == "dense":
        sys.exit("error: --selectors must start with dense (the reference)")
    tok = ruler.Tokenizer(a.kvseek, a.model)
    chat = tok.chatml
    essays = prose(os.path.join(ROOT, "data/haystack/emerson-essays.txt")) if os.path.exists(
        os.path.join(ROOT, "data/haystack/emerson-essays.txt")) else []
    jargon = prose(os.path.join(ROOT, "tests/data/jargon-4.4.7-excerpt.txt"))
    if not essays:
        essays = jargon
    # characters per token of each filler style, measured once on a sample of it
    cpt = {}
    r0 = random.Random(0)
    for st in ("essay", "jargon", "log", "plain"):
        text = "".join(u for u, _ in zip(filler_units(st, r0, essays, jargon), range(60)))
        cpt[st] = len(text) / max(1, len(tok.ids(text, bos=True)))
    r = random.Random(a.seed)
    samples = [make_sample(i, a.length, r, chat, essays, jargon, cpt) for i in range(a.n)][a.first:]
    if a.dump:
        with open(a.dump, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
        path = f.name
    rows = {}
    ruler.run_eval(a.kvseek, a.model, path, a.selectors.split(","), a.extra,
                   lambda o: rows.setdefault(o["id"], {}).__setitem__(o["selector"], o))
    os.unlink(path)
    commit = ruler.git_commit()
    meta = {"model": os.path.basename(a.model), "length": a.length, "date": datetime.date.today().isoformat(),
            "commit": commit, "command": "python3 scripts/needles.py " + " ".join(sys.argv[1:])}
    out = open(a.out, "a") if a.out else None
    stats = {}
    for s in samples:
        got = rows.get(s["id"], {})
        dense = got.get("dense")
        ref = extract(dense["text"], s["pattern"]) if dense and "error" not in dense else None
        for sel, o in got.items():
            ans = extract(o.get("text", ""), s["pattern"]) if "error" not in o else None
            row = {"id": s["id"], "selector": sel, "filler": s["filler"], "code": s["code"], "keys": s["keys"],
                   "n_context": o.get("n_context"), "answer": s["answer"], "got": ans,
                   "correct": ans == s["answer"], "agrees": ans is not None and ans == ref,
                   "keys_read": o.get("keys_read"), "mass_recall": o.get("mass_recall"), "out_err": o.get("out_err"),
                   "error": o.get("error")}
            st = stats.setdefault(sel, {"n": 0, "agree": 0, "correct": 0, "kr": [], "rec": [], "err": [], "errors": 0})
            st["n"] += 1
            st["agree"] += row["agrees"]
            st["correct"] += row["correct"]
            st["errors"] += o.get("error") is not None
            if o.get("keys_read") is not None:
                st["kr"].append(o["keys_read"])
            if o.get("mass_recall") is not None:
                st["rec"].append(o["mass_recall"])
            if o.get("out_err") is not None:
                st["err"].append(o["out_err"])
            if a.rows:
                print(json.dumps(row))
            if out and a.rows:
                out.write(json.dumps({**meta, **row}) + "\n")
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None
    for sel, st in stats.items():
        summ = {**meta, "selector": sel, "n": st["n"], "agree_with_dense": round(st["agree"] / st["n"], 3),
                "accuracy": round(st["correct"] / st["n"], 3), "keys_read": mean(st["kr"]),
                "mass_recall": mean(st["rec"]), "min_mass_recall": round(min(st["rec"]), 4) if st["rec"] else None,
                "out_err": mean(st["err"]), "errors": st["errors"]}
        print(json.dumps(summ))
        if out:
            out.write(json.dumps(summ) + "\n")
    if out:
        out.close()


if __name__ == "__main__":
    main()
