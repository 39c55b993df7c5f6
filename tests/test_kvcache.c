/* The paged KV store vs a flat array: random appends and reads across page borders (rows,
 * gathers, views), f32 and f16, rings for local layers, the static/offloaded split, the memory
 * and context limits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_sparse.h"
#include "check.h"
#include "kvcache.h"
#include "quant.h"


enum { NL = 3, NKV = 2, HD = 40, VD = 24, PS = 16, MAXT = 1200, W = 50, SLACK = 9 };

/* Row of the flat reference: (layer, pos, head) of K or V, rounded like the store. */
static float *ref_k, *ref_v;
static float *rk(int l, int p, int h) { return ref_k + (((size_t)l * MAXT + p) * NKV + h) * HD; }
static float *rv(int l, int p, int h) { return ref_v + (((size_t)l * MAXT + p) * NKV + h) * VD; }

static float round_as(kv_dtype dt, float x) {
    return dt == KV_F32 ? x : krn_f16_to_f32(krn_f32_to_f16(x));
}

static int row_eq(kv_dtype dt, const void *row, const float *ref, int n) {
    for (int i = 0; i < n; i++) {
        float x = dt == KV_F32 ? ((const float *)row)[i] : krn_f16_to_f32(((const uint16_t *)row)[i]);
        if (x != ref[i]) return 0;
    }
    return 1;
}

static void differential(kv_dtype dt) {
    const int win[NL] = {0, W, 0}; /* layer 1 is local */
    kv_params p = kv_params_default();
    p.n_layer = NL; p.n_head_kv = NKV; p.head_dim = HD; p.v_dim = VD; p.max_tokens = MAXT;
    p.page_size = PS; p.dtype = dt; p.layer_window = win; p.ring_slack = SLACK;
    p.n_sink = 20; p.n_window = 60;
    kv_store *s = NULL;
    CHECK(kv_create(&p, &s) == KV_OK && s, "create dtype %d", dt);
    if (!s) return;
    CHECK(kv_get_params(s)->layer_window != win, "layer_window copied");

    float *k = malloc(sizeof(float) * SLACK * NKV * HD), *v = malloc(sizeof(float) * SLACK * NKV * VD);
    float *gk = malloc(sizeof(float) * MAXT * HD), *gv = malloc(sizeof(float) * MAXT * VD);
    int32_t *ids = malloc(sizeof(int32_t) * MAXT);
    int n = 0, ok_rows = 1, ok_gather = 1, ok_ring = 1, ok_view = 1, ok_null = 1;
    size_t ring_bytes_after_fill = 0;
    while (n < MAXT) {
        int m = 1 + rng_int(SLACK); /* a chunk of at most ring_slack rows, as the engine appends */
        if (n + m > MAXT) m = MAXT - n;
        if (kv_reserve(s, n + m) != KV_OK) { CHECK(0, "reserve"); break; }
        for (int l = 0; l < NL; l++) {
            for (int t = 0; t < m; t++)
                for (int h = 0; h < NKV; h++) {
                    for (int i = 0; i < HD; i++) {
                        float x = rng_pm1();
                        k[((size_t)t * NKV + h) * HD + i] = x;
                        rk(l, n + t, h)[i] = round_as(dt, x);
                    }
                    for (int i = 0; i < VD; i++) {
                        float x = rng_pm1();
                        v[((size_t)t * NKV + h) * VD + i] = x;
                        rv(l, n + t, h)[i] = round_as(dt, x);
                    }
                }
            CHECK(kv_append(s, l, k, v, m) == KV_OK, "append");
        }
        n += m;
        for (int l = 0; l < NL; l++) CHECK(kv_n_tokens(s, l) == n, "n_tokens");
        /* random reads among the held positions (a ring holds the last W + SLACK - 1 at least) */
        for (int r = 0; r < 8; r++) {
            int l = rng_int(NL), h = rng_int(NKV);
            int lo = win[l] ? (n > W + SLACK - 1 ? n - (W + SLACK - 1) : 0) : 0;
            int pos = lo + rng_int(n - lo);
            const void *kr = kv_k_row(s, l, h, pos), *vr = kv_v_row(s, l, h, pos);
            ok_rows &= kr && vr && row_eq(dt, kr, rk(l, pos, h), HD) && row_eq(dt, vr, rv(l, pos, h), VD);
            /* a gather of random ids and a range straddling page borders */
            int cnt = 1 + rng_int(n - lo < 40 ? n - lo : 40);
            for (int j = 0; j < cnt; j++) ids[j] = lo + rng_int(n - lo);
            ok_gather &= kv_gather(s, l, h, ids, cnt, gk, gv) == KV_OK;
            for (int j = 0; j < cnt; j++)
                ok_gather &= !memcmp(gk + j * HD, rk(l, ids[j], h), sizeof(float) * HD) &&
                             !memcmp(gv + j * VD, rv(l, ids[j], h), sizeof(float) * VD);
            int a = lo + rng_int(n - lo), b = a + rng_int(n - a + 1);
            ok_gather &= kv_gather_range(s, l, h, a, b, gk, NULL) == KV_OK;
            for (int j = a; j < b; j++) ok_gather &= !memcmp(gk + (j - a) * HD, rk(l, j, h), sizeof(float) * HD);
            /* the kernel's view addresses the same rows: scores against unit vectors */
            attn_kv_view vw;
            kv_view(s, l, h, &vw);
            float e[HD], sc[1];
            int coord = rng_int(HD);
            memset(e, 0, sizeof e);
            e[coord] = 1.0f;
            ids[0] = pos;
            attn_scores_ids(&vw, e, ids, 1, sc);
            ok_view &= sc[0] == rk(l, pos, h)[coord];
        }
        /* positions a ring has overwritten, and past the end, are not held */
        if (n > (W + SLACK - 1) + 2 * PS)
            ok_ring &= kv_k_row(s, 1, 0, 0) == NULL && kv_gather_range(s, 1, 0, 0, 1, gk, NULL) != KV_OK;
        ok_null &= kv_k_row(s, 0, 0, n) == NULL && kv_v_row(s, 2, 1, n + 5) == NULL;
        if (n >= 4 * (W + SLACK) && !ring_bytes_after_fill) ring_bytes_after_fill = kv_bytes(s);
    }
    CHECK(ok_rows, "rows == flat reference (dtype %d)", dt);
    CHECK(ok_gather, "gathers == flat reference (dtype %d)", dt);
    CHECK(ok_view, "view rows == flat reference (dtype %d)", dt);
    CHECK(ok_ring, "ring forgets old positions");
    CHECK(ok_null, "positions past the end are not held");

    /* memory: the ring layer stopped growing; the global layers hold all pages */
    size_t elt = dt == KV_F32 ? 4 : 2, page = (size_t)PS * NKV * (HD + VD) * elt;
    size_t global_pages = 2 * ((MAXT + PS - 1) / PS), ring_pages = (W + SLACK - 1 + PS - 1) / PS;
    CHECK(kv_bytes(s) >= (global_pages + ring_pages) * page &&
          kv_bytes(s) < (global_pages + ring_pages) * page + 64 * 1024,
          "bytes %zu for %zu pages", kv_bytes(s), global_pages + ring_pages);
    (void)ring_bytes_after_fill;

    /* the context limit */
    CHECK(kv_append(s, 0, k, v, 1) == KV_ERR_FULL && kv_n_tokens(s, 0) == MAXT, "full");
    CHECK(strlen(kv_last_error(s)) > 0, "full has a message");

    /* reset keeps pages, positions restart */
    size_t before = kv_bytes(s);
    kv_reset(s);
    CHECK(kv_n_tokens(s, 1) == 0 && kv_bytes(s) == before && kv_k_row(s, 0, 0, 0) == NULL, "reset");
    CHECK(kv_append(s, 1, k, v, 1) == KV_OK && kv_k_row(s, 1, 0, 0) != NULL, "append after reset");

    free(k); free(v); free(gk); free(gv); free(ids);
    kv_free(s);
}

static void ranges(void) {
    const int win[2] = {0, 7};
    kv_params p = kv_params_default();
    p.n_layer = 2; p.n_head_kv = 1; p.head_dim = 4; p.v_dim = 4; p.max_tokens = 100;
    p.n_sink = 4; p.n_window = 8; p.layer_window = win;
    kv_store *s;
    CHECK(kv_create(&p, &s) == KV_OK, "create");
    kv_ranges r = kv_ranges_of(s, 0, 3);
    CHECK(r.sink_hi == 3 && r.off_lo == 3 && r.off_hi == 3 && r.win_lo == 3 && r.win_hi == 3, "n=3");
    r = kv_ranges_of(s, 0, 12);
    CHECK(r.sink_hi == 4 && r.off_lo == 4 && r.off_hi == 4 && r.win_lo == 4 && r.win_hi == 12, "n=12");
    r = kv_ranges_of(s, 0, 30);
    CHECK(r.sink_hi == 4 && r.off_lo == 4 && r.off_hi == 22 && r.win_lo == 22 && r.win_hi == 30, "n=30");
    r = kv_ranges_of(s, 1, 30);
    CHECK(r.sink_hi == 0 && r.off_lo == r.off_hi && r.win_lo == 23 && r.win_hi == 30, "local n=30");
    r = kv_ranges_of(s, 1, 5);
    CHECK(r.win_lo == 0 && r.win_hi == 5, "local n=5");
    CHECK(kv_params_default().n_sink == 128 && kv_params_default().n_window == 512, "defaults");
    kv_free(s);
}

static void limits(void) {
    kv_params p = kv_params_default();
    p.n_layer = 2; p.n_head_kv = 1; p.head_dim = 64; p.v_dim = 64; p.max_tokens = 4096;
    p.page_size = 32;
    kv_store *s;
    /* bad parameters are errors, not aborts */
    p.page_size = 48;
    CHECK(kv_create(&p, &s) == KV_ERR_PARAM && s == NULL, "page size not a power of two");
    p.page_size = 32;
    p.max_bytes = 100;
    CHECK(kv_create(&p, &s) == KV_ERR_LIMIT && s == NULL, "limit below the tables");
    /* room for the tables and 3 pages per layer (page = 32 * 128 * 4 = 16 KiB) */
    p.max_bytes = 0;
    CHECK(kv_create(&p, &s) == KV_OK, "create without limit");
    p.max_bytes = kv_bytes(s) + 6 * 16384;
    kv_free(s);
    CHECK(kv_create(&p, &s) == KV_OK, "create with limit");
    float *k = calloc(200 * 64, sizeof(float)), *v = calloc(200 * 64, sizeof(float));
    CHECK(kv_reserve(s, 96) == KV_OK, "reserve 96");
    size_t b = kv_bytes(s);
    CHECK(kv_reserve(s, 97) == KV_ERR_LIMIT && kv_bytes(s) == b, "reserve past the limit");
    CHECK(strstr(kv_last_error(s), "limit") != NULL, "limit message: %s", kv_last_error(s));
    CHECK(kv_append(s, 0, k, v, 96) == KV_OK, "append within");
    CHECK(kv_append(s, 0, k, v, 1) == KV_ERR_LIMIT && kv_n_tokens(s, 0) == 96, "append past the limit");
    CHECK(kv_append(s, 1, k, v, 200) == KV_ERR_LIMIT && kv_n_tokens(s, 1) == 0, "all or nothing");
    CHECK(kv_append(s, 5, k, v, 1) == KV_ERR_PARAM, "bad layer");
    CHECK(kv_strerror(KV_ERR_LIMIT)[0] != 0, "strerror");
    free(k); free(v);
    kv_free(s);
    kv_free(NULL);
}

/* Appends n random tokens to every layer of s, recording them in the reference at positions
 * [pos0, pos0 + n). */
static void fill(kv_store *s, kv_dtype dt, int pos0, int n) {
    float *k = malloc(sizeof(float) * NKV * HD), *v = malloc(sizeof(float) * NKV * VD);
    for (int t = 0; t < n; t++)
        for (int l = 0; l < NL; l++) {
            for (int h = 0; h < NKV; h++) {
                for (int i = 0; i < HD; i++) rk(l, pos0 + t, h)[i] = round_as(dt, k[h * HD + i] = rng_pm1());
                for (int i = 0; i < VD; i++) rv(l, pos0 + t, h)[i] = round_as(dt, v[h * VD + i] = rng_pm1());
            }
            kv_append(s, l, k, v, 1);
        }
    free(k);
    free(v);
}

/* Every row dst should hold in [0, n) equals the reference (a ring: its last tokens). */
static int rows_match(const kv_store *s, kv_dtype dt, int n) {
    for (int l = 0; l < NL; l++)
        for (int pos = 0; pos < n; pos++)
            for (int h = 0; h < NKV; h++) {
                const void *kr = kv_k_row(s, l, h, pos), *vr = kv_v_row(s, l, h, pos);
                if (!kr) {
                    if (!kv_layer_window(s, l) || pos >= n - W) return 0; /* must be held */
                    continue;
                }
                if (!row_eq(dt, kr, rk(l, pos, h), HD) || !row_eq(dt, vr, rv(l, pos, h), VD)) return 0;
            }
    return 1;
}

/* A context's store shared by sequences: whole pages borrowed, the rest copied; the borrower's
 * appends never reach the source; reset releases the borrow; a store adopting persisted pages
 * reads the same rows. */
static void sharing(kv_dtype dt) {
    const int win[NL] = {0, W, 0};
    kv_params p = kv_params_default();
    p.n_layer = NL; p.n_head_kv = NKV; p.head_dim = HD; p.v_dim = VD; p.max_tokens = MAXT;
    p.page_size = PS; p.dtype = dt; p.layer_window = win; p.ring_slack = SLACK;
    kv_store *src = NULL, *dst = NULL, *cp = NULL;
    CHECK(kv_create(&p, &src) == KV_OK && kv_create(&p, &dst) == KV_OK, "create");
    const int N = 7 * PS + 5; /* a partial last page */
    fill(dst, dt, 0, 3 * PS);   /* dst owned pages from an earlier request */
    kv_reset(dst);
    fill(src, dt, 0, N);
    const size_t src_bytes = kv_bytes(src), dst_before = kv_bytes(dst);
    CHECK(kv_share_prefix(dst, src, N) == KV_OK, "share %d tokens: %s", N, kv_last_error(dst));
    CHECK(rows_match(dst, dt, N), "the borrower reads the context's rows");
    CHECK(kv_bytes(dst) - dst_before < src_bytes / 2,
          "borrowing costs the borrower little (%zu new bytes vs %zu in the source)", kv_bytes(dst) - dst_before, src_bytes);
    /* the borrower's own tokens go after the context; the source's rows stay as they were */
    float *save_k = malloc(sizeof(float) * NL * MAXT * NKV * HD), *save_v = malloc(sizeof(float) * NL * MAXT * NKV * VD);
    memcpy(save_k, ref_k, sizeof(float) * NL * MAXT * NKV * HD);
    memcpy(save_v, ref_v, sizeof(float) * NL * MAXT * NKV * VD);
    fill(dst, dt, N, 40);
    CHECK(rows_match(dst, dt, N + 40), "the borrower appends after the context");
    memcpy(ref_k, save_k, sizeof(float) * NL * MAXT * NKV * HD);
    memcpy(ref_v, save_v, sizeof(float) * NL * MAXT * NKV * VD);
    CHECK(rows_match(src, dt, N), "the source is untouched by the borrower's appends");
    /* a second borrower at the same time */
    kv_create(&p, &cp);
    CHECK(kv_share_prefix(cp, src, N) == KV_OK && rows_match(cp, dt, N), "two borrowers of one source");
    kv_free(cp);
    cp = NULL;
    /* reset releases the borrow: the store works alone again */
    kv_reset(dst);
    fill(dst, dt, 0, 10 * PS + 3);
    CHECK(rows_match(dst, dt, 10 * PS + 3), "after reset the store holds its own tokens again");
    CHECK(rows_match(src, dt, 0) && kv_share_prefix(dst, src, N) == KV_ERR_PARAM, "share needs an empty store");
    /* adopting persisted pages (here: the source's own) */
    kv_create(&p, &cp);
    int ok = 1;
    for (int l = 0; l < NL; l++) {
        const void *const *pg;
        int64_t np;
        ok &= kv_layer_pages(src, l, &pg, &np) == KV_OK && kv_adopt(cp, l, (void *const *)pg, np, N) == KV_OK;
    }
    memcpy(ref_k, save_k, sizeof(float) * NL * MAXT * NKV * HD);
    memcpy(ref_v, save_v, sizeof(float) * NL * MAXT * NKV * VD);
    CHECK(ok && rows_match(cp, dt, N), "a store adopting the pages reads the same rows");
    CHECK(kv_bytes(cp) < src_bytes / 2, "adopted pages are not counted");
    kv_store *bad = NULL;
    kv_create(&p, &bad);
    const void *const *pg;
    int64_t np;
    kv_layer_pages(src, 0, &pg, &np);
    CHECK(kv_adopt(bad, 0, (void *const *)pg, np - 1, N) == KV_ERR_PARAM, "adopt refuses too few pages");
    kv_free(bad);
    kv_free(cp);
    kv_free(dst);
    kv_free(src);
    free(save_k);
    free(save_v);
}

int main(void) {
    rng_seed(0x2545f4914f6cdd1dull);
    ref_k = malloc(sizeof(float) * NL * MAXT * NKV * HD);
    ref_v = malloc(sizeof(float) * NL * MAXT * NKV * VD);
    differential(KV_F32);
    differential(KV_F16);
    ranges();
    limits();
    sharing(KV_F32);
    sharing(KV_F16);
    free(ref_k); free(ref_v);
    return check_summary("test_kvcache");
}
