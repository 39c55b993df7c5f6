/* Forward-pass operations against plain double-precision loops: RMSNorm, both RoPE layouts,
 * GELU/SiLU gating, dense attention with its log-sum-exp across odd lengths and head dims,
 * and the exactness of merging attention computed in parts. Tolerance: atol 1e-5 + rtol 1e-4. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ops.h"


static int close_to(double got, double ref) { return fabs(got - ref) <= 1e-5 + 1e-4 * fabs(ref); }

static void ref_attn(const float *q, const float *K, const float *V, int n, int ks, int vs, int dk,
                     int dv, float scale, double *out, double *lse) {
    double *s = malloc(sizeof(double) * (n ? n : 1)), m = -INFINITY, z = 0;
    for (int j = 0; j < n; j++) {
        double d = 0;
        for (int i = 0; i < dk; i++) d += (double)q[i] * K[(size_t)j * ks + i];
        s[j] = d * scale;
        if (s[j] > m) m = s[j];
    }
    for (int i = 0; i < dv; i++) out[i] = 0;
    for (int j = 0; j < n; j++) {
        double p = exp(s[j] - m);
        z += p;
        for (int i = 0; i < dv; i++) out[i] += p * V[(size_t)j * vs + i];
    }
    for (int i = 0; i < dv; i++) out[i] = n ? out[i] / z : 0;
    *lse = n ? m + log(z) : -INFINITY;
    free(s);
}

int main(void) {
    rng_seed(0x1234567);
    /* rmsnorm */
    for (int n = 1; n <= 1025; n += 128) {
        float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        for (int i = 0; i < n; i++) { x[i] = 3 * rng_pm1(); w[i] = 1 + rng_pm1(); }
        krn_rmsnorm(y, x, w, n, 1e-6f);
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
        double r = 1 / sqrt(ss / n + 1e-6);
        int ok = 1;
        for (int i = 0; i < n; i++) ok &= close_to(y[i], x[i] * r * w[i]);
        CHECK(ok, "rmsnorm n=%d", n);
        free(x); free(w); free(y);
    }

    /* rope: both layouts against explicit rotation of the documented pairs */
    for (int neox = 0; neox < 2; neox++) {
        const int hd = 64, n_rot = 48;
        float x[64], y[64], c[32], s[32];
        for (int i = 0; i < hd; i++) x[i] = rng_pm1();
        memcpy(y, x, sizeof x);
        const int64_t pos = 1234;
        krn_rope_angles(c, s, pos, n_rot, 10000.0f, 1.0f, NULL);
        krn_rope(y, n_rot, c, s, neox);
        int ok = 1;
        for (int i = 0; i < n_rot / 2; i++) {
            double th = pos * pow(10000.0, -2.0 * i / n_rot);
            int a = neox ? i : 2 * i, b = neox ? i + n_rot / 2 : 2 * i + 1;
            ok &= close_to(y[a], x[a] * cos(th) - x[b] * sin(th));
            ok &= close_to(y[b], x[a] * sin(th) + x[b] * cos(th));
        }
        for (int i = n_rot; i < hd; i++) ok &= y[i] == x[i];
        CHECK(ok, "rope neox=%d", neox);
    }
    {
        float c[4], s[4], f[4] = {1, 2, 4, 8};
        krn_rope_angles(c, s, 7, 8, 500000.0f, 0.5f, f);
        int ok = 1;
        for (int i = 0; i < 4; i++) {
            double th = 7 * pow(500000.0, -2.0 * i / 8) * 0.5 / f[i];
            ok &= close_to(c[i], cos(th)) && close_to(s[i], sin(th));
        }
        CHECK(ok, "rope angles with freq factors and scale");
    }
    CHECK(close_to(krn_gelu_tanh(1.0f), 0.8411919906), "gelu_tanh(1) = %f", krn_gelu_tanh(1.0f));
    CHECK(close_to(krn_silu(2.0f), 2.0 / (1 + exp(-2.0))), "silu(2)");

    /* attention across odd lengths and head dims, strided rows as in a GQA cache */
    const int lens[] = {0, 1, 3, 63, 64, 65, 129, 257, 1000};
    const int dims[] = {64, 128, 256};
    for (size_t di = 0; di < 3; di++) {
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int d = dims[di], n = lens[li], stride = 2 * d;
            float *K = malloc(sizeof(float) * ((size_t)n * stride + 1));
            float *V = malloc(sizeof(float) * ((size_t)n * stride + 1));
            float q[256], out[256];
            double ref[256], rl;
            for (size_t i = 0; i < (size_t)n * stride; i++) { K[i] = 2 * rng_pm1(); V[i] = rng_pm1(); }
            for (int i = 0; i < d; i++) q[i] = 2 * rng_pm1();
            float lse;
            krn_attn_dense(q, K, V, n, stride, stride, d, d, 1.0f / sqrtf((float)d), out, &lse);
            ref_attn(q, K, V, n, stride, stride, d, d, 1.0f / sqrtf((float)d), ref, &rl);
            int ok = n ? close_to(lse, rl) : isinf(lse) && lse < 0;
            for (int i = 0; i < d; i++) ok &= close_to(out[i], ref[i]) && !isnan(out[i]);
            CHECK(ok, "attention n=%d d=%d (lse %f vs %f)", n, d, lse, rl);

            /* split into three parts and merge: must equal the whole */
            if (n >= 3) {
                int a = n / 3, b = n / 2;
                float o1[256], o2[256], o3[256], l1, l2, l3;
                krn_attn_dense(q, K, V, a, stride, stride, d, d, 1.0f / sqrtf((float)d), o1, &l1);
                krn_attn_dense(q, K + (size_t)a * stride, V + (size_t)a * stride, b - a, stride, stride, d, d,
                               1.0f / sqrtf((float)d), o2, &l2);
                krn_attn_dense(q, K + (size_t)b * stride, V + (size_t)b * stride, n - b, stride, stride, d, d,
                               1.0f / sqrtf((float)d), o3, &l3);
                krn_attn_merge(o1, &l1, o2, l2, d);
                krn_attn_merge(o1, &l1, o3, l3, d);
                int okm = close_to(l1, rl);
                for (int i = 0; i < d; i++) okm &= close_to(o1[i], ref[i]);
                CHECK(okm, "merge of 3 parts n=%d d=%d", n, d);
            }
            free(K); free(V);
        }
    }
    /* large logits must not overflow */
    {
        float q[64], K[64 * 4], V[64 * 4], out[64], lse;
        for (int i = 0; i < 64; i++) q[i] = 100.0f;
        for (int i = 0; i < 256; i++) { K[i] = 100.0f; V[i] = 1.0f; }
        krn_attn_dense(q, K, V, 4, 64, 64, 64, 64, 1.0f, out, &lse);
        CHECK(isfinite(lse) && fabsf(out[0] - 1.0f) < 1e-5f, "no overflow with logits 6.4e5");
    }
    return check_summary("test_ops");
}
