/* The selectors that score keys exactly and return the top ones: `oracle` (every candidate,
 * the recall upper bound), `ivf` (FAISS IVF lists over the keys, probed by inner product) and
 * `retrieval` (query-aware lists, RetrievalAttention's idea, plus a share of IVF lists). A slot
 * below min_keys candidates scores all of them, as oracle does. Probing allocates nothing: every
 * buffer lives in the slot's state and only grows. */
#include "sel_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "attn_sparse.h"

/* The query-aware `retrieval` index: decode queries come from the distribution of the prefill
 * queries, not of the keys, so its cells are k-means clusters of the latest prefill queries and
 * each cell lists the keys its queries actually rank highest (exact top list_k by FAISS brute
 * force), ordered by how many of them do; keys nobody ranks go to the cell whose centroid
 * scores them highest, so every key stays reachable. A decode query probes its nearest cells
 * and scores their listed keys exactly; key_share of the scan goes to IVF lists over the keys,
 * which catch content matches that no kept query anticipated. */
/* A list with room at both ends: keys that join a cell's top go to its front at every decode step
 * (a memmove of the whole list each time cost ~0.5 ms a token at 17K, 48 slots). ids is the
 * first entry, `front` entries after the allocation's start. */
typedef struct {
    int32_t *ids;
    int32_t n, cap, front;   /* cap: the allocation's entries, front slack included */
} id_list;

/* Per candidate, two one-byte epoch stamps side by side: read in this call (seen) and taken by
 * the current query (mark); the per-query top k's fields (uid, outm) live apart, untouched by a
 * group share. 7 bytes a key and slot where four 32-bit fields took 16: 430 MB less scratch at
 * 1M tokens on a 24-layer, 2-KV-head model. (The probe's time did not move with them at 15K.) */
typedef struct {
    uint8_t seen, mark;
} key_tag;

/* Inverted lists with one centroid each; a query probes them in the order of q.c + bias[c]. */
typedef struct {
    int n;
    float *cent;             /* (n, d) */
    float *bias;             /* (n): -|c|^2/2 ranks query cells by L2 distance (as the k-means
                              * that made them); 0 ranks key lists by inner product (FAISS IVF) */
    id_list *lists;          /* (n) positions */
} list_set;

typedef struct {
    /* retrieval: query cells */
    list_set qc;
    float *tau;              /* (qc.n) list_k-th best centroid.key score at build: new keys
                              * scoring at least this join the cell (idx_add) */
    /* ivf, and the key part of hybrid retrieval: FAISS IndexIVFFlat's trained centroids and
     * lists, copied out (the vectors themselves stay in the KV store) */
    list_set kl;
    /* scratch, grown on demand */
    key_tag *tag;            /* (hi - lo) */
    uint8_t seen_epoch, mark_epoch;
    /* per-query top k only (top_k given): each candidate's place in the call's union (valid when
     * seen) and the epoch of the call that returned it */
    int32_t *uid;            /* (hi - lo) */
    uint8_t *outm;           /* (hi - lo) */
    int64_t stamp_cap;
    int32_t *ukeys;          /* (n_union) positions the group's queries take in this call */
    int64_t n_union;
    int32_t *qsel;           /* (n_qsel) each query's share, as places in ukeys, query after query */
    int64_t n_qsel, qsel_cap;
    int64_t *qoff;           /* (n_q + 1) where each query's share starts in qsel */
    int32_t *sort_tmp;       /* (hi - lo) */
    int64_t qoff_cap;
    float *scores;           /* (n_q, n_union), or (n_q, hi - lo) scanning every candidate */
    int64_t scores_cap;
    uint32_t *kbuf;          /* (hi - lo) a query's scores as idx_order_key */
    float *qmean;            /* (d) */
    float *cell_score;       /* (n_q, kl.n) then (n_q, qc.n) */
    int64_t cell_score_cap;
    float *krow;             /* (ADD_BATCH, d) keys as f32 */
    float *add_sc;           /* (ADD_BATCH, cells) the keys' scores against the cells (idx_add) */
    int64_t add_sc_cap;
    /* the group share's first stage: the keys as int8 with one scale per channel, a quarter of
     * the bytes of the f32 rows the union is otherwise scored from (kept at build and idx_add;
     * structured slots only) */
    int8_t *k8;              /* (k8_cap, d): row r is position lo + r, (key - k8_mid) / k8_scale */
    float *k8_scale;         /* (2d): the channels' steps, then their midpoints (k8_mid) */
    int64_t k8_n, k8_cap;
    int8_t *k8_q;            /* (2 n_q, d) the queries times the channel steps, as two int8 terms */
    int64_t k8_q_cap;
} lists_st;

/* The union of a group share is ranked first from the int8 keys; the best RESCORE times the
 * budget are then scored exactly from the f32 rows and give the ids. The per-channel int8 error
 * moves a logit by ~0.1% of its range, so a key of the exact top k ranked below twice k by the
 * first stage would need a gap that the rescored half covers many times over (measured at 15K:
 * no select of 6,096 gave other ids at 2x). */
enum { RESCORE = 2 };
/* each channel's int8 range is its build range times this, about its midpoint. A key added later
 * beyond it on some channel is marked (K8_SAT in channel 0) and scored from its f32 row in the
 * first stage too: a clamped score could also move its query's maximum, which shifts the rest. */
#define K8_HEADROOM 1.25f
#define K8_SAT (-128)

static int faiss_fail(idx_set *ix, const char *what) {
    const char *m = faiss_get_last_error();
    return idx_fail(ix, IDX_ERR_FAISS, "FAISS %s: %s", what, m ? m : "?");
}

/* Grows *p to hold n elements of size sz (keeps contents); 0 or -1. */
static int grow(void *pp, int64_t *cap, int64_t n, size_t sz) {
    if (n <= *cap) return 0;
    int64_t c = *cap ? *cap : 64;
    while (c < n) c *= 2;
    void *q = realloc(*(void **)pp, (size_t)c * sz);
    if (!q) return -1;
    *(void **)pp = q;
    *cap = c;
    return 0;
}

/* Moves the list into a new allocation of cap entries with `front` free before it; -1 out of
 * memory (the list unchanged). */
static int list_realloc(id_list *l, int32_t cap, int32_t front) {
    int32_t *q = malloc(sizeof(int32_t) * (size_t)cap);
    if (!q) return -1;
    if (l->n) memcpy(q + front, l->ids, sizeof(int32_t) * (size_t)l->n);
    free(l->ids ? l->ids - l->front : NULL);
    l->ids = q + front;
    l->cap = cap;
    l->front = front;
    return 0;
}

static int list_push(id_list *l, int32_t id) {
    if (l->front + l->n == l->cap && list_realloc(l, l->cap ? 2 * l->cap : 16, l->front)) return -1;
    l->ids[l->n++] = id;
    return 0;
}

/* A key the cell's centroid ranks among its top list_k goes first: lists are read in order and
 * the scan target may stop before their tail (where unranked keys sit). */
static int list_push_front(id_list *l, int32_t id) {
    if (l->front == 0) { /* as much room before as the list holds, at least 16 */
        const int32_t room = l->n > 16 ? l->n : 16;
        if (list_realloc(l, room + l->cap, room)) return -1;
    }
    l->ids--;
    l->front--;
    l->n++;
    l->ids[0] = id;
    return 0;
}

/* The k-th largest of u[0..n) (1 <= k <= n): radix selection, a byte per pass from the top, each
 * pass a 256-bin histogram of the keys that share the bytes chosen so far. Branch-free counting:
 * a quickselect's mispredicted comparisons cost more than scoring the keys (a query keeps k = 100
 * of a share of ~300). Four histograms, one per key modulo 4: the scores of one selection share
 * their top bytes, and one histogram would make every increment wait on the last (a third of a
 * 16K select's time went there). */
static uint32_t kth_largest(const uint32_t *u, int64_t n, int64_t k) {
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        int32_t cnt[4][256];
        memset(cnt, 0, sizeof cnt);
        int64_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int w = 0; w < 4; w++) cnt[w][u[i + w] >> shift & 255] += (u[i + w] & mask) == prefix;
        for (; i < n; i++) cnt[0][u[i] >> shift & 255] += (u[i] & mask) == prefix;
        int dg = 255;
        for (;;) {
            const int64_t c = (int64_t)cnt[0][dg] + cnt[1][dg] + cnt[2][dg] + cnt[3][dg];
            if (c >= k) break;
            k -= c;
            dg--;
        }
        prefix |= (uint32_t)dg << shift;
        mask |= 255u << shift;
    }
    return prefix;
}

/* ids[0..n) ascending, every id in [lo, lo + span): LSD radix sort of id - lo, 8 bits a pass,
 * as many passes as span needs (two below 65,536 candidates); tmp holds n ids. qsort's calls
 * through a comparator cost ~15 us per few hundred ids, as much as scoring them. */
static void sort_ids(int32_t *ids, int64_t n, int64_t lo, int64_t span, int32_t *tmp) {
    int32_t *a = ids, *b = tmp;
    for (int shift = 0; shift < 32 && ((span - 1) >> shift) > 0; shift += 8) {
        int64_t cnt[257] = {0};
        for (int64_t i = 0; i < n; i++) cnt[((a[i] - lo) >> shift & 255) + 1]++;
        for (int c = 0; c < 256; c++) cnt[c + 1] += cnt[c];
        for (int64_t i = 0; i < n; i++) b[cnt[(a[i] - lo) >> shift & 255]++] = a[i];
        int32_t *t = a; a = b; b = t;
    }
    if (a != ids) memcpy(ids, a, sizeof(int32_t) * n);
}

/* ---- names, params, lifecycle ---------------------------------------------------------- */

static void list_set_free(list_set *ls) {
    for (int c = 0; c < ls->n; c++) free(ls->lists[c].ids ? ls->lists[c].ids - ls->lists[c].front : NULL);
    free(ls->lists);
    free(ls->cent);
    free(ls->bias);
    memset(ls, 0, sizeof *ls);
}

static int list_set_alloc(list_set *ls, int n, int d) {
    ls->n = n;
    ls->cent = malloc(sizeof(float) * n * d);
    ls->bias = calloc((size_t)n, sizeof(float));
    ls->lists = calloc((size_t)n, sizeof(id_list));
    return ls->cent && ls->bias && ls->lists ? 0 : -1;
}

static void lists_free(void *st);

static void *lists_new(const idx_params *p) {
    lists_st *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->qmean = malloc(sizeof(float) * p->head_dim);
    s->krow = malloc(sizeof(float) * ATTN_MAX_GROUP * p->head_dim);
    if (s->qmean && s->krow) return s;
    lists_free(s);
    return NULL;
}

static void lists_clear(void *st) {
    lists_st *s = st;
    list_set_free(&s->qc);
    list_set_free(&s->kl);
    free(s->tau);
    s->tau = NULL;
    free(s->k8);
    free(s->k8_scale);
    s->k8 = NULL;
    s->k8_scale = NULL;
    s->k8_n = s->k8_cap = 0;
}

static void lists_free(void *st) {
    lists_st *s = st;
    if (!s) return;
    lists_clear(s);
    free(s->tag); free(s->uid); free(s->outm); free(s->scores); free(s->ukeys); free(s->qsel); free(s->qoff); free(s->sort_tmp); free(s->kbuf);
    free(s->qmean); free(s->cell_score); free(s->krow); free(s->add_sc); free(s->k8_q);
    free(s);
}

static int64_t retrieval_obs_rows(const idx_params *p) { return p->max_queries; }

static float dotf(const float *a, const float *b, int n) {
    float s = 0.0f;
    #pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

typedef struct {
    int32_t hits, id;
} hit_ent;

/* Most hits first, then ascending id (deterministic). */
static int cmp_hits(const void *a, const void *b) {
    const hit_ent *x = a, *y = b;
    if (x->hits != y->hits) return y->hits - x->hits;
    return (x->id > y->id) - (x->id < y->id);
}

/* A k-means of k centroids with the set's iterations and seed, quiet and without a minimum of
 * points per centroid, training on at most max_per points per centroid (FAISS samples the
 * rest), and the flat index it trains into: L2, or inner product for spherical k-means. The
 * caller frees both, also on failure (either may be NULL); nonzero on a FAISS error. */
static int kmeans_new(const idx_set *ix, int k, int spherical, int max_per, FaissClustering **cl,
                      FaissIndex **index) {
    FaissClusteringParameters cp;
    faiss_ClusteringParameters_init(&cp);
    cp.niter = ix->p.kmeans_iter;
    cp.seed = ix->p.seed;
    cp.verbose = 0;
    cp.spherical = spherical;
    cp.min_points_per_centroid = 1;
    cp.max_points_per_centroid = max_per;
    const int d = ix->p.head_dim;
    return faiss_Clustering_new_with_params(cl, d, k, &cp) ||
           faiss_index_factory(index, d, "Flat", spherical ? METRIC_INNER_PRODUCT : METRIC_L2);
}


/* Query-aware lists over the keys K (nk rows, positions lo..) from the queries Q (nq rows). */
static int build_retrieval(idx_set *ix, lists_st *s, const float *K, int64_t nk, int64_t lo,
                           const float *Q, int64_t nq) {
    const int d = ix->p.head_dim;
    const int64_t L = ix->p.list_k < nk ? ix->p.list_k : nk;
    int64_t nc = ix->p.n_cells ? ix->p.n_cells : nq / 32;
    if (!ix->p.n_cells) nc = nc < 16 ? 16 : nc > 1024 ? 1024 : nc;
    if (nc > nq) nc = nq;
    if (nc < 1) nc = 1;
    int rc = IDX_OK;
    FaissClustering *cl = NULL;
    FaissIndex *cidx = NULL, *kidx = NULL, *cip = NULL;
    idx_t *qcell = NULL, *lab = NULL, *clab = NULL, *ulab = NULL;
    float *qdis = NULL, *dis = NULL, *cdis = NULL, *udis = NULL, *ukeys = NULL;
    int64_t *order = NULL, *start = NULL;
    int32_t *hits = NULL, *unl = NULL;
    hit_ent *tmp = NULL;
    uint8_t *listed = NULL;

    /* 1. cells: k-means (L2) of the queries, without FAISS's subsampling or warnings */
    if (kmeans_new(ix, (int)nc, 0, 1 << 30, &cl, &cidx) || faiss_Clustering_train(cl, nq, Q, cidx)) {
        rc = faiss_fail(ix, "k-means of the prefill queries");
        goto cleanup;
    }
    float *cent;
    size_t csz;
    faiss_Clustering_centroids(cl, &cent, &csz);
    int alloc_fail = list_set_alloc(&s->qc, (int)nc, d);
    s->tau = malloc(sizeof(float) * nc);
    qcell = malloc(sizeof(idx_t) * nq);
    qdis = malloc(sizeof(float) * nq);
    lab = malloc(sizeof(idx_t) * nq * L);
    dis = malloc(sizeof(float) * nq * L);
    clab = malloc(sizeof(idx_t) * nc * L);
    cdis = malloc(sizeof(float) * nc * L);
    order = malloc(sizeof(int64_t) * nq);
    start = calloc((size_t)nc + 1, sizeof(int64_t));
    hits = calloc((size_t)nk, sizeof(int32_t));
    tmp = malloc(sizeof(hit_ent) * nk); /* a cell lists each key at most once */
    listed = calloc((size_t)nk, 1);
    if (alloc_fail || !s->tau || !qcell || !qdis || !lab || !dis ||
        !clab || !cdis || !order || !start || !hits || !tmp || !listed) {
        rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the retrieval index");
        goto cleanup;
    }
    memcpy(s->qc.cent, cent, sizeof(float) * nc * d);
    for (int64_t c = 0; c < nc; c++)
        s->qc.bias[c] = -0.5f * dotf(s->qc.cent + c * d, s->qc.cent + c * d, d);
    /* the training index holds the final centroids: each query's cell */
    if (faiss_Index_search(cidx, nq, Q, 1, qdis, qcell)) {
        rc = faiss_fail(ix, "query assignment");
        goto cleanup;
    }

    /* 2. exact top-L keys of every query and of every centroid (inner product, BLAS) */
    if (faiss_index_factory(&kidx, d, "Flat", METRIC_INNER_PRODUCT) ||
        faiss_Index_add(kidx, nk, K) || faiss_Index_search(kidx, nq, Q, L, dis, lab) ||
        faiss_Index_search(kidx, nc, s->qc.cent, L, cdis, clab)) {
        rc = faiss_fail(ix, "brute-force top keys");
        goto cleanup;
    }
    for (int64_t c = 0; c < nc; c++) s->tau[c] = cdis[c * L + L - 1];

    /* 3. lists: the union of a cell's queries' top keys (and its centroid's), most hits first */
    for (int64_t i = 0; i < nq; i++) start[qcell[i] + 1]++;
    for (int64_t c = 0; c < nc; c++) start[c + 1] += start[c];
    for (int64_t i = 0; i < nq; i++) order[start[qcell[i]]++] = i;
    for (int64_t c = nc; c > 0; c--) start[c] = start[c - 1];
    start[0] = 0;
    for (int64_t c = 0; c < nc; c++) {
        int64_t nt = 0;
        for (int64_t r = start[c]; r <= start[c + 1]; r++) {
            /* the cell's queries, then (r == end) its centroid */
            const idx_t *row = r < start[c + 1] ? lab + order[r] * L : clab + c * L;
            for (int64_t j = 0; j < L; j++) {
                idx_t key = row[j];
                if (key < 0) continue;
                if (hits[key]++ == 0) tmp[nt++].id = (int32_t)key;
            }
        }
        for (int64_t t = 0; t < nt; t++) tmp[t].hits = hits[tmp[t].id];
        qsort(tmp, (size_t)nt, sizeof *tmp, cmp_hits);
        for (int64_t t = 0; t < nt; t++) {
            hits[tmp[t].id] = 0;
            listed[tmp[t].id] = 1;
            if (list_push(&s->qc.lists[c], (int32_t)(lo + tmp[t].id))) {
                rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the retrieval index");
                goto cleanup;
            }
        }
    }

    /* 4. keys no kept query ranks: to the cell whose centroid scores them highest */
    int64_t nu = 0;
    for (int64_t j = 0; j < nk; j++) nu += !listed[j];
    if (nu > 0) {
        unl = malloc(sizeof(int32_t) * nu);
        ukeys = malloc(sizeof(float) * nu * d);
        ulab = malloc(sizeof(idx_t) * nu);
        udis = malloc(sizeof(float) * nu);
        if (!unl || !ukeys || !ulab || !udis) {
            rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the retrieval index");
            goto cleanup;
        }
        nu = 0;
        for (int64_t j = 0; j < nk; j++)
            if (!listed[j]) {
                memcpy(ukeys + nu * d, K + j * d, sizeof(float) * d);
                unl[nu++] = (int32_t)j;
            }
        if (faiss_index_factory(&cip, d, "Flat", METRIC_INNER_PRODUCT) ||
            faiss_Index_add(cip, nc, s->qc.cent) || faiss_Index_search(cip, nu, ukeys, 1, udis, ulab)) {
            rc = faiss_fail(ix, "assignment of unlisted keys");
            goto cleanup;
        }
        for (int64_t u = 0; u < nu; u++)
            if (list_push(&s->qc.lists[ulab[u] >= 0 ? ulab[u] : 0], (int32_t)(lo + unl[u]))) {
                rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the retrieval index");
                goto cleanup;
            }
    }
cleanup:
    if (cl) faiss_Clustering_free(cl);
    if (cidx) faiss_Index_free(cidx);
    if (kidx) faiss_Index_free(kidx);
    if (cip) faiss_Index_free(cip);
    free(qcell); free(qdis); free(lab); free(dis); free(clab); free(cdis); free(order);
    free(start); free(hits); free(tmp); free(listed); free(unl); free(ukeys); free(ulab); free(udis);
    return rc;
}

/* IVF lists on the keys, built as FAISS's IndexIVFFlat (inner product) builds them: spherical
 * k-means, ~39 keys per list, 10 iterations, then every key to the list whose centroid scores it
 * highest. Two departures keep the build from growing with the square of the context (256 slots
 * of 128K keys took minutes of CPU): the centroids train on a sample of IVF_TRAIN_PER_LIST keys
 * per list (FAISS's own subsampling, at 256 per list, never cut in at 39), and nlist stops at
 * IVF_MAX_LISTS, so lists lengthen past 80K keys. The vectors stay in the KV store: a probe
 * scores the listed keys with the same kernels as the query cells (Debian's FAISS is built
 * without AVX2: its single-query search cost ~40 us per call here). */
enum { IVF_TRAIN_PER_LIST = 16, IVF_MAX_LISTS = 2048 };

static int build_ivf(idx_set *ix, lists_st *s, const float *K, int64_t nk, int64_t lo) {
    const int d = ix->p.head_dim;
    int64_t nlist = ix->p.ivf_nlist ? ix->p.ivf_nlist : nk / 39;
    if (nlist < 1) nlist = 1;
    if (!ix->p.ivf_nlist && nlist > IVF_MAX_LISTS) nlist = IVF_MAX_LISTS;
    if (nlist > nk) nlist = nk;
    FaissClustering *cl = NULL;
    FaissIndex *quant = NULL;
    idx_t *lab = malloc(sizeof(idx_t) * nk);
    float *dis = malloc(sizeof(float) * nk);
    int rc = IDX_OK;
    if (!lab || !dis) {
        rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the IVF index");
        goto cleanup;
    }
    /* the training index holds the final centroids: it assigns every key */
    if (kmeans_new(ix, (int)nlist, 1, IVF_TRAIN_PER_LIST, &cl, &quant) ||
        faiss_Clustering_train(cl, nk, K, quant) || faiss_Index_search(quant, nk, K, 1, dis, lab)) {
        rc = faiss_fail(ix, "IVF build");
        goto cleanup;
    }
    float *cent;
    size_t csz;
    faiss_Clustering_centroids(cl, &cent, &csz);
    if (csz != (size_t)(nlist * d)) {
        rc = idx_fail(ix, IDX_ERR_FAISS, "IVF k-means holds %zu floats, expected %lld", csz, (long long)(nlist * d));
        goto cleanup;
    }
    if (list_set_alloc(&s->kl, (int)nlist, d)) {
        rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the IVF index");
        goto cleanup;
    }
    memcpy(s->kl.cent, cent, sizeof(float) * nlist * d);
    for (int64_t j = 0; j < nk && rc == IDX_OK; j++) /* ascending positions within each list */
        if (lab[j] < 0 || lab[j] >= nlist)
            rc = idx_fail(ix, IDX_ERR_FAISS, "IVF assignment out of range");
        else if (list_push(&s->kl.lists[lab[j]], (int32_t)(lo + j)))
            rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory building the IVF index");
cleanup:
    if (cl) faiss_Clustering_free(cl);
    if (quant) faiss_Index_free(quant);
    free(lab);
    free(dis);
    return rc;
}

/* retrieval and ivf: the keys [lo, hi) as f32 copies into FAISS. */
/* Appends n keys (rows of d floats) to the int8 copy, in the build's channel scales. */
static int k8_append(lists_st *s, const float *K, int64_t n, int d) {
    if (grow(&s->k8, &s->k8_cap, s->k8_n + n, (size_t)d)) return -1;
    for (int64_t j = 0; j < n; j++) {
        const float *x = K + (size_t)j * d;
        int8_t *o = s->k8 + (size_t)(s->k8_n + j) * d;
        int sat = 0;
        for (int i = 0; i < d; i++) {
            const float v = nearbyintf((x[i] - s->k8_scale[d + i]) / s->k8_scale[i]);
            sat |= !(v >= -127.0f && v <= 127.0f); /* NaN too */
            o[i] = (int8_t)(v > 127.0f ? 127.0f : v >= -127.0f ? v : -127.0f);
        }
        if (sat) o[0] = K8_SAT;
    }
    s->k8_n += n;
    return 0;
}

/* The int8 copy of the slot's nk build keys: each channel spans its build range about its
 * midpoint. The midpoint adds the same q.mid to every key's logit for a query, which the group's
 * shifted logits cancel; a channel that carries a large, nearly constant value (Qwen2.5's key
 * bias in the early layers) keeps fine steps that a scale about zero would spend on the offset. */
static int k8_build(lists_st *s, const float *K, int64_t nk, int d) {
    s->k8_scale = malloc(sizeof(float) * 2 * d);
    if (!s->k8_scale) return -1;
    float *step = s->k8_scale, *mid = s->k8_scale + d; /* first each channel's max, then min */
    for (int i = 0; i < d; i++) step[i] = -INFINITY, mid[i] = INFINITY;
    for (int64_t j = 0; j < nk; j++)
        for (int i = 0; i < d; i++) {
            const float x = K[(size_t)j * d + i];
            step[i] = x > step[i] ? x : step[i];
            mid[i] = x < mid[i] ? x : mid[i];
        }
    for (int i = 0; i < d; i++) {
        const float hi = step[i], lo = mid[i];
        mid[i] = nk > 0 ? 0.5f * (lo + hi) : 0.0f;
        step[i] = nk > 0 && hi > lo ? (hi - lo) * K8_HEADROOM / 254.0f : 1.0f;
    }
    s->k8_n = 0;
    return k8_append(s, K, nk, d);
}

static int lists_build(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv,
                       const float *queries, int64_t n_queries) {
    lists_st *s = g->st;
    const int64_t nk = g->hi - g->lo;
    int rc = IDX_OK;
    float *K = idx_gather_keys(ix, g, layer, head, kv, &rc);
    if (!K) {
        return rc;
    } else if (ix->ops->kind == IDX_IVF) {
        rc = build_ivf(ix, s, K, nk, g->lo);
    } else {
        if (!queries) { queries = g->obs; n_queries = g->n_obs; }
        if (n_queries <= 0) { queries = K; n_queries = nk; } /* no queries seen: cluster keys */
        rc = build_retrieval(ix, s, K, nk, g->lo, queries, n_queries);
        if (rc == IDX_OK && ix->p.key_share > 0.0f) rc = build_ivf(ix, s, K, nk, g->lo);
    }
    if (rc == IDX_OK && (s->qc.n > 0 || s->kl.n > 0) && ix->p.first_stage && k8_build(s, K, nk, ix->p.head_dim))
        rc = idx_fail(ix, IDX_ERR_NOMEM, "out of memory for the int8 keys");
    free(K);
    return rc;
}

static int lists_has_structure(const void *st) {
    const lists_st *s = st;
    return s->qc.n > 0 || s->kl.n > 0;
}

/* The list whose score in sc[0..n) is largest (the first on ties). */
static int best_of(const float *sc, int n, float *score) {
    int best = 0;
    float best_s = -INFINITY;
    for (int c = 0; c < n; c++)
        if (sc[c] > best_s) { best_s = sc[c]; best = c; }
    *score = best_s;
    return best;
}

/* Keys that leave the window arrive one a step (a few with reuse): they are scored against the
 * cells ADD_BATCH at a time, as a GQA group's queries are, each centroid read once per batch. */
enum { ADD_BATCH = ATTN_MAX_GROUP };

static int lists_add(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv, int64_t hi) {
    lists_st *s = g->st;
    const int d = ix->p.head_dim;
    const int ncell = s->qc.n > s->kl.n ? s->qc.n : s->kl.n;
    if (grow(&s->add_sc, &s->add_sc_cap, (int64_t)ADD_BATCH * ncell, sizeof(float)))
        return idx_fail(ix, IDX_ERR_NOMEM, "out of memory adding keys");
    int rc = IDX_OK;
    for (int64_t p0 = g->hi; p0 < hi && rc == IDX_OK; p0 += ADD_BATCH) {
        const int nb = hi - p0 < ADD_BATCH ? (int)(hi - p0) : ADD_BATCH;
        int32_t pos[ADD_BATCH];
        for (int j = 0; j < nb; j++) pos[j] = (int32_t)(p0 + j);
        if (kv_gather(kv, layer, head, pos, nb, s->krow, NULL) != KV_OK)
            return idx_fail(ix, IDX_ERR_PARAM, "adding keys: positions %lld.. not held", (long long)p0);
        float best_s;
        if (s->qc.n > 0) {
            /* a new key joins, at the front, every cell whose centroid would have listed it at
             * build (score at least the centroid's list_k-th best), and at least (at the back)
             * the cell whose centroid scores it highest, like an unlisted key at build */
            attn_scores_group_rows(s->krow, nb, d, s->qc.cent, s->qc.n, d, s->add_sc, s->qc.n);
            for (int j = 0; j < nb && rc == IDX_OK; j++) {
                const float *sc = s->add_sc + (size_t)j * s->qc.n;
                for (int c = 0; c < s->qc.n; c++)
                    if (sc[c] >= s->tau[c] && list_push_front(&s->qc.lists[c], pos[j])) rc = IDX_ERR_NOMEM;
                const int best = best_of(sc, s->qc.n, &best_s);
                if (best_s < s->tau[best] && list_push(&s->qc.lists[best], pos[j])) rc = IDX_ERR_NOMEM;
            }
        }
        /* FAISS IVF-IP assignment: the list whose centroid has the largest inner product */
        if (s->kl.n > 0 && rc == IDX_OK) {
            attn_scores_group_rows(s->krow, nb, d, s->kl.cent, s->kl.n, d, s->add_sc, s->kl.n);
            for (int j = 0; j < nb && rc == IDX_OK; j++)
                if (list_push(&s->kl.lists[best_of(s->add_sc + (size_t)j * s->kl.n, s->kl.n, &best_s)], pos[j]))
                    rc = IDX_ERR_NOMEM;
        }
        if (s->k8_scale && rc == IDX_OK && k8_append(s, s->krow, nb, d)) rc = IDX_ERR_NOMEM;
    }
    return rc ? idx_fail(ix, rc, "out of memory adding keys") : IDX_OK;
}

/* ---- select --------------------------------------------------------------------------- */

/* The keys of ids[0..n) that the current query has not yet taken (at most `room` of them) join
 * its share of the scan, and a key no query of the group took before joins the union (read once,
 * scored once for the whole group). With `share` (a per-query top k), keys join ukeys as they
 * come and each key's place in the union also goes to the query's list (qsel); without, only the
 * stamps are set and union_in_order reads the union back. Returns the keys taken, or -1 out of
 * memory. */
static int64_t take_ids(lists_st *s, int64_t lo, const int32_t *ids, int64_t n, int64_t room, int share) {
    int64_t taken = 0;
    /* a list's keys sit anywhere among the candidates: their stamps are requested ahead */
    enum { PF = 16 };
    key_tag *tag = s->tag;
    const uint8_t mark = s->mark_epoch, seen = s->seen_epoch;
    for (int64_t j = 0; j < n && j < PF; j++) __builtin_prefetch(&tag[ids[j] - lo], 1, 3);
    if (!share) {
        /* a group share only counts and stamps (the union is read back from the stamps in
         * position order): branch-free, as whether a listed key is new is a coin toss. A key
         * this query took is also seen, so both stamps can be written every time. */
        const key_tag now = {seen, mark};
        for (int64_t j = 0; j < n && taken < room; j++) {
            if (j + PF < n) __builtin_prefetch(&tag[ids[j + PF] - lo], 1, 3);
            key_tag *t = &tag[ids[j] - lo];
            taken += t->mark != mark;
            *t = now;
        }
        return taken;
    }
    for (int64_t j = 0; j < n && taken < room; j++) {
        if (j + PF < n) __builtin_prefetch(&tag[ids[j + PF] - lo], 1, 3);
        const int64_t r = ids[j] - lo;
        key_tag *t = &tag[r];
        if (t->mark == mark) continue;
        t->mark = mark;
        if (t->seen != seen) {
            t->seen = seen;
            s->uid[r] = (int32_t)s->n_union;
            s->ukeys[s->n_union++] = ids[j];
        }
        if (s->n_qsel == s->qsel_cap && grow(&s->qsel, &s->qsel_cap, s->n_qsel + 1, sizeof(int32_t))) return -1;
        s->qsel[s->n_qsel++] = s->uid[r];
        taken++;
    }
    return taken;
}

/* Keeps the r keys of the union (ukeys, in position order) whose best shifted logit over the
 * group is highest by the int8 keys, in the same order. Each query goes to int8 too, as two
 * terms (its step, the largest component over 127, and the rounding left, in steps 254 times
 * finer), so the first stage sums integers (AVX512-VNNI where there is one) with the query about
 * as exact as in f32: one int8 term alone changed 2 of 6,096 selects at 15K where f32 queries,
 * and the two terms, changed none. */
static void first_stage(lists_st *s, const attn_kv_view *view, int d, const float *q, int n_q, int64_t lo,
                        int64_t r) {
    const int64_t m = s->n_union;
    int8_t *q8 = s->k8_q;
    float qmid[ATTN_MAX_GROUP], qstep[ATTN_MAX_GROUP], qfine[ATTN_MAX_GROUP], one[ATTN_MAX_GROUP];
    for (int g = 0; g < n_q; g++) {
        const float *qg = q + (size_t)g * d;
        float amax = 0.0f;
        qmid[g] = 0.0f;
        for (int i = 0; i < d; i++) {
            const float a = fabsf(qg[i] * s->k8_scale[i]);
            amax = a > amax ? a : amax;
            qmid[g] += qg[i] * s->k8_scale[d + i];
        }
        qstep[g] = amax > 0.0f ? amax / 127.0f : 1.0f;
        qfine[g] = qstep[g] / 254.0f;
        for (int i = 0; i < d; i++) {
            const float x = qg[i] * s->k8_scale[i] / qstep[g], hi = nearbyintf(x), lo = nearbyintf((x - hi) * 254.0f);
            /* a non-finite query (a model fault) must not reach a float-to-int8 cast */
            q8[(size_t)g * d + i] = (int8_t)(hi >= -127.0f && hi <= 127.0f ? hi : 0.0f);
            q8[(size_t)(n_q + g) * d + i] = (int8_t)(lo >= -127.0f && lo <= 127.0f ? lo : 0.0f);
        }
    }
    /* both terms a chunk at a time, the chunk's rows still in L1 for the second */
    enum { CH = 128, PF = 32 };
    float fine[ATTN_MAX_GROUP * CH];
    const int8_t *rows[CH];
    for (int64_t j = 0; j < m && j < PF; j++) __builtin_prefetch(s->k8 + (size_t)(s->ukeys[j] - lo) * d);
    for (int64_t j0 = 0; j0 < m; j0 += CH) {
        const int64_t nb = m - j0 < CH ? m - j0 : CH;
        for (int64_t j = 0; j < nb; j++) rows[j] = s->k8 + (size_t)(s->ukeys[j0 + j] - lo) * d;
        attn_scores_group_i8(q8, qstep, n_q, d, rows, nb, s->scores + j0, m);
        attn_scores_group_i8(q8 + (size_t)n_q * d, qfine, n_q, d, rows, nb, fine, CH);
        for (int g = 0; g < n_q; g++)
            for (int64_t j = 0; j < nb; j++) s->scores[(size_t)g * m + j0 + j] += fine[g * CH + j];
    }
    for (int64_t i = 0; i < m; i++) { /* marked rows: q.k - q.mid, as the int8 rows give */
        if (s->k8[(size_t)(s->ukeys[i] - lo) * d] != K8_SAT) continue;
        attn_scores_group_ids(view, q, n_q, s->ukeys + i, 1, one, 1);
        for (int g = 0; g < n_q; g++) s->scores[(size_t)g * m + i] = one[g] - qmid[g];
    }
    float *best = s->scores + (size_t)n_q * m;
    idx_group_best(s->scores, n_q, m, best);
    for (int64_t t = 0; t < m; t++) s->kbuf[t] = idx_order_key(best[t]);
    const uint32_t thr = kth_largest(s->kbuf, m, r);
    int64_t above = 0;
    for (int64_t t = 0; t < m; t++) above += s->kbuf[t] > thr;
    int64_t need_eq = r - above, n = 0;
    for (int64_t t = 0; t < m; t++) {
        const uint32_t x = s->kbuf[t];
        if (x > thr || (x == thr && need_eq-- > 0)) s->ukeys[n++] = s->ukeys[t];
    }
    s->n_union = n;
}

/* Writes the positions this call read (seen stamps) to ukeys in increasing order; their count. */
static int64_t union_in_order(lists_st *s, int64_t lo, int64_t nc) {
    const key_tag *tag = s->tag;
    const uint8_t seen = s->seen_epoch;
    int32_t *u = s->ukeys;
    int64_t n = 0;
    for (int64_t r = 0; r < nc; r++) {
        u[n] = (int32_t)(lo + r);
        n += tag[r].seen == seen;
    }
    return n;
}

enum { TOP_CELLS = 8 };

/* Whether cell a comes before cell b: the larger score, the lower index among equals (the
 * order of repeated selection of the best). */
static inline int cell_before(const float *cs, int a, int b) {
    return cs[a] > cs[b] || (cs[a] == cs[b] && a < b);
}

/* The next (up to) TOP_CELLS cells of cs[0..n) in that order after cell `after` (-1: from the
 * first), in one pass; their count. */
static int top_cells(const float *cs, int n, int after, int *top) {
    int m = 0;
    for (int c = 0; c < n; c++) {
        if (after >= 0 && !cell_before(cs, after, c)) continue;
        if (m == TOP_CELLS && !cell_before(cs, c, top[m - 1])) continue;
        int i = m < TOP_CELLS ? m++ : m - 1;
        while (i > 0 && cell_before(cs, c, top[i - 1])) { top[i] = top[i - 1]; i--; }
        top[i] = c;
    }
    return m;
}

/* Takes the keys of the lists of ls in the order of cs[c] = q.c + bias (nearest query cells, or
 * key lists by inner product) until nprobe lists or the scan target (target > 0; the last list
 * may be read in part). Returns the keys taken, or -1 out of memory. */
static int64_t probe_lists(lists_st *s, int64_t lo, const list_set *ls, const float *cs, int nprobe,
                           int64_t target, int share) {
    /* the lists in batches of TOP_CELLS, each batch one pass (a few of up to a thousand are
     * probed) */
    int top[TOP_CELLS], n_top = 0, next = 0;
    int64_t taken = 0;
    for (int probed = 0; probed < ls->n; probed++) {
        if (target > 0 ? taken >= target : probed >= nprobe) break;
        if (next == n_top) {
            n_top = top_cells(cs, ls->n, n_top ? top[n_top - 1] : -1, top);
            next = 0;
        }
        const id_list *l = &ls->lists[top[next++]];
        const int64_t t = take_ids(s, lo, l->ids, l->n, target > 0 ? target - taken : INT64_MAX, share);
        if (t < 0) return -1;
        taken += t;
    }
    return taken;
}

/* cs[g * ls->n + c] = q_g . c + bias[c] for the n_q queries. */
static void score_cells(const list_set *ls, const float *q, int n_q, int d, float *cs) {
    attn_scores_group_rows(q, n_q, d, ls->cent, ls->n, d, cs, ls->n);
    for (int g = 0; g < n_q; g++)
        for (int c = 0; c < ls->n; c++) cs[(size_t)g * ls->n + c] += ls->bias[c];
}

/* Makes the slot's scratch fit nc candidates, n_q queries and k results. */
static int ensure_scratch(lists_st *s, int64_t nc, int n_q, int d, int64_t k) {
    int64_t cap = s->stamp_cap;
    if (nc > cap) {
        int64_t c1 = cap, c2 = cap, c3 = cap, c4 = cap, c5 = cap, c6 = cap;
        if (grow(&s->tag, &c1, nc, sizeof(key_tag)) || grow(&s->ukeys, &c2, nc, sizeof(int32_t)) ||
            grow(&s->sort_tmp, &c3, nc, sizeof(int32_t)) || grow(&s->kbuf, &c4, nc, sizeof(uint32_t)) ||
            grow(&s->uid, &c5, nc, sizeof(int32_t)) || grow(&s->outm, &c6, nc, sizeof(uint8_t)))
            return -1;
        /* fresh stamps must not match a live epoch (epochs start at 1) */
        memset(s->tag + cap, 0, sizeof(key_tag) * (c1 - cap));
        memset(s->outm + cap, 0, c1 - cap);
        s->stamp_cap = c1;
    }
    if (s->k8_scale && grow(&s->k8_q, &s->k8_q_cap, (int64_t)2 * n_q * d, sizeof(int8_t))) return -1;
    if (grow(&s->cell_score, &s->cell_score_cap, (int64_t)n_q * (s->qc.n + s->kl.n), sizeof(float)) ||
        grow(&s->qoff, &s->qoff_cap, n_q + 1, sizeof(int64_t)) ||

        grow(&s->scores, &s->scores_cap, (int64_t)(n_q + 1) * nc, sizeof(float)))
        return -1;
    return 0;
}


/* The group's share when neither top_k nor fraction is given (the engine's default), and how many
 * keys each query scores per key the group reads: on Qwen2.5-0.5B at 16K (all eleven RULER-style
 * tasks) scoring 2% per query and keeping its top 100 lost three needle tasks that 8% per query
 * for a 2% read kept. */
#define LISTS_TARGET_DEFAULT 0.02f
enum { SCAN_PER_READ = 4 };

/* The group's budget in target mode: ceil(share * candidates), at least 1; 0: top_k per query. */
static int64_t group_k_of(const idx_slot *g, const idx_request *req) {
    const int64_t nc = g->hi - g->lo;
    const float share = req->target > 0 ? req->target : req->top_k > 0 || req->fraction > 0 ? 0 : LISTS_TARGET_DEFAULT;
    if (!(share > 0) || nc == 0) return 0;
    int64_t k = (int64_t)ceil((double)share * (double)nc);
    return k < 1 ? 1 : k > nc ? nc : k;
}

static int64_t top_k_of(const idx_slot *g, const idx_request *req) {
    const int64_t nc = g->hi - g->lo, gk = group_k_of(g, req);
    if (gk > 0) return gk;
    int64_t k = req->top_k > 0 ? req->top_k : (int64_t)ceil((double)req->fraction * nc);
    return k > nc ? nc : k;
}

static int64_t lists_max_ids(const idx_set *ix, const idx_slot *g, int n_q, const idx_request *req) {
    const int64_t nc = g->hi - g->lo, gk = group_k_of(g, req);
    if (gk > 0) return gk;
    const int64_t m = (req->gqa == IDX_GQA_MEAN ? 1 : n_q) * top_k_of(g, req);
    return m < nc ? m : nc;
}

/* The group's k best of the m scored keys (rows of the score matrix): each key's best logit over
 * the queries, each query's shifted by its own maximum (a key one query attends strongly beats one
 * every query attends weakly, as in sparq and refined centroids). Writes ids unsorted; returns the
 * count. */
static int64_t group_top(lists_st *s, const idx_slot *g, int n_q, int64_t m, int structured, int64_t k,
                         int32_t *ids) {
    float *best = s->scores + (size_t)n_q * m; /* ensure_scratch made room for n_q + 1 rows */
    idx_group_best(s->scores, n_q, m, best);
    for (int64_t t = 0; t < m; t++) s->kbuf[t] = idx_order_key(best[t]);
    uint32_t thr = 0;
    int64_t need_eq = m;
    if (m > k) {
        thr = kth_largest(s->kbuf, m, k);
        int64_t above = 0;
        for (int64_t t = 0; t < m; t++) above += s->kbuf[t] > thr;
        need_eq = k - above;
    }
    int64_t n = 0;
    for (int64_t t = 0; t < m; t++) {
        const uint32_t x = s->kbuf[t];
        if (x > thr || (x == thr && need_eq-- > 0)) ids[n++] = structured ? s->ukeys[t] : (int32_t)(g->lo + t);
    }
    return n;
}

/* Three passes, so that every key is read and scored once for the whole GQA group: each query
 * takes its share of the scan (the lists it probes, in its own order and to its own target), the
 * union of what they took is scored against all of them in one pass, and each query keeps the
 * top k of its own share (the same keys as scoring them query by query, up to rounding). */
static int64_t lists_select(idx_set *ix, idx_slot *g, int layer, int head, const kv_store *kv,
                            const float *q, int n_q, const idx_request *req, int32_t *ids,
                            int64_t max_ids, int64_t *scanned, int *n_queries) {
    lists_st *s = g->st;
    const int d = ix->p.head_dim;
    const int64_t nc = g->hi - g->lo, k = top_k_of(g, req);
    int64_t n_out = 0;
    if (k == 0) return 0;
    if (req->gqa == IDX_GQA_MEAN && n_q > 1) {
        if (ensure_scratch(s, nc, 1, d, k)) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for select scratch");
        idx_mean_query(q, n_q, d, s->qmean);
        q = s->qmean;
        n_q = 1;
    } else if (ensure_scratch(s, nc, n_q, d, k)) {
        return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for select scratch");
    }
    *n_queries = n_q;
    attn_kv_view view;
    kv_view(kv, layer, head, &view);
    /* one epoch per call for `seen` (keys read) and `outm` (ids returned) */
    if (++s->seen_epoch == 0) { /* wrapped: no old seen or outm stamp may match */
        for (int64_t r = 0; r < s->stamp_cap; r++) s->tag[r].seen = s->outm[r] = 0;
        s->seen_epoch = 1;
    }
    const int nprobe = req->nprobe ? req->nprobe : ix->p.nprobe;
    /* scan target per query: never below k (fewer scored keys cannot give k ids) */
    int64_t target = req->scan > 0 ? (int64_t)ceil((double)req->scan * nc) : 0;
    if (target > 0 && target < k) target = k;
    if (target > 0 && group_k_of(g, req) > 0 && target < SCAN_PER_READ * k) /* target mode */
        target = SCAN_PER_READ * k < nc ? SCAN_PER_READ * k : nc;
    /* hybrid retrieval: key_share of the target goes to the key-space IVF lists */
    const int64_t t_key = s->qc.n > 0 && s->kl.n > 0 ? (int64_t)llround((double)target * ix->p.key_share) : 0;
    const int structured = s->qc.n > 0 || s->kl.n > 0;
    const int share = group_k_of(g, req) == 0; /* per-query top k: each query keeps its share */
    int64_t *qoff = s->qoff;
    if (structured) {
        /* 1. each query's share: the lists it probes, in its order */
        float *cs_kl = s->cell_score, *cs_qc = s->cell_score + (size_t)n_q * s->kl.n;
        if (s->kl.n > 0) score_cells(&s->kl, q, n_q, d, cs_kl);
        if (s->qc.n > 0) score_cells(&s->qc, q, n_q, d, cs_qc);
        s->n_union = s->n_qsel = 0;
        for (int gq = 0; gq < n_q; gq++) {
            qoff[gq] = s->n_qsel;
            if (++s->mark_epoch == 0) {
                for (int64_t r = 0; r < s->stamp_cap; r++) s->tag[r].mark = 0;
                s->mark_epoch = 1;
            }
            int64_t key_taken = 0;
            if (s->kl.n > 0 && (s->qc.n == 0 || target == 0 || t_key > 0))
                key_taken = probe_lists(s, g->lo, &s->kl, cs_kl + (size_t)gq * s->kl.n, nprobe,
                                        s->qc.n > 0 ? t_key : target, share);
            if (key_taken >= 0 && s->qc.n > 0) {
                /* the query cells get what the key lists left of the target */
                const int64_t rest = target > key_taken ? target - key_taken : 0;
                if ((target == 0 || rest > 0) &&
                    probe_lists(s, g->lo, &s->qc, cs_qc + (size_t)gq * s->qc.n, nprobe, rest, share) < 0)
                    key_taken = -1;
            }
            if (key_taken < 0) return idx_fail(ix, IDX_ERR_NOMEM, "out of memory for select scratch");
        }
        qoff[n_q] = s->n_qsel;
        /* a group share reads its union in position order, from the stamps: consecutive keys
         * share a page (and its TLB entry) and the prefetchers follow the stream, where the probe
         * order scattered them (the scoring waited on memory for two thirds of its time) */
        if (!share) {
            s->n_union = union_in_order(s, g->lo, nc);
            *scanned = s->n_union;
            if (s->k8_n == nc && n_q <= ATTN_MAX_GROUP && s->n_union > RESCORE * k) first_stage(s, &view, d, q, n_q, g->lo, RESCORE * k);
        } else {
            *scanned = s->n_union;
        }
        /* 2. the union, each key read once for the group */
        attn_scores_group_ids(&view, q, n_q, s->ukeys, s->n_union, s->scores, s->n_union);
    } else {
        /* oracle, or a slot too small for a structure: every candidate, exactly */
        attn_scores_group_range(&view, q, n_q, g->lo, g->hi, s->scores, nc);
        *scanned = nc;
    }
    /* 3. each query's top k of its share (the k-th largest score by selection, then the keys
     * above it and, in share order, as many equal to it as make k: a heap's answer up to ties);
     * the group's union of them */
    const int64_t ld = structured ? s->n_union : nc;
    if (group_k_of(g, req) > 0) {
        /* the union and the range are in position order, and so are their top ids */
        return group_top(s, g, n_q, ld, structured, k, ids);
    }
    for (int gq = 0; gq < n_q; gq++) {
        const float *sc = s->scores + (size_t)gq * ld;
        const int64_t m = structured ? qoff[gq + 1] - qoff[gq] : nc;
        const int32_t *sh = structured ? s->qsel + qoff[gq] : NULL; /* NULL: every candidate */
        uint32_t thr = 0;
        int64_t need_eq = m; /* keys scoring exactly thr still to take */
        for (int64_t t = 0; t < m; t++) s->kbuf[t] = idx_order_key(sc[sh ? sh[t] : t]);
        if (m > k) {
            thr = kth_largest(s->kbuf, m, k);
            int64_t above = 0;
            for (int64_t t = 0; t < m; t++) above += s->kbuf[t] > thr;
            need_eq = k - above;
        }
        for (int64_t t = 0; t < m; t++) {
            const uint32_t x = s->kbuf[t];
            if (!(x > thr || (x == thr && need_eq-- > 0))) continue;
            const int32_t id = sh ? s->ukeys[sh[t]] : (int32_t)(g->lo + t);
            uint8_t *om = &s->outm[id - g->lo];
            if (*om == s->seen_epoch) continue; /* already returned for another query */
            *om = s->seen_epoch;
            ids[n_out++] = id;
        }
    }
    sort_ids(ids, n_out, g->lo, nc, s->sort_tmp);
    return n_out;
}

static size_t list_set_bytes(const list_set *ls, int d) {
    size_t b = (size_t)ls->n * ((d + 1) * sizeof(float) + sizeof(id_list));
    for (int c = 0; c < ls->n; c++) b += (size_t)ls->lists[c].cap * sizeof(int32_t);
    return b;
}

static size_t lists_bytes(const idx_set *ix, const void *st) {
    const lists_st *s = st;
    const int d = ix->p.head_dim;
    return sizeof *s + list_set_bytes(&s->qc, d) + list_set_bytes(&s->kl, d) +
           (s->tau ? s->qc.n * sizeof(float) : 0) + (size_t)s->stamp_cap * (sizeof(key_tag) + 1 + 4 * sizeof(int32_t)) +
           (size_t)(s->scores_cap + s->cell_score_cap) * sizeof(float) + (size_t)s->qsel_cap * sizeof(int32_t) +
           (size_t)s->k8_cap * d + (s->k8_scale ? (size_t)2 * d * sizeof(float) : 0) +
           (size_t)s->k8_q_cap;
}

/* The methods the three kinds share; ivf and retrieval add a build, retrieval observes. */
#define LISTS_METHODS                                                                              \
    .state_new = lists_new, .state_clear = lists_clear, .state_free = lists_free,                  \
    .max_ids = lists_max_ids, .select = lists_select, .bytes = lists_bytes
#define LISTS_BUILD .build = lists_build, .has_structure = lists_has_structure, .add = lists_add

const idx_ops idx_ops_oracle = {IDX_ORACLE, "oracle", IDX_CAP_SHARED, LISTS_METHODS};
const idx_ops idx_ops_ivf = {IDX_IVF, "ivf", IDX_CAP_SHARED, LISTS_METHODS, LISTS_BUILD};
const idx_ops idx_ops_retrieval = {IDX_RETRIEVAL, "retrieval", IDX_CAP_OBSERVE | IDX_CAP_SHARED,
                                   .obs_rows = retrieval_obs_rows, LISTS_METHODS, LISTS_BUILD};
