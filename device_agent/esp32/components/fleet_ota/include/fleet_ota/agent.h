/* The update agent: desired states in, jobs run to commit or rollback, reports out
 * (docs/protocol.md, "Update phases and agent states"). All IO goes through the ports;
 * all memory is in fo_agent_t (the caller allocates it, statically on a device). */
#ifndef FLEET_OTA_AGENT_H
#define FLEET_OTA_AGENT_H

#include <mbedtls/sha256.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/config.h"
#include "fleet_ota/desired.h"
#include "fleet_ota/outbox.h"
#include "fleet_ota/port.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FO_ST_IDLE,
    FO_ST_DOWNLOADING,
    FO_ST_VERIFYING,
    FO_ST_STAGED,
    FO_ST_SWAPPED,
    FO_ST_TRIAL,
    FO_ST_COMMITTED,
    FO_ST_ROLLING_BACK,
    FO_ST_ROLLED_BACK,
    FO_ST_FAILED,
} fo_status_t;

const char *fo_status_name(fo_status_t status);

/* What one slot holds once its bytes were verified. */
typedef struct {
    uint8_t verified;
    uint8_t sha256[32];
    uint64_t length;
    uint64_t release_counter;
    char version[FO_MAX_VERSION_CHARS + 1];
    char rollout_id[65]; /* "" for null */
    char arm[65];
} fo_slot_info_t;

typedef struct {
    char name[65];
    uint64_t floor;
    int8_t active;         /* the slot the application runs, -1 for none */
    uint8_t phase;         /* the last phase reported for it (fo_phase_t) */
    fo_slot_info_t slot[2];
} fo_model_state_t;

/* The persistent record ("state"): written whole and atomically before every step. */
typedef struct {
    uint8_t has_last_seq;
    uint64_t last_seq;
    uint8_t last_digest[32];
    uint8_t has_trusted_time;
    int64_t last_trusted_us;
    uint8_t n_models;
    fo_model_state_t models[FLEET_OTA_MAX_LOCAL_MODELS];
    /* The job in progress: entry `job_entry` of the stored "desired" envelope. */
    uint8_t status; /* fo_status_t */
    uint64_t job_seq;
    uint32_t jobs_left;  /* entries of the stored envelope still to run, a bit each */
    uint8_t job_entry;
    uint8_t job_model;   /* index in models[] */
    int8_t target_slot;
    int8_t previous_slot;
    uint64_t written;    /* bytes durably in the target slot */
    uint16_t fail_code;  /* fo_code_t */
    char detail[128];
} fo_persist_t;

typedef struct {
    const fo_ports_t *ports;
    char device_id[65];
    char hardware[65];
    const char *agent_version;
    fo_key_t director;
    fo_persist_t st;
    /* The envelope being judged, and while a job runs the accepted one (its entries
     * point into it). */
    uint8_t envelope[FLEET_OTA_MAX_ENVELOPE];
    fo_work_t work;
    fo_decision_t decision;
    fo_model_record_t records[FLEET_OTA_MAX_LOCAL_MODELS];
    uint8_t io[FLEET_OTA_IO_BUFFER];
    char out[2048]; /* an outgoing report */
    mbedtls_sha256_context sha;
    uint64_t pending; /* bytes written since the last checkpoint */
    int digest_ready;
    uint8_t digest[32];
    unsigned progress_reported;
    fo_outbox_t outbox; /* events not yet confirmed on `acks` */
    fo_batches_t batches; /* telemetry messages not yet confirmed (in RAM only) */
} fo_agent_t;

/* Load the persistent state and finish or undo whatever a restart interrupted (a
 * download resumes, a swap whose trial had not passed is rolled back). Publishes
 * `status` online and the reported state. */
fo_code_t fo_agent_start(fo_agent_t *agent, const fo_ports_t *ports, const char *device_id,
                         const char *hardware, const char *director_pem, size_t pem_len);

/* A message on the `desired` topic. While a job runs, messages are not judged
 * (FO_CONFLICT): the port re-subscribes after fo_agent_run and the broker delivers the
 * retained one again. Otherwise the outcome's code (FO_OK when accepted or ignored). */
fo_code_t fo_agent_on_desired(fo_agent_t *agent, const uint8_t *msg, size_t len);

/* Run the jobs of the accepted desired state until none is left. FO_OK when idle. */
fo_code_t fo_agent_run(fo_agent_t *agent);

/* A message on the `acks` topic: forget the events and telemetry messages it confirms (a malformed one is
 * ignored). Call between fo_agent_run calls, never during one. */
void fo_agent_on_acks(fo_agent_t *agent, const uint8_t *msg, size_t len);

/* Publish again the unconfirmed events and telemetry messages whose time has come (5 s, doubling to 60 s); call
 * it often (each second is enough), between fo_agent_run calls. */
void fo_agent_poll(fo_agent_t *agent);

/* After every (re)connection to the broker: unconfirmed events and telemetry go again
 * soon. */
void fo_agent_on_connected(fo_agent_t *agent);

/* Events kept until confirmed. */
size_t fo_agent_unconfirmed(const fo_agent_t *agent);

/* Telemetry messages kept until confirmed, and those dropped unconfirmed to make room. */
size_t fo_agent_telemetry_unconfirmed(const fo_agent_t *agent);
uint32_t fo_agent_telemetry_dropped(const fo_agent_t *agent);

/* The slot the application should run for `model` (-1 for none), and its version and
 * rollout tags for telemetry. */
int fo_agent_active_slot(const fo_agent_t *agent, const char *model,
                         const fo_slot_info_t **info);

/* Publish one telemetry sample for `model`, tagged with its installed version, rollout
 * and arm: `names[i]` = `values[i]` for n metrics. The message carries a `batch_id` and
 * is kept until `acks` confirms it (FLEET_OTA_TELEMETRY_QUEUE messages; beyond, the
 * oldest is dropped); one longer than FLEET_OTA_TELEMETRY_BYTES is sent once without. */
fo_code_t fo_agent_telemetry(fo_agent_t *agent, const char *model, const char *const *names,
                             const double *values, size_t n);

#ifdef __cplusplus
}
#endif
#endif
