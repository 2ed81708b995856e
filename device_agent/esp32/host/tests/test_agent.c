/* The update agent over the posix storage port (files), a fake HTTP server and a fake
 * MQTT link, with envelopes signed by the director's code (tests/vectors/update.json):
 * install, update, self-test failure and rollback, wrong/short/long downloads, and a
 * power cut at every storage, download and self-test call followed by a restart, after
 * which the device must converge with a verified model active. Every published payload
 * is appended to the file named by the third argument, for test_esp32_ctest.py to parse
 * with the Python protocol module. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fleet_ota/agent.h"
#include "fleet_ota/enroll.h"
#include "fleet_ota/text.h"
#include "posix_storage.h"
#include "../../components/fleet_ota/src/sha256_compat.h"

#define LENGTH 150000

static int failures;
#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                       \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* --- the fixture file ------------------------------------------------------------------ */

static fo_json_doc_t doc;
static fo_json_tok_t doc_tokens[256];
static uint8_t doc_text[32768];
static char pem[1024], device_id[80], hardware[80];
static int64_t now_us;

static char *str(long i, char *out, size_t cap)
{
    if (i < 0 || fo_json_unescape(&doc, (size_t)i, (uint8_t *)out, cap) < 0) {
        fprintf(stderr, "bad fixture\n");
        exit(2);
    }
    return out;
}

static size_t envelope(const char *name, uint8_t *out, size_t cap)
{
    long e = fo_json_member(&doc, (size_t)fo_json_member(&doc, 0, "envelopes"), name);
    size_t len;
    str(e, (char *)out, cap);
    if (fo_b64_decode(out, strlen((char *)out), out, &len) != FO_OK) {
        exit(2);
    }
    return len;
}

/* --- fake ports --------------------------------------------------------------------- */

static long crash_at = -1; /* the call that loses power, counting from 0; -1: never */
static long calls;
static int powered_off;
static int selftest_fails;
static int selftest_cuts_power;
static uint64_t last_offset;
static int resumed;
static int transfer_failures; /* the next GETs that fail after 70 000 bytes */
static unsigned sleeps;
static FILE *published;
static char last_event[2048];
static unsigned n_events;
static char last_telemetry[2048];
static unsigned n_telemetry;
static fo_storage_port_t real;

static int power_cut(void)
{
    if (powered_off || (crash_at >= 0 && calls++ == crash_at)) {
        powered_off = 1;
        return 1;
    }
    return 0;
}

static fo_code_t c_open(void *ctx, const char *m, int slot, uint64_t off, uint64_t len)
{
    return power_cut() ? FO_PORT_CRASH : real.slot_open(ctx, m, slot, off, len);
}
static fo_code_t c_write(void *ctx, const uint8_t *d, size_t n)
{
    return power_cut() ? FO_PORT_CRASH : real.slot_write(ctx, d, n);
}
static fo_code_t c_close(void *ctx)
{
    return power_cut() ? FO_PORT_CRASH : real.slot_close(ctx);
}
static fo_code_t c_read(void *ctx, const char *m, int slot, uint64_t off, uint8_t *b, size_t n)
{
    return power_cut() ? FO_PORT_CRASH : real.slot_read(ctx, m, slot, off, b, n);
}
static fo_code_t c_load(void *ctx, const char *name, uint8_t *b, size_t cap, size_t *len)
{
    return real.record_load(ctx, name, b, cap, len);
}
static fo_code_t c_save(void *ctx, const char *name, const uint8_t *b, size_t len)
{
    return power_cut() ? FO_PORT_CRASH : real.record_save(ctx, name, b, len);
}

static uint8_t pattern(int seed, uint64_t i)
{
    return (uint8_t)((i * (uint64_t)(2 * seed + 1) + (uint64_t)seed) % 251);
}

static fo_code_t http_get(void *ctx, const char *url, uint64_t offset, fo_sink_t sink,
                          void *sink_ctx)
{
    (void)ctx;
    int seed;
    unsigned long len;
    const char *q = strchr(url, '?');
    if (q == NULL || sscanf(q, "?seed=%d&len=%lu", &seed, &len) != 2) {
        return FO_DOWNLOAD_FAILED;
    }
    last_offset = offset;
    resumed |= offset > 0;
    static uint8_t chunk[4096]; /* static: the port's buffer is not the core's stack */
    for (uint64_t i = offset; i < len;) {
        size_t n = len - i < sizeof(chunk) ? (size_t)(len - i) : sizeof(chunk);
        for (size_t k = 0; k < n; k++) {
            chunk[k] = pattern(seed, i + k);
        }
        if (power_cut()) {
            return FO_PORT_CRASH;
        }
        fo_code_t code = sink(sink_ctx, chunk, n);
        if (code != FO_OK) {
            return code;
        }
        i += n;
        if (transfer_failures > 0 && i >= 70000 && i - n < 70000) {
            transfer_failures--;
            return FO_DOWNLOAD_FAILED; /* the connection drops */
        }
    }
    return FO_OK;
}

static fo_code_t publish(void *ctx, const char *channel, const uint8_t *p, size_t len)
{
    (void)ctx;
    if (published != NULL) {
        fprintf(published, "%s %.*s\n", channel, (int)len, (const char *)p);
    }
    if (strcmp(channel, "events") == 0 && len < sizeof(last_event)) {
        memcpy(last_event, p, len);
        last_event[len] = 0;
        n_events++;
    }
    if (strcmp(channel, "telemetry") == 0 && len < sizeof(last_telemetry)) {
        memcpy(last_telemetry, p, len);
        last_telemetry[len] = 0;
        n_telemetry++;
    }
    return FO_OK;
}

static int64_t clock_now(void *ctx, int *synced)
{
    (void)ctx;
    *synced = 1;
    return now_us;
}

static void sleep_ms(void *ctx, unsigned ms)
{
    (void)ctx;
    (void)ms;
    sleeps++;
}

static fo_code_t selftest(void *ctx, const char *model, int slot)
{
    (void)ctx;
    (void)model;
    (void)slot;
    if (selftest_cuts_power) {
        powered_off = 1;
    }
    if (power_cut()) {
        return FO_PORT_CRASH;
    }
    return selftest_fails ? FO_HEALTH_CHECK_FAILED : FO_OK;
}

static fo_posix_storage_t storage;
static fo_ports_t ports;
static fo_agent_t agent;
static uint8_t msg[FLEET_OTA_MAX_ENVELOPE];

static void boot(const char *dir)
{
    fo_posix_storage_init(&storage, dir, 1 << 20, &real);
    storage.no_sync = 1; /* power cuts are simulated by the wrappers below */
    ports.storage = real;
    ports.storage.slot_open = c_open;
    ports.storage.slot_write = c_write;
    ports.storage.slot_close = c_close;
    ports.storage.slot_read = c_read;
    ports.storage.record_load = c_load;
    ports.storage.record_save = c_save;
    ports.http.get = http_get;
    ports.mqtt.publish = publish;
    ports.clock.now_us = clock_now;
    ports.clock.sleep_ms = sleep_ms;
    ports.selftest.run = selftest;
    powered_off = 0;
    calls = 0;
}

static fo_code_t start(void)
{
    fo_code_t code = fo_agent_start(&agent, &ports, device_id, hardware, pem, strlen(pem));
    if (code == FO_OK) {
        code = fo_agent_run(&agent); /* what a restart interrupted */
    }
    return code;
}

/* Deliver the retained desired state and run what it asks; FO_OK, a code or a crash. */
static fo_code_t deliver(const char *name)
{
    size_t len = envelope(name, msg, sizeof(msg));
    fo_code_t code = fo_agent_on_desired(&agent, msg, len);
    if (code == FO_PORT_CRASH) {
        return code;
    }
    fo_code_t run = fo_agent_run(&agent);
    return run != FO_OK ? run : code;
}

/* The active slot of kws holds exactly the bytes its record says it verified. */
static int active_is_sound(const char *dir, const char **version)
{
    const fo_slot_info_t *info;
    int slot = fo_agent_active_slot(&agent, "kws", &info);
    *version = NULL;
    if (slot < 0) {
        return 1;
    }
    char path[700];
    snprintf(path, sizeof(path), "%s/slots/kws.%c", dir, slot == 0 ? 'a' : 'b');
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return 0;
    }
    mbedtls_sha256_context sha;
    uint8_t buf[4096], digest[32];
    size_t n, total = 0;
    mbedtls_sha256_init(&sha);
    fo_sha256_starts(&sha);
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        fo_sha256_update(&sha, buf, n);
        total += n;
    }
    fclose(f);
    fo_sha256_finish(&sha, digest);
    mbedtls_sha256_free(&sha);
    *version = info->version;
    return total == info->length && memcmp(digest, info->sha256, 32) == 0;
}

static void fresh_dir(char *dir, size_t cap, const char *base, const char *name)
{
    static const char *const files[] = {"state.rec", "desired.rec", "slots/kws.a",
                                         "slots/kws.b"};
    char path[800];
    snprintf(dir, cap, "%s/%s", base, name);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path); /* what an earlier run of this test left */
    }
    for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
        snprintf(path, sizeof(path), "%s/ev%u.rec", dir, i);
        unlink(path);
    }
}

static int event_has(const char *text)
{
    return strstr(last_event, text) != NULL;
}

/* Telemetry is kept until `acks` names its batch_id, published again byte for byte, and
 * the oldest dropped (and counted) when all FLEET_OTA_TELEMETRY_QUEUE slots wait. */
static void test_telemetry_delivery(void)
{
    static char first[2048], acks[512];
    char id[33];
    const char *names[] = {"latency_ms"};
    double value = 1.0;
    CHECK(fo_agent_telemetry_unconfirmed(&agent) == 1); /* the one just sent */
    memcpy(first, last_telemetry, sizeof(first));
    const char *at = strstr(first, "\"batch_id\":\"");
    CHECK(at != NULL && strlen(at) == 12 + 32 + 2); /* the last key */
    if (at == NULL) {
        return;
    }
    memcpy(id, at + 12, 32);
    id[32] = 0;
    /* Not due yet: nothing; then the same bytes again, the next after 10 s. */
    unsigned before = n_telemetry;
    fo_agent_poll(&agent);
    CHECK(n_telemetry == before);
    now_us += FO_RESEND_FIRST_US;
    fo_agent_poll(&agent);
    CHECK(n_telemetry == before + 1 && strcmp(last_telemetry, first) == 0);
    now_us += FO_RESEND_FIRST_US;
    fo_agent_poll(&agent);
    CHECK(n_telemetry == before + 1);
    /* An event id that happens to match confirms no telemetry; the batch id does. */
    size_t len = (size_t)snprintf(acks, sizeof(acks), "{\"v\":1,\"event_ids\":[\"%s\"]}", id);
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_telemetry_unconfirmed(&agent) == 1);
    len = (size_t)snprintf(acks, sizeof(acks), "{\"v\":1,\"batch_ids\":[\"%s\"]}", id);
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_telemetry_unconfirmed(&agent) == 0);
    now_us += FO_RESEND_MAX_US;
    before = n_telemetry;
    fo_agent_poll(&agent);
    CHECK(n_telemetry == before);

    /* A server that never confirms: the newest FLEET_OTA_TELEMETRY_QUEUE are kept. */
    uint32_t dropped = fo_agent_telemetry_dropped(&agent);
    for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE + 2; i++) {
        value = (double)i;
        CHECK(fo_agent_telemetry(&agent, "kws", names, &value, 1) == FO_OK);
    }
    CHECK(fo_agent_telemetry_unconfirmed(&agent) == FLEET_OTA_TELEMETRY_QUEUE);
    CHECK(fo_agent_telemetry_dropped(&agent) == dropped + 2);
    /* After a reconnection all of them go within the first delay, ids all different, and
     * the two oldest (values 0 and 1) are not among them. */
    fo_agent_on_connected(&agent);
    now_us += FO_RESEND_FIRST_US;
    before = n_telemetry;
    fo_agent_poll(&agent);
    CHECK(n_telemetry == before + FLEET_OTA_TELEMETRY_QUEUE);
    for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
        const fo_batch_slot_t *s = &agent.batches.slot[i];
        CHECK(s->pending && strstr(s->text, "\"latency_ms\":0}") == NULL &&
              strstr(s->text, "\"latency_ms\":1}") == NULL);
        for (unsigned k = i + 1; k < FLEET_OTA_TELEMETRY_QUEUE; k++) {
            CHECK(strcmp(s->id, agent.batches.slot[k].id) != 0);
        }
    }
    /* One acks message confirms them all; a restart forgets telemetry (RAM only). */
    len = (size_t)snprintf(acks, sizeof(acks), "{\"v\":1,\"batch_ids\":[");
    for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
        len += (size_t)snprintf(acks + len, sizeof(acks) - len, "%s\"%s\"", i ? "," : "",
                                agent.batches.slot[i].id);
    }
    len += (size_t)snprintf(acks + len, sizeof(acks) - len, "]}");
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_telemetry_unconfirmed(&agent) == 0);
}

static void test_install_update_rollback(const char *base)
{
    char dir[600];
    const char *version;
    fresh_dir(dir, sizeof(dir), base, "flow");
    crash_at = -1;
    selftest_fails = 0;
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(fo_agent_active_slot(&agent, "kws", NULL) == -1);

    CHECK(deliver("install") == FO_OK);
    CHECK(event_has("\"phase\":\"committed\""));
    CHECK(fo_agent_active_slot(&agent, "kws", NULL) == 0);
    CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);

    /* The retained copy again: ignored, no event. */
    unsigned before = n_events;
    CHECK(deliver("install") == FO_OK);
    CHECK(n_events == before);

    /* The update's self-test fails: rolled back to 1.4.0 in slot a. */
    selftest_fails = 1;
    CHECK(deliver("update") == FO_OK);
    CHECK(event_has("\"phase\":\"rolled_back\"") && event_has("health_check_failed"));
    CHECK(fo_agent_active_slot(&agent, "kws", NULL) == 0);
    CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);

    /* Downloads that do not match: failed, the model kept. */
    selftest_fails = 0;
    const char *bad[] = {"wrong_bytes", "truncated", "overlong"};
    const char *codes[] = {"hash_mismatch", "hash_mismatch", "length_exceeded"};
    for (int k = 0; k < 3; k++) {
        CHECK(deliver(bad[k]) == FO_OK);
        CHECK(event_has("\"phase\":\"failed\"") && event_has(codes[k]));
        CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);
    }

    /* A restart reports the same and the application keeps 1.4.0; telemetry is tagged. */
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);
    const char *names[] = {"latency_ms", "confidence"};
    const double values[] = {12.5, 0.93};
    CHECK(fo_agent_telemetry(&agent, "kws", names, values, 2) == FO_OK);
    CHECK(fo_agent_telemetry(&agent, "vad", names, values, 2) == FO_UNKNOWN_MODEL);
    const char *bad_names[] = {"latency ms"};
    CHECK(fo_agent_telemetry(&agent, "kws", bad_names, values, 1) == FO_MALFORMED);
    test_telemetry_delivery();

    /* Power lost during the update's trial, and the stored desired state lost too: the
     * restart cannot resume the job, and must not keep the untried slot active. */
    selftest_cuts_power = 1;
    CHECK(deliver("update_again") == FO_PORT_CRASH);
    selftest_cuts_power = 0;
    char desired_rec[700];
    snprintf(desired_rec, sizeof(desired_rec), "%s/desired.rec", dir);
    CHECK(unlink(desired_rec) == 0);
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(agent.st.status == FO_ST_IDLE);
    CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);
}

static void test_retries(const char *base)
{
    char dir[600];
    const char *version;
    fresh_dir(dir, sizeof(dir), base, "retry");
    crash_at = -1;
    selftest_fails = 0;
    boot(dir);
    CHECK(start() == FO_OK);
    /* The connection drops twice: retried from the 64 KiB checkpoint, then committed. */
    transfer_failures = 2;
    sleeps = 0;
    resumed = 0;
    CHECK(deliver("install") == FO_OK);
    CHECK(event_has("\"phase\":\"committed\""));
    CHECK(sleeps == 2 && resumed && last_offset == 65536);
    CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);
    /* It drops on every attempt: failed with download_failed, 1.4.0 kept. */
    transfer_failures = FLEET_OTA_DOWNLOAD_ATTEMPTS;
    CHECK(deliver("update") == FO_OK);
    CHECK(event_has("\"phase\":\"failed\"") && event_has("download_failed"));
    CHECK(transfer_failures == 0);
    CHECK(active_is_sound(dir, &version) && version && strcmp(version, "1.4.0") == 0);
    resumed = 0;
}

/* The event ids of the events now pending, as an `acks` payload naming them all. */
static size_t acks_for_all(char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "{\"v\":1,\"batch_ids\":[\"%032d\"],\"event_ids\":[", 0);
    const char *sep = "";
    for (uint32_t i = 0; i < FLEET_OTA_EVENT_QUEUE && n < cap; i++) {
        if (agent.outbox.slot[i].pending) {
            n += (size_t)snprintf(out + n, cap - n, "%s\"%s\"", sep, agent.outbox.slot[i].id);
            sep = ",";
        }
    }
    n += (size_t)snprintf(out + n, cap - n, "]}");
    return n;
}

static void test_event_delivery(const char *base)
{
    char dir[600], acks[4096];
    fresh_dir(dir, sizeof(dir), base, "events");
    crash_at = -1;
    selftest_fails = 0;
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(deliver("install") == FO_OK);
    /* accepted, downloading 0/25/50/75, downloaded, verified, staged, swapped, trial,
     * committed: each kept with its id until confirmed */
    size_t pending = fo_agent_unconfirmed(&agent);
    CHECK(pending == 11);
    CHECK(event_has("\"event_id\":\"") && strstr(last_event, agent.outbox.slot[pending - 1].id));
    CHECK(agent.outbox.slot[0].pending && agent.outbox.slot[pending].order == 0);

    /* Nothing is due before 5 s; then each pending event goes once more. */
    unsigned before = n_events;
    fo_agent_poll(&agent);
    CHECK(n_events == before);
    now_us += 5000000;
    fo_agent_poll(&agent);
    CHECK(n_events == before + pending);
    now_us += 5000000; /* the second resend waits 10 s */
    fo_agent_poll(&agent);
    CHECK(n_events == before + pending);

    /* Malformed acks are ignored whole. */
    const char *bad[] = {
        "{\"v\":1}",
        "{\"v\":2,\"event_ids\":[\"00000000000000000000000000000000\"]}",
        "{\"v\":1,\"event_ids\":[]}",
        "{\"v\":1,\"event_ids\":[\"0000000000000000000000000000000G\"]}",
        "{\"v\":1,\"event_ids\":[\"00\"],\"x\":1}",
        "not json",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fo_agent_on_acks(&agent, (const uint8_t *)bad[i], strlen(bad[i]));
    }
    CHECK(fo_agent_unconfirmed(&agent) == pending);
    char first[33];
    memcpy(first, agent.outbox.slot[0].id, sizeof(first));
    size_t len = (size_t)snprintf(acks, sizeof(acks), "{\"v\":1,\"event_ids\":[\"%s\"]}", first);
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_unconfirmed(&agent) == pending - 1);
    CHECK(!agent.outbox.slot[0].pending);

    /* A restart keeps the unconfirmed ones and sends them at once (the ids unchanged);
     * this boot's ids differ from the last one's. */
    char last_id[33];
    memcpy(last_id, agent.outbox.slot[pending - 1].id, sizeof(last_id));
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(fo_agent_unconfirmed(&agent) == pending - 1);
    CHECK(!agent.outbox.slot[0].pending && strcmp(agent.outbox.slot[pending - 1].id, last_id) == 0);
    char next_id[33];
    fo_outbox_next_id(&agent.outbox, next_id);
    CHECK(memcmp(next_id, last_id, 16) != 0);
    before = n_events;
    fo_agent_poll(&agent);
    CHECK(n_events == before + pending - 1);
    len = acks_for_all(acks, sizeof(acks));
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_unconfirmed(&agent) == 0);
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(fo_agent_unconfirmed(&agent) == 0);

    /* A server that never confirms: at most FLEET_OTA_EVENT_QUEUE are kept, the newest. */
    selftest_fails = 1;
    CHECK(deliver("update") == FO_OK);
    CHECK(deliver("update_again") == FO_OK);
    CHECK(fo_agent_unconfirmed(&agent) == FLEET_OTA_EVENT_QUEUE);
    /* Ids are unique. */
    for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
        for (unsigned k = i + 1; k < FLEET_OTA_EVENT_QUEUE; k++) {
            CHECK(strcmp(agent.outbox.slot[i].id, agent.outbox.slot[k].id) != 0);
        }
    }
    /* After a reconnection everything pending goes within the first delay. */
    fo_agent_on_connected(&agent);
    now_us += 5000000;
    before = n_events;
    fo_agent_poll(&agent);
    CHECK(n_events == before + FLEET_OTA_EVENT_QUEUE);
    selftest_fails = 0;
}

/* Install then update, losing power at call `k`; restart (the broker redelivers the
 * retained desired state) until done. Returns whether the power cut happened. */
static int crash_run(const char *base, long k, int fail_selftest)
{
    char dir[600], name[64];
    const char *version;
    snprintf(name, sizeof(name), "crash-%d-%ld", fail_selftest, k);
    fresh_dir(dir, sizeof(dir), base, name);
    FILE *saved = published;
    published = NULL;
    selftest_fails = 0;
    crash_at = -1;
    boot(dir);
    CHECK(start() == FO_OK);
    CHECK(deliver("install") == FO_OK);
    selftest_fails = fail_selftest;
    crash_at = k;
    calls = 0;
    fo_code_t code = deliver("update");
    int crashed = powered_off;
    CHECK(crashed ? code == FO_PORT_CRASH : code == FO_OK);
    crash_at = -1;
    boot(dir);
    code = start();
    CHECK(code == FO_OK);
    CHECK(deliver("update") == FO_OK); /* the retained copy after the reconnect */
    CHECK(agent.st.status == FO_ST_IDLE);
    int sound = active_is_sound(dir, &version);
    CHECK(sound);
    if (sound) {
        /* A cut before the swap resumes to 1.5.0 (or 1.4.0 when its trial fails); one
         * after the swap rolls back to 1.4.0. Never anything unverified. */
        CHECK(version != NULL &&
              (strcmp(version, "1.4.0") == 0 || (!fail_selftest && strcmp(version, "1.5.0") == 0)));
    }
    published = saved;
    return crashed;
}

#ifdef FLEET_OTA_MEASURE
/* Peak heap and stack of one install and one update (docs: device_agent/esp32/README.md).
 * Heap: every malloc/calloc/realloc/free of the process goes through these counters
 * (mbedTLS's bignums are the only allocations on the update path). Stack: the update
 * runs on a thread whose stack is filled with a pattern first; the untouched part is
 * what it did not use. */
#include <pthread.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static size_t heap_now, heap_peak, heap_allocs;
static int counting;

#define HDR 16
static void *track(void *p, size_t n)
{
    if (p == NULL) {
        return NULL;
    }
    *(size_t *)p = n;
    if (counting) {
        heap_now += n;
        heap_allocs++;
        if (heap_now > heap_peak) {
            heap_peak = heap_now;
        }
    }
    return (char *)p + HDR;
}

static size_t untrack(void *p)
{
    size_t n = *(size_t *)((char *)p - HDR);
    if (counting && heap_now >= n) {
        heap_now -= n;
    }
    return n;
}

void *malloc(size_t n)
{
    return track(__libc_malloc(n + HDR), n);
}

void *calloc(size_t k, size_t n)
{
    return track(__libc_calloc(1, k * n + HDR), k * n);
}

void free(void *p)
{
    if (p != NULL) {
        untrack(p);
        __libc_free((char *)p - HDR);
    }
}

void *realloc(void *p, size_t n)
{
    if (p == NULL) {
        return malloc(n);
    }
    size_t old = untrack(p);
    void *q = __libc_realloc((char *)p - HDR, n + HDR);
    if (q == NULL) {
        heap_now += counting ? old : 0;
        return NULL;
    }
    return track(q, n);
}

#define STACK_SIZE (256 * 1024)
static const char *measure_dir;

static void *update_thread(void *arg)
{
    (void)arg;
    static char acks[4096];
    counting = 1;
    CHECK(deliver("install") == FO_OK);
    CHECK(deliver("update") == FO_OK);
    /* the events sent again, then confirmed */
    now_us += FO_RESEND_FIRST_US;
    fo_agent_poll(&agent);
    size_t len = acks_for_all(acks, sizeof(acks));
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_unconfirmed(&agent) == 0);
    /* a telemetry message, sent again, then confirmed */
    const char *names[] = {"latency_ms"};
    const double value = 12.5;
    CHECK(fo_agent_telemetry(&agent, "kws", names, &value, 1) == FO_OK);
    now_us += FO_RESEND_FIRST_US;
    fo_agent_poll(&agent);
    len = (size_t)snprintf(acks, sizeof(acks), "{\"v\":1,\"batch_ids\":[\"%s\"]}",
                           agent.batches.slot[0].id);
    fo_agent_on_acks(&agent, (const uint8_t *)acks, len);
    CHECK(fo_agent_telemetry_unconfirmed(&agent) == 0);
    counting = 0;
    return NULL;
}

/* Enrollment up to the server's answer (a refused token): the key, the CSR, the request. */
static fo_code_t refuse(void *ctx, const char *url, const char *body, size_t len, uint8_t *out,
                        size_t cap, size_t *out_len, int *status)
{
    static const char answer[] = "{\"error\":{\"code\":\"unauthorized\",\"detail\":\"x\"}}";
    (void)ctx;
    (void)len;
    (void)cap;
    CHECK(strstr(url, "/api/v1/enroll") != NULL);
    CHECK(strstr(body, "-----BEGIN CERTIFICATE REQUEST-----\\n") != NULL);
    memcpy(out, answer, sizeof(answer));
    *out_len = sizeof(answer) - 1;
    *status = 401;
    return FO_OK;
}

static size_t enroll_heap;

static void *enroll_thread(void *arg)
{
    (void)arg;
    static fo_enroll_t enrollment;
    fo_http_port_t http = {NULL, refuse, NULL};
    size_t before = heap_now;
    heap_peak = heap_now;
    counting = 1;
    fo_code_t code = fo_enroll(&enrollment, &http, &ports.storage, "http://127.0.0.1:9/",
                               "token", device_id, hardware, "fleet-ota-c/0.1.0");
    counting = 0;
    enroll_heap = heap_peak - before;
    CHECK(code == FO_UNAUTHORIZED);
    CHECK(strstr(enrollment.detail, "HTTP 401") != NULL);
    return NULL;
}

static void *verify_thread(void *arg)
{
    (void)arg;
    static fo_work_t work;
    static fo_decision_t decision;
    fo_device_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.device_id = device_id;
    ctx.hardware = hardware;
    ctx.clock_synced = 1;
    ctx.now_us = now_us;
    size_t len = envelope("install", msg, sizeof(msg));
    fo_desired_evaluate(msg, len, &agent.director, &ctx, &work, &decision);
    CHECK(decision.outcome == FO_ACCEPTED);
    return NULL;
}

static void *empty_thread(void *arg)
{
    return arg;
}

static uint8_t stack[STACK_SIZE] __attribute__((aligned(64)));

/* Stack bytes a thread running `fn` touched (glibc keeps the thread's descriptor and TLS
 * at the top of the given stack: the caller subtracts an empty thread's figure). */
static size_t stack_touched(void *(*fn)(void *))
{
    pthread_attr_t attr;
    pthread_t thread;
    memset(stack, 0xA5, sizeof(stack));
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, stack, sizeof(stack));
    pthread_create(&thread, &attr, fn, NULL);
    pthread_join(thread, NULL);
    pthread_attr_destroy(&attr);
    size_t untouched = 0;
    while (untouched < sizeof(stack) && stack[untouched] == 0xA5) {
        untouched++;
    }
    return sizeof(stack) - untouched;
}

static int measure(const char *base)
{
    static char dir[600];
    fresh_dir(dir, sizeof(dir), base, "measure");
    measure_dir = dir;
    crash_at = -1;
    selftest_fails = 0;
    boot(dir);
    CHECK(start() == FO_OK);
    size_t baseline = stack_touched(empty_thread);
    size_t stack_used = stack_touched(update_thread) - baseline;
    size_t verify_stack = stack_touched(verify_thread) - baseline;
    size_t update_heap = heap_peak;
    size_t enroll_stack = stack_touched(enroll_thread) - baseline;
    const char *version;
    CHECK(active_is_sound(measure_dir, &version) && version && strcmp(version, "1.5.0") == 0);
    printf("measure: update (install + update, events and a telemetry message resent and confirmed, posix ports "
           "included): heap peak %zu bytes in %zu allocations, stack %zu bytes; desired-state "
           "verification alone: stack %zu bytes; fo_agent_t %zu bytes (static); enrollment "
           "(key, CSR, request, answer): heap peak %zu bytes, stack %zu bytes, fo_enroll_t "
           "%zu bytes (static)\n",
           update_heap, heap_allocs, stack_used, verify_stack, sizeof(fo_agent_t), enroll_heap,
           enroll_stack, sizeof(fo_enroll_t));
    /* The goals of issue 18: 48 KiB of heap, 8 KiB of stack for an update. */
    CHECK(update_heap <= 48 * 1024);
    CHECK(stack_used <= 8 * 1024);
    return failures == 0 ? 0 : 1;
}
#endif

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s update.json workdir published.txt\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    size_t len = f ? fread(doc_text, 1, sizeof(doc_text), f) : 0;
    if (f) {
        fclose(f);
    }
    if (fo_json_parse(doc_text, len, doc_tokens, 256, 8, &doc) != FO_OK) {
        fprintf(stderr, "%s: not an update fixture\n", argv[1]);
        return 2;
    }
    char ts[64];
    str(fo_json_member(&doc, 0, "director_key"), pem, sizeof(pem));
    str(fo_json_member(&doc, 0, "device_id"), device_id, sizeof(device_id));
    str(fo_json_member(&doc, 0, "hardware"), hardware, sizeof(hardware));
    str(fo_json_member(&doc, 0, "now"), ts, sizeof(ts));
    fo_parse_timestamp((const uint8_t *)ts, strlen(ts), &now_us);
    published = fopen(argv[3], "w");
#ifdef FLEET_OTA_MEASURE
    return measure(argv[2]);
#endif

    test_install_update_rollback(argv[2]);
    test_retries(argv[2]);
    test_event_delivery(argv[2]);

    unsigned cuts = 0;
    for (int fail_selftest = 0; fail_selftest <= 1; fail_selftest++) {
        long k = 0;
        while (crash_run(argv[2], k, fail_selftest)) {
            k++;
            cuts++;
        }
    }
    CHECK(resumed);
    CHECK(cuts > 100);
    fclose(published);
    printf("agent: %u power cuts, %d failed\n", cuts, failures);
    return failures == 0 ? 0 : 1;
}
