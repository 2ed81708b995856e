/* Enrollment, as the Python agent's `fleet-agent enroll` (device_agent/cli.py) through the
 * same API (POST /api/v1/enroll, docs/api.md): a P-256 device key and a CSR (CN = device
 * id) made with mbedTLS, traded with a one-time token for the device certificate, the
 * broker's CA, the director's public key and the broker URL. The results are saved as
 * records: "key" (the private key, PEM), "cert", "ca", "director",
 * "broker" (the broker URL). The posix port keeps them as files, which the MQTT port
 * hands to the TLS stack. */
#ifndef FLEET_OTA_ENROLL_H
#define FLEET_OTA_ENROLL_H

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_ota/codes.h"
#include "fleet_ota/json.h"
#include "fleet_ota/port.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef FLEET_OTA_ENROLL_RESPONSE
#define FLEET_OTA_ENROLL_RESPONSE 16384 /* the answer carries the TUF root too */
#endif
#define FO_ENROLL_TOKENS 512

/* Working memory of one enrollment (run once, before the agent: a device can overlay it
 * on the agent's own memory). */
typedef struct {
    /* mbedTLS's random generator: here, not on the stack (Debian's entropy context
     * alone is 37 960 bytes; ESP-IDF's is far smaller). */
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    char key_pem[512];
    char csr_pem[1024];
    char body[2048];
    uint8_t response[FLEET_OTA_ENROLL_RESPONSE];
    fo_json_tok_t tokens[FO_ENROLL_TOKENS];
    char detail[256]; /* the server's error detail, or ours */
} fo_enroll_t;

/* Enroll `device_id` (`hardware`) at `server` (e.g. "https://fleet.example"; the API is
 * under /api/v1/) with `token`. FO_OK and the records saved, or the server's error code
 * (e.g. FO_UNAUTHORIZED for a used token, FO_CONFLICT for an enrolled id), FO_DOWNLOAD_FAILED
 * when the server cannot be reached, FO_MALFORMED for an answer that is not one; `detail`
 * says more. Nothing is saved unless everything checked out. */
fo_code_t fo_enroll(fo_enroll_t *e, const fo_http_port_t *http, const fo_storage_port_t *storage,
                    const char *server, const char *token, const char *device_id,
                    const char *hardware, const char *agent_version);

#ifdef __cplusplus
}
#endif
#endif
