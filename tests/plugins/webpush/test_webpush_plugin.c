/* Tests of the webpush plug-in as the built bb-channel-webpush.so, loaded
 * through bb_channel_entry() as the host loads it, with a fake host whose
 * http() only records the request: format() output (headers, plaintext
 * JSON, text shortened to fit a record), malformed subscriptions refused
 * as bad_subscription, the request send() makes, the VAPID token cache,
 * and the mapping of push service answers to outcomes. No network.
 * Single-threaded. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <buurtbus/channel.h>

#include "jwt.h"

/* RFC 8291 Appendix A's subscription key and auth secret (published test data). */
#define P256DH                                                                                     \
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
#define AUTH "BTBZMqHH6r4Tts7J_aSIgg"
#define SUB(endpoint)                                                                              \
    "{\"endpoint\":\"" endpoint "\",\"keys\":{\"p256dh\":\"" P256DH "\",\"auth\":\"" AUTH "\"}}"
#define TEXT "Twee mannen bij de ramen"

/* ---- a fake host ------------------------------------------------------------------------- */

struct kv {
    const char *name;
    const char *value;
    int64_t integer;
};

static struct kv cfg_values[16];
static char log_text[8192];

static const char *cfg_value(const struct bb_channel_config *cfg, const char *name)
{
    for (size_t i = 0; cfg_values[i].name; i++) {
        if (strcmp(cfg_values[i].name, name) == 0) {
            return cfg_values[i].value;
        }
    }
    return NULL;
}

static int64_t cfg_integer(const struct bb_channel_config *cfg, const char *name)
{
    for (size_t i = 0; cfg_values[i].name; i++) {
        if (strcmp(cfg_values[i].name, name) == 0) {
            return cfg_values[i].integer;
        }
    }
    return 0;
}

static void host_log(struct bb_host *host, int level, const char *msg, const char *kvfmt, ...)
{
    size_t n = strlen(log_text);
    va_list ap;
    va_start(ap, kvfmt);
    snprintf(log_text + n, sizeof(log_text) - n, "%s ", msg);
    n = strlen(log_text);
    vsnprintf(log_text + n, sizeof(log_text) - n, kvfmt, ap);
    va_end(ap);
}

/* The last request http() was given (copied), and its completion. */
static struct {
    int calls;
    char url[512], pool[32], headers[4096];
    size_t body_len;
    int http2;
    bb_http_done_fn *done;
    void *arg;
} req;

static int host_http(struct bb_host *host, const struct bb_http_request *r, bb_http_done_fn *done,
                     void *arg)
{
    req.calls++;
    snprintf(req.url, sizeof(req.url), "%s", r->url);
    snprintf(req.pool, sizeof(req.pool), "%s", r->pool ? r->pool : "");
    req.headers[0] = '\0';
    for (size_t i = 0; i < r->nheaders; i++) {
        size_t n = strlen(req.headers);
        snprintf(req.headers + n, sizeof(req.headers) - n, "%s: %s\n", r->headers[i].name,
                 r->headers[i].value);
    }
    req.body_len = r->body_len;
    req.http2 = r->http2;
    req.done = done;
    req.arg = arg;
    return 0;
}

static struct bb_host_api host_api = {
    .struct_size = sizeof(struct bb_host_api),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .alloc = malloc,
    .realloc = realloc,
    .free = free,
    .log = host_log,
    .http = host_http,
};

/* What done() was called with. */
static struct {
    int calls, status;
    unsigned after;
    char reason[64];
} outcome;

static void on_done(void *token, int status, unsigned retry_after_s, const char *reason)
{
    outcome.calls++;
    outcome.status = status;
    outcome.after = retry_after_s;
    snprintf(outcome.reason, sizeof(outcome.reason), "%s", reason);
}

static const struct bb_channel *channel;
static void *dl;
static char keypath[64];

/* Options as the host fills them: defaults, then the given overrides. */
static void *plugin_init(int show_text, int allow_http)
{
    size_t k = 0;
    for (const struct bb_channel_option *o = channel->options; o->name; o++, k++) {
        assert_true(k < 15);
        cfg_values[k] = (struct kv){o->name, o->def, o->def ? strtoll(o->def, NULL, 10) : 0};
        if (strcmp(o->name, "vapid_key_file") == 0) {
            cfg_values[k].value = keypath;
        } else if (strcmp(o->name, "subject") == 0) {
            cfg_values[k].value = "mailto:ops@buurtbus.example";
        } else if (strcmp(o->name, "timeout") == 0) {
            cfg_values[k].integer = 10000;
        } else if (strcmp(o->name, "show_text") == 0) {
            cfg_values[k].integer = show_text;
        } else if (strcmp(o->name, "allow_http") == 0) {
            cfg_values[k].integer = allow_http;
        }
    }
    cfg_values[k].name = NULL;
    struct bb_channel_config cfg = {
        .struct_size = sizeof(cfg), .instance = "push", .value = cfg_value, .integer = cfg_integer};
    char err[256] = "";
    void *ctx = NULL;
    if (channel->init(&host_api, &cfg, &ctx, err, sizeof(err)) != 0) {
        print_error("init: %s\n", err);
    }
    assert_non_null(ctx);
    return ctx;
}

static int group_setup(void **state)
{
    dl = dlopen(BB_WEBPUSH_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return -1;
    }
    bb_channel_entry_fn *entry = (bb_channel_entry_fn *)dlsym(dl, "bb_channel_entry");
    channel = entry ? entry(BB_CHANNEL_ABI_VERSION) : NULL;
    snprintf(keypath, sizeof(keypath), "/tmp/bb-webpush-vapid-XXXXXX");
    int fd = mkstemp(keypath);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = channel && k && f && PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;
    if (f) {
        fclose(f);
    }
    EVP_PKEY_free(k);
    return ok ? 0 : -1;
}

static int group_teardown(void **state)
{
    unlink(keypath);
    if (dl) {
        dlclose(dl);
    }
    return 0;
}

static struct bb_notification notification(const char *text, int urgency)
{
    return (struct bb_notification){
        .struct_size = sizeof(struct bb_notification),
        .kind = BB_KIND_REPORT,
        .report_id = "n1",
        .status_id = "",
        .category_name = "burglary",
        .urgency = urgency,
        .locale = "nl",
        .title = "Inbraak",
        .text = text,
        .author = "Jan",
        .cell = "u1hbcq7",
        .group_name = "",
    };
}

static struct bb_contact contact(const char *token)
{
    return (struct bb_contact){.struct_size = sizeof(struct bb_contact),
                               .email = "",
                               .push_token = token,
                               .push_platform = "webpush",
                               .locale = "nl",
                               .screen_name = "",
                               .unsubscribe_url = "",
                               .endpoint = ""};
}

static struct bb_delivery delivery(const struct bb_notification *n, const struct bb_contact *c)
{
    return (struct bb_delivery){.struct_size = sizeof(struct bb_delivery),
                                .delivery_id = "r:n1:1:7",
                                .recipient = 7,
                                .recipient_kind = BB_RECIPIENT_USER,
                                .attempt = 1,
                                .n = n,
                                .contact = c};
}

/* The JSON after the blank line of format()'s output. */
static json_object *format_json(const char *out)
{
    const char *p = strstr(out, "\n\n");
    assert_non_null(p);
    json_object *o = json_tokener_parse(p + 2);
    assert_non_null(o);
    return o;
}

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_string(v);
}

/* ---- the cases --------------------------------------------------------------------------- */

static void format_headers_and_payload(void **state)
{
    void *ctx = plugin_init(0, 1);
    struct bb_notification n = notification(TEXT, BB_URGENCY_IN_PROGRESS);
    struct bb_contact c = contact(SUB("http://127.0.0.1:9/push/x"));
    struct bb_delivery d = delivery(&n, &c);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(channel->format(ctx, &d, &out, &len), 0);
    assert_int_equal(strlen(out), len);
    assert_true(strncmp(out, "POST http://127.0.0.1:9/push/x\n", 31) == 0);
    assert_non_null(strstr(out, "\nContent-Encoding: aes128gcm\n"));
    assert_non_null(strstr(out, "\nContent-Type: application/octet-stream\n"));
    assert_non_null(strstr(out, "\nUrgency: high\n"));
    assert_non_null(strstr(out, "\nTTL: 3600\n"));
    const char *topic = strstr(out, "\nTopic: ");
    assert_non_null(topic);
    assert_int_equal(strcspn(topic + 8, "\n"), 32);
    assert_int_equal(
        strspn(topic + 8, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), 32);
    assert_non_null(strstr(out, "\nAuthorization: vapid t=ey"));
    assert_non_null(strstr(out, ", k=B"));
    json_object *o = format_json(out);
    assert_string_equal(jstr(o, "title"), "Inbraak");
    assert_string_equal(jstr(o, "report_id"), "n1");
    assert_string_equal(jstr(o, "delivery_id"), "r:n1:1:7");
    assert_string_equal(jstr(o, "urgency"), "in_progress");
    assert_string_equal(jstr(o, "kind"), "report");
    assert_false(json_object_object_get_ex(o, "body", NULL)); /* show_text off */
    assert_null(strstr(out, TEXT));
    /* Content-Length: the encrypted body, 86 + JSON + 1 + 16. */
    char want[48];
    snprintf(want, sizeof(want), "\nContent-Length: %zu\n",
             strlen(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE)) +
                 103);
    assert_non_null(strstr(out, want));
    json_object_put(o);
    free(out);

    /* Recent -> normal with the general TTL; informational -> low. */
    const struct {
        int urgency;
        const char *header, *ttl;
    } u[] = {{BB_URGENCY_RECENT, "\nUrgency: normal\n", "\nTTL: 86400\n"},
             {BB_URGENCY_INFORMATIONAL, "\nUrgency: low\n", "\nTTL: 86400\n"}};
    for (size_t i = 0; i < 2; i++) {
        n.urgency = u[i].urgency;
        assert_int_equal(channel->format(ctx, &d, &out, &len), 0);
        assert_non_null(strstr(out, u[i].header));
        assert_non_null(strstr(out, u[i].ttl));
        free(out);
    }
    channel->destroy(ctx);
}

static void long_text_is_shortened(void **state)
{
    void *ctx = plugin_init(1, 1);
    /* 3,000 two-byte characters: 6,000 bytes, more than a record holds. */
    static char text[6001];
    for (size_t i = 0; i < 6000; i += 2) {
        memcpy(text + i, "\xc3\xa9", 2);
    }
    struct bb_notification n = notification(text, BB_URGENCY_RECENT);
    struct bb_contact c = contact(SUB("https://push.example.org/s/1"));
    struct bb_delivery d = delivery(&n, &c);
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(channel->format(ctx, &d, &out, &len), 0);
    json_object *o = format_json(out); /* parses: still valid UTF-8 */
    const char *body = jstr(o, "body");
    size_t bl = strlen(body);
    assert_true(bl > 3000 && bl < 6000);
    assert_memory_equal(body + bl - 3, "\xe2\x80\xa6", 3);
    size_t jl = strlen(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    assert_true(jl <= 3993);
    char want[48];
    snprintf(want, sizeof(want), "\nContent-Length: %zu\n", jl + 103);
    assert_non_null(strstr(out, want));
    json_object_put(o);
    free(out);

    /* A short text goes as it is. */
    n.text = TEXT;
    assert_int_equal(channel->format(ctx, &d, &out, &len), 0);
    o = format_json(out);
    assert_string_equal(jstr(o, "body"), TEXT);
    json_object_put(o);
    free(out);
    channel->destroy(ctx);
}

static void bad_subscriptions(void **state)
{
    void *ctx = plugin_init(0, 0);
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "{\"endpoint\":\"https://push.example.org/s\"}",
        "{\"endpoint\":\"https://push.example.org/s\",\"keys\":{\"p256dh\":\"" P256DH "\"}}",
        "{\"endpoint\":42,\"keys\":{\"p256dh\":\"" P256DH "\",\"auth\":\"" AUTH "\"}}",
        "{\"endpoint\":\"https://push.example.org/"
        "s\",\"keys\":{\"p256dh\":\"BCVx\",\"auth\":\"" AUTH "\"}}",
        /* auth of 15 bytes */
        "{\"endpoint\":\"https://push.example.org/s\",\"keys\":{\"p256dh\":\"" P256DH
        "\",\"auth\":\"BTBZMqHH6r4Tts7J_aSI\"}}",
        /* a point off the curve (last byte changed) */
        "{\"endpoint\":\"https://push.example.org/s\",\"keys\":{\"p256dh\":"
        "\"BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-"
        "AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw8\","
        "\"auth\":\"" AUTH "\"}}",
        SUB("http://127.0.0.1:9/push/x"), /* http without allow_http */
        SUB("ftp://push.example.org/s"),
        SUB("https:///s"),
        SUB("https://user@push.example.org/s"),
        SUB("https://push.example.org/a b"),
    };
    struct bb_notification n = notification(TEXT, BB_URGENCY_RECENT);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct bb_contact c = contact(bad[i]);
        struct bb_delivery d = delivery(&n, &c);
        char *out = NULL;
        size_t len = 0;
        if (channel->format(ctx, &d, &out, &len) == 0) {
            print_error("case %zu accepted: %s\n", i, bad[i]);
            free(out);
            fail();
        }
        memset(&outcome, 0, sizeof(outcome));
        req.calls = 0;
        assert_int_equal(channel->send(ctx, &d, on_done, NULL), 0);
        assert_int_equal(outcome.calls, 1);
        assert_int_equal(outcome.status, BB_SEND_PERMANENT);
        assert_string_equal(outcome.reason, "bad_subscription");
        assert_int_equal(req.calls, 0);
    }
    channel->destroy(ctx);
}

/* The JWT's claims from an Authorization header line in s. */
static json_object *vapid_claims(const char *s)
{
    const char *t = strstr(s, "Authorization: vapid t=");
    assert_non_null(t);
    t += strlen("Authorization: vapid t=");
    const char *dot = strchr(t, '.');
    assert_non_null(dot);
    const char *end = strchr(dot + 1, '.');
    assert_non_null(end);
    unsigned char json[1024];
    size_t len = 0;
    assert_int_equal(
        bb_b64url_decode(dot + 1, (size_t)(end - dot - 1), json, sizeof(json) - 1, &len), 0);
    json[len] = '\0';
    json_object *o = json_tokener_parse((const char *)json);
    assert_non_null(o);
    return o;
}

static void send_and_outcomes(void **state)
{
    void *ctx = plugin_init(0, 0);
    struct bb_notification n = notification(TEXT, BB_URGENCY_IN_PROGRESS);
    struct bb_contact c = contact(SUB("https://push.example.org:8443/s/abc?x=1"));
    struct bb_delivery d = delivery(&n, &c);
    const struct {
        long status;
        const char *error;
        long retry_after;
        int want;
        unsigned after;
        const char *reason;
    } cases[] = {
        {201, "", -1, BB_SEND_OK, 0, ""},
        {200, "", -1, BB_SEND_OK, 0, ""},
        {202, "", -1, BB_SEND_OK, 0, ""},
        {404, "", -1, BB_SEND_GONE, 0, "subscription_gone"},
        {410, "", -1, BB_SEND_GONE, 0, "subscription_gone"},
        {413, "", -1, BB_SEND_PERMANENT, 0, "payload_too_large"},
        {429, "", 7, BB_SEND_RETRY, 7, "http_429"},
        {503, "", -1, BB_SEND_RETRY, 0, "http_503"},
        {500, "", 30, BB_SEND_RETRY, 30, "http_500"},
        {0, "timeout", -1, BB_SEND_RETRY, 0, "timeout"},
        {400, "", -1, BB_SEND_PERMANENT, 0, "http_400"},
        {401, "", -1, BB_SEND_PERMANENT, 0, "http_401"},
        {403, "", -1, BB_SEND_PERMANENT, 0, "http_403"},
    };
    char first_auth[2048] = "";
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(&outcome, 0, sizeof(outcome));
        req.calls = 0;
        assert_int_equal(channel->send(ctx, &d, on_done, NULL), 0);
        assert_int_equal(req.calls, 1);
        assert_int_equal(outcome.calls, 0);
        assert_string_equal(req.url, "https://push.example.org:8443/s/abc?x=1");
        assert_string_equal(req.pool, "webpush");
        assert_int_equal(req.http2, 1);
        assert_true(req.body_len > 103 && req.body_len <= 4096);
        assert_non_null(strstr(req.headers, "Content-Encoding: aes128gcm\n"));
        assert_non_null(strstr(req.headers, "Urgency: high\n"));
        assert_non_null(strstr(req.headers, "TTL: 3600\n"));
        assert_non_null(strstr(req.headers, "Topic: "));
        /* One VAPID token per origin, reused. */
        const char *auth = strstr(req.headers, "Authorization: ");
        assert_non_null(auth);
        if (i == 0) {
            snprintf(first_auth, sizeof(first_auth), "%s", auth);
            json_object *claims = vapid_claims(req.headers);
            assert_string_equal(jstr(claims, "aud"), "https://push.example.org:8443");
            assert_string_equal(jstr(claims, "sub"), "mailto:ops@buurtbus.example");
            json_object_put(claims);
        } else {
            assert_string_equal(auth, first_auth);
        }
        struct bb_http_response res = {.struct_size = sizeof(res),
                                       .status = cases[i].status,
                                       .error = cases[i].error,
                                       .body = "",
                                       .retry_after_s = cases[i].retry_after};
        req.done(req.arg, &res);
        assert_int_equal(outcome.calls, 1);
        assert_int_equal(outcome.status, cases[i].want);
        assert_int_equal(outcome.after, cases[i].after);
        assert_string_equal(outcome.reason, cases[i].reason);
    }
    /* Another push service: its own token. */
    c = contact(SUB("https://updates.push.example.net/wpush/v2/x"));
    assert_int_equal(channel->send(ctx, &d, on_done, NULL), 0);
    json_object *claims = vapid_claims(req.headers);
    assert_string_equal(jstr(claims, "aud"), "https://updates.push.example.net");
    json_object_put(claims);
    struct bb_http_response ok = {
        .struct_size = sizeof(ok), .status = 201, .error = "", .body = "", .retry_after_s = -1};
    req.done(req.arg, &ok);
    /* Nothing about the subscription reached the log. */
    assert_null(strstr(log_text, "push.example"));
    assert_null(strstr(log_text, P256DH));
    channel->destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(format_headers_and_payload),
        cmocka_unit_test(long_text_is_shortened),
        cmocka_unit_test(bad_subscriptions),
        cmocka_unit_test(send_and_outcomes),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
