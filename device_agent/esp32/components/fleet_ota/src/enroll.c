/* Enrollment (include/fleet_ota/enroll.h). */
#include "fleet_ota/enroll.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#include <mbedtls/x509_csr.h>
#include <stdio.h>
#include <string.h>

#include "fleet_ota/envelope.h"

static int is_identifier(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n < 1 || n > max) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* mbedTLS 2.28 writes the CSR's signature algorithm as ecdsa-with-SHA256 with a NULL
 * parameter, which RFC 5758 forbids and strict parsers (the server's) refuse; 3.x does not.
 * The outer algorithm is not signed, so drop the NULL in place: `der` (a whole CSR) shrinks
 * by 2 bytes when it had one. Returns the new length. */
static size_t strip_ecdsa_null(unsigned char *der, size_t len)
{
    static const unsigned char with_null[] = {0x30, 0x0C, 0x06, 0x08, 0x2A, 0x86, 0x48,
                                              0xCE, 0x3D, 0x04, 0x03, 0x02, 0x05, 0x00};
    size_t hl;
    if (len < 4 || der[0] != 0x30) {
        return len;
    }
    if (der[1] == 0x81) {
        hl = 3;
    } else if (der[1] == 0x82) {
        hl = 4;
    } else {
        return len; /* a P-256 CSR is longer than 127 bytes and shorter than 64 KiB */
    }
    /* The info (signed), then the algorithm: find the algorithm after the info. */
    if (len < hl + 4 || der[hl] != 0x30) {
        return len;
    }
    size_t info = der[hl + 1] < 0x80 ? 2 + (size_t)der[hl + 1]
                  : der[hl + 1] == 0x81 ? 3 + (size_t)der[hl + 2]
                                        : 4 + ((size_t)der[hl + 2] << 8 | der[hl + 3]);
    size_t at = hl + info;
    if (at + sizeof(with_null) > len || memcmp(der + at, with_null, sizeof(with_null)) != 0) {
        return len;
    }
    size_t body = len - hl - 2;
    if ((hl == 3 && body < 0x80) || (hl == 4 && body < 0x100)) {
        return len; /* the length's form would change: never for a P-256 CSR */
    }
    der[at + 1] = 0x0A;
    memmove(der + at + 12, der + at + 14, len - at - 14);
    if (hl == 3) {
        der[2] = (unsigned char)body;
    } else {
        der[2] = (unsigned char)(body >> 8);
        der[3] = (unsigned char)body;
    }
    return len - 2;
}

/* A P-256 key and a CSR for CN=<device_id>, both PEM, into e->key_pem and e->csr_pem. */
static fo_code_t make_key_and_csr(fo_enroll_t *e, const char *device_id)
{
    static const char pers[] = "fleet-ota-enroll";
    char subject[80];
    mbedtls_entropy_context *entropy = &e->entropy;
    mbedtls_ctr_drbg_context *drbg = &e->drbg;
    mbedtls_pk_context key;
    mbedtls_x509write_csr csr;
    mbedtls_entropy_init(entropy);
    mbedtls_ctr_drbg_init(drbg);
    mbedtls_pk_init(&key);
    mbedtls_x509write_csr_init(&csr);
    snprintf(subject, sizeof(subject), "CN=%s", device_id);
    int rc = mbedtls_ctr_drbg_seed(drbg, mbedtls_entropy_func, entropy,
                                   (const unsigned char *)pers, sizeof(pers) - 1);
    if (rc == 0) {
        rc = mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
    }
    if (rc == 0) {
        rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key),
                                 mbedtls_ctr_drbg_random, drbg);
    }
    if (rc == 0) {
        rc = mbedtls_pk_write_key_pem(&key, (unsigned char *)e->key_pem, sizeof(e->key_pem));
    }
    if (rc == 0) {
        mbedtls_x509write_csr_set_md_alg(&csr, MBEDTLS_MD_SHA256);
        mbedtls_x509write_csr_set_key(&csr, &key);
        rc = mbedtls_x509write_csr_set_subject_name(&csr, subject);
    }
    if (rc == 0) {
        /* DER at the end of e->body (free until the request is written), then PEM. */
        unsigned char *buf = (unsigned char *)e->body;
        rc = mbedtls_x509write_csr_der(&csr, buf, sizeof(e->body), mbedtls_ctr_drbg_random,
                                       drbg);
        if (rc > 0) {
            size_t len = strip_ecdsa_null(buf + sizeof(e->body) - rc, (size_t)rc);
            size_t olen = 0;
            rc = mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE REQUEST-----\n",
                                          "-----END CERTIFICATE REQUEST-----\n",
                                          buf + sizeof(e->body) - rc, len,
                                          (unsigned char *)e->csr_pem, sizeof(e->csr_pem), &olen);
        } else if (rc == 0) {
            rc = -1;
        }
    }
    mbedtls_x509write_csr_free(&csr);
    mbedtls_pk_free(&key);
    mbedtls_ctr_drbg_free(drbg);
    mbedtls_entropy_free(entropy);
    if (rc != 0) {
        snprintf(e->detail, sizeof(e->detail), "mbedTLS could not make the key or CSR (-0x%04x)",
                 (unsigned)-rc);
        return FO_INTERNAL;
    }
    return FO_OK;
}

/* Append `s` as a JSON string; 0 when it does not fit. */
static int put_str(char *out, size_t cap, size_t *len, const char *s)
{
    char esc[8];
    if (*len + 1 >= cap) {
        return 0;
    }
    out[(*len)++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n') {
            snprintf(esc, sizeof(esc), "\\n");
        } else if (c == '"' || c == '\\') {
            snprintf(esc, sizeof(esc), "\\%c", c);
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else {
            esc[0] = (char)c;
            esc[1] = 0;
        }
        size_t n = strlen(esc);
        if (*len + n + 1 >= cap) {
            return 0;
        }
        memcpy(out + *len, esc, n);
        *len += n;
    }
    out[(*len)++] = '"';
    out[*len] = 0;
    return 1;
}

static int put_raw(char *out, size_t cap, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (*len + n >= cap) {
        return 0;
    }
    memcpy(out + *len, s, n + 1);
    *len += n;
    return 1;
}

/* String member `key` of the answer, unescaped in place; NULL when absent or not a string. */
static const char *member(fo_enroll_t *e, fo_json_doc_t *doc, size_t obj, const char *key)
{
    long i = fo_json_member(doc, obj, key);
    if (i < 0 || doc->tok[i].type != FO_JSON_STRING) {
        return NULL;
    }
    uint8_t *at = e->response + doc->tok[i].start;
    if (fo_json_unescape(doc, (size_t)i, at, doc->tok[i].len + 1) < 0) {
        return NULL;
    }
    return (const char *)at;
}

/* Whether certificate PEM `cert` parses and carries public key PEM `pub`. */
static int certificate_is_ours(const char *cert, const char *pub)
{
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
    unsigned char a[160], b[160];
    int same = 0;
    mbedtls_x509_crt_init(&crt);
    mbedtls_pk_init(&key);
    if (mbedtls_x509_crt_parse(&crt, (const unsigned char *)cert, strlen(cert) + 1) == 0 &&
        mbedtls_pk_parse_public_key(&key, (const unsigned char *)pub, strlen(pub) + 1) == 0) {
        int n = mbedtls_pk_write_pubkey_der(&crt.pk, a, sizeof(a));
        int m = mbedtls_pk_write_pubkey_der(&key, b, sizeof(b));
        same = n > 0 && n == m && memcmp(a + sizeof(a) - n, b + sizeof(b) - m, (size_t)n) == 0;
    }
    mbedtls_pk_free(&key);
    mbedtls_x509_crt_free(&crt);
    return same;
}

static int is_certificate(const char *pem)
{
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int ok = mbedtls_x509_crt_parse(&crt, (const unsigned char *)pem, strlen(pem) + 1) == 0;
    mbedtls_x509_crt_free(&crt);
    return ok;
}

fo_code_t fo_enroll(fo_enroll_t *e, const fo_http_port_t *http, const fo_storage_port_t *s,
                    const char *server, const char *token, const char *device_id,
                    const char *hardware, const char *agent_version)
{
    char url[320];
    size_t len = 0;
    e->detail[0] = 0;
    if (!is_identifier(device_id, 64)) {
        snprintf(e->detail, sizeof(e->detail), "device id must match [A-Za-z0-9_-]{1,64}");
        return FO_INVALID_IDENTIFIER;
    }
    if (http->post_json == NULL) {
        snprintf(e->detail, sizeof(e->detail), "the HTTP port cannot POST");
        return FO_INTERNAL;
    }
    size_t server_len = strlen(server);
    while (server_len > 0 && server[server_len - 1] == '/') {
        server_len--; /* as the Python agent, a trailing slash is dropped */
    }
    if (server_len + sizeof("/api/v1/enroll") > sizeof(url) ||
        !(strncmp(server, "http://", 7) == 0 || strncmp(server, "https://", 8) == 0)) {
        snprintf(e->detail, sizeof(e->detail), "the server must be an http(s) URL");
        return FO_MALFORMED;
    }
    snprintf(url, sizeof(url), "%.*s/api/v1/enroll", (int)server_len, server);
    fo_code_t code = make_key_and_csr(e, device_id);
    if (code != FO_OK) {
        return code;
    }
    int ok = put_raw(e->body, sizeof(e->body), &len, "{\"token\":") &&
             put_str(e->body, sizeof(e->body), &len, token) &&
             put_raw(e->body, sizeof(e->body), &len, ",\"device_id\":") &&
             put_str(e->body, sizeof(e->body), &len, device_id) &&
             put_raw(e->body, sizeof(e->body), &len, ",\"hardware\":") &&
             put_str(e->body, sizeof(e->body), &len, hardware) &&
             put_raw(e->body, sizeof(e->body), &len, ",\"csr\":") &&
             put_str(e->body, sizeof(e->body), &len, e->csr_pem) &&
             put_raw(e->body, sizeof(e->body), &len, ",\"agent_version\":") &&
             put_str(e->body, sizeof(e->body), &len, agent_version) &&
             put_raw(e->body, sizeof(e->body), &len, "}");
    if (!ok) {
        snprintf(e->detail, sizeof(e->detail), "the request does not fit");
        return FO_PAYLOAD_TOO_LARGE;
    }
    size_t got = 0;
    int status = 0;
    code = http->post_json(http->ctx, url, e->body, len, e->response, sizeof(e->response), &got,
                           &status);
    if (code != FO_OK) {
        snprintf(e->detail, sizeof(e->detail), "no answer from %.200s", url);
        return code;
    }
    fo_json_doc_t doc;
    if (fo_json_parse(e->response, got, e->tokens, FO_ENROLL_TOKENS, 16, &doc) != FO_OK ||
        doc.tok[0].type != FO_JSON_OBJECT) {
        snprintf(e->detail, sizeof(e->detail), "HTTP %d: the answer is not a JSON object", status);
        return FO_MALFORMED;
    }
    if (status != 201) {
        /* {"error": {"code": ..., "detail": ...}} (docs/api.md) */
        long err = fo_json_member(&doc, 0, "error");
        const char *name = NULL, *detail = NULL;
        if (err >= 0 && doc.tok[err].type == FO_JSON_OBJECT) {
            name = member(e, &doc, (size_t)err, "code");
            detail = member(e, &doc, (size_t)err, "detail");
        }
        snprintf(e->detail, sizeof(e->detail), "HTTP %d: %s", status, detail ? detail : "");
        code = name ? fo_code_from_name(name, strlen(name)) : FO_CODE_COUNT;
        return code == FO_CODE_COUNT || code == FO_OK ? FO_MALFORMED : code;
    }
    const char *cert = member(e, &doc, 0, "certificate");
    const char *ca = member(e, &doc, 0, "ca_certificate");
    const char *director = member(e, &doc, 0, "director_public_key");
    const char *broker = member(e, &doc, 0, "broker_url");
    if (cert == NULL || ca == NULL || director == NULL || broker == NULL) {
        snprintf(e->detail, sizeof(e->detail), "the enrollment answer lacks a field");
        return FO_MALFORMED;
    }
    /* Our public key, for the comparison with the certificate's (body is free now). */
    {
        mbedtls_pk_context key;
        mbedtls_pk_init(&key);
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
        int rc = mbedtls_pk_parse_key(&key, (const unsigned char *)e->key_pem,
                                      strlen(e->key_pem) + 1, NULL, 0, NULL, NULL);
#else
        int rc = mbedtls_pk_parse_key(&key, (const unsigned char *)e->key_pem,
                                      strlen(e->key_pem) + 1, NULL, 0);
#endif
        if (rc == 0) {
            rc = mbedtls_pk_write_pubkey_pem(&key, (unsigned char *)e->body, sizeof(e->body));
        }
        mbedtls_pk_free(&key);
        if (rc != 0) {
            snprintf(e->detail, sizeof(e->detail), "cannot read back our key");
            return FO_INTERNAL;
        }
    }
    fo_key_t pinned;
    if (!certificate_is_ours(cert, e->body)) {
        snprintf(e->detail, sizeof(e->detail), "the issued certificate is not for our key");
        return FO_MALFORMED;
    }
    if (!is_certificate(ca) || fo_key_from_pem(director, strlen(director), &pinned) != FO_OK) {
        snprintf(e->detail, sizeof(e->detail), "the CA certificate or director key is unreadable");
        return FO_MALFORMED;
    }
    /* "cert" last: a device with a "cert" record has all the others. */
    const char *names[] = {"key", "ca", "director", "broker", "cert"};
    const char *values[] = {e->key_pem, ca, director, broker, cert};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        code = s->record_save(s->ctx, names[i], (const uint8_t *)values[i], strlen(values[i]));
        if (code != FO_OK) {
            snprintf(e->detail, sizeof(e->detail), "cannot save the %s record", names[i]);
            return code;
        }
    }
    return FO_OK;
}
