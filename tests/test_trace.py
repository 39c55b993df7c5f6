"""test_trace.py BUILD [MODEL]: the attention trace ("attention": {"trace": ...}) against an
independent reference, over HTTP on the tiny models.

- dense, one position per bucket: the first token's trace is, per position, the softmax weight
  of the last prompt row averaged over global layers and query heads, as tests/ref_model.py
  (numpy, float64) computes it; a decode row's most-read buckets likewise for the prompt plus
  the first generated token;
- a sparse selector (window) traces only what it attended: its decode rows put no mass outside
  the sinks and the recent window, and every row's mass sums to 1 (no estimate part);
- the trace rides every route (OpenAI completions and chat, streamed or not, TGI generate,
  a registered context) with its documented fields and bounds; without "trace" there is none;
  a bad value is a 400 naming attention.trace.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_model  # noqa: E402
from kvserver import Server  # noqa: E402

BUILD = sys.argv[1]
TOL = 2e-3  # per position: float32 + f16 KV against float64, weights averaged over heads
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
    return cond


def trace_of(body):
    return (body.get("attention") or {}).get("trace")


def well_formed(t, n_tokens, max_buckets, what):
    ok = (t is not None and t["n_buckets"] <= max_buckets and len(t["mass"]) == t["n_buckets"]
          and len(t["tokens"]) == n_tokens and all(len(r) <= 8 for r in t["tokens"])
          and all(0 <= b < t["n_buckets"] and m > 0 for r in t["tokens"] for b, m in r)
          and all(r[i][1] >= r[i + 1][1] for r in t["tokens"] for i in range(len(r) - 1)))
    return check(ok, what + ": trace fields, one row per token, <= 8 buckets each, most first")


def dense_against_reference(name):
    path = os.path.join(BUILD, "tiny", name)
    ref = ref_model.load(path)
    text = "the cat sat on the mat and looked at the dog, who did not look back. " * 3
    body = {"max_tokens": 3, "temperature": 0, "ignore_eos": True, "attention": {"selector": "dense", "trace": 1024}}
    with Server(BUILD, path) as s:
        st, _, tk = s.request("POST", "/tokenize", {"content": text})
        prompt = tk["tokens"]  # as /generate and /v1/completions tokenize text
        st, _, b = s.request("POST", "/v1/completions", {"prompt": prompt, **body})
        t = trace_of(b) if st == 200 else None
        if not check(t is not None, f"{name}: dense completion with a trace ({st})"):
            return
        well_formed(t, 3, 1024, name)
        check(t["bucket_tokens"] == 1 and t["context_tokens"] == 0 and t["prompt_tokens"] == len(prompt),
              f"{name}: one position per bucket, prompt_tokens {t['prompt_tokens']} of {len(prompt)}")
        st, _, b1 = s.request("POST", "/v1/completions", {"prompt": prompt, **body, "max_tokens": 1})
        # a decode row: TGI details give the first generated id, whose row produced the second
        st, _, g = s.request("POST", "/generate", {"inputs": text, "parameters": {
            "max_new_tokens": 2, "details": True, "attention": {"selector": "dense", "trace": 1024}}})
    layers = sum(1 for x in ref.local if not x)
    check(t["layers"] == layers and t["heads"] == ref.n_head, f"{name}: averaged over {layers} global layers")
    w0 = ref_model.attention_weights(ref, prompt).mean(axis=(0, 1))  # [T]
    top0 = t["tokens"][0]
    err = max(abs(m - w0[bk]) for bk, m in top0)
    check(err < TOL, f"{name}: the first token's most-read positions carry the reference's weights (max err {err:.2e})")
    check(top0[0][0] == int(np.argmax(w0)), f"{name}: and its most-read position is the reference's ({top0[0][0]})")
    t1 = trace_of(b1)
    mass = np.array(t1["mass"][:len(prompt)])
    err = float(np.abs(mass - w0).max())
    check(err < TOL, f"{name}: every position's weight against numpy's (max err {err:.2e}, tolerance {TOL})")
    check(abs(sum(t1["mass"]) - 1) < 2e-3, f"{name}: a dense row's mass sums to 1 ({sum(t1['mass']):.4f})")
    t2 = g["details"]["attention"]["trace"]
    gen = [g["details"]["tokens"][0]["id"]]
    w1 = ref_model.attention_weights(ref, prompt + gen).mean(axis=(0, 1))
    err = max(abs(m - w1[bk]) for bk, m in t2["tokens"][1])
    check(err < TOL, f"{name}: a decode row's most-read positions carry the reference's weights (max err {err:.2e})")
    check(t2["tokens"][1][0][0] == int(np.argmax(w1)), f"{name}: and its most-read position is the reference's")


def sparse_and_routes():
    path = os.path.join(BUILD, "tiny", "tiny-gemma3.gguf")
    data = tempfile.mkdtemp(prefix="kvseek-trace-")
    cfg = data + ".json"
    with open(cfg, "w") as f:
        json.dump({"contexts": {"sink": 8, "tail": 32, "obs_tokens": 40, "fine_frac": 0.1}}, f)
    rng = np.random.default_rng(3)
    prompt = [2] + [int(x) for x in rng.integers(3, 500, 400)]
    with Server(BUILD, path, "-c", cfg, "--data-dir", data, "--parallel", "2", "--ctx-size", "1024") as s:
        W, S = 16, 4
        st, _, b = s.request("POST", "/v1/completions", {
            "prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True,
            "attention": {"selector": "window", "window": W, "sink": S, "trace": 1024}})
        t = trace_of(b)
        if check(st == 200 and t is not None, f"window selector with a trace ({st})"):
            well_formed(t, 6, 1024, "window")
            n = len(prompt)
            far = [(k, bk) for k, r in enumerate(t["tokens"][1:], 1) for bk, _ in r
                   if S <= bk < n - 2 * W - 64]
            check(not far, f"window: decode rows read only sinks and the recent window (outside: {far[:4]})")
            mid = sum(t["mass"][S:n - 2 * W - 64])
            check(mid > 0, f"window: the first token (a dense prefill row) did read the middle ({mid:.4f})")

        # off: no trace; bad values: 400 naming the field
        st, _, b = s.request("POST", "/v1/completions", {"prompt": prompt[:50], "max_tokens": 2})
        check(st == 200 and trace_of(b) is None, "no trace unless asked for")
        for bad in ("yes", -1, 1025, 2.5):
            st, _, b = s.request("POST", "/v1/completions", {"prompt": prompt[:50], "max_tokens": 2,
                                                             "attention": {"trace": bad}})
            check(st == 400 and b["error"]["param"] == "attention.trace", f"trace {bad!r}: 400 attention.trace")
        st, _, b = s.request("POST", "/v1/completions", {"prompt": prompt[:50], "max_tokens": 2,
                                                         "attention": {"trace": True, "selektor": "x"}})
        check(st == 400 and "selektor" in b["error"]["param"], f"other keys still checked beside trace ({b})")

        # TGI, and a bucket count: buckets cover context + prompt + max_tokens
        st, _, b = s.request("POST", "/generate", {"inputs": "hello there, how are you",
                                                   "parameters": {"max_new_tokens": 5, "details": True,
                                                                  "attention": {"trace": 8}}})
        t = (b.get("details") or {}).get("attention", {}).get("trace")
        if check(st == 200 and t is not None, f"TGI /generate: details.attention.trace ({st})"):
            well_formed(t, b["details"]["generated_tokens"], 8, "TGI")
            check(t["bucket_tokens"] * t["n_buckets"] >= t["prompt_tokens"] + 5, "buckets cover prompt + max_new_tokens")

        # chat, streamed: the final chunk's attention carries it
        last = None
        for ev in s.stream("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                                    "stream": True, "attention": {"trace": True}}):
            if isinstance(ev, dict) and ev.get("attention"):
                last = ev
        t = trace_of(last or {})
        check(t is not None and t["n_buckets"] <= 128 and len(t["tokens"]) >= 1,
              "streamed chat: the finishing chunk's attention.trace")

        # on a registered context: positions [0, context_tokens) are the context
        st, _, b = s.request("POST", "/v1/contexts", {"tokens": prompt[:300]})
        cid = b.get("id", "")
        deadline = time.time() + 120
        while time.time() < deadline:
            st, _, c = s.request("GET", "/v1/contexts/" + cid)
            if st != 200 or c["status"] != "building":
                break
            time.sleep(0.05)
        st, _, b = s.request("POST", "/v1/contexts/%s/completions" % cid, {
            "prompt": prompt[300:310], "max_tokens": 4, "temperature": 0, "ignore_eos": True,
            "attention": {"selector": "centroids", "trace": 64}})
        t = trace_of(b)
        if check(st == 200 and t is not None, f"a question on a context with a trace ({st})"):
            check(t["context_tokens"] == 300 and t["prompt_tokens"] == 10, f"context_tokens 300, prompt 10 ({t['context_tokens']})")
            inside = sum(t["mass"][:300 // t["bucket_tokens"]])
            check(inside > 0.1, f"the answer read the context ({inside:.3f} of its mass)")
            check(abs(sum(t["mass"]) - 1) < 5e-3, f"centroids rows sum to 1 ({sum(t['mass']):.4f})")


for m in ("tiny-gemma3-f32.gguf", "tiny-qwen2-f32.gguf"):
    dense_against_reference(m)
sparse_and_routes()
print("%s: %d failure(s)" % (os.path.basename(__file__), failures))
sys.exit(1 if failures else 0)
