/* Update events until the server has them (docs/protocol.md, "events" and "acks"), as
 * the Python agent's device_agent/delivery.py: each event gets an `event_id` and is kept
 * in one of a fixed number of records, saved before it is published,
 * published again (5 s, doubling to 60 s) until an `acks` message names its id, and sent
 * again after a restart. When the queue is full the oldest event is dropped. */
#ifndef FLEET_OTA_OUTBOX_H
#define FLEET_OTA_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/config.h"
#include "fleet_ota/json.h"
#include "fleet_ota/port.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Unconfirmed events kept (an update reports about a dozen). */
#ifndef FLEET_OTA_EVENT_QUEUE
#define FLEET_OTA_EVENT_QUEUE 16
#endif
/* Bytes of one event's JSON; the agent's longest event is under 500. */
#define FO_EVENT_BYTES 512
#define FO_EVENT_RECORD_HEADER 24
#define FO_RESEND_FIRST_US 5000000LL
#define FO_RESEND_MAX_US 60000000LL

/* Each event is its own record, "ev0".."ev<N-1>" (one small atomic save per event, as
 * NVS keys on a device): a header (magic, CRC, order, key) and the event's JSON; once
 * confirmed the record keeps its header alone. Only this index is kept in RAM. */
typedef struct {
    uint64_t order;  /* 0: the record was never written */
    int64_t due_us;  /* when to publish again (0 after a restart: at once) */
    uint16_t len;    /* of the JSON */
    uint8_t pending; /* not yet confirmed */
    uint8_t tries;
    char id[33];     /* event_id: 32 lowercase hex digits */
} fo_event_slot_t;

typedef struct {
    uint64_t next;     /* the counter in the next event id (per boot) */
    uint8_t epoch[8];  /* random per boot: the first half of every id */
    uint64_t order;    /* the newest record's order */
    uint64_t last_key; /* FNV-1a of the newest event, without its ts and id */
    fo_event_slot_t slot[FLEET_OTA_EVENT_QUEUE];
} fo_outbox_t;

/* Read the event records (`scratch`: FO_EVENT_RECORD_HEADER + FO_EVENT_BYTES bytes);
 * `epoch` is 8 random bytes for this boot's ids. Every unconfirmed event is due at once. */
fo_code_t fo_outbox_load(fo_outbox_t *o, const fo_storage_port_t *storage,
                         const uint8_t epoch[8], uint8_t *scratch);

/* Whether `key` (an FNV-1a of the event without ts and id) repeats the newest event:
 * recovery after a power cut may report the same outcome twice, and it is the same news. */
int fo_outbox_repeats(const fo_outbox_t *o, uint64_t key);

/* The id the next event gets (32 hex digits and a NUL). */
void fo_outbox_next_id(const fo_outbox_t *o, char id[33]);

/* Keep `text` (an event ending with the id from fo_outbox_next_id, `"event_id":"…"}`)
 * in the oldest free record, or over the oldest unconfirmed one when none is free.
 * `scratch` as for fo_outbox_load. On a failed save the code is returned and the caller
 * publishes the event without its id (stored once, never confirmed). */
fo_code_t fo_outbox_add(fo_outbox_t *o, const fo_storage_port_t *storage, uint64_t key,
                        const char *text, size_t len, int64_t now_us, uint8_t *scratch);

/* Whether `msg` is an `acks` payload the Python agent's parse_acks takes (the shared
 * vectors, tests/vectors/acks.json); `tokens` is scratch for the parser. */
int fo_outbox_acks_valid(const uint8_t *msg, size_t len, fo_json_tok_t *tokens,
                         size_t max_tokens);

/* Forget the events named in an `acks` payload; a malformed payload is ignored whole.
 * `tokens` is scratch for the parser, `scratch` as above. Returns how many were pending. */
size_t fo_outbox_on_acks(fo_outbox_t *o, const fo_storage_port_t *storage, const uint8_t *msg,
                         size_t len, fo_json_tok_t *tokens, size_t max_tokens,
                         uint8_t *scratch);

/* Publish the events whose time has come through `mqtt` (read back into `scratch`). */
void fo_outbox_resend_due(fo_outbox_t *o, const fo_storage_port_t *storage,
                          const fo_mqtt_port_t *mqtt, int64_t now_us, uint8_t *scratch);

/* After a (re)connection: every pending event goes again within the first delay. */
void fo_outbox_on_connected(fo_outbox_t *o, int64_t now_us);

/* Events not yet confirmed. */
size_t fo_outbox_pending(const fo_outbox_t *o);

/* The id the next event or telemetry message gets, and the counter moves on. */
void fo_outbox_take_id(fo_outbox_t *o, char id[33]);

/* Telemetry messages until the server has them (docs/protocol.md, "telemetry"), as the
 * Python agent's device_agent/telemetry.py: each message carries a `batch_id` and is kept
 * in RAM, in one of a fixed number of slots, and published again byte for byte (5 s,
 * doubling to 60 s, and soon after a reconnection) until `acks` names it in `batch_ids`.
 * When all slots wait the oldest message is dropped and counted. A restart loses them:
 * telemetry is not worth a flash write per sample. */
#ifndef FLEET_OTA_TELEMETRY_QUEUE
#define FLEET_OTA_TELEMETRY_QUEUE 4
#endif
/* Bytes of one kept message; a longer one is sent once without a `batch_id`. */
#ifndef FLEET_OTA_TELEMETRY_BYTES
#define FLEET_OTA_TELEMETRY_BYTES 1024
#endif

typedef struct {
    uint64_t order;  /* 0: never used */
    int64_t due_us;  /* when to publish again */
    uint16_t len;
    uint8_t pending; /* not yet confirmed */
    uint8_t tries;
    char id[33];     /* batch_id: 32 lowercase hex digits */
    char text[FLEET_OTA_TELEMETRY_BYTES];
} fo_batch_slot_t;

typedef struct {
    uint64_t order;   /* the newest message's order */
    uint32_t dropped; /* unconfirmed messages dropped to make room */
    fo_batch_slot_t slot[FLEET_OTA_TELEMETRY_QUEUE];
} fo_batches_t;

/* Keep `text` (a telemetry message whose `batch_id` is `id`) in a free slot, or over the
 * oldest unconfirmed one (counted in `dropped`). FO_PAYLOAD_TOO_LARGE when it does not
 * fit a slot (nothing kept). */
fo_code_t fo_batches_add(fo_batches_t *b, const char id[33], const char *text, size_t len,
                         int64_t now_us);

/* Forget the messages named in an `acks` payload's `batch_ids`; a malformed payload is
 * ignored whole. Returns how many were pending. */
size_t fo_batches_on_acks(fo_batches_t *b, const uint8_t *msg, size_t len,
                          fo_json_tok_t *tokens, size_t max_tokens);

/* Publish the messages whose time has come on `telemetry`. */
void fo_batches_resend_due(fo_batches_t *b, const fo_mqtt_port_t *mqtt, int64_t now_us);

/* After a (re)connection: every pending message goes again within the first delay. */
void fo_batches_on_connected(fo_batches_t *b, int64_t now_us);

/* Telemetry messages not yet confirmed. */
size_t fo_batches_pending(const fo_batches_t *b);

#ifdef __cplusplus
}
#endif
#endif
