// The agent: the three exports of the world `agent` of wit/worlds.wit, on the bindings
// `wit-bindgen c` generated in gen/ (do not edit those).
//
// A greeter that uses every part of the host. Input is a command:
//
//   hello NAME        counts NAME's visits (documents, compare-and-swap) and greets
//                     with the config value `greeting` (default "Hello")
//   tell AGENT TEXT   links this agent -knows-> AGENT (graph) and sends AGENT the
//                     message "from ME TEXT" (messaging)
//   announce TEXT     publishes "from ME TEXT" to the topic `news` (messaging)
//   from WHO TEXT     a message (from `tell` or `announce`): kept in inbox/ME
//   inbox             the last message received, as JSON ("WHO: TEXT"), or null
//   friends           the agents this one knows (graph neighbours)
//   last              the last visitor `on-change` saw, as JSON, or null
//
// `init` checks the configuration; `on-change` gets the writes of the collections the
// deploy spec watches (`visits`) and records the last visitor in seen/ME.
//
// Memory: arguments given to an export are ours to free; what an export returns (output
// bytes, an error's strings) must be malloc'ed: the generated code frees it. What an
// import returns is ours to free with the matching *_free function.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"

// A NUL-terminated copy of WIT bytes or a string (for printf and friends).
static char *cstr(const uint8_t *ptr, size_t len) {
    char *s = malloc(len + 1);
    memcpy(s, ptr, len);
    s[len] = 0;
    return s;
}

static bool fail(agent_agent_error_t *err, const char *code, const char *message) {
    agent_string_dup(&err->code, code);
    agent_string_dup(&err->message, message);
    return false;
}

static bool reply(agent_option_list_u8_t *ret, const char *text) {
    size_t len = strlen(text);
    ret->is_some = true;
    ret->val.ptr = malloc(len ? len : 1);
    memcpy(ret->val.ptr, text, len);
    ret->val.len = len;
    return true;
}

// A JSON string of `s` (document values are JSON text); malloc'ed.
static char *quote(const char *s) {
    char *out = malloc(strlen(s) * 6 + 3), *o = out;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20) {
            o += sprintf(o, "\\u%04x", *p);
        } else {
            *o++ = (char)*p;
        }
    }
    *o++ = '"';
    *o = 0;
    return out;
}

// What a documents error says, for an agent error's message; frees it.
static bool fail_doc(agent_agent_error_t *err, cortex_agent_documents_error_t *e) {
    char message[300];
    if (e->tag == CORTEX_AGENT_DOCUMENTS_ERROR_CONFLICT) {
        snprintf(message, sizeof message, "conflict (current revision %llu)", (unsigned long long)e->val.conflict);
    } else {
        // every other case carries a string, at the same place in the union
        snprintf(message, sizeof message, "documents error %d: %.*s", e->tag, (int)e->val.invalid_key.len,
                 (const char *)e->val.invalid_key.ptr);
    }
    cortex_agent_documents_error_free(e);
    return fail(err, "store", message);
}

static bool fail_messaging(agent_agent_error_t *err, cortex_agent_messaging_error_t *e) {
    bool unknown = e->tag == CORTEX_AGENT_MESSAGING_ERROR_UNKNOWN_AGENT;
    char message[64];
    snprintf(message, sizeof message, "messaging error %d", e->tag);
    cortex_agent_messaging_error_free(e);
    return fail(err, unknown ? "unknown-agent" : "messaging", message);
}

static bool fail_graph(agent_agent_error_t *err, cortex_agent_graph_error_t *e) {
    bool unknown = e->tag == CORTEX_AGENT_GRAPH_ERROR_UNKNOWN_AGENT;
    char message[64];
    snprintf(message, sizeof message, "graph error %d", e->tag);
    cortex_agent_graph_error_free(e);
    return fail(err, unknown ? "unknown-agent" : "graph", message);
}

// Write `value` (JSON) under collection/key, whatever is there.
static bool put(const char *collection, const char *key, const char *value, cortex_agent_documents_error_t *e) {
    agent_string_t c, k, v;
    agent_string_set(&c, collection);
    agent_string_set(&k, key);
    agent_string_set(&v, value);
    cortex_agent_documents_revision_t revision;
    return cortex_agent_documents_put(&c, &k, &v, NULL, &revision, e);
}

// init: called on deploy and on every configuration change. An error keeps the previous
// configuration in force.
bool exports_agent_init(agent_list_tuple2_string_string_t *config, agent_agent_error_t *err) {
    bool bad = false;
    for (size_t i = 0; i < config->len; i++) {
        agent_string_t *k = &config->ptr[i].f0, *v = &config->ptr[i].f1;
        if (k->len == 8 && memcmp(k->ptr, "greeting", 8) == 0 && (v->len == 0 || v->len > 64)) bad = true;
    }
    char count[24];
    snprintf(count, sizeof count, "%zu", config->len);
    agent_list_tuple2_string_string_free(config);
    if (bad) return fail(err, "bad-config", "greeting must be 1 to 64 bytes");
    agent_tuple2_string_string_t field;
    agent_string_set(&field.f0, "keys");
    agent_string_set(&field.f1, count);
    agent_list_tuple2_string_string_t fields = {&field, 1};
    agent_string_t msg;
    agent_string_set(&msg, "configured");
    cortex_agent_runtime_log(CORTEX_AGENT_RUNTIME_LEVEL_INFO, &msg, &fields);
    return true;
}

// hello: read, add one, write back only if nobody wrote in between (the expected
// revision; 0 means "must not exist yet"), else read again.
static bool hello(const char *name, agent_option_list_u8_t *ret, agent_agent_error_t *err) {
    agent_string_t collection, key;
    agent_string_set(&collection, "visits");
    agent_string_set(&key, name);
    for (int attempt = 0; attempt < 100; attempt++) {
        cortex_agent_documents_option_document_t doc;
        cortex_agent_documents_error_t e;
        if (!cortex_agent_documents_get(&collection, &key, &doc, &e)) return fail_doc(err, &e);
        unsigned long long visits = 0;
        cortex_agent_documents_revision_t revision = 0;
        if (doc.is_some) {
            char *value = cstr(doc.val.value.ptr, doc.val.value.len);
            visits = strtoull(value, NULL, 10);
            free(value);
            revision = doc.val.revision;
            cortex_agent_documents_document_free(&doc.val);
        }
        char next[24];
        snprintf(next, sizeof next, "%llu", visits + 1);
        agent_string_t value;
        agent_string_set(&value, next);
        cortex_agent_documents_revision_t written;
        if (!cortex_agent_documents_put(&collection, &key, &value, &revision, &written, &e)) {
            if (e.tag != CORTEX_AGENT_DOCUMENTS_ERROR_CONFLICT) return fail_doc(err, &e);
            cortex_agent_documents_error_free(&e);
            continue;
        }
        agent_string_t config_key, greeting;
        agent_string_set(&config_key, "greeting");
        char *text = malloc(strlen(name) + 128);
        if (cortex_agent_runtime_config(&config_key, &greeting)) {
            sprintf(text, "%.*s, %s! (visit %llu)", (int)greeting.len, (const char *)greeting.ptr, name, visits + 1);
            agent_string_free(&greeting);
        } else {
            sprintf(text, "Hello, %s! (visit %llu)", name, visits + 1);
        }
        reply(ret, text);
        free(text);
        return true;
    }
    return fail(err, "conflict", "gave up after 100 attempts");
}

// tell: link this agent to `to` in the graph and send it a message. The invocation id is
// the idempotency key: a retried `tell` does not deliver twice.
static bool tell(cortex_agent_runtime_identity_t *me, const char *to, const char *text, agent_option_list_u8_t *ret,
                 agent_agent_error_t *err) {
    agent_string_t target, kind, attributes;
    agent_string_set(&target, to);
    agent_string_set(&kind, "knows");
    agent_string_set(&attributes, "{}");
    cortex_agent_graph_error_t ge;
    if (!cortex_agent_graph_link(&me->agent, &target, &kind, &attributes, &ge)) return fail_graph(err, &ge);
    char *body = malloc(me->agent.len + strlen(text) + 8);
    int n = sprintf(body, "from %.*s %s", (int)me->agent.len, (const char *)me->agent.ptr, text);
    agent_list_u8_t bytes = {(uint8_t *)body, (size_t)n};
    cortex_agent_messaging_error_t me_err;
    bool sent = cortex_agent_messaging_send(&target, &bytes, &me->invocation, &me_err);
    free(body);
    if (!sent) return fail_messaging(err, &me_err);
    char *out = malloc(strlen(to) + 8);
    sprintf(out, "told %s", to);
    reply(ret, out);
    free(out);
    return true;
}

static bool announce(cortex_agent_runtime_identity_t *me, const char *text, agent_option_list_u8_t *ret,
                     agent_agent_error_t *err) {
    agent_string_t topic;
    agent_string_set(&topic, "news");
    char *body = malloc(me->agent.len + strlen(text) + 8);
    int n = sprintf(body, "from %.*s %s", (int)me->agent.len, (const char *)me->agent.ptr, text);
    agent_list_u8_t bytes = {(uint8_t *)body, (size_t)n};
    cortex_agent_messaging_error_t e;
    bool published = cortex_agent_messaging_publish(&topic, &bytes, &e);
    free(body);
    if (!published) return fail_messaging(err, &e);
    return reply(ret, "announced");
}

// receive: keep the last message. Delivery is at least once: writing the same value
// again is harmless.
static bool receive(const char *me, const char *message, agent_option_list_u8_t *ret, agent_agent_error_t *err) {
    char *line = malloc(strlen(message) + 2);
    const char *space = strchr(message, ' ');
    if (space) {
        sprintf(line, "%.*s: %s", (int)(space - message), message, space + 1);
    } else {
        sprintf(line, "%s: ", message);
    }
    char *value = quote(line);
    free(line);
    cortex_agent_documents_error_t e;
    bool ok = put("inbox", me, value, &e);
    free(value);
    if (!ok) return fail_doc(err, &e);
    return reply(ret, "got");
}

// show: a document's JSON value, or null.
static bool show(const char *collection, const char *key, agent_option_list_u8_t *ret, agent_agent_error_t *err) {
    agent_string_t c, k;
    agent_string_set(&c, collection);
    agent_string_set(&k, key);
    cortex_agent_documents_option_document_t doc;
    cortex_agent_documents_error_t e;
    if (!cortex_agent_documents_get(&c, &k, &doc, &e)) return fail_doc(err, &e);
    if (!doc.is_some) return reply(ret, "null");
    char *value = cstr(doc.val.value.ptr, doc.val.value.len);
    cortex_agent_documents_document_free(&doc.val);
    reply(ret, value);
    free(value);
    return true;
}

static bool friends(cortex_agent_runtime_identity_t *me, agent_option_list_u8_t *ret, agent_agent_error_t *err) {
    agent_string_t kind;
    agent_string_set(&kind, "knows");
    cortex_agent_graph_list_edge_t edges;
    cortex_agent_graph_error_t e;
    if (!cortex_agent_graph_neighbours(&me->agent, &kind, CORTEX_AGENT_GRAPH_DIRECTION_OUTGOING, 100, &edges, &e))
        return fail_graph(err, &e);
    size_t cap = 8;
    for (size_t i = 0; i < edges.len; i++) cap += edges.ptr[i].to.len + 2;
    char *names = malloc(cap), *o = names;
    *o = 0;
    for (size_t i = 0; i < edges.len; i++) {
        o += sprintf(o, "%s%.*s", i ? ", " : "", (int)edges.ptr[i].to.len, (const char *)edges.ptr[i].to.ptr);
    }
    cortex_agent_graph_list_edge_free(&edges);
    reply(ret, *names ? names : "nobody");
    free(names);
    return true;
}

// handle: one invocation, bytes in, optionally bytes out.
bool exports_agent_handle(agent_list_u8_t *input, agent_option_list_u8_t *ret, agent_agent_error_t *err) {
    char *line = cstr(input->ptr, input->len);
    agent_list_u8_free(input);
    size_t len = strlen(line);
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
    char *rest = strchr(line, ' ');
    if (rest) *rest++ = 0; else rest = line + len;
    cortex_agent_runtime_identity_t me;
    cortex_agent_runtime_whoami(&me);
    char *my_name = cstr(me.agent.ptr, me.agent.len);
    bool r;
    if (strcmp(line, "hello") == 0 && *rest) {
        r = hello(rest, ret, err);
    } else if (strcmp(line, "tell") == 0 && strchr(rest, ' ')) {
        char *text = strchr(rest, ' ');
        *text++ = 0;
        r = tell(&me, rest, text, ret, err);
    } else if (strcmp(line, "announce") == 0) {
        r = announce(&me, rest, ret, err);
    } else if (strcmp(line, "from") == 0) {
        r = receive(my_name, rest, ret, err);
    } else if (strcmp(line, "inbox") == 0) {
        r = show("inbox", my_name, ret, err);
    } else if (strcmp(line, "friends") == 0) {
        r = friends(&me, ret, err);
    } else if (strcmp(line, "last") == 0) {
        r = show("seen", my_name, ret, err);
    } else {
        r = fail(err, "bad-input", "commands: hello NAME, tell AGENT TEXT, announce TEXT, inbox, friends, last");
    }
    free(my_name);
    free(line);
    cortex_agent_runtime_identity_free(&me);
    return r;
}

// on-change: the writes of the watched collections, in feed order, at least once (an
// error means "deliver this batch again later").
bool exports_agent_on_change(agent_list_change_event_t *events, agent_agent_error_t *err) {
    cortex_agent_runtime_identity_t me;
    cortex_agent_runtime_whoami(&me);
    char *my_name = cstr(me.agent.ptr, me.agent.len);
    cortex_agent_runtime_identity_free(&me);
    bool ok = true;
    cortex_agent_documents_error_t e;
    for (size_t i = 0; ok && i < events->len; i++) {
        cortex_agent_types_change_event_t *event = &events->ptr[i];
        if (event->op != CORTEX_AGENT_TYPES_CHANGE_OP_PUT) continue;
        if (event->collection.len != 6 || memcmp(event->collection.ptr, "visits", 6) != 0) continue;
        char *key = cstr(event->key.ptr, event->key.len);
        char *value = quote(key);
        ok = put("seen", my_name, value, &e);
        free(value);
        free(key);
    }
    free(my_name);
    agent_list_change_event_free(events);
    return ok ? true : fail_doc(err, &e);
}
