#include "posix_http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    CURL *curl;
    fo_sink_t sink;
    void *sink_ctx;
    fo_code_t code;
    uint64_t offset;
    uint64_t skip;
    int started;
} transfer_t;

static size_t on_body(char *data, size_t size, size_t n, void *user)
{
    transfer_t *t = user;
    size_t len = size * n, used = 0;
    if (!t->started) {
        long status = 0;
        curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
        /* A server that ignores Range sends the whole body: skip what we have. */
        t->skip = t->offset > 0 && status == 200 ? t->offset : 0;
        t->started = 1;
    }
    if (t->skip > 0) {
        used = len < t->skip ? len : (size_t)t->skip;
        t->skip -= used;
    }
    if (used < len) {
        t->code = t->sink(t->sink_ctx, (const uint8_t *)data + used, len - used);
        if (t->code != FO_OK) {
            return 0; /* abort: curl_easy_perform returns CURLE_WRITE_ERROR */
        }
    }
    return len;
}

static fo_code_t get(void *ctx, const char *url, uint64_t offset, fo_sink_t sink, void *sink_ctx)
{
    fo_posix_http_t *http = ctx;
    transfer_t t = {curl_easy_init(), sink, sink_ctx, FO_OK, offset, 0, 0};
    char range[32];
    if (t.curl == NULL) {
        return FO_DOWNLOAD_FAILED;
    }
    curl_easy_setopt(t.curl, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(t.curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(t.curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(t.curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(t.curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(t.curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(t.curl, CURLOPT_CONNECTTIMEOUT, http->connect_timeout_s);
    curl_easy_setopt(t.curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(t.curl, CURLOPT_LOW_SPEED_TIME, http->stall_timeout_s);
    curl_easy_setopt(t.curl, CURLOPT_TIMEOUT, http->deadline_s);
    if (http->ca_file != NULL) {
        curl_easy_setopt(t.curl, CURLOPT_CAINFO, http->ca_file);
    }
    if (offset > 0) {
        snprintf(range, sizeof(range), "%llu-", (unsigned long long)offset);
        curl_easy_setopt(t.curl, CURLOPT_RANGE, range);
    }
    curl_easy_setopt(t.curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(t.curl, CURLOPT_WRITEDATA, &t);
    CURLcode rc = curl_easy_perform(t.curl);
    curl_easy_cleanup(t.curl);
    if (rc == CURLE_OK) {
        return FO_OK;
    }
    if (rc == CURLE_WRITE_ERROR && t.code != FO_OK) {
        return t.code;
    }
    return rc == CURLE_OPERATION_TIMEDOUT ? FO_DOWNLOAD_TIMEOUT : FO_DOWNLOAD_FAILED;
}

typedef struct {
    uint8_t *out;
    size_t cap;
    size_t len;
    int too_long;
} answer_t;

static size_t on_answer(char *data, size_t size, size_t n, void *user)
{
    answer_t *a = user;
    size_t len = size * n;
    if (a->len + len + 1 > a->cap) {
        a->too_long = 1;
        return 0;
    }
    memcpy(a->out + a->len, data, len);
    a->len += len;
    a->out[a->len] = 0;
    return len;
}

static fo_code_t post_json(void *ctx, const char *url, const char *body, size_t len,
                           uint8_t *out, size_t cap, size_t *out_len, int *status)
{
    fo_posix_http_t *http = ctx;
    answer_t a = {out, cap, 0, 0};
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *curl = curl_easy_init();
    if (curl == NULL || headers == NULL || cap == 0) {
        curl_slist_free_all(headers);
        curl_easy_cleanup(curl);
        return FO_DOWNLOAD_FAILED;
    }
    out[0] = 0;
    curl_easy_setopt(curl, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, http->connect_timeout_s);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, http->connect_timeout_s + http->stall_timeout_s);
    if (http->ca_file != NULL) {
        curl_easy_setopt(curl, CURLOPT_CAINFO, http->ca_file);
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "fleet-ota-c/0.1.0");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)len);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &a);
    CURLcode rc = curl_easy_perform(curl);
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    if (a.too_long) {
        return FO_PAYLOAD_TOO_LARGE;
    }
    if (rc != CURLE_OK) {
        return rc == CURLE_OPERATION_TIMEDOUT ? FO_DOWNLOAD_TIMEOUT : FO_DOWNLOAD_FAILED;
    }
    *out_len = a.len;
    *status = (int)code;
    return FO_OK;
}

fo_code_t fo_posix_http_init(fo_posix_http_t *http, fo_http_port_t *port)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        return FO_DOWNLOAD_FAILED;
    }
    port->get = get;
    port->post_json = post_json;
    port->ctx = http;
    return FO_OK;
}
