/* Tokenizer unit tests on tiny vocabularies written here as in-memory GGUF images: hand-checked
 * SentencePiece and byte-level BPE encodings (merge order, ties, byte fallback, special tokens),
 * hostile input (invalid UTF-8, NUL bytes, empty text, megabyte runs that must stay fast), the
 * cap protocol of tok_encode/tok_decode, decoding, and load errors for broken metadata.
 * tests/test_tok_ref.py checks real vocabularies against an independent reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "gguf.h"
#include "tok.h"

/* ---- GGUF image writer ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
    uint64_t n_kv;
} img;

static void put(img *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { fprintf(stderr, "out of memory\n"); exit(1); }
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void u32(img *b, uint32_t v) { put(b, &v, 4); }
static void u64(img *b, uint64_t v) { put(b, &v, 8); }
static void str_n(img *b, const char *s, size_t n) { u64(b, n); put(b, s, n); }
static void str(img *b, const char *s) { str_n(b, s, strlen(s)); }

static img img_begin(void) {
    img b = {0};
    put(&b, "GGUF", 4);
    u32(&b, 3);
    u64(&b, 0); /* tensors */
    u64(&b, 0); /* kv count, patched by img_end */
    return b;
}
static void img_end(img *b) { memcpy(b->p + 16, &b->n_kv, 8); }

static void kv_str(img *b, const char *key, const char *val) {
    str(b, key); u32(b, GGUF_TYPE_STRING); str(b, val); b->n_kv++;
}
static void kv_u32(img *b, const char *key, uint32_t val) {
    str(b, key); u32(b, GGUF_TYPE_UINT32); u32(b, val); b->n_kv++;
}
static void kv_bool(img *b, const char *key, int val) {
    unsigned char c = (unsigned char)val;
    str(b, key); u32(b, GGUF_TYPE_BOOL); put(b, &c, 1); b->n_kv++;
}
static void kv_strs(img *b, const char *key, char **s, const size_t *len, size_t n) {
    str(b, key); u32(b, GGUF_TYPE_ARRAY); u32(b, GGUF_TYPE_STRING); u64(b, n);
    for (size_t i = 0; i < n; i++) str_n(b, s[i], len[i]);
    b->n_kv++;
}
static void kv_f32s(img *b, const char *key, const float *v, size_t n) {
    str(b, key); u32(b, GGUF_TYPE_ARRAY); u32(b, GGUF_TYPE_FLOAT32); u64(b, n);
    put(b, v, 4 * n);
    b->n_kv++;
}
static void kv_i32s(img *b, const char *key, const int32_t *v, size_t n) {
    str(b, key); u32(b, GGUF_TYPE_ARRAY); u32(b, GGUF_TYPE_INT32); u64(b, n);
    put(b, v, 4 * n);
    b->n_kv++;
}

/* ---- vocabulary descriptions ---- */

#define MAXTOK 600
typedef struct {
    char *tok[MAXTOK];
    size_t len[MAXTOK];
    float score[MAXTOK];
    int32_t type[MAXTOK];
    int n;
    char *merge[64];
    size_t merge_len[64];
    int n_merges;
} vocab_desc;

static int add_tok_n(vocab_desc *d, const char *s, size_t n, float score, int type) {
    d->tok[d->n] = malloc(n + 1);
    memcpy(d->tok[d->n], s, n);
    d->tok[d->n][n] = 0;
    d->len[d->n] = n;
    d->score[d->n] = score;
    d->type[d->n] = type;
    return d->n++;
}
static int add_tok(vocab_desc *d, const char *s, float score, int type) {
    return add_tok_n(d, s, strlen(s), score, type);
}
static void add_merge(vocab_desc *d, const char *m) {
    d->merge[d->n_merges] = strdup(m);
    d->merge_len[d->n_merges] = strlen(m);
    d->n_merges++;
}
static void desc_free(vocab_desc *d) {
    for (int i = 0; i < d->n; i++) free(d->tok[i]);
    for (int i = 0; i < d->n_merges; i++) free(d->merge[i]);
}

/* Ids of the SPM test vocab. */
enum { S_UNK, S_BOS, S_EOS, S_TURN, S_BYTE0 };
static int s_sp, s_a, s_b, s_c, s_ab, s_sp_a, s_sp_ab, s_aa, s_aaaa, s_tab2, s_tab4, s_u, s_endturn;

/* SentencePiece vocab: 4 specials, 256 byte tokens, then pieces scored so that "ab" merges
 * before "▁a" before "▁ab", and "aa" (-6) before "aaaa" (-7). */
static void spm_desc(vocab_desc *d) {
    memset(d, 0, sizeof *d);
    add_tok(d, "<unk>", 0, TOK_TYPE_UNKNOWN);
    add_tok(d, "<s>", 0, TOK_TYPE_CONTROL);
    add_tok(d, "</s>", 0, TOK_TYPE_CONTROL);
    add_tok(d, "<start_of_turn>", 0, TOK_TYPE_CONTROL);
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        add_tok(d, name, 0, TOK_TYPE_BYTE);
    }
    s_sp = add_tok(d, "\xe2\x96\x81", -10, TOK_TYPE_NORMAL);
    s_a = add_tok(d, "a", -11, TOK_TYPE_NORMAL);
    s_b = add_tok(d, "b", -12, TOK_TYPE_NORMAL);
    s_c = add_tok(d, "c", -13, TOK_TYPE_NORMAL);
    s_ab = add_tok(d, "ab", -1, TOK_TYPE_NORMAL);
    s_sp_a = add_tok(d, "\xe2\x96\x81" "a", -2, TOK_TYPE_NORMAL);
    s_sp_ab = add_tok(d, "\xe2\x96\x81" "ab", -3, TOK_TYPE_NORMAL);
    s_aa = add_tok(d, "aa", -6, TOK_TYPE_NORMAL);
    s_aaaa = add_tok(d, "aaaa", -7, TOK_TYPE_NORMAL);
    s_tab2 = add_tok(d, "\t\t", 0, TOK_TYPE_USER_DEFINED);
    s_tab4 = add_tok(d, "\t\t\t\t", 0, TOK_TYPE_USER_DEFINED);
    s_u = add_tok(d, "<u>", 0, TOK_TYPE_USER_DEFINED);
    s_endturn = add_tok(d, "<end_of_turn>", 0, TOK_TYPE_CONTROL);
}

static img spm_image(const vocab_desc *d, int space_prefix) {
    img b = img_begin();
    kv_str(&b, "general.architecture", "llama");
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", (char **)d->tok, d->len, (size_t)d->n);
    kv_f32s(&b, "tokenizer.ggml.scores", d->score, (size_t)d->n);
    kv_i32s(&b, "tokenizer.ggml.token_type", d->type, (size_t)d->n);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", S_BOS);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", S_EOS);
    kv_u32(&b, "tokenizer.ggml.unknown_token_id", S_UNK);
    kv_bool(&b, "tokenizer.ggml.add_space_prefix", space_prefix);
    img_end(&b);
    return b;
}

/* Byte-level BPE vocab: the 256 byte symbols in byte order (id = byte value), then merge
 * results; merges "a b" (rank 0), "ab c" (1), "Ġ a" (2), "1 2" (3). */
static int b_ab, b_abc, b_sp_a, b_12, b_im_end, b_think, b_eot;

static void put_cpt(char *out, size_t *n, unsigned cp) {
    if (cp < 0x80) out[(*n)++] = (char)cp;
    else { out[(*n)++] = (char)(0xC0 | (cp >> 6)); out[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
}
static unsigned byte_cpt(unsigned b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    unsigned r = b <= 0x20 ? b : b <= 0xA0 ? 33 + (b - 0x7F) : 67;
    return 0x100 + r;
}

static void bpe_desc(vocab_desc *d) {
    memset(d, 0, sizeof *d);
    for (unsigned b = 0; b < 256; b++) {
        char s[4];
        size_t n = 0;
        put_cpt(s, &n, byte_cpt(b));
        add_tok_n(d, s, n, 0, TOK_TYPE_NORMAL);
    }
    b_ab = add_tok(d, "ab", 0, TOK_TYPE_NORMAL);
    b_abc = add_tok(d, "abc", 0, TOK_TYPE_NORMAL);
    b_sp_a = add_tok(d, "\xc4\xa0" "a", 0, TOK_TYPE_NORMAL); /* "Ġa" */
    b_12 = add_tok(d, "12", 0, TOK_TYPE_NORMAL);
    b_eot = add_tok(d, "<|endoftext|>", 0, TOK_TYPE_CONTROL);
    b_im_end = add_tok(d, "<|im_end|>", 0, TOK_TYPE_CONTROL);
    b_think = add_tok(d, "<think>", 0, TOK_TYPE_USER_DEFINED);
    add_merge(d, "a b");
    add_merge(d, "ab c");
    add_merge(d, "\xc4\xa0 a");
    add_merge(d, "1 2");
}

static img bpe_image(const vocab_desc *d, const char *pre) {
    img b = img_begin();
    kv_str(&b, "general.architecture", "qwen2");
    kv_str(&b, "tokenizer.ggml.model", "gpt2");
    kv_str(&b, "tokenizer.ggml.pre", pre);
    kv_strs(&b, "tokenizer.ggml.tokens", (char **)d->tok, d->len, (size_t)d->n);
    kv_i32s(&b, "tokenizer.ggml.token_type", d->type, (size_t)d->n);
    kv_strs(&b, "tokenizer.ggml.merges", (char **)d->merge, d->merge_len, (size_t)d->n_merges);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", (uint32_t)b_eot);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", (uint32_t)b_eot);
    kv_bool(&b, "tokenizer.ggml.add_bos_token", 0);
    img_end(&b);
    return b;
}

/* Loads a vocab from an image; the image is scribbled over and freed afterwards, so any
 * pointer the vocab kept into the mapping would show. */
static tok_vocab *load(img *b, char *err, size_t errlen) {
    gguf_ctx *g = gguf_open_memory(b->p, b->n, err, errlen);
    if (!g) return NULL;
    tok_vocab *v = tok_load(g, err, errlen);
    gguf_close(g);
    memset(b->p, 0xA5, b->n);
    free(b->p);
    b->p = NULL;
    return v;
}

/* ---- helpers ---- */

static int64_t enc(const tok_vocab *v, const char *s, size_t n, bool special, int32_t *out, int64_t cap) {
    return tok_encode(v, s, n, false, special, out, cap);
}

/* Encodes s (strlen) and compares with the expected ids (terminated by -1). */
static int enc_is(const tok_vocab *v, const char *s, size_t n, bool special, const int *want) {
    int32_t got[64];
    int64_t k = enc(v, s, n, special, got, 64);
    int64_t m = 0;
    while (want[m] >= 0) m++;
    int ok = k == m;
    for (int64_t i = 0; ok && i < k; i++) ok = got[i] == want[i];
    if (!ok) {
        fprintf(stderr, "  encoding of \"%.*s\": got", (int)n, s);
        for (int64_t i = 0; i < k && i < 64; i++) fprintf(stderr, " %d", got[i]);
        fprintf(stderr, "  want");
        for (int64_t i = 0; i < m; i++) fprintf(stderr, " %d", want[i]);
        fputc('\n', stderr);
    }
    return ok;
}
#define ENC_IS(v, s, special, ...) enc_is(v, s, strlen(s), special, (const int[]){__VA_ARGS__, -1})

/* Encodes n copies of byte c (or the pattern) and returns the count; *secs the time taken. */
static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t enc_big(const tok_vocab *v, const char *pattern, size_t n, double *secs, int32_t **ids_out) {
    char *s = malloc(n);
    size_t pl = strlen(pattern);
    for (size_t i = 0; i < n; i++) s[i] = pattern[i % pl];
    double t0 = thread_cpu_s();
    int64_t k = tok_encode(v, s, n, false, true, NULL, 0);
    int32_t *ids = NULL;
    if (k > 0) {
        ids = malloc((size_t)k * sizeof *ids);
        int64_t k2 = tok_encode(v, s, n, false, true, ids, k);
        CHECK(k2 == k, "second pass gave %lld ids, first %lld", (long long)k2, (long long)k);
    }
    *secs = thread_cpu_s() - t0;
    free(s);
    if (ids_out) *ids_out = ids;
    else free(ids);
    return k;
}

/* Big inputs must be linear-ish: 1 MB in well under this many seconds of the thread's own CPU
 * time (sanitizer builds too; CPU time, so that other jobs on the machine do not count). */
#define BIG_SECONDS 5.0

/* ---- tests ---- */

static void test_spm(void) {
    vocab_desc d;
    spm_desc(&d);
    char err[256] = "";
    img b = spm_image(&d, 0);
    tok_vocab *v = load(&b, err, sizeof err);
    CHECK(v != NULL, "load: %s", err);
    if (!v) { desc_free(&d); return; }
    CHECK(tok_get_model(v) == TOK_MODEL_SPM, "model");
    CHECK(tok_n_vocab(v) == d.n, "n_vocab %d", tok_n_vocab(v));
    CHECK(tok_bos(v) == S_BOS && tok_eos(v) == S_EOS && tok_unk(v) == S_UNK, "special ids");
    CHECK(tok_add_bos(v), "add_bos defaults to true for llama vocabs");
    CHECK(tok_find(v, "ab", 2) == s_ab && tok_find(v, "zz", 2) == -1, "find");
    CHECK(tok_text(v, s_ab) && !strcmp(tok_text(v, s_ab), "ab") && !tok_text(v, d.n), "text");
    CHECK(tok_get_type(v, S_BYTE0 + 7) == TOK_TYPE_BYTE && tok_get_type(v, -1) == TOK_TYPE_UNDEFINED, "type");
    CHECK(tok_is_eog(v, S_EOS) && tok_is_eog(v, s_endturn) && !tok_is_eog(v, S_BOS), "eog");

    /* merge order by score: "ab" (-1) before "▁a" (-2); then "▁" + "ab" = "▁ab" (-3) */
    CHECK(ENC_IS(v, " ab", false, s_sp_ab), "score order");
    CHECK(ENC_IS(v, "abc", false, s_ab, s_c), "abc");
    /* ties go leftmost: "aaa" is "aa" "a", not "a" "aa"; "aaaa" merges on to one token */
    CHECK(ENC_IS(v, "aaa", false, s_aa, s_a), "leftmost tie");
    CHECK(ENC_IS(v, "aaaa", false, s_aaaa), "aaaa");
    CHECK(ENC_IS(v, "aaaaa", false, s_aaaa, s_a), "aaaaa");
    /* byte fallback: é is C3 A9 */
    CHECK(ENC_IS(v, "\xc3\xa9", false, S_BYTE0 + 0xC3, S_BYTE0 + 0xA9), "byte fallback");
    /* invalid UTF-8: a lead byte takes the bytes it announces (llama.cpp), stray bytes are single */
    CHECK(ENC_IS(v, "\xe0" "ab", false, S_BYTE0 + 0xE0, S_BYTE0 + 'a', S_BYTE0 + 'b'), "bad lead byte");
    CHECK(ENC_IS(v, "\x80" "a\xff", false, S_BYTE0 + 0x80, s_a, S_BYTE0 + 0xFF), "stray bytes");
    CHECK(ENC_IS(v, "a\xe2\x96", false, s_a, S_BYTE0 + 0xE2, S_BYTE0 + 0x96), "truncated sequence");
    CHECK(enc_is(v, "a\0b", 3, false, (const int[]){s_a, S_BYTE0, s_b, -1}), "NUL byte");
    CHECK(enc_is(v, "\0", 1, false, (const int[]){S_BYTE0, -1}), "lone NUL");
    /* empty text: nothing, or BOS alone with add_special */
    int32_t ids[16];
    CHECK(tok_encode(v, "", 0, false, false, ids, 16) == 0, "empty");
    CHECK(tok_encode(v, NULL, 0, false, false, NULL, 0) == 0, "empty NULL");
    CHECK(tok_encode(v, "", 0, true, false, ids, 16) == 1 && ids[0] == S_BOS, "empty + BOS");
    CHECK(tok_encode(v, "ab", 2, true, false, ids, 16) == 2 && ids[0] == S_BOS && ids[1] == s_ab, "BOS");
    CHECK(tok_encode(v, NULL, 3, false, false, ids, 16) == TOK_ERR_ARG, "NULL text");
    CHECK(tok_encode(v, "ab", 2, false, false, NULL, 4) == TOK_ERR_ARG, "NULL out with cap");
    CHECK(tok_encode(v, "ab", 2, false, false, ids, -1) == TOK_ERR_ARG, "negative cap");

    /* specials: control only with parse_special, user-defined always, longest first */
    CHECK(ENC_IS(v, "<s>ab", true, S_BOS, s_ab), "control parsed");
    CHECK(ENC_IS(v, "<s>", false, S_BYTE0 + '<', S_BYTE0 + 's', S_BYTE0 + '>'), "control as text");
    CHECK(ENC_IS(v, "a<u>b", false, s_a, s_u, s_b), "user-defined always");
    CHECK(ENC_IS(v, "\t\t\t\t\t\t\t", false, s_tab4, s_tab2, S_BYTE0 + '\t'), "longest first");
    CHECK(ENC_IS(v, "<start_of_turn><end_of_turn>", true, S_TURN, s_endturn), "adjacent controls");
    CHECK(ENC_IS(v, "<start_of_turn", true, S_BYTE0 + '<', S_BYTE0 + 's', S_BYTE0 + 't', s_a,
                 S_BYTE0 + 'r', S_BYTE0 + 't', S_BYTE0 + '_', S_BYTE0 + 'o', S_BYTE0 + 'f', S_BYTE0 + '_',
                 S_BYTE0 + 't', S_BYTE0 + 'u', S_BYTE0 + 'r', S_BYTE0 + 'n'), "partial control");

    /* cap protocol: the full count comes back whatever cap is; nothing past cap is written */
    int32_t small[4] = {-7, -7, -7, -7};
    CHECK(tok_encode(v, "ab ab ab", 8, false, false, NULL, 0) == 3, "count with cap 0");
    CHECK(tok_encode(v, "ab ab ab", 8, false, false, small, 2) == 3, "count with cap 2");
    CHECK(small[0] == s_ab && small[1] == s_sp_ab && small[2] == -7, "cap 2 writes two ids");

    /* decoding */
    char buf[64];
    CHECK(tok_piece(v, s_sp_ab, false, buf, sizeof buf) == 3 && !memcmp(buf, " ab", 3), "piece ▁ab");
    CHECK(tok_piece(v, S_BYTE0 + 0x41, false, buf, sizeof buf) == 1 && buf[0] == 'A', "piece byte");
    CHECK(tok_piece(v, S_BOS, false, buf, sizeof buf) == 0, "control hidden");
    CHECK(tok_piece(v, S_BOS, true, buf, sizeof buf) == 3 && !memcmp(buf, "<s>", 3), "control rendered");
    CHECK(tok_piece(v, s_u, false, buf, sizeof buf) == 3, "user-defined rendered");
    CHECK(tok_piece(v, S_UNK, false, buf, sizeof buf) == 0, "unknown hidden");
    CHECK(tok_piece(v, -1, true, buf, sizeof buf) == 0 && tok_piece(v, d.n, true, buf, sizeof buf) == 0, "bad id");
    CHECK(tok_piece(v, s_sp_ab, false, buf, 1) == 3 && buf[0] == ' ', "piece truncated");
    int32_t seq[] = {S_BOS, s_sp_ab, S_BYTE0 + 0xC3, S_BYTE0 + 0xA9, s_c};
    CHECK(tok_decode(v, seq, 5, false, buf, sizeof buf) == 6 && !strcmp(buf, " ab\xc3\xa9" "c"), "decode");
    CHECK(tok_decode(v, seq, 5, false, buf, 4) == 6 && !strcmp(buf, " ab"), "decode truncated: %s", buf);
    CHECK(tok_decode(v, seq, 5, true, NULL, 0) == 9, "decode length only");

    /* round trip (no space prefix: SPM with byte fallback is lossless) of random strings of
     * characters and stray continuation bytes. Not of arbitrary bytes: a lead byte swallows the
     * bytes it announces after spaces became "▁", as in llama.cpp, and a literal "▁" comes
     * back as a space. */
    rng_seed(7);
    int rt_fail = 0;
    for (int t = 0; t < 500; t++) {
        static const char *units[] = {"a", "b", "c", " ", "\t", "<", ">", "s", "u", "\xc3\xa9", "\x80",
                                      "\xbf", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\n", "\x01", "\x7f"};
        char s[200], out[200];
        int32_t tids[200];
        size_t n = 0;
        for (int i = rng_int(40); i > 0; i--) {
            const char *u = units[rng_int((int)(sizeof units / sizeof units[0]))];
            memcpy(s + n, u, strlen(u));
            n += strlen(u);
        }
        int64_t k = tok_encode(v, s, n, false, false, tids, 200);
        int64_t m = tok_decode(v, tids, k, false, out, sizeof out);
        if (k < 0 || m != (int64_t)n || memcmp(out, s, n)) rt_fail++;
    }
    CHECK(rt_fail == 0, "%d of 500 random strings did not round-trip", rt_fail);

    /* big inputs: linear time, and the expected shape */
    double secs;
    int32_t *big = NULL;
    int64_t k = enc_big(v, "a", 1 << 20, &secs, &big);
    CHECK(k == (1 << 18) && big && big[0] == s_aaaa && big[k - 1] == s_aaaa, "1 MB of a: %lld ids", (long long)k);
    CHECK(secs < BIG_SECONDS, "1 MB of a took %.2f s", secs);
    free(big);
    k = enc_big(v, " ", 1 << 20, &secs, NULL);
    CHECK(k == (1 << 20), "1 MB of spaces: %lld ids", (long long)k);
    CHECK(secs < BIG_SECONDS, "1 MB of spaces took %.2f s", secs);
    k = enc_big(v, "\t", 1 << 20, &secs, NULL);
    CHECK(k == (1 << 18), "1 MB of tabs: %lld ids", (long long)k);
    CHECK(secs < BIG_SECONDS, "1 MB of tabs took %.2f s", secs);
    k = enc_big(v, "<", 1 << 20, &secs, NULL);
    CHECK(k == (1 << 20), "1 MB of '<': %lld ids", (long long)k);
    CHECK(secs < BIG_SECONDS, "1 MB of '<' took %.2f s", secs);
    k = enc_big(v, "<s><start_of_turn", 1 << 20, &secs, NULL);
    CHECK(k > 0 && secs < BIG_SECONDS, "1 MB of near-specials: %lld ids in %.2f s", (long long)k, secs);
    k = enc_big(v, "\xe0", 1 << 20, &secs, NULL);
    CHECK(k == (1 << 20) && secs < BIG_SECONDS, "1 MB of lead bytes: %lld ids in %.2f s", (long long)k, secs);
    tok_free(v);

    /* the same vocab with add_space_prefix: every fragment gets "▁" in front, decode drops it */
    b = spm_image(&d, 1);
    v = load(&b, err, sizeof err);
    CHECK(v != NULL, "load: %s", err);
    if (v) {
        CHECK(ENC_IS(v, "ab", false, s_sp_ab), "space prefix");
        CHECK(ENC_IS(v, "aaa", false, s_sp_a, s_aa), "space prefix then merges");
        CHECK(ENC_IS(v, "<s>ab", true, S_BOS, s_sp_ab), "prefix after a special token");
        int32_t one[] = {s_sp_ab};
        CHECK(tok_decode(v, one, 1, false, buf, sizeof buf) == 2 && !strcmp(buf, "ab"), "decode strips");
        tok_free(v);
    }
    desc_free(&d);
}

static void test_bpe(void) {
    vocab_desc d;
    bpe_desc(&d);
    char err[256] = "";
    img b = bpe_image(&d, "qwen2");
    tok_vocab *v = load(&b, err, sizeof err);
    CHECK(v != NULL, "load: %s", err);
    if (!v) { desc_free(&d); return; }
    CHECK(tok_get_model(v) == TOK_MODEL_BPE, "model");
    CHECK(!tok_add_bos(v), "add_bos false");
    CHECK(tok_is_eog(v, b_im_end) && tok_is_eog(v, b_eot) && !tok_is_eog(v, b_think), "eog");
    /* ranks: "a b" (0) before "Ġ a" (2), then "ab c" (1) */
    CHECK(ENC_IS(v, "abc", false, b_abc), "abc");
    CHECK(ENC_IS(v, " abc", false, 32, b_abc), " abc"); /* Ġ stays alone: no merge "Ġ ab" */
    CHECK(ENC_IS(v, " a", false, b_sp_a), " a");
    /* qwen2 splits digits one by one, so "12" never merges */
    CHECK(ENC_IS(v, "123", false, '1', '2', '3'), "qwen2 digits");
    /* invalid UTF-8 becomes U+FFFD (EF BF BD) */
    CHECK(ENC_IS(v, "\xff", false, 0xEF, 0xBF, 0xBD), "invalid byte");
    CHECK(enc_is(v, "a\0b", 3, false, (const int[]){'a', 0, 'b', -1}), "NUL byte");
    CHECK(ENC_IS(v, "x<|im_end|>", true, 'x', b_im_end), "control parsed");
    CHECK(ENC_IS(v, "<think>", false, b_think), "user-defined always");
    char buf[64];
    int32_t seq[] = {b_sp_a, 0xC3, 0xA9, b_im_end, 0x0A};
    CHECK(tok_decode(v, seq, 5, false, buf, sizeof buf) == 5 && !strcmp(buf, " a\xc3\xa9\n"), "decode: %s", buf);
    CHECK(tok_decode(v, seq, 5, true, buf, sizeof buf) == 15, "decode special");

    int rt_fail = 0;
    rng_seed(11);
    for (int t = 0; t < 500; t++) {
        static const char *units[] = {"a", "b", "c", " ", "1", "2", "\t", "\n", "\r", "'", "s", "S", ".",
                                      "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xc2\xa0", "\x00"};
        char s[200], out[400];
        int32_t tids[400];
        size_t n = 0;
        for (int i = rng_int(40); i > 0; i--) {
            const char *u = units[rng_int((int)(sizeof units / sizeof units[0]))];
            size_t ul = *u ? strlen(u) : 1; /* "\x00" is one NUL byte */
            memcpy(s + n, u, ul);
            n += ul;
        }
        int64_t k = tok_encode(v, s, n, false, false, tids, 400);
        int64_t m = tok_decode(v, tids, k, false, out, sizeof out);
        if (k < 0 || m != (int64_t)n || memcmp(out, s, n)) rt_fail++;
    }
    CHECK(rt_fail == 0, "%d of 500 random strings did not round-trip", rt_fail);

    double secs;
    int64_t k = enc_big(v, "ab", 1 << 20, &secs, NULL); /* one 1 MB pre-token */
    CHECK(k == (1 << 19) && secs < BIG_SECONDS, "1 MB word: %lld ids in %.2f s", (long long)k, secs);
    k = enc_big(v, "1", 1 << 20, &secs, NULL);
    CHECK(k == (1 << 20) && secs < BIG_SECONDS, "1 MB of digits: %lld ids in %.2f s", (long long)k, secs);
    k = enc_big(v, " ", 1 << 20, &secs, NULL);
    CHECK(k == (1 << 20) && secs < BIG_SECONDS, "1 MB of spaces: %lld ids in %.2f s", (long long)k, secs);
    k = enc_big(v, "\xff", 1 << 20, &secs, NULL);
    CHECK(k == 3 * (1 << 20) && secs < BIG_SECONDS, "1 MB of bad bytes: %lld ids in %.2f s", (long long)k, secs);
    k = enc_big(v, "\n \t", 1 << 20, &secs, NULL);
    CHECK(k > 0 && secs < BIG_SECONDS, "1 MB of mixed spaces: %lld ids in %.2f s", (long long)k, secs);
    tok_free(v);

    /* llama-bpe: digits in threes, so "12" merges; a pre-token that is a token is taken whole */
    b = bpe_image(&d, "llama-bpe");
    v = load(&b, err, sizeof err);
    CHECK(v != NULL, "load: %s", err);
    if (v) {
        CHECK(ENC_IS(v, "1234", false, b_12, '3', '4'), "llama3 digits");
        CHECK(tok_add_bos(v) == false, "add_bos from the file wins");
        tok_free(v);
    }
    desc_free(&d);
}

/* Load errors: each broken file gives NULL and a message naming the problem. */
static void test_errors(void) {
    vocab_desc d;
    spm_desc(&d);
    char err[256];
    struct {
        const char *what, *expect;
        int variant;
    } cases[] = {
        {"no model key", "tokenizer.ggml.model", 0},
        {"unsupported model", "bert", 1},
        {"no tokens", "tokens", 2},
        {"short scores", "scores", 3},
        {"short types", "token_type", 4},
        {"bos out of range", "bos_token_id", 5},
        {"gpt2 without merges", "merges", 6},
        {"bad token type", "type", 7},
        {"tokens not strings", "tokens", 8},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int var = cases[c].variant;
        img b = img_begin();
        if (var != 0) kv_str(&b, "tokenizer.ggml.model", var == 1 ? "bert" : var == 6 ? "gpt2" : "llama");
        if (var == 8) kv_f32s(&b, "tokenizer.ggml.tokens", d.score, (size_t)d.n);
        else if (var != 2) kv_strs(&b, "tokenizer.ggml.tokens", (char **)d.tok, d.len, (size_t)d.n);
        kv_f32s(&b, "tokenizer.ggml.scores", d.score, (size_t)(var == 3 ? d.n - 1 : d.n));
        int32_t saved = d.type[5];
        if (var == 7) d.type[5] = 9;
        kv_i32s(&b, "tokenizer.ggml.token_type", d.type, (size_t)(var == 4 ? d.n - 1 : d.n));
        d.type[5] = saved;
        kv_u32(&b, "tokenizer.ggml.bos_token_id", var == 5 ? (uint32_t)d.n : 1);
        img_end(&b);
        err[0] = '\0';
        tok_vocab *v = load(&b, err, sizeof err);
        CHECK(v == NULL, "%s: loaded", cases[c].what);
        CHECK(strstr(err, cases[c].expect) != NULL, "%s: message '%s'", cases[c].what, err);
        tok_free(v);
    }
    tok_free(NULL);
    CHECK(tok_load(NULL, err, sizeof err) == NULL, "NULL context");
    desc_free(&d);
}

int main(void) {
    test_spm();
    test_bpe();
    test_errors();
    return check_summary("test_tok");
}
