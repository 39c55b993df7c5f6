"""The web UI (GET /, server/ui/index.html) in headless Chromium driven by Selenium, on the tiny
Gemma 3 model: the page loads with no console errors and fetches nothing from elsewhere; a chat
answer streams in with its token count and tokens/s; a document opened from a file is registered
as a context and its progress bar reaches 100%; a question on it answers, and the heat strip's
cells carry exactly the attention mass of the trace the answer brought (non-zero where the trace
is, the same as the same request over HTTP), with the most-read passages highlighted in the
document's text. On a server with --api-key the page asks for the key, refuses a wrong one,
works with the right one, and shows a 400 and a 429 as readable messages.

Screenshots: BUILD/ui-chat.png, BUILD/ui-document.png, BUILD/ui-errors.png.
Needs chromium, chromedriver and Selenium (scripts/setup.sh installs them: make test runs it).

Run as: python3 tests/test_ui.py BUILD_DIR MODEL_PATH (uses BUILD_DIR/tiny/tiny-gemma3.gguf)
"""
import http.client
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvserver import Checks, Server  # noqa: E402

BUILD = sys.argv[1]
MODEL = os.path.join(BUILD, "tiny", "tiny-gemma3.gguf")
KEY = "ui-test-key"
check = Checks()


def need(what):
    print(f"FAIL {what} is missing: run scripts/setup.sh (it installs chromium, chromium-driver and "
          "python3-selenium; make test runs it first)", flush=True)
    sys.exit(1)


try:
    import selenium  # noqa: F401
except ImportError:
    # Debian's python3-selenium, when python3 is another interpreter (a virtualenv, pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import selenium  # noqa: F401
    except ImportError:
        need("Selenium (python3-selenium)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROME = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
if not CHROME:
    need("Chromium (chromium)")
if not DRIVER:
    need("chromedriver (chromium-driver)")

# A few hundred words with one sentence that answers the question.
FILLER = [
    "The river town kept its ledgers in a stone house near the old bridge.",
    "Merchants came each spring with salt, wool and news from the coast.",
    "In winter the roads froze and the clerks copied the year's accounts by candlelight.",
    "A café by the square served bread, cheese and a bitter tea to travellers.",
    "The mill turned day and night while the water was high.",
]
NEEDLE = "The password of the harbour master is blue-falcon-42."
DOC = "\n\n".join(
    " ".join(f"{i + 1}. " + FILLER[(i + k) % len(FILLER)] for k in range(4))
    + ("\n\n" + NEEDLE if i == 4 else "")
    for i in range(8))
QUESTION = "What is the password of the harbour master?"


def wait_for(fn, timeout=20, step=0.05):
    """fn's first truthy value within timeout seconds, else None."""
    deadline = time.time() + timeout
    while True:
        try:
            v = fn()
        except Exception:  # the element is being re-rendered
            v = None
        if v or time.time() > deadline:
            return v
        time.sleep(step)


def js(d, script, *args):
    return d.execute_script(script, *args)


def last_answer_state(d):
    return js(d, "const m = document.querySelector('#messages .msg.assistant:last-child');"
                 "return m && m.dataset.state !== 'streaming' ? m.dataset.state : null")


def set_setting(d, name, value):
    if not d.find_element(By.ID, "set-" + name).is_displayed():
        d.find_element(By.ID, "settings-btn").click()
    f = d.find_element(By.ID, "set-" + name)
    f.clear()
    f.send_keys(str(value))


def ask(d, text, timeout=30):
    """Types a question, sends it, waits for the answer to end; returns its state."""
    d.find_element(By.ID, "prompt").send_keys(text)
    d.find_element(By.ID, "send").click()
    return wait_for(lambda: last_answer_state(d), timeout)


def severe(d):
    return [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]


def new_driver():
    o = webdriver.ChromeOptions()
    o.binary_location = CHROME
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
              "--disable-dev-shm-usage", "--disable-extensions"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=o)


def page_and_chat(d, s):
    url = f"http://127.0.0.1:{s.port}/"
    st, h, body = s.request("GET", "/")
    check(st == 200 and h.get("content-type") == "text/html; charset=utf-8" and h.get("cache-control") == "no-cache"
          and "<script>" in body, "GET /: the page, text/html, no-cache")
    st, h, _ = s.request("HEAD", "/")
    check(st == 200 and h.get("content-type", "").startswith("text/html"), "HEAD /: 200")
    check("src=\"http" not in body and "href=\"http" not in body and "@import" not in body,
          "the page loads nothing from elsewhere")

    d.get(url)
    check(wait_for(lambda: "tiny-gemma3" in d.find_element(By.ID, "model").text, 10),
          "the header shows the model from GET /info")
    check(wait_for(lambda: d.find_element(By.ID, "st-state").text == "ready", 10)
          and wait_for(lambda: d.find_element(By.ID, "st-running").text.endswith("/2"), 5),
          "the server panel shows the state and sequences from /metrics")
    opts = js(d, "return [...document.querySelectorAll('#set-selector option')].map(o => o.value)")
    check(opts[:1] == [""] and {"dense", "centroids", "retrieval"} <= set(opts), f"the attention selectors ({opts})")

    # greedy: the tiny model writes 1500 tokens with no end of sequence, time to see it stream
    set_setting(d, "temperature", 0)
    set_setting(d, "max_tokens", 1500)
    d.find_element(By.ID, "prompt").send_keys("Write a long story.")
    d.find_element(By.ID, "send").click()
    partial = wait_for(lambda: js(d, "const m = document.querySelector('#messages .msg.assistant:last-child');"
                                     "return m.dataset.state === 'streaming' && m.querySelector('.body').textContent"), 10)
    check(partial, f"the answer streams in: its text shows while it is generated ({partial!r:.40})")
    d.find_element(By.ID, "stop").click()
    state = wait_for(lambda: last_answer_state(d), 5)
    text = js(d, "return document.querySelector('#messages .msg.assistant:last-child .body').textContent")
    meta = d.find_element(By.CSS_SELECTOR, "#messages .msg.assistant:last-child .meta").text
    check(state == "stopped" and text.startswith(partial) and "stopped" in meta, f"Stop ends it ({state}, {meta})")
    check(wait_for(lambda: s.metric('kvseek_generations_finished_total{reason="cancelled"}') >= 1, 5),
          "and the server cancels the generation")

    set_setting(d, "max_tokens", 16)
    d.find_element(By.ID, "regen").click()
    state = wait_for(lambda: last_answer_state(d), 20)
    text = js(d, "return document.querySelector('#messages .msg.assistant:last-child .body').textContent")
    meta = d.find_element(By.CSS_SELECTOR, "#messages .msg.assistant:last-child .meta").text
    n = len(d.find_elements(By.CSS_SELECTOR, "#messages .msg"))
    check(state == "done" and text.strip() != "" and n == 2, f"Regenerate answers again in place ({state}, {n} messages)")
    check("16 tokens" in meta and "tok/s" in meta and "prompt tokens" in meta, f"with its token counts and tok/s ({meta})")
    d.save_screenshot(os.path.join(BUILD, "ui-chat.png"))
    errs = severe(d)
    check(not errs, f"no console errors ({errs})")


def document(d, s):
    path = os.path.join(tempfile.mkdtemp(prefix="kvseek-ui-"), "harbour.txt")
    with open(path, "w") as f:
        f.write(DOC)
    d.find_element(By.ID, "add-doc-btn").click()
    d.find_element(By.ID, "doc-file").send_keys(path)  # through the FileReader
    check(wait_for(lambda: js(d, "return document.getElementById('doc-text').value") == DOC, 5),
          f"the opened file fills the text ({len(DOC.split())} words)")
    d.find_element(By.ID, "doc-register").click()
    seen = []

    def ready():
        r = js(d, "const l = document.querySelector('#docs li[data-status]');"
                  "return l && [l.dataset.status, l.querySelector('[role=progressbar]').getAttribute('aria-valuenow')]")
        if r:
            seen.append(int(r[1]))
        return r and r[0] != "building" and r
    r = wait_for(ready, 60)
    check(r == ["ready", "100"], f"the document reaches ready with the bar at 100% (seen {sorted(set(seen))})")
    check(all(a <= b for a, b in zip(seen, seen[1:])), "the progress bar never goes back")
    cid = js(d, "return document.querySelector('#docs li[data-status]').dataset.id")
    st, _, ctx = s.request("GET", "/v1/contexts/" + cid)
    check(st == 200 and ctx["status"] == "ready", f"the context is on the server ({cid})")
    check(d.find_element(By.ID, "doc").is_displayed() and d.find_element(By.ID, "doc-view").text.startswith("1. "),
          "a chat on the document opens with its text")

    set_setting(d, "max_tokens", 8)
    set_setting(d, "temperature", 0)
    # window: the sink and the last tokens only, so the buckets between get no mass
    Select(d.find_element(By.ID, "set-selector")).select_by_value("window")
    state = ask(d, QUESTION, 60)
    check(state == "done", f"a question on the document answers ({state})")
    trace = js(d, "return S.current.messages[S.current.messages.length - 1].trace")
    if not check(isinstance(trace, dict) and "mass" in trace, "the answer brought an attention trace"):
        return
    B, C = trace["bucket_tokens"], trace["context_tokens"]
    nb = -(-C // B)
    cells = js(d, "return [...document.querySelectorAll('#strip .cell')].map(c => [+c.dataset.bucket, +c.dataset.mass])")
    check(C == ctx["tokens"] and [b for b, _ in cells] == list(range(nb)),
          f"one strip cell per bucket of the context ({len(cells)} cells, {B} tokens each, {C} tokens)")
    check(all(abs(m - trace["mass"][b]) < 1e-12 for b, m in cells), "each cell holds its bucket's mass")
    lit = {b for b, m in cells if m > 0}
    check(lit == {b for b in range(nb) if trace["mass"][b] > 0} and lit,
          f"cells are non-zero exactly where the trace is ({len(lit)} of {nb})")
    painted = js(d, "return [...document.querySelectorAll('#strip .cell')].filter(c => c.style.background).length")
    check(painted == len(lit), "those cells and only those are coloured")
    # The first token comes from the prompt's last row, which reads the whole context, so every
    # bucket has some mass; a trace with gaps (every third bucket read) draws only those
    gaps = js(d, "const m = S.current.messages[S.current.messages.length - 1];"
                 "m.trace = {...m.trace, mass: m.trace.mass.map((v, b) => b % 3 ? 0 : v)};"
                 "renderDoc(); return m.trace.mass")
    lit3 = wait_for(lambda: js(d, "const c = [...document.querySelectorAll('#strip .cell')];"
                                  "return c.length && c.filter(x => +x.dataset.mass > 0 && x.style.background)"
                                  ".map(x => +x.dataset.bucket)"), 3)
    check(lit3 == [b for b in range(nb) if gaps[b] > 0] and len(lit3) < nb,
          f"a trace with gaps: cells coloured exactly where it has mass ({len(lit3)} of {nb})")
    js(d, "const m = S.current.messages[S.current.messages.length - 1]; m.trace = arguments[0]; renderDoc()", trace)
    wait_for(lambda: js(d, "return document.querySelectorAll('#doc-view .hot').length"), 3)

    # the same request over HTTP (greedy, so the same tokens) reports the same mass
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8, "temperature": 0,
            "attention": {"selector": "window", "trace": True}}
    st, _, ref = s.request("POST", f"/v1/contexts/{cid}/chat/completions", body)
    rm = ref.get("attention", {}).get("trace", {}).get("mass", []) if st == 200 else []
    check(len(rm) >= nb and all(abs(rm[b] - m) <= 2e-4 for b, m in cells)
          and {b for b in range(nb) if rm[b] > 0} == lit,
          "the strip matches the trace of the same request over HTTP")

    view = js(d, "return [...document.getElementById('doc-view').querySelectorAll('span[data-bucket]')]"
                 ".map(s => s.textContent).join('')")
    check(view == DOC, "the document's text is rebuilt exactly from the token pieces, one span per bucket")
    # the most-read buckets but the first (the attention sink's), ties in any order
    hot = js(d, "return [...document.querySelectorAll('#doc-view .hot')].map(s => +s.dataset.bucket)")
    mass = dict(cells)
    rest = [m for b, m in cells if b > 0 and b not in hot]
    check(len(hot) == min(5, len(lit - {0})) and 0 not in hot and all(mass[h] >= max(rest, default=0) for h in hot),
          f"the {len(hot)} most-read passages (the sink's bucket apart) are highlighted in the text")
    check(len(d.find_elements(By.CSS_SELECTOR, "#top-read li")) == len(hot), "and listed under the strip")
    last = max(b for b in lit)
    js(d, "document.getElementById('doc-view').scrollTop = 0")
    d.find_element(By.CSS_SELECTOR, f"#strip .cell[data-bucket='{last}']").click()
    check(wait_for(lambda: js(d, f"return document.querySelector('#doc-view span[data-bucket=\"{last}\"]')"
                                 ".classList.contains('flash') && document.getElementById('doc-view').scrollTop > 0"), 3),
          "clicking a strip cell scrolls the document to its passage")
    d.save_screenshot(os.path.join(BUILD, "ui-document.png"))
    errs = severe(d)
    check(not errs, f"no console errors ({errs})")


def key_and_errors(d, s):
    d.get(f"http://127.0.0.1:{s.port}/")
    dialog = lambda: js(d, "return document.getElementById('key-dialog').open") and d.find_element(By.ID, "key-input")
    check(wait_for(dialog, 10) and d.find_element(By.ID, "key-input").is_displayed(),
          "with --api-key the page asks for the key")
    d.find_element(By.ID, "key-input").send_keys("wrong")
    d.find_element(By.ID, "key-save").click()
    check(wait_for(lambda: dialog() and "refused" in d.find_element(By.ID, "key-why").text, 5),
          "a wrong key is refused and asked again")
    f = d.find_element(By.ID, "key-input")
    f.clear()
    f.send_keys(KEY)
    d.find_element(By.ID, "key-save").click()
    check(wait_for(lambda: "tiny-gemma3" in d.find_element(By.ID, "model").text, 10)
          and js(d, "return localStorage.getItem('kvseek.key')") == KEY,
          "with the right key the page works (GET /info) and keeps the key")
    set_setting(d, "max_tokens", 8)
    set_setting(d, "temperature", 0)  # greedy: a sampled answer may be an end of sequence at once
    state = ask(d, "Hi")
    text = js(d, "return document.querySelector('#messages .msg.assistant:last-child .body').textContent")
    check(state == "done" and text.strip(), f"a chat answer with the key ({state}, {text!r})")

    set_setting(d, "max_tokens", 0)
    state = ask(d, "An answer of no tokens?")
    err = wait_for(lambda: d.find_element(By.CSS_SELECTOR, "#messages .msg.assistant:last-child .error").text, 3)
    check(state == "error" and err and "400" in err and "max_tokens" in err, f"a 400 shows its message ({err!r})")

    # hold the only sequence (--parallel 1 --queue-size 0) with a long stream
    set_setting(d, "max_tokens", 8)
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    c.request("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 8000, "ignore_eos": True,
                                                     "stream": True}),
              {"Content-Type": "application/json", "Authorization": "Bearer " + KEY})
    r = c.getresponse()
    first = r.read1(4096) if r.status == 200 else b""
    try:
        state = ask(d, "Are you busy?")
        err = wait_for(lambda: d.find_element(By.CSS_SELECTOR, "#messages .msg.assistant:last-child .error").text, 3)
        check(b"data:" in first and state == "error" and err and "429" in err and "busy" in err.lower(),
              f"a 429 shows its message ({err!r})")
    finally:
        c.close()
    d.save_screenshot(os.path.join(BUILD, "ui-errors.png"))
    # the refused calls log "Failed to load resource"; nothing else may
    errs = [e for e in severe(d) if "Failed to load resource" not in e.get("message", "")]
    check(not errs, f"no script errors ({errs})")


def main():
    t0 = time.time()
    data = tempfile.mkdtemp(prefix="kvseek-ui-ctx-")
    d = new_driver()
    try:
        with Server(BUILD, MODEL, "--parallel", "2", "--data-dir", data) as s:
            page_and_chat(d, s)
            document(d, s)
        # --ctx-size 8192: room for a stream long enough to hold the only sequence on a fast machine
        with Server(BUILD, MODEL, "--parallel", "1", "--queue-size", "0", "--api-key", KEY, "--ctx-size", "8192",
                    "--data-dir", os.path.join(data, "keyed")) as s:
            key_and_errors(d, s)
    finally:
        d.quit()
        shutil.rmtree(data, ignore_errors=True)
    print(f"{time.time() - t0:.1f} s", flush=True)
    if check.failures:
        print(f"{check.failures} check(s) failed")
        sys.exit(1)
    print("all passed")


main()
