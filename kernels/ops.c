/* Forward-pass operations on f32 rows: RMSNorm, RoPE, gated activations and dense attention
 * of one query with a log-sum-exp output. Auto-vectorised loops; callers parallelise across
 * tokens and heads. */
#include "ops.h"

#include <math.h>
#include <string.h>

void krn_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float r = (float)(1.0 / sqrt(ss / n + eps));
    if (w) {
        for (int i = 0; i < n; i++) y[i] = x[i] * r * w[i];
    } else {
        for (int i = 0; i < n; i++) y[i] = x[i] * r;
    }
}

void krn_rope_angles(float *cos_t, float *sin_t, int64_t pos, int n_rot, float base,
                     float freq_scale, const float *factors) {
    for (int i = 0; i < n_rot / 2; i++) {
        double inv = pow((double)base, -2.0 * i / n_rot) * freq_scale;
        if (factors) inv /= factors[i];
        double th = (double)pos * inv;
        cos_t[i] = (float)cos(th);
        sin_t[i] = (float)sin(th);
    }
}

void krn_rope(float *x, int n_rot, const float *cos_t, const float *sin_t, bool neox) {
    const int half = n_rot / 2;
    if (neox) {
        for (int i = 0; i < half; i++) {
            float a = x[i], b = x[i + half];
            x[i] = a * cos_t[i] - b * sin_t[i];
            x[i + half] = a * sin_t[i] + b * cos_t[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            float a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * cos_t[i] - b * sin_t[i];
            x[2 * i + 1] = a * sin_t[i] + b * cos_t[i];
        }
    }
}

float krn_gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * x * (1.0f + 0.044715f * x * x)));
}

float krn_silu(float x) { return x / (1.0f + expf(-x)); }

void krn_glu(float *out, const float *gate, const float *up, int n, bool gelu) {
    if (gelu) {
        for (int i = 0; i < n; i++) out[i] = krn_gelu_tanh(gate[i]) * up[i];
    } else {
        for (int i = 0; i < n; i++) out[i] = krn_silu(gate[i]) * up[i];
    }
}

static float dot_f32(const float *a, const float *b, int n) {
    float s = 0.0f;
    #pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Online softmax over keys in blocks: the running max m, denominator d and output o are
 * rescaled when m grows, so one pass suffices and nothing overflows. */
void krn_attn_dense(const float *q, const float *K, const float *V, int64_t n, int64_t k_stride,
                    int64_t v_stride, int dk, int dv, float scale, float *out, float *lse) {
    enum { BLK = 64 };
    float s[BLK];
    float m = -INFINITY, d = 0.0f;
    memset(out, 0, sizeof(float) * dv);
    for (int64_t j0 = 0; j0 < n; j0 += BLK) {
        int nb = (int)(n - j0 < BLK ? n - j0 : BLK);
        float bm = -INFINITY;
        for (int j = 0; j < nb; j++) {
            s[j] = scale * dot_f32(q, K + (j0 + j) * k_stride, dk);
            if (s[j] > bm) bm = s[j];
        }
        if (bm > m) {
            float c = expf(m - bm); /* m = -inf on the first block gives c = 0 */
            d *= c;
            for (int i = 0; i < dv; i++) out[i] *= c;
            m = bm;
        }
        for (int j = 0; j < nb; j++) {
            float p = expf(s[j] - m);
            d += p;
            const float *v = V + (j0 + j) * v_stride;
            #pragma omp simd
            for (int i = 0; i < dv; i++) out[i] += p * v[i];
        }
    }
    if (d > 0.0f) {
        float inv = 1.0f / d;
        for (int i = 0; i < dv; i++) out[i] *= inv;
        *lse = m + logf(d);
    } else {
        *lse = -INFINITY;
    }
}

void krn_attn_merge(float *o_a, float *lse_a, const float *o_b, float lse_b, int dv) {
    if (lse_b == -INFINITY) return;
    if (*lse_a == -INFINITY) {
        memcpy(o_a, o_b, sizeof(float) * dv);
        *lse_a = lse_b;
        return;
    }
    float l = fmaxf(*lse_a, lse_b);
    l += logf(expf(*lse_a - l) + expf(lse_b - l));
    float wa = expf(*lse_a - l), wb = expf(lse_b - l);
    for (int i = 0; i < dv; i++) o_a[i] = wa * o_a[i] + wb * o_b[i];
    *lse_a = l;
}
