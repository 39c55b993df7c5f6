/* GGUF reader tests: a well-formed image built here reads back exactly; every truncation and a
 * list of hostile headers (huge counts, bad offsets, bad types, bad alignment) fail with a
 * message instead of crashing; random byte corruption never crashes. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gguf.h"

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void str(buf *b, const char *s) { u64(b, strlen(s)); put(b, s, strlen(s)); }
static void pad(buf *b, size_t a) { while (b->n % a) put(b, "", 1); }

/* Knobs to break one thing at a time. */
typedef struct {
    uint32_t magic, version;
    uint64_t n_tensors_override, n_kv_override, str_len_override, arr_n_override;
    uint32_t tensor_type, n_dims, kv_type_override, alignment;
    uint64_t tensor_offset, dim0;
    int dup_key, nested_array, bool_value, dup_tensor;
} spec;

static spec good(void) {
    spec s = {0};
    memcpy(&s.magic, "GGUF", 4);
    s.version = 3;
    s.tensor_type = 0;
    s.n_dims = 2;
    s.alignment = 32;
    s.dim0 = 8;
    s.bool_value = 1;
    return s;
}

/* Two tensors: "a" f32 [dim0 x 2] and "b" f32 [4]; five metadata keys. */
static buf build(const spec *s) {
    buf b = {0};
    u32(&b, s->magic);
    u32(&b, s->version);
    u64(&b, s->n_tensors_override ? s->n_tensors_override : 2);
    u64(&b, s->n_kv_override ? s->n_kv_override : 5 + (s->dup_key ? 1 : 0));
    str(&b, "general.architecture");
    u32(&b, s->kv_type_override ? s->kv_type_override : GGUF_TYPE_STRING);
    if (s->str_len_override) { u64(&b, s->str_len_override); put(&b, "llama", 5); }
    else str(&b, "llama");
    str(&b, "test.count");
    u32(&b, GGUF_TYPE_UINT32);
    u32(&b, 42);
    str(&b, "test.flag");
    u32(&b, GGUF_TYPE_BOOL);
    unsigned char bv = (unsigned char)s->bool_value;
    put(&b, &bv, 1);
    str(&b, "test.names");
    u32(&b, GGUF_TYPE_ARRAY);
    if (s->nested_array) {
        u32(&b, GGUF_TYPE_ARRAY);
        u64(&b, 1);
        u32(&b, GGUF_TYPE_UINT8);
        u64(&b, 0);
    } else {
        u32(&b, GGUF_TYPE_STRING);
        u64(&b, s->arr_n_override ? s->arr_n_override : 3);
        str(&b, "x");
        str(&b, "");
        str(&b, "zz");
    }
    str(&b, "general.alignment");
    u32(&b, GGUF_TYPE_UINT32);
    u32(&b, s->alignment);
    if (s->dup_key) {
        str(&b, "test.count");
        u32(&b, GGUF_TYPE_UINT32);
        u32(&b, 7);
    }
    /* tensor a */
    str(&b, "a");
    u32(&b, s->n_dims);
    u64(&b, s->dim0);
    for (uint32_t d = 1; d < s->n_dims && d < 8; d++) u64(&b, 2);
    u32(&b, s->tensor_type);
    u64(&b, s->tensor_offset);
    /* tensor b */
    str(&b, s->dup_tensor ? "a" : "b");
    u32(&b, 1);
    u64(&b, 4);
    u32(&b, 0);
    u64(&b, 64);
    pad(&b, s->alignment && !(s->alignment & (s->alignment - 1)) ? s->alignment : 32);
    for (int i = 0; i < 16; i++) { float f = (float)i; put(&b, &f, 4); }
    for (int i = 0; i < 4; i++) { float f = 100.0f + i; put(&b, &f, 4); }
    return b;
}

static int opens(const spec *s, char *err, size_t errlen) {
    buf b = build(s);
    gguf_ctx *g = gguf_open_memory(b.p, b.n, err, errlen);
    int ok = g != NULL;
    gguf_close(g);
    free(b.p);
    return ok;
}


int main(int argc, char **argv) {
    rng_seed(88172645463325252ull);
    char err[512];
    spec s = good();
    buf b = build(&s);
    gguf_ctx *g = gguf_open_memory(b.p, b.n, err, sizeof err);
    CHECK(g != NULL, "good file must open: %s", err);
    if (g) {
        uint32_t c = 0;
        CHECK(gguf_get_u32(g, "test.count", &c) && c == 42, "u32 value %u", c);
        int64_t i64 = 0;
        CHECK(gguf_get_i64(g, "test.count", &i64) && i64 == 42, "u32 widens to i64");
        float f;
        CHECK(!gguf_get_f32(g, "test.count", &f), "an integer is not read as f32");
        bool fl = false;
        CHECK(gguf_get_bool(g, "test.flag", &fl) && fl, "bool value");
        const char *sv;
        uint64_t len;
        CHECK(gguf_get_str(g, "general.architecture", &sv, &len) && len == 5 && !memcmp(sv, "llama", 5),
              "string value");
        gguf_type et;
        uint64_t n;
        CHECK(gguf_get_arr(g, "test.names", &et, &n) && et == GGUF_TYPE_STRING && n == 3, "array info");
        const char *e2 = gguf_arr_str(g, "test.names", 2, &len);
        CHECK(e2 && len == 2 && !memcmp(e2, "zz", 2), "array element 2");
        CHECK(gguf_arr_str(g, "test.names", 3, &len) == NULL, "array index past the end");
        CHECK(gguf_find_key(g, "missing") == -1, "missing key");
        CHECK(gguf_n_tensors(g) == 2, "tensor count");
        const gguf_tensor *ta = gguf_find_tensor(g, "a"), *tb = gguf_find_tensor(g, "b");
        CHECK(ta && ta->ne[0] == 8 && ta->ne[1] == 2 && ta->size == 64, "tensor a shape");
        CHECK(tb && ((const float *)tb->data)[3] == 103.0f, "tensor b data");
        CHECK(ta && ((uintptr_t)ta->data - (uintptr_t)b.p) % 32 == 0, "data aligned");
        CHECK(gguf_find_tensor(g, "c") == NULL, "missing tensor");
        gguf_close(g);
    }

    /* every proper prefix of the file is truncated and must be rejected */
    int trunc_ok = 1;
    for (size_t n = 0; n < b.n; n++) {
        unsigned char *copy = malloc(n ? n : 1); /* exact size, so ASan sees any overread */
        memcpy(copy, b.p, n);
        gguf_ctx *t = gguf_open_memory(copy, n, err, sizeof err);
        if (t || !err[0]) trunc_ok = 0;
        gguf_close(t);
        free(copy);
    }
    CHECK(trunc_ok, "all %zu truncations rejected with a message", b.n);

    struct { const char *what; spec s; } bad[24];
    int nb = 0;
#define BAD(desc, stmt) do { bad[nb].what = desc; bad[nb].s = good(); { spec *x = &bad[nb].s; stmt; } nb++; } while (0)
    BAD("bad magic", memcpy(&x->magic, "GGML", 4));
    BAD("version 1", x->version = 1);
    BAD("version 99", x->version = 99);
    BAD("huge tensor count", x->n_tensors_override = 1ull << 60);
    BAD("huge kv count", x->n_kv_override = 1ull << 62);
    BAD("huge string length", x->str_len_override = 1ull << 62);
    BAD("huge array count", x->arr_n_override = 1ull << 61);
    BAD("tensor offset past the end", x->tensor_offset = 1ull << 40);
    BAD("tensor offset overflow", x->tensor_offset = UINT64_MAX - 31);
    BAD("unknown tensor type", x->tensor_type = 999);
    BAD("zero dims", x->n_dims = 0);
    BAD("five dims", x->n_dims = 5);
    BAD("zero-size dimension", x->dim0 = 0);
    BAD("huge dimension", x->dim0 = 1ull << 62);
    BAD("row not a block multiple", { x->tensor_type = 2; x->dim0 = 8; });
    BAD("misaligned offset", x->tensor_offset = 4);
    BAD("alignment not a power of two", x->alignment = 24);
    BAD("alignment zero", x->alignment = 0);
    BAD("duplicate key", x->dup_key = 1);
    BAD("duplicate tensor", x->dup_tensor = 1);
    BAD("invalid value type", x->kv_type_override = 77);
    BAD("nested array", x->nested_array = 1);
    BAD("bool not 0/1", x->bool_value = 7);
    for (int i = 0; i < nb; i++) {
        err[0] = 0;
        int ok = opens(&bad[i].s, err, sizeof err);
        CHECK(!ok && err[0], "%s must be rejected with a message", bad[i].what);
        if (!ok) printf("  %-30s -> %s\n", bad[i].what, err);
    }

    /* random corruption: flip bytes of the header region; must never crash (run under ASan in
     * `make asan`) and must either parse or explain */
    int explained = 1;
    for (int it = 0; it < 20000; it++) {
        unsigned char *copy = malloc(b.n);
        memcpy(copy, b.p, b.n);
        int flips = 1 + (int)(rng_u64() % 4);
        for (int k = 0; k < flips; k++) copy[rng_u64() % (b.n - 80)] = (unsigned char)rng_u64();
        size_t n = rng_u64() % 8 == 0 ? rng_u64() % b.n : b.n;
        err[0] = 0;
        gguf_ctx *t = gguf_open_memory(copy, n, err, sizeof err);
        if (!t && !err[0]) explained = 0;
        gguf_close(t);
        free(copy);
    }
    CHECK(explained, "every rejected random corruption carries a message");

    CHECK(gguf_open("/nonexistent/model.gguf", err, sizeof err) == NULL && strstr(err, "cannot open"),
          "missing file: %s", err);
    CHECK(gguf_open("/tmp", err, sizeof err) == NULL, "a directory is rejected");

    /* the real default model, when present */
    const char *model = argc > 1 ? argv[1] : "models/gemma-3-270m-q4_k_m.gguf";
    FILE *mf = fopen(model, "rb");
    if (mf) {
        fclose(mf);
        gguf_ctx *rg = gguf_open(model, err, sizeof err);
        CHECK(rg != NULL, "default model opens: %s", err);
        if (rg) {
            uint32_t layers = 0;
            CHECK(gguf_get_u32(rg, "gemma3.block_count", &layers) && layers == 18, "gemma3 block_count");
            CHECK(gguf_n_tensors(rg) == 236, "tensor count %lld", (long long)gguf_n_tensors(rg));
            gguf_type et;
            uint64_t n;
            CHECK(gguf_get_arr(rg, "tokenizer.ggml.tokens", &et, &n) && n == 262144, "vocab size");
            gguf_close(rg);
        }
    } else {
        printf("  skipped real-model checks: no model at %s\n", model);
    }
    free(b.p);
    return check_summary("test_gguf");
}
