/* The attention options: one typed table, a row per field of eng_attn_params (its offset, kind,
 * bounds, default, command-line flag and help), from which everything else is derived: the
 * defaults, the checks of a whole parameter set, setting a value from text (command line, a
 * string in JSON) or from a typed number or boolean (JSON), the --help lines, and the value
 * iterator the server turns into JSON. The command line, the server's configuration file and
 * per-request parameters therefore cannot disagree on a name, a range or a meaning. (redis's
 * standardConfig table is the model.) */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"
#include "model.h"
#include "util.h"

/* Enum fields are read and written as int. */
_Static_assert(sizeof(idx_kind) == sizeof(int), "selector stored as an int");

typedef struct {
    eng_attn_opt o;                /* what callers see: name, flag, kind, storage */
    size_t off;                    /* offsetof(eng_attn_params, field) */
    double lo, hi;                 /* accepted range, inclusive (lo exclusive when lo_open) */
    bool lo_open, pow2;            /* pow2: a power of two as well */
    double def;                    /* the default (an enum's value) */
    const char *(*names)(int v);   /* ENUM: the name of value v; NULL past the last */
    const char *arg, *help, *zero; /* --help: the flag's value (NULL: none), what it does, what 0 means */
} row;

static const char *selector_name(int v) {
    if (v == ENG_SELECTOR_AUTO) return "auto";
    idx_kind k;
    const char *s = idx_kind_name((idx_kind)v);
    return idx_kind_parse(s, &k) == IDX_OK ? s : NULL;
}

static const char *gqa_name(int v) { return v == IDX_GQA_UNION ? "union" : v == IDX_GQA_MEAN ? "mean" : NULL; }

#define F(field) offsetof(eng_attn_params, field)
static const row rows[] = {
    {.o = {"selector", "--attn", ENG_ATTN_ENUM, false}, .off = F(selector), .def = ENG_SELECTOR_AUTO,
     .names = selector_name, .arg = "S", .help = "selector"},
    {.o = {"top_k", "--attn-top-k", ENG_ATTN_INT, false}, .off = F(top_k), .lo = 0, .hi = 1 << 24, .def = 0,
     .arg = "N", .help = "retrieval/ivf/oracle: ids per query, in place of a share for the group",
     .zero = "the target share (0.02 when unset); quest: no floor"},
    {.o = {"scan", "--attn-scan", ENG_ATTN_FLOAT, false}, .off = F(scan), .lo = 0, .hi = 1, .lo_open = true,
     .def = 0.02f, .arg = "F", .help = "retrieval/ivf: share of offloaded keys each query scores (at least 4x the share read)"},
    {.o = {"target", "--attn-target", ENG_ATTN_FLOAT, false}, .off = F(target), .lo = 0, .hi = 1,
     .arg = "F", .help = "share of offloaded keys to read",
     .zero = "centroids calibrated for 0.03; quest, sparq, retrieval, ivf, oracle 0.02"},
    {.o = {"mass", "--attn-mass", ENG_ATTN_FLOAT, false}, .off = F(mass), .lo = 0, .hi = 1,
     .arg = "F", .help = "centroids: per query, the clusters covering this estimated share of its attention",
     .zero = "off: target"},
    {.o = {"expand", "--attn-expand", ENG_ATTN_INT, false}, .off = F(expand), .lo = 0, .hi = 64, .arg = "R",
     .help = "each selected key brings its neighbours within R positions", .zero = "none"},
    {.o = {"tail", "--attn-tail", ENG_ATTN_FLOAT, false}, .off = F(tail), .lo = 0, .hi = 1, .arg = "F",
     .help = "also a stratified sample of F of the offloaded keys the selector left, weighted to estimate "
             "all of them", .zero = "off"},
    {.o = {"refine", "--attn-refine", ENG_ATTN_FLOAT, false}, .off = F(refine), .lo = 0, .hi = 1000, .arg = "F",
     .help = "centroids: candidates from the clusters for F x target, the target share of their keys "
             "kept by exact score", .zero = "off"},
    {.o = {"estimate", "--attn-estimate", ENG_ATTN_BOOL, false}, .off = F(estimate), .lo = 0, .hi = 1,
     .help = "sparq, centroids: estimate the keys the selector leaves and merge them in (CPU only)"},
    {.o = {"reuse", "--attn-reuse", ENG_ATTN_INT, false}, .off = F(reuse), .lo = 0, .hi = 64, .arg = "N",
     .help = "a selection serves N decode steps, the i-th after it reading each id's i successors too "
             "(the selector's cost over N; ids from an older query)",
     .zero = "select at every step"},
    {.o = {"dense_below", "--attn-dense-below", ENG_ATTN_INT, false}, .off = F(dense_below), .lo = 0,
     .hi = 1 << 24, .arg = "N", .help = "decode attends densely while the sequence is shorter than N tokens",
     .zero = "off"},
    {.o = {"gqa", "--attn-gqa", ENG_ATTN_ENUM, false}, .off = F(gqa_mean), .def = IDX_GQA_UNION,
     .names = gqa_name, .arg = "union|mean",
     .help = "selection per KV head: union of per-query top-k, or mean query"},
    {.o = {"sink", "--sink", ENG_ATTN_INT, false}, .off = F(n_sink), .lo = 0, .hi = 1 << 24, .def = 128,
     .arg = "N", .help = "static set: first N tokens"},
    {.o = {"window", "--window", ENG_ATTN_INT, false}, .off = F(n_window), .lo = 1, .hi = 1 << 24, .def = 512,
     .arg = "N", .help = "static set: last N tokens"},
    {.o = {"measure_recall", "--measure-recall", ENG_ATTN_BOOL, false}, .off = F(measure_recall), .lo = 0,
     .hi = 1, .help = "also attend densely to report the selected set's mass recall"},
    {.o = {"levels", "--attn-levels", ENG_ATTN_INT, false}, .off = F(levels), .lo = 0, .hi = 2,
     .arg = "0|1|2", .help = "centroids on a context: 1 scores every fine centroid",
     .zero = "all levels"},
    {.o = {"page_size", "--page-size", ENG_ATTN_INT, true}, .off = F(page_size), .lo = 1, .hi = 1 << 16,
     .pow2 = true, .def = 64, .arg = "N", .help = "tokens per KV page, a power of two"},
    {.o = {"kv_f16", "--kv-f16", ENG_ATTN_BOOL, true}, .off = F(kv_f16), .lo = 0, .hi = 1,
     .help = "store K and V as f16"},
    {.o = {"kv_mem_gb", "--kv-mem-gb", ENG_ATTN_GB, true}, .off = F(kv_max_bytes), .lo = 0, .hi = 1 << 20,
     .arg = "G", .help = "KV memory limit per sequence", .zero = "none"},
};
#undef F
enum { N_ROWS = sizeof rows / sizeof rows[0] };

/* ---- the table ------------------------------------------------------------------------------ */

const eng_attn_opt *eng_attn_opt_at(int i) { return i >= 0 && i < N_ROWS ? &rows[i].o : NULL; }

const eng_attn_opt *eng_attn_opt_find(const char *name) {
    for (int i = 0; name && i < N_ROWS; i++)
        if (!strcmp(rows[i].o.name, name)) return &rows[i].o;
    return NULL;
}

const eng_attn_opt *eng_attn_opt_of_flag(const char *flag) {
    for (int i = 0; flag && i < N_ROWS; i++)
        if (!strcmp(rows[i].o.flag, flag)) return &rows[i].o;
    return NULL;
}

static const row *row_of(const eng_attn_opt *o) { return (const row *)o; } /* o is a row's first member */

/* The field's value as a number (GB: GiB; enum and bool: the int). */
static double get(const eng_attn_params *a, const row *r) {
    const char *p = (const char *)a + r->off;
    switch (r->o.kind) {
    case ENG_ATTN_FLOAT: return *(const float *)p;
    case ENG_ATTN_GB: return (double)*(const size_t *)p / (double)(1u << 30);
    default: return *(const int *)p;
    }
}

/* Stores v, already checked against the row. */
static void put(eng_attn_params *a, const row *r, double v) {
    char *p = (char *)a + r->off;
    switch (r->o.kind) {
    case ENG_ATTN_FLOAT: *(float *)p = (float)v; break;
    case ENG_ATTN_GB: *(size_t *)p = (size_t)(v * (double)(1u << 30)); break;
    default: *(int *)p = (int)v; break;
    }
}

eng_attn_value eng_attn_get(const eng_attn_params *a, const eng_attn_opt *o) {
    const row *r = row_of(o);
    eng_attn_value v = {get(a, r), NULL};
    if (o->kind == ENG_ATTN_ENUM) v.name = r->names((int)v.num);
    return v;
}

eng_attn_params eng_attn_default(void) {
    eng_attn_params a;
    memset(&a, 0, sizeof a);
    for (int i = 0; i < N_ROWS; i++) put(&a, &rows[i], rows[i].def);
    return a;
}

bool eng_attn_is_unset(const eng_attn_params *a) {
    for (int i = 0; i < N_ROWS; i++)
        if (get(a, &rows[i]) != 0) return false;
    return true;
}

/* ---- checking and setting ------------------------------------------------------------------- */

/* The names of an enum (or of the table, r NULL) joined by ", ". */
static void join_names(const row *r, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    for (int v = 0; n < cap; v++) {
        const char *s = r ? r->names(v) : v < N_ROWS ? rows[v].o.name : NULL;
        if (!s) break;
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", v ? ", " : "", s);
    }
}

/* Why v (shown to the user as text) is not a valid value of r: the one message of each kind. */
static int refuse(const row *r, const char *text, char *err, size_t errlen) {
    const char *key = r->o.name;
    char names[128];
    switch (r->o.kind) {
    case ENG_ATTN_ENUM:
        join_names(r, names, sizeof names);
        eng_set_err(err, errlen, "unknown attention %s '%.32s' (%s)", key, text, names);
        break;
    case ENG_ATTN_BOOL:
        eng_set_err(err, errlen, "attention %s must be true or false, not '%.32s'", key, text);
        break;
    case ENG_ATTN_INT:
        if (r->pow2)
            eng_set_err(err, errlen, "attention %s must be a power of two in [%.0f, %.0f], not '%.32s'", key,
                        r->lo, r->hi, text);
        else
            eng_set_err(err, errlen, "attention %s must be an integer in [%.0f, %.0f], not '%.32s'", key, r->lo,
                        r->hi, text);
        break;
    default:
        eng_set_err(err, errlen, "attention %s must be a number in %c%g, %g], not '%.32s'", key,
                    r->lo_open ? '(' : '[', r->lo, r->hi, text);
        break;
    }
    return -1;
}

/* Whether v is a value of r (enum: a value with a name; bool: 0 or 1). */
static bool valid(const row *r, double v) {
    if (!isfinite(v)) return false;
    if (r->o.kind == ENG_ATTN_ENUM) return v == floor(v) && v >= 0 && v <= 1 << 16 && r->names((int)v);
    if (v > r->hi || (r->lo_open ? v <= r->lo : v < r->lo)) return false;
    if (r->o.kind == ENG_ATTN_INT || r->o.kind == ENG_ATTN_BOOL) {
        if (v != floor(v)) return false;
        if (r->pow2 && ((long)v & ((long)v - 1))) return false;
    }
    return true;
}

/* refuse() for a value given as a number. */
static int refuse_num(const row *r, double v, char *err, size_t errlen) {
    char shown[40];
    snprintf(shown, sizeof shown, "%.17g", v);
    return refuse(r, shown, err, errlen);
}

/* Sets r to the number v; text is how the user wrote it (NULL: a typed number). */
static int set_value(eng_attn_params *a, const row *r, double v, const char *text, char *err, size_t errlen) {
    if (!valid(r, v)) return text ? refuse(r, text, err, errlen) : refuse_num(r, v, err, errlen);
    put(a, r, v);
    return 0;
}

static const row *find_row(const char *key, char *err, size_t errlen) {
    const eng_attn_opt *o = eng_attn_opt_find(key);
    if (!o) {
        char names[256];
        join_names(NULL, names, sizeof names);
        eng_set_err(err, errlen, "unknown attention key '%s' (%s)", key, names);
    }
    return o ? row_of(o) : NULL;
}

int eng_attn_set(eng_attn_params *a, const char *key, const char *value, char *err, size_t errlen) {
    const row *r = find_row(key, err, errlen);
    if (!r) return -1;
    if (!value) {
        eng_set_err(err, errlen, "attention %s needs a value", key);
        return -1;
    }
    switch (r->o.kind) {
    case ENG_ATTN_ENUM:
        for (int v = 0; r->names(v); v++)
            if (!strcmp(r->names(v), value)) return set_value(a, r, v, value, err, errlen);
        return refuse(r, value, err, errlen);
    case ENG_ATTN_BOOL:
        if (!strcmp(value, "1") || !strcmp(value, "true")) return set_value(a, r, 1, value, err, errlen);
        if (!strcmp(value, "0") || !strcmp(value, "false")) return set_value(a, r, 0, value, err, errlen);
        return refuse(r, value, err, errlen);
    default: {
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end) return refuse(r, value, err, errlen);
        return set_value(a, r, v, value, err, errlen);
    }
    }
}

int eng_attn_set_num(eng_attn_params *a, const char *key, double v, char *err, size_t errlen) {
    const row *r = find_row(key, err, errlen);
    if (!r) return -1;
    if (r->o.kind == ENG_ATTN_ENUM) return refuse_num(r, v, err, errlen); /* names only */
    return set_value(a, r, v, NULL, err, errlen);
}

int eng_attn_set_bool(eng_attn_params *a, const char *key, bool v, char *err, size_t errlen) {
    const row *r = find_row(key, err, errlen);
    if (!r) return -1;
    if (r->o.kind != ENG_ATTN_BOOL) return refuse(r, v ? "true" : "false", err, errlen);
    return set_value(a, r, v, NULL, err, errlen);
}

int eng_attn_set_arg(eng_attn_params *a, const char *flag, const char *next, char *err, size_t errlen) {
    const eng_attn_opt *o = eng_attn_opt_of_flag(flag);
    if (!o) return 0;
    if (o->kind == ENG_ATTN_BOOL) return eng_attn_set_bool(a, o->name, true, err, errlen) ? -1 : 1;
    if (!next) {
        eng_set_err(err, errlen, "%s needs a value", flag);
        return -1;
    }
    char why[200];
    if (eng_attn_set(a, o->name, next, why, sizeof why)) {
        eng_set_err(err, errlen, "%s: %s", flag, why);
        return -1;
    }
    return 2;
}

int eng_attn_check(const eng_attn_params *a, char *err, size_t errlen) {
    for (int i = 0; i < N_ROWS; i++) {
        double v = get(a, &rows[i]);
        if (!valid(&rows[i], v)) return refuse_num(&rows[i], v, err, errlen);
    }
    if (a->estimate && a->tail > 0) {
        eng_set_err(err, errlen, "estimate and tail both stand for the keys the selector leaves: set one");
        return -1;
    }
    if (a->estimate && a->reuse > 1) {
        eng_set_err(err, errlen, "estimate is the current query's: it cannot be reused (reuse %d)", a->reuse);
        return -1;
    }
    return 0;
}

void eng_attn_usage(FILE *f, int col, const char *storage_note) {
    for (int i = 0; i < N_ROWS; i++) {
        const row *r = &rows[i];
        char left[64], names[128] = "", note[160] = "";
        size_t n = 0;
        snprintf(left, sizeof left, "%s%s%s", r->o.flag, r->arg ? " " : "", r->arg ? r->arg : "");
        if (r->o.kind == ENG_ATTN_ENUM && !strchr(r->arg, '|')) { /* values not shown in the arg */
            names[0] = ' ';
            join_names(r, names + 1, sizeof names - 1);
        }
        if (r->o.kind == ENG_ATTN_ENUM)
            n += (size_t)snprintf(note, sizeof note, "default %s", r->names((int)r->def));
        else if (r->def != 0 || r->zero)
            n += (size_t)snprintf(note, sizeof note, "default %g%s%s", r->def, r->zero ? ": " : "", r->zero ? r->zero : "");
        if (r->o.storage && storage_note && n < sizeof note)
            n += (size_t)snprintf(note + n, sizeof note - n, "%s%s", n ? "; " : "", storage_note);
        char tail[170] = "";
        if (n) snprintf(tail, sizeof tail, " (%s)", note);
        fprintf(f, "  %-*s %s%s%s%s\n", col - 3, left, r->help, names[0] ? ":" : "", names, tail);
    }
}
