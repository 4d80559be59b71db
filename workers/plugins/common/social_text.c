/* The text of a public post and the helpers the social plug-ins share
 * (see social_text.h for what a post may say and how length is counted).
 *
 * A post is composed from parts, then fitted to the budget in steps that
 * lose the least first: media links are only added while they fit; a
 * digest names fewer categories ("+2 andere"); the group's name (at most
 * 80 code points anyway) is shortened with an ellipsis; as a last resort
 * the whole text is cut at a code point boundary (never inside a URL) and
 * ends in an ellipsis.
 *
 * Threads: none of its own; pure functions (the host's event-loop thread). */
#include "social_text.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ELLIPSIS "\xe2\x80\xa6" /* U+2026 */
#define MAX_CELL 6
#define MAX_GROUP 80 /* code points of a group's name shown at most */

/* ---- the templates ---------------------------------------------------------------------- */

struct lang {
    const char *code;
    const char *category[11]; /* by Category number (proto/report.proto) */
    const char *status[8];    /* by Status number; [0]: any other */
    const char *urgency[4];   /* by Urgency number; [0]: say nothing */
    const char *day[7];       /* Sunday first */
    const char *part[4];      /* night, morning, afternoon, evening */
    int part_joined;          /* nl: "zaterdagavond"; en: "Saturday evening" */
    const char *area;         /* " (omgeving %s)" */
    const char *update;       /* "Update %s" */
    const char *period[3];    /* digest: a day, a week, longer */
    const char *report_one, *report_many;
    const char *no_reports;
    const char *others;  /* "+%zu andere" */
    const char *updates; /* " (+%zu updates)" */
    const char *hashtag;
};

static const struct lang nl = {
    .code = "nl",
    .category = {"melding", "inbraak", "verdachte persoon", "verdacht voertuig", "brand",
                 "overlast", "verkeer", "vermiste persoon", "overig", "cybercrime",
                 "openbaar vervoer"},
    .status = {"bijgewerkt", "melding ontvangen", "wordt onderzocht", "politie ter plaatse",
               "verdachte aangehouden", "opgelost", "loos alarm", "afgesloten"},
    .urgency = {NULL, "Ter informatie", "Net gebeurd", "Nu aan de gang"},
    .day = {"zondag", "maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag"},
    .part = {"nacht", "ochtend", "middag", "avond"},
    .part_joined = 1,
    .area = " (omgeving %s)",
    .update = "Update %s",
    .period = {"Afgelopen 24 uur", "Afgelopen week", "Afgelopen periode"},
    .report_one = "melding",
    .report_many = "meldingen",
    .no_reports = "geen meldingen",
    .others = "+%zu andere",
    .updates = " (+%zu updates)",
    .hashtag = "#buurtpreventie",
};

static const struct lang en = {
    .code = "en",
    .category = {"report", "burglary", "suspicious person", "suspicious vehicle", "fire",
                 "nuisance", "traffic", "missing person", "other", "cybercrime",
                 "public transport"},
    .status = {"updated", "report received", "under investigation", "police on site",
               "suspect arrested", "resolved", "false alarm", "closed"},
    .urgency = {NULL, "For information", "Just happened", "Happening now"},
    .day = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"},
    .part = {"night", "morning", "afternoon", "evening"},
    .part_joined = 0,
    .area = " (area %s)",
    .update = "Update on %s",
    .period = {"Past 24 hours", "Past week", "Recently"},
    .report_one = "report",
    .report_many = "reports",
    .no_reports = "no reports",
    .others = "+%zu more",
    .updates = " (+%zu updates)",
    .hashtag = "#neighbourhoodwatch",
};

#define PICT_IN_PROGRESS "\xf0\x9f\x9a\xa8"    /* U+1F6A8 police light */
#define PICT_RECENT "\xe2\x9a\xa0\xef\xb8\x8f" /* U+26A0 U+FE0F warning */
#define PICT_INFO "\xe2\x84\xb9\xef\xb8\x8f"   /* U+2139 U+FE0F information */
#define PICT_STATUS "\xf0\x9f\x94\x94"         /* U+1F514 bell */
#define PICT_DIGEST "\xf0\x9f\x93\x8a"         /* U+1F4CA bar chart */

const char *bb_social_lang(const char *locale)
{
    if (locale && (locale[0] == 'e' || locale[0] == 'E') &&
        (locale[1] == 'n' || locale[1] == 'N') &&
        (locale[2] == '\0' || locale[2] == '-' || locale[2] == '_')) {
        return "en";
    }
    return "nl";
}

static const struct lang *lang_of(const char *locale)
{
    return strcmp(bb_social_lang(locale), "en") == 0 ? &en : &nl;
}

static const char *category_of(const struct lang *l, int c)
{
    return c > 0 && c < (int)(sizeof(l->category) / sizeof(l->category[0])) ? l->category[c]
                                                                            : l->category[0];
}

/* ---- UTF-8 and counting ----------------------------------------------------------------- */

/* The code point at s (at most n bytes) and its length in *len; an
 * invalid byte is U+FFFD of length 1. */
static uint32_t next_cp(const char *s, size_t n, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t want = u[0] < 0x80             ? 1
                  : (u[0] & 0xe0) == 0xc0 ? 2
                  : (u[0] & 0xf0) == 0xe0 ? 3
                  : (u[0] & 0xf8) == 0xf0 ? 4
                                          : 0;
    if (want == 0 || want > n) {
        *len = 1;
        return u[0] < 0x80 ? u[0] : 0xfffd;
    }
    uint32_t cp = want == 1   ? u[0]
                  : want == 2 ? u[0] & 0x1fu
                  : want == 3 ? u[0] & 0x0fu
                              : u[0] & 7u;
    for (size_t i = 1; i < want; i++) {
        if ((u[i] & 0xc0) != 0x80) {
            *len = 1;
            return 0xfffd;
        }
        cp = (cp << 6) | (u[i] & 0x3fu);
    }
    *len = want;
    return cp;
}

static size_t cp_weight(uint32_t cp, int count)
{
    if (count != BB_SOCIAL_X_WEIGHTED) {
        return 1;
    }
    if (cp <= 0x10ff || (cp >= 0x2000 && cp <= 0x200d) || (cp >= 0x2010 && cp <= 0x201f) ||
        (cp >= 0x2032 && cp <= 0x2037)) {
        return 1;
    }
    return 2;
}

/* Bytes of the URL starting at s[i], or 0 if none starts there (a URL
 * starts after whitespace or at the start and runs to whitespace). */
static size_t url_at(const char *s, size_t len, size_t i)
{
    if (i > 0 && !isspace((unsigned char)s[i - 1])) {
        return 0;
    }
    size_t skip = len - i >= 8 && strncasecmp(s + i, "https://", 8) == 0  ? 8
                  : len - i >= 7 && strncasecmp(s + i, "http://", 7) == 0 ? 7
                                                                          : 0;
    if (skip == 0 || i + skip >= len || isspace((unsigned char)s[i + skip])) {
        return 0;
    }
    size_t e = i + skip;
    while (e < len && !isspace((unsigned char)s[e])) {
        e++;
    }
    return e - i;
}

size_t bb_social_length(const char *s, size_t len, int count)
{
    size_t w = 0;
    for (size_t i = 0; i < len;) {
        size_t u = url_at(s, len, i);
        if (u > 0) {
            w += BB_SOCIAL_URL_WEIGHT;
            i += u;
            continue;
        }
        size_t n;
        w += cp_weight(next_cp(s + i, len - i, &n), count);
        i += n;
    }
    return w;
}

/* ---- buffers and encoders --------------------------------------------------------------- */

void bb_social_buf_add(struct bb_social_buf *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
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

void bb_social_buf_puts(struct bb_social_buf *b, const char *s)
{
    bb_social_buf_add(b, s, strlen(s));
}

static void buf_printf(struct bb_social_buf *b, const char *fmt, const char *arg)
{
    char tmp[512];
    int n = snprintf(tmp, sizeof(tmp), fmt, arg);
    if (n > 0) {
        bb_social_buf_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
    }
}

void bb_social_buf_json(struct bb_social_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    bb_social_buf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            bb_social_buf_add(b, e, 2);
        } else if (c == '\n') {
            bb_social_buf_add(b, "\\n", 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            bb_social_buf_add(b, e, 6);
        } else {
            bb_social_buf_add(b, s, 1);
        }
    }
    bb_social_buf_add(b, "\"", 1);
}

void bb_social_buf_form(struct bb_social_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            bb_social_buf_add(b, s, 1);
        } else if (c == ' ') {
            bb_social_buf_add(b, "+", 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            bb_social_buf_add(b, e, 3);
        }
    }
}

void bb_social_buf_free(struct bb_social_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- time: day and part of day in Europe/Amsterdam -------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* 0 = Sunday. */
static int weekday(int64_t days)
{
    return (int)(((days % 7) + 11) % 7);
}

static int64_t year_of(int64_t days)
{
    int64_t y = 1970 + floor_div(days, 366);
    while (days_from_civil(y + 1, 1, 1) <= days) {
        y++;
    }
    return y;
}

/* The Unix second of the last Sunday of month m (31 days) at 01:00 UTC:
 * when EU summer time starts (March) or ends (October). */
static int64_t eu_switch(int64_t y, int m)
{
    int64_t last = days_from_civil(y, m, 31);
    return (last - weekday(last)) * 86400 + 3600;
}

/* "zaterdagavond" / "Saturday evening" for a time in ms; "" when 0. The
 * hours 0-6 are the night of the day before ("vrijdagnacht"). */
static void when_of(const struct lang *l, int64_t time_ms, char *out, size_t cap)
{
    out[0] = '\0';
    if (time_ms <= 0) {
        return;
    }
    int64_t t = time_ms / 1000;
    int64_t y = year_of(floor_div(t, 86400));
    int64_t off = t >= eu_switch(y, 3) && t < eu_switch(y, 10) ? 7200 : 3600;
    int64_t local = t + off;
    int64_t days = floor_div(local, 86400);
    int hour = (int)((local - days * 86400) / 3600);
    int part = hour < 6 ? 0 : hour < 12 ? 1 : hour < 18 ? 2 : 3;
    int wd = weekday(part == 0 ? days - 1 : days);
    snprintf(out, cap, "%s%s%s", l->day[wd], l->part_joined ? "" : " ", l->part[part]);
}

/* ---- composing -------------------------------------------------------------------------- */

/* The group's name as it may appear: control characters become spaces,
 * and '@' the fullwidth U+FF20, so that a name never mentions (notifies)
 * an account on Mastodon or X. */
static char *clean_name(const char *s)
{
    size_t n = strlen(s), k = 0;
    char *c = malloc(3 * n + 1);
    if (!c) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '@') {
            memcpy(c + k, "\xef\xbc\xa0", 3);
            k += 3;
        } else {
            c[k++] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
        }
    }
    c[k] = '\0';
    return c;
}

/* The cell, at most MAX_CELL geohash characters; "" if it is not one. */
static void coarse_cell(const char *cell, char out[MAX_CELL + 1])
{
    size_t i = 0;
    out[0] = '\0';
    for (; cell[i] && i < MAX_CELL; i++) {
        char c = cell[i];
        if (!((c >= '0' && c <= '9') ||
              (c >= 'b' && c <= 'z' && c != 'i' && c != 'l' && c != 'o'))) {
            out[0] = '\0';
            return;
        }
        out[i] = c;
    }
    out[i] = '\0';
}

/* What a fitting step may shorten. */
struct fit {
    const char *group;  /* cleaned name */
    size_t group_bytes; /* how much of it is shown */
    int group_cut;      /* shortened: append an ellipsis */
    size_t ncats;       /* digest: categories named */
};

static void put_place(struct bb_social_buf *b, const struct lang *l, const struct fit *f,
                      const char *sep, const char *cell)
{
    if (f->group_bytes > 0) {
        bb_social_buf_puts(b, sep);
        bb_social_buf_add(b, f->group, f->group_bytes);
        if (f->group_cut) {
            bb_social_buf_puts(b, ELLIPSIS);
        }
    }
    if (cell && cell[0]) {
        buf_printf(b, l->area, cell);
    }
}

static void compose_single(struct bb_social_buf *b, const struct lang *l,
                           const struct bb_notification *n, const struct fit *f)
{
    char cell[MAX_CELL + 1], when[64];
    coarse_cell(n->cell, cell);
    when_of(l, n->time_ms, when, sizeof(when));
    const char *cat = category_of(l, n->category);
    if (n->kind == BB_KIND_STATUS) {
        bb_social_buf_puts(b, PICT_STATUS " ");
        buf_printf(b, l->update, cat);
    } else {
        bb_social_buf_puts(b, n->urgency == BB_URGENCY_IN_PROGRESS ? PICT_IN_PROGRESS " "
                              : n->urgency == BB_URGENCY_RECENT    ? PICT_RECENT " "
                                                                   : PICT_INFO " ");
        char cap[64];
        snprintf(cap, sizeof(cap), "%s", cat);
        cap[0] = (char)toupper((unsigned char)cap[0]);
        bb_social_buf_puts(b, cap);
    }
    put_place(b, l, f, " \xe2\x80\x94 ", cell);
    if (when[0]) {
        bb_social_buf_puts(b, ", ");
        bb_social_buf_puts(b, when);
    }
    if (n->kind == BB_KIND_STATUS) {
        int s = n->status > 0 && n->status < 8 ? n->status : 0;
        bb_social_buf_puts(b, ": ");
        bb_social_buf_puts(b, l->status[s]);
        bb_social_buf_puts(b, ".");
    } else if (n->urgency >= 1 && n->urgency <= 3) {
        bb_social_buf_puts(b, ". ");
        bb_social_buf_puts(b, l->urgency[n->urgency]);
        bb_social_buf_puts(b, ".");
    } else {
        bb_social_buf_puts(b, ".");
    }
    bb_social_buf_puts(b, " ");
    bb_social_buf_puts(b, l->hashtag);
}

/* A digest: reports counted by category (most first), status updates
 * counted apart. */
struct tally {
    int cat;
    size_t count;
};

struct digest {
    struct tally t[16];
    size_t nt;
    size_t reports, updates;
    int period; /* index into lang.period */
    const char *group;
};

static int tally_cmp(const void *a, const void *b)
{
    const struct tally *x = a, *y = b;
    if (x->count != y->count) {
        return x->count > y->count ? -1 : 1;
    }
    return x->cat < y->cat ? -1 : x->cat > y->cat;
}

static void digest_of(const struct bb_delivery *d, struct digest *g)
{
    memset(g, 0, sizeof(*g));
    int64_t lo = 0, hi = 0;
    const char *group = d->n && d->n->group_name[0] ? d->n->group_name : NULL;
    int same_group = 1;
    for (size_t i = 0; i < d->nitems; i++) {
        const struct bb_notification *it = d->items[i];
        if (!it) {
            continue;
        }
        if (it->time_ms > 0) {
            lo = lo == 0 || it->time_ms < lo ? it->time_ms : lo;
            hi = it->time_ms > hi ? it->time_ms : hi;
        }
        if (!d->n || !d->n->group_name[0]) {
            if (!group && it->group_name[0]) {
                group = it->group_name;
            } else if (group && strcmp(group, it->group_name) != 0) {
                same_group = 0;
            }
        }
        if (it->kind == BB_KIND_STATUS) {
            g->updates++;
            continue;
        }
        g->reports++;
        /* Unknown numbers count as the generic "melding". */
        int cat = it->category > 0 && it->category <= 10 ? it->category : 0;
        size_t k = 0;
        while (k < g->nt && g->t[k].cat != cat) {
            k++;
        }
        if (k == g->nt) {
            g->t[g->nt++] = (struct tally){cat, 0};
        }
        g->t[k].count++;
    }
    qsort(g->t, g->nt, sizeof(g->t[0]), tally_cmp);
    if (d->n && d->n->time_ms > hi) {
        hi = d->n->time_ms;
    }
    int64_t span = hi - lo;
    g->period = span <= 26LL * 3600000 ? 0 : span <= 8LL * 86400000 ? 1 : 2;
    g->group = same_group ? group : NULL;
}

static void compose_digest(struct bb_social_buf *b, const struct lang *l, const struct digest *g,
                           const struct fit *f)
{
    bb_social_buf_puts(b, PICT_DIGEST " ");
    bb_social_buf_puts(b, l->period[g->period]);
    put_place(b, l, f, " in ", NULL);
    bb_social_buf_puts(b, ": ");
    char num[64];
    if (g->reports == 0 && g->updates == 0) {
        bb_social_buf_puts(b, l->no_reports);
    } else if (g->reports == 0) {
        snprintf(num, sizeof(num), "%zu updates", g->updates);
        bb_social_buf_puts(b, num);
    } else {
        snprintf(num, sizeof(num), "%zu %s", g->reports,
                 g->reports == 1 ? l->report_one : l->report_many);
        bb_social_buf_puts(b, num);
        if (g->updates > 0) {
            snprintf(num, sizeof(num), l->updates, g->updates);
            bb_social_buf_puts(b, num);
        }
        size_t shown = f->ncats < g->nt ? f->ncats : g->nt;
        size_t rest = 0;
        for (size_t k = shown; k < g->nt; k++) {
            rest += g->t[k].count;
        }
        if (shown > 0) {
            bb_social_buf_puts(b, " \xe2\x80\x94 ");
        }
        for (size_t k = 0; k < shown; k++) {
            snprintf(num, sizeof(num), "%s%zu\xc3\x97 ", k ? ", " : "", g->t[k].count);
            bb_social_buf_puts(b, num);
            bb_social_buf_puts(b, category_of(l, g->t[k].cat));
        }
        if (shown > 0 && rest > 0) {
            snprintf(num, sizeof(num), l->others, rest);
            bb_social_buf_puts(b, ", ");
            bb_social_buf_puts(b, num);
        }
    }
    bb_social_buf_puts(b, ". ");
    bb_social_buf_puts(b, l->hashtag);
}

struct job {
    const struct bb_delivery *d;
    const struct lang *l;
    const struct digest *g; /* NULL: single */
};

static void compose(struct bb_social_buf *b, const struct job *j, const struct fit *f)
{
    b->len = 0;
    if (b->p) {
        b->p[0] = '\0';
    }
    if (j->g) {
        compose_digest(b, j->l, j->g, f);
    } else {
        compose_single(b, j->l, j->d->n, f);
    }
}

static int fits(const struct bb_social_buf *b, const struct bb_social_style *st)
{
    return !b->oom && bb_social_length(b->p ? b->p : "", b->len, st->count) <= st->budget;
}

/* The group name's prefix of k code points, in bytes. */
static size_t prefix_bytes(const char *s, size_t k)
{
    size_t i = 0, len = strlen(s);
    while (k-- > 0 && i < len) {
        size_t n;
        next_cp(s + i, len - i, &n);
        i += n;
    }
    return i;
}

static size_t count_cps(const char *s)
{
    size_t k = 0, len = strlen(s);
    for (size_t i = 0; i < len; k++) {
        size_t n;
        next_cp(s + i, len - i, &n);
        i += n;
    }
    return k;
}

/* Cuts b to fit, at a code point boundary and never inside a URL, and
 * ends it in an ellipsis. */
static void hard_cut(struct bb_social_buf *b, const struct bb_social_style *st)
{
    size_t ell = bb_social_length(ELLIPSIS, strlen(ELLIPSIS), st->count);
    size_t room = st->budget > ell ? st->budget - ell : 0;
    size_t w = 0, keep = 0;
    for (size_t i = 0; i < b->len;) {
        size_t u = url_at(b->p, b->len, i), n = u, cw = BB_SOCIAL_URL_WEIGHT;
        if (u == 0) {
            cw = cp_weight(next_cp(b->p + i, b->len - i, &n), st->count);
        }
        if (w + cw > room) {
            break;
        }
        w += cw;
        i += n;
        keep = i;
    }
    while (keep > 0 && b->p[keep - 1] == ' ') {
        keep--;
    }
    b->len = keep;
    b->p[keep] = '\0';
    if (st->budget >= ell) {
        bb_social_buf_puts(b, ELLIPSIS);
    }
}

/* Appends the publishable http(s) media URLs that still fit. */
static void add_links(struct bb_social_buf *b, const struct bb_notification *n,
                      const struct bb_social_style *st)
{
    for (size_t i = 0; i < n->nmedia; i++) {
        const struct bb_media *m = &n->media[i];
        if (!m->publishable || !m->url || url_at(m->url, strlen(m->url), 0) != strlen(m->url)) {
            continue;
        }
        size_t before = b->len;
        bb_social_buf_puts(b, " ");
        bb_social_buf_puts(b, m->url);
        if (!fits(b, st)) {
            b->len = before;
            b->p[before] = '\0';
            b->oom = 0;
        }
    }
}

char *bb_social_render(const struct bb_delivery *d, const struct bb_social_style *st)
{
    if (!d || !d->n) {
        return NULL;
    }
    const struct bb_notification *n = d->n;
    struct digest g;
    int is_digest = d->nitems > 0 || n->kind == BB_KIND_DIGEST;
    if (is_digest) {
        digest_of(d, &g);
    }
    struct job j = {d, lang_of(n->locale), is_digest ? &g : NULL};
    char *group = clean_name(is_digest ? (g.group ? g.group : "") : n->group_name);
    if (!group) {
        return NULL;
    }
    struct bb_social_buf b = {0};
    struct fit f = {group, prefix_bytes(group, MAX_GROUP), 0, is_digest ? g.nt : 0};
    f.group_cut = f.group_bytes < strlen(group);
    compose(&b, &j, &f);
    /* A digest names fewer categories first, down to one. */
    while (!fits(&b, st) && is_digest && f.ncats > 1) {
        f.ncats--;
        compose(&b, &j, &f);
    }
    /* Then the group's name gets shorter: the longest prefix that fits. */
    if (!fits(&b, st) && f.group_bytes > 0) {
        size_t lo = 0, hi = count_cps(group);
        hi = hi < MAX_GROUP ? hi : MAX_GROUP;
        while (lo < hi) {
            size_t mid = (lo + hi + 1) / 2;
            f.group_bytes = prefix_bytes(group, mid);
            f.group_cut = 1;
            compose(&b, &j, &f);
            if (fits(&b, st)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        f.group_bytes = prefix_bytes(group, lo);
        /* No trailing space before the ellipsis. */
        while (f.group_bytes > 0 && group[f.group_bytes - 1] == ' ') {
            f.group_bytes--;
        }
        f.group_cut = f.group_bytes > 0;
        compose(&b, &j, &f);
    }
    if (!b.oom && !fits(&b, st)) {
        hard_cut(&b, st);
    } else if (!b.oom && !is_digest && st->media_links) {
        add_links(&b, n, st);
    }
    free(group);
    if (b.oom || !b.p) {
        bb_social_buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* ---- responses -------------------------------------------------------------------------- */

const char *bb_social_header(const struct bb_http_response *res, const char *name)
{
    if (!res || !BB_HAS_FIELD(res, struct bb_http_response, nheaders) || !res->headers) {
        return NULL;
    }
    for (size_t i = 0; i < res->nheaders; i++) {
        if (res->headers[i].name && strcasecmp(res->headers[i].name, name) == 0) {
            return res->headers[i].value ? res->headers[i].value : "";
        }
    }
    return NULL;
}

/* "2026-11-28T17:00:00.000Z" (UTC; fraction ignored) or a Unix time in
 * seconds; -1 if neither. */
static int64_t parse_reset(const char *v)
{
    while (*v == ' ') {
        v++;
    }
    int y, mo, d, h, mi, s;
    if (sscanf(v, "%4d-%2d-%2dT%2d:%2d:%2d", &y, &mo, &d, &h, &mi, &s) == 6) {
        if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) {
            return -1;
        }
        return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
    }
    char *end;
    long long t = strtoll(v, &end, 10);
    return end != v && t > 0 ? (int64_t)t : -1;
}

unsigned bb_social_retry_after(const struct bb_http_response *res, const char *reset_header,
                               int64_t now_s)
{
    const char *v = reset_header ? bb_social_header(res, reset_header) : NULL;
    int64_t at = v ? parse_reset(v) : -1;
    if (at > 0) {
        int64_t wait = at - now_s;
        /* A reset in the past (clock skew) still means "not right now". */
        return wait < 1 ? 1u : wait > 86400 ? 86400u : (unsigned)wait;
    }
    if (res->retry_after_s >= 0) {
        return res->retry_after_s < 1 ? 1u : (unsigned)res->retry_after_s;
    }
    return 0;
}

/* ---- sending ------------------------------------------------------------------------------ */

static void buf_wipe_free(struct bb_social_buf *b)
{
    if (b->p) {
        memset(b->p, 0, b->len);
    }
    bb_social_buf_free(b);
}

int bb_social_buf_out(const struct bb_host_api *host, struct bb_social_buf *b, char **out,
                      size_t *outlen)
{
    *out = b->oom ? NULL : host->alloc(b->len + 1);
    if (*out) {
        memcpy(*out, b->p ? b->p : "", b->len);
        (*out)[b->len] = '\0';
        *outlen = b->len;
    }
    buf_wipe_free(b);
    return *out ? 0 : -1;
}

int bb_social_post(const struct bb_host_api *host, const char *url,
                   const struct bb_http_header *headers, size_t nheaders, struct bb_social_buf *b,
                   long timeout_ms, const char *pool, bb_http_done_fn *on_response, void *op)
{
    struct bb_http_request req = {
        .struct_size = sizeof(req),
        .method = "POST",
        .url = url,
        .headers = headers,
        .nheaders = nheaders,
        .body = b->p,
        .body_len = b->len,
        .timeout_ms = timeout_ms,
        .pool = pool,
    };
    /* The host copies the body and the headers. */
    int rc = b->oom ? -1 : host->http(host->host, &req, on_response, op);
    buf_wipe_free(b);
    if (rc != 0) {
        host->free(op);
        return -1;
    }
    return 0;
}
