/* What the push plug-ins (fcm, apns; compiled into both) share about the
 * message: the lock-screen text, the time to live by urgency, and
 * rendering a JSON payload under the providers' 4 KB limit by cutting the
 * text (at a UTF-8 boundary, with an ellipsis) until it fits.
 *
 * Threads: no state; the host's event-loop thread. */
#ifndef BB_PUSH_TEXT_H
#define BB_PUSH_TEXT_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#include "buurtbus/channel.h"

#define PUSH_MAX_PAYLOAD 4000 /* FCM and APNs take 4096 bytes */
#define PUSH_TEXT_MAX 1500    /* the text's first cut, bytes */
#define PUSH_TITLE_MAX 200

int64_t push_mono_ms(void);

/* How long a notification is worth delivering: 1 h in progress, 6 h
 * recent, 24 h informational. */
int64_t push_ttl_s(int urgency);

/* s cut to at most max bytes at a character boundary, "…" appended when
 * cut; into buf. */
void push_clip(const char *s, size_t max, char *buf, size_t cap);

/* The title (cut) and the body: the text when show_text and there is one,
 * else the place (group name and/or cell). Never the author. */
void push_alert(const struct bb_notification *n, int show_text, size_t text_max, char *title,
                size_t title_cap, char *body, size_t body_cap);

/* o[k] = v as a JSON string ("" for NULL). */
void push_json_str(json_object *o, const char *k, const char *v);

/* Builds the payload of d with the text cut to text_max bytes. */
typedef json_object *push_build_fn(const void *ctx, const struct bb_delivery *d, size_t text_max);

/* The payload as compact JSON in memory from host->alloc, at most
 * PUSH_MAX_PAYLOAD bytes (the text halved until it fits). Returns 0 or -1. */
int push_render(const struct bb_host_api *host, push_build_fn *build, const void *ctx,
                const struct bb_delivery *d, char **out, size_t *outlen);

#endif
