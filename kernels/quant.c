/* Element types and their block layouts (ggml numbering): f16/bf16 conversion, per-block
 * decoders, dot products against f32 activations, and the matrix-vector product of decode.
 * All arithmetic is f32 on decoded weights: the reference other backends are checked against. */
#include "quant.h"

#include <math.h>
#include <string.h>

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

static inline void dec_q4_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    const uint8_t *qs = b + 4;
#ifdef __AVX2__
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    emit16_add(lo_nib(v), d, m, y);
    emit16_add(hi_nib(v), d, m, y + 16);
#else
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(qs[j] & 15) + m;
        y[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
#endif
}

/* Q5_0 and Q5_1 keep the fifth bit of element j in bit j of a little-endian u32. */
static inline void dec_q5_0(const uint8_t *b, float *y) {
    float d = rd_f16(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t *qs = b + 6;
#ifdef __AVX2__
    __m128i v = _mm_loadu_si128((const __m128i *)qs), s16 = _mm_set1_epi8(16);
    __m128i h0 = _mm_and_si128(bits16_to_bytes(qh & 0xffff), s16);
    __m128i h1 = _mm_and_si128(bits16_to_bytes(qh >> 16), s16);
    emit16(_mm_or_si128(lo_nib(v), h0), -16, d, y);
    emit16(_mm_or_si128(hi_nib(v), h1), -16, d, y + 16);
#else
    for (int j = 0; j < 16; j++) {
        int q0 = (qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
        int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)(q0 - 16);
        y[j + 16] = d * (float)(q1 - 16);
    }
#endif
}

static inline void dec_q5_1(const uint8_t *b, float *y) {
    float d = rd_f16(b), m = rd_f16(b + 2);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    const uint8_t *qs = b + 8;
#ifdef __AVX2__
    __m128i v = _mm_loadu_si128((const __m128i *)qs), s16 = _mm_set1_epi8(16);
    __m128i h0 = _mm_and_si128(bits16_to_bytes(qh & 0xffff), s16);
    __m128i h1 = _mm_and_si128(bits16_to_bytes(qh >> 16), s16);
    emit16_add(_mm_or_si128(lo_nib(v), h0), d, m, y);
    emit16_add(_mm_or_si128(hi_nib(v), h1), d, m, y + 16);
#else
    for (int j = 0; j < 16; j++) {
        int q0 = (qs[j] & 15) | (int)(((qh >> j) & 1) << 4);
        int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        y[j] = d * (float)q0 + m;
        y[j + 16] = d * (float)q1 + m;
    }
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

/* Q4_K: d, dmin, scales[12], qs[128]; sub-block 2g/2g+1 = low/high nibbles of qs[32g..]. */
static inline void dec_q4_k(const uint8_t *b, float *y) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int g = 0; g < 4; g++) {
        int s0, m0, s1, m1;
        k4_scale_min(sc, 2 * g, &s0, &m0);
        k4_scale_min(sc, 2 * g + 1, &s1, &m1);
        float d0 = d * (float)s0, n0 = -(dmin * (float)m0);
        float d1 = d * (float)s1, n1 = -(dmin * (float)m1);
        const uint8_t *q = qs + 32 * g;
        float *o = y + 64 * g;
#ifdef __AVX2__
        for (int h = 0; h < 2; h++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(q + 16 * h));
            emit16_add(lo_nib(v), d0, n0, o + 16 * h);
            emit16_add(hi_nib(v), d1, n1, o + 32 + 16 * h);
        }
#else
        for (int l = 0; l < 32; l++) {
            o[l] = d0 * (float)(q[l] & 15) + n0;
            o[l + 32] = d1 * (float)(q[l] >> 4) + n1;
        }
#endif
    }
}

/* Q5_K: as Q4_K plus qh[32]; bit j of qh[l] is the fifth bit of element l of sub-block j. */
static inline void dec_q5_k(const uint8_t *b, float *y) {
    float d = rd_f16(b), dmin = rd_f16(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + 48;
#ifdef __AVX2__
    __m128i h[2] = {_mm_loadu_si128((const __m128i *)qh),
                    _mm_loadu_si128((const __m128i *)(qh + 16))};
    __m128i s16 = _mm_set1_epi8(16);
#endif
    for (int g = 0; g < 4; g++) {
        int s0, m0, s1, m1;
        k4_scale_min(sc, 2 * g, &s0, &m0);
        k4_scale_min(sc, 2 * g + 1, &s1, &m1);
        float d0 = d * (float)s0, n0 = -(dmin * (float)m0);
        float d1 = d * (float)s1, n1 = -(dmin * (float)m1);
        const uint8_t *q = qs + 32 * g;
        float *o = y + 64 * g;
#ifdef __AVX2__
        __m128i b0 = _mm_set1_epi8((char)(1 << (2 * g))), b1 = _mm_set1_epi8((char)(2 << (2 * g)));
        for (int k = 0; k < 2; k++) {
            __m128i v = _mm_loadu_si128((const __m128i *)(q + 16 * k));
            __m128i f0 = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h[k], b0), b0), s16);
            __m128i f1 = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(h[k], b1), b1), s16);
            emit16_add(_mm_or_si128(lo_nib(v), f0), d0, n0, o + 16 * k);
            emit16_add(_mm_or_si128(hi_nib(v), f1), d1, n1, o + 32 + 16 * k);
        }
#else
        for (int l = 0; l < 32; l++) {
            int q0 = (q[l] & 15) | (((qh[l] >> (2 * g)) & 1) << 4);
            int q1 = (q[l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4);
            o[l] = d0 * (float)q0 + n0;
            o[l + 32] = d1 * (float)q1 + n1;
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

void krn_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    switch (type) {
    case KRN_TYPE_F32: memcpy(dst, src, (size_t)n * 4); return;
    case KRN_TYPE_F16: dec_f16_n(s, dst, n); return;
    case KRN_TYPE_BF16: dec_bf16_n(s, dst, n); return;
    case KRN_TYPE_Q4_0: deq_blocks(dec_q4_0, 32, 18, s, dst, n); return;
    case KRN_TYPE_Q4_1: deq_blocks(dec_q4_1, 32, 20, s, dst, n); return;
    case KRN_TYPE_Q5_0: deq_blocks(dec_q5_0, 32, 22, s, dst, n); return;
    case KRN_TYPE_Q5_1: deq_blocks(dec_q5_1, 32, 24, s, dst, n); return;
    case KRN_TYPE_Q8_0: deq_blocks(dec_q8_0, 32, 34, s, dst, n); return;
    case KRN_TYPE_Q4_K: deq_blocks(dec_q4_k, QK_K, 144, s, dst, n); return;
    case KRN_TYPE_Q5_K: deq_blocks(dec_q5_k, QK_K, 176, s, dst, n); return;
    case KRN_TYPE_Q6_K: deq_blocks(dec_q6_k, QK_K, 210, s, dst, n); return;
    default:
        /* unsupported types are rejected at model load; NaN makes a slip visible */
        for (int64_t i = 0; i < n; i++) dst[i] = NAN;
    }
}

/* ---- dot products --------------------------------------------------------------------- */

/* sum a[i] * b[i] for n a multiple of 32 (AVX-512 / AVX2) or any n (plain C). */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    __m256 t = _mm256_add_ps(s0, s1);
    __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    u = _mm_add_ps(u, _mm_movehl_ps(u, u));
    u = _mm_add_ss(u, _mm_movehdup_ps(u));
    s = _mm_cvtss_f32(u);
#else
    /* 16 independent partial sums: vectorizable without reassociation flags */
    float acc[16] = {0};
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; l < 16; l++) s += acc[l];
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

#if defined(__AVX512F__)
typedef __m512 vacc;
static inline vacc vacc_zero(void) { return _mm512_setzero_ps(); }
/* acc += a[0..31] * b[0..31] */
static inline vacc vacc_fma32(vacc acc, const float *a, const float *b) {
    acc = _mm512_fmadd_ps(_mm512_load_ps(a), _mm512_loadu_ps(b), acc);
    return _mm512_fmadd_ps(_mm512_load_ps(a + 16), _mm512_loadu_ps(b + 16), acc);
}
static inline float vacc_sum(vacc a) { return _mm512_reduce_add_ps(a); }
#else
typedef struct { float v[16]; } vacc;
static inline vacc vacc_zero(void) { vacc a = {{0}}; return a; }
static inline vacc vacc_fma32(vacc acc, const float *a, const float *b) {
    for (int l = 0; l < 16; l++) acc.v[l] += a[l] * b[l] + a[l + 16] * b[l + 16];
    return acc;
}
static inline float vacc_sum(vacc a) {
    float s = 0.0f;
    for (int l = 0; l < 16; l++) s += a.v[l];
    return s;
}
#endif

/* Decode up to 256 elements (one K-quant block or eight 32-element blocks) into a small
 * aligned buffer, then multiply-add it with x; one specialised loop per type, as above.
 * Two accumulators alternate across 32-element pieces to hide FMA latency. */
static inline __attribute__((always_inline)) float
dot_blocks(block_dec dec, int bs, size_t bb, const uint8_t *s, const float *x, int64_t n) {
    _Alignas(64) float buf[256];
    vacc a0 = vacc_zero(), a1 = vacc_zero();
    for (int64_t i = 0; i < n; i += 256) {
        int m = n - i < 256 ? (int)(n - i) : 256, j;
        for (j = 0; j < m; j += bs) dec(s + (i + j) / bs * bb, buf + j);
        for (j = 0; j + 64 <= m; j += 64) {
            a0 = vacc_fma32(a0, buf + j, x + i + j);
            a1 = vacc_fma32(a1, buf + j + 32, x + i + j + 32);
        }
        if (j < m) a0 = vacc_fma32(a0, buf + j, x + i + j);
    }
    return vacc_sum(a0) + vacc_sum(a1);
}

/* f16 / bf16 rows: decode 256 at a time, then the f32 dot. */
static float dot_half(uint32_t type, const uint8_t *s, const float *x, int64_t n) {
    _Alignas(64) float buf[256];
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i += 256) {
        int64_t m = n - i < 256 ? n - i : 256;
        if (type == KRN_TYPE_F16) dec_f16_n(s + 2 * i, buf, m);
        else dec_bf16_n(s + 2 * i, buf, m);
        sum += dot_f32(buf, x + i, m);
    }
    return sum;
}

float krn_vec_dot(uint32_t type, const void *row, const float *x, int64_t n) {
    const uint8_t *s = row;
    switch (type) {
    case KRN_TYPE_F32: return dot_f32(row, x, n);
    case KRN_TYPE_F16:
    case KRN_TYPE_BF16: return dot_half(type, s, x, n);
    case KRN_TYPE_Q4_0: return dot_blocks(dec_q4_0, 32, 18, s, x, n);
    case KRN_TYPE_Q4_1: return dot_blocks(dec_q4_1, 32, 20, s, x, n);
    case KRN_TYPE_Q5_0: return dot_blocks(dec_q5_0, 32, 22, s, x, n);
    case KRN_TYPE_Q5_1: return dot_blocks(dec_q5_1, 32, 24, s, x, n);
    case KRN_TYPE_Q8_0: return dot_blocks(dec_q8_0, 32, 34, s, x, n);
    case KRN_TYPE_Q4_K: return dot_blocks(dec_q4_k, QK_K, 144, s, x, n);
    case KRN_TYPE_Q5_K: return dot_blocks(dec_q5_k, QK_K, 176, s, x, n);
    case KRN_TYPE_Q6_K: return dot_blocks(dec_q6_k, QK_K, 210, s, x, n);
    default: return NAN;
    }
}

/* ---- matrix-vector -------------------------------------------------------------------- */

#define PF_BYTES 2048

void krn_matvec(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols,
                const float *x, float *y) {
    const uint8_t *w = W;
    size_t rb = krn_row_bytes(type, n_cols);
    /* below ~64K weights the fork/join costs more than it saves */
    #pragma omp parallel for schedule(static) if (n_rows * n_cols >= 65536)
    for (int64_t r = 0; r < n_rows; r++) {
#if defined(__AVX2__)
        /* the weights stream from DRAM once: ask for the row PF_BYTES ahead while this one
         * is computed (the hardware prefetcher alone leaves the decode waiting) */
        size_t ahead = (size_t)r * rb + PF_BYTES;
        for (size_t o = 0; o < rb && ahead + o < (size_t)n_rows * rb; o += 64)
            _mm_prefetch((const char *)w + ahead + o, _MM_HINT_T0);
#endif
        y[r] = krn_vec_dot(type, w + (size_t)r * rb, x, n_cols);
    }
}
