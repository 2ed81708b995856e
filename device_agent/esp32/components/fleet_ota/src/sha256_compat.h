/* mbedTLS 2.28 (Debian, the host build) names the SHA-256 calls *_ret; 3.x (ESP-IDF 5)
 * removed those names and made the plain ones return int. */
#ifndef FLEET_OTA_SHA256_COMPAT_H
#define FLEET_OTA_SHA256_COMPAT_H

#include <mbedtls/sha256.h>
#include <mbedtls/version.h>

#if MBEDTLS_VERSION_NUMBER >= 0x03000000
#define fo_sha256_starts(ctx) mbedtls_sha256_starts((ctx), 0)
#define fo_sha256_update(ctx, d, n) mbedtls_sha256_update((ctx), (d), (n))
#define fo_sha256_finish(ctx, out) mbedtls_sha256_finish((ctx), (out))
#else
#define fo_sha256_starts(ctx) mbedtls_sha256_starts_ret((ctx), 0)
#define fo_sha256_update(ctx, d, n) mbedtls_sha256_update_ret((ctx), (d), (n))
#define fo_sha256_finish(ctx, out) mbedtls_sha256_finish_ret((ctx), (out))
#endif

#endif
