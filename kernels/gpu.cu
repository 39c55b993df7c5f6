/* The CUDA backend's runtime (device, stream, cuBLAS handle, memory, errors), the weights (host
 * dequantization to f16, upload by pinned slabs) with their cuBLAS matmul and embedding lookup,
 * and the element-wise kernels of the forward pass. Attention lives in gpu_attn.cu.
 * Workload: one engine thread queues everything on one stream; hot calls allocate nothing (the
 * scratch buffers below grow to the largest call and stay until gpu_shutdown).
 * defines: everything of gpu.h but the attention entry points and gpu_scores */
extern "C" {
#include "gpu.h"
#include "quant.h"
}

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_priv.cuh"

/* ---- state and errors ----------------------------------------------------------------- */

static char g_err[512];
static char g_name[256];
static int g_ready, g_sm_count;
static cudaStream_t g_stream;
static cublasHandle_t g_cublas;

enum { STAGE_BYTES = 64 << 20 };          /* pinned slab for weight uploads (two of them) */
static void *g_stage[2];
static cudaEvent_t g_stage_ev[2];
static void *g_scratch[GPU_SCR_COUNT];
static size_t g_scratch_bytes[GPU_SCR_COUNT];

int gpu_priv_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return -1;
}

int gpu_priv_ready(void) {
    if (!g_ready) return gpu_priv_fail("gpu_init has not been called");
    return 0;
}

cudaStream_t gpu_priv_stream(void) { return g_stream; }
cublasHandle_t gpu_priv_cublas(void) { return g_cublas; }
int gpu_priv_sm_count(void) { return g_sm_count; }

const char *gpu_priv_cublas_str(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "alloc failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "arch mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown cuBLAS status";
    }
}

/* A device buffer of at least `bytes` for one scratch slot; grows by a quarter more than asked,
 * after the stream drained (queued kernels may still read the old one). NULL on failure. */
void *gpu_priv_scratch(int slot, size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (g_scratch_bytes[slot] >= bytes) return g_scratch[slot];
    cudaError_t e = cudaStreamSynchronize(g_stream);
    if (e != cudaSuccess) {
        gpu_priv_fail("scratch: cudaStreamSynchronize: %s", cudaGetErrorString(e));
        return NULL;
    }
    cudaFree(g_scratch[slot]);
    g_scratch[slot] = NULL;
    g_scratch_bytes[slot] = 0;
    size_t want = bytes + bytes / 4;
    e = cudaMalloc(&g_scratch[slot], want);
    if (e != cudaSuccess) {
        g_scratch[slot] = NULL;
        gpu_priv_fail("scratch: cudaMalloc(%zu): %s", want, cudaGetErrorString(e));
        return NULL;
    }
    g_scratch_bytes[slot] = want;
    return g_scratch[slot];
}

/* ---- runtime -------------------------------------------------------------------------- */

extern "C" int gpu_compiled(void) { return 1; }

extern "C" int gpu_device_count(char *err, size_t errlen) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();   /* clear it: a CPU-only run goes on */
        if (err && errlen) snprintf(err, errlen, "no CUDA device (%s)", cudaGetErrorString(e));
        return 0;
    }
    if (n <= 0) {
        if (err && errlen) snprintf(err, errlen, "no CUDA device");
        return 0;
    }
    if (err && errlen) err[0] = '\0';
    return n;
}

static int init_fail(char *err, size_t errlen) {
    if (err && errlen) snprintf(err, errlen, "%s", g_err);
    if (g_cublas) cublasDestroy(g_cublas);
    if (g_stream) cudaStreamDestroy(g_stream);
    g_cublas = NULL;
    g_stream = NULL;
    return -1;
}

extern "C" int gpu_init(int device, char *err, size_t errlen) {
    if (g_ready) return 0;
    char why[256];
    int n = gpu_device_count(why, sizeof why);
    if (n == 0) {
        gpu_priv_fail("%s", why);
        return init_fail(err, errlen);
    }
    if (device < 0 || device >= n) {
        gpu_priv_fail("CUDA device %d does not exist (%d found)", device, n);
        return init_fail(err, errlen);
    }
    cudaError_t e = cudaSetDevice(device);
    cudaDeviceProp prop;
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        gpu_priv_fail("gpu_init(%d): %s", device, cudaGetErrorString(e));
        return init_fail(err, errlen);
    }
    if (!prop.canMapHostMemory || !prop.unifiedAddressing) {
        gpu_priv_fail("CUDA device %d (%s) cannot map host memory", device, prop.name);
        return init_fail(err, errlen);
    }
    cublasStatus_t s = cublasCreate(&g_cublas);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(g_cublas, g_stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
        gpu_priv_fail("cublasCreate: %s", gpu_priv_cublas_str(s));
        return init_fail(err, errlen);
    }
    snprintf(g_name, sizeof g_name, "%s", prop.name);
    g_sm_count = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    g_ready = 1;
    if (err && errlen) err[0] = '\0';
    return 0;
}

extern "C" void gpu_shutdown(void) {
    if (!g_ready) return;
    cudaStreamSynchronize(g_stream);
    for (int i = 0; i < GPU_SCR_COUNT; i++) {
        cudaFree(g_scratch[i]);
        g_scratch[i] = NULL;
        g_scratch_bytes[i] = 0;
    }
    for (int b = 0; b < 2; b++) {
        if (g_stage[b]) cudaFreeHost(g_stage[b]);
        if (g_stage_ev[b]) cudaEventDestroy(g_stage_ev[b]);
        g_stage[b] = NULL;
        g_stage_ev[b] = NULL;
    }
    cublasDestroy(g_cublas);
    cudaStreamDestroy(g_stream);
    g_cublas = NULL;
    g_stream = NULL;
    g_name[0] = '\0';
    g_ready = 0;
}

extern "C" const char *gpu_device_name(void) { return g_name; }

extern "C" int gpu_mem_info(size_t *free_bytes, size_t *total_bytes) {
    if (gpu_priv_ready()) return -1;
    size_t f = 0, t = 0;
    GPU_TRY(cudaMemGetInfo(&f, &t));
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return 0;
}

extern "C" const char *gpu_last_error(void) { return g_err; }

/* What an allocation of `bytes` by the CUDA call `what` gives: p, or NULL with the error
 * recorded (gpu_last_error). */
static void *alloc_result(cudaError_t e, void *p, const char *what, size_t bytes) {
    if (e == cudaSuccess) return p;
    gpu_priv_fail("%s(%zu): %s", what, bytes, cudaGetErrorString(e));
    return NULL;
}

extern "C" void *gpu_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    return alloc_result(e, p, "cudaMalloc", bytes);
}

extern "C" void gpu_free(void *p) {
    if (p) cudaFree(p);
}

extern "C" void *gpu_host_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocMapped | cudaHostAllocPortable);
    return alloc_result(e, p, "cudaHostAlloc", bytes);
}

extern "C" void gpu_host_free(void *p) {
    if (p) cudaFreeHost(p);
}

extern "C" int gpu_h2d(void *dst, const void *src, size_t bytes) {
    if (gpu_priv_ready()) return -1;
    if (!bytes) return 0;
    GPU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream));
    return 0;
}

extern "C" int gpu_d2h(void *dst, const void *src, size_t bytes) {
    if (gpu_priv_ready()) return -1;
    if (!bytes) return 0;
    GPU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream));
    return 0;
}

extern "C" int gpu_memset0(void *dst, size_t bytes) {
    if (gpu_priv_ready()) return -1;
    if (!bytes) return 0;
    GPU_TRY(cudaMemsetAsync(dst, 0, bytes, g_stream));
    return 0;
}

extern "C" int gpu_sync(void) {
    if (gpu_priv_ready()) return -1;
    GPU_TRY(cudaStreamSynchronize(g_stream));
    return 0;
}

/* ---- weights -------------------------------------------------------------------------- */

struct gpu_weight {
    __half *d;          /* (rows, cols) f16, row major */
    int64_t rows, cols;
    uint32_t type;      /* the type it was uploaded from */
};

static int weight_fail(char *err, size_t errlen) {
    if (err && errlen) snprintf(err, errlen, "%s", g_err);
    return -1;
}

/* Dequantizes rows [r0, r0 + nr) of W into f16 at dst (host), OpenMP across rows. */
static int dequant_rows(uint32_t type, const void *data, int64_t r0, int64_t nr, int64_t cols,
                        uint16_t *dst) {
    const size_t rb = krn_row_bytes(type, cols);
    int bad = 0;
    #pragma omp parallel
    {
        float *row = (float *)malloc(sizeof(float) * (size_t)cols);
        if (!row) {
            #pragma omp atomic write
            bad = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < nr; r++) {
            if (!row) continue;
            krn_dequantize_row(type, (const char *)data + (size_t)(r0 + r) * rb, row, cols);
            uint16_t *o = dst + (size_t)r * (size_t)cols;
            for (int64_t i = 0; i < cols; i++) o[i] = krn_f32_to_f16(row[i]);
        }
        free(row);
    }
    return bad ? gpu_priv_fail("weight upload: out of host memory") : 0;
}

extern "C" gpu_weight *gpu_weight_upload(uint32_t type, const void *data, int64_t n_rows,
                                         int64_t n_cols, char *err, size_t errlen) {
    if (gpu_priv_ready()) { weight_fail(err, errlen); return NULL; }
    if (!krn_type_supported(type)) {
        gpu_priv_fail("weight upload: unsupported type %u", type);
        weight_fail(err, errlen);
        return NULL;
    }
    if (n_rows <= 0 || n_cols <= 0 || n_cols % krn_type_block_size(type) || n_rows > INT32_MAX ||
        n_cols > INT32_MAX) {
        gpu_priv_fail("weight upload: bad shape %lld x %lld for %s", (long long)n_rows,
                      (long long)n_cols, krn_type_name(type));
        weight_fail(err, errlen);
        return NULL;
    }
    gpu_weight *w = (gpu_weight *)calloc(1, sizeof *w);
    if (!w) {
        gpu_priv_fail("weight upload: out of host memory");
        weight_fail(err, errlen);
        return NULL;
    }
    w->rows = n_rows;
    w->cols = n_cols;
    w->type = type;
    const size_t row_f16 = (size_t)n_cols * sizeof(__half);
    cudaError_t e = cudaMalloc(&w->d, (size_t)n_rows * row_f16);
    if (e != cudaSuccess) {
        w->d = NULL;
        gpu_priv_fail("weight upload: cudaMalloc(%zu): %s", (size_t)n_rows * row_f16,
                      cudaGetErrorString(e));
        goto fail;
    }
    for (int b = 0; b < 2; b++) {
        if (!g_stage[b]) {
            e = cudaHostAlloc(&g_stage[b], STAGE_BYTES, cudaHostAllocDefault);
            if (e == cudaSuccess) e = cudaEventCreateWithFlags(&g_stage_ev[b], cudaEventDisableTiming);
            if (e != cudaSuccess) {
                if (g_stage[b]) cudaFreeHost(g_stage[b]);
                g_stage[b] = NULL;
                g_stage_ev[b] = NULL;
                gpu_priv_fail("weight upload: pinned staging: %s", cudaGetErrorString(e));
                goto fail;
            }
        }
    }
    {
        /* slabs of whole rows; a row longer than a slab is impossible for real models (32M cols) */
        int64_t slab_rows = (int64_t)(STAGE_BYTES / row_f16);
        if (slab_rows < 1) {
            gpu_priv_fail("weight upload: rows of %lld columns exceed the staging slab",
                          (long long)n_cols);
            goto fail;
        }
        int b = 0;
        for (int64_t r0 = 0; r0 < n_rows; r0 += slab_rows, b ^= 1) {
            int64_t nr = n_rows - r0 < slab_rows ? n_rows - r0 : slab_rows;
            e = cudaEventSynchronize(g_stage_ev[b]);   /* the copy that last read this slab */
            if (e != cudaSuccess) {
                gpu_priv_fail("weight upload: %s", cudaGetErrorString(e));
                goto fail;
            }
            if (dequant_rows(type, data, r0, nr, n_cols, (uint16_t *)g_stage[b])) goto fail;
            e = cudaMemcpyAsync((char *)w->d + (size_t)r0 * row_f16, g_stage[b], (size_t)nr * row_f16,
                                cudaMemcpyHostToDevice, g_stream);
            if (e == cudaSuccess) e = cudaEventRecord(g_stage_ev[b], g_stream);
            if (e != cudaSuccess) {
                gpu_priv_fail("weight upload: cudaMemcpyAsync: %s", cudaGetErrorString(e));
                goto fail;
            }
        }
        e = cudaStreamSynchronize(g_stream);
        if (e != cudaSuccess) {
            gpu_priv_fail("weight upload: %s", cudaGetErrorString(e));
            goto fail;
        }
    }
    if (err && errlen) err[0] = '\0';
    return w;
fail:
    cudaStreamSynchronize(g_stream);
    if (w->d) cudaFree(w->d);
    free(w);
    weight_fail(err, errlen);
    return NULL;
}

extern "C" void gpu_weight_free(gpu_weight *w) {
    if (!w) return;
    if (w->d) {
        cudaStreamSynchronize(g_stream);   /* queued matmuls may still read it */
        cudaFree(w->d);
    }
    free(w);
}

extern "C" size_t gpu_weight_bytes(const gpu_weight *w) {
    return w ? (size_t)w->rows * (size_t)w->cols * sizeof(__half) : 0;
}

/* Blocks for a grid-stride loop over n elements. */
static unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b > 65536) b = 65536;
    return (unsigned)(b < 1 ? 1 : b);
}

/* f32 -> f16, saturated at the f16 range (an inf in the product would poison the whole row). */
__global__ void k_to_f16(__half *y, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        v = fminf(fmaxf(v, -65504.0f), 65504.0f);   /* NaN stays NaN */
        y[i] = __float2half_rn(v);
    }
}

extern "C" int gpu_matmul(const gpu_weight *w, const float *X, int T, float *Y) {
    if (gpu_priv_ready()) return -1;
    if (!w || T < 0) return gpu_priv_fail("gpu_matmul: bad arguments");
    if (T == 0) return 0;
    const int64_t n = (int64_t)T * w->cols;
    __half *xh = (__half *)gpu_priv_scratch(GPU_SCR_XH, (size_t)n * sizeof(__half));
    if (!xh) return -1;
    k_to_f16<<<grid_for(n, 256), 256, 0, g_stream>>>(xh, X, n);
    GPU_TRY(cudaGetLastError());
    /* Column-major view: W is (cols x rows), X is (cols x T), Y is (rows x T): Y = W^T X. */
    const float one = 1.0f, zero = 0.0f;
    GPU_TRY_BLAS(cublasGemmEx(g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->rows, T, (int)w->cols,
                              &one, w->d, CUDA_R_16F, (int)w->cols, xh, CUDA_R_16F, (int)w->cols,
                              &zero, Y, CUDA_R_32F, (int)w->rows, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    return 0;
}

__global__ void k_embed(float *x, const __half *W, const int32_t *ids, int64_t rows, int64_t cols,
                        float scale) {
    const int64_t t = blockIdx.x;
    const int32_t id = ids[t];
    float *o = x + t * cols;
    if (id < 0 || id >= rows) {   /* visible, not a wild read */
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = NAN;
        return;
    }
    const __half *r = W + (int64_t)id * cols;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = __half2float(r[i]) * scale;
}

extern "C" int gpu_embed(const gpu_weight *w, const int32_t *ids, int T, float scale, float *x) {
    if (gpu_priv_ready()) return -1;
    if (!w || T < 0) return gpu_priv_fail("gpu_embed: bad arguments");
    if (T == 0) return 0;
    k_embed<<<T, 256, 0, g_stream>>>(x, w->d, ids, w->rows, w->cols, scale);
    GPU_TRY(cudaGetLastError());
    return 0;
}

/* ---- element-wise and row-wise -------------------------------------------------------- */

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? part[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

__global__ void k_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = y + (int64_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);   /* its barriers also order the reads above before the writes below */
    const float r = (float)(1.0 / sqrt((double)ss / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w ? xr[i] * r * w[i] : xr[i] * r;
}

extern "C" int gpu_rmsnorm(float *y, const float *x, const float *w, int rows, int n, float eps) {
    if (gpu_priv_ready()) return -1;
    if (rows < 0 || n <= 0) return gpu_priv_fail("gpu_rmsnorm: bad shape %d x %d", rows, n);
    if (rows == 0) return 0;
    k_rmsnorm<<<rows, 256, 0, g_stream>>>(y, x, w, n, eps);
    GPU_TRY(cudaGetLastError());
    return 0;
}

/* One block per row: the n_rot/2 angles in double as krn_rope_angles, then every head. */
__global__ void k_rope(float *x, int n_heads, int head_dim, int n_rot, const int32_t *pos,
                       float base, float freq_scale, const float *factors, int neox) {
    extern __shared__ float cs[];   /* cos[half], sin[half] */
    const int half = n_rot / 2;
    const int64_t p = pos[blockIdx.x];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double inv = pow((double)base, -2.0 * i / n_rot) * freq_scale;
        if (factors) inv /= factors[i];
        double th = (double)p * inv;
        cs[i] = (float)cos(th);
        cs[half + i] = (float)sin(th);
    }
    __syncthreads();
    float *xr = x + (int64_t)blockIdx.x * n_heads * head_dim;
    for (int e = threadIdx.x; e < n_heads * half; e += blockDim.x) {
        const int h = e / half, i = e % half;
        float *xh = xr + (int64_t)h * head_dim;
        const int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        const float a = xh[ia], b = xh[ib], c = cs[i], s = cs[half + i];
        xh[ia] = a * c - b * s;
        xh[ib] = a * s + b * c;
    }
}

extern "C" int gpu_rope(float *x, int rows, int n_heads, int head_dim, int n_rot,
                        const int32_t *pos, float base, float freq_scale, const float *factors,
                        int neox) {
    if (gpu_priv_ready()) return -1;
    if (rows < 0 || n_heads <= 0 || n_rot < 0 || n_rot > head_dim || n_rot % 2)
        return gpu_priv_fail("gpu_rope: bad shape (heads %d, head_dim %d, n_rot %d)", n_heads,
                             head_dim, n_rot);
    if (rows == 0 || n_rot == 0) return 0;
    k_rope<<<rows, 128, sizeof(float) * n_rot, g_stream>>>(x, n_heads, head_dim, n_rot, pos, base,
                                                           freq_scale, factors, neox);
    GPU_TRY(cudaGetLastError());
    return 0;
}

__global__ void k_glu(float *out, const float *gate, const float *up, int64_t n, int gelu) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        float a;
        if (gelu) a = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * g * (1.0f + 0.044715f * g * g)));
        else a = g / (1.0f + expf(-g));
        out[i] = a * up[i];
    }
}

extern "C" int gpu_glu(float *out, const float *gate, const float *up, int64_t n, int gelu) {
    if (gpu_priv_ready()) return -1;
    if (n <= 0) return 0;
    k_glu<<<grid_for(n, 256), 256, 0, g_stream>>>(out, gate, up, n, gelu);
    GPU_TRY(cudaGetLastError());
    return 0;
}

__global__ void k_add(float *x, const float *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

extern "C" int gpu_add(float *x, const float *y, int64_t n) {
    if (gpu_priv_ready()) return -1;
    if (n <= 0) return 0;
    k_add<<<grid_for(n, 256), 256, 0, g_stream>>>(x, y, n);
    GPU_TRY(cudaGetLastError());
    return 0;
}

__global__ void k_add_bias(float *y, const float *b, int64_t total, int n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] += b[i % n];
}

extern "C" int gpu_add_bias(float *y, const float *b, int rows, int n) {
    if (gpu_priv_ready()) return -1;
    if (rows <= 0 || n <= 0) return 0;
    const int64_t total = (int64_t)rows * n;
    k_add_bias<<<grid_for(total, 256), 256, 0, g_stream>>>(y, b, total, n);
    GPU_TRY(cudaGetLastError());
    return 0;
}

__global__ void k_softcap(float *x, int64_t n, float cap) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}

extern "C" int gpu_softcap(float *x, int64_t n, float cap) {
    if (gpu_priv_ready()) return -1;
    if (n <= 0) return 0;
    k_softcap<<<grid_for(n, 256), 256, 0, g_stream>>>(x, n, cap);
    GPU_TRY(cudaGetLastError());
    return 0;
}
