/* The command-line tools of the `kvseek` binary: main.c reads the subcommand and calls the engine
 * (generate, tokenize, detokenize, perplexity, logits, info, context), the HTTP server (serve,
 * through server/server.h) or one of the tools below. Each tool takes the whole argv (argv[1] is
 * its subcommand), prints its results on stdout and returns the process exit status: 0, 1 when
 * the work fails, 2 for bad options.
 *
 * Model-level commands go through the engine's headers only. The benchmarks measure kernels, so
 * they include kernels/ headers directly (bench.c: attn_sparse.h, quant.h; bench_gpu.c: gpu.h,
 * attn_sparse.h, quant.h); synth.c writes quantized weights with quant.h's block formats; main.c's
 * `info` reads quant.h for the names of the weight types that quantize activations to 8 bits.
 * Every tool times with kernels/clock.h (krn_now_s), the one monotonic clock. */
#ifndef KVSEEK_TOOLS_H
#define KVSEEK_TOOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tok.h"

/* Shared by the tools (main.c). Physical cores: distinct (package, core) pairs in sysfs; the
 * online CPU count otherwise. */
int tool_physical_cores(void);
/* A whole file, NUL-terminated, its length in *len; NULL after a one-line error on stderr. The
 * caller frees. */
char *tool_read_file(const char *path, size_t *len);
/* The ids of text (BOS first when add_special and the model adds one; special-token text read
 * as such when parse_special): a malloc'd array (caller frees) and its length, or NULL. */
int32_t *tool_tokenize(const tok_vocab *v, const char *text, size_t len, bool add_special,
                       bool parse_special, int64_t *n_out);

/* `kvseek eval` (eval.c): one prefill per sample, then the question and a greedy answer through
 * each of several selectors from forks of the prefilled sequence (JSON lines; scripts/ruler.py
 * drives it). */
int tool_eval_main(int argc, char **argv);

/* `kvseek bench-kernels` (bench.c): memory bandwidth, matvec GB/s per weight type, attention
 * over long KV ranges and a model's tok/s ceiling. */
int tool_bench_kernels_main(int argc, char **argv);

/* `kvseek bench-gpu` (bench_gpu.c): the CUDA sparse-attention kernel's GB/s (a "skipped" line
 * and status 0 without a CUDA device). */
int tool_bench_gpu_main(int argc, char **argv);

/* `kvseek synth-model` (synth.c): a llama GGUF with random weights in a given shape. */
int tool_synth_model_main(int argc, char **argv);

#endif
