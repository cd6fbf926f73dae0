// A counter agent in C on the bindings `wit-bindgen c` generates, built in place of the
// `cortex new` template's agent (host/templates/c: gen/agent.{h,c}, build.sh; see
// scripts/build-languages.sh).
//
// Input: a key (empty: "default"). It increments the JSON number stored under that key
// in collection "counters" with compare-and-swap and returns the new value as decimal
// text. Input "probe-wasi" tries to open a file and reports how it was denied
// (sockets are not reachable from wasi-libc for preview 1).
//
// Memory: the input list is ours to free; what we return (output bytes or the error's
// strings) must be malloc'ed: the generated post-return function frees it.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "agent.h"

#define COLLECTION "counters"

static const char *doc_error_code(uint8_t tag) {
    switch (tag) {
    case CORTEX_AGENT_DOCUMENTS_ERROR_CONFLICT: return "conflict";
    case CORTEX_AGENT_DOCUMENTS_ERROR_INVALID_KEY: return "invalid-key";
    case CORTEX_AGENT_DOCUMENTS_ERROR_TOO_LARGE: return "too-large";
    case CORTEX_AGENT_DOCUMENTS_ERROR_INVALID_VALUE: return "invalid-value";
    case CORTEX_AGENT_DOCUMENTS_ERROR_QUOTA_EXCEEDED: return "quota-exceeded";
    default: return "unavailable";
    }
}

// Fill the `err` side of handle's result (malloc'ed copies).
static bool fail(agent_agent_error_t *err, const char *code, const char *message, size_t message_len) {
    agent_string_dup(&err->code, code);
    agent_string_dup_n(&err->message, message, message_len);
    return false;
}

static bool fail_doc(agent_agent_error_t *err, cortex_agent_documents_error_t *e) {
    bool r;
    if (e->tag == CORTEX_AGENT_DOCUMENTS_ERROR_CONFLICT) {
        r = fail(err, "conflict", "revision changed", strlen("revision changed"));
    } else {
        // every other case carries a string, at the same place in the union
        r = fail(err, doc_error_code(e->tag), (const char *)e->val.invalid_key.ptr, e->val.invalid_key.len);
    }
    cortex_agent_documents_error_free(e);
    return r;
}

static void reply(agent_option_list_u8_t *ret, const char *text, size_t len) {
    ret->is_some = true;
    ret->val.ptr = malloc(len ? len : 1);
    memcpy(ret->val.ptr, text, len);
    ret->val.len = len;
}

static size_t probe_wasi(char *out, size_t cap) {
    size_t n = 0;
    int fd = open("/etc/passwd", O_RDONLY);
    if (fd < 0) {
        n += snprintf(out + n, cap - n, "file: denied (%s)", strerror(errno));
    } else {
        close(fd);
        n += snprintf(out + n, cap - n, "file: allowed");
    }
    // Debian's wasi-libc targets WASI preview 1, which has no socket()/connect(): a C
    // agent cannot even try to open a socket through libc (it would need wasi:sockets
    // bindings of its own, which the host would deny at run time).
    n += snprintf(out + n, cap - n, "; socket: unreachable (wasi-libc for preview 1 has no socket())");
    return n < cap ? n : cap - 1;
}

bool exports_agent_handle(agent_list_u8_t *input, agent_option_list_u8_t *ret, agent_agent_error_t *err) {
    char key[256];
    size_t len = input->len < sizeof key - 1 ? input->len : sizeof key - 1;
    memcpy(key, input->ptr, len);
    key[len] = 0;
    agent_list_u8_free(input);
    if (len == 0) strcpy(key, "default");

    if (strncmp(key, "probe-wasi", 10) == 0) {
        char buf[512];
        reply(ret, buf, probe_wasi(buf, sizeof buf));
        return true;
    }

    agent_string_t collection, k;
    agent_string_set(&collection, COLLECTION);
    agent_string_set(&k, key);
    for (int attempt = 0; attempt < 100; attempt++) {
        cortex_agent_documents_option_document_t doc;
        cortex_agent_documents_error_t e;
        if (!cortex_agent_documents_get(&collection, &k, &doc, &e)) return fail_doc(err, &e);
        long long current = 0;
        cortex_agent_documents_revision_t revision = 0;
        if (doc.is_some) {
            char num[32] = {0};
            size_t vl = doc.val.value.len < sizeof num - 1 ? doc.val.value.len : sizeof num - 1;
            memcpy(num, doc.val.value.ptr, vl);
            current = strtoll(num, NULL, 10);
            revision = doc.val.revision;
            cortex_agent_documents_document_free(&doc.val);
        }
        char next[32];
        int nl = snprintf(next, sizeof next, "%lld", current + 1);
        agent_string_t value = {(uint8_t *)next, (size_t)nl};
        cortex_agent_documents_revision_t new_revision;
        if (cortex_agent_documents_put(&collection, &k, &value, &revision, &new_revision, &e)) {
            agent_tuple2_string_string_t fields[2];
            agent_string_set(&fields[0].f0, "key");
            agent_string_set(&fields[0].f1, key);
            agent_string_set(&fields[1].f0, "value");
            agent_string_set(&fields[1].f1, next);
            agent_list_tuple2_string_string_t list = {fields, 2};
            agent_string_t msg;
            agent_string_set(&msg, "counted");
            cortex_agent_runtime_log(CORTEX_AGENT_RUNTIME_LEVEL_INFO, &msg, &list);
            reply(ret, next, (size_t)nl);
            return true;
        }
        if (e.tag != CORTEX_AGENT_DOCUMENTS_ERROR_CONFLICT) return fail_doc(err, &e);
    }
    return fail(err, "conflict", "gave up after 100 attempts", strlen("gave up after 100 attempts"));
}

// init accepts any configuration.
bool exports_agent_init(agent_list_tuple2_string_string_t *config, agent_agent_error_t *err) {
    (void)err;
    agent_list_tuple2_string_string_free(config);
    return true;
}

// on-change ignores change events (the counter watches nothing).
bool exports_agent_on_change(agent_list_change_event_t *events, agent_agent_error_t *err) {
    (void)err;
    agent_list_change_event_free(events);
    return true;
}
