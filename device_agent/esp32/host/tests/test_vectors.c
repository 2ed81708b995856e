/* The shared vectors (tests/vectors/, docs/protocol.md, generated from the Python side):
 * - desired.json through fo_desired_evaluate: every vector decided exactly as its
 *   "expect" says (outcome, code, seq, jobs and per-model rejections in entry order);
 * - json.json through fo_json_parse with the client's limits: "ok" or "malformed".
 * The files are read with the library's own JSON tokenizer, with a pool large enough. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_ota/desired.h"
#include "fleet_ota/outbox.h"
#include "fleet_ota/text.h"

#define MAX_FILE (4u << 20)
#define MAX_FILE_TOKENS 200000

static fo_json_doc_t doc;

static char *str(long i, char *out, size_t cap)
{
    if (i < 0 || fo_json_unescape(&doc, (size_t)i, (uint8_t *)out, cap) < 0) {
        fprintf(stderr, "bad string token %ld\n", i);
        exit(2);
    }
    return out;
}

static long member(size_t obj, const char *key)
{
    return fo_json_member(&doc, obj, key);
}

static int is_null(long i)
{
    return i < 0 || doc.tok[i].type == FO_JSON_NULL;
}

static int64_t timestamp(long i)
{
    char text[64];
    int64_t us;
    str(i, text, sizeof(text));
    if (!fo_parse_timestamp((const uint8_t *)text, strlen(text), &us)) {
        fprintf(stderr, "bad timestamp %s\n", text);
        exit(2);
    }
    return us;
}

static uint64_t uint_of(long i)
{
    uint64_t v;
    if (i < 0 || !fo_json_uint(&doc, (size_t)i, &v)) {
        fprintf(stderr, "bad integer token %ld\n", i);
        exit(2);
    }
    return v;
}

/* Render a decision as the vectors write it, to compare and to print. */
static void describe_decision(const fo_decision_t *d, char *out, size_t cap)
{
    size_t n = 0;
    if (d->outcome == FO_IGNORED) {
        snprintf(out, cap, "ignored");
        return;
    }
    if (d->outcome == FO_REJECTED) {
        snprintf(out, cap, "rejected %s seq=%llu", fo_code_name(d->code),
                 (unsigned long long)d->seq);
        return;
    }
    n += (size_t)snprintf(out + n, cap - n, "accepted seq=%llu jobs=[",
                          (unsigned long long)d->seq);
    for (size_t k = 0; k < d->desired.n_models; k++) {
        if (d->model_code[k] == FO_OK) {
            n += (size_t)snprintf(out + n, cap - n, "%s,", d->desired.models[k].name.p);
        }
    }
    n += (size_t)snprintf(out + n, cap - n, "] rejected=[");
    for (size_t k = 0; k < d->desired.n_models; k++) {
        if (d->model_code[k] != FO_OK && d->model_code[k] != FO_CODE_COUNT) {
            n += (size_t)snprintf(out + n, cap - n, "%s:%s,", d->desired.models[k].name.p,
                                  fo_code_name(d->model_code[k]));
        }
    }
    snprintf(out + n, cap - n, "]");
}

static void describe_expect(size_t e, char *out, size_t cap)
{
    char outcome[32], text[128];
    size_t n = 0;
    str(member(e, "outcome"), outcome, sizeof(outcome));
    if (strcmp(outcome, "ignored") == 0) {
        snprintf(out, cap, "ignored");
        return;
    }
    if (strcmp(outcome, "rejected") == 0) {
        snprintf(out, cap, "rejected %s seq=%llu", str(member(e, "code"), text, sizeof(text)),
                 (unsigned long long)uint_of(member(e, "seq")));
        return;
    }
    n += (size_t)snprintf(out + n, cap - n, "accepted seq=%llu jobs=[",
                          (unsigned long long)uint_of(member(e, "seq")));
    long jobs = member(e, "jobs");
    size_t item = (size_t)jobs + 1;
    for (unsigned k = 0; k < doc.tok[jobs].count; k++, item = doc.tok[item].next) {
        n += (size_t)snprintf(out + n, cap - n, "%s,", str((long)item, text, sizeof(text)));
    }
    n += (size_t)snprintf(out + n, cap - n, "] rejected=[");
    long rejected = member(e, "rejected");
    item = (size_t)rejected + 1;
    for (unsigned k = 0; k < doc.tok[rejected].count; k++, item = doc.tok[item].next) {
        char code[64];
        n += (size_t)snprintf(out + n, cap - n, "%s:%s,",
                              str(member(item, "model"), text, sizeof(text)),
                              str(member(item, "code"), code, sizeof(code)));
    }
    snprintf(out + n, cap - n, "]");
}

static uint8_t *file_text;
static fo_json_tok_t *file_tokens;

static void load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(2);
    }
    if (file_text == NULL) {
        file_text = malloc(MAX_FILE);
        file_tokens = malloc(sizeof(fo_json_tok_t) * MAX_FILE_TOKENS);
    }
    size_t len = fread(file_text, 1, MAX_FILE, f);
    fclose(f);
    if (len == MAX_FILE ||
        fo_json_parse(file_text, len, file_tokens, MAX_FILE_TOKENS, 8, &doc) != FO_OK) {
        fprintf(stderr, "%s: not a vectors file\n", path);
        exit(2);
    }
}

static unsigned json_cases(const char *path)
{
    load(path);
    static fo_json_tok_t tokens[FLEET_OTA_MAX_TOKENS];
    static char name[128];
    long cases = member(0, "cases");
    size_t c = (size_t)cases + 1;
    unsigned failures = 0, total = doc.tok[cases].count;
    for (unsigned k = 0; k < total; k++, c = doc.tok[c].next) {
        char want[32];
        str(member(c, "name"), name, sizeof(name));
        str(member(c, "expect"), want, sizeof(want));
        long in = member(c, "input");
        uint8_t *buf = malloc((size_t)doc.tok[in].len + 1);
        size_t len;
        str(in, (char *)buf, (size_t)doc.tok[in].len + 1);
        if (fo_b64_decode(buf, strlen((char *)buf), buf, &len) != FO_OK) {
            fprintf(stderr, "%s: input is not base64\n", name);
            exit(2);
        }
        fo_json_doc_t parsed;
        fo_code_t code = fo_json_parse(buf, len, tokens, FLEET_OTA_MAX_TOKENS,
                                       FLEET_OTA_MAX_DEPTH, &parsed);
        if (code == FO_OK && parsed.tok[0].type != FO_JSON_OBJECT) {
            code = FO_MALFORMED;
        }
        const char *got = code == FO_OK ? "ok" : fo_code_name(code);
        if (strcmp(got, want) != 0) {
            printf("FAIL json %s: got %s, want %s\n", name, got, want);
            failures++;
        }
        free(buf);
    }
    printf("%u JSON cases, %u failed\n", total, failures);
    return failures;
}

static fo_code_t no_save(void *ctx, const char *name, const uint8_t *buf, size_t len)
{
    (void)ctx;
    (void)name;
    (void)buf;
    (void)len;
    return FO_OK;
}

/* tests/vectors/acks.json: the C client takes exactly the acks the Python agent takes,
 * and forgets the first event named in each. */
static unsigned acks_cases(const char *path)
{
    load(path);
    static fo_json_tok_t tokens[FLEET_OTA_MAX_TOKENS];
    static fo_outbox_t outbox;
    static uint8_t scratch[FO_EVENT_RECORD_HEADER + FO_EVENT_BYTES];
    static char name[128], first[64];
    fo_storage_port_t storage = {0};
    storage.record_save = no_save;
    long cases = member(0, "cases");
    size_t c = (size_t)cases + 1;
    unsigned failures = 0, total = doc.tok[cases].count;
    for (unsigned k = 0; k < total; k++, c = doc.tok[c].next) {
        str(member(c, "name"), name, sizeof(name));
        int want = doc.tok[member(c, "valid")].type == FO_JSON_TRUE;
        long in = member(c, "input");
        uint8_t *buf = malloc((size_t)doc.tok[in].len + 1);
        size_t len;
        str(in, (char *)buf, (size_t)doc.tok[in].len + 1);
        if (fo_b64_decode(buf, strlen((char *)buf), buf, &len) != FO_OK) {
            fprintf(stderr, "%s: input is not base64\n", name);
            exit(2);
        }
        int got = fo_outbox_acks_valid(buf, len, tokens, FLEET_OTA_MAX_TOKENS);
        if (got != want) {
            printf("FAIL acks %s: valid %d, want %d\n", name, got, want);
            failures++;
        }
        long ids = member(c, "event_ids");
        if (want && ids >= 0 && doc.tok[ids].count > 0) {
            str((long)ids + 1, first, sizeof(first));
            memset(&outbox, 0, sizeof(outbox));
            outbox.slot[3].pending = 1;
            outbox.slot[3].order = 1;
            memcpy(outbox.slot[3].id, first, 33);
            size_t removed = fo_outbox_on_acks(&outbox, &storage, buf, len, tokens,
                                               FLEET_OTA_MAX_TOKENS, scratch);
            if (removed != 1 || outbox.slot[3].pending) {
                printf("FAIL acks %s: event %s not confirmed\n", name, first);
                failures++;
            }
        }
        free(buf);
    }
    printf("%u acks cases, %u failed\n", total, failures);
    return failures;
}

static unsigned desired_vectors(const char *path)
{
    load(path);

    static char pem[1024], keyid[80];
    fo_key_t key;
    str(member(0, "director_key"), pem, sizeof(pem));
    if (fo_key_from_pem(pem, strlen(pem), &key) != FO_OK) {
        fprintf(stderr, "director_key: not a P-256 public key PEM\n");
        exit(1);
    }
    str(member(0, "director_keyid"), keyid, sizeof(keyid));
    if (strcmp(keyid, key.keyid) != 0) {
        fprintf(stderr, "keyid %s, the file says %s\n", key.keyid, keyid);
        exit(1);
    }

    static fo_work_t work;
    static fo_decision_t decision;
    static char got[4096], want[4096], name[128];
    long vectors = member(0, "vectors");
    size_t v = (size_t)vectors + 1;
    unsigned failures = 0, total = doc.tok[vectors].count;
    for (unsigned k = 0; k < total; k++, v = doc.tok[v].next) {
        str(member(v, "name"), name, sizeof(name));
        long env = member(v, "envelope");
        uint8_t *buf = malloc((size_t)doc.tok[env].len + 1);
        size_t buf_len;
        str(env, (char *)buf, (size_t)doc.tok[env].len + 1);
        if (fo_b64_decode(buf, strlen((char *)buf), buf, &buf_len) != FO_OK) {
            fprintf(stderr, "%s: envelope is not base64\n", name);
            exit(2);
        }

        size_t c = (size_t)member(v, "context");
        static char device_id[80], hardware[80], digest[80];
        static fo_model_record_t records[FO_MAX_MODELS];
        fo_device_ctx_t ctx;
        memset(&ctx, 0, sizeof(ctx));
        memset(records, 0, sizeof(records));
        ctx.device_id = str(member(c, "device_id"), device_id, sizeof(device_id));
        ctx.hardware = str(member(c, "hardware"), hardware, sizeof(hardware));
        ctx.clock_synced = 1;
        ctx.now_us = timestamp(member(c, "now"));
        if (!is_null(member(c, "last_seq"))) {
            ctx.has_last_seq = 1;
            ctx.last_seq = uint_of(member(c, "last_seq"));
            if (!is_null(member(c, "last_digest"))) {
                str(member(c, "last_digest"), digest, sizeof(digest));
                fo_hex_decode((const uint8_t *)digest, 32, ctx.last_digest);
            }
        }
        if (!is_null(member(c, "last_trusted_time"))) {
            ctx.has_trusted_time = 1;
            ctx.last_trusted_us = timestamp(member(c, "last_trusted_time"));
        }
        long floors = member(c, "floors");
        size_t fk = (size_t)floors + 1;
        for (unsigned i = 0; i < doc.tok[floors].count; i++, fk = doc.tok[fk + 1].next) {
            str((long)fk, records[i].name, sizeof(records[i].name));
            records[i].floor = uint_of((long)fk + 1);
        }
        ctx.n_records = doc.tok[floors].count;
        ctx.records = records;

        fo_desired_evaluate(buf, buf_len, &key, &ctx, &work, &decision);
        describe_decision(&decision, got, sizeof(got));
        describe_expect((size_t)member(v, "expect"), want, sizeof(want));
        if (strcmp(got, want) != 0) {
            printf("FAIL %s: got %s, want %s\n", name, got, want);
            failures++;
        }
        free(buf);
    }
    printf("%u desired vectors, %u failed\n", total, failures);
    return failures;
}

/* Every stable error code of the Python side is one this library names, and no other. */
static unsigned codes(const char *path)
{
    load(path);
    char name[64];
    unsigned failures = 0;
    long list = member(0, "codes");
    size_t item = (size_t)list + 1;
    for (unsigned k = 0; k < doc.tok[list].count; k++, item = doc.tok[item].next) {
        str((long)item, name, sizeof(name));
        if (fo_code_from_name(name, strlen(name)) == FO_CODE_COUNT) {
            printf("FAIL code %s is not in codes.h\n", name);
            failures++;
        }
    }
    if (doc.tok[list].count != FO_CODE_COUNT - 1) {
        printf("FAIL codes.h has %d codes, the protocol %u\n", FO_CODE_COUNT - 1,
               (unsigned)doc.tok[list].count);
        failures++;
    }
    printf("%u error codes, %u failed\n", (unsigned)doc.tok[list].count, failures);
    return failures;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr,
                "usage: %s desired.json json.json codes.json acks.json (tests/vectors/)\n",
                argv[0]);
        return 2;
    }
    unsigned failures = desired_vectors(argv[1]) + json_cases(argv[2]) + codes(argv[3]) +
                        acks_cases(argv[4]);
    free(file_tokens);
    free(file_text);
    return failures == 0 ? 0 : 1;
}
