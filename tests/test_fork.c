/* Forking a prefilled sequence: k forks of one prefill, each decoding with another selector,
 * give the same logits and tokens as k separate prefills with those selectors (the forks share
 * the parent's pages and build their selectors from its kept prefill queries), a fork holds only
 * its own pages, and the parent may be freed before its forks. Tiny models, long enough prompts
 * that every structured selector builds its index (past min_keys). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tiny_models.h"
#include "kvcache.h"
#include "model.h"

enum { N_PROMPT = 1100, N_DEC = 8, N_CTX = N_PROMPT + N_DEC + 8 };

static const idx_kind kinds[] = {IDX_DENSE, IDX_WINDOW, IDX_ORACLE, IDX_RETRIEVAL, IDX_IVF, IDX_CENTROIDS,
                                 IDX_QUEST, IDX_SPARQ};
enum { N_KINDS = sizeof kinds / sizeof kinds[0] };

/* Greedy decode of N_DEC tokens from `first`, logits of each step into out (N_DEC x V). */
static int decode(eng_model *m, eng_seq *s, int32_t first, float *out, int32_t *toks) {
    char err[512];
    const int V = eng_model_hparams(m)->n_vocab;
    int32_t t = first;
    for (int i = 0; i < N_DEC; i++) {
        if (eng_forward(m, s, &t, 1, out + (size_t)i * V, false, err, sizeof err)) {
            fprintf(stderr, "decode: %s\n", err);
            return -1;
        }
        toks[i] = t = argmax(out + (size_t)i * V, V);
    }
    return 0;
}

static eng_attn_params params_of(idx_kind k) {
    eng_attn_params a = eng_attn_default();
    a.selector = k;
    a.n_sink = 4;
    a.n_window = 32;
    a.top_k = 16;
    return a;
}

int main(void) {
    for (int mi = 0; mi < N_TINY_MODELS; mi++) {
        char err[512];
        eng_model *m = tiny_model_load(mi);
        if (!m) continue;
        const int V = eng_model_hparams(m)->n_vocab;
        int32_t *prompt = malloc(sizeof(int32_t) * N_PROMPT);
        for (int i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((i * 2654435761u + 17) % (unsigned)V);
        float *last = malloc(sizeof(float) * V);
        float *ref = malloc(sizeof(float) * N_DEC * V * N_KINDS), *got = malloc(sizeof(float) * N_DEC * V);
        int32_t ref_t[N_KINDS][N_DEC], got_t[N_DEC];

        /* k separate prefills */
        for (int k = 0; k < N_KINDS; k++) {
            eng_attn_params a = params_of(kinds[k]);
            eng_seq *s = eng_seq_create_ex(m, N_CTX, &a, err, sizeof err);
            CHECK(s && eng_forward(m, s, prompt, N_PROMPT, last, false, err, sizeof err) == 0, "prefill: %s", err);
            CHECK(decode(m, s, argmax(last, V), ref + (size_t)k * N_DEC * V, ref_t[k]) == 0, "decode %s",
                  idx_kind_name(kinds[k]));
            eng_seq_free(s);
        }

        /* one prefill, k forks */
        eng_attn_params pa = params_of(IDX_DENSE);
        eng_seq *parent = eng_seq_create_ex(m, N_CTX, &pa, err, sizeof err);
        CHECK(parent && eng_seq_keep_queries(parent, err, sizeof err) == 0, "keep queries: %s", err);
        CHECK(eng_forward(m, parent, prompt, N_PROMPT, last, false, err, sizeof err) == 0, "prefill: %s", err);
        const size_t parent_bytes = eng_seq_bytes(parent), parent_kv = kv_bytes(eng_seq_kv(parent));
        const kv_store *pkv = eng_seq_kv(parent);
        int n_global = 0;
        for (int l = 0; l < eng_model_hparams(m)->n_layer; l++) n_global += !eng_layer_is_local(m, l);
        const size_t borrowed = (size_t)n_global * (N_PROMPT / kv_get_params(pkv)->page_size) * kv_page_bytes(pkv);
        eng_seq *forks[N_KINDS];
        for (int k = 0; k < N_KINDS; k++) {
            eng_attn_params a = params_of(kinds[k]);
            forks[k] = eng_seq_fork(parent, &a, err, sizeof err);
            CHECK(forks[k] != NULL, "fork %s: %s", idx_kind_name(kinds[k]), err);
            if (!forks[k]) continue;
            CHECK(eng_seq_pos(forks[k]) == N_PROMPT, "fork at %d", eng_seq_pos(forks[k]));
            /* its own pages only: the parent's whole pages of global layers are borrowed, the
             * partial last page and the sliding-window rings copied */
            const size_t fb = kv_bytes(eng_seq_kv(forks[k]));
            CHECK(fb == parent_kv - borrowed, "fork of %s holds %zu KV bytes, expected %zu (parent %zu)",
                  idx_kind_name(kinds[k]), fb, parent_kv - borrowed, parent_kv);
        }
        CHECK(eng_seq_bytes(parent) == parent_bytes, "forking changed the parent's memory");
        /* the parent goes first: its pages stay while forks read them */
        eng_seq_free(parent);
        for (int k = 0; k < N_KINDS; k++) {
            if (!forks[k]) continue;
            CHECK(decode(m, forks[k], argmax(last, V), got, got_t) == 0, "fork decode %s", idx_kind_name(kinds[k]));
            CHECK(!memcmp(got_t, ref_t[k], sizeof got_t), "%s: fork tokens differ from a separate prefill's",
                  idx_kind_name(kinds[k]));
            CHECK(!memcmp(got, ref + (size_t)k * N_DEC * V, sizeof(float) * N_DEC * V),
                  "%s: fork logits differ from a separate prefill's", idx_kind_name(kinds[k]));
            eng_seq_free(forks[k]);
        }

        /* dense_below: a retrieval sequence decodes exactly as dense until it reaches the length,
         * builds nothing before, and reads through its selector after */
        {
            eng_attn_params da = params_of(IDX_RETRIEVAL);
            da.dense_below = N_PROMPT + 5;
            eng_seq *ds = eng_seq_create_ex(m, N_CTX, &da, err, sizeof err);
            CHECK(ds && eng_forward(m, ds, prompt, N_PROMPT, last, false, err, sizeof err) == 0, "prefill: %s", err);
            eng_attn_stats st;
            eng_seq_attn_stats(ds, &st);
            CHECK(st.build_s == 0, "dense_below: no build after a prefill shorter than it");
            CHECK(decode(m, ds, argmax(last, V), got, got_t) == 0, "dense_below decode");
            CHECK(!memcmp(got, ref, sizeof(float) * 4 * V), "dense_below: the steps below it have dense's logits");
            eng_seq_attn_stats(ds, &st);
            CHECK(st.sparse_rows > 0 && st.build_s > 0, "dense_below: sparse (and built) past it");
            eng_seq_free(ds);
        }

        /* a parent that kept no queries cannot give a query-learning selector its build */
        eng_seq *plain = eng_seq_create_ex(m, N_CTX, &pa, err, sizeof err);
        CHECK(plain && eng_forward(m, plain, prompt, 64, NULL, false, err, sizeof err) == 0, "prefill: %s", err);
        eng_attn_params ra = params_of(IDX_RETRIEVAL);
        eng_seq *f = eng_seq_fork(plain, &ra, err, sizeof err);
        CHECK(f == NULL && strstr(err, "keep_queries"), "fork without kept queries: %s", f ? "accepted" : err);
        eng_seq_free(f);
        /* the parent resets while a fork lives: the fork keeps the old pages */
        eng_attn_params wa = params_of(IDX_WINDOW);
        f = eng_seq_fork(plain, &wa, err, sizeof err);
        CHECK(f != NULL, "fork: %s", err);
        eng_seq_reset(plain);
        CHECK(eng_seq_pos(plain) == 0 && eng_seq_error(plain) == NULL, "parent reset");
        CHECK(eng_forward(m, plain, prompt, 16, NULL, false, err, sizeof err) == 0, "parent reuse: %s", err);
        int32_t t = 1;
        CHECK(f && eng_forward(m, f, &t, 1, got, false, err, sizeof err) == 0, "fork after parent reset: %s", err);
        eng_seq_free(f);
        eng_seq_free(plain);

        /* a fork of a fork outlives both its ancestors and computes what one sequence with the
         * same tokens does */
        eng_seq *straight = eng_seq_create_ex(m, N_CTX, &wa, err, sizeof err);
        eng_seq *p0 = eng_seq_create_ex(m, N_CTX, &wa, err, sizeof err);
        const int32_t more[3] = {5, 9, 3};
        CHECK(eng_forward(m, straight, prompt, N_PROMPT, NULL, false, err, sizeof err) == 0 &&
              eng_forward(m, straight, more, 2, NULL, false, err, sizeof err) == 0 && /* as f1 */
              eng_forward(m, straight, more + 2, 1, last, false, err, sizeof err) == 0, "straight: %s", err);
        CHECK(eng_forward(m, p0, prompt, N_PROMPT, NULL, false, err, sizeof err) == 0, "p0: %s", err);
        eng_seq *f1 = eng_seq_fork(p0, NULL, err, sizeof err);
        CHECK(f1 && eng_forward(m, f1, more, 2, NULL, false, err, sizeof err) == 0, "f1: %s", err);
        eng_seq *f2 = f1 ? eng_seq_fork(f1, NULL, err, sizeof err) : NULL;
        eng_seq_free(p0);
        eng_seq_free(f1);
        CHECK(f2 && eng_forward(m, f2, more + 2, 1, got, false, err, sizeof err) == 0, "f2: %s", err);
        CHECK(f2 && !memcmp(got, last, sizeof(float) * V), "a fork of a fork differs from one sequence");
        eng_seq_free(f2);
        eng_seq_free(straight);

        free(prompt); free(last); free(ref); free(got);
        eng_model_free(m);
    }
    return check_summary("test_fork");
}
