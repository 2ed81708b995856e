/* The update agent (include/fleet_ota/agent.h). One module owns the update state:
 * `transition()` journals every new status (one atomic record save) before that status's
 * entry action runs, and every entry action is idempotent, so after a power cut
 * `recover()` runs the persisted status's action again, except that a swap whose trial
 * had not passed is rolled back. The table matches device_agent/state.py:
 *
 *   status        entry action (IO)              then
 *   downloading   stream into the inactive slot  verifying | failed
 *   verifying     length and sha256              staged | failed
 *   staged        (slot recorded as verified)    swapped | failed
 *   swapped       (active slot switched)         trial
 *   trial         application self-test          committed | rolling_back
 *   committed     report, state                  next job | idle
 *   rolling_back  (active slot switched back)    rolled_back
 *   rolled_back   report, state                  next job | idle
 *   failed        report, state                  next job | idle
 */
#include "fleet_ota/agent.h"

#include <stdio.h>
#include <string.h>

#include "fleet_ota/outbox.h"
#include "fleet_ota/text.h"
#include "record.h"
#include "sha256_compat.h"

#define PERSIST_MAGIC 0x41544f46u /* "FOTA" */
#define PERSIST_VERSION 1u
#define HEADER 16

typedef char event_fits_io[(FO_EVENT_RECORD_HEADER + FO_EVENT_BYTES <= FLEET_OTA_IO_BUFFER) ? 1 : -1];
typedef char persist_fits_io[(sizeof(fo_persist_t) + HEADER <= FLEET_OTA_IO_BUFFER) ? 1 : -1];

typedef enum {
    PH_NONE,
    PH_ACCEPTED,
    PH_DOWNLOADING,
    PH_DOWNLOADED,
    PH_VERIFIED,
    PH_STAGED,
    PH_SWAPPED,
    PH_TRIAL,
    PH_COMMITTED,
    PH_FAILED,
    PH_ROLLED_BACK,
    PH_REJECTED,
} phase_t;

static const char *const PHASES[] = {
    "",       "accepted", "downloading", "downloaded", "verified",    "staged",
    "swapped", "trial",   "committed",   "failed",     "rolled_back", "rejected",
};

static const char *const STATUS_NAMES[] = {
    "idle",      "downloading",  "verifying",   "staged", "swapped",
    "trial",     "committed",    "rolling_back", "rolled_back", "failed",
};

const char *fo_status_name(fo_status_t status)
{
    return (unsigned)status < sizeof(STATUS_NAMES) / sizeof(STATUS_NAMES[0])
               ? STATUS_NAMES[status]
               : NULL;
}

/* --- persistence ------------------------------------------------------------------ */

static fo_code_t persist(fo_agent_t *a)
{
    const fo_storage_port_t *s = &a->ports->storage;
    memcpy(a->io + HEADER, &a->st, sizeof(a->st));
    fo_put_le(a->io, PERSIST_MAGIC, 4);
    fo_put_le(a->io + 4, PERSIST_VERSION, 4);
    fo_put_le(a->io + 8, (uint32_t)sizeof(a->st), 4);
    fo_put_le(a->io + 12, fo_crc32(a->io + HEADER, sizeof(a->st)), 4);
    return s->record_save(s->ctx, "state", a->io, HEADER + sizeof(a->st));
}

static fo_code_t load_persisted(fo_agent_t *a)
{
    const fo_storage_port_t *s = &a->ports->storage;
    size_t len = 0;
    memset(&a->st, 0, sizeof(a->st));
    fo_code_t code = s->record_load(s->ctx, "state", a->io, sizeof(a->io), &len);
    if (code == FO_NOT_FOUND) {
        return FO_OK; /* a fresh device */
    }
    if (code != FO_OK) {
        return code;
    }
    /* A record of another layout or a torn one is refused, never half-read. */
    if (len != HEADER + sizeof(a->st) || fo_get_le(a->io, 4) != PERSIST_MAGIC ||
        fo_get_le(a->io + 4, 4) != PERSIST_VERSION || fo_get_le(a->io + 8, 4) != sizeof(a->st) ||
        fo_get_le(a->io + 12, 4) != fo_crc32(a->io + HEADER, sizeof(a->st))) {
        return FO_MALFORMED;
    }
    memcpy(&a->st, a->io + HEADER, sizeof(a->st));
    return FO_OK;
}

/* --- reports ---------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t cap;
    size_t len;
} jw_t;

static void jw_raw(jw_t *w, const char *s)
{
    size_t n = strlen(s);
    if (w->len + n < w->cap) {
        memcpy(w->p + w->len, s, n);
        w->p[w->len + n] = 0;
    }
    w->len += n;
}

/* A JSON string: control characters escaped; a caller passes printable UTF-8. */
static void jw_str(jw_t *w, const char *s)
{
    char esc[8];
    jw_raw(w, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            esc[2] = 0;
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else {
            esc[0] = (char)c;
            esc[1] = 0;
        }
        jw_raw(w, esc);
    }
    jw_raw(w, "\"");
}

static void jw_str_or_null(jw_t *w, const char *s)
{
    if (s == NULL || *s == 0) {
        jw_raw(w, "null");
    } else {
        jw_str(w, s);
    }
}

static void jw_u64(jw_t *w, uint64_t v)
{
    char num[24];
    snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    jw_raw(w, num);
}

static void publish(fo_agent_t *a, const char *channel, jw_t *w)
{
    const fo_mqtt_port_t *m = &a->ports->mqtt;
    if (w->len < w->cap) {
        /* Best effort, as the Python agent's reports: the port queues while offline. */
        (void)m->publish(m->ctx, channel, (const uint8_t *)w->p, w->len);
    }
}

static void now_text(fo_agent_t *a, char ts[28])
{
    int synced = 0;
    fo_format_timestamp(a->ports->clock.now_us(a->ports->clock.ctx, &synced), ts);
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)p[i]) * 0x100000001b3ULL;
    }
    return h;
}

/* An event, kept until the server confirms it (outbox.h), then published. */
static void report(fo_agent_t *a, uint64_t seq, const char *rollout_id, const char *model,
                   phase_t phase, int progress, fo_code_t code, const char *detail)
{
    char ts[28], id[33];
    jw_t w = {a->out, sizeof(a->out), 0};
    now_text(a, ts);
    jw_raw(&w, "{\"v\":1,\"seq\":");
    jw_u64(&w, seq);
    jw_raw(&w, ",\"rollout_id\":");
    jw_str_or_null(&w, rollout_id);
    jw_raw(&w, ",\"model\":");
    jw_str_or_null(&w, model);
    jw_raw(&w, ",\"phase\":");
    jw_str(&w, PHASES[phase]);
    jw_raw(&w, ",\"progress\":");
    if (progress < 0) {
        jw_raw(&w, "null");
    } else {
        jw_u64(&w, (uint64_t)progress);
    }
    jw_raw(&w, ",\"code\":");
    jw_str_or_null(&w, code == FO_OK ? NULL : fo_code_name(code));
    jw_raw(&w, ",\"detail\":");
    jw_str(&w, detail == NULL ? "" : detail);
    if (w.len >= w.cap) {
        return;
    }
    uint64_t key = fnv1a(w.p, w.len);
    if (fo_outbox_repeats(&a->outbox, key)) {
        return;
    }
    jw_raw(&w, ",\"ts\":");
    jw_str(&w, ts);
    size_t without_id = w.len;
    fo_outbox_next_id(&a->outbox, id);
    jw_raw(&w, ",\"event_id\":");
    jw_str(&w, id);
    jw_raw(&w, "}");
    if (w.len >= w.cap) {
        return;
    }
    int64_t now = a->ports->clock.now_us(a->ports->clock.ctx, &(int){0});
    /* a->io is free whenever an event is reported (reads and records use it in turn). */
    if (fo_outbox_add(&a->outbox, &a->ports->storage, key, w.p, w.len, now, a->io) != FO_OK) {
        /* Not kept: sent once without an id, so that the id is never reused. */
        w.len = without_id;
        w.p[w.len] = 0;
        jw_raw(&w, "}");
    }
    publish(a, "events", &w);
}

static void publish_state(fo_agent_t *a)
{
    jw_t w = {a->out, sizeof(a->out), 0};
    jw_raw(&w, "{\"v\":1,\"agent_version\":");
    jw_str(&w, a->agent_version);
    jw_raw(&w, ",\"hardware\":");
    jw_str(&w, a->hardware);
    jw_raw(&w, ",\"models\":[");
    int first = 1;
    for (unsigned i = 0; i < a->st.n_models; i++) {
        const fo_model_state_t *m = &a->st.models[i];
        if (m->active < 0 || !m->slot[m->active].verified) {
            continue;
        }
        const fo_slot_info_t *s = &m->slot[m->active];
        jw_raw(&w, first ? "{\"name\":" : ",{\"name\":");
        first = 0;
        jw_str(&w, m->name);
        jw_raw(&w, ",\"version\":");
        jw_str(&w, s->version);
        jw_raw(&w, ",\"release_counter\":");
        jw_u64(&w, s->release_counter);
        jw_raw(&w, m->active == 0 ? ",\"slot\":\"a\",\"status\":" : ",\"slot\":\"b\",\"status\":");
        jw_str(&w, PHASES[m->phase == PH_NONE ? PH_COMMITTED : m->phase]);
        jw_raw(&w, "}");
    }
    jw_raw(&w, "],\"last_seq\":");
    jw_u64(&w, a->st.has_last_seq ? a->st.last_seq : 0);
    jw_raw(&w, "}");
    publish(a, "state", &w);
}

/* --- the job ---------------------------------------------------------------------- */

static const fo_model_t *job(const fo_agent_t *a)
{
    return &a->decision.desired.models[a->st.job_entry];
}

static fo_model_state_t *job_model(fo_agent_t *a)
{
    return &a->st.models[a->st.job_model];
}

static void report_job(fo_agent_t *a, phase_t phase, int progress, fo_code_t code,
                       const char *detail)
{
    const fo_model_t *m = job(a);
    report(a, a->st.job_seq, m->rollout_id.p, m->name.p, phase, progress, code, detail);
}

static void set_failure(fo_agent_t *a, fo_code_t code, const char *detail)
{
    a->st.fail_code = (uint16_t)code;
    snprintf(a->st.detail, sizeof(a->st.detail), "%s", detail);
}

/* Journal `status` (with whatever the caller changed in the record) before its action. */
static fo_code_t transition(fo_agent_t *a, fo_status_t status)
{
    a->st.status = (uint8_t)status;
    return persist(a);
}

static fo_code_t sink(void *ctx, const uint8_t *data, size_t len)
{
    fo_agent_t *a = ctx;
    const fo_storage_port_t *s = &a->ports->storage;
    const fo_model_t *m = job(a);
    /* st.written is the durable checkpoint; a->pending what was written after it. */
    if (a->st.written + a->pending + len > m->length) {
        return FO_LENGTH_EXCEEDED;
    }
    fo_code_t code = s->slot_write(s->ctx, data, len);
    if (code != FO_OK) {
        return code;
    }
    fo_sha256_update(&a->sha, data, len);
    a->pending += len;
    uint64_t done = a->st.written + a->pending;
    unsigned quarter = (unsigned)(done * 4 / m->length);
    if (quarter > a->progress_reported && quarter < 4) {
        a->progress_reported = quarter;
        report_job(a, PH_DOWNLOADING, (int)(quarter * 25), FO_OK, "");
    }
    if (a->pending >= FLEET_OTA_CHECKPOINT) {
        /* Durable bytes first, then the record that counts them. */
        code = s->slot_close(s->ctx);
        if (code == FO_OK) {
            a->st.written += a->pending;
            a->pending = 0;
            code = persist(a);
        }
        if (code == FO_OK) {
            code = s->slot_open(s->ctx, m->name.p, a->st.target_slot, a->st.written, m->length);
        }
    }
    return code;
}

/* SHA-256 over the first `len` bytes of the target slot, read back in the fixed buffer. */
static fo_code_t rehash(fo_agent_t *a, uint64_t len)
{
    const fo_storage_port_t *s = &a->ports->storage;
    for (uint64_t off = 0; off < len;) {
        size_t n = len - off < sizeof(a->io) ? (size_t)(len - off) : sizeof(a->io);
        fo_code_t code = s->slot_read(s->ctx, job(a)->name.p, a->st.target_slot, off, a->io, n);
        if (code != FO_OK) {
            return code;
        }
        fo_sha256_update(&a->sha, a->io, n);
        off += n;
    }
    return FO_OK;
}

/* One GET from the durable checkpoint (the bytes after it are hashed and written again). */
static fo_code_t download_once(fo_agent_t *a)
{
    const fo_storage_port_t *s = &a->ports->storage;
    const fo_model_t *m = job(a);
    a->digest_ready = 0;
    a->pending = 0;
    fo_sha256_starts(&a->sha);
    fo_code_t code = rehash(a, a->st.written);
    if (code == FO_OK) {
        code = s->slot_open(s->ctx, m->name.p, a->st.target_slot, a->st.written, m->length);
    }
    if (code != FO_OK) {
        return code;
    }
    if (a->st.written < m->length) {
        code = a->ports->http.get(a->ports->http.ctx, m->url.p, a->st.written, sink, a);
    }
    if (code == FO_PORT_CRASH) {
        return code;
    }
    fo_code_t closed = s->slot_close(s->ctx);
    return code == FO_OK ? closed : code;
}

static fo_code_t download(fo_agent_t *a)
{
    const fo_model_t *m = job(a);
    fo_code_t code;
    /* A failed transfer is tried again from the checkpoint, after 1, 2, 4... s, as the
     * Python agent retries within its deadline; what the bytes are is never retried. */
    for (unsigned attempt = 1;; attempt++) {
        code = download_once(a);
        if ((code != FO_DOWNLOAD_FAILED && code != FO_DOWNLOAD_TIMEOUT) ||
            attempt >= FLEET_OTA_DOWNLOAD_ATTEMPTS) {
            break;
        }
        if (a->ports->clock.sleep_ms != NULL) {
            a->ports->clock.sleep_ms(a->ports->clock.ctx, 1000u << (attempt - 1));
        }
    }
    if (code != FO_OK) {
        return code;
    }
    /* Counted now, made durable by the next transition's record save. */
    a->st.written += a->pending;
    a->pending = 0;
    if (a->st.written != m->length) {
        set_failure(a, FO_HASH_MISMATCH, "the download ended before its length");
        return FO_HASH_MISMATCH;
    }
    fo_sha256_finish(&a->sha, a->digest);
    a->digest_ready = 1;
    return FO_OK;
}

static fo_code_t verify(fo_agent_t *a)
{
    const fo_model_t *m = job(a);
    if (!a->digest_ready) {
        fo_sha256_starts(&a->sha);
        fo_code_t code = rehash(a, m->length);
        if (code != FO_OK) {
            return code;
        }
        fo_sha256_finish(&a->sha, a->digest);
        a->digest_ready = 1;
    }
    return memcmp(a->digest, m->sha256, 32) == 0 ? FO_OK : FO_HASH_MISMATCH;
}

static void copy_str(char *out, size_t cap, fo_str_t s)
{
    snprintf(out, cap, "%s", s.p == NULL ? "" : s.p);
}

/* The record of the verified bytes now in the target slot. */
static void record_slot(fo_agent_t *a)
{
    const fo_model_t *m = job(a);
    fo_slot_info_t *s = &job_model(a)->slot[a->st.target_slot];
    s->verified = 1;
    memcpy(s->sha256, m->sha256, 32);
    s->length = m->length;
    s->release_counter = m->release_counter;
    copy_str(s->version, sizeof(s->version), m->version);
    copy_str(s->rollout_id, sizeof(s->rollout_id), m->rollout_id);
    copy_str(s->arm, sizeof(s->arm), m->arm);
}

static const char *code_detail(fo_code_t code)
{
    switch (code) {
    case FO_HASH_MISMATCH:
        return "the bytes do not match the director's sha256";
    case FO_LENGTH_EXCEEDED:
        return "more bytes than the director's length";
    case FO_DISK_FULL:
        return "the slot cannot hold the artifact";
    case FO_HEALTH_CHECK_FAILED:
        return "the self-test failed";
    default:
        return "";
    }
}

/* The next job of the stored envelope, or idle. */
static fo_code_t next_job(fo_agent_t *a);

static fo_code_t fail(fo_agent_t *a, fo_code_t code)
{
    if (a->st.detail[0] == 0 || a->st.fail_code != (uint16_t)code) {
        set_failure(a, code, code_detail(code));
    }
    job_model(a)->phase = PH_FAILED;
    return transition(a, FO_ST_FAILED);
}

static fo_code_t roll_back(fo_agent_t *a, fo_code_t code, const char *detail)
{
    set_failure(a, code, detail);
    job_model(a)->active = a->st.previous_slot;
    job_model(a)->phase = PH_ROLLED_BACK;
    return transition(a, FO_ST_ROLLING_BACK);
}

/* Run the entry action of the journaled status and journal the next one. */
static fo_code_t step(fo_agent_t *a)
{
    fo_code_t code;
    switch ((fo_status_t)a->st.status) {
    case FO_ST_DOWNLOADING:
        code = download(a);
        if (code == FO_PORT_CRASH) {
            return code;
        }
        if (code != FO_OK) {
            return fail(a, code);
        }
        report_job(a, PH_DOWNLOADED, -1, FO_OK, "");
        return transition(a, FO_ST_VERIFYING);
    case FO_ST_VERIFYING:
        code = verify(a);
        if (code == FO_PORT_CRASH) {
            return code;
        }
        if (code != FO_OK) {
            return fail(a, code);
        }
        report_job(a, PH_VERIFIED, -1, FO_OK, "");
        record_slot(a);
        return transition(a, FO_ST_STAGED);
    case FO_ST_STAGED:
        report_job(a, PH_STAGED, -1, FO_OK, "");
        /* The pointer switch: this one record save makes the new slot the active one. */
        job_model(a)->active = a->st.target_slot;
        job_model(a)->phase = PH_TRIAL;
        return transition(a, FO_ST_SWAPPED);
    case FO_ST_SWAPPED:
        report_job(a, PH_SWAPPED, -1, FO_OK, "");
        report_job(a, PH_TRIAL, -1, FO_OK, "");
        return transition(a, FO_ST_TRIAL);
    case FO_ST_TRIAL:
        code = a->ports->selftest.run(a->ports->selftest.ctx, job(a)->name.p,
                                      a->st.target_slot);
        if (code == FO_PORT_CRASH) {
            return code;
        }
        if (code != FO_OK) {
            return roll_back(a, code == FO_COMMIT_TIMEOUT ? code : FO_HEALTH_CHECK_FAILED,
                             code_detail(FO_HEALTH_CHECK_FAILED));
        }
        job_model(a)->phase = PH_COMMITTED;
        return transition(a, FO_ST_COMMITTED);
    case FO_ST_COMMITTED:
        report_job(a, PH_COMMITTED, -1, FO_OK, "");
        publish_state(a);
        return next_job(a);
    case FO_ST_ROLLING_BACK:
        return transition(a, FO_ST_ROLLED_BACK);
    case FO_ST_ROLLED_BACK:
        report_job(a, PH_ROLLED_BACK, -1, (fo_code_t)a->st.fail_code, a->st.detail);
        publish_state(a);
        return next_job(a);
    case FO_ST_FAILED:
        report_job(a, PH_FAILED, -1, (fo_code_t)a->st.fail_code, a->st.detail);
        publish_state(a);
        return next_job(a);
    case FO_ST_IDLE:
    default:
        return FO_OK;
    }
}

static int model_index(fo_agent_t *a, fo_str_t name, int create)
{
    for (unsigned i = 0; i < a->st.n_models; i++) {
        if (strlen(a->st.models[i].name) == name.len &&
            memcmp(a->st.models[i].name, name.p, name.len) == 0) {
            return (int)i;
        }
    }
    if (!create || a->st.n_models >= FLEET_OTA_MAX_LOCAL_MODELS) {
        return -1;
    }
    fo_model_state_t *m = &a->st.models[a->st.n_models];
    memset(m, 0, sizeof(*m));
    copy_str(m->name, sizeof(m->name), name);
    m->active = -1;
    return a->st.n_models++;
}

static fo_code_t start_job(fo_agent_t *a, unsigned entry)
{
    a->st.job_entry = (uint8_t)entry;
    a->st.jobs_left &= ~(1u << entry);
    a->st.job_model = (uint8_t)model_index(a, job(a)->name, 1);
    fo_model_state_t *m = job_model(a);
    a->st.previous_slot = m->active;
    a->st.target_slot = (int8_t)(m->active == 0 ? 1 : 0);
    m->slot[a->st.target_slot].verified = 0; /* about to be overwritten */
    m->phase = PH_DOWNLOADING;
    a->st.written = 0;
    a->st.fail_code = 0;
    a->st.detail[0] = 0;
    a->digest_ready = 0;
    a->progress_reported = 0;
    fo_code_t code = transition(a, FO_ST_DOWNLOADING);
    if (code == FO_OK) {
        report_job(a, PH_DOWNLOADING, 0, FO_OK, "");
    }
    return code;
}

static fo_code_t next_job(fo_agent_t *a)
{
    for (unsigned k = 0; k < FO_MAX_MODELS; k++) {
        if (a->st.jobs_left & (1u << k)) {
            return start_job(a, k);
        }
    }
    return transition(a, FO_ST_IDLE);
}

/* --- entry points ----------------------------------------------------------------- */

static void device_ctx(fo_agent_t *a, fo_device_ctx_t *ctx, fo_model_record_t *records)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->device_id = a->device_id;
    ctx->hardware = a->hardware;
    ctx->now_us = a->ports->clock.now_us(a->ports->clock.ctx, &ctx->clock_synced);
    ctx->has_last_seq = a->st.has_last_seq;
    ctx->last_seq = a->st.last_seq;
    memcpy(ctx->last_digest, a->st.last_digest, 32);
    ctx->has_trusted_time = a->st.has_trusted_time;
    ctx->last_trusted_us = a->st.last_trusted_us;
    for (unsigned i = 0; i < a->st.n_models; i++) {
        const fo_model_state_t *m = &a->st.models[i];
        memset(&records[i], 0, sizeof(records[i]));
        memcpy(records[i].name, m->name, sizeof(records[i].name));
        records[i].floor = m->floor;
        if (m->active >= 0 && m->slot[m->active].verified) {
            records[i].installed = 1;
            memcpy(records[i].installed_sha256, m->slot[m->active].sha256, 32);
        }
    }
    ctx->n_records = a->st.n_models;
    ctx->records = records;
}

fo_code_t fo_agent_on_desired(fo_agent_t *a, const uint8_t *msg, size_t len)
{
    if (a->st.status != FO_ST_IDLE) {
        return FO_CONFLICT;
    }
    fo_device_ctx_t ctx;
    device_ctx(a, &ctx, a->records);
    size_t n = len <= sizeof(a->envelope) ? len : sizeof(a->envelope);
    memcpy(a->envelope, msg, n);
    /* Over the bound: judged on the copied prefix's length, refused for its size. */
    fo_desired_evaluate(a->envelope, len <= sizeof(a->envelope) ? len : sizeof(a->envelope) + 1,
                        &a->director, &ctx, &a->work, &a->decision);
    fo_decision_t *d = &a->decision;
    if (d->outcome == FO_IGNORED) {
        return FO_OK;
    }
    if (d->outcome == FO_REJECTED) {
        report(a, d->seq, NULL, NULL, PH_REJECTED, -1, d->code, "");
        return d->code;
    }
    uint32_t jobs = 0;
    for (unsigned k = 0; k < d->desired.n_models; k++) {
        const fo_model_t *m = &d->desired.models[k];
        if (d->model_code[k] == FO_OK && model_index(a, m->name, 0) < 0 &&
            a->st.n_models >= FLEET_OTA_MAX_LOCAL_MODELS) {
            d->model_code[k] = FO_DISK_FULL;
        }
        if (d->model_code[k] == FO_OK) {
            jobs |= 1u << k;
        } else if (d->model_code[k] != FO_CODE_COUNT) {
            report(a, d->seq, m->rollout_id.p, m->name.p, PH_REJECTED, -1, d->model_code[k], "");
        }
    }
    /* The accepted envelope as received, then the record that points into it. */
    const fo_storage_port_t *s = &a->ports->storage;
    fo_code_t code = FO_OK;
    if (jobs != 0) {
        code = s->record_save(s->ctx, "desired", msg, len);
        if (code != FO_OK) {
            return code;
        }
    }
    a->st.has_last_seq = 1;
    a->st.last_seq = d->seq;
    memcpy(a->st.last_digest, d->digest, 32);
    if (!a->st.has_trusted_time || d->desired.issued_at_us > a->st.last_trusted_us) {
        a->st.has_trusted_time = 1;
        a->st.last_trusted_us = d->desired.issued_at_us;
    }
    a->st.job_seq = d->seq;
    a->st.jobs_left = jobs;
    if (jobs == 0) {
        code = persist(a);
        if (code == FO_OK) {
            publish_state(a);
        }
        return code;
    }
    for (unsigned k = 0; k < d->desired.n_models; k++) {
        if (jobs & (1u << k)) {
            report(a, d->seq, d->desired.models[k].rollout_id.p, d->desired.models[k].name.p,
                   PH_ACCEPTED, -1, FO_OK, "");
        }
    }
    return next_job(a);
}

fo_code_t fo_agent_run(fo_agent_t *a)
{
    while (a->st.status != FO_ST_IDLE) {
        fo_code_t code = step(a);
        if (code != FO_OK) {
            return code;
        }
    }
    return FO_OK;
}

/* Re-read the stored envelope of the job in progress (its signature again too). */
static fo_code_t reload_desired(fo_agent_t *a)
{
    const fo_storage_port_t *s = &a->ports->storage;
    size_t len = 0;
    uint8_t *payload;
    size_t payload_len;
    fo_code_t code = s->record_load(s->ctx, "desired", a->envelope, sizeof(a->envelope), &len);
    if (code == FO_OK) {
        code = fo_envelope_verify(a->envelope, len, &a->director, a->work.tokens,
                                  FLEET_OTA_MAX_TOKENS, &payload, &payload_len);
    }
    if (code == FO_OK) {
        code = fo_desired_parse(payload, payload_len, a->work.tokens, FLEET_OTA_MAX_TOKENS,
                                &a->decision.desired);
    }
    if (code == FO_OK && a->st.job_entry >= a->decision.desired.n_models) {
        code = FO_MALFORMED;
    }
    return code;
}

static fo_code_t recover(fo_agent_t *a)
{
    switch ((fo_status_t)a->st.status) {
    case FO_ST_SWAPPED:
    case FO_ST_TRIAL:
        return roll_back(a, FO_HEALTH_CHECK_FAILED,
                         "the agent restarted before the trial passed");
    default:
        return FO_OK; /* the status's entry action runs again */
    }
}

fo_code_t fo_agent_start(fo_agent_t *a, const fo_ports_t *ports, const char *device_id,
                         const char *hardware, const char *director_pem, size_t pem_len)
{
    memset(a, 0, sizeof(*a));
    mbedtls_sha256_init(&a->sha);
    a->ports = ports;
    a->agent_version = "fleet-ota-c/0.1.0";
    snprintf(a->device_id, sizeof(a->device_id), "%s", device_id);
    snprintf(a->hardware, sizeof(a->hardware), "%s", hardware);
    fo_code_t code = fo_key_from_pem(director_pem, pem_len, &a->director);
    if (code == FO_OK) {
        code = load_persisted(a);
    }
    if (code != FO_OK) {
        return code;
    }
    uint8_t seed[8] = {0};
    if (ports->clock.random != NULL) {
        ports->clock.random(ports->clock.ctx, seed, sizeof(seed));
    }
    (void)fo_outbox_load(&a->outbox, &ports->storage, seed, a->io);
    if (ports->clock.random == NULL) {
        /* No random source: the epoch differs from every earlier boot that kept an
         * event, since the newest record's order grows with each one. */
        uint64_t mix = fnv1a(a->device_id, strlen(a->device_id)) ^
                       (a->outbox.order * 0x9E3779B97F4A7C15ULL);
        for (int i = 0; i < 8; i++) {
            a->outbox.epoch[i] = (uint8_t)(mix >> (8 * i));
        }
    }
    if (a->st.status != FO_ST_IDLE) {
        code = reload_desired(a);
        if (code != FO_OK) {
            /* The job's envelope is gone or no longer verifies (a corrupted record, a
             * rotated director key): give the job up. A swap whose trial had not passed
             * is undone as recover() would; otherwise the active slot never changed. */
            fo_model_state_t *m = &a->st.models[a->st.job_model];
            fo_status_t status = (fo_status_t)a->st.status;
            if (status == FO_ST_SWAPPED || status == FO_ST_TRIAL ||
                status == FO_ST_ROLLING_BACK ||
                (m->active >= 0 && !m->slot[m->active].verified)) {
                m->active = a->st.previous_slot;
            }
            a->st.jobs_left = 0;
            return transition(a, FO_ST_IDLE);
        }
        code = recover(a);
        if (code != FO_OK) {
            return code;
        }
    }
    jw_t w = {a->out, sizeof(a->out), 0};
    jw_raw(&w, "{\"v\":1,\"status\":\"online\"}");
    publish(a, "status", &w);
    publish_state(a);
    return FO_OK;
}

int fo_agent_active_slot(const fo_agent_t *a, const char *model, const fo_slot_info_t **info)
{
    for (unsigned i = 0; i < a->st.n_models; i++) {
        const fo_model_state_t *m = &a->st.models[i];
        if (strcmp(m->name, model) == 0 && m->active >= 0 && m->slot[m->active].verified) {
            if (info != NULL) {
                *info = &m->slot[m->active];
            }
            return m->active;
        }
    }
    return -1;
}

fo_code_t fo_agent_telemetry(fo_agent_t *a, const char *model, const char *const *names,
                             const double *values, size_t n)
{
    const fo_slot_info_t *info;
    if (fo_agent_active_slot(a, model, &info) < 0) {
        return FO_UNKNOWN_MODEL;
    }
    if (n < 1 || n > 32) {
        return FO_MALFORMED;
    }
    char ts[28], num[40];
    jw_t w = {a->out, sizeof(a->out), 0};
    now_text(a, ts);
    jw_raw(&w, "{\"v\":1,\"samples\":[{\"model\":");
    jw_str(&w, model);
    jw_raw(&w, ",\"version\":");
    jw_str(&w, info->version);
    jw_raw(&w, ",\"rollout_id\":");
    jw_str_or_null(&w, info->rollout_id);
    jw_raw(&w, ",\"arm\":");
    jw_str_or_null(&w, info->arm);
    jw_raw(&w, ",\"metrics\":{");
    for (size_t i = 0; i < n; i++) {
        /* [A-Za-z_][A-Za-z0-9_]{0,63}, as the bridge requires of a metric name */
        size_t len = strlen(names[i]);
        int ok = len >= 1 && len <= 64 && !(names[i][0] >= '0' && names[i][0] <= '9');
        for (size_t k = 0; ok && k < len; k++) {
            char c = names[i][k];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_';
        }
        if (!ok) {
            return FO_MALFORMED;
        }
        if (!(values[i] == values[i]) || values[i] > 1.7976931348623157e308 ||
            values[i] < -1.7976931348623157e308) {
            return FO_MALFORMED; /* NaN or infinite: not JSON */
        }
        jw_raw(&w, i ? "," : "");
        jw_str(&w, names[i]);
        snprintf(num, sizeof(num), ":%.17g", values[i]);
        jw_raw(&w, num);
    }
    jw_raw(&w, "},\"ts\":");
    jw_str(&w, ts);
    jw_raw(&w, "}]");
    size_t without_id = w.len;
    char id[33];
    fo_outbox_take_id(&a->outbox, id);
    jw_raw(&w, ",\"batch_id\":");
    jw_str(&w, id);
    jw_raw(&w, "}");
    if (w.len >= w.cap ||
        fo_batches_add(&a->batches, id, w.p, w.len,
                       a->ports->clock.now_us(a->ports->clock.ctx, &(int){0})) != FO_OK) {
        /* Too long to keep: sent once without an id (stored, never confirmed). */
        w.len = without_id;
        jw_raw(&w, "}");
        if (w.len >= w.cap) {
            return FO_PAYLOAD_TOO_LARGE;
        }
    }
    publish(a, "telemetry", &w);
    return FO_OK;
}

size_t fo_agent_telemetry_unconfirmed(const fo_agent_t *a)
{
    return fo_batches_pending(&a->batches);
}

uint32_t fo_agent_telemetry_dropped(const fo_agent_t *a)
{
    return a->batches.dropped;
}

void fo_agent_on_acks(fo_agent_t *a, const uint8_t *msg, size_t len)
{
    (void)fo_outbox_on_acks(&a->outbox, &a->ports->storage, msg, len, a->work.tokens,
                            FLEET_OTA_MAX_TOKENS, a->io);
    (void)fo_batches_on_acks(&a->batches, msg, len, a->work.tokens, FLEET_OTA_MAX_TOKENS);
}

void fo_agent_poll(fo_agent_t *a)
{
    int synced = 0;
    int64_t now = a->ports->clock.now_us(a->ports->clock.ctx, &synced);
    fo_outbox_resend_due(&a->outbox, &a->ports->storage, &a->ports->mqtt, now, a->io);
    fo_batches_resend_due(&a->batches, &a->ports->mqtt, now);
}

void fo_agent_on_connected(fo_agent_t *a)
{
    int synced = 0;
    int64_t now = a->ports->clock.now_us(a->ports->clock.ctx, &synced);
    fo_outbox_on_connected(&a->outbox, now);
    fo_batches_on_connected(&a->batches, now);
}

size_t fo_agent_unconfirmed(const fo_agent_t *a)
{
    return fo_outbox_pending(&a->outbox);
}
