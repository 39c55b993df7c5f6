/* The two selectors without state: `dense` (every candidate: the exact baseline; the engine
 * attends its range directly, IDX_CAP_ALL) and `window` (none: only the static set is attended,
 * StreamingLLM; IDX_CAP_NONE). One pair of methods serves both, by capability. */
#include "sel_impl.h"

static int64_t basic_max_ids(const idx_set *ix, const idx_slot *s, int n_q, const idx_request *req) {
    return ix->ops->caps & IDX_CAP_ALL ? s->hi - s->lo : 0;
}

static int64_t basic_select(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                            const float *q, int n_q, const idx_request *req, int32_t *ids,
                            int64_t max_ids, int64_t *scanned, int *n_queries) {
    return *scanned = ix->ops->caps & IDX_CAP_ALL ? idx_all_candidates(s, ids) : 0;
}

const idx_ops idx_ops_dense = {IDX_DENSE, "dense", IDX_CAP_ALL | IDX_CAP_SHARED,
                               .max_ids = basic_max_ids, .select = basic_select};
const idx_ops idx_ops_window = {IDX_WINDOW, "window", IDX_CAP_NONE | IDX_CAP_SHARED,
                                .max_ids = basic_max_ids, .select = basic_select};
