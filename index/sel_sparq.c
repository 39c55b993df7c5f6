/* The `sparq` selector (SparQ Attention, Ribar et al., ICML 2024): every candidate key is scored
 * approximately from the r components of the query with the largest magnitude, read from a
 * channel-major f16 copy of the keys (r/d of a scan's bytes, contiguous), and the keys with the
 * highest approximate attention, the request's target share, are attended exactly. No structure
 * to build and nothing learnt from prefill queries: it cannot be out of distribution, which is
 * where clustered and graph indexes lose recall; its cost is linear in the context at r/d of an
 * exact scan. A GQA group shares the channels (largest summed magnitude) and keeps the keys
 * whose approximate probability, the best over its queries, ranks highest. Its estimate of the
 * keys it leaves (idx_select_est) weighs them by their approximate probabilities, each with the
 * mean value of the left-out keys of its block (block sums of the values kept as keys arrive). */
#include "sel_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "quant.h"

#define SPARQ_SHARE_DEFAULT 0.02f /* idx_request.target 0: share of the candidates read */
#define SPARQ_MIN_KEYS 32         /* read at least this many (or every candidate) */
#define SPARQ_BLOCK 512           /* keys per block: its r columns stay in cache across a group */

typedef struct {
    int64_t n, cap;          /* keys held, room per channel */
    uint16_t *kc;            /* (d, cap): channel i of key j at kc[i * cap + j], f16 */
    /* scratch, grown on demand */
    float *best;             /* (cap) a key's best approximate logit over the group, max-shifted */
    float *tmp;              /* (cap) a copy for the threshold search */
    float *all;              /* (n_q, N) the group's approximate logits */
    int64_t all_cap;
    float *qmean, *row;      /* (d) */
    float *wq;               /* the group's weight per channel, (n_q rounded up to QG, r) in blocks of QG */
    int64_t wq_cap;
    int all_nq;              /* queries whose logits `all` holds (1 under GQA mean) */
    /* estimate: per block of IDX_EST_BLOCK keys the sum of its values, and scratch */
    float *vblk;             /* (cap / IDX_EST_BLOCK, v_dim) */
    float *restv;            /* (cap / IDX_EST_BLOCK, v_dim) the left-out keys' value sums */
    float *rest_w;           /* (cap / IDX_EST_BLOCK) */
    int32_t *rest_n;         /* (cap / IDX_EST_BLOCK) left-out keys per block */
    uint8_t *sel;            /* (cap) 1: returned by the last select */
    int vd;                  /* 0 until the first key arrives */
} sparq_st;

static void sparq_free(void *st);

static void *sparq_new(const idx_params *p) {
    sparq_st *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->qmean = malloc(sizeof(float) * p->head_dim);
    s->row = malloc(sizeof(float) * p->head_dim);
    if (s->qmean && s->row) return s;
    sparq_free(s);
    return NULL;
}

static void sparq_clear(void *st) {
    sparq_st *s = st;
    s->n = 0;
    if (s->vblk) memset(s->vblk, 0, sizeof(float) * (size_t)(s->cap / IDX_EST_BLOCK) * s->vd);
}

static void sparq_free(void *st) {
    sparq_st *s = st;
    if (!s) return;
    free(s->kc); free(s->best); free(s->tmp); free(s->all); free(s->qmean); free(s->row); free(s->wq);
    free(s->vblk); free(s->restv); free(s->rest_w); free(s->rest_n); free(s->sel);
    free(s);
}

/* Room for n keys per channel (cap a multiple of IDX_EST_BLOCK), the held ones moved to the new
 * stride, the value block sums kept; 0 or -1. */
static int reserve(sparq_st *s, int64_t n, int d, int vd) {
    if (n <= s->cap) return 0;
    int64_t c = s->cap ? s->cap : 1024;
    while (c < n) c *= 2;
    const size_t nb = (size_t)(c / IDX_EST_BLOCK);
    uint16_t *kc = malloc(sizeof(uint16_t) * (size_t)d * c);
    float *b = malloc(sizeof(float) * c), *t = malloc(sizeof(float) * c);
    float *vb = calloc(nb * vd, sizeof(float)), *rv = malloc(sizeof(float) * nb * vd), *rw = malloc(sizeof(float) * nb);
    int32_t *rn = malloc(sizeof(int32_t) * nb);
    uint8_t *sel = calloc(c, 1);
    if (!kc || !b || !t || !vb || !rv || !rw || !rn || !sel) {
        free(kc); free(b); free(t); free(vb); free(rv); free(rw); free(rn); free(sel);
        return -1;
    }
    for (int i = 0; i < d && s->kc; i++) memcpy(kc + (size_t)i * c, s->kc + (size_t)i * s->cap, sizeof(uint16_t) * s->n);
    if (s->vblk) memcpy(vb, s->vblk, sizeof(float) * (size_t)(s->cap / IDX_EST_BLOCK) * vd);
    free(s->kc); free(s->best); free(s->tmp); free(s->vblk); free(s->restv); free(s->rest_w); free(s->rest_n); free(s->sel);
    s->kc = kc;
    s->best = b;
    s->tmp = t;
    s->vblk = vb;
    s->restv = rv;
    s->rest_w = rw;
    s->rest_n = rn;
    s->sel = sel;
    s->cap = c;
    return 0;
}

/* Appends the keys [from, to) of (layer, head) as columns. */
static int extend(idx_set *ix, sparq_st *s, int layer, int head, const kv_store *kv, int64_t from, int64_t to) {
    const int d = ix->p.head_dim, vd = kv_get_params(kv)->v_dim;
    if (s->vd && s->vd != vd) return idx_fail(ix, IDX_ERR_PARAM, "sparq: value width %d, was %d", vd, s->vd);
    s->vd = vd;
    if (reserve(s, s->n + (to - from), d, vd))
        return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for %lld sparq keys", (long long)(s->n + to - from));
    const int f16 = kv_get_params(kv)->dtype == KV_F16;
    for (int64_t pos = from; pos < to; pos++) {
        const void *src = kv_k_row(kv, layer, head, pos);
        if (!src)
            return idx_fail(ix, IDX_ERR_KV, "key %lld of layer %d head %d is not held", (long long)pos, layer, head);
        const int64_t j = s->n + (pos - from);
        if (f16) {
            const uint16_t *h = src;
            for (int i = 0; i < d; i++) s->kc[(size_t)i * s->cap + j] = h[i];
        } else {
            const float *k = src;
            for (int i = 0; i < d; i++) s->kc[(size_t)i * s->cap + j] = krn_f32_to_f16(k[i]);
        }
        const int rc = idx_value_add(ix, kv, layer, head, pos, 1.0f, s->vblk + (size_t)(j / IDX_EST_BLOCK) * vd);
        if (rc) return rc;
    }
    s->n += to - from;
    return IDX_OK;
}

static int sparq_build(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv,
                       const float *queries, int64_t n_queries) {
    sparq_st *s = g->st;
    sparq_clear(s);
    return extend(ix, s, layer, head, kv, g->lo, g->hi);
}

static int sparq_has_structure(const void *st) { return ((const sparq_st *)st)->n > 0; }

static int sparq_add(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv, int64_t hi) {
    return extend(ix, g->st, layer, head, kv, g->hi, hi);
}

/* Keys read: the target share of the candidates (0.02 when unset), at least SPARQ_MIN_KEYS. */
static int64_t budget(const idx_slot *g, const idx_request *req) {
    const int64_t nc = g->hi - g->lo;
    const double share = req->target > 0 ? req->target : SPARQ_SHARE_DEFAULT;
    int64_t k = (int64_t)ceil(share * (double)nc);
    if (k < SPARQ_MIN_KEYS) k = SPARQ_MIN_KEYS;
    return k < nc ? k : nc;
}

static int64_t sparq_max_ids(const idx_set *ix, const idx_slot *g, int n_q, const idx_request *req) {
    return budget(g, req);
}

/* Channels used: r of d (idx_params.sparq_r; 0: d / 4, at least 1). */
static int channels(const idx_set *ix) {
    const int d = ix->p.head_dim;
    const int r = ix->p.sparq_r > 0 ? ix->p.sparq_r : d / 4;
    return r < 1 ? 1 : r > d ? d : r;
}

enum { QG = 8 }; /* queries whose logits one pass over a block's channels accumulates */

/* all[gq * N + b0 + j] for the n_q queries and the nb keys of one block from b0: the sum over the
 * r channels, in channel order, of W's weight times the key's f16 channel. One fused multiply-add
 * per channel from 0, as channel-by-channel axpy did, so the same bits; but the group's
 * accumulators stay in registers and each 16-key run of a channel is converted once for all of
 * them (the axpy form loaded and stored the whole block of logits per channel and query). */
static void block_logits(const sparq_st *s, const int *ch, int r, const float *W, int n_q, int64_t N,
                         int64_t b0, int nb) {
    float *all = s->all;
    int j = 0;
#if defined(__AVX512F__)
    for (; j + 16 <= nb; j += 16)
        for (int g0 = 0; g0 < n_q; g0 += QG) {
            const float *w = W + (size_t)g0 * r;
            __m512 acc[QG];
            for (int g = 0; g < QG; g++) acc[g] = _mm512_setzero_ps();
            for (int t = 0; t < r; t++) {
                const __m512 k = _mm512_cvtph_ps(
                    _mm256_loadu_si256((const __m256i *)(s->kc + (size_t)ch[t] * s->cap + b0 + j)));
                for (int g = 0; g < QG; g++) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(w[t * QG + g]), k, acc[g]);
            }
            const int ng = n_q - g0 < QG ? n_q - g0 : QG;
            for (int g = 0; g < ng; g++) _mm512_storeu_ps(all + (size_t)(g0 + g) * N + b0 + j, acc[g]);
        }
#elif defined(__F16C__) && defined(__AVX2__)
    for (; j + 8 <= nb; j += 8)
        for (int g0 = 0; g0 < n_q; g0 += QG) {
            const float *w = W + (size_t)g0 * r;
            __m256 acc[QG];
            for (int g = 0; g < QG; g++) acc[g] = _mm256_setzero_ps();
            for (int t = 0; t < r; t++) {
                const __m256 k = _mm256_cvtph_ps(
                    _mm_loadu_si128((const __m128i *)(s->kc + (size_t)ch[t] * s->cap + b0 + j)));
                for (int g = 0; g < QG; g++) acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(w[t * QG + g]), k, acc[g]);
            }
            const int ng = n_q - g0 < QG ? n_q - g0 : QG;
            for (int g = 0; g < ng; g++) _mm256_storeu_ps(all + (size_t)(g0 + g) * N + b0 + j, acc[g]);
        }
#endif
    for (; j < nb; j++)
        for (int gq = 0; gq < n_q; gq++) {
            const float *w = W + (size_t)(gq / QG) * QG * r;
            float a = 0;
            for (int t = 0; t < r; t++) a += w[t * QG + gq % QG] * krn_f16_to_f32(s->kc[(size_t)ch[t] * s->cap + b0 + j]);
            all[(size_t)gq * N + b0 + j] = a;
        }
}

/* The approximate logits of the N keys for each of the n_q queries into s->all (n_q rows of N):
 * the group's r channels of largest summed |q|, and SparQ's temperature per query. IDX_OK or a
 * code with the set's message. */
static int approx_logits(idx_set *ix, sparq_st *s, const float *q, int n_q, int64_t N) {
    const int d = ix->p.head_dim;
    /* the channels: largest summed |q| over the group (d is small: selection by repeated max) */
    const int r = channels(ix);
    int ch[512];
    float w[512];
    if (d > 512) return idx_fail(ix, IDX_ERR_PARAM, "sparq: head_dim %d above 512", d);
    for (int i = 0; i < d; i++) {
        float a = 0;
        for (int gq = 0; gq < n_q; gq++) a += fabsf(q[(size_t)gq * d + i]);
        w[i] = a;
    }
    for (int t = 0; t < r; t++) {
        int b = -1;
        for (int i = 0; i < d; i++)
            if (w[i] >= 0 && (b < 0 || w[i] > w[b])) b = i;
        ch[t] = b;
        w[b] = -1.0f;
    }
    /* SparQ's temperature: the logit's scale over the share of |q|'s L1 mass the channels hold,
     * so a query whose chosen channels carry little of it is not made to look sharper */
    float coef[64];
    if (n_q > 64) return idx_fail(ix, IDX_ERR_PARAM, "sparq: %d queries per group above 64", n_q);
    const float scale = ix->p.attn_scale > 0 ? ix->p.attn_scale : 1.0f / sqrtf((float)d);
    for (int gq = 0; gq < n_q; gq++) {
        const float *qq = q + (size_t)gq * d;
        float all = 0, part = 0;
        for (int i = 0; i < d; i++) all += fabsf(qq[i]);
        for (int t = 0; t < r; t++) part += fabsf(qq[ch[t]]);
        coef[gq] = part > 0 && all > 0 ? scale / sqrtf(part / all) : scale;
    }
    /* approximate logits of every key for each query, block by block (the block's columns
     * stay in cache across the group); then a key's score is its best over the group of
     * (logit - that query's maximum): the log of an approximate probability, up to its sum */
    if ((int64_t)n_q * s->cap > s->all_cap) {
        float *a = realloc(s->all, sizeof(float) * (size_t)n_q * s->cap);
        if (!a) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for sparq scratch");
        s->all = a;
        s->all_cap = (int64_t)n_q * s->cap;
    }
    const int nqp = (n_q + QG - 1) / QG * QG;
    if ((int64_t)nqp * r > s->wq_cap) {
        float *w2 = realloc(s->wq, sizeof(float) * (size_t)nqp * r);
        if (!w2) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for sparq scratch");
        s->wq = w2;
        s->wq_cap = (int64_t)nqp * r;
    }
    for (int gq = 0; gq < nqp; gq++)
        for (int t = 0; t < r; t++)
            s->wq[(size_t)(gq / QG) * QG * r + (size_t)t * QG + gq % QG] =
                gq < n_q ? q[(size_t)gq * d + ch[t]] * coef[gq] : 0.0f;
    for (int64_t b0 = 0; b0 < N; b0 += SPARQ_BLOCK) {
        const int nb = (int)(N - b0 < SPARQ_BLOCK ? N - b0 : SPARQ_BLOCK);
        block_logits(s, ch, r, s->wq, n_q, N, b0, nb);
    }
    s->all_nq = n_q;
    return IDX_OK;
}

static int64_t sparq_select(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv,
                            const float *q, int n_q, const idx_request *req, int32_t *ids,
                            int64_t max_ids, int64_t *scanned, int *n_queries) {
    sparq_st *s = g->st;
    const int d = ix->p.head_dim;
    const int64_t N = g->hi - g->lo;
    if (N == 0) return 0;
    if (s->n != N) /* an idx_add whose lazy build failed */
        return idx_fail(ix, IDX_ERR_STATE, "sparq keys do not cover layer %d head %d", layer, head);
    for (int i = 0; i < n_q * d; i++)
        if (!isfinite(q[i])) return idx_fail(ix, IDX_ERR_PARAM, "sparq select: non-finite query (layer %d head %d)", layer, head);
    const int64_t k = budget(g, req) < max_ids ? budget(g, req) : max_ids;
    if (k >= N) {
        *scanned = 0;
        *n_queries = 0;
        return idx_all_candidates(g, ids);
    }
    if (req->gqa == IDX_GQA_MEAN && n_q > 1) {
        idx_mean_query(q, n_q, d, s->qmean);
        q = s->qmean;
        n_q = 1;
    }
    *n_queries = n_q;
    const int rc = approx_logits(ix, s, q, n_q, N);
    if (rc) return rc;
    idx_group_best(s->all, n_q, N, s->best);
    /* the k best keys, in ascending order; ties at the threshold fill up to k */
    memcpy(s->tmp, s->best, sizeof(float) * N);
    const float thr = idx_kth_largest(s->tmp, N, k);
    int64_t above = 0;
    for (int64_t j = 0; j < N; j++) above += s->best[j] > thr;
    int64_t n = 0, ties = k - above;
    for (int64_t j = 0; j < N && n < k; j++) {
        const float v = s->best[j];
        if (v > thr || (v == thr && ties-- > 0)) ids[n++] = (int32_t)(g->lo + j);
    }
    /* the work of scoring keys: r of d components per key and query */
    const int r = channels(ix);
    *scanned = (N * r * n_q + d - 1) / d;
    return n;
}

/* exp(x) for x <= 0 to about 1e-6 relative (2^x: a degree-5 polynomial for the fraction, the
 * exponent placed by hand), written so that a loop of it vectorises; below -87 gives ~0. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float t = x * 1.442695041f, fi = floorf(t), f = t - fi;
    const float p = 1.0f + f * (0.6931472f + f * (0.2402265f + f * (0.05550411f + f * (0.009618129f + f * 0.001333355f))));
    const int32_t e = ((int32_t)fi + 127) << 23;
    float two;
    memcpy(&two, &e, sizeof two);
    return p * two;
}

/* The left-out keys, weighed by each query's approximate probabilities; a key's value is the
 * mean value of its block's left-out keys (the block sums less the returned keys' values). */
static int sparq_estimate(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv, const float *q,
                          int n_q, const int32_t *ids, int64_t n, idx_estimate *est) {
    sparq_st *s = g->st;
    const int64_t N = g->hi - g->lo;
    const int vd = s->vd;
    const int64_t nb = (N + IDX_EST_BLOCK - 1) / IDX_EST_BLOCK;
    if (s->all_nq != n_q) { /* the select scored the group's mean query */
        const int rc = approx_logits(ix, s, q, n_q, N);
        if (rc) return rc;
    }
    memcpy(s->restv, s->vblk, sizeof(float) * (size_t)nb * vd);
    for (int64_t b = 0; b < nb; b++)
        s->rest_n[b] = (int32_t)(b + 1 < nb ? IDX_EST_BLOCK : N - b * IDX_EST_BLOCK);
    for (int64_t i = 0; i < n; i++) { /* the returned keys leave their blocks */
        const int64_t j = ids[i] - g->lo, b = j / IDX_EST_BLOCK;
        const int rc = idx_value_add(ix, kv, layer, head, ids[i], -1.0f, s->restv + (size_t)b * vd);
        if (rc) {
            for (int64_t t = 0; t < i; t++) s->sel[ids[t] - g->lo] = 0;
            return rc;
        }
        s->rest_n[b]--;
        s->sel[j] = 1;
    }
    for (int gq = 0; gq < n_q; gq++) {
        const float *a = s->all + (size_t)gq * N;
        const float m = idx_max(a, N);
        double w_sel = 0, w_rest = 0;
        float *v = est->v + (size_t)gq * vd;
        memset(v, 0, sizeof(float) * vd);
        for (int64_t b = 0; b < nb; b++) {
            const int64_t j0 = b * IDX_EST_BLOCK, j1 = j0 + IDX_EST_BLOCK < N ? j0 + IDX_EST_BLOCK : N;
            float ws = 0, wr = 0;
            for (int64_t j = j0; j < j1; j++) {
                const float w = exp_neg(a[j] - m);
                ws += s->sel[j] ? w : 0.0f;
                wr += s->sel[j] ? 0.0f : w;
            }
            w_sel += ws;
            w_rest += wr;
            if (s->rest_n[b] > 0 && wr > 0) {
                const float f = wr / (float)s->rest_n[b];
                const float *rv = s->restv + (size_t)b * vd;
                for (int c = 0; c < vd; c++) v[c] += f * rv[c];
            }
        }
        if (w_rest > 0 && w_sel > 0) {
            const float inv = (float)(1.0 / w_rest);
            for (int c = 0; c < vd; c++) v[c] *= inv;
            est->rel[gq] = (float)log(w_rest / w_sel);
        }
    }
    for (int64_t i = 0; i < n; i++) s->sel[ids[i] - g->lo] = 0;
    return IDX_OK;
}

static size_t sparq_bytes(const idx_set *ix, const void *st) {
    const sparq_st *s = st;
    return sizeof *s + (size_t)s->cap * (ix->p.head_dim * sizeof(uint16_t) + 2 * sizeof(float) + 1) +
           (size_t)(s->cap / IDX_EST_BLOCK) * (2 * s->vd + 2) * sizeof(float) +
           (size_t)s->all_cap * sizeof(float) + 2 * ix->p.head_dim * sizeof(float);
}

const idx_ops idx_ops_sparq = {
    .kind = IDX_SPARQ,
    .name = "sparq",
    .caps = IDX_CAP_SHARED | IDX_CAP_ESTIMATE,
    .any_size = 1,
    .state_new = sparq_new,
    .state_clear = sparq_clear,
    .state_free = sparq_free,
    .build = sparq_build,
    .has_structure = sparq_has_structure,
    .add = sparq_add,
    .max_ids = sparq_max_ids,
    .select = sparq_select,
    .estimate = sparq_estimate,
    .bytes = sparq_bytes,
};
