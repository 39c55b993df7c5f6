/* The strict UTF-8 of text handed out (tok.h: tok_utf8_len, tok_utf8_clean, tok_utf8_cut),
 * against a reference built from code points: a sequence is one character when it is the
 * shortest encoding (unicode_encode) of a code point that is not a surrogate, as the lenient
 * decoder (unicode_decode) reads it. Every 1-, 2- and 3-byte sequence and a sweep of 4-byte ones;
 * hand-checked cleanings (invalid bytes, truncated sequences, overlong forms, surrogates, values
 * past U+10FFFF, NUL); and text arriving in chunks that split multi-byte characters anywhere:
 * cut where tok_utf8_cut says and cleaned piece by piece, it reads as the whole text cleaned at
 * once, and no piece but the last ends inside a well-formed character. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "tok.h"
#include "unicode.h"

/* The reference: length of the character at s[0, n), or 0. */
static size_t ref_len(const uint8_t *s, size_t n) {
    size_t adv;
    const uint32_t cp = unicode_decode(s, n, &adv);
    if (s[0] >= 0x80 && adv == 1) return 0; /* the decoder's "invalid" */
    uint8_t enc[4];
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    return unicode_encode(cp, enc) == adv && !memcmp(enc, s, adv) ? adv : 0;
}

/* Every sequence of n bytes whose first bytes are prefix[0, np) and whose other bytes take the
 * values in tail[0, nt): tok_utf8_len against the reference. Returns the mismatches. */
static int sweep(const uint8_t *prefix, size_t np, size_t n, const uint8_t *tail, size_t nt) {
    uint8_t s[4];
    memcpy(s, prefix, np);
    size_t idx[4] = {0};
    int bad = 0;
    for (;;) {
        for (size_t i = np; i < n; i++) s[i] = tail[idx[i]];
        const size_t got = tok_utf8_len((const char *)s, n), want = ref_len(s, n);
        if (got != want && bad++ < 5)
            fprintf(stderr, "  %zu bytes %02x %02x %02x %02x: %zu, reference %zu\n", n, s[0], n > 1 ? s[1] : 0,
                    n > 2 ? s[2] : 0, n > 3 ? s[3] : 0, got, want);
        size_t i = n;
        while (i > np && ++idx[i - 1] == nt) idx[--i] = 0;
        if (i == np) return bad;
    }
}

static void test_len(void) {
    uint8_t all[256];
    for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        const uint8_t p = (uint8_t)b;
        bad += sweep(&p, 1, 1, all, 256) + sweep(&p, 1, 2, all, 256) + sweep(&p, 1, 3, all, 256);
        /* 4 bytes: every second byte, and the continuation edges for the last two */
        static const uint8_t edge[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0xBF, 0xC0, 0xFF};
        for (int c = 0; c < 256; c++) {
            const uint8_t p2[2] = {p, (uint8_t)c};
            bad += sweep(p2, 2, 4, edge, sizeof edge);
        }
    }
    CHECK(bad == 0, "%d sequences classified unlike the reference", bad);
    CHECK(tok_utf8_len("", 0) == 0, "nothing at n 0");
    CHECK(tok_utf8_len("\xe2\x82\xac", 2) == 0 && tok_utf8_len("\xe2\x82\xac", 3) == 3, "cut short by n");
    CHECK(tok_utf8_len("\0", 1) == 1, "NUL is a character");
}

/* tok_utf8_clean(in) == want (want NUL-terminated; in of n bytes). */
static int clean_is(const char *in, size_t n, const char *want) {
    char *c = tok_utf8_clean(in, n);
    const int ok = c && !strcmp(c, want);
    if (!ok) fprintf(stderr, "  clean: got \"%s\", want \"%s\"\n", c ? c : "(null)", want);
    free(c);
    return ok;
}
#define CLEAN_IS(lit, want) clean_is(lit, sizeof(lit) - 1, want)
#define R "\xEF\xBF\xBD" /* U+FFFD */

static void test_clean(void) {
    CHECK(CLEAN_IS("", ""), "empty");
    CHECK(CLEAN_IS("abc \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 " R, "abc \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 " R),
          "valid text unchanged (2-, 3-, 4-byte characters, U+FFFD itself)");
    CHECK(CLEAN_IS("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"), "U+10FFFF kept");
    CHECK(CLEAN_IS("a\xff" "b\xfe", "a" R "b" R), "bytes no character starts with");
    CHECK(CLEAN_IS("\x80\xbf", R R), "stray continuation bytes");
    CHECK(CLEAN_IS("a\xc3", "a" R), "truncated at the end");
    CHECK(CLEAN_IS("\xe2\x82x", R R "x"), "truncated by a wrong byte");
    CHECK(CLEAN_IS("\xf0\x9f\x98", R R R), "4-byte character cut short");
    CHECK(CLEAN_IS("\xc0\xaf\xc1\xbf", R R R R), "overlong 2-byte forms");
    CHECK(CLEAN_IS("\xe0\x80\xaf", R R R), "overlong 3-byte form");
    CHECK(CLEAN_IS("\xf0\x80\x80\xaf", R R R R), "overlong 4-byte form");
    CHECK(CLEAN_IS("\xed\xa0\x80\xed\xbf\xbf", R R R R R R), "surrogates");
    CHECK(CLEAN_IS("\xed\x9f\xbf\xee\x80\x80", "\xed\x9f\xbf\xee\x80\x80"), "U+D7FF and U+E000 kept");
    CHECK(CLEAN_IS("\xf4\x90\x80\x80\xf5\x80\x80\x80", R R R R R R R R), "past U+10FFFF");
    CHECK(clean_is("a\0b", 3, "a" R "b"), "NUL replaced");
}

/* Text from an alphabet of whole characters, their pieces and invalid bytes, arriving in random
 * chunks: the pieces tok_utf8_cut releases, cleaned one by one, read as the text cleaned whole. */
static void test_stream(void) {
    static const char *units[] = {"a", " ", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xc3", "\xe2\x82",
                                  "\xf0\x9f", "\x80", "\xff", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80"};
    const int n_units = (int)(sizeof units / sizeof units[0]);
    int bad_text = 0, bad_cut = 0;
    for (int t = 0; t < 2000; t++) {
        char s[256], out[1024];
        size_t n = 0, no = 0;
        for (int i = 1 + rng_int(30); i > 0; i--) {
            const char *u = units[rng_int(n_units)];
            memcpy(s + n, u, strlen(u));
            n += strlen(u);
        }
        size_t sent = 0, arrived = 0;
        while (sent < n) {
            const bool last = arrived == n;
            size_t end = last ? n : tok_utf8_cut(s, sent, arrived);
            /* a piece may not end inside a well-formed character */
            for (size_t q = end > 3 ? end - 3 : 0; !last && q < end; q++) {
                const size_t l = tok_utf8_len(s + q, n - q);
                if (l > 1 && q + l > end) bad_cut++;
            }
            if (end > sent) {
                char *c = tok_utf8_clean(s + sent, end - sent);
                memcpy(out + no, c, strlen(c));
                no += strlen(c);
                free(c);
                sent = end;
            }
            const size_t k = 1 + (size_t)rng_int(4);
            if (!last) arrived += k < n - arrived ? k : n - arrived;
        }
        out[no] = 0;
        char *whole = tok_utf8_clean(s, n);
        bad_text += strcmp(out, whole) != 0;
        free(whole);
    }
    CHECK(bad_text == 0, "%d of 2000 streams read unlike the text cleaned whole", bad_text);
    CHECK(bad_cut == 0, "%d cuts inside a character", bad_cut);
    /* by hand: "é" split after its lead byte waits; an invalid lead does not */
    CHECK(tok_utf8_cut("x\xc3", 0, 2) == 1 && tok_utf8_cut("x\xc3\xa9", 0, 3) == 3, "a split 2-byte character");
    CHECK(tok_utf8_cut("\xf0\x9f\x98", 0, 3) == 0 && tok_utf8_cut("\xf0\x9f\x98", 1, 3) == 3, "from start on");
    CHECK(tok_utf8_cut("x\xff", 0, 2) == 2 && tok_utf8_cut("x\x80", 0, 2) == 2, "invalid bytes go out");
}

int main(void) {
    test_len();
    test_clean();
    test_stream();
    return check_summary("test_unicode");
}
