/* The prefix cache (see pcache.h): an array of entries scanned by longest common prefix. A
 * server holds tens of entries, and comparing a 32K-token prompt against each is a few
 * microseconds per entry, so a radix tree would buy nothing measurable here. */
#include "pcache.h"

#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    eng_seq *seq;
    int32_t *tokens;
    int n;
    idx_kind kind;
    uint64_t used; /* tick of the last insert or hit */
} entry;

struct eng_pcache {
    int min_tokens;
    entry *e;
    int n, cap;
    uint64_t tick, evictions;
};

eng_pcache *eng_pcache_create(int min_tokens) {
    eng_pcache *c = calloc(1, sizeof *c);
    if (c) c->min_tokens = min_tokens > 1 ? min_tokens : 1;
    return c;
}

static void drop(eng_pcache *c, int i) {
    eng_seq_free(c->e[i].seq);
    free(c->e[i].tokens);
    c->e[i] = c->e[--c->n];
}

void eng_pcache_free(eng_pcache *c) {
    if (!c) return;
    while (c->n) drop(c, c->n - 1);
    free(c->e);
    free(c);
}

static int lcp(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

int eng_pcache_insert(eng_pcache *c, eng_seq *seq, const int32_t *tokens, int n) {
    if (c->n == c->cap) {
        int nc = c->cap ? 2 * c->cap : 16;
        entry *ne = realloc(c->e, sizeof *ne * nc);
        if (!ne) goto nomem;
        c->e = ne;
        c->cap = nc;
    }
    int32_t *t = malloc(sizeof *t * (n > 0 ? n : 1));
    if (!t) goto nomem;
    memcpy(t, tokens, sizeof *t * n);
    eng_attn_params a;
    eng_seq_get_attn(seq, &a);
    for (int i = c->n - 1; i >= 0; i--)
        if (c->e[i].n <= n && c->e[i].kind == a.selector && lcp(c->e[i].tokens, c->e[i].n, t, n) == c->e[i].n)
            drop(c, i);
    c->e[c->n++] = (entry){seq, t, n, a.selector, ++c->tick};
    return 0;
nomem:
    eng_seq_free(seq);
    return -1;
}

eng_seq *eng_pcache_lookup(eng_pcache *c, const int32_t *tokens, int n, int max_reuse, bool whole,
                           idx_kind kind, int *reuse) {
    int best = -1, best_r = 0;
    for (int i = 0; i < c->n; i++) {
        entry *e = &c->e[i];
        if (whole && (e->kind != kind || e->n > max_reuse)) continue;
        int l = lcp(e->tokens, e->n, tokens, n);
        if (whole && l < e->n) continue;
        int r = l < max_reuse ? l : max_reuse;
        /* ties go to the most recent entry: its pages are the likeliest still shared */
        if (r >= c->min_tokens && (r > best_r || (r == best_r && best >= 0 && e->used > c->e[best].used))) {
            best = i;
            best_r = r;
        }
    }
    if (best < 0) return NULL;
    c->e[best].used = ++c->tick;
    *reuse = best_r;
    return c->e[best].seq;
}

int eng_pcache_evict(eng_pcache *c, const eng_seq *keep) {
    int lru = -1;
    for (int i = 0; i < c->n; i++)
        if (c->e[i].seq != keep && (lru < 0 || c->e[i].used < c->e[lru].used)) lru = i;
    if (lru < 0) return 0;
    drop(c, lru);
    c->evictions++;
    return 1;
}

void eng_pcache_get_stats(const eng_pcache *c, eng_pcache_stats *st) {
    memset(st, 0, sizeof *st);
    st->entries = c->n;
    st->evictions = c->evictions;
    for (int i = 0; i < c->n; i++) {
        st->tokens += c->e[i].n;
        const size_t all = eng_seq_bytes(c->e[i].seq), kv = kv_bytes(eng_seq_kv(c->e[i].seq));
        st->own_bytes += all;
        st->index_bytes += all > kv ? all - kv : 0;
    }
}
