/* The two selectors without state: `dense` (every candidate: the exact baseline; the engine
 * attends its range directly, IDX_CAP_ALL) and `window` (none: only the static set is attended,
 * StreamingLLM; IDX_CAP_NONE). */
#include "sel_impl.h"

static int64_t dense_max_ids(const idx_set *ix, const idx_slot *s, int n_q, const idx_request *req) {
    return s->hi - s->lo;
}

static int64_t dense_select(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                            const float *q, int n_q, const idx_request *req, int32_t *ids,
                            int64_t max_ids, int64_t *scanned, int *n_queries) {
    return *scanned = idx_all_candidates(s, ids);
}

const idx_ops idx_ops_dense = {
    .kind = IDX_DENSE,
    .name = "dense",
    .caps = IDX_CAP_ALL | IDX_CAP_SHARED,
    .max_ids = dense_max_ids,
    .select = dense_select,
};

static int64_t window_max_ids(const idx_set *ix, const idx_slot *s, int n_q, const idx_request *req) {
    return 0;
}

static int64_t window_select(idx_set *ix, idx_slot *s, int layer, int head, const kv_store *kv,
                             const float *q, int n_q, const idx_request *req, int32_t *ids,
                             int64_t max_ids, int64_t *scanned, int *n_queries) {
    return 0;
}

const idx_ops idx_ops_window = {
    .kind = IDX_WINDOW,
    .name = "window",
    .caps = IDX_CAP_NONE | IDX_CAP_SHARED,
    .max_ids = window_max_ids,
    .select = window_select,
};
