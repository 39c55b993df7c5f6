/* The `centroids` selector (Squeezed Attention): per slot an idx_cent (centroids.c) over the
 * candidates, built from the observed queries of the last prefill tokens, or borrowed from a
 * registered context (idx_bind_cent) and read at the context's calibrated threshold. Keys added
 * after the build form an exact tail that every select returns in full. Its estimate of the
 * clusters a select leaves (idx_select_est) is RetroInfer's estimation zone: each weighs
 * n_j exp(s q.c_j) and brings its members' mean value. */
#include "sel_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_sparse.h"

#define CENT_TARGET_DEFAULT 0.03f /* idx_request.target 0: share of the clustered keys read */

typedef struct {
    idx_cent *cent;          /* owned (built here) ... */
    const idx_cent *shared;  /* ... or borrowed (bound); at most one is set */
    float bound_thr;         /* bound: the threshold, and the levels to score */
    int bound_levels;
    int64_t cent_hi;         /* the clustered keys are [lo, cent_hi); [cent_hi, hi) the tail */
    void *scratch;           /* idx_cent_scratch_bytes of the structure */
    float *qmean;            /* (d) */
    /* estimate, made at the slot's first one: */
    float *cv;               /* (n_fine, vd) each cluster's mean value */
    int32_t *cluster_of;     /* (n_keys) the fine cluster of each clustered key */
    float *x;                /* (n_fine) scratch: a query's scaled centroid logits */
    int32_t *mark;           /* (n_fine) scratch: the cluster's returned keys ... */
    float *dv;               /* (n_fine, vd) ... and minus their values' sum */
    int vd;
    /* refine: the candidates' exact scores */
    float *sc;               /* (n_q, sc_cap) */
    float *best;             /* (sc_cap) twice: a key's best over the group, and a copy */
    int64_t sc_cap;
    int sc_nq;
} cent_st;

static const idx_cent *structure(const cent_st *c) { return c->cent ? c->cent : c->shared; }

static int64_t cent_obs_rows(const idx_params *p) { return (int64_t)p->obs_tokens * p->group_size; }

static void *cent_new(const idx_params *p) {
    cent_st *c = calloc(1, sizeof *c);
    if (c && !(c->qmean = malloc(sizeof(float) * p->head_dim))) {
        free(c);
        return NULL;
    }
    return c;
}

static void cent_clear(void *st) {
    cent_st *c = st;
    idx_cent_free(c->cent);
    free(c->scratch);
    free(c->cv); free(c->cluster_of); free(c->x); free(c->mark); free(c->dv);
    c->cv = c->x = NULL;
    c->cluster_of = NULL;
    c->mark = NULL;
    c->dv = NULL;
    c->cent = NULL;
    c->shared = NULL;
    c->scratch = NULL;
    c->cent_hi = 0;
}

static void cent_free(void *st) {
    if (!st) return;
    cent_clear(st);
    free(((cent_st *)st)->qmean);
    free(((cent_st *)st)->sc);
    free(((cent_st *)st)->best);
    free(st);
}

static int make_scratch(idx_set *ix, cent_st *c) {
    c->scratch = malloc(idx_cent_scratch_bytes(structure(c), ix->p.group_size));
    return c->scratch ? IDX_OK : idx_fail(ix, IDX_ERR_NOMEM, "out of memory for centroid scratch");
}

/* Clusters the slot's keys, calibrated on the given queries or the observation ring (whole
 * groups of group_size rows, in any order: a group is one token's query heads). With no query
 * seen at all the latest keys stand in for them, a poor proxy (keys and queries are out of
 * distribution): the engine should observe. */
static int cent_build(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                      const float *queries, int64_t n_queries) {
    cent_st *c = s->st;
    const int d = ix->p.head_dim;
    const int64_t nk = s->hi - s->lo;
    int rc = IDX_OK;
    float *K = idx_gather_keys(ix, s, layer, head, kv, &rc);
    if (!K) return rc;
    idx_cent_params cp = ix->p.cent;
    const float *obs = queries ? queries : s->obs;
    int64_t n_obs = queries ? n_queries : s->n_obs;
    n_obs -= n_obs % cp.group;
    if (n_obs <= 0) {
        cp.group = 1;
        n_obs = nk < ix->p.obs_tokens ? nk : ix->p.obs_tokens;
        obs = K + (size_t)(nk - n_obs) * d;
    }
    char err[200];
    rc = idx_cent_build(&cp, K, nk, d, s->lo, obs, n_obs, ix->p.attn_scale, &c->cent, err, sizeof err);
    if (rc) {
        rc = idx_fail(ix, rc, "centroids of layer %d head %d: %s", layer, head, err);
        goto done;
    }
    c->cent_hi = s->hi;
    rc = make_scratch(ix, c);
done:
    free(K);
    return rc;
}

int idx_cent_bind_state(idx_set *ix, idx_slot *s, const idx_cent *ce, float threshold, int levels) {
    cent_st *c = s->st;
    c->shared = ce;
    c->bound_thr = threshold;
    c->bound_levels = levels;
    c->cent_hi = idx_cent_pos0(ce) + idx_cent_n_keys(ce);
    return make_scratch(ix, c);
}

const idx_cent *idx_cent_state_cent(const void *st) { return ((const cent_st *)st)->cent; }

static int cent_has_structure(const void *st) { return structure(st) != NULL; }

static int64_t cent_max_ids(const idx_set *ix, const idx_slot *s, int n_q, const idx_request *req) {
    return s->hi - s->lo;
}

/* Scratch for the exact scores of n keys by n_q queries: IDX_OK or IDX_ERR_NOMEM. */
static int ensure_scores(idx_set *ix, cent_st *c, int64_t n, int n_q) {
    if (n <= c->sc_cap && n_q <= c->sc_nq) return IDX_OK;
    const int64_t cap = n > c->sc_cap ? n * 2 : c->sc_cap;
    const int nq = n_q > c->sc_nq ? n_q : c->sc_nq;
    float *sc = realloc(c->sc, sizeof(float) * (size_t)nq * cap);
    if (sc) c->sc = sc;
    float *b = sc ? realloc(c->best, sizeof(float) * 2 * cap) : NULL;
    if (b) c->best = b;
    if (!sc || !b) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for centroid scores");
    c->sc_cap = cap;
    c->sc_nq = nq;
    return IDX_OK;
}

/* Keeps the k of the n ascending candidate ids whose exact logit, the best over the group's
 * queries each shifted by its maximum, ranks highest (ties at the threshold fill up to k),
 * ascending, in place. The new count, or a code. */
static int64_t refine_ids(idx_set *ix, cent_st *c, int layer, int head, const kv_store *kv, const float *q, int n_q,
                          int32_t *ids, int64_t n, int64_t k) {
    if (k >= n) return n;
    if (ensure_scores(ix, c, n, n_q)) return IDX_ERR_NOMEM;
    attn_kv_view view;
    kv_view(kv, layer, head, &view);
    attn_scores_group_ids(&view, q, n_q, ids, n, c->sc, n);
    float *best = c->best, *tmp = c->best + c->sc_cap;
    idx_group_best(c->sc, n_q, n, best);
    memcpy(tmp, best, sizeof(float) * n);
    const float thr = idx_kth_largest(tmp, n, k);
    int64_t above = 0;
    for (int64_t j = 0; j < n; j++) above += best[j] > thr;
    int64_t o = 0, ties = k - above;
    for (int64_t j = 0; j < n && o < k; j++)
        if (best[j] > thr || (best[j] == thr && ties-- > 0)) ids[o++] = ids[j];
    return o;
}

static int64_t cent_select(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                           const float *q, int n_q, const idx_request *req, int32_t *ids,
                           int64_t max_ids, int64_t *scanned, int *n_queries) {
    cent_st *c = s->st;
    const idx_cent *ce = c ? structure(c) : NULL;
    if (!ce) /* below min_keys: every candidate */
        return *scanned = idx_all_candidates(s, ids);
    if (req->gqa == IDX_GQA_MEAN && n_q > 1) {
        idx_mean_query(q, n_q, ix->p.head_dim, c->qmean);
        q = c->qmean;
        n_q = 1;
    }
    *n_queries = n_q;
    idx_cent_sel cs;
    int64_t n;
    const int refine = req->refine > 1 && !(req->mass > 0);
    if (refine) { /* candidates: the clusters for refine x the share */
        const float share = req->target > 0 ? req->target : CENT_TARGET_DEFAULT;
        const float wide = share * req->refine < 1 ? share * req->refine : 1;
        n = idx_cent_select(ce, q, n_q, idx_cent_threshold(ce, wide), c->scratch, ids, max_ids, &cs);
        if (n > 0) {
            const int64_t k = (int64_t)ceil((double)share * (double)idx_cent_n_keys(ce));
            const int64_t nr = refine_ids(ix, c, layer, head, kv, q, n_q, ids, n, k < 1 ? 1 : k);
            if (nr < 0) return nr;
            cs.clusters_scored += n * n_q; /* keys scored, each the work of a centroid score */
            n = nr;
        }
    } else if (req->mass > 0)
        n = idx_cent_select_mass(ce, q, n_q, req->mass, req->gqa == IDX_GQA_MEAN ? NULL : req->static_lse, c->scratch,
                                 ids, max_ids, &cs);
    else if (c->shared)
        n = idx_cent_select_levels(ce, q, n_q, c->bound_thr, c->bound_levels, c->scratch, ids, max_ids, &cs);
    else
        n = idx_cent_select(ce, q, n_q, idx_cent_threshold(ce, req->target > 0 ? req->target : CENT_TARGET_DEFAULT),
                            c->scratch, ids, max_ids, &cs);
    if (n < 0) return idx_fail(ix, (int)n, "centroid select: non-finite query (layer %d head %d)", layer, head);
    *scanned = cs.clusters_scored;
    for (int64_t pos = c->cent_hi; pos < s->hi; pos++) ids[n++] = (int32_t)pos; /* the exact tail */
    return n;
}

/* The clusters' mean values and each key's cluster, from the store: IDX_OK or a code. */
static int est_prepare(idx_set *ix, cent_st *c, int layer, int head, const kv_store *kv) {
    const idx_cent *ce = structure(c);
    const int nf = idx_cent_n_fine(ce), vd = kv_get_params(kv)->v_dim;
    const int64_t nk = idx_cent_n_keys(ce), pos0 = idx_cent_pos0(ce);
    c->cv = calloc((size_t)nf * vd, sizeof(float));
    c->cluster_of = malloc(sizeof(int32_t) * (nk > 0 ? nk : 1));
    c->x = malloc(sizeof(float) * nf);
    c->mark = calloc(nf, sizeof(int32_t));
    c->dv = malloc(sizeof(float) * (size_t)nf * vd);
    if (!c->cv || !c->cluster_of || !c->x || !c->mark || !c->dv) {
        free(c->cv); free(c->cluster_of); free(c->x); free(c->mark); free(c->dv);
        c->cv = c->x = NULL;
        c->cluster_of = NULL;
        c->mark = NULL;
        c->dv = NULL;
        return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for the centroid estimate");
    }
    c->vd = vd;
    for (int j = 0; j < nf; j++) {
        int64_t nm;
        const int32_t *mem = idx_cent_members(ce, j, &nm);
        float *acc = c->cv + (size_t)j * vd;
        for (int64_t i = 0; i < nm; i++) {
            c->cluster_of[mem[i]] = j;
            const int rc = idx_value_add(ix, kv, layer, head, pos0 + mem[i], 1.0f / (float)nm, acc);
            if (rc) { /* leave no half-made estimate behind */
                free(c->cv); free(c->cluster_of); free(c->x); free(c->mark); free(c->dv);
                c->cv = c->x = NULL;
                c->cluster_of = NULL;
                c->mark = NULL;
        c->dv = NULL;
                return rc;
            }
        }
    }
    return IDX_OK;
}

static int cent_estimate(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv, const float *q,
                         int n_q, const int32_t *ids, int64_t n, idx_estimate *est) {
    cent_st *c = s->st;
    const idx_cent *ce = c ? structure(c) : NULL;
    if (!ce) return IDX_OK; /* below min_keys: everything was returned */
    if (!c->cv) {
        const int rc = est_prepare(ix, c, layer, head, kv);
        if (rc) return rc;
    }
    const int d = ix->p.head_dim, vd = c->vd, nf = idx_cent_n_fine(ce);
    const int64_t pos0 = idx_cent_pos0(ce);
    const float scale = ix->p.attn_scale > 0 ? ix->p.attn_scale : 1.0f / sqrtf((float)d);
    /* the returned keys: exact logits (the attention reads them anyway), and what they take
     * out of their clusters (a refined select returns part of a cluster) */
    if (ensure_scores(ix, c, n, n_q)) return IDX_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++)
        if (!kv_k_row(kv, layer, head, ids[i]))
            return idx_fail(ix, IDX_ERR_KV, "key %d of layer %d head %d is not held", ids[i], layer, head);
    attn_kv_view view;
    kv_view(kv, layer, head, &view);
    attn_scores_group_ids(&view, q, n_q, ids, n, c->sc, n);
    for (int64_t i = 0; i < n && ids[i] < c->cent_hi; i++) { /* clustered ids, ascending: the tail follows */
        const int j = c->cluster_of[ids[i] - pos0];
        if (c->mark[j]++ == 0) memset(c->dv + (size_t)j * vd, 0, sizeof(float) * vd);
        const int rc = idx_value_add(ix, kv, layer, head, ids[i], -1.0f, c->dv + (size_t)j * vd);
        if (rc) {
            memset(c->mark, 0, sizeof(int32_t) * nf);
            return rc;
        }
    }
    for (int g = 0; g < n_q; g++) {
        const float *qq = q + (size_t)g * d, *sg = c->sc + (size_t)g * n;
        float m = -INFINITY;
        for (int j = 0; j < nf; j++) {
            const float *cj = idx_cent_centroid(ce, j);
            float a = 0;
            for (int i = 0; i < d; i++) a += qq[i] * cj[i];
            c->x[j] = a * scale;
            m = c->x[j] > m ? c->x[j] : m;
        }
        for (int64_t i = 0; i < n; i++) m = sg[i] * scale > m ? sg[i] * scale : m;
        double w_sel = 0, w_rest = 0;
        for (int64_t i = 0; i < n; i++) w_sel += exp((double)sg[i] * scale - m);
        float *v = est->v + (size_t)g * vd;
        memset(v, 0, sizeof(float) * vd);
        for (int j = 0; j < nf; j++) {
            int64_t nm;
            idx_cent_members(ce, j, &nm);
            const int64_t left = nm - c->mark[j];
            if (left <= 0) continue;
            /* the left-out members weigh their centroid's logit each (Jensen: an underestimate
             * for a spread cluster), with the mean value of the members left */
            const double w = (double)left * exp((double)c->x[j] - m);
            w_rest += w;
            const float *cv = c->cv + (size_t)j * vd, *dv = c->dv + (size_t)j * vd;
            const float f = (float)(w / (double)left);
            if (c->mark[j])
                for (int i = 0; i < vd; i++) v[i] += f * ((float)nm * cv[i] + dv[i]);
            else
                for (int i = 0; i < vd; i++) v[i] += (float)w * cv[i];
        }
        if (w_rest > 0 && w_sel > 0) {
            const float inv = (float)(1.0 / w_rest);
            for (int i = 0; i < vd; i++) v[i] *= inv;
            est->rel[g] = (float)log(w_rest / w_sel);
        }
    }
    memset(c->mark, 0, sizeof(int32_t) * nf);
    return IDX_OK;
}

static size_t cent_bytes(const idx_set *ix, const void *st) {
    const cent_st *c = st;
    const idx_cent *ce = structure(c);
    if (!ce) return sizeof *c;
    /* a borrowed structure is the context's memory, not the sequence's */
    return sizeof *c + (c->cent ? idx_cent_blob_size(c->cent) : 0) + idx_cent_scratch_bytes(ce, ix->p.group_size) +
           (size_t)c->sc_cap * ((size_t)c->sc_nq + 2) * sizeof(float) +
           (c->cv ? (size_t)idx_cent_n_fine(ce) * (2 * (size_t)c->vd * sizeof(float) + 2 * sizeof(float)) +
                        (size_t)idx_cent_n_keys(ce) * sizeof(int32_t)
                  : 0);
}

const idx_ops idx_ops_centroids = {
    .kind = IDX_CENTROIDS,
    .name = "centroids",
    .caps = IDX_CAP_OBSERVE | IDX_CAP_BIND | IDX_CAP_SHARED | IDX_CAP_ESTIMATE,
    .obs_rows = cent_obs_rows,
    .state_new = cent_new,
    .state_clear = cent_clear,
    .state_free = cent_free,
    .build = cent_build,
    .has_structure = cent_has_structure,
    .max_ids = cent_max_ids,
    .select = cent_select,
    .estimate = cent_estimate,
    .bytes = cent_bytes,
};
