/* Grammar engine timings on a real vocabulary: trie build, compile time of a 50-property
 * schema, and the token mask time per step over random valid generations (JSON schema, JSON
 * mode, regex). One JSON line per figure on stdout.
 *
 *   tool_grammar_bench MODEL.gguf [steps] [seed] [--check]
 *
 * --check: at a few steps, compare the mask with each token's bytes accepted on a copy of a
 * state replayed from the start (slow; prints a "check" line with the differences). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "clock.h"
#include "gguf.h"
#include "grammar.h"
#include "tok.h"

static const tok_vocab *tv;
static char pbuf[1024];

static const char *piece(void *ud, int32_t id, int *len) {
    (void)ud;
    tok_type t = tok_get_type(tv, id);
    if (t == TOK_TYPE_CONTROL || t == TOK_TYPE_UNUSED || t == TOK_TYPE_UNKNOWN) return NULL;
    int n = tok_piece(tv, id, false, pbuf, sizeof pbuf);
    if (n <= 0 || n > (int)sizeof pbuf) return NULL;
    *len = n;
    return pbuf;
}

static int check;
static int cmp_d_fwd(const void *a, const void *b);
static uint64_t rs = 88172645463325252ull;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t)rs; }

/* The masks along a given text, tokenized by the model's tokenizer as a model would write it. */
static void replay(const char *name, const gram *g, const gram_vocab *v, const char *text) {
    int32_t ids[16384];
    int64_t n = tok_encode(tv, text, strlen(text), false, false, ids, 16384);
    if (n < 0 || n > 16384) { fprintf(stderr, "tokenize failed\n"); return; }
    uint32_t *m = malloc(gram_mask_words(v) * 4);
    double *t = malloc((size_t)n * sizeof *t), tot = 0, first = 0;
    gram_state *s = gram_state_new(g, v);
    int k = 0, rejected = 0;
    for (; k < n; k++) {
        double t0 = krn_now_s();
        gram_state_mask(s, m);
        t[k] = (krn_now_s() - t0) * 1e3;
        tot += t[k];
        if (!k) first = t[k];
        if (!gram_mask_test(m, ids[k]) || gram_state_accept_token(s, ids[k]) != GRAM_OK) { rejected = 1; break; }
    }
    int ok_end = !rejected && gram_state_can_end(s);
    int nt = k;
    qsort(t, (size_t)nt, sizeof *t, cmp_d_fwd);
    printf("{\"bench\":\"mask_replay\",\"grammar\":\"%s\",\"n_vocab\":%d,\"tokens\":%d,\"accepted\":%d,"
           "\"mean_ms\":%.3f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"max_ms\":%.3f,\"first_ms\":%.3f}\n",
           name, gram_vocab_n(v), nt, ok_end, nt ? tot / nt : 0, nt ? t[nt / 2] : 0, nt ? t[nt * 9 / 10] : 0,
           nt ? t[nt - 1] : 0, first);
    gram_state_free(s);
    free(m); free(t);
}

static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

/* One random valid generation of at most steps tokens: past steps/2 the shortest allowed
 * tokens that close things are preferred, so most generations end. */
static void run(const char *name, const gram *g, const gram_vocab *v, int steps) {
    const int nv = gram_vocab_n(v);
    uint32_t *m = malloc(gram_mask_words(v) * 4);
    int32_t *ids = malloc((size_t)nv * sizeof *ids);
    double *t = malloc((size_t)steps * sizeof *t), tot = 0;
    gram_state *s = gram_state_new(g, v);
    int n = 0, ended = 0, total_allowed = 0, diffs = 0, checks = 0;
    size_t out = 0;
    char *text = malloc(1 << 20);
    for (; n < steps; n++) {
        double t0 = krn_now_s();
        if (gram_state_mask(s, m) != GRAM_OK) { fprintf(stderr, "mask failed\n"); break; }
        t[n] = (krn_now_s() - t0) * 1e3;
        tot += t[n];
        int k = 0;
        for (int i = 0; i < nv; i++) if (gram_mask_test(m, i)) ids[k++] = i;
        total_allowed += k;
        if (check && (n == 0 || n == 5 || n == 40 || n == 150 || n == 300)) {
            gram_state *base = gram_state_new(g, v);
            gram_state_accept(base, text, out);
            for (int i = 0; i < nv; i++) {
                bool ok;
                int l = piece(NULL, i, &(int){0}) ? tok_piece(tv, i, false, pbuf, sizeof pbuf) : -1;
                if (tok_is_eog(tv, i)) ok = gram_state_can_end(base);
                else if (l <= 0) ok = false;
                else {
                    gram_state *c = gram_state_clone(base);
                    ok = gram_state_accept(c, pbuf, (size_t)l) == GRAM_OK;
                    gram_state_free(c);
                }
                diffs += ok != gram_mask_test(m, i);
            }
            gram_state_free(base);
            checks++;
        }
        if (!k) { fprintf(stderr, "%s: dead end\n", name); break; }
        int id = ids[rnd() % (unsigned)k];
        if (n > steps / 2) {
            if (gram_state_can_end(s)) { n++; ended = 1; break; }
            int best = -1, bl = 1 << 30;
            for (int j = 0; j < k; j++) {
                int l = tok_piece(tv, ids[j], false, pbuf, sizeof pbuf);
                if (l >= 1 && l < bl && strchr("\"}]0123456789", pbuf[0])) best = ids[j], bl = l;
            }
            if (best >= 0 && rnd() % 4) id = best;
        }
        if (gram_state_accept_token(s, id) != GRAM_OK) { fprintf(stderr, "%s: accept failed\n", name); break; }
        int pl = tok_piece(tv, id, false, pbuf, sizeof pbuf);
        if (pl > 0 && out + (size_t)pl < (1 << 20)) memcpy(text + out, pbuf, (size_t)pl);
        out += (size_t)(pl > 0 ? pl : 0);
        if (gram_state_ended(s)) { ended = 1; n++; break; }
    }
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    printf("{\"bench\":\"mask\",\"grammar\":\"%s\",\"n_vocab\":%d,\"steps\":%d,\"ended\":%d,\"bytes\":%zu,"
           "\"mean_ms\":%.3f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"max_ms\":%.3f,\"mean_allowed\":%d}\n",
           name, nv, n, ended, out, n ? tot / n : 0, n ? t[n / 2] : 0, n ? t[n * 9 / 10] : 0, n ? t[n - 1] : 0,
           n ? total_allowed / n : 0);
    if (check) printf("{\"check\":\"%s\",\"steps_checked\":%d,\"tokens_differing\":%d}\n", name, checks, diffs);
    fflush(stdout);
    free(text);
    gram_state_free(s);
    free(m); free(ids); free(t);
}

static int cmp_d_fwd(const void *a, const void *b) { return cmp_d(a, b); }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODEL.gguf [steps] [seed] [--check]\n", argv[0]); return 2; }
    if (!strcmp(argv[argc - 1], "--check")) check = 1, argc--;
    int steps = argc > 2 ? atoi(argv[2]) : 400;
    if (argc > 3) rs ^= (uint64_t)atoll(argv[3]) * 0x9e3779b97f4a7c15ull;
    char err[256];
    gguf_ctx *gg = gguf_open(argv[1], err, sizeof err);
    if (!gg) { fprintf(stderr, "gguf: %s\n", err); return 1; }
    tok_vocab *v = tok_load(gg, err, sizeof err);
    gguf_close(gg);
    if (!v) { fprintf(stderr, "%s\n", err); return 1; }
    tv = v;
    const int nv = tok_n_vocab(v);
    int32_t *eog = malloc((size_t)nv * sizeof *eog);
    int ne = 0;
    for (int i = 0; i < nv; i++) if (tok_is_eog(v, i)) eog[ne++] = i;
    double t0 = krn_now_s();
    gram_vocab *gv = gram_vocab_create(nv, piece, NULL, eog, ne, err, sizeof err);
    double t1 = krn_now_s();
    if (!gv) { fprintf(stderr, "%s\n", err); return 1; }
    printf("{\"bench\":\"vocab\",\"n_vocab\":%d,\"n_eog\":%d,\"build_ms\":%.1f}\n", nv, ne, (t1 - t0) * 1e3);

    /* 50 properties of mixed types, every third optional */
    static char schema[16384];
    size_t o = (size_t)snprintf(schema, sizeof schema, "{\"type\":\"object\",\"properties\":{");
    static const char *types[] = {"{\"type\":\"string\"}", "{\"type\":\"integer\"}", "{\"type\":\"boolean\"}",
                                  "{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"maxItems\":4}",
                                  "{\"enum\":[\"red\",\"green\",\"blue\"]}", "{\"type\":\"string\",\"format\":\"date\"}",
                                  "{\"anyOf\":[{\"type\":\"null\"},{\"type\":\"string\",\"maxLength\":12}]}"};
    for (int i = 0; i < 50; i++)
        o += (size_t)snprintf(schema + o, sizeof schema - o, "%s\"field_%02d\":%s", i ? "," : "", i, types[i % 7]);
    o += (size_t)snprintf(schema + o, sizeof schema - o, "},\"required\":[");
    for (int i = 0, first = 1; i < 50; i++)
        if (i % 3) o += (size_t)snprintf(schema + o, sizeof schema - o, "%s\"field_%02d\"", first ? "" : ",", i), first = 0;
    o += (size_t)snprintf(schema + o, sizeof schema - o, "]}");
    const int reps = 20;
    gram *g = NULL;
    t0 = krn_now_s();
    for (int r = 0; r < reps; r++) {
        gram_free(g);
        g = gram_from_json_schema(schema, o, err, sizeof err);
        if (!g) { fprintf(stderr, "schema: %s\n", err); return 1; }
    }
    printf("{\"bench\":\"compile\",\"schema\":\"50 properties\",\"schema_bytes\":%zu,\"compile_ms\":%.3f}\n", o,
           (krn_now_s() - t0) * 1e3 / reps);
    /* a document of the schema, written indented as models usually do */
    static char doc[65536];
    static const char *vals[] = {"\"a value with a few words, number %d\"", "%d2345", "true", "[1.5, 2, -3e2]", "\"green\"",
                                 "\"2024-05-17\"", "null"};
    size_t d = (size_t)snprintf(doc, sizeof doc, "{\n");
    for (int i = 0; i < 50; i++) {
        d += (size_t)snprintf(doc + d, sizeof doc - d, "  \"field_%02d\": ", i);
        d += (size_t)snprintf(doc + d, sizeof doc - d, vals[i % 7], i + 1);
        d += (size_t)snprintf(doc + d, sizeof doc - d, i < 49 ? ",\n" : "\n}");
    }
    replay("schema-50-properties", g, gv, doc);
    run("schema-50-properties", g, gv, steps);
    gram_free(g);
    gram *j = gram_json_object();
    replay("json_object", j, gv, doc);
    run("json_object", j, gv, steps);
    gram_free(j);
    const char *re = "[A-Z][a-z]{2,12}( [A-Z][a-z]{2,12}){0,3}, [0-9]{1,5} [a-z ]{3,40}\\.";
    gram *x = gram_from_regex(re, strlen(re), err, sizeof err);
    if (x) run("regex", x, gv, steps);
    gram_free(x);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"bench\":\"memory\",\"max_rss_mb\":%.1f}\n", ru.ru_maxrss / 1024.0);
    gram_vocab_free(gv);
    free(eog);
    tok_free(v);
    return 0;
}
