/* A test plug-in for the host's HTTP helper: POSTs each delivery id to
 * channel.<inst>.url and maps the answer to an outcome the way real
 * channels do (2xx ok, 429/5xx retry with Retry-After, 404/410 gone,
 * other 4xx permanent, no response retry); an X-Error response header
 * becomes the reason.
 *
 * Threads: the host's event-loop thread. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "buurtbus/channel.h"

struct http_ctx {
    const struct bb_host_api *host;
    char url[512];
};

struct send_op {
    struct http_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option http_options[] = {
    {"url", BB_OPTION_STRING, NULL, "where to POST"},
    {NULL, 0, NULL, NULL},
};

static int http_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                     void **ctx, char *err, size_t errlen)
{
    struct http_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->host = host;
    snprintf(c->url, sizeof(c->url), "%s", cfg->value(cfg, "url"));
    *ctx = c;
    return 0;
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct send_op *op = arg;
    char reason[32];
    int status;
    if (res->status >= 200 && res->status < 300) {
        status = BB_SEND_OK;
        reason[0] = '\0';
    } else if (res->status == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error);
    } else {
        snprintf(reason, sizeof(reason), "http_%ld", res->status);
        status = res->status == 429 || res->status >= 500   ? BB_SEND_RETRY
                 : res->status == 404 || res->status == 410 ? BB_SEND_GONE
                                                            : BB_SEND_PERMANENT;
        if (status == BB_SEND_GONE) {
            snprintf(reason, sizeof(reason), "unregistered");
        }
        /* The provider's own word for it, from a response header. */
        for (size_t i = 0; i < res->nheaders; i++) {
            if (strcasecmp(res->headers[i].name, "X-Error") == 0) {
                snprintf(reason, sizeof(reason), "%s", res->headers[i].value);
            }
        }
    }
    unsigned after = res->retry_after_s > 0 ? (unsigned)res->retry_after_s : 0;
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    op->c->host->free(op);
    done(token, status, after, reason);
}

static int http_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct http_ctx *c = ctx;
    struct send_op *op = c->host->alloc(sizeof(*op));
    if (!op) {
        return -1;
    }
    *op = (struct send_op){c, done, token};
    char rcpt[32];
    snprintf(rcpt, sizeof(rcpt), "%llu", (unsigned long long)d->recipient);
    struct bb_http_header h[] = {
        {"Idempotency-Key", d->delivery_id}, {"X-Recipient", rcpt}, {"Content-Type", "text/plain"}};
    struct bb_http_request req = {
        .struct_size = sizeof(req),
        .method = "POST",
        .url = c->url,
        .headers = h,
        .nheaders = 3,
        .body = d->delivery_id,
        .body_len = strlen(d->delivery_id),
        .timeout_ms = 5000,
        .pool = "test",
    };
    if (c->host->http(c->host->host, &req, on_response, op) != 0) {
        c->host->free(op);
        return -1;
    }
    return 0;
}

static void http_destroy(void *ctx)
{
    struct http_ctx *c = ctx;
    c->host->free(c);
}

static const struct bb_channel http_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "httptest",
    .description = "test: POSTs delivery ids through the host's HTTP helper",
    .caps = BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY,
    .options = http_options,
    .init = http_init,
    .send = http_send,
    .destroy = http_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &http_channel : NULL;
}
