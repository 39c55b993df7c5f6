/* The model's and the sequences' private state, shared by the forward passes of the CPU
 * (model.c) and the CUDA backend (model_gpu.c). Not a public header: the engine's only. */
#ifndef KVSEEK_MODEL_IMPL_H
#define KVSEEK_MODEL_IMPL_H

#include <stdatomic.h>

#include "model.h"

#include "attn_sparse.h"
#include "index.h"
#include "kvcache.h"

typedef struct eng_gpu eng_gpu; /* model_gpu.c */

enum { LOGIT_GROUP = 32 }; /* rows per pass through the output matrix */
/* a dense decode range of at least twice this many keys is split by keys across threads */
enum { ATTN_SPLIT_KEYS = 2048 };

/* A unit of attention work in attend(): a whole (row, KV head), or a part of one (a slice of
 * its group's queries or of its key range). */
typedef struct {
    int t, h;
    int whole;          /* attend_one: the row's full path (selector, merges, statistics) */
    int g0, ng;         /* queries [g0, g0 + ng) of the group */
    int64_t lo, hi;     /* keys of this part */
    int slot;           /* -1: writes the row's output; else a scratch slot merged afterwards */
    int rows;           /* > 1: prefill rows t .. t + rows - 1 of a global layer together
                         * (attn_causal_rows: their keys read once) */
} attn_job;

typedef struct {
    uint32_t type;
    const void *data;
    int64_t n_rows, n_cols; /* rows = outputs, cols = inputs */
} weight;

typedef struct {
    const float *attn_norm;        /* (n_embd) */
    weight wq, wk, wv, wo;         /* (n_head*hd, n_embd) (n_kv*hd, n_embd) (n_kv*vd, n_embd) (n_embd, n_head*vd) */
    const float *bq, *bk, *bv;     /* qwen2 biases or NULL */
    const float *q_norm, *k_norm;  /* gemma3 (head_dim) or NULL */
    const float *post_attn_norm;   /* gemma3 (n_embd) or NULL */
    const float *ffn_norm;         /* (n_embd) */
    weight gate, up, down;         /* (n_ff, n_embd) (n_ff, n_embd) (n_embd, n_ff) */
    const float *post_ffn_norm;    /* gemma3 (n_embd) or NULL */
} layer_w;

struct eng_model {
    gguf_ctx *g;
    tok_vocab *vocab;
    eng_hparams hp;
    eng_model_params params;
    weight tok_embd;          /* (n_vocab, n_embd) */
    weight output;            /* (n_vocab, n_embd); tied to tok_embd when the file has none */
    const float *output_norm; /* (n_embd) */
    const float *rope_factors;/* (n_rot/2) or NULL */
    layer_w *layers;
    /* workspace for one chunk of `chunk` rows */
    int chunk;
    eng_seq **row_seq;  /* (chunk) the sequence of each row */
    int *row_pos;       /* (chunk) the position of each row in its sequence */
    char *row_sparse;   /* (chunk) the row is its sequence's only row: a decode step */
    float *logits;      /* (LOGIT_GROUP, n_vocab) */
    float *x, *h, *q, *k, *v, *att, *o, *ff_g, *ff_u, *rope_cos, *rope_sin;
    float *att_lse;     /* (chunk, n_head) log-sum-exp of the attention rows */
    attn_job *jobs;     /* (chunk * n_head_kv * max(group, threads)) */
    float *part_o, *part_l; /* key-part scratch of split decode rows, part_cap slots */
    size_t part_cap;
    int job_threads;    /* thread count jobs was sized for */
    eng_gpu *gpu;       /* the CUDA backend's state; NULL: the CPU runs the forward pass */
    char device_failed[256]; /* why a CUDA error broke the device (eng_model_failed) ... */
    atomic_int device_broken;/* ... valid once this is set (other threads read it: /health) */
};

struct eng_seq {
    const eng_model *m;
    int n_ctx, pos;
    kv_store *kv;
    idx_set *ix;
    unsigned caps;        /* idx_caps(ix): what the selector can do */
    idx_request req;
    int measure_recall;
    eng_attn_params attn; /* as configured (eng_seq_set_attn) */
    int built;            /* the selector has indexed the prefill (or is bound to a context's) */
    int keep_queries;     /* eng_seq_keep_queries: prefill queries kept for forks */
    attn_kv_view *views;  /* (n_layer, n_head_kv) */
    int32_t *ids;         /* (n_head_kv, ids_cap) selector output per KV head */
    int64_t ids_cap;
    float *est_v;         /* (n_head_kv, group, v_dim) the estimate of the keys left out ... */
    float *est_rel;       /* (n_head_kv, group) ... and its log mass relative to the ids' */
    struct eng_reuse *reuse; /* (n_layer, n_head_kv) attn.reuse: each slot's last selection */
    eng_attn_stats st;
    /* queries recorded for a context's calibration: positions [cap_from, cap_from + cap_n) of
     * every layer, rows of n_head * head_dim */
    float *cap_q;
    int64_t cap_from, cap_n;
    /* a prefix borrowed read-only: a registered context's (eng_seq_adopt_prefix) or a forked
     * parent's; owner is held until reset or free */
    void *owner;
    void (*release)(void *owner);
    int fixed;                  /* a context's clustered range [fixed_lo, fixed_hi) is the
                                 * selector's for good (sinks before, everything after dense);
                                 * 0: the store's moving ranges */
    int64_t fixed_lo, fixed_hi;
    struct seq_share *share;    /* this sequence's store as shared with its forks (seq.c) */
    /* the attention trace (eng_seq_trace): rows at positions >= trace_from add their keys'
     * weights to trace[pos / trace_bucket] (trace_nb buckets; 0: off); trace_n counts the
     * (row, layer, query head) triples added since the last take */
    float *trace;
    int trace_nb;
    int64_t trace_from, trace_bucket, trace_n;
    char failed[256];     /* non-empty: a step failed; unusable until eng_seq_reset */
};




/* Rows [0, T) of the chunk on one layer, their K (T, n_head_kv, head_dim) and V in host
 * memory: appended to their sequences' stores, and their queries (T, n_head, head_dim) recorded
 * where a context build captures them or a selector observes prefill queries (q is read only
 * then). Shared by both forward passes. */
void eng_rows_to_store(eng_model *m, int layer, int T, const float *k, const float *v, const float *q);
/* Whether row t's sequence has failed during this pass (its rows are skipped from then on). */
static inline int eng_row_dead(const eng_model *m, int t) { return m->row_seq[t]->failed[0] != 0; }


/* ---- the decode-attention plan (attn_plan.c) ---------------------------------------------
 * What one row attends at one layer and KV head, decided in one place for every executor:
 * parts in merge order, each a position range [lo, hi) or a list of selected positions. Part 0
 * writes the output; each later part merges in by log-sum-exp; an empty part is the merge's
 * identity (the CPU executor skips it, the GPU one runs it as an empty job). A prefill row, a
 * local layer or a selector that reads everything (IDX_CAP_ALL) has one range; a decode row of
 * a global layer has the recent range, the sinks, and the ids the selector picks among the
 * offloaded range [off_lo, off_hi); with a tail share (eng_attn_params.tail) a fourth part, a
 * stratified sample of the offloaded keys the selector left, stands for all of them: its
 * log-sum-exp is raised by lse_add = log(n_rest / n_sampled) before it merges, so the softmax's
 * numerator and denominator over the unselected keys are estimated instead of dropped. With
 * eng_attn_params.estimate instead, a fifth part is the selector's own estimate of the keys it
 * left (idx_select_est): one value vector per query, whose log-sum-exp is the ids part's plus
 * the estimate's relative log mass (the CPU executor only). */
enum { PLAN_RECENT = 0, PLAN_SINKS = 1, PLAN_IDS = 2, PLAN_TAIL = 3, PLAN_EST = 4, PLAN_MAX_PARTS = 5 };

typedef struct {
    int64_t lo, hi;      /* a range [lo, hi) when ids is NULL ... */
    const int32_t *ids;  /* ... else n_ids ascending positions */
    int64_t n_ids;
    float lse_add;       /* added to the part's log-sum-exp before it merges (a sample's weight,
                          * log of the keys it stands for per key read); 0: the keys themselves */
    const float *est_o;  /* PLAN_EST: (G, v_dim) the estimate's output, and ... */
    const float *est_rel;/* ... (G) its log-sum-exp less the ids part's; NULL: no estimate */
} eng_attn_part;

typedef struct {
    eng_attn_part part[PLAN_MAX_PARTS];
    int n_parts;
    int sparse;          /* the row reads its offloaded range through the selector (counted in
                          * the statistics), with ids still to pick when the selector picks */
    int64_t off_lo, off_hi;
    int64_t pos;         /* the row's position: seeds the tail sample (the same keys on a rerun) */
} eng_attn_plan;

/* attn.reuse: a (layer, KV head) slot's last selection (its ids part, widened by expand), made
 * for the row at pos over the offloaded range [off_lo, off_hi); pos < 0: none. The ids buffer
 * grows with the selection and is freed with the sequence. */
typedef struct eng_reuse {
    int32_t *ids;
    int64_t n, cap, pos, off_lo, off_hi;
} eng_reuse;
/* Forgets every slot's selection (a reset sequence starts over). */
void eng_plan_reuse_clear(eng_seq *s);

/* Widens n distinct ascending ids (in [lo, hi)) to every position within r of one of them,
 * clipped to [lo, hi), ascending, in the same buffer of cap >= n entries; the new count. A
 * radius above cap - (hi - lo) is reduced to it. */
int64_t eng_plan_expand_ids(int32_t *ids, int64_t n, int64_t cap, int r, int64_t lo, int64_t hi);
/* Each of n distinct ascending ids (in [lo, hi)) and its `steps` successors, clipped to [lo, hi),
 * ascending and distinct, into out (room for cap; out must not overlap ids); the count. */
int64_t eng_plan_follow_ids(const int32_t *ids, int64_t n, int64_t steps, int64_t lo, int64_t hi, int32_t *out,
                            int64_t cap);
/* The tail sample: about share * (hi - lo) positions of [lo, hi), one drawn uniformly in each of
 * as many equal strata (at least one), those that are among the n ascending selected ids skipped,
 * written ascending to out (room for cap). The draw within each stratum comes from a hash of
 * seed and the stratum, so a seed gives the same sample on every run and successive seeds
 * (positions) sample different keys. *log_w = log(n_rest / count), n_rest the positions of
 * [lo, hi) not selected (0 when nothing is sampled). Returns the count. Allocates nothing. */
int64_t eng_plan_tail_sample(const int32_t *ids, int64_t n, int64_t lo, int64_t hi, double share, uint64_t seed,
                             int32_t *out, int64_t cap, float *log_w);
/* Whether a sequence of n tokens attends densely by its dense_below setting. */
static inline int eng_seq_dense_now(const eng_seq *s, int64_t n) {
    return s->attn.dense_below > 0 && n < s->attn.dense_below;
}
/* Step 1, from ranges alone: the row at position p (decode: the sequence's only row). */
void eng_plan_ranges(const eng_seq *s, int layer, int64_t p, int decode, eng_attn_plan *pl);
/* Step 2: indexes keys that left the window and picks the ids for the group's queries q (G rows)
 * into the sequence's buffer of KV head kvh. 0, or -1 with the sequence marked failed. Calls
 * for different KV heads may run concurrently. */
int eng_plan_select(eng_seq *s, int layer, int kvh, const float *q, eng_attn_plan *pl);
/* The CPU executor: attn_range / attn_ids / attn_merge over the parts, in order. */
void eng_plan_run(const eng_model *m, const attn_kv_view *view, const float *q, const eng_attn_plan *pl,
                  float *out, float *lse);
/* Statistics of an executed sparse plan, once per (row, layer, KV head) for both executors;
 * with measure_recall, the attended set's share of the dense softmax mass (the keys read, a
 * weighted part's at weight 1) and the output's relative error against dense (out, lse: the
 * plan's output and log-sum-exp per query, NULL to compute them here). Thread-safe. */
void eng_plan_account(eng_seq *s, const attn_kv_view *view, const float *q, int64_t p,
                      const eng_attn_plan *pl, const float *out, const float *lse);
/* The attention trace of a row (s->trace_nb > 0, p >= s->trace_from): the softmax weights of
 * the keys its plan attends, recomputed from the parts' raw scores against the plan's
 * log-sum-exp per query (lse: the executor's, G floats; NULL: the plan run here, eng_plan_run),
 * added to the sequence's buckets. Thread-safe (atomic adds of a per-call buffer). */
void eng_plan_trace(eng_seq *s, const attn_kv_view *view, const float *q, int64_t p, const eng_attn_plan *pl,
                    const float *lse);
static inline int eng_seq_traced(const eng_seq *s, int64_t p) { return s->trace_nb > 0 && p >= s->trace_from; }
/* Fault injection (attn_plan.c): nonzero when this call of the point is to fail. */
enum { ENG_FAULT_SELECT = 0, ENG_FAULT_KV_APPEND = 1 };
int eng_fault_hit(int point);

/* ---- the CUDA backend (model_gpu.c) ---- */

/* Uploads the weights and sizes the device workspace for m->chunk rows within the budget of
 * m->params.gpu_mem_gb. 0, or -1 with a reason (m->gpu stays NULL). */
int eng_gpu_load(eng_model *m, char *err, size_t errlen);
void eng_gpu_free(eng_model *m);
/* forward_chunk on the device: rows [0, T) with row_seq/row_pos/row_sparse filled. */
int eng_gpu_forward_chunk(eng_model *m, const eng_batch_row *rows, int T, char *err, size_t errlen);

#endif
