#include "fleet_ota/text.h"

#include <stdio.h>
#include <string.h>

static int alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

int fo_is_device_id(const uint8_t *s, size_t n)
{
    if (n < 1 || n > 64) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!alnum(s[i]) && s[i] != '_' && s[i] != '-') {
            return 0;
        }
    }
    return 1;
}

static int name_like(const uint8_t *s, size_t n, size_t max)
{
    if (n < 1 || n > max || !alnum(s[0])) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if (!alnum(s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-') {
            return 0;
        }
    }
    return 1;
}

static int lower_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');
}

/* Model names and hardware (device_agent/protocol/identifiers.py): lower case, no dot. */
int fo_is_segment(const uint8_t *s, size_t n)
{
    if (n < 1 || n > 64 || !lower_alnum(s[0])) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if (!lower_alnum(s[i]) && s[i] != '_' && s[i] != '-') {
            return 0;
        }
    }
    return 1;
}

int fo_is_filename(const uint8_t *s, size_t n)
{
    return name_like(s, n, 128);
}

int fo_is_sha256_hex(const uint8_t *s, size_t n)
{
    if (n != 64) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!digit(s[i]) && !(s[i] >= 'a' && s[i] <= 'f')) {
            return 0;
        }
    }
    return 1;
}

/* 0 | [1-9][0-9]*, returning the end or NULL. */
static const uint8_t *numeric(const uint8_t *s, const uint8_t *end)
{
    if (s >= end || !digit(*s)) {
        return NULL;
    }
    if (*s == '0') {
        return s + 1;
    }
    while (s < end && digit(*s)) {
        s++;
    }
    return s;
}

/* Dot-separated identifiers of [0-9A-Za-z-]+ up to `end`; with `pre`, an all-digit one
 * must have no leading zero. */
static int identifiers(const uint8_t *s, const uint8_t *end, int pre)
{
    for (;;) {
        const uint8_t *start = s;
        int all_digits = 1;
        while (s < end && (alnum(*s) || *s == '-')) {
            all_digits &= digit(*s);
            s++;
        }
        if (s == start) {
            return 0;
        }
        if (pre && all_digits && *start == '0' && s - start > 1) {
            return 0;
        }
        if (s == end) {
            return 1;
        }
        if (*s != '.') {
            return 0;
        }
        s++;
    }
}

int fo_is_semver(const uint8_t *s, size_t n)
{
    const uint8_t *end = s + n;
    for (int part = 0; part < 3; part++) {
        s = numeric(s, end);
        if (s == NULL) {
            return 0;
        }
        if (part < 2) {
            if (s >= end || *s != '.') {
                return 0;
            }
            s++;
        }
    }
    const uint8_t *plus = memchr(s, '+', (size_t)(end - s));
    if (s < end && *s == '-') {
        const uint8_t *pre_end = plus != NULL ? plus : end;
        if (!identifiers(s + 1, pre_end, 1)) {
            return 0;
        }
        s = pre_end;
    }
    if (s < end && *s == '+') {
        return identifiers(s + 1, end, 0);
    }
    return s == end;
}

size_t fo_text_chars(const uint8_t *s, size_t n)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) {
        chars += (s[i] & 0xC0) != 0x80;
    }
    return chars;
}

int fo_is_text(const uint8_t *s, size_t n, size_t max_chars)
{
    if (n == 0 || fo_text_chars(s, n) > max_chars) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] == 0x7F) {
            return 0;
        }
        /* ED A0..BF: a surrogate's 3-byte form, which only an escape can produce. */
        if (s[i] == 0xED && i + 1 < n && s[i + 1] >= 0xA0) {
            return 0;
        }
    }
    return 1;
}

int fo_is_url(const uint8_t *s, size_t n)
{
    if (!fo_is_text(s, n, 4096) || memchr(s, ' ', n) != NULL) {
        return 0;
    }
    size_t scheme;
    if (n >= 7 && memcmp(s, "http://", 7) == 0) {
        scheme = 7;
    } else if (n >= 8 && memcmp(s, "https://", 8) == 0) {
        scheme = 8;
    } else {
        return 0;
    }
    return n > scheme && s[scheme] != '/';
}

static int two(const uint8_t *s)
{
    return (s[0] - '0') * 10 + (s[1] - '0');
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int fo_parse_timestamp(const uint8_t *s, size_t n, int64_t *us)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    if (n < 20) {
        return 0;
    }
    for (size_t i = 0; i < 19; i++) {
        if (shape[i] == 'd' ? !digit(s[i]) : s[i] != (uint8_t)shape[i]) {
            return 0;
        }
    }
    int64_t micro = 0;
    size_t i = 19;
    if (s[i] == '.') {
        size_t f = ++i;
        while (i < n && digit(s[i]) && i - f < 6) {
            micro = micro * 10 + (s[i] - '0');
            i++;
        }
        if (i == f) {
            return 0;
        }
        for (size_t k = i - f; k < 6; k++) {
            micro *= 10;
        }
    }
    if (i + 1 != n || s[i] != 'Z') {
        return 0;
    }
    int year = two(s) * 100 + two(s + 2);
    int month = two(s + 5), day = two(s + 8);
    int hour = two(s + 11), minute = two(s + 14), second = two(s + 17);
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1 || month < 1 || month > 12 || day < 1 ||
        day > mdays[month - 1] + (month == 2 && leap) || hour > 23 || minute > 59 ||
        second > 59) {
        return 0;
    }
    int64_t days = days_from_civil(year, (unsigned)month, (unsigned)day);
    *us = ((days * 86400 + hour * 3600 + minute * 60 + second) * 1000000) + micro;
    return 1;
}

void fo_format_timestamp(int64_t us, char out[28])
{
    int64_t secs = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
    int64_t micro = us - secs * 1000000;
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    int64_t rem = secs - days * 86400;
    /* civil_from_days (H. Hinnant) */
    int64_t z = days + 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = (int64_t)yoe + era * 400 + (m <= 2);
    if (y < 1 || y > 9999) {
        y = y < 1 ? 1 : 9999; /* out of the protocol's range: clamp, never overflow out */
    }
    int n = snprintf(out, 28, "%04d-%02u-%02uT%02d:%02d:%02d", (int)y, m, d, (int)(rem / 3600),
                     (int)(rem / 60 % 60), (int)(rem % 60));
    if (micro != 0) {
        n += snprintf(out + n, (size_t)(28 - n), ".%06d", (int)micro);
    }
    snprintf(out + n, (size_t)(28 - n), "Z");
}

int fo_hex_decode(const uint8_t *hex, size_t bytes, uint8_t *out)
{
    for (size_t i = 0; i < 2 * bytes; i++) {
        uint8_t c = hex[i];
        int v = digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                   : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                                            : -1;
        if (v < 0) {
            return 0;
        }
        if (i % 2 == 0) {
            out[i / 2] = (uint8_t)(v << 4);
        } else {
            out[i / 2] |= (uint8_t)v;
        }
    }
    return 1;
}

void fo_hex_encode(const uint8_t *in, size_t bytes, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < bytes; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * bytes] = 0;
}
