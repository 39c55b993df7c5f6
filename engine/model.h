/* A GGUF transformer model (gemma3, qwen2, llama) and the forward pass over a sequence's KV
 * cache. Hyperparameters come from the file's metadata; weights stay in the read-only mapping.
 * Threading: one engine thread calls eng_forward at a time (it uses the model's workspace);
 * the work inside is spread over OpenMP threads. */
#ifndef KVSEEK_MODEL_H
#define KVSEEK_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf.h"
#include "index.h"
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

/* The selector "auto", the default: not a kind of index but the engine's choice per model and
 * executor, from the accuracy suite's evidence (README, "Why the default"): sparq plus a
 * stratified tail of ENG_AUTO_TAIL of the keys it leaves (an unbiased estimate of them, which
 * keeps the aggregation tasks a dropped tail loses), dense below ENG_AUTO_DENSE_BELOW tokens
 * (dense_below 0 becomes that), on the CPU for models without qk-norm; dense elsewhere (qk-norm
 * spreads a query over all its components, which sparq's partial scores need concentrated; the
 * GPU path is not measured on the suite). An asked-for tail, estimate or dense_below stays. A
 * sequence resolves it when configured (eng_seq_get_attn says what it runs). */
#define ENG_SELECTOR_AUTO IDX_KIND_COUNT
#define ENG_AUTO_DENSE_BELOW 8192
#define ENG_AUTO_TAIL 0.02f

/* How a sequence stores its KV cache and which keys its decode steps attend (DESIGN.md).
 * Prefill rows always attend densely (causal); a decode row (a sequence advanced by one row)
 * of a global layer attends its static set (sinks + recent window) plus the ids its selector
 * picks among the offloaded tokens, merged exactly by log-sum-exp. */
typedef struct {
    idx_kind selector;     /* IDX_DENSE, _WINDOW, _ORACLE, _RETRIEVAL, _IVF, _CENTROIDS,
                            * _QUEST, _SPARQ, or ENG_SELECTOR_AUTO (the default) */
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
    float mass;            /* centroids: > 0 reads, per query, the clusters covering this estimated
                            * share of its attention instead (an adaptive budget); 0: target */
    int expand;            /* every selected key brings its neighbours within this many positions
                            * (a copied string is read token after token; 0: none) */
    int dense_below;       /* decode rows of a sequence shorter than this many tokens attend
                            * densely and its selector is built only when it reaches it (where
                            * sparse attention does not pay); 0: never */
    int levels;            /* centroids on a context: 1 scores every fine centroid; 0: the
                            * context's levels (two when it has a coarse level) */
    float tail;            /* an estimated tail: besides the selected ids, a stratified sample of
                            * this share of the offloaded keys among those not selected, weighted
                            * to stand for all of them (n_rest / n_sampled); 0: off (dropped) */
    float refine;          /* centroids: > 1 reads the clusters for refine x target as candidates,
                            * scores their keys exactly and attends the target share's best; 0: off */
    int estimate;          /* sparq, centroids: the keys the selector leaves are estimated from what
                            * it knows of them (approximate logits, centroids) and merged as one
                            * more part; not with tail, and on the CPU executor only */
    int reuse;             /* > 1: a selection serves this many decode steps of its layer and KV
                            * head (the keys that leave the window meanwhile join it), the next
                            * step selects again; the selector's cost divided by it, at the price
                            * of ids chosen by an older query. 0, 1: select at every step. Not
                            * with estimate (its estimate is the current query's) */
} eng_attn_params;

/* The options of eng_attn_params, one per field, in one table (engine/attn_opts.c) that holds
 * each field's name, kind, bounds and default; everything below is derived from it. Keys, in
 * table order: selector, top_k, scan, target, mass, expand, tail, refine, estimate, reuse, dense_below,
 * gqa (union|mean),
 * sink, window, measure_recall, levels, and the storage keys page_size (a power of two), kv_f16,
 * kv_mem_gb, which apply only when a sequence is created (server-wide, refused per request). */
typedef enum {
    ENG_ATTN_INT,   /* an int field: an integer in the option's range */
    ENG_ATTN_FLOAT, /* a float field: a number in the option's range */
    ENG_ATTN_BOOL,  /* an int field, 0 or 1: true|false or 1|0 as text; a flag without a value */
    ENG_ATTN_ENUM,  /* an enum field, set by the name of a value (selector, gqa) */
    ENG_ATTN_GB,    /* a size_t field of bytes, given as a number of GiB (kv_mem_gb) */
} eng_attn_kind;

typedef struct {
    const char *name;  /* key in the config file and requests ("top_k") */
    const char *flag;  /* command-line flag ("--attn-top-k"); a boolean one takes no value */
    eng_attn_kind kind;
    bool storage;      /* fixed when a sequence is created: a server's setting, not a request's */
} eng_attn_opt;

/* The i-th option in table order; NULL past the last (iterate from 0). */
const eng_attn_opt *eng_attn_opt_at(int i);
/* The option with this key, or this command-line flag; NULL when there is none. */
const eng_attn_opt *eng_attn_opt_find(const char *name);
const eng_attn_opt *eng_attn_opt_of_flag(const char *flag);

/* An option's value in a: num is the number (bool 0/1, an enum's value, GB in GiB); name is the
 * name of an enum's value (a static string), NULL for other kinds. */
typedef struct {
    double num;
    const char *name;
} eng_attn_value;
eng_attn_value eng_attn_get(const eng_attn_params *a, const eng_attn_opt *o);

/* Defaults: auto, top_k 100, scan 0.02, union, sinks 128, window 512, pages of 64, f32. */
eng_attn_params eng_attn_default(void);
/* Whether every field is zero (such a parameter set stands for the defaults). */
bool eng_attn_is_unset(const eng_attn_params *a);

/* Sets one option by key, each value checked against the option's kind and range (the one
 * message per kind, naming the key). From text (the command line, a string in JSON): a name for
 * enums, true|false|1|0 for booleans, a number otherwise. From a typed number (JSON): numbers,
 * booleans as 0 or 1; an enum takes names only. From a typed boolean: booleans only. Each returns
 * 0, or -1 with a one-line reason in err (unknown key, missing or bad value). */
int eng_attn_set(eng_attn_params *a, const char *key, const char *value, char *err, size_t errlen);
int eng_attn_set_num(eng_attn_params *a, const char *key, double v, char *err, size_t errlen);
int eng_attn_set_bool(eng_attn_params *a, const char *key, bool v, char *err, size_t errlen);
/* One command-line option: flag (argv[i]) and next (argv[i + 1], or NULL at the end). Returns
 * the arguments it used (1: a boolean flag, 2: flag and value), 0 when flag is no attention
 * flag, or -1 with a one-line reason in err ("--attn-top-k needs a value", "--attn: unknown
 * attention selector 'x' (...)"). */
int eng_attn_set_arg(eng_attn_params *a, const char *flag, const char *next, char *err, size_t errlen);
/* Checks a whole parameter set (as eng_seq_create_ex does): every field within its option's
 * range. 0, or -1 with the option's reason. */
int eng_attn_check(const eng_attn_params *a, char *err, size_t errlen);
/* Writes the --help lines of the attention flags, one per option in table order: the flag and
 * its value, then from column col what it does and its default; storage_note (or NULL) is
 * added to the storage options' notes ("server-wide"). */
void eng_attn_usage(FILE *f, int col, const char *storage_note);

typedef enum { ENG_DEVICE_CPU = 0, ENG_DEVICE_CUDA = 1 } eng_device;

typedef struct {
    int n_threads;     /* 0: OpenMP default */
    int chunk;         /* prefill tokens per forward chunk; 0: 256 (1024 on a GPU) */
    eng_device device; /* CUDA: the forward pass on the GPU when one is usable (kvseek built with
                        * CUDA=1 and a device present); otherwise the CPU, with one log line */
    double gpu_mem_gb; /* GPU memory budget for weights and buffers; 0: what is free */
    eng_attn_params attn; /* sequences' default; all-zero (eng_attn_is_unset) means eng_attn_default() */
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
    double out_err;         /* mean relative L2 error of their attention output against dense
                             * (measure_recall) */
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
 * model's attention parameters (eng_seq_create) or by attn (eng_seq_create_ex; copied).
 * NULL and a reason in err on bad parameters. */
eng_seq *eng_seq_create(const eng_model *m, int n_ctx, char *err, size_t errlen);
eng_seq *eng_seq_create_ex(const eng_model *m, int n_ctx, const eng_attn_params *attn,
                           char *err, size_t errlen);
void eng_seq_attn_stats(const eng_seq *s, eng_attn_stats *out);
/* Reconfigures an empty sequence (position 0) for the next request: selector, top_k, scan,
 * target, gqa, sinks, window and measure_recall from attn; its storage (page size, dtype,
 * memory limit) stays as created. 0, or -1 with a reason (bad parameters, not empty). */
int eng_seq_set_attn(eng_seq *s, const eng_attn_params *attn, char *err, size_t errlen);
/* attn with the selector "auto" resolved for model m (unchanged otherwise). */
eng_attn_params eng_attn_resolve(const eng_model *m, const eng_attn_params *attn);
/* The parameters the sequence now runs with. */
void eng_seq_get_attn(const eng_seq *s, eng_attn_params *out);
void eng_seq_free(eng_seq *s); /* accepts NULL */
int eng_seq_pos(const eng_seq *s);      /* tokens already in the cache */
int eng_seq_capacity(const eng_seq *s);
void eng_seq_reset(eng_seq *s);         /* forget all tokens and statistics */
size_t eng_seq_bytes(const eng_seq *s); /* KV (and index) memory held */

/* The attention trace: which positions the rows that produce tokens read, and with what weight.
 * While on, every row of the sequence at a position >= from adds, at each global layer and for
 * each query head, the softmax weight of every key it attended (sinks, window, selected ids, a
 * tail sample at its weight; an estimate of unselected keys has no positions and adds nothing)
 * to the bucket pos / bucket_tokens of that key (the last bucket takes any position past the
 * others). The weights are recomputed from the plan the row ran, so the trace observes the
 * attention and never changes it; off, it costs one branch per (row, layer, KV head). Rows of
 * the CPU executor are traced; on the GPU, only the decode rows of a sparse selector (whose
 * queries come to the host for selection).
 * n_buckets 1..ENG_TRACE_MAX_BUCKETS; 0 turns it off (as eng_seq_reset does). 0, or -1 with a
 * reason. */
#define ENG_TRACE_MAX_BUCKETS 1024
int eng_seq_trace(eng_seq *s, int64_t from, int64_t bucket_tokens, int n_buckets, char *err, size_t errlen);
/* The mass added since the last take, averaged over the (row, global layer, query head)
 * triples traced (so it sums to at most 1 when one row was traced), into out[n_buckets]; the
 * accumulators restart at zero. Returns the number of rows traced since the last take (0: out
 * is all zero). */
int eng_seq_trace_take(eng_seq *s, float *out);

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


/* ---- forks, failures ----------------------------------------------------------------------
 * A forked sequence starts where its parent is: it shares the parent's KV pages read-only
 * (copying only the partial last page and the sliding-window rings) and takes its own selector
 * (attn; NULL: the parent's), so one prefill serves several selectors or samples. Its selector
 * builds from the parent's prefill queries: a parent whose forks may take a selector that learns
 * from queries (retrieval, centroids) calls eng_seq_keep_queries before its prefill. The parent
 * may go on decoding, be reset or freed: its pages stay until the last fork lets them go. A
 * sequence on a registered context cannot be forked. NULL and a reason on failure. */
eng_seq *eng_seq_fork(eng_seq *parent, const eng_attn_params *attn, char *err, size_t errlen);
int eng_seq_keep_queries(eng_seq *s, char *err, size_t errlen); /* only while empty */
/* Makes the empty sequence s (configured: its own selector) start with the first n tokens of
 * src, sharing src's pages read-only as a fork does; a prefix cache starts a request from a
 * cached prompt this way. A selector that learns from queries (retrieval, centroids) continues
 * only the whole of src (n == eng_seq_pos(src)), whose observed queries it takes. Storage
 * (page size, dtype) must match. 0, or -1 with a reason and s left empty. */
int eng_seq_continue(eng_seq *s, eng_seq *src, int n, char *err, size_t errlen);
/* Gives back the KV pages an empty (reset) sequence keeps for reuse. */
void eng_seq_trim(eng_seq *s);
/* KV bytes one more token adds to the sequence (its global layers), and in *fixed (may be NULL)
 * what it holds whatever its length (the local layers' rings, a partial page per layer). */
size_t eng_seq_token_bytes(const eng_seq *s, size_t *fixed);

/* Why the sequence is unusable (a forward step failed on it: a selector, the KV store, memory),
 * or NULL. A failed sequence is refused by eng_forward_batch until eng_seq_reset. */
const char *eng_seq_error(const eng_seq *s);

/* eng_forward_batch's status when some sequences failed during the pass (each has
 * eng_seq_error; err holds the first reason): the other rows ran and their logits are valid. */
enum { ENG_FORWARD_SEQ_FAILED = -2 };

/* Why the model's device is unusable (a CUDA error that leaves the context broken), or NULL;
 * from then on every forward pass fails at once and the server answers 503. */
const char *eng_model_failed(const eng_model *m);

/* Test-only fault injection: the nth call (1-based, counted from now) of `point` ("select":
 * a selector's select, "kv_append": a K/V append) fails as the real call would; 0 disarms.
 * Also read once from the environment at model load: KVSEEK_FAULT=point:n. */
void eng_fault_arm(const char *point, int64_t nth);

/* ---- for other engine modules (the context builder) --------------------------------------- */
const eng_model *eng_seq_model(const eng_seq *s);
kv_store *eng_seq_kv(eng_seq *s);
/* Records the queries of positions [from, to) during forward passes (rows of n_head * head_dim
 * floats per layer; *n_rows of them recorded so far). */
int eng_seq_capture_queries(eng_seq *s, int64_t from, int64_t to, char *err, size_t errlen);
const float *eng_seq_captured(const eng_seq *s, int layer, int64_t *n_rows);
/* Starts an empty sequence with positions [0, n) of src, borrowed read-only; owner (may be NULL)
 * is released with release(owner) when the sequence lets the pages go (reset, free). With
 * fixed_lo >= 0, decode rows read [fixed_lo, fixed_hi) only through the selector and everything
 * outside it densely (a context's clustered range); fixed_lo < 0: the store's moving sinks /
 * window ranges apply. 0, or -1 with a reason. */
int eng_seq_adopt_prefix(eng_seq *s, const kv_store *src, int n, int64_t fixed_lo, int64_t fixed_hi,
                         void *owner, void (*release)(void *owner), char *err, size_t errlen);
/* Gives (layer, head) a prebuilt centroid structure when the selector can read one
 * (IDX_CAP_BIND); other selectors build their own after the request's prefill. */
int eng_seq_bind_cent(eng_seq *s, int layer, int head, const idx_cent *c, float threshold, int levels,
                      char *err, size_t errlen);
/* Marks the sequence failed with a reason (the first one sticks). */
void eng_seq_fail(eng_seq *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
