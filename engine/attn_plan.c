/* The decode-attention plan: which keys one row attends at one layer and KV head, and in which
 * order the parts merge, decided here once for the CPU executor (below) and the GPU one
 * (model_gpu.c). Statistics and the attention-mass recall are computed on the plan, so both
 * executors report the same numbers. */
#include "model_impl.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The row's static and offloaded ranges for n = p + 1 tokens: a context's fixed clustered range
 * (sinks before it, everything after it dense), or the store's sinks / offloaded / window. */
static kv_ranges seq_ranges(const eng_seq *s, int layer, int64_t n) {
    if (s->fixed)
        return (kv_ranges){.sink_hi = s->fixed_lo, .off_lo = s->fixed_lo, .off_hi = s->fixed_hi,
                           .win_lo = s->fixed_hi, .win_hi = n};
    return kv_ranges_of(s->kv, layer, n);
}

static eng_attn_part range_part(int64_t lo, int64_t hi) {
    return (eng_attn_part){.lo = lo < 0 ? 0 : lo, .hi = hi};
}

void eng_plan_ranges(const eng_seq *s, int layer, int64_t p, int decode, eng_attn_plan *pl) {
    const eng_hparams *hp = &s->m->hp;
    memset(pl, 0, sizeof *pl);
    pl->n_parts = 1;
    if (eng_layer_is_local(s->m, layer)) {
        pl->part[PLAN_RECENT] = range_part(p - hp->sliding_window + 1, p + 1);
        return;
    }
    if (!decode || (s->caps & IDX_CAP_ALL) || eng_seq_dense_now(s, p + 1)) {
        pl->part[PLAN_RECENT] = range_part(0, p + 1);
        return;
    }
    const kv_ranges r = seq_ranges(s, layer, p + 1);
    pl->n_parts = 3;
    pl->part[PLAN_RECENT] = range_part(r.win_lo, p + 1);
    pl->part[PLAN_SINKS] = range_part(0, r.sink_hi);
    pl->part[PLAN_IDS] = range_part(0, 0);
    pl->sparse = r.off_hi > r.off_lo;
    pl->off_lo = r.off_lo;
    pl->off_hi = r.off_hi;
}

/* Whether the row has work for the selector: sparse, and a selector that picks ids. */
static int needs_select(const eng_seq *s, const eng_attn_plan *pl) {
    return pl->sparse && !(s->caps & IDX_CAP_NONE);
}

/* Log-sum-exp of each of the G queries' scaled logits over the plan's range parts (the static
 * set), from the CPU executor run on those parts alone: what an adaptive budget weighs the
 * offloaded keys' estimated mass against. */
static void static_lse(const eng_seq *s, int layer, int kvh, const float *q, const eng_attn_plan *pl, float *lse) {
    eng_attn_plan st = *pl;
    st.n_parts = PLAN_IDS; /* the recent range and the sinks */
    attn_kv_view view;
    kv_view(s->kv, layer, kvh, &view);
    float out[ATTN_MAX_GROUP * 256 > 4096 ? ATTN_MAX_GROUP * 256 : 4096];
    eng_plan_run(s->m, &view, q, &st, out, lse);
}

/* In place: the ids move to the end of their buffer and the widened list is written from the
 * start, which never overtakes the reading as long as cap >= hi - lo + r. */
int64_t eng_plan_expand_ids(int32_t *ids, int64_t n, int64_t cap, int r, int64_t lo, int64_t hi) {
    if (cap - (hi - lo) < r) r = (int)(cap - (hi - lo));
    if (r <= 0 || n <= 0) return n;
    int32_t *in = ids + cap - n;
    memmove(in, ids, sizeof(int32_t) * n);
    int64_t o = 0, next = lo; /* positions below next are written */
    for (int64_t i = 0; i < n; i++) {
        int64_t a = (int64_t)in[i] - r, b = (int64_t)in[i] + r + 1;
        if (a < next) a = next;
        if (b > hi) b = hi;
        for (int64_t p = a; p < b; p++) ids[o++] = (int32_t)p;
        if (b > next) next = b;
    }
    return o;
}

int eng_plan_select(eng_seq *s, int layer, int kvh, const float *q, eng_attn_plan *pl) {
    if (!needs_select(s, pl)) return 0;
    const int G = s->m->hp.n_head / s->m->hp.n_head_kv;
    int32_t *ids = s->ids + (size_t)kvh * s->ids_cap;
    if (eng_fault_hit(ENG_FAULT_SELECT)) {
        eng_seq_fail(s, "selector failed at layer %d head %d (injected fault)", layer, kvh);
        return -1;
    }
    int64_t ilo, ihi;
    idx_range(s->ix, layer, kvh, &ilo, &ihi);
    if (ihi < pl->off_hi) { /* tokens that left the window since the last step */
        int rc = idx_add(s->ix, layer, kvh, s->kv, pl->off_hi);
        if (rc != IDX_OK) {
            eng_seq_fail(s, "selector: adding keys at layer %d head %d: %s", layer, kvh,
                         idx_last_error(s->ix)[0] ? idx_last_error(s->ix) : idx_strerror(rc));
            return -1;
        }
    }
    idx_request req = s->req;
    float slse[ATTN_MAX_GROUP];
    if (req.mass > 0) { /* the adaptive budget weighs what the static set already covers */
        static_lse(s, layer, kvh, q, pl, slse);
        req.static_lse = slse;
    }
    const int64_t n = idx_select(s->ix, layer, kvh, s->kv, q, G, &req, ids, s->ids_cap);
    if (n < 0) {
        eng_seq_fail(s, "selector: layer %d head %d: %s", layer, kvh,
                     idx_last_error(s->ix)[0] ? idx_last_error(s->ix) : idx_strerror((int)n));
        return -1;
    }
    const int64_t ne = s->attn.expand > 0 ? eng_plan_expand_ids(ids, n, s->ids_cap, s->attn.expand, pl->off_lo, pl->off_hi) : n;
    pl->part[PLAN_IDS] = (eng_attn_part){.ids = ids, .n_ids = ne};
    return 0;
}

/* One part into out/lse (G queries); 0 when the part is empty. */
static int run_part(const eng_model *m, const attn_kv_view *view, const float *q, const eng_attn_part *pt,
                    float *out, float *lse) {
    const int G = m->hp.n_head / m->hp.n_head_kv;
    if (pt->ids) {
        if (pt->n_ids <= 0) return 0;
        attn_ids(view, q, G, pt->ids, pt->n_ids, m->hp.attn_scale, out, lse);
        return 1;
    }
    if (pt->hi <= pt->lo) return 0;
    attn_range(view, q, G, pt->lo, pt->hi, m->hp.attn_scale, out, lse);
    return 1;
}

void eng_plan_run(const eng_model *m, const attn_kv_view *view, const float *q, const eng_attn_plan *pl,
                  float *out, float *lse) {
    const int G = m->hp.n_head / m->hp.n_head_kv, vd = m->hp.v_dim;
    const eng_attn_part *p0 = &pl->part[0];
    attn_range(view, q, G, p0->lo, p0->hi, m->hp.attn_scale, out, lse);
    float part[ATTN_MAX_GROUP * 256 > 4096 ? ATTN_MAX_GROUP * 256 : 4096], plse[ATTN_MAX_GROUP];
    for (int i = 1; i < pl->n_parts; i++)
        if (run_part(m, view, q, &pl->part[i], part, plse)) attn_merge(out, lse, part, plse, G, vd);
}

void eng_plan_account(eng_seq *s, const attn_kv_view *view, const float *q, int64_t p,
                      const eng_attn_plan *pl, const float *lse) {
    if (!pl->sparse) return;
    const eng_model *m = s->m;
    const int G = m->hp.n_head / m->hp.n_head_kv;
    const int64_t n = pl->part[PLAN_IDS].ids ? pl->part[PLAN_IDS].n_ids : 0;
    #pragma omp atomic
    s->st.sparse_rows++;
    #pragma omp atomic
    s->st.offloaded_keys += pl->off_hi - pl->off_lo;
    #pragma omp atomic
    s->st.keys_read += n > 0 ? n : 0;
    if (!s->measure_recall) return;
    /* the share of the full softmax mass the attended set covers, per query, vs dense */
    float part[ATTN_MAX_GROUP * 256 > 4096 ? ATTN_MAX_GROUP * 256 : 4096], plse[ATTN_MAX_GROUP];
    float mine[ATTN_MAX_GROUP];
    if (!lse) { /* the GPU executor's rows: run the plan here (into part: G * vd <= its size,
                 * checked at model load) for its log-sum-exp */
        eng_plan_run(m, view, q, pl, part, mine);
        lse = mine;
    }
    attn_range(view, q, G, 0, p + 1, m->hp.attn_scale, part, plse);
    double rec = 0;
    for (int g = 0; g < G; g++) rec += exp((double)lse[g] - plse[g]);
    #pragma omp critical(eng_recall)
    {
        s->st.mass_recall += rec / G;
        s->st.recall_n++;
    }
}

/* ---- fault injection (tests) ------------------------------------------------------------- */

static _Atomic int64_t fault_nth[2], fault_calls[2];

void eng_fault_arm(const char *point, int64_t nth) {
    const int i = !strcmp(point, "select") ? ENG_FAULT_SELECT : !strcmp(point, "kv_append") ? ENG_FAULT_KV_APPEND : -1;
    if (i < 0) return;
    atomic_store(&fault_calls[i], 0);
    atomic_store(&fault_nth[i], nth > 0 ? nth : 0);
}

int eng_fault_hit(int point) {
    const int64_t nth = atomic_load_explicit(&fault_nth[point], memory_order_relaxed);
    return nth > 0 && atomic_fetch_add(&fault_calls[point], 1) + 1 == nth;
}
