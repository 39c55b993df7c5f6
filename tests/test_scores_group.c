/* A GQA group's raw scores (attn_scores_group_ids / _range / _rows) against a plain C loop in
 * double: groups 1, 2, 3, 7, 8, 14 and 20 (over the kernel's 4 queries per pass), key counts 1..67
 * (not multiples of its 4 keys per block), head dims 64, 128, 256 and the odd 65 and 13 (a scalar
 * tail after the SIMD width), f32 and f16 rows, pages of 16 keys so ids cross pages.
 * Tolerance: |got - ref| <= 1e-6 * (1 + sum_i |q_i k_i|) (f32 accumulation, different order);
 * f16 rows against the same rows rounded to f16. Entries past a row's count stay untouched.
 * attn_scores_group_i8 (int8 rows and queries) against a plain C loop in int64: exact, every
 * byte value from -128 to 127, rows out of order with repeats, counts past its 16-row blocks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_sparse.h"
#include "check.h"
#include "kvcache.h"
#include "quant.h"

enum { NKV = 2, HEAD = 1, NTOK = 300 };

/* max over (g, j) of |got - ref| / (1 + sum |q k|), or INFINITY on a NaN */
static double err_of(const float *got, int64_t ld, const float *q, int n_q, int d, const float *rows,
                     const int32_t *idx, int n, int64_t row_stride) {
    double e = 0;
    for (int g = 0; g < n_q; g++)
        for (int j = 0; j < n; j++) {
            const float *k = rows + (size_t)idx[j] * row_stride;
            double ref = 0, mag = 0;
            for (int i = 0; i < d; i++) {
                ref += (double)q[(size_t)g * d + i] * k[i];
                mag += fabs((double)q[(size_t)g * d + i] * k[i]);
            }
            const float x = got[(size_t)g * ld + j];
            double r = isnan(x) ? INFINITY : fabs(x - ref) / (1.0 + mag);
            if (r > e) e = r;
        }
    return e;
}

/* int8 rows: the sums are exact integers, so the kernel must give the reference's bits */
static void i8_tests(void) {
    const int dims[] = {64, 128, 256, 48, 13};
    const int groups[] = {1, 3, 7, 8, 9, 16, 20};
    const int counts[] = {1, 15, 16, 17, 33, 100};
    enum { ROWS = 64 };
    const float SENT = 12345.0f;
    const int64_t lo = 1000;
    uint32_t seed = 12345;
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        const int d = dims[di];
        int8_t *x = malloc((size_t)ROWS * d), *q8 = malloc((size_t)20 * d);
        for (int i = 0; i < ROWS * d; i++) {
            seed = seed * 1664525u + 1013904223u;
            x[i] = (int8_t)(seed >> 24);
        }
        for (int i = 0; i < d; i++) x[i] = -128, x[d + i] = 127; /* the extremes */
        for (int i = 0; i < 20 * d; i++) {
            seed = seed * 1664525u + 1013904223u;
            q8[i] = (int8_t)(seed >> 24);
        }
        for (int i = 0; i < d; i++) q8[i] = i % 2 ? -128 : 127;
        float qscale[20];
        for (int g = 0; g < 20; g++) qscale[g] = 0.01f * (g + 1);
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
            for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
                const int n_q = groups[gi], n = counts[ci];
                int32_t ids[100];
                for (int j = 0; j < n; j++) ids[j] = (int32_t)(lo + (j * 37 + (j % 3 == 0 ? 0 : 5)) % ROWS);
                ids[0] = (int32_t)lo, ids[n > 1 ? 1 : 0] = (int32_t)lo + 1;
                const int64_t ld = n + 3;
                float got[20 * 103];
                for (int i = 0; i < 20 * 103; i++) got[i] = SENT;
                const int8_t *rows[100];
                for (int j = 0; j < n; j++) rows[j] = x + (size_t)(ids[j] - lo) * d;
                attn_scores_group_i8(q8, qscale, n_q, d, rows, n, got, ld);
                int bad = 0, spill = 0;
                for (int g = 0; g < n_q; g++) {
                    for (int j = 0; j < n; j++) {
                        int64_t ref = 0;
                        for (int i = 0; i < d; i++) ref += (int64_t)q8[g * d + i] * x[(ids[j] - lo) * d + i];
                        bad += got[g * ld + j] != qscale[g] * (float)ref;
                    }
                    for (int64_t j = n; j < ld; j++) spill += got[g * ld + j] != SENT;
                }
                CHECK(bad == 0, "i8 scores: %d of %d differ from the int64 reference (d=%d n_q=%d n=%d)", bad,
                      n_q * n, d, n_q, n);
                CHECK(spill == 0, "i8 scores wrote past n (d=%d n_q=%d n=%d)", d, n_q, n);
            }
        free(x); free(q8);
    }
}

int main(void) {
    const int dims[] = {64, 128, 256, 65, 13};
    const int groups[] = {1, 2, 3, 7, 8, 14, 20};
    const int counts[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 67};
    const float SENT = 12345.0f;
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        const int d = dims[di];
        const size_t nk = (size_t)NTOK * NKV * d;
        float *K = malloc(sizeof(float) * nk), *Kh = malloc(sizeof(float) * nk);
        for (size_t i = 0; i < nk; i++) { K[i] = rng_pm1(); Kh[i] = krn_f16_to_f32(krn_f32_to_f16(K[i])); }
        kv_store *s32, *s16;
        kv_params p = kv_params_default();
        p.n_layer = 1; p.n_head_kv = NKV; p.head_dim = d; p.v_dim = d; p.max_tokens = NTOK; p.page_size = 16;
        CHECK(kv_create(&p, &s32) == KV_OK, "create f32");
        p.dtype = KV_F16;
        CHECK(kv_create(&p, &s16) == KV_OK, "create f16");
        CHECK(kv_append(s32, 0, K, K, NTOK) == KV_OK, "append f32");
        CHECK(kv_append(s16, 0, K, K, NTOK) == KV_OK, "append f16");
        attn_kv_view v32, v16;
        kv_view(s32, 0, HEAD, &v32);
        kv_view(s16, 0, HEAD, &v16);
        const float *K1 = K + (size_t)HEAD * d, *Kh1 = Kh + (size_t)HEAD * d; /* head HEAD's row 0 */
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
            const int n_q = groups[gi];
            float *q = malloc(sizeof(float) * n_q * d);
            for (int i = 0; i < n_q * d; i++) q[i] = rng_pm1();
            for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
                const int n = counts[ci];
                const int64_t ld = n + 3; /* a gap after each query's row must stay untouched */
                int32_t ids[67], seq[67];
                for (int j = 0; j < n; j++) { ids[j] = (int32_t)rng_int(NTOK); seq[j] = 50 + j; }
                float *got = malloc(sizeof(float) * n_q * ld);
                for (int i = 0; i < n_q * ld; i++) got[i] = SENT;
                attn_scores_group_ids(&v32, q, n_q, ids, n, got, ld);
                double e = err_of(got, ld, q, n_q, d, K1, ids, n, NKV * d);
                int gap = 1;
                for (int g = 0; g < n_q; g++)
                    for (int j = n; j < ld; j++) gap &= got[(size_t)g * ld + j] == SENT;
                CHECK(e <= 1e-6, "ids f32 d=%d n_q=%d n=%d err %.3g", d, n_q, n, e);
                CHECK(gap, "ids wrote past n d=%d n_q=%d n=%d", d, n_q, n);

                attn_scores_group_ids(&v16, q, n_q, ids, n, got, ld);
                e = err_of(got, ld, q, n_q, d, Kh1, ids, n, NKV * d);
                CHECK(e <= 1e-6, "ids f16 d=%d n_q=%d n=%d err %.3g", d, n_q, n, e);

                attn_scores_group_range(&v32, q, n_q, 50, 50 + n, got, ld);
                e = err_of(got, ld, q, n_q, d, K1, seq, n, NKV * d);
                CHECK(e <= 1e-6, "range f32 d=%d n_q=%d n=%d err %.3g", d, n_q, n, e);

                /* plain rows with a stride past d (every other token's key of head HEAD) */
                attn_scores_group_rows(q, n_q, d, K1, n, 2 * NKV * d, got, ld);
                for (int j = 0; j < n; j++) seq[j] = 2 * j;
                e = err_of(got, ld, q, n_q, d, K1, seq, n, NKV * d);
                CHECK(e <= 1e-6, "rows d=%d n_q=%d n=%d err %.3g", d, n_q, n, e);
                free(got);
            }
            free(q);
        }
        /* n = 0 writes nothing */
        float one = SENT, q0[256] = {0};
        attn_scores_group_ids(&v32, q0, 1, NULL, 0, &one, 1);
        attn_scores_group_range(&v32, q0, 1, 7, 7, &one, 1);
        CHECK(one == SENT, "empty input wrote d=%d", d);
        kv_free(s32); kv_free(s16);
        free(K); free(Kh);
    }
    i8_tests();
    return check_summary("test_scores_group");
}
