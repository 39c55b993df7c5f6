/* Registered contexts: build (prefill + clustering + calibration), persist atomically in one
 * checksummed file, map back without copying, and hand the pages and centroids to sequences.
 * The file is the unit of truth: a context in memory after eng_ctx_load is a view of it. */
#include "context.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "context_file.h"
#include "util.h"

struct eng_ctx {
    atomic_int refs;
    const eng_model *m;
    eng_ctx_params p;
    int n;
    int32_t *tokens;       /* owned, or points into the mapping */
    bool own_tokens;
    eng_seq *seq;          /* built here: the sequence that holds the KV (owned) */
    kv_store *kv_loaded;   /* loaded: a store adopting the mapped pages (owned) */
    const kv_store *kv;
    int64_t lo, hi;
    int n_layer, n_head_kv;
    idx_cent **cent;       /* (n_layer, n_head_kv), NULL for local layers */
    float *thr;            /* (n_layer, n_head_kv) threshold at the default target */
    float global_curve[IDX_CENT_GRID];
    eng_ctx_info info;
    void *map;
    size_t map_len;
};

eng_ctx_params eng_ctx_params_default(void) {
    /* global_calib: at equal reads, +0.02 mass recall over per-head thresholds on gemma-3 */
    return (eng_ctx_params){.fine_frac = 0.05f, .coarse_frac = 0.01f, .obs_tokens = 100, .target = 0.03f,
                            .n_sink = 128, .n_tail = 512, .global_calib = 1};
}

/* ---- hashing: a 4-lane multiply-rotate hash over 8-byte words (corruption detection and
 * fingerprints, not security) ---- */

typedef struct {
    uint64_t v[4];
    uint8_t tail[32];
    size_t nt;
    uint64_t total;
} hasher;

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static const uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full;

static void h_init(hasher *h, uint64_t seed) {
    memset(h, 0, sizeof *h);
    h->v[0] = seed + P1 + P2;
    h->v[1] = seed + P2;
    h->v[2] = seed;
    h->v[3] = seed - P1;
}

static inline uint64_t round64(uint64_t acc, uint64_t w) { return rotl(acc + w * P2, 31) * P1; }

static void h_block(hasher *h, const uint8_t *p) {
    uint64_t w[4];
    memcpy(w, p, 32);
    for (int i = 0; i < 4; i++) h->v[i] = round64(h->v[i], w[i]);
}

static void h_update(hasher *h, const void *data, size_t len) {
    const uint8_t *p = data;
    h->total += len;
    if (h->nt) {
        size_t k = 32 - h->nt < len ? 32 - h->nt : len;
        memcpy(h->tail + h->nt, p, k);
        h->nt += k;
        p += k;
        len -= k;
        if (h->nt < 32) return;
        h_block(h, h->tail);
        h->nt = 0;
    }
    for (; len >= 32; p += 32, len -= 32) h_block(h, p);
    memcpy(h->tail, p, len);
    h->nt = len;
}

static uint64_t h_final(const hasher *h) {
    uint64_t x = rotl(h->v[0], 1) + rotl(h->v[1], 7) + rotl(h->v[2], 12) + rotl(h->v[3], 18);
    x ^= h->total * P1;
    for (size_t i = 0; i < h->nt; i++) x = rotl(x ^ (h->tail[i] * P1), 11) * P2;
    x ^= x >> 33;
    x *= P2;
    x ^= x >> 29;
    return x;
}

uint64_t eng_ctx_file_checksum(const void *file, size_t len) {
    ctx_header z;
    if (len < sizeof z) return 0;
    memcpy(&z, file, sizeof z);
    z.checksum = 0;
    hasher h;
    h_init(&h, 0);
    h_update(&h, &z, sizeof z);
    h_update(&h, (const uint8_t *)file + sizeof z, len - sizeof z);
    return h_final(&h);
}

uint64_t eng_model_fingerprint(const eng_model *m) {
    const gguf_ctx *g = eng_model_gguf(m);
    const eng_hparams *hp = eng_model_hparams(m);
    hasher h;
    h_init(&h, 0x6b76736565);
    h_update(&h, hp, sizeof *hp);
    const int64_t nt = gguf_n_tensors(g);
    for (int64_t i = 0; i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        h_update(&h, t->name, strlen(t->name));
        h_update(&h, &t->type, sizeof t->type);
        h_update(&h, t->ne, sizeof t->ne);
        h_update(&h, &t->offset, sizeof t->offset);
        /* samples of the weights: a fine-tune of the same shape has other keys */
        h_update(&h, t->data, t->size < 256 ? t->size : 256);
        if (t->size > 512) h_update(&h, (const char *)t->data + t->size - 256, 256);
    }
    return h_final(&h);
}

uint64_t eng_ctx_content_hash(const eng_model *m, const eng_ctx_params *p, const int32_t *tokens, int n) {
    hasher h;
    h_init(&h, eng_model_fingerprint(m));
    const eng_ctx_params d = p ? *p : eng_ctx_params_default();
    const float f[3] = {d.fine_frac, d.coarse_frac, d.target};
    const int32_t i[4] = {d.obs_tokens, d.n_sink, d.n_tail, d.global_calib};
    h_update(&h, f, sizeof f);
    h_update(&h, i, sizeof i);
    h_update(&h, tokens, sizeof(int32_t) * (size_t)n);
    return h_final(&h);
}

/* ---- building ---- */

eng_seq *eng_ctx_prefill_seq(const eng_model *m, int n_tokens, const eng_ctx_params *p, char *err,
                             size_t errlen) {
    eng_ctx_params d = eng_ctx_params_default();
    if (!p) p = &d;
    if (n_tokens < 1) {
        eng_set_err(err, errlen, "a context needs at least one token");
        return NULL;
    }
    eng_attn_params a = eng_attn_default(); /* dense prefill */
    eng_seq *s = eng_seq_create_ex(m, n_tokens, &a, err, errlen);
    if (!s) return NULL;
    int64_t from = n_tokens - (p->obs_tokens > 0 ? p->obs_tokens : 1);
    if (from < 0) from = 0;
    if (eng_seq_capture_queries(s, from, n_tokens, err, errlen)) {
        eng_seq_free(s);
        return NULL;
    }
    return s;
}

static eng_ctx *ctx_alloc(const eng_model *m, const eng_ctx_params *p, int n) {
    const eng_hparams *hp = eng_model_hparams(m);
    eng_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 1);
    c->m = m;
    c->p = *p;
    c->n = n;
    c->n_layer = hp->n_layer;
    c->n_head_kv = hp->n_head_kv;
    c->cent = calloc((size_t)hp->n_layer * hp->n_head_kv, sizeof *c->cent);
    c->thr = calloc((size_t)hp->n_layer * hp->n_head_kv, sizeof *c->thr);
    if (c->cent && c->thr) return c;
    free(c->cent);
    free(c->thr);
    free(c);
    return NULL;
}

/* The clustered range: everything between the sinks and the tail. */
static void clustered_range(const eng_ctx_params *p, int n, int64_t *lo, int64_t *hi) {
    *lo = p->n_sink < n ? p->n_sink : n;
    *hi = n - p->n_tail;
    if (*hi < *lo) *hi = *lo;
}

/* Per-head thresholds at the default target, and the pooled curve for a global threshold. */
static void calibrate(eng_ctx *c) {
    double acc[IDX_CENT_GRID] = {0}, w = 0;
    float curve[IDX_CENT_GRID];
    for (int i = 0; i < c->n_layer * c->n_head_kv; i++) {
        if (!c->cent[i]) continue;
        idx_cent_curve(c->cent[i], curve);
        const double nk = (double)idx_cent_n_keys(c->cent[i]);
        for (int g = 0; g < IDX_CENT_GRID; g++) acc[g] += nk * curve[g];
        w += nk;
    }
    for (int g = 0; g < IDX_CENT_GRID; g++) c->global_curve[g] = w > 0 ? (float)(acc[g] / w) : 0.0f;
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head_kv; h++) c->thr[l * c->n_head_kv + h] = eng_ctx_threshold(c, l, h, 0.0f);
}

eng_ctx *eng_ctx_create(const eng_model *m, eng_seq *seq, const int32_t *tokens, int n,
                        const eng_ctx_params *pp, void (*progress)(void *, double), void *ud,
                        char *err, size_t errlen) {
    eng_ctx_params p = pp ? *pp : eng_ctx_params_default();
    const eng_hparams *hp = eng_model_hparams(m);
    const int nkv = hp->n_head_kv, G = hp->n_head / nkv, hd = hp->head_dim;
    if (eng_seq_pos(seq) != n || n < 1) {
        eng_set_err(err, errlen, "context build: the sequence holds %d tokens, not %d", eng_seq_pos(seq), n);
        eng_seq_free(seq);
        return NULL;
    }
    eng_ctx *c = ctx_alloc(m, &p, n);
    if (!c || !(c->tokens = malloc(sizeof(int32_t) * n))) {
        eng_set_err(err, errlen, "out of memory");
        eng_seq_free(seq);
        if (c) eng_ctx_unref(c);
        return NULL;
    }
    memcpy(c->tokens, tokens, sizeof(int32_t) * n);
    c->own_tokens = true;
    c->seq = seq;
    c->kv = eng_seq_kv(seq);
    clustered_range(&p, n, &c->lo, &c->hi);
    const double t0 = krn_now_s();
    const int64_t nk = c->hi - c->lo;
    int n_global = 0, done = 0;
    for (int l = 0; l < hp->n_layer; l++) n_global += !eng_layer_is_local(m, l);
    float *keys = nk > 0 ? malloc(sizeof(float) * nk * hd) : NULL;
    float *obs = NULL;
    int64_t n_obs_max = (p.obs_tokens > 0 ? p.obs_tokens : 1) * (int64_t)G;
    obs = malloc(sizeof(float) * n_obs_max * hd);
    if ((nk > 0 && !keys) || !obs) {
        eng_set_err(err, errlen, "out of memory for %lld keys", (long long)nk);
        goto fail;
    }
    for (int l = 0; l < hp->n_layer && nk > 0; l++) {
        if (eng_layer_is_local(m, l)) continue;
        int64_t n_rows;
        const float *cq = eng_seq_captured(seq, l, &n_rows);
        if (!cq || n_rows < 1) {
            eng_set_err(err, errlen, "context build: no observation queries were recorded");
            goto fail;
        }
        for (int h = 0; h < nkv; h++) {
            if (kv_gather_range(c->kv, l, h, c->lo, c->hi, keys, NULL) != KV_OK) {
                eng_set_err(err, errlen, "context build: keys of layer %d not held", l);
                goto fail;
            }
            /* the group's query heads of each observed token, token-major */
            for (int64_t t = 0; t < n_rows; t++)
                memcpy(obs + (size_t)t * G * hd, cq + ((size_t)t * hp->n_head + (size_t)h * G) * hd,
                       sizeof(float) * G * hd);
            idx_cent_params cp = idx_cent_params_default();
            cp.fine_frac = p.fine_frac;
            cp.coarse_frac = p.coarse_frac;
            cp.group = G;
            int rc = idx_cent_build(&cp, keys, nk, hd, c->lo, obs, n_rows * G, hp->attn_scale,
                                    &c->cent[l * nkv + h], err, errlen);
            if (rc != IDX_OK) goto fail;
            const idx_cent *ce = c->cent[l * nkv + h];
            c->info.clustered_keys += nk;
            c->info.n_fine += idx_cent_n_fine(ce);
            c->info.n_coarse += idx_cent_n_coarse(ce);
            if (progress) progress(ud, (double)++done / (n_global * nkv));
        }
    }
    free(keys);
    free(obs);
    calibrate(c);
    c->info.n_tokens = n;
    c->info.cluster_s = krn_now_s() - t0;
    return c;
fail:
    free(keys);
    free(obs);
    eng_ctx_unref(c);
    return NULL;
}

typedef struct {
    void (*progress)(void *, double);
    void *ud;
} prog_split;

static void second_half(void *u, double d) {
    prog_split *ps = u;
    ps->progress(ps->ud, 0.9 + 0.1 * d);
}

eng_ctx *eng_ctx_build(eng_model *m, const int32_t *tokens, int n, const eng_ctx_params *p,
                       void (*progress)(void *, double), void *ud, char *err, size_t errlen) {
    eng_seq *s = eng_ctx_prefill_seq(m, n, p, err, errlen);
    if (!s) return NULL;
    const double t0 = krn_now_s();
    const int step = 1024;
    for (int i = 0; i < n; i += step) {
        int k = n - i < step ? n - i : step;
        if (eng_forward(m, s, tokens + i, k, NULL, false, err, errlen)) {
            eng_seq_free(s);
            return NULL;
        }
        if (progress) progress(ud, 0.9 * (i + k) / n);
    }
    const double prefill_s = krn_now_s() - t0;
    prog_split ps = {progress, ud};
    eng_ctx *c = eng_ctx_create(m, s, tokens, n, p, progress ? second_half : NULL, &ps, err, errlen);
    if (c) c->info.prefill_s = prefill_s;
    return c;
}

/* ---- the file's layout (context_file.h): one rule, applied by the writer and the reader ---- */

/* No file passes this size: offsets computed from a corrupted count cannot wrap. */
#define CTX_MAX_BYTES ((uint64_t)1 << 62)

static uint64_t align_up(uint64_t x) { return (x + CTX_ALIGN - 1) & ~(uint64_t)(CTX_ALIGN - 1); }

/* Places a section of n items of size bytes at the first aligned offset at or after *at: its
 * offset in *off, and *at moved past it. False when it would end past CTX_MAX_BYTES. */
static bool place(uint64_t *at, uint64_t n, uint64_t size, uint64_t *off) {
    const uint64_t o = align_up(*at);
    if (o > CTX_MAX_BYTES || (size && n > (CTX_MAX_BYTES - o) / size)) return false;
    *off = o;
    *at = o + n * size;
    return true;
}

/* The layout of a file from its counts (H's n_tokens, n_layer and n_head_kv, each layer record's
 * n_pages of page_bytes bytes, each centroid record's len): sets H's off_tokens, off_layers,
 * off_cent and file_bytes, and the off of every record (lr: n_layer of them, cr: n_layer *
 * n_head_kv). The writer places its sections with it; the reader recomputes it from the counts a
 * file holds and refuses the file where an offset differs. 0, or -1 for a negative count or a
 * file past CTX_MAX_BYTES. */
static int ctx_layout(ctx_header *H, ctx_layer_rec *lr, ctx_cent_rec *cr, uint64_t page_bytes) {
    const int64_t nl = H->n_layer, nc = nl * H->n_head_kv;
    uint64_t at = sizeof *H;
    if (H->n_tokens < 0 || nl < 0 || nc < 0 || !place(&at, (uint64_t)H->n_tokens, sizeof(int32_t), &H->off_tokens) ||
        !place(&at, (uint64_t)nl, sizeof *lr, &H->off_layers))
        return -1;
    for (int64_t l = 0; l < nl; l++)
        if (lr[l].n_pages < 0 || !place(&at, (uint64_t)lr[l].n_pages, page_bytes, &lr[l].off)) return -1;
    if (!place(&at, (uint64_t)nc, sizeof *cr, &H->off_cent)) return -1;
    for (int64_t i = 0; i < nc; i++) {
        cr[i].off = 0;
        if (cr[i].len && !place(&at, cr[i].len, 1, &cr[i].off)) return -1;
    }
    H->file_bytes = align_up(at);
    return 0;
}

/* 1 when the offsets a mapped file records (its header, and its layer and centroid tables, which
 * the caller found inside the file) are those ctx_layout gives for its counts, 0 when not, -1
 * when out of memory. Then every section lies inside the first file_bytes bytes. */
static int layout_matches(const uint8_t *file, const ctx_header *H, uint64_t page_bytes) {
    const size_t lb = sizeof(ctx_layer_rec) * (size_t)H->n_layer;
    const size_t cb = sizeof(ctx_cent_rec) * (size_t)H->n_layer * (size_t)H->n_head_kv;
    ctx_header want = *H;
    ctx_layer_rec *lr = malloc(lb + 1);
    ctx_cent_rec *cr = malloc(cb + 1);
    int rc = -1;
    if (lr && cr) {
        memcpy(lr, file + H->off_layers, lb);
        memcpy(cr, file + H->off_cent, cb);
        rc = !ctx_layout(&want, lr, cr, page_bytes) && !memcmp(&want, H, sizeof want) &&
             !memcmp(lr, file + H->off_layers, lb) && !memcmp(cr, file + H->off_cent, cb);
    }
    free(lr);
    free(cr);
    return rc;
}

/* The build parameters the header keeps, each under its eng_ctx_params name: one list for the
 * writer (to_header: p into H) and the reader (H into p). */
static void header_params(ctx_header *H, eng_ctx_params *p, bool to_header) {
#define KEEP(f) (to_header ? (void)(H->f = p->f) : (void)(p->f = H->f))
    KEEP(fine_frac), KEEP(coarse_frac), KEEP(target);
    KEEP(obs_tokens), KEEP(n_sink), KEEP(n_tail), KEEP(global_calib);
#undef KEEP
}

/* ---- persisting ---- */

/* Writes all of buf at offset off, hashing it. */
static int put(int fd, hasher *h, uint64_t off, const void *buf, size_t len) {
    const char *p = buf;
    if (h) h_update(h, buf, len);
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        off += (uint64_t)w;
        len -= (size_t)w;
    }
    return 0;
}

/* put() at offset o, first hashing the zero padding between the previous section's end (*at)
 * and o, so that the hash covers the file exactly as it lies on disk. */
static int put_at(int fd, hasher *h, uint64_t *at, uint64_t o, const void *buf, size_t len) {
    static const uint8_t zeros[CTX_ALIGN];
    while (*at < o) {
        size_t z = o - *at < CTX_ALIGN ? (size_t)(o - *at) : CTX_ALIGN;
        h_update(h, zeros, z);
        *at += z;
    }
    if (len && put(fd, h, o, buf, len)) return -1;
    *at = o + len;
    return 0;
}

static int fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The parent directory of path (for fsync after the rename). */
static void parent_of(const char *path, char *out, size_t cap) {
    snprintf(out, cap, "%s", path);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/') out[--n] = 0;
    char *sl = strrchr(out, '/');
    if (!sl) snprintf(out, cap, ".");
    else if (sl == out) out[1] = 0;
    else *sl = 0;
}

/* Removes a directory holding only our file (a temporary or a replaced context). */
static void remove_ctx_dir(const char *dir) {
    char f[8400];
    snprintf(f, sizeof f, "%s/%s", dir, CTX_FILE);
    unlink(f);
    rmdir(dir);
}

int eng_ctx_save(eng_ctx *c, const char *dir, char *err, size_t errlen) {
    const double t0 = krn_now_s();
    const int nl = c->n_layer, nkv = c->n_head_kv, ncent = nl * nkv;
    const kv_params *kp = kv_get_params(c->kv);
    const size_t pb = kv_page_bytes(c->kv);
    char tmp[4096], file[4200], parent[4096];
    if (strlen(dir) > 3000) {
        eng_set_err(err, errlen, "context directory name too long");
        return -1;
    }
    /* the temporary sits next to the target so that the rename stays on one filesystem; its
     * name starts with a dot so that directory listings skip it */
    parent_of(dir, parent, sizeof parent);
    const char *base = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s-%ld", parent, base, (long)getpid());
    remove_ctx_dir(tmp);
    if (mkdir(tmp, 0755) && errno != EEXIST) {
        eng_set_err(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    snprintf(file, sizeof file, "%s/%s", tmp, CTX_FILE);
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        eng_set_err(err, errlen, "cannot create %s: %s", file, strerror(errno));
        rmdir(tmp);
        return -1;
    }
    ctx_header H = {.version = CTX_VERSION, .header_bytes = sizeof H,
                    .fingerprint = eng_model_fingerprint(c->m), .n_tokens = c->n, .n_layer = nl,
                    .n_head_kv = nkv, .head_dim = kp->head_dim, .v_dim = kp->v_dim,
                    .page_size = kp->page_size, .dtype = kp->dtype, .ring_slack = kp->ring_slack,
                    .ctx_lo = c->lo, .ctx_hi = c->hi};
    memcpy(H.magic, CTX_MAGIC, 8);
    header_params(&H, &c->p, true);
    H.prefill_s = c->info.prefill_s;
    H.cluster_s = c->info.cluster_s;
    H.n_fine = c->info.n_fine;
    H.n_coarse = c->info.n_coarse;
    H.clustered = c->info.clustered_keys;
    /* the counts, then the layout places every section */
    ctx_layer_rec *lr = calloc(nl, sizeof *lr);
    ctx_cent_rec *cr = calloc(ncent, sizeof *cr);
    void **blobs = calloc(ncent, sizeof *blobs);
    int rc = -1;
    if (!lr || !cr || !blobs) {
        eng_set_err(err, errlen, "out of memory");
        goto out;
    }
    for (int l = 0; l < nl; l++) {
        const void *const *pages;
        kv_layer_pages(c->kv, l, &pages, &lr[l].n_pages);
        lr[l].n_tok = kv_n_tokens(c->kv, l);
        lr[l].window = kv_layer_window(c->kv, l);
    }
    for (int i = 0; i < ncent; i++) {
        if (!c->cent[i]) continue;
        cr[i].len = idx_cent_blob_size(c->cent[i]);
        blobs[i] = aligned_alloc(CTX_ALIGN, align_up(cr[i].len));
        if (!blobs[i] || idx_cent_blob_write(c->cent[i], blobs[i]) != IDX_OK) {
            eng_set_err(err, errlen, "cannot serialise the centroids");
            goto out;
        }
    }
    if (ctx_layout(&H, lr, cr, pb)) {
        eng_set_err(err, errlen, "context too large to save");
        goto out;
    }
    if (ftruncate(fd, (off_t)H.file_bytes)) {
        eng_set_err(err, errlen, "cannot size %s: %s", file, strerror(errno));
        goto out;
    }
    /* hash in file order: header (checksum 0), then every section at its offset with the zero
     * padding between them */
    hasher h;
    h_init(&h, 0);
    uint64_t at = 0;
    if (put_at(fd, &h, &at, 0, &H, sizeof H) ||
        put_at(fd, &h, &at, H.off_tokens, c->tokens, sizeof(int32_t) * (size_t)c->n) ||
        put_at(fd, &h, &at, H.off_layers, lr, sizeof(ctx_layer_rec) * nl))
        goto io;
    for (int l = 0; l < nl; l++) {
        const void *const *pages;
        int64_t np;
        kv_layer_pages(c->kv, l, &pages, &np);
        for (int64_t i = 0; i < np; i++)
            if (put_at(fd, &h, &at, lr[l].off + (uint64_t)i * pb, pages[i], pb)) goto io;
    }
    if (put_at(fd, &h, &at, H.off_cent, cr, sizeof(ctx_cent_rec) * ncent)) goto io;
    for (int i = 0; i < ncent; i++)
        if (cr[i].len && put_at(fd, &h, &at, cr[i].off, blobs[i], cr[i].len)) goto io;
    if (put_at(fd, &h, &at, H.file_bytes, NULL, 0)) goto io;
    H.checksum = h_final(&h);
    if (put(fd, NULL, 0, &H, sizeof H)) goto io;
    if (fsync(fd)) goto io;
    close(fd);
    fd = -1;
    if (fsync_dir(tmp)) goto io;
    /* replace: an existing context of that name goes only once the new one is whole */
    char old[8300];
    snprintf(old, sizeof old, "%s/.old-%s-%ld", parent, base, (long)getpid());
    int had_old = rename(dir, old) == 0;
    if (rename(tmp, dir)) {
        eng_set_err(err, errlen, "cannot rename %s to %s: %s", tmp, dir, strerror(errno));
        if (had_old) rename(old, dir);
        goto out;
    }
    fsync_dir(parent);
    if (had_old) remove_ctx_dir(old);
    c->info.file_bytes = H.file_bytes;
    c->info.save_s = krn_now_s() - t0;
    rc = 0;
    goto out;
io:
    eng_set_err(err, errlen, "cannot write %s: %s", file, strerror(errno));
out:
    if (fd >= 0) close(fd);
    if (rc) remove_ctx_dir(tmp);
    for (int i = 0; blobs && i < ncent; i++) free(blobs[i]);
    free(blobs);
    free(lr);
    free(cr);
    return rc;
}

/* ---- loading ---- */

eng_ctx *eng_ctx_load(const eng_model *m, const char *dir, char *err, size_t errlen) {
    const eng_hparams *hp = eng_model_hparams(m);
    char file[4200];
    snprintf(file, sizeof file, "%s/%s", dir, CTX_FILE);
    int fd = open(file, O_RDONLY);
    if (fd < 0) {
        eng_set_err(err, errlen, "cannot open context %s: %s", file, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) || st.st_size < (off_t)sizeof(ctx_header)) {
        eng_set_err(err, errlen, "context %s: truncated (%lld bytes)", file, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    const size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        eng_set_err(err, errlen, "cannot map context %s: %s", file, strerror(errno));
        return NULL;
    }
    const uint8_t *b = map;
    ctx_header H;
    memcpy(&H, b, sizeof H);
    eng_ctx *c = NULL;
    kv_store *kv = NULL;
    const int nl = H.n_layer, nkv = H.n_head_kv;
#define BAD(...) do { eng_set_err(err, errlen, __VA_ARGS__); goto fail; } while (0)
    if (memcmp(H.magic, CTX_MAGIC, 8)) BAD("%s is not a kvseek context file", file);
    if (H.version != CTX_VERSION || H.header_bytes != sizeof H)
        BAD("context %s: version %u, this kvseek reads %d", file, H.version, CTX_VERSION);
    if (H.file_bytes != len) BAD("context %s: truncated or extended (%zu bytes, header says %llu)", file, len,
                                 (unsigned long long)H.file_bytes);
    if (eng_ctx_file_checksum(b, len) != H.checksum) BAD("context %s: checksum mismatch (corrupted)", file);
    if (H.fingerprint != eng_model_fingerprint(m))
        BAD("context %s was built for another model", file);
    if (nl != hp->n_layer || nkv != hp->n_head_kv || H.head_dim != hp->head_dim || H.v_dim != hp->v_dim ||
        H.n_tokens < 1 || H.page_size < 1 || (H.page_size & (H.page_size - 1)) ||
        (H.dtype != KV_F32 && H.dtype != KV_F16) || H.ring_slack < 0 || H.ctx_lo < 0 ||
        H.ctx_hi < H.ctx_lo || H.ctx_hi > H.n_tokens)
        BAD("context %s: shape does not match the model", file);
    /* the tables the layout reads its counts from, offsets first, then counts against the room
     * left: no sum can wrap */
    if (H.off_layers % 8 || H.off_cent % 8 || H.off_layers > len || H.off_cent > len ||
        (uint64_t)nl > (len - H.off_layers) / sizeof(ctx_layer_rec) ||
        (uint64_t)nl * nkv > (len - H.off_cent) / sizeof(ctx_cent_rec))
        BAD("context %s: section out of bounds", file);
    eng_ctx_params p = eng_ctx_params_default();
    header_params(&H, &p, false);
    if (!(p.target > 0 && p.target <= 1)) p.target = 0.03f;
    {
        int *win = calloc(nl, sizeof(int));
        if (!win) BAD("out of memory");
        for (int l = 0; l < nl; l++) win[l] = eng_layer_is_local(m, l) ? hp->sliding_window : 0;
        kv_params kp = kv_params_default();
        kp.n_layer = nl;
        kp.n_head_kv = nkv;
        kp.head_dim = hp->head_dim;
        kp.v_dim = hp->v_dim;
        kp.max_tokens = H.n_tokens;
        kp.page_size = H.page_size;
        kp.dtype = (kv_dtype)H.dtype;
        kp.layer_window = win;
        kp.ring_slack = H.ring_slack;
        kp.n_sink = p.n_sink;
        kp.n_window = p.n_tail;
        int rc = kv_create(&kp, &kv);
        free(win);
        if (rc != KV_OK) BAD("context %s: %s", file, kv_strerror(rc));
    }
    /* every section where the layout puts it, hence inside the file */
    const size_t pb = kv_page_bytes(kv);
    const int placed = layout_matches(b, &H, pb);
    if (placed < 0) BAD("out of memory");
    if (!placed) BAD("context %s: sections out of place (not this version's layout)", file);
    c = ctx_alloc(m, &p, H.n_tokens);
    if (!c) BAD("out of memory");
    c->map = map;
    c->map_len = len;
    c->tokens = (int32_t *)(b + H.off_tokens);
    for (int i = 0; i < H.n_tokens; i++)
        if (c->tokens[i] < 0 || c->tokens[i] >= hp->n_vocab) BAD("context %s: token %d out of range", file, i);
    c->lo = H.ctx_lo;
    c->hi = H.ctx_hi;
    {
        const ctx_layer_rec *lr = (const ctx_layer_rec *)(b + H.off_layers);
        void **pages = NULL;
        for (int l = 0; l < nl; l++) {
            if (lr[l].window != kv_layer_window(kv, l) || lr[l].n_tok != H.n_tokens ||
                lr[l].n_pages > kv_layer_slots(kv, l)) {
                free(pages);
                BAD("context %s: layer %d record is invalid", file, l);
            }
            void **np = realloc(pages, sizeof(void *) * (lr[l].n_pages + 1));
            if (!np) {
                free(pages);
                BAD("out of memory");
            }
            pages = np;
            for (int64_t i = 0; i < lr[l].n_pages; i++) pages[i] = (void *)(b + lr[l].off + (uint64_t)i * pb);
            if (kv_adopt(kv, l, pages, lr[l].n_pages, lr[l].n_tok) != KV_OK) {
                free(pages);
                BAD("context %s: layer %d: %s", file, l, kv_last_error(kv));
            }
        }
        free(pages);
    }
    c->kv_loaded = kv;
    c->kv = kv;
    kv = NULL;
    {
        const ctx_cent_rec *cr = (const ctx_cent_rec *)(b + H.off_cent);
        for (int l = 0; l < nl; l++)
            for (int h = 0; h < nkv; h++) {
                const ctx_cent_rec *r = &cr[l * nkv + h];
                const int want = !eng_layer_is_local(m, l) && H.ctx_hi > H.ctx_lo;
                if (!r->len) {
                    if (want) BAD("context %s: centroids of layer %d head %d missing", file, l, h);
                    continue;
                }
                if (!want) BAD("context %s: centroid record of layer %d head %d is invalid", file, l, h);
                char cerr[200];
                if (idx_cent_from_blob(b + r->off, r->len, &c->cent[l * nkv + h], cerr, sizeof cerr) != IDX_OK)
                    BAD("context %s: layer %d head %d: %s", file, l, h, cerr);
                const idx_cent *ce = c->cent[l * nkv + h];
                if (idx_cent_pos0(ce) != H.ctx_lo || idx_cent_n_keys(ce) != H.ctx_hi - H.ctx_lo ||
                    idx_cent_dim(ce) != hp->head_dim)
                    BAD("context %s: centroids of layer %d head %d do not cover the clustered range", file, l, h);
            }
    }
#undef BAD
    calibrate(c);
    c->info.n_tokens = H.n_tokens;
    c->info.clustered_keys = H.clustered;
    c->info.n_fine = H.n_fine;
    c->info.n_coarse = H.n_coarse;
    c->info.prefill_s = H.prefill_s;
    c->info.cluster_s = H.cluster_s;
    c->info.file_bytes = len;
    return c;
fail:
    kv_free(kv);
    if (c) eng_ctx_unref(c);
    else munmap(map, len);
    return NULL;
}

/* ---- lifetime and accessors ---- */

void eng_ctx_ref(eng_ctx *c) { atomic_fetch_add(&c->refs, 1); }

void eng_ctx_unref(eng_ctx *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    for (int i = 0; c->cent && i < c->n_layer * c->n_head_kv; i++) idx_cent_free(c->cent[i]);
    free(c->cent);
    free(c->thr);
    kv_free(c->kv_loaded);
    eng_seq_free(c->seq);
    if (c->own_tokens) free(c->tokens);
    if (c->map) munmap(c->map, c->map_len);
    free(c);
}

int eng_ctx_n_tokens(const eng_ctx *c) { return c->n; }
const int32_t *eng_ctx_tokens(const eng_ctx *c) { return c->tokens; }
void eng_ctx_get_info(const eng_ctx *c, eng_ctx_info *out) { *out = c->info; }
void eng_ctx_set_prefill_s(eng_ctx *c, double s) { c->info.prefill_s = s; }
const eng_ctx_params *eng_ctx_get_params(const eng_ctx *c) { return &c->p; }
const kv_store *eng_ctx_kv(const eng_ctx *c) { return c->kv; }

void eng_ctx_range(const eng_ctx *c, int64_t *lo, int64_t *hi) {
    *lo = c->lo;
    *hi = c->hi;
}

const idx_cent *eng_ctx_cent(const eng_ctx *c, int layer, int head) {
    if (layer < 0 || layer >= c->n_layer || head < 0 || head >= c->n_head_kv) return NULL;
    return c->cent[layer * c->n_head_kv + head];
}

float eng_ctx_threshold(const eng_ctx *c, int layer, int head, float target) {
    const idx_cent *ce = eng_ctx_cent(c, layer, head);
    if (!ce) return 0.0f;
    if (target <= 0.0f) {
        if (c->thr[layer * c->n_head_kv + head] > 0.0f) return c->thr[layer * c->n_head_kv + head];
        target = c->p.target;
    }
    return c->p.global_calib ? idx_cent_curve_invert(c->global_curve, target) : idx_cent_threshold(ce, target);
}

/* ---- a sequence on a context ------------------------------------------------------------ */

static void ctx_release(void *c) { eng_ctx_unref(c); }

int eng_seq_attach_ctx(eng_seq *s, eng_ctx *c, char *err, size_t errlen) {
    if (!strcmp(eng_model_device(eng_seq_model(s)), "cuda")) {
        /* a context's pages are a file mapping the device cannot read in place */
        eng_set_err(err, errlen, "fixed contexts run on the CPU backend for now (--device cpu)");
        return -1;
    }
    if (eng_seq_pos(s) != 0) {
        eng_set_err(err, errlen, "a context attaches only to an empty sequence");
        return -1;
    }
    if (c->n >= eng_seq_capacity(s)) {
        eng_set_err(err, errlen, "the context has %d tokens; the sequence holds %d", c->n, eng_seq_capacity(s));
        return -1;
    }
    eng_attn_params a;
    eng_seq_get_attn(s, &a);
    eng_ctx_ref(c);
    if (eng_seq_adopt_prefix(s, c->kv, c->n, c->lo, c->hi, c, ctx_release, err, errlen)) {
        eng_ctx_unref(c);
        return -1;
    }
    /* selectors that can read the prebuilt clusters do; the others build their own over the
     * clustered range after the request's prefill */
    for (int l = 0; l < c->n_layer; l++)
        for (int h = 0; h < c->n_head_kv; h++) {
            const idx_cent *ce = c->cent[l * c->n_head_kv + h];
            if (ce && eng_seq_bind_cent(s, l, h, ce, eng_ctx_threshold(c, l, h, a.target), a.levels, err, errlen)) {
                eng_seq_reset(s); /* lets the context go */
                return -1;
            }
        }
    return 0;
}
