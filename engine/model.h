/* A GGUF transformer model (gemma3, qwen2, llama) and the forward pass over a sequence's KV
 * cache. Hyperparameters come from the file's metadata; weights stay in the read-only mapping.
 * Threading: one engine thread calls eng_forward at a time (it uses the model's workspace);
 * the work inside is spread over OpenMP threads. */
#ifndef KVSEEK_MODEL_H
#define KVSEEK_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "tok.h"

typedef enum { ENG_ARCH_LLAMA = 0, ENG_ARCH_QWEN2 = 1, ENG_ARCH_GEMMA3 = 2 } eng_arch;

typedef struct {
    eng_arch arch;
    char arch_name[32];
    int n_vocab;
    int n_ctx_train;     /* context length the model was trained for */
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;        /* key length per head */
    int v_dim;           /* value length per head */
    int n_ff;
    int n_rot;           /* rotated dims per head */
    float eps;
    float rope_base;     /* global layers */
    float rope_base_swa; /* local (sliding-window) layers */
    float rope_freq_scale;
    bool rope_neox;      /* pairs (i, i+n_rot/2) rather than (2i, 2i+1) */
    int sliding_window;  /* 0: none */
    int swa_pattern;     /* layer l is local iff swa_pattern > 0 && l % swa_pattern < swa_pattern-1 */
    float attn_scale;
    float final_softcap; /* 0: none */
    float embd_scale;    /* 1 except gemma: sqrt(n_embd) */
} eng_hparams;

typedef struct eng_model eng_model;
typedef struct eng_seq eng_seq;

/* How a sequence stores its KV cache and which keys its decode steps attend (DESIGN.md).
 * Prefill rows always attend densely (causal); a decode row (a sequence advanced by one row)
 * of a global layer attends its static set (sinks + recent window) plus the ids its selector
 * picks among the offloaded tokens, merged exactly by log-sum-exp. */
typedef struct {
    char selector[16];     /* "dense" (default), "window", "oracle", "retrieval", "ivf", "centroids" */
    int top_k;             /* ids per query the selector returns (default 100) */
    float scan;            /* retrieval/ivf: share of offloaded keys scored (default 0.02) */
    int gqa_mean;          /* 1: select with the group's mean query; 0: union of per-query top-k */
    int n_sink;            /* static set: first n_sink tokens (default 128) */
    int n_window;          /* ... and the last n_window tokens (default 512) */
    int page_size;         /* tokens per KV page (default 64) */
    int kv_f16;            /* store K and V as f16 */
    size_t kv_max_bytes;   /* per-sequence KV memory limit; 0: none */
    int measure_recall;    /* also run dense attention to measure the selected set's mass recall */
    float target;          /* centroids: share of offloaded keys to read; 0: the selector's default */
    int levels;            /* centroids on a context: 1 scores every fine centroid; 0: the
                            * context's levels (two when it has a coarse level) */
} eng_attn_params;

/* Defaults: dense, top_k 100, scan 0.02, union, sinks 128, window 512, pages of 64, f32. */
eng_attn_params eng_attn_default(void);

/* One knob by name, from text: the single place that knows the names, ranges and meaning, used
 * by the command line (--attn-top-k 100 -> "top_k"), the server's config file and requests.
 * Keys: selector, top_k, scan, target, gqa (union|mean), sink, window, measure_recall (0|1,
 * true|false), and the storage keys page_size (power of two), kv_f16, kv_mem_gb, which only
 * apply when a sequence is created. Returns 0, or -1 with a one-line reason in err (unknown
 * key, bad value). */
int eng_attn_set(eng_attn_params *a, const char *key, const char *value, char *err, size_t errlen);
/* Whether key is one of the storage keys (fixed per server, not per request). */
int eng_attn_is_storage_key(const char *key);
/* The command-line flag of a key ("top_k" -> "--attn-top-k"), and back (NULL: not a flag). */
const char *eng_attn_key_of_flag(const char *flag);
/* Checks a whole parameter set (as eng_seq_create_ex would). 0, or -1 with a reason. */
int eng_attn_check(const eng_attn_params *a, char *err, size_t errlen);

typedef enum { ENG_DEVICE_CPU = 0, ENG_DEVICE_CUDA = 1 } eng_device;

typedef struct {
    int n_threads;     /* 0: OpenMP default */
    int chunk;         /* prefill tokens per forward chunk; 0: 256 (1024 on a GPU) */
    eng_device device; /* CUDA: the forward pass on the GPU when one is usable (kvseek built with
                        * CUDA=1 and a device present); otherwise the CPU, with one log line */
    double gpu_mem_gb; /* GPU memory budget for weights and buffers; 0: what is free */
    eng_attn_params attn; /* sequences' default; all-zero means eng_attn_default() */
} eng_model_params;

/* Attention statistics of a sequence since its creation or last reset (global layers). */
typedef struct {
    int64_t sparse_rows;    /* (decode row, layer, KV head) triples that used the selector */
    int64_t offloaded_keys; /* offloaded candidates of those triples, summed */
    int64_t keys_read;      /* offloaded keys attended (selected ids), summed */
    int64_t keys_scanned;   /* keys the selector scored exactly, summed */
    double search_s;        /* seconds in the selector */
    double build_s;         /* seconds building indexes after prefill */
    double attn_s;          /* seconds in attention (all layers, all rows) */
    double mass_recall;     /* mean attention-mass recall of sparse triples (measure_recall) */
    int64_t recall_n;       /* triples measured */
} eng_attn_stats;

/* Loads the model at path. NULL and a one-line reason in err on failure. */
eng_model *eng_model_load(const char *path, const eng_model_params *p, char *err, size_t errlen);
void eng_model_free(eng_model *m); /* accepts NULL */

const eng_hparams *eng_model_hparams(const eng_model *m);
/* Where the forward pass runs: "cuda" or "cpu". */
const char *eng_model_device(const eng_model *m);
const tok_vocab *eng_model_vocab(const eng_model *m);
const gguf_ctx *eng_model_gguf(const eng_model *m);
bool eng_layer_is_local(const eng_model *m, int layer);

/* A sequence: its paged KV store of capacity n_ctx tokens and its selector, configured by the
 * model's attention parameters (eng_seq_create) or by attn (eng_seq_create_ex; the selector
 * string need not outlive the call). NULL and a reason in err on bad parameters. */
eng_seq *eng_seq_create(const eng_model *m, int n_ctx, char *err, size_t errlen);
eng_seq *eng_seq_create_ex(const eng_model *m, int n_ctx, const eng_attn_params *attn,
                           char *err, size_t errlen);
void eng_seq_attn_stats(const eng_seq *s, eng_attn_stats *out);
/* Reconfigures an empty sequence (position 0) for the next request: selector, top_k, scan,
 * target, gqa, sinks, window and measure_recall from attn; its storage (page size, dtype,
 * memory limit) stays as created. 0, or -1 with a reason (bad parameters, not empty). */
int eng_seq_set_attn(eng_seq *s, const eng_attn_params *attn, char *err, size_t errlen);
/* The parameters the sequence now runs with. */
void eng_seq_get_attn(const eng_seq *s, eng_attn_params *out);
void eng_seq_free(eng_seq *s); /* accepts NULL */
int eng_seq_pos(const eng_seq *s);      /* tokens already in the cache */
int eng_seq_capacity(const eng_seq *s);
void eng_seq_reset(eng_seq *s);         /* forget all tokens and statistics */
size_t eng_seq_bytes(const eng_seq *s); /* KV (and index) memory held */

/* One row of a batch: the next token of a sequence. Rows of one sequence must be consecutive
 * and in order; each takes the sequence's next position, and sees the rows before it. */
typedef struct {
    eng_seq *seq;
    int32_t token;
    float *logits; /* NULL: none; else receives n_vocab floats for this row */
} eng_batch_row;

/* Runs a batch that may mix sequences (continuous batching: several decoding sequences and a
 * prefill slice in one pass). Every weight matrix is read once per `chunk` rows. Each row's
 * result is the same whatever else is in the batch (bit-identical when the matmul kernels are
 * batch-invariant). Returns 0, or -1 with a reason in err; on error no sequence changes. */
int eng_forward_batch(eng_model *m, const eng_batch_row *rows, int n, char *err, size_t errlen);

/* Appends n tokens to the sequence and runs them through the model in chunks.
 * logits: NULL for none; else receives n_vocab floats for the last token, or n * n_vocab for
 * every token when all_logits. Returns 0, or -1 with a reason in err (ids out of range,
 * context full). On error the sequence is unchanged. */
int eng_forward(eng_model *m, eng_seq *s, const int32_t *tokens, int n, float *logits,
                bool all_logits, char *err, size_t errlen);

#endif
