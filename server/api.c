/* The endpoints: a generation request (parsed by request.c) tokenized in the HTTP thread,
 * submitted to the scheduler, and its token events turned into a JSON response or a
 * Server-Sent Events stream (TGI, OpenAI completions, OpenAI chat; n and best_of choices; tool
 * calls). Also /v1/models, /info, /tokenize and /detokenize. Errors name the field (OpenAI 400
 * with "param"; TGI 422). */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "request.h"

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

/* The attention trace of a choice: the mass per bucket summed over its tokens, and each token's
 * most-read buckets. */
#define TRACE_TOP 8
typedef struct {
    uint16_t bucket[TRACE_TOP];
    float mass[TRACE_TOP];
    int n;
} trace_rec;

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
                            * logprobs, on the top only (its request prefills the prompt), from
                            * its first event; NULL until then */
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
    /* the attention trace ("attention": {"trace": ...}): bucket sums and per-token tops */
    double *trace_sum;
    int trace_n, trace_bucket, trace_context, trace_tokens;
    trace_rec *trace_toks;
    int trace_cap;
};

static cJSON *attn_json(gen *G);

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
    if (G->top == G) srv_req_free(G->g);
    free(G->text);
    free(G->toks);
    free(G->prompt_lp);
    free(G->out);
    free(G->trace_sum);
    free(G->trace_toks);
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
    cJSON_AddItemToObject(d, "attention", attn_json(G));
    if (with_tokens) {
        cJSON *pre = cJSON_AddArrayToObject(d, "prefill");
        if (G->g->input_details) {
            /* every prompt token with its logprob given those before it (TGI: the first's null) */
            const eng_prompt_lp *lp = G->top->prompt_lp;
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
    const eng_prompt_lp *plp = G->top->prompt_lp;
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
        cJSON_AddItemToObject(o, "attention", attn_json(G));
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
/* One token's trace: summed into the choice's, its most-read buckets kept. */
static void trace_add(gen *G, const eng_event *ev) {
    if (!G->trace_sum) {
        if (!(G->trace_sum = calloc((size_t)ev->trace_n, sizeof(double)))) return;
        G->trace_n = ev->trace_n;
        G->trace_bucket = ev->trace_bucket;
        G->trace_context = ev->trace_context;
    }
    if (ev->trace_n != G->trace_n) return;
    if (G->trace_tokens == G->trace_cap) {
        int nc = G->trace_cap ? 2 * G->trace_cap : 64;
        trace_rec *nt = realloc(G->trace_toks, sizeof(trace_rec) * nc);
        if (!nt) return;
        G->trace_toks = nt;
        G->trace_cap = nc;
    }
    trace_rec *t = &G->trace_toks[G->trace_tokens++];
    t->n = 0;
    for (int b = 0; b < ev->trace_n; b++) {
        const float w = ev->trace[b];
        G->trace_sum[b] += w;
        if (w <= 0 || (t->n == TRACE_TOP && w <= t->mass[TRACE_TOP - 1])) continue;
        int j = t->n < TRACE_TOP ? t->n++ : TRACE_TOP - 1;
        while (j > 0 && t->mass[j - 1] < w) {
            t->mass[j] = t->mass[j - 1];
            t->bucket[j] = t->bucket[j - 1];
            j--;
        }
        t->mass[j] = w;
        t->bucket[j] = (uint16_t)b;
    }
}

/* Rounded for the wire: a trace is for looking at, and 4 digits keep it small. */
static double round4(double x) { return round(x * 1e4) / 1e4; }

/* The response's "attention" object, with the trace when the request asked for one. */
static cJSON *attn_json(gen *G) {
    cJSON *a = srv_attn_json(G->fin.selector, &G->fin.attn);
    if (!G->g->trace_buckets) return a;
    cJSON *t = cJSON_AddObjectToObject(a, "trace");
    const eng_hparams *hp = eng_model_hparams(G->s->model);
    int layers = 0;
    for (int l = 0; l < hp->n_layer; l++) layers += !eng_layer_is_local(G->s->model, l);
    cJSON_AddNumberToObject(t, "bucket_tokens", G->trace_bucket);
    cJSON_AddNumberToObject(t, "n_buckets", G->trace_n);
    cJSON_AddNumberToObject(t, "context_tokens", G->trace_context);
    cJSON_AddNumberToObject(t, "prompt_tokens", G->fin.n_prompt);
    cJSON_AddNumberToObject(t, "layers", layers);
    cJSON_AddNumberToObject(t, "heads", hp->n_head);
    cJSON *mass = cJSON_AddArrayToObject(t, "mass");
    for (int b = 0; b < G->trace_n; b++)
        cJSON_AddItemToArray(mass, cJSON_CreateNumber(G->trace_tokens ? round4(G->trace_sum[b] / G->trace_tokens) : 0));
    cJSON *toks = cJSON_AddArrayToObject(t, "tokens");
    for (int i = 0; i < G->trace_tokens; i++) {
        cJSON *row = cJSON_CreateArray();
        for (int k = 0; k < G->trace_toks[i].n; k++) {
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(G->trace_toks[i].bucket[k]));
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(round4(G->trace_toks[i].mass[k])));
            cJSON_AddItemToArray(row, pair);
        }
        cJSON_AddItemToArray(toks, row);
    }
    return a;
}

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
        if (ev->prompt_lp && !G->top->prompt_lp) {
            G->top->prompt_lp = ev->prompt_lp; /* taken from the event */
            ev->prompt_lp = NULL;
        }
        if (ev->trace && ev->trace_n > 0) trace_add(G, ev);
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
    cJSON_AddItemToObject(o, "attention", attn_json(T));
    return srv_respond_json(c, 200, o);
}

/* Tokenizes the request's prompt text into g->ids. */
static int tokenize(srv *s, gen_req *g, perr *e) {
    if (g->ids) return 0;
    int64_t cap = (int64_t)g->prompt_len + 16;
    g->ids = malloc(sizeof(int32_t) * cap);
    if (!g->ids) return srv_req_fail(e, g->prompt_param, "out of memory");
    const bool bos = !g->context[0]; /* a prompt after a context continues it */
    int64_t n = tok_encode(s->vocab, g->prompt, g->prompt_len, bos, true, g->ids, cap);
    if (n > cap) {
        int32_t *ni = realloc(g->ids, sizeof(int32_t) * n);
        if (!ni) return srv_req_fail(e, g->prompt_param, "out of memory");
        g->ids = ni;
        n = tok_encode(s->vocab, g->prompt, g->prompt_len, bos, true, g->ids, n);
    }
    if (n < 0) return srv_req_fail(e, g->prompt_param, "cannot tokenize the prompt: %s", tok_strerror(n));
    if (n > INT32_MAX / 2) return srv_req_fail(e, g->prompt_param, "the prompt is too long");
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
    int rc = srv_req_parse(c->body, c->body_len, s->chat_fmt, n_vocab, G->g, &e);
    if (rc == 0 && c->ctx_id[0]) { /* the routable forms: /v1/contexts/{id}/..., X-Kvseek-Context */
        if (G->g->context[0] && strcmp(G->g->context, c->ctx_id))
            rc = srv_req_fail(&e, "context", "'context' differs from the context of the URL or X-Kvseek-Context header");
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
        .trace_buckets = g->trace_buckets,
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
    /* kvseek's: what a request's "attention" may name, and what it gets without one */
    cJSON *sel = cJSON_AddArrayToObject(o, "attention_selectors");
    for (idx_kind k = IDX_DENSE; k < IDX_KIND_COUNT; k++) cJSON_AddItemToArray(sel, cJSON_CreateString(idx_kind_name(k)));
    cJSON_AddItemToArray(sel, cJSON_CreateString("auto"));
    const eng_attn_params ran = eng_attn_resolve(s->model, &s->cfg.attn);
    cJSON_AddStringToObject(o, "default_attention", idx_kind_name(ran.selector));
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
    if (!srv_req_absent(cJSON_GetObjectItemCaseSensitive(root, "messages"))) {
        if (srv_req_parse_chat(root, &chat, s->chat_fmt, &e) == 0 && !(rendered = cJSON_CreateString(chat.prompt)))
            srv_req_fail(&e, "messages", "out of memory");
        srv_req_free(&chat);
        if (e.msg[0]) {
            cJSON_Delete(root);
            return srv_respond_error(c, 400, NULL, e.param, "%s", e.msg);
        }
    }
    const cJSON *t = rendered ? rendered : cJSON_GetObjectItemCaseSensitive(root, "content");
    const char *pname = "content";
    if (srv_req_absent(t)) {
        t = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        pname = "prompt";
    }
    bool add_special = true, parse_special = true, pieces = false;
    if (srv_req_absent(t) || !cJSON_IsString(t)) {
        srv_req_fail(&e, pname, "'content' (or 'prompt') must be a string");
    } else if (srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "add_special"), "add_special", &add_special, &e) < 0 ||
               srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "add_special_tokens"), "add_special_tokens", &add_special, &e) < 0 ||
               srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "parse_special"), "parse_special", &parse_special, &e) < 0 ||
               srv_req_opt_bool(cJSON_GetObjectItemCaseSensitive(root, "with_pieces"), "with_pieces", &pieces, &e) < 0) {
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
