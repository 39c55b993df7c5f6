/* Sparse/range attention for a GQA group: one online-softmax state (m, d, o) per query, each
 * K and V row loaded once per block of 4 queries; SIMD via a tiny vector layer (AVX-512,
 * AVX2+FMA+F16C, plain C); OpenMP only as split-K when the caller is serial. */
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
#endif

/* ---- row primitives ------------------------------------------------------------------ */

/* q . k for an f32 or f16 row of n elements: the same operations in the same order as one
 * query of dot4, so a query's score (and with it its whole attention result) does not depend on
 * how its group is split into calls (the engine splits a decode row's group across threads). */
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

/* s[g] = q[g * n] . k for the 4 queries g < 4 (rows n floats apart): the row is loaded and
 * converted once for all four. */
static void dot4(const float *q, const void *k, int n, attn_dtype dt, float *s) {
    const float *q0 = q, *q1 = q + n, *q2 = q + 2 * n, *q3 = q + 3 * n;
    int i = 0;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#if VL
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    for (; i + VL <= n; i += VL) {
        vf kv = dt == ATTN_F32 ? v_ld((const float *)k + i) : v_ldh((const uint16_t *)k + i);
        a0 = v_fma(v_ld(q0 + i), kv, a0);
        a1 = v_fma(v_ld(q1 + i), kv, a1);
        a2 = v_fma(v_ld(q2 + i), kv, a2);
        a3 = v_fma(v_ld(q3 + i), kv, a3);
    }
    s0 = v_sum(a0); s1 = v_sum(a1); s2 = v_sum(a2); s3 = v_sum(a3);
#endif
    for (; i < n; i++) {
        float x = dt == ATTN_F32 ? ((const float *)k)[i] : krn_f16_to_f32(((const uint16_t *)k)[i]);
        s0 += q0[i] * x; s1 += q1[i] * x; s2 += q2[i] * x; s3 += q3[i] * x;
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3;
}

/* out[g * n + i] += p[g] * v[i] for g < n_q: one load (and conversion) of v per chunk. */
static void axpy_group(float *out, const float *p, int n_q, const void *v, int n, attn_dtype dt) {
    int i = 0;
#if VL
    for (; i + VL <= n; i += VL) {
        vf x = dt == ATTN_F32 ? v_ld((const float *)v + i) : v_ldh((const uint16_t *)v + i);
        for (int g = 0; g < n_q; g++) {
            float *o = out + (size_t)g * n + i;
            v_st(o, v_fma(v_set1(p[g]), x, v_ld(o)));
        }
    }
#endif
    for (; i < n; i++) {
        float x = dt == ATTN_F32 ? ((const float *)v)[i] : krn_f16_to_f32(((const uint16_t *)v)[i]);
        for (int g = 0; g < n_q; g++) out[(size_t)g * n + i] += p[g] * x;
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
    int n_q;            /* <= ATTN_MAX_GROUP */
    float scale;
    float *out;         /* (n_q, dv), unnormalised during the pass */
    float m[ATTN_MAX_GROUP], d[ATTN_MAX_GROUP];
} soft_state;

static void soft_init(soft_state *st, const attn_kv_view *kv, const float *q, int n_q, float scale,
                      float *out) {
    st->kv = kv; st->q = q; st->n_q = n_q; st->scale = scale; st->out = out;
    for (int g = 0; g < n_q; g++) { st->m[g] = -INFINITY; st->d[g] = 0.0f; }
    memset(out, 0, sizeof(float) * n_q * kv->dv);
}

/* One block of nb <= BLK keys given by positions pos[j]. */
static void soft_block(soft_state *st, const int64_t *pos, int nb) {
    const attn_kv_view *kv = st->kv;
    const int n_q = st->n_q, dk = kv->dk, dv = kv->dv;
    float s[ATTN_MAX_GROUP][BLK], p[ATTN_MAX_GROUP], tmp[4];
    /* scattered ids only: a range streams, and the hardware prefetcher follows it */
    const int scattered = nb > 1 && pos[nb - 1] - pos[0] != nb - 1;
    const size_t kb = (size_t)dk * elt_size(kv), vb = (size_t)dv * elt_size(kv);
    for (int j = 0; scattered && j < nb && j < PF_ROWS; j++) prefetch_row(k_row(kv, pos[j]), kb);
    for (int j = 0; j < nb; j++) {
        if (scattered) {
            if (j + PF_ROWS < nb) prefetch_row(k_row(kv, pos[j + PF_ROWS]), kb);
            prefetch_row(v_row(kv, pos[j]), vb);   /* read after the block's softmax */
        }
        const void *k = k_row(kv, pos[j]);
        int g = 0;
        for (; g + 4 <= n_q; g += 4) {
            dot4(st->q + (size_t)g * dk, k, dk, kv->dtype, tmp);
            for (int u = 0; u < 4; u++) s[g + u][j] = st->scale * tmp[u];
        }
        for (; g < n_q; g++) s[g][j] = st->scale * dot1(st->q + (size_t)g * dk, k, dk, kv->dtype);
    }
    for (int g = 0; g < n_q; g++) {
        float bm = -INFINITY;
        for (int j = 0; j < nb; j++) bm = s[g][j] > bm ? s[g][j] : bm;
        if (bm > st->m[g]) {
            float c = expf(st->m[g] - bm); /* 0 on the first block (m = -inf) */
            st->d[g] *= c;
            float *o = st->out + (size_t)g * dv;
            for (int i = 0; i < dv; i++) o[i] *= c;
            st->m[g] = bm;
        }
        float dsum = 0.0f;
        for (int j = 0; j < nb; j++) {
            s[g][j] = expf(s[g][j] - st->m[g]);
            dsum += s[g][j];
        }
        st->d[g] += dsum;
    }
    for (int j = 0; j < nb; j++) {
        for (int g = 0; g < n_q; g++) p[g] = s[g][j];
        axpy_group(st->out, p, n_q, v_row(kv, pos[j]), dv, kv->dtype);
    }
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

void attn_causal_rows(const attn_kv_view *kv, const float *const *q, int G, int R, const int64_t *pos,
                      float scale, float *const *out, float *const *lse) {
    if (R < 1 || G < 1 || R * G > ATTN_MAX_GROUP) return;
    const int dk = kv->dk, dv = kv->dv, nq = R * G;
    float qs[ATTN_MAX_GROUP * 256], os[ATTN_MAX_GROUP * 256];
    if (dk > 256 || dv > 256) {   /* no room to gather: row by row */
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
