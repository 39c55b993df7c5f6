/* Shared between gpu.cu and gpu_attn.cu only: the backend's stream, cuBLAS handle, error
 * message and scratch buffers (all owned by gpu.cu).
 * defines: gpu_priv_*, GPU_TRY, GPU_TRY_BLAS, GPU_SCR_* */
#ifndef KVSEEK_GPU_PRIV_CUH
#define KVSEEK_GPU_PRIV_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

/* Scratch slots: each a device buffer that grows to the largest call, freed by gpu_shutdown. */
enum { GPU_SCR_XH, GPU_SCR_PART, GPU_SCR_VIEWS, GPU_SCR_PF, GPU_SCR_COUNT };

int gpu_priv_fail(const char *fmt, ...);      /* sets gpu_last_error(); returns -1 */
int gpu_priv_ready(void);                     /* 0, or -1 with a message before gpu_init */
cudaStream_t gpu_priv_stream(void);
cublasHandle_t gpu_priv_cublas(void);
int gpu_priv_sm_count(void);
const char *gpu_priv_cublas_str(cublasStatus_t s);
void *gpu_priv_scratch(int slot, size_t bytes);   /* NULL with a message on failure */

/* Returns -1 from the calling function, with the call and CUDA's reason as the message. */
#define GPU_TRY(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) \
    return gpu_priv_fail("%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); } while (0)
#define GPU_TRY_BLAS(call) do { cublasStatus_t s_ = (call); if (s_ != CUBLAS_STATUS_SUCCESS) \
    return gpu_priv_fail("%s:%d: %s: %s", __FILE__, __LINE__, #call, gpu_priv_cublas_str(s_)); } while (0)

#endif
