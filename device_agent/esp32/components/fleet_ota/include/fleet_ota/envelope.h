/* DSSE envelopes signed by the director (docs/protocol.md, "desired"): the pinned key,
 * canonical base64, PAE and ECDSA P-256 / SHA-256 verification with mbedTLS. */
#ifndef FLEET_OTA_ENVELOPE_H
#define FLEET_OTA_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/codes.h"
#include "fleet_ota/json.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FO_DESIRED_PAYLOAD_TYPE "application/vnd.fleet.desired+json"

/* The director's public key as pinned at enrollment. */
typedef struct {
    uint8_t point[65];  /* uncompressed 04 || X || Y */
    char keyid[65];     /* hex SHA-256 of the DER SubjectPublicKeyInfo, the DSSE keyid */
} fo_key_t;

/* Load a PEM SubjectPublicKeyInfo of an ECDSA P-256 key; FO_OK or FO_MALFORMED. */
fo_code_t fo_key_from_pem(const char *pem, size_t len, fo_key_t *key);

/* Canonical base64 (docs/protocol.md): the standard or the URL-safe alphabet, padded,
 * exactly the encoding of the result. `out` may equal `in` (decoding in place).
 * FO_OK or FO_MALFORMED. */
fo_code_t fo_b64_decode(const uint8_t *in, size_t len, uint8_t *out, size_t *out_len);

/* SHA-256 of PAE(payload_type, payload). */
void fo_pae_sha256(const char *payload_type, const uint8_t *payload, size_t len,
                   uint8_t hash[32]);

/* Verify the envelope in `buf` (modified: strings are decoded in place) against `key`;
 * on FO_OK `*payload` points at the decoded payload inside `buf`. Codes as
 * verify_envelope's: payload_too_large, malformed, signature_invalid. */
fo_code_t fo_envelope_verify(uint8_t *buf, size_t len, const fo_key_t *key,
                             fo_json_tok_t *tokens, size_t max_tokens, uint8_t **payload,
                             size_t *payload_len);

/* SHA-256 of `len` bytes (the envelope digest that recognises a redelivered copy). */
void fo_sha256(const uint8_t *data, size_t len, uint8_t hash[32]);

#ifdef __cplusplus
}
#endif
#endif
