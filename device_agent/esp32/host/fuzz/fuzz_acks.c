/* libFuzzer: `acks` payloads (untrusted, from the broker) through the event outbox with
 * pending events and the telemetry batches with pending messages: never a crash, and a
 * payload it refuses confirms nothing. */
#include <stdlib.h>
#include <string.h>

#include "fleet_ota/config.h"
#include "fleet_ota/outbox.h"

static fo_code_t no_save(void *ctx, const char *name, const uint8_t *buf, size_t len)
{
    (void)ctx;
    (void)name;
    (void)buf;
    (void)len;
    return FO_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fo_json_tok_t tokens[FLEET_OTA_MAX_TOKENS];
    static fo_outbox_t outbox;
    static uint8_t scratch[FO_EVENT_RECORD_HEADER + FO_EVENT_BYTES];
    static const char *const ids[] = {"0123456789abcdef0123456789abcdef",
                                      "fedcba9876543210fedcba9876543210"};
    fo_storage_port_t storage = {0};
    storage.record_save = no_save;
    memset(&outbox, 0, sizeof(outbox));
    for (int i = 0; i < 2; i++) {
        outbox.slot[i].pending = 1;
        outbox.slot[i].order = (uint64_t)i + 1;
        memcpy(outbox.slot[i].id, ids[i], 33);
    }
    int valid = fo_outbox_acks_valid(data, size, tokens, FLEET_OTA_MAX_TOKENS);
    size_t removed =
        fo_outbox_on_acks(&outbox, &storage, data, size, tokens, FLEET_OTA_MAX_TOKENS, scratch);
    if ((!valid && removed != 0) || removed + fo_outbox_pending(&outbox) != 2) {
        abort();
    }
    static fo_batches_t batches;
    memset(&batches, 0, sizeof(batches));
    for (int i = 0; i < 2; i++) {
        if (fo_batches_add(&batches, ids[i], "{}", 2, 0) != FO_OK) {
            abort();
        }
    }
    removed = fo_batches_on_acks(&batches, data, size, tokens, FLEET_OTA_MAX_TOKENS);
    if ((!valid && removed != 0) || removed + fo_batches_pending(&batches) != 2) {
        abort();
    }
    return 0;
}
