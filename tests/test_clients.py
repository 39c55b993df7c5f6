"""Structured output, tool calls and n on the default model (Qwen2.5-Coder-0.5B-Instruct), through
unmodified clients: the openai package (chat, JSON mode, json_schema, tools with a named
tool_choice, n=2, streaming) and huggingface_hub (chat_completion streaming, text_generation with
a grammar). Also checks the chat prompt against the model's own Jinja template (jinja2, with
tojson as transformers defines it), so "rendered in the model's own format" is tested, not
assumed.

    python3 tests/test_clients.py BUILD [MODEL]   (MODEL is ignored: this test needs the default model)
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Server  # noqa: E402

BUILD = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN = os.path.join(ROOT, "models", "qwen2.5-coder-0.5b-instruct.gguf")
failures = 0
T0 = time.time()


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


if not os.path.exists(QWEN):
    print(f"skipped: {QWEN} missing (make model)")
    sys.exit(0)

import jinja2  # noqa: E402
import jsonschema  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from huggingface_hub import InferenceClient  # noqa: E402
from openai import OpenAI  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"]}}}

# ---- the chat prompt = the model's Jinja template -------------------------------------------
r = GGUFReader(QWEN)
f = r.fields["tokenizer.chat_template"]
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
template = env.from_string(bytes(f.parts[f.data[0]]).decode())


def jinja(messages, tools=None):
    msgs = []
    for m in messages:  # arguments as objects, as servers hand them to templates
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        msgs.append(m)
    return template.render(messages=msgs, tools=tools, add_generation_prompt=True)


call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}
convs = [
    ([{"role": "user", "content": "Hi"}], None),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "How are you?"}], None),
    ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER, TIME]),
    ([{"role": "system", "content": "You check facts."}, {"role": "user", "content": "Weather in Paris and the time?"},
      {"role": "assistant", "content": "", "tool_calls": [call, {**call, "id": "call_2", "function": {
          "name": "get_time", "arguments": "{\"zone\": \"Europe/Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
      {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
      {"role": "assistant", "content": "It is 21 C and 14:05."}, {"role": "user", "content": "Thanks"}], [WEATHER, TIME]),
    ([{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], [WEATHER]),
]

with Server(BUILD, QWEN, "--parallel", "4", "--ctx-size", "4096") as s:
    for i, (msgs, tools) in enumerate(convs):
        body = {"messages": msgs}
        if tools:
            body["tools"] = tools
        st, _, b = s.request("POST", "/tokenize", body)
        want = jinja(msgs, tools)
        check(st == 200 and b.get("prompt") == want,
              f"conversation {i}: the chat prompt equals the model's Jinja template's" +
              ("" if st == 200 and b.get("prompt") == want else f"\n  got  {b.get('prompt')!r}\n  want {want!r}"))

    base = f"http://127.0.0.1:{s.port}"
    oa = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)

    # ---- JSON mode: 20 different prompts, 20 parses ----
    topics = ["Paris", "a cat", "the planet Mars", "a bicycle", "Python", "the color blue", "a pizza", "an apple",
              "the moon", "a violin", "Tokyo", "a laptop", "the ocean", "a rose", "chess", "coffee", "a train",
              "the sun", "a library", "a mountain"]
    ok = 0
    for t in topics:
        rsp = oa.chat.completions.create(model="x", messages=[{"role": "user", "content":
                                         f"Describe {t} as a small JSON object: at most three keys, short values."}],
                                         response_format={"type": "json_object"}, max_tokens=600, temperature=0.7,
                                         seed=1)
        try:
            ok += isinstance(json.loads(rsp.choices[0].message.content), dict)
        except ValueError:
            print("  not JSON:", rsp.choices[0].message.content[:200], rsp.choices[0].finish_reason)
    # 19: one of these prompts makes the 0.5B model write an ever-growing object that max_tokens
    # cuts ("length"); the grammar keeps every finished answer valid
    check(ok >= 19, f"json_object: {ok}/20 answers parse as JSON objects")

    # ---- json_schema: nested objects, arrays, enums, integers; 20 validate ----
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 60},
        "category": {"enum": ["place", "animal", "object", "idea", "food"]},
        "rating": {"type": "integer", "minimum": 1, "maximum": 10},
        "facts": {"type": "array", "items": {"type": "string", "maxLength": 120}, "minItems": 1, "maxItems": 3},
        "origin": {"type": "object", "properties": {"country": {"type": "string", "maxLength": 40},
                                                    "year": {"type": "integer"}},
                   "required": ["country", "year"]}},
        "required": ["name", "category", "rating", "facts", "origin"]}
    ok = 0
    for t in topics:
        rsp = oa.chat.completions.create(model="x", messages=[{"role": "user", "content": f"Tell me about {t}."}],
                                         response_format={"type": "json_schema", "json_schema": {
                                             "name": "thing", "schema": schema, "strict": True}},
                                         max_tokens=300, temperature=0.7, seed=2)
        try:
            jsonschema.validate(json.loads(rsp.choices[0].message.content), schema)
            ok += 1
        except (ValueError, jsonschema.ValidationError) as e:
            print("  invalid:", rsp.choices[0].message.content[:200], rsp.choices[0].finish_reason, str(e)[:100])
    check(ok == 20, f"json_schema: {ok}/20 answers validate (jsonschema)")

    # ---- tools with a named tool_choice: 20 calls parse to the tool's schema ----
    cities = ["Paris", "Berlin", "Madrid", "Rome", "Oslo", "Cairo", "Lima", "Tokyo", "Seoul", "Delhi", "Lagos", "Quito",
              "Vienna", "Prague", "Dublin", "Lisbon", "Athens", "Kyiv", "Hanoi", "Sydney"]
    ok = 0
    for c in cities:
        rsp = oa.chat.completions.create(model="x", messages=[{"role": "user", "content": f"How warm is it in {c}?"}],
                                         tools=[WEATHER, TIME], max_tokens=100, temperature=0.7, seed=3,
                                         tool_choice={"type": "function", "function": {"name": "get_weather"}})
        ch = rsp.choices[0]
        try:
            tc = ch.message.tool_calls[0]
            jsonschema.validate(json.loads(tc.function.arguments), WEATHER["function"]["parameters"])
            ok += tc.function.name == "get_weather" and ch.finish_reason == "tool_calls" and tc.id.startswith("call_")
        except (TypeError, IndexError, ValueError, jsonschema.ValidationError) as e:
            print("  bad call:", ch, str(e)[:100])
    check(ok == 20, f"named tool_choice: {ok}/20 tool calls parse to the tool's schema")

    # auto: the model decides; a weather question calls get_weather; the reply after a tool result is text
    rsp = oa.chat.completions.create(model="x", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
                                     tools=[WEATHER], temperature=0)
    tc = rsp.choices[0].message.tool_calls
    check(tc and tc[0].function.name == "get_weather" and json.loads(tc[0].function.arguments).get("city") == "Paris"
          and rsp.choices[0].finish_reason == "tool_calls", "tool_choice auto: the question becomes a call")
    # streamed: the deltas assemble to the same call
    parts, finish = {}, None
    for ev in oa.chat.completions.create(model="x", messages=[{"role": "user", "content": "Weather in Rome, celsius?"}],
                                         tools=[WEATHER], tool_choice="required", stream=True, temperature=0):
        for d in ev.choices[0].delta.tool_calls or []:
            p = parts.setdefault(d.index, {"name": "", "args": ""})
            p["name"] += (d.function.name or "") if d.function else ""
            p["args"] += (d.function.arguments or "") if d.function else ""
        finish = ev.choices[0].finish_reason or finish
    check(len(parts) == 1 and parts[0]["name"] == "get_weather" and json.loads(parts[0]["args"])["city"] == "Rome"
          and finish == "tool_calls", "streamed tool call deltas assemble to the call")

    # ---- n = 2: two choices from one prefill, each its own seed ----
    rsp = oa.chat.completions.create(model="x", messages=[{"role": "user", "content": "Name a fruit."}], n=2,
                                     temperature=1.0, max_tokens=16, seed=7)
    check(len(rsp.choices) == 2 and sorted(c.index for c in rsp.choices) == [0, 1] and
          all(c.message.content for c in rsp.choices), "n=2: two choices with their index")
    seen = {}
    for ev in oa.chat.completions.create(model="x", messages=[{"role": "user", "content": "Name a fruit."}], n=2,
                                         temperature=1.0, max_tokens=16, stream=True):
        for c in ev.choices:
            seen.setdefault(c.index, []).append(c.delta.content or "")
    check(sorted(seen) == [0, 1], "n=2 streamed: chunks for both choices")

    # ---- huggingface_hub: chat_completion streaming, text_generation with a grammar ----
    hf = InferenceClient(model=base, timeout=300)
    text = "".join(ch.choices[0].delta.content or "" for ch in hf.chat_completion(
        messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20, stream=True,
        temperature=0.0))
    check("Paris" in text, f"huggingface_hub chat_completion streamed: {text!r}")
    out = hf.text_generation("The year the Eiffel Tower opened:", max_new_tokens=10,
                             grammar={"type": "regex", "value": " [0-9]{4}"})
    check(len(out) == 5 and out[1:].isdigit(), f"huggingface_hub text_generation with a regex grammar: {out!r}")

print(f"{time.time() - T0:.1f} s")
print(f"{failures} failed" if failures else "all passed")
sys.exit(1 if failures else 0)
