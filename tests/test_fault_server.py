"""Errors travel to the client: with a test-only fault hook (KVSEEK_FAULT=point:n, the nth
call of a selector's select or of a K/V append fails), the request whose sequence failed gets a
500 with its route's JSON error naming the cause, while a request decoding beside it finishes
with the text it gives alone, and the server goes on serving: the same requests afterwards
answer as on a server that never failed (the failed sequence's state is not reused).

Run as: python3 tests/test_fault_server.py BUILD_DIR MODEL_PATH
"""
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Checks, Server  # noqa: E402

BUILD = sys.argv[1]
MODEL = sys.argv[2]  # a real model, so that the texts compared are words, not byte noise
check = Checks()


PROMPT = "The history of the lighthouse keepers of the northern coast, told in their own words. " * 6
ATTN = {"selector": "oracle", "top_k": 8, "sink": 4, "window": 16}
GEN = {"inputs": PROMPT, "parameters": {"max_new_tokens": 24, "details": True, "do_sample": False,
                                        "attention": ATTN}}
DENSE = {"inputs": PROMPT + " epsilon", "parameters": {"max_new_tokens": 24, "do_sample": False}}
OAI = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "attention": ATTN}


def env(fault):
    e = dict(os.environ)
    if fault:
        e["KVSEEK_FAULT"] = fault
    return e


# what every request answers on a server that never fails
with Server(BUILD, MODEL, "--parallel", "2", env=env(None)) as s:
    st1, _, ref_gen = s.request("POST", "/generate", GEN, timeout=300)
    st2, _, ref_dense = s.request("POST", "/generate", DENSE, timeout=300)
    st3, _, ref_oai = s.request("POST", "/v1/completions", OAI, timeout=300)
    check(st1 == 200 and st2 == 200 and st3 == 200, "reference answers")

# /generate: the first select fails: TGI's error object, 500; a dense request beside it is intact
with Server(BUILD, MODEL, "--parallel", "2", env=env("select:3")) as s:
    out = {}
    t = threading.Thread(target=lambda: out.update(dense=s.request("POST", "/generate", DENSE, timeout=300)))
    t.start()
    st, _, b = s.request("POST", "/generate", GEN, timeout=300)
    t.join()
    check(st == 500 and isinstance(b, dict) and isinstance(b.get("error"), str) and "injected" in b["error"]
          and b.get("error_type"), f"/generate: a failing selector answers 500 with TGI's error ({st} {b})")
    dst, _, db = out["dense"]
    check(dst == 200 and db["generated_text"] == ref_dense["generated_text"],
          f"the request decoding beside it gives its own text ({db.get('generated_text')!r})")
    st, _, b = s.request("POST", "/generate", GEN, timeout=300)
    check(st == 200 and b["generated_text"] == ref_gen["generated_text"],
          "the same request afterwards answers as on a server that never failed")
    st, _, b = s.request("GET", "/health")
    check(st == 200, "the server is healthy after the failure")

# /v1/completions: OpenAI's error object; K/V append failures go the same way
for fault in ("select:1", "kv_append:1"):
    with Server(BUILD, MODEL, "--parallel", "2", env=env(fault)) as s:
        st, _, b = s.request("POST", "/v1/completions", OAI, timeout=300)
        e = b.get("error") if isinstance(b, dict) else None
        check(st == 500 and isinstance(e, dict) and "injected" in e.get("message", "") and "type" in e,
              f"/v1/completions with {fault}: 500 with OpenAI's error ({st} {b})")
        st, _, b = s.request("POST", "/v1/completions", OAI, timeout=300)
        check(st == 200 and b["choices"][0]["text"] == ref_oai["choices"][0]["text"],
              f"after {fault}: the next request answers as on a server that never failed")

print(f"{'FAIL' if check.failures else 'ok'}: test_fault_server ({check.failures} failed)")
sys.exit(1 if check.failures else 0)
