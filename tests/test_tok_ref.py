#!/usr/bin/env python3
"""Differential test of kvseek's tokenizer against HuggingFace `tokenizers` (the Rust library).

usage: test_tok_ref.py BUILD_DIR MODEL_PATH

The reference tokenizer is built here, from the same GGUF metadata read with gguf-py, the way
transformers' GGUF and SentencePiece converters build one, so both sides start from identical
data but share no code:

  "llama" (SentencePiece BPE, Gemma):  tokenizers.models.BPE(vocab, merges, byte_fallback=True)
      with the merges recovered from the vocab (every split of a token into two vocab tokens,
      ordered by the merged token's score, highest first: transformers' generate_merges with
      vocab_scores), normalizer [Prepend("▁") when add_space_prefix] + Replace(" ", "▁"),
      CONTROL/UNKNOWN tokens as special added tokens, USER_DEFINED as plain added tokens.
  "gpt2" (byte-level BPE): BPE(vocab, the file's merges, ignore_merges for llama-bpe) with
      pre-tokenizer Split(the pre-tokenizer regex, "isolated") + ByteLevel(use_regex=False).

Models checked: MODEL_PATH (Gemma 3, SentencePiece); a copy of its vocab marked
add_space_prefix=true (the Llama 2 convention); three byte-level BPE vocabs written here with
gguf.GGUFWriter from merges learned on a sample text (pre "qwen2", "llama-bpe" and "gpt2", with CONTROL
and USER_DEFINED tokens and a few vocab tokens that merges cannot reach, so that ignore_merges
shows); and BUILD_DIR/tiny/tiny-*.gguf when `make tiny` has written them.

For each model every test string (a fixed list plus seeded random mixes; ~350) is encoded by
BUILD_DIR/tests/tool_tok (one process for all strings) with parse_special off and on, and the
ids must equal the reference's. With add_special on, the ids must be BOS (when the vocab adds
it) followed by the same ids. decode(encode(s)) must give s back (vocabs without a space prefix).
Exit status 0 when everything matches, 1 otherwise.
"""
import os
import random
import struct
import subprocess
import sys
import tempfile

import numpy as np
import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_SPLITS = {"gpt2": GPT2_SPLIT, "default": GPT2_SPLIT, "qwen2": QWEN2_SPLIT, "deepseek-r1-qwen": QWEN2_SPLIT,
              "llama3": LLAMA3_SPLIT, "llama-v3": LLAMA3_SPLIT, "llama-bpe": LLAMA3_SPLIT}
IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe"}


# ---------------------------------------------------------------- GGUF metadata

def read_meta(path):
    r = gguf.GGUFReader(path)
    f = r.fields

    def scalar(key, default=None):
        if key not in f:
            return default
        fld = f[key]
        if fld.types[0] == gguf.GGUFValueType.STRING:
            return bytes(fld.parts[fld.data[0]]).decode("utf-8")
        return fld.parts[fld.data[0]][0].item()

    def strings(key):
        if key not in f:
            return None
        fld = f[key]
        return [bytes(fld.parts[i]).decode("utf-8") for i in fld.data]

    def numbers(key):
        if key not in f:
            return None
        fld = f[key]
        return [fld.parts[i][0].item() for i in fld.data]

    m = {
        "model": scalar("tokenizer.ggml.model"),
        "pre": scalar("tokenizer.ggml.pre", "default"),
        "tokens": strings("tokenizer.ggml.tokens"),
        "scores": numbers("tokenizer.ggml.scores"),
        "types": numbers("tokenizer.ggml.token_type"),
        "merges": strings("tokenizer.ggml.merges"),
        "bos": scalar("tokenizer.ggml.bos_token_id"),
        "eos": scalar("tokenizer.ggml.eos_token_id"),
        "unk": scalar("tokenizer.ggml.unknown_token_id"),
        "add_bos": scalar("tokenizer.ggml.add_bos_token"),
        "add_space_prefix": scalar("tokenizer.ggml.add_space_prefix"),
        "arch": scalar("general.architecture", "llama"),
    }
    n = len(m["tokens"])
    if m["types"] is None:
        m["types"] = [TT_NORMAL] * n
    if m["scores"] is None:
        m["scores"] = [0.0] * n
    if m["model"] == "llama":
        m["add_bos"] = True if m["add_bos"] is None else bool(m["add_bos"])
        m["add_space_prefix"] = True if m["add_space_prefix"] is None else bool(m["add_space_prefix"])
    else:
        m["add_bos"] = (m["pre"] in IGNORE_MERGES) if m["add_bos"] is None else bool(m["add_bos"])
        m["add_space_prefix"] = False
    return m


# ---------------------------------------------------------------- reference tokenizers

def spm_merges(vocab, scores):
    """Every split of a token into two vocab tokens, ordered by the merged token's score,
    highest first (transformers' generate_merges(vocab, vocab_scores))."""
    merges = []
    for tok, tid in vocab.items():
        local = []
        for i in range(1, len(tok)):
            a, b = tok[:i], tok[i:]
            if a in vocab and b in vocab:
                local.append((a, b, scores[tid]))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def add_special_tokens(tk, m):
    special, user = [], []
    for tok, ty in zip(m["tokens"], m["types"]):
        if not tok:
            continue
        if ty in (TT_CONTROL, TT_UNKNOWN):
            special.append(AddedToken(tok, special=True, normalized=False))
        elif ty == TT_USER_DEFINED:
            user.append(AddedToken(tok, special=False, normalized=False))
    if special:
        tk.add_special_tokens(special)
    if user:
        tk.add_tokens(user)


def build_reference(m):
    vocab = {}
    for i, t in enumerate(m["tokens"]):
        vocab[t] = i  # later ids win, as in llama.cpp
    if m["model"] == "llama":
        unk = m["tokens"][m["unk"]] if m["unk"] is not None else None
        bpe = models.BPE(vocab, spm_merges(vocab, m["scores"]), unk_token=unk,
                         byte_fallback=True, fuse_unk=True)
        tk = Tokenizer(bpe)
        norm = [normalizers.Replace(" ", "\u2581")]
        if m["add_space_prefix"]:
            norm.insert(0, normalizers.Prepend("\u2581"))
        tk.normalizer = normalizers.Sequence(norm)
    elif m["model"] == "gpt2":
        merges = [tuple(x.split(" ", 1)) if not x.startswith(" ") else (" ", x[2:]) for x in m["merges"]]
        bpe = models.BPE(vocab, merges, ignore_merges=m["pre"] in IGNORE_MERGES)
        tk = Tokenizer(bpe)
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_SPLITS.get(m["pre"], GPT2_SPLIT)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tk.decoder = decoders.ByteLevel()
    else:
        raise SystemExit("unsupported tokenizer model %r" % m["model"])
    add_special_tokens(tk, m)
    return tk


def reference_ids(tk, strings, parse_special):
    tk.encode_special_tokens = not parse_special
    return [e.ids for e in tk.encode_batch(strings, add_special_tokens=False)]


# ---------------------------------------------------------------- kvseek side

def kvseek_ids(tool, model, strings, parse_special, bos):
    args = [tool, model] + (["--special"] if parse_special else []) + ([] if bos else ["--no-bos"])
    data = b"".join(struct.pack("<I", len(b)) + b for b in (s.encode("utf-8") for s in strings))
    p = subprocess.run(args, input=data, capture_output=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit("%s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr.decode()[-2000:]))
    lines = p.stdout.decode().split("\n")[:-1]
    if len(lines) != len(strings):
        raise SystemExit("tool_tok gave %d lines for %d strings" % (len(lines), len(strings)))
    out = []
    for line in lines:
        ids, hexs = line.split("\t")
        out.append(([int(x) for x in ids.split()], bytes.fromhex(hexs)))
    info = p.stderr.decode().strip().splitlines()
    return out, (info[0] if info else "")


# ---------------------------------------------------------------- test strings

FIXED = [
    "Hello world", "Hello, world!", "The capital of France is", "the quick brown fox jumps over the lazy dog",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "In 1492, Columbus sailed the ocean blue. In 1969, humans walked on the Moon.",
    "Mr. O'Neil's dog isn't here; they're gone, we'll see, I'd say you've been told, I'm sure.",
    "IT'S DON'T WE'LL THEY'RE I'M YOU'VE HE'D 'S 'T 'Re 'vE 'LL", "'Sam 'Tis 'DAVE JOHN'SON we'llx 'mmm",
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "A man, a plan, a canal: Panama.", "e.g. i.e. etc. vs. a.m. p.m.",
    # code
    "#include <stdio.h>\nint main(void) {\n    printf(\"%d\\n\", 42);\n    return 0;\n}\n",
    "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Foo(Bar):\n\tdef __init__(self, x=1, *args, **kw):\n\t\tsuper().__init__()\n\t\tself.x = x  # comment\n",
    '{"name": "kvseek", "version": [1, 2, 3], "nested": {"a": null, "b": true, "c": -1.5e-3}}',
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%' ORDER BY id DESC;",
    "<div class=\"x\"><p>Hello &amp; goodbye</p><br/></div>", "x = y ** 2 // 3 % 4 ^ 5 | 6 & ~7 << 8 >> 9",
    "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![]; Ok(()) }",
    "$ ls -la /usr/local/bin | grep -E '^d' > out.txt 2>&1",
    "https://example.com/path/to/page?query=1&other=two#frag", "user@example.org",
    # whitespace
    " ", "  ", "   ", "    ", " " * 40, "\t", "\t\t", "\t\t\t\tx", "\n", "\n\n", "\n" * 33, "\r\n", "\r\n\r\n",
    "a b", "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a\nb", "a\n\nb", "a\r\nb", "a \n b", "a\n \n  \nb",
    " leading", "  two leading", "trailing ", "trailing  ", "  both  ", " \t \n \r ", "\n\nx\n\n", "\u00a0nbsp\u00a0",
    "word\u3000ideographic\u2003em\u2028line\u2029para\u0085nel", "\x0b\x0c vertical tab and form feed",
    "x" + " " * 100 + "y", "\n \n \n", "   \n   ", "end with newline\n", "a\u200bb zero width",
    # digits and numbers
    "0", "7", "42", "123", "1234", "12345678901234567890", "3.14159265358979", "1,000,000.00", "-273.15",
    "2024-01-01T12:34:56Z", "0x1F 0b1010 1e-9 6.02e23", "+1 (555) 123-4567", "v1.2.3-rc4", "٣٤٥ ४५६ 一二三 ⅫⅢ ½ ²³",
    # punctuation
    "!!!???...", "--->", "(a+b)*c/d", "\"quoted\" 'single' `back`", "...and then…", "«guillemets» „Anführung“",
    "@#$%^&*()_+-=[]{}|;:,.<>/?~", "::;;,,..", "—–-", "¡Hola! ¿Qué tal?",
    # accented Latin and other scripts
    "Café naïve résumé façade Über straße Ångström", "Ça va? Où est la gare? Élève, garçon, cœur.",
    "Zürich Köln Düsseldorf São Paulo Kraków Łódź Škoda İstanbul", "e\u0301 vs \u00e9 (combining accent)",
    "中文测试：今天天气很好，我们去公园散步吧。", "日本語のテキストです。カタカナとひらがな。", "한국어 텍스트입니다. 안녕하세요!",
    "Привет, как дела? Ёжик в тумане.", "Γειά σου Κόσμε! αβγδε", "مرحبا بالعالم! هذا نص عربي.",
    "שלום עולם", "नमस्ते दुनिया, यह हिंदी है।", "สวัสดีครับ ภาษาไทย", "Xin chào thế giới, tiếng Việt",
    "ქართული ენა", "Հայերեն", "தமிழ் மொழி", "ᚠᚢᚦᚨᚱᚲ runes", "ꦗꦮ Javanese",
    # emoji
    "😀", "😀😃😄", "👍🏽", "👍🏿 thumbs", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷🇩🇪🇯🇵", "👩🏽‍💻 coder", "I ❤️ 🍕 and 🍺!",
    "🧑‍🤝‍🧑", "✊🏾✋🏻", "😀a😀 b😀", "🫠🫶",
    # special-token text
    "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi there.<end_of_turn>\n",
    "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<bos><bos>text<eos>", "a<eos>b", "<start_of_turn", "start_of_turn>",
    "<<start_of_turn>>", "<start_of_turn><end_of_turn>", "[multimodal]", "<start_of_image><end_of_image>",
    "<unused0><unused99>", "<table><tr><td>x</td></tr></table>", "<b>bold</b> <i>it</i> <s>strike</s>",
    "<h1>Title</h1>\n<blockquote>q</blockquote>", "<code>x = 1</code>", "</s><s>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>", "text<|endoftext|>more", "<|im_end|><|im_end|>", "<|im_start", "<|begin_of_text|><|eot_id|>",
    "<think>reasoning here</think>answer", "<think><think>", "before<think>",
    # byte fallback and rare characters
    "\x00", "a\x00b", "\x01\x02\x03\x1b[31mred\x1b[0m\x7f", "𠀀𠀁𠀂 ext B", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙", "𐀀𐀁 Linear B",
    "𒀀𒀁 cuneiform", "\ue000\ue001 private use", "\U0010fffd", "\uffff\ufffe", "\ufeffBOM", "\ufffd replacement",
    "ℌ ℍ ℎ ℏ ⅀ ∑ ∫ √ ∞ ≠ ≤ ≥", "ﬁ ﬂ ligatures", "Ⓐ Ⓑ ⓒ", "\u0301\u0302 lone combining", "ǅ ǈ titlecase",
    "𝟘𝟙𝟚 math digits", "ĳ Ĳ ŉ", "\u2060word\u2061joiners", "⿰⿱ ideographic description",
]

POOL = [
    "the", " the", "The", "hello", " world", "Hello", "don't", "it's", "I'll", "café", "naïve",
    "东京", "日本", "한국", "Привет", "مرحبا", "नमस्ते", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "123", "4567", "3.14",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", ".", ",", "!", "?", "...", "--", "()", "{}", "[]",
    "<", ">", "</", "/>", "<b>", "</b>", "<td>", "'", "\"", "`", "#", "$", "%", "_", "=", "==", "->", "=>",
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<think>", "</think>", "[multimodal]", "\x00", "\x7f", "𠀀", "\ue000", "e\u0301", "ß", "Σ", "ﬁ",
    "supercalifragilistic", "Zyzzyva", "x" * 20, "0" * 12, "ab" * 7, "\u00a0", "\u3000",
]

RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
          (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F), (0x2000, 0x206F),
          (0x1D400, 0x1D7FF), (0x20000, 0x2A6DF)]


def test_strings():
    rng = random.Random(20240601)
    out = list(FIXED)
    for _ in range(150):
        out.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 12))))
    for _ in range(50):
        lo, hi = rng.choice(RANGES)
        s = []
        for _ in range(rng.randint(1, 16)):
            if rng.random() < 0.2:
                lo, hi = rng.choice(RANGES)
            s.append(chr(rng.randint(lo, hi)))
        out.append("".join(s))
    return out


# ---------------------------------------------------------------- synthetic byte-level vocabs

SAMPLE = (FIXED[0:25] + [
    "The results of the experiment were interesting, although the theory did not predict them.",
    "Every morning he writes three pages in his notebook before he starts working on the computer.",
    "Learning a language takes time: you listen, you repeat, you make mistakes and you try again.",
    "東京は日本の首都です。東京タワーと東京駅。 Café au lait à Zürich. Привет мир, привет!",
    "int x = 0; int y = 1; return x + y; if (x == y) { return 0; } else { return -1; }",
    "    indented    code\n        more indented\n\n\nthree newlines  two spaces",
    "1234567890 2024 1999 3.14 42 100000",
]) * 3


def learn_bpe(pre_split, n_merges):
    """Byte-level BPE merges learned on SAMPLE: (tokens, merges)."""
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pre_split), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    words = {}
    for text in SAMPLE:
        for w, _ in pre.pre_tokenize_str(text):
            words[tuple(w)] = words.get(tuple(w), 0) + 1
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    b2u = {}  # GPT-2 order: printable bytes map to themselves, the others from U+0100
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    k = 0
    for b in range(256):
        if b in printable:
            b2u[b] = chr(b)
        else:
            b2u[b] = chr(0x100 + k)
            k += 1
    assert set(b2u.values()) == set(alphabet)
    tokens = [b2u[b] for b in range(256)]
    known = set(tokens)
    merges = []
    for _ in range(n_merges):
        counts = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        if best[0] + best[1] not in known:
            known.add(best[0] + best[1])
            tokens.append(best[0] + best[1])
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return tokens, merges, b2u


def write_bpe_gguf(path, pre):
    split = PRE_SPLITS[pre]
    tokens, merges, b2u = learn_bpe(split, 400)
    spell = lambda s: "".join(b2u[b] for b in s.encode("utf-8"))
    # vocab tokens no merge sequence reaches: only ignore_merges (llama-bpe) emits them whole
    for extra in [" supercalifragilistic", "Zyzzyva", " Zyzzyva", "xxxxxxxxxxxxxxxxxxxx"]:
        if spell(extra) not in tokens:
            tokens.append(spell(extra))
    # merges for digit groups, contractions and whitespace runs, so that how a splitter groups
    # them shows in the ids
    digits = "0123456789"
    extra_merges = [(a, b) for a in digits for b in digits] + [(a + b, c) for a in "12" for b in digits for c in digits]
    extra_merges += [("'", c) for c in "sStTmMdDrRvVlL"] + [("'" + a, b) for a in "rR" for b in "eE"]
    extra_merges += [("'" + a, b) for a in "vV" for b in "eE"] + [("'" + a, b) for a in "lL" for b in "lL"]
    sp, nl, tab, cr = spell(" "), spell("\n"), spell("\t"), spell("\r")
    extra_merges += [(sp, sp), (sp + sp, sp), (sp + sp, sp + sp), (nl, nl), (tab, tab), (cr, nl), (sp, nl),
                     (nl, sp), (sp, tab), (tab, sp)]
    extra_merges += [(x, c) for x in (nl, cr, tab) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    extra_merges += [("a", "m"), ("'S", "am")]  # "'Sam" is "'S" "am" when contractions ignore case
    for a, b in extra_merges:
        if (a, b) not in merges:
            merges.append((a, b))
            if a + b not in tokens:
                tokens.append(a + b)
    types = [TT_NORMAL] * len(tokens)
    for s, ty in [("<|endoftext|>", TT_CONTROL), ("<|im_start|>", TT_CONTROL), ("<|im_end|>", TT_CONTROL),
                  ("<|begin_of_text|>", TT_CONTROL), ("<|eot_id|>", TT_CONTROL),
                  ("<think>", TT_USER_DEFINED), ("</think>", TT_USER_DEFINED)]:
        tokens.append(s)
        types.append(ty)
    w = gguf.GGUFWriter(path, {"qwen2": "qwen2", "gpt2": "gpt2"}.get(pre, "llama"))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([a + " " + b for a, b in merges])
    if pre != "llama-bpe":
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_add_bos_token(False)
    else:
        w.add_bos_token_id(tokens.index("<|begin_of_text|>"))
        w.add_eos_token_id(tokens.index("<|eot_id|>"))
        w.add_token_scores([0.0] * len(tokens))
    w.add_tensor("dummy.weight", np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_spm_copy(path, m):
    """The vocab of m (SentencePiece) with add_space_prefix=true, as Llama 2 files have it."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(m["tokens"])
    w.add_token_scores(m["scores"])
    w.add_token_types(m["types"])
    w.add_bos_token_id(m["bos"])
    w.add_eos_token_id(m["eos"])
    w.add_unk_token_id(m["unk"])
    w.add_add_space_prefix(True)
    w.add_tensor("dummy.weight", np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- comparison

def show(s, n=80):
    r = repr(s)
    return r if len(r) <= n else r[:n] + "...'"


def check_model(tool, path, label, strings, m=None):
    m = m or read_meta(path)
    tk = build_reference(m)
    failures = 0
    checked = 0
    for parse_special in (False, True):
        ref = reference_ids(tk, strings, parse_special)
        got, info = kvseek_ids(tool, path, strings, parse_special, bos=False)
        bad = [i for i in range(len(strings)) if got[i][0] != ref[i]]
        checked += len(strings)
        print("%-28s special=%d: %d strings, %d mismatches  (%s)" % (label, parse_special, len(strings), len(bad), info))
        for i in bad[:5]:
            print("   %s\n     kvseek: %s\n     ref:    %s" % (show(strings[i]), got[i][0][:40], ref[i][:40]))
            g, r = got[i][0], ref[i]
            k = next((j for j in range(min(len(g), len(r))) if g[j] != r[j]), min(len(g), len(r)))
            pieces = lambda ids: [m["tokens"][t] for t in ids[max(0, k - 2):k + 4]]
            print("     first diff at %d: kvseek %s  ref %s" % (k, pieces(g), pieces(r)))
        failures += len(bad)
        if not m["add_space_prefix"]:
            rt = [i for i in range(len(strings)) if got[i][1] != strings[i].encode("utf-8")]
            print("%-28s special=%d: round trip %d failures" % (label, parse_special, len(rt)))
            for i in rt[:5]:
                print("   %s -> %s" % (show(strings[i]), show(got[i][1].decode("utf-8", "replace"))))
            failures += len(rt)
    # add_special: BOS first (when the vocab asks for it), then the same ids
    sub = strings[:60]
    got, _ = kvseek_ids(tool, path, sub, False, bos=True)
    plain = reference_ids(tk, sub, False)
    want = [([m["bos"]] if m["add_bos"] and m["bos"] is not None else []) + p for p in plain]
    bad = [i for i in range(len(sub)) if got[i][0] != want[i]]
    print("%-28s add_special: %d strings, %d mismatches" % (label, len(sub), len(bad)))
    for i in bad[:3]:
        print("   %s\n     kvseek: %s\n     want:   %s" % (show(sub[i]), got[i][0][:20], want[i][:20]))
    return failures + len(bad), checked


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    build, model = sys.argv[1], sys.argv[2]
    tool = os.path.join(build, "tests", "tool_tok")
    if not os.access(tool, os.X_OK):
        print("missing %s (run make)" % tool)
        return 1
    strings = test_strings()
    failures = checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        todo = []
        if os.path.exists(model):
            m = read_meta(model)
            todo.append((model, os.path.basename(model), m))
            if m["model"] == "llama" and not m["add_space_prefix"]:
                p = os.path.join(tmp, "spm-space-prefix.gguf")
                write_spm_copy(p, m)
                todo.append((p, "spm add_space_prefix", dict(m, add_space_prefix=True)))
        else:
            print("model %s not found: checking the synthetic vocabs only" % model)
        for pre in ("qwen2", "llama-bpe", "gpt2"):
            p = os.path.join(tmp, "bpe-%s.gguf" % pre)
            write_bpe_gguf(p, pre)
            todo.append((p, "synthetic bpe " + pre, None))
        tiny = os.path.join(build, "tiny")
        if os.path.isdir(tiny):
            for name in sorted(os.listdir(tiny)):
                if name.startswith("tiny-") and name.endswith(".gguf") and "-f32" not in name:
                    todo.append((os.path.join(tiny, name), name, None))
        for path, label, m in todo:
            f, c = check_model(tool, path, label, strings, m)
            failures += f
            checked += c
    print("test_tok_ref: %d encodings checked over %d models, %d failures" % (checked, len(todo), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
