/* The endpoints: request bodies parsed and validated into a typed generation request (TGI,
 * OpenAI completions, OpenAI chat), tokenized in the HTTP thread, submitted to the scheduler,
 * and the token events turned into a JSON response or a Server-Sent Events stream. Also
 * /v1/models, /tokenize and /detokenize.
 *
 * Validation follows the APIs: unknown fields are ignored, wrong types and out-of-range values
 * are errors naming the field (OpenAI 400 with "param"; TGI 422). A null value means "default",
 * as the OpenAI clients send it. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grammar.h"
#include "srv.h"

/* Adds a string of n bytes (any bytes) to obj as key, cleaned to valid UTF-8. */
static void add_str(cJSON *obj, const char *key, const char *s, size_t n) {
    char *c = tok_utf8_clean(s ? s : "", s ? n : 0);
    cJSON_AddItemToObject(obj, key, cJSON_CreateString(c ? c : ""));
    free(c);
}

static cJSON *mk_str(const char *s, size_t n) {
    char *c = tok_utf8_clean(s ? s : "", s ? n : 0);
    cJSON *it = cJSON_CreateString(c ? c : "");
    free(c);
    return it;
}

/* A token's text as shown in token lists (control tokens as their text). */
static int piece(const tok_vocab *v, int32_t id, char *buf, int cap) {
    int n = tok_piece(v, id, true, buf, cap - 1);
    if (n > cap - 1) n = cap - 1;
    if (n < 0) n = 0;
    buf[n] = 0;
    return n;
}

/* ---- field validation ---- */

typedef struct {
    const char *param;
    char msg[400];
    char param_buf[64];    /* a param name built at run time (e->param may point here) */
} perr;

static int fail(perr *e, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(perr *e, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->param = param;
    return -1;
}

static bool absent(const cJSON *it) { return !it || cJSON_IsNull(it); }

/* Each returns 1 when the field is there (and valid), 0 when absent or null, -1 with e set. */
static int opt_num(const cJSON *it, const char *name, double lo, double hi, double *out, perr *e) {
    if (absent(it)) return 0;
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || !isfinite(v) || v < lo || v > hi)
        return fail(e, name, "'%s' must be a number in [%g, %g]", name, lo, hi);
    *out = v;
    return 1;
}

static int opt_top_p(const cJSON *it, double *out, perr *e) {
    if (absent(it)) return 0;
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || !(v > 0 && v <= 1)) return fail(e, "top_p", "'top_p' must be a number in (0, 1]");
    *out = v;
    return 1;
}

static int opt_int(const cJSON *it, const char *name, double lo, double hi, long long *out, perr *e) {
    if (absent(it)) return 0;
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || !isfinite(v) || v != floor(v) || v < lo || v > hi)
        return fail(e, name, "'%s' must be an integer in [%.0f, %.0f]", name, lo, hi);
    *out = (long long)v;
    return 1;
}

static int opt_bool(const cJSON *it, const char *name, bool *out, perr *e) {
    if (absent(it)) return 0;
    if (!cJSON_IsBool(it)) return fail(e, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(it);
    return 1;
}

/* ---- the generation request ---- */

typedef struct {
    srv_route route;
    bool stream;
    char *prompt;          /* text to tokenize (owned); NULL when ids were given */
    size_t prompt_len;
    int32_t *ids;          /* the prompt's tokens (owned) */
    int n_ids;
    const char *prompt_param;
    long long max_tokens;  /* -1: the route's default */
    const char *max_param;
    eng_sampler_params sp;
    bool seed_given;
    char *stop[ENG_MAX_STOP];
    int n_stop;
    bool details;          /* TGI: token list in details */
    bool input_details;    /* TGI decoder_input_details: the prompt's tokens and logprobs in
                            * details.prefill */
    long long truncate;    /* TGI truncate: keep only the prompt's last this many tokens (0: all) */
    bool full_text;        /* TGI return_full_text, OpenAI echo */
    int logprobs;          /* -1: none; else alternatives per token (0..20) */
    int top_n;             /* TGI top_n_tokens: alternatives per token in top_tokens (0: none) */
    bool include_usage;
    bool ignore_eos;
    bool cache_prompt;     /* start from / keep in the prefix cache (default true) */
    eng_attn_params attn;  /* the server's default, then the request's "attention" */
    char context[48];      /* a registered context the prompt continues ("context"), or empty */
    gram *grammar;         /* response_format / TGI grammar, compiled; handed to the scheduler */
    cJSON *tools;          /* chat: the validated tools (owned), NULL: none */
    int tool_mode;         /* TOOLS_OFF, TOOLS_AUTO (the answer may call), TOOLS_FORCED (it calls:
                            * the prompt ends with the format's call opener, the JSON constrained) */
    srv_chat_fmt fmt;
    int n_choices;         /* OpenAI n: choices returned (1..MAX_CHOICES) */
    int best_of;           /* sequences generated (>= n_choices); the best n are returned */
} gen_req;

enum { TOOLS_OFF = 0, TOOLS_AUTO, TOOLS_FORCED };

static void gen_req_free(gen_req *g) {
    gram_free(g->grammar);
    cJSON_Delete(g->tools);
    free(g->prompt);
    free(g->ids);
    for (int i = 0; i < g->n_stop; i++) free(g->stop[i]);
}

/* The OpenAI default sampling: temperature 1, nothing cut. */
static eng_sampler_params sampling_none(void) {
    eng_sampler_params p = {.temperature = 1.0f, .top_p = 1.0f, .repeat_penalty = 1.0f, .repeat_last_n = 64};
    return p;
}

/* stop: a string or an array of strings (at most ENG_MAX_STOP). */
static int parse_stop(const cJSON *it, const char *name, bool allow_string, gen_req *g, perr *e) {
    if (absent(it)) return 0;
    if (cJSON_IsString(it) && allow_string) {
        if (*it->valuestring && !(g->stop[g->n_stop++] = strdup(it->valuestring)))
            return fail(e, name, "out of memory");
        return 1;
    }
    if (!cJSON_IsArray(it))
        return fail(e, name, allow_string ? "'%s' must be a string or an array of strings" :
                    "'%s' must be an array of strings", name);
    if (cJSON_GetArraySize(it) > ENG_MAX_STOP)
        return fail(e, name, "'%s' has more than %d entries", name, ENG_MAX_STOP);
    const cJSON *s;
    cJSON_ArrayForEach(s, it) {
        if (!cJSON_IsString(s)) return fail(e, name, "'%s' must contain strings only", name);
        if (*s->valuestring && !(g->stop[g->n_stop++] = strdup(s->valuestring)))
            return fail(e, name, "out of memory");
    }
    return 1;
}

static int set_prompt(gen_req *g, const char *s, perr *e) {
    g->prompt_len = strlen(s);
    if (!(g->prompt = strdup(s))) return fail(e, g->prompt_param, "out of memory");
    return 0;
}

/* Token ids given directly (OpenAI completions' prompt as an array of integers). */
static int set_ids(gen_req *g, const cJSON *arr, int n_vocab, perr *e) {
    int n = cJSON_GetArraySize(arr);
    g->ids = malloc(sizeof(int32_t) * (n > 0 ? n : 1));
    if (!g->ids) return fail(e, "prompt", "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, arr) {
        double v = cJSON_GetNumberValue(t);
        if (!cJSON_IsNumber(t) || v != floor(v) || v < 0 || v >= n_vocab)
            return fail(e, "prompt", "'prompt' token ids must be integers in [0, %d)", n_vocab);
        g->ids[g->n_ids++] = (int32_t)v;
    }
    return 0;
}

/* "attention": a selector name or an object of knobs (selector, top_k, scan, target, gqa, sink,
 * window, measure_recall) over the server's default. */
static int parse_attention(const cJSON *it, gen_req *g, perr *e) {
    if (absent(it)) return 0;
    char err[200];
    const char *key;
    if (srv_attn_from_json(it, &g->attn, false, err, sizeof err, &key)) {
        char param[64];
        snprintf(param, sizeof param, "attention%s%.40s", strcmp(key, "attention") ? "." : "",
                 strcmp(key, "attention") ? key : "");
        fail(e, NULL, "%s", err);
        snprintf(e->param_buf, sizeof e->param_buf, "%s", param);
        e->param = e->param_buf;
        return -1;
    }
    return 0;
}

/* "context": the id of a registered context (checked against the registry later). */
static int parse_context(const cJSON *it, gen_req *g, perr *e) {
    if (absent(it)) return 0;
    if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof g->context)
        return fail(e, "context", "'context' must be the id of a registered context (ctx_...)");
    snprintf(g->context, sizeof g->context, "%s", it->valuestring);
    return 0;
}

/* g->grammar: any JSON object (JSON mode). */
static int set_json_object(const char *param, gen_req *g, perr *e) {
    gram_free(g->grammar);
    return (g->grammar = gram_json_object()) ? 0 : fail(e, param, "out of memory");
}

/* A JSON schema (an object, or a string holding one) compiled into g->grammar. */
static int set_schema(const cJSON *schema, const char *param, gen_req *g, perr *e) {
    char *text = cJSON_IsString(schema) ? strdup(schema->valuestring)
               : cJSON_IsObject(schema) || cJSON_IsBool(schema) ? cJSON_PrintUnformatted(schema) : NULL;
    if (!cJSON_IsString(schema) && !cJSON_IsObject(schema) && !cJSON_IsBool(schema))
        return fail(e, param, "'%s' must be a JSON schema object", param);
    if (!text) return fail(e, param, "out of memory");
    char err[200];
    gram_free(g->grammar);
    g->grammar = gram_from_json_schema(text, strlen(text), err, sizeof err);
    free(text);
    if (!g->grammar) return fail(e, param, "invalid or unsupported schema: %s", err);
    return 0;
}

static int set_regex(const cJSON *re, const char *param, gen_req *g, perr *e) {
    if (!cJSON_IsString(re)) return fail(e, param, "'%s' must be a regular expression string", param);
    char err[200];
    gram_free(g->grammar);
    g->grammar = gram_from_regex(re->valuestring, strlen(re->valuestring), err, sizeof err);
    if (!g->grammar) return fail(e, param, "the regular expression does not compile: %s", err);
    return 0;
}

/* TGI's grammar {"type": "json" | "json_object" | "regex", "value": ...}, also accepted as
 * OpenAI chat's response_format (huggingface_hub's chat_completion sends it so). */
static int parse_tgi_grammar(const cJSON *gr, const char *param, gen_req *g, perr *e) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(gr, "type");
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(gr, "value");
    char vparam[64];
    snprintf(vparam, sizeof vparam, "%s.value", param);
    if (!strcmp(type->valuestring, "regex")) return set_regex(value, vparam, g, e);
    if (absent(value) || !strcmp(type->valuestring, "json_object")) return set_json_object(param, g, e);
    return set_schema(value, vparam, g, e);
}

/* OpenAI's response_format: text, json_object, json_schema {name, schema, strict}; and TGI's
 * forms (json, regex). */
static int parse_response_format(const cJSON *rf, gen_req *g, perr *e) {
    if (absent(rf)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsObject(rf) || !cJSON_IsString(type))
        return fail(e, "response_format", "'response_format' must be an object with a string 'type'");
    const char *t = type->valuestring;
    if (!strcmp(t, "text")) return 0;
    if (!strcmp(t, "json_object")) return set_json_object("response_format", g, e);
    if (!strcmp(t, "json_schema")) {
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
        if (!cJSON_IsObject(js))
            return fail(e, "response_format.json_schema", "'response_format.json_schema' must be an object "
                        "with a 'schema'");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(js, "name");
        if (!absent(name) && !cJSON_IsString(name))
            return fail(e, "response_format.json_schema.name", "'response_format.json_schema.name' must be a string");
        const cJSON *strict = cJSON_GetObjectItemCaseSensitive(js, "strict");
        if (!absent(strict) && !cJSON_IsBool(strict))
            return fail(e, "response_format.json_schema.strict", "'response_format.json_schema.strict' must be a boolean");
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
        if (absent(schema)) return set_json_object("response_format", g, e);
        return set_schema(schema, "response_format.json_schema.schema", g, e);
    }
    if (!strcmp(t, "json") || !strcmp(t, "regex")) return parse_tgi_grammar(rf, "response_format", g, e);
    return fail(e, "response_format.type", "'response_format.type' must be one of text, json_object, "
                "json_schema (or TGI's json, regex); got '%.40s'", t);
}

/* Sampling fields shared by the OpenAI routes (plus the usual extensions: top_k, min_p,
 * repetition_penalty, ignore_eos), then the route's required prompt field `prompt_key` into
 * *prompt. */
static int parse_openai_common(const cJSON *root, const char *prompt_key, gen_req *g, const cJSON **prompt,
                               perr *e) {
    g->prompt_param = prompt_key;
    double d = 0;
    long long ll = 0;
    int rc;
    g->sp = sampling_none();
    if ((rc = opt_num(cJSON_GetObjectItemCaseSensitive(root, "temperature"), "temperature", 0, 2, &d, e)) < 0) return -1;
    if (rc) g->sp.temperature = (float)d;
    if ((rc = opt_top_p(cJSON_GetObjectItemCaseSensitive(root, "top_p"), &d, e)) < 0) return -1;
    if (rc) g->sp.top_p = (float)d;
    if ((rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "top_k"), "top_k", -1, 1e9, &ll, e)) < 0) return -1;
    if (rc) g->sp.top_k = ll < 0 ? 0 : (int)ll;
    if ((rc = opt_num(cJSON_GetObjectItemCaseSensitive(root, "min_p"), "min_p", 0, 1, &d, e)) < 0) return -1;
    if (rc) g->sp.min_p = (float)d;
    if ((rc = opt_num(cJSON_GetObjectItemCaseSensitive(root, "presence_penalty"), "presence_penalty", -2, 2, &d, e)) < 0) return -1;
    if (rc) g->sp.presence_penalty = (float)d;
    if ((rc = opt_num(cJSON_GetObjectItemCaseSensitive(root, "frequency_penalty"), "frequency_penalty", -2, 2, &d, e)) < 0) return -1;
    if (rc) g->sp.frequency_penalty = (float)d;
    if ((rc = opt_num(cJSON_GetObjectItemCaseSensitive(root, "repetition_penalty"), "repetition_penalty", 0, 10, &d, e)) < 0) return -1;
    if (rc) {
        if (d <= 0) return fail(e, "repetition_penalty", "'repetition_penalty' must be > 0");
        g->sp.repeat_penalty = (float)d;
    }
    if (g->sp.presence_penalty != 0 || g->sp.frequency_penalty != 0) g->sp.repeat_last_n = -1;
    if ((rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "seed"), "seed", -9.2e18, 9.2e18, &ll, e)) < 0) return -1;
    if (rc) {
        g->sp.seed = (uint64_t)ll;
        g->seed_given = true;
    }
    if ((rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "n"), "n", 1, 128, &ll, e)) < 0) return -1;
    if (rc) g->n_choices = g->best_of = (int)ll;
    if ((rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "best_of"), "best_of", 1, 128, &ll, e)) < 0) return -1;
    if (rc) {
        if (ll < g->n_choices) return fail(e, "best_of", "'best_of' must be at least 'n'");
        g->best_of = (int)ll;
    }
    long long mt = -1, mct = -1;
    if (opt_int(cJSON_GetObjectItemCaseSensitive(root, "max_tokens"), "max_tokens", 1, 1 << 30, &mt, e) < 0) return -1;
    if (opt_int(cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens"), "max_completion_tokens", 1, 1 << 30, &mct, e) < 0) return -1;
    g->max_tokens = mct > 0 ? mct : mt;
    g->max_param = mct > 0 ? "max_completion_tokens" : "max_tokens";
    if (parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"), "stop", true, g, e) < 0) return -1;
    if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "stream"), "stream", &g->stream, e) < 0) return -1;
    if (g->stream && g->best_of > g->n_choices)
        return fail(e, "best_of", "'best_of' larger than 'n' cannot stream (the best are known at the end)");
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (!absent(so)) {
        if (!cJSON_IsObject(so)) return fail(e, "stream_options", "'stream_options' must be an object");
        if (!g->stream)
            return fail(e, "stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (opt_bool(cJSON_GetObjectItemCaseSensitive(so, "include_usage"), "stream_options.include_usage",
                     &g->include_usage, e) < 0)
            return -1;
    }
    if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "ignore_eos"), "ignore_eos", &g->ignore_eos, e) < 0) return -1;
    if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "cache_prompt"), "cache_prompt", &g->cache_prompt, e) < 0)
        return -1;
    if (parse_attention(cJSON_GetObjectItemCaseSensitive(root, "attention"), g, e)) return -1;
    if (parse_context(cJSON_GetObjectItemCaseSensitive(root, "context"), g, e)) return -1;
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (!absent(lb)) {
        if (!cJSON_IsObject(lb)) return fail(e, "logit_bias", "'logit_bias' must be an object of token ids to numbers");
        if (cJSON_GetArraySize(lb) > ENG_MAX_LOGIT_BIAS)
            return fail(e, "logit_bias", "'logit_bias' takes at most %d tokens", ENG_MAX_LOGIT_BIAS);
        const cJSON *it;
        cJSON_ArrayForEach(it, lb) {
            char *end;
            long id = strtol(it->string, &end, 10);
            if (!it->string[0] || *end || id < 0 || id >= (1L << 30))
                return fail(e, "logit_bias", "'logit_bias' key '%.20s' is not a token id", it->string);
            double v = cJSON_GetNumberValue(it);
            if (!cJSON_IsNumber(it) || !(v >= -100 && v <= 100))
                return fail(e, "logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
            g->sp.bias_id[g->sp.n_bias] = (int32_t)id;
            g->sp.bias[g->sp.n_bias++] = (float)v;
        }
    }
    /* known fields whose meaning kvseek cannot honour: refused, not silently dropped */
    const char *unsupported[] = {"functions", "tools"}; /* legacy functions; tools outside chat */
    for (int i = 0; i < (strcmp(prompt_key, "messages") ? 2 : 1); i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, unsupported[i]);
        if (!absent(t) && (!cJSON_IsArray(t) || cJSON_GetArraySize(t) > 0))
            return fail(e, unsupported[i], "'%s' (tool calling) is not supported", unsupported[i]);
    }
    if (parse_response_format(cJSON_GetObjectItemCaseSensitive(root, "response_format"), g, e)) return -1;
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (!absent(user) && !cJSON_IsString(user)) return fail(e, "user", "'user' must be a string");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!absent(model) && !cJSON_IsString(model)) return fail(e, "model", "'model' must be a string");
    *prompt = cJSON_GetObjectItemCaseSensitive(root, prompt_key);
    if (absent(*prompt)) return fail(e, prompt_key, "'%s' is required", prompt_key);
    return 0;
}

static int parse_completions(const cJSON *root, gen_req *g, int n_vocab, perr *e) {
    const cJSON *p;
    if (parse_openai_common(root, "prompt", g, &p, e)) return -1;
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && !cJSON_IsNumber(cJSON_GetArrayItem(p, 0)))
        p = cJSON_GetArrayItem(p, 0); /* ["text"] or [[ids]]: one prompt */
    if (cJSON_IsString(p)) {
        if (set_prompt(g, p->valuestring, e)) return -1;
    } else if (cJSON_IsArray(p) && (cJSON_GetArraySize(p) == 0 || cJSON_IsNumber(cJSON_GetArrayItem(p, 0)))) {
        if (set_ids(g, p, n_vocab, e)) return -1;
    } else if (cJSON_IsArray(p)) {
        return fail(e, "prompt", "only one prompt per request is supported");
    } else {
        return fail(e, "prompt", "'prompt' must be a string, an array of one string, or an array of token ids");
    }
    long long lp = 0;
    int rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "logprobs"), "logprobs", 0, ENG_MAX_TOP_LOGPROBS, &lp, e);
    if (rc < 0) return -1;
    g->logprobs = rc ? (int)lp : -1;
    if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "echo"), "echo", &g->full_text, e) < 0) return -1;
    /* echo with logprobs: the prompt's tokens get theirs too (not streamed) */
    g->input_details = g->full_text && g->logprobs >= 0 && !g->stream;
    if (!absent(cJSON_GetObjectItemCaseSensitive(root, "suffix")) &&
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "suffix")))
        return fail(e, "suffix", "'suffix' must be a string");
    return 0;
}

/* A message's content: a string, or an array of {"type":"text","text":...} parts. */
static int content_text(const cJSON *c, int i, char **out, perr *e) {
    /* the name lives in the request's error (two threads may reject chats at once) */
    char *pname = e->param_buf;
    snprintf(pname, sizeof e->param_buf, "messages[%d].content", i);
    if (absent(c)) return (*out = strdup("")) ? 0 : fail(e, pname, "out of memory");
    if (cJSON_IsString(c)) return (*out = strdup(c->valuestring)) ? 0 : fail(e, pname, "out of memory");
    if (!cJSON_IsArray(c)) return fail(e, pname, "'%s' must be a string or an array of text parts", pname);
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return fail(e, pname, "'%s' parts must be objects with a 'type'", pname);
        if (strcmp(type->valuestring, "text"))
            return fail(e, pname, "content parts of type '%s' are not supported (text only)", type->valuestring);
        if (!cJSON_IsString(text)) return fail(e, pname, "a text part needs a string 'text'");
        len += strlen(text->valuestring);
    }
    char *s = malloc(len + 1), *p = s;
    if (!s) return fail(e, pname, "out of memory");
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t n = strlen(t);
        memcpy(p, t, n);
        p += n;
    }
    *p = 0;
    *out = s;
    return 0;
}

/* An assistant message's tool_calls: [{"id", "type": "function", "function": {"name",
 * "arguments": JSON text}}]. */
static int check_tool_calls(const cJSON *calls, int i, perr *e) {
    char *pname = e->param_buf;
    snprintf(pname, sizeof e->param_buf, "messages[%d].tool_calls", i);
    if (!cJSON_IsArray(calls)) return fail(e, pname, "'%s' must be an array", pname);
    int k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
        snprintf(pname, sizeof e->param_buf, "messages[%d].tool_calls[%d]", i, k++);
        if (!cJSON_IsObject(c) || !cJSON_IsObject(fn) ||
            (!absent(type) && (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))))
            return fail(e, pname, "'%s' must be {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}", pname);
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name")) ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "arguments")))
            return fail(e, pname, "'%s.function' needs string 'name' and 'arguments'", pname);
    }
    return 0;
}

static bool tool_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return false;
    return true;
}

/* {"type": "object", "properties": {"name": {"const": name}, ARGS: parameters}, "required": [...]} */
static cJSON *call_schema(const cJSON *fn, const char *args_key) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "object");
    cJSON *props = cJSON_AddObjectToObject(o, "properties");
    cJSON *name = cJSON_AddObjectToObject(props, "name");
    cJSON_AddStringToObject(name, "const", cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    if (cJSON_IsObject(params)) {
        cJSON_AddItemToObject(props, args_key, cJSON_Duplicate(params, true));
    } else {
        cJSON *any = cJSON_AddObjectToObject(props, args_key);
        cJSON_AddStringToObject(any, "type", "object");
    }
    cJSON *req = cJSON_AddArrayToObject(o, "required");
    cJSON_AddItemToArray(req, cJSON_CreateString("name"));
    cJSON_AddItemToArray(req, cJSON_CreateString(args_key));
    return o;
}

/* tools and tool_choice: validated, kept in g->tools, and for a forced call (required, or a
 * named function) the grammar of the call's JSON. */
static int parse_tools(const cJSON *root, gen_req *g, srv_chat_fmt fmt, perr *e) {
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    const cJSON *par = cJSON_GetObjectItemCaseSensitive(root, "parallel_tool_calls");
    if (!absent(par) && !cJSON_IsBool(par)) return fail(e, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
    bool have = !absent(tools);
    if (have && !cJSON_IsArray(tools)) return fail(e, "tools", "'tools' must be an array of functions");
    have = have && cJSON_GetArraySize(tools) > 0;
    char *pname = e->param_buf;
    int k = 0;
    const cJSON *t;
    if (have) {
        if (cJSON_GetArraySize(tools) > 128) return fail(e, "tools", "'tools' takes at most 128 functions");
        cJSON_ArrayForEach(t, tools) {
            snprintf(pname, sizeof e->param_buf, "tools[%d]", k++);
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
            if (!cJSON_IsObject(t) || (!absent(type) && (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))))
                return fail(e, pname, "'%s' must be {\"type\": \"function\", \"function\": {...}}", pname);
            if (!cJSON_IsObject(fn)) return fail(e, pname, "'%s.function' must be an object", pname);
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
            if (!cJSON_IsString(name) || !tool_name_ok(name->valuestring))
                return fail(e, pname, "'%s.function.name' must be 1 to 64 letters, digits, '_', '-' or '.'", pname);
            const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
            if (!absent(params) && !cJSON_IsObject(params))
                return fail(e, pname, "'%s.function.parameters' must be a JSON schema object", pname);
            const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
            if (!absent(desc) && !cJSON_IsString(desc))
                return fail(e, pname, "'%s.function.description' must be a string", pname);
        }
    }
    const cJSON *forced_fn = NULL;
    bool required = false;
    if (absent(choice) || (cJSON_IsString(choice) && !strcmp(choice->valuestring, "auto"))) {
        g->tool_mode = have ? TOOLS_AUTO : TOOLS_OFF;
    } else if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "none")) {
        g->tool_mode = TOOLS_OFF;
    } else if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "required")) {
        required = true;
    } else if (cJSON_IsObject(choice)) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(choice, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name))
            return fail(e, "tool_choice", "'tool_choice' must be none, auto, required, or "
                        "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        if (have) {
            cJSON_ArrayForEach(t, tools) {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
                if (!strcmp(cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring, name->valuestring)) forced_fn = f;
            }
        }
        if (!forced_fn) return fail(e, "tool_choice", "'tool_choice' names '%.64s', which is not in 'tools'", name->valuestring);
    } else {
        return fail(e, "tool_choice", "'tool_choice' must be none, auto, required, or a named function");
    }
    if ((required || forced_fn) && !have) return fail(e, "tool_choice", "'tool_choice' needs 'tools'");
    if (!have) return 0;
    if (!(g->tools = cJSON_Duplicate(tools, true))) return fail(e, "tools", "out of memory");
    if (!required && !forced_fn) return 0;
    if (g->grammar) return fail(e, "response_format", "'response_format' cannot be combined with a forced 'tool_choice'");
    g->tool_mode = TOOLS_FORCED;
    const char *args_key = srv_chat_tool_args_key(fmt);
    cJSON *schema;
    if (forced_fn) {
        schema = call_schema(forced_fn, args_key);
    } else {
        schema = cJSON_CreateObject();
        cJSON *any = cJSON_AddArrayToObject(schema, "anyOf");
        cJSON_ArrayForEach(t, tools) cJSON_AddItemToArray(any, call_schema(cJSON_GetObjectItemCaseSensitive(t, "function"), args_key));
    }
    char *text = schema ? cJSON_PrintUnformatted(schema) : NULL;
    cJSON_Delete(schema);
    if (!text) return fail(e, "tools", "out of memory");
    char err[200];
    g->grammar = gram_from_json_schema(text, strlen(text), err, sizeof err);
    free(text);
    if (!g->grammar) return fail(e, "tools", "a function's parameters cannot constrain the call: %s", err);
    return 0;
}

static int parse_chat(const cJSON *root, gen_req *g, srv_chat_fmt fmt, perr *e) {
    g->fmt = fmt;
    const cJSON *msgs;
    if (parse_openai_common(root, "messages", g, &msgs, e)) return -1;
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return fail(e, "messages", "'messages' must be a non-empty array");
    bool lp = false;
    long long top = 0;
    if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "logprobs"), "logprobs", &lp, e) < 0) return -1;
    int rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "top_logprobs"), "top_logprobs", 0, ENG_MAX_TOP_LOGPROBS, &top, e);
    if (rc < 0) return -1;
    if (rc && top > 0 && !lp) return fail(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    g->logprobs = lp ? (int)top : -1;

    int n = cJSON_GetArraySize(msgs), i = 0;
    srv_chat_msg *m = calloc(n, sizeof *m);
    if (!m) return fail(e, "messages", "out of memory");
    int ret = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        char *pname = e->param_buf;
        snprintf(pname, sizeof e->param_buf, "messages[%d]", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsObject(it) || !cJSON_IsString(role)) {
            ret = fail(e, pname, "'%s' must be an object with a string 'role'", pname);
            break;
        }
        m[i].role = role->valuestring;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(it, "tool_calls");
        bool assistant = !strcmp(role->valuestring, "assistant");
        if (!absent(calls)) {
            if (!assistant || (ret = check_tool_calls(calls, i, e))) {
                if (!ret) ret = fail(e, pname, "only an assistant message may carry 'tool_calls'");
                break;
            }
            if (cJSON_GetArraySize(calls) > 0) m[i].tool_calls = calls;
        }
        if (absent(content) && !m[i].tool_calls) { /* as OpenAI: only a call may come without text */
            snprintf(pname, sizeof e->param_buf, "messages[%d].content", i);
            ret = fail(e, pname, "'%s' is required (only an assistant message with 'tool_calls' may omit it)",
                       pname);
            break;
        }
        if (content_text(content, i, &m[i].content, e)) {
            ret = -1;
            break;
        }
        i++;
    }
    if (ret == 0 && fmt == SRV_CHAT_NONE) {
        ret = fail(e, "messages", "this model has no chat template kvseek can render (supported: gemma, "
                   "chatml, llama3); start the server with --chat-template, or use /v1/completions");
    }
    if (ret == 0) ret = parse_tools(root, g, fmt, e);
    if (ret == 0) {
        char err[200];
        g->prompt = srv_chat_render(fmt, m, n, g->tool_mode ? g->tools : NULL, err, sizeof err);
        if (!g->prompt) ret = fail(e, "messages", "%s", err);
        else g->prompt_len = strlen(g->prompt);
    }
    if (ret == 0 && g->tool_mode == TOOLS_FORCED) { /* the answer starts as the call's opener */
        const char *open = srv_chat_tool_open(fmt);
        char *np = realloc(g->prompt, g->prompt_len + strlen(open) + 1);
        if (!np) {
            ret = fail(e, "messages", "out of memory");
        } else {
            g->prompt = np;
            strcpy(g->prompt + g->prompt_len, open);
            g->prompt_len += strlen(open);
        }
    }
    for (int k = 0; k < n; k++) free(m[k].content);
    free(m);
    return ret;
}

/* TGI: {"inputs", "parameters": {...}}, or the flat form {"prompt", "max_tokens", ...}. */
static int parse_tgi(const cJSON *root, gen_req *g, perr *e) {
    g->prompt_param = "inputs";
    g->max_param = "max_new_tokens";
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    if (absent(in)) in = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (absent(in)) return fail(e, "inputs", "'inputs' is required");
    if (!cJSON_IsString(in)) return fail(e, "inputs", "'inputs' must be a string");
    if (set_prompt(g, in->valuestring, e)) return -1;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if (!absent(params) && !cJSON_IsObject(params)) return fail(e, "parameters", "'parameters' must be an object");
    /* a field is looked up in "parameters" first, then at the top level (the flat form) */
#define F(k) (!absent(cJSON_GetObjectItemCaseSensitive(params, k)) ? cJSON_GetObjectItemCaseSensitive(params, k) \
                                                                   : cJSON_GetObjectItemCaseSensitive(root, k))
    double d = 0;
    long long ll = 0;
    int rc;
    bool do_sample = false, sampling = false;
    g->sp = sampling_none();
    if (opt_bool(F("do_sample"), "do_sample", &do_sample, e) < 0) return -1;
    if ((rc = opt_num(F("temperature"), "temperature", 0, 100, &d, e)) < 0) return -1;
    if (rc) {
        g->sp.temperature = (float)d;
        sampling |= d > 0;
    }
    if ((rc = opt_top_p(F("top_p"), &d, e)) < 0) return -1;
    if (rc) {
        g->sp.top_p = (float)d;
        sampling |= d < 1;
    }
    if ((rc = opt_int(F("top_k"), "top_k", 0, 1e9, &ll, e)) < 0) return -1;
    if (rc) {
        g->sp.top_k = (int)ll;
        sampling |= ll > 0;
    }
    if ((rc = opt_num(F("repetition_penalty"), "repetition_penalty", 0, 100, &d, e)) < 0) return -1;
    if (rc) {
        if (d <= 0) return fail(e, "repetition_penalty", "'repetition_penalty' must be > 0");
        g->sp.repeat_penalty = (float)d;
    }
    if ((rc = opt_num(F("frequency_penalty"), "frequency_penalty", -2, 2, &d, e)) < 0) return -1;
    if (rc) {
        g->sp.frequency_penalty = (float)d;
        g->sp.repeat_last_n = -1;
    }
    if ((rc = opt_int(F("seed"), "seed", 0, 1.8e19, &ll, e)) < 0) return -1;
    if (rc) {
        g->sp.seed = (uint64_t)ll;
        g->seed_given = true;
    }
    long long mt = -1;
    const char *names[] = {"max_new_tokens", "max_tokens", "n_predict"};
    for (int i = 0; i < 3 && mt < 0; i++) {
        if ((rc = opt_int(F(names[i]), names[i], 1, 1 << 30, &mt, e)) < 0) return -1;
        if (rc) g->max_param = names[i];
    }
    g->max_tokens = mt;
    if (parse_stop(F("stop"), "stop", true, g, e) < 0) return -1;
    if (opt_bool(F("details"), "details", &g->details, e) < 0) return -1;
    if (opt_bool(F("return_full_text"), "return_full_text", &g->full_text, e) < 0) return -1;
    if (opt_bool(F("ignore_eos"), "ignore_eos", &g->ignore_eos, e) < 0) return -1;
    if (opt_bool(F("cache_prompt"), "cache_prompt", &g->cache_prompt, e) < 0) return -1;
    if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "stream"), "stream", &g->stream, e) < 0) return -1;
    if ((rc = opt_int(F("top_n_tokens"), "top_n_tokens", 0, ENG_MAX_TOP_LOGPROBS, &ll, e)) < 0) return -1;
    if (rc) g->top_n = (int)ll;
    if ((rc = opt_num(F("typical_p"), "typical_p", 0, 1, &d, e)) < 0) return -1;
    if (rc) {
        if (d <= 0 || d >= 1) return fail(e, "typical_p", "'typical_p' must be > 0 and < 1");
        g->sp.typical_p = (float)d;
        sampling = true;
    }
    if ((rc = opt_int(F("truncate"), "truncate", 1, 1 << 30, &ll, e)) < 0) return -1;
    if (rc) g->truncate = ll;
    if (opt_bool(F("decoder_input_details"), "decoder_input_details", &g->input_details, e) < 0) return -1;
    if (g->input_details && (g->stream || g->route == SRV_ROUTE_GENERATE_STREAM))
        return fail(e, "decoder_input_details", "'decoder_input_details' is not supported when streaming tokens");
    bool wm = false;
    if (opt_bool(F("watermark"), "watermark", &wm, e) < 0) return -1;
    if (wm) return fail(e, "watermark", "'watermark' is not supported");
    if (!absent(F("adapter_id"))) return fail(e, "adapter_id", "'adapter_id' is not supported (no LoRA adapters)");
    if ((rc = opt_int(F("best_of"), "best_of", 1, 128, &ll, e)) < 0) return -1;
    if (rc && ll > 1) {
        if (g->stream || g->route == SRV_ROUTE_GENERATE_STREAM)
            return fail(e, "best_of", "'best_of' > 1 cannot stream");
        if (g->seed_given) return fail(e, "best_of", "'seed' must not be set when 'best_of' > 1");
        g->best_of = (int)ll; /* needs sampling: checked below */
    }
    if (parse_attention(F("attention"), g, e)) return -1;
    if (parse_context(F("context"), g, e)) return -1;
    const cJSON *gr = F("grammar");
    if (!absent(gr)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(gr, "type");
        if (!cJSON_IsObject(gr) || !cJSON_IsString(type) ||
            (strcmp(type->valuestring, "json") && strcmp(type->valuestring, "regex") &&
             strcmp(type->valuestring, "json_object")))
            return fail(e, "grammar", "'grammar' must be {\"type\": \"json\" | \"regex\", \"value\": ...}");
        if (parse_tgi_grammar(gr, "grammar", g, e)) return -1;
    }
#undef F
    g->logprobs = -1;
    /* TGI samples when asked to, or when a sampling parameter says so; else greedy */
    if (g->best_of > 1 && !do_sample && !sampling)
        return fail(e, "best_of", "'best_of' > 1 needs sampling ('do_sample' or a sampling parameter)");
    if (!do_sample && !sampling) g->sp.temperature = 0.0f;
    else if (g->sp.temperature <= 0) g->sp.temperature = 1.0f;
    return 0;
}

/* A generating route's body (not NUL-terminated) parsed into g, whose route, max_tokens,
 * logprobs and attn the caller has set: 0, or -1 with e set (the 400 to answer). */
static int parse_gen_body(const char *body, size_t len, srv_chat_fmt fmt, int n_vocab, gen_req *g, perr *e) {
    cJSON *root = cJSON_ParseWithLength(body ? body : "", len);
    if (!root) return fail(e, NULL, "the body is not valid JSON");
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fail(e, NULL, "the body must be a JSON object");
    }
    int rc;
    if (g->route == SRV_ROUTE_GENERATE || g->route == SRV_ROUTE_GENERATE_STREAM) rc = parse_tgi(root, g, e);
    else if (g->route == SRV_ROUTE_COMPLETIONS) rc = parse_completions(root, g, n_vocab, e);
    else rc = parse_chat(root, g, fmt, e);
    cJSON_Delete(root);
    if (g->route == SRV_ROUTE_GENERATE_STREAM) g->stream = true;
    for (int i = 0; rc == 0 && i < g->sp.n_bias; i++)
        if (g->sp.bias_id[i] >= n_vocab)
            rc = fail(e, "logit_bias", "'logit_bias' token id %d is out of range [0, %d)", g->sp.bias_id[i], n_vocab);
    return rc;
}

int srv_parse_request(srv_route route, const char *body, size_t len, srv_chat_fmt fmt, int n_vocab, char *err,
                      size_t errlen) {
    gen_req g = {.route = route, .max_tokens = -1, .logprobs = -1, .cache_prompt = true, .attn = eng_attn_default(),
                 .n_choices = 1, .best_of = 1};
    perr e = {0};
    int rc = parse_gen_body(body, len, fmt, n_vocab, &g, &e);
    if (rc && err && errlen) snprintf(err, errlen, "%s%s%s", e.param ? e.param : "", e.param ? ": " : "", e.msg);
    gen_req_free(&g);
    return rc ? -1 : 0;
}

/* ---- running a generation ---- */

typedef struct {
    int32_t id;
    float logprob;
    bool special;
    int n_top;
    int32_t top_id[ENG_MAX_TOP_LOGPROBS];
    float top_lp[ENG_MAX_TOP_LOGPROBS];
    size_t offset;         /* where its text starts in the output */
} tok_rec;

#define MAX_CHOICES 16 /* n and best_of */

typedef struct gen gen;
struct gen {
    srv *s;
    struct MHD_Connection *conn;
    gen_req *g;            /* the request (the top's g_store, shared by its choices) */
    gen_req g_store;
    eng_req *req;
    int index;             /* the choice's index */
    gen *top;              /* the response's first choice, which holds the stream buffer and the
                            * others (itself when there is one) */
    gen *kids[MAX_CHOICES]; /* on the top: every choice, kids[0] being the top */
    int n_kids, n_ended;
    double lp_sum;         /* the tokens' logprobs summed (best_of ranks by their mean) */
    char id[40];
    long long created;     /* unix time, for the OpenAI "created" fields */
    double t_start;        /* request received (monotonic ms) */
    /* the output so far */
    char *text;
    size_t text_len, text_cap;
    tok_rec *toks;         /* kept for details / logprobs */
    eng_prompt_lp *prompt_lp; /* decoder_input_details, echo with logprobs: the prompt tokens'
                            * logprobs (from the
                            * first event), NULL until then */
    int n_toks, cap_toks;
    int n_events;
    double t_prev;         /* last token's time, for the inter-token latency */
    eng_event fin;         /* the final event's summary (its text already taken) */
    bool finished;
    bool gone;             /* the client went away */
    bool oom;
    /* stream output waiting to be written */
    char *out;
    size_t out_len, out_off, out_cap;
    bool ended;            /* the stream's last bytes are in out */
    size_t released;       /* chat with tools, streaming: text sent as content so far */
    bool called;           /* the answer ended in tool calls (finish_reason "tool_calls") */
};

static void gen_free(gen *G) {
    if (!G) return;
    for (int i = 1; i < G->n_kids; i++) gen_free(G->kids[i]);
    if (G->req) {
        if (!G->finished) {
            if (G->top == G) srv_metrics_client_cancel(G->s->metrics); /* one cancel per response */
            G->gone = true;
        }
        eng_req_release(G->req);
    }
    if (G->top == G) gen_req_free(G->g);
    free(G->text);
    free(G->toks);
    free(G->prompt_lp);
    free(G->out);
    free(G);
}

static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n, bool *oom) {
    if (*len + n + 1 > *cap) {
        size_t nc = 2 * (*len + n + 1) + 256;
        char *nb = realloc(*buf, nc);
        if (!nb) { *oom = true; return; }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

/* One SSE event "data: <json>\n\n"; takes obj. */
static void sse(gen *G, cJSON *obj) {
    G = G->top; /* every choice writes into the response's one stream */
    char *js = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    if (!js) { G->oom = true; return; }
    append(&G->out, &G->out_len, &G->out_cap, "data: ", 6, &G->oom);
    append(&G->out, &G->out_len, &G->out_cap, js, strlen(js), &G->oom);
    append(&G->out, &G->out_len, &G->out_cap, "\n\n", 2, &G->oom);
    free(js);
}

static const char *finish_openai(eng_finish f) {
    return f == ENG_FINISH_LENGTH ? "length" : "stop";
}

static const char *finish_tgi(eng_finish f) {
    return f == ENG_FINISH_LENGTH ? "length" : f == ENG_FINISH_STOP ? "stop_sequence" : "eos_token";
}

static bool ok_finish(eng_finish f) {
    return f == ENG_FINISH_LENGTH || f == ENG_FINISH_EOS || f == ENG_FINISH_STOP;
}

static cJSON *tgi_token(gen *G, const tok_rec *t) {
    char buf[512];
    int n = piece(G->s->vocab, t->id, buf, sizeof buf);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", t->id);
    add_str(o, "text", buf, n);
    cJSON_AddNumberToObject(o, "logprob", t->logprob);
    cJSON_AddBoolToObject(o, "special", t->special);
    return o;
}

/* TGI's top_tokens of one token: its alternatives, most likely first. */
static cJSON *tgi_top(gen *G, const tok_rec *t) {
    cJSON *a = cJSON_CreateArray();
    char buf[512];
    for (int k = 0; k < t->n_top; k++) {
        cJSON *o = cJSON_CreateObject();
        int n = piece(G->s->vocab, t->top_id[k], buf, sizeof buf);
        cJSON_AddNumberToObject(o, "id", t->top_id[k]);
        add_str(o, "text", buf, n);
        cJSON_AddNumberToObject(o, "logprob", t->top_lp[k]);
        cJSON_AddBoolToObject(o, "special", tok_is_eog(G->s->vocab, t->top_id[k]) ||
                                                tok_get_type(G->s->vocab, t->top_id[k]) == TOK_TYPE_CONTROL);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

static cJSON *tgi_details(gen *G, bool with_tokens) {
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "finish_reason", finish_tgi(G->fin.finish));
    cJSON_AddNumberToObject(d, "generated_tokens", G->fin.n_gen);
    if (G->g->sp.temperature > 0) { /* a u64: written exactly, not through a double */
        char num[24];
        snprintf(num, sizeof num, "%llu", (unsigned long long)(G->g->sp.seed + (uint64_t)G->index));
        cJSON_AddRawToObject(d, "seed", num);
    }
    else cJSON_AddNullToObject(d, "seed");
    cJSON_AddNumberToObject(d, "input_length", G->fin.n_prompt);
    cJSON_AddNumberToObject(d, "cached_tokens", G->fin.n_cached); /* kvseek's: prompt tokens not prefilled */
    cJSON_AddItemToObject(d, "attention", srv_attn_json(G->fin.selector, &G->fin.attn));
    if (with_tokens) {
        cJSON *pre = cJSON_AddArrayToObject(d, "prefill");
        if (G->g->input_details) {
            /* every prompt token with its logprob given those before it (TGI: the first's null) */
            const eng_prompt_lp *lp = G->prompt_lp ? G->prompt_lp : G->top->prompt_lp;
            char buf[512];
            for (int i = 0; i < G->g->n_ids; i++) {
                cJSON *o = cJSON_CreateObject();
                int n = piece(G->s->vocab, G->g->ids[i], buf, sizeof buf);
                cJSON_AddNumberToObject(o, "id", G->g->ids[i]);
                add_str(o, "text", buf, n);
                if (i == 0 || !lp || !isfinite(lp[i].logprob)) cJSON_AddNullToObject(o, "logprob");
                else cJSON_AddNumberToObject(o, "logprob", lp[i].logprob);
                cJSON_AddBoolToObject(o, "special", tok_get_type(G->s->vocab, G->g->ids[i]) == TOK_TYPE_CONTROL);
                cJSON_AddItemToArray(pre, o);
            }
        }
        cJSON *arr = cJSON_AddArrayToObject(d, "tokens");
        for (int i = 0; i < G->n_toks; i++) cJSON_AddItemToArray(arr, tgi_token(G, &G->toks[i]));
        if (G->g->top_n > 0) {
            cJSON *tt = cJSON_AddArrayToObject(d, "top_tokens");
            for (int i = 0; i < G->n_toks; i++) cJSON_AddItemToArray(tt, tgi_top(G, &G->toks[i]));
        }
    }
    return d;
}

/* The full text a response reports: the prompt first for return_full_text / echo. */
static cJSON *full_text(gen *G) {
    if (!G->g->full_text) return mk_str(G->text, G->text_len);
    char *both = malloc(G->g->prompt_len + G->text_len + 1);
    if (!both) return mk_str(G->text, G->text_len);
    memcpy(both, G->g->prompt ? G->g->prompt : "", G->g->prompt ? G->g->prompt_len : 0);
    memcpy(both + (G->g->prompt ? G->g->prompt_len : 0), G->text ? G->text : "", G->text_len);
    cJSON *it = mk_str(both, (G->g->prompt ? G->g->prompt_len : 0) + G->text_len);
    free(both);
    return it;
}

/* OpenAI completions logprobs for tokens [a, b), after the prompt's own when echo asked for them
 * (as OpenAI's legacy API and vLLM answer echo with logprobs: the first token's logprob and
 * alternatives null, each other's alternatives the most likely token there and itself). */
static cJSON *logprobs_completions(gen *G, int a, int b, bool with_prompt) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    char buf[512];
    size_t base = G->g->full_text ? G->g->prompt_len : 0;
    const eng_prompt_lp *plp = G->prompt_lp ? G->prompt_lp : G->top->prompt_lp;
    if (with_prompt && plp) {
        size_t off = 0;
        for (int i = 0; i < G->g->n_ids; i++) {
            const int32_t id = G->g->ids[i];
            int n = piece(G->s->vocab, id, buf, sizeof buf);
            cJSON_AddItemToArray(toks, mk_str(buf, n));
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
            off += n > 0 && n <= (int)sizeof buf ? (size_t)n : 0;
            if (i == 0 || !isfinite(plp[i].logprob)) {
                cJSON_AddItemToArray(lps, cJSON_CreateNull());
                cJSON_AddItemToArray(tops, cJSON_CreateNull());
                continue;
            }
            cJSON_AddItemToArray(lps, cJSON_CreateNumber(plp[i].logprob));
            cJSON *top = cJSON_CreateObject();
            for (int k = 0; k < 2; k++) {
                const int32_t t = k ? id : plp[i].top_id;
                n = piece(G->s->vocab, t, buf, sizeof buf);
                char *c = tok_utf8_clean(buf, n);
                if (c && !cJSON_GetObjectItemCaseSensitive(top, c))
                    cJSON_AddNumberToObject(top, c, k ? plp[i].logprob : plp[i].top_logprob);
                free(c);
            }
            cJSON_AddItemToArray(tops, top);
        }
    }
    for (int i = a; i < b; i++) {
        const tok_rec *t = &G->toks[i];
        int n = piece(G->s->vocab, t->id, buf, sizeof buf);
        cJSON_AddItemToArray(toks, mk_str(buf, n));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t->logprob));
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < t->n_top; k++) {
            n = piece(G->s->vocab, t->top_id[k], buf, sizeof buf);
            char *c = tok_utf8_clean(buf, n);
            if (c && !cJSON_GetObjectItemCaseSensitive(top, c)) cJSON_AddNumberToObject(top, c, t->top_lp[k]);
            free(c);
        }
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(base + t->offset)));
    }
    return o;
}

static cJSON *bytes_array(const char *s, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)s[i]));
    return a;
}

/* OpenAI chat logprobs {"content": [...]} for tokens [a, b). */
static cJSON *logprobs_chat(gen *G, int a, int b) {
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "content");
    char buf[512];
    for (int i = a; i < b; i++) {
        const tok_rec *t = &G->toks[i];
        cJSON *e = cJSON_CreateObject();
        int n = piece(G->s->vocab, t->id, buf, sizeof buf);
        add_str(e, "token", buf, n);
        cJSON_AddNumberToObject(e, "logprob", t->logprob);
        cJSON_AddItemToObject(e, "bytes", bytes_array(buf, n));
        cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < t->n_top; k++) {
            cJSON *x = cJSON_CreateObject();
            n = piece(G->s->vocab, t->top_id[k], buf, sizeof buf);
            add_str(x, "token", buf, n);
            cJSON_AddNumberToObject(x, "logprob", t->top_lp[k]);
            cJSON_AddItemToObject(x, "bytes", bytes_array(buf, n));
            cJSON_AddItemToArray(tops, x);
        }
        cJSON_AddItemToArray(arr, e);
    }
    return o;
}

cJSON *srv_attn_json(const char *selector, const eng_attn_stats *st) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "selector", selector);
    cJSON_AddNumberToObject(a, "sparse_rows", (double)st->sparse_rows);
    cJSON_AddNumberToObject(a, "offloaded_keys", (double)st->offloaded_keys);
    cJSON_AddNumberToObject(a, "keys_read", (double)st->keys_read);
    cJSON_AddNumberToObject(a, "keys_read_fraction",
                            st->offloaded_keys ? (double)st->keys_read / st->offloaded_keys : 0.0);
    cJSON_AddNumberToObject(a, "keys_scanned", (double)st->keys_scanned);
    cJSON_AddNumberToObject(a, "search_ms", st->search_s * 1e3);
    cJSON_AddNumberToObject(a, "attn_ms", st->attn_s * 1e3);
    cJSON_AddNumberToObject(a, "index_build_ms", st->build_s * 1e3);
    if (st->recall_n) cJSON_AddNumberToObject(a, "mass_recall", st->mass_recall);
    return a;
}

static cJSON *usage(gen *G) {
    cJSON *u = cJSON_CreateObject();
    int gen_tokens = 0; /* every choice's, best_of's discarded ones included (they were generated) */
    for (int i = 0; i < G->n_kids; i++) gen_tokens += G->kids[i]->fin.n_gen;
    cJSON_AddNumberToObject(u, "prompt_tokens", G->fin.n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", gen_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", G->fin.n_prompt + gen_tokens);
    cJSON *pd = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(pd, "cached_tokens", G->fin.n_cached);
    return u;
}

/* The fields every OpenAI response and stream chunk opens with. */
static cJSON *openai_object(gen *G, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", G->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)G->created);
    cJSON_AddStringToObject(o, "model", G->s->cfg.model_alias);
    cJSON_AddStringToObject(o, "system_fingerprint", "kvseek");
    return o;
}

/* An OpenAI stream chunk with one choice; the caller fills the choice. */
static cJSON *chunk(gen *G, cJSON **choice) {
    bool chat = G->g->route == SRV_ROUTE_CHAT;
    cJSON *o = openai_object(G, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    if (choice) {
        *choice = cJSON_CreateObject();
        cJSON_AddNumberToObject(*choice, "index", G->index);
        cJSON_AddItemToArray(choices, *choice);
    }
    if (G->g->include_usage) cJSON_AddNullToObject(o, "usage");
    return o;
}

/* A stream chunk carrying text (and the logprobs of tokens [a, b)). */
static void openai_text_chunk(gen *G, const char *text, size_t n, int a, int b, const char *finish) {
    cJSON *choice;
    cJSON *o = chunk(G, &choice);
    if (G->g->route == SRV_ROUTE_CHAT) {
        cJSON *delta = cJSON_AddObjectToObject(choice, "delta");
        if (text) add_str(delta, "content", text, n);
        if (G->g->logprobs >= 0 && b > a) cJSON_AddItemToObject(choice, "logprobs", logprobs_chat(G, a, b));
        else cJSON_AddNullToObject(choice, "logprobs");
    } else {
        add_str(choice, "text", text ? text : "", text ? n : 0);
        if (G->g->logprobs >= 0 && b > a) cJSON_AddItemToObject(choice, "logprobs", logprobs_completions(G, a, b, false));
        else cJSON_AddNullToObject(choice, "logprobs");
    }
    if (finish) {
        cJSON_AddStringToObject(choice, "finish_reason", finish);
        cJSON_AddItemToObject(o, "attention", srv_attn_json(G->fin.selector, &G->fin.attn));
    } else {
        cJSON_AddNullToObject(choice, "finish_reason");
    }
    sse(G, o);
}

/* OpenAI's tool_calls from the parsed calls [{name, arguments}]; ids derived from the answer's. */
static cJSON *openai_calls(gen *G, const cJSON *calls) {
    cJSON *arr = cJSON_CreateArray();
    int i = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        cJSON *o = cJSON_CreateObject();
        char id[48];
        snprintf(id, sizeof id, "call_%.16s%02d", G->id + strlen(G->id) - 16, i++);
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "type", "function");
        cJSON *fn = cJSON_AddObjectToObject(o, "function");
        cJSON_AddStringToObject(fn, "name", cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring);
        cJSON_AddStringToObject(fn, "arguments", cJSON_GetObjectItemCaseSensitive(c, "arguments")->valuestring);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

/* The calls in a finished chat answer with tools (NULL: none); *content_len: the text before. */
static bool known_tool(const gen *G, const char *name) {
    const cJSON *t;
    cJSON_ArrayForEach(t, G->g->tools) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!strcmp(cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring, name)) return true;
    }
    return false;
}

/* The text with an answer's surrounding whitespace and a Markdown code fence removed. */
static const char *unfenced(const char *t, size_t n, size_t *len) {
    while (n && isspace((unsigned char)*t)) { t++; n--; }
    while (n && isspace((unsigned char)t[n - 1])) n--;
    if (n >= 6 && !memcmp(t, "```", 3) && !memcmp(t + n - 3, "```", 3)) {
        const char *nl = memchr(t, '\n', n - 3);
        if (nl) {
            n -= (size_t)(nl + 1 - t) + 3;
            t = nl + 1;
        }
    }
    *len = n;
    return t;
}

static cJSON *answer_calls(gen *G, size_t *content_len) {
    *content_len = G->text_len;
    if (!G->g->tool_mode) return NULL;
    const char *text = G->text ? G->text : "";
    cJSON *calls = srv_chat_parse_tool_calls(G->g->fmt, text, G->text_len, G->g->tool_mode == TOOLS_FORCED,
                                             content_len);
    if (!calls && G->g->tool_mode == TOOLS_AUTO) {
        /* small models often answer with the call's bare JSON, without the format's tags: taken
         * as a call when it names one of the tools */
        size_t n;
        const char *t = unfenced(text, G->text_len, &n);
        calls = srv_chat_parse_tool_calls(G->g->fmt, t, n, true, content_len);
        if (calls) *content_len = 0;
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        if (G->g->tool_mode == TOOLS_AUTO && !known_tool(G, cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring)) {
            cJSON_Delete(calls);
            *content_len = G->text_len;
            return NULL;
        }
    }
    return calls;
}

/* Longest suffix of s[0, n) that is a proper prefix of tag. */
static size_t tag_holdback(const char *s, size_t n, const char *tag) {
    size_t t = strlen(tag);
    for (size_t L = t - 1 < n ? t - 1 : n; L > 0; L--)
        if (!memcmp(s + n - L, tag, L)) return L;
    return 0;
}

static void content_chunk(gen *G, size_t upto) {
    if (upto <= G->released) return;
    openai_text_chunk(G, G->text + G->released, upto - G->released, 0, 0, NULL);
    G->released = upto;
}

/* Streaming a chat answer with tools: content flows until a call may begin (a forced call, or
 * Llama 3's bare JSON, holds everything); at the end the calls go out as OpenAI streams them,
 * a delta with the call's id and name, then one with its arguments. */
static void tool_stream(gen *G, bool final_ok) {
    if (!final_ok) {
        if (G->g->tool_mode != TOOLS_AUTO || G->g->fmt == SRV_CHAT_LLAMA3 || !G->text) return;
        size_t i = 0;
        while (i < G->text_len && isspace((unsigned char)G->text[i])) i++;
        if (i == G->text_len || G->text[i] == '{' || G->text[i] == '`') return; /* maybe a bare call */
        /* a tag can only start in what is not released yet: the scan stays linear */
        const char *hit = memmem(G->text + G->released, G->text_len - G->released, "<tool_call>", 11);
        content_chunk(G, hit ? (size_t)(hit - G->text) : G->text_len - tag_holdback(G->text, G->text_len, "<tool_call>"));
        return;
    }
    size_t clen;
    cJSON *calls = answer_calls(G, &clen);
    if (!calls) {
        content_chunk(G, G->text_len);
        return;
    }
    content_chunk(G, clen);
    cJSON *oc = openai_calls(G, calls);
    int i = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, oc) {
        for (int part = 0; part < 2; part++) {
            cJSON *choice;
            cJSON *o = chunk(G, &choice);
            cJSON *delta = cJSON_AddObjectToObject(choice, "delta");
            cJSON *arr = cJSON_AddArrayToObject(delta, "tool_calls");
            cJSON *d = cJSON_CreateObject();
            cJSON_AddNumberToObject(d, "index", i);
            cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
            if (part == 0) {
                cJSON_AddStringToObject(d, "id", cJSON_GetObjectItemCaseSensitive(c, "id")->valuestring);
                cJSON_AddStringToObject(d, "type", "function");
                cJSON *f = cJSON_AddObjectToObject(d, "function");
                cJSON_AddStringToObject(f, "name", cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring);
                cJSON_AddStringToObject(f, "arguments", "");
            } else {
                cJSON *f = cJSON_AddObjectToObject(d, "function");
                cJSON_AddStringToObject(f, "arguments", cJSON_GetObjectItemCaseSensitive(fn, "arguments")->valuestring);
            }
            cJSON_AddItemToArray(arr, d);
            cJSON_AddNullToObject(choice, "logprobs");
            cJSON_AddNullToObject(choice, "finish_reason");
            sse(G, o);
        }
        i++;
    }
    cJSON_Delete(oc);
    cJSON_Delete(calls);
    G->called = true;
}

/* The stream's opening bytes: the chat role, or the echoed prompt. */
static void stream_open_one(gen *G);

static void stream_open(gen *T) {
    for (int i = 0; i < T->n_kids; i++) stream_open_one(T->kids[i]);
}

static void stream_open_one(gen *G) {
    if (G->g->route == SRV_ROUTE_CHAT) {
        cJSON *choice;
        cJSON *o = chunk(G, &choice);
        cJSON *delta = cJSON_AddObjectToObject(choice, "delta");
        cJSON_AddStringToObject(delta, "role", "assistant");
        cJSON_AddStringToObject(delta, "content", "");
        cJSON_AddNullToObject(choice, "logprobs");
        cJSON_AddNullToObject(choice, "finish_reason");
        sse(G, o);
    } else if (G->g->route == SRV_ROUTE_COMPLETIONS && G->g->full_text && G->g->prompt) {
        openai_text_chunk(G, G->g->prompt, G->g->prompt_len, 0, 0, NULL);
    }
}

static void stream_error(gen *G, int status, const char *msg) {
    srv_shape shape = G->g->route == SRV_ROUTE_GENERATE || G->g->route == SRV_ROUTE_GENERATE_STREAM ?
                      SRV_SHAPE_TGI : SRV_SHAPE_OPENAI;
    sse(G, srv_error_json(shape, status, NULL, NULL, msg));
}

/* Takes one event: the text and token into the output, the metrics, and for a stream its SSE
 * bytes. Takes what ev owns. */
static void consume(gen *G, eng_event *ev, bool stream) {
    srv *s = G->s;
    int first_tok = G->n_toks;
    if (ev->has_token) {
        if (G->n_events == 0) {
            if (G->top == G) srv_metrics_ttft(s->metrics, (ev->t_ms - G->t_start) / 1e3);
        } else {
            srv_metrics_itl(s->metrics, (ev->t_ms - G->t_prev) / 1e3);
        }
        G->t_prev = ev->t_ms;
        G->n_events++;
        G->lp_sum += ev->logprob;
        if (ev->prompt_lp && !G->prompt_lp) {
            G->prompt_lp = ev->prompt_lp; /* taken from the event */
            ev->prompt_lp = NULL;
        }
        bool keep = G->g->details || G->g->logprobs >= 0 || G->g->top_n > 0 || stream;
        if (keep && G->n_toks == G->cap_toks) {
            int nc = G->cap_toks ? 2 * G->cap_toks : 64;
            tok_rec *nt = realloc(G->toks, sizeof(tok_rec) * nc);
            if (nt) { G->toks = nt; G->cap_toks = nc; }
        }
        /* an end-of-generation token that ends the text is no part of an OpenAI answer */
        bool hidden = G->g->route != SRV_ROUTE_GENERATE && G->g->route != SRV_ROUTE_GENERATE_STREAM &&
                      ev->finish == ENG_FINISH_EOS;
        if (keep && G->n_toks < G->cap_toks && !hidden) {
            tok_rec *t = &G->toks[G->n_toks++];
            t->id = ev->id;
            t->logprob = ev->logprob;
            t->special = ev->special;
            t->n_top = ev->n_top;
            memcpy(t->top_id, ev->top_id, sizeof(int32_t) * ev->n_top);
            memcpy(t->top_lp, ev->top_logprob, sizeof(float) * ev->n_top);
            t->offset = G->text_len;
        }
    }
    size_t text_from = G->text_len;
    if (ev->text_len) append(&G->text, &G->text_len, &G->text_cap, ev->text, ev->text_len, &G->oom);
    const char *delta = G->text ? G->text + text_from : NULL;
    size_t delta_len = G->text_len - text_from;
    if (ev->finish != ENG_FINISH_NONE) {
        G->finished = true;
        G->fin = *ev;
        G->fin.text = NULL;
        G->fin.text_len = 0;
        if (ok_finish(ev->finish) && G->top == G) srv_metrics_e2e(s->metrics, krn_now_s() - G->t_start / 1e3);
    }
    if (stream) {
        bool tgi = G->g->route == SRV_ROUTE_GENERATE || G->g->route == SRV_ROUTE_GENERATE_STREAM;
        bool final_ok = ev->finish != ENG_FINISH_NONE && ok_finish(ev->finish);
        if (tgi) {
            if (ev->has_token && G->n_toks > first_tok) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddNumberToObject(o, "index", G->n_toks - 1);
                cJSON_AddItemToObject(o, "token", tgi_token(G, &G->toks[G->n_toks - 1]));
                if (G->g->top_n > 0) cJSON_AddItemToObject(o, "top_tokens", tgi_top(G, &G->toks[G->n_toks - 1]));
                else cJSON_AddNullToObject(o, "top_tokens");
                if (final_ok) {
                    cJSON_AddItemToObject(o, "generated_text", full_text(G));
                    cJSON_AddItemToObject(o, "details", tgi_details(G, false));
                } else {
                    cJSON_AddNullToObject(o, "generated_text");
                    cJSON_AddNullToObject(o, "details");
                }
                sse(G, o);
            }
        } else if (G->g->tool_mode) {
            tool_stream(G, final_ok);
        } else if (delta_len > 0 || (G->g->logprobs >= 0 && G->n_toks > first_tok)) {
            openai_text_chunk(G, delta, delta_len, first_tok, G->n_toks, NULL);
        }
        gen *T = G->top;
        if (ev->finish != ENG_FINISH_NONE && !T->ended) {
            T->n_ended++;
            if (!ok_finish(ev->finish)) {
                /* one choice failed: the response ends with the error, the others are dropped */
                stream_error(G, ev->finish == ENG_FINISH_ERROR ? 500 : 503,
                             ev->finish == ENG_FINISH_ERROR ? (ev->error[0] ? ev->error : "generation failed")
                                                            : "the request was cancelled (server shutting down)");
                for (int i = 0; i < T->n_kids; i++)
                    if (!T->kids[i]->finished) eng_req_cancel(T->kids[i]->req);
                T->n_ended = T->n_kids;
            } else if (!tgi) {
                openai_text_chunk(G, G->g->route == SRV_ROUTE_CHAT ? NULL : "", 0, 0, 0,
                                  G->called ? "tool_calls" : finish_openai(ev->finish));
            }
            if (T->n_ended == T->n_kids) {
                if (!tgi && ok_finish(ev->finish) && G->g->include_usage) {
                    cJSON *o = chunk(T, NULL);
                    cJSON_ReplaceItemInObject(o, "usage", usage(T));
                    sse(T, o);
                }
                if (!tgi) append(&T->out, &T->out_len, &T->out_cap, "data: [DONE]\n\n", 14, &T->oom);
                T->ended = true;
            }
        }
        /* a stream only needs the tokens of the current event */
        if (!G->g->details && G->g->logprobs < 0 && !tgi) G->n_toks = 0;
    }
    eng_event_clear(ev);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    gen *G = cls; /* the top: its choices' events are interleaved as they come */
    while (G->out_off == G->out_len) {
        G->out_off = G->out_len = 0;
        if (G->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        if (srv_client_gone(G->conn)) {
            for (int i = 0; i < G->n_kids; i++) eng_req_cancel(G->kids[i]->req);
            return MHD_CONTENT_READER_END_WITH_ERROR; /* the free callback counts the cancel */
        }
        bool got = false;
        gen *wait = NULL;
        for (int i = 0; i < G->n_kids && !G->ended; i++) {
            gen *k = G->kids[i];
            if (k->finished) continue;
            if (!wait) wait = k;
            eng_event ev;
            int r = eng_req_next(k->req, &ev, 0);
            if (r == 1) {
                consume(k, &ev, true);
                got = true;
            } else if (r < 0) {
                k->finished = true;
            }
        }
        if (G->oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (got || G->ended) continue;
        if (!wait) {
            G->ended = true;
            continue;
        }
        eng_event ev;
        int r = eng_req_next(wait->req, &ev, 25);
        if (r == 1) consume(wait, &ev, true);
        else if (r < 0) wait->finished = true;
        if (G->oom) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = G->out_len - G->out_off < max ? G->out_len - G->out_off : max;
    memcpy(buf, G->out + G->out_off, n);
    G->out_off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) { gen_free(cls); }

/* Waits for every choice to end (non-streaming), watching for the client going away. */
static void wait_done(gen *T) {
    double last_check = 0;
    for (int i = 0; i < T->n_kids; i++) {
        gen *G = T->kids[i];
        while (!G->finished) {
            eng_event ev;
            int r = eng_req_next(G->req, &ev, 25);
            if (r == 1) consume(G, &ev, false);
            else if (r < 0) break;
            double t = krn_now_s() * 1e3;
            if (!T->gone && t - last_check > 20) {
                last_check = t;
                if (srv_client_gone(T->conn)) {
                    T->gone = true;
                    srv_metrics_client_cancel(T->s->metrics);
                    for (int j = 0; j < T->n_kids; j++) eng_req_cancel(T->kids[j]->req);
                }
            }
        }
    }
}

static double mean_lp(const gen *G) { return G->lp_sum / (G->n_events > 0 ? G->n_events : 1); }

/* The choices in the order a response lists them: best_of > n keeps the n with the highest mean
 * token logprob (OpenAI's rule), best first; otherwise their own order. Returns how many. */
static int ranked(gen *T, gen **out) {
    int n = T->n_kids;
    for (int i = 0; i < n; i++) out[i] = T->kids[i];
    if (T->g->best_of <= T->g->n_choices) return n;
    for (int i = 1; i < n; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && mean_lp(out[j]) > mean_lp(out[j - 1]); j--) {
            gen *t = out[j]; out[j] = out[j - 1]; out[j - 1] = t;
        }
    return T->g->n_choices;
}

static cJSON *openai_choice(gen *G, int index, bool chat) {
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", index);
    if (chat) {
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        size_t clen;
        cJSON *calls = answer_calls(G, &clen);
        if (calls && clen == 0) cJSON_AddNullToObject(msg, "content");
        else add_str(msg, "content", G->text, clen);
        if (calls) {
            cJSON_AddItemToObject(msg, "tool_calls", openai_calls(G, calls));
            cJSON_Delete(calls);
            G->called = true;
        }
        if (G->g->logprobs >= 0) cJSON_AddItemToObject(ch, "logprobs", logprobs_chat(G, 0, G->n_toks));
        else cJSON_AddNullToObject(ch, "logprobs");
    } else {
        cJSON_AddItemToObject(ch, "text", full_text(G));
        if (G->g->logprobs >= 0)
            cJSON_AddItemToObject(ch, "logprobs", logprobs_completions(G, 0, G->n_toks, G->g->input_details));
        else cJSON_AddNullToObject(ch, "logprobs");
    }
    cJSON_AddStringToObject(ch, "finish_reason", G->called ? "tool_calls" : finish_openai(G->fin.finish));
    return ch;
}

static enum MHD_Result respond_final(srv_conn *c, gen *T) {
    if (T->gone) return MHD_NO; /* nobody to answer: close */
    for (int i = 0; i < T->n_kids; i++) {
        const gen *G = T->kids[i];
        if (ok_finish(G->fin.finish)) continue;
        if (G->fin.finish == ENG_FINISH_CANCELLED)
            return srv_respond_error(c, 503, NULL, NULL, "the request was cancelled (server shutting down)");
        return srv_respond_error(c, 500, NULL, NULL, "generation failed: %s", G->fin.error[0] ? G->fin.error : "unknown error");
    }
    gen *order[MAX_CHOICES];
    int n = ranked(T, order);
    if (T->g->route == SRV_ROUTE_GENERATE || T->g->route == SRV_ROUTE_GENERATE_STREAM) {
        /* TGI's best_of: the best sequence, the others in details.best_of_sequences */
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "generated_text", full_text(order[0]));
        cJSON *d = tgi_details(order[0], T->g->details);
        if (T->n_kids > 1) {
            cJSON *bs = cJSON_AddArrayToObject(d, "best_of_sequences");
            for (int i = 1; i < T->n_kids; i++) { /* every other sequence, ranked */
                cJSON *x = tgi_details(order[i], T->g->details);
                cJSON_AddItemToObject(x, "generated_text", full_text(order[i]));
                cJSON_AddItemToArray(bs, x);
            }
        }
        cJSON_AddItemToObject(o, "details", d);
        if (c->tgi_root) {
            cJSON *arr = cJSON_CreateArray();
            cJSON_AddItemToArray(arr, o);
            o = arr;
        }
        return srv_respond_json(c, 200, o);
    }
    bool chat = T->g->route == SRV_ROUTE_CHAT;
    cJSON *o = openai_object(T, chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(choices, openai_choice(order[i], i, chat));
    cJSON_AddItemToObject(o, "usage", usage(T));
    cJSON_AddItemToObject(o, "attention", srv_attn_json(T->fin.selector, &T->fin.attn));
    return srv_respond_json(c, 200, o);
}

/* Tokenizes the request's prompt text into g->ids. */
static int tokenize(srv *s, gen_req *g, perr *e) {
    if (g->ids) return 0;
    int64_t cap = (int64_t)g->prompt_len + 16;
    g->ids = malloc(sizeof(int32_t) * cap);
    if (!g->ids) return fail(e, g->prompt_param, "out of memory");
    const bool bos = !g->context[0]; /* a prompt after a context continues it */
    int64_t n = tok_encode(s->vocab, g->prompt, g->prompt_len, bos, true, g->ids, cap);
    if (n > cap) {
        int32_t *ni = realloc(g->ids, sizeof(int32_t) * n);
        if (!ni) return fail(e, g->prompt_param, "out of memory");
        g->ids = ni;
        n = tok_encode(s->vocab, g->prompt, g->prompt_len, bos, true, g->ids, n);
    }
    if (n < 0) return fail(e, g->prompt_param, "cannot tokenize the prompt: %s", tok_strerror(n));
    if (n > INT32_MAX / 2) return fail(e, g->prompt_param, "the prompt is too long");
    if (g->truncate > 0 && n > g->truncate) { /* TGI keeps the end of the prompt */
        memmove(g->ids, g->ids + (n - g->truncate), sizeof(int32_t) * g->truncate);
        n = g->truncate;
    }
    g->n_ids = (int)n;
    return 0;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

enum MHD_Result srv_api_generate(srv_conn *c) {
    srv *s = c->s;
    const int n_vocab = tok_n_vocab(s->vocab);
    gen *G = calloc(1, sizeof *G);
    if (!G) return srv_respond_error(c, 500, NULL, NULL, "out of memory");
    G->s = s;
    G->conn = c->conn;
    G->t_start = c->t_start;
    G->created = (long long)time(NULL);
    G->g = &G->g_store;
    G->top = G;
    G->kids[0] = G;
    G->n_kids = 1;
    G->g->route = c->route;
    G->g->max_tokens = -1;
    G->g->logprobs = -1;
    G->g->attn = s->cfg.attn;
    G->g->cache_prompt = true;
    G->g->n_choices = G->g->best_of = 1;
    perr e = {0};
    int rc = parse_gen_body(c->body, c->body_len, s->chat_fmt, n_vocab, G->g, &e);
    if (rc == 0 && c->ctx_id[0]) { /* the routable forms: /v1/contexts/{id}/..., X-Kvseek-Context */
        if (G->g->context[0] && strcmp(G->g->context, c->ctx_id))
            rc = fail(&e, "context", "'context' differs from the context of the URL or X-Kvseek-Context header");
        else
            snprintf(G->g->context, sizeof G->g->context, "%s", c->ctx_id);
    }
    if (rc == 0) rc = tokenize(s, G->g, &e);
    if (rc) {
        enum MHD_Result r = srv_respond_error(c, 400, NULL, e.param, "%s", e.msg);
        gen_free(G);
        return r;
    }
    gen_req *g = G->g;
    const int n_ctx = s->n_ctx;
    if (g->best_of > s->cfg.parallel || g->best_of > MAX_CHOICES) {
        const char *param = g->best_of > g->n_choices ? "best_of" : "n";
        int lim = s->cfg.parallel < MAX_CHOICES ? s->cfg.parallel : MAX_CHOICES;
        gen_free(G);
        return srv_respond_error(c, 400, NULL, param, "'%s' is at most %d on this server (its parallel sequences)",
                                 param, lim);
    }
    if (g->n_ids == 0) {
        gen_free(G);
        return srv_respond_error(c, 400, NULL, g->prompt_param, "the prompt is empty");
    }
    if (g->n_ids >= n_ctx) {
        enum MHD_Result r = srv_respond_error(c, 400, "context_length_exceeded", g->prompt_param,
            "the prompt has %d tokens; the context holds %d (prompt and output together)", g->n_ids, n_ctx);
        gen_free(G);
        return r;
    }
    int room = n_ctx - g->n_ids;
    if (g->max_tokens < 0) {
        int def = c->route == SRV_ROUTE_COMPLETIONS ? 16 : c->route == SRV_ROUTE_CHAT ? room : 100;
        g->max_tokens = def < room ? def : room;
    } else if (g->max_tokens > room) {
        enum MHD_Result r = srv_respond_error(c, 400, "context_length_exceeded", g->max_param,
            "the context holds %d tokens; the prompt has %d and %s asks for %lld more", n_ctx,
            g->n_ids, g->max_param, g->max_tokens);
        gen_free(G);
        return r;
    }
    uint64_t nid = atomic_fetch_add(&s->next_id, 1);
    if (!g->seed_given) g->sp.seed = mix64((uint64_t)time(NULL) ^ mix64(nid) ^ (uint64_t)(krn_now_s() * 1e6));
    snprintf(G->id, sizeof G->id, "%s-%016llx", c->route == SRV_ROUTE_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)mix64(nid ^ ((uint64_t)s->created << 20)));

    eng_gen_params gp = {
        .prompt = g->ids, .n_prompt = g->n_ids, .max_tokens = (int)g->max_tokens, .sampling = g->sp,
        .stop = (const char *const *)g->stop, .n_stop = g->n_stop,
        .stop_inclusive = c->route == SRV_ROUTE_GENERATE || c->route == SRV_ROUTE_GENERATE_STREAM,
        .ignore_eos = g->ignore_eos, .top_logprobs = g->logprobs > 0 ? g->logprobs : g->top_n,
        .attn = &g->attn, .no_cache = !g->cache_prompt, .prompt_logprobs = g->input_details,
    };
    eng_ctx *ctx = NULL;
    if (g->context[0]) {
        int cst = 404;
        if (s->contexts) ctx = srv_ctx_acquire(s->contexts, g->context, &cst);
        if (!ctx) {
            enum MHD_Result r = cst == 409 ? srv_respond_error(c, 409, "context_not_ready", "context",
                                                              "context '%s' is still building", g->context)
                              : cst == 410 ? srv_respond_error(c, 409, "context_failed", "context",
                                                              "context '%s' failed to build", g->context)
                                           : srv_respond_error(c, 404, "context_not_found", "context",
                                                              "no context '%.40s'", g->context);
            gen_free(G);
            return r;
        }
        gp.context = ctx;
    }
    if (s->contexts) eng_sched_set_pinned(s->sched, srv_ctx_bytes(s->contexts)); /* the budget's share */
    /* best_of sequences (n of them returned), each its own seed; one prompt prefill */
    const int total = g->best_of;
    eng_gen_params gps[MAX_CHOICES];
    eng_req *reqs[MAX_CHOICES] = {0};
    for (int i = 0; i < total; i++) {
        gps[i] = gp;
        gps[i].sampling.seed = g->sp.seed + (uint64_t)i;
        gps[i].grammar = i == 0 ? g->grammar : gram_ref(g->grammar);
    }
    g->grammar = NULL; /* the scheduler's now, whatever submit answers */
    for (int i = 1; i < total && rc == 0; i++) {
        gen *K = calloc(1, sizeof *K);
        if (!K) {
            rc = ENG_SCHED_ENOMEM;
            break;
        }
        K->s = s;
        K->conn = c->conn;
        K->t_start = G->t_start;
        K->created = G->created;
        memcpy(K->id, G->id, sizeof K->id);
        K->g = G->g;
        K->top = G;
        K->index = i;
        G->kids[G->n_kids++] = K;
    }
    if (rc) {
        for (int i = 0; i < total; i++) gram_free(gps[i].grammar);
    } else if (total == 1) {
        rc = eng_sched_submit(s->sched, &gps[0], &reqs[0]);
    } else {
        rc = eng_sched_submit_group(s->sched, gps, total, reqs);
    }
    for (int i = 0; i < G->n_kids; i++) G->kids[i]->req = reqs[i];
    eng_ctx_unref(ctx); /* the scheduler holds its own reference */
    if (rc) {
        gen_free(G);
        switch (rc) {
        case ENG_SCHED_EFULL:
            return srv_respond_error(c, 429, NULL, NULL, "too many requests are waiting; retry later");
        case ENG_SCHED_ESTOPPED:
            return srv_respond_error(c, 503, NULL, NULL, "the server is shutting down");
        case ENG_SCHED_EUNAVAIL:
            return srv_respond_error(c, 503, NULL, NULL, "%s", eng_sched_strerror(rc));
        case ENG_SCHED_ENOMEM:
            return srv_respond_error(c, 500, NULL, NULL, "out of memory");
        case ENG_SCHED_ENOSPACE:
            return srv_respond_error(c, 400, NULL, NULL, "%s (kv_cache_gb %g): shorten the prompt or max_tokens",
                                     eng_sched_strerror(rc), s->cfg.kv_cache_gb);
        default:
            return srv_respond_error(c, 400, NULL, NULL, "invalid request: %s", eng_sched_strerror(rc));
        }
    }
    if (g->stream) {
        stream_open(G);
        return srv_respond_stream(c, stream_read, G, stream_free);
    }
    wait_done(G);
    enum MHD_Result r = respond_final(c, G);
    gen_free(G);
    return r;
}

/* ---- /v1/models, /tokenize, /detokenize ---- */

enum MHD_Result srv_api_models(srv_conn *c) {
    srv *s = c->s;
    const eng_hparams *hp = eng_model_hparams(s->model);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->cfg.model_alias);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddStringToObject(m, "owned_by", "kvseek");
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddStringToObject(meta, "arch", hp->arch_name);
    cJSON_AddNumberToObject(meta, "n_vocab", hp->n_vocab);
    cJSON_AddNumberToObject(meta, "n_ctx", s->n_ctx);
    cJSON_AddNumberToObject(meta, "n_ctx_train", hp->n_ctx_train);
    cJSON_AddNumberToObject(meta, "n_parallel", s->cfg.parallel);
    cJSON_AddStringToObject(meta, "chat_template", srv_chat_name(s->chat_fmt));
    cJSON_AddItemToArray(data, m);
    return srv_respond_json(c, 200, o);
}

enum MHD_Result srv_api_info(srv_conn *c) {
    srv *s = c->s;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_id", s->cfg.model_alias);
    cJSON_AddNullToObject(o, "model_sha");
    cJSON_AddStringToObject(o, "model_dtype", "gguf");
    cJSON_AddStringToObject(o, "model_device_type", eng_model_device(s->model));
    cJSON_AddNullToObject(o, "model_pipeline_tag");
    cJSON_AddNumberToObject(o, "max_concurrent_requests", s->cfg.parallel + s->cfg.queue_size);
    cJSON_AddNumberToObject(o, "max_best_of", 1);
    cJSON_AddNumberToObject(o, "max_stop_sequences", ENG_MAX_STOP);
    cJSON_AddNumberToObject(o, "max_input_tokens", s->n_ctx - 1);
    cJSON_AddNumberToObject(o, "max_total_tokens", s->n_ctx);
    cJSON_AddNumberToObject(o, "max_batch_total_tokens", (double)s->n_ctx * s->cfg.parallel);
    cJSON_AddNumberToObject(o, "max_client_batch_size", 1);
    cJSON_AddNumberToObject(o, "validation_workers", 1);
    cJSON_AddStringToObject(o, "router", "kvseek");
    cJSON_AddStringToObject(o, "version", SRV_VERSION);
    cJSON_AddNullToObject(o, "sha");
    cJSON_AddNullToObject(o, "docker_label");
    return srv_respond_json(c, 200, o);
}

static cJSON *parse_body(srv_conn *c, enum MHD_Result *r) {
    cJSON *root = cJSON_ParseWithLength(c->body ? c->body : "", c->body_len);
    if (!root) {
        *r = srv_respond_error(c, 400, NULL, NULL, "the body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        *r = srv_respond_error(c, 400, NULL, NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* {"content" | "prompt": text, "add_special": true, "parse_special": true, "with_pieces": false}
 * -> {"tokens": [...], "count", "max_model_len"} */
enum MHD_Result srv_api_tokenize(srv_conn *c) {
    srv *s = c->s;
    enum MHD_Result r = MHD_NO;
    cJSON *root = parse_body(c, &r);
    if (!root) return r;
    perr e = {0};
    /* {"messages": [...], "tools": [...]}: the chat prompt as the chat route renders it (as vLLM's
     * /tokenize takes it); its text comes back in "prompt" */
    gen_req chat = {.route = SRV_ROUTE_CHAT, .max_tokens = -1, .logprobs = -1, .n_choices = 1, .best_of = 1};
    cJSON *rendered = NULL;
    if (!absent(cJSON_GetObjectItemCaseSensitive(root, "messages"))) {
        if (parse_chat(root, &chat, s->chat_fmt, &e) == 0 && !(rendered = cJSON_CreateString(chat.prompt)))
            fail(&e, "messages", "out of memory");
        gen_req_free(&chat);
        if (e.msg[0]) {
            cJSON_Delete(root);
            return srv_respond_error(c, 400, NULL, e.param, "%s", e.msg);
        }
    }
    const cJSON *t = rendered ? rendered : cJSON_GetObjectItemCaseSensitive(root, "content");
    const char *pname = "content";
    if (absent(t)) {
        t = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        pname = "prompt";
    }
    bool add_special = true, parse_special = true, pieces = false;
    if (absent(t) || !cJSON_IsString(t)) {
        fail(&e, pname, "'content' (or 'prompt') must be a string");
    } else if (opt_bool(cJSON_GetObjectItemCaseSensitive(root, "add_special"), "add_special", &add_special, &e) < 0 ||
               opt_bool(cJSON_GetObjectItemCaseSensitive(root, "add_special_tokens"), "add_special_tokens", &add_special, &e) < 0 ||
               opt_bool(cJSON_GetObjectItemCaseSensitive(root, "parse_special"), "parse_special", &parse_special, &e) < 0 ||
               opt_bool(cJSON_GetObjectItemCaseSensitive(root, "with_pieces"), "with_pieces", &pieces, &e) < 0) {
    }
    if (e.msg[0]) {
        cJSON_Delete(root);
        cJSON_Delete(rendered);
        return srv_respond_error(c, 400, NULL, e.param, "%s", e.msg);
    }
    size_t len = strlen(t->valuestring);
    int64_t cap = (int64_t)len + 16;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    int64_t n = ids ? tok_encode(s->vocab, t->valuestring, len, add_special, parse_special, ids, cap) : -1;
    if (n > cap) {
        int32_t *ni = realloc(ids, sizeof(int32_t) * n);
        if (ni) {
            ids = ni;
            n = tok_encode(s->vocab, t->valuestring, len, add_special, parse_special, ids, n);
        } else {
            n = -1;
        }
    }
    cJSON_Delete(root);
    if (n < 0) {
        free(ids);
        cJSON_Delete(rendered);
        return srv_respond_error(c, 500, NULL, NULL, "tokenization failed");
    }
    cJSON *o = cJSON_CreateObject();
    if (rendered) cJSON_AddItemToObject(o, "prompt", rendered);
    cJSON *arr = cJSON_AddArrayToObject(o, "tokens");
    char buf[512];
    for (int64_t i = 0; i < n; i++) {
        if (!pieces) {
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids[i]));
            continue;
        }
        cJSON *p = cJSON_CreateObject();
        cJSON_AddNumberToObject(p, "id", ids[i]);
        int pl = piece(s->vocab, ids[i], buf, sizeof buf);
        add_str(p, "piece", buf, pl);
        cJSON_AddItemToArray(arr, p);
    }
    cJSON_AddNumberToObject(o, "count", (double)n);
    cJSON_AddNumberToObject(o, "max_model_len", s->n_ctx);
    free(ids);
    return srv_respond_json(c, 200, o);
}

/* {"tokens": [ids]} -> {"content": text, "prompt": text} (llama.cpp's and vLLM's names). */
enum MHD_Result srv_api_detokenize(srv_conn *c) {
    srv *s = c->s;
    enum MHD_Result r = MHD_NO;
    cJSON *root = parse_body(c, &r);
    if (!root) return r;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    const int n_vocab = tok_n_vocab(s->vocab);
    if (!cJSON_IsArray(arr)) {
        cJSON_Delete(root);
        return srv_respond_error(c, 400, NULL, "tokens", "'tokens' must be an array of token ids");
    }
    int n = cJSON_GetArraySize(arr), i = 0;
    int32_t *ids = malloc(sizeof(int32_t) * (n > 0 ? n : 1));
    const cJSON *t;
    bool bad = !ids;
    cJSON_ArrayForEach(t, arr) {
        if (bad) break;
        double v = cJSON_GetNumberValue(t);
        if (!cJSON_IsNumber(t) || v != floor(v) || v < 0 || v >= n_vocab) bad = true;
        else ids[i++] = (int32_t)v;
    }
    cJSON_Delete(root);
    if (bad) {
        free(ids);
        return srv_respond_error(c, 400, NULL, "tokens", "'tokens' must hold integer ids in [0, %d)", n_vocab);
    }
    int64_t need = tok_decode(s->vocab, ids, n, false, NULL, 0);
    char *txt = malloc(need + 1);
    if (!txt) {
        free(ids);
        return srv_respond_error(c, 500, NULL, NULL, "out of memory");
    }
    tok_decode(s->vocab, ids, n, false, txt, need + 1);
    free(ids);
    cJSON *o = cJSON_CreateObject();
    add_str(o, "content", txt, (size_t)need);
    add_str(o, "prompt", txt, (size_t)need);
    free(txt);
    return srv_respond_json(c, 200, o);
}
