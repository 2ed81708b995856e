/* fleet-ota-posix: the ESP32 client's core as a Linux process (the host build's device).
 *
 *   fleet-ota-posix enroll --dir DIR --server URL --token T --device-id ID --hardware HW
 *                   [--http-cafile CA]
 *   fleet-ota-posix --dir DIR --device-id ID --hardware HW [--director director.pem]
 *                   [--broker HOST --port N] [--cafile CA --cert CRT --key KEY]
 *                   [--http-cafile CA] [--selftest CMD] [--telemetry MODEL:N]
 *
 * `enroll` makes the device key and CSR and enrolls (fleet_ota/enroll.h), keeping the key,
 * certificate, CA, director key and broker URL as records in DIR. Without --director or
 * --broker the client then uses those records (with an mqtts:// broker, mutual TLS with
 * the enrolled certificate unless --cafile/--cert/--key say otherwise).
 *
 * Slots and records are files under DIR (the posix storage port). The self-test runs
 * CMD through /bin/sh with FLEET_MODEL=<name> and FLEET_MODEL_PATH=<slot file>; exit 0
 * passes. Runs until SIGTERM or SIGINT.
 *
 * For fault tests, FLEET_OTA_POSIX_KILL_AT makes the process SIGKILL itself once at an
 * update step: `downloading` (after the first download checkpoint is saved), `written`
 * (the whole download saved, before verification), `swapped` (after the swap is saved,
 * before the self-test), `selftest_passed` (the self-test passed, before the commit). */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fleet_ota/agent.h"
#include "fleet_ota/enroll.h"
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

static const char *kill_at;

static void die_at(const char *step)
{
    if (kill_at != NULL && strcmp(kill_at, step) == 0) {
        fprintf(stderr, "fleet-ota-posix: killed at %s\n", step);
        fflush(stderr);
        raise(SIGKILL);
    }
}

static fo_code_t selftest(void *ctx, const char *model, int slot)
{
    (void)ctx;
    char cmd[2048];
    fo_code_t code = FO_OK;
    if (selftest_cmd != NULL) {
        snprintf(cmd, sizeof(cmd),
                 "export FLEET_MODEL='%s' FLEET_MODEL_PATH='%s/slots/%s.%c'; %s", model, dir,
                 model, slot == 0 ? 'a' : 'b', selftest_cmd);
        code = system(cmd) == 0 ? FO_OK : FO_HEALTH_CHECK_FAILED;
    }
    if (code == FO_OK) {
        die_at("selftest_passed");
    }
    return code;
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
    if (path == NULL) {
        return NULL;
    }
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
static fo_storage_port_t real_storage;

/* The storage port, with the FLEET_OTA_POSIX_KILL_AT steps after each state save. */
static fo_code_t save_then_maybe_die(void *ctx, const char *name, const uint8_t *buf,
                                     size_t len)
{
    fo_code_t code = real_storage.record_save(ctx, name, buf, len);
    if (code == FO_OK && strcmp(name, "state") == 0) {
        if (agent.st.status == FO_ST_DOWNLOADING && agent.st.written > 0) {
            die_at("downloading");
        } else if (agent.st.status == FO_ST_VERIFYING) {
            die_at("written");
        } else if (agent.st.status == FO_ST_SWAPPED) {
            die_at("swapped");
        }
    }
    return code;
}
static fo_posix_http_t http = {NULL, 10, 30, 600};
static fo_enroll_t enrollment;
static char paths[5][320];

/* DIR/<name>.rec, the posix storage port's file for record `name`, when it exists. */
static const char *record_path(int k, const char *name)
{
    snprintf(paths[k], sizeof(paths[k]), "%s/%s.rec", dir, name);
    FILE *f = fopen(paths[k], "rb");
    if (f == NULL) {
        return NULL;
    }
    fclose(f);
    return paths[k];
}

/* mqtt[s]://host[:port] from the enrollment, as the Python agent's parse_broker_url. */
static int parse_broker(char *url, fo_posix_mqtt_config_t *broker, int *tls)
{
    char *host;
    if (strncmp(url, "mqtts://", 8) == 0) {
        *tls = 1;
        host = url + 8;
        broker->port = 8883;
    } else if (strncmp(url, "mqtt://", 7) == 0) {
        *tls = 0;
        host = url + 7;
        broker->port = 1883;
    } else {
        return 0;
    }
    host[strcspn(host, "/\r\n")] = 0;
    char *colon = strrchr(host, ':');
    if (colon != NULL) {
        *colon = 0;
        broker->port = atoi(colon + 1);
    }
    broker->host = host;
    return *host != 0 && broker->port > 0 && broker->port < 65536;
}

static int enroll_main(int argc, char **argv)
{
    const char *server = NULL, *token = NULL, *device_id = NULL, *hardware = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--dir") == 0) {
            dir = v;
        } else if (strcmp(k, "--server") == 0) {
            server = v;
        } else if (strcmp(k, "--token") == 0) {
            token = v;
        } else if (strcmp(k, "--device-id") == 0) {
            device_id = v;
        } else if (strcmp(k, "--hardware") == 0) {
            hardware = v;
        } else if (strcmp(k, "--http-cafile") == 0) {
            http.ca_file = v;
        } else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (dir == NULL || server == NULL || token == NULL || device_id == NULL || hardware == NULL) {
        fprintf(stderr, "usage: %s enroll --dir DIR --server URL --token T --device-id ID "
                        "--hardware HW [--http-cafile CA]\n", argv[0]);
        return 2;
    }
    fo_storage_port_t store;
    fo_http_port_t port;
    if (fo_posix_storage_init(&storage, dir, 64u << 20, &store) != FO_OK ||
        fo_posix_http_init(&http, &port) != FO_OK) {
        fprintf(stderr, "cannot set up the ports\n");
        return 1;
    }
    if (record_path(0, "cert") != NULL) {
        fprintf(stderr, "conflict: %s is already enrolled\n", dir);
        return 1;
    }
    fo_code_t code = fo_enroll(&enrollment, &port, &store, server, token, device_id, hardware,
                               "fleet-ota-c/0.1.0");
    if (code != FO_OK) {
        fprintf(stderr, "enroll: %s: %s\n", fo_code_name(code), enrollment.detail);
        return 1;
    }
    printf("enrolled %s (%s) into %s\n", device_id, hardware, dir);
    return 0;
}
static fo_posix_mqtt_t mqtt;
static char telemetry_model[65];
static unsigned telemetry_wanted, telemetry_sent;
static uint8_t msg[FLEET_OTA_MAX_ENVELOPE + 1];
static uint8_t acks[FO_POSIX_ACKS_BYTES];

int main(int argc, char **argv)
{
    const char *device_id = NULL, *hardware = NULL, *director = NULL;
    fo_posix_mqtt_config_t broker = {NULL, 1883, NULL, NULL, NULL};
    if (argc > 1 && strcmp(argv[1], "enroll") == 0) {
        return enroll_main(argc, argv);
    }
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
        } else if (strcmp(k, "--telemetry") == 0) {
            /* MODEL:N: N samples (latency_ms 0..N-1) once MODEL is active, as an
             * application would report them; for the end-to-end tests. */
            const char *colon = strchr(v, ':');
            if (colon == NULL || colon == v || (size_t)(colon - v) >= sizeof(telemetry_model) ||
                atoi(colon + 1) < 1) {
                fprintf(stderr, "--telemetry wants MODEL:N\n");
                return 2;
            }
            memcpy(telemetry_model, v, (size_t)(colon - v));
            telemetry_wanted = (unsigned)atoi(colon + 1);
        } else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (dir != NULL && director == NULL) {
        director = record_path(1, "director");
    }
    int tls = 0;
    if (dir != NULL && broker.host == NULL) {
        static char url[256];
        size_t url_len = 0;
        const char *stored = read_file(record_path(0, "broker"), &url_len);
        if (stored != NULL) {
            snprintf(url, sizeof(url), "%s", stored);
            if (!parse_broker(url, &broker, &tls)) {
                fprintf(stderr, "the enrolled broker URL %s is not mqtt(s)://host[:port]\n", url);
                return 2;
            }
        }
    }
    /* An enrolled broker URL of mqtts://: mutual TLS with the enrolled certificate. */
    if (tls && broker.ca_file == NULL && record_path(2, "cert") != NULL) {
        broker.ca_file = record_path(3, "ca");
        broker.cert_file = paths[2];
        broker.key_file = record_path(4, "key");
    }
    if (broker.host == NULL) {
        broker.host = "127.0.0.1";
    }
    size_t pem_len = 0;
    const char *pem = director ? read_file(director, &pem_len) : NULL;
    if (dir == NULL || device_id == NULL || hardware == NULL || pem == NULL) {
        fprintf(stderr, "usage: %s --dir DIR --device-id ID --hardware HW [--director PEM] "
                        "[--broker HOST] [--port N] [--cafile CA --cert CRT --key KEY] "
                        "[--http-cafile CA] [--selftest CMD] [--telemetry MODEL:N]\n",
                argv[0]);
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
    kill_at = getenv("FLEET_OTA_POSIX_KILL_AT");
    if (kill_at != NULL) {
        real_storage = ports.storage;
        ports.storage.record_save = save_then_maybe_die;
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
        if (telemetry_sent < telemetry_wanted &&
            fo_agent_active_slot(&agent, telemetry_model, NULL) >= 0) {
            const char *names[] = {"latency_ms"};
            const double value = (double)telemetry_sent;
            code = fo_agent_telemetry(&agent, telemetry_model, names, &value, 1);
            fprintf(stderr, "telemetry: %s\n", code == FO_OK ? "sent" : fo_code_name(code));
            if (++telemetry_sent == telemetry_wanted) {
                telemetry_wanted = 0; /* report once below */
            }
        } else if (telemetry_sent > 0 && telemetry_wanted == 0 &&
                   fo_agent_telemetry_unconfirmed(&agent) == 0) {
            fprintf(stderr, "telemetry: %u sent, all confirmed, %u dropped\n", telemetry_sent,
                    (unsigned)fo_agent_telemetry_dropped(&agent));
            telemetry_sent = 0;
        }
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
