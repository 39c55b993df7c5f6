/* The tiny random models the engine tests run on (built by `make tiny`), and the greedy pick
 * they decode with. Include after check.h.
 * defines: TINY_MODELS, N_TINY_MODELS, tiny_model_load, argmax */
#ifndef KVSEEK_TINY_MODELS_H
#define KVSEEK_TINY_MODELS_H

#include "model.h"

/* A global-only llama and a gemma3 with sliding-window layers, f32 weights. */
static const char *const TINY_MODELS[] = {"build/tiny/tiny-llama-f32.gguf", "build/tiny/tiny-gemma3-f32.gguf"};
enum { N_TINY_MODELS = sizeof TINY_MODELS / sizeof TINY_MODELS[0] };

/* Model i, or NULL with a recorded failure. */
static inline eng_model *tiny_model_load(int i) {
    char err[512];
    eng_model *m = eng_model_load(TINY_MODELS[i], NULL, err, sizeof err);
    CHECK(m != NULL, "load %s: %s (run `make tiny`)", TINY_MODELS[i], err);
    return m;
}

static inline int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

#endif
