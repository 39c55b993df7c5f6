"""Test helper: runs `kvseek serve` on a free loopback port and talks HTTP to it with the
standard library only (http.client), so a test sees exactly what goes over the wire.

    with Server(build, model, "--parallel", "2") as s:
        status, headers, body = s.request("POST", "/generate", {"inputs": "hi"})
        for event in s.stream("/v1/completions", {...}):   # parsed SSE data (dicts, or "[DONE]")
            ...
The server picks its own port (--port 0) and logs it; the helper reads it from the log, so two
tests never race for a port. The server is always stopped (SIGTERM, then SIGKILL) on exit.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import tempfile
import time


class Server:
    def __init__(self, build, model, *args, env=None, wait_ready=True, preexec_fn=None):
        self.log = tempfile.NamedTemporaryFile("w+", prefix="kvseek-serve-", suffix=".log", delete=False)
        cmd = [os.path.join(build, "kvseek"), "serve", "-m", model, "--host", "127.0.0.1", "--port", "0",
               "-c", _empty_config(), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, preexec_fn=preexec_fn)
        self.port = None
        deadline = time.time() + 30
        while time.time() < deadline and self.port is None:
            m = re.search(r"listening on http://[^:\s]+:(\d+)", self.read_log())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                raise RuntimeError("kvseek serve exited: " + self.read_log())
            else:
                time.sleep(0.02)
        if self.port is None:
            self.kill()
            raise RuntimeError("kvseek serve did not start: " + self.read_log())
        if wait_ready:
            while time.time() < deadline:
                try:
                    if self.request("GET", "/health")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.02)
            else:
                self.kill()
                raise RuntimeError("kvseek serve never became ready: " + self.read_log())

    def read_log(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=None, timeout=60):
        """Returns (status, headers dict with lower-case names, parsed JSON or raw text)."""
        c = self.conn(timeout)
        h = dict(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        try:
            return r.status, hdrs, json.loads(payload)
        except ValueError:
            return r.status, hdrs, payload.decode("utf-8", "replace")

    def stream(self, path, body, headers=None, timeout=60):
        """Yields each SSE event's data: a dict, or the string "[DONE]". Raises on a non-200."""
        c = self.conn(timeout)
        h = {"Content-Type": "application/json", **(headers or {})}
        c.request("POST", path, body=json.dumps(body).encode(), headers=h)
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError("stream status %d: %s" % (r.status, r.read()[:300]))
        assert r.getheader("Content-Type", "").startswith("text/event-stream")
        try:
            for data in sse_events(r):
                yield data
        finally:
            c.close()

    def metric(self, name):
        """Sum of every sample of a metric whose name and labels start with `name`."""
        _, _, text = self.request("GET", "/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status (None when it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def sse_events(resp):
    """Parses a text/event-stream response: yields the JSON of each data line ("[DONE]" as is)."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    data = line[5:].strip().decode()
                    yield data if data == "[DONE]" else json.loads(data)


_EMPTY = None


def _empty_config():
    """An empty config file, so the repository's configs/server.json does not leak into tests."""
    global _EMPTY
    if _EMPTY is None:
        f = tempfile.NamedTemporaryFile("w", prefix="kvseek-empty-", suffix=".json", delete=False)
        f.write("{}")
        f.close()
        _EMPTY = f.name
    return _EMPTY


class Checks:
    """The tests' `check(cond, what)`: prints an ok/FAIL line, counts failures, returns cond."""

    def __init__(self):
        self.failures = 0

    def __call__(self, cond, what):
        print(("ok   " if cond else "FAIL ") + what, flush=True)
        if not cond:
            self.failures += 1
        return cond
