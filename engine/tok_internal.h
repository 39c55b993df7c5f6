/* Shared between tok.c (loading, special-token split, decoding), tok_spm.c (SentencePiece BPE)
 * and tok_bpe.c (byte-level BPE). Not a public header. */
#ifndef KVSEEK_TOK_INTERNAL_H
#define KVSEEK_TOK_INTERNAL_H

#include "tok.h"

/* Byte-level pre-tokenizer regexes (see tok_bpe.c). */
typedef enum {
    TOK_PRE_GPT2 = 0,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    TOK_PRE_LLAMA3 = 1, /* (?:'[sS]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|... */
    TOK_PRE_QWEN2 = 2,  /* as LLAMA3 with \p{N} (one digit per piece) */
} tok_pre;

/* Open-addressing hash set of strings; slots hold index + 1 (0 = empty). */
typedef struct {
    uint32_t *slots;
    uint64_t mask; /* capacity - 1 (capacity a power of two) */
} tok_map;

/* Growable list of token ids that records allocation failure instead of returning it. */
typedef struct {
    int32_t *v;
    size_t n, cap;
    int oom;
} tok_ids;

struct tok_vocab {
    tok_model model;
    int32_t n;               /* vocabulary size */
    char *arena;             /* every token's text, each followed by a NUL */
    uint64_t *off;           /* (n) offset of token i's text in arena */
    uint32_t *len;           /* (n) byte length of token i's text */
    float *score;            /* (n) SentencePiece score (0 when the file has none) */
    uint8_t *type;           /* (n) tok_type */
    uint8_t *eog;            /* (n) 1 for end-of-generation tokens */
    tok_map map;             /* text -> id; on duplicate texts the highest id wins (as llama.cpp) */
    uint32_t max_len;        /* longest token text, bytes */

    int32_t bos, eos, unk, pad, eot, eom; /* -1 when none */
    bool add_bos, add_eos, add_space_prefix;
    int32_t byte_id[256];    /* SPM: id of "<0xXX>" (or of the one-byte string), -1 when none */

    /* Special tokens (CONTROL, USER_DEFINED, UNKNOWN), split out of text before tokenization. */
    int32_t n_special;
    int32_t *special;        /* (n_special) ids */
    uint64_t *special_hash;  /* (n_special) polynomial hash of each text (see tok.c) */
    uint32_t *special_slots; /* hash table over special_hash: index + 1, 0 empty */
    uint64_t special_mask;
    int32_t n_special_len;
    uint32_t *special_len;   /* (n_special_len) distinct text lengths, longest first */
    uint64_t (*special_first)[4]; /* (n_special_len) bitmap of first bytes per length */
    uint64_t (*special_last)[4];  /* (n_special_len) bitmap of last bytes per length */

    /* Byte-level BPE */
    tok_pre pre;
    bool ignore_merges;      /* llama3: a pre-token that is a vocab token is emitted whole */
    int32_t n_merges;
    char *merge_arena;       /* copies of the merge strings "A B", NUL-separated */
    uint64_t *merge_off;     /* (n_merges) offset of A in merge_arena */
    uint32_t *merge_la, *merge_lb; /* (n_merges) lengths of A and B; B follows A and a space */
    uint32_t *merge_slots;   /* hash (A, B) -> merge index + 1 */
    uint64_t merge_mask;
};

/* Token text and id lookup. */
static inline const char *tok_str(const tok_vocab *v, int32_t id) { return v->arena + v->off[id]; }
int32_t tok_lookup(const tok_vocab *v, const char *s, size_t n);

/* Appends one id; sets ids->oom on allocation failure. */
void tok_ids_push(tok_ids *ids, int32_t id);

/* Tokenize one fragment of raw text (no special tokens in it) and append the ids.
 * Both return 0 or a negative TOK_ERR_* code. */
int tok_spm_fragment(const tok_vocab *v, const char *text, size_t len, tok_ids *out);
int tok_bpe_fragment(const tok_vocab *v, const char *text, size_t len, tok_ids *out);

/* BPE merge table (tok_bpe.c): builds it from tokenizer.ggml.merges; error text into err. */
int tok_bpe_load_merges(tok_vocab *v, const gguf_ctx *g, char *err, size_t errlen);
/* Rank of merging strings a and b, -1 when they are not a merge. */
int32_t tok_bpe_rank(const tok_vocab *v, const char *a, size_t la, const char *b, size_t lb);

/* Binary heap of (key, left) pairs used by both merge loops: pops the smallest key, ties to the
 * smallest left index. SPM stores -score as key, BPE the rank. */
typedef struct {
    double key;
    int32_t left, right;
    uint32_t size;           /* combined byte length when pushed: detects stale entries */
} tok_bigram;

typedef struct {
    tok_bigram *v;
    size_t n, cap;
    int oom;
} tok_heap;

void tok_heap_push(tok_heap *h, tok_bigram b);
tok_bigram tok_heap_pop(tok_heap *h);

/* Symbols of the merge loops: a doubly linked list over spans of one text buffer. */
typedef struct {
    int32_t prev, next;
    uint32_t start, n;       /* byte span in the buffer; n == 0 once merged into its left */
} tok_symbol;

/* FNV-1a over bytes, continued from h. */
static inline uint64_t tok_hash_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ull; }
    return h;
}
#define TOK_HASH_INIT 0xcbf29ce484222325ull

#endif
