/* Tokenizes a stream of strings with kvseek's tokenizer, for tests/test_tok_ref.py.
 *
 *   tool_tok MODEL.gguf [--special] [--no-bos]
 *
 * stdin: records of a little-endian u32 byte length followed by that many bytes.
 * stdout: per record one line "ID ID ...<TAB>HEX", HEX being the bytes of decoding the ids with
 * control tokens rendered (so decode(encode(s)) can be compared with s).
 * --special: parse control tokens written in the text. --no-bos: add_special off.
 * A line "info n_vocab=N bos=B eos=E add_bos=0|1 load_ms=T" goes to stderr first. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "gguf.h"
#include "tok.h"

int main(int argc, char **argv) {
    const char *path = NULL;
    int special = 0, bos = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--special")) special = 1;
        else if (!strcmp(argv[i], "--no-bos")) bos = 0;
        else if (!path) path = argv[i];
        else { fprintf(stderr, "unexpected argument %s\n", argv[i]); return 2; }
    }
    if (!path) {
        fprintf(stderr, "usage: %s MODEL.gguf [--special] [--no-bos] < records\n", argv[0]);
        return 2;
    }
    char err[256];
    gguf_ctx *g = gguf_open(path, err, sizeof err);
    if (!g) { fprintf(stderr, "gguf: %s\n", err); return 1; }
    double t0 = krn_now_s() * 1e3;
    tok_vocab *v = tok_load(g, err, sizeof err);
    double t1 = krn_now_s() * 1e3;
    gguf_close(g); /* the vocab must not depend on the mapping */
    if (!v) { fprintf(stderr, "%s\n", err); return 1; }
    fprintf(stderr, "info n_vocab=%d bos=%d eos=%d add_bos=%d load_ms=%.1f\n", tok_n_vocab(v),
            tok_bos(v), tok_eos(v), tok_add_bos(v), t1 - t0);

    char *text = NULL, *dec = NULL;
    int32_t *ids = NULL;
    size_t text_cap = 0, ids_cap = 0, dec_cap = 0;
    int rc = 0;
    for (;;) {
        uint8_t hdr[4];
        size_t got = fread(hdr, 1, 4, stdin);
        if (got == 0) break;
        if (got != 4) { fprintf(stderr, "truncated record header\n"); rc = 1; break; }
        size_t len = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (size_t)hdr[3] << 24;
        if (len + 1 > text_cap) {
            text_cap = len + 1;
            text = realloc(text, text_cap);
            if (!text) { fprintf(stderr, "out of memory\n"); return 1; }
        }
        if (fread(text, 1, len, stdin) != len) { fprintf(stderr, "truncated record\n"); rc = 1; break; }
        int64_t n = tok_encode(v, text, len, bos, special, ids, (int64_t)ids_cap);
        if (n > (int64_t)ids_cap) {
            ids_cap = (size_t)n;
            ids = realloc(ids, ids_cap * sizeof *ids);
            if (!ids) { fprintf(stderr, "out of memory\n"); return 1; }
            n = tok_encode(v, text, len, bos, special, ids, (int64_t)ids_cap);
        }
        if (n < 0) { fprintf(stderr, "tok_encode: %s\n", tok_strerror(n)); rc = 1; break; }
        for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        int64_t dl = tok_decode(v, ids, n, true, dec, (int64_t)dec_cap);
        if (dl + 1 > (int64_t)dec_cap) {
            dec_cap = (size_t)dl + 1;
            dec = realloc(dec, dec_cap);
            if (!dec) { fprintf(stderr, "out of memory\n"); return 1; }
            dl = tok_decode(v, ids, n, true, dec, (int64_t)dec_cap);
        }
        putchar('\t');
        for (int64_t i = 0; i < dl; i++) printf("%02x", (unsigned char)dec[i]);
        putchar('\n');
    }
    fflush(stdout);
    free(text);
    free(ids);
    free(dec);
    tok_free(v);
    return rc;
}
