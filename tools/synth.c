/* kvseek synth-model: writes a llama-architecture GGUF with random weights in a given shape,
 * so that a benchmark can run on a machine without network (only the kvseek binary travels; the
 * model is made where it runs).
 *
 * What the file holds: the llama.* hyperparameters engine/model.c reads, a SentencePiece ("llama")
 * vocabulary of --vocab distinct tokens (<unk> 0, <s> 1, </s> 2, the 256 byte tokens <0xXX>,
 * "▁", the printable ASCII characters, then "▁tN" fillers), f32 norm vectors of 1.0 and weight
 * matrices of --type with entries ~ N(0, 1/n_cols) (standard deviation 1/sqrt(n_cols)), so that
 * W·x keeps the scale of a normalised x and activations neither vanish nor explode through the
 * layers. The output rows of the three control tokens are zero: their logit is 0 while the
 * others spread ~N(0, 1), so greedy generation never stops early on a random EOS.
 *
 * Workload: the llama3-8b preset in q8_0 is about 8.5 GB. Every row is generated from its own
 * seed (seed, tensor, row), so the file is the same bits whatever the thread count; rows are
 * generated and quantized in parallel (OpenMP) into one of two tensor buffers while a writer
 * thread writes the other with large write() calls. The file is written as OUT.tmp, checked
 * (kvseek's own loader opens it, and rows of a few tensors are dequantized with
 * krn_dequantize_row and compared with the regenerated f32 rows), then renamed to OUT. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "clock.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "tools.h"

enum { ALIGN = 32, N_SPECIAL = 3, N_BYTE = 256, MIN_VOCAB = N_SPECIAL + N_BYTE + 1 };

typedef struct {
    int n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx;
    float rope_base;
} synth_shape;

typedef struct {
    const char *out;
    synth_shape sh;
    uint32_t type;     /* KRN_TYPE_F16, _Q4_0 or _Q8_0 */
    uint64_t seed;
    int threads;       /* 0: OpenMP's default */
} synth_opts;

typedef struct {
    char name[64];
    int64_t n_cols, n_rows; /* GGUF ne = [n_cols, n_rows]; n_rows 1 for a vector */
    int n_dims;
    uint32_t type;
    int zero_rows;          /* rows [0, zero_rows) are zero (the control tokens of output) */
    uint64_t offset, bytes; /* in the data section; bytes before padding */
} synth_tensor;

/* ---- random rows ---- */

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Row `row` of tensor `ti` as f32: ~N(0, std²), the sum of four 16-bit uniforms of one
 * xorshift64* draw (Irwin-Hall, close enough to normal for random weights). */
static void gen_row(uint64_t seed, int ti, int64_t row, float std, float *dst, int64_t n) {
    uint64_t s = splitmix64(seed ^ splitmix64(((uint64_t)ti << 40) ^ (uint64_t)row));
    if (!s) s = 1;
    /* the sum of four U{0..65535} has mean 131070 and standard deviation 65536/sqrt(3) */
    const float scale = std / 37837.23f;
    for (int64_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        uint64_t r = s * 0x2545f4914f6cdd1dull;
        int32_t a = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) + (int32_t)((r >> 32) & 0xffff) +
                    (int32_t)(r >> 48);
        dst[i] = (float)(a - 131070) * scale;
    }
}

/* ---- quantizers (one row of n values, n a multiple of the block size) ---- */

static void quantize_q8_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        uint16_t dh = krn_f32_to_f16(d);
        memcpy(y, &dh, 2);
        for (int j = 0; j < 32; j++) y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

/* As ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8. */
static void quantize_q4_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, y += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        uint16_t dh = krn_f32_to_f16(d);
        memcpy(y, &dh, 2);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_row(uint32_t type, const float *x, void *y, int64_t n) {
    if (type == KRN_TYPE_Q8_0) quantize_q8_0(x, y, n);
    else if (type == KRN_TYPE_Q4_0) quantize_q4_0(x, y, n);
    else if (type == KRN_TYPE_F16) for (int64_t i = 0; i < n; i++) ((uint16_t *)y)[i] = krn_f32_to_f16(x[i]);
    else memcpy(y, x, (size_t)n * sizeof(float));
}

/* The f32 row the file should hold (before quantization). */
static void tensor_row(const synth_tensor *t, int ti, uint64_t seed, int64_t row, float *dst) {
    if (t->n_dims == 1) {
        for (int64_t i = 0; i < t->n_cols; i++) dst[i] = 1.0f;
    } else if (row < t->zero_rows) {
        memset(dst, 0, (size_t)t->n_cols * sizeof(float));
    } else {
        gen_row(seed, ti, row, 1.0f / sqrtf((float)t->n_cols), dst, t->n_cols);
    }
}

/* ---- GGUF metadata in memory ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
    uint64_t n_kv; /* key/value pairs written (patched into the header) */
} bytebuf;

static void put(bytebuf *b, const void *src, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(bytebuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytebuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(bytebuf *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void kv_head(bytebuf *b, const char *key, gguf_type t) { put_str(b, key); put_u32(b, t); b->n_kv++; }
static void kv_u32(bytebuf *b, const char *key, uint32_t v) { kv_head(b, key, GGUF_TYPE_UINT32); put_u32(b, v); }
static void kv_f32(bytebuf *b, const char *key, float v) { kv_head(b, key, GGUF_TYPE_FLOAT32); put(b, &v, 4); }
static void kv_bool(bytebuf *b, const char *key, bool v) { uint8_t u = v; kv_head(b, key, GGUF_TYPE_BOOL); put(b, &u, 1); }
static void kv_str(bytebuf *b, const char *key, const char *v) { kv_head(b, key, GGUF_TYPE_STRING); put_str(b, v); }
static void kv_arr(bytebuf *b, const char *key, gguf_type t, uint64_t n) {
    kv_head(b, key, GGUF_TYPE_ARRAY);
    put_u32(b, t);
    put_u64(b, n);
}

/* Token i of the synthetic vocabulary (text into buf) and its type. */
static int vocab_token(int i, char *buf, size_t cap) {
    if (i == 0) { snprintf(buf, cap, "<unk>"); return 2; }
    if (i == 1) { snprintf(buf, cap, "<s>"); return 3; }
    if (i == 2) { snprintf(buf, cap, "</s>"); return 3; }
    i -= N_SPECIAL;
    if (i < N_BYTE) { snprintf(buf, cap, "<0x%02X>", i); return 6; }
    i -= N_BYTE;
    if (i == 0) { snprintf(buf, cap, "\xE2\x96\x81"); return 1; }
    i -= 1;
    if (i < 94) { snprintf(buf, cap, "%c", 0x21 + i); return 1; }
    snprintf(buf, cap, "\xE2\x96\x81t%d", i - 94);
    return 1;
}

static const char *type_name(uint32_t t) {
    return t == KRN_TYPE_F16 ? "f16" : t == KRN_TYPE_Q4_0 ? "q4_0" : t == KRN_TYPE_Q8_0 ? "q8_0" : "f32";
}

static void build_metadata(bytebuf *b, const synth_opts *o, int n_tensors) {
    const synth_shape *s = &o->sh;
    put(b, "GGUF", 4);
    put_u32(b, 3);
    put_u64(b, (uint64_t)n_tensors);
    put_u64(b, 0); /* key/value pairs: patched at the end */
    char name[64];
    snprintf(name, sizeof name, "kvseek-synth-%s", type_name(o->type));
    kv_str(b, "general.architecture", "llama");
    kv_str(b, "general.name", name);
    kv_u32(b, "general.alignment", ALIGN);
    kv_u32(b, "general.file_type", o->type == KRN_TYPE_F16 ? 1 : o->type == KRN_TYPE_Q4_0 ? 2 : 7);
    kv_u32(b, "llama.vocab_size", (uint32_t)s->n_vocab);
    kv_u32(b, "llama.context_length", (uint32_t)s->n_ctx);
    kv_u32(b, "llama.embedding_length", (uint32_t)s->n_embd);
    kv_u32(b, "llama.block_count", (uint32_t)s->n_layer);
    kv_u32(b, "llama.feed_forward_length", (uint32_t)s->n_ff);
    kv_u32(b, "llama.attention.head_count", (uint32_t)s->n_head);
    kv_u32(b, "llama.attention.head_count_kv", (uint32_t)s->n_head_kv);
    kv_u32(b, "llama.attention.key_length", (uint32_t)s->head_dim);
    kv_u32(b, "llama.attention.value_length", (uint32_t)s->head_dim);
    kv_u32(b, "llama.rope.dimension_count", (uint32_t)s->head_dim);
    kv_f32(b, "llama.rope.freq_base", s->rope_base);
    kv_f32(b, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_str(b, "tokenizer.ggml.model", "llama");
    char tok[32];
    kv_arr(b, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, (uint64_t)s->n_vocab);
    for (int i = 0; i < s->n_vocab; i++) { vocab_token(i, tok, sizeof tok); put_str(b, tok); }
    kv_arr(b, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, (uint64_t)s->n_vocab);
    for (int i = 0; i < s->n_vocab; i++) {
        float sc = i < N_SPECIAL + N_BYTE ? 0.0f : -(float)(i - N_SPECIAL - N_BYTE);
        put(b, &sc, 4);
    }
    kv_arr(b, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, (uint64_t)s->n_vocab);
    for (int i = 0; i < s->n_vocab; i++) { int32_t ty = vocab_token(i, tok, sizeof tok); put(b, &ty, 4); }
    kv_u32(b, "tokenizer.ggml.unknown_token_id", 0);
    kv_u32(b, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(b, "tokenizer.ggml.eos_token_id", 2);
    kv_bool(b, "tokenizer.ggml.add_bos_token", true);
    kv_bool(b, "tokenizer.ggml.add_eos_token", false);
    if (!b->oom) memcpy(b->p + 16, &b->n_kv, 8);
}

/* ---- tensors ---- */

static int plan_tensors(const synth_opts *o, synth_tensor **out) {
    const synth_shape *s = &o->sh;
    int n = 3 + 9 * s->n_layer;
    synth_tensor *t = calloc((size_t)n, sizeof *t);
    if (!t) return -1;
    int k = 0;
    const int64_t E = s->n_embd, nq = (int64_t)s->n_head * s->head_dim, nk = (int64_t)s->n_head_kv * s->head_dim;
#define MAT(nm, cols, rows) (t[k] = (synth_tensor){.n_cols = (cols), .n_rows = (rows), .n_dims = 2, .type = o->type}, \
                             snprintf(t[k].name, sizeof t[k].name, "%s", nm), k++)
#define VEC(nm, cols) (t[k] = (synth_tensor){.n_cols = (cols), .n_rows = 1, .n_dims = 1, .type = KRN_TYPE_F32}, \
                       snprintf(t[k].name, sizeof t[k].name, "%s", nm), k++)
    MAT("token_embd.weight", E, s->n_vocab);
    VEC("output_norm.weight", E);
    MAT("output.weight", E, s->n_vocab);
    t[k - 1].zero_rows = N_SPECIAL;
    for (int l = 0; l < s->n_layer; l++) {
        char nm[64];
#define NM(x) (snprintf(nm, sizeof nm, "blk.%d." x, l), nm)
        VEC(NM("attn_norm.weight"), E);
        MAT(NM("attn_q.weight"), E, nq);             /* (n_head*hd, n_embd) */
        MAT(NM("attn_k.weight"), E, nk);             /* (n_kv*hd, n_embd) */
        MAT(NM("attn_v.weight"), E, nk);             /* (n_kv*hd, n_embd) */
        MAT(NM("attn_output.weight"), nq, E);        /* (n_embd, n_head*hd) */
        VEC(NM("ffn_norm.weight"), E);
        MAT(NM("ffn_gate.weight"), E, s->n_ff);      /* (n_ff, n_embd) */
        MAT(NM("ffn_up.weight"), E, s->n_ff);        /* (n_ff, n_embd) */
        MAT(NM("ffn_down.weight"), s->n_ff, E);      /* (n_embd, n_ff) */
#undef NM
    }
#undef MAT
#undef VEC
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        t[i].offset = off;
        t[i].bytes = krn_row_bytes(t[i].type, t[i].n_cols) * (uint64_t)t[i].n_rows;
        off += (t[i].bytes + ALIGN - 1) / ALIGN * ALIGN;
    }
    *out = t;
    return n;
}

/* Generates and quantizes every row of t into buf (bytes padded with zeros to ALIGN). 0, or -1
 * when a thread could not allocate its row buffer. */
static int fill_tensor(const synth_tensor *t, int ti, uint64_t seed, uint8_t *buf) {
    const size_t rb = krn_row_bytes(t->type, t->n_cols);
    int oom = 0;
    #pragma omp parallel reduction(|:oom)
    {
        float *row = malloc((size_t)t->n_cols * sizeof(float));
        oom |= !row;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < t->n_rows; r++) {
            if (!row) continue;
            tensor_row(t, ti, seed, r, row);
            quantize_row(t->type, row, buf + (size_t)r * rb, t->n_cols);
        }
        free(row);
    }
    size_t padded = (t->bytes + ALIGN - 1) / ALIGN * ALIGN;
    memset(buf + t->bytes, 0, padded - t->bytes);
    return oom ? -1 : 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

typedef struct {
    int fd;
    const uint8_t *p;
    size_t n;
    int err; /* errno of a failed write, 0 */
} write_job;

static void *writer(void *arg) {
    write_job *j = arg;
    if (write_all(j->fd, j->p, j->n)) j->err = errno ? errno : EIO;
    return NULL;
}

/* Compares row `row` of tensor ti as dequantized from the mapped file with the regenerated f32
 * row; the bound is the quantizer's rounding error per block. Returns the number of elements
 * over the bound (0: good). */
static int64_t check_row(const gguf_ctx *g, const synth_tensor *t, int ti, uint64_t seed, int64_t row) {
    const gguf_tensor *ft = gguf_find_tensor(g, t->name);
    if (!ft || ft->type != t->type || ft->ne[0] != t->n_cols || ft->ne[1] != t->n_rows) return t->n_cols;
    float *ref = malloc((size_t)t->n_cols * sizeof(float)), *got = malloc((size_t)t->n_cols * sizeof(float));
    int64_t bad = t->n_cols;
    if (ref && got) {
        bad = 0;
        tensor_row(t, ti, seed, row, ref);
        krn_dequantize_row(t->type, (const uint8_t *)ft->data + (size_t)row * krn_row_bytes(t->type, t->n_cols),
                           got, t->n_cols);
        for (int64_t b = 0; b < t->n_cols; b += 32) {
            int64_t e = b + 32 < t->n_cols ? b + 32 : t->n_cols;
            float amax = 0.0f;
            for (int64_t i = b; i < e; i++) amax = fmaxf(amax, fabsf(ref[i]));
            float tol = t->type == KRN_TYPE_Q8_0 ? 0.6f * amax / 127.0f
                      : t->type == KRN_TYPE_Q4_0 ? 1.05f * amax / 8.0f
                      : t->type == KRN_TYPE_F16 ? 1e-3f * amax : 0.0f;
            for (int64_t i = b; i < e; i++) bad += !(fabsf(got[i] - ref[i]) <= tol + 1e-30f);
        }
    }
    free(ref);
    free(got);
    return bad;
}

/* Loads the written file with kvseek's loader and checks a few rows. 0, or -1 with a reason. */
static int self_check(const char *path, const synth_opts *o, const synth_tensor *t, int n_t, char *err, size_t errlen) {
    eng_model_params mp = {.chunk = 1, .attn = eng_attn_default()};
    eng_model *m = eng_model_load(path, &mp, err, errlen);
    if (!m) return -1;
    const eng_hparams *hp = eng_model_hparams(m);
    int rc = 0;
    if (hp->n_layer != o->sh.n_layer || hp->n_embd != o->sh.n_embd || hp->n_vocab != o->sh.n_vocab ||
        hp->n_ctx_train != o->sh.n_ctx || hp->head_dim != o->sh.head_dim) {
        snprintf(err, errlen, "self-check: the loader reads another shape than was written");
        rc = -1;
    }
    /* rows 5 (0 for output: a zero row) and last of token_embd, output, output_norm, the first
     * layer's attn_norm and attn_q, and the last layer's ffn_down */
    const int probe[] = {0, 2, 1, 3, 4, n_t - 1};
    for (size_t i = 0; i < sizeof probe / sizeof probe[0] && !rc; i++) {
        const synth_tensor *x = &t[probe[i]];
        int64_t rows[2] = {x->n_rows > 5 ? 5 : 0, x->n_rows - 1};
        if (probe[i] == 2) rows[0] = 0;
        for (int r = 0; r < 2 && !rc; r++) {
            int64_t bad = check_row(eng_model_gguf(m), x, probe[i], o->seed, rows[r]);
            if (bad) {
                snprintf(err, errlen, "self-check: %s row %lld: %lld of %lld values off after dequantization",
                         x->name, (long long)rows[r], (long long)bad, (long long)x->n_cols);
                rc = -1;
            }
        }
    }
    eng_model_free(m);
    return rc;
}

/* ---- command line ---- */

static const synth_shape PRESET_8B = {32, 4096, 32, 8, 128, 14336, 128256, 131072, 500000.0f};
static const synth_shape PRESET_TINY = {2, 64, 4, 2, 16, 128, 512, 2048, 10000.0f};

static void usage(void) {
    printf("usage: kvseek synth-model -o OUT.gguf [--preset llama3-8b|tiny] [--type f16|q8_0|q4_0]\n"
           "                          [--layers N --embd N --heads N --kv-heads N --head-dim N --ff N\n"
           "                           --vocab N --ctx N --rope-base F] [--seed S] [-t N]\n\n"
           "Writes a llama-architecture GGUF with random weights (entries ~ N(0, 1/n_cols)), f32 norms of\n"
           "1.0 and a SentencePiece vocabulary, loadable by kvseek: a model for benchmarks on machines\n"
           "without network. Written as OUT.tmp, checked with kvseek's loader, then renamed. Prints one\n"
           "JSON line {path, bytes, params, seconds}.\n\n"
           "  -o, --out PATH    the file to write\n"
           "  --preset P        llama3-8b (32 layers, embd 4096, 32/8 heads of 128, ff 14336, vocab\n"
           "                    128256, ctx 131072, rope base 500000; about 8.5 GB in q8_0) or tiny\n"
           "                    (2 layers, embd 64, 4/2 heads, ff 128, vocab 512); default tiny\n"
           "  --layers N --embd N --heads N --kv-heads N --head-dim N --ff N --vocab N --ctx N --rope-base F\n"
           "                    override the preset (head dim defaults to embd / heads; embd, ff and\n"
           "                    heads x head dim must be multiples of 32; vocab >= %d)\n"
           "  --type T          weight matrices: q8_0 (default), q4_0 or f16\n"
           "  --seed S          random seed (default 1); the same seed gives the same file\n"
           "  -t, --threads N   threads (default: OpenMP's)\n"
           "  -h, --help        this help\n", MIN_VOCAB);
}

static int parse_opts(int argc, char **argv, synth_opts *o) {
    memset(o, 0, sizeof *o);
    o->sh = PRESET_TINY;
    o->type = KRN_TYPE_Q8_0;
    o->seed = 1;
    int head_dim_set = 0;
    /* the preset first, wherever it stands, so that the other options override it */
    for (int i = 2; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--preset")) continue;
        if (!strcmp(argv[i + 1], "llama3-8b")) o->sh = PRESET_8B;
        else if (!strcmp(argv[i + 1], "tiny")) o->sh = PRESET_TINY;
        else {
            fprintf(stderr, "error: --preset: '%s' is not llama3-8b or tiny\n", argv[i + 1]);
            return -1;
        }
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 1; }
        struct { const char *name; int *dst; long lo, hi; } ints[] = {
            {"--layers", &o->sh.n_layer, 1, 4096}, {"--embd", &o->sh.n_embd, 32, 1 << 16},
            {"--heads", &o->sh.n_head, 1, 1024}, {"--kv-heads", &o->sh.n_head_kv, 1, 1024},
            {"--head-dim", &o->sh.head_dim, 2, 1024}, {"--ff", &o->sh.n_ff, 32, 1 << 18},
            {"--vocab", &o->sh.n_vocab, MIN_VOCAB, 1 << 22}, {"--ctx", &o->sh.n_ctx, 1, 1 << 24},
            {"-t", &o->threads, 1, 1024}, {"--threads", &o->threads, 1, 1024},
        };
        int takes = 0;
        for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) takes |= !strcmp(a, ints[k].name);
        takes |= !strcmp(a, "-o") || !strcmp(a, "--out") || !strcmp(a, "--preset") || !strcmp(a, "--type") ||
                 !strcmp(a, "--seed") || !strcmp(a, "--rope-base");
        if (!takes) {
            fprintf(stderr, "error: unknown option '%s' (see kvseek synth-model --help)\n", a);
            return -1;
        }
        if (!v) {
            fprintf(stderr, "error: %s needs a value\n", a);
            return -1;
        }
        i++;
        char *end;
        errno = 0;
        if (!strcmp(a, "-o") || !strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--preset")) continue; /* applied above */
        else if (!strcmp(a, "--type")) {
            if (!strcmp(v, "q8_0")) o->type = KRN_TYPE_Q8_0;
            else if (!strcmp(v, "q4_0")) o->type = KRN_TYPE_Q4_0;
            else if (!strcmp(v, "f16")) o->type = KRN_TYPE_F16;
            else {
                fprintf(stderr, "error: --type: '%s' is not f16, q8_0 or q4_0\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--seed")) {
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "error: --seed: '%s' is not a non-negative integer\n", v);
                return -1;
            }
            o->seed = s;
        } else if (!strcmp(a, "--rope-base")) {
            float f = strtof(v, &end);
            if (errno || end == v || *end || !(f > 0.0f) || !isfinite(f)) {
                fprintf(stderr, "error: --rope-base: '%s' is not a positive number\n", v);
                return -1;
            }
            o->sh.rope_base = f;
        } else {
            for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
                if (strcmp(a, ints[k].name)) continue;
                long n = strtol(v, &end, 10);
                if (errno || end == v || *end || n < ints[k].lo || n > ints[k].hi) {
                    fprintf(stderr, "error: %s: '%s' is not an integer in [%ld, %ld]\n", a, v, ints[k].lo, ints[k].hi);
                    return -1;
                }
                *ints[k].dst = (int)n;
                head_dim_set |= !strcmp(a, "--head-dim");
            }
        }
    }
    synth_shape *s = &o->sh;
    if (!head_dim_set) s->head_dim = s->n_embd / s->n_head;
    if (!o->out) {
        fprintf(stderr, "error: no output given (-o OUT.gguf)\n");
        return -1;
    }
    if (s->n_embd % 32 || s->n_ff % 32 || ((long)s->n_head * s->head_dim) % 32) {
        fprintf(stderr, "error: embd (%d), ff (%d) and heads x head dim (%ld) must be multiples of 32\n",
                s->n_embd, s->n_ff, (long)s->n_head * s->head_dim);
        return -1;
    }
    if (s->head_dim < 2 || s->head_dim % 2 || s->n_head % s->n_head_kv) {
        fprintf(stderr, "error: head dim (%d) must be even and heads (%d) a multiple of kv heads (%d)\n",
                s->head_dim, s->n_head, s->n_head_kv);
        return -1;
    }
    return 0;
}

int tool_synth_model_main(int argc, char **argv) {
    synth_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc < 0 ? 2 : 0;
    if (o.threads > 0) omp_set_num_threads(o.threads);
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit is an error message, not a dead process */
    double t0 = krn_now_s();

    synth_tensor *t = NULL;
    bytebuf meta = {0};
    uint8_t *buf[2] = {NULL, NULL};
    char *tmp = NULL;
    int fd = -1, wrote = 0;
    char err[512] = "";
    rc = 1;
    int n_t = plan_tensors(&o, &t);
    if (n_t < 0) { snprintf(err, sizeof err, "out of memory"); goto done; }
    build_metadata(&meta, &o, n_t);
    uint64_t params = 0, max_bytes = 0;
    for (int i = 0; i < n_t; i++) {
        put_str(&meta, t[i].name);
        put_u32(&meta, (uint32_t)t[i].n_dims);
        put_u64(&meta, (uint64_t)t[i].n_cols);
        if (t[i].n_dims == 2) put_u64(&meta, (uint64_t)t[i].n_rows);
        put_u32(&meta, t[i].type);
        put_u64(&meta, t[i].offset);
        params += (uint64_t)(t[i].n_cols * t[i].n_rows);
        uint64_t padded = (t[i].bytes + ALIGN - 1) / ALIGN * ALIGN;
        if (padded > max_bytes) max_bytes = padded;
    }
    static const uint8_t zeros[ALIGN];
    put(&meta, zeros, (ALIGN - meta.n % ALIGN) % ALIGN);
    if (meta.oom) { snprintf(err, sizeof err, "out of memory for the metadata"); goto done; }
    const synth_tensor *last = &t[n_t - 1];
    uint64_t total = meta.n + last->offset + (last->bytes + ALIGN - 1) / ALIGN * ALIGN;

    size_t plen = strlen(o.out);
    tmp = malloc(plen + 5);
    if (!tmp) { snprintf(err, sizeof err, "out of memory"); goto done; }
    memcpy(tmp, o.out, plen);
    memcpy(tmp + plen, ".tmp", 5);
    /* room on the disk of OUT's directory, with 64 MiB to spare */
    {
        char *dir = strdup(o.out);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        const char *d = !dir ? "." : !slash ? "." : slash == dir ? "/" : (*slash = 0, dir);
        struct statvfs vs;
        int ok = statvfs(d, &vs) == 0;
        uint64_t avail = ok ? (uint64_t)vs.f_bavail * vs.f_frsize : 0;
        if (!ok) snprintf(err, sizeof err, "cannot stat the file system of %s: %s", d, strerror(errno));
        else if (avail < total + (64ull << 20))
            snprintf(err, sizeof err, "not enough disk space in %s: the model needs %.2f GB, %.2f GB are free",
                     d, total / 1e9, avail / 1e9);
        free(dir);
        if (err[0]) goto done;
    }
    buf[0] = malloc(max_bytes);
    buf[1] = malloc(max_bytes);
    if (!buf[0] || !buf[1]) {
        snprintf(err, sizeof err, "cannot allocate 2 x %.2f GB of tensor buffers", max_bytes / 1e9);
        goto done;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { snprintf(err, sizeof err, "cannot create %s: %s", tmp, strerror(errno)); goto done; }
    wrote = 1;
    if (write_all(fd, meta.p, meta.n)) {
        snprintf(err, sizeof err, "cannot write %s: %s", tmp, strerror(errno));
        goto done;
    }
    /* tensor i is generated into buf[i % 2] while the writer thread writes tensor i - 1 */
    pthread_t th;
    write_job job = {0};
    int pending = 0;
    for (int i = 0; i < n_t; i++) {
        uint8_t *b = buf[i % 2];
        int filled = fill_tensor(&t[i], i, o.seed, b);
        if (pending) {
            pthread_join(th, NULL);
            pending = 0;
        }
        if (job.err) break;
        if (filled) {
            snprintf(err, sizeof err, "out of memory generating %s", t[i].name);
            goto done;
        }
        job = (write_job){fd, b, (t[i].bytes + ALIGN - 1) / ALIGN * ALIGN, 0};
        if (pthread_create(&th, NULL, writer, &job)) writer(&job); /* no thread: write here */
        else pending = 1;
    }
    if (pending) pthread_join(th, NULL);
    if (job.err) {
        snprintf(err, sizeof err, "cannot write %s: %s", tmp, strerror(job.err));
        goto done;
    }
    if (close(fd)) {
        fd = -1;
        snprintf(err, sizeof err, "cannot write %s: %s", tmp, strerror(errno));
        goto done;
    }
    fd = -1;
    free(buf[0]); free(buf[1]);
    buf[0] = buf[1] = NULL;
    if (self_check(tmp, &o, t, n_t, err, sizeof err)) goto done;
    if (rename(tmp, o.out)) {
        snprintf(err, sizeof err, "cannot rename %s to %s: %s", tmp, o.out, strerror(errno));
        goto done;
    }
    wrote = 0;
    cJSON *js = cJSON_CreateObject();
    cJSON_AddStringToObject(js, "path", o.out);
    cJSON_AddNumberToObject(js, "bytes", (double)total);
    cJSON_AddNumberToObject(js, "params", (double)params);
    cJSON_AddStringToObject(js, "type", type_name(o.type));
    cJSON_AddNumberToObject(js, "seconds", round((krn_now_s() - t0) * 1000) / 1000);
    char *line = cJSON_PrintUnformatted(js);
    if (line) printf("%s\n", line);
    free(line);
    cJSON_Delete(js);
    rc = 0;
done:
    if (fd >= 0) close(fd);
    if (wrote) unlink(tmp);
    if (rc) fprintf(stderr, "error: %s\n", err[0] ? err : "synth-model failed");
    free(tmp);
    free(buf[0]);
    free(buf[1]);
    free(meta.p);
    free(t);
    return rc;
}
