/* The apns channel: Apple Push Notification service, one
 *
 *   POST {endpoint}/3/device/{token}
 *
 * per delivery over HTTP/2 (../common/push_http.c: the host's HTTP helper,
 * or with ca_file the plug-in's own libcurl handle), with token
 * authentication: an ES256 provider JWT (common/jwt.c) signed with the
 * team's .p8 key, header {"alg":"ES256","kid":key_id}, claims
 * {"iss":team_id,"iat":now}. The JWT is kept and renewed every 50 minutes
 * (Apple refuses tokens older than an hour and renewals more often than
 * every 20 minutes); a 403 ExpiredProviderToken/InvalidProviderToken
 * renews it at once (once per token: the first refusal of the current
 * token renews it, later refusals of the same token do not) and the host
 * retries.
 *
 * Headers: apns-push-type alert, apns-priority 10 for in-progress reports
 * (else 5), apns-collapse-id the report id, apns-id a UUID derived from
 * the delivery id (SHA-256, RFC 9562 version 8), apns-topic, and
 * apns-expiration from the report's time and urgency.
 *
 * Outcomes: 2xx sent; 410 Unregistered and 400 BadDeviceToken gone; 429
 * retried with Retry-After; 403 provider-token errors renew and retry; 5xx
 * and transport errors retried; other 4xx permanent with Apple's reason in
 * snake case ("device_token_not_for_topic").
 *
 * Threads: the host's event-loop thread (every callback). */
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buurtbus/channel.h"
#include "jwt.h"
#include "push_http.h"
#include "push_text.h"

#define JWT_RENEW_MS (50 * 60 * 1000)

struct apns_op;

struct apns_ctx {
    const struct bb_host_api *host;
    char endpoint[512];
    char topic[256];
    char key_id[32];
    char team_id[32];
    EVP_PKEY *key;
    char ca_file[512]; /* "": the host's HTTP helper and the system CAs */
    long timeout_ms;
    int show_text;

    char jwt[512];
    int64_t jwt_made_ms; /* monotonic; 0: none yet */
    unsigned jwt_gen;
    struct apns_op *ops; /* sends in flight, freed by destroy */
};

struct apns_op {
    struct apns_ctx *c;
    bb_send_done_fn *done;
    void *token;
    unsigned jwt_gen;
    struct apns_op *prev, *next;
};

static const struct bb_channel_option apns_options[] = {
    {"key_file", BB_OPTION_STRING, NULL, "the token-auth key (.p8, PEM, P-256)"},
    {"key_id", BB_OPTION_STRING, NULL, "the key's id (10 characters, from Apple)"},
    {"team_id", BB_OPTION_STRING, NULL, "the developer team id"},
    {"topic", BB_OPTION_STRING, NULL, "the app's bundle id (apns-topic)"},
    {"endpoint", BB_OPTION_STRING, "https://api.push.apple.com",
     "APNs base URL (https://api.sandbox.push.apple.com for development builds)"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {"ca_file", BB_OPTION_STRING, "",
     "PEM CA bundle to trust instead of the system's (a private CA or a test provider)"},
    {"show_text", BB_OPTION_BOOL, "no",
     "show the report's text on the lock screen (else only title and place)"},
    {NULL, 0, NULL, NULL},
};

/* ---- the provider token ------------------------------------------------------------------ */

static int make_jwt(struct apns_ctx *c)
{
    char header[96], claims[96];
    snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"kid\":\"%s\"}", c->key_id);
    snprintf(claims, sizeof(claims), "{\"iss\":\"%s\",\"iat\":%lld}", c->team_id,
             (long long)time(NULL));
    if (bb_jwt_sign(c->key, "ES256", header, claims, c->jwt, sizeof(c->jwt)) == 0) {
        c->host->log(c->host->host, BB_PLUGIN_ERROR, "apns provider token not signed", "%s", "");
        return -1;
    }
    c->jwt_made_ms = push_mono_ms();
    c->jwt_gen++;
    return 0;
}

/* ---- the message ------------------------------------------------------------------------- */

/* The payload for d, text cut to text_max bytes (push_build_fn). */
static json_object *payload_json(const void *ctx, const struct bb_delivery *d, size_t text_max)
{
    const struct apns_ctx *c = ctx;
    const struct bb_notification *n = d->n;
    char title[PUSH_TITLE_MAX + 8], text[PUSH_TEXT_MAX + 8];
    push_alert(n, c->show_text, text_max, title, sizeof(title), text, sizeof(text));
    json_object *root = json_object_new_object();
    json_object *aps = json_object_new_object();
    json_object *alert = json_object_new_object();
    push_json_str(alert, "title", title);
    push_json_str(alert, "body", text);
    json_object_object_add(aps, "alert", alert);
    if (n->urgency == BB_URGENCY_IN_PROGRESS) {
        push_json_str(aps, "sound", "default");
    }
    if (n->cell && n->cell[0]) {
        push_json_str(aps, "thread-id", n->cell);
    }
    json_object_object_add(root, "aps", aps);
    push_json_str(root, "report_id", n->report_id);
    return root;
}

static int render(const struct apns_ctx *c, const struct bb_delivery *d, char **out, size_t *outlen)
{
    return push_render(c->host, payload_json, c, d, out, outlen);
}

static void hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* apns-id: the first 16 bytes of SHA-256(delivery id) as a UUID, version 8
 * (RFC 9562 §5.8), variant 10: a resend of the same delivery carries the
 * same id. */
static int apns_id(const char *delivery_id, char out[37])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (EVP_Digest(delivery_id, strlen(delivery_id), md, &mdlen, EVP_sha256(), NULL) != 1) {
        return -1;
    }
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x80);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    char h[33];
    hex(md, 16, h);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
    return 0;
}

static int header_safe(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* apns-collapse-id: the report id if it is short printable ASCII, else
 * the hex of its SHA-256's first 32 bytes (64 characters, Apple's limit). */
static void collapse_id(const char *report_id, char out[65])
{
    if (strlen(report_id) <= 64 && header_safe(report_id)) {
        snprintf(out, 65, "%s", report_id);
        return;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_Digest(report_id, strlen(report_id), md, &mdlen, EVP_sha256(), NULL);
    hex(md, 32, out);
}

/* A device token goes into the URL path: hex in practice; anything beyond
 * [A-Za-z0-9_-] is refused. */
static int token_ok(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 200) {
        return 0;
    }
    for (; *t; t++) {
        char ch = *t;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_')) {
            return 0;
        }
    }
    return 1;
}

/* ---- outcomes ---------------------------------------------------------------------------- */

/* Apple's CamelCase reason as a short snake_case one ("BadDeviceToken" ->
 * "bad_device_token", "HTTP2 framing" -> "http2_framing"), [a-z0-9_] only,
 * at most 40 characters. */
static void snake(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    char prev = '\0';
    for (size_t i = 0; s[i] && o + 2 < cap && o < 40; prev = s[i++]) {
        char ch = s[i];
        int lower_before = (prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9');
        /* "IDTooLong": the T starts a word although an upper case letter precedes it. */
        int word_start = prev >= 'A' && prev <= 'Z' && s[i + 1] >= 'a' && s[i + 1] <= 'z';
        if (ch >= 'A' && ch <= 'Z') {
            if ((lower_before || word_start) && o > 0 && out[o - 1] != '_') {
                out[o++] = '_';
            }
            out[o++] = (char)(ch - 'A' + 'a');
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) {
            out[o++] = ch;
        } else if (o > 0 && out[o - 1] != '_') {
            out[o++] = '_';
        }
    }
    while (o > 0 && out[o - 1] == '_') {
        o--;
    }
    out[o] = '\0';
}

static void reason_of(const struct bb_http_response *res, char *out, size_t cap)
{
    out[0] = '\0';
    json_tokener *tk = json_tokener_new();
    json_object *root = tk ? json_tokener_parse_ex(tk, res->body, (int)res->body_len) : NULL;
    json_object *v;
    if (root && json_object_object_get_ex(root, "reason", &v) &&
        json_object_is_type(v, json_type_string)) {
        snprintf(out, cap, "%.48s", json_object_get_string(v));
    }
    json_object_put(root);
    if (tk) {
        json_tokener_free(tk);
    }
}

static void finish(struct apns_op *op, int status, unsigned after, const char *reason)
{
    struct apns_ctx *c = op->c;
    if (op->prev) {
        op->prev->next = op->next;
    } else {
        c->ops = op->next;
    }
    if (op->next) {
        op->next->prev = op->prev;
    }
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    c->host->free(op);
    done(token, status, after, reason);
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct apns_op *op = arg;
    struct apns_ctx *c = op->c;
    char apple[64], reason[48];
    long s = res->status;
    if (s >= 200 && s < 300) {
        finish(op, BB_SEND_OK, 0, "");
        return;
    }
    if (s == 0) {
        snake(res->error && res->error[0] ? res->error : "http", reason, sizeof(reason));
        finish(op, BB_SEND_RETRY, 0, reason);
        return;
    }
    reason_of(res, apple, sizeof(apple));
    unsigned after = res->retry_after_s > 0 ? (unsigned)res->retry_after_s : 0;
    if (s == 410 || (s == 400 && strcmp(apple, "BadDeviceToken") == 0)) {
        finish(op, BB_SEND_GONE, 0, s == 410 ? "unregistered" : "bad_device_token");
    } else if (s == 403 && (strcmp(apple, "ExpiredProviderToken") == 0 ||
                            strcmp(apple, "InvalidProviderToken") == 0)) {
        /* Renew once for all the requests that used this token. */
        if (op->jwt_gen == c->jwt_gen) {
            c->host->log(c->host->host, BB_PLUGIN_WARN, "apns provider token refused; renewing",
                         "reason=%s", apple);
            make_jwt(c);
        }
        snake(apple, reason, sizeof(reason));
        finish(op, BB_SEND_RETRY, 0, reason);
    } else if (s == 429) {
        finish(op, BB_SEND_RETRY, after, "too_many_requests");
    } else if (s >= 500) {
        if (apple[0]) {
            snake(apple, reason, sizeof(reason));
        } else {
            snprintf(reason, sizeof(reason), "http_%ld", s);
        }
        finish(op, BB_SEND_RETRY, after, reason);
    } else {
        if (apple[0]) {
            snake(apple, reason, sizeof(reason));
        } else {
            snprintf(reason, sizeof(reason), "http_%ld", s);
        }
        finish(op, BB_SEND_PERMANENT, 0, reason);
    }
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static int copy_opt(const struct bb_channel_config *cfg, const char *name, char *out, size_t cap,
                    char *err, size_t errlen)
{
    const char *v = cfg->value(cfg, name);
    if (!v || !v[0] || strlen(v) >= cap || !header_safe(v) || strpbrk(v, "\"\\")) {
        snprintf(err, errlen, "%s: required, printable ASCII, shorter than %zu", name, cap);
        return -1;
    }
    snprintf(out, cap, "%s", v);
    return 0;
}

static EVP_PKEY *read_key(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "key_file: cannot read '%s'", path);
        return NULL;
    }
    char pem[8192];
    size_t n = fread(pem, 1, sizeof(pem), f);
    fclose(f);
    EVP_PKEY *key = n < sizeof(pem) ? bb_pem_private_key(pem, n) : NULL;
    OPENSSL_cleanse(pem, sizeof(pem));
    if (!key || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC || EVP_PKEY_get_bits(key) != 256) {
        EVP_PKEY_free(key);
        snprintf(err, errlen, "key_file: not a P-256 private key (PEM)");
        return NULL;
    }
    return key;
}

static void apns_destroy(void *ctx);

static int apns_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                     void **ctx, char *err, size_t errlen)
{
    const char *endpoint = cfg->value(cfg, "endpoint");
    const char *key_file = cfg->value(cfg, "key_file");
    if (!endpoint ||
        (strncmp(endpoint, "https://", 8) != 0 && strncmp(endpoint, "http://", 7) != 0)) {
        snprintf(err, errlen, "endpoint: expected an http(s) URL");
        return -1;
    }
    if (!key_file || !key_file[0]) {
        snprintf(err, errlen, "key_file: required");
        return -1;
    }
    struct apns_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    size_t el = strlen(endpoint);
    while (el > 0 && endpoint[el - 1] == '/') {
        el--;
    }
    if (el >= sizeof(c->endpoint)) {
        snprintf(err, errlen, "endpoint: too long");
        goto fail;
    }
    memcpy(c->endpoint, endpoint, el);
    c->endpoint[el] = '\0';
    if (copy_opt(cfg, "key_id", c->key_id, sizeof(c->key_id), err, errlen) != 0 ||
        copy_opt(cfg, "team_id", c->team_id, sizeof(c->team_id), err, errlen) != 0 ||
        copy_opt(cfg, "topic", c->topic, sizeof(c->topic), err, errlen) != 0) {
        goto fail;
    }
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    c->show_text = cfg->integer(cfg, "show_text") != 0;
    const char *ca = cfg->value(cfg, "ca_file");
    if (ca && strlen(ca) >= sizeof(c->ca_file)) {
        snprintf(err, errlen, "ca_file: path too long");
        goto fail;
    }
    snprintf(c->ca_file, sizeof(c->ca_file), "%s", ca ? ca : "");
    c->key = read_key(key_file, err, errlen);
    if (!c->key) {
        goto fail;
    }
    if (make_jwt(c) != 0) {
        snprintf(err, errlen, "key_file: signing failed");
        goto fail;
    }
    *ctx = c;
    return 0;
fail:
    apns_destroy(c);
    return -1;
}

static int apns_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    return render(ctx, d, out, outlen);
}

static int apns_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct apns_ctx *c = ctx;
    const struct bb_notification *n = d->n;
    const char *tok = d->contact && d->contact->push_token ? d->contact->push_token : "";
    if (!tok[0]) {
        done(token, BB_SEND_PERMANENT, 0, "no_push_token");
        return 0;
    }
    if (!token_ok(tok)) {
        done(token, BB_SEND_GONE, 0, "bad_device_token");
        return 0;
    }
    if (push_mono_ms() - c->jwt_made_ms >= JWT_RENEW_MS && make_jwt(c) != 0) {
        return -1;
    }
    char *body = NULL;
    size_t body_len = 0;
    if (render(c, d, &body, &body_len) != 0) {
        return -1;
    }
    char url[1024], auth[600], id[37], collapse[65], prio[4], expiration[24];
    snprintf(url, sizeof(url), "%s/3/device/%s", c->endpoint, tok);
    snprintf(auth, sizeof(auth), "bearer %s", c->jwt);
    if (apns_id(d->delivery_id, id) != 0) {
        c->host->free(body);
        return -1;
    }
    collapse_id(n->report_id ? n->report_id : "", collapse);
    snprintf(prio, sizeof(prio), "%d", n->urgency == BB_URGENCY_IN_PROGRESS ? 10 : 5);
    /* Worth storing until the report is stale; 0 (deliver now or never)
     * once it is. */
    int64_t now = (int64_t)time(NULL);
    int64_t exp =
        n->time_ms > 0 ? n->time_ms / 1000 + push_ttl_s(n->urgency) : now + push_ttl_s(n->urgency);
    snprintf(expiration, sizeof(expiration), "%lld", exp > now ? (long long)exp : 0LL);

    struct apns_op *op = c->host->alloc(sizeof(*op));
    if (!op) {
        c->host->free(body);
        return -1;
    }
    *op = (struct apns_op){.c = c, .done = done, .token = token, .jwt_gen = c->jwt_gen};
    op->next = c->ops;
    if (c->ops) {
        c->ops->prev = op;
    }
    c->ops = op;
    struct bb_http_header h[8];
    size_t nh = 0;
    h[nh++] = (struct bb_http_header){"authorization", auth};
    h[nh++] = (struct bb_http_header){"apns-push-type", "alert"};
    h[nh++] = (struct bb_http_header){"apns-priority", prio};
    h[nh++] = (struct bb_http_header){"apns-id", id};
    h[nh++] = (struct bb_http_header){"apns-topic", c->topic};
    h[nh++] = (struct bb_http_header){"apns-expiration", expiration};
    if (collapse[0]) {
        h[nh++] = (struct bb_http_header){"apns-collapse-id", collapse};
    }
    h[nh++] = (struct bb_http_header){"content-type", "application/json"};
    struct push_http_req req = {
        .url = url,
        .headers = h,
        .nheaders = nh,
        .body = body,
        .body_len = body_len,
        .timeout_ms = c->timeout_ms,
        .ca_file = c->ca_file,
        .pool = "apns",
    };
    /* The body and the headers are copied. */
    int rc = push_http_post(c->host, &req, on_response, op);
    c->host->free(body);
    OPENSSL_cleanse(auth, sizeof(auth));
    if (rc != 0) {
        c->ops = op->next;
        if (op->next) {
            op->next->prev = NULL;
        }
        c->host->free(op);
        return -1;
    }
    return 0;
}

static void apns_destroy(void *ctx)
{
    struct apns_ctx *c = ctx;
    if (!c) {
        return;
    }
    /* Sends in flight are abandoned (the host drops their requests and
     * retries the deliveries). */
    while (c->ops) {
        struct apns_op *next = c->ops->next;
        c->host->free(c->ops);
        c->ops = next;
    }
    EVP_PKEY_free(c->key);
    OPENSSL_cleanse(c->jwt, sizeof(c->jwt));
    c->host->free(c);
}

static const struct bb_channel apns_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "apns",
    .description = "Apple Push Notification service over HTTP/2 (token auth, ES256)",
    .caps = BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY | BB_CAP_HTTP2,
    .options = apns_options,
    .init = apns_init,
    .send = apns_send,
    .format = apns_format,
    .destroy = apns_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &apns_channel : NULL;
}
