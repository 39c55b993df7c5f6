/* The scheduler: one engine thread that owns the model's sequences and runs every request
 * through them with continuous batching. Callers (the HTTP threads) submit a tokenized request
 * to a bounded queue and read its tokens from a per-request channel; they never touch the model.
 *
 * Each step the engine gathers one decode row for every running sequence, fills the rest of the
 * batch (up to batch_rows) with prompt tokens of admitted requests (chunked prefill, oldest
 * first), runs one eng_forward_batch, samples the rows that produced logits and pushes one event
 * per generated token to the request's channel. New requests join between steps; finished,
 * cancelled and failed ones leave and free their sequence for the next in the queue.
 *
 * Knows no HTTP and no JSON. Thread-safe: any thread may submit, read, cancel and release. */
#ifndef KVSEEK_SCHEDULER_H
#define KVSEEK_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"

#define ENG_MAX_TOP_LOGPROBS 20
#define ENG_MAX_STOP 16

/* Negative status codes of eng_sched_create and eng_sched_submit. */
enum {
    ENG_SCHED_ENOMEM = -1,
    ENG_SCHED_EARG = -2,     /* a parameter out of range (the message says which) */
    ENG_SCHED_EFULL = -3,    /* the queue of waiting requests is full: retry later */
    ENG_SCHED_ESTOPPED = -4, /* the scheduler is shutting down */
    ENG_SCHED_ETOOLONG = -5, /* prompt + max_tokens does not fit in a sequence's context */
    ENG_SCHED_EUNAVAIL = -6, /* the model's device failed (eng_model_failed): nothing can run */
    ENG_SCHED_ENOSPACE = -7, /* the request's KV cache alone exceeds the memory budget */
};
const char *eng_sched_strerror(int code);

typedef struct {
    int n_parallel; /* sequences decoded together; each holds a KV cache of n_ctx tokens */
    int n_ctx;      /* tokens per sequence: prompt + generated */
    int queue_cap;  /* requests that may wait for a free sequence; submit refuses past it */
    int batch_rows; /* rows per forward pass: one per decoding sequence, prompt tokens fill the rest */
    int n_threads;  /* OpenMP threads of the engine thread; 0: OpenMP's default (an OpenMP thread
                     * count set in another thread, as eng_model_load does, does not carry over) */
    int ctx_max_tokens; /* the longest registered context a request may start with, and the longest
                     * context a build job may prefill: each sequence's page tables (not memory:
                     * a context's pages are borrowed) cover n_ctx + ctx_max_tokens positions */
    size_t mem_budget; /* host memory for the KV caches of running sequences, cached prefixes
                     * and pinned contexts together (their indexes included); 0: no limit. A
                     * request is admitted when what it may grow to fits beside what the running
                     * ones may grow to, cached prefixes being evicted (least recently used) to
                     * make room; otherwise it waits in the queue */
    bool prefix_cache; /* keep prompts' KV for later requests that start with them */
    int prefix_min;    /* shortest prefix worth caching or reusing, in tokens (0: 64) */
    const char *prefix_dir; /* cached prompts evicted from memory spill here (eng_pcache_set_dir);
                     * NULL or "": none. Not on a GPU (the device cannot read a file mapping) */
    size_t prefix_disk_budget; /* bytes of spilled prompts kept; 0: 10 GiB */
} eng_sched_params;

typedef struct eng_sched eng_sched;
typedef struct eng_req eng_req;

/* Starts the engine thread over model m (not owned: free the scheduler first). Allocates the
 * n_parallel sequences up front. Returns 0, or a negative code with a reason in err. */
int eng_sched_create(eng_model *m, const eng_sched_params *p, eng_sched **out, char *err,
                     size_t errlen);
/* Cancels everything still queued or running, joins the engine thread and frees the sequences.
 * Requests whose handles are still held get their final event (ENG_FINISH_CANCELLED) and stay
 * valid until released. Accepts NULL. */
void eng_sched_free(eng_sched *s);

/* What one request asks for. Everything is copied by eng_sched_submit. */
typedef struct {
    const int32_t *prompt; /* token ids, at least one, each < n_vocab */
    int n_prompt;
    int max_tokens;        /* >= 1; generation also ends when the sequence's context is full */
    eng_sampler_params sampling;
    const char *const *stop; /* stop strings (up to ENG_MAX_STOP, empty ones ignored) */
    int n_stop;
    bool stop_inclusive;   /* true: the matched stop string stays in the text (TGI); false: cut (OpenAI) */
    bool ignore_eos;       /* keep going past end-of-generation tokens */
    int top_logprobs;      /* alternatives reported per token, 0..ENG_MAX_TOP_LOGPROBS */
    const eng_attn_params *attn; /* selector and its knobs for this request (storage keys are
                            * ignored: they are the server's); NULL: the model's default */
    struct eng_ctx *context; /* a registered context the prompt continues (the scheduler holds a
                            * reference until the request ends); NULL: none */
    bool no_cache;         /* neither start from a cached prefix nor cache this prompt */
    struct gram *grammar;  /* constrained decoding (grammar.h): only tokens that continue it are
                            * sampled, end-of-generation only where it may end (ignore_eos is then
                            * moot). Taken, not copied: the scheduler frees it when the request
                            * ends, and eng_sched_submit frees it when it fails. NULL: none */
    bool prompt_logprobs;  /* report each prompt token's log-probability given the tokens before
                            * it (TGI's decoder_input_details) in the first token event. The whole
                            * prompt is then prefilled (no prefix cache: a cached prefix has no
                            * logits), in slices of at most ENG_PROMPT_LOGPROB_ROWS rows a step. In a group
                            * (eng_sched_submit_group) only the first request reports them */
    int trace_buckets;     /* the attention trace (eng_seq_trace): 0 off, else up to this many
                            * buckets (ENG_TRACE_MAX_BUCKETS at most) over the positions the
                            * request may reach (context + prompt + max_tokens); each token event
                            * then carries the mass its row read per bucket */
} eng_gen_params;

#define ENG_PROMPT_LOGPROB_ROWS 16

/* One prompt token's log-probability given the tokens before it, and the most likely token there
 * (whether the prompt is what greedy decoding would have written, as evaluation harnesses ask). */
typedef struct {
    float logprob;
    int32_t top_id;
    float top_logprob;
} eng_prompt_lp;

typedef enum {
    ENG_FINISH_NONE = 0,  /* not finished: more events follow */
    ENG_FINISH_LENGTH,    /* max_tokens reached, or the context is full */
    ENG_FINISH_EOS,       /* an end-of-generation token */
    ENG_FINISH_STOP,      /* a stop string matched */
    ENG_FINISH_CANCELLED, /* eng_req_cancel, eng_req_release before the end, or shutdown */
    ENG_FINISH_ERROR,     /* the forward pass failed; error holds why */
} eng_finish;
const char *eng_finish_name(eng_finish f);

/* One event of a request's channel. A token event has has_token; the last event of a request
 * has finish != ENG_FINISH_NONE (it may also carry the last token). */
typedef struct {
    bool has_token;
    int32_t id;
    float logprob;   /* log-probability under the model's unmodified distribution */
    bool special;    /* an end-of-generation or control token (contributes no text) */
    int n_top;       /* alternatives, most likely first */
    int32_t top_id[ENG_MAX_TOP_LOGPROBS];
    float top_logprob[ENG_MAX_TOP_LOGPROBS];
    /* Output text released with this event (owned by the event, NUL-terminated). Cut only at
     * UTF-8 character boundaries, and text that may be the start of a stop string is held back
     * until it is known not to be; so the concatenation of every event's text is the output. */
    char *text;
    int text_len;
    double t_ms;     /* monotonic ms when the event was produced */
    eng_finish finish;
    /* filled in the last event: */
    int n_prompt, n_gen;  /* prompt tokens, generated tokens (an end-of-generation token counts) */
    int n_cached;         /* prompt tokens taken from the prefix cache (not prefilled) */
    double t_queue_ms;    /* submitted -> admitted to a sequence */
    double t_prefill_ms;  /* admitted -> first token */
    double t_decode_ms;   /* first token -> last */
    char error[160];
    struct eng_seq *seq;  /* a build job's final event: the prefilled sequence, now the reader's
                           * (eng_ctx_create takes it; eng_event_clear frees it otherwise) */
    eng_prompt_lp *prompt_lp; /* the first token event of a request with prompt_logprobs: n_prompt
                           * entries (owned by the event), the first NaN (nothing precedes it);
                           * NULL otherwise */
    float *trace;         /* a traced request's token event: trace_n buckets of the attention
                           * mass the row that produced the token read (eng_seq_trace_take;
                           * owned by the event); NULL otherwise */
    int trace_n;
    int trace_bucket;     /* positions per bucket */
    int trace_context;    /* positions of the registered context before the prompt */
    char selector[16];    /* the attention selector the request ran with */
    eng_attn_stats attn;  /* its attention statistics (global layers) */
} eng_event;

/* Queues a request. On success *out is a handle the caller must release. Fails with
 * ENG_SCHED_EFULL when queue_cap requests already wait, ENG_SCHED_ETOOLONG when n_prompt +
 * max_tokens > n_ctx, ENG_SCHED_ENOSPACE when its KV cache could never fit the memory budget,
 * ENG_SCHED_EARG for bad parameters, ENG_SCHED_ESTOPPED after shutdown. */
int eng_sched_submit(eng_sched *s, const eng_gen_params *p, eng_req **out);

/* Queues n requests for one prompt (n <= n_parallel; every ps[i] has the same prompt and
 * context, and its own sampling, seed and grammar), as OpenAI's n and best_of ask: the first
 * prefills the prompt and the others continue from its sequence once that has run, sharing its
 * pages read-only, so the prompt is prefilled once. out[i] receives request i's handle (release
 * each). All are queued or none: the codes of eng_sched_submit (each ps[i].grammar is taken,
 * freed on failure). */
int eng_sched_submit_group(eng_sched *s, const eng_gen_params *ps, int n, eng_req **out);

/* Queues a context build: the n tokens are prefilled densely like a prompt (after the prompts
 * of ordinary requests in each step, so builds never delay answers' first tokens), recording the
 * queries of the last p->obs_tokens positions; nothing is sampled. The final event (finish
 * ENG_FINISH_LENGTH) hands over the filled sequence in ev.seq for eng_ctx_create; the slot gets
 * a fresh one. Errors as eng_sched_submit (ENG_SCHED_ETOOLONG past ctx_max_tokens + n_ctx). */
int eng_sched_submit_build(eng_sched *s, const int32_t *tokens, int n, int obs_tokens, eng_req **out);
/* Share of a request's prompt run through the model so far, in [0, 1]. */
double eng_req_progress(const eng_req *r);

/* Waits up to timeout_ms (< 0: forever) for the next event. Returns 1 and fills *ev (clear it
 * with eng_event_clear), 0 on timeout, or -1 when the last event was already read. */
int eng_req_next(eng_req *r, eng_event *ev, int timeout_ms);
/* Frees what an event owns. */
void eng_event_clear(eng_event *ev);

/* Asks the engine to stop the request; it ends at the next step with ENG_FINISH_CANCELLED
 * (unless it finished first). Returns at once. */
void eng_req_cancel(eng_req *r);
/* Drops the caller's handle; cancels the request when it has not finished. r is no longer valid. */
void eng_req_release(eng_req *r);

/* Cancels every queued and running request (shutdown after the grace period). */
void eng_sched_cancel_all(eng_sched *s);

typedef struct {
    int queue_depth;       /* requests waiting for a sequence */
    int active;            /* sequences holding a request */
    int n_parallel, n_ctx;
    uint64_t prompt_tokens;    /* prompt tokens run through the model */
    uint64_t generated_tokens; /* tokens sampled */
    uint64_t steps;            /* forward passes */
    uint64_t batch_rows;       /* rows over all passes */
    uint64_t finished[ENG_FINISH_ERROR + 1]; /* requests ended, by reason */
    double busy_ms;            /* time spent in forward passes and sampling */
    /* the prefix cache and the memory budget */
    uint64_t cache_hits, cache_misses; /* requests that started from a cached prefix, or not */
    uint64_t cache_hit_tokens;         /* prompt tokens not prefilled thanks to the cache */
    uint64_t cache_evictions;
    int cache_entries;
    size_t cache_tokens;
    uint64_t cache_spills;     /* cached prompts written to the disk tier */
    int cache_disk_entries;    /* ... and mapped from it now */
    size_t cache_disk_bytes;
    size_t mem_budget;         /* 0: none */
    size_t mem_used;           /* KV and indexes held now: running, cached and pinned */
    size_t mem_running;        /* ... by the sequences of running requests */
    size_t mem_cached;         /* ... kept only for cached prefixes */
    size_t mem_pinned;         /* ... by registered contexts (eng_sched_set_pinned) */
    int waiting_for_memory;    /* 1 while the queue's head waits for memory */
} eng_sched_stats;
void eng_sched_get_stats(eng_sched *s, eng_sched_stats *st);

/* Memory held outside the scheduler that counts against its budget (registered contexts'
 * pages, mapped or built); the server updates it when contexts come and go. */
void eng_sched_set_pinned(eng_sched *s, size_t bytes);

#endif
