"""The official `openai` Python package, unmodified, pointed at kvseek with base_url:
completions and chat completions, each plain and with stream=True, on a tiny model (tiny-qwen2,
whose GGUF carries a ChatML template). Also the package's own error types for a bad request
and a wrong API key.

Run as: python3 tests/test_openai_client.py BUILD_DIR MODEL_PATH (MODEL_PATH unused)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Server  # noqa: E402

import openai  # noqa: E402

BUILD = sys.argv[1]
MODEL = os.path.join(BUILD, "tiny", "tiny-qwen2.gguf")
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


print("openai", openai.__version__)
with Server(BUILD, MODEL, "--parallel", "2", "--api-key", "test-key") as s:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="test-key", max_retries=0, timeout=60)

    models = client.models.list()
    check(models.data and models.data[0].id == "tiny-qwen2.gguf", "client.models.list()")

    r = client.completions.create(model="tiny-qwen2.gguf", prompt="Once upon a time", max_tokens=12,
                                  temperature=0, extra_body={"ignore_eos": True})
    text = r.choices[0].text
    check(isinstance(text, str) and text and r.choices[0].finish_reason == "length"
          and r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 0, "completions.create returns text and usage")

    parts, finish = [], None
    for chunk in client.completions.create(model="m", prompt="Once upon a time", max_tokens=12, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
        parts.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    check("".join(parts) == text and finish == "length", "completions.create(stream=True) streams the same text")

    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=0, seed=1,
                                       extra_body={"ignore_eos": True})
    reply = r.choices[0].message.content
    check(r.choices[0].message.role == "assistant" and isinstance(reply, str) and reply
          and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
          "chat.completions.create returns a message and usage")

    parts, roles, usage = [], [], None
    stream = client.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                parts.append(ch.delta.content)
    check("".join(parts) == reply and roles == ["assistant"] and usage and usage.completion_tokens == 10,
          "chat.completions.create(stream=True) streams the same reply, with usage")

    # seeded and past end-of-generation: an unseeded sample may end at once, with no tokens to list
    r = client.chat.completions.create(model="m", messages=msgs, max_tokens=4, logprobs=True, top_logprobs=3,
                                       seed=1, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs.content
    check(len(lp) >= 1 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp), "chat logprobs parsed by the client")

    try:
        client.completions.create(model="m", prompt="x", max_tokens=4, temperature=7)
        check(False, "a bad temperature raises BadRequestError")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and "temperature" in str(e), "a bad temperature raises BadRequestError")

    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check(False, "a wrong key raises AuthenticationError")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "a wrong key raises AuthenticationError")

print("all passed" if failures == 0 else f"{failures} failed")
sys.exit(1 if failures else 0)
