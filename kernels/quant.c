/* Element types and their block layouts (ggml numbering): the type table, f16/bf16 conversion,
 * the per-block decoders, and every product of weight rows with f32 activations -- krn_vec_dot,
 * krn_matvec and krn_matvec_n for decode and krn_matmul_f32, the core of krn_matmul (matmul.c)
 * -- all summed in one order, so that a token's outputs are the same bits whether it runs alone
 * or at any position of any batch, on any number of threads: a request with a fixed seed
 * generates the same text however the server batches it. The arithmetic is f32 on decoded
 * weights (the reference other backends are checked against), except for the types of
 * krn_type_i8, whose products round the activations to 8 bits (AVX-512 VNNI builds; their
 * section below). */
#include "quant.h"
#include "scratch.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define QK_K 256

/* ---- type table ---------------------------------------------------------------------- */

typedef struct {
    const char *name;
    int block;      /* elements per block; 0 = unsupported */
    size_t bytes;   /* bytes per block */
} type_info;

static const type_info type_table[31] = {
    [KRN_TYPE_F32] = {"f32", 1, 4},     [KRN_TYPE_F16] = {"f16", 1, 2},
    [KRN_TYPE_Q4_0] = {"q4_0", 32, 18}, [KRN_TYPE_Q4_1] = {"q4_1", 32, 20},
    [KRN_TYPE_Q5_0] = {"q5_0", 32, 22}, [KRN_TYPE_Q5_1] = {"q5_1", 32, 24},
    [KRN_TYPE_Q8_0] = {"q8_0", 32, 34}, [KRN_TYPE_Q4_K] = {"q4_k", QK_K, 144},
    [KRN_TYPE_Q5_K] = {"q5_k", QK_K, 176}, [KRN_TYPE_Q6_K] = {"q6_k", QK_K, 210},
    [KRN_TYPE_BF16] = {"bf16", 1, 2},
};

bool krn_type_supported(uint32_t type) {
    return type < 31 && type_table[type].block != 0;
}

const char *krn_type_name(uint32_t type) {
    return krn_type_supported(type) ? type_table[type].name : "unsupported";
}

int krn_type_block_size(uint32_t type) {
    return krn_type_supported(type) ? type_table[type].block : 0;
}

size_t krn_type_block_bytes(uint32_t type) {
    return krn_type_supported(type) ? type_table[type].bytes : 0;
}

size_t krn_row_bytes(uint32_t type, int64_t n) {
    if (!krn_type_supported(type)) return 0;
    return (size_t)(n / type_table[type].block) * type_table[type].bytes;
}

/* ---- f16 / bf16 ---------------------------------------------------------------------- */

static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float krn_f16_to_f32_soft(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return f32_from_bits(s | 0x7f800000 | (m << 13));   /* inf, NaN + payload */
    if (e) return f32_from_bits(s | ((e + 112) << 23) | (m << 13));
    if (!m) return f32_from_bits(s);
    /* subnormal m * 2^-24: shift until the leading bit becomes the implicit one */
    e = 113;
    while (!(m & 0x400)) { m <<= 1; e--; }
    return f32_from_bits(s | (e << 23) | ((m & 0x3ff) << 13));
}

uint16_t krn_f32_to_f16_soft(float f) {
    uint32_t x = f32_bits(f), ax = x & 0x7fffffff;
    uint16_t s = (uint16_t)((x >> 16) & 0x8000);
    if (ax > 0x7f800000) return s | 0x7e00 | ((ax >> 13) & 0x3ff);     /* quiet NaN, payload */
    if (ax >= 0x38800000) {                 /* |f| >= 2^-14: normal, or overflow to inf */
        uint32_t r = ax - (112u << 23);
        r = (r + 0xfff + ((r >> 13) & 1)) >> 13;                     /* round half to even */
        return s | (uint16_t)(r >= 0x7c00 ? 0x7c00 : r);
    }
    /* f16 subnormal: round(|f| * 2^24); below 2^-25 (or f32 subnormal) this is 0 */
    uint32_t e = ax >> 23, sh = 126 - e;
    if (sh > 24) return s;
    uint32_t mant = (ax & 0x7fffff) | 0x800000, q = mant >> sh;
    uint32_t rem = mant & ((1u << sh) - 1), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return s | (uint16_t)q;
}

float krn_f16_to_f32(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return krn_f16_to_f32_soft(h);
#endif
}

uint16_t krn_f32_to_f16(float f) {
#ifdef __F16C__
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    return krn_f32_to_f16_soft(f);
#endif
}

float krn_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

static inline float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return krn_f16_to_f32(h);
}

static inline uint32_t rd_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- block decoders ------------------------------------------------------------------
 * Each dec_X writes one block of floats to `y`. The arithmetic follows gguf-py's numpy
 * dequantizer step for step (a product rounded to f32, then the offset added; no FMA) so
 * that tests/test_dequant_ref.py can demand bit-identical output. The SIMD and scalar
 * versions compute the same values. */

#ifdef __AVX2__
/* y[0..15] = (float)(int)(q[i] + off) * s, from 16 unsigned bytes. */
static inline void emit16(__m128i q, int off, float s, float *y) {
#ifdef __AVX512F__
    __m512i v = _mm512_add_epi32(_mm512_cvtepu8_epi32(q), _mm512_set1_epi32(off));
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(s)));
#else
    __m256 vs = _mm256_set1_ps(s);
    __m256i o = _mm256_set1_epi32(off);
    __m256i v0 = _mm256_add_epi32(_mm256_cvtepu8_epi32(q), o);
    __m256i v1 = _mm256_add_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)), o);
    _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(v0), vs));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(v1), vs));
#endif
}

/* y[0..15] = (float)q[i] * s + b, from 16 unsigned bytes (product rounded before the add). */
static inline void emit16_add(__m128i q, float s, float b, float *y) {
#ifdef __AVX512F__
    __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(s)), _mm512_set1_ps(b)));
#else
    __m256 vs = _mm256_set1_ps(s), vb = _mm256_set1_ps(b);
    __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(v0, vs), vb));
    _mm256_storeu_ps(y + 8, _mm256_add_ps(_mm256_mul_ps(v1, vs), vb));
#endif
}

/* y[0..15] = (float)q[i] * s from 16 signed bytes. */
static inline void emit16_s8(__m128i q, float s, float *y) {
#ifdef __AVX512F__
    __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
    _mm512_storeu_ps(y, _mm512_mul_ps(v, _mm512_set1_ps(s)));
#else
    __m256 vs = _mm256_set1_ps(s);
    __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
    _mm256_storeu_ps(y, _mm256_mul_ps(v0, vs));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(v1, vs));
#endif
}

static inline __m128i lo_nib(__m128i v) { return _mm_and_si128(v, _mm_set1_epi8(15)); }
static inline __m128i hi_nib(__m128i v) {
    return _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15));
}
/* Bytes 0xFF where bit `bit` of the little-endian 16-bit mask m is set. */
static inline __m128i bits16_to_bytes(uint32_t m) {
    const __m128i sel = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    __m128i v = _mm_shuffle_epi8(_mm_cvtsi32_si128((int)m),
                                 _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    return _mm_cmpeq_epi8(_mm_and_si128(v, sel), sel);
}

/* The 32 five-bit values of a Q5_0 / Q5_1 block: the nibbles at qs with the fifth bits of qh
 * added, elements 0..15 in *lo and 16..31 in *hi. */
static inline void q5_unpack(const uint8_t *qs, uint32_t qh, __m128i *lo, __m128i *hi) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs), s16 = _mm_set1_epi8(16);
    *lo = _mm_or_si128(lo_nib(v), _mm_and_si128(bits16_to_bytes(qh & 0xffff), s16));
    *hi = _mm_or_si128(hi_nib(v), _mm_and_si128(bits16_to_bytes(qh >> 16), s16));
}
#endif

static inline void dec_q4_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const uint8_t *qs = b + 2;
#ifdef __AVX2__
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    emit16(lo_nib(v), -8, d, y);
    emit16(hi_nib(v), -8, d, y + 16);
#else
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((qs[j] & 15) - 8);
        y[j + 16] = d * (float)((qs[j] >> 4) - 8);
    }
#endif
}

/* lo[j] = d0 * (low nibble of q[j]) + m0, hi[j] = d1 * (high nibble) + m1 for j < n (16 or 32). */
static inline void dec_nibbles(const uint8_t *q, int n, float d0, float m0, float d1, float m1,
                               float *lo, float *hi) {
#ifdef __AVX2__
    for (int k = 0; k < n; k += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(q + k));
        emit16_add(lo_nib(v), d0, m0, lo + k);
        emit16_add(hi_nib(v), d1, m1, hi + k);
    }
#else
    for (int j = 0; j < n; j++) {
        lo[j] = d0 * (float)(q[j] & 15) + m0;
        hi[j] = d1 * (float)(q[j] >> 4) + m1;
    }
#endif
}

static inline void dec_q4_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    dec_nibbles(b + 4, 16, d, m, d, m, y, y + 16);
}

/* Q5_0 and Q5_1 keep the fifth bit of element j in bit j of a little-endian u32; q5_at is
 * element j < 32 of such a block. */
static inline int q5_at(const uint8_t *qs, uint32_t qh, int j) {
    int nib = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
    return nib | (int)(((qh >> j) & 1) << 4);
}

static inline void dec_q5_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    uint32_t qh = rd_u32(b + 2);
#ifdef __AVX2__
    __m128i lo, hi;
    q5_unpack(b + 6, qh, &lo, &hi);
    emit16(lo, -16, d, y);
    emit16(hi, -16, d, y + 16);
#else
    for (int j = 0; j < 32; j++) y[j] = d * (float)(q5_at(b + 6, qh, j) - 16);
#endif
}

static inline void dec_q5_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    uint32_t qh = rd_u32(b + 4);
#ifdef __AVX2__
    __m128i lo, hi;
    q5_unpack(b + 8, qh, &lo, &hi);
    emit16_add(lo, d, m, y);
    emit16_add(hi, d, m, y + 16);
#else
    for (int j = 0; j < 32; j++) y[j] = d * (float)q5_at(b + 8, qh, j) + m;
#endif
}

static inline void dec_q8_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    const int8_t *qs = (const int8_t *)(b + 2);
#ifdef __AVX2__
    emit16_s8(_mm_loadu_si128((const __m128i *)qs), d, y);
    emit16_s8(_mm_loadu_si128((const __m128i *)(qs + 16)), d, y + 16);
#else
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
#endif
}

/* The 6-bit scale and min of sub-block j < 8 packed into 12 bytes (Q4_K, Q5_K). */
static inline void k4_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Sub-blocks 2g and 2g + 1 (g < 4) of a Q4_K / Q5_K block: the scale d * sc and the negated
 * min -(dmin * m) of each. */
typedef struct { float d0, n0, d1, n1; } k4_pair;

static inline k4_pair k4_pair_at(const uint8_t *s, int g, float d, float dmin) {
    int s0, m0, s1, m1;
    k4_scale_min(s, 2 * g, &s0, &m0);
    k4_scale_min(s, 2 * g + 1, &s1, &m1);
    return (k4_pair){d * (float)s0, -(dmin * (float)m0), d * (float)s1, -(dmin * (float)m1)};
}

/* Q4_K: d, dmin, scales[12], qs[128]; sub-block 2g/2g+1 = low/high nibbles of qs[32g..]. */
static inline void dec_q4_k(const uint8_t *b, float *y) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    for (int g = 0; g < 4; g++) {
        k4_pair sb = k4_pair_at(b + 4, g, d, dmin);
        dec_nibbles(b + 16 + 32 * g, 32, sb.d0, sb.n0, sb.d1, sb.n1, y + 64 * g, y + 64 * g + 32);
    }
}

/* Q5_K: as Q4_K plus qh[32]; bit j of qh[l] is the fifth bit of element l of sub-block j. */
static inline void dec_q5_k(const uint8_t *b, float *y) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *qh = b + 16, *qs = b + 48;
#ifdef __AVX2__
    __m128i h[2] = {_mm_loadu_si128((const __m128i *)qh),
                    _mm_loadu_si128((const __m128i *)(qh + 16))};
    __m128i s16 = _mm_set1_epi8(16);
#endif
    for (int g = 0; g < 4; g++) {
        k4_pair sb = k4_pair_at(b + 4, g, d, dmin);
        const uint8_t *q = qs + 32 * g;
        float *o = y + 64 * g;
#ifdef __AVX2__
        __m128i b0 = _mm_set1_epi8((char)(1 << (2 * g))), b1 = _mm_set1_epi8((char)(2 << (2 * g)));
        for (int k = 0; k < 2; k++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(q + 16 * k));
            __m128i f0 = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h[k], b0), b0), s16);
            __m128i f1 = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h[k], b1), b1), s16);
            emit16_add(_mm_or_si128(lo_nib(v), f0), sb.d0, sb.n0, o + 16 * k);
            emit16_add(_mm_or_si128(hi_nib(v), f1), sb.d1, sb.n1, o + 32 + 16 * k);
        }
#else
        for (int l = 0; l < 32; l++) {
            int q0 = (q[l] & 15) | (((qh[l] >> (2 * g)) & 1) << 4);
            int q1 = (q[l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4);
            o[l] = sb.d0 * (float)q0 + sb.n0;
            o[l + 32] = sb.d1 * (float)q1 + sb.n1;
        }
#endif
    }
}

/* Q6_K: ql[128], qh[64], scales[16] (int8), d last. Per half n of 128 elements and 16-element
 * chunk c, the scale is scales[8n + c]; element 32t + l of the half takes the low nibble
 * (t < 2) or high nibble (t >= 2) of ql[64n + l + 32(t & 1)] and bits 2t..2t+1 of
 * qh[32n + l]. */
static inline void dec_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = rd_f16(b + 208);
    for (int n = 0; n < 2; n++) {
        float ds[8];
        for (int c = 0; c < 8; c++) ds[c] = d * (float)sc[8 * n + c];
        const uint8_t *l0 = ql + 64 * n, *h0 = qh + 32 * n;
        float *o = y + 128 * n;
#ifdef __AVX2__
        __m128i m30 = _mm_set1_epi8(0x30);
        for (int k = 0; k < 2; k++) {       /* l in [16k, 16k + 16) */
            __m128i a = _mm_loadu_si128((const __m128i *)(l0 + 16 * k));
            __m128i bb = _mm_loadu_si128((const __m128i *)(l0 + 32 + 16 * k));
            __m128i h = _mm_loadu_si128((const __m128i *)(h0 + 16 * k));
            /* ((h >> 2t) & 3) << 4 for t = 0..3; 16-bit shifts are safe after the mask */
            __m128i q0 = _mm_or_si128(lo_nib(a), _mm_and_si128(_mm_slli_epi16(h, 4), m30));
            __m128i q1 = _mm_or_si128(lo_nib(bb), _mm_and_si128(_mm_slli_epi16(h, 2), m30));
            __m128i q2 = _mm_or_si128(hi_nib(a), _mm_and_si128(h, m30));
            __m128i q3 = _mm_or_si128(hi_nib(bb), _mm_and_si128(_mm_srli_epi16(h, 2), m30));
            emit16(q0, -32, ds[0 + k], o + 16 * k);
            emit16(q1, -32, ds[2 + k], o + 32 + 16 * k);
            emit16(q2, -32, ds[4 + k], o + 64 + 16 * k);
            emit16(q3, -32, ds[6 + k], o + 96 + 16 * k);
        }
#else
        for (int l = 0; l < 32; l++) {
            int q0 = ((l0[l] & 15) | (((h0[l] >> 0) & 3) << 4)) - 32;
            int q1 = ((l0[l + 32] & 15) | (((h0[l] >> 2) & 3) << 4)) - 32;
            int q2 = ((l0[l] >> 4) | (((h0[l] >> 4) & 3) << 4)) - 32;
            int q3 = ((l0[l + 32] >> 4) | (((h0[l] >> 6) & 3) << 4)) - 32;
            o[l] = ds[l / 16] * (float)q0;
            o[l + 32] = ds[2 + l / 16] * (float)q1;
            o[l + 64] = ds[4 + l / 16] * (float)q2;
            o[l + 96] = ds[6 + l / 16] * (float)q3;
        }
#endif
    }
}

/* Plain arrays: f32, f16 and bf16 rows decode n elements at once. */
static void dec_f16_n(const uint8_t *src, float *y, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + 2 * i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
#endif
    for (; i < n; i++) y[i] = rd_f16(src + 2 * i);
}

static void dec_bf16_n(const uint8_t *src, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {       /* the compiler vectorizes this shift */
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        y[i] = krn_bf16_to_f32(h);
    }
}

typedef void (*block_dec)(const uint8_t *, float *);

/* `dec` is a compile-time constant after inlining: one specialised loop per type. */
static inline __attribute__((always_inline)) void
deq_blocks(block_dec dec, int bs, size_t bb, const uint8_t *s, float *dst, int64_t n) {
    for (int64_t i = 0; i < n / bs; i++) dec(s + i * bb, dst + i * bs);
}

/* Row decoders: n elements (a multiple of the block size) from a block boundary. */
typedef void (*row_dec)(const uint8_t *, float *, int64_t);
static void run_f32(const uint8_t *s, float *y, int64_t n) { memcpy(y, s, (size_t)n * 4); }
static void run_q4_0(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q4_0, 32, 18, s, y, n); }
static void run_q4_1(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q4_1, 32, 20, s, y, n); }
static void run_q5_0(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q5_0, 32, 22, s, y, n); }
static void run_q5_1(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q5_1, 32, 24, s, y, n); }
static void run_q8_0(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q8_0, 32, 34, s, y, n); }
static void run_q4_k(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q4_k, QK_K, 144, s, y, n); }
static void run_q5_k(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q5_k, QK_K, 176, s, y, n); }
static void run_q6_k(const uint8_t *s, float *y, int64_t n) { deq_blocks(dec_q6_k, QK_K, 210, s, y, n); }

void krn_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    switch (type) {
    case KRN_TYPE_F32: run_f32(s, dst, n); return;
    case KRN_TYPE_F16: dec_f16_n(s, dst, n); return;
    case KRN_TYPE_BF16: dec_bf16_n(s, dst, n); return;
    case KRN_TYPE_Q4_0: run_q4_0(s, dst, n); return;
    case KRN_TYPE_Q4_1: run_q4_1(s, dst, n); return;
    case KRN_TYPE_Q5_0: run_q5_0(s, dst, n); return;
    case KRN_TYPE_Q5_1: run_q5_1(s, dst, n); return;
    case KRN_TYPE_Q8_0: run_q8_0(s, dst, n); return;
    case KRN_TYPE_Q4_K: run_q4_k(s, dst, n); return;
    case KRN_TYPE_Q5_K: run_q5_k(s, dst, n); return;
    case KRN_TYPE_Q6_K: run_q6_k(s, dst, n); return;
    default:
        /* unsupported types are rejected at model load; NaN makes a slip visible */
        for (int64_t i = 0; i < n; i++) dst[i] = NAN;
    }
}

/* ==== products with f32 activations ======================================================= */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- the summation order ----------------------------------------------------------------
 * dot(w, x) over n columns, for every output:
 *     acc = 0                                                     (VL lanes)
 *     for each piece p = 0, 1, ... of VL consecutive columns, the last one zero-padded:
 *         acc[l] = fma(w[p·VL + l], x[p·VL + l], acc[l])          for every lane l
 *     result = fold(acc): lane l += lane l + VL/2 for l < VL/2, then the same on the lower
 *              half, and so on down to lane 0.
 * Callers group rows and tokens into tiles of any shape and may split the columns into chunks
 * at multiples of VL, carrying acc over; they never reorder the pieces of one output. VL is 16
 * with AVX-512 and 8 otherwise: builds for different CPUs may differ in the last bits, one
 * build never does. */

#if defined(__AVX512F__)
#define VL 16
typedef __m512 vf;
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
/* the first n < VL floats, the rest zero (nothing past p + n is read) */
static inline vf vf_load_part(const float *p, int n) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float vf_fold(vf v) {
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);              /* l + (l + 8) */
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));                                 /* l + (l + 2) */
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));                /* 0 + 1 */
}
#elif defined(__AVX2__) && defined(__FMA__)
#define VL 8
typedef __m256 vf;
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vf vf_load_part(const float *p, int n) {
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
}
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float vf_fold(vf v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#else
#define VL 8
typedef struct { float v[VL]; } vf;
static inline vf vf_zero(void) { vf a = {{0}}; return a; }
static inline vf vf_load(const float *p) { vf a; memcpy(a.v, p, sizeof a.v); return a; }
static inline vf vf_load_part(const float *p, int n) {
    vf a = {{0}};
    memcpy(a.v, p, (size_t)n * sizeof(float));
    return a;
}
static inline vf vf_fma(vf a, vf b, vf c) {
    /* fused where the hardware fuses, else two roundings; the same choice in every path */
    for (int l = 0; l < VL; l++)
#ifdef FP_FAST_FMAF
        c.v[l] = fmaf(a.v[l], b.v[l], c.v[l]);
#else
        c.v[l] = a.v[l] * b.v[l] + c.v[l];
#endif
    return c;
}
static inline float vf_fold(vf a) {
    for (int h = VL / 2; h > 0; h /= 2)
        for (int l = 0; l < h; l++) a.v[l] += a.v[l + h];
    return a.v[0];
}
#endif

/* ---- micro-kernels ----------------------------------------------------------------------
 * A register tile of KR weight rows × up to KT tokens, one accumulator each. AVX-512: 24 zmm
 * accumulators, 4 weight vectors and 1 token vector; AVX2: 12 + 3 + 1 of the 16 ymm. */
#if defined(__AVX512F__)
#define KR 4
#define KT 6
#elif defined(__AVX2__) && defined(__FMA__)
#define KR 3
#define KT 4
#else
#define KR 2
#define KT 2
#endif

/* acc[t][r] += the pieces of columns [0, n) of row w[r] times x row t (rows ldx floats apart),
 * r < KR, t < nt. n is a multiple of VL except in a row's last chunk. nt is a compile-time
 * constant at every call site, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void
tile_acc(int nt, const float *const w[KR], const float *x, int64_t ldx, int64_t n,
         vf acc[KT][KR]) {
    vf c[KT][KR], wv[KR];
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < KR; r++) c[t][r] = acc[t][r];
    int64_t k = 0;
    for (; k + VL <= n; k += VL) {
        for (int r = 0; r < KR; r++) wv[r] = vf_load(w[r] + k);
        for (int t = 0; t < nt; t++) {
            vf xv = vf_load(x + t * ldx + k);
            for (int r = 0; r < KR; r++) c[t][r] = vf_fma(wv[r], xv, c[t][r]);
        }
    }
    if (k < n) {   /* zero-padded last piece */
        int m = (int)(n - k);
        for (int r = 0; r < KR; r++) wv[r] = vf_load_part(w[r] + k, m);
        for (int t = 0; t < nt; t++) {
            vf xv = vf_load_part(x + t * ldx + k, m);
            for (int r = 0; r < KR; r++) c[t][r] = vf_fma(wv[r], xv, c[t][r]);
        }
    }
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < KR; r++) acc[t][r] = c[t][r];
}

#if defined(__AVX512F__)
/* Folds 16 (or 8) accumulators at once by the same additions as vf_fold, each pair of shuffles
 * lining up the two operands of one step for several accumulators. fold16: lane 4q + j of the
 * result is vf_fold(v[4j + q]). fold8: lanes 4q and 4q + 1 are vf_fold(v[q]), vf_fold(v[4 + q]). */
static inline void fold_steps(__m512 *v, int n) {
    for (int i = 0; i < n / 2; i++)     /* v[2i] lanes l + (l + 8), then v[2i + 1] */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < n / 4; i++)     /* quarter j: input 4i + j, lanes l + (l + 4) */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xdd));
    for (int i = 0; i < n / 8; i++)     /* quarter q: inputs 8i + q, 8i + 4 + q, lanes l + (l + 2) */
        v[i] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], 0xee));
}
static inline __m512 fold16(__m512 v[16]) {
    fold_steps(v, 16);
    return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xdd));
}
static inline __m512 fold8(__m512 v[8]) {
    fold_steps(v, 8);
    return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[0], 0x88), _mm512_shuffle_ps(v[0], v[0], 0xdd));
}
#endif

/* y[t * ldy + r] = vf_fold(acc[t][r]) for t < nt, r < nr_out <= KR. */
static inline __attribute__((always_inline)) void
tile_store(int nt, vf acc[KT][KR], float *y, int64_t ldy, int nr_out) {
#if defined(__AVX512F__) && KR == 4
    __mmask8 m = (__mmask8)((1u << nr_out) - 1);
    int t0 = 0;
    for (; t0 + 2 < nt; t0 += 4) {   /* 3 or 4 tokens × 4 rows: fold16 */
        __m512 v[16];
        for (int r = 0; r < 4; r++)
            for (int q = 0; q < 4; q++) v[4 * r + q] = t0 + q < nt ? acc[t0 + q][r] : vf_zero();
        __m512 f = fold16(v);   /* quarter q: token t0 + q, rows 0..3 */
        _mm_mask_storeu_ps(y + t0 * ldy, m, _mm512_castps512_ps128(f));
        _mm_mask_storeu_ps(y + (t0 + 1) * ldy, m, _mm512_extractf32x4_ps(f, 1));
        _mm_mask_storeu_ps(y + (t0 + 2) * ldy, m, _mm512_extractf32x4_ps(f, 2));
        if (t0 + 3 < nt) _mm_mask_storeu_ps(y + (t0 + 3) * ldy, m, _mm512_extractf32x4_ps(f, 3));
    }
    if (t0 < nt) {                   /* 1 or 2 tokens × 4 rows: fold8 */
        __m512 v[8];
        for (int r = 0; r < 4; r++) {
            v[r] = acc[t0][r];
            v[4 + r] = t0 + 1 < nt ? acc[t0 + 1][r] : vf_zero();
        }
        __m512 f = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0),
                                         fold8(v));   /* quarter q: token t0 + q, rows 0..3 */
        _mm_mask_storeu_ps(y + t0 * ldy, m, _mm512_castps512_ps128(f));
        if (t0 + 1 < nt) _mm_mask_storeu_ps(y + (t0 + 1) * ldy, m, _mm512_extractf32x4_ps(f, 1));
    }
#else
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr_out; r++) y[t * ldy + r] = vf_fold(acc[t][r]);
#endif
}

/* ---- one token: vec_dot and matvec -----------------------------------------------------
 * Rows go KR at a time: MV_CHUNK columns of each are decoded into a buffer that stays in L1 and
 * added into that row's accumulator, then the next MV_CHUNK. Decode is memory-bound: the same
 * columns of the next group are prefetched as these are decoded (the hardware prefetcher alone
 * leaves the decode waiting). */
#define MV_CHUNK 256   /* a multiple of every block size and of VL */
#define MV_PF_BYTES 16384 /* how far ahead matvec prefetches weight rows */
#define MV_SHORT_ROW 2048 /* rows of fewer bytes go one after the other in a matvec group */

/* acc[0][r] += row r of the nr <= KR consecutive rows at w (rb bytes each) times x, over n
 * columns; `run` is a compile-time constant after inlining. Rows past nr repeat row 0 and are
 * ignored. pf: prefetch distance in bytes, 0 for none. */
static inline __attribute__((always_inline)) void
mv_group(row_dec run, int bs, size_t bb, const uint8_t *w, size_t rb, int nr, const float *x,
         int64_t n, size_t pf, vf acc[KT][KR]) {
    _Alignas(64) float buf[KR][MV_CHUNK];
    const float *rows[KR];
    for (int r = 0; r < KR; r++) rows[r] = buf[r < nr ? r : 0];
    for (int64_t i = 0; i < n; i += MV_CHUNK) {
        int64_t m = min64(MV_CHUNK, n - i);
        size_t off = (size_t)(i / bs) * bb, cb = (size_t)(m / bs) * bb;
        for (int r = 0; r < nr; r++) {
            const uint8_t *src = w + r * rb + off;
            for (size_t o = 0; pf && o < cb; o += 64) __builtin_prefetch(src + pf + o, 0, 3);
            run(src, buf[r], m);
        }
        tile_acc(1, rows, x + i, 0, m, acc);
    }
}

#if defined(__AVX512F__)
/* The 32-element block types fused: each block's two pieces are decoded into registers (the
 * values dec_X writes, by the same operations) and go straight into the row's accumulator in
 * the same order as mv_group, so the bits match krn_matmul's; only the round trip through the
 * L1 buffer is gone, which is most of the cost of these types at decode. */
static inline __attribute__((always_inline)) void blk_q4_0(const uint8_t *b, __m512 w[2]) {
    const __m512 d = _mm512_set1_ps(rd_f16(b));
    const __m128i v = _mm_loadu_si128((const __m128i *)(b + 2));
    const __m512i o = _mm512_set1_epi32(-8);
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_cvtepu8_epi32(lo_nib(v)), o)), d);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_cvtepu8_epi32(hi_nib(v)), o)), d);
}

static inline __attribute__((always_inline)) void blk_q5_0(const uint8_t *b, __m512 w[2]) {
    const __m512 d = _mm512_set1_ps(rd_f16(b));
    __m128i lo, hi;
    q5_unpack(b + 6, rd_u32(b + 2), &lo, &hi);
    const __m512i o = _mm512_set1_epi32(-16);
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_cvtepu8_epi32(lo), o)), d);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_cvtepu8_epi32(hi), o)), d);
}

static inline __attribute__((always_inline)) void blk_q8_0(const uint8_t *b, __m512 w[2]) {
    const __m512 d = _mm512_set1_ps(rd_f16(b));
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)))), d);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)))), d);
}

/* The 256-element K types the same way: a block's 16 pieces decoded into registers. */
static inline __attribute__((always_inline)) void blk_q4_k(const uint8_t *b, __m512 w[16]) {
    const float d = rd_f16(b), dmin = rd_f16(b + 2);
    for (int g = 0; g < 4; g++) {
        const k4_pair sb = k4_pair_at(b + 4, g, d, dmin);
        const __m512 d0 = _mm512_set1_ps(sb.d0), n0 = _mm512_set1_ps(sb.n0);
        const __m512 d1 = _mm512_set1_ps(sb.d1), n1 = _mm512_set1_ps(sb.n1);
        for (int h = 0; h < 2; h++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(b + 16 + 32 * g + 16 * h));
            w[4 * g + h] = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo_nib(v))), d0), n0);
            w[4 * g + 2 + h] = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi_nib(v))), d1), n1);
        }
    }
}

static inline __attribute__((always_inline)) __m512 q6_piece(__m128i q, float s) {
    const __m512i v = _mm512_add_epi32(_mm512_cvtepu8_epi32(q), _mm512_set1_epi32(-32));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(s));
}

static inline __attribute__((always_inline)) void blk_q6_k(const uint8_t *b, __m512 w[16]) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = rd_f16(b + 208);
    const __m128i m30 = _mm_set1_epi8(0x30);
    for (int n = 0; n < 2; n++) {
        const uint8_t *l0 = ql + 64 * n, *h0 = qh + 32 * n;
        for (int k = 0; k < 2; k++) {
            const __m128i a = _mm_loadu_si128((const __m128i *)(l0 + 16 * k));
            const __m128i bb = _mm_loadu_si128((const __m128i *)(l0 + 32 + 16 * k));
            const __m128i h = _mm_loadu_si128((const __m128i *)(h0 + 16 * k));
            w[8 * n + k] = q6_piece(_mm_or_si128(lo_nib(a), _mm_and_si128(_mm_slli_epi16(h, 4), m30)),
                                    d * (float)sc[8 * n + 0 + k]);
            w[8 * n + 2 + k] = q6_piece(_mm_or_si128(lo_nib(bb), _mm_and_si128(_mm_slli_epi16(h, 2), m30)),
                                        d * (float)sc[8 * n + 2 + k]);
            w[8 * n + 4 + k] = q6_piece(_mm_or_si128(hi_nib(a), _mm_and_si128(h, m30)),
                                        d * (float)sc[8 * n + 4 + k]);
            w[8 * n + 6 + k] = q6_piece(_mm_or_si128(hi_nib(bb), _mm_and_si128(_mm_srli_epi16(h, 2), m30)),
                                        d * (float)sc[8 * n + 6 + k]);
        }
    }
}

/* A block decoder writes its np pieces of VL weights (np = block size / 16). */
typedef void (*blk_dec)(const uint8_t *, __m512 *);

/* Block i of the row at `row` into its accumulator: decoded into registers, then FMA. */
static inline __attribute__((always_inline)) vf
mv_block(blk_dec dec, int np, size_t bb, const uint8_t *row, int64_t i, const float *x, size_t pf, vf a) {
    const float *xb = x + 16 * np * i;
    const uint8_t *blk = row + (size_t)i * bb;
    if (pf)
        for (size_t o = 0; o < bb; o += 64) __builtin_prefetch(blk + pf + o, 0, 3);
    __m512 wv[16];
    dec(blk, wv);
    for (int p = 0; p < np; p++) a = vf_fma(wv[p], vf_load(xb + 16 * p), a);
    return a;
}

static inline __attribute__((always_inline)) void
mv_fused(blk_dec dec, int np, size_t bb, const uint8_t *w, size_t rb, int nr, const float *x, int64_t n,
         size_t pf, vf acc[KT][KR]) {
    vf c[KR];
    for (int r = 0; r < KR; r++) c[r] = acc[0][r];
    const int64_t nb = n / (16 * np);
    if (rb < MV_SHORT_ROW) {
        /* short rows one after the other: interleaving the group's rows block by block made
         * 640-column rows stream at two thirds the rate of long ones */
        for (int r = 0; r < nr; r++)
            for (int64_t i = 0; i < nb; i++) c[r] = mv_block(dec, np, bb, w + (size_t)r * rb, i, x, pf, c[r]);
    } else {
        /* long rows interleaved: KR independent FMA chains hide the FMA latency */
        for (int64_t i = 0; i < nb; i++)
            for (int r = 0; r < KR; r++) {
                if (r >= nr) break;
                c[r] = mv_block(dec, np, bb, w + (size_t)r * rb, i, x, pf, c[r]);
            }
    }
    for (int r = 0; r < KR; r++) acc[0][r] = c[r];
}

/* The register decoder of a type, NULL for the types without one (they go through mv_group). */
static inline __attribute__((always_inline)) blk_dec fused_dec(uint32_t type) {
    switch (type) {
    case KRN_TYPE_Q4_0: return blk_q4_0;
    case KRN_TYPE_Q5_0: return blk_q5_0;
    case KRN_TYPE_Q8_0: return blk_q8_0;
    case KRN_TYPE_Q4_K: return blk_q4_k;
    case KRN_TYPE_Q6_K: return blk_q6_k;
    default: return NULL;
    }
}
#endif

/* acc += the rows times x for one weight type (a compile-time constant at every call, as are
 * run, bs and bb): fused where this build has the type's register decoder, else buffered. */
static inline __attribute__((always_inline)) void
mv_type(uint32_t type, row_dec run, int bs, size_t bb, const uint8_t *w, size_t rb, int nr,
        const float *x, int64_t n, size_t pf, vf acc[KT][KR]) {
#if defined(__AVX512F__)
    blk_dec fused = fused_dec(type);
    if (fused) {
        mv_fused(fused, bs / 16, bb, w, rb, nr, x, n, pf, acc);
        return;
    }
#endif
    mv_group(run, bs, bb, w, rb, nr, x, n, pf, acc);
}

static void mv_dispatch(uint32_t type, const uint8_t *w, size_t rb, int nr, const float *x,
                        int64_t n, size_t pf, vf acc[KT][KR]) {
    switch (type) {
    case KRN_TYPE_F32: mv_type(KRN_TYPE_F32, run_f32, 1, 4, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_F16: mv_type(KRN_TYPE_F16, dec_f16_n, 1, 2, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_BF16: mv_type(KRN_TYPE_BF16, dec_bf16_n, 1, 2, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q4_0: mv_type(KRN_TYPE_Q4_0, run_q4_0, 32, 18, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q4_1: mv_type(KRN_TYPE_Q4_1, run_q4_1, 32, 20, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q5_0: mv_type(KRN_TYPE_Q5_0, run_q5_0, 32, 22, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q5_1: mv_type(KRN_TYPE_Q5_1, run_q5_1, 32, 24, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q8_0: mv_type(KRN_TYPE_Q8_0, run_q8_0, 32, 34, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q4_K: mv_type(KRN_TYPE_Q4_K, run_q4_k, QK_K, 144, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q5_K: mv_type(KRN_TYPE_Q5_K, run_q5_k, QK_K, 176, w, rb, nr, x, n, pf, acc); break;
    case KRN_TYPE_Q6_K: mv_type(KRN_TYPE_Q6_K, run_q6_k, QK_K, 210, w, rb, nr, x, n, pf, acc); break;
    default: break;   /* callers check the type */
    }
}

/* ---- 8-bit activations (AVX-512 VNNI) -------------------------------------------------
 * Q5_0, Q4_K and Q6_K rows multiply activations quantized to 8 bits per 32-element block, as
 * llama.cpp does (its Q8_0 / Q8_K): decoding those weights to f32 made the product compute-
 * bound at a third of the memory bandwidth; as bytes it is one VNNI instruction per 64
 * weights. The arithmetic is fixed, like the f32 order above, whatever the batch or threads:
 *     x block b (32 elements): d_b = max|x| / 127, q = nearbyint(x / d_b)   (scalar, exact);
 *     a non-finite x gives d_b = NaN (the outputs are NaN, as in f32);
 *     columns go 64 at a time (a "pair" of x blocks): 16 lanes of 4 elements each, in the
 *     order the weights unpack in (Q5_0: block 2p elements 0-15, block 2p+1 0-15, block 2p
 *     16-31, block 2p+1 16-31, a zero block padding an odd count; Q4_K, Q6_K: in order);
 *     per lane: s = sum (u - z) q over its 4 elements (u the unsigned weight, z its zero point:
 *     16 for Q5_0, 32 for Q6_K, 0 for Q4_K; exact int32), and
 *         acc = fma(float(s), sw * dx, acc)          sw: the lane's weight scale, dx: d_b
 *         acc = fma(float(sum q), mw * dx, acc)      Q4_K only: mw = -dmin * m of the lane
 *     pair after pair; result = vf_fold(acc).
 * x is quantized once per call into a per-thread buffer; krn_matvec and krn_matmul run the same
 * lane kernel, so a row's result does not depend on the batch. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define KRN_I8 1
#endif

enum { I8_Q5_0, I8_Q6_K, I8_Q4_K, I8_NONE };

static int i8_kind(uint32_t type) {
#ifdef KRN_I8
    switch (type) {
    case KRN_TYPE_Q5_0: return I8_Q5_0;
    case KRN_TYPE_Q6_K: return I8_Q6_K;
    case KRN_TYPE_Q4_K: return I8_Q4_K;
    default: return I8_NONE;
    }
#else
    (void)type;
    return I8_NONE;
#endif
}

bool krn_type_i8(uint32_t type) { return i8_kind(type) != I8_NONE; }

#ifdef KRN_I8
/* One token's activations for the lane kernel: per pair 64 bytes q (lane order), 16 floats
 * d_x and 16 lane words c: int32 -z * (sum of the lane's q), or for Q4_K float(sum q). */
typedef struct {
    int8_t *q;
    float *dx;
    int32_t *c;
} xq8;

static size_t xq8_bytes(int64_t n) { return (size_t)((n + 63) / 64) * (64 + 64 + 64); }

static void xq8_at(uint8_t *base, int64_t n, xq8 *o) {
    const size_t np = (size_t)((n + 63) / 64);
    o->q = (int8_t *)base;
    o->dx = (float *)(base + np * 64);
    o->c = (int32_t *)(base + np * 128);
}

static void xq8_quantize(int kind, const float *x, int64_t n, const xq8 *o) {
    const int64_t nb = n / 32;
    const int z = kind == I8_Q5_0 ? 16 : kind == I8_Q6_K ? 32 : 0;
    for (int64_t b0 = 0; b0 < nb; b0 += 2) {
        int8_t tq[64];
        float td[2];
        for (int k = 0; k < 2; k++) {
            if (b0 + k >= nb) {   /* the zero block padding an odd count */
                memset(tq + 32 * k, 0, 32);
                td[k] = 0.0f;
                continue;
            }
            const float *xb = x + 32 * (b0 + k);
            /* |x| as bits: a max over the bits is the max over the values for finite x, and
             * an exponent of all ones marks an inf or NaN */
            const __m512i ab = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
            const __m512i a0 = _mm512_and_si512(_mm512_loadu_si512(xb), ab);
            const __m512i a1 = _mm512_and_si512(_mm512_loadu_si512(xb + 16), ab);
            if (_mm512_cmpge_epi32_mask(a0, inf) | _mm512_cmpge_epi32_mask(a1, inf)) {
                /* a NaN or inf activation poisons every output, as in f32 */
                memset(tq + 32 * k, 0, 32);
                td[k] = NAN;
                continue;
            }
            const int32_t amb = _mm512_reduce_max_epi32(_mm512_max_epi32(a0, a1));
            float am;
            memcpy(&am, &amb, 4);
            const float d = am / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
            td[k] = d;
            const __m512 vid = _mm512_set1_ps(id);
            for (int h = 0; h < 2; h++) {
                const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * h), vid),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                _mm_storeu_si128((__m128i *)(tq + 32 * k + 16 * h), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(r)));
            }
        }
        int8_t *q = o->q + 32 * b0;
        if (kind == I8_Q5_0) {
            for (int i = 0; i < 16; i++) {
                q[i] = tq[i];
                q[16 + i] = tq[32 + i];
                q[32 + i] = tq[16 + i];
                q[48 + i] = tq[48 + i];
            }
        } else {
            memcpy(q, tq, 64);
        }
        for (int l = 0; l < 16; l++) {
            int sum = 0;
            for (int k = 0; k < 4; k++) sum += q[4 * l + k];
            const int blk = kind == I8_Q5_0 ? (l >> 2) & 1 : l >> 3;
            o->dx[8 * b0 + l] = td[blk];
            if (kind == I8_Q4_K) {
                const float f = (float)sum;
                memcpy(&o->c[8 * b0 + l], &f, 4);
            } else {
                o->c[8 * b0 + l] = -z * sum;
            }
        }
    }
}

/* Q5_0 blocks b0 and b1 (NULL: a zero block) as 64 unsigned bytes in lane order. */
static inline __attribute__((always_inline)) void
pair_q5_0(const uint8_t *b0, const uint8_t *b1, __m512i *u, __m512 *sw) {
    const __m256i m4 = _mm256_set1_epi8(15);
    uint32_t h0, h1 = 0;
    memcpy(&h0, b0 + 2, 4);
    __m128i qs1 = _mm_setzero_si128();
    float d1 = 0.0f;
    if (b1) {
        memcpy(&h1, b1 + 2, 4);
        qs1 = _mm_loadu_si128((const __m128i *)(b1 + 6));
        d1 = rd_f16(b1);
    }
    const __m256i qs = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 6))), qs1, 1);
    const __m256i lo = _mm256_and_si256(qs, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), m4);
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    const uint64_t m = (h0 & 0xFFFFu) | ((uint64_t)(h1 & 0xFFFFu) << 16) |
                       ((uint64_t)(h0 >> 16) << 32) | ((uint64_t)(h1 >> 16) << 48);
    *u = _mm512_mask_add_epi8(v, m, v, _mm512_set1_epi8(16));
    *sw = _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(rd_f16(b0)), _mm512_set1_ps(d1));
}

/* Elements 64j .. 64j + 63 of a Q6_K block (j < 4) and their scales. */
static inline __attribute__((always_inline)) void
pair_q6_k(const uint8_t *b, int j, __m512i *u, __m512 *sw) {
    const int n = j >> 1, w = j & 1;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    const __m256i A = _mm256_loadu_si256((const __m256i *)(b + 64 * n));
    const __m256i B = _mm256_loadu_si256((const __m256i *)(b + 64 * n + 32));
    __m256i H = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * n));
    __m256i a = A, c = B;
    if (w) {
        a = _mm256_srli_epi16(A, 4);
        c = _mm256_srli_epi16(B, 4);
        H = _mm256_srli_epi16(H, 4);
    }
    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(a, m4),
                                       _mm256_slli_epi16(_mm256_and_si256(H, m3), 4));
    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(c, m4),
                                       _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 2), m3), 4));
    *u = _mm512_inserti64x4(_mm512_castsi256_si512(q1), q2, 1);
    const int8_t *sc = (const int8_t *)(b + 192) + 8 * n + 4 * w;
    const float d = rd_f16(b + 208);
    const __m512 s4 = _mm512_castps128_ps512(_mm_set_ps(d * (float)sc[3], d * (float)sc[2],
                                                        d * (float)sc[1], d * (float)sc[0]));
    *sw = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), s4);
}

/* The 8 sub-block scales d sc and negated mins -(dmin m) of a Q4_K block, unpacked from its 12
 * packed bytes all at once (k4_scale_min's bits, 32 at a time): the same floats as one by one,
 * once per block instead of twice per pair. */
static inline __attribute__((always_inline)) void
block_q4_k(const uint8_t *b, __m256 *sc, __m256 *mn) {
    uint32_t u[3];
    memcpy(u, b + 4, 12);
    const uint32_t s_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
    const uint32_t s_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    const uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    const __m128i s8 = _mm_cvtsi64_si128((long long)((uint64_t)s_lo | (uint64_t)s_hi << 32));
    const __m128i m8 = _mm_cvtsi64_si128((long long)((uint64_t)m_lo | (uint64_t)m_hi << 32));
    *sc = _mm256_mul_ps(_mm256_set1_ps(rd_f16(b)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(s8)));
    *mn = _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(rd_f16(b + 2)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m8))),
                        _mm256_set1_ps(-0.0f));
}

/* Sub-blocks 2j, 2j + 1 of a Q4_K block (j < 4), with the block's scales and negated mins from
 * block_q4_k: lanes 0-7 take sub-block 2j's, lanes 8-15 2j + 1's. */
static inline __attribute__((always_inline)) void
pair_q4_k(const uint8_t *b, int j, __m256 sc, __m256 mn, __m512i *u, __m512 *sw, __m512 *mw) {
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m256i v = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * j));
    *u = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), 1);
    const __m512i idx = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(2 * j), _mm512_set1_epi32(2 * j + 1));
    *sw = _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(sc));
    *mw = _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(mn));
}

/* y[t * ldy + r] = row r . token t for r < nr <= KR, t < nt <= 4 (kind and nt compile-time
 * constants at the call sites): each pair's weights are unpacked once for every token. */
static inline __attribute__((always_inline)) void
i8_tile(int kind, const uint8_t *w, size_t rb, int nr, const xq8 *xs, int nt, int64_t n, size_t pf,
        float *y, int64_t ldy) {
    const int64_t nb = n / 32, npair = (nb + 1) / 2;
    __m512 acc[KR][4];
    __m256 ksc[KR], kmn[KR];   /* Q4_K: the current block's scales and mins, per row */
    for (int r = 0; r < KR; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < npair; p++) {
        for (int r = 0; r < KR; r++) {
            if (r >= nr) break;
            const uint8_t *row = w + (size_t)r * rb;
            __m512i u;
            __m512 sw, mw = _mm512_setzero_ps();
            if (kind == I8_Q5_0) {
                const uint8_t *b0 = row + (size_t)(2 * p) * 22;
                if (pf) __builtin_prefetch(b0 + pf, 0, 3);
                pair_q5_0(b0, 2 * p + 1 < nb ? b0 + 22 : NULL, &u, &sw);
            } else if (kind == I8_Q6_K) {
                const uint8_t *blk = row + (size_t)(p >> 2) * 210;
                if (pf) __builtin_prefetch(blk + 64 * (p & 3) + pf, 0, 3);
                pair_q6_k(blk, (int)(p & 3), &u, &sw);
            } else {
                const uint8_t *blk = row + (size_t)(p >> 2) * 144;
                if (pf) __builtin_prefetch(blk + 48 * (p & 3) + pf, 0, 3);
                if ((p & 3) == 0) block_q4_k(blk, &ksc[r], &kmn[r]);
                pair_q4_k(blk, (int)(p & 3), ksc[r], kmn[r], &u, &sw, &mw);
            }
            for (int t = 0; t < 4; t++) {
                if (t >= nt) break;
                const __m512 dx = _mm512_load_ps(xs[t].dx + 16 * p);
                const __m512i q = _mm512_load_si512(xs[t].q + 64 * p);
                const __m512i c = _mm512_load_si512(xs[t].c + 16 * p);
                if (kind == I8_Q4_K) {
                    const __m512i si = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, q);
                    __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(sw, dx), acc[r][t]);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_castsi512_ps(c), _mm512_mul_ps(mw, dx), a);
                } else {
                    const __m512i si = _mm512_dpbusd_epi32(c, u, q);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(sw, dx), acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) y[(int64_t)t * ldy + r] = vf_fold(acc[r][t]);
}

/* The matmul's weights unpacked once per group of KR rows and reused by every token of a block
 * (i8_tile unpacks each pair again for every 4 tokens, which costs more than the products): per
 * pair, per row, I8_PK bytes: u (64 unsigned bytes), sw (16 floats), mw (16 floats, Q4_K). */
enum { I8_PK = 192 };

static void i8_unpack(int kind, const uint8_t *w, size_t rb, int nr, int64_t n, uint8_t *pk) {
    const int64_t nb = n / 32, npair = (nb + 1) / 2;
    for (int r = 0; r < nr; r++) {
        const uint8_t *row = w + (size_t)r * rb;
        __m256 ksc = _mm256_setzero_ps(), kmn = _mm256_setzero_ps();
        for (int64_t p = 0; p < npair; p++) {
            uint8_t *d = pk + ((size_t)p * KR + (size_t)r) * I8_PK;
            __m512i u;
            __m512 sw, mw = _mm512_setzero_ps();
            if (kind == I8_Q5_0) {
                const uint8_t *b0 = row + (size_t)(2 * p) * 22;
                pair_q5_0(b0, 2 * p + 1 < nb ? b0 + 22 : NULL, &u, &sw);
            } else if (kind == I8_Q6_K) {
                pair_q6_k(row + (size_t)(p >> 2) * 210, (int)(p & 3), &u, &sw);
            } else {
                const uint8_t *blk = row + (size_t)(p >> 2) * 144;
                if ((p & 3) == 0) block_q4_k(blk, &ksc, &kmn);
                pair_q4_k(blk, (int)(p & 3), ksc, kmn, &u, &sw, &mw);
            }
            _mm512_store_si512(d, u);
            _mm512_store_ps(d + 64, sw);
            _mm512_store_ps(d + 128, mw);
        }
    }
}

/* i8_tile over unpacked rows (i8_unpack): the same operations in the same order for every
 * (row, token), so each result has i8_tile's bits (and krn_matvec's). */
static inline __attribute__((always_inline)) void
i8_tile_pk(int kind, const uint8_t *pk, int nr, const xq8 *xs, int nt, int64_t n, float *y, int64_t ldy) {
    const int64_t npair = (n / 32 + 1) / 2;
    __m512 acc[KR][4];
    for (int r = 0; r < KR; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t p = 0; p < npair; p++) {
        for (int r = 0; r < KR; r++) {
            if (r >= nr) break;
            const uint8_t *d = pk + ((size_t)p * KR + (size_t)r) * I8_PK;
            const __m512i u = _mm512_load_si512(d);
            const __m512 sw = _mm512_load_ps(d + 64);
            for (int t = 0; t < 4; t++) {
                if (t >= nt) break;
                const __m512 dx = _mm512_load_ps(xs[t].dx + 16 * p);
                const __m512i q = _mm512_load_si512(xs[t].q + 64 * p);
                const __m512i c = _mm512_load_si512(xs[t].c + 16 * p);
                if (kind == I8_Q4_K) {
                    const __m512 mw = _mm512_load_ps(d + 128);
                    const __m512i si = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, q);
                    __m512 a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(sw, dx), acc[r][t]);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_castsi512_ps(c), _mm512_mul_ps(mw, dx), a);
                } else {
                    const __m512i si = _mm512_dpbusd_epi32(c, u, q);
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(sw, dx), acc[r][t]);
                }
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < nt; t++) y[(int64_t)t * ldy + r] = vf_fold(acc[r][t]);
}

static void i8_tile_pk_any(int kind, const uint8_t *pk, int nr, const xq8 *xs, int nt, int64_t n,
                           float *y, int64_t ldy) {
#define I8_NT(K) \
    switch (nt) { \
    case 4: i8_tile_pk(K, pk, nr, xs, 4, n, y, ldy); break; \
    case 3: i8_tile_pk(K, pk, nr, xs, 3, n, y, ldy); break; \
    case 2: i8_tile_pk(K, pk, nr, xs, 2, n, y, ldy); break; \
    default: i8_tile_pk(K, pk, nr, xs, 1, n, y, ldy); break; \
    }
    if (kind == I8_Q5_0) I8_NT(I8_Q5_0)
    else if (kind == I8_Q6_K) I8_NT(I8_Q6_K)
    else I8_NT(I8_Q4_K)
#undef I8_NT
}

/* The tile with kind and token count as constants (so the accumulators stay in registers). */
static void i8_tile_any(int kind, const uint8_t *w, size_t rb, int nr, const xq8 *xs, int nt, int64_t n,
                        size_t pf, float *y, int64_t ldy) {
#define I8_NT(K) \
    switch (nt) { \
    case 4: i8_tile(K, w, rb, nr, xs, 4, n, pf, y, ldy); break; \
    case 3: i8_tile(K, w, rb, nr, xs, 3, n, pf, y, ldy); break; \
    case 2: i8_tile(K, w, rb, nr, xs, 2, n, pf, y, ldy); break; \
    default: i8_tile(K, w, rb, nr, xs, 1, n, pf, y, ldy); break; \
    }
    if (kind == I8_Q5_0) I8_NT(I8_Q5_0)
    else if (kind == I8_Q6_K) I8_NT(I8_Q6_K)
    else I8_NT(I8_Q4_K)
#undef I8_NT
}

/* Y = X W^T through the lane kernel: every token quantized once, then tiles of rows against
 * blocks of tokens (the rows stay in L1, the tokens' bytes in L2). */
static void i8_matmul(int kind, uint32_t type, const uint8_t *w, int64_t n_rows, int64_t n_cols,
                      const float *X, int64_t n_tok, float *Y) {
    const size_t xb = xq8_bytes(n_cols), rb = krn_row_bytes(type, n_cols);
    uint8_t *buf = krn_scratch(KRN_SCR_XQ8, xb * (size_t)n_tok);
    if (!buf) {
        for (int64_t i = 0; i < n_rows * n_tok; i++) Y[i] = NAN;
        return;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n_tok; t++) {
        xq8 xs;
        xq8_at(buf + (size_t)t * xb, n_cols, &xs);
        xq8_quantize(kind, X + t * n_cols, n_cols, &xs);
    }
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    int64_t mr = (n_rows + 4 * nth - 1) / (4 * nth);
    mr = min64(128, (mr + KR - 1) / KR * KR);
    /* a block of tokens shares each group's unpacked rows; fewer than PK_MIN tokens unpack
     * inline (the unpacking would not pay) */
    enum { TB = 64, PK_MIN = 8 };
    const int64_t n_rt = (n_rows + mr - 1) / mr, n_tb = (n_tok + TB - 1) / TB;
    const size_t pkb = (size_t)KR * (size_t)((n_cols / 32 + 1) / 2) * I8_PK;
    uint8_t *pks = n_tok >= PK_MIN ? krn_scratch(KRN_SCR_PACK, pkb * (size_t)nth) : NULL;
    #pragma omp parallel for schedule(static)
    for (int64_t it = 0; it < n_rt * n_tb; it++) {
        const int64_t r0 = (it / n_tb) * mr, t0 = (it % n_tb) * TB;
        const int64_t r1 = min64(n_rows, r0 + mr), t1 = min64(n_tok, t0 + TB);
        int th = 0;
#ifdef _OPENMP
        th = omp_get_thread_num();
#endif
        uint8_t *pk = pks && t1 - t0 >= PK_MIN && th < nth ? pks + (size_t)th * pkb : NULL;
        for (int64_t r = r0; r < r1; r += KR) {
            const int nr = (int)min64(KR, r1 - r);
            if (pk) i8_unpack(kind, w + (size_t)r * rb, rb, nr, n_cols, pk);
            for (int64_t t = t0; t < t1; t += 4) {
                xq8 xs[4];
                const int nt = (int)min64(4, t1 - t);
                for (int k = 0; k < nt; k++) xq8_at(buf + (size_t)(t + k) * xb, n_cols, &xs[k]);
                if (pk)
                    i8_tile_pk_any(kind, pk, nr, xs, nt, n_cols, Y + t * n_rows + r, n_rows);
                else
                    i8_tile_any(kind, w + (size_t)r * rb, rb, nr, xs, nt, n_cols, 0, Y + t * n_rows + r, n_rows);
            }
        }
    }
}
#endif

/* krn_matmul's entry for the 8-bit types (matmul.c): 1 when it computed Y. */
int krn_matmul_i8(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols, const float *X,
                  int64_t n_tok, float *Y) {
#ifdef KRN_I8
    const int kind = i8_kind(type);
    if (kind == I8_NONE) return 0;
    i8_matmul(kind, type, W, n_rows, n_cols, X, n_tok, Y);
    return 1;
#else
    (void)type; (void)W; (void)n_rows; (void)n_cols; (void)X; (void)n_tok; (void)Y;
    return 0;
#endif
}

/* ---- one token: krn_matvec, krn_matvec_n ----------------------------------------------
 * Decode's matrices that read the same x (q, k, v; gate, up) go as one loop over the groups of
 * KR rows of all of them: one OpenMP fork and barrier instead of one per matrix, and x rounded
 * to 8 bits once per kind instead of once per matrix. A group runs the same code whichever
 * matrices share its loop, so every y has the bits of krn_matvec, which is the case n = 1. */

typedef struct {
    uint32_t type;
    int kind;              /* i8_kind(type) */
    const uint8_t *w;
    uint8_t *xq;           /* 8-bit types: x quantized for `kind` (xq8_at's layout) */
    size_t rb;             /* bytes per row */
    int64_t n_rows;
    int64_t g0, g1;        /* its groups in the shared loop: [g0, g1) */
    float *y;
} mv_job;

/* Rows [g KR, g KR + KR) of the job (fewer in its last group) against x, n columns. */
static inline void mv_job_group(const mv_job *j, const float *x, int64_t n, int64_t g) {
    const int64_t r0 = g * KR, rb = (int64_t)j->rb;
    const int nr = (int)min64(KR, j->n_rows - r0);
    /* prefetch at least MV_PF_BYTES ahead, in whole groups (short rows: several groups, or the
     * next group would arrive too late), while those rows exist */
    const int64_t ahead = (MV_PF_BYTES + KR * rb - 1) / (KR * rb);
    const size_t pf = r0 + (ahead + 1) * KR <= j->n_rows ? (size_t)(ahead * KR * rb) : 0;
    const uint8_t *w = j->w + (size_t)(r0 * rb);
#ifdef KRN_I8
    if (j->kind != I8_NONE) {
        xq8 xs;
        xq8_at(j->xq, n, &xs);
        i8_tile_any(j->kind, w, j->rb, nr, &xs, 1, n, pf, j->y + r0, 1);
        return;
    }
#endif
    vf acc[KT][KR];
    for (int r = 0; r < KR; r++) acc[0][r] = vf_zero();
    mv_dispatch(j->type, w, j->rb, nr, x, n, pf, acc);
    for (int r = 0; r < nr; r++) j->y[r0 + r] = vf_fold(acc[0][r]);
}

void krn_matvec_n(int n, const krn_mv *mv, int64_t n_cols, const float *x) {
    for (; n > KRN_MV_MAX; n -= KRN_MV_MAX, mv += KRN_MV_MAX) krn_matvec_n(KRN_MV_MAX, mv, n_cols, x);
    /* the 8-bit types: x quantized once per kind, each kind in its own part of one buffer */
    uint8_t *xq = NULL;
    size_t xb = 0;
    int part[I8_NONE] = {0};
#ifdef KRN_I8
    int n_kinds = 0;
    for (int k = 0; k < I8_NONE; k++) part[k] = -1;
    for (int i = 0; i < n; i++) {
        const int k = i8_kind(mv[i].type);
        if (k != I8_NONE && mv[i].n_rows > 0 && part[k] < 0) part[k] = n_kinds++;
    }
    xb = xq8_bytes(n_cols);   /* a multiple of 64: every part stays aligned */
    xq = n_kinds ? krn_scratch(KRN_SCR_XQ8, xb * (size_t)n_kinds) : NULL;
    for (int k = 0; xq && k < I8_NONE; k++) {
        if (part[k] < 0) continue;
        xq8 xs;
        xq8_at(xq + (size_t)part[k] * xb, n_cols, &xs);
        xq8_quantize(k, x, n_cols, &xs);
    }
#endif
    mv_job job[KRN_MV_MAX];
    int nj = 0;
    int64_t n_grp = 0, work = 0;
    for (int i = 0; i < n; i++) {
        const krn_mv *m = &mv[i];
        const int kind = i8_kind(m->type);
        if (m->n_rows <= 0) continue;
        if (!krn_type_supported(m->type) || (kind != I8_NONE && !xq)) {   /* or out of memory */
            for (int64_t r = 0; r < m->n_rows; r++) m->y[r] = NAN;
            continue;
        }
        mv_job *j = &job[nj++];
        *j = (mv_job){.type = m->type, .kind = kind, .w = m->W,
                      .xq = kind != I8_NONE ? xq + (size_t)part[kind] * xb : NULL,
                      .rb = krn_row_bytes(m->type, n_cols), .n_rows = m->n_rows,
                      .g0 = n_grp, .g1 = n_grp + (m->n_rows + KR - 1) / KR, .y = m->y};
        n_grp = j->g1;
        work += m->n_rows * n_cols;
    }
    /* below ~64K weights in all the fork/join costs more than it saves */
    #pragma omp parallel for schedule(static) if (work >= 65536)
    for (int64_t g = 0; g < n_grp; g++) {
        int i = 0;
        while (g >= job[i].g1) i++;
        mv_job_group(&job[i], x, n_cols, g - job[i].g0);
    }
}

void krn_matvec(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols,
                const float *x, float *y) {
    const krn_mv mv = {.type = type, .W = W, .n_rows = n_rows, .y = y};
    krn_matvec_n(1, &mv, n_cols, x);
}

float krn_vec_dot(uint32_t type, const void *row, const float *x, int64_t n) {
    float y;
    krn_matvec(type, row, 1, n, x, &y);
    return y;
}

/* ---- many tokens: the f32 core of krn_matmul -------------------------------------------
 * Rows go MR_F32 at a time (a tile that stays in L2), tokens KT at a time: the tokens' columns
 * stay in L1 while the tile's rows stream past, KR per micro-kernel call. Columns go in passes
 * of KC (each block's accumulators kept in between) so that long rows do not push the tokens
 * out of L1. */
#define MR_F32 (KR * (128 / KR))
#define KC 1024

/* y rows (ldy floats apart, one per token) of the nt tokens at x (rows ldx apart) against the
 * nr <= MR_F32 rows at w (ldw apart), n columns. Rows past nr in the last block repeat row
 * nr - 1 and are dropped. */
static inline __attribute__((always_inline)) void
tokens_run(int nt, const float *w, int64_t ldw, int nr, const float *x, int64_t ldx, int64_t n,
           float *y, int64_t ldy, vf (*acc)[KT][KR]) {
    int n_blk = (nr + KR - 1) / KR;
    for (int64_t k0 = 0; k0 == 0 || k0 < n; k0 += KC) {   /* one pass even when n = 0 */
        int64_t kc = min64(KC, n - k0);
        bool first = k0 == 0, last = k0 + kc == n;
        for (int i = 0; i < n_blk; i++) {
            const float *rows[KR];
            for (int r = 0; r < KR; r++) rows[r] = w + min64(i * KR + r, nr - 1) * ldw + k0;
            vf c[KT][KR];
            for (int t = 0; t < nt; t++)
                for (int r = 0; r < KR; r++) c[t][r] = first ? vf_zero() : acc[i][t][r];
            tile_acc(nt, rows, x + k0, ldx, kc, c);
            if (last) {
                tile_store(nt, c, y + i * KR, ldy, nr - i * KR < KR ? nr - i * KR : KR);
            } else {
                for (int t = 0; t < nt; t++)
                    for (int r = 0; r < KR; r++) acc[i][t][r] = c[t][r];
            }
        }
    }
}

static void tokens_dispatch(int nt, const float *w, int64_t ldw, int nr, const float *x,
                            int64_t ldx, int64_t n, float *y, int64_t ldy, vf (*acc)[KT][KR]) {
    switch (nt) {
    case 1: tokens_run(1, w, ldw, nr, x, ldx, n, y, ldy, acc); break;
    case 2: tokens_run(2, w, ldw, nr, x, ldx, n, y, ldy, acc); break;
#if KT >= 4
    case 3: tokens_run(3, w, ldw, nr, x, ldx, n, y, ldy, acc); break;
    case 4: tokens_run(4, w, ldw, nr, x, ldx, n, y, ldy, acc); break;
#endif
#if KT >= 6
    case 5: tokens_run(5, w, ldw, nr, x, ldx, n, y, ldy, acc); break;
    case 6: tokens_run(6, w, ldw, nr, x, ldx, n, y, ldy, acc); break;
#endif
    default: break;   /* nt is always 1..KT */
    }
}

void krn_matmul_f32(const float *W, int64_t ldw, int64_t n_rows, const float *X, int64_t ldx,
                    int64_t n_tok, int64_t n, float *Y, int64_t ldy) {
    vf acc[MR_F32 / KR][KT][KR];   /* touched only when n > KC */
    for (int64_t r0 = 0; r0 < n_rows; r0 += MR_F32)
        for (int64_t t = 0; t < n_tok; t += KT)
            tokens_dispatch((int)min64(KT, n_tok - t), W + r0 * ldw, ldw, (int)min64(MR_F32, n_rows - r0),
                            X + t * ldx, ldx, n, Y + t * ldy + r0, ldy, acc);
}
