/* buurtbus-worker end to end with the webpush plug-in: a real
 * redis-server, DeliveryBatch entries written by hand into bb:out:push,
 * the built worker as a child process, and a stand-in push service
 * (push_service.py) that owns the subscriptions' private keys, decrypts
 * every message with its own RFC 8291 code (python3-cryptography) and
 * verifies the VAPID JWT. Checked: the decrypted payloads, the Urgency /
 * TTL / Topic / Content-Encoding headers, the VAPID claims and key, 410 ->
 * gone (dead letter subscription_gone), 429 -> retried after Retry-After
 * and delivered once, a malformed subscription -> bad_subscription; and
 * the configuration checks through --check-config. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <json-c/json.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bb_conn.h"
#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "harness.h"
#include "jwt.h"
#include "worker_kit.h"

#define SUBJECT "mailto:ops@buurtbus.example"
#define NSUBS 4 /* users 1..4 have the stand-in's subscriptions; user 5 a broken one */

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t worker_pid, server_pid;

/* The standard report report_id with urgency, to recipients 1..n. */
static void add_batch(const char *report_id, int urgency, size_t n)
{
    Bb__Notification nt;
    bb_kit_report(&nt, report_id);
    nt.urgency = urgency;
    bb_kit_add_batch(
        rc, "bb:out:push", &nt,
        &(struct bb_kit_batch){.channel = BB__CHANNEL__CHANNEL_PUSH, .first = 1, .n = n});
}

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v)) {
        print_error("no field %s in %s\n", k, json_object_to_json_string(o));
    }
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_string(v);
}

/* A fresh VAPID key written as PKCS#8 PEM; its public point in hex. */
static void make_vapid_key(char *path, size_t cap, char hex[131])
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(k);
    bb_harness_path(path, cap, "vapid.pem");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    unsigned char pt[65];
    size_t len = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt,
                                                     sizeof(pt), &len),
                     1);
    assert_int_equal(len, 65);
    for (size_t i = 0; i < len; i++) {
        snprintf(hex + 2 * i, 3, "%02x", pt[i]);
    }
    EVP_PKEY_free(k);
}

/* RFC 8030 Topic as the plug-in derives it: base64url of 24 bytes of SHA-256(report id). */
static void topic_of(const char *report_id, char out[33])
{
    unsigned char md[32];
    unsigned mdlen = 0;
    assert_int_equal(EVP_Digest(report_id, strlen(report_id), md, &mdlen, EVP_sha256(), NULL), 1);
    assert_int_equal(bb_b64url_encode(md, 24, out, 33), 32);
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

/* ---- the cases --------------------------------------------------------------------------- */

static void webpush_end_to_end(void **state)
{
    freeReplyObject(bb_kit_cmd(rc, "FLUSHALL"));
    char log[512], subspath[512], keypath[512], vapid_hex[131], conf[2048];
    bb_harness_path(subspath, sizeof(subspath), "subscriptions.json");
    int port;
    server_pid = bb_kit_stand_in(BB_PUSH_SERVICE, "push.jsonl", log, sizeof(log), &port);
    make_vapid_key(keypath, sizeof(keypath), vapid_hex);

    /* Users 1..4 subscribed through the stand-in, user 5 with a broken subscription. */
    json_object *subs = json_object_from_file(subspath);
    assert_non_null(subs);
    assert_int_equal(json_object_array_length(subs), NSUBS);
    for (uint64_t u = 1; u <= NSUBS + 1; u++) {
        Bb__User user = BB__USER__INIT;
        user.id = u;
        user.screen_name = "buur";
        user.locale = "nl";
        uint8_t buf[256];
        size_t len = bb__user__pack(&user, buf);
        const char *token =
            u <= NSUBS ? json_object_to_json_string_ext(json_object_array_get_idx(subs, u - 1),
                                                        JSON_C_TO_STRING_PLAIN)
                       : "{\"endpoint\":\"http://127.0.0.1:1/x\",\"keys\":{\"p256dh\":\"AAAA\"}}";
        freeReplyObject(
            bb_kit_cmd(rc, "HSET bb:user:%" PRIu64 " u %b push_platform webpush push_token %s", u,
                       buf, len, token));
    }
    json_object_put(subs);

    /* n1 (in progress) to users 1..5, n2 (informational) to user 1. */
    add_batch("n1", BB__URGENCY__URGENCY_IN_PROGRESS, NSUBS + 1);
    add_batch("n2", BB__URGENCY__URGENCY_INFORMATIONAL, 1);

    snprintf(conf, sizeof(conf),
             "redis %s\nname w-wp\nplugin_dir \"%s\"\nblock 100ms\nretry_min 10ms\n"
             "retry_max 2s\nchannels push\nchannel.push.plugin webpush\n"
             "channel.push.vapid_key_file \"%s\"\nchannel.push.subject %s\n"
             "channel.push.ttl_in_progress 600\nchannel.push.show_text yes\n"
             "channel.push.allow_http yes\n",
             srv->addr, BB_PLUGIN_DIR, keypath, SUBJECT);
    int64_t t0 = bb_mono_ms();
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, NULL);
    bool done = false;
    for (int t = 0; t < 20000 && !done; t += 50) {
        done = bb_harness_worker_unfinished(rc, "bb:out:push", "bb-workers", "push") == 0;
        if (!done) {
            bb_harness_sleep_ms(50);
        }
    }
    int64_t took = bb_mono_ms() - t0;
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    bb_kit_stop(&server_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(done);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(took >= 900); /* Retry-After: 1 was honoured */

    /* What the push service received and opened. */
    char origin[64], topic1[33], topic2[33];
    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d", port);
    topic_of("n1", topic1);
    topic_of("n2", topic2);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[32768];
    unsigned ok[NSUBS + 1] = {0}, ok_n2 = 0, gone = 0, busy = 0, lines = 0;
    time_t now = time(NULL);
    while (fgets(line, sizeof(line), f)) {
        lines++;
        json_object *o = json_tokener_parse(line), *h, *p, *v, *claims;
        assert_non_null(o);
        if (!json_object_object_get_ex(o, "payload", &p) ||
            !json_object_object_get_ex(o, "vapid_ok", &v) || !json_object_get_boolean(v)) {
            print_error("push service refused: %s\n", line);
        }
        assert_true(json_object_object_get_ex(o, "headers", &h));
        assert_true(json_object_object_get_ex(o, "payload", &p));
        assert_true(json_object_object_get_ex(o, "vapid_ok", &v) && json_object_get_boolean(v));
        assert_true(json_object_object_get_ex(o, "status", &v));
        int status = json_object_get_int(v);

        /* VAPID: our key, this origin, 12 h ahead, our subject. */
        assert_string_equal(jstr(o, "k_hex"), vapid_hex);
        assert_true(json_object_object_get_ex(o, "claims", &claims));
        assert_string_equal(jstr(claims, "aud"), origin);
        assert_string_equal(jstr(claims, "sub"), SUBJECT);
        assert_true(json_object_object_get_ex(claims, "exp", &v));
        int64_t exp = json_object_get_int64(v);
        assert_true(exp > now + 11 * 3600 && exp <= now + 12 * 3600 + 60);

        /* The decrypted payload. */
        const char *report = jstr(p, "report_id");
        bool is_n1 = strcmp(report, "n1") == 0;
        assert_true(is_n1 || strcmp(report, "n2") == 0);
        assert_string_equal(jstr(p, "title"), "Inbraak");
        assert_string_equal(jstr(p, "body"), BB_KIT_TEXT);
        assert_string_equal(jstr(p, "kind"), "report");
        assert_string_equal(jstr(p, "category"), "burglary");
        assert_string_equal(jstr(p, "cell"), "u1hbcq7");
        assert_string_equal(jstr(p, "urgency"), is_n1 ? "in_progress" : "informational");
        assert_false(json_object_object_get_ex(p, "author", NULL)); /* not in a push */

        /* The headers. */
        assert_string_equal(jstr(h, "content-encoding"), "aes128gcm");
        assert_string_equal(jstr(h, "content-type"), "application/octet-stream");
        assert_string_equal(jstr(h, "urgency"), is_n1 ? "high" : "low");
        assert_string_equal(jstr(h, "ttl"), is_n1 ? "600" : "86400");
        assert_string_equal(jstr(h, "topic"), is_n1 ? topic1 : topic2);

        /* The delivery went to its recipient's own subscription. */
        const char *path = jstr(o, "path");
        unsigned u = 0, pu = 0;
        char want[32];
        snprintf(want, sizeof(want), "r:%s:1:%%u", report);
        assert_int_equal(sscanf(jstr(p, "delivery_id"), want, &u), 1);
        assert_int_equal(sscanf(strrchr(path, '/'), "/%u", &pu), 1);
        assert_int_equal(u, pu);
        assert_true(u >= 1 && u <= NSUBS);
        if (!is_n1) {
            ok_n2 += status == 201 && u == 1;
        } else {
            ok[u - 1] += status == 201;
            gone += status == 410 && u == 2;
            busy += status == 429 && u == 3;
        }
        json_object_put(o);
    }
    fclose(f);
    assert_int_equal(lines, 6); /* n1: 1, 2 (410), 3 (429, 201), 4; n2: 1 */
    assert_int_equal(ok[0], 1);
    assert_int_equal(ok[1], 0);
    assert_int_equal(ok[2], 1);
    assert_int_equal(ok[3], 1);
    assert_int_equal(ok_n2, 1);
    assert_int_equal(gone, 1);
    assert_int_equal(busy, 1);

    /* Receipts: 4 ok, one retry http_429, permanent subscription_gone and bad_subscription. */
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL), 4);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, "r:n1:1:3", "http_429"), 1);
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:n1:1:2", "subscription_gone"), 1);
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:n1:1:5", "bad_subscription"), 1);

    /* Dead letters: the gone subscription and the broken one. */
    assert_int_equal(bb_kit_int(rc, "XLEN bb:dead"), 2);
    assert_int_equal(bb_kit_dead(rc, "subscription_gone"), 1);
    assert_int_equal(bb_kit_dead(rc, "bad_subscription"), 1);

    /* GONE, not just PERMANENT; and no subscription leaked into the log. */
    char logpath[512];
    bb_harness_path(logpath, sizeof(logpath), "worker.log");
    f = fopen(logpath, "r");
    assert_non_null(f);
    bool gone_logged = false, leaked = false, key_logged = false;
    while (fgets(line, sizeof(line), f)) {
        gone_logged = gone_logged || (strstr(line, "address gone") && strstr(line, "r:n1:1:2"));
        leaked = leaked || strstr(line, "/push/") || strstr(line, "p256dh");
        key_logged = key_logged || strstr(line, "vapid_public_key=");
    }
    fclose(f);
    /* A host that removes gone addresses has dropped user 2's subscription
     * (and only that one); an older one logs it. */
    bool removed = bb_kit_int(rc, "HEXISTS bb:user:2 push_token") == 0;
    assert_true(gone_logged || removed);
    /* bad_subscription is permanent, not gone */
    assert_int_equal(bb_kit_int(rc, "HEXISTS bb:user:5 push_token"), 1);
    assert_false(leaked);
    assert_true(key_logged);
}

/* Option checks through --check-config (init runs, no network). */
static void config_checks(void **state)
{
    char keypath[512], hex[131], rsapath[512];
    make_vapid_key(keypath, sizeof(keypath), hex);
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    assert_non_null(rsa);
    bb_harness_path(rsapath, sizeof(rsapath), "rsa.pem");
    FILE *f = fopen(rsapath, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, rsa, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    EVP_PKEY_free(rsa);

    const struct {
        const char *key;
        const char *subject;
        int status;
        const char *says;
    } cases[] = {
        {keypath, SUBJECT, 0, "configuration ok"},
        {keypath, "https://buurtbus.example/contact", 0, "configuration ok"},
        {keypath, "ops@buurtbus.example", 1, "subject: expected mailto:"},
        {rsapath, SUBJECT, 1, "not a P-256"},
        {"/nonexistent/vapid.pem", SUBJECT, 1, "vapid_key_file: cannot open"},
        {NULL, SUBJECT, 1, "channel.push.vapid_key_file: required"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char options[2048], keyline[700] = "";
        if (cases[i].key) {
            snprintf(keyline, sizeof(keyline), "channel.push.vapid_key_file \"%s\"\n",
                     cases[i].key);
        }
        snprintf(options, sizeof(options),
                 "channels push\nchannel.push.plugin webpush\n%schannel.push.subject \"%s\"\n",
                 keyline, cases[i].subject);
        bb_kit_check_config(BB_WORKER_PATH, BB_PLUGIN_DIR,
                            &(struct bb_kit_check){options, cases[i].status, cases[i].says});
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(webpush_end_to_end),
        cmocka_unit_test(config_checks),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
