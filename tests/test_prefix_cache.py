"""The automatic prefix cache and the memory budget, through the HTTP API on the tiny models:

- a repeated prompt starts from the cache (cached_tokens = prompt - 2) and its greedy tokens and
  their log-probabilities are exactly those of a cold run (cache_prompt: false), for every
  selector; a conversation's next turn reuses the previous turn's prompt and answers as a cold
  run of the whole history does; cache_prompt: false neither reads nor writes the cache;
- /metrics counts hits, hit tokens, misses and the bytes by kind;
- more long concurrent requests than the budget holds: every one completes (200), they wait for
  memory instead of failing, the measured KV bytes stay within the budget and the process's RSS
  within the budget plus a stated margin; a request that could never fit gets a 400 naming the
  budget; the server keeps serving.

Run as: python3 tests/test_prefix_cache.py BUILD_DIR MODEL_PATH (tiny models only)
"""
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Server  # noqa: E402

BUILD = sys.argv[1]
GEMMA = os.path.join(BUILD, "tiny", "tiny-gemma3-f32.gguf")
QWEN = os.path.join(BUILD, "tiny", "tiny-qwen2-f32.gguf")
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
    return cond


V = 512


def toks(seed, n):
    return [(i * 37 + seed * 101 + 11) % V for i in range(n)]


def complete(s, prompt, **extra):
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "logprobs": 2, **extra}
    st, _, b = s.request("POST", "/v1/completions", body, timeout=600)
    if st != 200:
        return st, None, None, b
    c = b["choices"][0]
    lp = c["logprobs"] or {}
    return st, (c["text"], lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")), \
        b["usage"]["prompt_tokens_details"]["cached_tokens"], b


def metrics(s):
    st, _, b = s.request("GET", "/metrics")
    out = {}
    for line in (b if isinstance(b, str) else "").splitlines():
        m = re.match(r'^(kvseek_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


SELECTORS = ["dense", "window", "oracle", "retrieval", "centroids", "quest", "sparq"]

# small static set so that sparse selectors choose among most of a 300-token prompt
with Server(BUILD, GEMMA, "--parallel", "2", "--ctx-size", "1024", "--sink", "4", "--window", "16") as s:
    P = toks(1, 300)
    for sel in SELECTORS:
        st0, cold, c0, _ = complete(s, P, attention=sel, cache_prompt=False)
        st1, first, c1, _ = complete(s, P, attention=sel)
        st2, hit, c2, _ = complete(s, P, attention=sel)
        check(st0 == st1 == st2 == 200 and c0 == 0 and c2 == 298,
              f"{sel}: the repeat starts from the cache (cached_tokens {c0}, {c1}, {c2})")
        check(cold == first == hit, f"{sel}: greedy tokens and log-probabilities identical cold, first, hit")
    # a conversation: the next turn sends the previous prompt, the answer and a new question
    Q = toks(7, 40)
    st, a1, c, _ = complete(s, P + Q, attention="dense")
    answer = [t for t in toks(3, 8)]  # stands for the answer's ids as the client re-sends them
    turn2 = P + Q + answer + toks(9, 30)
    st_c, cold2, _, _ = complete(s, turn2, attention="dense", cache_prompt=False)
    st_h, hot2, c_h, _ = complete(s, turn2, attention="dense")
    check(st_c == st_h == 200 and c_h == len(P + Q) - 2,
          f"next turn reuses the previous turn's prompt less its last two tokens ({c_h} of {len(turn2)})")
    check(cold2 == hot2, "next turn: the same tokens and log-probabilities as a cold run of the whole history")
    # opted out: nothing read, nothing written
    R = toks(11, 200)
    complete(s, R, cache_prompt=False)
    st, _, c, _ = complete(s, R, cache_prompt=False)
    check(c == 0, f"cache_prompt false neither reads nor writes the cache (cached_tokens {c})")
    st, _, c, _ = complete(s, R)
    check(c == 0, f"... so the first cached request after them finds nothing ({c})")
    # TGI's details carry the count too
    st, _, b = s.request("POST", "/generate", {"inputs": "a b c", "parameters": {"max_new_tokens": 2, "details": True}})
    check(st == 200 and b["details"].get("cached_tokens") == 0, f"TGI details carry cached_tokens ({st})")
    m = metrics(s)
    check(m.get("kvseek_prefix_cache_hits_total", 0) >= 8 and m.get("kvseek_prefix_cache_hit_tokens_total", 0) >= 8 * 298
          and m.get("kvseek_prefix_cache_entries", 0) >= 1 and m.get('kvseek_kv_bytes{kind="cached"}', 0) > 0,
          "metrics: hits, hit tokens, entries, cached bytes")

# the memory budget: tiny-qwen2 holds 3 KiB of KV per token (3 layers, 2 KV heads of 64, f32)
BUDGET_GB = 0.012  # ~12.9 MB: two requests of ~1.8K tokens at once, not three
with Server(BUILD, QWEN, "--parallel", "6", "--ctx-size", "2048", "--kv-cache-gb", str(BUDGET_GB),
            "--queue-size", "32") as s:
    pid = s.proc.pid

    def rss():
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024

    base = rss()
    results, peak = [], {"active": 0, "bytes": 0, "waiting": 0, "rss": 0}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            m = metrics(s)
            held = sum(v for k, v in m.items() if k.startswith("kvseek_kv_bytes{"))
            peak["active"] = max(peak["active"], m.get("kvseek_active_sequences", 0))
            peak["bytes"] = max(peak["bytes"], held)
            peak["waiting"] = max(peak["waiting"], m.get("kvseek_waiting_for_memory", 0))
            peak["rss"] = max(peak["rss"], rss())
            time.sleep(0.005)

    def client(i):
        st, out, c, b = complete(s, toks(20 + i, 1700), max_tokens=96, logprobs=None)
        results.append((st, b if st != 200 else None))

    pt = threading.Thread(target=poll)
    pt.start()
    th = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    stop.set()
    pt.join()
    budget = BUDGET_GB * (1 << 30)
    check(len(results) == 8 and all(st == 200 for st, _ in results),
          f"8 concurrent 1.7K-token requests over a budget for 2: all complete ({[st for st, _ in results]})")
    check(peak["waiting"] == 1 and 1 <= peak["active"] <= 3,
          f"they waited for memory (at most {peak['active']:.0f} of 6 sequences ran at once)")
    check(peak["bytes"] <= budget, f"KV bytes held stayed within the budget ({peak['bytes'] / 2**20:.1f} MiB "
          f"of {budget / 2**20:.1f})")
    MARGIN = 64 << 20  # allocator slack, HTTP buffers, thread stacks
    check(peak["rss"] - base <= budget + MARGIN,
          f"RSS grew by {(peak['rss'] - base) / 2**20:.1f} MiB: within the budget plus {MARGIN >> 20} MiB")
    st, _, c, b = complete(s, toks(99, 100))
    check(st == 200, "the server keeps serving")

with Server(BUILD, QWEN, "--parallel", "2", "--ctx-size", "2048", "--kv-cache-gb", "0.002") as s:
    st, _, _, b = complete(s, toks(5, 1500), max_tokens=16)
    msg = (b or {}).get("error", {}).get("message", "") if isinstance(b, dict) else ""
    check(st == 400 and "memory budget" in msg and "kv_cache_gb" in msg,
          f"a request that could never fit the budget: 400 naming it ({st} {msg})")
    st, _, _, _ = complete(s, toks(6, 100), max_tokens=4)
    check(st == 200, "a request that fits is served after it")

# the disk tier: prompts evicted from memory spill to --prefix-cache-dir, come back on a hit,
# and survive a restart; a corrupted file or a write cut short is removed, never half-read
import glob  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

disk = tempfile.mkdtemp(prefix="kvseek-pfx-")
dargs = ("--parallel", "1", "--ctx-size", "2048", "--kv-cache-gb", "0.007", "--prefix-cache-dir", disk)
A, B = toks(40, 1200), toks(41, 1200)
try:
    with Server(BUILD, QWEN, *dargs) as s:
        st, cold_a, _, _ = complete(s, A, cache_prompt=False)
        complete(s, A)                      # cached in memory
        complete(s, B, max_tokens=400)      # needs the room: A spills to disk
        m = metrics(s)
        check(m.get("kvseek_prefix_cache_spills_total", 0) >= 1 and m.get("kvseek_prefix_cache_disk_entries", 0) >= 1
              and len(glob.glob(disk + "/pfx_*/context.kvctx")) >= 1,
              f"an evicted prompt is written to the disk tier ({m.get('kvseek_prefix_cache_spills_total')} spills)")
        st, hot_a, c, _ = complete(s, A)
        check(st == 200 and c == len(A) - 2 and hot_a == cold_a,
              f"a hit on the spilled prompt: cached_tokens {c}, the same tokens and log-probabilities")
    files = sorted(glob.glob(disk + "/pfx_*/context.kvctx"))
    with Server(BUILD, QWEN, *dargs) as s:
        m = metrics(s)
        check(m.get("kvseek_prefix_cache_disk_entries", 0) == len(files) >= 1,
              f"after a restart the spilled prompts are mapped again ({len(files)} files)")
        st, again, c, _ = complete(s, A)
        check(st == 200 and c == len(A) - 2 and again == cold_a, f"... and served: cached_tokens {c}, same answer")
    # a corrupted file and a write cut short (kill -9 before the rename) are removed with a log line
    with open(files[0], "r+b") as f:
        f.seek(os.path.getsize(files[0]) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    os.makedirs(disk + "/.tmp-pfx_0123456789abcdef-99999", exist_ok=True)
    with open(disk + "/.tmp-pfx_0123456789abcdef-99999/context.kvctx", "wb") as f:
        f.write(b"KVSKCTX1" + b"\0" * 100)
    with Server(BUILD, QWEN, *dargs) as s:
        log = s.read_log()
        check("checksum mismatch" in log and not os.path.exists(files[0]),
              "a corrupted spilled prompt is refused with a log line and removed")
        check(not glob.glob(disk + "/.tmp-*"), "a write cut short is removed at start, never read")
        st, again, c, _ = complete(s, A)
        check(st == 200 and again == cold_a, f"the server serves on, with the same answer (cached_tokens {c})")
    # a real kill -9 while prompts are being spilled: after the restart every file is whole
    with Server(BUILD, QWEN, *dargs) as s:
        for i in range(3):
            complete(s, toks(60 + i, 1200), max_tokens=2)
        def long_request():
            try:
                complete(s, toks(70, 1200), max_tokens=400)
            except OSError:
                pass  # the server is killed under it
        th = threading.Thread(target=long_request)
        th.start()
        time.sleep(0.15)
        s.proc.kill()
        th.join()
    with Server(BUILD, QWEN, *dargs) as s:
        log = s.read_log()
        n_files = len(glob.glob(disk + "/pfx_*/context.kvctx"))
        m = metrics(s)
        check(m.get("kvseek_prefix_cache_disk_entries", -1) == n_files and not glob.glob(disk + "/.tmp-*"),
              f"after kill -9: every spilled prompt left is mapped ({n_files}), nothing half-written remains")
finally:
    shutil.rmtree(disk, ignore_errors=True)

# long context by default: the default model's training context, a 20K-token prompt admitted
# (its stream opens; the client then hangs up, which cancels it before much prefill is spent)
MODEL = sys.argv[2] if len(sys.argv) > 2 else ""
if os.path.exists(MODEL):
    with Server(BUILD, MODEL) as s:
        st, _, b = s.request("GET", "/v1/models")
        meta = b["data"][0]["meta"] if st == 200 else {}
        check(meta.get("n_ctx") == meta.get("n_ctx_train") and meta.get("n_ctx", 0) >= 20480,
              f"default ctx_size is the model's training context ({meta.get('n_ctx')} of {meta.get('n_ctx_train')})")
        c = s.conn(timeout=30)
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": [100 + i % 1000 for i in range(20000)],
                                                              "max_tokens": 4, "stream": True}).encode(),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        check(r.status == 200, f"a 20K-token prompt is admitted with the default configuration ({r.status})")
        c.close()
        st, _, _ = s.request("GET", "/health")
        check(st == 200, "the server serves on after the client hung up")
else:
    print("skipped: the default model is not present (" + MODEL + ")")

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
