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

typedef struct {
    int n_threads;     /* 0: OpenMP default */
    int chunk;         /* prefill tokens per forward chunk; 0: 256 */
} eng_model_params;

/* Loads the model at path. NULL and a one-line reason in err on failure. */
eng_model *eng_model_load(const char *path, const eng_model_params *p, char *err, size_t errlen);
void eng_model_free(eng_model *m); /* accepts NULL */

const eng_hparams *eng_model_hparams(const eng_model *m);
const tok_vocab *eng_model_vocab(const eng_model *m);
const gguf_ctx *eng_model_gguf(const eng_model *m);
bool eng_layer_is_local(const eng_model *m, int layer);

/* A sequence: its KV cache of capacity n_ctx tokens (f32, contiguous per layer). */
eng_seq *eng_seq_create(const eng_model *m, int n_ctx, char *err, size_t errlen);
void eng_seq_free(eng_seq *s); /* accepts NULL */
int eng_seq_pos(const eng_seq *s);      /* tokens already in the cache */
int eng_seq_capacity(const eng_seq *s);
void eng_seq_reset(eng_seq *s);         /* forget all tokens */
size_t eng_seq_bytes(const eng_seq *s); /* KV memory held */

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
