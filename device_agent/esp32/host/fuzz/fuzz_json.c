/* libFuzzer: the JSON tokenizer, then every token read back (members, integers,
 * unescaping) to check the token tree it builds is consistent. */
#include <stdlib.h>
#include <string.h>

#include "fleet_ota/config.h"
#include "fleet_ota/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fo_json_tok_t tokens[FLEET_OTA_MAX_TOKENS];
    static uint8_t out[1 << 16];
    fo_json_doc_t doc;
    if (fo_json_parse(data, size, tokens, FLEET_OTA_MAX_TOKENS, FLEET_OTA_MAX_DEPTH, &doc) !=
        FO_OK) {
        return 0;
    }
    for (size_t i = 0; i < doc.count; i++) {
        const fo_json_tok_t *t = &doc.tok[i];
        if (t->next <= i || t->next > doc.count || (size_t)t->start + t->len > size) {
            abort();
        }
        uint64_t v;
        (void)fo_json_uint(&doc, i, &v);
        if (t->type == FO_JSON_STRING) {
            long n = fo_json_unescape(&doc, i, out, sizeof(out));
            if (n < 0 || (size_t)n > (size_t)t->len || !fo_json_str_eq_tok(&doc, i, i)) {
                abort();
            }
        }
        if (t->type == FO_JSON_OBJECT) {
            (void)fo_json_member(&doc, i, "payload");
        }
    }
    return 0;
}
