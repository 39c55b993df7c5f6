/* Fuzz target: the grammar engine (grammar/). A schema or regex is compiled, then a byte string
 * is fed through a state, with the token mask of a small vocabulary (every single byte, some
 * multi-byte pieces, one EOG, one control token) taken along the way.
 *
 * Input: byte 0 bit 0 regex (else JSON schema), bit 1 JSON-object mode (the text is ignored);
 * then the grammar text up to the first NUL; the rest are the bytes fed. Asserts: a refusal has
 * a reason; a single-byte token is in the mask iff accepting that byte succeeds; EOG is in the
 * mask iff the state can end; must_end implies can_end; a clone accepts what its original does. */
#include <string.h>

#include "fuzz.h"
#include "grammar.h"

enum { N_PIECES = 256 + 16, N_VOCAB = N_PIECES + 2, EOG = N_VOCAB - 1 };
static const char *multi[16] = {"{\"", "\":", "\",", "\"}", "true", "null", "12", "\xc3\xa9", "\xe2\x82", "\\n",
                                "ab", "[{", "}]", " \"", "\\u00", "-0."};
static gram_vocab *vocab;

static const char *piece(void *ud, int32_t id, int *len) {
    static char b[256];
    (void)ud;
    if (id < 256) { b[id] = (char)id; *len = 1; return &b[id]; }
    if (id < N_PIECES) { *len = (int)strlen(multi[id - 256]); return multi[id - 256]; }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    int32_t eog = EOG;
    char err[128];
    vocab = gram_vocab_create(N_VOCAB, piece, NULL, &eog, 1, err, sizeof err);
    FUZZ_CHECK(vocab != NULL, "vocab: %s", err);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!vocab) LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    const uint8_t *text = data + 1, *nul = memchr(text, 0, size - 1);
    const size_t tlen = nul ? (size_t)(nul - text) : size - 1;
    const uint8_t *bytes = nul ? nul + 1 : data + size;
    const size_t nb = (size_t)(data + size - bytes);
    char err[256] = "";
    gram *g = mode & 2 ? gram_json_object()
              : mode & 1 ? gram_from_regex((const char *)text, tlen, err, sizeof err)
                         : gram_from_json_schema((const char *)text, tlen, err, sizeof err);
    if (!g) {
        FUZZ_CHECK(!(mode & 2), "json object mode failed");
        FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "refused without a reason");
        return 0;
    }
    gram_state *s = gram_state_new(g, vocab);
    FUZZ_CHECK(s != NULL, "state");
    uint32_t mask[(N_VOCAB + 31) / 32];
    for (size_t i = 0; i < nb; i++) {
        if (i < 64) {
            FUZZ_CHECK(gram_state_mask(s, mask) == GRAM_OK, "mask");
            FUZZ_CHECK(gram_mask_test(mask, EOG) == gram_state_can_end(s), "EOG in the mask iff can end");
            FUZZ_CHECK(!gram_mask_test(mask, EOG - 1), "a control token allowed");
            FUZZ_CHECK(!gram_state_must_end(s) || gram_state_can_end(s), "must end but cannot");
        }
        gram_state *c = i == nb / 2 ? gram_state_clone(s) : NULL;
        const int rc = gram_state_accept(s, bytes + i, 1);
        FUZZ_CHECK(rc == GRAM_OK || rc == GRAM_ERR_REJECT, "accept: %d", rc);
        if (i < 64) FUZZ_CHECK((rc == GRAM_OK) == gram_mask_test(mask, bytes[i]), "byte %zu: mask and accept disagree", i);
        if (c) {
            FUZZ_CHECK(gram_state_accept(c, bytes + i, 1) == rc, "clone disagrees");
            gram_state_free(c);
        }
        if (rc) break;
    }
    if (gram_state_can_end(s)) FUZZ_CHECK(gram_state_accept_token(s, EOG) == GRAM_OK && gram_state_ended(s), "end");
    gram_state_free(s);
    gram_free(g);
    return 0;
}
