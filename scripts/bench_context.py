"""Registered contexts on the default model, measured through the HTTP server: build cost
(prefill vs clustering + calibration), time to first token of a question on the context vs the
whole text sent as a prompt, passkey accuracy of dense / window / centroids on the context,
keys read and attention-mass recall, and the server's RSS while 8 requests share the context.
Prints one JSON line per measurement.

Usage: python3 scripts/bench_context.py [--model M] [--length 16384] [--depth 0.5] [--repeat 3]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Server  # noqa: E402
from needle import build_prompt  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ttft(s, body):
    """Seconds to the first streamed text, and the whole text."""
    t0 = time.time()
    first, text = None, ""
    for ev in s.stream("/v1/completions", dict(body, stream=True), timeout=3600):
        if isinstance(ev, dict) and ev.get("choices"):
            t = ev["choices"][0].get("text") or ""
            if t and first is None:
                first = time.time() - t0
            text += t
    return first, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--build", default="build")
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--depth", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.03)
    a = ap.parse_args()
    rng = random.Random(7)
    prompt, answer = build_prompt(a.length, a.depth, 1, rng)
    cut = prompt.rindex("\nWhat is the pass key?")
    hay, question = prompt[:cut], prompt[cut:]
    data = tempfile.mkdtemp(prefix="kvseek-bench-ctx-")
    out = lambda d: print(json.dumps(d), flush=True)  # noqa: E731
    try:
        with Server(a.build, a.model, "--data-dir", data, "--ctx-size", str(a.length * 5 // 4 + 1024), "--parallel", "8",
                    "--context-max-tokens", str(a.length * 5 // 4 + 1024)) as s:
            rss0 = rss_kib(s.proc.pid)
            t0 = time.time()
            st, _, b = s.request("POST", "/v1/contexts", {"text": hay})
            if st != 202:
                raise SystemExit(f"register: {st} {b}")
            cid = b["id"]
            while True:
                st, _, b = s.request("GET", "/v1/contexts/" + cid)
                if b["status"] != "building":
                    break
                time.sleep(0.5)
            build = b.get("build", {})
            out({"what": "build", "tokens": b["tokens"], "status": b["status"], "wall_s": round(time.time() - t0, 2),
                 "prefill_s": round(build.get("prefill_s", 0), 2), "cluster_s": round(build.get("cluster_s", 0), 3),
                 "cluster_share_of_prefill": round(build.get("cluster_s", 0) / max(1e-9, build.get("prefill_s", 1)), 4),
                 "fine_centroids": build.get("fine_centroids"), "coarse_centroids": build.get("coarse_centroids"),
                 "file_mib": round(build.get("file_bytes", 0) / 2 ** 20, 1)})
            rss_ready = rss_kib(s.proc.pid)
            q = {"prompt": question, "max_tokens": 8, "temperature": 0}
            # time to first token: the question on the context vs the whole text as a prompt
            on_ctx, whole = [], []
            for _ in range(a.repeat):
                f, text = ttft(s, dict(q, context=cid, attention={"selector": "centroids", "target": a.target}))
                on_ctx.append(f)
            f, whole_text = ttft(s, dict(q, prompt=hay + question, attention="dense"))
            whole.append(f)
            out({"what": "ttft", "context_tokens": b["tokens"], "on_context_s": round(statistics.median(on_ctx), 4),
                 "whole_prompt_s": round(whole[0], 2), "ratio": round(whole[0] / statistics.median(on_ctx), 1),
                 "whole_prompt_correct": answer in whole_text})
            # accuracy, keys read and recall per selector on the context
            for sel in ["dense", "window", {"selector": "centroids", "target": a.target}]:
                att = sel if isinstance(sel, dict) else {"selector": sel}
                st, _, r = s.request("POST", "/v1/completions",
                                     dict(q, context=cid, attention=dict(att, measure_recall=True)), timeout=3600)
                at = r.get("attention", {})
                out({"what": "answer", "selector": att["selector"], "correct": answer in r["choices"][0]["text"],
                     "text": r["choices"][0]["text"].strip()[:24], "keys_read_fraction": round(at.get("keys_read_fraction", 1.0), 4),
                     "mass_recall": round(at.get("mass_recall", 1.0), 4), "search_ms": round(at.get("search_ms", 0), 2),
                     "attn_ms": round(at.get("attn_ms", 0), 2), "clusters_scored": at.get("keys_scanned", 0)})
            # 8 concurrent requests sharing the context: RSS while they run
            peak, stop = [rss_ready], threading.Event()

            def sample():
                while not stop.is_set():
                    peak.append(rss_kib(s.proc.pid))
                    time.sleep(0.02)
            sampler = threading.Thread(target=sample)
            sampler.start()
            body = dict(q, max_tokens=32, ignore_eos=True, context=cid,
                        attention={"selector": "centroids", "target": a.target})
            ts = [threading.Thread(target=lambda: s.request("POST", "/v1/completions", body, timeout=3600))
                  for _ in range(8)]
            [t.start() for t in ts]
            [t.join() for t in ts]
            stop.set()
            sampler.join()
            out({"what": "concurrency", "requests": 8, "rss_start_mib": round(rss0 / 1024, 1),
                 "rss_context_ready_mib": round(rss_ready / 1024, 1), "rss_peak_8_requests_mib": round(max(peak) / 1024, 1),
                 "per_request_mib": round((max(peak) - rss_ready) / 1024 / 8, 2),
                 "context_file_mib": round(build.get("file_bytes", 0) / 2 ** 20, 1)})
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
