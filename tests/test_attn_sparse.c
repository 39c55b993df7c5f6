/* Sparse attention over the paged store vs krn_attn_dense on flat arrays: ranges, id lists and
 * merged splits, odd lengths 1..32768, head dims 64/128/256, GQA groups 1..20, f16, split-K.
 * Tolerances: 1e-5 (f32; f16 vs the same rounded rows); f16 storage vs f32 rows 5e-3. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "attn_sparse.h"
#include "check.h"
#include "kvcache.h"
#include "ops.h"
#include "quant.h"


enum { NKV = 2, HEAD = 1 }; /* a store with two KV heads; tests read head 1 (nonzero offsets) */

typedef struct {
    int n, dk, dv;
    float *K, *V;       /* (n, NKV, dk), (n, NKV, dv): what is appended */
    float *Kh, *Vh;     /* the same rounded through f16 */
    kv_store *s32, *s16;
} fixture;

static void fx_build(fixture *f, int n, int dk, int dv, int page_size) {
    f->n = n; f->dk = dk; f->dv = dv;
    size_t nk = (size_t)n * NKV * dk, nv = (size_t)n * NKV * dv;
    f->K = malloc(sizeof(float) * nk); f->V = malloc(sizeof(float) * nv);
    f->Kh = malloc(sizeof(float) * nk); f->Vh = malloc(sizeof(float) * nv);
    for (size_t i = 0; i < nk; i++) { f->K[i] = rng_pm1(); f->Kh[i] = krn_f16_to_f32(krn_f32_to_f16(f->K[i])); }
    for (size_t i = 0; i < nv; i++) { f->V[i] = rng_pm1(); f->Vh[i] = krn_f16_to_f32(krn_f32_to_f16(f->V[i])); }
    kv_params p = kv_params_default();
    p.n_layer = 1; p.n_head_kv = NKV; p.head_dim = dk; p.v_dim = dv; p.max_tokens = n;
    p.page_size = page_size;
    CHECK(kv_create(&p, &f->s32) == KV_OK, "create f32");
    p.dtype = KV_F16;
    CHECK(kv_create(&p, &f->s16) == KV_OK, "create f16");
    CHECK(kv_append(f->s32, 0, f->K, f->V, n) == KV_OK, "append f32");
    CHECK(kv_append(f->s16, 0, f->K, f->V, n) == KV_OK, "append f16");
}

static void fx_free(fixture *f) {
    free(f->K); free(f->V); free(f->Kh); free(f->Vh);
    kv_free(f->s32); kv_free(f->s16);
}

/* Dense reference for the n_q queries over positions [lo, hi) of head HEAD of the flat rows. */
static void ref_range(const fixture *f, const float *K, const float *V, const float *q, int n_q,
                      int lo, int hi, float scale, float *out, float *lse) {
    for (int g = 0; g < n_q; g++)
        krn_attn_dense(q + (size_t)g * f->dk, K + ((size_t)lo * NKV + HEAD) * f->dk,
                       V + ((size_t)lo * NKV + HEAD) * f->dv, hi - lo, NKV * f->dk, NKV * f->dv,
                       f->dk, f->dv, scale, out + (size_t)g * f->dv, lse + g);
}

/* Max |a - b| over outputs and max relative lse difference; any NaN counts as infinite. */
static double max_err(const float *oa, const float *la, const float *ob, const float *lb, int n_q,
                      int dv) {
    double e = 0;
    for (int i = 0; i < n_q * dv; i++) {
        double d = fabs((double)oa[i] - ob[i]);
        if (isnan(oa[i]) || isnan(ob[i])) d = INFINITY;
        if (d > e) e = d;
    }
    for (int g = 0; g < n_q; g++) {
        if (isinf(la[g]) && isinf(lb[g]) && la[g] == lb[g]) continue;
        double d = fabs((double)la[g] - lb[g]) / (1.0 + fabs((double)lb[g]));
        if (isnan(la[g]) || isnan(lb[g])) d = INFINITY;
        if (d > e) e = d;
    }
    return e;
}

static void shuffle(int32_t *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int32_t t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

int main(void) {
    const int lens[] = {1, 3, 129, 257, 1025, 4097, 32768};
    const int dims[] = {64, 128, 256};
    const int n_lens = sizeof lens / sizeof *lens;
    enum { GMAX = 20 };

    for (int di = 0; di < 3; di++) {
        const int dk = dims[di], dv = dims[(di + 1) % 3]; /* dv != dk on purpose */
        fixture f;
        fx_build(&f, lens[n_lens - 1], dk, dv, 64);
        attn_kv_view v32, v16;
        CHECK(kv_view(f.s32, 0, HEAD, &v32) == KV_OK, "view");
        CHECK(kv_view(f.s16, 0, HEAD, &v16) == KV_OK, "view");
        float *q = malloc(sizeof(float) * GMAX * dk);
        /* large queries so that the softmax is peaked, not a plain average */
        for (int i = 0; i < GMAX * dk; i++) q[i] = 6.0f * rng_pm1();
        const float scale = 1.0f / sqrtf((float)dk);
        float *ref = malloc(sizeof(float) * GMAX * dv), *got = malloc(sizeof(float) * GMAX * dv);
        float *part = malloc(sizeof(float) * GMAX * dv);
        float ref_l[GMAX], got_l[GMAX], part_l[GMAX];
        int32_t *ids = malloc(sizeof(int32_t) * f.n);

        for (int li = 0; li < n_lens; li++) {
            const int n = lens[li];
            const int lo = rng_int(f.n - n + 1), hi = lo + n; /* odd offsets */
            const int groups[] = {1, 3, 4};
            for (int gi = 0; gi < 3; gi++) {
                const int n_q = groups[gi];
                ref_range(&f, f.K, f.V, q, n_q, lo, hi, scale, ref, ref_l);
                attn_range(&v32, q, n_q, lo, hi, scale, got, got_l);
                double e = max_err(got, got_l, ref, ref_l, n_q, dv);
                CHECK(e <= 1e-5, "range n=%d dk=%d g=%d err %.3g", n, dk, n_q, e);

                for (int j = 0; j < n; j++) ids[j] = lo + j;
                attn_ids(&v32, q, n_q, ids, n, scale, got, got_l);
                e = max_err(got, got_l, ref, ref_l, n_q, dv);
                CHECK(e <= 1e-5, "all ids n=%d dk=%d g=%d err %.3g", n, dk, n_q, e);

                shuffle(ids, n);
                attn_ids(&v32, q, n_q, ids, n, scale, got, got_l);
                e = max_err(got, got_l, ref, ref_l, n_q, dv);
                CHECK(e <= 1e-5, "shuffled ids n=%d dk=%d g=%d err %.3g", n, dk, n_q, e);

                /* a random split of the shuffled ids into up to 5 parts, merged */
                int cuts[6] = {0}, nparts = 1 + rng_int(5);
                for (int c = 1; c < nparts; c++) cuts[c] = rng_int(n + 1);
                cuts[nparts] = n;
                for (int a = 1; a < nparts; a++) /* sort the cut points */
                    for (int b = a; b > 0 && cuts[b] < cuts[b - 1]; b--) {
                        int t = cuts[b]; cuts[b] = cuts[b - 1]; cuts[b - 1] = t;
                    }
                for (int c = 0; c < n_q * dv; c++) got[c] = 0.0f;
                for (int g = 0; g < n_q; g++) got_l[g] = -INFINITY;
                for (int c = 0; c < nparts; c++) {
                    attn_ids(&v32, q, n_q, ids + cuts[c], cuts[c + 1] - cuts[c], scale, part, part_l);
                    attn_merge(got, got_l, part, part_l, n_q, dv);
                }
                e = max_err(got, got_l, ref, ref_l, n_q, dv);
                CHECK(e <= 1e-5, "merge of %d parts n=%d dk=%d err %.3g", nparts, n, dk, e);

                /* range split at a random point, merged */
                int mid = lo + rng_int(n + 1);
                attn_range(&v32, q, n_q, lo, mid, scale, got, got_l);
                attn_range(&v32, q, n_q, mid, hi, scale, part, part_l);
                attn_merge(got, got_l, part, part_l, n_q, dv);
                e = max_err(got, got_l, ref, ref_l, n_q, dv);
                CHECK(e <= 1e-5, "range split n=%d dk=%d err %.3g", n, dk, e);

                /* f16 rows: exact against dense over the rounded rows; close to the f32 rows */
                ref_range(&f, f.Kh, f.Vh, q, n_q, lo, hi, scale, part, part_l);
                attn_range(&v16, q, n_q, lo, hi, scale, got, got_l);
                e = max_err(got, got_l, part, part_l, n_q, dv);
                CHECK(e <= 1e-5, "f16 range vs rounded n=%d dk=%d err %.3g", n, dk, e);
                e = max_err(got, got_l, ref, ref_l, n_q, dv);
                CHECK(e <= 5e-3, "f16 range vs f32 n=%d dk=%d err %.3g", n, dk, e);
                attn_ids(&v16, q, n_q, ids, n, scale, got, got_l);
                e = max_err(got, got_l, part, part_l, n_q, dv);
                CHECK(e <= 1e-5, "f16 ids vs rounded n=%d dk=%d err %.3g", n, dk, e);
            }
        }

        /* GQA groups of every size up to 20 (past ATTN_MAX_GROUP: chunked) on one length */
        for (int n_q = 1; n_q <= GMAX; n_q++) {
            const int lo = 77, hi = 77 + 3001;
            ref_range(&f, f.K, f.V, q, n_q, lo, hi, scale, ref, ref_l);
            attn_range(&v32, q, n_q, lo, hi, scale, got, got_l);
            double e = max_err(got, got_l, ref, ref_l, n_q, dv);
            CHECK(e <= 1e-5, "group %d dk=%d err %.3g", n_q, dk, e);
        }

        /* split-K (serial caller, long range) against the serial path (inside a region) */
        {
            const int n_q = 4, lo = 5, hi = f.n;
            attn_range(&v32, q, n_q, lo, hi, scale, ref, ref_l);
            #pragma omp parallel num_threads(2)
            {
                #pragma omp single
                attn_range(&v32, q, n_q, lo, hi, scale, got, got_l);
            }
            double e = max_err(got, got_l, ref, ref_l, n_q, dv);
            CHECK(e <= 1e-5, "split-K vs serial dk=%d err %.3g (threads %d)", dk, e, omp_get_max_threads());
        }

        /* empty range and list: the neutral element */
        attn_range(&v32, q, 2, 10, 10, scale, got, got_l);
        CHECK(got_l[0] == -INFINITY && got_l[1] == -INFINITY && got[0] == 0.0f && got[dv] == 0.0f,
              "empty range");
        attn_ids(&v32, q, 1, ids, 0, scale, got, got_l);
        CHECK(got_l[0] == -INFINITY && got[dv - 1] == 0.0f, "empty ids");

        /* raw scores against plain dots */
        {
            float sc[300], sh[300];
            int ok = 1, okh = 1;
            attn_scores_range(&v32, q, 1000, 1300, sc);
            for (int j = 0; j < 300; j++) ids[j] = (int32_t)rng_int(f.n);
            attn_scores_ids(&v16, q, ids, 300, sh);
            for (int j = 0; j < 300; j++) {
                double d = 0, dh = 0;
                for (int i = 0; i < dk; i++) {
                    d += (double)q[i] * f.K[((size_t)(1000 + j) * NKV + HEAD) * dk + i];
                    dh += (double)q[i] * f.Kh[((size_t)ids[j] * NKV + HEAD) * dk + i];
                }
                ok &= fabs(sc[j] - d) <= 1e-4 * (1 + fabs(d));
                okh &= fabs(sh[j] - dh) <= 1e-4 * (1 + fabs(dh));
            }
            CHECK(ok, "scores_range dk=%d", dk);
            CHECK(okh, "scores_ids f16 dk=%d", dk);
        }
        /* attn_causal_rows: R rows' groups over their causal ranges (positions near and across
         * block borders, odd group sizes) give the bits of attn_range row by row */
        {
            const int64_t bases[] = {0, 29, 31, 95, 4093, 30000};
            /* R, G: up to ATTN_MAX_ROWS queries (9 x 7 is qwen2's prefill tile) */
            const int shapes[][2] = {{1, 4}, {2, 7}, {4, 4}, {5, 3}, {16, 1}, {3, 5}, {9, 7}, {16, 4}, {64, 1}};
            float *o1 = malloc(sizeof(float) * ATTN_MAX_ROWS * dv), *o2 = malloc(sizeof(float) * ATTN_MAX_ROWS * dv);
            float l1[ATTN_MAX_ROWS], l2[ATTN_MAX_ROWS];
            int bad = 0, runs = 0;
            /* the reference is the serial pass (the engine calls both inside its parallel loop;
             * outside one, attn_range would split long ranges across threads) */
            const int saved_threads = omp_get_max_threads();
            omp_set_num_threads(1);
            for (int vi = 0; vi < 2; vi++) {
                const attn_kv_view *v = vi ? &v16 : &v32;
                for (size_t bi = 0; bi < sizeof bases / sizeof *bases; bi++)
                    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                        const int R = shapes[si][0], G = shapes[si][1];
                        const float *qp[ATTN_MAX_ROWS];
                        float *op[ATTN_MAX_ROWS], *lp[ATTN_MAX_ROWS];
                        int64_t pos[ATTN_MAX_ROWS];
                        for (int r = 0; r < R; r++) {
                            pos[r] = bases[bi] + r + (r == R - 1 && R > 2 ? 40 : 0); /* one row a block further */
                            qp[r] = q + (size_t)((r * G) % (GMAX - G + 1)) * dk; /* G queries within q */
                            op[r] = o2 + (size_t)r * G * dv;
                            lp[r] = l2 + r * G;
                            attn_range(v, qp[r], G, 0, pos[r] + 1, scale, o1 + (size_t)r * G * dv, l1 + r * G);
                        }
                        attn_causal_rows(v, qp, G, R, pos, scale, op, lp);
                        bad += memcmp(o1, o2, sizeof(float) * R * G * dv) != 0 || memcmp(l1, l2, sizeof(float) * R * G) != 0;
                        runs++;
                    }
            }
            omp_set_num_threads(saved_threads);
            CHECK(bad == 0, "attn_causal_rows == attn_range per row, bit for bit (dk %d dv %d): %d of %d differ", dk, dv,
                  bad, runs);
            CHECK(attn_causal_max_rows(7, 64, 64) == 9 && attn_causal_max_rows(4, 256, 256) == 4 &&
                  attn_causal_max_rows(1, 64, 64) == ATTN_MAX_ROWS && attn_causal_max_rows(16, 1024, 1024) == 1,
                  "rows per causal pass: 9 of groups of 7 at d 64, 4 of 4 at d 256 (L1), 1 where none share");
            free(o1); free(o2);
        }
        free(q); free(ref); free(got); free(part); free(ids);
        fx_free(&f);
    }

    /* a ring (local layer): the last W positions through the wrapped page table */
    {
        const int W = 100, dk = 64, dv = 64, n = 1000;
        kv_params p = kv_params_default();
        int win[1] = {W};
        p.n_layer = 1; p.n_head_kv = NKV; p.head_dim = dk; p.v_dim = dv; p.max_tokens = n;
        p.page_size = 16; p.layer_window = win; p.ring_slack = 9;
        kv_store *s;
        CHECK(kv_create(&p, &s) == KV_OK, "ring create");
        float *K = malloc(sizeof(float) * n * NKV * dk), *V = malloc(sizeof(float) * n * NKV * dv);
        for (int i = 0; i < n * NKV * dk; i++) K[i] = 4 * rng_pm1();
        for (int i = 0; i < n * NKV * dv; i++) V[i] = rng_pm1();
        float q[64], o1[64], o2[64], l1, l2;
        for (int i = 0; i < dk; i++) q[i] = rng_pm1();
        attn_kv_view v;
        kv_view(s, 0, HEAD, &v);
        int ok = 1;
        for (int t = 0; t < n; t += 7) {
            int m = t + 7 <= n ? 7 : n - t;
            kv_append(s, 0, K + (size_t)t * NKV * dk, V + (size_t)t * NKV * dv, m);
            /* the chunk's first row, position t, must still see its window */
            int hi = t + 1, lo = hi > W ? hi - W : 0;
            attn_range(&v, q, 1, lo, hi, 0.125f, o1, &l1);
            krn_attn_dense(q, K + ((size_t)lo * NKV + HEAD) * dk, V + ((size_t)lo * NKV + HEAD) * dv,
                           hi - lo, NKV * dk, NKV * dv, dk, dv, 0.125f, o2, &l2);
            ok &= max_err(o1, &l1, o2, &l2, 1, dv) <= 1e-5;
        }
        CHECK(ok, "ring window attention");
        free(K); free(V);
        kv_free(s);
    }
    return check_summary("test_attn_sparse");
}
