/* The attention options table (engine/attn_opts.c) against an independent statement of each
 * option: defaults equal eng_attn_default's fields, bounds accept their ends and refuse one step
 * past them with the option's message, the text and typed setters agree value for value and
 * message for message, eng_attn_check refuses what the setters refuse, and the command-line
 * and --help views cover every option once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model.h"

/* What each option is, written out apart from the table. */
static const struct {
    const char *name, *flag;
    eng_attn_kind kind;
    double lo, hi, def;
    int lo_open, storage;
} spec[] = {
    {"selector", "--attn", ENG_ATTN_ENUM, 0, 0, ENG_SELECTOR_AUTO, 0, 0},
    {"top_k", "--attn-top-k", ENG_ATTN_INT, 0, 1 << 24, 0, 0, 0},
    {"scan", "--attn-scan", ENG_ATTN_FLOAT, 0, 1, 0.02f, 1, 0},
    {"target", "--attn-target", ENG_ATTN_FLOAT, 0, 1, 0, 0, 0},
    {"mass", "--attn-mass", ENG_ATTN_FLOAT, 0, 1, 0, 0, 0},
    {"expand", "--attn-expand", ENG_ATTN_INT, 0, 64, 0, 0, 0},
    {"tail", "--attn-tail", ENG_ATTN_FLOAT, 0, 1, 0, 0, 0},
    {"refine", "--attn-refine", ENG_ATTN_FLOAT, 0, 1000, 0, 0, 0},
    {"estimate", "--attn-estimate", ENG_ATTN_BOOL, 0, 1, 0, 0, 0},
    {"reuse", "--attn-reuse", ENG_ATTN_INT, 0, 64, 0, 0, 0},
    {"dense_below", "--attn-dense-below", ENG_ATTN_INT, 0, 1 << 24, 0, 0, 0},
    {"gqa", "--attn-gqa", ENG_ATTN_ENUM, 0, 0, IDX_GQA_UNION, 0, 0},
    {"sink", "--sink", ENG_ATTN_INT, 0, 1 << 24, 128, 0, 0},
    {"window", "--window", ENG_ATTN_INT, 1, 1 << 24, 512, 0, 0},
    {"measure_recall", "--measure-recall", ENG_ATTN_BOOL, 0, 1, 0, 0, 0},
    {"levels", "--attn-levels", ENG_ATTN_INT, 0, 2, 0, 0, 0},
    {"page_size", "--page-size", ENG_ATTN_INT, 1, 1 << 16, 64, 0, 1},
    {"kv_f16", "--kv-f16", ENG_ATTN_BOOL, 0, 1, 0, 0, 1},
    {"kv_mem_gb", "--kv-mem-gb", ENG_ATTN_GB, 0, 1 << 20, 0, 0, 1},
};
enum { N_SPEC = sizeof spec / sizeof spec[0] };

static int spec_of(const char *name) {
    for (int i = 0; i < N_SPEC; i++)
        if (!strcmp(spec[i].name, name)) return i;
    return -1;
}

/* Whether every option of a and b reads the same. */
static int same_params(const eng_attn_params *a, const eng_attn_params *b) {
    const eng_attn_opt *o;
    for (int i = 0; (o = eng_attn_opt_at(i)); i++)
        if (eng_attn_get(a, o).num != eng_attn_get(b, o).num) return 0;
    return 1;
}

/* Sets v on option i through the text setter (as "%.17g") and the typed one, from the defaults;
 * checks that both give the same status, message and parameters. Returns the status. */
static int set_both(int i, double v, char *err, size_t errlen) {
    eng_attn_params t = eng_attn_default(), n = eng_attn_default();
    char text[64], et[256] = "", en[256] = "";
    snprintf(text, sizeof text, "%.17g", v);
    int rt = eng_attn_set(&t, spec[i].name, text, et, sizeof et);
    int rn = eng_attn_set_num(&n, spec[i].name, v, en, sizeof en);
    CHECK(rt == rn && !strcmp(et, en) && same_params(&t, &n), "%s = %s: text (%d, '%s') and number (%d, '%s') agree",
          spec[i].name, text, rt, et, rn, en);
    if (!rt) {
        const eng_attn_value got = eng_attn_get(&n, eng_attn_opt_find(spec[i].name));
        const double want = spec[i].kind == ENG_ATTN_FLOAT ? (float)v : v;
        CHECK(fabs(got.num - want) <= 1e-9 * fabs(want), "%s = %s reads back %.17g", spec[i].name, text, got.num);
    }
    snprintf(err, errlen, "%s", et);
    return rt;
}

static void test_table(void) {
    const eng_attn_params d = eng_attn_default();
    CHECK(d.selector == ENG_SELECTOR_AUTO && d.top_k == 0 && d.scan == 0.02f && d.gqa_mean == 0 && d.n_sink == 128 &&
          d.n_window == 512 && d.page_size == 64 && !d.kv_f16 && !d.kv_max_bytes && !d.measure_recall &&
          d.target == 0 && d.levels == 0, "eng_attn_default: auto, 100, 0.02, union, 128, 512, pages of 64");
    int n = 0;
    while (eng_attn_opt_at(n)) n++;
    CHECK(n == N_SPEC && !eng_attn_opt_at(-1), "%d options in the table", n);
    for (int i = 0; i < N_SPEC && i < n; i++) {
        const eng_attn_opt *o = eng_attn_opt_at(i);
        CHECK(!strcmp(o->name, spec[i].name) && !strcmp(o->flag, spec[i].flag) && o->kind == spec[i].kind &&
              o->storage == spec[i].storage, "option %d is %s (%s)", i, spec[i].name, o->name);
        CHECK(eng_attn_opt_find(spec[i].name) == o && eng_attn_opt_of_flag(spec[i].flag) == o,
              "%s found by name and by flag", spec[i].name);
        CHECK(eng_attn_get(&d, o).num == spec[i].def, "%s: default %g", spec[i].name, spec[i].def);
    }
    CHECK(!eng_attn_opt_find("top-k") && !eng_attn_opt_of_flag("top_k") && !eng_attn_opt_find(NULL), "no stray keys");
    CHECK(!strcmp(eng_attn_get(&d, eng_attn_opt_find("selector")).name, "auto") &&
          !strcmp(eng_attn_get(&d, eng_attn_opt_find("gqa")).name, "union") &&
          !eng_attn_get(&d, eng_attn_opt_find("top_k")).name, "enum values read as names");
    eng_attn_params z;
    memset(&z, 0, sizeof z);
    CHECK(eng_attn_is_unset(&z) && !eng_attn_is_unset(&d), "all-zero is unset, the defaults are not");
    char err[256];
    CHECK(eng_attn_check(&d, err, sizeof err) == 0, "the defaults pass the check: %s", err);
}

static void test_bounds(void) {
    char err[256];
    for (int i = 0; i < N_SPEC; i++) {
        const eng_attn_kind k = spec[i].kind;
        if (k != ENG_ATTN_INT && k != ENG_ATTN_FLOAT && k != ENG_ATTN_GB) continue;
        char key[64];
        snprintf(key, sizeof key, "attention %s must be", spec[i].name);
        const double step = k == ENG_ATTN_INT ? 1 : 1e-3;
        CHECK(set_both(i, spec[i].hi, err, sizeof err) == 0, "%s: the upper bound is accepted (%s)", spec[i].name, err);
        CHECK(set_both(i, spec[i].hi + step, err, sizeof err) && strstr(err, key), "%s: past the upper bound: %s",
              spec[i].name, err);
        CHECK(set_both(i, spec[i].lo - step, err, sizeof err) && strstr(err, key), "%s: below the lower bound: %s",
              spec[i].name, err);
        CHECK((set_both(i, spec[i].lo, err, sizeof err) != 0) == spec[i].lo_open, "%s: the lower bound is %s",
              spec[i].name, spec[i].lo_open ? "refused" : "accepted");
        if (k == ENG_ATTN_INT)
            CHECK(set_both(i, spec[i].lo + 0.5, err, sizeof err) && strstr(err, key), "%s: a fraction: %s",
                  spec[i].name, err);
        CHECK(set_both(i, INFINITY, err, sizeof err) && strstr(err, key), "%s: infinity: %s", spec[i].name, err);
    }
    const int page = spec_of("page_size");
    CHECK(set_both(page, 48, err, sizeof err) && strstr(err, "power of two"), "page_size 48: %s", err);
    CHECK(set_both(page, 4096, err, sizeof err) == 0, "page_size 4096");
    eng_attn_params a = eng_attn_default();
    CHECK(eng_attn_set(&a, "kv_mem_gb", "1.5", err, sizeof err) == 0 && a.kv_max_bytes == 3ull << 29, "1.5 GiB in bytes");
    CHECK(eng_attn_set(&a, "top_k", "7x", err, sizeof err) && strstr(err, "not '7x'"), "text that is no number: %s", err);
    CHECK(eng_attn_set(&a, "top_k", NULL, err, sizeof err) && strstr(err, "needs a value"), "no value: %s", err);
}

static void test_bool_enum(void) {
    char err[256], e2[256];
    eng_attn_params a = eng_attn_default(), b = eng_attn_default();
    const char *yes[] = {"true", "1"}, *no[] = {"false", "0"};
    for (int i = 0; i < 2; i++) {
        CHECK(eng_attn_set(&a, "kv_f16", yes[i], err, sizeof err) == 0 && a.kv_f16 == 1, "kv_f16 %s", yes[i]);
        CHECK(eng_attn_set(&a, "kv_f16", no[i], err, sizeof err) == 0 && a.kv_f16 == 0, "kv_f16 %s", no[i]);
    }
    CHECK(eng_attn_set_bool(&a, "measure_recall", true, err, sizeof err) == 0 &&
          eng_attn_set_num(&b, "measure_recall", 1, err, sizeof err) == 0 && a.measure_recall == 1 && same_params(&a, &b),
          "a boolean from true and from 1");
    CHECK(eng_attn_set(&a, "measure_recall", "yes", err, sizeof err) && strstr(err, "true or false"), "yes: %s", err);
    CHECK(eng_attn_set_num(&a, "measure_recall", 0.5, err, sizeof err) && strstr(err, "not '0.5'"), "0.5: %s", err);
    /* a boolean given to a number, a number given to an enum: as if written as text */
    CHECK(eng_attn_set_bool(&a, "top_k", true, err, sizeof err) && eng_attn_set(&b, "top_k", "true", e2, sizeof e2) &&
          !strcmp(err, e2), "top_k true: %s", err);
    CHECK(eng_attn_set_num(&a, "selector", 3, err, sizeof err) && eng_attn_set(&b, "selector", "3", e2, sizeof e2) &&
          !strcmp(err, e2) && strstr(err, "unknown attention selector '3'"), "selector 3: %s", err);
    CHECK(eng_attn_set_bool(&a, "gqa", false, err, sizeof err) && strstr(err, "'false'"), "gqa false: %s", err);
    const char *sel[] = {"dense", "window", "oracle", "retrieval", "ivf", "centroids", "quest"};
    for (int i = 0; i < 7; i++) {
        CHECK(eng_attn_set(&a, "selector", sel[i], err, sizeof err) == 0 && a.selector == (idx_kind)i &&
              !strcmp(eng_attn_get(&a, eng_attn_opt_find("selector")).name, sel[i]), "selector %s parsed once", sel[i]);
    }
    CHECK(eng_attn_set(&a, "selector", "magic", err, sizeof err) &&
          !strcmp(err, "unknown attention selector 'magic' (dense, window, oracle, retrieval, ivf, centroids, quest, sparq, auto)"),
          "unknown selector: %s", err);
    CHECK(eng_attn_set(&a, "gqa", "mean", err, sizeof err) == 0 && a.gqa_mean == 1, "gqa mean");
    CHECK(eng_attn_set(&a, "gqa", "max", err, sizeof err) && strstr(err, "(union, mean)"), "gqa max: %s", err);
    CHECK(eng_attn_set(&a, "bogus", "1", err, sizeof err) &&
          !strcmp(err, "unknown attention key 'bogus' (selector, top_k, scan, target, mass, expand, tail, refine, estimate, reuse, dense_below, gqa, sink, "
                       "window, measure_recall, levels, page_size, kv_f16, kv_mem_gb)"), "unknown key: %s", err);
    CHECK(eng_attn_set_num(&a, "bogus", 1, e2, sizeof e2) && !strcmp(err, e2), "unknown key, typed: %s", e2);
}

static void test_check(void) {
    char err[256];
    struct { const char *key; eng_attn_params a; } bad[8];
    for (int i = 0; i < 8; i++) bad[i].a = eng_attn_default();
    bad[0].key = "selector", bad[0].a.selector = (idx_kind)99;
    bad[1].key = "top_k", bad[1].a.top_k = -1;
    bad[2].key = "scan", bad[2].a.scan = 0;
    bad[3].key = "target", bad[3].a.target = NAN;
    bad[4].key = "gqa", bad[4].a.gqa_mean = 2;
    bad[5].key = "window", bad[5].a.n_window = 0;
    bad[6].key = "levels", bad[6].a.levels = 3;
    bad[7].key = "page_size", bad[7].a.page_size = 48;
    for (int i = 0; i < 8; i++) {
        char key[64];
        snprintf(key, sizeof key, "attention %s", bad[i].key);
        CHECK(eng_attn_check(&bad[i].a, err, sizeof err) && strstr(err, key), "check refuses a bad %s: %s", bad[i].key, err);
    }
    /* two estimates of the same keys */
    eng_attn_params both = eng_attn_default();
    both.estimate = 1;
    both.tail = 0.01f;
    CHECK(eng_attn_check(&both, err, sizeof err) && strstr(err, "estimate and tail"), "estimate with tail: %s", err);
    both.tail = 0;
    CHECK(eng_attn_check(&both, err, sizeof err) == 0, "estimate alone is valid");
}

static void test_cli(void) {
    char err[256];
    eng_attn_params a = eng_attn_default();
    CHECK(eng_attn_set_arg(&a, "--attn-top-k", "7", err, sizeof err) == 2 && a.top_k == 7, "--attn-top-k 7");
    CHECK(eng_attn_set_arg(&a, "--kv-f16", "x", err, sizeof err) == 1 && a.kv_f16 == 1, "--kv-f16 takes no value");
    CHECK(eng_attn_set_arg(&a, "--attn", "oracle", err, sizeof err) == 2 && a.selector == IDX_ORACLE, "--attn oracle");
    CHECK(eng_attn_set_arg(&a, "--attn", "quest", err, sizeof err) == 2 && a.selector == IDX_QUEST, "--attn quest");
    CHECK(eng_attn_set_arg(&a, "--temp", "1", err, sizeof err) == 0, "not an attention flag");
    CHECK(eng_attn_set_arg(&a, "--window", NULL, err, sizeof err) == -1 && !strcmp(err, "--window needs a value"),
          "missing value: %s", err);
    CHECK(eng_attn_set_arg(&a, "--attn-top-k", "-1", err, sizeof err) == -1 &&
          !strcmp(err, "--attn-top-k: attention top_k must be an integer in [0, 16777216], not '-1'"), "bad value: %s", err);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    eng_attn_usage(f, 24, "server-wide");
    fclose(f);
    int lines = 0;
    for (const char *p = buf; p && *p; p++) lines += *p == '\n';
    CHECK(lines == N_SPEC, "one --help line per option (%d)", lines);
    for (int i = 0; i < N_SPEC; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "\n  %s ", spec[i].flag);
        CHECK(buf && (strstr(buf, flag) || !strncmp(buf, flag + 1, strlen(flag) - 1)), "--help shows %s", spec[i].flag);
    }
    CHECK(buf && strstr(buf, "(default 64; server-wide)") && strstr(buf, "(default 512)") &&
          strstr(buf, "dense, window, oracle, retrieval, ivf, centroids, quest, sparq, auto (default auto)"), "defaults in --help:\n%s", buf);
    free(buf);
}

int main(void) {
    test_table();
    test_bounds();
    test_bool_enum();
    test_check();
    test_cli();
    return check_summary("test_attn_opts");
}
