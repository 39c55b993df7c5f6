/* Internals shared by the grammar front ends (gram_regex.c, gram_schema.c) and the matcher
 * (gram_core.c): a context-free grammar over bytes built from sequences of byte sets and rule
 * references, and the builder the front ends write it with.
 * defines: gram_cs, gseq, gbuild, the sq_* and gb_* builder functions, gram_utf8_* helpers */
#ifndef KVSEEK_GRAM_INT_H
#define KVSEEK_GRAM_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grammar.h"

/* A set of bytes. */
typedef struct { uint64_t w[4]; } gram_cs;
static inline void cs_add(gram_cs *c, int b) { c->w[b >> 6] |= 1ull << (b & 63); }
static inline void cs_range(gram_cs *c, int lo, int hi) { for (int b = lo; b <= hi; b++) cs_add(c, b); }
static inline bool cs_has(const gram_cs *c, int b) { return c->w[b >> 6] >> (b & 63) & 1; }

/* An element: a byte set, a rule reference, or the end of an alternative (2 kind bits). */
enum { EL_CS = 0, EL_REF = 1, EL_END = 2 };
#define EL_MAKE(k, a) ((uint32_t)(k) << 30 | (uint32_t)(a))
#define EL_KIND(e) ((e) >> 30)
#define EL_ARG(e) ((e) & 0x3fffffffu)

/* Limits that keep a hostile schema or regex from building a huge grammar. */
enum { GB_MAX_ELEMS = 1 << 20, GB_MAX_RULES = 1 << 18, GB_MAX_REP = 1000 };

/* One alternative being built. */
typedef struct { uint32_t *v; int n, cap; } gseq;

typedef struct {
    gram_cs *cs;
    int n_cs, cap_cs;
    uint32_t *cs_ht; /* charset dedup: index + 1, 0 empty */
    int cs_htcap;
    struct gb_rule { gseq *alts; int n, cap; } *rules;
    int n_rules, cap_rules;
    long n_elems;
    int r_value, r_object, r_string, r_char, r_ws, r_wsi; /* shared JSON rules, -1 until made */
    bool failed;
    char *err;
    size_t errlen;
} gbuild;

void gb_init(gbuild *b, char *err, size_t errlen);
void gb_free(gbuild *b);
/* First failure wins: later ones keep the first message. */
void gb_fail(gbuild *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int gb_rule(gbuild *b);                              /* a new rule without alternatives */
void gb_add_alt(gbuild *b, int rule, const gseq *s); /* copies s */
/* Turns the builder into a grammar with start rule root (checks: no rule reaches itself
 * without writing a byte; the root matches something). Frees the builder's contents. */
gram *gb_finish(gbuild *b, int root);

void sq_free(gseq *s);
void sq_push(gbuild *b, gseq *s, uint32_t el);
void sq_cat(gbuild *b, gseq *s, const gseq *x);
void sq_cs(gbuild *b, gseq *s, const gram_cs *c);
void sq_byte(gbuild *b, gseq *s, int byte);
void sq_lit(gbuild *b, gseq *s, const char *str, size_t n);
void sq_ref(gbuild *b, gseq *s, int rule);
/* Appends a reference to a new rule whose alternatives are alts[0..n) (x inline when n is 1). */
void sq_alts(gbuild *b, gseq *s, const gseq *alts, int n);
/* x repeated min..max times (max < 0: unbounded), as nested optional rules. */
void sq_rep(gbuild *b, gseq *s, const gseq *x, int min, int max);

/* Code point ranges [lo, hi] (sorted, disjoint after cr_norm). */
typedef struct { uint32_t lo, hi; } gram_cr;
typedef struct { gram_cr *r; int n, cap; } gram_crs;
void crs_add(gbuild *b, gram_crs *s, uint32_t lo, uint32_t hi);
void crs_norm(gram_crs *s);
void crs_negate(gbuild *b, gram_crs *s); /* complement in [0, 0x10FFFF] */
/* Appends a match of one character of s as UTF-8. json: the character as written inside a
 * JSON string ('"', '\\' and control characters escaped). */
void sq_chars(gbuild *b, gseq *out, const gram_crs *s, bool json);

/* Compiles regex re into out (json: as the content of a JSON string). Position errors name
 * where = "regex" or "pattern". */
void gram_regex_seq(gbuild *b, gseq *out, const char *re, size_t len, bool json, const char *where);


#endif
