"""What the attention trace costs: decode tok/s with the trace off and on, and (with --base, an
earlier kvseek binary built without the trace) off against that earlier build.

One server per binary (--parallel 1) on the same model; a prompt of about --length tokens cut
from tests/data's Jargon File excerpt is sent once per (server, selector) to warm the prefix
cache, then each round streams one completion of -n tokens (greedy, ignore_eos) per
configuration, the configurations alternating within the round so drift hits them alike.
Decode tok/s = (tokens - 1) / (last token's arrival - first token's), measured at the client.
Prints one JSON line per run and one summary line per selector: medians and the ratios
off/base and on/off.

Usage: python3 scripts/bench_trace.py [--model M] [--kvseek build/kvseek] [--base OLD/kvseek]
           [--length 2048] [-n 64] [--rounds 5] [--selectors dense,sparq] [--out FILE.jsonl]
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TEXT = os.path.join(ROOT, "tests", "data", "jargon-4.4.7-excerpt.txt")


class Server:
    def __init__(self, exe, model, *args):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="kvseek-bench-", suffix=".log", delete=False)
        cfg = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        cfg.write("{}")
        cfg.close()
        self.proc = subprocess.Popen([exe, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", "-c", cfg.name,
                                      "--parallel", "1", *args], stdout=self.log, stderr=subprocess.STDOUT)
        self.port = None
        deadline = time.time() + 120
        while self.port is None and time.time() < deadline:
            with open(self.log.name) as f:
                m = re.search(r"listening on http://[^:\s]+:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                sys.exit("kvseek serve exited: " + open(self.log.name).read()[-2000:])
            else:
                time.sleep(0.1)
        if self.port is None:
            self.stop()
            sys.exit("kvseek serve did not start")

    def post(self, path, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())

    def stream_times(self, body):
        """Arrival times of the streamed tokens and the final chunk's attention object."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        c.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            sys.exit("HTTP %d: %s" % (r.status, r.read()[:300]))
        times, attn = [], None
        for line in r:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ev["choices"][0].get("text"):
                times.append(time.perf_counter())
            if ev.get("attention"):
                attn = ev["attention"]
        return times, attn

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def prompt_text(srv, length):
    text = open(TEXT, encoding="utf-8").read()
    lo, hi = 0, len(text)
    while hi - lo > 64:  # the longest prefix of about `length` tokens
        mid = (lo + hi) // 2
        _, b = srv.post("/tokenize", {"content": text[:mid]})
        lo, hi = (mid, hi) if b["count"] <= length else (lo, mid)
    return text[:lo]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--kvseek", default=os.path.join(ROOT, "build", "kvseek"))
    ap.add_argument("--base", help="an earlier kvseek binary (without the trace) to compare 'off' against")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--selectors", default="dense,sparq")
    ap.add_argument("--out")
    a = ap.parse_args()
    out = open(a.out, "a") if a.out else None

    def emit(o):
        line = json.dumps(o)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    head = {"bench": "trace", "date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu,
            "threads": os.cpu_count(), "model": os.path.basename(a.model), "command": " ".join(sys.argv)}
    servers = {"new": Server(a.kvseek, a.model)}
    if a.base:
        servers["base"] = Server(a.base, a.model)
    try:
        text = prompt_text(servers["new"], a.length)
        configs = [("base", False)] * bool(a.base) + [("new", False), ("new", True)]
        res = {}
        for sel in a.selectors.split(","):
            body = {"prompt": text, "max_tokens": a.n, "temperature": 0, "ignore_eos": True}
            for name, srv in servers.items():  # warm: the prompt into each prefix cache
                srv.stream_times({**body, "max_tokens": 2, "attention": {"selector": sel}})
            for r in range(a.rounds):
                order = configs if r % 2 == 0 else configs[::-1]
                for name, trace in order:
                    att = {"selector": sel, **({"trace": True} if trace else {})}
                    times, attn = servers[name].stream_times({**body, "attention": att})
                    tps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                    key = "%s-%s" % (name, "on" if trace else "off")
                    res.setdefault((sel, key), []).append(tps)
                    emit({**head, "selector": sel, "config": key, "round": r, "decode_tok_s": round(tps, 2),
                          "tokens": len(times), "traced": bool(attn and attn.get("trace")),
                          "load1": os.getloadavg()[0]})
            med = {k: statistics.median(v) for (s, k), v in res.items() if s == sel}
            summary = {**head, "selector": sel, "summary": True, "prompt_chars": len(text),
                       **{"median_" + k.replace("-", "_"): round(v, 2) for k, v in med.items()},
                       "on_over_off": round(med["new-on"] / med["new-off"], 3)}
            if a.base:
                summary["off_over_base"] = round(med["new-off"] / med["base-off"], 3)
            emit(summary)
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
