/* Token sampling from logits: repetition/presence/frequency penalties, top-k, top-p, min-p,
 * temperature, and a seeded generator so that the same seed gives the same text.
 * The order follows llama.cpp's default chain: penalties, top-k, typical, top-p, min-p,
 * temperature. */
#ifndef KVSEEK_SAMPLER_H
#define KVSEEK_SAMPLER_H

#include <stdint.h>

#define ENG_MAX_LOGIT_BIAS 300 /* OpenAI's limit */

typedef struct {
    float temperature;      /* <= 0: greedy (argmax) */
    int top_k;              /* <= 0: off */
    float top_p;            /* >= 1: off */
    float typical_p;        /* locally typical sampling (Meister et al., 2022), after top-k:
                             * keeps the tokens whose surprisal is nearest the entropy, up to this
                             * much probability; <= 0 or >= 1: off */
    float min_p;            /* <= 0: off */
    float repeat_penalty;   /* 1: off; divides positive logits, multiplies negative ones */
    int repeat_last_n;      /* how many recent tokens the penalties look at; -1: all */
    float presence_penalty; /* OpenAI-style, subtracted once per distinct recent token */
    float frequency_penalty;/* OpenAI-style, subtracted per occurrence */
    uint64_t seed;
    /* OpenAI's logit_bias: added to these tokens' logits before the penalties and sampling (the
     * reported logprobs stay the model's); ids past the vocabulary are ignored */
    int n_bias;
    int32_t bias_id[ENG_MAX_LOGIT_BIAS];
    float bias[ENG_MAX_LOGIT_BIAS];
} eng_sampler_params;

/* Defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no penalties, seed 0. */
eng_sampler_params eng_sampler_default(void);

typedef struct eng_sampler eng_sampler;

eng_sampler *eng_sampler_create(const eng_sampler_params *p, int n_vocab);
void eng_sampler_free(eng_sampler *s); /* accepts NULL */

/* Picks the next token. logits (n_vocab) are modified in place. history holds the tokens the
 * penalties look at (prompt and generated). *logprob, when not NULL, receives the chosen
 * token's log-probability under the model's unmodified distribution. */
int32_t eng_sampler_sample(eng_sampler *s, float *logits, const int32_t *history, int n_hist,
                           float *logprob);
/* As eng_sampler_sample, choosing only among the tokens whose bit is set in allow (a bitset of
 * (n_vocab + 31) / 32 words, bit id & 31 of word id >> 5; NULL: every token), as constrained
 * decoding needs. The reported logprob stays the model's. Returns -1 when allow admits none. */
int32_t eng_sampler_sample_allowed(eng_sampler *s, float *logits, const uint32_t *allow,
                                   const int32_t *history, int n_hist, float *logprob);

#endif
