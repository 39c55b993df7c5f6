/* Regexes and character sets as grammar sequences: code point ranges become UTF-8 byte
 * sequences (the split of Rust's regex-syntax Utf8Sequences), optionally as written inside a
 * JSON string, and a recursive-descent parser for the common regex subset (gram_from_regex and
 * JSON schema "pattern"/"format"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gram_int.h"

void crs_add(gbuild *b, gram_crs *s, uint32_t lo, uint32_t hi) {
    if (b->failed || lo > hi) return;
    if (s->n == s->cap) {
        int c = s->cap ? s->cap * 2 : 8;
        gram_cr *r = realloc(s->r, (size_t)c * sizeof *r);
        if (!r) { gb_fail(b, "out of memory"); return; }
        s->r = r;
        s->cap = c;
    }
    s->r[s->n++] = (gram_cr){lo, hi};
}

static int cmp_cr(const void *a, const void *b) {
    const gram_cr *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

void crs_norm(gram_crs *s) {
    if (!s->n) return;
    qsort(s->r, (size_t)s->n, sizeof *s->r, cmp_cr);
    int k = 0;
    for (int i = 1; i < s->n; i++) {
        if (s->r[i].lo <= s->r[k].hi + 1) { if (s->r[i].hi > s->r[k].hi) s->r[k].hi = s->r[i].hi; }
        else s->r[++k] = s->r[i];
    }
    s->n = k + 1;
}

void crs_negate(gbuild *b, gram_crs *s) {
    crs_norm(s);
    gram_crs o = {0};
    uint32_t next = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->r[i].lo > next) crs_add(b, &o, next, s->r[i].lo - 1);
        next = s->r[i].hi + 1;
    }
    if (next <= 0x10FFFF) crs_add(b, &o, next, 0x10FFFF);
    free(s->r);
    *s = o;
}

static int utf8_enc(uint32_t c, uint8_t *o) {
    if (c < 0x80) { o[0] = (uint8_t)c; return 1; }
    if (c < 0x800) { o[0] = (uint8_t)(0xC0 | c >> 6); o[1] = (uint8_t)(0x80 | (c & 63)); return 2; }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | c >> 12); o[1] = (uint8_t)(0x80 | (c >> 6 & 63)); o[2] = (uint8_t)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | c >> 18); o[1] = (uint8_t)(0x80 | (c >> 12 & 63));
    o[2] = (uint8_t)(0x80 | (c >> 6 & 63)); o[3] = (uint8_t)(0x80 | (c & 63));
    return 4;
}

typedef struct { gseq *v; int n, cap; } alts_t;

static void alts_push(gbuild *b, alts_t *a, gseq s) {
    if (a->n == a->cap) {
        int c = a->cap ? a->cap * 2 : 8;
        gseq *v = realloc(a->v, (size_t)c * sizeof *v);
        if (!v) { gb_fail(b, "out of memory"); sq_free(&s); return; }
        a->v = v;
        a->cap = c;
    }
    a->v[a->n++] = s;
}
static void alts_free(alts_t *a) { for (int i = 0; i < a->n; i++) sq_free(&a->v[i]); free(a->v); }

/* Multi-byte range [lo, hi] (no surrogates, one encoded length) as byte-set sequences. */
static void utf8_seqs(gbuild *b, alts_t *out, uint32_t lo, uint32_t hi, int depth) {
    static const uint32_t lim[] = {0x7F, 0x7FF, 0xFFFF};
    if (b->failed || depth > 64) return;
    for (int i = 0; i < 3; i++)
        if (lo <= lim[i] && hi > lim[i]) {
            utf8_seqs(b, out, lo, lim[i], depth + 1);
            utf8_seqs(b, out, lim[i] + 1, hi, depth + 1);
            return;
        }
    uint8_t a[4], z[4];
    int n = utf8_enc(lo, a);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if (lo & m) { utf8_seqs(b, out, lo, lo | m, depth + 1); utf8_seqs(b, out, (lo | m) + 1, hi, depth + 1); return; }
            if ((hi & m) != m) { utf8_seqs(b, out, lo, (hi & ~m) - 1, depth + 1); utf8_seqs(b, out, hi & ~m, hi, depth + 1); return; }
        }
    }
    utf8_enc(hi, z);
    gseq s = {0};
    for (int i = 0; i < n; i++) {
        gram_cs c = {{0}};
        cs_range(&c, a[i], z[i]);
        sq_cs(b, &s, &c);
    }
    alts_push(b, out, s);
}

void sq_chars(gbuild *b, gseq *out, const gram_crs *set, bool json) {
    alts_t alts = {0};
    gram_cs ascii = {{0}};
    bool any_ascii = false;
    for (int i = 0; i < set->n && !b->failed; i++) {
        uint32_t lo = set->r[i].lo, hi = set->r[i].hi > 0x10FFFF ? 0x10FFFF : set->r[i].hi;
        for (uint32_t c = lo; c <= hi && c < 0x80; c++) {
            if (json && (c < 0x20 || c == '"' || c == '\\')) {
                static const char *hex = "0123456789abcdef";
                char e[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
                const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\t' ? "\\t" :
                                  c == '\r' ? "\\r" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : e;
                gseq s = {0};
                sq_lit(b, &s, esc, strlen(esc));
                alts_push(b, &alts, s);
            } else {
                cs_add(&ascii, (int)c);
                any_ascii = true;
            }
        }
        if (hi < 0x80) continue;
        if (lo < 0x80) lo = 0x80;
        /* surrogates are not characters */
        if (lo < 0xD800 && hi >= 0xD800) { utf8_seqs(b, &alts, lo, 0xD7FF, 0); lo = 0xE000; }
        else if (lo >= 0xD800 && lo <= 0xDFFF) lo = 0xE000;
        if (lo <= hi) utf8_seqs(b, &alts, lo, hi, 0);
    }
    if (any_ascii) {
        gseq s = {0};
        sq_cs(b, &s, &ascii);
        alts_push(b, &alts, s);
    }
    if (!alts.n) { gram_cs none = {{0}}; sq_cs(b, out, &none); } /* matches nothing */
    else sq_alts(b, out, alts.v, alts.n);
    alts_free(&alts);
}

/* ---------------- regex parser ---------------- */

typedef struct {
    gbuild *b;
    const char *s;
    size_t n, i;
    bool json;
    const char *where;
    int depth;
} rx;

static void rx_fail(rx *p, const char *what) { gb_fail(p->b, "%s: %s at position %zu", p->where, what, p->i); }

/* One UTF-8 character at p->i (invalid UTF-8 is an error). */
static uint32_t rx_char(rx *p) {
    const uint8_t *u = (const uint8_t *)p->s + p->i;
    size_t left = p->n - p->i;
    uint32_t c = u[0];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || (size_t)len > left) { rx_fail(p, "invalid UTF-8"); return 0; }
    if (len > 1) {
        c &= 0x3F >> (len - 1);
        for (int k = 1; k < len; k++) {
            if ((u[k] & 0xC0) != 0x80) { rx_fail(p, "invalid UTF-8"); return 0; }
            c = c << 6 | (u[k] & 63);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) { rx_fail(p, "invalid UTF-8"); return 0; }
    }
    p->i += (size_t)len;
    return c;
}

static int hexv(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void add_class(rx *p, gram_crs *s, int k) {
    gbuild *b = p->b;
    gram_crs t = {0};
    int lk = k | 32;
    if (lk == 'd') crs_add(b, &t, '0', '9');
    else if (lk == 'w') { crs_add(b, &t, '0', '9'); crs_add(b, &t, 'A', 'Z'); crs_add(b, &t, 'a', 'z'); crs_add(b, &t, '_', '_'); }
    else { crs_add(b, &t, ' ', ' '); crs_add(b, &t, '\t', '\r'); }
    if (k < 'a') crs_negate(b, &t);
    for (int i = 0; i < t.n; i++) crs_add(b, s, t.r[i].lo, t.r[i].hi);
    free(t.r);
}

/* After a backslash: a class escape goes into cls (returns -1), else the code point. */
static int64_t rx_escape(rx *p, gram_crs *cls) {
    if (p->i >= p->n) { rx_fail(p, "trailing backslash"); return 0; }
    int c = (unsigned char)p->s[p->i];
    switch (c) {
    case 'd': case 'D': case 'w': case 'W': case 's': case 'S':
        p->i++;
        add_class(p, cls, c);
        return -1;
    case 'n': p->i++; return '\n';
    case 't': p->i++; return '\t';
    case 'r': p->i++; return '\r';
    case 'f': p->i++; return '\f';
    case 'v': p->i++; return '\v';
    case '0': p->i++; return 0;
    case 'x': case 'u': {
        int nd = c == 'x' ? 2 : 4;
        uint32_t v = 0;
        p->i++;
        for (int k = 0; k < nd; k++) {
            int h = p->i < p->n ? hexv((unsigned char)p->s[p->i]) : -1;
            if (h < 0) { rx_fail(p, "bad hex escape"); return 0; }
            v = v * 16 + (uint32_t)h;
            p->i++;
        }
        if (v >= 0xD800 && v <= 0xDFFF) { rx_fail(p, "surrogate escape"); return 0; }
        return v;
    }
    default:
        if (c < 0x80 && !((c | 32) >= 'a' && (c | 32) <= 'z') && !(c >= '0' && c <= '9')) { p->i++; return c; }
        rx_fail(p, "unsupported escape");
        return 0;
    }
}

static void rx_alt(rx *p, gseq *out);

static void rx_class(rx *p, gseq *out) {
    gbuild *b = p->b;
    gram_crs set = {0};
    bool neg = false;
    p->i++; /* '[' */
    if (p->i < p->n && p->s[p->i] == '^') neg = true, p->i++;
    bool first = true;
    while (!b->failed) {
        if (p->i >= p->n) { rx_fail(p, "unterminated class"); break; }
        if (p->s[p->i] == ']' && !first) { p->i++; break; }
        first = false;
        int64_t lo;
        if (p->s[p->i] == '\\') { p->i++; lo = rx_escape(p, &set); }
        else lo = rx_char(p);
        if (lo < 0 || b->failed) continue;
        int64_t hi = lo;
        if (p->i + 1 < p->n && p->s[p->i] == '-' && p->s[p->i + 1] != ']') {
            p->i++;
            if (p->s[p->i] == '\\') { p->i++; hi = rx_escape(p, &set); if (hi < 0) { rx_fail(p, "class in a range"); break; } }
            else hi = rx_char(p);
            if (hi < lo) { rx_fail(p, "range out of order"); break; }
        }
        crs_add(b, &set, (uint32_t)lo, (uint32_t)hi);
    }
    if (neg) crs_negate(b, &set);
    crs_norm(&set);
    sq_chars(b, out, &set, p->json);
    free(set.r);
}

static bool rx_num(rx *p, int *v) {
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') return false;
    long x = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        x = x * 10 + (p->s[p->i++] - '0');
        if (x > GB_MAX_REP) x = GB_MAX_REP + 1;
    }
    *v = (int)x;
    return true;
}

static void rx_concat(rx *p, gseq *out) {
    gbuild *b = p->b;
    while (!b->failed && p->i < p->n && p->s[p->i] != '|' && p->s[p->i] != ')') {
        gseq atom = {0};
        const size_t at = p->i;
        int c = (unsigned char)p->s[p->i];
        if (c == '(') {
            p->i++;
            if (p->i + 1 < p->n && p->s[p->i] == '?' && p->s[p->i + 1] == ':') p->i += 2;
            else if (p->i < p->n && p->s[p->i] == '?') { rx_fail(p, "unsupported group"); break; }
            if (++p->depth > 100) { rx_fail(p, "nested too deep"); break; }
            rx_alt(p, &atom);
            p->depth--;
            if (p->i >= p->n || p->s[p->i] != ')') { if (!b->failed) rx_fail(p, "missing )"); sq_free(&atom); break; }
            p->i++;
        } else if (c == '[') {
            rx_class(p, &atom);
        } else if (c == '.') {
            p->i++;
            gram_crs s = {0};
            crs_add(b, &s, '\n', '\n');
            crs_negate(b, &s);
            sq_chars(b, &atom, &s, p->json);
            free(s.r);
        } else if (c == '^' || c == '$') {
            /* anchors are implied: allowed only where they change nothing */
            if ((c == '^' && at != 0) || (c == '$' && at + 1 != p->n)) { rx_fail(p, "anchor inside the regex"); break; }
            p->i++;
            continue;
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            rx_fail(p, "nothing to repeat");
            break;
        } else {
            gram_crs s = {0};
            int64_t v;
            if (c == '\\') { p->i++; v = rx_escape(p, &s); }
            else v = rx_char(p);
            if (v >= 0) crs_add(b, &s, (uint32_t)v, (uint32_t)v);
            crs_norm(&s);
            if (!b->failed) sq_chars(b, &atom, &s, p->json);
            free(s.r);
        }
        int min = 1, max = 1;
        if (p->i < p->n) {
            int q = (unsigned char)p->s[p->i];
            if (q == '*') min = 0, max = -1, p->i++;
            else if (q == '+') min = 1, max = -1, p->i++;
            else if (q == '?') min = 0, max = 1, p->i++;
            else if (q == '{') {
                size_t save = p->i++;
                if (!rx_num(p, &min)) { p->i = save; rx_fail(p, "bad {m,n}"); sq_free(&atom); break; }
                max = min;
                if (p->i < p->n && p->s[p->i] == ',') {
                    p->i++;
                    if (!rx_num(p, &max)) max = -1;
                }
                if (p->i >= p->n || p->s[p->i] != '}') { rx_fail(p, "bad {m,n}"); sq_free(&atom); break; }
                p->i++;
                if (max >= 0 && max < min) { rx_fail(p, "bad {m,n}: max < min"); sq_free(&atom); break; }
                if (min > GB_MAX_REP || max > GB_MAX_REP) { rx_fail(p, "repetition count over 1000"); sq_free(&atom); break; }
            }
            if (p->i < p->n && p->s[p->i] == '?' && !(min == 1 && max == 1)) p->i++; /* lazy: same language */
            if (p->i < p->n && (p->s[p->i] == '*' || p->s[p->i] == '+' || p->s[p->i] == '{') && !(min == 1 && max == 1)) {
                rx_fail(p, "nested quantifier");
                sq_free(&atom);
                break;
            }
        }
        sq_rep(b, out, &atom, min, max);
        sq_free(&atom);
    }
}

static void rx_alt(rx *p, gseq *out) {
    alts_t alts = {0};
    for (;;) {
        gseq s = {0};
        rx_concat(p, &s);
        alts_push(p->b, &alts, s);
        if (p->b->failed || p->i >= p->n || p->s[p->i] != '|') break;
        p->i++;
    }
    if (!p->b->failed) sq_alts(p->b, out, alts.v, alts.n);
    alts_free(&alts);
}

void gram_regex_seq(gbuild *b, gseq *out, const char *re, size_t len, bool json, const char *where) {
    rx p = {b, re, len, 0, json, where, 0};
    rx_alt(&p, out);
    if (!b->failed && p.i < p.n) rx_fail(&p, "unmatched )");
}

gram *gram_from_regex(const char *re, size_t len, char *err, size_t errlen) {
    gbuild b;
    gb_init(&b, err, errlen);
    if (!re && len) { gb_fail(&b, "regex: NULL"); gb_free(&b); return NULL; }
    gseq s = {0};
    gram_regex_seq(&b, &s, re ? re : "", len, false, "regex");
    int r = gb_rule(&b);
    gb_add_alt(&b, r, &s);
    sq_free(&s);
    return gb_finish(&b, r);
}
