/* Element-wise and row-wise operations of the forward pass (norms, RoPE, activations) and
 * single-query attention over a contiguous key range returning output and log-sum-exp. Plain
 * arrays in, plain arrays out: the engine decides layouts, these loops stay leaf functions. */
#ifndef KVSEEK_OPS_H
#define KVSEEK_OPS_H

#include <stdbool.h>
#include <stdint.h>

/* y = x / sqrt(mean(x^2) + eps) * w (w may be NULL for no weight). Sum of squares in double,
 * as llama.cpp does. In place allowed (y == x). */
void krn_rmsnorm(float *y, const float *x, const float *w, int n, float eps);

/* Rotary embedding of one head vector x[head_dim] at the angles given by cos/sin[n_rot/2].
 * neox: pairs (i, i + n_rot/2); otherwise adjacent pairs (2i, 2i+1). Dims >= n_rot untouched. */
void krn_rope(float *x, int n_rot, const float *cos_t, const float *sin_t, bool neox);

/* cos/sin tables for one position: theta_i = pos * base^(-2i/n_rot) * freq_scale / factor_i
 * (factors may be NULL). */
void krn_rope_angles(float *cos_t, float *sin_t, int64_t pos, int n_rot, float base,
                     float freq_scale, const float *factors);

float krn_gelu_tanh(float x);
float krn_silu(float x);
/* out[i] = act(gate[i]) * up[i]; gelu selects GELU-tanh (GeGLU), else SiLU (SwiGLU). */
void krn_glu(float *out, const float *gate, const float *up, int n, bool gelu);

/* One query against keys K[0..n) with rows `k_stride` floats apart (same for V):
 * out[dv] = sum_j softmax(scale * q.k_j) v_j, *lse = log sum_j exp(scale * q.k_j).
 * n == 0 gives out = 0 and lse = -inf, the neutral element of attn_merge. */
void krn_attn_dense(const float *q, const float *K, const float *V, int64_t n, int64_t k_stride,
                    int64_t v_stride, int dk, int dv, float scale, float *out, float *lse);

/* Merges partial attention results (o_a, lse_a) += (o_b, lse_b) exactly. */
void krn_attn_merge(float *o_a, float *lse_a, const float *o_b, float lse_b, int dv);

#endif
