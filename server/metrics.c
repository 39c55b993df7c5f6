/* Server metrics in the Prometheus text format: requests by route and status, latency
 * histograms (time to first token, inter-token latency, end-to-end), client cancellations, and
 * the scheduler's gauges and counters (queue depth, active sequences, tokens). One mutex; every
 * update is a few increments. */
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

static const char *route_names[SRV_ROUTE_COUNT] = {
    "/health", "/metrics", "/v1/models", "/tokenize", "/detokenize", "/generate",
    "/generate_stream", "/v1/completions", "/v1/chat/completions", "/info", "/v1/contexts", "/", "other",
};

#define MAX_BUCKETS 16
typedef struct {
    const double *le;
    int n;
    uint64_t counts[MAX_BUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t total;
} histo;

static const double ttft_le[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double itl_le[] = {0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5};
static const double e2e_le[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320};

struct srv_metrics {
    pthread_mutex_t mu;
    uint64_t req[SRV_ROUTE_COUNT][500]; /* status 100..599 */
    histo ttft, itl, e2e;
    uint64_t client_cancels;
};

srv_metrics *srv_metrics_create(void) {
    srv_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->ttft.le = ttft_le;
    m->ttft.n = sizeof ttft_le / sizeof ttft_le[0];
    m->itl.le = itl_le;
    m->itl.n = sizeof itl_le / sizeof itl_le[0];
    m->e2e.le = e2e_le;
    m->e2e.n = sizeof e2e_le / sizeof e2e_le[0];
    return m;
}

void srv_metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void srv_metrics_request(srv_metrics *m, srv_route r, int status) {
    if (r < 0 || r >= SRV_ROUTE_COUNT || status < 100 || status > 599) return;
    pthread_mutex_lock(&m->mu);
    m->req[r][status - 100]++;
    pthread_mutex_unlock(&m->mu);
}

static void observe(srv_metrics *m, histo *h, double v) {
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->total++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_ttft(srv_metrics *m, double s) { observe(m, &m->ttft, s); }
void srv_metrics_itl(srv_metrics *m, double s) { observe(m, &m->itl, s); }
void srv_metrics_e2e(srv_metrics *m, double s) { observe(m, &m->e2e, s); }

void srv_metrics_client_cancel(srv_metrics *m) {
    pthread_mutex_lock(&m->mu);
    m->client_cancels++;
    pthread_mutex_unlock(&m->mu);
}

typedef struct {
    char *s;
    size_t len, cap;
} out;

static void pr(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pr(out *o, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = o->s ? vsnprintf(o->s + o->len, o->cap - o->len, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && o->len + n < o->cap) {
            o->len += n;
            return;
        }
        size_t nc = 2 * o->cap + (n > 0 ? (size_t)n : 0) + 4096;
        char *ns = realloc(o->s, nc);
        if (!ns) return;
        o->s = ns;
        o->cap = nc;
    }
}

static void pr_head(out *o, const char *name, const char *type, const char *help) {
    pr(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void pr_gauge(out *o, const char *name, const char *help, double v) {
    pr_head(o, name, "gauge", help);
    pr(o, "%s %.0f\n", name, v);
}

static void pr_counter(out *o, const char *name, const char *help, unsigned long long v) {
    pr_head(o, name, "counter", help);
    pr(o, "%s %llu\n", name, v);
}

static void pr_histo(out *o, const char *name, const char *help, const histo *h) {
    pr_head(o, name, "histogram", help);
    uint64_t acc = 0;
    for (int i = 0; i < h->n; i++) {
        acc += h->counts[i];
        pr(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)acc);
    }
    acc += h->counts[h->n];
    pr(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
       (unsigned long long)acc, name, h->sum, name, (unsigned long long)h->total);
}

char *srv_metrics_render(srv_metrics *m, const eng_sched_stats *st, bool ready) {
    out o = {0};
    pthread_mutex_lock(&m->mu);
    pr_head(&o, "kvseek_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (int r = 0; r < SRV_ROUTE_COUNT; r++)
        for (int c = 0; c < 500; c++)
            if (m->req[r][c])
                pr(&o, "kvseek_requests_total{route=\"%s\",status=\"%d\"} %llu\n", route_names[r],
                   c + 100, (unsigned long long)m->req[r][c]);
    pr_counter(&o, "kvseek_client_disconnects_total", "Generations cancelled because the client went away.",
               (unsigned long long)m->client_cancels);
    pr_histo(&o, "kvseek_time_to_first_token_seconds", "Request received to first token sampled.", &m->ttft);
    pr_histo(&o, "kvseek_inter_token_latency_seconds", "Time between consecutive tokens of a request.", &m->itl);
    pr_histo(&o, "kvseek_request_duration_seconds", "Generation requests, received to last token.", &m->e2e);
    pthread_mutex_unlock(&m->mu);
    pr_gauge(&o, "kvseek_ready", "1 when the model is loaded and requests are accepted.", ready ? 1 : 0);
    if (st) {
        pr_gauge(&o, "kvseek_queue_depth", "Requests waiting for a free sequence.", st->queue_depth);
        pr_gauge(&o, "kvseek_active_sequences", "Sequences holding a request.", st->active);
        pr_gauge(&o, "kvseek_parallel_sequences", "Sequences the scheduler decodes together at most.",
                 st->n_parallel);
        pr_counter(&o, "kvseek_prompt_tokens_total", "Prompt tokens run through the model.",
                   (unsigned long long)st->prompt_tokens);
        pr_counter(&o, "kvseek_generation_tokens_total", "Tokens generated.",
                   (unsigned long long)st->generated_tokens);
        pr_counter(&o, "kvseek_engine_steps_total", "Forward passes (batched steps).",
                   (unsigned long long)st->steps);
        pr_counter(&o, "kvseek_engine_batch_rows_total", "Rows over all forward passes.",
                   (unsigned long long)st->batch_rows);
        pr_head(&o, "kvseek_engine_busy_seconds_total", "counter", "Time in forward passes and sampling.");
        pr(&o, "kvseek_engine_busy_seconds_total %.3f\n", st->busy_ms / 1e3);
        pr_counter(&o, "kvseek_prefix_cache_hits_total", "Requests that started from a cached prompt prefix.",
                   (unsigned long long)st->cache_hits);
        pr_counter(&o, "kvseek_prefix_cache_misses_total", "Requests that looked for a cached prefix and found none.",
                   (unsigned long long)st->cache_misses);
        pr_counter(&o, "kvseek_prefix_cache_hit_tokens_total", "Prompt tokens taken from the cache, not prefilled.",
                   (unsigned long long)st->cache_hit_tokens);
        pr_counter(&o, "kvseek_prefix_cache_evictions_total", "Cached prefixes dropped to make room.",
                   (unsigned long long)st->cache_evictions);
        pr_gauge(&o, "kvseek_prefix_cache_entries", "Cached prompt prefixes.", st->cache_entries);
        pr_counter(&o, "kvseek_prefix_cache_spills_total", "Cached prefixes written to the disk tier.",
                   (unsigned long long)st->cache_spills);
        pr_gauge(&o, "kvseek_prefix_cache_disk_entries", "Cached prefixes mapped from the disk tier.",
                 st->cache_disk_entries);
        pr_gauge(&o, "kvseek_prefix_cache_disk_bytes", "Bytes of the disk tier's files.", (double)st->cache_disk_bytes);
        pr_gauge(&o, "kvseek_prefix_cache_tokens", "Tokens held by cached prefixes.", (double)st->cache_tokens);
        pr_gauge(&o, "kvseek_kv_budget_bytes", "Host memory budget of KV caches and indexes (kv_cache_gb).",
                 (double)st->mem_budget);
        pr_head(&o, "kvseek_kv_bytes", "gauge", "Host memory held by KV caches and indexes, by kind.");
        pr(&o, "kvseek_kv_bytes{kind=\"running\"} %zu\n", st->mem_running);
        pr(&o, "kvseek_kv_bytes{kind=\"cached\"} %zu\n", st->mem_cached);
        pr(&o, "kvseek_kv_bytes{kind=\"contexts\"} %zu\n", st->mem_pinned);
        pr_gauge(&o, "kvseek_waiting_for_memory", "1 while the queue's first request waits for KV memory.",
                 st->waiting_for_memory);
        pr_head(&o, "kvseek_generations_finished_total", "counter", "Generations ended, by reason.");
        for (int f = ENG_FINISH_LENGTH; f <= ENG_FINISH_ERROR; f++)
            pr(&o, "kvseek_generations_finished_total{reason=\"%s\"} %llu\n", eng_finish_name(f),
               (unsigned long long)st->finished[f]);
    }
    return o.s;
}
