"""Hostile HTTP on a tiny model: every case gets a defined answer and the server keeps serving
others: a body over the limit, a client trickling its body (cut at request_timeout_s), hundreds
of idle connections (the connection limit holds, they time out, a new client is served), invalid
UTF-8 and NUL bytes in prompts, JSON nested 30,000 deep, numbers out of range, a prompt longer
than the context, a header of 64 KiB; no CORS unless configured; no prompt text in the log.

Run as: python3 tests/test_hostile.py BUILD_DIR MODEL_PATH (tiny models only)
"""
import json
import os
import socket
import sys
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


def raw(port, data, timeout=10):
    """Sends bytes, returns what comes back until the server closes or the timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return out


def alive(s):
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "ok", "max_tokens": 2}, timeout=30)
    return st == 200


SECRET = "zebra-violet-7731"
with Server(BUILD, GEMMA, "--ctx-size", "256", "--parallel", "2", "--max-body", "65536", "--timeout", "3",
            "--request-timeout", "3", "--connection-limit", "64") as s:
    st, h, b = s.request("POST", "/v1/completions", {"prompt": SECRET, "max_tokens": 2})
    check(st == 200 and "access-control-allow-origin" not in h, "no CORS header unless configured")
    st, _, b = s.request("POST", "/v1/completions", raw=b'{"prompt": "' + b"a" * 70000 + b'"}')
    check(st == 413 and alive(s), "a body over max_body_bytes: 413, still serving")

    # a client trickling its body: cut off after request_timeout_s, others served meanwhile
    t0 = time.time()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=15)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n{")
    closed_after = None
    served_meanwhile = alive(s)
    for _ in range(12):
        try:
            sock.sendall(b" ")
            time.sleep(1)
            sock.settimeout(0.01)
            if sock.recv(1) == b"":
                closed_after = time.time() - t0
                break
        except socket.timeout:
            pass
        except (ConnectionResetError, BrokenPipeError):
            closed_after = time.time() - t0
            break
        finally:
            sock.settimeout(15)
    sock.close()
    check(closed_after is not None and closed_after < 8 and served_meanwhile,
          f"a trickled body is cut off at the request timeout ({closed_after and round(closed_after, 1)} s)")

    # hundreds of idle connections: the limit holds, they time out, a new client gets in
    idle = []
    for _ in range(200):
        try:
            idle.append(socket.create_connection(("127.0.0.1", s.port), timeout=2))
        except OSError:
            break
    time.sleep(4.5)  # past the idle timeout
    ok_after = alive(s)
    for c in idle:
        c.close()
    check(ok_after and s.proc.poll() is None, f"{len(idle)} idle connections: timed out, a new client is served")

    # prompts with invalid UTF-8 and NUL bytes: answered, with valid JSON
    st, _, b = s.request("POST", "/v1/completions", raw=b'{"prompt": "a\xff\xfeb\\u0000c\\ud800", "max_tokens": 3}')
    check(st in (200, 400) and isinstance(b, dict), f"invalid UTF-8 / NUL / lone surrogate in a prompt: {st} with JSON")
    st, _, b = s.request("POST", "/generate", raw=b'{"inputs": "x\\u0000y", "parameters": {"max_new_tokens": 2}}')
    check(st == 200 and isinstance(b.get("generated_text"), str), "a NUL in a TGI prompt: 200")
    # deeply nested JSON
    st, _, b = s.request("POST", "/v1/completions", raw=b"[" * 30000 + b"]" * 30000)
    check(st == 400 and alive(s), "JSON nested 30,000 deep: 400, still serving")
    st, _, b = s.request("POST", "/v1/completions", raw=b'{"prompt": "x", "stop": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    check(st == 400, "a deeply nested field: 400")
    # numbers out of range
    for body, param in [({"prompt": "x", "max_tokens": 1e30}, "max_tokens"), ({"prompt": "x", "temperature": -1}, "temperature"),
                        ({"prompt": "x", "n": 1000}, "n"), ({"prompt": "x", "top_p": 7}, "top_p"),
                        ({"prompt": "x", "seed": 1e300}, "seed"), ({"prompt": "x", "max_tokens": -5}, "max_tokens"),
                        ({"prompt": "x", "logprobs": 99}, "logprobs"), ({"prompt": [10 ** 12]}, "prompt"),
                        ({"prompt": "x", "attention": {"top_k": 1e30}}, "attention.top_k")]:
        st, _, b = s.request("POST", "/v1/completions", body)
        check(st == 400 and b["error"]["param"] == param, f"{param} out of range: 400 naming it")
    st, _, b = s.request("POST", "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1e30}})
    check(st == 422 and b.get("error_type") == "validation", "TGI max_new_tokens 1e30: 422")
    st, _, b = s.request("POST", "/v1/completions", {"prompt": "word " * 600})
    check(st == 400 and b["error"]["code"] == "context_length_exceeded", "a prompt longer than the context: 400")
    # a huge header
    out = raw(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
    check((out.startswith(b"HTTP/1.1 4") or out == b"") and alive(s), f"a 64 KiB header: {out[:12]!r}, still serving")
    # garbage on the socket
    out = raw(s.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(500))
    check(alive(s), "TLS bytes / garbage on the socket: still serving")
    # concurrent hostile and normal clients
    errors = []

    def normal():
        try:
            if not alive(s):
                errors.append("normal request failed")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    def hostile():
        raw(s.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{", timeout=2)
    ts = [threading.Thread(target=normal) for _ in range(4)] + [threading.Thread(target=hostile) for _ in range(8)]
    [t.start() for t in ts]
    [t.join(60) for t in ts]
    check(not errors, f"normal clients served among hostile ones {errors}")
    check(SECRET not in s.read_log(), "prompt text never reaches the log")
    check(s.proc.poll() is None and s.stop() == 0, "the server survived everything and stops cleanly")

with Server(BUILD, GEMMA, "--ctx-size", "256", "--cors-origin", "https://app.example") as s:
    st, h, _ = s.request("GET", "/v1/models")
    check(h.get("access-control-allow-origin") == "https://app.example", "CORS when configured")

print("all passed" if failures == 0 else f"{failures} failed")
sys.exit(1 if failures else 0)
