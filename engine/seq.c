/* Sequences: a KV store, a selector set and the state of one stream of tokens. A sequence may
 * start from a prefix it borrows read-only (a registered context's pages, or a forked parent's)
 * and then appends its own tokens; a failed forward step marks it unusable until reset.
 * Private state lives in model_impl.h, shared with the forward passes. */
#include "model_impl.h"
#include "util.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu.h"

/* ---- sequences ---- */

/* The selector state of a sequence: one slot per (global layer, KV head). */
static int make_index(const eng_model *m, idx_kind kind, idx_set **out, char *err, size_t errlen) {
    const eng_hparams *hp = &m->hp;
    int *mask = calloc(hp->n_layer, sizeof(int));
    if (!mask) {
        eng_set_err(err, errlen, "out of memory");
        return -1;
    }
    for (int l = 0; l < hp->n_layer; l++) mask[l] = !eng_layer_is_local(m, l);
    idx_params ip = idx_params_default();
    ip.kind = kind;
    ip.n_layer = hp->n_layer;
    ip.n_head_kv = hp->n_head_kv;
    ip.head_dim = hp->head_dim;
    ip.layer_mask = mask;
    ip.group_size = hp->n_head / hp->n_head_kv;
    ip.attn_scale = hp->attn_scale;
    int rc = idx_create(&ip, out);
    free(mask);
    if (rc != IDX_OK) {
        eng_set_err(err, errlen, "selector: %s", idx_strerror(rc));
        return -1;
    }
    return 0;
}

/* What the model's executor cannot run: the estimate part is merged by the CPU executor only. */
static int check_executor(const eng_model *m, const eng_attn_params *a, char *err, size_t errlen) {
    if (a->estimate && m->gpu) {
        eng_set_err(err, errlen, "attention estimate runs on the CPU only; this model runs on the GPU");
        return -1;
    }
    return 0;
}

eng_attn_params eng_attn_resolve(const eng_model *m, const eng_attn_params *a) {
    eng_attn_params r = *a;
    if (a->selector != ENG_SELECTOR_AUTO) return r;
    int qk_norm = 0;
    for (int l = 0; l < m->hp.n_layer; l++) qk_norm |= m->layers[l].q_norm != NULL;
    if (m->gpu || qk_norm) {
        r.selector = IDX_DENSE;
        return r;
    }
    r.selector = IDX_SPARQ;
    if (r.tail == 0 && !r.estimate) r.tail = ENG_AUTO_TAIL; /* the two do not combine; an asked-for estimate stays */
    if (r.dense_below == 0) r.dense_below = ENG_AUTO_DENSE_BELOW;
    return r;
}

static void set_request(eng_seq *s, const eng_attn_params *a) {
    s->req = idx_request_default();
    s->req.top_k = a->top_k;
    s->req.scan = a->scan;
    s->req.gqa = a->gqa_mean ? IDX_GQA_MEAN : IDX_GQA_UNION;
    if (a->target > 0) s->req.target = a->target;
    s->req.mass = a->mass;
    s->req.refine = a->refine;
    s->measure_recall = a->measure_recall;
}

/* Drops what the sequence borrows its prefix from (a context, a forked parent); its store must
 * have released the borrowed pages first. */
static void release_prefix(eng_seq *s) {
    if (s->owner) s->release(s->owner);
    s->owner = NULL;
    s->release = NULL;
    s->fixed = 0;
    s->fixed_lo = s->fixed_hi = 0;
}

/* The store as shared with forks: it lives until the lender and every fork have let it go. */
struct seq_share {
    kv_store *kv;
    atomic_int refs;
    /* what the store itself borrows from (a fork of a fork), handed over when the sequence that
     * made the share leaves it: released after the store */
    void *owner;
    void (*release)(void *owner);
};

static void share_unref(void *p) {
    struct seq_share *sh = p;
    if (atomic_fetch_sub(&sh->refs, 1) == 1) {
        kv_free(sh->kv);
        if (sh->release) sh->release(sh->owner);
        free(sh);
    }
}

/* The sequence stops using its store, which its forks keep: the store's own prefix goes with it. */
static void hand_over_share(eng_seq *s) {
    s->share->owner = s->owner;
    s->share->release = s->release;
    s->owner = NULL;
    s->release = NULL;
    share_unref(s->share);
    s->share = NULL;
}

static int make_views(eng_seq *s) {
    const eng_hparams *hp = &s->m->hp;
    for (int l = 0; l < hp->n_layer; l++)
        for (int h = 0; h < hp->n_head_kv; h++)
            if (kv_view(s->kv, l, h, &s->views[l * hp->n_head_kv + h]) != KV_OK) return -1;
    return 0;
}

/* Gives up the store forks borrow from: they keep it; this sequence takes a fresh, empty one of
 * the same shape. */
static int leave_share(eng_seq *s) {
    if (!s->share) return 0;
    if (atomic_load(&s->share->refs) == 1) { /* no fork left: keep the store */
        free(s->share);
        s->share = NULL;
        return 0;
    }
    kv_store *fresh = NULL;
    if (kv_create(kv_get_params(s->kv), &fresh) != KV_OK) return -1;
    hand_over_share(s);
    s->kv = fresh;
    return make_views(s);
}

eng_seq *eng_seq_create(const eng_model *m, int n_ctx, char *err, size_t errlen) {
    return eng_seq_create_ex(m, n_ctx, &m->params.attn, err, errlen);
}

eng_seq *eng_seq_create_ex(const eng_model *m, int n_ctx, const eng_attn_params *asked, char *err,
                           size_t errlen) {
    const eng_hparams *hp = &m->hp;
    const eng_attn_params resolved = eng_attn_resolve(m, asked), *a = &resolved;
    if (n_ctx <= 0) {
        eng_set_err(err, errlen, "context size must be positive");
        return NULL;
    }
    if (eng_attn_check(a, err, errlen) || check_executor(m, a, err, errlen)) return NULL;
    eng_seq *s = calloc(1, sizeof *s);
    int *layer_window = calloc(hp->n_layer, sizeof(int));
    if (!s || !layer_window) {
        free(s);
        free(layer_window);
        eng_set_err(err, errlen, "out of memory");
        return NULL;
    }
    s->m = m;
    s->n_ctx = n_ctx;
    s->attn = *a;
    s->measure_recall = a->measure_recall;
    for (int l = 0; l < hp->n_layer; l++) layer_window[l] = eng_layer_is_local(m, l) ? hp->sliding_window : 0;

    kv_params kp = kv_params_default();
    kp.n_layer = hp->n_layer;
    kp.n_head_kv = hp->n_head_kv;
    kp.head_dim = hp->head_dim;
    kp.v_dim = hp->v_dim;
    kp.max_tokens = n_ctx;
    if (a->page_size > 0) kp.page_size = a->page_size;
    kp.dtype = a->kv_f16 ? KV_F16 : KV_F32;
    kp.n_sink = a->n_sink;
    kp.n_window = a->n_window;
    kp.max_bytes = a->kv_max_bytes;
    kp.layer_window = layer_window;
    kp.ring_slack = m->chunk;
    if (m->gpu) {
        /* the device reads the pages and their tables in place */
        kp.page_alloc = gpu_host_alloc;
        kp.page_free = gpu_host_free;
    }
    int rc = kv_create(&kp, &s->kv);
    if (rc != KV_OK) {
        eng_set_err(err, errlen, "KV store: %s", kv_strerror(rc));
        goto fail;
    }
    if (make_index(m, a->selector, &s->ix, err, errlen)) goto fail;
    s->caps = idx_caps(s->ix);
    set_request(s, a);
    s->views = calloc((size_t)hp->n_layer * hp->n_head_kv, sizeof *s->views);
    s->ids_cap = n_ctx > 1 ? n_ctx : 1;
    s->ids = m->gpu ? gpu_host_alloc(sizeof(int32_t) * s->ids_cap * hp->n_head_kv)
                    : malloc(sizeof(int32_t) * s->ids_cap * hp->n_head_kv);
    s->est_v = malloc(sizeof(float) * (size_t)hp->n_head * hp->v_dim);
    s->est_rel = malloc(sizeof(float) * (size_t)hp->n_head);
    s->reuse = calloc((size_t)hp->n_layer * hp->n_head_kv, sizeof *s->reuse);
    if (!s->views || !s->ids || !s->est_v || !s->est_rel || !s->reuse) {
        eng_set_err(err, errlen, "out of memory");
        goto fail;
    }
    make_views(s);
    eng_plan_reuse_clear(s);
    free(layer_window);
    return s;
fail:
    free(layer_window);
    eng_seq_free(s);
    return NULL;
}

void eng_seq_free(eng_seq *s) {
    if (!s) return;
    if (s->share) hand_over_share(s); /* forks may still read the store */
    else kv_free(s->kv);
    release_prefix(s);
    free(s->cap_q);
    idx_free(s->ix);
    free(s->views);
    if (s->m->gpu) gpu_host_free(s->ids);
    else free(s->ids);
    free(s->est_v);
    free(s->est_rel);
    for (int i = 0; s->reuse && i < s->m->hp.n_layer * s->m->hp.n_head_kv; i++) free(s->reuse[i].ids);
    free(s->reuse);
    free(s->trace);
    free(s);
}

int eng_seq_set_attn(eng_seq *s, const eng_attn_params *asked, char *err, size_t errlen) {
    const eng_attn_params resolved = eng_attn_resolve(s->m, asked), *a = &resolved;
    if (s->pos != 0) {
        eng_set_err(err, errlen, "attention parameters change only on an empty sequence");
        return -1;
    }
    if (eng_attn_check(a, err, errlen) || check_executor(s->m, a, err, errlen)) return -1;
    if (a->selector != s->attn.selector) {
        idx_set *ix = NULL;
        if (make_index(s->m, a->selector, &ix, err, errlen)) return -1;
        idx_free(s->ix);
        s->ix = ix;
        s->caps = idx_caps(ix);
        if (s->keep_queries) idx_set_observe_all(ix, 1);
    }
    kv_set_static(s->kv, a->n_sink, a->n_window);
    set_request(s, a);
    eng_attn_params keep = s->attn;
    s->attn = *a;
    s->attn.page_size = keep.page_size;
    s->attn.kv_f16 = keep.kv_f16;
    s->attn.kv_max_bytes = keep.kv_max_bytes;
    eng_plan_reuse_clear(s);
    return 0;
}

void eng_seq_get_attn(const eng_seq *s, eng_attn_params *out) { *out = s->attn; }

kv_store *eng_seq_kv(eng_seq *s) { return s->kv; }

int eng_seq_capture_queries(eng_seq *s, int64_t from, int64_t to, char *err, size_t errlen) {
    const eng_hparams *hp = &s->m->hp;
    if (from < 0 || to < from || to > s->n_ctx) {
        eng_set_err(err, errlen, "query capture range [%lld, %lld) outside the sequence", (long long)from, (long long)to);
        return -1;
    }
    free(s->cap_q);
    s->cap_q = calloc((size_t)(to - from) * hp->n_layer * hp->n_head * hp->head_dim + 1, sizeof(float));
    if (!s->cap_q) {
        eng_set_err(err, errlen, "out of memory for %lld captured queries", (long long)(to - from));
        return -1;
    }
    s->cap_from = from;
    s->cap_n = to - from;
    return 0;
}

const float *eng_seq_captured(const eng_seq *s, int layer, int64_t *n_rows) {
    const eng_hparams *hp = &s->m->hp;
    *n_rows = 0;
    if (!s->cap_q || layer < 0 || layer >= hp->n_layer) return NULL;
    int64_t have = s->pos - s->cap_from;
    *n_rows = have < 0 ? 0 : have > s->cap_n ? s->cap_n : have;
    return s->cap_q + (size_t)layer * s->cap_n * hp->n_head * hp->head_dim;
}

int eng_seq_pos(const eng_seq *s) { return s->pos; }
int eng_seq_capacity(const eng_seq *s) { return s->n_ctx; }

void eng_seq_reset(eng_seq *s) {
    s->pos = 0;
    s->built = 0;
    s->failed[0] = 0;
    if (leave_share(s)) /* no memory for a fresh store: the old one is kept, unusable */
        snprintf(s->failed, sizeof s->failed, "out of memory for a fresh KV store");
    else
        kv_reset(s->kv); /* releases borrowed pages before their owner goes */
    release_prefix(s);
    free(s->cap_q);
    s->cap_q = NULL;
    s->cap_n = 0;
    idx_reset(s->ix);
    if (s->keep_queries) idx_set_observe_all(s->ix, 0);
    s->keep_queries = 0;
    memset(&s->st, 0, sizeof s->st);
    eng_plan_reuse_clear(s);
    s->trace_nb = 0; /* the buffer stays for the next request that traces */
}

int eng_seq_trace(eng_seq *s, int64_t from, int64_t bucket_tokens, int n_buckets, char *err, size_t errlen) {
    if (n_buckets == 0) {
        s->trace_nb = 0;
        return 0;
    }
    if (n_buckets < 0 || n_buckets > ENG_TRACE_MAX_BUCKETS || bucket_tokens < 1 || from < 0) {
        eng_set_err(err, errlen, "attention trace: %d buckets of %lld tokens from %lld (buckets 1..%d)", n_buckets,
                    (long long)bucket_tokens, (long long)from, ENG_TRACE_MAX_BUCKETS);
        return -1;
    }
    if (!s->trace && !(s->trace = malloc(sizeof(float) * ENG_TRACE_MAX_BUCKETS))) {
        eng_set_err(err, errlen, "out of memory for the attention trace");
        return -1;
    }
    memset(s->trace, 0, sizeof(float) * ENG_TRACE_MAX_BUCKETS);
    s->trace_nb = n_buckets;
    s->trace_from = from;
    s->trace_bucket = bucket_tokens;
    s->trace_n = 0;
    return 0;
}

int eng_seq_trace_take(eng_seq *s, float *out) {
    if (s->trace_nb <= 0) return 0;
    const double inv = s->trace_n > 0 ? 1.0 / (double)s->trace_n : 0.0;
    for (int b = 0; b < s->trace_nb; b++) out[b] = (float)(s->trace[b] * inv);
    memset(s->trace, 0, sizeof(float) * s->trace_nb);
    /* every traced row adds one triple per global layer and query head */
    const eng_hparams *hp = &s->m->hp;
    int64_t per_row = 0;
    for (int l = 0; l < hp->n_layer; l++) per_row += eng_layer_is_local(s->m, l) ? 0 : hp->n_head;
    const int rows = per_row > 0 ? (int)((s->trace_n + per_row / 2) / per_row) : 0;
    s->trace_n = 0;
    return rows;
}

size_t eng_seq_bytes(const eng_seq *s) {
    idx_stats is;
    idx_stats_get(s->ix, &is);
    return kv_bytes(s->kv) + is.bytes;
}

void eng_seq_attn_stats(const eng_seq *s, eng_attn_stats *out) {
    *out = s->st;
    idx_stats is;
    idx_stats_get(s->ix, &is);
    out->search_s += is.search_s;
    out->keys_scanned += is.scanned;
    if (out->recall_n) out->mass_recall /= out->recall_n, out->out_err /= out->recall_n;
}

const eng_model *eng_seq_model(const eng_seq *s) { return s->m; }

const char *eng_seq_error(const eng_seq *s) { return s->failed[0] ? s->failed : NULL; }

void eng_seq_fail(eng_seq *s, const char *fmt, ...) {
    if (s->failed[0]) return; /* the first cause is the one worth reporting */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->failed, sizeof s->failed, fmt, ap);
    va_end(ap);
    if (!s->failed[0]) snprintf(s->failed, sizeof s->failed, "failed");
}

int eng_seq_keep_queries(eng_seq *s, char *err, size_t errlen) {
    if (s->pos != 0 || idx_set_observe_all(s->ix, 1) != IDX_OK) {
        eng_set_err(err, errlen, "prefill queries are kept only from an empty sequence on");
        return -1;
    }
    s->keep_queries = 1;
    return 0;
}

int eng_seq_adopt_prefix(eng_seq *s, const kv_store *src, int n, int64_t fixed_lo, int64_t fixed_hi,
                         void *owner, void (*release)(void *owner), char *err, size_t errlen) {
    if (s->pos != 0 || s->owner) {
        eng_set_err(err, errlen, "a prefix is adopted only by an empty sequence");
        return -1;
    }
    if (n >= s->n_ctx || (fixed_lo >= 0 && (fixed_hi < fixed_lo || fixed_hi > n))) {
        eng_set_err(err, errlen, "a prefix of %d tokens does not fit a sequence of %d", n, s->n_ctx);
        return -1;
    }
    if (kv_share_prefix(s->kv, src, n) != KV_OK) {
        eng_set_err(err, errlen, "sharing the prefix: %s", kv_last_error(s->kv));
        return -1;
    }
    s->owner = owner;
    s->release = release;
    s->fixed = fixed_lo >= 0;
    s->fixed_lo = s->fixed ? fixed_lo : 0;
    s->fixed_hi = s->fixed ? fixed_hi : 0;
    s->pos = n;
    return 0;
}

int eng_seq_bind_cent(eng_seq *s, int layer, int head, const idx_cent *c, float threshold, int levels,
                      char *err, size_t errlen) {
    if (!(s->caps & IDX_CAP_BIND)) return 0; /* the selector builds its own (or needs none) */
    int rc = idx_bind_cent(s->ix, layer, head, c, threshold, levels);
    if (rc != IDX_OK) {
        eng_set_err(err, errlen, "selector: %s", idx_strerror(rc));
        return -1;
    }
    s->built = 1;
    return 0;
}

int eng_seq_continue(eng_seq *s, eng_seq *src, int n, char *err, size_t errlen) {
    if (s->pos != 0 || s->owner) {
        eng_set_err(err, errlen, "only an empty sequence continues another");
        return -1;
    }
    if (src->failed[0]) {
        eng_set_err(err, errlen, "cannot continue a failed sequence (%s)", src->failed);
        return -1;
    }
    if (src->fixed) {
        /* a context-bound source: its fixed range and bindings are the context's; the new
         * sequence would need them too (attach the context to it instead). A source that
         * merely borrows its pages (a fork, a mapped prefix) is fine */
        eng_set_err(err, errlen, "a sequence on a registered context cannot be continued");
        return -1;
    }
    if (n < 0 || n > src->pos || n >= s->n_ctx) {
        eng_set_err(err, errlen, "cannot continue %d tokens of a sequence holding %d (capacity %d)", n, src->pos,
                    s->n_ctx);
        return -1;
    }
    if (s->caps & IDX_CAP_OBSERVE && n > 0) {
        /* the observed queries are the latest of the source's prefill: only a continuation of
         * all of it sees what a prefill of the same tokens would have seen */
        if (n != src->pos) {
            eng_set_err(err, errlen, "a selector that learns from queries continues only all %d tokens of its "
                        "source, not %d", src->pos, n);
            return -1;
        }
        int rc = idx_copy_observed(s->ix, src->ix);
        if (rc != IDX_OK) {
            eng_set_err(err, errlen, "continue: %s (call eng_seq_keep_queries on the source before its prefill)",
                        idx_last_error(s->ix)[0] ? idx_last_error(s->ix) : idx_strerror(rc));
            idx_reset(s->ix);
            return -1;
        }
    }
    if (!src->share) {
        src->share = malloc(sizeof *src->share);
        if (!src->share) {
            eng_set_err(err, errlen, "out of memory");
            idx_reset(s->ix);
            return -1;
        }
        src->share->kv = src->kv;
        src->share->owner = NULL;
        src->share->release = NULL;
        atomic_init(&src->share->refs, 1);
    }
    if (kv_share_prefix(s->kv, src->kv, n) != KV_OK) {
        eng_set_err(err, errlen, "continue: %s", kv_last_error(s->kv));
        kv_reset(s->kv);
        idx_reset(s->ix);
        return -1;
    }
    atomic_fetch_add(&src->share->refs, 1);
    s->owner = src->share;
    s->release = share_unref;
    s->pos = n;
    return 0;
}

eng_seq *eng_seq_fork(eng_seq *parent, const eng_attn_params *attn, char *err, size_t errlen) {
    if (parent->failed[0]) {
        eng_set_err(err, errlen, "cannot fork a failed sequence (%s)", parent->failed);
        return NULL;
    }
    if (parent->fixed) {
        eng_set_err(err, errlen, "a sequence on a registered context cannot be forked");
        return NULL;
    }
    eng_attn_params a = attn ? *attn : parent->attn;
    /* the storage is the parent's: same pages, same page size and dtype */
    a.page_size = parent->attn.page_size;
    a.kv_f16 = parent->attn.kv_f16;
    a.kv_max_bytes = parent->attn.kv_max_bytes;
    eng_seq *c = eng_seq_create_ex(parent->m, parent->n_ctx, &a, err, errlen);
    if (!c) return NULL;
    if (eng_seq_continue(c, parent, parent->pos, err, errlen)) {
        eng_seq_free(c);
        return NULL;
    }
    return c;
}

void eng_seq_trim(eng_seq *s) { kv_trim(s->kv); }

size_t eng_seq_token_bytes(const eng_seq *s, size_t *fixed) {
    const eng_model *m = s->m;
    const size_t per_page = kv_page_bytes(s->kv), page = (size_t)kv_get_params(s->kv)->page_size;
    size_t tok = 0, fx = 0;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (eng_layer_is_local(m, l)) fx += (size_t)kv_layer_slots(s->kv, l) * per_page;
        else tok += (per_page + page - 1) / page;
    }
    if (fixed) *fixed = fx + per_page * (size_t)m->hp.n_layer; /* rings, and a partial page each */
    return tok;
}
