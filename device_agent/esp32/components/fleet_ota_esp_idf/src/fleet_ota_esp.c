/* The esp-idf ports (include/fleet_ota_esp.h). Never compiled by this project's CI. */
#include "fleet_ota_esp.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "esp_http_client.h"
#include "esp_random.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#define SECTOR 4096u

static const esp_partition_t *slot_partition(fo_esp_t *esp, const char *model, int slot)
{
    for (size_t i = 0; i < esp->n_slots; i++) {
        if (strcmp(esp->slots[i].model, model) == 0) {
            return esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_ANY,
                                            esp->slots[i].label[slot]);
        }
    }
    return NULL;
}

static fo_code_t slot_open(void *ctx, const char *model, int slot, uint64_t offset,
                           uint64_t length)
{
    fo_esp_t *esp = ctx;
    const esp_partition_t *part = slot_partition(esp, model, slot);
    if (part == NULL || length > part->size || offset % SECTOR != 0) {
        return FO_DISK_FULL;
    }
    /* Flash is written only where erased: erase from the checkpoint (a multiple of the
     * sector size) to the end of the artifact, whatever a cut-off attempt left there. */
    uint64_t end = (length + SECTOR - 1) / SECTOR * SECTOR;
    if (end > offset &&
        esp_partition_erase_range(part, (size_t)offset, (size_t)(end - offset)) != ESP_OK) {
        return FO_DISK_FULL;
    }
    esp->open_part = part;
    esp->write_at = (size_t)offset;
    return FO_OK;
}

static fo_code_t slot_write(void *ctx, const uint8_t *data, size_t len)
{
    fo_esp_t *esp = ctx;
    if (esp->open_part == NULL ||
        esp_partition_write(esp->open_part, esp->write_at, data, len) != ESP_OK) {
        return FO_DISK_FULL;
    }
    esp->write_at += len;
    return FO_OK;
}

static fo_code_t slot_close(void *ctx)
{
    fo_esp_t *esp = ctx;
    esp->open_part = NULL; /* esp_partition_write has returned: the bytes are in flash */
    return FO_OK;
}

static fo_code_t slot_read(void *ctx, const char *model, int slot, uint64_t offset,
                           uint8_t *buf, size_t len)
{
    const esp_partition_t *part = slot_partition(ctx, model, slot);
    if (part == NULL || esp_partition_read(part, (size_t)offset, buf, len) != ESP_OK) {
        return FO_HASH_MISMATCH;
    }
    return FO_OK;
}

static fo_code_t record_load(void *ctx, const char *name, uint8_t *buf, size_t cap, size_t *len)
{
    fo_esp_t *esp = ctx;
    size_t n = cap;
    esp_err_t err = nvs_get_blob(esp->nvs, name, buf, &n);
    if (err == ESP_ERR_NVS_NOT_FOUND) {
        return FO_NOT_FOUND;
    }
    if (err != ESP_OK) {
        return FO_MALFORMED;
    }
    *len = n;
    return FO_OK;
}

static fo_code_t record_save(void *ctx, const char *name, const uint8_t *buf, size_t len)
{
    fo_esp_t *esp = ctx;
    /* NVS writes the new blob before it erases the old one: a power cut leaves one. */
    if (nvs_set_blob(esp->nvs, name, buf, len) != ESP_OK || nvs_commit(esp->nvs) != ESP_OK) {
        return FO_DISK_FULL;
    }
    return FO_OK;
}

static fo_code_t http_get(void *ctx, const char *url, uint64_t offset, fo_sink_t sink,
                          void *sink_ctx)
{
    fo_esp_t *esp = ctx;
    esp_http_client_config_t config = {
        .url = url,
        .cert_pem = esp->server_cert_pem,
        .timeout_ms = 30000,
    };
    esp_http_client_handle_t client = esp_http_client_init(&config);
    char range[40];
    static uint8_t buf[2048];
    fo_code_t code = FO_OK;
    if (client == NULL) {
        return FO_DOWNLOAD_FAILED;
    }
    if (offset > 0) {
        snprintf(range, sizeof(range), "bytes=%llu-", (unsigned long long)offset);
        esp_http_client_set_header(client, "Range", range);
    }
    if (esp_http_client_open(client, 0) != ESP_OK || esp_http_client_fetch_headers(client) < 0) {
        code = FO_DOWNLOAD_FAILED;
    } else {
        int status = esp_http_client_get_status_code(client);
        uint64_t skip = offset > 0 && status == 200 ? offset : 0;
        if (status != 200 && status != 206) {
            code = FO_DOWNLOAD_FAILED;
        }
        while (code == FO_OK) {
            int n = esp_http_client_read(client, (char *)buf, sizeof(buf));
            if (n < 0) {
                code = FO_DOWNLOAD_FAILED;
            } else if (n == 0) {
                if (!esp_http_client_is_complete_data_received(client)) {
                    code = FO_DOWNLOAD_FAILED;
                }
                break;
            } else {
                size_t used = (uint64_t)n < skip ? (size_t)n : (size_t)skip;
                skip -= used;
                if ((size_t)n > used) {
                    code = sink(sink_ctx, buf + used, (size_t)n - used);
                }
            }
        }
    }
    esp_http_client_close(client);
    esp_http_client_cleanup(client);
    return code;
}

static fo_code_t publish(void *ctx, const char *channel, const uint8_t *payload, size_t len)
{
    fo_esp_t *esp = ctx;
    char topic[128];
    int telemetry = strcmp(channel, "telemetry") == 0;
    int retain = strcmp(channel, "state") == 0 || strcmp(channel, "status") == 0;
    snprintf(topic, sizeof(topic), "%s%s", esp->topic_prefix, channel);
    /* enqueue: kept in esp-mqtt's outbox while offline, sent on reconnect */
    int id = esp_mqtt_client_enqueue(esp->mqtt, topic, (const char *)payload, (int)len,
                                     telemetry ? 0 : 1, retain, true);
    return id < 0 ? FO_DOWNLOAD_FAILED : FO_OK;
}

static int64_t now_us(void *ctx, int *synced)
{
    (void)ctx;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    /* Before SNTP has set it the clock counts from 1970: not a real time. */
    *synced = tv.tv_sec > 1700000000;
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void sleep_ms(void *ctx, unsigned ms)
{
    (void)ctx;
    vTaskDelay(pdMS_TO_TICKS(ms));
}

static void fill_random(void *ctx, uint8_t *buf, size_t len)
{
    (void)ctx;
    esp_fill_random(buf, len);
}

fo_code_t fo_esp_ports_init(fo_esp_t *esp, const char *device_id, fo_ports_t *ports)
{
    if (nvs_open(esp->nvs_namespace, NVS_READWRITE, &esp->nvs) != ESP_OK) {
        return FO_DISK_FULL;
    }
    snprintf(esp->topic_prefix, sizeof(esp->topic_prefix), "fleet/v1/devices/%s/", device_id);
    ports->storage = (fo_storage_port_t){slot_open, slot_write, slot_close, slot_read,
                                         record_load, record_save, esp};
    ports->http = (fo_http_port_t){http_get, NULL, esp}; /* enrolled at the factory */
    ports->mqtt = (fo_mqtt_port_t){publish, esp};
    ports->clock.now_us = now_us;
    ports->clock.sleep_ms = sleep_ms;
    ports->clock.random = fill_random;
    ports->clock.ctx = esp;
    return FO_OK;
}
