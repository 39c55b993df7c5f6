/* Internal header of the HTTP server (every server/ file): configuration, chat templates,
 * metrics, the connection state shared by the MHD glue (http.c) and the endpoint handlers (api.c,
 * contexts.c), and the responses both send (respond.c). cJSON and libmicrohttpd stay inside
 * server/. */
#ifndef KVSEEK_SRV_H
#define KVSEEK_SRV_H

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clock.h"
#include "context.h"
#include "model.h"
#include "scheduler.h"
#include "server.h"
#include "tok.h"

#define SRV_VERSION "0.1.0" /* as `kvseek --version` says */

/* ---- configuration (config.c) ---- */

typedef struct {
    char host[256];
    int port;               /* 0: any free port (the chosen one is logged) */
    char model[1024];
    char model_alias[256];  /* the model id in /v1/models and responses; default: file name */
    int ctx_size;           /* tokens per sequence; 0: the model's training context */
    double kv_cache_gb;     /* memory budget of KV caches, cached prompts and contexts; 0: half
                             * the machine's memory (resolved at start) */
    bool prefix_cache;      /* keep prompts' KV for requests that start with them */
    char prefix_cache_dir[1024]; /* evicted cached prompts spill here; empty: none */
    double prefix_cache_disk_gb; /* disk the spilled prompts may take */
    int parallel;           /* sequences decoded together */
    int threads;            /* 0: OpenMP default */
    char device[8];         /* "cpu" or "cuda" (the CPU when no GPU is usable) */
    double gpu_mem_gb;      /* GPU memory budget; 0: what is free */
    int queue_size;         /* requests waiting for a free sequence before 429 */
    int batch_size;         /* rows per forward pass (decode rows + prefill chunk) */
    size_t max_body_bytes;  /* request bodies past this get 413 */
    int connection_limit;   /* concurrent connections (one thread each) */
    int timeout_s;          /* idle connection timeout */
    int request_timeout_s;  /* a request (headers and body) must arrive within this */
    char cors_origin[256];  /* Access-Control-Allow-Origin to send; empty: no CORS */
    double shutdown_timeout_s; /* grace for in-flight requests on SIGTERM before they are cancelled */
    char api_key[256];      /* empty: no authentication */
    char chat_template[4096]; /* empty: from the model; else gemma|chatml|llama3 or a Jinja text */
    char config_path[1024]; /* the file read, or empty */
    eng_attn_params attn;   /* the default attention of requests, and the KV storage of all */
    char data_dir[1024];    /* registered contexts live here, one directory each */
    int context_max_tokens; /* the longest context that may be registered */
    int max_contexts;       /* registered at once */
    eng_ctx_params ctx_params; /* how contexts are clustered and calibrated */
} srv_config;

/* Applies a JSON attention object ({"selector": "retrieval", "top_k": 100, ...}) or a selector
 * name (a string) to *a through the typed setters (eng_attn_set_num, eng_attn_set_bool; names
 * through eng_attn_set). storage_ok: whether page_size / kv_f16 / kv_mem_gb may be set (the
 * config file) or are refused (a request). 0, or -1 with a reason and
 * the offending key (a static string or one in `it`) in *key. */
int srv_attn_from_json(const cJSON *it, eng_attn_params *a, bool storage_ok, char *err, size_t errlen,
                       const char **key);

/* Fills c from defaults, then the JSON file (-c FILE, or configs/server.json when present), then
 * the command line (argv[2..]). Returns 0; 1 when --help was asked (usage printed); -1 with a
 * one-line reason in err. */
int srv_config_load(int argc, char **argv, srv_config *c, char *err, size_t errlen);
void srv_config_usage(FILE *f);
/* One JSON line with the effective configuration (the API key masked). */
void srv_config_log(const srv_config *c, FILE *f);

/* ---- chat templates (chat.c) ---- */

/* SRV_CHAT_QWEN2: chatml as Qwen2.5's template writes it (a default system message, its tool
 * format); SRV_CHAT_CHATML: plain chatml, tools in Qwen's way */
typedef enum { SRV_CHAT_NONE = 0, SRV_CHAT_GEMMA, SRV_CHAT_CHATML, SRV_CHAT_LLAMA3, SRV_CHAT_QWEN2 } srv_chat_fmt;
const char *srv_chat_name(srv_chat_fmt f);
/* A format by name ("gemma", "chatml", "llama3"), else by recognising a Jinja template's
 * markers; SRV_CHAT_NONE when neither. */
srv_chat_fmt srv_chat_detect(const char *name_or_jinja, size_t len);

typedef struct {
    const char *role;    /* system, developer, user, assistant, tool */
    char *content;       /* owned by the caller */
    const cJSON *tool_calls; /* an assistant's OpenAI tool_calls (validated: each has
                          * function.name and function.arguments strings), or NULL */
} srv_chat_msg;

/* Renders messages as a prompt ending with the assistant's turn opener. tools (an OpenAI tools
 * array, validated: each {"type": "function", "function": {"name", ...}}) or NULL is offered in
 * the model's own way: Qwen2.5's <tools> system block for chatml, Llama 3.1's function list in
 * the first user turn, and for Gemma, which has no tool format, the chatml convention as
 * instructions in its first user turn. Returns a malloc'd string (caller frees), or NULL with a
 * reason in err (a role the format cannot place). */
char *srv_chat_render(srv_chat_fmt f, const srv_chat_msg *msgs, int n, const cJSON *tools, char *err,
                      size_t errlen);
/* What opens a tool call in format f's answers ("<tool_call>\n"; "" for llama3, whose call is a
 * bare JSON object), and the key of its arguments ("arguments"; "parameters" for llama3). A
 * prompt that must call a tool ends with the opener, and the call's JSON is constrained. */
const char *srv_chat_tool_open(srv_chat_fmt f);
const char *srv_chat_tool_args_key(srv_chat_fmt f);
/* The tool calls in a generated answer: a cJSON array of {"name": string, "arguments": JSON
 * text string} (caller deletes), or NULL when the text holds none. *content_len: the length of
 * the text before the first call (the answer's content). forced: the text is the call's JSON
 * itself (the prompt ended with the opener). */
cJSON *srv_chat_parse_tool_calls(srv_chat_fmt f, const char *text, size_t len, bool forced, size_t *content_len);
/* JSON as Jinja's tojson writes it (", " and ": " separators), which is what models saw in
 * training; malloc'd. */
char *srv_json_spaced(const cJSON *j);

/* ---- metrics (metrics.c) ---- */

typedef enum {
    SRV_ROUTE_HEALTH, SRV_ROUTE_METRICS, SRV_ROUTE_MODELS, SRV_ROUTE_TOKENIZE, SRV_ROUTE_DETOKENIZE,
    SRV_ROUTE_GENERATE, SRV_ROUTE_GENERATE_STREAM, SRV_ROUTE_COMPLETIONS, SRV_ROUTE_CHAT,
    SRV_ROUTE_INFO, SRV_ROUTE_CONTEXTS, SRV_ROUTE_UI, SRV_ROUTE_OTHER, SRV_ROUTE_COUNT
} srv_route;

typedef struct srv_metrics srv_metrics;
srv_metrics *srv_metrics_create(void);
void srv_metrics_free(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, srv_route r, int status);
void srv_metrics_ttft(srv_metrics *m, double seconds);
void srv_metrics_itl(srv_metrics *m, double seconds);
void srv_metrics_e2e(srv_metrics *m, double seconds);
void srv_metrics_client_cancel(srv_metrics *m);
/* Prometheus text exposition; malloc'd (caller frees). st may be NULL while loading. */
char *srv_metrics_render(srv_metrics *m, const eng_sched_stats *st, bool ready);

/* ---- the server and its connections (http.c routes them) ---- */

enum { SRV_LOADING = 0, SRV_READY = 1, SRV_DRAINING = 2 };

typedef struct srv_ctx_reg srv_ctx_reg;

typedef struct {
    srv_config cfg;
    srv_ctx_reg *contexts;  /* NULL: contexts unavailable */
    eng_model *model;
    const tok_vocab *vocab;
    eng_sched *sched;
    srv_chat_fmt chat_fmt;
    char chat_source[64];   /* where the template came from, for the log and /v1/models */
    int n_ctx;
    atomic_int state;
    atomic_int inflight;    /* requests being handled (not idle keep-alive connections) */
    atomic_uint_fast64_t next_id;
    long long created;      /* unix time the server started */
    srv_metrics *metrics;
    struct MHD_Daemon *daemon;
} srv;

typedef enum { SRV_SHAPE_OPENAI, SRV_SHAPE_TGI } srv_shape;

/* One HTTP request, from its first call to the completed callback. */
typedef struct {
    srv *s;
    struct MHD_Connection *conn;
    srv_route route;
    srv_shape shape;
    char *body;
    size_t body_len, body_cap, body_seen;
    int early_status;       /* an error decided before the body was read (answered after it) */
    const char *early_code, *early_msg;
    int status;             /* the status sent, for the metrics */
    double t_start;         /* monotonic ms (krn_now_s() * 1e3) */
    bool processed;
    char method[8];         /* contexts: GET, POST or DELETE */
    char ctx_id[48];        /* contexts: the {id} of /v1/contexts/{id}, or empty */
    bool tgi_root;          /* POST /, TGI's compat route: a non-streamed answer is a one-element
                             * array, as TGI's (the text-generation client reads element 0) */
} srv_conn;

/* ---- responses and connection helpers (respond.c) ---- */

/* The client closed its side of the connection. */
bool srv_client_gone(struct MHD_Connection *conn);

/* Queue responses (each takes ownership of what it is given). */
enum MHD_Result srv_respond(srv_conn *c, int status, const char *content_type, char *body, size_t len);
enum MHD_Result srv_respond_json(srv_conn *c, int status, cJSON *obj);
/* The empty 204 that answers a CORS preflight (OPTIONS), with the allowed methods and headers
 * when cors_origin is set. */
enum MHD_Result srv_respond_preflight(srv_conn *c);
/* An error in the route's shape: OpenAI {"error":{message,type,param,code}} (type from the
 * status; code and param may be NULL) or TGI {"error","error_type"} (where a 400 becomes 422, as
 * TGI answers validation errors). 429 and 503 add Retry-After. */
enum MHD_Result srv_respond_error(srv_conn *c, int status, const char *code, const char *param,
                                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The error object of srv_respond_error, for a stream that already sent its headers. */
cJSON *srv_error_json(srv_shape shape, int status, const char *code, const char *param, const char *msg);
enum MHD_Result srv_respond_stream(srv_conn *c, MHD_ContentReaderCallback cb, void *cls,
                                   MHD_ContentReaderFreeCallback fcb);

/* ---- endpoints (api.c) ---- */

enum MHD_Result srv_api_models(srv_conn *c);
/* TGI's GET /info: the model, its limits and the server's version, as TGI names them. */
enum MHD_Result srv_api_info(srv_conn *c);
enum MHD_Result srv_api_tokenize(srv_conn *c);
enum MHD_Result srv_api_detokenize(srv_conn *c);
enum MHD_Result srv_api_generate(srv_conn *c); /* every generating route, by c->route */
/* The body of a generating route (TGI, OpenAI completions or chat; len bytes, not NUL-terminated)
 * parsed and validated into a typed request exactly as srv_api_generate does, then freed: no
 * tokenizing, no scheduler. fmt: the chat format; n_vocab bounds token-id prompts. 0, or -1 with
 * "param: message" of the 400 it would answer in err. For tests and fuzzing. */
int srv_parse_request(srv_route route, const char *body, size_t len, srv_chat_fmt fmt, int n_vocab,
                      char *err, size_t errlen);

/* ---- the web UI (ui.c) ---- */

/* GET /: server/ui/index.html, which the Makefile compiles into the binary ($(BUILD)/gen/ui_page.c) */
extern const unsigned char srv_ui_page[];
extern const size_t srv_ui_page_len;
enum MHD_Result srv_ui_respond(srv_conn *c);

/* ---- registered contexts (contexts.c) ---- */
/* Opens the registry over cfg.data_dir (created when missing): every persisted context that
 * loads for this model is served; leftovers of interrupted builds are removed. NULL + reason. */
srv_ctx_reg *srv_ctx_open(srv *s, char *err, size_t errlen);
/* Joins the builders (call after the scheduler has stopped) and frees the registry. */
void srv_ctx_close(srv_ctx_reg *r);
/* ctx_ + 16 lowercase hex digits: the only names that reach the file system. */
bool srv_ctx_id_valid(const char *id);
/* A reference to a ready context (the caller unrefs), or NULL with *status 404 (unknown),
 * 409 (still building) or 410 (its build failed). */
/* Bytes of the ready contexts' files (mapped; they count against the KV memory budget). */
size_t srv_ctx_bytes(srv_ctx_reg *r);
eng_ctx *srv_ctx_acquire(srv_ctx_reg *r, const char *id, int *status);
/* /v1/contexts (GET list, POST register) and /v1/contexts/{id} (GET, DELETE); id NULL for the
 * collection. */
enum MHD_Result srv_api_contexts(srv_conn *c, const char *method, const char *id);

#endif
