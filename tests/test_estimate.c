/* The selectors' estimates of the keys they leave out (idx_select_est) against a plain reference
 * in double. Where the estimate's assumptions hold exactly (sparq with every component and values
 * constant per block; centroids over tight clusters whose members share a value) it must equal
 * the left-out keys' true log mass (relative to the returned keys') and weighted mean value; on a
 * diffuse scene with approximate logits, merging it must bring the attention output closer to
 * dense than the returned keys alone. Kinds without the capability answer -inf. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "index.h"
#include "kvcache.h"
#include "quant.h"

enum { NL = 2, NH = 1, VD = 8, G = 4, D = 64, N = 4096, MAXID = 4096 };

static kv_store *make_store(const float *K, const float *V, int n) {
    kv_params p = kv_params_default();
    p.n_layer = NL; p.n_head_kv = NH; p.head_dim = D; p.v_dim = VD; p.max_tokens = n;
    p.page_size = 64;
    kv_store *s = NULL;
    CHECK(kv_create(&p, &s) == KV_OK, "store");
    CHECK(kv_append(s, 1, K, V, n) == KV_OK, "append");
    return s;
}

static idx_set *make_set(idx_kind kind, int r) {
    idx_params p = idx_params_default();
    const int mask[NL] = {0, 1};
    p.kind = kind; p.n_layer = NL; p.n_head_kv = NH; p.head_dim = D; p.layer_mask = mask;
    p.sparq_r = r;
    p.group_size = G;
    p.min_keys = 0;
    idx_set *ix = NULL;
    CHECK(idx_create(&p, &ix) == IDX_OK, "create %s", idx_kind_name(kind));
    return ix;
}

/* Per query: the exact attention over all keys (out_d), over the ids only (out_i, lse_i), and the
 * left-out keys' log mass relative to the ids' (rel) with their weighted mean value (vr). Keys as
 * the selector sees them: f16-rounded when kr is set (sparq's copy). */
typedef struct {
    double out_d[G][VD], out_i[G][VD], vr[G][VD], lse_i[G], lse_d[G], rel[G];
} ref_t;

static void reference(const float *K, const float *V, const float *q, const int32_t *ids, int64_t n, int kr, ref_t *r) {
    static char in[N];
    memset(in, 0, sizeof in);
    for (int64_t i = 0; i < n; i++) in[ids[i]] = 1;
    const double s = 1.0 / sqrt((double)D);
    static double l[N];
    for (int g = 0; g < G; g++) {
        double m = -INFINITY;
        for (int j = 0; j < N; j++) {
            double a = 0;
            for (int c = 0; c < D; c++) {
                float x = K[(size_t)j * D + c];
                if (kr) x = krn_f16_to_f32(krn_f32_to_f16(x));
                a += (double)q[g * D + c] * x;
            }
            l[j] = a * s;
            m = l[j] > m ? l[j] : m;
        }
        double zs = 0, zr = 0, od[VD] = {0}, oi[VD] = {0}, orr[VD] = {0};
        for (int j = 0; j < N; j++) {
            const double w = exp(l[j] - m);
            for (int c = 0; c < VD; c++) {
                od[c] += w * V[(size_t)j * VD + c];
                if (in[j]) oi[c] += w * V[(size_t)j * VD + c];
                else orr[c] += w * V[(size_t)j * VD + c];
            }
            if (in[j]) zs += w;
            else zr += w;
        }
        for (int c = 0; c < VD; c++) {
            r->out_d[g][c] = od[c] / (zs + zr);
            r->out_i[g][c] = oi[c] / zs;
            r->vr[g][c] = orr[c] / zr;
        }
        r->lse_i[g] = m + log(zs);
        r->lse_d[g] = m + log(zs + zr);
        r->rel[g] = log(zr / zs);
    }
}

/* Relative L2 error of out (G x VD) against dense, averaged over the queries. */
static double out_err(double o[G][VD], const ref_t *r) {
    double e = 0;
    for (int g = 0; g < G; g++) {
        double a = 0, b = 0;
        for (int c = 0; c < VD; c++) {
            a += (o[g][c] - r->out_d[g][c]) * (o[g][c] - r->out_d[g][c]);
            b += r->out_d[g][c] * r->out_d[g][c];
        }
        e += sqrt(a / b);
    }
    return e / G;
}

/* The ids' exact output merged with the estimate by log-sum-exp, as the plan merges it. */
static void merged(const ref_t *r, const idx_estimate *est, double o[G][VD]) {
    for (int g = 0; g < G; g++) {
        const double a = r->lse_i[g], b = r->lse_i[g] + est->rel[g];
        const double m = a > b ? a : b, wa = exp(a - m), wb = isfinite(b) ? exp(b - m) : 0;
        for (int c = 0; c < VD; c++) o[g][c] = (wa * r->out_i[g][c] + wb * est->v[g * VD + c]) / (wa + wb);
    }
}

int main(void) {
    rng_seed(11);
    float *K = malloc(sizeof(float) * N * D), *V = malloc(sizeof(float) * N * VD);
    float q[G * D], rel[G], ev[G * VD];
    idx_estimate est = {rel, ev};
    int32_t *ids = malloc(sizeof(int32_t) * MAXID);
    ref_t *r = malloc(sizeof *r);

    /* 1. sparq, every component, values constant per block of IDX_EST_BLOCK keys: exact */
    for (int j = 0; j < N; j++)
        for (int c = 0; c < D; c++) K[(size_t)j * D + c] = rng_normal();
    for (int b = 0; b < N / IDX_EST_BLOCK; b++) {
        float vb[VD];
        for (int c = 0; c < VD; c++) vb[c] = rng_normal();
        for (int j = b * IDX_EST_BLOCK; j < (b + 1) * IDX_EST_BLOCK; j++) memcpy(V + (size_t)j * VD, vb, sizeof vb);
    }
    for (int i = 0; i < G * D; i++) q[i] = 1.5f * rng_normal();
    kv_store *kv = make_store(K, V, N);
    idx_set *ix = make_set(IDX_SPARQ, D);
    CHECK(idx_build(ix, 1, 0, kv, 0, N, NULL, 0) == IDX_OK, "sparq build: %s", idx_last_error(ix));
    idx_request rq = idx_request_default();
    rq.target = 0.02f;
    int64_t n = idx_select_est(ix, 1, 0, kv, q, G, &rq, ids, MAXID, &est);
    CHECK(n == (int64_t)ceil(0.02 * N), "sparq: %lld ids", (long long)n);
    reference(K, V, q, ids, n, 1, r);
    double erel = 0, ev_max = 0;
    for (int g = 0; g < G; g++) {
        erel = fmax(erel, fabs(rel[g] - r->rel[g]));
        for (int c = 0; c < VD; c++) ev_max = fmax(ev_max, fabs(ev[g * VD + c] - r->vr[g][c]));
    }
    CHECK(erel < 2e-3 && ev_max < 2e-3, "sparq r=d, block-constant values: relative log mass within 2e-3 (%.2g), "
          "left-out mean value within 2e-3 (%.2g)", erel, ev_max);
    /* the mean-query selection still estimates for each query of the group */
    idx_request rm = rq;
    rm.gqa = IDX_GQA_MEAN;
    n = idx_select_est(ix, 1, 0, kv, q, G, &rm, ids, MAXID, &est);
    reference(K, V, q, ids, n, 1, r);
    erel = 0;
    for (int g = 0; g < G; g++) erel = fmax(erel, fabs(rel[g] - r->rel[g]));
    CHECK(n > 0 && erel < 2e-3, "sparq, GQA mean: each query's estimate exact (%.2g)", erel);
    idx_free(ix);

    /* 2. sparq, a quarter of the components, a diffuse scene with smoothly varying values: the
     * merged estimate brings the output closer to dense than the ids alone */
    for (int j = 0; j < N; j++) {
        for (int c = 0; c < VD; c++)
            V[(size_t)j * VD + c] = sinf((float)j / 300.0f + (float)c) + 0.3f * rng_normal();
    }
    for (int i = 0; i < G * D; i++) q[i] = 0.6f * rng_normal();
    kv_free(kv);
    kv = make_store(K, V, N);
    ix = make_set(IDX_SPARQ, D / 4);
    CHECK(idx_build(ix, 1, 0, kv, 0, N, NULL, 0) == IDX_OK, "sparq build");
    n = idx_select_est(ix, 1, 0, kv, q, G, &rq, ids, MAXID, &est);
    reference(K, V, q, ids, n, 0, r);
    double o[G][VD];
    merged(r, &est, o);
    const double e_ids = out_err(r->out_i, r), e_est = out_err(o, r);
    printf("sparq r=d/4, diffuse scene, %lld of %d keys: output error %.3f alone, %.3f with the estimate\n",
           (long long)n, N, e_ids, e_est);
    CHECK(e_est < 0.5 * e_ids, "sparq r=d/4, diffuse: output error with the estimate %.3f, under half the ids' "
          "alone %.3f", e_est, e_ids);
    erel = 0;
    for (int g = 0; g < G; g++) erel = fmax(erel, fabs(rel[g] - r->rel[g]));
    printf("sparq r=d/4: relative log mass off by %.3f at most\n", erel);
    CHECK(erel < 0.7, "sparq r=d/4: relative log mass within 0.7 of the truth (%.3f)", erel);
    idx_free(ix);

    /* 3. centroids over tight clusters whose members share a value: the estimation zone is the
     * left-out clusters' truth (centroid logit = member logit, up to the spread) */
    enum { NC = 64 };
    float cen[NC][D], cval[NC][VD];
    for (int k = 0; k < NC; k++) {
        for (int c = 0; c < D; c++) cen[k][c] = rng_normal();
        for (int c = 0; c < VD; c++) cval[k][c] = rng_normal();
    }
    for (int j = 0; j < N; j++) {
        const int k = rng_int(NC);
        for (int c = 0; c < D; c++) K[(size_t)j * D + c] = cen[k][c] + 0.01f * rng_normal();
        memcpy(V + (size_t)j * VD, cval[k], sizeof cval[k]);
    }
    for (int i = 0; i < G * D; i++) q[i] = 0.8f * rng_normal();
    kv_free(kv);
    kv = make_store(K, V, N);
    ix = make_set(IDX_CENTROIDS, 0);
    float obs[8 * G * D];
    for (int t = 0; t < 8; t++) memcpy(obs + (size_t)t * G * D, q, sizeof q);
    CHECK(idx_build(ix, 1, 0, kv, 0, N, obs, 8 * G) == IDX_OK, "centroids build: %s", idx_last_error(ix));
    rq.target = 0.05f;
    n = idx_select_est(ix, 1, 0, kv, q, G, &rq, ids, MAXID, &est);
    CHECK(n > 0 && n < N, "centroids: %lld ids", (long long)n);
    reference(K, V, q, ids, n, 0, r);
    erel = 0, ev_max = 0;
    for (int g = 0; g < G; g++) {
        erel = fmax(erel, fabs(rel[g] - r->rel[g]));
        for (int c = 0; c < VD; c++) ev_max = fmax(ev_max, fabs(ev[g * VD + c] - r->vr[g][c]));
    }
    CHECK(erel < 0.02 && ev_max < 0.02, "centroids, tight clusters: relative log mass within 0.02 (%.3g), left-out "
          "mean value within 0.02 (%.3g)", erel, ev_max);
    /* refine: the clusters for 4x the share as candidates, the share's best keys by exact score */
    {
        int32_t *wide = malloc(sizeof(int32_t) * MAXID);
        idx_request rw = rq;
        rw.target = 0.2f;
        const int64_t nw = idx_select(ix, 1, 0, kv, q, G, &rw, wide, MAXID);
        idx_request rf = rq;
        rf.refine = 4;
        n = idx_select_est(ix, 1, 0, kv, q, G, &rf, ids, MAXID, &est);
        const int64_t want = (int64_t)ceil(0.05 * N);
        /* every returned id is a candidate, and outranks every candidate left out */
        static double best[N];
        static char got[N];
        memset(got, 0, sizeof got);
        for (int j = 0; j < N; j++) best[j] = -INFINITY;
        for (int g = 0; g < G; g++) {
            double m = -INFINITY, l[N];
            for (int64_t i = 0; i < nw; i++) {
                double a = 0;
                for (int c = 0; c < D; c++) a += (double)q[g * D + c] * K[(size_t)wide[i] * D + c];
                l[wide[i]] = a;
                m = a > m ? a : m;
            }
            for (int64_t i = 0; i < nw; i++) best[wide[i]] = fmax(best[wide[i]], l[wide[i]] - m);
        }
        int sub_ok = 1;
        double lo_in = INFINITY, hi_out = -INFINITY;
        for (int64_t i = 0; i < n; i++) {
            got[ids[i]] = 1;
            sub_ok &= isfinite(best[ids[i]]) && (i == 0 || ids[i] > ids[i - 1]);
            lo_in = fmin(lo_in, best[ids[i]]);
        }
        for (int64_t i = 0; i < nw; i++)
            if (!got[wide[i]]) hi_out = fmax(hi_out, best[wide[i]]);
        CHECK(n == want && sub_ok && lo_in >= hi_out - 1e-3, "centroids refine 4: %lld ids (want %lld), ascending, "
              "among the %lld candidates of the wide select, the best by exact score (%.4f >= %.4f)",
              (long long)n, (long long)want, (long long)nw, lo_in, hi_out);
        reference(K, V, q, ids, n, 0, r);
        erel = 0;
        for (int g = 0; g < G; g++) erel = fmax(erel, fabs(rel[g] - r->rel[g]));
        CHECK(erel < 0.05, "centroids refine 4: the estimate counts the partly returned clusters' rest (%.3g)", erel);
        free(wide);
    }
    /* keys added after the build: an exact tail, counted exactly among the returned keys */
    kv_free(kv);
    idx_free(ix);
    kv = make_store(K, V, N);
    ix = make_set(IDX_CENTROIDS, 0);
    CHECK(idx_build(ix, 1, 0, kv, 0, N - 200, obs, 8 * G) == IDX_OK && idx_add(ix, 1, 0, kv, N) == IDX_OK,
          "centroids build and add");
    n = idx_select_est(ix, 1, 0, kv, q, G, &rq, ids, MAXID, &est);
    reference(K, V, q, ids, n, 0, r);
    erel = 0;
    for (int g = 0; g < G; g++) erel = fmax(erel, fabs(rel[g] - r->rel[g]));
    CHECK(n > 200 && ids[n - 1] == N - 1 && erel < 0.02, "centroids with a 200-key tail: estimate within 0.02 (%.3g)",
          erel);
    idx_free(ix);

    /* 4. no capability, nothing left out: -inf */
    ix = make_set(IDX_QUEST, 0);
    CHECK(idx_build(ix, 1, 0, kv, 0, N, NULL, 0) == IDX_OK, "quest build");
    n = idx_select_est(ix, 1, 0, kv, q, G, &rq, ids, MAXID, &est);
    CHECK(n > 0 && isinf(rel[0]) && rel[0] < 0 && !(idx_kind_caps(IDX_QUEST) & IDX_CAP_ESTIMATE),
          "quest: no estimate (-inf)");
    idx_free(ix);
    ix = make_set(IDX_SPARQ, 0);
    CHECK(idx_build(ix, 1, 0, kv, 0, N, NULL, 0) == IDX_OK, "sparq build");
    rq.target = 1.0f;
    n = idx_select_est(ix, 1, 0, kv, q, G, &rq, ids, MAXID, &est);
    CHECK(n == N && isinf(rel[G - 1]) && rel[G - 1] < 0, "sparq reading everything: nothing to estimate (-inf)");
    CHECK((idx_kind_caps(IDX_SPARQ) & IDX_CAP_ESTIMATE) && (idx_kind_caps(IDX_CENTROIDS) & IDX_CAP_ESTIMATE),
          "sparq and centroids estimate");
    idx_free(ix);
    kv_free(kv);
    free(K);
    free(V);
    free(ids);
    free(r);
    return check_summary("test_estimate");
}
