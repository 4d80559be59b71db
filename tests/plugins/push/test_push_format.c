/* format() of the built fcm and apns plug-ins, without network: each
 * bb-channel-<name>.so is loaded with dlopen, given a minimal host (the
 * allocator, a silent log) and a configuration table, and asked to render
 * deliveries. Checked: the JSON fields, the lock-screen text (place only
 * unless show_text), nothing about the author, urgency mapping, the 4 KB
 * payload limit with the text cut at a UTF-8 boundary, control characters
 * escaped.
 *
 * Threads: the test's main thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dlfcn.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buurtbus/channel.h"

static char dir[64];
static char account[128], p8[128];

/* ---- a minimal host ---------------------------------------------------------------------- */

static void host_log(struct bb_host *h, int level, const char *msg, const char *kvfmt, ...)
{
    (void)h;
    (void)level;
    (void)msg;
    (void)kvfmt;
}

static const struct bb_host_api host = {
    .struct_size = sizeof(struct bb_host_api),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .alloc = malloc,
    .realloc = realloc,
    .free = free,
    .log = host_log,
};

struct kv {
    const char *name, *value;
};

static const char *cfg_value(const struct bb_channel_config *cfg, const char *name)
{
    const struct kv *kv = cfg->opaque;
    for (; kv->name; kv++) {
        if (strcmp(kv->name, name) == 0) {
            return kv->value;
        }
    }
    return NULL;
}

static int64_t cfg_integer(const struct bb_channel_config *cfg, const char *name)
{
    const char *v = cfg_value(cfg, name);
    return !v ? 0 : strcmp(v, "yes") == 0 ? 1 : strcmp(v, "no") == 0 ? 0 : atoll(v);
}

struct plugin {
    void *so;
    const struct bb_channel *ch;
    void *ctx;
};

static void load(struct plugin *p, const char *name, const struct kv *kv)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/bb-channel-%s.so", BB_PLUGIN_DIR, name);
    p->so = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->so) {
        print_error("%s\n", dlerror());
    }
    assert_non_null(p->so);
    bb_channel_entry_fn *entry = (bb_channel_entry_fn *)dlsym(p->so, "bb_channel_entry");
    assert_non_null(entry);
    p->ch = entry(BB_CHANNEL_ABI_VERSION);
    assert_non_null(p->ch);
    assert_int_equal(p->ch->caps, BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY | BB_CAP_HTTP2);
    struct bb_channel_config cfg = {
        .struct_size = sizeof(cfg),
        .instance = "push",
        .value = cfg_value,
        .integer = cfg_integer,
        .opaque = (void *)kv,
    };
    char err[256] = "";
    int rc = p->ch->init(&host, &cfg, &p->ctx, err, sizeof(err));
    if (rc != 0) {
        print_error("init: %s\n", err);
    }
    assert_int_equal(rc, 0);
}

static void unload(struct plugin *p)
{
    p->ch->destroy(p->ctx);
    dlclose(p->so);
}

/* ---- deliveries -------------------------------------------------------------------------- */

static struct bb_notification note(int urgency, const char *text)
{
    return (struct bb_notification){
        .struct_size = sizeof(struct bb_notification),
        .kind = BB_KIND_REPORT,
        .report_id = "01JDREPORT",
        .status_id = "",
        .time_ms = 0,
        .category = 1,
        .category_name = "burglary",
        .urgency = urgency,
        .locale = "nl",
        .title = "Inbraak",
        .text = text,
        .author = "Jan Jansen",
        .anonymous = 0,
        .cell = "u1hbcq7",
        .group_name = "Rosmalen-Noord",
    };
}

static const struct bb_contact contact = {
    .struct_size = sizeof(struct bb_contact),
    .email = "",
    .push_token = "tok-1",
    .push_platform = "fcm",
    .locale = "nl",
    .screen_name = "",
    .unsubscribe_url = "",
    .endpoint = "",
};

static json_object *render(struct plugin *p, const struct bb_notification *n, char **raw)
{
    struct bb_delivery d = {
        .struct_size = sizeof(d),
        .delivery_id = "r:01JDREPORT:1:42",
        .recipient = 42,
        .recipient_kind = BB_RECIPIENT_USER,
        .attempt = 1,
        .n = n,
        .contact = &contact,
    };
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(p->ch->format(p->ctx, &d, &out, &len), 0);
    assert_int_equal(strlen(out), len);
    assert_true(len <= 4000);
    json_object *o = json_tokener_parse(out);
    if (!o) {
        print_error("not JSON: %s\n", out);
    }
    assert_non_null(o);
    *raw = out;
    return o;
}

static json_object *at(json_object *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *k = strtok(buf, "."); k; k = strtok(NULL, ".")) {
        json_object *v;
        if (!json_object_object_get_ex(o, k, &v)) {
            print_error("no %s\n", path);
            fail();
        }
        o = v;
    }
    return o;
}

static const char *str(json_object *o, const char *path)
{
    return json_object_get_string(at(o, path));
}

/* True if s is well-formed UTF-8. */
static int utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80             ? 0
                : (*p & 0xe0) == 0xc0 ? 1
                : (*p & 0xf0) == 0xe0 ? 2
                : (*p & 0xf8) == 0xf0 ? 3
                                      : -1;
        if (n < 0) {
            return 0;
        }
        p++;
        for (int i = 0; i < n; i++, p++) {
            if ((*p & 0xc0) != 0x80) {
                return 0;
            }
        }
    }
    return 1;
}

/* A long text of 1-, 2-, 3- and 4-byte characters after shift ASCII
 * ones (so that the cut falls on every kind of byte). */
static char *long_text(size_t bytes, int shift)
{
    static const char *const parts[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    char *s = malloc(bytes + (size_t)shift + 8);
    size_t n = (size_t)shift;
    memset(s, 'x', n);
    bytes += n;
    for (unsigned i = 0; n < bytes; i++) {
        const char *p = parts[i % 4];
        memcpy(s + n, p, strlen(p));
        n += strlen(p);
    }
    s[n] = '\0';
    return s;
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/bb-push-format-XXXXXX");
    if (!mkdtemp(dir)) {
        return -1;
    }
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, rsa, NULL, NULL, 0, NULL, NULL);
    char *pem = NULL;
    long n = BIO_get_mem_data(bio, &pem);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "project_id", json_object_new_string("p1"));
    json_object_object_add(o, "client_email", json_object_new_string("sa@p1.iam"));
    json_object_object_add(o, "private_key", json_object_new_string_len(pem, (int)n));
    json_object_object_add(o, "token_uri", json_object_new_string("https://oauth.example/token"));
    snprintf(account, sizeof(account), "%s/sa.json", dir);
    FILE *f = fopen(account, "w");
    fputs(json_object_to_json_string(o), f);
    fclose(f);
    json_object_put(o);
    BIO_free(bio);
    snprintf(p8, sizeof(p8), "%s/key.p8", dir);
    f = fopen(p8, "w");
    PEM_write_PrivateKey(f, ec, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    return 0;
}

static int teardown(void **state)
{
    unlink(account);
    unlink(p8);
    rmdir(dir);
    return 0;
}

/* ---- the cases --------------------------------------------------------------------------- */

static void fcm_fields(void **state)
{
    for (int show = 0; show <= 1; show++) {
        const struct kv kv[] = {
            {"service_account_file", account},
            {"endpoint", "https://fcm.example"},
            {"token_uri", ""},
            {"timeout", "10000"},
            {"ca_file", ""},
            {"show_text", show ? "yes" : "no"},
            {NULL, NULL},
        };
        struct plugin p;
        load(&p, "fcm", kv);
        for (int u = BB_URGENCY_INFORMATIONAL; u <= BB_URGENCY_IN_PROGRESS; u++) {
            struct bb_notification n = note(u, "Twee mannen\tbij \"de\" ramen\x01");
            char *raw;
            json_object *o = render(&p, &n, &raw);
            assert_string_equal(str(o, "message.token"), "tok-1");
            assert_string_equal(str(o, "message.notification.title"), "Inbraak");
            assert_string_equal(str(o, "message.notification.body"),
                                show ? n.text : "Rosmalen-Noord (u1hbcq7)");
            assert_string_equal(str(o, "message.data.report_id"), "01JDREPORT");
            assert_string_equal(str(o, "message.data.delivery_id"), "r:01JDREPORT:1:42");
            assert_string_equal(str(o, "message.data.category"), "burglary");
            assert_string_equal(str(o, "message.data.cell"), "u1hbcq7");
            assert_string_equal(str(o, "message.data.kind"), "report");
            assert_string_equal(str(o, "message.data.urgency"), u == 3   ? "in_progress"
                                                                : u == 2 ? "recent"
                                                                         : "informational");
            assert_string_equal(str(o, "message.android.collapse_key"), "01JDREPORT");
            assert_string_equal(str(o, "message.android.priority"), u == 3 ? "HIGH" : "NORMAL");
            assert_string_equal(str(o, "message.apns.headers.apns-priority"), u == 3 ? "10" : "5");
            /* Never the author; control characters escaped. */
            assert_null(strstr(raw, "Jan"));
            assert_null(strchr(raw, '\t'));
            assert_null(strchr(raw, '\x01'));
            json_object_put(o);
            free(raw);
        }
        unload(&p);
    }
}

static void apns_fields(void **state)
{
    for (int show = 0; show <= 1; show++) {
        const struct kv kv[] = {
            {"key_file", p8},
            {"key_id", "KEY1234567"},
            {"team_id", "TEAM123456"},
            {"topic", "nl.buurtbus"},
            {"endpoint", "https://apns.example"},
            {"timeout", "10000"},
            {"ca_file", ""},
            {"show_text", show ? "yes" : "no"},
            {NULL, NULL},
        };
        struct plugin p;
        load(&p, "apns", kv);
        for (int u = BB_URGENCY_INFORMATIONAL; u <= BB_URGENCY_IN_PROGRESS; u++) {
            struct bb_notification n = note(u, "Twee mannen bij de ramen");
            n.anonymous = 1;
            n.author = "";
            char *raw;
            json_object *o = render(&p, &n, &raw);
            assert_string_equal(str(o, "aps.alert.title"), "Inbraak");
            assert_string_equal(str(o, "aps.alert.body"),
                                show ? n.text : "Rosmalen-Noord (u1hbcq7)");
            assert_string_equal(str(o, "aps.thread-id"), "u1hbcq7");
            assert_string_equal(str(o, "report_id"), "01JDREPORT");
            json_object *v;
            assert_int_equal(json_object_object_get_ex(at(o, "aps"), "sound", &v), u == 3);
            /* Anonymous: nothing about the author, not even a neighbour. */
            assert_null(strstr(raw, "author"));
            assert_null(strstr(raw, "buur"));
            json_object_put(o);
            free(raw);
        }
        unload(&p);
    }
}

/* A text far over the limit is cut at a character boundary with an
 * ellipsis, and the payload stays under 4 KB. */
static void long_texts(void **state)
{
    const struct kv fcm_kv[] = {
        {"service_account_file", account},
        {"endpoint", "https://fcm.example"},
        {"token_uri", ""},
        {"timeout", "10000"},
        {"ca_file", ""},
        {"show_text", "yes"},
        {NULL, NULL},
    };
    const struct kv apns_kv[] = {
        {"key_file", p8},
        {"key_id", "KEY1234567"},
        {"team_id", "TEAM123456"},
        {"topic", "nl.buurtbus"},
        {"endpoint", "https://apns.example"},
        {"timeout", "10000"},
        {"ca_file", ""},
        {"show_text", "yes"},
        {NULL, NULL},
    };
    const char *names[] = {"fcm", "apns"};
    const struct kv *kvs[] = {fcm_kv, apns_kv};
    const char *paths[] = {"message.notification.body", "aps.alert.body"};
    for (int i = 0; i < 2; i++) {
        struct plugin p;
        load(&p, names[i], kvs[i]);
        for (size_t len = 1000; len <= 20000; len = len * 3 + 1) {
            for (int shift = 0; shift < 4; shift++) {
                char *text = long_text(len, shift);
                struct bb_notification n = note(BB_URGENCY_IN_PROGRESS, text);
                char *raw;
                json_object *o = render(&p, &n, &raw);
                const char *body = str(o, paths[i]);
                assert_true(utf8_ok(body));
                size_t bl = strlen(body);
                if (bl < strlen(n.text)) {
                    /* Cut: a prefix of the text plus "…". */
                    assert_true(bl > 3);
                    assert_string_equal(body + bl - 3, "\xe2\x80\xa6");
                    assert_memory_equal(body, n.text, bl - 3);
                } else {
                    assert_string_equal(body, n.text);
                }
                json_object_put(o);
                free(raw);
                free(text);
            }
        }
        /* Many characters JSON must escape (6 bytes each) still fit. */
        char esc[3001];
        memset(esc, '\x02', sizeof(esc) - 1);
        esc[sizeof(esc) - 1] = '\0';
        struct bb_notification n = note(BB_URGENCY_RECENT, esc);
        char *raw;
        json_object *o = render(&p, &n, &raw);
        json_object_put(o);
        free(raw);
        unload(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fcm_fields),
        cmocka_unit_test(apns_fields),
        cmocka_unit_test(long_texts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
