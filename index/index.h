/* Selectors: for a query (or a GQA group's queries) at one layer and KV head, which offloaded
 * token ids matter? One idx_set per sequence, one selector state per (layer, KV head); every
 * kind answers through idx_select so they compare on the same work. */
#ifndef KVSEEK_INDEX_H
#define KVSEEK_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "kvcache.h"

/* The kinds:
 *   dense     all candidates (the exact baseline),
 *   window    none (only the static set is attended: StreamingLLM),
 *   oracle    exact top-k by q.k over all candidates (recall upper bound; scans everything),
 *   retrieval query-aware inverted lists: cells are k-means clusters of the latest prefill
 *             queries, a cell's list holds the exact top keys of its queries (FAISS brute
 *             force), every other key sits in the cell whose centroid scores it highest; a
 *             decode query probes its nearest cells and scores their keys exactly
 *             (RetrievalAttention's idea), plus a share of the budget on IVF lists over the
 *             keys (hybrid: see key_share),
 *   ivf       FAISS IndexIVFFlat on the keys with inner product (the plain ANN baseline):
 *             FAISS trains and fills it, its centroids and lists are copied out and probed by
 *             inner product like FAISS does, scoring keys from the KV store (no second copy).
 * Every probe scores keys exactly, so `scanned` (keys scored) is the cost measure and lists
 * may be read in part to hit a scan target exactly: comparisons run at equal keys scanned.
 * Candidates are the positions [lo, hi) given to idx_build and extended by idx_add; the engine
 * keeps them equal to the offloaded range of kv_ranges_of(). */
typedef enum { IDX_DENSE = 0, IDX_WINDOW, IDX_ORACLE, IDX_RETRIEVAL, IDX_IVF } idx_kind;

/* How a GQA group (several queries, one KV head) chooses: the union of each query's top_k
 * (up to n_q * top_k ids; every query keeps its own best keys), or the top_k of the group's
 * mean query (exactly top_k ids). */
typedef enum { IDX_GQA_UNION = 0, IDX_GQA_MEAN = 1 } idx_gqa;

enum {
    IDX_OK = 0,
    IDX_ERR_PARAM = -1,  /* invalid parameter or argument */
    IDX_ERR_NOMEM = -2,
    IDX_ERR_FAISS = -3,  /* FAISS failed; idx_last_error() has its message */
    IDX_ERR_KV = -4,     /* a key the index covers is not held by the store */
    IDX_ERR_STATE = -5,  /* not built yet */
};

typedef struct idx_set idx_set;

typedef struct {
    idx_kind kind;
    int n_layer, n_head_kv, head_dim; /* shape of the KV store it ranks */
    const int *layer_mask; /* (n_layer) or NULL: nonzero marks the layers that get a selector
                            * (global layers); others reject build/select. Copied. */
    int seed;              /* k-means and sampling seed */
    int min_keys;          /* retrieval / ivf: below this many candidates a slot scores all of
                            * them exactly (a scan is cheaper than a search); idx_add builds the
                            * structure when they reach it (idx_params_default: 1024; 0: build
                            * at any size) */
    /* retrieval */
    int max_queries;       /* prefill queries kept per (layer, head) for the build: the latest
                            * rows idx_observe saw (default 4096) */
    int n_cells;           /* query cells; 0: auto, kept queries / 32 clamped to [16, 1024] */
    int list_k;            /* exact top keys listed per kept query (default 128) */
    int kmeans_iter;       /* k-means iterations (default 10) */
    int nprobe;            /* cells (and IVF lists) probed per query when the request gives
                            * neither nprobe nor scan (default 8) */
    float key_share;       /* retrieval is a hybrid: this share of a request's scan target goes
                            * to IVF lists over the keys (as `ivf`), the rest to the query
                            * cells; it catches content matches no kept query anticipated.
                            * 0: query cells only (default 0.3, best of 0/0.3/0.5 on gemma-3) */
    /* ivf */
    int ivf_nlist;         /* 0: auto, keys / 39 clamped to [1, 4096] (FAISS's minimum of
                            * 39 training points per list, so it trains without a warning) */
} idx_params;

/* Per-request knobs (idx_request_default(): top_k 100, union, 2% scan). */
typedef struct {
    int top_k;             /* ids per query (union) or per group (mean); 0: from fraction */
    float fraction;        /* when top_k == 0: top_k = ceil(fraction * candidates) */
    idx_gqa gqa;
    int nprobe;            /* cells / lists probed (each part of a hybrid); 0: index default */
    float scan;            /* > 0: probe in order until this share of the candidates, and at
                            * least top_k keys, has been scored per query (overrides nprobe;
                            * the last query cell may be read in part: its list is ordered by
                            * importance). idx_request_default: 0.02 */
} idx_request;

/* Counters, summed over the (layer, head) slots and calls since creation or idx_stats_reset. */
typedef struct {
    int64_t selects;       /* idx_select calls */
    int64_t queries;       /* query vectors searched (group members, or one mean) */
    int64_t candidates;    /* candidate keys, summed over calls */
    int64_t scanned;       /* keys scored exactly (distinct within a call), summed */
    int64_t returned;      /* ids returned, summed */
    int64_t added;         /* keys added by idx_add */
    int64_t builds;
    double search_s;       /* seconds in idx_select */
    double build_s;        /* seconds in idx_build */
    double add_s;          /* seconds in idx_add */
    size_t bytes;          /* memory held by the index structures now */
} idx_stats;

idx_params idx_params_default(void);
idx_request idx_request_default(void);
const char *idx_kind_name(idx_kind k);
/* "dense", "window", "oracle", "retrieval", "ivf" -> IDX_OK and *out, else IDX_ERR_PARAM. */
int idx_kind_parse(const char *name, idx_kind *out);
const char *idx_strerror(int code);
const char *idx_last_error(const idx_set *ix); /* message of the last failure ("" if none) */

int idx_create(const idx_params *p, idx_set **out); /* IDX_OK and *out, or a code and NULL */
void idx_free(idx_set *ix);                         /* accepts NULL */
/* Forgets every slot's structure, candidates and kept queries (a sequence reset); scratch
 * buffers and counters stay. */
void idx_reset(idx_set *ix);

/* Offers prefill queries of (layer, head): n rows of head_dim floats, row r at q + r * stride
 * (the engine passes each chunk's rows of the group's query heads, in order). The latest
 * max_queries rows are kept (decode queries resemble the latest prefill queries most); only
 * retrieval keeps them (others return IDX_OK at once). Not thread-safe for one (layer, head). */
int idx_observe(idx_set *ix, int layer, int head, const float *q, int64_t n, int64_t stride);

/* Builds the selector of (layer, head) over the keys [lo, hi) of kv, replacing any earlier
 * one, with the observed queries (or, when queries != NULL, those n_queries rows of head_dim
 * floats instead). Retrieval and ivf read the keys as f32 copies into FAISS structures. */
int idx_build(idx_set *ix, int layer, int head, const kv_store *kv, int64_t lo, int64_t hi,
              const float *queries, int64_t n_queries);

/* Extends the candidates of (layer, head) to [lo, hi), indexing the new keys (tokens that left
 * the recent window). hi below the current end is an error. */
int idx_add(idx_set *ix, int layer, int head, const kv_store *kv, int64_t hi);

/* Candidate range of (layer, head); both 0 before the build. */
int idx_range(const idx_set *ix, int layer, int head, int64_t *lo, int64_t *hi);

/* Ids idx_select may return for this request: the capacity `ids` needs. */
int64_t idx_max_ids(const idx_set *ix, int layer, int head, int n_q, const idx_request *req);

/* Selects among the candidates for the n_q queries q[g * head_dim] sharing (layer, head).
 * Writes distinct ascending positions to ids (capacity max_ids, at least idx_max_ids()) and
 * returns their count, or a negative code. dense returns every candidate, window none.
 * Reuses per-(layer, head) scratch: calls for different (layer, head) may run concurrently,
 * calls for the same one may not. */
int64_t idx_select(idx_set *ix, int layer, int head, const kv_store *kv, const float *q, int n_q,
                   const idx_request *req, int32_t *ids, int64_t max_ids);

void idx_stats_get(const idx_set *ix, idx_stats *out);
void idx_stats_reset(idx_set *ix);

#endif
