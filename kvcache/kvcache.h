/* The KV store of one sequence: per layer and KV head, K and V rows in pages (f32 or f16)
 * allocated as tokens arrive, counted against a memory limit; global layers keep a static set
 * plus an offloaded middle, local (sliding-window) layers a ring. */
#ifndef KVSEEK_KVCACHE_H
#define KVSEEK_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "attn_sparse.h"

/* Global layers keep every token: a static set (first n_sink and last n_window tokens) that is
 * always attended and an offloaded middle reachable through a selector; local layers keep a
 * ring of their last tokens and never grow.
 * Threading: appends and resets from one thread (the engine's); reads (views, rows, gathers)
 * from any number of threads between appends. */
typedef enum { KV_F32 = 0, KV_F16 = 1 } kv_dtype;

enum {
    KV_OK = 0,
    KV_ERR_PARAM = -1,  /* invalid parameters or arguments */
    KV_ERR_NOMEM = -2,  /* the allocator failed */
    KV_ERR_LIMIT = -3,  /* the store's memory limit would be exceeded */
    KV_ERR_FULL = -4,   /* position past max_tokens */
};

typedef struct kv_store kv_store;

typedef struct {
    int n_layer;          /* layers */
    int n_head_kv;        /* KV heads per layer */
    int head_dim;         /* K row length */
    int v_dim;            /* V row length */
    int max_tokens;       /* positions a global layer may hold (the context size); sizes the
                           * page tables once, so views stay valid while tokens are appended */
    int page_size;        /* tokens per page, a power of two (default 64) */
    kv_dtype dtype;       /* storage of K and V (default KV_F32); rows are read back as f32 */
    int n_sink;           /* static set of global layers: first n_sink tokens (default 128) */
    int n_window;         /* ... and last n_window tokens (default 512) */
    size_t max_bytes;     /* memory limit of this store, pages and tables; 0: none */
    const int *layer_window; /* (n_layer) or NULL. > 0: a local layer attending only its last
                           * layer_window[l] tokens, stored as a ring; 0: global layer. Copied. */
    int ring_slack;       /* rows a local layer is appended before they attend (the engine's
                           * prefill chunk): the ring keeps window + ring_slack - 1 tokens so the
                           * chunk's first row still finds its window (default 1) */
    /* Where pages and page tables live (the CUDA backend passes pinned host memory that the
     * device reads in place); NULL: aligned_alloc / free. page_alloc returns memory aligned to
     * at least 64 bytes, or NULL. */
    void *(*page_alloc)(size_t bytes);
    void (*page_free)(void *p);
} kv_params;

/* Defaults for the optional fields; the caller sets the shape (n_layer .. max_tokens). */
kv_params kv_params_default(void);

/* Creates an empty store. Returns KV_OK and *out, or a negative code and *out = NULL.
 * Nothing is allocated for tokens until they are appended. */
int kv_create(const kv_params *p, kv_store **out);
void kv_free(kv_store *s); /* accepts NULL */

/* Status text of a code, and the detailed message of this store's last failure ("" if none). */
const char *kv_strerror(int code);
const char *kv_last_error(const kv_store *s);

/* Makes positions [0, n_total) fit in every layer (allocates the missing pages), or fails with
 * KV_ERR_LIMIT / KV_ERR_FULL / KV_ERR_NOMEM and a message, leaving the store as it was. The
 * engine calls it before a chunk so that the chunk's appends cannot fail half-way. */
int kv_reserve(kv_store *s, int64_t n_total);

/* Appends n tokens to one layer: k (n, n_head_kv, head_dim) and v (n, n_head_kv, v_dim), the
 * layout of the engine's projections; positions kv_n_tokens(s, layer) onwards. Pages missing
 * are allocated (as kv_reserve); on error nothing is appended. Local layers overwrite the
 * oldest ring slots. */
int kv_append(kv_store *s, int layer, const float *k, const float *v, int n);

/* Changes the static set (sinks, window) of global layers; only on an empty store (KV_ERR_PARAM
 * otherwise), as the ranges of held tokens would move. */
int kv_set_static(kv_store *s, int n_sink, int n_window);

/* ---- sharing a read-only prefix (registered contexts) ----
 * A context's store is filled once and then only read; sequences on it borrow its whole pages
 * of global layers (no copy, not counted against their limit) and copy the rest (the partial
 * last page and the rings of local layers), then append their own tokens after it. The source
 * must outlive the borrowers' use (until their kv_reset or kv_free): the caller refcounts. */

/* Makes dst (every layer empty) hold positions [0, n) of src: same shape, page size, dtype and
 * layer windows; src must hold them (its rings at least as long as dst's). On error dst is
 * left empty. */
int kv_share_prefix(kv_store *dst, const kv_store *src, int64_t n);

/* For loading a persisted store: makes a fresh layer (nothing appended, nothing allocated) hold
 * n_tok tokens in the given pages, which it borrows (never writes, frees nor counts): for a
 * global layer ceil(n_tok / page_size) pages, for a ring the ring's pages (fewer while n_tok is
 * shorter than the ring) in the ring's layout. The pages must outlive the store. */
int kv_adopt(kv_store *s, int layer, void *const *pages, int64_t n_pages, int64_t n_tok);

/* Bytes of one page (all KV heads of a layer, K then V, 64-byte aligned), and the pages a layer
 * uses now, for persisting a store: a global layer's ceil(n_tok / page_size), a ring's pages. */
size_t kv_page_bytes(const kv_store *s);
int kv_layer_pages(const kv_store *s, int layer, const void *const **pages, int64_t *n_pages);

/* Forgets every token; owned pages stay allocated (and counted) for reuse, borrowed ones are
 * released. */
void kv_reset(kv_store *s);
int64_t kv_layer_slots(const kv_store *s, int layer); /* page table length (a ring: its pages) */
/* Frees the owned pages that no held token uses (those kv_reset keeps for reuse): an idle
 * store gives its memory back. */
void kv_trim(kv_store *s);

int64_t kv_n_tokens(const kv_store *s, int layer); /* tokens appended to the layer */
size_t kv_bytes(const kv_store *s);                /* memory held, as counted against the limit */
/* Memory held by all the stores of the process together (each page counted once, by the store
 * that allocated it, for as long as it lives): what a process-wide budget is checked against. */
size_t kv_bytes_total(void);
const kv_params *kv_get_params(const kv_store *s); /* layer_window points to the store's copy */
int kv_layer_window(const kv_store *s, int layer);  /* 0: global layer */

/* The parts of the positions [0, n) a row at position n - 1 attends on a layer.
 * Global layer: sinks [0, sink_hi), offloaded [off_lo, off_hi) (the selector's candidates),
 * recent window [win_lo, n); when n <= n_sink + n_window everything is static and the
 * offloaded range is empty (off_lo == off_hi == sink_hi == win_lo).
 * Local layer: sink and offloaded ranges empty (all 0), window [max(0, n - W), n). */
typedef struct {
    int64_t sink_hi;
    int64_t off_lo, off_hi;
    int64_t win_lo, win_hi;
} kv_ranges;
kv_ranges kv_ranges_of(const kv_store *s, int layer, int64_t n);

/* The plain description of one (layer, KV head) the attention kernels read. It stays valid
 * until kv_free (page tables never move); rows are only meaningful at positions the layer
 * holds (a global layer: < kv_n_tokens; a ring: the last ring tokens). */
int kv_view(const kv_store *s, int layer, int head, attn_kv_view *out);

/* Pointer to one stored K / V row (f32 or f16 per kv_get_params()->dtype), NULL when the
 * position is not held (past the end, or overwritten in a ring). */
const void *kv_k_row(const kv_store *s, int layer, int head, int64_t pos);
const void *kv_v_row(const kv_store *s, int layer, int head, int64_t pos);

/* Copies rows into caller buffers as f32: the positions ids[0..n), or [lo, hi) for the range
 * form. k_out (n, head_dim) and v_out (n, v_dim); either may be NULL. KV_ERR_PARAM (nothing
 * promised about the buffers) when a position is not held. */
int kv_gather(const kv_store *s, int layer, int head, const int32_t *ids, int64_t n,
              float *k_out, float *v_out);
int kv_gather_range(const kv_store *s, int layer, int head, int64_t lo, int64_t hi,
                    float *k_out, float *v_out);

#endif
