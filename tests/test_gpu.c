/* The CUDA backend (gpu.h) against the CPU kernels it mirrors, on random inputs across odd sizes.
 * Without a device (or in the CPU-only build) it prints "skipped: no CUDA device (...)" and
 * passes. Each check prints one line with the worst error as a fraction of its tolerance:
 *  - rmsnorm, rope (positions up to 2^20, neox and adjacent pairs, frequency factors), glu
 *    (GELU-tanh, SiLU, in place), add, add_bias, softcap against ops.h; |err| <= 2e-5 |ref| + 1e-5;
 *  - matmul against krn_matmul on the quantized weights (F32, F16, Q8_0, Q4_K; rows 1, 3, 129;
 *    T 1, 7, 130): |err| <= 4e-3 sum_i |w_i x_i| + 1e-5 (both inputs rounded to f16); embedding
 *    rows against krn_dequantize_row (1e-3 relative); a weight larger than one upload slab;
 *  - decode attention against attn_range / attn_ids over paged views built here: f32 and f16
 *    pages in device memory and in gpu_host_alloc memory, rings, keys 1, 3, 129, 257, 4099,
 *    32768, head dims 64/128/256 (and 32, 80 with dk != dv), groups 1, 4, 8, 16, 20, three jobs
 *    per launch (one empty): |err| <= 1e-4 on outputs, 1e-4 (1 + |lse|) on lse;
 *  - attn_merge, gpu_scores (double loop; 1e-5 relative to sum |q_i c_i|) and prefill against a
 *    double loop (T 1, 7, 130; GQA 1, 2, 4; causal from 0, from position 1000, and a sliding
 *    window of 100 at position 10^6 over a ring): 1e-4 absolute.
 * NaN or Inf where the reference is finite always fails. */
#include "attn_sparse.h"
#include "check.h"
#include "gpu.h"
#include "ops.h"
#include "quant.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, int64_t n, double lo, double hi) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)rng_unif(lo, hi);
}
static float round_f16(float x) { return krn_f16_to_f32(krn_f32_to_f16(x)); }

/* ---- device helpers: a failed call ends the test with the backend's reason ---- */

static void must(int rc, const char *what) {
    if (rc) {
        fprintf(stderr, "FATAL %s: %s\n", what, gpu_last_error());
        exit(1);
    }
}

static void *dev_alloc(size_t bytes) {
    void *p = gpu_alloc(bytes);
    if (!p) must(-1, "gpu_alloc");
    return p;
}

static void *dev_copy(const void *host, size_t bytes) {
    void *p = dev_alloc(bytes);
    must(gpu_h2d(p, host, bytes), "gpu_h2d");
    return p;
}

static void to_host(void *host, const void *dev, size_t bytes) {
    must(gpu_d2h(host, dev, bytes), "gpu_d2h");
    must(gpu_sync(), "gpu_sync");
}

/* ---- comparison: one line per check ---- */

typedef struct { int64_t n, bad; double worst; } cmp;

static void cmp_add(cmp *c, double got, double ref, double tol) {
    c->n++;
    if (!isfinite(ref)) {   /* -inf lse of an empty set: must match exactly */
        if (!(got == ref)) c->bad++;
        return;
    }
    double e = fabs(got - ref);
    if (!isfinite(got) || !(e <= tol)) c->bad++;
    if (isfinite(got) && e / tol > c->worst) c->worst = e / tol;
    if (!isfinite(got)) c->worst = INFINITY;
}

static void cmp_report(const cmp *c, const char *fmt, ...) {
    char name[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    printf("%s %-62s %8lld values, worst err/tol %.3g\n", c->bad ? "FAIL" : "ok  ", name,
           (long long)c->n, c->worst);
    CHECK(c->bad == 0, "%s: %lld of %lld values off", name, (long long)c->bad, (long long)c->n);
}

/* ==== element-wise and row-wise ================================================================ */

static void test_rmsnorm(void) {
    static const int ns[] = {1, 7, 640, 2304, 4099};
    const int rows = 3;
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int n = ns[k];
        for (int with_w = 0; with_w < 2; with_w++) {
            float *x = malloc(sizeof(float) * rows * n), *w = malloc(sizeof(float) * n);
            float *ref = malloc(sizeof(float) * rows * n), *got = malloc(sizeof(float) * rows * n);
            fill(x, (int64_t)rows * n, -2, 2);
            fill(w, n, -1.5, 1.5);
            for (int r = 0; r < rows; r++)
                krn_rmsnorm(ref + r * n, x + r * n, with_w ? w : NULL, n, 1e-6f);
            float *dx = dev_copy(x, sizeof(float) * rows * n), *dw = dev_copy(w, sizeof(float) * n);
            float *dy = dev_alloc(sizeof(float) * rows * n);
            must(gpu_rmsnorm(dy, dx, with_w ? dw : NULL, rows, n, 1e-6f), "gpu_rmsnorm");
            to_host(got, dy, sizeof(float) * rows * n);
            cmp c = {0};
            for (int i = 0; i < rows * n; i++) cmp_add(&c, got[i], ref[i], 2e-5 * fabs(ref[i]) + 1e-5);
            cmp_report(&c, "rmsnorm n=%d %s", n, with_w ? "weight" : "no weight");
            /* in place */
            must(gpu_rmsnorm(dx, dx, with_w ? dw : NULL, rows, n, 1e-6f), "gpu_rmsnorm");
            to_host(got, dx, sizeof(float) * rows * n);
            cmp c2 = {0};
            for (int i = 0; i < rows * n; i++) cmp_add(&c2, got[i], ref[i], 2e-5 * fabs(ref[i]) + 1e-5);
            cmp_report(&c2, "rmsnorm in place n=%d %s", n, with_w ? "weight" : "no weight");
            gpu_free(dx); gpu_free(dw); gpu_free(dy);
            free(x); free(w); free(ref); free(got);
        }
    }
}

static void test_rope(void) {
    static const int dims[] = {64, 128, 256, 80};
    const int rows = 5, n_heads = 3;
    int32_t pos[5] = {0, 1, 4097, 777777, (1 << 20) - 1};
    int32_t *dpos = dev_copy(pos, sizeof pos);
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        const int hd = dims[k];
        for (int variant = 0; variant < 4; variant++) {
            const int n_rot = variant & 1 ? hd / 2 : hd, neox = variant >> 1;
            const int with_f = (k + variant) & 1;
            const float base = variant & 1 ? 1e6f : 10000.0f, fs = variant == 2 ? 0.25f : 1.0f;
            const int64_t n = (int64_t)rows * n_heads * hd;
            float *x = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n),
                  *got = malloc(sizeof(float) * n), *fac = malloc(sizeof(float) * hd);
            float cs[128], sn[128];
            fill(x, n, -1, 1);
            fill(fac, hd, 1, 8);
            memcpy(ref, x, sizeof(float) * n);
            for (int r = 0; r < rows; r++) {
                krn_rope_angles(cs, sn, pos[r], n_rot, base, fs, with_f ? fac : NULL);
                for (int h = 0; h < n_heads; h++) krn_rope(ref + ((int64_t)r * n_heads + h) * hd, n_rot, cs, sn, neox);
            }
            float *dx = dev_copy(x, sizeof(float) * n), *df = dev_copy(fac, sizeof(float) * hd);
            must(gpu_rope(dx, rows, n_heads, hd, n_rot, dpos, base, fs, with_f ? df : NULL, neox), "gpu_rope");
            to_host(got, dx, sizeof(float) * n);
            cmp c = {0};
            for (int64_t i = 0; i < n; i++) cmp_add(&c, got[i], ref[i], 2e-5 * fabs(ref[i]) + 1e-5);
            cmp_report(&c, "rope head_dim=%d n_rot=%d %s%s base=%g", hd, n_rot, neox ? "neox" : "pairs",
                       with_f ? " factors" : "", base);
            gpu_free(dx); gpu_free(df);
            free(x); free(ref); free(got); free(fac);
        }
    }
    gpu_free(dpos);
}

static void test_elementwise(void) {
    static const int64_t ns[] = {1, 1000, 100003};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int64_t n = ns[k];
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
        fill(a, n, -6, 6);
        fill(b, n, -2, 2);
        float *da = dev_copy(a, sizeof(float) * n), *db = dev_copy(b, sizeof(float) * n);
        float *dy = dev_alloc(sizeof(float) * n);
        for (int gelu = 0; gelu < 2; gelu++) {
            krn_glu(ref, a, b, (int)n, gelu);
            must(gpu_glu(dy, da, db, n, gelu), "gpu_glu");
            to_host(got, dy, sizeof(float) * n);
            cmp c = {0};
            for (int64_t i = 0; i < n; i++) cmp_add(&c, got[i], ref[i], 2e-5 * fabs(ref[i]) + 1e-5);
            cmp_report(&c, "glu %s n=%lld", gelu ? "gelu" : "silu", (long long)n);
        }
        /* in place: out == gate */
        must(gpu_h2d(dy, a, sizeof(float) * n), "gpu_h2d");
        must(gpu_glu(dy, dy, db, n, 1), "gpu_glu");
        krn_glu(ref, a, b, (int)n, 1);
        to_host(got, dy, sizeof(float) * n);
        cmp c = {0};
        for (int64_t i = 0; i < n; i++) cmp_add(&c, got[i], ref[i], 2e-5 * fabs(ref[i]) + 1e-5);
        cmp_report(&c, "glu gelu in place n=%lld", (long long)n);

        /* add, softcap */
        must(gpu_h2d(dy, a, sizeof(float) * n), "gpu_h2d");
        must(gpu_add(dy, db, n), "gpu_add");
        to_host(got, dy, sizeof(float) * n);
        cmp ca = {0};
        for (int64_t i = 0; i < n; i++) cmp_add(&ca, got[i], a[i] + b[i], 1e-6 * fabs(a[i] + b[i]) + 1e-7);
        cmp_report(&ca, "add n=%lld", (long long)n);
        must(gpu_h2d(dy, a, sizeof(float) * n), "gpu_h2d");
        must(gpu_softcap(dy, n, 5.0f), "gpu_softcap");
        to_host(got, dy, sizeof(float) * n);
        cmp cs = {0};
        for (int64_t i = 0; i < n; i++) {
            double r = 5.0 * tanh(a[i] / 5.0);
            cmp_add(&cs, got[i], r, 2e-5 * fabs(r) + 1e-5);
        }
        cmp_report(&cs, "softcap n=%lld", (long long)n);
        gpu_free(da); gpu_free(db); gpu_free(dy);
        free(a); free(b); free(ref); free(got);
    }
    /* add_bias over rows */
    const int rows = 7, n = 1031;
    float *y = malloc(sizeof(float) * rows * n), *bias = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * rows * n);
    fill(y, rows * n, -1, 1);
    fill(bias, n, -1, 1);
    float *dy = dev_copy(y, sizeof(float) * rows * n), *dbias = dev_copy(bias, sizeof(float) * n);
    must(gpu_add_bias(dy, dbias, rows, n), "gpu_add_bias");
    to_host(got, dy, sizeof(float) * rows * n);
    cmp c = {0};
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) {
            float ref = y[r * n + i] + bias[i];
            cmp_add(&c, got[r * n + i], ref, 1e-6 * fabs(ref) + 1e-7);
        }
    cmp_report(&c, "add_bias %d x %d", rows, n);
    gpu_free(dy); gpu_free(dbias);
    free(y); free(bias); free(got);
}

/* ==== weights ================================================================================== */

static void put_half(uint8_t *p, double v) {
    uint16_t h = krn_f32_to_f16((float)v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* Random valid blocks for n_elem elements of type: random codes, scales of random sign. */
static void *make_weights(uint32_t type, int64_t n_elem) {
    const int bs = krn_type_block_size(type);
    const size_t bb = krn_type_block_bytes(type);
    uint8_t *m = malloc(krn_row_bytes(type, n_elem));
    for (int64_t i = 0; i < n_elem / bs; i++) {
        uint8_t *b = m + (size_t)i * bb;
        for (size_t k = 0; k < bb; k++) b[k] = (uint8_t)rng_u64();
        const double sc = rng_unif(0.01, 0.1) * (rng_u64() & 1 ? 1 : -1);
        switch (type) {
        case KRN_TYPE_F32: { float f = (float)rng_unif(-1, 1); memcpy(b, &f, 4); break; }
        case KRN_TYPE_F16: put_half(b, rng_unif(-1, 1)); break;
        case KRN_TYPE_Q8_0: put_half(b, sc); break;
        case KRN_TYPE_Q4_K: put_half(b, sc); put_half(b + 2, rng_unif(0.0, 0.01)); break;
        default: break;
        }
    }
    return m;
}

static void test_matmul(void) {
    static const uint32_t types[] = {KRN_TYPE_F32, KRN_TYPE_F16, KRN_TYPE_Q8_0, KRN_TYPE_Q4_K};
    static const int cols_list[] = {256, 768, 4096};
    static const int rows_list[] = {1, 3, 129};
    static const int T_list[] = {1, 7, 130};
    for (size_t ti = 0; ti < 4; ti++) {
        const uint32_t type = types[ti];
        for (size_t ci = 0; ci < 3; ci++) {
            const int nc = cols_list[ci];
            for (size_t ri = 0; ri < 3; ri++) {
                const int nr = rows_list[ri];
                void *W = make_weights(type, (int64_t)nr * nc);
                float *Wd = malloc(sizeof(float) * nr * nc);
                const size_t rb = krn_row_bytes(type, nc);
                for (int r = 0; r < nr; r++) krn_dequantize_row(type, (char *)W + r * rb, Wd + (int64_t)r * nc, nc);
                char err[256];
                gpu_weight *gw = gpu_weight_upload(type, W, nr, nc, err, sizeof err);
                if (!gw) must(-1, err);
                CHECK(gpu_weight_bytes(gw) == (size_t)nr * nc * 2, "weight bytes %zu", gpu_weight_bytes(gw));
                for (size_t k = 0; k < 3; k++) {
                    const int T = T_list[k];
                    float *X = malloc(sizeof(float) * T * nc), *Y = malloc(sizeof(float) * T * nr),
                          *G = malloc(sizeof(float) * T * nr);
                    fill(X, (int64_t)T * nc, -2, 2);
                    krn_matmul(type, W, nr, nc, X, T, Y);
                    float *dX = dev_copy(X, sizeof(float) * T * nc), *dY = dev_alloc(sizeof(float) * T * nr);
                    must(gpu_matmul(gw, dX, T, dY), "gpu_matmul");
                    to_host(G, dY, sizeof(float) * T * nr);
                    cmp c = {0};
                    for (int t = 0; t < T; t++)
                        for (int r = 0; r < nr; r++) {
                            double mag = 0;
                            for (int i = 0; i < nc; i++) mag += fabs((double)Wd[(int64_t)r * nc + i] * X[(int64_t)t * nc + i]);
                            cmp_add(&c, G[(int64_t)t * nr + r], Y[(int64_t)t * nr + r], 4e-3 * mag + 1e-5);
                        }
                    cmp_report(&c, "matmul %s %d x %d, T=%d", krn_type_name(type), nr, nc, T);
                    gpu_free(dX); gpu_free(dY);
                    free(X); free(Y); free(G);
                }
                /* embedding lookup */
                enum { TE = 7 };
                int32_t ids[TE];
                for (int t = 0; t < TE; t++) ids[t] = t == 0 ? 0 : t == 1 ? nr - 1 : (int32_t)(rng_u64() % nr);
                int32_t *dids = dev_copy(ids, sizeof ids);
                float *dx = dev_alloc(sizeof(float) * TE * nc), *x = malloc(sizeof(float) * TE * nc);
                must(gpu_embed(gw, dids, TE, 3.5f, dx), "gpu_embed");
                to_host(x, dx, sizeof(float) * TE * nc);
                cmp c = {0};
                for (int t = 0; t < TE; t++)
                    for (int i = 0; i < nc; i++) {
                        double ref = Wd[(int64_t)ids[t] * nc + i] * 3.5;
                        cmp_add(&c, x[(int64_t)t * nc + i], ref, 1e-3 * fabs(ref) + 1e-6);
                    }
                cmp_report(&c, "embed %s %d x %d", krn_type_name(type), nr, nc);
                gpu_free(dids); gpu_free(dx); free(x);
                gpu_weight_free(gw);
                free(W); free(Wd);
            }
        }
    }

    /* more rows than one 64 MiB upload slab (32768 rows of 1024 f16): rows around the seam */
    const int64_t nr = 40000, nc = 1024;
    void *W = make_weights(KRN_TYPE_Q8_0, nr * nc);
    char err[256];
    gpu_weight *gw = gpu_weight_upload(KRN_TYPE_Q8_0, W, nr, nc, err, sizeof err);
    if (!gw) must(-1, err);
    CHECK(gpu_weight_bytes(gw) == (size_t)(nr * nc * 2), "weight bytes %zu", gpu_weight_bytes(gw));
    int32_t ids[6] = {0, 1, 32767, 32768, 32769, 39999};
    int32_t *dids = dev_copy(ids, sizeof ids);
    float *dx = dev_alloc(sizeof(float) * 6 * nc), *x = malloc(sizeof(float) * 6 * nc), *row = malloc(sizeof(float) * nc);
    must(gpu_embed(gw, dids, 6, 1.0f, dx), "gpu_embed");
    to_host(x, dx, sizeof(float) * 6 * nc);
    cmp c = {0};
    const size_t rb = krn_row_bytes(KRN_TYPE_Q8_0, nc);
    for (int t = 0; t < 6; t++) {
        krn_dequantize_row(KRN_TYPE_Q8_0, (char *)W + ids[t] * rb, row, nc);
        for (int i = 0; i < nc; i++) cmp_add(&c, x[t * nc + i], row[i], 1e-3 * fabs(row[i]) + 1e-6);
    }
    cmp_report(&c, "upload by slabs: Q8_0 %lld x %lld, rows at the seam", (long long)nr, (long long)nc);
    gpu_free(dids); gpu_free(dx); free(x); free(row);
    gpu_weight_free(gw);

    /* failures come back with a reason */
    gw = gpu_weight_upload(99, W, 1, 32, err, sizeof err);
    free(W);
    CHECK(gw == NULL && err[0], "unsupported type accepted");
    printf("ok   unsupported weight type refused: %s\n", err);
}

/* ==== attention ================================================================================ */

/* A paged K/V store built by hand (the layout of attn_sparse.h): pages of 1 << shift tokens, K
 * rows k_stride = dk + 3 elements apart after k_off bytes, V rows after them; a ring keeps the
 * last ring << shift positions. Pages and page table live either in device memory (host images
 * kept for the CPU reference) or in gpu_host_alloc memory (the same pointers on both sides). */
typedef struct {
    int dk, dv, mapped;
    attn_dtype dt;
    int64_t first, n;        /* positions [first, n) are held */
    float *K, *V;            /* (n - first, dk), (n - first, dv): the stored values */
    int n_pages;
    void **hpages, **dpages; /* host images; device-visible pages */
    void *dtable;            /* device-visible page table */
    attn_kv_view hv, gv;     /* views for the CPU and for the GPU */
} store;

static void store_build(store *s, int64_t n, int dk, int dv, attn_dtype dt, int shift, int ring,
                        int mapped) {
    const int ps = 1 << shift, elt = dt == ATTN_F32 ? 4 : 2;
    memset(s, 0, sizeof *s);
    s->dk = dk; s->dv = dv; s->dt = dt; s->mapped = mapped; s->n = n;
    s->first = ring && n > (int64_t)ring * ps ? n - (int64_t)ring * ps : 0;
    const int64_t m = n - s->first;
    s->K = malloc(sizeof(float) * m * dk);
    s->V = malloc(sizeof(float) * m * dv);
    fill(s->K, m * dk, -2, 2);
    fill(s->V, m * dv, -1, 1);
    if (dt == ATTN_F16) {
        for (int64_t i = 0; i < m * dk; i++) s->K[i] = round_f16(s->K[i]);
        for (int64_t i = 0; i < m * dv; i++) s->V[i] = round_f16(s->V[i]);
    }
    attn_kv_view v = {0};
    v.page_shift = shift;
    v.ring_pages = ring;
    v.dk = dk; v.dv = dv; v.dtype = dt;
    v.k_stride = dk + 3;
    v.v_stride = dv + 1;
    v.k_off = (size_t)5 * elt;
    v.v_off = v.k_off + (size_t)ps * v.k_stride * elt + 2 * elt;
    const size_t page_bytes = v.v_off + (size_t)ps * v.v_stride * elt;
    s->n_pages = ring ? ring : (int)((n + ps - 1) / ps);
    s->hpages = calloc(s->n_pages, sizeof(void *));
    s->dpages = calloc(s->n_pages, sizeof(void *));
    for (int p = 0; p < s->n_pages; p++) {
        s->hpages[p] = mapped ? gpu_host_alloc(page_bytes) : calloc(1, page_bytes);
        if (!s->hpages[p]) must(-1, "page alloc");
        memset(s->hpages[p], 0, page_bytes);
    }
    for (int64_t t = s->first; t < n; t++) {
        char *pg = s->hpages[ring ? (t >> shift) % ring : t >> shift];
        const int64_t r = t & (ps - 1);
        char *kr = pg + v.k_off + (size_t)r * v.k_stride * elt, *vr = pg + v.v_off + (size_t)r * v.v_stride * elt;
        const float *ks = s->K + (t - s->first) * dk, *vs = s->V + (t - s->first) * dv;
        for (int i = 0; i < dk; i++) {
            if (dt == ATTN_F32) memcpy(kr + 4 * i, &ks[i], 4);
            else { uint16_t h = krn_f32_to_f16(ks[i]); memcpy(kr + 2 * i, &h, 2); }
        }
        for (int i = 0; i < dv; i++) {
            if (dt == ATTN_F32) memcpy(vr + 4 * i, &vs[i], 4);
            else { uint16_t h = krn_f32_to_f16(vs[i]); memcpy(vr + 2 * i, &h, 2); }
        }
    }
    if (mapped) {
        for (int p = 0; p < s->n_pages; p++) s->dpages[p] = s->hpages[p];
        s->dtable = gpu_host_alloc(sizeof(void *) * s->n_pages);
        if (!s->dtable) must(-1, "gpu_host_alloc");
        memcpy(s->dtable, s->dpages, sizeof(void *) * s->n_pages);
    } else {
        for (int p = 0; p < s->n_pages; p++) s->dpages[p] = dev_copy(s->hpages[p], page_bytes);
        s->dtable = dev_copy(s->dpages, sizeof(void *) * s->n_pages);
    }
    s->hv = v;
    s->hv.pages = (const void *const *)s->hpages;
    s->gv = v;
    s->gv.pages = (const void *const *)s->dtable;
    must(gpu_sync(), "gpu_sync");
}

static void store_free(store *s) {
    for (int p = 0; p < s->n_pages; p++) {
        if (s->mapped) {
            gpu_host_free(s->hpages[p]);
        } else {
            free(s->hpages[p]);
            gpu_free(s->dpages[p]);
        }
    }
    if (s->mapped) gpu_host_free(s->dtable);
    else gpu_free(s->dtable);
    free(s->hpages); free(s->dpages); free(s->K); free(s->V);
}

static const char *store_name(const store *s) {
    static char buf[64];
    snprintf(buf, sizeof buf, "%s %s%s", s->dt == ATTN_F32 ? "f32" : "f16", s->mapped ? "mapped" : "device",
             s->hv.ring_pages ? " ring" : "");
    return buf;
}

/* Three jobs in one gpu_attn_decode launch: all held keys, the last two thirds, and nothing;
 * as ranges, or (use_ids) as a shuffled half of the held positions, its first third, and none. */
static void decode_case(const store *s, int n_q, int use_ids) {
    enum { NJ = 3 };
    const int dk = s->dk, dv = s->dv;
    const int64_t m = s->n - s->first;
    const float scale = 1.0f / sqrtf((float)dk);
    int64_t lo[NJ], hi[NJ], nid[NJ];
    int32_t *ids = NULL, *dids = NULL;
    int64_t n_ids = 0;
    if (use_ids) {
        ids = malloc(sizeof(int32_t) * m);
        for (int64_t i = 0; i < m; i++) ids[i] = (int32_t)(s->first + i);
        for (int64_t i = m - 1; i > 0; i--) {
            int64_t j = (int64_t)(rng_u64() % (uint64_t)(i + 1));
            int32_t t = ids[i]; ids[i] = ids[j]; ids[j] = t;
        }
        n_ids = m / 2 + 1;
        if (n_ids > m) n_ids = m;
        dids = s->mapped ? gpu_host_alloc(sizeof(int32_t) * n_ids) : dev_alloc(sizeof(int32_t) * n_ids);
        if (!dids) must(-1, "ids alloc");
        if (s->mapped) memcpy(dids, ids, sizeof(int32_t) * n_ids);
        else must(gpu_h2d(dids, ids, sizeof(int32_t) * n_ids), "gpu_h2d");
        nid[0] = n_ids; nid[1] = n_ids / 3; nid[2] = 0;
    }
    lo[0] = s->first; hi[0] = s->n;
    lo[1] = s->first + m / 3; hi[1] = s->n;
    lo[2] = hi[2] = s->first;
    gpu_attn_job *jobs = gpu_host_alloc(sizeof(gpu_attn_job) * NJ);
    if (!jobs) must(-1, "gpu_host_alloc");
    float *q[NJ], *ref_o[NJ], *ref_l[NJ], *got_o = malloc(sizeof(float) * n_q * dv),
          *got_l = malloc(sizeof(float) * n_q);
    float *dq[NJ], *dout[NJ], *dlse[NJ];
    int64_t max_keys = 0;
    for (int j = 0; j < NJ; j++) {
        q[j] = malloc(sizeof(float) * n_q * dk);
        ref_o[j] = malloc(sizeof(float) * n_q * dv);
        ref_l[j] = malloc(sizeof(float) * n_q);
        fill(q[j], (int64_t)n_q * dk, -2, 2);
        dq[j] = dev_copy(q[j], sizeof(float) * n_q * dk);
        dout[j] = dev_alloc(sizeof(float) * n_q * dv);
        dlse[j] = dev_alloc(sizeof(float) * n_q);
        gpu_attn_job *jb = &jobs[j];
        memset(jb, 0, sizeof *jb);
        jb->kv = s->gv;
        jb->q = dq[j];
        jb->out = dout[j];
        jb->lse = dlse[j];
        if (use_ids) {
            jb->ids = dids;
            jb->n_ids = nid[j];
            attn_ids(&s->hv, q[j], n_q, ids, nid[j], scale, ref_o[j], ref_l[j]);
            if (nid[j] > max_keys) max_keys = nid[j];
        } else {
            jb->lo = lo[j];
            jb->hi = hi[j];
            attn_range(&s->hv, q[j], n_q, lo[j], hi[j], scale, ref_o[j], ref_l[j]);
            if (hi[j] - lo[j] > max_keys) max_keys = hi[j] - lo[j];
        }
        if (j > 0) { /* a sampled part's weight raises a non-empty job's lse; an empty one stays -inf */
            jb->lse_add = 0.75f;
            for (int g = 0; g < n_q; g++)
                if (isfinite(ref_l[j][g])) ref_l[j][g] += 0.75f;
        }
    }
    must(gpu_attn_decode(jobs, NJ, n_q, scale, max_keys), "gpu_attn_decode");
    must(gpu_sync(), "gpu_sync");
    cmp c = {0};
    for (int j = 0; j < NJ; j++) {
        to_host(got_o, dout[j], sizeof(float) * n_q * dv);
        to_host(got_l, dlse[j], sizeof(float) * n_q);
        for (int i = 0; i < n_q * dv; i++) cmp_add(&c, got_o[i], ref_o[j][i], 1e-4);
        for (int g = 0; g < n_q; g++) cmp_add(&c, got_l[g], ref_l[j][g], 1e-4 * (1 + fabs(ref_l[j][g])));
    }
    cmp_report(&c, "decode %s keys=%lld dk=%d dv=%d group=%d %s", store_name(s), (long long)m, dk, dv,
               n_q, use_ids ? "ids" : "range");
    for (int j = 0; j < NJ; j++) {
        gpu_free(dq[j]); gpu_free(dout[j]); gpu_free(dlse[j]);
        free(q[j]); free(ref_o[j]); free(ref_l[j]);
    }
    gpu_host_free(jobs);
    if (dids) {
        if (s->mapped) gpu_host_free(dids);
        else gpu_free(dids);
    }
    free(ids); free(got_o); free(got_l);
}

static void test_decode(void) {
    static const int64_t keys[] = {1, 3, 129, 257, 4099, 32768};
    static const int dims[] = {64, 128, 256};
    static const int groups[] = {1, 4, 8};
    for (int ki = 0; ki < 6; ki++)
        for (int di = 0; di < 3; di++) {
            const int combo = (ki + di) & 3;   /* every (dtype, memory) pair for each dim */
            store s;
            store_build(&s, keys[ki], dims[di], dims[di], combo & 1 ? ATTN_F16 : ATTN_F32, 4 + 2 * (ki % 3), 0,
                        combo >> 1);
            for (int gi = 0; gi < 3; gi++)
                for (int use_ids = 0; use_ids < 2; use_ids++) decode_case(&s, groups[gi], use_ids);
            store_free(&s);
        }
    /* rings, odd head dims, dk != dv, a full group and one above ATTN_MAX_GROUP */
    for (int combo = 0; combo < 4; combo++) {
        store s;
        store_build(&s, 5000, 128, 128, combo & 1 ? ATTN_F16 : ATTN_F32, 6, 10, combo >> 1);
        decode_case(&s, 4, 0);
        decode_case(&s, 8, 1);
        store_free(&s);
    }
    store s;
    store_build(&s, 1000, 80, 64, ATTN_F32, 5, 0, 0);
    decode_case(&s, 16, 0);
    decode_case(&s, 20, 1);
    store_free(&s);
    store_build(&s, 777, 32, 48, ATTN_F16, 4, 0, 1);
    decode_case(&s, 3, 0);
    decode_case(&s, 20, 0);
    store_free(&s);
}

static void test_merge(void) {
    static const int dvs[] = {64, 256, 80};
    for (int k = 0; k < 3; k++) {
        const int n = 37, dv = dvs[k];
        float *oa = malloc(sizeof(float) * n * dv), *ob = malloc(sizeof(float) * n * dv);
        float la[37], lb[37], got_l[37];
        float *got = malloc(sizeof(float) * n * dv);
        fill(oa, (int64_t)n * dv, -1, 1);
        fill(ob, (int64_t)n * dv, -1, 1);
        for (int r = 0; r < n; r++) {
            la[r] = r % 5 == 1 ? -INFINITY : (float)rng_unif(-20, 20);
            lb[r] = r % 7 == 2 || r == 6 ? -INFINITY : (float)rng_unif(-20, 20);
        }
        la[6] = -INFINITY;   /* both empty */
        float *doa = dev_copy(oa, sizeof(float) * n * dv), *dob = dev_copy(ob, sizeof(float) * n * dv);
        float *dla = dev_copy(la, sizeof la), *dlb = dev_copy(lb, sizeof lb);
        attn_merge(oa, la, ob, lb, n, dv);
        must(gpu_attn_merge(doa, dla, dob, dlb, n, dv), "gpu_attn_merge");
        to_host(got, doa, sizeof(float) * n * dv);
        to_host(got_l, dla, sizeof got_l);
        cmp c = {0};
        for (int i = 0; i < n * dv; i++) cmp_add(&c, got[i], oa[i], 1e-5);
        for (int r = 0; r < n; r++) cmp_add(&c, got_l[r], la[r], 1e-5 * (1 + fabs(la[r])));
        cmp_report(&c, "attn_merge rows=%d dv=%d (empty sides included)", n, dv);
        gpu_free(doa); gpu_free(dob); gpu_free(dla); gpu_free(dlb);
        free(oa); free(ob); free(got);
    }
}

static void test_scores(void) {
    static const int nqs[] = {1, 4, 8};
    static const int64_t ns[] = {1, 129, 4099};
    static const int dims[] = {64, 128, 256};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int d = 0; d < 3; d++) {
                const int n_q = nqs[a], dim = dims[d];
                const int64_t n = ns[b];
                float *q = malloc(sizeof(float) * n_q * dim), *C = malloc(sizeof(float) * n * dim);
                float *got = malloc(sizeof(float) * n_q * n);
                fill(q, (int64_t)n_q * dim, -1, 1);
                fill(C, n * dim, -1, 1);
                float *dq = dev_copy(q, sizeof(float) * n_q * dim), *dC = dev_copy(C, sizeof(float) * n * dim);
                float *ds = dev_alloc(sizeof(float) * n_q * n);
                must(gpu_scores(dq, n_q, dC, n, dim, ds), "gpu_scores");
                to_host(got, ds, sizeof(float) * n_q * n);
                cmp c = {0};
                for (int g = 0; g < n_q; g++)
                    for (int64_t j = 0; j < n; j++) {
                        double s = 0, mag = 0;
                        for (int i = 0; i < dim; i++) {
                            s += (double)q[g * dim + i] * C[j * dim + i];
                            mag += fabs((double)q[g * dim + i] * C[j * dim + i]);
                        }
                        cmp_add(&c, got[g * n + j], s, 1e-5 * mag + 1e-6);
                    }
                cmp_report(&c, "scores n_q=%d n=%lld dim=%d", n_q, (long long)n, dim);
                gpu_free(dq); gpu_free(dC); gpu_free(ds);
                free(q); free(C); free(got);
            }
}

/* Causal prefill of T rows at pos0 (window 0: from position 0) against a double loop over the
 * stores' values. */
static void prefill_case(int T, int dk, int dv, int n_head, int n_head_kv, int64_t pos0, int64_t window,
                         attn_dtype dt, int mapped, int gemm) {
    const int64_t n = pos0 + T;
    const int shift = 5;
    /* a sliding window runs over a ring just large enough for the window and the chunk */
    const int ring = window > 0 ? (int)((T + window + 31) / 32 + 1) : 0;
    store *s = malloc(sizeof(store) * n_head_kv);
    attn_kv_view *views = malloc(sizeof(attn_kv_view) * n_head_kv);
    for (int h = 0; h < n_head_kv; h++) {
        store_build(&s[h], n, dk, dv, dt, shift, ring, mapped);
        views[h] = s[h].gv;
    }
    const float scale = 1.0f / sqrtf((float)dk);
    float *q = malloc(sizeof(float) * T * n_head * dk), *got = malloc(sizeof(float) * T * n_head * dv);
    fill(q, (int64_t)T * n_head * dk, -2, 2);
    float *dq = dev_copy(q, sizeof(float) * T * n_head * dk), *dout = dev_alloc(sizeof(float) * T * n_head * dv);
    if (gemm)
        must(gpu_attn_prefill_gemm(views, n_head_kv, dq, T, n_head, pos0, window, scale, dout),
             "gpu_attn_prefill_gemm");
    else
        must(gpu_attn_prefill(views, n_head_kv, dq, T, n_head, pos0, window, scale, dout), "gpu_attn_prefill");
    to_host(got, dout, sizeof(float) * T * n_head * dv);
    double *sc = malloc(sizeof(double) * n), *o = malloc(sizeof(double) * dv);
    cmp c = {0};
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_head; h++) {
            const store *st = &s[h / (n_head / n_head_kv)];
            const int64_t p = pos0 + t;
            int64_t a = window > 0 ? p - window + 1 : 0;
            if (a < 0) a = 0;
            const float *qv = q + ((int64_t)t * n_head + h) * dk;
            double mx = -INFINITY, d = 0;
            for (int64_t j = a; j <= p; j++) {
                const float *k = st->K + (j - st->first) * dk;
                double acc = 0;
                for (int i = 0; i < dk; i++) acc += (double)qv[i] * k[i];
                sc[j - a] = scale * acc;
                if (sc[j - a] > mx) mx = sc[j - a];
            }
            for (int i = 0; i < dv; i++) o[i] = 0;
            for (int64_t j = a; j <= p; j++) {
                const double w = exp(sc[j - a] - mx);
                const float *v = st->V + (j - st->first) * dv;
                d += w;
                for (int i = 0; i < dv; i++) o[i] += w * v[i];
            }
            /* the tensor-core path rounds q and the probabilities to f16 (V in [-1, 1]) */
            for (int i = 0; i < dv; i++)
                cmp_add(&c, got[((int64_t)t * n_head + h) * dv + i], o[i] / d, gemm ? 6e-3 : 1e-4);
        }
    cmp_report(&c, "prefill%s %s T=%d dk=%d dv=%d heads=%d/%d pos0=%lld window=%lld", gemm ? " (gemm)" : "", store_name(&s[0]),
               T, dk, dv, n_head, n_head_kv, (long long)pos0, (long long)window);
    for (int h = 0; h < n_head_kv; h++) store_free(&s[h]);
    gpu_free(dq); gpu_free(dout);
    free(s); free(views); free(q); free(got); free(sc); free(o);
}

static void test_prefill(void) {
    static const int Ts[] = {1, 7, 130};
    static const int dims[] = {64, 128, 256};
    static const int kv_heads[] = {1, 2, 4};   /* of 4 query heads: groups 4, 2, 1 */
    for (int gemm = 0; gemm < 2; gemm++) {
        int combo = 0;
        for (int ti = 0; ti < 3; ti++)
            for (int di = 0; di < 3; di++)
                for (int variant = 0; variant < 3; variant++, combo++) {
                    const int64_t pos0 = variant == 0 ? 0 : variant == 1 ? 1000 : 1000000;
                    const int64_t window = variant == 2 ? 100 : 0;
                    prefill_case(Ts[ti], dims[di], dims[di], 4, kv_heads[combo % 3], pos0, window,
                                 combo & 1 ? ATTN_F16 : ATTN_F32, (combo >> 1) & 1, gemm);
                }
        prefill_case(70, 80, 64, 6, 2, 33, 0, ATTN_F32, 0, gemm);
        prefill_case(45, 32, 32, 2, 1, 5, 9, ATTN_F16, 1, gemm);
        /* a longer key range than any tile: the split of the scores over heads and rows */
        prefill_case(257, 128, 128, 8, 2, 3000, 0, ATTN_F16, 1, gemm);
    }

    /* bad shapes are refused with a reason */
    attn_kv_view v = {0};
    v.dk = v.dv = 64;
    CHECK(gpu_attn_prefill(&v, 3, NULL, 1, 4, 0, 0, 1.0f, NULL) == -1 && gpu_last_error()[0],
          "4 heads over 3 KV heads accepted");
    printf("ok   prefill with 4 heads over 3 KV heads refused: %s\n", gpu_last_error());
}

int main(void) {
    char why[256];
    if (gpu_device_count(why, sizeof why) == 0) {
        if (strncmp(why, "no CUDA device", 14) == 0) printf("skipped: %s\n", why);
        else printf("skipped: no CUDA device (%s)\n", why);
        return 0;
    }
    if (gpu_init(0, why, sizeof why)) {
        fprintf(stderr, "gpu_init: %s\n", why);
        return 1;
    }
    printf("device: %s\n", gpu_device_name());
    test_rmsnorm();
    test_rope();
    test_elementwise();
    test_matmul();
    test_merge();
    test_scores();
    test_decode();
    test_prefill();
    gpu_shutdown();
    return check_summary("test_gpu");
}
