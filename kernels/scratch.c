/* Scratch of the products (matmul.c, quant.c): growing buffers per calling thread (the engine
 * thread), shared by its OpenMP team: krn_matmul's decoded weight tiles, the 8-bit activations
 * in quant.c. Being thread-local, they also let several threads call the products at once. */
#include "quant.h"
#include "scratch.h"

#include <pthread.h>
#include <stdlib.h>

typedef struct {
    void *p[KRN_SCR_COUNT];
    size_t cap[KRN_SCR_COUNT];
} scratch_set;
static _Thread_local scratch_set scratch;
/* A thread-exit destructor frees the buffers of threads that end (the server's engine thread),
 * which thread-local storage alone would leak. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void scratch_destroy(void *v) {
    scratch_set *s = v;
    for (int i = 0; i < KRN_SCR_COUNT; i++) free(s->p[i]);
}
static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_destroy); }

void *krn_scratch(int slot, size_t bytes) {
    if (bytes <= scratch.cap[slot]) return scratch.p[slot];
    free(scratch.p[slot]);
    bytes = (bytes + 4095) & ~(size_t)4095;
    scratch.p[slot] = aligned_alloc(64, bytes);
    scratch.cap[slot] = scratch.p[slot] ? bytes : 0;
    pthread_once(&scratch_once, scratch_key_init);
    pthread_setspecific(scratch_key, &scratch);
    return scratch.p[slot];
}

void krn_matmul_scratch_free(void) {
    for (int i = 0; i < KRN_SCR_COUNT; i++) {
        free(scratch.p[i]);
        scratch.p[i] = NULL;
        scratch.cap[i] = 0;
    }
}
