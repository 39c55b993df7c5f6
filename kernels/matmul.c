/* Matrix-matrix product Y = X·Wᵀ for prefill (n_tok up to a few hundred): weight rows are
 * decoded to f32 once per call, 32 at a time, and multiplied against all tokens by a
 * register-blocked f32 micro-kernel. Decode (n_tok = 1) goes to krn_matvec instead. */
#include "quant.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* Micro-tile: MR weight rows × NT tokens of accumulators, summed over all n_cols.
 * AVX-512: 2 zmm of rows × 12 tokens = 24 accumulators, the x value is a broadcast memory
 * operand of the FMA. AVX2: 4 ymm × 3 = 12 accumulators plus 3 broadcasts. */
#define MR 32
#if defined(__AVX512F__)
#define NT 12
#elif defined(__AVX2__) && defined(__FMA__)
#define NT 3
#else
#define NT 4
#endif

/* Below this many tokens each row is decoded once and dotted with every token directly:
 * the transposed tile and packed panels cost more than they save. */
#define SMALL_TOK 5

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- scratch ----------------------------------------------------------------------------
 * One growing buffer per calling thread (the engine thread), shared by its OpenMP team:
 * the packed token panels, then per worker a transposed weight tile and a decode chunk.
 * Being thread-local, it also lets several threads call krn_matmul at once. */
static _Thread_local float *scratch;
static _Thread_local size_t scratch_cap;   /* floats */

static float *scratch_get(size_t n) {
    if (n <= scratch_cap) return scratch;
    free(scratch);
    n = (n + 4095) & ~(size_t)4095;
    scratch = aligned_alloc(64, n * sizeof(float));
    scratch_cap = scratch ? n : 0;
    return scratch;
}

void krn_matmul_scratch_free(void) {
    free(scratch);
    scratch = NULL;
    scratch_cap = 0;
}

/* ---- micro-kernel ----------------------------------------------------------------------
 * y[t * ldy + i] = Σ_k wt[k * MR + i] · xp[k * nt + t] for i < nr, t < nt.
 * wt is a transposed weight tile (MR rows side by side, zero-padded), xp a token panel
 * stored k-major. `nt` is a compile-time constant in every call site (see mk_dispatch). */
static inline __attribute__((always_inline)) void
mk_tile(int nt, const float *restrict wt, const float *restrict xp, int64_t K,
        float *restrict y, int64_t ldy, int nr) {
#if defined(__AVX512F__)
    __m512 c0[NT], c1[NT];
    for (int t = 0; t < nt; t++) c0[t] = c1[t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m512 w0 = _mm512_load_ps(wt + k * MR), w1 = _mm512_load_ps(wt + k * MR + 16);
        for (int t = 0; t < nt; t++) {
            __m512 x = _mm512_set1_ps(xp[k * nt + t]);
            c0[t] = _mm512_fmadd_ps(w0, x, c0[t]);
            c1[t] = _mm512_fmadd_ps(w1, x, c1[t]);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    for (int t = 0; t < nt; t++) {
        _mm512_mask_storeu_ps(y + t * ldy, m0, c0[t]);
        _mm512_mask_storeu_ps(y + t * ldy + 16, m1, c1[t]);
    }
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 c[NT][4];
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < 4; j++) c[t][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        for (int t = 0; t < nt; t++) {
            __m256 x = _mm256_broadcast_ss(xp + k * nt + t);
            for (int j = 0; j < 4; j++)
                c[t][j] = _mm256_fmadd_ps(_mm256_load_ps(wt + k * MR + 8 * j), x, c[t][j]);
        }
    }
    for (int t = 0; t < nt; t++) {
        _Alignas(32) float tmp[MR];
        for (int j = 0; j < 4; j++) _mm256_store_ps(tmp + 8 * j, c[t][j]);
        memcpy(y + t * ldy, tmp, (size_t)nr * sizeof(float));
    }
#else
    float c[NT][MR];
    memset(c, 0, sizeof c);
    for (int64_t k = 0; k < K; k++)
        for (int t = 0; t < nt; t++) {
            float x = xp[k * nt + t];
            for (int i = 0; i < MR; i++) c[t][i] += wt[k * MR + i] * x;
        }
    for (int t = 0; t < nt; t++) memcpy(y + t * ldy, c[t], (size_t)nr * sizeof(float));
#endif
}

static void mk_dispatch(int nt, const float *wt, const float *xp, int64_t K, float *y,
                        int64_t ldy, int nr) {
    switch (nt) {
    case 1: mk_tile(1, wt, xp, K, y, ldy, nr); break;
    case 2: mk_tile(2, wt, xp, K, y, ldy, nr); break;
    case 3: mk_tile(3, wt, xp, K, y, ldy, nr); break;
#if NT >= 4
    case 4: mk_tile(4, wt, xp, K, y, ldy, nr); break;
#endif
#if NT >= 12
    case 5: mk_tile(5, wt, xp, K, y, ldy, nr); break;
    case 6: mk_tile(6, wt, xp, K, y, ldy, nr); break;
    case 7: mk_tile(7, wt, xp, K, y, ldy, nr); break;
    case 8: mk_tile(8, wt, xp, K, y, ldy, nr); break;
    case 9: mk_tile(9, wt, xp, K, y, ldy, nr); break;
    case 10: mk_tile(10, wt, xp, K, y, ldy, nr); break;
    case 11: mk_tile(11, wt, xp, K, y, ldy, nr); break;
    case 12: mk_tile(12, wt, xp, K, y, ldy, nr); break;
#endif
    default: break;   /* nt is always 1..NT */
    }
}

/* ---- tiles and panels -------------------------------------------------------------------- */

/* Columns decoded per step of a tile: a multiple of every block size, and MR·KC floats
 * (32 KB) stay in L1 between decoding and transposing. */
#define KC 256

#if defined(__AVX512F__)
/* dst[j * ldd + i] = src[i * lds + j] for a 16×16 block: pairs of rows are interleaved, then
 * quadruples, then 128-bit lanes, so every row j of the result gathers column j. */
static inline void transpose16(const float *src, int64_t lds, float *dst, int64_t ldd) {
    __m512 a[16], u[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {          /* lane L: a_i[4L], a_i+1[4L], a_i[4L+1], ... */
        u[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
        u[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {          /* a[g + c] lane L: rows g..g+3, column 4L + c */
        a[g + 0] = _mm512_shuffle_ps(u[g], u[g + 2], 0x44);
        a[g + 1] = _mm512_shuffle_ps(u[g], u[g + 2], 0xee);
        a[g + 2] = _mm512_shuffle_ps(u[g + 1], u[g + 3], 0x44);
        a[g + 3] = _mm512_shuffle_ps(u[g + 1], u[g + 3], 0xee);
    }
    for (int c = 0; c < 4; c++) {              /* gather lane L of the four row groups */
        __m512 v0 = _mm512_shuffle_f32x4(a[c], a[4 + c], 0x88);
        __m512 w0 = _mm512_shuffle_f32x4(a[c], a[4 + c], 0xdd);
        __m512 v1 = _mm512_shuffle_f32x4(a[8 + c], a[12 + c], 0x88);
        __m512 w1 = _mm512_shuffle_f32x4(a[8 + c], a[12 + c], 0xdd);
        _mm512_store_ps(dst + (0 + c) * ldd, _mm512_shuffle_f32x4(v0, v1, 0x88));
        _mm512_store_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(w0, w1, 0x88));
        _mm512_store_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(v0, v1, 0xdd));
        _mm512_store_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(w0, w1, 0xdd));
    }
}
#endif

/* Decode rows [r0, r0 + nr) into the transposed tile wt[k * MR + i]; rows past nr are zero.
 * Works KC columns at a time through chunk[MR][KC]. */
static void decode_tile(uint32_t type, const uint8_t *W, size_t rb, int64_t r0, int nr,
                        int64_t K, float *wt, float *chunk) {
    int bs = krn_type_block_size(type);
    size_t bb = krn_type_block_bytes(type);
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        int kc = (int)min64(KC, K - k0), k = 0;
        for (int i = 0; i < MR; i++) {
            if (i < nr) krn_dequantize_row(type, W + (size_t)(r0 + i) * rb + (size_t)(k0 / bs) * bb,
                                           chunk + i * KC, kc);
            else memset(chunk + i * KC, 0, (size_t)kc * sizeof(float));
        }
        float *dst = wt + k0 * MR;
#if defined(__AVX512F__)
        for (; k + 16 <= kc; k += 16) {
            transpose16(chunk + k, KC, dst + k * MR, MR);
            transpose16(chunk + 16 * KC + k, KC, dst + k * MR + 16, MR);
        }
#endif
        for (; k < kc; k++)
            for (int i = 0; i < MR; i++) dst[k * MR + i] = chunk[i * KC + k];
    }
}

/* Token panel p holds tokens [p·NT, p·NT + nt) as xp[k * nt + t], at offset p·NT·K. */
static void pack_panel(const float *X, int64_t K, int64_t t0, int nt, float *xp) {
    for (int t = 0; t < nt; t++) {
        const float *x = X + (t0 + t) * K;
        for (int64_t k = 0; k < K; k++) xp[k * nt + t] = x[k];
    }
}

/* Few tokens: decode each row once into rowbuf and dot it with every token. */
static void matmul_rows(uint32_t type, const uint8_t *W, size_t rb, int64_t n_rows, int64_t K,
                        const float *X, int64_t n_tok, float *Y, float *bufs) {
    #pragma omp parallel
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *rowbuf = bufs ? bufs + (size_t)tid * K : NULL;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < n_rows; r++) {
            const uint8_t *w = W + (size_t)r * rb;
            if (rowbuf && type != KRN_TYPE_F32) {
                krn_dequantize_row(type, w, rowbuf, K);
                for (int64_t t = 0; t < n_tok; t++)
                    Y[t * n_rows + r] = krn_vec_dot(KRN_TYPE_F32, rowbuf, X + t * K, K);
            } else {   /* f32 weights, or no scratch memory: dot straight from the row */
                for (int64_t t = 0; t < n_tok; t++)
                    Y[t * n_rows + r] = krn_vec_dot(type, w, X + t * K, K);
            }
        }
    }
}

void krn_matmul(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols,
                const float *X, int64_t n_tok, float *Y) {
    if (n_tok <= 0 || n_rows <= 0) return;
    if (n_tok == 1) {
        krn_matvec(type, W, n_rows, n_cols, X, Y);
        return;
    }
    const uint8_t *w = W;
    const int64_t K = n_cols;
    size_t rb = krn_row_bytes(type, K);
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    if (n_tok < SMALL_TOK) {
        matmul_rows(type, w, rb, n_rows, K, X, n_tok, Y, scratch_get((size_t)nth * K));
        return;
    }

    /* Scratch: packed panels, then per thread a tile (MR·K floats, 64-byte aligned as
     * MR·4 is a multiple of 64) and a decode chunk (MR·KC). */
    int64_t n_pan = (n_tok + NT - 1) / NT, n_rt = (n_rows + MR - 1) / MR;
    size_t kpad = ((size_t)K + 15) & ~(size_t)15;
    size_t pan_sz = (size_t)n_pan * NT * kpad, per_thr = (size_t)MR * K + MR * KC;
    float *buf = scratch_get(pan_sz + (size_t)nth * per_thr);
    if (!buf) {   /* out of memory: correct but slow */
        matmul_rows(type, w, rb, n_rows, K, X, n_tok, Y, NULL);
        return;
    }
    float *xpan = buf, *tiles = buf + pan_sz;

    /* Work items are (row tile, group of panels); panels are split only when there are too
     * few row tiles to keep every thread busy. Items run in order within a thread, so a
     * tile is decoded once per thread that needs it. */
    int64_t n_tg = 1;
    while (n_rt * n_tg < 4 * nth && n_tg < n_pan) n_tg *= 2;
    if (n_tg > n_pan) n_tg = n_pan;
    int64_t n_items = n_rt * n_tg;

    #pragma omp parallel
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        #pragma omp for schedule(static)
        for (int64_t p = 0; p < n_pan; p++)
            pack_panel(X, K, p * NT, (int)min64(NT, n_tok - p * NT), xpan + (size_t)p * NT * kpad);
        /* the implicit barrier above publishes every panel */

        float *wt = tiles + (size_t)tid * per_thr, *chunk = wt + (size_t)MR * K;
        int64_t cur_rt = -1;
        #pragma omp for schedule(static)
        for (int64_t it = 0; it < n_items; it++) {
            int64_t rt = it / n_tg, tg = it % n_tg, r0 = rt * MR;
            int nr = (int)min64(MR, n_rows - r0);
            if (rt != cur_rt) {
                decode_tile(type, w, rb, r0, nr, K, wt, chunk);
                cur_rt = rt;
            }
            int64_t p0 = tg * n_pan / n_tg, p1 = (tg + 1) * n_pan / n_tg;
            for (int64_t p = p0; p < p1; p++) {
                int nt = (int)min64(NT, n_tok - p * NT);
                mk_dispatch(nt, wt, xpan + (size_t)p * NT * kpad, K, Y + p * NT * n_rows + r0,
                            n_rows, nr);
            }
        }
    }
}
