/* The fleet_ota client on an ESP32-S3 with a TensorFlow Lite Micro golden-input
 * self-test (README.md). Never compiled by this project: there is no ESP-IDF here. */
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cJSON.h"
#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_netif_sntp.h"
#include "esp_partition.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs_flash.h"
#include "protocol_examples_common.h"
#include "sdkconfig.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "fleet_ota/agent.h"
#include "fleet_ota_esp.h"

static const char *TAG = "kws";

/* The model this application runs and its two slots (partitions.csv). */
static const char MODEL[] = "kws";
static const fo_esp_slots_t SLOTS[] = {{MODEL, {"kws_a", "kws_b"}}};

/* The golden-input self-test travels inside the .tflite as the metadata entry
 * "fleet_selftest": the same JSON as the Python agent's TUF custom field `selftest`
 * (device_agent/trial.py), here covered by the artifact's sha256 in the signed desired
 * state, since this client reads no TUF metadata. */
static const char SELFTEST_METADATA[] = "fleet_selftest";
static const size_t MAX_ELEMENTS = 65536; /* as trial.py */
static const double DEFAULT_ATOL = 1e-5;  /* as trial.py */

static fo_agent_t agent; /* all the client's memory (device_agent/esp32/README.md, Means) */
static fo_ports_t ports;
static fo_esp_t esp;

alignas(16) static uint8_t tensor_arena[CONFIG_KWS_TENSOR_ARENA_KB * 1024];
static tflite::MicroMutableOpResolver<10> resolver;

/* --- the golden-input self-test ------------------------------------------------------ */

/* A number as trial.py takes it: a JSON number or a decimal string, never a bool. */
static bool json_number(const cJSON *item, double *out)
{
    if (cJSON_IsNumber(item)) {
        *out = item->valuedouble;
        return true;
    }
    if (!cJSON_IsString(item) || item->valuestring[0] == '\0') {
        return false;
    }
    char *end = nullptr;
    errno = 0;
    *out = strtod(item->valuestring, &end);
    return errno == 0 && *end == '\0';
}

static const char *type_name(TfLiteType type)
{
    switch (type) {
    case kTfLiteFloat32: return "float32";
    case kTfLiteInt8: return "int8";
    case kTfLiteUInt8: return "uint8";
    case kTfLiteInt16: return "int16";
    case kTfLiteInt32: return "int32";
    default: return "unsupported";
    }
}

/* Element i of a tensor, as a double, and the reverse (numpy's astype: truncation). */
static double get_element(const TfLiteTensor *t, size_t i)
{
    switch (t->type) {
    case kTfLiteFloat32: return t->data.f[i];
    case kTfLiteInt8: return t->data.int8[i];
    case kTfLiteUInt8: return t->data.uint8[i];
    case kTfLiteInt16: return t->data.i16[i];
    default: return t->data.i32[i];
    }
}

static void set_element(TfLiteTensor *t, size_t i, double v)
{
    switch (t->type) {
    case kTfLiteFloat32: t->data.f[i] = (float)v; break;
    case kTfLiteInt8: t->data.int8[i] = (int8_t)v; break;
    case kTfLiteUInt8: t->data.uint8[i] = (uint8_t)v; break;
    case kTfLiteInt16: t->data.i16[i] = (int16_t)v; break;
    default: t->data.i32[i] = (int32_t)v; break;
    }
}

/* The tensor spec {"name", "shape", "dtype", "data"} checked against tensor t: the same
 * shape and dtype, at most MAX_ELEMENTS values. */
static const char *check_spec(const cJSON *spec, const TfLiteTensor *t, size_t *count)
{
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(spec, "shape");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(spec, "dtype");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(spec, "data");
    const char *want = cJSON_IsString(dtype) ? dtype->valuestring : "float32";
    if (!cJSON_IsArray(shape) || !cJSON_IsArray(data)) {
        return "shape and data must be lists";
    }
    if (strcmp(want, type_name(t->type)) != 0) {
        return "dtype differs from the model's tensor";
    }
    if (cJSON_GetArraySize(shape) != t->dims->size) {
        return "shape differs from the model's tensor";
    }
    size_t n = 1;
    int axis = 0;
    const cJSON *d = nullptr;
    cJSON_ArrayForEach(d, shape) {
        if (!cJSON_IsNumber(d) || d->valuedouble != (double)d->valueint ||
            d->valueint != t->dims->data[axis++]) {
            return "shape differs from the model's tensor";
        }
        n *= (size_t)d->valueint;
    }
    if (n > MAX_ELEMENTS || (size_t)cJSON_GetArraySize(data) != n) {
        return "data does not hold the shape's number of values";
    }
    *count = n;
    return nullptr;
}

/* The position in `io` (a subgraph's inputs or outputs) of the tensor called `name`;
 * the first when name is NULL; -1 when none is. */
static int find_io(const tflite::SubGraph *sg, const flatbuffers::Vector<int32_t> *io,
                   const char *name)
{
    for (flatbuffers::uoffset_t k = 0; io != nullptr && k < io->size(); k++) {
        const tflite::Tensor *t = sg->tensors()->Get(io->Get(k));
        if (name == nullptr || (t->name() != nullptr && strcmp(t->name()->c_str(), name) == 0)) {
            return (int)k;
        }
    }
    return -1;
}

/* The JSON text of the model's "fleet_selftest" metadata entry, or NULL. */
static const char *selftest_text(const tflite::Model *m, size_t *len)
{
    const auto *metadata = m->metadata();
    for (flatbuffers::uoffset_t i = 0; metadata != nullptr && i < metadata->size(); i++) {
        const tflite::Metadata *entry = metadata->Get(i);
        if (entry->name() == nullptr || strcmp(entry->name()->c_str(), SELFTEST_METADATA) != 0 ||
            m->buffers() == nullptr || entry->buffer() >= m->buffers()->size()) {
            continue;
        }
        const tflite::Buffer *buf = m->buffers()->Get(entry->buffer());
        if (buf->data() != nullptr) {
            *len = buf->data()->size();
            return reinterpret_cast<const char *>(buf->data()->data());
        }
    }
    return nullptr;
}

/* Run the golden input through the model of `length` bytes in `part`; nullptr when its
 * output is within atol of the expected one (*latency_us: the inference alone), else
 * why not. */
static const char *run_golden(const esp_partition_t *part, uint64_t length,
                              int64_t *latency_us)
{
    const void *mapped = nullptr;
    esp_partition_mmap_handle_t handle;
    if (length == 0 || length > part->size ||
        esp_partition_mmap(part, 0, (size_t)length, ESP_PARTITION_MMAP_DATA, &mapped, &handle) !=
            ESP_OK) {
        return "cannot map the model slot";
    }
    const char *why = nullptr;
    cJSON *spec = nullptr;
    do {
        flatbuffers::Verifier verifier(static_cast<const uint8_t *>(mapped), (size_t)length);
        if (!tflite::VerifyModelBuffer(verifier)) {
            why = "not a valid TFLite FlatBuffer";
            break;
        }
        const tflite::Model *model = tflite::GetModel(mapped);
        if (model->version() != TFLITE_SCHEMA_VERSION || model->subgraphs() == nullptr ||
            model->subgraphs()->size() == 0) {
            why = "unsupported TFLite schema";
            break;
        }
        size_t text_len = 0;
        const char *text = selftest_text(model, &text_len);
        spec = text == nullptr ? nullptr : cJSON_ParseWithLength(text, text_len);
        if (!cJSON_IsObject(spec)) {
            why = "no readable \"fleet_selftest\" metadata";
            break;
        }
        const cJSON *key = nullptr;
        cJSON_ArrayForEach(key, spec) {
            if (strcmp(key->string, "input") != 0 && strcmp(key->string, "output") != 0 &&
                strcmp(key->string, "atol") != 0) {
                why = "selftest has an unknown key";
            }
        }
        const cJSON *in = cJSON_GetObjectItemCaseSensitive(spec, "input");
        const cJSON *out = cJSON_GetObjectItemCaseSensitive(spec, "output");
        const cJSON *in_name = cJSON_GetObjectItemCaseSensitive(in, "name");
        const cJSON *out_name = cJSON_GetObjectItemCaseSensitive(out, "name");
        const cJSON *atol_item = cJSON_GetObjectItemCaseSensitive(spec, "atol");
        double atol = DEFAULT_ATOL;
        if (why != nullptr || !cJSON_IsObject(in) || !cJSON_IsObject(out) ||
            !cJSON_IsString(in_name) || (out_name != nullptr && !cJSON_IsString(out_name)) ||
            (atol_item != nullptr && !json_number(atol_item, &atol))) {
            why = why != nullptr ? why : "malformed selftest";
            break;
        }
        const tflite::SubGraph *sg = model->subgraphs()->Get(0);
        int in_at = find_io(sg, sg->inputs(), in_name->valuestring);
        int out_at = find_io(sg, sg->outputs(), out_name ? out_name->valuestring : nullptr);
        if (in_at < 0 || out_at < 0) {
            why = "the model has no tensor of the selftest's name";
            break;
        }

        tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, sizeof(tensor_arena));
        if (interpreter.AllocateTensors() != kTfLiteOk) {
            why = "cannot allocate the tensors (an unregistered op or a small arena)";
            break;
        }
        TfLiteTensor *input = interpreter.input(in_at);
        TfLiteTensor *output = interpreter.output(out_at);
        size_t n_in = 0, n_out = 0;
        if ((why = check_spec(in, input, &n_in)) != nullptr ||
            (why = check_spec(out, output, &n_out)) != nullptr) {
            break;
        }
        size_t i = 0;
        const cJSON *v = nullptr;
        cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(in, "data")) {
            double x;
            if (!json_number(v, &x)) {
                why = "selftest input.data holds a non-number";
                break;
            }
            set_element(input, i++, x);
        }
        if (why != nullptr) {
            break;
        }
        int64_t start = esp_timer_get_time();
        TfLiteStatus invoked = interpreter.Invoke();
        *latency_us = esp_timer_get_time() - start;
        if (invoked != kTfLiteOk) {
            why = "inference failed";
            break;
        }
        /* As trial.py: every element within atol (rtol 0); NaN never is. */
        i = 0;
        cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(out, "data")) {
            double want, got = get_element(output, i++);
            if (!json_number(v, &want) || !(fabs(got - want) <= atol)) {
                ESP_LOGW(TAG, "output[%u] = %g, expected %s (atol %g)", (unsigned)(i - 1), got,
                         cJSON_IsString(v) ? v->valuestring : "a number", atol);
                why = "self-test output differs";
                break;
            }
        }
    } while (false);
    cJSON_Delete(spec);
    esp_partition_munmap(handle);
    return why;
}

static const esp_partition_t *slot_partition(const char *model, int slot)
{
    for (const fo_esp_slots_t &s : SLOTS) {
        if (strcmp(s.model, model) == 0 && slot >= 0 && slot < 2) {
            return esp_partition_find_first(ESP_PARTITION_TYPE_DATA, ESP_PARTITION_SUBTYPE_ANY,
                                            s.label[slot]);
        }
    }
    return nullptr;
}

/* The self-test port: the agent has just made `slot` active (the trial). */
static fo_code_t selftest_run(void *ctx, const char *model, int slot)
{
    fo_agent_t *a = static_cast<fo_agent_t *>(ctx);
    const fo_slot_info_t *info = nullptr;
    const esp_partition_t *part = slot_partition(model, slot);
    int64_t latency_us = 0;
    if (part == nullptr || fo_agent_active_slot(a, model, &info) != slot || info == nullptr) {
        ESP_LOGE(TAG, "self-test of %s: slot %d is not the active one", model, slot);
        return FO_HEALTH_CHECK_FAILED;
    }
    const char *why = run_golden(part, info->length, &latency_us);
    if (why != nullptr) {
        ESP_LOGE(TAG, "self-test of %s %s failed: %s", model, info->version, why);
        return FO_HEALTH_CHECK_FAILED;
    }
    ESP_LOGI(TAG, "self-test of %s %s passed (%lld us)", model, info->version,
             (long long)latency_us);
    return FO_OK;
}

/* Inference latency of the active model, tagged by the agent with its version, rollout
 * and arm. */
static void report_latency(void)
{
    const fo_slot_info_t *info = nullptr;
    int slot = fo_agent_active_slot(&agent, MODEL, &info);
    const esp_partition_t *part = slot_partition(MODEL, slot);
    int64_t latency_us = 0;
    if (part == nullptr || info == nullptr || run_golden(part, info->length, &latency_us) != nullptr) {
        return;
    }
    const char *const names[] = {"latency_ms"};
    const double values[] = {(double)latency_us / 1000.0};
    fo_code_t code = fo_agent_telemetry(&agent, MODEL, names, values, 1);
    ESP_LOGI(TAG, "telemetry %s %s arm %s: latency_ms %.3f (%s)", MODEL, info->version,
             info->arm[0] ? info->arm : "-", values[0], fo_code_name(code));
}

/* --- MQTT: the esp-mqtt task hands whole messages to the agent's task ---------------- */

enum msg_kind { MSG_CONNECTED, MSG_DESIRED, MSG_ACKS };
struct msg_t {
    msg_kind kind;
    uint8_t *data;
    size_t len;
};

static QueueHandle_t inbox;
/* Set by the esp-mqtt task when the inbox was full and a `desired` message was dropped:
 * subscribing again makes the broker deliver the retained one anew. */
static volatile bool desired_dropped;
static char desired_topic[128], acks_topic[128], status_topic[128];

static void mqtt_event(void *arg, esp_event_base_t base, int32_t id, void *event_data)
{
    static msg_t partial;    /* a message esp-mqtt delivers in several fragments */
    (void)arg;
    (void)base;
    auto *event = static_cast<esp_mqtt_event_handle_t>(event_data);
    if (id == MQTT_EVENT_CONNECTED) {
        esp_mqtt_client_subscribe(event->client, desired_topic, 1);
        esp_mqtt_client_subscribe(event->client, acks_topic, 0);
        msg_t m = {MSG_CONNECTED, nullptr, 0};
        xQueueSend(inbox, &m, 0); /* a full inbox: the agent's poll resends later anyway */
        return;
    }
    if (id != MQTT_EVENT_DATA) {
        return;
    }
    if (event->current_data_offset == 0) {
        free(partial.data);
        partial = {};
        size_t topic_len = (size_t)event->topic_len;
        if (topic_len == strlen(desired_topic) && memcmp(event->topic, desired_topic, topic_len) == 0) {
            partial.kind = MSG_DESIRED;
        } else if (topic_len == strlen(acks_topic) && memcmp(event->topic, acks_topic, topic_len) == 0) {
            partial.kind = MSG_ACKS;
        } else {
            return;
        }
        /* Beyond the envelope bound one byte more is kept: the agent refuses it by size. */
        partial.len = (size_t)event->total_data_len;
        if (partial.len > FLEET_OTA_MAX_ENVELOPE + 1) {
            partial.len = FLEET_OTA_MAX_ENVELOPE + 1;
        }
        partial.data = static_cast<uint8_t *>(malloc(partial.len ? partial.len : 1));
    }
    if (partial.data == nullptr) {
        return;
    }
    size_t at = (size_t)event->current_data_offset;
    size_t n = (size_t)event->data_len;
    if (at < partial.len) {
        size_t take = n < partial.len - at ? n : partial.len - at;
        memcpy(partial.data + at, event->data, take);
    }
    if (at + n >= (size_t)event->total_data_len) {
        /* Never block the esp-mqtt task (the agent's task publishes through it): a full
         * inbox drops the message; what an `acks` confirmed is published again by
         * fo_agent_poll and confirmed again, a `desired` is fetched again by subscribing
         * anew. */
        if (xQueueSend(inbox, &partial, 0) != pdTRUE) {
            desired_dropped = desired_dropped || partial.kind == MSG_DESIRED;
            free(partial.data);
        }
        partial = {}; /* the agent's task frees what it received */
    }
}

/* A record written by enrollment (fo_enroll, or at the factory), NUL-terminated. */
static bool load_record(const char *name, char *buf, size_t cap)
{
    size_t len = 0;
    if (ports.storage.record_load(ports.storage.ctx, name, reinterpret_cast<uint8_t *>(buf),
                                  cap - 1, &len) != FO_OK) {
        return false;
    }
    buf[len] = '\0';
    return true;
}

extern "C" void app_main(void)
{
    static char key[2048], cert[4096], ca[4096], director[1024], broker[256];
    const char *device_id = CONFIG_KWS_DEVICE_ID;

    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        ESP_ERROR_CHECK(nvs_flash_erase());
        err = nvs_flash_init();
    }
    ESP_ERROR_CHECK(err);
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());
    ESP_ERROR_CHECK(example_connect()); /* Wi-Fi or Ethernet, from menuconfig */

    /* Expiry and issue times are checked against a real clock (the agent waits for it). */
    esp_sntp_config_t sntp = ESP_NETIF_SNTP_DEFAULT_CONFIG("pool.ntp.org");
    esp_netif_sntp_init(&sntp);
    if (esp_netif_sntp_sync_wait(pdMS_TO_TICKS(30000)) != ESP_OK) {
        ESP_LOGW(TAG, "no SNTP time yet");
    }

    resolver.AddFullyConnected();
    resolver.AddAdd();
    resolver.AddMul();
    resolver.AddReshape();
    resolver.AddSoftmax();
    resolver.AddQuantize();
    resolver.AddDequantize();
    resolver.AddConv2D();
    resolver.AddDepthwiseConv2D();
    resolver.AddMaxPool2D();

    esp.slots = SLOTS;
    esp.n_slots = sizeof(SLOTS) / sizeof(SLOTS[0]);
    esp.nvs_namespace = "fleet_ota";
    esp.server_cert_pem = nullptr; /* the records' "ca" is set below */
    if (fo_esp_ports_init(&esp, device_id, &ports) != FO_OK) {
        ESP_LOGE(TAG, "cannot open NVS namespace fleet_ota");
        return;
    }
    ports.selftest.run = selftest_run;
    ports.selftest.ctx = &agent;
    if (!load_record("key", key, sizeof(key)) || !load_record("cert", cert, sizeof(cert)) ||
        !load_record("ca", ca, sizeof(ca)) ||
        !load_record("director", director, sizeof(director))) {
        ESP_LOGE(TAG, "not enrolled: NVS lacks key, cert, ca or director (README.md)");
        return;
    }
    if (!load_record("broker", broker, sizeof(broker))) {
        snprintf(broker, sizeof(broker), "%s", CONFIG_KWS_BROKER_URI);
    }
    esp.server_cert_pem = ca;

    snprintf(desired_topic, sizeof(desired_topic), "fleet/v1/devices/%s/desired", device_id);
    snprintf(acks_topic, sizeof(acks_topic), "fleet/v1/devices/%s/acks", device_id);
    snprintf(status_topic, sizeof(status_topic), "fleet/v1/devices/%s/status", device_id);
    inbox = xQueueCreate(4, sizeof(msg_t));

    esp_mqtt_client_config_t mqtt = {};
    mqtt.broker.address.uri = broker;
    mqtt.broker.verification.certificate = ca;
    mqtt.credentials.client_id = device_id;
    mqtt.credentials.authentication.certificate = cert;
    mqtt.credentials.authentication.key = key;
    mqtt.session.last_will.topic = status_topic;
    mqtt.session.last_will.msg = "{\"v\":1,\"status\":\"offline\"}";
    mqtt.session.last_will.qos = 1;
    mqtt.session.last_will.retain = 1;
    esp.mqtt = esp_mqtt_client_init(&mqtt);
    esp_mqtt_client_register_event(esp.mqtt, MQTT_EVENT_ANY, mqtt_event, nullptr);
    ESP_ERROR_CHECK(esp_mqtt_client_start(esp.mqtt));

    /* Reports published before the connection wait in esp-mqtt's outbox. */
    fo_code_t code = fo_agent_start(&agent, &ports, device_id, CONFIG_KWS_HARDWARE, director,
                                    strlen(director));
    if (code != FO_OK) {
        ESP_LOGE(TAG, "fo_agent_start: %s", fo_code_name(code));
        return;
    }
    fo_agent_run(&agent); /* finish or undo what a power cut interrupted */

    int64_t next_sample = 0;
    for (;;) {
        msg_t m;
        if (xQueueReceive(inbox, &m, pdMS_TO_TICKS(1000)) == pdTRUE) {
            if (m.kind == MSG_CONNECTED) {
                fo_agent_on_connected(&agent);
            } else if (m.kind == MSG_DESIRED) {
                fo_agent_on_desired(&agent, m.data, m.len);
                fo_agent_run(&agent); /* download, verify, swap, self-test, commit or roll back */
                if (desired_dropped) {
                    desired_dropped = false;
                    esp_mqtt_client_subscribe(esp.mqtt, desired_topic, 1);
                }
            } else {
                fo_agent_on_acks(&agent, m.data, m.len);
            }
            free(m.data);
        }
        fo_agent_poll(&agent);
        if (esp_timer_get_time() >= next_sample) {
            report_latency();
            next_sample = esp_timer_get_time() + (int64_t)CONFIG_KWS_TELEMETRY_PERIOD_S * 1000000;
        }
    }
}
