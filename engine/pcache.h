/* The automatic prefix cache: prompts already prefilled, kept as frozen sequences whose pages
 * new requests borrow read-only (eng_seq_continue), so a conversation that re-sends its history
 * prefills only what is new. Entries are looked up by the longest common prefix of tokens and
 * evicted least-recently-used when memory is needed.
 * Not thread-safe: the scheduler's engine thread owns the cache. */
#ifndef KVSEEK_PCACHE_H
#define KVSEEK_PCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct eng_pcache eng_pcache;

/* min_tokens: prefixes shorter than this are neither cached nor reused (not worth an entry).
 * NULL when out of memory. */
eng_pcache *eng_pcache_create(int min_tokens);
void eng_pcache_free(eng_pcache *c); /* frees every entry's sequence; accepts NULL */

/* Takes seq (frozen at eng_seq_pos(seq) == n tokens, never advanced again) as the entry for
 * tokens[0, n) (copied). Entries whose tokens are a prefix of these are dropped: the new one
 * serves every request they would, and shares their pages when it continued one of them.
 * Returns 0, or -1 (out of memory: seq is freed). */
int eng_pcache_insert(eng_pcache *c, eng_seq *seq, const int32_t *tokens, int n);

/* The entry to start a prompt from: the longest reuse of tokens[0, n), at most max_reuse
 * tokens, at least min_tokens. whole: only entries entirely a prefix of the prompt and made with
 * the selector `kind` (a selector that learns from queries continues only a whole entry made
 * under its own kind). Returns the entry's sequence and *reuse, or NULL. The entry is marked
 * used (moved to the back of the eviction order). */
eng_seq *eng_pcache_lookup(eng_pcache *c, const int32_t *tokens, int n, int max_reuse, bool whole,
                           idx_kind kind, int *reuse);

/* Drops the least recently used entry held in memory (never `keep`), spilling it to the disk
 * tier when there is one. 1 when one was dropped, 0 when none is left. Its pages are freed once
 * no running sequence borrows them. */
int eng_pcache_evict(eng_pcache *c, const eng_seq *keep);

/* The disk tier: evicted entries are written under dir (created), one context file each
 * (engine/context.c: written under a temporary name, fsynced, renamed; checksummed), and stay
 * entries as mappings of their files, which the memory budget does not count; past disk_budget
 * bytes the least recently used files are deleted. Entries already in dir (a restart) are mapped
 * now; a file that is truncated, corrupted or of another model is removed with one log line, as
 * is a write cut short. proto: a sequence of the scheduler's (model, capacity, storage). A
 * mapped entry is dense: a selector that learns from queries starts from it only by prefilling.
 * 0, or -1 with a reason. */
int eng_pcache_set_dir(eng_pcache *c, const char *dir, size_t disk_budget, eng_seq *proto, char *err,
                       size_t errlen);

typedef struct {
    int entries;
    size_t tokens;        /* tokens held by the entries */
    size_t own_bytes;     /* memory the entries' sequences hold themselves (indexes, partial
                           * pages): the pages they borrow are counted by their stores */
    size_t index_bytes;   /* ... of which their selectors' state (in no KV store) */
    uint64_t evictions;   /* entries dropped from memory (spilled or not) */
    uint64_t spills;      /* ... written to the disk tier */
    int disk_entries;     /* entries mapped from files */
    size_t disk_bytes;
} eng_pcache_stats;
void eng_pcache_get_stats(const eng_pcache *c, eng_pcache_stats *st);

#endif
