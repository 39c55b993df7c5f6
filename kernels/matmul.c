/* Matrix products for many tokens (prefill, batched decode): Y = X·Wᵀ with the weight rows
 * decoded to f32 once per call, a tile at a time, and multiplied by krn_matmul_f32 (quant.c),
 * which sums every output in the same order as krn_matvec. This file decides the work split:
 * tiles, token ranges, threads and the scratch they decode into. */
#include "quant.h"
#include "scratch.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Tiles hold up to 128 decoded rows (320 KB at 640 columns: L2); token ranges split at
 * multiples of 12 keep krn_matmul_f32's token blocks (4 or 6) whole. */
#define TILE_ROWS 128
#define TOK_STEP 12

void krn_matmul(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols,
                const float *X, int64_t n_tok, float *Y) {
    if (n_tok <= 0 || n_rows <= 0) return;
    if (n_tok > 1 && krn_matmul_i8(type, W, n_rows, n_cols, X, n_tok, Y)) return;
    const int64_t K = n_cols;
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    /* tiles as tall as TILE_ROWS, but at least 4 per thread when rows allow, so that a few
     * tokens (batched decode) still spread evenly */
    int64_t mr = (n_rows + 4 * nth - 1) / (4 * nth);
    mr = min64(TILE_ROWS, (mr + 7) & ~(int64_t)7);
    size_t ldw = ((size_t)K + 15) & ~(size_t)15;   /* 64-byte aligned rows */
    float *scr = n_tok > 1 && krn_type_supported(type)
                     ? krn_scratch(KRN_SCR_TILES, sizeof(float) * (size_t)nth * mr * ldw) : NULL;
    if (!scr) {   /* one token (decode), or out of memory: the same sums token by token */
        for (int64_t t = 0; t < n_tok; t++) krn_matvec(type, W, n_rows, K, X + t * K, Y + t * n_rows);
        return;
    }
    const uint8_t *w = W;
    size_t rb = krn_row_bytes(type, K);

    /* Work items are (row tile, token range). Tokens are split only when there are too few
     * tiles to keep every thread busy; items run in order within a thread, so a tile is
     * decoded once per thread that needs it. */
    int64_t n_rt = (n_rows + mr - 1) / mr, n_ts = (n_tok + TOK_STEP - 1) / TOK_STEP, n_tg = 1;
    while (n_rt * n_tg < 4 * nth && n_tg < n_ts) n_tg *= 2;
    if (n_tg > n_ts) n_tg = n_ts;
    int64_t n_items = n_rt * n_tg;

    #pragma omp parallel
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *tile = scr + (size_t)tid * mr * ldw;
        int64_t cur_rt = -1;
        #pragma omp for schedule(static)
        for (int64_t it = 0; it < n_items; it++) {
            int64_t rt = it / n_tg, tg = it % n_tg, r0 = rt * mr;
            int64_t nr = min64(mr, n_rows - r0);
            if (rt != cur_rt) {
                for (int64_t i = 0; i < nr; i++)
                    krn_dequantize_row(type, w + (size_t)(r0 + i) * rb, tile + i * ldw, K);
                cur_rt = rt;
            }
            int64_t t0 = tg * n_ts / n_tg * TOK_STEP, t1 = min64(n_tok, (tg + 1) * n_ts / n_tg * TOK_STEP);
            krn_matmul_f32(tile, (int64_t)ldw, nr, X + t0 * K, K, t1 - t0, K, Y + t0 * n_rows + r0, n_rows);
        }
    }
}
