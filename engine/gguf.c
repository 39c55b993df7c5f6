/* GGUF v3 reader. The file is mapped read-only; parsing walks it with a bounds-checked cursor,
 * so every length, count and offset is validated against the bytes actually present before it
 * is used. Keys and tensor names are copied; values stay in the mapping and are read on demand. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Limits that no real model approaches but that keep a hostile header from making us
 * allocate or loop without bound before the file size check catches it. */
#define GGUF_MAX_KEY_LEN    65536
#define GGUF_MAX_NAME_LEN   64
#define GGUF_MAX_ARR_DEPTH  1   /* arrays of arrays are not used by any model; reject them */

/* ggml types known to the reader for size computation: block size and bytes per block. */
static int type_block(uint32_t t, size_t *bytes) {
    switch (t) {
    case 0: *bytes = 4; return 1;     /* F32 */
    case 1: *bytes = 2; return 1;     /* F16 */
    case 2: *bytes = 18; return 32;   /* Q4_0 */
    case 3: *bytes = 20; return 32;   /* Q4_1 */
    case 6: *bytes = 22; return 32;   /* Q5_0 */
    case 7: *bytes = 24; return 32;   /* Q5_1 */
    case 8: *bytes = 34; return 32;   /* Q8_0 */
    case 9: *bytes = 36; return 32;   /* Q8_1 */
    case 10: *bytes = 84; return 256; /* Q2_K */
    case 11: *bytes = 110; return 256;/* Q3_K */
    case 12: *bytes = 144; return 256;/* Q4_K */
    case 13: *bytes = 176; return 256;/* Q5_K */
    case 14: *bytes = 210; return 256;/* Q6_K */
    case 15: *bytes = 292; return 256;/* Q8_K */
    case 24: *bytes = 1; return 1;    /* I8 */
    case 25: *bytes = 2; return 1;    /* I16 */
    case 26: *bytes = 4; return 1;    /* I32 */
    case 27: *bytes = 8; return 1;    /* I64 */
    case 28: *bytes = 8; return 1;    /* F64 */
    case 30: *bytes = 2; return 1;    /* BF16 */
    default: *bytes = 0; return 0;
    }
}

typedef struct {
    char *key;
    gguf_type type;
    const uint8_t *val;       /* start of the value in the mapping (after the type tag) */
    gguf_type arr_type;       /* arrays only */
    uint64_t arr_n;
    const uint8_t **arr_str;  /* string arrays: start of each element's length prefix */
} kv_entry;

struct gguf_ctx {
    const uint8_t *base;
    size_t size;
    int mapped;               /* base came from mmap and must be unmapped */
    uint32_t version;
    uint32_t alignment;
    int64_t n_kv, n_tensors;
    kv_entry *kv;
    gguf_tensor *tensors;
    uint64_t data_offset;
    /* open-addressing hashes of key and tensor names for O(1) lookups */
    int64_t *khash, *thash;
    uint64_t khash_cap, thash_cap;
};

typedef struct {
    const uint8_t *base, *p, *end;
    char *err;
    size_t errlen;
    int failed;
} cursor;

static void fail(cursor *c, const char *fmt, ...) {
    if (c->failed) return;
    c->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    if (c->err && c->errlen) vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
}

static int need(cursor *c, uint64_t n, const char *what) {
    if (c->failed) return 0;
    if ((uint64_t)(c->end - c->p) < n) {
        fail(c, "gguf: truncated file while reading %s (need %llu bytes at offset %llu, %llu left)",
             what, (unsigned long long)n, (unsigned long long)(c->p - c->base),
             (unsigned long long)(c->end - c->p));
        return 0;
    }
    return 1;
}

/* Copies the next n bytes to out and moves past them; out is left alone when they are missing. */
static void rd_bytes(cursor *c, void *out, size_t n, const char *what) {
    if (!need(c, n, what)) return;
    memcpy(out, c->p, n);
    c->p += n;
}

static uint32_t rd_u32(cursor *c, const char *what) {
    uint32_t v = 0;
    rd_bytes(c, &v, 4, what);
    return v;
}

static uint64_t rd_u64(cursor *c, const char *what) {
    uint64_t v = 0;
    rd_bytes(c, &v, 8, what);
    return v;
}

/* Reads a string's length prefix and skips its bytes; returns its start. */
static const uint8_t *rd_str(cursor *c, uint64_t *len, uint64_t max, const char *what) {
    uint64_t n = rd_u64(c, what);
    if (c->failed) return NULL;
    if (n > max) {
        fail(c, "gguf: %s length %llu exceeds limit %llu", what, (unsigned long long)n,
             (unsigned long long)max);
        return NULL;
    }
    if (!need(c, n, what)) return NULL;
    const uint8_t *s = c->p;
    c->p += n;
    *len = n;
    return s;
}

static size_t scalar_size(gguf_type t) {
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_type_name(gguf_type t) {
    static const char *names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
                                  "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < GGUF_TYPE_COUNT ? names[t] : "invalid";
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int parse_value(cursor *c, kv_entry *e) {
    e->val = c->p;
    if (e->type == GGUF_TYPE_STRING) {
        uint64_t len;
        rd_str(c, &len, c->end - c->p, "string value");
        return !c->failed;
    }
    if (e->type == GGUF_TYPE_ARRAY) {
        uint32_t at = rd_u32(c, "array type");
        uint64_t n = rd_u64(c, "array count");
        if (c->failed) return 0;
        if (at >= GGUF_TYPE_COUNT || at == GGUF_TYPE_ARRAY) {
            fail(c, "gguf: key '%s': unsupported array element type %u", e->key, at);
            return 0;
        }
        e->arr_type = (gguf_type)at;
        e->arr_n = n;
        e->val = c->p;
        if (at == GGUF_TYPE_STRING) {
            /* each element takes at least its 8-byte length prefix */
            if (n > (uint64_t)(c->end - c->p) / 8) {
                fail(c, "gguf: key '%s': string array count %llu exceeds the file", e->key,
                     (unsigned long long)n);
                return 0;
            }
            e->arr_str = malloc((n ? n : 1) * sizeof *e->arr_str);
            if (!e->arr_str) { fail(c, "gguf: out of memory for key '%s'", e->key); return 0; }
            for (uint64_t i = 0; i < n; i++) {
                uint64_t len;
                e->arr_str[i] = c->p;
                rd_str(c, &len, c->end - c->p, "array string");
                if (c->failed) return 0;
            }
            return 1;
        }
        size_t es = scalar_size(e->arr_type);
        if (n > (uint64_t)(c->end - c->p) / es) {
            fail(c, "gguf: key '%s': array of %llu %s exceeds the file", e->key,
                 (unsigned long long)n, gguf_type_name(e->arr_type));
            return 0;
        }
        c->p += n * es;
        return 1;
    }
    size_t sz = scalar_size(e->type);
    if (!sz) {
        fail(c, "gguf: key '%s': invalid value type %u", e->key, (unsigned)e->type);
        return 0;
    }
    if (!need(c, sz, "value")) return 0;
    if (e->type == GGUF_TYPE_BOOL && *c->p > 1) {
        fail(c, "gguf: key '%s': bool value %u is neither 0 nor 1", e->key, *c->p);
        return 0;
    }
    c->p += sz;
    return 1;
}

static kv_entry *find_kv(const gguf_ctx *ctx, const char *key) {
    int64_t i = gguf_find_key(ctx, key);
    return i < 0 ? NULL : &ctx->kv[i];
}

static gguf_ctx *parse(gguf_ctx *ctx, char *err, size_t errlen) {
    cursor c = {ctx->base, ctx->base, ctx->base + ctx->size, err, errlen, 0};
    if (err && errlen) err[0] = 0;

    if (!need(&c, 4, "magic")) goto bad;
    if (memcmp(c.p, "GGUF", 4) != 0) {
        fail(&c, "gguf: bad magic (not a GGUF file)");
        goto bad;
    }
    c.p += 4;
    ctx->version = rd_u32(&c, "version");
    if (c.failed) goto bad;
    if (ctx->version != 3 && ctx->version != 2) {
        fail(&c, "gguf: unsupported version %u (expected 3)", ctx->version);
        goto bad;
    }
    uint64_t n_tensors = rd_u64(&c, "tensor count");
    uint64_t n_kv = rd_u64(&c, "metadata count");
    if (c.failed) goto bad;
    /* each kv needs at least 8 (key len) + 4 (type) + 1 bytes; each tensor info at least 8+4+8+4+8 */
    uint64_t left = c.end - c.p;
    if (n_kv > left / 13) {
        fail(&c, "gguf: metadata count %llu exceeds the file", (unsigned long long)n_kv);
        goto bad;
    }
    if (n_tensors > left / 32) {
        fail(&c, "gguf: tensor count %llu exceeds the file", (unsigned long long)n_tensors);
        goto bad;
    }
    ctx->kv = calloc(n_kv ? n_kv : 1, sizeof *ctx->kv);
    ctx->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *ctx->tensors);
    ctx->khash_cap = 16;
    while (ctx->khash_cap < 2 * n_kv) ctx->khash_cap <<= 1;
    ctx->khash = malloc(ctx->khash_cap * sizeof *ctx->khash);
    if (!ctx->kv || !ctx->tensors || !ctx->khash) {
        fail(&c, "gguf: out of memory");
        goto bad;
    }
    for (uint64_t i = 0; i < ctx->khash_cap; i++) ctx->khash[i] = -1;
    ctx->thash_cap = 16;
    while (ctx->thash_cap < 2 * n_tensors) ctx->thash_cap <<= 1;
    ctx->thash = malloc(ctx->thash_cap * sizeof *ctx->thash);
    if (!ctx->thash) {
        fail(&c, "gguf: out of memory");
        goto bad;
    }
    for (uint64_t i = 0; i < ctx->thash_cap; i++) ctx->thash[i] = -1;

    for (uint64_t i = 0; i < n_kv; i++) {
        kv_entry *e = &ctx->kv[i];
        uint64_t klen;
        const uint8_t *k = rd_str(&c, &klen, GGUF_MAX_KEY_LEN, "metadata key");
        if (c.failed) goto bad;
        e->key = malloc(klen + 1);
        if (!e->key) { fail(&c, "gguf: out of memory"); goto bad; }
        memcpy(e->key, k, klen);
        e->key[klen] = 0;
        ctx->n_kv = i + 1;
        if (strlen(e->key) != klen) {
            fail(&c, "gguf: metadata key %llu contains a NUL byte", (unsigned long long)i);
            goto bad;
        }
        uint32_t t = rd_u32(&c, "metadata type");
        if (c.failed) goto bad;
        if (t >= GGUF_TYPE_COUNT) {
            fail(&c, "gguf: key '%s': invalid value type %u", e->key, t);
            goto bad;
        }
        e->type = (gguf_type)t;
        if (!parse_value(&c, e)) goto bad;
        uint64_t h = hash_bytes(e->key, klen) & (ctx->khash_cap - 1);
        while (ctx->khash[h] >= 0) {
            if (strcmp(ctx->kv[ctx->khash[h]].key, e->key) == 0) {
                fail(&c, "gguf: duplicate metadata key '%s'", e->key);
                goto bad;
            }
            h = (h + 1) & (ctx->khash_cap - 1);
        }
        ctx->khash[h] = (int64_t)i;
    }

    ctx->alignment = 32;
    kv_entry *al = find_kv(ctx, "general.alignment");
    if (al) {
        uint32_t a;
        if (!gguf_get_u32(ctx, "general.alignment", &a) || a == 0 || (a & (a - 1)) || a > (1u << 20)) {
            fail(&c, "gguf: general.alignment must be a power of two");
            goto bad;
        }
        ctx->alignment = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor *t = &ctx->tensors[i];
        uint64_t nlen;
        const uint8_t *nm = rd_str(&c, &nlen, 1u << 16, "tensor name");
        if (c.failed) goto bad;
        char *name = malloc(nlen + 1);
        if (!name) { fail(&c, "gguf: out of memory"); goto bad; }
        memcpy(name, nm, nlen);
        name[nlen] = 0;
        t->name = name;
        ctx->n_tensors = i + 1;
        if (nlen >= GGUF_MAX_NAME_LEN || strlen(name) != nlen) {
            fail(&c, "gguf: tensor %llu: invalid name (length %llu)", (unsigned long long)i,
                 (unsigned long long)nlen);
            goto bad;
        }
        t->n_dims = rd_u32(&c, "tensor dims");
        if (c.failed) goto bad;
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
            fail(&c, "gguf: tensor '%s': %u dimensions (1..4 allowed)", name, t->n_dims);
            goto bad;
        }
        uint64_t nel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne = rd_u64(&c, "tensor shape");
            if (c.failed) goto bad;
            if (ne == 0 || ne > (1ull << 40) || nel > (1ull << 62) / ne) {
                fail(&c, "gguf: tensor '%s': invalid dimension %llu", name, (unsigned long long)ne);
                goto bad;
            }
            t->ne[d] = (int64_t)ne;
            nel *= ne;
        }
        t->type = rd_u32(&c, "tensor type");
        t->offset = rd_u64(&c, "tensor offset");
        if (c.failed) goto bad;
        size_t bb;
        int bs = type_block(t->type, &bb);
        if (!bs) {
            fail(&c, "gguf: tensor '%s': unknown tensor type %u", name, t->type);
            goto bad;
        }
        if (t->ne[0] % bs) {
            fail(&c, "gguf: tensor '%s': row length %lld is not a multiple of the block size %d",
                 name, (long long)t->ne[0], bs);
            goto bad;
        }
        if (nel / bs > UINT64_MAX / bb) { /* 2^62 elements of 8 bytes would wrap to 0 */
            fail(&c, "gguf: tensor '%s': %llu elements are too many bytes", name, (unsigned long long)nel);
            goto bad;
        }
        t->size = nel / bs * bb;
        if (t->offset % ctx->alignment) {
            fail(&c, "gguf: tensor '%s': offset %llu is not aligned to %u", name,
                 (unsigned long long)t->offset, ctx->alignment);
            goto bad;
        }
        uint64_t h = hash_bytes(name, nlen) & (ctx->thash_cap - 1);
        while (ctx->thash[h] >= 0) {
            if (strcmp(ctx->tensors[ctx->thash[h]].name, name) == 0) {
                fail(&c, "gguf: duplicate tensor name '%s'", name);
                goto bad;
            }
            h = (h + 1) & (ctx->thash_cap - 1);
        }
        ctx->thash[h] = (int64_t)i;
    }

    uint64_t pos = (uint64_t)(c.p - ctx->base);
    ctx->data_offset = (pos + ctx->alignment - 1) / ctx->alignment * ctx->alignment;
    if (ctx->data_offset > ctx->size && n_tensors > 0) {
        fail(&c, "gguf: truncated file: data section starts past the end");
        goto bad;
    }
    uint64_t data_size = ctx->size > ctx->data_offset ? ctx->size - ctx->data_offset : 0;
    for (int64_t i = 0; i < ctx->n_tensors; i++) {
        gguf_tensor *t = &ctx->tensors[i];
        if (t->offset > data_size || t->size > data_size - t->offset) {
            fail(&c, "gguf: tensor '%s' (offset %llu, %llu bytes) extends past the end of the file"
                     " (data section holds %llu bytes)", t->name, (unsigned long long)t->offset,
                 (unsigned long long)t->size, (unsigned long long)data_size);
            goto bad;
        }
        t->data = ctx->base + ctx->data_offset + t->offset;
    }
    return ctx;
bad:
    if (err && errlen && !err[0]) snprintf(err, errlen, "gguf: invalid file");
    gguf_close(ctx);
    return NULL;
}

gguf_ctx *gguf_open_memory(const void *data, size_t size, char *err, size_t errlen) {
    gguf_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        snprintf(err, errlen, "gguf: out of memory");
        return NULL;
    }
    ctx->base = data;
    ctx->size = size;
    return parse(ctx, err, errlen);
}

gguf_ctx *gguf_open(const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "gguf: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "gguf: %s is not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size < 8) {
        snprintf(err, errlen, "gguf: %s: truncated file (%lld bytes)", path, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    /* MAP_PRIVATE: a writer replacing the file in place cannot change the pages we already read
     * in a way that bypasses validation more than it would anyway; callers treat data as input. */
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "gguf: cannot map %s: %s", path, strerror(errno));
        return NULL;
    }
    gguf_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        munmap(p, (size_t)st.st_size);
        snprintf(err, errlen, "gguf: out of memory");
        return NULL;
    }
    ctx->base = p;
    ctx->size = (size_t)st.st_size;
    ctx->mapped = 1;
    char inner[256];
    ctx = parse(ctx, inner, sizeof inner);
    if (!ctx) snprintf(err, errlen, "%s: %s", path, inner);
    return ctx;
}

void gguf_close(gguf_ctx *ctx) {
    if (!ctx) return;
    for (int64_t i = 0; i < ctx->n_kv; i++) {
        free(ctx->kv[i].key);
        free(ctx->kv[i].arr_str);
    }
    for (int64_t i = 0; i < ctx->n_tensors; i++) free((char *)ctx->tensors[i].name);
    free(ctx->kv);
    free(ctx->tensors);
    free(ctx->khash);
    free(ctx->thash);
    if (ctx->mapped) munmap((void *)ctx->base, ctx->size);
    free(ctx);
}

uint32_t gguf_version(const gguf_ctx *ctx) { return ctx->version; }
size_t gguf_file_size(const gguf_ctx *ctx) { return ctx->size; }
int64_t gguf_n_kv(const gguf_ctx *ctx) { return ctx->n_kv; }
int64_t gguf_n_tensors(const gguf_ctx *ctx) { return ctx->n_tensors; }

int64_t gguf_find_key(const gguf_ctx *ctx, const char *key) {
    if (!ctx->khash) return -1;
    uint64_t h = hash_bytes(key, strlen(key)) & (ctx->khash_cap - 1);
    while (ctx->khash[h] >= 0) {
        if (strcmp(ctx->kv[ctx->khash[h]].key, key) == 0) return ctx->khash[h];
        h = (h + 1) & (ctx->khash_cap - 1);
    }
    return -1;
}

const char *gguf_kv_key(const gguf_ctx *ctx, int64_t i) {
    return i >= 0 && i < ctx->n_kv ? ctx->kv[i].key : NULL;
}

gguf_type gguf_kv_type(const gguf_ctx *ctx, int64_t i) {
    return i >= 0 && i < ctx->n_kv ? ctx->kv[i].type : GGUF_TYPE_COUNT;
}

/* Reads a scalar of any numeric type; is_int tells whether it is an exact integer. */
static int read_number(const kv_entry *e, int64_t *iv, uint64_t *uv, double *fv, int *kind) {
    const uint8_t *p = e->val;
    switch (e->type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_BOOL: *uv = p[0]; *kind = 1; return 1;
    case GGUF_TYPE_INT8: *iv = (int8_t)p[0]; *kind = 0; return 1;
    case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); *uv = v; *kind = 1; return 1; }
    case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); *iv = v; *kind = 0; return 1; }
    case GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); *uv = v; *kind = 1; return 1; }
    case GGUF_TYPE_INT32: { int32_t v; memcpy(&v, p, 4); *iv = v; *kind = 0; return 1; }
    case GGUF_TYPE_UINT64: { uint64_t v; memcpy(&v, p, 8); *uv = v; *kind = 1; return 1; }
    case GGUF_TYPE_INT64: { int64_t v; memcpy(&v, p, 8); *iv = v; *kind = 0; return 1; }
    case GGUF_TYPE_FLOAT32: { float v; memcpy(&v, p, 4); *fv = v; *kind = 2; return 1; }
    case GGUF_TYPE_FLOAT64: { double v; memcpy(&v, p, 8); *fv = v; *kind = 2; return 1; }
    default: return 0;
    }
}

bool gguf_get_u32(const gguf_ctx *ctx, const char *key, uint32_t *out) {
    const kv_entry *e = find_kv(ctx, key);
    int64_t iv = 0; uint64_t uv = 0; double fv = 0; int kind;
    if (!e || !read_number(e, &iv, &uv, &fv, &kind)) return false;
    if (kind == 1 && uv <= UINT32_MAX) { *out = (uint32_t)uv; return true; }
    if (kind == 0 && iv >= 0 && iv <= (int64_t)UINT32_MAX) { *out = (uint32_t)iv; return true; }
    return false;
}

bool gguf_get_i64(const gguf_ctx *ctx, const char *key, int64_t *out) {
    const kv_entry *e = find_kv(ctx, key);
    int64_t iv = 0; uint64_t uv = 0; double fv = 0; int kind;
    if (!e || !read_number(e, &iv, &uv, &fv, &kind)) return false;
    if (kind == 1 && uv <= (uint64_t)INT64_MAX) { *out = (int64_t)uv; return true; }
    if (kind == 0) { *out = iv; return true; }
    return false;
}

bool gguf_get_f32(const gguf_ctx *ctx, const char *key, float *out) {
    const kv_entry *e = find_kv(ctx, key);
    int64_t iv = 0; uint64_t uv = 0; double fv = 0; int kind;
    if (!e || !read_number(e, &iv, &uv, &fv, &kind)) return false;
    if (kind != 2) return false;
    *out = (float)fv;
    return true;
}

bool gguf_get_bool(const gguf_ctx *ctx, const char *key, bool *out) {
    const kv_entry *e = find_kv(ctx, key);
    if (!e || (e->type != GGUF_TYPE_BOOL && e->type != GGUF_TYPE_UINT8 && e->type != GGUF_TYPE_INT8))
        return false;
    *out = e->val[0] != 0;
    return true;
}

bool gguf_get_str(const gguf_ctx *ctx, const char *key, const char **s, uint64_t *len) {
    const kv_entry *e = find_kv(ctx, key);
    if (!e || e->type != GGUF_TYPE_STRING) return false;
    uint64_t n;
    memcpy(&n, e->val, 8);
    *s = (const char *)e->val + 8;
    *len = n;
    return true;
}

bool gguf_get_arr(const gguf_ctx *ctx, const char *key, gguf_type *elem_type, uint64_t *n) {
    const kv_entry *e = find_kv(ctx, key);
    if (!e || e->type != GGUF_TYPE_ARRAY) return false;
    *elem_type = e->arr_type;
    *n = e->arr_n;
    return true;
}

const void *gguf_arr_data(const gguf_ctx *ctx, const char *key) {
    const kv_entry *e = find_kv(ctx, key);
    if (!e || e->type != GGUF_TYPE_ARRAY || e->arr_type == GGUF_TYPE_STRING) return NULL;
    return e->val;
}

const char *gguf_arr_str(const gguf_ctx *ctx, const char *key, uint64_t i, uint64_t *len) {
    const kv_entry *e = find_kv(ctx, key);
    if (!e || e->type != GGUF_TYPE_ARRAY || e->arr_type != GGUF_TYPE_STRING || i >= e->arr_n)
        return NULL;
    uint64_t n;
    memcpy(&n, e->arr_str[i], 8);
    *len = n;
    return (const char *)e->arr_str[i] + 8;
}

const gguf_tensor *gguf_tensor_at(const gguf_ctx *ctx, int64_t i) {
    return i >= 0 && i < ctx->n_tensors ? &ctx->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_ctx *ctx, const char *name) {
    if (!ctx->thash) return NULL;
    uint64_t h = hash_bytes(name, strlen(name)) & (ctx->thash_cap - 1);
    while (ctx->thash[h] >= 0) {
        if (strcmp(ctx->tensors[ctx->thash[h]].name, name) == 0) return &ctx->tensors[ctx->thash[h]];
        h = (h + 1) & (ctx->thash_cap - 1);
    }
    return NULL;
}
