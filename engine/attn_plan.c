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
    pl->pos = p;
    if (eng_layer_is_local(s->m, layer)) {
        pl->part[PLAN_RECENT] = range_part(p - hp->sliding_window + 1, p + 1);
        return;
    }
    if (!decode || (s->caps & IDX_CAP_ALL) || eng_seq_dense_now(s, p + 1)) {
        pl->part[PLAN_RECENT] = range_part(0, p + 1);
        return;
    }
    const kv_ranges r = seq_ranges(s, layer, p + 1);
    pl->n_parts = s->attn.estimate && (s->caps & IDX_CAP_ESTIMATE) ? 5 : s->attn.tail > 0 ? 4 : 3;
    pl->part[PLAN_RECENT] = range_part(r.win_lo, p + 1);
    pl->part[PLAN_SINKS] = range_part(0, r.sink_hi);
    pl->part[PLAN_IDS] = range_part(0, 0);
    pl->part[PLAN_TAIL] = range_part(0, 0);
    pl->part[PLAN_EST] = range_part(0, 0);
    pl->sparse = r.off_hi > r.off_lo;
    pl->off_lo = r.off_lo;
    pl->off_hi = r.off_hi;
}

/* Whether the row has work for the selector: sparse, and a selector that picks ids or a tail to
 * sample (the window selector with a tail samples the whole offloaded range). */
static int needs_select(const eng_seq *s, const eng_attn_plan *pl) {
    return pl->sparse && (!(s->caps & IDX_CAP_NONE) || s->attn.tail > 0);
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

/* Each of the n ascending ids in[i] widened to [in[i] - before, in[i] + after], clipped to
 * [lo, hi), ascending and distinct, into out (room for cap); the count. out may start at or
 * before in as long as it never overtakes the reading (the in-place expand below). */
static int64_t widen_ids(const int32_t *in, int64_t n, int64_t before, int64_t after, int64_t lo, int64_t hi,
                         int32_t *out, int64_t cap) {
    int64_t o = 0, next = lo; /* positions below next are written */
    for (int64_t i = 0; i < n && o < cap; i++) {
        int64_t a = (int64_t)in[i] - before, b = (int64_t)in[i] + after + 1;
        if (a < next) a = next;
        if (b > hi) b = hi;
        for (int64_t p = a; p < b && o < cap; p++) out[o++] = (int32_t)p;
        if (b > next) next = b;
    }
    return o;
}

/* In place: the ids move to the end of their buffer and the widened list is written from the
 * start, which never overtakes the reading as long as cap >= hi - lo + r. */
int64_t eng_plan_expand_ids(int32_t *ids, int64_t n, int64_t cap, int r, int64_t lo, int64_t hi) {
    if (cap - (hi - lo) < r) r = (int)(cap - (hi - lo));
    if (r <= 0 || n <= 0) return n;
    int32_t *in = ids + cap - n;
    memmove(in, ids, sizeof(int32_t) * n);
    return widen_ids(in, n, r, r, lo, hi, ids, cap);
}

int64_t eng_plan_follow_ids(const int32_t *ids, int64_t n, int64_t steps, int64_t lo, int64_t hi, int32_t *out,
                            int64_t cap) {
    return widen_ids(ids, n, 0, steps, lo, hi, out, cap);
}

/* splitmix64's finaliser (Steele et al. 2014): a cheap hash whose consecutive inputs give
 * unrelated outputs. */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int64_t eng_plan_tail_sample(const int32_t *ids, int64_t n, int64_t lo, int64_t hi, double share, uint64_t seed,
                             int32_t *out, int64_t cap, float *log_w) {
    *log_w = 0;
    const int64_t span = hi - lo;
    if (span <= 0 || !(share > 0) || cap <= 0) return 0;
    int64_t n_sel = 0; /* selected ids inside [lo, hi): only those leave the rest */
    for (int64_t i = 0; i < n; i++) n_sel += ids[i] >= lo && ids[i] < hi;
    const int64_t n_rest = span - n_sel;
    if (n_rest <= 0) return 0;
    int64_t strata = (int64_t)ceil(share * (double)span);
    if (strata < 1) strata = 1;
    if (strata > span) strata = span;
    /* stratum j is [lo + j * span / strata, lo + (j + 1) * span / strata): equal within one key,
     * so every key's chance of being drawn is 1/stride (stride = span / strata, give or take one)
     * and the sample spreads over the whole range, as a sample of a text's attention should */
    int64_t m = 0, i = 0;
    for (int64_t j = 0; j < strata && m < cap; j++) {
        const int64_t a = lo + j * span / strata, b = lo + (j + 1) * span / strata;
        const int64_t p = a + (int64_t)(mix64(seed ^ mix64((uint64_t)j)) % (uint64_t)(b - a));
        while (i < n && ids[i] < p) i++; /* both ascending: one merge walk */
        if (i < n && ids[i] == p) continue; /* already attended exactly */
        out[m++] = (int32_t)p;
    }
    if (m > 0) *log_w = (float)log((double)n_rest / (double)m);
    return m;
}

/* The tail sample's seed: the row's position, layer and KV head, so a rerun (or another selector
 * forked from the same prefill) samples the same keys at the same step, and the next step others. */
static uint64_t tail_seed(int64_t pos, int layer, int kvh) {
    return mix64((uint64_t)pos ^ ((uint64_t)layer << 40) ^ ((uint64_t)kvh << 52));
}

/* The selector's ids for the group's queries q into ids (the buffer of KV head kvh), widened by
 * expand: their count, or -1 with the sequence marked failed. */
static int64_t select_ids(eng_seq *s, int layer, int kvh, const float *q, const eng_attn_plan *pl, int32_t *ids,
                          idx_estimate *est) {
    const int G = s->m->hp.n_head / s->m->hp.n_head_kv;
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
    const int64_t n = idx_select_est(s->ix, layer, kvh, s->kv, q, G, &req, ids, s->ids_cap, est);
    if (n < 0) {
        eng_seq_fail(s, "selector: layer %d head %d: %s", layer, kvh,
                     idx_last_error(s->ix)[0] ? idx_last_error(s->ix) : idx_strerror((int)n));
        return -1;
    }
    return s->attn.expand > 0 ? eng_plan_expand_ids(ids, n, s->ids_cap, s->attn.expand, pl->off_lo, pl->off_hi) : n;
}

void eng_plan_reuse_clear(eng_seq *s) {
    const int n = s->m->hp.n_layer * s->m->hp.n_head_kv;
    for (int i = 0; s->reuse && i < n; i++) s->reuse[i].pos = -1;
}

/* Whether the row can attend the slot's last selection: made at most reuse - 1 steps before, over
 * the same offloaded range or one the window has since grown at its end. A row at or before the
 * selection's (a rewound or reset sequence) selects again. */
static int can_reuse(const eng_seq *s, const eng_reuse *r, const eng_attn_plan *pl) {
    return r->pos >= 0 && pl->pos > r->pos && pl->pos - r->pos < s->attn.reuse && pl->off_lo == r->off_lo &&
           pl->off_hi >= r->off_hi;
}

/* The ids part through the slot's last selection, made j steps before: each kept id and its j
 * successors, then (every one at or above the old range's end) the positions that left the
 * window since, which the window attended. The successors are what a reused selection cannot
 * do without: a model copying a number from the context reads its next digit one position on
 * at every step, so a select's ids hold the digit its own query looked for and the next ones
 * sit after them (without them, reuse 4 gave dense's answer on 1 of 7 single-needle samples at
 * 16K where selecting at every step gave it on 7). */
static int64_t reuse_ids(const eng_reuse *r, const eng_attn_plan *pl, int32_t *ids, int64_t cap) {
    int64_t n = eng_plan_follow_ids(r->ids, r->n, pl->pos - r->pos, r->off_lo, r->off_hi, ids, cap);
    for (int64_t p = r->off_hi; p < pl->off_hi && n < cap; p++) ids[n++] = (int32_t)p;
    return n;
}

/* Keeps the n ids as the slot's selection for the row; -1 out of memory. */
static int reuse_keep(eng_reuse *r, const eng_attn_plan *pl, const int32_t *ids, int64_t n) {
    if (n > r->cap) {
        int64_t cap = r->cap ? r->cap : 256;
        while (cap < n) cap *= 2;
        int32_t *p = realloc(r->ids, sizeof(int32_t) * (size_t)cap);
        if (!p) return -1;
        r->ids = p;
        r->cap = cap;
    }
    memcpy(r->ids, ids, sizeof(int32_t) * (size_t)n);
    r->n = n;
    r->pos = pl->pos;
    r->off_lo = pl->off_lo;
    r->off_hi = pl->off_hi;
    return 0;
}

int eng_plan_select(eng_seq *s, int layer, int kvh, const float *q, eng_attn_plan *pl) {
    if (!needs_select(s, pl)) return 0;
    int32_t *ids = s->ids + (size_t)kvh * s->ids_cap;
    /* a selector that picks nothing (window) leaves the tail the whole offloaded range */
    const int G = s->m->hp.n_head / s->m->hp.n_head_kv;
    idx_estimate est = {s->est_rel + (size_t)kvh * G, s->est_v + (size_t)kvh * G * s->m->hp.v_dim};
    const int with_est = pl->n_parts > PLAN_EST;
    eng_reuse *r = s->attn.reuse > 1 && !(s->caps & IDX_CAP_NONE) && !with_est
                       ? &s->reuse[(size_t)layer * s->m->hp.n_head_kv + kvh] : NULL;
    int64_t n;
    if (r && can_reuse(s, r, pl)) {
        n = reuse_ids(r, pl, ids, s->ids_cap);
    } else {
        n = s->caps & IDX_CAP_NONE ? 0 : select_ids(s, layer, kvh, q, pl, ids, with_est ? &est : NULL);
        if (n >= 0 && r && reuse_keep(r, pl, ids, n)) {
            eng_seq_fail(s, "out of memory keeping the selection of layer %d head %d", layer, kvh);
            return -1;
        }
    }
    if (n < 0) return -1;
    pl->part[PLAN_IDS] = (eng_attn_part){.ids = ids, .n_ids = n};
    if (with_est) pl->part[PLAN_EST] = (eng_attn_part){.est_o = est.v, .est_rel = est.rel};
    if (pl->n_parts > PLAN_TAIL) {
        /* the sample goes after the ids in the same buffer: selected + sampled <= the offloaded
         * range <= ids_cap */
        float lw;
        const int64_t nt = eng_plan_tail_sample(ids, n, pl->off_lo, pl->off_hi, s->attn.tail,
                                                tail_seed(pl->pos, layer, kvh), ids + n, s->ids_cap - n, &lw);
        pl->part[PLAN_TAIL] = (eng_attn_part){.ids = ids + n, .n_ids = nt, .lse_add = lw};
    }
    return 0;
}

/* One part into out/lse (G queries); 0 when the part is empty. ids_lse: the ids part's
 * log-sum-exp, which an estimate part is relative to (NULL: the ids part was empty). */
static int run_part(const eng_model *m, const attn_kv_view *view, const float *q, const eng_attn_part *pt,
                    const float *ids_lse, float *out, float *lse) {
    const int G = m->hp.n_head / m->hp.n_head_kv;
    if (pt->est_rel) {
        if (!ids_lse) return 0;
        int any = 0;
        for (int g = 0; g < G; g++) {
            lse[g] = ids_lse[g] + pt->est_rel[g]; /* -inf: nothing estimated */
            any |= isfinite(lse[g]);
        }
        memcpy(out, pt->est_o, sizeof(float) * (size_t)G * m->hp.v_dim);
        return any;
    }
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
    float ids_lse[ATTN_MAX_GROUP];
    int have_ids = 0;
    for (int i = 1; i < pl->n_parts; i++) {
        if (!run_part(m, view, q, &pl->part[i], have_ids ? ids_lse : NULL, part, plse)) continue;
        if (i == PLAN_IDS) {
            memcpy(ids_lse, plse, sizeof(float) * G);
            have_ids = 1;
        }
        if (pl->part[i].lse_add != 0)
            for (int g = 0; g < G; g++) plse[g] += pl->part[i].lse_add; /* -inf stays -inf */
        attn_merge(out, lse, part, plse, G, vd);
    }
}

void eng_plan_account(eng_seq *s, const attn_kv_view *view, const float *q, int64_t p,
                      const eng_attn_plan *pl, const float *out, const float *lse) {
    if (!pl->sparse) return;
    const eng_model *m = s->m;
    const int G = m->hp.n_head / m->hp.n_head_kv;
    int64_t n = pl->part[PLAN_IDS].ids ? pl->part[PLAN_IDS].n_ids : 0;
    if (pl->n_parts > PLAN_TAIL && pl->part[PLAN_TAIL].ids) n += pl->part[PLAN_TAIL].n_ids; /* read too */
    #pragma omp atomic
    s->st.sparse_rows++;
    #pragma omp atomic
    s->st.offloaded_keys += pl->off_hi - pl->off_lo;
    #pragma omp atomic
    s->st.keys_read += n > 0 ? n : 0;
    if (!s->measure_recall) return;
    /* Buffers of G * vd floats: G * vd <= their size, checked at model load. */
    enum { BUF = ATTN_MAX_GROUP * 256 > 4096 ? ATTN_MAX_GROUP * 256 : 4096 };
    float mine_o[BUF], mine_l[ATTN_MAX_GROUP], dense_o[BUF], dense_l[ATTN_MAX_GROUP];
    const int vd = m->hp.v_dim;
    if (!out || !lse) { /* the GPU executor's rows: the plan run here (the CPU executor's result) */
        eng_plan_run(m, view, q, pl, mine_o, mine_l);
        out = mine_o;
        lse = mine_l;
    }
    attn_range(view, q, G, 0, p + 1, m->hp.attn_scale, dense_o, dense_l);
    /* the output's error against dense, relative to dense's norm, per query */
    double err = 0;
    for (int g = 0; g < G; g++) {
        double e = 0, r = 0;
        for (int i = 0; i < vd; i++) {
            const double a = out[(size_t)g * vd + i], b = dense_o[(size_t)g * vd + i];
            e += (a - b) * (a - b);
            r += b * b;
        }
        err += r > 0 ? sqrt(e / r) : 0;
    }
    /* the share of the full softmax mass the attended set covers, per query, vs dense: the keys
     * read, each once (a tail sample counts its own keys' mass, not the weight that stands for
     * the unselected keys: an estimate of the rest is no recall of it) */
    int weighted = pl->n_parts > PLAN_EST;
    for (int i = 0; i < pl->n_parts; i++) weighted |= pl->part[i].lse_add != 0;
    if (weighted) { /* the plan's log-sum-exp without the weights and the estimate */
        eng_attn_plan un = *pl;
        if (un.n_parts > PLAN_EST) un.n_parts = PLAN_EST;
        for (int i = 0; i < un.n_parts; i++) un.part[i].lse_add = 0;
        eng_plan_run(m, view, q, &un, mine_o, mine_l);
        lse = mine_l;
    }
    double rec = 0;
    for (int g = 0; g < G; g++) rec += exp((double)lse[g] - dense_l[g]);
    #pragma omp critical(eng_recall)
    {
        s->st.mass_recall += rec / G;
        s->st.out_err += err / G;
        s->st.recall_n++;
    }
}

/* ---- the attention trace ------------------------------------------------------------------ */

enum { TRACE_CHUNK = 128 };

/* Raw scores of keys [j0, j0 + n) of a part for queries q (ng rows): sc[g * TRACE_CHUNK + j]. */
static void trace_scores(const attn_kv_view *view, const float *q, int ng, const eng_attn_part *pt, int64_t j0,
                         int64_t n, float *sc) {
    if (pt->ids) attn_scores_group_ids(view, q, ng, pt->ids + j0, n, sc, TRACE_CHUNK);
    else attn_scores_group_range(view, q, ng, pt->lo + j0, pt->lo + j0 + n, sc, TRACE_CHUNK);
}

static int64_t part_len(const eng_attn_part *pt) {
    if (pt->est_rel) return 0;
    if (pt->ids) return pt->n_ids > 0 ? pt->n_ids : 0;
    return pt->hi > pt->lo ? pt->hi - pt->lo : 0;
}

void eng_plan_trace(eng_seq *s, const attn_kv_view *view, const float *q, int64_t p, const eng_attn_plan *pl,
                    const float *plan_lse) {
    if (!eng_seq_traced(s, p)) return;
    const eng_model *m = s->m;
    const int G = m->hp.n_head / m->hp.n_head_kv, hd = m->hp.head_dim, nb = s->trace_nb;
    const double scale = m->hp.attn_scale;
    const int64_t B = s->trace_bucket;
    /* the plan's log-sum-exp per query: the executor's, or (the GPU executor's rows) the plan run
     * here on the host copy, as eng_plan_account does for recall */
    enum { BUF = ATTN_MAX_GROUP * 256 > 4096 ? ATTN_MAX_GROUP * 256 : 4096 };
    float run_o[BUF], run_l[ATTN_MAX_GROUP];
    if (!plan_lse) {
        eng_plan_run(m, view, q, pl, run_o, run_l);
        plan_lse = run_l;
    }
    float acc[ENG_TRACE_MAX_BUCKETS];
    float sc[ATTN_MAX_GROUP * TRACE_CHUNK];
    memset(acc, 0, sizeof(float) * nb);
    for (int g0 = 0; g0 < G; g0 += ATTN_MAX_GROUP) {
        const int ng = G - g0 < ATTN_MAX_GROUP ? G - g0 : ATTN_MAX_GROUP;
        const float *qg = q + (size_t)g0 * hd;
        double lse[ATTN_MAX_GROUP];
        for (int g = 0; g < ng; g++) lse[g] = isfinite(plan_lse[g0 + g]) ? plan_lse[g0 + g] : INFINITY;
        /* each attended key's weight into its position's bucket */
        for (int i = 0; i < pl->n_parts; i++) {
            const eng_attn_part *pt = &pl->part[i];
            const int64_t n = part_len(pt);
            for (int64_t j0 = 0; j0 < n; j0 += TRACE_CHUNK) {
                const int64_t c = n - j0 < TRACE_CHUNK ? n - j0 : TRACE_CHUNK;
                trace_scores(view, qg, ng, pt, j0, c, sc);
                for (int64_t j = 0; j < c; j++) {
                    const int64_t pos = pt->ids ? pt->ids[j0 + j] : pt->lo + j0 + j;
                    int64_t b = pos / B;
                    if (b >= nb) b = nb - 1;
                    double w = 0;
                    for (int g = 0; g < ng; g++) w += exp(scale * sc[(size_t)g * TRACE_CHUNK + j] + pt->lse_add - lse[g]);
                    acc[b] += (float)w;
                }
            }
        }
    }
    for (int b = 0; b < nb; b++) {
        if (acc[b] == 0) continue;
        #pragma omp atomic
        s->trace[b] += acc[b];
    }
    #pragma omp atomic
    s->trace_n += G;
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
