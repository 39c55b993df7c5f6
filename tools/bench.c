/* kvseek bench-kernels: how close the CPU kernels run to the memory bandwidth limit.
 *
 * Decode reads every weight once per token, so its ceiling is (bandwidth / bytes per token). This
 * command measures the pieces of that sentence on the machine at hand:
 *   - memory: memcpy of a large buffer (bytes read + written per second, STREAM's convention) and
 *     a read-only streaming sum, plus the sum over growing sizes (where the caches end);
 *   - matvec per weight type over a buffer larger than the caches (4096 columns, --mb MiB of
 *     weights), alternating with the plain sum over the same bytes: GB/s and the share of the
 *     read bandwidth it reaches;
 *   - the cost of one OpenMP fork/join (a decode step runs one per matvec);
 *   - the prefill matmul (2048 rows x --cols, --tokens tokens) per type: GFLOP/s and the share of
 *     the machine's measured peak (8-bit dot products or f32 FMA, whichever the type runs on);
 *   - attention (attn_range) over a long f32 / f16 KV range, on one thread (how a decode step of a
 *     one-KV-head model runs it) and split over the threads;
 *   - with a model (-m; the default model when present): bytes of weights read per decoded token
 *     (every tensor once, the output matrix once, one embedding row), KV bytes per token at a few
 *     context lengths, one "decode pass" (krn_matvec over every weight matrix in file order, as a
 *     decode step does) timed per (type, shape), and the implied ceilings in tok/s.
 * Output: one line per measurement, JSON with --json. Timings are medians over --reps repetitions
 * (best also given); on a shared machine read the ratios, which come from interleaved runs. */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attn_sparse.h"
#include "clock.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "tools.h"

#define DEFAULT_MODEL "models/gemma-3-270m-q4_k_m.gguf"

typedef struct {
    int threads, reps, json, cols, prefill_tokens, matmul_only;
    size_t mb;
    const char *model;         /* NULL: no model section */
    int64_t ctx[8];
    int n_ctx;
} bench_opts;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double minimum(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t rnd(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}
static float frand(void) { return (float)((rnd() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

/* ---- memory ------------------------------------------------------------------------------ */

/* Sum of n floats: each thread reads its contiguous slice as 4 streams in lockstep (the access
 * pattern of a matvec on 4 rows at a time, which keeps more prefetch streams in flight than one),
 * 16 independent lanes per stream, so the adds never wait on each other. Returned so the compiler
 * keeps it. */
static float stream_sum(const float *p, size_t n) {
    float total = 0.0f;
    #pragma omp parallel reduction(+ : total)
    {
        int T = omp_get_num_threads(), t = omp_get_thread_num();
        size_t lo = n * t / T / 64 * 64, hi = t + 1 == T ? n : n * (t + 1) / T / 64 * 64;
        size_t q = (hi - lo) / 4 / 16 * 16;   /* floats per stream */
        const float *s0 = p + lo, *s1 = s0 + q, *s2 = s1 + q, *s3 = s2 + q;
        float acc[4][16] = {{0}};
        for (size_t i = 0; i < q; i += 16)
            for (int l = 0; l < 16; l++) {
                acc[0][l] += s0[i + l];
                acc[1][l] += s1[i + l];
                acc[2][l] += s2[i + l];
                acc[3][l] += s3[i + l];
            }
        for (size_t i = lo + 4 * q; i < hi; i++) acc[0][0] += p[i];
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 16; l++) total += acc[k][l];
    }
    return total;
}

static void par_memcpy(void *dst, const void *src, size_t n) {
    #pragma omp parallel
    {
        int T = omp_get_num_threads(), t = omp_get_thread_num();
        size_t lo = n * t / T / 64 * 64, hi = t + 1 == T ? n : n * (t + 1) / T / 64 * 64;
        memcpy((char *)dst + lo, (const char *)src + lo, hi - lo);
    }
}

static volatile float sink;

/* Seconds of one read of `bytes` at p (median over reps) and the best. */
static void time_read(const void *p, size_t bytes, int reps, double *med, double *best) {
    double t[64];
    if (reps > 64) reps = 64;
    for (int r = 0; r < reps; r++) {
        double t0 = krn_now_s();
        sink = stream_sum(p, bytes / 4);
        t[r] = krn_now_s() - t0;
    }
    *best = minimum(t, reps);
    *med = median(t, reps);
}

/* ---- output ------------------------------------------------------------------------------- */

/* Prints a record: JSON (keys and values as given) or a text line. fmt holds pairs
 * "key=%spec" separated by spaces, e.g. "type=%s gb_s=%.2f"; strings get quoted in JSON. */
static void emit(const bench_opts *o, const char *bench, const char *fmt, ...) {
    char body[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (!o->json) {
        printf("%-14s %s\n", bench, body);
        return;
    }
    /* body is "k=v k=v ...": values that parse as numbers stay bare, the rest are quoted */
    printf("{\"bench\": \"%s\"", bench);
    for (char *tok = strtok(body, " "); tok; tok = strtok(NULL, " ")) {
        char *eq = strchr(tok, '=');
        if (!eq) continue;
        *eq = 0;
        char *end;
        strtod(eq + 1, &end);
        int num = *end == 0 && eq[1] != 0 && strcmp(eq + 1, "nan") && strcmp(eq + 1, "inf");
        printf(num ? ", \"%s\": %s" : ", \"%s\": \"%s\"", tok, eq + 1);
    }
    printf("}\n");
    fflush(stdout);
}

/* ---- weights ------------------------------------------------------------------------------ */

static const uint32_t all_types[] = {
    KRN_TYPE_F32, KRN_TYPE_F16, KRN_TYPE_BF16, KRN_TYPE_Q4_0, KRN_TYPE_Q4_1, KRN_TYPE_Q5_0,
    KRN_TYPE_Q5_1, KRN_TYPE_Q8_0, KRN_TYPE_Q4_K, KRN_TYPE_Q5_K, KRN_TYPE_Q6_K,
};

/* Fills `bytes` (a multiple of the block size) at w with valid blocks of `type`: a 1 MiB pattern
 * of random codes and finite scales, tiled. Values do not change the speed; NaN or subnormal
 * scales could, so there are none. */
static void fill_type(uint32_t type, uint8_t *w, size_t bytes) {
    size_t bb = krn_type_block_bytes(type), pat = (1 << 20) / bb * bb;
    uint8_t *p = malloc(pat);
    for (size_t i = 0; i < pat; i++) p[i] = (uint8_t)rnd();
    for (size_t b = 0; b < pat / bb; b++) {
        uint8_t *blk = p + b * bb;
        uint16_t h = krn_f32_to_f16(0.01f + 0.5f * (frand() + 1.0f));
        float f = frand();
        switch (type) {
        case KRN_TYPE_F32: memcpy(blk, &f, 4); break;
        case KRN_TYPE_F16: { uint16_t x = krn_f32_to_f16(f); memcpy(blk, &x, 2); break; }
        case KRN_TYPE_BF16: { uint32_t u; memcpy(&u, &f, 4); uint16_t x = (uint16_t)(u >> 16); memcpy(blk, &x, 2); break; }
        case KRN_TYPE_Q6_K: memcpy(blk + 208, &h, 2); break;
        case KRN_TYPE_Q4_1: case KRN_TYPE_Q5_1: case KRN_TYPE_Q4_K: case KRN_TYPE_Q5_K:
            memcpy(blk, &h, 2); memcpy(blk + 2, &h, 2); break;
        default: memcpy(blk, &h, 2); break;
        }
    }
    for (size_t o = 0; o < bytes; o += pat) memcpy(w + o, p, bytes - o < pat ? bytes - o : pat);
    free(p);
}

/* The matvec of each type over ~o->mb MiB of weights (o->cols columns), each repetition a plain
 * read of the same bytes then the matvec (A B A B), so that drift hits both alike. */
static void bench_types(const bench_opts *o, uint8_t *buf, size_t cap, float *x, float *y) {
    for (size_t i = 0; i < sizeof all_types / sizeof *all_types; i++) {
        uint32_t type = all_types[i];
        size_t rb = krn_row_bytes(type, o->cols);
        int64_t rows = (int64_t)(cap / rb);
        size_t bytes = (size_t)rows * rb;
        fill_type(type, buf, bytes);
        krn_matvec(type, buf, rows, o->cols, x, y);   /* warm-up: page faults, thread start */
        double tr[64], tm[64];
        int reps = o->reps > 64 ? 64 : o->reps;
        for (int r = 0; r < reps; r++) {
            double t0 = krn_now_s();
            sink = stream_sum((const float *)buf, bytes / 4);
            double t1 = krn_now_s();
            krn_matvec(type, buf, rows, o->cols, x, y);
            tr[r] = t1 - t0;
            tm[r] = krn_now_s() - t1;
        }
        double best = minimum(tm, reps), med = median(tm, reps), rmed = median(tr, reps);
        emit(o, "matvec", "type=%s rows=%lld cols=%d mib=%.0f gb_s=%.2f gb_s_best=%.2f gelem_s=%.2f "
             "read_gb_s=%.2f pct_of_read=%.1f", krn_type_name(type), (long long)rows, o->cols,
             bytes / 1048576.0, bytes / med / 1e9, bytes / best / 1e9, (double)rows * o->cols / med / 1e9,
             bytes / rmed / 1e9, 100.0 * rmed / med);
    }
}

/* ---- prefill matmul -------------------------------------------------------------------------- */

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* The machine's arithmetic peak on the calling team, measured: every thread runs chains of
 * independent multiply-adds in registers (8-bit dot products with AVX-512 VNNI, f32 FMA
 * otherwise), GOP/s counting a multiply and an add as two. */
static double peak_gops(int int8) {
    double best = 0.0;
    for (int r = 0; r < 3; r++) {
        const long iters = 400000000;   /* about 0.1 s per thread: long enough to ignore scheduling */
        double t0 = krn_now_s();
        float out = 0.0f;
        #pragma omp parallel reduction(+:out)
        {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
            if (int8) {
                __m512i a[8], u = _mm512_set1_epi8(3), q = _mm512_set1_epi8(-2);
                for (int k = 0; k < 8; k++) a[k] = _mm512_set1_epi32(k);
                for (long i = 0; i < iters / 8; i++)
                    for (int k = 0; k < 8; k++) a[k] = _mm512_dpbusd_epi32(a[k], u, q);
                for (int k = 0; k < 8; k++) out += (float)_mm512_reduce_add_epi32(a[k]);
            } else
#endif
#if defined(__AVX512F__)
            {
                __m512 a[8], m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
                for (int k = 0; k < 8; k++) a[k] = _mm512_set1_ps((float)k);
                for (long i = 0; i < iters / 8; i++)
                    for (int k = 0; k < 8; k++) a[k] = _mm512_fmadd_ps(a[k], m, c);
                for (int k = 0; k < 8; k++) out += _mm512_reduce_add_ps(a[k]);
            }
#else
            {
                float a[8] = {0};
                for (long i = 0; i < iters / 8; i++)
                    for (int k = 0; k < 8; k++) a[k] = a[k] * 0.999f + 1e-3f;
                for (int k = 0; k < 8; k++) out += a[k];
            }
#endif
        }
        sink = out;
        double dt = krn_now_s() - t0;
        /* per iteration: 8 vectors of 64 byte products (int8) or 16 float FMAs, 2 ops each */
#if defined(__AVX512F__)
        const double per = int8 ? 8.0 * 64 * 2 : 8.0 * 16 * 2;
#else
        const double per = 8.0 * 2;
#endif
        const double g = (double)(iters / 8) * per * omp_get_max_threads() / dt / 1e9;
        if (g > best) best = g;
    }
    return best;
}

/* The prefill product (krn_matmul: a block of tokens against a weight matrix) per type, at a
 * model-like shape: GFLOP/s and its share of the measured peak of the arithmetic it runs on
 * (8-bit dot products for the types krn_type_i8 names, f32 FMA otherwise). */
static void bench_matmul(const bench_opts *o) {
    static const uint32_t types[] = {KRN_TYPE_Q5_0, KRN_TYPE_Q4_K, KRN_TYPE_Q6_K, KRN_TYPE_Q8_0, KRN_TYPE_F16};
    const double peak_i8 = peak_gops(1), peak_f32 = peak_gops(0);
    emit(o, "peak", "threads=%d int8_gop_s=%.1f f32_gflop_s=%.1f", o->threads, peak_i8, peak_f32);
    const int64_t rows = 2048, cols = o->cols, ntok = o->prefill_tokens;
    float *X = malloc(sizeof(float) * (size_t)(cols * ntok)), *Y = malloc(sizeof(float) * (size_t)(rows * ntok));
    uint8_t *w = aligned_alloc(64, krn_row_bytes(KRN_TYPE_F32, cols) * (size_t)rows);
    if (!X || !Y || !w) {
        fprintf(stderr, "error: cannot allocate the matmul buffers\n");
        free(X); free(Y); free(w);
        return;
    }
    for (int64_t i = 0; i < cols * ntok; i++) X[i] = frand();
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        const uint32_t type = types[i];
        fill_type(type, w, krn_row_bytes(type, cols) * (size_t)rows);
        krn_matmul(type, w, rows, cols, X, ntok, Y);   /* warm-up: scratch, threads */
        double t[64];
        int reps = o->reps > 64 ? 64 : o->reps;
        for (int r = 0; r < reps; r++) {
            double t0 = krn_now_s();
            krn_matmul(type, w, rows, cols, X, ntok, Y);
            t[r] = krn_now_s() - t0;
        }
        const double flop = 2.0 * rows * cols * ntok, med = median(t, reps);
        const int i8 = krn_type_i8(type);
        const double gf = flop / med / 1e9, peak = i8 ? peak_i8 : peak_f32;
        emit(o, "matmul", "type=%s rows=%lld cols=%lld tokens=%lld ms=%.2f gflop_s=%.1f gflop_s_best=%.1f "
             "arith=%s pct_of_peak=%.1f", krn_type_name(type), (long long)rows, (long long)cols, (long long)ntok,
             med * 1e3, gf, flop / minimum(t, reps) / 1e9, i8 ? "int8" : "f32", 100.0 * gf / peak);
    }
    free(X); free(Y); free(w);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* attn_range of a group of n_q queries over n_keys contiguous keys (pages of 64, K then V rows
 * per page), f32 and f16: serial (called inside a parallel region by one thread while the others
 * wait, as the engine's decode step runs it for a one-KV-head model) and split over the threads
 * (called outside). GB/s counts the K and V bytes read. */
static void bench_attn(const bench_opts *o, int n_keys, int d, int n_q) {
    enum { PS = 64 };
    int n_pages = (n_keys + PS - 1) / PS;
    for (int dt = 0; dt < 2; dt++) {
        size_t elt = dt ? 2 : 4, page_bytes = (size_t)2 * PS * d * elt;
        uint8_t *mem = aligned_alloc(64, page_bytes * n_pages);
        const void **pages = malloc(sizeof(void *) * n_pages);
        if (!mem || !pages) { free(mem); free(pages); return; }
        for (size_t i = 0; i < page_bytes * n_pages / elt; i++) {
            float f = 0.1f * frand();
            uint16_t h = krn_f32_to_f16(f);
            if (dt) memcpy(mem + 2 * i, &h, 2);
            else memcpy(mem + 4 * i, &f, 4);
        }
        for (int p = 0; p < n_pages; p++) pages[p] = mem + (size_t)p * page_bytes;
        attn_kv_view v = {.pages = pages, .ring_pages = 0, .page_shift = 6, .k_off = 0,
                          .v_off = (size_t)PS * d * elt, .k_stride = d, .v_stride = d, .dk = d, .dv = d,
                          .dtype = dt ? ATTN_F16 : ATTN_F32};
        float *q = malloc(sizeof(float) * n_q * d), *out = malloc(sizeof(float) * n_q * d), lse[ATTN_MAX_GROUP];
        for (int i = 0; i < n_q * d; i++) q[i] = frand();
        double bytes = (double)n_keys * 2 * d * elt, ts[64], tp[64];
        int reps = o->reps > 64 ? 64 : o->reps;
        attn_range(&v, q, n_q, 0, n_keys, 0.0625f, out, lse);
        for (int r = 0; r < reps; r++) {
            double t0 = krn_now_s();
            #pragma omp parallel
            {
                #pragma omp single
                attn_range(&v, q, n_q, 0, n_keys, 0.0625f, out, lse);
            }
            double t1 = krn_now_s();
            attn_range(&v, q, n_q, 0, n_keys, 0.0625f, out, lse);
            ts[r] = t1 - t0;
            tp[r] = krn_now_s() - t1;
        }
        double ms = median(ts, reps), mp = median(tp, reps);
        emit(o, "attn_range", "dtype=%s keys=%d dk=%d dv=%d group=%d kv_mib=%.0f serial_ms=%.2f serial_gb_s=%.2f "
             "split_threads=%d split_ms=%.2f split_gb_s=%.2f", dt ? "f16" : "f32", n_keys, d, d, n_q,
             bytes / 1048576.0, ms * 1e3, bytes / ms / 1e9, o->threads, mp * 1e3, bytes / mp / 1e9);
        free(q); free(out); free(pages); free(mem);
    }
}

/* ---- a model's decode step -------------------------------------------------------------------- */

typedef struct {
    uint32_t type;
    int64_t rows, cols;
    int count;          /* tensors of this (type, shape) */
    double bytes, s;    /* per pass */
} shape_acc;

/* Bytes per decoded token and a decode pass: krn_matvec over every weight matrix, file order. */
static int bench_model(const bench_opts *o, double copy_gbs, double read_gbs) {
    char err[512];
    eng_model_params mp = {.n_threads = o->threads};
    eng_model *m = eng_model_load(o->model, &mp, err, sizeof err);
    if (!m) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    const gguf_ctx *g = eng_model_gguf(m);
    const eng_hparams *hp = eng_model_hparams(m);
    const int tied = gguf_find_tensor(g, "output.weight") == NULL;
    int64_t n_t = gguf_n_tensors(g), max_rows = 1, max_cols = 1;
    double w_bytes = 0, out_bytes = 0, norm_bytes = 0, embd_row = 0;
    shape_acc acc[64];
    int n_acc = 0;
    const gguf_tensor **mats = malloc(sizeof *mats * (n_t > 0 ? n_t : 1));
    int n_mats = 0;
    for (int64_t i = 0; i < n_t; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        int is_embd = !strcmp(t->name, "token_embd.weight"), is_out = !strcmp(t->name, "output.weight");
        if (t->n_dims < 2) { norm_bytes += t->size; continue; }
        if (is_embd) embd_row = (double)krn_row_bytes(t->type, t->ne[0]);
        if (is_embd && !tied) continue;   /* only the token's row */
        if (is_out || is_embd) out_bytes += t->size;
        else w_bytes += t->size;
        mats[n_mats++] = t;
        if (t->ne[1] > max_rows) max_rows = t->ne[1];
        if (t->ne[0] > max_cols) max_cols = t->ne[0];
        int k = 0;
        while (k < n_acc && !(acc[k].type == t->type && acc[k].rows == t->ne[1] && acc[k].cols == t->ne[0])) k++;
        if (k == n_acc && n_acc < 64) acc[n_acc++] = (shape_acc){t->type, t->ne[1], t->ne[0], 0, 0, 0};
        if (k < n_acc) { acc[k].count++; acc[k].bytes += t->size; }
    }
    const double per_tok = w_bytes + out_bytes + norm_bytes + embd_row;
    emit(o, "model_bytes", "model=%s layers=%d n_embd=%d vocab=%d layer_matrices_mb=%.2f output_mb=%.2f "
         "tied_output=%d vectors_kb=%.1f embd_row_b=%.0f weights_per_token_mb=%.2f", o->model, hp->n_layer,
         hp->n_embd, hp->n_vocab, w_bytes / 1e6, out_bytes / 1e6, tied, norm_bytes / 1e3, embd_row, per_tok / 1e6);

    /* the pass: each matrix once, timed per call; each pass follows a plain read of as many
     * bytes (A B A B), so the share of the read bandwidth comes from neighbouring measurements */
    double mat_bytes = w_bytes + out_bytes;
    float *x = malloc(sizeof(float) * max_cols), *y = malloc(sizeof(float) * max_rows);
    size_t rd_n = (size_t)(mat_bytes / 4) / 64 * 64;
    float *rd = malloc(sizeof(float) * rd_n);
    if (!x || !y || !rd) {
        fprintf(stderr, "error: out of memory\n");
        free(x); free(y); free(rd); free(mats);
        eng_model_free(m);
        return 1;
    }
    for (int64_t i = 0; i < max_cols; i++) x[i] = frand();
    for (size_t i = 0; i < rd_n; i++) rd[i] = 1.0f;
    enum { MAXP = 64 };
    int passes = 2 * o->reps < MAXP ? 2 * o->reps : MAXP;
    double tp[MAXP], tr[MAXP], (*ts)[MAXP] = calloc(n_acc, sizeof *ts);
    for (int p = -1; p < passes; p++) {   /* p = -1: warm-up (page faults of the mapping) */
        double r0 = krn_now_s();
        sink = stream_sum(rd, rd_n);
        double t0 = krn_now_s();
        for (int k = 0; p >= 0 && k < n_acc; k++) ts[k][p] = 0;
        for (int i = 0; i < n_mats; i++) {
            const gguf_tensor *t = mats[i];
            double c0 = krn_now_s();
            krn_matvec(t->type, t->data, t->ne[1], t->ne[0], x, y);
            double dt = krn_now_s() - c0;
            for (int k = 0; p >= 0 && k < n_acc; k++)
                if (acc[k].type == t->type && acc[k].rows == t->ne[1] && acc[k].cols == t->ne[0]) ts[k][p] += dt;
        }
        if (p >= 0) {
            tp[p] = krn_now_s() - t0;
            tr[p] = t0 - r0;
        }
    }
    double med = median(tp, passes), rmed = median(tr, passes), read_same = rd_n * 4.0 / rmed / 1e9;
    for (int k = 0; k < n_acc; k++) {
        double sk = median(ts[k], passes);
        emit(o, "model_matvec", "type=%s rows=%lld cols=%lld count=%d mb=%.2f us_per_token=%.1f gb_s=%.2f "
             "share_of_pass=%.3f", krn_type_name(acc[k].type), (long long)acc[k].rows, (long long)acc[k].cols,
             acc[k].count, acc[k].bytes / 1e6, sk * 1e6, acc[k].bytes / sk / 1e9, sk / med);
    }
    emit(o, "model_pass", "matrices=%d mb=%.2f ms_per_token=%.2f gb_s=%.2f tok_s_matvec_only=%.1f "
         "read_gb_s_same_bytes=%.2f pct_of_read=%.1f ceiling_tok_s_copy=%.1f ceiling_tok_s_read=%.1f", n_mats,
         mat_bytes / 1e6, med * 1e3, mat_bytes / med / 1e9, 1.0 / med, read_same, 100.0 * rmed / med,
         copy_gbs * 1e9 / per_tok, read_gbs * 1e9 / per_tok);
    free(ts);
    free(rd);

    /* dense decode at context L also reads every cached K and V row (f32) of its layers */
    for (int c = 0; c < o->n_ctx; c++) {
        double kv = 0;
        for (int l = 0; l < hp->n_layer; l++) {
            int64_t n = o->ctx[c];
            if (eng_layer_is_local(m, l) && hp->sliding_window < n) n = hp->sliding_window;
            kv += (double)n * hp->n_head_kv * (hp->head_dim + hp->v_dim) * 4;
        }
        emit(o, "model_ctx", "ctx=%lld kv_mb_per_token_f32=%.2f total_mb_per_token=%.2f ceiling_tok_s_copy=%.1f "
             "ceiling_tok_s_read=%.1f", (long long)o->ctx[c], kv / 1e6, (per_tok + kv) / 1e6,
             copy_gbs * 1e9 / (per_tok + kv), read_gbs * 1e9 / (per_tok + kv));
    }
    const int group = hp->n_head / (hp->n_head_kv > 0 ? hp->n_head_kv : 1);
    const int d = hp->head_dim, same_dims = hp->head_dim == hp->v_dim;
    free(x); free(y); free(mats);
    eng_model_free(m);
    /* the model's attention shape at the longest context asked for (32K by default) */
    int64_t longest = 0;
    for (int c = 0; c < o->n_ctx; c++) longest = o->ctx[c] > longest ? o->ctx[c] : longest;
    if (longest > 0 && group <= ATTN_MAX_GROUP && same_dims) bench_attn(o, (int)longest, d, group);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(void) {
    printf("usage: kvseek bench-kernels [-t N] [--json] [-m MODEL | -m none] [--mb N] [--reps N]\n"
           "                            [--cols N] [--tokens N] [--ctx L,L,...]\n"
           "                            [--matmul-only]\n\n"
           "Memory bandwidth (memcpy, streaming read), matvec GB/s of every weight type over a buffer\n"
           "larger than the caches, attention over a long KV range, and for a model the bytes read per\n"
           "decoded token, a decode pass over its weights and the implied tok/s ceilings; the prefill\n"
           "matmul per type in GFLOP/s against the measured int8 / f32 peak.\n\n"
           "  -t, --threads N   threads (default: OpenMP's, i.e. OMP_NUM_THREADS or the CPUs)\n"
           "  --json            one JSON object per line\n"
           "  -m, --model PATH  model for the per-token figures (default %s when present;\n"
           "                    'none' skips them)\n"
           "  --mb N            MiB of weights per type, and of each memcpy buffer (default 1024)\n"
           "  --reps N          repetitions per measurement (default 5; medians are reported)\n"
           "  --cols N          columns of the synthetic matrices, a multiple of 256 (default 4096)\n"
           "  --tokens N        tokens per prefill matmul (2048 rows x --cols; default 512)\n"
           "  --matmul-only     only the peak and the prefill matmul\n"
           "  --ctx LIST        context lengths for KV bytes per token (default 512,4096,16384,32768)\n",
           DEFAULT_MODEL);
}

static int parse_opts(int argc, char **argv, bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->threads = omp_get_max_threads();
    o->reps = 5;
    o->mb = 1024;
    o->cols = 4096;
    o->prefill_tokens = 512;
    o->model = access(DEFAULT_MODEL, R_OK) == 0 ? DEFAULT_MODEL : NULL;
    const int64_t ctx_default[] = {512, 4096, 16384, 32768};
    memcpy(o->ctx, ctx_default, sizeof ctx_default);
    o->n_ctx = 4;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        char *end = NULL;
        int takes = !strcmp(a, "-t") || !strcmp(a, "--threads") || !strcmp(a, "--mb") || !strcmp(a, "--reps")
                    || !strcmp(a, "--cols") || !strcmp(a, "--tokens") || !strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--ctx");
        if (takes && !v) {
            fprintf(stderr, "error: %s needs a value\n", a);
            return -1;
        }
        if (takes && strcmp(a, "-m") && strcmp(a, "--model") && strcmp(a, "--ctx")) {
            n = strtol(v, &end, 10);
            if (*end || n < 1 || n > (1L << 20)) {
                fprintf(stderr, "error: %s: '%s' is not a positive integer\n", a, v);
                return -1;
            }
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 1; }
        else if (!strcmp(a, "--json")) o->json = 1;
        else if (!strcmp(a, "--matmul-only")) o->matmul_only = 1;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) o->threads = (int)n;
        else if (!strcmp(a, "--mb")) o->mb = (size_t)n;
        else if (!strcmp(a, "--tokens")) o->prefill_tokens = (int)n;
        else if (!strcmp(a, "--reps")) o->reps = (int)n;
        else if (!strcmp(a, "--cols")) {
            if (n % 256) { fprintf(stderr, "error: --cols must be a multiple of 256\n"); return -1; }
            o->cols = (int)n;
        }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = strcmp(v, "none") ? v : NULL;
        else if (!strcmp(a, "--ctx")) {
            o->n_ctx = 0;
            for (const char *p = v; *p && o->n_ctx < 8; p = *end ? end + 1 : end) {
                long long c = strtoll(p, &end, 10);
                if (end == p || c < 1 || (*end && *end != ',')) {
                    fprintf(stderr, "error: --ctx: '%s' is not a list of lengths\n", v);
                    return -1;
                }
                o->ctx[o->n_ctx++] = c;
            }
        } else {
            fprintf(stderr, "error: unknown option '%s' (see kvseek bench-kernels --help)\n", a);
            return -1;
        }
        if (takes) i++;
    }
    return 0;
}

static void read_llc(char *buf, size_t n) {
    snprintf(buf, n, "unknown");
    for (int idx = 0; idx < 8; idx++) {
        char path[96], lvl[16] = "", size[32] = "";
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", idx);
        FILE *f = fopen(path, "r");
        if (!f) break;
        if (!fgets(lvl, sizeof lvl, f)) lvl[0] = 0;
        fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", idx);
        if ((f = fopen(path, "r"))) {
            if (fgets(size, sizeof size, f)) size[strcspn(size, "\n")] = 0;
            fclose(f);
        }
        if (atoi(lvl) >= 3 && size[0]) snprintf(buf, n, "%s", size);
    }
}

int tool_bench_kernels_main(int argc, char **argv) {
    bench_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc < 0 ? 2 : 0;
    omp_set_num_threads(o.threads);
    char llc[32];
    read_llc(llc, sizeof llc);
    const char *isa =
#if defined(__AVX512F__)
        "avx512";
#elif defined(__AVX2__)
        "avx2";
#else
        "generic";
#endif
    emit(&o, "env", "threads=%d isa=%s llc=%s mib=%zu reps=%d", o.threads, isa, llc, o.mb, o.reps);
    if (o.matmul_only) {
        bench_matmul(&o);
        return 0;
    }

    size_t cap = o.mb << 20;
    uint8_t *a = aligned_alloc(64, cap), *b = aligned_alloc(64, cap);
    float *x = malloc(sizeof(float) * o.cols), *y = malloc(sizeof(float) * (cap / 64 + 1));
    if (!a || !b || !x || !y) {
        fprintf(stderr, "error: cannot allocate 2 x %zu MiB\n", o.mb);
        free(a); free(b); free(x); free(y);
        return 1;
    }
    for (int i = 0; i < o.cols; i++) x[i] = frand();
    float one = 1.0f;
    for (size_t i = 0; i < cap / 4; i++) memcpy(a + 4 * i, &one, 4);   /* also faults every page in */
    memset(b, 0, cap);

    /* memory: memcpy and the streaming read alternate */
    double tc[64], tr[64];
    int reps = o.reps > 64 ? 64 : o.reps;
    par_memcpy(b, a, cap);
    for (int r = 0; r < reps; r++) {
        double t0 = krn_now_s();
        par_memcpy(b, a, cap);
        double t1 = krn_now_s();
        sink = stream_sum((const float *)a, cap / 4);
        tc[r] = t1 - t0;
        tr[r] = krn_now_s() - t1;
    }
    double copy_gbs = 2.0 * cap / median(tc, reps) / 1e9, read_gbs = cap / median(tr, reps) / 1e9;
    emit(&o, "memcpy", "mib=%zu gb_s=%.2f gb_s_best=%.2f copied_gb_s=%.2f", o.mb, copy_gbs,
         2.0 * cap / minimum(tc, reps) / 1e9, copy_gbs / 2);
    emit(&o, "read", "mib=%zu gb_s=%.2f gb_s_best=%.2f", o.mb, read_gbs, cap / minimum(tr, reps) / 1e9);
    /* where the caches end: one thread reading growing buffers (~1 GiB in all per size; one
     * thread, so that no fork/join hides the small sizes) */
    omp_set_num_threads(1);
    for (size_t mib = 1; mib <= o.mb; mib *= 4) {
        double med, best;
        size_t bytes = mib << 20;
        int n = (int)((size_t)1 << 30) / (int)bytes;
        n = n < 3 ? 3 : n > 64 ? 64 : n;
        time_read(a, bytes, n, &med, &best);   /* first pass warms, the median ignores it */
        emit(&o, "read_size", "threads=1 mib=%zu gb_s=%.2f gb_s_best=%.2f", mib, bytes / med / 1e9, bytes / best / 1e9);
    }
    omp_set_num_threads(o.threads);

    /* what one fork/join of the team costs: a decode step runs a few hundred (every matvec) */
    {
        double t[64];
        int work[256];
        for (int r = 0; r < reps; r++) {
            double t0 = krn_now_s();
            for (int k = 0; k < 2000; k++) {
                #pragma omp parallel for schedule(static)
                for (int i = 0; i < 256; i++) work[i] = i;
            }
            t[r] = (krn_now_s() - t0) / 2000;
            sink = (float)work[255];
        }
        emit(&o, "omp_region", "threads=%d us=%.2f us_best=%.2f", o.threads, median(t, reps) * 1e6, minimum(t, reps) * 1e6);
    }

    bench_types(&o, a, cap, x, y);
    free(a); free(b); free(x); free(y);
    bench_matmul(&o);

    if (o.model) rc = bench_model(&o, copy_gbs, read_gbs);
    else bench_attn(&o, 32768, 256, 4);
    return rc;
}
