/* Fuzz target: the HTTP request bodies, from JSON to typed requests. srv_parse_request runs
 * exactly the parsing and validation of srv_api_generate (TGI /generate and /generate_stream,
 * OpenAI /v1/completions and /v1/chat/completions in each chat format) and frees the result;
 * srv_attn_from_json takes an "attention" value as a request (storage keys refused) or the
 * config file (storage keys allowed) gives it; tok_utf8_clean cleans every body.
 *
 * Input: byte 0 bits 0-2 choose the parser: 0 TGI, 1 TGI stream, 2 completions, 3-5 chat
 * (gemma, chatml, llama3), 6 chat without a template, 7 attention (bit 3: storage keys
 * allowed); the rest is the body. Asserts: a refusal carries a message (and, as the server
 * answers it, a param that is still readable after the JSON is freed); an attention error names
 * its key; tok_utf8_clean gives valid UTF-8 without NUL, the input itself when that already was. */
#include <string.h>

#include "fuzz.h"
#include "srv.h"

enum { N_VOCAB = 512 }; /* the tiny models' vocabulary */

static void check_clean(const uint8_t *body, size_t len) {
    char *c = tok_utf8_clean((const char *)body, len);
    FUZZ_CHECK(c != NULL, "tok_utf8_clean: out of memory");
    const size_t cl = strlen(c);
    FUZZ_CHECK(fuzz_valid_utf8((const uint8_t *)c, cl), "tok_utf8_clean gave invalid UTF-8");
    if (fuzz_valid_utf8(body, len) && !memchr(body, 0, len))
        FUZZ_CHECK(cl == len && !memcmp(c, body, len), "tok_utf8_clean changed valid text");
    free(c);
}

static void check_attention(const char *body, size_t len, bool storage_ok) {
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return;
    eng_attn_params a = eng_attn_default();
    char err[200] = "";
    const char *key = NULL;
    if (srv_attn_from_json(root, &a, storage_ok, err, sizeof err, &key)) {
        FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "attention refused without a reason");
        FUZZ_CHECK(key != NULL, "attention refused without a key");
        (void)strlen(key); /* points at a static string or into root */
    } else {
        char cerr[200];
        (void)eng_attn_check(&a, cerr, sizeof cerr);
    }
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t sel = data[0];
    const char *body = (const char *)data + 1;
    const size_t len = size - 1;
    check_clean(data + 1, len);
    static const srv_route routes[7] = {SRV_ROUTE_GENERATE, SRV_ROUTE_GENERATE_STREAM, SRV_ROUTE_COMPLETIONS,
                                        SRV_ROUTE_CHAT, SRV_ROUTE_CHAT, SRV_ROUTE_CHAT, SRV_ROUTE_CHAT};
    static const srv_chat_fmt fmts[7] = {SRV_CHAT_NONE, SRV_CHAT_NONE, SRV_CHAT_NONE, SRV_CHAT_GEMMA,
                                         SRV_CHAT_CHATML, SRV_CHAT_LLAMA3, SRV_CHAT_NONE};
    const int k = sel & 7;
    if (k == 7) {
        check_attention(body, len, sel & 8);
        return 0;
    }
    char err[600] = "";
    const int rc = srv_parse_request(routes[k], body, len, fmts[k], N_VOCAB, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1, "status %d", rc);
    if (rc) FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "refused without a reason");
    if (k == 6 && rc == 0) FUZZ_CHECK(0, "a chat request rendered without a template");
    return 0;
}
