/* Field formats of docs/protocol.md, as full matches over (pointer, length): the same
 * classes as device_agent/protocol/messages.py's regular expressions, ASCII only. */
#ifndef FLEET_OTA_TEXT_H
#define FLEET_OTA_TEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int fo_is_device_id(const uint8_t *s, size_t n);  /* [A-Za-z0-9_-]{1,64}, also rollout id, arm */
int fo_is_segment(const uint8_t *s, size_t n);    /* [a-z0-9][a-z0-9_-]{0,63}: model, hardware */
int fo_is_filename(const uint8_t *s, size_t n);   /* [A-Za-z0-9][A-Za-z0-9._-]{0,127} */
int fo_is_sha256_hex(const uint8_t *s, size_t n); /* [0-9a-f]{64} */
int fo_is_semver(const uint8_t *s, size_t n);     /* SEMVER_RE */

/* Characters (code points) in UTF-8 text; a lone surrogate's 3 bytes count as one. */
size_t fo_text_chars(const uint8_t *s, size_t n);

/* Printable text: no C0 control, DEL or (lone) surrogate; 1..max_chars characters. */
int fo_is_text(const uint8_t *s, size_t n, size_t max_chars);

/* An absolute http(s) URL as the protocol allows it. */
int fo_is_url(const uint8_t *s, size_t n);

/* RFC 3339 UTC `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`, a real date and time (year 1..9999), as
 * microseconds since 1970-01-01T00:00:00Z. */
int fo_parse_timestamp(const uint8_t *s, size_t n, int64_t *us);

/* Format microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (out: 28 bytes). */
void fo_format_timestamp(int64_t us, char out[28]);

/* Hex digits to bytes (lower or upper case); 0 on a non-hex digit. */
int fo_hex_decode(const uint8_t *hex, size_t bytes, uint8_t *out);
void fo_hex_encode(const uint8_t *in, size_t bytes, char *out); /* writes 2*bytes + NUL */

#ifdef __cplusplus
}
#endif
#endif
