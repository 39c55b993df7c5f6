/* Tiny test helper: CHECK records a failure with its location and goes on, so one run shows
 * every broken assertion; check_summary() prints the count and gives the exit status. */
#ifndef KVSEEK_CHECK_H
#define KVSEEK_CHECK_H
#include <stdio.h>

static int check_failures, check_count;

#define CHECK(cond, ...) do { check_count++; if (!(cond)) { check_failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static inline int check_summary(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}
#endif
