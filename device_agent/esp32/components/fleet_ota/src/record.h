/* What the client's stored records share: little-endian fields and a CRC-32 check. */
#ifndef FLEET_OTA_RECORD_H
#define FLEET_OTA_RECORD_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32 (IEEE 802.3, the zlib one) of `n` bytes at `p`. */
uint32_t fo_crc32(const uint8_t *p, size_t n);
/* `v` in the `n` bytes at `p`, least significant first. */
void fo_put_le(uint8_t *p, uint64_t v, int n);
/* The `n` bytes at `p`, least significant first. */
uint64_t fo_get_le(const uint8_t *p, int n);

#endif
