/* The scheduler (see scheduler.h): a bounded FIFO of submitted requests, n_parallel slots each
 * holding a sequence, and one engine thread that loops: admit queued requests into free slots,
 * drop cancelled ones, build one batch (a decode row per running sequence, then prompt tokens of
 * prefilling ones, oldest first, up to batch_rows), run eng_forward_batch, sample every row that
 * produced logits, and push the token events.
 *
 * A request is shared by its submitter and the engine through a reference count: the submitter's
 * handle (dropped by eng_req_release) and the engine's (dropped when the request finishes). The
 * channel of events is a growable FIFO under the request's own mutex, so a slow reader never
 * blocks the engine. Workload assumed: tens of concurrent requests, a step every few tens of ms. */
#include "scheduler.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "context.h"
#include "grammar.h"
#include "kvcache.h"
#include "pcache.h"
#include "tok.h"

typedef enum { REQ_QUEUED = 0, REQ_PREFILL, REQ_DECODE, REQ_DONE } req_state;

struct eng_req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                /* under mu */
    atomic_bool cancel;
    /* channel: evs[head .. head+count) */
    eng_event *evs;
    int head, count, cap;
    bool final_pushed, final_popped;

    /* set by submit, then read-only */
    int n_prompt, max_tokens;
    eng_sampler_params sp;
    char *stop[ENG_MAX_STOP];
    size_t stop_len[ENG_MAX_STOP];
    int n_stop;
    size_t max_stop_len;
    bool stop_inclusive, ignore_eos;
    int top_logprobs;
    eng_attn_params attn;
    bool has_attn;
    eng_ctx *ctx;            /* the context the prompt continues (a reference), or NULL */
    bool build;              /* a context build job: prefill only, hand the sequence over */
    bool no_cache;           /* the request opted out of the prefix cache */
    int obs_tokens;
    gram *grammar;           /* owned; NULL: unconstrained */
    int trace_max;           /* trace_buckets asked for (0: no trace) ... */
    int trace_nb, trace_bucket, trace_base; /* ... and as set up at admission */
    eng_prompt_lp *plp;      /* prompt_logprobs: n_prompt entries filled as the prefill runs,
                              * handed to the first token event; NULL: not asked for */
    eng_req *leader;         /* n > 1: the group's first request (a reference), whose prompt this
                              * one continues instead of prefilling it again; NULL: none */
    atomic_int fed;          /* n_fed, readable by other threads (progress) */
    double t_submit;

    /* engine thread only */
    eng_req *next;           /* queue link */
    req_state state;
    int32_t *hist;           /* prompt then generated tokens; capacity n_prompt + max_tokens */
    int n_hist, n_fed, n_gen;
    int n_cached;            /* prompt tokens taken from the prefix cache */
    bool cached;             /* its prompt went into the prefix cache (or will not) */
    eng_sampler *smp;
    gram_state *gs;          /* the grammar's state, created with smp */
    char *out;               /* generated text; out[0 .. sent) has been released */
    size_t out_len, out_cap, sent;
    uint64_t admit_seq;
    double t_admit, t_first, t_last;
};

typedef struct {
    eng_seq *seq;
    eng_req *req;            /* NULL when free; written under the scheduler's mutex */
    float *logits;           /* n_vocab */
    uint32_t *allow;         /* the grammar's token mask this step (gram_mask_words) */
    int row;                 /* the row of this step that produced logits, or -1 */
    float *plog;             /* ENG_PROMPT_LOGPROB_ROWS rows of logits for prompt logprobs,
                              * allocated at the first request that asks for them */
    int plp_from, plp_n;     /* this step: prompt positions plp_from.. fed with logits in plog */
    int32_t tok;             /* token sampled this step */
    float lp;
} slot;

struct eng_sched {
    eng_model *m;
    const tok_vocab *vocab;
    eng_sched_params p;
    int n_vocab;
    pthread_t th;
    bool started;

    pthread_mutex_t mu;      /* guards the queue, the slots' req pointers, stopping, stats */
    pthread_cond_t cv;
    eng_req *q_head, *q_tail;
    int q_len, n_active;
    bool stopping;
    uint64_t admit_counter;
    eng_sched_stats st;

    slot *slots;
    eng_batch_row *rows;     /* batch_rows */
    eng_pcache *pc;          /* NULL: no prefix cache; engine thread (and admit_locked) only */
    size_t tok_bytes, fixed_bytes; /* KV a sequence adds per token, and holds at any length */
    size_t pinned;           /* under mu */
    size_t mem_used, mem_running, mem_cached; /* under mu: the engine's last measure */
    int cache_entries;
    size_t cache_tokens;
    eng_pcache_stats ps;   /* under mu: the engine's last copy */
    eng_attn_params attn_default; /* the model's, for requests that give none */
    gram_vocab *gv;          /* the vocabulary's byte trie, built at the first grammar request
                              * (engine thread only) */
    char gv_err[160];        /* why it could not be built */
};

const char *eng_sched_strerror(int code) {
    switch (code) {
    case 0: return "ok";
    case ENG_SCHED_ENOMEM: return "out of memory";
    case ENG_SCHED_EARG: return "invalid argument";
    case ENG_SCHED_EFULL: return "the request queue is full";
    case ENG_SCHED_ESTOPPED: return "the server is shutting down";
    case ENG_SCHED_ETOOLONG: return "prompt and max_tokens exceed the context size";
    case ENG_SCHED_EUNAVAIL: return "the model's device failed; the server must be restarted";
    case ENG_SCHED_ENOSPACE: return "the request's KV cache would exceed the server's memory budget";
    default: return "unknown error";
    }
}

const char *eng_finish_name(eng_finish f) {
    static const char *names[] = {"none", "length", "eos", "stop", "cancelled", "error"};
    return f >= ENG_FINISH_NONE && f <= ENG_FINISH_ERROR ? names[f] : "unknown";
}


/* ---- requests and their channels ---- */

static void req_unref(eng_req *r);

static void req_free(eng_req *r) {
    for (int i = r->head; i < r->head + r->count; i++) eng_event_clear(&r->evs[i]);
    eng_ctx_unref(r->ctx);
    free(r->evs);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->hist);
    free(r->plp);
    free(r->out);
    eng_sampler_free(r->smp);
    gram_state_free(r->gs);
    gram_free(r->grammar);
    if (r->leader) req_unref(r->leader);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static void req_unref(eng_req *r) {
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left == 0) req_free(r);
}

/* Appends an event (taking what it owns). When the channel cannot grow, the token is dropped
 * but a final event is always kept: the last slot is reserved for it. */
static void req_push(eng_req *r, eng_event *ev) {
    pthread_mutex_lock(&r->mu);
    if (r->head + r->count == r->cap) {
        if (r->head > 0) {
            memmove(r->evs, r->evs + r->head, sizeof(eng_event) * r->count);
            r->head = 0;
        } else {
            int nc = r->cap ? 2 * r->cap : 16;
            eng_event *ne = realloc(r->evs, sizeof(eng_event) * nc);
            if (ne) {
                r->evs = ne;
                r->cap = nc;
            }
        }
    }
    if (r->head + r->count < r->cap) {
        r->evs[r->head + r->count++] = *ev;
    } else if (ev->finish != ENG_FINISH_NONE && r->count > 0) {
        eng_event_clear(&r->evs[r->head + r->count - 1]); /* out of memory: the end matters most */
        r->evs[r->head + r->count - 1] = *ev;
    } else {
        eng_event_clear(ev);
    }
    if (ev->finish != ENG_FINISH_NONE) r->final_pushed = true;
    memset(ev, 0, sizeof *ev);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

int eng_req_next(eng_req *r, eng_event *ev, int timeout_ms) {
    pthread_mutex_lock(&r->mu);
    struct timespec dl;
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) { dl.tv_sec++; dl.tv_nsec -= 1000000000L; }
    }
    int rc = 0;
    for (;;) {
        if (r->count > 0) {
            *ev = r->evs[r->head++];
            if (--r->count == 0) r->head = 0;
            if (ev->finish != ENG_FINISH_NONE) r->final_popped = true;
            rc = 1;
            break;
        }
        if (r->final_popped) { rc = -1; break; }
        if (timeout_ms < 0) {
            pthread_cond_wait(&r->cv, &r->mu);
        } else if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) {
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void eng_event_clear(eng_event *ev) {
    if (!ev) return;
    eng_seq_free(ev->seq);
    ev->seq = NULL;
    free(ev->text);
    ev->text = NULL;
    ev->text_len = 0;
    free(ev->prompt_lp);
    ev->prompt_lp = NULL;
    free(ev->trace);
    ev->trace = NULL;
}

void eng_req_cancel(eng_req *r) { atomic_store(&r->cancel, true); }

void eng_req_release(eng_req *r) {
    if (!r) return;
    atomic_store(&r->cancel, true); /* a no-op when it already finished */
    req_unref(r);
}

/* ---- memory ---- */

/* What a request's sequence may come to hold: its whole prompt and max_tokens, less the tokens
 * it borrows from a cached prefix (counted by the cache's stores). */
static size_t req_need(const eng_sched *s, const eng_req *r, int reuse) {
    int64_t n = (int64_t)r->n_prompt + r->max_tokens - reuse;
    if (n > s->p.n_ctx) n = s->p.n_ctx;
    return s->fixed_bytes + (size_t)(n > 0 ? n : 0) * s->tok_bytes;
}

/* An index's memory: what a sequence holds beyond its KV store. */
static size_t index_bytes(const eng_seq *q) {
    size_t all = eng_seq_bytes(q), kv = kv_bytes(eng_seq_kv((eng_seq *)q));
    return all > kv ? all - kv : 0;
}

/* Memory held now (every KV store of the process, the indexes of slots and cache entries, the
 * pinned contexts) and what the running requests may still add. Engine thread. */
static size_t mem_held(const eng_sched *s, size_t *growth, size_t *running) {
    size_t held = kv_bytes_total() + s->pinned, grow = 0, run = 0;
    for (int i = 0; i < s->p.n_parallel; i++) {
        const slot *sl = &s->slots[i];
        held += index_bytes(sl->seq);
        if (!sl->req) continue;
        run += eng_seq_bytes(sl->seq);
        size_t need = req_need(s, sl->req, 0), have = s->fixed_bytes + (size_t)eng_seq_pos(sl->seq) * s->tok_bytes;
        if (need > have) grow += need - have;
    }
    if (s->pc) {
        eng_pcache_stats ps;
        eng_pcache_get_stats(s->pc, &ps);
        held += ps.index_bytes;
    }
    if (growth) *growth = grow;
    if (running) *running = run;
    return held;
}

/* The selector a request runs with, and whether it may start from a partly matched entry. */
static idx_kind req_kind(const eng_sched *s, const eng_req *r, bool *whole) {
    const eng_attn_params a = eng_attn_resolve(s->m, r->has_attn ? &r->attn : &s->attn_default);
    const idx_kind k = a.selector;
    *whole = (idx_kind_caps(k) & IDX_CAP_OBSERVE) != 0;
    return k;
}

/* Whether r may start now within the budget, evicting cached prefixes (never the one it would
 * start from) until it does. Engine thread, under mu. */
static bool fits_budget(eng_sched *s, eng_req *r) {
    if (!s->p.mem_budget) return true;
    int reuse = 0;
    const eng_seq *keep = NULL;
    if (!r->no_cache) {
        bool whole;
        idx_kind k = req_kind(s, r, &whole);
        keep = eng_pcache_lookup(s->pc, r->hist, r->n_prompt, r->n_prompt - 2, whole, k, &reuse);
    }
    const size_t need = req_need(s, r, reuse);
    for (;;) {
        size_t growth, held = mem_held(s, &growth, NULL);
        if (held + growth + need <= s->p.mem_budget) return true;
        if (!s->pc || !eng_pcache_evict(s->pc, keep)) break;
        s->st.cache_evictions++;
    }
    /* alone it passed submit's check: nothing running means nothing else can give way */
    return s->n_active == 0;
}

/* ---- submit ---- */

static int submit(eng_sched *s, const eng_gen_params *p, bool build, int obs_tokens, eng_req **out);
static int make_checked(eng_sched *s, const eng_gen_params *p, bool build, int obs_tokens, eng_req **out,
                        bool *taken);

int eng_sched_submit(eng_sched *s, const eng_gen_params *p, eng_req **out) {
    return submit(s, p, false, 0, out);
}

int eng_sched_submit_build(eng_sched *s, const int32_t *tokens, int n, int obs_tokens, eng_req **out) {
    eng_gen_params p = {.prompt = tokens, .n_prompt = n, .max_tokens = 1};
    p.sampling.temperature = 0.0f;
    p.sampling.top_p = 1.0f;
    p.sampling.repeat_penalty = 1.0f;
    return submit(s, &p, true, obs_tokens, out);
}

double eng_req_progress(const eng_req *r) {
    return r->n_prompt > 0 ? (double)atomic_load(&((eng_req *)r)->fed) / r->n_prompt : 0.0;
}

/* Builds a request (not queued). On failure the grammar is freed too. */
static int make_req(eng_sched *s, const eng_gen_params *p, bool build, int obs_tokens, eng_req **out) {
    *out = NULL;
    bool taken = false; /* the grammar belongs to the request (freed with it) */
    int rc = make_checked(s, p, build, obs_tokens, out, &taken);
    if (rc && !taken) gram_free(p->grammar);
    return rc;
}

static int make_checked(eng_sched *s, const eng_gen_params *p, bool build, int obs_tokens, eng_req **out,
                        bool *taken) {
    if (!p->prompt || p->n_prompt < 1 || p->max_tokens < 1 || p->n_stop < 0 ||
        p->n_stop > ENG_MAX_STOP || p->top_logprobs < 0 || p->top_logprobs > ENG_MAX_TOP_LOGPROBS ||
        p->trace_buckets < 0 || p->trace_buckets > ENG_TRACE_MAX_BUCKETS)
        return ENG_SCHED_EARG;
    for (int i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= s->n_vocab) return ENG_SCHED_EARG;
    char aerr[8];
    if (p->attn && eng_attn_check(p->attn, aerr, sizeof aerr)) return ENG_SCHED_EARG;
    if (build ? p->n_prompt > s->p.n_ctx + s->p.ctx_max_tokens
              : (int64_t)p->n_prompt + p->max_tokens > s->p.n_ctx ||
                (p->context && eng_ctx_n_tokens(p->context) > s->p.ctx_max_tokens))
        return ENG_SCHED_ETOOLONG;

    eng_req *r = calloc(1, sizeof *r);
    if (!r) return ENG_SCHED_ENOMEM;
    r->grammar = build ? NULL : p->grammar;
    *taken = r->grammar != NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    r->refs = 2; /* the caller's handle and the engine's */
    r->n_prompt = p->n_prompt;
    r->max_tokens = p->max_tokens;
    r->sp = p->sampling;
    r->stop_inclusive = p->stop_inclusive;
    r->ignore_eos = p->ignore_eos && !p->grammar; /* the grammar decides where the text ends */
    r->top_logprobs = p->top_logprobs;
    r->trace_max = build ? 0 : p->trace_buckets;
    if (p->attn) {
        r->attn = *p->attn;
        r->has_attn = true;
    }
    r->build = build;
    r->no_cache = p->no_cache || build || p->context || !s->pc || p->prompt_logprobs;
    if (p->prompt_logprobs && !build) {
        if (!(r->plp = calloc(p->n_prompt, sizeof *r->plp))) goto nomem;
        r->plp[0] = (eng_prompt_lp){NAN, -1, NAN};
    }
    r->obs_tokens = obs_tokens > 0 ? obs_tokens : 1;
    if (p->context) {
        eng_ctx_ref(p->context);
        r->ctx = p->context;
    }
    r->hist = malloc(sizeof(int32_t) * ((size_t)p->n_prompt + p->max_tokens));
    if (!r->hist) goto nomem;
    memcpy(r->hist, p->prompt, sizeof(int32_t) * p->n_prompt);
    r->n_hist = p->n_prompt;
    for (int i = 0; i < p->n_stop; i++) {
        if (!p->stop[i] || !p->stop[i][0]) continue;
        size_t len = strlen(p->stop[i]);
        if (!(r->stop[r->n_stop] = strdup(p->stop[i]))) goto nomem;
        r->stop_len[r->n_stop++] = len;
        if (len > r->max_stop_len) r->max_stop_len = len;
    }
    r->t_submit = krn_now_s() * 1e3;
    *out = r;
    return 0;
nomem:
    req_free(r);
    return ENG_SCHED_ENOMEM;
}

/* Queues the n requests together, or none of them (freed) with the reason. */
static int enqueue(eng_sched *s, eng_req **rs, int n, bool build) {
    pthread_mutex_lock(&s->mu);
    int free_slots = s->p.n_parallel - s->n_active;
    int rc = 0;
    size_t need = 0;
    for (int i = 0; i < n; i++) need += req_need(s, rs[i], rs[i]->leader ? rs[i]->n_prompt - 2 : 0);
    if (s->stopping) rc = ENG_SCHED_ESTOPPED;
    else if (!build && s->p.mem_budget && need + s->pinned > s->p.mem_budget) rc = ENG_SCHED_ENOSPACE;
    else if (eng_model_failed(s->m)) rc = ENG_SCHED_EUNAVAIL;
    else if (s->q_len + n - 1 >= s->p.queue_cap + (free_slots > 0 ? free_slots : 0)) rc = ENG_SCHED_EFULL;
    if (rc == 0) {
        for (int i = 0; i < n; i++) {
            if (s->q_tail) s->q_tail->next = rs[i];
            else s->q_head = rs[i];
            s->q_tail = rs[i];
            s->q_len++;
        }
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc)
        for (int i = n - 1; i >= 0; i--) req_free(rs[i]); /* followers first: they hold the leader */
    return rc;
}

static int submit(eng_sched *s, const eng_gen_params *p, bool build, int obs_tokens, eng_req **out) {
    eng_req *r;
    int rc = make_req(s, p, build, obs_tokens, &r);
    if (rc) return rc;
    rc = enqueue(s, &r, 1, build);
    *out = rc ? NULL : r;
    return rc;
}

int eng_sched_submit_group(eng_sched *s, const eng_gen_params *ps, int n, eng_req **out) {
    for (int i = 0; i < n; i++) out[i] = NULL;
    int rc = 0;
    if (n < 1 || n > s->p.n_parallel) rc = ENG_SCHED_EARG;
    for (int i = 1; i < n && !rc; i++)
        if (ps[i].n_prompt != ps[0].n_prompt || ps[i].context != ps[0].context ||
            (ps[0].n_prompt > 0 && memcmp(ps[i].prompt, ps[0].prompt, sizeof(int32_t) * ps[0].n_prompt)))
            rc = ENG_SCHED_EARG;
    int made = 0; /* requests made; the grammar of the one that failed is freed already */
    for (int i = 0; i < n && !rc; i++, made++) {
        if ((rc = make_req(s, &ps[i], false, 0, &out[i]))) {
            made++;
            break;
        }
        if (i > 0 && !ps[0].context) { /* continues the leader's prefill instead of its own */
            out[i]->leader = out[0];
            out[i]->no_cache = true;
            pthread_mutex_lock(&out[0]->mu);
            out[0]->refs++;
            pthread_mutex_unlock(&out[0]->mu);
        }
    }
    if (rc) {
        for (int i = made; i < n; i++) gram_free(ps[i].grammar);
        for (int i = n - 1; i >= 0; i--) if (out[i]) req_free(out[i]);
        for (int i = 0; i < n; i++) out[i] = NULL;
        return rc;
    }
    rc = enqueue(s, out, n, false);
    if (rc) for (int i = 0; i < n; i++) out[i] = NULL;
    return rc;
}

/* ---- engine side ---- */

/* Ends a request: pushes its final event (carrying the last token when tok_ev has one), frees
 * its slot and drops the engine's reference. */
static void finish_req(eng_sched *s, slot *sl, eng_req *r, eng_finish why, eng_event *tok_ev,
                       const char *error) {
    eng_event ev;
    if (tok_ev) {
        ev = *tok_ev;
    } else {
        memset(&ev, 0, sizeof ev);
        ev.t_ms = krn_now_s() * 1e3;
    }
    /* whatever text is still held back is released now (a cut at a stop string already
     * shortened out_len) */
    if (r->sent < r->out_len) {
        size_t add = r->out_len - r->sent;
        char *t = realloc(ev.text, (size_t)ev.text_len + add + 1);
        if (t) {
            memcpy(t + ev.text_len, r->out + r->sent, add);
            ev.text_len += (int)add;
            t[ev.text_len] = 0;
            ev.text = t;
        }
        r->sent = r->out_len;
    }
    ev.finish = why;
    ev.n_prompt = r->n_prompt;
    ev.n_gen = r->n_gen;
    double t_end = krn_now_s() * 1e3;
    if (r->t_admit > 0) ev.t_queue_ms = r->t_admit - r->t_submit;
    if (r->t_first > 0) {
        ev.t_prefill_ms = r->t_first - r->t_admit;
        ev.t_decode_ms = (r->t_last > 0 ? r->t_last : t_end) - r->t_first;
    }
    if (error) snprintf(ev.error, sizeof ev.error, "%s", error);
    ev.n_cached = r->n_cached;
    if (sl) {
        eng_attn_params a;
        eng_seq_get_attn(sl->seq, &a);
        snprintf(ev.selector, sizeof ev.selector, "%s", idx_kind_name(a.selector));
        eng_seq_attn_stats(sl->seq, &ev.attn);
    }
    r->state = REQ_DONE;
    eng_sampler_free(r->smp);
    r->smp = NULL;
    gram_state_free(r->gs);
    r->gs = NULL;
    /* counted free and finished before the client hears of it, so that its next request is not
     * refused for the slot this one held: admission runs on this thread, after the reset below */
    pthread_mutex_lock(&s->mu);
    if (sl) s->n_active--;
    s->st.finished[why]++;
    pthread_mutex_unlock(&s->mu);
    req_push(r, &ev);
    if (sl) { /* the slot's memory goes back (what a cached prompt shares stays with it) */
        eng_seq_reset(sl->seq);
        eng_seq_trim(sl->seq);
        pthread_mutex_lock(&s->mu);
        sl->req = NULL;
        pthread_mutex_unlock(&s->mu);
    }
    req_unref(r);
}

/* Length of the longest suffix of s[0, len) that is a proper prefix of a stop string. */
static size_t stop_holdback(const eng_req *r, const char *s, size_t len) {
    size_t best = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t L = r->stop_len[i] - 1 < len ? r->stop_len[i] - 1 : len;
        for (; L > best; L--)
            if (!memcmp(s + len - L, r->stop[i], L)) { best = L; break; }
    }
    return best;
}

static int out_append(eng_req *r, const char *b, size_t n) {
    if (r->out_len + n + 1 > r->out_cap) {
        size_t nc = 2 * (r->out_len + n + 1) + 64;
        char *no = realloc(r->out, nc);
        if (!no) return -1;
        r->out = no;
        r->out_cap = nc;
    }
    memcpy(r->out + r->out_len, b, n);
    r->out_len += n;
    r->out[r->out_len] = 0;
    return 0;
}

/* The alternatives with the highest logits and their log-probabilities (before penalties). */
static void top_logprobs(const float *logits, int n_vocab, int k, eng_event *ev) {
    float mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++) if (logits[i] > mx) mx = logits[i];
    double z = 0.0;
    for (int i = 0; i < n_vocab; i++) z += exp((double)logits[i] - mx);
    const float log_z = mx + (float)log(z);
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (n == k && l <= ev->top_logprob[n - 1]) continue;
        int j = n < k ? n++ : n - 1;
        while (j > 0 && ev->top_logprob[j - 1] < l) {
            ev->top_logprob[j] = ev->top_logprob[j - 1];
            ev->top_id[j] = ev->top_id[j - 1];
            j--;
        }
        ev->top_logprob[j] = l;
        ev->top_id[j] = i;
    }
    for (int i = 0; i < n; i++) ev->top_logprob[i] -= log_z;
    ev->n_top = n;
}

/* Takes the token sampled for r: updates its text, decides whether it ends the request and
 * pushes the event. ev already holds the token, its logprob and alternatives. */
static void take_token(eng_sched *s, slot *sl, eng_req *r, eng_event *ev) {
    const int32_t tok = ev->id;
    const double t = ev->t_ms;
    if (r->n_gen == 0 && r->plp) {
        ev->prompt_lp = r->plp;
        r->plp = NULL;
    }
    if (r->t_first == 0) r->t_first = t;
    r->t_last = t;
    r->hist[r->n_hist++] = tok;
    r->n_gen++;
    pthread_mutex_lock(&s->mu);
    s->st.generated_tokens++;
    pthread_mutex_unlock(&s->mu);

    const bool eog = tok_is_eog(s->vocab, tok);
    const tok_type tt = tok_get_type(s->vocab, tok);
    ev->special = eog || tt == TOK_TYPE_CONTROL;
    eng_finish why = ENG_FINISH_NONE;
    if (eog && !r->ignore_eos) {
        why = ENG_FINISH_EOS;
    } else {
        char piece[256];
        int pl = tok_piece(s->vocab, tok, false, piece, sizeof piece);
        char *big = NULL;
        if (pl > (int)sizeof piece && (big = malloc(pl))) tok_piece(s->vocab, tok, false, big, pl);
        if (pl > (int)sizeof piece && !big) pl = sizeof piece;
        if (pl > 0 && out_append(r, big ? big : piece, pl)) {
            free(big);
            finish_req(s, sl, r, ENG_FINISH_ERROR, ev, "out of memory");
            return;
        }
        free(big);
        /* a stop string can only start in the unreleased text */
        size_t best = (size_t)-1, best_len = 0;
        for (int i = 0; i < r->n_stop; i++) {
            const char *hit = memmem(r->out + r->sent, r->out_len - r->sent, r->stop[i], r->stop_len[i]);
            if (hit && (size_t)(hit - r->out) < best) {
                best = hit - r->out;
                best_len = r->stop_len[i];
            }
        }
        if (best != (size_t)-1) {
            r->out_len = best + (r->stop_inclusive ? best_len : 0);
            r->out[r->out_len] = 0;
            why = ENG_FINISH_STOP;
        }
    }
    if (why == ENG_FINISH_NONE && r->n_gen >= r->max_tokens) why = ENG_FINISH_LENGTH;
    if (why == ENG_FINISH_NONE && eng_seq_pos(sl->seq) >= eng_seq_capacity(sl->seq))
        why = ENG_FINISH_LENGTH;
    if (why != ENG_FINISH_NONE) {
        finish_req(s, sl, r, why, ev, NULL);
        return;
    }
    size_t end = r->out_len - stop_holdback(r, r->out, r->out_len);
    if (end < r->sent) end = r->sent;
    end = tok_utf8_cut(r->out, r->sent, end); /* an incomplete character waits */
    if (end > r->sent) {
        ev->text = malloc(end - r->sent + 1);
        if (ev->text) {
            memcpy(ev->text, r->out + r->sent, end - r->sent);
            ev->text_len = (int)(end - r->sent);
            ev->text[ev->text_len] = 0;
            r->sent = end;
        }
    }
    r->state = REQ_DECODE;
    req_push(r, ev);
}

/* A build job's prefill is complete: its sequence goes to the reader with the final event and
 * the slot gets a fresh one. */
static void hand_over(eng_sched *s, slot *sl, eng_req *r) {
    char err[256];
    eng_seq *fresh = eng_seq_create(s->m, s->p.n_ctx + s->p.ctx_max_tokens, err, sizeof err);
    if (!fresh) {
        finish_req(s, sl, r, ENG_FINISH_ERROR, NULL, err);
        return;
    }
    eng_event ev;
    memset(&ev, 0, sizeof ev);
    ev.t_ms = krn_now_s() * 1e3;
    ev.seq = sl->seq;
    sl->seq = fresh;
    r->t_first = ev.t_ms;
    finish_req(s, sl, r, ENG_FINISH_LENGTH, &ev, NULL);
}

/* Moves queued requests into free slots (under s->mu). Returns the admitted ones that were
 * cancelled while waiting in *cancelled (a list through ->next). */
static eng_req *admit_locked(eng_sched *s) {
    eng_req *cancelled = NULL;
    s->st.waiting_for_memory = 0;
    for (int i = 0; i < s->p.n_parallel && s->q_head; i++) {
        if (s->slots[i].req) continue;
        eng_req *r = s->q_head;
        if (!atomic_load(&r->cancel) && !r->build && !fits_budget(s, r)) {
            s->st.waiting_for_memory = 1; /* first in, first served: the rest wait behind it */
            break;
        }
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        s->q_len--;
        r->next = NULL;
        if (atomic_load(&r->cancel)) {
            r->next = cancelled;
            cancelled = r;
            i--; /* the slot is still free */
            continue;
        }
        s->slots[i].req = r;
        s->n_active++;
        r->state = REQ_PREFILL;
        r->admit_seq = s->admit_counter++;
    }
    return cancelled;
}

/* Starts a newly admitted request from the longest cached prefix of its prompt. The last two
 * prompt tokens are always prefilled: the last one's logits are needed, and a prompt's last
 * slice runs densely only when it has more than one row (a single row is a decode row). */
static void start_from_cache(eng_sched *s, slot *sl, eng_req *r) {
    bool whole;
    idx_kind k = req_kind(s, r, &whole);
    int reuse = 0;
    eng_seq *src = eng_pcache_lookup(s->pc, r->hist, r->n_prompt, r->n_prompt - 2, whole, k, &reuse);
    char err[256];
    if (src && eng_seq_continue(sl->seq, src, reuse, err, sizeof err) == 0) {
        r->n_fed = r->n_cached = reuse;
        atomic_store(&r->fed, r->n_fed);
        pthread_mutex_lock(&s->mu);
        s->st.cache_hits++;
        s->st.cache_hit_tokens += reuse;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->st.cache_misses++;
    pthread_mutex_unlock(&s->mu);
}

/* Keeps the prompt so far (all but its last two tokens) in the prefix cache: a fork of the
 * sequence, sharing its pages, frozen there. */
static void cache_prompt(eng_sched *s, slot *sl, eng_req *r) {
    char err[256];
    eng_seq *e = eng_seq_fork(sl->seq, NULL, err, sizeof err);
    r->cached = true;
    if (!e) return; /* out of memory: the prompt simply is not cached */
    pthread_mutex_lock(&s->mu);
    eng_pcache_insert(s->pc, e, r->hist, r->n_fed);
    pthread_mutex_unlock(&s->mu);
}

typedef struct {
    const tok_vocab *v;
    char buf[512];
} piece_ud;

/* A token's bytes for the grammar's trie; NULL for control and unused tokens, which constrained
 * output never contains (end-of-generation tokens are passed apart). */
static const char *grammar_piece(void *ud, int32_t id, int *len) {
    piece_ud *u = ud;
    const tok_type t = tok_get_type(u->v, id);
    if (t == TOK_TYPE_CONTROL || t == TOK_TYPE_UNUSED || t == TOK_TYPE_UNDEFINED) return NULL;
    int n = tok_piece(u->v, id, false, u->buf, sizeof u->buf);
    if (n <= 0 || n > (int)sizeof u->buf) return NULL;
    *len = n;
    return u->buf;
}

/* The vocabulary's byte trie, built once on the first request with a grammar. */
static bool grammar_vocab(eng_sched *s) {
    if (s->gv) return true;
    if (s->gv_err[0]) return false;
    int32_t *eog = malloc(sizeof(int32_t) * s->n_vocab);
    if (!eog) {
        snprintf(s->gv_err, sizeof s->gv_err, "out of memory");
        return false;
    }
    int n_eog = 0;
    for (int32_t i = 0; i < s->n_vocab; i++)
        if (tok_is_eog(s->vocab, i)) eog[n_eog++] = i;
    piece_ud *u = malloc(sizeof *u);
    char err[160] = "out of memory";
    if (u) {
        u->v = s->vocab;
        s->gv = gram_vocab_create(s->n_vocab, grammar_piece, u, eog, n_eog, err, sizeof err);
    }
    free(u);
    free(eog);
    if (!s->gv) snprintf(s->gv_err, sizeof s->gv_err, "constrained decoding: %s", err);
    return s->gv != NULL;
}

/* For a request of a group (n > 1): whether it may start, and in *ls the slot of the leader to
 * continue from (NULL: it prefills on its own, the leader having ended or being too short).
 * The leader runs first (queued first); its followers wait until its prompt, all but the last
 * two tokens, has run. */
static bool group_ready(eng_sched *s, eng_req *r, slot **ls) {
    eng_req *L = r->leader;
    *ls = NULL;
    if (L->n_prompt < 4) return true;
    for (int i = 0; i < s->p.n_parallel; i++)
        if (s->slots[i].req == L) *ls = &s->slots[i];
    if (!*ls || L->state == REQ_DONE) return true;
    if (L->state == REQ_PREFILL && L->n_fed < L->n_prompt - 2) return false;
    return true;
}

/* Runs one step over the active slots. */
static void step(eng_sched *s) {
    char err[256];
    const int np = s->p.n_parallel;
    /* set up newly admitted requests; end cancelled ones */
    for (int i = 0; i < np; i++) {
        slot *sl = &s->slots[i];
        eng_req *r = sl->req;
        sl->row = -1;
        sl->plp_n = 0;
        if (!r) continue;
        if (atomic_load(&r->cancel)) {
            finish_req(s, sl, r, ENG_FINISH_CANCELLED, NULL, NULL);
            continue;
        }
        if (r->state == REQ_PREFILL && !r->smp) {
            slot *ls = NULL;
            if (r->leader && !group_ready(s, r, &ls)) continue; /* the leader's prompt is still running */
            r->t_admit = krn_now_s() * 1e3;
            eng_seq_reset(sl->seq);
            int bad = eng_seq_set_attn(sl->seq, r->has_attn ? &r->attn : &s->attn_default, err, sizeof err);
            if (!bad && r->ctx) bad = eng_seq_attach_ctx(sl->seq, r->ctx, err, sizeof err);
            if (!bad && r->trace_max > 0) {
                /* buckets over every position the request may reach; the rows traced are the
                 * prompt's last (the first token) and every decode row */
                const int64_t base = eng_seq_pos(sl->seq), total = base + r->n_prompt + r->max_tokens;
                const int64_t bucket = (total + r->trace_max - 1) / r->trace_max;
                r->trace_base = (int)base;
                r->trace_bucket = (int)bucket;
                r->trace_nb = (int)((total + bucket - 1) / bucket);
                bad = eng_seq_trace(sl->seq, base + r->n_prompt - 1, bucket, r->trace_nb, err, sizeof err);
            }
            if (!bad && r->build) {
                int64_t from = r->n_prompt - r->obs_tokens;
                bad = eng_seq_capture_queries(sl->seq, from < 0 ? 0 : from, r->n_prompt, err, sizeof err);
            }
            if (!bad && !r->no_cache) start_from_cache(s, sl, r);
            if (!bad && ls && eng_seq_continue(sl->seq, ls->seq, r->n_prompt - 2, err, sizeof err) == 0) {
                r->n_fed = r->n_prompt - 2; /* the rest of its prompt: two rows, as after a cache hit */
                atomic_store(&r->fed, r->n_fed);
                free(r->plp); /* the leader reports the prompt's logprobs */
                r->plp = NULL;
            }
            if (r->leader) {
                req_unref(r->leader);
                r->leader = NULL;
            }
            r->cached = r->no_cache || r->n_prompt - 2 < s->p.prefix_min || r->n_fed >= r->n_prompt - 2;
            if (bad) {
                finish_req(s, sl, r, ENG_FINISH_ERROR, NULL, err);
                continue;
            }
            r->smp = eng_sampler_create(&r->sp, s->n_vocab);
            if (!r->smp) {
                finish_req(s, sl, r, ENG_FINISH_ERROR, NULL, "out of memory");
                continue;
            }
            if (r->grammar) {
                const char *why = grammar_vocab(s) ? NULL : s->gv_err;
                if (!why && !(r->gs = gram_state_new(r->grammar, s->gv))) why = "out of memory";
                if (why) finish_req(s, sl, r, ENG_FINISH_ERROR, NULL, why);
            }
        }
    }
    /* one decode row per running sequence */
    int n = 0;
    for (int i = 0; i < np; i++) {
        slot *sl = &s->slots[i];
        eng_req *r = sl->req;
        if (!r || r->state != REQ_DECODE) continue;
        sl->row = n;
        s->rows[n++] = (eng_batch_row){sl->seq, r->hist[r->n_hist - 1], sl->logits};
    }
    /* prompt tokens, oldest request first, in the room left */
    int n_prefill = 0;
    for (;;) {
        slot *pick = NULL;
        for (int i = 0; i < np; i++) {
            slot *sl = &s->slots[i];
            eng_req *r = sl->req;
            if (!r || r->state != REQ_PREFILL || !r->smp || sl->row != -1 || r->n_fed >= r->n_prompt) continue;
            if (!pick || (pick->req->build && !r->build) ||
                (pick->req->build == r->build && r->admit_seq < pick->req->admit_seq))
                pick = sl;
        }
        int room = s->p.batch_rows - n;
        if (!pick || room <= 0) break;
        eng_req *r = pick->req;
        int left = r->n_prompt - r->n_fed;
        int k = left < room ? left : room;
        if (!r->cached) {
            /* stop before the last two tokens to cache the prompt there */
            if (r->n_fed == r->n_prompt - 2) cache_prompt(s, pick, r);
            else if (k > left - 2) k = left - 2;
        }
        if (r->plp) {
            /* every row's logits are kept for the next prompt token's logprob */
            if (!pick->plog && !(pick->plog = malloc(sizeof(float) * s->n_vocab * ENG_PROMPT_LOGPROB_ROWS))) {
                finish_req(s, pick, r, ENG_FINISH_ERROR, NULL, "out of memory (prompt logprobs)");
                continue;
            }
            if (k > ENG_PROMPT_LOGPROB_ROWS) k = ENG_PROMPT_LOGPROB_ROWS;
        }
        /* the last slice keeps two rows at least (see start_from_cache) */
        if (left - k == 1) {
            if (k < 2) break;
            k--;
        }
        if (r->plp) {
            pick->plp_from = r->n_fed;
            pick->plp_n = k;
        }
        for (int j = 0; j < k; j++) {
            bool last = r->n_fed + j == r->n_prompt - 1;
            float *lg = last ? pick->logits : r->plp ? pick->plog + (size_t)j * s->n_vocab : NULL;
            s->rows[n + j] = (eng_batch_row){pick->seq, r->hist[r->n_fed + j], lg};
            if (last) pick->row = n + j;
        }
        if (pick->row < 0) pick->row = -2; /* fed this step, no logits yet */
        r->n_fed += k;
        atomic_store(&r->fed, r->n_fed);
        n += k;
        n_prefill += k;
    }
    if (n == 0) return;

    double t0 = krn_now_s() * 1e3;
    const int frc = eng_forward_batch(s->m, s->rows, n, err, sizeof err);
    if (frc) {
        /* ENG_FORWARD_SEQ_FAILED: only the failed sequences' requests end (their sequences are
         * reset before reuse); the other rows ran and go on */
        for (int i = 0; i < np; i++) {
            slot *sl = &s->slots[i];
            if (!sl->req || sl->row == -1) continue;
            const char *why = eng_seq_error(sl->seq);
            if (frc != ENG_FORWARD_SEQ_FAILED || why) {
                finish_req(s, sl, sl->req, ENG_FINISH_ERROR, NULL, why ? why : err);
                sl->row = -1;
            }
        }
        if (frc != ENG_FORWARD_SEQ_FAILED) return;
    }
    /* prompt logprobs: row j of a slice predicts prompt token plp_from + j + 1 */
    for (int i = 0; i < np; i++) {
        slot *sl = &s->slots[i];
        eng_req *r = sl->req;
        if (!r || !r->plp || sl->plp_n <= 0 || sl->row == -1) continue;
        for (int j = 0; j < sl->plp_n; j++) {
            const int pos = sl->plp_from + j + 1;
            if (pos >= r->n_prompt) break;
            const float *lg = sl->plog + (size_t)j * s->n_vocab;
            eng_event top; /* the most likely token, and through it the normaliser */
            top_logprobs(lg, s->n_vocab, 1, &top);
            const float log_z = lg[top.top_id[0]] - top.top_logprob[0];
            r->plp[pos] = (eng_prompt_lp){lg[r->hist[pos]] - log_z, top.top_id[0], top.top_logprob[0]};
        }
    }
    /* sample every row with logits: samplers are independent, so in parallel */
    int idx[np], n_s = 0;
    for (int i = 0; i < np; i++) {
        slot *sl = &s->slots[i];
        if (!sl->req || sl->row < 0) continue;
        if (sl->req->build) hand_over(s, sl, sl->req);
        else idx[n_s++] = i;
    }
    eng_event evs[np];
    memset(evs, 0, sizeof(eng_event) * (n_s > 0 ? n_s : 1));
#pragma omp parallel for schedule(dynamic, 1) if (n_s > 1)
    for (int j = 0; j < n_s; j++) {
        slot *sl = &s->slots[idx[j]];
        eng_req *r = sl->req;
        if (r->top_logprobs > 0) top_logprobs(sl->logits, s->n_vocab, r->top_logprobs, &evs[j]);
        const uint32_t *allow = NULL;
        if (r->gs) {
            gram_state_mask(r->gs, sl->allow);
            allow = sl->allow;
        }
        evs[j].id = eng_sampler_sample_allowed(r->smp, sl->logits, allow, r->hist, r->n_hist, &evs[j].logprob);
        if (r->gs && evs[j].id >= 0 && gram_state_accept_token(r->gs, evs[j].id) != GRAM_OK)
            evs[j].id = -1; /* cannot happen: the mask admitted it */
    }
    double t1 = krn_now_s() * 1e3;
    for (int j = 0; j < n_s; j++) {
        slot *sl = &s->slots[idx[j]];
        if (evs[j].id < 0) {
            finish_req(s, sl, sl->req, ENG_FINISH_ERROR, NULL,
                       "the response format allows no token of the vocabulary here");
            continue;
        }
        evs[j].has_token = true;
        evs[j].t_ms = t1;
        eng_req *r = sl->req;
        if (r->trace_nb > 0 && (evs[j].trace = malloc(sizeof(float) * (size_t)r->trace_nb))) {
            eng_seq_trace_take(sl->seq, evs[j].trace);
            evs[j].trace_n = r->trace_nb;
            evs[j].trace_bucket = r->trace_bucket;
            evs[j].trace_context = r->trace_base;
        }
        take_token(s, sl, r, &evs[j]);
    }
    pthread_mutex_lock(&s->mu);
    s->st.steps++;
    s->st.batch_rows += n;
    s->st.prompt_tokens += n_prefill;
    s->st.busy_ms += t1 - t0;
    pthread_mutex_unlock(&s->mu);
}

static void update_mem_stats(eng_sched *s);

static void *engine_main(void *arg) {
    eng_sched *s = arg;
    if (s->p.n_threads > 0) omp_set_num_threads(s->p.n_threads);
    double t_stats = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stopping && s->n_active == 0 && !s->q_head) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        eng_req *cancelled = admit_locked(s);
        pthread_mutex_unlock(&s->mu);
        while (cancelled) {
            eng_req *next = cancelled->next;
            finish_req(s, NULL, cancelled, ENG_FINISH_CANCELLED, NULL, NULL);
            cancelled = next;
        }
        step(s);
        /* measuring walks every index's lists: a few times a second is enough for /metrics,
         * and always once the engine goes idle */
        const double now = krn_now_s();
        pthread_mutex_lock(&s->mu);
        const bool idle = s->n_active == 0 && !s->q_head;
        pthread_mutex_unlock(&s->mu);
        if (now - t_stats >= 0.1 || idle) {
            update_mem_stats(s);
            t_stats = now;
        }
    }
    /* shutdown: everything still queued or running ends as cancelled */
    for (int i = 0; i < s->p.n_parallel; i++)
        if (s->slots[i].req) finish_req(s, &s->slots[i], s->slots[i].req, ENG_FINISH_CANCELLED, NULL, NULL);
    pthread_mutex_lock(&s->mu);
    eng_req *q = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->q_len = 0;
    pthread_mutex_unlock(&s->mu);
    while (q) {
        eng_req *next = q->next;
        finish_req(s, NULL, q, ENG_FINISH_CANCELLED, NULL, NULL);
        q = next;
    }
    return NULL;
}

void eng_sched_cancel_all(eng_sched *s) {
    pthread_mutex_lock(&s->mu);
    for (eng_req *r = s->q_head; r; r = r->next) atomic_store(&r->cancel, true);
    for (int i = 0; i < s->p.n_parallel; i++)
        if (s->slots[i].req) atomic_store(&s->slots[i].req->cancel, true);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void eng_sched_get_stats(eng_sched *s, eng_sched_stats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    st->queue_depth = s->q_len;
    st->active = s->n_active;
    st->n_parallel = s->p.n_parallel;
    st->n_ctx = s->p.n_ctx;
    st->mem_budget = s->p.mem_budget;
    st->mem_pinned = s->pinned;
    st->mem_used = s->mem_used;
    st->mem_running = s->mem_running;
    st->mem_cached = s->mem_cached;
    st->cache_entries = s->cache_entries;
    st->cache_tokens = s->cache_tokens;
    st->cache_spills = s->ps.spills;
    st->cache_disk_entries = s->ps.disk_entries;
    st->cache_disk_bytes = s->ps.disk_bytes;
    pthread_mutex_unlock(&s->mu);
}

void eng_sched_set_pinned(eng_sched *s, size_t bytes) {
    pthread_mutex_lock(&s->mu);
    s->pinned = bytes;
    pthread_mutex_unlock(&s->mu);
}

/* Refreshes the memory figures get_stats reports (the engine thread measures; readers copy). */
static void update_mem_stats(eng_sched *s) {
    pthread_mutex_lock(&s->mu);
    size_t running, held = mem_held(s, NULL, &running);
    s->mem_used = held;
    s->mem_running = running;
    s->mem_cached = held > running + s->pinned ? held - running - s->pinned : 0;
    if (s->pc) {
        eng_pcache_stats ps;
        eng_pcache_get_stats(s->pc, &ps);
        s->cache_entries = ps.entries;
        s->cache_tokens = ps.tokens;
        s->ps = ps;
    }
    pthread_mutex_unlock(&s->mu);
}

/* ---- lifecycle ---- */

int eng_sched_create(eng_model *m, const eng_sched_params *p, eng_sched **out, char *err,
                     size_t errlen) {
    *out = NULL;
    if (p->n_parallel < 1 || p->n_parallel > 1024) {
        eng_set_err(err, errlen, "parallel must be in [1, 1024], not %d", p->n_parallel);
        return ENG_SCHED_EARG;
    }
    if (p->n_ctx < 2) {
        eng_set_err(err, errlen, "context size must be at least 2, not %d", p->n_ctx);
        return ENG_SCHED_EARG;
    }
    if (p->queue_cap < 0 || p->batch_rows < p->n_parallel) {
        eng_set_err(err, errlen, "batch size (%d) must be at least parallel (%d), queue size >= 0",
                p->batch_rows, p->n_parallel);
        return ENG_SCHED_EARG;
    }
    eng_sched *s = calloc(1, sizeof *s);
    if (!s) {
        eng_set_err(err, errlen, "out of memory");
        return ENG_SCHED_ENOMEM;
    }
    s->m = m;
    s->vocab = eng_model_vocab(m);
    s->p = *p;
    s->n_vocab = eng_model_hparams(m)->n_vocab;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->slots = calloc(p->n_parallel, sizeof(slot));
    s->rows = malloc(sizeof(eng_batch_row) * p->batch_rows);
    if (!s->slots || !s->rows) {
        eng_set_err(err, errlen, "out of memory");
        eng_sched_free(s);
        return ENG_SCHED_ENOMEM;
    }
    for (int i = 0; i < p->n_parallel; i++) {
        s->slots[i].seq = eng_seq_create(m, p->n_ctx + p->ctx_max_tokens, err, errlen);
        s->slots[i].logits = malloc(sizeof(float) * s->n_vocab);
        s->slots[i].allow = malloc(sizeof(uint32_t) * (((size_t)s->n_vocab + 31) / 32));
        if (!s->slots[i].seq || !s->slots[i].logits || !s->slots[i].allow) {
            if (s->slots[i].seq) eng_set_err(err, errlen, "out of memory");
            eng_sched_free(s);
            return ENG_SCHED_ENOMEM;
        }
    }
    eng_seq_get_attn(s->slots[0].seq, &s->attn_default);
    s->tok_bytes = eng_seq_token_bytes(s->slots[0].seq, &s->fixed_bytes);
    if (s->p.prefix_min <= 0) s->p.prefix_min = 64;
    if (p->prefix_cache && !(s->pc = eng_pcache_create(s->p.prefix_min))) {
        eng_set_err(err, errlen, "out of memory");
        eng_sched_free(s);
        return ENG_SCHED_ENOMEM;
    }
    if (s->pc && p->prefix_dir && p->prefix_dir[0]) {
        if (!strcmp(eng_model_device(m), "cuda")) {
            fprintf(stderr, "kvseek: prefix cache: no disk tier on the GPU backend (%s ignored)\n", p->prefix_dir);
        } else if (eng_pcache_set_dir(s->pc, p->prefix_dir,
                                      p->prefix_disk_budget ? p->prefix_disk_budget : (size_t)10 << 30,
                                      s->slots[0].seq, err, errlen)) {
            eng_sched_free(s);
            return ENG_SCHED_EARG;
        }
    }
    s->p.prefix_dir = NULL; /* the caller's string is not kept */
    update_mem_stats(s);    /* the mapped prompts show before the first request */
    if (pthread_create(&s->th, NULL, engine_main, s)) {
        eng_set_err(err, errlen, "cannot start the engine thread");
        eng_sched_free(s);
        return ENG_SCHED_ENOMEM;
    }
    s->started = true;
    *out = s;
    return 0;
}

void eng_sched_free(eng_sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
    }
    if (s->slots) {
        for (int i = 0; i < s->p.n_parallel; i++) {
            eng_seq_free(s->slots[i].seq);
            free(s->slots[i].logits);
            free(s->slots[i].plog);
            free(s->slots[i].allow);
        }
    }
    eng_pcache_free(s->pc); /* after the slots: entries' pages outlive their borrowers anyway */
    gram_vocab_free(s->gv);  /* every grammar state went with its request */
    free(s->slots);
    free(s->rows);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
