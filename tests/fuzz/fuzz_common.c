/* What the fuzz targets and the seed generator share (see fuzz_common.h).
 *
 * Threads: the fuzzer's one thread. */
#define ZDICT_STATIC_LINKING_ONLY
#include "host.h" /* the worker's own checks (workers/host/entry.c) */
#include "fuzz_common.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zdict.h>

#include "bb_err.h"
#include "directory.h"
#include "geohash.h"
#include "output.h"
#include "wire.h"

#define P_LAT 51.6978 /* 's-Hertogenbosch */
#define P_LON 5.3037

const struct bb_limits fuzz_limits = {4096, 8, 2048};

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz invariant: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ---- the directory ----------------------------------------------------------------------- */

/* Every object of the events lives here, built once. */
static struct {
    bool built;
    Bb__DirectoryEvent ev[16];
    size_t nev;
    Bb__User user[5];
    Bb__WatchArea watch[5];
    Bb__Preferences prefs[2];
    Bb__ChannelSet cs[3];
    Bb__Channel ch_loud[2], ch_quiet[2], ch_now[3];
    Bb__QuietHours quiet;
    Bb__Category cats[2];
    Bb__Group group[2];
    Bb__Policy policy[2];
    Bb__Category gcats[2];
    char cell[2][16];
    char *cells[2][1];
    Bb__Membership member[3];
    Bb__Mute mute;
    Bb__Follow follow;
} d;

static Bb__DirectoryEvent *next_event(void)
{
    Bb__DirectoryEvent *ev = &d.ev[d.nev++];
    bb__directory_event__init(ev);
    return ev;
}

static void build_events(void)
{
    static const struct {
        uint64_t id;
        double lat, lon;
        unsigned radius;
        const char *locale, *tz, *name;
        int prefs; /* -1: none */
    } users[5] = {
        {1001, P_LAT, P_LON, 1000, "nl", "Europe/Amsterdam", "buurman", -1},
        {1002, P_LAT + 0.003, P_LON - 0.002, 500, "en", "Europe/London", "neighbour", 0},
        {1003, 0, 0, 0, "", "", "", 1},
        {1004, P_LAT - 0.001, P_LON + 0.001, 2000, "de", "Europe/Berlin", "Nachbar", -1},
        {1005, 51.5555, 5.0913, 300, "nl", "Europe/Amsterdam", "", -1}, /* Tilburg */
    };
    if (d.built) {
        return;
    }
    d.built = true;

    /* Preferences 0: loud now, quiet hours 22:00-07:00, a cap. 1: burglary and fire only. */
    for (int i = 0; i < 2; i++) {
        bb__preferences__init(&d.prefs[i]);
    }
    for (int i = 0; i < 3; i++) {
        bb__channel_set__init(&d.cs[i]);
    }
    d.ch_now[0] = BB__CHANNEL__CHANNEL_PUSH;
    d.ch_now[1] = BB__CHANNEL__CHANNEL_EMAIL;
    d.ch_now[2] = BB__CHANNEL__CHANNEL_INBOX;
    d.cs[0].channels = d.ch_now;
    d.cs[0].n_channels = 3;
    d.ch_loud[0] = BB__CHANNEL__CHANNEL_PUSH;
    d.ch_loud[1] = BB__CHANNEL__CHANNEL_DIGEST;
    d.cs[1].channels = d.ch_loud;
    d.cs[1].n_channels = 2;
    d.ch_quiet[0] = BB__CHANNEL__CHANNEL_INBOX;
    d.ch_quiet[1] = BB__CHANNEL__CHANNEL_DIGEST;
    d.cs[2].channels = d.ch_quiet;
    d.cs[2].n_channels = 2;
    d.prefs[0].in_progress = &d.cs[0];
    d.prefs[0].recent = &d.cs[1];
    d.prefs[0].informational = &d.cs[2];
    bb__quiet_hours__init(&d.quiet);
    d.quiet.from_minute = 22 * 60;
    d.quiet.to_minute = 7 * 60;
    d.prefs[0].quiet = &d.quiet;
    d.prefs[0].max_per_hour = 3;
    d.cats[0] = BB__CATEGORY__CATEGORY_BURGLARY;
    d.cats[1] = BB__CATEGORY__CATEGORY_FIRE;
    d.prefs[1].categories = d.cats;
    d.prefs[1].n_categories = 2;
    d.prefs[1].min_urgency = BB__URGENCY__URGENCY_RECENT;

    for (int i = 0; i < 5; i++) {
        Bb__User *u = &d.user[i];
        bb__user__init(u);
        u->id = users[i].id;
        u->locale = (char *)users[i].locale;
        u->time_zone = (char *)users[i].tz;
        u->screen_name = (char *)users[i].name;
        if (users[i].radius) {
            bb__watch_area__init(&d.watch[i]);
            d.watch[i].lat = users[i].lat;
            d.watch[i].lon = users[i].lon;
            d.watch[i].radius_m = users[i].radius;
            u->watch = &d.watch[i];
        }
        if (users[i].prefs >= 0) {
            u->prefs = &d.prefs[users[i].prefs];
        }
        Bb__DirectoryEvent *ev = next_event();
        ev->change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
        ev->user_upsert = u;
    }

    /* Group 1: members, the centre at precision 6, public posting. Group 2: an area at
     * precision 5 admitting burglary and fire from urgency "recent" on. */
    static const char *const gnames[2] = {"Buurtpreventie Centrum", "Wijk Noord"};
    static const unsigned gprec[2] = {6, 5};
    for (int i = 0; i < 2; i++) {
        Bb__Group *g = &d.group[i];
        bb__group__init(g);
        bb__policy__init(&d.policy[i]);
        g->id = (uint64_t)i + 1;
        g->name = (char *)gnames[i];
        bb_geohash_format(bb_geohash_encode(P_LAT, P_LON, gprec[i]), d.cell[i]);
        d.cells[i][0] = d.cell[i];
        g->cells = d.cells[i];
        g->n_cells = 1;
        g->policy = &d.policy[i];
        g->location_precision = i == 0 ? 7 : 0;
        Bb__DirectoryEvent *ev = next_event();
        ev->change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
        ev->group_upsert = g;
    }
    d.policy[0].public_posting = true;
    d.gcats[0] = BB__CATEGORY__CATEGORY_BURGLARY;
    d.gcats[1] = BB__CATEGORY__CATEGORY_FIRE;
    d.policy[1].categories = d.gcats;
    d.policy[1].n_categories = 2;
    d.policy[1].min_urgency = BB__URGENCY__URGENCY_RECENT;

    static const uint64_t members[3][2] = {{1003, 1}, {1004, 1}, {1002, 2}};
    for (int i = 0; i < 3; i++) {
        bb__membership__init(&d.member[i]);
        d.member[i].user_id = members[i][0];
        d.member[i].group_id = members[i][1];
        Bb__DirectoryEvent *ev = next_event();
        ev->change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
        ev->member_add = &d.member[i];
    }
    bb__mute__init(&d.mute);
    d.mute.user_id = 1004;
    d.mute.author_id = 1001;
    Bb__DirectoryEvent *ev = next_event();
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_MUTE;
    ev->mute = &d.mute;
    bb__follow__init(&d.follow);
    d.follow.user_id = 1005;
    d.follow.report_id = "r-seed-1";
    ev = next_event();
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_FOLLOW;
    ev->follow = &d.follow;
}

size_t fuzz_dir_events(Bb__DirectoryEvent **out, size_t cap)
{
    build_events();
    size_t n = d.nev < cap ? d.nev : cap;
    for (size_t i = 0; i < n; i++) {
        out[i] = &d.ev[i];
    }
    return n;
}

struct bb_dir *fuzz_dir_new(void)
{
    static const struct bb_dir_params params = {7, 8, 5000};
    struct bb_dir *dir = bb_dir_new(&params);
    if (!dir) {
        fuzz_fail("bb_dir_new");
    }
    build_events();
    for (size_t i = 0; i < d.nev; i++) {
        char why[128] = "";
        int rc = bb_dir_apply(dir, &d.ev[i], why, sizeof(why));
        if (rc != BB_OK) {
            fuzz_fail("directory event %zu refused: %d %s", i, rc, why);
        }
    }
    return dir;
}

/* ---- samples ----------------------------------------------------------------------------- */

void fuzz_report_sample(unsigned i, Bb__Report *r, Bb__Media *m, Bb__Media **mp)
{
    static const char *const ids[FUZZ_REPORTS] = {"r-seed-1", "r-seed-2", "r-seed-3", "r-seed-4",
                                                  "r-seed-5", "r-seed-6", "r-seed-7", "r-seed-8"};
    static const char *const texts[FUZZ_REPORTS] = {
        "Twee mannen bij de achterdeur van nummer 12",
        "Verdachte auto, grijze stationwagen, rijdt langzaam door de straat",
        "Rookontwikkeling bij de loods achter de supermarkt",
        "",
        "Kind vermist: jongen van 8, blauwe jas, laatst gezien bij het park",
        "Suspicious person trying car doors on Hinthamerstraat",
        "Tram storing, lijn 1 rijdt niet — omleiding via de Markt 🚋",
        "Phishing-sms uit naam van de gemeente, niet op de link klikken",
    };
    bb__report__init(r);
    r->schema_version = 1;
    r->id = (char *)ids[i % FUZZ_REPORTS];
    r->time_ms = 1767225600000 + (int64_t)i * 3600 * 1000 * 5; /* 2026-01-01, every 5 h */
    r->author_id = i % 3 == 0 ? 1001 : 2000 + i;
    r->author_screen_name = i % 2 ? "Henk de Vries" : "";
    r->group_id = i % 4 == 0 ? 1 : i % 4 == 1 ? 2 : 0;
    r->lat = P_LAT + 0.0005 * (double)i;
    r->lon = P_LON - 0.0004 * (double)i;
    if (i == 6) {
        r->lat = 51.5555; /* near the follower in Tilburg */
        r->lon = 5.0913;
    }
    r->category = (Bb__Category)(1 + i % 10);
    r->urgency = (Bb__Urgency)(1 + i % 3);
    r->source = (Bb__Source)(1 + i % 5);
    r->text = (char *)texts[i % FUZZ_REPORTS];
    r->anonymity = (Bb__Anonymity)(i % 3);
    r->locale = i == 5 ? "en" : "nl";
    if (i % 3 == 1) {
        bb__media__init(&m[0]);
        bb__media__init(&m[1]);
        m[0].url = "https://img.example/a.jpg";
        m[0].mime_type = "image/jpeg";
        m[0].publishable = true;
        m[1].url = "http://img.example/clip.mp4";
        m[1].mime_type = "video/mp4";
        mp[0] = &m[0];
        mp[1] = &m[1];
        r->media = mp;
        r->n_media = 2;
    }
}

void fuzz_status_sample(unsigned i, Bb__ReportStatus *s)
{
    static const char *const ids[FUZZ_STATUSES] = {"s-seed-1", "s-seed-2", "s-seed-3", "s-seed-4"};
    static const char *const texts[FUZZ_STATUSES] = {
        "Politie is ter plaatse", "", "Verdachte aangehouden, bedankt voor de melding",
        "False alarm: it was the neighbour's cat"};
    bb__report_status__init(s);
    s->schema_version = 1;
    s->id = (char *)ids[i % FUZZ_STATUSES];
    s->report_id = i % 2 ? "r-seed-2" : "r-seed-1";
    s->time_ms = 1767229200000 + (int64_t)i * 60000;
    s->status = (Bb__Status)(1 + (i * 2) % 7);
    s->text = (char *)texts[i % FUZZ_STATUSES];
    s->source = i % 2 ? BB__SOURCE__SOURCE_POLICE : BB__SOURCE__SOURCE_PLATFORM;
    s->reporter_id = i == 1 ? 0 : 1001;
    s->category = BB__CATEGORY__CATEGORY_BURGLARY;
    s->urgency = (Bb__Urgency)(i % 4);
    s->locale = i == 3 ? "en" : "nl";
}

/* ---- the dictionary ---------------------------------------------------------------------- */

struct bb_zdict *fuzz_dict_new(void)
{
    enum { NS = 64, CAP = 16384 };
    static uint8_t samples[NS * 1024];
    static size_t sizes[NS];
    static uint8_t dict[CAP];
    size_t off = 0;
    for (unsigned i = 0; i < NS; i++) {
        Bb__Report r;
        Bb__Media m[2], *mp[2];
        Bb__Notification n;
        char cell[16];
        fuzz_report_sample(i, &r, m, mp);
        r.time_ms += (int64_t)i * 7919;
        bb_notification_from_report(&n, &r, i % 2 ? "Buurtpreventie Centrum" : "", 6 + i % 3, cell);
        size_t len = bb__notification__get_packed_size(&n);
        if (len > 1024) {
            fuzz_fail("sample notification of %zu bytes", len);
        }
        sizes[i] = bb__notification__pack(&n, samples + off);
        off += sizes[i];
    }
    ZDICT_params_t zp = {.compressionLevel = 3, .notificationLevel = 0, .dictID = FUZZ_DICT_ID};
    size_t len = ZDICT_finalizeDictionary(dict, CAP, samples, off, samples, sizes, NS, zp);
    if (ZDICT_isError(len)) {
        fuzz_fail("ZDICT_finalizeDictionary: %s", ZDICT_getErrorName(len));
    }
    struct bb_zdict *zd = bb_zdict_new(dict, len, 3);
    if (!zd || bb_zdict_id(zd) != FUZZ_DICT_ID) {
        fuzz_fail("bb_zdict_new refused the dictionary");
    }
    return zd;
}

/* ---- the worker's checks ----------------------------------------------------------------- */

const char *fuzz_worker_decode(struct bb_zdec *z, const struct bb_zdict *dict, const uint8_t *p,
                               size_t n, const char *key, int channel, const uint64_t *recipients,
                               size_t nrecipients)
{
    /* The worker decompresses with the dictionary the frame names (fetched from
     * bb:zdict:{id}); one it cannot find is tried as none, which zstd refuses. */
    uint32_t id = bb_zframe_dict_id(p, n);
    const struct bb_zdict *use = id != 0 && id == bb_zdict_id(dict) ? dict : NULL;
    const uint8_t *raw = NULL;
    size_t rawlen = 0;
    int rc = bb_zdec_decompress(z, use, p, n, &raw, &rawlen);
    if (rc != BB_OK) {
        if (rc == BB_ETOOBIG && rawlen > FUZZ_MAX_OUT) {
            fuzz_fail("bb_zdec_decompress: BB_ETOOBIG with %zu bytes out", rawlen);
        }
        return rc == BB_ETOOBIG ? "payload_too_big" : "decompress_error";
    }
    if (rawlen > FUZZ_MAX_OUT) {
        fuzz_fail("bb_zdec_decompress produced %zu bytes past max_out", rawlen);
    }
    Bb__Notification *note = bb__notification__unpack(NULL, rawlen, raw);
    if (!note) {
        return "decode_error";
    }
    const char *why = bb_notification_valid(note) ? NULL : "invalid_utf8";
    /* A delivery id per recipient, in the worker's buffer size. */
    for (size_t i = 0; i < nrecipients && !why && key; i++) {
        char did[192]; /* the worker's delivery id buffer */
        size_t len = bb_delivery_id(did, sizeof(did), key, channel, recipients[i]);
        if (len == 0 || len != strlen(did) || strncmp(did, key, strlen(key)) != 0) {
            fuzz_fail("bb_delivery_id(%s, %d, %llu) = %zu", key, channel,
                      (unsigned long long)recipients[i], len);
        }
    }
    bb__notification__free_unpacked(note, NULL);
    return why;
}

const char *fuzz_worker_take(struct bb_zdec *z, const struct bb_zdict *dict, const uint8_t *p,
                             size_t n)
{
    Bb__DeliveryBatch *db = bb__delivery_batch__unpack(NULL, n, p);
    if (!db) {
        return "decode_error";
    }
    const char *why = NULL;
    if (!bb_entry_key_valid(db->notification_key)) {
        why = "bad_notification_key";
    } else if (db->notification_zstd.len == 0) {
        why = "missing_field:notification_zstd";
    } else {
        why = fuzz_worker_decode(z, dict, db->notification_zstd.data, db->notification_zstd.len,
                                 db->notification_key, (int)db->channel, db->recipients,
                                 db->n_recipients);
    }
    bb__delivery_batch__free_unpacked(db, NULL);
    return why;
}
