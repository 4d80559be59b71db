/* The webhook channel: one JSON POST per delivery (the notification, its
 * delivery_id and recipient_kind; common/notification_json.c) to
 * channel.<inst>.url, or for a group recipient to its contact endpoint
 * when the host resolved one. Headers:
 *
 *   X-Buurtbus-Signature: sha256=<hex HMAC-SHA256 of the body, keyed by secret_file>
 *   X-Buurtbus-Delivery: <delivery_id>
 *   Idempotency-Key: <delivery_id>
 *
 * Outcomes: 2xx sent; 408, 429, 5xx and transport errors retried (with the
 * response's Retry-After); 410 gone; any other status permanent.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

#include "buurtbus/channel.h"
#include "notification_json.h"

struct webhook_ctx {
    const struct bb_host_api *host;
    char url[1024];
    unsigned char *secret;
    size_t secret_len;
    long timeout_ms;
};

struct webhook_op {
    struct webhook_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option webhook_options[] = {
    {"url", BB_OPTION_STRING, NULL, "where deliveries are POSTed"},
    {"secret_file", BB_OPTION_SECRET_FILE, NULL, "file whose first line keys the HMAC signature"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {NULL, 0, NULL, NULL},
};

/* "sha256=" and the hex HMAC of body: 7 + 64 + 1 bytes. */
static int sign(const struct webhook_ctx *c, const char *body, size_t len, char out[72])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (!HMAC(EVP_sha256(), c->secret, (int)c->secret_len, (const unsigned char *)body, len, mac,
              &maclen) ||
        maclen != 32) {
        return -1;
    }
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "sha256=", 7);
    for (unsigned i = 0; i < maclen; i++) {
        out[7 + 2 * i] = hex[mac[i] >> 4];
        out[8 + 2 * i] = hex[mac[i] & 15];
    }
    out[7 + 2 * maclen] = '\0';
    return 0;
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct webhook_op *op = arg;
    char reason[48];
    int status;
    if (res->status >= 200 && res->status < 300) {
        status = BB_SEND_OK;
        reason[0] = '\0';
    } else if (res->status == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error && res->error[0] ? res->error : "http");
    } else {
        snprintf(reason, sizeof(reason), "http_%ld", res->status);
        status = res->status == 408 || res->status == 429 || res->status >= 500 ? BB_SEND_RETRY
                 : res->status == 410                                           ? BB_SEND_GONE
                                                                                : BB_SEND_PERMANENT;
    }
    unsigned after =
        status == BB_SEND_RETRY && res->retry_after_s > 0 ? (unsigned)res->retry_after_s : 0;
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    op->c->host->free(op);
    done(token, status, after, reason);
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static int webhook_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                        void **ctx, char *err, size_t errlen)
{
    const char *url = cfg->value(cfg, "url");
    const char *secret = cfg->value(cfg, "secret_file");
    if (!url || !url[0]) {
        snprintf(err, errlen, "url: required");
        return -1;
    }
    if (strlen(url) >= sizeof(((struct webhook_ctx *)0)->url)) {
        snprintf(err, errlen, "url: too long");
        return -1;
    }
    if (!secret || !secret[0]) {
        snprintf(err, errlen, "secret_file: empty secret");
        return -1;
    }
    struct webhook_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    snprintf(c->url, sizeof(c->url), "%s", url);
    c->secret_len = strlen(secret);
    c->secret = host->alloc(c->secret_len + 1);
    if (!c->secret) {
        host->free(c);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(c->secret, secret, c->secret_len + 1);
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    *ctx = c;
    return 0;
}

static int webhook_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct webhook_ctx *c = ctx;
    struct bb_nj_buf b = {.host = c->host};
    if (bb_nj_render(&b, d, BB_NJ_DELIVERY) != 0) {
        bb_nj_free(&b);
        return -1;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
}

static int webhook_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct webhook_ctx *c = ctx;
    const char *url = c->url;
    const struct bb_contact *ct = d->contact;
    if (d->recipient_kind == BB_RECIPIENT_GROUP && ct &&
        BB_HAS_FIELD(ct, struct bb_contact, endpoint) && ct->endpoint && ct->endpoint[0]) {
        url = ct->endpoint;
    }
    struct bb_nj_buf b = {.host = c->host};
    char sig[72];
    if (bb_nj_render(&b, d, BB_NJ_DELIVERY) != 0 || sign(c, b.p, b.len, sig) != 0) {
        bb_nj_free(&b);
        return -1;
    }
    struct webhook_op *op = c->host->alloc(sizeof(*op));
    if (!op) {
        bb_nj_free(&b);
        return -1;
    }
    *op = (struct webhook_op){c, done, token};
    struct bb_http_header h[] = {
        {"Content-Type", "application/json"},
        {"X-Buurtbus-Signature", sig},
        {"X-Buurtbus-Delivery", d->delivery_id},
        {"Idempotency-Key", d->delivery_id},
    };
    struct bb_http_request req = {
        .struct_size = sizeof(req),
        .method = "POST",
        .url = url,
        .headers = h,
        .nheaders = sizeof(h) / sizeof(h[0]),
        .body = b.p,
        .body_len = b.len,
        .timeout_ms = c->timeout_ms,
        .pool = "webhook",
    };
    /* The host copies the body (CURLOPT_COPYPOSTFIELDS) and the headers. */
    int rc = c->host->http(c->host->host, &req, on_response, op);
    bb_nj_free(&b);
    if (rc != 0) {
        c->host->free(op);
        return -1;
    }
    return 0;
}

static void webhook_destroy(void *ctx)
{
    struct webhook_ctx *c = ctx;
    if (!c) {
        return;
    }
    if (c->secret) {
        memset(c->secret, 0, c->secret_len);
        c->host->free(c->secret);
    }
    c->host->free(c);
}

static const struct bb_channel webhook_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "webhook",
    .description = "signed JSON POST per delivery (HMAC-SHA256)",
    .caps = BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY | BB_CAP_DIGEST,
    .options = webhook_options,
    .init = webhook_init,
    .send = webhook_send,
    .format = webhook_format,
    .destroy = webhook_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &webhook_channel : NULL;
}
