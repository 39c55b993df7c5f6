/* Fuzz target: the registered-context loader (eng_ctx_load reads DIR/context.kvctx) with the
 * tiny gemma3 f32 model, and a context that loads put to use: attached to a sequence that
 * decodes a token through the centroids.
 *
 * The loader checks a checksum of the whole file before anything else, so random bytes stop
 * there. To reach the parsing behind it the harness can patch the file first: it recomputes
 * the checksum with eng_ctx_file_checksum and reads the header and tables through
 * engine/context_file.h (checked against a real file at start-up, so that a format change fails
 * loudly instead of fuzzing nothing). Real files are ~400 KB, mostly KV pages, so most inputs
 * are edits of a real file built at start-up rather than whole files.
 *
 * Input: byte 0 is the mode.
 *   bit 0  fix-ups: set file_bytes to the length, the model's fingerprint, and the checksum;
 *   bit 1  the rest is a list of edits to a base file built at start-up (else the whole file);
 *   bit 2  which base: 0 two-level centroids, per-head thresholds; 1 one level, global threshold;
 *   bit 3  put a context that loads to use: attach it to a sequence and decode a token through
 *          the centroids (a forward pass: 5x the cost of loading, so the fuzzer chooses).
 * An edit: op (u8), offset (u16 LE), then for op & 7 < 6, (op >> 3) + 1 bytes written at the
 * offset (modulo the region's length) inside region op & 7: 0 header, 1 tokens, 2 layer table,
 * 3 centroid table, 4 centroid blobs, 5 the whole file; op & 7 == 6 resizes the file to
 * offset * 8 bytes (zero-filled); 7 writes 2^64 - offset (a u64 that wraps when added to) at
 * byte 8 * (next byte) (modulo the region's length) of region (op >> 3) % 6, to probe the
 * loader's offset arithmetic.
 * Asserts: a refusal carries a reason; a loaded context's sections (tokens, layer and centroid
 * tables, every layer's pages, every centroid blob in use), as its header places them, lie
 * inside the file; its tokens are in the vocab, its clustered range inside it, its info has the
 * file's length; attaching and decoding either works or refuses.
 * Set FUZZ_CTXFILE_DUMP=path to write each file as loaded there (for a reproducer), and
 * FUZZ_VERBOSE=1 to print what the loader said. FUZZ_CTXFILE_SKIP_KNOWN=1 skips inputs that hit
 * the bugs reported in tests/fuzz/README.md and not yet fixed, so that fuzzing can go past them. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "context.h"
#include "fuzz.h"
#include "model.h"

/* the file format (header, tables, layout) as engine/context.c writes and reads it */
#include "context_file.h"

/* ---- state built once ---- */

typedef struct {
    uint8_t *bytes;
    size_t len;
    size_t reg_off[5], reg_len[5]; /* header, tokens, layer table, centroid table, centroid blobs */
} base_file;

static eng_model *model;
static uint64_t fingerprint;
static char tmp_dir[256], ctx_dir[300], ctx_file[340];
static base_file bases[2];
static const char *dump_path;
static bool verbose, skip_known;

/* The scratch folders exist only while a file is written and loaded, so that an input that
 * aborts a check leaves nothing behind (the mapping outlives the unlinked file). */
static void scratch_remove(void) {
    unlink(ctx_file);
    rmdir(ctx_dir);
    rmdir(tmp_dir);
}

static void scratch_make(void) {
    FUZZ_CHECK((mkdir(tmp_dir, 0700) == 0 || errno == EEXIST) && (mkdir(ctx_dir, 0700) == 0 || errno == EEXIST),
               "mkdir %s", ctx_dir);
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = len > 0 ? malloc((size_t)len) : NULL;
    *n = b ? fread(b, 1, (size_t)len, f) : 0;
    fclose(f);
    return b;
}

static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Builds a context on the model, saves it, reads the file back and checks that this harness
 * knows its format. */
static void build_base(base_file *bf, int n, const eng_ctx_params *cp) {
    char err[512], dir[400];
    const int V = eng_model_hparams(model)->n_vocab;
    int32_t toks[64];
    for (int i = 0; i < n; i++) toks[i] = (i * 37 + 11) % V;
    eng_ctx *c = eng_ctx_build(model, toks, n, cp, NULL, NULL, err, sizeof err);
    FUZZ_CHECK(c != NULL, "building the base context: %s", err);
    snprintf(dir, sizeof dir, "%s/base", tmp_dir);
    FUZZ_CHECK(eng_ctx_save(c, dir, err, sizeof err) == 0, "saving the base context: %s", err);
    eng_ctx_unref(c);
    char path[500];
    snprintf(path, sizeof path, "%s/%s", dir, CTX_FILE);
    bf->bytes = slurp(path, &bf->len);
    remove_tree(dir);
    FUZZ_CHECK(bf->bytes && bf->len >= sizeof(ctx_header), "reading the base context back");
    ctx_header H;
    memcpy(&H, bf->bytes, sizeof H);
    FUZZ_CHECK(!memcmp(H.magic, CTX_MAGIC, 8) && H.version == CTX_VERSION && H.header_bytes == sizeof H &&
               H.file_bytes == bf->len && H.fingerprint == fingerprint &&
               H.checksum == eng_ctx_file_checksum(bf->bytes, bf->len),
               "the context file format changed (magic %.8s, version %u, checksum %s): update "
               "tests/fuzz/fuzz_ctxfile.c to engine/context.c", H.magic, H.version,
               H.checksum == eng_ctx_file_checksum(bf->bytes, bf->len) ? "ok" : "differs");
    const size_t nl = (size_t)H.n_layer, nc = nl * (size_t)H.n_head_kv;
    FUZZ_CHECK(H.off_tokens + 4 * (uint64_t)H.n_tokens <= bf->len && H.off_layers + nl * sizeof(ctx_layer_rec) <= bf->len &&
               H.off_cent + nc * sizeof(ctx_cent_rec) <= bf->len, "base sections out of the file");
    bf->reg_off[0] = 0, bf->reg_len[0] = sizeof H;
    bf->reg_off[1] = H.off_tokens, bf->reg_len[1] = 4 * (size_t)H.n_tokens;
    bf->reg_off[2] = H.off_layers, bf->reg_len[2] = nl * sizeof(ctx_layer_rec);
    bf->reg_off[3] = H.off_cent, bf->reg_len[3] = nc * sizeof(ctx_cent_rec);
    uint64_t lo = bf->len, hi = 0;
    for (size_t i = 0; i < nc; i++) {
        ctx_cent_rec r;
        memcpy(&r, bf->bytes + H.off_cent + i * sizeof r, sizeof r);
        if (!r.len) continue;
        if (r.off < lo) lo = r.off;
        if (r.off + r.len > hi) hi = r.off + r.len;
    }
    FUZZ_CHECK(hi > lo && hi <= bf->len, "the base context has no centroids");
    bf->reg_off[4] = lo, bf->reg_len[4] = hi - lo;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    omp_set_num_threads(1);
    dump_path = getenv("FUZZ_CTXFILE_DUMP");
    verbose = getenv("FUZZ_VERBOSE") != NULL;
    skip_known = getenv("FUZZ_CTXFILE_SKIP_KNOWN") != NULL;
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tiny-gemma3-f32.gguf", fuzz_tiny_dir());
    eng_model_params mp = {0};
    mp.n_threads = 1;
    model = eng_model_load(path, &mp, err, sizeof err);
    if (!model) {
        fprintf(stderr, "fuzz_ctxfile: %s (run `make tiny`)\n", err);
        exit(1);
    }
    fingerprint = eng_model_fingerprint(model);
    const char *t = getenv("TMPDIR");
    struct stat st;
    snprintf(tmp_dir, sizeof tmp_dir, "%s/kvseek-fuzz-XXXXXX",
             !stat("/dev/shm", &st) && S_ISDIR(st.st_mode) && !access("/dev/shm", W_OK) ? "/dev/shm" : t && *t ? t : "/tmp");
    FUZZ_CHECK(mkdtemp(tmp_dir) != NULL, "mkdtemp %s", tmp_dir);
    snprintf(ctx_dir, sizeof ctx_dir, "%s/ctx", tmp_dir);
    snprintf(ctx_file, sizeof ctx_file, "%s/%s", ctx_dir, CTX_FILE);

    eng_ctx_params cp = eng_ctx_params_default();
    cp.n_sink = 4, cp.n_tail = 8, cp.obs_tokens = 8, cp.fine_frac = 0.1f, cp.coarse_frac = 0.05f;
    build_base(&bases[0], 48, &cp);
    cp.coarse_frac = 0, cp.global_calib = 1, cp.fine_frac = 0.2f;
    build_base(&bases[1], 24, &cp);
    scratch_remove();
    return 0;
}

/* ---- one input ---- */

/* The file an input describes (malloc'd). */
static uint8_t *make_file(const uint8_t *data, size_t size, size_t *len) {
    const uint8_t mode = data[0];
    fuzz_in in = {data + 1, size - 1, 0};
    if (!(mode & 2)) {
        *len = size - 1;
        uint8_t *f = malloc(*len ? *len : 1);
        FUZZ_CHECK(f != NULL, "out of memory");
        memcpy(f, data + 1, *len);
        return f;
    }
    const base_file *bf = &bases[(mode >> 2) & 1];
    size_t n = bf->len, cap = 2 * bf->len;
    uint8_t *f = calloc(cap, 1);
    FUZZ_CHECK(f != NULL, "out of memory");
    memcpy(f, bf->bytes, n);
    while (fuzz_left(&in) >= 3) {
        const uint8_t op = fuzz_u8(&in);
        const uint16_t off = fuzz_u16(&in);
        const int region = op & 7;
        if (region == 6) {
            size_t nn = (size_t)off * 8 % cap;
            if (nn > n) memset(f + n, 0, nn - n);
            n = nn;
        } else if (region == 7) {
            const int r = (op >> 3) % 6;
            const size_t ro = r == 5 ? 0 : bf->reg_off[r], rl = r == 5 ? n : bf->reg_len[r];
            const size_t at = rl ? ro + (size_t)fuzz_u8(&in) * 8 % rl : 0;
            const uint64_t v = (uint64_t)0 - off;
            if (rl && at + 8 <= n) memcpy(f + at, &v, 8);
        } else {
            size_t ro = region == 5 ? 0 : bf->reg_off[region], rl = region == 5 ? n : bf->reg_len[region];
            size_t k = (size_t)(op >> 3) + 1;
            if (!rl || ro >= n) {
                in.i += k < fuzz_left(&in) ? k : fuzz_left(&in);
                continue;
            }
            if (ro + rl > n) rl = n - ro;
            size_t at = ro + off % rl;
            for (size_t i = 0; i < k && at + i < n; i++) f[at + i] = fuzz_u8(&in);
        }
    }
    *len = n;
    return f;
}

/* [off, off + n * size) inside a file of len bytes, without overflow. */
static bool within(uint64_t off, uint64_t n, uint64_t size, uint64_t len) {
    return off <= len && (size == 0 || n <= (len - off) / size);
}

/* A file that hits a reported, not yet fixed loader bug (tests/fuzz/README.md). */
static bool known_bug(const uint8_t *f, size_t len) {
    if (len < sizeof(ctx_header)) return false;
    ctx_header H;
    memcpy(&H, f, sizeof H);
    const uint64_t nl = (uint32_t)H.n_layer, nc = nl * (uint32_t)H.n_head_kv;
    /* 1: the section bounds checks wrap around 2^64 (off + size overflows) */
    if (H.off_tokens + 4 * (uint64_t)(uint32_t)H.n_tokens < H.off_tokens ||
        H.off_layers + nl * sizeof(ctx_layer_rec) < H.off_layers || H.off_cent + nc * sizeof(ctx_cent_rec) < H.off_cent)
        return true;
    /* 2: so does the check of a layer's pages (off + n_pages * page bytes overflows) */
    if (H.off_layers <= len && nl <= (len - H.off_layers) / sizeof(ctx_layer_rec))
        for (uint64_t l = 0; l < nl; l++) {
            ctx_layer_rec r;
            memcpy(&r, f + H.off_layers + l * sizeof r, sizeof r);
            if (r.off > (uint64_t)1 << 63) return true;
        }
    return false;
}

/* What the loader accepted, checked against the file's own header: every section inside. */
static void check_sections(const eng_ctx *c, const uint8_t *f, size_t len) {
    ctx_header H;
    memcpy(&H, f, sizeof H);
    const uint64_t nl = (uint32_t)H.n_layer, nc = nl * (uint32_t)H.n_head_kv;
    FUZZ_CHECK(H.n_tokens >= 1 && within(H.off_tokens, (uint64_t)H.n_tokens, 4, len),
               "tokens at %llu (x%d) outside the %zu-byte file", (unsigned long long)H.off_tokens, H.n_tokens, len);
    FUZZ_CHECK(within(H.off_layers, nl, sizeof(ctx_layer_rec), len), "layer table at %llu outside the file",
               (unsigned long long)H.off_layers);
    FUZZ_CHECK(within(H.off_cent, nc, sizeof(ctx_cent_rec), len), "centroid table at %llu outside the file",
               (unsigned long long)H.off_cent);
    const size_t pb = kv_page_bytes(eng_ctx_kv(c));
    for (uint64_t l = 0; l < nl; l++) {
        ctx_layer_rec r;
        memcpy(&r, f + H.off_layers + l * sizeof r, sizeof r);
        FUZZ_CHECK(r.n_pages >= 0 && within(r.off, (uint64_t)r.n_pages, pb, len),
                   "layer %llu: %lld pages of %zu bytes at %llu outside the %zu-byte file", (unsigned long long)l,
                   (long long)r.n_pages, pb, (unsigned long long)r.off, len);
    }
    for (uint64_t i = 0; i < nc; i++) {
        ctx_cent_rec r;
        memcpy(&r, f + H.off_cent + i * sizeof r, sizeof r);
        FUZZ_CHECK(!r.len || within(r.off, r.len, 1, len), "centroid blob %llu at %llu (+%llu) outside the file",
                   (unsigned long long)i, (unsigned long long)r.off, (unsigned long long)r.len);
    }
}

static void use_context(eng_ctx *c, size_t file_len, bool decode) {
    const eng_hparams *hp = eng_model_hparams(model);
    const int n = eng_ctx_n_tokens(c);
    const int32_t *toks = eng_ctx_tokens(c);
    FUZZ_CHECK(n >= 1 && toks, "%d tokens", n);
    for (int i = 0; i < n; i++) FUZZ_CHECK(toks[i] >= 0 && toks[i] < hp->n_vocab, "token %d = %d", i, toks[i]);
    int64_t lo, hi;
    eng_ctx_range(c, &lo, &hi);
    FUZZ_CHECK(0 <= lo && lo <= hi && hi <= n, "clustered range [%lld, %lld) of %d", (long long)lo, (long long)hi, n);
    eng_ctx_info info;
    eng_ctx_get_info(c, &info);
    FUZZ_CHECK(info.n_tokens == n && info.file_bytes == file_len, "info: %d tokens, %zu bytes", info.n_tokens,
               info.file_bytes);
    for (int l = 0; l < hp->n_layer; l++)
        for (int h = 0; h < hp->n_head_kv; h++) {
            const idx_cent *ce = eng_ctx_cent(c, l, h);
            FUZZ_CHECK(!ce || !eng_layer_is_local(model, l), "centroids on local layer %d", l);
            (void)eng_ctx_threshold(c, l, h, 0.0f);
            (void)eng_ctx_threshold(c, l, h, 0.5f);
        }
    if (!decode) return;
    /* a decode step reading the context through the centroids */
    char err[512];
    eng_attn_params a = eng_attn_default();
    a.selector = IDX_CENTROIDS;
    a.target = 0.5f;
    a.n_sink = 4;
    a.n_window = 8;
    if ((int64_t)n + 8 > 1 << 16) return; /* a huge claimed context: loading was the test */
    eng_seq *s = eng_seq_create_ex(model, n + 8, &a, err, sizeof err);
    if (!s) return;
    if (eng_seq_attach_ctx(s, c, err, sizeof err) == 0) {
        const int32_t t = 5;
        (void)eng_forward(model, s, &t, 1, NULL, false, err, sizeof err);
    }
    eng_seq_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t len;
    uint8_t *f = make_file(data, size, &len);
    if ((data[0] & 1) && len >= sizeof(ctx_header)) {
        const uint64_t fl = len;
        memcpy(f + offsetof(ctx_header, file_bytes), &fl, 8);
        memcpy(f + offsetof(ctx_header, fingerprint), &fingerprint, 8);
        const uint64_t zero = 0;
        memcpy(f + offsetof(ctx_header, checksum), &zero, 8);
        const uint64_t sum = eng_ctx_file_checksum(f, len);
        memcpy(f + offsetof(ctx_header, checksum), &sum, 8);
    }
    if (skip_known && known_bug(f, len)) {
        free(f);
        return 0;
    }
    scratch_make();
    int fd = open(ctx_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    FUZZ_CHECK(fd >= 0, "cannot write %s", ctx_file);
    for (size_t at = 0; at < len;) {
        ssize_t w = write(fd, f + at, len - at);
        FUZZ_CHECK(w > 0, "cannot write %s", ctx_file);
        at += (size_t)w;
    }
    close(fd);
    if (dump_path) {
        FILE *d = fopen(dump_path, "wb");
        if (d) {
            fwrite(f, 1, len, d);
            fclose(d);
        }
    }
    char err[512] = "";
    eng_ctx *c = eng_ctx_load(model, ctx_dir, err, sizeof err);
    scratch_remove();
    if (verbose) fprintf(stderr, "fuzz_ctxfile: %zu bytes: %s\n", len, c ? "loaded" : err);
    if (!c) {
        free(f);
        FUZZ_CHECK(err[0] && memchr(err, 0, sizeof err), "refused without a reason");
        return 0;
    }
    check_sections(c, f, len);
    free(f);
    use_context(c, len, data[0] & 8);
    eng_ctx_unref(c);
    return 0;
}
