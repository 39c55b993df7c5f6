/* Fuzz target: the GGUF reader on arbitrary bytes (gguf_open_memory), then every key, array
 * element and tensor through the public getters. Asserts what engine/gguf.h promises of a file
 * it accepts: keys unique and findable, getters consistent with the value types, every string
 * and array inside the input, every tensor's size that of its shape and type (GGML block sizes,
 * recomputed here) and its bytes inside the input. Memory errors are the sanitizers' part.
 * A file the reader accepts is also given to tok_load (the tokenizer metadata checks): a vocab
 * that loads must encode and decode a few strings with every id in range. */
#include <string.h>

#include "fuzz.h"
#include "gguf.h"
#include "tok.h"

/* GGML tensor types: elements per block and bytes per block (the spec; 0 when unknown). */
static int ggml_block(uint32_t t, unsigned *bytes) {
    static const struct { uint32_t t; int blk; unsigned bytes; } tab[] = {
        {0, 1, 4}, {1, 1, 2}, {2, 32, 18}, {3, 32, 20}, {6, 32, 22}, {7, 32, 24}, {8, 32, 34},
        {9, 32, 36}, {10, 256, 84}, {11, 256, 110}, {12, 256, 144}, {13, 256, 176}, {14, 256, 210},
        {15, 256, 292}, {24, 1, 1}, {25, 1, 2}, {26, 1, 4}, {27, 1, 8}, {28, 1, 8}, {30, 1, 2},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (tab[i].t == t) { *bytes = tab[i].bytes; return tab[i].blk; }
    return 0;
}

static size_t elem_size(gguf_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

static const uint8_t *g_base;
static size_t g_size;

/* [p, p + n) lies inside the input; its bytes are read (so ASan sees any stray pointer). */
static unsigned inside(const void *p, uint64_t n, const char *what) {
    const uint8_t *q = p;
    FUZZ_CHECK(q >= g_base && q <= g_base + g_size && n <= (uint64_t)(g_base + g_size - q),
               "%s: [%p, +%llu) outside the input [%p, +%zu)", what, p, (unsigned long long)n,
               (const void *)g_base, g_size);
    unsigned x = 0;
    if (n) x = q[0] ^ q[n - 1] ^ q[n / 2];
    return x;
}

static volatile unsigned sink;

static void walk_key(const gguf_ctx *g, int64_t i) {
    const char *key = gguf_kv_key(g, i);
    FUZZ_CHECK(key != NULL, "key %lld of %lld is NULL", (long long)i, (long long)gguf_n_kv(g));
    FUZZ_CHECK(gguf_find_key(g, key) == i, "key '%s' (index %lld) found at %lld", key, (long long)i,
               (long long)gguf_find_key(g, key));
    const gguf_type t = gguf_kv_type(g, i);
    FUZZ_CHECK(t < GGUF_TYPE_COUNT, "key '%s': type %d", key, (int)t);

    uint32_t u32 = 0;
    int64_t i64 = 0;
    float f32 = 0;
    bool b = false;
    const bool has_u32 = gguf_get_u32(g, key, &u32), has_i64 = gguf_get_i64(g, key, &i64);
    const bool has_f32 = gguf_get_f32(g, key, &f32), has_bool = gguf_get_bool(g, key, &b);
    const bool is_int = t <= GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
    if (t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_BOOL)
        FUZZ_CHECK(has_u32 && has_i64 && i64 == (int64_t)u32, "key '%s': small unsigned not read", key);
    if (is_int) FUZZ_CHECK(has_i64, "key '%s': integer not read as i64", key);
    if (has_u32 && has_i64) FUZZ_CHECK((int64_t)u32 == i64, "key '%s': u32 %u != i64 %lld", key, u32, (long long)i64);
    FUZZ_CHECK(has_f32 == (t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64), "key '%s': f32 getter", key);
    FUZZ_CHECK(has_bool == (t == GGUF_TYPE_BOOL || t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8),
               "key '%s': bool getter", key);
    if (t == GGUF_TYPE_STRING || t == GGUF_TYPE_ARRAY)
        FUZZ_CHECK(!has_u32 && !has_i64 && !has_f32 && !has_bool, "key '%s': number from a %s", key,
                   gguf_type_name(t));

    const char *s = NULL;
    uint64_t len = 0;
    const bool has_str = gguf_get_str(g, key, &s, &len);
    FUZZ_CHECK(has_str == (t == GGUF_TYPE_STRING), "key '%s': string getter", key);
    if (has_str) sink ^= inside(s, len, "string value");

    gguf_type et = GGUF_TYPE_COUNT;
    uint64_t n = 0;
    const bool has_arr = gguf_get_arr(g, key, &et, &n);
    FUZZ_CHECK(has_arr == (t == GGUF_TYPE_ARRAY), "key '%s': array getter", key);
    const void *data = gguf_arr_data(g, key);
    if (!has_arr) {
        FUZZ_CHECK(data == NULL && gguf_arr_str(g, key, 0, &len) == NULL, "key '%s': array data of a scalar", key);
        return;
    }
    FUZZ_CHECK(et < GGUF_TYPE_COUNT && et != GGUF_TYPE_ARRAY, "key '%s': element type %d", key, (int)et);
    if (et == GGUF_TYPE_STRING) {
        FUZZ_CHECK(data == NULL, "key '%s': packed data of a string array", key);
        FUZZ_CHECK(n <= g_size / 8, "key '%s': %llu strings in %zu bytes", key, (unsigned long long)n, g_size);
        for (uint64_t k = 0; k < n; k++) {
            const char *e = gguf_arr_str(g, key, k, &len);
            FUZZ_CHECK(e != NULL, "key '%s': string %llu of %llu missing", key, (unsigned long long)k,
                       (unsigned long long)n);
            sink ^= inside(e, len, "array string");
        }
        FUZZ_CHECK(gguf_arr_str(g, key, n, &len) == NULL, "key '%s': string past the end", key);
    } else {
        FUZZ_CHECK(data != NULL || n == 0, "key '%s': numeric array without data", key);
        const size_t es = elem_size(et);
        FUZZ_CHECK(es && n <= g_size / es, "key '%s': %llu elements of %zu bytes", key, (unsigned long long)n, es);
        if (data) sink ^= inside(data, n * es, "array data");
    }
}

static void walk_tensor(const gguf_ctx *g, int64_t i) {
    const gguf_tensor *t = gguf_tensor_at(g, i);
    FUZZ_CHECK(t != NULL && t->name != NULL, "tensor %lld missing", (long long)i);
    FUZZ_CHECK(gguf_find_tensor(g, t->name) == t, "tensor '%s' not found by name", t->name);
    FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS, "tensor '%s': %u dims", t->name, t->n_dims);
    unsigned __int128 nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        FUZZ_CHECK(t->ne[d] >= 1 && (d < (int)t->n_dims || t->ne[d] == 1), "tensor '%s': ne[%d] = %lld",
                   t->name, d, (long long)t->ne[d]);
        nel *= (uint64_t)t->ne[d];
    }
    unsigned bb = 0;
    const int bs = ggml_block(t->type, &bb);
    FUZZ_CHECK(bs > 0, "tensor '%s': unknown type %u accepted", t->name, t->type);
    FUZZ_CHECK(t->ne[0] % bs == 0, "tensor '%s': row %lld not a multiple of %d", t->name, (long long)t->ne[0], bs);
    const unsigned __int128 bytes = nel / bs * bb;
    FUZZ_CHECK(bytes == t->size, "tensor '%s': size %llu, but its shape and type make %.0f bytes", t->name,
               (unsigned long long)t->size, (double)bytes);
    sink ^= inside(t->data, t->size, "tensor data");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    g_base = data;
    g_size = size;
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("FUZZ_VERBOSE") != NULL;
    gguf_ctx *g = gguf_open_memory(data, size, err, sizeof err);
    if (verbose) fprintf(stderr, "fuzz_gguf: %zu bytes: %s\n", size, g ? "accepted" : err);
    if (!g) {
        FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "rejected without a reason");
        return 0;
    }
    FUZZ_CHECK(gguf_version(g) == 2 || gguf_version(g) == 3, "version %u", gguf_version(g));
    FUZZ_CHECK(gguf_file_size(g) == size, "size %zu of %zu", gguf_file_size(g), size);
    const int64_t n_kv = gguf_n_kv(g), n_t = gguf_n_tensors(g);
    FUZZ_CHECK(n_kv >= 0 && n_t >= 0, "counts %lld %lld", (long long)n_kv, (long long)n_t);
    for (int64_t i = 0; i < n_kv; i++) walk_key(g, i);
    for (int64_t i = 0; i < n_t; i++) walk_tensor(g, i);
    FUZZ_CHECK(gguf_kv_key(g, n_kv) == NULL && gguf_kv_key(g, -1) == NULL, "key out of range");
    FUZZ_CHECK(gguf_kv_type(g, n_kv) == GGUF_TYPE_COUNT, "type out of range");
    FUZZ_CHECK(gguf_tensor_at(g, n_t) == NULL && gguf_tensor_at(g, -1) == NULL, "tensor out of range");
    tok_vocab *v = tok_load(g, err, sizeof err);
    gguf_close(g); /* the vocab holds no pointer into the file */
    if (verbose) fprintf(stderr, "fuzz_gguf: tok_load: %s\n", v ? "loaded" : err);
    if (!v) {
        FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "tok_load refused without a reason");
        return 0;
    }
    static const char *texts[] = {"Hello world", " <s>x</s> \xff\xfe\xe2\x96\x81 12345\n\t", ""};
    for (int i = 0; i < 3; i++) {
        int32_t ids[256];
        int64_t n = tok_encode(v, texts[i], strlen(texts[i]), true, true, ids, 256);
        FUZZ_CHECK(n >= 0 || n == TOK_ERR_NOMEM, "tok_encode: %s", tok_strerror(n));
        for (int64_t k = 0; k < n && k < 256; k++)
            FUZZ_CHECK(ids[k] >= 0 && ids[k] < tok_n_vocab(v), "id %d of %d", ids[k], tok_n_vocab(v));
        char out[512];
        int64_t m = tok_decode(v, ids, n < 256 ? n : 256, true, out, sizeof out);
        FUZZ_CHECK(m >= 0, "tok_decode %lld", (long long)m);
    }
    tok_free(v);
    return 0;
}
