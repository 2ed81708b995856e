/* The posix MQTT port: libmosquitto on its own network thread. The device's `desired`
 * messages are kept (the newest one) for the main loop to take. */
#ifndef FLEET_OTA_POSIX_MQTT_H
#define FLEET_OTA_POSIX_MQTT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/config.h"
#include "fleet_ota/port.h"

typedef struct {
    struct mosquitto *mosq;
    char prefix[96]; /* fleet/v1/devices/<id>/ */
    pthread_mutex_t lock;
    uint8_t desired[FLEET_OTA_MAX_ENVELOPE + 1];
    size_t desired_len; /* may exceed the buffer: the agent refuses it for its size */
    int has_desired;
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

/* Subscribe again: the broker delivers the retained desired state once more. */
void fo_posix_mqtt_resubscribe(fo_posix_mqtt_t *m);

void fo_posix_mqtt_stop(fo_posix_mqtt_t *m);

#endif
