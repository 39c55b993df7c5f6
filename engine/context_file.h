/* The registered-context file, dir/context.kvctx: its header, its tables and the rule that
 * places its sections. engine/context.c writes and reads it through this one description (its
 * ctx_layout applies the rule for both); tests that patch files (tests/fuzz/fuzz_ctxfile.c) read
 * it here too. Not an API: a change of layout is a new CTX_VERSION.
 *
 * Layout: the header at offset 0, then, in this order, each section at the first
 * CTX_ALIGN-aligned offset after the previous one ends:
 *   tokens           n_tokens int32                       at off_tokens
 *   layer table      n_layer ctx_layer_rec                at off_layers
 *   each layer's KV  n_pages pages of the store's bytes   at that layer's record .off
 *   centroid table   n_layer * n_head_kv ctx_cent_rec     at off_cent
 *   each blob        len bytes (none when len is 0)       at that record's .off (0 when none)
 * and file_bytes, the end of the last section rounded up to CTX_ALIGN, is the file's length.
 * The gaps are zeros. Little-endian, as written; checksum covers the whole file with its own
 * field taken as 0.
 * defines: CTX_MAGIC, CTX_FILE, CTX_VERSION, CTX_ALIGN, ctx_header, ctx_layer_rec, ctx_cent_rec */
#ifndef KVSEEK_CONTEXT_FILE_H
#define KVSEEK_CONTEXT_FILE_H

#include <stdint.h>

#define CTX_MAGIC "KVSKCTX1"
#define CTX_FILE "context.kvctx"
enum { CTX_VERSION = 1, CTX_ALIGN = 64 };

typedef struct {
    char magic[8];
    uint32_t version, header_bytes;
    uint64_t fingerprint;
    uint64_t checksum;      /* of the whole file with this field zero */
    uint64_t file_bytes;
    int32_t n_tokens, n_layer, n_head_kv, head_dim, v_dim, page_size, dtype, ring_slack;
    int64_t ctx_lo, ctx_hi;
    float fine_frac, coarse_frac, target;
    int32_t obs_tokens, n_sink, n_tail, global_calib, pad0;
    double prefill_s, cluster_s;
    uint64_t off_tokens, off_layers, off_cent;
    int64_t n_fine, n_coarse, clustered;
    uint8_t reserved[256 - 8 - 8 - 8 * 3 - 4 * 8 - 16 - 12 - 20 - 16 - 24 - 24];
} ctx_header;
_Static_assert(sizeof(ctx_header) == 256, "the header is 256 bytes");

typedef struct {
    uint64_t off;      /* first page */
    int64_t n_pages, n_tok;
    int32_t window, pad;
} ctx_layer_rec;

typedef struct {
    uint64_t off, len; /* len 0: no centroids (a local layer) */
} ctx_cent_rec;

#endif
