/* Continuous batching in the engine: rows of several sequences run in one eng_forward_batch give
 * the same logits as each sequence run alone (prefill slices and decode rows mixed, chunk
 * borders crossed), and a rejected batch leaves every sequence unchanged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model.h"

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static void run_model(const char *path) {
    char err[512];
    eng_model_params mp = {.chunk = 5}; /* batches cross chunk borders */
    eng_model *m = eng_model_load(path, &mp, err, sizeof err);
    CHECK(m != NULL, "load %s: %s", path, err);
    if (!m) return;
    const int V = eng_model_hparams(m)->n_vocab;
    enum { NA = 23, NB = 17, NC = 9 };
    int32_t ta[NA], tb[NB], tc[NC];
    for (int i = 0; i < NA; i++) ta[i] = (i * 37 + 5) % V;
    for (int i = 0; i < NB; i++) tb[i] = (i * 53 + 11) % V;
    for (int i = 0; i < NC; i++) tc[i] = (i * 71 + 3) % V;

    /* references: each sequence alone, all logits */
    float *ra = malloc(sizeof(float) * NA * V), *rb = malloc(sizeof(float) * NB * V), *rc = malloc(sizeof(float) * NC * V);
    eng_seq *s = eng_seq_create(m, 64, err, sizeof err);
    CHECK(eng_forward(m, s, ta, NA, ra, true, err, sizeof err) == 0, "ref a: %s", err);
    eng_seq_reset(s);
    CHECK(eng_forward(m, s, tb, NB, rb, true, err, sizeof err) == 0, "ref b: %s", err);
    eng_seq_reset(s);
    CHECK(eng_forward(m, s, tc, NC, rc, true, err, sizeof err) == 0, "ref c: %s", err);
    eng_seq_free(s);

    /* batched schedule: A prefills 10 while B prefills 6; then A 1 row + B 6 + C 4; then every
     * sequence advances by one row per step (decode) or a slice until all are done */
    eng_seq *sa = eng_seq_create(m, 64, err, sizeof err), *sb = eng_seq_create(m, 64, err, sizeof err),
            *sc = eng_seq_create(m, 64, err, sizeof err);
    float *ga = malloc(sizeof(float) * NA * V), *gb = malloc(sizeof(float) * NB * V), *gc = malloc(sizeof(float) * NC * V);
    eng_batch_row rows[64];
    int ia = 0, ib = 0, ic = 0, step = 0;
    while (ia < NA || ib < NB || ic < NC) {
        int n = 0;
        int wa = step == 0 ? 10 : 1, wb = step == 0 ? 6 : step == 1 ? 6 : 1, wc = step == 0 ? 0 : step == 1 ? 4 : 2;
        for (int k = 0; k < wc && ic < NC; k++, ic++) rows[n++] = (eng_batch_row){sc, tc[ic], gc + (size_t)ic * V};
        for (int k = 0; k < wa && ia < NA; k++, ia++) rows[n++] = (eng_batch_row){sa, ta[ia], ga + (size_t)ia * V};
        for (int k = 0; k < wb && ib < NB; k++, ib++) rows[n++] = (eng_batch_row){sb, tb[ib], gb + (size_t)ib * V};
        CHECK(eng_forward_batch(m, rows, n, err, sizeof err) == 0, "batch step %d: %s", step, err);
        step++;
    }
    float da = max_diff(ra, ga, (size_t)NA * V), db = max_diff(rb, gb, (size_t)NB * V), dc = max_diff(rc, gc, (size_t)NC * V);
    CHECK(da == 0 && db == 0 && dc == 0, "batched == alone, bit for bit (max diff %g %g %g)", da, db, dc);
    printf("  %s: batched vs alone max diff a %.2g b %.2g c %.2g\n", path, da, db, dc);

    /* rejected batches change nothing */
    int pa = eng_seq_pos(sa), pb = eng_seq_pos(sb);
    rows[0] = (eng_batch_row){sa, 1, NULL};
    rows[1] = (eng_batch_row){sb, 1, NULL};
    rows[2] = (eng_batch_row){sa, 1, NULL};
    CHECK(eng_forward_batch(m, rows, 3, err, sizeof err) != 0 && strstr(err, "consecutive"), "interleaved rows rejected: %s", err);
    rows[1] = (eng_batch_row){sb, V + 5, NULL};
    CHECK(eng_forward_batch(m, rows, 2, err, sizeof err) != 0 && strstr(err, "out of range"), "bad id rejected: %s", err);
    eng_batch_row many[64];
    for (int i = 0; i < 64; i++) many[i] = (eng_batch_row){sb, 1, NULL};
    CHECK(eng_forward_batch(m, many, 64, err, sizeof err) != 0 && strstr(err, "context full"), "overflow rejected: %s", err);
    CHECK(eng_seq_pos(sa) == pa && eng_seq_pos(sb) == pb, "rejected batches leave positions unchanged");

    eng_seq_free(sa); eng_seq_free(sb); eng_seq_free(sc);
    free(ra); free(rb); free(rc); free(ga); free(gb); free(gc);
    eng_model_free(m);
}

int main(void) {
    const char *models[] = {"build/tiny/tiny-gemma3.gguf", "build/tiny/tiny-qwen2-f32.gguf", "build/tiny/tiny-llama.gguf"};
    for (int i = 0; i < 3; i++) {
        FILE *f = fopen(models[i], "rb");
        CHECK(f != NULL, "%s exists (run `make tiny`)", models[i]);
        if (f) { fclose(f); run_model(models[i]); }
    }
    return check_summary("test_batch");
}
