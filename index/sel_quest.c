/* The `quest` selector (Quest, Tang et al., ICML 2024): the candidates [lo, hi) in pages of P
 * consecutive keys, each page summarised by the element-wise min and max of its keys. For a
 * query q, sum_d max(q_d min_d, q_d max_d) bounds q.k from above for every key of the page; the
 * pages with the highest bounds, enough to cover the key budget, are read in full. It learns
 * nothing from prefill queries and builds in one pass over the keys, at any size: the
 * query-aware baseline that retrieval and centroids are compared with at equal keys read. */
#include "sel_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define QUEST_SHARE_DEFAULT 0.02f /* idx_request.target 0: share of the candidates read */

typedef struct {
    float s;
    int32_t page;
} page_ent;

typedef struct {
    int P;                   /* keys per page; pages start at lo, the last may be partial */
    int64_t n_pages, cap_pages;
    float *bound;            /* (cap_pages, 2, d): a page's min row, then its max row */
    /* scratch, grown on demand */
    float *score;            /* (cap_pages) bounds for one query */
    page_ent *heap;          /* (heap_cap) the best pages of one query, worst at the root */
    int64_t heap_cap;
    uint32_t *mark;          /* (cap_pages) chosen in the call stamped with `epoch` */
    uint32_t epoch;
    float *qmean, *row;      /* (d) the GQA mean query; an f16 key as f32 */
} quest_st;

static void quest_free(void *st);

static void *quest_new(const idx_params *p) {
    quest_st *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->P = p->quest_page;
    s->qmean = malloc(sizeof(float) * p->head_dim);
    s->row = malloc(sizeof(float) * p->head_dim);
    if (s->qmean && s->row) return s;
    quest_free(s);
    return NULL;
}

/* The bounds go, their memory and the scratch stay: a rebuild of the same size allocates nothing. */
static void quest_clear(void *st) { ((quest_st *)st)->n_pages = 0; }

static void quest_free(void *st) {
    quest_st *s = st;
    if (!s) return;
    free(s->bound); free(s->score); free(s->heap); free(s->mark); free(s->qmean); free(s->row);
    free(s);
}

/* Room for n pages in the bounds and the per-page scratch (contents kept); 0 or -1. */
static int reserve_pages(quest_st *s, int64_t n, int d) {
    if (n <= s->cap_pages) return 0;
    int64_t c = s->cap_pages ? s->cap_pages : 64;
    while (c < n) c *= 2;
    float *b = realloc(s->bound, sizeof(float) * 2 * d * c);
    if (b) s->bound = b;
    float *sc = realloc(s->score, sizeof(float) * c);
    if (sc) s->score = sc;
    uint32_t *m = realloc(s->mark, sizeof(uint32_t) * c);
    if (m) {
        /* a fresh stamp must not match a live epoch */
        memset(m + s->cap_pages, 0, sizeof(uint32_t) * (c - s->cap_pages));
        s->mark = m;
    }
    if (!b || !sc || !m) return -1;
    s->cap_pages = c;
    return 0;
}

/* Folds the keys [from, to) into the bounds: a key at a page's first row opens the page, the
 * others widen it, so the partial last page of a build or an add simply keeps growing. */
static int extend(idx_set *ix, quest_st *s, int layer, int head, const kv_store *kv, int64_t lo,
                  int64_t from, int64_t to) {
    const int d = ix->p.head_dim, P = s->P;
    if (reserve_pages(s, (to - lo + P - 1) / P, d))
        return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for %lld quest pages", (long long)((to - lo + P - 1) / P));
    const int f16 = kv_get_params(kv)->dtype == KV_F16;
    for (int64_t pos = from; pos < to; pos++) {
        const void *src = kv_k_row(kv, layer, head, pos);
        if (!src)
            return idx_fail(ix, IDX_ERR_KV, "key %lld of layer %d head %d is not held", (long long)pos, layer, head);
        const float *k = src;
        if (f16) {
            krn_dequantize_row(KRN_TYPE_F16, src, s->row, d);
            k = s->row;
        }
        const int64_t j = (pos - lo) / P;
        float *mn = s->bound + (size_t)j * 2 * d, *mx = mn + d;
        if ((pos - lo) % P == 0) {
            memcpy(mn, k, sizeof(float) * d);
            memcpy(mx, k, sizeof(float) * d);
            s->n_pages = j + 1;
        } else {
            #pragma omp simd
            for (int i = 0; i < d; i++) {
                mn[i] = k[i] < mn[i] ? k[i] : mn[i];
                mx[i] = k[i] > mx[i] ? k[i] : mx[i];
            }
        }
    }
    return IDX_OK;
}

static int quest_build(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv,
                       const float *queries, int64_t n_queries) {
    quest_st *s = g->st;
    s->n_pages = 0;
    return extend(ix, s, layer, head, kv, g->lo, g->lo, g->hi);
}

static int quest_has_structure(const void *st) { return ((const quest_st *)st)->n_pages > 0; }

static int quest_add(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv, int64_t hi) {
    return extend(ix, g->st, layer, head, kv, g->lo, g->hi, hi);
}

/* Pages read per query: the budget (the request's target share of the candidates, 0.02 when
 * unset, and at least top_k keys, or ceil(fraction * candidates) when top_k is 0) in whole
 * pages, at most all of them. */
static int64_t budget_pages(const idx_set *ix, const idx_slot *g, const idx_request *req) {
    const int64_t nc = g->hi - g->lo, P = ix->p.quest_page;
    const double share = req->target > 0 ? req->target : QUEST_SHARE_DEFAULT;
    int64_t keys = (int64_t)ceil(share * (double)nc);
    const int64_t floor_k = req->top_k > 0 ? req->top_k : (int64_t)ceil((double)req->fraction * (double)nc);
    if (keys < floor_k) keys = floor_k;
    if (keys > nc) keys = nc;
    return (keys + P - 1) / P;
}

static int64_t quest_max_ids(const idx_set *ix, const idx_slot *g, int n_q, const idx_request *req) {
    const int64_t nc = g->hi - g->lo;
    const int64_t m = (req->gqa == IDX_GQA_MEAN ? 1 : n_q) * budget_pages(ix, g, req) * ix->p.quest_page;
    return m < nc ? m : nc;
}

/* Whether a ranks above b: the higher bound, then the earlier page (deterministic ties). */
static int better(page_ent a, page_ent b) { return a.s > b.s || (a.s == b.s && a.page < b.page); }

/* Keeps the k best pages seen in a heap whose root is the worst of them. */
static void heap_push(page_ent *h, int64_t *n, int64_t k, page_ent e) {
    int64_t i;
    if (*n < k) {
        for (i = (*n)++; i > 0 && better(h[(i - 1) / 2], e); i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
        h[i] = e;
        return;
    }
    if (!better(e, h[0])) return;
    for (i = 0;;) { /* replace the root and sift down */
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && better(h[c], h[c + 1])) c++;
        if (!better(e, h[c])) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = e;
}

/* Every page's upper bound for q; a NaN bound (an infinite key times a zero query component)
 * ranks last. */
static void score_pages(const quest_st *s, const float *q, int d) {
    for (int64_t j = 0; j < s->n_pages; j++) {
        const float *mn = s->bound + (size_t)j * 2 * d, *mx = mn + d;
        float a = 0.0f;
        /* a compare, not fmaxf: without -ffinite-math-only fmaxf is a libm call per element */
        #pragma omp simd reduction(+ : a)
        for (int i = 0; i < d; i++) {
            const float x = q[i] * mn[i], y = q[i] * mx[i];
            a += x > y ? x : y;
        }
        s->score[j] = a == a ? a : -INFINITY;
    }
}

static int64_t quest_select(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv,
                            const float *q, int n_q, const idx_request *req, int32_t *ids,
                            int64_t max_ids, int64_t *scanned, int *n_queries) {
    quest_st *s = g->st;
    const int d = ix->p.head_dim, P = s->P;
    if (g->hi == g->lo) return 0;
    if (s->n_pages != (g->hi - g->lo + P - 1) / P) /* an idx_add whose lazy build failed */
        return idx_fail(ix, IDX_ERR_STATE, "quest bounds do not cover layer %d head %d", layer, head);
    for (int i = 0; i < n_q * d; i++)
        if (!isfinite(q[i])) return idx_fail(ix, IDX_ERR_PARAM, "quest select: non-finite query (layer %d head %d)", layer, head);
    const int64_t k = budget_pages(ix, g, req);
    if (k > s->heap_cap) {
        page_ent *h = realloc(s->heap, sizeof(page_ent) * k);
        if (!h) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for quest scratch");
        s->heap = h;
        s->heap_cap = k;
    }
    if (req->gqa == IDX_GQA_MEAN && n_q > 1) {
        idx_mean_query(q, n_q, d, s->qmean);
        q = s->qmean;
        n_q = 1;
    }
    *n_queries = n_q;
    if (++s->epoch == 0) { /* wrapped: no old stamp may match */
        memset(s->mark, 0, sizeof(uint32_t) * s->cap_pages);
        s->epoch = 1;
    }
    for (int gq = 0; gq < n_q; gq++) {
        score_pages(s, q + (size_t)gq * d, d);
        int64_t hn = 0;
        for (int64_t j = 0; j < s->n_pages; j++) heap_push(s->heap, &hn, k, (page_ent){s->score[j], (int32_t)j});
        for (int64_t t = 0; t < hn; t++) s->mark[s->heap[t].page] = s->epoch;
    }
    /* the union in page order: ascending ids without a sort */
    int64_t n = 0;
    for (int64_t j = 0; j < s->n_pages; j++) {
        if (s->mark[j] != s->epoch) continue;
        const int64_t a = g->lo + j * P, b = a + P < g->hi ? a + P : g->hi;
        for (int64_t pos = a; pos < b; pos++) ids[n++] = (int32_t)pos;
    }
    /* a bound reads a min and a max row: the work of scoring two keys */
    *scanned = 2 * s->n_pages * n_q;
    return n;
}

static size_t quest_bytes(const idx_set *ix, const void *st) {
    const quest_st *s = st;
    return sizeof *s + (size_t)s->cap_pages * ((2 * ix->p.head_dim + 1) * sizeof(float) + sizeof(uint32_t)) +
           (size_t)s->heap_cap * sizeof(page_ent) + 2 * ix->p.head_dim * sizeof(float);
}

const idx_ops idx_ops_quest = {
    .kind = IDX_QUEST,
    .name = "quest",
    .caps = IDX_CAP_SHARED,
    .any_size = 1,
    .state_new = quest_new,
    .state_clear = quest_clear,
    .state_free = quest_free,
    .build = quest_build,
    .has_structure = quest_has_structure,
    .add = quest_add,
    .max_ids = quest_max_ids,
    .select = quest_select,
    .bytes = quest_bytes,
};
