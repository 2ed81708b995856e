/* libFuzzer: desired payloads (what a valid signature would let through) through
 * fo_desired_parse, and every parsed string checked to lie inside the input. */
#include <stdlib.h>
#include <string.h>

#include "fleet_ota/desired.h"

static void inside(const fo_str_t *s, const uint8_t *buf, size_t size)
{
    if (s->p != NULL && ((const uint8_t *)s->p < buf ||
                         (const uint8_t *)s->p + s->len > buf + size || s->p[s->len] != 0)) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fo_json_tok_t tokens[FLEET_OTA_MAX_TOKENS];
    static fo_desired_t desired;
    uint8_t *buf = malloc(size + 1);
    memcpy(buf, data, size);
    fo_code_t code = fo_desired_parse(buf, size, tokens, FLEET_OTA_MAX_TOKENS, &desired);
    if (code != FO_OK && code != FO_MALFORMED && code != FO_INVALID_TARGET_PATH &&
        code != FO_PAYLOAD_TOO_LARGE) {
        abort();
    }
    if (code == FO_OK) {
        if (desired.n_models > FO_MAX_MODELS || desired.expires_at_us <= desired.issued_at_us) {
            abort();
        }
        inside(&desired.device_id, buf, size);
        for (size_t k = 0; k < desired.n_models; k++) {
            const fo_model_t *m = &desired.models[k];
            inside(&m->name, buf, size);
            inside(&m->path, buf, size);
            inside(&m->url, buf, size);
            inside(&m->version, buf, size);
            inside(&m->hardware, buf, size);
            inside(&m->rollout_id, buf, size);
            inside(&m->arm, buf, size);
        }
    }
    free(buf);
    return 0;
}
