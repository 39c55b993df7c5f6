/* Byte-level BPE ("gpt2" tokenizer model: Qwen2, Llama 3, GPT-2), as llama.cpp's
 * llm_tokenizer_bpe: the fragment is decoded to code points (an invalid byte becomes U+FFFD),
 * split into pre-tokens by the vocab's regex (implemented here by hand, no regex engine), each
 * pre-token's UTF-8 bytes are spelled in GPT-2's byte alphabet, and adjacent symbols are merged
 * by lowest merge rank (ties to the leftmost) until no pair is a merge. With ignore_merges
 * (Llama 3) a pre-token that already is a vocab token is emitted whole.
 *
 * The splitters follow llama.cpp's unicode_regex_split_custom_gpt2/_llama3 and are linear in the
 * text length. The merge table is a hash of the merge strings, keyed by (A, B). */
#include "tok_internal.h"
#include "unicode.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- merges ---- */

static uint64_t merge_hash(const char *a, size_t la, const char *b, size_t lb) {
    uint64_t h = tok_hash_bytes(TOK_HASH_INIT, a, la);
    h = (h ^ 0xff) * 0x100000001b3ull; /* separator: ("ab", "c") and ("a", "bc") differ */
    return tok_hash_bytes(h, b, lb);
}

int32_t tok_bpe_rank(const tok_vocab *v, const char *a, size_t la, const char *b, size_t lb) {
    if (!v->merge_slots) return -1;
    uint64_t h = merge_hash(a, la, b, lb) & v->merge_mask;
    for (uint32_t e; (e = v->merge_slots[h]) != 0; h = (h + 1) & v->merge_mask) {
        uint32_t m = e - 1;
        const char *ma = v->merge_arena + v->merge_off[m];
        if (v->merge_la[m] == la && v->merge_lb[m] == lb && memcmp(ma, a, la) == 0 &&
            memcmp(ma + la + 1, b, lb) == 0)
            return (int32_t)m;
    }
    return -1;
}

static void merge_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int tok_bpe_load_merges(tok_vocab *v, const gguf_ctx *g, char *err, size_t errlen) {
    static const char *key = "tokenizer.ggml.merges";
    gguf_type t;
    uint64_t n;
    if (!gguf_get_arr(g, key, &t, &n) || t != GGUF_TYPE_STRING) {
        merge_err(err, errlen, "tokenizer: %s is missing or not a string array (needed by gpt2)", key);
        return -1;
    }
    if (n >= INT32_MAX) {
        merge_err(err, errlen, "tokenizer: %llu merges is too many", (unsigned long long)n);
        return -1;
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if (!gguf_arr_str(g, key, i, &len) || len > UINT32_MAX / 2) {
            merge_err(err, errlen, "tokenizer: merge %llu is unreadable", (unsigned long long)i);
            return -1;
        }
        total += len + 1;
    }
    uint64_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    v->merge_arena = malloc(total ? total : 1);
    v->merge_off = malloc((n ? n : 1) * sizeof *v->merge_off);
    v->merge_la = malloc((n ? n : 1) * sizeof *v->merge_la);
    v->merge_lb = malloc((n ? n : 1) * sizeof *v->merge_lb);
    v->merge_slots = calloc(cap, sizeof *v->merge_slots);
    if (!v->merge_arena || !v->merge_off || !v->merge_la || !v->merge_lb || !v->merge_slots) {
        merge_err(err, errlen, "tokenizer: out of memory for %llu merges", (unsigned long long)n);
        return -1;
    }
    v->merge_mask = cap - 1;
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        const char *s = gguf_arr_str(g, key, i, &len);
        memcpy(v->merge_arena + pos, s, len);
        v->merge_arena[pos + len] = '\0';
        v->merge_off[i] = pos;
        /* "A B": split at the first space after index 0 (A may itself be a space) */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        uint32_t la = sp ? (uint32_t)(sp - s) : 0, lb = sp ? (uint32_t)(len - la - 1) : 0;
        v->merge_la[i] = la;
        v->merge_lb[i] = lb;
        pos += len + 1;
        if (!sp) continue; /* malformed entry: keeps its rank, can never apply */
        /* the first of duplicate pairs keeps its rank (llama.cpp's map emplace) */
        if (tok_bpe_rank(v, s, la, s + la + 1, lb) >= 0) continue;
        uint64_t h = merge_hash(s, la, s + la + 1, lb) & v->merge_mask;
        while (v->merge_slots[h]) h = (h + 1) & v->merge_mask;
        v->merge_slots[h] = (uint32_t)i + 1;
    }
    v->n_merges = (int32_t)n;
    return 0;
}

/* ---- pre-tokenizer split ---- */

typedef struct {
    const uint32_t *cpt;
    size_t n;
    uint8_t *cls;   /* (n) UNICODE_* bits */
    size_t *ends;   /* word end offsets (exclusive), in code points */
    size_t n_ends;
    size_t prev;    /* end of the last word */
} splitter;

#define OUT_OF_RANGE 0xFFFFFFFFu

static inline uint32_t cp_at(const splitter *s, size_t i) { return i < s->n ? s->cpt[i] : OUT_OF_RANGE; }
/* class bits of position i; 0x80 marks "in range" (llama.cpp's flags.as_uint() != 0) */
static inline unsigned cls_at(const splitter *s, size_t i) { return i < s->n ? s->cls[i] | 0x80u : 0; }
static inline bool is_l(unsigned f) { return f & UNICODE_LETTER; }
static inline bool is_n(unsigned f) { return f & UNICODE_NUMBER; }
static inline bool is_s(unsigned f) { return f & UNICODE_SPACE; }

static void add_word(splitter *s, size_t end) {
    if (end > s->prev) s->ends[s->n_ends++] = end;
    s->prev = end;
}

static inline uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Contractions at pos: length matched (2 or 3), 0 when none. */
static size_t contraction(const splitter *s, size_t pos, bool any_case) {
    if (cp_at(s, pos) != '\'' || pos + 1 >= s->n) return 0;
    uint32_t c1 = cp_at(s, pos + 1);
    if (any_case) c1 = ascii_lower(c1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (pos + 2 >= s->n) return 0;
    uint32_t c2 = cp_at(s, pos + 2);
    if (any_case) c2 = ascii_lower(c2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void split_gpt2(splitter *s) {
    for (size_t pos = 0; pos < s->n;) {
        uint32_t c = cp_at(s, pos);
        size_t k = contraction(s, pos, false);
        if (k) { pos += k; add_word(s, pos); continue; }
        unsigned f2 = c == ' ' ? cls_at(s, pos + 1) : cls_at(s, pos);
        if (is_l(f2) || is_n(f2) || (!is_s(f2) && f2)) {
            /* ' ?' then a run of the same kind as the character after the optional space */
            unsigned kind = is_l(f2) ? UNICODE_LETTER : is_n(f2) ? UNICODE_NUMBER : 0;
            pos += c == ' ';
            for (;;) {
                unsigned f = cls_at(s, pos);
                bool same = kind ? (f & kind) != 0 : (f && !is_s(f) && !is_l(f) && !is_n(f));
                if (!same) break;
                pos++;
            }
            add_word(s, pos);
            continue;
        }
        size_t ws = 0;
        while (is_s(cls_at(s, pos + ws))) ws++;
        if (ws > 1 && cp_at(s, pos + ws) != OUT_OF_RANGE) { pos += ws - 1; add_word(s, pos); continue; }
        if (ws > 0) { pos += ws; add_word(s, pos); continue; }
        add_word(s, ++pos); /* no alternative matches: the character alone */
    }
}

/* (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static void split_llama3(splitter *s, size_t max_digits) {
    for (size_t pos = 0; pos < s->n;) {
        uint32_t c = cp_at(s, pos);
        unsigned f = cls_at(s, pos);
        size_t k = contraction(s, pos, true);
        if (k) { pos += k; add_word(s, pos); continue; }
        /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        if (!(c == '\r' || c == '\n' || is_n(f)) && (is_l(f) || is_l(cls_at(s, pos + 1)))) {
            pos++;
            while (is_l(cls_at(s, pos))) pos++;
            add_word(s, pos);
            continue;
        }
        /* \p{N}{1,max_digits} */
        if (is_n(f)) {
            size_t start = pos;
            while (is_n(cls_at(s, pos))) {
                if (++pos - start >= max_digits) { add_word(s, pos); start = pos; }
            }
            add_word(s, pos);
            continue;
        }
        /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        unsigned f2 = c == ' ' ? cls_at(s, pos + 1) : f;
        if (!(is_s(f2) || is_l(f2) || is_n(f2)) && f) {
            pos += c == ' ';
            while (!(is_s(f2) || is_l(f2) || is_n(f2)) && f2) f2 = cls_at(s, ++pos);
            uint32_t c2 = cp_at(s, pos);
            while (c2 == '\r' || c2 == '\n') c2 = cp_at(s, ++pos);
            add_word(s, pos);
            continue;
        }
        size_t ws = 0, last_rn = 0;
        while (is_s(cls_at(s, pos + ws))) {
            uint32_t c2 = cp_at(s, pos + ws);
            if (c2 == '\r' || c2 == '\n') last_rn = pos + ws + 1;
            ws++;
        }
        if (last_rn > 0) { pos = last_rn; add_word(s, pos); continue; }  /* \s*[\r\n]+ */
        if (ws > 1 && cp_at(s, pos + ws) != OUT_OF_RANGE) {               /* \s+(?!\S) */
            pos += ws - 1;
            add_word(s, pos);
            continue;
        }
        if (ws > 0) { pos += ws; add_word(s, pos); continue; }             /* \s+ */
        add_word(s, ++pos);
    }
}

/* ---- merging ---- */

typedef struct {
    const tok_vocab *v;
    char *text;         /* the byte-level spelling of one pre-token */
    tok_symbol *sym;    /* its symbols: one per byte of the pre-token, in order */
    int32_t n_sym;
    tok_heap heap;
} bpe_session;

/* Spells the code points cpt[0..n) into s->text, each of their UTF-8 bytes as the character
 * that stands for it (one or two bytes, unicode_byte_to_cpt), which is also the symbol the
 * merge loop starts from. Returns the spelled length. */
static size_t spell_word(bpe_session *s, const uint32_t *cpt, size_t n) {
    size_t len = 0;
    s->n_sym = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t u[4];
        size_t ul = unicode_encode(cpt[i], u);
        for (size_t j = 0; j < ul; j++) {
            uint8_t sb[4];
            size_t sl = unicode_encode(unicode_byte_to_cpt(u[j]), sb);
            memcpy(s->text + len, sb, sl);
            s->sym[s->n_sym] = (tok_symbol){s->n_sym - 1, s->n_sym + 1, (uint32_t)len, (uint32_t)sl};
            s->n_sym++;
            len += sl;
        }
    }
    if (s->n_sym > 0) s->sym[s->n_sym - 1].next = -1;
    return len;
}

static void add_bigram(bpe_session *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const tok_symbol *l = &s->sym[left], *r = &s->sym[right];
    int32_t rank = tok_bpe_rank(s->v, s->text + l->start, l->n, s->text + r->start, r->n);
    if (rank < 0) return;
    tok_heap_push(&s->heap, (tok_bigram){(double)rank, left, right, l->n + r->n});
}

/* Merges the spelled pre-token text[0..n) (symbols from spell_word) and appends its ids. */
static void bpe_word(bpe_session *s, size_t n, tok_ids *out) {
    const tok_vocab *v = s->v;
    const char *text = s->text;
    if (v->ignore_merges) {
        int32_t id = tok_lookup(v, text, n);
        if (id >= 0) { tok_ids_push(out, id); return; }
    }
    tok_symbol *sym = s->sym;
    int32_t n_sym = s->n_sym;
    s->heap.n = 0;
    for (int32_t i = 1; i < n_sym; i++) add_bigram(s, i - 1, i);
    while (s->heap.n > 0 && !s->heap.oom) {
        tok_bigram b = tok_heap_pop(&s->heap);
        tok_symbol *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        add_bigram(s, l->prev, b.left);
        add_bigram(s, b.left, l->next);
    }
    for (int32_t i = n_sym > 0 ? 0 : -1; i != -1; i = sym[i].next) {
        int32_t id = tok_lookup(v, text + sym[i].start, sym[i].n);
        if (id >= 0) { tok_ids_push(out, id); continue; }
        /* not a token: each byte of the spelling on its own, when that is a token (llama.cpp) */
        for (uint32_t j = 0; j < sym[i].n; j++) {
            id = tok_lookup(v, text + sym[i].start + j, 1);
            if (id >= 0) tok_ids_push(out, id);
        }
    }
}

int tok_bpe_fragment(const tok_vocab *v, const char *text, size_t len, tok_ids *out) {
    int rc = TOK_ERR_NOMEM;
    if (len > UINT32_MAX / 8) return TOK_ERR_ARG; /* spelled words use 32-bit spans */
    uint32_t *cpt = malloc((len ? len : 1) * sizeof *cpt);
    splitter sp = {cpt, 0, malloc(len ? len : 1), malloc((len ? len : 1) * sizeof(size_t)), 0, 0};
    bpe_session s = {v, NULL, NULL, 0, {0}};
    if (!cpt || !sp.cls || !sp.ends) goto done;

    for (size_t off = 0; off < len;) {
        size_t adv;
        cpt[sp.n] = unicode_decode((const uint8_t *)text + off, len - off, &adv);
        sp.cls[sp.n] = (uint8_t)unicode_class(cpt[sp.n]);
        sp.n++;
        off += adv;
    }
    if (v->pre == TOK_PRE_GPT2) split_gpt2(&sp);
    else split_llama3(&sp, v->pre == TOK_PRE_QWEN2 ? 1 : 3);

    /* longest word in code points bounds the spelled buffer: 4 UTF-8 bytes x 2 bytes each */
    size_t longest = 0, start = 0;
    for (size_t w = 0; w < sp.n_ends; w++) {
        if (sp.ends[w] - start > longest) longest = sp.ends[w] - start;
        start = sp.ends[w];
    }
    s.text = malloc(longest * 8 + 1);
    s.sym = malloc((longest * 4 + 1) * sizeof *s.sym);
    if (!s.text || !s.sym) goto done;

    start = 0;
    for (size_t w = 0; w < sp.n_ends && !out->oom && !s.heap.oom; w++) {
        bpe_word(&s, spell_word(&s, cpt + start, sp.ends[w] - start), out);
        start = sp.ends[w];
    }
    rc = s.heap.oom ? TOK_ERR_NOMEM : 0;
done:
    free(cpt);
    free(sp.cls);
    free(sp.ends);
    free(s.text);
    free(s.sym);
    free(s.heap.v);
    return rc;
}
