/* Errors travel: a selector or a K/V append that fails in the middle of a batched forward pass
 * (test-only fault hook, eng_fault_arm) fails only its sequence: eng_forward_batch says which,
 * the other sequence's logits are the ones it gets alone, the failed sequence is refused until
 * reset, and after a reset it computes what a fresh sequence does. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tiny_models.h"
#include "model.h"

enum { N_PROMPT = 80, N_DEC = 6, N_CTX = 128 };

static eng_attn_params params_of(idx_kind k) {
    eng_attn_params a = eng_attn_default();
    a.selector = k;
    a.n_sink = 4;
    a.n_window = 16;
    a.top_k = 8;
    return a;
}

/* Greedy tokens of one sequence decoding alone. */
static void alone(eng_model *m, idx_kind k, const int32_t *prompt, int32_t *toks) {
    char err[512];
    const int V = eng_model_hparams(m)->n_vocab;
    float *lg = malloc(sizeof(float) * V);
    eng_attn_params a = params_of(k);
    eng_seq *s = eng_seq_create_ex(m, N_CTX, &a, err, sizeof err);
    CHECK(s && eng_forward(m, s, prompt, N_PROMPT, lg, false, err, sizeof err) == 0, "prefill: %s", err);
    for (int i = 0; i < N_DEC; i++) {
        toks[i] = argmax(lg, V);
        CHECK(eng_forward(m, s, &toks[i], 1, lg, false, err, sizeof err) == 0, "decode: %s", err);
    }
    eng_seq_free(s);
    free(lg);
}

/* A (oracle: selects) and B (dense: never selects) decode in one batch; the fault is armed
 * before step `at`. Returns the step at which A failed (-1: never); B's tokens into tb. */
static int batched(eng_model *m, const char *point, int64_t nth, int at, const int32_t *prompt, int32_t *tb,
                   eng_seq **out_a) {
    char err[512];
    const int V = eng_model_hparams(m)->n_vocab;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    eng_attn_params pa = params_of(IDX_ORACLE), pb = params_of(IDX_DENSE);
    eng_seq *A = eng_seq_create_ex(m, N_CTX, &pa, err, sizeof err), *B = eng_seq_create_ex(m, N_CTX, &pb, err, sizeof err);
    CHECK(eng_forward(m, A, prompt, N_PROMPT, la, false, err, sizeof err) == 0, "prefill A: %s", err);
    CHECK(eng_forward(m, B, prompt, N_PROMPT, lb, false, err, sizeof err) == 0, "prefill B: %s", err);
    int failed_at = -1;
    for (int i = 0; i < N_DEC; i++) {
        tb[i] = argmax(lb, V);
        const int32_t ta = argmax(la, V);
        if (i == at) eng_fault_arm(point, nth);
        int rc;
        if (failed_at < 0) {
            eng_batch_row rows[2] = {{A, ta, la}, {B, tb[i], lb}};
            rc = eng_forward_batch(m, rows, 2, err, sizeof err);
            if (rc == ENG_FORWARD_SEQ_FAILED) {
                failed_at = i;
                CHECK(eng_seq_error(A) && strstr(eng_seq_error(A), "injected") && strstr(err, "injected"),
                      "A's reason: %s / %s", eng_seq_error(A) ? eng_seq_error(A) : "(none)", err);
                CHECK(eng_seq_error(B) == NULL, "B failed too: %s", eng_seq_error(B));
            } else {
                CHECK(rc == 0, "batch: %s", err);
            }
        } else {
            eng_batch_row rows[1] = {{B, tb[i], lb}};
            rc = eng_forward_batch(m, rows, 1, err, sizeof err);
            CHECK(rc == 0, "B alone after A failed: %s", err);
        }
    }
    eng_fault_arm(point, 0);
    /* the failed sequence is refused, with its reason, until reset */
    if (failed_at >= 0) {
        int32_t t = 1;
        CHECK(eng_forward(m, A, &t, 1, la, false, err, sizeof err) != 0 && strstr(err, "failed earlier"),
              "a failed sequence ran again: %s", err);
    }
    eng_seq_free(B);
    free(la);
    free(lb);
    *out_a = A;
    return failed_at;
}

int main(void) {
    for (int mi = 0; mi < N_TINY_MODELS; mi++) {
        char err[512];
        eng_model *m = tiny_model_load(mi);
        if (!m) continue;
        const int V = eng_model_hparams(m)->n_vocab;
        int32_t prompt[N_PROMPT], ref_b[N_DEC], ref_a[N_DEC], got[N_DEC];
        for (int i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((i * 37 + 11) % V);
        alone(m, IDX_DENSE, prompt, ref_b);
        alone(m, IDX_ORACLE, prompt, ref_a);
        const char *points[] = {"select", "kv_append"};
        for (int pi = 0; pi < 2; pi++) {
            eng_seq *A = NULL;
            /* the 2nd select of step 2 (another layer or head), or A's first append of step 2 */
            const int at = batched(m, points[pi], pi == 0 ? 2 : 1, 2, prompt, got, &A);
            CHECK(at == 2, "%s fault: A failed at step %d, expected 2", points[pi], at);
            CHECK(!memcmp(got, ref_b, sizeof got), "%s fault: B's tokens changed", points[pi]);
            /* a reset makes A a fresh sequence again */
            eng_seq_reset(A);
            CHECK(eng_seq_error(A) == NULL, "reset keeps the failure");
            float *lg = malloc(sizeof(float) * V);
            CHECK(eng_forward(m, A, prompt, N_PROMPT, lg, false, err, sizeof err) == 0, "A after reset: %s", err);
            for (int i = 0; i < N_DEC; i++) {
                got[i] = argmax(lg, V);
                CHECK(eng_forward(m, A, &got[i], 1, lg, false, err, sizeof err) == 0, "decode: %s", err);
            }
            CHECK(!memcmp(got, ref_a, sizeof got), "%s fault: A after reset differs from a fresh sequence", points[pi]);
            free(lg);
            eng_seq_free(A);
        }
        eng_model_free(m);
    }
    return check_summary("test_fault");
}
