/* The model's and the sequences' private state, shared by the forward passes of the CPU
 * (model.c) and the CUDA backend (model_gpu.c). Not a public header: the engine's only. */
#ifndef KVSEEK_MODEL_IMPL_H
#define KVSEEK_MODEL_IMPL_H

#include "model.h"
#include "context.h"

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
};

struct eng_seq {
    const eng_model *m;
    int n_ctx, pos;
    kv_store *kv;
    idx_set *ix;
    idx_kind kind;
    idx_request req;
    int measure_recall;
    eng_attn_params attn; /* as configured (eng_seq_set_attn) */
    int built;            /* the selector has indexed the prefill */
    attn_kv_view *views;  /* (n_layer, n_head_kv) */
    int32_t *ids;         /* (n_head_kv, ids_cap) selector output per KV head */
    int64_t ids_cap;
    eng_attn_stats st;
    /* queries recorded for a context's calibration: positions [cap_from, cap_from + cap_n) of
     * every layer, rows of n_head * head_dim */
    float *cap_q;
    int64_t cap_from, cap_n;
    /* a registered context the sequence starts with (eng_seq_attach_ctx) */
    eng_ctx *ctx;
    int64_t ctx_lo, ctx_hi;  /* its clustered range */
    float *ctx_thr;          /* (n_layer, n_head_kv) thresholds for the request's target */
    char *ctx_scratch;       /* (n_head_kv, ctx_scratch_bytes) */
    size_t ctx_scratch_bytes;
};



/* Rows [0, T) of the chunk on one layer, their K (T, n_head_kv, head_dim) and V in host
 * memory: appended to their sequences' stores, and their queries (T, n_head, head_dim) recorded
 * where a context build captures them or a selector observes prefill queries (q is read only
 * then). Shared by both forward passes. */
void eng_rows_to_store(eng_model *m, int layer, int T, const float *k, const float *v, const float *q);

/* ---- the CUDA backend (model_gpu.c) ---- */

/* Uploads the weights and sizes the device workspace for m->chunk rows within the budget of
 * m->params.gpu_mem_gb. 0, or -1 with a reason (m->gpu stays NULL). */
int eng_gpu_load(eng_model *m, char *err, size_t errlen);
void eng_gpu_free(eng_model *m);
/* forward_chunk on the device: rows [0, T) with row_seq/row_pos/row_sparse filled. */
int eng_gpu_forward_chunk(eng_model *m, const eng_batch_row *rows, int T, char *err, size_t errlen);

#endif
