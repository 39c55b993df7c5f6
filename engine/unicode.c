/* Unicode helpers: see unicode.h; and the strict UTF-8 validation and sanitizing of text handed
 * out (tok_utf8_*, declared in tok.h). All functions are pure and thread-safe; the byte-level map
 * is computed arithmetically, the class table is a binary search over ~1500 sorted runs. */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

#include "tok.h"

unsigned unicode_class(uint32_t cp) {
    if (cp > 0x10FFFF) return 0;
    size_t lo = 0, hi = unicode_n_runs; /* invariant: runs[lo].first <= cp < runs[hi].first */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (unicode_runs[mid].first <= cp) lo = mid;
        else hi = mid;
    }
    return unicode_runs[lo].cls;
}

uint32_t unicode_decode(const uint8_t *s, size_t n, size_t *adv) {
    uint8_t b = s[0];
    uint32_t cp;
    size_t len;
    if (b < 0x80) { *adv = 1; return b; }
    if (b < 0xC0 || b >= 0xF8) goto invalid;   /* stray continuation byte or 5+ byte lead */
    if (b < 0xE0) { len = 2; cp = b & 0x1F; }
    else if (b < 0xF0) { len = 3; cp = b & 0x0F; }
    else { len = 4; cp = b & 0x07; }
    if (len > n) goto invalid;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) goto invalid;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp > 0x10FFFF) goto invalid;
    *adv = len;
    return cp;
invalid:
    *adv = 1;
    return 0xFFFD;
}

size_t unicode_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static int byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

/* Number of non-printable bytes below b: they are numbered in order from U+0100. */
static unsigned nonprintable_rank(unsigned b) {
    if (b <= 0x20) return b;                 /* 0x00..0x20: 33 bytes */
    if (b <= 0xA0) return 33 + (b - 0x7F);   /* 0x7F..0xA0: 34 bytes */
    return 67;                               /* 0xAD */
}

uint32_t unicode_byte_to_cpt(uint8_t b) {
    return byte_is_printable(b) ? b : 0x100 + nonprintable_rank(b);
}

int unicode_cpt_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp > 0x143) return -1;
    unsigned r = cp - 0x100;
    if (r < 33) return (int)r;
    if (r < 67) return (int)(0x7F + (r - 33));
    return 0xAD;
}

/* ---- strict UTF-8 (RFC 3629) ---- */

/* Bytes of the character a lead byte starts (1..4); 0 for a continuation byte and for
 * 0xF8..0xFF, which start none. */
static size_t strict_lead_len(uint8_t c) {
    return c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
}

size_t tok_utf8_len(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    const size_t len = n ? strict_lead_len(u[0]) : 0;
    if (!len || len > n) return 0;
    uint32_t cp = len == 1 ? u[0] : len == 2 ? u[0] & 0x1Fu : len == 3 ? u[0] & 0x0Fu : u[0] & 0x07u;
    for (size_t k = 1; k < len; k++) {
        if ((u[k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (u[k] & 0x3Fu);
    }
    /* overlong forms, surrogates and values past U+10FFFF */
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
        return 0;
    return len;
}

char *tok_utf8_clean(const char *s, size_t n) {
    char *out = malloc(3 * n + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        const size_t len = s[i] ? tok_utf8_len(s + i, n - i) : 0;
        if (len) {
            memcpy(o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    *o = 0;
    return out;
}

size_t tok_utf8_cut(const char *s, size_t start, size_t end) {
    for (size_t i = end, k = 0; i > start && k < 4; i--, k++) {
        const uint8_t c = (uint8_t)s[i - 1];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        const size_t need = strict_lead_len(c) ? strict_lead_len(c) : 1;
        return end - (i - 1) < need ? i - 1 : end;
    }
    return end;
}
