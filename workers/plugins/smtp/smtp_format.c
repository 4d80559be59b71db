/* The smtp plug-in's renderer: a delivery becomes one complete RFC 5322
 * message (multipart/alternative, text/plain + text/html, UTF-8,
 * quoted-printable) without network I/O. Called by format() and send() on
 * the worker's loop thread; pure apart from host->alloc.
 *
 * Privacy: the message names the recipient only by the address it goes
 * to. The internal user id is never written: the Message-ID carries an
 * HMAC of the delivery id (which ends in the user id), and the
 * List-Unsubscribe link an HMAC token of the recipient. */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "smtp_internal.h"

/* ---- a growing buffer in host memory ------------------------------------------------------ */

struct sbuf {
    const struct bb_host_api *host;
    char *p;
    size_t len;
    size_t cap;
    bool oom;
};

static void sb_grow(struct sbuf *b, size_t need)
{
    size_t cap = b->cap > 0 ? b->cap : 1024;
    char *p;

    if (b->oom || b->len + need + 1 <= b->cap) {
        return;
    }
    while (cap < b->len + need + 1) {
        cap *= 2;
    }
    p = b->host->realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_add(struct sbuf *b, const void *s, size_t n)
{
    sb_grow(b, n);
    if (b->oom) {
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    sb_grow(b, (size_t)n);
    if (b->oom) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_free(struct sbuf *b)
{
    if (b->p != NULL) {
        b->host->free(b->p);
    }
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- templates ------------------------------------------------------------------------------ */

struct smtp_tmpl {
    const char *locale;
    const char *neighbour;  /* an anonymous reporter */
    const char *urgency[4]; /* subject prefix by enum bb_urgency; "" for none */
    const char *reported_by;
    const char *where;
    const char *when;
    const char *media;
    const char *update;       /* a STATUS notification */
    const char *status[8];    /* by Status number (proto/report.proto) */
    const char *digest_count; /* printf: number of reports */
    const char *digest_title; /* printf: the subject of a digest without a title */
    const char *why;          /* footer: why you get this */
    const char *unsubscribe;
};

static const struct smtp_tmpl tmpl_nl = {
    .locale = "nl",
    .neighbour = "een buurtbewoner",
    .urgency = {"", "", "Recent", "NU BEZIG"},
    .reported_by = "Gemeld door",
    .where = "Waar",
    .when = "Wanneer",
    .media = "Foto's en video",
    .update = "Update",
    .status = {"", "Ontvangen", "In onderzoek", "Politie ter plaatse", "Verdachte aangehouden",
               "Opgelost", "Loos alarm", "Afgesloten"},
    .digest_count = "%zu meldingen",
    .digest_title = "Uw buurtoverzicht (%zu)",
    .why = "U ontvangt dit bericht omdat u meedoet aan buurtpreventie in deze buurt.",
    .unsubscribe = "Afmelden",
};

static const struct smtp_tmpl tmpl_en = {
    .locale = "en",
    .neighbour = "a neighbour",
    .urgency = {"", "", "Recent", "HAPPENING NOW"},
    .reported_by = "Reported by",
    .where = "Where",
    .when = "When",
    .media = "Photos and video",
    .update = "Update",
    .status = {"", "Received", "Under investigation", "Police on site", "Suspect arrested",
               "Resolved", "False alarm", "Closed"},
    .digest_count = "%zu reports",
    .digest_title = "Your neighbourhood digest (%zu)",
    .why = "You receive this message because you take part in neighbourhood watch here.",
    .unsubscribe = "Unsubscribe",
};

static const struct smtp_tmpl *const templates[] = {&tmpl_nl, &tmpl_en};

/* "en", "en-GB", "en_GB" all pick en; "" or unknown: NULL. */
static const struct smtp_tmpl *tmpl_find(const char *locale)
{
    if (locale == NULL || locale[0] == '\0') {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(templates) / sizeof(templates[0]); i++) {
        size_t n = strlen(templates[i]->locale);
        if (strncmp(locale, templates[i]->locale, n) == 0 &&
            (locale[n] == '\0' || locale[n] == '-' || locale[n] == '_')) {
            return templates[i];
        }
    }
    return NULL;
}

/* The reader's language, else the notification's, else Dutch. */
static const struct smtp_tmpl *tmpl_for(const struct bb_delivery *d)
{
    const struct smtp_tmpl *t = NULL;

    if (d->contact != NULL) {
        t = tmpl_find(d->contact->locale);
    }
    if (t == NULL && d->n != NULL) {
        t = tmpl_find(d->n->locale);
    }
    return t != NULL ? t : &tmpl_nl;
}

/* A pictogram per Category number (proto/report.proto), for readers who
 * read pictures better than words. */
static const char *pictogram(int category)
{
    static const char *const pict[] = {
        "\xe2\x9a\xa0\xef\xb8\x8f", /* 0 unspecified: warning sign */
        "\xf0\x9f\x8f\xa0",         /* 1 burglary: house */
        "\xf0\x9f\x91\xa4",         /* 2 suspicious person: bust in silhouette */
        "\xf0\x9f\x9a\x97",         /* 3 suspicious vehicle: automobile */
        "\xf0\x9f\x94\xa5",         /* 4 fire */
        "\xf0\x9f\x93\xa2",         /* 5 nuisance: loudspeaker */
        "\xf0\x9f\x9a\xa6",         /* 6 traffic: traffic light */
        "\xf0\x9f\x94\x8e",         /* 7 missing person: magnifying glass */
        "\xe2\x9a\xa0\xef\xb8\x8f", /* 8 other: warning sign */
        "\xf0\x9f\x92\xbb",         /* 9 cyber: laptop */
        "\xf0\x9f\x9a\x8c",         /* 10 public transport: bus */
    };
    if (category < 0 || (size_t)category >= sizeof(pict) / sizeof(pict[0])) {
        return pict[0];
    }
    return pict[category];
}

#define PICT_DIGEST "\xf0\x9f\x93\xac"         /* open mailbox */
#define PICT_STATUS "\xe2\x84\xb9\xef\xb8\x8f" /* information */

/* ---- encoders ------------------------------------------------------------------------------- */

static void sb_html(struct sbuf *b, const char *s)
{
    for (; *s != '\0'; s++) {
        switch (*s) {
        case '&':
            sb_puts(b, "&amp;");
            break;
        case '<':
            sb_puts(b, "&lt;");
            break;
        case '>':
            sb_puts(b, "&gt;");
            break;
        case '"':
            sb_puts(b, "&quot;");
            break;
        case '\'':
            sb_puts(b, "&#39;");
            break;
        case '\r':
            break;
        case '\n':
            sb_puts(b, "<br>\r\n");
            break;
        default:
            sb_add(b, s, 1);
            break;
        }
    }
}

/* Text into the plain part: any newline convention becomes CRLF. */
static void sb_text(struct sbuf *b, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\r') {
            if (s[1] == '\n') {
                s++;
            }
            sb_puts(b, "\r\n");
        } else if (*s == '\n') {
            sb_puts(b, "\r\n");
        } else {
            sb_add(b, s, 1);
        }
    }
}

/* Quoted-printable (RFC 2045 6.7) of a CRLF-separated body; lines <= 76. */
static void sb_qp(struct sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t col = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char enc[3];
        size_t elen;

        if (ch == '\r' && i + 1 < n && s[i + 1] == '\n') {
            sb_puts(b, "\r\n");
            i++;
            col = 0;
            continue;
        }
        bool eol = i + 1 == n || (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n');
        if ((ch >= 33 && ch <= 126 && ch != '=' && !(ch == '.' && col == 0)) ||
            ((ch == ' ' || ch == '\t') && !eol)) {
            enc[0] = (char)ch;
            elen = 1;
        } else {
            enc[0] = '=';
            enc[1] = hex[ch >> 4];
            enc[2] = hex[ch & 15];
            elen = 3;
        }
        /* keep room for a soft break "=" within 76 columns */
        if (col + elen > (eol ? 76 : 75)) {
            sb_puts(b, "=\r\n");
            col = 0;
            if (ch == '.') { /* a line never starts with a dot (SMTP transparency) */
                enc[0] = '=';
                enc[1] = '2';
                enc[2] = 'E';
                elen = 3;
            }
        }
        sb_add(b, enc, elen);
        col += elen;
    }
}

static void sb_base64(struct sbuf *b, const uint8_t *p, size_t n, bool url)
{
    const char *tab = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                          : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        char out[4];
        size_t nout = 4;
        if (i + 1 < n) {
            v |= (uint32_t)p[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= p[i + 2];
        }
        out[0] = tab[(v >> 18) & 63];
        out[1] = tab[(v >> 12) & 63];
        out[2] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[3] = i + 2 < n ? tab[v & 63] : '=';
        if (url) {
            nout = i + 2 < n ? 4 : i + 1 < n ? 3 : 2; /* no padding in URLs */
        }
        sb_add(b, out, nout);
    }
}

/* An RFC 2047 header value: encoded-words of at most 45 bytes of UTF-8
 * each (60 base64 characters, 72 with the =?UTF-8?B?...?= frame), never
 * splitting a character, folded with CRLF SP. Control characters become
 * spaces so a header cannot be injected. */
static void sb_header_2047(struct sbuf *b, const char *s)
{
    size_t n = strlen(s);
    size_t i = 0;
    uint8_t chunk[48];

    while (i < n) {
        size_t take = 0;
        while (i + take < n) {
            size_t clen = 1;
            unsigned char c = (unsigned char)s[i + take];
            if (c >= 0xf0) {
                clen = 4;
            } else if (c >= 0xe0) {
                clen = 3;
            } else if (c >= 0xc0) {
                clen = 2;
            }
            if (take + clen > 45 || i + take + clen > n) {
                break;
            }
            take += clen;
        }
        if (take == 0) {
            take = 1; /* a broken sequence at the end: pass the byte on */
        }
        for (size_t k = 0; k < take; k++) {
            unsigned char c = (unsigned char)s[i + k];
            chunk[k] = c < 0x20 || c == 0x7f ? ' ' : c;
        }
        if (i > 0) {
            sb_puts(b, "\r\n ");
        }
        sb_puts(b, "=?UTF-8?B?");
        sb_base64(b, chunk, take, false);
        sb_puts(b, "?=");
        i += take;
    }
}

static bool is_ascii_printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) {
            return false;
        }
    }
    return true;
}

/* An address that can stand in a header and an SMTP command unchanged. */
static bool address_ok(const char *a)
{
    size_t n = a != NULL ? strlen(a) : 0;
    const char *at = n > 0 ? strchr(a, '@') : NULL;

    if (at == NULL || at == a || at[1] == '\0' || n > 254) {
        return false;
    }
    for (; *a != '\0'; a++) {
        unsigned char c = (unsigned char)*a;
        if (c <= 0x20 || c == 0x7f || c == '<' || c == '>' || c == ',' || c == '"' || c == '(' ||
            c == ')' || c == ';' || c == '\\') {
            return false;
        }
    }
    return true;
}

/* Media links go into href attributes: only http(s). */
static bool url_ok(const char *u)
{
    return u != NULL && (strncmp(u, "https://", 8) == 0 || strncmp(u, "http://", 7) == 0) &&
           strlen(u) < 900 && is_ascii_printable(u) && strchr(u, ' ') == NULL;
}

/* ---- pieces of the message ------------------------------------------------------------------ */

static const char *reporter(const struct smtp_tmpl *t, const struct bb_notification *n)
{
    if (n->anonymous || n->author == NULL || n->author[0] == '\0') {
        return t->neighbour;
    }
    return n->author;
}

/* The reader's local time: off is the zone's UTC offset then, or INT32_MIN
 * when the host cannot tell (then UTC, said so). */
static void when_str(const struct bb_notification *n, int32_t off, char *buf, size_t cap)
{
    time_t secs = (time_t)(n->time_ms / 1000) + (off == INT32_MIN ? 0 : off);
    struct tm tm;

    buf[0] = '\0';
    if (n->time_ms <= 0 || gmtime_r(&secs, &tm) == NULL) {
        return;
    }
    strftime(buf, cap, off == INT32_MIN ? "%Y-%m-%d %H:%M UTC" : "%Y-%m-%d %H:%M", &tm);
}

static void where_str(const struct bb_notification *n, char *buf, size_t cap)
{
    const char *g = n->group_name != NULL ? n->group_name : "";
    const char *c = n->cell != NULL ? n->cell : "";

    if (g[0] != '\0' && c[0] != '\0') {
        snprintf(buf, cap, "%s (%s)", g, c);
    } else {
        snprintf(buf, cap, "%s", g[0] != '\0' ? g : c);
    }
}

static const char *status_word(const struct smtp_tmpl *t, int status)
{
    if (status < 0 || status >= 8) {
        return "";
    }
    return t->status[status];
}

/* Subject: "<pictogram> <URGENCY>: <title>" (or the digest's/update's). */
static void subject_str(struct sbuf *s, const struct smtp_tmpl *t, const struct bb_delivery *d)
{
    const struct bb_notification *n = d->n;
    const char *urg = n->urgency >= 0 && n->urgency < 4 ? t->urgency[n->urgency] : "";

    if (d->nitems > 0 || n->kind == BB_KIND_DIGEST) {
        if (n->title[0]) {
            sb_printf(s, PICT_DIGEST " %s", n->title);
        } else {
            sb_printf(s, PICT_DIGEST " ");
            sb_printf(s, t->digest_title, d->nitems);
        }
        return;
    }
    if (n->kind == BB_KIND_STATUS) {
        sb_printf(s, PICT_STATUS " %s: %s", t->update, n->title);
        return;
    }
    sb_printf(s, "%s %s%s%s", pictogram(n->category), urg, urg[0] != '\0' ? ": " : "", n->title);
}

/* One notification as plain text (CRLF lines). */
static void item_text(struct sbuf *b, const struct smtp_tmpl *t, const struct bb_notification *n,
                      int32_t off)
{
    char when[64];
    char where[512];
    const char *urg = n->urgency >= 0 && n->urgency < 4 ? t->urgency[n->urgency] : "";

    when_str(n, off, when, sizeof(when));
    where_str(n, where, sizeof(where));
    sb_printf(b, "%s %s%s", pictogram(n->category), urg, urg[0] != '\0' ? ": " : "");
    sb_text(b, n->title);
    sb_puts(b, "\r\n\r\n");
    if (n->kind == BB_KIND_STATUS && status_word(t, n->status)[0] != '\0') {
        sb_printf(b, "%s: %s\r\n", t->update, status_word(t, n->status));
    }
    sb_printf(b, "%s: ", t->reported_by);
    sb_text(b, reporter(t, n));
    sb_puts(b, "\r\n");
    if (where[0] != '\0') {
        sb_printf(b, "%s: ", t->where);
        sb_text(b, where);
        sb_puts(b, "\r\n");
    }
    if (when[0] != '\0') {
        sb_printf(b, "%s: %s\r\n", t->when, when);
    }
    if (n->text != NULL && n->text[0] != '\0') {
        sb_puts(b, "\r\n");
        sb_text(b, n->text);
        sb_puts(b, "\r\n");
    }
    if (n->nmedia > 0) {
        sb_printf(b, "\r\n%s:\r\n", t->media);
        for (size_t i = 0; i < n->nmedia; i++) {
            if (url_ok(n->media[i].url)) {
                sb_printf(b, "%s\r\n", n->media[i].url);
            }
        }
    }
}

static void item_html(struct sbuf *b, const struct smtp_tmpl *t, const struct bb_notification *n,
                      int32_t off)
{
    char when[64];
    char where[512];
    const char *urg = n->urgency >= 0 && n->urgency < 4 ? t->urgency[n->urgency] : "";
    const char *label = n->category_name != NULL ? n->category_name : "";

    when_str(n, off, when, sizeof(when));
    where_str(n, where, sizeof(where));
    sb_puts(b, "<div style=\"margin:0 0 24px 0\">\r\n<p style=\"font-size:40px;margin:0\">"
               "<span role=\"img\" aria-label=\"");
    sb_html(b, label);
    sb_printf(b, "\">%s</span></p>\r\n<h2 style=\"margin:4px 0\">", pictogram(n->category));
    if (urg[0] != '\0') {
        sb_printf(b, "<span style=\"color:#b00020\">%s:</span> ", urg);
    }
    sb_html(b, n->title);
    sb_puts(b, "</h2>\r\n<p style=\"color:#444\">");
    if (n->kind == BB_KIND_STATUS && status_word(t, n->status)[0] != '\0') {
        sb_printf(b, "<b>%s:</b> %s<br>\r\n", t->update, status_word(t, n->status));
    }
    sb_printf(b, "%s: ", t->reported_by);
    sb_html(b, reporter(t, n));
    if (where[0] != '\0') {
        sb_printf(b, "<br>\r\n%s: ", t->where);
        sb_html(b, where);
    }
    if (when[0] != '\0') {
        sb_printf(b, "<br>\r\n%s: %s", t->when, when);
    }
    sb_puts(b, "</p>\r\n");
    if (n->text != NULL && n->text[0] != '\0') {
        sb_puts(b, "<p>");
        sb_html(b, n->text);
        sb_puts(b, "</p>\r\n");
    }
    if (n->nmedia > 0) {
        sb_printf(b, "<p>%s:</p>\r\n<ul>\r\n", t->media);
        for (size_t i = 0; i < n->nmedia; i++) {
            if (!url_ok(n->media[i].url)) {
                continue;
            }
            sb_puts(b, "<li><a href=\"");
            sb_html(b, n->media[i].url);
            sb_puts(b, "\">");
            sb_html(b, n->media[i].url);
            sb_puts(b, "</a></li>\r\n");
        }
        sb_puts(b, "</ul>\r\n");
    }
    sb_puts(b, "</div>\r\n");
}

/* The List-Unsubscribe URL, "" when none is configured. The token is an
 * HMAC of the recipient, never its id: the unsubscribe service recomputes
 * it over the directory (or keeps the map) to find the person. */
static void unsubscribe_url(struct sbuf *u, const struct smtp_ctx *ctx, const struct bb_delivery *d)
{
    if (ctx->unsubscribe_base[0] != '\0' && ctx->unsubscribe_key[0] != '\0') {
        char msg[64];
        uint8_t mac[SMTP_HMAC_LEN];
        int n = snprintf(msg, sizeof(msg), "bb-unsubscribe:%d:%llu", d->recipient_kind,
                         (unsigned long long)d->recipient);
        smtp_hmac_sha256(ctx->unsubscribe_key, strlen(ctx->unsubscribe_key), msg, (size_t)n, mac);
        sb_puts(u, ctx->unsubscribe_base);
        sb_puts(u, strchr(ctx->unsubscribe_base, '?') != NULL ? "&u=" : "?u=");
        sb_base64(u, mac, 16, true);
    } else if (d->contact != NULL && url_ok(d->contact->unsubscribe_url)) {
        sb_puts(u, d->contact->unsubscribe_url);
    }
}

/* "<{notification key}.{hmac of the delivery id}@buurtbus>": stable across
 * retries (providers and readers deduplicate on it), no user id. */
static void message_id(struct sbuf *b, const struct smtp_ctx *ctx, const struct bb_delivery *d)
{
    const char *id = d->delivery_id != NULL ? d->delivery_id : "";
    const char *key_end = id;
    int colons = 0;
    uint8_t mac[SMTP_HMAC_LEN];
    char prev = '.';

    /* the key is everything before ":{channel}:{recipient}" */
    for (const char *p = id + strlen(id); p > id; p--) {
        if (p[-1] == ':' && ++colons == 2) {
            key_end = p - 1;
            break;
        }
    }
    sb_puts(b, "<");
    for (const char *p = id; p < key_end && p - id < 200; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        c = ok ? c : prev == '.' ? '-' : '.';
        sb_add(b, &c, 1);
        prev = c;
    }
    if (prev != '.') {
        sb_puts(b, ".");
    }
    smtp_hmac_sha256(ctx->unsubscribe_key, strlen(ctx->unsubscribe_key), id, strlen(id), mac);
    for (int i = 0; i < 12; i++) {
        sb_printf(b, "%02x", mac[i]);
    }
    sb_puts(b, "@buurtbus>");
}

static void footer_text(struct sbuf *b, const struct smtp_tmpl *t, const char *unsub)
{
    sb_printf(b, "\r\n-- \r\n%s\r\n", t->why);
    if (unsub[0] != '\0') {
        sb_printf(b, "%s: %s\r\n", t->unsubscribe, unsub);
    }
}

static void footer_html(struct sbuf *b, const struct smtp_tmpl *t, const char *unsub)
{
    sb_printf(b, "<hr>\r\n<p style=\"color:#777;font-size:12px\">%s", t->why);
    if (unsub[0] != '\0') {
        sb_puts(b, "<br>\r\n<a href=\"");
        sb_html(b, unsub);
        sb_printf(b, "\">%s</a>", t->unsubscribe);
    }
    sb_puts(b, "</p>\r\n");
}

/* The reader's zone offset at n's time, INT32_MIN if the host cannot say. */
static int32_t local_offset(const struct bb_host_api *host, const struct bb_delivery *d,
                            const struct bb_notification *n)
{
    const char *tz = "";
    if (d->contact && BB_HAS_FIELD(d->contact, struct bb_contact, time_zone) &&
        d->contact->time_zone) {
        tz = d->contact->time_zone;
    }
    if (!BB_HAS_FIELD(host, struct bb_host_api, utc_offset_s) || !host->utc_offset_s) {
        return INT32_MIN;
    }
    return host->utc_offset_s(host->host, tz, n->time_ms / 1000);
}

int smtp_render(const struct smtp_ctx *ctx, const struct bb_delivery *d, int64_t now, char **out,
                size_t *outlen)
{
    const struct bb_host_api *host = ctx->host;
    struct sbuf m = {.host = host};
    struct sbuf subj = {.host = host};
    struct sbuf text = {.host = host};
    struct sbuf html = {.host = host};
    struct sbuf unsub = {.host = host};
    struct sbuf boundary = {.host = host};
    const struct smtp_tmpl *t;
    const struct bb_notification *n = d->n;
    const char *to = d->contact != NULL ? d->contact->email : NULL;
    time_t secs = (time_t)now;
    struct tm tm;
    char date[64];
    uint8_t mac[SMTP_HMAC_LEN];
    int rc = -1;

    if (n == NULL || !address_ok(to)) {
        return -1;
    }
    t = tmpl_for(d);
    unsubscribe_url(&unsub, ctx, d);
    subject_str(&subj, t, d);

    /* bodies, raw UTF-8 with CRLF lines */
    sb_printf(&html,
              "<!DOCTYPE html>\r\n<html lang=\"%s\">\r\n<head><meta charset=\"utf-8\">"
              "<title>",
              t->locale);
    sb_html(&html, subj.p != NULL ? subj.p : "");
    sb_puts(&html,
            "</title></head>\r\n<body style=\"font-family:sans-serif;max-width:600px\">\r\n");
    if (d->nitems > 0) {
        sb_puts(&text, PICT_DIGEST " ");
        sb_text(&text, n->title);
        sb_puts(&text, "\r\n");
        sb_printf(&text, t->digest_count, d->nitems);
        sb_puts(&text, "\r\n\r\n");
        sb_puts(&html, "<h1>" PICT_DIGEST " ");
        sb_html(&html, n->title);
        sb_puts(&html, "</h1>\r\n<p>");
        sb_printf(&html, t->digest_count, d->nitems);
        sb_puts(&html, "</p>\r\n");
        for (size_t i = 0; i < d->nitems; i++) {
            if (d->items[i] == NULL) {
                continue;
            }
            if (i > 0) {
                sb_puts(&text, "\r\n----------------------------------------\r\n\r\n");
            }
            int32_t off = local_offset(host, d, d->items[i]);
            item_text(&text, t, d->items[i], off);
            item_html(&html, t, d->items[i], off);
        }
    } else {
        item_text(&text, t, n, local_offset(host, d, n));
        item_html(&html, t, n, local_offset(host, d, n));
    }
    footer_text(&text, t, unsub.p != NULL ? unsub.p : "");
    footer_html(&html, t, unsub.p != NULL ? unsub.p : "");
    sb_puts(&html, "</body>\r\n</html>\r\n");

    /* a boundary that cannot occur in QP output (it has no '=' followed by hex... and
     * QP never emits "--bb-" followed by 32 hex characters of this HMAC) */
    smtp_hmac_sha256("boundary", 8, d->delivery_id != NULL ? d->delivery_id : "",
                     d->delivery_id != NULL ? strlen(d->delivery_id) : 0, mac);
    sb_puts(&boundary, "bb-alt-");
    for (int i = 0; i < 16; i++) {
        sb_printf(&boundary, "%02x", mac[i]);
    }

    /* headers */
    if (gmtime_r(&secs, &tm) == NULL) {
        goto out;
    }
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    sb_puts(&m, "From: ");
    if (ctx->from_name[0] == '\0') {
        sb_printf(&m, "<%s>\r\n", ctx->from);
    } else if (is_ascii_printable(ctx->from_name) && strpbrk(ctx->from_name, "\"\\") == NULL) {
        sb_printf(&m, "\"%s\" <%s>\r\n", ctx->from_name, ctx->from);
    } else {
        sb_header_2047(&m, ctx->from_name);
        sb_printf(&m, " <%s>\r\n", ctx->from);
    }
    sb_printf(&m, "To: <%s>\r\n", to);
    sb_puts(&m, "Subject: ");
    sb_header_2047(&m, subj.p != NULL ? subj.p : "");
    sb_printf(&m, "\r\nDate: %s\r\nMessage-ID: ", date);
    message_id(&m, ctx, d);
    sb_puts(&m, "\r\nMIME-Version: 1.0\r\n");
    if (unsub.len > 0) {
        sb_printf(&m, "List-Unsubscribe: <%s>\r\n", unsub.p);
        sb_puts(&m, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    }
    sb_puts(&m, "Auto-Submitted: auto-generated\r\n");
    sb_printf(&m, "Content-Language: %s\r\n", t->locale);
    sb_printf(&m, "Content-Type: multipart/alternative;\r\n boundary=\"%s\"\r\n\r\n",
              boundary.p != NULL ? boundary.p : "");

    /* parts */
    sb_printf(&m,
              "--%s\r\nContent-Type: text/plain; charset=UTF-8\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n",
              boundary.p != NULL ? boundary.p : "");
    sb_qp(&m, text.p != NULL ? text.p : "", text.len);
    sb_printf(&m,
              "\r\n--%s\r\nContent-Type: text/html; charset=UTF-8\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n",
              boundary.p != NULL ? boundary.p : "");
    sb_qp(&m, html.p != NULL ? html.p : "", html.len);
    sb_printf(&m, "\r\n--%s--\r\n", boundary.p != NULL ? boundary.p : "");

    if (m.oom || subj.oom || text.oom || html.oom || unsub.oom || boundary.oom) {
        rc = -2;
        goto out;
    }
    *out = m.p;
    *outlen = m.len;
    m.p = NULL;
    rc = 0;
out:
    sb_free(&m);
    sb_free(&subj);
    sb_free(&text);
    sb_free(&html);
    sb_free(&unsub);
    sb_free(&boundary);
    return rc;
}
