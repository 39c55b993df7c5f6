/* `kvseek serve`: the libmicrohttpd glue. Starts listening before the model loads (so /health
 * answers 503 while it does), routes requests, checks the method, the API key and the body
 * limit, hands the rest to api.c, and shuts down cleanly on SIGTERM/SIGINT.
 *
 * Threading: MHD runs one thread per connection. A handler may then block — tokenizing a long
 * prompt, waiting for the scheduler's tokens, or writing a stream from a content-reader
 * callback that waits on the request's channel — without holding up any other client, and the
 * code stays sequential. The cost, a thread (mostly idle stack) per open connection, is bounded
 * by connection_limit; an LLM server's concurrency is that of its sequences, tens to hundreds,
 * not tens of thousands. While waiting, handlers poll the socket for the peer's close, so a
 * client that goes away cancels its generation at the next step rather than at the next write.
 *
 * Shutdown: signals are blocked in every thread and the main thread waits for them (sigwait),
 * so no handler code runs in signal context. SIGTERM/SIGINT: stop accepting (MHD_quiesce), answer
 * 503 to requests on open keep-alive connections, let in-flight requests finish for
 * shutdown_timeout_s, cancel what is left, stop the daemon, free the engine, exit 0. A second
 * signal cuts the grace short. */

#include <errno.h>
#include <netdb.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srv.h"

/* ---- routing ---- */

static const struct {
    const char *path;
    const char *method; /* GET routes also take HEAD */
    srv_route route;
    srv_shape shape;
    bool open;          /* no API key needed */
} routes[] = {
    {"/health", "GET", SRV_ROUTE_HEALTH, SRV_SHAPE_OPENAI, true},
    {"/metrics", "GET", SRV_ROUTE_METRICS, SRV_SHAPE_OPENAI, true},
    {"/v1/models", "GET", SRV_ROUTE_MODELS, SRV_SHAPE_OPENAI, false},
    {"/tokenize", "POST", SRV_ROUTE_TOKENIZE, SRV_SHAPE_OPENAI, false},
    {"/detokenize", "POST", SRV_ROUTE_DETOKENIZE, SRV_SHAPE_OPENAI, false},
    {"/generate", "POST", SRV_ROUTE_GENERATE, SRV_SHAPE_TGI, false},
    {"/generate_stream", "POST", SRV_ROUTE_GENERATE_STREAM, SRV_SHAPE_TGI, false},
    {"/v1/completions", "POST", SRV_ROUTE_COMPLETIONS, SRV_SHAPE_OPENAI, false},
    {"/v1/chat/completions", "POST", SRV_ROUTE_CHAT, SRV_SHAPE_OPENAI, false},
    /* TGI's clients (huggingface_hub, text-generation) POST to the root URL: /generate, which
     * streams when the body says "stream": true, as TGI's compat route does */
    {"/", "POST", SRV_ROUTE_GENERATE, SRV_SHAPE_TGI, false},
    /* the web UI (ui.c): open, so that a browser loads it; the API calls it makes carry the key */
    {"/", "GET", SRV_ROUTE_UI, SRV_SHAPE_OPENAI, true},
    {"/info", "GET", SRV_ROUTE_INFO, SRV_SHAPE_TGI, false},
};

/* Constant-time in the key's length: every byte is compared whatever the first mismatch. */
static bool key_matches(const char *given, size_t glen, const char *key) {
    size_t klen = strlen(key);
    unsigned diff = glen != klen;
    for (size_t i = 0; i < klen; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < glen ? given[i] : 0);
    return diff == 0;
}

static bool authorized(srv *s, struct MHD_Connection *conn) {
    if (!s->cfg.api_key[0]) return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return false;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h);
    while (n && h[n - 1] == ' ') n--;
    return key_matches(h, n, s->cfg.api_key);
}

static void set_early(srv_conn *c, int status, const char *code, const char *msg) {
    if (c->early_status) return;
    c->early_status = status;
    c->early_code = code;
    c->early_msg = msg;
}

static enum MHD_Result respond_health(srv_conn *c) {
    int st = atomic_load(&c->s->state);
    /* a failed device serves nothing more: a load balancer should take the replica out */
    const char *failed = st == SRV_READY && c->s->model ? eng_model_failed(c->s->model) : NULL;
    const char *txt = failed ? "device failed" : st == SRV_READY ? "ok" : st == SRV_LOADING ? "loading" : "shutting down";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", txt);
    if (failed) cJSON_AddStringToObject(o, "error", failed);
    return srv_respond_json(c, st == SRV_READY && !failed ? 200 : 503, o);
}

static enum MHD_Result respond_metrics(srv_conn *c) {
    srv *s = c->s;
    eng_sched_stats st;
    bool ready = atomic_load(&s->state) == SRV_READY;
    if (s->sched) eng_sched_get_stats(s->sched, &st);
    char *txt = srv_metrics_render(s->metrics, s->sched ? &st : NULL, ready);
    if (!txt) return MHD_NO;
    return srv_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", txt, strlen(txt));
}

static enum MHD_Result dispatch(srv_conn *c) {
    srv *s = c->s;
    if (c->early_status == 204) return srv_respond_preflight(c);
    if (c->early_status)
        return srv_respond_error(c, c->early_status, c->early_code, NULL, "%s", c->early_msg);
    if (c->route == SRV_ROUTE_HEALTH) return respond_health(c);
    if (c->route == SRV_ROUTE_METRICS) return respond_metrics(c);
    /* served while the model loads too: the page shows the server's state */
    if (c->route == SRV_ROUTE_UI) return srv_ui_respond(c);
    int st = atomic_load(&s->state);
    if (st == SRV_LOADING) return srv_respond_error(c, 503, NULL, NULL, "the model is still loading");
    if (st == SRV_DRAINING) return srv_respond_error(c, 503, NULL, NULL, "the server is shutting down");
    switch (c->route) {
    case SRV_ROUTE_MODELS: return srv_api_models(c);
    case SRV_ROUTE_INFO: return srv_api_info(c);
    case SRV_ROUTE_TOKENIZE: return srv_api_tokenize(c);
    case SRV_ROUTE_DETOKENIZE: return srv_api_detokenize(c);
    case SRV_ROUTE_CONTEXTS: return srv_api_contexts(c, c->method, c->ctx_id[0] ? c->ctx_id : NULL);
    default: return srv_api_generate(c);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    srv *s = cls;
    srv_conn *c = *con_cls;
    if (!c) {
        if (!(c = calloc(1, sizeof *c))) return MHD_NO;
        c->s = s;
        c->conn = conn;
        c->t_start = krn_now_s() * 1e3;
        c->route = SRV_ROUTE_OTHER;
        *con_cls = c;
        atomic_fetch_add(&s->inflight, 1);
        /* a path may have a route per method (/: TGI's compat route on POST, the web UI on GET);
         * another method gets 405 */
        int found = -1;
        bool head = !strcmp(method, "HEAD");
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
            if (!strcmp(url, routes[i].path) &&
                (found < 0 || !strcmp(method, routes[i].method) || (head && !strcmp(routes[i].method, "GET"))))
                found = (int)i;
        /* the routable forms of a request on a context: the id in the URL, so that a proxy can
         * hash on it without reading the body */
        static const struct { const char *suffix; srv_route route; srv_shape shape; } on_ctx[] = {
            {"/completions", SRV_ROUTE_COMPLETIONS, SRV_SHAPE_OPENAI},
            {"/chat/completions", SRV_ROUTE_CHAT, SRV_SHAPE_OPENAI},
            {"/generate", SRV_ROUTE_GENERATE, SRV_SHAPE_TGI},
            {"/generate_stream", SRV_ROUTE_GENERATE_STREAM, SRV_SHAPE_TGI},
        };
        if (found < 0 && !strncmp(url, "/v1/contexts/", 13)) {
            const char *id = url + 13, *slash = strchr(id, '/');
            for (size_t i = 0; slash && i < sizeof on_ctx / sizeof on_ctx[0]; i++) {
                if (strcmp(slash, on_ctx[i].suffix) || (size_t)(slash - id) >= sizeof c->ctx_id) continue;
                for (size_t k = 0; k < sizeof routes / sizeof routes[0]; k++)
                    if (routes[k].route == on_ctx[i].route) found = (int)k;
                memcpy(c->ctx_id, id, slash - id);
                c->ctx_id[slash - id] = 0;
            }
        }
        if (found >= 0 && !c->ctx_id[0] && routes[found].route >= SRV_ROUTE_GENERATE &&
            routes[found].route <= SRV_ROUTE_CHAT) {
            const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Kvseek-Context");
            if (h && strlen(h) < sizeof c->ctx_id) snprintf(c->ctx_id, sizeof c->ctx_id, "%s", h);
            else if (h) {
                set_early(c, 400, NULL, "X-Kvseek-Context is not a context id");
                c->route = routes[found].route;
                c->shape = routes[found].shape;
                return MHD_YES;
            }
        }
        if (found < 0 && !strncmp(url, "/v1/contexts", 12) && (!url[12] || url[12] == '/')) {
            /* a collection (GET, POST) and its items (GET, DELETE): methods checked here */
            const char *id = url[12] ? url + 13 : "";
            c->route = SRV_ROUTE_CONTEXTS;
            c->shape = SRV_SHAPE_OPENAI;
            snprintf(c->method, sizeof c->method, "%s", strlen(method) < sizeof c->method ? method : "?");
            if (strlen(id) >= sizeof c->ctx_id || strchr(id, '/')) {
                set_early(c, 404, NULL, "no such context");
                return MHD_YES;
            }
            snprintf(c->ctx_id, sizeof c->ctx_id, "%s", id);
            bool item = id[0] != 0, is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
            if (!strcmp(method, "OPTIONS")) set_early(c, 204, NULL, "");
            else if (!is_get && strcmp(method, item ? "DELETE" : "POST"))
                set_early(c, 405, NULL, item ? "this route takes GET or DELETE" : "this route takes GET or POST");
            else if (!authorized(s, conn))
                set_early(c, 401, NULL, "missing or invalid API key (send 'Authorization: Bearer KEY')");
            if (!strcmp(method, "HEAD")) snprintf(c->method, sizeof c->method, "GET");
            return MHD_YES;
        }
        if (found < 0) {
            set_early(c, 404, NULL, "unknown route (see the README's HTTP API section for the endpoints)");
            return MHD_YES;
        }
        c->route = routes[found].route;
        c->shape = routes[found].shape;
        c->tgi_root = !strcmp(url, "/") && c->route == SRV_ROUTE_GENERATE;
        bool get = !strcmp(routes[found].method, "GET");
        if (!strcmp(method, "OPTIONS")) {
            set_early(c, 204, NULL, "");
        } else if (strcmp(method, routes[found].method) && !(get && !strcmp(method, "HEAD"))) {
            set_early(c, 405, NULL, !strcmp(url, "/") ? "this route takes GET or POST" :
                                    get ? "this route takes GET" : "this route takes POST");
        } else if (!routes[found].open && !authorized(s, conn)) {
            set_early(c, 401, NULL, "missing or invalid API key (send 'Authorization: Bearer KEY')");
        } else {
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body_bytes) {
                set_early(c, 413, NULL, "request body too large");
                /* a client waiting for "100 Continue" gets the answer instead of sending the body */
                const char *ex = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
                if (ex && !strcasecmp(ex, "100-continue")) {
                    c->processed = true;
                    return dispatch(c);
                }
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        c->body_seen += n;
        /* a client that trickles its body (a byte per second keeps the idle timeout from firing)
         * is cut off once the whole request has taken longer than request_timeout_s */
        if (krn_now_s() * 1e3 - c->t_start > s->cfg.request_timeout_s * 1e3) return MHD_NO;
        if (c->processed || c->early_status) return MHD_YES; /* drained, not kept */
        if (c->body_len + n > s->cfg.max_body_bytes) {
            set_early(c, 413, NULL, "request body too large");
            free(c->body);
            c->body = NULL;
            c->body_len = c->body_cap = 0;
            return MHD_YES;
        }
        if (c->body_len + n + 1 > c->body_cap) {
            size_t nc = 2 * (c->body_len + n + 1);
            if (nc > s->cfg.max_body_bytes + 1) nc = s->cfg.max_body_bytes + 1;
            char *nb = realloc(c->body, nc);
            if (!nb) {
                set_early(c, 413, NULL, "request body too large for the memory available");
                return MHD_YES;
            }
            c->body = nb;
            c->body_cap = nc;
        }
        memcpy(c->body + c->body_len, upload, n);
        c->body_len += n;
        c->body[c->body_len] = 0;
        return MHD_YES;
    }
    if (c->processed) return MHD_YES;
    c->processed = true;
    return dispatch(c);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    srv *s = cls;
    srv_conn *c = *con_cls;
    if (!c) return;
    if (c->status) srv_metrics_request(s->metrics, c->route, c->status);
    free(c->body);
    free(c);
    *con_cls = NULL;
    atomic_fetch_sub(&s->inflight, 1);
}

/* ---- serve ---- */

static int chat_template_setup(srv *s) {
    const char *src = s->cfg.chat_template;
    size_t len = strlen(src);
    if (len) {
        s->chat_fmt = srv_chat_detect(src, len);
        snprintf(s->chat_source, sizeof s->chat_source, "--chat-template");
        if (s->chat_fmt == SRV_CHAT_NONE) {
            fprintf(stderr, "error: --chat-template: not a format kvseek can render (gemma, chatml, "
                    "llama3, or a Jinja template with their markers)\n");
            return -1;
        }
        return 0;
    }
    const char *jinja;
    uint64_t jlen;
    if (gguf_get_str(eng_model_gguf(s->model), "tokenizer.chat_template", &jinja, &jlen)) {
        s->chat_fmt = srv_chat_detect(jinja, (size_t)jlen);
        snprintf(s->chat_source, sizeof s->chat_source, "tokenizer.chat_template");
        if (s->chat_fmt == SRV_CHAT_NONE)
            fprintf(stderr, "kvseek: warning: the model's chat template is none that kvseek can render "
                    "(gemma, chatml, llama3); /v1/chat/completions will answer 400 (--chat-template "
                    "chooses one)\n");
        return 0;
    }
    /* No template in the file. An architecture whose vocabulary has its format's turn markers
     * has one format only; say so in the log rather than guess silently. */
    const eng_hparams *hp = eng_model_hparams(s->model);
    const tok_vocab *v = s->vocab;
    if (hp->arch == ENG_ARCH_GEMMA3 && tok_find(v, "<start_of_turn>", 15) >= 0)
        s->chat_fmt = SRV_CHAT_GEMMA;
    else if (hp->arch == ENG_ARCH_QWEN2 && tok_find(v, "<|im_start|>", 12) >= 0)
        s->chat_fmt = SRV_CHAT_CHATML;
    else if (hp->arch == ENG_ARCH_LLAMA && tok_find(v, "<|start_header_id|>", 19) >= 0)
        s->chat_fmt = SRV_CHAT_LLAMA3;
    snprintf(s->chat_source, sizeof s->chat_source, "%s", s->chat_fmt ? "architecture and vocabulary" : "none");
    if (s->chat_fmt)
        fprintf(stderr, "kvseek: the model has no tokenizer.chat_template; using the %s format its "
                "architecture (%s) and turn tokens imply\n", srv_chat_name(s->chat_fmt), hp->arch_name);
    else
        fprintf(stderr, "kvseek: warning: the model has no chat template; /v1/chat/completions will "
                "answer 400 (--chat-template chooses one)\n");
    return 0;
}

static struct MHD_Daemon *start_daemon(srv *s, char *err, size_t errlen) {
    char port[16];
    snprintf(port, sizeof port, "%d", s->cfg.port);
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gai = getaddrinfo(s->cfg.host, port, &hints, &ai);
    if (gai) {
        snprintf(err, errlen, "cannot resolve host '%s': %s", s->cfg.host, gai_strerror(gai));
        return NULL;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.connection_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg.timeout_s,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 256u,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) snprintf(err, errlen, "cannot listen on %s:%d (in use, or not an address of this machine)",
                     s->cfg.host, s->cfg.port);
    return d;
}

/* Waits until no request is in flight, or deadline (krn_now_s), or a signal arrives. Returns
 * true when the requests finished. */
static bool wait_idle(srv *s, double deadline, const sigset_t *sigs) {
    while (atomic_load(&s->inflight) > 0) {
        double left = deadline - krn_now_s();
        if (left <= 0) return false;
        struct timespec ts = {0, (long)((left < 0.05 ? left : 0.05) * 1e9)};
        int sig = sigtimedwait(sigs, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "kvseek: second signal: cancelling in-flight requests now\n");
            return false;
        }
    }
    return true;
}

static void on_sigbus(int sig) {
    static const char msg[] = "kvseek: fatal: a mapped file (the model or a context) was truncated or became "
                              "unreadable under the server; restart it\n";
    if (write(2, msg, sizeof msg - 1) < 0) {}
    _exit(75 + 0 * sig);
}

int srv_serve_main(int argc, char **argv) {
    static srv s; /* lives until exit: MHD threads refer to it */
    char err[512];
    int rc = srv_config_load(argc, argv, &s.cfg, err, sizeof err);
    if (rc == 1) return 0;
    if (rc) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    srv_config_log(&s.cfg, stderr);
    s.created = (long long)time(NULL);
    atomic_store(&s.state, SRV_LOADING);
    if (!(s.metrics = srv_metrics_create())) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    /* every thread started from here on inherits the blocked signals; the main thread takes them */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* a full disk or a file size limit while persisting a context: write() fails with EFBIG and
     * the build reports it, instead of the signal killing the server */
    signal(SIGXFSZ, SIG_IGN);
    /* the model and the contexts are mapped files: if one is truncated in place under the
     * server (`cp` over the model, say; `mv` is safe: the mapping keeps the old file), reading
     * it raises SIGBUS. Say what happened in one line and exit with a status a supervisor
     * restarts on, rather than dump core. */
    struct sigaction sb;
    memset(&sb, 0, sizeof sb);
    sb.sa_handler = on_sigbus;
    sigaction(SIGBUS, &sb, NULL);

    s.daemon = start_daemon(&s, err, sizeof err);
    if (!s.daemon) {
        fprintf(stderr, "error: %s\n", err);
        srv_metrics_free(s.metrics);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s.daemon, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : s.cfg.port;
    fprintf(stderr, "kvseek: listening on http://%s%s%s:%d\n", strchr(s.cfg.host, ':') ? "[" : "",
            s.cfg.host, strchr(s.cfg.host, ':') ? "]" : "", port);

    double t0 = krn_now_s();
    eng_model_params mp = {.n_threads = s.cfg.threads, .attn = s.cfg.attn,
                           .device = strcmp(s.cfg.device, "cuda") ? ENG_DEVICE_CPU : ENG_DEVICE_CUDA,
                           .gpu_mem_gb = s.cfg.gpu_mem_gb};
    s.model = eng_model_load(s.cfg.model, &mp, err, sizeof err);
    if (!s.model) {
        fprintf(stderr, "error: %s\n", err);
        MHD_stop_daemon(s.daemon);
        srv_metrics_free(s.metrics);
        return 1;
    }
    s.vocab = eng_model_vocab(s.model);
    const eng_hparams *hp = eng_model_hparams(s.model);
    s.n_ctx = s.cfg.ctx_size;
    if (s.n_ctx == 0) s.n_ctx = hp->n_ctx_train > 0 ? hp->n_ctx_train : 4096;
    if (s.cfg.kv_cache_gb <= 0) {
        /* half the machine: the weights, the OS and the page cache keep the rest */
        const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
        s.cfg.kv_cache_gb = ram > 0 ? ram / 2 / (1 << 30) : 4.0;
    }
    if (hp->n_ctx_train > 0 && s.n_ctx > hp->n_ctx_train)
        fprintf(stderr, "kvseek: warning: ctx-size %d exceeds the model's training context %d\n",
                s.n_ctx, hp->n_ctx_train);
    int exit_code = 0;
    MHD_socket lsock = MHD_INVALID_SOCKET;
    if (chat_template_setup(&s)) {
        exit_code = 2;
        goto out;
    }
    eng_sched_params sp = {.n_parallel = s.cfg.parallel, .n_ctx = s.n_ctx, .queue_cap = s.cfg.queue_size,
                           .batch_rows = s.cfg.batch_size, .n_threads = s.cfg.threads,
                           .ctx_max_tokens = s.cfg.data_dir[0] ? s.cfg.context_max_tokens : 0,
                           .mem_budget = (size_t)(s.cfg.kv_cache_gb * (double)(1 << 30)),
                           .prefix_cache = s.cfg.prefix_cache, .prefix_dir = s.cfg.prefix_cache_dir,
                           .prefix_disk_budget = (size_t)(s.cfg.prefix_cache_disk_gb * (double)(1 << 30))};
    if (eng_sched_create(s.model, &sp, &s.sched, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        exit_code = 1;
        goto out;
    }
    if (s.cfg.data_dir[0] && !(s.contexts = srv_ctx_open(&s, err, sizeof err)))
        fprintf(stderr, "kvseek: warning: contexts unavailable: %s\n", err);
    fprintf(stderr, "kvseek: model %s (%s, vocab %d) ready in %.0f ms; %d sequences x %d tokens, "
            "KV memory %.1f GiB, prefix cache %s, chat template %s (%s), %d threads\n", s.cfg.model_alias,
            hp->arch_name, hp->n_vocab, (krn_now_s() - t0) * 1e3, s.cfg.parallel, s.n_ctx, s.cfg.kv_cache_gb,
            s.cfg.prefix_cache ? "on" : "off", srv_chat_name(s.chat_fmt), s.chat_source,
            s.cfg.threads > 0 ? s.cfg.threads : omp_get_max_threads());
    atomic_store(&s.state, SRV_READY);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0 || (sig != SIGINT && sig != SIGTERM)) {}
    fprintf(stderr, "kvseek: %s: no new connections; %d request(s) in flight get %.0f s to finish\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", atomic_load(&s.inflight), s.cfg.shutdown_timeout_s);
    atomic_store(&s.state, SRV_DRAINING);
    lsock = MHD_quiesce_daemon(s.daemon);
    /* refuse new connections now rather than leave them in the backlog until exit (the socket
     * itself may only be closed after MHD_stop_daemon) */
    if (lsock != MHD_INVALID_SOCKET) shutdown(lsock, SHUT_RDWR);
    if (!wait_idle(&s, krn_now_s() + s.cfg.shutdown_timeout_s, &sigs)) {
        fprintf(stderr, "kvseek: cancelling %d request(s)\n", atomic_load(&s.inflight));
        eng_sched_cancel_all(s.sched);
        wait_idle(&s, krn_now_s() + 5, &sigs);
    }
out:
    if (s.sched) eng_sched_cancel_all(s.sched);
    MHD_stop_daemon(s.daemon);
    if (lsock != MHD_INVALID_SOCKET) close(lsock);
    eng_sched_free(s.sched);
    srv_ctx_close(s.contexts); /* after the scheduler: builders have their last event */
    eng_model_free(s.model);
    srv_metrics_free(s.metrics);
    fprintf(stderr, "kvseek: stopped\n");
    return exit_code;
}
