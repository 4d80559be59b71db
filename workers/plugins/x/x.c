/* The X channel: one public post per delivery (a single report or update,
 * or a digest's aggregated post; common/social_text.c, X's weighted length
 * of 280) through X API v2:
 *
 *   POST {api_url}/2/tweets
 *   Authorization: Bearer <OAuth 2.0 user-context access token>
 *   {"text": "..."}
 *
 * Outcomes: 2xx (201) sent; 403 about duplicate content sent (X refuses a
 * text it already posted on this account: it is out there), reason
 * "duplicate"; any other 403 permanent "forbidden"; 401 permanent
 * "unauthorized"; 429 retried after x-rate-limit-reset (or Retry-After);
 * 408, 5xx and transport errors retried; anything else permanent.
 *
 * X has no idempotency key: a retry after a lost response may post again,
 * unless the text is the same, which X then refuses as a duplicate (above).
 * The token is the operator's to refresh (it expires after two hours
 * unless refreshed with offline.access); OAuth 1.0a is not supported.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "buurtbus/channel.h"
#include "social_text.h"

struct x_ctx {
    const struct bb_host_api *host;
    char *url;  /* {api_url}/2/tweets */
    char *auth; /* "Bearer <token>": never logged */
    long timeout_ms;
    struct bb_social_style style;
};

struct x_op {
    struct x_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option x_options[] = {
    {"api_url", BB_OPTION_STRING, "https://api.x.com", "the API's base URL"},
    {"access_token_file", BB_OPTION_SECRET_FILE, NULL,
     "file whose first line is an OAuth 2.0 user-context access token (tweet.write); the "
     "operator refreshes it"},
    {"max_chars", BB_OPTION_INT, "280", "weighted post length limit"},
    {"media_links", BB_OPTION_BOOL, "no", "append publishable media URLs as links"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {NULL, 0, NULL, NULL},
};

static int render_body(const struct x_ctx *c, const struct bb_delivery *d, struct bb_social_buf *b)
{
    char *text = bb_social_render(d, &c->style);
    if (!text) {
        return -1;
    }
    bb_social_buf_puts(b, "{\"text\":");
    bb_social_buf_json(b, text);
    bb_social_buf_puts(b, "}");
    free(text);
    return b->oom ? -1 : 0;
}

/* X answers a repeated text with 403 and a problem whose detail says
 * "duplicate content". */
static int is_duplicate(const struct bb_http_response *res)
{
    const char *p = res->body;
    size_t n = res->body_len;
    static const char needle[] = "duplicate content";
    for (size_t i = 0; p && i + sizeof(needle) - 1 <= n; i++) {
        if (strncasecmp(p + i, needle, sizeof(needle) - 1) == 0) {
            return 1;
        }
    }
    return 0;
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct x_op *op = arg;
    char reason[48] = "";
    int status;
    unsigned after = 0;
    long code = res->status;
    if (code >= 200 && code < 300) {
        status = BB_SEND_OK;
    } else if (code == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error && res->error[0] ? res->error : "http");
    } else if (code == 403 && is_duplicate(res)) {
        status = BB_SEND_OK;
        snprintf(reason, sizeof(reason), "duplicate");
    } else if (code == 429) {
        status = BB_SEND_RETRY;
        after = bb_social_retry_after(res, "x-rate-limit-reset", (int64_t)time(NULL));
        snprintf(reason, sizeof(reason), "rate_limited");
    } else if (code == 401) {
        status = BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "unauthorized");
    } else if (code == 403) {
        status = BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "forbidden");
    } else {
        status = code == 408 || code >= 500 ? BB_SEND_RETRY : BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "http_%ld", code);
        if (status == BB_SEND_RETRY && res->retry_after_s > 0) {
            after = (unsigned)res->retry_after_s;
        }
    }
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    op->c->host->free(op);
    done(token, status, after, reason);
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static int x_init(const struct bb_host_api *host, const struct bb_channel_config *cfg, void **ctx,
                  char *err, size_t errlen)
{
    const char *base = cfg->value(cfg, "api_url");
    const char *tok = cfg->value(cfg, "access_token_file");
    if (!base || (strncmp(base, "https://", 8) != 0 && strncmp(base, "http://", 7) != 0)) {
        snprintf(err, errlen, "api_url: expected an http(s) URL");
        return -1;
    }
    size_t toklen = tok ? strcspn(tok, " \t\r\n") : 0;
    if (toklen == 0) {
        snprintf(err, errlen, "access_token_file: empty token");
        return -1;
    }
    int64_t max = cfg->integer(cfg, "max_chars");
    if (max < 50 || max > 25000) {
        snprintf(err, errlen, "max_chars: expected 50 to 25000");
        return -1;
    }
    struct x_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/') {
        blen--;
    }
    static const char path[] = "/2/tweets";
    c->url = host->alloc(blen + sizeof(path));
    c->auth = host->alloc(toklen + sizeof("Bearer "));
    if (!c->url || !c->auth) {
        host->free(c->url);
        host->free(c->auth);
        host->free(c);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(c->url, blen + sizeof(path), "%.*s%s", (int)blen, base, path);
    snprintf(c->auth, toklen + sizeof("Bearer "), "Bearer %.*s", (int)toklen, tok);
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    c->style = (struct bb_social_style){(size_t)max, BB_SOCIAL_X_WEIGHTED,
                                        cfg->integer(cfg, "media_links") != 0};
    *ctx = c;
    return 0;
}

static int x_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct x_ctx *c = ctx;
    struct bb_social_buf b = {0};
    if (render_body(c, d, &b) != 0) {
        bb_social_buf_free(&b);
        return -1;
    }
    return bb_social_buf_out(c->host, &b, out, outlen);
}

static int x_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct x_ctx *c = ctx;
    struct bb_social_buf b = {0};
    struct x_op *op = c->host->alloc(sizeof(*op));
    if (!op || render_body(c, d, &b) != 0) {
        if (op) {
            c->host->free(op);
        }
        bb_social_buf_free(&b);
        return -1;
    }
    *op = (struct x_op){c, done, token};
    struct bb_http_header h[] = {
        {"Content-Type", "application/json"},
        {"Authorization", c->auth},
    };
    return bb_social_post(c->host, c->url, h, sizeof(h) / sizeof(h[0]), &b, c->timeout_ms, "x",
                          on_response, op);
}

static void x_destroy(void *ctx)
{
    struct x_ctx *c = ctx;
    if (!c) {
        return;
    }
    if (c->auth) {
        memset(c->auth, 0, strlen(c->auth));
        c->host->free(c->auth);
    }
    c->host->free(c->url);
    c->host->free(c);
}

static const struct bb_channel x_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "x",
    .description = "public posts on an X account, API v2 (aggregated, no personal data)",
    .caps = BB_CAP_BATCH | BB_CAP_PUBLIC | BB_CAP_DIGEST,
    .options = x_options,
    .init = x_init,
    .send = x_send,
    .format = x_format,
    .destroy = x_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &x_channel : NULL;
}
