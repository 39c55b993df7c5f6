"""A conversation over a long document, as chat clients send it: turn 1 is a ~16K-token document
and a question; each later turn re-sends the whole history (every previous answer included) and
asks the next question. Measures the time to first token of each turn on a server with the
prefix cache (the default) and on one started with --prefix-cache off, with the same histories
(the answers of the cached run are re-sent to both), and the cached_tokens each turn reports.
Prints one JSON line per turn and server, then a summary line with the ratios.

Usage: python3 scripts/bench_chat.py [--model M] [--tokens 16384] [--turns 5] [--max-tokens 32]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from kvserver import Server  # noqa: E402

QUESTIONS = [
    "In one sentence, what is the first essay about?",
    "Name one person the author quotes.",
    "What does the author say about travel?",
    "Which essay discusses friendship, and what is its main claim?",
    "Summarise the author's view of history in one sentence.",
    "What does the author mean by self-reliance?",
    "Quote one sentence about nature.",
]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip()
    except OSError:
        return ""


def document(s, n_tokens):
    """The first n_tokens tokens (by the server's tokenizer) of the shipped public-domain text."""
    with open(os.path.join(HERE, "..", "data", "haystack", "emerson-essays.txt")) as f:
        text = f.read()
    st, _, b = s.request("POST", "/tokenize", {"content": text, "add_special": False})
    ids = b["tokens"]
    while len(ids) < n_tokens:
        ids = ids + ids
    st, _, b = s.request("POST", "/detokenize", {"tokens": ids[:n_tokens]})
    return b["content"]


def turn(s, messages, max_tokens):
    """Time to the first streamed content, the answer, and the usage of the final chunk."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.time()
    first, text, usage = None, "", {}
    for ev in s.stream("/v1/chat/completions", body, timeout=7200):
        if not isinstance(ev, dict):
            continue
        if ev.get("usage"):
            usage = ev["usage"]
        for c in ev.get("choices") or []:
            t = (c.get("delta") or {}).get("content") or ""
            if t and first is None:
                first = time.time() - t0
            text += t
    if first is None:
        first = time.time() - t0
    return first, text, usage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--build", default="build")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    meta = {"model": os.path.basename(a.model), "cpu": cpu_name(), "cores": os.cpu_count(),
            "date": datetime.date.today().isoformat(), "commit": commit(),
            "command": "python3 scripts/bench_chat.py " + " ".join(sys.argv[1:])}
    ctx = str(a.tokens + a.turns * (a.max_tokens + 64) + 1024)
    answers, rows = [], {}
    for mode in ("on", "off"):
        with Server(a.build, a.model, "--ctx-size", ctx, "--parallel", "1", "--prefix-cache", mode) as s:
            doc = document(s, a.tokens)
            messages = [{"role": "user", "content": doc + "\n\n" + QUESTIONS[0]}]
            for t in range(a.turns):
                if t > 0:
                    messages.append({"role": "assistant", "content": answers[t - 1]})
                    messages.append({"role": "user", "content": QUESTIONS[t % len(QUESTIONS)]})
                ttft, text, usage = turn(s, messages, a.max_tokens)
                if mode == "on":
                    answers.append(text)
                details = usage.get("prompt_tokens_details") or {}
                row = {"bench": "chat", "prefix_cache": mode, "turn": t + 1,
                       "prompt_tokens": usage.get("prompt_tokens"), "cached_tokens": details.get("cached_tokens"),
                       "ttft_s": round(ttft, 3), **meta}
                rows[(mode, t)] = row
                print(json.dumps(row), flush=True)
    later = range(1, a.turns)
    on_later = sum(rows[("on", t)]["ttft_s"] for t in later) / max(1, len(later))
    off_later = sum(rows[("off", t)]["ttft_s"] for t in later) / max(1, len(later))
    summary = {"bench": "chat-summary", "turn1_ttft_s": rows[("on", 0)]["ttft_s"],
               "later_ttft_s_cache_on": round(on_later, 3), "later_ttft_s_cache_off": round(off_later, 3),
               "turn1_over_later": round(rows[("on", 0)]["ttft_s"] / on_later, 1) if on_later else None,
               "off_over_on_later": round(off_later / on_later, 1) if on_later else None,
               "min_ratio_later": round(min(min(rows[("on", 0)]["ttft_s"], rows[("off", t)]["ttft_s"]) /
                                            rows[("on", t)]["ttft_s"] for t in later), 1) if a.turns > 1 else None,
               **meta}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
