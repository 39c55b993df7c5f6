/* tool_dequant IN.bin TYPE N OUT.bin: decodes N elements of raw ggml blocks of type id TYPE
 * with krn_dequantize_row and writes them as little-endian f32. Used by
 * tests/test_dequant_ref.py to compare against gguf-py's dequantizer. */
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IN.bin TYPE N OUT.bin\n", argv[0]);
        return 2;
    }
    uint32_t type = (uint32_t)strtoul(argv[2], NULL, 10);
    int64_t n = strtoll(argv[3], NULL, 10);
    if (!krn_type_supported(type) || n <= 0 || n % krn_type_block_size(type)) {
        fprintf(stderr, "bad type %u or element count %lld\n", type, (long long)n);
        return 2;
    }
    size_t nbytes = krn_row_bytes(type, n);
    uint8_t *src = malloc(nbytes);
    float *dst = malloc((size_t)n * sizeof(float));
    FILE *f = fopen(argv[1], "rb");
    if (!src || !dst || !f || fread(src, 1, nbytes, f) != nbytes) {
        fprintf(stderr, "cannot read %zu bytes from %s\n", nbytes, argv[1]);
        return 1;
    }
    fclose(f);
    krn_dequantize_row(type, src, dst, n);
    f = fopen(argv[4], "wb");
    if (!f || fwrite(dst, sizeof(float), (size_t)n, f) != (size_t)n || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", argv[4]);
        return 1;
    }
    free(src);
    free(dst);
    return 0;
}
