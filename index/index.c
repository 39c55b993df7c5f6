/* The selector set of one sequence: one slot per (layer, KV head), each answered by the kind's
 * method table (sel_impl.h). This file owns what every kind shares: argument checks, the
 * candidate range, the ring of observed prefill queries, binding a prebuilt centroid structure,
 * counters and timing. The kinds live in sel_basic.c (dense, window), sel_lists.c (oracle,
 * retrieval, ivf), sel_cent.c (centroids), sel_quest.c (quest) and sel_sparq.c (sparq). */
#include "sel_impl.h"

#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "quant.h"

static const idx_ops *const kind_ops[] = {&idx_ops_dense, &idx_ops_window, &idx_ops_oracle,
                                          &idx_ops_retrieval, &idx_ops_ivf, &idx_ops_centroids,
                                          &idx_ops_quest, &idx_ops_sparq};
enum { N_KINDS = sizeof kind_ops / sizeof kind_ops[0] };
_Static_assert((int)N_KINDS == (int)IDX_KIND_COUNT, "one method table per idx_kind");

/* ---- helpers the kinds share ------------------------------------------------------------ */

int idx_fail(idx_set *ix, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    #pragma omp critical(idx_fail)
    vsnprintf(ix->err, sizeof ix->err, fmt, ap);
    va_end(ap);
    return code;
}

/* Sixteen running maxima side by side (one AVX-512 register, or sixteen floats the compiler can
 * keep in vectors): a single one would make every comparison wait on the last, since the compiler
 * may not reorder a float reduction. Exact: max does not round. */
float idx_max(const float *x, int64_t n) {
#if defined(__AVX512F__)
    __m512 vm = _mm512_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) vm = _mm512_max_ps(_mm512_loadu_ps(x + j), vm); /* NaN in x: vm kept */
    float mm = _mm512_reduce_max_ps(vm);
    for (; j < n; j++) mm = x[j] > mm ? x[j] : mm;
    return mm;
#else
    enum { W = 16 };
    float m[W];
    for (int w = 0; w < W; w++) m[w] = -INFINITY;
    int64_t t = 0;
    for (; t + W <= n; t += W)
        for (int w = 0; w < W; w++) m[w] = x[t + w] > m[w] ? x[t + w] : m[w];
    for (; t < n; t++) m[0] = x[t] > m[0] ? x[t] : m[0];
    float r = m[0];
    for (int w = 1; w < W; w++) r = m[w] > r ? m[w] : r;
    return r;
#endif
}

void idx_group_best(const float *sc, int n_q, int64_t n, float *best) {
    for (int64_t j = 0; j < n; j++) best[j] = -INFINITY;
    for (int g = 0; g < n_q; g++) {
        const float *a = sc + (size_t)g * n;
        const float m = idx_max(a, n);
        for (int64_t j = 0; j < n; j++) {
            const float v = a[j] - m;
            best[j] = v > best[j] ? v : best[j];
        }
    }
}

void idx_mean_query(const float *q, int n_q, int d, float *out) {
    for (int i = 0; i < d; i++) {
        float a = 0.0f;
        for (int g = 0; g < n_q; g++) a += q[(size_t)g * d + i];
        out[i] = a / n_q;
    }
}

int idx_keys_held(const kv_store *kv, int layer, int head, int64_t lo, int64_t hi) {
    return lo == hi || (kv_k_row(kv, layer, head, lo) && kv_k_row(kv, layer, head, hi - 1));
}

float *idx_gather_keys(idx_set *ix, const idx_slot *s, int layer, int head, const kv_store *kv, int *rc) {
    const int64_t nk = s->hi - s->lo;
    float *K = malloc(sizeof(float) * nk * ix->p.head_dim);
    if (!K) {
        *rc = idx_fail(ix, IDX_ERR_NOMEM, "cannot copy %lld keys for the index", (long long)nk);
    } else if (kv_gather_range(kv, layer, head, s->lo, s->hi, K, NULL) != KV_OK) {
        *rc = idx_fail(ix, IDX_ERR_KV, "keys [%lld, %lld) of layer %d head %d are not held", (long long)s->lo,
                       (long long)s->hi, layer, head);
        free(K);
        K = NULL;
    }
    return K;
}

int idx_value_add(idx_set *ix, const kv_store *kv, int layer, int head, int64_t pos, float w, float *acc) {
    const void *src = kv_v_row(kv, layer, head, pos);
    if (!src) return idx_fail(ix, IDX_ERR_KV, "value %lld of layer %d head %d is not held", (long long)pos, layer, head);
    const kv_params *kp = kv_get_params(kv);
    if (kp->dtype == KV_F16) {
        const uint16_t *h = src;
        for (int i = 0; i < kp->v_dim; i++) acc[i] += w * krn_f16_to_f32(h[i]);
    } else {
        const float *v = src;
        for (int i = 0; i < kp->v_dim; i++) acc[i] += w * v[i];
    }
    return IDX_OK;
}

/* A histogram of the top 11 bits of order-preserving integer keys finds the bucket the k-th
 * largest falls in; that bucket's values, moved to the front without a branch, are all the
 * quickselect sees. A quickselect over every value mispredicts about one comparison in two,
 * which cost selectors as much as scoring their keys. */
float idx_kth_largest(float *x, int64_t n, int64_t k) {
    int64_t cnt[2048] = {0};
    for (int64_t j = 0; j < n; j++) cnt[idx_order_key(x[j]) >> 21]++;
    int b = 2047;
    while (cnt[b] < k) k -= cnt[b--];
    int64_t m = 0;
    for (int64_t j = 0; j < n; j++) {
        const float v = x[j];
        x[m] = v;
        m += (int64_t)(idx_order_key(v) >> 21) == b;
    }
    int64_t lo = 0, hi = m - 1, want = k - 1;
    while (lo < hi) {
        const float pivot = x[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > pivot) i++;
            while (x[j] < pivot) j--;
            if (i <= j) {
                const float t = x[i]; x[i] = x[j]; x[j] = t;
                i++; j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return x[want];
}

void idx_estimate_none(idx_estimate *est, int n_q) {
    for (int g = 0; g < n_q; g++) est->rel[g] = -INFINITY;
}

int64_t idx_all_candidates(const idx_slot *s, int32_t *ids) {
    for (int64_t j = 0; j < s->hi - s->lo; j++) ids[j] = (int32_t)(s->lo + j);
    return s->hi - s->lo;
}

/* ---- names, params, lifecycle ---------------------------------------------------------- */

const char *idx_kind_name(idx_kind k) {
    return (unsigned)k < N_KINDS ? kind_ops[k]->name : "?";
}

int idx_kind_parse(const char *name, idx_kind *out) {
    for (int k = 0; k < N_KINDS; k++)
        if (name && !strcmp(name, kind_ops[k]->name)) {
            *out = (idx_kind)k;
            return IDX_OK;
        }
    return IDX_ERR_PARAM;
}

unsigned idx_kind_caps(idx_kind k) { return (unsigned)k < N_KINDS ? kind_ops[k]->caps : 0; }
unsigned idx_caps(const idx_set *ix) { return ix->ops->caps; }

const char *idx_strerror(int code) {
    switch (code) {
    case IDX_OK: return "ok";
    case IDX_ERR_PARAM: return "invalid index parameter or argument";
    case IDX_ERR_NOMEM: return "out of memory in the index";
    case IDX_ERR_FAISS: return "FAISS error";
    case IDX_ERR_KV: return "key not held by the KV store";
    case IDX_ERR_STATE: return "index not built";
    default: return "unknown index error";
    }
}

const char *idx_last_error(const idx_set *ix) { return ix ? ix->err : ""; }

idx_params idx_params_default(void) {
    return (idx_params){.kind = IDX_RETRIEVAL, .seed = 1234, .min_keys = 1024, .max_queries = 4096,
                        .list_k = 128, .kmeans_iter = 10, .nprobe = 8, .key_share = 0.3f, .first_stage = 1,
                        .cent = idx_cent_params_default(), .group_size = 1, .obs_tokens = 100,
                        .quest_page = 16};
}

idx_request idx_request_default(void) {
    return (idx_request){.top_k = 100, .scan = 0.02f, .gqa = IDX_GQA_UNION};
}

static void slot_clear(const idx_set *ix, idx_slot *s) {
    if (s->st && ix->ops->state_clear) ix->ops->state_clear(s->st);
    s->built = 0;
    s->lo = s->hi = 0;
}

static int64_t obs_cap(const idx_set *ix) {
    int64_t n = ix->ops->obs_rows ? ix->ops->obs_rows(&ix->p) : 0;
    if (ix->observe_all) {
        /* every kind's need, so that a fork may take any kind */
        for (int k = 0; k < N_KINDS; k++) {
            int64_t m = kind_ops[k]->obs_rows ? kind_ops[k]->obs_rows(&ix->p) : 0;
            if (m > n) n = m;
        }
    }
    return n;
}

int idx_create(const idx_params *p, idx_set **out) {
    *out = NULL;
    if (!p || (unsigned)p->kind >= N_KINDS || p->n_layer <= 0 || p->n_head_kv <= 0 ||
        p->head_dim <= 0 || p->max_queries < 0 || p->n_cells < 0 || p->list_k < 0 ||
        p->kmeans_iter < 0 || p->nprobe < 0 || p->ivf_nlist < 0 || p->min_keys < 0 ||
        !(p->key_share >= 0.0f && p->key_share < 1.0f) || p->group_size < 0 || p->obs_tokens < 0 ||
        p->quest_page < 0 || p->quest_page > 1 << 20 || p->sparq_r < 0 || p->sparq_r > p->head_dim ||
        !(p->attn_scale >= 0.0f && isfinite(p->attn_scale)) ||
        !(p->cent.fine_frac > 0.0f && p->cent.fine_frac <= 1.0f) ||
        !(p->cent.coarse_frac >= 0.0f && p->cent.coarse_frac <= 1.0f) || p->cent.kmeans_iter < 0)
        return IDX_ERR_PARAM;
    idx_set *ix = calloc(1, sizeof *ix);
    if (!ix) return IDX_ERR_NOMEM;
    ix->p = *p;
    ix->ops = kind_ops[p->kind];
    idx_params d = idx_params_default();
    if (!ix->p.max_queries) ix->p.max_queries = d.max_queries;
    if (!ix->p.list_k) ix->p.list_k = d.list_k;
    if (!ix->p.kmeans_iter) ix->p.kmeans_iter = d.kmeans_iter;
    if (!ix->p.nprobe) ix->p.nprobe = d.nprobe;
    if (!ix->p.group_size) ix->p.group_size = 1;
    if (!ix->p.obs_tokens) ix->p.obs_tokens = d.obs_tokens;
    if (!ix->p.quest_page) ix->p.quest_page = d.quest_page;
    if (!ix->p.attn_scale) ix->p.attn_scale = 1.0f / sqrtf((float)p->head_dim);
    if (!ix->p.cent.kmeans_iter) ix->p.cent.kmeans_iter = d.cent.kmeans_iter;
    ix->p.cent.seed = p->seed;
    ix->p.cent.group = ix->p.group_size;
    ix->layer_mask = malloc(sizeof(int) * p->n_layer);
    ix->slots = calloc((size_t)p->n_layer * p->n_head_kv, sizeof(idx_slot));
    if (!ix->layer_mask || !ix->slots) { idx_free(ix); return IDX_ERR_NOMEM; }
    for (int l = 0; l < p->n_layer; l++) ix->layer_mask[l] = p->layer_mask ? p->layer_mask[l] != 0 : 1;
    ix->p.layer_mask = ix->layer_mask;
    for (int l = 0; l < p->n_layer; l++)
        for (int h = 0; h < p->n_head_kv; h++) ix->slots[l * p->n_head_kv + h].active = ix->layer_mask[l];
    *out = ix;
    return IDX_OK;
}

void idx_free(idx_set *ix) {
    if (!ix) return;
    if (ix->slots)
        for (int i = 0; i < ix->p.n_layer * ix->p.n_head_kv; i++) {
            idx_slot *s = &ix->slots[i];
            if (s->st) ix->ops->state_free(s->st);
            free(s->obs);
        }
    free(ix->slots);
    free(ix->layer_mask);
    free(ix);
}

void idx_reset(idx_set *ix) {
    if (!ix) return;
    for (int i = 0; i < ix->p.n_layer * ix->p.n_head_kv; i++) {
        idx_slot *s = &ix->slots[i];
        slot_clear(ix, s);
        s->n_obs = s->n_seen = 0;
    }
    ix->err[0] = 0;
}

static idx_slot *get_slot(idx_set *ix, int layer, int head) {
    if (!ix || layer < 0 || layer >= ix->p.n_layer || head < 0 || head >= ix->p.n_head_kv) return NULL;
    idx_slot *s = &ix->slots[layer * ix->p.n_head_kv + head];
    return s->active ? s : NULL;
}

/* The slot's kind state, made on first use. */
static void *slot_state(idx_set *ix, idx_slot *s) {
    if (!s->st && ix->ops->state_new) s->st = ix->ops->state_new(&ix->p);
    return s->st;
}

/* ---- observe -------------------------------------------------------------------------- */

int idx_observe(idx_set *ix, int layer, int head, const float *q, int64_t n, int64_t stride) {
    idx_slot *s = get_slot(ix, layer, head);
    if (!s || n < 0 || (n > 0 && !q)) return IDX_ERR_PARAM;
    const int64_t cap = obs_cap(ix);
    if (cap <= 0) return IDX_OK;
    const int d = ix->p.head_dim;
    if (!s->obs || s->obs_cap != cap) {
        free(s->obs);
        s->obs = malloc(sizeof(float) * cap * d);
        s->obs_cap = s->obs ? cap : 0;
        s->n_obs = s->n_seen = 0;
        if (!s->obs) return idx_fail(ix, IDX_ERR_NOMEM, "cannot hold %lld prefill queries", (long long)cap);
    }
    /* a ring of the latest rows: decode queries continue the prefill, and under RoPE the latest
     * queries share their slow rotary phases; on gemma-3 270M at 16K the last 1K tokens' queries
     * gave clearly better cells than a uniform sample of the whole prefill */
    for (int64_t r = 0; r < n; r++) {
        memcpy(s->obs + (s->n_seen % cap) * d, q + r * stride, sizeof(float) * d);
        s->n_seen++;
    }
    s->n_obs = s->n_seen < cap ? s->n_seen : cap;
    return IDX_OK;
}

int idx_set_observe_all(idx_set *ix, int on) {
    for (int i = 0; i < ix->p.n_layer * ix->p.n_head_kv; i++)
        if (ix->slots[i].n_seen) return IDX_ERR_STATE;
    ix->observe_all = on != 0;
    return IDX_OK;
}

int idx_copy_observed(idx_set *dst, const idx_set *src) {
    if (!dst || !src || dst->p.n_layer != src->p.n_layer || dst->p.n_head_kv != src->p.n_head_kv ||
        dst->p.head_dim != src->p.head_dim)
        return IDX_ERR_PARAM;
    const int d = dst->p.head_dim;
    const int64_t cap = obs_cap(dst);
    for (int i = 0; i < dst->p.n_layer * dst->p.n_head_kv; i++) {
        idx_slot *s = &dst->slots[i];
        const idx_slot *o = &src->slots[i];
        if (!s->active || cap <= 0) continue;
        if (!o->n_seen) {
            if (obs_cap(src) == 0) return idx_fail(dst, IDX_ERR_STATE, "the source kept no prefill queries");
            continue;
        }
        /* the rows the source still holds must cover what this ring would hold */
        const int64_t want = o->n_seen < cap ? o->n_seen : cap;
        if (want > o->n_obs) return idx_fail(dst, IDX_ERR_STATE, "the source kept %lld prefill queries, %lld needed",
                                             (long long)o->n_obs, (long long)want);
        if (!s->obs || s->obs_cap != cap) {
            free(s->obs);
            s->obs = malloc(sizeof(float) * cap * d);
            s->obs_cap = s->obs ? cap : 0;
            if (!s->obs) return idx_fail(dst, IDX_ERR_NOMEM, "cannot hold %lld prefill queries", (long long)cap);
        }
        /* the same ring layout as if this set had observed every row itself: row r (of all
         * seen) sits at r % cap */
        for (int64_t r = o->n_seen - want; r < o->n_seen; r++)
            memcpy(s->obs + (r % cap) * d, o->obs + (r % o->obs_cap) * d, sizeof(float) * d);
        s->n_seen = o->n_seen;
        s->n_obs = want;
    }
    return IDX_OK;
}

/* ---- build ---------------------------------------------------------------------------- */

int openblas_get_parallel(void);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int n);

int idx_parallel_begin(void) {
    if (openblas_get_parallel() != 1) return 0;
    const int n = openblas_get_num_threads();
    openblas_set_num_threads(1);
    return n;
}

void idx_parallel_end(int saved) {
    if (saved > 0) openblas_set_num_threads(saved);
}

/* Builds the kind's structure over the slot's candidates; on failure the slot keeps its range
 * and no structure. */
static int build_structure(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                           const float *queries, int64_t n_queries) {
    if (!slot_state(ix, s)) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for the selector state");
    int rc = ix->ops->build(ix, s, layer, head, kv, queries, n_queries);
    if (rc) ix->ops->state_clear(s->st);
    return rc;
}

static int wants_structure(const idx_set *ix, const idx_slot *s) {
    return ix->ops->build && s->hi - s->lo > 0 && (ix->ops->any_size || s->hi - s->lo >= ix->p.min_keys);
}

int idx_build(idx_set *ix, int layer, int head, const kv_store *kv, int64_t lo, int64_t hi,
              const float *queries, int64_t n_queries) {
    idx_slot *s = get_slot(ix, layer, head);
    if (!s || !kv || lo < 0 || hi < lo || hi - lo > INT32_MAX || n_queries < 0 ||
        kv_get_params(kv)->head_dim != ix->p.head_dim)
        return IDX_ERR_PARAM;
    if (!idx_keys_held(kv, layer, head, lo, hi))
        return idx_fail(ix, IDX_ERR_KV, "keys [%lld, %lld) not held", (long long)lo, (long long)hi);
    double t0 = krn_now_s();
    slot_clear(ix, s);
    s->lo = lo;
    s->hi = hi;
    int rc = wants_structure(ix, s) ? build_structure(ix, s, layer, head, kv, queries, n_queries) : IDX_OK;
    s->built = rc == IDX_OK;
    s->st_counts.builds++;
    s->st_counts.build_s += krn_now_s() - t0;
    return rc;
}

int idx_bind_cent(idx_set *ix, int layer, int head, const idx_cent *c, float threshold, int levels) {
    idx_slot *s = get_slot(ix, layer, head);
    if (!s || !c || !(ix->ops->caps & IDX_CAP_BIND) || idx_cent_dim(c) != ix->p.head_dim ||
        !(threshold >= 0.0f && threshold <= 1.0f) || levels < 0 || levels > 2)
        return IDX_ERR_PARAM;
    slot_clear(ix, s);
    if (!slot_state(ix, s)) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for the selector state");
    int rc = idx_cent_bind_state(ix, s, c, threshold, levels);
    if (rc) return rc;
    s->lo = idx_cent_pos0(c);
    s->hi = s->lo + idx_cent_n_keys(c);
    s->built = 1;
    return IDX_OK;
}

int idx_range(const idx_set *ix, int layer, int head, int64_t *lo, int64_t *hi) {
    idx_slot *s = get_slot((idx_set *)ix, layer, head);
    if (!s) return IDX_ERR_PARAM;
    *lo = s->lo;
    *hi = s->hi;
    return IDX_OK;
}

/* ---- add ------------------------------------------------------------------------------ */

int idx_add(idx_set *ix, int layer, int head, const kv_store *kv, int64_t hi) {
    idx_slot *s = get_slot(ix, layer, head);
    if (!s || !kv || hi < s->hi || hi - s->lo > INT32_MAX) return IDX_ERR_PARAM;
    if (!s->built) return idx_fail(ix, IDX_ERR_STATE, "idx_add before idx_build");
    if (hi == s->hi) return IDX_OK;
    if (!idx_keys_held(kv, layer, head, s->hi, hi))
        return idx_fail(ix, IDX_ERR_KV, "keys [%lld, %lld) not held", (long long)s->hi, (long long)hi);
    double t0 = krn_now_s();
    const int64_t old = s->hi;
    const int structured = s->st && ix->ops->has_structure && ix->ops->has_structure(s->st);
    int rc = structured && ix->ops->add ? ix->ops->add(ix, s, layer, head, kv, hi) : IDX_OK;
    if (rc == IDX_OK) {
        s->hi = hi;
        s->st_counts.added += hi - old;
        if (!structured && wants_structure(ix, s)) rc = build_structure(ix, s, layer, head, kv, NULL, 0);
    }
    s->st_counts.add_s += krn_now_s() - t0;
    return rc;
}

/* ---- select --------------------------------------------------------------------------- */

int64_t idx_max_ids(const idx_set *ix, int layer, int head, int n_q, const idx_request *req) {
    idx_slot *s = get_slot((idx_set *)ix, layer, head);
    if (!s || !req || n_q <= 0) return 0;
    return ix->ops->max_ids(ix, s, n_q, req);
}

int64_t idx_select(idx_set *ix, int layer, int head, const kv_store *kv, const float *q, int n_q,
                   const idx_request *req, int32_t *ids, int64_t max_ids) {
    idx_slot *s = get_slot(ix, layer, head);
    if (!s || !kv || !req || n_q <= 0 || !q || max_ids < 0 || req->top_k < 0 ||
        req->fraction < 0 || req->nprobe < 0 || req->scan < 0 || !(req->target >= 0 && req->target <= 1))
        return IDX_ERR_PARAM;
    if (!s->built) return idx_fail(ix, IDX_ERR_STATE, "select before build (layer %d head %d)", layer, head);
    if (ix->ops->state_new && !slot_state(ix, s)) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for the selector state");
    const double t0 = krn_now_s();
    const int64_t need = ix->ops->max_ids(ix, s, n_q, req);
    if (need > max_ids)
        return idx_fail(ix, IDX_ERR_PARAM, "ids capacity %lld below %lld", (long long)max_ids, (long long)need);
    int64_t scanned = 0;
    int nq = n_q;
    const int64_t n = ix->ops->select(ix, s, layer, head, kv, q, n_q, req, ids, max_ids, &scanned, &nq);
    if (n < 0) return n;
    s->st_counts.selects++;
    s->st_counts.queries += nq;
    s->st_counts.candidates += s->hi - s->lo;
    s->st_counts.scanned += scanned;
    s->st_counts.returned += n;
    s->st_counts.search_s += krn_now_s() - t0;
    return n;
}

int64_t idx_select_est(idx_set *ix, int layer, int head, const kv_store *kv, const float *q, int n_q,
                       const idx_request *req, int32_t *ids, int64_t max_ids, idx_estimate *est) {
    const int64_t n = idx_select(ix, layer, head, kv, q, n_q, req, ids, max_ids);
    if (n < 0 || !est) return n;
    if (!est->rel || !est->v) return idx_fail(ix, IDX_ERR_PARAM, "estimate without its buffers");
    idx_slot *s = get_slot(ix, layer, head);
    idx_estimate_none(est, n_q);
    if (!ix->ops->estimate || n >= s->hi - s->lo || n == 0) return n;
    const double t0 = krn_now_s();
    const int rc = ix->ops->estimate(ix, s, layer, head, kv, q, n_q, ids, n, est);
    s->st_counts.search_s += krn_now_s() - t0;
    return rc < 0 ? rc : n;
}

/* ---- stats ---------------------------------------------------------------------------- */

void idx_stats_get(const idx_set *ix, idx_stats *out) {
    memset(out, 0, sizeof *out);
    const int d = ix->p.head_dim;
    for (int i = 0; i < ix->p.n_layer * ix->p.n_head_kv; i++) {
        const idx_slot *s = &ix->slots[i];
        if (!s->active) continue;
        out->selects += s->st_counts.selects;
        out->queries += s->st_counts.queries;
        out->candidates += s->st_counts.candidates;
        out->scanned += s->st_counts.scanned;
        out->returned += s->st_counts.returned;
        out->added += s->st_counts.added;
        out->builds += s->st_counts.builds;
        out->search_s += s->st_counts.search_s;
        out->build_s += s->st_counts.build_s;
        out->add_s += s->st_counts.add_s;
        out->bytes += sizeof *s + (size_t)s->obs_cap * d * sizeof(float) +
                      (s->st && ix->ops->bytes ? ix->ops->bytes(ix, s->st) : 0);
    }
}

void idx_stats_reset(idx_set *ix) {
    for (int i = 0; i < ix->p.n_layer * ix->p.n_head_kv; i++)
        memset(&ix->slots[i].st_counts, 0, sizeof(idx_stats));
}

const idx_cent *idx_get_cent(const idx_set *ix, int layer, int head) {
    idx_slot *s = get_slot((idx_set *)ix, layer, head);
    return s && s->st && ix->ops->kind == IDX_CENTROIDS ? idx_cent_state_cent(s->st) : NULL;
}
