/* The decode-attention plan's id widening (--attn-expand) against a bitmap reference: every
 * position within r of a selected id, clipped to the offloaded range, ascending, written in the
 * selector's own buffer even when it is only as large as the range plus r. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model_impl.h"

int main(void) {
    unsigned rng = 12345;
    for (int t = 0; t < 400; t++) {
        const int64_t lo = (rng = rng * 1103515245u + 12345u) % 50, len = 1 + (rng = rng * 1103515245u + 12345u) % 300;
        const int64_t hi = lo + len;
        const int r = t % 6;
        const int64_t cap = len + r + (t % 3 == 0 ? 0 : 17);
        int32_t *ids = malloc(sizeof(int32_t) * cap);
        unsigned char *want = calloc(hi, 1);
        const int density = 1 + t % 40;
        int64_t n = 0;
        for (int64_t p = lo; p < hi; p++)
            if ((rng = rng * 1103515245u + 12345u) % 100 < (unsigned)density) {
                ids[n++] = (int32_t)p;
                for (int64_t q = p - r; q <= p + r; q++)
                    if (q >= lo && q < hi) want[q] = 1;
            }
        int64_t nw = 0;
        for (int64_t p = lo; p < hi; p++) nw += want[p];
        const int64_t m = eng_plan_expand_ids(ids, n, cap, r, lo, hi);
        int ok = m == nw;
        for (int64_t i = 0; ok && i < m; i++) ok = want[ids[i]] && (i == 0 || ids[i] > ids[i - 1]);
        CHECK(ok, "case %d (range [%lld, %lld), r %d, %lld ids, cap %lld): %lld ids, want %lld", t, (long long)lo,
              (long long)hi, r, (long long)n, (long long)cap, (long long)m, (long long)nw);
        free(ids);
        free(want);
    }
    int32_t one[4] = {7};
    CHECK(eng_plan_expand_ids(one, 1, 4, 3, 5, 8) == 2 && one[0] == 6 && one[1] == 7,
          "a radius above the buffer's slack is reduced to it");
    return check_summary("test_plan");
}
