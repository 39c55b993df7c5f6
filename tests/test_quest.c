/* The quest selector against a plain reference (per-page min/max by brute force, bounds in
 * double, pages ranked by a full sort): the same ids for f32 and f16 stores, one query, a GQA
 * union and a mean, odd head dims and page sizes, a partial last page; the bound never below a
 * key's score; whole pages covering the budget and no more; idx_add equal to a fresh build;
 * slots below min_keys built; concurrent selects on different heads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "index.h"
#include "kvcache.h"
#include "quant.h"

enum { NL = 2, NH = 2, VD = 4 }; /* layer 1 of the store holds the keys, on NH KV heads */

/* Keys in segments of random length (not aligned to pages), each around its own mean, so page
 * bounds differ as they do on real keys rather than all reaching +-1. K: (n, NH, d). */
static float *make_keys(int n, int d) {
    float *K = malloc(sizeof(float) * n * NH * d), *mu = malloc(sizeof(float) * NH * d);
    for (int i = 0, left = 0; i < n; i++, left--) {
        if (left <= 0) {
            for (int j = 0; j < NH * d; j++) mu[j] = rng_normal();
            left = 5 + rng_int(60);
        }
        for (int j = 0; j < NH * d; j++) K[(size_t)i * NH * d + j] = mu[j] + 0.5f * rng_normal();
    }
    free(mu);
    return K;
}

static kv_store *make_store(const float *K, int n, int d, kv_dtype dt) {
    kv_params p = kv_params_default();
    p.n_layer = NL; p.n_head_kv = NH; p.head_dim = d; p.v_dim = VD; p.max_tokens = n; p.dtype = dt;
    p.page_size = 32;
    kv_store *s = NULL;
    float *V = calloc((size_t)n * NH * VD, sizeof(float));
    CHECK(kv_create(&p, &s) == KV_OK, "store");
    CHECK(kv_append(s, 1, K, V, n) == KV_OK, "append");
    free(V);
    return s;
}

static idx_set *make_quest(int d, int page, int min_keys) {
    idx_params p = idx_params_default();
    const int mask[NL] = {0, 1};
    p.kind = IDX_QUEST; p.n_layer = NL; p.n_head_kv = NH; p.head_dim = d; p.layer_mask = mask;
    p.quest_page = page;
    p.min_keys = min_keys;
    idx_set *ix = NULL;
    CHECK(idx_create(&p, &ix) == IDX_OK, "create quest");
    return ix;
}

/* Key j of head h as the store returns it (rounded through f16 for an f16 store). */
static double key_at(const float *K, int d, int h, int64_t j, int i, kv_dtype dt) {
    float x = K[((size_t)j * NH + h) * d + i];
    return dt == KV_F16 ? krn_f16_to_f32(krn_f32_to_f16(x)) : x;
}

/* The reference bounds of head h over [lo, hi) in pages of P: (n_pages, 2, d), min then max. */
static double *ref_bounds(const float *K, int d, int h, int64_t lo, int64_t hi, int P, kv_dtype dt, int64_t *np) {
    *np = (hi - lo + P - 1) / P;
    double *b = malloc(sizeof(double) * *np * 2 * d);
    for (int64_t j = 0; j < *np; j++)
        for (int i = 0; i < d; i++) {
            double mn = INFINITY, mx = -INFINITY;
            for (int64_t pos = lo + j * P; pos < lo + (j + 1) * P && pos < hi; pos++) {
                const double x = key_at(K, d, h, pos, i, dt);
                mn = x < mn ? x : mn;
                mx = x > mx ? x : mx;
            }
            b[(j * 2) * d + i] = mn;
            b[(j * 2 + 1) * d + i] = mx;
        }
    return b;
}

static double ref_bound(const double *b, int64_t j, const float *q, int d) {
    double a = 0;
    for (int i = 0; i < d; i++) {
        const double lo = q[i] * b[(j * 2) * d + i], hi = q[i] * b[(j * 2 + 1) * d + i];
        a += lo > hi ? lo : hi;
    }
    return a;
}

typedef struct {
    double s;
    int64_t j;
} ref_ent;

static int cmp_ref(const void *a, const void *b) {
    const ref_ent *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? 1 : -1;
    return (x->j > y->j) - (x->j < y->j);
}

/* Pages per query for the request, as the selector documents it. */
static int64_t ref_pages(int64_t nc, int P, const idx_request *r) {
    const double share = r->target > 0 ? r->target : 0.02;
    int64_t keys = (int64_t)ceil(share * (double)nc);
    const int64_t fl = r->top_k > 0 ? r->top_k : (int64_t)ceil((double)r->fraction * (double)nc);
    if (keys < fl) keys = fl;
    if (keys > nc) keys = nc;
    return (keys + P - 1) / P;
}

/* The reference selection: each query (or the mean query) ranks every page by a full sort and
 * takes the first k; the union's keys, ascending, clipped to hi. Returns the count. */
static int64_t ref_select(const double *b, int64_t np, int64_t lo, int64_t hi, int P, int d, const float *q,
                          int n_q, const idx_request *r, int32_t *ids) {
    float qm[256];
    if (r->gqa == IDX_GQA_MEAN && n_q > 1) {
        for (int i = 0; i < d; i++) {
            float a = 0;
            for (int g = 0; g < n_q; g++) a += q[g * d + i];
            qm[i] = a / n_q;
        }
        q = qm;
        n_q = 1;
    }
    const int64_t k = ref_pages(hi - lo, P, r);
    unsigned char *take = calloc(np, 1);
    ref_ent *e = malloc(sizeof(ref_ent) * np);
    for (int g = 0; g < n_q; g++) {
        for (int64_t j = 0; j < np; j++) e[j] = (ref_ent){ref_bound(b, j, q + g * d, d), j};
        qsort(e, np, sizeof *e, cmp_ref);
        for (int64_t t = 0; t < k && t < np; t++) take[e[t].j] = 1;
    }
    int64_t n = 0;
    for (int64_t j = 0; j < np; j++)
        for (int64_t pos = lo + j * P; take[j] && pos < lo + (j + 1) * P && pos < hi; pos++) ids[n++] = (int32_t)pos;
    free(take);
    free(e);
    return n;
}

static int same_ids(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, sizeof(int32_t) * na));
}

static int valid_ids(const int32_t *ids, int64_t n, int64_t lo, int64_t hi) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < lo || ids[i] >= hi || (i > 0 && ids[i] <= ids[i - 1])) return 0;
    return 1;
}

/* The pages (of P from lo) the ids fall in, counted; -1 when a page is present only in part
 * (a chosen page is read in full up to hi). */
static int64_t pages_of(const int32_t *ids, int64_t n, int64_t lo, int64_t hi, int P) {
    int64_t pages = 0;
    for (int64_t i = 0; i < n;) {
        const int64_t j = (ids[i] - lo) / P, a = lo + j * P, e = a + P < hi ? a + P : hi;
        for (int64_t pos = a; pos < e; pos++, i++)
            if (i >= n || ids[i] != pos) return -1;
        pages++;
    }
    return pages;
}

/* Differential test on one shape: every request form against the reference, the bound property,
 * the budget in pages. */
static void vs_reference(int d, int P, kv_dtype dt) {
    const int n = 3111, G = 4;
    const int64_t lo = 100, hi = 3003; /* 2903 candidates: a partial last page for P = 16, 7, 64 */
    float *K = make_keys(n, d), *Q = malloc(sizeof(float) * G * d);
    kv_store *kv = make_store(K, n, d, dt);
    idx_set *ix = make_quest(d, P, 1024);
    int32_t *ids = malloc(sizeof(int32_t) * n), *ref = malloc(sizeof(int32_t) * n);
    for (int h = 0; h < NH; h++)
        CHECK(idx_build(ix, 1, h, kv, lo, hi, NULL, 0) == IDX_OK, "build quest: %s", idx_last_error(ix));
    const int Pe = P ? P : 16;
    for (int h = 0; h < NH; h++) {
        int64_t np;
        double *b = ref_bounds(K, d, h, lo, hi, Pe, dt, &np);
        for (int trial = 0; trial < 6; trial++) {
            /* queries near a key of the range (what attention looks like), or random */
            for (int g = 0; g < G; g++) {
                const int64_t near = lo + rng_int((int)(hi - lo));
                for (int i = 0; i < d; i++)
                    Q[g * d + i] = (trial & 1 ? K[((size_t)near * NH + h) * d + i] : 0.0f) + rng_normal();
            }
            /* the bound: never below the score of a key of its page */
            int bound_ok = 1;
            for (int g = 0; g < G; g++)
                for (int64_t j = 0; j < np; j++) {
                    const double ub = ref_bound(b, j, Q + g * d, d);
                    for (int64_t pos = lo + j * Pe; pos < lo + (j + 1) * Pe && pos < hi; pos++) {
                        double s = 0;
                        for (int i = 0; i < d; i++) s += (double)Q[g * d + i] * key_at(K, d, h, pos, i, dt);
                        bound_ok &= ub >= s - 1e-9 * (fabs(s) + 1);
                    }
                }
            CHECK(bound_ok, "page bound >= every key's score (d %d P %d dtype %d)", d, P, dt);
            const struct { int top_k; float fraction, target; int n_q; idx_gqa gqa; } req[] = {
                {100, 0, 0, 1, IDX_GQA_UNION},      /* default share 0.02: 59 keys, top_k 100 wins */
                {10, 0, 0.05f, 1, IDX_GQA_UNION},   /* target: 146 keys */
                {1, 0, 0.002f, 1, IDX_GQA_UNION},   /* 6 keys: one page */
                {0, 0.1f, 0.01f, 1, IDX_GQA_UNION}, /* top_k 0: the fraction is the floor */
                {50, 0, 0.03f, G, IDX_GQA_UNION},
                {50, 0, 0.03f, G, IDX_GQA_MEAN},
                {1, 0, 1.0f, G, IDX_GQA_UNION},     /* everything */
            };
            for (size_t t = 0; t < sizeof req / sizeof req[0]; t++) {
                idx_request r = idx_request_default();
                r.top_k = req[t].top_k; r.fraction = req[t].fraction; r.target = req[t].target; r.gqa = req[t].gqa;
                const int nq = req[t].n_q;
                const int64_t cap = idx_max_ids(ix, 1, h, nq, &r);
                const int64_t m = idx_select(ix, 1, h, kv, Q, nq, &r, ids, n);
                const int64_t mr = ref_select(b, np, lo, hi, Pe, d, Q, nq, &r, ref);
                CHECK(same_ids(ids, m, ref, mr) && valid_ids(ids, m, lo, hi) && m <= cap,
                      "quest == reference (d %d P %d dtype %d head %d trial %d request %zu: %lld ids, reference "
                      "%lld, capacity %lld)", d, P, dt, h, trial, t, (long long)m, (long long)mr, (long long)cap);
                /* the budget: whole pages, enough for it and not one more, per query */
                const int64_t k = ref_pages(hi - lo, Pe, &r), pg = pages_of(ids, m, lo, hi, Pe);
                const int64_t qn = r.gqa == IDX_GQA_MEAN ? 1 : nq;
                if (nq == 1 || r.gqa == IDX_GQA_MEAN)
                    CHECK(pg == (k < np ? k : np), "request %zu reads %lld whole pages, budget %lld", t,
                          (long long)pg, (long long)k);
                else
                    CHECK(pg >= k && pg <= qn * k, "union of %d reads %lld pages, each query %lld", nq,
                          (long long)pg, (long long)k);
            }
            /* the union holds each query's own pages; the mean is one query's selection */
            idx_request r = idx_request_default();
            r.target = 0.03f;
            const int64_t mu = idx_select(ix, 1, h, kv, Q, G, &r, ref, n);
            int sub = 1;
            for (int g = 0; g < G; g++) {
                const int64_t m1 = idx_select(ix, 1, h, kv, Q + g * d, 1, &r, ids, n);
                for (int64_t i = 0, u = 0; i < m1; i++) {
                    while (u < mu && ref[u] < ids[i]) u++;
                    sub &= u < mu && ref[u] == ids[i];
                }
            }
            CHECK(sub, "the union contains every query's own selection");
            float qm[256];
            for (int i = 0; i < d; i++) qm[i] = (Q[i] + Q[d + i] + Q[2 * d + i] + Q[3 * d + i]) / 4;
            r.gqa = IDX_GQA_MEAN;
            const int64_t mm = idx_select(ix, 1, h, kv, Q, G, &r, ids, n);
            r.gqa = IDX_GQA_UNION;
            const int64_t m1 = idx_select(ix, 1, h, kv, qm, 1, &r, ref, n);
            CHECK(same_ids(ids, mm, ref, m1), "mean of the group == the mean query alone");
        }
        free(b);
    }
    idx_stats st;
    idx_stats_reset(ix);
    idx_request r = idx_request_default();
    idx_select(ix, 1, 0, kv, Q, G, &r, ids, n);
    idx_stats_get(ix, &st);
    CHECK(st.selects == 1 && st.queries == G && st.scanned == 2 * G * ((hi - lo + Pe - 1) / Pe) &&
          st.candidates == hi - lo, "stats: %lld scanned", (long long)st.scanned);
    Q[3] = NAN;
    CHECK(idx_select(ix, 1, 0, kv, Q, G, &r, ids, n) == IDX_ERR_PARAM, "non-finite query refused");
    free(K); free(Q); free(ids); free(ref);
    idx_free(ix);
    kv_free(kv);
}

/* idx_add after a build (a partial last page that grows, single keys, whole pages) selects as a
 * fresh build over the longer range; an empty build then an add; a slot far below min_keys. */
static void add_and_small(kv_dtype dt) {
    const int n = 2000, d = 64, P = 16;
    float *K = make_keys(n, d), Q[2 * 64];
    kv_store *kv = make_store(K, n, d, dt);
    int32_t *a = malloc(sizeof(int32_t) * n), *b = malloc(sizeof(int32_t) * n);
    idx_set *grown = make_quest(d, P, 1024), *fresh = make_quest(d, P, 1024);
    const int64_t lo = 128;
    CHECK(idx_build(grown, 1, 0, kv, lo, lo + 501, NULL, 0) == IDX_OK, "build 501 keys (below min_keys)");
    const int64_t steps[] = {lo + 502, lo + 510, lo + 512, lo + 513, lo + 700, lo + 1001, 1999};
    int same = 1;
    for (size_t t = 0; t < sizeof steps / sizeof steps[0]; t++) {
        CHECK(idx_add(grown, 1, 0, kv, steps[t]) == IDX_OK, "add to %lld: %s", (long long)steps[t], idx_last_error(grown));
        CHECK(idx_build(fresh, 1, 0, kv, lo, steps[t], NULL, 0) == IDX_OK, "fresh build");
        for (int trial = 0; trial < 8; trial++) {
            for (int i = 0; i < 2 * d; i++) Q[i] = rng_normal();
            idx_request r = idx_request_default();
            r.top_k = 20;
            r.target = trial < 4 ? 0.05f : 0.3f;
            const int64_t ma = idx_select(grown, 1, 0, kv, Q, 2, &r, a, n);
            const int64_t mb = idx_select(fresh, 1, 0, kv, Q, 2, &r, b, n);
            same &= ma > 0 && same_ids(a, ma, b, mb) && valid_ids(a, ma, lo, steps[t]);
        }
    }
    CHECK(same, "idx_add == a fresh build over the longer range (dtype %d)", dt);

    /* an empty range builds nothing; the first add builds */
    idx_request r = idx_request_default();
    r.top_k = 16;
    r.target = 0.01f;
    CHECK(idx_build(grown, 1, 1, kv, 300, 300, NULL, 0) == IDX_OK && idx_select(grown, 1, 1, kv, Q, 1, &r, a, n) == 0,
          "empty range: no ids");
    CHECK(idx_add(grown, 1, 1, kv, 340) == IDX_OK, "add to an empty slot");
    int64_t m = idx_select(grown, 1, 1, kv, Q, 1, &r, a, n);
    CHECK(m == 16 && valid_ids(a, m, 300, 340) && pages_of(a, m, 300, 340, P) == 1, "one page of 40 keys (%lld)",
          (long long)m);
    /* 40 candidates, min_keys 1024: still pages (the other kinds would return them all) */
    CHECK(idx_build(fresh, 1, 1, kv, 300, 340, NULL, 0) == IDX_OK, "small build");
    const int64_t m2 = idx_select(fresh, 1, 1, kv, Q, 1, &r, b, n);
    CHECK(same_ids(a, m, b, m2), "small slot: pages, as after the add");
    free(K); free(a); free(b);
    idx_free(grown);
    idx_free(fresh);
    kv_free(kv);
}

/* The partial last page, ranked first (its keys alone are large along dimension 0), is read
 * up to hi and not beyond; with everything asked for, every candidate once. */
static void partial_page(kv_dtype dt) {
    const int n = 120, d = 64, P = 16;
    const int64_t lo = 3, hi = 103; /* pages of 16 from 3: the last is [99, 103) */
    float *K = malloc(sizeof(float) * n * NH * d), q[64] = {1.0f};
    for (int i = 0; i < n * NH * d; i++) K[i] = 0.1f * rng_normal();
    for (int j = 99; j < n; j++) K[(size_t)j * NH * d] = 10.0f;
    kv_store *kv = make_store(K, n, d, dt);
    idx_set *ix = make_quest(d, P, 0);
    int32_t ids[128];
    CHECK(idx_build(ix, 1, 0, kv, lo, hi, NULL, 0) == IDX_OK, "build");
    idx_request r = idx_request_default();
    r.top_k = 1;
    r.target = 0.01f;
    int64_t m = idx_select(ix, 1, 0, kv, q, 1, &r, ids, 128);
    CHECK(m == 4 && ids[0] == 99 && ids[3] == 102, "the partial last page alone: %lld ids from %d", (long long)m,
          m > 0 ? ids[0] : -1);
    r.target = 1.0f;
    m = idx_select(ix, 1, 0, kv, q, 1, &r, ids, 128);
    CHECK(m == hi - lo && ids[0] == lo && ids[m - 1] == hi - 1 && valid_ids(ids, m, lo, hi), "every candidate once");
    free(K);
    idx_free(ix);
    kv_free(kv);
}

/* Selects on different heads at once (each slot its own scratch) give the serial answers. */
static void concurrent(void) {
    const int n = 4000, d = 128, R = 64;
    float *K = make_keys(n, d), *Q = malloc(sizeof(float) * R * 2 * d);
    for (int i = 0; i < R * 2 * d; i++) Q[i] = rng_normal();
    kv_store *kv = make_store(K, n, d, KV_F32);
    idx_set *ix = make_quest(d, 0, 1024);
    for (int h = 0; h < NH; h++) idx_build(ix, 1, h, kv, 64, n - 64, NULL, 0);
    idx_request r = idx_request_default();
    const int64_t cap = idx_max_ids(ix, 1, 0, 2, &r);
    int32_t *ser = malloc(sizeof(int32_t) * R * NH * cap), *par = malloc(sizeof(int32_t) * R * NH * cap);
    int64_t ns[R * NH], np[R * NH];
    for (int t = 0; t < R * NH; t++)
        ns[t] = idx_select(ix, 1, t % NH, kv, Q + (t / NH) * 2 * d, 2, &r, ser + t * cap, cap);
    #pragma omp parallel for num_threads(NH) schedule(static, 1)
    for (int h = 0; h < NH; h++)
        for (int t = h; t < R * NH; t += NH)
            np[t] = idx_select(ix, 1, h, kv, Q + (t / NH) * 2 * d, 2, &r, par + t * cap, cap);
    int same = 1;
    for (int t = 0; t < R * NH; t++) same &= ns[t] > 0 && same_ids(ser + t * cap, ns[t], par + t * cap, np[t]);
    CHECK(same, "concurrent selects on two heads == serial");
    free(K); free(Q); free(ser); free(par);
    idx_free(ix);
    kv_free(kv);
}

int main(void) {
    rng_seed(0x5eed0f0e57ull);
    idx_kind k;
    CHECK(idx_kind_parse("quest", &k) == IDX_OK && k == IDX_QUEST && !strcmp(idx_kind_name(k), "quest"), "parse quest");
    CHECK((idx_kind_caps(IDX_QUEST) & IDX_CAP_SHARED) && !(idx_kind_caps(IDX_QUEST) & IDX_CAP_OBSERVE),
          "quest: shared pages, no prefill queries");
    for (int dt = 0; dt < 2; dt++) {
        vs_reference(64, 16, (kv_dtype)dt);
        vs_reference(128, 0, (kv_dtype)dt); /* 0: the default page of 16 */
        vs_reference(80, 7, (kv_dtype)dt);
        vs_reference(256, 64, (kv_dtype)dt);
        add_and_small((kv_dtype)dt);
        partial_page((kv_dtype)dt);
    }
    concurrent();
    return check_summary("test_quest");
}
