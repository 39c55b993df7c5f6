/* Sampler behaviour a user sees: greedy picks the argmax, the same seed repeats the same
 * choices, top-k/top-p/min-p never pick outside their sets, the empirical distribution at
 * temperature 1 follows softmax, penalties steer away from repeated tokens. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sampler.h"

enum { V = 1000 };

static void fill(float *l) {
    for (int i = 0; i < V; i++) l[i] = -0.01f * i; /* token 0 most likely, decreasing */
    l[500] = 3.0f;                                 /* a clear argmax in the middle */
}

/* N draws from the 4-token distribution pr under q, counted per token. */
static void draw4(const eng_sampler_params *q, const double pr[4], int N, int cnt[4]) {
    eng_sampler *t = eng_sampler_create(q, 4);
    for (int i = 0; i < N; i++) {
        float x[4];
        for (int j = 0; j < 4; j++) x[j] = (float)log(pr[j]);
        cnt[eng_sampler_sample(t, x, NULL, 0, NULL)]++;
    }
    eng_sampler_free(t);
}

int main(void) {
    float l[V];
    eng_sampler_params p = eng_sampler_default();
    p.temperature = 0.0f;
    eng_sampler *s = eng_sampler_create(&p, V);
    fill(l);
    float lp = 0;
    CHECK(eng_sampler_sample(s, l, NULL, 0, &lp) == 500, "greedy picks the argmax");
    CHECK(lp < 0 && lp > -2.0f, "logprob of the argmax is plausible: %f", lp);
    eng_sampler_free(s);

    /* same seed, same sequence; another seed, another sequence */
    int a[64], b[64], c[64];
    int *outs[3] = {a, b, c};
    uint64_t seeds[3] = {42, 42, 43};
    for (int r = 0; r < 3; r++) {
        eng_sampler_params q = eng_sampler_default();
        q.temperature = 1.5f; q.top_k = 0; q.top_p = 1.0f; q.min_p = 0.0f;
        q.seed = seeds[r];
        eng_sampler *t = eng_sampler_create(&q, V);
        for (int i = 0; i < 64; i++) { fill(l); outs[r][i] = eng_sampler_sample(t, l, NULL, 0, NULL); }
        eng_sampler_free(t);
    }
    CHECK(!memcmp(a, b, sizeof a), "same seed gives the same tokens");
    CHECK(memcmp(a, c, sizeof a), "another seed gives other tokens");

    /* top-k = 3: only the three largest logits (500, 0, 1) can appear */
    {
        eng_sampler_params q = eng_sampler_default();
        q.temperature = 5.0f; q.top_k = 3; q.top_p = 1.0f; q.min_p = 0.0f; q.seed = 1;
        eng_sampler *t = eng_sampler_create(&q, V);
        int ok = 1, seen[3] = {0};
        for (int i = 0; i < 2000; i++) {
            fill(l);
            int k = eng_sampler_sample(t, l, NULL, 0, NULL);
            ok &= k == 500 || k == 0 || k == 1;
            seen[k == 500 ? 0 : k == 0 ? 1 : 2]++;
        }
        CHECK(ok && seen[0] && seen[1] && seen[2], "top-k 3 stays in the top three and uses all");
        eng_sampler_free(t);
    }
    /* top-p and min-p on a 4-token distribution with probabilities .5 .3 .15 .05 */
    {
        const double pr[4] = {0.5, 0.3, 0.15, 0.05};
        for (int mode = 0; mode < 3; mode++) {
            eng_sampler_params q = eng_sampler_default();
            q.top_k = 0; q.top_p = 1.0f; q.min_p = 0.0f; q.temperature = 1.0f; q.seed = 7;
            if (mode == 0) q.top_p = 0.75f;  /* keeps .5 .3 */
            if (mode == 1) q.min_p = 0.25f;  /* keeps p >= .125: .5 .3 .15 */
            int cnt[4] = {0};
            const int N = 40000;
            draw4(&q, pr, N, cnt);
            if (mode == 0) CHECK(cnt[2] == 0 && cnt[3] == 0 && fabs(cnt[0] / (double)N - 0.625) < 0.02,
                                 "top-p 0.75: %d %d %d %d", cnt[0], cnt[1], cnt[2], cnt[3]);
            if (mode == 1) CHECK(cnt[3] == 0 && cnt[2] > 0, "min-p 0.25: %d %d %d %d", cnt[0], cnt[1], cnt[2], cnt[3]);
            if (mode == 2) {
                int ok = 1;
                for (int j = 0; j < 4; j++) ok &= fabs(cnt[j] / (double)N - pr[j]) < 0.015;
                CHECK(ok, "temperature 1 follows softmax: %d %d %d %d", cnt[0], cnt[1], cnt[2], cnt[3]);
            }
        }
    }
    /* typical sampling on .5 .3 .15 .05 (entropy 1.142 nats; surprisal distances .449 .062
     * .755 1.854): typical_p 0.7 keeps .3 then .5 (mass .8), renormalised to .625/.375;
     * typical_p 0.25 keeps .3 alone. With top-k 3 first, the same two stay. */
    {
        const double pr[4] = {0.5, 0.3, 0.15, 0.05};
        for (int mode = 0; mode < 3; mode++) {
            eng_sampler_params q = eng_sampler_default();
            q.top_k = mode == 2 ? 3 : 0; q.top_p = 1.0f; q.min_p = 0.0f; q.temperature = 1.0f; q.seed = 9;
            q.typical_p = mode == 1 ? 0.25f : 0.7f;
            int cnt[4] = {0};
            const int N = 40000;
            draw4(&q, pr, N, cnt);
            if (mode != 1) CHECK(cnt[2] == 0 && cnt[3] == 0 && fabs(cnt[0] / (double)N - 0.625) < 0.02,
                                 "typical 0.7 (top-k %d): %d %d %d %d", q.top_k, cnt[0], cnt[1], cnt[2], cnt[3]);
            else CHECK(cnt[1] == N, "typical 0.25 keeps the most typical token: %d %d %d %d",
                       cnt[0], cnt[1], cnt[2], cnt[3]);
        }
    }
    /* typical sampling on a large vocabulary (the growing-head path): every pick lies in the set
     * computed by brute force, and more than its single most typical token is used */
    {
        enum { BV = 5000 };
        static float base[BV], x[BV];
        for (int i = 0; i < BV; i++) base[i] = (float)(-0.003 * i) + (i % 5 == 0 ? 2.0f : 0.0f);
        double mx = 2.0, z = 0, h = 0;
        for (int i = 0; i < BV; i++) z += exp(base[i] - mx);
        const double lz = mx + log(z);
        for (int i = 0; i < BV; i++) h -= exp(base[i] - lz) * (base[i] - lz);
        static double dist[BV];
        int order[BV];
        for (int i = 0; i < BV; i++) { order[i] = i; dist[i] = fabs(-(base[i] - lz) - h); }
        for (int i = 1; i < BV; i++) { /* insertion sort by distance, ascending */
            int v = order[i], j = i;
            while (j > 0 && dist[order[j - 1]] > dist[v]) { order[j] = order[j - 1]; j--; }
            order[j] = v;
        }
        static char in[BV];
        double acc = 0;
        int set = 0;
        for (int i = 0; i < BV; i++) { in[order[i]] = 1; set++; acc += exp(base[order[i]] - lz); if (acc >= 0.3) break; }
        eng_sampler_params q = eng_sampler_default();
        q.top_k = 0; q.top_p = 1.0f; q.min_p = 0.0f; q.temperature = 1.0f; q.seed = 5; q.typical_p = 0.3f;
        eng_sampler *t = eng_sampler_create(&q, BV);
        int ok = 1, distinct = 0;
        static char seen[BV];
        for (int i = 0; i < 3000; i++) {
            memcpy(x, base, sizeof x);
            int k = eng_sampler_sample(t, x, NULL, 0, NULL);
            ok &= k >= 0 && k < BV && in[k];
            if (k >= 0 && k < BV && !seen[k]) { seen[k] = 1; distinct++; }
        }
        eng_sampler_free(t);
        CHECK(ok && set > 64 && distinct > set / 2, "typical 0.3 over 5000 tokens stays in its set of %d (used %d)",
              set, distinct);
    }
    /* repetition penalty: a repeated argmax loses to the runner-up */
    {
        eng_sampler_params q = eng_sampler_default();
        q.temperature = 0.0f; q.repeat_penalty = 2.0f;
        eng_sampler *t = eng_sampler_create(&q, V);
        fill(l);
        l[0] = 2.0f; /* runner-up */
        int32_t hist[2] = {500, 500};
        float lp2;
        int k = eng_sampler_sample(t, l, hist, 2, &lp2);
        CHECK(k == 0, "repeat penalty moves greedy off the repeated token (got %d)", k);
        eng_sampler_free(t);
        q.repeat_penalty = 1.0f; q.presence_penalty = 2.0f;
        t = eng_sampler_create(&q, V);
        fill(l);
        l[0] = 2.0f;
        CHECK(eng_sampler_sample(t, l, hist, 2, NULL) == 0, "presence penalty steers away");
        eng_sampler_free(t);
    }
    /* top-p and min-p without top-k on a large vocabulary (the sorted-head path): every pick
     * lies in the nucleus computed by brute force, and the nucleus is used beyond its head */
    {
        enum { BV = 5000 };
        static float base[BV], x[BV];
        for (int i = 0; i < BV; i++) base[i] = (float)(-0.004 * i) + (i % 7 == 0 ? 1.0f : 0.0f);
        /* brute force nucleus for top-p 0.5 */
        int order[BV];
        for (int i = 0; i < BV; i++) order[i] = i;
        for (int i = 1; i < BV; i++) { /* insertion sort by logit, descending */
            int v = order[i], j = i;
            while (j > 0 && base[order[j - 1]] < base[v]) { order[j] = order[j - 1]; j--; }
            order[j] = v;
        }
        double tot = 0;
        for (int i = 0; i < BV; i++) tot += exp((double)base[i]);
        static char in[BV];
        double acc = 0;
        int nucleus = 0;
        for (int i = 0; i < BV; i++) { in[order[i]] = 1; nucleus++; acc += exp((double)base[order[i]]) / tot; if (acc >= 0.5) break; }
        eng_sampler_params q = eng_sampler_default();
        q.top_k = 0; q.top_p = 0.5f; q.min_p = 0.0f; q.temperature = 1.0f; q.seed = 3;
        eng_sampler *t = eng_sampler_create(&q, BV);
        int ok = 1, beyond = 0;
        for (int i = 0; i < 3000; i++) {
            memcpy(x, base, sizeof x);
            int k = eng_sampler_sample(t, x, NULL, 0, NULL);
            ok &= in[k];
            beyond |= k != order[0] && k != order[1];
        }
        CHECK(ok && beyond && nucleus > 64, "top-p 0.5 over %d tokens stays in the %d-token nucleus", BV, nucleus);
        eng_sampler_free(t);
    }
    {   /* an allow mask (constrained decoding): every chain picks only allowed tokens, the
         * logprob stays the model's, and a mask that admits nothing is refused */
        uint32_t allow[(V + 31) / 32];
        memset(allow, 0, sizeof allow);
        const int ok_ids[] = {3, 77, 640, 999};
        for (int i = 0; i < 4; i++) allow[ok_ids[i] >> 5] |= 1u << (ok_ids[i] & 31);
        const float temps[] = {0.0f, 1.0f, 1.0f, 1.0f};
        const int topks[] = {0, 0, 40, 0};
        const float topps[] = {1.0f, 1.0f, 0.95f, 0.9f};
        int bad = 0, seen[4] = {0};
        float lp_greedy = 0, ref_lp = 0;
        for (int c = 0; c < 4; c++) {
            eng_sampler_params q = eng_sampler_default();
            q.temperature = temps[c]; q.top_k = topks[c]; q.top_p = topps[c]; q.min_p = 0.0f; q.seed = 11 + c;
            eng_sampler *t = eng_sampler_create(&q, V);
            for (int i = 0; i < 400; i++) {
                fill(l);
                float lpi = 0;
                int k = eng_sampler_sample_allowed(t, l, allow, NULL, 0, &lpi);
                int in = k == 3 || k == 77 || k == 640 || k == 999;
                bad += !in;
                for (int j = 0; j < 4 && in; j++) seen[j] |= k == ok_ids[j];
                if (c == 0 && i == 0) lp_greedy = lpi;
            }
            eng_sampler_free(t);
        }
        /* the model's logprob of token 3 under the full softmax */
        fill(l);
        double z = 0;
        for (int i = 0; i < V; i++) z += exp((double)l[i]);
        ref_lp = (float)(l[3] - log(z));
        CHECK(bad == 0, "samples outside the allow mask: %d of 1600", bad);
        CHECK(seen[0] && seen[1], "sampling reaches several allowed tokens");
        CHECK(fabsf(lp_greedy - ref_lp) < 1e-4f, "greedy under a mask picks the best allowed token with the "
              "model's logprob (%f vs %f)", lp_greedy, ref_lp);
        memset(allow, 0, sizeof allow);
        eng_sampler_params q = eng_sampler_default();
        eng_sampler *t = eng_sampler_create(&q, V);
        fill(l);
        CHECK(eng_sampler_sample_allowed(t, l, allow, NULL, 0, NULL) == -1, "an empty mask is refused");
        eng_sampler_free(t);
    }
    eng_sampler_free(NULL);
    return check_summary("test_sampler");
}
