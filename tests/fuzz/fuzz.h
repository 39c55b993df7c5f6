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

/* Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF); NUL allowed. */
static inline int fuzz_valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return 0;
        i += len;
    }
    return 1;
}

#endif
