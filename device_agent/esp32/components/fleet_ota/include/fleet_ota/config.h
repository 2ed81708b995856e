/* Compile-time limits of the C client (docs/protocol.md, "The C client's limits").
 * Each can be overridden with -D; the defaults are what the shared vectors assume. */
#ifndef FLEET_OTA_CONFIG_H
#define FLEET_OTA_CONFIG_H

/* Largest `desired` envelope accepted; larger ones are payload_too_large. */
#ifndef FLEET_OTA_MAX_ENVELOPE
#define FLEET_OTA_MAX_ENVELOPE 16384
#endif

/* JSON tokens (keys and values) per document, and nesting depth. */
#ifndef FLEET_OTA_MAX_TOKENS
#define FLEET_OTA_MAX_TOKENS 1024
#endif
#ifndef FLEET_OTA_MAX_DEPTH
#define FLEET_OTA_MAX_DEPTH 16
#endif

/* How far issued_at may be ahead of the device's trusted time, in seconds. */
#ifndef FLEET_OTA_MAX_SKEW_S
#define FLEET_OTA_MAX_SKEW_S 300
#endif

/* Protocol limits (device_agent/protocol/messages.py), not to be changed. */
#define FO_MAX_MODELS 32
#define FO_MAX_SIGNATURES 4
#define FO_MAX_DER_SIGNATURE 72
#define FO_MAX_URL_CHARS 4096
#define FO_MAX_VERSION_CHARS 64
#define FO_MAX_PATH_CHARS 512
#define FO_MAX_SAFE_INT 9007199254740991ULL /* 2**53 - 1 */

#endif

#ifndef FLEET_OTA_CONFIG_AGENT_H
#define FLEET_OTA_CONFIG_AGENT_H
/* Models one device keeps (each with two slots). */
#ifndef FLEET_OTA_MAX_LOCAL_MODELS
#define FLEET_OTA_MAX_LOCAL_MODELS 4
#endif
/* The fixed buffer for reading a slot back (re-hashing after a restart). */
#ifndef FLEET_OTA_IO_BUFFER
#define FLEET_OTA_IO_BUFFER 4096
#endif
/* Download progress is made durable every this many bytes (a multiple of the flash
 * sector size): a restart resumes from the last checkpoint with an HTTP Range request. */
/* Attempts of one download that fails in transfer (download_failed, download_timeout). */
#ifndef FLEET_OTA_DOWNLOAD_ATTEMPTS
#define FLEET_OTA_DOWNLOAD_ATTEMPTS 4
#endif
#ifndef FLEET_OTA_CHECKPOINT
#define FLEET_OTA_CHECKPOINT 65536
#endif
#endif
