/* The file channel: one JSON line per delivery, appended to a file
 * (channel.<inst>.path). For tests, audits and as the smallest example of
 * a plug-in. Each line goes out in one write(2) on an O_APPEND descriptor,
 * optionally followed by fdatasync, before done() reports it sent. A line
 * torn by a kill (possible for writes across pages) is marked with "#"
 * and ended when the file is opened again; readers skip lines that do not
 * parse. One worker process per file: a torn line followed by another
 * process's lines could not be repaired.
 *
 * Idempotent: a delivery the host passes with maybe_sent (a worker died
 * between writing it and recording that) is looked for in the last
 * dedup_window bytes of the file first, and not written again if there.
 * Lines start with their delivery id, so the search is for the exact
 * prefix of the line.
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
    long long window; /* bytes searched for a maybe-sent delivery */
};

static const struct bb_channel_option file_options[] = {
    {"path", BB_OPTION_STRING, NULL, "file the JSON lines are appended to"},
    {"fsync", BB_OPTION_BOOL, "no", "fdatasync after every line"},
    {"dedup_window", BB_OPTION_INT, "67108864",
     "bytes at the end of the file searched before a delivery that may have been written "
     "already is written again"},
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

/* A process killed inside a write of more than a page can leave half a
 * line at the end: its "{" becomes "#", so neither readers nor the search
 * for a maybe-sent delivery take it for the delivery's line, and a newline
 * ends it, so the next line starts on its own. Returns 0, or -1 (errno). */
static int repair(int fd, const char *path)
{
    char tail[4096];
    off_t end = lseek(fd, 0, SEEK_END);
    if (end <= 0) {
        return end < 0 ? -1 : 0;
    }
    if (pread(fd, tail, 1, end - 1) != 1) {
        return -1;
    }
    if (tail[0] == '\n') {
        return 0;
    }
    /* The torn line's start: after the last newline before the end. */
    off_t start = 0;
    for (off_t hi = end; hi > 0 && start == 0;) {
        size_t n = (size_t)(hi < (off_t)sizeof(tail) ? hi : (off_t)sizeof(tail));
        if (pread(fd, tail, n, hi - (off_t)n) != (ssize_t)n) {
            return -1;
        }
        for (size_t i = n; i-- > 0;) {
            if (tail[i] == '\n') {
                start = hi - (off_t)n + (off_t)i + 1;
                break;
            }
        }
        hi -= (off_t)n;
    }
    int wfd = open(path, O_WRONLY | O_CLOEXEC); /* no O_APPEND: pwrite in place */
    if (wfd < 0) {
        return -1;
    }
    int rc = pwrite(wfd, "#", 1, start) == 1 ? 0 : -1;
    close(wfd);
    return rc == 0 && write(fd, "\n", 1) == 1 ? 0 : -1;
}

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
    c->window = cfg->integer(cfg, "dedup_window");
    snprintf(c->instance, sizeof(c->instance), "%s", cfg->instance);
    c->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (c->fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        host->free(c);
        return -1;
    }
    if (repair(c->fd, path) != 0) {
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

/* Whether a line of delivery d is among the last c->window bytes of the
 * file: 1 yes, 0 no, -1 on a read error. Reads backwards in chunks, each
 * with the next chunk's first bytes so a line start across the boundary
 * is found. */
static int written_before(struct file_ctx *c, const struct bb_delivery *d)
{
    enum { CHUNK = 1 << 20 };
    struct bb_nj_buf needle = {.host = c->host};
    bb_nj_text(&needle, "\n{");
    bb_nj_field(&needle, "delivery_id", d->delivery_id);
    char *buf = needle.oom ? NULL : c->host->alloc(1 + CHUNK + needle.len);
    if (!buf) {
        bb_nj_free(&needle);
        return -1;
    }
    off_t end = lseek(c->fd, 0, SEEK_END), stop = end > c->window ? end - c->window : 0;
    int found = end < 0 ? -1 : 0;
    for (off_t hi = end; found == 0 && hi > stop;) {
        size_t n = (size_t)(hi - stop < CHUNK ? hi - stop : CHUNK);
        off_t at = hi - (off_t)n;
        size_t extra = (size_t)(end - hi < (off_t)needle.len ? end - hi : (off_t)needle.len);
        if (pread(c->fd, buf + 1, n + extra, at) != (ssize_t)(n + extra)) {
            found = -1;
            break;
        }
        /* The first line has no newline before it: pretend one. */
        buf[0] = '\n';
        char *p = at == 0 ? buf : buf + 1;
        size_t len = n + extra + (at == 0);
        found = memmem(p, len, needle.p, needle.len) != NULL;
        hi = at;
    }
    c->host->free(buf);
    bb_nj_free(&needle);
    return found;
}

static int file_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct file_ctx *c = ctx;
    if (BB_HAS_FIELD(d, struct bb_delivery, maybe_sent) && d->maybe_sent) {
        int w = written_before(c, d);
        if (w < 0) {
            done(token, BB_SEND_RETRY, 0, "read_error");
            return 0;
        }
        if (w > 0) {
            done(token, BB_SEND_OK, 0, "already_written");
            return 0;
        }
    }
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
    .caps = BB_CAP_BATCH | BB_CAP_DIGEST | BB_CAP_IDEMPOTENCY_KEY,
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
