/* Chat templates: the three conversation formats of the supported architectures, written out in
 * C rather than evaluated from Jinja. A model's tokenizer.chat_template is recognised by its
 * markers (as llama.cpp's built-in templates are); one that matches none is refused with a clear
 * error rather than guessed. The rendered text is tokenized with special-token parsing, and the
 * tokenizer adds BOS itself, so no template writes it. */
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

const char *srv_chat_name(srv_chat_fmt f) {
    switch (f) {
    case SRV_CHAT_GEMMA: return "gemma";
    case SRV_CHAT_CHATML: return "chatml";
    case SRV_CHAT_LLAMA3: return "llama3";
    case SRV_CHAT_QWEN2: return "qwen2";
    default: return "none";
    }
}

static bool contains(const char *s, size_t len, const char *needle) {
    return memmem(s, len, needle, strlen(needle)) != NULL;
}

srv_chat_fmt srv_chat_detect(const char *s, size_t len) {
    static const struct { const char *name; srv_chat_fmt f; } names[] = {
        {"gemma", SRV_CHAT_GEMMA}, {"gemma3", SRV_CHAT_GEMMA}, {"chatml", SRV_CHAT_CHATML},
        {"qwen2", SRV_CHAT_QWEN2}, {"qwen2.5", SRV_CHAT_QWEN2}, {"llama3", SRV_CHAT_LLAMA3},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == len && !strncasecmp(s, names[i].name, len)) return names[i].f;
    if (contains(s, len, "<start_of_turn>")) return SRV_CHAT_GEMMA;
    if (contains(s, len, "<|im_start|>"))
        return contains(s, len, "You are Qwen, created by Alibaba Cloud") ? SRV_CHAT_QWEN2 : SRV_CHAT_CHATML;
    if (contains(s, len, "<|start_header_id|>")) return SRV_CHAT_LLAMA3;
    return SRV_CHAT_NONE;
}

typedef struct {
    char *s;
    size_t len, cap;
    bool oom;
} buf;

static void put(buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = 2 * (b->len + n + 1) + 256;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = true; return; }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

/* Jinja's |trim: leading and trailing whitespace removed. */
static void put_trimmed(buf *b, const char *s) {
    size_t n = strlen(s);
    while (n && isspace((unsigned char)*s)) { s++; n--; }
    while (n && isspace((unsigned char)s[n - 1])) n--;
    put(b, s, n);
}

static bool is_system(const char *role) { return !strcmp(role, "system") || !strcmp(role, "developer"); }

/* ---- tools ---- */

static void put_json(buf *b, const cJSON *j) {
    if (cJSON_IsObject(j) || cJSON_IsArray(j)) {
        bool obj = cJSON_IsObject(j), first = true;
        puts_(b, obj ? "{" : "[");
        const cJSON *c;
        cJSON_ArrayForEach(c, j) {
            if (!first) puts_(b, ", ");
            first = false;
            if (obj) {
                cJSON *k = cJSON_CreateString(c->string ? c->string : "");
                char *ks = k ? cJSON_PrintUnformatted(k) : NULL;
                if (ks) puts_(b, ks);
                else b->oom = true;
                free(ks);
                cJSON_Delete(k);
                puts_(b, ": ");
            }
            put_json(b, c);
        }
        puts_(b, obj ? "}" : "]");
        return;
    }
    char *t = cJSON_PrintUnformatted(j);
    if (t) puts_(b, t);
    else b->oom = true;
    free(t);
}

char *srv_json_spaced(const cJSON *j) {
    buf b = {0};
    puts_(&b, "");
    put_json(&b, j);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

const char *srv_chat_tool_open(srv_chat_fmt f) { return f == SRV_CHAT_LLAMA3 ? "" : "<tool_call>\n"; }
const char *srv_chat_tool_args_key(srv_chat_fmt f) { return f == SRV_CHAT_LLAMA3 ? "parameters" : "arguments"; }

/* Qwen2.5's instructions for tools (the chatml convention, also given to Gemma). */
static void put_tools_block(buf *b, const cJSON *tools) {
    puts_(b, "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
             "You are provided with function signatures within <tools></tools> XML tags:\n<tools>");
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        puts_(b, "\n");
        put_json(b, t);
    }
    puts_(b, "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
             "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
             "\"arguments\": <args-json-object>}\n</tool_call>");
}

/* One call as the format writes it: {"name": "f", "arguments": {...}}; arguments arrive as
 * JSON text and are embedded as JSON when they parse. */
static void put_call(buf *b, const cJSON *call, const char *args_key) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
    cJSON *o = cJSON_CreateObject();
    if (!o) { b->oom = true; return; }
    cJSON_AddStringToObject(o, "name", cJSON_IsString(name) ? name->valuestring : "");
    cJSON *a = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
    if (!a) a = cJSON_IsString(args) ? cJSON_CreateString(args->valuestring) : cJSON_CreateObject();
    cJSON_AddItemToObject(o, args_key, a);
    put_json(b, o);
    cJSON_Delete(o);
}

static void put_calls_tagged(buf *b, const cJSON *calls) {
    const cJSON *c;
    cJSON_ArrayForEach(c, calls) {
        puts_(b, "\n<tool_call>\n");
        put_call(b, c, "arguments");
        puts_(b, "\n</tool_call>");
    }
}

static bool has_calls(const srv_chat_msg *m) { return m->tool_calls && cJSON_GetArraySize(m->tool_calls) > 0; }

/* The calls in a parsed {"name", "arguments"|"parameters"} object appended to arr; false when
 * it is not one. */
static bool add_call(cJSON *arr, const cJSON *o) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    if (!args) args = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    if (!cJSON_IsObject(o) || !cJSON_IsString(name) || !name->valuestring[0]) return false;
    char *text = cJSON_IsString(args) ? strdup(args->valuestring)
               : args ? cJSON_PrintUnformatted(args) : strdup("{}");
    cJSON *c = cJSON_CreateObject();
    if (!text || !c) {
        free(text);
        cJSON_Delete(c);
        return false;
    }
    cJSON_AddStringToObject(c, "name", name->valuestring);
    cJSON_AddStringToObject(c, "arguments", text);
    free(text);
    cJSON_AddItemToArray(arr, c);
    return true;
}

cJSON *srv_chat_parse_tool_calls(srv_chat_fmt f, const char *text, size_t len, bool forced, size_t *content_len) {
    *content_len = len;
    char *t = malloc(len + 1);
    cJSON *arr = cJSON_CreateArray();
    if (!t || !arr) goto none;
    memcpy(t, text, len);
    t[len] = 0;
    const char *p = t;
    while (*p && isspace((unsigned char)*p)) p++;
    if (forced || f == SRV_CHAT_LLAMA3) {
        size_t tag = strlen("<|python_tag|>");
        if (!strncmp(p, "<|python_tag|>", tag)) p += tag;
        if (*p != '{') goto none;
        const char *end = NULL;
        cJSON *o = cJSON_ParseWithOpts(p, &end, false);
        bool ok = o && add_call(arr, o);
        cJSON_Delete(o);
        if (!ok) goto none;
        *content_len = 0;
    } else {
        const char *open = strstr(t, "<tool_call>");
        if (!open) goto none;
        size_t before = (size_t)(open - t);
        for (const char *q = open; q; q = strstr(q, "<tool_call>")) {
            q += strlen("<tool_call>");
            while (*q && isspace((unsigned char)*q)) q++;
            const char *end = NULL;
            cJSON *o = cJSON_ParseWithOpts(q, &end, false);
            bool ok = o && add_call(arr, o);
            cJSON_Delete(o);
            if (!ok) goto none;
            q = end;
        }
        while (before && isspace((unsigned char)t[before - 1])) before--;
        *content_len = before;
    }
    free(t);
    return arr;
none:
    free(t);
    cJSON_Delete(arr);
    *content_len = len;
    return NULL;
}

char *srv_chat_render(srv_chat_fmt f, const srv_chat_msg *msgs, int n, const cJSON *tools, char *err,
                      size_t errlen) {
    buf b = {0};
    puts_(&b, ""); /* an empty conversation still renders the generation prompt */
    for (int i = 0; i < n; i++) {
        const char *role = msgs[i].role;
        if (!is_system(role) && strcmp(role, "user") && strcmp(role, "assistant") && strcmp(role, "tool")) {
            snprintf(err, errlen, "messages[%d].role: '%s' is not one of system, developer, user, "
                     "assistant, tool", i, role);
            free(b.s);
            return NULL;
        }
    }
    switch (f) {
    case SRV_CHAT_GEMMA: {
        /* system text goes in front of the next user turn, as Gemma's template does; so do the
         * tools, in the chatml convention (Gemma has no tool format of its own) */
        buf sys = {0};
        if (tools && cJSON_GetArraySize(tools) > 0) put_tools_block(&sys, tools);
        for (int i = 0; i < n; i++) {
            const char *role = msgs[i].role;
            if (is_system(role)) {
                if (sys.len) puts_(&sys, "\n\n");
                put_trimmed(&sys, msgs[i].content);
                continue;
            }
            bool model = !strcmp(role, "assistant"), tool = !strcmp(role, "tool");
            bool tool_cont = tool && i > 0 && !strcmp(msgs[i - 1].role, "tool");
            if (!tool_cont) puts_(&b, model ? "<start_of_turn>model\n" : "<start_of_turn>user\n");
            if (!model && sys.len) {
                put(&b, sys.s, sys.len);
                puts_(&b, "\n\n");
                sys.len = 0;
            }
            if (tool) {
                puts_(&b, tool_cont ? "\n<tool_response>\n" : "<tool_response>\n");
                put_trimmed(&b, msgs[i].content);
                puts_(&b, "\n</tool_response>");
                if (i + 1 < n && !strcmp(msgs[i + 1].role, "tool")) continue;
            } else {
                put_trimmed(&b, msgs[i].content);
                if (model && has_calls(&msgs[i])) put_calls_tagged(&b, msgs[i].tool_calls);
            }
            puts_(&b, "<end_of_turn>\n");
        }
        if (sys.len) { /* system text with no user turn after it */
            puts_(&b, "<start_of_turn>user\n");
            put(&b, sys.s, sys.len);
            puts_(&b, "<end_of_turn>\n");
        }
        b.oom |= sys.oom;
        free(sys.s);
        puts_(&b, "<start_of_turn>model\n");
        break;
    }
    case SRV_CHAT_CHATML:
    case SRV_CHAT_QWEN2: {
        static const char qwen_sys[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
        int i = 0;
        if (tools && cJSON_GetArraySize(tools) > 0) { /* Qwen2.5's template */
            puts_(&b, "<|im_start|>system\n");
            if (n > 0 && is_system(msgs[0].role)) puts_(&b, msgs[i++].content);
            else puts_(&b, qwen_sys);
            puts_(&b, "\n\n");
            put_tools_block(&b, tools);
            puts_(&b, "<|im_end|>\n");
        } else if (f == SRV_CHAT_QWEN2 && (n == 0 || !is_system(msgs[0].role))) {
            puts_(&b, "<|im_start|>system\n");
            puts_(&b, qwen_sys);
            puts_(&b, "<|im_end|>\n");
        }
        for (; i < n; i++) {
            const char *role = msgs[i].role;
            if (!strcmp(role, "tool")) { /* consecutive tool results share one user turn */
                if (i == 0 || strcmp(msgs[i - 1].role, "tool")) puts_(&b, "<|im_start|>user");
                puts_(&b, "\n<tool_response>\n");
                puts_(&b, msgs[i].content);
                puts_(&b, "\n</tool_response>");
                if (i + 1 == n || strcmp(msgs[i + 1].role, "tool")) puts_(&b, "<|im_end|>\n");
                continue;
            }
            if (!strcmp(role, "assistant") && has_calls(&msgs[i])) {
                puts_(&b, "<|im_start|>assistant");
                if (msgs[i].content[0]) {
                    puts_(&b, "\n");
                    puts_(&b, msgs[i].content);
                }
                put_calls_tagged(&b, msgs[i].tool_calls);
                puts_(&b, "<|im_end|>\n");
                continue;
            }
            puts_(&b, "<|im_start|>");
            puts_(&b, is_system(role) ? "system" : role);
            puts_(&b, "\n");
            puts_(&b, msgs[i].content);
            puts_(&b, "<|im_end|>\n");
        }
        puts_(&b, "<|im_start|>assistant\n");
        break;
    }
    case SRV_CHAT_LLAMA3: {
        /* with tools, Llama 3.1's template: "Environment: ipython" in the system turn and the
         * function list in front of the first user message */
        bool with_tools = tools && cJSON_GetArraySize(tools) > 0, listed = false;
        if (with_tools && (n == 0 || !is_system(msgs[0].role)))
            puts_(&b, "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython<|eot_id|>");
        for (int i = 0; i < n; i++) {
            const char *role = msgs[i].role;
            puts_(&b, "<|start_header_id|>");
            puts_(&b, is_system(role) ? "system" : !strcmp(role, "tool") ? "ipython" : role);
            puts_(&b, "<|end_header_id|>\n\n");
            if (with_tools && i == 0 && is_system(role)) puts_(&b, "Environment: ipython\n\n");
            if (with_tools && !listed && !strcmp(role, "user")) {
                listed = true;
                puts_(&b, "Given the following functions, please respond with a JSON for a function call with "
                          "its proper arguments that best answers the given prompt.\n\nRespond in the format "
                          "{\"name\": function name, \"parameters\": dictionary of argument name and its value}."
                          "Do not use variables.\n\n");
                const cJSON *t;
                cJSON_ArrayForEach(t, tools) {
                    put_json(&b, t);
                    puts_(&b, "\n\n");
                }
            }
            if (!strcmp(role, "assistant") && has_calls(&msgs[i])) {
                put_call(&b, cJSON_GetArrayItem(msgs[i].tool_calls, 0), "parameters");
            } else {
                put_trimmed(&b, msgs[i].content);
            }
            puts_(&b, "<|eot_id|>");
        }
        puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    }
    default:
        snprintf(err, errlen, "no chat template");
        free(b.s);
        return NULL;
    }
    if (b.oom) {
        snprintf(err, errlen, "out of memory");
        free(b.s);
        return NULL;
    }
    return b.s;
}
