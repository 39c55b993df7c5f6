/* Tiny test helper: CHECK records a failure with its location and goes on, so one run shows
 * every broken assertion; check_summary() prints the count and gives the exit status. The tests'
 * one random number generator follows (rng_*).
 * defines: CHECK, check_summary, rng_seed, rng_u64, rng_u01, rng_unif, rng_pm1, rng_int, rng_normal */
#ifndef KVSEEK_CHECK_H
#define KVSEEK_CHECK_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>

static int check_failures, check_count;

#define CHECK(cond, ...) do { check_count++; if (!(cond)) { check_failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static inline int check_summary(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}

/* Random numbers: xorshift64 (Marsaglia 2003, shifts 13, 7, 17), one stream per test program,
 * the same on every run and machine. A test that wants its own stream calls rng_seed first. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static inline void rng_seed(uint64_t seed) { rng_state = seed ? seed : 0x9e3779b97f4a7c15ull; } /* never 0 */
static inline uint64_t rng_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static inline double rng_u01(void) { return (double)(rng_u64() >> 11) * 0x1.0p-53; } /* [0, 1) */
static inline double rng_unif(double lo, double hi) { return lo + (hi - lo) * rng_u01(); }
static inline float rng_pm1(void) { return (float)rng_u01() * 2.0f - 1.0f; }          /* [-1, 1) */
static inline int rng_int(int n) { return (int)(rng_u64() % (uint64_t)n); }            /* [0, n) */
/* Standard normal (Box-Muller, one of the pair). */
static inline float rng_normal(void) {
    const double u = rng_u01() + 1e-300, v = rng_u01();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}
#endif
