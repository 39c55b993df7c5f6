/* Tensor element types (ggml numbering) with their block layouts: dequantization,
 * dot products against f32 activations, and the matrix-vector / matrix-matrix products
 * the forward pass runs on weights stored in any of these types. */
#ifndef KVSEEK_QUANT_H
#define KVSEEK_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    KRN_TYPE_F32 = 0, KRN_TYPE_F16 = 1, KRN_TYPE_Q4_0 = 2, KRN_TYPE_Q4_1 = 3,
    KRN_TYPE_Q5_0 = 6, KRN_TYPE_Q5_1 = 7, KRN_TYPE_Q8_0 = 8,
    KRN_TYPE_Q4_K = 12, KRN_TYPE_Q5_K = 13, KRN_TYPE_Q6_K = 14, KRN_TYPE_BF16 = 30,
} krn_type;

/* True when the type id is one kvseek can compute with. */
bool krn_type_supported(uint32_t type);
const char *krn_type_name(uint32_t type);
/* Elements per block and bytes per block; 0 for unsupported types. */
int krn_type_block_size(uint32_t type);
size_t krn_type_block_bytes(uint32_t type);
/* Bytes of a row of n elements (n must be a multiple of the block size). */
size_t krn_row_bytes(uint32_t type, int64_t n);

float krn_f16_to_f32(uint16_t h);
uint16_t krn_f32_to_f16(float f);   /* round to nearest even */
float krn_bf16_to_f32(uint16_t h);
/* The same conversions in portable bit manipulation (what the above use without F16C);
 * exported so tests can compare them with the hardware path. */
float krn_f16_to_f32_soft(uint16_t h);
uint16_t krn_f32_to_f16_soft(float f);

/* Dequantize n elements (multiple of the block size) starting at a block boundary. */
void krn_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);

/* Products of weight rows with f32 activations. Every output of krn_vec_dot, krn_matvec,
 * krn_matmul and krn_matmul_f32 is summed in one fixed order (quant.c), so the same row and
 * activation give the same bits through any of them, whatever the batch size, the position of
 * the token in the batch or the number of OpenMP threads. The types of krn_type_i8 (below)
 * round the activations to 8 bits first, in krn_vec_dot, krn_matvec and krn_matmul alike. */

/* dot(row, x) over n elements; row in `type`, x in f32. */
float krn_vec_dot(uint32_t type, const void *row, const float *x, int64_t n);

/* y[r] = dot(W row r, x) for r < n_rows; W rows of n_cols elements, contiguous, row r at
 * byte offset r * krn_row_bytes(type, n_cols). OpenMP across rows. */
void krn_matvec(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols,
                const float *x, float *y);

/* One matrix of krn_matvec_n: y[r] = dot(W row r, x) for r < n_rows. */
typedef struct {
    uint32_t type;      /* krn_type of W's rows */
    const void *W;      /* n_rows rows of the shared n_cols, laid out as for krn_matvec */
    int64_t n_rows;
    float *y;           /* n_rows outputs */
} krn_mv;
#define KRN_MV_MAX 4   /* matrices per OpenMP region (more are split into several calls) */

/* krn_matvec of n matrices that read the same x of n_cols elements (decode's q, k, v; gate, up)
 * in one OpenMP region over the rows of all of them instead of one region each. Each y gets the
 * bits krn_matvec gives it alone; an unsupported type fills its y with NaN. */
void krn_matvec_n(int n, const krn_mv *mv, int64_t n_cols, const float *x);

/* Y[t][r] = dot(W row r, X[t]) for t < n_tok: X is n_tok x n_cols, Y is n_tok x n_rows,
 * both row-major. Each weight row is decoded once per call and reused for every token. */
void krn_matmul(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols,
                const float *X, int64_t n_tok, float *Y);
/* The f32 core of krn_matmul, on rows already decoded: Y[t * ldy + r] = dot(W row r, X row t)
 * over n columns for r < n_rows, t < n_tok, W rows ldw floats apart and X rows ldx apart.
 * Single-threaded; best on tiles of up to about a hundred rows that stay in L2. */
void krn_matmul_f32(const float *W, int64_t ldw, int64_t n_rows, const float *X, int64_t ldx,
                    int64_t n_tok, int64_t n, float *Y, int64_t ldy);
/* True when products with rows of this type quantize the activations to 8 bits per block of
 * 32 (as llama.cpp's Q8_0) and sum integer products (AVX-512 VNNI builds: Q5_0, Q4_K, Q6_K).
 * The result then differs from the f32 product by the activations' rounding, at most
 * sum |w| * max|x| / 254 per block; it is still the same bits through krn_vec_dot, krn_matvec
 * and krn_matmul. */
bool krn_type_i8(uint32_t type);
/* krn_matmul's path for those types: 1 when it computed Y, 0 for other types. */
int krn_matmul_i8(uint32_t type, const void *W, int64_t n_rows, int64_t n_cols, const float *X,
                  int64_t n_tok, float *Y);
/* The products keep scratch buffers per calling thread that grow to the largest call (about
 * 128 * threads * n_cols floats of decoded tiles, and the 8-bit activations of a batch); this
 * frees the calling thread's. */
void krn_matmul_scratch_free(void);

#endif
