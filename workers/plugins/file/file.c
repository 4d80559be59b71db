/* The file channel: one JSON line per delivery, appended to a file
 * (channel.<inst>.path). For tests, audits and as the smallest example of
 * a plug-in. Each line goes out in one write(2) on an O_APPEND descriptor,
 * optionally followed by fdatasync, before done() reports it sent.
 *
 * Threads: the host's event-loop thread (every callback). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "buurtbus/channel.h"

struct file_ctx {
    const struct bb_host_api *host;
    char instance[128];
    int fd;
    int sync;
};

static const struct bb_channel_option file_options[] = {
    {"path", BB_OPTION_STRING, NULL, "file the JSON lines are appended to"},
    {"fsync", BB_OPTION_BOOL, "no", "fdatasync after every line"},
    {NULL, 0, NULL, NULL},
};

/* ---- a growing buffer from the host's allocator ------------------------------------------ */

struct buf {
    const struct bb_host_api *host;
    char *p;
    size_t len, cap;
    int oom;
};

static void buf_put(struct buf *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = b->host->realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* A JSON string: quotes, backslash and control characters escaped
 * (RFC 8259); U+2028/U+2029 too, so a line is safe to embed in JS. Bytes
 * at or above 0x80 pass through: the host checked the UTF-8. */
static void buf_json(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    buf_put(b, "\"", 1);
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p != '"' && *p != '\\' && *p != 0x7f &&
               !(p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9))) {
            p++;
        }
        buf_put(b, (const char *)run, (size_t)(p - run));
        if (!*p) {
            break;
        }
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            buf_put(b, esc, 2);
            p++;
        } else if (*p == '\n' || *p == '\r' || *p == '\t') {
            buf_put(b, *p == '\n' ? "\\n" : *p == '\r' ? "\\r" : "\\t", 2);
            p++;
        } else if (*p == 0xe2) {
            buf_put(b, p[2] == 0xa8 ? "\\u2028" : "\\u2029", 6);
            p += 3;
        } else {
            snprintf(esc, sizeof(esc), "\\u00%c%c", hex[*p >> 4], hex[*p & 15]);
            buf_put(b, esc, 6);
            p++;
        }
    }
    buf_put(b, "\"", 1);
}

static void buf_field(struct buf *b, const char *name, const char *value)
{
    buf_put(b, ",\"", 2);
    buf_str(b, name);
    buf_put(b, "\":", 2);
    buf_json(b, value);
}

static void buf_num(struct buf *b, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void buf_num(struct buf *b, const char *name, const char *fmt, ...)
{
    char v[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof(v), fmt, ap);
    va_end(ap);
    buf_put(b, ",\"", 2);
    buf_str(b, name);
    buf_put(b, "\":", 2);
    buf_str(b, v);
}

static const char *kind_name(int kind)
{
    return kind == BB_KIND_REPORT   ? "report"
           : kind == BB_KIND_STATUS ? "status"
           : kind == BB_KIND_DIGEST ? "digest"
                                    : "unknown";
}

static const char *urgency_name(int u)
{
    return u == BB_URGENCY_INFORMATIONAL ? "informational"
           : u == BB_URGENCY_RECENT      ? "recent"
           : u == BB_URGENCY_IN_PROGRESS ? "in_progress"
                                         : "unspecified";
}

/* One line, with its newline. */
static int render(struct file_ctx *c, const struct bb_delivery *d, struct buf *b)
{
    const struct bb_notification *n = d->n;
    const struct bb_contact *ct = d->contact;
    buf_str(b, "{\"delivery_id\":");
    buf_json(b, d->delivery_id);
    buf_num(b, "recipient", "%" PRIu64, d->recipient);
    buf_field(b, "recipient_kind", d->recipient_kind == BB_RECIPIENT_GROUP ? "group" : "user");
    buf_field(b, "channel", c->instance);
    buf_num(b, "attempt", "%u", d->attempt);
    if (n) {
        buf_field(b, "kind", kind_name(n->kind));
        buf_field(b, "report_id", n->report_id);
        if (n->kind == BB_KIND_STATUS) {
            buf_field(b, "status_id", n->status_id);
        }
        buf_field(b, "title", n->title);
        buf_field(b, "locale", n->locale);
        buf_field(b, "urgency", urgency_name(n->urgency));
        buf_field(b, "category_name", n->category_name);
        buf_field(b, "text", n->text);
        buf_field(b, "author", n->anonymous ? "" : n->author);
        buf_num(b, "anonymous", "%s", n->anonymous ? "true" : "false");
        buf_field(b, "cell", n->cell);
        buf_num(b, "time_ms", "%" PRId64, n->time_ms);
        if (n->group_name && n->group_name[0]) {
            buf_field(b, "group_name", n->group_name);
        }
    }
    if (ct && BB_HAS_FIELD(ct, struct bb_contact, locale)) {
        buf_field(b, "contact_locale", ct->locale);
    }
    buf_str(b, "}\n");
    return b->oom ? -1 : 0;
}

/* ---- the plug-in's callbacks ------------------------------------------------------------- */

static int file_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                     void **ctx, char *err, size_t errlen)
{
    const char *path = cfg->value(cfg, "path");
    if (!path || !path[0]) {
        snprintf(err, errlen, "path: required");
        return -1;
    }
    struct file_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->host = host;
    c->sync = (int)cfg->integer(cfg, "fsync");
    snprintf(c->instance, sizeof(c->instance), "%s", cfg->instance);
    c->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (c->fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        host->free(c);
        return -1;
    }
    *ctx = c;
    return 0;
}

static int file_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct file_ctx *c = ctx;
    struct buf b = {.host = c->host};
    if (render(c, d, &b) != 0) {
        c->host->free(b.p);
        return -1;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
}

static int file_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct file_ctx *c = ctx;
    struct buf b = {.host = c->host};
    if (render(c, d, &b) != 0) {
        c->host->free(b.p);
        return -1;
    }
    /* One write on O_APPEND: lines of concurrent writers never interleave. */
    ssize_t w = write(c->fd, b.p, b.len);
    c->host->free(b.p);
    if (w < 0 || (size_t)w != b.len) {
        c->host->log(c->host->host, BB_PLUGIN_ERROR, "append failed", "errno=%d", errno);
        done(token, BB_SEND_RETRY, 0, "write_error");
        return 0;
    }
    if (c->sync && fdatasync(c->fd) != 0) {
        done(token, BB_SEND_RETRY, 0, "fsync_error");
        return 0;
    }
    done(token, BB_SEND_OK, 0, "");
    return 0;
}

static void file_destroy(void *ctx)
{
    struct file_ctx *c = ctx;
    if (!c) {
        return;
    }
    close(c->fd);
    c->host->free(c);
}

static const struct bb_channel file_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "file",
    .description = "appends one JSON line per delivery to a file",
    .caps = BB_CAP_BATCH,
    .options = file_options,
    .init = file_init,
    .send = file_send,
    .format = file_format,
    .destroy = file_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &file_channel : NULL;
}
