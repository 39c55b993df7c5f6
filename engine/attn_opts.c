/* The attention knobs by name: one table of keys, flags, ranges and meanings shared by the
 * command line, the server's configuration file and per-request parameters, so the three cannot
 * disagree on what a value means or which values are valid. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "index.h"
#include "model.h"
#include "util.h"

typedef enum { K_INT, K_FLOAT, K_BOOL, K_SELECTOR, K_GQA, K_GB } kind;

static const struct {
    const char *key, *flag;
    kind k;
    double lo, hi;   /* inclusive, except scan/target whose lower bound is exclusive (lo_open) */
    int lo_open, storage;
} keys[] = {
    {"selector", "--attn", K_SELECTOR, 0, 0, 0, 0},
    {"top_k", "--attn-top-k", K_INT, 1, 1 << 24, 0, 0},
    {"scan", "--attn-scan", K_FLOAT, 0, 1, 1, 0},
    {"target", "--attn-target", K_FLOAT, 0, 1, 0, 0},
    {"gqa", "--attn-gqa", K_GQA, 0, 0, 0, 0},
    {"sink", "--sink", K_INT, 0, 1 << 24, 0, 0},
    {"window", "--window", K_INT, 1, 1 << 24, 0, 0},
    {"measure_recall", "--measure-recall", K_BOOL, 0, 1, 0, 0},
    {"levels", "--attn-levels", K_INT, 0, 2, 0, 0},
    {"page_size", "--page-size", K_INT, 1, 1 << 16, 0, 1},
    {"kv_f16", "--kv-f16", K_BOOL, 0, 1, 0, 1},
    {"kv_mem_gb", "--kv-mem-gb", K_GB, 0, 1 << 20, 0, 1},
};
enum { N_KEYS = sizeof keys / sizeof keys[0] };

static int find_key(const char *key) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].key, key)) return i;
    return -1;
}

int eng_attn_is_storage_key(const char *key) {
    int i = find_key(key);
    return i >= 0 && keys[i].storage;
}

const char *eng_attn_key_of_flag(const char *flag) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].flag, flag)) return keys[i].key;
    return NULL;
}

int eng_attn_set(eng_attn_params *a, const char *key, const char *value, char *err, size_t errlen) {
    int i = find_key(key);
    if (i < 0) {
        eng_set_err(err, errlen, "unknown attention key '%s' (selector, top_k, scan, target, gqa, sink, "
                    "window, measure_recall, levels, page_size, kv_f16, kv_mem_gb)", key);
        return -1;
    }
    if (!value) {
        eng_set_err(err, errlen, "attention %s needs a value", key);
        return -1;
    }
    switch (keys[i].k) {
    case K_SELECTOR: {
        idx_kind k;
        if (idx_kind_parse(value, &k) != IDX_OK) {
            eng_set_err(err, errlen, "unknown attention selector '%.32s' (dense, window, oracle, retrieval, ivf, centroids)", value);
            return -1;
        }
        snprintf(a->selector, sizeof a->selector, "%s", idx_kind_name(k));
        return 0;
    }
    case K_GQA:
        if (strcmp(value, "union") && strcmp(value, "mean")) {
            eng_set_err(err, errlen, "attention gqa must be union or mean, not '%.32s'", value);
            return -1;
        }
        a->gqa_mean = !strcmp(value, "mean");
        return 0;
    case K_BOOL:
        if (!strcmp(value, "1") || !strcmp(value, "true")) {
            *(key[0] == 'm' ? &a->measure_recall : &a->kv_f16) = 1;
        } else if (!strcmp(value, "0") || !strcmp(value, "false")) {
            *(key[0] == 'm' ? &a->measure_recall : &a->kv_f16) = 0;
        } else {
            eng_set_err(err, errlen, "attention %s must be true or false, not '%.32s'", key, value);
            return -1;
        }
        return 0;
    default: break;
    }
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    int bad = errno || end == value || *end || !isfinite(v) || v > keys[i].hi ||
              (keys[i].lo_open ? v <= keys[i].lo : v < keys[i].lo);
    if (keys[i].k == K_INT && v != floor(v)) bad = 1;
    if (!strcmp(key, "page_size") && !bad && ((long)v & ((long)v - 1))) bad = 1;
    if (bad) {
        if (!strcmp(key, "page_size"))
            eng_set_err(err, errlen, "attention page_size must be a power of two in [1, 65536], not '%.32s'", value);
        else if (keys[i].k == K_INT)
            eng_set_err(err, errlen, "attention %s must be an integer in [%.0f, %.0f], not '%.32s'", key,
                        keys[i].lo, keys[i].hi, value);
        else
            eng_set_err(err, errlen, "attention %s must be a number in %c%g, %g], not '%.32s'", key,
                        keys[i].lo_open ? '(' : '[', keys[i].lo, keys[i].hi, value);
        return -1;
    }
    if (!strcmp(key, "top_k")) a->top_k = (int)v;
    else if (!strcmp(key, "scan")) a->scan = (float)v;
    else if (!strcmp(key, "target")) a->target = (float)v;
    else if (!strcmp(key, "sink")) a->n_sink = (int)v;
    else if (!strcmp(key, "levels")) a->levels = (int)v;
    else if (!strcmp(key, "window")) a->n_window = (int)v;
    else if (!strcmp(key, "page_size")) a->page_size = (int)v;
    else if (!strcmp(key, "kv_mem_gb")) a->kv_max_bytes = (size_t)(v * (double)(1u << 30));
    return 0;
}

int eng_attn_check(const eng_attn_params *a, char *err, size_t errlen) {
    idx_kind kind;
    if (idx_kind_parse(a->selector, &kind) != IDX_OK) {
        eng_set_err(err, errlen, "unknown attention selector '%.16s' (dense, window, oracle, retrieval, ivf, centroids)",
                    a->selector);
        return -1;
    }
    if (a->top_k < 1 || a->n_sink < 0 || a->n_window < 1 || !(a->scan > 0.0f && a->scan <= 1.0f) ||
        !(a->target >= 0.0f && a->target <= 1.0f) || (a->page_size & (a->page_size - 1))) {
        eng_set_err(err, errlen, "invalid attention parameters (top_k %d, sink %d, window %d, scan %g, target %g, page_size %d)",
                    a->top_k, a->n_sink, a->n_window, a->scan, a->target, a->page_size);
        return -1;
    }
    return 0;
}
