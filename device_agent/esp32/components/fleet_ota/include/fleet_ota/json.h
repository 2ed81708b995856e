/* A bounded, non-allocating JSON tokenizer for untrusted input (docs/protocol.md).
 *
 * It accepts exactly what the Python side's strict decoder accepts (RFC 8259, UTF-8,
 * no NaN/Infinity, no number that overflows a double, no integer literal of more than
 * 4300 digits, no duplicate key in an object, keys compared after unescaping) within
 * two bounds of its own: at most `max_tokens` tokens and `max_depth` nesting levels.
 * Tokens point into the caller's buffer; nothing is copied or allocated.
 */
#ifndef FLEET_OTA_JSON_H
#define FLEET_OTA_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/codes.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FO_JSON_NULL,
    FO_JSON_FALSE,
    FO_JSON_TRUE,
    FO_JSON_NUMBER,
    FO_JSON_STRING, /* start/len: the raw text between the quotes */
    FO_JSON_ARRAY,
    FO_JSON_OBJECT,
} fo_json_type_t;

/* An object's members follow it as key, value, key, value...; `next` is the index of
 * the first token after this token's whole subtree. */
typedef struct {
    uint32_t start;
    uint32_t len;
    uint32_t next;
    uint16_t count; /* members of an object, items of an array */
    uint8_t type;
    uint8_t flags; /* FO_JSON_F_* */
} fo_json_tok_t;

#define FO_JSON_F_ESCAPED 1u /* a string with backslash escapes */
#define FO_JSON_F_INTEGER 2u /* a number without fraction or exponent */

typedef struct {
    const uint8_t *text;
    size_t text_len;
    fo_json_tok_t *tok;
    size_t count;
} fo_json_doc_t;

/* Tokenize `text`. FO_OK, or FO_MALFORMED for anything not strict JSON or over a bound. */
fo_code_t fo_json_parse(const uint8_t *text, size_t len, fo_json_tok_t *tokens,
                        size_t max_tokens, unsigned max_depth, fo_json_doc_t *doc);

/* The value of member `key` (ASCII, compared with the unescaped key) of object token
 * `obj`, or -1 when absent. */
long fo_json_member(const fo_json_doc_t *doc, size_t obj, const char *key);

/* Whether string token `i` unescapes to exactly `lit` (ASCII). */
int fo_json_str_eq(const fo_json_doc_t *doc, size_t i, const char *lit);

/* Whether string tokens `a` and `b` unescape to the same text. */
int fo_json_str_eq_tok(const fo_json_doc_t *doc, size_t a, size_t b);

/* Unescape string token `i` into `out` (capacity `cap`, room for a NUL too) as UTF-8;
 * a lone surrogate escape becomes its 3-byte form (ED A0..BF xx), as a Python str
 * would hold it. Returns the length, or -1 when it does not fit. `out` may be the
 * document's own buffer at the token's start (unescaping only shrinks). */
long fo_json_unescape(const fo_json_doc_t *doc, size_t i, uint8_t *out, size_t cap);

/* A JSON integer (not true/false, no fraction or exponent) in [0, 2**53 - 1]; "-0" is 0. */
int fo_json_uint(const fo_json_doc_t *doc, size_t i, uint64_t *value);

#ifdef __cplusplus
}
#endif
#endif
