/* Desired-state parsing and the director-side checks. The order of checks is
 * device_agent/protocol/messages.py's (DesiredState.from_dict, ModelTarget.__post_init__)
 * and device_agent/verify.py's (check_envelope, evaluate): the first failure decides
 * the code, so both agents give the same code for the same input. */
#include "fleet_ota/desired.h"

#include <string.h>

#include "fleet_ota/text.h"

typedef struct {
    const fo_json_doc_t *doc;
    uint8_t *buf;
} reader_t;

/* Decode string token `i` in place into `out`; 0 when it is not a string. */
static int str_at(reader_t *r, long i, fo_str_t *out)
{
    if (i < 0 || r->doc->tok[i].type != FO_JSON_STRING) {
        return 0;
    }
    uint8_t *at = r->buf + r->doc->tok[i].start;
    long n = fo_json_unescape(r->doc, (size_t)i, at, (size_t)r->doc->tok[i].len + 1);
    if (n < 0) {
        return 0;
    }
    out->p = (const char *)at;
    out->len = (size_t)n;
    return 1;
}

#define U8(s) ((const uint8_t *)(s).p)

/* Whether object `obj` has exactly the keys in `keys` (its keys are unique already). */
static int exact_keys(const fo_json_doc_t *doc, size_t obj, const char *const *keys,
                      size_t n)
{
    if (doc->tok[obj].count != n) {
        return 0;
    }
    for (size_t k = 0; k < n; k++) {
        if (fo_json_member(doc, obj, keys[k]) < 0) {
            return 0;
        }
    }
    return 1;
}

static const char *const MODEL_KEYS[] = {"name",   "path", "version", "release_counter",
                                         "hardware", "sha256", "length", "url",
                                         "rollout_id", "arm"};
static const char *const DESIRED_KEYS[] = {"v",          "device_id", "seq",
                                           "issued_at",  "expires_at", "models"};

static int optional_token(reader_t *r, long i, fo_str_t *out)
{
    if (r->doc->tok[i].type == FO_JSON_NULL) {
        out->p = NULL;
        out->len = 0;
        return 1;
    }
    return str_at(r, i, out) && fo_is_device_id(U8(*out), out->len);
}

static int same(fo_str_t a, const uint8_t *b, size_t n)
{
    return a.len == n && memcmp(a.p, b, n) == 0;
}

/* split_target_path and the agreement with the entry's fields. */
static fo_code_t check_path(const fo_model_t *m)
{
    const uint8_t *s = U8(m->path);
    size_t n = m->path.len;
    if ((n > 0 && s[0] == '/') || memchr(s, '\\', n) != NULL ||
        fo_text_chars(s, n) > FO_MAX_PATH_CHARS) {
        return FO_INVALID_TARGET_PATH;
    }
    const uint8_t *part[6];
    size_t plen[6], parts = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '/') {
            const uint8_t *p = s + start;
            size_t l = i - start;
            if (l == 0 || (l == 1 && p[0] == '.') || (l == 2 && p[0] == '.' && p[1] == '.')) {
                return FO_INVALID_TARGET_PATH;
            }
            if (parts < 6) {
                part[parts] = p;
                plen[parts] = l;
            }
            parts++;
            start = i + 1;
        }
    }
    if (parts != 5 || plen[0] != 6 || memcmp(part[0], "models", 6) != 0) {
        return FO_INVALID_TARGET_PATH;
    }
    if (!fo_is_segment(part[1], plen[1]) || !fo_is_semver(part[2], plen[2]) ||
        !fo_is_segment(part[3], plen[3]) || !fo_is_filename(part[4], plen[4])) {
        return FO_INVALID_TARGET_PATH;
    }
    if (!same(m->name, part[1], plen[1]) || !same(m->version, part[2], plen[2]) ||
        !same(m->hardware, part[3], plen[3])) {
        return FO_INVALID_TARGET_PATH;
    }
    return FO_OK;
}

static fo_code_t parse_model(reader_t *r, size_t obj, fo_model_t *m)
{
    const fo_json_doc_t *doc = r->doc;
    if (doc->tok[obj].type != FO_JSON_OBJECT ||
        !exact_keys(doc, obj, MODEL_KEYS, sizeof(MODEL_KEYS) / sizeof(MODEL_KEYS[0]))) {
        return FO_MALFORMED;
    }
#define MEMBER(key) fo_json_member(doc, obj, key)
    fo_str_t sha;
    if (!str_at(r, MEMBER("name"), &m->name) || !fo_is_segment(U8(m->name), m->name.len) ||
        !str_at(r, MEMBER("version"), &m->version) ||
        fo_text_chars(U8(m->version), m->version.len) > FO_MAX_VERSION_CHARS ||
        !fo_is_semver(U8(m->version), m->version.len) ||
        !fo_json_uint(doc, (size_t)MEMBER("release_counter"), &m->release_counter) ||
        !str_at(r, MEMBER("hardware"), &m->hardware) ||
        !fo_is_segment(U8(m->hardware), m->hardware.len) ||
        !str_at(r, MEMBER("sha256"), &sha) || !fo_is_sha256_hex(U8(sha), sha.len) ||
        !fo_json_uint(doc, (size_t)MEMBER("length"), &m->length) ||
        !str_at(r, MEMBER("url"), &m->url) || !fo_is_url(U8(m->url), m->url.len) ||
        !optional_token(r, MEMBER("rollout_id"), &m->rollout_id) ||
        !optional_token(r, MEMBER("arm"), &m->arm) || !str_at(r, MEMBER("path"), &m->path)) {
        return FO_MALFORMED;
    }
#undef MEMBER
    fo_hex_decode(U8(sha), 32, m->sha256);
    return check_path(m);
}

fo_code_t fo_desired_parse(uint8_t *payload, size_t len, fo_json_tok_t *tokens,
                           size_t max_tokens, fo_desired_t *out)
{
    if (len > 65536) {
        return FO_PAYLOAD_TOO_LARGE;
    }
    fo_json_doc_t doc;
    if (fo_json_parse(payload, len, tokens, max_tokens, FLEET_OTA_MAX_DEPTH, &doc) != FO_OK ||
        doc.tok[0].type != FO_JSON_OBJECT) {
        return FO_MALFORMED;
    }
    reader_t r = {&doc, payload};
    uint64_t v;
    long vi = fo_json_member(&doc, 0, "v");
    if (vi < 0 || !fo_json_uint(&doc, (size_t)vi, &v) || v != 1 ||
        !exact_keys(&doc, 0, DESIRED_KEYS, sizeof(DESIRED_KEYS) / sizeof(DESIRED_KEYS[0]))) {
        return FO_MALFORMED;
    }
    fo_str_t issued, expires;
    if (!str_at(&r, fo_json_member(&doc, 0, "issued_at"), &issued) ||
        !fo_parse_timestamp(U8(issued), issued.len, &out->issued_at_us) ||
        !str_at(&r, fo_json_member(&doc, 0, "expires_at"), &expires) ||
        !fo_parse_timestamp(U8(expires), expires.len, &out->expires_at_us)) {
        return FO_MALFORMED;
    }
    long models = fo_json_member(&doc, 0, "models");
    if (doc.tok[models].type != FO_JSON_ARRAY || doc.tok[models].count > FO_MAX_MODELS) {
        return FO_MALFORMED;
    }
    out->n_models = doc.tok[models].count;
    size_t item = (size_t)models + 1;
    for (size_t k = 0; k < out->n_models; k++, item = doc.tok[item].next) {
        fo_code_t code = parse_model(&r, item, &out->models[k]);
        if (code != FO_OK) {
            return code;
        }
    }
    if (!str_at(&r, fo_json_member(&doc, 0, "device_id"), &out->device_id) ||
        !fo_is_device_id(U8(out->device_id), out->device_id.len) ||
        !fo_json_uint(&doc, (size_t)fo_json_member(&doc, 0, "seq"), &out->seq) ||
        out->expires_at_us <= out->issued_at_us) {
        return FO_MALFORMED;
    }
    for (size_t a = 0; a < out->n_models; a++) {
        for (size_t b = a + 1; b < out->n_models; b++) {
            if (out->models[a].name.len == out->models[b].name.len &&
                memcmp(out->models[a].name.p, out->models[b].name.p, out->models[a].name.len) ==
                    0) {
                return FO_MALFORMED;
            }
        }
    }
    return FO_OK;
}

static const fo_model_record_t *record_of(const fo_device_ctx_t *ctx, fo_str_t name)
{
    for (size_t i = 0; i < ctx->n_records; i++) {
        if (strlen(ctx->records[i].name) == name.len &&
            memcmp(ctx->records[i].name, name.p, name.len) == 0) {
            return &ctx->records[i];
        }
    }
    return NULL;
}

static void reject(fo_decision_t *out, fo_code_t code, uint64_t seq)
{
    out->outcome = FO_REJECTED;
    out->code = code;
    out->seq = seq;
}

void fo_desired_evaluate(uint8_t *buf, size_t len, const fo_key_t *key,
                         const fo_device_ctx_t *ctx, fo_work_t *work, fo_decision_t *out)
{
    memset(out, 0, sizeof(*out));
    if (len <= FLEET_OTA_MAX_ENVELOPE) {
        fo_sha256(buf, len, out->digest);
    }
    uint8_t *payload;
    size_t payload_len;
    fo_code_t code = fo_envelope_verify(buf, len, key, work->tokens, FLEET_OTA_MAX_TOKENS,
                                        &payload, &payload_len);
    if (code == FO_OK) {
        code = fo_desired_parse(payload, payload_len, work->tokens, FLEET_OTA_MAX_TOKENS,
                                &out->desired);
    }
    if (code != FO_OK) {
        reject(out, code, 0);
        return;
    }
    const fo_desired_t *d = &out->desired;
    if (strlen(ctx->device_id) != d->device_id.len ||
        memcmp(ctx->device_id, d->device_id.p, d->device_id.len) != 0) {
        reject(out, FO_WRONG_DEVICE, d->seq);
        return;
    }
    if (ctx->has_last_seq && d->seq <= ctx->last_seq) {
        if (d->seq == ctx->last_seq && memcmp(out->digest, ctx->last_digest, 32) == 0) {
            out->outcome = FO_IGNORED;
            out->seq = d->seq;
            return;
        }
        reject(out, FO_REPLAYED_COMMAND, d->seq);
        return;
    }
    /* The trusted time: the clock when it is real, never before the newest issued_at
     * accepted. Without either there is nothing to judge expiry by. */
    if (ctx->clock_synced || ctx->has_trusted_time) {
        int64_t now = ctx->clock_synced ? ctx->now_us : ctx->last_trusted_us;
        if (ctx->has_trusted_time && ctx->last_trusted_us > now) {
            now = ctx->last_trusted_us;
        }
        if (d->expires_at_us <= now) {
            reject(out, FO_COMMAND_EXPIRED, d->seq);
            return;
        }
        if (d->issued_at_us > now + (int64_t)FLEET_OTA_MAX_SKEW_S * 1000000) {
            reject(out, FO_ISSUED_IN_FUTURE, d->seq);
            return;
        }
    }
    out->outcome = FO_ACCEPTED;
    out->seq = d->seq;
    for (size_t k = 0; k < d->n_models; k++) {
        const fo_model_t *m = &d->models[k];
        const fo_model_record_t *rec = record_of(ctx, m->name);
        if (rec != NULL && rec->installed && memcmp(rec->installed_sha256, m->sha256, 32) == 0) {
            out->model_code[k] = FO_CODE_COUNT;
        } else if (strlen(ctx->hardware) != m->hardware.len ||
                   memcmp(ctx->hardware, m->hardware.p, m->hardware.len) != 0) {
            out->model_code[k] = FO_HW_MISMATCH;
        } else if (rec != NULL && m->release_counter < rec->floor) {
            out->model_code[k] = FO_DOWNGRADE_REFUSED;
        } else {
            out->model_code[k] = FO_OK;
        }
    }
}
