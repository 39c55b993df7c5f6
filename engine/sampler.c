/* Sampling chain over a vocabulary-sized candidate buffer allocated once per sampler, so a
 * decode step allocates nothing. Top-k uses a partial selection, top-p a sort of the survivors. */
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t id;
    float logit;
} cand;

struct eng_sampler {
    eng_sampler_params p;
    int n_vocab;
    uint64_t rng[4];
    cand *c;
    cand *d;         /* typical sampling's candidates ranked by distance to the entropy */
    float *raw;      /* the logits before penalties, for the reported logprob */
    float *probs;    /* exp of the logits, scratch */
    int32_t *counts; /* per-token occurrence counts in the penalty window */
};

eng_sampler_params eng_sampler_default(void) {
    eng_sampler_params p = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                            .repeat_penalty = 1.0f, .repeat_last_n = 64};
    return p;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** */
static uint64_t next_u64(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}

eng_sampler *eng_sampler_create(const eng_sampler_params *p, int n_vocab) {
    eng_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->c = malloc(sizeof(cand) * n_vocab);
    s->d = malloc(sizeof(cand) * n_vocab);
    s->counts = calloc(n_vocab, sizeof(int32_t));
    s->raw = malloc(sizeof(float) * n_vocab);
    s->probs = malloc(sizeof(float) * n_vocab);
    if (!s->c || !s->d || !s->counts || !s->raw || !s->probs) {
        eng_sampler_free(s);
        return NULL;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return s;
}

void eng_sampler_free(eng_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->d);
    free(s->counts);
    free(s->raw);
    free(s->probs);
    free(s);
}

static int cmp_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->logit, y = ((const cand *)b)->logit;
    return (x < y) - (x > y);
}

/* Moves the k largest candidates to the front (unordered), quickselect style. */
static void select_top_k(cand *c, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = c[(lo + hi) / 2].logit;
        int i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot) i++;
            while (c[j].logit < pivot) j--;
            if (i <= j) {
                cand t = c[i]; c[i] = c[j]; c[j] = t;
                i++; j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

static void apply_penalties(eng_sampler *s, float *logits, const int32_t *hist, int n_hist) {
    const eng_sampler_params *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    int start = p->repeat_last_n < 0 || p->repeat_last_n > n_hist ? 0 : n_hist - p->repeat_last_n;
    for (int i = start; i < n_hist; i++)
        if (hist[i] >= 0 && hist[i] < s->n_vocab) s->counts[hist[i]]++;
    for (int i = start; i < n_hist; i++) {
        int32_t t = hist[i];
        if (t < 0 || t >= s->n_vocab || s->counts[t] == 0) continue;
        float *l = &logits[t];
        if (p->repeat_penalty != 1.0f && p->repeat_penalty > 0.0f)
            *l = *l > 0 ? *l / p->repeat_penalty : *l * p->repeat_penalty;
        *l -= s->counts[t] * p->frequency_penalty + p->presence_penalty;
        s->counts[t] = 0; /* each distinct token once */
    }
}

/* out[i] = exp((x[i] - mx) * k), returns their sum. No errno from expf lets the compiler use
 * its vector expf: this runs over the whole vocabulary once or twice per sampled token. */
__attribute__((optimize("no-math-errno")))
static float exp_sum(const float *x, float *out, int n, float mx, float k) {
    float z = 0.0f;
    #pragma omp simd reduction(+ : z)
    for (int i = 0; i < n; i++) {
        float e = expf((x[i] - mx) * k);
        out[i] = e;
        z += e;
    }
    return z;
}

static float max_of(const float *x, int n) {
    float mx = -INFINITY;
    #pragma omp simd reduction(max : mx)
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* Samples index i of c[0..m) (sorted by logit, descending) with weight exp((logit - c0) / t). */
static int pick_sorted(eng_sampler *s, const cand *c, int m, float t) {
    double tot = 0.0;
    for (int i = 0; i < m; i++) tot += exp(((double)c[i].logit - c[0].logit) / t);
    double u = (double)(next_u64(s->rng) >> 11) * 0x1.0p-53 * tot, acc = 0.0;
    int last = 0; /* rounding fallback: the last candidate with weight (never an excluded one) */
    for (int i = 0; i < m; i++) {
        const double w = exp(((double)c[i].logit - c[0].logit) / t);
        if (w > 0) last = i;
        acc += w;
        if (u < acc) return i;
    }
    return last;
}

/* Sets the logits of the tokens allow excludes to -inf; 0 when it excludes all. A -inf logit
 * drops out of every later stage: argmax, exp, the sorts and cut-offs. */
static int apply_allow(float *logits, int n, const uint32_t *allow) {
    int any = 0;
    for (int w = 0; w < (n + 31) / 32; w++) {
        const uint32_t m = allow[w];
        if (m == 0xffffffffu && (w + 1) * 32 <= n) { any = 1; continue; }
        for (int b = 0; b < 32 && w * 32 + b < n; b++) {
            if (m >> b & 1) any = 1;
            else logits[w * 32 + b] = -INFINITY;
        }
    }
    return any;
}

/* Locally typical sampling over c[0..m): keeps the candidates whose surprisal -log p is nearest
 * the distribution's entropy until they hold typical_p of the mass, then sorts them by logit
 * (descending) for the stages after. Ranking grows a head by partial selection, as top-p does,
 * since the mass is usually reached long before the whole vocabulary. Returns the new m. */
static int typical(eng_sampler *s, cand *c, int m, float typical_p) {
    float mx = -INFINITY;
    for (int i = 0; i < m; i++) mx = c[i].logit > mx ? c[i].logit : mx;
    double z = 0.0;
    for (int i = 0; i < m; i++) z += exp((double)c[i].logit - mx);
    const double log_z = mx + log(z);
    double h = 0.0; /* entropy */
    for (int i = 0; i < m; i++) {
        const double lp = c[i].logit - log_z;
        if (isfinite(lp)) h -= exp(lp) * lp;
    }
    cand *d = s->d;
    int keep = m;
    for (int k = 64;; k *= 4) {
        if (k >= m) k = m;
        for (int i = 0; i < m; i++) {
            const double lp = c[i].logit - log_z;
            d[i].id = i; /* index into c */
            d[i].logit = isfinite(lp) ? -(float)fabs(-lp - h) : -INFINITY; /* nearest first */
        }
        if (k < m) select_top_k(d, m, k);
        qsort(d, k, sizeof(cand), cmp_desc);
        double acc = 0.0;
        int got = 0;
        for (int i = 0; i < k; i++) {
            acc += exp((double)c[d[i].id].logit - log_z);
            if (acc >= typical_p) { keep = i + 1; got = 1; break; }
        }
        if (got || k == m) {
            if (!got) keep = m;
            break;
        }
    }
    /* gather the kept candidates into the front of c, by logit */
    for (int i = 0; i < keep; i++) d[i] = c[d[i].id];
    memcpy(c, d, sizeof(cand) * keep);
    qsort(c, keep, sizeof(cand), cmp_desc);
    return keep;
}

int32_t eng_sampler_sample(eng_sampler *s, float *logits, const int32_t *history, int n_hist,
                           float *logprob) {
    return eng_sampler_sample_allowed(s, logits, NULL, history, n_hist, logprob);
}

int32_t eng_sampler_sample_allowed(eng_sampler *s, float *logits, const uint32_t *allow,
                                   const int32_t *history, int n_hist, float *logprob) {
    const int n = s->n_vocab;
    const eng_sampler_params *p = &s->p;
    float log_z = 0.0f;
    if (logprob) {
        /* log-softmax normaliser of the raw distribution, for the reported logprob */
        memcpy(s->raw, logits, sizeof(float) * n);
        const float mx = max_of(logits, n);
        log_z = mx + logf(exp_sum(logits, s->probs, n, mx, 1.0f));
    }
    if (allow && !apply_allow(logits, n, allow)) return -1;
    for (int i = 0; i < p->n_bias && i < ENG_MAX_LOGIT_BIAS; i++)
        if (p->bias_id[i] >= 0 && p->bias_id[i] < n) logits[p->bias_id[i]] += p->bias[i];
    apply_penalties(s, logits, history, n_hist);
    const bool use_typical = p->typical_p > 0.0f && p->typical_p < 1.0f;
    bool cut = false; /* c[0..m) is all that is left: later stages normalise over it alone */
    int32_t chosen;
    if (p->temperature <= 0.0f) {
        chosen = 0;
        for (int i = 1; i < n; i++) if (logits[i] > logits[chosen]) chosen = i;
    } else if ((p->top_k <= 0 || p->top_k >= n) && p->top_p >= 1.0f && p->min_p <= 0.0f && !use_typical) {
        /* no truncation: sample the whole softmax directly, no sort */
        const float mx = max_of(logits, n);
        const float tot = exp_sum(logits, s->probs, n, mx, 1.0f / p->temperature);
        const float u = (float)((next_u64(s->rng) >> 11) * 0x1.0p-53) * tot;
        float acc = 0.0f;
        chosen = -1;
        int last = 0;
        for (int i = 0; i < n; i++) {
            if (s->probs[i] > 0) last = i;
            acc += s->probs[i];
            if (u < acc) { chosen = i; break; }
        }
        if (chosen < 0) chosen = last; /* rounding: never an excluded token */
    } else {
        cand *c = s->c;
        int m;
        if (p->top_k > 0 && p->top_k < n) {
            for (int i = 0; i < n; i++) { c[i].id = i; c[i].logit = logits[i]; }
            select_top_k(c, n, p->top_k);
            m = p->top_k;
            qsort(c, m, sizeof(cand), cmp_desc);
            cut = true;
        } else if (use_typical) {
            for (int i = 0; i < n; i++) { c[i].id = i; c[i].logit = logits[i]; }
            m = n;
        } else {
            /* top-p/min-p over the whole vocabulary: sort only a growing head of it, until the
             * head holds the nucleus (top-p) and every token above the min-p floor */
            const float mx = max_of(logits, n);
            const float z = exp_sum(logits, s->probs, n, mx, 1.0f);
            const float floor_logit = p->min_p > 0.0f ? mx + logf(p->min_p) : INFINITY;
            for (int k = 64;; k *= 4) {
                if (k >= n) k = n;
                for (int i = 0; i < n; i++) { c[i].id = i; c[i].logit = logits[i]; }
                if (k < n) select_top_k(c, n, k);
                qsort(c, k, sizeof(cand), cmp_desc);
                double mass = 0.0;
                for (int i = 0; i < k; i++) mass += s->probs[c[i].id] / z;
                int enough_p = p->top_p >= 1.0f || mass >= p->top_p;
                int enough_min = p->min_p <= 0.0f || c[k - 1].logit < floor_logit;
                if (k == n || (enough_p && enough_min)) {
                    m = k;
                    break;
                }
            }
        }
        if (use_typical) {
            m = typical(s, c, m, p->typical_p);
            cut = true;
        }
        /* probabilities at temperature 1 for top-p/min-p, as llama.cpp's chain does */
        if (p->top_p > 0.0f && p->top_p < 1.0f) {
            double sum = 0.0, acc = 0.0;
            if (cut) {
                for (int i = 0; i < m; i++) sum += exp((double)c[i].logit - c[0].logit);
            } else {
                /* the head was cut from the whole vocabulary, whose max is c[0]: normalise by
                 * the full softmax sum in probs */
                for (int i = 0; i < n; i++) sum += (double)s->probs[i];
            }
            for (int i = 0; i < m; i++) {
                acc += exp((double)c[i].logit - c[0].logit) / sum;
                if (acc >= p->top_p) { m = i + 1; break; }
            }
        }
        if (p->min_p > 0.0f) {
            const double thr = log(p->min_p);
            int keep = 1;
            while (keep < m && c[keep].logit - c[0].logit >= thr) keep++;
            m = keep;
        }
        chosen = c[pick_sorted(s, c, m, p->temperature)].id;
    }
    if (logprob) *logprob = s->raw[chosen] - log_z;
    return chosen;
}
