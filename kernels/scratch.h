/* Private to the products (matmul.c, quant.c); implemented in scratch.c: per-thread buffers
 * that grow to the largest call and stay until krn_matmul_scratch_free or the thread's exit. The
 * OpenMP team of the calling thread may read and write them during the call.
 * defines: krn_scratch, KRN_SCR_* */
#ifndef KVSEEK_SCRATCH_H
#define KVSEEK_SCRATCH_H

#include <stddef.h>

enum {
    KRN_SCR_TILES,   /* krn_matmul's decoded weight tiles (f32) */
    KRN_SCR_XQ8,     /* the activations rounded to 8 bits (quant.c) */
    KRN_SCR_PACK,    /* the 8-bit types' weight rows unpacked for the matmul tile, per thread */
    KRN_SCR_COUNT
};

/* The calling thread's buffer `slot` of at least `bytes`, 64-byte aligned; NULL when out of
 * memory. Its contents do not survive a growth. */
void *krn_scratch(int slot, size_t bytes);

#endif
