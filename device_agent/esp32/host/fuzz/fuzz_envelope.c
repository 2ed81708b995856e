/* libFuzzer: whole `desired` messages through fo_desired_evaluate (envelope parser,
 * base64, DER, signature check, payload, device checks). The pinned key is the file
 * named by FLEET_OTA_FUZZ_KEY (the seed corpus's director.pem, so the signed seeds reach
 * the payload checks), else a built-in one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_ota/desired.h"

static const char PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhU5Eko1neP1Q6UA08QOeCAYFyLX7\n"
    "g8q1199tgiRKJn3+GL87qMUfYFQUQlzEJz5K6lo1Rqmqi1ZconZVkUVevQ==\n"
    "-----END PUBLIC KEY-----\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fo_key_t key;
    static int loaded;
    static fo_work_t work;
    static fo_decision_t decision;
    if (!loaded) {
        static char pem[1024];
        size_t len = 0;
        const char *path = getenv("FLEET_OTA_FUZZ_KEY");
        FILE *f = path != NULL ? fopen(path, "rb") : NULL;
        if (f != NULL) {
            len = fread(pem, 1, sizeof(pem), f);
            fclose(f);
        } else {
            len = sizeof(PEM) - 1;
            memcpy(pem, PEM, len);
        }
        if (fo_key_from_pem(pem, len, &key) != FO_OK) {
            abort();
        }
        loaded = 1;
    }
    uint8_t *buf = malloc(size + 1);
    memcpy(buf, data, size);
    fo_device_ctx_t ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.device_id = "esp32-0001";
    ctx.hardware = "esp32s3-int8";
    ctx.clock_synced = 1;
    ctx.now_us = 1796126400000000LL; /* 2026-12-01T12:00:00Z, the vectors' clock */
    fo_desired_evaluate(buf, size, &key, &ctx, &work, &decision);
    if (decision.outcome == FO_REJECTED && fo_code_name(decision.code) == NULL) {
        abort();
    }
    free(buf);
    return 0;
}
