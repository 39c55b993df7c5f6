/* The prefix cache (see pcache.h): an array of entries scanned by longest common prefix. A
 * server holds tens of entries, and comparing a 32K-token prompt against each is a few
 * microseconds per entry, so a radix tree would buy nothing measurable here. Entries evicted
 * from memory may spill to a directory as context files (engine/context.c: atomic, checksummed)
 * without centroids, and come back as mappings of those files. */
#include "pcache.h"

#include "context.h"
#include "kvcache.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    eng_seq *seq;
    int32_t *tokens;
    int n;
    idx_kind kind;
    uint64_t used;     /* tick of the last insert or hit */
    char name[24];     /* on disk: its directory under the cache's; "" in memory */
    size_t file_bytes;
} entry;

struct eng_pcache {
    int min_tokens;
    entry *e;
    int n, cap;
    uint64_t tick, evictions, spills;
    /* the disk tier (dir[0] == 0: none) */
    char dir[1024];
    size_t disk_budget, disk_bytes;
    const eng_model *m;
    int n_ctx;
    eng_attn_params attn; /* dense, with the slots' storage: what a mapped entry is made with */
};

eng_pcache *eng_pcache_create(int min_tokens) {
    eng_pcache *c = calloc(1, sizeof *c);
    if (c) c->min_tokens = min_tokens > 1 ? min_tokens : 1;
    return c;
}

static void remove_dir(const eng_pcache *c, const char *name) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s/context.kvctx", c->dir, name);
    unlink(p);
    snprintf(p, sizeof p, "%s/%s", c->dir, name);
    rmdir(p);
}

/* Drops entry i; delete_file: also its file (an entry superseded or over the disk budget; a
 * running sequence still reading the mapping keeps it until it is done). */
static void drop_entry(eng_pcache *c, int i, bool delete_file) {
    entry *e = &c->e[i];
    if (e->name[0]) {
        c->disk_bytes -= e->file_bytes;
        if (delete_file) remove_dir(c, e->name);
    }
    eng_seq_free(e->seq);
    free(e->tokens);
    c->e[i] = c->e[--c->n];
}

static void drop(eng_pcache *c, int i) { drop_entry(c, i, true); }

void eng_pcache_free(eng_pcache *c) {
    if (!c) return;
    while (c->n) drop_entry(c, c->n - 1, false); /* the files outlive the process */
    free(c->e);
    free(c);
}

static int push(eng_pcache *c, entry e);

static int lcp(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

int eng_pcache_insert(eng_pcache *c, eng_seq *seq, const int32_t *tokens, int n) {
    int32_t *t = malloc(sizeof *t * (n > 0 ? n : 1));
    if (!t) goto nomem;
    memcpy(t, tokens, sizeof *t * n);
    eng_attn_params a;
    eng_seq_get_attn(seq, &a);
    for (int i = c->n - 1; i >= 0; i--)
        if (c->e[i].n <= n && c->e[i].kind == a.selector && lcp(c->e[i].tokens, c->e[i].n, t, n) == c->e[i].n)
            drop(c, i);
    if (push(c, (entry){.seq = seq, .tokens = t, .n = n, .kind = a.selector, .used = ++c->tick})) {
        free(t);
        goto nomem;
    }
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

static void unref_ctx(void *ctx) { eng_ctx_unref(ctx); }

/* 64-bit FNV-1a of the model and the tokens: the directory name of a spilled prefix. */
static uint64_t name_hash(uint64_t fp, const int32_t *t, int n) {
    uint64_t h = 1469598103934665603ull ^ fp;
    const unsigned char *b = (const unsigned char *)t;
    for (size_t i = 0; i < (size_t)n * sizeof *t; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Maps a spilled prefix back as an entry (not yet in the array). NULL and a reason. */
static eng_seq *map_entry(eng_pcache *c, const char *name, eng_ctx **ctx_out, char *err, size_t errlen) {
    char d[1100];
    snprintf(d, sizeof d, "%s/%s", c->dir, name);
    eng_ctx *ctx = eng_ctx_load(c->m, d, err, errlen);
    if (!ctx) return NULL;
    eng_seq *q = eng_seq_create_ex(c->m, c->n_ctx, &c->attn, err, errlen);
    if (!q || eng_seq_adopt_prefix(q, eng_ctx_kv(ctx), eng_ctx_n_tokens(ctx), -1, -1, ctx, unref_ctx, err, errlen)) {
        eng_seq_free(q);
        eng_ctx_unref(ctx);
        return NULL;
    }
    *ctx_out = ctx;
    return q;
}

static int push(eng_pcache *c, entry e) {
    if (c->n == c->cap) {
        int nc = c->cap ? 2 * c->cap : 16;
        entry *ne = realloc(c->e, sizeof *ne * nc);
        if (!ne) return -1;
        c->e = ne;
        c->cap = nc;
    }
    c->e[c->n++] = e;
    return 0;
}

/* Writes entry i to disk and replaces it by the mapping of the file. 0, or -1 (the entry is
 * unchanged). */
static int spill(eng_pcache *c, int i) {
    entry *e = &c->e[i];
    char name[24], d[1100], err[256];
    snprintf(name, sizeof name, "pfx_%016llx",
             (unsigned long long)name_hash(eng_model_fingerprint(c->m), e->tokens, e->n));
    snprintf(d, sizeof d, "%s/%s", c->dir, name);
    struct stat st;
    if (stat(d, &st) != 0) {
        /* a context file whose clustered range is empty: the KV pages and the tokens only. The
         * context takes a fork of the entry (sharing its pages) and lets it go once written */
        eng_ctx_params p = eng_ctx_params_default();
        p.n_sink = e->n;
        p.n_tail = 0;
        p.obs_tokens = 1;
        eng_seq *f = eng_seq_fork(e->seq, &c->attn, err, sizeof err);
        eng_ctx *ctx = f ? eng_ctx_create(c->m, f, e->tokens, e->n, &p, NULL, NULL, err, sizeof err) : NULL;
        int rc = ctx ? eng_ctx_save(ctx, d, err, sizeof err) : -1;
        eng_ctx_unref(ctx);
        if (rc) {
            fprintf(stderr, "kvseek: prefix cache: cannot write %s: %s\n", d, err);
            return -1;
        }
    }
    eng_ctx *ctx = NULL;
    eng_seq *q = map_entry(c, name, &ctx, err, sizeof err);
    if (!q) {
        fprintf(stderr, "kvseek: prefix cache: %s\n", err);
        remove_dir(c, name);
        return -1;
    }
    eng_ctx_info info;
    eng_ctx_get_info(ctx, &info);
    eng_seq_free(e->seq);
    e->seq = q;
    e->kind = c->attn.selector;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->file_bytes = info.file_bytes;
    c->disk_bytes += info.file_bytes;
    c->spills++;
    return 0;
}

/* Deletes the least recently used spilled prefixes past the disk budget. */
static void trim_disk(eng_pcache *c) {
    while (c->disk_bytes > c->disk_budget) {
        int lru = -1;
        for (int i = 0; i < c->n; i++)
            if (c->e[i].name[0] && (lru < 0 || c->e[i].used < c->e[lru].used)) lru = i;
        if (lru < 0) break;
        drop(c, lru);
    }
}

int eng_pcache_evict(eng_pcache *c, const eng_seq *keep) {
    int lru = -1;
    for (int i = 0; i < c->n; i++)
        if (!c->e[i].name[0] && c->e[i].seq != keep && (lru < 0 || c->e[i].used < c->e[lru].used)) lru = i;
    if (lru < 0) return 0;
    c->evictions++;
    if (c->dir[0] && spill(c, lru) == 0) {
        trim_disk(c);
        return 1;
    }
    drop(c, lru);
    return 1;
}

int eng_pcache_set_dir(eng_pcache *c, const char *dir, size_t disk_budget, eng_seq *proto, char *err,
                       size_t errlen) {
    if (strlen(dir) >= sizeof c->dir - 40) {
        eng_set_err(err, errlen, "prefix cache directory name too long");
        return -1;
    }
    if (mkdir(dir, 0755) && errno != EEXIST) {
        eng_set_err(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    DIR *dd = opendir(dir);
    if (!dd) {
        eng_set_err(err, errlen, "cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    c->disk_budget = disk_budget;
    c->m = eng_seq_model(proto);
    c->n_ctx = eng_seq_capacity(proto);
    eng_seq_get_attn(proto, &c->attn);
    c->attn.selector = IDX_DENSE; /* the queries a selector learned from are not written */
    struct dirent *de;
    int loaded = 0, refused = 0;
    while ((de = readdir(dd))) {
        const char *nm = de->d_name;
        if (!strncmp(nm, ".tmp-", 5) || !strncmp(nm, ".old-", 5)) {
            /* a write cut short (the process was killed): never a whole file, so never read */
            char p[1200];
            snprintf(p, sizeof p, "%s/%s/context.kvctx", dir, nm);
            unlink(p);
            snprintf(p, sizeof p, "%s/%s", dir, nm);
            rmdir(p);
            continue;
        }
        if (strncmp(nm, "pfx_", 4) || strlen(nm) != 20) continue;
        char e2[256];
        eng_ctx *ctx = NULL;
        eng_seq *q = map_entry(c, nm, &ctx, e2, sizeof e2);
        if (!q) {
            fprintf(stderr, "kvseek: prefix cache: removing %s/%s: %s\n", dir, nm, e2);
            remove_dir(c, nm);
            refused++;
            continue;
        }
        eng_ctx_info info;
        eng_ctx_get_info(ctx, &info);
        const int n = eng_ctx_n_tokens(ctx);
        int32_t *t = malloc(sizeof *t * n);
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", dir, nm);
        struct stat st;
        entry e = {q, t, n, c->attn.selector, 0, "", info.file_bytes};
        if (!stat(p, &st)) e.used = (uint64_t)st.st_mtime; /* the oldest go first */
        snprintf(e.name, sizeof e.name, "%s", nm);
        if (!t || push(c, e)) {
            free(t);
            eng_seq_free(q);
            continue;
        }
        memcpy(t, eng_ctx_tokens(ctx), sizeof *t * n);
        c->disk_bytes += info.file_bytes;
        loaded++;
    }
    closedir(dd);
    /* ticks continue after the files' times, so entries used from now on are the newest */
    for (int i = 0; i < c->n; i++)
        if (c->e[i].used > c->tick) c->tick = c->e[i].used;
    trim_disk(c);
    if (loaded || refused)
        fprintf(stderr, "kvseek: prefix cache: %d prompt(s) mapped from %s%s\n", loaded, dir,
                refused ? " (some refused, see above)" : "");
    return 0;
}

void eng_pcache_get_stats(const eng_pcache *c, eng_pcache_stats *st) {
    memset(st, 0, sizeof *st);
    st->entries = c->n;
    st->evictions = c->evictions;
    st->spills = c->spills;
    st->disk_bytes = c->disk_bytes;
    for (int i = 0; i < c->n; i++) {
        if (c->e[i].name[0]) st->disk_entries++;
        st->tokens += c->e[i].n;
        const size_t all = eng_seq_bytes(c->e[i].seq), kv = kv_bytes(eng_seq_kv(c->e[i].seq));
        st->own_bytes += all;
        st->index_bytes += all > kv ? all - kv : 0;
    }
}
