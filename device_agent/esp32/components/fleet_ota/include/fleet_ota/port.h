/* What the core needs from a platform (posix: host/ports/posix, esp-idf: not built yet).
 * Every call returns FO_OK or a code; FO_PORT_CRASH is for tests that simulate a power
 * cut: the core stops at once and persists nothing more. */
#ifndef FLEET_OTA_PORT_H
#define FLEET_OTA_PORT_H

#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/codes.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FO_PORT_CRASH ((fo_code_t)1000)

/* Model slots and persistent records (flash partitions and NVS on the device). */
typedef struct {
    /* Prepare `slot` of `model` for writing from `offset` (0: the whole slot is erased
     * first; otherwise what lies at and after `offset` may be overwritten). FO_DISK_FULL
     * when `length` bytes do not fit. */
    fo_code_t (*slot_open)(void *ctx, const char *model, int slot, uint64_t offset,
                           uint64_t length);
    fo_code_t (*slot_write)(void *ctx, const uint8_t *data, size_t len);
    /* Make what was written durable (fsync / flash write completion). */
    fo_code_t (*slot_close)(void *ctx);
    fo_code_t (*slot_read)(void *ctx, const char *model, int slot, uint64_t offset,
                           uint8_t *buf, size_t len);
    /* Records by name ("state", "desired"): a save replaces the old value atomically. */
    fo_code_t (*record_load)(void *ctx, const char *name, uint8_t *buf, size_t cap,
                             size_t *len); /* FO_NOT_FOUND when absent */
    fo_code_t (*record_save)(void *ctx, const char *name, const uint8_t *buf, size_t len);
    void *ctx;
} fo_storage_port_t;

/* Receives downloaded bytes; returns FO_OK to go on, a code to stop the download. */
typedef fo_code_t (*fo_sink_t)(void *sink_ctx, const uint8_t *data, size_t len);

typedef struct {
    /* GET `url` from byte `offset` (a Range request when offset > 0) and hand every
     * chunk to `sink`. FO_OK at the end of the body; FO_DOWNLOAD_FAILED,
     * FO_DOWNLOAD_TIMEOUT, or the sink's code. */
    fo_code_t (*get)(void *ctx, const char *url, uint64_t offset, fo_sink_t sink,
                     void *sink_ctx);
    /* POST `body` (JSON) to `url`; the answer's body into `out` (capacity `cap`, NUL
     * terminated, FO_PAYLOAD_TOO_LARGE when longer) and its HTTP status. Used only to
     * enroll; NULL on a device enrolled at the factory. */
    fo_code_t (*post_json)(void *ctx, const char *url, const char *body, size_t len,
                           uint8_t *out, size_t cap, size_t *out_len, int *status);
    void *ctx;
} fo_http_port_t;

typedef struct {
    /* Publish on this device's `channel` (state, events, telemetry, status) with the
     * channel's QoS and retain flag (docs/protocol.md). */
    fo_code_t (*publish)(void *ctx, const char *channel, const uint8_t *payload, size_t len);
    void *ctx;
} fo_mqtt_port_t;

typedef struct {
    /* Microseconds since the epoch; *synced says whether it is a real time. */
    int64_t (*now_us)(void *ctx, int *synced);
    /* Wait between download attempts; NULL: retry at once. */
    void (*sleep_ms)(void *ctx, unsigned ms);
    /* Fill `buf` with random bytes (esp_random, /dev/urandom), for the event ids; NULL:
     * the core derives them from the device id and its stored events. */
    void (*random)(void *ctx, uint8_t *buf, size_t len);
    void *ctx;
} fo_clock_port_t;

typedef struct {
    /* The application's check of the model now in `slot` (load it, run its golden
     * input): FO_OK, or FO_HEALTH_CHECK_FAILED / FO_COMMIT_TIMEOUT. */
    fo_code_t (*run)(void *ctx, const char *model, int slot);
    void *ctx;
} fo_selftest_port_t;

typedef struct {
    fo_storage_port_t storage;
    fo_http_port_t http;
    fo_mqtt_port_t mqtt;
    fo_clock_port_t clock;
    fo_selftest_port_t selftest;
} fo_ports_t;

#ifdef __cplusplus
}
#endif
#endif
