/* Fuzz target: the tokenizer on arbitrary bytes (invalid UTF-8 and NUL included) with the
 * vocabularies of the tiny models (`make tiny`): tiny-gemma3 (SentencePiece, no space prefix),
 * tiny-llama (SentencePiece with a space prefix) and tiny-qwen2 (byte-level BPE).
 *
 * Input: byte 0 chooses the vocab (bits 0-1) and the flags add_special (bit 2), parse_special
 * (bit 3) and render_special (bit 4); the rest is the text. Asserts:
 *   - tok_encode's cap protocol: a short buffer gives the same count and the same first ids;
 *     every id is in the vocab; encoding twice gives the same ids;
 *   - tok_decode's snprintf protocol: the length without a buffer equals the written length,
 *     the output is NUL-terminated, and a truncated decode is a prefix of the full one;
 *   - tok_piece never writes past its cap;
 *   - round trip, where the tokenizer promises it (tests/test_tok.c, tests/test_tok_ref.py):
 *     text that is valid UTF-8, encoded without BOS and without parsing specials, decodes to
 *     itself. SentencePiece: only without a space prefix (gemma3) and for text without a
 *     literal "▁" (it decodes as a space). Byte-level BPE (qwen2): any valid UTF-8;
 *   - tok_find of the text, when found, names a token whose text is exactly the input. */
#include <string.h>

#include "fuzz.h"
#include "gguf.h"
#include "tok.h"

enum { N_VOCABS = 3 };
static const char *names[N_VOCABS] = {"tiny-gemma3.gguf", "tiny-llama.gguf", "tiny-qwen2.gguf"};
static tok_vocab *vocabs[N_VOCABS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    for (int i = 0; i < N_VOCABS; i++) {
        char path[1024], err[512];
        snprintf(path, sizeof path, "%s/%s", fuzz_tiny_dir(), names[i]);
        gguf_ctx *g = gguf_open(path, err, sizeof err);
        vocabs[i] = g ? tok_load(g, err, sizeof err) : NULL;
        gguf_close(g); /* the vocab holds no pointer into the file */
        if (!vocabs[i]) {
            fprintf(stderr, "fuzz_tok: %s (run `make tiny`)\n", err);
            exit(1);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t flags = data[0];
    const int which = (flags & 3) % N_VOCABS;
    const tok_vocab *v = vocabs[which];
    const bool add_special = flags & 4, parse_special = flags & 8, render_special = flags & 16;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    const int32_t n_vocab = tok_n_vocab(v);

    /* encode: the count first (a short buffer), then all of it */
    int32_t head[4];
    const int64_t n = tok_encode(v, text, len, add_special, parse_special, head, 4);
    FUZZ_CHECK(n >= 0, "%s: tok_encode failed: %s", names[which], tok_strerror(n));
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    FUZZ_CHECK(ids != NULL, "out of memory");
    FUZZ_CHECK(tok_encode(v, text, len, add_special, parse_special, ids, n) == n, "%s: count changed", names[which]);
    for (int64_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "%s: id %d out of range", names[which], ids[i]);
        FUZZ_CHECK(i >= 4 || ids[i] == head[i], "%s: id %lld differs with a short buffer", names[which], (long long)i);
    }
    /* with the text empty (len 0) no byte can be reached; with cap 0 no id is written */
    FUZZ_CHECK(tok_encode(v, text, len, add_special, parse_special, NULL, 0) == n, "%s: count with cap 0",
               names[which]);

    /* decode: length, full, truncated */
    const int64_t need = tok_decode(v, ids, n, render_special, NULL, 0);
    FUZZ_CHECK(need >= 0, "decode length %lld", (long long)need);
    char *out = malloc((size_t)need + 1);
    FUZZ_CHECK(out != NULL, "out of memory");
    FUZZ_CHECK(tok_decode(v, ids, n, render_special, out, need + 1) == need && out[need] == 0,
               "%s: decode wrote another length", names[which]);
    const int64_t cut = need / 2 + 1; /* writes need/2 bytes and the NUL */
    char *part = malloc((size_t)cut);
    FUZZ_CHECK(part != NULL, "out of memory");
    FUZZ_CHECK(tok_decode(v, ids, n, render_special, part, cut) == need && part[cut - 1] == 0 &&
               !memcmp(part, out, (size_t)cut - 1), "%s: truncated decode is not a prefix", names[which]);
    free(part);

    /* pieces: never past cap (a 2-byte buffer with a guard after it) */
    for (int64_t i = 0; i < n && i < 64; i++) {
        char pb[3] = {0, 0, 0x5A};
        int pl = tok_piece(v, ids[i], render_special, pb, 2);
        FUZZ_CHECK(pl >= 0 && pb[2] == 0x5A, "%s: tok_piece of %d wrote past its cap", names[which], ids[i]);
    }

    /* round trip where promised */
    const tok_model model = tok_get_model(v);
    const bool space_prefix = which == 1;
    bool promised = !add_special && fuzz_valid_utf8(data + 1, len) &&
                    (!parse_special || (render_special && !space_prefix));
    if (model == TOK_MODEL_SPM) promised = promised && !memmem(text, len, "\xe2\x96\x81", 3);
    if (promised) {
        const int64_t plain = tok_decode(v, ids, n, parse_special, NULL, 0);
        char *rt = malloc((size_t)plain + 1);
        FUZZ_CHECK(rt != NULL, "out of memory");
        tok_decode(v, ids, n, parse_special, rt, plain + 1);
        FUZZ_CHECK(plain == (int64_t)len && !memcmp(rt, text, len),
                   "%s: round trip of %zu bytes gave %lld bytes", names[which], len, (long long)plain);
        free(rt);
    }

    /* exact lookup */
    const int32_t f = tok_find(v, text, len);
    if (f >= 0) {
        const char *t = tok_text(v, f);
        FUZZ_CHECK(f < n_vocab && t && strlen(t) == len && !memcmp(t, text, len), "%s: tok_find gave %d",
                   names[which], f);
    }
    free(out);
    free(ids);
    return 0;
}
