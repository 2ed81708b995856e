/* Stable error codes: the strings of device_agent/protocol/errors.py (docs/protocol.md). */
#ifndef FLEET_OTA_CODES_H
#define FLEET_OTA_CODES_H

#ifdef __cplusplus
extern "C" {
#endif

/* Values are local to this library; only the names go on the wire. Never renumber
 * persisted values: append. */
typedef enum {
    FO_OK = 0,
    FO_SIGNATURE_INVALID,
    FO_THRESHOLD_NOT_MET,
    FO_HASH_MISMATCH,
    FO_LENGTH_EXCEEDED,
    FO_METADATA_EXPIRED,
    FO_METADATA_TOO_LARGE,
    FO_ROLLBACK_DETECTED,
    FO_DOWNGRADE_REFUSED,
    FO_VERSION_MISMATCH,
    FO_HW_MISMATCH,
    FO_WRONG_DEVICE,
    FO_REPLAYED_COMMAND,
    FO_COMMAND_EXPIRED,
    FO_ISSUED_IN_FUTURE,
    FO_DIRECTOR_IMAGE_MISMATCH,
    FO_INVALID_TARGET_PATH,
    FO_DOWNLOAD_FAILED,
    FO_DOWNLOAD_TIMEOUT,
    FO_DISK_FULL,
    FO_HEALTH_CHECK_FAILED,
    FO_COMMIT_TIMEOUT,
    FO_VERSION_EXISTS,
    FO_INVALID_VERSION,
    FO_UNKNOWN_MODEL,
    FO_PAYLOAD_TOO_LARGE,
    FO_MALFORMED,
    FO_UNAUTHORIZED,
    FO_FORBIDDEN,
    FO_CONFLICT,
    FO_NOT_FOUND,
    FO_EMPTY_SELECTION,
    FO_TOKEN_EXPIRED,
    FO_INVALID_IDENTIFIER,
    FO_METHOD_NOT_ALLOWED,
    FO_THROTTLED,
    FO_INTERNAL,
    FO_CODE_COUNT
} fo_code_t;

/* The wire name ("signature_invalid", ...); "ok" for FO_OK, NULL when out of range. */
const char *fo_code_name(fo_code_t code);

/* The code named `name` (length `len`), or FO_CODE_COUNT when there is none. */
fo_code_t fo_code_from_name(const char *name, unsigned long len);

#ifdef __cplusplus
}
#endif
#endif
