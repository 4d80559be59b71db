/* The broker end to end, against a real redis-server: a population is
 * stored through bb_store, the built buurtbus-broker runs as a child
 * process, reports go in with XADD, and the batches that come out of
 * bb:out:* are decoded and compared with the router run in this process on
 * a snapshot of the same directory (the reference). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "geohash.h"
#include "harness.h"
#include "report.pb-c.h"
#include "route.h"
#include "snapshot.h"
#include "wire.h"

#define CENTER_LAT 51.6978
#define CENTER_LON 5.3037
#define NUSERS 400
#define NGROUPS 8
#define FIRST_USER 1000

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t broker_pid;

/* ---- helpers ----------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static double unif(double lo, double hi)
{
    return lo + (hi - lo) * (double)(rnd() % 1000000) / 1e6;
}

static void offset(double *lat, double *lon, double dn, double de)
{
    *lat += dn / 111320.0;
    *lon += de / (111320.0 * cos(*lat * M_PI / 180.0));
}

static void cmd_ok(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

static long long cmd_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static void store(Bb__DirectoryEvent *ev)
{
    char err[256];
    ev->schema_version = 1;
    int r = bb_store_apply(rc, ev, err, sizeof(err));
    if (r != BB_OK) {
        fprintf(stderr, "store: %s\n", err);
    }
    assert_int_equal(r, BB_OK);
}

/* A few hundred people around the centre, groups with geohash areas and
 * policies, memberships, watch areas, preferences, mutes. */
static void populate(void)
{
    static const int cats[] = {1, 2, 3, 4, 5};
    for (int g = 1; g <= NGROUPS; g++) {
        Bb__Group grp = BB__GROUP__INIT;
        Bb__Policy pol = BB__POLICY__INIT;
        char name[32], cellbuf[16][16], *cells[16];
        snprintf(name, sizeof(name), "Buurt %d", g);
        grp.id = (uint64_t)g;
        grp.name = name;
        double lat = CENTER_LAT, lon = CENTER_LON;
        offset(&lat, &lon, unif(-1500, 1500), unif(-1500, 1500));
        unsigned prec = g % 2 ? 6 : 7;
        bb_cell c = bb_geohash_encode(lat, lon, prec), nb[8];
        unsigned nn = bb_cell_neighbours(c, nb);
        bb_geohash_format(c, cellbuf[0]);
        cells[0] = cellbuf[0];
        grp.n_cells = 1;
        for (unsigned i = 0; i < nn && i < 4; i++) {
            bb_geohash_format(nb[i], cellbuf[grp.n_cells]);
            cells[grp.n_cells] = cellbuf[grp.n_cells];
            grp.n_cells++;
        }
        grp.cells = cells;
        Bb__Category pc[2];
        Bb__Source ps[1] = {BB__SOURCE__SOURCE_POLICE};
        if (g == 2) { /* in-progress crime only */
            pc[0] = BB__CATEGORY__CATEGORY_BURGLARY;
            pc[1] = BB__CATEGORY__CATEGORY_SUSPICIOUS_PERSON;
            pol.categories = pc;
            pol.n_categories = 2;
            pol.min_urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
        } else if (g == 3) {
            pol.sources = ps;
            pol.n_sources = 1;
        }
        pol.public_posting = g == 4;
        grp.policy = &pol;
        grp.location_precision = 7;
        Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
        ev.change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
        ev.group_upsert = &grp;
        store(&ev);
    }
    for (int k = 0; k < NUSERS; k++) {
        Bb__User u = BB__USER__INIT;
        Bb__WatchArea w = BB__WATCH_AREA__INIT;
        Bb__Preferences p = BB__PREFERENCES__INIT;
        Bb__ChannelSet inprog = BB__CHANNEL_SET__INIT, info = BB__CHANNEL_SET__INIT;
        Bb__QuietHours q = BB__QUIET_HOURS__INIT;
        Bb__Channel ch_ip[3] = {BB__CHANNEL__CHANNEL_PUSH, BB__CHANNEL__CHANNEL_INBOX,
                                BB__CHANNEL__CHANNEL_EMAIL};
        Bb__Channel ch_info[1] = {BB__CHANNEL__CHANNEL_DIGEST};
        Bb__Category pc[2];
        uint64_t muted_author = FIRST_USER + (uint64_t)((k + 7) % NUSERS);
        u.id = FIRST_USER + (uint64_t)k;
        u.screen_name = "buur";
        u.locale = k % 5 == 0 ? "en" : "nl";
        u.time_zone = k % 11 == 0 ? "Asia/Tokyo" : "Europe/Amsterdam";
        if (k % 3 != 0) {
            double lat = CENTER_LAT, lon = CENTER_LON;
            offset(&lat, &lon, unif(-2000, 2000), unif(-2000, 2000));
            w.lat = lat;
            w.lon = lon;
            w.radius_m = 200 + (uint32_t)(rnd() % 800);
            u.watch = &w;
        }
        if (k % 4 == 0) {
            inprog.channels = ch_ip;
            inprog.n_channels = 3;
            p.in_progress = &inprog;
            info.channels = ch_info;
            info.n_channels = 1;
            p.informational = &info;
        }
        if (k % 6 == 0) {
            pc[0] = (Bb__Category)cats[k % 5];
            pc[1] = BB__CATEGORY__CATEGORY_FIRE;
            p.categories = pc;
            p.n_categories = 2;
        }
        if (k % 7 == 0) {
            p.min_urgency = BB__URGENCY__URGENCY_RECENT;
        }
        if (k % 9 == 0) {
            q.from_minute = 22 * 60;
            q.to_minute = 7 * 60;
            p.quiet = &q;
        }
        u.prefs = &p;
        if (k % 13 == 0) {
            u.muted_authors = &muted_author;
            u.n_muted_authors = 1;
        }
        Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
        ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
        ev.user_upsert = &u;
        store(&ev);
        int ngroups = 1 + (int)(rnd() % 3);
        for (int j = 0; j < ngroups; j++) {
            Bb__Membership m = BB__MEMBERSHIP__INIT;
            m.user_id = u.id;
            m.group_id = 1 + rnd() % NGROUPS;
            Bb__DirectoryEvent me = BB__DIRECTORY_EVENT__INIT;
            me.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
            me.member_add = &m;
            store(&me);
        }
    }
}

static void random_report(Bb__Report *r, char *id, size_t idlen, int n)
{
    bb__report__init(r);
    snprintf(id, idlen, "rep-%d-%llu", n, (unsigned long long)(rnd() % 1000000));
    r->schema_version = 1;
    r->id = id;
    r->time_ms = (int64_t)time(NULL) * 1000;
    r->author_id = FIRST_USER + rnd() % NUSERS;
    r->author_screen_name = "melder";
    r->group_id = rnd() % 3 == 0 ? 0 : 1 + rnd() % NGROUPS;
    double lat = CENTER_LAT, lon = CENTER_LON;
    offset(&lat, &lon, unif(-1800, 1800), unif(-1800, 1800));
    r->lat = lat;
    r->lon = lon;
    r->category = (Bb__Category)(1 + rnd() % 8);
    r->urgency = (Bb__Urgency)(1 + rnd() % 3);
    r->source = (Bb__Source)(1 + rnd() % 5);
    r->text = "Verdachte situatie in de straat";
    r->anonymity =
        rnd() % 2 ? BB__ANONYMITY__ANONYMITY_SCREEN_NAME : BB__ANONYMITY__ANONYMITY_NEIGHBOUR;
}

static void xadd_report(const Bb__Report *r)
{
    size_t len = bb__report__get_packed_size(r);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    bb__report__pack(r, buf);
    cmd_ok("XADD bb:reports * p %b", buf, len);
    free(buf);
}

static void start_broker(const char *name, const char *extra)
{
    char conf[512], text[1024], log[512];
    /* BB_ROUTER_THREADS: more routers, for the ThreadSanitizer run. */
    const char *routers = getenv("BB_ROUTER_THREADS");
    snprintf(text, sizeof(text),
             "redis %s\nname %s\nrouter_threads %s\nblock 200ms\nclaim_idle 1s\n"
             "claim_interval 300ms\nmetrics_addr \"\"\nlog_level info\n%s",
             srv->addr, name, routers && routers[0] ? routers : "1", extra ? extra : "");
    assert_non_null(bb_harness_write_file(conf, sizeof(conf), "broker.conf", text));
    bb_harness_path(log, sizeof(log), "broker.log");
    broker_pid = fork();
    assert_true(broker_pid >= 0);
    if (broker_pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execl(BB_BROKER_PATH, "buurtbus-broker", "-c", conf, (char *)NULL);
        _exit(127);
    }
}

static void stop_broker(int sig)
{
    if (broker_pid > 0) {
        kill(broker_pid, sig);
        int st;
        waitpid(broker_pid, &st, 0);
        broker_pid = 0;
    }
}

static bool broker_alive(void)
{
    return broker_pid > 0 && waitpid(broker_pid, NULL, WNOHANG) == 0;
}

/* Waits until every entry of bb:reports was delivered to the group and acked. */
static void wait_drained(int timeout_s)
{
    for (int i = 0; i < timeout_s * 20; i++) {
        redisReply *r = redisCommand(rc, "XINFO GROUPS bb:reports");
        long long lag = -1, pending = -1;
        char last[64] = "", top[64] = "";
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
            redisReply *g = r->element[0];
            for (size_t k = 0; k + 1 < g->elements; k += 2) {
                if (strcmp(g->element[k]->str, "pending") == 0) {
                    pending = g->element[k + 1]->integer;
                } else if (strcmp(g->element[k]->str, "last-delivered-id") == 0) {
                    snprintf(last, sizeof(last), "%s", g->element[k + 1]->str);
                }
            }
        }
        freeReplyObject(r);
        r = redisCommand(rc, "XREVRANGE bb:reports + - COUNT 1");
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
            snprintf(top, sizeof(top), "%s", r->element[0]->element[0]->str);
        }
        freeReplyObject(r);
        lag = strcmp(last, top);
        if (pending == 0 && lag == 0) {
            return;
        }
        usleep(50 * 1000);
    }
    fail_msg("broker did not drain bb:reports within %d s", timeout_s);
}

/* ---- deliveries: what came out, and what should have ------------------------------------- */

struct delivery {
    char key[80];
    int channel;
    uint64_t user;
};

struct dset {
    struct delivery *d;
    size_t n, cap;
};

static void dset_add(struct dset *s, const char *key, int channel, uint64_t user)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->d = realloc(s->d, s->cap * sizeof(*s->d));
        assert_non_null(s->d);
    }
    struct delivery *d = &s->d[s->n++];
    snprintf(d->key, sizeof(d->key), "%s", key);
    d->channel = channel;
    d->user = user;
}

static int dcmp(const void *a, const void *b)
{
    const struct delivery *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c) {
        return c;
    }
    if (x->channel != y->channel) {
        return x->channel - y->channel;
    }
    return x->user < y->user ? -1 : x->user > y->user;
}

/* Reads every bb:out:* entry; checks each notification decompresses and
 * names its report. */
static void read_outputs(struct dset *out)
{
    static const char *streams[] = {"bb:out:push", "bb:out:email", "bb:out:inbox", "bb:out:digest"};
    struct bb_zdec *z = bb_zdec_new(1 << 20);
    for (size_t s = 0; s < 4; s++) {
        redisReply *r = redisCommand(rc, "XRANGE %s - +", streams[s]);
        assert_non_null(r);
        for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            redisReply *f = r->element[i]->element[1];
            assert_int_equal(f->elements, 2);
            Bb__DeliveryBatch *b =
                bb__delivery_batch__unpack(NULL, f->element[1]->len, (uint8_t *)f->element[1]->str);
            assert_non_null(b);
            assert_int_equal(b->channel, (int)s + 1);
            assert_true(b->n_recipients > 0 && b->n_recipients <= 256);
            const uint8_t *raw;
            size_t rawlen;
            assert_int_equal(bb_zdec_decompress(z, NULL, b->notification_zstd.data,
                                                b->notification_zstd.len, &raw, &rawlen),
                             BB_OK);
            Bb__Notification *n = bb__notification__unpack(NULL, rawlen, raw);
            assert_non_null(n);
            assert_string_equal(b->notification_key + 2, n->report_id);
            assert_string_equal(n->locale, b->locale);
            for (size_t k = 0; k < b->n_recipients; k++) {
                dset_add(out, b->notification_key, b->channel, b->recipients[k]);
            }
            bb__notification__free_unpacked(n, NULL);
            bb__delivery_batch__free_unpacked(b, NULL);
        }
        freeReplyObject(r);
    }
    bb_zdec_free(z);
    qsort(out->d, out->n, sizeof(*out->d), dcmp);
}

static struct bb_dir *load_reference(void)
{
    struct bb_dir_params p = {7, 8, 5000};
    struct bb_dir *dir = bb_dir_new(&p);
    char last[BB_STREAM_ID_MAX], err[256];
    assert_int_equal(bb_snapshot_load(rc, dir, last, sizeof(last), NULL, err, sizeof(err)), BB_OK);
    return dir;
}

static void expect(struct bb_router *router, const struct bb_dir *dir, const Bb__Report *rep,
                   struct dset *want)
{
    const struct bb_route_result *res;
    assert_int_equal(bb_route_report(router, rep, NULL, &res), BB_OK);
    char key[80];
    snprintf(key, sizeof(key), "r:%s", rep->id);
    for (unsigned c = 0; c < BB_CHANNELS - 1; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            for (uint32_t i = 0; i < res->lists[c][l].n; i++) {
                dset_add(want, key, (int)c + 1, res->lists[c][l].ids[i]);
            }
        }
    }
    (void)dir;
}

static void assert_same(struct dset *got, struct dset *want)
{
    qsort(want->d, want->n, sizeof(*want->d), dcmp);
    size_t dups = 0;
    for (size_t i = 1; i < got->n; i++) {
        dups += dcmp(&got->d[i - 1], &got->d[i]) == 0;
    }
    assert_int_equal(dups, 0);
    if (got->n != want->n) {
        fprintf(stderr, "deliveries: got %zu, want %zu\n", got->n, want->n);
    }
    assert_int_equal(got->n, want->n);
    for (size_t i = 0; i < got->n; i++) {
        assert_int_equal(dcmp(&got->d[i], &want->d[i]), 0);
    }
}

/* What came out of bb:out:* equals, delivery for delivery, what the
 * reference router makes of reps on a snapshot of the directory: none
 * missing, none extra, none twice. Returns how many deliveries that is. */
static size_t assert_outputs_match(const Bb__Report *reps, int n)
{
    struct dset got = {0}, want = {0};
    read_outputs(&got);
    struct bb_dir *dir = load_reference();
    struct bb_router *router = bb_router_new(dir);
    for (int i = 0; i < n; i++) {
        expect(router, dir, &reps[i], &want);
    }
    assert_same(&got, &want);
    size_t total = want.n;
    bb_router_free(router);
    bb_dir_free(dir);
    free(got.d);
    free(want.d);
    return total;
}

/* ---- tests ------------------------------------------------------------------------------- */

static int setup(void **state)
{
    srv = bb_harness_redis_start();
    if (!srv) {
        return -1;
    }
    rc = bb_harness_redis_connect(srv);
    return rc ? 0 : -1;
}

static int teardown(void **state)
{
    stop_broker(SIGKILL);
    if (rc) {
        redisFree(rc);
        rc = NULL;
    }
    return 0;
}

static int reset(void **state)
{
    stop_broker(SIGKILL);
    redisReply *r = redisCommand(rc, "CONFIG SET maxmemory 0");
    freeReplyObject(r);
    r = redisCommand(rc, "FLUSHALL");
    freeReplyObject(r);
    return 0;
}

/* Reports in, batches out: recipients equal the reference router's. */
static void reports_match_reference(void **state)
{
    populate();
    start_broker("broker-a", NULL);
    enum { N = 150 };
    static Bb__Report reps[N];
    static char ids[N][40];
    for (int i = 0; i < N; i++) {
        random_report(&reps[i], ids[i], sizeof(ids[i]), i);
        xadd_report(&reps[i]);
    }
    wait_drained(20);
    assert_true(broker_alive());

    /* The population really reaches people. */
    assert_true(assert_outputs_match(reps, N) > 500);
    assert_int_equal(cmd_int("XLEN bb:dead"), 0);
}

struct bad_case {
    const char *name;
    const char *reason;
};

/* Each invalid input reaches bb:dead with its reason and original bytes,
 * and the broker keeps serving. */
static void invalid_inputs_are_dead_lettered(void **state)
{
    populate();
    start_broker("broker-b", NULL);
    static const struct bad_case cases[] = {
        {"garbage", "decode_error"},      {"no_p", "missing_payload"},
        {"nan", "bad_location"},          {"lat_range", "bad_location"},
        {"category", "unknown_category"}, {"text", "text_too_long"},
        {"utf8", "bad_utf8:text"},        {"group", "unknown_group"},
        {"no_id", "missing_field:id"},    {"no_author", "missing_field:author_id"},
        {"media", "bad_media_url"},       {"urgency", "unknown_urgency"},
    };
    const size_t n = sizeof(cases) / sizeof(cases[0]);
    char bigtext[5000];
    memset(bigtext, 'x', sizeof(bigtext) - 1);
    bigtext[sizeof(bigtext) - 1] = '\0';
    Bb__Media m = BB__MEDIA__INIT, *mp = &m;
    m.url = "javascript:alert(1)";
    for (size_t i = 0; i < n; i++) {
        const char *c = cases[i].name;
        if (strcmp(c, "garbage") == 0) {
            cmd_ok("XADD bb:reports * p %b", "\xff\xff\xff\x01garbage", (size_t)11);
            continue;
        }
        if (strcmp(c, "no_p") == 0) {
            cmd_ok("XADD bb:reports * q 1 r 2");
            cmd_ok("XADD bb:reports * q 1");
            continue;
        }
        Bb__Report r;
        char id[40];
        random_report(&r, id, sizeof(id), 1000 + (int)i);
        if (strcmp(c, "nan") == 0) {
            r.lat = NAN;
        } else if (strcmp(c, "lat_range") == 0) {
            r.lat = 91.0;
        } else if (strcmp(c, "category") == 0) {
            r.category = (Bb__Category)99;
        } else if (strcmp(c, "text") == 0) {
            r.text = bigtext;
        } else if (strcmp(c, "utf8") == 0) {
            r.text = "caf\xc3\x28 kapot";
        } else if (strcmp(c, "group") == 0) {
            r.group_id = 999999;
        } else if (strcmp(c, "no_id") == 0) {
            r.id = "";
        } else if (strcmp(c, "no_author") == 0) {
            r.author_id = 0;
        } else if (strcmp(c, "media") == 0) {
            r.media = &mp;
            r.n_media = 1;
        } else if (strcmp(c, "urgency") == 0) {
            r.urgency = (Bb__Urgency)7;
        }
        xadd_report(&r);
    }
    /* The broker keeps serving: a valid report after all that is routed. */
    Bb__Report ok;
    char okid[40];
    random_report(&ok, okid, sizeof(okid), 5000);
    ok.group_id = 1;
    ok.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    xadd_report(&ok);
    wait_drained(20);
    assert_true(broker_alive());

    redisReply *r = redisCommand(rc, "XRANGE bb:dead - +");
    assert_non_null(r);
    assert_int_equal(r->elements, n + 1); /* no_p added two entries */
    size_t seen[32] = {0};
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        const char *reason = NULL, *stream = NULL;
        bool has_p = false, has_id = false;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            if (strcmp(f->element[k]->str, "reason") == 0) {
                reason = f->element[k + 1]->str;
            } else if (strcmp(f->element[k]->str, "stream") == 0) {
                stream = f->element[k + 1]->str;
            } else if (strcmp(f->element[k]->str, "p") == 0) {
                has_p = true;
            } else if (strcmp(f->element[k]->str, "id") == 0) {
                has_id = true;
            }
        }
        assert_non_null(reason);
        assert_string_equal(stream, "bb:reports");
        assert_true(has_p && has_id);
        bool known = false;
        for (size_t c = 0; c < n; c++) {
            if (strcmp(reason, cases[c].reason) == 0) {
                seen[c]++;
                known = true;
            }
        }
        if (!known) {
            fprintf(stderr, "unexpected reason %s\n", reason);
        }
        assert_true(known);
    }
    for (size_t c = 0; c < n; c++) {
        if (!seen[c]) {
            fprintf(stderr, "no dead letter for case %s (%s)\n", cases[c].name, cases[c].reason);
        }
        assert_true(seen[c] > 0);
    }
    freeReplyObject(r);
    /* The garbage entry's original bytes are kept verbatim. */
    r = redisCommand(rc, "XRANGE bb:dead - +");
    bool checked = false;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        const redisReply *reason = NULL, *p = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            if (strcmp(f->element[k]->str, "reason") == 0) {
                reason = f->element[k + 1];
            } else if (strcmp(f->element[k]->str, "p") == 0) {
                p = f->element[k + 1];
            }
        }
        if (reason && strcmp(reason->str, "decode_error") == 0) {
            assert_non_null(p);
            assert_int_equal(p->len, 11);
            assert_memory_equal(p->str, "\xff\xff\xff\x01garbage", 11);
            checked = true;
        }
    }
    assert_true(checked);
    freeReplyObject(r);
    assert_true(cmd_int("XLEN bb:out:inbox") + cmd_int("XLEN bb:out:push") > 0);
}

static bool delivered_to(const char *report_id, uint64_t user)
{
    struct dset got = {0};
    read_outputs(&got);
    char key[80];
    snprintf(key, sizeof(key), "r:%s", report_id);
    bool found = false;
    for (size_t i = 0; i < got.n && !found; i++) {
        found = strcmp(got.d[i].key, key) == 0 && got.d[i].user == user;
    }
    free(got.d);
    return found;
}

/* A membership added while the broker runs takes effect for the next report. */
static void directory_change_applies_live(void **state)
{
    populate();
    start_broker("broker-c", NULL);
    /* A new user with no watch area and no group: gets nothing. */
    Bb__User u = BB__USER__INIT;
    u.id = 777777;
    u.screen_name = "nieuw";
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
    ev.user_upsert = &u;
    store(&ev);

    Bb__Report r;
    char id1[40], id2[40];
    random_report(&r, id1, sizeof(id1), 1);
    r.group_id = 5;
    r.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    r.category = BB__CATEGORY__CATEGORY_BURGLARY;
    r.source = BB__SOURCE__SOURCE_POLICE;
    xadd_report(&r);
    wait_drained(10);
    assert_false(delivered_to(id1, 777777));

    Bb__Membership m = BB__MEMBERSHIP__INIT;
    m.user_id = 777777;
    m.group_id = 5;
    Bb__DirectoryEvent me = BB__DIRECTORY_EVENT__INIT;
    me.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
    me.member_add = &m;
    store(&me);
    /* The broker tails bb:directory; give it a moment, then post again. */
    bool ok = false;
    for (int attempt = 0; attempt < 20 && !ok; attempt++) {
        usleep(100 * 1000);
        snprintf(id2, sizeof(id2), "live-%d", attempt);
        r.id = id2;
        xadd_report(&r);
        wait_drained(10);
        ok = delivered_to(id2, 777777);
    }
    assert_true(ok);
    assert_true(broker_alive());
}

/* Entries left pending by a crashed broker of the same name, and by
 * another broker that never came back, are all routed once. */
static void crashed_broker_loses_nothing(void **state)
{
    populate();
    cmd_ok("XGROUP CREATE bb:reports bb-brokers 0 MKSTREAM");
    enum { N = 120 };
    static Bb__Report reps[N];
    static char ids[N][40];
    for (int i = 0; i < N; i++) {
        random_report(&reps[i], ids[i], sizeof(ids[i]), 100 + i);
        xadd_report(&reps[i]);
    }
    /* 40 entries delivered to "broker-d" (which then "crashed"), 40 to a
     * consumer that never returns; 40 never read. */
    redisReply *r =
        redisCommand(rc, "XREADGROUP GROUP bb-brokers broker-d COUNT 40 STREAMS bb:reports >");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    r = redisCommand(rc, "XREADGROUP GROUP bb-brokers ghost COUNT 40 STREAMS bb:reports >");
    freeReplyObject(r);
    assert_int_equal(cmd_int("XLEN bb:reports"), N);

    /* Start, kill -9 at a random moment, restart: repeatedly. */
    for (int round = 0; round < 3; round++) {
        start_broker("broker-d", NULL);
        usleep((useconds_t)(50000 + rnd() % 250000));
        stop_broker(SIGKILL);
    }
    start_broker("broker-d", NULL);
    wait_drained(30);
    assert_true(broker_alive());

    assert_outputs_match(reps, N); /* each delivery exactly once, none missing */
}

/* SIGTERM: in-flight work is committed, the process exits 0. */
static void sigterm_drains_and_exits(void **state)
{
    populate();
    start_broker("broker-e", NULL);
    for (int i = 0; i < 50; i++) {
        Bb__Report r;
        char id[40];
        random_report(&r, id, sizeof(id), 300 + i);
        xadd_report(&r);
    }
    usleep(300 * 1000);
    kill(broker_pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 200 && waitpid(broker_pid, &st, WNOHANG) == 0; i++) {
        usleep(50 * 1000);
    }
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    broker_pid = 0;
    /* Whatever it read, it acked: nothing is left pending for it. */
    redisReply *r = redisCommand(rc, "XPENDING bb:reports bb-brokers");
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
}

static long long group_entries_read(void)
{
    redisReply *r = redisCommand(rc, "XINFO GROUPS bb:reports");
    long long v = -1;
    for (size_t k = 0;
         r && r->type == REDIS_REPLY_ARRAY && r->elements && k + 1 < r->element[0]->elements;
         k += 2) {
        if (strcmp(r->element[0]->element[k]->str, "entries-read") == 0) {
            v = r->element[0]->element[k + 1]->integer;
        }
    }
    freeReplyObject(r);
    return v;
}

/* Output streams over the high watermark stop the input — also for a
 * broker that starts into a full backlog; once workers drain them, the
 * broker reads on. */
static void backpressure_pauses_input(void **state)
{
    populate();
    for (int i = 0; i < 5; i++) {
        cmd_ok("XADD bb:out:push * p backlog");
    }
    enum { N = 40 };
    for (int i = 0; i < N; i++) {
        Bb__Report r;
        char id[40];
        random_report(&r, id, sizeof(id), 700 + i);
        xadd_report(&r);
    }
    start_broker("broker-f", "out_high_watermark 3\nout_low_watermark 1\n"
                             "backpressure_check 20ms\n");
    usleep(1500 * 1000);
    assert_true(broker_alive());
    redisReply *g = redisCommand(rc, "XINFO GROUPS bb:reports");
    assert_int_equal(g->elements, 1); /* the broker is up and has its group */
    freeReplyObject(g);
    assert_true(group_entries_read() <= 0); /* nothing read while the backlog is full */
    /* Workers catch up: the outputs empty, the broker resumes, everything is routed. */
    for (int i = 0; i < 400 && group_entries_read() < N; i++) {
        cmd_ok("DEL bb:out:push bb:out:email bb:out:inbox bb:out:digest bb:out:social");
        usleep(25 * 1000);
    }
    wait_drained(20);
    assert_int_equal(group_entries_read(), N);
}

/* Redis at maxmemory refuses the commit whole: nothing half-written,
 * nothing acked; once memory frees, every delivery goes out exactly once. */
static void out_of_memory_commits_nothing_then_recovers(void **state)
{
    populate();
    enum { N = 30 };
    static Bb__Report reps[N];
    static char ids[N][40];
    for (int i = 0; i < N; i++) {
        random_report(&reps[i], ids[i], sizeof(ids[i]), 900 + i);
        xadd_report(&reps[i]);
    }
    cmd_ok("XGROUP CREATE bb:reports bb-brokers 0 MKSTREAM");
    cmd_ok("XGROUP CREATE bb:report-status bb-brokers 0 MKSTREAM");
    /* Read by this broker before Redis filled up: pending for it. */
    redisReply *pre = redisCommand(rc, "XREADGROUP GROUP bb-brokers broker-g STREAMS bb:reports >");
    freeReplyObject(pre);
    cmd_ok("CONFIG SET maxmemory 1");
    start_broker("broker-g", NULL);
    usleep(1500 * 1000);
    assert_true(broker_alive());
    long long outs = cmd_int("XLEN bb:out:push") + cmd_int("XLEN bb:out:inbox") +
                     cmd_int("XLEN bb:out:email") + cmd_int("XLEN bb:out:digest");
    assert_int_equal(outs, 0);
    redisReply *r = redisCommand(rc, "XPENDING bb:reports bb-brokers");
    assert_int_equal(r->element[0]->integer, N); /* nothing acked */
    freeReplyObject(r);
    cmd_ok("CONFIG SET maxmemory 0");
    wait_drained(30);

    assert_outputs_match(reps, N);
}

static long long pending_for(const char *consumer)
{
    redisReply *r = redisCommand(rc, "XPENDING bb:reports bb-brokers");
    long long n = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
        r->element[3]->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->element[3]->elements; i++) {
            redisReply *c = r->element[3]->element[i];
            if (strcmp(c->element[0]->str, consumer) == 0) {
                n = atoll(c->element[1]->str);
            }
        }
    }
    freeReplyObject(r);
    return n;
}

static size_t count_in_log(const char *needle)
{
    char path[512], line[4096];
    bb_harness_path(path, sizeof(path), "broker.log");
    FILE *f = fopen(path, "r");
    size_t n = 0;
    while (f && fgets(line, sizeof(line), f)) {
        n += strstr(line, needle) != NULL;
    }
    if (f) {
        fclose(f);
    }
    return n;
}

/* A broker that read entries and was paused (SIGSTOP) with its commits
 * still failing, while another broker claimed and committed them: when it
 * resumes, its late commits find the entries acked and write nothing.
 * Every delivery exactly once. */
static void paused_broker_writes_nothing_twice(void **state)
{
    populate();
    enum { N = 60 };
    static Bb__Report reps[N];
    static char ids[N][40];
    for (int i = 0; i < N; i++) {
        random_report(&reps[i], ids[i], sizeof(ids[i]), 1200 + i);
        xadd_report(&reps[i]);
    }
    cmd_ok("XGROUP CREATE bb:reports bb-brokers 0 MKSTREAM");
    cmd_ok("XGROUP CREATE bb:report-status bb-brokers 0 MKSTREAM");
    size_t skipped_before = count_in_log("commit skipped");
    /* A reads everything, but Redis is full: its commits are refused. */
    cmd_ok("CONFIG SET maxmemory 1");
    start_broker("broker-h", "log_level debug\n");
    pid_t a = broker_pid;
    for (int i = 0; i < 200 && pending_for("broker-h") < N; i++) {
        usleep(25 * 1000);
    }
    assert_int_equal(pending_for("broker-h"), N);
    kill(a, SIGSTOP);
    cmd_ok("CONFIG SET maxmemory 0");
    /* B claims A's idle entries and commits them. */
    start_broker("broker-i", NULL);
    pid_t b = broker_pid;
    wait_drained(30);
    /* A wakes up and retries its commits: they must be skipped. Retries
     * back off up to 5 s, so after 6 s every one of them has run. (The log
     * is rate-limited, so count at least one skip, not all.) */
    kill(a, SIGCONT);
    usleep(6000 * 1000);
    assert_true(count_in_log("commit skipped") > skipped_before);
    kill(a, SIGKILL);
    waitpid(a, NULL, 0);
    broker_pid = b;

    assert_outputs_match(reps, N);
}

static long long metric(const char *text, const char *name)
{
    char pat[128];
    snprintf(pat, sizeof(pat), "\n%s ", name);
    const char *p = strstr(text, pat);
    return p ? atoll(p + strlen(pat)) : -1;
}

/* The operators' endpoint counts what happened. */
static void metrics_count_what_happened(void **state)
{
    populate();
    int port = bb_harness_free_port();
    char extra[128];
    snprintf(extra, sizeof(extra), "metrics_addr 127.0.0.1:%d\n", port);
    start_broker("broker-m", extra);
    enum { N = 25 };
    for (int i = 0; i < N; i++) {
        Bb__Report r;
        char id[40];
        random_report(&r, id, sizeof(id), 1500 + i);
        xadd_report(&r);
    }
    cmd_ok("XADD bb:reports * p %b", "garbage", (size_t)7);
    wait_drained(20);
    static char body[65536];
    int code = -1;
    for (int i = 0; i < 50 && code != 200; i++) {
        code = bb_harness_http_get(port, "/readyz", body, sizeof(body));
        usleep(20 * 1000);
    }
    assert_int_equal(code, 200);
    assert_int_equal(bb_harness_http_get(port, "/healthz", body, sizeof(body)), 200);
    assert_int_equal(bb_harness_http_get(port, "/metrics", body, sizeof(body)), 200);
    assert_int_equal(metric(body, "bb_reports_in_total"), N + 1);
    assert_int_equal(metric(body, "bb_routed_total"), N);
    assert_int_equal(metric(body, "bb_dead_letters_total"), 1);
    long long outs = cmd_int("XLEN bb:out:push") + cmd_int("XLEN bb:out:email") +
                     cmd_int("XLEN bb:out:inbox") + cmd_int("XLEN bb:out:digest") +
                     cmd_int("XLEN bb:out:social");
    assert_int_equal(metric(body, "bb_batches_total"), outs);
    assert_non_null(strstr(body, "bb_commit_latency_seconds_bucket{le=\"+Inf\"} 25"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(reports_match_reference, reset),
        cmocka_unit_test_setup(invalid_inputs_are_dead_lettered, reset),
        cmocka_unit_test_setup(directory_change_applies_live, reset),
        cmocka_unit_test_setup(crashed_broker_loses_nothing, reset),
        cmocka_unit_test_setup(sigterm_drains_and_exits, reset),
        cmocka_unit_test_setup(backpressure_pauses_input, reset),
        cmocka_unit_test_setup(out_of_memory_commits_nothing_then_recovers, reset),
        cmocka_unit_test_setup(paused_broker_writes_nothing_twice, reset),
        cmocka_unit_test_setup(metrics_count_what_happened, reset),
    };
    /* BB_TESTS: only the cases named in this comma-separated list. */
    struct CMUnitTest chosen[sizeof(tests) / sizeof(tests[0])];
    size_t n = 0;
    const char *only = getenv("BB_TESTS");
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        size_t len = strlen(tests[i].name);
        const char *p = only;
        bool want = !only || !only[0];
        while (!want && p && *p) {
            want = strncmp(p, tests[i].name, len) == 0 && (p[len] == ',' || p[len] == '\0');
            p = strchr(p, ',');
            p = p ? p + 1 : NULL;
        }
        if (want) {
            chosen[n++] = tests[i];
        }
    }
    int failures = _cmocka_run_group_tests("broker", chosen, n, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
