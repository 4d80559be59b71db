/* The text of a public post (Mastodon, X, Facebook), shared by the three
 * social channel plug-ins, and the small encoders and response helpers
 * they all need.
 *
 * A public post says only: the category, the urgency, the coarse area (the
 * group's name and at most 6 geohash characters of the cell), the day and
 * part of day (Europe/Amsterdam), a status for an update, and optionally
 * the notification's publishable media as links. It never carries the
 * report's text, its author, its title (free text from upstream) or a
 * coordinate. In the group's name '@' becomes U+FF20, so that a post never
 * mentions (notifies) an account. A digest delivery (d->items) becomes one aggregated post:
 * "Afgelopen week in Centrum: 3 meldingen — 2× inbraak, 1× verdachte
 * persoon. #buurtpreventie".
 *
 * Languages: nl and en; any other locale falls back to nl.
 *
 * Counting: BB_SOCIAL_CODEPOINTS counts Unicode code points (Mastodon
 * counts grapheme clusters, so a code point count never undercounts) and
 * an http(s) URL as 23 (Mastodon and X both count links as 23).
 * BB_SOCIAL_X_WEIGHTED approximates X's weighted length: code points up to
 * U+10FF and the general punctuation ranges U+2000-U+200D, U+2010-U+201F,
 * U+2032-U+2037 weigh 1, every other code point weighs 2, a URL 23. X
 * counts a whole emoji sequence (with U+FE0F or ZWJ) as 2; this counts
 * each of its code points, so it only ever overcounts.
 *
 * Threads: none of its own; pure functions, called on the host's
 * event-loop thread by the plug-ins. */
#ifndef BB_SOCIAL_TEXT_H
#define BB_SOCIAL_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "buurtbus/channel.h"

enum bb_social_count {
    BB_SOCIAL_CODEPOINTS = 1, /* Mastodon, Facebook */
    BB_SOCIAL_X_WEIGHTED = 2, /* X */
};

#define BB_SOCIAL_URL_WEIGHT 23

struct bb_social_style {
    size_t budget;   /* the largest length the service accepts, in its count */
    int count;       /* enum bb_social_count */
    int media_links; /* append the publishable media's http(s) URLs when they fit */
};

/* The post for d (a single notification, or a digest when d->nitems > 0
 * or d->n->kind is BB_KIND_DIGEST) in d->n->locale, within st->budget.
 * Returns a NUL-terminated string from malloc (the caller frees it), or
 * NULL when out of memory. */
char *bb_social_render(const struct bb_delivery *d, const struct bb_social_style *st);

/* The length of s[0..len) under the counting rule. s is valid UTF-8. */
size_t bb_social_length(const char *s, size_t len, int count);

/* "nl" or "en": the template language for a locale ("en-GB" -> "en"). */
const char *bb_social_lang(const char *locale);

/* ---- request bodies (a growable buffer from malloc) --------------------------------------- */

struct bb_social_buf {
    char *p;
    size_t len, cap;
    int oom; /* an append failed: the content is incomplete */
};

void bb_social_buf_add(struct bb_social_buf *b, const char *s, size_t n);
void bb_social_buf_puts(struct bb_social_buf *b, const char *s);
/* s as a JSON string literal, quotes included. */
void bb_social_buf_json(struct bb_social_buf *b, const char *s);
/* s application/x-www-form-urlencoded (space as '+'). */
void bb_social_buf_form(struct bb_social_buf *b, const char *s);
void bb_social_buf_free(struct bb_social_buf *b);

/* ---- sending ------------------------------------------------------------------------------ */

/* What format() hands back: b's text in memory from host->alloc. Frees b
 * (wiped first). Returns 0, or -1 when out of memory. */
int bb_social_buf_out(const struct bb_host_api *host, struct bb_social_buf *b, char **out,
                      size_t *outlen);

/* POSTs b (then wiped and freed: it may hold a token) to url with headers
 * through the host's HTTP helper, in pool; on_response gets op, which the
 * caller allocated from host->alloc. Returns 0, or -1 when the request
 * could not start (op is then freed, on_response never runs). */
int bb_social_post(const struct bb_host_api *host, const char *url,
                   const struct bb_http_header *headers, size_t nheaders, struct bb_social_buf *b,
                   long timeout_ms, const char *pool, bb_http_done_fn *on_response, void *op);

/* ---- responses -------------------------------------------------------------------------- */

/* The value of response header name (case-insensitive), or NULL. The
 * host fills res->headers when it passes them; NULL then too. */
const char *bb_social_header(const struct bb_http_response *res, const char *name);

/* Seconds to wait before a retry after a rate limit: the rate-limit reset
 * header (reset_header; a Unix time in seconds, or an ISO 8601 UTC time
 * such as Mastodon's "2026-11-28T17:00:00.000Z") counted from now_s, else
 * the response's Retry-After, else 0 (the host's backoff). At least 1 when
 * a header said anything. */
unsigned bb_social_retry_after(const struct bb_http_response *res, const char *reset_header,
                               int64_t now_s);

#endif
