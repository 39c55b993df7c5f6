/* Paged KV store of one sequence: a page holds page_size positions of one layer for all its KV
 * heads, so one allocation serves a layer and the rows of one head are contiguous in a page;
 * page tables are sized once, so appending never moves pages and views stay valid. */
#include "kvcache.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

typedef struct {
    void **pages;        /* (n_slots) page pointers, allocated prefix [0, n_alloc) */
    int64_t n_slots;     /* table length: pages for max_tokens, or the ring's pages */
    int64_t n_alloc;
    int64_t n_borrowed;  /* leading slots [0, n_borrowed) point at pages this store does not own
                          * (a shared context's, or a mapped file's): never freed nor counted */
    int64_t n_tok;       /* positions appended */
    int window;          /* 0: global layer; W: local layer */
    int64_t ring_pages;  /* 0: global; else pages of the ring (n_slots) */
} kv_layer;

struct kv_store {
    kv_params p;
    int *layer_window;   /* (n_layer) copy; p.layer_window points here */
    kv_layer *layers;    /* (n_layer) */
    int64_t *old_alloc;  /* (n_layer) scratch of ensure_pages, for its rollback */
    int page_shift;
    size_t elt;          /* bytes per element */
    size_t k_head_bytes, v_head_bytes; /* one head's rows in a page */
    size_t page_bytes;
    size_t bytes;        /* counted against p.max_bytes */
    char err[192];
};

kv_params kv_params_default(void) {
    kv_params p;
    memset(&p, 0, sizeof p);
    p.page_size = 64;
    p.dtype = KV_F32;
    p.n_sink = 128;
    p.n_window = 512;
    p.ring_slack = 1;
    return p;
}

const char *kv_strerror(int code) {
    switch (code) {
    case KV_OK: return "ok";
    case KV_ERR_PARAM: return "invalid KV store parameter or argument";
    case KV_ERR_NOMEM: return "out of memory for the KV store";
    case KV_ERR_LIMIT: return "KV memory limit exceeded";
    case KV_ERR_FULL: return "KV store full (context size reached)";
    default: return "unknown KV store error";
    }
}

const char *kv_last_error(const kv_store *s) { return s ? s->err : ""; }

static int fail(kv_store *s, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return code;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Bytes held by every store of the process: the one figure a server-wide memory budget can
 * trust, since pages shared between stores are counted once, by their owner, even after the
 * sequence that filled them has moved on. */
static _Atomic size_t g_total_bytes;

static void count(kv_store *s, ptrdiff_t delta) {
    s->bytes += delta;
    atomic_fetch_add(&g_total_bytes, (size_t)delta);
}

size_t kv_bytes_total(void) { return atomic_load(&g_total_bytes); }
static int held(const kv_store *s, const kv_layer *L, int64_t pos);

/* Pages and page tables through the store's allocator (kv_params.page_alloc). */
static void *mem_alloc(const kv_params *p, size_t bytes) {
    return p->page_alloc ? p->page_alloc(bytes) : aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void mem_free(const kv_params *p, void *ptr) {
    if (p->page_free) p->page_free(ptr);
    else free(ptr);
}

int kv_create(const kv_params *p, kv_store **out) {
    *out = NULL;
    if (!p || p->n_layer <= 0 || p->n_head_kv <= 0 || p->head_dim <= 0 || p->v_dim <= 0 ||
        p->max_tokens <= 0 || p->page_size <= 0 || (p->page_size & (p->page_size - 1)) ||
        (p->dtype != KV_F32 && p->dtype != KV_F16) || p->n_sink < 0 || p->n_window < 0 ||
        p->ring_slack < 0)
        return KV_ERR_PARAM;
    kv_store *s = calloc(1, sizeof *s);
    if (!s) return KV_ERR_NOMEM;
    s->p = *p;
    s->layer_window = calloc((size_t)p->n_layer, sizeof(int));
    s->layers = calloc((size_t)p->n_layer, sizeof(kv_layer));
    s->old_alloc = calloc((size_t)p->n_layer, sizeof(int64_t));
    if (!s->layer_window || !s->layers || !s->old_alloc) goto nomem;
    if (p->layer_window) memcpy(s->layer_window, p->layer_window, sizeof(int) * p->n_layer);
    s->p.layer_window = s->layer_window;
    while ((1 << s->page_shift) < p->page_size) s->page_shift++;
    s->elt = p->dtype == KV_F32 ? 4 : 2;
    s->k_head_bytes = (size_t)p->page_size * p->head_dim * s->elt;
    s->v_head_bytes = (size_t)p->page_size * p->v_dim * s->elt;
    /* rounded to the 64-byte alignment aligned_alloc requires of the size */
    s->page_bytes = ((s->k_head_bytes + s->v_head_bytes) * p->n_head_kv + 63) & ~(size_t)63;
    count(s, (ptrdiff_t)(sizeof *s + (sizeof(int) + sizeof(kv_layer) + sizeof(int64_t)) * p->n_layer));
    const int64_t max_pages = ceil_div(p->max_tokens, p->page_size);
    for (int l = 0; l < p->n_layer; l++) {
        kv_layer *L = &s->layers[l];
        int w = s->layer_window[l];
        if (w < 0) goto param;
        L->window = w;
        if (w > 0) {
            /* the chunk's first row needs the W - 1 tokens before it, and the chunk's rows
             * [p0, p0 + slack) are already written: W + slack - 1 tokens must be held */
            L->ring_pages = ceil_div((int64_t)w + (p->ring_slack > 0 ? p->ring_slack : 1) - 1,
                                     p->page_size);
            if (L->ring_pages > max_pages) L->ring_pages = max_pages;
            L->n_slots = L->ring_pages;
        } else {
            L->n_slots = max_pages;
        }
        L->pages = mem_alloc(&s->p, (size_t)L->n_slots * sizeof(void *));
        if (!L->pages) goto nomem;
        memset(L->pages, 0, (size_t)L->n_slots * sizeof(void *));
        count(s, (ptrdiff_t)(sizeof(void *) * L->n_slots));
    }
    if (p->max_bytes && s->bytes > p->max_bytes) {
        kv_free(s);
        return KV_ERR_LIMIT;
    }
    *out = s;
    return KV_OK;
param:
    kv_free(s);
    return KV_ERR_PARAM;
nomem:
    kv_free(s);
    return KV_ERR_NOMEM;
}

void kv_free(kv_store *s) {
    if (!s) return;
    if (s->layers) {
        for (int l = 0; l < s->p.n_layer; l++) {
            kv_layer *L = &s->layers[l];
            if (!L->pages) continue;
            for (int64_t i = L->n_borrowed; i < L->n_alloc; i++) mem_free(&s->p, L->pages[i]);
            mem_free(&s->p, L->pages);
        }
    }
    atomic_fetch_sub(&g_total_bytes, s->bytes);
    free(s->layers);
    free(s->old_alloc);
    free(s->layer_window);
    free(s);
}

/* Pages a layer needs to hold positions [0, n_total). */
static int64_t pages_needed(const kv_store *s, const kv_layer *L, int64_t n_total) {
    int64_t need = ceil_div(n_total, s->p.page_size);
    return need < L->n_slots ? need : L->n_slots;
}

/* Allocates pages so that layers [l0, l1) hold positions [0, n_total); all or nothing. */
static int ensure_pages(kv_store *s, int l0, int l1, int64_t n_total) {
    if (n_total > s->p.max_tokens)
        return fail(s, KV_ERR_FULL, "KV store full: %lld tokens requested, context size %d",
                    (long long)n_total, s->p.max_tokens);
    int64_t extra = 0;
    for (int l = l0; l < l1; l++) {
        int64_t need = pages_needed(s, &s->layers[l], n_total) - s->layers[l].n_alloc;
        if (need > 0) extra += need;
    }
    if (extra == 0) return KV_OK;
    size_t more = (size_t)extra * s->page_bytes;
    if (s->p.max_bytes && s->bytes + more > s->p.max_bytes)
        return fail(s, KV_ERR_LIMIT,
                    "KV memory limit: %.1f MiB held, %.1f MiB more needed for %lld tokens, limit %.1f MiB",
                    s->bytes / 1048576.0, more / 1048576.0, (long long)n_total,
                    s->p.max_bytes / 1048576.0);
    for (int l = l0; l < l1; l++) s->old_alloc[l] = s->layers[l].n_alloc;
    for (int l = l0; l < l1; l++) {
        kv_layer *L = &s->layers[l];
        int64_t need = pages_needed(s, L, n_total);
        for (; L->n_alloc < need; L->n_alloc++) {
            void *pg = mem_alloc(&s->p, s->page_bytes);
            if (!pg) goto rollback;
            L->pages[L->n_alloc] = pg;
            count(s, (ptrdiff_t)s->page_bytes);
        }
    }
    return KV_OK;
rollback:
    /* free what this call added: pages past each layer's old count */
    for (int r = l0; r < l1; r++) {
        kv_layer *L = &s->layers[r];
        while (L->n_alloc > s->old_alloc[r]) {
            mem_free(&s->p, L->pages[--L->n_alloc]);
            L->pages[L->n_alloc] = NULL;
            count(s, -(ptrdiff_t)s->page_bytes);
        }
    }
    return fail(s, KV_ERR_NOMEM, "out of memory allocating KV pages for %lld tokens",
                (long long)n_total);
}

int kv_reserve(kv_store *s, int64_t n_total) {
    if (!s || n_total < 0) return KV_ERR_PARAM;
    return ensure_pages(s, 0, s->p.n_layer, n_total);
}

static inline char *page_ptr(const kv_store *s, const kv_layer *L, int64_t pos) {
    int64_t pg = pos >> s->page_shift;
    if (L->ring_pages) pg %= L->ring_pages;
    return (char *)L->pages[pg];
}

static inline int64_t row_in_page(const kv_store *s, int64_t pos) {
    return pos & (s->p.page_size - 1);
}

static void store_row(const kv_store *s, void *dst, const float *src, int n) {
    if (s->p.dtype == KV_F32) {
        memcpy(dst, src, sizeof(float) * n);
    } else {
        uint16_t *h = dst;
        for (int i = 0; i < n; i++) h[i] = krn_f32_to_f16(src[i]);
    }
}

int kv_append(kv_store *s, int layer, const float *k, const float *v, int n) {
    if (!s || layer < 0 || layer >= s->p.n_layer || n < 0 || (n > 0 && (!k || !v)))
        return KV_ERR_PARAM;
    kv_layer *L = &s->layers[layer];
    int rc = ensure_pages(s, layer, layer + 1, L->n_tok + n);
    if (rc) return rc;
    const int nkv = s->p.n_head_kv, hd = s->p.head_dim, vd = s->p.v_dim;
    for (int t = 0; t < n; t++) {
        const int64_t pos = L->n_tok + t;
        char *pg = page_ptr(s, L, pos);
        const int64_t r = row_in_page(s, pos);
        for (int h = 0; h < nkv; h++) {
            store_row(s, pg + h * s->k_head_bytes + r * hd * s->elt,
                      k + ((size_t)t * nkv + h) * hd, hd);
            store_row(s, pg + nkv * s->k_head_bytes + h * s->v_head_bytes + r * vd * s->elt,
                      v + ((size_t)t * nkv + h) * vd, vd);
        }
    }
    L->n_tok += n;
    return KV_OK;
}

/* Drops the borrowed prefix of a layer: its owned pages move down to slot 0 (their contents no
 * longer matter), so the table is again an allocated prefix of owned pages. */
static void unborrow(kv_layer *L) {
    if (!L->n_borrowed) return;
    const int64_t owned = L->n_alloc - L->n_borrowed;
    memmove(L->pages, L->pages + L->n_borrowed, sizeof(void *) * (size_t)owned);
    for (int64_t i = owned; i < L->n_alloc; i++) L->pages[i] = NULL;
    L->n_alloc = owned;
    L->n_borrowed = 0;
}

void kv_reset(kv_store *s) {
    if (!s) return;
    for (int l = 0; l < s->p.n_layer; l++) {
        unborrow(&s->layers[l]);
        s->layers[l].n_tok = 0;
    }
    s->err[0] = 0;
}

void kv_trim(kv_store *s) {
    if (!s) return;
    for (int l = 0; l < s->p.n_layer; l++) {
        kv_layer *L = &s->layers[l];
        const int64_t keep = L->ring_pages ? (L->n_tok ? L->n_alloc : L->n_borrowed)
                                           : ceil_div(L->n_tok, s->p.page_size);
        while (L->n_alloc > keep && L->n_alloc > L->n_borrowed) {
            mem_free(&s->p, L->pages[--L->n_alloc]);
            L->pages[L->n_alloc] = NULL;
            count(s, -(ptrdiff_t)s->page_bytes);
        }
    }
}

size_t kv_page_bytes(const kv_store *s) { return s->page_bytes; }

int kv_layer_pages(const kv_store *s, int layer, const void *const **pages, int64_t *n_pages) {
    if (!s || layer < 0 || layer >= s->p.n_layer) return KV_ERR_PARAM;
    const kv_layer *L = &s->layers[layer];
    *pages = (const void *const *)L->pages;
    *n_pages = L->ring_pages ? (L->n_alloc < L->ring_pages ? L->n_alloc : L->ring_pages)
                             : ceil_div(L->n_tok, s->p.page_size);
    return KV_OK;
}

int64_t kv_layer_slots(const kv_store *s, int layer) {
    return layer >= 0 && layer < s->p.n_layer ? s->layers[layer].n_slots : 0;
}

int kv_adopt(kv_store *s, int layer, void *const *pages, int64_t n_pages, int64_t n_tok) {
    if (!s || layer < 0 || layer >= s->p.n_layer || n_pages < 0 || n_tok < 0)
        return KV_ERR_PARAM;
    kv_layer *L = &s->layers[layer];
    if (L->n_alloc || L->n_tok)
        return fail(s, KV_ERR_PARAM, "adopt: layer %d is not fresh", layer);
    if (n_tok > s->p.max_tokens || n_pages > L->n_slots ||
        (L->ring_pages ? n_pages != (n_tok < (L->ring_pages << s->page_shift) ? ceil_div(n_tok, s->p.page_size) : L->ring_pages)
                       : n_pages != ceil_div(n_tok, s->p.page_size)))
        return fail(s, KV_ERR_PARAM, "adopt: %lld pages do not hold %lld tokens on layer %d",
                    (long long)n_pages, (long long)n_tok, layer);
    for (int64_t i = 0; i < n_pages; i++) {
        if (!pages[i]) return fail(s, KV_ERR_PARAM, "adopt: page %lld is NULL", (long long)i);
        L->pages[i] = pages[i];
    }
    L->n_alloc = L->n_borrowed = n_pages;
    L->n_tok = n_tok;
    return KV_OK;
}

int kv_share_prefix(kv_store *dst, const kv_store *src, int64_t n) {
    if (!dst || !src || n < 0) return KV_ERR_PARAM;
    const kv_params *a = &dst->p, *b = &src->p;
    if (a->n_layer != b->n_layer || a->n_head_kv != b->n_head_kv || a->head_dim != b->head_dim ||
        a->v_dim != b->v_dim || a->page_size != b->page_size || a->dtype != b->dtype)
        return fail(dst, KV_ERR_PARAM, "share: the stores differ in shape, page size or dtype");
    if (n > a->max_tokens)
        return fail(dst, KV_ERR_FULL, "share: %lld tokens exceed the context size %d", (long long)n, a->max_tokens);
    for (int l = 0; l < a->n_layer; l++) {
        const kv_layer *S = &src->layers[l];
        if (dst->layers[l].n_tok) return fail(dst, KV_ERR_PARAM, "share: the store is not empty");
        if (dst->layers[l].window != S->window)
            return fail(dst, KV_ERR_PARAM, "share: layer %d differs in window", l);
        if (S->n_tok < n) return fail(dst, KV_ERR_PARAM, "share: the source holds fewer than %lld tokens", (long long)n);
        if (dst->layers[l].ring_pages && n > 0) {
            int64_t need = n - (dst->layers[l].ring_pages << dst->page_shift);
            if (need < 0) need = 0;
            if (!held(src, S, need))
                return fail(dst, KV_ERR_PARAM, "share: the source ring of layer %d is shorter than this store's", l);
        }
    }
    const int64_t nb = n >> dst->page_shift; /* whole pages: borrowed */
    for (int l = 0; l < a->n_layer; l++) {
        kv_layer *L = &dst->layers[l];
        if (L->ring_pages) continue;
        unborrow(L);
        int64_t owned = L->n_alloc;
        while (nb + owned > L->n_slots) { /* no room for every owned page after the shared ones */
            mem_free(&dst->p, L->pages[--owned]);
            L->pages[owned] = NULL;
            count(dst, -(ptrdiff_t)dst->page_bytes);
        }
        memmove(L->pages + nb, L->pages, sizeof(void *) * (size_t)owned);
        for (int64_t i = 0; i < nb; i++) L->pages[i] = src->layers[l].pages[i];
        L->n_alloc = nb + owned;
        L->n_borrowed = nb;
    }
    /* the partial last page and the rings are copied (this store writes into them) */
    int rc = ensure_pages(dst, 0, a->n_layer, n);
    if (rc) {
        for (int l = 0; l < a->n_layer; l++) unborrow(&dst->layers[l]);
        return rc;
    }
    for (int l = 0; l < a->n_layer; l++) {
        kv_layer *L = &dst->layers[l];
        const kv_layer *S = &src->layers[l];
        if (!L->ring_pages) {
            if (n > (nb << dst->page_shift)) memcpy(L->pages[nb], S->pages[nb], dst->page_bytes);
        } else {
            int64_t lo = n - (L->ring_pages << dst->page_shift);
            for (int64_t pos = lo < 0 ? 0 : lo; pos < n; pos++) {
                const int64_t r = row_in_page(dst, pos);
                const char *sp = page_ptr(src, S, pos);
                char *dp = page_ptr(dst, L, pos);
                for (int h = 0; h < a->n_head_kv; h++) {
                    size_t ko = h * dst->k_head_bytes + r * a->head_dim * dst->elt;
                    size_t vo = a->n_head_kv * dst->k_head_bytes + h * dst->v_head_bytes + r * a->v_dim * dst->elt;
                    memcpy(dp + ko, sp + ko, a->head_dim * dst->elt);
                    memcpy(dp + vo, sp + vo, a->v_dim * dst->elt);
                }
            }
        }
        L->n_tok = n;
    }
    return KV_OK;
}

int kv_set_static(kv_store *s, int n_sink, int n_window) {
    if (n_sink < 0 || n_window < 0) return fail(s, KV_ERR_PARAM, "static set: negative sink or window");
    for (int l = 0; l < s->p.n_layer; l++)
        if (s->layers[l].n_tok) return fail(s, KV_ERR_PARAM, "static set changes only on an empty store");
    s->p.n_sink = n_sink;
    s->p.n_window = n_window;
    return KV_OK;
}

int64_t kv_n_tokens(const kv_store *s, int layer) {
    return layer >= 0 && layer < s->p.n_layer ? s->layers[layer].n_tok : 0;
}

size_t kv_bytes(const kv_store *s) { return s ? s->bytes : 0; }
const kv_params *kv_get_params(const kv_store *s) { return &s->p; }

int kv_layer_window(const kv_store *s, int layer) {
    return layer >= 0 && layer < s->p.n_layer ? s->layers[layer].window : 0;
}

kv_ranges kv_ranges_of(const kv_store *s, int layer, int64_t n) {
    kv_ranges r;
    memset(&r, 0, sizeof r);
    if (n < 0) n = 0;
    r.win_hi = n;
    const int w = kv_layer_window(s, layer);
    if (w > 0) {
        r.win_lo = n > w ? n - w : 0;
        return r;
    }
    const int64_t ns = s->p.n_sink, nw = s->p.n_window;
    if (n <= ns + nw) {
        r.sink_hi = n < ns ? n : ns;
        r.off_lo = r.off_hi = r.win_lo = r.sink_hi;
    } else {
        r.sink_hi = r.off_lo = ns;
        r.off_hi = r.win_lo = n - nw;
    }
    return r;
}

int kv_view(const kv_store *s, int layer, int head, attn_kv_view *out) {
    if (!s || layer < 0 || layer >= s->p.n_layer || head < 0 || head >= s->p.n_head_kv)
        return KV_ERR_PARAM;
    const kv_layer *L = &s->layers[layer];
    out->pages = (const void *const *)L->pages;
    out->ring_pages = L->ring_pages;
    out->page_shift = s->page_shift;
    out->k_off = head * s->k_head_bytes;
    out->v_off = s->p.n_head_kv * s->k_head_bytes + head * s->v_head_bytes;
    out->k_stride = s->p.head_dim;
    out->v_stride = s->p.v_dim;
    out->dk = s->p.head_dim;
    out->dv = s->p.v_dim;
    out->dtype = s->p.dtype == KV_F32 ? ATTN_F32 : ATTN_F16;
    return KV_OK;
}

/* True when the layer still holds position pos. */
static int held(const kv_store *s, const kv_layer *L, int64_t pos) {
    if (pos < 0 || pos >= L->n_tok) return 0;
    return !L->ring_pages || pos >= L->n_tok - (L->ring_pages << s->page_shift);
}

const void *kv_k_row(const kv_store *s, int layer, int head, int64_t pos) {
    if (layer < 0 || layer >= s->p.n_layer || head < 0 || head >= s->p.n_head_kv) return NULL;
    const kv_layer *L = &s->layers[layer];
    if (!held(s, L, pos)) return NULL;
    return page_ptr(s, L, pos) + head * s->k_head_bytes + row_in_page(s, pos) * s->p.head_dim * s->elt;
}

const void *kv_v_row(const kv_store *s, int layer, int head, int64_t pos) {
    if (layer < 0 || layer >= s->p.n_layer || head < 0 || head >= s->p.n_head_kv) return NULL;
    const kv_layer *L = &s->layers[layer];
    if (!held(s, L, pos)) return NULL;
    return page_ptr(s, L, pos) + s->p.n_head_kv * s->k_head_bytes + head * s->v_head_bytes +
           row_in_page(s, pos) * s->p.v_dim * s->elt;
}

static void load_row(const kv_store *s, float *dst, const void *src, int n) {
    if (s->p.dtype == KV_F32) {
        memcpy(dst, src, sizeof(float) * n);
    } else {
        const uint16_t *h = src;
        for (int i = 0; i < n; i++) dst[i] = krn_f16_to_f32(h[i]);
    }
}

/* Shared by both gather forms: ids == NULL means positions lo + j. */
static int gather(const kv_store *s, int layer, int head, const int32_t *ids, int64_t lo, int64_t n,
                  float *k_out, float *v_out) {
    if (!s || layer < 0 || layer >= s->p.n_layer || head < 0 || head >= s->p.n_head_kv || n < 0)
        return KV_ERR_PARAM;
    const int hd = s->p.head_dim, vd = s->p.v_dim;
    for (int64_t j = 0; j < n; j++) {
        const int64_t pos = ids ? ids[j] : lo + j;
        const void *kr = kv_k_row(s, layer, head, pos);
        if (!kr) return KV_ERR_PARAM;
        if (k_out) load_row(s, k_out + j * hd, kr, hd);
        if (v_out) load_row(s, v_out + j * vd, kv_v_row(s, layer, head, pos), vd);
    }
    return KV_OK;
}

int kv_gather(const kv_store *s, int layer, int head, const int32_t *ids, int64_t n,
              float *k_out, float *v_out) {
    if (n > 0 && !ids) return KV_ERR_PARAM;
    return gather(s, layer, head, ids, 0, n, k_out, v_out);
}

int kv_gather_range(const kv_store *s, int layer, int head, int64_t lo, int64_t hi,
                    float *k_out, float *v_out) {
    return gather(s, layer, head, NULL, lo, hi - lo, k_out, v_out);
}
