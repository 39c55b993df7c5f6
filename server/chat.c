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
    default: return "none";
    }
}

static bool contains(const char *s, size_t len, const char *needle) {
    return memmem(s, len, needle, strlen(needle)) != NULL;
}

srv_chat_fmt srv_chat_detect(const char *s, size_t len) {
    static const struct { const char *name; srv_chat_fmt f; } names[] = {
        {"gemma", SRV_CHAT_GEMMA}, {"gemma3", SRV_CHAT_GEMMA}, {"chatml", SRV_CHAT_CHATML},
        {"qwen2", SRV_CHAT_CHATML}, {"llama3", SRV_CHAT_LLAMA3},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == len && !strncasecmp(s, names[i].name, len)) return names[i].f;
    if (contains(s, len, "<start_of_turn>")) return SRV_CHAT_GEMMA;
    if (contains(s, len, "<|im_start|>")) return SRV_CHAT_CHATML;
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

char *srv_chat_render(srv_chat_fmt f, const srv_chat_msg *msgs, int n, char *err, size_t errlen) {
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
        /* system text goes in front of the next user turn, as Gemma's template does */
        buf sys = {0};
        for (int i = 0; i < n; i++) {
            const char *role = msgs[i].role;
            if (is_system(role)) {
                if (sys.len) puts_(&sys, "\n\n");
                put_trimmed(&sys, msgs[i].content);
                continue;
            }
            bool model = !strcmp(role, "assistant");
            puts_(&b, model ? "<start_of_turn>model\n" : "<start_of_turn>user\n");
            if (!model && sys.len) {
                put(&b, sys.s, sys.len);
                puts_(&b, "\n\n");
                sys.len = 0;
            }
            put_trimmed(&b, msgs[i].content);
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
        for (int i = 0; i < n; i++) {
            puts_(&b, "<|im_start|>");
            puts_(&b, is_system(msgs[i].role) ? "system" : msgs[i].role);
            puts_(&b, "\n");
            puts_(&b, msgs[i].content);
            puts_(&b, "<|im_end|>\n");
        }
        puts_(&b, "<|im_start|>assistant\n");
        break;
    case SRV_CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            const char *role = msgs[i].role;
            puts_(&b, "<|start_header_id|>");
            puts_(&b, is_system(role) ? "system" : !strcmp(role, "tool") ? "ipython" : role);
            puts_(&b, "<|end_header_id|>\n\n");
            put_trimmed(&b, msgs[i].content);
            puts_(&b, "<|eot_id|>");
        }
        puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
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
