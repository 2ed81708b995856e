#include "posix_mqtt.h"

#include <mosquitto.h>
#include <stdio.h>
#include <string.h>

static const char OFFLINE[] = "{\"v\":1,\"status\":\"offline\"}";

static void topic(const fo_posix_mqtt_t *m, const char *channel, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s", m->prefix, channel);
}

static void on_connect(struct mosquitto *mosq, void *user, int rc)
{
    fo_posix_mqtt_t *m = user;
    char t[128];
    if (rc != 0) {
        return;
    }
    /* Here, so every reconnect subscribes again and gets the retained desired state. */
    topic(m, "desired", t, sizeof(t));
    mosquitto_subscribe(mosq, NULL, t, 1);
    topic(m, "acks", t, sizeof(t));
    mosquitto_subscribe(mosq, NULL, t, 0);
    pthread_mutex_lock(&m->lock);
    m->connects++;
    pthread_mutex_unlock(&m->lock);
}

static void on_message(struct mosquitto *mosq, void *user, const struct mosquitto_message *msg)
{
    (void)mosq;
    fo_posix_mqtt_t *m = user;
    size_t len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    size_t plen = strlen(m->prefix);
    if (strncmp(msg->topic, m->prefix, plen) == 0 && strcmp(msg->topic + plen, "acks") == 0) {
        if (len > FO_POSIX_ACKS_BYTES) {
            return;
        }
        pthread_mutex_lock(&m->lock);
        if (m->acks_count == FO_POSIX_ACKS_QUEUE) {
            m->acks_head = (m->acks_head + 1) % FO_POSIX_ACKS_QUEUE; /* the oldest goes */
            m->acks_count--;
        }
        unsigned slot = (m->acks_head + m->acks_count) % FO_POSIX_ACKS_QUEUE;
        memcpy(m->acks[slot], msg->payload, len);
        m->acks_len[slot] = len;
        m->acks_count++;
        pthread_mutex_unlock(&m->lock);
        return;
    }
    pthread_mutex_lock(&m->lock);
    memcpy(m->desired, msg->payload, len < sizeof(m->desired) ? len : sizeof(m->desired));
    m->desired_len = len;
    m->has_desired = 1;
    pthread_mutex_unlock(&m->lock);
}

static fo_code_t publish(void *ctx, const char *channel, const uint8_t *payload, size_t len)
{
    fo_posix_mqtt_t *m = ctx;
    char t[128];
    int telemetry = strcmp(channel, "telemetry") == 0;
    int retain = strcmp(channel, "state") == 0 || strcmp(channel, "status") == 0;
    topic(m, channel, t, sizeof(t));
    int rc = mosquitto_publish(m->mosq, NULL, t, (int)len, payload, telemetry ? 0 : 1, retain);
    return rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_NO_CONN ? FO_OK : FO_DOWNLOAD_FAILED;
}

fo_code_t fo_posix_mqtt_start(fo_posix_mqtt_t *m, const char *device_id,
                              const fo_posix_mqtt_config_t *config, fo_mqtt_port_t *port)
{
    char t[128];
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    snprintf(m->prefix, sizeof(m->prefix), "fleet/v1/devices/%s/", device_id);
    mosquitto_lib_init();
    m->mosq = mosquitto_new(device_id, true, m);
    if (m->mosq == NULL) {
        return FO_DOWNLOAD_FAILED;
    }
    topic(m, "status", t, sizeof(t));
    mosquitto_will_set(m->mosq, t, (int)strlen(OFFLINE), OFFLINE, 1, true);
    if (config->ca_file != NULL &&
        mosquitto_tls_set(m->mosq, config->ca_file, NULL, config->cert_file, config->key_file,
                          NULL) != MOSQ_ERR_SUCCESS) {
        return FO_UNAUTHORIZED;
    }
    mosquitto_connect_callback_set(m->mosq, on_connect);
    mosquitto_message_callback_set(m->mosq, on_message);
    mosquitto_reconnect_delay_set(m->mosq, 1, 30, true);
    port->publish = publish;
    port->ctx = m;
    if (mosquitto_connect_async(m->mosq, config->host, config->port, 30) != MOSQ_ERR_SUCCESS ||
        mosquitto_loop_start(m->mosq) != MOSQ_ERR_SUCCESS) {
        return FO_DOWNLOAD_FAILED;
    }
    return FO_OK;
}

int fo_posix_mqtt_take_desired(fo_posix_mqtt_t *m, uint8_t *buf, size_t *len)
{
    int has;
    pthread_mutex_lock(&m->lock);
    has = m->has_desired;
    if (has) {
        size_t n = m->desired_len < sizeof(m->desired) ? m->desired_len : sizeof(m->desired);
        memcpy(buf, m->desired, n);
        *len = m->desired_len < sizeof(m->desired) ? m->desired_len : sizeof(m->desired);
        m->has_desired = 0;
    }
    pthread_mutex_unlock(&m->lock);
    return has;
}

int fo_posix_mqtt_take_acks(fo_posix_mqtt_t *m, uint8_t *buf, size_t *len)
{
    int has;
    pthread_mutex_lock(&m->lock);
    has = m->acks_count > 0;
    if (has) {
        *len = m->acks_len[m->acks_head];
        memcpy(buf, m->acks[m->acks_head], *len);
        m->acks_head = (m->acks_head + 1) % FO_POSIX_ACKS_QUEUE;
        m->acks_count--;
    }
    pthread_mutex_unlock(&m->lock);
    return has;
}

unsigned fo_posix_mqtt_connects(fo_posix_mqtt_t *m)
{
    pthread_mutex_lock(&m->lock);
    unsigned n = m->connects;
    pthread_mutex_unlock(&m->lock);
    return n;
}

void fo_posix_mqtt_resubscribe(fo_posix_mqtt_t *m)
{
    char t[128];
    topic(m, "desired", t, sizeof(t));
    mosquitto_unsubscribe(m->mosq, NULL, t);
    mosquitto_subscribe(m->mosq, NULL, t, 1);
}

void fo_posix_mqtt_stop(fo_posix_mqtt_t *m)
{
    char t[128];
    topic(m, "status", t, sizeof(t));
    /* A clean disconnect does not fire the will: say offline first. */
    mosquitto_publish(m->mosq, NULL, t, (int)strlen(OFFLINE), OFFLINE, 1, true);
    mosquitto_disconnect(m->mosq);
    mosquitto_loop_stop(m->mosq, false);
    mosquitto_destroy(m->mosq);
    mosquitto_lib_cleanup();
}
