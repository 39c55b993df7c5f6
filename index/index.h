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
 *             keys (hybrid: see key_share). A group's share is ranked first from an int8 copy
 *             of the keys (a quarter of the bytes, kept with the lists) and only the best 2x
 *             its budget are scored from the KV store,
 *   ivf       FAISS IndexIVFFlat on the keys with inner product (the plain ANN baseline):
 *             FAISS trains and fills it, its centroids and lists are copied out and probed by
 *             inner product like FAISS does, scoring keys from the KV store (no second f32
 *             copy; a group share ranks from int8 first, as retrieval).
 *   centroids Squeezed Attention: the keys clustered once (cosine k-means, one or two levels,
 *             an idx_cent below); a query keeps every cluster whose estimated per-key attention
 *             probability exceeds a threshold calibrated on the latest observed queries for
 *             the request's `target` share of keys, and reads all their members. Keys added
 *             after the build (idx_add) form an exact tail that every select returns.
 *   quest     Quest (Tang et al., 2024): the candidates in pages of quest_page keys, each page
 *             summarised by the element-wise min and max of its keys; a query reads in full the
 *             pages whose upper bound sum_d max(q_d min_d, q_d max_d) >= q.k ranks highest, as
 *             many as cover the request's `target` share of the candidates (0.02 when unset).
 *             Built in one pass over the keys at any size (min_keys does not apply); idx_add
 *             widens the last page and opens new ones.
 *   sparq     SparQ (Ribar et al., 2024): every candidate scored approximately from the r
 *             components of the query with the largest magnitude (a channel-major f16 copy of
 *             the keys: r/d of a scan's bytes), the request's `target` share with the highest
 *             approximate probability (0.02 when unset; the best over a GQA group's queries)
 *             read exactly. Builds in one pass at any size; nothing learnt from queries.
 * Every probe of oracle / retrieval / ivf scores keys exactly (retrieval and ivf rank a
 * group share's keys from int8 first, then score the best exactly), so `scanned` (keys scored) is
 * the cost measure and lists may be read in part to hit a scan target exactly: comparisons run
 * at equal keys scanned. centroids scores no key: its `scanned` counts centroid scores (one
 * query . centroid product each, the same work as scoring one key); quest counts 2 per page
 * bound (a min and a max row).
 * Candidates are the positions [lo, hi) given to idx_build and extended by idx_add; the engine
 * keeps them equal to the offloaded range of kv_ranges_of(). */
typedef enum { IDX_DENSE = 0, IDX_WINDOW, IDX_ORACLE, IDX_RETRIEVAL, IDX_IVF, IDX_CENTROIDS, IDX_QUEST,
              IDX_SPARQ, IDX_KIND_COUNT /* not a kind: the number of them */ } idx_kind;

/* What a kind can do, so that callers decide by capability, never by kind (each kind is a method
 * table in sel_impl.h; a new kind adds a table and its flags). */
enum {
    IDX_CAP_ALL = 1u << 0,     /* selects every candidate: attend the offloaded range densely */
    IDX_CAP_NONE = 1u << 1,    /* selects nothing: only the static set is attended (no query
                                * needs to reach the selector) */
    IDX_CAP_OBSERVE = 1u << 2, /* builds from prefill queries: feed it idx_observe */
    IDX_CAP_BIND = 1u << 3,    /* can read a prebuilt centroid structure (idx_bind_cent) */
    IDX_CAP_SHARED = 1u << 4,  /* works on shared read-only pages (a registered context, a fork) */
    IDX_CAP_DEVICE = 1u << 5,  /* selects on the GPU (no kind yet) */
    IDX_CAP_ESTIMATE = 1u << 6, /* estimates what it leaves out (idx_select_est) */
};
unsigned idx_kind_caps(idx_kind k);

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

/* ---- centroids: Squeezed Attention's clustered keys of one (layer, KV head) ----------------
 * Built once from a fixed context's keys and the queries of its last tokens; immutable after,
 * so one structure serves any number of sequences sharing the context, concurrently (selection
 * takes caller scratch and a const structure), and it is one flat, position-independent byte
 * image (the blob) that can be written to disk and used in place from an mmapped file.
 *
 * Fine level: cosine k-means (FAISS, spherical) over the L2-normalised keys, about fine_frac * n
 * clusters; each key belongs to the cluster its normalised vector is assigned to; each centroid
 * is stored as the mean of its members' RAW keys (their attention logits are what it estimates);
 * empty clusters are dropped. Optional coarse level: cosine k-means over the fine centroids,
 * about coarse_frac * n clusters, coarse centroid = mean of the raw keys under it.
 *
 * Score of a cluster for a query q (scale s, m the largest logit scored):
 *     S_j = exp(s q.c_j - m) / sum_i n_i exp(s q.c_i - m)
 * the estimated attention probability of ONE member key (size-weighted softmax, stable for any
 * |q|). A query keeps cluster j when S_j > threshold; a GQA group keeps the union of its
 * queries' clusters. Two levels: the coarse centroids are scored the same way (n = keys under
 * them) against a coarse threshold derived from the fine one (calibrated at build so that on the
 * observation queries >= 99% of the keys the one-level rule takes survive the coarse pass); a
 * coarse cluster survives when any query of the group keeps it, and only the fine centroids
 * under survivors are scored. Their exact terms plus the pruned coarse clusters' own terms make
 * the denominator; the latter underestimate their children's (Jensen), so they are scaled by a
 * factor measured on the observation queries at each threshold. The result is close to, not
 * exactly, a subset of the one-level selection (gemma-3 270M decode queries: <= 0.5% of the
 * keys outside it, 93-99.6% of it covered; test_centroids states its bounds).
 *
 * Calibration: at build, the mean fraction of keys a group of observation queries selects, on a
 * fixed grid of IDX_CENT_GRID thresholds (idx_cent_curve); idx_cent_threshold inverts it for a
 * target fraction (log-linear between grid points). */
typedef struct idx_cent idx_cent;

typedef struct {
    float fine_frac;   /* fine clusters per key (default 0.05; at least 1, at most n clusters) */
    float coarse_frac; /* coarse clusters per key (published: 0.01); 0, or not fewer than the
                        * fine clusters: one level. Default 0: on gemma-3 270M's global layers at
                        * 16K and 32K tokens the coarse pass, calibrated to keep 99% of what one
                        * level selects for a GQA group, still scored 70-100% of the fine
                        * centroids and the call took longer (synthetic clustered keys: half
                        * the work at 16K, a third at 64K) */
    int kmeans_iter;   /* k-means iterations per level (default 10; build time is linear in
                        * it: 0.35 s at 16K x 256 keys on 2 cores. On gemma-3 270M keys and on
                        * the synthetic set of tests/test_centroids.c, 5, 10 and 20 iterations
                        * gave the same recall within 0.01) */
    int seed;          /* k-means seed (default 1234) */
    int group;         /* query heads per KV head: observation rows come token-major in groups
                        * of this many and the curve measures what a group's union reads, as
                        * idx_cent_select does with n_q = group (default 1) */
} idx_cent_params;

enum { IDX_CENT_GRID = 97 }; /* thresholds 10^-12 .. 1, 8 per decade */

idx_cent_params idx_cent_params_default(void);

/* Clusters n keys (rows of dim floats; key i is the token at position pos0 + i) and calibrates
 * on n_obs observation rows (dim floats each: the queries of the last ~100 tokens of the
 * context, every query head of the GQA group as its own row, token-major in groups of
 * p->group; n_obs a positive multiple of it). scale: the attention scale (1/sqrt(dim) or the
 * model's). p NULL: defaults. Copies what it keeps: keys and obs may be freed after.
 * Returns IDX_OK and *out (free with idx_cent_free), or IDX_ERR_PARAM (bad shape, non-finite
 * input, positions past INT32_MAX), IDX_ERR_NOMEM or IDX_ERR_FAISS, *out = NULL and a message
 * in err (errlen bytes; err may be NULL). Uses the OpenMP threads through FAISS and BLAS. */
int idx_cent_build(const idx_cent_params *p, const float *keys, int64_t n, int dim, int64_t pos0,
                   const float *obs, int64_t n_obs, float scale, idx_cent **out, char *err,
                   size_t errlen);
/* Frees the structure (and the blob it built); a structure from idx_cent_from_blob leaves the
 * caller's blob alone. Accepts NULL. */
void idx_cent_free(idx_cent *c);

int64_t idx_cent_n_keys(const idx_cent *c);
int64_t idx_cent_pos0(const idx_cent *c);   /* position of key 0 */
int idx_cent_dim(const idx_cent *c);
int idx_cent_n_fine(const idx_cent *c);
int idx_cent_n_coarse(const idx_cent *c);   /* 0: one level */
/* Members of fine cluster j (< n_fine): *n key indices i (the token at pos0 + i), ascending,
 * valid as long as c. NULL and *n = 0 for j out of range. */
const int32_t *idx_cent_members(const idx_cent *c, int j, int64_t *n);
const float *idx_cent_centroid(const idx_cent *c, int j); /* (dim) mean of its raw keys; NULL
                                                          * out of range */

/* Calibration. The grid: idx_cent_grid(i) = 10^((i - (IDX_CENT_GRID - 1)) / 8), i < GRID. */
float idx_cent_grid(int i);
/* frac[i] (IDX_CENT_GRID floats, non-increasing in i) = mean over the observation tokens of the
 * share of keys a group's one-level selection takes at threshold idx_cent_grid(i). A caller
 * wanting ONE global threshold over many heads averages these curves weighted by
 * idx_cent_n_keys and inverts the mean with idx_cent_curve_invert. */
void idx_cent_curve(const idx_cent *c, float *frac);
/* The threshold at which a curve reads `target` of the keys, log-linear between grid points:
 * target >= 1, or above what the lowest grid threshold reads, gives 0 (keep everything);
 * target <= 0 gives 1 (keeps nothing: S_j <= 1). */
float idx_cent_curve_invert(const float *frac, float target);
/* This head's own threshold for target: idx_cent_curve_invert of its curve. */
float idx_cent_threshold(const idx_cent *c, float target);

/* Selection. Reentrant: the structure is read-only and every buffer is the caller's scratch,
 * so any number of threads may select on one structure at once; allocates nothing and uses no
 * threads of its own (callers run selects in parallel). */
typedef struct {
    int64_t clusters_scored; /* (query, centroid) products computed, coarse and fine */
    int64_t keys_selected;   /* ids written */
} idx_cent_sel;
/* Bytes of scratch idx_cent_select needs (the same for any n_q: queries go in chunks of 8). */
size_t idx_cent_scratch_bytes(const idx_cent *c, int n_q);
/* For the n_q queries q[g * dim] of one GQA group: keeps a cluster when any query's S_j >
 * threshold (threshold <= 0 keeps every cluster) and writes its members, distinct and
 * ascending, to ids (capacity max_ids >= idx_cent_n_keys). scratch: idx_cent_scratch_bytes
 * bytes, any alignment. Returns the count, or IDX_ERR_PARAM (bad arguments, a non-finite
 * query or score). st may be NULL. */
int64_t idx_cent_select(const idx_cent *c, const float *q, int n_q, float threshold,
                        void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st);
/* The same with the levels chosen per call: 1 scores every fine centroid even when a coarse
 * level exists (for comparing one and two levels on one structure); 0 or 2: all it has. */
int64_t idx_cent_select_levels(const idx_cent *c, const float *q, int n_q, float threshold, int levels,
                               void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st);
/* Adaptive budget: each query keeps the fewest highest-scoring clusters that bring its estimated
 * attention mass to `mass` (0 < mass <= 1; 1 keeps everything) of the whole: the clustered keys'
 * estimated mass (sum n_j e^{x_j}, x_j its scaled logit against centroid j) plus, when
 * static_lse is not NULL, the mass e^{static_lse[g]} of the keys attended anyway (sinks, window).
 * A query whose static set already holds `mass` keeps nothing; a flat attention reads many keys,
 * a peaked one few, where a threshold calibrated for a share reads about the same share for
 * both. One level; the GQA union as above. Centroid logits understate a spread cluster's mass
 * (Jensen), so the realised recall is somewhat below `mass`. */
int64_t idx_cent_select_mass(const idx_cent *c, const float *q, int n_q, float mass, const float *static_lse,
                             void *scratch, int32_t *ids, int64_t max_ids, idx_cent_sel *st);

/* Serialisation: one blob of idx_cent_blob_size bytes (little-endian, 8-byte aligned sections,
 * zero padding), a pure function of the structure: writing a loaded blob gives the same bytes.
 * idx_cent_from_blob validates every field (header, counts, offsets monotone and in range,
 * members in range with every key exactly once, finite floats, monotone curves, sizes) and
 * returns a structure pointing INTO the blob (no copy): blob must be 8-byte aligned and
 * outlive the structure. A corrupt or hostile blob gives IDX_ERR_PARAM and a message, never an
 * out-of-bounds read. */
size_t idx_cent_blob_size(const idx_cent *c);
int idx_cent_blob_write(const idx_cent *c, void *dst); /* dst: idx_cent_blob_size bytes */
int idx_cent_from_blob(const void *blob, size_t len, idx_cent **out, char *err, size_t errlen);

/* ---- idx_set: selectors of one sequence -------------------------------------------------- */

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
    int first_stage;       /* a group share ranks its union from an int8 copy of the keys and
                            * scores the best 2x its budget exactly (default 1); 0 keeps no copy
                            * and scores the whole union exactly: the same ids, the reference
                            * the first stage is tested against */
    /* ivf */
    int ivf_nlist;         /* 0: auto, keys / 39 clamped to [1, 4096] (FAISS's minimum of
                            * 39 training points per list, so it trains without a warning) */
    /* centroids */
    idx_cent_params cent;  /* clustering (idx_cent_params_default(); its seed is replaced by
                            * `seed` above and its group by group_size) */
    int group_size;        /* query heads per KV head: idx_observe rows arrive token-major in
                            * groups of this many; calibration measures what a group reads
                            * (0: 1) */
    int obs_tokens;        /* observation window: the latest obs_tokens * group_size rows
                            * idx_observe saw (default 100) */
    float attn_scale;      /* the model's attention scale; 0: 1/sqrt(head_dim) */
    /* quest */
    int sparq_r;           /* sparq: query components used to score (0: head_dim / 4) */
    int quest_page;        /* keys per page, each summarised by its min and max (default 16,
                            * the paper's; 0: 16). Smaller pages bound tighter but cost more
                            * to score: n_pages x head_dim per query */
} idx_params;

/* Per-request knobs (idx_request_default(): top_k 100, union, 2% scan). */
typedef struct {
    int top_k;             /* ids per query (union) or per group (mean); 0: from fraction;
                            * retrieval, ivf, oracle with top_k, fraction and target all 0:
                            * target 0.02 (the engine's default) */
    float fraction;        /* when top_k == 0: top_k = ceil(fraction * candidates) */
    idx_gqa gqa;
    int nprobe;            /* cells / lists probed (each part of a hybrid); 0: index default */
    float scan;            /* > 0: probe in order until this share of the candidates, and at
                            * least top_k keys, has been scored per query (overrides nprobe;
                            * the last query cell may be read in part: its list is ordered by
                            * importance). idx_request_default: 0.02 */
    float refine;          /* centroids: > 1 keeps the clusters for refine * target, scores their
                            * keys exactly and returns the target share of the clustered keys
                            * with the best logits (the best over the group, each query's shifted
                            * by its maximum): the centroids pick candidates, the keys decide.
                            * A context's bound structure too (through its own curve, for
                            * refine * target). 0 or 1: off */
    float mass;            /* centroids: > 0 replaces target by the adaptive rule of
                            * idx_cent_select_mass (the estimated attention share to cover) */
    const float *static_lse; /* with mass: per query of the group, the log-sum-exp of its scaled
                            * logits over the keys attended besides the selection (NULL: none) */
    float target;          /* retrieval, ivf, oracle: > 0 returns exactly ceil(target *
                            * candidates) ids for the group, the scanned keys with the best
                            * logit over its queries (each shifted by its maximum), in place of
                            * top_k per query; each query then scores at least 4x that many
                            * keys (scan may ask for more).
                            * quest: share of the candidates to read, in whole pages (0:
                            * 0.02; at least top_k keys, or ceil(fraction * candidates) when
                            * top_k is 0); GQA union: per query, so the union may read up to
                            * n_q times that.
                            * centroids: share of the clustered keys to read, through the
                            * slot's calibrated threshold (0: 0.03); keys added after the
                            * build are read in full on top. gemma-3 270M, 15.6K-token prompt,
                            * 48 decode steps, attention-mass recall (static set included):
                            * 0.01 -> 0.78 (reads 1.1%), 0.03 -> 0.82 (2.9%), 0.05 -> 0.84
                            * (4.6%), 0.1 -> 0.91 (8.2%) */
} idx_request;

/* Counters, summed over the (layer, head) slots and calls since creation or idx_stats_reset. */
typedef struct {
    int64_t selects;       /* idx_select calls */
    int64_t queries;       /* query vectors searched (group members, or one mean) */
    int64_t candidates;    /* candidate keys, summed over calls */
    int64_t scanned;       /* keys scored exactly (distinct within a call), summed; centroids:
                            * (query, centroid) products computed (coarse and fine), each the
                            * work of scoring one key; quest: 2 per (query, page) bound;
                            * dense / small slots: every candidate */
    int64_t returned;      /* ids returned, summed (centroids: cluster members + tail) */
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
/* "dense", "window", "oracle", "retrieval", "ivf", "centroids", "quest" -> IDX_OK and *out, else
 * IDX_ERR_PARAM. */
int idx_kind_parse(const char *name, idx_kind *out);
const char *idx_strerror(int code);
const char *idx_last_error(const idx_set *ix); /* message of the last failure ("" if none) */

int idx_create(const idx_params *p, idx_set **out); /* IDX_OK and *out, or a code and NULL */
unsigned idx_caps(const idx_set *ix);                 /* IDX_CAP_* of the set's kind */
void idx_free(idx_set *ix);                         /* accepts NULL */
/* Forgets every slot's structure, candidates and kept queries (a sequence reset); scratch
 * buffers and counters stay. */
void idx_reset(idx_set *ix);

/* Offers prefill queries of (layer, head): n rows of head_dim floats, row r at q + r * stride
 * (the engine passes each token's group_size query heads, in order, whole groups). retrieval
 * keeps the latest max_queries rows (decode queries resemble the latest prefill queries most),
 * centroids the latest obs_tokens * group_size rows (its calibration window); others return
 * IDX_OK at once. Not thread-safe for one (layer, head). */
int idx_observe(idx_set *ix, int layer, int head, const float *q, int64_t n, int64_t stride);

/* Keeps the prefill queries every kind would need (the largest ring), whatever this set's kind,
 * so that a fork may take any kind (idx_copy_observed). Only before the first idx_observe
 * (IDX_ERR_STATE after). */
int idx_set_observe_all(idx_set *ix, int on);
/* Gives dst's slots the observed query rows src holds, laid out exactly as if dst had observed
 * them itself (so its builds match a set that did). Same shape; IDX_ERR_STATE when src kept
 * fewer rows than dst's kind needs (src should observe_all). */
int idx_copy_observed(idx_set *dst, const idx_set *src);

/* Binds (layer, head) of a set whose kind has IDX_CAP_BIND to a centroid structure built
 * elsewhere (a registered context's), which it reads but neither copies nor frees: c must
 * outlive the binding (until the next build, reset or idx_free). The candidates become c's keys;
 * selection keeps the clusters above `threshold` scoring `levels` (idx_cent_select_levels).
 * IDX_OK, or IDX_ERR_PARAM (kind without the capability, shape mismatch, bad threshold). */
int idx_bind_cent(idx_set *ix, int layer, int head, const idx_cent *c, float threshold, int levels);

/* Builds the selector of (layer, head) over the keys [lo, hi) of kv, replacing any earlier
 * one, with the observed queries (or, when queries != NULL, those n_queries rows of head_dim
 * floats instead; centroids reads them as whole groups of group_size rows). Retrieval, ivf and
 * centroids read the keys as f32 copies into FAISS; below min_keys candidates they build
 * nothing and select exactly (centroids: every candidate). centroids with no query observed
 * calibrates on the latest keys instead (a poor proxy). quest reads the store's rows in place
 * (f32 or f16) into its page bounds, at any size. */
int idx_build(idx_set *ix, int layer, int head, const kv_store *kv, int64_t lo, int64_t hi,
              const float *queries, int64_t n_queries);

/* Around idx_build calls made from several threads at once (different slots; one set's slots
 * are independent): OpenBLAS built on pthreads (Ubuntu's default libopenblas.so.0) serves every
 * caller from one pool behind a lock, so 16 threads building at once ran slower than one; each
 * caller then gets one BLAS thread. The OpenMP build needs nothing (nested regions run on one
 * thread). begin returns what end restores. Not reentrant: call from one thread, outside any
 * parallel region. */
int idx_parallel_begin(void);
void idx_parallel_end(int saved);

/* Extends the candidates of (layer, head) to [lo, hi), indexing the new keys (tokens that left
 * the recent window). hi below the current end is an error. centroids does not cluster them:
 * they form an exact tail [end of the build, hi) that every select returns in full (a decode
 * of a few thousand tokens adds a few thousand ids per call; rebuild to fold them in). */
int idx_add(idx_set *ix, int layer, int head, const kv_store *kv, int64_t hi);

/* The centroids structure of (layer, head) (NULL: another kind, not built, or below
 * min_keys): read-only, owned by the set until the next build, reset or idx_free; for
 * serialising it (idx_cent_blob_write) or reading its calibration. */
const idx_cent *idx_get_cent(const idx_set *ix, int layer, int head);

/* Candidate range of (layer, head); both 0 before the build. */
int idx_range(const idx_set *ix, int layer, int head, int64_t *lo, int64_t *hi);

/* Ids idx_select may return for this request: the capacity `ids` needs. */
int64_t idx_max_ids(const idx_set *ix, int layer, int head, int n_q, const idx_request *req);

/* Selects among the candidates for the n_q queries q[g * head_dim] sharing (layer, head).
 * Writes distinct ascending positions to ids (capacity max_ids, at least idx_max_ids()) and
 * returns their count, or a negative code. dense returns every candidate, window none.
 * centroids returns the members of the clusters kept at the slot's threshold for req->target
 * (GQA union: a cluster any query keeps; mean: those of the mean query), then the exact tail;
 * quest the keys of each query's best pages (union: of every query's pages; mean: of the mean
 * query's). Both refuse a non-finite query with IDX_ERR_PARAM.
 * Reuses per-(layer, head) scratch: calls for different (layer, head) may run concurrently,
 * calls for the same one may not. */
int64_t idx_select(idx_set *ix, int layer, int head, const kv_store *kv, const float *q, int n_q,
                   const idx_request *req, int32_t *ids, int64_t max_ids);

/* An estimate of the candidates a select left out, per query g of the group (IDX_CAP_ESTIMATE):
 * rel[g] = log(estimated softmax mass of the left-out keys / estimated mass of the ids returned),
 * both estimated on the same scale, so that a bias common to both cancels and the caller anchors
 * it to the exact log-sum-exp of the ids it attends (-inf: nothing left out, or nothing to
 * anchor to); v[g * v_dim] (the store's v_dim), the left-out keys' estimated attention-weighted mean value.
 *   sparq     the approximate logits weigh the keys; a key's value is the mean value of the
 *             left-out keys of its block of IDX_EST_BLOCK positions (block sums kept as keys are
 *             added: 1/IDX_EST_BLOCK of the values' size)
 *   centroids each left-out cluster weighs n_j exp(s q.c_j) with its members' mean value
 *             (RetroInfer's estimation zone); the exact tail counts exactly. The clusters'
 *             mean values are computed at the first estimate of a slot (one pass over its
 *             values, kept until the next build). */
enum { IDX_EST_BLOCK = 64 };
typedef struct {
    float *rel; /* (n_q) */
    float *v;   /* (n_q, v_dim) */
} idx_estimate;

/* idx_select, then (est not NULL, the kind with IDX_CAP_ESTIMATE, ids left out) the estimate of
 * the rest for each of the n_q queries (the group's own queries, also under IDX_GQA_MEAN).
 * Kinds without the capability, and a select that left nothing out, give rel[g] = -inf. */
int64_t idx_select_est(idx_set *ix, int layer, int head, const kv_store *kv, const float *q, int n_q,
                       const idx_request *req, int32_t *ids, int64_t max_ids, idx_estimate *est);

void idx_stats_get(const idx_set *ix, idx_stats *out);
void idx_stats_reset(idx_set *ix);

#endif
