/* Property test for broker/route.c: random populations (users, groups with geohash cells of
 * precision 4-7, watch areas, memberships, mutes, preferences, zones) and random reports,
 * routed by the router and by a brute-force reference written here from the documented rules
 * (route.h, directory.proto): every user and group is looked at for every report. The two
 * must agree on who gets which channels, in which locale, and which public accounts post.
 * Between batches of reports the population changes (moves, new preferences, memberships,
 * mutes, erasures), so the index is checked after updates too. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

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
#include "tz.h"

#define CENTRE_LAT 51.6978 /* 's-Hertogenbosch */
#define CENTRE_LON 5.3037
#define SPAN_LAT 0.06 /* about 6.7 km */
#define SPAN_LON 0.10 /* about 6.9 km */
#define MAX_USERS 600
#define MAX_GROUPS 80
#define MAX_MUTES 3
#define MAX_CELLS 4
#define FOREIGN_AUTHOR 900000 /* authors who are not users */
#define GROUP_BASE 10000

static const struct bb_dir_params params = {
    .default_precision = 7,
    .watch_max_cells = 8,
    .max_radius_m = 5000,
};

/* ---- random ------------------------------------------------------------------------------ */

static uint64_t rng;

static uint64_t next(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned below(unsigned n)
{
    return (unsigned)(next() % n);
}

static double uniform(double lo, double hi)
{
    return lo + (hi - lo) * ((double)(next() >> 11) / 9007199254740992.0);
}

static bool chance(unsigned percent)
{
    return below(100) < percent;
}

/* ---- the reference population ------------------------------------------------------------ */

static const char *const zone_names[] = {"",           "Europe/Amsterdam", "America/New_York",
                                         "Asia/Tokyo", "Europe/London",    "Australia/Sydney"};
#define NZONES (sizeof(zone_names) / sizeof(zone_names[0]))
static const char *const locale_names[] = {"", "nl", "en", "de", "fr", "EN"};
#define NLOCALES (sizeof(locale_names) / sizeof(locale_names[0]))

struct ref_user {
    bool live;
    uint64_t id;
    double lat, lon; /* as given */
    unsigned radius;
    unsigned zone, locale; /* indexes into the tables above */
    bool has_prefs;
    unsigned cats; /* categories listed (bits); 0: none listed */
    unsigned min_urgency;
    int chan_set[3]; /* -1: unset; else a mask of Channel numbers (bit n = Channel n) */
    unsigned quiet_from, quiet_to;
    bool has_quiet;
    unsigned max_per_hour;
    uint64_t muted_authors[MAX_MUTES];
    unsigned nmuted_authors;
    uint64_t muted_groups[MAX_MUTES];
    unsigned nmuted_groups;
    /* the cap, as the reference keeps it */
    int64_t cap_hour;
    unsigned cap_count;
};

struct ref_group {
    uint64_t id;
    char cells[MAX_CELLS][13];
    unsigned ncells;
    unsigned cats;    /* listed categories; 0: all */
    unsigned sources; /* listed sources; 0: all */
    unsigned min_urgency;
    bool public_posting;
    unsigned precision;
    bool member[MAX_USERS];
};

struct world {
    struct bb_dir *dir;
    struct bb_router *router;
    struct bb_tz *zones[NZONES];
    struct ref_user users[MAX_USERS];
    unsigned nusers;
    struct ref_group groups[MAX_GROUPS];
    unsigned ngroups;
};

/* ---- building directory input from the reference ----------------------------------------- */

/* New settings for u; its id and its hourly count stay (the directory keeps the counter of a
 * slot across upserts). */
static void random_user(struct ref_user *u)
{
    uint64_t id = u->id;
    int64_t cap_hour = u->live ? u->cap_hour : -1;
    unsigned cap_count = u->live ? u->cap_count : 0;
    memset(u, 0, sizeof(*u));
    u->live = true;
    u->id = id;
    u->lat = CENTRE_LAT + uniform(-SPAN_LAT, SPAN_LAT) / 2;
    u->lon = CENTRE_LON + uniform(-SPAN_LON, SPAN_LON) / 2;
    u->radius = chance(80) ? 100 + below(1901) : 0;
    u->zone = below(NZONES);
    u->locale = below(NLOCALES);
    u->cap_hour = cap_hour;
    u->cap_count = cap_count;
    u->has_prefs = chance(65);
    for (int i = 0; i < 3; i++) {
        u->chan_set[i] = -1;
    }
    if (u->has_prefs) {
        if (chance(40)) {
            u->cats = 0;
            for (unsigned c = 1; c <= 10; c++) {
                u->cats |= chance(50) ? 1u << c : 0;
            }
        }
        u->min_urgency = below(4);
        for (int i = 0; i < 3; i++) {
            if (chance(50)) {
                /* Channel numbers 1..5; social (5) is not a personal channel. */
                u->chan_set[i] = (int)(below(64) & 0x3e);
            }
        }
        if (chance(50)) {
            u->has_quiet = true;
            u->quiet_from = below(1440);
            u->quiet_to = chance(10) ? u->quiet_from : below(1440);
        }
        u->max_per_hour = chance(30) ? 1 + below(3) : 0;
    }
    if (chance(15)) {
        u->nmuted_authors = 1 + below(MAX_MUTES);
        for (unsigned i = 0; i < u->nmuted_authors; i++) {
            u->muted_authors[i] = chance(80) ? 1 + below(MAX_USERS) : FOREIGN_AUTHOR + below(20);
        }
    }
    if (chance(15)) {
        u->nmuted_groups = 1 + below(MAX_MUTES);
        for (unsigned i = 0; i < u->nmuted_groups; i++) {
            u->muted_groups[i] = GROUP_BASE + 1 + below(MAX_GROUPS);
        }
    }
}

static void upsert_user(struct world *w, const struct ref_user *r)
{
    Bb__User u = BB__USER__INIT;
    Bb__WatchArea wa = BB__WATCH_AREA__INIT;
    Bb__Preferences p = BB__PREFERENCES__INIT;
    Bb__QuietHours q = BB__QUIET_HOURS__INIT;
    Bb__ChannelSet cs[3];
    Bb__Channel ch[3][8];
    Bb__Category cats[16];
    u.id = r->id;
    wa.lat = r->lat;
    wa.lon = r->lon;
    wa.radius_m = r->radius;
    u.watch = &wa;
    u.time_zone = (char *)zone_names[r->zone];
    u.locale = (char *)locale_names[r->locale];
    if (r->has_prefs) {
        for (unsigned c = 1; c <= 15; c++) {
            if (r->cats & (1u << c)) {
                cats[p.n_categories++] = (Bb__Category)c;
            }
        }
        p.categories = cats;
        p.min_urgency = (Bb__Urgency)r->min_urgency;
        Bb__ChannelSet **slot[3] = {&p.informational, &p.recent, &p.in_progress};
        for (int i = 0; i < 3; i++) {
            if (r->chan_set[i] < 0) {
                continue;
            }
            bb__channel_set__init(&cs[i]);
            cs[i].channels = ch[i];
            for (unsigned c = 1; c <= 5; c++) {
                if (r->chan_set[i] & (1 << c)) {
                    ch[i][cs[i].n_channels++] = (Bb__Channel)c;
                }
            }
            *slot[i] = &cs[i];
        }
        if (r->has_quiet) {
            q.from_minute = r->quiet_from;
            q.to_minute = r->quiet_to;
            p.quiet = &q;
        }
        p.max_per_hour = r->max_per_hour;
        u.prefs = &p;
    }
    u.muted_authors = (uint64_t *)r->muted_authors;
    u.n_muted_authors = r->nmuted_authors;
    u.muted_groups = (uint64_t *)r->muted_groups;
    u.n_muted_groups = r->nmuted_groups;
    char why[64] = "";
    int rc = bb_dir_upsert_user(w->dir, &u, why, sizeof(why));
    if (rc != BB_OK) {
        fail_msg("user %llu: %s", (unsigned long long)r->id, why);
    }
}

/* A group's area: up to MAX_CELLS distinct cells of precision 4..7. They may nest (a district
 * cell listed with one of its streets): the group still reaches its members, and posts, once. */
static void random_group(struct ref_group *g)
{
    g->ncells = 0;
    unsigned want = below(MAX_CELLS + 1);
    for (unsigned i = 0; i < want; i++) {
        bb_cell c = bb_geohash_encode(CENTRE_LAT + uniform(-SPAN_LAT, SPAN_LAT) / 2,
                                      CENTRE_LON + uniform(-SPAN_LON, SPAN_LON) / 2, 4 + below(4));
        bb_geohash_format(c, g->cells[g->ncells++]);
    }
    g->cats = 0;
    if (chance(40)) {
        while (!g->cats) {
            for (unsigned c = 1; c <= 10; c++) {
                g->cats |= chance(50) ? 1u << c : 0;
            }
        }
    }
    g->sources = 0;
    if (chance(30)) {
        while (!g->sources) {
            for (unsigned s = 1; s <= 5; s++) {
                g->sources |= chance(50) ? 1u << s : 0;
            }
        }
    }
    g->min_urgency = below(4);
    g->public_posting = chance(30);
    g->precision = chance(50) ? 0 : 5 + below(5);
}

static void upsert_group(struct world *w, const struct ref_group *r)
{
    Bb__Group g = BB__GROUP__INIT;
    Bb__Policy p = BB__POLICY__INIT;
    Bb__Category cats[16];
    Bb__Source srcs[8];
    char *cells[MAX_CELLS];
    for (unsigned i = 0; i < r->ncells; i++) {
        cells[i] = (char *)r->cells[i];
    }
    for (unsigned c = 1; c <= 15; c++) {
        if (r->cats & (1u << c)) {
            cats[p.n_categories++] = (Bb__Category)c;
        }
    }
    for (unsigned s = 1; s <= 7; s++) {
        if (r->sources & (1u << s)) {
            srcs[p.n_sources++] = (Bb__Source)s;
        }
    }
    p.categories = cats;
    p.sources = srcs;
    p.min_urgency = (Bb__Urgency)r->min_urgency;
    p.public_posting = r->public_posting;
    g.id = r->id;
    g.name = "g";
    g.cells = cells;
    g.n_cells = r->ncells;
    g.policy = &p;
    g.location_precision = r->precision;
    char why[64] = "";
    if (bb_dir_upsert_group(w->dir, &g, why, sizeof(why)) != BB_OK) {
        fail_msg("group %llu: %s", (unsigned long long)r->id, why);
    }
}

static void membership(struct world *w, unsigned ui, unsigned gi, bool add)
{
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    Bb__Membership m = BB__MEMBERSHIP__INIT;
    char why[64] = "";
    m.user_id = w->users[ui].id;
    m.group_id = w->groups[gi].id;
    ev.change_case =
        add ? BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD : BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE;
    ev.member_add = &m; /* a oneof: the same storage */
    assert_int_equal(bb_dir_apply(w->dir, &ev, why, sizeof(why)), BB_OK);
    w->groups[gi].member[ui] = add;
}

static void erase(struct world *w, unsigned ui)
{
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    char why[64] = "";
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
    ev.user_erase = w->users[ui].id;
    assert_int_equal(bb_dir_apply(w->dir, &ev, why, sizeof(why)), BB_OK);
    w->users[ui].live = false;
    for (unsigned g = 0; g < w->ngroups; g++) {
        w->groups[g].member[ui] = false;
    }
}

/* A mute event: the user's list gains (or loses) one author or group. */
static void mute_event(struct world *w, unsigned ui, uint64_t author, uint64_t group, bool on)
{
    struct ref_user *u = &w->users[ui];
    uint64_t *list = author ? u->muted_authors : u->muted_groups;
    unsigned *n = author ? &u->nmuted_authors : &u->nmuted_groups;
    uint64_t target = author ? author : group;
    unsigned k = 0;
    for (unsigned i = 0; i < *n; i++) {
        if (list[i] != target) {
            list[k++] = list[i];
        }
    }
    if (on) {
        if (k == MAX_MUTES) {
            return; /* the reference keeps at most MAX_MUTES */
        }
        list[k++] = target;
    }
    *n = k;
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    Bb__Mute m = BB__MUTE__INIT;
    char why[64] = "";
    m.user_id = u->id;
    m.author_id = author;
    m.group_id = group;
    ev.change_case = on ? BB__DIRECTORY_EVENT__CHANGE_MUTE : BB__DIRECTORY_EVENT__CHANGE_UNMUTE;
    ev.mute = &m;
    assert_int_equal(bb_dir_apply(w->dir, &ev, why, sizeof(why)), BB_OK);
}

static void world_build(struct world *w, unsigned nusers, unsigned ngroups, bool users_first)
{
    memset(w, 0, sizeof(*w));
    w->dir = bb_dir_new(&params);
    assert_non_null(w->dir);
    w->router = bb_router_new(w->dir);
    assert_non_null(w->router);
    int64_t now = (int64_t)time(NULL);
    for (unsigned z = 0; z < NZONES; z++) {
        /* The directory loads zones for [now - 2 days, now + ~3 years]; so do we. */
        w->zones[z] = bb_tz_load(z ? zone_names[z] : "Europe/Amsterdam", now - 2 * 86400,
                                 now + 3 * 366 * 86400LL);
        assert_non_null(w->zones[z]);
    }
    /* With users first, their mutes of groups not there yet must hold once the groups come (a
     * directory event stream can be in that order). */
    w->ngroups = ngroups;
    w->nusers = nusers;
    for (int pass = 0; pass < 2; pass++) {
        if ((pass == 0) == users_first) {
            for (unsigned i = 0; i < nusers; i++) {
                w->users[i].id = i + 1;
                random_user(&w->users[i]);
                upsert_user(w, &w->users[i]);
            }
        } else {
            for (unsigned g = 0; g < ngroups; g++) {
                w->groups[g].id = GROUP_BASE + 1 + g;
                random_group(&w->groups[g]);
                upsert_group(w, &w->groups[g]);
            }
        }
    }
    for (unsigned i = 0; i < nusers; i++) {
        unsigned k = below(4);
        for (unsigned j = 0; j < k; j++) {
            membership(w, i, below(ngroups), true);
        }
    }
}

static void world_free(struct world *w)
{
    bb_dir_reclaim_all(w->dir);
    bb_router_free(w->router);
    bb_dir_free(w->dir);
    for (unsigned z = 0; z < NZONES; z++) {
        bb_tz_free(w->zones[z]);
    }
}

/* Changes between batches of reports, applied to both. */
static void world_churn(struct world *w, unsigned n)
{
    for (unsigned k = 0; k < n; k++) {
        unsigned ui = below(w->nusers), gi = below(w->ngroups);
        struct ref_user *u = &w->users[ui];
        switch (below(8)) {
        case 0:
        case 1: /* new settings, maybe a move (erased ids never come back) */
            if (u->live) {
                random_user(u);
                upsert_user(w, u);
            }
            break;
        case 2:
            if (u->live) {
                membership(w, ui, gi, true);
            }
            break;
        case 3:
            if (u->live) {
                membership(w, ui, gi, false);
            }
            break;
        case 4:
            random_group(&w->groups[gi]);
            upsert_group(w, &w->groups[gi]);
            break;
        case 5:
            if (u->live) {
                mute_event(w, ui, 0, w->groups[gi].id, chance(60));
            }
            break;
        case 6:
            if (u->live) {
                mute_event(w, ui, 1 + below(w->nusers), 0, chance(60));
            }
            break;
        default:
            if (u->live && chance(30)) {
                erase(w, ui);
            }
            break;
        }
    }
    bb_dir_reclaim(w->dir);
}

/* ---- the reference router ---------------------------------------------------------------- */

struct expect {
    uint8_t chans[MAX_USERS];
    bool social[MAX_GROUPS];
};

static unsigned channel_bits(int set, unsigned def)
{
    if (set < 0) {
        return def;
    }
    unsigned bits = 0;
    for (unsigned c = 1; c <= 4; c++) { /* push, e-mail, inbox, digest */
        bits |= set & (1 << c) ? 1u << (c - 1) : 0;
    }
    return bits;
}

static bool group_admits(const struct ref_group *g, const Bb__Report *rep)
{
    unsigned urgency = rep->urgency ? rep->urgency : 1;
    unsigned min = g->min_urgency ? g->min_urgency : 1;
    return (!g->cats || (g->cats & (1u << rep->category))) && urgency >= min &&
           (!g->sources || (g->sources & (1u << rep->source)));
}

static bool area_holds(const struct ref_group *g, double lat, double lon)
{
    for (unsigned i = 0; i < g->ncells; i++) {
        bb_cell c;
        assert_int_equal(bb_geohash_parse(g->cells[i], strlen(g->cells[i]), &c), BB_OK);
        if (bb_geohash_encode(lat, lon, bb_cell_precision(c)) == c) {
            return true;
        }
    }
    return false;
}

static bool listed(const uint64_t *list, unsigned n, uint64_t id)
{
    for (unsigned i = 0; i < n; i++) {
        if (list[i] == id) {
            return true;
        }
    }
    return false;
}

static bool quiet_now(const struct world *w, const struct ref_user *u, int64_t t)
{
    if (!u->has_quiet || u->quiet_from == u->quiet_to) {
        return false;
    }
    int64_t local = t + bb_tz_offset_s(w->zones[u->zone], t);
    unsigned minute = (unsigned)(((local % 86400) + 86400) % 86400 / 60);
    if (u->quiet_from < u->quiet_to) {
        return minute >= u->quiet_from && minute < u->quiet_to;
    }
    return minute >= u->quiet_from || minute < u->quiet_to;
}

static unsigned channels_for(struct world *w, struct ref_user *u, const Bb__Report *rep)
{
    unsigned urgency = rep->urgency ? rep->urgency : 1;
    if (u->cats && !(u->cats & (1u << rep->category))) {
        return 0;
    }
    if (urgency < (u->min_urgency ? u->min_urgency : 1)) {
        return 0;
    }
    static const unsigned defaults[3] = {BB_CH_INBOX | BB_CH_DIGEST, BB_CH_PUSH | BB_CH_INBOX,
                                         BB_CH_PUSH | BB_CH_INBOX};
    unsigned ch = channel_bits(u->chan_set[urgency - 1], defaults[urgency - 1]);
    int64_t t = rep->time_ms / 1000;
    if ((ch & (BB_CH_PUSH | BB_CH_EMAIL)) && urgency != 3) {
        bool hold = quiet_now(w, u, t);
        if (!hold && u->max_per_hour) {
            int64_t hour = t / 3600;
            if (u->cap_hour != hour) {
                u->cap_hour = hour;
                u->cap_count = 0;
            }
            hold = u->cap_count >= u->max_per_hour;
            u->cap_count += !hold;
        }
        if (hold) {
            ch = (ch & ~(unsigned)(BB_CH_PUSH | BB_CH_EMAIL)) | BB_CH_DIGEST;
        }
    }
    return ch;
}

static int reference(struct world *w, const Bb__Report *rep, struct expect *ex)
{
    memset(ex, 0, sizeof(*ex));
    const struct ref_group *own = NULL;
    if (rep->group_id) {
        for (unsigned g = 0; g < w->ngroups; g++) {
            own = w->groups[g].id == rep->group_id ? &w->groups[g] : own;
        }
        if (!own) {
            return BB_ENOTFOUND;
        }
    }
    bool out[MAX_USERS], in[MAX_USERS];
    float plat = (float)rep->lat, plon = (float)rep->lon;
    for (unsigned i = 0; i < w->nusers; i++) {
        const struct ref_user *u = &w->users[i];
        out[i] = !u->live || u->id == rep->author_id ||
                 listed(u->muted_authors, u->nmuted_authors, rep->author_id) ||
                 (own && listed(u->muted_groups, u->nmuted_groups, own->id));
        in[i] = u->radius &&
                bb_distance_fast_m(plat, plon, (float)u->lat, (float)u->lon) <= (float)u->radius;
    }
    for (unsigned g = 0; g < w->ngroups; g++) {
        const struct ref_group *gr = &w->groups[g];
        bool reaches = gr == own || area_holds(gr, rep->lat, rep->lon);
        if (!reaches || !group_admits(gr, rep)) {
            continue;
        }
        ex->social[g] = gr->public_posting;
        for (unsigned i = 0; i < w->nusers; i++) {
            const struct ref_user *u = &w->users[i];
            in[i] |=
                gr->member[i] && (gr == own || !listed(u->muted_groups, u->nmuted_groups, gr->id));
        }
    }
    for (unsigned i = 0; i < w->nusers; i++) {
        if (in[i] && !out[i]) {
            ex->chans[i] = (uint8_t)channels_for(w, &w->users[i], rep);
        }
    }
    return BB_OK;
}

/* ---- the comparison ---------------------------------------------------------------------- */

static const char *want_locale(const struct ref_user *u)
{
    static const char *const norm[NLOCALES] = {"nl", "nl", "en", "de", "fr", "en"};
    return norm[u->locale];
}

struct tally {
    unsigned reports, notfound, recipients, deliveries, social, mismatches;
};

static void compare(struct world *w, const Bb__Report *rep, unsigned seq, struct tally *t)
{
    struct expect ex;
    const struct bb_route_result *res;
    int want_rc = reference(w, rep, &ex);
    int rc = bb_route_report(w->router, rep, NULL, &res);
    assert_int_equal(rc, want_rc);
    t->reports++;
    if (rc == BB_ENOTFOUND) {
        t->notfound++;
        return;
    }
    assert_int_equal(rc, BB_OK);

    uint8_t got[MAX_USERS] = {0};
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            const struct bb_rlist *list = &res->lists[c][l];
            assert_int_equal(list->n != 0, (res->used[c] >> l) & 1);
            for (uint32_t k = 0; k < list->n; k++) {
                uint64_t id = list->ids[k];
                assert_true(id >= 1 && id <= w->nusers);
                if (got[id - 1] & (1u << c)) {
                    fail_msg("report %u: user %llu twice on %s", seq, (unsigned long long)id,
                             bb_channel_name(c));
                }
                got[id - 1] |= (uint8_t)(1u << c);
                assert_string_equal(bb_dir_locale_name(w->dir, l), want_locale(&w->users[id - 1]));
            }
        }
    }
    unsigned recipients = 0, deliveries = 0;
    for (unsigned i = 0; i < w->nusers; i++) {
        recipients += ex.chans[i] != 0;
        deliveries += (unsigned)__builtin_popcount(ex.chans[i]);
        if (got[i] != ex.chans[i]) {
            if (t->mismatches++ < 5) {
                const struct ref_user *u = &w->users[i];
                print_error("report %u (%.5f,%.5f cat %d urg %d src %d group %llu author %llu "
                            "t %lld): user %llu got %#x want %#x (radius %u at %.1f m)\n",
                            seq, rep->lat, rep->lon, rep->category, rep->urgency, rep->source,
                            (unsigned long long)rep->group_id, (unsigned long long)rep->author_id,
                            (long long)rep->time_ms / 1000, (unsigned long long)u->id, got[i],
                            ex.chans[i], u->radius,
                            (double)bb_distance_fast_m((float)rep->lat, (float)rep->lon,
                                                       (float)u->lat, (float)u->lon));
            }
        }
    }
    assert_int_equal(res->recipients, recipients);
    assert_int_equal(res->deliveries, deliveries);
    t->recipients += recipients;
    t->deliveries += deliveries;

    bool social[MAX_GROUPS] = {false};
    for (uint32_t k = 0; k < res->social.n; k++) {
        uint64_t gid = res->social.ids[k];
        assert_true(gid > GROUP_BASE && gid <= GROUP_BASE + w->ngroups);
        if (social[gid - GROUP_BASE - 1]) {
            fail_msg("report %u: group %llu posted twice", seq, (unsigned long long)gid);
        }
        social[gid - GROUP_BASE - 1] = true;
    }
    for (unsigned g = 0; g < w->ngroups; g++) {
        if (social[g] != ex.social[g]) {
            fail_msg("report %u: group %llu public post %d, want %d", seq,
                     (unsigned long long)w->groups[g].id, social[g], ex.social[g]);
        }
    }
    t->social += res->social.n;
}

static int64_t year_start_utc(void)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    struct tm y = {0};
    y.tm_year = tm.tm_year + 1; /* next year: inside every zone's window */
    y.tm_mday = 1;
    return (int64_t)timegm(&y);
}

static void random_report(struct world *w, Bb__Report *rep, int64_t t_s)
{
    bb__report__init(rep);
    rep->schema_version = 1;
    rep->id = "prop";
    rep->time_ms = t_s * 1000 + below(1000);
    /* Authors: users (live ones: an erased author's mutes are dropped with them) or not. */
    unsigned ui = below(w->nusers);
    rep->author_id = chance(75) && w->users[ui].live ? w->users[ui].id : FOREIGN_AUTHOR + below(20);
    unsigned r = below(100);
    rep->group_id = r < 35 ? w->groups[below(w->ngroups)].id : r < 37 ? GROUP_BASE + 999 : 0;
    /* Most reports inside the populated area, some at its edge and beyond. */
    double spread = chance(85) ? 1.0 : 1.6;
    rep->lat = CENTRE_LAT + uniform(-SPAN_LAT, SPAN_LAT) / 2 * spread;
    rep->lon = CENTRE_LON + uniform(-SPAN_LON, SPAN_LON) / 2 * spread;
    rep->category = (Bb__Category)(1 + below(10));
    rep->urgency = (Bb__Urgency)(1 + below(3));
    rep->source = (Bb__Source)(1 + below(5));
    rep->locale = "nl";
}

struct prop_case {
    uint64_t seed;
    unsigned users, groups, reports;
};

static const struct prop_case prop_cases[] = {
    {1, 300, 40, 1000},       {7, 400, 50, 1000},  {20261128, 500, 60, 1000},
    {0xb00b5, 600, 80, 1000}, {42, 200, 20, 1000},
};

static void test_router_matches_reference(void **state)
{
    int64_t year = year_start_utc();
    for (size_t k = 0; k < sizeof(prop_cases) / sizeof(prop_cases[0]); k++) {
        const struct prop_case *pc = &prop_cases[k];
        struct world *w = calloc(1, sizeof(*w));
        assert_non_null(w);
        rng = pc->seed;
        world_build(w, pc->users, pc->groups, pc->seed & 1);
        struct tally t = {0};
        /* Time only moves forward: runs of reports minutes apart (the cap), and jumps to other
         * days of the year (zones, DST). */
        int64_t now = year + below(30) * 86400;
        for (unsigned i = 0; i < pc->reports; i++) {
            if (i % 50 == 49) {
                world_churn(w, 20);
            }
            now += chance(3) ? below(20 * 86400) : below(900);
            Bb__Report rep;
            random_report(w, &rep, now);
            compare(w, &rep, i, &t);
        }
        print_message("seed %llu: %u reports (%u to unknown groups), %u recipients, "
                      "%u deliveries, %u public posts\n",
                      (unsigned long long)pc->seed, t.reports, t.notfound, t.recipients,
                      t.deliveries, t.social);
        world_free(w);
        free(w);
        if (t.mismatches) {
            fail_msg("seed %llu: %u users routed differently", (unsigned long long)pc->seed,
                     t.mismatches);
        }
        /* The reports reached people: the comparison was not vacuous. */
        assert_true(t.recipients > t.reports);
        assert_true(t.social > 0);
    }
}

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_matches_reference),
    };
    /* clang-format on */
    /* BB_TEST_FILTER=pattern runs only the matching tests (e.g. one at a time under ASan). */
    if (getenv("BB_TEST_FILTER")) {
        cmocka_set_test_filter(getenv("BB_TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
