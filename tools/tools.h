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

/* `kvseek bench-kernels` (bench.c): memory bandwidth, matvec GB/s per weight type, attention
 * over long KV ranges and a model's tok/s ceiling. */
int tool_bench_kernels_main(int argc, char **argv);

/* `kvseek bench-gpu` (bench_gpu.c): the CUDA sparse-attention kernel's GB/s (a "skipped" line
 * and status 0 without a CUDA device). */
int tool_bench_gpu_main(int argc, char **argv);

/* `kvseek synth-model` (synth.c): a llama GGUF with random weights in a given shape. */
int tool_synth_model_main(int argc, char **argv);

#endif
