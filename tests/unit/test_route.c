/* Unit tests for broker/route.c: the three routes (group members, area groups and their
 * policy, personal watch areas), deduplication, exclusions (author, mutes), preferences,
 * quiet hours across zones and DST, the hourly cap, locales, status updates and
 * explanations. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "geohash.h"
#include "report.pb-c.h"
#include "route.h"

/* 's-Hertogenbosch, where most reports happen; Tilburg, where the far-away things are. */
#define P_LAT 51.6978
#define P_LON 5.3037
#define FAR_LAT 51.5555
#define FAR_LON 5.0913
#define M_PER_DEG_LAT 111195.08 /* mean Earth radius 6371008.8 m */

static const struct bb_dir_params params = {
    .default_precision = 7,
    .watch_max_cells = 8,
    .max_radius_m = 10000,
};

/* ---- time -------------------------------------------------------------------------------- */

/* Reports are dated next year: zones are loaded for a window from now to three years on. */
static int test_year(void)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    return tm.tm_year + 1900 + 1;
}

static int64_t utc(int year, int mon, int day, int h, int m)
{
    struct tm tm = {0};
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = h;
    tm.tm_min = m;
    return (int64_t)timegm(&tm);
}

/* Day of the month of the last Sunday of March (the EU switch to summer time, 01:00 UTC). */
static int eu_dst_day(int year)
{
    for (int d = 31;; d--) {
        struct tm tm = {0};
        time_t t = (time_t)utc(year, 3, d, 12, 0);
        gmtime_r(&t, &tm);
        if (tm.tm_wday == 0) {
            return d;
        }
    }
}

/* ---- builders ---------------------------------------------------------------------------- */

struct prefs_buf {
    Bb__Preferences p;
    Bb__ChannelSet cs[3];
    Bb__Channel ch[3][6];
    Bb__QuietHours q;
    Bb__Category cats[16];
};

static Bb__Preferences *prefs_init(struct prefs_buf *b)
{
    memset(b, 0, sizeof(*b));
    bb__preferences__init(&b->p);
    return &b->p;
}

/* Sets the channels for urgency 1..3 from BB_CH_* bits (BB_CH_SOCIAL included on purpose). */
static void prefs_channels(struct prefs_buf *b, int urgency, unsigned mask)
{
    Bb__ChannelSet *cs = &b->cs[urgency - 1];
    bb__channel_set__init(cs);
    cs->channels = b->ch[urgency - 1];
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        if (mask & (1u << c)) {
            cs->channels[cs->n_channels++] = (Bb__Channel)(c + 1);
        }
    }
    if (urgency == 1) {
        b->p.informational = cs;
    } else if (urgency == 2) {
        b->p.recent = cs;
    } else {
        b->p.in_progress = cs;
    }
}

static void prefs_quiet(struct prefs_buf *b, unsigned from, unsigned to)
{
    bb__quiet_hours__init(&b->q);
    b->q.from_minute = from;
    b->q.to_minute = to;
    b->p.quiet = &b->q;
}

static void prefs_categories(struct prefs_buf *b, unsigned mask)
{
    b->p.categories = b->cats;
    b->p.n_categories = 0;
    for (unsigned c = 1; c <= 15; c++) {
        if (mask & (1u << c)) {
            b->cats[b->p.n_categories++] = (Bb__Category)c;
        }
    }
}

static void add_user_full(struct bb_dir *dir, uint64_t id, double lat, double lon, unsigned radius,
                          const Bb__Preferences *prefs, const char *locale, const char *tz)
{
    Bb__User u = BB__USER__INIT;
    Bb__WatchArea w = BB__WATCH_AREA__INIT;
    char why[64] = "";
    u.id = id;
    w.lat = lat;
    w.lon = lon;
    w.radius_m = radius;
    u.watch = &w;
    u.prefs = (Bb__Preferences *)prefs;
    u.locale = (char *)(locale ? locale : "");
    u.time_zone = (char *)(tz ? tz : "");
    int rc = bb_dir_upsert_user(dir, &u, why, sizeof(why));
    if (rc != BB_OK) {
        fail_msg("user %llu: %d %s", (unsigned long long)id, rc, why);
    }
}

static void add_user(struct bb_dir *dir, uint64_t id, double lat, double lon, unsigned radius,
                     const Bb__Preferences *prefs)
{
    add_user_full(dir, id, lat, lon, radius, prefs, NULL, NULL);
}

struct policy {
    unsigned categories; /* bit c: category c; 0: all */
    int min_urgency;
    unsigned sources; /* bit s: source s; 0: all */
    bool public_posting;
};

static void add_group(struct bb_dir *dir, uint64_t id, const char *const *cells, size_t ncells,
                      const struct policy *pol, unsigned precision)
{
    Bb__Group g = BB__GROUP__INIT;
    Bb__Policy p = BB__POLICY__INIT;
    Bb__Category cats[16];
    Bb__Source srcs[8];
    char name[32], why[64] = "";
    snprintf(name, sizeof(name), "Groep %llu", (unsigned long long)id);
    if (pol) {
        for (unsigned c = 1; c <= 15; c++) {
            if (pol->categories & (1u << c)) {
                cats[p.n_categories++] = (Bb__Category)c;
            }
        }
        for (unsigned s = 1; s <= 7; s++) {
            if (pol->sources & (1u << s)) {
                srcs[p.n_sources++] = (Bb__Source)s;
            }
        }
        p.categories = cats;
        p.sources = srcs;
        p.min_urgency = (Bb__Urgency)pol->min_urgency;
        p.public_posting = pol->public_posting;
        g.policy = &p;
    }
    g.id = id;
    g.name = name;
    g.cells = (char **)cells;
    g.n_cells = ncells;
    g.location_precision = precision;
    int rc = bb_dir_upsert_group(dir, &g, why, sizeof(why));
    if (rc != BB_OK) {
        fail_msg("group %llu: %d %s", (unsigned long long)id, rc, why);
    }
}

static void add_member(struct bb_dir *dir, uint64_t uid, uint64_t gid)
{
    char why[64] = "";
    if (bb_dir_add_member(dir, uid, gid, why, sizeof(why)) != BB_OK) {
        fail_msg("member %llu of %llu: %s", (unsigned long long)uid, (unsigned long long)gid, why);
    }
}

static void add_mute(struct bb_dir *dir, uint64_t uid, uint64_t author, uint64_t group)
{
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    Bb__Mute m = BB__MUTE__INIT;
    char why[64] = "";
    m.user_id = uid;
    m.author_id = author;
    m.group_id = group;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MUTE;
    ev.mute = &m;
    assert_int_equal(bb_dir_apply(dir, &ev, why, sizeof(why)), BB_OK);
}

static void erase_user(struct bb_dir *dir, uint64_t uid)
{
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    char why[64] = "";
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
    ev.user_erase = uid;
    assert_int_equal(bb_dir_apply(dir, &ev, why, sizeof(why)), BB_OK);
}

/* The geohash of (lat, lon) at precision p, as a string kept in a rotating static buffer. */
static const char *cell_at(double lat, double lon, unsigned p)
{
    static char bufs[16][13];
    static unsigned next;
    char *b = bufs[next++ % 16];
    bb_geohash_format(bb_geohash_encode(lat, lon, p), b);
    return b;
}

static Bb__Report report(uint64_t author, uint64_t group, double lat, double lon, int category,
                         int urgency, int source, int64_t t_s)
{
    Bb__Report r = BB__REPORT__INIT;
    r.schema_version = 1;
    r.id = "rep-1";
    r.time_ms = t_s * 1000;
    r.author_id = author;
    r.group_id = group;
    r.lat = lat;
    r.lon = lon;
    r.category = (Bb__Category)category;
    r.urgency = (Bb__Urgency)urgency;
    r.source = (Bb__Source)source;
    r.locale = "nl";
    return r;
}

/* ---- result helpers ---------------------------------------------------------------------- */

/* Channel bits on which id appears; fails if it appears twice on one channel or in two
 * locales. */
static unsigned chans(const struct bb_route_result *res, uint64_t id)
{
    unsigned mask = 0;
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        unsigned seen = 0;
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            const struct bb_rlist *list = &res->lists[c][l];
            if (!(res->used[c] & (1u << l))) {
                assert_int_equal(list->n, 0);
                continue;
            }
            for (uint32_t i = 0; i < list->n; i++) {
                seen += list->ids[i] == id;
            }
        }
        if (seen > 1) {
            fail_msg("user %llu %u times on %s", (unsigned long long)id, seen, bb_channel_name(c));
        }
        mask |= seen ? 1u << c : 0;
    }
    return mask;
}

static uint32_t total_deliveries(const struct bb_route_result *res)
{
    uint32_t n = 0;
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            n += res->lists[c][l].n;
        }
    }
    return n;
}

static const struct bb_explain_line *line_for(const struct bb_explain *ex, uint64_t user,
                                              uint64_t group)
{
    for (uint32_t i = 0; i < ex->n; i++) {
        if (ex->lines[i].user_id == user &&
            (group == UINT64_MAX || ex->lines[i].group_id == group)) {
            return &ex->lines[i];
        }
    }
    return NULL;
}

static unsigned lines_for(const struct bb_explain *ex, uint64_t user)
{
    unsigned n = 0;
    for (uint32_t i = 0; i < ex->n; i++) {
        n += ex->lines[i].user_id == user;
    }
    return n;
}

static void expect_line(const struct bb_explain *ex, uint64_t user, uint64_t group, int route,
                        int verdict)
{
    const struct bb_explain_line *l = line_for(ex, user, group);
    if (!l) {
        fail_msg("no explanation for user %llu (group %llu)", (unsigned long long)user,
                 (unsigned long long)group);
    }
    if (l->verdict != verdict || (route >= 0 && l->route != route)) {
        fail_msg("user %llu: %s via %s, want %s via %s", (unsigned long long)user,
                 bb_verdict_name(l->verdict), bb_route_kind_name(l->route),
                 bb_verdict_name(verdict), route >= 0 ? bb_route_kind_name(route) : "any");
    }
}

/* ---- fixture ----------------------------------------------------------------------------- */

struct fx {
    struct bb_dir *dir;
    struct bb_router *r;
    struct bb_explain ex;
    const struct bb_route_result *res;
    int year;
};

static struct fx *fx_new(const struct bb_dir_params *p)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->dir = bb_dir_new(p ? p : &params);
    assert_non_null(f->dir);
    f->r = bb_router_new(f->dir);
    assert_non_null(f->r);
    f->year = test_year();
    return f;
}

static void fx_free(struct fx *f)
{
    /* Free what readers could still see before the reader goes. */
    bb_dir_reclaim_all(f->dir);
    bb_router_free(f->r);
    bb_explain_free(&f->ex);
    bb_dir_free(f->dir);
    free(f);
}

static int setup(void **state)
{
    *state = fx_new(NULL);
    return 0;
}

static int teardown(void **state)
{
    fx_free(*state);
    return 0;
}

static int route(struct fx *f, const Bb__Report *rep)
{
    int rc = bb_route_report(f->r, rep, &f->ex, &f->res);
    if (rc == BB_OK) {
        assert_int_equal(total_deliveries(f->res), f->res->deliveries);
        assert_false(f->ex.oom);
    }
    return rc;
}

static int64_t noon(const struct fx *f)
{
    return utc(f->year, 1, 15, 12, 0);
}

/* ---- (a) group members ------------------------------------------------------------------- */

static void test_group_members(void **state)
{
    struct fx *f = *state;
    add_group(f->dir, 1, NULL, 0, NULL, 8);
    for (uint64_t id = 1; id <= 4; id++) {
        add_user(f->dir, id, P_LAT, P_LON, 0, NULL);
    }
    add_user(f->dir, 5, FAR_LAT, FAR_LON, 500, NULL); /* near the point, not a member */
    for (uint64_t id = 1; id <= 3; id++) {
        add_member(f->dir, id, 1);
    }
    /* The point is far from every member: only membership reaches them. */
    Bb__Report rep = report(99, 1, FAR_LAT + 0.05, FAR_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    for (uint64_t id = 1; id <= 3; id++) {
        assert_int_equal(chans(f->res, id), BB_CH_PUSH | BB_CH_INBOX);
        expect_line(&f->ex, id, 1, BB_ROUTE_GROUP, BB_V_NOTIFIED);
    }
    assert_int_equal(chans(f->res, 4), 0);
    assert_int_equal(chans(f->res, 5), 0);
    assert_int_equal(f->res->recipients, 3);
    assert_int_equal(f->res->deliveries, 6);
    assert_string_equal(f->res->group_name, "Groep 1");
    assert_int_equal(f->res->precision, 8);
    assert_int_equal(f->res->social.n, 0);
}

static void test_unknown_group(void **state)
{
    struct fx *f = *state;
    add_user(f->dir, 1, P_LAT, P_LON, 1000, NULL);
    Bb__Report rep = report(99, 12345, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_ENOTFOUND);
    /* The router stays usable. */
    rep.group_id = 0;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), BB_CH_PUSH | BB_CH_INBOX);
}

/* ---- (b) area groups and their policy ---------------------------------------------------- */

struct area_case {
    const char *name;
    struct policy pol;
    unsigned cell_precision; /* of the group's cell holding the point; 0: a cell far away */
    int category, urgency, source;
    int verdict; /* BB_V_NOTIFIED or the policy_* verdict */
};

/* clang-format off */
static const struct area_case area_cases[] = {
    {"no policy", {0}, 6, 1, 2, 1, BB_V_NOTIFIED},
    {"precision 4 cell", {0}, 4, 1, 2, 1, BB_V_NOTIFIED},
    {"precision 7 cell", {0}, 7, 1, 2, 1, BB_V_NOTIFIED},
    {"precision 9 cell", {0}, 9, 1, 2, 1, BB_V_NOTIFIED},
    {"cell elsewhere", {0}, 0, 1, 2, 1, -1},
    {"category admitted", {.categories = 1u << 1}, 6, 1, 2, 1, BB_V_NOTIFIED},
    {"category refused", {.categories = 1u << 4}, 6, 1, 2, 1, BB_V_POLICY_CATEGORY},
    {"categories, one admitted", {.categories = (1u << 4) | (1u << 7)}, 6, 7, 2, 1,
     BB_V_NOTIFIED},
    {"in progress only, recent", {.min_urgency = 3}, 6, 1, 2, 1, BB_V_POLICY_URGENCY},
    {"in progress only, in progress", {.min_urgency = 3}, 6, 1, 3, 1, BB_V_NOTIFIED},
    {"recent and up, recent", {.min_urgency = 2}, 6, 1, 2, 1, BB_V_NOTIFIED},
    {"recent and up, informational", {.min_urgency = 2}, 6, 1, 1, 1, BB_V_POLICY_URGENCY},
    {"police only, resident", {.sources = 1u << 2}, 6, 1, 2, 1, BB_V_POLICY_SOURCE},
    {"police only, police", {.sources = 1u << 2}, 6, 1, 2, 2, BB_V_NOTIFIED},
    {"residents and police, resident", {.sources = (1u << 1) | (1u << 2)}, 6, 1, 2, 1,
     BB_V_NOTIFIED},
    {"sensor only, municipality", {.sources = 1u << 4}, 6, 1, 2, 3, BB_V_POLICY_SOURCE},
    {"all three admit", {.categories = 1u << 2, .min_urgency = 2, .sources = 1u << 4}, 6, 2, 3,
     4, BB_V_NOTIFIED},
    {"public posting", {.public_posting = true}, 6, 1, 2, 1, BB_V_NOTIFIED},
    {"public posting, refused", {.public_posting = true, .min_urgency = 3}, 6, 1, 2, 1,
     BB_V_POLICY_URGENCY},
};
/* clang-format on */

static void test_area_groups_policy(void **state)
{
    for (size_t i = 0; i < sizeof(area_cases) / sizeof(area_cases[0]); i++) {
        const struct area_case *c = &area_cases[i];
        struct fx *f = fx_new(NULL);
        const char *cell = c->cell_precision ? cell_at(P_LAT, P_LON, c->cell_precision)
                                             : cell_at(FAR_LAT, FAR_LON, 6);
        add_group(f->dir, 20, &cell, 1, &c->pol, 0);
        add_user(f->dir, 1, FAR_LAT + 0.1, FAR_LON, 0, NULL);
        add_member(f->dir, 1, 20);
        Bb__Report rep = report(99, 0, P_LAT, P_LON, c->category, c->urgency, c->source, noon(f));
        assert_int_equal(route(f, &rep), BB_OK);
        unsigned got = chans(f->res, 1);
        if ((got != 0) != (c->verdict == BB_V_NOTIFIED)) {
            fail_msg("%s: channels %#x", c->name, got);
        }
        if (c->verdict == BB_V_NOTIFIED) {
            expect_line(&f->ex, 1, 20, BB_ROUTE_AREA, BB_V_NOTIFIED);
        } else if (c->verdict > 0) {
            expect_line(&f->ex, 0, 20, BB_ROUTE_AREA, c->verdict); /* the group's line */
            expect_line(&f->ex, 1, 20, BB_ROUTE_AREA, c->verdict); /* and its member's */
        } else {
            assert_int_equal(f->ex.n, 0);
        }
        bool social = f->res->social.n == 1 && f->res->social.ids[0] == 20;
        if (social != (c->pol.public_posting && c->verdict == BB_V_NOTIFIED)) {
            fail_msg("%s: social list of %u", c->name, f->res->social.n);
        }
        fx_free(f);
    }
}

/* The report's own group refused by its policy reaches nobody through membership; a member
 * whose watch area holds the point still hears of it. */
static void test_own_group_refused(void **state)
{
    struct fx *f = *state;
    struct policy pol = {.sources = 1u << 2}; /* police only */
    add_group(f->dir, 1, NULL, 0, &pol, 0);
    add_user(f->dir, 1, FAR_LAT, FAR_LON, 0, NULL);
    add_user(f->dir, 2, P_LAT, P_LON, 300, NULL);
    add_member(f->dir, 1, 1);
    add_member(f->dir, 2, 1);
    Bb__Report rep = report(99, 1, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), 0);
    assert_int_equal(chans(f->res, 2), BB_CH_PUSH | BB_CH_INBOX);
    expect_line(&f->ex, 0, 1, BB_ROUTE_GROUP, BB_V_POLICY_SOURCE);
    expect_line(&f->ex, 1, 1, BB_ROUTE_GROUP, BB_V_POLICY_SOURCE);
    expect_line(&f->ex, 2, 0, BB_ROUTE_WATCH, BB_V_NOTIFIED);
    assert_int_equal(lines_for(&f->ex, 2), 1);

    rep.source = BB__SOURCE__SOURCE_POLICE;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), BB_CH_PUSH | BB_CH_INBOX);
    expect_line(&f->ex, 2, 1, BB_ROUTE_GROUP, BB_V_NOTIFIED);
}

/* ---- (c) watch areas --------------------------------------------------------------------- */

static void test_watch_radius(void **state)
{
    static const unsigned radii[] = {200, 450, 1000, 5000};
    static const double dirs[][2] = {{1, 0}, {0, 1}, {-0.7071, -0.7071}, {0.6, -0.8}};
    struct fx *f = *state;
    uint64_t id = 1;
    struct {
        uint64_t id;
        bool inside;
    } who[64];
    unsigned n = 0;
    const float plat = (float)P_LAT, plon = (float)P_LON;

    for (size_t r = 0; r < sizeof(radii) / sizeof(radii[0]); r++) {
        for (size_t d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++) {
            for (int inside = 0; inside <= 1; inside++) {
                double want = radii[r] + (inside ? -3.0 : 3.0), s = want / M_PER_DEG_LAT;
                double lat = P_LAT, lon = P_LON;
                /* Walk along the direction until the router's own distance says "want". */
                for (int k = 0; k < 4; k++) {
                    lat = P_LAT + dirs[d][0] * s;
                    lon = P_LON + dirs[d][1] * s / cos(P_LAT * 3.14159265358979 / 180.0);
                    s *= want / bb_distance_fast_m(plat, plon, (float)lat, (float)lon);
                }
                lat = P_LAT + dirs[d][0] * s;
                lon = P_LON + dirs[d][1] * s / cos(P_LAT * 3.14159265358979 / 180.0);
                float fd = bb_distance_fast_m(plat, plon, (float)lat, (float)lon);
                assert_true(inside ? fd <= (float)radii[r] : fd > (float)radii[r]);
                add_user(f->dir, id, lat, lon, radii[r], NULL);
                who[n].id = id++;
                who[n++].inside = inside;
            }
        }
    }
    add_user(f->dir, id, P_LAT, P_LON, 0, NULL); /* at the point, no watch area */
    Bb__Report rep = report(999, 0, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    for (unsigned i = 0; i < n; i++) {
        unsigned got = chans(f->res, who[i].id);
        if (who[i].inside) {
            assert_int_equal(got, BB_CH_PUSH | BB_CH_INBOX);
            expect_line(&f->ex, who[i].id, 0, BB_ROUTE_WATCH, BB_V_NOTIFIED);
        } else {
            assert_int_equal(got, 0);
            expect_line(&f->ex, who[i].id, 0, BB_ROUTE_WATCH, BB_V_OUTSIDE_RADIUS);
        }
    }
    assert_int_equal(chans(f->res, id), 0);
    assert_int_equal(f->res->recipients, n / 2);
}

/* ---- deduplication and exclusions -------------------------------------------------------- */

static void scene_three_routes(struct fx *f, uint64_t uid, const Bb__Preferences *prefs)
{
    const char *cell = cell_at(P_LAT, P_LON, 6);
    if (!bb_dir_group_find(f->dir, 1, NULL)) {
        add_group(f->dir, 1, NULL, 0, NULL, 0);  /* the report's group */
        add_group(f->dir, 2, &cell, 1, NULL, 0); /* an area group */
    }
    add_user(f->dir, uid, P_LAT + 0.001, P_LON, 500, prefs);
    add_member(f->dir, uid, 1);
    add_member(f->dir, uid, 2);
}

static void test_dedup_across_routes(void **state)
{
    struct fx *f = *state;
    struct prefs_buf pb;
    prefs_init(&pb);
    prefs_channels(&pb, 2, BB_CH_PUSH | BB_CH_EMAIL | BB_CH_INBOX);
    scene_three_routes(f, 7, &pb.p);
    Bb__Report rep = report(99, 1, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 7), BB_CH_PUSH | BB_CH_EMAIL | BB_CH_INBOX);
    assert_int_equal(f->res->recipients, 1);
    assert_int_equal(f->res->deliveries, 3);
    assert_int_equal(lines_for(&f->ex, 7), 1);
    expect_line(&f->ex, 7, 1, BB_ROUTE_GROUP, BB_V_NOTIFIED);
    assert_int_equal(line_for(&f->ex, 7, UINT64_MAX)->channels,
                     BB_CH_PUSH | BB_CH_EMAIL | BB_CH_INBOX);

    /* Without the report's group: once, through the area group. */
    rep.group_id = 0;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(f->res->recipients, 1);
    assert_int_equal(f->res->deliveries, 3);
    expect_line(&f->ex, 7, 2, BB_ROUTE_AREA, BB_V_NOTIFIED);
    assert_int_equal(lines_for(&f->ex, 7), 1);
}

static void test_author_excluded(void **state)
{
    struct fx *f = *state;
    scene_three_routes(f, 7, NULL);
    scene_three_routes(f, 8, NULL);
    Bb__Report rep = report(7, 1, P_LAT, P_LON, 1, 3, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 7), 0);
    assert_int_equal(chans(f->res, 8), BB_CH_PUSH | BB_CH_INBOX);
    expect_line(&f->ex, 7, UINT64_MAX, -1, BB_V_AUTHOR);
    assert_int_equal(lines_for(&f->ex, 7), 1);
    assert_int_equal(f->res->recipients, 1);
}

static void test_muted_author(void **state)
{
    struct fx *f = *state;
    scene_three_routes(f, 7, NULL);
    scene_three_routes(f, 8, NULL);
    add_user(f->dir, 50, FAR_LAT, FAR_LON, 0, NULL);
    add_mute(f->dir, 8, 50, 0);
    Bb__Report rep = report(50, 1, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 7), BB_CH_PUSH | BB_CH_INBOX);
    assert_int_equal(chans(f->res, 8), 0);
    expect_line(&f->ex, 8, UINT64_MAX, -1, BB_V_MUTED_AUTHOR);
    assert_int_equal(lines_for(&f->ex, 8), 1);

    rep.author_id = 51; /* someone else: 8 hears of it */
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 8), BB_CH_PUSH | BB_CH_INBOX);
}

static void test_muted_groups(void **state)
{
    struct fx *f = *state;
    const char *cell = cell_at(P_LAT, P_LON, 5);
    add_group(f->dir, 1, NULL, 0, NULL, 0);  /* the report's group */
    add_group(f->dir, 2, &cell, 1, NULL, 0); /* area groups */
    add_group(f->dir, 3, &cell, 1, NULL, 0);
    /* 1: muted the report's group; member of it and of area group 2, watch area holds P. */
    add_user(f->dir, 1, P_LAT, P_LON, 500, NULL);
    add_member(f->dir, 1, 1);
    add_member(f->dir, 1, 2);
    add_mute(f->dir, 1, 0, 1);
    /* 2: muted area group 2, member of it, watch area holds P. */
    add_user(f->dir, 2, P_LAT, P_LON, 500, NULL);
    add_member(f->dir, 2, 2);
    add_mute(f->dir, 2, 0, 2);
    /* 3: muted area group 2, member of it, no watch area. */
    add_user(f->dir, 3, P_LAT, P_LON, 0, NULL);
    add_member(f->dir, 3, 2);
    add_mute(f->dir, 3, 0, 2);
    /* 4: muted area group 2, member of it and of area group 3. */
    add_user(f->dir, 4, P_LAT, P_LON, 0, NULL);
    add_member(f->dir, 4, 2);
    add_member(f->dir, 4, 3);
    add_mute(f->dir, 4, 0, 2);
    /* 5: muted area group 2 but is a member of the report's group. */
    add_user(f->dir, 5, P_LAT, P_LON, 0, NULL);
    add_member(f->dir, 5, 1);
    add_member(f->dir, 5, 2);
    add_mute(f->dir, 5, 0, 2);

    Bb__Report rep = report(99, 1, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), 0);
    expect_line(&f->ex, 1, 1, -1, BB_V_MUTED_GROUP);
    assert_int_equal(lines_for(&f->ex, 1), 1);
    assert_int_equal(chans(f->res, 2), BB_CH_PUSH | BB_CH_INBOX);
    expect_line(&f->ex, 2, 0, BB_ROUTE_WATCH, BB_V_NOTIFIED);
    assert_int_equal(chans(f->res, 3), 0);
    expect_line(&f->ex, 3, 2, BB_ROUTE_AREA, BB_V_MUTED_GROUP);
    assert_int_equal(chans(f->res, 4), BB_CH_PUSH | BB_CH_INBOX);
    expect_line(&f->ex, 4, 3, BB_ROUTE_AREA, BB_V_NOTIFIED);
    assert_int_equal(chans(f->res, 5), BB_CH_PUSH | BB_CH_INBOX);
    expect_line(&f->ex, 5, 1, BB_ROUTE_GROUP, BB_V_NOTIFIED);
    assert_int_equal(f->res->recipients, 3);

    /* Without the report's group, user 1 is reached through area group 2 or its watch. */
    rep.group_id = 0;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), BB_CH_PUSH | BB_CH_INBOX);
}

/* ---- preferences ------------------------------------------------------------------------- */

struct pref_case {
    const char *name;
    unsigned categories; /* 0: all */
    int min_urgency;
    int set_urgency; /* which urgency's channels to set; 0: none */
    unsigned set_mask;
    int category, urgency;
    unsigned want;
    int verdict;
};

#define PUSH BB_CH_PUSH
#define EMAIL BB_CH_EMAIL
#define INBOX BB_CH_INBOX
#define DIGEST BB_CH_DIGEST

/* clang-format off */
static const struct pref_case pref_cases[] = {
    {"defaults, informational", 0, 0, 0, 0, 1, 1, INBOX | DIGEST, BB_V_NOTIFIED},
    {"defaults, recent", 0, 0, 0, 0, 1, 2, PUSH | INBOX, BB_V_NOTIFIED},
    {"defaults, in progress", 0, 0, 0, 0, 1, 3, PUSH | INBOX, BB_V_NOTIFIED},
    {"fire only, burglary", 1u << 4, 0, 0, 0, 1, 3, 0, BB_V_PREF_CATEGORY},
    {"fire or burglary, burglary", (1u << 4) | (1u << 1), 0, 0, 0, 1, 2, PUSH | INBOX,
     BB_V_NOTIFIED},
    {"in progress only, recent", 0, 3, 0, 0, 1, 2, 0, BB_V_PREF_URGENCY},
    {"in progress only, in progress", 0, 3, 0, 0, 1, 3, PUSH | INBOX, BB_V_NOTIFIED},
    {"recent and up, informational", 0, 2, 0, 0, 1, 1, 0, BB_V_PREF_URGENCY},
    {"recent by e-mail", 0, 0, 2, EMAIL, 1, 2, EMAIL, BB_V_NOTIFIED},
    {"recent by e-mail, informational keeps default", 0, 0, 2, EMAIL, 1, 1, INBOX | DIGEST,
     BB_V_NOTIFIED},
    {"in progress on every channel", 0, 0, 3, PUSH | EMAIL | INBOX | DIGEST, 1, 3,
     PUSH | EMAIL | INBOX | DIGEST, BB_V_NOTIFIED},
    {"informational: no channel", 0, 0, 1, 0, 1, 1, 0, BB_V_NO_CHANNEL},
    {"recent: social only is no channel", 0, 0, 2, BB_CH_SOCIAL, 1, 2, 0, BB_V_NO_CHANNEL},
    {"digest only", 0, 0, 2, DIGEST, 5, 2, DIGEST, BB_V_NOTIFIED},
};
/* clang-format on */

static void test_preferences(void **state)
{
    struct fx *f = *state;
    const size_t n = sizeof(pref_cases) / sizeof(pref_cases[0]);
    for (size_t i = 0; i < n; i++) {
        const struct pref_case *c = &pref_cases[i];
        struct prefs_buf pb;
        prefs_init(&pb);
        if (c->categories) {
            prefs_categories(&pb, c->categories);
        }
        pb.p.min_urgency = (Bb__Urgency)c->min_urgency;
        if (c->set_urgency) {
            prefs_channels(&pb, c->set_urgency, c->set_mask);
        }
        add_user(f->dir, 100 + i, P_LAT, P_LON, 400, &pb.p);
    }
    for (size_t i = 0; i < n; i++) {
        const struct pref_case *c = &pref_cases[i];
        Bb__Report rep = report(99, 0, P_LAT, P_LON, c->category, c->urgency, 1, noon(f));
        assert_int_equal(route(f, &rep), BB_OK);
        unsigned got = chans(f->res, 100 + i);
        const struct bb_explain_line *l = line_for(&f->ex, 100 + i, UINT64_MAX);
        if (got != c->want || !l || l->verdict != c->verdict) {
            fail_msg("%s: channels %#x verdict %s, want %#x %s", c->name, got,
                     l ? bb_verdict_name(l->verdict) : "(none)", c->want,
                     bb_verdict_name(c->verdict));
        }
        assert_int_equal(l->channels, c->want);
    }
}

/* ---- quiet hours ------------------------------------------------------------------------- */

struct quiet_case {
    const char *name;
    const char *tz;
    unsigned from, to;
    int mon, day, h, m; /* UTC; day 0: the EU DST day of March */
    int urgency;
    bool quiet;
};

/* clang-format off */
static const struct quiet_case quiet_cases[] = {
    /* 22:00-07:00 across midnight */
    {"AMS 22:30 CET", "Europe/Amsterdam", 1320, 420, 1, 15, 21, 30, 2, true},
    {"AMS 21:30 CET", "Europe/Amsterdam", 1320, 420, 1, 15, 20, 30, 2, false},
    {"AMS 06:30 CET", "Europe/Amsterdam", 1320, 420, 1, 15, 5, 30, 2, true},
    {"AMS 07:00 CET, end is exclusive", "Europe/Amsterdam", 1320, 420, 1, 15, 6, 0, 2, false},
    {"AMS 22:00 CET, start is inclusive", "Europe/Amsterdam", 1320, 420, 1, 15, 21, 0, 2, true},
    {"AMS 22:30 CEST", "Europe/Amsterdam", 1320, 420, 7, 15, 20, 30, 2, true},
    {"AMS 07:30 CEST", "Europe/Amsterdam", 1320, 420, 7, 15, 5, 30, 2, false},
    {"AMS 06:30 CEST", "Europe/Amsterdam", 1320, 420, 7, 15, 4, 30, 2, true},
    {"default zone is Amsterdam", "", 1320, 420, 7, 15, 20, 30, 2, true},
    {"NYC 22:30 EST", "America/New_York", 1320, 420, 1, 16, 3, 30, 2, true},
    {"NYC 07:00 EST", "America/New_York", 1320, 420, 1, 15, 12, 0, 2, false},
    {"NYC 22:30 EDT (US already on summer time)", "America/New_York", 1320, 420, 3, 20, 2, 30,
     2, true},
    {"NYC 21:30 EDT", "America/New_York", 1320, 420, 3, 20, 1, 30, 2, false},
    {"AMS 03:30 CET in 01:00-02:00", "Europe/Amsterdam", 60, 120, 3, 20, 2, 30, 2, false},
    {"TYO 22:30 JST", "Asia/Tokyo", 1320, 420, 1, 15, 13, 30, 2, true},
    {"TYO 21:30 JST", "Asia/Tokyo", 1320, 420, 1, 15, 12, 30, 2, false},
    {"TYO 06:59 JST", "Asia/Tokyo", 1320, 420, 7, 15, 21, 59, 2, true},
    /* within one day */
    {"AMS 13:30 in 13:00-14:00", "Europe/Amsterdam", 780, 840, 1, 15, 12, 30, 2, true},
    {"AMS 14:00 in 13:00-14:00", "Europe/Amsterdam", 780, 840, 1, 15, 13, 0, 2, false},
    {"AMS 12:59 in 13:00-14:00", "Europe/Amsterdam", 780, 840, 1, 15, 11, 59, 2, false},
    {"TYO 13:30 JST in 13:00-14:00", "Asia/Tokyo", 780, 840, 1, 15, 4, 30, 2, true},
    {"from == to: never", "Europe/Amsterdam", 600, 600, 1, 15, 9, 0, 2, false},
    /* the night the clocks go forward: 01:00-02:00 local */
    {"AMS 01:30 CET before the switch", "Europe/Amsterdam", 60, 120, 3, 0, 0, 30, 2, true},
    {"AMS 03:30 CEST after the switch", "Europe/Amsterdam", 60, 120, 3, 0, 1, 30, 2, false},
    {"AMS 01:59 CET", "Europe/Amsterdam", 60, 120, 3, 0, 0, 59, 2, true},
    /* informational: inbox + digest are not loud; in progress passes */
    {"in progress passes", "Europe/Amsterdam", 1320, 420, 1, 15, 21, 30, 3, false},
    {"informational inside", "Europe/Amsterdam", 1320, 420, 1, 15, 21, 30, 1, false},
};
/* clang-format on */

static void test_quiet_hours(void **state)
{
    struct fx *f = *state;
    const size_t n = sizeof(quiet_cases) / sizeof(quiet_cases[0]);
    int dst_day = eu_dst_day(f->year);
    for (size_t i = 0; i < n; i++) {
        const struct quiet_case *c = &quiet_cases[i];
        struct prefs_buf pb;
        prefs_init(&pb);
        prefs_quiet(&pb, c->from, c->to);
        prefs_channels(&pb, 1, INBOX | DIGEST);
        prefs_channels(&pb, 2, PUSH | EMAIL);
        prefs_channels(&pb, 3, PUSH);
        add_user_full(f->dir, 100 + i, P_LAT, P_LON, 400, &pb.p, "nl", c->tz);
    }
    for (size_t i = 0; i < n; i++) {
        const struct quiet_case *c = &quiet_cases[i];
        int64_t t = utc(f->year, c->mon, c->day ? c->day : dst_day, c->h, c->m);
        Bb__Report rep = report(99, 0, P_LAT, P_LON, 1, c->urgency, 1, t);
        assert_int_equal(route(f, &rep), BB_OK);
        unsigned normal = c->urgency == 1 ? INBOX | DIGEST : c->urgency == 2 ? PUSH | EMAIL : PUSH;
        unsigned want = c->quiet ? DIGEST : normal;
        unsigned got = chans(f->res, 100 + i);
        const struct bb_explain_line *l = line_for(&f->ex, 100 + i, UINT64_MAX);
        assert_non_null(l);
        if (got != want || ((l->notes & BB_NOTE_QUIET) != 0) != c->quiet) {
            fail_msg("%s: channels %#x notes %#x, want %#x", c->name, got, l->notes, want);
        }
    }
}

/* ---- the hourly cap ---------------------------------------------------------------------- */

static void test_hourly_cap(void **state)
{
    struct fx *f = *state;
    struct prefs_buf pb;
    prefs_init(&pb);
    pb.p.max_per_hour = 2;
    add_user(f->dir, 1, P_LAT, P_LON, 400, &pb.p);
    add_user(f->dir, 2, P_LAT, P_LON, 400, NULL); /* no cap */
    int64_t t0 = utc(f->year, 2, 10, 9, 0);
    static const struct {
        int64_t dt;
        int urgency;
        unsigned want;
        bool capped;
    } seq[] = {
        {0, 2, PUSH | INBOX, false},     {60, 1, INBOX | DIGEST, false}, /* not loud: not counted */
        {120, 2, PUSH | INBOX, false},   {180, 2, DIGEST | INBOX, true},
        {240, 3, PUSH | INBOX, false},                                   /* in progress passes */
        {3599, 2, DIGEST | INBOX, true}, {3600, 2, PUSH | INBOX, false}, /* a new hour */
        {3700, 2, PUSH | INBOX, false},  {3800, 2, DIGEST | INBOX, true},
    };
    for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
        Bb__Report rep = report(99, 0, P_LAT, P_LON, 1, seq[i].urgency, 1, t0 + seq[i].dt);
        assert_int_equal(route(f, &rep), BB_OK);
        unsigned got = chans(f->res, 1);
        const struct bb_explain_line *l = line_for(&f->ex, 1, UINT64_MAX);
        if (got != seq[i].want || ((l->notes & BB_NOTE_CAPPED) != 0) != seq[i].capped) {
            fail_msg("step %zu: channels %#x notes %#x, want %#x", i, got, l->notes, seq[i].want);
        }
        assert_int_equal(chans(f->res, 2), seq[i].urgency == 1 ? INBOX | DIGEST : PUSH | INBOX);
    }
}

/* ---- locales ----------------------------------------------------------------------------- */

static void test_locales(void **state)
{
    struct fx *f = *state;
    static const char *const locs[] = {"nl", "en", "de", "", "EN", "fr", "pl", "de"};
    static const char *const want[] = {"nl", "en", "de", "nl", "en", "fr", "pl", "de"};
    const size_t n = sizeof(locs) / sizeof(locs[0]);
    for (size_t i = 0; i < n; i++) {
        add_user_full(f->dir, 1 + i, P_LAT, P_LON, 300, NULL, locs[i], NULL);
    }
    Bb__Report rep = report(99, 0, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(f->res->recipients, n);
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            const struct bb_rlist *list = &f->res->lists[c][l];
            for (uint32_t k = 0; k < list->n; k++) {
                uint64_t id = list->ids[k];
                assert_true(id >= 1 && id <= n);
                assert_string_equal(bb_dir_locale_name(f->dir, l), want[id - 1]);
            }
        }
    }
    /* One list per locale: nl, en, de, fr, pl on push. */
    assert_int_equal(__builtin_popcount(f->res->used[0]), 5);
    assert_int_equal(f->res->used[0], f->res->used[2]);
    assert_int_equal(f->res->used[1], 0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(chans(f->res, 1 + i), PUSH | INBOX);
    }
}

/* ---- status updates ---------------------------------------------------------------------- */

static int follow(struct bb_dir *dir, uint64_t uid, const char *report_id)
{
    char why[64];
    return bb_dir_add_follow(dir, uid, report_id, why, sizeof(why));
}

static void test_status_updates(void **state)
{
    struct fx *f = *state;
    struct prefs_buf rp, f2p, f3p;
    prefs_init(&rp);
    prefs_channels(&rp, 1, PUSH);
    prefs_init(&f2p);
    prefs_categories(&f2p, 1u << 4); /* fire only: does not matter for a followed report */
    prefs_init(&f3p);
    prefs_quiet(&f3p, 1320, 420);
    prefs_channels(&f3p, 1, PUSH | INBOX);
    prefs_channels(&f3p, 3, PUSH | INBOX);
    add_user(f->dir, 1, FAR_LAT, FAR_LON, 0, &rp.p); /* the reporter */
    add_user(f->dir, 2, FAR_LAT, FAR_LON, 0, &f2p.p);
    add_user(f->dir, 3, FAR_LAT, FAR_LON, 0, &f3p.p);
    add_user(f->dir, 4, P_LAT, P_LON, 5000, NULL); /* follows another report */
    add_user(f->dir, 5, P_LAT, P_LON, 5000, NULL); /* nothing to do with it */
    assert_int_equal(follow(f->dir, 1, "rep-9"), BB_OK);
    assert_int_equal(follow(f->dir, 2, "rep-9"), BB_OK);
    assert_int_equal(follow(f->dir, 3, "rep-9"), BB_OK);
    assert_int_equal(follow(f->dir, 4, "rep-8"), BB_OK);

    Bb__ReportStatus st = BB__REPORT_STATUS__INIT;
    st.schema_version = 1;
    st.id = "st-1";
    st.report_id = "rep-9";
    st.time_ms = utc(f->year, 1, 15, 22, 0) * 1000; /* 23:00 in Amsterdam */
    st.status = BB__STATUS__STATUS_SUSPECT_ARRESTED;
    st.source = BB__SOURCE__SOURCE_POLICE;
    st.reporter_id = 1;
    st.category = BB__CATEGORY__CATEGORY_BURGLARY;
    const struct bb_route_result *res;
    assert_int_equal(bb_route_status(f->r, &st, &f->ex, &res), BB_OK);
    assert_int_equal(chans(res, 1), PUSH); /* informational: the reporter chose push */
    assert_int_equal(chans(res, 2), INBOX | DIGEST);
    assert_int_equal(chans(res, 3), DIGEST | INBOX); /* quiet: push moved to the digest */
    assert_int_equal(chans(res, 4), 0);
    assert_int_equal(chans(res, 5), 0);
    assert_int_equal(res->recipients, 3);
    expect_line(&f->ex, 1, 0, BB_ROUTE_REPORTER, BB_V_NOTIFIED);
    assert_int_equal(lines_for(&f->ex, 1), 1); /* the reporter also follows: once */
    expect_line(&f->ex, 2, 0, BB_ROUTE_FOLLOWER, BB_V_NOTIFIED);
    const struct bb_explain_line *l3 = line_for(&f->ex, 3, 0);
    assert_non_null(l3);
    assert_true(l3->notes & BB_NOTE_QUIET);

    /* In progress passes quiet hours. */
    st.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    assert_int_equal(bb_route_status(f->r, &st, &f->ex, &res), BB_OK);
    assert_int_equal(chans(res, 3), PUSH | INBOX);
    assert_int_equal(chans(res, 1), PUSH | INBOX);

    /* A status of a report nobody follows, with an unknown reporter, reaches nobody. */
    st.report_id = "rep-7";
    st.reporter_id = 12345;
    assert_int_equal(bb_route_status(f->r, &st, &f->ex, &res), BB_OK);
    assert_int_equal(res->recipients, 0);
    assert_int_equal(res->deliveries, 0);
}

/* ---- explanations ------------------------------------------------------------------------ */

static void test_explanations(void **state)
{
    struct fx *f = *state;
    const char *cell = cell_at(P_LAT, P_LON, 6);
    struct policy refuse = {.min_urgency = 3};
    struct prefs_buf cat, urg, none;
    prefs_init(&cat);
    prefs_categories(&cat, 1u << 4);
    prefs_init(&urg);
    urg.p.min_urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    prefs_init(&none);
    prefs_channels(&none, 2, 0);

    add_group(f->dir, 30, &cell, 1, &refuse, 0);  /* refused area group */
    add_user(f->dir, 1, P_LAT, P_LON, 500, NULL); /* the author */
    add_user(f->dir, 2, P_LAT, P_LON, 500, NULL); /* muted the author */
    add_mute(f->dir, 2, 1, 0);
    add_user(f->dir, 3, FAR_LAT, FAR_LON, 0, NULL); /* only in the refused group */
    add_member(f->dir, 3, 30);
    add_user(f->dir, 4, P_LAT, P_LON, 500, NULL); /* in the refused group, watch holds P */
    add_member(f->dir, 4, 30);
    add_user(f->dir, 5, P_LAT + 0.005, P_LON, 500, NULL); /* ~556 m away: outside */
    add_user(f->dir, 6, P_LAT, P_LON, 500, &cat.p);
    add_user(f->dir, 7, P_LAT, P_LON, 500, &urg.p);
    add_user(f->dir, 8, P_LAT, P_LON, 500, &none.p);

    Bb__Report rep = report(1, 0, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    expect_line(&f->ex, 1, UINT64_MAX, -1, BB_V_AUTHOR);
    expect_line(&f->ex, 2, UINT64_MAX, -1, BB_V_MUTED_AUTHOR);
    expect_line(&f->ex, 0, 30, BB_ROUTE_AREA, BB_V_POLICY_URGENCY);
    expect_line(&f->ex, 3, 30, BB_ROUTE_AREA, BB_V_POLICY_URGENCY);
    expect_line(&f->ex, 4, 0, BB_ROUTE_WATCH, BB_V_NOTIFIED);
    assert_int_equal(lines_for(&f->ex, 4), 1);
    expect_line(&f->ex, 5, 0, BB_ROUTE_WATCH, BB_V_OUTSIDE_RADIUS);
    expect_line(&f->ex, 6, 0, BB_ROUTE_WATCH, BB_V_PREF_CATEGORY);
    expect_line(&f->ex, 7, 0, BB_ROUTE_WATCH, BB_V_PREF_URGENCY);
    expect_line(&f->ex, 8, 0, BB_ROUTE_WATCH, BB_V_NO_CHANNEL);
    assert_int_equal(line_for(&f->ex, 4, 0)->channels, PUSH | INBOX);
    assert_int_equal(line_for(&f->ex, 8, 0)->channels, 0);
    assert_int_equal(f->res->recipients, 1);

    /* Names for the command line. */
    assert_string_equal(bb_verdict_name(BB_V_OUTSIDE_RADIUS), "outside_radius");
    assert_string_equal(bb_verdict_name(BB_V_POLICY_URGENCY), "policy_urgency");
    assert_string_equal(bb_verdict_name(BB_V_POLICY_CATEGORY), "policy_category");
    assert_string_equal(bb_verdict_name(BB_V_POLICY_SOURCE), "policy_source");
    assert_string_equal(bb_verdict_name(BB_V_NOTIFIED), "notified");
    assert_string_equal(bb_verdict_name(BB_V_COUNT), "?");
    assert_string_equal(bb_route_kind_name(BB_ROUTE_WATCH), "watch");
    assert_string_equal(bb_route_kind_name(BB_ROUTE_AREA), "area");
    assert_string_equal(bb_route_kind_name(0), "?");
    assert_string_equal(bb_channel_name(0), "push");
    assert_string_equal(bb_channel_name(3), "digest");
    assert_string_equal(bb_channel_name(5), "?");

    /* Routing without an explanation gives the same recipients. */
    const struct bb_route_result *res;
    assert_int_equal(bb_route_report(f->r, &rep, NULL, &res), BB_OK);
    assert_int_equal(res->recipients, 1);
    assert_int_equal(chans(res, 4), PUSH | INBOX);
}

/* ---- location precision and public accounts ---------------------------------------------- */

static void test_precision(void **state)
{
    struct fx *f = *state;
    add_group(f->dir, 1, NULL, 0, NULL, 9);
    add_group(f->dir, 2, NULL, 0, NULL, 0); /* the directory's default */
    Bb__Report rep = report(99, 1, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(f->res->precision, 9);
    rep.group_id = 2;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(f->res->precision, params.default_precision);
    assert_string_equal(f->res->group_name, "Groep 2");
    rep.group_id = 0;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(f->res->precision, params.default_precision);
    assert_string_equal(f->res->group_name, "");
}

static void test_social_groups(void **state)
{
    struct fx *f = *state;
    const char *cell = cell_at(P_LAT, P_LON, 6);
    struct policy pub = {.public_posting = true};
    add_group(f->dir, 1, NULL, 0, &pub, 0);  /* the report's group */
    add_group(f->dir, 2, &cell, 1, &pub, 0); /* area, public */
    add_group(f->dir, 3, &cell, 1, NULL, 0); /* area, not public */
    Bb__Report rep = report(99, 1, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(f->res->social.n, 2);
    uint64_t a = f->res->social.ids[0], b = f->res->social.ids[1];
    assert_true((a == 1 && b == 2) || (a == 2 && b == 1));
    assert_int_equal(f->res->recipients, 0); /* groups without members */
}

/* ---- regressions: bugs found by these tests, fixed in b966e8f ---------------------------- */

/* The directory's default_precision is the location shown for reports without a group
 * (directory.h); the router used to hard-code 7. */
static void test_default_precision_from_params(void **state)
{
    struct bb_dir_params p = params;
    p.default_precision = 5;
    struct fx *f = fx_new(&p);
    Bb__Report rep = report(99, 0, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    int got = f->res->precision;
    fx_free(f);
    assert_int_equal(got, 5);
}

/* A group whose cells nest (a cover mixing a district cell and one of its streets) used to be
 * expanded once per cell: its public account got the report twice. */
static void test_nested_cells_one_social_post(void **state)
{
    struct fx *f = *state;
    const char *cells[] = {cell_at(P_LAT, P_LON, 5), cell_at(P_LAT, P_LON, 7)};
    struct policy pub = {.public_posting = true};
    add_group(f->dir, 2, cells, 2, &pub, 0);
    add_user(f->dir, 1, FAR_LAT, FAR_LON, 0, NULL);
    add_member(f->dir, 1, 2);
    Bb__Report rep = report(99, 0, P_LAT, P_LON, 1, 2, 1, noon(f));
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), PUSH | INBOX);
    assert_int_equal(f->res->social.n, 1);
    assert_int_equal(lines_for(&f->ex, 1), 1);
}

/* An erased user's hourly counter used to be inherited by whoever got the slot next. */
static void test_cap_not_inherited_by_reused_slot(void **state)
{
    struct fx *f = *state;
    struct prefs_buf pb;
    prefs_init(&pb);
    pb.p.max_per_hour = 1;
    add_user(f->dir, 1, P_LAT, P_LON, 400, &pb.p);
    uint32_t s1;
    assert_non_null(bb_dir_user_find(f->dir, 1, &s1));
    int64_t t = utc(f->year, 2, 10, 9, 0);
    Bb__Report rep = report(99, 0, P_LAT, P_LON, 1, 2, 1, t);
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 1), PUSH | INBOX); /* 1 of 1 this hour */

    erase_user(f->dir, 1);
    bb_dir_reclaim_all(f->dir);
    add_user(f->dir, 2, P_LAT, P_LON, 400, &pb.p);
    uint32_t s2;
    assert_non_null(bb_dir_user_find(f->dir, 2, &s2));
    assert_int_equal(s2, s1); /* the slot was reused */
    rep.time_ms += 60000;
    assert_int_equal(route(f, &rep), BB_OK);
    assert_int_equal(chans(f->res, 2), PUSH | INBOX); /* a newcomer's first of the hour */
}

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_group_members, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_group, setup, teardown),
        cmocka_unit_test(test_area_groups_policy),
        cmocka_unit_test_setup_teardown(test_own_group_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_radius, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup_across_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_author_excluded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_muted_author, setup, teardown),
        cmocka_unit_test_setup_teardown(test_muted_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_preferences, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quiet_hours, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hourly_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locales, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_updates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_explanations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precision, setup, teardown),
        cmocka_unit_test_setup_teardown(test_social_groups, setup, teardown),
        cmocka_unit_test(test_default_precision_from_params),
        cmocka_unit_test_setup_teardown(test_nested_cells_one_social_post, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap_not_inherited_by_reused_slot, setup, teardown),
    };
    /* clang-format on */
    /* BB_TEST_FILTER=pattern runs only the matching tests (e.g. one at a time under ASan). */
    if (getenv("BB_TEST_FILTER")) {
        cmocka_set_test_filter(getenv("BB_TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
