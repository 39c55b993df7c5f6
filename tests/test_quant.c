/* Tests for kernels/quant.h: the type table, f16/bf16 conversion over every bit pattern,
 * krn_vec_dot / krn_matvec / krn_matmul against a plain double loop over the decoded
 * weights (the decoders themselves are checked against gguf-py by test_dequant_ref.py), and
 * batch invariance: a token's outputs are the same bits whatever batch it is computed in. */
#include "check.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Dot products may differ from the double reference by f32 rounding in any order:
 * |got - ref| <= REL_TOL * Σ|w_i·x_i| (plus a tiny absolute floor for all-zero rows). */
#define REL_TOL 1e-4


static const uint32_t all_types[] = {
    KRN_TYPE_F32, KRN_TYPE_F16, KRN_TYPE_BF16, KRN_TYPE_Q4_0, KRN_TYPE_Q4_1, KRN_TYPE_Q5_0,
    KRN_TYPE_Q5_1, KRN_TYPE_Q8_0, KRN_TYPE_Q4_K, KRN_TYPE_Q5_K, KRN_TYPE_Q6_K,
};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

/* Byte offsets of the f16 scale fields in a block; -1 ends the list. */
static void scale_offsets(uint32_t type, int off[3]) {
    off[0] = off[1] = off[2] = -1;
    switch (type) {
    case KRN_TYPE_Q4_0: case KRN_TYPE_Q5_0: case KRN_TYPE_Q8_0: off[0] = 0; break;
    case KRN_TYPE_Q4_1: case KRN_TYPE_Q5_1: case KRN_TYPE_Q4_K: case KRN_TYPE_Q5_K:
        off[0] = 0; off[1] = 2; break;
    case KRN_TYPE_Q6_K: off[0] = 208; break;
    default: break;
    }
}

static uint16_t rand_scale(void) {
    float v = (float)rng_unif(0.01f, 2.0f);
    return krn_f32_to_f16(rng_u64() & 1 ? v : -v);
}

/* n_rows random rows of n_cols elements: random bytes with finite f16 scales for the block
 * types, uniform values in [-1, 1] for f32/f16/bf16. */
static uint8_t *make_matrix(uint32_t type, int64_t n_rows, int64_t n_cols) {
    size_t rb = krn_row_bytes(type, n_cols), bb = krn_type_block_bytes(type);
    uint8_t *m = malloc(rb * (size_t)n_rows);
    for (int64_t i = 0; i < n_rows * n_cols && krn_type_block_size(type) == 1; i++) {
        float v = (float)rng_unif(-1.0f, 1.0f);
        uint32_t u;
        memcpy(&u, &v, 4);
        uint16_t h = type == KRN_TYPE_F16 ? krn_f32_to_f16(v) : (uint16_t)(u >> 16);
        if (type == KRN_TYPE_F32) memcpy(m + 4 * i, &v, 4);
        else memcpy(m + 2 * i, &h, 2);
    }
    if (krn_type_block_size(type) == 1) return m;
    for (size_t i = 0; i < rb * (size_t)n_rows; i++) m[i] = (uint8_t)rng_u64();
    int off[3];
    scale_offsets(type, off);
    for (size_t b = 0; b < rb * (size_t)n_rows / bb; b++)
        for (int j = 0; j < 3 && off[j] >= 0; j++) {
            uint16_t h = rand_scale();
            memcpy(m + b * bb + off[j], &h, 2);
        }
    return m;
}

/* Reference dot of decoded row w with x in double; *mag gets Σ|w_i·x_i|. */
static double ref_dot(const float *w, const float *x, int64_t n, double *mag) {
    double s = 0, a = 0;
    for (int64_t i = 0; i < n; i++) {
        s += (double)w[i] * x[i];
        a += fabs((double)w[i] * x[i]);
    }
    *mag = a;
    return s;
}

static int close_enough(float got, double ref, double mag) {
    return isfinite(got) && fabs(got - ref) <= REL_TOL * mag + 1e-30;
}

static void test_type_table(void) {
    static const struct { uint32_t t; int bs; size_t bb; } want[] = {
        {0, 1, 4}, {1, 1, 2}, {2, 32, 18}, {3, 32, 20}, {6, 32, 22}, {7, 32, 24}, {8, 32, 34},
        {12, 256, 144}, {13, 256, 176}, {14, 256, 210}, {30, 1, 2},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK(krn_type_supported(want[i].t), "type %u", want[i].t);
        CHECK(krn_type_block_size(want[i].t) == want[i].bs, "type %u block size", want[i].t);
        CHECK(krn_type_block_bytes(want[i].t) == want[i].bb, "type %u block bytes", want[i].t);
        CHECK(krn_row_bytes(want[i].t, 512) == 512 / want[i].bs * want[i].bb, "row bytes");
    }
    const uint32_t bad[] = {4, 5, 9, 10, 11, 15, 16, 29, 31, 1000, 0xffffffffu};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(!krn_type_supported(bad[i]), "type %u should be unsupported", bad[i]);
        CHECK(krn_type_block_size(bad[i]) == 0 && krn_row_bytes(bad[i], 256) == 0, "type %u", bad[i]);
    }
    CHECK(strcmp(krn_type_name(KRN_TYPE_Q4_K), "q4_k") == 0, "name %s", krn_type_name(12));
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* f16 -> f32 -> f16 must be the identity on all 65536 patterns (NaN stays NaN), the
 * hardware and bit-manipulation paths must agree, and f32 -> f16 must round to nearest
 * even: no other f16 is closer, and ties pick the even mantissa. */
static void test_f16(void) {
    int bad_rt = 0, bad_soft = 0, bad_nan = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = krn_f16_to_f32((uint16_t)h), fs = krn_f16_to_f32_soft((uint16_t)h);
        int is_nan = ((h >> 10) & 31) == 31 && (h & 1023);
        if (is_nan) {
            bad_nan += !isnan(f) || !isnan(fs) || !isnan(krn_f16_to_f32(krn_f32_to_f16(f)))
                       || !isnan(krn_f16_to_f32_soft(krn_f32_to_f16_soft(fs)));
            continue;
        }
        bad_soft += f32_bits(f) != f32_bits(fs);
        bad_rt += krn_f32_to_f16(f) != h || krn_f32_to_f16_soft(fs) != h;
    }
    CHECK(bad_rt == 0, "%d f16 patterns do not round-trip", bad_rt);
    CHECK(bad_soft == 0, "%d f16 patterns decode differently in the soft path", bad_soft);
    CHECK(bad_nan == 0, "%d NaN patterns lost their NaN-ness", bad_nan);

    static const struct { float f; uint16_t h; } cases[] = {
        {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {65504.0f, 0x7bff},
        {65519.99f, 0x7bff}, {65520.0f, 0x7c00}, {1e9f, 0x7c00}, {-INFINITY, 0xfc00},
        {0x1p-24f, 0x0001}, {0x1p-25f, 0x0000}, {0x1.0002p-25f, 0x0001}, {0x1.8p-24f, 0x0002},
        {0x1.4p-23f, 0x0002}, {0x1.ff8p-15f, 0x03ff}, {0x1.ffcp-15f, 0x0400}, {0x1p-14f, 0x0400},
        {1.0f + 0x1p-11f, 0x3c00}, {1.0f + 0x3p-11f, 0x3c02}, {1.0f + 0x1.8p-11f, 0x3c01},
        {0x1p-40f, 0x0000}, {0x1p-149f, 0x0000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(krn_f32_to_f16(cases[i].f) == cases[i].h, "to_f16(%a) = %04x, want %04x",
              cases[i].f, krn_f32_to_f16(cases[i].f), cases[i].h);
        CHECK(krn_f32_to_f16_soft(cases[i].f) == cases[i].h, "soft to_f16(%a) = %04x, want %04x",
              cases[i].f, krn_f32_to_f16_soft(cases[i].f), cases[i].h);
    }

    int bad_hw = 0, bad_rne = 0;
    for (int i = 0; i < 2000000; i++) {
        /* exponents around the f16 range, so subnormals, ties and overflow all occur */
        uint32_t u = (uint32_t)rng_u64();
        u = (u & 0x807fffffu) | ((uint32_t)(95 + (u >> 23) % 50) << 23);
        if (i & 1) u &= ~0x0fffu;   /* many exact ties and exact values */
        float f = bits_f32(u);
        uint16_t h = krn_f32_to_f16_soft(f);
        bad_hw += h != krn_f32_to_f16(f);
        double d = fabs((double)krn_f16_to_f32(h) - f);
        uint16_t mag = h & 0x7fff;
        if (mag == 0x7c00) continue;   /* overflow to inf: covered by the cases above */
        for (int dn = -1; dn <= 1; dn += 2) {
            int nb = (int)mag + dn;
            if (nb < 0 || nb >= 0x7c00) continue;
            double dnb = fabs((double)krn_f16_to_f32((uint16_t)((h & 0x8000) | nb)) - f);
            bad_rne += dnb < d || (dnb == d && (mag & 1));
        }
    }
    CHECK(bad_hw == 0, "%d f32 values convert differently in the soft path", bad_hw);
    CHECK(bad_rne == 0, "%d f32 values not rounded to the nearest even f16", bad_rne);

    CHECK(krn_bf16_to_f32(0x3f80) == 1.0f && krn_bf16_to_f32(0xc040) == -3.0f, "bf16");
    CHECK(isnan(krn_bf16_to_f32(0x7fc1)) && isinf(krn_bf16_to_f32(0xff80)), "bf16 special");
}

/* vec_dot, matvec and matmul for one type and row length against the double reference. */
static void test_products(uint32_t type, int64_t n_cols) {
    static const int64_t rows_list[] = {1, 3, 17, 129};
    static const int64_t tok_list[] = {1, 2, 5, 33, 67};
    const int64_t max_rows = 129, max_tok = 67;
    uint8_t *W = make_matrix(type, max_rows, n_cols);
    size_t rb = krn_row_bytes(type, n_cols);
    float *wf = malloc(sizeof(float) * max_rows * n_cols);
    float *X = malloc(sizeof(float) * max_tok * n_cols);
    float *Y = malloc(sizeof(float) * max_tok * max_rows);
    double *ref = malloc(sizeof(double) * max_tok * max_rows);
    double *mag = malloc(sizeof(double) * max_tok * max_rows);
    for (int64_t r = 0; r < max_rows; r++) krn_dequantize_row(type, W + r * rb, wf + r * n_cols, n_cols);
    for (int64_t i = 0; i < max_tok * n_cols; i++) X[i] = (float)rng_unif(-1.0f, 1.0f);
    /* types with 8-bit activations (krn_type_i8): the reference sees x as the kernel rounds it,
     * per block of 32 d = max|x| / 127 and x' = d * nearbyint(x / d) (test_kernels bounds the
     * rounding itself against the unrounded x) */
    float *Xr = X;
    if (krn_type_i8(type)) {
        Xr = malloc(sizeof(float) * max_tok * n_cols);
        for (int64_t b = 0; b < max_tok * n_cols / 32; b++) {
            float am = 0.0f;
            for (int i = 0; i < 32; i++) am = fmaxf(am, fabsf(X[32 * b + i]));
            const float d = am / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
            for (int i = 0; i < 32; i++) Xr[32 * b + i] = d * nearbyintf(X[32 * b + i] * id);
        }
    }
    for (int64_t t = 0; t < max_tok; t++)
        for (int64_t r = 0; r < max_rows; r++)
            ref[t * max_rows + r] = ref_dot(wf + r * n_cols, Xr + t * n_cols, n_cols, &mag[t * max_rows + r]);
    if (Xr != X) free(Xr);
    const char *tn = krn_type_name(type);

    int bad = 0, nan_w = 0;
    for (int64_t i = 0; i < max_rows * n_cols; i++) nan_w += !isfinite(wf[i]);
    CHECK(nan_w == 0, "%s: %d non-finite decoded weights", tn, nan_w);
    for (int64_t t = 0; t < 3; t++)
        for (int64_t r = 0; r < max_rows; r++) {
            float got = krn_vec_dot(type, W + r * rb, X + t * n_cols, n_cols);
            if (!close_enough(got, ref[t * max_rows + r], mag[t * max_rows + r]) && bad++ < 3)
                fprintf(stderr, "  %s n=%lld row %lld: vec_dot %.9g ref %.9g\n", tn,
                        (long long)n_cols, (long long)r, got, ref[t * max_rows + r]);
        }
    CHECK(bad == 0, "%s n_cols=%lld: %d vec_dot results off", tn, (long long)n_cols, bad);

    for (size_t ir = 0; ir < sizeof rows_list / sizeof rows_list[0]; ir++) {
        int64_t n_rows = rows_list[ir];
        bad = 0;
        for (int64_t i = 0; i < n_rows; i++) Y[i] = NAN;
        krn_matvec(type, W, n_rows, n_cols, X, Y);
        for (int64_t r = 0; r < n_rows; r++) bad += !close_enough(Y[r], ref[r], mag[r]);
        CHECK(bad == 0, "%s matvec %lldx%lld: %d results off", tn, (long long)n_rows,
              (long long)n_cols, bad);

        for (size_t it = 0; it < sizeof tok_list / sizeof tok_list[0]; it++) {
            int64_t n_tok = tok_list[it];
            bad = 0;
            for (int64_t i = 0; i < n_tok * n_rows; i++) Y[i] = NAN;
            krn_matmul(type, W, n_rows, n_cols, X, n_tok, Y);
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t r = 0; r < n_rows; r++) {
                    float got = Y[t * n_rows + r];
                    double rf = ref[t * max_rows + r], mg = mag[t * max_rows + r];
                    if (!close_enough(got, rf, mg) && bad++ < 3)
                        fprintf(stderr, "  %s matmul %lldx%lld tok %lld row %lld: %.9g ref %.9g\n",
                                tn, (long long)n_rows, (long long)n_cols, (long long)t,
                                (long long)r, got, rf);
                }
            CHECK(bad == 0, "%s matmul %lldx%lld n_tok=%lld: %d results off", tn,
                  (long long)n_rows, (long long)n_cols, (long long)n_tok, bad);
        }
    }
    free(W); free(wf); free(X); free(Y); free(ref); free(mag);
}

/* Batch invariance, bitwise: for every n_tok, thread count and batch position, krn_matmul's
 * Y[t] equals krn_matvec on token t alone (and krn_vec_dot row by row), and a batch holding the
 * same tokens rotated by `shift` gives each token the same bits at its new position. */
static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

static void test_batch_invariance(uint32_t type, int64_t n_rows, int64_t n_cols) {
    static const int64_t tok_list[] = {1, 2, 3, 4, 5, 11, 12, 13, 31, 64};
    static const int threads[] = {1, 2, 3};
    const int64_t max_tok = 64;
    const char *tn = krn_type_name(type);
    size_t rb = krn_row_bytes(type, n_cols);
    uint8_t *W = make_matrix(type, n_rows, n_cols);
    float *X = malloc(sizeof(float) * max_tok * n_cols), *Xs = malloc(sizeof(float) * max_tok * n_cols);
    float *ref = malloc(sizeof(float) * max_tok * n_rows), *Y = malloc(sizeof(float) * max_tok * n_rows);
    float *Ys = malloc(sizeof(float) * max_tok * n_rows);
    for (int64_t i = 0; i < max_tok * n_cols; i++) X[i] = (float)rng_unif(-1.0f, 1.0f);

    set_threads(1);
    for (int64_t t = 0; t < max_tok; t++) krn_matvec(type, W, n_rows, n_cols, X + t * n_cols, ref + t * n_rows);
    int bad_dot = 0;
    for (int64_t t = 0; t < 3; t++)
        for (int64_t r = 0; r < n_rows; r++) {
            float d = krn_vec_dot(type, W + r * rb, X + t * n_cols, n_cols);
            bad_dot += memcmp(&d, ref + t * n_rows + r, sizeof d) != 0;
        }
    CHECK(bad_dot == 0, "%s %lldx%lld: %d vec_dot results differ from matvec", tn,
          (long long)n_rows, (long long)n_cols, bad_dot);
    /* krn_matmul_f32 on the decoded rows (packed n_cols apart, so unaligned for odd lengths) */
    float *wf = malloc(sizeof(float) * n_rows * n_cols);
    for (int64_t r = 0; r < n_rows; r++) krn_dequantize_row(type, W + r * rb, wf + r * n_cols, n_cols);
    krn_matmul_f32(wf, n_cols, n_rows, X, n_cols, 13, n_cols, Y, n_rows);
    /* (not for 8-bit-activation types: their products never go through the f32 core) */
    CHECK(krn_type_i8(type) || memcmp(Y, ref, sizeof(float) * 13 * n_rows) == 0,
          "%s %lldx%lld: matmul_f32 differs from matvec", tn, (long long)n_rows, (long long)n_cols);
    free(wf);

    for (size_t ith = 0; ith < sizeof threads / sizeof threads[0]; ith++) {
        set_threads(threads[ith]);
        int bad_mv = 0;
        for (int64_t t = 0; t < max_tok; t += 7) {
            krn_matvec(type, W, n_rows, n_cols, X + t * n_cols, Y);
            bad_mv += memcmp(Y, ref + t * n_rows, sizeof(float) * n_rows) != 0;
        }
        CHECK(bad_mv == 0, "%s %lldx%lld threads=%d: %d matvec tokens change with threads", tn,
              (long long)n_rows, (long long)n_cols, threads[ith], bad_mv);
        for (size_t it = 0; it < sizeof tok_list / sizeof tok_list[0]; it++) {
            int64_t n_tok = tok_list[it], shift = n_tok / 2 + 1;
            krn_matmul(type, W, n_rows, n_cols, X, n_tok, Y);
            int bad = 0, bad_pos = 0;
            for (int64_t t = 0; t < n_tok; t++)
                if (memcmp(Y + t * n_rows, ref + t * n_rows, sizeof(float) * n_rows) != 0 && bad++ < 2)
                    for (int64_t r = 0; r < n_rows; r++)
                        if (memcmp(Y + t * n_rows + r, ref + t * n_rows + r, sizeof(float)) != 0) {
                            fprintf(stderr, "  %s n_tok=%lld tok %lld row %lld: matmul %a matvec %a\n",
                                    tn, (long long)n_tok, (long long)t, (long long)r,
                                    Y[t * n_rows + r], ref[t * n_rows + r]);
                            break;
                        }
            CHECK(bad == 0, "%s %lldx%lld threads=%d n_tok=%lld: %d tokens differ from matvec", tn,
                  (long long)n_rows, (long long)n_cols, threads[ith], (long long)n_tok, bad);
            /* token t moves to position (t + shift) % n_tok */
            for (int64_t t = 0; t < n_tok; t++)
                memcpy(Xs + (t + shift) % n_tok * n_cols, X + t * n_cols, sizeof(float) * n_cols);
            krn_matmul(type, W, n_rows, n_cols, Xs, n_tok, Ys);
            for (int64_t t = 0; t < n_tok; t++)
                bad_pos += memcmp(Ys + (t + shift) % n_tok * n_rows, Y + t * n_rows,
                                  sizeof(float) * n_rows) != 0;
            CHECK(bad_pos == 0, "%s %lldx%lld threads=%d n_tok=%lld: %d tokens change with position",
                  tn, (long long)n_rows, (long long)n_cols, threads[ith], (long long)n_tok, bad_pos);
        }
    }
    set_threads(1);
    free(W); free(X); free(Xs); free(ref); free(Y); free(Ys);
}

int main(void) {
    test_type_table();
    test_f16();
    for (int i = 0; i < N_TYPES; i++) {
        uint32_t type = all_types[i];
        int bs = krn_type_block_size(type);
        /* plain types: odd lengths; block types: 1, 2, 3, 5 blocks and a model-sized row */
        static const int64_t plain[] = {1, 3, 17, 100, 257, 640};
        static const int64_t blocks[] = {1, 2, 3, 5, 0};
        for (int j = 0; j < 6 && bs == 1; j++) test_products(type, plain[j]);
        for (int j = 0; j < 5 && bs > 1; j++)
            test_products(type, blocks[j] ? blocks[j] * bs : (bs == 32 ? 640 : 2048));
    }
    int max_threads = 1;
#ifdef _OPENMP
    max_threads = omp_get_max_threads();
#endif
    /* row counts off every tile multiple; lengths odd (plain types), with a half 64-column
     * group (32-blocks), and long enough to cross column chunks */
    for (int i = 0; i < N_TYPES; i++) {
        uint32_t type = all_types[i];
        int bs = krn_type_block_size(type);
        test_batch_invariance(type, 131, bs == 1 ? 1063 : bs == 32 ? 1120 : 1280);
        test_batch_invariance(type, 7, bs == 1 ? 37 : bs == 32 ? 96 : 256);
    }
    set_threads(max_threads);
    krn_matmul_scratch_free();
    return check_summary("test_quant");
}
