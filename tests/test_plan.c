/* The decode-attention plan's id widening (--attn-expand) against a bitmap reference: every
 * position within r of a selected id, clipped to the offloaded range, ascending, written in the
 * selector's own buffer even when it is only as large as the range plus r.
 * The estimated tail (--attn-tail): the stratified sample's shape (ascending, in range, none of
 * the selected ids, at most one per stratum, its log weight), and the CPU executor with a
 * weighted part against a plain double-precision softmax over every key: on diffuse attention
 * top-k plus the tail is closer to dense than top-k alone, the estimated normaliser is unbiased,
 * and a tail of share 1 (every unselected key, weight 1) is dense. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_impl.h"

/* ---- the tail sample's shape ------------------------------------------------------------- */

static void test_tail_sample(void) {
    unsigned rng = 777;
    for (int t = 0; t < 300; t++) {
        const int64_t lo = (rng = rng * 1103515245u + 12345u) % 100, len = 1 + (rng = rng * 1103515245u + 12345u) % 2000;
        const int64_t hi = lo + len;
        const double share = t % 7 == 0 ? 1.0 : 0.002 + 0.05 * (double)(t % 13) / 13;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)len), *out = malloc(sizeof(int32_t) * (size_t)len);
        unsigned char *sel = calloc((size_t)hi, 1);
        int64_t n = 0;
        for (int64_t p = lo; p < hi; p++)
            if ((rng = rng * 1103515245u + 12345u) % 100 < (unsigned)(t % 30)) {
                ids[n++] = (int32_t)p;
                sel[p] = 1;
            }
        float lw;
        const int64_t m = eng_plan_tail_sample(ids, n, lo, hi, share, (uint64_t)t * 31 + 5, out, len, &lw);
        int64_t strata = (int64_t)ceil(share * (double)len);
        if (strata < 1) strata = 1;
        if (strata > len) strata = len;
        int ok = m <= strata && m <= len - n;
        for (int64_t i = 0; ok && i < m; i++) ok = out[i] >= lo && out[i] < hi && !sel[out[i]] && (i == 0 || out[i] > out[i - 1]);
        /* at most one per stratum: x = p - lo lies in stratum ((x + 1) * strata - 1) / len */
        for (int64_t i = 1; ok && i < m; i++)
            ok = ((out[i] - lo + 1) * strata - 1) / len != ((out[i - 1] - lo + 1) * strata - 1) / len;
        CHECK(ok, "case %d ([%lld, %lld), %lld selected, share %g): %lld sampled, ascending, in range, unselected",
              t, (long long)lo, (long long)hi, (long long)n, share, (long long)m);
        if (share == 1.0) CHECK(m == len - n, "case %d: share 1 samples every unselected key (%lld of %lld)", t,
                                (long long)m, (long long)(len - n));
        if (m > 0) CHECK(fabsf(lw - (float)log((double)(len - n) / (double)m)) < 1e-6f, "case %d: log weight %g", t, lw);
        else CHECK(lw == 0, "case %d: no sample, no weight", t);
        int32_t again[2048];
        float lw2;
        CHECK(eng_plan_tail_sample(ids, n, lo, hi, share, (uint64_t)t * 31 + 5, again, len, &lw2) == m &&
              !memcmp(again, out, sizeof(int32_t) * (size_t)m), "case %d: the same seed, the same sample", t);
        free(ids);
        free(out);
        free(sel);
    }
    int32_t a[64], b[64];
    float lw;
    const int64_t na = eng_plan_tail_sample(NULL, 0, 0, 6400, 0.01, 1, a, 64, &lw);
    const int64_t nb = eng_plan_tail_sample(NULL, 0, 0, 6400, 0.01, 2, b, 64, &lw);
    int differ = 0;
    for (int i = 0; i < 64 && i < na && i < nb; i++) differ += a[i] != b[i];
    CHECK(na == 64 && nb == 64 && differ > 48, "successive seeds sample other keys (%d of 64 differ)", differ);
}

/* ---- the executor with a weighted part against dense -------------------------------------- */

enum { DK = 64, G = 2, PAGE = 64, N_KEYS = 4096, N_SINK = 32, N_WIN = 128, TOP_K = 100, HOT = 24 };

typedef struct {
    float *k, *v;          /* (N_KEYS, DK) */
    void *pages[N_KEYS / PAGE];
    attn_kv_view view;
    float q[G * DK];
} scene;

static double SQ = 1.0, HB = 7.0, VN = 1.0;
/* Diffuse attention as in small models: scores of standard deviation about SQ over every key,
 * a few keys hotter by about HB; the hot keys' values share one direction and all the others
 * another (what a needle says against what the text around it says on average), each with
 * noise of VN: top-k alone weighs the first direction up by the mass it drops. */
static void scene_make(scene *sc, uint64_t seed) {
    rng_seed(seed);
    sc->k = malloc(sizeof(float) * N_KEYS * DK);
    sc->v = malloc(sizeof(float) * N_KEYS * DK);
    float base[DK], hot_v[DK];
    for (int d = 0; d < DK; d++) base[d] = rng_normal(), hot_v[d] = rng_normal();
    for (int64_t j = 0; j < N_KEYS; j++) {
        const int hot = j >= N_SINK && rng_int(N_KEYS) < HOT;
        for (int d = 0; d < DK; d++) {
            sc->k[j * DK + d] = rng_normal() + (d == 0 && hot ? (float)(HB * 8) : 0);
            sc->v[j * DK + d] = (float)(VN * rng_normal()) + (hot ? hot_v[d] : base[d]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int d = 0; d < DK; d++) sc->q[g * DK + d] = d == 0 ? 1.0f : (float)SQ * rng_normal();
    for (int p = 0; p < N_KEYS / PAGE; p++) {
        float *pg = malloc(sizeof(float) * PAGE * DK * 2);
        memcpy(pg, sc->k + (size_t)p * PAGE * DK, sizeof(float) * PAGE * DK);
        memcpy(pg + PAGE * DK, sc->v + (size_t)p * PAGE * DK, sizeof(float) * PAGE * DK);
        sc->pages[p] = pg;
    }
    sc->view = (attn_kv_view){.pages = (const void *const *)sc->pages, .page_shift = 6, .k_off = 0,
                              .v_off = sizeof(float) * PAGE * DK, .k_stride = DK, .v_stride = DK, .dk = DK,
                              .dv = DK, .dtype = ATTN_F32};
}

static void scene_free(scene *sc) {
    for (int p = 0; p < N_KEYS / PAGE; p++) free(sc->pages[p]);
    free(sc->k);
    free(sc->v);
}

/* Plain softmax attention of query g over every key, in double. */
static void dense_ref(const scene *sc, int g, float scale, double *out, double *lse) {
    double mx = -INFINITY, *w = malloc(sizeof(double) * N_KEYS), z = 0;
    for (int64_t j = 0; j < N_KEYS; j++) {
        double s = 0;
        for (int d = 0; d < DK; d++) s += (double)sc->q[g * DK + d] * sc->k[j * DK + d];
        w[j] = s * scale;
        if (w[j] > mx) mx = w[j];
    }
    for (int d = 0; d < DK; d++) out[d] = 0;
    for (int64_t j = 0; j < N_KEYS; j++) {
        w[j] = exp(w[j] - mx);
        z += w[j];
        for (int d = 0; d < DK; d++) out[d] += w[j] * sc->v[j * DK + d];
    }
    for (int d = 0; d < DK; d++) out[d] /= z;
    *lse = mx + log(z);
    free(w);
}

static int cmp_i32(const void *a, const void *b) { return *(const int32_t *)a - *(const int32_t *)b; }
static const double *score_of; /* what cmp_score orders by (descending) */
static int cmp_score(const void *a, const void *b) {
    const double x = score_of[*(const int32_t *)a], y = score_of[*(const int32_t *)b];
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The exact top-k of the offloaded range by the group's summed scores, ascending. */
static int64_t top_ids(const scene *sc, int64_t lo, int64_t hi, int k, int32_t *ids) {
    double *s = malloc(sizeof(double) * N_KEYS);
    int32_t *order = malloc(sizeof(int32_t) * N_KEYS);
    for (int64_t j = lo; j < hi; j++) {
        s[j] = 0;
        for (int g = 0; g < G; g++)
            for (int d = 0; d < DK; d++) s[j] += (double)sc->q[g * DK + d] * sc->k[j * DK + d];
        order[j - lo] = (int32_t)j;
    }
    score_of = s;
    qsort(order, (size_t)(hi - lo), sizeof *order, cmp_score);
    memcpy(ids, order, sizeof(int32_t) * (size_t)k);
    qsort(ids, (size_t)k, sizeof *ids, cmp_i32);
    free(order);
    free(s);
    return k;
}

/* Relative L2 error of the group's outputs against dense. */
static double rel_err(const float *out, const double *ref) {
    double e = 0, r = 0;
    for (int i = 0; i < G * DK; i++) {
        e += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
        r += ref[i] * ref[i];
    }
    return sqrt(e / r);
}

static void test_tail_estimate(void) {
    struct eng_model m;
    memset(&m, 0, sizeof m);
    m.hp.n_head = G;
    m.hp.n_head_kv = 1;
    m.hp.head_dim = m.hp.v_dim = DK;
    m.hp.attn_scale = 1.0f / sqrtf((float)DK);
    const int64_t off_lo = N_SINK, off_hi = N_KEYS - N_WIN;
    const int n_seeds = 24;
    double err_top = 0, err_tail = 0, err_big = 0, max_full = 0, recall = 0, z_ratio = 0;
    int32_t *buf = malloc(sizeof(int32_t) * N_KEYS);
    for (int seed = 1; seed <= n_seeds; seed++) {
        scene sc;
        scene_make(&sc, 1000 + (uint64_t)seed);
        double ref[G * DK], ref_lse[G];
        for (int g = 0; g < G; g++) dense_ref(&sc, g, m.hp.attn_scale, ref + g * DK, &ref_lse[g]);
        eng_attn_plan pl;
        memset(&pl, 0, sizeof pl);
        pl.sparse = 1;
        pl.off_lo = off_lo;
        pl.off_hi = off_hi;
        pl.part[PLAN_RECENT] = (eng_attn_part){.lo = off_hi, .hi = N_KEYS};
        pl.part[PLAN_SINKS] = (eng_attn_part){.lo = 0, .hi = N_SINK};
        float out[G * DK], lse[G];
        /* top-k alone: 100 of 3,936 offloaded keys (2.5%) */
        const int64_t n = top_ids(&sc, off_lo, off_hi, TOP_K, buf);
        pl.part[PLAN_IDS] = (eng_attn_part){.ids = buf, .n_ids = n};
        pl.n_parts = 3;
        eng_plan_run(&m, &sc.view, sc.q, &pl, out, lse);
        err_top += rel_err(out, ref);
        for (int g = 0; g < G; g++) recall += exp((double)lse[g] - ref_lse[g]) / G;
        /* top-k of 60 plus a 1% tail (about 39 keys, the same total read) */
        const int64_t n60 = top_ids(&sc, off_lo, off_hi, 60, buf);
        float lw;
        const int64_t nt = eng_plan_tail_sample(buf, n60, off_lo, off_hi, 0.01, (uint64_t)seed, buf + n60,
                                                N_KEYS - n60, &lw);
        pl.part[PLAN_IDS] = (eng_attn_part){.ids = buf, .n_ids = n60};
        pl.part[PLAN_TAIL] = (eng_attn_part){.ids = buf + n60, .n_ids = nt, .lse_add = lw};
        pl.n_parts = 4;
        eng_plan_run(&m, &sc.view, sc.q, &pl, out, lse);
        err_tail += rel_err(out, ref);
        /* the full top-k plus a 2% tail */
        top_ids(&sc, off_lo, off_hi, TOP_K, buf);
        const int64_t nb = eng_plan_tail_sample(buf, n, off_lo, off_hi, 0.02, (uint64_t)seed, buf + n, N_KEYS - n, &lw);
        pl.part[PLAN_IDS] = (eng_attn_part){.ids = buf, .n_ids = n};
        pl.part[PLAN_TAIL] = (eng_attn_part){.ids = buf + n, .n_ids = nb, .lse_add = lw};
        eng_plan_run(&m, &sc.view, sc.q, &pl, out, lse);
        err_big += rel_err(out, ref);
        for (int g = 0; g < G; g++) z_ratio += exp((double)lse[g] - ref_lse[g]) / G;
        if (seed <= 4) { /* the tail's estimate of the unselected keys' sum over many draws */
            double truth[G] = {0}, est[G] = {0};
            unsigned char *sel = calloc(N_KEYS, 1);
            for (int64_t i = 0; i < n; i++) sel[buf[i]] = 1;
            for (int g = 0; g < G; g++)
                for (int64_t j = off_lo; j < off_hi; j++) {
                    double x = 0;
                    for (int d = 0; d < DK; d++) x += (double)sc.q[g * DK + d] * sc.k[j * DK + d];
                    if (!sel[j]) truth[g] += exp(x * m.hp.attn_scale);
                }
            free(sel);
            const int draws = 400;
            for (int r = 0; r < draws; r++) {
                const int64_t nr = eng_plan_tail_sample(buf, n, off_lo, off_hi, 0.02, (uint64_t)(seed * 100000 + r),
                                                        buf + n, N_KEYS - n, &lw);
                attn_ids(&sc.view, sc.q, G, buf + n, nr, m.hp.attn_scale, out, lse);
                for (int g = 0; g < G; g++) est[g] += exp((double)lse[g] + lw) / draws;
            }
            for (int g = 0; g < G; g++)
                CHECK(fabs(est[g] / truth[g] - 1) < 0.03, "seed %d query %d: the 2%% tail's mean estimate of the "
                      "unselected keys' sum over %d draws is %.4f of it", seed, g, draws, est[g] / truth[g]);
        }
        /* share 1: every unselected key, weight 1: dense */
        const int64_t nf = eng_plan_tail_sample(buf, n, off_lo, off_hi, 1.0, (uint64_t)seed, buf + n, N_KEYS - n, &lw);
        pl.part[PLAN_TAIL] = (eng_attn_part){.ids = buf + n, .n_ids = nf, .lse_add = lw};
        eng_plan_run(&m, &sc.view, sc.q, &pl, out, lse);
        CHECK(nf == off_hi - off_lo - n && lw == 0, "seed %d: share 1 takes all %lld unselected keys at weight 1 "
              "(%lld, %g)", seed, (long long)(off_hi - off_lo - n), (long long)nf, lw);
        double e = 0;
        for (int i = 0; i < G * DK; i++) {
            const double d = fabs((double)out[i] - ref[i]) / (1e-4 + 1e-4 * fabs(ref[i]));
            if (d > e) e = d;
        }
        for (int g = 0; g < G; g++) e = fmax(e, fabs((double)lse[g] - ref_lse[g]) / (1e-4 + 1e-5 * fabs(ref_lse[g])));
        if (e > max_full) max_full = e;
        scene_free(&sc);
    }
    free(buf);
    err_top /= n_seeds, err_tail /= n_seeds, err_big /= n_seeds, recall /= n_seeds, z_ratio /= n_seeds;
    printf("test_plan: diffuse attention, %d seeds: mass recall of top-%d %.3f; relative error against dense: "
           "top-%d %.4f, top-60 + 1%% tail %.4f, top-%d + 2%% tail %.4f (estimated normaliser / true %.3f)\n",
           n_seeds, TOP_K, recall, TOP_K, err_top, err_tail, TOP_K, err_big, z_ratio);
    CHECK(recall < 0.9, "the scene is diffuse: top-%d holds %.3f of the mass", TOP_K, recall);
    /* the bounds (measured: about 0.23 and 0.14 of top-k's error): with the same keys read the
     * tail at least halves the error, and added to top-k it removes two thirds of it */
    CHECK(err_tail < 0.5 * err_top, "top-60 + 1%% tail (%.4f) halves top-%d's error (%.4f)", err_tail, TOP_K,
          err_top);
    CHECK(err_big < 0.33 * err_top, "top-%d + 2%% tail (%.4f) removes two thirds of top-%d's error (%.4f)", TOP_K,
          err_big, TOP_K, err_top);
    CHECK(fabs(z_ratio - 1) < 0.02, "the estimated normaliser: mean ratio to dense's %.4f", z_ratio);
    CHECK(max_full <= 1, "share 1 equals dense within 1e-4 + 1e-4 |ref| (worst %.3g of the bound)", max_full);
}

/* The estimate part (PLAN_EST): given the left-out keys' exact relative log mass and weighted
 * mean value, the plan is dense; with -inf it is the plan without it. Checks that the part is
 * anchored to the ids part's log-sum-exp and merged in. */
static void test_estimate_part(void) {
    struct eng_model m;
    memset(&m, 0, sizeof m);
    m.hp.n_head = G;
    m.hp.n_head_kv = 1;
    m.hp.head_dim = m.hp.v_dim = DK;
    m.hp.attn_scale = 1.0f / sqrtf((float)DK);
    const int64_t off_lo = N_SINK, off_hi = N_KEYS - N_WIN;
    int32_t *buf = malloc(sizeof(int32_t) * N_KEYS);
    char *in = malloc(N_KEYS);
    scene sc;
    scene_make(&sc, 77);
    double ref[G * DK], ref_lse[G];
    for (int g = 0; g < G; g++) dense_ref(&sc, g, m.hp.attn_scale, ref + g * DK, &ref_lse[g]);
    const int64_t n = top_ids(&sc, off_lo, off_hi, TOP_K, buf);
    memset(in, 0, N_KEYS);
    for (int64_t i = 0; i < n; i++) in[buf[i]] = 1;
    float rel[G], ev[G * DK];
    for (int g = 0; g < G; g++) { /* the exact left-out part, in double */
        double l[N_KEYS], mx = -INFINITY, zs = 0, zr = 0, v[DK] = {0};
        for (int64_t j = off_lo; j < off_hi; j++) {
            double a = 0;
            for (int d = 0; d < DK; d++) a += (double)sc.q[g * DK + d] * sc.k[j * DK + d];
            l[j] = a * m.hp.attn_scale;
            mx = l[j] > mx ? l[j] : mx;
        }
        for (int64_t j = off_lo; j < off_hi; j++) {
            const double w = exp(l[j] - mx);
            if (in[j]) {
                zs += w;
                continue;
            }
            zr += w;
            for (int d = 0; d < DK; d++) v[d] += w * sc.v[j * DK + d];
        }
        rel[g] = (float)log(zr / zs);
        for (int d = 0; d < DK; d++) ev[g * DK + d] = (float)(v[d] / zr);
    }
    eng_attn_plan pl;
    memset(&pl, 0, sizeof pl);
    pl.sparse = 1;
    pl.off_lo = off_lo;
    pl.off_hi = off_hi;
    pl.n_parts = 5;
    pl.part[PLAN_RECENT] = (eng_attn_part){.lo = off_hi, .hi = N_KEYS};
    pl.part[PLAN_SINKS] = (eng_attn_part){.lo = 0, .hi = N_SINK};
    pl.part[PLAN_IDS] = (eng_attn_part){.ids = buf, .n_ids = n};
    pl.part[PLAN_EST] = (eng_attn_part){.est_o = ev, .est_rel = rel};
    float out[G * DK], lse[G], out3[G * DK], lse3[G];
    eng_plan_run(&m, &sc.view, sc.q, &pl, out, lse);
    double e = 0, el = 0;
    for (int i = 0; i < G * DK; i++) e = fmax(e, fabs((double)out[i] - ref[i]));
    for (int g = 0; g < G; g++) el = fmax(el, fabs((double)lse[g] - ref_lse[g]));
    CHECK(e < 1e-4 && el < 1e-4, "an exact estimate of the left-out keys makes the plan dense (output %.2g, "
          "log-sum-exp %.2g)", e, el);
    for (int g = 0; g < G; g++) rel[g] = -INFINITY;
    eng_plan_run(&m, &sc.view, sc.q, &pl, out, lse);
    pl.n_parts = 3;
    eng_plan_run(&m, &sc.view, sc.q, &pl, out3, lse3);
    CHECK(!memcmp(out, out3, sizeof out) && !memcmp(lse, lse3, sizeof lse), "an estimate of -inf changes nothing");
    scene_free(&sc);
    free(in);
    free(buf);
}

int main(int argc, char **argv) {
    if (argc == 4) SQ = atof(argv[1]), HB = atof(argv[2]), VN = atof(argv[3]); /* exploring scenes */
    test_tail_sample();
    test_tail_estimate();
    test_estimate_part();
    unsigned rng = 12345;
    for (int t = 0; t < 400; t++) {
        const int64_t lo = (rng = rng * 1103515245u + 12345u) % 50, len = 1 + (rng = rng * 1103515245u + 12345u) % 300;
        const int64_t hi = lo + len;
        const int r = t % 6;
        const int64_t cap = len + r + (t % 3 == 0 ? 0 : 17);
        int32_t *ids = malloc(sizeof(int32_t) * cap);
        unsigned char *want = calloc(hi, 1);
        const int density = 1 + t % 40;
        int64_t n = 0;
        for (int64_t p = lo; p < hi; p++)
            if ((rng = rng * 1103515245u + 12345u) % 100 < (unsigned)density) {
                ids[n++] = (int32_t)p;
                for (int64_t q = p - r; q <= p + r; q++)
                    if (q >= lo && q < hi) want[q] = 1;
            }
        int64_t nw = 0;
        for (int64_t p = lo; p < hi; p++) nw += want[p];
        const int64_t m = eng_plan_expand_ids(ids, n, cap, r, lo, hi);
        int ok = m == nw;
        for (int64_t i = 0; ok && i < m; i++) ok = want[ids[i]] && (i == 0 || ids[i] > ids[i - 1]);
        CHECK(ok, "case %d (range [%lld, %lld), r %d, %lld ids, cap %lld): %lld ids, want %lld", t, (long long)lo,
              (long long)hi, r, (long long)n, (long long)cap, (long long)m, (long long)nw);
        free(ids);
        free(want);
    }
    /* a reused selection's ids with their successors: against marking them one by one */
    for (int t = 0; t < 300; t++) {
        const int64_t lo = (rng = rng * 1103515245u + 12345u) % 50, len = 1 + (rng = rng * 1103515245u + 12345u) % 200;
        const int64_t hi = lo + len, steps = t % 5;
        const int64_t cap = t % 4 == 0 ? 1 + (int64_t)(rng % len) : len; /* a short buffer: its first cap */
        int32_t *ids = malloc(sizeof(int32_t) * len), *out = malloc(sizeof(int32_t) * len);
        unsigned char *want = calloc(hi, 1);
        int64_t n = 0;
        for (int64_t p = lo; p < hi; p++)
            if ((rng = rng * 1103515245u + 12345u) % 100 < (unsigned)(1 + t % 30)) {
                ids[n++] = (int32_t)p;
                for (int64_t q = p; q <= p + steps && q < hi; q++) want[q] = 1;
            }
        int64_t nw = 0;
        for (int64_t p = lo; p < hi; p++) nw += want[p];
        if (nw > cap) nw = cap;
        const int64_t m = eng_plan_follow_ids(ids, n, steps, lo, hi, out, cap);
        int ok = m == nw;
        for (int64_t i = 0; ok && i < m; i++) ok = want[out[i]] && (i == 0 || out[i] > out[i - 1]);
        for (int64_t p = lo, i = 0; ok && i < m; p++) /* the first m wanted positions, none skipped */
            if (want[p]) ok = out[i++] == p;
        CHECK(ok, "follow case %d (range [%lld, %lld), %lld steps, %lld ids, cap %lld): %lld ids, want %lld", t,
              (long long)lo, (long long)hi, (long long)steps, (long long)n, (long long)cap, (long long)m,
              (long long)nw);
        free(ids);
        free(out);
        free(want);
    }
    int32_t one[4] = {7};
    CHECK(eng_plan_expand_ids(one, 1, 4, 3, 5, 8) == 2 && one[0] == 6 && one[1] == 7,
          "a radius above the buffer's slack is reduced to it");
    return check_summary("test_plan");
}
