/* Generation requests (request.h): the TGI, OpenAI completions and OpenAI chat bodies parsed
 * and validated field by field into a gen_req, with errors naming the field. */
#include "request.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- field validation ---- */

int srv_req_fail(perr *e, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->param = param;
    return -1;
}

bool srv_req_absent(const cJSON *it) { return !it || cJSON_IsNull(it); }

/* Each returns 1 when the field is there (and valid), 0 when absent or null, -1 with e set. */
static int opt_num(const cJSON *it, const char *name, double lo, double hi, double *out, perr *e) {
    if (srv_req_absent(it)) return 0;
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || !isfinite(v) || v < lo || v > hi)
        return srv_req_fail(e, name, "'%s' must be a number in [%g, %g]", name, lo, hi);
    *out = v;
    return 1;
}

static int opt_top_p(const cJSON *it, double *out, perr *e) {
    if (srv_req_absent(it)) return 0;
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || !(v > 0 && v <= 1)) return srv_req_fail(e, "top_p", "'top_p' must be a number in (0, 1]");
    *out = v;
    return 1;
}

static int opt_int(const cJSON *it, const char *name, double lo, double hi, long long *out, perr *e) {
    if (srv_req_absent(it)) return 0;
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || !isfinite(v) || v != floor(v) || v < lo || v > hi)
        return srv_req_fail(e, name, "'%s' must be an integer in [%.0f, %.0f]", name, lo, hi);
    *out = (long long)v;
    return 1;
}

int srv_req_opt_bool(const cJSON *it, const char *name, bool *out, perr *e) {
    if (srv_req_absent(it)) return 0;
    if (!cJSON_IsBool(it)) return srv_req_fail(e, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(it);
    return 1;
}

/* ---- the generation request ---- */

void srv_req_free(gen_req *g) {
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
    if (srv_req_absent(it)) return 0;
    if (cJSON_IsString(it) && allow_string) {
        if (*it->valuestring && !(g->stop[g->n_stop++] = strdup(it->valuestring)))
            return srv_req_fail(e, name, "out of memory");
        return 1;
    }
    if (!cJSON_IsArray(it))
        return srv_req_fail(e, name, allow_string ? "'%s' must be a string or an array of strings" :
                    "'%s' must be an array of strings", name);
    if (cJSON_GetArraySize(it) > ENG_MAX_STOP)
        return srv_req_fail(e, name, "'%s' has more than %d entries", name, ENG_MAX_STOP);
    const cJSON *s;
    cJSON_ArrayForEach(s, it) {
        if (!cJSON_IsString(s)) return srv_req_fail(e, name, "'%s' must contain strings only", name);
        if (*s->valuestring && !(g->stop[g->n_stop++] = strdup(s->valuestring)))
            return srv_req_fail(e, name, "out of memory");
    }
    return 1;
}

static int set_prompt(gen_req *g, const char *s, perr *e) {
    g->prompt_len = strlen(s);
    if (!(g->prompt = strdup(s))) return srv_req_fail(e, g->prompt_param, "out of memory");
    return 0;
}

/* Token ids given directly (OpenAI completions' prompt as an array of integers). */
static int set_ids(gen_req *g, const cJSON *arr, int n_vocab, perr *e) {
    int n = cJSON_GetArraySize(arr);
    g->ids = malloc(sizeof(int32_t) * (n > 0 ? n : 1));
    if (!g->ids) return srv_req_fail(e, "prompt", "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, arr) {
        double v = cJSON_GetNumberValue(t);
        if (!cJSON_IsNumber(t) || v != floor(v) || v < 0 || v >= n_vocab)
            return srv_req_fail(e, "prompt", "'prompt' token ids must be integers in [0, %d)", n_vocab);
        g->ids[g->n_ids++] = (int32_t)v;
    }
    return 0;
}

/* "attention": a selector name or an object of knobs (selector, top_k, scan, target, gqa, sink,
 * window, measure_recall) over the server's default. */
#define TRACE_DEFAULT_BUCKETS 128

/* "trace" of the attention object: true (TRACE_DEFAULT_BUCKETS buckets), false, or a bucket
 * count; taken out of the object before the attention knobs are read. */
static int parse_trace(const cJSON *it, gen_req *g, perr *e) {
    if (cJSON_IsBool(it)) {
        g->trace_buckets = cJSON_IsTrue(it) ? TRACE_DEFAULT_BUCKETS : 0;
        return 0;
    }
    double v = cJSON_GetNumberValue(it);
    if (!cJSON_IsNumber(it) || v != floor(v) || v < 0 || v > ENG_TRACE_MAX_BUCKETS)
        return srv_req_fail(e, "attention.trace", "'attention.trace' must be true, false or a bucket count in [1, %d]",
                            ENG_TRACE_MAX_BUCKETS);
    g->trace_buckets = (int)v;
    return 0;
}

static int parse_attention(const cJSON *it, gen_req *g, perr *e) {
    if (srv_req_absent(it)) return 0;
    char err[200];
    const char *key;
    cJSON *copy = NULL;
    const cJSON *tr = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "trace") : NULL;
    if (tr) {
        if (parse_trace(tr, g, e)) return -1;
        if (!(copy = cJSON_Duplicate(it, true))) return srv_req_fail(e, "attention", "out of memory");
        cJSON_DeleteItemFromObjectCaseSensitive(copy, "trace");
        it = copy;
    }
    int bad = srv_attn_from_json(it, &g->attn, false, err, sizeof err, &key);
    if (bad) { /* the message names the key; the copy holds it */
        char param[64];
        snprintf(param, sizeof param, "attention%s%.40s", strcmp(key, "attention") ? "." : "",
                 strcmp(key, "attention") ? key : "");
        srv_req_fail(e, NULL, "%s", err);
        snprintf(e->param_buf, sizeof e->param_buf, "%s", param);
        e->param = e->param_buf;
    }
    cJSON_Delete(copy);
    return bad ? -1 : 0;
}

/* "context": the id of a registered context (checked against the registry later). */
static int parse_context(const cJSON *it, gen_req *g, perr *e) {
    if (srv_req_absent(it)) return 0;
    if (!cJSON_IsString(it) || strlen(it->valuestring) >= sizeof g->context)
        return srv_req_fail(e, "context", "'context' must be the id of a registered context (ctx_...)");
    snprintf(g->context, sizeof g->context, "%s", it->valuestring);
    return 0;
}

/* g->grammar: any JSON object (JSON mode). */
static int set_json_object(const char *param, gen_req *g, perr *e) {
    gram_free(g->grammar);
    return (g->grammar = gram_json_object()) ? 0 : srv_req_fail(e, param, "out of memory");
}

/* A JSON schema (an object, or a string holding one) compiled into g->grammar. */
static int set_schema(const cJSON *schema, const char *param, gen_req *g, perr *e) {
    char *text = cJSON_IsString(schema) ? strdup(schema->valuestring)
               : cJSON_IsObject(schema) || cJSON_IsBool(schema) ? cJSON_PrintUnformatted(schema) : NULL;
    if (!cJSON_IsString(schema) && !cJSON_IsObject(schema) && !cJSON_IsBool(schema))
        return srv_req_fail(e, param, "'%s' must be a JSON schema object", param);
    if (!text) return srv_req_fail(e, param, "out of memory");
    char err[200];
    gram_free(g->grammar);
    g->grammar = gram_from_json_schema(text, strlen(text), err, sizeof err);
    free(text);
    if (!g->grammar) return srv_req_fail(e, param, "invalid or unsupported schema: %s", err);
    return 0;
}

static int set_regex(const cJSON *re, const char *param, gen_req *g, perr *e) {
    if (!cJSON_IsString(re)) return srv_req_fail(e, param, "'%s' must be a regular expression string", param);
    char err[200];
    gram_free(g->grammar);
    g->grammar = gram_from_regex(re->valuestring, strlen(re->valuestring), err, sizeof err);
    if (!g->grammar) return srv_req_fail(e, param, "the regular expression does not compile: %s", err);
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
    if (srv_req_absent(value) || !strcmp(type->valuestring, "json_object")) return set_json_object(param, g, e);
    return set_schema(value, vparam, g, e);
}

/* OpenAI's response_format: text, json_object, json_schema {name, schema, strict}; and TGI's
 * forms (json, regex). */
static int parse_response_format(const cJSON *rf, gen_req *g, perr *e) {
    if (srv_req_absent(rf)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (!cJSON_IsObject(rf) || !cJSON_IsString(type))
        return srv_req_fail(e, "response_format", "'response_format' must be an object with a string 'type'");
    const char *t = type->valuestring;
    if (!strcmp(t, "text")) return 0;
    if (!strcmp(t, "json_object")) return set_json_object("response_format", g, e);
    if (!strcmp(t, "json_schema")) {
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
        if (!cJSON_IsObject(js))
            return srv_req_fail(e, "response_format.json_schema", "'response_format.json_schema' must be an object "
                        "with a 'schema'");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(js, "name");
        if (!srv_req_absent(name) && !cJSON_IsString(name))
            return srv_req_fail(e, "response_format.json_schema.name", "'response_format.json_schema.name' must be a string");
        const cJSON *strict = cJSON_GetObjectItemCaseSensitive(js, "strict");
        if (!srv_req_absent(strict) && !cJSON_IsBool(strict))
            return srv_req_fail(e, "response_format.json_schema.strict", "'response_format.json_schema.strict' must be a boolean");
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
        if (srv_req_absent(schema)) return set_json_object("response_format", g, e);
        return set_schema(schema, "response_format.json_schema.schema", g, e);
    }
    if (!strcmp(t, "json") || !strcmp(t, "regex")) return parse_tgi_grammar(rf, "response_format", g, e);
    return srv_req_fail(e, "response_format.type", "'response_format.type' must be one of text, json_object, "
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
        if (d <= 0) return srv_req_fail(e, "repetition_penalty", "'repetition_penalty' must be > 0");
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
        if (ll < g->n_choices) return srv_req_fail(e, "best_of", "'best_of' must be at least 'n'");
        g->best_of = (int)ll;
    }
    long long mt = -1, mct = -1;
    if (opt_int(cJSON_GetObjectItemCaseSensitive(root, "max_tokens"), "max_tokens", 1, 1 << 30, &mt, e) < 0) return -1;
    if (opt_int(cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens"), "max_completion_tokens", 1, 1 << 30, &mct, e) < 0) return -1;
    g->max_tokens = mct > 0 ? mct : mt;
    g->max_param = mct > 0 ? "max_completion_tokens" : "max_tokens";
    if (parse_stop(cJSON_GetObjectItemCaseSensitive(root, "stop"), "stop", true, g, e) < 0) return -1;
    if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "stream"), "stream", &g->stream, e) < 0) return -1;
    if (g->stream && g->best_of > g->n_choices)
        return srv_req_fail(e, "best_of", "'best_of' larger than 'n' cannot stream (the best are known at the end)");
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (!srv_req_absent(so)) {
        if (!cJSON_IsObject(so)) return srv_req_fail(e, "stream_options", "'stream_options' must be an object");
        if (!g->stream)
            return srv_req_fail(e, "stream_options", "'stream_options' is only allowed when 'stream' is true");
        if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(so, "include_usage"), "stream_options.include_usage",
                     &g->include_usage, e) < 0)
            return -1;
    }
    if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "ignore_eos"), "ignore_eos", &g->ignore_eos, e) < 0) return -1;
    if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "cache_prompt"), "cache_prompt", &g->cache_prompt, e) < 0)
        return -1;
    if (parse_attention(cJSON_GetObjectItemCaseSensitive(root, "attention"), g, e)) return -1;
    if (parse_context(cJSON_GetObjectItemCaseSensitive(root, "context"), g, e)) return -1;
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (!srv_req_absent(lb)) {
        if (!cJSON_IsObject(lb)) return srv_req_fail(e, "logit_bias", "'logit_bias' must be an object of token ids to numbers");
        if (cJSON_GetArraySize(lb) > ENG_MAX_LOGIT_BIAS)
            return srv_req_fail(e, "logit_bias", "'logit_bias' takes at most %d tokens", ENG_MAX_LOGIT_BIAS);
        const cJSON *it;
        cJSON_ArrayForEach(it, lb) {
            char *end;
            long id = strtol(it->string, &end, 10);
            if (!it->string[0] || *end || id < 0 || id >= (1L << 30))
                return srv_req_fail(e, "logit_bias", "'logit_bias' key '%.20s' is not a token id", it->string);
            double v = cJSON_GetNumberValue(it);
            if (!cJSON_IsNumber(it) || !(v >= -100 && v <= 100))
                return srv_req_fail(e, "logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
            g->sp.bias_id[g->sp.n_bias] = (int32_t)id;
            g->sp.bias[g->sp.n_bias++] = (float)v;
        }
    }
    /* known fields whose meaning kvseek cannot honour: refused, not silently dropped */
    const char *unsupported[] = {"functions", "tools"}; /* legacy functions; tools outside chat */
    for (int i = 0; i < (strcmp(prompt_key, "messages") ? 2 : 1); i++) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, unsupported[i]);
        if (!srv_req_absent(t) && (!cJSON_IsArray(t) || cJSON_GetArraySize(t) > 0))
            return srv_req_fail(e, unsupported[i], "'%s' (tool calling) is not supported", unsupported[i]);
    }
    if (parse_response_format(cJSON_GetObjectItemCaseSensitive(root, "response_format"), g, e)) return -1;
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(root, "user");
    if (!srv_req_absent(user) && !cJSON_IsString(user)) return srv_req_fail(e, "user", "'user' must be a string");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!srv_req_absent(model) && !cJSON_IsString(model)) return srv_req_fail(e, "model", "'model' must be a string");
    *prompt = cJSON_GetObjectItemCaseSensitive(root, prompt_key);
    if (srv_req_absent(*prompt)) return srv_req_fail(e, prompt_key, "'%s' is required", prompt_key);
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
        return srv_req_fail(e, "prompt", "only one prompt per request is supported");
    } else {
        return srv_req_fail(e, "prompt", "'prompt' must be a string, an array of one string, or an array of token ids");
    }
    long long lp = 0;
    int rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "logprobs"), "logprobs", 0, ENG_MAX_TOP_LOGPROBS, &lp, e);
    if (rc < 0) return -1;
    g->logprobs = rc ? (int)lp : -1;
    if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "echo"), "echo", &g->full_text, e) < 0) return -1;
    /* echo with logprobs: the prompt's tokens get theirs too (not streamed) */
    g->input_details = g->full_text && g->logprobs >= 0 && !g->stream;
    if (!srv_req_absent(cJSON_GetObjectItemCaseSensitive(root, "suffix")) &&
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "suffix")))
        return srv_req_fail(e, "suffix", "'suffix' must be a string");
    return 0;
}

/* A message's content: a string, or an array of {"type":"text","text":...} parts. */
static int content_text(const cJSON *c, int i, char **out, perr *e) {
    /* the name lives in the request's error (two threads may reject chats at once) */
    char *pname = e->param_buf;
    snprintf(pname, sizeof e->param_buf, "messages[%d].content", i);
    if (srv_req_absent(c)) return (*out = strdup("")) ? 0 : srv_req_fail(e, pname, "out of memory");
    if (cJSON_IsString(c)) return (*out = strdup(c->valuestring)) ? 0 : srv_req_fail(e, pname, "out of memory");
    if (!cJSON_IsArray(c)) return srv_req_fail(e, pname, "'%s' must be a string or an array of text parts", pname);
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return srv_req_fail(e, pname, "'%s' parts must be objects with a 'type'", pname);
        if (strcmp(type->valuestring, "text"))
            return srv_req_fail(e, pname, "content parts of type '%s' are not supported (text only)", type->valuestring);
        if (!cJSON_IsString(text)) return srv_req_fail(e, pname, "a text part needs a string 'text'");
        len += strlen(text->valuestring);
    }
    char *s = malloc(len + 1), *p = s;
    if (!s) return srv_req_fail(e, pname, "out of memory");
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
    if (!cJSON_IsArray(calls)) return srv_req_fail(e, pname, "'%s' must be an array", pname);
    int k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
        snprintf(pname, sizeof e->param_buf, "messages[%d].tool_calls[%d]", i, k++);
        if (!cJSON_IsObject(c) || !cJSON_IsObject(fn) ||
            (!srv_req_absent(type) && (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))))
            return srv_req_fail(e, pname, "'%s' must be {\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}", pname);
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name")) ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "arguments")))
            return srv_req_fail(e, pname, "'%s.function' needs string 'name' and 'arguments'", pname);
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
    if (!srv_req_absent(par) && !cJSON_IsBool(par)) return srv_req_fail(e, "parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
    bool have = !srv_req_absent(tools);
    if (have && !cJSON_IsArray(tools)) return srv_req_fail(e, "tools", "'tools' must be an array of functions");
    have = have && cJSON_GetArraySize(tools) > 0;
    char *pname = e->param_buf;
    int k = 0;
    const cJSON *t;
    if (have) {
        if (cJSON_GetArraySize(tools) > 128) return srv_req_fail(e, "tools", "'tools' takes at most 128 functions");
        cJSON_ArrayForEach(t, tools) {
            snprintf(pname, sizeof e->param_buf, "tools[%d]", k++);
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
            if (!cJSON_IsObject(t) || (!srv_req_absent(type) && (!cJSON_IsString(type) || strcmp(type->valuestring, "function"))))
                return srv_req_fail(e, pname, "'%s' must be {\"type\": \"function\", \"function\": {...}}", pname);
            if (!cJSON_IsObject(fn)) return srv_req_fail(e, pname, "'%s.function' must be an object", pname);
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
            if (!cJSON_IsString(name) || !tool_name_ok(name->valuestring))
                return srv_req_fail(e, pname, "'%s.function.name' must be 1 to 64 letters, digits, '_', '-' or '.'", pname);
            const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
            if (!srv_req_absent(params) && !cJSON_IsObject(params))
                return srv_req_fail(e, pname, "'%s.function.parameters' must be a JSON schema object", pname);
            const cJSON *desc = cJSON_GetObjectItemCaseSensitive(fn, "description");
            if (!srv_req_absent(desc) && !cJSON_IsString(desc))
                return srv_req_fail(e, pname, "'%s.function.description' must be a string", pname);
        }
    }
    const cJSON *forced_fn = NULL;
    bool required = false;
    if (srv_req_absent(choice) || (cJSON_IsString(choice) && !strcmp(choice->valuestring, "auto"))) {
        g->tool_mode = have ? TOOLS_AUTO : TOOLS_OFF;
    } else if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "none")) {
        g->tool_mode = TOOLS_OFF;
    } else if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "required")) {
        required = true;
    } else if (cJSON_IsObject(choice)) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(choice, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name))
            return srv_req_fail(e, "tool_choice", "'tool_choice' must be none, auto, required, or "
                        "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        if (have) {
            cJSON_ArrayForEach(t, tools) {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
                if (!strcmp(cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring, name->valuestring)) forced_fn = f;
            }
        }
        if (!forced_fn) return srv_req_fail(e, "tool_choice", "'tool_choice' names '%.64s', which is not in 'tools'", name->valuestring);
    } else {
        return srv_req_fail(e, "tool_choice", "'tool_choice' must be none, auto, required, or a named function");
    }
    if ((required || forced_fn) && !have) return srv_req_fail(e, "tool_choice", "'tool_choice' needs 'tools'");
    if (!have) return 0;
    if (!(g->tools = cJSON_Duplicate(tools, true))) return srv_req_fail(e, "tools", "out of memory");
    if (!required && !forced_fn) return 0;
    if (g->grammar) return srv_req_fail(e, "response_format", "'response_format' cannot be combined with a forced 'tool_choice'");
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
    if (!text) return srv_req_fail(e, "tools", "out of memory");
    char err[200];
    g->grammar = gram_from_json_schema(text, strlen(text), err, sizeof err);
    free(text);
    if (!g->grammar) return srv_req_fail(e, "tools", "a function's parameters cannot constrain the call: %s", err);
    return 0;
}

int srv_req_parse_chat(const cJSON *root, gen_req *g, srv_chat_fmt fmt, perr *e) {
    g->fmt = fmt;
    const cJSON *msgs;
    if (parse_openai_common(root, "messages", g, &msgs, e)) return -1;
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return srv_req_fail(e, "messages", "'messages' must be a non-empty array");
    bool lp = false;
    long long top = 0;
    if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "logprobs"), "logprobs", &lp, e) < 0) return -1;
    int rc = opt_int(cJSON_GetObjectItemCaseSensitive(root, "top_logprobs"), "top_logprobs", 0, ENG_MAX_TOP_LOGPROBS, &top, e);
    if (rc < 0) return -1;
    if (rc && top > 0 && !lp) return srv_req_fail(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    g->logprobs = lp ? (int)top : -1;

    int n = cJSON_GetArraySize(msgs), i = 0;
    srv_chat_msg *m = calloc(n, sizeof *m);
    if (!m) return srv_req_fail(e, "messages", "out of memory");
    int ret = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        char *pname = e->param_buf;
        snprintf(pname, sizeof e->param_buf, "messages[%d]", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        if (!cJSON_IsObject(it) || !cJSON_IsString(role)) {
            ret = srv_req_fail(e, pname, "'%s' must be an object with a string 'role'", pname);
            break;
        }
        m[i].role = role->valuestring;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(it, "tool_calls");
        bool assistant = !strcmp(role->valuestring, "assistant");
        if (!srv_req_absent(calls)) {
            if (!assistant || (ret = check_tool_calls(calls, i, e))) {
                if (!ret) ret = srv_req_fail(e, pname, "only an assistant message may carry 'tool_calls'");
                break;
            }
            if (cJSON_GetArraySize(calls) > 0) m[i].tool_calls = calls;
        }
        if (srv_req_absent(content) && !m[i].tool_calls) { /* as OpenAI: only a call may come without text */
            snprintf(pname, sizeof e->param_buf, "messages[%d].content", i);
            ret = srv_req_fail(e, pname, "'%s' is required (only an assistant message with 'tool_calls' may omit it)",
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
        ret = srv_req_fail(e, "messages", "this model has no chat template kvseek can render (supported: gemma, "
                   "chatml, llama3); start the server with --chat-template, or use /v1/completions");
    }
    if (ret == 0) ret = parse_tools(root, g, fmt, e);
    if (ret == 0) {
        char err[200];
        g->prompt = srv_chat_render(fmt, m, n, g->tool_mode ? g->tools : NULL, err, sizeof err);
        if (!g->prompt) ret = srv_req_fail(e, "messages", "%s", err);
        else g->prompt_len = strlen(g->prompt);
    }
    if (ret == 0 && g->tool_mode == TOOLS_FORCED) { /* the answer starts as the call's opener */
        const char *open = srv_chat_tool_open(fmt);
        char *np = realloc(g->prompt, g->prompt_len + strlen(open) + 1);
        if (!np) {
            ret = srv_req_fail(e, "messages", "out of memory");
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
    if (srv_req_absent(in)) in = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (srv_req_absent(in)) return srv_req_fail(e, "inputs", "'inputs' is required");
    if (!cJSON_IsString(in)) return srv_req_fail(e, "inputs", "'inputs' must be a string");
    if (set_prompt(g, in->valuestring, e)) return -1;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if (!srv_req_absent(params) && !cJSON_IsObject(params)) return srv_req_fail(e, "parameters", "'parameters' must be an object");
    /* a field is looked up in "parameters" first, then at the top level (the flat form) */
#define F(k) (!srv_req_absent(cJSON_GetObjectItemCaseSensitive(params, k)) ? cJSON_GetObjectItemCaseSensitive(params, k) \
                                                                   : cJSON_GetObjectItemCaseSensitive(root, k))
    double d = 0;
    long long ll = 0;
    int rc;
    bool do_sample = false, sampling = false;
    g->sp = sampling_none();
    if (srv_req_opt_bool(F("do_sample"), "do_sample", &do_sample, e) < 0) return -1;
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
        if (d <= 0) return srv_req_fail(e, "repetition_penalty", "'repetition_penalty' must be > 0");
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
    if (srv_req_opt_bool(F("details"), "details", &g->details, e) < 0) return -1;
    if (srv_req_opt_bool(F("return_full_text"), "return_full_text", &g->full_text, e) < 0) return -1;
    if (srv_req_opt_bool(F("ignore_eos"), "ignore_eos", &g->ignore_eos, e) < 0) return -1;
    if (srv_req_opt_bool(F("cache_prompt"), "cache_prompt", &g->cache_prompt, e) < 0) return -1;
    if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "stream"), "stream", &g->stream, e) < 0) return -1;
    if ((rc = opt_int(F("top_n_tokens"), "top_n_tokens", 0, ENG_MAX_TOP_LOGPROBS, &ll, e)) < 0) return -1;
    if (rc) g->top_n = (int)ll;
    if ((rc = opt_num(F("typical_p"), "typical_p", 0, 1, &d, e)) < 0) return -1;
    if (rc) {
        if (d <= 0 || d >= 1) return srv_req_fail(e, "typical_p", "'typical_p' must be > 0 and < 1");
        g->sp.typical_p = (float)d;
        sampling = true;
    }
    if ((rc = opt_int(F("truncate"), "truncate", 1, 1 << 30, &ll, e)) < 0) return -1;
    if (rc) g->truncate = ll;
    if (srv_req_opt_bool(F("decoder_input_details"), "decoder_input_details", &g->input_details, e) < 0) return -1;
    if (g->input_details && (g->stream || g->route == SRV_ROUTE_GENERATE_STREAM))
        return srv_req_fail(e, "decoder_input_details", "'decoder_input_details' is not supported when streaming tokens");
    bool wm = false;
    if (srv_req_opt_bool(F("watermark"), "watermark", &wm, e) < 0) return -1;
    if (wm) return srv_req_fail(e, "watermark", "'watermark' is not supported");
    if (!srv_req_absent(F("adapter_id"))) return srv_req_fail(e, "adapter_id", "'adapter_id' is not supported (no LoRA adapters)");
    if ((rc = opt_int(F("best_of"), "best_of", 1, 128, &ll, e)) < 0) return -1;
    if (rc && ll > 1) {
        if (g->stream || g->route == SRV_ROUTE_GENERATE_STREAM)
            return srv_req_fail(e, "best_of", "'best_of' > 1 cannot stream");
        if (g->seed_given) return srv_req_fail(e, "best_of", "'seed' must not be set when 'best_of' > 1");
        g->best_of = (int)ll; /* needs sampling: checked below */
    }
    if (parse_attention(F("attention"), g, e)) return -1;
    if (parse_context(F("context"), g, e)) return -1;
    const cJSON *gr = F("grammar");
    if (!srv_req_absent(gr)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(gr, "type");
        if (!cJSON_IsObject(gr) || !cJSON_IsString(type) ||
            (strcmp(type->valuestring, "json") && strcmp(type->valuestring, "regex") &&
             strcmp(type->valuestring, "json_object")))
            return srv_req_fail(e, "grammar", "'grammar' must be {\"type\": \"json\" | \"regex\", \"value\": ...}");
        if (parse_tgi_grammar(gr, "grammar", g, e)) return -1;
    }
#undef F
    g->logprobs = -1;
    /* TGI samples when asked to, or when a sampling parameter says so; else greedy */
    if (g->best_of > 1 && !do_sample && !sampling)
        return srv_req_fail(e, "best_of", "'best_of' > 1 needs sampling ('do_sample' or a sampling parameter)");
    if (!do_sample && !sampling) g->sp.temperature = 0.0f;
    else if (g->sp.temperature <= 0) g->sp.temperature = 1.0f;
    return 0;
}

/* A generating route's body (not NUL-terminated) parsed into g, whose route, max_tokens,
 * logprobs and attn the caller has set: 0, or -1 with e set (the 400 to answer). */
int srv_req_parse(const char *body, size_t len, srv_chat_fmt fmt, int n_vocab, gen_req *g, perr *e) {
    cJSON *root = cJSON_ParseWithLength(body ? body : "", len);
    if (!root) return srv_req_fail(e, NULL, "the body is not valid JSON");
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return srv_req_fail(e, NULL, "the body must be a JSON object");
    }
    int rc;
    if (g->route == SRV_ROUTE_GENERATE || g->route == SRV_ROUTE_GENERATE_STREAM) rc = parse_tgi(root, g, e);
    else if (g->route == SRV_ROUTE_COMPLETIONS) rc = parse_completions(root, g, n_vocab, e);
    else rc = srv_req_parse_chat(root, g, fmt, e);
    cJSON_Delete(root);
    if (g->route == SRV_ROUTE_GENERATE_STREAM) g->stream = true;
    for (int i = 0; rc == 0 && i < g->sp.n_bias; i++)
        if (g->sp.bias_id[i] >= n_vocab)
            rc = srv_req_fail(e, "logit_bias", "'logit_bias' token id %d is out of range [0, %d)", g->sp.bias_id[i], n_vocab);
    return rc;
}

int srv_parse_request(srv_route route, const char *body, size_t len, srv_chat_fmt fmt, int n_vocab, char *err,
                      size_t errlen) {
    gen_req g = {.route = route, .max_tokens = -1, .logprobs = -1, .cache_prompt = true, .attn = eng_attn_default(),
                 .n_choices = 1, .best_of = 1};
    perr e = {0};
    int rc = srv_req_parse(body, len, fmt, n_vocab, &g, &e);
    if (rc && err && errlen) snprintf(err, errlen, "%s%s%s", e.param ? e.param : "", e.param ? ": " : "", e.msg);
    srv_req_free(&g);
    return rc ? -1 : 0;
}
