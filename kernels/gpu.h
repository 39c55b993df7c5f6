/* The CUDA backend: device memory, weights uploaded as f16 for cuBLAS, and the GPU twins of the
 * forward pass's CPU kernels (ops.h, attn_sparse.h, quant.h's matmul, centroid scoring).
 * `make CUDA=1` builds it from kernels/gpu*.cu; otherwise kernels/gpu_none.c answers
 * gpu_compiled() == 0, gpu_device_count() == 0 and fails every other call with a reason.
 * Threading: one host thread drives the backend (the engine's); every kernel call is queued on
 * one CUDA stream and returns at once. Calls return 0, or -1 with gpu_last_error() set. */
#ifndef KVSEEK_GPU_H
#define KVSEEK_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "attn_sparse.h"

/* ---- runtime ---- */

int gpu_compiled(void);                               /* 1 when built with CUDA=1 */
/* Devices usable now; 0 with the reason in err when none (no driver, no device, CPU build). */
int gpu_device_count(char *err, size_t errlen);
/* Selects the device and creates the stream and the cuBLAS handle; a second call is a no-op. */
int gpu_init(int device, char *err, size_t errlen);
void gpu_shutdown(void);                              /* frees the backend's own buffers */
const char *gpu_device_name(void);                    /* "" before gpu_init */
int gpu_mem_info(size_t *free_bytes, size_t *total_bytes);
const char *gpu_last_error(void);

void *gpu_alloc(size_t bytes);                        /* device memory; NULL on failure */
void gpu_free(void *p);                               /* accepts NULL */
/* Pinned, mapped host memory: the same address is valid on the host and on the device (UVA),
 * so kernels read it over the bus without a copy. NULL on failure. */
void *gpu_host_alloc(size_t bytes);
void gpu_host_free(void *p);                          /* accepts NULL */
int gpu_h2d(void *dst, const void *src, size_t bytes);  /* queued on the stream */
int gpu_d2h(void *dst, const void *src, size_t bytes);  /* queued; valid after gpu_sync */
int gpu_memset0(void *dst, size_t bytes);
int gpu_sync(void);                                   /* waits for the stream */

/* ---- weights ---- */

typedef struct gpu_weight gpu_weight;
/* Uploads a weight matrix of n_rows x n_cols elements of a quant.h type (rows contiguous, as
 * in the GGUF file), dequantized on the host to f16. NULL and a reason on failure. */
gpu_weight *gpu_weight_upload(uint32_t type, const void *data, int64_t n_rows, int64_t n_cols,
                              char *err, size_t errlen);
void gpu_weight_free(gpu_weight *w);                  /* accepts NULL */
size_t gpu_weight_bytes(const gpu_weight *w);         /* device bytes */
/* Y[t][r] = dot(W row r, X[t]) for t < T: X (T, n_cols) and Y (T, n_rows), f32, device, row
 * major. cuBLAS with f16 inputs (X rounded to f16 in a scratch buffer) and f32 accumulation. */
int gpu_matmul(const gpu_weight *w, const float *X, int T, float *Y);
/* x[t] = (W row ids[t]) * scale for t < T: the embedding lookup; ids device, x (T, n_cols). */
int gpu_embed(const gpu_weight *w, const int32_t *ids, int T, float scale, float *x);

/* ---- element-wise and row-wise (all pointers device) ---- */

/* krn_rmsnorm over `rows` rows of n: y = x / sqrt(mean(x^2) + eps) * w (w NULL: no weight). */
int gpu_rmsnorm(float *y, const float *x, const float *w, int rows, int n, float eps);
/* krn_rope_angles + krn_rope for x (rows, n_heads, head_dim): row r at position pos[r]. */
int gpu_rope(float *x, int rows, int n_heads, int head_dim, int n_rot, const int32_t *pos,
             float base, float freq_scale, const float *factors, int neox);
/* krn_glu: out[i] = act(gate[i]) * up[i], GELU-tanh when gelu else SiLU. out may be gate. */
int gpu_glu(float *out, const float *gate, const float *up, int64_t n, int gelu);
int gpu_add(float *x, const float *y, int64_t n);                  /* x += y */
int gpu_add_bias(float *y, const float *b, int rows, int n);      /* y[r] += b for each row */
int gpu_softcap(float *x, int64_t n, float cap);                  /* x = cap * tanh(x / cap) */

/* ---- attention ----
 * Views are attn_kv_view (attn_sparse.h) whose `pages` table and pages are device-visible:
 * device memory or gpu_host_alloc memory. Head dims up to 256, groups up to ATTN_MAX_GROUP. */

/* One decode attention: n_q queries of a GQA group against positions [lo, hi) of kv, or
 * against the ids[0..n_ids) when ids is not NULL; out = softmax-weighted V rows, lse = log-sum-
 * exp, as attn_range / attn_ids (empty: out 0, lse -inf). q, out, lse device; ids
 * device-visible. */
typedef struct {
    attn_kv_view kv;
    const float *q;      /* (n_q, kv.dk) */
    float *out;          /* (n_q, kv.dv) */
    float *lse;          /* (n_q) */
    int64_t lo, hi;
    const int32_t *ids;
    int64_t n_ids;
    float lse_add;       /* added to a non-empty job's lse (a sampled part's log weight); 0: none */
} gpu_attn_job;

/* Runs n_jobs jobs (the array itself in device-visible memory) in one launch, split-K across
 * blocks with an online softmax, partial results merged by log-sum-exp. max_keys bounds every
 * job's key count (hi - lo or n_ids) and sizes the split. */
int gpu_attn_decode(const gpu_attn_job *jobs, int n_jobs, int n_q, float scale, int64_t max_keys);

/* (o_a, lse_a) += (o_b, lse_b) for n rows of dv: attn_merge. */
int gpu_attn_merge(float *o_a, float *lse_a, const float *o_b, const float *lse_b, int n, int dv);

/* Causal attention of T consecutive rows of one sequence at positions pos0 .. pos0 + T - 1:
 * query head h of row t (q (T, n_head, dk)) attends positions [max(0, p - window + 1), p] of
 * views[h / (n_head / n_head_kv)] (window 0: [0, p]); out (T, n_head, dv). views is a host
 * array of n_head_kv views. Query rows are tiled so each K/V row is read once per tile. */
int gpu_attn_prefill(const attn_kv_view *views, int n_head_kv, const float *q, int T, int n_head,
                     int64_t pos0, int64_t window, float scale, float *out);

/* The attention of gpu_attn_prefill on tensor cores: the keys [max(0, pos0 - window + 1),
 * pos0 + T) of every view are gathered into contiguous f16 K and V (read over the bus where
 * the pages are host memory), then per query head S = (scale q) K^T (cuBLAS, f16 inputs, f32
 * sums), a masked softmax to f16 P, and out = P V. Device scratch of
 * gpu_attn_prefill_gemm_bytes(), kept until gpu_shutdown. q and the probabilities are rounded
 * to f16, so out differs from gpu_attn_prefill's by about 1e-3 of |V|. */
size_t gpu_attn_prefill_gemm_bytes(int n_head_kv, int64_t n_keys, int T, int n_head, int dk, int dv);
int gpu_attn_prefill_gemm(const attn_kv_view *views, int n_head_kv, const float *q, int T,
                          int n_head, int64_t pos0, int64_t window, float scale, float *out);

/* scores[g * n + j] = q_g . C_j for g < n_q, j < n: the centroid scoring of the centroids
 * selector (C (n, dim), q (n_q, dim), scores (n_q, n), all device). */
int gpu_scores(const float *q, int n_q, const float *C, int64_t n, int dim, float *scores);

#endif
