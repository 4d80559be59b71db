/* A notification as JSON (see notification_json.h). */
#include "notification_json.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void put(struct bb_nj_buf *b, const char *s, size_t n)
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

static void put_str(struct bb_nj_buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Quotes, backslash and control characters escaped; U+2028/U+2029 too.
 * Bytes at or above 0x80 pass through: the host checked the UTF-8. */
static void put_json(struct bb_nj_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    put(b, "\"", 1);
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p != '"' && *p != '\\' && *p != 0x7f &&
               !(p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9))) {
            p++;
        }
        put(b, (const char *)run, (size_t)(p - run));
        if (!*p) {
            break;
        }
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(b, esc, 2);
            p++;
        } else if (*p == '\n' || *p == '\r' || *p == '\t') {
            put(b, *p == '\n' ? "\\n" : *p == '\r' ? "\\r" : "\\t", 2);
            p++;
        } else if (*p == 0xe2) {
            put(b, p[2] == 0xa8 ? "\\u2028" : "\\u2029", 6);
            p += 3;
        } else {
            snprintf(esc, sizeof(esc), "\\u00%c%c", hex[*p >> 4], hex[*p & 15]);
            put(b, esc, 6);
            p++;
        }
    }
    put(b, "\"", 1);
}

static void key(struct bb_nj_buf *b, const char *name)
{
    if (b->len > 0 && b->p[b->len - 1] != '{' && b->p[b->len - 1] != '[') {
        put(b, ",", 1);
    }
    put(b, "\"", 1);
    put_str(b, name);
    put(b, "\":", 2);
}

static void field(struct bb_nj_buf *b, const char *name, const char *value)
{
    key(b, name);
    put_json(b, value);
}

static void raw(struct bb_nj_buf *b, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void raw(struct bb_nj_buf *b, const char *name, const char *fmt, ...)
{
    char v[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof(v), fmt, ap);
    va_end(ap);
    key(b, name);
    put_str(b, v);
}

static void coord(struct bb_nj_buf *b, const char *name, double v)
{
    if (isfinite(v)) {
        raw(b, name, "%.6f", v);
    } else {
        raw(b, name, "null");
    }
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

/* The fields of n, after the ones already in the open object. */
static void notification_fields(struct bb_nj_buf *b, const struct bb_notification *n)
{
    field(b, "kind", kind_name(n->kind));
    field(b, "report_id", n->report_id);
    if (n->kind == BB_KIND_STATUS) {
        field(b, "status_id", n->status_id);
    }
    raw(b, "time_ms", "%" PRId64, n->time_ms);
    field(b, "category_name", n->category_name);
    field(b, "urgency", urgency_name(n->urgency));
    field(b, "title", n->title);
    field(b, "locale", n->locale);
    field(b, "text", n->text);
    field(b, "author", n->anonymous ? "" : n->author);
    raw(b, "anonymous", "%s", n->anonymous ? "true" : "false");
    field(b, "cell", n->cell);
    coord(b, "lat", n->lat);
    coord(b, "lon", n->lon);
    if (n->group_name && n->group_name[0]) {
        field(b, "group_name", n->group_name);
    }
    key(b, "media");
    put(b, "[", 1);
    for (size_t i = 0; n->media && i < n->nmedia; i++) {
        if (i > 0) {
            put(b, ",", 1);
        }
        put_json(b, n->media[i].url);
    }
    put(b, "]", 1);
}

int bb_nj_render(struct bb_nj_buf *b, const struct bb_delivery *d, unsigned flags)
{
    /* The object starts wherever the buffer ends; "{" resets key()'s comma. */
    put(b, "{", 1);
    if (flags & BB_NJ_DELIVERY) {
        field(b, "delivery_id", d->delivery_id);
        field(b, "recipient_kind", d->recipient_kind == BB_RECIPIENT_GROUP ? "group" : "user");
    }
    if (d->n) {
        notification_fields(b, d->n);
    }
    if (d->nitems > 0) {
        /* A digest: its collected notifications, oldest first. */
        key(b, "items");
        put(b, "[", 1);
        for (size_t i = 0; i < d->nitems; i++) {
            if (i > 0) {
                put(b, ",", 1);
            }
            put(b, "{", 1);
            if (d->items[i]) {
                notification_fields(b, d->items[i]);
            }
            put(b, "}", 1);
        }
        put(b, "]", 1);
    }
    if (!(flags & BB_NJ_OPEN)) {
        put(b, "}", 1);
    }
    return b->oom ? -1 : 0;
}

void bb_nj_field(struct bb_nj_buf *b, const char *name, const char *value)
{
    field(b, name, value);
}

void bb_nj_raw(struct bb_nj_buf *b, const char *name, const char *fmt, ...)
{
    char v[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v, sizeof(v), fmt, ap);
    va_end(ap);
    key(b, name);
    put_str(b, v);
}

void bb_nj_text(struct bb_nj_buf *b, const char *text)
{
    put_str(b, text);
}

void bb_nj_free(struct bb_nj_buf *b)
{
    if (b->p) {
        b->host->free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
}
