/* The file channel: one JSON line per delivery, appended to a file
 * (channel.<inst>.path). For tests, audits and as the smallest example of
 * a plug-in. Each line goes out in one write(2) on an O_APPEND descriptor,
 * optionally followed by fdatasync, before done() reports it sent. A line
 * torn by a kill (possible for writes across pages) is ended with a
 * newline when the file is opened again; readers skip lines that do not
 * parse.
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
#include "notification_json.h"

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

/* One line: the notification as the other channels render it
 * (notification_json), plus where and how it was delivered. */
static int render(struct file_ctx *c, const struct bb_delivery *d, struct bb_nj_buf *b)
{
    bb_nj_render(b, d, BB_NJ_DELIVERY | BB_NJ_OPEN);
    bb_nj_raw(b, "recipient", "%" PRIu64, d->recipient);
    bb_nj_field(b, "channel", c->instance);
    bb_nj_raw(b, "attempt", "%u", d->attempt);
    if (d->contact && BB_HAS_FIELD(d->contact, struct bb_contact, locale)) {
        bb_nj_field(b, "contact_locale", d->contact->locale);
    }
    bb_nj_text(b, "}\n");
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
    c->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (c->fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        host->free(c);
        return -1;
    }
    /* A process killed inside a write of more than a page can leave half a
     * line: end it, so the next line starts on its own. */
    char last;
    off_t end = lseek(c->fd, 0, SEEK_END);
    if (end > 0 && pread(c->fd, &last, 1, end - 1) == 1 && last != '\n' &&
        write(c->fd, "\n", 1) != 1) {
        snprintf(err, errlen, "cannot repair %s: %s", path, strerror(errno));
        close(c->fd);
        host->free(c);
        return -1;
    }
    *ctx = c;
    return 0;
}

static int file_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct file_ctx *c = ctx;
    struct bb_nj_buf b = {.host = c->host};
    if (render(c, d, &b) != 0) {
        bb_nj_free(&b);
        return -1;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
}

static int file_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct file_ctx *c = ctx;
    struct bb_nj_buf b = {.host = c->host};
    if (render(c, d, &b) != 0) {
        bb_nj_free(&b);
        return -1;
    }
    /* One write on O_APPEND: lines of concurrent writers never interleave. */
    size_t len = b.len;
    ssize_t w = write(c->fd, b.p, len);
    bb_nj_free(&b);
    if (w < 0 || (size_t)w != len) {
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
    .caps = BB_CAP_BATCH | BB_CAP_DIGEST,
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
