/* Fuzz target: chat template rendering (srv_chat_render) over conversations built from the
 * input, in every format, and srv_chat_detect over the raw bytes.
 *
 * Input: the bytes split at NUL into messages (contents are C strings, as the JSON parser
 * hands them over); each message's first byte picks its role: system, developer, user,
 * assistant, tool, two names no format accepts ("bot", ""), or (7) the text up to the first
 * newline as the role. Every format (gemma, chatml, llama3, none) renders the conversation.
 * Asserts: a result iff every role is one of the five and the format is not none (else NULL and
 * a reason); the result ends with the format's assistant opener; every user and assistant
 * content, trimmed of surrounding whitespace, appears in it (system text may be merged). */
#include <ctype.h>
#include <string.h>

#include "fuzz.h"
#include "srv.h"

enum { MAX_MSGS = 64 };

static const char *opener(srv_chat_fmt f) {
    switch (f) {
    case SRV_CHAT_GEMMA: return "<start_of_turn>model\n";
    case SRV_CHAT_CHATML:
    case SRV_CHAT_QWEN2: return "<|im_start|>assistant\n";
    case SRV_CHAT_LLAMA3: return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    default: return NULL;
    }
}

static bool role_ok(const char *r) {
    static const char *ok[] = {"system", "developer", "user", "assistant", "tool"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(r, ok[i])) return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *roles[] = {"system", "developer", "user", "assistant", "tool", "bot", ""};
    char *copy = malloc(size + 1);
    FUZZ_CHECK(copy != NULL, "out of memory");
    memcpy(copy, data, size);
    copy[size] = 0;
    (void)srv_chat_detect(copy, size);

    srv_chat_msg msgs[MAX_MSGS] = {0};
    int n = 0;
    bool all_ok = true;
    for (size_t i = 0; i < size && n < MAX_MSGS;) {
        size_t end = i;
        while (end < size && copy[end]) end++;
        /* [i, end) is one message: role byte, then its text */
        uint8_t r = (uint8_t)copy[i];
        char *body = copy + i + 1 > copy + end ? copy + end : copy + i + 1;
        if (r % 8 < 7) {
            msgs[n].role = roles[r % 8];
            msgs[n].content = body;
        } else {
            char *nl = strchr(body, '\n');
            msgs[n].role = body;
            msgs[n].content = nl ? nl + 1 : body + strlen(body);
            if (nl) *nl = 0;
        }
        all_ok = all_ok && role_ok(msgs[n].role);
        n++;
        i = end + 1;
    }

    for (srv_chat_fmt f = SRV_CHAT_NONE; f <= SRV_CHAT_QWEN2; f++) {
        char err[200] = "";
        char *out = srv_chat_render(f, msgs, n, NULL, err, sizeof err);
        const bool want = all_ok && f != SRV_CHAT_NONE;
        FUZZ_CHECK(!out == !want, "%s: %s for %d messages (roles %s)", srv_chat_name(f), out ? "rendered" : err,
                   n, all_ok ? "valid" : "invalid");
        if (!out) {
            FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "%s: refused without a reason", srv_chat_name(f));
            continue;
        }
        const size_t len = strlen(out), ol = strlen(opener(f));
        FUZZ_CHECK(len >= ol && !memcmp(out + len - ol, opener(f), ol), "%s: does not end with the assistant opener",
                   srv_chat_name(f));
        for (int k = 0; k < n; k++) {
            if (strcmp(msgs[k].role, "user") && strcmp(msgs[k].role, "assistant")) continue;
            const char *c = msgs[k].content;
            size_t cl = strlen(c);
            while (cl && isspace((unsigned char)*c)) { c++; cl--; }
            while (cl && isspace((unsigned char)c[cl - 1])) cl--;
            FUZZ_CHECK(!cl || memmem(out, len, c, cl), "%s: message %d's text is missing", srv_chat_name(f), k);
        }
        free(out);
    }
    free(copy);
    return 0;
}
