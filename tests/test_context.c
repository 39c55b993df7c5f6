/* Registered contexts on the tiny models: a question after a context gives the logits of the
 * whole text as one prompt (dense) and close ones through the centroids with every cluster kept;
 * persistence round-trips bit-exactly (save, load, save again: identical bytes; same rows and
 * selections); truncated, corrupted, foreign-model and garbage files are refused with a reason;
 * an interrupted save leaves no visible context and an existing one intact; sharing a context
 * costs a sequence only its own pages. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "context.h"
#include "model.h"

enum { N_CTX = 300, N_Q = 12, N_DEC = 4 };

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(len > 0 ? len : 1);
    *n = b ? fread(b, 1, len, f) : 0;
    fclose(f);
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(b, 1, n, f);
        fclose(f);
    }
}

/* Logits of N_DEC steps (question, then fixed tokens) after the context, with attention a.
 * ctx NULL: the context's tokens are prefilled as part of one prompt instead. */
static int answer(eng_model *m, eng_ctx *ctx, const int32_t *ctx_toks, const int32_t *q,
                  const eng_attn_params *a, float *out, eng_attn_stats *st) {
    char err[512];
    const int V = eng_model_hparams(m)->n_vocab;
    eng_seq *s = eng_seq_create_ex(m, N_CTX + N_Q + N_DEC + 8, a, err, sizeof err);
    if (!s) return -1;
    int rc = 0;
    if (ctx) rc = eng_seq_attach_ctx(s, ctx, err, sizeof err);
    else rc = eng_forward(m, s, ctx_toks, N_CTX, NULL, false, err, sizeof err);
    if (!rc) rc = eng_forward(m, s, q, N_Q, out, false, err, sizeof err);
    for (int i = 1; !rc && i < N_DEC; i++) {
        int32_t t = (i * 31 + 5) % V;
        rc = eng_forward(m, s, &t, 1, out + (size_t)i * V, false, err, sizeof err);
    }
    if (rc) fprintf(stderr, "answer: %s\n", err);
    if (st) eng_seq_attn_stats(s, st);
    eng_seq_free(s);
    return rc;
}

int main(void) {
    char err[512];
    eng_model *m = eng_model_load("build/tiny/tiny-gemma3-f32.gguf", NULL, err, sizeof err);
    eng_model *other = eng_model_load("build/tiny/tiny-llama-f32.gguf", NULL, err, sizeof err);
    CHECK(m && other, "load tiny models: %s (run `make tiny`)", err);
    if (!m || !other) return check_summary("test_context");
    const int V = eng_model_hparams(m)->n_vocab;
    int32_t toks[N_CTX], q[N_Q];
    for (int i = 0; i < N_CTX; i++) toks[i] = (i * 37 + 11) % V;
    for (int i = 0; i < N_Q; i++) q[i] = (i * 17 + 3) % V;

    eng_ctx_params cp = eng_ctx_params_default();
    cp.n_sink = 8;
    cp.n_tail = 32;     /* 260 clustered tokens */
    cp.obs_tokens = 40;
    cp.fine_frac = 0.1f;
    cp.coarse_frac = 0.03f;
    eng_ctx *c = eng_ctx_build(m, toks, N_CTX, &cp, NULL, NULL, err, sizeof err);
    CHECK(c != NULL, "build: %s", err);
    if (!c) return check_summary("test_context");
    eng_ctx_info in;
    eng_ctx_get_info(c, &in);
    CHECK(in.n_tokens == N_CTX && in.clustered_keys > 0 && in.n_fine > 0, "built: %lld clustered keys, %lld centroids",
          (long long)in.clustered_keys, (long long)in.n_fine);

    /* the question after the context == the whole text as one prompt (dense) */
    float *full = malloc(sizeof(float) * N_DEC * V), *got = malloc(sizeof(float) * N_DEC * V);
    eng_attn_params a = eng_attn_default();
    CHECK(answer(m, NULL, toks, q, &a, full, NULL) == 0, "full prompt");
    CHECK(answer(m, c, toks, q, &a, got, NULL) == 0, "on the context (dense)");
    CHECK(max_diff(full, got, (size_t)N_DEC * V) < 1e-4f, "dense on a context == one prompt (max |diff| %g)",
          max_diff(full, got, (size_t)N_DEC * V));
    /* centroids keeping every cluster (target 1) read the whole middle: the same logits */
    a.selector = IDX_CENTROIDS;
    a.target = 1.0f;
    eng_attn_stats st;
    CHECK(answer(m, c, toks, q, &a, got, &st) == 0, "on the context (centroids, target 1)");
    CHECK(max_diff(full, got, (size_t)N_DEC * V) < 1e-4f && st.sparse_rows > 0 &&
          st.keys_read == st.offloaded_keys,
          "centroids keeping every cluster == dense (max |diff| %g, read %lld of %lld)",
          max_diff(full, got, (size_t)N_DEC * V), (long long)st.keys_read, (long long)st.offloaded_keys);
    a.target = 0.1f;
    CHECK(answer(m, c, toks, q, &a, got, &st) == 0 && st.keys_read < st.offloaded_keys && st.keys_read > 0,
          "target 0.1 reads a part (%lld of %lld)", (long long)st.keys_read, (long long)st.offloaded_keys);
    a.selector = IDX_WINDOW;
    CHECK(answer(m, c, toks, q, &a, got, &st) == 0 && st.keys_read == 0 && st.sparse_rows > 0,
          "window on a context reads no clustered key");

    /* persistence: save, load, save again -> identical bytes; same rows and selections */
    char dir[256], dir2[300], path[300], path2[340];
    snprintf(dir, sizeof dir, "/tmp/kvseek-test-ctx-%d", (int)getpid());
    snprintf(dir2, sizeof dir2, "%s-b", dir);
    snprintf(path, sizeof path, "%s/context.kvctx", dir);
    snprintf(path2, sizeof path2, "%s/context.kvctx", dir2);
    CHECK(eng_ctx_save(c, dir, err, sizeof err) == 0, "save: %s", err);
    eng_ctx *l = eng_ctx_load(m, dir, err, sizeof err);
    CHECK(l != NULL, "load: %s", err);
    if (l) {
        CHECK(eng_ctx_save(l, dir2, err, sizeof err) == 0, "save the loaded one: %s", err);
        size_t n1 = 0, n2 = 0;
        unsigned char *b1 = slurp(path, &n1), *b2 = slurp(path2, &n2);
        CHECK(b1 && b2 && n1 == n2 && !memcmp(b1, b2, n1), "round trip bit-exact (%zu vs %zu bytes)", n1, n2);
        free(b2);
        CHECK(!memcmp(eng_ctx_tokens(l), toks, sizeof toks), "tokens round-trip");
        int rows_ok = 1;
        const eng_hparams *hp = eng_model_hparams(m);
        for (int layer = 0; layer < hp->n_layer; layer++)
            for (int h = 0; h < hp->n_head_kv; h++)
                for (int p = 0; p < N_CTX; p++) {
                    const void *x = kv_k_row(eng_ctx_kv(c), layer, h, p), *y = kv_k_row(eng_ctx_kv(l), layer, h, p);
                    if ((x == NULL) != (y == NULL) || (x && memcmp(x, y, sizeof(float) * hp->head_dim))) rows_ok = 0;
                }
        CHECK(rows_ok, "every held K row is the same after loading");
        a = eng_attn_default();
        a.selector = IDX_CENTROIDS;
        a.target = 0.2f;
        float *g2 = malloc(sizeof(float) * N_DEC * V);
        eng_attn_stats s1, s2;
        answer(m, c, toks, q, &a, got, &s1);
        answer(m, l, toks, q, &a, g2, &s2);
        CHECK(max_diff(got, g2, (size_t)N_DEC * V) == 0 && s1.keys_read == s2.keys_read,
              "built and loaded contexts answer identically (reads %lld / %lld)", (long long)s1.keys_read,
              (long long)s2.keys_read);
        free(g2);
        eng_ctx_unref(l);

        /* refusals: each a clean error with a reason */
        unsigned char *bad = malloc(n1);
        memcpy(bad, b1, n1);
        bad[n1 / 2] ^= 0x40;
        spit(path2, bad, n1);
        CHECK(!eng_ctx_load(m, dir2, err, sizeof err) && strstr(err, "checksum"), "a flipped byte: %s", err);
        spit(path2, b1, n1 - 100);
        CHECK(!eng_ctx_load(m, dir2, err, sizeof err) && strstr(err, "truncated"), "truncated: %s", err);
        int all_refused = 1;
        for (size_t cut = 0; cut < 600 && cut < n1; cut += 7) {
            spit(path2, b1, cut);
            eng_ctx *x = eng_ctx_load(m, dir2, err, sizeof err);
            if (x) { all_refused = 0; eng_ctx_unref(x); }
        }
        CHECK(all_refused, "every short prefix of the file is refused");
        spit(path2, (const unsigned char *)"hello", 5);
        CHECK(!eng_ctx_load(m, dir2, err, sizeof err), "garbage: %s", err);
        CHECK(!eng_ctx_load(other, dir, err, sizeof err) && strstr(err, "another model"), "another model: %s", err);
        CHECK(!eng_ctx_load(m, "/nonexistent-kvseek", err, sizeof err), "missing: %s", err);
        free(bad);

        /* a save that cannot finish (file size limit: a full disk) keeps the old context and
         * leaves no temporary behind */
        struct rlimit old_lim, lim = {4096, 4096};
        getrlimit(RLIMIT_FSIZE, &old_lim);
        lim.rlim_max = old_lim.rlim_max;
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &lim);
        int rc = eng_ctx_save(c, dir, err, sizeof err);
        setrlimit(RLIMIT_FSIZE, &old_lim);
        CHECK(rc != 0 && strlen(err) > 0, "a save past the file size limit fails: %s", err);
        size_t n3 = 0;
        unsigned char *b3 = slurp(path, &n3);
        CHECK(b3 && n3 == n1 && !memcmp(b3, b1, n1), "the old context is intact");
        free(b3);
        DIR *d = opendir("/tmp");
        int leftovers = 0;
        struct dirent *de;
        char pre[64];
        snprintf(pre, sizeof pre, ".tmp-kvseek-test-ctx-%d", (int)getpid());
        while (d && (de = readdir(d)))
            if (!strncmp(de->d_name, pre, strlen(pre))) leftovers++;
        if (d) closedir(d);
        CHECK(leftovers == 0, "no temporary left after the failed save");
        l = eng_ctx_load(m, dir, err, sizeof err);
        CHECK(l != NULL, "the old context still loads: %s", err);
        eng_ctx_unref(l);
        free(b1);
    }
    /* sharing: a sequence on the context owns only its own tokens' pages (global layers) */
    {
        eng_seq *s = eng_seq_create(m, N_CTX + 64, err, sizeof err);
        eng_seq *t = eng_seq_create(m, N_CTX + 64, err, sizeof err);
        eng_forward(m, t, toks, N_CTX, NULL, false, err, sizeof err);
        CHECK(s && eng_seq_attach_ctx(s, c, err, sizeof err) == 0, "attach: %s", err);
        /* the global layers' whole pages are borrowed: only the partial last page is copied */
        const eng_hparams *hp = eng_model_hparams(m);
        const int ps = kv_get_params(eng_seq_kv(s))->page_size;
        size_t n_global = 0;
        for (int layer = 0; layer < hp->n_layer; layer++) n_global += !eng_layer_is_local(m, layer);
        const size_t saved = n_global * (size_t)(N_CTX / ps) * kv_page_bytes(eng_seq_kv(s));
        CHECK(eng_seq_bytes(s) + saved <= eng_seq_bytes(t),
              "a sequence on the context holds %zu bytes, one prefilling it %zu: at least %zu borrowed",
              eng_seq_bytes(s), eng_seq_bytes(t), saved);
        CHECK(eng_seq_pos(s) == N_CTX, "the sequence starts after the context");
        eng_seq_reset(s);
        CHECK(eng_seq_pos(s) == 0 && eng_forward(m, s, q, N_Q, NULL, false, err, sizeof err) == 0,
              "after reset the sequence works alone");
        eng_seq_free(s);
        eng_seq_free(t);
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir, dir2);
    if (system(cmd)) {}
    eng_ctx_unref(c);
    free(full);
    free(got);
    eng_model_free(m);
    eng_model_free(other);
    return check_summary("test_context");
}
