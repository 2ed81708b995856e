/* Bounded strict JSON tokenizer (include/fleet_ota/json.h). Recursive descent, depth
 * bounded by max_depth (at most FO_JSON_DEPTH_LIMIT), no allocation. */
#include "fleet_ota/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FO_JSON_DEPTH_LIMIT 64
/* CPython refuses integer literals of more digits (sys.int_info.default_max_str_digits). */
#define FO_JSON_MAX_INT_DIGITS 4300

typedef struct {
    const uint8_t *s;
    size_t n;
    size_t pos;
    fo_json_tok_t *tok;
    size_t max;
    size_t count;
    unsigned depth;
    unsigned max_depth;
} parser_t;

static void skip_ws(parser_t *p)
{
    while (p->pos < p->n) {
        uint8_t c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            return;
        }
        p->pos++;
    }
}

static long alloc_tok(parser_t *p, fo_json_type_t type, size_t start)
{
    if (p->count >= p->max || p->count >= UINT32_MAX) {
        return -1;
    }
    fo_json_tok_t *t = &p->tok[p->count];
    memset(t, 0, sizeof(*t));
    t->type = (uint8_t)type;
    t->start = (uint32_t)start;
    return (long)p->count++;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) {
            lo = 0xA0;
        } else if (c == 0xED) {
            hi = 0x9F;
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F;
        }
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
    }
    return len;
}

static int parse_string(parser_t *p, long *index)
{
    size_t start = ++p->pos; /* after the quote */
    uint8_t flags = 0;
    while (p->pos < p->n) {
        uint8_t c = p->s[p->pos];
        if (c == '"') {
            long i = alloc_tok(p, FO_JSON_STRING, start);
            if (i < 0) {
                return -1;
            }
            p->tok[i].len = (uint32_t)(p->pos - start);
            p->tok[i].flags = flags;
            p->tok[i].next = (uint32_t)(i + 1);
            p->pos++;
            *index = i;
            return 0;
        }
        if (c < 0x20) {
            return -1;
        }
        if (c == '\\') {
            flags |= FO_JSON_F_ESCAPED;
            if (p->pos + 1 >= p->n) {
                return -1;
            }
            uint8_t e = p->s[p->pos + 1];
            if (e == 'u') {
                if (p->pos + 6 > p->n) {
                    return -1;
                }
                for (size_t k = 2; k < 6; k++) {
                    if (hexval(p->s[p->pos + k]) < 0) {
                        return -1;
                    }
                }
                p->pos += 6;
            } else if (strchr("\"\\/bfnrt", e) != NULL && e != 0) {
                p->pos += 2;
            } else {
                return -1;
            }
            continue;
        }
        if (c >= 0x80) {
            size_t l = utf8_len(p->s + p->pos, p->n - p->pos);
            if (l == 0) {
                return -1;
            }
            p->pos += l;
            continue;
        }
        p->pos++;
    }
    return -1;
}

/* Whether a float literal overflows a double (Python's float() gives inf: refused). */
static int float_overflows(const uint8_t *s, size_t n)
{
    size_t i = 0, intlen = 0;
    if (s[i] == '-') {
        i++;
    }
    size_t digits_start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        intlen++;
    }
    size_t frac_start = i < n && s[i] == '.' ? i + 1 : i;
    size_t frac_end = frac_start;
    while (frac_end < n && s[frac_end] >= '0' && s[frac_end] <= '9') {
        frac_end++;
    }
    long long exp = 0;
    if (frac_end < n && (s[frac_end] == 'e' || s[frac_end] == 'E')) {
        size_t k = frac_end + 1;
        int neg = 0;
        if (s[k] == '+' || s[k] == '-') {
            neg = s[k] == '-';
            k++;
        }
        for (; k < n; k++) {
            if (exp < 1000000000LL) {
                exp = exp * 10 + (s[k] - '0');
            }
        }
        if (neg) {
            exp = -exp;
        }
    }
    /* The significant digits, int part then fraction, and the position of the first
     * non-zero one: value = 0.d1d2... * 10^e10. */
    long long first = -1;
    size_t total = intlen + (frac_end - frac_start);
    for (size_t k = 0; k < total; k++) {
        uint8_t d = k < intlen ? s[digits_start + k] : s[frac_start + (k - intlen)];
        if (d != '0') {
            first = (long long)k;
            break;
        }
    }
    if (first < 0) {
        return 0;
    }
    long long e10 = (long long)intlen - first + exp;
    if (e10 <= 308) {
        return 0; /* below 1e308 < DBL_MAX */
    }
    if (e10 >= 310) {
        return 1;
    }
    /* [1e308, 1e309): let strtod round. Every digit of the overflow boundary
     * (2**1024 - 2**970, 309 digits) is kept; a sticky 1 stands for the rest. */
    char buf[330];
    size_t b = 0;
    buf[b++] = '0';
    buf[b++] = '.';
    int rest_nonzero = 0;
    for (size_t k = (size_t)first; k < total; k++) {
        uint8_t d = k < intlen ? s[digits_start + k] : s[frac_start + (k - intlen)];
        if (b < 2 + 312) {
            buf[b++] = (char)d;
        } else if (d != '0') {
            rest_nonzero = 1;
        }
    }
    if (rest_nonzero) {
        buf[b++] = '1';
    }
    memcpy(buf + b, "e309", 5);
    return isinf(strtod(buf, NULL)) ? 1 : 0;
}

static int parse_number(parser_t *p, long *index)
{
    size_t start = p->pos;
    const uint8_t *s = p->s;
    size_t n = p->n;
    int integer = 1;
    if (s[p->pos] == '-') {
        p->pos++;
    }
    if (p->pos >= n) {
        return -1;
    }
    size_t digits = p->pos;
    if (s[p->pos] == '0') {
        p->pos++;
    } else if (s[p->pos] >= '1' && s[p->pos] <= '9') {
        while (p->pos < n && s[p->pos] >= '0' && s[p->pos] <= '9') {
            p->pos++;
        }
    } else {
        return -1;
    }
    size_t ndigits = p->pos - digits;
    if (p->pos < n && s[p->pos] == '.') {
        integer = 0;
        p->pos++;
        size_t f = p->pos;
        while (p->pos < n && s[p->pos] >= '0' && s[p->pos] <= '9') {
            p->pos++;
        }
        if (p->pos == f) {
            return -1;
        }
    }
    if (p->pos < n && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        integer = 0;
        p->pos++;
        if (p->pos < n && (s[p->pos] == '+' || s[p->pos] == '-')) {
            p->pos++;
        }
        size_t e = p->pos;
        while (p->pos < n && s[p->pos] >= '0' && s[p->pos] <= '9') {
            p->pos++;
        }
        if (p->pos == e) {
            return -1;
        }
    }
    if (integer ? ndigits > FO_JSON_MAX_INT_DIGITS : float_overflows(s + start, p->pos - start)) {
        return -1;
    }
    long i = alloc_tok(p, FO_JSON_NUMBER, start);
    if (i < 0) {
        return -1;
    }
    p->tok[i].len = (uint32_t)(p->pos - start);
    p->tok[i].flags = integer ? FO_JSON_F_INTEGER : 0;
    p->tok[i].next = (uint32_t)(i + 1);
    *index = i;
    return 0;
}

static int parse_literal(parser_t *p, const char *word, fo_json_type_t type, long *index)
{
    size_t len = strlen(word);
    if (p->n - p->pos < len || memcmp(p->s + p->pos, word, len) != 0) {
        return -1;
    }
    long i = alloc_tok(p, type, p->pos);
    if (i < 0) {
        return -1;
    }
    p->tok[i].len = (uint32_t)len;
    p->tok[i].next = (uint32_t)(i + 1);
    p->pos += len;
    *index = i;
    return 0;
}

static int parse_value(parser_t *p, long *index);

static int parse_container(parser_t *p, long *index, int object)
{
    if (++p->depth > p->max_depth) {
        return -1;
    }
    long c = alloc_tok(p, object ? FO_JSON_OBJECT : FO_JSON_ARRAY, p->pos);
    if (c < 0) {
        return -1;
    }
    p->pos++;
    uint8_t close = object ? '}' : ']';
    uint32_t count = 0;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            long item;
            if (object) {
                if (p->pos >= p->n || p->s[p->pos] != '"' || parse_string(p, &item) < 0) {
                    return -1;
                }
                fo_json_doc_t doc = {p->s, p->n, p->tok, p->count};
                size_t k = (size_t)c + 1;
                for (uint32_t m = 0; m < count; m++) {
                    if (fo_json_str_eq_tok(&doc, k, (size_t)item)) {
                        return -1; /* duplicate key */
                    }
                    k = p->tok[k + 1].next;
                }
                skip_ws(p);
                if (p->pos >= p->n || p->s[p->pos] != ':') {
                    return -1;
                }
                p->pos++;
                skip_ws(p);
            }
            if (parse_value(p, &item) < 0) {
                return -1;
            }
            if (++count > UINT16_MAX) {
                return -1;
            }
            skip_ws(p);
            if (p->pos >= p->n) {
                return -1;
            }
            if (p->s[p->pos] == ',') {
                p->pos++;
                skip_ws(p);
                continue;
            }
            if (p->s[p->pos] == close) {
                p->pos++;
                break;
            }
            return -1;
        }
    }
    p->tok[c].count = (uint16_t)count;
    p->tok[c].len = (uint32_t)(p->pos - p->tok[c].start);
    p->tok[c].next = (uint32_t)p->count;
    p->depth--;
    *index = c;
    return 0;
}

static int parse_value(parser_t *p, long *index)
{
    if (p->pos >= p->n) {
        return -1;
    }
    switch (p->s[p->pos]) {
    case '{':
        return parse_container(p, index, 1);
    case '[':
        return parse_container(p, index, 0);
    case '"':
        return parse_string(p, index);
    case 't':
        return parse_literal(p, "true", FO_JSON_TRUE, index);
    case 'f':
        return parse_literal(p, "false", FO_JSON_FALSE, index);
    case 'n':
        return parse_literal(p, "null", FO_JSON_NULL, index);
    default:
        return parse_number(p, index);
    }
}

fo_code_t fo_json_parse(const uint8_t *text, size_t len, fo_json_tok_t *tokens,
                        size_t max_tokens, unsigned max_depth, fo_json_doc_t *doc)
{
    parser_t p = {text, len, 0, tokens, max_tokens, 0, 0,
                  max_depth > FO_JSON_DEPTH_LIMIT ? FO_JSON_DEPTH_LIMIT : max_depth};
    long root;
    memset(doc, 0, sizeof(*doc));
    skip_ws(&p);
    if (parse_value(&p, &root) < 0) {
        return FO_MALFORMED;
    }
    skip_ws(&p);
    if (p.pos != len) {
        return FO_MALFORMED;
    }
    doc->text = text;
    doc->text_len = len;
    doc->tok = tokens;
    doc->count = p.count;
    return FO_OK;
}

/* --- reading strings --------------------------------------------------------------- */

typedef struct {
    const uint8_t *s;
    size_t pos;
    size_t end;
} cursor_t;

static unsigned hex4(const uint8_t *s)
{
    return (unsigned)(hexval(s[0]) << 12 | hexval(s[1]) << 8 | hexval(s[2]) << 4 | hexval(s[3]));
}

/* The next code point of a validated string (a lone surrogate is returned as itself),
 * or -1 at the end. */
static long next_cp(cursor_t *c)
{
    if (c->pos >= c->end) {
        return -1;
    }
    const uint8_t *s = c->s + c->pos;
    if (s[0] == '\\') {
        uint8_t e = s[1];
        c->pos += 2;
        switch (e) {
        case 'b':
            return '\b';
        case 'f':
            return '\f';
        case 'n':
            return '\n';
        case 'r':
            return '\r';
        case 't':
            return '\t';
        case 'u': {
            unsigned u = hex4(s + 2);
            c->pos += 4;
            if (u >= 0xD800 && u <= 0xDBFF && c->pos + 6 <= c->end && s[6] == '\\' &&
                s[7] == 'u') {
                unsigned lo = hex4(s + 8);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    c->pos += 6;
                    return 0x10000 + ((long)(u - 0xD800) << 10) + (long)(lo - 0xDC00);
                }
            }
            return (long)u;
        }
        default:
            return e; /* " \ / */
        }
    }
    if (s[0] < 0x80) {
        c->pos++;
        return s[0];
    }
    long cp;
    size_t len;
    if (s[0] < 0xE0) {
        cp = s[0] & 0x1F;
        len = 2;
    } else if (s[0] < 0xF0) {
        cp = s[0] & 0x0F;
        len = 3;
    } else {
        cp = s[0] & 0x07;
        len = 4;
    }
    for (size_t i = 1; i < len; i++) {
        cp = cp << 6 | (s[i] & 0x3F);
    }
    c->pos += len;
    return cp;
}

static cursor_t cursor(const fo_json_doc_t *doc, size_t i)
{
    cursor_t c = {doc->text, doc->tok[i].start, (size_t)doc->tok[i].start + doc->tok[i].len};
    return c;
}

int fo_json_str_eq(const fo_json_doc_t *doc, size_t i, const char *lit)
{
    if (i >= doc->count || doc->tok[i].type != FO_JSON_STRING) {
        return 0;
    }
    const fo_json_tok_t *t = &doc->tok[i];
    if (!(t->flags & FO_JSON_F_ESCAPED)) {
        return strlen(lit) == t->len && memcmp(doc->text + t->start, lit, t->len) == 0;
    }
    cursor_t c = cursor(doc, i);
    for (const char *l = lit;; l++) {
        long cp = next_cp(&c);
        if (*l == '\0') {
            return cp < 0;
        }
        if (cp != (unsigned char)*l) {
            return 0;
        }
    }
}

int fo_json_str_eq_tok(const fo_json_doc_t *doc, size_t a, size_t b)
{
    const fo_json_tok_t *ta = &doc->tok[a], *tb = &doc->tok[b];
    if (!((ta->flags | tb->flags) & FO_JSON_F_ESCAPED)) {
        return ta->len == tb->len &&
               memcmp(doc->text + ta->start, doc->text + tb->start, ta->len) == 0;
    }
    cursor_t ca = cursor(doc, a), cb = cursor(doc, b);
    for (;;) {
        long x = next_cp(&ca), y = next_cp(&cb);
        if (x != y) {
            return 0;
        }
        if (x < 0) {
            return 1;
        }
    }
}

long fo_json_member(const fo_json_doc_t *doc, size_t obj, const char *key)
{
    if (obj >= doc->count || doc->tok[obj].type != FO_JSON_OBJECT) {
        return -1;
    }
    size_t k = obj + 1;
    for (unsigned m = 0; m < doc->tok[obj].count; m++) {
        if (fo_json_str_eq(doc, k, key)) {
            return (long)(k + 1);
        }
        k = doc->tok[k + 1].next;
    }
    return -1;
}

long fo_json_unescape(const fo_json_doc_t *doc, size_t i, uint8_t *out, size_t cap)
{
    if (i >= doc->count || doc->tok[i].type != FO_JSON_STRING) {
        return -1;
    }
    cursor_t c = cursor(doc, i);
    size_t o = 0;
    for (;;) {
        long cp = next_cp(&c);
        if (cp < 0) {
            break;
        }
        uint8_t enc[4];
        size_t len;
        if (cp < 0x80) {
            enc[0] = (uint8_t)cp;
            len = 1;
        } else if (cp < 0x800) {
            enc[0] = (uint8_t)(0xC0 | cp >> 6);
            enc[1] = (uint8_t)(0x80 | (cp & 0x3F));
            len = 2;
        } else if (cp < 0x10000) {
            enc[0] = (uint8_t)(0xE0 | cp >> 12);
            enc[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            enc[2] = (uint8_t)(0x80 | (cp & 0x3F));
            len = 3;
        } else {
            enc[0] = (uint8_t)(0xF0 | cp >> 18);
            enc[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            enc[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            enc[3] = (uint8_t)(0x80 | (cp & 0x3F));
            len = 4;
        }
        if (o + len >= cap) {
            return -1;
        }
        /* In place, output never overtakes input: every escape is at least as long as
         * its encoding (\uXXXX is 6 bytes for at most 3, a pair 12 for 4). */
        memcpy(out + o, enc, len);
        o += len;
    }
    out[o] = 0;
    return (long)o;
}

int fo_json_uint(const fo_json_doc_t *doc, size_t i, uint64_t *value)
{
    if (i >= doc->count) {
        return 0;
    }
    const fo_json_tok_t *t = &doc->tok[i];
    if (t->type != FO_JSON_NUMBER || !(t->flags & FO_JSON_F_INTEGER)) {
        return 0;
    }
    const uint8_t *s = doc->text + t->start;
    size_t n = t->len;
    if (s[0] == '-') {
        if (n == 2 && s[1] == '0') {
            *value = 0;
            return 1;
        }
        return 0;
    }
    if (n > 16) {
        return 0;
    }
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++) {
        v = v * 10 + (uint64_t)(s[k] - '0');
    }
    if (v > 9007199254740991ULL) {
        return 0;
    }
    *value = v;
    return 1;
}
