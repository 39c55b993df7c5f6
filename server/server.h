/* The HTTP server: `kvseek serve`. TGI (/generate, /generate_stream) and OpenAI
 * (/v1/completions, /v1/chat/completions, /v1/models) APIs over the engine's scheduler, plus
 * /health, /metrics, /tokenize and /detokenize. */
#ifndef KVSEEK_SERVER_H
#define KVSEEK_SERVER_H

#include "model.h"

/* Runs `kvseek serve` with argv[2..] as its options; returns the process exit status: 0 after a
 * clean shutdown (SIGTERM/SIGINT), 1 when the model or the socket fails, 2 for bad options. */
int srv_serve_main(int argc, char **argv);

/* A request's attention statistics as the API and `generate --json` report them (a cJSON object
 * the caller owns). */
struct cJSON;
struct cJSON *srv_attn_json(const char *selector, const eng_attn_stats *st);

#endif
