/* Attention of one query, or of a GQA group's queries sharing a KV head, over a paged K/V store:
 * a contiguous range or an explicit list of positions, with output and log-sum-exp per query.
 * defines: attn_kv_view, attn_range, attn_ids, attn_merge, attn_scores_range, attn_scores_ids,
 *          attn_scores_group_ids, attn_scores_group_range, attn_scores_group_rows,
 *          attn_scores_group_i8 */
#ifndef KVSEEK_ATTN_SPARSE_H
#define KVSEEK_ATTN_SPARSE_H

#include <stddef.h>
#include <stdint.h>

typedef enum { ATTN_F32 = 0, ATTN_F16 = 1 } attn_dtype;

/* Where the rows of one (layer, KV head) live. A kernel is a leaf: the store (kvcache/) fills
 * this plain description (kv_view) and the kernel only follows pointers.
 * Token at position p: page pg = (p >> page_shift), modulo ring_pages when ring_pages > 0 (a
 * ring that keeps the last ring_pages << page_shift tokens), row r = p & (page_size - 1);
 * its K row starts at (char *)pages[pg] + k_off + r * k_stride * elt, elt = 4 (f32) or 2 (f16),
 * and likewise V with v_off and v_stride. */
typedef struct {
    const void *const *pages; /* page base pointers; only pages holding requested rows are read */
    int64_t ring_pages;       /* 0: positions map to pages directly; > 0: ring of that many pages */
    int page_shift;           /* log2 of tokens per page */
    size_t k_off, v_off;      /* bytes from a page base to row 0 of this head's K, V */
    int64_t k_stride, v_stride; /* elements between consecutive rows of a page */
    int dk, dv;               /* K and V row lengths */
    attn_dtype dtype;         /* element type of both K and V */
} attn_kv_view;

/* Queries of one group above this many run in chunks (K rows then stream once per chunk). */
enum { ATTN_MAX_GROUP = 16 };
/* Queries (rows x group) per attn_causal_rows call: prefill rows share each block of keys. */
enum { ATTN_MAX_ROWS = 64 };

/* Attention of the n_q queries q[g * dk] (g < n_q, all against the same KV head) over the
 * positions [lo, hi) of kv: out[g * dv] = sum_j softmax_j(scale * q_g.k_j) v_j and
 * lse[g] = log sum_j exp(scale * q_g.k_j). An empty range gives out = 0, lse = -inf (the neutral
 * element of attn_merge).
 * Threads: called outside an OpenMP parallel region, a long range (>= 2 * 2048 keys) is split
 * across the OpenMP threads (split-K) and merged in a fixed order, so a decode step with a single
 * KV head still uses every core; called inside a parallel region (the caller already spreads
 * rows or heads over threads) it runs serially. Allocates nothing. Each query's result is its
 * own: the same bits whether it comes with its group or alone (a serial call). */
void attn_range(const attn_kv_view *kv, const float *q, int n_q, int64_t lo, int64_t hi,
                float scale, float *out, float *lse);

/* The same over the explicit positions ids[0..n) (any order, no duplicates expected: a
 * duplicate counts twice). Ascending ids read pages in order; selectors return them sorted.
 * Same threading rule as attn_range. */
void attn_ids(const attn_kv_view *kv, const float *q, int n_q, const int32_t *ids, int64_t n,
              float scale, float *out, float *lse);

/* Causal attention of R rows of one sequence on one KV head, each row r's G queries q[r]
 * (G * dk floats) over positions [0, pos[r]] (G <= ATTN_MAX_GROUP, R * G <= ATTN_MAX_ROWS): the same bits as
 * attn_range(kv, q[r], G, 0, pos[r] + 1, ...) called serially for each row, but the keys every
 * row attends are loaded once for all of them (prefill of long contexts is bound by reading
 * them). out[r] (G * dv) and lse[r] (G). Serial; allocates nothing. */
void attn_causal_rows(const attn_kv_view *kv, const float *const *q, int G, int R, const int64_t *pos,
                      float scale, float *const *out, float *const *lse);
/* The most rows R attn_causal_rows takes at once for groups of G queries with K and V rows of
 * dk and dv floats (its gathered queries and outputs live on the stack); 1 when none share. */
int attn_causal_max_rows(int G, int dk, int dv);

/* (o_a, lse_a) += (o_b, lse_b) for n_q queries: exact merge of attention over disjoint key
 * sets (krn_attn_merge per query). */
void attn_merge(float *o_a, float *lse_a, const float *o_b, const float *lse_b, int n_q, int dv);

/* Raw inner products, for selectors ranking keys (no scale, no softmax):
 * scores[j] = q . K[lo + j] for j < hi - lo, or q . K[ids[j]] for j < n. Serial, SIMD, f16 rows
 * converted on the fly. */
void attn_scores_range(const attn_kv_view *kv, const float *q, int64_t lo, int64_t hi,
                       float *scores);
void attn_scores_ids(const attn_kv_view *kv, const float *q, const int32_t *ids, int64_t n,
                     float *scores);

/* The same for the n_q queries q[g * dk] of a GQA group (any n_q >= 1): scores[g * ld + j] =
 * q_g . K[ids[j]] (j < n), q_g . K[lo + j] (j < hi - lo), or for plain f32 rows x[j * ldx] of
 * d floats (centroids) q_g . x_j with q rows d floats apart. Each row is read once for the
 * whole group and several rows share one reduction, so the products differ from
 * attn_scores_ids' in rounding order only (a few ulp of sum |q_i k_i|). Serial; allocates
 * nothing; ld >= the row count. */
void attn_scores_group_ids(const attn_kv_view *kv, const float *q, int n_q, const int32_t *ids, int64_t n,
                           float *scores, int64_t ld);
void attn_scores_group_range(const attn_kv_view *kv, const float *q, int n_q, int64_t lo, int64_t hi,
                             float *scores, int64_t ld);
void attn_scores_group_rows(const float *q, int n_q, int d, const float *x, int64_t n, int64_t ldx,
                            float *scores, int64_t ld);

/* The same from int8 rows and int8 queries, for a selector's coarse first pass: scores[g * ld +
 * j] = qscale[g] * sum_i q8[g * d + i] * rows[j][i] (rows: n pointers to d int8 each), the
 * products summed exactly in int32, so the result does not depend on the order or the
 * instruction set. With AVX512-VNNI and d a multiple of 64, sixteen rows are transposed in
 * registers and every query's sums come from one instruction per four channels (no horizontal
 * sum). Any n_q >= 1; serial; allocates nothing; ld >= n. */
void attn_scores_group_i8(const int8_t *q8, const float *qscale, int n_q, int d, const int8_t *const *rows,
                          int64_t n, float *scores, int64_t ld);

#endif
