/* Server configuration: built-in defaults, then a JSON file (configs/server.json unless -c names
 * another), then command-line options; the effective result is logged as one JSON line. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "srv.h"

#define DEFAULT_CONFIG "configs/server.json"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void srv_config_usage(FILE *f) {
    fprintf(f,
        "usage: kvseek serve -m MODEL [options]\n\n"
        "  -m, --model FILE          GGUF model\n"
        "  -c, --config FILE         JSON configuration (default: " DEFAULT_CONFIG " when present);\n"
        "                            options given here override it\n"
        "  --host HOST               bind address (default 127.0.0.1)\n"
        "  --port N                  (default 8080; 0 = any free port, logged)\n"
        "  -np, --parallel N         sequences decoded together (default 8)\n"
        "  --ctx-size N              tokens per sequence, prompt + output (default: the model's\n"
        "                            training context)\n"
        "  --kv-cache-gb G           host memory for the KV caches of running requests, cached\n"
        "                            prompts and contexts together; requests wait for room (default:\n"
        "                            half the machine's memory)\n"
        "  --prefix-cache on|off     keep prompts' KV so that requests starting with them prefill\n"
        "                            only what is new (default on; per request: cache_prompt)\n"
        "  --prefix-cache-dir DIR    cached prompts evicted from memory spill here and survive a\n"
        "                            restart (default: none)\n"
        "  --prefix-cache-disk-gb G  disk the spilled prompts may take (default 10)\n"
        "  --batch-size N            rows per forward pass: decode rows, then prompt chunks (default 128)\n"
        "  --queue-size N            requests that may wait for a sequence before 429 (default 64)\n"
        "  --api-key KEY             require 'Authorization: Bearer KEY' (also $KVSEEK_API_KEY)\n"
        "  --alias NAME              model id reported by /v1/models (default: the file name)\n"
        "  --chat-template T         gemma | chatml | llama3 | a Jinja template to recognise\n"
        "                            (default: the model's tokenizer.chat_template)\n"
        "  --max-body BYTES          request body limit (default 8388608)\n"
        "  --connection-limit N      concurrent connections (default 256)\n"
        "  --timeout S               idle connection timeout in seconds (default 600)\n"
        "  --request-timeout S       a request's headers and body must arrive within S (default 60)\n"
        "  --cors-origin ORIGIN      send Access-Control-Allow-Origin: ORIGIN (default: no CORS)\n"
        "  --shutdown-timeout S      grace for in-flight requests on SIGTERM (default 10)\n"
        "  -t, --threads N           compute threads (default: OpenMP's)\n"
        "  --device cpu|cuda         where the forward pass runs (default cpu; cuda falls back to\n"
        "                            the CPU with a log line when no GPU is usable)\n"
        "  --gpu-mem-gb G            GPU memory budget for weights and buffers (default: all free)\n"
        "\nregistered contexts (POST /v1/contexts; Squeezed Attention):\n"
        "  --data-dir DIR            where contexts persist (default data/contexts; \"\" disables)\n"
        "  --context-max-tokens N    longest context that may be registered (default 131072)\n"
        "  --max-contexts N          contexts registered at once (default 64)\n"
        "\nattention (the default of requests; a request may choose its own, DESIGN.md):\n");
    eng_attn_usage(f, 28, "server-wide");
    fprintf(f, "  -h, --help                this help\n");
}

static void defaults(srv_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8080;
    c->ctx_size = 0; /* the model's training context */
    c->kv_cache_gb = 0; /* half the machine's memory */
    c->prefix_cache = true;
    c->prefix_cache_disk_gb = 10;
    c->parallel = 8;
    c->threads = 0;
    snprintf(c->device, sizeof c->device, "cpu");
    c->queue_size = 64;
    c->batch_size = 128;
    c->max_body_bytes = 8u << 20;
    c->connection_limit = 256;
    c->timeout_s = 600;
    c->request_timeout_s = 60;
    c->shutdown_timeout_s = 10.0;
    c->attn = eng_attn_default();
    snprintf(c->data_dir, sizeof c->data_dir, "data/contexts");
    c->context_max_tokens = 131072;
    c->max_contexts = 64;
    c->ctx_params = eng_ctx_params_default();
}

static int copy_str(char *dst, size_t cap, const char *src, const char *what, char *err, size_t errlen);

/* The "contexts" object of the config file. */
static int load_contexts(srv_config *c, const cJSON *o, const char *path, char *err, size_t errlen) {
    if (!cJSON_IsObject(o)) {
        set_err(err, errlen, "config %s: \"contexts\" must be an object", path);
        return -1;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        const char *k = it->string;
        double v = cJSON_GetNumberValue(it);
        bool num = cJSON_IsNumber(it);
        if (!strcmp(k, "data_dir")) {
            if (!cJSON_IsString(it) || copy_str(c->data_dir, sizeof c->data_dir, it->valuestring, "data_dir", err, errlen)) {
                if (!cJSON_IsString(it)) set_err(err, errlen, "config %s: contexts.data_dir must be a string", path);
                return -1;
            }
            continue;
        }
        struct { const char *key; int *dst; double lo, hi; } ints[] = {
            {"max_tokens", &c->context_max_tokens, 1, 1 << 24}, {"max_contexts", &c->max_contexts, 0, 1 << 20},
            {"obs_tokens", &c->ctx_params.obs_tokens, 1, 1 << 20}, {"sink", &c->ctx_params.n_sink, 0, 1 << 24},
            {"tail", &c->ctx_params.n_tail, 0, 1 << 24}, {"global_calib", &c->ctx_params.global_calib, 0, 1},
        };
        struct { const char *key; float *dst; double lo, hi; } flts[] = {
            {"fine_frac", &c->ctx_params.fine_frac, 1e-6, 1}, {"coarse_frac", &c->ctx_params.coarse_frac, 0, 1},
            {"target", &c->ctx_params.target, 1e-6, 1},
        };
        bool known = false;
        for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !known; i++) {
            if (strcmp(k, ints[i].key)) continue;
            known = true;
            if (cJSON_IsBool(it) && !strcmp(k, "global_calib")) { *ints[i].dst = cJSON_IsTrue(it); continue; }
            if (!num || v != (double)(long long)v || v < ints[i].lo || v > ints[i].hi) {
                set_err(err, errlen, "config %s: contexts.%s must be an integer in [%g, %g]", path, k, ints[i].lo, ints[i].hi);
                return -1;
            }
            *ints[i].dst = (int)v;
        }
        for (size_t i = 0; i < sizeof flts / sizeof flts[0] && !known; i++) {
            if (strcmp(k, flts[i].key)) continue;
            known = true;
            if (!num || v < flts[i].lo || v > flts[i].hi) {
                set_err(err, errlen, "config %s: contexts.%s must be a number in [%g, %g]", path, k, flts[i].lo, flts[i].hi);
                return -1;
            }
            *flts[i].dst = (float)v;
        }
        if (!known && k[0] != '_') fprintf(stderr, "kvseek: warning: config %s: unknown key \"contexts.%s\" ignored\n", path, k);
    }
    return 0;
}

int srv_attn_from_json(const cJSON *it, eng_attn_params *a, bool storage_ok, char *err, size_t errlen,
                       const char **key) {
    *key = "attention";
    if (cJSON_IsString(it)) return eng_attn_set(a, "selector", it->valuestring, err, errlen);
    if (!cJSON_IsObject(it)) {
        set_err(err, errlen, "'attention' must be a selector name or an object");
        return -1;
    }
    const cJSON *f;
    cJSON_ArrayForEach(f, it) {
        const eng_attn_opt *o = eng_attn_opt_find(f->string);
        *key = f->string;
        if (!storage_ok && o && o->storage) {
            set_err(err, errlen, "attention %s is the server's setting, not a request's", f->string);
            return -1;
        }
        int rc;
        if (cJSON_IsString(f)) rc = eng_attn_set(a, f->string, f->valuestring, err, errlen);
        else if (cJSON_IsBool(f)) rc = eng_attn_set_bool(a, f->string, cJSON_IsTrue(f), err, errlen);
        else if (cJSON_IsNumber(f)) rc = eng_attn_set_num(a, f->string, f->valuedouble, err, errlen);
        else {
            set_err(err, errlen, "attention %s must be a string, number or boolean", f->string);
            return -1;
        }
        if (rc) return -1;
    }
    return 0;
}

/* The attention options of a as a JSON object, every option in table order (the inverse of
 * srv_attn_from_json). */
static cJSON *attn_params_json(const eng_attn_params *a) {
    cJSON *o = cJSON_CreateObject();
    const eng_attn_opt *opt;
    for (int i = 0; (opt = eng_attn_opt_at(i)); i++) {
        eng_attn_value v = eng_attn_get(a, opt);
        if (opt->kind == ENG_ATTN_ENUM) cJSON_AddStringToObject(o, opt->name, v.name ? v.name : "");
        else if (opt->kind == ENG_ATTN_BOOL) cJSON_AddBoolToObject(o, opt->name, v.num != 0);
        else cJSON_AddNumberToObject(o, opt->name, v.num);
    }
    return o;
}

/* Integer option value in [lo, hi]. */
static int parse_ll(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int copy_str(char *dst, size_t cap, const char *src, const char *what, char *err, size_t errlen) {
    if (strlen(src) >= cap) {
        set_err(err, errlen, "%s is too long (at most %zu bytes)", what, cap - 1);
        return -1;
    }
    snprintf(dst, cap, "%s", src);
    return 0;
}

/* Applies the JSON file's keys. Unknown keys are reported on stderr, not fatal (the file may
 * carry settings of a newer version). */
static int load_file(srv_config *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "cannot open config %s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 > cap) {
            char *nb = realloc(buf, cap = 2 * cap + 4096);
            if (!nb) { free(buf); fclose(f); set_err(err, errlen, "out of memory"); return -1; }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    cJSON *root = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        set_err(err, errlen, "config %s is not a JSON object", path);
        return -1;
    }
    int rc = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const char *k = it->string;
        struct { const char *key; int *dst; long long lo, hi; } ints[] = {
            {"port", &c->port, 0, 65535}, {"ctx_size", &c->ctx_size, 0, 1 << 24},
            {"parallel", &c->parallel, 1, 1024}, {"threads", &c->threads, 0, 1024},
            {"queue_size", &c->queue_size, 0, 1 << 20}, {"batch_size", &c->batch_size, 1, 1 << 16},
            {"connection_limit", &c->connection_limit, 1, 1 << 16},
            {"timeout_s", &c->timeout_s, 1, 1 << 24},
            {"request_timeout_s", &c->request_timeout_s, 1, 1 << 24},
        };
        struct { const char *key; char *dst; size_t cap; } strs[] = {
            {"host", c->host, sizeof c->host}, {"model", c->model, sizeof c->model},
            {"model_alias", c->model_alias, sizeof c->model_alias},
            {"api_key", c->api_key, sizeof c->api_key},
            {"chat_template", c->chat_template, sizeof c->chat_template},
            {"cors_origin", c->cors_origin, sizeof c->cors_origin},
            {"device", c->device, sizeof c->device},
            {"prefix_cache_dir", c->prefix_cache_dir, sizeof c->prefix_cache_dir},
        };
        bool known = false;
        for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !known; i++) {
            if (strcmp(k, ints[i].key)) continue;
            known = true;
            double v = cJSON_GetNumberValue(it);
            if (!cJSON_IsNumber(it) || v != floor(v) || v < ints[i].lo || v > ints[i].hi) {
                set_err(err, errlen, "config %s: \"%s\" must be an integer in [%lld, %lld]", path,
                        k, ints[i].lo, ints[i].hi);
                rc = -1;
            } else {
                *ints[i].dst = (int)v;
            }
        }
        for (size_t i = 0; i < sizeof strs / sizeof strs[0] && !known; i++) {
            if (strcmp(k, strs[i].key)) continue;
            known = true;
            if (!cJSON_IsString(it)) {
                set_err(err, errlen, "config %s: \"%s\" must be a string", path, k);
                rc = -1;
            } else if (copy_str(strs[i].dst, strs[i].cap, it->valuestring, k, err, errlen)) {
                rc = -1;
            }
        }
        if (known) {
        } else if (!strcmp(k, "max_body_bytes")) {
            double v = cJSON_GetNumberValue(it);
            if (!cJSON_IsNumber(it) || v != floor(v) || v < 1 || v > (double)(1ull << 40)) {
                set_err(err, errlen, "config %s: \"max_body_bytes\" must be a positive integer", path);
                rc = -1;
            } else {
                c->max_body_bytes = (size_t)v;
            }
        } else if (!strcmp(k, "gpu_mem_gb") || !strcmp(k, "shutdown_timeout_s")) {
            const int gpu = !strcmp(k, "gpu_mem_gb");
            double v = cJSON_GetNumberValue(it);
            if (!cJSON_IsNumber(it) || !(v >= 0 && v <= (gpu ? 1e6 : 86400))) {
                set_err(err, errlen, "config %s: \"%s\" must be a number %s", path, k,
                        gpu ? "of GB >= 0" : "in [0, 86400]");
                rc = -1;
            } else {
                *(gpu ? &c->gpu_mem_gb : &c->shutdown_timeout_s) = v;
            }
        } else if (!strcmp(k, "kv_cache_gb") || !strcmp(k, "prefix_cache_disk_gb")) {
            double v = cJSON_GetNumberValue(it);
            if (!cJSON_IsNumber(it) || !(v >= 0 && v <= 1e6)) {
                set_err(err, errlen, "config %s: \"%s\" must be a number of GB >= 0", path, k);
                rc = -1;
            } else {
                *(!strcmp(k, "kv_cache_gb") ? &c->kv_cache_gb : &c->prefix_cache_disk_gb) = v;
            }
        } else if (!strcmp(k, "prefix_cache")) {
            if (!cJSON_IsBool(it)) {
                set_err(err, errlen, "config %s: \"prefix_cache\" must be true or false", path);
                rc = -1;
            } else {
                c->prefix_cache = cJSON_IsTrue(it);
            }
        } else if (!strcmp(k, "contexts")) {
            if (load_contexts(c, it, path, err, errlen)) rc = -1;
        } else if (!strcmp(k, "attention")) {
            char aerr[200];
            const char *key;
            if (srv_attn_from_json(it, &c->attn, true, aerr, sizeof aerr, &key)) {
                set_err(err, errlen, "config %s: %s", path, aerr);
                rc = -1;
            }
        } else if (k[0] != '_') { /* "_comment" keys are documentation */
            fprintf(stderr, "kvseek: warning: config %s: unknown key \"%s\" ignored\n", path, k);
        }
        if (rc) break;
    }
    cJSON_Delete(root);
    return rc;
}

int srv_config_load(int argc, char **argv, srv_config *c, char *err, size_t errlen) {
    defaults(c);
    /* the file first, so that every other option overrides it */
    const char *file = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            srv_config_usage(stdout);
            return 1;
        }
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) file = argv[++i];
    }
    if (!file && access(DEFAULT_CONFIG, R_OK) == 0) file = DEFAULT_CONFIG;
    if (file) {
        if (load_file(c, file, err, errlen)) return -1;
        snprintf(c->config_path, sizeof c->config_path, "%s", file);
    }
    const char *env_key = getenv("KVSEEK_API_KEY");
    if (env_key && *env_key && !c->api_key[0] &&
        copy_str(c->api_key, sizeof c->api_key, env_key, "KVSEEK_API_KEY", err, errlen))
        return -1;

    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n;
#define IS(x) (!strcmp(o, x))
        struct { const char *a, *b; int *dst; long long lo, hi; } ints[] = {
            {"--port", NULL, &c->port, 0, 65535}, {"--ctx-size", "--ctx", &c->ctx_size, 2, 1 << 24},
            {"--parallel", "-np", &c->parallel, 1, 1024}, {"--threads", "-t", &c->threads, 1, 1024},
            {"--queue-size", NULL, &c->queue_size, 0, 1 << 20},
            {"--batch-size", "-b", &c->batch_size, 1, 1 << 16},
            {"--connection-limit", NULL, &c->connection_limit, 1, 1 << 16},
            {"--timeout", NULL, &c->timeout_s, 1, 1 << 24},
            {"--request-timeout", NULL, &c->request_timeout_s, 1, 1 << 24},
            {"--context-max-tokens", NULL, &c->context_max_tokens, 1, 1 << 24},
            {"--max-contexts", NULL, &c->max_contexts, 0, 1 << 20},
        };
        struct { const char *a, *b; char *dst; size_t cap; } strs[] = {
            {"--data-dir", NULL, c->data_dir, sizeof c->data_dir},
            {"--cors-origin", NULL, c->cors_origin, sizeof c->cors_origin},
            {"--model", "-m", c->model, sizeof c->model}, {"--host", NULL, c->host, sizeof c->host},
            {"--alias", NULL, c->model_alias, sizeof c->model_alias},
            {"--api-key", NULL, c->api_key, sizeof c->api_key},
            {"--chat-template", NULL, c->chat_template, sizeof c->chat_template},
            {"--device", NULL, c->device, sizeof c->device},
            {"--prefix-cache-dir", NULL, c->prefix_cache_dir, sizeof c->prefix_cache_dir},
        };
        bool done = false;
        if (IS("-c") || IS("--config")) {
            if (!v) goto need_value;
            i++;
            continue;
        }
        for (size_t k = 0; k < sizeof ints / sizeof ints[0] && !done; k++) {
            if (!IS(ints[k].a) && !(ints[k].b && IS(ints[k].b))) continue;
            if (!v) goto need_value;
            if (parse_ll(v, ints[k].lo, ints[k].hi, &n)) {
                set_err(err, errlen, "%s: '%s' is not an integer in [%lld, %lld]", o, v, ints[k].lo, ints[k].hi);
                return -1;
            }
            *ints[k].dst = (int)n;
            i++;
            done = true;
        }
        for (size_t k = 0; k < sizeof strs / sizeof strs[0] && !done; k++) {
            if (!IS(strs[k].a) && !(strs[k].b && IS(strs[k].b))) continue;
            if (!v) goto need_value;
            if (copy_str(strs[k].dst, strs[k].cap, v, o, err, errlen)) return -1;
            i++;
            done = true;
        }
        if (done) continue;
        const int used = eng_attn_set_arg(&c->attn, o, v, err, errlen);
        if (used < 0) return -1;
        if (used) {
            i += used - 1;
            continue;
        }
        if (IS("--max-body")) {
            if (!v) goto need_value;
            if (parse_ll(v, 1, 1ll << 40, &n)) {
                set_err(err, errlen, "--max-body: '%s' is not a positive integer", v);
                return -1;
            }
            c->max_body_bytes = (size_t)n;
            i++;
        } else if (IS("--prefix-cache")) {
            if (!v) goto need_value;
            if (strcmp(v, "on") && strcmp(v, "off")) {
                set_err(err, errlen, "--prefix-cache: '%s' is not on or off", v);
                return -1;
            }
            c->prefix_cache = !strcmp(v, "on");
            i++;
        } else if (IS("--kv-cache-gb") || IS("--prefix-cache-disk-gb")) {
            if (!v) goto need_value;
            char *end;
            double d = strtod(v, &end);
            if (end == v || *end || !(d >= 0 && d <= 1e6)) {
                set_err(err, errlen, "%s: '%s' is not a number of GB >= 0", o, v);
                return -1;
            }
            *(IS("--kv-cache-gb") ? &c->kv_cache_gb : &c->prefix_cache_disk_gb) = d;
            i++;
        } else if (IS("--gpu-mem-gb") || IS("--shutdown-timeout")) {
            if (!v) goto need_value;
            const int gpu = IS("--gpu-mem-gb");
            char *end;
            double d = strtod(v, &end);
            if (end == v || *end || !(d >= 0 && d <= (gpu ? 1e6 : 86400))) {
                set_err(err, errlen, gpu ? "%s: '%s' is not a number of GB >= 0"
                                         : "%s: '%s' is not a number of seconds in [0, 86400]", o, v);
                return -1;
            }
            *(gpu ? &c->gpu_mem_gb : &c->shutdown_timeout_s) = d;
            i++;
        } else {
            set_err(err, errlen, "unknown option '%s' (see kvseek serve --help)", o);
            return -1;
        }
        continue;
need_value:
        set_err(err, errlen, "%s needs a value", o);
        return -1;
#undef IS
    }
    if (strcmp(c->device, "cpu") && strcmp(c->device, "cuda")) {
        set_err(err, errlen, "device '%s' is not cpu or cuda", c->device);
        return -1;
    }
    if (!c->model[0]) {
        set_err(err, errlen, "no model given (-m MODEL or \"model\" in the config)");
        return -1;
    }
    if (c->batch_size < c->parallel) {
        set_err(err, errlen, "--batch-size (%d) must be at least --parallel (%d)", c->batch_size, c->parallel);
        return -1;
    }
    if (!c->model_alias[0]) {
        const char *base = strrchr(c->model, '/');
        base = base ? base + 1 : c->model;
        size_t n = strlen(base);
        if (n >= sizeof c->model_alias) n = sizeof c->model_alias - 1;
        memcpy(c->model_alias, base, n);
        c->model_alias[n] = 0;
    }
    return 0;
}

/* The top-level settings the log shows as they are, in order: 's' a char array, 'i' an int,
 * 'd' a double, 'z' a size_t. */
#define CFG_FIELD(name, kind) {#name, offsetof(srv_config, name), kind}
static const struct {
    const char *key;
    size_t off;
    char kind;
} log_fields[] = {
    {"config_file", offsetof(srv_config, config_path), 's'}, CFG_FIELD(host, 's'), CFG_FIELD(port, 'i'),
    CFG_FIELD(model, 's'), CFG_FIELD(model_alias, 's'), CFG_FIELD(ctx_size, 'i'), CFG_FIELD(parallel, 'i'),
    CFG_FIELD(threads, 'i'), CFG_FIELD(device, 's'), CFG_FIELD(gpu_mem_gb, 'd'), CFG_FIELD(queue_size, 'i'),
    CFG_FIELD(batch_size, 'i'), CFG_FIELD(max_body_bytes, 'z'), CFG_FIELD(connection_limit, 'i'),
    CFG_FIELD(timeout_s, 'i'), CFG_FIELD(request_timeout_s, 'i'), CFG_FIELD(cors_origin, 's'),
    CFG_FIELD(shutdown_timeout_s, 'd'), CFG_FIELD(kv_cache_gb, 'd'), CFG_FIELD(prefix_cache_dir, 's'),
    CFG_FIELD(prefix_cache_disk_gb, 'd'),
};
#undef CFG_FIELD

void srv_config_log(const srv_config *c, FILE *f) {
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < sizeof log_fields / sizeof log_fields[0]; i++) {
        const char *p = (const char *)c + log_fields[i].off;
        switch (log_fields[i].kind) {
        case 's': cJSON_AddStringToObject(o, log_fields[i].key, p); break;
        case 'i': cJSON_AddNumberToObject(o, log_fields[i].key, *(const int *)p); break;
        case 'd': cJSON_AddNumberToObject(o, log_fields[i].key, *(const double *)p); break;
        default: cJSON_AddNumberToObject(o, log_fields[i].key, (double)*(const size_t *)p); break;
        }
    }
    cJSON_AddStringToObject(o, "api_key", c->api_key[0] ? "(set)" : "");
    cJSON_AddBoolToObject(o, "prefix_cache", c->prefix_cache);
    cJSON *cx = cJSON_AddObjectToObject(o, "contexts");
    cJSON_AddStringToObject(cx, "data_dir", c->data_dir);
    cJSON_AddNumberToObject(cx, "max_tokens", c->context_max_tokens);
    cJSON_AddNumberToObject(cx, "max_contexts", c->max_contexts);
    cJSON_AddNumberToObject(cx, "fine_frac", c->ctx_params.fine_frac);
    cJSON_AddNumberToObject(cx, "coarse_frac", c->ctx_params.coarse_frac);
    cJSON_AddNumberToObject(cx, "target", c->ctx_params.target);
    cJSON_AddItemToObject(o, "attention", attn_params_json(&c->attn));
    cJSON_AddStringToObject(o, "chat_template", c->chat_template[0] ? (strlen(c->chat_template) > 16 ? "(custom)" : c->chat_template) : "");
    char *s = cJSON_PrintUnformatted(o);
    if (s) fprintf(f, "kvseek: config %s\n", s);
    free(s);
    cJSON_Delete(o);
}
