/* Integration tests for broker/snapshot.c and buurtbusctl against a real
 * redis-server started by the harness: the store's key writes and refusals,
 * the snapshot load into a routing index, convergence of snapshot + stream
 * tail while another client writes, connecting, and the built buurtbusctl
 * (load, post, route --json, dead --json, usage and connection errors).
 *
 * One redis-server for the whole program; every test starts with
 * FLUSHALL. Main thread, except the convergence test's writer thread, which
 * has its own connection. Argument: a cmocka test filter ("snap_*",
 * "ctl_*"). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "geohash.h"
#include "harness.h"
#include "report.pb-c.h"
#include "snapshot.h"
#include "tz.h"

#ifndef BB_CTL_PATH
#error "BB_CTL_PATH must name the built buurtbusctl"
#endif

static const struct bb_dir_params params = {
    .default_precision = 7,
    .watch_max_cells = 8,
    .max_radius_m = 5000,
};

static const struct bb_redis_server *srv;
static redisContext *rc;

/* ---- Redis helpers ----------------------------------------------------------------------- */

static void flush_all(void)
{
    redisReply *r = redisCommand(rc, "FLUSHALL");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

static long long r_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_INTEGER) {
        fail_msg("%s: not an integer reply (%s)", fmt, r->type == REDIS_REPLY_ERROR ? r->str : "");
    }
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void r_ok(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR) {
        fail_msg("%s: %s", fmt, r->str);
    }
    freeReplyObject(r);
}

/* ---- event builders ---------------------------------------------------------------------- */

struct evbuf {
    Bb__DirectoryEvent ev;
    Bb__User user;
    Bb__WatchArea watch;
    Bb__Preferences prefs;
    Bb__QuietHours quiet;
    Bb__ChannelSet cs;
    Bb__Channel chans[4];
    Bb__Category cats[4];
    uint64_t muted_a[8], muted_g[8];
    Bb__Group group;
    Bb__Policy policy;
    char *cells[4];
    Bb__Source sources[4];
    Bb__Membership m;
    Bb__PreferencesUpdate pu;
    Bb__Mute mute;
    Bb__Follow follow;
    char report[24];
    char name[32];
};

static Bb__DirectoryEvent *ev_init(struct evbuf *b)
{
    memset(b, 0, sizeof(*b));
    bb__directory_event__init(&b->ev);
    b->ev.schema_version = 1;
    return &b->ev;
}

static Bb__DirectoryEvent *ev_user(struct evbuf *b, uint64_t id, double lat, double lon,
                                   unsigned radius)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    bb__user__init(&b->user);
    bb__watch_area__init(&b->watch);
    b->user.id = id;
    snprintf(b->name, sizeof(b->name), "buur%" PRIu64, id);
    b->user.screen_name = b->name;
    b->user.locale = "nl";
    b->user.time_zone = "Europe/Amsterdam";
    b->watch.lat = lat;
    b->watch.lon = lon;
    b->watch.radius_m = radius;
    b->user.watch = &b->watch;
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
    ev->user_upsert = &b->user;
    return ev;
}

static Bb__DirectoryEvent *ev_group(struct evbuf *b, uint64_t id, const char *const *cells,
                                    size_t n)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    bb__group__init(&b->group);
    bb__policy__init(&b->policy);
    b->group.id = id;
    snprintf(b->name, sizeof(b->name), "Buurt %" PRIu64, id);
    b->group.name = b->name;
    for (size_t i = 0; i < n && i < 4; i++) {
        b->cells[i] = (char *)cells[i];
    }
    b->group.cells = b->cells;
    b->group.n_cells = n;
    b->cats[0] = BB__CATEGORY__CATEGORY_BURGLARY;
    b->cats[1] = BB__CATEGORY__CATEGORY_FIRE;
    b->policy.categories = b->cats;
    b->policy.n_categories = 2;
    b->policy.min_urgency = BB__URGENCY__URGENCY_RECENT;
    b->group.policy = &b->policy;
    b->group.location_precision = 6;
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
    ev->group_upsert = &b->group;
    return ev;
}

static Bb__DirectoryEvent *ev_member(struct evbuf *b, uint64_t u, uint64_t g, bool add)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    bb__membership__init(&b->m);
    b->m.user_id = u;
    b->m.group_id = g;
    ev->change_case =
        add ? BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD : BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE;
    if (add) {
        ev->member_add = &b->m;
    } else {
        ev->member_remove = &b->m;
    }
    return ev;
}

static Bb__DirectoryEvent *ev_prefs(struct evbuf *b, uint64_t u, Bb__Category cat, Bb__Urgency min)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    bb__preferences_update__init(&b->pu);
    bb__preferences__init(&b->prefs);
    bb__quiet_hours__init(&b->quiet);
    b->cats[0] = cat;
    b->prefs.categories = b->cats;
    b->prefs.n_categories = 1;
    b->prefs.min_urgency = min;
    b->quiet.from_minute = 22 * 60;
    b->quiet.to_minute = 7 * 60;
    b->prefs.quiet = &b->quiet;
    b->prefs.max_per_hour = 3;
    b->pu.user_id = u;
    b->pu.prefs = &b->prefs;
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_PREFERENCES;
    ev->preferences = &b->pu;
    return ev;
}

static Bb__DirectoryEvent *ev_mute(struct evbuf *b, uint64_t u, uint64_t author, uint64_t group,
                                   bool on)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    bb__mute__init(&b->mute);
    b->mute.user_id = u;
    b->mute.author_id = author;
    b->mute.group_id = group;
    ev->change_case = on ? BB__DIRECTORY_EVENT__CHANGE_MUTE : BB__DIRECTORY_EVENT__CHANGE_UNMUTE;
    if (on) {
        ev->mute = &b->mute;
    } else {
        ev->unmute = &b->mute;
    }
    return ev;
}

static Bb__DirectoryEvent *ev_follow(struct evbuf *b, uint64_t u, const char *report, bool on)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    bb__follow__init(&b->follow);
    snprintf(b->report, sizeof(b->report), "%s", report);
    b->follow.user_id = u;
    b->follow.report_id = b->report;
    ev->change_case =
        on ? BB__DIRECTORY_EVENT__CHANGE_FOLLOW : BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW;
    if (on) {
        ev->follow = &b->follow;
    } else {
        ev->unfollow = &b->follow;
    }
    return ev;
}

static Bb__DirectoryEvent *ev_erase(struct evbuf *b, uint64_t u)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
    ev->user_erase = u;
    return ev;
}

static Bb__DirectoryEvent *ev_delete_group(struct evbuf *b, uint64_t g)
{
    Bb__DirectoryEvent *ev = ev_init(b);
    ev->change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE;
    ev->group_delete = g;
    return ev;
}

static void store_ok(const Bb__DirectoryEvent *ev)
{
    char err[256] = "";
    int r = bb_store_apply(rc, ev, err, sizeof(err));
    if (r != BB_OK) {
        fail_msg("bb_store_apply: %s (%s)", bb_strerror(r), err);
    }
}

static void store_refused(const Bb__DirectoryEvent *ev, const char *reason)
{
    char err[256] = "";
    assert_int_equal(bb_store_apply(rc, ev, err, sizeof(err)), BB_EINVAL);
    assert_string_equal(err, reason);
}

/* ---- index helpers ----------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* User ids of a slot list, sorted; returns how many. */
static size_t user_ids(const struct bb_dir *dir, const struct bb_slots *s, uint64_t *out,
                       size_t cap)
{
    size_t n = 0;
    for (uint32_t i = 0; s && i < s->n && n < cap; i++) {
        const struct bb_user *u = bb_dir_user_at(dir, s->v[i]);
        assert_non_null(u);
        out[n++] = u->id;
    }
    qsort(out, n, sizeof(*out), cmp_u64);
    return n;
}

static size_t group_ids(const struct bb_dir *dir, const struct bb_slots *s, uint64_t *out,
                        size_t cap)
{
    size_t n = 0;
    for (uint32_t i = 0; s && i < s->n && n < cap; i++) {
        const struct bb_group *g = bb_dir_group_at(dir, s->v[i]);
        assert_non_null(g);
        out[n++] = g->id;
    }
    qsort(out, n, sizeof(*out), cmp_u64);
    return n;
}

static void assert_ids(const uint64_t *got, size_t n, const uint64_t *want, size_t nwant)
{
    if (n != nwant || memcmp(got, want, n * sizeof(uint64_t)) != 0) {
        char a[256] = "", b[256] = "";
        for (size_t i = 0; i < n; i++) {
            snprintf(a + strlen(a), sizeof(a) - strlen(a), " %" PRIu64, got[i]);
        }
        for (size_t i = 0; i < nwant; i++) {
            snprintf(b + strlen(b), sizeof(b) - strlen(b), " %" PRIu64, want[i]);
        }
        fail_msg("ids:%s, expected:%s", a, b);
    }
}

#define ASSERT_MEMBERS(dir, gid, ...)                                                              \
    do {                                                                                           \
        const uint64_t want_[] = {__VA_ARGS__};                                                    \
        uint64_t got_[64];                                                                         \
        uint32_t gs_;                                                                              \
        const struct bb_group *g_ = bb_dir_group_find(dir, gid, &gs_);                             \
        assert_non_null(g_);                                                                       \
        size_t n_ = user_ids(dir, bb_group_members(g_), got_, 64);                                 \
        assert_ids(got_, n_, want_, sizeof(want_) / sizeof(want_[0]));                             \
    } while (0)

static struct bb_dir *load(struct bb_snapshot_stats *st, char *last_id)
{
    char err[256] = "";
    struct bb_dir *dir = bb_dir_new(&params);
    assert_non_null(dir);
    int r = bb_snapshot_load(rc, dir, last_id, BB_STREAM_ID_MAX, st, err, sizeof(err));
    if (r != BB_OK) {
        fail_msg("bb_snapshot_load: %s", err);
    }
    return dir;
}

/* ---- store and load ---------------------------------------------------------------------- */

static const char *const cells10[] = {"u1hbc", "u1hbf"};
static const char *const cells11[] = {"u1hb9"};
static const char *const cells12[] = {"u1hbd"};

static void snap_store_and_load(void **state)
{
    struct evbuf b;
    flush_all();
    store_ok(ev_user(&b, 1, 51.69, 5.30, 500));
    store_ok(ev_user(&b, 2, 51.70, 5.31, 0));
    store_ok(ev_user(&b, 3, 51.68, 5.29, 300));
    store_ok(ev_user(&b, 4, 51.69, 5.30, 200));
    store_ok(ev_user(&b, 5, 51.69, 5.30, 100));
    store_ok(ev_group(&b, 10, cells10, 2));
    store_ok(ev_group(&b, 11, cells11, 1));
    store_ok(ev_group(&b, 12, cells12, 1));
    store_ok(ev_member(&b, 1, 10, true));
    store_ok(ev_member(&b, 2, 10, true));
    store_ok(ev_member(&b, 5, 10, true));
    store_ok(ev_member(&b, 3, 11, true));
    store_ok(ev_member(&b, 1, 11, true));
    store_ok(ev_member(&b, 4, 12, true));
    store_ok(ev_member(&b, 2, 11, true));
    store_ok(ev_member(&b, 2, 11, false));
    /* Contact fields written by workers or the app live beside "u". */
    r_ok("HSET bb:user:1 email jan@example.nl");
    r_ok("HSET bb:user:5 push token-5");
    store_ok(ev_prefs(&b, 2, BB__CATEGORY__CATEGORY_FIRE, BB__URGENCY__URGENCY_RECENT));
    store_ok(ev_prefs(&b, 1, BB__CATEGORY__CATEGORY_BURGLARY, BB__URGENCY__URGENCY_INFORMATIONAL));
    store_ok(ev_mute(&b, 3, 7, 0, true));
    store_ok(ev_mute(&b, 4, 7, 0, true));
    store_ok(ev_mute(&b, 4, 7, 0, false));
    store_ok(ev_mute(&b, 1, 0, 11, true));
    store_ok(ev_follow(&b, 2, "r-1", true));
    store_ok(ev_follow(&b, 3, "r-1", true));
    store_ok(ev_follow(&b, 4, "r-2", true));
    store_ok(ev_follow(&b, 5, "r-3", true));
    store_ok(ev_erase(&b, 5));
    store_ok(ev_delete_group(&b, 12));
    store_ok(ev_follow(&b, 4, "r-2", false));
    long long accepted = 29;

    /* Refused: nothing written, nothing on the stream. */
    store_refused(ev_member(&b, 99, 10, true), "unknown_user");
    store_refused(ev_member(&b, 1, 99, true), "unknown_group");
    store_refused(ev_member(&b, 5, 10, true), "unknown_user"); /* erased */
    store_refused(ev_mute(&b, 1, 0, 99, true), "unknown_group");
    store_refused(ev_prefs(&b, 99, BB__CATEGORY__CATEGORY_FIRE, 0), "unknown_user");
    store_refused(ev_follow(&b, 99, "r-1", true), "unknown_user");
    store_refused(ev_follow(&b, 1, "bad id", true), "bad_report_id");
    store_refused(ev_mute(&b, 1, 7, 11, true), "bad_mute");
    static const char *const bad_cells[] = {"u1hb!"};
    store_refused(ev_group(&b, 13, bad_cells, 1), "bad_cell");
    store_refused(ev_user(&b, 6, 95.0, 5.3, 100), "bad_location");
    assert_int_equal(r_int("XLEN bb:directory"), accepted);

    /* The keys as the contract says. */
    assert_int_equal(r_int("EXISTS bb:user:5"), 0); /* erasure takes contact fields too */
    assert_int_equal(r_int("EXISTS bb:user:5:groups"), 0);
    assert_int_equal(r_int("EXISTS bb:user:5:follows"), 0);
    assert_int_equal(r_int("SISMEMBER bb:users 5"), 0);
    assert_int_equal(r_int("SISMEMBER bb:group:10:members 5"), 0);
    assert_int_equal(r_int("HEXISTS bb:user:1 email"), 1); /* read-modify-write kept it */
    assert_int_equal(r_int("EXISTS bb:group:12"), 0);
    assert_int_equal(r_int("EXISTS bb:group:12:members"), 0);
    assert_int_equal(r_int("SISMEMBER bb:groups 12"), 0);
    assert_int_equal(r_int("SISMEMBER bb:user:4:groups 12"), 0);
    assert_int_equal(r_int("SISMEMBER bb:user:1:groups 11"), 1);
    assert_int_equal(r_int("SISMEMBER bb:user:2:groups 11"), 0);
    assert_int_equal(r_int("SISMEMBER bb:follows r-1"), 1);
    assert_int_equal(r_int("SISMEMBER bb:follows r-2"), 0); /* last follower left */
    assert_int_equal(r_int("SISMEMBER bb:follows r-3"), 0); /* follower erased */
    assert_int_equal(r_int("SISMEMBER bb:user:3:follows r-1"), 1);

    struct bb_snapshot_stats st;
    char last_id[BB_STREAM_ID_MAX];
    struct bb_dir *dir = load(&st, last_id);
    redisReply *r = redisCommand(rc, "XREVRANGE bb:directory + - COUNT 1");
    assert_non_null(r);
    assert_int_equal(r->elements, 1);
    assert_string_equal(last_id, r->element[0]->element[0]->str);
    freeReplyObject(r);
    assert_int_equal(st.users, 4);
    assert_int_equal(st.groups, 2);
    assert_int_equal(st.memberships, 4);
    assert_int_equal(st.follows, 2);
    assert_int_equal(st.bad_users + st.bad_groups + st.bad_memberships + st.bad_follows, 0);

    uint32_t s1, s2, s3, gs;
    const struct bb_user *u1 = bb_dir_user_find(dir, 1, &s1);
    const struct bb_user *u2 = bb_dir_user_find(dir, 2, &s2);
    assert_non_null(u1);
    assert_non_null(u2);
    assert_non_null(bb_dir_user_find(dir, 3, &s3));
    assert_non_null(bb_dir_user_find(dir, 4, &gs));
    assert_null(bb_dir_user_find(dir, 5, &gs));
    assert_null(bb_dir_user_find(dir, 99, &gs));
    assert_int_equal(u1->radius_m, 500);
    assert_int_equal(u1->categories, 1u << BB__CATEGORY__CATEGORY_BURGLARY);
    assert_int_equal(u2->categories, 1u << BB__CATEGORY__CATEGORY_FIRE);
    assert_int_equal(u2->min_urgency, BB__URGENCY__URGENCY_RECENT);
    assert_int_equal(u2->quiet_from, 22 * 60);
    assert_int_equal(u2->max_per_hour, 3);

    ASSERT_MEMBERS(dir, 10, 1, 2);
    ASSERT_MEMBERS(dir, 11, 1, 3);
    assert_null(bb_dir_group_find(dir, 12, &gs));
    const struct bb_group *g11 = bb_dir_group_find(dir, 11, &gs);
    assert_int_equal(g11->precision, 6);
    assert_true(bb_slots_has(bb_group_muted_by(g11), s1));
    assert_false(bb_slots_has(bb_group_muted_by(g11), s3));

    /* Cells: the groups' areas and user 1's watch area. */
    bb_cell c;
    uint64_t ids[16];
    assert_int_equal(bb_geohash_parse("u1hbc", 5, &c), BB_OK);
    const struct bb_cellent *ce = bb_dir_cell_find(dir, c);
    assert_non_null(ce);
    const uint64_t want10[] = {10};
    assert_ids(ids, group_ids(dir, bb_cell_groups(ce), ids, 16), want10, 1);
    assert_int_equal(bb_geohash_parse("u1hbd", 5, &c), BB_OK);
    ce = bb_dir_cell_find(dir, c);
    assert_true(!ce || !bb_cell_groups(ce) || bb_cell_groups(ce)->n == 0);
    bb_cell cover[8];
    unsigned nc =
        bb_geohash_cover_circle((float)51.69, (float)5.30, 500, params.watch_max_cells, cover);
    assert_true(nc > 0);
    for (unsigned i = 0; i < nc; i++) {
        ce = bb_dir_cell_find(dir, cover[i]);
        assert_non_null(ce);
        assert_true(bb_slots_has(bb_cell_users(ce), s1));
    }

    const uint64_t want_muters[] = {3};
    assert_ids(ids, user_ids(dir, bb_dir_muted_author(dir, 7), ids, 16), want_muters, 1);
    const uint64_t want_r1[] = {2, 3};
    assert_ids(ids, user_ids(dir, bb_dir_followers(dir, "r-1"), ids, 16), want_r1, 2);
    assert_null(bb_dir_followers(dir, "r-2"));
    assert_null(bb_dir_followers(dir, "r-3"));

    /* Nothing after last_id: replay is a no-op. */
    uint64_t applied = 99, skipped = 99;
    char err[256];
    assert_int_equal(
        bb_snapshot_replay(rc, dir, last_id, sizeof(last_id), &applied, &skipped, err, sizeof(err)),
        BB_OK);
    assert_int_equal(applied, 0);
    assert_int_equal(skipped, 0);
    bb_dir_free(dir);
}

static void snap_load_skips_bad_records(void **state)
{
    struct evbuf b;
    flush_all();
    store_ok(ev_user(&b, 1, 51.69, 5.30, 500));
    store_ok(ev_group(&b, 10, cells10, 2));
    store_ok(ev_member(&b, 1, 10, true));
    store_ok(ev_follow(&b, 1, "r-1", true));
    r_ok("SADD bb:users 50 notanid 51");
    r_ok("HSET bb:user:50 u garbage-not-protobuf");
    /* 51 is listed but has no record */
    r_ok("SADD bb:groups 60");
    r_ok("HSET bb:group:60 g %b", "\x08\x3d", (size_t)2); /* a Group whose id is 61 */
    r_ok("SADD bb:group:10:members 77");                  /* no such user */
    r_ok("SADD bb:follows r-2");
    r_ok("SADD bb:follow:r-2 88");

    struct bb_snapshot_stats st;
    char last_id[BB_STREAM_ID_MAX];
    struct bb_dir *dir = load(&st, last_id);
    assert_int_equal(st.users, 1);
    assert_int_equal(st.groups, 1);
    assert_int_equal(st.memberships, 1);
    assert_int_equal(st.follows, 1);
    assert_int_equal(st.bad_users, 3);
    assert_int_equal(st.bad_groups, 1);
    assert_int_equal(st.bad_memberships, 1);
    assert_int_equal(st.bad_follows, 1);
    ASSERT_MEMBERS(dir, 10, 1);
    bb_dir_free(dir);

    /* A Redis error aborts with a clear message. */
    r_ok("DEL bb:users");
    r_ok("SET bb:users oops");
    dir = bb_dir_new(&params);
    char err[256] = "";
    assert_int_equal(bb_snapshot_load(rc, dir, last_id, sizeof(last_id), &st, err, sizeof(err)),
                     BB_EIO);
    assert_non_null(strstr(err, "SSCAN bb:users"));
    assert_non_null(strstr(err, "WRONGTYPE"));
    bb_dir_free(dir);
}

struct rejects {
    uint64_t tags[16];
    char reasons[16][32];
    unsigned n;
};

static void on_reject(void *arg, uint64_t tag, const char *reason)
{
    struct rejects *r = arg;
    if (r->n < 16) {
        r->tags[r->n] = tag;
        snprintf(r->reasons[r->n], sizeof(r->reasons[0]), "%s", reason);
        r->n++;
    }
}

/* The bulk path: chunks split around erase/delete, later events see the
 * chunk's own earlier ones, refusals come back with their tags. */
static void snap_batch(void **state)
{
    struct evbuf b;
    struct rejects rej = {0};
    char err[256];
    flush_all();
    struct bb_store_batch *batch = bb_store_batch_new(rc, 4, on_reject, &rej);
    assert_non_null(batch);
    uint64_t tag = 0;
#define ADD(ev) assert_int_equal(bb_store_batch_add(batch, ev, ++tag, err, sizeof(err)), BB_OK)
    ADD(ev_member(&b, 1, 10, true));                      /* 1: refused: no user yet */
    ADD(ev_user(&b, 1, 51.69, 5.30, 500));                /* 2 */
    ADD(ev_group(&b, 10, cells10, 2));                    /* 3 */
    ADD(ev_member(&b, 1, 10, true));                      /* 4: same chunk, fine */
    ADD(ev_prefs(&b, 1, BB__CATEGORY__CATEGORY_FIRE, 0)); /* 5 */
    ADD(ev_mute(&b, 1, 42, 0, true));                     /* 6: on the chunk's record */
    ADD(ev_user(&b, 2, 51.69, 5.30, 0));                  /* 7 */
    ADD(ev_member(&b, 2, 10, true));                      /* 8 */
    ADD(ev_erase(&b, 2));                                 /* 9: a chunk of its own */
    ADD(ev_member(&b, 2, 10, true));                      /* 10: refused: erased */
    ADD(ev_follow(&b, 1, "r-9", true));                   /* 11 */
    ADD(ev_delete_group(&b, 10));                         /* 12 */
    ADD(ev_member(&b, 1, 10, true));                      /* 13: refused: deleted */
#undef ADD
    assert_int_equal(bb_store_batch_add(batch, ev_mute(&b, 1, 0, 0, true), 14, err, sizeof(err)),
                     BB_EINVAL);
    assert_string_equal(err, "bad_mute");
    assert_int_equal(bb_store_batch_flush(batch, err, sizeof(err)), BB_OK);
    struct bb_store_stats st;
    bb_store_batch_stats(batch, &st);
    bb_store_batch_free(batch);
    assert_int_equal(st.applied, 10);
    assert_int_equal(st.rejected, 4);
    assert_int_equal(rej.n, 3);
    assert_int_equal(rej.tags[0], 1);
    assert_string_equal(rej.reasons[0], "unknown_user");
    assert_int_equal(rej.tags[1], 10);
    assert_string_equal(rej.reasons[1], "unknown_user");
    assert_int_equal(rej.tags[2], 13);
    assert_string_equal(rej.reasons[2], "unknown_group");
    assert_int_equal(r_int("XLEN bb:directory"), 10);
    assert_int_equal(r_int("SISMEMBER bb:user:1:groups 10"), 0);
    assert_int_equal(r_int("EXISTS bb:user:2"), 0);

    struct bb_snapshot_stats sst;
    char last_id[BB_STREAM_ID_MAX];
    struct bb_dir *dir = load(&sst, last_id);
    uint32_t s1;
    const struct bb_user *u1 = bb_dir_user_find(dir, 1, &s1);
    assert_non_null(u1);
    assert_int_equal(u1->categories, 1u << BB__CATEGORY__CATEGORY_FIRE);
    assert_true(bb_slots_has(bb_dir_muted_author(dir, 42), s1));
    assert_true(bb_slots_has(bb_dir_followers(dir, "r-9"), s1));
    assert_int_equal(sst.groups, 0);

    /* The same stream replayed from the start gives the same index. */
    struct bb_dir *re = bb_dir_new(&params);
    char from[BB_STREAM_ID_MAX] = "0-0";
    uint64_t applied, skipped;
    assert_int_equal(
        bb_snapshot_replay(rc, re, from, sizeof(from), &applied, &skipped, err, sizeof(err)),
        BB_OK);
    assert_int_equal(applied, 10);
    assert_int_equal(skipped, 0);
    assert_string_equal(from, last_id);
    u1 = bb_dir_user_find(re, 1, &s1);
    assert_non_null(u1);
    assert_int_equal(u1->categories, 1u << BB__CATEGORY__CATEGORY_FIRE);
    assert_true(bb_slots_has(bb_dir_muted_author(re, 42), s1));
    bb_dir_free(re);
    bb_dir_free(dir);
}

/* ---- convergence ------------------------------------------------------------------------- */

#define CONV_USERS 40
#define CONV_GROUPS 8 /* 1..4 never deleted (users mute only these), 5..8 come and go */
#define CONV_REPORTS 10
#define CONV_AUTHOR0 1000 /* muted authors 1001..1010 are not users (never erased) */

static const char *const conv_cells[] = {"u1hb", "u1hbc", "u1hbf", "u1hb9", "u1hbd", "u1j"};

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* One random directory change within the universe above. */
static Bb__DirectoryEvent *random_event(struct evbuf *b, uint64_t *s)
{
    unsigned k = (unsigned)(rnd(s) % 100);
    uint64_t u = 1 + rnd(s) % CONV_USERS;
    char report[16];
    snprintf(report, sizeof(report), "r-%u", (unsigned)(rnd(s) % CONV_REPORTS));
    if (k < 25) {
        Bb__DirectoryEvent *ev =
            ev_user(b, u, 51.6 + (double)(rnd(s) % 1000) / 5000.0,
                    5.2 + (double)(rnd(s) % 1000) / 5000.0, (unsigned)(rnd(s) % 3) * 250);
        size_t na = rnd(s) % 3, ng = rnd(s) % 2;
        uint64_t a0 = rnd(s) % 10;
        for (size_t i = 0; i < na; i++) {
            b->muted_a[i] = CONV_AUTHOR0 + 1 + (a0 + i * 3) % 10; /* distinct */
        }
        for (size_t i = 0; i < ng; i++) {
            b->muted_g[i] = 1 + rnd(s) % 4;
        }
        b->user.muted_authors = b->muted_a;
        b->user.n_muted_authors = na;
        b->user.muted_groups = b->muted_g;
        b->user.n_muted_groups = ng;
        return ev;
    }
    if (k < 30) {
        size_t n = 1 + rnd(s) % 2;
        const char *cells[2] = {conv_cells[rnd(s) % 6], conv_cells[rnd(s) % 6]};
        return ev_group(b, 1 + rnd(s) % CONV_GROUPS, cells, n);
    }
    if (k < 45) {
        return ev_member(b, u, 1 + rnd(s) % CONV_GROUPS, true);
    }
    if (k < 52) {
        return ev_member(b, u, 1 + rnd(s) % CONV_GROUPS, false);
    }
    if (k < 60) {
        return ev_prefs(b, u, (Bb__Category)(1 + rnd(s) % 10), (Bb__Urgency)(rnd(s) % 4));
    }
    if (k < 66) {
        return ev_mute(b, u, CONV_AUTHOR0 + 1 + rnd(s) % 10, 0, true);
    }
    if (k < 70) {
        return ev_mute(b, u, 0, 1 + rnd(s) % 4, true);
    }
    if (k < 75) {
        return rnd(s) % 2 ? ev_mute(b, u, CONV_AUTHOR0 + 1 + rnd(s) % 10, 0, false)
                          : ev_mute(b, u, 0, 1 + rnd(s) % 4, false);
    }
    if (k < 85) {
        return ev_follow(b, u, report, true);
    }
    if (k < 90) {
        return ev_follow(b, u, report, false);
    }
    if (k < 95) {
        return ev_erase(b, u);
    }
    return ev_delete_group(b, 5 + rnd(s) % 4);
}

struct writer {
    pthread_t thread;
    atomic_bool stop;
    uint64_t seed;
    uint64_t events;
    char err[256];
    int rc;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    redisContext *c = bb_harness_redis_connect(srv);
    struct evbuf b;
    if (!c) {
        w->rc = BB_EIO;
        return NULL;
    }
    while (!atomic_load(&w->stop) && w->rc == BB_OK) {
        /* Alternate single events and small batches. */
        unsigned n = 1 + (unsigned)(rnd(&w->seed) % 8);
        struct bb_store_batch *batch = bb_store_batch_new(c, 1 + n / 2, NULL, NULL);
        for (unsigned i = 0; i < n && w->rc == BB_OK; i++) {
            int r =
                bb_store_batch_add(batch, random_event(&b, &w->seed), i, w->err, sizeof(w->err));
            if (r != BB_OK && r != BB_EINVAL) {
                w->rc = r;
            }
        }
        if (w->rc == BB_OK) {
            w->rc = bb_store_batch_flush(batch, w->err, sizeof(w->err));
        }
        bb_store_batch_free(batch);
        w->events += n;
    }
    redisFree(c);
    return NULL;
}

static void compare_user(const struct bb_dir *a, const struct bb_user *x, const struct bb_dir *b,
                         const struct bb_user *y)
{
    assert_true(x->lat == y->lat && x->lon == y->lon);
    assert_int_equal(x->radius_m, y->radius_m);
    assert_int_equal(x->categories, y->categories);
    assert_memory_equal(x->chan, y->chan, sizeof(x->chan));
    assert_int_equal(x->min_urgency, y->min_urgency);
    assert_int_equal(x->quiet_from, y->quiet_from);
    assert_int_equal(x->quiet_to, y->quiet_to);
    assert_int_equal(x->max_per_hour, y->max_per_hour);
    assert_int_equal(x->flags, y->flags);
    assert_string_equal(bb_dir_locale_name(a, x->locale), bb_dir_locale_name(b, y->locale));
    assert_string_equal(bb_tz_name(bb_dir_zone(a, x->tz)), bb_tz_name(bb_dir_zone(b, y->tz)));
}

static void compare_slots(const struct bb_dir *a, const struct bb_slots *x, const struct bb_dir *b,
                          const struct bb_slots *y, bool groups, const char *what)
{
    uint64_t ix[CONV_USERS + CONV_GROUPS], iy[CONV_USERS + CONV_GROUPS];
    size_t nx = groups ? group_ids(a, x, ix, CONV_USERS) : user_ids(a, x, ix, CONV_USERS);
    size_t ny = groups ? group_ids(b, y, iy, CONV_USERS) : user_ids(b, y, iy, CONV_USERS);
    if (nx != ny || memcmp(ix, iy, nx * sizeof(uint64_t)) != 0) {
        fail_msg("%s differs: %zu vs %zu entries", what, nx, ny);
    }
}

/* Everything observable through the lookups, compared by ids (slots differ). */
static void compare_dirs(const struct bb_dir *a, const struct bb_dir *b)
{
    char what[64];
    for (uint64_t id = 1; id <= CONV_USERS; id++) {
        uint32_t sa, sb;
        const struct bb_user *x = bb_dir_user_find(a, id, &sa), *y = bb_dir_user_find(b, id, &sb);
        if (!x != !y) {
            fail_msg("user %" PRIu64 " is in only one index", id);
        }
        if (x) {
            compare_user(a, x, b, y);
            bb_cell ca[32], cb[32];
            unsigned na =
                bb_geohash_cover_circle(x->lat, x->lon, x->radius_m, params.watch_max_cells, ca);
            unsigned nb =
                bb_geohash_cover_circle(y->lat, y->lon, y->radius_m, params.watch_max_cells, cb);
            assert_int_equal(na * !!x->radius_m, nb * !!y->radius_m);
            for (unsigned i = 0; x->radius_m && i < na; i++) {
                const struct bb_cellent *e = bb_dir_cell_find(a, ca[i]);
                const struct bb_cellent *f = bb_dir_cell_find(b, cb[i]);
                assert_true(e && f && bb_slots_has(bb_cell_users(e), sa) &&
                            bb_slots_has(bb_cell_users(f), sb));
            }
        }
    }
    for (uint64_t id = 1; id <= CONV_GROUPS; id++) {
        uint32_t sa, sb;
        const struct bb_group *x = bb_dir_group_find(a, id, &sa);
        const struct bb_group *y = bb_dir_group_find(b, id, &sb);
        if (!x != !y) {
            fail_msg("group %" PRIu64 " is in only one index", id);
        }
        if (!x) {
            continue;
        }
        assert_int_equal(x->categories, y->categories);
        assert_int_equal(x->sources, y->sources);
        assert_int_equal(x->min_urgency, y->min_urgency);
        assert_int_equal(x->precision, y->precision);
        assert_int_equal(x->public_posting, y->public_posting);
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->ncells, y->ncells);
        assert_memory_equal(x->cells, y->cells, x->ncells * sizeof(bb_cell));
        snprintf(what, sizeof(what), "members of group %" PRIu64, id);
        compare_slots(a, bb_group_members(x), b, bb_group_members(y), false, what);
        snprintf(what, sizeof(what), "muters of group %" PRIu64, id);
        compare_slots(a, bb_group_muted_by(x), b, bb_group_muted_by(y), false, what);
    }
    for (size_t i = 0; i < sizeof(conv_cells) / sizeof(conv_cells[0]); i++) {
        bb_cell c;
        assert_int_equal(bb_geohash_parse(conv_cells[i], strlen(conv_cells[i]), &c), BB_OK);
        const struct bb_cellent *e = bb_dir_cell_find(a, c), *f = bb_dir_cell_find(b, c);
        snprintf(what, sizeof(what), "groups of cell %s", conv_cells[i]);
        compare_slots(a, e ? bb_cell_groups(e) : NULL, b, f ? bb_cell_groups(f) : NULL, true, what);
    }
    for (uint64_t au = CONV_AUTHOR0 + 1; au <= CONV_AUTHOR0 + 10; au++) {
        snprintf(what, sizeof(what), "muters of author %" PRIu64, au);
        compare_slots(a, bb_dir_muted_author(a, au), b, bb_dir_muted_author(b, au), false, what);
    }
    for (unsigned r = 0; r < CONV_REPORTS; r++) {
        char id[16];
        snprintf(id, sizeof(id), "r-%u", r);
        snprintf(what, sizeof(what), "followers of %s", id);
        compare_slots(a, bb_dir_followers(a, id), b, bb_dir_followers(b, id), false, what);
    }
    struct bb_dir_stats sa, sb;
    bb_dir_stats(a, &sa);
    bb_dir_stats(b, &sb);
    assert_int_equal(sa.users, sb.users);
    assert_int_equal(sa.groups, sb.groups);
    assert_int_equal(sa.memberships, sb.memberships);
    assert_int_equal(sa.watch_cells, sb.watch_cells);
    assert_int_equal(sa.follows, sb.follows);
    assert_int_equal(sa.mutes, sb.mutes);
}

#define CONV_ROUNDS 5

static void snap_convergence(void **state)
{
    struct evbuf b;
    char err[256];
    flush_all();
    for (uint64_t g = 1; g <= CONV_GROUPS; g++) {
        store_ok(ev_group(&b, g, conv_cells + g % 5, 1));
    }
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 400; i++) {
        int r = bb_store_apply(rc, random_event(&b, &seed), err, sizeof(err));
        assert_true(r == BB_OK || r == BB_EINVAL);
    }

    struct writer w = {.seed = 0x1234567887654321ULL};
    assert_int_equal(pthread_create(&w.thread, NULL, writer_main, &w), 0);
    struct bb_dir *snap[CONV_ROUNDS];
    char last[CONV_ROUNDS][BB_STREAM_ID_MAX];
    for (int i = 0; i < CONV_ROUNDS; i++) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
        struct bb_snapshot_stats st;
        snap[i] = load(&st, last[i]); /* while the writer writes */
    }
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
    atomic_store(&w.stop, true);
    pthread_join(w.thread, NULL);
    if (w.rc != BB_OK) {
        fail_msg("writer: %s: %s", bb_strerror(w.rc), w.err);
    }
    assert_true(w.events > 100);

    struct bb_snapshot_stats st;
    char fresh_last[BB_STREAM_ID_MAX];
    struct bb_dir *fresh = load(&st, fresh_last);
    uint64_t replayed = 0;
    for (int i = 0; i < CONV_ROUNDS; i++) {
        uint64_t applied, skipped;
        assert_int_equal(bb_snapshot_replay(rc, snap[i], last[i], sizeof(last[i]), &applied,
                                            &skipped, err, sizeof(err)),
                         BB_OK);
        replayed += applied + skipped;
        assert_string_equal(last[i], fresh_last);
        compare_dirs(snap[i], fresh);
        bb_dir_free(snap[i]);
    }
    assert_true(replayed > 0); /* the writer did write during the loads */
    print_message("convergence: writer %" PRIu64 " events, %" PRIu64 " replayed over %d "
                  "snapshots\n",
                  w.events, replayed, CONV_ROUNDS);
    bb_dir_free(fresh);
}

/* ---- connecting -------------------------------------------------------------------------- */

static void snap_connect(void **state)
{
    char err[256];
    redisContext *c = bb_redis_connect(srv->addr, NULL, NULL, 2000, err, sizeof(err));
    assert_non_null(c);
    redisFree(c);
    c = bb_redis_connect(srv->sock, NULL, "", 2000, err, sizeof(err));
    assert_non_null(c);
    redisReply *r = redisCommand(c, "PING");
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(c);

    assert_null(bb_redis_connect("127.0.0.1:99999", NULL, NULL, 2000, err, sizeof(err)));
    assert_non_null(strstr(err, "port must be 1..65535"));
    assert_null(bb_redis_connect("", NULL, NULL, 2000, err, sizeof(err)));
    assert_null(bb_redis_connect("/nonexistent/redis.sock", NULL, NULL, 2000, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/redis.sock"));

    r_ok("CONFIG SET requirepass s3cret");
    assert_null(bb_redis_connect(srv->addr, NULL, "wrong", 2000, err, sizeof(err)));
    assert_non_null(strstr(err, "AUTH refused"));
    /* A named ACL user: AUTH <user> <password>. */
    assert_null(bb_redis_connect(srv->addr, "nobody", "s3cret", 2000, err, sizeof(err)));
    assert_non_null(strstr(err, "AUTH refused"));
    assert_null(strstr(err, "s3cret"));
    c = bb_redis_connect(srv->addr, "default", "s3cret", 2000, err, sizeof(err));
    assert_non_null(c);
    redisFree(c);
    c = bb_redis_connect(srv->addr, NULL, "s3cret", 2000, err, sizeof(err));
    assert_non_null(c);
    r = redisCommand(c, "CONFIG SET requirepass %s", "");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(c);
}

/* ---- buurtbusctl ------------------------------------------------------------------------- */

static const char directory_jsonl[] =
    "# two streets of Den Bosch\n"
    "{\"group\":{\"id\":2,\"name\":\"De Muntel\",\"cells\":[\"u1hbc\",\"u1hbf\"],"
    "\"policy\":{\"categories\":[\"burglary\",\"suspicious_person\"],"
    "\"min_urgency\":\"recent\",\"sources\":[\"resident\",\"police\"],"
    "\"public_posting\":true},\"location_precision\":7}}\n"
    "{\"user\":{\"id\":1,\"screen_name\":\"Jan\",\"locale\":\"nl\","
    "\"time_zone\":\"Europe/Amsterdam\",\"watch\":{\"lat\":51.69,\"lon\":5.30,\"radius_m\":500},"
    "\"prefs\":{\"categories\":[\"burglary\"],\"min_urgency\":\"recent\","
    "\"in_progress\":[\"push\",\"inbox\"],\"recent\":[\"push\",\"inbox\"],"
    "\"informational\":[\"inbox\",\"digest\"],\"quiet\":{\"from\":\"22:00\",\"to\":\"07:00\"},"
    "\"max_per_hour\":5,\"digest_hour\":8},\"muted_authors\":[7],\"muted_groups\":[3]}}\n"
    "{\"user\":{\"id\":3,\"screen_name\":\"Piet\"}}\n"
    "{\"user\":{\"id\":4,\"screen_name\":\"Klaas\","
    "\"watch\":{\"lat\":51.6901,\"lon\":5.3001,\"radius_m\":300}}}\n"
    "{\"user\":{\"id\":5,\"screen_name\":\"Els\",\"prefs\":{\"categories\":[\"fire\"]}}}\n"
    "{\"user\":{\"id\":6,\"screen_name\":\"Mo\"}}\n"
    "\n"
    "{\"member\":{\"user\":1,\"group\":2}}\n"
    "{\"member\":{\"user\":3,\"group\":2}}\n"
    "{\"member\":{\"user\":5,\"group\":2}}\n"
    "{\"member\":{\"user\":6,\"group\":2}}\n"
    "{\"mute\":{\"user\":6,\"author\":3}}\n"
    "{\"follow\":{\"user\":4,\"report\":\"r-1\"}}\n";

static const char report_json[] =
    "{\"id\":\"r1\",\"author_id\":3,\"author_screen_name\":\"Piet\",\"group_id\":2,"
    "\"lat\":51.6901,\"lon\":5.3001,\"category\":\"burglary\",\"urgency\":\"in_progress\","
    "\"source\":\"resident\",\"text\":\"Iemand klimt over de schutting\","
    "\"media\":[{\"url\":\"https://example.nl/a.jpg\",\"mime_type\":\"image/jpeg\","
    "\"publishable\":false}],\"anonymity\":\"screen_name\",\"locale\":\"nl\"}";

static struct bb_run_result ctl(const char *in, ...)
{
    const char *argv[32] = {BB_CTL_PATH, "--redis", srv->addr};
    int n = 3;
    va_list ap;
    va_start(ap, in);
    for (const char *a; n < 31 && (a = va_arg(ap, const char *));) {
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, in, 60, &res), 0);
    return res;
}

static void expect_status(const struct bb_run_result *res, int status)
{
    if (res->status != status) {
        fail_msg("buurtbusctl exited %d, expected %d\nstdout: %s\nstderr: %s", res->status, status,
                 res->out, res->err);
    }
}

static struct json_object *parse_json(const char *text)
{
    struct json_object *o = json_tokener_parse(text);
    if (!o) {
        fail_msg("not JSON: %s", text);
    }
    return o;
}

static const char *verdict_of(struct json_object *people, uint64_t user)
{
    for (size_t i = 0; i < json_object_array_length(people); i++) {
        struct json_object *p = json_object_array_get_idx(people, i), *u, *v;
        if (json_object_object_get_ex(p, "user", &u) && json_object_get_uint64(u) == user &&
            json_object_object_get_ex(p, "verdict", &v)) {
            return json_object_get_string(v);
        }
    }
    return NULL;
}

static void ctl_load_post_route(void **state)
{
    char path[512], bad[512];
    flush_all();
    assert_non_null(bb_harness_write_file(path, sizeof(path), "dir.jsonl", directory_jsonl));
    struct bb_run_result res = ctl(NULL, "load", path, NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "12 changes written"));
    bb_run_result_free(&res);

    /* Bad lines: named by line and field, the good ones still load, exit 1. */
    assert_non_null(
        bb_harness_write_file(bad, sizeof(bad), "bad.jsonl",
                              "{\"user\":{\"id\":8}}\n"
                              "{\"user\":{\"id\":9,\"prefs\":{\"min_urgency\":\"soon\"}}}\n"
                              "{\"member\":{\"user\":77,\"group\":2}}\n"
                              "{\"group\":{\"id\":5,\"cells\":[\"u1hbc\",\"a!\"]}}\n"
                              "not json\n"));
    res = ctl(NULL, "--json", "load", bad, NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "bad.jsonl:2: user.prefs.min_urgency: expected an urgency"));
    assert_non_null(strstr(res.err, "bad.jsonl:3: refused: unknown_user"));
    assert_non_null(strstr(res.err, "bad.jsonl:4: group.cells[1]: expected a geohash"));
    assert_non_null(strstr(res.err, "bad.jsonl:5: bad JSON"));
    struct json_object *summary = parse_json(res.out), *f;
    assert_true(json_object_object_get_ex(summary, "written", &f));
    assert_int_equal(json_object_get_int64(f), 1);
    json_object_put(summary);
    bb_run_result_free(&res);
    assert_int_equal(r_int("SISMEMBER bb:users 8"), 1);

    res = ctl(NULL, "post", report_json, NULL);
    expect_status(&res, 0);
    assert_non_null(strchr(res.out, '-'));
    bb_run_result_free(&res);
    assert_int_equal(r_int("XLEN bb:reports"), 1);

    /* The report as JSON from standard input, explained. */
    res = ctl(report_json, "--json", "route", "--file", "-", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out), *people, *ch, *push;
    assert_true(json_object_object_get_ex(o, "people", &people));
    assert_string_equal(verdict_of(people, 1), "notified"); /* group member */
    assert_string_equal(verdict_of(people, 4), "notified"); /* watch area */
    assert_string_equal(verdict_of(people, 3), "author");
    assert_string_equal(verdict_of(people, 5), "pref_category"); /* only wants fire */
    assert_string_equal(verdict_of(people, 6), "muted_author");
    assert_true(json_object_object_get_ex(o, "channels", &ch));
    assert_true(json_object_object_get_ex(ch, "push", &push));
    assert_int_equal(json_object_get_int(push), 2);
    json_object_put(o);
    bb_run_result_free(&res);

    /* "Why did I not get this?" for one person, and the report from its entry. */
    redisReply *r = redisCommand(rc, "XRANGE bb:reports - +");
    assert_non_null(r);
    assert_int_equal(r->elements, 1);
    char entry[64];
    snprintf(entry, sizeof(entry), "%s", r->element[0]->element[0]->str);
    freeReplyObject(r);
    res = ctl(NULL, "route", "--json", "--user", "5", "--entry", entry, NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_true(json_object_object_get_ex(o, "people", &people));
    assert_int_equal(json_object_array_length(people), 1);
    assert_string_equal(verdict_of(people, 5), "pref_category");
    json_object_put(o);
    bb_run_result_free(&res);

    res = ctl(NULL, "route", "--user", "4", report_json, NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "Klaas"));
    assert_non_null(strstr(res.out, "watch"));
    bb_run_result_free(&res);

    /* A report the broker would refuse. */
    res = ctl(NULL, "route",
              "{\"id\":\"r2\",\"lat\":51.69,\"lon\":5.3,\"urgency\":\"recent\","
              "\"source\":\"resident\",\"text\":\"x\"}",
              NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "dead-letter"));
    bb_run_result_free(&res);
}

static void ctl_dead_and_errors(void **state)
{
    flush_all();
    struct bb_run_result res = ctl(NULL, "dead", "--json", NULL);
    expect_status(&res, 0);
    assert_string_equal(res.out, "[]\n");
    bb_run_result_free(&res);

    r_ok("XADD bb:dead * reason bad_payload detail truncated stream bb:reports id 1-0 p abc "
         "broker b1");
    res = ctl(NULL, "dead", "--json", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out), *e, *f;
    assert_int_equal(json_object_array_length(o), 1);
    e = json_object_array_get_idx(o, 0);
    assert_true(json_object_object_get_ex(e, "reason", &f));
    assert_string_equal(json_object_get_string(f), "bad_payload");
    assert_true(json_object_object_get_ex(e, "bytes", &f));
    assert_int_equal(json_object_get_int(f), 3);
    json_object_put(o);
    bb_run_result_free(&res);

    /* Over the unix socket. */
    const char *argv[] = {BB_CTL_PATH, "--redis", srv->sock, "--json", "snapshot", NULL};
    assert_int_equal(bb_harness_run(argv, NULL, 60, &res), 0);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "\"users\":0"));
    bb_run_result_free(&res);

    /* Usage errors exit 2, runtime errors 1. */
    res = ctl(NULL, "load", NULL);
    expect_status(&res, 2);
    bb_run_result_free(&res);
    res = ctl(NULL, "frobnicate", NULL);
    expect_status(&res, 2);
    bb_run_result_free(&res);
    res = ctl(NULL, "dead", "--count", "zero", NULL);
    expect_status(&res, 2);
    bb_run_result_free(&res);
    res = ctl(NULL, "route", "--help", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "--user ID"));
    bb_run_result_free(&res);
    const char *refused[] = {BB_CTL_PATH, "--redis", "127.0.0.1:1", "dead", NULL};
    assert_int_equal(bb_harness_run(refused, NULL, 60, &res), 0);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "127.0.0.1:1"));
    bb_run_result_free(&res);
    res = ctl(NULL, "post", "{\"id\":\"r3\",\"category\":\"burglary\",\"colour\":\"red\"}", NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "colour: unknown field"));
    bb_run_result_free(&res);
    assert_int_equal(r_int("EXISTS bb:reports"), 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(snap_store_and_load), cmocka_unit_test(snap_load_skips_bad_records),
        cmocka_unit_test(snap_batch),          cmocka_unit_test(snap_convergence),
        cmocka_unit_test(snap_connect),        cmocka_unit_test(ctl_load_post_route),
        cmocka_unit_test(ctl_dead_and_errors),
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    srv = bb_harness_redis_start();
    if (!srv || !(rc = bb_harness_redis_connect(srv))) {
        bb_harness_finish(true);
        return 1;
    }
    int failed = cmocka_run_group_tests_name("snapshot", tests, NULL, NULL);
    redisFree(rc);
    bb_harness_finish(failed != 0);
    return failed ? 1 : 0;
}
