/* Registered contexts of the server: the registry (id -> state), the /v1/contexts routes, the
 * background builds (prefill through the scheduler, then clustering and the atomic save on a
 * builder thread) and the reload of every persisted context at start. A context is served from
 * its file's mapping: after a build the in-memory copy is dropped and the file mapped back, so a
 * restart serves exactly what ran before.
 *
 * The store (data_dir) may be shared by several replicas (a network filesystem): ids are content
 * addresses (the same text gives the same id everywhere), a replica maps a context another one
 * built when a request names it, and a build holds `.lock-<id>` (O_EXCL, heartbeat by mtime;
 * older than LOCK_STALE_S means its builder died) so two replicas never build one id at once. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "context.h"
#include "srv.h"

enum { LOCK_STALE_S = 300, LOCK_BEAT_MS = 5000 };

typedef enum { CTX_BUILDING = 0, CTX_READY, CTX_FAILED } ctx_status;
static const char *status_name[] = {"building", "ready", "failed"};

typedef struct entry {
    char id[32];
    ctx_status status;       /* under the registry's mutex, as every field below */
    int n_tokens;
    const char *stage;       /* queued, prefill, clustering, saving */
    double cluster_done;     /* clustering progress in [0, 1] */
    char error[256];
    long long created;
    eng_ctx *ctx;            /* READY: the mapped context (the registry's reference) */
    eng_req *req;            /* BUILDING: the prefill job, until it hands the sequence over */
    int32_t *tokens;         /* BUILDING: owned */
    bool deleted;            /* removed while building: the builder cleans up */
    pthread_t th;
    bool has_thread;
    struct entry *next;
} entry;

struct srv_ctx_reg {
    srv *s;
    pthread_mutex_t mu;
    entry *head;
    int count;
};

size_t srv_ctx_bytes(srv_ctx_reg *r) {
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (entry *e = r->head; e; e = e->next)
        if (e->status == CTX_READY && e->ctx) {
            eng_ctx_info info;
            eng_ctx_get_info(e->ctx, &info);
            n += info.file_bytes;
        }
    pthread_mutex_unlock(&r->mu);
    return n;
}

static void entry_free(entry *e) {
    eng_ctx_unref(e->ctx);
    free(e->tokens);
    free(e);
}

bool srv_ctx_id_valid(const char *id) {
    if (strncmp(id, "ctx_", 4) || strlen(id) != 20) return false;
    for (const char *p = id + 4; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return false;
    return true;
}

static void dir_of(const srv_ctx_reg *r, const char *id, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", r->s->cfg.data_dir, id);
}

static entry *find_locked(srv_ctx_reg *r, const char *id) {
    for (entry *e = r->head; e; e = e->next)
        if (!strcmp(e->id, id)) return e;
    return NULL;
}

/* Removes a context directory from the store (only our file inside it). */
static void remove_dir(const char *dir) {
    char f[4300];
    snprintf(f, sizeof f, "%s/context.kvctx", dir);
    unlink(f);
    rmdir(dir);
}

static int mkdirs(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

static void lock_path(const srv_ctx_reg *r, const char *id, char *out, size_t cap) {
    snprintf(out, cap, "%s/.lock-%s", r->s->cfg.data_dir, id);
}

/* 1: a live builder holds the id's lock (fresh heartbeat); 0: no lock, or a stale one. */
static int lock_held(const srv_ctx_reg *r, const char *id) {
    char p[1200];
    lock_path(r, id, p, sizeof p);
    struct stat st;
    if (stat(p, &st) || time(NULL) - st.st_mtime >= LOCK_STALE_S) return 0;
    /* a builder of this host whose process is gone died (kill -9, crash): stale at once */
    FILE *f = fopen(p, "r");
    char host[256] = "", me[256] = "";
    long pid = 0;
    if (f) {
        if (fscanf(f, "%255s %ld", host, &pid) != 2) pid = 0;
        fclose(f);
    }
    gethostname(me, sizeof me - 1);
    if (pid > 0 && !strcmp(host, me) && kill((pid_t)pid, 0) && errno == ESRCH) return 0;
    return 1;
}

/* Takes the build lock of id: 0, or -1 when a live builder (here or on another replica) has it.
 * A stale lock (its builder died) is broken. */
static int lock_take(const srv_ctx_reg *r, const char *id) {
    char p[1200];
    lock_path(r, id, p, sizeof p);
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            char host[256] = "?", line[400];
            gethostname(host, sizeof host - 1);
            int n = snprintf(line, sizeof line, "%s %ld %lld\n", host, (long)getpid(), (long long)time(NULL));
            if (write(fd, line, (size_t)n) < 0) {}
            close(fd);
            return 0;
        }
        if (errno != EEXIST || lock_held(r, id)) return -1;
        unlink(p); /* stale: its builder died */
    }
    return -1;
}

static void lock_beat(const srv_ctx_reg *r, const char *id) {
    char p[1200];
    lock_path(r, id, p, sizeof p);
    utimes(p, NULL);
}

static void lock_drop(const srv_ctx_reg *r, const char *id) {
    char p[1200];
    lock_path(r, id, p, sizeof p);
    unlink(p);
}

/* Maps a context of the store that this replica has not loaded (built here before a restart,
 * or by another replica) and registers it ready. Under the registry's mutex. NULL when the store
 * has no such context or it does not load (the reason goes to the log). */
static entry *load_locked(srv_ctx_reg *r, const char *id) {
    char dir[1200], err[512];
    dir_of(r, id, dir, sizeof dir);
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) return NULL;
    eng_ctx *c = eng_ctx_load(r->s->model, dir, err, sizeof err);
    if (!c) {
        fprintf(stderr, "kvseek: warning: context %s not loaded: %s\n", id, err);
        return NULL;
    }
    entry *e = calloc(1, sizeof *e);
    if (!e) {
        eng_ctx_unref(c);
        return NULL;
    }
    snprintf(e->id, sizeof e->id, "%s", id);
    e->status = CTX_READY;
    e->ctx = c;
    e->n_tokens = eng_ctx_n_tokens(c);
    e->stage = "done";
    e->created = (long long)st.st_mtime;
    e->next = r->head;
    r->head = e;
    r->count++;
    return e;
}

/* A ready entry whose directory another replica deleted: dropped here too (requests running on
 * it keep their reference). Under the mutex; returns whether it was dropped. */
static bool drop_if_gone_locked(srv_ctx_reg *r, entry *e) {
    char dir[1200];
    struct stat st;
    dir_of(r, e->id, dir, sizeof dir);
    if (e->status != CTX_READY || stat(dir, &st) == 0) return false;
    for (entry **pp = &r->head; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    r->count--;
    if (e->has_thread) pthread_join(e->th, NULL);
    entry_free(e);
    return true;
}

srv_ctx_reg *srv_ctx_open(srv *s, char *err, size_t errlen) {
    srv_ctx_reg *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->s = s;
    pthread_mutex_init(&r->mu, NULL);
    if (mkdirs(s->cfg.data_dir)) {
        snprintf(err, errlen, "cannot create the data directory %s: %s", s->cfg.data_dir, strerror(errno));
        srv_ctx_close(r);
        return NULL;
    }
    DIR *d = opendir(s->cfg.data_dir);
    if (!d) {
        snprintf(err, errlen, "cannot read the data directory %s: %s", s->cfg.data_dir, strerror(errno));
        srv_ctx_close(r);
        return NULL;
    }
    struct dirent *de;
    int loaded = 0, refused = 0;
    while ((de = readdir(d))) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/%s", s->cfg.data_dir, de->d_name);
        if (!strncmp(de->d_name, ".tmp-", 5) || !strncmp(de->d_name, ".old-", 5)) {
            /* a build or a replacement a crash interrupted: never visible, now gone (unless a
             * live builder, maybe another replica's, is writing it: .tmp-<id>-<pid>) */
            char id[32];
            snprintf(id, sizeof id, "%.20s", de->d_name + 5);
            if (!lock_held(r, id)) remove_dir(dir);
            continue;
        }
        if (!strncmp(de->d_name, ".lock-", 6)) {
            if (!lock_held(r, de->d_name + 6)) unlink(dir);
            continue;
        }
        if (!srv_ctx_id_valid(de->d_name)) continue;
        char lerr[512];
        eng_ctx *c = eng_ctx_load(s->model, dir, lerr, sizeof lerr);
        if (!c) {
            /* kept on disk: it may belong to another model's server sharing the directory */
            fprintf(stderr, "kvseek: warning: context %s not loaded: %s\n", de->d_name, lerr);
            refused++;
            continue;
        }
        entry *e = calloc(1, sizeof *e);
        if (!e) {
            eng_ctx_unref(c);
            continue;
        }
        snprintf(e->id, sizeof e->id, "%s", de->d_name);
        e->status = CTX_READY;
        e->ctx = c;
        e->n_tokens = eng_ctx_n_tokens(c);
        e->stage = "done";
        struct stat st;
        e->created = stat(dir, &st) == 0 ? (long long)st.st_mtime : (long long)time(NULL);
        e->next = r->head;
        r->head = e;
        r->count++;
        loaded++;
    }
    closedir(d);
    fprintf(stderr, "kvseek: contexts: %d loaded from %s%s\n", loaded, s->cfg.data_dir,
            refused ? " (some refused, see above)" : "");
    return r;
}

void srv_ctx_close(srv_ctx_reg *r) {
    if (!r) return;
    /* builders end once the scheduler has cancelled their jobs (the caller did) */
    for (;;) {
        pthread_t th;
        bool found = false;
        pthread_mutex_lock(&r->mu);
        for (entry *e = r->head; e; e = e->next)
            if (e->has_thread) {
                th = e->th;
                e->has_thread = false;
                found = true;
                break;
            }
        pthread_mutex_unlock(&r->mu);
        if (!found) break;
        pthread_join(th, NULL);
    }
    while (r->head) {
        entry *e = r->head;
        r->head = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

eng_ctx *srv_ctx_acquire(srv_ctx_reg *r, const char *id, int *status) {
    eng_ctx *c = NULL;
    pthread_mutex_lock(&r->mu);
    entry *e = srv_ctx_id_valid(id) ? find_locked(r, id) : NULL;
    if (e && drop_if_gone_locked(r, e)) e = NULL;
    if (!e && srv_ctx_id_valid(id)) e = load_locked(r, id);
    if (!e && srv_ctx_id_valid(id) && lock_held(r, id)) *status = 409; /* another replica builds it */
    else if (!e || e->deleted) *status = 404;
    else if (e->status == CTX_BUILDING) *status = 409;
    else if (e->status == CTX_FAILED) *status = 410;
    else {
        c = e->ctx;
        eng_ctx_ref(c);
        *status = 200;
    }
    pthread_mutex_unlock(&r->mu);
    return c;
}

/* ---- the build ---- */

typedef struct {
    srv_ctx_reg *r;
    entry *e;
} build_arg;

static void cluster_progress(void *ud, double done) {
    build_arg *b = ud;
    lock_beat(b->r, b->e->id);
    pthread_mutex_lock(&b->r->mu);
    b->e->cluster_done = done;
    pthread_mutex_unlock(&b->r->mu);
}

static void set_failed(srv_ctx_reg *r, entry *e, const char *why) {
    lock_drop(r, e->id);
    pthread_mutex_lock(&r->mu);
    e->status = CTX_FAILED;
    snprintf(e->error, sizeof e->error, "%s", why);
    pthread_mutex_unlock(&r->mu);
    fprintf(stderr, "kvseek: context %s failed: %s\n", e->id, why);
}

static void *builder(void *arg) {
    build_arg b = *(build_arg *)arg;
    free(arg);
    srv_ctx_reg *r = b.r;
    entry *e = b.e;
    srv *s = r->s;
    const double t0 = krn_now_s();
    eng_event ev;
    eng_seq *seq = NULL;
    char err[512] = "";
    /* the prefill runs in the engine thread; we wait for its last event */
    for (;;) {
        memset(&ev, 0, sizeof ev);
        int got = eng_req_next(e->req, &ev, LOCK_BEAT_MS);
        if (got == 0) {
            lock_beat(r, e->id);
            continue;
        }
        if (got < 0) break;
        bool last = ev.finish != ENG_FINISH_NONE;
        if (last) {
            if (ev.finish == ENG_FINISH_LENGTH && ev.seq) {
                seq = ev.seq;
                ev.seq = NULL;
            } else {
                snprintf(err, sizeof err, "prefill %s%s%s", eng_finish_name(ev.finish), ev.error[0] ? ": " : "",
                         ev.error);
            }
        }
        eng_event_clear(&ev);
        if (last) break;
    }
    pthread_mutex_lock(&r->mu);
    eng_req_release(e->req);
    e->req = NULL;
    e->stage = "clustering";
    bool deleted = e->deleted;
    pthread_mutex_unlock(&r->mu);
    const double prefill_s = krn_now_s() - t0;
    if (!seq || deleted) {
        eng_seq_free(seq);
        if (!deleted) set_failed(r, e, err[0] ? err : "prefill failed");
        else lock_drop(r, e->id);
        return NULL;
    }
    eng_ctx_params cp = s->cfg.ctx_params;
    eng_ctx *c = eng_ctx_create(s->model, seq, e->tokens, e->n_tokens, &cp, cluster_progress, &b, err, sizeof err);
    if (!c) {
        set_failed(r, e, err);
        return NULL;
    }
    eng_ctx_set_prefill_s(c, prefill_s);
    pthread_mutex_lock(&r->mu);
    e->stage = "saving";
    pthread_mutex_unlock(&r->mu);
    char dir[4200];
    dir_of(r, e->id, dir, sizeof dir);
    int rc = eng_ctx_save(c, dir, err, sizeof err);
    eng_ctx_info info;
    eng_ctx_get_info(c, &info);
    eng_ctx_unref(c); /* the served copy is the file's mapping, as after a restart */
    eng_ctx *m = rc ? NULL : eng_ctx_load(s->model, dir, err, sizeof err);
    if (!rc) lock_drop(r, e->id); /* the directory is in place: others may map it now */
    if (!m) {
        set_failed(r, e, err);
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    deleted = e->deleted;
    if (!deleted) {
        e->ctx = m;
        e->status = CTX_READY;
        e->stage = "done";
        free(e->tokens);
        e->tokens = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    if (deleted) {
        eng_ctx_unref(m);
        remove_dir(dir);
        return NULL;
    }
    fprintf(stderr, "kvseek: context %s ready: %d tokens, prefill %.1f s, clustering %.2f s (%.1f%% of prefill), "
            "%.1f MiB on disk\n", e->id, e->n_tokens, prefill_s, info.cluster_s,
            100.0 * info.cluster_s / (prefill_s > 0 ? prefill_s : 1), info.file_bytes / 1048576.0);
    return NULL;
}

/* ---- the routes ---- */

static cJSON *entry_json(srv_ctx_reg *r, entry *e) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", e->id);
    cJSON_AddStringToObject(o, "object", "context");
    cJSON_AddNumberToObject(o, "created", (double)e->created);
    cJSON_AddNumberToObject(o, "tokens", e->n_tokens);
    cJSON_AddStringToObject(o, "status", status_name[e->status]);
    cJSON_AddStringToObject(o, "stage", e->stage ? e->stage : "");
    double prog = 1.0;
    if (e->status == CTX_BUILDING) {
        /* prefill is most of the work: 90%, clustering and saving the rest */
        double pf = e->req ? eng_req_progress(e->req) : 1.0;
        prog = !strcmp(e->stage, "queued") || !strcmp(e->stage, "prefill") ? 0.9 * pf
                                                                          : 0.9 + 0.09 * e->cluster_done;
        if (e->req && pf > 0 && !strcmp(e->stage, "queued")) e->stage = "prefill";
    }
    cJSON_AddNumberToObject(o, "progress", prog);
    if (e->status == CTX_FAILED) cJSON_AddStringToObject(o, "error", e->error);
    if (e->status == CTX_READY && e->ctx) {
        eng_ctx_info in;
        eng_ctx_get_info(e->ctx, &in);
        cJSON *b = cJSON_AddObjectToObject(o, "build");
        cJSON_AddNumberToObject(b, "prefill_s", in.prefill_s);
        cJSON_AddNumberToObject(b, "cluster_s", in.cluster_s);
        cJSON_AddNumberToObject(b, "clustered_keys", (double)in.clustered_keys);
        cJSON_AddNumberToObject(b, "fine_centroids", (double)in.n_fine);
        cJSON_AddNumberToObject(b, "coarse_centroids", (double)in.n_coarse);
        cJSON_AddNumberToObject(b, "file_bytes", (double)in.file_bytes);
    }
    (void)r;
    return o;
}

static enum MHD_Result create(srv_conn *c) {
    srv *s = c->s;
    srv_ctx_reg *r = s->contexts;
    cJSON *root = cJSON_ParseWithLength(c->body ? c->body : "", c->body_len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return srv_respond_error(c, 400, NULL, NULL, "the body must be a JSON object with \"text\" or \"tokens\"");
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    int32_t *ids = NULL;
    int64_t n = 0;
    const int n_vocab = tok_n_vocab(s->vocab);
    if (cJSON_IsString(text) == cJSON_IsArray(toks)) {
        cJSON_Delete(root);
        return srv_respond_error(c, 400, NULL, "text", "give exactly one of \"text\" (a string) or \"tokens\" (an array of ids)");
    }
    if (cJSON_IsString(text)) {
        size_t len = strlen(text->valuestring);
        int64_t cap = (int64_t)len + 16;
        ids = malloc(sizeof(int32_t) * cap);
        n = ids ? tok_encode(s->vocab, text->valuestring, len, true, false, ids, cap) : -1;
        if (n > cap) n = -1; /* cannot happen: a token covers at least one byte */
    } else {
        n = cJSON_GetArraySize(toks);
        ids = malloc(sizeof(int32_t) * (n > 0 ? n : 1));
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, toks) {
            double v = cJSON_GetNumberValue(it);
            if (!ids || !cJSON_IsNumber(it) || v != (double)(int32_t)v || v < 0 || v >= n_vocab) {
                free(ids);
                cJSON_Delete(root);
                return srv_respond_error(c, 400, NULL, "tokens", "tokens[%d] is not a token id in [0, %d)", i, n_vocab);
            }
            ids[i++] = (int32_t)v;
        }
    }
    cJSON_Delete(root);
    if (n <= 0) {
        free(ids);
        return srv_respond_error(c, 400, NULL, "text", "the context is empty or cannot be tokenized");
    }
    if (n > s->cfg.context_max_tokens) {
        free(ids);
        return srv_respond_error(c, 400, "context_length_exceeded", "text",
                                 "the context has %lld tokens; this server registers at most %d (context_max_tokens)",
                                 (long long)n, s->cfg.context_max_tokens);
    }
    char id[32];
    snprintf(id, sizeof id, "ctx_%016llx",
             (unsigned long long)eng_ctx_content_hash(s->model, &s->cfg.ctx_params, ids, (int)n));
    pthread_mutex_lock(&r->mu);
    /* the same text again: the same context (here, in the shared store, or being built) */
    entry *old = find_locked(r, id);
    if (old && drop_if_gone_locked(r, old)) old = NULL;
    if (old && old->status == CTX_FAILED && !old->deleted) {
        for (entry **pp = &r->head; *pp; pp = &(*pp)->next)
            if (*pp == old) { *pp = old->next; break; }
        r->count--;
        if (old->has_thread) pthread_join(old->th, NULL);
        entry_free(old);
        old = NULL;
    }
    if (old && old->deleted) {
        pthread_mutex_unlock(&r->mu);
        free(ids);
        return srv_respond_error(c, 409, "context_busy", NULL, "context %s is being deleted; retry", id);
    }
    if (!old) old = load_locked(r, id);
    if (old) {
        cJSON *o = entry_json(r, old);
        int st = old->status == CTX_BUILDING ? 202 : 200;
        pthread_mutex_unlock(&r->mu);
        free(ids);
        return srv_respond_json(c, st, o);
    }
    if (r->count >= s->cfg.max_contexts) {
        pthread_mutex_unlock(&r->mu);
        free(ids);
        return srv_respond_error(c, 429, NULL, NULL, "%d contexts are registered (max_contexts): delete one first",
                                 s->cfg.max_contexts);
    }
    if (lock_take(r, id)) { /* another replica builds it; its result appears in the store */
        pthread_mutex_unlock(&r->mu);
        free(ids);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "object", "context");
        cJSON_AddNumberToObject(o, "tokens", (double)n);
        cJSON_AddStringToObject(o, "status", "building");
        cJSON_AddStringToObject(o, "stage", "elsewhere");
        cJSON_AddNumberToObject(o, "progress", 0);
        return srv_respond_json(c, 202, o);
    }
    entry *e = calloc(1, sizeof *e);
    if (!e) {
        lock_drop(r, id);
        pthread_mutex_unlock(&r->mu);
        free(ids);
        return srv_respond_error(c, 500, NULL, NULL, "out of memory");
    }
    snprintf(e->id, sizeof e->id, "%s", id);
    e->status = CTX_BUILDING;
    e->n_tokens = (int)n;
    e->tokens = ids;
    e->stage = "queued";
    e->created = (long long)time(NULL);
    int rc = eng_sched_submit_build(s->sched, e->tokens, e->n_tokens, s->cfg.ctx_params.obs_tokens, &e->req);
    build_arg *b = rc ? NULL : malloc(sizeof *b);
    if (!rc && b) {
        *b = (build_arg){r, e};
        if (pthread_create(&e->th, NULL, builder, b)) {
            free(b);
            b = NULL;
        }
    }
    if (rc || !b) {
        lock_drop(r, id);
        pthread_mutex_unlock(&r->mu);
        if (e->req) eng_req_release(e->req);
        entry_free(e);
        if (rc == ENG_SCHED_EFULL) return srv_respond_error(c, 429, NULL, NULL, "too many requests are waiting; retry later");
        if (rc == ENG_SCHED_ESTOPPED) return srv_respond_error(c, 503, NULL, NULL, "the server is shutting down");
        if (rc == ENG_SCHED_EUNAVAIL) return srv_respond_error(c, 503, NULL, NULL, "%s", eng_sched_strerror(rc));
        return srv_respond_error(c, 500, NULL, NULL, "cannot start the build: %s", rc ? eng_sched_strerror(rc) : "no thread");
    }
    e->has_thread = true;
    e->next = r->head;
    r->head = e;
    r->count++;
    cJSON *o = entry_json(r, e);
    pthread_mutex_unlock(&r->mu);
    fprintf(stderr, "kvseek: context %s: building (%d tokens)\n", e->id, e->n_tokens);
    return srv_respond_json(c, 202, o);
}

enum MHD_Result srv_api_contexts(srv_conn *c, const char *method, const char *id) {
    srv_ctx_reg *r = c->s->contexts;
    if (!r) return srv_respond_error(c, 503, NULL, NULL, "contexts are not available (no data directory)");
    if (!id) {
        if (!strcmp(method, "POST")) return create(c);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON *arr = cJSON_AddArrayToObject(o, "data");
        pthread_mutex_lock(&r->mu);
        /* the store may hold contexts other replicas built: map them too */
        DIR *d = opendir(c->s->cfg.data_dir);
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (srv_ctx_id_valid(de->d_name) && !find_locked(r, de->d_name)) load_locked(r, de->d_name);
        if (d) closedir(d);
        for (entry *e = r->head, *next; e; e = next) {
            next = e->next;
            drop_if_gone_locked(r, e);
        }
        for (entry *e = r->head; e; e = e->next)
            if (!e->deleted) cJSON_AddItemToArray(arr, entry_json(r, e));
        pthread_mutex_unlock(&r->mu);
        return srv_respond_json(c, 200, o);
    }
    pthread_mutex_lock(&r->mu);
    entry *e = srv_ctx_id_valid(id) ? find_locked(r, id) : NULL;
    if (e && drop_if_gone_locked(r, e)) e = NULL;
    if (!e && srv_ctx_id_valid(id)) e = load_locked(r, id);
    if (!e && srv_ctx_id_valid(id) && lock_held(r, id) && strcmp(method, "DELETE")) {
        pthread_mutex_unlock(&r->mu);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", id);
        cJSON_AddStringToObject(o, "object", "context");
        cJSON_AddStringToObject(o, "status", "building");
        cJSON_AddStringToObject(o, "stage", "elsewhere");
        cJSON_AddNumberToObject(o, "progress", 0);
        return srv_respond_json(c, 200, o);
    }
    if (!e || e->deleted) {
        pthread_mutex_unlock(&r->mu);
        return srv_respond_error(c, 404, "context_not_found", NULL, "no context '%.40s'", id);
    }
    if (!strcmp(method, "DELETE")) {
        /* unlink now; requests running on it keep its mapping until they end */
        char dir[4200];
        dir_of(r, e->id, dir, sizeof dir);
        for (entry **pp = &r->head; *pp; pp = &(*pp)->next)
            if (*pp == e) {
                if (e->status == CTX_BUILDING) {
                    e->deleted = true; /* the builder frees nothing it does not own; we keep it listed */
                    if (e->req) eng_req_cancel(e->req);
                } else {
                    *pp = e->next;
                }
                break;
            }
        r->count--;
        remove_dir(dir);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", e->id);
        cJSON_AddStringToObject(o, "object", "context");
        cJSON_AddBoolToObject(o, "deleted", true);
        if (e->status != CTX_BUILDING) {
            pthread_t th = e->th;
            bool join = e->has_thread;
            pthread_mutex_unlock(&r->mu);
            if (join) pthread_join(th, NULL);
            entry_free(e);
        } else {
            pthread_mutex_unlock(&r->mu);
        }
        return srv_respond_json(c, 200, o);
    }
    cJSON *o = entry_json(r, e);
    pthread_mutex_unlock(&r->mu);
    return srv_respond_json(c, 200, o);
}
