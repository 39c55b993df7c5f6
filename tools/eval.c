/* `kvseek eval`: the engine side of the accuracy suite (scripts/ruler.py). Each sample's long
 * context is prefilled once; every selector then runs from a fork of that sequence (its pages
 * shared read-only), so comparing one more selector costs a decode, not a prefill. By default the
 * question is decoded one token at a time through the selector, so the answer's first token
 * already depends on what the selector picked (a prompt prefilled whole would attend densely). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "model.h"
#include "tok.h"
#include "tools.h"

enum { MAX_SPECS = 32, MAX_NEW_LIMIT = 1 << 16 };

typedef struct {
    const char *text; /* as given: the output's "selector" */
    eng_attn_params attn;
} spec;

typedef struct {
    cJSON *id;
    const char *context, *question; /* point into the parsed line */
    int max_new;
    cJSON *line;
} sample;

typedef struct {
    const char *model, *samples, *selectors;
    int threads, chunk;
    eng_device device;
    bool question_prefill, no_recall, help;
    eng_attn_params attn;
} eval_args;

static void usage(void) {
    printf("usage: kvseek eval -m MODEL --samples FILE.jsonl --selectors SPEC[,SPEC...] [options]\n\n"
           "Prefills each sample's context once and answers its question through each selector\n"
           "from a fork of the prefilled sequence (pages shared read-only). Greedy decoding.\n\n"
           "  --samples FILE   one JSON object per line: {\"id\": any, \"context\": \"text\",\n"
           "                   \"question\": \"text\", \"max_new\": 64}; the context is tokenized with BOS\n"
           "                   (when the model adds one), the question without; special-token text is\n"
           "                   read as special tokens in both\n"
           "  --selectors S    comma-separated specs: a selector name, then options as key=value\n"
           "                   after colons, keys as in the config file (retrieval, centroids:target=0.02,\n"
           "                   window:window=1:sink=4); storage keys are the command line's only\n"
           "  --question MODE  decode (default): the question's tokens one at a time through the\n"
           "                   selector; prefill: as one dense chunk (what a whole prompt gets)\n"
           "  --no-recall      do not measure attention-mass recall (on by default: a dense pass\n"
           "                   beside each sparse one)\n"
           "  -t, --threads N  threads (default: physical cores)\n"
           "  --chunk N        prefill chunk size (default 256; 1024 on a GPU)\n"
           "  --device cpu|cuda\n\n"
           "Prints one JSON line per (sample, spec): id, selector, text, n_context, n_question,\n"
           "n_gen, prefill_s, question_s, decode_s, keys_read (share of the offloaded keys read),\n"
           "keys_scanned (share of them the selector scored exactly, per KV head), search_s and\n"
           "build_s (selector time summed over threads), attn_s (wall time of the attention steps of\n"
           "the question and the answer: the selection and, unless --no-recall, the dense pass\n"
           "included), mass_recall and out_err (the attention\n"
           "output's mean relative error against dense; null when not measured), and error when\n"
           "that run failed.\n\n"
           "attention defaults for every spec:\n");
    eng_attn_usage(stdout, 22, NULL);
}

static int parse_args(int argc, char **argv, eval_args *a) {
    memset(a, 0, sizeof *a);
    a->attn = eng_attn_default();
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char err[256];
        int used;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) { a->help = true; continue; }
        if (!strcmp(o, "--no-recall")) { a->no_recall = true; continue; }
        if ((used = eng_attn_set_arg(&a->attn, o, v, err, sizeof err)) != 0) {
            if (used < 0) { fprintf(stderr, "error: %s\n", err); return -1; }
            i += used - 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "error: unknown option '%s' or a value missing (see kvseek eval --help)\n", o);
            return -1;
        }
        i++;
        if (!strcmp(o, "-m") || !strcmp(o, "--model")) a->model = v;
        else if (!strcmp(o, "--samples")) a->samples = v;
        else if (!strcmp(o, "--selectors")) a->selectors = v;
        else if (!strcmp(o, "--question")) {
            if (strcmp(v, "decode") && strcmp(v, "prefill")) {
                fprintf(stderr, "error: --question: '%s' is not decode or prefill\n", v);
                return -1;
            }
            a->question_prefill = !strcmp(v, "prefill");
        } else if (!strcmp(o, "--device")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
                fprintf(stderr, "error: --device: '%s' is not cpu or cuda\n", v);
                return -1;
            }
            a->device = strcmp(v, "cuda") ? ENG_DEVICE_CPU : ENG_DEVICE_CUDA;
        } else if (!strcmp(o, "-t") || !strcmp(o, "--threads") || !strcmp(o, "--chunk")) {
            char *end;
            errno = 0;
            long n = strtol(v, &end, 10);
            if (errno || end == v || *end || n < 1 || n > 65536) {
                fprintf(stderr, "error: %s: '%s' is not an integer in [1, 65536]\n", o, v);
                return -1;
            }
            *(strcmp(o, "--chunk") ? &a->threads : &a->chunk) = (int)n;
        } else {
            fprintf(stderr, "error: unknown option '%s' (see kvseek eval --help)\n", o);
            return -1;
        }
    }
    if (!a->help && (!a->model || !a->samples || !a->selectors)) {
        fprintf(stderr, "error: kvseek eval needs -m MODEL, --samples FILE and --selectors SPECS\n");
        return -1;
    }
    return 0;
}

/* Splits "a:k=v,b" into specs over base; buf is a copy the specs point into. 0, or -1 after a
 * one-line error. */
static int parse_specs(char *buf, const eng_attn_params *base, spec *out, int *n) {
    *n = 0;
    for (char *s; (s = strsep(&buf, ",")) != NULL;) {
        if (*n == MAX_SPECS) {
            fprintf(stderr, "error: --selectors: more than %d specs\n", MAX_SPECS);
            return -1;
        }
        spec *sp = &out[(*n)++];
        sp->text = s;
        sp->attn = *base;
        char err[256], part[128];
        const char *p = s;
        for (int first = 1; *p || first; first = 0) {
            size_t len = strcspn(p, ":");
            if (len == 0 || len >= sizeof part) {
                fprintf(stderr, "error: --selectors: bad spec '%s'\n", s);
                return -1;
            }
            memcpy(part, p, len);
            part[len] = 0;
            p += len + (p[len] == ':');
            const char *key = "selector", *val = part;
            char *eq = strchr(part, '=');
            if (!first && !eq) {
                fprintf(stderr, "error: --selectors: '%s' in '%s' is not key=value\n", part, s);
                return -1;
            }
            if (!first) {
                *eq = 0;
                key = part;
                val = eq + 1;
                const eng_attn_opt *o = eng_attn_opt_find(key);
                if (o && o->storage) {
                    fprintf(stderr, "error: --selectors: '%s' is a storage option, fixed for the whole run "
                            "(give it on the command line)\n", key);
                    return -1;
                }
            }
            if (eng_attn_set(&sp->attn, key, val, err, sizeof err)) {
                fprintf(stderr, "error: --selectors '%s': %s\n", s, err);
                return -1;
            }
        }
    }
    if (*n == 0) {
        fprintf(stderr, "error: --selectors: no selector given\n");
        return -1;
    }
    return 0;
}

/* Parses every line of the samples file up front, so a bad file fails before hours of work.
 * The samples point into *lines (free with free_samples). */
static sample *read_samples(const char *path, int *n_out) {
    size_t len;
    char *text = tool_read_file(path, &len);
    if (!text) return NULL;
    int cap = 16, n = 0, lineno = 0;
    sample *ss = malloc(sizeof *ss * cap);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); ss && line; line = strtok_r(NULL, "\n", &save)) {
        lineno++; /* blank lines are skipped by strtok_r: numbers count the non-empty lines */
        if (strspn(line, " \t\r") == strlen(line)) continue;
        const char *why = NULL;
        cJSON *o = cJSON_Parse(line);
        cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "context");
        cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "question");
        cJSON *mx = cJSON_GetObjectItemCaseSensitive(o, "max_new");
        if (!cJSON_IsObject(o)) why = "not a JSON object";
        else if (!cJSON_IsString(c)) why = "\"context\" is missing or not a string";
        else if (!cJSON_IsString(q) || !q->valuestring[0]) why = "\"question\" is missing, empty or not a string";
        else if (mx && !(cJSON_IsNumber(mx) && mx->valuedouble >= 1 && mx->valuedouble <= MAX_NEW_LIMIT &&
                         mx->valuedouble == (int)mx->valuedouble))
            why = "\"max_new\" is not an integer in [1, 65536]";
        if (why) {
            fprintf(stderr, "error: %s: sample %d: %s\n", path, lineno, why);
            cJSON_Delete(o);
            goto fail;
        }
        if (n == cap) {
            sample *nb = realloc(ss, sizeof *ss * (cap *= 2));
            if (!nb) { cJSON_Delete(o); goto fail; }
            ss = nb;
        }
        ss[n++] = (sample){.id = cJSON_GetObjectItemCaseSensitive(o, "id"), .context = c->valuestring,
                           .question = q->valuestring, .max_new = mx ? (int)mx->valuedouble : 64, .line = o};
    }
    free(text);
    if (!ss) fprintf(stderr, "error: out of memory\n");
    else if (n == 0) fprintf(stderr, "error: %s holds no samples\n", path);
    if (ss && n) {
        *n_out = n;
        return ss;
    }
    free(ss);
    return NULL;
fail:
    for (int i = 0; i < n; i++) cJSON_Delete(ss[i].line);
    free(ss);
    free(text);
    return NULL;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) b = x[i] > x[b] ? i : b;
    return b;
}

/* Runs the question and a greedy answer of up to max_new tokens on the fork f; the answer's ids
 * go to gen (capacity max_new), their count to *n_gen. 0, or -1 with a reason in err. */
static int answer(eng_model *m, eng_seq *f, const int32_t *q, int64_t nq, bool q_prefill, int max_new,
                  float *logits, int32_t *gen, int *n_gen, double *q_s, double *dec_s, char *err, size_t errlen) {
    const tok_vocab *v = eng_model_vocab(m);
    const int V = eng_model_hparams(m)->n_vocab;
    double t0 = krn_now_s();
    if (q_prefill) {
        if (eng_forward(m, f, q, (int)nq, logits, false, err, errlen)) return -1;
    } else {
        for (int64_t i = 0; i < nq; i++)
            if (eng_forward(m, f, q + i, 1, i + 1 == nq ? logits : NULL, false, err, errlen)) return -1;
    }
    double t1 = krn_now_s();
    *q_s = t1 - t0;
    *n_gen = 0;
    for (;;) {
        int32_t t = argmax(logits, V);
        if (tok_is_eog(v, t)) break;
        gen[(*n_gen)++] = t;
        if (*n_gen == max_new || eng_seq_pos(f) >= eng_seq_capacity(f)) break;
        if (eng_forward(m, f, &t, 1, logits, false, err, errlen)) return -1;
    }
    *dec_s = krn_now_s() - t1;
    return 0;
}

static void print_row(const sample *s, const spec *sp, const tok_vocab *v, const int32_t *gen, int n_gen,
                      int64_t nc, int64_t nq, double prefill_s, double q_s, double dec_s, const eng_seq *f,
                      const char *error) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "id", s->id ? cJSON_Duplicate(s->id, 1) : cJSON_CreateNull());
    cJSON_AddStringToObject(o, "selector", sp->text);
    if (error) {
        cJSON_AddStringToObject(o, "error", error);
    } else {
        int64_t need = tok_decode(v, gen, n_gen, false, NULL, 0);
        char *text = malloc(need + 1);
        if (text) tok_decode(v, gen, n_gen, false, text, need + 1);
        char *clean = text ? tok_utf8_clean(text, need) : NULL;
        cJSON_AddStringToObject(o, "text", clean ? clean : "");
        free(clean);
        free(text);
    }
    cJSON_AddNumberToObject(o, "n_context", (double)nc);
    cJSON_AddNumberToObject(o, "n_question", (double)nq);
    cJSON_AddNumberToObject(o, "n_gen", n_gen);
    cJSON_AddNumberToObject(o, "prefill_s", prefill_s);
    cJSON_AddNumberToObject(o, "question_s", q_s);
    cJSON_AddNumberToObject(o, "decode_s", dec_s);
    eng_attn_stats st = {0};
    if (f) eng_seq_attn_stats(f, &st);
    if (st.offloaded_keys > 0) {
        cJSON_AddNumberToObject(o, "keys_read", (double)st.keys_read / st.offloaded_keys);
        cJSON_AddNumberToObject(o, "keys_scanned", (double)st.keys_scanned / st.offloaded_keys);
    } else {
        cJSON_AddNullToObject(o, "keys_read");
        cJSON_AddNullToObject(o, "keys_scanned");
    }
    if (st.recall_n > 0) cJSON_AddNumberToObject(o, "mass_recall", st.mass_recall);
    else cJSON_AddNullToObject(o, "mass_recall");
    if (st.recall_n > 0) cJSON_AddNumberToObject(o, "out_err", st.out_err);
    else cJSON_AddNullToObject(o, "out_err");
    cJSON_AddNumberToObject(o, "search_s", st.search_s);
    cJSON_AddNumberToObject(o, "build_s", st.build_s);
    cJSON_AddNumberToObject(o, "attn_s", st.attn_s);
    char *js = cJSON_PrintUnformatted(o);
    if (js) printf("%s\n", js);
    fflush(stdout);
    free(js);
    cJSON_Delete(o);
}

/* One sample: prefill once, then each spec from a fork. Returns the number of failed runs. */
static int run_sample(eng_model *m, const eval_args *a, const sample *s, const spec *specs, int n_specs,
                      int index, int total) {
    const tok_vocab *v = eng_model_vocab(m);
    char err[512];
    int failed = 0;
    int64_t nc = 0, nq = 0;
    int32_t *c = tool_tokenize(v, s->context, strlen(s->context), true, true, &nc);
    int32_t *q = c ? tool_tokenize(v, s->question, strlen(s->question), false, true, &nq) : NULL;
    float *logits = malloc(sizeof(float) * eng_model_hparams(m)->n_vocab);
    int32_t *gen = malloc(sizeof(int32_t) * s->max_new);
    eng_seq *parent = NULL;
    const char *why = NULL;
    double prefill_s = 0;
    if (!c || !q || !logits || !gen) {
        why = "tokenization failed or out of memory";
    } else if (nc == 0 || nq == 0) {
        why = "the context or the question has no tokens";
    } else if (nc + nq + s->max_new + 1 > INT32_MAX / 2) {
        why = "the sample is too long";
    } else {
        eng_attn_params pa = a->attn;
        pa.selector = IDX_DENSE;
        parent = eng_seq_create_ex(m, (int)(nc + nq + s->max_new + 1), &pa, err, sizeof err);
        double t0 = krn_now_s();
        if (!parent || eng_seq_keep_queries(parent, err, sizeof err) ||
            eng_forward(m, parent, c, (int)nc, NULL, false, err, sizeof err))
            why = err;
        prefill_s = krn_now_s() - t0;
    }
    fprintf(stderr, "kvseek eval: sample %d/%d: %lld + %lld tokens, prefill %.1f s%s%s\n", index + 1, total,
            (long long)nc, (long long)nq, prefill_s, why ? ": " : "", why ? why : "");
    for (int k = 0; k < n_specs; k++) {
        const char *e = why;
        eng_seq *f = NULL;
        int n_gen = 0;
        double q_s = 0, dec_s = 0;
        char ferr[512];
        if (!e) {
            eng_attn_params fa = specs[k].attn;
            if (a->no_recall) fa.measure_recall = 0;
            f = eng_seq_fork(parent, &fa, ferr, sizeof ferr);
            if (!f || answer(m, f, q, nq, a->question_prefill, s->max_new, logits, gen, &n_gen, &q_s, &dec_s,
                             ferr, sizeof ferr))
                e = ferr;
        }
        failed += e != NULL;
        print_row(s, &specs[k], v, gen, n_gen, nc, nq, prefill_s, q_s, dec_s, e ? NULL : f, e);
        eng_seq_free(f);
    }
    eng_seq_free(parent);
    free(gen);
    free(logits);
    free(q);
    free(c);
    return failed;
}

int tool_eval_main(int argc, char **argv) {
    eval_args a;
    if (parse_args(argc, argv, &a)) return 2;
    if (a.help) {
        usage();
        return 0;
    }
    if (!a.no_recall) a.attn.measure_recall = 1;
    char *specbuf = strdup(a.selectors);
    spec specs[MAX_SPECS];
    int n_specs = 0;
    if (!specbuf || parse_specs(specbuf, &a.attn, specs, &n_specs)) {
        free(specbuf);
        return 2;
    }
    int n = 0;
    sample *ss = read_samples(a.samples, &n);
    if (!ss) {
        free(specbuf);
        return 1;
    }
    eng_model_params mp = {.n_threads = a.threads > 0 ? a.threads : tool_physical_cores(), .chunk = a.chunk,
                           .attn = a.attn, .device = a.device};
    char err[512];
    eng_model *m = eng_model_load(a.model, &mp, err, sizeof err);
    int failed = 0;
    if (!m) {
        fprintf(stderr, "error: %s\n", err);
        failed = 1;
    } else {
        fprintf(stderr, "kvseek eval: %s on %s, %d samples x %d selectors, %d threads\n", a.model,
                eng_model_device(m), n, n_specs, mp.n_threads);
        for (int i = 0; i < n; i++) failed += run_sample(m, &a, &ss[i], specs, n_specs, i, n);
    }
    for (int i = 0; i < n; i++) cJSON_Delete(ss[i].line);
    free(ss);
    free(specbuf);
    eng_model_free(m);
    return failed ? 1 : 0;
}
