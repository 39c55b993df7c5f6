/* Constrained decoding: a grammar (from a JSON schema, a regex, or "any JSON object") and a
 * matcher that says, per decoding step, which tokens of a vocabulary may come next. Standalone:
 * no engine headers; the caller hands over each token's bytes once per model.
 *
 * Threads: a gram and a gram_vocab are read-only after creation (share them freely, e.g. cache
 * compiled grammars by schema text). A gram_state is one generation's and caches the masks of
 * the parser configurations it has met (inside a string every step meets the same one), so use
 * each state from one thread at a time. Free every state before its gram and vocab.
 *
 * Whitespace in JSON grammars: between tokens either nothing, one space, or a newline followed
 * by up to 20 spaces/tabs, so a model can write compact or indented JSON but cannot loop on
 * whitespace forever. Numbers: at most 16 integer digits, 16 fraction digits, 3 exponent digits. */
#ifndef KVSEEK_GRAMMAR_H
#define KVSEEK_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gram gram;             /* a compiled grammar */
typedef struct gram_vocab gram_vocab; /* a model's token pieces as a byte trie */
typedef struct gram_state gram_state; /* a position in the grammar during one generation */

enum {
    GRAM_OK = 0,
    GRAM_ERR_NOMEM = -1,
    GRAM_ERR_ARG = -2,    /* bad argument (NULL, id out of range, no vocab bound) */
    GRAM_ERR_REJECT = -3, /* the bytes or token do not continue the grammar; state unchanged */
};
const char *gram_strerror(int rc);

/* ---- grammars: NULL and a one-line reason in err on failure; gram_free accepts NULL ---- */

/* A JSON schema (draft 2020-12 subset). Keywords: type (string or array), properties, required,
 * additionalProperties (false, true or a schema; absent means false when properties is given and
 * any key otherwise), items, enum, const, anyOf, oneOf (as anyOf), allOf with one schema,
 * minItems, maxItems, minLength, maxLength, minimum/maximum/exclusiveMinimum/exclusiveMaximum
 * (integers only, within +-(10^16 - 1)), pattern (a full match; see gram_from_regex),
 * format (date, time, date-time, uuid), $ref to "#", "#/$defs/..." or "#/definitions/..."
 * (recursion allowed as long as each cycle writes something). Ignored: title, description,
 * default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly. Any other keyword
 * is an error naming it and its place, e.g.
 * "json_schema: unsupported keyword 'patternProperties' at /properties/a". Properties come in
 * the schema's order; optional ones may be left out. */
gram *gram_from_json_schema(const char *schema_json, size_t len, char *err, size_t errlen);

/* Any JSON object (OpenAI's json_object mode). NULL only when out of memory. */
gram *gram_json_object(void);

/* A regex matched in full (anchors implied; a leading ^ and trailing $ are allowed). Supported:
 * literals (UTF-8), escapes (\n \t \r \f \v \0 \xHH \uHHHH and escaped punctuation), classes
 * [...] with ranges and negation, \d \w \s \D \W \S, '.' (any character but newline), groups
 * (...) and (?:...), alternation, * + ? {m} {m,} {m,n} (m, n <= 1000; lazy '?' ignored).
 * Not supported: backreferences, lookaround, word boundaries, flags, a repeated sub-expression
 * that can match the empty string (e.g. (a*)*). Errors name the byte position. */
gram *gram_from_regex(const char *re, size_t len, char *err, size_t errlen);

/* Grammars are read-only, so several generations may share one: gram_ref adds a holder (n > 1
 * choices each free theirs); gram_free drops one and frees with the last. Thread-safe. */
gram *gram_ref(gram *g);
void gram_free(gram *g);

/* ---- vocabulary ---- */

/* Builds the byte trie of a model's tokens. piece(ud, id, &len) gives token id's bytes (copied;
 * they need only live during the call) or NULL for a control/special token, which is never
 * allowed; eog_ids (n_eog of them, copied) end generation and are allowed exactly where the
 * grammar can end. NULL and a reason in err on failure. */
gram_vocab *gram_vocab_create(int32_t n_vocab, const char *(*piece)(void *ud, int32_t id, int *len),
                              void *ud, const int32_t *eog_ids, int n_eog, char *err, size_t errlen);
void gram_vocab_free(gram_vocab *v); /* accepts NULL */
int32_t gram_vocab_n(const gram_vocab *v);
/* uint32_t words of a token mask: bit (id & 31) of word id >> 5 set means allowed. */
size_t gram_mask_words(const gram_vocab *v);
static inline bool gram_mask_test(const uint32_t *mask, int32_t id) { return mask[id >> 5] >> (id & 31) & 1; }

/* ---- matching ---- */

/* A state at the start of g. g and v (v may be NULL when only gram_state_accept is used) must
 * outlive the state. NULL when out of memory. */
gram_state *gram_state_new(const gram *g, const gram_vocab *v);
gram_state *gram_state_clone(const gram_state *s); /* independent copy, for n > 1 sampling */
void gram_state_free(gram_state *s);               /* accepts NULL */

/* Writes the allowed tokens as a bitset of gram_mask_words(v) words: every token whose bytes
 * continue the grammar, plus the EOG tokens when it can end. After the end (an EOG accepted)
 * nothing is allowed. */
int gram_state_mask(gram_state *s, uint32_t *mask);
/* Advances by bytes (any split: a token may end inside a UTF-8 character). GRAM_ERR_REJECT and
 * the state unchanged when they do not fit. */
int gram_state_accept(gram_state *s, const void *bytes, size_t len);
/* Advances by a token of the bound vocabulary: its bytes, or for an EOG token the end (only
 * where gram_state_can_end). */
int gram_state_accept_token(gram_state *s, int32_t id);
bool gram_state_can_end(const gram_state *s);  /* the text so far is a complete match */
bool gram_state_must_end(const gram_state *s); /* ... and no byte may follow */
bool gram_state_ended(const gram_state *s);    /* an EOG token was accepted */

#endif
