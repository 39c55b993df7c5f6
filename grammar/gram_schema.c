/* JSON schemas (and "any JSON object") as grammars. The schema text is parsed with cJSON here
 * and nowhere past this file: what leaves is a gram. One rule per $ref target, so recursive
 * schemas stay finite; object properties follow the schema's order, the optional ones each
 * skippable (two rules per property: before and after the first one written). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gram_int.h"

enum { SCH_MAX_DEPTH = 64, SCH_MAX_REFS = 4096 };

/* ---------------- generic JSON pieces ---------------- */

/* Nothing, one space, or a newline and up to 20 spaces/tabs. */
static void json_ws(gbuild *b, gseq *s) {
    if (b->r_ws < 0 && !b->failed) {
        int r = gb_rule(b);
        b->r_ws = r;
        gseq e = {0}, sp = {0}, nl = {0}, ind = {0};
        gram_cs c = {{0}};
        cs_add(&c, ' '); cs_add(&c, '\t');
        sq_cs(b, &ind, &c);
        sq_byte(b, &sp, ' ');
        sq_byte(b, &nl, '\n');
        sq_rep(b, &nl, &ind, 0, 20);
        gb_add_alt(b, r, &e); gb_add_alt(b, r, &sp); gb_add_alt(b, r, &nl);
        sq_free(&sp); sq_free(&nl); sq_free(&ind);
    }
    sq_ref(b, s, b->r_ws);
}

/* Nothing or one space: around ':' and before ','. JSON allows any whitespace there, but no
 * formatter writes a line break there, and a small model that starts to ramble in whitespace
 * at those places rarely finds its way back before max_tokens. */
static void json_ws_inline(gbuild *b, gseq *s) {
    if (b->r_wsi < 0 && !b->failed) {
        int r = gb_rule(b);
        b->r_wsi = r;
        gseq e = {0}, sp = {0};
        sq_byte(b, &sp, ' ');
        gb_add_alt(b, r, &e); gb_add_alt(b, r, &sp);
        sq_free(&sp);
    }
    sq_ref(b, s, b->r_wsi);
}

/* One character of a JSON string's content, as written. */
static int json_char_rule(gbuild *b) {
    if (b->r_char >= 0 || b->failed) return b->r_char;
    int r = b->r_char = gb_rule(b);
    gseq a = {0};
    gram_cs c = {{0}};
    cs_range(&c, 0x20, 0x7f);
    c.w['"' >> 6] &= ~(1ull << ('"' & 63));
    c.w['\\' >> 6] &= ~(1ull << ('\\' & 63));
    sq_cs(b, &a, &c);
    gb_add_alt(b, r, &a);
    a.n = 0;
    gram_crs mb = {0};
    crs_add(b, &mb, 0x80, 0x10FFFF);
    sq_chars(b, &a, &mb, false);
    free(mb.r);
    gb_add_alt(b, r, &a);
    a.n = 0;
    gram_cs e = {{0}};
    for (const char *p = "\"\\/bfnrt"; *p; p++) cs_add(&e, *p);
    sq_byte(b, &a, '\\');
    sq_cs(b, &a, &e);
    gb_add_alt(b, r, &a);
    a.n = 0;
    gram_cs h = {{0}};
    cs_range(&h, '0', '9'); cs_range(&h, 'a', 'f'); cs_range(&h, 'A', 'F');
    sq_lit(b, &a, "\\u", 2);
    for (int i = 0; i < 4; i++) sq_cs(b, &a, &h);
    gb_add_alt(b, r, &a);
    sq_free(&a);
    return r;
}

/* A string of min..max characters (max < 0: unbounded). */
static void json_string(gbuild *b, gseq *s, int min, int max) {
    if (min == 0 && max == -1) {
        if (b->r_string < 0 && !b->failed) {
            int r = b->r_string = gb_rule(b);
            gseq a = {0};
            json_string(b, &a, 0, -2);
            gb_add_alt(b, r, &a);
            sq_free(&a);
        }
        sq_ref(b, s, b->r_string);
        return;
    }
    if (max == -2) max = -1;
    gseq ch = {0};
    sq_ref(b, &ch, json_char_rule(b));
    sq_byte(b, s, '"');
    sq_rep(b, s, &ch, min, max);
    sq_byte(b, s, '"');
    sq_free(&ch);
}

static void digits(gbuild *b, gseq *s, int lo_digit, int min, int max) {
    gram_cs c = {{0}};
    cs_range(&c, lo_digit, '9');
    gseq d = {0};
    sq_cs(b, &d, &c);
    sq_rep(b, s, &d, min, max);
    sq_free(&d);
}

static void json_int_part(gbuild *b, gseq *s) {
    gseq neg = {0}, alts[2] = {{0}, {0}};
    sq_byte(b, &neg, '-');
    sq_rep(b, s, &neg, 0, 1);
    sq_byte(b, &alts[0], '0');
    digits(b, &alts[1], '1', 1, 1);
    digits(b, &alts[1], '0', 0, 15);
    sq_alts(b, s, alts, 2);
    sq_free(&neg); sq_free(&alts[0]); sq_free(&alts[1]);
}

static void json_number(gbuild *b, gseq *s, bool integer) {
    json_int_part(b, s);
    if (integer) return;
    gseq frac = {0}, ex = {0}, sign = {0};
    sq_byte(b, &frac, '.');
    digits(b, &frac, '0', 1, 16);
    sq_rep(b, s, &frac, 0, 1);
    gram_cs e = {{0}}, pm = {{0}};
    cs_add(&e, 'e'); cs_add(&e, 'E'); cs_add(&pm, '+'); cs_add(&pm, '-');
    sq_cs(b, &ex, &e);
    sq_cs(b, &sign, &pm);
    sq_rep(b, &ex, &sign, 0, 1);
    digits(b, &ex, '0', 1, 3);
    sq_rep(b, s, &ex, 0, 1);
    sq_free(&frac); sq_free(&ex); sq_free(&sign);
}

static void json_value(gbuild *b, gseq *s);

typedef struct { gseq *v; int n, cap; } alts_t_;
static void int_alt_push(gbuild *b, alts_t_ *a, gseq s) {
    if (a->n == a->cap) {
        int c = a->cap ? a->cap * 2 : 8;
        gseq *v = realloc(a->v, (size_t)c * sizeof *v);
        if (!v) { gb_fail(b, "out of memory"); sq_free(&s); return; }
        a->v = v;
        a->cap = c;
    }
    a->v[a->n++] = s;
}
static void int_alts_free(alts_t_ *a) { for (int i = 0; i < a->n; i++) sq_free(&a->v[i]); free(a->v); }

/* { ws (string ws : ws value (ws , ws string ws : ws value)*)? ws } with any values */
static void json_object(gbuild *b, gseq *s) {
    if (b->r_object < 0 && !b->failed) {
        int r = b->r_object = gb_rule(b);
        gseq a = {0}, kv = {0}, more = {0}, list = {0};
        json_string(b, &kv, 0, -1);
        json_ws_inline(b, &kv); sq_byte(b, &kv, ':'); json_ws_inline(b, &kv);
        json_value(b, &kv);
        json_ws_inline(b, &more); sq_byte(b, &more, ','); json_ws(b, &more);
        sq_cat(b, &more, &kv);
        sq_cat(b, &list, &kv);
        sq_rep(b, &list, &more, 0, -1);
        json_ws(b, &list);
        sq_byte(b, &a, '{');
        json_ws(b, &a);
        sq_rep(b, &a, &list, 0, 1);
        sq_byte(b, &a, '}');
        gb_add_alt(b, r, &a);
        sq_free(&a); sq_free(&kv); sq_free(&more); sq_free(&list);
    }
    sq_ref(b, s, b->r_object);
}

static void json_array_of(gbuild *b, gseq *s, const gseq *item, int min, int max) {
    sq_byte(b, s, '[');
    json_ws(b, s);
    if (max != 0) {
        gseq list = {0}, more = {0};
        json_ws_inline(b, &more); sq_byte(b, &more, ','); json_ws(b, &more);
        sq_cat(b, &more, item);
        sq_cat(b, &list, item);
        sq_rep(b, &list, &more, min > 0 ? min - 1 : 0, max < 0 ? -1 : max - 1);
        json_ws(b, &list);
        sq_rep(b, s, &list, min > 0 ? 1 : 0, 1);
        sq_free(&list); sq_free(&more);
    }
    sq_byte(b, s, ']');
}

static void json_value(gbuild *b, gseq *s) {
    if (b->r_value < 0 && !b->failed) {
        int r = b->r_value = gb_rule(b);
        gseq a = {0}, item = {0};
        json_object(b, &a); gb_add_alt(b, r, &a); a.n = 0;
        sq_ref(b, &item, r);
        json_array_of(b, &a, &item, 0, -1); gb_add_alt(b, r, &a); a.n = 0;
        json_string(b, &a, 0, -1); gb_add_alt(b, r, &a); a.n = 0;
        json_number(b, &a, false); gb_add_alt(b, r, &a); a.n = 0;
        for (const char *const *w = (const char *const[]){"true", "false", "null", NULL}; *w; w++) {
            sq_lit(b, &a, *w, strlen(*w));
            gb_add_alt(b, r, &a);
            a.n = 0;
        }
        sq_free(&a); sq_free(&item);
    }
    sq_ref(b, s, b->r_value);
}

gram *gram_json_object(void) {
    gbuild b;
    gb_init(&b, NULL, 0);
    gseq s = {0};
    json_object(&b, &s);
    int r = gb_rule(&b);
    gb_add_alt(&b, r, &s);
    sq_free(&s);
    return gb_finish(&b, r);
}

/* ---------------- schemas ---------------- */

typedef struct {
    gbuild *b;
    const cJSON *root;
    struct { char *ref; int rule; } *refs;
    int n_refs;
} sch;

static void sch_value(sch *c, const cJSON *s, const char *path, int depth, gseq *out);

static void path_join(char *dst, size_t n, const char *path, const char *a, const char *k) {
    snprintf(dst, n, "%s/%s%s%s", path, a, k ? "/" : "", k ? k : "");
}

static int get_count(sch *c, const cJSON *s, const char *key, const char *path, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!v) return def;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != (double)(long)v->valuedouble) {
        gb_fail(c->b, "json_schema: '%s' must be a non-negative integer at %s", key, path[0] ? path : "/");
        return def;
    }
    if (v->valuedouble > GB_MAX_REP) {
        gb_fail(c->b, "json_schema: '%s' over %d at %s", key, GB_MAX_REP, path[0] ? path : "/");
        return def;
    }
    return (int)v->valuedouble;
}

static const cJSON *resolve(sch *c, const char *ref, const char *path) {
    if (ref[0] != '#') { gb_fail(c->b, "json_schema: only local $ref ('#...') supported, got '%.60s' at %s", ref, path); return NULL; }
    const cJSON *cur = c->root;
    const char *p = ref + 1;
    while (*p && cur) {
        if (*p != '/') { gb_fail(c->b, "json_schema: bad $ref '%.60s' at %s", ref, path); return NULL; }
        p++;
        char tok[256];
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof tok) {
            if (p[0] == '~' && p[1] == '1') tok[n++] = '/', p += 2;
            else if (p[0] == '~' && p[1] == '0') tok[n++] = '~', p += 2;
            else tok[n++] = *p++;
        }
        tok[n] = 0;
        if (cJSON_IsArray(cur)) cur = cJSON_GetArrayItem(cur, atoi(tok));
        else cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    }
    if (!cur) gb_fail(c->b, "json_schema: $ref '%.60s' not found at %s", ref, path);
    return cur;
}

static void sch_ref(sch *c, const char *ref, const char *path, int depth, gseq *out) {
    for (int i = 0; i < c->n_refs; i++)
        if (!strcmp(c->refs[i].ref, ref)) { sq_ref(c->b, out, c->refs[i].rule); return; }
    const cJSON *t = resolve(c, ref, path);
    if (!t) return;
    if (c->n_refs >= SCH_MAX_REFS) { gb_fail(c->b, "json_schema: too many $ref targets"); return; }
    void *nr = realloc(c->refs, (size_t)(c->n_refs + 1) * sizeof *c->refs);
    char *dup = strdup(ref);
    if (!nr || !dup) { free(nr ? NULL : dup); if (nr) c->refs = nr; gb_fail(c->b, "out of memory"); return; }
    c->refs = nr;
    int r = gb_rule(c->b);
    c->refs[c->n_refs].ref = dup;
    c->refs[c->n_refs++].rule = r;
    gseq s = {0};
    char p2[512];
    snprintf(p2, sizeof p2, "%.400s", ref + 1);
    sch_value(c, t, p2, depth + 1, &s);
    gb_add_alt(c->b, r, &s);
    sq_free(&s);
    sq_ref(c->b, out, r);
}

static void sch_object(sch *c, const cJSON *s, const char *path, int depth, gseq *out) {
    gbuild *b = c->b;
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    if (props && !cJSON_IsObject(props)) { gb_fail(b, "json_schema: 'properties' must be an object at %s", path); return; }
    if (req && !cJSON_IsArray(req)) { gb_fail(b, "json_schema: 'required' must be an array at %s", path); return; }
    int n = props ? cJSON_GetArraySize(props) : 0, nreq = req ? cJSON_GetArraySize(req) : 0;
    const char **names = calloc((size_t)(n + nreq + 1), sizeof *names);
    const cJSON **schemas = calloc((size_t)(n + nreq + 1), sizeof *schemas);
    char *isreq = calloc((size_t)(n + nreq + 1), 1);
    int *rk = NULL, *ra = NULL, *rb = NULL;
    if (!names || !schemas || !isreq) { gb_fail(b, "out of memory"); goto done; }
    int np = 0;
    for (const cJSON *p = props ? props->child : NULL; p; p = p->next) names[np] = p->string, schemas[np++] = p;
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
        if (!cJSON_IsString(r)) { gb_fail(b, "json_schema: 'required' must list strings at %s", path); goto done; }
        int k = 0;
        while (k < np && strcmp(names[k], r->valuestring)) k++;
        if (k == np) names[np] = r->valuestring, schemas[np++] = NULL; /* any value */
        isreq[k] = 1;
    }
    bool any_addl = addl ? !cJSON_IsFalse(addl) : !props;
    const cJSON *addl_schema = addl && cJSON_IsObject(addl) ? addl : NULL;
    if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl)) { gb_fail(b, "json_schema: bad 'additionalProperties' at %s", path); goto done; }
    rk = malloc((size_t)(np + 1) * sizeof *rk);
    ra = malloc((size_t)(np + 1) * sizeof *ra);
    rb = malloc((size_t)(np + 1) * sizeof *rb);
    if (!rk || !ra || !rb) { gb_fail(b, "out of memory"); goto done; }
    char p2[512];
    for (int i = 0; i < np && !b->failed; i++) {
        rk[i] = gb_rule(b);
        gseq kv = {0};
        char *key = cJSON_PrintUnformatted(&(cJSON){.type = cJSON_String, .valuestring = (char *)names[i]});
        if (!key) { gb_fail(b, "out of memory"); break; }
        sq_lit(b, &kv, key, strlen(key));
        free(key);
        json_ws_inline(b, &kv); sq_byte(b, &kv, ':'); json_ws_inline(b, &kv);
        path_join(p2, sizeof p2, path, "properties", names[i]);
        if (schemas[i]) sch_value(c, schemas[i], p2, depth + 1, &kv);
        else json_value(b, &kv);
        gb_add_alt(b, rk[i], &kv);
        sq_free(&kv);
    }
    /* A_i: properties i.. with none written yet; B_i: after one was written */
    gseq kvx = {0}, sep = {0}, a = {0};
    json_ws_inline(b, &sep); sq_byte(b, &sep, ','); json_ws(b, &sep);
    if (any_addl) {
        json_string(b, &kvx, 0, -1);
        json_ws_inline(b, &kvx); sq_byte(b, &kvx, ':'); json_ws_inline(b, &kvx);
        path_join(p2, sizeof p2, path, "additionalProperties", NULL);
        if (addl_schema) sch_value(c, addl_schema, p2, depth + 1, &kvx);
        else json_value(b, &kvx);
    }
    ra[np] = gb_rule(b);
    rb[np] = gb_rule(b);
    gseq more = {0};
    if (any_addl) { sq_cat(b, &more, &sep); sq_cat(b, &more, &kvx); }
    if (any_addl) sq_rep(b, &a, &more, 0, -1);
    gb_add_alt(b, rb[np], &a);
    a.n = 0;
    if (any_addl) { sq_cat(b, &a, &kvx); sq_ref(b, &a, rb[np]); gb_add_alt(b, ra[np], &a); a.n = 0; }
    gb_add_alt(b, ra[np], &a);
    for (int i = np - 1; i >= 0 && !b->failed; i--) {
        ra[i] = gb_rule(b);
        rb[i] = gb_rule(b);
        a.n = 0; sq_cat(b, &a, &sep); sq_ref(b, &a, rk[i]); sq_ref(b, &a, rb[i + 1]); gb_add_alt(b, rb[i], &a);
        a.n = 0; sq_ref(b, &a, rk[i]); sq_ref(b, &a, rb[i + 1]); gb_add_alt(b, ra[i], &a);
        if (!isreq[i]) {
            a.n = 0; sq_ref(b, &a, rb[i + 1]); gb_add_alt(b, rb[i], &a);
            a.n = 0; sq_ref(b, &a, ra[i + 1]); gb_add_alt(b, ra[i], &a);
        }
    }
    sq_byte(b, out, '{');
    json_ws(b, out);
    sq_ref(b, out, ra[0]);
    json_ws(b, out);
    sq_byte(b, out, '}');
    sq_free(&kvx); sq_free(&sep); sq_free(&a); sq_free(&more);
done:
    free(names); free(schemas); free(isreq); free(rk); free(ra); free(rb);
}

static void sch_string(sch *c, const cJSON *s, const char *path, gseq *out) {
    gbuild *b = c->b;
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(s, "pattern");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(s, "format");
    int min = get_count(c, s, "minLength", path, 0), max = get_count(c, s, "maxLength", path, -1);
    if (max >= 0 && max < min) { gb_fail(b, "json_schema: maxLength < minLength at %s", path); return; }
    const char *re = NULL;
    char where[600];
    if (pat) {
        if (!cJSON_IsString(pat)) { gb_fail(b, "json_schema: 'pattern' must be a string at %s", path); return; }
        re = pat->valuestring;
        snprintf(where, sizeof where, "json_schema: pattern at %s", path[0] ? path : "/");
    } else if (fmt) {
        static const char *const fmts[][2] = {
            {"date", "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"},
            {"time", "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"},
            {"date-time", "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"},
            {"uuid", "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"},
        };
        for (size_t i = 0; i < sizeof fmts / sizeof fmts[0] && cJSON_IsString(fmt); i++)
            if (!strcmp(fmt->valuestring, fmts[i][0])) re = fmts[i][1];
        if (!re) {
            gb_fail(b, "json_schema: unsupported format '%.60s' at %s", cJSON_IsString(fmt) ? fmt->valuestring : "?", path[0] ? path : "/");
            return;
        }
        snprintf(where, sizeof where, "json_schema: format");
    }
    if (re) {
        if ((min || max >= 0)) { gb_fail(b, "json_schema: minLength/maxLength with pattern or format at %s", path[0] ? path : "/"); return; }
        sq_byte(b, out, '"');
        gram_regex_seq(b, out, re, strlen(re), true, where);
        sq_byte(b, out, '"');
        return;
    }
    json_string(b, out, min, max);
}

/* ---- integers in a range: decimal strings without leading zeros, as digit-set sequences ---- */

enum { INT_DIGITS = 16 };
#define INT_LIMIT 9999999999999999LL /* the largest INT_DIGITS-digit value */

/* Same-length digit strings a <= b from digit i on, after the fixed prefix pre. */
static void int_same_len(gbuild *b, alts_t_ *out, const gseq *pre, const char *a, const char *z, int i, int L) {
    if (b->failed) return;
    gseq p = {0};
    sq_cat(b, &p, pre);
    while (i < L && a[i] == z[i]) sq_byte(b, &p, a[i++]);
    if (i == L) { int_alt_push(b, out, p); return; }
    bool lo0 = true, hi9 = true;
    for (int k = i + 1; k < L; k++) lo0 &= a[k] == '0', hi9 &= z[k] == '9';
    if (lo0 && hi9) {
        gram_cs c = {{0}};
        cs_range(&c, a[i], z[i]);
        sq_cs(b, &p, &c);
        digits(b, &p, '0', L - i - 1, L - i - 1);
        int_alt_push(b, out, p);
        return;
    }
    char nines[INT_DIGITS + 1], zeros[INT_DIGITS + 1];
    memset(nines, '9', sizeof nines); memset(zeros, '0', sizeof zeros);
    gseq q = {0};
    /* low: a[i] then a[i+1..] .. 99..9 */
    sq_cat(b, &q, &p); sq_byte(b, &q, a[i]);
    int_same_len(b, out, &q, a, nines, i + 1, L);
    /* middle digits take any tail */
    if (z[i] - a[i] > 1) {
        q.n = 0;
        sq_cat(b, &q, &p);
        gram_cs c = {{0}};
        cs_range(&c, a[i] + 1, z[i] - 1);
        sq_cs(b, &q, &c);
        digits(b, &q, '0', L - i - 1, L - i - 1);
        int_alt_push(b, out, q);
        q = (gseq){0};
    }
    /* high: z[i] then 00..0 .. z[i+1..] */
    q.n = 0;
    sq_cat(b, &q, &p); sq_byte(b, &q, z[i]);
    int_same_len(b, out, &q, zeros, z, i + 1, L);
    sq_free(&q);
    sq_free(&p);
}

/* Non-negative [lo, hi] (hi <= INT_LIMIT). */
static void int_range(gbuild *b, alts_t_ *out, long long lo, long long hi) {
    long long start = 1;
    for (int L = 1; L <= INT_DIGITS && lo <= hi; L++, start *= 10) {
        long long first = L == 1 ? 0 : start, last = start * 10 - 1;
        if (hi < first || lo > last) continue;
        long long x = lo > first ? lo : first, y = hi < last ? hi : last;
        char a[24], z[24];
        snprintf(a, sizeof a, "%0*lld", L, x);
        snprintf(z, sizeof z, "%0*lld", L, y);
        gseq pre = {0};
        int_same_len(b, out, &pre, a, z, 0, L);
    }
}

static bool bound(sch *c, const cJSON *s, const char *key, const char *path, double *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, key);
    if (!x) return false;
    if (!cJSON_IsNumber(x)) { gb_fail(c->b, "json_schema: '%s' must be a number at %s", key, path[0] ? path : "/"); return false; }
    *v = x->valuedouble;
    return true;
}

/* An integer, within minimum/maximum (exclusive ones too) when given. */
static void sch_integer(sch *c, const cJSON *s, const char *path, gseq *out) {
    gbuild *b = c->b;
    double v;
    long long lo = -INT_LIMIT, hi = INT_LIMIT;
    bool ranged = false;
    if (bound(c, s, "minimum", path, &v)) ranged = true, lo = v > -INT_LIMIT ? (long long)ceil(v) : -INT_LIMIT;
    if (bound(c, s, "exclusiveMinimum", path, &v)) { ranged = true; long long e = v > -INT_LIMIT ? (long long)floor(v) + 1 : -INT_LIMIT; if (e > lo) lo = e; }
    if (bound(c, s, "maximum", path, &v)) ranged = true, hi = v < INT_LIMIT ? (long long)floor(v) : INT_LIMIT;
    if (bound(c, s, "exclusiveMaximum", path, &v)) { ranged = true; long long e = v < INT_LIMIT ? (long long)ceil(v) - 1 : INT_LIMIT; if (e < hi) hi = e; }
    if (b->failed) return;
    if (!ranged) { json_number(b, out, true); return; }
    if (lo > INT_LIMIT) lo = INT_LIMIT + 1;
    if (hi < -INT_LIMIT) hi = -INT_LIMIT - 1;
    if (lo > hi) { gb_fail(b, "json_schema: empty integer range at %s", path[0] ? path : "/"); return; }
    alts_t_ alts = {0};
    if (lo < 0) { /* -x for x in [max(1, -hi), -lo] */
        alts_t_ neg = {0};
        int_range(b, &neg, hi < 0 ? -hi : 1, -lo);
        for (int i = 0; i < neg.n; i++) {
            gseq q = {0};
            sq_byte(b, &q, '-');
            sq_cat(b, &q, &neg.v[i]);
            int_alt_push(b, &alts, q);
        }
        int_alts_free(&neg);
    }
    if (hi >= 0) int_range(b, &alts, lo > 0 ? lo : 0, hi);
    if (!b->failed) sq_alts(b, out, alts.v, alts.n);
    int_alts_free(&alts);
}

static bool known_key(const char *k) {
    static const char *const keys[] = {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "oneOf",
        "allOf", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "$ref", "$defs",
        "definitions", "title", "description", "default", "examples", "$schema", "$id", "$comment",
        "deprecated", "readOnly", "writeOnly", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) if (!strcmp(k, keys[i])) return true;
    return false;
}

static void sch_literal(sch *c, const cJSON *v, gseq *out) {
    char *t = cJSON_PrintUnformatted(v);
    if (!t) { gb_fail(c->b, "out of memory"); return; }
    sq_lit(c->b, out, t, strlen(t));
    free(t);
}

static void sch_typed(sch *c, const cJSON *s, const char *type, const char *path, int depth, gseq *out) {
    gbuild *b = c->b;
    char p2[512];
    if (!strcmp(type, "object")) sch_object(c, s, path, depth, out);
    else if (!strcmp(type, "array")) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        int min = get_count(c, s, "minItems", path, 0), max = get_count(c, s, "maxItems", path, -1);
        if (max >= 0 && max < min) { gb_fail(b, "json_schema: maxItems < minItems at %s", path); return; }
        int r = gb_rule(b);
        gseq it = {0}, ref = {0};
        path_join(p2, sizeof p2, path, "items", NULL);
        if (items) sch_value(c, items, p2, depth + 1, &it);
        else json_value(b, &it);
        gb_add_alt(b, r, &it);
        sq_ref(b, &ref, r);
        json_array_of(b, out, &ref, min, max);
        sq_free(&it); sq_free(&ref);
    } else if (!strcmp(type, "string")) sch_string(c, s, path, out);
    else if (!strcmp(type, "number")) {
        for (const char *const *k = (const char *const[]){"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL}; *k; k++)
            if (cJSON_GetObjectItemCaseSensitive(s, *k)) {
                gb_fail(b, "json_schema: unsupported keyword '%s' on a number (integers only) at %s", *k, path[0] ? path : "/");
                return;
            }
        json_number(b, out, false);
    }
    else if (!strcmp(type, "integer")) sch_integer(c, s, path, out);
    else if (!strcmp(type, "boolean")) {
        gseq a[2] = {{0}, {0}};
        sq_lit(b, &a[0], "true", 4); sq_lit(b, &a[1], "false", 5);
        sq_alts(b, out, a, 2);
        sq_free(&a[0]); sq_free(&a[1]);
    } else if (!strcmp(type, "null")) sq_lit(b, out, "null", 4);
    else gb_fail(b, "json_schema: unknown type '%.40s' at %s", type, path[0] ? path : "/");
}

static void sch_value(sch *c, const cJSON *s, const char *path, int depth, gseq *out) {
    gbuild *b = c->b;
    if (b->failed) return;
    const char *P = path[0] ? path : "/";
    if (depth > SCH_MAX_DEPTH) { gb_fail(b, "json_schema: nested deeper than %d at %s", SCH_MAX_DEPTH, P); return; }
    if (cJSON_IsTrue(s)) { json_value(b, out); return; }
    if (!cJSON_IsObject(s)) { gb_fail(b, "json_schema: a schema must be an object or true at %s", P); return; }
    for (const cJSON *k = s->child; k; k = k->next)
        if (!known_key(k->string)) { gb_fail(b, "json_schema: unsupported keyword '%.60s' at %s", k->string, P); return; }
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    if (!any) any = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(s, "allOf");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    char p2[512];
    if (ref) {
        if (!cJSON_IsString(ref)) { gb_fail(b, "json_schema: '$ref' must be a string at %s", P); return; }
        sch_ref(c, ref->valuestring, P, depth, out);
    } else if (cn) {
        sch_literal(c, cn, out);
    } else if (en) {
        int n = cJSON_GetArraySize(en);
        if (!cJSON_IsArray(en) || n == 0) { gb_fail(b, "json_schema: 'enum' must be a non-empty array at %s", P); return; }
        int r = gb_rule(b);
        gseq a = {0};
        for (const cJSON *v = en->child; v && !b->failed; v = v->next) { a.n = 0; sch_literal(c, v, &a); gb_add_alt(b, r, &a); }
        sq_free(&a);
        sq_ref(b, out, r);
    } else if (any || all) {
        const cJSON *list = any ? any : all;
        const char *name = any ? (cJSON_GetObjectItemCaseSensitive(s, "anyOf") ? "anyOf" : "oneOf") : "allOf";
        if (!cJSON_IsArray(list) || !cJSON_GetArraySize(list)) { gb_fail(b, "json_schema: '%s' must be a non-empty array at %s", name, P); return; }
        if (all && (any || cJSON_GetArraySize(all) != 1)) { gb_fail(b, "json_schema: unsupported keyword 'allOf' (more than one schema) at %s", P); return; }
        int r = gb_rule(b), i = 0;
        gseq a = {0};
        for (const cJSON *v = list->child; v && !b->failed; v = v->next, i++) {
            char idx[16];
            snprintf(idx, sizeof idx, "%d", i);
            path_join(p2, sizeof p2, path, name, idx);
            a.n = 0;
            sch_value(c, v, p2, depth + 1, &a);
            gb_add_alt(b, r, &a);
        }
        sq_free(&a);
        sq_ref(b, out, r);
    } else if (type) {
        if (cJSON_IsString(type)) sch_typed(c, s, type->valuestring, path, depth, out);
        else if (cJSON_IsArray(type) && cJSON_GetArraySize(type) > 0) {
            int r = gb_rule(b);
            gseq a = {0};
            for (const cJSON *t = type->child; t && !b->failed; t = t->next) {
                if (!cJSON_IsString(t)) { gb_fail(b, "json_schema: 'type' must list strings at %s", P); break; }
                a.n = 0;
                sch_typed(c, s, t->valuestring, path, depth, &a);
                gb_add_alt(b, r, &a);
            }
            sq_free(&a);
            sq_ref(b, out, r);
        } else gb_fail(b, "json_schema: bad 'type' at %s", P);
    } else if (cJSON_GetObjectItemCaseSensitive(s, "properties") || cJSON_GetObjectItemCaseSensitive(s, "required") ||
               cJSON_GetObjectItemCaseSensitive(s, "additionalProperties")) {
        sch_typed(c, s, "object", path, depth, out);
    } else if (cJSON_GetObjectItemCaseSensitive(s, "items") || cJSON_GetObjectItemCaseSensitive(s, "minItems") ||
               cJSON_GetObjectItemCaseSensitive(s, "maxItems")) {
        sch_typed(c, s, "array", path, depth, out);
    } else if (cJSON_GetObjectItemCaseSensitive(s, "pattern") || cJSON_GetObjectItemCaseSensitive(s, "format") ||
               cJSON_GetObjectItemCaseSensitive(s, "minLength") || cJSON_GetObjectItemCaseSensitive(s, "maxLength")) {
        sch_typed(c, s, "string", path, depth, out);
    } else {
        json_value(b, out);
    }
}

gram *gram_from_json_schema(const char *schema_json, size_t len, char *err, size_t errlen) {
    gbuild b;
    gb_init(&b, err, errlen);
    cJSON *root = schema_json ? cJSON_ParseWithLength(schema_json, len) : NULL;
    if (!root) { gb_fail(&b, "json_schema: not valid JSON"); gb_free(&b); return NULL; }
    sch c = {&b, root, NULL, 0};
    gseq s = {0};
    sch_value(&c, root, "", 0, &s);
    int r = gb_rule(&b);
    gb_add_alt(&b, r, &s);
    sq_free(&s);
    for (int i = 0; i < c.n_refs; i++) free(c.refs[i].ref);
    free(c.refs);
    cJSON_Delete(root);
    return gb_finish(&b, r);
}
