/* The Facebook channel: one public post per delivery (a single report or
 * update, or a digest's aggregated post; common/social_text.c) on a Page's
 * feed through the Graph API:
 *
 *   POST {graph_url}/{api_version}/{page_id}/feed
 *   Content-Type: application/x-www-form-urlencoded
 *   message=...&access_token=<page access token>
 *
 * The token travels in the body, never in the URL (URLs end up in logs).
 * format() renders the body with the token replaced by "REDACTED".
 *
 * Outcomes: 2xx sent; a Graph error (JSON "error": {"code": ...}) with
 * code 4, 17, 32 or 613 (rate limits), or a bare 429, retried, with
 * Retry-After if given; code 1 or 2 (temporary) and 5xx and transport
 * errors retried; code 190 (token invalid or expired) or a bare 401
 * permanent "unauthorized"; any other error permanent "fb_<code>" (or
 * "http_<status>" without a Graph error).
 *
 * The Graph API has no idempotency key: a retry after a lost response may
 * post twice.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buurtbus/channel.h"
#include "social_text.h"

struct facebook_ctx {
    const struct bb_host_api *host;
    char *url;   /* {graph_url}/{api_version}/{page_id}/feed */
    char *token; /* the page access token: never logged */
    long timeout_ms;
    struct bb_social_style style;
};

struct facebook_op {
    struct facebook_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option facebook_options[] = {
    {"graph_url", BB_OPTION_STRING, "https://graph.facebook.com", "the Graph API's base URL"},
    {"api_version", BB_OPTION_STRING, "v19.0", "Graph API version in the path"},
    {"page_id", BB_OPTION_STRING, NULL, "the Page whose feed gets the posts"},
    {"access_token_file", BB_OPTION_SECRET_FILE, NULL,
     "file whose first line is the Page access token (pages_manage_posts)"},
    {"max_chars", BB_OPTION_INT, "2000", "longest post"},
    {"media_links", BB_OPTION_BOOL, "no", "append publishable media URLs as links"},
    {"timeout", BB_OPTION_DURATION_MS, "10s", "per request"},
    {NULL, 0, NULL, NULL},
};

/* The form body for d, with token as the access token; the caller frees b. */
static int render_body(const struct facebook_ctx *c, const struct bb_delivery *d, const char *token,
                       struct bb_social_buf *b)
{
    char *text = bb_social_render(d, &c->style);
    if (!text) {
        return -1;
    }
    bb_social_buf_puts(b, "message=");
    bb_social_buf_form(b, text);
    bb_social_buf_puts(b, "&access_token=");
    bb_social_buf_form(b, token);
    free(text);
    return b->oom ? -1 : 0;
}

/* The Graph error's code, or -1. */
static int graph_error_code(const struct bb_http_response *res)
{
    if (!res->body || res->body_len == 0) {
        return -1;
    }
    json_tokener *tok = json_tokener_new();
    if (!tok) {
        return -1;
    }
    json_object *o = json_tokener_parse_ex(tok, res->body, (int)res->body_len);
    json_tokener_free(tok);
    json_object *e, *c;
    int code = -1;
    if (o && json_object_object_get_ex(o, "error", &e) &&
        json_object_object_get_ex(e, "code", &c) && json_object_is_type(c, json_type_int)) {
        code = json_object_get_int(c);
    }
    json_object_put(o);
    return code;
}

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct facebook_op *op = arg;
    char reason[48] = "";
    int status;
    unsigned after = 0;
    long http = res->status;
    int code = http >= 200 && http < 300 ? -1 : graph_error_code(res);
    if (http >= 200 && http < 300) {
        status = BB_SEND_OK;
    } else if (http == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error && res->error[0] ? res->error : "http");
    } else if (code == 4 || code == 17 || code == 32 || code == 613 || http == 429) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "rate_limited");
    } else if (code == 190 || (code < 0 && http == 401)) {
        status = BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), "unauthorized");
    } else if (code == 1 || code == 2 || http == 408 || http >= 500) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), code > 0 ? "fb_%d" : "http_%d",
                 code > 0 ? code : (int)http);
    } else {
        status = BB_SEND_PERMANENT;
        snprintf(reason, sizeof(reason), code > 0 ? "fb_%d" : "http_%d",
                 code > 0 ? code : (int)http);
    }
    if (status == BB_SEND_RETRY && http > 0 && res->retry_after_s > 0) {
        after = (unsigned)res->retry_after_s;
    }
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    op->c->host->free(op);
    done(token, status, after, reason);
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static int facebook_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                         void **ctx, char *err, size_t errlen)
{
    const char *base = cfg->value(cfg, "graph_url");
    const char *ver = cfg->value(cfg, "api_version");
    const char *page = cfg->value(cfg, "page_id");
    const char *tok = cfg->value(cfg, "access_token_file");
    if (!base || (strncmp(base, "https://", 8) != 0 && strncmp(base, "http://", 7) != 0)) {
        snprintf(err, errlen, "graph_url: expected an http(s) URL");
        return -1;
    }
    if (!ver || !ver[0] || strcspn(ver, "/?# ") != strlen(ver)) {
        snprintf(err, errlen, "api_version: expected e.g. v19.0");
        return -1;
    }
    if (!page || !page[0] || strcspn(page, "/?#& ") != strlen(page)) {
        snprintf(err, errlen, "page_id: expected the Page's id");
        return -1;
    }
    size_t toklen = tok ? strcspn(tok, " \t\r\n") : 0;
    if (toklen == 0) {
        snprintf(err, errlen, "access_token_file: empty token");
        return -1;
    }
    int64_t max = cfg->integer(cfg, "max_chars");
    if (max < 50 || max > 63206) {
        snprintf(err, errlen, "max_chars: expected 50 to 63206");
        return -1;
    }
    struct facebook_ctx *c = host->alloc(sizeof(*c));
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
    size_t ulen = blen + strlen(ver) + strlen(page) + sizeof("///feed");
    c->url = host->alloc(ulen);
    c->token = host->alloc(toklen + 1);
    if (!c->url || !c->token) {
        host->free(c->url);
        host->free(c->token);
        host->free(c);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(c->url, ulen, "%.*s/%s/%s/feed", (int)blen, base, ver, page);
    memcpy(c->token, tok, toklen);
    c->token[toklen] = '\0';
    c->timeout_ms = (long)cfg->integer(cfg, "timeout");
    c->style = (struct bb_social_style){(size_t)max, BB_SOCIAL_CODEPOINTS,
                                        cfg->integer(cfg, "media_links") != 0};
    *ctx = c;
    return 0;
}

static int facebook_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct facebook_ctx *c = ctx;
    struct bb_social_buf b = {0};
    if (render_body(c, d, "REDACTED", &b) != 0) {
        bb_social_buf_free(&b);
        return -1;
    }
    return bb_social_buf_out(c->host, &b, out, outlen);
}

static int facebook_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct facebook_ctx *c = ctx;
    struct bb_social_buf b = {0};
    struct facebook_op *op = c->host->alloc(sizeof(*op));
    if (!op || render_body(c, d, c->token, &b) != 0) {
        if (op) {
            c->host->free(op);
        }
        bb_social_buf_free(&b);
        return -1;
    }
    *op = (struct facebook_op){c, done, token};
    struct bb_http_header h[] = {
        {"Content-Type", "application/x-www-form-urlencoded"},
    };
    return bb_social_post(c->host, c->url, h, sizeof(h) / sizeof(h[0]), &b, c->timeout_ms,
                          "facebook", on_response, op);
}

static void facebook_destroy(void *ctx)
{
    struct facebook_ctx *c = ctx;
    if (!c) {
        return;
    }
    if (c->token) {
        memset(c->token, 0, strlen(c->token));
        c->host->free(c->token);
    }
    c->host->free(c->url);
    c->host->free(c);
}

static const struct bb_channel facebook_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "facebook",
    .description = "public posts on a Facebook Page's feed (aggregated, no personal data)",
    .caps = BB_CAP_BATCH | BB_CAP_PUBLIC | BB_CAP_DIGEST,
    .options = facebook_options,
    .init = facebook_init,
    .send = facebook_send,
    .format = facebook_format,
    .destroy = facebook_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &facebook_channel : NULL;
}
