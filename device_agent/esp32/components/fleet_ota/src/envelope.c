/* DSSE envelope verification, in the order of device_agent/protocol/envelope.py's
 * verify_envelope so that every input gets the same code from both agents. */
#include "fleet_ota/envelope.h"

#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <stdio.h>
#include <string.h>

#include "fleet_ota/config.h"
#include "fleet_ota/text.h"
#include "sha256_compat.h"

/* DER SubjectPublicKeyInfo of an uncompressed P-256 point, up to the point. */
static const uint8_t P256_SPKI_PREFIX[26] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
};

void fo_sha256(const uint8_t *data, size_t len, uint8_t hash[32])
{
    mbedtls_sha256_context ctx;
    mbedtls_sha256_init(&ctx);
    fo_sha256_starts(&ctx);
    fo_sha256_update(&ctx, data, len);
    fo_sha256_finish(&ctx, hash);
    mbedtls_sha256_free(&ctx);
}

static int b64_value(uint8_t c, int urlsafe)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == (urlsafe ? '-' : '+')) {
        return 62;
    }
    if (c == (urlsafe ? '_' : '/')) {
        return 63;
    }
    return -1;
}

fo_code_t fo_b64_decode(const uint8_t *in, size_t len, uint8_t *out, size_t *out_len)
{
    if (len % 4 != 0) {
        return FO_MALFORMED;
    }
    int urlsafe = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '-' || in[i] == '_') {
            urlsafe = 1;
            break;
        }
    }
    size_t pad = 0;
    if (len >= 4 && in[len - 1] == '=') {
        pad = in[len - 2] == '=' ? 2 : 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int v[4];
        for (size_t k = 0; k < 4; k++) {
            if (last && k >= 4 - pad) {
                v[k] = 0;
                continue;
            }
            v[k] = b64_value(in[i + k], urlsafe);
            if (v[k] < 0) {
                return FO_MALFORMED; /* other alphabet, '=' inside, anything else */
            }
        }
        uint32_t triple = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                          (uint32_t)v[3];
        /* Canonical: the bits that padding leaves over must be zero. */
        if (last && pad == 2 && (v[1] & 0x0F) != 0) {
            return FO_MALFORMED;
        }
        if (last && pad == 1 && (v[2] & 0x03) != 0) {
            return FO_MALFORMED;
        }
        size_t bytes = last ? 3 - pad : 3;
        uint8_t b[3] = {(uint8_t)(triple >> 16), (uint8_t)(triple >> 8), (uint8_t)triple};
        memcpy(out + o, b, bytes);
        o += bytes;
    }
    *out_len = o;
    return FO_OK;
}

fo_code_t fo_key_from_pem(const char *pem, size_t len, fo_key_t *key)
{
    static const char begin[] = "-----BEGIN PUBLIC KEY-----";
    static const char end[] = "-----END PUBLIC KEY-----";
    uint8_t b64[128];
    size_t n = 0, i = 0;
    while (i + sizeof(begin) - 1 <= len && memcmp(pem + i, begin, sizeof(begin) - 1) != 0) {
        i++;
    }
    if (i + sizeof(begin) - 1 > len) {
        return FO_MALFORMED;
    }
    for (i += sizeof(begin) - 1; i < len && pem[i] != '-'; i++) {
        if (pem[i] == '\n' || pem[i] == '\r' || pem[i] == ' ' || pem[i] == '\t') {
            continue;
        }
        if (n >= sizeof(b64)) {
            return FO_MALFORMED;
        }
        b64[n++] = (uint8_t)pem[i];
    }
    if (len - i < sizeof(end) - 1 || memcmp(pem + i, end, sizeof(end) - 1) != 0) {
        return FO_MALFORMED;
    }
    uint8_t der[96];
    size_t der_len;
    if (n > 128 || fo_b64_decode(b64, n, b64, &der_len) != FO_OK || der_len != 91) {
        return FO_MALFORMED;
    }
    memcpy(der, b64, der_len);
    if (memcmp(der, P256_SPKI_PREFIX, sizeof(P256_SPKI_PREFIX)) != 0 || der[26] != 0x04) {
        return FO_MALFORMED;
    }
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    int bad = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) != 0 ||
              mbedtls_ecp_point_read_binary(&grp, &q, der + 26, 65) != 0 ||
              mbedtls_ecp_check_pubkey(&grp, &q) != 0;
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    if (bad) {
        return FO_MALFORMED;
    }
    memcpy(key->point, der + 26, 65);
    uint8_t hash[32];
    fo_sha256(der, der_len, hash);
    fo_hex_encode(hash, 32, key->keyid);
    return FO_OK;
}

void fo_pae_sha256(const char *payload_type, const uint8_t *payload, size_t len,
                   uint8_t hash[32])
{
    char head[96];
    size_t type_len = strlen(payload_type);
    mbedtls_sha256_context ctx;
    mbedtls_sha256_init(&ctx);
    fo_sha256_starts(&ctx);
    int n = snprintf(head, sizeof(head), "DSSEv1 %lu ", (unsigned long)type_len);
    fo_sha256_update(&ctx, (const uint8_t *)head, (size_t)n);
    fo_sha256_update(&ctx, (const uint8_t *)payload_type, type_len);
    n = snprintf(head, sizeof(head), " %lu ", (unsigned long)len);
    fo_sha256_update(&ctx, (const uint8_t *)head, (size_t)n);
    fo_sha256_update(&ctx, payload, len);
    fo_sha256_finish(&ctx, hash);
    mbedtls_sha256_free(&ctx);
}

/* One INTEGER of a strict DER signature: positive, minimally encoded, 1..33 bytes. */
static const uint8_t *der_integer(const uint8_t *p, const uint8_t *end, const uint8_t **v,
                                  size_t *vlen)
{
    if (end - p < 2 || p[0] != 0x02) {
        return NULL;
    }
    size_t len = p[1];
    if (len < 1 || len > 33 || (size_t)(end - p - 2) < len) {
        return NULL;
    }
    const uint8_t *body = p + 2;
    if (body[0] & 0x80) {
        return NULL; /* negative */
    }
    if (len > 1 && body[0] == 0x00 && !(body[1] & 0x80)) {
        return NULL; /* superfluous leading zero */
    }
    *v = body;
    *vlen = len;
    return body + len;
}

static int ecdsa_verify(const fo_key_t *key, const uint8_t hash[32], const uint8_t *sig,
                        size_t sig_len)
{
    const uint8_t *end = sig + sig_len, *r, *s;
    size_t rlen, slen;
    /* SEQUENCE, short-form length equal to the rest: DER allows nothing else here. */
    if (sig_len < 8 || sig_len > FO_MAX_DER_SIGNATURE || sig[0] != 0x30 ||
        sig[1] != sig_len - 2) {
        return 0;
    }
    const uint8_t *p = der_integer(sig + 2, end, &r, &rlen);
    p = p == NULL ? NULL : der_integer(p, end, &s, &slen);
    if (p != end) {
        return 0;
    }
    mbedtls_ecp_group grp;
    mbedtls_ecp_point q;
    mbedtls_mpi mr, ms;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&q);
    mbedtls_mpi_init(&mr);
    mbedtls_mpi_init(&ms);
    int ok = mbedtls_ecp_group_load(&grp, MBEDTLS_ECP_DP_SECP256R1) == 0 &&
             mbedtls_ecp_point_read_binary(&grp, &q, key->point, sizeof(key->point)) == 0 &&
             mbedtls_mpi_read_binary(&mr, r, rlen) == 0 &&
             mbedtls_mpi_read_binary(&ms, s, slen) == 0 &&
             mbedtls_ecdsa_verify(&grp, hash, 32, &q, &mr, &ms) == 0;
    mbedtls_mpi_free(&ms);
    mbedtls_mpi_free(&mr);
    mbedtls_ecp_point_free(&q);
    mbedtls_ecp_group_free(&grp);
    return ok;
}

/* Decode base64 string token `i` in place: FO_OK with its bytes, or FO_MALFORMED. */
static fo_code_t b64_token(const fo_json_doc_t *doc, long i, uint8_t *buf, uint8_t **out,
                           size_t *out_len)
{
    if (i < 0 || doc->tok[i].type != FO_JSON_STRING) {
        return FO_MALFORMED;
    }
    uint8_t *at = buf + doc->tok[i].start;
    long n = fo_json_unescape(doc, (size_t)i, at, (size_t)doc->tok[i].len + 1);
    if (n < 0) {
        return FO_MALFORMED;
    }
    *out = at;
    return fo_b64_decode(at, (size_t)n, at, out_len);
}

fo_code_t fo_envelope_verify(uint8_t *buf, size_t len, const fo_key_t *key,
                             fo_json_tok_t *tokens, size_t max_tokens, uint8_t **payload,
                             size_t *payload_len)
{
    if (len > FLEET_OTA_MAX_ENVELOPE) {
        return FO_PAYLOAD_TOO_LARGE;
    }
    fo_json_doc_t doc;
    if (fo_json_parse(buf, len, tokens, max_tokens, FLEET_OTA_MAX_DEPTH, &doc) != FO_OK ||
        doc.tok[0].type != FO_JSON_OBJECT) {
        return FO_MALFORMED;
    }
    long type = fo_json_member(&doc, 0, "payloadType");
    long sigs = fo_json_member(&doc, 0, "signatures");
    if (type < 0 || doc.tok[type].type != FO_JSON_STRING || sigs < 0 ||
        doc.tok[sigs].type != FO_JSON_ARRAY) {
        return FO_MALFORMED;
    }
    uint8_t *body;
    size_t body_len;
    if (b64_token(&doc, fo_json_member(&doc, 0, "payload"), buf, &body, &body_len) != FO_OK) {
        return FO_MALFORMED;
    }
    if (!fo_json_str_eq(&doc, (size_t)type, FO_DESIRED_PAYLOAD_TYPE)) {
        return FO_SIGNATURE_INVALID;
    }
    unsigned count = doc.tok[sigs].count;
    if (count < 1 || count > FO_MAX_SIGNATURES) {
        return FO_SIGNATURE_INVALID;
    }
    const uint8_t *candidates[FO_MAX_SIGNATURES];
    size_t candidate_len[FO_MAX_SIGNATURES];
    unsigned found = 0;
    size_t entry = (size_t)sigs + 1;
    for (unsigned k = 0; k < count; k++, entry = doc.tok[entry].next) {
        if (doc.tok[entry].type != FO_JSON_OBJECT) {
            return FO_MALFORMED;
        }
        long keyid = fo_json_member(&doc, entry, "keyid");
        if (keyid >= 0 && doc.tok[keyid].type != FO_JSON_STRING) {
            return FO_MALFORMED;
        }
        uint8_t *sig;
        size_t sig_len;
        if (b64_token(&doc, fo_json_member(&doc, entry, "sig"), buf, &sig, &sig_len) != FO_OK) {
            return FO_MALFORMED;
        }
        if (keyid >= 0 && fo_json_str_eq(&doc, (size_t)keyid, key->keyid)) {
            candidates[found] = sig;
            candidate_len[found++] = sig_len;
        }
    }
    if (found == 0) {
        return FO_SIGNATURE_INVALID;
    }
    uint8_t hash[32];
    fo_pae_sha256(FO_DESIRED_PAYLOAD_TYPE, body, body_len, hash);
    for (unsigned k = 0; k < found; k++) {
        if (ecdsa_verify(key, hash, candidates[k], candidate_len[k])) {
            *payload = body;
            *payload_len = body_len;
            return FO_OK;
        }
    }
    return FO_SIGNATURE_INVALID;
}
