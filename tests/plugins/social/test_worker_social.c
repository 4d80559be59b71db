/* buurtbus-worker end to end with the mastodon, x and facebook plug-ins: a
 * real redis-server, DeliveryBatch entries for group recipients written by
 * hand, the built worker as a child process with four channel instances,
 * and a stand-in playing the three APIs (social_api.py) that records every
 * request.
 *
 * The instances (mastodon, x, facebook, and "xbad": X with a revoked
 * token) read the one stream bb:out:social, each through its own consumer
 * group. Aggregated posts (channel.<inst>.collect) are not run here: the
 * host's shortest interval is a minute; the digest's text is checked
 * through format() below and in test_social_text.c.
 *
 * Checked: every post arrives once with the expected public text and
 * never the report's text, author, title or coordinates; Mastodon's
 * Idempotency-Key is the delivery id, also on retries, and a retry after a
 * lost answer does not post twice; a rate limit is retried after the reset
 * the provider gave; X's duplicate refusal counts as sent; a refused token
 * is a permanent "unauthorized" and a dead letter, not retried; Facebook's
 * token travels in the body, not the URL; receipts; no token or post in
 * the worker's log. Then the plug-ins' format() (the token redacted) and
 * option checks.
 *
 * Threads: the test's main thread only. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bb_conn.h"
#include "buurtbus/channel.h"
#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "harness.h"
#include "wire.h"
#include "worker_kit.h"

#define SECRET_TEXT "GEHEIM: de man in de rode jas woont op Dorpsstraat 12"
#define SECRET_AUTHOR "Jan Geheimzinnig"
#define SECRET_TITLE "Inbraak bij Jan"
#define MASTODON_TOKEN "mastodon-test-token"
#define X_TOKEN "x-test-token"
#define FB_TOKEN "fb-page-token"
#define BAD_TOKEN "revoked-x-token"
#define PAGE_ID "1234567890"
/* 2024-11-28 13:20 UTC: Thursday afternoon in Amsterdam. */
#define WHEN_MS 1732800000000LL

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t worker_pid, server_pid;

/* One notification of the scenario. */
struct case_note {
    const char *key; /* notification key: "r:<report>" or "s:<status>" */
    int kind;        /* NotificationKind */
    int category;
    int status;
    const char *group;
    uint64_t gid;
};

static const struct case_note notes[] = {
    {"r:n1", BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT, 1, 0, "Centrum", 7},
    {"r:n2", BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT, 2, 0, "Busy Buurt", 8},
    {"r:n3", BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT, 4, 0, "Flaky Hof", 9},
    {"s:s1", BB__NOTIFICATION_KIND__NOTIFICATION_KIND_STATUS, 1, 3, "Centrum", 7},
    /* Another report that reads the same in public as n1: X refuses it. */
    {"r:n4", BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT, 1, 0, "Centrum", 7},
};

static void add_batch(const char *stream, const struct case_note *c, uint64_t group)
{
    Bb__Media m = BB__MEDIA__INIT;
    Bb__Media *mp = &m;
    m.url = "https://media.example.org/private-photo.jpg";
    m.mime_type = "image/jpeg";
    m.publishable = 0;
    Bb__Notification nt;
    bb_kit_report(&nt, c->key + 2);
    nt.kind = c->kind;
    nt.status_id = c->kind == BB__NOTIFICATION_KIND__NOTIFICATION_KIND_STATUS ? "s1" : "";
    nt.time_ms = WHEN_MS;
    nt.category = c->category;
    nt.title = SECRET_TITLE;
    nt.text = SECRET_TEXT;
    nt.author = SECRET_AUTHOR;
    nt.cell = "u1hbcq";
    nt.lat = 51.690674;
    nt.lon = 5.302734;
    nt.group_name = (char *)c->group;
    nt.status = c->status;
    nt.media = &mp;
    nt.n_media = 1;
    bb_kit_add_batch(
        rc, stream, &nt,
        &(struct bb_kit_batch){.channel = BB__CHANNEL__CHANNEL_SOCIAL,
                               .recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP,
                               .first = group,
                               .n = 1,
                               .key = c->key});
}

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v)) {
        print_error("missing \"%s\" in %s\n", k, json_object_to_json_string(o));
        fail();
    }
    return json_object_get_string(v);
}

/* The public text never carries the report's text, author, title or
 * coordinates, nor the unpublishable media. */
static json_object *jstr_obj(json_object *o, const char *k)
{
    json_object *v = NULL;
    assert_true(json_object_object_get_ex(o, k, &v));
    return v;
}

static void check_public(const char *text)
{
    const char *forbidden[] = {"GEHEIM",     "Dorpsstraat", SECRET_AUTHOR, "Geheimzinnig",
                               SECRET_TITLE, "51.69",       "5.30",        "private-photo"};
    for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++) {
        if (strstr(text, forbidden[i])) {
            print_error("forbidden \"%s\" in: %s\n", forbidden[i], text);
            fail();
        }
    }
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static int setup(void **state)
{
    return bb_kit_setup(&srv, &rc);
}

static int teardown(void **state)
{
    bb_kit_teardown(&rc, &worker_pid, &server_pid);
    return 0;
}

/* ---- end to end -------------------------------------------------------------------------- */

/* Requests the APIs got for one post: Mastodon's by Idempotency-Key, X's
 * and Facebook's by what the post is about. */
struct tally {
    char api[16];
    char key[64];
    int requests, posted, ok, dup;
    double first_t, last_t;
    char text[1024];
};

static struct tally *tally_of(struct tally *t, size_t *n, size_t cap, const char *api,
                              const char *key)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(t[i].api, api) == 0 && strcmp(t[i].key, key) == 0) {
            return &t[i];
        }
    }
    assert_true(*n < cap);
    struct tally *e = &t[(*n)++];
    memset(e, 0, sizeof(*e));
    snprintf(e->api, sizeof(e->api), "%s", api);
    snprintf(e->key, sizeof(e->key), "%s", key);
    return e;
}

/* What a post without a key is about: the notification it came from. */
static const char *label_of(const char *text)
{
    return strstr(text, "Update")  ? "s:s1"
           : strstr(text, "Busy")  ? "r:n2"
           : strstr(text, "Flaky") ? "r:n3"
                                   : "r:n1+n4";
}

/* Deliveries ok: 5 notifications x 3 instances. */
#define RECEIPTS_OK 15

static void three_instances(void **state)
{
    freeReplyObject(bb_kit_cmd(rc, "FLUSHALL"));
    char log[512], mt[512], xt[512], ft[512], bt[512], conf[4096];
    assert_non_null(bb_harness_write_file(mt, sizeof(mt), "mastodon.token", MASTODON_TOKEN "\n"));
    assert_non_null(bb_harness_write_file(xt, sizeof(xt), "x.token", X_TOKEN "\n"));
    assert_non_null(bb_harness_write_file(ft, sizeof(ft), "fb.token", FB_TOKEN "\n"));
    assert_non_null(bb_harness_write_file(bt, sizeof(bt), "bad.token", BAD_TOKEN "\n"));
    int port;
    server_pid = bb_kit_stand_in(BB_SOCIAL_API, "social.jsonl", log, sizeof(log), &port);

    /* What the broker writes: each notification once, to bb:out:social. */
    for (size_t k = 0; k < sizeof(notes) / sizeof(notes[0]); k++) {
        add_batch("bb:out:social", &notes[k], notes[k].gid);
    }

    /* Three instances read bb:out:social, each through its own group; a
     * fourth, "xbad", posts to X with a token X does not accept. */
    snprintf(conf, sizeof(conf),
             "redis %s\nname w-social\nplugin_dir \"%s\"\nblock 100ms\nretry_min 10ms\n"
             "retry_max 5s\nlater_poll 100ms\nread_count 1\n"
             "channels mastodon,x,facebook,xbad\n"
             "channel.mastodon.plugin mastodon\n"
             "channel.mastodon.stream bb:out:social\nchannel.mastodon.group g-mastodon\n"
             "channel.mastodon.instance_url http://127.0.0.1:%d/\n"
             "channel.mastodon.access_token_file \"%s\"\n"
             "channel.x.plugin x\n"
             "channel.x.stream bb:out:social\nchannel.x.group g-x\n"
             "channel.x.api_url http://127.0.0.1:%d\n"
             "channel.x.access_token_file \"%s\"\n"
             "channel.facebook.plugin facebook\n"
             "channel.facebook.stream bb:out:social\nchannel.facebook.group g-facebook\n"
             "channel.facebook.graph_url http://127.0.0.1:%d\n"
             "channel.facebook.page_id " PAGE_ID "\n"
             "channel.facebook.access_token_file \"%s\"\n"
             "channel.xbad.plugin x\n"
             "channel.xbad.stream bb:out:social\nchannel.xbad.group g-xbad\n"
             "channel.xbad.api_url http://127.0.0.1:%d\n"
             "channel.xbad.access_token_file \"%s\"\n",
             srv->addr, BB_PLUGIN_DIR, port, mt, port, xt, port, ft, port, bt);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, NULL);
    bool done = false;
    const char *groups[] = {"g-mastodon", "g-x", "g-facebook", "g-xbad"};
    const char *insts[] = {"mastodon", "x", "facebook", "xbad"};
    for (int t = 0; t < 25000 && !done; t += 100) {
        done = bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL) >= RECEIPTS_OK &&
               bb_kit_int(rc, "XLEN bb:dead") >= 5;
        for (size_t i = 0; i < 4 && done; i++) {
            /* Read, acked, and no retry waiting in bb:later:<instance>. */
            done = bb_harness_worker_unfinished(rc, "bb:out:social", groups[i], insts[i]) == 0;
        }
        if (!done) {
            bb_harness_sleep_ms(100);
        }
    }
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    bb_kit_stop(&server_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(done);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* What the APIs got. */
    struct tally t[32];
    size_t nt = 0;
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    static char line[65536];
    int unauthorized = 0;
    while (fgets(line, sizeof(line), f)) {
        json_object *o = json_tokener_parse(line), *h, *b, *v;
        assert_non_null(o);
        const char *api = jstr(o, "api");
        assert_true(json_object_object_get_ex(o, "headers", &h));
        assert_true(json_object_object_get_ex(o, "body", &b));
        assert_true(json_object_object_get_ex(o, "status", &v));
        int status = json_object_get_int(v);
        assert_true(json_object_object_get_ex(o, "t", &v));
        double when = json_object_get_double(v);
        assert_true(json_object_object_get_ex(o, "posted", &v));
        bool posted = json_object_get_boolean(v);
        if (status == 401) {
            /* xbad: refused, never retried. */
            assert_string_equal(api, "x");
            assert_string_equal(jstr(h, "authorization"), "Bearer " BAD_TOKEN);
            unauthorized++;
            json_object_put(o);
            continue;
        }
        const char *text;
        char key[64];
        if (strcmp(api, "mastodon") == 0) {
            text = jstr(b, "status");
            assert_string_equal(jstr(b, "visibility"), "public");
            assert_string_equal(jstr(b, "language"), "nl");
            assert_string_equal(jstr(h, "authorization"), "Bearer " MASTODON_TOKEN);
            /* The key is the delivery id, e.g. "r:n1:5:7". */
            snprintf(key, sizeof(key), "%s", jstr(h, "idempotency-key"));
        } else if (strcmp(api, "x") == 0) {
            text = jstr(b, "text");
            assert_string_equal(jstr(h, "authorization"), "Bearer " X_TOKEN);
            assert_false(json_object_object_get_ex(h, "idempotency-key", NULL));
            snprintf(key, sizeof(key), "%s", label_of(text));
        } else {
            assert_string_equal(api, "facebook");
            text = jstr(b, "message");
            /* The token came in the body (the stand-in checked it), not in the URL. */
            assert_true(json_object_object_get_ex(b, "token_ok", &v));
            assert_true(json_object_get_boolean(v));
            assert_string_equal(jstr(o, "path"), "/v19.0/" PAGE_ID "/feed");
            assert_false(json_object_object_get_ex(h, "authorization", NULL));
            snprintf(key, sizeof(key), "%s", label_of(text));
        }
        assert_true(bb_utf8_is_valid(text, strlen(text)));
        check_public(text);
        assert_non_null(strstr(text, "#buurtpreventie"));
        struct tally *e = tally_of(t, &nt, sizeof(t) / sizeof(t[0]), api, key);
        if (e->requests == 0) {
            e->first_t = when;
            snprintf(e->text, sizeof(e->text), "%s", text);
        } else if (strcmp(key, "r:n1+n4") != 0) {
            assert_string_equal(e->text, text); /* a retry sends the same post */
        }
        e->last_t = when;
        e->requests++;
        e->posted += posted;
        e->ok += status == 200 || status == 201;
        e->dup += status == 403;
        json_object_put(o);
    }
    fclose(f);

    static const struct {
        const char *api, *key;
        int requests, posted, ok, dup;
        bool waits; /* the retry came after the rate limit's reset */
    } want[] = {
        {"mastodon", "r:n1:5:7", 1, 1, 1, 0, false},
        {"mastodon", "r:n2:5:8", 2, 1, 1, 0, true},
        {"mastodon", "r:n3:5:9", 2, 1, 1, 0, false}, /* created, answer lost, replayed */
        {"mastodon", "s:s1:5:7", 1, 1, 1, 0, false},
        {"mastodon", "r:n4:5:7", 1, 1, 1, 0, false},
        {"x", "r:n1+n4", 2, 1, 1, 1, false}, /* n4 refused as a duplicate */
        {"x", "r:n2", 2, 1, 1, 0, true},
        {"x", "r:n3", 1, 1, 1, 0, false},
        {"x", "s:s1", 1, 1, 1, 0, false},
        {"facebook", "r:n1+n4", 2, 2, 2, 0, false},
        {"facebook", "r:n2", 2, 1, 1, 0, true},
        {"facebook", "r:n3", 1, 1, 1, 0, false},
        {"facebook", "s:s1", 1, 1, 1, 0, false},
    };
    size_t nwant = sizeof(want) / sizeof(want[0]);
    for (size_t i = 0; i < nt; i++) {
        bool known = false;
        for (size_t k = 0; k < nwant; k++) {
            known =
                known || (strcmp(t[i].api, want[k].api) == 0 && strcmp(t[i].key, want[k].key) == 0);
        }
        if (!known) {
            print_error("unexpected post %s %s: %s\n", t[i].api, t[i].key, t[i].text);
            fail();
        }
    }
    for (size_t k = 0; k < nwant; k++) {
        struct tally *e = tally_of(t, &nt, sizeof(t) / sizeof(t[0]), want[k].api, want[k].key);
        if (e->requests != want[k].requests || e->posted != want[k].posted || e->ok != want[k].ok ||
            e->dup != want[k].dup) {
            print_error("%s %s: %d requests, %d posted, %d ok, %d duplicate\n", e->api, e->key,
                        e->requests, e->posted, e->ok, e->dup);
            fail();
        }
        if (want[k].waits && e->last_t - e->first_t < 1.5) {
            print_error("%s %s: retried after %.3f s, before the reset\n", e->api, e->key,
                        e->last_t - e->first_t);
            fail();
        }
        /* The texts, whole where they are fixed. */
        if (strcmp(e->key, "r:n1:5:7") == 0 || strcmp(e->key, "r:n1+n4") == 0) {
            assert_string_equal(e->text,
                                "\xf0\x9f\x9a\xa8 Inbraak \xe2\x80\x94 Centrum (omgeving u1hbcq), "
                                "donderdagmiddag. Nu aan de gang. #buurtpreventie");
        } else if (strncmp(e->key, "s:s1", 4) == 0) {
            assert_string_equal(e->text,
                                "\xf0\x9f\x94\x94 Update inbraak \xe2\x80\x94 Centrum (omgeving "
                                "u1hbcq), donderdagmiddag: politie ter plaatse. #buurtpreventie");
        } else if (strncmp(e->key, "r:n2", 4) == 0) {
            assert_non_null(strstr(e->text, "Verdachte persoon \xe2\x80\x94 Busy Buurt"));
        }
    }

    /* Receipts: every delivery ok once (X's n4 as "duplicate"); the rate
     * limits and the lost answer as retries; xbad's as unauthorized. */
    Bb__Receipt **recs;
    size_t nrecs = bb_kit_receipts_read(rc, &recs);
    int ok = 0, dup_ok = 0, rate = 0, lost = 0, denied = 0, other = 0;
    for (size_t i = 0; i < nrecs; i++) {
        const Bb__Receipt *rec = recs[i];
        if (rec->outcome == BB__OUTCOME__OUTCOME_OK) {
            ok++;
            /* n1 and n4 read the same; whichever X got second is the duplicate
             * (a worker sends the two concurrently). */
            dup_ok += (strcmp(rec->delivery_id, "r:n4:5:7") == 0 ||
                       strcmp(rec->delivery_id, "r:n1:5:7") == 0) &&
                      strcmp(rec->reason, "duplicate") == 0;
        } else if (rec->outcome == BB__OUTCOME__OUTCOME_RETRY &&
                   strcmp(rec->delivery_id, "r:n2:5:8") == 0 &&
                   strcmp(rec->reason, "rate_limited") == 0) {
            rate++;
        } else if (rec->outcome == BB__OUTCOME__OUTCOME_RETRY &&
                   strcmp(rec->delivery_id, "r:n3:5:9") == 0 &&
                   strcmp(rec->reason, "http_503") == 0) {
            lost++;
        } else if (rec->outcome == BB__OUTCOME__OUTCOME_PERMANENT &&
                   strcmp(rec->reason, "unauthorized") == 0) {
            denied++;
        } else {
            print_error("unexpected receipt %s outcome %d reason %s\n", rec->delivery_id,
                        rec->outcome, rec->reason);
            other++;
        }
    }
    bb_kit_receipts_free(recs, nrecs);
    assert_int_equal(ok, RECEIPTS_OK);
    assert_int_equal(dup_ok, 1);
    assert_int_equal(rate, 3);   /* n2 on each instance */
    assert_int_equal(lost, 1);   /* n3 on Mastodon */
    assert_int_equal(denied, 5); /* every delivery of xbad */
    assert_int_equal(other, 0);
    assert_int_equal(unauthorized, 5);
    /* xbad's deliveries are dead letters, nothing else is. */
    assert_int_equal(bb_kit_int(rc, "XLEN bb:dead"), 5);
    assert_int_equal(bb_kit_dead(rc, "unauthorized"), 5);

    /* The worker's log never shows a token or a post. */
    char logpath[512];
    bb_harness_path(logpath, sizeof(logpath), "worker.log");
    f = fopen(logpath, "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        assert_null(strstr(line, MASTODON_TOKEN));
        assert_null(strstr(line, X_TOKEN));
        assert_null(strstr(line, FB_TOKEN));
        assert_null(strstr(line, BAD_TOKEN));
        assert_null(strstr(line, "#buurtpreventie"));
    }
    fclose(f);
}

/* ---- format() through the built .so, with a minimal host ---------------------------------- */

struct fake_cfg {
    const char *const *kv; /* name, value, ..., NULL */
};

static const char *fake_value(const struct bb_channel_config *cfg, const char *name)
{
    const struct fake_cfg *fc = cfg->opaque;
    for (size_t i = 0; fc->kv[i]; i += 2) {
        if (strcmp(fc->kv[i], name) == 0) {
            return fc->kv[i + 1];
        }
    }
    return NULL;
}

static int64_t fake_integer(const struct bb_channel_config *cfg, const char *name)
{
    const char *v = fake_value(cfg, name);
    if (!v) {
        return 0;
    }
    if (strcmp(v, "no") == 0) {
        return 0;
    }
    if (strcmp(v, "yes") == 0) {
        return 1;
    }
    return strtoll(v, NULL, 10);
}

static void fake_log(struct bb_host *h, int level, const char *msg, const char *kvfmt, ...)
{
}

static char *format_with(const char *plugin, const char *const *kv, const struct bb_delivery *d)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/bb-channel-%s.so", BB_PLUGIN_DIR, plugin);
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    assert_non_null(dl);
    bb_channel_entry_fn *entry = (bb_channel_entry_fn *)dlsym(dl, "bb_channel_entry");
    assert_non_null(entry);
    const struct bb_channel *ch = entry(BB_CHANNEL_ABI_VERSION);
    assert_non_null(ch);
    assert_true(ch->caps & BB_CAP_PUBLIC);
    assert_true(ch->caps & BB_CAP_DIGEST);
    assert_int_equal((ch->caps & BB_CAP_IDEMPOTENCY_KEY) != 0, strcmp(plugin, "mastodon") == 0);
    struct bb_host_api host = {.struct_size = sizeof(host),
                               .abi_version = BB_CHANNEL_ABI_VERSION,
                               .alloc = malloc,
                               .realloc = realloc,
                               .free = free,
                               .log = fake_log};
    struct fake_cfg fc = {kv};
    struct bb_channel_config cfg = {.struct_size = sizeof(cfg),
                                    .instance = plugin,
                                    .value = fake_value,
                                    .integer = fake_integer,
                                    .opaque = &fc};
    void *ctx = NULL;
    char err[256] = "";
    if (ch->init(&host, &cfg, &ctx, err, sizeof(err)) != 0) {
        print_error("%s: init: %s\n", plugin, err);
        fail();
    }
    char *out = NULL;
    size_t outlen = 0;
    assert_int_equal(ch->format(ctx, d, &out, &outlen), 0);
    assert_int_equal(strlen(out), outlen);
    ch->destroy(ctx);
    dlclose(dl);
    return out;
}

static void formats(void **state)
{
    struct bb_media media[] = {{"https://media.example.org/ok.jpg", "image/jpeg", 1}};
    struct bb_notification a = {.struct_size = sizeof(a),
                                .kind = BB_KIND_REPORT,
                                .report_id = "n1",
                                .status_id = "",
                                .time_ms = WHEN_MS,
                                .category = 1,
                                .category_name = "burglary",
                                .urgency = BB_URGENCY_IN_PROGRESS,
                                .locale = "en",
                                .title = SECRET_TITLE,
                                .text = SECRET_TEXT,
                                .author = SECRET_AUTHOR,
                                .cell = "u1hbcq",
                                .lat = 51.690674,
                                .lon = 5.302734,
                                .group_name = "Old \"Town\"",
                                .media = media,
                                .nmedia = 1};
    struct bb_notification b = a, c = a;
    c.category = 5;
    const struct bb_notification *items[] = {&a, &b, &c};
    struct bb_notification head = a;
    head.kind = BB_KIND_DIGEST;
    head.title = "";
    struct bb_delivery single = {.struct_size = sizeof(single),
                                 .delivery_id = "r:n1:5:101",
                                 .recipient = 101,
                                 .recipient_kind = BB_RECIPIENT_GROUP,
                                 .attempt = 1,
                                 .n = &a};
    struct bb_delivery digest = single;
    digest.n = &head;
    digest.items = items;
    digest.nitems = 3;

    const char *mastodon[] = {"instance_url",
                              "https://social.example/",
                              "access_token_file",
                              MASTODON_TOKEN,
                              "visibility",
                              "unlisted",
                              "max_chars",
                              "500",
                              "media_links",
                              "yes",
                              "timeout",
                              "10000",
                              NULL};
    char *out = format_with("mastodon", mastodon, &single);
    assert_string_equal(out,
                        "{\"status\":\"\xf0\x9f\x9a\xa8 Burglary \xe2\x80\x94 Old \\\"Town\\\" "
                        "(area u1hbcq), Thursday afternoon. Happening now. #neighbourhoodwatch "
                        "https://media.example.org/ok.jpg\",\"visibility\":\"unlisted\","
                        "\"language\":\"en\"}");
    free(out);
    const char *x[] = {"api_url",
                       "https://api.x.com",
                       "access_token_file",
                       X_TOKEN,
                       "max_chars",
                       "280",
                       "media_links",
                       "no",
                       "timeout",
                       "10000",
                       NULL};
    out = format_with("x", x, &digest);
    assert_string_equal(out, "{\"text\":\"\xf0\x9f\x93\x8a Past 24 hours in Old \\\"Town\\\": 3 "
                             "reports \xe2\x80\x94 2\xc3\x97 burglary, 1\xc3\x97 nuisance. "
                             "#neighbourhoodwatch\"}");
    free(out);
    const char *fb[] = {"graph_url",
                        "https://graph.facebook.com",
                        "api_version",
                        "v19.0",
                        "page_id",
                        PAGE_ID,
                        "access_token_file",
                        FB_TOKEN,
                        "max_chars",
                        "2000",
                        "media_links",
                        "no",
                        "timeout",
                        "10000",
                        NULL};
    out = format_with("facebook", fb, &single);
    assert_null(strstr(out, FB_TOKEN));
    assert_non_null(strstr(out, "&access_token=REDACTED"));
    assert_true(strncmp(out, "message=%F0%9F%9A%A8+Burglary+%E2%80%94+Old+%22Town%22+", 55) == 0);
    check_public(out);
    free(out);
}

/* Option checks through --check-config. */
static void config_checks(void **state)
{
    char tok[512];
    assert_non_null(bb_harness_write_file(tok, sizeof(tok), "check.token", "tok\n"));
    char ok[2048], no_token[512], bad_vis[1024], no_page[1024];
    snprintf(ok, sizeof(ok),
             "channels mastodon,x,facebook\nchannel.mastodon.plugin mastodon\n"
             "channel.mastodon.instance_url https://m.example\n"
             "channel.mastodon.access_token_file \"%s\"\nchannel.x.plugin x\n"
             "channel.x.access_token_file \"%s\"\nchannel.facebook.plugin facebook\n"
             "channel.facebook.page_id 42\nchannel.facebook.access_token_file \"%s\"\n",
             tok, tok, tok);
    snprintf(no_token, sizeof(no_token), "channels x\nchannel.x.plugin x\n");
    snprintf(bad_vis, sizeof(bad_vis),
             "channels mastodon\nchannel.mastodon.plugin mastodon\n"
             "channel.mastodon.instance_url https://m.example\n"
             "channel.mastodon.access_token_file \"%s\"\nchannel.mastodon.visibility loud\n",
             tok);
    snprintf(no_page, sizeof(no_page),
             "channels facebook\nchannel.facebook.plugin facebook\n"
             "channel.facebook.access_token_file \"%s\"\n",
             tok);
    const struct bb_kit_check cases[] = {
        {ok, 0, "configuration ok"},
        {no_token, 1, "channel.x.access_token_file: required"},
        {bad_vis, 1, "visibility: expected public, unlisted, private or direct"},
        {no_page, 1, "channel.facebook.page_id: required"},
    };
    bb_kit_check_configs(BB_WORKER_PATH, BB_PLUGIN_DIR, cases, sizeof(cases) / sizeof(cases[0]));
}

/* collect 7d: a group's reports of the week become one aggregated post. */
static void aggregated_post(void **state)
{
    freeReplyObject(bb_kit_cmd(rc, "FLUSHALL"));
    char log[512], mt[512], conf[2048];
    assert_non_null(bb_harness_write_file(mt, sizeof(mt), "mastodon.token", MASTODON_TOKEN "\n"));
    int port;
    server_pid = bb_kit_stand_in(BB_SOCIAL_API, "social-agg.jsonl", log, sizeof(log), &port);
    /* Centrum (group 7): two reports and an update. */
    add_batch("bb:out:social", &notes[0], 7);
    add_batch("bb:out:social", &notes[3], 7);
    add_batch("bb:out:social", &notes[4], 7);
    snprintf(conf, sizeof(conf),
             "redis %s\nname w-agg\nplugin_dir \"%s\"\nblock 100ms\nlater_poll 100ms\n"
             "channels mastodon\nchannel.mastodon.plugin mastodon\n"
             "channel.mastodon.stream bb:out:social\nchannel.mastodon.collect 7d\n"
             "channel.mastodon.instance_url http://127.0.0.1:%d/\n"
             "channel.mastodon.access_token_file \"%s\"\n",
             srv->addr, BB_PLUGIN_DIR, port, mt);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, NULL);
    bool collected = false;
    for (int t = 0; t < 20000 && !collected; t += 100) {
        /* Read and acked; the collection itself waits in bb:later:mastodon. */
        collected = bb_kit_int(rc, "HLEN bb:collect:mastodon:g7") == 3 &&
                    bb_harness_stream_unfinished(rc, "bb:out:social", "bb-workers") == 0;
        if (!collected) {
            bb_harness_sleep_ms(100);
        }
    }
    assert_true(collected);
    /* Due at the next multiple of a week; nothing posted before. */
    redisReply *r = bb_kit_cmd(rc, "ZSCORE bb:later:mastodon c:g7");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    long long due = atoll(r->str);
    freeReplyObject(r);
    assert_int_equal(due % (7 * 86400000LL), 0);
    assert_true(due > (long long)time(NULL) * 1000);
    struct stat sb;
    assert_true(stat(log, &sb) != 0 || sb.st_size == 0);

    /* The week ends: one post for the three. */
    freeReplyObject(bb_kit_cmd(rc, "ZADD bb:later:mastodon 0 c:g7"));
    for (int t = 0; t < 20000 && bb_kit_int(rc, "ZCARD bb:later:mastodon") != 0; t += 100) {
        bb_harness_sleep_ms(100);
    }
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    bb_kit_stop(&server_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(bb_kit_int(rc, "ZCARD bb:later:mastodon"), 0);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    static char line[65536];
    int posts = 0;
    while (fgets(line, sizeof(line), f)) {
        json_object *o = json_tokener_parse(line), *b;
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "body", &b));
        const char *text = jstr(b, "status");
        check_public(text);
        assert_non_null(strstr(text, "Centrum"));
        assert_non_null(strstr(text, "#buurtpreventie"));
        char key[128];
        snprintf(key, sizeof(key), "c:mastodon:g7:%lld", due);
        assert_string_equal(jstr(jstr_obj(o, "headers"), "idempotency-key"), key);
        posts++;
        json_object_put(o);
    }
    fclose(f);
    assert_int_equal(posts, 1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL),
                     4); /* the post, and each of the three it holds */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(three_instances),
        cmocka_unit_test(aggregated_post),
        cmocka_unit_test(formats),
        cmocka_unit_test(config_checks),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
