/* Tokenizer built from a GGUF file's tokenizer.ggml.* metadata: SentencePiece-style BPE with
 * byte fallback ("llama": gemma, llama2) and byte-level BPE with a pre-tokenizer split
 * ("gpt2": qwen2, llama3), matching llama.cpp token for token. Holds no pointers into the GGUF
 * mapping after tok_load returns. A loaded vocab is read-only: any number of threads may
 * encode and decode with it at once. */
#ifndef KVSEEK_TOK_H
#define KVSEEK_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef enum {
    TOK_TYPE_UNDEFINED = 0, TOK_TYPE_NORMAL = 1, TOK_TYPE_UNKNOWN = 2, TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4, TOK_TYPE_UNUSED = 5, TOK_TYPE_BYTE = 6,
} tok_type;

typedef enum { TOK_MODEL_SPM = 1, TOK_MODEL_BPE = 2 } tok_model;

typedef struct tok_vocab tok_vocab;

/* Negative status codes of tok_encode. */
enum { TOK_ERR_NOMEM = -1, TOK_ERR_ARG = -2 };
const char *tok_strerror(int64_t code);

/* Builds the vocabulary. NULL and a one-line reason in err when the metadata is missing,
 * inconsistent or of an unsupported tokenizer model. */
tok_vocab *tok_load(const gguf_ctx *g, char *err, size_t errlen);
void tok_free(tok_vocab *v); /* accepts NULL */

tok_model tok_get_model(const tok_vocab *v);
int32_t tok_n_vocab(const tok_vocab *v);
int32_t tok_bos(const tok_vocab *v);   /* -1 when none */
int32_t tok_eos(const tok_vocab *v);   /* -1 when none */
bool tok_add_bos(const tok_vocab *v);
bool tok_add_eos(const tok_vocab *v);   /* add_special also appends EOS when this is set */
int32_t tok_unk(const tok_vocab *v);    /* -1 when none */
/* True for tokens that end generation: EOS, EOT, EOM and the chat end markers the vocab has
 * (<end_of_turn>, <|im_end|>, <|eot_id|>, <|eom_id|>, <|endoftext|>, <|end_of_text|>). */
bool tok_is_eog(const tok_vocab *v, int32_t id);
tok_type tok_get_type(const tok_vocab *v, int32_t id);
/* The vocabulary string of a token (NUL-terminated, owned by v); NULL when out of range. */
const char *tok_text(const tok_vocab *v, int32_t id);
/* Exact lookup of a vocabulary string; -1 when absent. */
int32_t tok_find(const tok_vocab *v, const char *text, size_t len);

/* Encodes len bytes of text (any bytes, invalid UTF-8 included). add_special: prepend BOS (and
 * append EOS) when the vocab asks for it. parse_special: recognise control tokens written in
 * the text (user-defined tokens are always recognised). Writes at most cap ids and returns the
 * total count, which may exceed cap (call again with a larger buffer); negative TOK_ERR_* on
 * error. Linear-ish in len (n log n merges): a megabyte takes well under a second. */
int64_t tok_encode(const tok_vocab *v, const char *text, size_t len, bool add_special,
                   bool parse_special, int32_t *out, int64_t cap);

/* The bytes a token stands for in generated text (byte tokens give their byte, "▁" gives a
 * space, byte-level symbols map back to bytes). Control tokens render as their text only when
 * render_special. Writes at most cap bytes (no NUL) and returns the full length. */
int tok_piece(const tok_vocab *v, int32_t id, bool render_special, char *buf, int cap);

/* Concatenated pieces of ids; returns the full length (not counting a NUL; may exceed cap).
 * Like snprintf, writes at most cap bytes including a terminating NUL (when cap > 0). As in
 * llama.cpp's detokenizer, when the vocab adds a space prefix the first token's piece loses its
 * leading space. Unknown tokens render like control tokens; unused and out-of-range ids as
 * nothing. */
int64_t tok_decode(const tok_vocab *v, const int32_t *ids, int64_t n, bool render_special,
                   char *out, int64_t cap);

/* ---- UTF-8 of text handed out (JSON, event streams): the one validator and sanitizer ---- */

/* Length (1..4) of the well-formed UTF-8 character at s[0, n), or 0 when none starts there: a
 * stray continuation byte, a byte no character starts with, a sequence cut short (by a wrong
 * byte or by the end at n), an overlong form, a surrogate (U+D800..U+DFFF) or a value past
 * U+10FFFF. Strict, as RFC 3629 has it (the tokenizers' decoding is lenient, as llama.cpp's);
 * NUL is a character of length 1. n 0 gives 0. */
size_t tok_utf8_len(const char *s, size_t n);

/* A copy of s[0, n) (any bytes) in which each NUL byte and each byte that does not belong to a
 * well-formed character (tok_utf8_len) becomes U+FFFD (EF BF BD), one per byte: valid UTF-8
 * without NUL, and valid text without NUL unchanged. NUL-terminated; malloc'd, the caller frees;
 * NULL when out of memory. */
char *tok_utf8_clean(const char *s, size_t n);

/* Where s[start, end) may be cut when text is handed out piece by piece: end, or before an
 * incomplete character at the end (a lead byte announcing more bytes than follow it), which the
 * next bytes may complete, so that no well-formed character is split across two pieces. Bytes
 * that can never start a character are not held back. start <= end. */
size_t tok_utf8_cut(const char *s, size_t start, size_t end);

#endif
