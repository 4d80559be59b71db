/* A notification as JSON, shared by the plug-ins that send one (file,
 * inbox, webhook). Compiled into each plug-in that lists it among its
 * bb_channel_plugin sources; symbols stay hidden in each module. Memory
 * comes from the host's allocator. Pure functions; any thread. */
#ifndef BB_PLUGIN_NOTIFICATION_JSON_H
#define BB_PLUGIN_NOTIFICATION_JSON_H

#include <stddef.h>

#include "buurtbus/channel.h"

/* A growing NUL-terminated buffer from host->realloc; oom is sticky. */
struct bb_nj_buf {
    const struct bb_host_api *host;
    char *p;
    size_t len, cap;
    int oom;
};

enum {
    BB_NJ_DELIVERY = 1u << 0, /* also delivery_id and recipient_kind */
    BB_NJ_OPEN = 1u << 1,     /* leave the object open for bb_nj_field/bb_nj_raw, then "}" */
};

/* Appends one JSON object for d (its notification d->n, and with
 * BB_NJ_DELIVERY the delivery's id and recipient kind). Strings are
 * escaped per RFC 8259 (and U+2028/2029); non-finite lat/lon become null.
 * Returns 0, or -1 when out of memory. */
int bb_nj_render(struct bb_nj_buf *b, const struct bb_delivery *d, unsigned flags);

/* More fields for an object rendered with BB_NJ_OPEN (escaped string / raw
 * value), and raw text (e.g. the closing "}"). */
void bb_nj_field(struct bb_nj_buf *b, const char *name, const char *value);
void bb_nj_raw(struct bb_nj_buf *b, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void bb_nj_text(struct bb_nj_buf *b, const char *text);

/* Frees the buffer's memory. */
void bb_nj_free(struct bb_nj_buf *b);

#endif
