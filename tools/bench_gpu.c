/* `kvseek bench-gpu`: bandwidth of the CUDA sparse-attention kernel over selected keys, with
 * the K/V pages in device memory, read in place from pinned host memory, or gathered on the CPU
 * into a pinned staging buffer and copied (the choice DESIGN.md leaves to measurement), plus the
 * dense range kernel over device pages. JSON lines on stdout. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_sparse.h"
#include "clock.h"
#include "gpu.h"
#include "quant.h"
#include "tools.h"

typedef struct {
    int64_t keys;
    int dim, group, reps;
    double select;
} opts;

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

/* Seconds per call of f over reps calls (after one warm-up), synchronised. */
#define TIME_IT(reps, call, out_s) do { \
        if ((call) || gpu_sync()) goto cuda_fail; \
        double t0_ = krn_now_s(); \
        for (int r_ = 0; r_ < (reps); r_++) if (call) goto cuda_fail; \
        if (gpu_sync()) goto cuda_fail; \
        (out_s) = (krn_now_s() - t0_) / (reps); \
    } while (0)

static void usage(void) {
    printf("usage: kvseek bench-gpu [--keys N (131072)] [--dim D (128)] [--group G (4)]\n"
           "                        [--select F (0.02)] [--reps R (50)]\n"
           "  One KV head of N f16 keys and values in pages of 64 rows; the group's G queries attend\n"
           "  F * N random sorted ids. Prints GB/s of K+V rows read for: pages in device memory,\n"
           "  pages in pinned host memory read in place, CPU gather into pinned staging + copy +\n"
           "  kernel, and the dense kernel over all N keys in device memory.\n");
}

int tool_bench_gpu_main(int argc, char **argv) {
    opts o = {131072, 128, 4, 50, 0.02};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        if (!v) { fprintf(stderr, "error: %s needs a value (see kvseek bench-gpu --help)\n", a); return 2; }
        char *end;
        double x = strtod(v, &end);
        if (end == v || *end || !isfinite(x) || x <= 0) {
            fprintf(stderr, "error: %s: '%s' is not a positive number\n", a, v);
            return 2;
        }
        if (!strcmp(a, "--keys")) o.keys = (int64_t)x;
        else if (!strcmp(a, "--dim")) o.dim = (int)x;
        else if (!strcmp(a, "--group")) o.group = (int)x;
        else if (!strcmp(a, "--select")) o.select = x;
        else if (!strcmp(a, "--reps")) o.reps = (int)x;
        else { fprintf(stderr, "error: unknown option %s (see kvseek bench-gpu --help)\n", a); return 2; }
        i++;
    }
    if (o.dim > 256 || o.dim % 8 || o.group > ATTN_MAX_GROUP || o.select > 1 || o.keys < 64) {
        fprintf(stderr, "error: need dim <= 256 (a multiple of 8), group <= %d, select <= 1, keys >= 64\n",
                ATTN_MAX_GROUP);
        return 2;
    }
    char err[256];
    if (gpu_device_count(err, sizeof err) <= 0) {
        printf("{\"bench\": \"gpu\", \"skipped\": \"no CUDA device: %s\"}\n", err);
        return 0;
    }
    if (gpu_init(0, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    enum { PS = 64 };
    const int64_t n_pages = (o.keys + PS - 1) / PS;
    const size_t row = (size_t)o.dim * 2, pb = 2 * PS * row; /* K rows then V rows, f16 */
    const int64_t n_sel = (int64_t)(o.select * o.keys) > 0 ? (int64_t)(o.select * o.keys) : 1;
    int rc = 1;
    char *host = gpu_host_alloc((size_t)n_pages * pb), *dev = gpu_alloc((size_t)n_pages * pb);
    void **tbl_dev = gpu_host_alloc(sizeof(void *) * n_pages), **tbl_host = gpu_host_alloc(sizeof(void *) * n_pages);
    int32_t *ids = gpu_host_alloc(sizeof(int32_t) * n_sel);
    char *stage_h = gpu_host_alloc((size_t)n_sel * 2 * row), *stage_d = gpu_alloc((size_t)n_sel * 2 * row);
    void **tbl_stage = gpu_host_alloc(sizeof(void *));
    float *q = gpu_alloc(sizeof(float) * o.group * o.dim), *out = gpu_alloc(sizeof(float) * o.group * o.dim);
    float *lse = gpu_alloc(sizeof(float) * o.group);
    gpu_attn_job *job = gpu_host_alloc(sizeof *job);
    /* what the kernel reads once per key tile lives on the device, as in the engine */
    void **d_tbl_dev = gpu_alloc(sizeof(void *) * n_pages), **d_tbl_host = gpu_alloc(sizeof(void *) * n_pages);
    void **d_tbl_stage = gpu_alloc(sizeof(void *));
    int32_t *d_ids = gpu_alloc(sizeof(int32_t) * n_sel);
    gpu_attn_job *d_job = gpu_alloc(sizeof *d_job);
    if (!host || !dev || !tbl_dev || !tbl_host || !ids || !stage_h || !stage_d || !tbl_stage || !q || !out ||
        !lse || !job || !d_tbl_dev || !d_tbl_host || !d_tbl_stage || !d_ids || !d_job) {
        fprintf(stderr, "error: allocating the benchmark's buffers: %s\n", gpu_last_error());
        goto done;
    }
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    uint16_t *h16 = (uint16_t *)host;
    for (size_t i = 0; i < (size_t)n_pages * pb / 2; i++)
        h16[i] = krn_f32_to_f16((float)((rng_next(&seed) >> 40) / 16777216.0 - 0.5));
    float *qh = malloc(sizeof(float) * o.group * o.dim);
    if (!qh) goto done;
    for (int i = 0; i < o.group * o.dim; i++) qh[i] = (float)((rng_next(&seed) >> 40) / 16777216.0 - 0.5);
    if (gpu_h2d(q, qh, sizeof(float) * o.group * o.dim) || gpu_h2d(dev, host, (size_t)n_pages * pb)) {
        free(qh);
        goto cuda_fail;
    }
    free(qh);
    for (int64_t i = 0; i < n_pages; i++) {
        tbl_host[i] = host + (size_t)i * pb;
        tbl_dev[i] = dev + (size_t)i * pb;
    }
    /* n_sel distinct sorted ids: every (keys / n_sel)-th key with a random offset in its stride */
    for (int64_t j = 0; j < n_sel; j++) {
        int64_t lo = o.keys * j / n_sel, hi = o.keys * (j + 1) / n_sel;
        ids[j] = (int32_t)(lo + (int64_t)(rng_next(&seed) % (uint64_t)(hi - lo)));
    }
    if (gpu_h2d(d_tbl_dev, tbl_dev, sizeof(void *) * n_pages) ||
        gpu_h2d(d_tbl_host, tbl_host, sizeof(void *) * n_pages) || gpu_h2d(d_ids, ids, sizeof(int32_t) * n_sel))
        goto cuda_fail;
    attn_kv_view v = {.page_shift = 6, .k_off = 0, .v_off = PS * row, .k_stride = o.dim, .v_stride = o.dim,
                      .dk = o.dim, .dv = o.dim, .dtype = ATTN_F16};
    const float scale = 1.0f / sqrtf((float)o.dim);
    const double sel_bytes = (double)n_sel * 2 * row;
    double s_dev, s_host, s_stage, s_dense;

    memset(job, 0, sizeof *job);
    job->q = q; job->out = out; job->lse = lse; job->ids = d_ids; job->n_ids = n_sel;
    job->kv = v; job->kv.pages = (const void *const *)d_tbl_dev;
    if (gpu_h2d(d_job, job, sizeof *job)) goto cuda_fail;
    TIME_IT(o.reps, gpu_attn_decode(d_job, 1, o.group, scale, n_sel), s_dev);
    job->kv.pages = (const void *const *)d_tbl_host;
    if (gpu_h2d(d_job, job, sizeof *job)) goto cuda_fail;
    TIME_IT(o.reps, gpu_attn_decode(d_job, 1, o.group, scale, n_sel), s_host);

    /* gather: the selected rows into one "page" of n_sel rows (K rows, then V rows), copy, range */
    {
        const int shift = (int)ceil(log2((double)n_sel + 1));
        tbl_stage[0] = stage_d;
        if (gpu_h2d(d_tbl_stage, tbl_stage, sizeof(void *))) goto cuda_fail;
        double t0 = krn_now_s();
        for (int r = -1; r < o.reps; r++) {
            if (r == 0) t0 = krn_now_s();
            #pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < n_sel; j++) {
                const char *pg = tbl_host[ids[j] >> 6];
                const size_t rr = (size_t)(ids[j] & (PS - 1));
                memcpy(stage_h + (size_t)j * row, pg + rr * row, row);
                memcpy(stage_h + (size_t)(n_sel + j) * row, pg + PS * row + rr * row, row);
            }
            gpu_attn_job js = *job;
            js.kv = v;
            js.kv.pages = (const void *const *)d_tbl_stage;
            js.kv.page_shift = shift;
            js.kv.v_off = (size_t)n_sel * row;
            js.ids = NULL; js.lo = 0; js.hi = n_sel; js.n_ids = 0;
            *job = js;
            if (gpu_h2d(stage_d, stage_h, (size_t)n_sel * 2 * row) || gpu_h2d(d_job, job, sizeof *job) ||
                gpu_attn_decode(d_job, 1, o.group, scale, n_sel) || gpu_sync())
                goto cuda_fail;
        }
        s_stage = (krn_now_s() - t0) / o.reps;
    }
    memset(job, 0, sizeof *job);
    job->q = q; job->out = out; job->lse = lse; job->lo = 0; job->hi = o.keys;
    job->kv = v; job->kv.pages = (const void *const *)d_tbl_dev;
    if (gpu_h2d(d_job, job, sizeof *job)) goto cuda_fail;
    TIME_IT(o.reps, gpu_attn_decode(d_job, 1, o.group, scale, o.keys), s_dense);

    printf("{\"bench\": \"gpu_attn\", \"gpu\": \"%s\", \"keys\": %lld, \"dim\": %d, \"group\": %d, \"selected\": %lld, "
           "\"selected_mb\": %.2f, \"device_pages_us\": %.1f, \"device_pages_gb_s\": %.1f, "
           "\"host_mapped_us\": %.1f, \"host_mapped_gb_s\": %.1f, \"cpu_gather_copy_us\": %.1f, "
           "\"cpu_gather_copy_gb_s\": %.1f, \"dense_device_us\": %.1f, \"dense_device_gb_s\": %.1f}\n",
           gpu_device_name(), (long long)o.keys, o.dim, o.group, (long long)n_sel, sel_bytes / 1e6,
           s_dev * 1e6, sel_bytes / s_dev / 1e9, s_host * 1e6, sel_bytes / s_host / 1e9, s_stage * 1e6,
           sel_bytes / s_stage / 1e9, s_dense * 1e6, (double)o.keys * 2 * row / s_dense / 1e9);
    rc = 0;
    goto done;
cuda_fail:
    fprintf(stderr, "error: CUDA: %s\n", gpu_last_error());
done:
    gpu_sync();
    gpu_host_free(host); gpu_free(dev); gpu_host_free(tbl_dev); gpu_host_free(tbl_host); gpu_host_free(ids);
    gpu_host_free(stage_h); gpu_free(stage_d); gpu_host_free(tbl_stage); gpu_free(q); gpu_free(out);
    gpu_free(lse); gpu_host_free(job);
    gpu_free(d_tbl_dev); gpu_free(d_tbl_host); gpu_free(d_tbl_stage); gpu_free(d_ids); gpu_free(d_job);
    return rc;
}
