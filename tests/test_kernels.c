/* Every product and attention kernel against a plain scalar double-precision reference, over odd
 * sizes. tests/test_quant.c checks the products against a double loop over the weights that
 * krn_dequantize_row decoded, at a few row lengths; tests/test_attn_sparse.c checks the attention
 * kernels against krn_attn_dense (f32) through kvcache/ views with head dims 64/128/256. This file
 * covers what they leave open:
 *
 *  products (krn_vec_dot, krn_matvec, krn_matvec_n, krn_matmul; all 11 types):
 *   - a reference decoder of its own per type (scalar, written from the ggml block layouts), so a
 *     slip shared by the kernels' decoders and krn_dequantize_row cannot hide;
 *   - every row length that is a multiple of the block size up to 4096 (plain types: 1..80, then
 *     a sweep up to 4099), rows 1, 3, 17 and 129;
 *   - random data within |got - ref| <= gamma(n) * sum_i |w_i x_i|, gamma(n) = (2 ceil(n/8) + 8) u,
 *     u = 2^-24: one rounding per decoded weight, one or two (FMA or not) per term of a lane of at
 *     most ceil(n/8) terms, four more for the fold -- the worst case of any summation order the
 *     kernels may use (quant.c);
 *   - exact data: one power-of-two scale per matrix, integer codes and activations in {-1, 0, 1},
 *     so every partial sum is an integer multiple of the scale below 2^24 and exact in f32: any
 *     order must give the reference's bits, and a dropped, doubled or misplaced element shows;
 *   - batch invariance at every size: krn_matmul's row for token t is bitwise krn_matvec's
 *     (n_tok 3 and 7 everywhere, 129 and 257 on model-like sizes);
 *   - NaN: outputs finite on finite data; a NaN weight poisons its own row only; a NaN activation
 *     poisons every row;
 *   - krn_matvec_n: several matrices (types mixed, odd row counts) in one call, each bitwise its
 *     krn_matvec alone, on 1 and 2 threads.
 *
 *  attention (attn_range, attn_ids, attn_merge, krn_attn_dense):
 *   - paged views built here by hand (pages of 16 and 64 tokens, odd strides, nonzero offsets, a
 *     ring), f32 and f16 rows; the reference reads the same stored values;
 *   - head dims off the SIMD width (dk, dv in 1, 7, 24, 100, 72, 256, dk != dv);
 *   - token counts 1, 3, 129, 257, 2049; split-K at 4099 and 6151 keys on 2 and 3 threads;
 *   - every GQA group size 1..ATTN_MAX_GROUP + 1;
 *   - ids shuffled, ids with duplicates (counted twice, as attn_sparse.h documents), merges of
 *     parts with empty parts on either side;
 *   - peaked softmax (scores up to ~1000: no overflow, finite output);
 *   - tolerance (ref_result): |out - ref| <= T u (sum_j p_j |v_j| + 1e-3 max_j |v_j|) per output
 *     element and |lse - ref| <= (T + |lse|) u, T = 16 S + 16 sqrt(n) + 64 with S the largest
 *     scale * sum_i |q_i k_i| over the keys; NaN anywhere fails.
 * Runs in about 3 s on 2 cores. */
#include "attn_sparse.h"
#include "check.h"
#include "clock.h"
#include "ops.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* ==== reference decoders ======================================================================
 * Straight from the ggml block layouts, one element at a time, in double. */

static double ref_half(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
    return s ? -v : v;
}
static double rd_half(const uint8_t *p) { return ref_half((uint16_t)(p[0] | p[1] << 8)); }

static double ref_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (ggml's get_scale_min_k4). */
static void ref_scale_min(const uint8_t *q, int j, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Decodes one block of `type` at b into y (block-size elements). */
static void ref_decode_block(uint32_t type, const uint8_t *b, double *y) {
    switch (type) {
    case KRN_TYPE_F32: { float f; memcpy(&f, b, 4); y[0] = f; return; }
    case KRN_TYPE_F16: y[0] = rd_half(b); return;
    case KRN_TYPE_BF16: y[0] = ref_bf16((uint16_t)(b[0] | b[1] << 8)); return;
    case KRN_TYPE_Q4_0: {
        double d = rd_half(b);
        for (int j = 0; j < 16; j++) {
            y[j] = d * ((b[2 + j] & 15) - 8);
            y[j + 16] = d * ((b[2 + j] >> 4) - 8);
        }
        return;
    }
    case KRN_TYPE_Q4_1: {
        double d = rd_half(b), m = rd_half(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (b[4 + j] & 15) + m;
            y[j + 16] = d * (b[4 + j] >> 4) + m;
        }
        return;
    }
    case KRN_TYPE_Q5_0: case KRN_TYPE_Q5_1: {
        int one = type == KRN_TYPE_Q5_1;
        double d = rd_half(b), m = one ? rd_half(b + 2) : 0.0;
        const uint8_t *qh = b + (one ? 4 : 2), *qs = qh + 4;
        uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
        for (int j = 0; j < 16; j++) {
            int x0 = (qs[j] & 15) | (int)((h >> j) & 1) << 4;
            int x1 = (qs[j] >> 4) | (int)((h >> (j + 16)) & 1) << 4;
            y[j] = one ? d * x0 + m : d * (x0 - 16);
            y[j + 16] = one ? d * x1 + m : d * (x1 - 16);
        }
        return;
    }
    case KRN_TYPE_Q8_0: {
        double d = rd_half(b);
        for (int j = 0; j < 32; j++) y[j] = d * (int8_t)b[2 + j];
        return;
    }
    case KRN_TYPE_Q4_K: case KRN_TYPE_Q5_K: {
        int five = type == KRN_TYPE_Q5_K;
        double d = rd_half(b), dmin = rd_half(b + 2);
        const uint8_t *sc = b + 4, *qh = b + 16, *ql = b + (five ? 48 : 16);
        for (int g = 0; g < 4; g++) {           /* 64 elements: two sub-blocks */
            int s0, m0, s1, m1;
            ref_scale_min(sc, 2 * g, &s0, &m0);
            ref_scale_min(sc, 2 * g + 1, &s1, &m1);
            for (int l = 0; l < 32; l++) {
                int x0 = ql[32 * g + l] & 15, x1 = ql[32 * g + l] >> 4;
                if (five) {
                    x0 += (qh[l] >> (2 * g)) & 1 ? 16 : 0;
                    x1 += (qh[l] >> (2 * g + 1)) & 1 ? 16 : 0;
                }
                y[64 * g + l] = d * s0 * x0 - dmin * m0;
                y[64 * g + 32 + l] = d * s1 * x1 - dmin * m1;
            }
        }
        return;
    }
    case KRN_TYPE_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        double d = rd_half(b + 208);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        return;
    }
    default:
        y[0] = NAN;
    }
}

/* ==== weight matrices ==========================================================================
 * One buffer of MAX_ROWS rows of MAX_COLS elements per type, read as a matrix of any row length
 * n (a multiple of the block size): row r at byte r * row_bytes(n). Every block is valid wherever
 * it lands, and the reference decodes the whole buffer once. */

enum { MAX_ROWS = 129, MAX_COLS = 4096 + 3, MAX_TOK = 7 };

static const uint32_t all_types[] = {
    KRN_TYPE_F32, KRN_TYPE_F16, KRN_TYPE_BF16, KRN_TYPE_Q4_0, KRN_TYPE_Q4_1, KRN_TYPE_Q5_0,
    KRN_TYPE_Q5_1, KRN_TYPE_Q8_0, KRN_TYPE_Q4_K, KRN_TYPE_Q5_K, KRN_TYPE_Q6_K,
};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

static void put_half(uint8_t *p, double v) {
    uint16_t h = krn_f32_to_f16((float)v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* Fills n_elem elements' worth of blocks. exact = 0: random codes, f16 scales of random sign and
 * magnitude in [0.01, 2], plain values uniform in [-1, 1]. exact = 1: scales +-1/8 (minimums of
 * Q4_1/Q5_1 an integer multiple of 1/8, of the K types +-1/8 times their 6-bit code), plain
 * values integers in [-255, 255] / 8: every decoded weight an integer multiple of 1/8 below 2^12. */
static void fill_weights(uint32_t type, uint8_t *m, int64_t n_elem, int exact) {
    int bs = krn_type_block_size(type);
    size_t bb = krn_type_block_bytes(type);
    for (int64_t i = 0; i < n_elem / bs; i++) {
        uint8_t *b = m + (size_t)i * bb;
        for (size_t k = 0; k < bb; k++) b[k] = (uint8_t)rng_u64();
        double sgn = rng_u64() & 1 ? 1.0 : -1.0;
        double sc = exact ? 0.125 * sgn : rng_unif(0.01, 2.0) * sgn;
        double plain = exact ? (rng_int(511) - 255) / 8.0 : rng_unif(-1.0, 1.0);
        switch (type) {
        case KRN_TYPE_F32: { float f = (float)plain; memcpy(b, &f, 4); break; }
        case KRN_TYPE_F16: put_half(b, plain); break;
        case KRN_TYPE_BF16: {
            float f = (float)plain;
            uint32_t u;
            memcpy(&u, &f, 4);
            u = exact ? u >> 16 : (u + 0x7fff + ((u >> 16) & 1)) >> 16;   /* exact: already fits */
            b[0] = (uint8_t)u;
            b[1] = (uint8_t)(u >> 8);
            break;
        }
        case KRN_TYPE_Q4_0: case KRN_TYPE_Q5_0: case KRN_TYPE_Q8_0: put_half(b, sc); break;
        case KRN_TYPE_Q4_1: case KRN_TYPE_Q5_1:
            put_half(b, sc);
            put_half(b + 2, exact ? (rng_int(33) - 16) * 0.125 : rng_unif(-2.0, 2.0));
            break;
        case KRN_TYPE_Q4_K: case KRN_TYPE_Q5_K:
            put_half(b, sc);
            put_half(b + 2, exact ? 0.125 : rng_unif(0.0, 0.1));
            break;
        case KRN_TYPE_Q6_K: put_half(b + 208, sc); break;
        default: break;
        }
    }
}

typedef struct {
    uint32_t type;
    uint8_t *w;       /* MAX_ROWS * MAX_COLS elements of blocks */
    double *wd;       /* the same, decoded by the reference */
} matrix;

static void matrix_make(matrix *M, uint32_t type, int exact) {
    int64_t n = ((int64_t)MAX_ROWS * MAX_COLS + 255) / 256 * 256;   /* whole blocks of every type */
    int bs = krn_type_block_size(type);
    M->type = type;
    M->w = malloc(krn_row_bytes(type, n));
    M->wd = malloc(sizeof(double) * n);
    fill_weights(type, M->w, n, exact);
    size_t bb = krn_type_block_bytes(type);
    for (int64_t i = 0; i < n / bs; i++) ref_decode_block(type, M->w + (size_t)i * bb, M->wd + i * bs);
}

static void matrix_free(matrix *M) { free(M->w); free(M->wd); }

/* Reference dot of row r (row length n) with x; *mag = sum |w_i x_i|. */
static double ref_row_dot(const matrix *M, int64_t r, int64_t n, const float *x, double *mag) {
    const double *w = M->wd + r * n;
    double s = 0, a = 0;
    for (int64_t i = 0; i < n; i++) {
        s += w[i] * x[i];
        a += fabs(w[i] * x[i]);
    }
    *mag = a;
    return s;
}

static double gamma_n(int64_t n) { return (2.0 * (double)((n + 7) / 8) + 8.0) * 0x1.0p-24; }

/* Types whose products quantize the activations (krn_type_i8): x rounded as the kernel does,
 * d = max|x| / 127 per block of 32 and x' = d * nearbyint(x / d), into xq (double); the
 * rounding bound sum |w_i| * d / 2 of row r into *qb. */
static void ref_quant_x(const float *x, int64_t n, double *xq) {
    for (int64_t b = 0; b < n / 32; b++) {
        float am = 0.0f;
        for (int i = 0; i < 32; i++) am = fmaxf(am, fabsf(x[32 * b + i]));
        const float d = am / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int i = 0; i < 32; i++) xq[32 * b + i] = (double)d * nearbyintf(x[32 * b + i] * id);
    }
}

static double ref_quant_bound(const matrix *M, int64_t r, int64_t n, const float *x) {
    const double *w = M->wd + r * n;
    double qb = 0;
    for (int64_t b = 0; b < n / 32; b++) {
        float am = 0.0f;
        double sw = 0;
        for (int i = 0; i < 32; i++) {
            am = fmaxf(am, fabsf(x[32 * b + i]));
            sw += fabs(w[32 * b + i]);
        }
        qb += sw * (am / 127.0) / 2;
    }
    return qb;
}

/* Products of one type at row length n against the reference and each other. exact: the data
 * came from fill_weights(exact = 1) and x holds {-1, 0, 1}. Returns the worst error seen as a
 * multiple of gamma(n) * mag (random data), for the report. */
static double check_products(const matrix *M, int64_t n, const float *X, int exact) {
    static const int64_t rows_list[] = {1, 3, 17, MAX_ROWS};
    const uint32_t type = M->type;
    const char *tn = krn_type_name(type);
    size_t rb = krn_row_bytes(type, n);
    float y[MAX_ROWS], ymm[MAX_TOK * MAX_ROWS], ytok[MAX_TOK][MAX_ROWS];
    double worst = 0;
    int bad = 0, bad_bits = 0, bad_dot = 0, nonfinite = 0;

    /* matvec per token over all rows: the reference for everything below */
    for (int t = 0; t < MAX_TOK; t++) krn_matvec(type, M->w, MAX_ROWS, n, X + t * n, ytok[t]);
    /* 8-bit activations: against the quantized x within the f32 bound, and against x within
     * the rounding bound of the quantization */
    const int i8 = krn_type_i8(type);
    double *xqd = i8 ? malloc(sizeof(double) * n) : NULL;
    int bad_q = 0;
    for (int t = 0; t < 2; t++)
        for (int64_t r = 0; r < MAX_ROWS; r++) {
            double mag, ref = ref_row_dot(M, r, n, X + t * n, &mag);
            float got = ytok[t][r];
            nonfinite += !isfinite(got);
            if (i8) {
                const double qb = ref_quant_bound(M, r, n, X + t * n);
                const double e0 = fabs(got - ref), l0 = qb + gamma_n(n) * mag + 1e-30;
                if (!(e0 <= l0) && bad_q++ < 3)
                    fprintf(stderr, "  %s n=%lld row %lld tok %d: f32 ref %.9g got %.9g (err %.3g, "
                            "quantization bound %.3g)\n", tn, (long long)n, (long long)r, t, ref, got, e0, l0);
                ref_quant_x(X + t * n, n, xqd);
                double s = 0, a = 0;
                for (int64_t i = 0; i < n; i++) {
                    s += M->wd[r * n + i] * xqd[i];
                    a += fabs(M->wd[r * n + i] * xqd[i]);
                }
                ref = s;
                mag = a;
                exact = 0;   /* the quantized x ({-1, 0, 1} -> d * 127) is no longer exact */
            }
            if (exact) {
                if (got != (float)ref && bad++ < 3)
                    fprintf(stderr, "  %s n=%lld row %lld tok %d: exact %.9g got %.9g\n", tn,
                            (long long)n, (long long)r, t, ref, got);
                continue;
            }
            double err = fabs(got - ref), lim = gamma_n(n) * mag + 1e-30;
            if (err / lim > worst) worst = err / lim;
            if (!(err <= lim) && bad++ < 3)
                fprintf(stderr, "  %s n=%lld row %lld tok %d: ref %.9g got %.9g (err %.3g, limit %.3g)\n",
                        tn, (long long)n, (long long)r, t, ref, got, err, lim);
        }
    /* fewer rows, vec_dot: same bits as the full matvec (rows are independent) */
    for (size_t ir = 0; ir + 1 < sizeof rows_list / sizeof *rows_list; ir++) {
        int64_t nr = rows_list[ir];
        krn_matvec(type, M->w, nr, n, X, y);
        bad_bits += memcmp(y, ytok[0], sizeof(float) * nr) != 0;
    }
    for (int64_t r = 0; r < MAX_ROWS; r += 16) {
        float d = krn_vec_dot(type, M->w + r * rb, X + n, n);
        bad_dot += memcmp(&d, &ytok[1][r], sizeof d) != 0;
    }
    /* matmul, 3 and 7 tokens, all and few rows: each token's row bitwise matvec's */
    for (size_t ir = 0; ir < sizeof rows_list / sizeof *rows_list; ir++) {
        int64_t nr = rows_list[ir];
        for (int nt = 3; nt <= MAX_TOK; nt += MAX_TOK - 3) {
            krn_matmul(type, M->w, nr, n, X, nt, ymm);
            for (int t = 0; t < nt; t++) bad_bits += memcmp(ymm + t * nr, ytok[t], sizeof(float) * nr) != 0;
        }
    }
    free(xqd);
    CHECK(bad_q == 0, "%s n=%lld: %d 8-bit-activation outputs beyond the quantization bound", tn,
          (long long)n, bad_q);
    CHECK(nonfinite == 0, "%s n=%lld: %d non-finite outputs", tn, (long long)n, nonfinite);
    CHECK(bad == 0, "%s n=%lld %s: %d matvec outputs off the reference", tn, (long long)n,
          exact ? "exact" : "random", bad);
    CHECK(bad_bits == 0, "%s n=%lld: %d matvec(fewer rows)/matmul results differ from matvec bits", tn,
          (long long)n, bad_bits);
    CHECK(bad_dot == 0, "%s n=%lld: %d vec_dot results differ from matvec bits", tn, (long long)n, bad_dot);
    return worst;
}

/* The row lengths tried for a type: every multiple of the block size up to 4096; plain types
 * 1..80, then steps of about 1/16 up to 4099, with the lengths around 256, 1024 and 4096. */
static int row_lengths(int bs, int64_t *out) {
    int k = 0;
    if (bs > 1) {
        for (int64_t n = bs; n <= 4096; n += bs) out[k++] = n;
        return k;
    }
    for (int64_t n = 1; n <= 80; n++) out[k++] = n;
    for (int64_t n = 81; n < 4096; n += n / 16 + 1) out[k++] = n;
    static const int64_t extra[] = {255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 4099};
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) out[k++] = extra[i];
    return k;
}

static void test_products(void) {
    float *X = malloc(sizeof(float) * MAX_TOK * MAX_COLS), *Xe = malloc(sizeof(float) * MAX_TOK * MAX_COLS);
    int64_t lens[512];
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        const char *tn = krn_type_name(type);
        int nl = row_lengths(krn_type_block_size(type), lens);
        matrix M, E;
        matrix_make(&M, type, 0);
        matrix_make(&E, type, 1);
        double worst = 0;
        for (int li = 0; li < nl; li++) {
            int64_t n = lens[li];
            for (int64_t i = 0; i < MAX_TOK * n; i++) {
                X[i] = (float)rng_unif(-1.0, 1.0);
                Xe[i] = (float)(rng_int(3) - 1);
            }
            double w = check_products(&M, n, X, 0);
            if (w > worst) worst = w;
            check_products(&E, n, Xe, 1);
        }
        printf("  %-5s %3d row lengths: worst random error %.3f of the bound\n", tn, nl, worst);
        matrix_free(&M);
        matrix_free(&E);
    }
    free(X);
    free(Xe);
}

/* krn_matmul with many tokens (several token ranges and tiles per thread) at a model-like row
 * length on `threads` threads, every token bitwise krn_matvec's. */
static void test_matmul_many_tokens(int threads) {
    static const int toks[] = {129, 257};
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        int bs = krn_type_block_size(type);
        int64_t n = bs == 1 ? 641 : bs == 32 ? 640 : 1024, nr = MAX_ROWS;
        matrix M;
        matrix_make(&M, type, 0);
        float *X = malloc(sizeof(float) * 257 * n), *Y = malloc(sizeof(float) * 257 * nr), y[MAX_ROWS];
        for (int64_t i = 0; i < 257 * n; i++) X[i] = (float)rng_unif(-1.0, 1.0);
        for (int k = 0; k < 2; k++) {
            set_threads(threads);
            krn_matmul(type, M.w, nr, n, X, toks[k], Y);
            set_threads(1);   /* matvec gives the same bits on any thread count (test_quant.c) */
            int bad = 0;
            for (int t = 0; t < toks[k]; t++) {
                krn_matvec(type, M.w, nr, n, X + t * n, y);
                bad += memcmp(y, Y + t * nr, sizeof y) != 0;
            }
            CHECK(bad == 0, "%s %lldx%lld n_tok=%d: %d tokens differ from matvec", krn_type_name(type),
                  (long long)nr, (long long)n, toks[k], bad);
        }
        free(X); free(Y);
        matrix_free(&M);
    }
}

/* krn_matvec_n on n matrices (types t, r rows each) sharing x of n_cols, on 1 and 2 threads:
 * the outputs that differ in bits from krn_matvec's on each matrix alone, plus the y's whose
 * element past the last row was written. */
static int matvec_n_bad(int n, const uint32_t *t, const int64_t *r, int64_t n_cols) {
    enum { MAXN = 16 };
    krn_mv mv[MAXN];
    float *ref[MAXN], *x = malloc(sizeof(float) * n_cols);
    uint8_t *w[MAXN];
    for (int64_t k = 0; k < n_cols; k++) x[k] = (float)rng_unif(-1.0, 1.0);
    for (int i = 0; i < n; i++) {
        const int ok = krn_type_supported(t[i]);
        w[i] = malloc(ok ? krn_row_bytes(t[i], (r[i] + 1) * n_cols) : 1);
        if (ok) fill_weights(t[i], w[i], r[i] * n_cols, 0);
        ref[i] = malloc(sizeof(float) * (r[i] + 1));
        krn_matvec(t[i], w[i], r[i], n_cols, x, ref[i]);
        mv[i] = (krn_mv){.type = t[i], .W = w[i], .n_rows = r[i], .y = malloc(sizeof(float) * (r[i] + 1))};
    }
    int bad = 0;
    for (int th = 1; th <= 2; th++) {
        set_threads(th);
        for (int i = 0; i < n; i++) {
            memset(mv[i].y, 0, sizeof(float) * r[i]);
            mv[i].y[r[i]] = 12345.0f;
        }
        krn_matvec_n(n, mv, n_cols, x);
        for (int i = 0; i < n; i++) {
            for (int64_t k = 0; k < r[i]; k++) bad += memcmp(&mv[i].y[k], &ref[i][k], sizeof(float)) != 0;
            bad += mv[i].y[r[i]] != 12345.0f;
        }
    }
    set_threads(1);
    for (int i = 0; i < n; i++) { free(w[i]); free(ref[i]); free(mv[i].y); }
    free(x);
    return bad;
}

/* krn_matvec_n gives every matrix krn_matvec's bits: three matrices of each type (1, 37 and 300
 * rows) at three row lengths; all 11 types in one call (more than KRN_MV_MAX matrices, every
 * 8-bit kind next to f32-path types, matrices of 0 rows) with an unsupported type (NaN); the
 * three 8-bit kinds in one region. krn_matvec itself is checked against the reference above. */
static void test_matvec_n(void) {
    static const int64_t rows[] = {1, 37, 300, 0};
    uint32_t t[N_TYPES + 1];
    int64_t r[N_TYPES + 1];
    for (int ti = 0; ti < N_TYPES; ti++) {
        const uint32_t type = all_types[ti];
        const int64_t bs = krn_type_block_size(type);
        const int64_t lens[] = {bs, 3 * bs, bs == 1 ? 641 : bs == 32 ? 640 : 1024};
        for (int li = 0; li < 3; li++) {
            for (int i = 0; i < 3; i++) t[i] = type;
            int bad = matvec_n_bad(3, t, rows, lens[li]);
            CHECK(bad == 0, "%s n=%lld: krn_matvec_n of 1, 37, 300 rows: %d outputs differ from krn_matvec",
                  krn_type_name(type), (long long)lens[li], bad);
        }
    }
    for (int ti = 0; ti < N_TYPES; ti++) {
        t[ti] = all_types[ti];
        r[ti] = rows[ti % 4];
    }
    t[N_TYPES] = 4;   /* no such type (ggml's removed Q4_2) */
    r[N_TYPES] = 37;
    int bad = matvec_n_bad(N_TYPES + 1, t, r, 1024);
    CHECK(bad == 0, "krn_matvec_n of all types and an unsupported one: %d outputs differ from krn_matvec", bad);
    const uint32_t kinds[] = {KRN_TYPE_Q6_K, KRN_TYPE_Q5_0, KRN_TYPE_Q4_K, KRN_TYPE_Q8_0};
    const int64_t kr[] = {37, 300, 1, 300};
    bad = matvec_n_bad(4, kinds, kr, 2048);
    CHECK(bad == 0, "krn_matvec_n of q6_k, q5_0, q4_k, q8_0: %d outputs differ from krn_matvec", bad);
}

/* A NaN weight poisons its own row only; a NaN activation poisons every row. */
static void test_products_nan(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        int bs = krn_type_block_size(type);
        int64_t n = bs == 1 ? 257 : 4 * bs, nr = 17, poisoned = 5;
        size_t rb = krn_row_bytes(type, n), bb = krn_type_block_bytes(type);
        matrix M;
        matrix_make(&M, type, 0);
        /* a NaN in the second block of row 5: a NaN scale for block types, a NaN element otherwise */
        uint8_t *b = M.w + poisoned * rb + bb;
        switch (type) {
        case KRN_TYPE_F32: { float f = NAN; memcpy(b, &f, 4); break; }
        case KRN_TYPE_F16: b[0] = 0x00; b[1] = 0x7e; break;
        case KRN_TYPE_BF16: b[0] = 0xc0; b[1] = 0x7f; break;
        case KRN_TYPE_Q6_K: b[208] = 0x00; b[209] = 0x7e; break;
        default: b[0] = 0x00; b[1] = 0x7e; break;
        }
        float *X = malloc(sizeof(float) * 3 * n), Y[3 * 17];
        for (int64_t i = 0; i < 3 * n; i++) X[i] = (float)rng_unif(-1.0, 1.0);
        int bad = 0;
        for (int nt = 1; nt <= 3; nt += 2) {
            krn_matmul(type, M.w, nr, n, X, nt, Y);
            for (int t = 0; t < nt; t++)
                for (int64_t r = 0; r < nr; r++) bad += (r == poisoned) != !!isnan(Y[t * nr + r]);
        }
        CHECK(bad == 0, "%s: a NaN weight in row %lld: %d rows wrong (NaN elsewhere, or lost)",
              krn_type_name(type), (long long)poisoned, bad);
        matrix_free(&M);
        matrix_make(&M, type, 0);
        X[n + n / 2] = NAN;   /* token 1 */
        krn_matmul(type, M.w, nr, n, X, 3, Y);
        bad = 0;
        for (int t = 0; t < 3; t++)
            for (int64_t r = 0; r < nr; r++) bad += (t == 1) != !!isnan(Y[t * nr + r]);
        CHECK(bad == 0, "%s: a NaN activation of token 1: %d outputs wrong", krn_type_name(type), bad);
        free(X);
        matrix_free(&M);
    }
}

/* ==== attention ================================================================================ */

/* A paged K/V store built by hand: page p holds tokens [p << shift, (p + 1) << shift) (modulo the
 * ring), K rows k_stride elements apart starting k_off bytes into the page, V rows after them. */
typedef struct {
    int n, dk, dv;
    float *K, *V;           /* (n, dk), (n, dv): the stored values (f16-rounded for f16) */
    void **pages;
    int n_pages;
    attn_kv_view v;
} store;

static void store_build(store *s, int n, int dk, int dv, attn_dtype dt, int shift, int ring,
                        double kmag) {
    const int ps = 1 << shift, elt = dt == ATTN_F32 ? 4 : 2;
    memset(s, 0, sizeof *s);
    s->n = n; s->dk = dk; s->dv = dv;
    s->K = malloc(sizeof(float) * n * dk);
    s->V = malloc(sizeof(float) * n * dv);
    for (int i = 0; i < n * dk; i++) s->K[i] = (float)rng_unif(-kmag, kmag);
    for (int i = 0; i < n * dv; i++) s->V[i] = (float)rng_unif(-1.0, 1.0);
    if (dt == ATTN_F16) {
        for (int i = 0; i < n * dk; i++) s->K[i] = (float)ref_half(krn_f32_to_f16(s->K[i]));
        for (int i = 0; i < n * dv; i++) s->V[i] = (float)ref_half(krn_f32_to_f16(s->V[i]));
    }
    attn_kv_view *v = &s->v;
    v->page_shift = shift;
    v->ring_pages = ring;
    v->dk = dk; v->dv = dv; v->dtype = dt;
    v->k_stride = dk + 3;
    v->v_stride = dv + 1;
    v->k_off = (size_t)5 * elt;
    v->v_off = v->k_off + (size_t)ps * v->k_stride * elt + 2 * elt;
    size_t page_bytes = v->v_off + (size_t)ps * v->v_stride * elt;
    s->n_pages = ring ? ring : (n + ps - 1) / ps;
    s->pages = calloc(s->n_pages, sizeof(void *));
    for (int p = 0; p < s->n_pages; p++) s->pages[p] = calloc(1, page_bytes);
    v->pages = (const void *const *)s->pages;
    int first = ring ? n - (ring << shift) : 0;
    for (int t = first < 0 ? 0 : first; t < n; t++) {
        char *pg = s->pages[ring ? (t >> shift) % ring : t >> shift];
        int r = t & (ps - 1);
        char *kr = pg + v->k_off + (size_t)r * v->k_stride * elt, *vr = pg + v->v_off + (size_t)r * v->v_stride * elt;
        for (int i = 0; i < dk; i++) {
            if (dt == ATTN_F32) memcpy(kr + 4 * i, &s->K[t * dk + i], 4);
            else { uint16_t h = krn_f32_to_f16(s->K[t * dk + i]); memcpy(kr + 2 * i, &h, 2); }
        }
        for (int i = 0; i < dv; i++) {
            if (dt == ATTN_F32) memcpy(vr + 4 * i, &s->V[t * dv + i], 4);
            else { uint16_t h = krn_f32_to_f16(s->V[t * dv + i]); memcpy(vr + 2 * i, &h, 2); }
        }
    }
}

static void store_free(store *s) {
    for (int p = 0; p < s->n_pages; p++) free(s->pages[p]);
    free(s->pages); free(s->K); free(s->V);
}

enum { GMAX = ATTN_MAX_GROUP + 1 };

/* The reference: n_q queries over the positions pos[0..n), in double, with what the tolerance
 * needs: per output element the magnitude sum_j p_j |v_j| (+ 1e-3 max |v| so that a near-zero sum
 * does not demand more than f32 can give), per query the score magnitude S = max_j scale
 * sum_i |q_i k_ji| and the budget T = 16 S + 16 sqrt(n) + 64: the f32 score errors (~u S), the sums
 * over n keys (~u sqrt(n) on random data) and a few roundings. Limits: |out - ref| <= T u mag and
 * |lse - ref| <= (T + |lse|) u. */
typedef struct { double out[GMAX * 257], mag[GMAX * 257], lse[GMAX], budget[GMAX]; } ref_result;

static void ref_attn(const store *s, const float *q, int n_q, const int32_t *pos, int64_t n,
                     double scale, ref_result *R) {
    const int dk = s->dk, dv = s->dv;
    double *sc = malloc(sizeof(double) * (n ? n : 1));
    for (int g = 0; g < n_q; g++) {
        double *o = R->out + g * dv, *mg = R->mag + g * dv, m = -INFINITY, d = 0, vmax = 0, smag = 0;
        for (int i = 0; i < dv; i++) o[i] = mg[i] = 0;
        for (int64_t j = 0; j < n; j++) {
            double acc = 0, a = 0;
            for (int i = 0; i < dk; i++) {
                double t = (double)q[g * dk + i] * s->K[(int64_t)pos[j] * dk + i];
                acc += t;
                a += fabs(t);
            }
            sc[j] = scale * acc;
            if (sc[j] > m) m = sc[j];
            if (fabs(scale) * a > smag) smag = fabs(scale) * a;
        }
        for (int64_t j = 0; j < n; j++) {
            double p = exp(sc[j] - m);
            d += p;
            for (int i = 0; i < dv; i++) {
                double x = s->V[(int64_t)pos[j] * dv + i];
                o[i] += p * x;
                mg[i] += p * fabs(x);
                if (fabs(x) > vmax) vmax = fabs(x);
            }
        }
        for (int i = 0; i < dv; i++) {
            o[i] = n ? o[i] / d : 0.0;
            mg[i] = (n ? mg[i] / d : 0.0) + 1e-3 * vmax;
        }
        R->lse[g] = n ? m + log(d) : -INFINITY;
        R->budget[g] = 16.0 * smag + 16.0 * sqrt((double)n) + 64.0;
    }
    free(sc);
}

#define U 0x1.0p-24

/* Number of outputs (elements and lse) of got off the reference; NaN always counts. *worst gets
 * the largest error as a share of its limit. */
static int attn_off(const ref_result *R, const float *out, const float *lse, int n_q, int dv, double *worst) {
    int bad = 0;
    for (int g = 0; g < n_q; g++) {
        for (int i = 0; i < dv; i++) {
            double e = fabs(out[g * dv + i] - R->out[g * dv + i]), lim = R->budget[g] * U * R->mag[g * dv + i];
            if (e / lim > *worst) *worst = e / lim;
            bad += !(e <= lim);
        }
        if (isinf(R->lse[g])) {
            bad += !(isinf(lse[g]) && lse[g] < 0);
            continue;
        }
        double e = fabs(lse[g] - R->lse[g]), lim = (R->budget[g] + fabs(R->lse[g])) * U;
        if (e / lim > *worst) *worst = e / lim;
        bad += !(e <= lim);
    }
    return bad;
}

static void shuffle(int32_t *a, int64_t n) {
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(rng_u64() % (uint64_t)(i + 1));
        int32_t t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

static double attn_worst;

/* Ranges, ids (shuffled, with duplicates) and merged parts of n tokens of s for n_q queries. */
static void check_attn_case(const store *s, const float *q, int n_q, int n, const char *what) {
    const int dv = s->dv;
    const float scale = 1.0f / sqrtf((float)s->dk);
    int lo = rng_int(s->n - n + 1), hi = lo + n;
    int32_t *pos = malloc(sizeof(int32_t) * (2 * n + 1));
    float out[GMAX * 257], lse[GMAX], part[GMAX * 257], part_l[GMAX];
    ref_result *R = malloc(sizeof *R);
    for (int j = 0; j < n; j++) pos[j] = lo + j;
    ref_attn(s, q, n_q, pos, n, scale, R);

    attn_range(&s->v, q, n_q, lo, hi, scale, out, lse);
    int bad = attn_off(R, out, lse, n_q, dv, &attn_worst);
    CHECK(bad == 0, "%s: range n=%d dk=%d dv=%d g=%d: %d outputs off", what, n, s->dk, dv, n_q, bad);

    shuffle(pos, n);
    attn_ids(&s->v, q, n_q, pos, n, scale, out, lse);
    bad = attn_off(R, out, lse, n_q, dv, &attn_worst);
    CHECK(bad == 0, "%s: shuffled ids n=%d dk=%d dv=%d g=%d: %d outputs off", what, n, s->dk, dv, n_q, bad);

    /* parts [0, a), [a, b), [b, n) of the shuffled ids, one of them often empty, merged into an
     * accumulator that starts empty */
    int a = rng_int(n + 1), b = a + rng_int(n - a + 1);
    int cut[4] = {0, a, b, n};
    for (int i = 0; i < n_q * dv; i++) out[i] = 0;
    for (int g = 0; g < n_q; g++) lse[g] = -INFINITY;
    for (int c = 0; c < 3; c++) {
        attn_ids(&s->v, q, n_q, pos + cut[c], cut[c + 1] - cut[c], scale, part, part_l);
        attn_merge(out, lse, part, part_l, n_q, dv);
    }
    bad = attn_off(R, out, lse, n_q, dv, &attn_worst);
    CHECK(bad == 0, "%s: merge of ids [0,%d) [%d,%d) [%d,%d) dk=%d g=%d: %d outputs off", what, a, a, b,
          b, n, s->dk, n_q, bad);

    /* duplicates count twice: the list with its first half repeated against the reference over
     * the same list */
    int nd = n + (n + 1) / 2;
    memcpy(pos + n, pos, sizeof(int32_t) * (nd - n));
    ref_attn(s, q, n_q, pos, nd, scale, R);
    attn_ids(&s->v, q, n_q, pos, nd, scale, out, lse);
    bad = attn_off(R, out, lse, n_q, dv, &attn_worst);
    CHECK(bad == 0, "%s: ids with duplicates n=%d dk=%d g=%d: %d outputs off", what, nd, s->dk, n_q, bad);
    free(pos);
    free(R);
}

static void test_attention(void) {
    static const int dims[][2] = {{1, 7}, {7, 1}, {24, 100}, {100, 24}, {72, 72}, {256, 256}};
    static const int lens[] = {1, 3, 129, 257, 2049};
    static const int groups[] = {1, 3, 4, 5, 16, 17};
    float *q = malloc(sizeof(float) * GMAX * 256);
    for (int dt = 0; dt < 2; dt++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            const int dk = dims[di][0], dv = dims[di][1];
            store s;
            store_build(&s, 2049 + 37, dk, dv, (attn_dtype)dt, di & 1 ? 4 : 6, 0, 1.0);
            /* queries large enough for a peaked softmax */
            for (int i = 0; i < GMAX * dk; i++) q[i] = (float)rng_unif(-6.0, 6.0);
            for (size_t li = 0; li < sizeof lens / sizeof *lens; li++)
                for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
                    /* the long lists only with a few group sizes: time */
                    if (lens[li] > 257 && gi % 2) continue;
                    check_attn_case(&s, q, groups[gi], lens[li], dt ? "f16" : "f32");
                }
            store_free(&s);
        }

    /* every group size, one length, both dtypes */
    for (int dt = 0; dt < 2; dt++) {
        store s;
        store_build(&s, 600, 64, 40, (attn_dtype)dt, 4, 0, 1.0);
        for (int i = 0; i < GMAX * 64; i++) q[i] = (float)rng_unif(-6.0, 6.0);
        for (int g = 1; g <= GMAX; g++) check_attn_case(&s, q, g, 257, dt ? "f16 groups" : "f32 groups");
        store_free(&s);
    }

    /* split-K: long ranges on 2 and 3 threads (and inside a parallel region: serial) */
    {
        store s;
        store_build(&s, 6151 + 5, 40, 24, ATTN_F32, 6, 0, 1.0);
        for (int i = 0; i < GMAX * 40; i++) q[i] = (float)rng_unif(-6.0, 6.0);
        for (int th = 2; th <= 3; th++) {
            set_threads(th);
            check_attn_case(&s, q, 3, 4099, "split-K");
            check_attn_case(&s, q, 17, 6151, "split-K");
        }
#ifdef _OPENMP
        set_threads(2);
        ref_result *R = malloc(sizeof *R);
        int32_t *pos = malloc(sizeof(int32_t) * 6151);
        for (int j = 0; j < 6151; j++) pos[j] = 5 + j;
        ref_attn(&s, q, 4, pos, 6151, 1.0 / sqrt(40.0), R);
        float out[4 * 24], lse[4];
        #pragma omp parallel num_threads(2)
        {
            #pragma omp single
            attn_range(&s.v, q, 4, 5, 6156, 1.0f / sqrtf(40.0f), out, lse);
        }
        CHECK(attn_off(R, out, lse, 4, 24, &attn_worst) == 0, "attn_range inside a parallel region");
        free(R); free(pos);
#endif
        store_free(&s);
    }

    /* a ring of 5 pages of 16: the last 80 positions of 1000, ranges that wrap */
    {
        store s;
        store_build(&s, 1000, 24, 24, ATTN_F16, 4, 5, 1.0);
        for (int i = 0; i < GMAX * 24; i++) q[i] = (float)rng_unif(-6.0, 6.0);
        ref_result *R = malloc(sizeof *R);
        int32_t pos[80];
        float out[GMAX * 24], lse[GMAX];
        int bad = 0;
        for (int lo = 920; lo < 1000; lo += 13) {
            for (int j = lo; j < 1000; j++) pos[j - lo] = j;
            ref_attn(&s, q, 3, pos, 1000 - lo, 1.0 / sqrt(24.0), R);
            attn_range(&s.v, q, 3, lo, 1000, 1.0f / sqrtf(24.0f), out, lse);
            bad += attn_off(R, out, lse, 3, 24, &attn_worst);
            shuffle(pos, 1000 - lo);
            attn_ids(&s.v, q, 3, pos, 1000 - lo, 1.0f / sqrtf(24.0f), out, lse);
            bad += attn_off(R, out, lse, 3, 24, &attn_worst);
        }
        CHECK(bad == 0, "ring: %d outputs off", bad);
        free(R);
        store_free(&s);
    }

    /* huge scores (|s| up to ~1000): a one-hot softmax, finite, no overflow */
    {
        store s;
        store_build(&s, 300, 16, 16, ATTN_F32, 6, 0, 50.0);
        for (int i = 0; i < GMAX * 16; i++) q[i] = (float)rng_unif(-50.0, 50.0);
        check_attn_case(&s, q, 5, 257, "huge scores");
        store_free(&s);
    }
    free(q);
    printf("  attention: worst error %.3f of the bound\n", attn_worst);
}

/* krn_attn_dense (flat rows) against the reference, odd dims and lengths, and NaN propagation
 * through the sparse kernels. */
static void test_attn_dense_and_nan(void) {
    static const int lens[] = {0, 1, 3, 65, 129, 257, 2049};
    store s;
    store_build(&s, 2049, 100, 7, ATTN_F32, 6, 0, 1.0);
    float q[100], out[16], lse;
    for (int i = 0; i < 100; i++) q[i] = (float)rng_unif(-6.0, 6.0);
    ref_result *R = malloc(sizeof *R);
    int32_t *pos = malloc(sizeof(int32_t) * 2049);
    double worst = 0;
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int n = lens[li], lo = 2049 - n;
        for (int j = 0; j < n; j++) pos[j] = lo + j;
        ref_attn(&s, q, 1, pos, n, 0.1, R);
        krn_attn_dense(q, s.K + (size_t)lo * 100, s.V + (size_t)lo * 7, n, 100, 7, 100, 7, 0.1f, out, &lse);
        CHECK(attn_off(R, out, &lse, 1, 7, &worst) == 0, "krn_attn_dense n=%d", n);
    }
    if (worst > attn_worst) attn_worst = worst;

    /* NaN: in the query, every output NaN; in one V row, the outputs NaN. */
    float qn[100];
    memcpy(qn, q, sizeof q);
    qn[50] = NAN;
    attn_range(&s.v, qn, 1, 10, 300, 0.1f, out, &lse);
    int n_nan = 0;
    for (int i = 0; i < 7; i++) n_nan += isnan(out[i]);
    CHECK(n_nan == 7, "a NaN query: %d of 7 outputs NaN", n_nan);
    store_free(&s);
    free(R);
    free(pos);

    store_build(&s, 300, 16, 16, ATTN_F32, 6, 0, 1.0);
    /* a NaN in V of token 100 */
    {
        char *pg = s.pages[100 >> 6];
        float nanf_ = NAN;
        memcpy(pg + s.v.v_off + (size_t)(100 & 63) * s.v.v_stride * 4 + 3 * 4, &nanf_, 4);
        attn_range(&s.v, q, 1, 0, 300, 0.25f, out, &lse);
        CHECK(isnan(out[3]), "a NaN value element: output %g", out[3]);
    }
    store_free(&s);
}

int main(void) {
    int max_threads = 1;
#ifdef _OPENMP
    max_threads = omp_get_max_threads();
#endif
    /* The sweeps run on one thread: on a loaded machine every OpenMP fork/join can wait a
     * scheduler slice, and thousands of small calls would take a minute. test_quant.c checks that
     * the thread count changes no bits; the many-token matmul and split-K run on several. */
    double t0 = krn_now_s();
    set_threads(1);
    test_products();
    printf("  products: %.1f s\n", krn_now_s() - t0);
    test_matmul_many_tokens(max_threads > 1 ? max_threads : 2);
    set_threads(1);
    test_products_nan();
    test_matvec_n();
    printf("  matmul 129/257 tokens, NaN, matvec_n: %.1f s\n", krn_now_s() - t0);
    test_attention();
    test_attn_dense_and_nan();
    printf("  attention: %.1f s\n", krn_now_s() - t0);
    set_threads(max_threads);
    krn_matmul_scratch_free();
    return check_summary("test_kernels");
}
