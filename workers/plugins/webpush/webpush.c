/* bb-channel-webpush: Web Push to browsers (RFC 8030 delivery, RFC 8291
 * message encryption in ece.c, RFC 8292 VAPID in vapid.c).
 *
 * The recipient's contact push_token is the browser's subscription,
 *   {"endpoint":"https://...","keys":{"p256dh":"<b64url point>","auth":"<b64url 16 bytes>"}}
 * Per delivery: a small JSON payload (no message text unless show_text),
 * encrypted for that subscription with a fresh key, POSTed to its endpoint
 * through the host's HTTP helper (pool "webpush", HTTP/2 for https) with
 *   Content-Encoding: aes128gcm, TTL, Urgency (high / normal / low),
 *   Topic (from the report id: a newer message about the same report
 *   replaces one the push service still holds), Authorization: vapid ...
 * Outcomes: 2xx (201) sent; 404 and 410 gone (subscription_gone); 413
 * payload_too_large; 408, 429, 5xx and transport errors retried (with
 * Retry-After); other statuses permanent (http_<status>). A malformed
 * subscription is permanent (bad_subscription).
 *
 * Threads: the host's event-loop thread (every callback). */
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "buurtbus/channel.h"
#include "ece.h"
#include "jwt.h"
#include "vapid.h"

#define ENDPOINT_MAX 2048
#define TOPIC_LEN 32 /* RFC 8030 §5.4: at most 32 base64url characters */

struct webpush_ctx {
    const struct bb_host_api *host;
    struct bb_vapid *vapid;
    long ttl_s, ttl_in_progress_s;
    long timeout_ms;
    bool show_text, allow_http;
};

/* A parsed subscription. */
struct subscription {
    char endpoint[ENDPOINT_MAX];
    char origin[BB_VAPID_ORIGIN_MAX];
    bool https;
    EVP_PKEY *ua_key; /* from p256dh, checked to be on P-256; owned */
    unsigned char auth[BB_ECE_AUTH_LEN];
};

/* Everything one request needs, built without network I/O (send and format). */
struct message {
    struct subscription sub;
    char ttl[24];
    const char *urgency;
    char topic[TOPIC_LEN + 1]; /* "" when the notification has no report id */
    const char *authorization;
    char *json; /* the plaintext, from host->alloc */
    size_t json_len;
};

struct webpush_op {
    struct webpush_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option webpush_options[] = {
    {"vapid_key_file", BB_OPTION_STRING, NULL,
     "PEM file with the VAPID P-256 private key (read once at start)"},
    {"subject", BB_OPTION_STRING, NULL,
     "contact for push services, mailto:... or https://... (RFC 8292 §2.1)"},
    {"ttl", BB_OPTION_INT, "86400", "seconds a push service keeps an undelivered message"},
    {"ttl_in_progress", BB_OPTION_INT, "3600",
     "TTL in seconds for in-progress alerts (stale sooner)"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {"show_text", BB_OPTION_BOOL, "false",
     "put the report's text in the payload (the push service sees only ciphertext either way)"},
    {"allow_http", BB_OPTION_BOOL, "false",
     "accept http:// endpoints (tests only; browsers' push services use https)"},
    {NULL, 0, NULL, NULL},
};

/* ---- the subscription -------------------------------------------------------------------- */

static int b64url_exact(json_object *o, unsigned char *out, size_t want)
{
    const char *s = json_object_is_type(o, json_type_string) ? json_object_get_string(o) : NULL;
    size_t got = 0;
    if (!s || bb_b64url_decode(s, strlen(s), out, want, &got) != 0 || got != want) {
        return -1;
    }
    return 0;
}

/* scheme://authority[/...]: the origin is everything before the path. Only
 * characters a URL may hold; no user info. */
static int parse_endpoint(struct subscription *s, const char *url, bool allow_http)
{
    size_t n = strlen(url);
    if (n >= sizeof(s->endpoint)) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)url[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
            return -1;
        }
    }
    const char *rest;
    if (strncmp(url, "https://", 8) == 0) {
        s->https = true;
        rest = url + 8;
    } else if (allow_http && strncmp(url, "http://", 7) == 0) {
        s->https = false;
        rest = url + 7;
    } else {
        return -1;
    }
    size_t auth_len = strcspn(rest, "/?#");
    if (auth_len == 0 || memchr(rest, '@', auth_len) ||
        (size_t)(rest - url) + auth_len >= sizeof(s->origin)) {
        return -1;
    }
    memcpy(s->endpoint, url, n + 1);
    memcpy(s->origin, url, (size_t)(rest - url) + auth_len);
    s->origin[(size_t)(rest - url) + auth_len] = '\0';
    return 0;
}

/* On success s->ua_key is the caller's. */
static int parse_subscription(struct subscription *s, const char *text, bool allow_http)
{
    unsigned char point[BB_ECE_POINT_LEN];
    if (!text || !text[0]) {
        return -1;
    }
    json_object *root = json_tokener_parse(text), *endpoint, *keys, *p256dh, *auth;
    int rc = -1;
    if (!root || !json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "endpoint", &endpoint) ||
        !json_object_is_type(endpoint, json_type_string) ||
        !json_object_object_get_ex(root, "keys", &keys) ||
        !json_object_object_get_ex(keys, "p256dh", &p256dh) ||
        !json_object_object_get_ex(keys, "auth", &auth)) {
        goto free_root;
    }
    if (parse_endpoint(s, json_object_get_string(endpoint), allow_http) != 0 ||
        b64url_exact(p256dh, point, sizeof(point)) != 0 ||
        b64url_exact(auth, s->auth, sizeof(s->auth)) != 0) {
        goto free_root;
    }
    s->ua_key = bb_ece_p256_key(point, NULL);
    rc = s->ua_key ? 0 : -1;
free_root:
    json_object_put(root);
    return rc;
}

/* ---- the payload ------------------------------------------------------------------------- */

static const char *kind_name(int kind)
{
    return kind == BB_KIND_STATUS ? "status" : kind == BB_KIND_DIGEST ? "digest" : "report";
}

static const char *urgency_name(int urgency)
{
    return urgency == BB_URGENCY_IN_PROGRESS     ? "in_progress"
           : urgency == BB_URGENCY_INFORMATIONAL ? "informational"
                                                 : "recent";
}

/* RFC 8030 §5.3. */
static const char *urgency_header(int urgency)
{
    return urgency == BB_URGENCY_IN_PROGRESS     ? "high"
           : urgency == BB_URGENCY_INFORMATIONAL ? "low"
                                                 : "normal";
}

static void add_string(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v ? v : ""));
}

/* The payload JSON with text cut to at most text_len bytes (… appended when
 * cut); into host memory. */
static char *render_json(const struct webpush_ctx *c, const struct bb_delivery *d, size_t text_len,
                         size_t *len)
{
    const struct bb_notification *n = d->n;
    json_object *o = json_object_new_object();
    if (!o) {
        return NULL;
    }
    add_string(o, "kind", kind_name(n->kind));
    add_string(o, "title", n->title);
    if (c->show_text) {
        size_t full = strlen(n->text);
        if (text_len >= full) {
            add_string(o, "body", n->text);
        } else {
            /* Cut at a character boundary, never inside a UTF-8 sequence. */
            while (text_len > 0 && ((unsigned char)n->text[text_len] & 0xc0) == 0x80) {
                text_len--;
            }
            char *cut = c->host->alloc(text_len + 4);
            if (!cut) {
                json_object_put(o);
                return NULL;
            }
            memcpy(cut, n->text, text_len);
            memcpy(cut + text_len, "\xe2\x80\xa6", 4);
            add_string(o, "body", cut);
            c->host->free(cut);
        }
    }
    add_string(o, "report_id", n->report_id);
    add_string(o, "category", n->category_name);
    add_string(o, "urgency", urgency_name(n->urgency));
    add_string(o, "cell", n->cell);
    add_string(o, "delivery_id", d->delivery_id);
    size_t jl = 0;
    const char *js = json_object_to_json_string_length(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &jl);
    char *out = js ? c->host->alloc(jl + 1) : NULL;
    if (out) {
        memcpy(out, js, jl + 1);
        *len = jl;
    }
    json_object_put(o);
    return out;
}

/* The payload, shortened to fit one record: -1 when out of memory, -2 when
 * even without text it is too large. */
static int render_payload(const struct webpush_ctx *c, const struct bb_delivery *d,
                          struct message *m)
{
    size_t text_len = strlen(d->n->text);
    for (int tries = 0; tries < 4; tries++) {
        m->json = render_json(c, d, text_len, &m->json_len);
        if (!m->json) {
            return -1;
        }
        if (m->json_len <= BB_ECE_MAX_PLAINTEXT) {
            return 0;
        }
        c->host->free(m->json);
        m->json = NULL;
        /* Each byte of text cut shortens the JSON by at least one; 3 for the ellipsis. */
        size_t excess = m->json_len - BB_ECE_MAX_PLAINTEXT + 3;
        if (!c->show_text || text_len == 0) {
            break;
        }
        text_len = text_len > excess ? text_len - excess : 0;
    }
    return -2;
}

/* ---- one message ------------------------------------------------------------------------- */

static void topic_for(const char *report_id, char out[TOPIC_LEN + 1])
{
    out[0] = '\0';
    if (!report_id || !report_id[0]) {
        return;
    }
    /* 24 bytes of SHA-256 are exactly 32 base64url characters; the push
     * service learns nothing of the id itself. */
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(report_id, strlen(report_id), md, &mdlen, EVP_sha256(), NULL) != 1 ||
        bb_b64url_encode(md, 24, out, TOPIC_LEN + 1) != TOPIC_LEN) {
        out[0] = '\0';
    }
}

enum { MSG_OK = 0, MSG_NOMEM = -1, MSG_BAD_SUBSCRIPTION = -2, MSG_TOO_LARGE = -3, MSG_VAPID = -4 };

static const char *msg_reason(int rc)
{
    return rc == MSG_BAD_SUBSCRIPTION ? "bad_subscription"
           : rc == MSG_TOO_LARGE      ? "payload_too_large"
           : rc == MSG_VAPID          ? "vapid"
                                      : "out_of_memory";
}

static void message_free(struct webpush_ctx *c, struct message *m)
{
    EVP_PKEY_free(m->sub.ua_key);
    m->sub.ua_key = NULL;
    c->host->free(m->json);
    m->json = NULL;
}

/* On MSG_OK the caller frees m with message_free. */
static int build(struct webpush_ctx *c, const struct bb_delivery *d, struct message *m)
{
    memset(m, 0, sizeof(*m));
    const char *token = d->contact ? d->contact->push_token : NULL;
    if (parse_subscription(&m->sub, token, c->allow_http) != 0) {
        return MSG_BAD_SUBSCRIPTION;
    }
    int rc = render_payload(c, d, m);
    if (rc != 0) {
        message_free(c, m);
        return rc == -2 ? MSG_TOO_LARGE : MSG_NOMEM;
    }
    long ttl = d->n->urgency == BB_URGENCY_IN_PROGRESS ? c->ttl_in_progress_s : c->ttl_s;
    snprintf(m->ttl, sizeof(m->ttl), "%ld", ttl);
    m->urgency = urgency_header(d->n->urgency);
    topic_for(d->n->report_id, m->topic);
    m->authorization = bb_vapid_authorization(c->vapid, m->sub.origin, time(NULL));
    if (!m->authorization) {
        message_free(c, m);
        return MSG_VAPID;
    }
    return MSG_OK;
}

static size_t headers_of(const struct message *m, struct bb_http_header h[7])
{
    size_t n = 0;
    h[n++] = (struct bb_http_header){"Content-Encoding", "aes128gcm"};
    h[n++] = (struct bb_http_header){"Content-Type", "application/octet-stream"};
    h[n++] = (struct bb_http_header){"TTL", m->ttl};
    h[n++] = (struct bb_http_header){"Urgency", m->urgency};
    if (m->topic[0]) {
        h[n++] = (struct bb_http_header){"Topic", m->topic};
    }
    h[n++] = (struct bb_http_header){"Authorization", m->authorization};
    return n;
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct webpush_op *op = arg;
    char reason[48] = "";
    int status;
    long st = res->status;
    if (st >= 200 && st < 300) {
        status = BB_SEND_OK; /* 201 Created, RFC 8030 §5; some services say 200 or 202 */
    } else if (st == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error && res->error[0] ? res->error : "http");
    } else if (st == 404 || st == 410) {
        status = BB_SEND_GONE; /* the subscription expired or was withdrawn */
        snprintf(reason, sizeof(reason), "subscription_gone");
    } else if (st == 413) {
        status = BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "payload_too_large");
    } else {
        status = st == 408 || st == 429 || st >= 500 ? BB_SEND_RETRY : BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "http_%ld", st);
    }
    unsigned after =
        status == BB_SEND_RETRY && res->retry_after_s > 0 ? (unsigned)res->retry_after_s : 0;
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    op->c->host->free(op);
    done(token, status, after, reason);
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static EVP_PKEY *read_key(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "vapid_key_file: cannot open %s", path);
        return NULL;
    }
    char pem[8192];
    size_t n = fread(pem, 1, sizeof(pem) - 1, f);
    fclose(f);
    pem[n] = '\0';
    EVP_PKEY *key = bb_pem_private_key(pem, n);
    OPENSSL_cleanse(pem, sizeof(pem));
    if (!key) {
        snprintf(err, errlen, "vapid_key_file: no PEM private key in %s", path);
    }
    return key;
}

static bool subject_ok(const char *s)
{
    if (strncmp(s, "mailto:", 7) != 0 && strncmp(s, "https://", 8) != 0) {
        return false;
    }
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == '"' || *s == '\\') {
            return false;
        }
    }
    return true;
}

static int webpush_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                        void **ctx, char *err, size_t errlen)
{
    const char *key_file = cfg->value(cfg, "vapid_key_file");
    const char *subject = cfg->value(cfg, "subject");
    if (!subject || !subject_ok(subject) || strlen(subject) > 200) {
        snprintf(err, errlen, "subject: expected mailto:... or https://... (at most 200 bytes)");
        return -1;
    }
    long ttl = (long)cfg->integer(cfg, "ttl"), ttl_ip = (long)cfg->integer(cfg, "ttl_in_progress");
    if (ttl < 0 || ttl_ip < 0) {
        snprintf(err, errlen, "ttl: must not be negative");
        return -1;
    }
    if (!key_file || !key_file[0]) {
        snprintf(err, errlen, "vapid_key_file: required");
        return -1;
    }
    EVP_PKEY *key = read_key(key_file, err, errlen);
    if (!key) {
        return -1;
    }
    struct webpush_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        EVP_PKEY_free(key);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    c->vapid = bb_vapid_new(host, key, subject);
    if (!c->vapid) {
        host->free(c);
        snprintf(err, errlen, "vapid_key_file: not a P-256 (prime256v1) private key");
        return -1;
    }
    c->ttl_s = ttl;
    c->ttl_in_progress_s = ttl_ip;
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    c->show_text = cfg->integer(cfg, "show_text") != 0;
    c->allow_http = cfg->integer(cfg, "allow_http") != 0;
    /* The public key is what the web app subscribes with (applicationServerKey). */
    host->log(host->host, BB_PLUGIN_INFO, "webpush ready", "channel=%s vapid_public_key=%s",
              cfg->instance ? cfg->instance : "", bb_vapid_public_key(c->vapid));
    *ctx = c;
    return 0;
}

static int webpush_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct webpush_ctx *c = ctx;
    struct message m;
    if (build(c, d, &m) != MSG_OK) {
        return -1;
    }
    struct bb_http_header h[7];
    size_t nh = headers_of(&m, h);
    size_t cap = strlen(m.sub.endpoint) + m.json_len + 2048;
    char *p = c->host->alloc(cap);
    if (!p) {
        message_free(c, &m);
        return -1;
    }
    size_t len = (size_t)snprintf(p, cap, "POST %s\n", m.sub.endpoint);
    for (size_t i = 0; i < nh; i++) {
        len += (size_t)snprintf(p + len, cap - len, "%s: %s\n", h[i].name, h[i].value);
    }
    len += (size_t)snprintf(p + len, cap - len, "Content-Length: %zu\n\n%s\n",
                            (size_t)BB_ECE_BODY_LEN(m.json_len), m.json);
    message_free(c, &m);
    *out = p;
    *outlen = len;
    return 0;
}

static int webpush_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct webpush_ctx *c = ctx;
    struct message m;
    int rc = build(c, d, &m);
    if (rc == MSG_BAD_SUBSCRIPTION || rc == MSG_TOO_LARGE) {
        done(token, BB_SEND_PERMANENT, 0, msg_reason(rc));
        return 0;
    }
    if (rc != MSG_OK) {
        c->host->log(c->host->host, BB_PLUGIN_WARN, "webpush message not built",
                     "delivery=%s reason=%s", d->delivery_id, msg_reason(rc));
        return -1;
    }
    unsigned char body[BB_ECE_RS];
    size_t body_len =
        bb_ece_encrypt(m.sub.ua_key, m.sub.auth, m.json, m.json_len, body, sizeof(body));
    struct webpush_op *op = body_len ? c->host->alloc(sizeof(*op)) : NULL;
    if (!op) {
        message_free(c, &m);
        return -1;
    }
    *op = (struct webpush_op){c, done, token};
    struct bb_http_header h[7];
    struct bb_http_request req = {
        .struct_size = sizeof(req),
        .method = "POST",
        .url = m.sub.endpoint,
        .headers = h,
        .nheaders = headers_of(&m, h),
        .body = body,
        .body_len = body_len,
        .timeout_ms = c->timeout_ms,
        .http2 = m.sub.https,
        .pool = "webpush",
    };
    /* The host copies the body and the headers. */
    rc = c->host->http(c->host->host, &req, on_response, op);
    message_free(c, &m);
    if (rc != 0) {
        c->host->free(op);
        return -1;
    }
    return 0;
}

static void webpush_destroy(void *ctx)
{
    struct webpush_ctx *c = ctx;
    if (!c) {
        return;
    }
    bb_vapid_free(c->vapid);
    c->host->free(c);
}

static const struct bb_channel webpush_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "webpush",
    .description = "Web Push to browsers (RFC 8030, aes128gcm RFC 8291, VAPID RFC 8292)",
    .caps = BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY | BB_CAP_HTTP2,
    .options = webpush_options,
    .init = webpush_init,
    .send = webpush_send,
    .format = webpush_format,
    .destroy = webpush_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &webpush_channel : NULL;
}
