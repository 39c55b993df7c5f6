"""RULER-style synthetic long-context accuracy, run through `kvseek eval` with several selectors.

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?") asks a model to find, track and count things hidden in a long text. This script builds
its eleven synthetic tasks offline, following RULER's generators and templates (numbers are
7-digit, values UUIDs where RULER uses them), fits each sample to a target length in the model's
own tokens, runs `kvseek eval` once per length (every sample's context prefilled once, then the
question and a greedy answer through each selector), and scores the answers with RULER's
string_match_all: per sample, the share of reference strings found in the answer (case-insensitive),
times 100, averaged per task.

  niah_single_1    noise haystack, one number           niah_multikey_2  a haystack of needles
  niah_single_2    essay haystack, one number           niah_multikey_3  needles, UUID keys and values
  niah_single_3    essay haystack, one UUID             niah_multivalue  4 values for one key
  niah_multikey_1  essay, 4 keys, one asked             niah_multiquery  4 keys asked at once
  vt   variable tracking: a chain of 4 hops in the noise haystack, after a short solved example
  cwe  common words extraction: the 10 words repeated most in a numbered list (one solved example)
  fwe  frequent words extraction: the 3 most frequent coded words of a Zipf-distributed text

The essay haystack is public-domain prose (Emerson's Essays, First Series; data/haystack/README.md)
in place of RULER's Paul Graham essays; word lists come from the same text. RULER's two QA tasks
are not included. A sample's length is prompt tokens + the task's max new tokens <= the target
(RULER's rule), within a few percent below it.

Each sample is split in two for the engine: `context`, everything up to and including the
haystack (prefilled once), and `question`, the rest (question, end of the chat turn, answer
prefix), fed through each selector token by token.

Usage: python3 scripts/ruler.py [--model M] [--lengths 4096,8192] [--tasks niah_single_1,vt]
                                [--n 10] [--selectors dense,window,quest,sparq,retrieval,centroids]
                                [--seed 42] [--out results.jsonl] [--resume] [--table]
                                [--plot out.png] [--chat auto|chatml|none] [--max-new N]
                                [--samples FILE] [--generate-only] [--smoke]
                                [-- extra kvseek eval options, e.g. --attn-target 0.02 -t 8]

Prints one JSON line per (task, length, selector): score (0-100), n samples, mean n_context,
keys_read (mean share of the offloaded keys read), mass_recall, decode_s; --out also keeps one
row per (sample, selector) with the answer. --resume skips the (task, length) pairs --out holds.
--table prints a markdown table per length (task x selector, an average row, keys read, recall);
--plot draws score against length per selector, averaged over tasks (needs matplotlib).
--smoke: 3 samples (or --n) of niah_single_1 and niah_multikey_1 at 2048 tokens, answers cut to 16 tokens.
"""
import argparse
import datetime
import json
import math
import os
import random
import re
import shlex
import string
import subprocess
import sys
import tempfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAYSTACK = os.path.join(ROOT, "data", "haystack", "emerson-essays.txt")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 needle depths, in percent
SYSTEM = "You are a helpful assistant."

# RULER's task templates (scripts/data/synthetic/constants.py): (head, tail, answer prefix); the
# haystack goes between head and tail.
T_NIAH = ("Some special magic {v} are hidden within the following text. Make sure to memorize it. "
          "I will quiz you about the {v} afterwards.\n",
          "\nWhat are all the special magic {v} for {query} mentioned in the provided text?",
          " The special magic {v} for {query} mentioned in the provided text are")
T_VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n",
        "\nQuestion: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
        "are assigned the value {query}, they are: ")
T_CWE = ("Below is a numbered list of words. In these words, some appear more often than others. "
         "Memorize the ones that appear most often.\n",
         "\nQuestion: What are the 10 most common words in the above list?",
         " Answer: The top 10 words that appear most often in the list are:")
T_FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
         "frequently appeared coded words. ",
         "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
         "frequently appeared words in the above coded text?",
         " Answer: According to the coded text above, the three most frequently appeared words are:")

# RULER's scripts/synthetic.yaml; max_new is its tokens_to_generate
TASKS = {
    "niah_single_1": dict(kind="niah", hay="noise", k="words", v="numbers", nk=1, nv=1, nq=1, max_new=128),
    "niah_single_2": dict(kind="niah", hay="essay", k="words", v="numbers", nk=1, nv=1, nq=1, max_new=128),
    "niah_single_3": dict(kind="niah", hay="essay", k="words", v="uuids", nk=1, nv=1, nq=1, max_new=128),
    "niah_multikey_1": dict(kind="niah", hay="essay", k="words", v="numbers", nk=4, nv=1, nq=1, max_new=128),
    "niah_multikey_2": dict(kind="niah", hay="needle", k="words", v="numbers", nk=1, nv=1, nq=1, max_new=128),
    "niah_multikey_3": dict(kind="niah", hay="needle", k="uuids", v="uuids", nk=1, nv=1, nq=1, max_new=128),
    "niah_multivalue": dict(kind="niah", hay="essay", k="words", v="numbers", nk=1, nv=4, nq=1, max_new=128),
    "niah_multiquery": dict(kind="niah", hay="essay", k="words", v="numbers", nk=1, nv=1, nq=4, max_new=128),
    "vt": dict(kind="vt", chains=1, hops=4, max_new=30),
    "cwe": dict(kind="cwe", freq_cw=30, freq_ucw=3, num_cw=10, max_new=120),
    "fwe": dict(kind="fwe", alpha=2.0, max_new=50),
}
SELECTORS = "dense,window,quest,sparq,retrieval,centroids"
SMOKE_TASKS = "niah_single_1,niah_multikey_1"


# --- scoring (RULER's scripts/eval) ---

def postprocess(pred):
    """RULER's postprocess_pred: control characters become newlines, then strip."""
    return re.sub(r"[\x00-\x1f]", "\n", pred.strip()).strip()


def string_match_all(pred, refs):
    """Share of the reference strings found in the prediction, case-insensitive, x100."""
    p = postprocess(pred).lower()
    return 100.0 * sum(r.lower() in p for r in refs) / len(refs)


# --- haystack and word lists ---

class Haystack:
    """The essay text as words (RULER splits on whitespace), and word lists drawn from it."""

    def __init__(self, path=HAYSTACK):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.words = re.sub(r"\s+", " ", text).strip().split(" ")
        template = " ".join(" ".join(t) for t in (T_NIAH, T_VT, T_CWE, T_FWE)).lower()
        low = sorted({w for w in re.findall(r"[A-Za-z]+", text) if w.islower() and 5 <= len(w) <= 12})
        # cwe's words: lower-case words of the text that the templates do not use (an echoed template
        # must not score)
        self.vocab = [w for w in low if w not in template]
        # needle keys as RULER's adjective-noun pairs, the parts of speech guessed from suffixes
        noun = re.compile(r"(tion|sion|ness|ment|ity|ance|ence|ship|hood|ism|ure)$")
        adj = re.compile(r"(ous|ful|ive|able|ible|less|ical|ic|ary)$")
        self.nouns = [w for w in low if noun.search(w)]
        self.adjs = [w for w in low if adj.search(w) and not noun.search(w)]

    def text(self, n):
        """The first n words, the text repeated as often as needed (RULER's rule)."""
        reps = -(-n // len(self.words))
        return " ".join((self.words * reps)[:n])


def sentences(text):
    """Sentence split (in place of nltk's punkt): after . ! ? (and closing quotes) before a capital."""
    return [s for s in re.split(r"(?<=[.!?])(?:[\"')\]]*)\s+(?=[\"'(\[]?[A-Z])", text) if s]


def rand_value(rng, kind, hay):
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(hay.adjs)}-{rng.choice(hay.nouns)}"


def zeta(a, n=1000):
    """Riemann zeta(a) for a > 1 (Euler-Maclaurin after n terms); RULER takes scipy's."""
    return sum(k ** -a for k in range(1, n)) + n ** (1 - a) / (a - 1) + n ** -a / 2 + a * n ** (-a - 1) / 12


# --- the tasks: each returns (head, haystack, tail, answer prefix, answers, keys) ---

def gen_niah(c, rng, n, hay, length):
    needle = "One of the special magic {v} for {key} is: {value}."
    nk = max(c["nk"], c["nq"])
    keys, values, needles = [], [], []
    for _ in range(nk):
        key = rand_value(rng, c["k"], hay)
        while key in keys:
            key = rand_value(rng, c["k"], hay)
        keys.append(key)
        values.append([rand_value(rng, c["v"], hay) for _ in range(c["nv"])])
        needles += [needle.format(v=c["v"], key=key, value=x) for x in values[-1]]
    rng.shuffle(needles)
    if c["hay"] == "essay":
        sents = sentences(hay.text(n))
        cuts = [0] + sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles))) + [len(sents)]
        parts = []
        for i in range(1, len(cuts)):
            parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        text = " ".join(p for p in parts if p)
    else:
        n = max(n, len(needles))
        if c["hay"] == "noise":
            lines = [NOISE] * n
        else:  # a haystack of needles: other keys, other values (never a key asked about)
            lines = []
            for _ in range(n):
                k = rand_value(rng, c["k"], hay)
                while k in keys:
                    k = rand_value(rng, c["k"], hay)
                lines.append(needle.format(v=c["v"], key=k, value=rand_value(rng, c["v"], hay)))
        for i, x in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
            lines.insert(i, x)
        text = "\n".join(lines)
    asked = [keys[i] for i in rng.sample(range(nk), c["nq"])]
    answers = [x for k in asked for x in values[keys.index(k)]]
    query = ", ".join(asked[:-1]) + ", and " + asked[-1] if len(asked) > 1 else asked[0]
    head, tail, prefix = T_NIAH
    v = c["v"]
    if c["nq"] * c["nv"] == 1:  # RULER's singular wording
        head, tail, prefix = [t.replace("Some", "A").replace("are all", "is").replace("are", "is")
                              .replace("answers", "answer") for t in T_NIAH]
        v = v[:-1]
    return (head.format(v=v), text, tail.format(v=v, query=query), prefix.format(v=v, query=query), answers,
            asked)


def vt_chain(rng, hops, letters, value):
    """One chain: VAR X0 = value, VAR X1 = VAR X0, ... (RULER's spelling, trailing spaces kept)."""
    names = []
    while len(names) < hops + 1:
        x = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if x not in names:
            names.append(x)
    return names, [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]


def vt_text(rng, n, chains):
    lines = [NOISE] * n
    for ch in chains:
        pos = sorted(rng.sample(range(len(lines)), len(ch)))
        for j, p in enumerate(pos):
            lines.insert(p + j, ch[j])
    return "\n".join(lines).replace(". \n", ".\n")


VT_ICL_NOISE = 16  # noise lines of the solved example: about 500 tokens in all, as RULER sizes it


def gen_vt(c, rng, n, hay, length):
    head, tail, prefix = T_VT
    # RULER's in-context example: a chain with 3-letter names and its answer, before the task
    names, ch = vt_chain(rng, c["hops"], 3, rng.randint(10000, 99998))
    value = ch[0].split("=")[-1].strip()
    icl = (head + vt_text(rng, VT_ICL_NOISE, [ch]) + tail.format(query=value) +
           prefix.format(num_v=c["hops"] + 1, query=value) + " " + " ".join(names) + "\n")
    chains, answers = [], None
    taken = set(names)
    for _ in range(c["chains"]):
        while True:
            nm, chain = vt_chain(rng, c["hops"], 5, rng.randint(10000, 99998))
            if not taken & set(nm):
                break
        taken |= set(nm)
        chains.append(chain)
        answers = answers or nm
    value = chains[0][0].split("=")[-1].strip()
    return (icl + "\n" + head, vt_text(rng, max(n, 1), chains), tail.format(query=value),
            prefix.format(num_v=c["hops"] + 1, query=value), answers, [value])


def cwe_example(rng, hay, num_words, common, uncommon, num_cw):
    if num_words > len(hay.vocab):
        raise ValueError(f"cwe needs {num_words} distinct words; the haystack text has {len(hay.vocab)}")
    words = rng.sample(hay.vocab, num_words)
    top, rest = words[:num_cw], words[num_cw:]
    listed = top * common + rest * uncommon
    rng.shuffle(listed)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), top


def gen_cwe(c, rng, n, hay, length):
    head, tail, prefix = T_CWE
    small = length < 4096  # RULER's repeats below 4K tokens
    ex, ex_top = cwe_example(rng, hay, 20 if small else 40, 3 if small else 10, 1 if small else 3, c["num_cw"])
    shot = head + ex + tail + prefix + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_top))
    text, top = cwe_example(rng, hay, max(n, c["num_cw"] + 1), 6 if small else c["freq_cw"],
                            1 if small else c["freq_ucw"], c["num_cw"])
    return shot + "\n" + head, text, tail, prefix, top, []


def gen_fwe(c, rng, n, hay, length):
    size = max(8, (length - c["max_new"]) // 50)  # RULER's vocabulary size
    vocab = set()
    while len(vocab) < size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
    vocab = sorted(vocab)
    rng.shuffle(vocab)
    vocab[0] = "..."  # the most frequent "word" is noise
    z = zeta(c["alpha"])
    words = [w for k, w in enumerate(vocab, 1) for _ in range(int(n * k ** -c["alpha"] / z))]
    rng.shuffle(words)
    head, tail, prefix = T_FWE
    return head, " ".join(words), tail, prefix, vocab[1:4], []


GEN = {"niah": gen_niah, "vt": gen_vt, "cwe": gen_cwe, "fwe": gen_fwe}
# haystack units (words, lines or list entries) of the two probes that measure a task's tokens
PROBE = {"essay": (200, 1200), "noise": (8, 48), "needle": (8, 48), "vt": (8, 48), "cwe": (30, 180),
         "fwe": (200, 1200)}


def chat_wrap(chat):
    """(before, after) the task text: RULER's answer prefix follows `after`."""
    if chat == "chatml":
        return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n",
                "<|im_end|>\n<|im_start|>assistant\n")
    return "", ""


def make_sample(task, length, index, size, seed, hay, chat):
    """One sample, a pure function of its arguments: the same seed gives the same text."""
    c = TASKS[task]
    rng = random.Random(f"{seed}/{task}/{length}/{index}")
    head, text, tail, prefix, answers, keys = GEN[c["kind"]](c, rng, size, hay, length)
    pre, post = chat_wrap(chat)
    return {"id": f"{task}/{length}/{index}", "task": task, "length": length, "index": index, "size": size,
            "context": pre + head + text, "question": tail + post + prefix, "max_new": c["max_new"],
            "answers": answers, "keys": keys}


# --- token counts ---

class Tokenizer:
    """Counts tokens with `kvseek tokenize`, many texts per call: the texts are joined by a special
    token (tokenized alone, as each text is) and the id list is cut at it."""

    SEPARATORS = ["<eos>", "<|endoftext|>", "<end_of_turn>", "<|im_end|>", "</s>", "<|eot_id|>"]

    def __init__(self, kvseek, model):
        self.kvseek, self.model = kvseek, model
        self.calls = 0
        self.n_bos = len(self.ids("Hello", bos=True)) - len(self.ids("Hello"))
        probe = "Hello world. The sky is blue."
        base = self.ids(probe)
        self.sep = self.sep_id = None
        for s in self.SEPARATORS:
            one = self.ids(s)
            if len(one) == 1 and self.ids(probe + s + probe) == base + one + base:
                self.sep, self.sep_id = s, one[0]
                break
        self.chatml = len(self.ids("<|im_start|>")) == 1

    def ids(self, text, bos=False):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
            f.write(text)
            path = f.name
        try:
            cmd = [self.kvseek, "tokenize", "-m", self.model, "-f", path] + ([] if bos else ["--no-bos"])
            p = subprocess.run(cmd, capture_output=True, text=True)
            self.calls += 1
            if p.returncode:
                raise RuntimeError(f"kvseek tokenize failed: {p.stderr.strip()[-300:]}")
            return json.loads(p.stdout)
        finally:
            os.unlink(path)

    def counts(self, texts):
        """Token counts of texts (no BOS), in one call when a separator is known."""
        if not texts:
            return []
        if self.sep is None or any(self.sep in t for t in texts):
            return [len(self.ids(t)) for t in texts]
        ids = self.ids(self.sep.join(texts))
        out, n = [], 0
        for i in ids:
            if i == self.sep_id:
                out.append(n)
                n = 0
            else:
                n += 1
        out.append(n)
        if len(out) != len(texts):
            return [len(self.ids(t)) for t in texts]
        return out

    def sample_tokens(self, samples):
        """Prompt tokens of each sample as the engine counts them: BOS + context, then question."""
        n = self.counts([x for s in samples for x in (s["context"], s["question"])])
        return [self.n_bos + n[2 * i] + n[2 * i + 1] for i in range(len(samples))]


def unit_of(task):
    c = TASKS[task]
    return c["hay"] if c["kind"] == "niah" else c["kind"]


def build(tok, tasks, length, n, seed, hay, chat, log=None):
    """n samples per task fitted to `length` tokens: prompt + max_new <= length, at most a few
    percent below. The tokens per haystack unit come from two probes per task; then every sample is
    built at the estimated size, measured, resized and measured again (only the changed ones)."""
    log = log or (lambda m: None)
    budget = {t: length - TASKS[t]["max_new"] for t in tasks}
    probes = [make_sample(t, length, -1, s, seed, hay, chat) for t in tasks for s in PROBE[unit_of(t)]]
    pt = tok.sample_tokens(probes)
    slope, size = {}, {}
    for i, t in enumerate(tasks):
        (s1, s2), (t1, t2) = PROBE[unit_of(t)], pt[2 * i:2 * i + 2]
        slope[t] = max(1e-3, (t2 - t1) / (s2 - s1))
        size[t] = max(1, int(s1 + (budget[t] - t1) / slope[t]))
    # accepted window: [budget - tol, budget]; a unit's tokens bound how finely a length can be hit
    tol = {t: max(0.02 * budget[t], 2.5 * slope[t]) for t in tasks}
    samples = [make_sample(t, length, i, size[t], seed, hay, chat) for t in tasks for i in range(n)]
    todo = list(range(len(samples)))
    for attempt in range(7):
        got = tok.sample_tokens([samples[i] for i in todo])
        for i, g in zip(todo, got):
            samples[i]["n_prompt"] = g
        todo = []
        for i, s in enumerate(samples if attempt < 6 else []):
            t, g = s["task"], s["n_prompt"]
            if budget[t] - tol[t] <= g <= budget[t]:
                continue
            aim = budget[t] - tol[t] / 2
            step = (aim - g) / slope[t]
            new = max(1, s["size"] + (math.floor(step) if step > 0 else -math.ceil(-step)))
            if new == s["size"]:
                new = s["size"] + (1 if g < aim else -1)
            samples[i] = make_sample(t, length, s["index"], max(1, new), seed, hay, chat)
            todo.append(i)
        if not todo:
            break
    for s in samples:
        b = budget[s["task"]]
        if not b - tol[s["task"]] <= s["n_prompt"] <= b:
            log(f"ruler: {s['id']}: {s['n_prompt']} prompt tokens, budget {b} (not fitted)")
    return samples


# --- running kvseek eval ---

def check_selectors(kvseek, model, specs, extra=()):
    """The specs this kvseek build accepts (a run with no samples parses them and the extra options
    first); the others are dropped with a message, so one missing selector does not stop a long run.
    Raises RuntimeError when kvseek eval refuses anything else."""
    specs = list(specs)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        path = f.name
    try:
        while specs:
            p = subprocess.run([kvseek, "eval", "-m", model, "--samples", path, "--selectors", ",".join(specs),
                                *extra], capture_output=True, text=True)
            m = re.search(r"--selectors '([^']*)': (.*)", p.stderr)
            if not m or m.group(1) not in specs:
                if "holds no samples" not in p.stderr:
                    raise RuntimeError(f"kvseek eval: {p.stderr.strip()[-300:]}")
                return specs
            print(f"ruler: dropping selector {m.group(1)!r}: {m.group(2)}", file=sys.stderr)
            specs.remove(m.group(1))
    finally:
        os.unlink(path)
    return specs


def run_eval(kvseek, model, path, specs, extra, on_row):
    """Runs kvseek eval on the samples file; calls on_row with each JSON line as it comes."""
    cmd = [kvseek, "eval", "-m", model, "--samples", path, "--selectors", ",".join(specs)] + extra
    print("ruler: " + " ".join(shlex.quote(x) for x in cmd), file=sys.stderr, flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        line = line.strip()
        if line.startswith("{"):
            on_row(json.loads(line))
    return p.wait()


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def aggregate(rows, meta):
    """One row per (task, length, selector) from its sample rows."""
    r0 = rows[0]
    ok = [r for r in rows if "error" not in r]
    return {"row": "task", "model": r0["model"], "task": r0["task"], "length": r0["length"],
            "n_context": round(mean([r.get("n_context") for r in ok]) or 0), "selector": r0["selector"],
            "score": round(mean([r["score"] for r in rows]), 2), "n": len(rows), "errors": len(rows) - len(ok),
            "keys_read": _round(mean([r.get("keys_read") for r in ok]), 4),
            "mass_recall": _round(mean([r.get("mass_recall") for r in ok]), 4),
            "decode_s": _round(mean([r.get("decode_s") for r in ok]), 3), **meta}


def _round(x, d):
    return None if x is None else round(x, d)


def run_length(a, tok, hay, chat, specs, length, tasks, out, meta):
    """Builds, runs and scores one length's samples; returns the aggregate rows and kvseek eval's
    exit status."""
    t0 = datetime.datetime.now()
    samples = build(tok, tasks, length, a.n, a.seed, hay, chat, log=lambda m: print(m, file=sys.stderr))
    print(f"ruler: {len(samples)} samples at {length} tokens built in "
          f"{(datetime.datetime.now() - t0).total_seconds():.1f} s ({tok.calls} tokenize calls so far)",
          file=sys.stderr, flush=True)
    for s in samples:
        if a.max_new:
            s["max_new"] = min(s["max_new"], a.max_new)
    path = samples_path(a.samples, length, a.lengths) or tempfile.NamedTemporaryFile(
        "w", suffix=".jsonl", delete=False).name
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    if a.generate_only:
        print(f"ruler: wrote {path}", file=sys.stderr)
        return [], 0
    by_id = {s["id"]: s for s in samples}
    want = {t: a.n * len(specs) for t in tasks}
    rows = {t: [] for t in tasks}
    aggs = []
    model = os.path.basename(a.model)

    def finish(task):
        for sel in specs:
            rs = [r for r in rows[task] if r["selector"] == sel]
            if rs:
                g = aggregate(rs, meta)
                print(json.dumps(g), flush=True)
                aggs.append(g)
                if out:
                    out.write(json.dumps(g) + "\n")
                    out.flush()

    def on_row(r):
        s = by_id.get(r.get("id"))
        if s is None:
            return
        dense = r["selector"].split(":")[0] == "dense"
        row = {"row": "sample", "model": model, "task": s["task"], "length": length, "index": s["index"],
               "selector": r["selector"], "score": round(string_match_all(r.get("text", ""), s["answers"]), 2),
               "answers": s["answers"], "text": r.get("text", ""), "n_prompt": s["n_prompt"],
               "n_context": r.get("n_context"), "n_question": r.get("n_question"), "n_gen": r.get("n_gen"),
               "keys_read": 1.0 if dense and r.get("keys_read") is None else r.get("keys_read"),
               "mass_recall": 1.0 if dense and r.get("mass_recall") is None else r.get("mass_recall"),
               "prefill_s": r.get("prefill_s"), "decode_s": r.get("decode_s"),
               "build_s": r.get("build_s"), "search_s": r.get("search_s")}
        if "error" in r:
            row["error"] = r["error"]
            row["score"] = 0.0
        rows[s["task"]].append(row)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        if len(rows[s["task"]]) == want[s["task"]]:
            finish(s["task"])

    rc = run_eval(a.kvseek, a.model, path, specs, a.extra, on_row)
    for t in tasks:
        if 0 < len(rows[t]) < want[t]:
            finish(t)  # what came back before a failure
    if not a.samples:
        os.unlink(path)
    if rc:
        print(f"ruler: kvseek eval exited with status {rc}", file=sys.stderr)
    return aggs, rc


def samples_path(path, length, lengths):
    """--samples FILE as given for one length; FILE-LENGTH.jsonl for each of several."""
    if not path or "," not in lengths.strip(","):
        return path
    base, ext = os.path.splitext(path)
    return f"{base}-{length}{ext or '.jsonl'}"


# --- reports ---

def table(aggs):
    """Markdown: per length, task x selector scores, the average, keys read and mass recall."""
    lines = []
    for length in sorted({g["length"] for g in aggs}):
        gs = [g for g in aggs if g["length"] == length]
        sels = list(dict.fromkeys(g["selector"] for g in gs))
        tasks = [t for t in TASKS if any(g["task"] == t for g in gs)]
        cell = {(g["task"], g["selector"]): g for g in gs}
        n_ctx = mean([g["n_context"] for g in gs])
        lines += [f"\n**{length} tokens** (mean context {n_ctx:.0f} tokens, {gs[0]['model']})\n",
                  "| task | " + " | ".join(sels) + " |", "|---" * (len(sels) + 1) + "|"]
        for t in tasks:
            lines.append(f"| {t} | " + " | ".join(
                f"{cell[t, s]['score']:.1f}" if (t, s) in cell else "" for s in sels) + " |")

        def row(name, key, fmt):
            vals = [mean([cell[t, s][key] for t in tasks if (t, s) in cell]) for s in sels]
            return f"| {name} | " + " | ".join("" if v is None else fmt(v) for v in vals) + " |"
        lines.append(row("**average**", "score", lambda v: f"**{v:.1f}**"))
        lines.append(row("keys read", "keys_read", lambda v: f"{100 * v:.1f}%"))
        lines.append(row("mass recall", "mass_recall", lambda v: f"{v:.3f}"))
    return "\n".join(lines)


def plot(aggs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("ruler: matplotlib is not installed; no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = sorted({g["length"] for g in aggs})
    for sel in dict.fromkeys(g["selector"] for g in aggs):
        ys = [mean([g["score"] for g in aggs if g["selector"] == sel and g["length"] == n]) for n in lengths]
        ax.plot(lengths, ys, marker="o", label=sel)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_ylim(0, 100)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("RULER score, mean over tasks")
    ax.set_title(f"{aggs[0]['model']}: {len({g['task'] for g in aggs})} tasks", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"ruler: wrote {path}", file=sys.stderr)


def git_commit():
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def report(a):
    """--report: the tables of a results file, per model; nothing runs."""
    if not a.out:
        sys.exit("ruler: --report reads the results of --out FILE")
    try:
        with open(a.out, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        sys.exit(f"ruler: {a.out}: {e}")
    aggs = [g for g in rows if g.get("row") == "task"]
    if not aggs:
        sys.exit(f"ruler: {a.out} holds no task rows")
    for model in dict.fromkeys(g["model"] for g in aggs):
        print(table([g for g in aggs if g["model"] == model]))
    if a.plot:
        plot(aggs, a.plot)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="RULER-style synthetic long-context accuracy through kvseek eval")
    ap.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--kvseek", default="build/kvseek")
    ap.add_argument("--lengths", default="4096,8192")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: all eleven)")
    ap.add_argument("--n", type=int, default=0, help="samples per task and length (default 10; --smoke 3)")
    ap.add_argument("--selectors", default=SELECTORS, help="kvseek eval specs, comma-separated")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--chat", default="auto", choices=["auto", "chatml", "none"],
                    help="auto: ChatML when the vocabulary has <|im_start|>")
    ap.add_argument("--max-new", type=int, default=0, help="cap every task's answer length (tokens)")
    ap.add_argument("--out", default="", help="JSON lines: one row per task and selector, one per sample")
    ap.add_argument("--resume", action="store_true", help="skip the (task, length) pairs --out holds in full")
    ap.add_argument("--samples", default="", help="keep the generated samples in this JSONL file")
    ap.add_argument("--generate-only", action="store_true", help="write the samples (--samples) and stop")
    ap.add_argument("--table", action="store_true", help="print a markdown table per length")
    ap.add_argument("--report", action="store_true",
                    help="print the tables (and --plot) of the results in --out, every model and length "
                         "it holds, and run nothing")
    ap.add_argument("--plot", default="", help="PNG of score against length per selector")
    ap.add_argument("--smoke", action="store_true", help=f"3 samples of {SMOKE_TASKS} at 2048, answers <= 16 tokens")
    ap.add_argument("extra", nargs="*", help="options passed to kvseek eval (after --)")
    a = ap.parse_args(argv)
    if a.report:
        return report(a)
    if a.smoke:
        a.tasks, a.lengths, a.n, a.max_new = SMOKE_TASKS, "2048", a.n or 3, a.max_new or 16
    a.n = a.n or 10
    tasks = [t for t in a.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        ap.error(f"unknown task(s) {', '.join(bad)}; known: {', '.join(TASKS)}")
    lengths = [int(x) for x in a.lengths.split(",") if x]
    try:
        tok = Tokenizer(a.kvseek, a.model)
    except (RuntimeError, OSError) as e:
        sys.exit(f"ruler: {e}")
    chat = ("chatml" if tok.chatml else "none") if a.chat == "auto" else a.chat
    hay = Haystack()
    model = os.path.basename(a.model)
    done, old = set(), []
    if a.resume and a.out and os.path.exists(a.out):
        with open(a.out) as f:
            old = [json.loads(line) for line in f if line.strip()]
        old = [g for g in old if g.get("row") == "task" and g.get("model") == model]
        done = {(g["task"], g["length"]) for g in old if g["n"] >= a.n}
    specs = [s for s in a.selectors.split(",") if s]
    if not a.generate_only:
        try:
            specs = check_selectors(a.kvseek, a.model, specs, a.extra)
        except RuntimeError as e:
            sys.exit(f"ruler: {e}")
        if not specs:
            sys.exit("ruler: no selector left to run")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": git_commit(), "cmd": " ".join(shlex.quote(x) for x in [sys.argv[0]] + (argv or sys.argv[1:]))}
    print(f"ruler: {model}, chat template {chat}, tasks {','.join(tasks)}, lengths {a.lengths}, "
          f"{a.n} samples each, selectors {','.join(specs)}", file=sys.stderr, flush=True)
    out = open(a.out, "a", encoding="utf-8") if a.out and not a.generate_only else None
    aggs, failed = [], 0
    try:
        for length in lengths:
            todo = [t for t in tasks if (t, length) not in done]
            if todo:
                got, rc = run_length(a, tok, hay, chat, specs, length, todo, out, meta)
                aggs += got
                failed += rc != 0
    finally:
        if out:
            out.close()
    aggs = [g for g in old if g["length"] in lengths and g["task"] in tasks] + aggs
    if a.table and aggs:
        print(table(aggs))
    if a.plot and aggs:
        plot(aggs, a.plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
