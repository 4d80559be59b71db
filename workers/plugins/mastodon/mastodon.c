/* The Mastodon channel: one public status per delivery (a single report or
 * update, or a digest's aggregated post; common/social_text.c) on the
 * account whose access token is in access_token_file:
 *
 *   POST {instance_url}/api/v1/statuses
 *   Authorization: Bearer <token>
 *   Idempotency-Key: <delivery_id>
 *   {"status": "...", "visibility": "public", "language": "nl"}
 *
 * Outcomes: 2xx sent; 429 retried after X-RateLimit-Reset (or Retry-After);
 * 401/403 permanent "unauthorized"; 422 permanent (the server refused the
 * status); 408, 5xx and transport errors retried; anything else permanent.
 * The server keeps an Idempotency-Key for an hour, so a retry after a lost
 * response returns the same status instead of posting twice.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buurtbus/channel.h"
#include "social_text.h"

struct mastodon_ctx {
    const struct bb_host_api *host;
    char *url;  /* {instance_url}/api/v1/statuses */
    char *auth; /* "Bearer <token>": never logged */
    char visibility[16];
    long timeout_ms;
    struct bb_social_style style;
};

struct mastodon_op {
    struct mastodon_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option mastodon_options[] = {
    {"instance_url", BB_OPTION_STRING, NULL, "the server, e.g. https://mastodon.social"},
    {"access_token_file", BB_OPTION_SECRET_FILE, NULL,
     "file whose first line is the account's access token (scope write:statuses)"},
    {"visibility", BB_OPTION_STRING, "public", "public, unlisted, private or direct"},
    {"max_chars", BB_OPTION_INT, "500", "the server's status length limit"},
    {"media_links", BB_OPTION_BOOL, "no", "append publishable media URLs as links"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {NULL, 0, NULL, NULL},
};

/* The JSON body for d; the caller frees b. */
static int render_body(const struct mastodon_ctx *c, const struct bb_delivery *d,
                       struct bb_social_buf *b)
{
    char *text = bb_social_render(d, &c->style);
    if (!text) {
        return -1;
    }
    bb_social_buf_puts(b, "{\"status\":");
    bb_social_buf_json(b, text);
    bb_social_buf_puts(b, ",\"visibility\":");
    bb_social_buf_json(b, c->visibility);
    bb_social_buf_puts(b, ",\"language\":");
    bb_social_buf_json(b, bb_social_lang(d->n->locale));
    bb_social_buf_puts(b, "}");
    free(text);
    return b->oom ? -1 : 0;
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct mastodon_op *op = arg;
    char reason[48] = "";
    int status;
    unsigned after = 0;
    long code = res->status;
    if (code >= 200 && code < 300) {
        status = BB_SEND_OK;
    } else if (code == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error && res->error[0] ? res->error : "http");
    } else if (code == 429) {
        status = BB_SEND_RETRY;
        after = bb_social_retry_after(res, "X-RateLimit-Reset", (int64_t)time(NULL));
        snprintf(reason, sizeof(reason), "rate_limited");
    } else if (code == 401 || code == 403) {
        status = BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "unauthorized");
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

static int mastodon_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                         void **ctx, char *err, size_t errlen)
{
    const char *base = cfg->value(cfg, "instance_url");
    const char *tok = cfg->value(cfg, "access_token_file");
    const char *vis = cfg->value(cfg, "visibility");
    if (!base || (strncmp(base, "https://", 8) != 0 && strncmp(base, "http://", 7) != 0)) {
        snprintf(err, errlen, "instance_url: expected an http(s) URL");
        return -1;
    }
    size_t toklen = tok ? strcspn(tok, " \t\r\n") : 0;
    if (toklen == 0) {
        snprintf(err, errlen, "access_token_file: empty token");
        return -1;
    }
    if (!vis || (strcmp(vis, "public") != 0 && strcmp(vis, "unlisted") != 0 &&
                 strcmp(vis, "private") != 0 && strcmp(vis, "direct") != 0)) {
        snprintf(err, errlen, "visibility: expected public, unlisted, private or direct");
        return -1;
    }
    int64_t max = cfg->integer(cfg, "max_chars");
    if (max < 50 || max > 100000) {
        snprintf(err, errlen, "max_chars: expected 50 to 100000");
        return -1;
    }
    struct mastodon_ctx *c = host->alloc(sizeof(*c));
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
    static const char path[] = "/api/v1/statuses";
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
    snprintf(c->visibility, sizeof(c->visibility), "%s", vis);
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    c->style = (struct bb_social_style){(size_t)max, BB_SOCIAL_CODEPOINTS,
                                        cfg->integer(cfg, "media_links") != 0};
    *ctx = c;
    return 0;
}

static int mastodon_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct mastodon_ctx *c = ctx;
    struct bb_social_buf b = {0};
    if (render_body(c, d, &b) != 0) {
        bb_social_buf_free(&b);
        return -1;
    }
    return bb_social_buf_out(c->host, &b, out, outlen);
}

static int mastodon_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct mastodon_ctx *c = ctx;
    struct bb_social_buf b = {0};
    struct mastodon_op *op = c->host->alloc(sizeof(*op));
    if (!op || render_body(c, d, &b) != 0) {
        if (op) {
            c->host->free(op);
        }
        bb_social_buf_free(&b);
        return -1;
    }
    *op = (struct mastodon_op){c, done, token};
    struct bb_http_header h[] = {
        {"Content-Type", "application/json"},
        {"Authorization", c->auth},
        {"Idempotency-Key", d->delivery_id},
    };
    return bb_social_post(c->host, c->url, h, sizeof(h) / sizeof(h[0]), &b, c->timeout_ms,
                          "mastodon", on_response, op);
}

static void mastodon_destroy(void *ctx)
{
    struct mastodon_ctx *c = ctx;
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

static const struct bb_channel mastodon_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "mastodon",
    .description = "public statuses on a Mastodon account (aggregated, no personal data)",
    .caps = BB_CAP_BATCH | BB_CAP_PUBLIC | BB_CAP_DIGEST | BB_CAP_IDEMPOTENCY_KEY,
    .options = mastodon_options,
    .init = mastodon_init,
    .send = mastodon_send,
    .format = mastodon_format,
    .destroy = mastodon_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &mastodon_channel : NULL;
}
