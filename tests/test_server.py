"""The HTTP server as its users meet it, on the tiny random models (fast, gibberish text):
every endpoint (TGI /generate and /generate_stream, OpenAI /v1/completions and
/v1/chat/completions with and without streaming, /v1/models, /health, /metrics, /tokenize,
/detokenize), every error case of the issue with its status and body shape, client disconnects
that cancel, a full queue (429 + Retry-After), concurrent streams that give the same text as
the same seeds alone, metrics that agree with the requests sent, chat templates (inferred,
from metadata, unknown, chosen), 503 while loading, and SIGTERM shutdown (exit 0).

Run as: python3 tests/test_server.py BUILD_DIR MODEL_PATH (MODEL_PATH unused: tiny models only)
"""
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Server, sse_events  # noqa: E402

BUILD = sys.argv[1]
TINY = os.path.join(BUILD, "tiny")
GEMMA = os.path.join(TINY, "tiny-gemma3.gguf")
QWEN = os.path.join(TINY, "tiny-qwen2.gguf")
LLAMA = os.path.join(TINY, "tiny-llama.gguf")
KV = os.path.join(BUILD, "kvseek")
failures = 0
T0 = time.time()


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1
    return cond


def openai_error(status, body, want_status, param=None, code=None):
    e = body.get("error") if isinstance(body, dict) else None
    ok = (status == want_status and isinstance(e, dict) and isinstance(e.get("message"), str)
          and e["message"] and isinstance(e.get("type"), str) and "param" in e and "code" in e)
    if ok and param is not None:
        ok = e["param"] == param
    if ok and code is not None:
        ok = e["code"] == code
    return ok


def tgi_error(status, body, want_status, error_type):
    return (status == want_status and isinstance(body, dict) and isinstance(body.get("error"), str)
            and body.get("error_type") == error_type)


def collect(events):
    return [e for e in events]


def ascii_window(text, n=3, start=3):
    """A stop string: the first n-character window of ASCII letters at or after start."""
    for i in range(start, len(text) - n):
        w = text[i:i + n]
        if all(c.isascii() and c.isalpha() for c in w):
            return w
    return None


# ----------------------------------------------------------------------------------------------
# A: the endpoints and the errors, on tiny-gemma3 (no chat template in the file: inferred)
# ----------------------------------------------------------------------------------------------
with Server(BUILD, GEMMA, "--parallel", "4", "--ctx-size", "512", "--max-body", "65536") as s:
    st, h, b = s.request("GET", "/health")
    check(st == 200 and b == {"status": "ok"}, "/health 200 {status: ok} when ready")
    st, h, b = s.request("HEAD", "/health")
    check(st == 200, "HEAD /health 200")
    st, h, b = s.request("GET", "/v1/models")
    check(st == 200 and b["object"] == "list" and b["data"][0]["id"] == "tiny-gemma3.gguf"
          and b["data"][0]["object"] == "model" and b["data"][0]["meta"]["n_ctx"] == 512
          and b["data"][0]["meta"]["chat_template"] == "gemma", "/v1/models lists the model, ctx and template")
    log = s.read_log()
    check("kvseek: config {" in log and '"parallel":4' in log, "effective configuration logged at start")
    check("no tokenizer.chat_template" in log and "gemma" in log, "inferred chat template is logged, not silent")

    # tokenize / detokenize
    st, _, b = s.request("POST", "/tokenize", {"content": "Hello world"})
    check(st == 200 and b["tokens"][0] == 2 and b["count"] == len(b["tokens"]) and b["max_model_len"] == 512,
          "/tokenize adds BOS, count, max_model_len")
    ids = b["tokens"]
    st, _, b2 = s.request("POST", "/tokenize", {"prompt": "Hello world", "add_special": False, "with_pieces": True})
    check(st == 200 and [t["id"] for t in b2["tokens"]] == ids[1:]
          and "".join(t["piece"] for t in b2["tokens"]) == "Hello world", "/tokenize with_pieces, no BOS")
    st, _, b = s.request("POST", "/detokenize", {"tokens": ids[1:]})
    check(st == 200 and b["content"] == "Hello world" and b["prompt"] == "Hello world", "/detokenize round trip")
    st, _, b = s.request("POST", "/detokenize", {"tokens": [1, 99999]})
    check(openai_error(st, b, 400, param="tokens"), "/detokenize out-of-range id: 400")
    st, _, b = s.request("POST", "/tokenize", {"content": 5})
    check(openai_error(st, b, 400), "/tokenize non-string content: 400")

    # TGI /generate
    P = "The quick brown fox"
    body = {"inputs": P, "parameters": {"max_new_tokens": 12, "details": True, "ignore_eos": True}}
    st, _, g1 = s.request("POST", "/generate", body)
    d = g1.get("details", {}) if st == 200 else {}
    check(st == 200 and isinstance(g1["generated_text"], str) and d["finish_reason"] == "length"
          and d["generated_tokens"] == 12 and len(d["tokens"]) == 12 and d["seed"] is None,
          "/generate greedy: generated_text, details (finish_reason, generated_tokens, seed)")
    check(all(set(t) >= {"id", "text", "logprob", "special"} and t["logprob"] <= 0 for t in d.get("tokens", [])),
          "/generate details.tokens carry id, text, logprob <= 0, special")
    st, _, g2 = s.request("POST", "/generate", body)
    check(st == 200 and g2["generated_text"] == g1["generated_text"], "/generate greedy is repeatable")
    st, _, g3 = s.request("POST", "/generate", {"inputs": P, "parameters": {"max_new_tokens": 12, "ignore_eos": True,
                                                                             "return_full_text": True}})
    check(st == 200 and g3["generated_text"] == P + g1["generated_text"] and "tokens" not in g3["details"],
          "/generate return_full_text; no token list without details")
    st, _, g4 = s.request("POST", "/generate", {"prompt": P, "max_tokens": 12, "ignore_eos": True})
    check(st == 200 and g4["generated_text"] == g1["generated_text"], "/generate short form {prompt, max_tokens}")
    st, _, g5 = s.request("POST", "/generate", {"inputs": P, "parameters": {"max_new_tokens": 12, "do_sample": True,
                                                                             "seed": 7, "ignore_eos": True}})
    st2, _, g6 = s.request("POST", "/generate", {"inputs": P, "parameters": {"max_new_tokens": 12, "temperature": 0.9,
                                                                              "top_k": 20, "top_p": 0.9, "seed": 7,
                                                                              "ignore_eos": True}})
    st3, _, g7 = s.request("POST", "/generate", {"inputs": P, "parameters": {"max_new_tokens": 12, "temperature": 0.9,
                                                                              "top_k": 20, "top_p": 0.9, "seed": 7,
                                                                              "ignore_eos": True}})
    check(st == 200 and g5["details"]["seed"] == 7 and st2 == 200 and g6["generated_text"] == g7["generated_text"],
          "/generate sampling: seed reported, same seed same text")
    # stop sequences: TGI keeps the stop string
    long = s.request("POST", "/generate", {"inputs": P, "parameters": {"max_new_tokens": 40, "ignore_eos": True}})[2]
    full = long["generated_text"]
    stop = ascii_window(full)
    if check(stop is not None, "greedy text has an ASCII window to use as a stop string"):
        st, _, g = s.request("POST", "/generate", {"inputs": P, "parameters": {"max_new_tokens": 40, "stop": [stop],
                                                                                "ignore_eos": True}})
        cut = full[:full.find(stop) + len(stop)]
        check(st == 200 and g["details"]["finish_reason"] == "stop_sequence" and g["generated_text"] == cut,
              "/generate stop: stop_sequence, text up to and including the stop string")
    # /generate_stream
    ev = collect(s.stream("/generate_stream", {"inputs": P, "parameters": {"max_new_tokens": 12, "ignore_eos": True}}))
    ok = len(ev) == 12 and all(e["generated_text"] is None and e["details"] is None for e in ev[:-1])
    ok = ok and [e["index"] for e in ev] == list(range(12))
    ok = ok and ev[-1]["generated_text"] == g1["generated_text"] and ev[-1]["details"]["finish_reason"] == "length"
    ok = ok and [e["token"]["id"] for e in ev] == [t["id"] for t in g1["details"]["tokens"]]
    check(ok, "/generate_stream: one event per token, the last with generated_text and details")
    ev = collect(s.stream("/generate", {"inputs": P, "stream": True, "parameters": {"max_new_tokens": 3}}))
    check(len(ev) >= 1 and ev[-1]["details"] is not None, "/generate with stream:true streams")

    # OpenAI /v1/completions
    n_prompt = len(s.request("POST", "/tokenize", {"content": P})[2]["tokens"])
    cbody = {"model": "whatever", "prompt": P, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    st, _, c1 = s.request("POST", "/v1/completions", cbody)
    ok = st == 200 and c1["object"] == "text_completion" and c1["id"].startswith("cmpl-")
    ok = ok and c1["choices"][0]["text"] == g1["generated_text"] and c1["choices"][0]["finish_reason"] == "length"
    u = dict(c1.get("usage") or {})
    cached = u.pop("prompt_tokens_details", {}).get("cached_tokens", -1)
    ok = ok and u == {"prompt_tokens": n_prompt, "completion_tokens": 12, "total_tokens": n_prompt + 12}
    ok = ok and 0 <= cached < n_prompt  # the same prompt ran on /generate before: a hit is fine
    check(ok, "/v1/completions: text (= /generate greedy), finish_reason, usage with cached_tokens")
    st, _, c2 = s.request("POST", "/v1/completions", {**cbody, "prompt": ids})
    check(st == 200 and c2["choices"][0]["text"] == s.request("POST", "/v1/completions", {**cbody, "prompt": "Hello world"})[2]["choices"][0]["text"],
          "/v1/completions prompt as token ids = as text")
    st, _, c3 = s.request("POST", "/v1/completions", {**cbody, "prompt": [P], "echo": True})
    check(st == 200 and c3["choices"][0]["text"] == P + c1["choices"][0]["text"], "/v1/completions [prompt], echo")
    if stop:
        st, _, c4 = s.request("POST", "/v1/completions", {**cbody, "max_tokens": 40, "stop": stop})
        check(st == 200 and c4["choices"][0]["text"] == full[:full.find(stop)] and c4["choices"][0]["finish_reason"] == "stop",
              "/v1/completions stop: text cut before the stop string, finish_reason stop")
        chunks = collect(s.stream("/v1/completions", {**cbody, "max_tokens": 40, "stop": [stop, "zzzzq"], "stream": True}))
        txt = "".join(c["choices"][0]["text"] for c in chunks if isinstance(c, dict))
        check(txt == full[:full.find(stop)], "streamed stop: no part of the stop string leaks into the stream")
    st, _, c5 = s.request("POST", "/v1/completions", {**cbody, "logprobs": 3})
    lp = c5["choices"][0]["logprobs"] if st == 200 else None
    check(lp is not None and len(lp["tokens"]) == 12 and len(lp["token_logprobs"]) == 12
          and all(len(t) <= 3 and len(t) >= 1 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 0
          and all(x <= 0 for x in lp["token_logprobs"]), "/v1/completions logprobs: tokens, token_logprobs, top_logprobs, text_offset")
    # greedy picks the most likely token: its logprob is the best alternative's
    check(lp is not None and all(abs(max(t.values()) - x) < 1e-4 for t, x in zip(lp["top_logprobs"], lp["token_logprobs"])),
          "greedy token logprob = the top alternative's")
    chunks = collect(s.stream("/v1/completions", {**cbody, "stream": True, "stream_options": {"include_usage": True}}))
    ok = chunks[-1] == "[DONE]" and all(isinstance(c, dict) for c in chunks[:-1])
    body_chunks = [c for c in chunks[:-1] if c["choices"]]
    ok = ok and "".join(c["choices"][0]["text"] for c in body_chunks) == c1["choices"][0]["text"]
    ok = ok and body_chunks[-1]["choices"][0]["finish_reason"] == "length"
    ok = ok and all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks[:-1])
    ok = ok and chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 12
    check(ok, "/v1/completions stream: chunks add up to the text, finish_reason, usage chunk, [DONE]")

    # OpenAI /v1/chat/completions (gemma format, inferred)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    rendered = "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n"
    n_chat = len(s.request("POST", "/tokenize", {"content": rendered})[2]["tokens"])
    kbody = {"model": "m", "messages": msgs, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    st, _, k1 = s.request("POST", "/v1/chat/completions", kbody)
    ok = st == 200 and k1["object"] == "chat.completion" and k1["id"].startswith("chatcmpl-")
    ok = ok and k1["choices"][0]["message"]["role"] == "assistant" and k1["usage"]["prompt_tokens"] == n_chat
    same = s.request("POST", "/v1/completions", {**cbody, "prompt": rendered, "max_tokens": 10})[2]
    ok = ok and k1["choices"][0]["message"]["content"] == same["choices"][0]["text"]
    check(ok, "/v1/chat/completions renders the gemma template (same tokens and text as the rendered prompt)")
    st, _, k2 = s.request("POST", "/v1/chat/completions", {**kbody, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                                                  {"type": "text", "text": "there"}]}]})
    check(st == 200 and k2["choices"][0]["message"]["content"] == k1["choices"][0]["message"]["content"],
          "chat content as an array of text parts")
    chunks = collect(s.stream("/v1/chat/completions", {**kbody, "stream": True}))
    ok = chunks[-1] == "[DONE]" and chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    ok = ok and all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    ok = ok and "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == k1["choices"][0]["message"]["content"]
    ok = ok and chunks[-2]["choices"][0]["finish_reason"] == "length"
    check(ok, "/v1/chat/completions stream: role first, deltas add up, finish_reason, [DONE]")
    st, _, k3 = s.request("POST", "/v1/chat/completions", {**kbody, "logprobs": True, "top_logprobs": 2})
    lc = k3["choices"][0]["logprobs"]["content"] if st == 200 else []
    check(len(lc) == 10 and all(set(x) >= {"token", "logprob", "bytes", "top_logprobs"} and len(x["top_logprobs"]) == 2
                                for x in lc), "chat logprobs: token, logprob, bytes, 2 top_logprobs")
    st, _, k4 = s.request("POST", "/v1/chat/completions", {"messages": msgs, "max_completion_tokens": 3, "n": 1,
                                                           "user": "u", "presence_penalty": 0.5, "frequency_penalty": 0.5,
                                                           "seed": 3, "top_p": 0.9, "unknown_field": {"x": 1},
                                                           "stop": None, "temperature": None, "logit_bias": {},
                                                           "tools": [], "response_format": {"type": "text"}})
    check(st == 200 and k4["usage"]["completion_tokens"] <= 3, "chat: max_completion_tokens, penalties, nulls, unknown fields ignored")

    # errors
    st, _, b = s.request("GET", "/nope")
    check(openai_error(st, b, 404, code="unknown_url"), "unknown route: 404 OpenAI-shaped")
    st, h, b = s.request("GET", "/v1/completions")
    check(openai_error(st, b, 405) and "POST" in h.get("allow", ""), "GET /v1/completions: 405 with Allow")
    st, h, b = s.request("POST", "/health", {})
    check(st == 405 and "GET" in h.get("allow", ""), "POST /health: 405")
    st, _, b = s.request("GET", "/generate")
    check(tgi_error(st, b, 405, "method_not_allowed"), "GET /generate: 405 TGI-shaped")
    for path in ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]:
        st, _, b = s.request("POST", path, raw=b'{"prompt": "x",')
        check(openai_error(st, b, 400), f"malformed JSON on {path}: 400 OpenAI-shaped")
    for path in ["/generate", "/generate_stream"]:
        st, _, b = s.request("POST", path, raw=b'{"inputs": ')
        check(tgi_error(st, b, 422, "validation"), f"malformed JSON on {path}: 422 TGI-shaped")
    st, _, b = s.request("POST", "/v1/completions", raw=b'[1, 2]')
    check(openai_error(st, b, 400), "a JSON array body: 400")
    bad = [
        ({"prompt": "x", "temperature": "hot"}, "temperature"), ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "stream": "yes"}, "stream"), ({"max_tokens": 3}, "prompt"), ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "n": 64}, "n"),
        ({"prompt": "x", "n": 2, "best_of": 1}, "best_of"), ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"), ({"prompt": "x", "stop": 5}, "stop"), ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "temperature": 3}, "temperature"), ({"prompt": "x", "logprobs": 99}, "logprobs"),
        ({"prompt": "x", "seed": "s"}, "seed"), ({"prompt": "x", "presence_penalty": 5}, "presence_penalty"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 99999]}, "prompt"), ({"prompt": "x", "user": 5}, "user"),
        ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"), ({"prompt": "x", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"99999": 1}}, "logit_bias"), ({"prompt": "x", "tools": [{"type": "function"}]}, "tools"),
        ({"prompt": "x", "response_format": {"type": "xml"}}, "response_format.type"),
        ({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object",
          "patternProperties": {}}}}}, "response_format.json_schema.schema"),
        ({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": 5}}, "response_format.json_schema"),
    ]
    for body, param in bad:
        st, _, b = s.request("POST", "/v1/completions", body)
        check(openai_error(st, b, 400, param=param), f"/v1/completions {json.dumps(body)}: 400 param={param}")
    bad_chat = [
        ({"messages": "hi"}, "messages"), ({"messages": []}, "messages"), ({}, "messages"),
        ({"messages": [{"content": "x"}]}, "messages[0]"), ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": "yes"}, "logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        # as OpenAI: only an assistant message with tool_calls may come without content
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": None}, {"role": "user", "content": "x"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "tool"}]},
         "messages[2].content"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"type": "function"}]}]},
         "messages[1].tool_calls[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
          "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "a b"}}]},
         "tools[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": "f"}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
          "json_schema": {"schema": {"type": "object", "properties": {"a": {"not": {}}}}}}},
         "response_format.json_schema.schema"),
        ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, "functions"),
    ]
    for body, param in bad_chat:
        st, _, b = s.request("POST", "/v1/chat/completions", body)
        check(openai_error(st, b, 400, param=param), f"/v1/chat/completions {json.dumps(body)[:60]}: 400 param={param}")
    bad_tgi = [{"parameters": {"max_new_tokens": 3}}, {"inputs": 5}, {"inputs": "x", "parameters": {"max_new_tokens": -1}},
               {"inputs": "x", "parameters": {"top_p": 1.5}}, {"inputs": "x", "parameters": {"temperature": "x"}},
               {"inputs": "x", "parameters": {"stop": [1]}}, {"inputs": "x", "parameters": []},
               {"inputs": "x", "parameters": {"repetition_penalty": 0}}, {"inputs": "x", "parameters": {"details": 1}},
               {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "(a"}}},
               {"inputs": "x", "parameters": {"grammar": {"type": "json", "value": {"type": "object", "if": {}}}}},
               {"inputs": "x", "parameters": {"grammar": {"type": "lark", "value": "x"}}},
               {"inputs": "x", "parameters": {"best_of": 2}}, {"inputs": "x", "parameters": {"watermark": True}},
               {"inputs": "x", "parameters": {"adapter_id": "lora-1"}}, {"inputs": "x", "parameters": {"top_n_tokens": 99}},
               {"inputs": "x", "parameters": {"typical_p": 0}}, {"inputs": "x", "parameters": {"typical_p": 1.0}},
               {"inputs": "x", "parameters": {"truncate": 0}}, {"inputs": "x", "parameters": {"truncate": "5"}},
               {"inputs": "x", "parameters": {"decoder_input_details": "yes"}}]
    st, _, b = s.request("POST", "/generate_stream", {"inputs": "x", "parameters": {"decoder_input_details": True}})
    check(tgi_error(st, b, 422, "validation") and "decoder_input_details" in b.get("error", ""),
          "/generate_stream with decoder_input_details: 422 naming it (TGI does not stream it)")
    # TGI top_n_tokens: the alternatives of each token, most likely first, the chosen one among them (greedy)
    st, _, b = s.request("POST", "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 3, "details": True,
                                                                                 "top_n_tokens": 3}})
    tt = b.get("details", {}).get("top_tokens", []) if st == 200 else []
    toks = b.get("details", {}).get("tokens", []) if st == 200 else []
    check(len(tt) == 3 and all(len(x) == 3 and x[0]["id"] == t["id"] and x[0]["logprob"] >= x[1]["logprob"] >= x[2]["logprob"]
                               for x, t in zip(tt, toks)), "TGI top_n_tokens fills details.top_tokens")
    ev = list(s.stream("/generate_stream", {"inputs": "Hello", "parameters": {"max_new_tokens": 2, "top_n_tokens": 2}}))
    check(len(ev) == 2 and all(len(e["top_tokens"]) == 2 for e in ev), "TGI top_n_tokens in each streamed token")
    for body in bad_tgi:
        st, _, b = s.request("POST", "/generate", body)
        st2, _, b2 = s.request("POST", "/generate_stream", body)
        check(tgi_error(st, b, 422, "validation") and tgi_error(st2, b2, 422, "validation"),
              f"/generate* {json.dumps(body)}: 422 validation")
    # body over the limit (65536 here): with Content-Length, chunked, and Expect: 100-continue
    big = b'{"prompt": "' + b"a" * 70000 + b'"}'
    st, _, b = s.request("POST", "/v1/completions", raw=big)
    check(openai_error(st, b, 413, code="request_too_large"), "body over --max-body: 413")
    st, _, b = s.request("POST", "/generate", raw=big)
    check(st == 413 and b.get("error_type") == "validation", "body over --max-body on /generate: 413 TGI-shaped")
    c = s.conn()
    c.putrequest("POST", "/v1/completions")
    c.putheader("Content-Type", "application/json")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for i in range(0, len(big), 8192):
        part = big[i:i + 8192]
        c.send(b"%x\r\n%s\r\n" % (len(part), part))
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    check(r.status == 413, "chunked body over the limit: 413")
    c.close()
    sk = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
    resp = sk.recv(4096)
    check(resp.startswith(b"HTTP/1.1 413"), "Expect: 100-continue with a huge Content-Length: 413 before the body")
    sk.close()
    # prompt longer than the context (512 here)
    words = " ".join("w%d" % i for i in range(400))
    n_long = s.request("POST", "/tokenize", {"content": words})[2]["count"]
    st, _, b = s.request("POST", "/v1/completions", {"prompt": words, "max_tokens": 4})
    check(n_long > 512 and openai_error(st, b, 400, param="prompt", code="context_length_exceeded"),
          f"prompt of {n_long} tokens > ctx 512: 400 context_length_exceeded")
    st, _, b = s.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": words}]})
    check(openai_error(st, b, 400, param="messages", code="context_length_exceeded"), "chat prompt > ctx: 400")
    st, _, b = s.request("POST", "/generate", {"inputs": words})
    check(tgi_error(st, b, 422, "validation"), "TGI prompt > ctx: 422")
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 600})
    check(openai_error(st, b, 400, param="max_tokens"), "prompt + max_tokens > ctx: 400")
    # random garbage never gets a 5xx nor kills the server
    rng = random.Random(1)
    atoms = [b"{", b"}", b"[", b"]", b'"prompt"', b'"messages"', b'"inputs"', b":", b",", b"null", b"true", b"1e999",
             b"-1", b'"\\ud800"', b'"\xff\xfe"', b"0", b'"x"', b'"stream"', b'"max_tokens"', b'"parameters"', b"\x00"]
    worst = 0
    for i in range(150):
        raw = b"".join(rng.choice(atoms) for _ in range(rng.randint(0, 12)))
        path = rng.choice(["/v1/completions", "/v1/chat/completions", "/generate", "/tokenize", "/detokenize"])
        st, _, _ = s.request("POST", path, raw=raw)
        worst = max(worst, st)
    check(worst < 500 and s.request("GET", "/health")[0] == 200, "150 random bodies: only 2xx/4xx, server alive")

    # concurrency: the same seeds alone and together give the same text
    def sampled(seed):
        return {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0, "top_k": 40, "seed": seed,
                "ignore_eos": True, "stream": True}
    alone = {}
    for seed in range(1, 7):
        alone[seed] = "".join(c["choices"][0]["text"] for c in s.stream("/v1/completions", sampled(seed))
                              if isinstance(c, dict) and c["choices"])
    rows0, steps0 = s.metric("kvseek_engine_batch_rows_total"), s.metric("kvseek_engine_steps_total")
    together, errors = {}, []
    barrier = threading.Barrier(6)

    def client(seed):
        try:
            barrier.wait()
            together[seed] = "".join(c["choices"][0]["text"] for c in s.stream("/v1/completions", sampled(seed))
                                     if isinstance(c, dict) and c["choices"])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    ts = [threading.Thread(target=client, args=(seed,)) for seed in range(1, 7)]
    [t.start() for t in ts]
    [t.join(60) for t in ts]
    rows = s.metric("kvseek_engine_batch_rows_total") - rows0
    steps = s.metric("kvseek_engine_steps_total") - steps0
    check(not errors and len(together) == 6, "6 concurrent streaming clients complete " + "; ".join(errors)[:200])
    check(len(set(alone.values())) == 6, "different seeds give different texts")
    check(together == alone, "same seed alone and concurrent: same text (batch-invariant decoding)")
    check(steps > 0 and rows / steps > 1.5, f"sequences were batched together ({rows / max(steps, 1):.2f} rows per step)")

    # metrics agree with what was sent
    gen0, prm0 = s.metric("kvseek_generation_tokens_total"), s.metric("kvseek_prompt_tokens_total")
    ttft0, itl0 = s.metric("kvseek_time_to_first_token_seconds_count"), s.metric("kvseek_inter_token_latency_seconds_count")
    req0 = s.metric('kvseek_requests_total{route="/v1/completions",status="200"}')
    bad0 = s.metric('kvseek_requests_total{route="/v1/completions",status="400"}')
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "metrics check", "max_tokens": 7, "ignore_eos": True})
    s.request("POST", "/v1/completions", {"prompt": 1})
    s.request("POST", "/v1/completions", {"prompt": 2})
    check(s.metric("kvseek_generation_tokens_total") - gen0 == 7
          and s.metric("kvseek_prompt_tokens_total") - prm0 == b["usage"]["prompt_tokens"],
          "metrics: prompt and generated token counters match the usage")
    check(s.metric("kvseek_time_to_first_token_seconds_count") - ttft0 == 1
          and s.metric("kvseek_inter_token_latency_seconds_count") - itl0 == 6, "metrics: TTFT once, ITL n-1 times")
    # a request is counted when the server has finished with its connection, just after the
    # client has the answer: give it a moment
    deadline = time.time() + 5
    while time.time() < deadline and not (
            s.metric('kvseek_requests_total{route="/v1/completions",status="200"}') - req0 == 1
            and s.metric('kvseek_requests_total{route="/v1/completions",status="400"}') - bad0 == 2):
        time.sleep(0.01)
    check(s.metric('kvseek_requests_total{route="/v1/completions",status="200"}') - req0 == 1
          and s.metric('kvseek_requests_total{route="/v1/completions",status="400"}') - bad0 == 2,
          "metrics: requests by route and status")
    _, h, text = s.request("GET", "/metrics")
    check(h["content-type"].startswith("text/plain") and "# TYPE kvseek_time_to_first_token_seconds histogram" in text
          and "kvseek_queue_depth 0" in text and "kvseek_active_sequences 0" in text
          and "kvseek_parallel_sequences 4" in text, "/metrics: Prometheus text, histograms, idle gauges")
    # attention chosen per request: the selector runs (stats say so), knobs are validated
    long_prompt = " ".join(["alpha beta gamma delta"] * 20)
    base = {"inputs": long_prompt, "parameters": {"max_new_tokens": 6, "details": True}}
    st, _, b = s.request("POST", "/generate", base)
    a = b["details"]["attention"] if st == 200 else {}
    check(st == 200 and a.get("selector") == "dense" and a.get("sparse_rows") == 0,
          "default attention is the server's (dense, no sparse rows)")
    win = dict(base, parameters=dict(base["parameters"], attention={"selector": "window", "sink": 4, "window": 16}))
    st, _, b = s.request("POST", "/generate", win)
    a = b["details"]["attention"] if st == 200 else {}
    check(st == 200 and a.get("selector") == "window" and a.get("sparse_rows", 0) > 0
          and a.get("offloaded_keys", 0) > 0 and a.get("keys_read") == 0,
          f"per-request window: sparse rows, offloaded keys, none read ({a})")
    orc = {"prompt": long_prompt, "max_tokens": 6, "temperature": 0,
           "attention": {"selector": "oracle", "top_k": 8, "sink": 4, "window": 16, "measure_recall": True}}
    st, _, b = s.request("POST", "/v1/completions", orc)
    a = b.get("attention", {}) if st == 200 else {}
    check(st == 200 and a.get("selector") == "oracle" and 0 < a.get("keys_read_fraction", 0) < 1
          and 0 < a.get("mass_recall", 0) <= 1.0001,
          f"OpenAI extra field attention: oracle top-8 reads a fraction, reports mass recall ({a})")
    chunks = [c for c in s.stream("/v1/completions", dict(orc, stream=True)) if isinstance(c, dict)]
    check(chunks and chunks[-1].get("attention", {}).get("selector") == "oracle",
          "streaming: the final chunk carries the attention stats")
    st, _, b = s.request("POST", "/v1/completions", dict(orc, attention="retrieval"))
    check(st == 200 and b["attention"]["selector"] == "retrieval", "attention as a selector name")
    st, _, b = s.request("POST", "/v1/completions", dict(orc, attention={"top_k": -1}))
    check(openai_error(st, b, 400, param="attention.top_k"), "attention.top_k -1: 400 naming the field")
    st, _, b = s.request("POST", "/v1/completions", dict(orc, attention={"selector": "magic"}))
    check(openai_error(st, b, 400, param="attention.selector"), "unknown selector: 400")
    st, _, b = s.request("POST", "/v1/completions", dict(orc, attention={"kv_f16": True}))
    check(openai_error(st, b, 400, param="attention.kv_f16"), "a storage key per request: 400")
    st, _, b = s.request("POST", "/generate", dict(base, parameters={"attention": [1]}))
    check(tgi_error(st, b, 422, "validation"), "TGI attention of a wrong type: 422")
    st, _, b = s.request("POST", "/generate", base)
    check(st == 200 and b["details"]["attention"]["selector"] == "dense",
          "the next request on a reused sequence is back to the default")
    check(s.proc.poll() is None, "server A still running after every error case")
    rc = s.stop()
    check(rc == 0, f"SIGTERM on an idle server: exit 0 (got {rc})")
print(f"[A done in {time.time() - T0:.1f} s]", flush=True)

# ----------------------------------------------------------------------------------------------
# B: API key, a full queue (429), client disconnects that cancel
# ----------------------------------------------------------------------------------------------
KEY = {"Authorization": "Bearer sekrit-key"}
with Server(BUILD, GEMMA, "--parallel", "1", "--queue-size", "0", "--ctx-size", "16384", "--api-key", "sekrit-key",
            "--alias", "tiny") as s:
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "x"})
    check(openai_error(st, b, 401, code="invalid_api_key"), "no API key: 401 OpenAI-shaped")
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
    check(openai_error(st, b, 401), "wrong API key: 401")
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer sekrit-ke"})
    check(st == 401, "API key prefix: 401")
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Basic sekrit-key"})
    check(st == 401, "non-Bearer scheme: 401")
    st, _, b = s.request("POST", "/generate", {"inputs": "x"})
    check(tgi_error(st, b, 401, "authentication"), "no API key on /generate: 401 TGI-shaped")
    st, _, b = s.request("GET", "/v1/models")
    check(st == 401, "/v1/models needs the key")
    check(s.request("GET", "/health")[0] == 200 and s.request("GET", "/metrics")[0] == 200, "/health and /metrics stay open")
    st, _, b = s.request("GET", "/v1/models", headers=KEY)
    check(st == 200 and b["data"][0]["id"] == "tiny", "with the key: 200 (and --alias)")

    # one long stream holds the only sequence; the queue holds none: the next request gets 429
    long_body = {"prompt": "x", "max_tokens": 16000, "ignore_eos": True, "stream": True}
    c = s.conn()
    c.request("POST", "/v1/completions", body=json.dumps(long_body), headers={**KEY, "Content-Type": "application/json"})
    r = c.getresponse()
    it = sse_events(r)
    first = [next(it) for _ in range(3)]
    st, h, b = s.request("POST", "/v1/completions", {"prompt": "y", "max_tokens": 2}, headers=KEY)
    check(openai_error(st, b, 429) and h.get("retry-after") == "1", "queue full: 429 with Retry-After")
    st, h, b = s.request("POST", "/generate", {"inputs": "y"}, headers=KEY)
    check(tgi_error(st, b, 429, "overloaded"), "queue full on /generate: 429 overloaded")
    t_close = time.time()
    r.close()
    c.close()
    deadline = time.time() + 5
    while time.time() < deadline and s.metric('kvseek_generations_finished_total{reason="cancelled"}') < 1:
        time.sleep(0.01)
    t_cancel = time.time() - t_close
    gen = s.metric("kvseek_generation_tokens_total")
    check(s.metric('kvseek_generations_finished_total{reason="cancelled"}') == 1
          and s.metric("kvseek_client_disconnects_total") == 1 and gen < 16000,
          f"closing the stream cancels it ({t_cancel * 1000:.0f} ms, {gen:.0f} of 16000 tokens)")
    check(s.metric("kvseek_active_sequences") == 0, "the cancelled sequence is free again")
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "y", "max_tokens": 2}, headers=KEY)
    check(st == 200, "the next request is served")
    # a non-streaming client that goes away cancels too. The scheduler sends a request's last
    # token before it frees the sequence, so the one just served may still hold it for a moment:
    # wait until it is free, or this request gets 429 (queue size 0) and active_sequences >= 1
    # below would be the last request's.
    deadline = time.time() + 5
    while time.time() < deadline and s.metric("kvseek_active_sequences") > 0:
        time.sleep(0.01)
    sk = socket.create_connection(("127.0.0.1", s.port))
    body = json.dumps({"prompt": "x", "max_tokens": 16000, "ignore_eos": True}).encode()
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit-key\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    deadline = time.time() + 10
    while time.time() < deadline and s.metric("kvseek_active_sequences") < 1:
        time.sleep(0.01)  # the request is being generated
    sk.setblocking(False)
    try:
        early = sk.recv(64).split(b"\r\n")[0].decode(errors="replace")  # an answer already: refused
    except BlockingIOError:
        early = ""
    sk.close()
    deadline = time.time() + 5
    while time.time() < deadline and s.metric('kvseek_generations_finished_total{reason="cancelled"}') < 2:
        time.sleep(0.01)
    check(s.metric('kvseek_generations_finished_total{reason="cancelled"}') == 2
          and s.metric("kvseek_client_disconnects_total") == 2,
          "a non-streaming client that leaves cancels" + (f" (answered before it left: {early})" if early else ""))
    check(s.request("GET", "/health")[0] == 200, "server B healthy after the disconnects")
print(f"[B done in {time.time() - T0:.1f} s]", flush=True)

# ----------------------------------------------------------------------------------------------
# C: SIGTERM with requests in flight: the short one finishes, the long one is cancelled, exit 0
# ----------------------------------------------------------------------------------------------
GRACE = 4.0
with Server(BUILD, GEMMA, "--parallel", "2", "--ctx-size", "16384", "--shutdown-timeout", str(GRACE)) as s:
    results = {}

    def run(name, body):
        try:
            results[name] = collect(s.stream("/v1/completions", body))
        except Exception as e:  # noqa: BLE001
            results[name] = repr(e)
    short = threading.Thread(target=run, args=("short", {"prompt": "a", "max_tokens": 20, "ignore_eos": True,
                                                         "stream": True}))
    longt = threading.Thread(target=run, args=("long", {"prompt": "b", "max_tokens": 16000, "ignore_eos": True,
                                                        "stream": True}))
    longt.start()
    short.start()
    time.sleep(0.3)
    t_sig = time.time()
    s.proc.send_signal(15)
    time.sleep(0.2)
    try:
        st = s.request("GET", "/health", timeout=2)[0]
    except OSError:
        st = "refused"
    check(st in (503, "refused"), f"while draining, new requests are refused or get 503 ({st})")
    rc = s.proc.wait(20)
    took = time.time() - t_sig
    short.join(5)
    longt.join(5)
    sh, lg = results.get("short"), results.get("long")
    check(isinstance(sh, list) and sh[-1] == "[DONE]" and sh[-2].get("choices", [{}])[0].get("finish_reason") == "length",
          "SIGTERM: the in-flight short request finishes normally" + ("" if isinstance(sh, list) else f" ({sh})"))
    check(isinstance(lg, list) and any(isinstance(e, dict) and "error" in e for e in lg),
          "SIGTERM: the long request is cancelled after the grace period with an error event")
    check(rc == 0 and took < GRACE + 3, f"SIGTERM: exit 0 in {took:.1f} s (grace {GRACE} s)")
    check("kvseek: stopped" in s.read_log(), "shutdown logged")
print(f"[C done in {time.time() - T0:.1f} s]", flush=True)

# ----------------------------------------------------------------------------------------------
# D: chat templates from metadata (qwen2: ChatML), none (llama: 400), chosen (--chat-template)
# ----------------------------------------------------------------------------------------------
msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}]
with Server(BUILD, QWEN, "--parallel", "2") as s:
    rendered = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    st, _, k = s.request("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 8, "temperature": 0,
                                                          "ignore_eos": True})
    c = s.request("POST", "/v1/completions", {"prompt": rendered, "max_tokens": 8, "temperature": 0,
                                              "ignore_eos": True})[2]
    check(st == 200 and k["choices"][0]["message"]["content"] == c["choices"][0]["text"]
          and k["usage"]["prompt_tokens"] == c["usage"]["prompt_tokens"], "qwen2: ChatML from tokenizer.chat_template")
    ev = collect(s.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 8, "temperature": 0,
                                                   "ignore_eos": True, "stream": True}))
    check("".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-1]) == k["choices"][0]["message"]["content"],
          "qwen2 chat stream = non-stream")
with Server(BUILD, LLAMA) as s:
    st, _, b = s.request("POST", "/v1/chat/completions", {"messages": msgs})
    check(openai_error(st, b, 400) and "chat template" in b["error"]["message"],
          "no template and no turn tokens: a clear 400, no guess")
    check(s.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200, "completions still work")
with Server(BUILD, LLAMA, "--chat-template", "llama3") as s:
    rendered = ("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>"
                "\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    st, _, k = s.request("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "temperature": 0,
                                                          "ignore_eos": True})
    c = s.request("POST", "/v1/completions", {"prompt": rendered, "max_tokens": 4, "temperature": 0,
                                              "ignore_eos": True})[2]
    check(st == 200 and k["usage"]["prompt_tokens"] == c["usage"]["prompt_tokens"]
          and k["choices"][0]["message"]["content"] == c["choices"][0]["text"], "--chat-template llama3 renders llama3")
p = subprocess.run([KV, "serve", "-m", LLAMA, "--port", "0", "--chat-template", "{{ mystery }}"],
                   capture_output=True, text=True, timeout=30)
check(p.returncode == 2 and "error:" in p.stderr, "an unknown --chat-template is refused at start")
print(f"[D done in {time.time() - T0:.1f} s]", flush=True)

# ----------------------------------------------------------------------------------------------
# E: startup: --help, bad options, 503 while the model loads, a model that fails to load
# ----------------------------------------------------------------------------------------------
p = subprocess.run([KV, "serve", "--help"], capture_output=True, text=True, timeout=30)
check(p.returncode == 0 and "usage: kvseek serve" in p.stdout and "--api-key" in p.stdout, "serve --help")
p = subprocess.run([KV, "serve", "-m", GEMMA, "--parallel", "zero"], capture_output=True, text=True, timeout=30)
check(p.returncode == 2 and p.stderr.startswith("error:"), "bad option value: exit 2 with one error line")
p = subprocess.run([KV, "serve", "-m", GEMMA, "--frobnicate"], capture_output=True, text=True, timeout=30)
check(p.returncode == 2 and "unknown option" in p.stderr, "unknown option: exit 2")
with tempfile.TemporaryDirectory() as d:
    cfg = os.path.join(d, "c.json")
    with open(cfg, "w") as f:
        f.write('{"parallel": "four"}')
    p = subprocess.run([KV, "serve", "-m", GEMMA, "-c", cfg], capture_output=True, text=True, timeout=30)
    check(p.returncode == 2 and "parallel" in p.stderr, "bad config value: exit 2 naming the key")
    # the model path is a FIFO: loading blocks until we write to it, so /health can be seen at 503
    fifo = os.path.join(d, "model.gguf")
    os.mkfifo(fifo)
    s = Server(BUILD, fifo, wait_ready=False)
    try:
        st, _, b = s.request("GET", "/health")
        check(st == 503 and b == {"status": "loading"}, "/health 503 while the model loads")
        st, h, b = s.request("POST", "/v1/completions", {"prompt": "x"})
        check(openai_error(st, b, 503) and h.get("retry-after"), "requests while loading: 503 with Retry-After")
        try:
            with open(fifo, "wb") as f:
                f.write(b"not a model")
        except BrokenPipeError:
            pass  # the server opened the FIFO, saw it is no regular file and closed it first
        rc = s.proc.wait(20)
        check(rc == 1 and "error:" in s.read_log(), "a model that fails to load: exit 1 with an error line")
    finally:
        s.__exit__()

# ----------------------------------------------------------------------------------------------
# E: logit_bias on both OpenAI routes: +100 forces a token, -100 bans the greedy one
# ----------------------------------------------------------------------------------------------
with Server(BUILD, GEMMA) as s:
    base = {"prompt": "Hello", "max_tokens": 6, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    st, _, b0 = s.request("POST", "/v1/completions", base)
    st1, _, b1 = s.request("POST", "/v1/completions", {**base, "logit_bias": {"300": 100}})
    toks1 = b1["choices"][0]["logprobs"]["tokens"] if st1 == 200 else []
    piece = s.request("POST", "/detokenize", {"tokens": [300]})[2]["content"]
    check(st1 == 200 and toks1 == [piece] * 6, f"logit_bias +100 forces token 300 every step ({toks1})")
    first = s.request("POST", "/tokenize", {"content": b0["choices"][0]["logprobs"]["tokens"][0],
                                            "add_special": False})[2]["tokens"]
    st2, _, b2 = s.request("POST", "/v1/completions", {**base, "logit_bias": {str(first[0]): -100}})
    check(st2 == 200 and len(first) == 1 and b2["choices"][0]["logprobs"]["tokens"][0] != b0["choices"][0]["logprobs"]["tokens"][0],
          "logit_bias -100 bans the greedy first token")
    st3, _, b3 = s.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                                            "temperature": 0, "logit_bias": {"300": 100}})
    check(st3 == 200 and b3["choices"][0]["message"]["content"] == piece * 3, "logit_bias on chat completions")

# ----------------------------------------------------------------------------------------------
# F: TGI's root route and /info, which TGI's own clients use
# ----------------------------------------------------------------------------------------------
with Server(BUILD, GEMMA) as s:
    st, _, info = s.request("GET", "/info")
    check(st == 200 and info.get("model_id") == "tiny-gemma3.gguf" and info.get("max_total_tokens") == 2048
          and info.get("max_input_tokens") == 2047 and isinstance(info.get("version"), str),
          "GET /info: model_id, max_input_tokens, max_total_tokens, version as TGI names them")
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "details": True}}
    st, _, g = s.request("POST", "/generate", body)
    st2, _, r = s.request("POST", "/", body)
    check(st == st2 == 200 and isinstance(r, list) and len(r) == 1 and r[0]["generated_text"] == g["generated_text"]
          and r[0]["details"]["finish_reason"] == "length", "POST / answers as /generate, in a one-element array as TGI")
    ev = collect(s.stream("/", {**body, "stream": True}))
    check(len(ev) == 4 and ev[-1]["generated_text"] == g["generated_text"], "POST / with stream: true streams")
    try:
        from huggingface_hub import InferenceClient
    except ImportError:
        print("skipped: huggingface_hub is not installed (scripts/setup.sh installs the test tooling)")
    else:
        hc = InferenceClient(model=f"http://127.0.0.1:{s.port}")
        text = hc.text_generation("Hello", max_new_tokens=4)
        parts = list(hc.text_generation("Hello", max_new_tokens=4, stream=True))
        det = hc.text_generation("Hello", max_new_tokens=4, details=True)
        check(text == g["generated_text"] and "".join(parts) == text and det.details.finish_reason == "length",
              "huggingface_hub's InferenceClient, unmodified: text_generation plain, streamed, with details")

print(f"{time.time() - T0:.1f} s", flush=True)
print("all passed" if failures == 0 else f"{failures} failed")
sys.exit(1 if failures else 0)
