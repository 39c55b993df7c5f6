/* The forward pass on a CUDA device (kernels/gpu.h): weights as f16 in device memory, the
 * activations of a chunk on the device, K/V in the sequences' stores in pinned host memory that
 * the kernels read in place. Decode rows of global layers select on the CPU (the sequence's
 * index, with the query copied back) and attend on the device: window + sinks + selected ids,
 * merged by log-sum-exp. Without CUDA (kernels/gpu_none.c) eng_gpu_load fails and the CPU path
 * runs; this file then only costs its size. */
#include "model_impl.h"
#include "util.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "gpu.h"
#include "quant.h"

enum {
    GPU_MAX_DEC = 64,  /* decode rows per attention launch; more run in several launches */
    GPU_JOBS_PER_HEAD = 4, /* window (or the whole dense range), sinks, selected ids, tail sample */
    GPU_PARTS = 3,     /* part slots per decode row merged into its output: sinks, ids, tail */
};

typedef struct {
    gpu_weight *wq, *wk, *wv, *wo, *gate, *up, *down;
    float *attn_norm, *q_norm, *k_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm;
    float *bq, *bk, *bv;
} gpu_layer;

struct eng_gpu {
    gpu_layer *layers;
    gpu_weight *tok_embd, *output; /* output == tok_embd when tied */
    float *output_norm, *rope_factors;
    size_t weight_bytes;
    /* device workspace for m->chunk rows */
    float *x, *h, *q, *k, *v, *att, *lse, *o, *ff_g, *ff_u, *logits;
    float *part_o, *part_l;        /* (GPU_PARTS * GPU_MAX_DEC, n_head, v_dim): sinks, ids, tail */
    int32_t *tok, *pos;
    /* pinned host buffers */
    int32_t *h_tok, *h_pos;
    float *h_k, *h_v, *h_q, *h_logits;
    gpu_attn_job *jobs;            /* (n_layer, GPU_MAX_DEC * n_head_kv * GPU_JOBS_PER_HEAD) */
    size_t jobs_per_layer;
    /* prefill reads K/V many times (once per query tile): a layer's pages are staged in device
     * memory first, within what the budget leaves */
    char *stage;                   /* device */
    size_t stage_cap, stage_max;   /* bytes allocated; most the budget allows */
    void **stage_tbl;              /* pinned: the page table prefill reads, built here ... */
    void **stage_tbl_d;            /* ... and its device copy, which the kernel reads */
    int64_t stage_tbl_cap;
    int stage_warned;
    /* What a decode launch reads once per key tile (its job, the page table, the selected ids)
     * is copied to the device first: read in place from pinned memory, each is a bus round
     * trip per tile, which made the kernels latency-bound. Packed in pinned buffers, one copy
     * each per launch; the device buffers are reused in stream order. */
    gpu_attn_job *d_jobs;          /* (jobs_per_layer) */
    void **h_tbl, **d_tbl;         /* page tables of the launch's rows, packed */
    size_t h_tbl_cap, d_tbl_cap;   /* bytes */
    int32_t *h_ids, *d_ids;        /* selected ids of the launch, packed */
    size_t h_ids_cap, d_ids_cap;   /* bytes */
    struct sel_task *tasks;        /* (GPU_MAX_DEC * n_head_kv) CPU selections of a launch */
    eng_attn_plan *plans;          /* (GPU_MAX_DEC * n_head_kv) the launch's plans */
    int prefill_mode;              /* KVSEEK_GPU_PREFILL: 0 auto, 1 tiled, 2 gemm */
};

/* One CPU selection of a decode launch: the row's sequence, KV head, its ids job (and tail
 * sample job, -1 without a tail) and plan. */
struct sel_task {
    eng_seq *s;
    int h, job, tail_job;
    size_t q0;                     /* the group's first query row in h_q */
    eng_attn_plan *plan;
    int64_t p;                     /* the row's position */
};

/* Device (dev) or pinned (!dev) buffer *p of at least `bytes`; grows by half again after the
 * stream drained (queued copies and kernels may still use the old one). */
static int ensure_buf(void **p, size_t *cap, size_t bytes, int dev) {
    if (bytes <= *cap && *p) return 0;
    if (gpu_sync()) return -1;
    if (dev) gpu_free(*p);
    else gpu_host_free(*p);
    size_t want = bytes + bytes / 2 + 4096;
    *p = dev ? gpu_alloc(want) : gpu_host_alloc(want);
    *cap = *p ? want : 0;
    return *p ? 0 : -1;
}

/* ---- loading ---- */

static float *upload_vec(const float *src, int64_t n, size_t *bytes, int *failed) {
    if (!src || *failed) return NULL;
    float *d = gpu_alloc(sizeof(float) * (size_t)n);
    if (!d || gpu_h2d(d, src, sizeof(float) * (size_t)n)) {
        gpu_free(d);
        *failed = 1;
        return NULL;
    }
    *bytes += sizeof(float) * (size_t)n;
    return d;
}

static gpu_weight *upload_mat(const weight *w, size_t *bytes, int *failed, char *err, size_t errlen) {
    if (!w->data || *failed) return NULL;
    gpu_weight *g = gpu_weight_upload(w->type, w->data, w->n_rows, w->n_cols, err, errlen);
    if (!g) {
        *failed = 1;
        return NULL;
    }
    *bytes += gpu_weight_bytes(g);
    return g;
}

/* Device bytes the weights will take as f16 (+ f32 vectors, roughly). */
static size_t weights_f16_bytes(const eng_model *m) {
    const eng_hparams *hp = &m->hp;
    size_t b = 0;
    const weight *ws[] = {&m->tok_embd, m->output.data != m->tok_embd.data ? &m->output : NULL};
    for (int i = 0; i < 2; i++)
        if (ws[i]) b += (size_t)ws[i]->n_rows * ws[i]->n_cols * 2;
    for (int l = 0; l < hp->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        const weight *ls[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->gate, &w->up, &w->down};
        for (int i = 0; i < 7; i++) b += (size_t)ls[i]->n_rows * ls[i]->n_cols * 2;
        b += sizeof(float) * (size_t)(4 * hp->n_embd + 2 * hp->head_dim);
    }
    return b;
}

static size_t workspace_bytes(const eng_model *m) {
    const eng_hparams *hp = &m->hp;
    const size_t T = (size_t)m->chunk, nh = hp->n_head, nkv = hp->n_head_kv;
    size_t f = T * (2 * hp->n_embd + nh * hp->head_dim + nkv * (hp->head_dim + hp->v_dim) +
                    nh * hp->v_dim + nh + hp->n_embd + 2 * hp->n_ff) +
               (size_t)LOGIT_GROUP * hp->n_vocab + 2 * GPU_MAX_DEC * nh * (hp->v_dim + 1);
    /* matmul's f16 copy of X and the attention kernels' split-K scratch, roughly */
    return f * sizeof(float) + T * (size_t)(hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd) * 2 +
           (64u << 20);
}

int eng_gpu_load(eng_model *m, char *err, size_t errlen) {
    const eng_hparams *hp = &m->hp;
    if (gpu_init(0, err, errlen)) return -1;
    const size_t need = weights_f16_bytes(m) + workspace_bytes(m);
    size_t freeb = 0, total = 0;
    gpu_mem_info(&freeb, &total);
    const double budget = m->params.gpu_mem_gb > 0 ? m->params.gpu_mem_gb * 1e9 : (double)freeb;
    if ((double)need > budget || need > freeb) {
        eng_set_err(err, errlen,
                    "the model needs %.2f GB on the GPU (f16 weights and buffers); budget %.2f GB, "
                    "free %.2f GB of %.2f GB", need / 1e9, budget / 1e9, freeb / 1e9, total / 1e9);
        return -1;
    }
    eng_gpu *g = calloc(1, sizeof *g);
    if (!g) {
        eng_set_err(err, errlen, "out of memory");
        return -1;
    }
    m->gpu = g;
    int failed = 0;
    size_t b = 0;
    char werr[256] = "";
    g->layers = calloc((size_t)hp->n_layer, sizeof *g->layers);
    if (!g->layers) failed = 1;
    g->tok_embd = upload_mat(&m->tok_embd, &b, &failed, werr, sizeof werr);
    g->output = m->output.data == m->tok_embd.data ? g->tok_embd : upload_mat(&m->output, &b, &failed, werr, sizeof werr);
    g->output_norm = upload_vec(m->output_norm, hp->n_embd, &b, &failed);
    if (m->rope_factors) g->rope_factors = upload_vec(m->rope_factors, hp->n_rot / 2, &b, &failed);
    const int nq = hp->n_head * hp->head_dim, nk = hp->n_head_kv * hp->head_dim, nv = hp->n_head_kv * hp->v_dim;
    for (int l = 0; l < hp->n_layer && !failed; l++) {
        const layer_w *w = &m->layers[l];
        gpu_layer *d = &g->layers[l];
        d->wq = upload_mat(&w->wq, &b, &failed, werr, sizeof werr);
        d->wk = upload_mat(&w->wk, &b, &failed, werr, sizeof werr);
        d->wv = upload_mat(&w->wv, &b, &failed, werr, sizeof werr);
        d->wo = upload_mat(&w->wo, &b, &failed, werr, sizeof werr);
        d->gate = upload_mat(&w->gate, &b, &failed, werr, sizeof werr);
        d->up = upload_mat(&w->up, &b, &failed, werr, sizeof werr);
        d->down = upload_mat(&w->down, &b, &failed, werr, sizeof werr);
        d->attn_norm = upload_vec(w->attn_norm, hp->n_embd, &b, &failed);
        d->q_norm = upload_vec(w->q_norm, hp->head_dim, &b, &failed);
        d->k_norm = upload_vec(w->k_norm, hp->head_dim, &b, &failed);
        d->post_attn_norm = upload_vec(w->post_attn_norm, hp->n_embd, &b, &failed);
        d->ffn_norm = upload_vec(w->ffn_norm, hp->n_embd, &b, &failed);
        d->post_ffn_norm = upload_vec(w->post_ffn_norm, hp->n_embd, &b, &failed);
        d->bq = upload_vec(w->bq, nq, &b, &failed);
        d->bk = upload_vec(w->bk, nk, &b, &failed);
        d->bv = upload_vec(w->bv, nv, &b, &failed);
    }
    g->weight_bytes = b;
    g->stage_max = (double)need < budget ? (size_t)(budget - (double)need) : 0;
    if (failed) {
        eng_set_err(err, errlen, "uploading the weights to the GPU: %s", werr[0] ? werr : gpu_last_error());
        eng_gpu_free(m);
        return -1;
    }
    const size_t T = (size_t)m->chunk, nh = hp->n_head, nkv = hp->n_head_kv;
#define DEV(p, n) ((p) = gpu_alloc(sizeof *(p) * (size_t)(n)), failed |= !(p))
#define PIN(p, n) ((p) = gpu_host_alloc(sizeof *(p) * (size_t)(n)), failed |= !(p))
    DEV(g->x, T * hp->n_embd); DEV(g->h, T * hp->n_embd); DEV(g->o, T * hp->n_embd);
    DEV(g->q, T * nq); DEV(g->k, T * nk); DEV(g->v, T * nv);
    DEV(g->att, T * nh * hp->v_dim); DEV(g->lse, T * nh);
    DEV(g->ff_g, T * hp->n_ff); DEV(g->ff_u, T * hp->n_ff);
    DEV(g->logits, (size_t)LOGIT_GROUP * hp->n_vocab);
    DEV(g->part_o, GPU_PARTS * GPU_MAX_DEC * nh * hp->v_dim); DEV(g->part_l, GPU_PARTS * GPU_MAX_DEC * nh);
    DEV(g->tok, T); DEV(g->pos, T);
    PIN(g->h_tok, T); PIN(g->h_pos, T);
    PIN(g->h_k, T * nk); PIN(g->h_v, T * nv); PIN(g->h_q, T * nq);
    PIN(g->h_logits, (size_t)LOGIT_GROUP * hp->n_vocab);
    g->jobs_per_layer = (size_t)GPU_MAX_DEC * nkv * GPU_JOBS_PER_HEAD;
    PIN(g->jobs, g->jobs_per_layer * hp->n_layer);
    DEV(g->d_jobs, g->jobs_per_layer);
    g->tasks = calloc((size_t)GPU_MAX_DEC * nkv, sizeof *g->tasks);
    g->plans = calloc((size_t)GPU_MAX_DEC * nkv, sizeof *g->plans);
    failed |= !g->tasks || !g->plans;
    /* an A/B knob for benchmarks and tests: force one prefill attention kernel */
    const char *pm = getenv("KVSEEK_GPU_PREFILL");
    g->prefill_mode = pm && !strcmp(pm, "tiled") ? 1 : pm && !strcmp(pm, "gemm") ? 2 : 0;
#undef DEV
#undef PIN
    if (failed || gpu_sync()) {
        eng_set_err(err, errlen, "allocating the GPU workspace: %s", gpu_last_error());
        eng_gpu_free(m);
        return -1;
    }
    fprintf(stderr, "kvseek: CUDA device %s: %.2f GB of f16 weights, chunk %d\n", gpu_device_name(),
            g->weight_bytes / 1e9, m->chunk);
    return 0;
}

void eng_gpu_free(eng_model *m) {
    eng_gpu *g = m->gpu;
    if (!g) return;
    gpu_sync();
    if (g->layers) {
        for (int l = 0; l < m->hp.n_layer; l++) {
            gpu_layer *d = &g->layers[l];
            gpu_weight_free(d->wq); gpu_weight_free(d->wk); gpu_weight_free(d->wv); gpu_weight_free(d->wo);
            gpu_weight_free(d->gate); gpu_weight_free(d->up); gpu_weight_free(d->down);
            gpu_free(d->attn_norm); gpu_free(d->q_norm); gpu_free(d->k_norm); gpu_free(d->post_attn_norm);
            gpu_free(d->ffn_norm); gpu_free(d->post_ffn_norm); gpu_free(d->bq); gpu_free(d->bk); gpu_free(d->bv);
        }
        free(g->layers);
    }
    if (g->output != g->tok_embd) gpu_weight_free(g->output);
    gpu_weight_free(g->tok_embd);
    gpu_free(g->output_norm); gpu_free(g->rope_factors);
    gpu_free(g->x); gpu_free(g->h); gpu_free(g->o); gpu_free(g->q); gpu_free(g->k); gpu_free(g->v);
    gpu_free(g->att); gpu_free(g->lse); gpu_free(g->ff_g); gpu_free(g->ff_u); gpu_free(g->logits);
    gpu_free(g->part_o); gpu_free(g->part_l); gpu_free(g->tok); gpu_free(g->pos);
    gpu_host_free(g->h_tok); gpu_host_free(g->h_pos); gpu_host_free(g->h_k); gpu_host_free(g->h_v);
    gpu_host_free(g->h_q); gpu_host_free(g->h_logits); gpu_host_free(g->jobs);
    gpu_free(g->stage); gpu_host_free(g->stage_tbl); gpu_free(g->stage_tbl_d);
    gpu_free(g->d_jobs); gpu_host_free(g->h_tbl); gpu_free(g->d_tbl);
    gpu_host_free(g->h_ids); gpu_free(g->d_ids); free(g->tasks); free(g->plans);
    free(g);
    m->gpu = NULL;
}

/* ---- forward ---- */

/* Decode rows [d0, d1) of `dec` (row indices of single-row sequences) on one layer: jobs for the
 * dense range or the static set, CPU selection of the offloaded ids (rows x KV heads in
 * parallel, as the CPU path), the jobs, page tables and ids copied to the device, one launch,
 * two merges per row (sinks, ids) into the rows' outputs, three with a tail sample (whose job
 * raises its log-sum-exp by the sample's weight). */
static int attend_decode(eng_model *m, int layer, const int *dec, int d0, int d1) {
    eng_gpu *g = m->gpu;
    const eng_hparams *hp = &m->hp;
    const int nkv = hp->n_head_kv, nh = hp->n_head, G = nh / nkv, hd = hp->head_dim, vd = hp->v_dim;
    gpu_attn_job *jobs = g->jobs + (size_t)layer * g->jobs_per_layer;
    int nj = 0, n_task = 0, n_merge = 0;
    int64_t max_keys = 1;
    int merges[GPU_MAX_DEC], merge_parts[GPU_MAX_DEC];
    size_t tbl_off[GPU_MAX_DEC], n_tbl = 0;
    const void *const *tbl[GPU_MAX_DEC];
    int64_t tbl_n[GPU_MAX_DEC];

    /* every row's page table (all KV heads of a layer share it), packed for one copy */
    for (int i = d0; i < d1; i++) {
        if (kv_layer_pages(m->row_seq[dec[i]]->kv, layer, &tbl[i - d0], &tbl_n[i - d0]) != KV_OK ||
            tbl_n[i - d0] < 0)
            tbl_n[i - d0] = 0;
        tbl_off[i - d0] = n_tbl;
        n_tbl += (size_t)tbl_n[i - d0] + 1;
    }
    if (ensure_buf((void **)&g->h_tbl, &g->h_tbl_cap, n_tbl * sizeof(void *), 0) ||
        ensure_buf((void **)&g->d_tbl, &g->d_tbl_cap, n_tbl * sizeof(void *), 1))
        return -1;
    for (int k = 0; k < d1 - d0; k++)
        if (tbl_n[k]) memcpy(g->h_tbl + tbl_off[k], tbl[k], sizeof(void *) * (size_t)tbl_n[k]);

    /* one plan per (row, KV head), as the CPU executor has it; ranges become jobs now, the
     * selected ids once the selections below have run */
    for (int i = d0; i < d1; i++) {
        const int t = dec[i], slot = i - d0;
        eng_seq *s = m->row_seq[t];
        const int64_t p = m->row_pos[t];
        int sparse_row = 0, row_parts = 2;
        for (int h = 0; h < nkv; h++) {
            eng_attn_plan *pl = &g->plans[slot * nkv + h];
            eng_plan_ranges(s, layer, p, 1, pl);
            const size_t q0 = (size_t)t * nh + (size_t)h * G;
            gpu_attn_job *j = &jobs[nj++];
            memset(j, 0, sizeof *j);
            j->kv = s->views[layer * nkv + h];
            j->kv.pages = (const void *const *)(g->d_tbl + tbl_off[slot]);
            j->q = g->q + q0 * hd;
            j->out = g->att + q0 * vd;
            j->lse = g->lse + q0;
            j->lo = pl->part[PLAN_RECENT].lo;
            j->hi = pl->part[PLAN_RECENT].hi;
            if (!pl->sparse) {
                /* nothing offloaded: the static parts are one contiguous range, one job */
                if (pl->n_parts > 1 && pl->part[PLAN_SINKS].hi == j->lo) j->lo = pl->part[PLAN_SINKS].lo;
                if (j->hi - j->lo > max_keys) max_keys = j->hi - j->lo;
                continue;
            }
            if (j->hi - j->lo > max_keys) max_keys = j->hi - j->lo;
            sparse_row = 1;
            /* sinks, selected ids (and the tail sample) into this row's part slots (all heads,
             * so one merge each; an empty part is an empty job, the merge's identity) */
            const size_t ps = ((size_t)(GPU_PARTS * slot) * nh + (size_t)h * G);
            gpu_attn_job *js = &jobs[nj++];
            *js = *j;
            js->out = g->part_o + ps * vd;
            js->lse = g->part_l + ps;
            js->lo = pl->part[PLAN_SINKS].lo;
            js->hi = pl->part[PLAN_SINKS].hi;
            if (js->hi > max_keys) max_keys = js->hi;
            gpu_attn_job *ji = &jobs[nj++];
            *ji = *js;
            ji->out = g->part_o + (ps + (size_t)nh) * vd;
            ji->lse = g->part_l + ps + nh;
            ji->lo = ji->hi = 0;
            struct sel_task *tk = &g->tasks[n_task++];
            tk->s = s;
            tk->h = h;
            tk->job = nj - 1;
            tk->tail_job = -1;
            if (pl->n_parts > PLAN_TAIL) { /* the sequence's setting: every head of the row */
                gpu_attn_job *jt = &jobs[nj++];
                *jt = *ji;
                jt->out = g->part_o + (ps + 2 * (size_t)nh) * vd;
                jt->lse = g->part_l + ps + 2 * nh;
                tk->tail_job = nj - 1;
                row_parts = 3;
            }
            tk->q0 = q0;
            tk->plan = pl;
            tk->p = p;
        }
        if (sparse_row) {
            merges[n_merge] = slot;
            merge_parts[n_merge++] = row_parts;
        }
    }

    /* the selections: each KV head's index is its own, so heads and rows run in parallel */
    if (n_task) {
        #pragma omp parallel for schedule(dynamic, 1)
        for (int k = 0; k < n_task; k++) {
            struct sel_task *tk = &g->tasks[k];
            if (!eng_seq_error(tk->s)) eng_plan_select(tk->s, layer, tk->h, g->h_q + tk->q0 * hd, tk->plan);
        }
        size_t n_ids = 0;
        for (int k = 0; k < n_task; k++) {
            const eng_attn_part *pi = &g->tasks[k].plan->part[PLAN_IDS];
            n_ids += pi->ids && pi->n_ids > 0 ? (size_t)pi->n_ids : 0;
            if (g->tasks[k].tail_job >= 0) {
                const eng_attn_part *pt = &g->tasks[k].plan->part[PLAN_TAIL];
                n_ids += pt->ids && pt->n_ids > 0 ? (size_t)pt->n_ids : 0;
            }
        }
        if (ensure_buf((void **)&g->h_ids, &g->h_ids_cap, (n_ids + 1) * sizeof(int32_t), 0) ||
            ensure_buf((void **)&g->d_ids, &g->d_ids_cap, (n_ids + 1) * sizeof(int32_t), 1))
            return -1;
        size_t off = 0;
        for (int k = 0; k < n_task; k++) {
            struct sel_task *tk = &g->tasks[k];
            const eng_attn_part *pi = &tk->plan->part[PLAN_IDS];
            const int64_t n = pi->ids && pi->n_ids > 0 ? pi->n_ids : 0;
            if (n > 0) {
                memcpy(g->h_ids + off, pi->ids, sizeof(int32_t) * (size_t)n);
                jobs[tk->job].ids = g->d_ids + off;
                jobs[tk->job].n_ids = n;
                if (n > max_keys) max_keys = n;
                off += (size_t)n;
            }
            if (tk->tail_job >= 0) {
                const eng_attn_part *pt = &tk->plan->part[PLAN_TAIL];
                const int64_t nt = pt->ids && pt->n_ids > 0 ? pt->n_ids : 0;
                if (nt > 0) {
                    memcpy(g->h_ids + off, pt->ids, sizeof(int32_t) * (size_t)nt);
                    jobs[tk->tail_job].ids = g->d_ids + off;
                    jobs[tk->tail_job].n_ids = nt;
                    jobs[tk->tail_job].lse_add = pt->lse_add;
                    if (nt > max_keys) max_keys = nt;
                    off += (size_t)nt;
                }
            }
            /* statistics (and recall, on the host copy of the pages) from the plan */
            eng_plan_account(tk->s, &tk->s->views[layer * nkv + tk->h], g->h_q + tk->q0 * hd, tk->p,
                             tk->plan, NULL, NULL);
            if (tk->s->trace_nb)
                eng_plan_trace(tk->s, &tk->s->views[layer * nkv + tk->h], g->h_q + tk->q0 * hd, tk->p, tk->plan, NULL);
        }
        if (off && gpu_h2d(g->d_ids, g->h_ids, sizeof(int32_t) * off)) return -1;
    }
    if (gpu_h2d(g->d_tbl, g->h_tbl, sizeof(void *) * n_tbl) ||
        gpu_h2d(g->d_jobs, jobs, sizeof *jobs * (size_t)nj))
        return -1;
    if (gpu_attn_decode(g->d_jobs, nj, G, hp->attn_scale, max_keys)) return -1;
    for (int k = 0; k < n_merge; k++) {
        const int slot = merges[k], t = dec[d0 + slot];
        float *o = g->att + (size_t)t * nh * vd, *l = g->lse + (size_t)t * nh;
        for (int part = 0; part < merge_parts[k]; part++) {
            const size_t ps = (size_t)(GPU_PARTS * slot + part) * nh;
            if (gpu_attn_merge(o, l, g->part_o + ps * vd, g->part_l + ps, nh, vd)) return -1;
        }
    }
    return 0;
}

/* Points views[0..nkv) at a device copy of layer `layer`'s page table, after copying its pages
 * into device memory when they fit the budget left for staging (prefill reads K/V once per
 * query tile: over the bus that would be bus-bound). Without room the table still moves to the
 * device and the kernel reads the pages in host memory in place (slow). 0, or -1 on a CUDA
 * error. The caller has synchronised, so no kernel still reads the previous staging. */
static int stage_layer(eng_model *m, eng_seq *s, int layer, attn_kv_view *views, int allow_stage) {
    eng_gpu *g = m->gpu;
    const void *const *pages;
    int64_t n_pages;
    if (kv_layer_pages(s->kv, layer, &pages, &n_pages) != KV_OK || n_pages <= 0) return 0;
    if (n_pages > g->stage_tbl_cap) {
        gpu_host_free(g->stage_tbl);
        gpu_free(g->stage_tbl_d);
        g->stage_tbl = gpu_host_alloc(sizeof(void *) * (size_t)n_pages * 2);
        g->stage_tbl_d = gpu_alloc(sizeof(void *) * (size_t)n_pages * 2);
        g->stage_tbl_cap = g->stage_tbl && g->stage_tbl_d ? n_pages * 2 : 0;
        if (!g->stage_tbl_cap) return -1;
    }
    const size_t pb = kv_page_bytes(s->kv), need = (size_t)n_pages * pb;
    int staged = allow_stage && need <= g->stage_max;
    if (allow_stage && !staged && !g->stage_warned++)
        fprintf(stderr, "kvseek: a layer's KV (%.2f GB) exceeds the GPU budget left for staging (%.2f GB); "
                "prefill reads host memory in place (slow)\n", need / 1e9, g->stage_max / 1e9);
    if (staged && need > g->stage_cap) {
        size_t cap = need * 2 < g->stage_max ? need * 2 : g->stage_max; /* grows by doubling */
        gpu_free(g->stage);
        g->stage = gpu_alloc(cap);
        g->stage_cap = g->stage ? cap : 0;
        if (!g->stage) return -1;
    }
    for (int64_t i = 0; i < n_pages; i++) {
        if (!staged) {
            g->stage_tbl[i] = (void *)pages[i];
            continue;
        }
        g->stage_tbl[i] = g->stage + (size_t)i * pb;
        if (pages[i] && gpu_h2d(g->stage_tbl[i], pages[i], pb)) return -1;
    }
    if (gpu_h2d(g->stage_tbl_d, g->stage_tbl, sizeof(void *) * (size_t)n_pages)) return -1;
    for (int h = 0; h < m->hp.n_head_kv; h++) views[h].pages = (const void *const *)g->stage_tbl_d;
    return 0;
}

/* Attention of rows [0, T) on one layer: prefill segments through the tiled causal kernel,
 * decode rows through jobs. K/V of the chunk are already in the stores. */
static int attend(eng_model *m, int layer, int T) {
    eng_gpu *g = m->gpu;
    const eng_hparams *hp = &m->hp;
    const int nkv = hp->n_head_kv, nh = hp->n_head, hd = hp->head_dim, vd = hp->v_dim;
    const int local = eng_layer_is_local(m, layer);
    int dec[GPU_MAX_DEC], nd = 0, staged = 0;
    for (int t = 0; t < T; ) {
        eng_seq *s = m->row_seq[t];
        int e = t;
        while (e < T && m->row_seq[e] == s) e++;
        if (e - t == 1 && m->row_sparse[t]) {
            dec[nd++] = t;
            if (nd == GPU_MAX_DEC) {
                /* the jobs of this layer are about to be rewritten: let the launch read them */
                if (attend_decode(m, layer, dec, 0, nd) || gpu_sync()) return -1;
                nd = 0;
            }
        } else {
            attn_kv_view views[64];
            const attn_kv_view *use = &s->views[layer * nkv];
            const int64_t pos0 = m->row_pos[t], win = local ? hp->sliding_window : 0;
            int64_t kl = win > 0 ? pos0 - win + 1 : 0;
            if (kl < 0) kl = 0;
            /* tensor cores (gather + cuBLAS) for long segments whose scores fit what the budget
             * leaves, the tiled kernel over staged pages otherwise */
            const size_t gb = gpu_attn_prefill_gemm_bytes(nkv, pos0 + (e - t) - kl, e - t, nh, hd, vd);
            const int gemm = g->prefill_mode == 2 ||   /* (its scratch grows to 1.25x the ask) */
                             (g->prefill_mode == 0 && e - t >= 64 && gb + gb / 4 <= g->stage_max);
            if (nkv <= 64) {
                memcpy(views, use, sizeof *views * nkv);
                if (staged++ && gpu_sync()) return -1; /* the previous segment's kernel is done */
                if (stage_layer(m, s, layer, views, !gemm)) return -1;
                use = views;
            }
            const float *qs = g->q + (size_t)t * nh * hd;
            float *os = g->att + (size_t)t * nh * vd;
            if (gemm ? gpu_attn_prefill_gemm(use, nkv, qs, e - t, nh, pos0, win, hp->attn_scale, os)
                     : gpu_attn_prefill(use, nkv, qs, e - t, nh, pos0, win, hp->attn_scale, os))
                return -1;
        }
        t = e;
    }
    return nd ? attend_decode(m, layer, dec, 0, nd) : 0;
}

#define TRY(x) do { if ((x) != 0) goto cuda_fail; } while (0)

int eng_gpu_forward_chunk(eng_model *m, const eng_batch_row *rows, int T, char *err, size_t errlen) {
    eng_gpu *g = m->gpu;
    const eng_hparams *hp = &m->hp;
    const int E = hp->n_embd, hd = hp->head_dim, vd = hp->v_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const size_t nq = (size_t)nh * hd, nk = (size_t)nkv * hd, nv = (size_t)nkv * vd;
    for (int t = 0; t < T; t++) {
        g->h_tok[t] = rows[t].token;
        g->h_pos[t] = m->row_pos[t];
    }
    /* the query goes back to the host for the selectors (decode rows of global layers), for the
     * index's record of prefill queries and for a context's calibration capture */
    int q_needed_global = 0, q_needed_any = 0;
    for (int t = 0; t < T; t++) {
        eng_seq *s = m->row_seq[t];
        if (!(s->caps & (IDX_CAP_ALL | IDX_CAP_NONE)) || s->measure_recall || s->keep_queries)
            q_needed_global = 1; /* (a selector that observes queries is one that selects) */
        if (s->cap_q) q_needed_any = 1;
    }
    TRY(gpu_h2d(g->tok, g->h_tok, sizeof(int32_t) * T));
    TRY(gpu_h2d(g->pos, g->h_pos, sizeof(int32_t) * T));
    TRY(gpu_embed(g->tok_embd, g->tok, T, hp->embd_scale, g->x));
    const float swa_scale = hp->arch == ENG_ARCH_GEMMA3 ? 1.0f : hp->rope_freq_scale;
    for (int l = 0; l < hp->n_layer; l++) {
        const gpu_layer *w = &g->layers[l];
        const int local = eng_layer_is_local(m, l);
        TRY(gpu_rmsnorm(g->h, g->x, w->attn_norm, T, E, hp->eps));
        TRY(gpu_matmul(w->wq, g->h, T, g->q));
        TRY(gpu_matmul(w->wk, g->h, T, g->k));
        TRY(gpu_matmul(w->wv, g->h, T, g->v));
        if (w->bq) TRY(gpu_add_bias(g->q, w->bq, T, (int)nq));
        if (w->bk) TRY(gpu_add_bias(g->k, w->bk, T, (int)nk));
        if (w->bv) TRY(gpu_add_bias(g->v, w->bv, T, (int)nv));
        if (w->q_norm) TRY(gpu_rmsnorm(g->q, g->q, w->q_norm, T * nh, hd, hp->eps));
        if (w->k_norm) TRY(gpu_rmsnorm(g->k, g->k, w->k_norm, T * nkv, hd, hp->eps));
        const float base = local ? hp->rope_base_swa : hp->rope_base;
        const float fs = local ? swa_scale : hp->rope_freq_scale;
        TRY(gpu_rope(g->q, T, nh, hd, hp->n_rot, g->pos, base, fs, g->rope_factors, hp->rope_neox));
        TRY(gpu_rope(g->k, T, nkv, hd, hp->n_rot, g->pos, base, fs, g->rope_factors, hp->rope_neox));
        /* K and V join the sequences' stores (host memory the kernels read in place) */
        TRY(gpu_d2h(g->h_k, g->k, sizeof(float) * T * nk));
        TRY(gpu_d2h(g->h_v, g->v, sizeof(float) * T * nv));
        const int want_q = q_needed_any || (!local && q_needed_global);
        if (want_q) TRY(gpu_d2h(g->h_q, g->q, sizeof(float) * T * nq));
        TRY(gpu_sync());
        eng_rows_to_store(m, l, T, g->h_k, g->h_v, g->h_q);
        const double t0 = krn_now_s();
        TRY(attend(m, l, T));
        const double dt = krn_now_s() - t0;
        for (int t = 0; t < T; t++)
            if (t == 0 || m->row_seq[t] != m->row_seq[t - 1]) m->row_seq[t]->st.attn_s += dt;
        TRY(gpu_matmul(w->wo, g->att, T, g->o));
        if (w->post_attn_norm) TRY(gpu_rmsnorm(g->o, g->o, w->post_attn_norm, T, E, hp->eps));
        TRY(gpu_add(g->x, g->o, (int64_t)T * E));
        TRY(gpu_rmsnorm(g->h, g->x, w->ffn_norm, T, E, hp->eps));
        TRY(gpu_matmul(w->gate, g->h, T, g->ff_g));
        TRY(gpu_matmul(w->up, g->h, T, g->ff_u));
        TRY(gpu_glu(g->ff_g, g->ff_g, g->ff_u, (int64_t)T * hp->n_ff, hp->arch == ENG_ARCH_GEMMA3));
        TRY(gpu_matmul(w->down, g->ff_g, T, g->o));
        if (w->post_ffn_norm) TRY(gpu_rmsnorm(g->o, g->o, w->post_ffn_norm, T, E, hp->eps));
        TRY(gpu_add(g->x, g->o, (int64_t)T * E));
    }
    /* logits of the rows that want them, LOGIT_GROUP rows per pass through the output matrix */
    int want[LOGIT_GROUP], nw = 0;
    for (int t = 0; t <= T; t++) {
        if (t < T && rows[t].logits) {
            TRY(gpu_rmsnorm(g->h + (size_t)nw * E, g->x + (size_t)t * E, g->output_norm, 1, E, hp->eps));
            want[nw++] = t;
        }
        if (nw == LOGIT_GROUP || (t == T && nw > 0)) {
            TRY(gpu_matmul(g->output, g->h, nw, g->logits));
            if (hp->final_softcap > 0.0f) TRY(gpu_softcap(g->logits, (int64_t)nw * hp->n_vocab, hp->final_softcap));
            TRY(gpu_d2h(g->h_logits, g->logits, sizeof(float) * nw * hp->n_vocab));
            TRY(gpu_sync());
            for (int j = 0; j < nw; j++)
                memcpy(rows[want[j]].logits, g->h_logits + (size_t)j * hp->n_vocab, sizeof(float) * hp->n_vocab);
            nw = 0;
        }
    }
    if (gpu_sync() == 0) return 0;
cuda_fail:
    /* a CUDA error leaves the context unusable (sticky errors) or the chunk half-done: the
     * device is marked failed, later work gets a clear refusal (HTTP 503) instead of garbage */
    snprintf(m->device_failed, sizeof m->device_failed, "the GPU failed (CUDA: %s); restart the server",
             gpu_last_error());
    atomic_store(&m->device_broken, 1);
    eng_set_err(err, errlen, "%s", m->device_failed);
    return -1;
}
