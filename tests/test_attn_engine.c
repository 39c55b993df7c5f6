/* The engine's attention over the paged store with each selector: a selector that returns every
 * offloaded key (oracle or retrieval with top_k >= candidates) reproduces dense decode logits;
 * without a top_k they read exactly the share asked (0.02 by default);
 * `window` attends only the static set and differs; an estimated tail of share 1 (every key the
 * selector left, at weight 1) reproduces them with any selector, a smaller one reads its sample
 * on top of the ids; sparq's estimate of the keys it leaves brings the
 * attention output nearer dense's; a selection reused for several steps takes in the keys that
 * leave the window meanwhile and scans that many times less often; statistics count what was
 * read; a KV memory limit is a clean error that leaves the sequence unchanged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tiny_models.h"
#include "model.h"

enum { N_PROMPT = 60, N_DEC = 6 };

/* Prefills N_PROMPT tokens, then decodes N_DEC fixed tokens one at a time; logits of the decode
 * steps go to out (N_DEC x V). Returns the stats through st. */
static int run(eng_model *m, const eng_attn_params *a, float *out, eng_attn_stats *st) {
    char err[512];
    const int V = eng_model_hparams(m)->n_vocab;
    eng_seq *s = eng_seq_create_ex(m, 128, a, err, sizeof err);
    if (!s) { fprintf(stderr, "seq: %s\n", err); return -1; }
    int32_t toks[N_PROMPT];
    for (int i = 0; i < N_PROMPT; i++) toks[i] = (i * 29 + 7) % V;
    int rc = eng_forward(m, s, toks, N_PROMPT, NULL, false, err, sizeof err);
    for (int i = 0; rc == 0 && i < N_DEC; i++) {
        int32_t t = (i * 13 + 1) % V;
        rc = eng_forward(m, s, &t, 1, out + (size_t)i * V, false, err, sizeof err);
    }
    if (rc) fprintf(stderr, "forward: %s\n", err);
    eng_seq_attn_stats(s, st);
    eng_seq_free(s);
    return rc;
}

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

int main(void) {
    for (int mi = 0; mi < N_TINY_MODELS; mi++) {
        char err[512];
        eng_model *m = tiny_model_load(mi);
        if (!m) continue;
        const int V = eng_model_hparams(m)->n_vocab;
        float *dense = malloc(sizeof(float) * N_DEC * V), *got = malloc(sizeof(float) * N_DEC * V);
        eng_attn_params a = eng_attn_default();
        a.n_sink = 4;
        a.n_window = 8; /* 60 prompt tokens: 48+ offloaded per global layer */
        eng_attn_stats st;
        CHECK(run(m, &a, dense, &st) == 0, "dense run");
        CHECK(st.sparse_rows == 0, "dense reads no selector");

        const char *all_sel[] = {"oracle", "retrieval", "ivf", "centroids"};
        for (int k = 0; k < 4; k++) {
            CHECK(eng_attn_set(&a, "selector", all_sel[k], err, sizeof err) == 0, "selector %s: %s", all_sel[k], err);
            a.top_k = 1000; /* every candidate */
            a.scan = 1.0f;
            a.target = 1.0f;
            CHECK(run(m, &a, got, &st) == 0, "%s run", all_sel[k]);
            float d = max_diff(dense, got, (size_t)N_DEC * V);
            CHECK(d < 1e-4f, "%s with every key == dense (max diff %g)", all_sel[k], d);
            CHECK(st.sparse_rows > 0 && st.keys_read == st.offloaded_keys,
                  "%s read all offloaded keys (%lld of %lld)", all_sel[k], (long long)st.keys_read,
                  (long long)st.offloaded_keys);
        }
        /* no top_k: the group reads a share, exactly ceil(share * offloaded) per row */
        const float share[2] = {0.25f, 0.0f}; /* 0: the default, 0.02 */
        for (int k = 0; k < 2; k++) {
            a.selector = k ? IDX_RETRIEVAL : IDX_ORACLE;
            a.top_k = 0;
            a.scan = 0.02f;
            a.target = share[k];
            CHECK(run(m, &a, got, &st) == 0, "share run %d", k);
            const double want = (k ? 0.02 : 0.25) * (double)st.offloaded_keys;
            CHECK(st.sparse_rows > 0 && st.keys_read >= want && st.keys_read <= want + st.sparse_rows,
                  "%s with share %g reads it (%lld of %lld, %lld rows)", k ? "retrieval" : "oracle", share[k],
                  (long long)st.keys_read, (long long)st.offloaded_keys, (long long)st.sparse_rows);
        }
        /* reuse: a selection serves several steps. With every key selected, the keys that leave
         * the window meanwhile must join it (else the steps after the select differ from dense);
         * with a top 5, the select's own step is the plain run's and the selector scans about a
         * third as often at reuse 3 */
        a.selector = IDX_ORACLE;
        a.top_k = 1000;
        a.target = 0.0f;
        a.reuse = 3;
        CHECK(run(m, &a, got, &st) == 0, "oracle, every key, reuse 3");
        {
            const float d = max_diff(dense, got, (size_t)N_DEC * V);
            CHECK(d < 1e-4f && st.keys_read == st.offloaded_keys, "oracle with every key at reuse 3 == dense (max "
                  "diff %g, %lld of %lld keys read)", d, (long long)st.keys_read, (long long)st.offloaded_keys);
        }
        {
            float *plain = malloc(sizeof(float) * N_DEC * V);
            eng_attn_stats st1, st3;
            a.top_k = 5;
            a.reuse = 0;
            CHECK(run(m, &a, plain, &st1) == 0, "oracle top-5 run");
            a.reuse = 3;
            CHECK(run(m, &a, got, &st3) == 0, "oracle top-5 reuse 3 run");
            CHECK(max_diff(plain, got, (size_t)V) == 0.0f, "reuse 3: the first decode step (a select) is the plain "
                  "run's");
            CHECK(st3.keys_scanned * 3 < st1.keys_scanned && st3.keys_scanned * 4 > st1.keys_scanned &&
                  st3.sparse_rows == st1.sparse_rows, "reuse 3 scans a third as often (%lld keys, every step %lld)",
                  (long long)st3.keys_scanned, (long long)st1.keys_scanned);
            /* the steps after a select read each id's successors too (a copied number's next
             * digits): 1.6 times the keys of selecting at every step, where the kept ids alone and the
             * keys that left the window read 1.03-1.07 times them */
            CHECK(st3.keys_read * 10 > st1.keys_read * 13 && st3.keys_read < 3 * st1.keys_read,
                  "reuse 3 reads the selection's successors (%lld keys, every step %lld)",
                  (long long)st3.keys_read, (long long)st1.keys_read);
            a.estimate = 1;
            CHECK(eng_attn_check(&a, err, sizeof err) != 0 && strstr(err, "reuse"), "reuse with estimate refused: %s",
                  err);
            a.estimate = 0;
            a.reuse = 0;
            free(plain);
        }
        a.target = 0.0f;
        a.selector = IDX_ORACLE;
        a.top_k = 5;
        a.measure_recall = 1;
        CHECK(run(m, &a, got, &st) == 0, "oracle top-5 run");
        CHECK(st.keys_read > 0 && st.keys_read < st.offloaded_keys, "top-5 reads a part (%lld of %lld)",
              (long long)st.keys_read, (long long)st.offloaded_keys);
        CHECK(st.recall_n > 0 && st.mass_recall > 0.0 && st.mass_recall < 1.0 + 1e-6,
              "mass recall measured: %f", st.mass_recall);
        const int64_t top5_read = st.keys_read;
        a.tail = 0.2f;
        CHECK(run(m, &a, got, &st) == 0, "oracle top-5 + tail 0.2 run");
        CHECK(st.keys_read > top5_read && st.keys_read < st.offloaded_keys && st.recall_n > 0 &&
              st.mass_recall < 1.0 + 1e-6 && st.out_err > 0, "a tail of 0.2 reads its sample too (%lld, top-5 "
              "alone %lld, of %lld; recall %f, out_err %g)", (long long)st.keys_read, (long long)top5_read,
              (long long)st.offloaded_keys, st.mass_recall, st.out_err);
        a.measure_recall = 0;
        a.selector = IDX_WINDOW;
        a.tail = 0;
        CHECK(run(m, &a, got, &st) == 0, "window run");
        CHECK(st.keys_read == 0 && max_diff(dense, got, (size_t)N_DEC * V) > 1e-3f,
              "window reads nothing offloaded and differs from dense");
        const char *tail_sel[] = {"window", "oracle", "retrieval", "centroids", "quest"};
        for (int k = 0; k < 5; k++) { /* share 1: the sample is every unselected key, weight 1 */
            CHECK(eng_attn_set(&a, "selector", tail_sel[k], err, sizeof err) == 0, "selector %s: %s", tail_sel[k], err);
            a.top_k = 5;
            a.tail = 1.0f;
            CHECK(run(m, &a, got, &st) == 0, "%s + tail 1 run", tail_sel[k]);
            float d = max_diff(dense, got, (size_t)N_DEC * V);
            CHECK(d < 1e-4f && st.keys_read == st.offloaded_keys, "%s + tail 1 == dense (max diff %g, %lld of %lld "
                  "keys read)", tail_sel[k], d, (long long)st.keys_read, (long long)st.offloaded_keys);
        }
        a.tail = 0;
        /* the selector's estimate of what it left: merged in, the output nears dense's (sparq:
         * centroids builds nothing below min_keys, far above these prompts; test_estimate has it) */
        const char *est_sel[] = {"sparq"};
        for (int k = 0; k < 1; k++) {
            CHECK(eng_attn_set(&a, "selector", est_sel[k], err, sizeof err) == 0, "selector %s: %s", est_sel[k], err);
            a.target = 0.1f;
            a.measure_recall = 1;
            a.estimate = 0;
            eng_attn_stats plain, est;
            CHECK(run(m, &a, got, &plain) == 0, "%s run", est_sel[k]);
            a.estimate = 1;
            CHECK(run(m, &a, got, &est) == 0, "%s + estimate run", est_sel[k]);
            const double ep = plain.out_err, ee = est.out_err;
            CHECK(plain.recall_n > 0 && est.recall_n > 0 && ee < 0.8 * ep && est.keys_read < est.offloaded_keys,
                  "%s: the estimate cuts the attention output's error against dense (%.4f, without %.4f), reading "
                  "%lld of %lld keys", est_sel[k], ee, ep, (long long)est.keys_read, (long long)est.offloaded_keys);
            a.estimate = 0;
            a.measure_recall = 0;
            a.target = 0;
        }

        /* "auto" (the default): sparq with a tail past ENG_AUTO_DENSE_BELOW on a model without
         * qk-norm (the llama), dense on gemma3 (qk-norm); the sequence reports what it runs */
        {
            eng_attn_params au = eng_attn_default(), ran;
            CHECK(au.selector == ENG_SELECTOR_AUTO, "the default selector is auto");
            CHECK(eng_attn_set(&au, "selector", "auto", err, sizeof err) == 0, "selector auto: %s", err);
            eng_seq *sa = eng_seq_create_ex(m, 64, &au, err, sizeof err);
            CHECK(sa != NULL, "a sequence with selector auto: %s", err);
            if (sa) {
                eng_seq_get_attn(sa, &ran);
                const int qk = mi == 1;
                CHECK(qk ? ran.selector == IDX_DENSE && !ran.estimate && ran.tail == 0
                         : ran.selector == IDX_SPARQ && !ran.estimate && ran.tail == ENG_AUTO_TAIL &&
                               ran.dense_below == ENG_AUTO_DENSE_BELOW,
                      "%s: auto runs %s (tail %g, estimate %d, dense below %d)", TINY_MODELS[mi],
                      idx_kind_name(ran.selector), ran.tail, ran.estimate, ran.dense_below);
                au.tail = 0.1f; /* an asked-for tail stays */
                au.dense_below = 100;
                CHECK(eng_seq_set_attn(sa, &au, err, sizeof err) == 0, "auto with a tail: %s", err);
                eng_seq_get_attn(sa, &ran);
                CHECK(qk || (ran.selector == IDX_SPARQ && !ran.estimate && ran.tail == 0.1f && ran.dense_below == 100),
                      "auto keeps a given tail and dense_below");
                au.tail = 0; /* an asked-for estimate stays, without the tail */
                au.estimate = 1;
                CHECK(eng_seq_set_attn(sa, &au, err, sizeof err) == 0, "auto with the estimate: %s", err);
                eng_seq_get_attn(sa, &ran);
                CHECK(qk || (ran.selector == IDX_SPARQ && ran.estimate && ran.tail == 0),
                      "auto keeps an asked-for estimate (tail %g, estimate %d)", ran.tail, ran.estimate);
                eng_seq_free(sa);
            }
        }

        /* bad selector name and a memory limit too small for the prompt */
        a = eng_attn_default();
        a.selector = (idx_kind)99;
        CHECK(eng_seq_create_ex(m, 64, &a, err, sizeof err) == NULL && strstr(err, "selector"),
              "unknown selector rejected: %s", err);
        a = eng_attn_default();
        a.kv_max_bytes = 4096;
        eng_seq *s = eng_seq_create_ex(m, 64, &a, err, sizeof err);
        CHECK(s != NULL, "seq with a small limit: %s", err);
        if (s) {
            int32_t toks[40] = {0};
            CHECK(eng_forward(m, s, toks, 40, NULL, false, err, sizeof err) != 0, "KV limit is an error");
            printf("  KV limit: %s\n", err);
            CHECK(eng_seq_pos(s) == 0, "the sequence is unchanged after the limit error");
            eng_seq_free(s);
        }
        free(dense);
        free(got);
        eng_model_free(m);
    }
    return check_summary("test_attn_engine");
}
