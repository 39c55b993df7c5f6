/* GGUF v3 reader: maps a model file read-only and exposes its metadata and tensor infos.
 * Every count, length and offset read from the file is validated against the file size
 * before use, so a truncated or hostile file yields an error message, never a crash. */
#ifndef KVSEEK_GGUF_H
#define KVSEEK_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types, numbered as in the GGUF spec. */
typedef enum {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12, GGUF_TYPE_COUNT
} gguf_type;

#define GGUF_MAX_DIMS 4

typedef struct {
    const char *name;       /* NUL-terminated copy owned by the context */
    uint32_t type;          /* ggml tensor type id (see kernels/quant.h) */
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is contiguous; unused dims are 1 */
    uint64_t offset;        /* relative to the data section */
    uint64_t size;          /* bytes */
    const void *data;       /* points into the mapping */
} gguf_tensor;

typedef struct gguf_ctx gguf_ctx;

/* Maps and parses `path`. On failure returns NULL and writes a one-line reason into err. */
gguf_ctx *gguf_open(const char *path, char *err, size_t errlen);
/* Parses an in-memory image (not copied: it must outlive the context). Used by tests and fuzzing. */
gguf_ctx *gguf_open_memory(const void *data, size_t size, char *err, size_t errlen);
void gguf_close(gguf_ctx *ctx); /* accepts NULL */

uint32_t gguf_version(const gguf_ctx *ctx);
size_t gguf_file_size(const gguf_ctx *ctx);

/* Metadata. Keys are looked up by exact name; -1 when absent. */
int64_t gguf_n_kv(const gguf_ctx *ctx);
int64_t gguf_find_key(const gguf_ctx *ctx, const char *key);
const char *gguf_kv_key(const gguf_ctx *ctx, int64_t i);
gguf_type gguf_kv_type(const gguf_ctx *ctx, int64_t i);

/* Typed getters: return false when the key is absent or its value cannot be represented in
 * the requested type (integers convert between widths when the value fits; f32/f64 convert
 * to each other; bool reads u8/i8/bool). *out is untouched on false. */
bool gguf_get_u32(const gguf_ctx *ctx, const char *key, uint32_t *out);
bool gguf_get_i64(const gguf_ctx *ctx, const char *key, int64_t *out);
bool gguf_get_f32(const gguf_ctx *ctx, const char *key, float *out);
bool gguf_get_bool(const gguf_ctx *ctx, const char *key, bool *out);
/* String value: pointer into the mapping (not NUL-terminated) and its length. */
bool gguf_get_str(const gguf_ctx *ctx, const char *key, const char **s, uint64_t *len);

/* Arrays. gguf_get_arr reports element type and count. For numeric element types
 * gguf_arr_data returns the packed little-endian elements (may be unaligned: read with memcpy).
 * For string arrays gguf_arr_str returns element i (pointer into the mapping, not NUL-terminated). */
bool gguf_get_arr(const gguf_ctx *ctx, const char *key, gguf_type *elem_type, uint64_t *n);
const void *gguf_arr_data(const gguf_ctx *ctx, const char *key);
const char *gguf_arr_str(const gguf_ctx *ctx, const char *key, uint64_t i, uint64_t *len);

/* Tensors. */
int64_t gguf_n_tensors(const gguf_ctx *ctx);
const gguf_tensor *gguf_tensor_at(const gguf_ctx *ctx, int64_t i);
const gguf_tensor *gguf_find_tensor(const gguf_ctx *ctx, const char *name); /* NULL if absent */

const char *gguf_type_name(gguf_type t);

#endif
