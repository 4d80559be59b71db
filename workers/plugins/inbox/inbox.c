/* The in-app inbox channel. Each delivery becomes
 *
 *   XADD bb:inbox:<user> MAXLEN ~ <max_items> * id <delivery_id> p <json>
 *   PUBLISH bb:inbox-live:<user> <json>
 *
 * on the host's Redis connection (host->redis), the JSON being the
 * notification (common/notification_json.c). The stream is what an app
 * reads when it opens; the PUBLISH lets a connected app gateway follow.
 * A delivery is sent when the XADD answers with an entry id; the PUBLISH
 * is best effort (nobody may be listening) and goes out after that.
 *
 * Exactly once: the host's bb:sent:<delivery_id> marker keeps a delivery
 * from being sent twice. The one gap is a retry after the XADD reply was
 * lost (connection dropped after Redis applied it): so on attempt > 1 the
 * plug-in first reads the newest `dedup_window` entries and reports the
 * delivery sent, without adding it again, if one of them holds its id.
 *
 * Group recipients have no inbox: such deliveries are permanent failures
 * ("no_inbox") rather than writes under a group id.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "buurtbus/channel.h"
#include "notification_json.h"

struct inbox_ctx {
    const struct bb_host_api *host;
    char max_items[24];
    char dedup_window[24];
};

/* One delivery in flight. */
struct inbox_op {
    struct inbox_ctx *c;
    bb_send_done_fn *done;
    void *token;
    uint64_t user;
    char delivery_id[128];
    struct bb_nj_buf json;
};

static const struct bb_channel_option inbox_options[] = {
    {"max_items", BB_OPTION_INT, "200", "entries kept per user's inbox (MAXLEN ~)"},
    {"dedup_window", BB_OPTION_INT, "20",
     "newest entries searched for the delivery id before a retried XADD (0: never)"},
    {NULL, 0, NULL, NULL},
};

static void op_finish(struct inbox_op *op, int status, const char *reason)
{
    bb_send_done_fn *done = op->done;
    void *token = op->token;
    bb_nj_free(&op->json);
    op->c->host->free(op);
    done(token, status, 0, reason);
}

static void on_xadd(void *arg, const void *reply)
{
    struct inbox_op *op = arg;
    struct inbox_ctx *c = op->c;
    const redisReply *r = reply;
    if (!r) {
        op_finish(op, BB_SEND_RETRY, "redis_down");
        return;
    }
    if (r->type != REDIS_REPLY_STRING) {
        c->host->log(c->host->host, BB_PLUGIN_WARN, "inbox XADD failed", "type=%d delivery=%s",
                     r->type, op->delivery_id);
        op_finish(op, BB_SEND_RETRY, r->type == REDIS_REPLY_ERROR ? "redis_error" : "redis_reply");
        return;
    }
    char key[64];
    snprintf(key, sizeof(key), "bb:inbox-live:%" PRIu64, op->user);
    const char *argv[] = {"PUBLISH", key, op->json.p};
    size_t len[] = {7, strlen(key), op->json.len};
    /* Best effort: the inbox entry is what counts. */
    c->host->redis(c->host->host, NULL, NULL, 3, argv, len);
    op_finish(op, BB_SEND_OK, "");
}

static int start_xadd(struct inbox_op *op)
{
    struct inbox_ctx *c = op->c;
    char key[64];
    snprintf(key, sizeof(key), "bb:inbox:%" PRIu64, op->user);
    const char *argv[] = {"XADD", key,  "MAXLEN",        "~", c->max_items,
                          "*",    "id", op->delivery_id, "p", op->json.p};
    size_t len[10];
    for (int i = 0; i < 10; i++) {
        len[i] = i == 9 ? op->json.len : strlen(argv[i]);
    }
    return c->host->redis(c->host->host, on_xadd, op, 10, argv, len);
}

/* The newest entries: does one already hold this delivery? */
static int holds_delivery(const redisReply *r, const char *id)
{
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
            e->element[1]->type != REDIS_REPLY_ARRAY) {
            continue;
        }
        const redisReply *f = e->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            if (f->element[k]->type == REDIS_REPLY_STRING &&
                f->element[k + 1]->type == REDIS_REPLY_STRING &&
                strcmp(f->element[k]->str, "id") == 0 && strcmp(f->element[k + 1]->str, id) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

static void on_recent(void *arg, const void *reply)
{
    struct inbox_op *op = arg;
    const redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        op_finish(op, BB_SEND_RETRY, r ? "redis_error" : "redis_down");
        return;
    }
    if (holds_delivery(r, op->delivery_id)) {
        op_finish(op, BB_SEND_OK, "already_in_inbox");
        return;
    }
    if (start_xadd(op) != 0) {
        op_finish(op, BB_SEND_RETRY, "redis_down");
    }
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static int inbox_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                      void **ctx, char *err, size_t errlen)
{
    int64_t max_items = cfg->integer(cfg, "max_items");
    int64_t window = cfg->integer(cfg, "dedup_window");
    if (max_items < 1) {
        snprintf(err, errlen, "max_items: must be at least 1");
        return -1;
    }
    if (window < 0 || window > 1000) {
        snprintf(err, errlen, "dedup_window: must be 0..1000");
        return -1;
    }
    struct inbox_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    snprintf(c->max_items, sizeof(c->max_items), "%" PRId64, max_items);
    snprintf(c->dedup_window, sizeof(c->dedup_window), "%" PRId64, window);
    *ctx = c;
    return 0;
}

static int inbox_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct inbox_ctx *c = ctx;
    struct bb_nj_buf b = {.host = c->host};
    if (bb_nj_render(&b, d, 0) != 0) {
        bb_nj_free(&b);
        return -1;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
}

static int inbox_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct inbox_ctx *c = ctx;
    if (d->recipient_kind == BB_RECIPIENT_GROUP) {
        done(token, BB_SEND_PERMANENT, 0, "no_inbox");
        return 0;
    }
    struct inbox_op *op = c->host->alloc(sizeof(*op));
    if (!op) {
        return -1;
    }
    memset(op, 0, sizeof(*op));
    op->c = c;
    op->done = done;
    op->token = token;
    op->user = d->recipient;
    op->json.host = c->host;
    snprintf(op->delivery_id, sizeof(op->delivery_id), "%s", d->delivery_id);
    if (bb_nj_render(&op->json, d, 0) != 0) {
        bb_nj_free(&op->json);
        c->host->free(op);
        return -1;
    }
    int rc;
    if (d->attempt > 1 && strcmp(c->dedup_window, "0") != 0) {
        char key[64];
        snprintf(key, sizeof(key), "bb:inbox:%" PRIu64, op->user);
        const char *argv[] = {"XREVRANGE", key, "+", "-", "COUNT", c->dedup_window};
        size_t len[6];
        for (int i = 0; i < 6; i++) {
            len[i] = strlen(argv[i]);
        }
        rc = c->host->redis(c->host->host, on_recent, op, 6, argv, len);
    } else {
        rc = start_xadd(op);
    }
    if (rc != 0) {
        /* Not started: the host retries; done must not be called. */
        bb_nj_free(&op->json);
        c->host->free(op);
        return -1;
    }
    return 0;
}

static void inbox_destroy(void *ctx)
{
    struct inbox_ctx *c = ctx;
    if (c) {
        c->host->free(c);
    }
}

static const struct bb_channel inbox_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "inbox",
    .description = "in-app inbox: a capped Redis stream per user plus a live PUBLISH",
    .caps = BB_CAP_BATCH | BB_CAP_DIGEST, /* a digest is one entry with its items */
    .options = inbox_options,
    .init = inbox_init,
    .send = inbox_send,
    .format = inbox_format,
    .destroy = inbox_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &inbox_channel : NULL;
}
