/* The scheduler without HTTP, on the tiny gemma3 model: greedy output through the scheduler
 * (chunked prefill, batched decode) equals a plain eng_forward loop; concurrent requests each
 * equal themselves alone; stop strings cut (or keep) the text exactly and never leak a partial
 * match; streamed text is cut at UTF-8 boundaries; cancel, release-without-reading and free with
 * requests in flight; every submit error (queue full, too long, bad ids, bad parameters).
 * Built into the asan target too, so the threading and ownership run under the sanitizers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "model.h"
#include "sampler.h"
#include "scheduler.h"
#include "tok.h"

#define MODEL "build/tiny/tiny-gemma3.gguf"

typedef struct {
    int32_t ids[512];
    int n;
    char text[8192];
    int text_len;
    eng_finish finish;
    int n_gen, n_prompt;
    int bad_utf8_cuts; /* events whose text ends inside a UTF-8 character */
} result;

/* 1 when position p of s[0, n) falls inside a well-formed multi-byte character (a cut there
 * would split it; a lead byte that no continuation follows is invalid and may be cut off). */
static int splits_char(const char *s, int n, int p) {
    for (int q = p - 1, k = 0; q >= 0 && k < 3; q--, k++) {
        unsigned char c = (unsigned char)s[q];
        if ((c & 0xC0) == 0x80) continue;
        int need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        if (q + need <= p || q + need > n) return 0;
        for (int i = q + 1; i < q + need; i++)
            if (((unsigned char)s[i] & 0xC0) != 0x80) return 0;
        return 1;
    }
    return 0;
}

static void drain(eng_req *r, result *out) {
    memset(out, 0, sizeof *out);
    int bounds[512], nb = 0;
    eng_event ev;
    while (eng_req_next(r, &ev, 10000) == 1) {
        if (ev.has_token && out->n < 512) out->ids[out->n++] = ev.id;
        if (ev.text_len && out->text_len + ev.text_len < (int)sizeof out->text) {
            memcpy(out->text + out->text_len, ev.text, ev.text_len);
            out->text_len += ev.text_len;
        }
        if (ev.finish == ENG_FINISH_NONE && ev.text_len && nb < 512) bounds[nb++] = out->text_len;
        bool last = ev.finish != ENG_FINISH_NONE;
        if (last) {
            out->finish = ev.finish;
            out->n_gen = ev.n_gen;
            out->n_prompt = ev.n_prompt;
        }
        eng_event_clear(&ev);
        if (last) break;
    }
    out->text[out->text_len] = 0;
    for (int i = 0; i < nb; i++) out->bad_utf8_cuts += splits_char(out->text, out->text_len, bounds[i]);
}

static eng_gen_params greedy(const int32_t *prompt, int n, int max_tokens) {
    eng_gen_params p = {0};
    p.prompt = prompt;
    p.n_prompt = n;
    p.max_tokens = max_tokens;
    p.sampling = eng_sampler_default();
    p.sampling.temperature = 0.0f;
    p.ignore_eos = true;
    return p;
}

int main(void) {
    FILE *f = fopen(MODEL, "rb");
    if (!f) {
        printf("test_scheduler: %s missing (run `make tiny`): skipped\n", MODEL);
        return 0;
    }
    fclose(f);
    char err[256];
    eng_model_params mp = {.n_threads = 0};
    eng_model *m = eng_model_load(MODEL, &mp, err, sizeof err);
    CHECK(m != NULL, "%s", err);
    if (!m) return check_summary("test_scheduler");
    const tok_vocab *v = eng_model_vocab(m);
    const int n_vocab = eng_model_hparams(m)->n_vocab;

    /* a 100-token prompt: batch_rows 16 makes its prefill take several steps */
    int32_t prompt[100], prompt2[7];
    for (int i = 0; i < 100; i++) prompt[i] = 5 + (i * 37) % (n_vocab - 10);
    for (int i = 0; i < 7; i++) prompt2[i] = 11 + i * 13;

    /* reference: the plain forward loop, greedy */
    int32_t ref[40], ref2[40];
    for (int which = 0; which < 2; which++) {
        const int32_t *pr = which ? prompt2 : prompt;
        int np = which ? 7 : 100;
        int32_t *out = which ? ref2 : ref;
        eng_seq *s = eng_seq_create(m, 256, err, sizeof err);
        float *logits = malloc(sizeof(float) * n_vocab);
        CHECK(s && logits, "seq");
        CHECK(eng_forward(m, s, pr, np, logits, false, err, sizeof err) == 0, "%s", err);
        for (int i = 0; i < 40; i++) {
            int best = 0;
            for (int j = 1; j < n_vocab; j++) if (logits[j] > logits[best]) best = j;
            out[i] = best;
            if (i < 39) CHECK(eng_forward(m, s, &out[i], 1, logits, false, err, sizeof err) == 0, "%s", err);
        }
        free(logits);
        eng_seq_free(s);
    }

    eng_sched *s = NULL;
    eng_sched_params sp = {.n_parallel = 2, .n_ctx = 256, .queue_cap = 1, .batch_rows = 16};
    CHECK(eng_sched_create(m, &sp, &s, err, sizeof err) == 0, "%s", err);
    if (!s) return check_summary("test_scheduler");

    /* alone: the scheduler's greedy tokens equal the reference */
    eng_req *r;
    eng_gen_params gp = greedy(prompt, 100, 40);
    CHECK(eng_sched_submit(s, &gp, &r) == 0, "submit");
    result a;
    drain(r, &a);
    eng_req_release(r);
    CHECK(a.n == 40 && !memcmp(a.ids, ref, sizeof ref), "scheduler greedy = plain forward loop");
    CHECK(a.finish == ENG_FINISH_LENGTH && a.n_gen == 40 && a.n_prompt == 100, "finish length, counts");
    CHECK(a.bad_utf8_cuts == 0, "no event ends inside a UTF-8 character");

    /* prompt logprobs (TGI's decoder_input_details), with another request decoding beside it:
     * equal the log-softmax of a plain forward pass's per-row logits, the first NaN; and its
     * greedy output is unchanged by the 16-row slices */
    {
        float *all = malloc(sizeof(float) * (size_t)n_vocab * 100);
        eng_seq *q = eng_seq_create(m, 256, err, sizeof err);
        CHECK(all && q && eng_forward(m, q, prompt, 100, all, true, err, sizeof err) == 0, "%s", err);
        double want[100], want_top[100];
        for (int i = 1; i < 100; i++) {
            const float *lg = all + (size_t)(i - 1) * n_vocab;
            double mx = -1e30, z = 0;
            for (int j = 0; j < n_vocab; j++) mx = lg[j] > mx ? lg[j] : mx;
            for (int j = 0; j < n_vocab; j++) z += exp(lg[j] - mx);
            want[i] = lg[prompt[i]] - mx - log(z);
            want_top[i] = -log(z);
        }
        eng_seq_free(q);
        free(all);
        eng_gen_params other = greedy(prompt2, 7, 30), pl = greedy(prompt, 100, 40);
        pl.prompt_logprobs = true;
        eng_req *ro = NULL, *rp = NULL;
        CHECK(eng_sched_submit(s, &other, &ro) == 0 && eng_sched_submit(s, &pl, &rp) == 0, "submit pair");
        eng_prompt_lp *got = NULL;
        int n_tok = 0, ok_ids = 1;
        eng_event ev;
        while (rp && eng_req_next(rp, &ev, 10000) == 1) {
            if (ev.prompt_lp && !got) {
                got = ev.prompt_lp;
                ev.prompt_lp = NULL;
            }
            if (ev.has_token) ok_ids &= n_tok < 40 && ev.id == ref[n_tok++];
            bool last = ev.finish != ENG_FINISH_NONE;
            eng_event_clear(&ev);
            if (last) break;
        }
        result o;
        if (ro) drain(ro, &o);
        double worst = 0;
        int top_ok = 1;
        for (int i = 1; got && i < 100; i++) {
            worst = fmax(worst, fabs(got[i].logprob - want[i]));
            top_ok &= got[i].top_logprob >= got[i].logprob - 1e-6f && (got[i].top_id != prompt[i] ||
                      got[i].top_logprob == got[i].logprob) && fabs(got[i].top_logprob - want_top[i]) < 1e-3;
        }
        CHECK(top_ok, "each prompt position's most likely token and its logprob");
        CHECK(got && isnan(got[0].logprob) && worst < 1e-3, "prompt logprobs = plain forward's log-softmax (max diff %.2g)", worst);
        CHECK(ok_ids && n_tok == 40, "greedy output unchanged with prompt logprobs");
        free(got);
        eng_req_release(ro);
        eng_req_release(rp);
    }
    char full[8192];
    int64_t need = tok_decode(v, a.ids, a.n, false, full, sizeof full);
    CHECK(need == a.text_len && !memcmp(full, a.text, a.text_len), "the events' text is the decoded tokens");

    /* together: a long prefill and a short one, each equal to itself alone */
    eng_req *r1, *r2;
    eng_gen_params g1 = greedy(prompt, 100, 40), g2 = greedy(prompt2, 7, 40);
    CHECK(eng_sched_submit(s, &g1, &r1) == 0 && eng_sched_submit(s, &g2, &r2) == 0, "submit two");
    result b1, b2;
    drain(r2, &b2);
    drain(r1, &b1);
    eng_req_release(r1);
    eng_req_release(r2);
    CHECK(b1.n == 40 && !memcmp(b1.ids, ref, sizeof ref), "concurrent long-prompt request = alone");
    CHECK(b2.n == 40 && !memcmp(b2.ids, ref2, sizeof ref2), "concurrent short-prompt request = alone");

    {   /* a group (OpenAI's n): the prompt runs once, every member decodes as if alone */
        eng_sched_stats s0, s1;
        eng_sched_get_stats(s, &s0);
        eng_gen_params grp[2] = {greedy(prompt, 100, 40), greedy(prompt, 100, 40)};
        eng_req *gr[3];
        CHECK(eng_sched_submit_group(s, grp, 2, gr) == 0, "submit a group of 2");
        result c0, c1;
        drain(gr[1], &c1);
        drain(gr[0], &c0);
        eng_req_release(gr[0]);
        eng_req_release(gr[1]);
        eng_sched_get_stats(s, &s1);
        CHECK(c0.n == 40 && !memcmp(c0.ids, ref, sizeof ref) && c1.n == 40 && !memcmp(c1.ids, ref, sizeof ref),
              "greedy group members = the plain forward loop");
        CHECK(s1.prompt_tokens - s0.prompt_tokens == 102, "the group's prompt ran once (%llu prompt rows for "
              "2 x 100 tokens; the second member feeds its last 2)", (unsigned long long)(s1.prompt_tokens - s0.prompt_tokens));
        eng_gen_params samp[2] = {greedy(prompt, 100, 20), greedy(prompt, 100, 20)};
        for (int i = 0; i < 2; i++) {
            samp[i].sampling.temperature = 1.5f;
            samp[i].sampling.seed = 100 + i;
        }
        CHECK(eng_sched_submit_group(s, samp, 2, gr) == 0, "submit a sampled group");
        drain(gr[0], &c0);
        drain(gr[1], &c1);
        eng_req_release(gr[0]);
        eng_req_release(gr[1]);
        CHECK(c0.n == 20 && c1.n == 20 && memcmp(c0.ids, c1.ids, sizeof(int32_t) * 20),
              "members with their own seeds sample different texts");
        eng_gen_params three[3] = {greedy(prompt, 100, 4), greedy(prompt, 100, 4), greedy(prompt, 100, 4)};
        CHECK(eng_sched_submit_group(s, three, 3, gr) == ENG_SCHED_EARG, "a group larger than n_parallel is refused");
        eng_gen_params mixed[2] = {greedy(prompt, 100, 4), greedy(prompt2, 7, 4)};
        CHECK(eng_sched_submit_group(s, mixed, 2, gr) == ENG_SCHED_EARG, "a group of different prompts is refused");
    }

    /* stop strings: a 3-byte window of the greedy text */
    int at = -1;
    for (int i = 4; i + 3 <= a.text_len && at < 0; i++) {
        bool ok = true;
        for (int k = 0; k < 3; k++) ok &= (unsigned char)a.text[i + k] >= 'a' && (unsigned char)a.text[i + k] <= 'z';
        if (ok) at = i;
    }
    CHECK(at > 0, "an ASCII window in the greedy text");
    if (at > 0) {
        char stop[4] = {a.text[at], a.text[at + 1], a.text[at + 2], 0};
        const char *stops[] = {"never-matches", stop};
        const char *first = strstr(a.text, stop);
        int cut = (int)(first - a.text);
        for (int incl = 0; incl < 2; incl++) {
            gp = greedy(prompt, 100, 40);
            gp.stop = stops;
            gp.n_stop = 2;
            gp.stop_inclusive = incl;
            CHECK(eng_sched_submit(s, &gp, &r) == 0, "submit stop");
            result c;
            drain(r, &c);
            eng_req_release(r);
            int want = cut + (incl ? 3 : 0);
            CHECK(c.finish == ENG_FINISH_STOP && c.text_len == want && !memcmp(c.text, a.text, want),
                  "stop (inclusive %d): text cut at %d, got %d", incl, want, c.text_len);
        }
    }

    /* cancel mid-generation */
    gp = greedy(prompt2, 7, 200);
    CHECK(eng_sched_submit(s, &gp, &r) == 0, "submit long");
    eng_event ev;
    CHECK(eng_req_next(r, &ev, 10000) == 1 && ev.has_token, "first token");
    eng_event_clear(&ev);
    eng_req_cancel(r);
    result c;
    drain(r, &c);
    CHECK(c.finish == ENG_FINISH_CANCELLED && c.n_gen < 200, "cancel ends it (%d tokens)", c.n_gen);
    CHECK(eng_req_next(r, &ev, 0) == -1, "nothing after the final event");
    eng_req_release(r);

    /* release without reading: the engine finishes and frees it (ASan would see a leak) */
    for (int i = 0; i < 5; i++) {
        gp = greedy(prompt2, 7, 30);
        if (eng_sched_submit(s, &gp, &r) == 0) eng_req_release(r);
    }

    /* wait for them to finish */
    eng_sched_stats st;
    for (int i = 0; i < 1000; i++) {
        eng_sched_get_stats(s, &st);
        if (st.active == 0 && st.queue_depth == 0) break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    CHECK(st.active == 0 && st.queue_depth == 0, "released requests run to their end");

    /* submit errors */
    gp = greedy(prompt, 100, 157);
    CHECK(eng_sched_submit(s, &gp, &r) == ENG_SCHED_ETOOLONG, "prompt + max_tokens > ctx");
    int32_t badtok[2] = {1, n_vocab};
    gp = greedy(badtok, 2, 4);
    CHECK(eng_sched_submit(s, &gp, &r) == ENG_SCHED_EARG, "token id out of range");
    gp = greedy(prompt2, 0, 4);
    CHECK(eng_sched_submit(s, &gp, &r) == ENG_SCHED_EARG, "empty prompt");
    gp = greedy(prompt2, 7, 0);
    CHECK(eng_sched_submit(s, &gp, &r) == ENG_SCHED_EARG, "max_tokens 0");
    /* 2 sequences + 1 queued: the fourth long request is refused */
    eng_req *h[4] = {0};
    int rc[4];
    for (int i = 0; i < 4; i++) {
        gp = greedy(prompt2, 7, 200);
        rc[i] = eng_sched_submit(s, &gp, &h[i]);
    }
    CHECK(rc[0] == 0 && rc[1] == 0 && rc[2] == 0 && rc[3] == ENG_SCHED_EFULL, "queue full: %d %d %d %d",
          rc[0], rc[1], rc[2], rc[3]);
    eng_sched_get_stats(s, &st);
    CHECK(st.active + st.queue_depth == 3 && st.n_parallel == 2, "stats: %d active, %d queued", st.active, st.queue_depth);

    /* free with requests in flight: each handle still gets its final event */
    eng_sched_free(s);
    for (int i = 0; i < 3; i++) {
        if (!h[i]) continue;
        result d;
        drain(h[i], &d);
        CHECK(d.finish == ENG_FINISH_CANCELLED || d.finish == ENG_FINISH_LENGTH, "request %d ends at free", i);
        eng_req_release(h[i]);
    }
    eng_model_free(m);
    return check_summary("test_scheduler");
}
