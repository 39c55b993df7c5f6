/* Sparse/range attention for a GQA group: one online-softmax state (m, d, o) per query, keys
 * scored in tiles of one query by VL keys (no horizontal sum per key), each query's output kept
 * in registers across a block of keys; SIMD via a tiny vector layer (AVX-512, AVX2+FMA+F16C,
 * plain C); OpenMP only as split-K when the caller is serial. */
#include "attn_sparse.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "ops.h"
#include "quant.h"

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>
#endif

enum {
    BLK = 32,           /* keys per online-softmax block */
    SPLIT_MIN = 2048,   /* keys per thread below which split-K does not pay */
    PAR_BUF = 8192,     /* floats of private output per split thread (n_q * dv) */
};

/* ---- vector layer: vf holds VL floats ------------------------------------------------ */

#if defined(__AVX512F__)
#define VL 16
#define V_(op) _mm512_##op   /* V_(add_ps): this width's intrinsic, _mm512_add_ps here */
typedef __m512 vf;
static inline vf v_ldh(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
static inline float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define VL 8
#define V_(op) _mm256_##op
typedef __m256 vf;
static inline vf v_ldh(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline float v_sum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float v_hmax(vf a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#define VL 0
#endif

#if VL
static inline vf v_zero(void) { return V_(setzero_ps)(); }
static inline vf v_set1(float x) { return V_(set1_ps)(x); }
static inline vf v_ld(const float *p) { return V_(loadu_ps)(p); }
static inline void v_st(float *p, vf a) { V_(storeu_ps)(p, a); }
static inline vf v_fma(vf a, vf b, vf c) { return V_(fmadd_ps)(a, b, c); }
static inline vf v_add(vf a, vf b) { return V_(add_ps)(a, b); }
static inline vf v_mul(vf a, vf b) { return V_(mul_ps)(a, b); }
#endif

#if VL == 16
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf v_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf v_pow2i(vf n) { /* 2^n for integral n in [-126, 127] */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
#elif VL == 8
static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf v_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf v_pow2i(vf n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
#endif
#if VL
/* e^x for x <= 0 (the softmax's shifted scores), within about 2 ulp of expf; below -87 (where
 * e^x < 1.7e-38, nothing next to the block's largest term e^0 = 1) it returns e^-87. Cephes'
 * single-precision scheme: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for exactness),
 * e^r by a degree-6 polynomial, times 2^n built in the exponent bits. */
static inline vf v_exp(vf x) {
    x = v_max(v_set1(-87.0f), x); /* max returns its second operand when one is NaN: NaN stays */
    const vf n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    vf r = v_fma(n, v_set1(-0.693359375f), x);
    r = v_fma(n, v_set1(2.12194440e-4f), r);
    vf y = v_set1(1.9875691500e-4f);
    y = v_fma(y, r, v_set1(1.3981999507e-3f));
    y = v_fma(y, r, v_set1(8.3334519073e-3f));
    y = v_fma(y, r, v_set1(4.1665795894e-2f));
    y = v_fma(y, r, v_set1(1.6666665459e-1f));
    y = v_fma(y, r, v_set1(5.0000001201e-1f));
    y = v_fma(y, v_mul(r, r), v_add(r, v_set1(1.0f)));
    return v_mul(y, v_pow2i(n));
}
#endif

/* ---- row primitives ------------------------------------------------------------------ */

/* q . k for an f32 or f16 row of n elements (the selectors' raw scores; attention scores its
 * keys in tiles, dots_tile). */
static float dot1(const float *q, const void *k, int n, attn_dtype dt) {
    int i = 0;
    float s = 0.0f;
#if VL
    vf a0 = v_zero();
    for (; i + VL <= n; i += VL) {
        vf kv = dt == ATTN_F32 ? v_ld((const float *)k + i) : v_ldh((const uint16_t *)k + i);
        a0 = v_fma(v_ld(q + i), kv, a0);
    }
    s = v_sum(a0);
#endif
    for (; i < n; i++) {
        float x = dt == ATTN_F32 ? ((const float *)k)[i] : krn_f16_to_f32(((const uint16_t *)k)[i]);
        s += q[i] * x;
    }
    return s;
}

/* The scores of one query against VL key rows at once: one accumulator per key, then the VL
 * accumulators summed lane-wise into one vector by a fixed tree of shuffles and adds (lane t =
 * key t), instead of a horizontal sum per key. Every attention pass scores its keys through this
 * tile, so a query's score does not depend on which other queries or keys share its call. */
#if VL == 16
static inline vf v_sum16(vf *a) {
    vf t[8], u[4], x[2];
    for (int m = 0; m < 8; m++)
        t[m] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * m], a[2 * m + 1]), _mm512_unpackhi_ps(a[2 * m], a[2 * m + 1]));
    for (int m = 0; m < 4; m++) {
        const __m512d l = _mm512_castps_pd(t[2 * m]), h = _mm512_castps_pd(t[2 * m + 1]);
        u[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(l, h)), _mm512_castpd_ps(_mm512_unpackhi_pd(l, h)));
    }
    /* 128-bit lane L of u[m] holds the sums over lane L of keys 4m..4m+3 */
    for (int m = 0; m < 2; m++)
        x[m] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * m], u[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
#elif VL == 8
static inline vf v_sum16(vf *a) { /* 8 keys: the same tree without its last level */
    vf t[4], u[2];
    for (int m = 0; m < 4; m++)
        t[m] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * m], a[2 * m + 1]), _mm256_unpackhi_ps(a[2 * m], a[2 * m + 1]));
    for (int m = 0; m < 2; m++) {
        const __m256d l = _mm256_castps_pd(t[2 * m]), h = _mm256_castps_pd(t[2 * m + 1]);
        u[m] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(l, h)), _mm256_castpd_ps(_mm256_unpackhi_pd(l, h)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20), _mm256_permute2f128_ps(u[0], u[1], 0x31));
}
#endif

/* out[t] = q . k[t] for the VL rows k[t] (n elements each, f32 or f16). */
static void dots_tile(const float *q, const void *const *k, int n, attn_dtype dt, float *out) {
    int i = 0;
#if VL
    vf acc[VL];
    for (int t = 0; t < VL; t++) acc[t] = v_zero();
    for (; i + VL <= n; i += VL) {
        const vf qv = v_ld(q + i);
        for (int t = 0; t < VL; t++) {
            const vf kv = dt == ATTN_F32 ? v_ld((const float *)k[t] + i) : v_ldh((const uint16_t *)k[t] + i);
            acc[t] = v_fma(qv, kv, acc[t]);
        }
    }
    v_st(out, v_sum16(acc));
#endif
    for (int t = 0; t < (VL ? VL : 1); t++) {
        float s = VL ? out[t] : 0.0f;
        for (int j = i; j < n; j++) {
            float x = dt == ATTN_F32 ? ((const float *)k[t])[j] : krn_f16_to_f32(((const uint16_t *)k[t])[j]);
            s += q[j] * x;
        }
        out[t] = s;
    }
}

/* ---- row addressing ------------------------------------------------------------------ */

static inline size_t elt_size(const attn_kv_view *kv) { return kv->dtype == ATTN_F32 ? 4 : 2; }

static inline const char *page_of(const attn_kv_view *kv, int64_t p) {
    int64_t pg = p >> kv->page_shift;
    if (kv->ring_pages > 0) pg %= kv->ring_pages;
    return (const char *)kv->pages[pg];
}

static inline const void *k_row(const attn_kv_view *kv, int64_t p) {
    int64_t r = p & (((int64_t)1 << kv->page_shift) - 1);
    return page_of(kv, p) + kv->k_off + (size_t)r * kv->k_stride * elt_size(kv);
}

static inline const void *v_row(const attn_kv_view *kv, int64_t p) {
    int64_t r = p & (((int64_t)1 << kv->page_shift) - 1);
    return page_of(kv, p) + kv->v_off + (size_t)r * kv->v_stride * elt_size(kv);
}

/* Rows picked by id are scattered over the pages: with the cache long since cold (the weights
 * stream through it every token) each one is a DRAM round trip, so the rows PF_ROWS ahead are
 * requested while the current one is scored. */
enum { PF_ROWS = 8 };

static inline void prefetch_row(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o, 0, 3);
}

/* ---- online softmax over blocks ------------------------------------------------------- */

typedef struct {
    const attn_kv_view *kv;
    const float *q;     /* (n_q, dk) */
    int n_q;            /* <= ATTN_MAX_ROWS */
    float scale;
    float *out;         /* (n_q, dv), unnormalised during the pass */
    float m[ATTN_MAX_ROWS], d[ATTN_MAX_ROWS];
} soft_state;

static void soft_init(soft_state *st, const attn_kv_view *kv, const float *q, int n_q, float scale,
                      float *out) {
    st->kv = kv; st->q = q; st->n_q = n_q; st->scale = scale; st->out = out;
    for (int g = 0; g < n_q; g++) { st->m[g] = -INFINITY; st->d[g] = 0.0f; }
    memset(out, 0, sizeof(float) * n_q * kv->dv);
}

#if VL
/* The value rows vr[0..nb) weighted by the NG queries' weights w[g0 + q][j] into their outputs,
 * four vectors of each output in registers at a time. */
static inline __attribute__((always_inline)) void pv_rows(const soft_state *st, const int NG, int g0,
                                                          float (*w)[BLK + (VL ? VL : 1)], const void *const *vr,
                                                          int nb) {
    const attn_kv_view *kv = st->kv;
    const int dv = kv->dv;
    const int f32 = kv->dtype == ATTN_F32;
    int i = 0;
    for (; i + 4 * VL <= dv; i += 4 * VL) {
        vf a[4][4];
        for (int q = 0; q < NG; q++)
            for (int u = 0; u < 4; u++) a[q][u] = v_ld(st->out + (size_t)(g0 + q) * dv + i + u * VL);
        for (int j = 0; j < nb; j++) {
            vf x[4];
            for (int u = 0; u < 4; u++)
                x[u] = f32 ? v_ld((const float *)vr[j] + i + u * VL) : v_ldh((const uint16_t *)vr[j] + i + u * VL);
            for (int q = 0; q < NG; q++) {
                const vf p = v_set1(w[g0 + q][j]);
                for (int u = 0; u < 4; u++) a[q][u] = v_fma(p, x[u], a[q][u]);
            }
        }
        for (int q = 0; q < NG; q++)
            for (int u = 0; u < 4; u++) v_st(st->out + (size_t)(g0 + q) * dv + i + u * VL, a[q][u]);
    }
    for (; i + VL <= dv; i += VL)
        for (int q = 0; q < NG; q++) {
            float *o = st->out + (size_t)(g0 + q) * dv;
            vf acc = v_ld(o + i);
            for (int j = 0; j < nb; j++) {
                const vf x = f32 ? v_ld((const float *)vr[j] + i) : v_ldh((const uint16_t *)vr[j] + i);
                acc = v_fma(v_set1(w[g0 + q][j]), x, acc);
            }
            v_st(o + i, acc);
        }
    for (; i < dv; i++)
        for (int q = 0; q < NG; q++)
            for (int j = 0; j < nb; j++) {
                float x = f32 ? ((const float *)vr[j])[i] : krn_f16_to_f32(((const uint16_t *)vr[j])[i]);
                st->out[(size_t)(g0 + q) * dv + i] += w[g0 + q][j] * x;
            }
}
#endif

/* One block of nb <= BLK keys given by positions pos[j]: the scores in tiles of TILE keys (the
 * last tile padded with its last key, whose extra scores are dropped), then per query the
 * rescale, the weights and the value rows, its output kept in registers across the block. */
enum { TILE = VL ? VL : 1 };
static void soft_block(soft_state *st, const int64_t *pos, int nb) {
    const attn_kv_view *kv = st->kv;
    const int n_q = st->n_q, dk = kv->dk, dv = kv->dv;
    float s[ATTN_MAX_ROWS][BLK + TILE], tile[TILE];
    const void *kr[BLK + TILE], *vr[BLK];
    /* scattered ids only: a range streams, and the hardware prefetcher follows it */
    const int scattered = nb > 1 && pos[nb - 1] - pos[0] != nb - 1;
    const size_t kb = (size_t)dk * elt_size(kv), vb = (size_t)dv * elt_size(kv);
    for (int j = 0; j < nb; j++) {
        kr[j] = k_row(kv, pos[j]);
        vr[j] = v_row(kv, pos[j]);
        if (scattered) {
            prefetch_row(kr[j], kb);
            prefetch_row(vr[j], vb);   /* read after the block's softmax */
        }
    }
    for (int j = nb; j < BLK + TILE; j++) kr[j] = kr[nb - 1];
    for (int j0 = 0; j0 < nb; j0 += TILE) {
        const int m = nb - j0 < TILE ? nb - j0 : TILE;
        for (int g = 0; g < n_q; g++) {
            dots_tile(st->q + (size_t)g * dk, kr + j0, dk, kv->dtype, tile);
            for (int t = 0; t < m; t++) s[g][j0 + t] = st->scale * tile[t];
        }
    }
#if VL
    const int nv = (nb + VL - 1) / VL * VL; /* the scores VL at a time, the padding masked */
#endif
    for (int g = 0; g < n_q; g++) {
        float bm = -INFINITY;
#if VL
        for (int j = nb; j < nv; j++) s[g][j] = -INFINITY;
        vf mx = v_set1(-INFINITY);
        for (int j = 0; j < nv; j += VL) mx = v_max(v_ld(&s[g][j]), mx); /* a NaN score is passed over */
        bm = v_hmax(mx);
#else
        for (int j = 0; j < nb; j++) bm = s[g][j] > bm ? s[g][j] : bm;
#endif
        float *o = st->out + (size_t)g * dv;
        if (bm > st->m[g]) {
            float c = expf(st->m[g] - bm); /* 0 on the first block (m = -inf) */
            st->d[g] *= c;
            for (int i = 0; i < dv; i++) o[i] *= c;
            st->m[g] = bm;
        }
        float dsum = 0.0f;
#if VL
        /* the weights VL at a time; the padding's weights are zeroed before the sum */
        const vf mv = v_set1(st->m[g]);
        for (int j = 0; j < nv; j += VL) v_st(&s[g][j], v_exp(v_sub(v_ld(&s[g][j]), mv)));
        for (int j = nb; j < nv; j++) s[g][j] = 0.0f;
        vf ds = v_zero();
        for (int j = 0; j < nv; j += VL) ds = v_add(ds, v_ld(&s[g][j]));
        dsum = v_sum(ds);
#else
        for (int j = 0; j < nb; j++) {
            s[g][j] = expf(s[g][j] - st->m[g]);
            dsum += s[g][j];
        }
#endif
        st->d[g] += dsum;
    }
    /* o += sum_j p_j v_j, key after key (the order of each element's sum is the keys', whatever
     * the grouping), for up to four queries at a time so that a value row is loaded once for them */
    int g = 0;
#if VL
    for (; g + 4 <= n_q; g += 4) pv_rows(st, 4, g, s, vr, nb);
    for (; g < n_q; g++) pv_rows(st, 1, g, s, vr, nb);
#else
    for (; g < n_q; g++) {
        float *o = st->out + (size_t)g * dv;
        for (int i = 0; i < dv; i++)
            for (int j = 0; j < nb; j++) {
                float x = kv->dtype == ATTN_F32 ? ((const float *)vr[j])[i] : krn_f16_to_f32(((const uint16_t *)vr[j])[i]);
                o[i] += s[g][j] * x;
            }
    }
#endif
}

static void soft_finish(soft_state *st, float *lse) {
    const int dv = st->kv->dv;
    for (int g = 0; g < st->n_q; g++) {
        float *o = st->out + (size_t)g * dv;
        if (st->d[g] > 0.0f) {
            float inv = 1.0f / st->d[g];
            for (int i = 0; i < dv; i++) o[i] *= inv;
            lse[g] = st->m[g] + logf(st->d[g]);
        } else {
            lse[g] = -INFINITY;
        }
    }
}

/* Serial pass over entries [a, b) of either the position range (ids == NULL: position = entry)
 * or the id list (position = ids[entry]); n_q <= ATTN_MAX_GROUP. */
static void attn_serial(const attn_kv_view *kv, const float *q, int n_q, const int32_t *ids,
                        int64_t a, int64_t b, float scale, float *out, float *lse) {
    soft_state st;
    int64_t pos[BLK];
    soft_init(&st, kv, q, n_q, scale, out);
    for (int64_t j0 = a; j0 < b; j0 += BLK) {
        int nb = (int)(b - j0 < BLK ? b - j0 : BLK);
        for (int j = 0; j < nb; j++) pos[j] = ids ? ids[j0 + j] : j0 + j;
        soft_block(&st, pos, nb);
    }
    soft_finish(&st, lse);
}

/* Splits [a, b) over the threads when that pays and the caller is serial. Each thread keeps
 * its part on its own stack and publishes a pointer; after one barrier thread 0 merges the parts
 * in thread order, so the result only depends on the thread count. */
static void attn_dispatch(const attn_kv_view *kv, const float *q, int n_q, const int32_t *ids,
                          int64_t a, int64_t b, float scale, float *out, float *lse) {
    enum { MAX_SPLIT = 64 };
    const int64_t n = b - a;
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt > n / SPLIT_MIN) nt = (int)(n / SPLIT_MIN);
    if (nt > MAX_SPLIT) nt = MAX_SPLIT;
    if (nt < 2 || n_q * kv->dv > PAR_BUF) {
        attn_serial(kv, q, n_q, ids, a, b, scale, out, lse);
        return;
    }
    float *part_o[MAX_SPLIT], *part_l[MAX_SPLIT];
    #pragma omp parallel num_threads(nt)
    {
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t pa = a + n * t / T, pb = a + n * (t + 1) / T;
        float o_loc[PAR_BUF], l_loc[ATTN_MAX_GROUP];
        part_o[t] = t == 0 ? out : o_loc;
        part_l[t] = t == 0 ? lse : l_loc;
        attn_serial(kv, q, n_q, ids, pa, pb, scale, part_o[t], part_l[t]);
        #pragma omp barrier
        if (t == 0)
            for (int i = 1; i < T; i++) attn_merge(out, lse, part_o[i], part_l[i], n_q, kv->dv);
        /* the implicit barrier at the end keeps every o_loc alive until the merge is done */
    }
}

/* ---- causal rows sharing their keys ---------------------------------------------------- */

enum { CAUSAL_BUF = ATTN_MAX_ROWS * 128 };   /* floats of gathered queries, and of outputs */
/* Gathered queries and outputs of one call stay within L1 (2 x 4096 floats = 32 KiB): past that
 * every key block re-reads them from L2, and Gemma 3's 256-wide heads got slower with more rows. */
enum { CAUSAL_L1 = 4096 };

int attn_causal_max_rows(int G, int dk, int dv) {
    const int d = dk > dv ? dk : dv;
    if (G < 1 || d < 1) return 1;
    int q = CAUSAL_L1 / d;
    if (q > ATTN_MAX_ROWS) q = ATTN_MAX_ROWS;
    return q / G > 1 ? q / G : 1;
}

void attn_causal_rows(const attn_kv_view *kv, const float *const *q, int G, int R, const int64_t *pos,
                      float scale, float *const *out, float *const *lse) {
    if (R < 1 || G < 1 || G > ATTN_MAX_GROUP || R * G > ATTN_MAX_ROWS) return;
    const int dk = kv->dk, dv = kv->dv, nq = R * G;
    float qs[CAUSAL_BUF], os[CAUSAL_BUF];
    if ((size_t)nq * dk > CAUSAL_BUF || (size_t)nq * dv > CAUSAL_BUF) {
        /* no room to gather: row by row */
        for (int r = 0; r < R; r++) attn_serial(kv, q[r], G, NULL, 0, pos[r] + 1, scale, out[r], lse[r]);
        return;
    }
    for (int r = 0; r < R; r++) memcpy(qs + (size_t)r * G * dk, q[r], sizeof(float) * G * dk);
    /* whole blocks every row attends, with the keys loaded once for all R * G queries: the block
     * borders are those of a single row's pass (multiples of BLK from 0), and each query's state
     * evolves exactly as it would alone */
    int64_t pmin = pos[0];
    for (int r = 1; r < R; r++) pmin = pos[r] < pmin ? pos[r] : pmin;
    const int64_t shared = (pmin + 1) / BLK * BLK;
    soft_state st;
    int64_t p[BLK];
    soft_init(&st, kv, qs, nq, scale, os);
    for (int64_t j0 = 0; j0 < shared; j0 += BLK) {
        for (int j = 0; j < BLK; j++) p[j] = j0 + j;
        soft_block(&st, p, BLK);
    }
    /* the rest of each row's range on its own queries' states */
    for (int r = 0; r < R; r++) {
        soft_state sr;
        sr.kv = kv; sr.q = qs + (size_t)r * G * dk; sr.n_q = G; sr.scale = scale;
        sr.out = os + (size_t)r * G * dv;
        for (int g = 0; g < G; g++) { sr.m[g] = st.m[r * G + g]; sr.d[g] = st.d[r * G + g]; }
        for (int64_t j0 = shared; j0 < pos[r] + 1; j0 += BLK) {
            int nb = (int)(pos[r] + 1 - j0 < BLK ? pos[r] + 1 - j0 : BLK);
            for (int j = 0; j < nb; j++) p[j] = j0 + j;
            soft_block(&sr, p, nb);
        }
        soft_finish(&sr, lse[r]);
        memcpy(out[r], sr.out, sizeof(float) * G * dv);
    }
}

/* ---- public entry points ------------------------------------------------------------- */

void attn_range(const attn_kv_view *kv, const float *q, int n_q, int64_t lo, int64_t hi,
                float scale, float *out, float *lse) {
    if (hi < lo) hi = lo;
    for (int g = 0; g < n_q; g += ATTN_MAX_GROUP) {
        int ng = n_q - g < ATTN_MAX_GROUP ? n_q - g : ATTN_MAX_GROUP;
        attn_dispatch(kv, q + (size_t)g * kv->dk, ng, NULL, lo, hi, scale, out + (size_t)g * kv->dv,
                      lse + g);
    }
}

void attn_ids(const attn_kv_view *kv, const float *q, int n_q, const int32_t *ids, int64_t n,
              float scale, float *out, float *lse) {
    if (n < 0) n = 0;
    for (int g = 0; g < n_q; g += ATTN_MAX_GROUP) {
        int ng = n_q - g < ATTN_MAX_GROUP ? n_q - g : ATTN_MAX_GROUP;
        attn_dispatch(kv, q + (size_t)g * kv->dk, ng, ids, 0, n, scale, out + (size_t)g * kv->dv,
                      lse + g);
    }
}

void attn_merge(float *o_a, float *lse_a, const float *o_b, const float *lse_b, int n_q, int dv) {
    for (int g = 0; g < n_q; g++)
        krn_attn_merge(o_a + (size_t)g * dv, lse_a + g, o_b + (size_t)g * dv, lse_b[g], dv);
}

void attn_scores_range(const attn_kv_view *kv, const float *q, int64_t lo, int64_t hi,
                       float *scores) {
    for (int64_t p = lo; p < hi; p++) scores[p - lo] = dot1(q, k_row(kv, p), kv->dk, kv->dtype);
}

void attn_scores_ids(const attn_kv_view *kv, const float *q, const int32_t *ids, int64_t n,
                     float *scores) {
    const size_t kb = (size_t)kv->dk * elt_size(kv);
    for (int64_t j = 0; j < n && j < PF_ROWS; j++) prefetch_row(k_row(kv, ids[j]), kb);
    for (int64_t j = 0; j < n; j++) {
        if (j + PF_ROWS < n) prefetch_row(k_row(kv, ids[j + PF_ROWS]), kb);
        scores[j] = dot1(q, k_row(kv, ids[j]), kv->dk, kv->dtype);
    }
}

/* ---- a GQA group's scores, several keys per reduction ---------------------------------- */

/* Selectors score a few hundred scattered keys per query and group. dot1 per (key, query) pays
 * one horizontal sum per product and loads each key once per query; here a block of SC_KB keys
 * is loaded once for up to SC_GB queries, the SC_KB * SC_GB partial sums stay in registers over
 * the row, and sum4 folds four of them at a time into four lanes (about a quarter of the
 * shuffles). */
enum { SC_KB = 4, SC_GB = 4 };

#if VL
/* {v_sum(a), v_sum(b), v_sum(c), v_sum(d)} into out[0..3] (up to rounding order) */
static inline void sum4(vf a, vf b, vf c, vf d, float *out) {
#if VL == 16
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
#else
    __m256 a8 = a, b8 = b, c8 = c, d8 = d;
#endif
    /* hadd(a, b) = [a0+a1 a2+a3 b0+b1 b2+b3 | a4+a5 a6+a7 b4+b5 b6+b7] */
    __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);
    __m256 abcd = _mm256_hadd_ps(ab, cd); /* [a b c d | a' b' c' d'] partial sums */
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
#endif

static inline float ld1(const void *k, int i, attn_dtype dt) {
    return dt == ATTN_F32 ? ((const float *)k)[i] : krn_f16_to_f32(((const uint16_t *)k)[i]);
}

/* s[g * ld + j] = q[g * n] . k[j] for g < GB, j < SC_KB. GB is a constant at every call, so each
 * width compiles to its own straight-line loop. */
static inline __attribute__((always_inline)) void
score_block(const float *q, int GB, const void *const *k, int n, attn_dtype dt, float *s, int64_t ld) {
    float r[SC_GB][SC_KB];
    int i = 0;
#if VL
    vf acc[SC_GB][SC_KB];
    for (int g = 0; g < GB; g++)
        for (int j = 0; j < SC_KB; j++) acc[g][j] = v_zero();
    for (; i + VL <= n; i += VL) {
        vf kv[SC_KB];
        for (int j = 0; j < SC_KB; j++)
            kv[j] = dt == ATTN_F32 ? v_ld((const float *)k[j] + i) : v_ldh((const uint16_t *)k[j] + i);
        for (int g = 0; g < GB; g++) {
            const vf qv = v_ld(q + (size_t)g * n + i);
            for (int j = 0; j < SC_KB; j++) acc[g][j] = v_fma(qv, kv[j], acc[g][j]);
        }
    }
    if (i == n) { /* no scalar tail: a query's four sums are contiguous in s */
        for (int g = 0; g < GB; g++) sum4(acc[g][0], acc[g][1], acc[g][2], acc[g][3], s + (size_t)g * ld);
        return;
    }
    for (int g = 0; g < GB; g++) sum4(acc[g][0], acc[g][1], acc[g][2], acc[g][3], r[g]);
#else
    for (int g = 0; g < GB; g++)
        for (int j = 0; j < SC_KB; j++) r[g][j] = 0.0f;
#endif
    for (; i < n; i++)
        for (int j = 0; j < SC_KB; j++) {
            const float x = ld1(k[j], i, dt);
            for (int g = 0; g < GB; g++) r[g][j] += q[(size_t)g * n + i] * x;
        }
    for (int g = 0; g < GB; g++)
        for (int j = 0; j < SC_KB; j++) s[(size_t)g * ld + j] = r[g][j];
}

/* One block of up to SC_KB rows (nk of them real: the rest repeat row 0 and are not written)
 * against all n_q queries. */
static void score_rows_group(const float *q, int n_q, const void *const *rows, int nk, int n, attn_dtype dt,
                             float *s, int64_t ld) {
    float tmp[SC_GB * SC_KB];
    const int whole = nk == SC_KB;
    for (int g0 = 0; g0 < n_q; g0 += SC_GB) {
        const int gb = n_q - g0 < SC_GB ? n_q - g0 : SC_GB;
        const float *qg = q + (size_t)g0 * n;
        float *o = whole ? s + (size_t)g0 * ld : tmp;
        const int64_t lo = whole ? ld : SC_KB;
        switch (gb) {
        case 4: score_block(qg, 4, rows, n, dt, o, lo); break;
        case 3: score_block(qg, 3, rows, n, dt, o, lo); break;
        case 2: score_block(qg, 2, rows, n, dt, o, lo); break;
        default: score_block(qg, 1, rows, n, dt, o, lo); break;
        }
        if (!whole)
            for (int g = 0; g < gb; g++)
                for (int j = 0; j < nk; j++) s[(size_t)(g0 + g) * ld + j] = tmp[g * SC_KB + j];
    }
}

void attn_scores_group_ids(const attn_kv_view *kv, const float *q, int n_q, const int32_t *ids, int64_t n,
                           float *scores, int64_t ld) {
    const size_t kb = (size_t)kv->dk * elt_size(kv);
    for (int64_t j = 0; j < n && j < PF_ROWS; j++) prefetch_row(k_row(kv, ids[j]), kb);
    for (int64_t j0 = 0; j0 < n; j0 += SC_KB) {
        const int nk = n - j0 < SC_KB ? (int)(n - j0) : SC_KB;
        const void *rows[SC_KB];
        for (int j = 0; j < SC_KB; j++) {
            rows[j] = k_row(kv, ids[j0 + (j < nk ? j : 0)]);
            if (j0 + PF_ROWS + j < n) prefetch_row(k_row(kv, ids[j0 + PF_ROWS + j]), kb);
        }
        score_rows_group(q, n_q, rows, nk, kv->dk, kv->dtype, scores + j0, ld);
    }
}

void attn_scores_group_range(const attn_kv_view *kv, const float *q, int n_q, int64_t lo, int64_t hi,
                             float *scores, int64_t ld) {
    for (int64_t j0 = lo; j0 < hi; j0 += SC_KB) {
        const int nk = hi - j0 < SC_KB ? (int)(hi - j0) : SC_KB;
        const void *rows[SC_KB];
        for (int j = 0; j < SC_KB; j++) rows[j] = k_row(kv, j0 + (j < nk ? j : 0));
        score_rows_group(q, n_q, rows, nk, kv->dk, kv->dtype, scores + (j0 - lo), ld);
    }
}

void attn_scores_group_rows(const float *q, int n_q, int d, const float *x, int64_t n, int64_t ldx,
                            float *scores, int64_t ld) {
    for (int64_t j0 = 0; j0 < n; j0 += SC_KB) {
        const int nk = n - j0 < SC_KB ? (int)(n - j0) : SC_KB;
        const void *rows[SC_KB];
        for (int j = 0; j < SC_KB; j++) rows[j] = x + (size_t)(j0 + (j < nk ? j : 0)) * ldx;
        score_rows_group(q, n_q, rows, nk, d, ATTN_F32, scores + j0, ld);
    }
}

/* ---- int8 scores ------------------------------------------------------------------------ */

/* The portable form, and the tail rows of the vector form: exact int32 sums. */
static void i8_rows_plain(const int8_t *q8, const float *qscale, int n_q, int d, const int8_t *const *rows,
                          int64_t n, float *scores, int64_t ld) {
    for (int64_t j = 0; j < n; j++) {
        const int8_t *k = rows[j];
        for (int g = 0; g < n_q; g++) {
            const int8_t *qg = q8 + (size_t)g * d;
            int32_t acc = 0;
            #pragma omp simd reduction(+ : acc)
            for (int i = 0; i < d; i++) acc += (int32_t)qg[i] * k[i];
            scores[(size_t)g * ld + j] = qscale[g] * (float)acc;
        }
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* r[t] becomes column t of the 16 x 16 matrix of dwords whose row j was r[j]. */
static inline void transpose16_epi32(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    }
}

enum { I8_QB = 8 }; /* queries per pass over a block: 8 accumulators beside 16 columns */

/* Four bytes as one dword (memcpy: the bytes are not int32 objects). */
static inline int32_t ld4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* acc[g] += the sums of GB queries (q row g at qg + g * d, four channels a dword) over the 16
 * transposed columns. GB is a constant at every call, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void
i8_dots(const int8_t *qg, int d, int GB, const __m512i col[16], __m512i *acc) {
    __m512i a[I8_QB];
    for (int g = 0; g < GB; g++) a[g] = acc[g];
    for (int t = 0; t < 16; t++)
        for (int g = 0; g < GB; g++)
            a[g] = _mm512_dpbusd_epi32(a[g], col[t], _mm512_set1_epi32(ld4(qg + (size_t)g * d + 4 * t)));
    for (int g = 0; g < GB; g++) acc[g] = a[g];
}

/* Sixteen rows at once. VNNI multiplies unsigned by signed bytes: the rows go unsigned (k + 128,
 * an xor of the sign bit) and each query's 128 * sum(q8) comes off its sums. */
static void i8_rows_vnni(const int8_t *q8, const float *qscale, int n_q, int d, const int8_t *const *rows,
                         int64_t n, float *scores, int64_t ld) {
    int32_t qsum[ATTN_MAX_GROUP];
    for (int g = 0; g < n_q; g++) {
        int32_t a = 0;
        for (int i = 0; i < d; i++) a += q8[(size_t)g * d + i];
        qsum[g] = 128 * a;
    }
    const __m512i sign = _mm512_set1_epi8((char)0x80);
    int64_t j0 = 0;
    for (; j0 + 16 <= n; j0 += 16) {
        const int8_t *const *row = rows + j0;
        if (j0 + 32 <= n) /* the next block's rows, while this one computes */
            for (int j = 16; j < 32; j++) _mm_prefetch((const char *)row[j], _MM_HINT_T0);
        __m512i acc[ATTN_MAX_GROUP];
        for (int g = 0; g < n_q; g++) acc[g] = _mm512_setzero_si512();
        for (int c = 0; c < d; c += 64) {
            __m512i col[16];
            for (int j = 0; j < 16; j++) col[j] = _mm512_xor_si512(_mm512_loadu_si512(row[j] + c), sign);
            transpose16_epi32(col);
            for (int g0 = 0; g0 < n_q; g0 += I8_QB) {
                const int8_t *qg = q8 + (size_t)g0 * d + c;
                switch (n_q - g0 < I8_QB ? n_q - g0 : I8_QB) {
                case 8: i8_dots(qg, d, 8, col, acc + g0); break;
                case 7: i8_dots(qg, d, 7, col, acc + g0); break;
                case 6: i8_dots(qg, d, 6, col, acc + g0); break;
                case 5: i8_dots(qg, d, 5, col, acc + g0); break;
                case 4: i8_dots(qg, d, 4, col, acc + g0); break;
                case 3: i8_dots(qg, d, 3, col, acc + g0); break;
                case 2: i8_dots(qg, d, 2, col, acc + g0); break;
                default: i8_dots(qg, d, 1, col, acc + g0); break;
                }
            }
        }
        for (int g = 0; g < n_q; g++) {
            const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[g], _mm512_set1_epi32(qsum[g])));
            _mm512_storeu_ps(scores + (size_t)g * ld + j0, _mm512_mul_ps(v, _mm512_set1_ps(qscale[g])));
        }
    }
    if (j0 < n) i8_rows_plain(q8, qscale, n_q, d, rows + j0, n - j0, scores + j0, ld);
}
#endif

void attn_scores_group_i8(const int8_t *q8, const float *qscale, int n_q, int d, const int8_t *const *rows,
                          int64_t n, float *scores, int64_t ld) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    if (d % 64 == 0 && n_q <= ATTN_MAX_GROUP) {
        i8_rows_vnni(q8, qscale, n_q, d, rows, n, scores, ld);
        return;
    }
#endif
    i8_rows_plain(q8, qscale, n_q, d, rows, n, scores, ld);
}
