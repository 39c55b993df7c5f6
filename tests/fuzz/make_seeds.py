#!/usr/bin/env python3
"""make_seeds.py [TINY_DIR]: writes the hand-made seed inputs of the fuzz targets into
tests/fuzz/corpus/fuzz_<target>/seed-* (the files `make fuzz-merge` adds sit next to them).

  fuzz_gguf     small GGUF files written byte by byte: every value type, arrays of each type,
                tensors of every GGML type with their data, v2, a custom alignment; and the
                tokenizer metadata of the three tiny models (TINY_DIR, default build/tiny) alone.
  fuzz_tok      texts (English, code, specials, invalid UTF-8, NUL, "▁", digits, CJK, emoji)
                under several flag bytes.
  fuzz_chat     conversations in the target's NUL-separated form.
  fuzz_api      request bodies of every route, valid and invalid (tests/test_server.py's cases).
  fuzz_ctxfile  mode bytes and a few edit lists (the base context is built by the harness).

The inputs' formats are described at the top of each tests/fuzz/fuzz_<target>.c.
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
       U64: "<Q", I64: "<q", F64: "<d"}


def gstr(s):
    b = s if isinstance(s, bytes) else s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        for it in items:
            out += gval(et, it)
        return out
    return struct.pack(FMT[t], v)


def gguf_file(kvs, tensors=(), version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims, ggml_type, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    offs, off = [], 0
    for name, dims, typ, data in tensors:
        offs.append(off)
        off += (len(data) + alignment - 1) // alignment * alignment
    for (name, dims, typ, data), o in zip(tensors, offs):
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", typ, o)
    if tensors:
        out += b"\0" * (-len(out) % alignment)
        for (name, dims, typ, data), o in zip(tensors, offs):
            out += data + b"\0" * (-len(data) % alignment)
    return out


# GGML types: (elements per block, bytes per block)
GGML = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
        10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
        24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}


def tensor(name, dims, typ):
    n = 1
    for d in dims:
        n *= d
    blk, bb = GGML[typ]
    return (name, dims, typ, bytes((i * 7 + 3) & 0xFF for i in range(n // blk * bb)))


def gguf_seeds(tiny):
    every = [("general.architecture", STR, "llama"), ("general.alignment", U32, 32),
             ("u8", U8, 200), ("i8", I8, -5), ("u16", U16, 60000), ("i16", I16, -30000),
             ("u32", U32, 4000000000), ("i32", I32, -7), ("f32", F32, 1.5), ("bool", BOOL, 1),
             ("str", STR, "hello \xe2\x96\x81"), ("u64", U64, 2 ** 63 + 5), ("i64", I64, -2 ** 40),
             ("f64", F64, -2.25), ("empty", STR, "")]
    arrays = [("a.%d.%d" % (i, t), ARR, (t, vals)) for i, (t, vals) in enumerate(
              [(U8, [1, 2, 3]), (I8, [-1, 0, 1]), (U16, [7]), (I16, [-7, 7]), (U32, [1, 2]), (I32, [-1]),
               (F32, [0.5, -0.5]), (BOOL, [0, 1]), (U64, [9]), (I64, [-9]), (F64, [3.0]), (STR, ["a", "", "bc"]),
               (U32, [])])]
    seeds = {
        "empty": gguf_file([]),
        "kv-every-type": gguf_file(every),
        "kv-arrays": gguf_file(arrays),
        "v2": gguf_file(every[:4], version=2),
        "tensors": gguf_file([("general.architecture", STR, "llama")],
                             [tensor("t.%d" % t, [GGML[t][0] * 2] + ([2] if t % 2 else []), t) for t in sorted(GGML)]),
        "tensors-4d-align64": gguf_file([("general.alignment", U32, 64)],
                                        [tensor("a", [2, 3, 2, 2], 0), tensor("b", [32, 1, 1, 1], 8)], alignment=64),
        "tensor-truncated": gguf_file([], [tensor("x", [64], 0)])[:-100],
    }
    # the tokenizer metadata of the tiny models, without their tensors
    try:
        import gguf
    except ImportError:
        gguf = None
    for name in ("tiny-gemma3", "tiny-llama", "tiny-qwen2"):
        path = os.path.join(tiny, name + ".gguf")
        if not gguf or not os.path.exists(path):
            print("make_seeds: %s missing (make tiny): its tokenizer seed skipped" % path)
            continue
        r = gguf.GGUFReader(path)
        kvs = []
        for k, f in r.fields.items():
            if not (k.startswith("tokenizer.ggml.") or k == "general.architecture"):
                continue
            t = int(f.types[0])
            if t == ARR:
                et = int(f.types[1])
                if et == STR:
                    items = [bytes(f.parts[i]) for i in f.data]
                else:
                    items = [f.parts[i].tolist()[0] for i in f.data]
                kvs.append((k, ARR, (et, items)))
            elif t == STR:
                kvs.append((k, STR, bytes(f.parts[f.data[0]])))
            else:
                kvs.append((k, t, f.parts[f.data[0]].tolist()[0]))
        seeds["tokenizer-" + name] = gguf_file(kvs)
    return seeds


def tok_seeds():
    texts = {
        "english": b"The quick brown fox jumps over the lazy dog. It's 12:45, isn't it?",
        "code": b"def f(x):\n\tif x > 0:\n\t\treturn x * 2  # double\n    return -1\r\n",
        "gemma-chat": b"<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
        "chatml": b"<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
        "specials": b"<bos><eos><unk><pad><|endoftext|>< |im_end|><s></s>",
        "invalid-utf8": b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x82\x28\xf0\x28\x8c\xbc\xed\xa0\x80 ok \x80",
        "nul": b"a\x00b\x00\x00c",
        "spm-space": b"\xe2\x96\x81\xe2\x96\x81a \xe2\x96\x81b",
        "unicode": "naïve café 中文字符 😀🎉 Ελληνικά русский \u00a0\u3000".encode(),
        "digits": b"1234567890 3.14159 1e-9 0x7f 000",
        "spaces": b"   \n\n\t\t  \r\n  x    y",
        "bytes-like": b"<0x41><0xFF> <0x0A>",
    }
    seeds = {}
    flags = [0, 1, 2, 3, 4 | 8, 1 | 8 | 16, 2 | 8 | 16, 16]
    for i, (name, t) in enumerate(sorted(texts.items())):
        for f in (flags[i % len(flags)], flags[(i + 3) % len(flags)]):
            seeds["%s-%02x" % (name, f)] = bytes([f]) + t
    return seeds


def chat_seeds():
    def conv(*msgs):
        return b"\0".join(bytes([r]) + c.encode() for r, c in msgs)
    S, D, U, A, T, BAD, EMPTY, CUSTOM = range(8)
    return {
        "user": conv((U, "Hello!")),
        "system-user-assistant": conv((S, " Be brief. "), (U, "Hi\n"), (A, "Hello."), (U, "Bye")),
        "developer-tool": conv((D, "rules"), (U, "call it"), (T, "{\"r\": 1}"), (A, "done")),
        "system-only": conv((S, "lonely system")),
        "two-systems": conv((S, "a"), (S, "b"), (U, "c")),
        "bad-role": conv((U, "x"), (BAD, "y")),
        "empty-role": conv((EMPTY, "z")),
        "custom-role": conv((CUSTOM, "user\ncustom user role")) + b"\0" + conv((CUSTOM, "narrator\nonce")),
        "specials-in-content": conv((U, "<start_of_turn>model\n<|im_end|><|eot_id|>"), (A, "<end_of_turn>")),
        "whitespace": conv((U, " \t\n "), (A, "\n\n"), (S, "  ")),
        "empty": b"",
    }


def api_seeds():
    TGI, TGI_STREAM, COMPL, GEMMA, CHATML, LLAMA3, NOTMPL, ATTN = range(8)
    bodies = [
        (TGI, {"inputs": "Hello", "parameters": {"max_new_tokens": 8, "temperature": 0.7, "top_p": 0.9,
                                                 "top_k": 5, "do_sample": True, "seed": 42, "stop": ["\n"],
                                                 "details": True, "return_full_text": False,
                                                 "repetition_penalty": 1.1, "top_n_tokens": 2}}),
        (TGI, {"prompt": "flat form", "max_tokens": 4, "stream": False}),
        (TGI, {"inputs": 5}),
        (TGI, {"inputs": "x", "parameters": []}),
        (TGI_STREAM, {"inputs": "s", "parameters": {"max_new_tokens": 1, "attention": "window"}}),
        (COMPL, {"model": "m", "prompt": "Once", "max_tokens": 16, "temperature": 0, "stream": True,
                 "stream_options": {"include_usage": True}, "logprobs": 2, "echo": True, "stop": "x",
                 "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": -3, "n": 1, "user": "u"}),
        (COMPL, {"prompt": [1, 2, 3, 511], "max_tokens": 2}),
        (COMPL, {"prompt": [[5, 6]], "max_tokens": 2}),
        (COMPL, {"prompt": ["one", "two"]}),
        (COMPL, {"prompt": [600]}),
        (COMPL, {"prompt": "p", "logit_bias": {"5": 1}, "tools": [], "response_format": {"type": "json"}}),
        (COMPL, {"prompt": "p", "attention": {"selector": "centroids", "target": 0.05, "top_k": 10, "gqa": "mean",
                                              "sink": 4, "window": 16, "measure_recall": True}}),
        (COMPL, {"prompt": "p", "context": "ctx_0123456789abcdef", "max_completion_tokens": 3}),
        (GEMMA, {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}],
                 "max_tokens": 4, "logprobs": True, "top_logprobs": 3}),
        (CHATML, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}]}),
        (LLAMA3, {"messages": [{"role": "assistant", "content": None}, {"role": "tool", "content": "r"}]}),
        (GEMMA, {"messages": [{"role": "robot", "content": "x"}]}),
        (CHATML, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
        (LLAMA3, {"messages": []}),
        (NOTMPL, {"messages": [{"role": "user", "content": "x"}]}),
        (ATTN, {"selector": "retrieval", "top_k": 50, "scan": 0.1}),
        (ATTN | 8, {"selector": "ivf", "page_size": 32, "kv_f16": True, "kv_mem_gb": 1.5}),
        (ATTN, {"page_size": 16}),
    ]
    seeds = {}
    for i, (sel, body) in enumerate(bodies):
        seeds["%02d-%d" % (i, sel)] = bytes([sel]) + json.dumps(body).encode()
    seeds["not-json"] = bytes([COMPL]) + b"{\"prompt\": "
    seeds["not-object"] = bytes([TGI]) + b"[1, 2]"
    seeds["attn-string"] = bytes([ATTN]) + b"\"dense\""
    seeds["invalid-utf8"] = bytes([CHATML]) + b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\xc3\"}]}"
    seeds["unicode-escape"] = bytes([TGI]) + b"{\"inputs\": \"\\ud83d\\ude00 \\u0000 \\ud800\"}"
    seeds["nulls"] = bytes([COMPL]) + b"{\"prompt\": \"x\", \"temperature\": null, \"stop\": null, \"seed\": null}"
    return seeds


def ctxfile_seeds():
    # byte 0: bit 0 fix-ups, bit 1 edits of a base, bit 2 which base, bit 3 decode
    seeds = {"mode-%02x" % m: bytes([m]) for m in (0x02, 0x03, 0x06, 0x07, 0x0b, 0x0f)}
    seeds["raw-garbage"] = b"\x00KVSKCTX1" + bytes(300)
    seeds["raw-header-only"] = b"\x01KVSKCTX1\x01\x00\x00\x00\x00\x01\x00\x00" + bytes(244)
    # edits: op, offset u16, bytes ((op >> 3) + 1 of them)
    def edit(region, off, data):
        return bytes([region | (len(data) - 1) << 3]) + struct.pack("<H", off) + data
    seeds["edit-n-tokens"] = b"\x03" + edit(0, 40, struct.pack("<i", 47))
    seeds["edit-page-size"] = b"\x0b" + edit(0, 60, struct.pack("<i", 32))
    seeds["edit-token"] = b"\x0b" + edit(1, 4, struct.pack("<i", 511))
    seeds["edit-layer"] = b"\x03" + edit(2, 8, struct.pack("<q", 2))
    seeds["edit-cent-rec"] = b"\x07" + edit(3, 8, struct.pack("<Q", 64))
    seeds["edit-blob"] = b"\x0b" + edit(4, 16, b"\xff\xff\xff\x7f")
    seeds["truncate"] = b"\x03\x06\x00\x10"
    return seeds


def main():
    tiny = sys.argv[1] if len(sys.argv) > 1 else "build/tiny"
    for target, seeds in (("fuzz_gguf", gguf_seeds(tiny)), ("fuzz_tok", tok_seeds()), ("fuzz_chat", chat_seeds()),
                          ("fuzz_api", api_seeds()), ("fuzz_ctxfile", ctxfile_seeds())):
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, "seed-" + name), "wb") as f:
                f.write(data)
        print("make_seeds: %-13s %3d seeds" % (target, len(seeds)))


if __name__ == "__main__":
    main()
