/* fuzz_seeds: writes the seed corpora of the fuzz targets into
 * CORPUS_DIR/<target>/ — valid protobuf messages built with the same
 * helpers the targets use (reports, status updates, directory events, the
 * broker's real DeliveryBatch entries with and without the fuzzers'
 * dictionary, bare frames, a retry job), a few near misses, geohash inputs,
 * configuration files (deploy/broker.conf, worker.conf and one with every option type) and
 * buurtbusctl JSON lines. Deterministic: the same files every run.
 *
 *   fuzz_seeds CORPUS_DIR SOURCE_DIR
 *
 * Threads: one. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bb_err.h"
#include "directory.h"
#include "fuzz_common.h"
#include "geohash.h"
#include "output.h"
#include "route.h"
#include "wire.h"

static const char *corpus;
static unsigned written;

static void mkdir_p(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fuzz_fail("mkdir %s: %s", path, strerror(errno));
    }
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", corpus, target);
    mkdir_p(path);
    snprintf(path, sizeof(path), "%s/%s/%s", corpus, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fuzz_fail("write %s", path);
    }
    written++;
}

static void putf(const char *target, const char *text, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void putf(const char *target, const char *text, const char *fmt, ...)
{
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    put(target, name, text, strlen(text));
}

static void copy_file(const char *target, const char *name, const char *from)
{
    FILE *f = fopen(from, "rb");
    if (!f) {
        fuzz_fail("open %s", from);
    }
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    put(target, name, buf, n);
}

#define PUT_MSG(target, prefix, msg, ...)                                                          \
    do {                                                                                           \
        size_t len_ = prefix##__get_packed_size(msg);                                              \
        uint8_t *b_ = malloc(len_ ? len_ : 1);                                                     \
        prefix##__pack(msg, b_);                                                                   \
        char name_[128];                                                                           \
        snprintf(name_, sizeof(name_), __VA_ARGS__);                                               \
        put(target, name_, b_, len_);                                                              \
        free(b_);                                                                                  \
    } while (0)

/* ---- reports and status updates --------------------------------------------------------- */

static void reports(void)
{
    for (unsigned i = 0; i < FUZZ_REPORTS; i++) {
        Bb__Report r;
        Bb__Media m[2], *mp[2];
        fuzz_report_sample(i, &r, m, mp);
        PUT_MSG("report", bb__report, &r, "report-%02u", i + 1);
    }
    /* Near misses: each fails one check of bb_validate_report or routing. */
    static const char *const names[] = {"bad-utf8", "unknown-group", "bad-media-url", "no-location",
                                        "newer-schema"};
    for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        Bb__Report r;
        Bb__Media m[2], *mp[2];
        fuzz_report_sample(1, &r, m, mp);
        switch (i) {
        case 0:
            r.text = "caf\xc3\x28 overlong \xc0\xaf";
            break;
        case 1:
            r.group_id = 99;
            break;
        case 2:
            m[1].url = "ftp://img.example/x y";
            break;
        case 3:
            r.lat = 0;
            r.lon = 0;
            break;
        case 4:
            r.schema_version = 2;
            break;
        }
        PUT_MSG("report", bb__report, &r, "report-%s", names[i]);
    }
    for (unsigned i = 0; i < FUZZ_STATUSES; i++) {
        Bb__ReportStatus s;
        fuzz_status_sample(i, &s);
        PUT_MSG("status", bb__report_status, &s, "status-%02u", i + 1);
    }
    Bb__ReportStatus s;
    fuzz_status_sample(0, &s);
    s.report_id = "";
    PUT_MSG("status", bb__report_status, &s, "status-no-report");
    fuzz_status_sample(2, &s);
    s.status = (Bb__Status)42;
    PUT_MSG("status", bb__report_status, &s, "status-unknown");
}

/* ---- directory events -------------------------------------------------------------------- */

static void directory(void)
{
    Bb__DirectoryEvent *evs[32];
    size_t n = fuzz_dir_events(evs, 32);
    for (size_t i = 0; i < n; i++) {
        PUT_MSG("directory", bb__directory_event, evs[i], "event-%02zu", i + 1);
    }
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    ev.schema_version = 1;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
    ev.user_erase = 1004;
    PUT_MSG("directory", bb__directory_event, &ev, "user-erase");
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE;
    ev.group_delete = 2;
    PUT_MSG("directory", bb__directory_event, &ev, "group-delete");

    Bb__Membership mb = BB__MEMBERSHIP__INIT;
    mb.user_id = 1003;
    mb.group_id = 1;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE;
    ev.member_remove = &mb;
    PUT_MSG("directory", bb__directory_event, &ev, "member-remove");

    Bb__Mute mu = BB__MUTE__INIT;
    mu.user_id = 1002;
    mu.group_id = 2;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MUTE;
    ev.mute = &mu;
    PUT_MSG("directory", bb__directory_event, &ev, "mute-group");
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_UNMUTE;
    ev.unmute = &mu;
    PUT_MSG("directory", bb__directory_event, &ev, "unmute-group");

    Bb__Follow fo = BB__FOLLOW__INIT;
    fo.user_id = 1005;
    fo.report_id = "r-seed-1";
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW;
    ev.unfollow = &fo;
    PUT_MSG("directory", bb__directory_event, &ev, "unfollow");

    Bb__Preferences pr = BB__PREFERENCES__INIT;
    Bb__QuietHours q = BB__QUIET_HOURS__INIT;
    Bb__ChannelSet cs = BB__CHANNEL_SET__INIT;
    Bb__Channel ch[2] = {BB__CHANNEL__CHANNEL_EMAIL, BB__CHANNEL__CHANNEL_SOCIAL};
    cs.channels = ch;
    cs.n_channels = 2;
    q.from_minute = 1380;
    q.to_minute = 360;
    pr.quiet = &q;
    pr.in_progress = &cs;
    pr.min_urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    pr.max_per_hour = 1;
    pr.digest_hour = 7;
    pr.digest_weekly = true;
    Bb__PreferencesUpdate pu = BB__PREFERENCES_UPDATE__INIT;
    pu.user_id = 1001;
    pu.prefs = &pr;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_PREFERENCES;
    ev.preferences = &pu;
    PUT_MSG("directory", bb__directory_event, &ev, "preferences");

    Bb__ContactGone cg = BB__CONTACT_GONE__INIT;
    cg.user_id = 1002;
    cg.field = "push_token";
    cg.channel = BB__CHANNEL__CHANNEL_PUSH;
    cg.reason = "unregistered";
    cg.time_ms = 1767225600000;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_CONTACT_GONE;
    ev.contact_gone = &cg;
    PUT_MSG("directory", bb__directory_event, &ev, "contact-gone");

    /* A group of many cells at mixed precisions, one of them not a geohash. */
    Bb__Group g = BB__GROUP__INIT;
    char *cells[] = {"u1hb", "u1hbc", "u1hbf9", "u1hbcz7k", "u1hbb"};
    g.id = 3;
    g.name = "Rosmalen";
    g.cells = cells;
    g.n_cells = 5;
    g.location_precision = 12;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
    ev.group_upsert = &g;
    PUT_MSG("directory", bb__directory_event, &ev, "group-cells");
    cells[4] = "u1hai";
    PUT_MSG("directory", bb__directory_event, &ev, "group-bad-cell");

    /* A user at the edge: the largest radius, near the antimeridian, muting many. */
    Bb__User u = BB__USER__INIT;
    Bb__WatchArea w = BB__WATCH_AREA__INIT;
    uint64_t muted[] = {1001, 1002, 1003};
    uint64_t mgroups[] = {1, 2};
    u.id = 1006;
    u.locale = "fy";
    u.time_zone = "Pacific/Chatham";
    w.lat = -44.0;
    w.lon = 179.999;
    w.radius_m = 65535;
    u.watch = &w;
    u.muted_authors = muted;
    u.n_muted_authors = 3;
    u.muted_groups = mgroups;
    u.n_muted_groups = 2;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
    ev.user_upsert = &u;
    PUT_MSG("directory", bb__directory_event, &ev, "user-edge");
}

/* ---- batches: the broker's own output ------------------------------------------------------ */

static void batches(void)
{
    struct bb_dir *dir = fuzz_dir_new();
    struct bb_router *router = bb_router_new(dir);
    struct bb_zdict *dict = fuzz_dict_new();
    struct bb_encoder *enc[2] = {bb_encoder_new(3, 2), bb_encoder_new(3, 100)};
    bb_encoder_set_dict(enc[1], dict);
    struct bb_out out = {0};
    unsigned nb = 0, frames = 0;
    for (unsigned i = 0; i < FUZZ_REPORTS + FUZZ_STATUSES; i++) {
        const struct bb_route_result *res;
        bb_out_reset(&out);
        unsigned with = i % 2;
        if (i < FUZZ_REPORTS) {
            Bb__Report r;
            Bb__Media m[2], *mp[2];
            fuzz_report_sample(i, &r, m, mp);
            if (bb_route_report(router, &r, NULL, &res) != BB_OK ||
                bb_encode_report(enc[with], dir, &r, res, r.time_ms, &out) != BB_OK) {
                continue;
            }
        } else {
            Bb__ReportStatus s;
            fuzz_status_sample(i - FUZZ_REPORTS, &s);
            if (bb_route_status(router, &s, NULL, &res) != BB_OK ||
                bb_encode_status(enc[with], dir, &s, res, s.time_ms, &out) != BB_OK) {
                continue;
            }
        }
        /* At most two entries per message: the corpus stays small. */
        for (uint32_t e = 0; e < out.n && e < 2; e++) {
            char name[64];
            snprintf(name, sizeof(name), "batch-%02u-%s%s", ++nb,
                     bb_out_stream(out.e[e].channel) + 7, with ? "-dict" : "");
            put("batch", name, out.buf + out.e[e].off, out.e[e].len);
            if (e == 0 && frames < 4) {
                Bb__DeliveryBatch *db =
                    bb__delivery_batch__unpack(NULL, out.e[e].len, out.buf + out.e[e].off);
                snprintf(name, sizeof(name), "frame-%02u%s", ++frames, with ? "-dict" : "");
                put("batch", name, db->notification_zstd.data, db->notification_zstd.len);
                if (frames == 1) {
                    /* The same batch naming a dictionary nobody has, and a retry job. */
                    Bb__PendingDelivery pd = BB__PENDING_DELIVERY__INIT;
                    Bb__Report r;
                    Bb__Media m[2], *mp[2];
                    Bb__Notification note;
                    char cell[16];
                    fuzz_report_sample(0, &r, m, mp);
                    bb_notification_from_report(&note, &r, "Buurtpreventie Centrum", 7, cell);
                    size_t nl = bb__notification__get_packed_size(&note);
                    uint8_t *raw = malloc(nl ? nl : 1);
                    bb__notification__pack(&note, raw);
                    pd.schema_version = 1;
                    pd.notification_key = "r:r-seed-1";
                    pd.notification.data = raw;
                    pd.notification.len = nl;
                    pd.recipient = 1003;
                    pd.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
                    pd.channel = BB__CHANNEL__CHANNEL_PUSH;
                    pd.attempts = 2;
                    pd.first_ms = 1767225600000;
                    pd.last_reason = "http_503";
                    pd.source = "1767225600000-0";
                    PUT_MSG("batch", bb__pending_delivery, &pd, "pending-01");
                    free(raw);
                }
                bb__delivery_batch__free_unpacked(db, NULL);
            }
        }
    }
    bb_out_free(&out);
    bb_encoder_free(enc[0]);
    bb_encoder_free(enc[1]);
    bb_zdict_unref(dict);
    bb_router_free(router);
    bb_dir_free(dir);
}

/* ---- geohash ----------------------------------------------------------------------------- */

static void geohash(void)
{
    static const struct {
        const char *gh;
        double lat, lon, radius;
        unsigned max_cells;
    } g[] = {
        {"u1hbc9", 51.6978, 5.3037, 1000, 8},
        {"U1HBC9KZ", 51.6978, 5.3037, 50, 32},
        {"s", 0.0, 0.0, 5000, 4},
        {"zzzzzzzzzzzz", 90.0, 180.0, 65535, 8},
        {"000000000000", -90.0, -180.0, 1, 32},
        {"gcpvj0", 89.9999, -179.9999, 20000, 63},
        {"7zzzzz", -0.0000001, -0.0000001, 0, 8},
        {"u1ha", 1e308, -1e308, 1e308, 8},
        {"ezs42", -44.0, 179.999, 65535, 16},
    };
    for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
        uint8_t buf[64];
        size_t len = strlen(g[i].gh), off = 0;
        buf[off++] = (uint8_t)len;
        memcpy(buf + off, g[i].gh, len);
        off += len;
        buf[off++] = (uint8_t)g[i].max_cells;
        memcpy(buf + off, &g[i].lat, 8);
        memcpy(buf + off + 8, &g[i].lon, 8);
        memcpy(buf + off + 16, &g[i].radius, 8);
        off += 24;
        char name[32];
        snprintf(name, sizeof(name), "cell-%02zu", i + 1);
        put("geohash", name, buf, off);
    }
    /* NaN and infinities. */
    double nan = __builtin_nan(""), inf = __builtin_inf();
    uint8_t buf[32] = {0, 8};
    memcpy(buf + 2, &nan, 8);
    memcpy(buf + 10, &inf, 8);
    memcpy(buf + 18, &nan, 8);
    put("geohash", "nan-inf", buf, 26);
    putf("geohash", "u1hbc9kz2mqr", "whole-12");
    putf("geohash", "u1hbc9kz2mqrx", "whole-13");
}

/* ---- configuration and JSON -------------------------------------------------------------- */

static void config(const char *src)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/deploy/broker.conf", src);
    copy_file("config", "broker.conf", path);
    snprintf(path, sizeof(path), "%s/deploy/worker.conf", src);
    copy_file("config", "worker.conf", path);
    putf("config",
         "# every option type of the fuzzer's own table\n"
         "count 12\n"
         "limit = -9223372036854775808\n"
         "enabled off\n"
         "verbose = TRUE\n"
         "name \"buurt \\\"bus\\\" \\\\ één\"   # a comment\n"
         "path ''\n"
         "timeout 1500ms\n"
         "size 1MB\n"
         "big 8589934591gb\n"
         "secret_file secret\n",
         "every.conf");
    putf("config", "count=0\nsize 3kb\ntimeout 2h\n", "out-of-range.conf");
    putf("config", "secret_file sub\n", "secret-dir.conf");
    putf("config",
         "channels push,mail\n"
         "channel.push.plugin fcm\n"
         "channel.push.rate 100\n"
         "channel.push.project_id \"demo\"\n"
         "channel.mail.plugin smtp\n"
         "channel.mail.collect \"daily 08:00\"\n"
         "channel.mail.breaker_cooldown 30s\n",
         "worker-channels.conf");
    putf("config", "5m", "duration");
    putf("config", "64kb", "bytes");
}

static void ctl_json(const char *src)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/deploy/demo/reports.jsonl", src);
    copy_file("ctl_json", "demo-reports.jsonl", path);
    putf("ctl_json",
         "{\"user\":{\"id\":1,\"screen_name\":\"Jan\",\"locale\":\"nl\",\"time_zone\":"
         "\"Europe/Amsterdam\",\"watch\":{\"lat\":51.69,\"lon\":5.30,\"radius_m\":500},"
         "\"prefs\":{\"categories\":[\"burglary\"],\"min_urgency\":\"recent\","
         "\"in_progress\":[\"push\",\"inbox\"],\"recent\":[\"push\",\"inbox\"],"
         "\"informational\":[\"inbox\",\"digest\"],\"quiet\":{\"from\":\"22:00\",\"to\":\"07:00\"},"
         "\"max_per_hour\":5,\"digest_hour\":8,\"digest_weekly\":true},"
         "\"muted_authors\":[7],\"muted_groups\":[3]}}\n",
         "user.jsonl");
    putf("ctl_json",
         "{\"group\":{\"id\":2,\"name\":\"De Muntel\",\"cells\":[\"u1hbc\",\"u1hbf\"],"
         "\"policy\":{\"categories\":[\"burglary\",\"suspicious_person\"],"
         "\"min_urgency\":\"in_progress\",\"sources\":[\"resident\",\"police\"],"
         "\"public_posting\":true},\"location_precision\":7}}\n"
         "{\"member\":{\"user\":1,\"group\":2}}\n"
         "{\"unmember\":{\"group\":2,\"user\":1}}\n"
         "{\"erase_user\":1}\n"
         "{\"delete_group\":\"18446744073709551615\"}\n",
         "group-lines.jsonl");
    putf("ctl_json",
         "{\"mute\":{\"user\":1,\"author\":7}}\n"
         "{\"unmute\":{\"user\":1,\"group\":3}}\n"
         "{\"follow\":{\"user\":1,\"report\":\"r-1\"}}\n"
         "{\"unfollow\":{\"user\":1,\"report\":\"r-1\"}}\n"
         "{\"preferences\":{\"user\":1,\"prefs\":{\"recent\":[],\"min_urgency\":null}}}\n"
         "  {\"user\":{\"id\":5,\"locale\":null}}  \r\n",
         "mute-follow.jsonl");
    putf("ctl_json",
         "{\"id\":\"r1\",\"author_id\":1,\"author_screen_name\":\"Jan\",\"group_id\":2,"
         "\"lat\":51.69,\"lon\":5.30,\"category\":\"burglary\",\"urgency\":\"in_progress\","
         "\"source\":\"resident\",\"text\":\"Inbraak bezig\",\"media\":[{\"url\":"
         "\"https://x/a.jpg\",\"mime_type\":\"image/jpeg\",\"publishable\":false}],"
         "\"anonymity\":\"neighbour\",\"locale\":\"nl\"}\n",
         "report.json");
    putf("ctl_json",
         "{\"id\":\"s1\",\"report_id\":\"r1\",\"time_ms\":5,\"status\":\"police_on_site\","
         "\"source\":\"police\",\"reporter_id\":1,\"category\":\"burglary\","
         "\"urgency\":\"recent\",\"text\":\"Agent ter plaatse\"}\n",
         "status.json");
    putf("ctl_json",
         "{\"user\":{\"id\":1,\"prefs\":{\"quiet\":{\"from\":\"25:00\",\"to\":\"07:00\"}}}}\n"
         "{\"user\":{\"id\":-3}}\n{\"user\":{\"id\":1.5}}\n{\"user\":{\"id\":\"12a\"}}\n"
         "{\"user\":{\"id\":1,\"watch\":{\"lat\":91,\"lon\":5}}}\n[1,2,{\"a\":null}] "
         "\"\\ud83d\\ude8b\"\n",
         "errors.jsonl");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fuzz_seeds CORPUS_DIR SOURCE_DIR\n");
        return 2;
    }
    corpus = argv[1];
    mkdir_p(corpus);
    reports();
    directory();
    batches();
    geohash();
    config(argv[2]);
    ctl_json(argv[2]);
    printf("fuzz_seeds: %u files in %s\n", written, corpus);
    return 0;
}
