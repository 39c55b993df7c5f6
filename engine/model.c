/* Model loading and the forward pass for gemma3, qwen2 and llama. A prefill chunk of T tokens
 * runs every weight matrix once over all T tokens (krn_matmul); decode is the T = 1 case.
 * K and V live in each sequence's paged store (kvcache/); attend() reads them densely for
 * prefill rows and through the sequence's selector (index/) for decode rows of global layers. */
#include "model_impl.h"
#include "util.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "gpu.h"
#include "ops.h"
#include "quant.h"

/* ---- loading ---- */

typedef struct {
    const eng_model *m;
    char *err;
    size_t errlen;
    int failed;
} loader;

static const gguf_tensor *find(loader *L, const char *name, int required) {
    if (L->failed) return NULL;
    const gguf_tensor *t = gguf_find_tensor(L->m->g, name);
    if (!t && required) {
        eng_set_err(L->err, L->errlen, "model: missing tensor '%s'", name);
        L->failed = 1;
    }
    return t;
}

/* A 1-D f32 vector of exactly n elements. */
static const float *vec(loader *L, const char *name, int64_t n, int required) {
    const gguf_tensor *t = find(L, name, required);
    if (!t) return NULL;
    if (t->type != KRN_TYPE_F32 || t->ne[0] != n || t->ne[1] * t->ne[2] * t->ne[3] != 1) {
        eng_set_err(L->err, L->errlen, "model: tensor '%s' must be f32 of %lld elements (is type %u, %lld x %lld)",
                name, (long long)n, t->type, (long long)t->ne[0], (long long)t->ne[1]);
        L->failed = 1;
        return NULL;
    }
    if ((uintptr_t)t->data % sizeof(float)) {
        eng_set_err(L->err, L->errlen, "model: tensor '%s' is misaligned", name);
        L->failed = 1;
        return NULL;
    }
    return t->data;
}

/* A matrix with n_cols inputs and n_rows outputs (GGUF ne = [n_cols, n_rows]). */
static weight mat(loader *L, const char *name, int64_t n_rows, int64_t n_cols, int required) {
    weight w = {0};
    const gguf_tensor *t = find(L, name, required);
    if (!t) return w;
    if (t->ne[0] != n_cols || t->ne[1] != n_rows || t->ne[2] != 1 || t->ne[3] != 1) {
        eng_set_err(L->err, L->errlen, "model: tensor '%s' has shape %lld x %lld, expected %lld x %lld",
                name, (long long)t->ne[0], (long long)t->ne[1], (long long)n_cols, (long long)n_rows);
        L->failed = 1;
        return w;
    }
    if (!krn_type_supported(t->type)) {
        eng_set_err(L->err, L->errlen, "model: tensor '%s' has unsupported type %u", name, t->type);
        L->failed = 1;
        return w;
    }
    w.type = t->type;
    w.data = t->data;
    w.n_rows = n_rows;
    w.n_cols = n_cols;
    return w;
}

static bool key_u32(const gguf_ctx *g, const char *arch, const char *suffix, uint32_t *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    return gguf_get_u32(g, k, out);
}

static bool key_f32(const gguf_ctx *g, const char *arch, const char *suffix, float *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, suffix);
    return gguf_get_f32(g, k, out);
}

static int read_hparams(eng_model *m, char *err, size_t errlen) {
    const gguf_ctx *g = m->g;
    eng_hparams *hp = &m->hp;
    const char *s;
    uint64_t len;
    if (!gguf_get_str(g, "general.architecture", &s, &len) || len == 0 || len >= sizeof hp->arch_name) {
        eng_set_err(err, errlen, "model: missing general.architecture");
        return -1;
    }
    memcpy(hp->arch_name, s, len);
    hp->arch_name[len] = 0;
    const char *a = hp->arch_name;
    if (!strcmp(a, "llama")) hp->arch = ENG_ARCH_LLAMA;
    else if (!strcmp(a, "qwen2")) hp->arch = ENG_ARCH_QWEN2;
    else if (!strcmp(a, "gemma3")) hp->arch = ENG_ARCH_GEMMA3;
    else {
        eng_set_err(err, errlen, "model: unsupported architecture '%s' (supported: gemma3, qwen2, llama)", a);
        return -1;
    }
    uint32_t u;
#define REQ(field, suffix)                                                                   \
    do {                                                                                     \
        if (!key_u32(g, a, suffix, &u) || u == 0 || u > (1u << 24)) {                        \
            eng_set_err(err, errlen, "model: missing or invalid %s.%s", a, suffix);              \
            return -1;                                                                       \
        }                                                                                    \
        hp->field = (int)u;                                                                  \
    } while (0)
    REQ(n_embd, "embedding_length");
    REQ(n_layer, "block_count");
    REQ(n_head, "attention.head_count");
    REQ(n_ff, "feed_forward_length");
    REQ(n_ctx_train, "context_length");
#undef REQ
    if (hp->n_layer > 4096) {
        eng_set_err(err, errlen, "model: block_count %d is implausible", hp->n_layer);
        return -1;
    }
    hp->n_head_kv = key_u32(g, a, "attention.head_count_kv", &u) ? (int)u : hp->n_head;
    hp->head_dim = key_u32(g, a, "attention.key_length", &u) ? (int)u : hp->n_embd / hp->n_head;
    hp->v_dim = key_u32(g, a, "attention.value_length", &u) ? (int)u : hp->head_dim;
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv || hp->head_dim <= 0 || hp->head_dim > 1024 ||
        hp->v_dim <= 0 || hp->v_dim > 1024 || hp->head_dim % 2) {
        eng_set_err(err, errlen, "model: invalid attention shape (heads %d, kv heads %d, head dim %d)",
                hp->n_head, hp->n_head_kv, hp->head_dim);
        return -1;
    }
    hp->n_rot = key_u32(g, a, "rope.dimension_count", &u) ? (int)u : hp->head_dim;
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2) {
        eng_set_err(err, errlen, "model: invalid rope.dimension_count %d", hp->n_rot);
        return -1;
    }
    hp->eps = 1e-6f;
    if (!key_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->eps)) hp->eps = 1e-5f;
    hp->rope_base = 10000.0f;
    key_f32(g, a, "rope.freq_base", &hp->rope_base);
    hp->rope_freq_scale = 1.0f;
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", a);
    if (gguf_get_str(g, k, &s, &len) && !(len == 4 && !memcmp(s, "none", 4))) {
        if (len == 6 && !memcmp(s, "linear", 6)) {
            float f = 1.0f;
            if (key_f32(g, a, "rope.scaling.factor", &f) && f > 0.0f) hp->rope_freq_scale = 1.0f / f;
        } else if (!(len == 5 && !memcmp(s, "llama", 5)) && !(len == 6 && !memcmp(s, "llama3", 6))) {
            eng_set_err(err, errlen, "model: unsupported rope scaling '%.*s'", (int)len, s);
            return -1;
        }
    }
    hp->rope_neox = hp->arch != ENG_ARCH_LLAMA;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    key_f32(g, a, "attention.scale", &hp->attn_scale);
    hp->final_softcap = 0.0f;
    key_f32(g, a, "final_logit_softcapping", &hp->final_softcap);
    hp->embd_scale = 1.0f;
    hp->rope_base_swa = hp->rope_base;
    if (hp->arch == ENG_ARCH_GEMMA3) {
        hp->embd_scale = sqrtf((float)hp->n_embd);
        hp->sliding_window = key_u32(g, a, "attention.sliding_window", &u) ? (int)u : 0;
        hp->swa_pattern = key_u32(g, a, "attention.sliding_window_pattern", &u) ? (int)u : 6;
        /* local layers use their own base and no scaling (gemma3 4B+ scale only global layers) */
        hp->rope_base_swa = 10000.0f;
        key_f32(g, a, "rope.freq_base_swa", &hp->rope_base_swa);
    }
    return 0;
}

static int alloc_workspace(eng_model *m) {
    const eng_hparams *hp = &m->hp;
    size_t T = (size_t)m->chunk;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t vd = (size_t)hp->n_head_kv * hp->v_dim, ad = (size_t)hp->n_head * hp->v_dim;
    m->x = malloc(T * hp->n_embd * sizeof(float));
    m->h = malloc(T * hp->n_embd * sizeof(float));
    m->q = malloc(T * qd * sizeof(float));
    m->k = malloc(T * kd * sizeof(float));
    m->v = malloc(T * vd * sizeof(float));
    m->att = malloc(T * ad * sizeof(float));
    m->o = malloc(T * hp->n_embd * sizeof(float));
    m->ff_g = malloc(T * hp->n_ff * sizeof(float));
    m->ff_u = malloc(T * hp->n_ff * sizeof(float));
    m->rope_cos = malloc(T * 2 * hp->n_rot * sizeof(float));
    m->rope_sin = malloc(T * 2 * hp->n_rot * sizeof(float));
    m->row_seq = malloc(T * sizeof *m->row_seq);
    m->row_pos = malloc(T * sizeof *m->row_pos);
    m->row_sparse = malloc(T);
    m->logits = malloc((size_t)LOGIT_GROUP * hp->n_vocab * sizeof(float));
    m->att_lse = malloc(T * hp->n_head * sizeof(float));
    int nthr = omp_get_max_threads(), G = hp->n_head / hp->n_head_kv;
    m->job_threads = nthr;
    m->jobs = malloc(T * hp->n_head_kv * (size_t)(G > nthr ? G : nthr) * sizeof *m->jobs);
    return m->att_lse && m->jobs && m->row_seq && m->row_pos && m->row_sparse && m->logits && m->x && m->h && m->q && m->k && m->v && m->att && m->o && m->ff_g && m->ff_u &&
                   m->rope_cos && m->rope_sin ? 0 : -1;
}

eng_model *eng_model_load(const char *path, const eng_model_params *p, char *err, size_t errlen) {
    eng_model *m = calloc(1, sizeof *m);
    if (!m) {
        eng_set_err(err, errlen, "model: out of memory");
        return NULL;
    }
    if (p) m->params = *p;
    if (eng_attn_is_unset(&m->params.attn)) m->params.attn = eng_attn_default();
    const char *fault = getenv("KVSEEK_FAULT"); /* tests: point:n (eng_fault_arm) */
    if (fault && strchr(fault, ':')) {
        char point[32];
        snprintf(point, sizeof point, "%.*s", (int)(strchr(fault, ':') - fault), fault);
        eng_fault_arm(point, atoll(strchr(fault, ':') + 1));
    }
    int use_gpu = 0;
    if (m->params.device == ENG_DEVICE_CUDA) {
        char why[256] = "";
        use_gpu = gpu_device_count(why, sizeof why) > 0;
        if (!use_gpu) fprintf(stderr, "kvseek: no usable CUDA device (%s); running on the CPU\n", why);
    }
    m->chunk = m->params.chunk > 0 ? m->params.chunk : use_gpu ? 1024 : 256;
    if (m->params.n_threads > 0) omp_set_num_threads(m->params.n_threads);
    m->g = gguf_open(path, err, errlen);
    if (!m->g) goto fail;
    if (read_hparams(m, err, errlen)) goto fail;
    m->vocab = tok_load(m->g, err, errlen);
    if (!m->vocab) goto fail;

    eng_hparams *hp = &m->hp;
    loader L = {m, err, errlen, 0};
    const gguf_tensor *te = find(&L, "token_embd.weight", 1);
    if (!te) goto fail;
    hp->n_vocab = (int)te->ne[1];
    if (te->ne[1] > INT32_MAX || hp->n_vocab != tok_n_vocab(m->vocab)) {
        eng_set_err(err, errlen, "model: token_embd has %lld rows but the vocabulary %d tokens",
                (long long)te->ne[1], tok_n_vocab(m->vocab));
        goto fail;
    }
    const int E = hp->n_embd, hd = hp->head_dim, vd = hp->v_dim;
    const int nq = hp->n_head * hd, nk = hp->n_head_kv * hd, nv = hp->n_head_kv * vd;
    m->tok_embd = mat(&L, "token_embd.weight", hp->n_vocab, E, 1);
    m->output_norm = vec(&L, "output_norm.weight", E, 1);
    m->output = mat(&L, "output.weight", hp->n_vocab, E, 0);
    if (!m->output.data) m->output = m->tok_embd;
    if (gguf_find_tensor(m->g, "rope_freqs.weight"))
        m->rope_factors = vec(&L, "rope_freqs.weight", hp->n_rot / 2, 1);
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        eng_set_err(err, errlen, "model: out of memory");
        goto fail;
    }
    const int gemma = hp->arch == ENG_ARCH_GEMMA3;
    for (int l = 0; l < hp->n_layer && !L.failed; l++) {
        layer_w *w = &m->layers[l];
        char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        w->attn_norm = vec(&L, NAME("attn_norm.weight"), E, 1);
        w->wq = mat(&L, NAME("attn_q.weight"), nq, E, 1);
        w->wk = mat(&L, NAME("attn_k.weight"), nk, E, 1);
        w->wv = mat(&L, NAME("attn_v.weight"), nv, E, 1);
        w->wo = mat(&L, NAME("attn_output.weight"), E, hp->n_head * vd, 1);
        w->bq = vec(&L, NAME("attn_q.bias"), nq, hp->arch == ENG_ARCH_QWEN2);
        w->bk = vec(&L, NAME("attn_k.bias"), nk, hp->arch == ENG_ARCH_QWEN2);
        w->bv = vec(&L, NAME("attn_v.bias"), nv, hp->arch == ENG_ARCH_QWEN2);
        w->q_norm = vec(&L, NAME("attn_q_norm.weight"), hd, gemma);
        w->k_norm = vec(&L, NAME("attn_k_norm.weight"), hd, gemma);
        w->post_attn_norm = vec(&L, NAME("post_attention_norm.weight"), E, gemma);
        w->ffn_norm = vec(&L, NAME("ffn_norm.weight"), E, 1);
        w->gate = mat(&L, NAME("ffn_gate.weight"), hp->n_ff, E, 1);
        w->up = mat(&L, NAME("ffn_up.weight"), hp->n_ff, E, 1);
        w->down = mat(&L, NAME("ffn_down.weight"), E, hp->n_ff, 1);
        w->post_ffn_norm = vec(&L, NAME("post_ffw_norm.weight"), E, gemma);
#undef NAME
    }
    if (L.failed) goto fail;
    if (hp->n_head / hp->n_head_kv > ATTN_MAX_GROUP || (hp->n_head / hp->n_head_kv) * hp->v_dim > 4096) {
        eng_set_err(err, errlen, "model: %d query heads per KV head of dim %d exceed the attention kernels' limit",
                hp->n_head / hp->n_head_kv, hp->v_dim);
        goto fail;
    }
    if (alloc_workspace(m)) {
        eng_set_err(err, errlen, "model: out of memory for the workspace");
        goto fail;
    }
    if (!use_gpu || eng_gpu_load(m, err, errlen) == 0) return m;
fail:
    eng_model_free(m);
    return NULL;
}

void eng_model_free(eng_model *m) {
    if (!m) return;
    eng_gpu_free(m);
    free(m->x); free(m->h); free(m->q); free(m->k); free(m->v); free(m->att); free(m->o);
    free(m->ff_g); free(m->ff_u); free(m->rope_cos); free(m->rope_sin);
    free(m->row_seq); free(m->row_pos); free(m->row_sparse); free(m->logits);
    free(m->att_lse); free(m->jobs); free(m->part_o); free(m->part_l);
    free(m->layers);
    tok_free(m->vocab);
    gguf_close(m->g);
    free(m);
}

const eng_hparams *eng_model_hparams(const eng_model *m) { return &m->hp; }
const char *eng_model_device(const eng_model *m) { return m->gpu ? "cuda" : "cpu"; }
const tok_vocab *eng_model_vocab(const eng_model *m) { return m->vocab; }
const gguf_ctx *eng_model_gguf(const eng_model *m) { return m->g; }

bool eng_layer_is_local(const eng_model *m, int layer) {
    const eng_hparams *hp = &m->hp;
    return hp->sliding_window > 0 && hp->swa_pattern > 1 && layer % hp->swa_pattern < hp->swa_pattern - 1;
}

/* ---- forward ---- */

static void matmul(const weight *w, const float *X, int T, float *Y) {
    krn_matmul(w->type, w->data, w->n_rows, w->n_cols, X, T, Y);
}

/* matmul of n <= KRN_MV_MAX matrices that read the same X (n_cols equal): for one token (decode)
 * in one krn_matvec_n, one OpenMP region for all of them; the same bits either way. */
static void matmul_shared(int n, const weight *const w[], const float *X, int T, float *const Y[]) {
    if (T != 1) {
        for (int i = 0; i < n; i++) matmul(w[i], X, T, Y[i]);
        return;
    }
    krn_mv mv[KRN_MV_MAX];
    for (int i = 0; i < n; i++)
        mv[i] = (krn_mv){.type = w[i]->type, .W = w[i]->data, .n_rows = w[i]->n_rows, .y = Y[i]};
    krn_matvec_n(n, mv, w[0]->n_cols, X);
}

static void add_bias(float *y, const float *b, int T, int n) {
    if (!b) return;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

/* Attention of one (row, KV head) through its plan: the group's G query heads against the row's
 * sequence. Prefill rows, local layers and the dense selector read one range; a decode row of a
 * global layer reads sinks + recent window + the selector's ids, merged by LSE. A selector
 * failure marks the row's sequence failed (its output is zeroed; the other rows go on). */
static void attend_one(const eng_model *m, int layer, int t, int kvh) {
    const eng_hparams *hp = &m->hp;
    const int hd = hp->head_dim, vd = hp->v_dim, nh = hp->n_head, G = nh / hp->n_head_kv;
    eng_seq *s = m->row_seq[t];
    const int64_t p = m->row_pos[t];
    const attn_kv_view *view = &s->views[layer * hp->n_head_kv + kvh];
    const float *q = m->q + ((size_t)t * nh + (size_t)kvh * G) * hd;
    float *out = m->att + ((size_t)t * nh + (size_t)kvh * G) * vd;
    float lse[ATTN_MAX_GROUP];
    eng_attn_plan pl;
    eng_plan_ranges(s, layer, p, m->row_sparse[t], &pl);
    if (eng_row_dead(m, t) || eng_plan_select(s, layer, kvh, q, &pl)) {
        memset(out, 0, sizeof(float) * (size_t)G * vd);
        return;
    }
    eng_plan_run(m, view, q, &pl, out, lse);
    eng_plan_account(s, view, q, p, &pl, out, lse);
    if (s->trace_nb && !eng_layer_is_local(m, layer)) eng_plan_trace(s, view, q, p, &pl, lse);
}

/* The attention trace of the rows attend() ran outside attend_one (prefill tiles, decode rows
 * split by keys or queries): their plan is one range, recomputed here once per (row, KV head),
 * and their log-sum-exp is in att_lse once the key parts have merged. */
static void trace_rest(eng_model *m, int layer, int nj) {
    const eng_hparams *hp = &m->hp;
    const int nkv = hp->n_head_kv, G = hp->n_head / nkv, hd = hp->head_dim, nh = hp->n_head;
    int any = 0;
    for (int i = 0; i < nj && !any; i++) {
        const attn_job *j = &m->jobs[i];
        for (int r = 0; r < j->rows && !any; r++)
            any = !j->whole && eng_seq_traced(m->row_seq[j->t + r], m->row_pos[j->t + r]);
    }
    if (!any) return;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nj; i++) {
        const attn_job *j = &m->jobs[i];
        if (j->whole || eng_row_dead(m, j->t) || (j->rows == 1 && (j->g0 != 0 || j->slot >= 0))) continue;
        for (int r = 0; r < j->rows; r++) {
            const int t = j->t + r;
            eng_seq *s = m->row_seq[t];
            if (!eng_seq_traced(s, m->row_pos[t])) continue;
            eng_attn_plan pl;
            eng_plan_ranges(s, layer, m->row_pos[t], m->row_sparse[t], &pl);
            const size_t q0 = (size_t)t * nh + (size_t)j->h * G;
            eng_plan_trace(s, &s->views[layer * nkv + j->h], m->q + q0 * hd, m->row_pos[t], &pl, m->att_lse + q0);
        }
    }
}

/* Rows x KV heads in parallel, always inside a parallel region, so a kernel never splits a
 * key range on its own and a row's result does not depend on what else is in the batch.
 * A decode row that reads a dense range (local layers, the dense selector) is split further so
 * that one sequence decoding on a model with one KV head still uses every core: a short range
 * by query heads of its group (each query's arithmetic is its own: bit-identical to the whole
 * group), a long one by keys into parts merged in a fixed order (which depends on the range and
 * the thread count only). Prefill rows and selector rows run whole. */
static int attend(eng_model *m, int layer, int T, char *err, size_t errlen) {
    const eng_hparams *hp = &m->hp;
    const int nkv = hp->n_head_kv, local = eng_layer_is_local(m, layer);
    const int G = hp->n_head / nkv, hd = hp->head_dim, vd = hp->v_dim, nh = hp->n_head;
    int nthr = omp_get_max_threads();
    if (nthr > m->job_threads) nthr = m->job_threads;
    const double t0 = krn_now_s();
    int nj = 0, n_slots = 0;
    const int tile = attn_causal_max_rows(G, hd, vd); /* prefill rows of a global layer per job */
    for (int t = 0; t < T; t++) {
        eng_seq *s = m->row_seq[t];
        const int64_t p = m->row_pos[t];
        if (!local && !m->row_sparse[t] && tile > 1) {
            int r = 1;
            while (r < tile && t + r < T && m->row_seq[t + r] == s) r++;
            for (int h = 0; h < nkv; h++) {
                attn_job *j = &m->jobs[nj++];
                memset(j, 0, sizeof *j);
                j->t = t; j->h = h; j->rows = r; j->slot = -1;
                j->whole = r == 1; /* a lone row takes the usual path */
            }
            t += r - 1;
            continue;
        }
        eng_attn_plan pl;
        eng_plan_ranges(s, layer, p, m->row_sparse[t], &pl);
        const int64_t lo = pl.part[0].lo, hi = pl.part[0].hi;
        int kparts = 1, qparts = 1;
        if (m->row_sparse[t] && pl.n_parts == 1 && nthr > 1) {
            if (hi - lo >= 2 * ATTN_SPLIT_KEYS) {
                int64_t k = (hi - lo) / ATTN_SPLIT_KEYS;
                kparts = (int)(k < nthr ? k : nthr);
            } else {
                qparts = G < nthr ? G : nthr;
            }
        }
        for (int h = 0; h < nkv; h++) {
            for (int i = 0; i < kparts * qparts; i++) {
                attn_job *j = &m->jobs[nj++];
                j->t = t; j->h = h;
                j->whole = kparts * qparts == 1;
                j->g0 = G * (i % qparts) / qparts;
                j->ng = G * (i % qparts + 1) / qparts - j->g0;
                j->lo = lo + (hi - lo) * (i / qparts) / kparts;
                j->hi = lo + (hi - lo) * (i / qparts + 1) / kparts;
                j->slot = i >= qparts ? n_slots++ : -1; /* key parts after the first: scratch */
                j->rows = 1;
            }
        }
    }
    if ((size_t)n_slots > m->part_cap) {
        /* grows to the largest split seen (long dense decode), then stays */
        free(m->part_o);
        free(m->part_l);
        m->part_o = malloc(sizeof(float) * (size_t)n_slots * G * vd);
        m->part_l = malloc(sizeof(float) * (size_t)n_slots * G);
        m->part_cap = m->part_o && m->part_l ? (size_t)n_slots : 0;
        if (!m->part_cap) {
            eng_set_err(err, errlen, "out of memory for %d attention parts", n_slots);
            return -1;
        }
    }
    #pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nj; i++) {
        const attn_job *j = &m->jobs[i];
        if (eng_row_dead(m, j->t)) continue; /* its output is never read */
        if (j->rows > 1) {
            const float *qs[ATTN_MAX_ROWS];
            float *os[ATTN_MAX_ROWS], *ls[ATTN_MAX_ROWS];
            int64_t pos[ATTN_MAX_ROWS];
            for (int r = 0; r < j->rows; r++) {
                const size_t q0 = (size_t)(j->t + r) * nh + (size_t)j->h * G;
                qs[r] = m->q + q0 * hd;
                os[r] = m->att + q0 * vd;
                ls[r] = m->att_lse + q0;
                pos[r] = m->row_pos[j->t + r];
            }
            attn_causal_rows(&m->row_seq[j->t]->views[layer * nkv + j->h], qs, G, j->rows, pos,
                             hp->attn_scale, os, ls);
            continue;
        }
        if (j->whole) {
            attend_one(m, layer, j->t, j->h);
            continue;
        }
        eng_seq *s = m->row_seq[j->t];
        const attn_kv_view *view = &s->views[layer * nkv + j->h];
        const size_t q0 = (size_t)j->t * nh + (size_t)j->h * G + j->g0;
        float *out = j->slot < 0 ? m->att + q0 * vd : m->part_o + (size_t)j->slot * G * vd;
        float *lse = j->slot < 0 ? m->att_lse + q0 : m->part_l + (size_t)j->slot * G;
        attn_range(view, m->q + q0 * hd, j->ng, j->lo, j->hi, hp->attn_scale, out, lse);
    }
    /* key parts merge into the first part in order */
    for (int i = 0; i < nj; i++) {
        const attn_job *j = &m->jobs[i];
        if (j->slot < 0 || eng_row_dead(m, j->t)) continue;
        const size_t q0 = (size_t)j->t * nh + (size_t)j->h * G;
        attn_merge(m->att + q0 * vd, m->att_lse + q0, m->part_o + (size_t)j->slot * G * vd,
                   m->part_l + (size_t)j->slot * G, G, vd);
    }
    if (!local) trace_rest(m, layer, nj);
    const double dt = krn_now_s() - t0;
    /* attribute the time to the sequences of the chunk, once each */
    for (int t = 0; t < T; t++)
        if (t == 0 || m->row_seq[t] != m->row_seq[t - 1]) m->row_seq[t]->st.attn_s += dt;
    return 0;
}

void eng_rows_to_store(eng_model *m, int layer, int T, const float *k, const float *v, const float *q) {
    const eng_hparams *hp = &m->hp;
    const int hd = hp->head_dim, vd = hp->v_dim, nh = hp->n_head, nkv = hp->n_head_kv, G = nh / nkv;
    const int local = eng_layer_is_local(m, layer);
    /* serial: rows of one sequence append to the same store in order; space was reserved */
    for (int t = 0; t < T; t++) {
        eng_seq *s = m->row_seq[t];
        if (eng_row_dead(m, t)) continue;
        const int injected = eng_fault_hit(ENG_FAULT_KV_APPEND);
        int rc = injected ? KV_ERR_NOMEM
                          : kv_append(s->kv, layer, k + (size_t)t * nkv * hd, v + (size_t)t * nkv * vd, 1);
        if (rc != KV_OK) {
            eng_seq_fail(s, "KV store: appending position %d at layer %d: %s%s", m->row_pos[t], layer,
                         kv_strerror(rc), injected ? " (injected fault)" : "");
            continue;
        }
        if (s->cap_q && m->row_pos[t] >= s->cap_from && m->row_pos[t] < s->cap_from + s->cap_n)
            memcpy(s->cap_q + ((size_t)layer * s->cap_n + (m->row_pos[t] - s->cap_from)) * nh * hd,
                   q + (size_t)t * nh * hd, sizeof(float) * nh * hd);
        if (!local && !m->row_sparse[t] && (s->keep_queries || (s->caps & IDX_CAP_OBSERVE)))
            for (int h = 0; h < nkv; h++)
                if (idx_observe(s->ix, layer, h, q + ((size_t)t * nh + (size_t)h * G) * hd, G, hd) != IDX_OK)
                    eng_seq_fail(s, "selector: recording prefill queries: %s", idx_last_error(s->ix));
    }
}

/* Runs rows [0, T) (T <= chunk); row_seq/row_pos are already filled. Logits of the rows that
 * want them go through the output matrix in groups of LOGIT_GROUP rows. */
static int forward_chunk(eng_model *m, const eng_batch_row *rows, int T, char *err, size_t errlen) {
    const eng_hparams *hp = &m->hp;
    const int E = hp->n_embd, hd = hp->head_dim, vd = hp->v_dim, nh = hp->n_head, nkv = hp->n_head_kv;
    const int half = hp->n_rot / 2;
    const size_t erow = krn_row_bytes(m->tok_embd.type, E);

    for (int t = 0; t < T; t++) {
        float *x = m->x + (size_t)t * E;
        krn_dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)rows[t].token * erow, x, E);
        if (hp->embd_scale != 1.0f)
            for (int i = 0; i < E; i++) x[i] *= hp->embd_scale;
    }
    /* rope tables: [t][0] global base, [t][1] local base */
    for (int t = 0; t < T; t++) {
        float *c = m->rope_cos + (size_t)t * 2 * half, *sn = m->rope_sin + (size_t)t * 2 * half;
        krn_rope_angles(c, sn, m->row_pos[t], hp->n_rot, hp->rope_base, hp->rope_freq_scale, m->rope_factors);
        krn_rope_angles(c + half, sn + half, m->row_pos[t], hp->n_rot, hp->rope_base_swa,
                        hp->arch == ENG_ARCH_GEMMA3 ? 1.0f : hp->rope_freq_scale, m->rope_factors);
    }

    for (int l = 0; l < hp->n_layer; l++) {
        const layer_w *w = &m->layers[l];
        const int local = eng_layer_is_local(m, l);
        for (int t = 0; t < T; t++)
            krn_rmsnorm(m->h + (size_t)t * E, m->x + (size_t)t * E, w->attn_norm, E, hp->eps);
        matmul_shared(3, (const weight *[]){&w->wq, &w->wk, &w->wv}, m->h, T,
                      (float *[]){m->q, m->k, m->v});
        add_bias(m->q, w->bq, T, nh * hd);
        add_bias(m->k, w->bk, T, nkv * hd);
        add_bias(m->v, w->bv, T, nkv * vd);
        #pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            const float *c = m->rope_cos + (size_t)t * 2 * half + (local ? half : 0);
            const float *sn = m->rope_sin + (size_t)t * 2 * half + (local ? half : 0);
            for (int h = 0; h < nh; h++) {
                float *q = m->q + ((size_t)t * nh + h) * hd;
                if (w->q_norm) krn_rmsnorm(q, q, w->q_norm, hd, hp->eps);
                krn_rope(q, hp->n_rot, c, sn, hp->rope_neox);
            }
            for (int h = 0; h < nkv; h++) {
                float *k = m->k + ((size_t)t * nkv + h) * hd;
                if (w->k_norm) krn_rmsnorm(k, k, w->k_norm, hd, hp->eps);
                krn_rope(k, hp->n_rot, c, sn, hp->rope_neox);
            }
        }
        eng_rows_to_store(m, l, T, m->k, m->v, m->q);
        if (attend(m, l, T, err, errlen)) return -1;
        matmul(&w->wo, m->att, T, m->o);
        for (int t = 0; t < T; t++) {
            float *o = m->o + (size_t)t * E, *x = m->x + (size_t)t * E;
            if (w->post_attn_norm) krn_rmsnorm(o, o, w->post_attn_norm, E, hp->eps);
            for (int i = 0; i < E; i++) x[i] += o[i];
            krn_rmsnorm(m->h + (size_t)t * E, x, w->ffn_norm, E, hp->eps);
        }
        matmul_shared(2, (const weight *[]){&w->gate, &w->up}, m->h, T,
                      (float *[]){m->ff_g, m->ff_u});
        {
            /* in pieces of a row, so that one token (decode) spreads over the threads too;
             * element-wise, so the same bits however it is cut */
            enum { GLU_PIECE = 512 };
            const int n_ff = hp->n_ff, np = (n_ff + GLU_PIECE - 1) / GLU_PIECE;
            #pragma omp parallel for schedule(static)
            for (int64_t it = 0; it < (int64_t)T * np; it++) {
                const size_t off = (size_t)(it / np) * n_ff + (size_t)(it % np) * GLU_PIECE;
                const int len = (int)(it % np == np - 1 ? n_ff - (it % np) * GLU_PIECE : GLU_PIECE);
                krn_glu(m->ff_g + off, m->ff_g + off, m->ff_u + off, len, hp->arch == ENG_ARCH_GEMMA3);
            }
        }
        matmul(&w->down, m->ff_g, T, m->o);
        for (int t = 0; t < T; t++) {
            float *o = m->o + (size_t)t * E, *x = m->x + (size_t)t * E;
            if (w->post_ffn_norm) krn_rmsnorm(o, o, w->post_ffn_norm, E, hp->eps);
            for (int i = 0; i < E; i++) x[i] += o[i];
        }
    }
    /* only the rows whose logits are wanted go through the (large) output matrix */
    int want[LOGIT_GROUP], nw = 0;
    for (int t = 0; t <= T; t++) {
        if (t < T && rows[t].logits) {
            krn_rmsnorm(m->h + (size_t)nw * E, m->x + (size_t)t * E, m->output_norm, E, hp->eps);
            want[nw++] = t;
        }
        if (nw == LOGIT_GROUP || (t == T && nw > 0)) {
            matmul(&m->output, m->h, nw, m->logits);
            for (int j = 0; j < nw; j++) {
                float *dst = rows[want[j]].logits;
                const float *src = m->logits + (size_t)j * hp->n_vocab;
                if (hp->final_softcap > 0.0f) {
                    const float c = hp->final_softcap;
                    for (int i = 0; i < hp->n_vocab; i++) dst[i] = c * tanhf(src[i] / c);
                } else {
                    memcpy(dst, src, sizeof(float) * hp->n_vocab);
                }
            }
            nw = 0;
        }
    }
    return 0;
}

/* Indexes each global layer's offloaded tokens of a sequence whose prefill just ended. */
static void build_index(const eng_model *m, eng_seq *s) {
    const double t0 = krn_now_s();
    const int nkv = m->hp.n_head_kv, n = m->hp.n_layer * nkv;
    int n_global = 0;
    for (int l = 0; l < m->hp.n_layer; l++) n_global += eng_layer_is_local(m, l) ? 0 : nkv;
    /* one slot (layer, KV head) per thread when there are slots for every thread twice over:
     * FAISS inside then runs single-threaded, which on these sizes (a few thousand queries
     * against tens of thousands of keys) scales far better than its own threading (qwen2 0.5B:
     * 48 slots; Llama-3-8B shape: 256). With fewer (gemma-3 270M: 3) a slot alone on a thread
     * would leave the others idle, so they go one by one with FAISS's threads. */
    const int par = n_global >= 2 * omp_get_max_threads();
    const int blas = par ? idx_parallel_begin() : 0;
    #pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int i = 0; i < n; i++) {
        const int l = i / nkv, h = i % nkv;
        if (eng_layer_is_local(m, l)) continue;
        /* the decode row about to run sits at position pos: its plan's offloaded range */
        eng_attn_plan pl;
        eng_plan_ranges(s, l, s->pos, 1, &pl);
        int rc = idx_build(s->ix, l, h, s->kv, pl.off_lo, pl.off_hi, NULL, 0);
        if (rc != IDX_OK)
            #pragma omp critical(eng_build_fail)
            eng_seq_fail(s, "selector: building layer %d head %d: %s", l, h,
                         idx_last_error(s->ix)[0] ? idx_last_error(s->ix) : idx_strerror(rc));
    }
    if (par) idx_parallel_end(blas);
    s->built = 1;
    s->st.build_s += krn_now_s() - t0;
}

int eng_forward_batch(eng_model *m, const eng_batch_row *rows, int n, char *err, size_t errlen) {
    if (n <= 0) {
        eng_set_err(err, errlen, "no tokens to evaluate");
        return -1;
    }
    if (eng_model_failed(m)) {
        eng_set_err(err, errlen, "%s", m->device_failed);
        return -1;
    }
    /* validate everything first so that an error leaves every sequence unchanged */
    for (int i = 0; i < n; ) {
        eng_seq *s = rows[i].seq;
        if (!s || s->m != m) {
            eng_set_err(err, errlen, "batch row %d has no sequence of this model", i);
            return -1;
        }
        if (s->failed[0]) {
            eng_set_err(err, errlen, "the sequence failed earlier (%s); reset it", s->failed);
            return -1;
        }
        int j = i;
        while (j < n && rows[j].seq == s) {
            if (rows[j].token < 0 || rows[j].token >= m->hp.n_vocab) {
                eng_set_err(err, errlen, "token id %d at index %d is out of range [0, %d)", rows[j].token, j,
                        m->hp.n_vocab);
                return -1;
            }
            j++;
        }
        if (j - i > s->n_ctx - s->pos) {
            eng_set_err(err, errlen, "context full: %d tokens in the cache, %d more requested, capacity %d",
                    s->pos, j - i, s->n_ctx);
            return -1;
        }
        if (kv_reserve(s->kv, (int64_t)s->pos + (j - i)) != KV_OK) {
            eng_set_err(err, errlen, "%s", kv_last_error(s->kv));
            return -1;
        }
        for (int k = j; k < n; k++) {
            if (rows[k].seq == s) {
                eng_set_err(err, errlen, "batch rows of one sequence must be consecutive (row %d)", k);
                return -1;
            }
        }
        i = j;
    }
    /* a sequence advanced by exactly one row is decoding: its selector indexes the prefill once */
    for (int i = 0; i < n; i++) {
        eng_seq *s = rows[i].seq;
        int single = (i == 0 || rows[i - 1].seq != s) && (i + 1 == n || rows[i + 1].seq != s);
        if (single && !s->built && !(s->caps & IDX_CAP_ALL) && !eng_seq_dense_now(s, s->pos + 1))
            build_index(m, s);
    }
    for (int i = 0; i < n; i += m->chunk) {
        int T = n - i < m->chunk ? n - i : m->chunk;
        for (int t = 0; t < T; t++) {
            eng_seq *s = rows[i + t].seq;
            const int k = i + t;
            m->row_seq[t] = s;
            m->row_pos[t] = s->pos++;
            m->row_sparse[t] = (k == 0 || rows[k - 1].seq != s) && (k + 1 == n || rows[k + 1].seq != s);
        }
        char cerr[256] = "";
        const int rc = m->gpu ? eng_gpu_forward_chunk(m, rows + i, T, cerr, sizeof cerr)
                              : forward_chunk(m, rows + i, T, cerr, sizeof cerr);
        if (rc) /* the chunk's rows are half-done: their sequences cannot go on */
            for (int t = 0; t < T; t++) eng_seq_fail(m->row_seq[t], "%s", cerr);
    }
    /* A prompt's last slice (several rows, the last wanting logits) is followed by decode: the
     * selector indexes it now, so the cost lands in the prefill (time to first token) rather
     * than in the first decode step. */
    for (int i = 0; i < n; ) {
        eng_seq *s = rows[i].seq;
        int j = i;
        while (j < n && rows[j].seq == s) j++;
        if (j - i > 1 && rows[j - 1].logits && !s->built && !(s->caps & IDX_CAP_ALL) && !s->failed[0] &&
            !eng_seq_dense_now(s, s->pos + 1))
            build_index(m, s);
        i = j;
    }
    /* a sequence that failed in this pass fails its request; the others' rows are good */
    int n_failed = 0;
    for (int i = 0; i < n; i++)
        if (rows[i].seq->failed[0] && (i == 0 || rows[i - 1].seq != rows[i].seq) && !n_failed++)
            eng_set_err(err, errlen, "%s", rows[i].seq->failed);
    return n_failed ? ENG_FORWARD_SEQ_FAILED : 0;
}

const char *eng_model_failed(const eng_model *m) {
    return atomic_load(&((eng_model *)m)->device_broken) ? m->device_failed : NULL;
}

int eng_forward(eng_model *m, eng_seq *s, const int32_t *tokens, int n, float *logits,
                bool all_logits, char *err, size_t errlen) {
    if (n <= 0) {
        eng_set_err(err, errlen, "no tokens to evaluate");
        return -1;
    }
    eng_batch_row *rows = malloc(sizeof *rows * (size_t)n);
    if (!rows) {
        eng_set_err(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        rows[i].seq = s;
        rows[i].token = tokens[i];
        rows[i].logits = NULL;
        if (logits && all_logits) rows[i].logits = logits + (size_t)i * m->hp.n_vocab;
    }
    if (logits && !all_logits) rows[n - 1].logits = logits;
    int rc = eng_forward_batch(m, rows, n, err, errlen);
    free(rows);
    return rc;
}
