#!/usr/bin/env python3
"""make_tiny.py OUTDIR: writes the tiny test models.

Six GGUF v3 files with seeded random weights, small enough that the logits test runs in
seconds, yet shaped so that every code path of the engine is taken:

  tiny-gemma3[-f32].gguf  6 layers (layer 5 global), n_embd 256, 4 heads / 2 KV heads of 64,
                          FFN 512, sliding window 8, QK-norm, sandwich norms, tied output.
  tiny-qwen2[-f32].gguf   3 layers, n_embd 256, 4 / 2 heads of 64, FFN 512, q/k/v biases,
                          tied output, byte-level BPE ("gpt2") tokenizer.
  tiny-llama[-f32].gguf   3 layers, n_embd 256, 8 / 2 heads of 32 (GQA 4), FFN 512, untied
                          output, rope_freqs factors, NORM RoPE, base 500000.

The -f32 flavour stores every tensor as F32; the other flavour stores the very same float
weights quantized, the matmul weights cycling through Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K
F16 BF16 so that every type appears in every model (norms, biases and rope_freqs stay F32).
The installed gguf package cannot quantize the K-quants, so they are quantized here by a
plain min/max scheme; every file is read back and dequantized with gguf's own code to prove
that the packing is what a reader expects.

All vocabularies have 512 entries (= embedding rows) and are learned deterministically from
SAMPLE_TEXT below. Output is deterministic; each file is written to a temporary name and
renamed, so a reader never sees half a file.
"""
import collections
import math
import os
import sys

import numpy as np
import regex

import gguf
from gguf import GGMLQuantizationType as QT

N_VOCAB = 512

# Mixed-flavour weight types, in the order the matmul weights cycle through them.
CYCLE = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.F16, QT.BF16]

# Vocabularies are learned from this text. Its few non-ASCII words (café, naïve, Zürich) and
# digits are deliberately left out of the SentencePiece vocab so they exercise byte fallback.
SAMPLE_TEXT = """\
The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is Rome.
Paris is known for the Eiffel Tower, the Louvre and the river Seine that runs through the city.
In the morning the baker opens the shop, and the smell of fresh bread fills the street.
There are many things to learn in the world, and the best way to learn them is to read, to write
and to think about what you have read. A good teacher helps the student to ask better questions.
When the weather is warm, people walk in the park, sit under the trees and talk with their friends.
The history of the city is older than the history of the country that surrounds it.
Computers store numbers in memory, and a program tells the computer what to do with them.
The quick brown fox jumps over the lazy dog. The dog does not mind; it is resting in the sun.
She said that the train would arrive at 10:45, but it was late again, as it often is in winter.
We ordered a café au lait and a naïve little cake in a small shop in Zürich.
Learning a language takes time: you listen, you repeat, you make mistakes and you try again.
The results of the experiment were interesting, although the theory did not predict them.
If you want to go far, go together; if you want to go fast, go alone, as the saying goes.
Every morning he writes three pages in his notebook before he starts working on the computer.
The children were playing in the garden while their parents prepared dinner in the kitchen.
Mountains, rivers and forests cover most of the northern part of the country.
"""

# Token types of tokenizer.ggml.token_type.
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_BYTE = 1, 2, 3, 6


# --------------------------------------------------------------------------------------------
# Tokenizers

def bpe_merges(words):
    """Yields BPE merges (a, b) learned on a Counter of words, most frequent pair first, ties
    broken lexicographically so the result is reproducible."""
    splits = {w: list(w) for w in words}
    while True:
        pairs = collections.Counter()
        for w, n in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            raise RuntimeError("sample text too small for the vocab")
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        for w in words:
            s, out, i = splits[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
        yield a, b


def learn_spm_vocab(n_pieces):
    """SentencePiece-style BPE pieces: ASCII characters, then merges in order of frequency.

    Returns [(piece, score)]. Merged pieces score -rank, so a tokenizer that merges by highest
    score replays the training order; single characters score below every merge (their score
    is never consulted: they are starting symbols, never the result of a merge).
    """
    text = SAMPLE_TEXT.replace("\n", " ")
    words = collections.Counter()
    for w in text.split(" "):
        if w and all(ord(c) < 128 for c in w):
            words["\u2581" + w] += 1
    chars = sorted({c for w in words for c in w})
    pieces = [(c, -1000.0 - i) for i, c in enumerate(chars)]
    known = set(chars)
    rank = 0
    merges = bpe_merges(words)
    while len(pieces) < n_pieces:
        a, b = next(merges)
        if a + b not in known:
            known.add(a + b)
            pieces.append((a + b, -float(rank)))
            rank += 1
    return pieces


def spm_tokenizer(extra_control):
    """The tokenizer.ggml.* arrays of a 512-token SentencePiece ("llama") vocab."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"]
    scores = [-1000.0] * 4
    types = [TT_CONTROL, TT_CONTROL, TT_CONTROL, TT_UNKNOWN]
    for b in range(256):
        tokens.append("<0x%02X>" % b)
        scores.append(0.0)
        types.append(TT_BYTE)
    for piece, score in learn_spm_vocab(N_VOCAB - len(tokens) - len(extra_control)):
        tokens.append(piece)
        scores.append(score)
        types.append(TT_NORMAL)
    for name in extra_control:
        tokens.append(name)
        scores.append(-1000.0)
        types.append(TT_CONTROL)
    assert len(tokens) == N_VOCAB and len(set(tokens)) == N_VOCAB
    return tokens, scores, types


def bytes_to_unicode():
    """GPT-2's byte -> printable character map, in GPT-2's order (printable bytes first)."""
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


QWEN2_PRE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
             r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def gpt2_tokenizer(specials):
    """Byte-level BPE: the 256 byte symbols (in GPT-2 order, so id != byte value), merges
    learned on the pre-tokenized sample text, then the special tokens. Every merge result is a
    vocab token; a merge whose result already exists is still listed (it is a valid merge)."""
    b2u = bytes_to_unicode()
    tokens = list(b2u.values())
    known = set(tokens)
    words = collections.Counter(
        "".join(b2u[b] for b in w.encode("utf-8")) for w in regex.findall(QWEN2_PRE, SAMPLE_TEXT))
    merges = []
    learned = bpe_merges(words)
    while len(tokens) < N_VOCAB - len(specials):
        a, b = next(learned)
        merges.append(a + " " + b)
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)
    types = [TT_NORMAL] * len(tokens) + [TT_CONTROL] * len(specials)
    tokens += specials
    assert len(tokens) == N_VOCAB and len(set(tokens)) == N_VOCAB
    return tokens, types, merges


# --------------------------------------------------------------------------------------------
# K-quant packing (gguf 0.19 can dequantize these but not quantize them). Each returns the
# block bytes and the values a correct reader must dequantize them to.

def _f16(a):
    return a.astype(np.float16).astype(np.float32)


def _safe_div(a, b):
    return np.where(b > 0, a / np.where(b > 0, b, 1), 0)


def _kquant_scale_min(x, qmax):
    """Shared by Q4_K/Q5_K: 8 sub-blocks of 32, y = d*sc*q - dmin*m, 6-bit sc and m."""
    nb = x.shape[0]
    sub = x.reshape(nb, 8, 32)
    mn = np.minimum(sub.min(-1), 0)
    scale = (sub.max(-1) - mn) / qmax
    d = _f16(scale.max(-1, keepdims=True) / 63)
    dmin = _f16((-mn).max(-1, keepdims=True) / 63)
    sc = np.clip(np.rint(_safe_div(scale, d)), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(-mn, dmin)), 0, 63).astype(np.uint8)
    eff_d = (d * sc.astype(np.float32))[..., None]
    eff_m = (dmin * m.astype(np.float32))[..., None]
    q = np.clip(np.rint(_safe_div(sub + eff_m, eff_d)), 0, qmax).astype(np.uint8)
    y = (eff_d * q.astype(np.float32) - eff_m).reshape(nb, 256)
    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    head = np.concatenate([d.astype(np.float16).view(np.uint8),
                           dmin.astype(np.float16).view(np.uint8), packed], axis=1)
    return head, q, y


def _nibbles(q):
    """Q4_K/Q5_K low nibbles: byte 32g+l holds sub-block 2g (low) and 2g+1 (high)."""
    q = q.reshape(q.shape[0], 4, 2, 32) & 15
    return (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(q.shape[0], 128)


def quantize_q4_k(x):
    head, q, y = _kquant_scale_min(x, 15)
    return np.concatenate([head, _nibbles(q)], axis=1), y


def quantize_q5_k(x):
    head, q, y = _kquant_scale_min(x, 31)
    hi = (q >> 4) & 1                                   # (nb, 8 sub-blocks, 32)
    qh = np.zeros((x.shape[0], 32), np.uint8)
    for j in range(8):
        qh |= hi[:, j, :] << j
    return np.concatenate([head, qh, _nibbles(q)], axis=1), y


def quantize_q6_k(x):
    nb = x.shape[0]
    sub = x.reshape(nb, 16, 16)
    scale = np.abs(sub).max(-1) / 31
    d = _f16(scale.max(-1, keepdims=True) / 127)
    sc = np.clip(np.rint(_safe_div(scale, d)), -128, 127).astype(np.int8)
    eff = (d * sc.astype(np.float32))[..., None]
    q = (np.clip(np.rint(_safe_div(sub, eff)), -32, 31) + 32).astype(np.uint8).reshape(nb, 256)
    y = (eff * (q.reshape(nb, 16, 16).astype(np.float32) - 32)).reshape(nb, 256)
    halves = q.reshape(nb, 2, 2, 64)                    # [n][low 64 | high 64] of each 128
    ql = ((halves[:, :, 0, :] & 15) | ((halves[:, :, 1, :] & 15) << 4)).reshape(nb, 128)
    quarters = q.reshape(nb, 2, 4, 32)                  # [n][t][l]
    qh = np.zeros((nb, 2, 32), np.uint8)
    for t in range(4):
        qh |= ((quarters[:, :, t, :] >> 4) & 3) << (2 * t)
    blocks = np.concatenate([ql, qh.reshape(nb, 64), sc.view(np.uint8),
                             d.astype(np.float16).view(np.uint8)], axis=1)
    return blocks, y


K_QUANTIZERS = {QT.Q4_K: quantize_q4_k, QT.Q5_K: quantize_q5_k, QT.Q6_K: quantize_q6_k}


def encode(w, qtype):
    """Float weight (numpy shape (rows, ne0)) -> (array for GGUFWriter, raw_dtype, expected
    dequantized values)."""
    w = w.astype(np.float32)
    if qtype == QT.F32:
        return w, None, w
    if qtype == QT.F16:
        h = w.astype(np.float16)
        return h, None, h.astype(np.float32)
    if qtype in K_QUANTIZERS:
        rows, ne0 = w.shape
        blocks, y = K_QUANTIZERS[qtype](w.reshape(-1, 256))
        return (blocks.reshape(rows, -1).astype(np.uint8), qtype,
                y.reshape(rows, ne0).astype(np.float32))
    data = gguf.quants.quantize(w, qtype)
    return data, qtype, gguf.quants.dequantize(data, qtype)


# --------------------------------------------------------------------------------------------
# Models

# Per architecture: shapes, metadata and the tensors it owns. Norm weights are ~1 because a
# GGUF's gemma norms already include Gemma's "+1"; matmul weights have std 1/sqrt(fan_in) so
# every projection keeps activations O(1); embeddings/output std 0.1 gives logits of std ~1.6.
# gemma3 is the exception: its embeddings are scaled by sqrt(n_embd) = 16 and tied to the
# output, so with std 0.1 every position's argmax would simply copy its input token. Small
# embeddings (0.02) keep the layers in charge, and an output_norm of ~5 (the real model's is
# ~26) brings the logits back to std ~1.6.
MODELS = {
    "gemma3": dict(seed=1, n_layer=6, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512,
                   eps=1e-6, rope_base=1e6, window=8, tied=True, biases=False,
                   embd_std=0.02, out_norm=5.0, embd_type=QT.Q8_0),
    "qwen2":  dict(seed=2, n_layer=3, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512,
                   eps=1e-6, rope_base=1e6, tied=True, biases=True, embd_std=0.1, out_norm=1.0,
                   embd_type=QT.Q6_K),
    "llama":  dict(seed=3, n_layer=3, n_embd=256, n_head=8, n_head_kv=2, head_dim=32, n_ff=512,
                   eps=1e-5, rope_base=5e5, tied=False, biases=False, embd_std=0.1, out_norm=1.0,
                   embd_type=QT.Q4_K, out_type=QT.Q5_K),
}


def float_weights(arch, c):
    """Name -> float32 numpy array (numpy shape = reversed GGUF ne), plus the matmul names."""
    rng = np.random.default_rng(c["seed"])
    e, hd, ff = c["n_embd"], c["head_dim"], c["n_ff"]
    nq, nkv = c["n_head"] * hd, c["n_head_kv"] * hd
    t, matmuls = {}, []

    def mat(name, n_out, n_in, gain=1.0):
        t[name] = rng.normal(0, gain / math.sqrt(n_in), (n_out, n_in))
        matmuls.append(name)

    def norm(name, n, scale=1.0):
        t[name] = scale * (1 + 0.1 * rng.normal(size=n))

    t["token_embd.weight"] = rng.normal(0, c["embd_std"], (N_VOCAB, e))
    norm("output_norm.weight", e, c["out_norm"])
    if not c["tied"]:
        t["output.weight"] = rng.normal(0, 0.1, (N_VOCAB, e))
    if arch == "llama":
        # Llama-3-style factors: 1 for the fastest rotations rising smoothly to 8 for the
        # slowest, compressed into 16 pairs so they matter within a 40-token test.
        i = np.arange(hd // 2) / (hd // 2 - 1)
        t["rope_freqs.weight"] = 1 + 7 * (3 * i**2 - 2 * i**3)
    for L in range(c["n_layer"]):
        p = "blk.%d." % L
        norm(p + "attn_norm.weight", e)
        mat(p + "attn_q.weight", nq, e)
        mat(p + "attn_k.weight", nkv, e)
        mat(p + "attn_v.weight", nkv, e)
        if c["biases"]:
            for w, n in (("q", nq), ("k", nkv), ("v", nkv)):
                t[p + "attn_%s.bias" % w] = rng.normal(0, 0.2, n)
        mat(p + "attn_output.weight", e, nq)
        if arch == "gemma3":
            norm(p + "attn_q_norm.weight", hd)
            norm(p + "attn_k_norm.weight", hd)
            norm(p + "post_attention_norm.weight", e)
            norm(p + "post_ffw_norm.weight", e)
        norm(p + "ffn_norm.weight", e)
        mat(p + "ffn_gate.weight", ff, e)
        mat(p + "ffn_up.weight", ff, e)
        mat(p + "ffn_down.weight", e, ff)
    return {k: v.astype(np.float32) for k, v in t.items()}, matmuls


def tensor_types(arch, c, matmuls, quantized):
    if not quantized:
        return {}
    types = {name: CYCLE[(i + c["seed"]) % len(CYCLE)] for i, name in enumerate(matmuls)}
    types["token_embd.weight"] = c["embd_type"]
    if not c["tied"]:
        types["output.weight"] = c["out_type"]
    return types


# The qwen2 model carries a chat template (ChatML) in its metadata; the gemma3 one, like the
# default Gemma 3 270M file, has none (the server infers the format from the architecture).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_model(outdir, arch, quantized):
    c = MODELS[arch]
    name = "tiny-%s%s.gguf" % (arch, "" if quantized else "-f32")
    path = os.path.join(outdir, name)
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(name[:-5])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if quantized else gguf.LlamaFileType.ALL_F32)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(2048)
    w.add_embedding_length(c["n_embd"])
    w.add_block_count(c["n_layer"])
    w.add_feed_forward_length(c["n_ff"])
    w.add_head_count(c["n_head"])
    w.add_head_count_kv(c["n_head_kv"])
    w.add_layer_norm_rms_eps(c["eps"])
    w.add_rope_freq_base(c["rope_base"])
    if arch == "gemma3":
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
        w.add_sliding_window(c["window"])
    if arch == "llama":
        w.add_rope_dimension_count(c["head_dim"])
        w.add_vocab_size(N_VOCAB)

    if arch == "qwen2":
        tokens, types, merges = gpt2_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        eot = tokens.index("<|endoftext|>")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
        w.add_pad_token_id(eot)
        w.add_add_bos_token(False)
        w.add_chat_template(CHATML_TEMPLATE)
    else:
        extra = ["<start_of_turn>", "<end_of_turn>"] if arch == "gemma3" else []
        tokens, scores, types = spm_tokenizer(extra)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(arch == "llama")

    weights, matmuls = float_weights(arch, c)
    types = tensor_types(arch, c, matmuls, quantized)
    expected = {}
    for tname in sorted(weights):
        data, raw, expected[tname] = encode(weights[tname], types.get(tname, QT.F32))
        w.add_tensor(tname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    verify(tmp, expected, weights)
    os.replace(tmp, path)
    return path


def verify(path, expected, weights):
    """Reads the file back: shapes, and gguf's own dequantization must give exactly what the
    packing intended (and stay close to the float weights it came from)."""
    r = gguf.GGUFReader(path)
    assert len(r.tensors) == len(expected)
    for t in r.tensors:
        want = expected[t.name]
        assert list(t.shape) == list(reversed(want.shape)), (t.name, t.shape, want.shape)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        assert np.array_equal(got, want), t.name
        err = np.abs(got - weights[t.name]).max() / np.abs(weights[t.name]).max()
        assert err < 0.2, (t.name, t.tensor_type.name, err)
    assert len(r.fields["tokenizer.ggml.tokens"].data) == N_VOCAB


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    for arch in MODELS:
        for quantized in (False, True):
            print(write_model(outdir, arch, quantized))


if __name__ == "__main__":
    main()
