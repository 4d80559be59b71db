/* Privacy end to end: a small directory and a few reports go through the
 * built buurtbusctl, buurtbus-broker and buurtbus-worker (push, inbox and
 * social instances, each with the file plug-in) against the harness'
 * redis-server, and everything that comes out is scanned for what must
 * never leak: e-mail addresses, push tokens, internal user ids of other
 * members, exact coordinates, report text in logs or public posts, screen
 * names of anonymous reporters. Positive checks (files written, a social
 * delivery made, a screen name shown where it should be) keep the scan
 * from passing on nothing.
 *
 * Threads: the test's main thread only; the programs are child processes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "harness.h"
#include "wire.h"
#include "worker_kit.h"

#define FIRST_USER 101
#define NUSERS 20
#define AUTHOR_ID "7777777"
#define AUTHOR_NAME "Kees Melder"
#define EMAIL_DOMAIN "@prive.example"
#define TOKEN_PREFIX "SECRET-TOKEN-"
#define STREET "Kerkstraat 12"

/* The reports: exact coordinates with six decimals, a street in the text. */
struct report {
    const char *id;
    const char *author_id;
    const char *screen_name;
    const char *anonymity;
    const char *lat_s, *lon_s;
    double lat, lon;
};

static const struct report reports[] = {
    {"priv-1", AUTHOR_ID, AUTHOR_NAME, "screen_name", "51.690123", "5.301987", 51.690123, 5.301987},
    {"priv-2", "105", "Buur105", "screen_name", "51.691234", "5.302345", 51.691234, 5.302345},
    {"priv-3", "110", "Buur110", "neighbour", "51.689876", "5.300456", 51.689876, 5.300456},
};
#define NREPORTS (sizeof(reports) / sizeof(reports[0]))

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t broker_pid, worker_pid;

/* ---- geohash, to check a notification's place against its cell --------------------------- */

static const char b32[] = "0123456789bcdefghjkmnpqrstuvwxyz";

/* The centre of cell; false if it is not a geohash. */
static bool cell_centre(const char *cell, double *lat, double *lon)
{
    double la[2] = {-90, 90}, lo[2] = {-180, 180};
    bool even = true;
    if (!cell[0]) {
        return false;
    }
    for (const char *p = cell; *p; p++) {
        const char *q = strchr(b32, *p);
        if (!q) {
            return false;
        }
        int v = (int)(q - b32);
        for (int bit = 4; bit >= 0; bit--) {
            double *r = even ? lo : la;
            double mid = (r[0] + r[1]) / 2;
            r[(v >> bit) & 1 ? 0 : 1] = mid;
            even = !even;
        }
    }
    *lat = (la[0] + la[1]) / 2;
    *lon = (lo[0] + lo[1]) / 2;
    return true;
}

static void encode(double lat, double lon, unsigned prec, char *out)
{
    double la[2] = {-90, 90}, lo[2] = {-180, 180};
    bool even = true;
    for (unsigned i = 0; i < prec; i++) {
        int v = 0;
        for (int bit = 0; bit < 5; bit++) {
            double *r = even ? lo : la;
            double x = even ? lon : lat;
            double mid = (r[0] + r[1]) / 2;
            v <<= 1;
            if (x >= mid) {
                v |= 1;
                r[0] = mid;
            } else {
                r[1] = mid;
            }
            even = !even;
        }
        out[i] = b32[v];
    }
    out[prec] = 0;
}

/* ---- scanning ---------------------------------------------------------------------------- */

static char *slurp(const char *name, size_t *len)
{
    char path[512];
    bb_harness_path(path, sizeof(path), name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        *len = 0;
        return calloc(1, 1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    *len = fread(buf, 1, (size_t)n, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static void refuse(const char *what, const char *hay, size_t len, const char *needle)
{
    size_t nl = strlen(needle);
    for (size_t i = 0; i + nl <= len; i++) {
        if (memcmp(hay + i, needle, nl) == 0) {
            size_t from = i > 60 ? i - 60 : 0;
            size_t to = i + nl + 60 < len ? i + nl + 60 : len;
            fail_msg("%s leaks \"%s\": ...%.*s...", what, needle, (int)(to - from), hay + from);
        }
    }
}

/* No e-mail, no token in anything. */
static void refuse_contacts(const char *what, const char *s, size_t len)
{
    refuse(what, s, len, EMAIL_DOMAIN);
    refuse(what, s, len, TOKEN_PREFIX);
    refuse(what, s, len, "prive.example");
}

static void refuse_exact(const char *what, const char *s, size_t len)
{
    for (size_t r = 0; r < NREPORTS; r++) {
        refuse(what, s, len, reports[r].lat_s);
        refuse(what, s, len, reports[r].lon_s);
    }
}

static const struct report *report_of(const char *id)
{
    for (size_t r = 0; r < NREPORTS; r++) {
        if (id && strcmp(id, reports[r].id) == 0) {
            return &reports[r];
        }
    }
    fail_msg("unknown report id %s", id ? id : "(null)");
    return NULL;
}

/* A notification's place: a cell centre, of the cell holding the exact
 * point, never the point itself; for social at most precision 6 and
 * visibly away from the point. */
static void check_place(const char *what, const char *cell, double lat, double lon,
                        const struct report *rep, bool social)
{
    double clat, clon;
    assert_true(cell_centre(cell, &clat, &clon));
    char exact[16];
    size_t prec = strlen(cell);
    assert_true(prec >= 1 && prec <= 12);
    encode(rep->lat, rep->lon, (unsigned)prec, exact);
    if (strcmp(exact, cell) != 0) {
        fail_msg("%s: cell %s does not hold the report's place (%s)", what, cell, exact);
    }
    if (fabs(lat - clat) > 1e-9 || fabs(lon - clon) > 1e-9) {
        fail_msg("%s: %.7f,%.7f is not the centre of %s", what, lat, lon, cell);
    }
    if (fabs(lat - rep->lat) < 1e-7 && fabs(lon - rep->lon) < 1e-7) {
        fail_msg("%s: exact coordinates %s,%s", what, rep->lat_s, rep->lon_s);
    }
    if (social) {
        if (prec > 6) {
            fail_msg("%s: social cell %s finer than precision 6", what, cell);
        }
        assert_true(fabs(lat - rep->lat) > 0.0005 || fabs(lon - rep->lon) > 0.0005);
    }
}

/* Every string of a notification: no contact data, no author id; text,
 * author per channel. */
static void check_notification(const Bb__Notification *n, bool social, const char *what)
{
    const char *strs[] = {n->report_id, n->status_id, n->locale, n->title,
                          n->text,      n->author,    n->cell,   n->group_name};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        const char *s = strs[i] ? strs[i] : "";
        refuse_contacts(what, s, strlen(s));
        refuse(what, s, strlen(s), AUTHOR_ID);
    }
    for (size_t m = 0; m < n->n_media; m++) {
        const char *u = n->media[m]->url ? n->media[m]->url : "";
        refuse_contacts(what, u, strlen(u));
        refuse(what, u, strlen(u), AUTHOR_ID);
    }
    const struct report *rep = report_of(n->report_id);
    check_place(what, n->cell, n->lat, n->lon, rep, social);
    if (strcmp(rep->anonymity, "neighbour") == 0) {
        assert_true(n->anonymous);
        assert_true(!n->author || !n->author[0]);
    }
    if (social) {
        assert_true(!n->text || !n->text[0]);
        assert_true(!n->author || !n->author[0]);
    }
}

/* Every bb:out:* entry decoded and checked; returns bb:out:social's count. */
static size_t scan_out_streams(void)
{
    static const char *streams[] = {"bb:out:push", "bb:out:email", "bb:out:inbox", "bb:out:digest",
                                    "bb:out:social"};
    struct bb_zdict *dicts[16];
    size_t ndicts = 0;
    redisReply *k = bb_kit_cmd(rc, "KEYS bb:zdict:*");
    for (size_t i = 0; i < k->elements && ndicts < 16; i++) {
        if (strcmp(k->element[i]->str, "bb:zdict:current") == 0) {
            continue;
        }
        redisReply *d = bb_kit_cmd(rc, "GET %s", k->element[i]->str);
        dicts[ndicts] = bb_zdict_new(d->str, d->len, 3);
        assert_non_null(dicts[ndicts]);
        ndicts++;
        freeReplyObject(d);
    }
    freeReplyObject(k);
    struct bb_zdec *z = bb_zdec_new(1 << 20);
    size_t social = 0, total = 0;
    for (size_t s = 0; s < sizeof(streams) / sizeof(streams[0]); s++) {
        bool is_social = s == 4;
        redisReply *r = bb_kit_cmd(rc, "XRANGE %s - +", streams[s]);
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *f = r->element[i]->element[1];
            assert_int_equal(f->elements, 2);
            redisReply *p = f->element[1];
            refuse_contacts(streams[s], p->str, p->len);
            Bb__DeliveryBatch *b = bb__delivery_batch__unpack(NULL, p->len, (uint8_t *)p->str);
            assert_non_null(b);
            const uint8_t *raw = NULL;
            size_t rawlen = 0;
            int rr = bb_zdec_decompress(z, NULL, b->notification_zstd.data,
                                        b->notification_zstd.len, &raw, &rawlen);
            for (size_t d = 0; rr != BB_OK && d < ndicts; d++) {
                rr = bb_zdec_decompress(z, dicts[d], b->notification_zstd.data,
                                        b->notification_zstd.len, &raw, &rawlen);
            }
            assert_int_equal(rr, BB_OK);
            refuse_contacts(streams[s], (const char *)raw, rawlen);
            refuse_exact(streams[s], (const char *)raw, rawlen);
            Bb__Notification *n = bb__notification__unpack(NULL, rawlen, raw);
            assert_non_null(n);
            char what[96];
            snprintf(what, sizeof(what), "%s entry %zu (%s)", streams[s], i, n->report_id);
            check_notification(n, is_social, what);
            if (is_social) {
                assert_int_equal(b->recipient_kind, BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP);
                social++;
            } else {
                /* The author is never a recipient of their own report
                 * (of the others' reports they are, as a member). */
                for (size_t j = 0; n->report_id && j < b->n_recipients &&
                                   strcmp(n->report_id, reports[0].id) == 0;
                     j++) {
                    assert_int_not_equal(b->recipients[j], 7777777);
                }
            }
            total++;
            bb__notification__free_unpacked(n, NULL);
            bb__delivery_batch__free_unpacked(b, NULL);
        }
        freeReplyObject(r);
    }
    bb_zdec_free(z);
    for (size_t d = 0; d < ndicts; d++) {
        bb_zdict_unref(dicts[d]);
    }
    assert_true(total > 0);
    return social;
}

/* The file plug-in's lines for one instance; returns how many. *author_shown
 * counts lines of priv-1 that name its author. */
static size_t scan_file(const char *name, bool social, size_t *author_shown)
{
    size_t len;
    char *text = slurp(name, &len);
    refuse_contacts(name, text, len);
    refuse_exact(name, text, len);
    if (social) {
        refuse(name, text, len, STREET);
        refuse(name, text, len, AUTHOR_NAME);
    }
    size_t lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_object *o = json_tokener_parse(line);
        if (!o) {
            fail_msg("%s: line does not parse: %s", name, line);
        }
        json_object *v;
        assert_false(json_object_object_get_ex(o, "email", NULL));
        assert_false(json_object_object_get_ex(o, "push_token", NULL));
        assert_true(json_object_object_get_ex(o, "report_id", &v));
        const struct report *rep = report_of(json_object_get_string(v));
        /* The line's own recipient is the only member id it may name: the
         * distinctive author id appears only in lines addressed to them,
         * never in the lines of their own report. */
        assert_true(json_object_object_get_ex(o, "recipient", &v));
        uint64_t to = (uint64_t)json_object_get_int64(v);
        if (to != 7777777 || rep == &reports[0]) {
            assert_null(strstr(line, AUTHOR_ID));
        }
        const char *cell =
            json_object_object_get_ex(o, "cell", &v) ? json_object_get_string(v) : "";
        double lat = json_object_object_get_ex(o, "lat", &v) ? json_object_get_double(v) : 0;
        double lon = json_object_object_get_ex(o, "lon", &v) ? json_object_get_double(v) : 0;
        char what[128];
        snprintf(what, sizeof(what), "%s line %zu (%s)", name, lines + 1, rep->id);
        /* The file renders coordinates rounded; compare the cell and
         * distance, the exact-string scan above covers the rest. */
        double clat, clon;
        assert_true(cell_centre(cell, &clat, &clon));
        assert_true(fabs(lat - clat) < 1e-5 && fabs(lon - clon) < 1e-5);
        char exact[16];
        encode(rep->lat, rep->lon, (unsigned)strlen(cell), exact);
        assert_string_equal(exact, cell);
        const char *author =
            json_object_object_get_ex(o, "author", &v) ? json_object_get_string(v) : "";
        const char *msg = json_object_object_get_ex(o, "text", &v) ? json_object_get_string(v) : "";
        if (social) {
            if (strlen(cell) > 6) {
                fail_msg("%s: social cell %s finer than precision 6", what, cell);
            }
            assert_true(fabs(lat - rep->lat) > 0.0005 || fabs(lon - rep->lon) > 0.0005);
            assert_string_equal(author, "");
            assert_string_equal(msg, "");
            assert_true(json_object_object_get_ex(o, "recipient_kind", &v));
            assert_string_equal(json_object_get_string(v), "group");
        }
        if (strcmp(rep->anonymity, "neighbour") == 0) {
            assert_string_equal(author, "");
            assert_null(strstr(line, rep->screen_name));
        } else if (!social && strcmp(author, rep->screen_name) == 0 && rep == &reports[0]) {
            (*author_shown)++;
        }
        json_object_put(o);
        lines++;
    }
    free(text);
    return lines;
}

static void scan_log(const char *name)
{
    size_t len;
    char *text = slurp(name, &len);
    refuse_contacts(name, text, len);
    refuse_exact(name, text, len);
    refuse(name, text, len, STREET);
    refuse(name, text, len, "Verdachte man");
    free(text);
}

/* ---- running it -------------------------------------------------------------------------- */

static void ctl(const char *cmd, const char *file)
{
    const char *argv[] = {BB_CTL_PATH,
                          "--redis",
                          srv->addr,
                          cmd,
                          cmd[0] == 'p' ? "--file" : file,
                          cmd[0] == 'p' ? file : NULL,
                          NULL};
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, NULL, 30, &res), 0);
    if (res.status != 0) {
        fprintf(stderr, "buurtbusctl %s: %d\n%s\n%s\n", cmd, res.status, res.out, res.err);
    }
    assert_int_equal(res.status, 0);
    bb_run_result_free(&res);
}

static void load_directory(void)
{
    static char text[16384];
    size_t n = 0;
    char cell[8];
    encode(51.6901, 5.3019, 5, cell);
    n += (size_t)snprintf(
        text + n, sizeof(text) - n,
        "{\"group\":{\"id\":1,\"name\":\"Buurtpreventie Centrum\",\"cells\":[\"%s\"],"
        "\"policy\":{\"public_posting\":true},\"location_precision\":7}}\n",
        cell);
    for (int k = 0; k <= NUSERS; k++) {
        unsigned long long id = k < NUSERS ? (unsigned long long)(FIRST_USER + k) : 7777777ULL;
        char name[32];
        if (k < NUSERS) {
            snprintf(name, sizeof(name), "Buur%llu", id);
        } else {
            snprintf(name, sizeof(name), "%s", AUTHOR_NAME);
        }
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "{\"user\":{\"id\":%llu,\"screen_name\":\"%s\",\"locale\":\"nl\","
                              "\"time_zone\":\"Europe/Amsterdam\"",
                              id, name);
        if (k % 3 == 0) {
            n += (size_t)snprintf(text + n, sizeof(text) - n,
                                  ",\"watch\":{\"lat\":%.4f,\"lon\":%.4f,\"radius_m\":900}",
                                  51.6895 + 0.0002 * (k % 5), 5.3005 + 0.0003 * (k % 7));
        }
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "}}\n{\"member\":{\"user\":%llu,\"group\":1}}\n", id);
        assert_true(n < sizeof(text));
    }
    char path[512];
    assert_non_null(bb_harness_write_file(path, sizeof(path), "dir.jsonl", text));
    ctl("load", path);
    /* Contact data, as the app stores it. */
    for (int k = 0; k <= NUSERS; k++) {
        unsigned long long id = k < NUSERS ? (unsigned long long)(FIRST_USER + k) : 7777777ULL;
        bb_kit_int(rc,
                   "HSET bb:user:%llu email user%llu" EMAIL_DOMAIN " push_token " TOKEN_PREFIX
                   "%llu push_platform file",
                   id, id, id);
    }
}

static void post_reports(void)
{
    static char text[4096];
    size_t n = 0;
    for (size_t r = 0; r < NREPORTS; r++) {
        n += (size_t)snprintf(
            text + n, sizeof(text) - n,
            "{\"id\":\"%s\",\"author_id\":%s,\"author_screen_name\":\"%s\",\"group_id\":1,"
            "\"lat\":%s,\"lon\":%s,\"category\":\"burglary\",\"urgency\":\"in_progress\","
            "\"source\":\"resident\",\"text\":\"Verdachte man bij %s, %s\","
            "\"anonymity\":\"%s\",\"locale\":\"nl\"}\n",
            reports[r].id, reports[r].author_id, reports[r].screen_name, reports[r].lat_s,
            reports[r].lon_s, STREET, r == 0 ? "draagt een rode jas" : "rijdt weg",
            reports[r].anonymity);
    }
    char path[512];
    assert_non_null(bb_harness_write_file(path, sizeof(path), "reports.jsonl", text));
    ctl("post", path);
}

static void start_broker(void)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "redis %s\nname broker-priv\nrouter_threads 1\nblock 200ms\nclaim_idle 1s\n"
             "claim_interval 300ms\nmetrics_addr \"\"\nlog_level debug\n",
             srv->addr);
    broker_pid = bb_kit_spawn(BB_BROKER_PATH, "broker.conf", text, "broker.log");
}

static void start_worker(void)
{
    char conf[4096], push[512], inbox[512], social[512];
    bb_harness_path(push, sizeof(push), "push.jsonl");
    bb_harness_path(inbox, sizeof(inbox), "inbox.jsonl");
    bb_harness_path(social, sizeof(social), "social.jsonl");
    snprintf(conf, sizeof(conf),
             "redis %s\nname w-priv\nplugin_dir \"%s\"\nblock 100ms\nlog_level debug\n"
             "retry_min 10ms\nretry_max 100ms\nchannels push,inbox,social\n"
             "channel.push.plugin file\nchannel.push.path \"%s\"\n"
             "channel.inbox.plugin file\nchannel.inbox.path \"%s\"\n"
             "channel.social.plugin file\nchannel.social.path \"%s\"\n",
             srv->addr, BB_PLUGIN_DIR, push, inbox, social);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, "worker.log");
}

/* bb:reports read and acked by the broker. */
static bool broker_drained(void)
{
    return bb_harness_stream_unfinished(rc, "bb:reports", "bb-brokers") == 0;
}

static long long workers_unfinished(void)
{
    static const char *inst[] = {"push", "inbox", "social"};
    long long n = 0;
    for (size_t i = 0; i < 3; i++) {
        char stream[32];
        snprintf(stream, sizeof(stream), "bb:out:%s", inst[i]);
        if (bb_kit_int(rc, "EXISTS %s", stream) == 0) {
            continue; /* nothing routed there (asserted later where it matters) */
        }
        n += bb_harness_worker_unfinished(rc, stream, "bb-workers", inst[i]);
    }
    return n;
}

static void nothing_private_leaks(void **state)
{
    (void)state;
    load_directory();
    start_broker();
    start_worker();
    post_reports();
    bool drained = false;
    for (int i = 0; i < 400 && !drained; i++) {
        drained = broker_drained();
        bb_harness_sleep_ms(50);
    }
    assert_true(drained);
    assert_int_equal(bb_kit_int(rc, "XLEN bb:dead"), 0);
    assert_true(bb_kit_int(rc, "XLEN bb:out:social") >= 1);
    long long left = -1;
    for (int i = 0; i < 400 && left != 0; i++) {
        left = workers_unfinished();
        bb_harness_sleep_ms(50);
    }
    assert_int_equal(left, 0);
    /* SIGTERM: both flush their logs and exit 0 (under ASan, with no
     * error found). */
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = bb_kit_stop(&broker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);

    scan_log("broker.log");
    scan_log("worker.log");

    size_t social_entries = scan_out_streams();
    assert_true(social_entries >= 1);

    size_t shown = 0, ignored = 0;
    size_t npush = scan_file("push.jsonl", false, &shown);
    size_t ninbox = scan_file("inbox.jsonl", false, &ignored);
    size_t nsocial = scan_file("social.jsonl", true, &ignored);
    assert_true(npush > 0);
    assert_true(ninbox > 0);
    assert_true(nsocial >= 1);
    assert_true(shown > 0); /* the named author's push lines carry the screen name */
    assert_int_equal(bb_kit_dead(rc, NULL), 0);

    /* Receipts go to operators: no contact data in them either. */
    redisReply *r = bb_kit_cmd(rc, "XRANGE bb:receipts - +");
    assert_true(r->elements > 0);
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        for (size_t j = 0; j < f->elements; j++) {
            refuse_contacts("bb:receipts", f->element[j]->str, f->element[j]->len);
            refuse("bb:receipts", f->element[j]->str, f->element[j]->len, STREET);
        }
    }
    freeReplyObject(r);
}

static int setup(void **state)
{
    (void)state;
    return bb_kit_setup(&srv, &rc);
}

static int teardown(void **state)
{
    (void)state;
    bb_kit_teardown(&rc, &worker_pid, NULL);
    if (broker_pid > 0) {
        bb_kit_stop(&broker_pid, SIGKILL, BB_KIT_STOP_MS);
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nothing_private_leaks),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
