/* The posix MQTT port: libmosquitto on its own network thread. The device's `desired`
 * messages are kept (the newest one), its `acks` messages (the last few, each up to
 * FO_POSIX_ACKS_BYTES: a longer or lost one only means those events are sent again and
 * confirmed again) and a count of connections, for the main loop to take. */
#ifndef FLEET_OTA_POSIX_MQTT_H
#define FLEET_OTA_POSIX_MQTT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/config.h"
#include "fleet_ota/port.h"

#define FO_POSIX_ACKS_QUEUE 8
#define FO_POSIX_ACKS_BYTES 4096

typedef struct {
    struct mosquitto *mosq;
    char prefix[96]; /* fleet/v1/devices/<id>/ */
    pthread_mutex_t lock;
    uint8_t desired[FLEET_OTA_MAX_ENVELOPE + 1];
    size_t desired_len; /* may exceed the buffer: the agent refuses it for its size */
    int has_desired;
    uint8_t acks[FO_POSIX_ACKS_QUEUE][FO_POSIX_ACKS_BYTES];
    size_t acks_len[FO_POSIX_ACKS_QUEUE];
    unsigned acks_head, acks_count;
    unsigned connects;
} fo_posix_mqtt_t;

typedef struct {
    const char *host;
    int port;
    const char *ca_file; /* TLS when set */
    const char *cert_file;
    const char *key_file;
} fo_posix_mqtt_config_t;

fo_code_t fo_posix_mqtt_start(fo_posix_mqtt_t *m, const char *device_id,
                              const fo_posix_mqtt_config_t *config, fo_mqtt_port_t *port);

/* The newest `desired` message since the last call (copied into `buf`, which holds at
 * least FLEET_OTA_MAX_ENVELOPE + 1 bytes); 0 when none arrived. */
int fo_posix_mqtt_take_desired(fo_posix_mqtt_t *m, uint8_t *buf, size_t *len);

/* The oldest `acks` message not taken yet (copied into `buf` of FO_POSIX_ACKS_BYTES);
 * 0 when none is left. */
int fo_posix_mqtt_take_acks(fo_posix_mqtt_t *m, uint8_t *buf, size_t *len);

/* Connections made so far (a change means a reconnection). */
unsigned fo_posix_mqtt_connects(fo_posix_mqtt_t *m);

/* Subscribe again: the broker delivers the retained desired state once more. */
void fo_posix_mqtt_resubscribe(fo_posix_mqtt_t *m);

void fo_posix_mqtt_stop(fo_posix_mqtt_t *m);

#endif
