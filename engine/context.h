/* Registered fixed contexts (Squeezed Attention): a long shared prefix (a document, a code base)
 * is prefilled once, its keys clustered per (global layer, KV head) offline, and persisted; a
 * request on it borrows its KV pages read-only and, at decode, reads only the keys of the
 * clusters whose estimated attention mass passes a calibrated threshold. DESIGN.md has the method.
 *
 * Threading: an eng_ctx is immutable once built or loaded and refcounted: any number of
 * sequences on any threads may use it at once; the last eng_ctx_unref frees it. */
#ifndef KVSEEK_CONTEXT_H
#define KVSEEK_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "index.h"
#include "kvcache.h"
#include "model.h"

typedef struct eng_ctx eng_ctx;

typedef struct {
    float fine_frac;    /* fine centroids per clustered key (default 0.05) */
    float coarse_frac;  /* coarse centroids per key (default 0.01); 0: one level */
    int obs_tokens;     /* observation window: the last tokens whose queries calibrate (100) */
    float target;       /* default share of the clustered keys a decode step reads (0.03) */
    int n_sink;         /* first tokens always attended (default 128) */
    int n_tail;         /* last tokens of the context always attended (default 512) */
    int global_calib;   /* 1: one threshold for every (layer, head) from the key-weighted mean of
                         * their calibration curves (default: at equal reads it gave 0.508 vs
                         * 0.485 mass recall within the clustered keys on gemma-3 at 16K); 0: per
                         * (layer, head) */
} eng_ctx_params;

eng_ctx_params eng_ctx_params_default(void);

/* What a build cost and produced. */
typedef struct {
    int n_tokens;
    int64_t clustered_keys;  /* keys under centroids, over every (global layer, KV head) */
    int64_t n_fine, n_coarse;/* centroids, summed */
    double prefill_s;        /* when known (the builder measured it) */
    double cluster_s;        /* k-means + calibration */
    double save_s;
    size_t file_bytes;       /* persisted size (after save or load) */
} eng_ctx_info;

/* Build, step 1: an empty sequence of capacity n_tokens to prefill the context into (densely),
 * recording the queries of its last obs_tokens positions for the calibration. NULL + reason. */
eng_seq *eng_ctx_prefill_seq(const eng_model *m, int n_tokens, const eng_ctx_params *p, char *err,
                             size_t errlen);

/* Build, step 2: from a sequence that holds exactly the n context tokens (step 1, prefilled),
 * clusters and calibrates. Takes ownership of seq (also on failure). Touches no model workspace,
 * so it may run on another thread than the forward passes. progress (may be NULL) is called with
 * the done share in [0, 1]. Refcount 1. */
eng_ctx *eng_ctx_create(const eng_model *m, eng_seq *seq, const int32_t *tokens, int n,
                        const eng_ctx_params *p, void (*progress)(void *ud, double done), void *ud,
                        char *err, size_t errlen);

/* Steps 1 and 2 with eng_forward (the command line; a server goes through its scheduler). */
eng_ctx *eng_ctx_build(eng_model *m, const int32_t *tokens, int n, const eng_ctx_params *p,
                       void (*progress)(void *ud, double done), void *ud, char *err, size_t errlen);

/* Persists into the directory dir (created; its parent must exist) atomically: everything is
 * written under a temporary name next to it, fsynced, and renamed, so a crash leaves either no
 * context or a whole one. One file, dir/context.kvctx, with a checksum and the model's
 * fingerprint. 0, or -1 with a reason (the old state, if any, is kept). */
int eng_ctx_save(eng_ctx *c, const char *dir, char *err, size_t errlen);

/* Maps dir/context.kvctx back (pages and centroids point into the mapping: loading is cheap).
 * Refuses, with a one-line reason, a file that is truncated, corrupted (checksum), of another
 * version, or built for another model. Refcount 1. */
eng_ctx *eng_ctx_load(const eng_model *m, const char *dir, char *err, size_t errlen);

void eng_ctx_ref(eng_ctx *c);
void eng_ctx_unref(eng_ctx *c); /* accepts NULL */

int eng_ctx_n_tokens(const eng_ctx *c);
const int32_t *eng_ctx_tokens(const eng_ctx *c);
void eng_ctx_get_info(const eng_ctx *c, eng_ctx_info *out);
/* Records the prefill time a builder measured (persisted with the context, for reports). */
void eng_ctx_set_prefill_s(eng_ctx *c, double s);
const eng_ctx_params *eng_ctx_get_params(const eng_ctx *c);

/* For the engine (model.c): the shared store, the clustered range [lo, hi) (sinks before, the
 * tail after), the centroids of a (global layer, head) (NULL for local layers), and the
 * threshold that reads ~target of the keys (target 0: the context's default). */
const kv_store *eng_ctx_kv(const eng_ctx *c);
void eng_ctx_range(const eng_ctx *c, int64_t *lo, int64_t *hi);
const idx_cent *eng_ctx_cent(const eng_ctx *c, int layer, int head);
float eng_ctx_threshold(const eng_ctx *c, int layer, int head, float target);

/* Starts an empty sequence with the context: it borrows the context's KV pages (holding a
 * reference until eng_seq_reset / eng_seq_free) and its position becomes the context's length;
 * the request's tokens follow. Its decode rows then read the context through the centroids
 * (selector window: sinks and tail only; dense: everything), with thresholds for the sequence's
 * attention target (eng_seq_set_attn before attaching). 0, or -1 with a reason. */
int eng_seq_attach_ctx(eng_seq *s, eng_ctx *c, char *err, size_t errlen);



/* The content address of a context: a hash of the model's fingerprint, the build parameters
 * and the tokens. The same text registered twice (on any replica) has the same id. */
uint64_t eng_ctx_content_hash(const eng_model *m, const eng_ctx_params *p, const int32_t *tokens, int n);

/* A 64-bit fingerprint of the model (shapes, tensor layout and samples of the weights): a
 * context built with one model is refused by another. */
uint64_t eng_model_fingerprint(const eng_model *m);

/* The checksum a context file of len bytes must carry: a hash of the whole file with its own
 * checksum field taken as 0. 0 when len is shorter than the header. (The loader checks it; a
 * fuzzer patching files uses it to get past that check.) */
uint64_t eng_ctx_file_checksum(const void *file, size_t len);

#endif
