/* Shared by the fuzz targets (tests/fuzz/fuzz_*.c): the libFuzzer entry points, a property
 * check that aborts (libFuzzer records the input as a crash; the replay test fails), and the
 * place the tiny test models are read from. Each target is built twice: with clang and libFuzzer
 * (`make fuzz`) and with gcc and tests/fuzz/replay.c (`make test` replays its inputs). */
#ifndef KVSEEK_FUZZ_H
#define KVSEEK_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property the code promises: on failure, say which and abort (a crash to libFuzzer). */
#define FUZZ_CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FUZZ_CHECK failed %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

/* The folder of the tiny models (`make tiny`): $KVSEEK_TINY_DIR, else build/tiny (as the other
 * tests, run from the repository root). */
static inline const char *fuzz_tiny_dir(void) {
    const char *d = getenv("KVSEEK_TINY_DIR");
    return d && *d ? d : "build/tiny";
}

/* Byte reader over the fuzz input: past the end every read gives 0. */
typedef struct {
    const uint8_t *p;
    size_t n, i;
} fuzz_in;

static inline uint8_t fuzz_u8(fuzz_in *in) { return in->i < in->n ? in->p[in->i++] : 0; }
static inline uint16_t fuzz_u16(fuzz_in *in) {
    uint16_t lo = fuzz_u8(in);
    return (uint16_t)(lo | (uint16_t)fuzz_u8(in) << 8);
}
static inline size_t fuzz_left(const fuzz_in *in) { return in->n - in->i; }

/* Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF); NUL allowed. Character by
 * character with the engine's validator (tests/test_unicode.c checks it against a reference). */
static inline int fuzz_valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0, len; i < n; i += len)
        if (!(len = tok_utf8_len((const char *)s + i, n - i))) return 0;
    return 1;
}

#endif
