"""ref_model.py: an independent numpy reference forward pass for gemma3, qwen2 and llama GGUFs.

Written from shared/MODELS.md and the Hugging Face modeling code (the ground truth of the
math), deliberately without looking at kvseek's C code, so that the logits test compares two
independent implementations. Plain and slow: every tensor is dequantized to float32 once with
gguf's own dequantizers, and the forward pass runs in float64 over the whole sequence at once
with explicit masks (no KV cache), so it has no chunking or caching logic of its own to get
wrong.

    m = load("model.gguf")
    lg = logits(m, [2, 818, 5279])       # float32 [n_tok, n_vocab], every position
    ids = greedy(m, [2, 818, 5279], 8)   # the 8 generated ids

Conventions: a GGUF tensor with ne = [in, out] reads as a numpy array of shape (out, in), so
y = W @ x for a single vector, y = X @ W.T for rows of activations.
"""
import math

import numpy as np

import gguf

ARCHS = ("gemma3", "qwen2", "llama")


class Model:
    """Hyperparameters (read from the file, never assumed) and the dequantized tensors."""
    pass


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def load(path, i8_types=()):
    """Reads a GGUF file: metadata into attributes, every tensor dequantized to float32.
    i8_types: type names ("q5_0") whose products the engine computes with activations
    quantized to 8 bits per block of 32 (`kvseek info`'s i8_types); linear() mirrors that
    rounding for tensors of those types (llama.cpp's Q8_0 scheme), not the engine's code."""
    r = gguf.GGUFReader(path)
    m = Model()
    m.path = path
    m.arch = arch = _field(r, "general.architecture")
    if arch not in ARCHS:
        raise ValueError("unsupported architecture %r" % arch)

    def hp(key, default=None):
        return _field(r, "%s.%s" % (arch, key), default)

    m.n_embd = hp("embedding_length")
    m.n_layer = hp("block_count")
    m.n_ff = hp("feed_forward_length")
    m.n_head = hp("attention.head_count")
    m.n_head_kv = hp("attention.head_count_kv", m.n_head)
    m.head_dim = hp("attention.key_length", m.n_embd // m.n_head)
    m.head_dim_v = hp("attention.value_length", m.head_dim)
    m.eps = hp("attention.layer_norm_rms_epsilon")
    m.n_rot = hp("rope.dimension_count", m.head_dim)
    m.rope_base = hp("rope.freq_base", 10000.0)
    scaling = hp("rope.scaling.type")
    factor = hp("rope.scaling.factor", 0.0)
    # Only linear scaling changes positions uniformly; llama3 scaling arrives as rope_freqs.
    m.freq_scale = 1.0 / factor if scaling == "linear" and factor else 1.0
    m.final_softcap = hp("final_logit_softcapping", 0.0) or 0.0
    m.attn_scale = hp("attention.scale", 0.0) or 1.0 / math.sqrt(m.head_dim)

    # Which layers attend through a sliding window, and with which RoPE.
    m.window = hp("attention.sliding_window", 0) or 0
    m.local = [False] * m.n_layer
    m.rope_base_local = m.rope_base
    if arch == "gemma3":
        pattern = hp("attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):            # newer files: one flag per layer
            m.local = [bool(p) for p in pattern]
        else:                                    # every pattern-th layer is global
            m.local = [i % pattern < pattern - 1 for i in range(m.n_layer)]
        m.rope_base_local = hp("rope.freq_base_swa", 10000.0)
        if m.n_layer == 62:
            # Gemma 3 27B scales queries by (n_embd / n_head)^-1/2 (query_pre_attn_scalar),
            # every other size by head_dim^-1/2; the file does not say, llama.cpp keys on size.
            m.attn_scale = 1.0 / math.sqrt(m.n_embd / m.n_head)

    m.bos = _field(r, "tokenizer.ggml.bos_token_id")
    m.eos = _field(r, "tokenizer.ggml.eos_token_id")
    m.add_bos = bool(_field(r, "tokenizer.ggml.add_bos_token", False))
    m.tokens = _field(r, "tokenizer.ggml.tokens", [])    # token strings, index = id

    # Layer tensors are kept as float64 (the real 270M model's take 0.8 GB) so the forward
    # pass does not re-cast them at every step; the vocab-sized ones stay float32 (a 262144-row
    # embedding would double to 1.3 GB) and are cast a slice at a time where needed.
    m.w = {}
    m.q8 = set()          # tensors whose products see 8-bit activations
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        name = t.name[:-len(".weight")] if t.name.endswith(".weight") else t.name
        if t.tensor_type.name.lower() in i8_types:
            m.q8.add(name)
        dtype = np.float32 if name in ("token_embd", "output") else np.float64
        m.w[name] = np.ascontiguousarray(data, dtype=dtype).reshape(shape)
    m.output = m.w.get("output", m.w["token_embd"])      # absent output: tied embeddings
    m.n_vocab = m.w["token_embd"].shape[0]
    m.rope_freqs = m.w.get("rope_freqs")
    return m


# --------------------------------------------------------------------------------------------
# Building blocks (float64 in, float64 out)

def rms_norm(x, w, eps):
    """Plain RMSNorm over the last axis. Gemma's "+1" is already folded into GGUF weights."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1 + np.exp(-x))


def quant_q8(x):
    """x [n, in] rounded as 8-bit activations: per block of 32, d = max|x| / 127 (float32) and
    x' = d * round(x / d), from the float32 values the engine holds."""
    xf = np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1, 32)
    d = (np.abs(xf).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.rint((xf * inv).astype(np.float32))
    return (d.astype(np.float64) * q).reshape(x.shape)


def linear(x, w, b=None, q8=False):
    """x [n, in] -> [n, out] for a weight w [out, in] (float64); q8: the activations rounded
    to 8 bits first (quant_q8)."""
    if q8:
        x = quant_q8(x)
    y = (w @ x.T).T
    return y if b is None else y + b


def rope(x, pos, n_rot, base, freq_scale, factors, neox):
    """Rotates the first n_rot dims of every head. x: [n_tok, n_heads, head_dim].

    Pair i rotates by pos * base^(-2i/n_rot) / factors[i] * freq_scale. NEOX (gemma3, qwen2)
    pairs dim i with i + n_rot/2, which is HF's rotate_half; NORM (llama) pairs 2i with 2i+1,
    which equals HF's rotate_half on the permuted q/k rows the GGUF converter writes.
    """
    half = n_rot // 2
    inv = base ** (-2.0 * np.arange(half) / n_rot)
    if factors is not None:
        inv = inv / factors.astype(np.float64)
    ang = np.outer(pos, inv) * freq_scale                # [n_tok, half]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def attention(q, k, v, scale, window, weights=None):
    """Causal multi-head attention with GQA. q: [T, H, d], k/v: [T, Hkv, d].
    With a window w > 0, query p1 sees keys p0 <= p1 with p1 - p0 < w.
    weights: a list that receives the softmax weights [H, T, T] (the attention trace's reference)."""
    T, H, _ = q.shape
    group = H // k.shape[1]
    p1 = np.arange(T)[:, None]
    p0 = np.arange(T)[None, :]
    allowed = p0 <= p1
    if window > 0:
        allowed &= (p1 - p0) < window
    out = np.empty((T, H, v.shape[2]))
    for h in range(H):
        kv = h // group                                  # query head h reads KV head h/group
        s = (q[:, h, :] @ k[:, kv, :].T) * scale
        s = np.where(allowed, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ v[:, kv, :]
        if weights is not None:
            weights.append(p)
    return out.reshape(T, -1)


# --------------------------------------------------------------------------------------------
# Forward pass

def hidden(m, tokens, weights=None):
    """Final normed hidden states [n_tok, n_embd] (float64) for positions 0..n_tok-1.
    weights: a list that receives each global layer's softmax weights, [H, T, T] per layer."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.min() < 0 or tokens.max() >= m.n_vocab:
        raise ValueError("token id out of range")
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    gemma = m.arch == "gemma3"
    neox = m.arch in ("gemma3", "qwen2")
    w = m.w

    x = w["token_embd"][tokens].astype(np.float64)
    if gemma:
        x *= math.sqrt(m.n_embd)

    for L in range(m.n_layer):
        p = "blk.%d." % L
        local = m.local[L]
        h = rms_norm(x, w[p + "attn_norm"], m.eps)
        q = linear(h, w[p + "attn_q"], w.get(p + "attn_q.bias"), p + "attn_q" in m.q8).reshape(T, m.n_head, m.head_dim)
        k = linear(h, w[p + "attn_k"], w.get(p + "attn_k.bias"), p + "attn_k" in m.q8).reshape(T, m.n_head_kv, m.head_dim)
        v = linear(h, w[p + "attn_v"], w.get(p + "attn_v.bias"), p + "attn_v" in m.q8).reshape(T, m.n_head_kv, m.head_dim_v)
        if gemma:                                        # per-head QK-norm, before RoPE
            q = rms_norm(q, w[p + "attn_q_norm"], m.eps)
            k = rms_norm(k, w[p + "attn_k_norm"], m.eps)
        if gemma and local:                              # local layers: own base, no scaling
            base, fscale = m.rope_base_local, 1.0
        else:
            base, fscale = m.rope_base, m.freq_scale
        q = rope(q, pos, m.n_rot, base, fscale, m.rope_freqs, neox)
        k = rope(k, pos, m.n_rot, base, fscale, m.rope_freqs, neox)
        lw = [] if weights is not None and not local else None
        a = attention(q, k, v, m.attn_scale, m.window if local else 0, lw)
        if lw is not None:
            weights.append(np.stack(lw))
        a = linear(a.reshape(T, -1), w[p + "attn_output"], w.get(p + "attn_output.bias"),
                   p + "attn_output" in m.q8)
        if gemma:
            a = rms_norm(a, w[p + "post_attention_norm"], m.eps)
        x = x + a

        h = rms_norm(x, w[p + "ffn_norm"], m.eps)
        act = gelu_tanh if gemma else silu
        g = act(linear(h, w[p + "ffn_gate"], q8=p + "ffn_gate" in m.q8))
        f = linear(g * linear(h, w[p + "ffn_up"], q8=p + "ffn_up" in m.q8), w[p + "ffn_down"],
                   q8=p + "ffn_down" in m.q8)
        if gemma:
            f = rms_norm(f, w[p + "post_ffw_norm"], m.eps)
        x = x + f

    return rms_norm(x, w["output_norm"], m.eps)


def project(m, h):
    """Logits of normed hidden rows h [n, n_embd] -> float32 [n, n_vocab]. The output matrix
    is cast to float64 a slice at a time: a 262144-row vocab would need 1.3 GB at once."""
    out = np.empty((h.shape[0], m.n_vocab), dtype=np.float32)
    if ("output" if "output" in m.w else "token_embd") in m.q8:
        h = quant_q8(h)
    step = 32768
    for r0 in range(0, m.n_vocab, step):
        out[:, r0:r0 + step] = h @ m.output[r0:r0 + step].astype(np.float64).T
    if m.final_softcap:
        out = (np.tanh(out / m.final_softcap) * m.final_softcap).astype(np.float32)
    return out


def logits(m, tokens):
    """float32 [n_tok, n_vocab]: the logits at every position of a causal pass over tokens."""
    return project(m, hidden(m, tokens))


def attention_weights(m, tokens):
    """The softmax weights of the last position over every position, per global layer and
    query head: float64 [n_global_layers, n_head, n_tok]."""
    w = []
    hidden(m, tokens, w)
    return np.stack([lw[:, -1, :] for lw in w])


def greedy(m, tokens, n):
    """Appends n argmax tokens to tokens (recomputing the whole prefix each step); returns
    the n new ids."""
    seq = list(tokens)
    for _ in range(n):
        seq.append(int(np.argmax(project(m, hidden(m, seq)[-1:])[0])))
    return seq[len(tokens):]

