"""llama.cpp reference figures for a GGUF model, through llama-cpp-python (run it with the
python that scripts/llamacpp_venv.sh prints). Prints JSON lines:
  greedy: the greedy token ids after a prompt
  perplexity: llama.cpp's perplexity definition (non-overlapping windows of ctx tokens, BOS
              replacing each window's first token, second half scored) over a text file
Usage: python llamacpp_ref.py MODEL greedy PROMPT N
       python llamacpp_ref.py MODEL perplexity FILE CTX [THREADS]
"""
import json
import sys
import time

import numpy as np
from llama_cpp import Llama

model, mode = sys.argv[1], sys.argv[2]
if mode == "greedy":
    m = Llama(model, n_ctx=2048, n_threads=2, verbose=False, logits_all=True)
    toks = m.tokenize(sys.argv[3].encode(), add_bos=True, special=True)
    m.eval(toks)
    out = []
    for _ in range(int(sys.argv[4])):
        t = int(np.argmax(m.scores[m.n_tokens - 1]))
        out.append(t)
        m.eval([t])
    print(json.dumps({"greedy": out, "prompt_tokens": toks, "text": m.detokenize(out).decode(errors="replace")}))
elif mode == "perplexity":
    ctx = int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    m = Llama(model, n_ctx=ctx, n_batch=ctx, n_threads=threads, verbose=False, logits_all=True)
    toks = m.tokenize(open(sys.argv[3], "rb").read(), add_bos=True, special=False)
    bos = m.token_bos()
    nll, count = 0.0, 0
    t0 = time.time()
    for c in range(len(toks) // ctx):
        chunk = list(toks[c * ctx:(c + 1) * ctx])
        chunk[0] = bos
        m.reset()
        m.eval(chunk)
        lg = np.array(m.scores[:ctx], dtype=np.float64)
        for j in range(ctx // 2, ctx - 1):
            row = lg[j]
            mx = row.max()
            nll += mx + np.log(np.exp(row - mx).sum()) - row[chunk[j + 1]]
            count += 1
    print(json.dumps({"perplexity": float(np.exp(nll / count)), "tokens": len(toks), "ctx": ctx,
                      "scored": count, "seconds": time.time() - t0}))
