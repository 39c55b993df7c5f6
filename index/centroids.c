/* Squeezed Attention's centroid selector for one (layer, KV head): the keys of a fixed context
 * clustered once (cosine k-means through FAISS, one or two levels), calibrated on the queries of
 * the context's last tokens, then probed once per decode step and KV head by any number of
 * sequences at once. The workload it assumes: tens of thousands to a few hundred thousand keys
 * of dimension 64..256, built once per registered context (seconds), selected millions of
 * times (microseconds, no allocation, no threads of its own).
 *
 * The structure IS its serialised form: idx_cent_build lays everything out in one zeroed blob
 * and idx_cent_from_blob (also used on that blob) checks it and points into it, so a blob
 * written to disk and mmapped back is used in place, and writing it again gives the same bytes.
 * Blob layout (native little-endian, every section 8-byte aligned, zero padding):
 *     header  blob_hdr
 *     fc      (n_fine, dim) f32     fine centroids, fine clusters grouped by coarse cluster
 *     cc      (n_coarse, dim) f32   coarse centroids
 *     curve   (GRID) f32            share of keys selected at grid threshold i
 *     cthr    (GRID) f32            coarse threshold used with grid threshold i (0 if 1 level)
 *     cgain   (GRID) f32            pruned-mass correction used with grid threshold i (>= 1)
 *     fo      (n_fine + 1) i32      member offsets of the fine clusters
 *     co      (n_coarse + 1) i32    fine-cluster offsets of the coarse clusters
 *     mem     (n) i32               key indices (position - pos0), ascending per cluster */
#include "index.h"
#include "sel_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "attn_sparse.h"

enum { GRID = IDX_CENT_GRID, GRID_PER_DECADE = 8, MAX_DIM = 1 << 16 };
#define BLOB_MAGIC "KVSCENT1"
#define BLOB_VERSION 1u
#define BYTE_ORDER_MARK 0x01020304u
#define COARSE_COVER 0.99f /* share of the one-level selection the coarse pass must keep */
#define GAIN_MAX 1e20f     /* bound of the pruned-mass correction: 1e20 * 2^31 stays finite */

typedef struct {
    char magic[8];          /* "KVSCENT1" */
    uint32_t version;       /* BLOB_VERSION */
    uint32_t header_bytes;  /* sizeof(blob_hdr) */
    uint64_t total_bytes;   /* the whole blob */
    int64_t n_keys, pos0;
    int32_t dim, n_fine, n_coarse, grid;
    int32_t group;          /* rows per observation token the curve was measured with */
    uint32_t byte_order;    /* BYTE_ORDER_MARK as written by the host */
    float scale;            /* attention scale */
    float coarse_cover;     /* COARSE_COVER at build (informative) */
} blob_hdr;
_Static_assert(sizeof(blob_hdr) == 72, "blob header layout");

struct idx_cent {
    const unsigned char *base; /* the blob */
    size_t len;
    void *own;                 /* the blob when built here (freed with the structure) */
    int64_t n, pos0;
    int dim, n_fine, n_coarse;
    float scale;
    const float *fc;           /* (n_fine, dim) */
    const float *cc;           /* (n_coarse, dim) */
    const float *curve;        /* (GRID) */
    const float *cthr;         /* (GRID) */
    const float *cgain;        /* (GRID) sum of the pruned coarse clusters' children's terms over
                                * the sum of their own terms, on the observation queries at the
                                * coarse threshold of grid point i (Jensen: >= 1) */
    const int32_t *fo;         /* (n_fine + 1) */
    const int32_t *co;         /* (n_coarse + 1) */
    const int32_t *mem;        /* (n) */
};

/* ---- helpers ---------------------------------------------------------------------------- */

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static size_t pad8(size_t x) { return (x + 7) & ~(size_t)7; }

/* Byte offsets of the sections for the given counts (bounded by the caller, so no overflow):
 * off[0] fc, [1] cc, [2] curve, [3] cthr, [4] cgain, [5] fo, [6] co, [7] mem, [8] end; used[i]:
 * the bytes of section i before its padding. */
enum { NSEC = 8 };
static void layout(int64_t n, int dim, int n_fine, int n_coarse, size_t off[NSEC + 1], size_t used[NSEC]) {
    const size_t sz[NSEC] = {
        (size_t)n_fine * dim * sizeof(float), (size_t)n_coarse * dim * sizeof(float),
        GRID * sizeof(float), GRID * sizeof(float), GRID * sizeof(float),
        ((size_t)n_fine + 1) * sizeof(int32_t), ((size_t)n_coarse + 1) * sizeof(int32_t),
        (size_t)n * sizeof(int32_t)};
    off[0] = sizeof(blob_hdr);
    for (int i = 0; i < NSEC; i++) {
        off[i + 1] = off[i] + pad8(sz[i]);
        if (used) used[i] = sz[i];
    }
}

float idx_cent_grid(int i) {
    if (i < 0) i = 0;
    if (i >= GRID) i = GRID - 1;
    return (float)pow(10.0, (double)(i - (GRID - 1)) / GRID_PER_DECADE);
}

/* Largest grid index i with grid(i) < s, or -1 (s <= grid(0) or NaN). */
static int grid_below(float s) {
    if (!(s > 0.0f)) return -1;
    int i = (int)floor((log10((double)s) + (double)(GRID - 1) / GRID_PER_DECADE) * GRID_PER_DECADE);
    if (i < -1) i = -1;
    if (i > GRID - 1) i = GRID - 1;
    while (i + 1 < GRID && idx_cent_grid(i + 1) < s) i++;
    while (i >= 0 && !(idx_cent_grid(i) < s)) i--;
    return i;
}

/* Cluster sizes as floats, for the size-weighted softmax. */
static inline float fine_size(const idx_cent *c, int j) { return (float)(c->fo[j + 1] - c->fo[j]); }
static inline float coarse_size(const idx_cent *c, int k) {
    return (float)(c->fo[c->co[k + 1]] - c->fo[c->co[k]]);
}

/* out[g * ld + j] = scale * q_g . rows[j] for the nq queries q_g = q + g * d and j < nr: each
 * row loaded once for the whole group, four rows per reduction (attn_scores_group_rows). A
 * query's products are the same bits alone or in a group, so calibration (one row at a time)
 * and selection (a group at a time) agree. */
static void score_rows(const float *rows, int64_t nr, int d, const float *q, int nq, float scale, float *out,
                       int64_t ld) {
    attn_scores_group_rows(q, nq, d, rows, nr, d, out, ld);
    for (int g = 0; g < nq; g++) {
        float *o = out + (size_t)g * ld;
        #pragma omp simd
        for (int64_t j = 0; j < nr; j++) o[j] *= scale;
    }
}

/* e^x for x <= 0 (arguments are logit - max), vectorisable where glibc's expf is not (a plain
 * call per element cost more than the centroid products): Cephes' expf polynomial, within 2 ulp
 * of expf; below -87 it returns e^-87 (~1.6e-38) instead of a denormal, far under any
 * threshold (S compares with T * D, D >= 1). */
static inline float exp_neg(float x) {
    x = x > -87.0f ? x : -87.0f; /* NaN (an inf - inf product in a hostile input) too */
    x = x < 0.0f ? x : 0.0f;
    const float n = rintf(x * 1.44269504089f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } sc = {.i = ((int32_t)n + 127) << 23};
    return p * sc.f;
}

/* ---- parameters, accessors -------------------------------------------------------------- */

idx_cent_params idx_cent_params_default(void) {
    idx_cent_params p;
    memset(&p, 0, sizeof p);
    p.fine_frac = 0.05f;
    p.coarse_frac = 0.0f; /* one level: see idx_cent_params in index.h */
    p.kmeans_iter = 10;
    p.seed = 1234;
    p.group = 1;
    return p;
}

int64_t idx_cent_n_keys(const idx_cent *c) { return c->n; }
int64_t idx_cent_pos0(const idx_cent *c) { return c->pos0; }
int idx_cent_dim(const idx_cent *c) { return c->dim; }
int idx_cent_n_fine(const idx_cent *c) { return c->n_fine; }
int idx_cent_n_coarse(const idx_cent *c) { return c->n_coarse; }

const int32_t *idx_cent_members(const idx_cent *c, int j, int64_t *n) {
    if (j < 0 || j >= c->n_fine) { *n = 0; return NULL; }
    *n = c->fo[j + 1] - c->fo[j];
    return c->mem + c->fo[j];
}

const float *idx_cent_centroid(const idx_cent *c, int j) {
    return j >= 0 && j < c->n_fine ? c->fc + (size_t)j * c->dim : NULL;
}

void idx_cent_free(idx_cent *c) {
    if (!c) return;
    free(c->own);
    free(c);
}

/* ---- blob: validation and view ---------------------------------------------------------- */

static int all_finite(const float *x, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= isfinite(x[i]) != 0;
    return ok;
}

static int zero_bytes(const unsigned char *p, size_t n) {
    unsigned char a = 0;
    for (size_t i = 0; i < n; i++) a |= p[i];
    return a == 0;
}

int idx_cent_from_blob(const void *blob, size_t len, idx_cent **out, char *err, size_t errlen) {
#define BAD(...) do { rc = set_err(err, errlen, IDX_ERR_PARAM, "centroid blob: " __VA_ARGS__); goto fail; } while (0)
    int rc = IDX_OK;
    uint8_t *seen = NULL;
    idx_cent *c = NULL;
    if (out) *out = NULL;
    if (!out || (!blob && len)) return set_err(err, errlen, IDX_ERR_PARAM, "centroid blob: NULL argument");
    if ((uintptr_t)blob % 8) return set_err(err, errlen, IDX_ERR_PARAM, "centroid blob: not 8-byte aligned");
    if (len < sizeof(blob_hdr)) return set_err(err, errlen, IDX_ERR_PARAM, "centroid blob: %zu bytes, shorter than its header", len);
    const unsigned char *b = blob;
    blob_hdr h;
    memcpy(&h, b, sizeof h);
    if (memcmp(h.magic, BLOB_MAGIC, 8)) BAD("bad magic");
    if (h.version != BLOB_VERSION) BAD("version %u, expected %u", h.version, BLOB_VERSION);
    if (h.header_bytes != sizeof(blob_hdr)) BAD("header of %u bytes", h.header_bytes);
    if (h.byte_order != BYTE_ORDER_MARK) BAD("written with another byte order");
    if (h.grid != GRID) BAD("grid of %d points, expected %d", h.grid, GRID);
    if (h.dim < 1 || h.dim > MAX_DIM) BAD("dim %d", h.dim);
    if (h.n_keys < 1 || h.n_keys > INT32_MAX) BAD("%lld keys", (long long)h.n_keys);
    if (h.pos0 < 0 || h.pos0 > (int64_t)INT32_MAX + 1 - h.n_keys) BAD("positions past INT32_MAX");
    if (h.n_fine < 1 || h.n_fine > h.n_keys) BAD("%d fine clusters for %lld keys", h.n_fine, (long long)h.n_keys);
    if (h.n_coarse < 0 || h.n_coarse > h.n_fine) BAD("%d coarse clusters", h.n_coarse);
    if (h.group < 1) BAD("group %d", h.group);
    if (!isfinite(h.scale) || !(h.scale > 0.0f)) BAD("scale %g", (double)h.scale);
    if (!(h.coarse_cover > 0.0f && h.coarse_cover <= 1.0f)) BAD("coarse cover %g", (double)h.coarse_cover);
    size_t off[NSEC + 1], used[NSEC];
    layout(h.n_keys, h.dim, h.n_fine, h.n_coarse, off, used);
    if (h.total_bytes != off[NSEC] || len != off[NSEC])
        BAD("%zu bytes (header says %llu), the counts need %zu", len, (unsigned long long)h.total_bytes, off[NSEC]);
    c = calloc(1, sizeof *c);
    if (!c) { rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto fail; }
    c->base = b; c->len = len;
    c->n = h.n_keys; c->pos0 = h.pos0; c->dim = h.dim; c->n_fine = h.n_fine; c->n_coarse = h.n_coarse;
    c->scale = h.scale;
    c->fc = (const float *)(b + off[0]);
    c->cc = (const float *)(b + off[1]);
    c->curve = (const float *)(b + off[2]);
    c->cthr = (const float *)(b + off[3]);
    c->cgain = (const float *)(b + off[4]);
    c->fo = (const int32_t *)(b + off[5]);
    c->co = (const int32_t *)(b + off[6]);
    c->mem = (const int32_t *)(b + off[7]);
    /* padding: zero, so the bytes are canonical */
    for (int i = 0; i < NSEC; i++)
        if (!zero_bytes(b + off[i] + used[i], off[i + 1] - off[i] - used[i])) BAD("nonzero padding in section %d", i);
    if (!all_finite(c->fc, (size_t)c->n_fine * c->dim)) BAD("non-finite fine centroid");
    if (!all_finite(c->cc, (size_t)c->n_coarse * c->dim)) BAD("non-finite coarse centroid");
    for (int i = 0; i < GRID; i++) {
        if (!(c->curve[i] >= 0.0f && c->curve[i] <= 1.0f)) BAD("curve[%d] = %g", i, (double)c->curve[i]);
        if (i > 0 && c->curve[i] > c->curve[i - 1]) BAD("curve increases at %d", i);
        if (!(c->cthr[i] >= 0.0f && isfinite(c->cthr[i]))) BAD("coarse threshold[%d] = %g", i, (double)c->cthr[i]);
        if (i > 0 && c->cthr[i] < c->cthr[i - 1]) BAD("coarse thresholds decrease at %d", i);
        if (!(c->cgain[i] >= 1.0f && c->cgain[i] <= GAIN_MAX)) BAD("pruned-mass correction[%d] = %g", i, (double)c->cgain[i]);
        if (c->n_coarse == 0 && (c->cthr[i] != 0.0f || c->cgain[i] != 1.0f)) BAD("coarse calibration without a coarse level");
    }
    /* fine offsets: 0, strictly increasing (no empty cluster), n at the end */
    if (c->fo[0] != 0 || c->fo[c->n_fine] != c->n) BAD("fine offsets do not span the keys");
    for (int j = 0; j < c->n_fine; j++)
        if (c->fo[j + 1] <= c->fo[j]) BAD("fine cluster %d empty or offsets not increasing", j);
    if (c->n_coarse > 0) {
        if (c->co[0] != 0 || c->co[c->n_coarse] != c->n_fine) BAD("coarse offsets do not span the fine clusters");
        for (int k = 0; k < c->n_coarse; k++)
            if (c->co[k + 1] <= c->co[k]) BAD("coarse cluster %d empty or offsets not increasing", k);
    } else if (c->co[0] != 0) {
        BAD("coarse offsets without a coarse level");
    }
    /* members: in range, ascending within a cluster, each key exactly once (n distinct values in
     * [0, n) is a permutation) */
    seen = calloc(((size_t)c->n + 7) / 8, 1);
    if (!seen) { rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto fail; }
    for (int j = 0; j < c->n_fine; j++)
        for (int32_t t = c->fo[j]; t < c->fo[j + 1]; t++) {
            const int32_t m = c->mem[t];
            if (m < 0 || m >= c->n) BAD("member %d out of range", (int)m);
            if (t > c->fo[j] && m <= c->mem[t - 1]) BAD("members of cluster %d not ascending", j);
            if (seen[m >> 3] & (1u << (m & 7))) BAD("key %d in two clusters", (int)m);
            seen[m >> 3] |= (uint8_t)(1u << (m & 7));
        }
    free(seen);
    *out = c;
    return IDX_OK;
fail:
    free(seen);
    free(c);
    return rc;
#undef BAD
}

size_t idx_cent_blob_size(const idx_cent *c) { return c ? c->len : 0; }

int idx_cent_blob_write(const idx_cent *c, void *dst) {
    if (!c || !dst) return IDX_ERR_PARAM;
    memcpy(dst, c->base, c->len);
    return IDX_OK;
}

/* ---- scoring ---------------------------------------------------------------------------- */

/* A calibration table (GRID values, one per grid threshold) at threshold t: log-linear in t
 * between grid points (linear where a value is 0); below the grid proportional to t
 * (scale_below: the coarse thresholds) or constant; above it, the last value. */
static float grid_lookup(const float *tab, float t, int scale_below) {
    if (t <= idx_cent_grid(0)) return scale_below ? tab[0] * (t / idx_cent_grid(0)) : tab[0];
    if (t >= idx_cent_grid(GRID - 1)) return tab[GRID - 1];
    int i = grid_below(t); /* grid(i) < t <= grid(i + 1) */
    if (i < 0) i = 0;
    if (i > GRID - 2) i = GRID - 2;
    const double u = (log((double)t) - log((double)idx_cent_grid(i))) /
                     (log((double)idx_cent_grid(i + 1)) - log((double)idx_cent_grid(i)));
    const double a = tab[i], b = tab[i + 1];
    if (a > 0.0 && b > 0.0) return (float)exp(log(a) + u * (log(b) - log(a)));
    return (float)(a + u * (b - a));
}

/* ---- selection -------------------------------------------------------------------------- */

/* Queries scored together: a block of centroid rows is read from memory once for all of them
 * (a GQA group is 2..16 queries; more go in chunks of QB). */
enum { QB = 8, ROWS = 16 };

/* Scratch carving: per query of a chunk, fine and coarse logits; the coarse clusters surviving
 * for the chunk and their runs of fine rows; the fine keep flags of the whole call; the key
 * bitmap. */
typedef struct {
    float *fs;       /* (QB, n_fine) */
    float *cs;       /* (QB, n_coarse) */
    uint8_t *keepc;  /* (n_coarse) coarse clusters surviving for the group */
    int32_t *runs;   /* (2 n_coarse) runs of fine rows under surviving coarse clusters */
    uint8_t *keepf;  /* (n_fine) */
    uint64_t *bits;  /* (ceil(n / 64)) */
} scratch_view;

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

static size_t scratch_layout(const idx_cent *c, unsigned char *base, scratch_view *v) {
    const size_t ncs = c->n_coarse ? (size_t)c->n_coarse : 1;
    const size_t sizes[6] = {QB * (size_t)c->n_fine * sizeof(float), QB * ncs * sizeof(float), ncs,
                             2 * ncs * sizeof(int32_t), (size_t)c->n_fine,
                             (((size_t)c->n + 63) / 64) * sizeof(uint64_t)};
    size_t at[6], o = 0;
    for (int i = 0; i < 6; i++) { at[i] = o; o = align64(o + sizes[i]); }
    if (base && v) {
        unsigned char *p = (unsigned char *)(((uintptr_t)base + 63) & ~(uintptr_t)63);
        v->fs = (float *)(p + at[0]);
        v->cs = (float *)(p + at[1]);
        v->keepc = p + at[2];
        v->runs = (int32_t *)(p + at[3]);
        v->keepf = p + at[4];
        v->bits = (uint64_t *)(p + at[5]);
    }
    return o + 64; /* room to align the caller's pointer */
}

size_t idx_cent_scratch_bytes(const idx_cent *c, int n_q) {
    (void)n_q;
    return c ? scratch_layout(c, NULL, NULL) : 0;
}

/* Mass mode: the cut on e_j that keeps the fewest highest-scoring clusters whose estimated mass
 * sum n_j e_j reaches `want`. A histogram over -log e_j in bins of
 * a quarter nat stands in for a sort: the cut overshoots by at most one bin (e_j within 28% of
 * the exact cut also kept). */
enum { MASS_BINS = 128, MASS_BINS_PER_NAT = 4 };
static float mass_cut(const float *x, const int32_t *fo, int nf, float want) {
    float h[MASS_BINS] = {0};
    for (int j = 0; j < nf; j++) {
        const float nl = x[j] > 0.0f ? -logf(x[j]) * MASS_BINS_PER_NAT : (float)MASS_BINS;
        const int b = nl < (float)(MASS_BINS - 1) ? (int)nl : MASS_BINS - 1;
        h[b] += (float)(fo[j + 1] - fo[j]) * x[j];
    }
    float cum = 0.0f;
    int b = 0;
    for (; b < MASS_BINS - 1; b++)
        if ((cum += h[b]) >= want) break;
    return b == MASS_BINS - 1 ? 0.0f : expf(-(float)(b + 1) / MASS_BINS_PER_NAT);
}

/* One level for the nq (<= QB) queries q: marks in keepf the fine clusters a query keeps at
 * threshold t (e_j > t D, e_j = e^{x_j - m}, D = sum n_j e_j). With mass > 0, each query keeps
 * mass_cut's clusters instead, its static set's mass e^{slse[g]} weighed in. Returns the centroids
 * scored, or -1 for a non-finite score. */
static int64_t keep_one_level(const idx_cent *c, const float *q, int nq, float t, float mass, const float *slse,
                              scratch_view *v) {
    const int d = c->dim, nf = c->n_fine;
    for (int j0 = 0; j0 < nf; j0 += ROWS) {
        const int nr = nf - j0 < ROWS ? nf - j0 : ROWS;
        score_rows(c->fc + (size_t)j0 * d, nr, d, q, nq, c->scale, v->fs + j0, nf);
    }
    const int32_t *fo = c->fo;
    for (int g = 0; g < nq; g++) {
        float *x = v->fs + (size_t)g * nf;
        const float m = idx_max(x, nf);
        if (!isfinite(m)) return -1;
        float D = 0.0f;
        #pragma omp simd reduction(+ : D)
        for (int j = 0; j < nf; j++) {
            x[j] = exp_neg(x[j] - m);
            D += (float)(fo[j + 1] - fo[j]) * x[j];
        }
        uint8_t *keep = v->keepf;
        if (mass > 0.0f) {
            /* the static set's mass in the units of e_j (relative to e^m); past e^80 it holds
             * everything that matters */
            const double st = slse ? (slse[g] - m > 80.0f ? 1e35 : exp((double)slse[g] - m)) : 0.0;
            const double want = mass * (st + D) - st;
            if (want <= 0.0) continue;
            const float cut = mass_cut(x, fo, nf, (float)want);
            #pragma omp simd
            for (int j = 0; j < nf; j++) keep[j] |= x[j] >= cut;
            continue;
        }
        const float cut = t * D;
        #pragma omp simd
        for (int j = 0; j < nf; j++) keep[j] |= x[j] > cut;
    }
    return (int64_t)nq * nf;
}

/* Two levels for the nq (<= QB) queries q: each query's coarse pass at threshold tc; a coarse
 * cluster survives for the group when any query keeps it (the GQA union, as for fine clusters);
 * the fine centroids under surviving clusters (runs of consecutive rows, since fine clusters are
 * stored grouped by coarse cluster) are scored for every query of the chunk, block by block as
 * in one level, and each query's denominator is their exact terms plus each pruned coarse
 * cluster's own term times its Jensen correction. */
static int64_t keep_two_level(const idx_cent *c, const float *q, int nq, float t, float tc, float gain,
                              scratch_view *v) {
    const int d = c->dim, nf = c->n_fine, nc = c->n_coarse;
    float mc[QB], m[QB];
    for (int k0 = 0; k0 < nc; k0 += ROWS) {
        const int nr = nc - k0 < ROWS ? nc - k0 : ROWS;
        score_rows(c->cc + (size_t)k0 * d, nr, d, q, nq, c->scale, v->cs + k0, nc);
    }
    uint8_t *u = v->keepc; /* the group's union of surviving coarse clusters */
    for (int k = 0; k < nc; k++) u[k] = 0;
    for (int g = 0; g < nq; g++) {
        float *X = v->cs + (size_t)g * nc;
        mc[g] = idx_max(X, nc);
        if (!isfinite(mc[g])) return -1;
        float Dc = 0.0f;
        #pragma omp simd reduction(+ : Dc)
        for (int k = 0; k < nc; k++) {
            X[k] = exp_neg(X[k] - mc[g]);
            Dc += coarse_size(c, k) * X[k];
        }
        const float cutc = tc * Dc;
        #pragma omp simd
        for (int k = 0; k < nc; k++) u[k] |= X[k] > cutc;
        m[g] = mc[g];
    }
    /* runs [run[2r], run[2r + 1]) of fine rows under consecutive surviving coarse clusters */
    int32_t *run = v->runs;
    int nrun = 0;
    int64_t fine_scored = 0;
    for (int k = 0; k < nc;) {
        if (!u[k]) { k++; continue; }
        int k1 = k;
        while (k1 < nc && u[k1]) k1++;
        run[2 * nrun] = c->co[k];
        run[2 * nrun + 1] = c->co[k1];
        fine_scored += c->co[k1] - c->co[k];
        nrun++;
        k = k1;
    }
    for (int r = 0; r < nrun; r++) {
        const int j0 = run[2 * r], j1 = run[2 * r + 1];
        for (int b0 = j0; b0 < j1; b0 += ROWS) {
            const int nr = j1 - b0 < ROWS ? j1 - b0 : ROWS;
            score_rows(c->fc + (size_t)b0 * d, nr, d, q, nq, c->scale, v->fs + b0, nf);
        }
    }
    const int32_t *fo = c->fo;
    for (int g = 0; g < nq; g++) {
        float *x = v->fs + (size_t)g * nf;
        for (int r = 0; r < nrun; r++) {
            const float mk = idx_max(x + run[2 * r], run[2 * r + 1] - run[2 * r]);
            m[g] = mk > m[g] ? mk : m[g];
        }
        if (!isfinite(m[g])) return -1;
        const float *X = v->cs + (size_t)g * nc;
        /* D = sum over scored fine n_j e^{x_j - m} + gain * sum over pruned coarse N_k e^{X_k - m}:
         * a centroid's own term underestimates its children's sum (Jensen: the exponential of
         * the mean logit is below the mean of the exponentials); gain, measured on the
         * observation queries at build for this threshold, is that factor over the pruned set */
        float Dp = 0.0f;
        #pragma omp simd reduction(+ : Dp)
        for (int k = 0; k < nc; k++) Dp += u[k] ? 0.0f : coarse_size(c, k) * X[k];
        float D = gain * Dp * exp_neg(mc[g] - m[g]); /* X was relative to mc */
        for (int r = 0; r < nrun; r++) {
            const int j0 = run[2 * r], j1 = run[2 * r + 1];
            #pragma omp simd reduction(+ : D)
            for (int j = j0; j < j1; j++) {
                x[j] = exp_neg(x[j] - m[g]);
                D += (float)(fo[j + 1] - fo[j]) * x[j];
            }
        }
        const float cut = t * D;
        uint8_t *keep = v->keepf;
        for (int r = 0; r < nrun; r++) {
            #pragma omp simd
            for (int j = run[2 * r]; j < run[2 * r + 1]; j++) keep[j] |= x[j] > cut;
        }
    }
    return (int64_t)nq * (nc + fine_scored);
}

int64_t idx_cent_select(const idx_cent *c, const float *q, int n_q, float threshold,
                        void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st) {
    return idx_cent_select_levels(c, q, n_q, threshold, 0, scratch, ids, max_ids, st);
}

static int64_t select_impl(const idx_cent *c, const float *q, int n_q, float threshold, int levels, float mass,
                           const float *slse, void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st) {
    if (st) st->clusters_scored = st->keys_selected = 0;
    if (!c || !q || n_q < 1 || !scratch || !ids || max_ids < c->n || isnan(threshold) || !(mass >= 0.0f && mass <= 1.0f))
        return IDX_ERR_PARAM;
    if (mass >= 1.0f) threshold = 0.0f;
    const int d = c->dim;
    if (!all_finite(q, (size_t)n_q * d)) return IDX_ERR_PARAM;
    if (threshold <= 0.0f) { /* every cluster: every key */
        for (int64_t i = 0; i < c->n; i++) ids[i] = (int32_t)(c->pos0 + i);
        if (st) st->keys_selected = c->n;
        return c->n;
    }
    scratch_view v;
    scratch_layout(c, scratch, &v);
    memset(v.keepf, 0, (size_t)c->n_fine);
    const float tc = c->n_coarse ? grid_lookup(c->cthr, threshold, 1) : 0.0f;
    const float gain = c->n_coarse ? grid_lookup(c->cgain, threshold, 0) : 1.0f;
    int64_t scored = 0;
    for (int g0 = 0; g0 < n_q; g0 += QB) {
        const int nq = n_q - g0 < QB ? n_q - g0 : QB;
        const float *qg = q + (size_t)g0 * d;
        const int64_t s = c->n_coarse && levels != 1 && mass <= 0.0f ? keep_two_level(c, qg, nq, threshold, tc, gain, &v)
                                                                      : keep_one_level(c, qg, nq, threshold, mass, slse ? slse + g0 : NULL, &v);
        if (s < 0) return IDX_ERR_PARAM;
        scored += s;
    }
    /* clusters are disjoint: a bitmap of the kept members, read back in order, gives distinct
     * ascending positions without sorting */
    const int64_t nw = (c->n + 63) / 64;
    memset(v.bits, 0, sizeof(uint64_t) * nw);
    for (int j = 0; j < c->n_fine; j++) {
        if (!v.keepf[j]) continue;
        for (int32_t t = c->fo[j]; t < c->fo[j + 1]; t++) v.bits[c->mem[t] >> 6] |= 1ull << (c->mem[t] & 63);
    }
    int64_t n_out = 0;
    for (int64_t w = 0; w < nw; w++) {
        uint64_t b = v.bits[w];
        while (b) {
            ids[n_out++] = (int32_t)(c->pos0 + w * 64 + __builtin_ctzll(b));
            b &= b - 1;
        }
    }
    if (st) { st->clusters_scored = scored; st->keys_selected = n_out; }
    return n_out;
}

int64_t idx_cent_select_levels(const idx_cent *c, const float *q, int n_q, float threshold, int levels,
                               void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st) {
    return select_impl(c, q, n_q, threshold, levels, 0.0f, NULL, scratch, ids, max_ids, st);
}

int64_t idx_cent_select_mass(const idx_cent *c, const float *q, int n_q, float mass, const float *static_lse,
                             void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st) {
    if (!(mass > 0.0f)) return IDX_ERR_PARAM;
    return select_impl(c, q, n_q, 1.0f, 1, mass, static_lse, scratch, ids, max_ids, st);
}

/* ---- calibration ------------------------------------------------------------------------ */

float idx_cent_curve_invert(const float *frac, float target) {
    if (!(target > 0.0f)) return idx_cent_grid(GRID - 1);
    if (target >= 1.0f || target > frac[0]) return 0.0f;
    int i = 0;
    while (i < GRID && frac[i] > target) i++; /* first grid point reading at most target */
    if (i == GRID) return idx_cent_grid(GRID - 1);
    if (i == 0) return idx_cent_grid(0);
    const double f0 = frac[i - 1], f1 = frac[i];
    const double u = f0 > f1 ? (f0 - target) / (f0 - f1) : 1.0;
    const double l0 = log((double)idx_cent_grid(i - 1)), l1 = log((double)idx_cent_grid(i));
    return (float)exp(l0 + u * (l1 - l0));
}

void idx_cent_curve(const idx_cent *c, float *frac) { memcpy(frac, c->curve, sizeof(float) * GRID); }

float idx_cent_threshold(const idx_cent *c, float target) { return idx_cent_curve_invert(c->curve, target); }

enum { CBINS_PER_DECADE = 32, CBINS_DECADES = 30, CBINS = 1 + CBINS_PER_DECADE * CBINS_DECADES };

/* Histogram bin of a coarse score: 0 below 1e-30, else 32 per decade up to 1. */
static int cbin(float v) {
    if (!(v >= 1e-30f)) return 0;
    int b = 1 + (int)floor((log10((double)v) + CBINS_DECADES) * CBINS_PER_DECADE);
    return b < 1 ? 1 : b > CBINS - 1 ? CBINS - 1 : b;
}
static double cbin_lo(int b) { return b <= 0 ? 0.0 : pow(10.0, (double)(b - 1) / CBINS_PER_DECADE - CBINS_DECADES); }

/* Logits of observation row q: x (n_fine) and, with a coarse level, X (n_coarse). */
static void row_logits(const idx_cent *c, const float *q, float *x, float *X) {
    score_rows(c->fc, c->n_fine, c->dim, q, 1, c->scale, x, c->n_fine);
    if (c->n_coarse) score_rows(c->cc, c->n_coarse, c->dim, q, 1, c->scale, X, c->n_coarse);
}

/* Fills the calibration of c's own blob from the observation rows (n_tok tokens of `group`
 * rows): the curve; with a coarse level also the coarse thresholds (pass 1) and, at those, the
 * pruned-mass corrections (pass 2). */
static int calibrate(idx_cent *c, const float *obs, int64_t n_tok, int group, char *err, size_t errlen) {
    const int d = c->dim, nf = c->n_fine, nc = c->n_coarse;
    float *curve = (float *)c->curve, *cthr = (float *)c->cthr, *cgain = (float *)c->cgain;
    double *cnt = calloc(GRID, sizeof(double));
    float *x = malloc(sizeof(float) * nf), *S = malloc(sizeof(float) * nf), *crit = malloc(sizeof(float) * nf);
    const size_t ncs = nc ? (size_t)nc : 1;
    float *X = malloc(sizeof(float) * ncs), *Sc = malloc(sizeof(float) * group * ncs);
    float *maxSc = malloc(sizeof(float) * ncs);
    double *tru = malloc(sizeof(double) * group * ncs), *est = malloc(sizeof(double) * group * ncs);
    double *hist = nc ? calloc((size_t)GRID * CBINS, sizeof(double)) : NULL;
    double *ga = calloc(GRID, sizeof(double)), *gb = calloc(GRID, sizeof(double));
    int rc = IDX_OK;
    if (!cnt || !x || !S || !crit || !X || !Sc || !maxSc || !tru || !est || (nc && !hist) || !ga || !gb) {
        rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory calibrating centroids");
        goto cleanup;
    }
    /* pass 1: the curve (a token's group keeps a cluster when any of its rows does) and the
     * coarse thresholds */
    for (int64_t t = 0; t < n_tok; t++) {
        for (int j = 0; j < nf; j++) crit[j] = 0.0f;
        for (int g = 0; g < group; g++) {
            row_logits(c, obs + ((size_t)t * group + g) * d, x, X);
            const float m = idx_max(x, nf);
            double D = 0.0;
            for (int j = 0; j < nf; j++) D += (double)fine_size(c, j) * (S[j] = expf(x[j] - m));
            for (int j = 0; j < nf; j++) {
                S[j] = (float)(S[j] / D);
                crit[j] = S[j] > crit[j] ? S[j] : crit[j];
            }
            if (!nc) continue;
            const float mc = idx_max(X, nc);
            double Dc = 0.0;
            for (int k = 0; k < nc; k++) Dc += (double)coarse_size(c, k) * (Sc[k] = expf(X[k] - mc));
            for (int k = 0; k < nc; k++) {
                /* per row: the weight n_j of every cluster the row selects at grid point i lands
                 * in the bin of its coarse parent's score, at the highest i that selects it */
                const int b = cbin((float)(Sc[k] / Dc));
                for (int j = c->co[k]; j < c->co[k + 1]; j++) {
                    const int i = grid_below(S[j]);
                    if (i >= 0) hist[(size_t)i * CBINS + b] += fine_size(c, j);
                }
            }
        }
        for (int j = 0; j < nf; j++) {
            const int i = grid_below(crit[j]);
            if (i >= 0) cnt[i] += fine_size(c, j);
        }
    }
    /* a cluster selected at grid i is selected at every lower grid point: suffix sums */
    double acc = 0.0;
    for (int i = GRID - 1; i >= 0; i--) {
        acc += cnt[i];
        double f = acc / ((double)n_tok * c->n);
        curve[i] = (float)(f > 1.0 ? 1.0 : f);
    }
    for (int i = 1; i < GRID; i++) curve[i] = curve[i] < curve[i - 1] ? curve[i] : curve[i - 1];
    if (!nc) goto cleanup;
    for (int i = GRID - 2; i >= 0; i--)
        for (int b = 0; b < CBINS; b++) hist[(size_t)i * CBINS + b] += hist[(size_t)(i + 1) * CBINS + b];
    for (int i = 0; i < GRID; i++) {
        const double *h = hist + (size_t)i * CBINS;
        double tot = 0.0;
        for (int b = 0; b < CBINS; b++) tot += h[b];
        if (tot <= 0.0) { cthr[i] = idx_cent_grid(i); continue; } /* nothing to keep */
        /* the highest bin edge keeping >= COARSE_COVER of the weight; just below it, since the
         * rule is strict (S > threshold) */
        double cum = 0.0;
        int b = CBINS - 1;
        for (; b > 0; b--) {
            cum += h[b];
            if (cum >= COARSE_COVER * tot) break;
        }
        cthr[i] = (float)(cbin_lo(b) * 0.999);
    }
    /* non-decreasing in the fine threshold, lowering (never raising) values */
    for (int i = GRID - 2; i >= 0; i--) cthr[i] = cthr[i] < cthr[i + 1] ? cthr[i] : cthr[i + 1];

    /* pass 2: at each grid point's coarse threshold, the coarse clusters no row of the token
     * keeps are pruned; their children's exact terms over their own terms (each row's share of
     * its one-level denominator, summed) is the correction select applies to them */
    for (int64_t t = 0; t < n_tok; t++) {
        for (int k = 0; k < nc; k++) maxSc[k] = 0.0f;
        for (int g = 0; g < group; g++) {
            row_logits(c, obs + ((size_t)t * group + g) * d, x, X);
            float M = idx_max(x, nf);
            const float mc = idx_max(X, nc);
            M = mc > M ? mc : M;
            double D1 = 0.0, Dc = 0.0;
            for (int k = 0; k < nc; k++) {
                double a = 0.0;
                for (int j = c->co[k]; j < c->co[k + 1]; j++) a += (double)fine_size(c, j) * exp((double)x[j] - M);
                tru[(size_t)g * nc + k] = a;
                est[(size_t)g * nc + k] = (double)coarse_size(c, k) * exp((double)X[k] - M);
                D1 += a;
                Dc += est[(size_t)g * nc + k];
            }
            for (int k = 0; k < nc; k++) {
                tru[(size_t)g * nc + k] /= D1;
                est[(size_t)g * nc + k] /= D1;
                const float sc = (float)(est[(size_t)g * nc + k] * D1 / Dc); /* S^c_k */
                maxSc[k] = sc > maxSc[k] ? sc : maxSc[k];
            }
        }
        for (int i = 0; i < GRID; i++)
            for (int k = 0; k < nc; k++) {
                if (maxSc[k] > cthr[i]) continue; /* kept by the group */
                for (int g = 0; g < group; g++) {
                    ga[i] += tru[(size_t)g * nc + k];
                    gb[i] += est[(size_t)g * nc + k];
                }
            }
    }
    for (int i = 0; i < GRID; i++) {
        const double r = gb[i] > 0.0 ? ga[i] / gb[i] : 1.0;
        cgain[i] = (float)(r >= 1.0 ? (r < GAIN_MAX ? r : GAIN_MAX) : 1.0); /* NaN: 1 */
    }
cleanup:
    free(cnt); free(x); free(S); free(crit); free(X); free(Sc); free(maxSc); free(tru); free(est);
    free(hist); free(ga); free(gb);
    return rc;
}

/* ---- build ------------------------------------------------------------------------------ */

/* Spherical k-means of the n rows of x (already L2-normalised) into k clusters; assign[i] = the
 * cluster (by inner product with the final centroids) of row i. */
static int spherical_kmeans(const float *x, int64_t n, int d, int k, int iter, int seed,
                            idx_t *assign, char *err, size_t errlen) {
    if (k <= 1) {
        for (int64_t i = 0; i < n; i++) assign[i] = 0;
        return IDX_OK;
    }
    FaissClustering *cl = NULL;
    FaissIndex *index = NULL;
    float *dis = malloc(sizeof(float) * n);
    int rc = IDX_OK;
    if (!dis) return set_err(err, errlen, IDX_ERR_NOMEM, "out of memory in k-means");
    FaissClusteringParameters cp;
    faiss_ClusteringParameters_init(&cp);
    cp.niter = iter;
    cp.seed = seed;
    cp.verbose = 0;
    cp.spherical = 1;
    cp.min_points_per_centroid = 1;        /* ~20 keys per cluster is the design: no warning */
    cp.max_points_per_centroid = 1 << 30;  /* and no subsampling */
    if (faiss_Clustering_new_with_params(&cl, d, k, &cp) ||
        faiss_index_factory(&index, d, "Flat", METRIC_INNER_PRODUCT) ||
        faiss_Clustering_train(cl, n, x, index) ||
        faiss_Index_search(index, n, x, 1, dis, assign)) { /* the index holds the final centroids */
        const char *m = faiss_get_last_error();
        rc = set_err(err, errlen, IDX_ERR_FAISS, "FAISS k-means: %s", m ? m : "?");
    }
    for (int64_t i = 0; rc == IDX_OK && i < n; i++)
        if (assign[i] < 0 || assign[i] >= k) rc = set_err(err, errlen, IDX_ERR_FAISS, "FAISS k-means: assignment out of range");
    if (cl) faiss_Clustering_free(cl);
    if (index) faiss_Index_free(index);
    free(dis);
    return rc;
}

static void normalise_rows(const float *x, int64_t n, int d, float *out) {
    for (int64_t i = 0; i < n; i++) {
        const float *r = x + (size_t)i * d;
        double s = 0.0;
        for (int t = 0; t < d; t++) s += (double)r[t] * r[t];
        const float inv = s > 0.0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int t = 0; t < d; t++) out[(size_t)i * d + t] = r[t] * inv;
    }
}

static int clamp_count(double frac, int64_t n, int64_t hi) {
    int64_t k = llround(frac * (double)n);
    if (k < 1) k = 1;
    if (k > hi) k = hi;
    return (int)k;
}

int idx_cent_build(const idx_cent_params *pp, const float *keys, int64_t n, int dim, int64_t pos0,
                   const float *obs, int64_t n_obs, float scale, idx_cent **out, char *err,
                   size_t errlen) {
    idx_cent_params p = pp ? *pp : idx_cent_params_default();
    if (p.group < 1) p.group = 1;
    if (out) *out = NULL;
    if (!out || !keys || !obs) return set_err(err, errlen, IDX_ERR_PARAM, "centroids: NULL argument");
    if (n < 1 || n > INT32_MAX || dim < 1 || dim > MAX_DIM || pos0 < 0 || pos0 > (int64_t)INT32_MAX + 1 - n)
        return set_err(err, errlen, IDX_ERR_PARAM, "centroids: %lld keys of dim %d at %lld", (long long)n, dim, (long long)pos0);
    if (n_obs < p.group || n_obs % p.group)
        return set_err(err, errlen, IDX_ERR_PARAM, "centroids: %lld observation rows, not a positive multiple of the group (%d)",
                       (long long)n_obs, p.group);
    if (!(p.fine_frac > 0.0f && p.fine_frac <= 1.0f) || !(p.coarse_frac >= 0.0f && p.coarse_frac <= 1.0f) ||
        p.kmeans_iter < 1 || !(scale > 0.0f && isfinite(scale)))
        return set_err(err, errlen, IDX_ERR_PARAM, "centroids: bad parameters");
    if (!all_finite(keys, (size_t)n * dim) || !all_finite(obs, (size_t)n_obs * dim))
        return set_err(err, errlen, IDX_ERR_PARAM, "centroids: non-finite key or observation query");

    int rc = IDX_OK;
    float *xn = malloc(sizeof(float) * n * dim);
    idx_t *lab = malloc(sizeof(idx_t) * n);
    int64_t *cnt = NULL, *order = NULL;
    int32_t *newid = NULL, *cpar = NULL, *fine_of_key = NULL;
    double *acc = NULL;
    float *fraw = NULL, *fn = NULL;
    idx_t *clab = NULL;
    void *blob = NULL;
    idx_cent *c = NULL;
    if (!xn || !lab) { rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory clustering %lld keys", (long long)n); goto cleanup; }

    /* 1. fine level: cosine k-means of the normalised keys */
    normalise_rows(keys, n, dim, xn);
    const int kf = clamp_count(p.fine_frac, n, n);
    if ((rc = spherical_kmeans(xn, n, dim, kf, p.kmeans_iter, p.seed, lab, err, errlen))) goto cleanup;
    free(xn);
    xn = NULL;
    cnt = calloc((size_t)kf, sizeof(int64_t));
    newid = malloc(sizeof(int32_t) * kf);
    if (!cnt || !newid) { rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
    for (int64_t i = 0; i < n; i++) cnt[lab[i]]++;
    int nf = 0; /* empty clusters dropped, order kept */
    for (int j = 0; j < kf; j++) newid[j] = cnt[j] ? nf++ : -1;
    /* raw-key means (double accumulation) */
    acc = calloc((size_t)nf * dim, sizeof(double));
    fraw = malloc(sizeof(float) * nf * dim);
    fine_of_key = malloc(sizeof(int32_t) * n);
    if (!acc || !fraw || !fine_of_key) { rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
    for (int64_t i = 0; i < n; i++) {
        const int j = newid[lab[i]];
        fine_of_key[i] = j;
        double *a = acc + (size_t)j * dim;
        const float *k = keys + (size_t)i * dim;
        for (int t = 0; t < dim; t++) a[t] += k[t];
    }
    int64_t *fsize = calloc((size_t)nf, sizeof(int64_t));
    if (!fsize) { rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
    for (int64_t i = 0; i < n; i++) fsize[fine_of_key[i]]++;
    for (int j = 0; j < nf; j++)
        for (int t = 0; t < dim; t++) fraw[(size_t)j * dim + t] = (float)(acc[(size_t)j * dim + t] / fsize[j]);

    /* 2. coarse level: cosine k-means of the normalised fine centroids */
    int nc = 0;
    cpar = malloc(sizeof(int32_t) * nf);
    if (!cpar) { free(fsize); rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
    for (int j = 0; j < nf; j++) cpar[j] = 0;
    const int kc = p.coarse_frac > 0.0f ? clamp_count(p.coarse_frac, n, nf) : 0;
    if (kc >= 1 && kc < nf) {
        fn = malloc(sizeof(float) * nf * dim);
        clab = malloc(sizeof(idx_t) * nf);
        int32_t *cid = malloc(sizeof(int32_t) * kc);
        int64_t *ccnt = calloc((size_t)kc, sizeof(int64_t));
        if (!fn || !clab || !cid || !ccnt) {
            free(cid); free(ccnt); free(fsize);
            rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        normalise_rows(fraw, nf, dim, fn);
        rc = spherical_kmeans(fn, nf, dim, kc, p.kmeans_iter, p.seed + 1, clab, err, errlen);
        if (rc == IDX_OK) {
            for (int j = 0; j < nf; j++) ccnt[clab[j]]++;
            for (int k = 0; k < kc; k++) cid[k] = ccnt[k] ? nc++ : -1;
            for (int j = 0; j < nf; j++) cpar[j] = cid[clab[j]];
        }
        free(cid); free(ccnt);
        if (rc) { free(fsize); goto cleanup; }
        if (nc < 2) { /* everything under one coarse cluster: no second level */
            nc = 0;
            for (int j = 0; j < nf; j++) cpar[j] = 0;
        }
    }

    /* 3. fine clusters grouped by coarse parent (stable): order[r] = fine id at rank r */
    order = malloc(sizeof(int64_t) * nf);
    int64_t *rank = malloc(sizeof(int64_t) * nf);
    int64_t *cstart = calloc((size_t)(nc > 0 ? nc : 1) + 1, sizeof(int64_t));
    if (!order || !rank || !cstart) {
        free(rank); free(cstart); free(fsize);
        rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    const int ncg = nc > 0 ? nc : 1;
    for (int j = 0; j < nf; j++) cstart[cpar[j] + 1]++;
    for (int k = 0; k < ncg; k++) cstart[k + 1] += cstart[k];
    {
        int64_t *fill = malloc(sizeof(int64_t) * ncg);
        if (!fill) { free(rank); free(cstart); free(fsize); rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
        memcpy(fill, cstart, sizeof(int64_t) * ncg);
        for (int j = 0; j < nf; j++) { order[fill[cpar[j]]] = j; rank[j] = fill[cpar[j]]++; }
        free(fill);
    }

    /* 4. the blob */
    size_t off[NSEC + 1];
    layout(n, dim, nf, nc, off, NULL);
    blob = calloc(1, off[NSEC]);
    if (!blob) { free(rank); free(cstart); free(fsize); rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
    unsigned char *b = blob;
    blob_hdr h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, BLOB_MAGIC, 8);
    h.version = BLOB_VERSION;
    h.header_bytes = sizeof h;
    h.total_bytes = off[NSEC];
    h.n_keys = n; h.pos0 = pos0; h.dim = dim; h.n_fine = nf; h.n_coarse = nc; h.grid = GRID;
    h.group = p.group; h.byte_order = BYTE_ORDER_MARK; h.scale = scale; h.coarse_cover = COARSE_COVER;
    memcpy(b, &h, sizeof h);
    float *fc = (float *)(b + off[0]), *cc = (float *)(b + off[1]), *gain0 = (float *)(b + off[4]);
    for (int i = 0; i < GRID; i++) gain0[i] = 1.0f; /* calibrated below with a coarse level */
    int32_t *fo = (int32_t *)(b + off[5]), *co = (int32_t *)(b + off[6]), *mem = (int32_t *)(b + off[7]);
    for (int r = 0; r < nf; r++) memcpy(fc + (size_t)r * dim, fraw + (size_t)order[r] * dim, sizeof(float) * dim);
    fo[0] = 0;
    for (int r = 0; r < nf; r++) fo[r + 1] = fo[r] + (int32_t)fsize[order[r]];
    {
        int64_t *fill = malloc(sizeof(int64_t) * nf);
        if (!fill) { free(rank); free(cstart); free(fsize); rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
        for (int r = 0; r < nf; r++) fill[r] = fo[r];
        for (int64_t i = 0; i < n; i++) mem[fill[rank[fine_of_key[i]]]++] = (int32_t)i; /* ascending */
        free(fill);
    }
    if (nc > 0) {
        for (int k = 0; k <= nc; k++) co[k] = (int32_t)cstart[k];
        /* coarse centroid: mean of the raw keys under it, from the fine sums */
        for (int k = 0; k < nc; k++) {
            double *a = calloc((size_t)dim, sizeof(double));
            if (!a) { free(rank); free(cstart); free(fsize); rc = set_err(err, errlen, IDX_ERR_NOMEM, "out of memory"); goto cleanup; }
            int64_t tot = 0;
            for (int r = co[k]; r < co[k + 1]; r++) {
                const double *s = acc + (size_t)order[r] * dim;
                for (int t = 0; t < dim; t++) a[t] += s[t];
                tot += fsize[order[r]];
            }
            for (int t = 0; t < dim; t++) cc[(size_t)k * dim + t] = (float)(a[t] / tot);
            free(a);
        }
    }
    free(rank); free(cstart); free(fsize);

    /* 5. a view of the blob (checks the layout), then the calibration written into it */
    char verr[160];
    if ((rc = idx_cent_from_blob(blob, off[NSEC], &c, verr, sizeof verr))) {
        rc = set_err(err, errlen, rc, "centroids: internal layout error: %s", verr);
        goto cleanup;
    }
    c->own = blob;
    blob = NULL;
    if ((rc = calibrate(c, obs, n_obs / p.group, p.group, err, errlen))) goto cleanup;
    /* what idx_cent_from_blob will accept later, checked now (keys of extreme magnitude could
     * overflow the calibration's products) */
    idx_cent *check = NULL;
    if ((rc = idx_cent_from_blob(c->own, c->len, &check, verr, sizeof verr))) {
        rc = set_err(err, errlen, IDX_ERR_PARAM, "centroids: calibration failed (keys or queries too large?): %s", verr);
        goto cleanup;
    }
    idx_cent_free(check);
    *out = c;
    c = NULL;
cleanup:
    idx_cent_free(c);
    free(blob); free(xn); free(lab); free(cnt); free(order); free(newid); free(cpar);
    free(fine_of_key); free(acc); free(fraw); free(fn); free(clab);
    return rc;
}
