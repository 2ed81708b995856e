/* Unit tests of the core's pieces that the shared vectors reach only indirectly:
 * base64 edge cases, PAE, field formats, timestamps, integers, key loading, bounds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_ota/desired.h"
#include "fleet_ota/text.h"

static int failures;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);               \
            failures++;                                                          \
        }                                                                        \
    } while (0)

#define B(s) ((const uint8_t *)(s)), strlen(s)
#define S(s) (s), strlen(s)

static int b64_ok(const char *in, const char *want)
{
    uint8_t out[64];
    size_t n;
    if (fo_b64_decode((const uint8_t *)in, strlen(in), out, &n) != FO_OK) {
        return 0;
    }
    return n == strlen(want) && memcmp(out, want, n) == 0;
}

static int b64_refused(const char *in)
{
    uint8_t out[64];
    size_t n;
    return fo_b64_decode((const uint8_t *)in, strlen(in), out, &n) == FO_MALFORMED;
}

static void test_base64(void)
{
    CHECK(b64_ok("", ""));
    CHECK(b64_ok("e30=", "{}"));
    CHECK(b64_ok("YQ==", "a"));
    CHECK(b64_ok("YWJj", "abc"));
    CHECK(b64_ok("-_8=", "\xfb\xff"));
    CHECK(b64_ok("+/8=", "\xfb\xff"));
    CHECK(b64_refused("+_8="));   /* mixed alphabets */
    CHECK(b64_refused("YQ"));     /* unpadded */
    CHECK(b64_refused("YR=="));   /* stray bits */
    CHECK(b64_refused("e31="));   /* stray bits */
    CHECK(b64_refused("Y==="));
    CHECK(b64_refused("===="));
    CHECK(b64_refused("YQ==YQ=="));
    CHECK(b64_refused("YW Jj"));
    CHECK(b64_refused("YWJj\n"));
}

static void test_pae(void)
{
    uint8_t hash[32];
    char hex[65];
    /* sha256(pae(type, b'{"v":1}')) from device_agent/protocol/envelope.py */
    fo_pae_sha256(FO_DESIRED_PAYLOAD_TYPE, (const uint8_t *)"{\"v\":1}", 7, hash);
    fo_hex_encode(hash, 32, hex);
    CHECK(strcmp(hex, "647b1709430324f1dd8db05c0c21b3f5b3d5e2a80d45c298cac70fb121602c57") == 0);
    fo_pae_sha256(FO_DESIRED_PAYLOAD_TYPE, (const uint8_t *)"", 0, hash);
    fo_hex_encode(hash, 32, hex);
    CHECK(strcmp(hex, "afff7668b6af275e9207d919454b503ef4355b31709fef8b2b423ec9b9097d97") == 0);
}

static void test_formats(void)
{
    CHECK(fo_is_semver(B("1.4.0")));
    CHECK(fo_is_semver(B("0.0.0-0.a-b.1+build.01-x")));
    CHECK(fo_is_semver(B("1.0.0-alpha.01a")));
    CHECK(!fo_is_semver(B("1.0.0-01")));
    CHECK(!fo_is_semver(B("01.0.0")));
    CHECK(!fo_is_semver(B("1.0")));
    CHECK(!fo_is_semver(B("1.0.0-")));
    CHECK(!fo_is_semver(B("1.0.0+")));
    CHECK(!fo_is_semver(B("1.0.0-a..b")));
    CHECK(!fo_is_semver(B("1.0.0+a+b")));
    CHECK(!fo_is_semver(B("1.0.0 ")));
    CHECK(fo_is_device_id(B("dev-0042_x")));
    CHECK(!fo_is_device_id(B("dev.1")));
    CHECK(!fo_is_device_id(B("")));
    CHECK(!fo_is_device_id(B("dev\n")));
    CHECK(fo_is_segment(B("esp32s3-int8")));
    CHECK(!fo_is_segment(B("-x")));
    CHECK(!fo_is_segment(B("Kws")));     /* the registry's alphabet: lower case */
    CHECK(!fo_is_segment(B("kws.v2")));  /* and no dot */
    CHECK(!fo_is_segment(B("kws\n")));
    CHECK(fo_is_url(B("https://a")));
    CHECK(!fo_is_url(B("https://")));
    CHECK(!fo_is_url(B("HTTPS://a")));
    CHECK(!fo_is_url(B("https:///a")));
    CHECK(!fo_is_url(B("https://a\x7f")));
    CHECK(!fo_is_url(B("https://a\xed\xa0\x80")));
    CHECK(fo_text_chars(B("a\xc3\xa9\xf0\x9f\x98\x80")) == 3);
}

static void test_timestamps(void)
{
    int64_t us;
    CHECK(fo_parse_timestamp(B("1970-01-01T00:00:00Z"), &us) && us == 0);
    CHECK(fo_parse_timestamp(B("2026-11-22T10:00:00.5Z"), &us) && us == 1795341600500000LL);
    CHECK(fo_parse_timestamp(B("0001-01-01T00:00:00Z"), &us) && us == -62135596800000000LL);
    CHECK(fo_parse_timestamp(B("9999-12-31T23:59:59.999999Z"), &us));
    CHECK(fo_parse_timestamp(B("2000-02-29T00:00:00Z"), &us));
    CHECK(!fo_parse_timestamp(B("1900-02-29T00:00:00Z"), &us));
    CHECK(!fo_parse_timestamp(B("2026-11-22T10:00:00.1234567Z"), &us));
    CHECK(!fo_parse_timestamp(B("2026-11-22T10:00:00.Z"), &us));
    CHECK(!fo_parse_timestamp(B("2026-11-22 10:00:00Z"), &us));
    CHECK(!fo_parse_timestamp(B("2026-11-22T24:00:00Z"), &us));
    CHECK(!fo_parse_timestamp(B("2026-13-22T10:00:00Z"), &us));
    CHECK(!fo_parse_timestamp(B("2026-11-22T10:00:00Zx"), &us));
}

static void test_json_values(void)
{
    static fo_json_tok_t tok[32];
    fo_json_doc_t doc;
    uint64_t v;
    const char *text = "{\"a\":9007199254740991,\"b\":9007199254740992,\"c\":-0,\"d\":1.0,"
                       "\"e\":true,\"f\":\"x\\u00e9\\ud83d\\ude00\\ud800\",\"g\":-1}";
    CHECK(fo_json_parse(B(text), tok, 32, 4, &doc) == FO_OK);
    CHECK(fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "a"), &v) &&
          v == 9007199254740991ULL);
    CHECK(!fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "b"), &v));
    CHECK(fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "c"), &v) && v == 0);
    CHECK(!fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "d"), &v));
    CHECK(!fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "e"), &v));
    CHECK(!fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "g"), &v));
    CHECK(fo_json_member(&doc, 0, "z") == -1);
    uint8_t out[32];
    long n = fo_json_unescape(&doc, (size_t)fo_json_member(&doc, 0, "f"), out, sizeof(out));
    CHECK(n == 10 && memcmp(out, "x\xc3\xa9\xf0\x9f\x98\x80\xed\xa0\x80", 10) == 0);
    CHECK(fo_json_unescape(&doc, (size_t)fo_json_member(&doc, 0, "f"), out, 10) == -1);
    /* Too few tokens, too deep: malformed, never a write past the pool. */
    CHECK(fo_json_parse(B(text), tok, 14, 4, &doc) == FO_MALFORMED);
    CHECK(fo_json_parse(B("{\"a\":[[[]]]}"), tok, 32, 3, &doc) == FO_MALFORMED);
    CHECK(fo_json_parse(B("{\"a\":[[]]}"), tok, 32, 3, &doc) == FO_OK);
}

static void test_keys(void)
{
    fo_key_t key;
    CHECK(fo_key_from_pem(S(""), &key) == FO_MALFORMED);
    CHECK(fo_key_from_pem(S("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
                          &key) == FO_MALFORMED);
    /* An Ed25519 key (not P-256). */
    CHECK(fo_key_from_pem(S("-----BEGIN PUBLIC KEY-----\n"
                            "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
                            "-----END PUBLIC KEY-----\n"),
                          &key) == FO_MALFORMED);
}

static void test_envelope_bound(void)
{
    /* One byte over the bound is refused for its size before it is parsed. */
    static uint8_t buf[FLEET_OTA_MAX_ENVELOPE + 1];
    static fo_work_t work;
    static fo_decision_t d;
    fo_key_t key;
    memset(&key, 0, sizeof(key));
    fo_device_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.device_id = "d";
    ctx.hardware = "h";
    memset(buf, ' ', sizeof(buf));
    fo_desired_evaluate(buf, sizeof(buf), &key, &ctx, &work, &d);
    CHECK(d.outcome == FO_REJECTED && d.code == FO_PAYLOAD_TOO_LARGE);
    fo_desired_evaluate(buf, sizeof(buf) - 1, &key, &ctx, &work, &d);
    CHECK(d.outcome == FO_REJECTED && d.code == FO_MALFORMED);
}

static void test_codes(void)
{
    CHECK(strcmp(fo_code_name(FO_SIGNATURE_INVALID), "signature_invalid") == 0);
    CHECK(strcmp(fo_code_name(FO_NOT_FOUND), "not_found") == 0);
    CHECK(fo_code_name(FO_CODE_COUNT) == NULL);
    CHECK(fo_code_from_name("hash_mismatch", 13) == FO_HASH_MISMATCH);
    CHECK(fo_code_from_name("hash", 4) == FO_CODE_COUNT);
}

int main(void)
{
    test_base64();
    test_pae();
    test_formats();
    test_timestamps();
    test_json_values();
    test_keys();
    test_envelope_bound();
    test_codes();
    printf("core: %d failed\n", failures);
    return failures == 0 ? 0 : 1;
}
