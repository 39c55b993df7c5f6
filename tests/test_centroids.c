/* The centroids selector (Squeezed Attention), differential against plain-C double references:
 * k-means output (each key once, centroid = mean of raw members); one-level selection == brute
 * force S_j > T; two-level close to a subset of one level, covering its calibrated share, and
 * identical to it once no coarse cluster is pruned; attention-mass recall on a synthetic
 * clustered set with out-of-distribution queries; calibration on held-out queries; huge query
 * norms; blob round trip, truncations and random corruptions. `test_centroids bench` adds the
 * build timings at 16384 x 256 and 65536 x 128. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "index.h"

/* Synthetic clustered keys, out-of-distribution queries: keys = mu_k (a large shared offset) +
 * nuisance (std 1.5 on the first d/4 dims, which queries ignore) + one of T topic centres + noise;
 * queries = mu_q (another offset) + 2 x a topic centre + noise. A query's attention sits on
 * its topic's keys (~1/T of them), which are not the keys nearest to it. */
typedef struct { int d, T; float *ck, *mu_k, *mu_q; } synth;

static void synth_init(synth *s, int d, int T) {
    s->d = d; s->T = T;
    s->ck = malloc(sizeof(float) * T * d);
    s->mu_k = malloc(sizeof(float) * d);
    s->mu_q = malloc(sizeof(float) * d);
    for (int i = 0; i < d; i++) { s->mu_k[i] = 2.0f * rng_normal(); s->mu_q[i] = 0.5f * rng_normal(); }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) s->ck[t * d + i] = i < d / 4 ? 0.0f : 0.6f * rng_normal();
}
static void synth_free(synth *s) { free(s->ck); free(s->mu_k); free(s->mu_q); }

static void synth_key(const synth *s, float *k) {
    int t = (int)(rng_u01() * s->T);
    for (int i = 0; i < s->d; i++)
        k[i] = s->mu_k[i] + (i < s->d / 4 ? 1.5f * rng_normal() : s->ck[t * s->d + i] + 0.5f * rng_normal());
}
/* group queries share a topic (the heads of one token look for the same thing), own noise */
static void synth_group(const synth *s, float *q, int group) {
    int t = (int)(rng_u01() * s->T);
    for (int g = 0; g < group; g++)
        for (int i = 0; i < s->d; i++)
            q[g * s->d + i] = s->mu_q[i] + 2.0f * s->ck[t * s->d + i] + 0.3f * rng_normal();
}

static float *synth_keys(const synth *s, int64_t n) {
    float *K = malloc(sizeof(float) * n * s->d);
    for (int64_t i = 0; i < n; i++) synth_key(s, K + i * s->d);
    return K;
}
static float *synth_queries(const synth *s, int n_tok, int group) {
    float *Q = malloc(sizeof(float) * n_tok * group * s->d);
    for (int t = 0; t < n_tok; t++) synth_group(s, Q + (size_t)t * group * s->d, group);
    return Q;
}

static int valid_ids(const int32_t *ids, int64_t n, int64_t lo, int64_t hi) {
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < lo || ids[i] >= hi) return 0;
        if (i > 0 && ids[i] <= ids[i - 1]) return 0; /* ascending, hence distinct */
    }
    return 1;
}

/* One-level S_j of every fine cluster, in double, straight from the definition. */
static void brute_scores(const idx_cent *c, const float *q, double scale, double *S) {
    const int nf = idx_cent_n_fine(c), d = idx_cent_dim(c);
    double m = -INFINITY, D = 0;
    for (int j = 0; j < nf; j++) {
        const float *cj = idx_cent_centroid(c, j);
        double a = 0;
        for (int i = 0; i < d; i++) a += (double)q[i] * cj[i];
        S[j] = scale * a;
        if (S[j] > m) m = S[j];
    }
    for (int j = 0; j < nf; j++) {
        int64_t nj;
        idx_cent_members(c, j, &nj);
        D += nj * exp(S[j] - m);
    }
    for (int j = 0; j < nf; j++) S[j] = exp(S[j] - m) / D;
}

/* in[pos - pos0] = 1 for the keys of the clusters some query of the group keeps by brute force;
 * *border = 1 when a cluster's S_j is within 1e-4 relative of T (float may round either way). */
static int64_t brute_select(const idx_cent *c, const float *q, int n_q, double scale, double T,
                            unsigned char *in, unsigned char *keep, int *border) {
    const int nf = idx_cent_n_fine(c), d = idx_cent_dim(c);
    double *S = malloc(sizeof(double) * nf);
    memset(keep, 0, nf);
    *border = 0;
    for (int g = 0; g < n_q; g++) {
        brute_scores(c, q + (size_t)g * d, scale, S);
        for (int j = 0; j < nf; j++) {
            keep[j] |= S[j] > T;
            if (fabs(S[j] / T - 1) < 1e-4) *border = 1;
        }
    }
    memset(in, 0, idx_cent_n_keys(c));
    int64_t cnt = 0;
    for (int j = 0; j < nf; j++) {
        if (!keep[j]) continue;
        int64_t nj;
        const int32_t *mem = idx_cent_members(c, j, &nj);
        for (int64_t t = 0; t < nj; t++) in[mem[t]] = 1;
        cnt += nj;
    }
    free(S);
    return cnt;
}

/* Exact attention probabilities of q over all n keys (double). */
static void softmax_all(const float *K, int64_t n, int d, const float *q, double scale, double *p) {
    double m = -INFINITY, D = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = 0;
        for (int t = 0; t < d; t++) a += (double)q[t] * K[i * d + t];
        p[i] = scale * a;
        if (p[i] > m) m = p[i];
    }
    for (int64_t i = 0; i < n; i++) D += (p[i] = exp(p[i] - m));
    for (int64_t i = 0; i < n; i++) p[i] /= D;
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static idx_cent *build(const idx_cent_params *p, const float *K, int64_t n, int d, int64_t pos0,
                       const float *obs, int64_t n_obs) {
    idx_cent *c = NULL;
    char err[256] = "";
    int rc = idx_cent_build(p, K, n, d, pos0, obs, n_obs, 1.0f / sqrtf((float)d), &c, err, sizeof err);
    CHECK(rc == IDX_OK && c, "build %lld x %d: %s", (long long)n, d, err);
    return c;
}

/* ---- k-means output ------------------------------------------------------------------- */

static void structure_tests(void) {
    const int d = 64, n = 3001;
    synth sy;
    synth_init(&sy, d, 32);
    float *K = synth_keys(&sy, n), *Q = synth_queries(&sy, 50, 2);
    idx_cent_params p = idx_cent_params_default();
    p.group = 2;
    p.coarse_frac = 0.01f;
    idx_cent *c = build(&p, K, n, d, 777, Q, 100);
    const int nf = idx_cent_n_fine(c);
    CHECK(nf >= 140 && nf <= 150 && idx_cent_n_coarse(c) >= 20 && idx_cent_n_coarse(c) <= 30,
          "about 5%% fine and 1%% coarse clusters: %d, %d", nf, idx_cent_n_coarse(c));
    int *count = calloc(n, sizeof(int));
    int ok_range = 1, ok_asc = 1, worst_j = -1;
    double worst = 0;
    for (int j = 0; j < nf; j++) {
        int64_t nj;
        const int32_t *mem = idx_cent_members(c, j, &nj);
        ok_range &= nj > 0;
        double *mean = calloc(d, sizeof(double));
        for (int64_t t = 0; t < nj; t++) {
            ok_range &= mem[t] >= 0 && mem[t] < n;
            if (mem[t] < 0 || mem[t] >= n) continue;
            ok_asc &= t == 0 || mem[t] > mem[t - 1];
            count[mem[t]]++;
            for (int i = 0; i < d; i++) mean[i] += K[(size_t)mem[t] * d + i];
        }
        double mx = 0, err = 0;
        for (int i = 0; i < d; i++) {
            mean[i] /= nj;
            mx = fmax(mx, fabs(mean[i]));
            err = fmax(err, fabs(idx_cent_centroid(c, j)[i] - mean[i]));
        }
        if (err / fmax(mx, 1e-30) > worst) { worst = err / fmax(mx, 1e-30); worst_j = j; }
        free(mean);
    }
    int once = 1;
    for (int i = 0; i < n; i++) once &= count[i] == 1;
    CHECK(ok_range && ok_asc, "members in range, clusters non-empty, ascending");
    CHECK(once, "every key in exactly one cluster");
    CHECK(worst <= 1e-4, "centroid == mean of its members' raw keys: worst relative error %.2e (cluster %d)",
          worst, worst_j);
    /* the curve: from all keys at the lowest grid threshold down to none at 1 */
    float fr[IDX_CENT_GRID];
    idx_cent_curve(c, fr);
    int mono = 1;
    for (int i = 1; i < IDX_CENT_GRID; i++) mono &= fr[i] <= fr[i - 1];
    CHECK(mono && fr[0] > 0.99f && fr[IDX_CENT_GRID - 1] == 0.0f, "curve monotone, %.3f .. %.3f", fr[0],
          fr[IDX_CENT_GRID - 1]);
    CHECK(fabsf(idx_cent_grid(IDX_CENT_GRID - 1) - 1.0f) < 1e-6f && fabsf(idx_cent_grid(0) / 1e-12f - 1) < 1e-5f,
          "grid 1e-12 .. 1");
    /* small and degenerate shapes */
    idx_cent *one = build(&p, K, 1, d, 0, Q, 2);
    int32_t ids[8];
    unsigned char scratch[4096];
    CHECK(one && idx_cent_n_fine(one) == 1 && idx_cent_n_coarse(one) == 0, "a single key");
    CHECK(one && idx_cent_scratch_bytes(one, 2) <= sizeof scratch &&
          idx_cent_select(one, Q, 2, 1e-3f, scratch, ids, 8, NULL) == 1 && ids[0] == 0, "single key selected");
    idx_cent_free(one);
    idx_cent *bad = NULL;
    char err[128];
    CHECK(idx_cent_build(&p, K, n, d, 0, Q, 3, 0.1f, &bad, err, sizeof err) == IDX_ERR_PARAM && !bad,
          "observation rows not a multiple of the group");
    CHECK(idx_cent_build(&p, K, n, d, (int64_t)INT32_MAX - 10, Q, 2, 0.1f, &bad, err, sizeof err) == IDX_ERR_PARAM,
          "positions past INT32_MAX");
    K[5] = NAN;
    CHECK(idx_cent_build(&p, K, n, d, 0, Q, 2, 0.1f, &bad, err, sizeof err) == IDX_ERR_PARAM, "NaN key");
    free(count); free(K); free(Q);
    idx_cent_free(c);
    synth_free(&sy);
}

/* ---- selection vs brute force, two levels, recall, calibration -------------------------- */

static void selection_tests(void) {
    const int d = 128, n = 8192, G = 4, n_obs_tok = 100, n_test = 60;
    const double scale = 1.0 / sqrt(d);
    synth sy;
    synth_init(&sy, d, 64);
    float *K = synth_keys(&sy, n), *obs = synth_queries(&sy, n_obs_tok, G);
    float *Qt = synth_queries(&sy, n_test, G);
    idx_cent_params p1 = idx_cent_params_default();
    p1.coarse_frac = 0.0f;
    p1.group = G;
    idx_cent_params p2 = p1;
    p2.coarse_frac = 0.01f;
    double t0 = krn_now_s();
    idx_cent *c1 = build(&p1, K, n, d, 0, obs, (int64_t)n_obs_tok * G);
    double t1 = krn_now_s();
    idx_cent *c2 = build(&p2, K, n, d, 0, obs, (int64_t)n_obs_tok * G);
    double t2 = krn_now_s();
    printf("build %d x %d: one level %.2f s (%d clusters), two levels %.2f s (%d / %d)\n", n, d, t1 - t0,
           idx_cent_n_fine(c1), t2 - t1, idx_cent_n_fine(c2), idx_cent_n_coarse(c2));
    void *scr = malloc(idx_cent_scratch_bytes(c2, G) > idx_cent_scratch_bytes(c1, G) ? idx_cent_scratch_bytes(c2, G)
                                                                                     : idx_cent_scratch_bytes(c1, G));
    int32_t *ids = malloc(sizeof(int32_t) * n), *ids2 = malloc(sizeof(int32_t) * n);
    unsigned char *in = malloc(n), *keep = malloc(n);
    double *pr = malloc(sizeof(double) * n), *sorted = malloc(sizeof(double) * n);

    /* 1. one level == brute force, for single queries and groups, at several thresholds */
    int mism = 0, borders = 0, valid = 1;
    const float thr[3] = {idx_cent_threshold(c1, 0.02f), idx_cent_threshold(c1, 0.05f), 1e-5f};
    for (int t = 0; t < 20; t++)
        for (int k = 0; k < 3; k++) {
            const int nq = t % 2 ? G : 1;
            const float *q = Qt + (size_t)t * G * d;
            int border;
            int64_t nb = brute_select(c1, q, nq, scale, thr[k], in, keep, &border);
            int64_t m = idx_cent_select(c1, q, nq, thr[k], scr, ids, n, NULL);
            valid &= m >= 0 && valid_ids(ids, m, 0, n);
            int same = m == nb;
            for (int64_t i = 0; same && i < m; i++) same &= in[ids[i]];
            if (!same) { if (border) borders++; else mism++; }
        }
    CHECK(valid, "one-level ids valid");
    CHECK(mism == 0, "one level == brute-force S_j > T (double) in all 60 cases but %d (%d more within 1e-4 of T)",
          mism, borders);

    /* 2. two levels vs one level at the calibrated threshold for 5% */
    const float T2 = idx_cent_threshold(c2, 0.05f);
    int64_t extra = 0, tot2 = 0, tot1 = 0, cov = 0, scored2 = 0, scored1 = 0;
    for (int t = 0; t < n_test; t++) {
        const float *q = Qt + (size_t)t * G * d;
        int border;
        brute_select(c2, q, G, scale, T2, in, keep, &border); /* one-level rule on c2's clusters */
        idx_cent_sel st;
        int64_t m = idx_cent_select(c2, q, G, T2, scr, ids, n, &st);
        valid &= m >= 0 && valid_ids(ids, m, 0, n);
        for (int64_t i = 0; i < m; i++) extra += !in[ids[i]];
        for (int i = 0; i < n; i++) tot1 += in[i];
        cov += m - 0;
        tot2 += m;
        scored2 += st.clusters_scored;
        scored1 += (int64_t)G * idx_cent_n_fine(c2);
    }
    cov = tot2 - extra;
    printf("two levels at T(5%%): %.2f%% of keys, covers %.2f%% of the one-level selection, %.2f%% outside it; "
           "centroids scored %.0f%% of one level's\n", 100.0 * tot2 / ((double)n * n_test), 100.0 * cov / tot1,
           100.0 * extra / tot2, 100.0 * scored2 / scored1);
    CHECK(valid, "two-level ids valid");
    CHECK((double)extra <= 0.01 * tot2, "two levels within one level: %lld of %lld keys outside (<= 1%%)",
          (long long)extra, (long long)tot2);
    CHECK((double)cov >= 0.97 * tot1, "two levels cover %.3f of the one-level selection on held-out queries (>= 0.97; "
          "calibrated to 0.99 on the observation queries)", (double)cov / tot1);
    CHECK(scored2 < 0.6 * scored1, "the coarse pass saves work: %lld vs %lld centroid scores", (long long)scored2,
          (long long)scored1);

    /* 2b. with every coarse threshold 0 (a blob edit), nothing is pruned and the two-level path
     * must give the one-level selection exactly (its denominator is then exact) */
    {
        const size_t len = idx_cent_blob_size(c2);
        const int nf = idx_cent_n_fine(c2), nc = idx_cent_n_coarse(c2);
        uint64_t *buf = malloc(len + 8);
        idx_cent_blob_write(c2, buf);
        /* layout of centroids.c: 72-byte header, fc, cc, curve, cthr (8-byte padded sections) */
        size_t off = 72 + (((size_t)nf * d * 4 + 7) & ~7u) + (((size_t)nc * d * 4 + 7) & ~7u) +
                     ((IDX_CENT_GRID * 4 + 7) & ~7u);
        memset((char *)buf + off, 0, IDX_CENT_GRID * 4);
        idx_cent *z = NULL;
        char err[128];
        CHECK(idx_cent_from_blob(buf, len, &z, err, sizeof err) == IDX_OK, "edited blob: %s", err);
        int diff = 0;
        for (int t = 0; z && t < 20; t++) {
            const float *q = Qt + (size_t)t * G * d;
            int border;
            int64_t nb = brute_select(c2, q, G, scale, T2, in, keep, &border);
            int64_t m = idx_cent_select(z, q, G, T2, scr, ids, n, NULL);
            int same = m == nb;
            for (int64_t i = 0; same && i < m; i++) same &= in[ids[i]];
            diff += !same && !border;
        }
        CHECK(diff == 0, "two levels with no coarse pruning == one-level brute force (%d differ)", diff);
        idx_cent_free(z);
        free(buf);
    }

    /* 3. attention-mass recall at the 5% threshold (held-out groups; a group's union is read,
     * recall is the mean over its queries of the exact softmax mass covered) vs the oracle top
     * 5% of each query, and 4. calibration: the share read for targets 2%, 5%, 10% */
    const float targets[3] = {0.02f, 0.05f, 0.10f};
    for (int lv = 0; lv < 2; lv++) {
        idx_cent *c = lv ? c2 : c1;
        for (int k = 0; k < 3; k++) {
            const float T = idx_cent_threshold(c, targets[k]);
            double read = 0, rec = 0, orc = 0, rec1 = 0, read1 = 0;
            for (int t = 0; t < n_test; t++) {
                const float *q = Qt + (size_t)t * G * d;
                int64_t m = idx_cent_select(c, q, G, T, scr, ids, n, NULL);
                read += (double)m / n;
                for (int g = 0; g < G; g++) {
                    softmax_all(K, n, d, q + (size_t)g * d, scale, pr);
                    double mass = 0;
                    for (int64_t i = 0; i < m; i++) mass += pr[ids[i]];
                    rec += mass / G;
                    memcpy(sorted, pr, sizeof(double) * n);
                    qsort(sorted, n, sizeof(double), cmp_desc);
                    double top = 0;
                    for (int i = 0; i < (int)(targets[k] * n); i++) top += sorted[i];
                    orc += top / G;
                    /* a single query alone, at the same threshold */
                    int64_t m1 = idx_cent_select(c, q + (size_t)g * d, 1, T, scr, ids2, n, NULL);
                    double mass1 = 0;
                    for (int64_t i = 0; i < m1; i++) mass1 += pr[ids2[i]];
                    rec1 += mass1 / G;
                    read1 += (double)m1 / n / G;
                }
            }
            read /= n_test; rec /= n_test; orc /= n_test; rec1 /= n_test; read1 /= n_test;
            printf("%s level, target %.0f%%: group of %d reads %.2f%%, mass recall %.3f (oracle top-%.0f%% per "
                   "query %.3f); one query reads %.2f%%, recall %.3f\n", lv ? "two" : "one", 100 * targets[k], G,
                   100 * read, rec, 100 * targets[k], orc, 100 * read1, rec1);
            CHECK(read >= 0.5 * targets[k] && read <= 2 * targets[k],
                  "calibration (%s level): target %.2f reads %.4f on held-out groups (within [t/2, 2t])",
                  lv ? "two" : "one", targets[k], read);
            /* at ~5%: the mass the exact top 5% of each query holds is ~0.85 on this set */
            if (k == 1)
                CHECK(rec >= 0.80 && rec >= 0.97 * orc,
                      "attention-mass recall %.3f >= 0.80 and >= 0.97 x the oracle's %.3f at ~5%% keys (%s level)", rec,
                      orc, lv ? "two" : "one");
        }
    }

    /* 5. select time */
    {
        const float T = idx_cent_threshold(c2, 0.05f);
        const int reps = 2000;
        double ta = krn_now_s();
        int64_t s = 0;
        for (int r = 0; r < reps; r++) s += idx_cent_select(c2, Qt + (size_t)(r % n_test) * G * d, G, T, scr, ids, n, NULL);
        double tb = krn_now_s();
        for (int r = 0; r < reps; r++) s += idx_cent_select(c1, Qt + (size_t)(r % n_test) * G * d, G, T, scr, ids, n, NULL);
        double tc = krn_now_s();
        printf("select %d keys x %d, group of %d: two levels %.1f us, one level %.1f us per call (%lld)\n", n, d, G,
               1e6 * (tb - ta) / reps, 1e6 * (tc - tb) / reps, (long long)(s % 10));
    }

    /* 6. huge query norms: no NaN, a valid selection holding the best cluster */
    {
        float *qh = malloc(sizeof(float) * G * d);
        int ok = 1, best_in = 1;
        for (int t = 0; t < 10; t++) {
            memcpy(qh, Qt + (size_t)t * G * d, sizeof(float) * G * d);
            for (int g = 0; g < G; g++) {
                double nn = 0;
                for (int i = 0; i < d; i++) nn += (double)qh[g * d + i] * qh[g * d + i];
                for (int i = 0; i < d; i++) qh[g * d + i] *= (float)(1e4 / sqrt(nn));
            }
            for (int lv = 0; lv < 2; lv++) {
                idx_cent *c = lv ? c2 : c1;
                int64_t m = idx_cent_select(c, qh, G, idx_cent_threshold(c, 0.05f), scr, ids, n, NULL);
                ok &= m > 0 && valid_ids(ids, m, 0, n);
                /* the cluster with the largest logit of query 0 has S = 1/n_j: kept */
                double *S = malloc(sizeof(double) * idx_cent_n_fine(c));
                brute_scores(c, qh, scale, S);
                int bj = 0;
                for (int j = 0; j < idx_cent_n_fine(c); j++) { ok &= isfinite(S[j]); if (S[j] > S[bj]) bj = j; }
                int64_t nj;
                const int32_t *mem = idx_cent_members(c, bj, &nj);
                int found = 0;
                for (int64_t i = 0; i < m; i++) found += ids[i] == mem[0];
                /* one level: the top cluster has S = 1 / n_j, far above T. Two levels may prune
                 * its coarse parent when another coarse centroid wins the (one-hot) coarse pass */
                if (lv == 0) best_in &= found == 1;
                free(S);
            }
        }
        CHECK(ok, "|q| = 1e4: finite scores, valid non-empty selection");
        CHECK(best_in, "|q| = 1e4: the top cluster is selected (one level)");
        qh[3] = NAN;
        CHECK(idx_cent_select(c1, qh, G, 1e-4f, scr, ids, n, NULL) == IDX_ERR_PARAM, "NaN query refused");
        CHECK(idx_cent_select(c1, qh, G, 1e-4f, scr, ids, n - 1, NULL) == IDX_ERR_PARAM, "capacity below n refused");
        free(qh);
    }

    /* 7. per-head vs one global threshold over heads of different sharpness (the same keys seen
     * with queries scaled by 0.5, 1, 2): equal average read, recall compared */
    {
        idx_cent *h[3];
        const float sc[3] = {0.5f, 1.0f, 2.0f};
        float *o2 = malloc(sizeof(float) * n_obs_tok * G * d), *q2 = malloc(sizeof(float) * G * d);
        float curve[3][IDX_CENT_GRID], mean[IDX_CENT_GRID];
        for (int k = 0; k < 3; k++) {
            for (int i = 0; i < n_obs_tok * G * d; i++) o2[i] = sc[k] * obs[i];
            h[k] = build(&p1, K, n, d, 0, o2, (int64_t)n_obs_tok * G);
            idx_cent_curve(h[k], curve[k]);
        }
        for (int i = 0; i < IDX_CENT_GRID; i++) mean[i] = (curve[0][i] + curve[1][i] + curve[2][i]) / 3;
        const float Tg = idx_cent_curve_invert(mean, 0.05f);
        double rd[2] = {0, 0}, rc[2] = {0, 0};
        for (int mode = 0; mode < 2; mode++)
            for (int k = 0; k < 3; k++) {
                const float T = mode ? Tg : idx_cent_threshold(h[k], 0.05f);
                for (int t = 0; t < 20; t++) {
                    for (int i = 0; i < G * d; i++) q2[i] = sc[k] * Qt[(size_t)t * G * d + i];
                    int64_t m = idx_cent_select(h[k], q2, G, T, scr, ids, n, NULL);
                    rd[mode] += (double)m / n / 60;
                    for (int g = 0; g < G; g++) {
                        softmax_all(K, n, d, q2 + (size_t)g * d, scale, pr);
                        double mass = 0;
                        for (int64_t i = 0; i < m; i++) mass += pr[ids[i]];
                        rc[mode] += mass / G / 60;
                    }
                }
            }
        printf("heads of temperature x0.5/x1/x2 at 5%%: per-head thresholds read %.2f%%, recall %.3f; one global "
               "threshold reads %.2f%%, recall %.3f\n", 100 * rd[0], rc[0], 100 * rd[1], rc[1]);
        CHECK(rd[1] >= 0.025 && rd[1] <= 0.1, "global threshold reads %.4f on average for a 5%% target", rd[1]);
        for (int k = 0; k < 3; k++) idx_cent_free(h[k]);
        free(o2); free(q2);
    }
    free(scr); free(ids); free(ids2); free(in); free(keep); free(pr); free(sorted);
    free(K); free(obs); free(Qt);
    idx_cent_free(c1); idx_cent_free(c2);
    synth_free(&sy);
}

/* ---- blob ----------------------------------------------------------------------------- */

static void blob_tests(void) {
    const int d = 16, n = 400, G = 2;
    synth sy;
    synth_init(&sy, d, 8);
    float *K = synth_keys(&sy, n), *Q = synth_queries(&sy, 20, G), *Qt = synth_queries(&sy, 10, G);
    idx_cent_params p = idx_cent_params_default();
    p.group = G;
    p.fine_frac = 0.1f;
    p.coarse_frac = 0.02f;
    idx_cent *c = build(&p, K, n, d, 1000, Q, 20 * G);
    CHECK(idx_cent_n_coarse(c) > 1, "small blob has two levels");
    const size_t len = idx_cent_blob_size(c);
    uint64_t *b1 = malloc(len + 8), *b2 = malloc(len + 8), *b3 = malloc(len + 8);
    CHECK(idx_cent_blob_write(c, b1) == IDX_OK, "write");
    idx_cent *r = NULL;
    char err[160];
    CHECK(idx_cent_from_blob(b1, len, &r, err, sizeof err) == IDX_OK, "from_blob: %s", err);
    idx_cent_blob_write(r, b2);
    CHECK(!memcmp(b1, b2, len), "write, load, write: identical bytes");
    CHECK(idx_cent_members(r, 0, &(int64_t){0}) >= (const int32_t *)(const void *)b1 &&
          idx_cent_members(r, 0, &(int64_t){0}) < (const int32_t *)(const void *)((char *)b1 + len),
          "the loaded structure points into the blob");
    size_t sb = idx_cent_scratch_bytes(c, G);
    void *scr = malloc(sb);
    int32_t ids[400], ids2[400];
    int same = 1;
    for (int t = 0; t < 10; t++) {
        const float T = idx_cent_threshold(c, 0.1f);
        int64_t m1 = idx_cent_select(c, Qt + (size_t)t * G * d, G, T, scr, ids, n, NULL);
        int64_t m2 = idx_cent_select(r, Qt + (size_t)t * G * d, G, idx_cent_threshold(r, 0.1f), scr, ids2, n, NULL);
        same &= m1 == m2 && m1 > 0 && !memcmp(ids, ids2, sizeof(int32_t) * m1);
    }
    CHECK(same, "same selections after the round trip");
    /* a second build from the same input gives the same bytes */
    idx_cent *c_again = build(&p, K, n, d, 1000, Q, 20 * G);
    CHECK(c_again && idx_cent_blob_size(c_again) == len && (idx_cent_blob_write(c_again, b3), !memcmp(b1, b3, len)),
          "build is deterministic");
    idx_cent_free(c_again);
    idx_cent_free(r);

    /* every truncation is refused; so is a misaligned blob */
    int trunc_ok = 1;
    for (size_t l = 0; l < len; l++) {
        r = NULL;
        trunc_ok &= idx_cent_from_blob(b1, l, &r, err, sizeof err) != IDX_OK && r == NULL;
    }
    CHECK(trunc_ok, "all %zu truncations refused", len);
    memcpy((char *)b2 + 4, b1, len);
    CHECK(idx_cent_from_blob((char *)b2 + 4, len, &r, err, sizeof err) != IDX_OK, "misaligned blob refused");

    /* random corruptions (1 to 4 bytes each): refused, or selections stay valid */
    int refused = 0, accepted = 0, ok = 1;
    for (int it = 0; it < 2000; it++) {
        memcpy(b2, b1, len);
        const int nb = 1 + (int)(rng_u01() * 4);
        for (int k = 0; k < nb; k++) {
            size_t pos = it < 500 ? (size_t)(rng_u01() * 72) : (size_t)(rng_u01() * len); /* header first */
            ((unsigned char *)b2)[pos] = (unsigned char)(rng_u01() * 256);
        }
        r = NULL;
        if (idx_cent_from_blob(b2, len, &r, err, sizeof err) != IDX_OK) { refused++; ok &= r == NULL; continue; }
        accepted++;
        void *s2 = malloc(idx_cent_scratch_bytes(r, G));
        int32_t *o = malloc(sizeof(int32_t) * idx_cent_n_keys(r));
        for (int t = 0; t < 3; t++) {
            int64_t m = idx_cent_select(r, Qt + (size_t)t * G * d, G, idx_cent_threshold(r, 0.1f), s2, o,
                                        idx_cent_n_keys(r), NULL);
            ok &= m == IDX_ERR_PARAM ||
                  (m >= 0 && valid_ids(o, m, idx_cent_pos0(r), idx_cent_pos0(r) + idx_cent_n_keys(r)));
        }
        free(s2); free(o);
        idx_cent_free(r);
    }
    printf("2000 corrupted blobs: %d refused, %d accepted (centroid or curve bytes)\n", refused, accepted);
    CHECK(ok, "corrupted blobs: refused, or valid selections");
    free(scr); free(b1); free(b2); free(b3); free(K); free(Q); free(Qt);
    idx_cent_free(c);
    synth_free(&sy);
}

/* ---- bench: build and select times at the sizes of the issue ------------------------- */

static void bench(int it_lo, int it_hi) {
    const int shapes[2][2] = {{16384, 256}, {65536, 128}};
    for (int s = 0; s < 2; s++) {
        const int n = shapes[s][0], d = shapes[s][1], G = 4;
        synth sy;
        synth_init(&sy, d, 64);
        float *K = synth_keys(&sy, n), *Q = synth_queries(&sy, 100, G);
        for (int it = it_lo; it <= it_hi; it += 5)
            for (int lv = 0; lv < 2; lv++) {
                idx_cent_params p = idx_cent_params_default();
                p.group = G;
                p.kmeans_iter = it;
                p.coarse_frac = lv ? 0.01f : 0.0f;
                double t0 = krn_now_s();
                idx_cent *c = build(&p, K, n, d, 0, Q, 100 * G);
                double t1 = krn_now_s();
                void *scr = malloc(idx_cent_scratch_bytes(c, G));
                int32_t *ids = malloc(sizeof(int32_t) * n);
                const float T = idx_cent_threshold(c, 0.05f);
                idx_cent_sel st;
                int64_t tot = 0, sc = 0;
                const int reps = 2000;
                double t2 = krn_now_s();
                for (int r = 0; r < reps; r++) {
                    tot += idx_cent_select(c, Q + (size_t)(r % 100) * G * d, G, T, scr, ids, n, &st);
                    sc += st.clusters_scored;
                }
                double t3 = krn_now_s();
                printf("bench %d x %d, %d iterations, %s level: build %.2f s (%d / %d clusters); select (group of %d, "
                       "target 5%%) %.1f us, %.0f centroid scores, reads %.2f%%\n", n, d, it, lv ? "two" : "one", t1 - t0,
                       idx_cent_n_fine(c), idx_cent_n_coarse(c), G, 1e6 * (t3 - t2) / reps, (double)sc / reps,
                       100.0 * tot / reps / n);
                free(scr); free(ids);
                idx_cent_free(c);
            }
        free(K); free(Q);
        synth_free(&sy);
    }
}

/* The adaptive budget (idx_cent_select_mass) against a sort in double: every cluster of the
 * fewest highest-scoring ones reaching the wanted mass is kept, none more than one quarter-nat
 * bin below the last of them; a static set holding the mass keeps nothing; mass 1 keeps all. */
static void mass_tests(void) {
    const int d = 64, n = 4096, G = 4;
    const double scale = 1.0 / sqrt(d);
    synth sy;
    synth_init(&sy, d, 48);
    float *K = synth_keys(&sy, n), *obs = synth_queries(&sy, 50, G), *Qt = synth_queries(&sy, 20, G);
    idx_cent_params p = idx_cent_params_default();
    p.group = G;
    idx_cent *c = build(&p, K, n, d, 0, obs, 50 * G);
    const int nf = idx_cent_n_fine(c);
    void *scr = malloc(idx_cent_scratch_bytes(c, G));
    int32_t *ids = malloc(sizeof(int32_t) * n);
    unsigned char *in = malloc(n);
    double *x = malloc(sizeof(double) * nf), *e = malloc(sizeof(double) * nf), *sorted = malloc(sizeof(double) * nf);
    int64_t *sz = malloc(sizeof(int64_t) * nf);
    for (int j = 0; j < nf; j++) idx_cent_members(c, j, &sz[j]);
    int missing = 0, extra = 0, tried = 0;
    const float masses[3] = {0.5f, 0.9f, 0.99f};
    for (int t = 0; t < 20; t++) {
        const float *q = Qt + (size_t)t * G * d;
        double m = -INFINITY, D = 0;
        for (int j = 0; j < nf; j++) {
            const float *cj = idx_cent_centroid(c, j);
            double a = 0;
            for (int i = 0; i < d; i++) a += (double)q[i] * cj[i];
            x[j] = scale * a;
            m = x[j] > m ? x[j] : m;
        }
        for (int j = 0; j < nf; j++) D += sz[j] * (e[j] = exp(x[j] - m));
        for (int k = 0; k < 3; k++)
            for (int with_static = 0; with_static < 2; with_static++) {
                /* a static set holding about a third of the estimated whole */
                const float slse = (float)(m + log(D / 2));
                const double st = with_static ? exp((double)slse - m) : 0.0;
                const double want = masses[k] * (st + D) - st;
                memcpy(sorted, e, sizeof(double) * nf);
                qsort(sorted, nf, sizeof(double), cmp_desc);
                double cum = 0, cut = 0;
                for (int j = 0; j < nf && cum < want; j++) {
                    cut = sorted[j];
                    for (int i = 0; i < nf; i++) /* the weight of every cluster at this score */
                        if (e[i] == sorted[j]) { cum += sz[i] * e[i]; break; }
                }
                const int64_t got = idx_cent_select_mass(c, q, 1, masses[k], with_static ? &slse : NULL, scr, ids,
                                                         n, NULL);
                if (got < 0 || !valid_ids(ids, got, 0, n)) { missing++; continue; }
                memset(in, 0, n);
                for (int64_t i = 0; i < got; i++) in[ids[i]] = 1;
                for (int j = 0; j < nf; j++) {
                    int64_t nj;
                    const int32_t *mem = idx_cent_members(c, j, &nj);
                    if (want > 0 && e[j] > cut * 1.001 && !in[mem[0]]) missing++;
                    if (in[mem[0]] && (want <= 0 || e[j] < cut * exp(-0.25) * 0.999)) extra++;
                }
                tried++;
            }
    }
    CHECK(tried == 120 && missing == 0, "mass: every cluster of the smallest set reaching the mass kept (%d missing)",
          missing);
    CHECK(extra == 0, "mass: nothing kept more than one bin below the exact cut (%d)", extra);
    const float huge = 1e4f;
    CHECK(idx_cent_select_mass(c, Qt, G, 0.9f, (const float[]){huge, huge, huge, huge}, scr, ids, n, NULL) == 0,
          "mass: a static set holding all the mass keeps nothing");
    CHECK(idx_cent_select_mass(c, Qt, G, 1.0f, NULL, scr, ids, n, NULL) == n, "mass 1 keeps every key");
    CHECK(idx_cent_select_mass(c, Qt, G, 0.0f, NULL, scr, ids, n, NULL) == IDX_ERR_PARAM, "mass 0 refused");
    /* the group keeps the union of its queries' own selections */
    int64_t gn = idx_cent_select_mass(c, Qt, G, 0.9f, NULL, scr, ids, n, NULL), sub = 1;
    memset(in, 0, n);
    for (int64_t i = 0; i < gn; i++) in[ids[i]] = 1;
    for (int g = 0; g < G; g++) {
        int64_t m1 = idx_cent_select_mass(c, Qt + (size_t)g * d, 1, 0.9f, NULL, scr, ids, n, NULL);
        for (int64_t i = 0; i < m1; i++) sub &= in[ids[i]];
    }
    CHECK(gn > 0 && sub, "mass: a group's selection covers each query's own");
    free(sz); free(sorted); free(e); free(x); free(in); free(ids); free(scr);
    idx_cent_free(c);
    free(K); free(obs); free(Qt);
    synth_free(&sy);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        const int it = argc > 2 ? atoi(argv[2]) : 0;
        bench(it > 0 ? it : 5, it > 0 ? it : 20);
        return check_summary("test_centroids bench");
    }
    structure_tests();
    selection_tests();
    mass_tests();
    blob_tests();
    return check_summary("test_centroids");
}
