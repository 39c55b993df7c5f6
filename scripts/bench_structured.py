#!/usr/bin/env python3
"""Decode speed with and without a JSON-schema constraint: the mean time between streamed tokens
(after the first) on /generate_stream, the same prompts alternating constrained and free runs in
one server, so the ratio is from one run. Prints JSON lines; the last is the summary.

    python3 scripts/bench_structured.py [--model models/qwen2.5-coder-0.5b-instruct.gguf] [--rounds 5]
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from kvserver import Server  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 60},
    "category": {"enum": ["place", "animal", "object", "idea", "food"]},
    "rating": {"type": "integer", "minimum": 1, "maximum": 10},
    "facts": {"type": "array", "items": {"type": "string", "maxLength": 200}, "minItems": 3, "maxItems": 8},
    "origin": {"type": "object", "properties": {"country": {"type": "string"}, "year": {"type": "integer"}},
               "required": ["country", "year"]}},
    "required": ["name", "category", "rating", "facts", "origin"]}
PROMPTS = ["Tell me about Paris as JSON.", "Describe a cat as JSON.", "Describe the planet Mars as JSON.",
           "Describe a violin as JSON.", "Describe coffee as JSON."]


def itl(s, prompt, grammar, n):
    body = {"inputs": f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
            "parameters": {"max_new_tokens": n, "do_sample": True, "temperature": 0.7, "seed": 1}}
    if grammar:
        body["parameters"]["grammar"] = {"type": "json", "value": SCHEMA}
    else:
        body["parameters"]["ignore_eos"] = True
    times = []
    for _ in s.stream("/generate_stream", body):
        times.append(time.perf_counter())
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    return sum(gaps) / len(gaps) if gaps else float("nan"), len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/qwen2.5-coder-0.5b-instruct.gguf"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    free, cons = [], []
    with Server(a.build, a.model, "--parallel", "1", "--ctx-size", "4096", "--prefix-cache", "off") as s:
        itl(s, PROMPTS[0], False, 8)  # warm up
        for r in range(a.rounds):
            for p in PROMPTS:
                f, nf = itl(s, p, False, a.tokens)
                c, nc = itl(s, p, True, a.tokens)
                free.append(f)
                cons.append(c)
                print(json.dumps({"prompt": p, "round": r, "free_ms": round(f * 1e3, 2),
                                  "schema_ms": round(c * 1e3, 2), "schema_tokens": nc}), flush=True)
    mf, mc = sum(free) / len(free), sum(cons) / len(cons)
    print(json.dumps({"bench": "structured_decode", "model": os.path.basename(a.model), "commit": commit,
                      "date": time.strftime("%Y-%m-%d"), "free_ms_per_token": round(mf * 1e3, 2),
                      "schema_ms_per_token": round(mc * 1e3, 2), "ratio": round(mc / mf, 3),
                      "samples": len(free)}))


if __name__ == "__main__":
    main()
