/* Grammar engine tests: schemas and regexes compile or fail naming the keyword or position;
 * texts accepted or rejected byte by byte; the token mask against a brute-force reference (each
 * token's bytes on a fresh copy of the state) on random walks; random generations that sample
 * only allowed tokens parse and validate against their schema. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "grammar.h"

/* 1 when text is a complete match, 0 when some byte is rejected or it cannot end there. */
static int matches(const gram *g, const char *text) {
    gram_state *s = gram_state_new(g, NULL);
    if (!s) return -1;
    int ok = 1;
    for (size_t i = 0; text[i] && ok; i++) ok = gram_state_accept(s, text + i, 1) == GRAM_OK;
    if (ok) ok = gram_state_can_end(s);
    gram_state_free(s);
    return ok;
}

typedef struct { const char *schema; const char *good[8]; const char *bad[8]; } schema_case;

static const schema_case cases[] = {
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},\"required\":[\"a\"]}",
     {"{\"a\":1}", "{\"a\":-12,\"b\":\"x\"}", "{ \"a\": 0, \"b\": \"\\u00e9\\n\" }", "{\"a\":5,\n  \"b\":\"h\xc3\xa9\"}"},
     {"{}", "{\"b\":\"x\"}", "{\"a\":01}", "{\"a\":1,\"c\":2}", "{\"b\":\"x\",\"a\":1}", "{\"a\":1.5}", "{\"a\":1,}", "{\"a\":1,\"b\":\"\x01\"}"}},
    {"{\"type\":\"array\",\"items\":{\"enum\":[\"x\",2,null,true]},\"minItems\":1,\"maxItems\":3}",
     {"[\"x\"]", "[2,null]", "[true, \"x\", 2]"}, {"[]", "[1]", "[\"x\",\"x\",\"x\",\"x\"]", "[\"y\"]", "[false]"}},
    {"{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"boolean\"},{\"type\":\"null\"}]}",
     {"1", "-0.5", "1e10", "2.5E-3", "true", "null"}, {"01", "1.", ".5", "\"1\"", "nul", "+1"}},
    {"{\"type\":[\"string\",\"null\"],\"maxLength\":3}", {"\"\"", "\"abc\"", "null", "\"\xe2\x82\xac\xe2\x82\xac\""}, {"\"abcd\"", "1", "\"\xc3\""}},
    {"{\"type\":\"string\",\"minLength\":2}", {"\"ab\"", "\"\\\"\\\\\""}, {"\"a\"", "\"\""}},
    {"{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/node\"}",
     {"{\"v\":1}", "{\"v\":1,\"kids\":[{\"v\":2},{\"v\":3,\"kids\":[]}]}"}, {"{\"v\":1,\"kids\":[{}]}", "{\"kids\":[]}"}},
    {"{\"type\":\"string\",\"pattern\":\"^[a-z]+-\\\\d{2}$\"}", {"\"ab-12\"", "\"z-00\""}, {"\"ab-1\"", "\"-12\"", "\"AB-12\""}},
    {"{\"type\":\"string\",\"format\":\"date\"}", {"\"2024-02-29\""}, {"\"2024-13-01\"", "\"24-01-01\""}},
    {"{\"type\":\"string\",\"format\":\"date-time\"}", {"\"2024-02-29T12:00:00Z\"", "\"2024-02-29T12:00:00.5+02:00\""}, {"\"2024-02-29 12:00:00Z\""}},
    {"{\"type\":\"string\",\"format\":\"uuid\"}", {"\"123e4567-e89b-12d3-a456-426614174000\""}, {"\"123e4567e89b12d3a456426614174000\""}},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"const\":1}},\"additionalProperties\":{\"type\":\"boolean\"}}",
     {"{}", "{\"a\":1}", "{\"a\":1,\"x\":true,\"y\":false}", "{\"z\":true}"}, {"{\"a\":2}", "{\"x\":1}"}},
    {"{\"type\":\"object\",\"title\":\"t\",\"description\":\"d\"}", {"{}", "{\"k\":[1,{\"x\":null}],\"j\":\"s\"}"}, {"[]", "{\"k\"}"}},
    {"{\"type\":\"string\",\"pattern\":\"a\\\"b\\\\\\\\c\"}", {"\"a\\\"b\\\\c\""}, {"\"a\"b\\c\""}},
    {"{\"type\":\"integer\"}", {"0", "-7", "1234567890123456"}, {"12345678901234567", "-", "1.0"}},
};

static const struct { const char *schema, *err; } bad_schemas[] = {
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"patternProperties\":{}}}}", "unsupported keyword 'patternProperties' at /properties/a"},
    {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "empty integer range"},
    {"{\"type\":\"number\",\"multipleOf\":2}", "'multipleOf'"},
    {"{\"type\":\"number\",\"minimum\":2}", "'minimum' on a number"},
    {"{\"type\":\"string\",\"format\":\"email\"}", "format 'email'"},
    {"{\"$ref\":\"#\"}", "matches nothing"},
    {"{\"$ref\":\"#/$defs/none\"}", "not found"},
    {"{\"$ref\":\"http://x/y\"}", "local $ref"},
    {"{\"type\":\"string\",\"pattern\":\"(a\"}", "pattern"},
    {"{\"type\":\"frob\"}", "unknown type"},
    {"{\"enum\":[]}", "enum"},
    {"{\"allOf\":[{},{}]}", "allOf"},
    {"not json", "not valid JSON"},
    {"{\"type\":\"array\",\"maxItems\":1,\"minItems\":2}", "maxItems"},
};

static void test_schemas(void) {
    char err[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gram *g = gram_from_json_schema(cases[i].schema, strlen(cases[i].schema), err, sizeof err);
        CHECK(g != NULL, "schema %zu: %s", i, err);
        if (!g) continue;
        for (int k = 0; k < 8 && cases[i].good[k]; k++) CHECK(matches(g, cases[i].good[k]) == 1, "schema %zu should accept %s", i, cases[i].good[k]);
        for (int k = 0; k < 8 && cases[i].bad[k]; k++) CHECK(matches(g, cases[i].bad[k]) == 0, "schema %zu should reject %s", i, cases[i].bad[k]);
        gram_free(g);
    }
    for (size_t i = 0; i < sizeof bad_schemas / sizeof bad_schemas[0]; i++) {
        err[0] = 0;
        gram *g = gram_from_json_schema(bad_schemas[i].schema, strlen(bad_schemas[i].schema), err, sizeof err);
        CHECK(g == NULL && strstr(err, bad_schemas[i].err), "bad schema %zu: got '%s', want '%s'", i, err, bad_schemas[i].err);
        gram_free(g);
    }
    gram *j = gram_json_object();
    CHECK(j != NULL, "json object");
    const char *jg[] = {"{}", "{\"a\":[1,2,{\"b\":null}],\"c\":\"\\ud83d\"}", "{ \"x\" : -1.5e+3 }", "{\n  \"k\": true\n}"};
    const char *jb[] = {"[]", "{\"a\"}", "{\"a\":1,}", "{'a':1}", "{\"a\":1}}", "\"s\"", "{\"a\":tru}", "{   \"a\":1}"};
    for (int k = 0; k < 4; k++) CHECK(matches(j, jg[k]) == 1, "json object should accept %s", jg[k]);
    for (int k = 0; k < 8; k++) CHECK(matches(j, jb[k]) == 0, "json object should reject %s", jb[k]);
    gram_free(j);
}

/* Integer ranges against every value in a window. */
static void test_int_ranges(void) {
    static const struct { const char *bounds; long lo, hi; } rc[] = {
        {"\"minimum\":-37,\"maximum\":1050", -37, 1050}, {"\"minimum\":7,\"maximum\":7", 7, 7},
        {"\"minimum\":100,\"maximum\":999", 100, 999}, {"\"minimum\":0,\"maximum\":0", 0, 0},
        {"\"minimum\":-1000,\"maximum\":-10", -1000, -10}, {"\"minimum\":15", 15, 1L << 40},
        {"\"exclusiveMinimum\":0.5,\"exclusiveMaximum\":20", 1, 19}, {"\"maximum\":-3", -(1L << 40), -3},
        {"\"minimum\":1.5,\"maximum\":209.9", 2, 209},
    };
    char schema[256], err[256], num[32];
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++) {
        snprintf(schema, sizeof schema, "{\"type\":\"integer\",%s}", rc[i].bounds);
        gram *g = gram_from_json_schema(schema, strlen(schema), err, sizeof err);
        CHECK(g != NULL, "%s: %s", schema, err);
        if (!g) continue;
        int bad = 0;
        for (long x = -1200; x <= 1200; x++) {
            snprintf(num, sizeof num, "%ld", x);
            bad += matches(g, num) != (x >= rc[i].lo && x <= rc[i].hi);
        }
        CHECK(bad == 0, "%s: %d values misjudged", schema, bad);
        CHECK(matches(g, "007") == 0 && matches(g, "-0") == 0 && matches(g, "1.0") == 0, "%s: forms", schema);
        gram_free(g);
    }
}

static void test_regex(void) {
    static const struct { const char *re, *good[6], *bad[6]; } rc[] = {
        {"abc", {"abc"}, {"ab", "abcd", ""}},
        {"", {""}, {"a"}},
        {"a|bc|", {"a", "bc", ""}, {"b", "abc"}},
        {"[a-c]+x?", {"a", "abcx", "cccc"}, {"x", "ad", ""}},
        {"\\d{2,3}", {"12", "123"}, {"1", "1234", "ab"}},
        {"(?:ab)*c", {"c", "abababc"}, {"abc c", "aabc"}},
        {"[^a-z]", {"A", "\xc3\xa9", "\xf0\x9f\x98\x80"}, {"a", "\xc3", "AB"}},
        {".{2}", {"\xe2\x82\xac\xc3\xa9", "ab"}, {"\n\n", "a"}},
        {"^\\w+@\\w+\\.com$", {"a_1@b.com"}, {"a@b.org", "@b.com"}},
        {"[\xc3\xa0-\xc3\xbf]", {"\xc3\xa0", "\xc3\xbf"}, {"\xc3\x9f", "a"}},
        {"x{0}y{3,}", {"yyy", "yyyyy"}, {"xyyy", "yy"}},
        {"\\x41\\u00e9[\\]\\-]", {"A\xc3\xa9]", "A\xc3\xa9-"}, {"A\xc3\xa9\\"}},
    };
    char err[256];
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++) {
        gram *g = gram_from_regex(rc[i].re, strlen(rc[i].re), err, sizeof err);
        CHECK(g != NULL, "regex %s: %s", rc[i].re, err);
        if (!g) continue;
        for (int k = 0; k < 6 && rc[i].good[k]; k++) CHECK(matches(g, rc[i].good[k]) == 1, "regex %s should accept '%s'", rc[i].re, rc[i].good[k]);
        for (int k = 0; k < 6 && rc[i].bad[k]; k++) CHECK(matches(g, rc[i].bad[k]) == 0, "regex %s should reject '%s'", rc[i].re, rc[i].bad[k]);
        gram_free(g);
    }
    static const struct { const char *re, *err; } bad[] = {
        {"(ab", "missing ) at position 3"}, {"ab)", "unmatched ) at position 2"}, {"*a", "nothing to repeat at position 0"},
        {"a{3,2}", "max < min"}, {"[b-a]", "out of order"}, {"(?=a)", "unsupported group at position 1"},
        {"\\1", "unsupported escape at position 1"}, {"(a*)*", "without writing"}, {"a{2000}", "1000"}, {"a^b", "anchor"},
        {"[abc", "unterminated class"}, {"\xff", "invalid UTF-8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        gram *g = gram_from_regex(bad[i].re, strlen(bad[i].re), err, sizeof err);
        CHECK(g == NULL && strstr(err, bad[i].err), "bad regex %s: got '%s', want '%s'", bad[i].re, err, bad[i].err);
        gram_free(g);
    }
}

/* ---- a synthetic vocabulary: every single byte, random pieces over JSON-ish bytes ---- */

enum { N_RAND = 3000, N_VOCAB = 256 + N_RAND + 2 };
static char pieces[N_VOCAB][12];
static int piece_len[N_VOCAB];
static const int EOG_ID = N_VOCAB - 1; /* N_VOCAB - 2 is a control token */

static const char *piece_fn(void *ud, int32_t id, int *len) {
    (void)ud;
    if (id >= N_VOCAB - 2) return NULL;
    *len = piece_len[id];
    return pieces[id];
}

static void make_vocab(void) {
    static const char *atoms[] = {"{", "}", "[", "]", "\"", ":", ",", " ", "\n", "  ", "a", "b", "v", "x", "kids",
                                  "true", "null", "0", "1", "7", "-", ".", "e", "\\", "\\n", "u", "\xc3\xa9", "\xe2\x82",
                                  "\xac", "\xf0\x9f", "\x98\x80", "\":", "\",", "\"}", "},", "[{", "ab", "12", "\t"};
    const int na = sizeof atoms / sizeof atoms[0];
    for (int b = 0; b < 256; b++) pieces[b][0] = (char)b, piece_len[b] = 1;
    for (int i = 256; i < 256 + N_RAND; i++) {
        size_t len = 0;
        do {
            const char *a = atoms[rng_int(na)];
            size_t l = strlen(a);
            if (len + l > 11) break;
            memcpy(pieces[i] + len, a, l);
            len += l;
        } while (rng_int(3));
        if (!len) pieces[i][0] = 'a', len = 1;
        piece_len[i] = (int)len;
    }
}

/* The brute-force mask: replay the text on a fresh state, then each token on a copy of it. */
static void brute_mask(const gram *g, const gram_vocab *v, const char *text, size_t n, uint8_t *ok) {
    gram_state *base = gram_state_new(g, v);
    CHECK(gram_state_accept(base, text, n) == GRAM_OK, "replay");
    for (int id = 0; id < N_VOCAB; id++) {
        if (id == EOG_ID) { ok[id] = gram_state_can_end(base); continue; }
        if (id == N_VOCAB - 2) { ok[id] = 0; continue; }
        gram_state *c = gram_state_clone(base);
        ok[id] = gram_state_accept(c, pieces[id], (size_t)piece_len[id]) == GRAM_OK;
        gram_state_free(c);
    }
    gram_state_free(base);
}

/* ---- a small validator for the walk schemas ---- */

static const cJSON *vroot;
static bool validate(const cJSON *s, const cJSON *x) {
    const cJSON *ref = cJSON_GetObjectItem(s, "$ref");
    if (ref) {
        const char *name = strrchr(ref->valuestring, '/') + 1;
        return validate(cJSON_GetObjectItem(cJSON_GetObjectItem(vroot, "$defs"), name), x);
    }
    const cJSON *en = cJSON_GetObjectItem(s, "enum"), *any = cJSON_GetObjectItem(s, "anyOf");
    if (en) {
        for (const cJSON *e = en->child; e; e = e->next) if (cJSON_Compare(e, x, true)) return true;
        return false;
    }
    if (any) {
        for (const cJSON *e = any->child; e; e = e->next) if (validate(e, x)) return true;
        return false;
    }
    const cJSON *t = cJSON_GetObjectItem(s, "type");
    if (!t) return true;
    const char *ty = t->valuestring;
    if (!strcmp(ty, "integer")) return cJSON_IsNumber(x) && x->valuedouble == (double)(long long)x->valuedouble;
    if (!strcmp(ty, "number")) return cJSON_IsNumber(x);
    if (!strcmp(ty, "boolean")) return cJSON_IsBool(x);
    if (!strcmp(ty, "string")) return cJSON_IsString(x);
    if (!strcmp(ty, "array")) {
        if (!cJSON_IsArray(x)) return false;
        const cJSON *it = cJSON_GetObjectItem(s, "items"), *mx = cJSON_GetObjectItem(s, "maxItems");
        if (mx && cJSON_GetArraySize(x) > mx->valueint) return false;
        for (const cJSON *e = x->child; e; e = e->next) if (it && !validate(it, e)) return false;
        return true;
    }
    if (!strcmp(ty, "object")) {
        if (!cJSON_IsObject(x)) return false;
        const cJSON *props = cJSON_GetObjectItem(s, "properties"), *req = cJSON_GetObjectItem(s, "required");
        for (const cJSON *r = req ? req->child : NULL; r; r = r->next) if (!cJSON_GetObjectItem(x, r->valuestring)) return false;
        for (const cJSON *e = x->child; e; e = e->next) {
            const cJSON *ps = props ? cJSON_GetObjectItem(props, e->string) : NULL;
            if (!ps || !validate(ps, e)) return false;
        }
        return true;
    }
    return false;
}

static const char *walk_schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},\"age\":{\"type\":\"integer\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",1]},\"maxItems\":3}},\"required\":[\"name\",\"age\"]}",
    "{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"},\"maxItems\":2}},\"required\":[\"v\"]}},\"$ref\":\"#/$defs/n\"}",
    "{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"boolean\"},{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"string\"}}}]},\"maxItems\":4}",
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"object\",\"properties\":{\"b\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"maxItems\":3},\"c\":{\"type\":\"boolean\"}},\"required\":[\"c\"]}},\"required\":[\"a\"]}",
};

/* Picks an allowed token: random early, later closing bytes first so the walk ends. */
static int pick(const uint32_t *m, int step) {
    int ids[N_VOCAB], n = 0;
    for (int i = 0; i < N_VOCAB; i++) if (gram_mask_test(m, i)) ids[n++] = i;
    if (!n) return -1;
    if (step > 40) {
        if (gram_mask_test(m, EOG_ID)) return EOG_ID;
        static const char pref[] = "\"}]0,:";
        for (const char *p = pref; *p; p++) if (gram_mask_test(m, (unsigned char)*p)) return (unsigned char)*p;
    }
    return ids[rng_int(n)];
}

static void test_walks(const gram_vocab *v) {
    uint32_t *m = calloc(gram_mask_words(v), 4);
    static uint8_t ok[N_VOCAB];
    char text[8192];
    int finished = 0, compared = 0;
    for (size_t si = 0; si < sizeof walk_schemas / sizeof walk_schemas[0]; si++) {
        char err[256];
        gram *g = gram_from_json_schema(walk_schemas[si], strlen(walk_schemas[si]), err, sizeof err);
        CHECK(g != NULL, "walk schema %zu: %s", si, err);
        if (!g) continue;
        cJSON *sj = cJSON_Parse(walk_schemas[si]);
        vroot = sj;
        for (int w = 0; w < 12; w++) {
            gram_state *s = gram_state_new(g, v);
            size_t n = 0;
            bool ended = false;
            for (int step = 0; step < 300 && !ended; step++) {
                CHECK(gram_state_mask(s, m) == GRAM_OK, "mask");
                if (w < 3 && step % 3 == 0) { /* the mask against brute force */
                    brute_mask(g, v, text, n, ok);
                    int bad = 0;
                    for (int id = 0; id < N_VOCAB; id++) bad += ok[id] != gram_mask_test(m, id);
                    CHECK(bad == 0, "schema %zu walk %d step %d: %d tokens differ from brute force", si, w, step, bad);
                    compared++;
                }
                int id = pick(m, step);
                CHECK(id >= 0, "schema %zu: dead end after '%.*s'", si, (int)n, text);
                if (id < 0) break;
                CHECK(gram_state_accept_token(s, id) == GRAM_OK, "accepting an allowed token");
                if (id == EOG_ID) { ended = true; break; }
                if (n + (size_t)piece_len[id] >= sizeof text) break;
                memcpy(text + n, pieces[id], (size_t)piece_len[id]);
                n += (size_t)piece_len[id];
            }
            if (ended) {
                finished++;
                CHECK(gram_state_ended(s), "ended");
                cJSON *x = cJSON_ParseWithLength(text, n);
                CHECK(x != NULL, "schema %zu: output does not parse: %.*s", si, (int)n, text);
                if (x) CHECK(validate(sj, x), "schema %zu: output does not validate: %.*s", si, (int)n, text);
                cJSON_Delete(x);
            }
            gram_state_free(s);
        }
        cJSON_Delete(sj);
        gram_free(g);
    }
    CHECK(finished >= 30, "only %d of 48 walks finished", finished);
    CHECK(compared > 50, "mask compared %d times", compared);
    free(m);
}

static void test_api(const gram_vocab *v) {
    char err[128];
    gram *g = gram_from_regex("ab|abc", 6, err, sizeof err);
    gram_state *s = gram_state_new(g, v);
    CHECK(!gram_state_can_end(s) && !gram_state_must_end(s), "start");
    CHECK(gram_state_accept_token(s, EOG_ID) == GRAM_ERR_REJECT, "EOG before the end");
    CHECK(gram_state_accept(s, "a", 1) == GRAM_OK, "a");
    CHECK(gram_state_accept(s, "x", 1) == GRAM_ERR_REJECT, "x");
    CHECK(gram_state_accept(s, "bx", 2) == GRAM_ERR_REJECT, "a rejected run leaves the state unchanged");
    gram_state *c = gram_state_clone(s);
    CHECK(gram_state_accept(c, "b", 1) == GRAM_OK && gram_state_can_end(c) && !gram_state_must_end(c), "ab");
    CHECK(!gram_state_can_end(s), "the original is independent of its clone");
    CHECK(gram_state_accept(c, "c", 1) == GRAM_OK && gram_state_must_end(c), "abc");
    uint32_t *m = calloc(gram_mask_words(v), 4);
    CHECK(gram_state_mask(c, m) == GRAM_OK, "mask");
    int n = 0;
    for (int i = 0; i < N_VOCAB; i++) n += gram_mask_test(m, i);
    CHECK(n == 1 && gram_mask_test(m, EOG_ID), "only EOG after a must-end (%d allowed)", n);
    CHECK(gram_state_accept_token(c, EOG_ID) == GRAM_OK && gram_state_ended(c), "end");
    CHECK(gram_state_mask(c, m) == GRAM_OK, "mask after the end");
    n = 0;
    for (int i = 0; i < N_VOCAB; i++) n += gram_mask_test(m, i);
    CHECK(n == 0, "nothing after the end (%d)", n);
    CHECK(gram_state_accept_token(s, N_VOCAB - 2) == GRAM_ERR_REJECT, "a control token");
    CHECK(gram_state_accept_token(s, N_VOCAB) == GRAM_ERR_ARG, "out of range");
    free(m);
    gram_state_free(c);
    gram_state_free(s);
    gram_free(g);
}

int main(void) {
    test_schemas();
    test_int_ranges();
    test_regex();
    make_vocab();
    int32_t eog = EOG_ID;
    char err[128];
    gram_vocab *v = gram_vocab_create(N_VOCAB, piece_fn, NULL, &eog, 1, err, sizeof err);
    CHECK(v != NULL, "vocab: %s", err);
    if (v) test_api(v);
    if (v) test_walks(v);
    gram_vocab_free(v);
    return check_summary("test_grammar");
}
