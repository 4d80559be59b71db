/* The fcm channel: Firebase Cloud Messaging HTTP v1, one
 *
 *   POST {endpoint}/v1/projects/{project_id}/messages:send
 *   Authorization: Bearer <OAuth2 access token>
 *
 * per delivery over HTTP/2 (push_http.c: the host's HTTP helper, or with
 * ca_file the plug-in's own libcurl handle on the host's multi handle).
 * The access token comes from the service account's OAuth2 JWT-bearer
 * grant (RFC 7523): an RS256 JWT (common/jwt.c) POSTed to token_uri. It is cached
 * until a minute before it expires; one token request runs at a time and
 * sends arriving meanwhile wait in a FIFO for it. A 401/403 from FCM drops
 * the cached token (if it is still the one that request used) and the
 * delivery is retried by the host with a fresh one.
 *
 * Outcomes: 200 sent; UNREGISTERED or FCM's 404 NOT_FOUND gone
 * ("unregistered"; a 404 without FCM's error body is permanent); 400 with
 * a token field violation gone ("invalid_token"), other 400 permanent
 * ("invalid_argument"); 403 SENDER_ID_MISMATCH permanent; 401/403 retried
 * after dropping the token; 429 retried with Retry-After
 * ("quota_exceeded"); 5xx and transport errors retried.
 *
 * Idempotency: FCM v1 has no idempotency key; android.collapse_key (and
 * apns-collapse-id for iOS through FCM) is the report id, so a device
 * shows at most one notification per report even if a message is sent
 * twice. The delivery id travels in data.delivery_id for the app.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buurtbus/channel.h"
#include "jwt.h"
#include "push_http.h"
#include "push_text.h"

#define FCM_SCOPE "https://www.googleapis.com/auth/firebase.messaging"
#define TOKEN_MARGIN_MS 60000

enum token_state { TOKEN_NONE, TOKEN_FETCHING, TOKEN_VALID };

struct fcm_op;

struct fcm_ctx {
    const struct bb_host_api *host;
    char url[1024]; /* .../v1/projects/<id>/messages:send */
    char token_uri[1024];
    char client_email[256];
    char key_id[128]; /* private_key_id, the JWT's kid ("" if absent) */
    EVP_PKEY *key;
    char ca_file[512]; /* "" : the host's HTTP helper and the system CAs */
    long timeout_ms;
    int show_text;

    /* The cached access token; gen counts tokens so that a 401 drops only
     * the token the failing request used. */
    int token_state;
    char access_token[2048];
    int64_t token_expires_ms; /* monotonic */
    unsigned token_gen;
    struct fcm_op *wait_head, *wait_tail; /* sends waiting for a token */
    struct fcm_op *ops;                   /* every send not yet completed, freed by destroy */
};

struct fcm_op {
    struct fcm_ctx *c;
    bb_send_done_fn *done;
    void *token;
    char *body;
    size_t body_len;
    unsigned token_gen;
    struct fcm_op *next;              /* in the wait queue */
    struct fcm_op *prev_op, *next_op; /* in c->ops */
};

static const struct bb_channel_option fcm_options[] = {
    {"service_account_file", BB_OPTION_STRING, NULL,
     "Google service-account JSON (project_id, client_email, private_key, token_uri)"},
    {"endpoint", BB_OPTION_STRING, "https://fcm.googleapis.com", "FCM base URL"},
    {"token_uri", BB_OPTION_STRING, "", "OAuth2 token endpoint; empty: the key file's token_uri"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {"ca_file", BB_OPTION_STRING, "",
     "PEM CA bundle to trust instead of the system's (a private CA or a test provider)"},
    {"show_text", BB_OPTION_BOOL, "no",
     "show the report's text on the lock screen (else only title and place)"},
    {NULL, 0, NULL, NULL},
};

/* ---- the message ------------------------------------------------------------------------- */

static const char *urgency_name(int u)
{
    return u == BB_URGENCY_IN_PROGRESS ? "in_progress"
           : u == BB_URGENCY_RECENT    ? "recent"
                                       : "informational";
}

static const char *kind_name(int k)
{
    return k == BB_KIND_STATUS ? "status" : k == BB_KIND_DIGEST ? "digest" : "report";
}

/* The messages:send body for d, text cut to text_max bytes (push_build_fn). */
static json_object *message_json(const void *ctx, const struct bb_delivery *d, size_t text_max)
{
    const struct fcm_ctx *c = ctx;
    const struct bb_notification *n = d->n;
    const char *tok = d->contact && d->contact->push_token ? d->contact->push_token : "";
    char title[PUSH_TITLE_MAX + 8], text[PUSH_TEXT_MAX + 8];
    push_alert(n, c->show_text, text_max, title, sizeof(title), text, sizeof(text));
    int in_progress = n->urgency == BB_URGENCY_IN_PROGRESS;
    int64_t ttl = push_ttl_s(n->urgency);
    int64_t left = n->time_ms > 0 ? n->time_ms / 1000 + ttl - (int64_t)time(NULL) : ttl;

    json_object *root = json_object_new_object();
    json_object *msg = json_object_new_object();
    json_object_object_add(root, "message", msg);
    push_json_str(msg, "token", tok);
    json_object *note = json_object_new_object();
    push_json_str(note, "title", title);
    push_json_str(note, "body", text);
    json_object_object_add(msg, "notification", note);
    json_object *data = json_object_new_object();
    push_json_str(data, "report_id", n->report_id);
    push_json_str(data, "category", n->category_name);
    push_json_str(data, "urgency", urgency_name(n->urgency));
    push_json_str(data, "cell", n->cell);
    push_json_str(data, "delivery_id", d->delivery_id);
    push_json_str(data, "kind", kind_name(n->kind));
    json_object_object_add(msg, "data", data);
    json_object *android = json_object_new_object();
    push_json_str(android, "collapse_key", n->report_id);
    push_json_str(android, "priority", in_progress ? "HIGH" : "NORMAL");
    char ttl_text[32];
    snprintf(ttl_text, sizeof(ttl_text), "%llds", (long long)(left > 0 ? left : 0));
    push_json_str(android, "ttl", ttl_text);
    json_object_object_add(msg, "android", android);
    /* iOS devices reached through FCM. */
    json_object *apns = json_object_new_object();
    json_object *ah = json_object_new_object();
    push_json_str(ah, "apns-priority", in_progress ? "10" : "5");
    if (n->report_id && n->report_id[0] && strlen(n->report_id) <= 64) {
        push_json_str(ah, "apns-collapse-id", n->report_id);
    }
    json_object_object_add(apns, "headers", ah);
    json_object_object_add(msg, "apns", apns);
    return root;
}

static int render(const struct fcm_ctx *c, const struct bb_delivery *d, char **out, size_t *outlen)
{
    return push_render(c->host, message_json, c, d, out, outlen);
}

/* ---- outcomes ---------------------------------------------------------------------------- */

/* A provider's word as a short reason: lower case, [a-z0-9_], at most 32. */
static void reason_from(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; s && *s && o + 1 < cap && o < 32; s++) {
        char ch = *s;
        if (ch >= 'A' && ch <= 'Z') {
            ch = (char)(ch - 'A' + 'a');
        } else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'))) {
            ch = '_';
        }
        out[o++] = ch;
    }
    out[o] = '\0';
}

/* From an FCM error body: status ("NOT_FOUND"), the FcmError errorCode
 * ("UNREGISTERED"), and whether a field violation names the token. */
static void parse_error(const char *body, size_t len, char *status, char *code, size_t cap,
                        int *token_invalid)
{
    status[0] = code[0] = '\0';
    *token_invalid = 0;
    json_tokener *tk = json_tokener_new();
    json_object *root = tk ? json_tokener_parse_ex(tk, body, (int)len) : NULL;
    json_object *err, *v, *details;
    if (root && json_object_object_get_ex(root, "error", &err)) {
        if (json_object_object_get_ex(err, "status", &v)) {
            snprintf(status, cap, "%s", json_object_get_string(v));
        }
        if (json_object_object_get_ex(err, "details", &details) &&
            json_object_is_type(details, json_type_array)) {
            for (size_t i = 0; i < json_object_array_length(details); i++) {
                json_object *dt = json_object_array_get_idx(details, i), *fv;
                if (json_object_object_get_ex(dt, "errorCode", &v)) {
                    snprintf(code, cap, "%s", json_object_get_string(v));
                }
                if (json_object_object_get_ex(dt, "fieldViolations", &fv) &&
                    json_object_is_type(fv, json_type_array)) {
                    for (size_t j = 0; j < json_object_array_length(fv); j++) {
                        json_object *f = json_object_array_get_idx(fv, j);
                        if (json_object_object_get_ex(f, "field", &v) &&
                            strcmp(json_object_get_string(v), "message.token") == 0) {
                            *token_invalid = 1;
                        }
                    }
                }
            }
        }
        if (json_object_object_get_ex(err, "message", &v) &&
            strstr(json_object_get_string(v), "registration token")) {
            *token_invalid = 1;
        }
    }
    json_object_put(root);
    if (tk) {
        json_tokener_free(tk);
    }
}

static void op_free(struct fcm_op *op)
{
    struct fcm_ctx *c = op->c;
    const struct bb_host_api *host = c->host;
    if (op->prev_op) {
        op->prev_op->next_op = op->next_op;
    } else {
        c->ops = op->next_op;
    }
    if (op->next_op) {
        op->next_op->prev_op = op->prev_op;
    }
    host->free(op->body);
    host->free(op);
}

static void finish(struct fcm_op *op, int status, unsigned after, const char *reason)
{
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    op_free(op);
    done(token, status, after, reason);
}

static void drop_token(struct fcm_ctx *c, unsigned gen)
{
    if (c->token_state == TOKEN_VALID && c->token_gen == gen) {
        c->token_state = TOKEN_NONE;
        memset(c->access_token, 0, sizeof(c->access_token));
    }
}

static void on_send_response(void *arg, const struct bb_http_response *res)
{
    struct fcm_op *op = arg;
    struct fcm_ctx *c = op->c;
    char reason[48];
    if (res->status >= 200 && res->status < 300) {
        finish(op, BB_SEND_OK, 0, "");
        return;
    }
    if (res->status == 0) {
        reason_from(res->error && res->error[0] ? res->error : "http", reason, sizeof(reason));
        finish(op, BB_SEND_RETRY, 0, reason);
        return;
    }
    char status[48], code[48];
    int token_invalid = 0;
    parse_error(res->body, res->body_len, status, code, sizeof(status), &token_invalid);
    unsigned after = res->retry_after_s > 0 ? (unsigned)res->retry_after_s : 0;
    long s = res->status;
    /* A bare 404 (no FCM error body: a wrong endpoint, a proxy) must not
     * remove every recipient's token: only FCM's own NOT_FOUND counts. */
    if (strcmp(code, "UNREGISTERED") == 0 || (s == 404 && strcmp(status, "NOT_FOUND") == 0)) {
        finish(op, BB_SEND_GONE, 0, "unregistered");
    } else if (s == 400) {
        if (token_invalid) {
            finish(op, BB_SEND_GONE, 0, "invalid_token");
        } else {
            finish(op, BB_SEND_PERMANENT, 0, "invalid_argument");
        }
    } else if (s == 403 && strcmp(code, "SENDER_ID_MISMATCH") == 0) {
        finish(op, BB_SEND_PERMANENT, 0, "sender_id_mismatch");
    } else if (s == 401 || s == 403) {
        drop_token(c, op->token_gen);
        c->host->log(c->host->host, BB_PLUGIN_WARN, "fcm access token refused", "status=%ld", s);
        finish(op, BB_SEND_RETRY, 0, s == 401 ? "unauthenticated" : "permission_denied");
    } else if (s == 429) {
        finish(op, BB_SEND_RETRY, after, "quota_exceeded");
    } else if (s >= 500) {
        if (code[0] || status[0]) {
            reason_from(code[0] ? code : status, reason, sizeof(reason));
        } else {
            snprintf(reason, sizeof(reason), "http_%ld", s);
        }
        finish(op, BB_SEND_RETRY, after, reason);
    } else {
        snprintf(reason, sizeof(reason), "http_%ld", s);
        finish(op, BB_SEND_PERMANENT, 0, reason);
    }
}

/* Starts op's request with the cached token; completes op on failure. */
static void post_message(struct fcm_op *op)
{
    struct fcm_ctx *c = op->c;
    char auth[2100];
    snprintf(auth, sizeof(auth), "Bearer %s", c->access_token);
    op->token_gen = c->token_gen;
    struct bb_http_header h[] = {
        {"Content-Type", "application/json; charset=UTF-8"},
        {"Authorization", auth},
    };
    struct push_http_req req = {
        .url = c->url,
        .headers = h,
        .nheaders = sizeof(h) / sizeof(h[0]),
        .body = op->body,
        .body_len = op->body_len,
        .timeout_ms = c->timeout_ms,
        .ca_file = c->ca_file,
        .pool = "fcm",
    };
    int rc = push_http_post(c->host, &req, on_send_response, op);
    memset(auth, 0, sizeof(auth));
    if (rc != 0) {
        finish(op, BB_SEND_RETRY, 0, "http_start");
    }
}

/* ---- the access token -------------------------------------------------------------------- */

static void fail_waiting(struct fcm_ctx *c, const char *reason)
{
    struct fcm_op *op = c->wait_head;
    c->wait_head = c->wait_tail = NULL;
    while (op) {
        struct fcm_op *next = op->next;
        finish(op, BB_SEND_RETRY, 0, reason);
        op = next;
    }
}

static void on_token_response(void *arg, const struct bb_http_response *res)
{
    struct fcm_ctx *c = arg;
    char reason[48];
    if (res->status != 200) {
        c->token_state = TOKEN_NONE;
        if (res->status == 0) {
            snprintf(reason, sizeof(reason), "oauth_transport");
        } else {
            snprintf(reason, sizeof(reason), "oauth_http_%ld", res->status);
        }
        c->host->log(c->host->host, BB_PLUGIN_WARN, "fcm access token request failed", "reason=%s",
                     reason);
        fail_waiting(c, reason);
        return;
    }
    json_tokener *tk = json_tokener_new();
    json_object *root = tk ? json_tokener_parse_ex(tk, res->body, (int)res->body_len) : NULL;
    json_object *at, *ex;
    const char *tok = NULL;
    int64_t expires_s = 0;
    if (root && json_object_object_get_ex(root, "access_token", &at) &&
        json_object_is_type(at, json_type_string)) {
        tok = json_object_get_string(at);
    }
    if (root && json_object_object_get_ex(root, "expires_in", &ex)) {
        expires_s = json_object_get_int64(ex);
    }
    int ok = tok && tok[0] && strlen(tok) < sizeof(c->access_token) &&
             strcspn(tok, "\r\n") == strlen(tok) && expires_s > 0;
    if (ok) {
        snprintf(c->access_token, sizeof(c->access_token), "%s", tok);
        int64_t life = expires_s * 1000;
        /* Renew a minute early; a short-lived token at half its life. */
        life = life > 2 * TOKEN_MARGIN_MS ? life - TOKEN_MARGIN_MS : life / 2;
        c->token_expires_ms = push_mono_ms() + life;
        c->token_gen++;
        c->token_state = TOKEN_VALID;
    }
    json_object_put(root);
    if (tk) {
        json_tokener_free(tk);
    }
    if (!ok) {
        c->token_state = TOKEN_NONE;
        c->host->log(c->host->host, BB_PLUGIN_WARN, "fcm access token response unusable", "%s", "");
        fail_waiting(c, "oauth_bad_response");
        return;
    }
    c->host->log(c->host->host, BB_PLUGIN_DEBUG, "fcm access token", "expires_in=%lld",
                 (long long)expires_s);
    /* Everything that waited goes out now, in order. */
    struct fcm_op *op = c->wait_head;
    c->wait_head = c->wait_tail = NULL;
    while (op) {
        struct fcm_op *next = op->next;
        op->next = NULL;
        post_message(op);
        op = next;
    }
}

/* The signed assertion of the JWT-bearer grant. */
static size_t make_assertion(const struct fcm_ctx *c, char *out, size_t cap)
{
    char header[256];
    if (c->key_id[0]) {
        snprintf(header, sizeof(header), "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
                 c->key_id);
    } else {
        snprintf(header, sizeof(header), "{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
    }
    int64_t now = (int64_t)time(NULL);
    json_object *cl = json_object_new_object();
    push_json_str(cl, "iss", c->client_email);
    push_json_str(cl, "scope", FCM_SCOPE);
    push_json_str(cl, "aud", c->token_uri);
    json_object_object_add(cl, "iat", json_object_new_int64(now));
    json_object_object_add(cl, "exp", json_object_new_int64(now + 3600));
    const char *claims =
        json_object_to_json_string_ext(cl, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t n = claims ? bb_jwt_sign(c->key, "RS256", header, claims, out, cap) : 0;
    json_object_put(cl);
    return n;
}

static void fetch_token(struct fcm_ctx *c)
{
    static const char prefix[] =
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
    char form[4096];
    memcpy(form, prefix, sizeof(prefix));
    size_t n = make_assertion(c, form + sizeof(prefix) - 1, sizeof(form) - sizeof(prefix) + 1);
    if (n == 0) {
        c->host->log(c->host->host, BB_PLUGIN_ERROR, "fcm assertion not signed", "%s", "");
        fail_waiting(c, "oauth_sign");
        return;
    }
    struct bb_http_header h[] = {{"Content-Type", "application/x-www-form-urlencoded"}};
    struct push_http_req req = {
        .url = c->token_uri,
        .headers = h,
        .nheaders = 1,
        .body = form,
        .body_len = sizeof(prefix) - 1 + n,
        .timeout_ms = c->timeout_ms,
        .ca_file = c->ca_file,
        .pool = "fcm-oauth",
    };
    c->token_state = TOKEN_FETCHING;
    int rc = push_http_post(c->host, &req, on_token_response, c);
    OPENSSL_cleanse(form, sizeof(form));
    if (rc != 0) {
        c->token_state = TOKEN_NONE;
        fail_waiting(c, "http_start");
    }
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static char *read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Copies the string member k of o into out; 0, or -1 if absent or too long. */
static int json_copy(json_object *o, const char *k, char *out, size_t cap)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v) || !json_object_is_type(v, json_type_string) ||
        (size_t)json_object_get_string_len(v) >= cap) {
        return -1;
    }
    memcpy(out, json_object_get_string(v), (size_t)json_object_get_string_len(v) + 1);
    return 0;
}

/* Reads the service account into c; 0, or -1 with err. */
static int load_account(struct fcm_ctx *c, const char *path, const char *endpoint,
                        const char *token_uri, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = read_file(path, 1 << 16, &len);
    if (!text) {
        snprintf(err, errlen, "service_account_file: cannot read '%s'", path);
        return -1;
    }
    int rc = -1;
    json_object *o = json_tokener_parse(text);
    char project[256], pem[8192], file_uri[1024] = "";
    if (!o) {
        snprintf(err, errlen, "service_account_file: not JSON");
        goto free_text;
    }
    if (json_copy(o, "project_id", project, sizeof(project)) != 0 || !project[0] ||
        strcspn(project, "/?#% ") != strlen(project)) {
        snprintf(err, errlen, "service_account_file: project_id missing or invalid");
        goto free_json;
    }
    if (json_copy(o, "client_email", c->client_email, sizeof(c->client_email)) != 0) {
        snprintf(err, errlen, "service_account_file: client_email missing");
        goto free_json;
    }
    if (json_copy(o, "private_key_id", c->key_id, sizeof(c->key_id)) != 0 ||
        strcspn(c->key_id, "\"\\") != strlen(c->key_id)) {
        c->key_id[0] = '\0';
    }
    json_copy(o, "token_uri", file_uri, sizeof(file_uri));
    if (json_copy(o, "private_key", pem, sizeof(pem)) != 0 ||
        !(c->key = bb_pem_private_key(pem, strlen(pem))) ||
        EVP_PKEY_get_base_id(c->key) != EVP_PKEY_RSA) {
        snprintf(err, errlen, "service_account_file: private_key missing or not an RSA key");
        goto wipe_pem;
    }
    const char *uri = token_uri && token_uri[0] ? token_uri : file_uri;
    if (!uri[0] || strlen(uri) >= sizeof(c->token_uri)) {
        snprintf(err, errlen, "token_uri: none in the key file and none configured");
        goto wipe_pem;
    }
    snprintf(c->token_uri, sizeof(c->token_uri), "%s", uri);
    size_t el = strlen(endpoint);
    while (el > 0 && endpoint[el - 1] == '/') {
        el--;
    }
    if (snprintf(c->url, sizeof(c->url), "%.*s/v1/projects/%s/messages:send", (int)el, endpoint,
                 project) >= (int)sizeof(c->url)) {
        snprintf(err, errlen, "endpoint: too long");
        goto wipe_pem;
    }
    rc = 0;
wipe_pem:
    OPENSSL_cleanse(pem, sizeof(pem));
free_json:
    json_object_put(o);
free_text:
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

static void fcm_destroy(void *ctx);

static int fcm_init(const struct bb_host_api *host, const struct bb_channel_config *cfg, void **ctx,
                    char *err, size_t errlen)
{
    const char *path = cfg->value(cfg, "service_account_file");
    const char *endpoint = cfg->value(cfg, "endpoint");
    if (!path || !path[0]) {
        snprintf(err, errlen, "service_account_file: required");
        return -1;
    }
    if (!endpoint ||
        (strncmp(endpoint, "https://", 8) != 0 && strncmp(endpoint, "http://", 7) != 0)) {
        snprintf(err, errlen, "endpoint: expected an http(s) URL");
        return -1;
    }
    struct fcm_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    c->show_text = cfg->integer(cfg, "show_text") != 0;
    const char *ca = cfg->value(cfg, "ca_file");
    if (ca && strlen(ca) >= sizeof(c->ca_file)) {
        snprintf(err, errlen, "ca_file: path too long");
        fcm_destroy(c);
        return -1;
    }
    snprintf(c->ca_file, sizeof(c->ca_file), "%s", ca ? ca : "");
    if (load_account(c, path, endpoint, cfg->value(cfg, "token_uri"), err, errlen) != 0) {
        fcm_destroy(c);
        return -1;
    }
    *ctx = c;
    return 0;
}

static int fcm_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    return render(ctx, d, out, outlen);
}

static int fcm_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct fcm_ctx *c = ctx;
    const char *tok = d->contact && d->contact->push_token ? d->contact->push_token : "";
    if (!tok[0]) {
        done(token, BB_SEND_PERMANENT, 0, "no_push_token");
        return 0;
    }
    struct fcm_op *op = c->host->alloc(sizeof(*op));
    if (!op) {
        return -1;
    }
    memset(op, 0, sizeof(*op));
    op->c = c;
    op->done = done;
    op->token = token;
    if (render(c, d, &op->body, &op->body_len) != 0) {
        c->host->free(op);
        return -1;
    }
    op->next_op = c->ops;
    if (c->ops) {
        c->ops->prev_op = op;
    }
    c->ops = op;
    if (c->token_state == TOKEN_VALID && push_mono_ms() >= c->token_expires_ms) {
        c->token_state = TOKEN_NONE;
    }
    if (c->token_state == TOKEN_VALID) {
        post_message(op);
        return 0;
    }
    /* Wait for the token; the first waiter starts the request. */
    if (c->wait_tail) {
        c->wait_tail->next = op;
    } else {
        c->wait_head = op;
    }
    c->wait_tail = op;
    if (c->token_state == TOKEN_NONE) {
        fetch_token(c);
    }
    return 0;
}

static void fcm_destroy(void *ctx)
{
    struct fcm_ctx *c = ctx;
    if (!c) {
        return;
    }
    /* Sends waiting or in flight are abandoned (the host has stopped its
     * loop and drops their requests; it retries the deliveries). */
    while (c->ops) {
        op_free(c->ops);
    }
    EVP_PKEY_free(c->key);
    OPENSSL_cleanse(c->access_token, sizeof(c->access_token));
    c->host->free(c);
}

static const struct bb_channel fcm_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "fcm",
    .description = "Firebase Cloud Messaging HTTP v1 push (OAuth2 service account)",
    .caps = BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY | BB_CAP_HTTP2,
    .options = fcm_options,
    .init = fcm_init,
    .send = fcm_send,
    .format = fcm_format,
    .destroy = fcm_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &fcm_channel : NULL;
}
