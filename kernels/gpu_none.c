/* The CPU-only build's gpu.h: no device, and every call fails with the reason. `make CUDA=1`
 * replaces this file with kernels/gpu.cu and kernels/gpu_attn.cu. */
#include "gpu.h"

#include <stdio.h>

static const char no_cuda[] = "built without CUDA (make CUDA=1)";

static void say(char *err, size_t errlen) {
    if (err && errlen) snprintf(err, errlen, "%s", no_cuda);
}

int gpu_compiled(void) { return 0; }
int gpu_device_count(char *err, size_t errlen) { say(err, errlen); return 0; }
int gpu_init(int device, char *err, size_t errlen) { (void)device; say(err, errlen); return -1; }
void gpu_shutdown(void) {}
const char *gpu_device_name(void) { return ""; }
int gpu_mem_info(size_t *free_bytes, size_t *total_bytes) {
    (void)free_bytes; (void)total_bytes;
    return -1;
}
const char *gpu_last_error(void) { return no_cuda; }

void *gpu_alloc(size_t bytes) { (void)bytes; return NULL; }
void gpu_free(void *p) { (void)p; }
void *gpu_host_alloc(size_t bytes) { (void)bytes; return NULL; }
void gpu_host_free(void *p) { (void)p; }
int gpu_h2d(void *dst, const void *src, size_t bytes) { (void)dst; (void)src; (void)bytes; return -1; }
int gpu_d2h(void *dst, const void *src, size_t bytes) { (void)dst; (void)src; (void)bytes; return -1; }
int gpu_memset0(void *dst, size_t bytes) { (void)dst; (void)bytes; return -1; }
int gpu_sync(void) { return -1; }

gpu_weight *gpu_weight_upload(uint32_t type, const void *data, int64_t n_rows, int64_t n_cols,
                              char *err, size_t errlen) {
    (void)type; (void)data; (void)n_rows; (void)n_cols;
    say(err, errlen);
    return NULL;
}
void gpu_weight_free(gpu_weight *w) { (void)w; }
size_t gpu_weight_bytes(const gpu_weight *w) { (void)w; return 0; }
int gpu_matmul(const gpu_weight *w, const float *X, int T, float *Y) {
    (void)w; (void)X; (void)T; (void)Y;
    return -1;
}
int gpu_embed(const gpu_weight *w, const int32_t *ids, int T, float scale, float *x) {
    (void)w; (void)ids; (void)T; (void)scale; (void)x;
    return -1;
}

int gpu_rmsnorm(float *y, const float *x, const float *w, int rows, int n, float eps) {
    (void)y; (void)x; (void)w; (void)rows; (void)n; (void)eps;
    return -1;
}
int gpu_rope(float *x, int rows, int n_heads, int head_dim, int n_rot, const int32_t *pos,
             float base, float freq_scale, const float *factors, int neox) {
    (void)x; (void)rows; (void)n_heads; (void)head_dim; (void)n_rot; (void)pos; (void)base;
    (void)freq_scale; (void)factors; (void)neox;
    return -1;
}
int gpu_glu(float *out, const float *gate, const float *up, int64_t n, int gelu) {
    (void)out; (void)gate; (void)up; (void)n; (void)gelu;
    return -1;
}
int gpu_add(float *x, const float *y, int64_t n) { (void)x; (void)y; (void)n; return -1; }
int gpu_add_bias(float *y, const float *b, int rows, int n) {
    (void)y; (void)b; (void)rows; (void)n;
    return -1;
}
int gpu_softcap(float *x, int64_t n, float cap) { (void)x; (void)n; (void)cap; return -1; }

int gpu_attn_decode(const gpu_attn_job *jobs, int n_jobs, int n_q, float scale, int64_t max_keys) {
    (void)jobs; (void)n_jobs; (void)n_q; (void)scale; (void)max_keys;
    return -1;
}
int gpu_attn_merge(float *o_a, float *lse_a, const float *o_b, const float *lse_b, int n, int dv) {
    (void)o_a; (void)lse_a; (void)o_b; (void)lse_b; (void)n; (void)dv;
    return -1;
}
int gpu_attn_prefill(const attn_kv_view *views, int n_head_kv, const float *q, int T, int n_head,
                     int64_t pos0, int64_t window, float scale, float *out) {
    (void)views; (void)n_head_kv; (void)q; (void)T; (void)n_head; (void)pos0; (void)window;
    (void)scale; (void)out;
    return -1;
}
size_t gpu_attn_prefill_gemm_bytes(int n_head_kv, int64_t n_keys, int T, int n_head, int dk, int dv) {
    (void)n_head_kv; (void)n_keys; (void)T; (void)n_head; (void)dk; (void)dv;
    return 0;
}
int gpu_attn_prefill_gemm(const attn_kv_view *views, int n_head_kv, const float *q, int T,
                          int n_head, int64_t pos0, int64_t window, float scale, float *out) {
    (void)views; (void)n_head_kv; (void)q; (void)T; (void)n_head; (void)pos0; (void)window;
    (void)scale; (void)out;
    return -1;
}
int gpu_scores(const float *q, int n_q, const float *C, int64_t n, int dim, float *scores) {
    (void)q; (void)n_q; (void)C; (void)n; (void)dim; (void)scores;
    return -1;
}
