/* The unconfirmed events (include/fleet_ota/outbox.h). */
#include "fleet_ota/outbox.h"

#include <stdio.h>
#include <string.h>

#include "record.h"

#define EVENT_MAGIC 0x31564546u /* "FEV1" */
#define ID_TAIL 34              /* `<32 hex>"}` ends every kept event */

static void record_name(unsigned i, char name[8])
{
    snprintf(name, 8, "ev%u", i);
}

/* Header: magic, CRC-32 of what follows it, order, key; then the event's JSON. */
static fo_code_t save(const fo_storage_port_t *s, unsigned i, uint64_t order, uint64_t key,
                      const char *text, size_t len, uint8_t *buf)
{
    char name[8];
    fo_put_le(buf, EVENT_MAGIC, 4);
    fo_put_le(buf + 8, order, 8);
    fo_put_le(buf + 16, key, 8);
    if (len > 0) {
        memcpy(buf + FO_EVENT_RECORD_HEADER, text, len);
    }
    fo_put_le(buf + 4, fo_crc32(buf + 8, FO_EVENT_RECORD_HEADER - 8 + len), 4);
    record_name(i, name);
    return s->record_save(s->ctx, name, buf, FO_EVENT_RECORD_HEADER + len);
}

/* Read record `i` into `buf`; the JSON's length, or -1 when absent or not sound. */
static long load(const fo_storage_port_t *s, unsigned i, uint8_t *buf)
{
    char name[8];
    size_t len = 0;
    record_name(i, name);
    if (s->record_load(s->ctx, name, buf, FO_EVENT_RECORD_HEADER + FO_EVENT_BYTES, &len) !=
            FO_OK ||
        len < FO_EVENT_RECORD_HEADER || fo_get_le(buf, 4) != EVENT_MAGIC ||
        fo_get_le(buf + 4, 4) != fo_crc32(buf + 8, len - 8)) {
        return -1;
    }
    long text = (long)(len - FO_EVENT_RECORD_HEADER);
    return text == 0 || text >= ID_TAIL ? text : -1;
}

fo_code_t fo_outbox_load(fo_outbox_t *o, const fo_storage_port_t *s, const uint8_t epoch[8],
                         uint8_t *buf)
{
    memset(o, 0, sizeof(*o));
    memcpy(o->epoch, epoch, sizeof(o->epoch));
    for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
        long len = load(s, i, buf);
        if (len < 0) {
            continue; /* never written, or torn: that event is lost, not the device */
        }
        fo_event_slot_t *e = &o->slot[i];
        e->order = fo_get_le(buf + 8, 8);
        e->len = (uint16_t)len;
        e->pending = len > 0;
        if (e->pending) {
            memcpy(e->id, buf + FO_EVENT_RECORD_HEADER + len - ID_TAIL, 32);
        }
        if (e->order > o->order) {
            o->order = e->order;
            o->last_key = fo_get_le(buf + 16, 8);
        }
    }
    return FO_OK;
}

int fo_outbox_repeats(const fo_outbox_t *o, uint64_t key)
{
    return o->order > 0 && o->last_key == key;
}

void fo_outbox_next_id(const fo_outbox_t *o, char id[33])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        id[2 * i] = hex[o->epoch[i] >> 4];
        id[2 * i + 1] = hex[o->epoch[i] & 15];
    }
    for (int i = 0; i < 16; i++) {
        id[16 + i] = hex[(o->next >> (60 - 4 * i)) & 15];
    }
    id[32] = 0;
}

fo_code_t fo_outbox_add(fo_outbox_t *o, const fo_storage_port_t *s, uint64_t key,
                        const char *text, size_t len, int64_t now_us, uint8_t *buf)
{
    if (len > FO_EVENT_BYTES || len < ID_TAIL) {
        return FO_PAYLOAD_TOO_LARGE;
    }
    /* The oldest free record; when all are pending, the oldest event is dropped (a
     * server that never confirms must not stop the reports). */
    unsigned pick = 0;
    for (unsigned i = 1; i < FLEET_OTA_EVENT_QUEUE; i++) {
        const fo_event_slot_t *a = &o->slot[i], *b = &o->slot[pick];
        if (a->pending < b->pending || (a->pending == b->pending && a->order < b->order)) {
            pick = i;
        }
    }
    o->next++; /* never reused within this boot, even when the save fails */
    fo_code_t code = save(s, pick, o->order + 1, key, text, len, buf);
    if (code != FO_OK) {
        /* What the record holds now is unknown: as if confirmed, so never resent. */
        o->slot[pick].pending = 0;
        return code;
    }
    fo_event_slot_t *e = &o->slot[pick];
    e->order = ++o->order;
    o->last_key = key;
    e->len = (uint16_t)len;
    e->pending = 1;
    e->tries = 1;
    e->due_us = now_us + FO_RESEND_FIRST_US;
    memcpy(e->id, text + len - ID_TAIL, 32);
    e->id[32] = 0;
    return FO_OK;
}

/* String token `i` unescapes to 32 lowercase hex digits, written to `id` (33 bytes). */
static int event_id(const fo_json_doc_t *doc, size_t i, char id[33])
{
    if (doc->tok[i].type != FO_JSON_STRING ||
        fo_json_unescape(doc, i, (uint8_t *)id, 33) != 32) {
        return 0;
    }
    for (int k = 0; k < 32; k++) {
        char c = id[k];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

/* docs/protocol.md, "acks": v 1, event_ids and/or batch_ids (1 to 500 ids each), no
 * other key. */
static int acks_valid(const fo_json_doc_t *doc)
{
    char id[33];
    const fo_json_tok_t *root = &doc->tok[0];
    uint64_t v = 0;
    if (root->type != FO_JSON_OBJECT) {
        return 0;
    }
    long vi = fo_json_member(doc, 0, "v");
    if (vi < 0 || !fo_json_uint(doc, (size_t)vi, &v) || v != 1) {
        return 0;
    }
    unsigned lists = 0;
    size_t i = 1;
    for (unsigned m = 0; m < root->count; m++) {
        size_t key = i, value = i + 1;
        i = doc->tok[value].next;
        if (fo_json_str_eq(doc, key, "v")) {
            continue;
        }
        if (!fo_json_str_eq(doc, key, "event_ids") && !fo_json_str_eq(doc, key, "batch_ids")) {
            return 0;
        }
        const fo_json_tok_t *list = &doc->tok[value];
        if (list->type != FO_JSON_ARRAY || list->count < 1 || list->count > 500) {
            return 0;
        }
        for (size_t k = value + 1; k < list->next; k = doc->tok[k].next) {
            if (!event_id(doc, k, id)) {
                return 0;
            }
        }
        lists++;
    }
    return lists > 0;
}

int fo_outbox_acks_valid(const uint8_t *msg, size_t len, fo_json_tok_t *tokens,
                         size_t max_tokens)
{
    fo_json_doc_t doc;
    return fo_json_parse(msg, len, tokens, max_tokens, 4, &doc) == FO_OK && acks_valid(&doc);
}

size_t fo_outbox_on_acks(fo_outbox_t *o, const fo_storage_port_t *s, const uint8_t *msg,
                         size_t len, fo_json_tok_t *tokens, size_t max_tokens, uint8_t *buf)
{
    fo_json_doc_t doc;
    char id[33];
    if (fo_json_parse(msg, len, tokens, max_tokens, 4, &doc) != FO_OK || !acks_valid(&doc)) {
        return 0;
    }
    long list = fo_json_member(&doc, 0, "event_ids");
    if (list < 0) { /* telemetry alone: fo_batches_on_acks */
        return 0;
    }
    size_t removed = 0;
    for (size_t k = (size_t)list + 1; k < doc.tok[list].next; k = doc.tok[k].next) {
        (void)event_id(&doc, k, id); /* valid: checked above */
        for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
            fo_event_slot_t *e = &o->slot[i];
            if (e->pending && memcmp(e->id, id, 32) == 0) {
                /* The header alone stays (its order and key). If this save fails the
                 * event is sent again after a restart and confirmed again: harmless. */
                uint64_t key = e->order == o->order ? o->last_key : 0;
                (void)save(s, i, e->order, key, NULL, 0, buf);
                e->pending = 0;
                removed++;
                break;
            }
        }
    }
    return removed;
}

/* 5 s after the first try, doubling to 60 s. */
static int64_t next_wait(unsigned tries)
{
    int64_t wait = FO_RESEND_FIRST_US;
    for (unsigned k = 0; k < tries && wait < FO_RESEND_MAX_US; k++) {
        wait *= 2;
    }
    return wait < FO_RESEND_MAX_US ? wait : FO_RESEND_MAX_US;
}

/* The schedule events and telemetry share. Nonzero when an unconfirmed message is due
 * now; then its next try is set, one backoff step later. */
static int resend_take(uint8_t pending, int64_t *due_us, uint8_t *tries, int64_t now_us)
{
    if (!pending || *due_us > now_us) {
        return 0;
    }
    *due_us = now_us + next_wait(*tries);
    if (*tries < 255) {
        (*tries)++;
    }
    return 1;
}

/* After a (re)connection: the backoff starts over, and nothing waits past the first delay. */
static void resend_restart(int64_t *due_us, uint8_t *tries, int64_t now_us)
{
    *tries = 1;
    if (*due_us > now_us + FO_RESEND_FIRST_US) {
        *due_us = now_us + FO_RESEND_FIRST_US;
    }
}

void fo_outbox_resend_due(fo_outbox_t *o, const fo_storage_port_t *s, const fo_mqtt_port_t *mqtt,
                          int64_t now_us, uint8_t *buf)
{
    for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
        fo_event_slot_t *e = &o->slot[i];
        if (!resend_take(e->pending, &e->due_us, &e->tries, now_us)) {
            continue;
        }
        long len = load(s, i, buf);
        if (len != (long)e->len) {
            e->pending = 0; /* the record changed under us: nothing sound to send */
            continue;
        }
        (void)mqtt->publish(mqtt->ctx, "events", buf + FO_EVENT_RECORD_HEADER, (size_t)len);
    }
}

void fo_outbox_on_connected(fo_outbox_t *o, int64_t now_us)
{
    for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
        fo_event_slot_t *e = &o->slot[i];
        resend_restart(&e->due_us, &e->tries, now_us);
    }
}

size_t fo_outbox_pending(const fo_outbox_t *o)
{
    size_t n = 0;
    for (unsigned i = 0; i < FLEET_OTA_EVENT_QUEUE; i++) {
        n += o->slot[i].pending;
    }
    return n;
}

void fo_outbox_take_id(fo_outbox_t *o, char id[33])
{
    fo_outbox_next_id(o, id);
    o->next++;
}

fo_code_t fo_batches_add(fo_batches_t *b, const char id[33], const char *text, size_t len,
                         int64_t now_us)
{
    if (len > FLEET_OTA_TELEMETRY_BYTES) {
        return FO_PAYLOAD_TOO_LARGE;
    }
    /* The oldest free slot; when all wait, the oldest message goes (as the Python agent). */
    unsigned pick = 0;
    for (unsigned i = 1; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
        const fo_batch_slot_t *x = &b->slot[i], *y = &b->slot[pick];
        if (x->pending < y->pending || (x->pending == y->pending && x->order < y->order)) {
            pick = i;
        }
    }
    fo_batch_slot_t *s = &b->slot[pick];
    if (s->pending) {
        b->dropped++;
    }
    memcpy(s->text, text, len);
    memcpy(s->id, id, 32);
    s->id[32] = 0;
    s->len = (uint16_t)len;
    s->order = ++b->order;
    s->pending = 1;
    s->tries = 1;
    s->due_us = now_us + FO_RESEND_FIRST_US;
    return FO_OK;
}

size_t fo_batches_on_acks(fo_batches_t *b, const uint8_t *msg, size_t len,
                          fo_json_tok_t *tokens, size_t max_tokens)
{
    fo_json_doc_t doc;
    char id[33];
    if (fo_json_parse(msg, len, tokens, max_tokens, 4, &doc) != FO_OK || !acks_valid(&doc)) {
        return 0;
    }
    long list = fo_json_member(&doc, 0, "batch_ids");
    if (list < 0) {
        return 0;
    }
    size_t removed = 0;
    for (size_t k = (size_t)list + 1; k < doc.tok[list].next; k = doc.tok[k].next) {
        (void)event_id(&doc, k, id); /* valid: checked above */
        for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
            fo_batch_slot_t *s = &b->slot[i];
            if (s->pending && memcmp(s->id, id, 32) == 0) {
                s->pending = 0;
                removed++;
                break;
            }
        }
    }
    return removed;
}

void fo_batches_resend_due(fo_batches_t *b, const fo_mqtt_port_t *mqtt, int64_t now_us)
{
    for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
        fo_batch_slot_t *s = &b->slot[i];
        if (resend_take(s->pending, &s->due_us, &s->tries, now_us)) {
            (void)mqtt->publish(mqtt->ctx, "telemetry", (const uint8_t *)s->text, s->len);
        }
    }
}

void fo_batches_on_connected(fo_batches_t *b, int64_t now_us)
{
    for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
        fo_batch_slot_t *s = &b->slot[i];
        resend_restart(&s->due_us, &s->tries, now_us);
    }
}

size_t fo_batches_pending(const fo_batches_t *b)
{
    size_t n = 0;
    for (unsigned i = 0; i < FLEET_OTA_TELEMETRY_QUEUE; i++) {
        n += b->slot[i].pending;
    }
    return n;
}
