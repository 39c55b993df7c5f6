/* kvseek command line: one binary, one subcommand per task (generate, tokenize, detokenize,
 * perplexity, logits, info). Results go to stdout, logs and errors to stderr; a bad argument or
 * a bad model file is a one-line error and exit status 1 or 2, never a crash. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "context.h"
#include "model.h"
#include "quant.h"
#include "sampler.h"
#include "server.h"
#include "tok.h"
#include "tools.h"

#define KVSEEK_VERSION "0.1.0"

int tool_physical_cores(void) {
    int n_cpu = (int)sysconf(_SC_NPROCESSORS_ONLN), seen = 0;
    long keys[1024];
    for (int c = 0; c < n_cpu && c < 1024; c++) {
        char path[128];
        long pkg = 0, core = -1;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        FILE *f = fopen(path, "r");
        if (!f) return n_cpu > 0 ? n_cpu : 1;
        if (fscanf(f, "%ld", &core) != 1) core = c;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        if ((f = fopen(path, "r"))) {
            if (fscanf(f, "%ld", &pkg) != 1) pkg = 0;
            fclose(f);
        }
        long key = pkg * 100000 + core;
        int dup = 0;
        for (int i = 0; i < seen; i++) dup |= keys[i] == key;
        if (!dup) keys[seen++] = key;
    }
    return seen > 0 ? seen : 1;
}

/* ---- argument parsing ---- */

typedef struct {
    const char *model, *prompt, *prompt_file, *prompt_ids, *tokens, *out, *context;
    eng_ctx_params cp;
    int n_predict, ctx, threads, chunk, top_k, repeat_last_n;
    eng_device device;
    float gpu_mem_gb;
    float temp, top_p, min_p, repeat_penalty;
    uint64_t seed;
    bool json, no_bos, no_special, help, seed_set, render_special;
    eng_attn_params attn;
} args;

static void usage(const char *cmd) {
    if (!cmd || !strcmp(cmd, "")) {
        printf("kvseek %s: long-context LLM inference\n\n"
               "usage: kvseek <command> [options]   (kvseek <command> --help for its options)\n\n"
               "commands:\n"
               "  generate     continue a prompt\n"
               "  tokenize     print the token ids of a text as a JSON array\n"
               "  detokenize   print the text of token ids\n"
               "  perplexity   llama.cpp-compatible perplexity over a text file\n"
               "  logits       write the logits of every position of a token sequence (f32)\n"
               "  info         print the model's hyperparameters as JSON\n"
               "  context      context build|info: register a fixed context (Squeezed Attention)\n"
               "  eval         one prefill per sample, the answer through each of several selectors (JSON lines)\n"
               "  bench-kernels  memory bandwidth, kernel GB/s, a model's bytes per token and tok/s ceiling\n"
               "  bench-gpu    GB/s of the CUDA sparse-attention kernel: device, mapped host, gathered\n"
               "  synth-model  write a llama GGUF with random weights in a given shape (offline benchmarks)\n"
               "  serve        HTTP server: TGI and OpenAI-compatible APIs, streaming, batching\n", KVSEEK_VERSION);
        return;
    }
    if (!strcmp(cmd, "context")) {
        printf("usage: kvseek context build -m MODEL -f FILE | -p TEXT | --tokens IDS -o DIR [options]\n"
               "       kvseek context info -m MODEL -o DIR\n\n"
               "Prefills the text once, clusters its keys per (global layer, KV head) and writes DIR\n"
               "atomically; `kvseek generate --context DIR` then answers after it.\n\n"
               "  --fine F        fine centroids per key (default 0.05)\n"
               "  --coarse F      coarse centroids per key (default 0.01; 0: one level)\n"
               "  --obs N         observation window: last N tokens calibrate (default 100)\n"
               "  --attn-target F default share of the clustered keys read (default 0.03)\n"
               "  --sink N        first tokens always attended (default 128)\n"
               "  --tail N        last tokens of the context always attended (default 512)\n"
               "  --per-head-calib a threshold per (layer, head) (default: one global threshold)\n"
               "  --kv-f16        store the context's K and V as f16\n"
               "  --no-bos        do not prepend BOS\n");
        return;
    }
    printf("usage: kvseek %s -m MODEL", cmd);
    if (!strcmp(cmd, "generate")) {
        printf(" (-p PROMPT | -f PROMPT_FILE | --prompt-ids FILE) [options]\n\n"
               "  --prompt-ids FILE     the prompt as token ids, comma- or whitespace-separated, taken as\n"
               "                        they are (no BOS added)\n"
               "  -n, --n-predict N     tokens to generate (default 128)\n"
               "  --temp T              temperature; 0 = greedy (default 0.8)\n"
               "  --top-k K             (default 40; 0 = off)\n"
               "  --top-p P             (default 0.95; 1 = off)\n"
               "  --min-p P             (default 0.05; 0 = off)\n"
               "  --repeat-penalty R    (default 1.0 = off)\n"
               "  --repeat-last-n N     tokens the penalty looks back (default 64)\n"
               "  -s, --seed S          sampling seed (default: random)\n"
               "  -c, --ctx-size N      KV cache capacity (default: prompt + n)\n"
               "  --no-bos              do not prepend BOS\n"
               "  --no-special          treat special-token text in the prompt as plain text\n"
               "  --json                print one JSON object with tokens, text, timings, attention stats\n"
               "  --context DIR         answer after a registered context (kvseek context build)\n"
               "\nattention over the offloaded KV cache (DESIGN.md):\n");
        eng_attn_usage(stdout, 24, NULL);
    } else if (!strcmp(cmd, "tokenize")) {
        printf(" -p TEXT | -f FILE [--no-bos] [--no-special]\n");
    } else if (!strcmp(cmd, "detokenize")) {
        printf(" -p IDS | -f FILE [--special]\n  IDS: a JSON array or comma-separated ids\n");
    } else if (!strcmp(cmd, "perplexity")) {
        printf(" -f TEXT_FILE [--ctx N (default 512)] [--json]\n"
               "  Same definition as llama.cpp's perplexity tool: non-overlapping windows of N\n"
               "  tokens, each from an empty cache (first token replaced by BOS when the model\n"
               "  adds one), the second half of each window scored.\n");
    } else if (!strcmp(cmd, "logits")) {
        printf(" --tokens ID,ID,... --out FILE [--chunk N]\n"
               "  Writes n_tokens x n_vocab little-endian f32 logits, one row per position.\n");
    } else {
        printf("\n");
    }
    printf("  -t, --threads N       threads (default: physical cores)\n"
           "  --chunk N             prefill chunk size in tokens (default 256; 1024 on a GPU)\n"
           "  --device cpu|cuda     where the forward pass runs (default cpu; cuda falls back to the\n"
           "                        CPU with a log line when no GPU is usable)\n"
           "  --gpu-mem-gb G        GPU memory budget for weights and buffers (default: all free)\n"
           "  -h, --help            this help\n");
}

static int parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->n_predict = 128;
    a->temp = 0.8f; a->top_k = 40; a->top_p = 0.95f; a->min_p = 0.05f;
    a->repeat_penalty = 1.0f; a->repeat_last_n = 64;
    a->attn = eng_attn_default();
    a->cp = eng_ctx_params_default();
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char err[256];
        int used;
#define IS(x) (!strcmp(o, x))
#define NEED() do { if (!v) { fprintf(stderr, "error: %s needs a value\n", o); return -1; } i++; } while (0)
#define INT(dst, lo, hi) do { NEED(); if (parse_int(v, lo, hi, &(dst))) { \
        fprintf(stderr, "error: %s: '%s' is not an integer in [%d, %d]\n", o, v, lo, hi); return -1; } } while (0)
#define FLT(dst) do { NEED(); if (parse_float(v, &(dst))) { \
        fprintf(stderr, "error: %s: '%s' is not a number\n", o, v); return -1; } } while (0)
        if (IS("-h") || IS("--help")) a->help = true;
        else if (IS("-m") || IS("--model")) { NEED(); a->model = v; }
        else if (IS("-p") || IS("--prompt")) { NEED(); a->prompt = v; }
        else if (IS("-f") || IS("--file")) { NEED(); a->prompt_file = v; }
        else if (IS("--prompt-ids")) { NEED(); a->prompt_ids = v; }
        else if (IS("--tokens")) { NEED(); a->tokens = v; }
        else if (IS("-o") || IS("--out")) { NEED(); a->out = v; }
        else if (IS("-n") || IS("--n-predict")) INT(a->n_predict, 0, 1 << 24);
        else if (IS("-c") || IS("--ctx-size") || IS("--ctx")) INT(a->ctx, 1, 1 << 24);
        else if (IS("-t") || IS("--threads")) INT(a->threads, 1, 1024);
        else if (IS("--chunk")) INT(a->chunk, 1, 1 << 16);
        else if (IS("--device")) {
            NEED();
            if (!strcmp(v, "cpu")) a->device = ENG_DEVICE_CPU;
            else if (!strcmp(v, "cuda")) a->device = ENG_DEVICE_CUDA;
            else { fprintf(stderr, "error: --device: '%s' is not cpu or cuda\n", v); return -1; }
        }
        else if (IS("--gpu-mem-gb")) {
            FLT(a->gpu_mem_gb);
            if (a->gpu_mem_gb < 0) { fprintf(stderr, "error: --gpu-mem-gb must be >= 0\n"); return -1; }
        }
        else if (IS("--top-k")) INT(a->top_k, 0, 1 << 30);
        else if (IS("--repeat-last-n")) INT(a->repeat_last_n, -1, 1 << 30);
        else if (IS("--temp")) FLT(a->temp);
        else if (IS("--top-p")) FLT(a->top_p);
        else if (IS("--min-p")) FLT(a->min_p);
        else if (IS("--repeat-penalty")) FLT(a->repeat_penalty);
        else if (IS("-s") || IS("--seed")) {
            NEED();
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "error: --seed: '%s' is not a non-negative integer\n", v);
                return -1;
            }
            a->seed = s;
            a->seed_set = true;
        }
        else if (IS("--json")) a->json = true;
        else if (IS("--context")) { NEED(); a->context = v; }
        else if (IS("--fine")) FLT(a->cp.fine_frac);
        else if (IS("--coarse")) FLT(a->cp.coarse_frac);
        else if (IS("--obs")) INT(a->cp.obs_tokens, 1, 1 << 20);
        else if (IS("--tail")) INT(a->cp.n_tail, 0, 1 << 24);
        else if (IS("--per-head-calib")) a->cp.global_calib = 0;
        else if ((used = eng_attn_set_arg(&a->attn, o, v, err, sizeof err)) != 0) {
            if (used < 0) {
                fprintf(stderr, "error: %s\n", err);
                return -1;
            }
            i += used - 1;
        }
        else if (IS("--no-bos")) a->no_bos = true;
        else if (IS("--no-special")) a->no_special = true;
        else if (IS("--special")) a->render_special = true;
        else {
            fprintf(stderr, "error: unknown option '%s' (see kvseek %s --help)\n", o, argv[1]);
            return -1;
        }
#undef IS
#undef NEED
#undef INT
#undef FLT
    }
    if (a->top_p <= 0.0f || a->top_p > 1.0f) {
        fprintf(stderr, "error: --top-p must be in (0, 1]\n");
        return -1;
    }
    if (a->min_p < 0.0f || a->min_p > 1.0f) {
        fprintf(stderr, "error: --min-p must be in [0, 1]\n");
        return -1;
    }
    if (a->temp < 0.0f) {
        fprintf(stderr, "error: --temp must be >= 0\n");
        return -1;
    }
    if (a->repeat_penalty <= 0.0f) {
        fprintf(stderr, "error: --repeat-penalty must be > 0\n");
        return -1;
    }
    return 0;
}

char *tool_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "error: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "error: cannot read %s\n", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static eng_model *load_model(const args *a) {
    if (!a->model) {
        fprintf(stderr, "error: no model given (-m MODEL)\n");
        return NULL;
    }
    eng_model_params mp = {.n_threads = a->threads > 0 ? a->threads : tool_physical_cores(), .chunk = a->chunk,
                           .attn = a->attn, .device = a->device, .gpu_mem_gb = a->gpu_mem_gb};
    char err[512];
    double t0 = krn_now_s() * 1e3;
    eng_model *m = eng_model_load(a->model, &mp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "error: %s\n", err);
        return NULL;
    }
    const eng_hparams *hp = eng_model_hparams(m);
    fprintf(stderr, "kvseek: loaded %s (%s, %d layers, n_embd %d, %d/%d heads, vocab %d) in %.0f ms, %d threads, %s\n",
            a->model, hp->arch_name, hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv,
            hp->n_vocab, krn_now_s() * 1e3 - t0, mp.n_threads, eng_model_device(m));
    return m;
}

int32_t *tool_tokenize(const tok_vocab *v, const char *text, size_t len, bool add_special,
                         bool parse_special, int64_t *n_out) {
    int64_t cap = (int64_t)len + 16;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    if (!ids) return NULL;
    int64_t n = tok_encode(v, text, len, add_special, parse_special, ids, cap);
    if (n > cap) {
        int32_t *nb = realloc(ids, sizeof(int32_t) * n);
        if (!nb) { free(ids); return NULL; }
        ids = nb;
        n = tok_encode(v, text, len, add_special, parse_special, ids, n);
    }
    if (n < 0) {
        fprintf(stderr, "error: tokenization failed\n");
        free(ids);
        return NULL;
    }
    *n_out = n;
    return ids;
}

/* Prompt text from -p or -f; the caller frees. */
static char *prompt_text(const args *a, size_t *len) {
    if (a->prompt && a->prompt_file) {
        fprintf(stderr, "error: give either -p or -f, not both\n");
        return NULL;
    }
    if (a->prompt_file) return tool_read_file(a->prompt_file, len);
    if (!a->prompt) {
        fprintf(stderr, "error: no prompt given (-p TEXT or -f FILE)\n");
        return NULL;
    }
    *len = strlen(a->prompt);
    return strdup(a->prompt);
}

/* Parses "[1, 2, 3]" or "1,2,3"; returns a malloc'd array or NULL with a message. */
static int32_t *parse_ids(const char *s, int64_t *n_out) {
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    const char *p = s;
    while (ids && *p) {
        while (*p == ' ' || *p == '[' || *p == ']' || *p == ',' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            size_t word = strcspn(p, " ,\t\r\n"); /* the message stays on one line */
            fprintf(stderr, "error: invalid token id near '%.*s'\n", (int)(word < 16 ? word : 16), p);
            free(ids);
            return NULL;
        }
        if (n == cap) {
            int32_t *nb = realloc(ids, sizeof(int32_t) * (cap *= 2));
            if (!nb) { free(ids); return NULL; }
            ids = nb;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    *n_out = (int64_t)n;
    return ids;
}

/* The ids of --prompt-ids (text: the file's contents), each checked against the vocab; a
 * malloc'd array (caller frees) or NULL with a message. */
static int32_t *prompt_from_ids(const tok_vocab *v, const char *text, int64_t *n_out) {
    int32_t *ids = parse_ids(text, n_out);
    if (!ids) return NULL;
    if (*n_out == 0) {
        fprintf(stderr, "error: --prompt-ids: the file holds no token ids\n");
        free(ids);
        return NULL;
    }
    for (int64_t i = 0; i < *n_out; i++) {
        if (ids[i] >= tok_n_vocab(v)) {
            fprintf(stderr, "error: --prompt-ids: token id %d is out of range [0, %d)\n", ids[i], tok_n_vocab(v));
            free(ids);
            return NULL;
        }
    }
    return ids;
}

/* ---- subcommands ---- */

/* The tokenizer of -m MODEL without the weights, or NULL after a one-line error. *g: the open
 * file the vocabulary reads from (gguf_close it after tok_free). */
static tok_vocab *load_vocab(const args *a, gguf_ctx **g) {
    char err[512];
    *g = a->model ? gguf_open(a->model, err, sizeof err) : NULL;
    tok_vocab *v = *g ? tok_load(*g, err, sizeof err) : NULL;
    if (!v) {
        fprintf(stderr, "error: %s\n", a->model ? err : "no model given (-m MODEL)");
        gguf_close(*g);
        *g = NULL;
    }
    return v;
}

static int cmd_tokenize(const args *a) {
    size_t len;
    char *text = prompt_text(a, &len);
    if (!text) return 1;
    gguf_ctx *g;
    tok_vocab *v = load_vocab(a, &g);
    int64_t n;
    int32_t *ids = v ? tool_tokenize(v, text, len, !a->no_bos, !a->no_special, &n) : NULL;
    if (ids) {
        putchar('[');
        for (int64_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("]\n");
    }
    int rc = ids ? 0 : 1;
    free(ids);
    tok_free(v);
    gguf_close(g);
    free(text);
    return rc;
}

/* Prints the text of ids[0, n) and a newline: 0, or 1 after a one-line error (an id out of
 * range). */
static int print_text(const tok_vocab *v, const int32_t *ids, int64_t n, bool special) {
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] >= tok_n_vocab(v)) {
            fprintf(stderr, "error: token id %d is out of range [0, %d)\n", ids[i], tok_n_vocab(v));
            return 1;
        }
    }
    int64_t need = tok_decode(v, ids, n, special, NULL, 0);
    char *out = malloc(need + 1);
    if (!out) return 1;
    tok_decode(v, ids, n, special, out, need + 1);
    fwrite(out, 1, need, stdout);
    putchar('\n');
    free(out);
    return 0;
}

static int cmd_detokenize(const args *a) {
    size_t len;
    char *text = prompt_text(a, &len);
    if (!text) return 1;
    int64_t n;
    int32_t *ids = parse_ids(text, &n);
    free(text);
    if (!ids) return 1;
    gguf_ctx *g;
    tok_vocab *v = load_vocab(a, &g);
    int rc = v ? print_text(v, ids, n, a->render_special) : 1;
    free(ids);
    tok_free(v);
    gguf_close(g);
    return rc;
}

static int cmd_generate(const args *a) {
    size_t len;
    if (a->prompt_ids && (a->prompt || a->prompt_file)) {
        fprintf(stderr, "error: give one of -p, -f and --prompt-ids\n");
        return 1;
    }
    char *text = a->prompt_ids ? tool_read_file(a->prompt_ids, &len) : prompt_text(a, &len);
    if (!text) return 1;
    eng_model *m = load_model(a);
    if (!m) { free(text); return 1; }
    const eng_hparams *hp = eng_model_hparams(m);
    const tok_vocab *v = eng_model_vocab(m);
    int rc = 1;
    int64_t n_prompt = 0;
    char err[512];
    eng_ctx *ctx = NULL;
    int64_t n_context = 0;
    if (a->context) {
        double tl = krn_now_s() * 1e3;
        ctx = eng_ctx_load(m, a->context, err, sizeof err);
        if (!ctx) {
            fprintf(stderr, "error: %s\n", err);
            free(text);
            eng_model_free(m);
            return 1;
        }
        n_context = eng_ctx_n_tokens(ctx);
        fprintf(stderr, "kvseek: context %s: %lld tokens, mapped in %.1f ms\n", a->context, (long long)n_context,
                krn_now_s() * 1e3 - tl);
    }
    /* after a context the prompt continues it: no second BOS */
    int32_t *prompt = a->prompt_ids ? prompt_from_ids(v, text, &n_prompt)
                                    : tool_tokenize(v, text, len, !a->no_bos && !ctx, !a->no_special, &n_prompt);
    int32_t *hist = NULL;
    float *logits = NULL;
    eng_seq *s = NULL;
    eng_sampler *smp = NULL;
    char *gen_text = NULL;
    size_t gen_len = 0, gen_cap = 0;
    if (!prompt) goto done;
    if (n_prompt == 0) {
        fprintf(stderr, "error: the prompt is empty and the model adds no BOS token\n");
        goto done;
    }
    int64_t n_ctx = (a->ctx ? a->ctx : n_prompt + a->n_predict) + n_context;
    if (n_prompt + n_context > n_ctx || n_ctx > INT32_MAX / 2) {
        fprintf(stderr, "error: the prompt has %lld tokens, more than the context size %lld\n",
                (long long)n_prompt, (long long)n_ctx);
        goto done;
    }
    if (n_ctx > hp->n_ctx_train)
        fprintf(stderr, "kvseek: warning: context %lld exceeds the model's training context %d\n",
                (long long)n_ctx, hp->n_ctx_train);
    s = eng_seq_create(m, (int)n_ctx, err, sizeof err);
    if (!s || (ctx && eng_seq_attach_ctx(s, ctx, err, sizeof err))) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    eng_sampler_params sp = {.temperature = a->temp, .top_k = a->top_k, .top_p = a->top_p, .min_p = a->min_p,
                             .repeat_penalty = a->repeat_penalty, .repeat_last_n = a->repeat_last_n,
                             .seed = a->seed};
    if (!a->seed_set) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    smp = eng_sampler_create(&sp, hp->n_vocab);
    logits = malloc(sizeof(float) * hp->n_vocab);
    hist = malloc(sizeof(int32_t) * (n_prompt + a->n_predict + 1));
    if (!smp || !logits || !hist) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }
    memcpy(hist, prompt, sizeof(int32_t) * n_prompt);
    int n_hist = (int)n_prompt;

    double t0 = krn_now_s() * 1e3;
    if (eng_forward(m, s, prompt, (int)n_prompt, logits, false, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    double t_prefill = krn_now_s() * 1e3 - t0;
    const char *finish = "length";
    int n_gen = 0;
    double t1 = krn_now_s() * 1e3;
    for (; n_gen < a->n_predict; ) {
        int32_t tok = eng_sampler_sample(smp, logits, hist, n_hist, NULL);
        hist[n_hist++] = tok;
        n_gen++;
        if (tok_is_eog(v, tok)) {
            finish = "eos_token";
            break;
        }
        char piece[256];
        int pl = tok_piece(v, tok, false, piece, sizeof piece);
        if (pl > (int)sizeof piece) pl = sizeof piece;
        if (gen_len + pl + 1 > gen_cap) {
            gen_cap = 2 * (gen_len + pl + 1) + 256;
            char *nb = realloc(gen_text, gen_cap);
            if (!nb) { fprintf(stderr, "error: out of memory\n"); goto done; }
            gen_text = nb;
        }
        memcpy(gen_text + gen_len, piece, pl);
        gen_len += pl;
        gen_text[gen_len] = 0;
        if (!a->json) {
            fwrite(piece, 1, pl, stdout);
            fflush(stdout);
        }
        if (n_gen == a->n_predict) break;
        if (eng_seq_pos(s) >= eng_seq_capacity(s)) {
            finish = "length";
            fprintf(stderr, "kvseek: context full after %d tokens\n", eng_seq_pos(s));
            break;
        }
        if (eng_forward(m, s, &tok, 1, logits, false, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto done;
        }
    }
    double t_decode = krn_now_s() * 1e3 - t1;
    /* the first sampled token comes from the prefill logits: n_gen - 1 decode forwards */
    int n_dec = n_gen > 1 ? n_gen - 1 : 0;
    double dec_tps = n_dec && t_decode > 0 ? n_dec / (t_decode / 1e3) : 0.0;
    fprintf(stderr, "\nkvseek: prompt %lld tokens in %.1f ms (%.1f tok/s), generated %d tokens, "
            "decode %.1f ms (%.2f tok/s), finish %s\n", (long long)n_prompt, t_prefill,
            n_prompt / (t_prefill / 1e3), n_gen, t_decode, dec_tps, finish);
    if (a->json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "prompt_tokens", (double)n_prompt);
        if (ctx) cJSON_AddNumberToObject(o, "context_tokens", (double)n_context);
        cJSON *arr = cJSON_AddArrayToObject(o, "tokens");
        for (int i = 0; i < n_gen; i++) cJSON_AddItemToArray(arr, cJSON_CreateNumber(hist[n_prompt + i]));
        char *clean = tok_utf8_clean(gen_text ? gen_text : "", gen_len); /* may stop inside a character */
        cJSON_AddStringToObject(o, "text", clean ? clean : "");
        free(clean);
        cJSON_AddNumberToObject(o, "generated_tokens", n_gen);
        cJSON_AddStringToObject(o, "finish_reason", finish);
        cJSON_AddStringToObject(o, "device", eng_model_device(m));
        cJSON_AddNumberToObject(o, "prefill_ms", t_prefill);
        cJSON_AddNumberToObject(o, "prefill_tok_s", n_prompt / (t_prefill / 1e3));
        cJSON_AddNumberToObject(o, "decode_ms", t_decode);
        cJSON_AddNumberToObject(o, "decode_tok_s", dec_tps);
        cJSON_AddNumberToObject(o, "seed", (double)sp.seed);
        eng_attn_stats st;
        eng_seq_attn_stats(s, &st);
        eng_attn_params ran;
        eng_seq_get_attn(s, &ran); /* "auto" resolved */
        cJSON *at = srv_attn_json(idx_kind_name(ran.selector), &st);
        cJSON_AddNumberToObject(at, "kv_bytes", (double)eng_seq_bytes(s));
        cJSON_AddItemToObject(o, "attn", at);
        char *js = cJSON_PrintUnformatted(o);
        if (js) printf("%s\n", js);
        free(js);
        cJSON_Delete(o);
    } else {
        putchar('\n');
    }
    rc = 0;
done:
    free(gen_text);
    free(hist);
    free(logits);
    free(prompt);
    eng_sampler_free(smp);
    eng_seq_free(s);
    eng_ctx_unref(ctx);
    eng_model_free(m);
    free(text);
    return rc;
}

static void ctx_info_json(const eng_ctx *c, const char *dir) {
    eng_ctx_info in;
    eng_ctx_get_info(c, &in);
    const eng_ctx_params *p = eng_ctx_get_params(c);
    printf("{\"dir\": \"%s\", \"tokens\": %d, \"clustered_keys\": %lld, \"fine_centroids\": %lld, "
           "\"coarse_centroids\": %lld, \"prefill_s\": %.3f, \"cluster_s\": %.3f, \"cluster_share_of_prefill\": %.4f, "
           "\"save_s\": %.3f, \"file_bytes\": %zu, \"target\": %g, \"sink\": %d, \"tail\": %d, \"global_calib\": %s}\n",
           dir, in.n_tokens, (long long)in.clustered_keys, (long long)in.n_fine, (long long)in.n_coarse,
           in.prefill_s, in.cluster_s, in.prefill_s > 0 ? in.cluster_s / in.prefill_s : 0.0, in.save_s,
           in.file_bytes, p->target, p->n_sink, p->n_tail, p->global_calib ? "true" : "false");
}

static void print_progress(void *ud, double done) {
    int *last = ud;
    int pct = (int)(done * 100);
    if (pct / 5 != *last / 5) {
        fprintf(stderr, "\rkvseek: building context %3d%%", pct);
        if (pct >= 100) fputc('\n', stderr);
        *last = pct;
    }
}

/* kvseek context build | info (argv shifted: a was parsed from "context SUB ...") */
static int cmd_context(const args *a, const char *sub) {
    if (!a->out) {
        fprintf(stderr, "error: context %s needs -o DIR\n", sub);
        return 1;
    }
    eng_model *m = load_model(a);
    if (!m) return 1;
    char err[512];
    int rc = 1;
    if (!strcmp(sub, "info")) {
        eng_ctx *c = eng_ctx_load(m, a->out, err, sizeof err);
        if (!c) fprintf(stderr, "error: %s\n", err);
        else ctx_info_json(c, a->out);
        rc = c ? 0 : 1;
        eng_ctx_unref(c);
        eng_model_free(m);
        return rc;
    }
    eng_ctx_params cp = a->cp;
    cp.n_sink = a->attn.n_sink;
    if (a->attn.target > 0) cp.target = a->attn.target;
    if (!(cp.fine_frac > 0 && cp.fine_frac <= 1) || !(cp.coarse_frac >= 0 && cp.coarse_frac <= 1)) {
        fprintf(stderr, "error: --fine must be in (0, 1] and --coarse in [0, 1]\n");
        eng_model_free(m);
        return 1;
    }
    int64_t n = 0;
    int32_t *ids = NULL;
    if (a->tokens) {
        ids = parse_ids(a->tokens, &n);
    } else {
        size_t len;
        char *text = prompt_text(a, &len);
        if (text) ids = tool_tokenize(eng_model_vocab(m), text, len, !a->no_bos, !a->no_special, &n);
        free(text);
    }
    if (!ids) {
        eng_model_free(m);
        return 1;
    }
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= eng_model_hparams(m)->n_vocab) {
            fprintf(stderr, "error: token id %d out of range\n", ids[i]);
            n = -1;
            break;
        }
    if (n == 0 || n > INT32_MAX / 2) fprintf(stderr, "error: the context is empty or too long\n");
    if (n > 0 && n <= INT32_MAX / 2) {
        int last = -1;
        eng_ctx *c = eng_ctx_build(m, ids, (int)n, &cp, print_progress, &last, err, sizeof err);
        if (!c || eng_ctx_save(c, a->out, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
        } else {
            ctx_info_json(c, a->out);
            rc = 0;
        }
        eng_ctx_unref(c);
    }
    free(ids);
    eng_model_free(m);
    return rc;
}

static int cmd_perplexity(const args *a) {
    if (!a->prompt_file) {
        fprintf(stderr, "error: perplexity needs a text file (-f FILE)\n");
        return 1;
    }
    size_t len;
    char *text = tool_read_file(a->prompt_file, &len);
    if (!text) return 1;
    eng_model *m = load_model(a);
    if (!m) { free(text); return 1; }
    const eng_hparams *hp = eng_model_hparams(m);
    const tok_vocab *v = eng_model_vocab(m);
    const int n_ctx = a->ctx ? a->ctx : 512;
    const int slice = 64; /* logits are produced this many positions at a time */
    int rc = 1;
    int64_t n_tok = 0;
    int32_t *toks = tool_tokenize(v, text, len, true, false, &n_tok);
    float *logits = malloc(sizeof(float) * slice * hp->n_vocab);
    int32_t *chunk = malloc(sizeof(int32_t) * n_ctx);
    char err[512];
    eng_seq *s = eng_seq_create(m, n_ctx, err, sizeof err);
    if (!toks || !logits || !chunk || !s) {
        fprintf(stderr, "error: %s\n", s ? "out of memory" : err);
        goto done;
    }
    if (n_ctx < 4 || n_tok < 2 * (int64_t)n_ctx) {
        fprintf(stderr, "error: need at least 2*ctx = %d tokens, the file has %lld\n", 2 * n_ctx,
                (long long)n_tok);
        goto done;
    }
    const int64_t n_chunks = n_tok / n_ctx;
    fprintf(stderr, "kvseek: perplexity over %lld tokens: %lld chunks of %d\n", (long long)n_tok,
            (long long)n_chunks, n_ctx);
    double nll = 0.0, nll2 = 0.0;
    int64_t count = 0;
    double t0 = krn_now_s() * 1e3;
    for (int64_t c = 0; c < n_chunks; c++) {
        memcpy(chunk, toks + c * n_ctx, sizeof(int32_t) * n_ctx);
        if (tok_add_bos(v) && tok_bos(v) >= 0) chunk[0] = tok_bos(v);
        eng_seq_reset(s);
        const int first = n_ctx / 2;
        if (eng_forward(m, s, chunk, first, NULL, false, err, sizeof err)) goto fwd_fail;
        for (int p = first; p < n_ctx - 1; p += slice) {
            int nt = n_ctx - 1 - p < slice ? n_ctx - 1 - p : slice;
            if (eng_forward(m, s, chunk + p, nt, logits, true, err, sizeof err)) goto fwd_fail;
            for (int j = 0; j < nt; j++) {
                const float *lg = logits + (size_t)j * hp->n_vocab;
                float mx = lg[0];
                for (int i = 1; i < hp->n_vocab; i++) if (lg[i] > mx) mx = lg[i];
                double z = 0.0;
                for (int i = 0; i < hp->n_vocab; i++) z += exp((double)lg[i] - mx);
                double l = mx + log(z) - lg[chunk[p + j + 1]];
                nll += l;
                nll2 += l * l;
                count++;
            }
        }
        double el = (krn_now_s() * 1e3 - t0) / 1e3;
        fprintf(stderr, "[%lld]%.4f (%.1f s, %.0f tok/s)\n", (long long)c + 1, exp(nll / count), el,
                (c + 1) * n_ctx / el);
    }
    double mean = nll / count, var = nll2 / count - mean * mean;
    double ppl = exp(mean), se = ppl * sqrt(var > 0 ? var / (count - 1) : 0);
    if (a->json)
        printf("{\"ppl\": %.6f, \"ppl_stderr\": %.6f, \"tokens_scored\": %lld, \"chunks\": %lld, \"ctx\": %d}\n",
               ppl, se, (long long)count, (long long)n_chunks, n_ctx);
    else
        printf("ppl = %.4f +/- %.4f\n", ppl, se);
    rc = 0;
    goto done;
fwd_fail:
    fprintf(stderr, "error: %s\n", err);
done:
    eng_seq_free(s);
    free(chunk);
    free(logits);
    free(toks);
    eng_model_free(m);
    free(text);
    return rc;
}

/* Every position's logits of ids[0, n) (n x n_vocab f32, row-major) written to path: 0, or 1
 * after a one-line error. */
static int write_logits(eng_model *m, const int32_t *ids, int64_t n, const char *path) {
    const size_t count = (size_t)n * eng_model_hparams(m)->n_vocab;
    int rc = 1;
    char err[512];
    eng_seq *s = eng_seq_create(m, (int)n, err, sizeof err);
    float *lg = malloc(sizeof(float) * count);
    if (!s || !lg) {
        fprintf(stderr, "error: %s\n", s ? "out of memory" : err);
    } else if (eng_forward(m, s, ids, (int)n, lg, true, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
    } else {
        /* closed whether or not the write succeeded */
        FILE *f = fopen(path, "wb");
        bool written = f && fwrite(lg, sizeof(float), count, f) == count;
        if (f && fclose(f)) written = false;
        if (written) rc = 0;
        else fprintf(stderr, "error: cannot write %s\n", path);
    }
    free(lg);
    eng_seq_free(s);
    return rc;
}

static int cmd_logits(const args *a) {
    if (!a->tokens || !a->out) {
        fprintf(stderr, "error: logits needs --tokens and --out\n");
        return 1;
    }
    int64_t n;
    int32_t *ids = parse_ids(a->tokens, &n);
    if (!ids) return 1;
    if (n == 0) {
        fprintf(stderr, "error: no tokens\n");
        free(ids);
        return 1;
    }
    eng_model *m = load_model(a);
    int rc = m ? write_logits(m, ids, n, a->out) : 1;
    eng_model_free(m);
    free(ids);
    return rc;
}

static int cmd_info(const args *a) {
    eng_model *m = load_model(a);
    if (!m) return 1;
    const eng_hparams *hp = eng_model_hparams(m);
    /* the weight types whose products quantize the activations to 8 bits in this build (the
     * logits test's reference mirrors them) */
    char i8[256] = "";
    for (uint32_t t = 0; t < 64; t++)
        if (krn_type_supported(t) && krn_type_i8(t))
            snprintf(i8 + strlen(i8), sizeof i8 - strlen(i8), "%s\"%s\"", i8[0] ? ", " : "", krn_type_name(t));
    printf("{\"arch\": \"%s\", \"n_vocab\": %d, \"n_ctx_train\": %d, \"n_embd\": %d, \"n_layer\": %d, "
           "\"n_head\": %d, \"n_head_kv\": %d, \"head_dim\": %d, \"n_ff\": %d, \"rope_base\": %g, "
           "\"rope_base_swa\": %g, \"sliding_window\": %d, \"bos\": %d, \"eos\": %d, \"i8_types\": [%s]}\n",
           hp->arch_name, hp->n_vocab, hp->n_ctx_train, hp->n_embd, hp->n_layer, hp->n_head,
           hp->n_head_kv, hp->head_dim, hp->n_ff, hp->rope_base, hp->rope_base_swa,
           hp->sliding_window, tok_bos(eng_model_vocab(m)), tok_eos(eng_model_vocab(m)), i8);
    eng_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage("");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kvseek %s\n", KVSEEK_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "serve")) return srv_serve_main(argc, argv);
    if (!strcmp(argv[1], "bench-kernels")) return tool_bench_kernels_main(argc, argv);
    if (!strcmp(argv[1], "bench-gpu")) return tool_bench_gpu_main(argc, argv);
    if (!strcmp(argv[1], "synth-model")) return tool_synth_model_main(argc, argv);
    if (!strcmp(argv[1], "eval")) return tool_eval_main(argc, argv);
    if (!strcmp(argv[1], "context")) {
        signal(SIGXFSZ, SIG_IGN); /* a full disk is an error message, not a dead process */
        const char *sub = argc > 2 ? argv[2] : "";
        if (!strcmp(sub, "-h") || !strcmp(sub, "--help")) {
            usage("context");
            return 0;
        }
        if (strcmp(sub, "build") && strcmp(sub, "info")) {
            fprintf(stderr, "error: kvseek context build|info (see kvseek context --help)\n");
            return 2;
        }
        args a;
        if (parse_args(argc - 1, argv + 1, &a)) return 2;
        if (a.help) {
            usage("context");
            return 0;
        }
        return cmd_context(&a, sub);
    }
    static const struct { const char *name; int (*fn)(const args *); } cmds[] = {
        {"generate", cmd_generate}, {"tokenize", cmd_tokenize}, {"detokenize", cmd_detokenize},
        {"perplexity", cmd_perplexity}, {"logits", cmd_logits}, {"info", cmd_info},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(argv[1], cmds[i].name)) continue;
        args a;
        if (parse_args(argc, argv, &a)) return 2;
        if (a.help) {
            usage(cmds[i].name);
            return 0;
        }
        return cmds[i].fn(&a);
    }
    fprintf(stderr, "error: unknown command '%s' (see kvseek --help)\n", argv[1]);
    return 2;
}
