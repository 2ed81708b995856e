/* The desired state: payload format and the device's checks (docs/protocol.md,
 * "Verifying a desired state"), the C client's partial verification. */
#ifndef FLEET_OTA_DESIRED_H
#define FLEET_OTA_DESIRED_H

#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/codes.h"
#include "fleet_ota/config.h"
#include "fleet_ota/envelope.h"
#include "fleet_ota/json.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Decoded text inside the caller's buffer, NUL-terminated; p == NULL for JSON null. */
typedef struct {
    const char *p;
    size_t len;
} fo_str_t;

typedef struct {
    fo_str_t name, path, version, hardware, url, rollout_id, arm;
    uint8_t sha256[32];
    uint64_t release_counter;
    uint64_t length;
} fo_model_t;

typedef struct {
    fo_str_t device_id;
    uint64_t seq;
    int64_t issued_at_us; /* microseconds since the epoch */
    int64_t expires_at_us;
    size_t n_models;
    fo_model_t models[FO_MAX_MODELS];
} fo_desired_t;

/* Parse a verified payload (modified: strings are decoded in place) in
 * device_agent/protocol/messages.py's order. FO_OK, FO_MALFORMED, FO_INVALID_TARGET_PATH,
 * FO_PAYLOAD_TOO_LARGE. */
fo_code_t fo_desired_parse(uint8_t *payload, size_t len, fo_json_tok_t *tokens,
                           size_t max_tokens, fo_desired_t *out);

/* What the device holds for one model. */
typedef struct {
    char name[65];
    uint64_t floor;
    int installed;            /* whether `current` holds a committed version */
    uint8_t installed_sha256[32];
} fo_model_record_t;

/* The device's side of a decision: identity, clock, persistent state. */
typedef struct {
    const char *device_id;
    const char *hardware;
    int clock_synced;          /* whether now_us is a real time (SNTP, RTC) */
    int64_t now_us;
    int has_last_seq;
    uint64_t last_seq;
    uint8_t last_digest[32];   /* of the envelope last accepted, when has_last_seq */
    int has_trusted_time;
    int64_t last_trusted_us;   /* the newest issued_at accepted */
    size_t n_records;
    const fo_model_record_t *records;
} fo_device_ctx_t;

typedef enum {
    FO_ACCEPTED,
    FO_IGNORED, /* the retained copy of the envelope last accepted */
    FO_REJECTED,
} fo_outcome_t;

/* Working memory of one evaluation: the only buffers beside the caller's envelope. */
typedef struct {
    fo_json_tok_t tokens[FLEET_OTA_MAX_TOKENS];
} fo_work_t;

typedef struct {
    fo_outcome_t outcome;
    fo_code_t code;          /* FO_REJECTED: why */
    uint64_t seq;            /* for the event: 0 until the signature verified */
    uint8_t digest[32];      /* SHA-256 of the envelope as received */
    fo_desired_t desired;    /* FO_ACCEPTED */
    /* FO_ACCEPTED, per model entry: FO_OK for a job, a code for a rejected entry, or
     * FO_CODE_COUNT for an entry already installed (nothing to do). */
    fo_code_t model_code[FO_MAX_MODELS];
} fo_decision_t;

/* Judge one `desired` message (buf is modified). Pure: no clock, no IO. */
void fo_desired_evaluate(uint8_t *buf, size_t len, const fo_key_t *key,
                         const fo_device_ctx_t *ctx, fo_work_t *work, fo_decision_t *out);

#ifdef __cplusplus
}
#endif
#endif
