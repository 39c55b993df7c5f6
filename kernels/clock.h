/* The one wall clock of kvseek: seconds from a monotonic origin, for timings and statistics
 * (never for dates). Header-only so that every module, leaves included, uses the same one.
 * defines: krn_now_s */
#ifndef KVSEEK_CLOCK_H
#define KVSEEK_CLOCK_H

#include <time.h>

static inline double krn_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
