"""Registered contexts through the HTTP API on the tiny models: register (202, building ->
ready with progress), list, answer on a context (the same greedy text as the whole token
sequence as one prompt, dense; and through the centroids keeping every cluster), the errors
(unknown 404, still building 409, bad bodies 400, ids that are not ids), delete, concurrent
requests on one context, a restart that serves the same contexts with the same answers, a
kill -9 during a build (nothing half-written visible after restart), and a corrupted file in the
store (refused with a warning, the server serves the rest).

Run as: python3 tests/test_contexts_server.py BUILD_DIR MODEL_PATH (tiny models only)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Server  # noqa: E402

BUILD = sys.argv[1]
GEMMA = os.path.join(BUILD, "tiny", "tiny-gemma3-f32.gguf")
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
    return cond


def wait_ready(s, cid, timeout=120):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        st, _, b = s.request("GET", "/v1/contexts/" + cid)
        if st != 200:
            return st, b, seen
        seen.append(b["progress"])
        if b["status"] != "building":
            return st, b, seen
        time.sleep(0.05)
    return 0, {}, seen


V = 512  # tiny models' vocabulary is larger; ids below this are valid
A = [(i * 37 + 11) % V for i in range(300)]   # the context
B = [(i * 17 + 3) % V for i in range(10)]     # the question
data = tempfile.mkdtemp(prefix="kvseek-ctx-")
cfg = data + ".json"
with open(cfg, "w") as f:  # small sink and tail so that most of a 300-token context is clustered
    json.dump({"contexts": {"sink": 8, "tail": 32, "obs_tokens": 40, "fine_frac": 0.1}}, f)
args = ("-c", cfg, "--parallel", "4", "--ctx-size", "512", "--data-dir", data, "--context-max-tokens", "16384")


def complete(s, prompt, **extra):
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True, **extra}
    st, _, b = s.request("POST", "/v1/completions", body)
    return st, b


try:
    with Server(BUILD, GEMMA, *args) as s:
        st, _, b = s.request("POST", "/v1/contexts", {"tokens": A})
        check(st == 202 and b.get("status") == "building" and b.get("tokens") == 300 and b["id"].startswith("ctx_"),
              f"register: 202 building with an id ({st} {b})")
        cid = b.get("id", "")
        st, b, seen = wait_ready(s, cid)
        check(st == 200 and b.get("status") == "ready" and b.get("progress") == 1 and b["build"]["clustered_keys"] > 0,
              f"the build finishes: ready, progress 1, keys clustered ({b})")
        check(all(x <= y for x, y in zip(seen, seen[1:])), "progress never goes backwards")
        st, _, b = s.request("GET", "/v1/contexts")
        check(st == 200 and [c["id"] for c in b["data"]] == [cid], "listed")

        st, whole = complete(s, A + B, attention="dense")
        st2, on_ctx = complete(s, B, context=cid, attention="dense")
        check(st == 200 and st2 == 200 and on_ctx["choices"][0]["text"] == whole["choices"][0]["text"],
              "on the context == the whole sequence as one prompt (dense, greedy)")
        st3, cen = complete(s, B, context=cid, attention={"selector": "centroids", "target": 1.0})
        check(st3 == 200 and cen["choices"][0]["text"] == whole["choices"][0]["text"]
              and cen["attention"]["keys_read_fraction"] == 1.0,
              f"centroids keeping every cluster: the same text ({cen.get('attention')})")
        st4, part = complete(s, B, context=cid, attention={"selector": "centroids", "target": 0.1})
        a = part.get("attention", {}) if st4 == 200 else {}
        check(st4 == 200 and 0 < a.get("keys_read_fraction", 0) < 0.5, f"centroids at target 0.1 read a part ({a})")
        st, _, b = s.request("POST", "/generate", {"inputs": "hello", "parameters": {"context": cid, "max_new_tokens": 4}})
        check(st == 200 and isinstance(b.get("generated_text"), str), "TGI /generate on a context")

        # the same tokens again: the same context (content address), ready at once
        st, _, b = s.request("POST", "/v1/contexts", {"tokens": A})
        check(st == 200 and b["id"] == cid and b["status"] == "ready", f"registering the same tokens again: 200, same id ({st})")
        # the routable forms: the id in the URL, or in a header (for a proxy to hash on)
        body = {"prompt": B, "max_tokens": 8, "temperature": 0, "ignore_eos": True, "attention": "dense"}
        st, _, b = s.request("POST", f"/v1/contexts/{cid}/completions", body)
        check(st == 200 and b["choices"][0]["text"] == whole["choices"][0]["text"], "POST /v1/contexts/{id}/completions")
        st, _, b = s.request("POST", "/v1/completions", body, headers={"X-Kvseek-Context": cid})
        check(st == 200 and b["choices"][0]["text"] == whole["choices"][0]["text"], "X-Kvseek-Context header")
        st, _, b = s.request("POST", f"/v1/contexts/{cid}/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 3}})
        check(st == 200 and "generated_text" in b, "POST /v1/contexts/{id}/generate")
        st, _, b = s.request("POST", f"/v1/contexts/{cid}/chat/completions",
                             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        check(st == 200 and b["object"] == "chat.completion", "POST /v1/contexts/{id}/chat/completions")
        st, _, b = s.request("POST", f"/v1/contexts/{cid}/completions", dict(body, context="ctx_0123456789abcdef"))
        check(st == 400 and b["error"]["param"] == "context", "URL and body naming different contexts: 400")
        st, _, b = s.request("POST", "/v1/contexts/ctx_0123456789abcdef/completions", body)
        check(st == 404, "URL form with an unknown context: 404")

        # errors
        st, b = complete(s, B, context="ctx_0123456789abcdef")
        check(st == 404 and b["error"]["code"] == "context_not_found", "unknown context: 404")
        st, b = complete(s, B, context=7)
        check(st == 400 and b["error"]["param"] == "context", "context of a wrong type: 400")
        st, _, b = s.request("POST", "/generate", {"inputs": "x", "parameters": {"context": "nope"}})
        check(st == 404 and "error" in b, "TGI unknown context: 404 in TGI's shape")
        for body, what in [({}, "neither text nor tokens"), ({"text": 5}, "text of a wrong type"),
                           ({"text": "a", "tokens": [1]}, "both"), ({"tokens": [1, -1]}, "a negative id"),
                           ({"tokens": [1, 10 ** 9]}, "an id past the vocabulary"), ({"tokens": []}, "empty"),
                           ({"tokens": list(range(100)) * 164}, "longer than context_max_tokens")]:
            st, _, b = s.request("POST", "/v1/contexts", body)
            check(st == 400 and isinstance(b.get("error"), dict), f"register with {what}: 400")
        st, _, b = s.request("POST", "/v1/contexts", raw=b"{not json")
        check(st == 400, "register with malformed JSON: 400")
        for bad in ["../../etc/passwd", "ctx_..%2f..", "ctx_XYZ", "x" * 300]:
            st, _, b = s.request("GET", "/v1/contexts/" + bad)
            check(st == 404, f"GET /v1/contexts/{bad[:20]}: 404")
        st, _, _ = s.request("PUT", "/v1/contexts")
        check(st == 405, "PUT on the collection: 405")
        # a context still building answers 409
        st, _, b = s.request("POST", "/v1/contexts", {"tokens": A * 6})
        big = b.get("id", "")
        st, b = complete(s, B, context=big)
        check(st in (409, 200) and (st == 200 or b["error"]["code"] == "context_not_ready"),
              f"a request on a context being built: 409 context_not_ready ({st})")
        wait_ready(s, big)

        # concurrency: 8 requests on one context at once, all answer the same greedy text
        texts, errors = [], []

        def client():
            try:
                st, b = complete(s, B, context=cid, attention="dense")
                texts.append(b["choices"][0]["text"] if st == 200 else f"status {st}")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        ts = [threading.Thread(target=client) for _ in range(8)]
        [t.start() for t in ts]
        [t.join(120) for t in ts]
        check(not errors and len(texts) == 8 and set(texts) == {whole["choices"][0]["text"]},
              f"8 concurrent requests on one context agree ({set(texts)} {errors})")

        # delete
        st, _, b = s.request("DELETE", "/v1/contexts/" + big)
        check(st == 200 and b.get("deleted") is True, "delete: 200")
        check(s.request("GET", "/v1/contexts/" + big)[0] == 404 and not os.path.exists(os.path.join(data, big)),
              "deleted: 404 and gone from the store")
        check(s.request("DELETE", "/v1/contexts/" + big)[0] == 404, "delete twice: 404")
        check(s.stop() == 0, "SIGTERM: exit 0")

    # restart: the same contexts, the same answers
    with Server(BUILD, GEMMA, *args) as s:
        st, _, b = s.request("GET", "/v1/contexts/" + cid)
        check(st == 200 and b["status"] == "ready", "after a restart the context is ready")
        st, again = complete(s, B, context=cid, attention="dense")
        check(st == 200 and again["choices"][0]["text"] == whole["choices"][0]["text"], "and answers the same")
        # kill -9 during a build and while serving (a stream on the context is running):
        # nothing half-written becomes visible, the stored context survives
        streamed = []

        def streamer():
            try:
                for ev in s.stream("/v1/completions", {"prompt": B, "context": cid, "max_tokens": 400,
                                                      "ignore_eos": True, "stream": True}):
                    streamed.append(ev)
            except Exception:  # noqa: BLE001 (the server dies under it)
                pass
        th = threading.Thread(target=streamer)
        th.start()
        st, _, b = s.request("POST", "/v1/contexts", {"tokens": A * 40})
        doomed = b.get("id", "")
        deadline = time.time() + 30
        while time.time() < deadline:
            st, _, b = s.request("GET", "/v1/contexts/" + doomed)
            if b.get("progress", 0) > 0.1:
                break
            time.sleep(0.01)
        check(b.get("status") == "building", f"killed while building ({b.get('stage')}, {b.get('progress')})")
        s.kill()
        th.join(30)
        check(len(streamed) > 0, f"killed while serving a stream on the context ({len(streamed)} events received)")

    # corrupt the good context's file: refused at start with a warning, the server serves on
    shutil.copytree(os.path.join(data, cid), os.path.join(data, "ctx_00000000000000aa"))
    f = os.path.join(data, "ctx_00000000000000aa", "context.kvctx")
    raw = bytearray(open(f, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(f, "wb").write(raw)
    with Server(BUILD, GEMMA, *args) as s:
        st, _, b = s.request("GET", "/v1/contexts")
        ids = [c["id"] for c in b["data"]] if st == 200 else []
        check(cid in ids and doomed not in ids, f"after kill -9 mid-build: the good context only ({ids})")
        check(not [n for n in os.listdir(data) if n.startswith(".")], f"no temporary left in the store ({os.listdir(data)})")
        check("ctx_00000000000000aa" not in ids and "checksum" in s.read_log(),
              "a corrupted context file is refused with a warning")
        check(complete(s, B, context=cid, attention="dense")[0] == 200, "the server serves the good one")
    # a full disk while persisting (a file size limit): the build fails with a reason, the
    # contexts already stored stay, the server keeps serving
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, resource.RLIM_INFINITY))
    with Server(BUILD, GEMMA, *args, preexec_fn=small_files) as s:
        st, _, b = s.request("POST", "/v1/contexts", {"tokens": [7] * 3000})
        big = b.get("id", "")
        deadline = time.time() + 120
        while time.time() < deadline:
            st, _, b = s.request("GET", "/v1/contexts/" + big)
            if b.get("status") != "building":
                break
            time.sleep(0.05)
        check(b.get("status") == "failed" and "File too large" in b.get("error", ""),
              f"a save past the disk limit: failed with the reason ({b.get('status')}: {b.get('error')})")
        check(s.request("GET", "/health")[0] == 200 and complete(s, B, context=cid, attention="dense")[0] == 200,
              "the server keeps serving the stored context")
        check(not os.path.exists(os.path.join(data, big)) and not [n for n in os.listdir(data) if n.startswith(".")],
              "nothing of the failed build is left in the store")
    # the model file under a running server: replaced by rename, it keeps serving from its
    # mapping; truncated in place, the server says so in one line and exits 75 (no core dump)
    mcopy = os.path.join(data, "model-copy.gguf")
    shutil.copy(GEMMA, mcopy)
    with Server(BUILD, mcopy, *args) as s:
        shutil.copy(GEMMA, mcopy + ".new")
        os.replace(mcopy + ".new", mcopy)
        check(complete(s, B)[0] == 200, "model file replaced by rename: still serving")
    with Server(BUILD, mcopy, *args) as s:
        with open(mcopy, "r+b") as f:
            f.truncate(4096)
        try:
            st = complete(s, B)[0]
        except OSError:
            st = 0
        try:
            rc = s.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 75 and "was truncated" in s.read_log(),
              f"model truncated in place: a one-line fatal error and exit 75 (status {st}, rc {rc})")
finally:
    shutil.rmtree(data, ignore_errors=True)
    os.unlink(cfg)

print("all passed" if failures == 0 else f"{failures} failed")
sys.exit(1 if failures else 0)
