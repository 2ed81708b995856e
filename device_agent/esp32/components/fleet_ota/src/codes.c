#include "fleet_ota/codes.h"

#include <string.h>

static const char *const NAMES[FO_CODE_COUNT] = {
    "ok",
    "signature_invalid",
    "threshold_not_met",
    "hash_mismatch",
    "length_exceeded",
    "metadata_expired",
    "metadata_too_large",
    "rollback_detected",
    "downgrade_refused",
    "version_mismatch",
    "hw_mismatch",
    "wrong_device",
    "replayed_command",
    "command_expired",
    "issued_in_future",
    "director_image_mismatch",
    "invalid_target_path",
    "download_failed",
    "download_timeout",
    "disk_full",
    "health_check_failed",
    "commit_timeout",
    "version_exists",
    "invalid_version",
    "unknown_model",
    "payload_too_large",
    "malformed",
    "unauthorized",
    "forbidden",
    "conflict",
    "not_found",
    "empty_selection",
    "token_expired",
    "invalid_identifier",
    "method_not_allowed",
    "throttled",
    "internal",
};

const char *fo_code_name(fo_code_t code)
{
    if ((unsigned)code >= (unsigned)FO_CODE_COUNT) {
        return NULL;
    }
    return NAMES[code];
}

fo_code_t fo_code_from_name(const char *name, unsigned long len)
{
    for (unsigned i = 0; i < (unsigned)FO_CODE_COUNT; i++) {
        if (strlen(NAMES[i]) == len && memcmp(NAMES[i], name, len) == 0) {
            return (fo_code_t)i;
        }
    }
    return FO_CODE_COUNT;
}
