/* Small helpers shared inside engine/ (not part of any public API). */
#ifndef KVSEEK_ENG_UTIL_H
#define KVSEEK_ENG_UTIL_H

#include <stddef.h>

/* Formats a one-line message into err (when err and errlen are set), as snprintf does. */
void eng_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
