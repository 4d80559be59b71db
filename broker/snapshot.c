/* The directory in Redis (see snapshot.h; key layout in docs/contracts.md).
 *
 * Any thread, one redisContext per thread; the load and replay functions
 * additionally run on the bb_dir's writer thread.
 *
 * Writes: a chunk of events is one round trip of reads under WATCH (the
 * records and existence checks the chunk's events need that the chunk does
 * not itself create) and one MULTI/EXEC holding, in order, every accepted
 * event's key writes followed by its XADD. Commands are formatted as RESP
 * into one buffer and handed to hiredis with a single append, so a chunk
 * costs two socket round trips whatever its size. An EXEC that returns nil
 * (a watched key changed) redoes the chunk from its reads.
 *
 * Reads: SSCAN and pipelined HGET/SMEMBERS. Replies are freed chunk by
 * chunk, so memory stays bounded by the chunk, not the directory. */
#include "snapshot.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "geohash.h"
#include "log.h"
#include "wire.h"

#define DEFAULT_CHUNK 512
#define READ_CHUNK 1000   /* HGETs per pipeline when loading */
#define SET_CHUNK 100     /* SMEMBERS per pipeline when loading */
#define REPLAY_COUNT 1000 /* entries per XRANGE when replaying */
#define WATCH_RETRIES 16
#define MAX_REPORT_ID 64
#define MAX_NAME 64
#define MAX_LOCALE 15
#define KEY_MAX 128

/* Removes a report id from bb:follows once its follower set is empty (Redis
 * deletes empty sets), inside the same MULTI as the SREM before it. */
static const char unfollow_lua[] =
    "if redis.call('SCARD', KEYS[1]) == 0 then return redis.call('SREM', KEYS[2], ARGV[1]) end "
    "return 0";

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- connection -------------------------------------------------------------------------- */

redisContext *bb_redis_connect(const char *addr, const char *user, const char *password,
                               int timeout_ms, char *err, size_t errlen)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    char host[256];
    int port = 6379;
    redisContext *c = NULL;
    redisReply *rep = NULL;

    if (!addr || !*addr) {
        fail(err, errlen, 0, "empty Redis address");
        return NULL;
    }
    if (strchr(addr, '/')) {
        c = timeout_ms > 0 ? redisConnectUnixWithTimeout(addr, tv) : redisConnectUnix(addr);
    } else {
        const char *h = addr, *colon;
        size_t hlen;
        if (addr[0] == '[') {
            const char *close = strchr(addr, ']');
            if (!close || (close[1] != '\0' && close[1] != ':')) {
                fail(err, errlen, 0, "bad Redis address '%s': expected [v6]:port", addr);
                return NULL;
            }
            h = addr + 1;
            hlen = (size_t)(close - h);
            colon = close[1] == ':' ? close + 1 : NULL;
        } else {
            colon = strrchr(addr, ':');
            hlen = colon ? (size_t)(colon - addr) : strlen(addr);
        }
        if (colon) {
            char *end;
            errno = 0;
            long p = strtol(colon + 1, &end, 10);
            if (errno || *end || end == colon + 1 || p < 1 || p > 65535) {
                fail(err, errlen, 0, "bad Redis address '%s': port must be 1..65535", addr);
                return NULL;
            }
            port = (int)p;
        }
        if (hlen == 0 || hlen >= sizeof(host)) {
            fail(err, errlen, 0, "bad Redis address '%s': expected host:port or a socket path",
                 addr);
            return NULL;
        }
        memcpy(host, h, hlen);
        host[hlen] = '\0';
        c = timeout_ms > 0 ? redisConnectWithTimeout(host, port, tv) : redisConnect(host, port);
    }
    if (!c) {
        fail(err, errlen, 0, "redis %s: out of memory", addr);
        return NULL;
    }
    if (c->err) {
        fail(err, errlen, 0, "redis %s: %s", addr, c->errstr);
        goto free_context;
    }
    if (timeout_ms > 0 && redisSetTimeout(c, tv) != REDIS_OK) {
        fail(err, errlen, 0, "redis %s: cannot set the timeout", addr);
        goto free_context;
    }
    if (password && *password) {
        rep = user && *user ? redisCommand(c, "AUTH %s %s", user, password)
                            : redisCommand(c, "AUTH %s", password);
        if (!rep) {
            fail(err, errlen, 0, "redis %s: AUTH: %s", addr, c->errstr);
            goto free_context;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            fail(err, errlen, 0, "redis %s: AUTH refused: %s", addr, rep->str);
            goto free_reply;
        }
        freeReplyObject(rep);
    }
    return c;

free_reply:
    freeReplyObject(rep);
free_context:
    redisFree(c);
    return NULL;
}

/* ---- RESP formatting --------------------------------------------------------------------- */

struct resp {
    char *buf;
    size_t len, cap;
    unsigned ncmds;
    bool oom;
};

static void resp_put(struct resp *r, const void *p, size_t n)
{
    if (r->oom) {
        return;
    }
    if (r->len + n > r->cap) {
        size_t nc = r->cap ? r->cap : 4096;
        while (nc < r->len + n) {
            nc *= 2;
        }
        char *b = realloc(r->buf, nc);
        if (!b) {
            r->oom = true;
            return;
        }
        r->buf = b;
        r->cap = nc;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
}

static void resp_cmd(struct resp *r, unsigned argc)
{
    char h[24];
    int n = snprintf(h, sizeof(h), "*%u\r\n", argc);
    resp_put(r, h, (size_t)n);
    r->ncmds++;
}

static void resp_arg(struct resp *r, const void *p, size_t len)
{
    char h[24];
    int n = snprintf(h, sizeof(h), "$%zu\r\n", len);
    resp_put(r, h, (size_t)n);
    resp_put(r, p, len);
    resp_put(r, "\r\n", 2);
}

static void resp_str(struct resp *r, const char *s)
{
    resp_arg(r, s, strlen(s));
}

static void resp_fmt(struct resp *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A key built with printf; keys here are short ("bb:user:123:groups"). */
static void resp_fmt(struct resp *r, const char *fmt, ...)
{
    char k[KEY_MAX + MAX_REPORT_ID];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(k, sizeof(k), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(k)) {
        r->oom = true; /* cannot happen with checked ids; refuse rather than truncate */
        return;
    }
    resp_arg(r, k, (size_t)n);
}

static void resp_reset(struct resp *r)
{
    r->len = 0;
    r->ncmds = 0;
    r->oom = false;
}

/* Hands the formatted commands to hiredis and writes them out. */
static int resp_send(redisContext *c, struct resp *r, char *err, size_t errlen)
{
    if (r->oom) {
        return fail(err, errlen, BB_ENOMEM, "out of memory formatting commands");
    }
    if (redisAppendFormattedCommand(c, r->buf, r->len) != REDIS_OK) {
        return fail(err, errlen, BB_EIO, "redis: %s", c->errstr);
    }
    int done = 0;
    while (!done) {
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            return fail(err, errlen, BB_EIO, "redis: %s", c->errstr);
        }
    }
    return BB_OK;
}

static int get_reply(redisContext *c, redisReply **out, char *err, size_t errlen)
{
    void *p = NULL;
    if (redisGetReply(c, &p) != REDIS_OK || !p) {
        *out = NULL;
        return fail(err, errlen, BB_EIO, "redis: %s", c->err ? c->errstr : "no reply");
    }
    *out = p;
    return BB_OK;
}

/* Reads n replies and frees them; the first error reply is reported. */
static int drain_replies(redisContext *c, unsigned n, const char *what, char *err, size_t errlen)
{
    int rc = BB_OK;
    for (unsigned i = 0; i < n; i++) {
        redisReply *rep;
        int r = get_reply(c, &rep, err, errlen);
        if (r != BB_OK) {
            return r;
        }
        if (rep->type == REDIS_REPLY_ERROR && rc == BB_OK) {
            rc = fail(err, errlen, BB_EIO, "redis: %s: %s", what, rep->str);
        }
        freeReplyObject(rep);
    }
    return rc;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return false;
        }
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* ---- local checks ------------------------------------------------------------------------ */

static bool report_id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > MAX_REPORT_ID) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == ':') { /* as validate.c: ':' splits delivery ids */
            return false;
        }
    }
    return true;
}

static bool text_ok(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    return n <= max && bb_utf8_is_valid(s ? s : "", n);
}

static bool locale_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > MAX_LOCALE) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_')) {
            return false;
        }
    }
    return true;
}

static bool zone_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > 64) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '_' || c == '-' || c == '+')) {
            return false;
        }
    }
    return !strstr(s ? s : "", "..");
}

static const char *channels_check(const Bb__ChannelSet *cs)
{
    for (size_t i = 0; cs && i < cs->n_channels; i++) {
        if (cs->channels[i] < BB__CHANNEL__CHANNEL_PUSH ||
            cs->channels[i] > BB__CHANNEL__CHANNEL_DIGEST) {
            return "bad_channel";
        }
    }
    return NULL;
}

static const char *prefs_check(const Bb__Preferences *p)
{
    const char *why;
    if (!p) {
        return NULL;
    }
    for (size_t i = 0; i < p->n_categories; i++) {
        if (p->categories[i] < 1 || p->categories[i] > BB_CATEGORY_MAX) {
            return "unknown_category";
        }
    }
    if (p->min_urgency > BB__URGENCY__URGENCY_IN_PROGRESS) {
        return "unknown_urgency";
    }
    if ((why = channels_check(p->in_progress)) || (why = channels_check(p->recent)) ||
        (why = channels_check(p->informational))) {
        return why;
    }
    if (p->quiet && (p->quiet->from_minute >= 1440 || p->quiet->to_minute >= 1440)) {
        return "bad_quiet_hours";
    }
    if (p->digest_hour > 23) {
        return "bad_digest_hour";
    }
    return NULL;
}

static const char *user_check(const Bb__User *u)
{
    if (!u || u->id == 0) {
        return "missing_field:id";
    }
    if (u->watch && u->watch->radius_m) {
        const Bb__WatchArea *w = u->watch;
        if (!isfinite(w->lat) || !isfinite(w->lon) || w->lat < -90 || w->lat > 90 ||
            w->lon < -180 || w->lon > 180) {
            return "bad_location";
        }
        if (w->radius_m > 65535) {
            return "radius_too_large";
        }
    }
    if (!text_ok(u->screen_name, MAX_NAME)) {
        return "bad_screen_name";
    }
    if (!locale_ok(u->locale)) {
        return "bad_locale";
    }
    if (!zone_ok(u->time_zone)) {
        return "bad_time_zone";
    }
    for (size_t i = 0; i < u->n_muted_authors; i++) {
        if (u->muted_authors[i] == 0) {
            return "bad_mute";
        }
    }
    for (size_t i = 0; i < u->n_muted_groups; i++) {
        if (u->muted_groups[i] == 0) {
            return "bad_mute";
        }
    }
    return prefs_check(u->prefs);
}

static const char *group_check(const Bb__Group *g)
{
    if (!g || g->id == 0) {
        return "missing_field:id";
    }
    if (!text_ok(g->name, 127)) {
        return "bad_name";
    }
    if (g->location_precision > BB_GEOHASH_MAX_PRECISION) {
        return "bad_precision";
    }
    for (size_t i = 0; i < g->n_cells; i++) {
        bb_cell c;
        if (!g->cells[i] || bb_geohash_parse(g->cells[i], strlen(g->cells[i]), &c) != BB_OK) {
            return "bad_cell";
        }
    }
    const Bb__Policy *p = g->policy;
    for (size_t i = 0; p && i < p->n_categories; i++) {
        if (p->categories[i] < 1 || p->categories[i] > BB_CATEGORY_MAX) {
            return "unknown_category";
        }
    }
    for (size_t i = 0; p && i < p->n_sources; i++) {
        if (p->sources[i] < 1 || p->sources[i] > BB_SOURCE_MAX) {
            return "unknown_source";
        }
    }
    if (p && p->min_urgency > BB__URGENCY__URGENCY_IN_PROGRESS) {
        return "unknown_urgency";
    }
    return NULL;
}

const char *bb_store_check(const Bb__DirectoryEvent *ev)
{
    if (!ev) {
        return "missing_field:change";
    }
    switch (ev->change_case) {
    case BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT:
        return user_check(ev->user_upsert);
    case BB__DIRECTORY_EVENT__CHANGE_USER_ERASE:
        return ev->user_erase ? NULL : "missing_field:user_erase";
    case BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT:
        return group_check(ev->group_upsert);
    case BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE:
        return ev->group_delete ? NULL : "missing_field:group_delete";
    case BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD:
    case BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE: {
        const Bb__Membership *m = ev->change_case == BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD
                                      ? ev->member_add
                                      : ev->member_remove;
        if (!m || !m->user_id) {
            return "missing_field:user_id";
        }
        return m->group_id ? NULL : "missing_field:group_id";
    }
    case BB__DIRECTORY_EVENT__CHANGE_PREFERENCES:
        if (!ev->preferences || !ev->preferences->user_id) {
            return "missing_field:user_id";
        }
        return prefs_check(ev->preferences->prefs);
    case BB__DIRECTORY_EVENT__CHANGE_MUTE:
    case BB__DIRECTORY_EVENT__CHANGE_UNMUTE: {
        const Bb__Mute *m =
            ev->change_case == BB__DIRECTORY_EVENT__CHANGE_MUTE ? ev->mute : ev->unmute;
        if (!m || !m->user_id) {
            return "missing_field:user_id";
        }
        return !m->author_id == !m->group_id ? "bad_mute" : NULL;
    }
    case BB__DIRECTORY_EVENT__CHANGE_FOLLOW:
    case BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW: {
        const Bb__Follow *f =
            ev->change_case == BB__DIRECTORY_EVENT__CHANGE_FOLLOW ? ev->follow : ev->unfollow;
        if (!f || !f->user_id) {
            return "missing_field:user_id";
        }
        return report_id_ok(f->report_id) ? NULL : "bad_report_id";
    }
    case BB__DIRECTORY_EVENT__CHANGE_CONTACT_GONE:
        return ev->contact_gone && ev->contact_gone->user_id ? NULL : "missing_field:user_id";
    default:
        return "unknown_change";
    }
}

/* ---- writer: chunk state ----------------------------------------------------------------- */

/* What a chunk knows about a user or group: from its reads, or from its
 * own earlier events. */
struct ustate {
    uint64_t id;
    bool known;   /* pass 1: created by the segment before this point */
    bool exists;  /* pass 2: as of the event being written */
    bool watched; /* read from Redis under WATCH */
    uint8_t *rec; /* packed Bb__User, owned; NULL if none */
    size_t len;
};

struct gstate {
    uint64_t id;
    bool known;
    bool exists;
    bool watched;
};

/* Open addressing, id -> index + 1 (0: empty). Ids are never 0 here. */
struct idmap {
    uint64_t *keys;
    uint32_t *vals;
    uint32_t mask, n;
};

static int idmap_init(struct idmap *m, uint32_t want)
{
    uint32_t cap = 16;
    while (cap < want * 2) {
        cap *= 2;
    }
    m->keys = calloc(cap, sizeof(uint64_t));
    m->vals = calloc(cap, sizeof(uint32_t));
    m->mask = cap - 1;
    m->n = 0;
    if (!m->keys || !m->vals) {
        free(m->keys);
        free(m->vals);
        m->keys = NULL;
        m->vals = NULL;
        return BB_ENOMEM;
    }
    return BB_OK;
}

static void idmap_fini(struct idmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

static uint32_t *idmap_slot(struct idmap *m, uint64_t id)
{
    uint64_t h = id * 0x9e3779b97f4a7c15ULL;
    for (uint32_t i = (uint32_t)(h >> 32) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == id || m->keys[i] == 0) {
            m->keys[i] = id;
            return &m->vals[i];
        }
    }
}

struct qent {
    uint64_t tag;
    size_t off, len; /* packed event in bytes */
};

struct bb_store_batch {
    redisContext *c;
    unsigned chunk;
    bb_store_reject_fn *on_reject;
    void *arg;
    uint8_t *bytes;
    size_t len, cap;
    struct qent *q;
    size_t nq, qcap;
    struct bb_store_stats st;
    struct resp cmd;
    /* per segment */
    struct idmap umap, gmap;
    struct ustate *us;
    struct gstate *gs;
    uint32_t nus, ngs;
    const char **why; /* per event of the segment: NULL accepted, else reason */
};

struct bb_store_batch *bb_store_batch_new(redisContext *c, unsigned chunk,
                                          bb_store_reject_fn *on_reject, void *arg)
{
    struct bb_store_batch *b = calloc(1, sizeof(*b));
    if (!b) {
        return NULL;
    }
    b->c = c;
    b->chunk = chunk ? chunk : DEFAULT_CHUNK;
    b->on_reject = on_reject;
    b->arg = arg;
    return b;
}

static void segment_clear(struct bb_store_batch *b)
{
    for (uint32_t i = 0; i < b->nus; i++) {
        free(b->us[i].rec);
    }
    free(b->us);
    free(b->gs);
    free(b->why);
    b->us = NULL;
    b->gs = NULL;
    b->why = NULL;
    b->nus = b->ngs = 0;
    idmap_fini(&b->umap);
    idmap_fini(&b->gmap);
}

void bb_store_batch_free(struct bb_store_batch *b)
{
    if (!b) {
        return;
    }
    segment_clear(b);
    free(b->cmd.buf);
    free(b->bytes);
    free(b->q);
    free(b);
}

void bb_store_batch_stats(const struct bb_store_batch *b, struct bb_store_stats *out)
{
    *out = b->st;
}

int bb_store_batch_add(struct bb_store_batch *b, const Bb__DirectoryEvent *ev, uint64_t tag,
                       char *err, size_t errlen)
{
    const char *why = bb_store_check(ev);
    if (why) {
        b->st.rejected++;
        return fail(err, errlen, BB_EINVAL, "%s", why);
    }
    size_t n = bb__directory_event__get_packed_size(ev);
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap : 65536;
        while (nc < b->len + n) {
            nc *= 2;
        }
        uint8_t *p = realloc(b->bytes, nc);
        if (!p) {
            return fail(err, errlen, BB_ENOMEM, "out of memory queueing an event");
        }
        b->bytes = p;
        b->cap = nc;
    }
    if (b->nq == b->qcap) {
        size_t nc = b->qcap ? b->qcap * 2 : 256;
        struct qent *q = realloc(b->q, nc * sizeof(*q));
        if (!q) {
            return fail(err, errlen, BB_ENOMEM, "out of memory queueing an event");
        }
        b->q = q;
        b->qcap = nc;
    }
    bb__directory_event__pack(ev, b->bytes + b->len);
    b->q[b->nq++] = (struct qent){.tag = tag, .off = b->len, .len = n};
    b->len += n;
    if (b->nq >= b->chunk) {
        return bb_store_batch_flush(b, err, errlen);
    }
    return BB_OK;
}

static struct ustate *ustate_get(struct bb_store_batch *b, uint64_t id, bool create)
{
    uint32_t *v = idmap_slot(&b->umap, id);
    if (*v) {
        return &b->us[*v - 1];
    }
    if (!create) {
        b->umap.keys[v - b->umap.vals] = 0; /* undo the claim of an empty bucket */
        return NULL;
    }
    struct ustate *u = &b->us[b->nus++];
    *u = (struct ustate){.id = id};
    *v = b->nus;
    return u;
}

static struct gstate *gstate_get(struct bb_store_batch *b, uint64_t id, bool create)
{
    uint32_t *v = idmap_slot(&b->gmap, id);
    if (*v) {
        return &b->gs[*v - 1];
    }
    if (!create) {
        b->gmap.keys[v - b->gmap.vals] = 0;
        return NULL;
    }
    struct gstate *g = &b->gs[b->ngs++];
    *g = (struct gstate){.id = id};
    *v = b->ngs;
    return g;
}

static int segment_alloc(struct bb_store_batch *b, size_t n)
{
    /* At most two users and one group per event. */
    b->us = calloc(2 * n + 1, sizeof(*b->us));
    b->gs = calloc(n + 1, sizeof(*b->gs));
    b->why = calloc(n + 1, sizeof(*b->why));
    if (!b->us || !b->gs || !b->why || idmap_init(&b->umap, (uint32_t)(2 * n + 1)) != BB_OK ||
        idmap_init(&b->gmap, (uint32_t)(n + 1)) != BB_OK) {
        return BB_ENOMEM;
    }
    return BB_OK;
}

static uint64_t ev_user(const Bb__DirectoryEvent *ev)
{
    switch (ev->change_case) {
    case BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD:
        return ev->member_add->user_id;
    case BB__DIRECTORY_EVENT__CHANGE_PREFERENCES:
        return ev->preferences->user_id;
    case BB__DIRECTORY_EVENT__CHANGE_MUTE:
        return ev->mute->user_id;
    case BB__DIRECTORY_EVENT__CHANGE_UNMUTE:
        return ev->unmute->user_id;
    case BB__DIRECTORY_EVENT__CHANGE_FOLLOW:
        return ev->follow->user_id;
    default:
        return 0;
    }
}

/* The group an event needs to exist (member_add, mute of a group). */
static uint64_t ev_group(const Bb__DirectoryEvent *ev)
{
    switch (ev->change_case) {
    case BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD:
        return ev->member_add->group_id;
    case BB__DIRECTORY_EVENT__CHANGE_MUTE:
        return ev->mute->group_id;
    default:
        return 0;
    }
}

/* Pass 1: which users and groups the segment must read, and WATCH them. */
static int segment_reads(struct bb_store_batch *b, Bb__DirectoryEvent **evs, size_t n, char *err,
                         size_t errlen)
{
    struct resp *r = &b->cmd;
    unsigned nw = 0;
    for (size_t i = 0; i < n; i++) {
        const Bb__DirectoryEvent *ev = evs[i];
        if (ev->change_case == BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT) {
            ustate_get(b, ev->user_upsert->id, true)->known = true;
        } else if (ev->change_case == BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT) {
            gstate_get(b, ev->group_upsert->id, true)->known = true;
        }
        uint64_t uid = ev_user(ev), gid = ev_group(ev);
        struct ustate *u = uid ? ustate_get(b, uid, true) : NULL;
        struct gstate *g = gid ? gstate_get(b, gid, true) : NULL;
        if (u && !u->known && !u->watched) {
            u->watched = true;
            nw++;
        }
        if (g && !g->known && !g->watched) {
            g->watched = true;
            nw++;
        }
    }
    resp_reset(r);
    if (nw == 0) {
        return BB_OK;
    }
    resp_cmd(r, 1 + nw);
    resp_str(r, "WATCH");
    for (uint32_t i = 0; i < b->nus; i++) {
        if (b->us[i].watched) {
            resp_fmt(r, "bb:user:%" PRIu64, b->us[i].id);
        }
    }
    for (uint32_t i = 0; i < b->ngs; i++) {
        if (b->gs[i].watched) {
            resp_fmt(r, "bb:group:%" PRIu64, b->gs[i].id);
        }
    }
    for (uint32_t i = 0; i < b->nus; i++) {
        if (b->us[i].watched) {
            resp_cmd(r, 3);
            resp_str(r, "HGET");
            resp_fmt(r, "bb:user:%" PRIu64, b->us[i].id);
            resp_str(r, "u");
        }
    }
    for (uint32_t i = 0; i < b->ngs; i++) {
        if (b->gs[i].watched) {
            resp_cmd(r, 3);
            resp_str(r, "HEXISTS");
            resp_fmt(r, "bb:group:%" PRIu64, b->gs[i].id);
            resp_str(r, "g");
        }
    }
    int rc = resp_send(b->c, r, err, errlen);
    if (rc != BB_OK) {
        return rc;
    }
    rc = drain_replies(b->c, 1, "WATCH", err, errlen);
    for (uint32_t i = 0; rc == BB_OK && i < b->nus; i++) {
        struct ustate *u = &b->us[i];
        redisReply *rep;
        if (!u->watched) {
            continue;
        }
        if ((rc = get_reply(b->c, &rep, err, errlen)) != BB_OK) {
            break;
        }
        if (rep->type == REDIS_REPLY_STRING) {
            u->exists = true;
            u->rec = malloc(rep->len ? rep->len : 1);
            u->len = rep->len;
            if (!u->rec) {
                rc = fail(err, errlen, BB_ENOMEM, "out of memory reading user records");
            } else {
                memcpy(u->rec, rep->str, rep->len);
            }
        } else if (rep->type == REDIS_REPLY_ERROR) {
            rc = fail(err, errlen, BB_EIO, "redis: HGET bb:user:%" PRIu64 ": %s", u->id, rep->str);
        }
        freeReplyObject(rep);
    }
    for (uint32_t i = 0; rc == BB_OK && i < b->ngs; i++) {
        struct gstate *g = &b->gs[i];
        redisReply *rep;
        if (!g->watched) {
            continue;
        }
        if ((rc = get_reply(b->c, &rep, err, errlen)) != BB_OK) {
            break;
        }
        if (rep->type == REDIS_REPLY_INTEGER) {
            g->exists = rep->integer == 1;
        } else {
            rc = fail(err, errlen, BB_EIO, "redis: HEXISTS bb:group:%" PRIu64 ": %s", g->id,
                      rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        }
        freeReplyObject(rep);
    }
    return rc;
}

static int set_rec(struct ustate *u, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n ? n : 1);
    if (!p) {
        return BB_ENOMEM;
    }
    protobuf_c_message_pack(m, p);
    free(u->rec);
    u->rec = p;
    u->len = n;
    u->exists = true;
    return BB_OK;
}

/* Adds or removes one id in a repeated uint64 field; writes the new array
 * to *out (malloc'ed, caller frees). */
static int ids_edit(const uint64_t *ids, size_t n, uint64_t id, bool add, uint64_t **out,
                    size_t *nout)
{
    uint64_t *v = malloc((n + 1) * sizeof(uint64_t));
    size_t k = 0;
    if (!v) {
        return BB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != id) {
            v[k++] = ids[i];
        }
    }
    if (add) {
        v[k++] = id;
    }
    *out = v;
    *nout = k;
    return BB_OK;
}

/* Preferences, mute, unmute: the user's record with the change applied. */
static int user_rmw(struct ustate *u, const Bb__DirectoryEvent *ev, const char **why)
{
    Bb__User *user = bb__user__unpack(NULL, u->len, u->rec);
    int rc = BB_OK;
    if (!user) {
        *why = "bad_user_record";
        return BB_OK;
    }
    if (ev->change_case == BB__DIRECTORY_EVENT__CHANGE_PREFERENCES) {
        Bb__Preferences *old = user->prefs;
        user->prefs = ev->preferences->prefs;
        rc = set_rec(u, &user->base);
        user->prefs = old; /* the unpacked message owns only its own */
    } else {
        bool on = ev->change_case == BB__DIRECTORY_EVENT__CHANGE_MUTE;
        const Bb__Mute *m = on ? ev->mute : ev->unmute;
        uint64_t **field = m->author_id ? &user->muted_authors : &user->muted_groups;
        size_t *nfield = m->author_id ? &user->n_muted_authors : &user->n_muted_groups;
        uint64_t *old = *field, *nv;
        size_t oldn = *nfield, nn;
        rc = ids_edit(old, oldn, m->author_id ? m->author_id : m->group_id, on, &nv, &nn);
        if (rc == BB_OK) {
            *field = nv;
            *nfield = nn;
            rc = set_rec(u, &user->base);
            *field = old;
            *nfield = oldn;
            free(nv);
        }
    }
    bb__user__free_unpacked(user, NULL);
    return rc;
}

static void cmd_xadd(struct resp *r, const uint8_t *p, size_t len)
{
    resp_cmd(r, 5);
    resp_str(r, "XADD");
    resp_str(r, BB_KEY_DIRECTORY);
    resp_str(r, "*");
    resp_str(r, "p");
    resp_arg(r, p, len);
}

static void cmd_hset_packed(struct resp *r, const char *kind, uint64_t id, const char *field,
                            const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t stackbuf[1024], *p = n <= sizeof(stackbuf) ? stackbuf : malloc(n);
    if (!p) {
        r->oom = true;
        return;
    }
    protobuf_c_message_pack(m, p);
    resp_cmd(r, 4);
    resp_str(r, "HSET");
    resp_fmt(r, "bb:%s:%" PRIu64, kind, id);
    resp_str(r, field);
    resp_arg(r, p, n);
    if (p != stackbuf) {
        free(p);
    }
}

static void cmd_set2(struct resp *r, const char *verb, const char *key, const char *member)
{
    resp_cmd(r, 3);
    resp_str(r, verb);
    resp_str(r, key);
    resp_str(r, member);
}

static void cmd_unfollow_cleanup(struct resp *r, const char *report_id)
{
    resp_cmd(r, 6);
    resp_str(r, "EVAL");
    resp_str(r, unfollow_lua);
    resp_str(r, "2");
    resp_fmt(r, "bb:follow:%s", report_id);
    resp_str(r, "bb:follows");
    resp_str(r, report_id);
}

/* Pass 2: the writes of each event, in order, or its reason to refuse. */
static int segment_writes(struct bb_store_batch *b, Bb__DirectoryEvent **evs, const struct qent *q,
                          size_t n, unsigned *accepted)
{
    struct resp *r = &b->cmd;
    char k[KEY_MAX], s[24], s2[24];
    *accepted = 0;
    for (size_t i = 0; i < n; i++) {
        const Bb__DirectoryEvent *ev = evs[i];
        const char **why = &b->why[i];
        struct ustate *u = NULL;
        struct gstate *g = NULL;
        uint64_t uid = ev_user(ev), gid = ev_group(ev);
        *why = NULL;
        if (uid && !(u = ustate_get(b, uid, true))->exists) {
            *why = "unknown_user";
            continue;
        }
        if (gid && !(g = gstate_get(b, gid, true))->exists) {
            *why = "unknown_group";
            continue;
        }
        switch (ev->change_case) {
        case BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT: {
            const Bb__User *user = ev->user_upsert;
            if (set_rec(ustate_get(b, user->id, true), &user->base) != BB_OK) {
                return BB_ENOMEM;
            }
            cmd_hset_packed(r, "user", user->id, "u", &user->base);
            snprintf(s, sizeof(s), "%" PRIu64, user->id);
            cmd_set2(r, "SADD", "bb:users", s);
            break;
        }
        case BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT: {
            const Bb__Group *grp = ev->group_upsert;
            gstate_get(b, grp->id, true)->exists = true;
            cmd_hset_packed(r, "group", grp->id, "g", &grp->base);
            snprintf(s, sizeof(s), "%" PRIu64, grp->id);
            cmd_set2(r, "SADD", "bb:groups", s);
            break;
        }
        case BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD:
        case BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE: {
            bool add = ev->change_case == BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
            const Bb__Membership *m = add ? ev->member_add : ev->member_remove;
            const char *verb = add ? "SADD" : "SREM";
            snprintf(s, sizeof(s), "%" PRIu64, m->user_id);
            snprintf(s2, sizeof(s2), "%" PRIu64, m->group_id);
            snprintf(k, sizeof(k), "bb:group:%" PRIu64 ":members", m->group_id);
            cmd_set2(r, verb, k, s);
            snprintf(k, sizeof(k), "bb:user:%" PRIu64 ":groups", m->user_id);
            cmd_set2(r, verb, k, s2);
            break;
        }
        case BB__DIRECTORY_EVENT__CHANGE_PREFERENCES:
        case BB__DIRECTORY_EVENT__CHANGE_MUTE:
        case BB__DIRECTORY_EVENT__CHANGE_UNMUTE: {
            if (user_rmw(u, ev, why) != BB_OK) {
                return BB_ENOMEM;
            }
            if (*why) {
                continue;
            }
            resp_cmd(r, 4);
            resp_str(r, "HSET");
            resp_fmt(r, "bb:user:%" PRIu64, uid);
            resp_str(r, "u");
            resp_arg(r, u->rec, u->len);
            break;
        }
        case BB__DIRECTORY_EVENT__CHANGE_FOLLOW:
        case BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW: {
            bool add = ev->change_case == BB__DIRECTORY_EVENT__CHANGE_FOLLOW;
            const Bb__Follow *f = add ? ev->follow : ev->unfollow;
            const char *verb = add ? "SADD" : "SREM";
            snprintf(s, sizeof(s), "%" PRIu64, f->user_id);
            snprintf(k, sizeof(k), "bb:follow:%s", f->report_id);
            cmd_set2(r, verb, k, s);
            snprintf(k, sizeof(k), "bb:user:%" PRIu64 ":follows", f->user_id);
            cmd_set2(r, verb, k, f->report_id);
            if (add) {
                cmd_set2(r, "SADD", "bb:follows", f->report_id);
            } else {
                cmd_unfollow_cleanup(r, f->report_id);
            }
            break;
        }
        case BB__DIRECTORY_EVENT__CHANGE_CONTACT_GONE:
            break; /* the worker removed the address; the event tells the app */
        default:
            *why = "unknown_change"; /* erase and delete never reach here */
            continue;
        }
        cmd_xadd(r, b->bytes + q[i].off, q[i].len);
        (*accepted)++;
    }
    return r->oom ? BB_ENOMEM : BB_OK;
}

/* Reads the replies of MULTI, n queued commands and EXEC. Returns BB_OK,
 * BB_AGAIN when EXEC was aborted by a watched key, or an error. */
static int read_exec(redisContext *c, unsigned queued, char *err, size_t errlen)
{
    redisReply *rep;
    int rc = drain_replies(c, 1 + queued, "MULTI", err, errlen);
    int r2 = get_reply(c, &rep, err, errlen);
    if (r2 != BB_OK) {
        return r2;
    }
    if (rc != BB_OK) {
        freeReplyObject(rep); /* EXECABORT after a refused command */
        return rc;
    }
    if (rep->type == REDIS_REPLY_NIL) {
        freeReplyObject(rep);
        return BB_AGAIN;
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
        rc = fail(err, errlen, BB_EIO, "redis: EXEC: %s",
                  rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    }
    for (size_t i = 0; rc == BB_OK && i < rep->elements; i++) {
        if (rep->element[i]->type == REDIS_REPLY_ERROR) {
            rc = fail(err, errlen, BB_EIO, "redis: in MULTI: %s", rep->element[i]->str);
        }
    }
    freeReplyObject(rep);
    return rc;
}

static int unwatch(redisContext *c, struct resp *r, char *err, size_t errlen)
{
    resp_reset(r);
    resp_cmd(r, 1);
    resp_str(r, "UNWATCH");
    int rc = resp_send(c, r, err, errlen);
    return rc == BB_OK ? drain_replies(c, 1, "UNWATCH", err, errlen) : rc;
}

/* An erase or a group delete: the members of one set decide the writes. */
static int segment_barrier(struct bb_store_batch *b, const Bb__DirectoryEvent *ev,
                           const struct qent *q, char *err, size_t errlen)
{
    struct resp *r = &b->cmd;
    bool erase = ev->change_case == BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
    uint64_t id = erase ? ev->user_erase : ev->group_delete;
    redisReply *sets[2] = {NULL, NULL};
    unsigned nsets = erase ? 2 : 1;
    char k[KEY_MAX], s[24];
    int rc;

    snprintf(s, sizeof(s), "%" PRIu64, id);
    resp_reset(r);
    resp_cmd(r, 1 + nsets);
    resp_str(r, "WATCH");
    if (erase) {
        resp_fmt(r, "bb:user:%" PRIu64 ":groups", id);
        resp_fmt(r, "bb:user:%" PRIu64 ":follows", id);
        resp_cmd(r, 2);
        resp_str(r, "SMEMBERS");
        resp_fmt(r, "bb:user:%" PRIu64 ":groups", id);
        resp_cmd(r, 2);
        resp_str(r, "SMEMBERS");
        resp_fmt(r, "bb:user:%" PRIu64 ":follows", id);
    } else {
        resp_fmt(r, "bb:group:%" PRIu64 ":members", id);
        resp_cmd(r, 2);
        resp_str(r, "SMEMBERS");
        resp_fmt(r, "bb:group:%" PRIu64 ":members", id);
    }
    if ((rc = resp_send(b->c, r, err, errlen)) != BB_OK ||
        (rc = drain_replies(b->c, 1, "WATCH", err, errlen)) != BB_OK) {
        return rc;
    }
    for (unsigned i = 0; i < nsets; i++) {
        if ((rc = get_reply(b->c, &sets[i], err, errlen)) != BB_OK) {
            goto free_sets;
        }
    }
    for (unsigned i = 0; i < nsets; i++) {
        if (sets[i]->type != REDIS_REPLY_ARRAY) {
            rc = fail(err, errlen, BB_EIO, "redis: SMEMBERS: %s",
                      sets[i]->type == REDIS_REPLY_ERROR ? sets[i]->str : "unexpected reply");
            unwatch(b->c, r, NULL, 0);
            goto free_sets;
        }
    }

    resp_reset(r);
    resp_cmd(r, 1);
    resp_str(r, "MULTI");
    for (size_t i = 0; i < sets[0]->elements; i++) {
        const redisReply *m = sets[0]->element[i];
        if (m->type != REDIS_REPLY_STRING || m->len == 0 || m->len > 20) {
            continue;
        }
        if (erase) {
            snprintf(k, sizeof(k), "bb:group:%.*s:members", (int)m->len, m->str);
            cmd_set2(r, "SREM", k, s);
        } else {
            snprintf(k, sizeof(k), "bb:user:%.*s:groups", (int)m->len, m->str);
            cmd_set2(r, "SREM", k, s);
        }
    }
    for (size_t i = 0; erase && i < sets[1]->elements; i++) {
        const redisReply *m = sets[1]->element[i];
        if (m->type != REDIS_REPLY_STRING || m->len == 0 || m->len > MAX_REPORT_ID) {
            continue;
        }
        char rid[MAX_REPORT_ID + 1];
        memcpy(rid, m->str, m->len);
        rid[m->len] = '\0';
        snprintf(k, sizeof(k), "bb:follow:%s", rid);
        cmd_set2(r, "SREM", k, s);
        cmd_unfollow_cleanup(r, rid);
    }
    if (erase) {
        /* The whole hash goes, contact fields included: that is the erasure. */
        resp_cmd(r, 4);
        resp_str(r, "DEL");
        resp_fmt(r, "bb:user:%" PRIu64, id);
        resp_fmt(r, "bb:user:%" PRIu64 ":groups", id);
        resp_fmt(r, "bb:user:%" PRIu64 ":follows", id);
        cmd_set2(r, "SREM", "bb:users", s);
    } else {
        resp_cmd(r, 3);
        resp_str(r, "DEL");
        resp_fmt(r, "bb:group:%" PRIu64, id);
        resp_fmt(r, "bb:group:%" PRIu64 ":members", id);
        cmd_set2(r, "SREM", "bb:groups", s);
    }
    cmd_xadd(r, b->bytes + q->off, q->len);
    resp_cmd(r, 1);
    resp_str(r, "EXEC");
    unsigned queued = r->ncmds - 2;
    if ((rc = resp_send(b->c, r, err, errlen)) == BB_OK) {
        rc = read_exec(b->c, queued, err, errlen);
    }
    b->st.chunks++;

free_sets:
    for (unsigned i = 0; i < nsets; i++) {
        if (sets[i]) {
            freeReplyObject(sets[i]);
        }
    }
    return rc;
}

static int segment_normal(struct bb_store_batch *b, Bb__DirectoryEvent **evs, const struct qent *q,
                          size_t n, char *err, size_t errlen)
{
    struct resp *r = &b->cmd;
    unsigned accepted;
    int rc;

    segment_clear(b);
    if (segment_alloc(b, n) != BB_OK) {
        return fail(err, errlen, BB_ENOMEM, "out of memory");
    }
    if ((rc = segment_reads(b, evs, n, err, errlen)) != BB_OK) {
        return rc;
    }
    bool watching = r->ncmds > 0;
    resp_reset(r);
    resp_cmd(r, 1);
    resp_str(r, "MULTI");
    if ((rc = segment_writes(b, evs, q, n, &accepted)) != BB_OK) {
        return fail(err, errlen, rc, "out of memory formatting commands");
    }
    if (accepted == 0) {
        return watching ? unwatch(b->c, r, err, errlen) : BB_OK;
    }
    resp_cmd(r, 1);
    resp_str(r, "EXEC");
    unsigned queued = r->ncmds - 2;
    if ((rc = resp_send(b->c, r, err, errlen)) != BB_OK) {
        return rc;
    }
    b->st.chunks++;
    return read_exec(b->c, queued, err, errlen);
}

static bool is_barrier(const Bb__DirectoryEvent *ev)
{
    return ev->change_case == BB__DIRECTORY_EVENT__CHANGE_USER_ERASE ||
           ev->change_case == BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE;
}

static void report_rejects(struct bb_store_batch *b, const struct qent *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b->why[i]) {
            b->st.rejected++;
            if (b->on_reject) {
                b->on_reject(b->arg, q[i].tag, b->why[i]);
            }
        } else {
            b->st.applied++;
        }
    }
}

int bb_store_batch_flush(struct bb_store_batch *b, char *err, size_t errlen)
{
    Bb__DirectoryEvent **evs = NULL;
    int rc = BB_OK;
    size_t i = 0;

    if (b->nq == 0) {
        return BB_OK;
    }
    evs = calloc(b->nq, sizeof(*evs));
    if (!evs) {
        rc = fail(err, errlen, BB_ENOMEM, "out of memory");
        goto drop_queue;
    }
    for (size_t j = 0; j < b->nq; j++) {
        evs[j] = bb__directory_event__unpack(NULL, b->q[j].len, b->bytes + b->q[j].off);
        if (!evs[j]) {
            rc = fail(err, errlen, BB_ENOMEM, "cannot decode a queued event");
            goto free_events;
        }
    }
    while (i < b->nq) {
        size_t n = 1;
        if (!is_barrier(evs[i])) {
            while (i + n < b->nq && n < b->chunk && !is_barrier(evs[i + n])) {
                n++;
            }
        }
        unsigned attempt = 0;
        do {
            if (attempt++ == WATCH_RETRIES) {
                rc = fail(err, errlen, BB_RETRY,
                          "gave up after %d attempts: other clients kept changing the same "
                          "users or groups",
                          WATCH_RETRIES);
                goto free_events;
            }
            if (attempt > 1) {
                b->st.retries++;
                struct timespec ts = {0, (long)(attempt * 1000000L)};
                nanosleep(&ts, NULL);
            }
            if (is_barrier(evs[i])) {
                rc = segment_barrier(b, evs[i], &b->q[i], err, errlen);
            } else {
                rc = segment_normal(b, evs + i, b->q + i, n, err, errlen);
            }
        } while (rc == BB_AGAIN);
        if (rc != BB_OK) {
            goto free_events;
        }
        if (is_barrier(evs[i])) {
            b->st.applied++;
        } else {
            report_rejects(b, b->q + i, n);
        }
        i += n;
    }

free_events:
    for (size_t j = 0; j < b->nq; j++) {
        if (evs[j]) {
            bb__directory_event__free_unpacked(evs[j], NULL);
        }
    }
    free(evs);
drop_queue:
    segment_clear(b);
    b->nq = 0;
    b->len = 0;
    return rc;
}

struct one_reject {
    char reason[64];
};

static void one_reject_cb(void *arg, uint64_t tag, const char *reason)
{
    struct one_reject *o = arg;
    snprintf(o->reason, sizeof(o->reason), "%s", reason);
}

int bb_store_apply(redisContext *c, const Bb__DirectoryEvent *ev, char *err, size_t errlen)
{
    struct one_reject rej = {{0}};
    struct bb_store_batch *b = bb_store_batch_new(c, 1, one_reject_cb, &rej);
    int rc;
    if (!b) {
        return fail(err, errlen, BB_ENOMEM, "out of memory");
    }
    rc = bb_store_batch_add(b, ev, 0, err, errlen); /* chunk 1: flushes at once */
    if (rc == BB_OK && rej.reason[0]) {
        rc = fail(err, errlen, BB_EINVAL, "%s", rej.reason);
    }
    bb_store_batch_free(b);
    return rc;
}

/* ---- reader ------------------------------------------------------------------------------ */

struct loader {
    redisContext *c;
    struct bb_dir *dir;
    struct bb_snapshot_stats *st;
    struct resp cmd;
    char *err;
    size_t errlen;
    uint64_t *gids; /* groups loaded, for the memberships */
    size_t ngids, gcap;
};

typedef int scan_fn(struct loader *L, redisReply *const *members, size_t n);

static int scan_set(struct loader *L, const char *key, scan_fn *fn)
{
    char cursor[32] = "0";
    do {
        redisReply *rep = redisCommand(L->c, "SSCAN %s %s COUNT %d", key, cursor, READ_CHUNK);
        int rc = BB_OK;
        L->st->commands++;
        if (!rep) {
            return fail(L->err, L->errlen, BB_EIO, "redis: SSCAN %s: %s", key, L->c->errstr);
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != REDIS_REPLY_STRING ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            rc = fail(L->err, L->errlen, BB_EIO, "redis: SSCAN %s: %s", key,
                      rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
        } else {
            snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
            rc = fn(L, rep->element[1]->element, rep->element[1]->elements);
        }
        freeReplyObject(rep);
        if (rc != BB_OK) {
            return rc;
        }
    } while (strcmp(cursor, "0") != 0);
    return BB_OK;
}

/* Ids from a set reply: members that are not decimal ids are skipped. */
static size_t member_ids(redisReply *const *m, size_t n, uint64_t *ids, const char *what,
                         uint64_t *bad)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t id;
        if (m[i]->type == REDIS_REPLY_STRING && parse_u64(m[i]->str, m[i]->len, &id) && id) {
            ids[k++] = id;
        } else {
            char q[48];
            bb_warn("snapshot: skipped a member that is not an id", "set=%s member=%s", what,
                    bb_log_quote(q, sizeof(q), m[i]->type == REDIS_REPLY_STRING ? m[i]->str : ""));
            (*bad)++;
        }
    }
    return k;
}

/* Sends one command per id ("HGET bb:<kind>:<id> <field>" or "SMEMBERS ...")
 * and reads the replies into reps. */
static int pipeline_ids(struct loader *L, const char *verb, const char *fmt, const char *field,
                        const uint64_t *ids, size_t n, redisReply **reps)
{
    struct resp *r = &L->cmd;
    resp_reset(r);
    for (size_t i = 0; i < n; i++) {
        resp_cmd(r, field ? 3 : 2);
        resp_str(r, verb);
        resp_fmt(r, fmt, ids[i]);
        if (field) {
            resp_str(r, field);
        }
    }
    L->st->commands += n;
    int rc = resp_send(L->c, r, L->err, L->errlen);
    for (size_t i = 0; i < n; i++) {
        reps[i] = NULL;
    }
    /* Every reply is read even after an error one, so the connection stays
     * in step; the first error is reported. */
    for (size_t i = 0; rc == BB_OK && i < n; i++) {
        if ((rc = get_reply(L->c, &reps[i], L->err, L->errlen)) != BB_OK) {
            break;
        }
    }
    for (size_t i = 0; rc == BB_OK && i < n; i++) {
        if (reps[i]->type == REDIS_REPLY_ERROR) {
            char key[KEY_MAX];
            snprintf(key, sizeof(key), fmt, ids[i]);
            rc = fail(L->err, L->errlen, BB_EIO, "redis: %s %s: %s", verb, key, reps[i]->str);
        }
    }
    if (rc != BB_OK) {
        for (size_t i = 0; i < n; i++) {
            if (reps[i]) {
                freeReplyObject(reps[i]);
            }
        }
    }
    return rc;
}

static int load_groups(struct loader *L, redisReply *const *m, size_t n)
{
    uint64_t ids[READ_CHUNK * 2];
    redisReply *reps[READ_CHUNK * 2];
    char why[64];
    for (size_t off = 0; off < n; off += READ_CHUNK * 2) {
        size_t k = member_ids(m + off, n - off < READ_CHUNK * 2 ? n - off : READ_CHUNK * 2, ids,
                              "bb:groups", &L->st->bad_groups);
        int rc = pipeline_ids(L, "HGET", "bb:group:%" PRIu64, "g", ids, k, reps);
        if (rc != BB_OK) {
            return rc;
        }
        for (size_t i = 0; i < k; i++) {
            Bb__Group *g = NULL;
            why[0] = '\0';
            if (reps[i]->type != REDIS_REPLY_STRING) {
                snprintf(why, sizeof(why), "no_record");
            } else if (!(g = bb__group__unpack(NULL, reps[i]->len, (uint8_t *)reps[i]->str))) {
                snprintf(why, sizeof(why), "bad_protobuf");
            } else if (g->id != ids[i]) {
                snprintf(why, sizeof(why), "id_mismatch");
            } else if ((rc = bb_dir_upsert_group(L->dir, g, why, sizeof(why))) == BB_ENOMEM) {
                bb__group__free_unpacked(g, NULL);
                freeReplyObject(reps[i]);
                while (++i < k) {
                    freeReplyObject(reps[i]);
                }
                return fail(L->err, L->errlen, BB_ENOMEM, "out of memory loading groups");
            } else if (rc == BB_OK) {
                why[0] = '\0';
                if (L->ngids == L->gcap) {
                    size_t nc = L->gcap ? L->gcap * 2 : 1024;
                    uint64_t *p = realloc(L->gids, nc * sizeof(uint64_t));
                    if (!p) {
                        bb__group__free_unpacked(g, NULL);
                        freeReplyObject(reps[i]);
                        while (++i < k) {
                            freeReplyObject(reps[i]);
                        }
                        return fail(L->err, L->errlen, BB_ENOMEM, "out of memory");
                    }
                    L->gids = p;
                    L->gcap = nc;
                }
                L->gids[L->ngids++] = ids[i];
            }
            if (why[0]) {
                bb_warn("snapshot: skipped a group", "id=%" PRIu64 " reason=%s", ids[i], why);
                L->st->bad_groups++;
            }
            if (g) {
                bb__group__free_unpacked(g, NULL);
            }
            freeReplyObject(reps[i]);
        }
    }
    return BB_OK;
}

static int load_users(struct loader *L, redisReply *const *m, size_t n)
{
    uint64_t ids[READ_CHUNK * 2];
    redisReply *reps[READ_CHUNK * 2];
    char why[64];
    for (size_t off = 0; off < n; off += READ_CHUNK * 2) {
        size_t k = member_ids(m + off, n - off < READ_CHUNK * 2 ? n - off : READ_CHUNK * 2, ids,
                              "bb:users", &L->st->bad_users);
        int rc = pipeline_ids(L, "HGET", "bb:user:%" PRIu64, "u", ids, k, reps);
        if (rc != BB_OK) {
            return rc;
        }
        for (size_t i = 0; i < k; i++) {
            Bb__User *u = NULL;
            why[0] = '\0';
            if (reps[i]->type != REDIS_REPLY_STRING) {
                snprintf(why, sizeof(why), "no_record");
            } else if (!(u = bb__user__unpack(NULL, reps[i]->len, (uint8_t *)reps[i]->str))) {
                snprintf(why, sizeof(why), "bad_protobuf");
            } else if (u->id != ids[i]) {
                snprintf(why, sizeof(why), "id_mismatch");
            } else if ((rc = bb_dir_upsert_user(L->dir, u, why, sizeof(why))) == BB_ENOMEM) {
                bb__user__free_unpacked(u, NULL);
                freeReplyObject(reps[i]);
                while (++i < k) {
                    freeReplyObject(reps[i]);
                }
                return fail(L->err, L->errlen, BB_ENOMEM, "out of memory loading users");
            } else if (rc == BB_OK) {
                why[0] = '\0';
            }
            if (why[0]) {
                bb_warn("snapshot: skipped a user", "id=%" PRIu64 " reason=%s", ids[i], why);
                L->st->bad_users++;
            }
            if (u) {
                bb__user__free_unpacked(u, NULL);
            }
            freeReplyObject(reps[i]);
        }
    }
    return BB_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int load_memberships(struct loader *L)
{
    redisReply *reps[SET_CHUNK];
    char why[64];
    size_t n = 0;
    if (L->ngids == 0) {
        return BB_OK;
    }
    /* SSCAN may return an id twice: one SMEMBERS per group. */
    qsort(L->gids, L->ngids, sizeof(uint64_t), cmp_u64);
    for (size_t i = 0; i < L->ngids; i++) {
        if (n == 0 || L->gids[n - 1] != L->gids[i]) {
            L->gids[n++] = L->gids[i];
        }
    }
    L->ngids = n;
    for (size_t off = 0; off < n; off += SET_CHUNK) {
        size_t k = n - off < SET_CHUNK ? n - off : SET_CHUNK;
        int rc = pipeline_ids(L, "SMEMBERS", "bb:group:%" PRIu64 ":members", NULL, L->gids + off, k,
                              reps);
        if (rc != BB_OK) {
            return rc;
        }
        for (size_t i = 0; i < k && rc == BB_OK; i++) {
            uint64_t gid = L->gids[off + i];
            for (size_t j = 0; reps[i]->type == REDIS_REPLY_ARRAY && j < reps[i]->elements; j++) {
                const redisReply *m = reps[i]->element[j];
                uint64_t uid;
                if (m->type != REDIS_REPLY_STRING || !parse_u64(m->str, m->len, &uid)) {
                    snprintf(why, sizeof(why), "bad_member");
                    uid = 0;
                } else if ((rc = bb_dir_add_member(L->dir, uid, gid, why, sizeof(why))) ==
                           BB_ENOMEM) {
                    rc = fail(L->err, L->errlen, BB_ENOMEM, "out of memory loading memberships");
                    break;
                } else if (rc == BB_OK) {
                    continue;
                }
                rc = BB_OK;
                bb_warn("snapshot: skipped a membership",
                        "group=%" PRIu64 " user=%" PRIu64 " reason=%s", gid, uid, why);
                L->st->bad_memberships++;
            }
        }
        for (size_t i = 0; i < k; i++) {
            freeReplyObject(reps[i]);
        }
        if (rc != BB_OK) {
            return rc;
        }
    }
    return BB_OK;
}

static int load_follows(struct loader *L, redisReply *const *m, size_t n)
{
    char why[64];
    struct resp *r = &L->cmd;
    for (size_t off = 0; off < n; off += SET_CHUNK) {
        size_t k = n - off < SET_CHUNK ? n - off : SET_CHUNK;
        redisReply *reps[SET_CHUNK];
        const redisReply *rid[SET_CHUNK];
        size_t nk = 0;
        resp_reset(r);
        for (size_t i = 0; i < k; i++) {
            const redisReply *x = m[off + i];
            if (x->type != REDIS_REPLY_STRING || x->len == 0 || x->len > MAX_REPORT_ID ||
                memchr(x->str, '\0', x->len)) {
                bb_warn("snapshot: skipped a bad report id in bb:follows", NULL);
                L->st->bad_follows++;
                continue;
            }
            resp_cmd(r, 2);
            resp_str(r, "SMEMBERS");
            resp_fmt(r, "bb:follow:%s", x->str);
            rid[nk++] = x;
        }
        L->st->commands += nk;
        int rc = nk ? resp_send(L->c, r, L->err, L->errlen) : BB_OK;
        size_t got = 0;
        for (; rc == BB_OK && got < nk; got++) {
            rc = get_reply(L->c, &reps[got], L->err, L->errlen);
            if (rc != BB_OK) {
                break;
            }
        }
        for (size_t i = 0; rc == BB_OK && i < nk; i++) {
            if (reps[i]->type != REDIS_REPLY_ARRAY) {
                rc =
                    fail(L->err, L->errlen, BB_EIO, "redis: SMEMBERS bb:follow:%s: %s", rid[i]->str,
                         reps[i]->type == REDIS_REPLY_ERROR ? reps[i]->str : "unexpected reply");
            }
        }
        for (size_t i = 0; rc == BB_OK && i < nk; i++) {
            for (size_t j = 0; j < reps[i]->elements; j++) {
                const redisReply *u = reps[i]->element[j];
                uint64_t uid = 0;
                if (u->type != REDIS_REPLY_STRING || !parse_u64(u->str, u->len, &uid)) {
                    snprintf(why, sizeof(why), "bad_member");
                } else if ((rc = bb_dir_add_follow(L->dir, uid, rid[i]->str, why, sizeof(why))) ==
                           BB_ENOMEM) {
                    rc = fail(L->err, L->errlen, BB_ENOMEM, "out of memory loading follows");
                    break;
                } else if (rc == BB_OK) {
                    continue;
                }
                rc = BB_OK;
                char q[80];
                bb_warn("snapshot: skipped a follow", "report=%s user=%" PRIu64 " reason=%s",
                        bb_log_quote(q, sizeof(q), rid[i]->str), uid, why);
                L->st->bad_follows++;
            }
        }
        for (size_t i = 0; i < got; i++) {
            freeReplyObject(reps[i]);
        }
        if (rc != BB_OK) {
            return rc;
        }
    }
    return BB_OK;
}

static int stream_last_id(redisContext *c, char *last_id, size_t len, char *err, size_t errlen)
{
    redisReply *rep = redisCommand(c, "XREVRANGE %s + - COUNT 1", BB_KEY_DIRECTORY);
    int rc = BB_OK;
    if (!rep) {
        return fail(err, errlen, BB_EIO, "redis: XREVRANGE %s: %s", BB_KEY_DIRECTORY, c->errstr);
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
        rc = fail(err, errlen, BB_EIO, "redis: XREVRANGE %s: %s", BB_KEY_DIRECTORY,
                  rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    } else if (rep->elements == 0) {
        snprintf(last_id, len, "0-0");
    } else if (rep->element[0]->type != REDIS_REPLY_ARRAY || rep->element[0]->elements < 1 ||
               rep->element[0]->element[0]->type != REDIS_REPLY_STRING ||
               rep->element[0]->element[0]->len >= len) {
        rc = fail(err, errlen, BB_EIO, "redis: XREVRANGE %s: unexpected reply", BB_KEY_DIRECTORY);
    } else {
        snprintf(last_id, len, "%s", rep->element[0]->element[0]->str);
    }
    freeReplyObject(rep);
    return rc;
}

int bb_snapshot_load(redisContext *c, struct bb_dir *dir, char *last_id, size_t last_id_len,
                     struct bb_snapshot_stats *st, char *err, size_t errlen)
{
    struct bb_snapshot_stats local;
    struct bb_dir_stats before, after;
    struct loader L = {.c = c, .dir = dir, .st = st ? st : &local, .err = err, .errlen = errlen};
    double t0 = now_s();
    int rc;

    memset(L.st, 0, sizeof(*L.st));
    bb_dir_stats(dir, &before);
    /* The id first: whatever the scans see is at or after it, and replaying
     * from it repeats only idempotent events. */
    if ((rc = stream_last_id(c, last_id, last_id_len, err, errlen)) != BB_OK) {
        goto free_loader;
    }
    L.st->commands++;
    if ((rc = scan_set(&L, "bb:groups", load_groups)) != BB_OK ||
        (rc = scan_set(&L, "bb:users", load_users)) != BB_OK ||
        (rc = load_memberships(&L)) != BB_OK ||
        (rc = scan_set(&L, "bb:follows", load_follows)) != BB_OK) {
        goto free_loader;
    }
    bb_dir_stats(dir, &after);
    L.st->users = after.users - before.users;
    L.st->groups = after.groups - before.groups;
    L.st->memberships = after.memberships - before.memberships;
    L.st->follows = after.follows - before.follows;
    L.st->seconds = now_s() - t0;

free_loader:
    free(L.gids);
    free(L.cmd.buf);
    return rc;
}

/* The smallest id after id ("ms-seq"), so XRANGE starts past it. */
static bool stream_id_next(const char *id, char *out, size_t len)
{
    const char *dash = strchr(id, '-');
    uint64_t ms, seq;
    if (!dash || !parse_u64(id, (size_t)(dash - id), &ms) ||
        !parse_u64(dash + 1, strlen(dash + 1), &seq)) {
        return false;
    }
    if (seq == UINT64_MAX) {
        ms++;
        seq = 0;
    } else {
        seq++;
    }
    snprintf(out, len, "%" PRIu64 "-%" PRIu64, ms, seq);
    return true;
}

int bb_snapshot_replay(redisContext *c, struct bb_dir *dir, char *last_id, size_t last_id_len,
                       uint64_t *applied, uint64_t *skipped, char *err, size_t errlen)
{
    uint64_t na = 0, ns = 0;
    int rc = BB_OK;
    for (;;) {
        char from[BB_STREAM_ID_MAX];
        if (!stream_id_next(last_id, from, sizeof(from))) {
            rc = fail(err, errlen, BB_EINVAL, "bad stream id '%s'", last_id);
            break;
        }
        redisReply *rep =
            redisCommand(c, "XRANGE %s %s + COUNT %d", BB_KEY_DIRECTORY, from, REPLAY_COUNT);
        if (!rep) {
            rc = fail(err, errlen, BB_EIO, "redis: XRANGE %s: %s", BB_KEY_DIRECTORY, c->errstr);
            break;
        }
        if (rep->type != REDIS_REPLY_ARRAY) {
            rc = fail(err, errlen, BB_EIO, "redis: XRANGE %s: %s", BB_KEY_DIRECTORY,
                      rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
            freeReplyObject(rep);
            break;
        }
        size_t n = rep->elements;
        for (size_t i = 0; i < n && rc == BB_OK; i++) {
            const redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
                e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= last_id_len ||
                e->element[1]->type != REDIS_REPLY_ARRAY) {
                rc = fail(err, errlen, BB_EIO, "redis: XRANGE %s: unexpected entry",
                          BB_KEY_DIRECTORY);
                break;
            }
            snprintf(last_id, last_id_len, "%s", e->element[0]->str);
            const redisReply *f = e->element[1], *p = NULL;
            for (size_t j = 0; j + 1 < f->elements; j += 2) {
                if (f->element[j]->type == REDIS_REPLY_STRING &&
                    strcmp(f->element[j]->str, "p") == 0 &&
                    f->element[j + 1]->type == REDIS_REPLY_STRING) {
                    p = f->element[j + 1];
                }
            }
            Bb__DirectoryEvent *ev =
                p ? bb__directory_event__unpack(NULL, p->len, (uint8_t *)p->str) : NULL;
            char why[64] = "bad_protobuf";
            int r = ev ? bb_dir_apply(dir, ev, why, sizeof(why)) : BB_EINVAL;
            if (ev) {
                bb__directory_event__free_unpacked(ev, NULL);
            }
            if (r == BB_ENOMEM) {
                rc = fail(err, errlen, BB_ENOMEM, "out of memory replaying %s", last_id);
            } else if (r != BB_OK) {
                bb_warn("replay: skipped a directory event", "id=%s reason=%s", last_id, why);
                ns++;
            } else {
                na++;
            }
        }
        freeReplyObject(rep);
        if (rc != BB_OK || n < REPLAY_COUNT) {
            break;
        }
    }
    if (applied) {
        *applied = na;
    }
    if (skipped) {
        *skipped = ns;
    }
    return rc;
}
