/* The `centroids` selector (Squeezed Attention): per slot an idx_cent (centroids.c) over the
 * candidates, built from the observed queries of the last prefill tokens, or borrowed from a
 * registered context (idx_bind_cent) and read at the context's calibrated threshold. Keys added
 * after the build form an exact tail that every select returns in full. */
#include "sel_impl.h"

#include <stdlib.h>

#define CENT_TARGET_DEFAULT 0.03f /* idx_request.target 0: share of the clustered keys read */

typedef struct {
    idx_cent *cent;          /* owned (built here) ... */
    const idx_cent *shared;  /* ... or borrowed (bound); at most one is set */
    float bound_thr;         /* bound: the threshold, and the levels to score */
    int bound_levels;
    int64_t cent_hi;         /* the clustered keys are [lo, cent_hi); [cent_hi, hi) the tail */
    void *scratch;           /* idx_cent_scratch_bytes of the structure */
    float *qmean;            /* (d) */
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
    c->cent = NULL;
    c->shared = NULL;
    c->scratch = NULL;
    c->cent_hi = 0;
}

static void cent_free(void *st) {
    if (!st) return;
    cent_clear(st);
    free(((cent_st *)st)->qmean);
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
    if (req->mass > 0)
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

static size_t cent_bytes(const idx_set *ix, const void *st) {
    const cent_st *c = st;
    const idx_cent *ce = structure(c);
    if (!ce) return sizeof *c;
    /* a borrowed structure is the context's memory, not the sequence's */
    return sizeof *c + (c->cent ? idx_cent_blob_size(c->cent) : 0) + idx_cent_scratch_bytes(ce, ix->p.group_size);
}

const idx_ops idx_ops_centroids = {
    .kind = IDX_CENTROIDS,
    .name = "centroids",
    .caps = IDX_CAP_OBSERVE | IDX_CAP_BIND | IDX_CAP_SHARED,
    .obs_rows = cent_obs_rows,
    .state_new = cent_new,
    .state_clear = cent_clear,
    .state_free = cent_free,
    .build = cent_build,
    .has_structure = cent_has_structure,
    .max_ids = cent_max_ids,
    .select = cent_select,
    .bytes = cent_bytes,
};
