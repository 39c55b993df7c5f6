/* The CUDA attention kernels over paged K/V views (attn_sparse.h's layout; pages in device memory
 * or in mapped pinned host memory read over the bus), and the centroid scoring.
 *  - decode: split-K. Block (job, split) streams its share of the job's keys in tiles of
 *    DEC_TILE: each warp reads whole K rows (consecutive lanes, consecutive elements) and scores
 *    them against the group's queries held in shared memory; the V tile is staged in shared
 *    memory; an online softmax (m, l, o) per query. A second kernel merges the splits' partial
 *    (o, m, l) exactly by log-sum-exp.
 *  - prefill: block (tile of PF_BQ query rows, one query head); K and V tiles of PF_BK rows
 *    staged in shared memory, so each K/V row is read once per query tile; causal mask and
 *    sliding window; online softmax. CUDA cores only.
 * Semantics follow kernels/attn_sparse.c: scores scale * q.k, lse = log sum exp(score), an empty
 * key set gives out 0 and lse -inf.
 * defines: gpu_attn_decode, gpu_attn_merge, gpu_attn_prefill, gpu_scores */
extern "C" {
#include "gpu.h"
}

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "gpu_priv.cuh"

enum {
    DMAX = 256,                 /* largest head dim (K and V) */
    GMAX = ATTN_MAX_GROUP,      /* queries per decode launch; larger groups run in chunks */
    DEC_THREADS = 256,
    DEC_WARPS = DEC_THREADS / 32,
    DEC_TILE = 16,              /* keys per decode tile */
    DEC_ACC = GMAX * DMAX / DEC_THREADS,   /* output elements per thread */
    DEC_KEYS_MIN = 256,         /* fewest keys per split worth a block */
    DEC_MAX_SPLIT = 64,
    MERGE_THREADS = 256,
    PF_THREADS = 256,
    PF_WARPS = PF_THREADS / 32,
    PF_BQ = 32,                 /* query rows per prefill block */
    PF_BK = 16,                 /* keys per prefill tile */
    PF_ACC = PF_BQ * DMAX / PF_THREADS,    /* output elements per thread */
    PF_SC = PF_BQ * PF_BK / PF_THREADS,    /* scores per thread per tile */
};
static_assert(PF_THREADS % PF_BK == 0 && PF_BK <= 32, "prefill score mapping");
static_assert(DEC_TILE <= DEC_THREADS && GMAX <= 32, "decode mapping");

/* ---- rows of a view ------------------------------------------------------------------- */

__device__ __forceinline__ const char *page_of(const attn_kv_view &kv, int64_t p) {
    int64_t pg = p >> kv.page_shift;
    if (kv.ring_pages > 0) pg %= kv.ring_pages;
    return (const char *)kv.pages[pg];
}

__device__ __forceinline__ int64_t row_in_page(const attn_kv_view &kv, int64_t p) {
    return p & (((int64_t)1 << kv.page_shift) - 1);
}

__device__ __forceinline__ const char *k_row(const attn_kv_view &kv, int64_t p) {
    const int64_t elt = kv.dtype == ATTN_F32 ? 4 : 2;
    return page_of(kv, p) + kv.k_off + row_in_page(kv, p) * kv.k_stride * elt;
}

__device__ __forceinline__ const char *v_row(const attn_kv_view &kv, int64_t p) {
    const int64_t elt = kv.dtype == ATTN_F32 ? 4 : 2;
    return page_of(kv, p) + kv.v_off + row_in_page(kv, p) * kv.v_stride * elt;
}

__device__ __forceinline__ float ld_elt(const char *row, int i, int f16) {
    return f16 ? __half2float(((const __half *)row)[i]) : ((const float *)row)[i];
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- online-softmax tiles, shared by decode and prefill ----------------------------------
 * A block of THREADS threads holds the unnormalised outputs of n_el / dv query rows: thread tid
 * keeps elements tid + k * THREADS (k < N) in acc[k]; m and l (shared) per row. */

template <int N>
__device__ __forceinline__ void softmax_init(float (&acc)[N], float *m, float *l, int rows, int tid) {
    if (tid < rows) {
        m[tid] = -INFINITY;
        l[tid] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < N; k++) acc[k] = 0.0f;
}

/* dst[j * ld + i] = element i of rows[j] for j < nb, i < d, spread over the block. */
template <int THREADS>
__device__ __forceinline__ void tile_load(float *dst, int ld, const char *const *rows, int nb, int d,
                                          int f16, int tid) {
    for (int e = tid; e < nb * d; e += THREADS) {
        const int j = e / d, i = e - j * d;
        dst[j * ld + i] = ld_elt(rows[j], i, f16);
    }
}

/* Output element (r, i): o = o * c[r] + sum over keys j < nb, in order, of p[r * ldp + j] times
 * V tile element vs[j * dv + i]. */
template <int N, int THREADS>
__device__ __forceinline__ void tile_pv(float (&acc)[N], int n_el, int dv, int nb, const float *c,
                                        const float *p, int ldp, const float *vs, int tid) {
#pragma unroll
    for (int k = 0; k < N; k++) {
        const int e = tid + k * THREADS;
        if (e < n_el) {
            const int r = e / dv, i = e - r * dv;
            float o = acc[k] * c[r];
            for (int j = 0; j < nb; j++) o += p[r * ldp + j] * vs[j * dv + i];
            acc[k] = o;
        }
    }
}


/* ---- decode ----------------------------------------------------------------------------
 * Partial results: row pi = (job * n_split + split) * ng + g holds o (DMAX floats, unnormalised)
 * in part_o and (m, l) in part_ml[2 pi], part_ml[2 pi + 1]. */

__global__ void __launch_bounds__(DEC_THREADS)
k_decode(const gpu_attn_job *jobs, int g0, int ng, float scale, int n_split, float *part_o,
         float *part_ml) {
    __shared__ gpu_attn_job sj;
    __shared__ float qs[GMAX * DMAX];
    __shared__ float vs[DEC_TILE * DMAX];
    __shared__ float ss[GMAX][DEC_TILE];
    __shared__ float ms[GMAX], ls[GMAX], cs[GMAX];
    __shared__ const char *kr[DEC_TILE], *vr[DEC_TILE];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int job = blockIdx.x, split = blockIdx.y;
    if (tid == 0) sj = jobs[job];
    __syncthreads();
    const int dk = sj.kv.dk, dv = sj.kv.dv, f16 = sj.kv.dtype == ATTN_F16;
    const size_t pi0 = ((size_t)job * n_split + split) * ng;
    if (!(dk > 0 && dk <= DMAX && dv > 0 && dv <= DMAX)) {   /* the merge writes NaN */
        if (tid < ng) part_ml[2 * (pi0 + tid)] = part_ml[2 * (pi0 + tid) + 1] = NAN;
        return;
    }
    int64_t n_keys = sj.ids ? sj.n_ids : sj.hi - sj.lo;
    if (n_keys < 0) n_keys = 0;
    const int64_t a = n_keys * split / n_split, b = n_keys * (split + 1) / n_split;
    for (int e = tid; e < ng * dk; e += DEC_THREADS) qs[e] = sj.q[(int64_t)g0 * dk + e];
    const int n_el = ng * dv;
    float acc[DEC_ACC];
    softmax_init(acc, ms, ls, ng, tid);
    __syncthreads();

    for (int64_t j0 = a; j0 < b; j0 += DEC_TILE) {
        const int nb = (int)(b - j0 < DEC_TILE ? b - j0 : DEC_TILE);
        if (tid < nb) {
            const int64_t p = sj.ids ? (int64_t)sj.ids[j0 + tid] : sj.lo + j0 + tid;
            kr[tid] = k_row(sj.kv, p);
            vr[tid] = v_row(sj.kv, p);
        }
        __syncthreads();
        tile_load<DEC_THREADS>(vs, dv, vr, nb, dv, f16, tid);
        for (int j = warp; j < nb; j += DEC_WARPS) {
            float d[GMAX];
#pragma unroll
            for (int g = 0; g < GMAX; g++) d[g] = 0.0f;
            const char *k = kr[j];
            for (int i = lane; i < dk; i += 32) {
                const float x = ld_elt(k, i, f16);
#pragma unroll
                for (int g = 0; g < GMAX; g++)
                    if (g < ng) d[g] += qs[g * dk + i] * x;
            }
#pragma unroll
            for (int g = 0; g < GMAX; g++) {
                if (g < ng) {
                    const float s = warp_sum(d[g]);
                    if (lane == 0) ss[g][j] = scale * s;
                }
            }
        }
        __syncthreads();
        if (tid < ng) {
            const float m_old = ms[tid];
            float bm = -INFINITY;
            for (int j = 0; j < nb; j++) bm = fmaxf(bm, ss[tid][j]);
            const float m_new = fmaxf(m_old, bm);
            const float c = m_new > m_old ? expf(m_old - m_new) : 1.0f;   /* 0 after m = -inf */
            float dsum = 0.0f;
            for (int j = 0; j < nb; j++) {
                const float p = m_new == -INFINITY ? 0.0f : expf(ss[tid][j] - m_new);
                ss[tid][j] = p;
                dsum += p;
            }
            ls[tid] = ls[tid] * c + dsum;
            ms[tid] = m_new;
            cs[tid] = c;
        }
        __syncthreads();
        tile_pv<DEC_ACC, DEC_THREADS>(acc, n_el, dv, nb, cs, &ss[0][0], DEC_TILE, vs, tid);
        __syncthreads();   /* kr, vr, vs and ss are rewritten by the next tile */
    }
#pragma unroll
    for (int k = 0; k < DEC_ACC; k++) {
        const int e = tid + k * DEC_THREADS;
        if (e < n_el) {
            const int g = e / dv, i = e - g * dv;
            part_o[(pi0 + g) * DMAX + i] = acc[k];
        }
    }
    if (tid < ng) {
        part_ml[2 * (pi0 + tid)] = ms[tid];
        part_ml[2 * (pi0 + tid) + 1] = ls[tid];
    }
}

/* Block (job, g): the n_split partials of query g0 + g merged into job.out / job.lse. */
__global__ void __launch_bounds__(MERGE_THREADS)
k_decode_merge(const gpu_attn_job *jobs, int g0, int ng, int n_split, const float *part_o,
               const float *part_ml) {
    __shared__ float* out_s;
    __shared__ float *lse_s;
    __shared__ int dk_s, dv_s;
    __shared__ float w[DEC_MAX_SPLIT];
    __shared__ float lse_v, lse_add;
    const int tid = threadIdx.x, job = blockIdx.x, g = blockIdx.y;
    if (tid == 0) {
        const gpu_attn_job *jb = jobs + job;
        lse_add = jb->lse_add;
        dk_s = jb->kv.dk;
        dv_s = jb->kv.dv;
        out_s = jb->out + (int64_t)(g0 + g) * jb->kv.dv;
        lse_s = jb->lse + g0 + g;
    }
    __syncthreads();
    const int dv = dv_s;
    float *out = out_s;
    const size_t pi0 = (size_t)job * n_split * ng + g;   /* split s: pi0 + s * ng */
    if (!(dk_s > 0 && dk_s <= DMAX && dv > 0 && dv <= DMAX)) {
        for (int i = tid; i < dv; i += MERGE_THREADS) out[i] = NAN;
        if (tid == 0) *lse_s = NAN;
        return;
    }
    if (tid == 0) {
        float M = -INFINITY, L = 0.0f;
        for (int s = 0; s < n_split; s++) M = fmaxf(M, part_ml[2 * (pi0 + (size_t)s * ng)]);
        for (int s = 0; s < n_split; s++) {
            const float m = part_ml[2 * (pi0 + (size_t)s * ng)];
            w[s] = m == -INFINITY ? 0.0f : expf(m - M);
            L += w[s] * part_ml[2 * (pi0 + (size_t)s * ng) + 1];
        }
        if (M == -INFINITY || !(L > 0.0f)) {   /* empty: out 0, lse -inf */
            for (int s = 0; s < n_split; s++) w[s] = 0.0f;
            lse_v = -INFINITY;
        } else {
            for (int s = 0; s < n_split; s++) w[s] /= L;
            lse_v = M + logf(L) + lse_add;
        }
    }
    __syncthreads();
    for (int i = tid; i < dv; i += MERGE_THREADS) {
        float o = 0.0f;
        for (int s = 0; s < n_split; s++)
            if (w[s] != 0.0f) o += w[s] * part_o[(pi0 + (size_t)s * ng) * DMAX + i];
        out[i] = o;
    }
    if (tid == 0) *lse_s = lse_v;
}

extern "C" int gpu_attn_decode(const gpu_attn_job *jobs, int n_jobs, int n_q, float scale,
                               int64_t max_keys) {
    if (gpu_priv_ready()) return -1;
    if (n_jobs < 0 || n_q < 0) return gpu_priv_fail("gpu_attn_decode: bad counts %d, %d", n_jobs, n_q);
    if (n_jobs == 0 || n_q == 0) return 0;
    if (!jobs) return gpu_priv_fail("gpu_attn_decode: no jobs");
    if (max_keys < 0) max_keys = 0;
    /* enough splits to give every SM a few blocks, none with fewer than DEC_KEYS_MIN keys */
    int64_t n_split = (max_keys + DEC_KEYS_MIN - 1) / DEC_KEYS_MIN;
    const int64_t fill = (4 * (int64_t)gpu_priv_sm_count() + n_jobs - 1) / n_jobs;
    if (n_split > fill) n_split = fill;
    if (n_split > DEC_MAX_SPLIT) n_split = DEC_MAX_SPLIT;
    if (n_split < 1) n_split = 1;
    cudaStream_t st = gpu_priv_stream();
    for (int g0 = 0; g0 < n_q; g0 += GMAX) {
        const int ng = n_q - g0 < GMAX ? n_q - g0 : GMAX;
        const size_t rows = (size_t)n_jobs * (size_t)n_split * (size_t)ng;
        float *part = (float *)gpu_priv_scratch(GPU_SCR_PART, rows * (DMAX + 2) * sizeof(float));
        if (!part) return -1;
        k_decode<<<dim3((unsigned)n_jobs, (unsigned)n_split), DEC_THREADS, 0, st>>>(
            jobs, g0, ng, scale, (int)n_split, part, part + rows * DMAX);
        GPU_TRY(cudaGetLastError());
        k_decode_merge<<<dim3((unsigned)n_jobs, (unsigned)ng), MERGE_THREADS, 0, st>>>(
            jobs, g0, ng, (int)n_split, part, part + rows * DMAX);
        GPU_TRY(cudaGetLastError());
    }
    return 0;
}

/* ---- merge ---------------------------------------------------------------------------- */

__global__ void k_merge(float *o_a, float *lse_a, const float *o_b, const float *lse_b, int dv) {
    const int64_t r = blockIdx.x;
    const float la = lse_a[r], lb = lse_b[r];
    __syncthreads();   /* every thread has read lse_a[r] before thread 0 rewrites it */
    float *oa = o_a + r * dv;
    const float *ob = o_b + r * dv;
    if (lb == -INFINITY) return;
    if (la == -INFINITY) {
        for (int i = threadIdx.x; i < dv; i += blockDim.x) oa[i] = ob[i];
        if (threadIdx.x == 0) lse_a[r] = lb;
        return;
    }
    float l = fmaxf(la, lb);
    l += logf(expf(la - l) + expf(lb - l));
    const float wa = expf(la - l), wb = expf(lb - l);
    for (int i = threadIdx.x; i < dv; i += blockDim.x) oa[i] = wa * oa[i] + wb * ob[i];
    if (threadIdx.x == 0) lse_a[r] = l;
}

extern "C" int gpu_attn_merge(float *o_a, float *lse_a, const float *o_b, const float *lse_b, int n,
                              int dv) {
    if (gpu_priv_ready()) return -1;
    if (n < 0 || dv <= 0) return gpu_priv_fail("gpu_attn_merge: bad shape %d x %d", n, dv);
    if (n == 0) return 0;
    k_merge<<<n, dv < 256 ? (dv + 31) / 32 * 32 : 256, 0, gpu_priv_stream()>>>(o_a, lse_a, o_b,
                                                                              lse_b, dv);
    GPU_TRY(cudaGetLastError());
    return 0;
}

/* ---- prefill -------------------------------------------------------------------------- */

/* The views of a prefill checked (the same head dims for every view, each at most max_dim; f32
 * or f16 pages) and copied into the views scratch on the device, stream-ordered after any kernel
 * still reading the previous ones. NULL with a message naming `who`. */
static const attn_kv_view *prefill_views(const char *who, const attn_kv_view *views, int n_head_kv,
                                         int max_dim) {
    const int dk = views[0].dk, dv = views[0].dv;
    for (int i = 0; i < n_head_kv; i++) {
        if (views[i].dk != dk || views[i].dv != dv || dk <= 0 || dv <= 0 || dk > max_dim ||
            dv > max_dim || (views[i].dtype != ATTN_F32 && views[i].dtype != ATTN_F16) ||
            views[i].page_shift < 0 || views[i].page_shift > 30) {
            gpu_priv_fail("%s: view %d: head dims %d, %d (at most %d, the same for every view) or "
                          "dtype/page shift not supported", who, i, views[i].dk, views[i].dv, max_dim);
            return NULL;
        }
    }
    attn_kv_view *d = (attn_kv_view *)gpu_priv_scratch(GPU_SCR_VIEWS, sizeof(attn_kv_view) * n_head_kv);
    if (!d) return NULL;
    const cudaError_t e = cudaMemcpyAsync(d, views, sizeof(attn_kv_view) * n_head_kv,
                                          cudaMemcpyHostToDevice, gpu_priv_stream());
    if (e != cudaSuccess) {
        gpu_priv_fail("%s: copying the views: %s", who, cudaGetErrorString(e));
        return NULL;
    }
    return d;
}

/* Dynamic shared memory of k_prefill, in floats, for head dims dk, dv. */
static size_t prefill_smem(int dk, int dv) {
    return sizeof(float) * ((size_t)PF_BQ * dk + (size_t)PF_BK * (dk + 1) + (size_t)PF_BK * dv +
                            (size_t)PF_BQ * (PF_BK + 1) + 3 * PF_BQ);
}

/* Block (query tile, head h): rows t0 .. t0 + PF_BQ - 1 of head h attend the view of KV head
 * h / group over [max(0, p - window + 1), p]. */
__global__ void __launch_bounds__(PF_THREADS)
k_prefill(const attn_kv_view *views, int group, const float *q, int T, int n_head, int64_t pos0,
          int64_t window, float scale, float *out) {
    extern __shared__ float smem[];
    __shared__ attn_kv_view sv;
    __shared__ const char *kr[PF_BK], *vr[PF_BK];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.y, t0 = blockIdx.x * PF_BQ;
    if (tid == 0) sv = views[h / group];
    __syncthreads();
    const int dk = sv.dk, dv = sv.dv, f16 = sv.dtype == ATTN_F16, ldk = dk + 1, ldp = PF_BK + 1;
    float *Qs = smem;                       /* (PF_BQ, dk) */
    float *Ks = Qs + PF_BQ * dk;            /* (PF_BK, dk + 1): padded against bank conflicts */
    float *Vs = Ks + PF_BK * ldk;           /* (PF_BK, dv) */
    float *P = Vs + PF_BK * dv;             /* (PF_BQ, PF_BK + 1): scores, then probabilities */
    float *Ms = P + PF_BQ * ldp, *Ls = Ms + PF_BQ, *Cs = Ls + PF_BQ;
    const int nq = T - t0 < PF_BQ ? T - t0 : PF_BQ;
    for (int e = tid; e < PF_BQ * dk; e += PF_THREADS) {
        const int r = e / dk, i = e - r * dk;
        Qs[e] = r < nq ? q[((int64_t)(t0 + r) * n_head + h) * dk + i] : 0.0f;
    }
    const int n_el = PF_BQ * dv;
    float acc[PF_ACC];
    softmax_init(acc, Ms, Ls, PF_BQ, tid);
    const int64_t p_first = pos0 + t0, k_hi = pos0 + t0 + nq;   /* keys [k_lo, k_hi) */
    int64_t k_lo = window > 0 ? p_first - window + 1 : 0;
    if (k_lo < 0) k_lo = 0;
    __syncthreads();

    for (int64_t j0 = k_lo; j0 < k_hi; j0 += PF_BK) {
        const int nb = (int)(k_hi - j0 < PF_BK ? k_hi - j0 : PF_BK);
        if (tid < nb) {
            kr[tid] = k_row(sv, j0 + tid);
            vr[tid] = v_row(sv, j0 + tid);
        }
        __syncthreads();
        tile_load<PF_THREADS>(Ks, ldk, kr, nb, dk, f16, tid);
        tile_load<PF_THREADS>(Vs, dv, vr, nb, dv, f16, tid);
        __syncthreads();
        {   /* scores: key j = tid % PF_BK against rows rb + k * (PF_THREADS / PF_BK) */
            const int j = tid % PF_BK, rb = tid / PF_BK;
            float d[PF_SC];
#pragma unroll
            for (int k = 0; k < PF_SC; k++) d[k] = 0.0f;
            if (j < nb) {
                for (int i = 0; i < dk; i++) {
                    const float x = Ks[j * ldk + i];
#pragma unroll
                    for (int k = 0; k < PF_SC; k++)
                        d[k] += Qs[(rb + k * (PF_THREADS / PF_BK)) * dk + i] * x;
                }
            }
            const int64_t kp = j0 + j;
#pragma unroll
            for (int k = 0; k < PF_SC; k++) {
                const int r = rb + k * (PF_THREADS / PF_BK);
                const int64_t p = pos0 + t0 + r;
                const bool ok = j < nb && r < nq && kp <= p && (window <= 0 || kp > p - window);
                P[r * ldp + j] = ok ? scale * d[k] : -INFINITY;
            }
        }
        __syncthreads();
        for (int r = warp; r < PF_BQ; r += PF_WARPS) {
            const float s = lane < PF_BK ? P[r * ldp + lane] : -INFINITY;
            const float m_old = Ms[r];
            const float m_new = fmaxf(m_old, warp_max(s));
            const float c = m_new > m_old ? expf(m_old - m_new) : 1.0f;
            const float p = m_new == -INFINITY ? 0.0f : expf(s - m_new);
            const float psum = warp_sum(p);
            if (lane < PF_BK) P[r * ldp + lane] = p;
            if (lane == 0) {
                Ms[r] = m_new;
                Ls[r] = Ls[r] * c + psum;
                Cs[r] = c;
            }
        }
        __syncthreads();
        tile_pv<PF_ACC, PF_THREADS>(acc, n_el, dv, nb, Cs, P, ldp, Vs, tid);
        __syncthreads();   /* kr, vr, Ks, Vs and P are rewritten by the next tile */
    }
#pragma unroll
    for (int k = 0; k < PF_ACC; k++) {
        const int e = tid + k * PF_THREADS;
        if (e < n_el) {
            const int r = e / dv, i = e - r * dv;
            if (r < nq) out[((int64_t)(t0 + r) * n_head + h) * dv + i] = acc[k] / Ls[r];
        }
    }
}

extern "C" int gpu_attn_prefill(const attn_kv_view *views, int n_head_kv, const float *q, int T,
                                int n_head, int64_t pos0, int64_t window, float scale, float *out) {
    static size_t smem_set = 48 << 10;   /* dynamic shared memory k_prefill is allowed */
    if (gpu_priv_ready()) return -1;
    if (T < 0 || pos0 < 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || n_head > 65535)
        return gpu_priv_fail("gpu_attn_prefill: bad shape (T %d, pos0 %lld, heads %d / %d)", T,
                             (long long)pos0, n_head, n_head_kv);
    if (T == 0) return 0;
    if (!views) return gpu_priv_fail("gpu_attn_prefill: no views");
    const int dk = views[0].dk, dv = views[0].dv;
    const attn_kv_view *dviews = prefill_views("gpu_attn_prefill", views, n_head_kv, DMAX);
    if (!dviews) return -1;
    cudaStream_t st = gpu_priv_stream();
    const size_t smem = prefill_smem(dk, dv);
    if (smem > smem_set) {
        GPU_TRY(cudaFuncSetAttribute(k_prefill, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem));
        smem_set = smem;
    }
    k_prefill<<<dim3((unsigned)((T + PF_BQ - 1) / PF_BQ), (unsigned)n_head), PF_THREADS, smem, st>>>(
        dviews, n_head / n_head_kv, q, T, n_head, pos0, window, scale, out);
    GPU_TRY(cudaGetLastError());
    return 0;
}

/* ---- prefill on tensor cores ------------------------------------------------------------ */

/* Reduction over the block (blockDim.x a multiple of 32); every thread gets the result. Two
 * calls in a row are safe: a thread reaches the second call's first barrier only after warp 0
 * has read `part` and every thread has read `total` of the first. */
template <bool MAX>
__device__ float blk_reduce(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? part[lane] : (MAX ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            const float w = __shfl_xor_sync(0xffffffffu, v, o);
            v = MAX ? fmaxf(v, w) : v + w;
        }
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

/* Warp per key: rows kl + j of view blockIdx.y into Kc/Vc (hk, j, :) as f16; 16-byte copies
 * when the rows are f16 and aligned. */
__global__ void __launch_bounds__(256)
k_gather(const attn_kv_view *views, int64_t kl, int64_t nk, __half *Kc, __half *Vc) {
    __shared__ attn_kv_view sv;
    if (threadIdx.x == 0) sv = views[blockIdx.y];
    __syncthreads();
    const int64_t j = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (j >= nk) return;
    const int lane = threadIdx.x & 31, hk = blockIdx.y, dk = sv.dk, dv = sv.dv;
    const char *kr = k_row(sv, kl + j), *vr = v_row(sv, kl + j);
    __half *ko = Kc + ((size_t)hk * nk + j) * dk, *vo = Vc + ((size_t)hk * nk + j) * dv;
    if (sv.dtype == ATTN_F16) {
        if (dk % 8 == 0 && dv % 8 == 0 && ((((uintptr_t)kr) | ((uintptr_t)vr)) & 15) == 0) {
            for (int i = lane; i < dk / 8; i += 32) ((uint4 *)ko)[i] = ((const uint4 *)kr)[i];
            for (int i = lane; i < dv / 8; i += 32) ((uint4 *)vo)[i] = ((const uint4 *)vr)[i];
        } else {
            for (int i = lane; i < dk; i += 32) ko[i] = ((const __half *)kr)[i];
            for (int i = lane; i < dv; i += 32) vo[i] = ((const __half *)vr)[i];
        }
    } else {
        for (int i = lane; i < dk; i += 32)
            ko[i] = __float2half_rn(fminf(fmaxf(((const float *)kr)[i], -65504.0f), 65504.0f));
        for (int i = lane; i < dv; i += 32)
            vo[i] = __float2half_rn(fminf(fmaxf(((const float *)vr)[i], -65504.0f), 65504.0f));
    }
}

/* y = f16(scale * x), saturated at the f16 range. */
__global__ void k_scale_f16(__half *y, const float *x, int64_t n, float scale) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(fminf(fmaxf(x[i] * scale, -65504.0f), 65504.0f));
}

/* Row t of one head's scores S (T, nk) over keys kl + j: softmax over the keys row t may see
 * (causal, sliding window) into P as f16, zero elsewhere. Key pos0 + t is always visible. */
__global__ void __launch_bounds__(256)
k_softmax_rows(const float *S, __half *P, int64_t nk, int64_t kl, int64_t pos0, int64_t window) {
    const int64_t t = blockIdx.x, p = pos0 + t;
    const float *s = S + (size_t)t * nk;
    __half *pr = P + (size_t)t * nk;
    int64_t hi = p - kl + 1, lo = window > 0 ? p - window + 1 - kl : 0;
    if (hi > nk) hi = nk;
    if (lo < 0) lo = 0;
    float m = -INFINITY;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) m = fmaxf(m, s[j]);
    m = blk_reduce<true>(m);
    float l = 0.0f;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) l += expf(s[j] - m);
    l = blk_reduce<false>(l);
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x)
        pr[j] = __float2half_rn(j >= lo && j < hi ? expf(s[j] - m) * inv : 0.0f);
}

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

extern "C" size_t gpu_attn_prefill_gemm_bytes(int n_head_kv, int64_t n_keys, int T, int n_head,
                                              int dk, int dv) {
    const size_t nk = (size_t)(n_keys > 0 ? n_keys : 1), t = (size_t)(T > 0 ? T : 1);
    return align256((size_t)n_head_kv * nk * dk * 2) + align256((size_t)n_head_kv * nk * dv * 2) +
           align256(t * n_head * dk * 2) + align256(t * nk * 2) + align256(t * nk * 4);
}

extern "C" int gpu_attn_prefill_gemm(const attn_kv_view *views, int n_head_kv, const float *q, int T,
                                     int n_head, int64_t pos0, int64_t window, float scale,
                                     float *out) {
    if (gpu_priv_ready()) return -1;
    if (T < 0 || pos0 < 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv)
        return gpu_priv_fail("gpu_attn_prefill_gemm: bad shape (T %d, pos0 %lld, heads %d / %d)", T,
                             (long long)pos0, n_head, n_head_kv);
    if (T == 0) return 0;
    if (!views) return gpu_priv_fail("gpu_attn_prefill_gemm: no views");
    const int dk = views[0].dk, dv = views[0].dv, G = n_head / n_head_kv;
    const attn_kv_view *dviews = prefill_views("gpu_attn_prefill_gemm", views, n_head_kv, 1 << 16);
    if (!dviews) return -1;
    int64_t kl = window > 0 ? pos0 - window + 1 : 0;
    if (kl < 0) kl = 0;
    const int64_t nk = pos0 + T - kl;
    if (nk > INT32_MAX / 2 || (int64_t)n_head * dk > INT32_MAX / 2 || (int64_t)n_head * dv > INT32_MAX / 2)
        return gpu_priv_fail("gpu_attn_prefill_gemm: %lld keys exceed cuBLAS's int sizes", (long long)nk);
    char *base = (char *)gpu_priv_scratch(GPU_SCR_PF,
                                          gpu_attn_prefill_gemm_bytes(n_head_kv, nk, T, n_head, dk, dv));
    if (!base) return -1;
    __half *Kc = (__half *)base;
    __half *Vc = (__half *)(base + align256((size_t)n_head_kv * nk * dk * 2));
    __half *Qh = (__half *)((char *)Vc + align256((size_t)n_head_kv * nk * dv * 2));
    __half *P = (__half *)((char *)Qh + align256((size_t)T * n_head * dk * 2));
    float *S = (float *)((char *)P + align256((size_t)T * nk * 2));
    cudaStream_t st = gpu_priv_stream();
    k_gather<<<dim3((unsigned)((nk + 7) / 8), (unsigned)n_head_kv), 256, 0, st>>>(dviews, kl, nk, Kc, Vc);
    GPU_TRY(cudaGetLastError());
    const int64_t nq = (int64_t)T * n_head * dk;
    k_scale_f16<<<(unsigned)((nq + 255) / 256 < 65536 ? (nq + 255) / 256 : 65536), 256, 0, st>>>(Qh, q, nq,
                                                                                                scale);
    GPU_TRY(cudaGetLastError());
    cublasHandle_t hb = gpu_priv_cublas();
    const float one = 1.0f, zero = 0.0f;
    for (int h = 0; h < n_head; h++) {
        const int hk = h / G;
        /* column major: S^T (nk x T, ld nk) = K_hk (dk x nk)^T . Q_h (dk x T, ld n_head * dk) */
        GPU_TRY_BLAS(cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, (int)nk, T, dk, &one,
                                  Kc + (size_t)hk * nk * dk, CUDA_R_16F, dk, Qh + (size_t)h * dk,
                                  CUDA_R_16F, n_head * dk, &zero, S, CUDA_R_32F, (int)nk,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        k_softmax_rows<<<(unsigned)T, 256, 0, st>>>(S, P, nk, kl, pos0, window);
        GPU_TRY(cudaGetLastError());
        /* out_h^T (dv x T, ld n_head * dv) = V_hk^T (dv x nk) . P^T (nk x T, ld nk) */
        GPU_TRY_BLAS(cublasGemmEx(hb, CUBLAS_OP_N, CUBLAS_OP_N, dv, T, (int)nk, &one,
                                  Vc + (size_t)hk * nk * dv, CUDA_R_16F, dv, P, CUDA_R_16F, (int)nk,
                                  &zero, out + (size_t)h * dv, CUDA_R_32F, n_head * dv,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}

/* ---- centroid scores ------------------------------------------------------------------ */

extern "C" int gpu_scores(const float *q, int n_q, const float *C, int64_t n, int dim,
                          float *scores) {
    if (gpu_priv_ready()) return -1;
    if (n_q < 0 || n < 0 || dim <= 0 || n > INT32_MAX)
        return gpu_priv_fail("gpu_scores: bad shape (%d queries, %lld rows, dim %d)", n_q,
                             (long long)n, dim);
    if (n_q == 0 || n == 0) return 0;
    /* column major: C is (dim x n), q is (dim x n_q), scores is (n x n_q) = C^T q */
    const float one = 1.0f, zero = 0.0f;
    GPU_TRY_BLAS(cublasSgemm(gpu_priv_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, (int)n, n_q, dim, &one, C,
                             dim, q, dim, &zero, scores, (int)n));
    return 0;
}
