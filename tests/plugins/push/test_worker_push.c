/* buurtbus-worker end to end with the fcm and apns plug-ins: a real
 * redis-server, DeliveryBatch entries written by hand into bb:out:push,
 * users bb:user:{id} with push_token/push_platform, the built worker as a
 * child process with one channel instance "push" whose only plug-in is
 * fcm (first run) or apns (second run), and push_provider.py playing
 * Google OAuth, FCM v1 and APNs over HTTP/2 cleartext. The keys (an RSA
 * service account, a P-256 .p8) are made here with libcrypto; the
 * stand-in verifies every signature with their public halves.
 *
 * Checked: each message reached the provider exactly once with the right
 * headers and body (apns-id derived from the delivery id, collapse id,
 * priority by urgency, lock-screen text), one OAuth token fetched and
 * reused, one APNs provider JWT, requests multiplexed on fewer
 * connections than requests, receipts, gone/bad tokens as permanent
 * receipts plus dead letters with the plug-in's reason, busy/flaky tokens
 * retried and delivered once; and option checks through --check-config.
 *
 * Threads: the test's main thread only. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
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
#include "worker_kit.h"

#define GROUP "Rosmalen-Noord"
#define CELL "u1hbcq7"
#define PROJECT "buurtbus-test"
#define CLIENT_EMAIL "worker@buurtbus-test.iam.gserviceaccount.com"
#define TEAM_ID "TEAM123456"
#define KEY_ID "KEY1234567"
#define TOPIC "nl.buurtbus.app"
#define NUSERS 11

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t worker_pid, server_pid;
static char rsa_pem[512], rsa_pub[512], ec_p8[512], ec_pub[512], account[512], provider_conf[512];
static char tls_crt[512], tls_key[512];

/* Device tokens and platforms by user (from 1) for a run, instead of the
 * table below and the run's plug-in. */
static const char *const *token_override;
static const char *const *platform_override;

/* The device token of user u (1-based) under platform plat. Users 7..10
 * are plain; 11 is a platform-specific failure. */
static void device_token(unsigned u, const char *plat, char *out, size_t cap)
{
    if (token_override) {
        snprintf(out, cap, "%s", token_override[u - 1]);
        return;
    }
    static const char *const kinds[NUSERS + 1] = {
        "", "ok", "ok", "gone", "busy", "flaky", "bad", "ok", "ok", "ok", "ok", "",
    };
    const char *k = kinds[u];
    if (u == NUSERS) {
        k = strcmp(plat, "fcm") == 0 ? "badtoken" : "wrongtopic";
    }
    snprintf(out, cap, "%s-%u", k, u);
}

/* The standard report report_id, sent now with urgency to the group,
 * as a batch to users 1..n. */
static void add_batch(const char *report_id, int urgency, size_t n)
{
    Bb__Notification nt;
    bb_kit_report(&nt, report_id);
    nt.time_ms = (int64_t)time(NULL) * 1000;
    nt.urgency = urgency;
    nt.cell = CELL;
    nt.group_name = GROUP;
    bb_kit_add_batch(
        rc, "bb:out:push", &nt,
        &(struct bb_kit_batch){.channel = BB__CHANNEL__CHANNEL_PUSH, .first = 1, .n = n});
}

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v)) {
        print_error("no member %s in %s\n", k, json_object_to_json_string(o));
    }
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_string(v);
}

static json_object *jobj(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return v;
}

/* ---- keys -------------------------------------------------------------------------------- */

static void write_key(EVP_PKEY *key, const char *name, char *path, size_t cap, int public)
{
    bb_harness_path(path, cap, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(public ? PEM_write_PUBKEY(f, key)
                            : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL),
                     1);
    fclose(f);
}

/* The stand-in's TLS certificate: self-signed, P-256, for IP 127.0.0.1;
 * the plug-ins trust it through their ca_file option. */
static void make_tls_cert(void)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    assert_true(key && x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 2 * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    const char *const exts[][2] = {
        {"subjectAltName", "IP:127.0.0.1"},
        {"basicConstraints", "critical,CA:TRUE"},
        {"keyUsage", "critical,digitalSignature,keyCertSign"},
    };
    for (size_t i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
        assert_non_null(e);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    write_key(key, "provider.key", tls_key, sizeof(tls_key), 0);
    bb_harness_path(tls_crt, sizeof(tls_crt), "provider.crt");
    FILE *f = fopen(tls_crt, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(key);
}

/* The service-account JSON, the .p8 key, their public halves, and the
 * stand-in's configuration, all in the temporary directory. */
static void make_keys(void)
{
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(rsa);
    assert_non_null(ec);
    write_key(rsa, "sa.pem", rsa_pem, sizeof(rsa_pem), 0);
    write_key(rsa, "sa.pub", rsa_pub, sizeof(rsa_pub), 1);
    write_key(ec, "AuthKey.p8", ec_p8, sizeof(ec_p8), 0);
    write_key(ec, "apns.pub", ec_pub, sizeof(ec_pub), 1);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);

    char pem[4096];
    FILE *f = fopen(rsa_pem, "r");
    assert_non_null(f);
    size_t n = fread(pem, 1, sizeof(pem) - 1, f);
    fclose(f);
    pem[n] = '\0';
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("service_account"));
    json_object_object_add(o, "project_id", json_object_new_string(PROJECT));
    json_object_object_add(o, "private_key_id", json_object_new_string("0123abcd"));
    json_object_object_add(o, "private_key", json_object_new_string(pem));
    json_object_object_add(o, "client_email", json_object_new_string(CLIENT_EMAIL));
    json_object_object_add(o, "token_uri",
                           json_object_new_string("https://oauth2.googleapis.com/token"));
    assert_non_null(bb_harness_write_file(account, sizeof(account), "service-account.json",
                                          json_object_to_json_string(o)));
    json_object_put(o);

    make_tls_cert();
}

/* The stand-in's configuration: TLS (as the real providers), or HTTP/2
 * cleartext that ends each connection after one request. */
static void write_provider_conf(bool tls)
{
    char conf[4096];
    int n = snprintf(conf, sizeof(conf),
                     "{\"rsa_public_key\":\"%s\",\"ec_public_key\":\"%s\","
                     "\"client_email\":\"%s\",\"project_id\":\"%s\",\"team_id\":\"%s\","
                     "\"key_id\":\"%s\",\"topic\":\"%s\",",
                     rsa_pub, ec_pub, CLIENT_EMAIL, PROJECT, TEAM_ID, KEY_ID, TOPIC);
    if (tls) {
        snprintf(conf + n, sizeof(conf) - (size_t)n, "\"tls_cert\":\"%s\",\"tls_key\":\"%s\"}",
                 tls_crt, tls_key);
    } else {
        snprintf(conf + n, sizeof(conf) - (size_t)n, "\"goaway\":true}");
    }
    assert_non_null(
        bb_harness_write_file(provider_conf, sizeof(provider_conf), "provider.json", conf));
}

/* The apns-id the plug-in derives from a delivery id: SHA-256, first 16
 * bytes, version 8, variant 10. */
static void expected_apns_id(const char *delivery, char out[37])
{
    unsigned char md[32];
    unsigned len = 0;
    assert_int_equal(EVP_Digest(delivery, strlen(delivery), md, &len, EVP_sha256(), NULL), 1);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x80);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    char h[33];
    for (int i = 0; i < 16; i++) {
        snprintf(h + 2 * i, 3, "%02x", md[i]);
    }
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

/* ---- one run ----------------------------------------------------------------------------- */

/* What the provider saw for one delivery. */
struct seen {
    unsigned ok, failed, fail_status;
    char ok_auth[600], fail_auth[600]; /* the credential each used */
};

struct run {
    const char *plat;
    struct seen by[3][NUSERS + 1]; /* [report 1 or 2][user] */
    unsigned token_requests, messages, conns;
    char auth[1024]; /* the one bearer token / JWT every message used */
    int auth_mismatch;
};

static void write_users(const char *plat, size_t nusers)
{
    for (unsigned u = 1; u <= nusers; u++) {
        Bb__User user = BB__USER__INIT;
        user.id = u;
        user.screen_name = "buur";
        user.locale = "nl";
        uint8_t buf[256];
        size_t len = bb__user__pack(&user, buf);
        char tok[64];
        device_token(u, plat, tok, sizeof(tok));
        freeReplyObject(bb_kit_cmd(rc, "HSET bb:user:%u u %b push_token %s push_platform %s", u,
                                   buf, len, tok,
                                   platform_override ? platform_override[u - 1] : plat));
    }
}

/* Which user a device token belongs to (the number after the dash). */
static unsigned user_of(const char *tok)
{
    const char *dash = strchr(tok, '-');
    assert_non_null(dash);
    return (unsigned)strtoul(dash + 1, NULL, 10);
}

static void note_outcome(struct seen *s, json_object *entry)
{
    int status = json_object_get_int(jobj(entry, "status"));
    const char *auth = jstr(entry, "auth");
    if (status == 200) {
        s->ok++;
        snprintf(s->ok_auth, sizeof(s->ok_auth), "%s", auth);
    } else {
        s->failed++;
        s->fail_status = (unsigned)status;
        snprintf(s->fail_auth, sizeof(s->fail_auth), "%s", auth);
    }
}

static void check_fcm_message(struct run *r, json_object *entry, const char *body, int report)
{
    json_object *b = json_tokener_parse(body);
    assert_non_null(b);
    json_object *m = jobj(b, "message");
    const char *tok = jstr(m, "token");
    unsigned u = user_of(tok);
    char want[64];
    device_token(u, "fcm", want, sizeof(want));
    assert_string_equal(tok, want);
    json_object *note = jobj(m, "notification");
    assert_string_equal(jstr(note, "title"), "Inbraak");
    /* show_text off: the place, not the text. */
    assert_string_equal(jstr(note, "body"), GROUP " (" CELL ")");
    json_object *data = jobj(m, "data");
    char id[64];
    snprintf(id, sizeof(id), "r:n%d:1:%u", report, u);
    assert_string_equal(jstr(data, "delivery_id"), id);
    snprintf(id, sizeof(id), "n%d", report);
    assert_string_equal(jstr(data, "report_id"), id);
    assert_string_equal(jstr(data, "category"), "burglary");
    assert_string_equal(jstr(data, "urgency"), report == 1 ? "in_progress" : "recent");
    assert_string_equal(jstr(data, "cell"), CELL);
    assert_string_equal(jstr(data, "kind"), "report");
    json_object *android = jobj(m, "android");
    assert_string_equal(jstr(android, "collapse_key"), id);
    assert_string_equal(jstr(android, "priority"), report == 1 ? "HIGH" : "NORMAL");
    json_object *ah = jobj(jobj(m, "apns"), "headers");
    assert_string_equal(jstr(ah, "apns-priority"), report == 1 ? "10" : "5");
    assert_string_equal(jstr(ah, "apns-collapse-id"), id);
    /* Nothing about the author, nor the text. */
    assert_null(strstr(body, "Jan"));
    assert_null(strstr(body, "mannen"));
    note_outcome(&r->by[report][u], entry);
    json_object_put(b);
}

static void check_apns_message(struct run *r, json_object *entry, const char *body)
{
    json_object *h = jobj(entry, "headers");
    const char *path = jstr(entry, "path");
    assert_true(strncmp(path, "/3/device/", 10) == 0);
    unsigned u = user_of(path + 10);
    char want[64];
    device_token(u, "apns", want, sizeof(want));
    assert_string_equal(path + 10, want);
    json_object *b = json_tokener_parse(body);
    assert_non_null(b);
    const char *report_id = jstr(b, "report_id");
    int report = strcmp(report_id, "n1") == 0 ? 1 : 2;
    assert_string_equal(report_id, report == 1 ? "n1" : "n2");
    json_object *aps = jobj(b, "aps");
    json_object *alert = jobj(aps, "alert");
    assert_string_equal(jstr(alert, "title"), "Inbraak");
    /* show_text on: the text itself. */
    assert_string_equal(jstr(alert, "body"), BB_KIT_TEXT);
    assert_string_equal(jstr(aps, "thread-id"), CELL);
    json_object *v;
    assert_int_equal(json_object_object_get_ex(aps, "sound", &v), report == 1);
    if (report == 1) {
        assert_string_equal(json_object_get_string(v), "default");
    }
    assert_null(strstr(body, "Jan"));

    char id[64], apns_id[37];
    snprintf(id, sizeof(id), "r:n%d:1:%u", report, u);
    expected_apns_id(id, apns_id);
    assert_string_equal(jstr(h, "apns-id"), apns_id);
    assert_string_equal(jstr(h, "apns-collapse-id"), report_id);
    assert_string_equal(jstr(h, "apns-priority"), report == 1 ? "10" : "5");
    assert_string_equal(jstr(h, "apns-push-type"), "alert");
    assert_string_equal(jstr(h, "apns-topic"), TOPIC);
    long long exp = atoll(jstr(h, "apns-expiration"));
    long long now = (long long)time(NULL);
    long long ttl = report == 1 ? 3600 : 6 * 3600;
    assert_true(exp > now + ttl - 300 && exp <= now + ttl);
    note_outcome(&r->by[report][u], entry);
    json_object_put(b);
}

/* Reads the stand-in's log into r, checking every message on the way. */
static void read_provider_log(struct run *r, const char *log)
{
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    static char line[65536];
    unsigned long conn_mask = 0;
    while (fgets(line, sizeof(line), f)) {
        json_object *o = json_tokener_parse(line);
        assert_non_null(o);
        const char *path = jstr(o, "path");
        const char *auth = jstr(o, "auth");
        int conn = json_object_get_int(jobj(o, "conn"));
        if (strcmp(path, "/token") == 0) {
            assert_int_equal(json_object_get_int(jobj(o, "status")), 200);
            r->token_requests++;
            json_object_put(o);
            continue;
        }
        r->messages++;
        if (conn < 64) {
            conn_mask |= 1ul << conn;
        }
        if (!r->auth[0]) {
            snprintf(r->auth, sizeof(r->auth), "%s", auth);
        }
        r->auth_mismatch += strcmp(r->auth, auth) != 0;
        if (strncmp(path, "/3/device/", 10) != 0) {
            char want[64];
            snprintf(want, sizeof(want), "/v1/projects/%s/messages:send", PROJECT);
            assert_string_equal(path, want);
            json_object *h = jobj(o, "headers");
            assert_true(strncmp(jstr(h, "content-type"), "application/json", 16) == 0);
            const char *body = jstr(o, "body");
            int report = strstr(body, "\"r:n1:") ? 1 : 2;
            check_fcm_message(r, o, body, report);
        } else {
            check_apns_message(r, o, jstr(o, "body"));
        }
        json_object_put(o);
    }
    fclose(f);
    r->conns = (unsigned)__builtin_popcountl(conn_mask);
}

/* The dead letter's reason for delivery, or "" if none (one at most). */
static void dead_reason(const char *delivery, char *out, size_t cap)
{
    redisReply *r = bb_kit_cmd(rc, "XRANGE bb:dead - +");
    out[0] = '\0';
    unsigned found = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *fr = r->element[i]->element[1];
        const char *reason = "", *d = "";
        for (size_t k = 0; k + 1 < fr->elements; k += 2) {
            if (strcmp(fr->element[k]->str, "reason") == 0) {
                reason = fr->element[k + 1]->str;
            } else if (strcmp(fr->element[k]->str, "delivery") == 0) {
                d = fr->element[k + 1]->str;
            }
        }
        if (strcmp(d, delivery) == 0) {
            snprintf(out, cap, "%s", reason);
            found++;
        }
    }
    freeReplyObject(r);
    assert_true(found <= 1);
}

/* The options of plug-in plat, each line starting with prefix. */
static int plugin_conf(char *out, size_t cap, const char *plat, const char *prefix, bool tls,
                       int port)
{
    const char *scheme = tls ? "https" : "http";
    int len = snprintf(out, cap, "%sendpoint %s://127.0.0.1:%d\n", prefix, scheme, port);
    if (tls) {
        len += snprintf(out + len, cap - (size_t)len, "%sca_file \"%s\"\n", prefix, tls_crt);
    }
    if (strcmp(plat, "fcm") == 0) {
        len += snprintf(out + len, cap - (size_t)len,
                        "%sservice_account_file \"%s\"\n%stoken_uri %s://127.0.0.1:%d/token\n",
                        prefix, account, prefix, scheme, port);
    } else {
        len += snprintf(out + len, cap - (size_t)len,
                        "%skey_file \"%s\"\n%skey_id %s\n%steam_id %s\n%stopic %s\n"
                        "%sshow_text yes\n",
                        prefix, ec_p8, prefix, KEY_ID, prefix, TEAM_ID, prefix, TOPIC, prefix);
    }
    assert_true(len > 0 && (size_t)len < cap);
    return len;
}

/* Runs the worker with channel push = plug-in plat until bb:out:push is
 * done; fills r from the stand-in's log. tls: the stand-in speaks TLS and
 * the plug-in trusts it through ca_file (its own libcurl handle), else
 * h2c through the host's HTTP helper; n1, n2: recipients of reports n1
 * (in progress) and n2 (recent). */
static void run_worker(struct run *r, const char *plat, bool tls, size_t n1, size_t n2)
{
    memset(r, 0, sizeof(*r));
    r->plat = plat;
    write_provider_conf(tls);
    freeReplyObject(bb_kit_cmd(rc, "FLUSHALL"));
    write_users(plat, n1 > n2 ? n1 : n2);

    char log[512], conf[4096], wlog[512], wlog_name[64], label[32];
    snprintf(label, sizeof(label), "%s-%s", strchr(plat, ',') ? "both" : plat, tls ? "tls" : "h2c");
    snprintf(conf, sizeof(conf), "%s.jsonl", label);
    setenv("BB_PUSH_PROVIDER_CONFIG", provider_conf, 1);
    int port;
    server_pid = bb_kit_stand_in(BB_PUSH_PROVIDER, conf, log, sizeof(log), &port);

    if (n1) {
        add_batch("n1", BB__URGENCY__URGENCY_IN_PROGRESS, n1);
    }
    if (n2) {
        add_batch("n2", BB__URGENCY__URGENCY_RECENT, n2);
    }

    int len = snprintf(conf, sizeof(conf),
                       "redis %s\nname w-push-%s\nplugin_dir \"%s\"\nblock 100ms\n"
                       "retry_min 10ms\nretry_max 2s\nchannels push\nchannel.push.plugin %s\n",
                       srv->addr, label, BB_PLUGIN_DIR, plat);
    if (strcmp(plat, "fcm,apns") == 0) {
        len += plugin_conf(conf + len, sizeof(conf) - (size_t)len, "fcm", "channel.push.fcm.", tls,
                           port);
        plugin_conf(conf + len, sizeof(conf) - (size_t)len, "apns", "channel.push.apns.", tls,
                    port);
    } else {
        plugin_conf(conf + len, sizeof(conf) - (size_t)len, plat, "channel.push.", tls, port);
    }
    snprintf(wlog_name, sizeof(wlog_name), "worker-%s.log", label);
    bb_harness_path(wlog, sizeof(wlog), wlog_name);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, wlog_name);
    bool done = false;
    for (int t = 0; t < 20000 && !done; t += 50) {
        done = bb_harness_worker_unfinished(rc, "bb:out:push", "bb-workers", "push") == 0;
        if (!done) {
            bb_harness_sleep_ms(50);
        }
    }
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    bb_kit_stop(&server_pid, SIGTERM, BB_KIT_STOP_MS);
    if (!done) {
        print_error("bb:out:push not finished; see %s\n", wlog);
    }
    assert_true(done);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    read_provider_log(r, log);
}

/* What both plug-ins share: each delivery reached the provider as
 * scripted, receipts and dead letters say the same. */
static void check_outcomes(const struct run *r, const char *gone_reason, const char *bad_reason,
                           const char *last_reason, const char *busy_reason,
                           const char *flaky_reason)
{
    char id[64], dead[64];
    for (unsigned u = 1; u <= NUSERS; u++) {
        const struct seen *s = &r->by[1][u];
        snprintf(id, sizeof(id), "r:n1:1:%u", u);
        dead_reason(id, dead, sizeof(dead));
        switch (u) {
        case 3: /* gone */
            assert_int_equal(s->ok, 0);
            assert_int_equal(s->failed, 1);
            assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, id, gone_reason),
                             1);
            assert_string_equal(dead, gone_reason);
            /* GONE: the host removed the token from the user's record. */
            assert_int_equal(bb_kit_int(rc, "HEXISTS bb:user:3 push_token"), 0);
            break;
        case 4: /* busy: 429, then delivered */
        case 5: /* flaky: 503, then delivered */
            assert_int_equal(s->ok, 1);
            assert_int_equal(s->failed, 1);
            assert_int_equal(s->fail_status, u == 4 ? 429 : 503);
            assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, id,
                                             u == 4 ? busy_reason : flaky_reason),
                             1);
            assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, id, NULL), 1);
            assert_string_equal(dead, "");
            break;
        case 6: /* bad */
        case NUSERS:
            assert_int_equal(s->ok, 0);
            assert_int_equal(s->failed, 1);
            assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, id,
                                             u == 6 ? bad_reason : last_reason),
                             1);
            assert_string_equal(dead, u == 6 ? bad_reason : last_reason);
            break;
        default:
            assert_int_equal(s->ok, 1);
            assert_int_equal(s->failed, 0);
            assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, id, NULL), 1);
            assert_string_equal(dead, "");
        }
    }
    for (unsigned u = 1; u <= 2; u++) {
        assert_int_equal(r->by[2][u].ok, 1);
        assert_int_equal(r->by[2][u].failed, 0);
    }
    /* 13 deliveries: 9 delivered, 2 of them after one retry; 3 failed. */
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL), 10);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, NULL, NULL), 2);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, NULL, NULL), 3);
    assert_int_equal(r->messages, 15);
    /* One credential for every message, and multiplexing: fewer
     * connections than requests. */
    assert_int_equal(r->auth_mismatch, 0);
    assert_true(r->conns >= 1 && r->conns < r->messages);
    print_message("%s: %u messages on %u connection(s)\n", r->plat, r->messages, r->conns);
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static int setup(void **state)
{
    if (bb_kit_setup(&srv, &rc) != 0) {
        return -1;
    }
    make_keys();
    return 0;
}

static int reset_tokens(void **state)
{
    token_override = NULL;
    platform_override = NULL;
    return 0;
}

static int teardown(void **state)
{
    bb_kit_teardown(&rc, &worker_pid, &server_pid);
    return 0;
}

/* ---- the cases --------------------------------------------------------------------------- */

static void fcm_end_to_end(void **state)
{
    struct run r;
    run_worker(&r, "fcm", true, NUSERS, 2);
    /* The OAuth token: fetched once, reused by every message. */
    assert_int_equal(r.token_requests, 1);
    assert_string_equal(r.auth, "ya29.stand-in-1");
    check_outcomes(&r, "unregistered", "invalid_argument", "invalid_token", "quota_exceeded",
                   "unavailable");
}

static void apns_end_to_end(void **state)
{
    struct run r;
    run_worker(&r, "apns", true, NUSERS, 2);
    assert_int_equal(r.token_requests, 0);
    /* One provider JWT (renewed only every 50 minutes). */
    assert_true(strlen(r.auth) > 20);
    check_outcomes(&r, "unregistered", "bad_device_token", "device_token_not_for_topic",
                   "too_many_requests", "service_unavailable");
}

/* Without ca_file the plug-ins go through the host's HTTP helper (h2c
 * with prior knowledge here). curl 7.88.1 breaks reused prior-knowledge
 * connections (curl#10634, fixed in 8.0), so the stand-in ends each
 * connection after one request and the sends are kept sequential: the
 * token request, then one message. */
static void fcm_host_http(void **state)
{
    struct run r;
    run_worker(&r, "fcm", false, 1, 0);
    assert_int_equal(r.token_requests, 1);
    assert_int_equal(r.messages, 1);
    assert_int_equal(r.by[1][1].ok, 1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, "r:n1:1:1", NULL), 1);
}

static void apns_host_http(void **state)
{
    struct run r;
    run_worker(&r, "apns", false, 1, 0);
    assert_int_equal(r.messages, 1);
    assert_int_equal(r.by[1][1].ok, 1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, "r:n1:1:1", NULL), 1);
}

/* A refused credential: FCM's 401 drops the access token and the retry
 * fetches a new one; APNs' ExpiredProviderToken renews the JWT. */
static void fcm_token_refused(void **state)
{
    static const char *const tokens[] = {"stale-1", "ok-2"};
    token_override = tokens;
    struct run r;
    run_worker(&r, "fcm", true, 2, 0);
    token_override = NULL;
    assert_int_equal(r.token_requests, 2);
    assert_int_equal(r.by[1][1].ok, 1);
    assert_int_equal(r.by[1][1].failed, 1);
    assert_int_equal(r.by[1][1].fail_status, 401);
    assert_string_equal(r.by[1][1].fail_auth, "ya29.stand-in-1");
    assert_string_equal(r.by[1][1].ok_auth, "ya29.stand-in-2");
    assert_int_equal(r.by[1][2].ok, 1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, "r:n1:1:1", "unauthenticated"),
                     1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL), 2);
}

static void apns_token_refused(void **state)
{
    static const char *const tokens[] = {"stale-1", "ok-2"};
    token_override = tokens;
    struct run r;
    run_worker(&r, "apns", true, 2, 0);
    token_override = NULL;
    assert_int_equal(r.by[1][1].ok, 1);
    assert_int_equal(r.by[1][1].failed, 1);
    assert_int_equal(r.by[1][1].fail_status, 403);
    assert_true(strcmp(r.by[1][1].fail_auth, r.by[1][1].ok_auth) != 0);
    assert_int_equal(r.by[1][2].ok, 1);
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, "r:n1:1:1", "expired_provider_token"), 1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL), 2);
}

/* One instance, both plug-ins: each recipient goes to the plug-in its
 * push_platform names (options as channel.push.<plug-in>.<option>). */
static void both_by_platform(void **state)
{
    static const char *const tokens[] = {"ok-1", "ok-2", "gone-3", "gone-4", "ok-5"};
    static const char *const platforms[] = {"fcm", "apns", "fcm", "apns", "webpush"};
    token_override = tokens;
    platform_override = platforms;
    struct run r;
    run_worker(&r, "fcm,apns", true, 5, 0);
    assert_int_equal(r.token_requests, 1);
    assert_int_equal(r.messages, 4);
    assert_int_equal(r.by[1][1].ok + r.by[1][2].ok, 2);
    assert_int_equal(r.by[1][3].failed + r.by[1][4].failed, 2);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL), 2);
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:n1:1:3", "unregistered"), 1);
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:n1:1:4", "unregistered"), 1);
    /* No plug-in for webpush in this instance. */
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:n1:1:5", "no_plugin_for_platform"),
        1);
}

/* Option checks through --check-config (init runs: keys are loaded). */
static void config_checks(void **state)
{
    char junk[512];
    assert_non_null(bb_harness_write_file(junk, sizeof(junk), "junk.p8", "not a key\n"));
    char fcm_ok[1024], fcm_nofile[1024], apns_ok[1024], apns_nokey[1024], apns_rsa[1024];
    snprintf(fcm_ok, sizeof(fcm_ok),
             "channels push\nchannel.push.plugin fcm\nchannel.push.service_account_file \"%s\"\n",
             account);
    snprintf(fcm_nofile, sizeof(fcm_nofile),
             "channels push\nchannel.push.plugin fcm\n"
             "channel.push.service_account_file /nonexistent/sa.json\n");
    snprintf(apns_ok, sizeof(apns_ok),
             "channels push\nchannel.push.plugin apns\nchannel.push.key_file \"%s\"\n"
             "channel.push.key_id K\nchannel.push.team_id T\nchannel.push.topic a.b\n",
             ec_p8);
    snprintf(apns_nokey, sizeof(apns_nokey),
             "channels push\nchannel.push.plugin apns\nchannel.push.key_file \"%s\"\n"
             "channel.push.key_id K\nchannel.push.team_id T\nchannel.push.topic a.b\n",
             junk);
    snprintf(apns_rsa, sizeof(apns_rsa),
             "channels push\nchannel.push.plugin apns\nchannel.push.key_file \"%s\"\n"
             "channel.push.key_id K\nchannel.push.team_id T\nchannel.push.topic a.b\n",
             rsa_pem);
    const struct bb_kit_check cases[] = {
        {fcm_ok, 0, "configuration ok"},
        {fcm_nofile, 1, "service_account_file: cannot read"},
        {"channels push\nchannel.push.plugin fcm\n", 1, "service_account_file: required"},
        {apns_ok, 0, "configuration ok"},
        {apns_nokey, 1, "key_file: not a P-256 private key"},
        {apns_rsa, 1, "key_file: not a P-256 private key"},
        {"channels push\nchannel.push.plugin apns\nchannel.push.key_file /x\n", 1,
         "channel.push.key_id: required"},
    };
    bb_kit_check_configs(BB_WORKER_PATH, BB_PLUGIN_DIR, cases, sizeof(cases) / sizeof(cases[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(fcm_end_to_end, reset_tokens),
        cmocka_unit_test_setup(apns_end_to_end, reset_tokens),
        cmocka_unit_test_setup(fcm_token_refused, reset_tokens),
        cmocka_unit_test_setup(apns_token_refused, reset_tokens),
        cmocka_unit_test_setup(both_by_platform, reset_tokens),
        cmocka_unit_test_setup(fcm_host_http, reset_tokens),
        cmocka_unit_test_setup(apns_host_http, reset_tokens),
        cmocka_unit_test_setup(config_checks, reset_tokens),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
