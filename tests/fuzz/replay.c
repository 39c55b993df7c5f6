/* Replays fuzz inputs without libFuzzer: linked (gcc, `make all`) with one target's
 * LLVMFuzzerTestOneInput into build/tests/test_fuzz_replay_<target>, which tests/run.sh runs
 * with no arguments. It then replays every file of tests/fuzz/corpus/<target>/ (the seeds) and
 * tests/fuzz/regress/<target>/ (inputs that once crashed), from the repository root; arguments,
 * when given, name other files or folders instead. A failing input crashes or aborts the process
 * (the target's checks abort), which fails the test; the last "replay" line names the input.
 * Each input is copied into a buffer of exactly its size, as libFuzzer does, so that the
 * sanitizer build (`make asan`) catches a read past its end. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clock.h"

#ifndef FUZZ_TARGET
#error "build with -DFUZZ_TARGET='\"fuzz_<name>\"'"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int n_inputs;

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay %s: cannot open %s\n", FUZZ_TARGET, path);
        return -1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    fclose(f);
    uint8_t *exact = buf ? malloc(n ? n : 1) : NULL;
    if (!exact) {
        free(buf);
        fprintf(stderr, "replay %s: out of memory reading %s\n", FUZZ_TARGET, path);
        return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    fprintf(stderr, "replay %s: %s (%zu bytes)\n", FUZZ_TARGET, path, n);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    n_inputs++;
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every regular file of dir, in name order (dot files skipped). */
static int run_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay %s: cannot open folder %s (run from the repository root)\n", FUZZ_TARGET, dir);
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **nn = realloc(names, sizeof *names * (cap = cap ? 2 * cap : 64));
            if (!nn) break;
            names = nn;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_names);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!stat(path, &st) && S_ISREG(st.st_mode) && run_file(path)) rc = -1;
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv) {
    const double t0 = krn_now_s();
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            struct stat st;
            if (stat(argv[i], &st)) {
                fprintf(stderr, "replay %s: no such file or folder %s\n", FUZZ_TARGET, argv[i]);
                rc = -1;
            } else if (S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i])) {
                rc = -1;
            }
        }
    } else {
        /* the seeds must be there; the regressions folder may not exist yet */
        if (run_dir("tests/fuzz/corpus/" FUZZ_TARGET)) rc = -1;
        struct stat st;
        if (!stat("tests/fuzz/regress/" FUZZ_TARGET, &st) && run_dir("tests/fuzz/regress/" FUZZ_TARGET)) rc = -1;
    }
    printf("test_fuzz_replay %s: %d inputs in %.2f s%s\n", FUZZ_TARGET, n_inputs, krn_now_s() - t0,
           rc ? ", errors" : "");
    if (!rc && n_inputs == 0) {
        printf("test_fuzz_replay %s: no inputs found\n", FUZZ_TARGET);
        rc = -1;
    }
    return rc ? 1 : 0;
}
