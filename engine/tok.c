/* Tokenizer: loading a vocabulary from GGUF metadata, splitting special tokens out of text,
 * and turning ids back into bytes. The merge loops live in tok_spm.c (SentencePiece BPE,
 * "llama") and tok_bpe.c (byte-level BPE, "gpt2").
 *
 * Workload: a vocabulary of up to a few hundred thousand tokens loaded once per model (Gemma 3
 * has 262144; loading copies the strings and builds hash tables in tens of milliseconds), then
 * prompts from a few bytes to megabytes. Every step of encoding is linear or n·log n in the
 * input length so that hostile input cannot stall the engine thread.
 *
 * Behaviour follows llama.cpp's llama-vocab.cpp (the reference kvseek matches token for token):
 * special tokens are split out longest first; within one length, leftmost first (llama.cpp
 * leaves the order of equal-length tokens unspecified). */
#include "tok_internal.h"
#include "util.h"
#include "unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY(name) "tokenizer.ggml." name

const char *tok_strerror(int64_t code) {
    switch (code) {
    case TOK_ERR_NOMEM: return "out of memory";
    case TOK_ERR_ARG: return "invalid argument";
    default: return code >= 0 ? "ok" : "unknown tokenizer error";
    }
}


/* ---- growable containers ---- */

/* The array v of n elements of elt bytes (capacity *cap) with room for one more: v itself, or
 * v moved to twice the capacity (64 at first). NULL with *oom set when that fails; v is then
 * still the caller's. */
static void *grow_one(void *v, size_t n, size_t *cap, size_t elt, int *oom) {
    if (n < *cap) return v;
    size_t c = *cap ? *cap * 2 : 64;
    void *p = realloc(v, c * elt);
    if (!p) { *oom = 1; return NULL; }
    *cap = c;
    return p;
}

void tok_ids_push(tok_ids *ids, int32_t id) {
    int32_t *v = grow_one(ids->v, ids->n, &ids->cap, sizeof *v, &ids->oom);
    if (!v) return;
    ids->v = v;
    ids->v[ids->n++] = id;
}

static int bigram_less(const tok_bigram *a, const tok_bigram *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

void tok_heap_push(tok_heap *h, tok_bigram b) {
    tok_bigram *v = grow_one(h->v, h->n, &h->cap, sizeof *v, &h->oom);
    if (!v) return;
    h->v = v;
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_less(&b, &h->v[parent])) break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = b;
}

tok_bigram tok_heap_pop(tok_heap *h) {
    tok_bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && bigram_less(&h->v[c + 1], &h->v[c])) c++;
        if (!bigram_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* ---- text -> id map ---- */

static uint64_t map_cap_for(uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

int32_t tok_lookup(const tok_vocab *v, const char *s, size_t n) {
    if (n > v->max_len) return -1;
    uint64_t h = tok_hash_bytes(TOK_HASH_INIT, s, n) & v->map.mask;
    for (uint32_t slot; (slot = v->map.slots[h]) != 0; h = (h + 1) & v->map.mask) {
        int32_t id = (int32_t)(slot - 1);
        if (v->len[id] == n && memcmp(tok_str(v, id), s, n) == 0) return id;
    }
    return -1;
}

/* Inserts id; an earlier id with the same text is replaced (the highest id wins). */
static void map_insert(tok_vocab *v, int32_t id) {
    const char *s = tok_str(v, id);
    uint64_t h = tok_hash_bytes(TOK_HASH_INIT, s, v->len[id]) & v->map.mask;
    for (uint32_t slot; (slot = v->map.slots[h]) != 0; h = (h + 1) & v->map.mask) {
        int32_t other = (int32_t)(slot - 1);
        if (v->len[other] == v->len[id] && memcmp(tok_str(v, other), s, v->len[id]) == 0) break;
    }
    v->map.slots[h] = (uint32_t)id + 1;
}

/* ---- special tokens ---- */

#define POLY_BASE 0x9e3779b97f4a7c15ull /* odd multiplier of the polynomial rolling hash */

static uint64_t poly_hash(const char *s, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h = h * POLY_BASE + (unsigned char)s[i];
    return h;
}

static int cmp_special(const void *a, const void *b, void *arg) {
    const tok_vocab *v = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (v->len[x] != v->len[y]) return v->len[x] > v->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static bool is_special(const tok_vocab *v, int32_t id) {
    uint8_t t = v->type[id];
    /* a text shared by several ids belongs to the one tok_lookup finds */
    return (t == TOK_TYPE_CONTROL || t == TOK_TYPE_USER_DEFINED || t == TOK_TYPE_UNKNOWN) &&
           v->len[id] > 0 && tok_lookup(v, tok_str(v, id), v->len[id]) == id;
}

static int build_specials(tok_vocab *v) {
    int32_t n = 0;
    for (int32_t id = 0; id < v->n; id++) n += is_special(v, id);
    v->n_special = n;
    if (n == 0) return 0;
    size_t un = (size_t)n;
    v->special = malloc(un * sizeof *v->special);
    v->special_hash = malloc(un * sizeof *v->special_hash);
    uint64_t cap = map_cap_for(un);
    v->special_slots = calloc(cap, sizeof *v->special_slots);
    v->special_len = malloc(un * sizeof *v->special_len);
    v->special_first = calloc(un, sizeof *v->special_first);
    v->special_last = calloc(un, sizeof *v->special_last);
    if (!v->special || !v->special_hash || !v->special_slots || !v->special_len ||
        !v->special_first || !v->special_last)
        return -1;
    v->special_mask = cap - 1;
    n = 0;
    for (int32_t id = 0; id < v->n; id++)
        if (is_special(v, id)) v->special[n++] = id;
    qsort_r(v->special, un, sizeof *v->special, cmp_special, v);
    int32_t k = -1;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = v->special[i];
        uint32_t len = v->len[id];
        const unsigned char *s = (const unsigned char *)tok_str(v, id);
        if (k < 0 || v->special_len[k] != len) v->special_len[++k] = len;
        v->special_first[k][s[0] >> 6] |= 1ull << (s[0] & 63);
        v->special_last[k][s[len - 1] >> 6] |= 1ull << (s[len - 1] & 63);
        uint64_t h = poly_hash((const char *)s, len);
        v->special_hash[i] = h;
        uint64_t slot = (h ^ (h >> 29)) & v->special_mask;
        while (v->special_slots[slot]) slot = (slot + 1) & v->special_mask;
        v->special_slots[slot] = (uint32_t)i + 1;
    }
    v->n_special_len = k + 1;
    return 0;
}

/* The special token whose text is s[0..len) and whose hash is h; -1 when none. */
static int32_t special_find(const tok_vocab *v, uint64_t h, const char *s, uint32_t len) {
    uint64_t slot = (h ^ (h >> 29)) & v->special_mask;
    for (uint32_t e; (e = v->special_slots[slot]) != 0; slot = (slot + 1) & v->special_mask) {
        int32_t id = v->special[e - 1];
        if (v->special_hash[e - 1] == h && v->len[id] == len && memcmp(tok_str(v, id), s, len) == 0)
            return id;
    }
    return -1;
}

typedef struct {
    size_t start, end;
    int32_t id; /* -1: raw text to tokenize; otherwise a special token */
} fragment;

typedef struct {
    fragment *v;
    size_t n, cap;
} frag_list;

static int frag_push(frag_list *l, size_t start, size_t end, int32_t id) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        fragment *p = realloc(l->v, cap * sizeof *p);
        if (!p) return -1;
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = (fragment){start, end, id};
    return 0;
}

static inline int bit_test(const uint64_t bits[4], unsigned char c) {
    return (bits[c >> 6] >> (c & 63)) & 1;
}

/* Splits text into raw fragments and special tokens, as llama.cpp's tokenizer_st_partition:
 * special tokens are taken longest first, each length scanning the remaining raw fragments
 * left to right. CONTROL and UNKNOWN tokens only when parse_special. Result in *out. */
static int partition(const tok_vocab *v, const char *text, size_t len, bool parse_special,
                     frag_list *out) {
    frag_list cur = {0}, next = {0};
    uint64_t *pre = NULL;
    int rc = TOK_ERR_NOMEM;
    if (len > 0 && frag_push(&cur, 0, len, -1)) goto done;
    if (v->n_special > 0 && len > 0) {
        /* prefix[i] = polynomial hash of text[0..i): a window's hash costs O(1) */
        pre = malloc((len + 1) * sizeof *pre);
        if (!pre) goto done;
        pre[0] = 0;
        for (size_t i = 0; i < len; i++) pre[i + 1] = pre[i] * POLY_BASE + (unsigned char)text[i];
        for (int32_t k = 0; k < v->n_special_len; k++) {
            uint32_t L = v->special_len[k];
            if (L > len) continue;
            uint64_t powL = 1;
            for (uint32_t i = 0; i < L; i++) powL *= POLY_BASE;
            next.n = 0;
            for (size_t f = 0; f < cur.n; f++) {
                fragment fr = cur.v[f];
                if (fr.id >= 0 || fr.end - fr.start < L) {
                    if (frag_push(&next, fr.start, fr.end, fr.id)) goto done;
                    continue;
                }
                size_t p = fr.start, last = fr.start;
                while (p + L <= fr.end) {
                    const unsigned char *s = (const unsigned char *)text + p;
                    int32_t id = -1;
                    if (bit_test(v->special_first[k], s[0]) && bit_test(v->special_last[k], s[L - 1])) {
                        uint64_t h = pre[p + L] - pre[p] * powL;
                        id = special_find(v, h, (const char *)s, L);
                        if (id >= 0 && !parse_special && v->type[id] != TOK_TYPE_USER_DEFINED) id = -1;
                    }
                    if (id < 0) { p++; continue; }
                    if (p > last && frag_push(&next, last, p, -1)) goto done;
                    if (frag_push(&next, p, p + L, id)) goto done;
                    p += L;
                    last = p;
                }
                if (last < fr.end && frag_push(&next, last, fr.end, -1)) goto done;
            }
            frag_list t = cur;
            cur = next;
            next = t;
        }
    }
    *out = cur;
    cur.v = NULL;
    rc = 0;
done:
    free(cur.v);
    free(next.v);
    free(pre);
    return rc;
}

/* ---- encoding ---- */

int64_t tok_encode(const tok_vocab *v, const char *text, size_t len, bool add_special,
                   bool parse_special, int32_t *out, int64_t cap) {
    if (!v || (!text && len > 0) || cap < 0 || (cap > 0 && !out)) return TOK_ERR_ARG;
    tok_ids ids = {0};
    frag_list frags = {0};
    int64_t rc = partition(v, text, len, parse_special, &frags);
    if (rc < 0) return rc;
    if (add_special && v->add_bos && v->bos >= 0) tok_ids_push(&ids, v->bos);
    for (size_t f = 0; f < frags.n && rc == 0; f++) {
        const fragment *fr = &frags.v[f];
        if (fr->id >= 0) tok_ids_push(&ids, fr->id);
        else if (v->model == TOK_MODEL_SPM)
            rc = tok_spm_fragment(v, text + fr->start, fr->end - fr->start, &ids);
        else
            rc = tok_bpe_fragment(v, text + fr->start, fr->end - fr->start, &ids);
    }
    if (add_special && v->add_eos && v->eos >= 0) tok_ids_push(&ids, v->eos);
    free(frags.v);
    if (rc == 0 && ids.oom) rc = TOK_ERR_NOMEM;
    if (rc == 0) {
        int64_t n = (int64_t)ids.n;
        if (n > 0 && cap > 0) memcpy(out, ids.v, (size_t)(n < cap ? n : cap) * sizeof *out);
        rc = n;
    }
    free(ids.v);
    return rc;
}

/* ---- decoding ---- */

/* Output cursor of the decoders: counts every byte, stores those that fit below cap. strip:
 * the next byte is dropped if it is a space (llama.cpp's lstrip of the first piece). */
typedef struct {
    char *buf;
    int64_t cap, pos;
    bool strip;
} writer;

static void put(writer *w, const char *s, size_t n) {
    if (w->strip && n) {
        if (*s == ' ') { s++; n--; }
        w->strip = false;
    }
    if (w->pos < w->cap) {
        size_t room = (size_t)(w->cap - w->pos);
        memcpy(w->buf + w->pos, s, n < room ? n : room);
    }
    w->pos += (int64_t)n;
}

/* Byte of an SPM byte token "<0xXX>"; -1 when the text is not of that form. */
static int byte_token_value(const char *s, uint32_t len) {
    if (len != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Writes token id's piece through w, as llama.cpp's token_to_piece. */
static void piece_put(const tok_vocab *v, int32_t id, bool render_special, writer *w) {
    if (id < 0 || id >= v->n) return;
    const char *s = tok_str(v, id);
    uint32_t n = v->len[id];
    uint8_t t = v->type[id];
    if (t == TOK_TYPE_CONTROL || t == TOK_TYPE_UNKNOWN) {
        if (!render_special) return;
        t = TOK_TYPE_USER_DEFINED; /* rendered as its text */
    }
    if (t == TOK_TYPE_USER_DEFINED) { put(w, s, n); return; }
    if (t == TOK_TYPE_BYTE) {
        int b = byte_token_value(s, n);
        if (b >= 0) {
            char c = (char)b;
            put(w, &c, 1);
            return;
        }
        t = TOK_TYPE_NORMAL;
    }
    if (t != TOK_TYPE_NORMAL) return; /* unused, undefined: nothing, as llama.cpp */
    if (v->model == TOK_MODEL_SPM) {
        /* "▁" (E2 96 81) stands for a space */
        uint32_t i = 0, run = 0;
        while (i < n) {
            if (i + 3 <= n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
                (unsigned char)s[i + 2] == 0x81) {
                put(w, s + run, i - run);
                put(w, " ", 1);
                i += 3;
                run = i;
            } else {
                i++;
            }
        }
        put(w, s + run, n - run);
        return;
    }
    /* byte-level: each code point of the alphabet stands for one byte; others pass through */
    for (uint32_t i = 0; i < n;) {
        size_t adv;
        uint32_t cp = unicode_decode((const uint8_t *)s + i, n - i, &adv);
        int b = unicode_cpt_to_byte(cp);
        if (b >= 0) {
            char c = (char)b;
            put(w, &c, 1);
        } else {
            put(w, s + i, adv);
        }
        i += (uint32_t)adv;
    }
}

int tok_piece(const tok_vocab *v, int32_t id, bool render_special, char *buf, int cap) {
    if (!v || cap < 0 || (cap > 0 && !buf)) return 0;
    writer w = {buf, cap, 0, false};
    piece_put(v, id, render_special, &w);
    return w.pos > INT32_MAX ? INT32_MAX : (int)w.pos;
}

int64_t tok_decode(const tok_vocab *v, const int32_t *ids, int64_t n, bool render_special,
                   char *out, int64_t cap) {
    if (!v || n < 0 || (n > 0 && !ids) || cap < 0 || (cap > 0 && !out)) return 0;
    writer w = {out, cap > 0 ? cap - 1 : 0, 0, false};
    for (int64_t i = 0; i < n; i++) {
        w.strip = i == 0 && v->add_space_prefix;
        piece_put(v, ids[i], render_special, &w);
    }
    if (cap > 0) out[w.pos < w.cap ? w.pos : w.cap] = '\0';
    return w.pos;
}

/* ---- accessors ---- */

tok_model tok_get_model(const tok_vocab *v) { return v->model; }
int32_t tok_n_vocab(const tok_vocab *v) { return v->n; }
int32_t tok_bos(const tok_vocab *v) { return v->bos; }
int32_t tok_eos(const tok_vocab *v) { return v->eos; }
int32_t tok_unk(const tok_vocab *v) { return v->unk; }
bool tok_add_bos(const tok_vocab *v) { return v->add_bos; }
bool tok_add_eos(const tok_vocab *v) { return v->add_eos; }

bool tok_is_eog(const tok_vocab *v, int32_t id) {
    return id >= 0 && id < v->n && v->eog[id];
}

tok_type tok_get_type(const tok_vocab *v, int32_t id) {
    return id >= 0 && id < v->n ? (tok_type)v->type[id] : TOK_TYPE_UNDEFINED;
}

const char *tok_text(const tok_vocab *v, int32_t id) {
    return id >= 0 && id < v->n ? tok_str(v, id) : NULL;
}

int32_t tok_find(const tok_vocab *v, const char *text, size_t len) {
    return text || len == 0 ? tok_lookup(v, text ? text : "", len) : -1;
}

/* ---- loading ---- */

void tok_free(tok_vocab *v) {
    if (!v) return;
    void *owned[] = {
        v->arena, v->off, v->len, v->score, v->type, v->eog, v->map.slots,
        v->special, v->special_hash, v->special_slots, v->special_len, v->special_first,
        v->special_last, v->merge_arena, v->merge_off, v->merge_la, v->merge_lb, v->merge_slots,
    };
    for (size_t i = 0; i < sizeof owned / sizeof *owned; i++) free(owned[i]);
    free(v);
}

static bool str_is(const char *s, uint64_t n, const char *lit) {
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* Reads an optional token id key into *out; error when present but not an id of the vocab. */
static int read_id(const gguf_ctx *g, const tok_vocab *v, const char *key, int32_t *out,
                   char *err, size_t errlen) {
    if (gguf_find_key(g, key) < 0) return 0;
    int64_t id;
    if (!gguf_get_i64(g, key, &id)) {
        eng_set_err(err, errlen, "tokenizer: %s is not an integer", key);
        return -1;
    }
    if (id < 0 || id >= v->n) {
        eng_set_err(err, errlen, "tokenizer: %s = %lld is outside the vocabulary (%d tokens)", key,
                (long long)id, v->n);
        return -1;
    }
    *out = (int32_t)id;
    return 0;
}

static void read_bool(const gguf_ctx *g, const char *key, bool *out) {
    bool b;
    if (gguf_get_bool(g, key, &b)) *out = b;
}

/* Numeric array key of n elements of type want, or NULL (absent). *bad set when present but
 * of another type or length. */
static const void *numeric_array(const gguf_ctx *g, const char *key, gguf_type want, int32_t n,
                                 bool *bad) {
    gguf_type t;
    uint64_t cnt;
    *bad = false;
    if (gguf_find_key(g, key) < 0) return NULL;
    if (!gguf_get_arr(g, key, &t, &cnt) || t != want || cnt != (uint64_t)n) { *bad = true; return NULL; }
    const void *p = gguf_arr_data(g, key);
    if (!p) *bad = true;
    return p;
}

static int load_tokens(tok_vocab *v, const gguf_ctx *g, char *err, size_t errlen) {
    gguf_type t;
    uint64_t n;
    if (!gguf_get_arr(g, KEY("tokens"), &t, &n) || t != GGUF_TYPE_STRING) {
        eng_set_err(err, errlen, "tokenizer: " KEY("tokens") " is missing or not a string array");
        return -1;
    }
    if (n == 0 || n >= INT32_MAX) {
        eng_set_err(err, errlen, "tokenizer: vocabulary size %llu is out of range", (unsigned long long)n);
        return -1;
    }
    v->n = (int32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if (!gguf_arr_str(g, KEY("tokens"), i, &len) || len > UINT32_MAX / 2) {
            eng_set_err(err, errlen, "tokenizer: token %llu is unreadable", (unsigned long long)i);
            return -1;
        }
        total += len + 1;
    }
    v->arena = malloc(total);
    v->off = malloc(n * sizeof *v->off);
    v->len = malloc(n * sizeof *v->len);
    v->score = calloc(n, sizeof *v->score);
    v->type = malloc(n);
    v->eog = calloc(n, 1);
    uint64_t cap = map_cap_for(n);
    v->map.slots = calloc(cap, sizeof *v->map.slots);
    v->map.mask = cap - 1;
    if (!v->arena || !v->off || !v->len || !v->score || !v->type || !v->eog || !v->map.slots) {
        eng_set_err(err, errlen, "tokenizer: out of memory for %llu tokens", (unsigned long long)n);
        return -1;
    }
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        const char *s = gguf_arr_str(g, KEY("tokens"), i, &len);
        memcpy(v->arena + pos, s, len);
        v->arena[pos + len] = '\0';
        v->off[i] = pos;
        v->len[i] = (uint32_t)len;
        if (len > v->max_len) v->max_len = (uint32_t)len;
        pos += len + 1;
    }

    bool bad;
    const void *scores = numeric_array(g, KEY("scores"), GGUF_TYPE_FLOAT32, v->n, &bad);
    if (bad) {
        eng_set_err(err, errlen, "tokenizer: " KEY("scores") " is not an f32 array of %d entries", v->n);
        return -1;
    }
    if (scores) memcpy(v->score, scores, n * sizeof(float));
    const void *types = numeric_array(g, KEY("token_type"), GGUF_TYPE_INT32, v->n, &bad);
    if (bad) {
        eng_set_err(err, errlen, "tokenizer: " KEY("token_type") " is not an i32 array of %d entries", v->n);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++) {
        int32_t ty = TOK_TYPE_NORMAL; /* llama.cpp's default when the file gives no types */
        if (types) memcpy(&ty, (const char *)types + 4 * i, 4);
        if (ty < TOK_TYPE_UNDEFINED || ty > TOK_TYPE_BYTE) {
            eng_set_err(err, errlen, "tokenizer: token %llu has invalid type %d", (unsigned long long)i, ty);
            return -1;
        }
        v->type[i] = (uint8_t)ty;
    }
    for (int32_t i = 0; i < v->n; i++) map_insert(v, i);
    return 0;
}

static void mark_eog(tok_vocab *v) {
    static const char *const names[] = {
        "<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>",
    };
    if (v->eos >= 0) v->eog[v->eos] = 1;
    if (v->eot >= 0) v->eog[v->eot] = 1;
    if (v->eom >= 0) v->eog[v->eom] = 1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int32_t id = tok_lookup(v, names[i], strlen(names[i]));
        if (id >= 0) v->eog[id] = 1;
    }
}

tok_vocab *tok_load(const gguf_ctx *g, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!g) {
        eng_set_err(err, errlen, "tokenizer: no GGUF context");
        return NULL;
    }
    tok_vocab *v = calloc(1, sizeof *v);
    if (!v) {
        eng_set_err(err, errlen, "tokenizer: out of memory");
        return NULL;
    }
    v->bos = v->eos = v->unk = v->pad = v->eot = v->eom = -1;

    const char *model;
    uint64_t model_len;
    if (!gguf_get_str(g, KEY("model"), &model, &model_len)) {
        eng_set_err(err, errlen, "tokenizer: " KEY("model") " is missing");
        goto fail;
    }
    if (str_is(model, model_len, "llama")) v->model = TOK_MODEL_SPM;
    else if (str_is(model, model_len, "gpt2")) v->model = TOK_MODEL_BPE;
    else {
        eng_set_err(err, errlen, "tokenizer: unsupported model '%.*s' (kvseek supports 'llama' and 'gpt2')",
                (int)(model_len > 64 ? 64 : model_len), model);
        goto fail;
    }
    if (load_tokens(v, g, err, errlen)) goto fail;

    if (v->model == TOK_MODEL_SPM) {
        /* llama.cpp's defaults for SentencePiece files that omit the keys */
        v->add_bos = true;
        v->add_space_prefix = true;
        if (v->n > 2) { v->bos = 1; v->eos = 2; v->unk = 0; }
    } else {
        const char *pre = "";
        uint64_t pre_len = 0;
        gguf_get_str(g, KEY("pre"), &pre, &pre_len);
        v->pre = TOK_PRE_GPT2;
        if (str_is(pre, pre_len, "qwen2") || str_is(pre, pre_len, "deepseek-r1-qwen")) {
            v->pre = TOK_PRE_QWEN2;
        } else if (str_is(pre, pre_len, "llama3") || str_is(pre, pre_len, "llama-v3") ||
                   str_is(pre, pre_len, "llama-bpe") || str_is(pre, pre_len, "falcon3") ||
                   str_is(pre, pre_len, "smaug-bpe") || str_is(pre, pre_len, "dbrx")) {
            v->pre = TOK_PRE_LLAMA3;
            v->ignore_merges = !str_is(pre, pre_len, "smaug-bpe") && !str_is(pre, pre_len, "dbrx");
            v->add_bos = true;
        }
        if (tok_bpe_load_merges(v, g, err, errlen)) goto fail;
    }
    if (read_id(g, v, KEY("bos_token_id"), &v->bos, err, errlen) ||
        read_id(g, v, KEY("eos_token_id"), &v->eos, err, errlen) ||
        read_id(g, v, KEY("unknown_token_id"), &v->unk, err, errlen) ||
        read_id(g, v, KEY("padding_token_id"), &v->pad, err, errlen) ||
        read_id(g, v, KEY("eot_token_id"), &v->eot, err, errlen) ||
        read_id(g, v, KEY("eom_token_id"), &v->eom, err, errlen))
        goto fail;
    read_bool(g, KEY("add_bos_token"), &v->add_bos);
    read_bool(g, KEY("add_eos_token"), &v->add_eos);
    read_bool(g, KEY("add_space_prefix"), &v->add_space_prefix);
    if (v->model == TOK_MODEL_BPE) v->add_space_prefix = false; /* not used by byte-level BPE */

    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        int32_t id = tok_lookup(v, name, 6);
        if (id < 0) {
            char c = (char)b;
            id = tok_lookup(v, &c, 1);
        }
        v->byte_id[b] = id;
    }
    if (build_specials(v)) {
        eng_set_err(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    mark_eog(v);
    return v;
fail:
    tok_free(v);
    return NULL;
}
