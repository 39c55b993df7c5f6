/* The sparq selector against a plain reference in double: with every component (r = d) it picks
 * the exact top keys by the group's best max-shifted logit; with r = d/4 on keys whose energy sits
 * in a few channels (as real keys' outlier channels do) it finds most of them; exactly the budget,
 * ascending and in range, for f32 and f16 stores, one query, a GQA group and its mean; idx_add
 * gives what a fresh build gives; idx_kth_largest agrees with a sort. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "index.h"
#include "kvcache.h"
#include "quant.h"
#include "sel_impl.h"

enum { NL = 2, NH = 2, VD = 4, G = 4 };

/* Keys with 6 heavy channels and light noise elsewhere. K: (n, NH, d). */
static float *make_keys(int n, int d) {
    float *K = malloc(sizeof(float) * n * NH * d);
    for (int i = 0; i < n * NH; i++)
        for (int j = 0; j < d; j++) K[(size_t)i * d + j] = (j % (d / 6 + 1) == 0 ? 3.0f : 0.1f) * rng_normal();
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

static idx_set *make_sparq(int d, int r) {
    idx_params p = idx_params_default();
    const int mask[NL] = {0, 1};
    p.kind = IDX_SPARQ; p.n_layer = NL; p.n_head_kv = NH; p.head_dim = d; p.layer_mask = mask;
    p.sparq_r = r;
    idx_set *ix = NULL;
    CHECK(idx_create(&p, &ix) == IDX_OK, "create sparq");
    return ix;
}

/* The exact reference score of every key in [lo, hi): max over the group of (q.k - max_j q.k)
 * (the attention scale does not change the ranking). */
static void ref_scores(const float *K, int d, int h, int64_t lo, int64_t hi, const float *q, int nq, kv_dtype dt,
                       double *best) {
    for (int64_t j = lo; j < hi; j++) best[j - lo] = -INFINITY;
    double *a = malloc(sizeof(double) * (hi - lo));
    for (int g = 0; g < nq; g++) {
        double m = -INFINITY;
        for (int64_t j = lo; j < hi; j++) {
            double s = 0;
            for (int i = 0; i < d; i++) {
                float x = K[((size_t)j * NH + h) * d + i];
                if (dt == KV_F16) x = krn_f16_to_f32(krn_f32_to_f16(x));
                s += (double)q[g * d + i] * x;
            }
            a[j - lo] = s;
            m = s > m ? s : m;
        }
        for (int64_t j = lo; j < hi; j++) best[j - lo] = fmax(best[j - lo], a[j - lo] - m);
    }
    free(a);
}

static int cmp_desc(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a < b) - (a > b);
}

static int cmp_desc_f(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* idx_kth_largest (histogram bucket, then quickselect) against a sort, on values with ties,
 * both zeros, negatives, infinities and one bucket holding most of them. */
static void check_kth(void) {
    enum { NMAX = 5000 };
    float *x = malloc(sizeof(float) * NMAX), *y = malloc(sizeof(float) * NMAX), *z = malloc(sizeof(float) * NMAX);
    int bad = 0, runs = 0;
    for (int trial = 0; trial < 60; trial++) {
        const int n = 1 + (int)(rng_u01() * (NMAX - 1));
        for (int i = 0; i < n; i++) {
            const int kind = trial % 4;
            float v = kind == 0 ? rng_normal() * 10.0f
                    : kind == 1 ? (float)(int)(rng_u01() * 7) - 3.0f      /* ties, and both zeros */
                    : kind == 2 ? 1.0f + 1e-6f * (float)(int)(rng_u01() * 50) /* one bucket */
                    : -fabsf(rng_normal()) * 30.0f;
            if (kind == 1 && i % 5 == 0) v = -0.0f;
            if (kind == 3 && i == 0) v = -INFINITY;
            x[i] = y[i] = v;
        }
        qsort(y, n, sizeof(float), cmp_desc_f);
        for (int t = 0; t < 5; t++) {
            const int k = t == 0 ? 1 : t == 1 ? n : 1 + (int)(rng_u01() * (n - 1));
            memcpy(z, x, sizeof(float) * n);
            const float got = idx_kth_largest(z, n, k);
            bad += got != y[k - 1];
            runs++;
        }
    }
    CHECK(bad == 0, "idx_kth_largest = the k-th of a descending sort: %d of %d differ", bad, runs);
    free(x); free(y); free(z);
}

int main(void) {
    rng_seed(7);
    const int n = 3000, d = 64;
    float *K = make_keys(n, d);
    float q[G * 64];
    /* the queries large where the keys are (a sign each), small elsewhere */
    for (int g = 0; g < G; g++)
        for (int j = 0; j < d; j++)
            q[g * d + j] = j % (d / 6 + 1) == 0 ? (rng_normal() < 0 ? -2.0f : 2.0f) : 0.3f * rng_normal();
    int32_t ids[4096], ids2[4096];
    double *best = malloc(sizeof(double) * n), *sorted = malloc(sizeof(double) * n);
    for (int dt = 0; dt < 2; dt++) {
        const kv_dtype kt = dt ? KV_F16 : KV_F32;
        kv_store *kv = make_store(K, n, d, kt);
        for (int full = 1; full >= 0; full--) {
            idx_set *ix = make_sparq(d, full ? d : d / 4);
            CHECK(idx_build(ix, 1, 0, kv, 0, n, NULL, 0) == IDX_OK, "build: %s", idx_last_error(ix));
            for (int nq = 1; nq <= G; nq += G - 1) {
                idx_request rq = idx_request_default();
                rq.target = 0.03f;
                const int64_t want = (int64_t)ceil(0.03 * n);
                const int64_t got = idx_select(ix, 1, 0, kv, q, nq, &rq, ids, 4096);
                int ok = got == want;
                for (int64_t i = 1; i < got; i++) ok &= ids[i] > ids[i - 1];
                ok &= got > 0 && ids[0] >= 0 && ids[got - 1] < n;
                CHECK(ok, "%s r=%d nq=%d: %lld ids (budget %lld), ascending, in range", dt ? "f16" : "f32",
                      full ? d : d / 4, nq, (long long)got, (long long)want);
                ref_scores(K, d, 0, 0, n, q, nq, kt, best);
                memcpy(sorted, best, sizeof(double) * n);
                qsort(sorted, n, sizeof(double), cmp_desc);
                const double kth = sorted[want - 1];
                int64_t hit = 0, above = 0;
                for (int64_t i = 0; i < got; i++) {
                    hit += best[ids[i]] >= kth - 1e-3;
                    above += best[ids[i]] >= kth - 1e-3;
                }
                if (full)
                    CHECK(above == got, "r=d (%s, nq=%d): every id among the exact top %lld (%lld of %lld)",
                          dt ? "f16" : "f32", nq, (long long)want, (long long)above, (long long)got);
                else
                    CHECK(hit >= 0.8 * got, "r=d/4 (%s, nq=%d): %lld of %lld ids among the exact top %lld",
                          dt ? "f16" : "f32", nq, (long long)hit, (long long)got, (long long)want);
            }
            /* the mean of the group: one query's answer */
            idx_request rm = idx_request_default();
            rm.target = 0.03f;
            rm.gqa = IDX_GQA_MEAN;
            float qm[64];
            for (int i = 0; i < d; i++) qm[i] = (q[i] + q[d + i] + q[2 * d + i] + q[3 * d + i]) / 4;
            idx_request r1 = rm;
            r1.gqa = IDX_GQA_UNION;
            const int64_t a = idx_select(ix, 1, 0, kv, q, G, &rm, ids, 4096);
            const int64_t b = idx_select(ix, 1, 0, kv, qm, 1, &r1, ids2, 4096);
            CHECK(a == b && a > 0 && !memcmp(ids, ids2, sizeof(int32_t) * a), "gqa mean = the mean query alone");
            idx_free(ix);
        }
        /* idx_add: built on the first 2000, grown to 3000 = built on 3000 */
        idx_set *x1 = make_sparq(d, 0), *x2 = make_sparq(d, 0);
        CHECK(idx_build(x1, 1, 1, kv, 0, 2000, NULL, 0) == IDX_OK && idx_add(x1, 1, 1, kv, n) == IDX_OK &&
              idx_build(x2, 1, 1, kv, 0, n, NULL, 0) == IDX_OK, "build and add");
        idx_request rq = idx_request_default();
        const int64_t a = idx_select(x1, 1, 1, kv, q, G, &rq, ids, 4096);
        const int64_t b = idx_select(x2, 1, 1, kv, q, G, &rq, ids2, 4096);
        CHECK(a == b && a == (int64_t)ceil(0.02 * n) && !memcmp(ids, ids2, sizeof(int32_t) * a),
              "%s: idx_add then select = a fresh build's select (%lld ids, default share 0.02)", dt ? "f16" : "f32",
              (long long)a);
        idx_free(x1);
        idx_free(x2);
        kv_free(kv);
    }
    idx_kind k;
    CHECK(idx_kind_parse("sparq", &k) == IDX_OK && k == IDX_SPARQ && (idx_kind_caps(k) & IDX_CAP_SHARED) &&
          !(idx_kind_caps(k) & IDX_CAP_OBSERVE), "parse sparq; shared pages, no observation");
    free(best);
    free(sorted);
    free(K);
    check_kth();
    return check_summary("test_sparq");
}
