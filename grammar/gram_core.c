/* The grammar builder, the compiled grammar, the vocabulary trie and the matcher. A state is a
 * set of parser stacks (a pushdown automaton over bytes, as in llama.cpp's grammar sampler);
 * stack frames are interned (pos, parent) pairs, so equal stacks are equal indices, and the
 * sets reached are memoised as a lazy DFA: advancing by a byte is a table lookup once seen, and
 * the token mask of a set is computed once by one walk over the trie and then copied. */
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "gram_int.h"

const char *gram_strerror(int rc) {
    switch (rc) {
    case GRAM_OK: return "ok";
    case GRAM_ERR_NOMEM: return "out of memory";
    case GRAM_ERR_ARG: return "bad argument";
    case GRAM_ERR_REJECT: return "not allowed by the grammar";
    default: return "unknown error";
    }
}

static void *grow(void *p, int *cap, int need, size_t elsize) {
    if (need <= *cap) return p;
    int c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    void *q = realloc(p, (size_t)c * elsize);
    if (q) *cap = c;
    return q;
}

/* ---------------- builder ---------------- */

void gb_init(gbuild *b, char *err, size_t errlen) {
    memset(b, 0, sizeof *b);
    b->err = err;
    b->errlen = errlen;
    b->r_value = b->r_object = b->r_string = b->r_char = b->r_ws = b->r_wsi = -1;
    if (err && errlen) err[0] = 0;
}

void gb_fail(gbuild *b, const char *fmt, ...) {
    if (b->failed) return;
    b->failed = true;
    if (b->err && b->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->err, b->errlen, fmt, ap);
        va_end(ap);
    }
}

void sq_free(gseq *s) { free(s->v); s->v = NULL; s->n = s->cap = 0; }

void gb_free(gbuild *b) {
    for (int r = 0; r < b->n_rules; r++) {
        for (int a = 0; a < b->rules[r].n; a++) sq_free(&b->rules[r].alts[a]);
        free(b->rules[r].alts);
    }
    free(b->rules);
    free(b->cs);
    free(b->cs_ht);
    b->rules = NULL; b->cs = NULL; b->cs_ht = NULL;
    b->n_rules = b->n_cs = 0;
}

void sq_push(gbuild *b, gseq *s, uint32_t el) {
    if (b->failed) return;
    if (++b->n_elems > GB_MAX_ELEMS) { gb_fail(b, "grammar too large"); return; }
    uint32_t *v = grow(s->v, &s->cap, s->n + 1, sizeof *v);
    if (!v) { gb_fail(b, "out of memory"); return; }
    s->v = v;
    s->v[s->n++] = el;
}

void sq_cat(gbuild *b, gseq *s, const gseq *x) { for (int i = 0; i < x->n; i++) sq_push(b, s, x->v[i]); }

static uint64_t cs_hash(const gram_cs *c) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 4; i++) h = (h ^ c->w[i]) * 0x100000001b3ull, h ^= h >> 29;
    return h;
}

void sq_cs(gbuild *b, gseq *s, const gram_cs *c) {
    if (b->failed) return;
    if (b->n_cs * 2 >= b->cs_htcap) {
        int nc = b->cs_htcap ? b->cs_htcap * 2 : 256;
        uint32_t *ht = calloc((size_t)nc, sizeof *ht);
        if (!ht) { gb_fail(b, "out of memory"); return; }
        for (int i = 0; i < b->n_cs; i++) {
            uint64_t h = cs_hash(&b->cs[i]) & (uint64_t)(nc - 1);
            while (ht[h]) h = (h + 1) & (uint64_t)(nc - 1);
            ht[h] = (uint32_t)i + 1;
        }
        free(b->cs_ht);
        b->cs_ht = ht;
        b->cs_htcap = nc;
    }
    uint64_t h = cs_hash(c) & (uint64_t)(b->cs_htcap - 1);
    while (b->cs_ht[h]) {
        if (!memcmp(&b->cs[b->cs_ht[h] - 1], c, sizeof *c)) { sq_push(b, s, EL_MAKE(EL_CS, b->cs_ht[h] - 1)); return; }
        h = (h + 1) & (uint64_t)(b->cs_htcap - 1);
    }
    gram_cs *n = grow(b->cs, &b->cap_cs, b->n_cs + 1, sizeof *n);
    if (!n) { gb_fail(b, "out of memory"); return; }
    b->cs = n;
    b->cs[b->n_cs] = *c;
    b->cs_ht[h] = (uint32_t)++b->n_cs;
    sq_push(b, s, EL_MAKE(EL_CS, b->n_cs - 1));
}

void sq_byte(gbuild *b, gseq *s, int byte) {
    gram_cs c = {{0}};
    cs_add(&c, byte & 255);
    sq_cs(b, s, &c);
}

void sq_lit(gbuild *b, gseq *s, const char *str, size_t n) { for (size_t i = 0; i < n; i++) sq_byte(b, s, (unsigned char)str[i]); }
void sq_ref(gbuild *b, gseq *s, int rule) { if (rule >= 0) sq_push(b, s, EL_MAKE(EL_REF, rule)); }

int gb_rule(gbuild *b) {
    if (b->failed) return -1;
    if (b->n_rules >= GB_MAX_RULES) { gb_fail(b, "grammar too large"); return -1; }
    struct gb_rule *r = grow(b->rules, &b->cap_rules, b->n_rules + 1, sizeof *r);
    if (!r) { gb_fail(b, "out of memory"); return -1; }
    b->rules = r;
    memset(&b->rules[b->n_rules], 0, sizeof b->rules[0]);
    return b->n_rules++;
}

void gb_add_alt(gbuild *b, int rule, const gseq *s) {
    if (b->failed || rule < 0) return;
    struct gb_rule *r = &b->rules[rule];
    gseq *a = grow(r->alts, &r->cap, r->n + 1, sizeof *a);
    if (!a) { gb_fail(b, "out of memory"); return; }
    r->alts = a;
    gseq c = {0};
    sq_cat(b, &c, s);
    r->alts[r->n++] = c;
}

void sq_alts(gbuild *b, gseq *s, const gseq *alts, int n) {
    if (n == 1) { sq_cat(b, s, &alts[0]); return; }
    int r = gb_rule(b);
    for (int i = 0; i < n; i++) gb_add_alt(b, r, &alts[i]);
    sq_ref(b, s, r);
}

void sq_rep(gbuild *b, gseq *s, const gseq *x, int min, int max) {
    if (b->failed) return;
    if (min > GB_MAX_REP || max > GB_MAX_REP) { gb_fail(b, "repetition count over %d", GB_MAX_REP); return; }
    for (int i = 0; i < min; i++) sq_cat(b, s, x);
    gseq a = {0}, e = {0};
    if (max < 0) { /* S ::= x S | empty: the tail reference needs no stack frame */
        int r = gb_rule(b);
        sq_cat(b, &a, x);
        sq_ref(b, &a, r);
        gb_add_alt(b, r, &a);
        gb_add_alt(b, r, &e);
        sq_ref(b, s, r);
    } else if (max > min) { /* O_k ::= x O_{k-1} | empty */
        int prev = -1;
        for (int k = 0; k < max - min && !b->failed; k++) {
            int r = gb_rule(b);
            a.n = 0;
            sq_cat(b, &a, x);
            sq_ref(b, &a, prev);
            gb_add_alt(b, r, &a);
            gb_add_alt(b, r, &e);
            prev = r;
        }
        sq_ref(b, s, prev);
    }
    sq_free(&a);
}

/* ---------------- the compiled grammar ---------------- */

struct gram {
    uint32_t *el; /* every alternative's elements followed by EL_END */
    int n_el;
    gram_cs *cs;
    int n_cs;
    int n_rules;
    int *alt0;     /* rule r's alternatives are alt_start[alt0[r] .. alt0[r + 1]) */
    int *alt_start;
    int root;
    atomic_int refs; /* gram_ref holders besides the creator */
};

gram *gram_ref(gram *g) {
    if (g) atomic_fetch_add(&g->refs, 1);
    return g;
}

void gram_free(gram *g) {
    if (!g) return;
    if (atomic_fetch_sub(&g->refs, 1) > 0) return; /* others still hold it */
    free(g->el); free(g->cs); free(g->alt0); free(g->alt_start);
    free(g);
}

static bool cs_empty(const gram_cs *c) { return !(c->w[0] | c->w[1] | c->w[2] | c->w[3]); }

gram *gb_finish(gbuild *b, int root) {
    gram *g = NULL;
    char *nullable = NULL, *prod = NULL, *color = NULL;
    int *stack = NULL;
    int64_t *it = NULL; /* per rule on the DFS stack: alternative << 32 | element */
    if (b->failed) goto done;
    if (root < 0 || root >= b->n_rules) { gb_fail(b, "no grammar"); goto done; }
    const int nr = b->n_rules;
    nullable = calloc((size_t)nr, 1);
    prod = calloc((size_t)nr, 1);
    color = calloc((size_t)nr, 1);
    stack = malloc((size_t)nr * sizeof *stack);
    it = calloc((size_t)nr, sizeof *it);
    g = calloc(1, sizeof *g);
    if (!nullable || !prod || !color || !stack || !it || !g) { gb_fail(b, "out of memory"); goto done; }
    /* productive and nullable rules by fixpoint */
    for (bool changed = true; changed;) {
        changed = false;
        for (int r = 0; r < nr; r++) {
            for (int a = 0; a < b->rules[r].n; a++) {
                const gseq *s = &b->rules[r].alts[a];
                bool p = true, nl = true;
                for (int i = 0; i < s->n; i++) {
                    uint32_t e = s->v[i];
                    if (EL_KIND(e) == EL_CS) { nl = false; if (cs_empty(&b->cs[EL_ARG(e)])) p = false; }
                    else { if (!prod[EL_ARG(e)]) p = false; if (!nullable[EL_ARG(e)]) nl = false; }
                }
                if (p && !prod[r]) prod[r] = 1, changed = true;
                if (p && nl && !nullable[r]) nullable[r] = 1, changed = true;
            }
        }
    }
    if (!prod[root]) { gb_fail(b, "the grammar matches nothing"); goto done; }
    /* left recursion: a rule reaching itself through references preceded only by nullable
     * elements would expand forever; iterative DFS over those edges */
    for (int r0 = 0; r0 < nr; r0++) {
        if (color[r0]) continue;
        int sp = 0;
        stack[sp++] = r0;
        color[r0] = 1;
        it[r0] = 0;
        while (sp) {
            int r = stack[sp - 1], next = -1;
            while (next < 0) {
                int a = (int)(it[r] >> 32), i = (int)(it[r] & 0xffffffff);
                if (a >= b->rules[r].n) break;
                const gseq *s = &b->rules[r].alts[a];
                const int64_t next_alt = (int64_t)(a + 1) << 32;
                if (i >= s->n) { it[r] = next_alt; continue; }
                uint32_t e = s->v[i];
                if (EL_KIND(e) == EL_CS) { it[r] = next_alt; continue; }
                it[r]++;
                int t = (int)EL_ARG(e);
                if (!nullable[t]) it[r] = next_alt;
                if (color[t] == 1) { gb_fail(b, "a rule can repeat or recurse without writing anything (e.g. (a*)* or a $ref cycle)"); goto done; }
                if (!color[t]) next = t;
            }
            if (next < 0) { color[r] = 2; sp--; }
            else { color[next] = 1; it[next] = 0; stack[sp++] = next; }
        }
    }
    /* flatten, dropping alternatives that cannot match */
    long nel = 0, nalt = 0;
    for (int r = 0; r < nr; r++) for (int a = 0; a < b->rules[r].n; a++) nel += b->rules[r].alts[a].n + 1, nalt++;
    g->el = malloc((size_t)(nel + 1) * sizeof *g->el);
    g->alt0 = malloc((size_t)(nr + 1) * sizeof *g->alt0);
    g->alt_start = malloc((size_t)(nalt + 1) * sizeof *g->alt_start);
    if (!g->el || !g->alt0 || !g->alt_start) { gb_fail(b, "out of memory"); goto done; }
    int ne = 0, na = 0;
    for (int r = 0; r < nr; r++) {
        g->alt0[r] = na;
        for (int a = 0; a < b->rules[r].n; a++) {
            const gseq *s = &b->rules[r].alts[a];
            bool p = true;
            for (int i = 0; i < s->n; i++) {
                uint32_t e = s->v[i];
                if (EL_KIND(e) == EL_CS ? cs_empty(&b->cs[EL_ARG(e)]) : !prod[EL_ARG(e)]) p = false;
            }
            if (!p) continue;
            g->alt_start[na++] = ne;
            for (int i = 0; i < s->n; i++) g->el[ne++] = s->v[i];
            g->el[ne++] = EL_MAKE(EL_END, 0);
        }
    }
    g->alt0[nr] = na;
    g->el[ne] = EL_MAKE(EL_END, 0);
    g->n_el = ne;
    g->n_rules = nr;
    g->root = root;
    g->cs = b->cs;
    g->n_cs = b->n_cs;
    b->cs = NULL;
done:
    free(nullable); free(prod); free(color); free(stack); free(it);
    if (b->failed) { gram_free(g); g = NULL; }
    gb_free(b);
    return g;
}

/* ---------------- vocabulary trie ---------------- */

struct gram_vocab {
    int32_t n_vocab;
    int n_nodes;        /* trie nodes in preorder (the root is implicit) */
    uint8_t *byte;      /* the byte leading into the node */
    uint16_t *depth;    /* 1 for the root's children */
    int32_t *end;       /* one past the node's last descendant */
    int32_t *tok;       /* first token ending here, -1 when none */
    int32_t *tok_next;  /* next token with the same bytes, per token */
    int32_t *tok_node;  /* the node a token ends at, -1 for control tokens */
    int max_depth;
    int32_t *eog;
    int n_eog;
    char *bytes;        /* every piece, at off[id] */
    int64_t *off;
};

void gram_vocab_free(gram_vocab *v) {
    if (!v) return;
    free(v->byte); free(v->depth); free(v->end); free(v->tok); free(v->tok_next); free(v->tok_node);
    free(v->eog); free(v->bytes); free(v->off);
    free(v);
}
int32_t gram_vocab_n(const gram_vocab *v) { return v->n_vocab; }
size_t gram_mask_words(const gram_vocab *v) { return ((size_t)v->n_vocab + 31) / 32; }

static const gram_vocab *sort_vocab;
static int cmp_piece(const void *a, const void *b) {
    const gram_vocab *v = sort_vocab;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    int64_t lx = v->off[x + 1] - v->off[x], ly = v->off[y + 1] - v->off[y];
    int c = memcmp(v->bytes + v->off[x], v->bytes + v->off[y], (size_t)(lx < ly ? lx : ly));
    if (c) return c;
    return lx < ly ? -1 : lx > ly ? 1 : x - y;
}

gram_vocab *gram_vocab_create(int32_t n_vocab, const char *(*piece)(void *ud, int32_t id, int *len),
                              void *ud, const int32_t *eog_ids, int n_eog, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (n_vocab <= 0 || !piece || n_eog < 0 || (n_eog && !eog_ids)) {
        if (err) snprintf(err, errlen, "gram_vocab_create: bad arguments");
        return NULL;
    }
    gram_vocab *v = calloc(1, sizeof *v);
    int32_t *order = NULL;
    if (!v) goto nomem;
    v->n_vocab = n_vocab;
    v->off = malloc(((size_t)n_vocab + 1) * sizeof *v->off);
    v->tok_next = malloc((size_t)n_vocab * sizeof *v->tok_next);
    v->tok_node = malloc((size_t)n_vocab * sizeof *v->tok_node);
    order = malloc((size_t)n_vocab * sizeof *order);
    v->eog = malloc(((size_t)n_eog + 1) * sizeof *v->eog);
    if (!v->off || !v->tok_next || !v->tok_node || !order || !v->eog) goto nomem;
    size_t cap = 0, len = 0;
    int n_ord = 0;
    for (int32_t id = 0; id < n_vocab; id++) {
        int l = 0;
        const char *p = piece(ud, id, &l);
        v->off[id] = (int64_t)len;
        v->tok_next[id] = -1;
        v->tok_node[id] = -1;
        if (!p || l <= 0 || l > 65535) continue;
        if (len + (size_t)l > cap) {
            cap = (len + (size_t)l) * 2;
            char *nb = realloc(v->bytes, cap);
            if (!nb) goto nomem;
            v->bytes = nb;
        }
        memcpy(v->bytes + len, p, (size_t)l);
        len += (size_t)l;
        order[n_ord++] = id;
    }
    v->off[n_vocab] = (int64_t)len;
    for (int i = 0; i < n_eog; i++) {
        if (eog_ids[i] < 0 || eog_ids[i] >= n_vocab) {
            if (err) snprintf(err, errlen, "gram_vocab_create: EOG id %d out of range", eog_ids[i]);
            gram_vocab_free(v); free(order);
            return NULL;
        }
        v->eog[v->n_eog++] = eog_ids[i];
    }
    sort_vocab = v; /* qsort has no context argument in C11 */
    qsort(order, (size_t)n_ord, sizeof *order, cmp_piece);
    /* nodes: at most the total bytes */
    size_t maxn = len + 1;
    v->byte = malloc(maxn);
    v->depth = malloc(maxn * sizeof *v->depth);
    v->end = malloc(maxn * sizeof *v->end);
    v->tok = malloc(maxn * sizeof *v->tok);
    int32_t *path = malloc((65536 + 1) * sizeof *path);
    if (!v->byte || !v->depth || !v->end || !v->tok || !path) { free(path); goto nomem; }
    int depth = 0, n = 0;
    const char *prev = NULL;
    int64_t prevl = 0;
    for (int k = 0; k < n_ord; k++) {
        int32_t id = order[k];
        const char *p = v->bytes + v->off[id];
        int64_t l = v->off[id + 1] - v->off[id];
        int64_t c = 0;
        while (prev && c < l && c < prevl && p[c] == prev[c]) c++;
        while (depth > c) v->end[path[--depth]] = n; /* close nodes past the common prefix */
        for (; depth < l; depth++) {
            v->byte[n] = (uint8_t)p[depth];
            v->depth[n] = (uint16_t)(depth + 1);
            v->tok[n] = -1;
            path[depth] = n++;
        }
        int node = path[l - 1];
        v->tok_node[id] = node;
        if (v->tok[node] < 0) v->tok[node] = id;
        else { int32_t t = v->tok[node]; while (v->tok_next[t] >= 0) t = v->tok_next[t]; v->tok_next[t] = id; }
        if (l > v->max_depth) v->max_depth = (int)l;
        prev = p;
        prevl = l;
    }
    while (depth > 0) v->end[path[--depth]] = n;
    v->n_nodes = n;
    free(path);
    free(order);
    return v;
nomem:
    if (err) snprintf(err, errlen, "gram_vocab_create: out of memory");
    gram_vocab_free(v);
    free(order);
    return NULL;
}

/* ---------------- matcher ---------------- */

/* A stack frame: the element to match next and the frame below (0: the bottom). */
typedef struct { uint32_t pos, parent; } gnode;
enum { SET_ACC = 1 }; /* the set's closure reached the bottom: the text can end here */
/* Per state: masks cached up to 32 MiB (1,000 configurations of a 262K vocabulary); transition
 * rows (1 KiB each) kept for the first 8,192 sets, later ones recomputed on each use. */
enum { MASK_CACHE_BYTES = 32 << 20, DFA_MAX_SETS = 1 << 13 };

typedef struct { uint32_t off, n, flags; uint32_t hash; } gset;

struct gram_state {
    const gram *g;
    const gram_vocab *v;
    gnode *nd;          /* interned frames; [0] is the bottom */
    int n_nd, cap_nd;
    uint32_t *nd_ht;    /* frame index, 0 empty */
    uint32_t nd_htcap;
    uint32_t *mark, gen;
    int cap_mark;
    uint32_t *work;     /* closure worklist */
    int cap_work;
    /* the lazy DFA over sets of frames */
    uint32_t *pool;     /* set members */
    int n_pool, cap_pool;
    gset *sets;
    int n_sets, cap_sets;
    uint32_t *set_ht;   /* set index + 1 */
    uint32_t set_htcap;
    int32_t **trans;    /* per set: 256 targets, -2 unknown, -1 dead; NULL until used */
    uint32_t **mask;    /* per set: its token mask once computed */
    size_t mask_bytes;
    uint32_t *tmp;      /* members of a set being built */
    int cap_tmp;
    int32_t *walk;      /* set per trie depth */
    int cur;            /* current set */
    bool ended;
};

static uint32_t hash2(uint32_t a, uint32_t b) {
    uint64_t h = ((uint64_t)a << 32 | b) * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(h >> 32);
}

/* Interned frame (pos, parent); 0 when out of memory (the bottom is never a result). */
static uint32_t nd_intern(gram_state *s, uint32_t pos, uint32_t parent) {
    if ((uint32_t)(s->n_nd + 1) * 2 > s->nd_htcap) {
        uint32_t nc = s->nd_htcap ? s->nd_htcap * 2 : 1024;
        uint32_t *ht = calloc(nc, sizeof *ht);
        if (!ht) return 0;
        for (int i = 1; i < s->n_nd; i++) {
            uint32_t h = hash2(s->nd[i].pos, s->nd[i].parent) & (nc - 1);
            while (ht[h]) h = (h + 1) & (nc - 1);
            ht[h] = (uint32_t)i;
        }
        free(s->nd_ht);
        s->nd_ht = ht;
        s->nd_htcap = nc;
    }
    uint32_t h = hash2(pos, parent) & (s->nd_htcap - 1);
    for (uint32_t i; (i = s->nd_ht[h]); h = (h + 1) & (s->nd_htcap - 1))
        if (s->nd[i].pos == pos && s->nd[i].parent == parent) return i;
    gnode *nd = grow(s->nd, &s->cap_nd, s->n_nd + 1, sizeof *nd);
    if (!nd) return 0;
    s->nd = nd;
    const int old = s->cap_mark;
    uint32_t *mk = grow(s->mark, &s->cap_mark, s->cap_nd, sizeof *mk);
    if (!mk) return 0;
    if (s->cap_mark > old) memset(mk + old, 0, (size_t)(s->cap_mark - old) * sizeof *mk);
    s->mark = mk;
    s->nd[s->n_nd] = (gnode){pos, parent};
    s->nd_ht[h] = (uint32_t)s->n_nd;
    return (uint32_t)s->n_nd++;
}

static bool push_tmp(gram_state *s, int *n, uint32_t x) {
    uint32_t *t = grow(s->tmp, &s->cap_tmp, *n + 1, sizeof *t);
    if (!t) return false;
    s->tmp = t;
    s->tmp[(*n)++] = x;
    return true;
}
static bool push_work(gram_state *s, int *n, uint32_t x) {
    uint32_t *t = grow(s->work, &s->cap_work, *n + 1, sizeof *t);
    if (!t) return false;
    s->work = t;
    s->work[(*n)++] = x;
    return true;
}

/* Expands frame f until every stack's top is a byte set (members appended to tmp), noting in
 * flags when a stack empties. Each frame is visited once per generation (s->gen). */
static bool closure(gram_state *s, uint32_t f, int *n_tmp, uint32_t *flags) {
    const gram *g = s->g;
    int nw = 0;
    if (!push_work(s, &nw, f)) return false;
    while (nw) {
        uint32_t x = s->work[--nw];
        if (x == 0) { *flags |= SET_ACC; continue; }
        if (s->mark[x] == s->gen) continue;
        s->mark[x] = s->gen;
        gnode n = s->nd[x];
        uint32_t e = g->el[n.pos];
        if (EL_KIND(e) == EL_CS) {
            if (!push_tmp(s, n_tmp, x)) return false;
        } else if (EL_KIND(e) == EL_END) {
            if (!push_work(s, &nw, n.parent)) return false;
        } else {
            uint32_t r = EL_ARG(e);
            uint32_t cont = EL_KIND(g->el[n.pos + 1]) == EL_END ? n.parent : nd_intern(s, n.pos + 1, n.parent);
            if (!cont && EL_KIND(g->el[n.pos + 1]) != EL_END) return false;
            for (int a = g->alt0[r]; a < g->alt0[r + 1]; a++) {
                uint32_t c = nd_intern(s, (uint32_t)g->alt_start[a], cont);
                if (!c || !push_work(s, &nw, c)) return false;
            }
        }
    }
    return true;
}

static void next_gen(gram_state *s) {
    if (++s->gen == 0) { memset(s->mark, 0, (size_t)s->cap_mark * sizeof *s->mark); s->gen = 1; }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The set made of tmp[0..n) with flags: its index, or -1 when out of memory. */
static int set_intern(gram_state *s, int n, uint32_t flags) {
    if (n > 1) qsort(s->tmp, (size_t)n, sizeof *s->tmp, cmp_u32);
    uint32_t h = flags * 0x85ebca6bu;
    for (int i = 0; i < n; i++) h = (h ^ s->tmp[i]) * 0x9e3779b1u;
    if ((uint32_t)(s->n_sets + 1) * 2 > s->set_htcap) {
        uint32_t nc = s->set_htcap ? s->set_htcap * 2 : 256;
        uint32_t *ht = calloc(nc, sizeof *ht);
        if (!ht) return -1;
        for (int i = 0; i < s->n_sets; i++) {
            uint32_t k = s->sets[i].hash & (nc - 1);
            while (ht[k]) k = (k + 1) & (nc - 1);
            ht[k] = (uint32_t)i + 1;
        }
        free(s->set_ht);
        s->set_ht = ht;
        s->set_htcap = nc;
    }
    uint32_t k = h & (s->set_htcap - 1);
    for (uint32_t i; (i = s->set_ht[k]); k = (k + 1) & (s->set_htcap - 1)) {
        const gset *t = &s->sets[i - 1];
        if (t->hash == h && t->flags == flags && t->n == (uint32_t)n &&
            (!n || !memcmp(s->pool + t->off, s->tmp, (size_t)n * sizeof *s->tmp)))
            return (int)i - 1;
    }
    uint32_t *p = grow(s->pool, &s->cap_pool, s->n_pool + n, sizeof *p);
    if (!p && n) return -1;
    s->pool = p;
    gset *ss = grow(s->sets, &s->cap_sets, s->n_sets + 1, sizeof *ss);
    if (!ss) return -1;
    s->sets = ss;
    int cap = s->cap_sets;
    int32_t **tr = realloc(s->trans, (size_t)cap * sizeof *tr);
    if (!tr) return -1;
    s->trans = tr;
    uint32_t **mk = realloc(s->mask, (size_t)cap * sizeof *mk);
    if (!mk) return -1;
    s->mask = mk;
    if (n) memcpy(s->pool + s->n_pool, s->tmp, (size_t)n * sizeof *s->tmp);
    s->sets[s->n_sets] = (gset){(uint32_t)s->n_pool, (uint32_t)n, flags, h};
    s->trans[s->n_sets] = NULL;
    s->mask[s->n_sets] = NULL;
    s->n_pool += n;
    s->set_ht[k] = (uint32_t)s->n_sets + 1;
    return s->n_sets++;
}

#define STEP_NOMEM (-3)
/* The set after byte c from set id: -1 when no stack takes it, STEP_NOMEM when out of memory. */
static int step(gram_state *s, int id, int c) {
    if (s->trans[id] && s->trans[id][c] != -2) return s->trans[id][c];
    next_gen(s);
    int n = 0;
    uint32_t flags = 0;
    const gset st = s->sets[id];
    for (uint32_t i = 0; i < st.n; i++) {
        uint32_t x = s->pool[st.off + i];
        gnode nd = s->nd[x];
        if (!cs_has(&s->g->cs[EL_ARG(s->g->el[nd.pos])], c)) continue;
        uint32_t f = nd_intern(s, nd.pos + 1, nd.parent);
        if (!f || !closure(s, f, &n, &flags)) return STEP_NOMEM;
    }
    int t = (n == 0 && !flags) ? -1 : set_intern(s, n, flags);
    if (t == -1 && (n || flags)) return STEP_NOMEM;
    if (!s->trans[id] && s->n_sets <= DFA_MAX_SETS) {
        s->trans[id] = malloc(256 * sizeof **s->trans);
        if (s->trans[id]) for (int k = 0; k < 256; k++) s->trans[id][k] = -2;
    }
    if (s->trans[id]) s->trans[id][c] = t;
    return t;
}

gram_state *gram_state_new(const gram *g, const gram_vocab *v) {
    if (!g) return NULL;
    gram_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->g = g;
    s->v = v;
    s->nd = malloc(64 * sizeof *s->nd);
    s->mark = calloc(64, sizeof *s->mark);
    if (!s->nd || !s->mark) goto fail;
    s->cap_nd = s->cap_mark = 64;
    s->nd[0] = (gnode){0, 0};
    s->n_nd = 1;
    next_gen(s);
    int n = 0;
    uint32_t flags = 0;
    for (int a = g->alt0[g->root]; a < g->alt0[g->root + 1]; a++) {
        uint32_t f = nd_intern(s, (uint32_t)g->alt_start[a], 0);
        if (!f || !closure(s, f, &n, &flags)) goto fail;
    }
    s->cur = set_intern(s, n, flags);
    if (s->cur < 0) goto fail;
    return s;
fail:
    gram_state_free(s);
    return NULL;
}

void gram_state_free(gram_state *s) {
    if (!s) return;
    for (int i = 0; i < s->n_sets; i++) { free(s->trans[i]); free(s->mask[i]); }
    free(s->trans); free(s->mask); free(s->sets); free(s->set_ht); free(s->pool);
    free(s->nd); free(s->nd_ht); free(s->mark); free(s->work); free(s->tmp); free(s->walk);
    free(s);
}

static void *dup_mem(const void *p, size_t n) {
    if (!p || !n) return NULL;
    void *q = malloc(n);
    if (q) memcpy(q, p, n);
    return q;
}

gram_state *gram_state_clone(const gram_state *o) {
    if (!o) return NULL;
    gram_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    *s = *o;
    s->work = NULL; s->cap_work = 0; s->tmp = NULL; s->cap_tmp = 0; s->walk = NULL;
    s->nd = dup_mem(o->nd, (size_t)o->cap_nd * sizeof *o->nd);
    s->nd_ht = dup_mem(o->nd_ht, (size_t)o->nd_htcap * sizeof *o->nd_ht);
    s->mark = dup_mem(o->mark, (size_t)o->cap_mark * sizeof *o->mark);
    s->pool = dup_mem(o->pool, (size_t)o->cap_pool * sizeof *o->pool);
    s->sets = dup_mem(o->sets, (size_t)o->cap_sets * sizeof *o->sets);
    s->set_ht = dup_mem(o->set_ht, (size_t)o->set_htcap * sizeof *o->set_ht);
    s->trans = calloc((size_t)o->cap_sets, sizeof *s->trans);
    s->mask = calloc((size_t)o->cap_sets, sizeof *s->mask);
    s->mask_bytes = 0; /* masks are recomputed on demand rather than copied */
    bool ok = s->nd && s->nd_ht && s->mark && s->sets && s->set_ht && s->trans && s->mask &&
              (s->pool || !o->cap_pool);
    for (int i = 0; ok && i < o->n_sets; i++)
        if (o->trans[i] && !(s->trans[i] = dup_mem(o->trans[i], 256 * sizeof **o->trans))) ok = false;
    if (!ok) {
        if (!s->trans || !s->mask) { free(s->trans); free(s->mask); s->trans = NULL; s->mask = NULL; s->n_sets = 0; }
        gram_state_free(s);
        return NULL;
    }
    return s;
}

int gram_state_accept(gram_state *s, const void *bytes, size_t len) {
    if (!s || (!bytes && len)) return GRAM_ERR_ARG;
    if (s->ended) return len ? GRAM_ERR_REJECT : GRAM_OK;
    const uint8_t *p = bytes;
    int id = s->cur;
    for (size_t i = 0; i < len; i++) {
        id = step(s, id, p[i]);
        if (id == STEP_NOMEM) return GRAM_ERR_NOMEM;
        if (id < 0) return GRAM_ERR_REJECT;
    }
    s->cur = id;
    return GRAM_OK;
}

bool gram_state_can_end(const gram_state *s) { return s && !s->ended && (s->sets[s->cur].flags & SET_ACC); }
bool gram_state_must_end(const gram_state *s) { return gram_state_can_end(s) && s->sets[s->cur].n == 0; }
bool gram_state_ended(const gram_state *s) { return s && s->ended; }

static bool is_eog(const gram_vocab *v, int32_t id) {
    for (int i = 0; i < v->n_eog; i++) if (v->eog[i] == id) return true;
    return false;
}

int gram_state_accept_token(gram_state *s, int32_t id) {
    if (!s || !s->v || id < 0 || id >= s->v->n_vocab) return GRAM_ERR_ARG;
    const gram_vocab *v = s->v;
    if (is_eog(v, id)) {
        if (!gram_state_can_end(s)) return GRAM_ERR_REJECT;
        s->ended = true;
        return GRAM_OK;
    }
    if (v->tok_node[id] < 0) return GRAM_ERR_REJECT;
    return gram_state_accept(s, v->bytes + v->off[id], (size_t)(v->off[id + 1] - v->off[id]));
}

/* One walk over the trie in preorder: a subtree is skipped as soon as no stack takes its byte;
 * with the DFA memoised, each visited node costs one table lookup. */
static int compute_mask(gram_state *s, int id, uint32_t *m) {
    const gram_vocab *v = s->v;
    const size_t nw = gram_mask_words(v);
    memset(m, 0, nw * sizeof *m);
    if (!s->walk && !(s->walk = malloc(((size_t)v->max_depth + 1) * sizeof *s->walk))) return GRAM_ERR_NOMEM;
    s->walk[0] = id;
    for (int i = 0; i < v->n_nodes;) {
        int d = v->depth[i];
        int t = step(s, s->walk[d - 1], v->byte[i]);
        if (t == STEP_NOMEM) return GRAM_ERR_NOMEM;
        if (t < 0) { i = v->end[i]; continue; }
        for (int32_t k = v->tok[i]; k >= 0; k = v->tok_next[k]) m[k >> 5] |= 1u << (k & 31);
        if (s->sets[t].n == 0) { i = v->end[i]; continue; }
        s->walk[d] = t;
        i++;
    }
    if (s->sets[id].flags & SET_ACC)
        for (int i = 0; i < v->n_eog; i++) m[v->eog[i] >> 5] |= 1u << (v->eog[i] & 31);
    return GRAM_OK;
}

int gram_state_mask(gram_state *s, uint32_t *mask) {
    if (!s || !s->v || !mask) return GRAM_ERR_ARG;
    const size_t nb = gram_mask_words(s->v) * sizeof *mask;
    if (s->ended) { memset(mask, 0, nb); return GRAM_OK; }
    if (s->mask[s->cur]) { memcpy(mask, s->mask[s->cur], nb); return GRAM_OK; }
    int rc = compute_mask(s, s->cur, mask);
    if (rc) return rc;
    if (s->mask_bytes + nb <= MASK_CACHE_BYTES && (s->mask[s->cur] = malloc(nb))) {
        memcpy(s->mask[s->cur], mask, nb);
        s->mask_bytes += nb;
    }
    return GRAM_OK;
}
