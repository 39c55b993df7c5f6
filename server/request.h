/* Generation requests: a TGI, OpenAI completions or OpenAI chat body parsed and validated into a
 * typed gen_req (prompt or ids, sampling, stops, tools, grammar, attention) that api.c tokenizes
 * and submits. Private to server/. Validation follows the APIs: unknown fields are ignored, wrong
 * types and out-of-range values are errors naming the field; null means "default". */
#ifndef KVSEEK_SRV_REQUEST_H
#define KVSEEK_SRV_REQUEST_H

#include <stdbool.h>

#include "grammar.h"
#include "srv.h"

#define MAX_CHOICES 16 /* n and best_of */

/* A validation error: the message and the field it names (param may point into param_buf). */
typedef struct {
    const char *param;
    char msg[400];
    char param_buf[64];    /* a param name built at run time (e->param may point here) */
} perr;

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
    int trace_buckets;     /* "attention": {"trace": true | N}: buckets of the attention trace
                            * (0: none) */
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

/* Fills e and returns -1. */
int srv_req_fail(perr *e, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A field that is missing or null (null means the default). */
bool srv_req_absent(const cJSON *it);
/* An optional boolean field: 1 and *out set, 0 when absent, -1 (e set) on a wrong type. */
int srv_req_opt_bool(const cJSON *it, const char *name, bool *out, perr *e);
/* A chat body's messages (and tools) rendered in fmt into g->prompt. 0, or -1 with e set. */
int srv_req_parse_chat(const cJSON *root, gen_req *g, srv_chat_fmt fmt, perr *e);
/* A generating route's body (not NUL-terminated) parsed into g, whose route, max_tokens,
 * logprobs and attn the caller has set: 0, or -1 with e set (the 400 to answer). */
int srv_req_parse(const char *body, size_t len, srv_chat_fmt fmt, int n_vocab, gen_req *g, perr *e);
/* Frees what g owns (not g). */
void srv_req_free(gen_req *g);

#endif
