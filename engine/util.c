/* Helpers shared inside engine/: the error-message formatter every module reports through. */
#include "util.h"

#include <stdarg.h>
#include <stdio.h>

void eng_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
