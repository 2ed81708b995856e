/* fleet-ota-posix: the ESP32 client's core as a Linux process (the host build's device).
 *
 *   fleet-ota-posix --dir DIR --device-id ID --hardware HW --director director.pem
 *                   --broker HOST --port N [--cafile CA --cert CRT --key KEY]
 *                   [--http-cafile CA] [--selftest CMD]
 *
 * Slots and records are files under DIR (the posix storage port). The self-test runs
 * CMD through /bin/sh with FLEET_MODEL=<name> and FLEET_MODEL_PATH=<slot file>; exit 0
 * passes. Runs until SIGTERM or SIGINT. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fleet_ota/agent.h"
#include "posix_http.h"
#include "posix_mqtt.h"
#include "posix_storage.h"

static volatile sig_atomic_t stopping;
static const char *selftest_cmd;
static const char *dir;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static int64_t now_us(void *ctx, int *synced)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *synced = 1;
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(void *ctx, unsigned ms)
{
    (void)ctx;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (!stopping && nanosleep(&ts, &ts) != 0) {
    }
}

static fo_code_t selftest(void *ctx, const char *model, int slot)
{
    (void)ctx;
    char cmd[2048];
    if (selftest_cmd == NULL) {
        return FO_OK;
    }
    snprintf(cmd, sizeof(cmd), "export FLEET_MODEL='%s' FLEET_MODEL_PATH='%s/slots/%s.%c'; %s",
             model, dir, model, slot == 0 ? 'a' : 'b', selftest_cmd);
    return system(cmd) == 0 ? FO_OK : FO_HEALTH_CHECK_FAILED;
}

static void fill_random(void *ctx, uint8_t *buf, size_t len)
{
    (void)ctx;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f != NULL) {
        if (fread(buf, 1, len, f) != len) {
            /* keep the core's clock-derived bytes */
        }
        fclose(f);
    }
}

static char *read_file(const char *path, size_t *len)
{
    static char buf[4096];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    *len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[*len] = 0;
    return buf;
}

static fo_agent_t agent;
static fo_posix_storage_t storage;
static fo_posix_http_t http = {NULL, 10, 30, 600};
static fo_posix_mqtt_t mqtt;
static uint8_t msg[FLEET_OTA_MAX_ENVELOPE + 1];
static uint8_t acks[FO_POSIX_ACKS_BYTES];

int main(int argc, char **argv)
{
    const char *device_id = NULL, *hardware = NULL, *director = NULL;
    fo_posix_mqtt_config_t broker = {"127.0.0.1", 1883, NULL, NULL, NULL};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--dir") == 0) {
            dir = v;
        } else if (strcmp(k, "--device-id") == 0) {
            device_id = v;
        } else if (strcmp(k, "--hardware") == 0) {
            hardware = v;
        } else if (strcmp(k, "--director") == 0) {
            director = v;
        } else if (strcmp(k, "--broker") == 0) {
            broker.host = v;
        } else if (strcmp(k, "--port") == 0) {
            broker.port = atoi(v);
        } else if (strcmp(k, "--cafile") == 0) {
            broker.ca_file = v;
        } else if (strcmp(k, "--cert") == 0) {
            broker.cert_file = v;
        } else if (strcmp(k, "--key") == 0) {
            broker.key_file = v;
        } else if (strcmp(k, "--http-cafile") == 0) {
            http.ca_file = v;
        } else if (strcmp(k, "--selftest") == 0) {
            selftest_cmd = v;
        } else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    size_t pem_len = 0;
    const char *pem = director ? read_file(director, &pem_len) : NULL;
    if (dir == NULL || device_id == NULL || hardware == NULL || pem == NULL) {
        fprintf(stderr, "usage: %s --dir DIR --device-id ID --hardware HW --director PEM "
                        "[--broker HOST] [--port N] [--cafile CA --cert CRT --key KEY] "
                        "[--http-cafile CA] [--selftest CMD]\n", argv[0]);
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    static fo_ports_t ports;
    ports.clock.now_us = now_us;
    ports.clock.sleep_ms = sleep_ms;
    ports.clock.random = fill_random;
    ports.selftest.run = selftest;
    if (fo_posix_storage_init(&storage, dir, 64u << 20, &ports.storage) != FO_OK ||
        fo_posix_http_init(&http, &ports.http) != FO_OK ||
        fo_posix_mqtt_start(&mqtt, device_id, &broker, &ports.mqtt) != FO_OK) {
        fprintf(stderr, "cannot set up the ports\n");
        return 1;
    }
    fo_code_t code = fo_agent_start(&agent, &ports, device_id, hardware, pem, pem_len);
    if (code == FO_OK) {
        code = fo_agent_run(&agent);
    }
    if (code != FO_OK) {
        fprintf(stderr, "start: %s\n", fo_code_name(code));
        return 1;
    }
    fprintf(stderr, "fleet-ota-posix: %s running\n", device_id);
    struct timespec tick = {0, 20 * 1000000};
    unsigned connects = 0;
    while (!stopping) {
        size_t len;
        unsigned now_connects = fo_posix_mqtt_connects(&mqtt);
        if (now_connects != connects) {
            connects = now_connects;
            fo_agent_on_connected(&agent);
        }
        while (fo_posix_mqtt_take_acks(&mqtt, acks, &len)) {
            fo_agent_on_acks(&agent, acks, len);
        }
        fo_agent_poll(&agent);
        if (!fo_posix_mqtt_take_desired(&mqtt, msg, &len)) {
            nanosleep(&tick, NULL);
            continue;
        }
        code = fo_agent_on_desired(&agent, msg, len);
        fprintf(stderr, "desired: %s\n", code == FO_OK ? "ok" : fo_code_name(code));
        code = fo_agent_run(&agent);
        if (code != FO_OK) {
            fprintf(stderr, "run: %s\n", fo_code_name(code));
        }
        /* Messages that came while a job ran were not judged: ask for the retained one. */
        fo_posix_mqtt_resubscribe(&mqtt);
    }
    fo_posix_mqtt_stop(&mqtt);
    return 0;
}
