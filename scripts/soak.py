"""Soak test: N concurrent clients hit a kvseek server for a set time with a mix of requests
(streaming and not, TGI and OpenAI, some on a registered context, some disconnecting mid-stream),
then checks: no 5xx but the overload answers (429/503), no hang (every request answered within
--bound seconds), RSS flat (after a warm-up of 30% of the run, the last third of the samples
within --rss-slack of the first third),
and the server's request counters equal to the requests sent. Prints JSON lines; exit 1 on a
failed check.

Usage: python3 scripts/soak.py [--model M] [--clients 8] [--seconds 60] [--url URL | (starts a server)]
"""
import argparse
import http.client
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from kvserver import Server  # noqa: E402


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--build", default="build")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--bound", type=float, default=120, help="seconds within which every request must end")
    ap.add_argument("--rss-slack", type=float, default=0.05)
    ap.add_argument("--tokens", type=int, default=16)
    a = ap.parse_args()
    failures = []
    with Server(a.build, a.model, "--parallel", "8", "--ctx-size", "1024", "--queue-size", "16",
                "--data-dir", "", "--timeout", "30") as s:
        port, pid = s.port, s.proc.pid
        stop = time.time() + a.seconds
        lock = threading.Lock()
        stats = {"sent": 0, "by_status": {}, "disconnects": 0, "slowest_s": 0.0, "hung": 0, "errors": [],
                 "lat_ok": []}
        counted_routes = ['kvseek_requests_total{route="/v1/completions"', 'kvseek_requests_total{route="/generate"',
                          'kvseek_requests_total{route="/v1/chat/completions"']
        base = sum(metric(port, r) for r in counted_routes)

        def one(rng):
            kind = rng.choice(["openai", "openai_stream", "tgi", "chat_stream", "disconnect"])
            prompt = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "river", "stone"]) for _ in range(rng.randint(2, 40)))
            if kind.startswith("openai") or kind == "disconnect":
                path, body = "/v1/completions", {"prompt": prompt, "max_tokens": a.tokens, "ignore_eos": True,
                                                 "stream": kind != "openai", "temperature": 0.8, "seed": rng.randint(0, 9999)}
            elif kind == "tgi":
                path, body = "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": a.tokens}}
            else:
                path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}],
                                                      "max_tokens": a.tokens, "stream": True}
            t0 = time.time()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=a.bound)
            status = 0
            try:
                c.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
                r = c.getresponse()
                status = r.status
                if kind == "disconnect" and status == 200:
                    r.read(rng.randint(1, 300))  # a few events, then hang up mid-stream
                    c.close()
                    with lock:
                        stats["disconnects"] += 1
                else:
                    r.read()
            except Exception as e:  # noqa: BLE001
                with lock:
                    if "timed out" in repr(e):
                        stats["hung"] += 1
                    stats["errors"].append(repr(e)[:120])
            finally:
                c.close()
            dt = time.time() - t0
            with lock:
                stats["sent"] += 1
                stats["by_status"][status] = stats["by_status"].get(status, 0) + 1
                stats["slowest_s"] = max(stats["slowest_s"], dt)
                if status == 200 and kind != "disconnect":
                    stats["lat_ok"].append(dt)

        def client(i):
            rng = random.Random(i)
            while time.time() < stop:
                one(rng)

        rss = []

        def sampler():
            while time.time() < stop:
                rss.append(rss_kib(pid))
                time.sleep(0.5)
        ts = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)] + [threading.Thread(target=sampler)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        time.sleep(1.0)  # requests are counted when the server has finished with their connection
        counted = sum(metric(port, r) for r in counted_routes) - base
        alive = s.proc.poll() is None
        rss = rss[len(rss) * 3 // 10:]  # the first 30% is warm-up (allocator pools, page tables, caches)
        n = len(rss)
        first, last = rss[: max(1, n // 3)], rss[-max(1, n // 3):]
        growth = (sum(last) / len(last)) / max(1, sum(first) / len(first)) - 1 if rss else 0
        bad5xx = {k: v for k, v in stats["by_status"].items() if k >= 500 and k != 503}
        lat = sorted(stats["lat_ok"])
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None  # noqa: E731
        res = {"what": "soak", "seconds": a.seconds, "clients": a.clients, "requests": stats["sent"],
               "served_200": stats["by_status"].get(200, 0), "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99),
               "by_status": stats["by_status"], "disconnects": stats["disconnects"], "slowest_s": round(stats["slowest_s"], 2),
               "hung": stats["hung"], "counted_by_server": counted, "rss_first_third_mib": round(sum(first) / len(first) / 1024, 1) if rss else 0,
               "rss_last_third_mib": round(sum(last) / len(last) / 1024, 1) if rss else 0, "rss_growth": round(growth, 4),
               "server_alive": alive, "client_error_count": len(stats["errors"]), "client_errors": stats["errors"][:5]}
        print(json.dumps(res), flush=True)
        if bad5xx:
            failures.append(f"5xx answers: {bad5xx}")
        if stats["hung"] or stats["by_status"].get(0, 0) > stats["disconnects"]:
            failures.append(f"hung or failed requests: {stats['hung']} hung, {stats['by_status'].get(0, 0)} without status")
        if growth > a.rss_slack:
            failures.append(f"RSS grew {100 * growth:.1f}%")
        if counted != stats["sent"]:
            failures.append(f"the server counted {counted} requests, {stats['sent']} were sent")
        if not alive:
            failures.append("the server died")
        rc = s.stop()
        if rc != 0:
            failures.append(f"SIGTERM exit status {rc}")
    print(json.dumps({"what": "verdict", "ok": not failures, "failures": failures}), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
