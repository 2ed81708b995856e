/* The esp-idf ports of fleet_ota: model slots in flash partitions, records in NVS,
 * esp_http_client downloads, esp-mqtt publishing, the system clock. The application
 * gives the self-test port and feeds `desired` messages to fo_agent_on_desired().
 * Not compiled here (README.md). */
#ifndef FLEET_OTA_ESP_H
#define FLEET_OTA_ESP_H

#include "esp_partition.h"
#include "fleet_ota/agent.h"
#include "mqtt_client.h"
#include "nvs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The two data partitions (by label) that hold one model's slots. */
typedef struct {
    const char *model;
    const char *label[2];
} fo_esp_slots_t;

typedef struct {
    const fo_esp_slots_t *slots;
    size_t n_slots;
    const char *nvs_namespace; /* records "state" and "desired" as NVS blobs */
    const char *server_cert_pem; /* the artifact server's CA (NULL: the certificate bundle
                                    must be attached by the application) */
    esp_mqtt_client_handle_t mqtt; /* connected by the application, see README.md */
    char topic_prefix[96];         /* fleet/v1/devices/<id>/ */
    /* internal */
    nvs_handle_t nvs;
    const esp_partition_t *open_part;
    size_t write_at;
} fo_esp_t;

/* Fill `ports` (all but selftest) over `esp`. */
fo_code_t fo_esp_ports_init(fo_esp_t *esp, const char *device_id, fo_ports_t *ports);

#ifdef __cplusplus
}
#endif

#endif
