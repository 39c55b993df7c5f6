#!/usr/bin/env bash
# Load test for `kvseek serve` (or any OpenAI-compatible server): N concurrent clients, each
# sending M requests to /v1/completions with curl, streaming or not; prints one JSON line per
# phase with requests/s, latency p50/p99, time to first token p50/p99, failures and aggregate
# generated tokens/s. Every request is bounded (curl --max-time) and the run stops by itself.
#
#   scripts/loadtest.sh [-u URL] [-c CLIENTS] [-n REQUESTS_PER_CLIENT] [-t MAX_TOKENS]
#                       [-m stream|plain|both] [-p PROMPT] [-k API_KEY] [--temp T] [--top-k K]
#                       [--check-seeds] [--pid SERVER_PID] [--label NAME]
#
# --check-seeds: first sends each client's requests alone, one at a time, then all clients at
#   once with the same seeds, and reports how many texts came out identical ("same_seed_match").
# --pid: reads the server's resident memory (VmRSS) before and after the run.
# Every request sets ignore_eos, so each generates exactly MAX_TOKENS tokens and the throughput
# of different concurrency levels compares like for like. --temp 0 is greedy; --top-k K (the
# llama.cpp/vLLM extension) limits sampling to K candidates. Needs bash 5, curl and python3.
set -euo pipefail

url=http://127.0.0.1:8080 clients=8 reqs=4 max_tokens=64 mode=stream key="" temp=0.8 top_k=0
prompt="Write a short story about a lighthouse keeper who finds a message in a bottle."
check_seeds=0 pid="" label="" timeout_s=600
while [ $# -gt 0 ]; do
  case "$1" in
    -u|--url) url=$2; shift 2 ;;
    -c|--clients) clients=$2; shift 2 ;;
    -n|--requests) reqs=$2; shift 2 ;;
    -t|--max-tokens) max_tokens=$2; shift 2 ;;
    -m|--mode) mode=$2; shift 2 ;;
    -p|--prompt) prompt=$2; shift 2 ;;
    -k|--api-key) key=$2; shift 2 ;;
    --temp) temp=$2; shift 2 ;;
    --top-k) top_k=$2; shift 2 ;;
    --check-seeds) check_seeds=1; shift ;;
    --pid) pid=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "loadtest: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$mode" in stream|plain|both) ;; *) echo "loadtest: --mode is stream, plain or both" >&2; exit 2 ;; esac
case "$url" in http://127.*|http://localhost*|http://\[::1\]*) ;;
  *) echo "loadtest: refusing a non-loopback URL ($url)" >&2; exit 2 ;; esac

work=$(mktemp -d /tmp/kvseek-loadtest.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
auth=()
[ -n "$key" ] && auth=(-H "Authorization: Bearer $key")

rss_kb() { [ -n "$pid" ] && awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo null; }

# bodies DIR STREAM: DIR/body.C.R for every client C and request R (seed fixed by C and R, so
# a request sent alone and under load asks for the same text)
bodies() {
  PROMPT="$prompt" python3 - "$1" "$2" "$clients" "$reqs" "$max_tokens" "$temp" "$top_k" <<'PY'
import json, os, sys
d, stream, clients, reqs, max_tokens, temp, top_k = sys.argv[1:8]
for c in range(int(clients)):
    for r in range(int(reqs)):
        b = {"prompt": os.environ["PROMPT"], "max_tokens": int(max_tokens), "temperature": float(temp),
             "seed": 1000 * c + r + 1, "ignore_eos": True}
        if int(top_k) > 0:
            b["top_k"] = int(top_k)
        if stream == "1":
            b["stream"] = True
            b["stream_options"] = {"include_usage": True}
        with open(os.path.join(d, "body.%d.%d" % (c, r)), "w") as f:
            json.dump(b, f)
PY
}

# one request: writes OUT with "T0 <time>", the response (streamed lines prefixed with their
# arrival time), and "HTTPCODE <code> <curl exit>"
one() {
  local out=$1 body=$2 stream=$3 t0=$EPOCHREALTIME n=()
  [ "$stream" = 1 ] && n=(-N)
  echo "T0 $t0" > "$out"
  { curl -s "${n[@]}" --max-time "$timeout_s" "${auth[@]}" -H 'Content-Type: application/json' \
      --data-binary @"$body" -w '\nHTTPCODE %{http_code}\n' "$url/v1/completions" || echo "CURLFAIL $?"; } |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >> "$out"
}

# phase NAME STREAM CONCURRENT(1|0): every client's requests, clients in parallel or one by one
phase() {
  local name=$1 stream=$2 parallel=$3 dir="$work/$1"
  mkdir -p "$dir"
  bodies "$dir" "$stream"
  local t0=$EPOCHREALTIME
  for c in $(seq 0 $((clients - 1))); do
    if [ "$parallel" = 1 ]; then
      ( for r in $(seq 0 $((reqs - 1))); do one "$dir/out.$c.$r" "$dir/body.$c.$r" "$stream"; done ) &
    else
      for r in $(seq 0 $((reqs - 1))); do one "$dir/out.$c.$r" "$dir/body.$c.$r" "$stream"; done
    fi
  done
  wait
  echo "$t0 $EPOCHREALTIME" > "$dir/wall"
}

stats() { # stats NAME STREAM RSS_BEFORE RSS_AFTER [ALONE_NAME]
  python3 - "$work" "$1" "$2" "$clients" "$reqs" "$max_tokens" "$3" "$4" "${5:-}" "$label" <<'PY'
import glob, json, os, sys
work, name, stream, clients, reqs, max_tokens, rss0, rss1, alone, label = sys.argv[1:11]
stream = stream == "1"

def parse(path):
    t0, code, lines = None, None, []
    for raw in open(path, errors="replace"):
        parts = raw.rstrip("\n").split(" ", 1)
        if parts[0] == "T0":
            t0 = float(parts[1]); continue
        ts, line = float(parts[0]), parts[1] if len(parts) > 1 else ""
        if line.startswith("HTTPCODE"):
            code = int(line.split()[1])
        elif line.startswith("CURLFAIL"):
            code = -1
        else:
            lines.append((ts, line))
    text, toks, ttft, done, err = "", None, None, False, None
    if stream:
        for ts, line in lines:
            if not line.startswith("data: "):
                continue
            d = line[6:]
            if d == "[DONE]":
                done = True; continue
            try:
                j = json.loads(d)
            except ValueError:
                err = "bad json"; continue
            if "error" in j:
                err = j["error"]; continue
            if j.get("usage"):
                toks = j["usage"]["completion_tokens"]
            for ch in j.get("choices", []):
                if ch.get("text") and ttft is None:
                    ttft = ts - t0
                text += ch.get("text", "")
    else:
        try:
            j = json.loads("\n".join(l for _, l in lines))
            text = j["choices"][0]["text"]; toks = j["usage"]["completion_tokens"]; done = True
        except (ValueError, KeyError, IndexError):
            err = "bad response"
    end = lines[-1][0] if lines else t0
    ok = code == 200 and done and err is None
    return {"ok": ok, "latency": end - t0, "ttft": ttft, "tokens": toks or 0, "text": text}

def pct(v, p):
    if not v: return None
    v = sorted(v)
    return round(v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))], 4)

res = {}
for f in glob.glob(os.path.join(work, name, "out.*")):
    c, r = f.rsplit(".", 2)[-2:]
    res[(int(c), int(r))] = parse(f)
t0, t1 = map(float, open(os.path.join(work, name, "wall")).read().split())
wall = t1 - t0
good = [x for x in res.values() if x["ok"]]
gen = sum(x["tokens"] for x in good)
out = {"phase": name, "label": label or None, "stream": stream, "clients": int(clients),
       "requests": len(res), "max_tokens": int(max_tokens), "ok": len(good), "failures": len(res) - len(good),
       "wall_s": round(wall, 3), "req_s": round(len(good) / wall, 3) if wall > 0 else None,
       "latency_p50_s": pct([x["latency"] for x in good], 50), "latency_p99_s": pct([x["latency"] for x in good], 99),
       "ttft_p50_s": pct([x["ttft"] for x in good if x["ttft"] is not None], 50),
       "ttft_p99_s": pct([x["ttft"] for x in good if x["ttft"] is not None], 99),
       "gen_tokens": gen, "gen_tok_s": round(gen / wall, 2) if wall > 0 else None}
if stream:
    rates = [(x["tokens"] - 1) / (x["latency"] - x["ttft"]) for x in good
             if x["ttft"] is not None and x["tokens"] > 1 and x["latency"] > x["ttft"]]
    out["decode_tok_s_per_request_mean"] = round(sum(rates) / len(rates), 2) if rates else None
if alone:
    ref = {}
    for f in glob.glob(os.path.join(work, alone, "out.*")):
        c, r = f.rsplit(".", 2)[-2:]
        ref[(int(c), int(r))] = parse(f)
    same = sum(1 for k, x in res.items() if x["ok"] and k in ref and ref[k]["ok"] and ref[k]["text"] == x["text"])
    out["same_seed_match"] = "%d/%d" % (same, len(res))
    out["distinct_texts"] = len(set(x["text"] for x in good))
out["rss_kb_before"] = None if rss0 == "null" else int(rss0)
out["rss_kb_after"] = None if rss1 == "null" else int(rss1)
print(json.dumps(out))
PY
}

curl -sf --max-time 10 "$url/health" >/dev/null || { echo "loadtest: $url/health is not 200" >&2; exit 1; }
modes=()
case "$mode" in stream) modes=(1) ;; plain) modes=(0) ;; both) modes=(1 0) ;; esac
for s in "${modes[@]}"; do
  tag=$([ "$s" = 1 ] && echo stream || echo plain)
  if [ "$check_seeds" = 1 ]; then
    phase "alone-$tag" "$s" 0
  fi
  rss0=$(rss_kb)
  phase "concurrent-$tag" "$s" 1
  rss1=$(rss_kb)
  stats "concurrent-$tag" "$s" "$rss0" "$rss1" "$([ "$check_seeds" = 1 ] && echo "alone-$tag")"
done
