/* Private to index/: the method table every selector kind implements, and the per-(layer, KV
 * head) slot the set keeps for it. index.c owns the set, the slots' common part (candidate range,
 * the ring of observed prefill queries, counters) and the argument checks; each kind file
 * (sel_basic.c, sel_lists.c, sel_cent.c, sel_quest.c) owns its state and answers through its
 * table. */
#ifndef KVSEEK_SEL_IMPL_H
#define KVSEEK_SEL_IMPL_H

#include "index.h"
#include <string.h>

/* What index.c keeps per (layer, KV head), whatever the kind. */
typedef struct {
    int active;              /* the layer has a selector */
    int built;               /* idx_build (or idx_bind_cent) succeeded */
    int64_t lo, hi;          /* candidates */
    float *obs;              /* (obs_cap, d) ring of the latest observed prefill query rows */
    int64_t obs_cap, n_obs, n_seen;
    void *st;                /* the kind's state (ops->state_new), NULL until first needed */
    idx_stats st_counts;
} idx_slot;

struct idx_set {
    idx_params p;
    const struct idx_ops *ops;
    int *layer_mask;
    int observe_all;         /* keep prefill queries whatever the kind (a sequence to be forked) */
    idx_slot *slots;         /* (n_layer * n_head_kv) */
    char err[256];
};

typedef struct idx_ops {
    idx_kind kind;
    const char *name;        /* as idx_kind_parse reads it */
    unsigned caps;           /* IDX_CAP_* */
    int any_size;            /* builds at any candidate count: min_keys (below which a scan
                              * beats a search) does not apply to a structure cheaper than one */
    /* rows of observed queries the kind builds from (0: none) */
    int64_t (*obs_rows)(const idx_params *p);
    /* state of one slot: made on first build, cleared (structure gone, scratch kept) on
     * rebuild or reset, freed with the set. NULL state_new: the kind keeps none. */
    void *(*state_new)(const idx_params *p);
    void (*state_clear)(void *st);
    void (*state_free)(void *st);
    /* builds the structure over the slot's candidates [lo, hi) with the given query rows (or
     * the slot's ring when queries is NULL); NULL: the kind has none. Called only at or above
     * min_keys (any_size: above 0). On error the caller clears the state. */
    int (*build)(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                 const float *queries, int64_t n_queries);
    /* whether the slot's state holds a built structure (NULL: never) */
    int (*has_structure)(const void *st);
    /* indexes the keys [s->hi, hi) into the structure (s->hi still the old end); NULL: the
     * candidate range alone grows */
    int (*add)(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv, int64_t hi);
    int64_t (*max_ids)(const idx_set *ix, const idx_slot *s, int n_q, const idx_request *req);
    /* writes distinct ascending ids; *scanned: keys (or centroids) scored; *n_queries: query
     * vectors searched. Returns the count or a negative code (with idx_fail's message). */
    int64_t (*select)(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                      const float *q, int n_q, const idx_request *req, int32_t *ids, int64_t max_ids,
                      int64_t *scanned, int *n_queries);
    /* after select, for the same query rows: the estimate of the candidates not in ids[0..n)
     * (idx_select_est); NULL: the kind has none */
    int (*estimate)(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv, const float *q,
                    int n_q, const int32_t *ids, int64_t n, idx_estimate *est);
    size_t (*bytes)(const idx_set *ix, const void *st);
} idx_ops;

extern const idx_ops idx_ops_dense, idx_ops_window;      /* sel_basic.c */
extern const idx_ops idx_ops_oracle, idx_ops_retrieval, idx_ops_ivf; /* sel_lists.c */
extern const idx_ops idx_ops_centroids;                  /* sel_cent.c */
extern const idx_ops idx_ops_quest;                      /* sel_quest.c */
extern const idx_ops idx_ops_sparq;                      /* sel_sparq.c */

/* sel_cent.c, for idx_bind_cent and idx_get_cent: binds a slot's (fresh) centroids state to a
 * structure it does not own, read at a fixed threshold and level count; its structure. */
int idx_cent_bind_state(idx_set *ix, idx_slot *s, const idx_cent *c, float threshold, int levels);
const idx_cent *idx_cent_state_cent(const void *st);

/* Sets the set's message (guarded: slots build in parallel) and returns code. */
int idx_fail(idx_set *ix, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The GQA group's mean query (n_q rows of d) into out (d). */
void idx_mean_query(const float *q, int n_q, int d, float *out);
/* Whether kv holds the keys [lo, hi) of (layer, head). */
int idx_keys_held(const kv_store *kv, int layer, int head, int64_t lo, int64_t hi);
/* The slot's candidate keys as f32 rows (malloc'd: the caller frees), or NULL with *rc set and
 * the set's message. */
float *idx_gather_keys(idx_set *ix, const idx_slot *s, int layer, int head, const kv_store *kv, int *rc);
/* acc += w * the value row of position pos (the store's v_dim, f32 or f16); IDX_OK, or
 * IDX_ERR_KV with the set's message. */
int idx_value_add(idx_set *ix, const kv_store *kv, int layer, int head, int64_t pos, float w, float *acc);
/* A float as an unsigned integer in the same order (negative floats reversed, positive ones
 * above them), so that selections can work on its bits. */
static inline uint32_t idx_order_key(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}
/* The k-th largest of x[0..n) (1 <= k <= n), x reordered: the bucket of an 11-bit histogram, then quickselect in it. */
float idx_kth_largest(float *x, int64_t n, int64_t k);
/* The largest of x[0..n) (-inf when n = 0; NaNs passed over, as `x > m ? x : m` does). */
float idx_max(const float *x, int64_t n);
/* best[j] = the largest over the n_q rows of sc (n floats apart) of sc[g][j] minus row g's own
 * maximum: each key's best logit over a GQA group, each query's shifted by its own best (a key
 * one query attends strongly beats one every query attends weakly). */
void idx_group_best(const float *sc, int n_q, int64_t n, float *best);
/* rel = -inf for the n_q queries: nothing left out or nothing to estimate with. */
void idx_estimate_none(idx_estimate *est, int n_q);
/* Every candidate of the slot, in order: the dense answer (and a small slot's). */
int64_t idx_all_candidates(const idx_slot *s, int32_t *ids);

#endif
