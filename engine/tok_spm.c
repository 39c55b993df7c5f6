/* SentencePiece BPE ("llama" tokenizer model: Gemma, Llama 2), as llama.cpp's
 * llm_tokenizer_spm: the fragment gets an optional leading space, every space becomes "▁"
 * (U+2581), the text is cut into UTF-8 characters (by the lead byte's announced length, so an
 * invalid sequence travels as one symbol), then the adjacent pair whose concatenation is the
 * vocab token with the highest score is merged, ties to the leftmost, until no pair is a token.
 * Each final symbol is its token, or (a character the vocab lacks) one byte token per byte.
 *
 * Cost: n symbols, at most 3n heap entries, each pair lookup hashes at most max_len bytes. */
#include "tok_internal.h"
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const tok_vocab *v;
    const char *text;
    tok_symbol *sym;
    tok_heap heap;
} spm_session;

static void try_add_bigram(spm_session *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const tok_symbol *l = &s->sym[left], *r = &s->sym[right];
    uint32_t size = l->n + r->n;
    int32_t id = tok_lookup(s->v, s->text + l->start, size);
    if (id < 0) return;
    /* key = -score: the heap pops the smallest key, i.e. the highest score */
    tok_heap_push(&s->heap, (tok_bigram){-(double)s->v->score[id], left, right, size});
}

static void emit_symbol(const spm_session *s, const tok_symbol *sym, tok_ids *out) {
    int32_t id = tok_lookup(s->v, s->text + sym->start, sym->n);
    if (id >= 0) {
        tok_ids_push(out, id);
        return;
    }
    /* Only single characters can miss the vocab (merges always form tokens): byte fallback. */
    for (uint32_t j = 0; j < sym->n; j++) {
        int32_t b = s->v->byte_id[(unsigned char)s->text[sym->start + j]];
        if (b < 0) b = s->v->unk;
        if (b >= 0) tok_ids_push(out, b);
    }
}

int tok_spm_fragment(const tok_vocab *v, const char *text, size_t len, tok_ids *out) {
    static const char space[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* "▁" */
    /* escaped length: each space (and the prefix) becomes the 3 bytes of "▁" */
    size_t n_spaces = 0;
    for (size_t i = 0; i < len; i++) n_spaces += text[i] == ' ';
    size_t n = len + 2 * n_spaces + (v->add_space_prefix ? 3 : 0);
    if (n > UINT32_MAX / 2) return TOK_ERR_ARG; /* symbol spans are 32-bit */
    int rc = TOK_ERR_NOMEM;
    char *buf = malloc(n ? n : 1);
    tok_symbol *sym = malloc((n ? n : 1) * sizeof *sym);
    spm_session s = {v, buf, sym, {0}};
    if (!buf || !sym) goto done;

    /* escaped text: optional prefix space, then every space as "▁" */
    size_t w = 0;
    if (v->add_space_prefix) { memcpy(buf, space, 3); w = 3; }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(buf + w, space, 3); w += 3; }
        else buf[w++] = text[i];
    }

    int32_t n_sym = 0;
    for (size_t off = 0; off < w;) {
        size_t cl = unicode_len_utf8((uint8_t)buf[off]);
        if (cl > w - off) cl = w - off;
        sym[n_sym] = (tok_symbol){n_sym - 1, off + cl == w ? -1 : n_sym + 1, (uint32_t)off, (uint32_t)cl};
        n_sym++;
        off += cl;
    }
    for (int32_t i = 1; i < n_sym; i++) try_add_bigram(&s, i - 1, i);

    while (s.heap.n > 0 && !s.heap.oom) {
        tok_bigram b = tok_heap_pop(&s.heap);
        tok_symbol *l = &sym[b.left], *r = &sym[b.right];
        /* stale: one side was merged away or grew since the pair was queued */
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        try_add_bigram(&s, l->prev, b.left);
        try_add_bigram(&s, b.left, l->next);
    }
    if (s.heap.oom) goto done;

    for (int32_t i = n_sym > 0 ? 0 : -1; i != -1; i = sym[i].next) emit_symbol(&s, &sym[i], out);
    rc = 0;
done:
    free(buf);
    free(sym);
    free(s.heap.v);
    return rc;
}
