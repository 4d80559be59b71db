/* Tests of the smtp channel plug-in, loaded as the built bb-channel-smtp.so
 * through bb_channel_entry() the way the worker host loads it. format()
 * cases need no network; send() cases run against bb-smtp-sink on a free
 * port with a fake host whose curl() runs the easy handle to completion
 * (skipped when the sink is not built); the TLS cases (STARTTLS, smtps://,
 * AUTH inside TLS, certificate verification) use a self-signed cert made
 * by the openssl tool at test time. Single-threaded. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>

#include <buurtbus/channel.h>

#define USER_ID 987654321ULL
#define USER_ID_STR "987654321"

/* ---- a fake host ---------------------------------------------------------------------------- */

struct kv {
    const char *name;
    const char *value;
};

static struct kv cfg_values[16];

static const char *cfg_value(const struct bb_channel_config *cfg, const char *name)
{
    for (size_t i = 0; cfg_values[i].name != NULL; i++) {
        if (strcmp(cfg_values[i].name, name) == 0) {
            return cfg_values[i].value;
        }
    }
    return NULL;
}

static int64_t cfg_integer(const struct bb_channel_config *cfg, const char *name)
{
    const char *v = cfg_value(cfg, name);

    return v != NULL ? strtoll(v, NULL, 10) : 0;
}

static void host_log(struct bb_host *host, int level, const char *msg, const char *kvfmt, ...)
{
    (void)host;
    (void)level;
    (void)msg;
    (void)kvfmt;
}

/* Runs the transfer to the end, then completes it, as the multi handle would. */
static int host_curl(struct bb_host *host, void *easy, bb_curl_done_fn *done, void *arg)
{
    CURLcode rc = curl_easy_perform(easy);

    done(arg, easy, (int)rc);
    return 0;
}

/* A host that knows one zone: Europe/Amsterdam, UTC+1 in November. */
static int32_t host_offset(struct bb_host *host, const char *tz, int64_t t)
{
    return strcmp(tz, "Europe/Amsterdam") == 0 ? 3600 : 0;
}

static struct bb_host_api host_api = {
    .struct_size = sizeof(struct bb_host_api),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .alloc = malloc,
    .realloc = realloc,
    .free = free,
    .log = host_log,
    .curl = host_curl,
    .utc_offset_s = host_offset,
};

static const struct bb_channel *channel;
static void *dl;

/* Fills the config with defaults as the host would, then the given values
 * (user NULL: no AUTH). */
static void *plugin_init_auth(const char *url, const char *ubase, const char *user,
                              const char *pass)
{
    struct bb_channel_config cfg = {
        .struct_size = sizeof(cfg),
        .instance = "email",
        .value = cfg_value,
        .integer = cfg_integer,
    };
    size_t k = 0;
    char err[256] = "";
    void *ctx = NULL;

    for (const struct bb_channel_option *o = channel->options; o->name != NULL; o++) {
        const char *v = o->def;
        if (strcmp(o->name, "url") == 0) {
            v = url;
        } else if (strcmp(o->name, "from") == 0) {
            v = "buurt@example.org";
        } else if (strcmp(o->name, "unsubscribe_base") == 0) {
            v = ubase;
        } else if (strcmp(o->name, "unsubscribe_key_file") == 0) {
            v = "0123456789abcdef0123456789abcdef";
        } else if (strcmp(o->name, "from_name") == 0) {
            v = "Buurtpreventie Kerkbuurt";
        } else if (strcmp(o->name, "username") == 0 && user != NULL) {
            v = user;
        } else if (strcmp(o->name, "password_file") == 0 && pass != NULL) {
            v = pass;
        } else if (strcmp(o->name, "timeout") == 0) {
            v = "5s";
        }
        assert_true(k < 15);
        cfg_values[k].name = o->name;
        cfg_values[k].value = v;
        k++;
    }
    cfg_values[k].name = NULL;
    assert_int_equal(channel->init(&host_api, &cfg, &ctx, err, sizeof(err)), 0);
    assert_non_null(ctx);
    return ctx;
}

static void *plugin_init(const char *url, const char *ubase)
{
    return plugin_init_auth(url, ubase, NULL, NULL);
}

static int group_setup(void **state)
{
    bb_channel_entry_fn *entry;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    dl = dlopen(BB_SMTP_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return -1;
    }
    entry = (bb_channel_entry_fn *)dlsym(dl, "bb_channel_entry");
    if (entry == NULL || entry(BB_CHANNEL_ABI_VERSION + 1) != NULL) {
        return -1;
    }
    channel = entry(BB_CHANNEL_ABI_VERSION);
    return channel != NULL && channel->abi_version == BB_CHANNEL_ABI_VERSION ? 0 : -1;
}

static int group_teardown(void **state)
{
    dlclose(dl);
    curl_global_cleanup();
    return 0;
}

/* ---- deliveries ----------------------------------------------------------------------------- */

static const struct bb_media media[] = {
    {"https://media.example.org/r/abc/1.jpg", "image/jpeg", 1},
    {"javascript:alert(1)", "text/html", 0},
};

static struct bb_notification note(void)
{
    struct bb_notification n = {
        .struct_size = sizeof(n),
        .kind = BB_KIND_REPORT,
        .report_id = "abc",
        .status_id = "",
        .time_ms = 1764343860000LL,
        .category = 4,
        .category_name = "fire",
        .urgency = BB_URGENCY_IN_PROGRESS,
        .source = 1,
        .locale = "nl",
        .title = "Brand in de Kerkstraat",
        .text = "Rook uit de schuur achter nummer 12.\nBrandweer is gebeld.",
        .author = "Buurvrouw_K",
        .anonymous = 0,
        .cell = "u173zq",
        .group_name = "Kerkbuurt",
        .media = media,
        .nmedia = 2,
    };
    return n;
}

static struct bb_contact contact(const char *email, const char *locale)
{
    struct bb_contact c = {
        .struct_size = sizeof(c),
        .email = email,
        .push_token = "",
        .push_platform = "",
        .locale = locale,
        .screen_name = "Lezer",
        .unsubscribe_url = "",
        .endpoint = "",
    };
    return c;
}

static struct bb_delivery delivery(const struct bb_notification *n, const struct bb_contact *c)
{
    struct bb_delivery d = {
        .struct_size = sizeof(d),
        .delivery_id = "r:abc:2:" USER_ID_STR,
        .recipient = USER_ID,
        .recipient_kind = BB_RECIPIENT_USER,
        .attempt = 1,
        .n = n,
        .contact = c,
    };
    return d;
}

/* ---- decoding what came out ----------------------------------------------------------------- */

struct parsed {
    char *raw;
    size_t len;
    char *text; /* decoded text/plain part */
    char *html; /* decoded text/html part */
};

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static char *qp_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t k = 0;

    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=' && i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
            i += 2;
        } else if (s[i] == '=' && i + 2 < n) {
            assert_true(hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0);
            out[k++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[k++] = s[i];
        }
    }
    out[k] = '\0';
    return out;
}

/* The body of the part whose Content-Type starts with ctype. */
static char *part(const char *raw, const char *ctype)
{
    char hdr[128];
    const char *p;
    const char *body;
    const char *end;

    snprintf(hdr, sizeof(hdr), "Content-Type: %s", ctype);
    p = strstr(raw, hdr);
    assert_non_null(p);
    assert_non_null(strstr(p, "Content-Transfer-Encoding: quoted-printable\r\n"));
    body = strstr(p, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    end = strstr(body, "\r\n--bb-alt-");
    assert_non_null(end);
    return qp_decode(body, (size_t)(end - body));
}

static struct parsed render(void *ctx, const struct bb_delivery *d)
{
    struct parsed p = {0};

    assert_int_equal(channel->format(ctx, d, &p.raw, &p.len), 0);
    assert_non_null(p.raw);
    assert_int_equal(strlen(p.raw), p.len);
    p.text = part(p.raw, "text/plain; charset=UTF-8");
    p.html = part(p.raw, "text/html; charset=UTF-8");
    return p;
}

static void parsed_free(struct parsed *p)
{
    free(p->raw);
    free(p->text);
    free(p->html);
}

static const char *header(const char *raw, const char *name)
{
    char key[64];
    const char *end = strstr(raw, "\r\n\r\n");
    const char *p;

    snprintf(key, sizeof(key), "\r\n%s: ", name);
    p = strstr(raw, key);
    if (p == NULL || p > end) {
        return strncmp(raw, key + 2, strlen(key + 2)) == 0 ? raw + strlen(key + 2) : NULL;
    }
    return p + strlen(key);
}

static int b64v(char c)
{
    const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = strchr(t, c);

    return c != '\0' && p != NULL ? (int)(p - t) : -1;
}

/* Decodes a folded sequence of =?UTF-8?B?...?= words into out. */
static void subject_decode(const char *v, char *out, size_t cap)
{
    size_t k = 0;

    while (strncmp(v, "=?UTF-8?B?", 10) == 0) {
        unsigned acc = 0;
        int bits = 0;
        v += 10;
        for (; *v != '?'; v++) {
            assert_true(*v != '\0' && *v != '\r');
            if (*v == '=') {
                continue;
            }
            assert_true(b64v(*v) >= 0);
            acc = (acc << 6) | (unsigned)b64v(*v);
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                assert_true(k + 1 < cap);
                out[k++] = (char)((acc >> bits) & 0xff);
            }
        }
        assert_int_equal(v[1], '=');
        v += 2;
        if (strncmp(v, "\r\n ", 3) == 0) {
            v += 3;
        }
    }
    assert_true(strncmp(v, "\r\n", 2) == 0);
    out[k] = '\0';
}

/* CRLF only, no line over 998 octets (RFC 5322 2.1.1). */
static void check_lines(const char *raw, size_t len)
{
    size_t col = 0;

    for (size_t i = 0; i < len; i++) {
        if (raw[i] == '\n') {
            assert_true(i > 0 && raw[i - 1] == '\r');
            col = 0;
            continue;
        }
        if (raw[i] == '\r') {
            assert_true(i + 1 < len && raw[i + 1] == '\n');
            continue;
        }
        col++;
        assert_true(col <= 998);
    }
    assert_true(len >= 2 && raw[len - 2] == '\r' && raw[len - 1] == '\n');
}

static void *ctx_default(void)
{
    return plugin_init("smtp://127.0.0.1:1", "https://buurt.example.org/unsubscribe");
}

/* ---- format() cases ------------------------------------------------------------------------- */

/* The time in the reader's own zone, from the host's zone data. */
static void test_local_time(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    c.time_zone = "Europe/Amsterdam";
    struct bb_delivery d = delivery(&n, &c);
    struct parsed p = render(ctx, &d);
    assert_non_null(strstr(p.text, "Wanneer: 2025-11-28 16:31\r\n"));
    parsed_free(&p);
    channel->destroy(ctx);
}

static void test_headers(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct parsed p = render(ctx, &d);
    const char *v;

    if (getenv("BB_SMTP_DUMP") != NULL) { /* to look at: BB_SMTP_DUMP=1 test_smtp_format */
        fwrite(p.raw, 1, p.len, stderr);
    }
    check_lines(p.raw, p.len);
    assert_non_null(strstr(p.raw, "From: \"Buurtpreventie Kerkbuurt\" <buurt@example.org>\r\n"));
    assert_non_null(strstr(p.raw, "\r\nTo: <lezer@example.net>\r\n"));
    assert_non_null(header(p.raw, "Date"));
    assert_non_null(strstr(p.raw, "\r\nMIME-Version: 1.0\r\n"));
    v = header(p.raw, "Message-ID");
    assert_non_null(v);
    assert_true(strncmp(v, "<r.abc.", 7) == 0);
    assert_non_null(strstr(v, "@buurtbus>\r\n"));
    assert_true(strstr(v, "@buurtbus>") - v == 7 + 24);
    v = header(p.raw, "List-Unsubscribe");
    assert_non_null(v);
    assert_true(strncmp(v, "<https://buurt.example.org/unsubscribe?u=", 41) == 0);
    assert_non_null(strstr(p.raw, "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    assert_non_null(strstr(p.raw, "Content-Type: multipart/alternative;\r\n boundary=\"bb-alt-"));
    assert_non_null(strstr(p.raw, "Content-Type: text/plain; charset=UTF-8\r\n"));
    assert_non_null(strstr(p.raw, "Content-Type: text/html; charset=UTF-8\r\n"));
    /* the reader is named only by the address; the user id is nowhere */
    assert_null(strstr(p.raw, USER_ID_STR));
    assert_null(strstr(p.text, USER_ID_STR));
    assert_null(strstr(p.html, USER_ID_STR));
    /* pictogram, title, place, time, media in both parts */
    assert_non_null(strstr(p.text, "\xf0\x9f\x94\xa5 NU BEZIG: Brand in de Kerkstraat"));
    assert_non_null(strstr(p.html, "\xf0\x9f\x94\xa5"));
    assert_non_null(strstr(p.text, "Waar: Kerkbuurt (u173zq)"));
    /* The reader's zone is unknown, which this host puts at UTC+0. */
    assert_non_null(strstr(p.text, "Wanneer: 2025-11-28 15:31\r\n"));
    assert_non_null(strstr(p.text, "Gemeld door: Buurvrouw_K"));
    assert_non_null(strstr(p.text, "Rook uit de schuur achter nummer 12.\r\nBrandweer"));
    assert_non_null(strstr(p.html, "<a href=\"https://media.example.org/r/abc/1.jpg\">"));
    assert_null(strstr(p.html, "javascript:"));
    assert_non_null(strstr(p.html, "lang=\"nl\""));
    parsed_free(&p);
    channel->destroy(ctx);
}

static void test_same_delivery_same_ids(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct parsed a = render(ctx, &d);
    struct parsed b;
    char mida[128];
    char midb[128];
    char ua[256];
    char ub[256];

    d.delivery_id = "r:abc:2:" USER_ID_STR;
    b = render(ctx, &d);
    sscanf(header(a.raw, "Message-ID"), "%127s", mida);
    sscanf(header(b.raw, "Message-ID"), "%127s", midb);
    assert_string_equal(mida, midb);
    sscanf(header(a.raw, "List-Unsubscribe"), "%255s", ua);
    d.recipient = USER_ID + 1;
    d.delivery_id = "r:abc:2:987654322";
    parsed_free(&b);
    b = render(ctx, &d);
    sscanf(header(b.raw, "Message-ID"), "%127s", midb);
    sscanf(header(b.raw, "List-Unsubscribe"), "%255s", ub);
    assert_string_not_equal(mida, midb);
    assert_string_not_equal(ua, ub);
    parsed_free(&a);
    parsed_free(&b);
    channel->destroy(ctx);
}

struct locale_case {
    const char *reader;
    const char *notification;
    const char *expect; /* a phrase only that language has */
    const char *lang;
};

static void test_locales(void **state)
{
    static const struct locale_case cases[] = {
        {"nl", "nl", "Gemeld door", "nl"},    {"en", "nl", "Reported by", "en"},
        {"en-GB", "nl", "Reported by", "en"}, {"", "en", "Reported by", "en"},
        {"fr", "de", "Gemeld door", "nl"},    {"", "", "Gemeld door", "nl"},
        {"nl_BE", "en", "Gemeld door", "nl"},
    };
    void *ctx = ctx_default();

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct bb_notification n = note();
        struct bb_contact c = contact("lezer@example.net", cases[i].reader);
        struct bb_delivery d = delivery(&n, &c);
        struct parsed p;
        char lang[32];

        n.locale = cases[i].notification;
        p = render(ctx, &d);
        assert_non_null(strstr(p.text, cases[i].expect));
        snprintf(lang, sizeof(lang), "lang=\"%s\"", cases[i].lang);
        assert_non_null(strstr(p.html, lang));
        parsed_free(&p);
    }
    channel->destroy(ctx);
}

static void test_anonymous(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct parsed p;

    n.anonymous = 1; /* the author's name is given but must not show */
    p = render(ctx, &d);
    assert_non_null(strstr(p.text, "Gemeld door: een buurtbewoner"));
    assert_non_null(strstr(p.html, "een buurtbewoner"));
    assert_null(strstr(p.raw, "Buurvrouw_K"));
    assert_null(strstr(p.text, "Buurvrouw_K"));
    assert_null(strstr(p.html, "Buurvrouw_K"));
    parsed_free(&p);

    c.locale = "en";
    p = render(ctx, &d);
    assert_non_null(strstr(p.text, "Reported by: a neighbour"));
    parsed_free(&p);
    channel->destroy(ctx);
}

static void test_html_escaping(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct parsed p;

    n.text = "<script>alert('x')</script> & \"meer\"";
    n.title = "Auto <b>open</b>";
    p = render(ctx, &d);
    assert_null(strstr(p.html, "<script>"));
    assert_null(strstr(p.html, "<b>open"));
    assert_non_null(strstr(p.html, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; "
                                   "&quot;meer&quot;"));
    assert_non_null(strstr(p.html, "Auto &lt;b&gt;open&lt;/b&gt;"));
    /* the plain part says it as it is */
    assert_non_null(strstr(p.text, "<script>alert('x')</script>"));
    parsed_free(&p);
    channel->destroy(ctx);
}

static void test_subject_2047(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct parsed p;
    char subj[512];
    const char *v;

    n.title = "Brand in de Kerkstraat \xe2\x80\x94 \xc3\xabxtra lange titel met "
              "veel woorden zodat het onderwerp over meerdere regels gaat\r\nBcc: x@y";
    p = render(ctx, &d);
    v = header(p.raw, "Subject");
    assert_non_null(v);
    assert_true(strncmp(v, "=?UTF-8?B?", 10) == 0);
    subject_decode(v, subj, sizeof(subj));
    assert_string_equal(subj, "\xf0\x9f\x94\xa5 NU BEZIG: Brand in de Kerkstraat \xe2\x80\x94 "
                              "\xc3\xabxtra lange titel met veel woorden zodat het onderwerp "
                              "over meerdere regels gaat  Bcc: x@y");
    /* no header injected (the body may show the title's line break) */
    assert_true(strstr(p.raw, "\r\nBcc:") == NULL ||
                strstr(p.raw, "\r\nBcc:") > strstr(p.raw, "\r\n\r\n"));
    check_lines(p.raw, p.len);
    /* folded: no encoded-word line over 76 */
    for (const char *l = v; l < strstr(v, "\r\nDate:"); l = strstr(l, "\r\n") + 2) {
        assert_true(strstr(l, "\r\n") - l <= 76);
    }
    parsed_free(&p);
    channel->destroy(ctx);
}

static void test_long_lines(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification n = note();
    struct bb_contact c = contact("lezer@example.net", "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct parsed p;
    char *text = malloc(6001);

    assert_non_null(text);
    for (size_t i = 0; i < 6000; i++) {
        text[i] = i % 7 == 6 ? ' ' : i % 50 == 0 ? '.' : 'a';
    }
    text[0] = '.';
    text[6000] = '\0';
    n.text = text;
    p = render(ctx, &d);
    check_lines(p.raw, p.len);
    assert_non_null(strstr(p.text, text));
    parsed_free(&p);
    free(text);
    channel->destroy(ctx);
}

static void test_digest(void **state)
{
    void *ctx = ctx_default();
    struct bb_notification head = note();
    struct bb_notification a = note();
    struct bb_notification b = note();
    struct bb_notification s = note();
    const struct bb_notification *items[3] = {&a, &b, &s};
    struct bb_contact c = contact("lezer@example.net", "en");
    struct bb_delivery d = delivery(&head, &c);
    struct parsed p;
    char subj[256];

    head.kind = BB_KIND_DIGEST;
    head.title = "Weekly overview";
    a.category = 1;
    a.title = "Inbraak Dorpsstraat";
    b.category = 3;
    b.title = "Verdachte auto";
    b.anonymous = 1;
    s.kind = BB_KIND_STATUS;
    s.status = 4;
    s.title = "Brand in de Kerkstraat";
    d.items = items;
    d.nitems = 3;
    d.delivery_id = "d:2025-w48:2:" USER_ID_STR;
    p = render(ctx, &d);
    check_lines(p.raw, p.len);
    subject_decode(header(p.raw, "Subject"), subj, sizeof(subj));
    assert_string_equal(subj, "\xf0\x9f\x93\xac Weekly overview");
    assert_non_null(strstr(p.text, "3 reports"));
    assert_non_null(strstr(p.text, "\xf0\x9f\x8f\xa0 HAPPENING NOW: Inbraak Dorpsstraat"));
    assert_non_null(strstr(p.text, "\xf0\x9f\x9a\x97 HAPPENING NOW: Verdachte auto"));
    assert_non_null(strstr(p.text, "Reported by: a neighbour"));
    assert_non_null(strstr(p.text, "Update: Suspect arrested"));
    assert_non_null(strstr(p.html, "Inbraak Dorpsstraat"));
    assert_non_null(strstr(p.html, "Verdachte auto"));
    assert_null(strstr(p.raw, USER_ID_STR));
    parsed_free(&p);
    channel->destroy(ctx);
}

static void test_bad_address(void **state)
{
    static const char *const bad[] = {"",      "no-at-sign", "a@b\r\nBcc: c@d",
                                      "<a@b>", "a b@c",      "@example.org"};
    void *ctx = ctx_default();
    struct bb_notification n = note();

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct bb_contact c = contact(bad[i], "nl");
        struct bb_delivery d = delivery(&n, &c);
        char *out = NULL;
        size_t len = 0;
        assert_int_not_equal(channel->format(ctx, &d, &out, &len), 0);
        assert_null(out);
    }
    channel->destroy(ctx);
}

static void test_init_checks(void **state)
{
    struct bb_channel_config cfg = {
        .struct_size = sizeof(cfg),
        .instance = "email",
        .value = cfg_value,
        .integer = cfg_integer,
    };
    char err[256];
    void *ctx = plugin_init("smtp://127.0.0.1:1", "");

    channel->destroy(ctx);
    ctx = NULL;
    /* an unsubscribe link needs a key: without one, init refuses */
    for (size_t i = 0; cfg_values[i].name != NULL; i++) {
        if (strcmp(cfg_values[i].name, "unsubscribe_base") == 0) {
            cfg_values[i].value = "https://x.example/u";
        } else if (strcmp(cfg_values[i].name, "unsubscribe_key_file") == 0) {
            cfg_values[i].value = "";
        }
    }
    assert_int_not_equal(channel->init(&host_api, &cfg, &ctx, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "unsubscribe_key_file"));
    for (size_t i = 0; cfg_values[i].name != NULL; i++) {
        if (strcmp(cfg_values[i].name, "url") == 0) {
            cfg_values[i].value = "http://127.0.0.1:1";
        }
    }
    assert_int_not_equal(channel->init(&host_api, &cfg, &ctx, err, sizeof(err)), 0);
}

/* ---- send() against bb-smtp-sink ------------------------------------------------------------ */

#ifdef BB_SMTP_SINK
struct sink {
    pid_t pid;
    int port;
    char dir[64];
};

static void sink_start(struct sink *s)
{
    int fds[2];
    FILE *f;
    char line[128];

    strcpy(s->dir, "/tmp/bb-smtp-test.XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    assert_int_equal(pipe(fds), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(BB_SMTP_SINK, "bb-smtp-sink", "--port", "0", "--maildir", s->dir, "--user", "bb",
              "--password", "geheim", "--reject-rcpt", "gone@", "--fail-rate", "3", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    f = fdopen(fds[0], "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    assert_int_equal(sscanf(line, "listening 127.0.0.1:%d", &s->port), 1);
    fclose(f);
}

static void sink_stop(struct sink *s)
{
    DIR *dir;
    struct dirent *e;
    char path[512];

    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
    dir = opendir(s->dir);
    while (dir != NULL && (e = readdir(dir)) != NULL) {
        if (e->d_name[0] != '.') {
            snprintf(path, sizeof(path), "%s/%s", s->dir, e->d_name);
            unlink(path);
        }
    }
    if (dir != NULL) {
        closedir(dir);
    }
    rmdir(s->dir);
}

struct outcome {
    int calls;
    int status;
    char reason[64];
};

static void on_done(void *token, int status, unsigned retry_after_s, const char *reason)
{
    struct outcome *o = token;

    o->calls++;
    o->status = status;
    snprintf(o->reason, sizeof(o->reason), "%s", reason);
}

static struct outcome send_one(void *ctx, const char *email)
{
    struct bb_notification n = note();
    struct bb_contact c = contact(email, "nl");
    struct bb_delivery d = delivery(&n, &c);
    struct outcome o = {0};

    assert_int_equal(channel->send(ctx, &d, on_done, &o), 0);
    assert_int_equal(o.calls, 1);
    return o;
}

static void test_send(void **state)
{
    struct sink s;
    char url[64];
    char path[512];
    char buf[8192];
    void *ctx;
    struct outcome o;
    FILE *f;
    size_t n;

    sink_start(&s);
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", s.port);
    ctx = plugin_init_auth(url, "https://buurt.example.org/unsubscribe", "bb", "geheim");

    o = send_one(ctx, "lezer@example.net"); /* message 1 */
    assert_int_equal(o.status, BB_SEND_OK);
    o = send_one(ctx, "gone@example.net"); /* refused at RCPT: no DATA */
    assert_int_equal(o.status, BB_SEND_GONE);
    assert_string_equal(o.reason, "smtp_550");
    o = send_one(ctx, "lezer2@example.net"); /* message 2 */
    assert_int_equal(o.status, BB_SEND_OK);
    o = send_one(ctx, "lezer3@example.net"); /* message 3: --fail-rate 3 */
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "smtp_451");

    snprintf(path, sizeof(path), "%s/1.eml", s.dir);
    f = fopen(path, "rb");
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    assert_true(strncmp(buf,
                        "X-Envelope-From: <buurt@example.org>\r\n"
                        "X-Envelope-To: <lezer@example.net>\r\nFrom: ",
                        strlen("X-Envelope-From: <buurt@example.org>\r\n"
                               "X-Envelope-To: <lezer@example.net>\r\nFrom: ")) == 0);
    assert_non_null(strstr(buf, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
    assert_non_null(strstr(buf, "\r\n--bb-alt-"));
    snprintf(path, sizeof(path), "%s/2.eml", s.dir);
    assert_int_equal(access(path, R_OK), 0);
    snprintf(path, sizeof(path), "%s/3.eml", s.dir);
    assert_int_not_equal(access(path, R_OK), 0);
    channel->destroy(ctx);

    /* nobody listening: retry later */
    sink_stop(&s);
    ctx = plugin_init_auth(url, "", "bb", "geheim");
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "curl_7");
    channel->destroy(ctx);
}

static void test_send_bad_password(void **state)
{
    struct sink s;
    char url[64];
    void *ctx;
    struct outcome o;

    sink_start(&s);
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", s.port);
    ctx = plugin_init(url, "");
    /* no username configured: the sink answers MAIL with 530 */
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_RETRY);
    channel->destroy(ctx);
    sink_stop(&s);
}

/* ---- send() over TLS: STARTTLS, smtps://, AUTH --------------------------------------------- */

/* libcurl itself reads neither CURL_CA_BUNDLE nor SSL_CERT_FILE (only the
 * curl tool does): the test CA reaches the plug-in through its ca_file
 * option, as an operator's private CA would. */
static const char *tls_ca_file;

/* A sink with TLS in a fresh directory: the self-signed cert and key
 * (made by the openssl tool), the maildir and the sink's --log. */
struct tls_sink {
    struct sink s;
    char cert[128];
    char key[128];
    char log[128];
};

/* The TLS sink of the running case (static storage in the case), stopped
 * by tls_teardown if an assertion ends the case early (else the sink's
 * inherited stderr keeps ctest waiting). */
static struct tls_sink *tls_running;

static void tls_sink_stop(struct tls_sink *t)
{
    sink_stop(&t->s);
    tls_running = NULL;
}

static int tls_teardown(void **state)
{
    if (tls_running != NULL) {
        tls_sink_stop(tls_running);
    }
    return 0;
}

static int run_wait(const char *path, char *const argv[])
{
    int status = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 2);
        }
        execvp(path, argv);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* mode: "starttls" (offered and required), "smtps". Skips the case when
 * no openssl tool is installed. */
static void tls_sink_start(struct tls_sink *t, const char *mode)
{
    struct sink *s = &t->s;
    int fds[2];
    FILE *f;
    char line[128];

    strcpy(s->dir, "/tmp/bb-smtp-tls.XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(t->cert, sizeof(t->cert), "%s/cert.pem", s->dir);
    snprintf(t->key, sizeof(t->key), "%s/key.pem", s->dir);
    snprintf(t->log, sizeof(t->log), "%s/sink.log", s->dir);
    {
        char *const req[] = {
            "openssl",  "req",
            "-x509",    "-newkey",
            "rsa:2048", "-nodes",
            "-subj",    "/CN=localhost",
            "-addext",  "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days",    "1",
            "-keyout",  t->key,
            "-out",     t->cert,
            NULL,
        };
        if (run_wait("openssl", req) != 0) {
            rmdir(s->dir);
            skip();
        }
    }
    tls_ca_file = t->cert;
    assert_int_equal(pipe(fds), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(BB_SMTP_SINK, "bb-smtp-sink", "--port", "0", "--maildir", s->dir, "--log", t->log,
              "--tls-cert", t->cert, "--tls-key", t->key, "--auth", "bb:geheim",
              strcmp(mode, "smtps") == 0 ? "--smtps" : "--require-tls", (char *)NULL);
        _exit(127);
    }
    tls_running = t;
    close(fds[1]);
    f = fdopen(fds[0], "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof(line), f));
    assert_int_equal(sscanf(line, "listening 127.0.0.1:%d", &s->port), 1);
    fclose(f);
}

/* The plug-in as configured by an operator for a TLS server: url, AUTH
 * user/password (NULL: none), starttls; trusted: whether it trusts the
 * test CA (ca_file). Returns init()'s result, the message in err. */
static int tls_init(const char *url, const char *user, const char *pass, bool starttls,
                    bool trusted, void **out, char *err, size_t errlen)
{
    struct bb_channel_config cfg = {
        .struct_size = sizeof(cfg),
        .instance = "email",
        .value = cfg_value,
        .integer = cfg_integer,
    };
    size_t k = 0;

    for (const struct bb_channel_option *o = channel->options; o->name != NULL; o++) {
        const char *v = o->def;
        if (strcmp(o->name, "url") == 0) {
            v = url;
        } else if (strcmp(o->name, "from") == 0) {
            v = "buurt@example.org";
        } else if (strcmp(o->name, "username") == 0 && user != NULL) {
            v = user;
        } else if (strcmp(o->name, "password_file") == 0 && pass != NULL) {
            v = pass;
        } else if (strcmp(o->name, "starttls") == 0) {
            v = starttls ? "true" : "false";
        } else if (strcmp(o->name, "ca_file") == 0 && trusted) {
            v = tls_ca_file;
        } else if (strcmp(o->name, "timeout") == 0) {
            v = "5s";
        }
        assert_true(k < 15);
        cfg_values[k].name = o->name;
        cfg_values[k].value = v;
        k++;
    }
    cfg_values[k].name = NULL;
    *out = NULL;
    return channel->init(&host_api, &cfg, out, err, errlen);
}

static void *plugin_init_tls(const char *url, const char *user, const char *pass, bool starttls,
                             bool trusted)
{
    char err[256] = "";
    void *ctx = NULL;
    assert_int_equal(tls_init(url, user, pass, starttls, trusted, &ctx, err, sizeof(err)), 0);
    assert_non_null(ctx);
    return ctx;
}

/* A password never goes to a remote server in clear text: refused at init. */
static void test_auth_needs_tls(void **state)
{
    char err[256] = "";
    void *ctx = NULL;
    assert_int_not_equal(tls_init("smtp://mail.example.org:25", "bb", "secret", false, false,
                                  &ctx, err, sizeof(err)),
                         0);
    assert_null(ctx);
    assert_non_null(strstr(err, "clear text"));
    assert_int_equal(tls_init("smtp://mail.example.org:587", "bb", "secret", true, false, &ctx,
                              err, sizeof(err)),
                     0);
    channel->destroy(ctx);
    assert_int_equal(tls_init("smtps://mail.example.org:465", "bb", "secret", false, false, &ctx,
                              err, sizeof(err)),
                     0);
    channel->destroy(ctx);
}

/* The sink's --log line for message n, "" when there is none. */
static void tls_sink_log_line(const struct tls_sink *t, int n, char *out, size_t cap)
{
    char want[32];
    char line[256];
    FILE *f = fopen(t->log, "r");

    out[0] = '\0';
    snprintf(want, sizeof(want), "message=%d ", n);
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, want, strlen(want)) == 0) {
            snprintf(out, cap, "%s", line);
        }
    }
    if (f != NULL) {
        fclose(f);
    }
}

static bool maildir_has(const struct sink *s, int n)
{
    char path[512];

    snprintf(path, sizeof(path), "%s/%d.eml", s->dir, n);
    return access(path, R_OK) == 0;
}

/* STARTTLS required by the sink, AUTH inside TLS: delivered, and the sink
 * saw a TLS session with user bb. */
static void test_send_starttls_auth(void **state)
{
    static struct tls_sink t; /* static: tls_teardown may stop it after the case */
    char url[64];
    char line[256];
    void *ctx;
    struct outcome o;

    tls_sink_start(&t, "starttls");
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", t.s.port);
    ctx = plugin_init_tls(url, "bb", "geheim", true, true);
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_OK);
    assert_string_equal(o.reason, "ok");
    o = send_one(ctx, "lezer2@example.net");
    assert_int_equal(o.status, BB_SEND_OK);
    channel->destroy(ctx);

    assert_true(maildir_has(&t.s, 1));
    assert_true(maildir_has(&t.s, 2));
    tls_sink_log_line(&t, 1, line, sizeof(line));
    assert_non_null(strstr(line, " tls=TLSv1."));
    assert_non_null(strstr(line, " user=bb "));
    tls_sink_log_line(&t, 2, line, sizeof(line));
    assert_non_null(strstr(line, " tls=TLSv1."));
    assert_non_null(strstr(line, " user=bb "));
    tls_sink_stop(&t);
}

/* smtps:// (TLS from the first byte), AUTH inside it: delivered over TLS. */
static void test_send_smtps(void **state)
{
    static struct tls_sink t; /* static: tls_teardown may stop it after the case */
    char url[64];
    char line[256];
    void *ctx;
    struct outcome o;

    tls_sink_start(&t, "smtps");
    snprintf(url, sizeof(url), "smtps://127.0.0.1:%d", t.s.port);
    ctx = plugin_init_tls(url, "bb", "geheim", false, true);
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_OK);
    channel->destroy(ctx);

    assert_true(maildir_has(&t.s, 1));
    tls_sink_log_line(&t, 1, line, sizeof(line));
    assert_non_null(strstr(line, " tls=TLSv1."));
    assert_non_null(strstr(line, " user=bb "));
    tls_sink_stop(&t);
}

/* A wrong password inside TLS: the sink answers 535; the plug-in maps
 * that to retry (smtp.c: the operator's credentials, not the message,
 * are wrong, so the delivery waits for a fixed config) with the reason
 * smtp_535. Nothing is delivered. */
static void test_send_tls_wrong_password(void **state)
{
    static struct tls_sink t; /* static: tls_teardown may stop it after the case */
    char url[64];
    char line[256];
    void *ctx;
    struct outcome o;

    tls_sink_start(&t, "starttls");
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", t.s.port);
    ctx = plugin_init_tls(url, "bb", "fout", true, true);
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "smtp_535");
    channel->destroy(ctx);

    assert_false(maildir_has(&t.s, 1));
    tls_sink_log_line(&t, 1, line, sizeof(line));
    assert_string_equal(line, "");
    tls_sink_stop(&t);
}

/* The sink requires STARTTLS but the plug-in is configured without it: the
 * sink offers no AUTH in plaintext, libcurl sends none, MAIL is refused
 * with 530 and nothing goes out in plaintext. */
static void test_send_tls_required_plain_refused(void **state)
{
    static struct tls_sink t; /* static: tls_teardown may stop it after the case */
    char url[64];
    char line[256];
    void *ctx;
    struct outcome o;

    tls_sink_start(&t, "starttls");
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", t.s.port);
    ctx = plugin_init_tls(url, "bb", "geheim", false, true);
    o = send_one(ctx, "lezer@example.net");
    assert_int_not_equal(o.status, BB_SEND_OK);
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "smtp_530");
    channel->destroy(ctx);

    assert_false(maildir_has(&t.s, 1));
    tls_sink_log_line(&t, 1, line, sizeof(line));
    assert_string_equal(line, "");
    tls_sink_stop(&t);
}

/* starttls configured but the server offers no STARTTLS (the plain sink
 * answers it with 454): libcurl gives up before MAIL (CURLE_USE_SSL_FAILED,
 * 64) instead of sending the message and the password in plaintext. */
static void test_send_starttls_not_offered(void **state)
{
    struct sink s;
    char url[64];
    void *ctx;
    struct outcome o;

    sink_start(&s);
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", s.port);
    ctx = plugin_init_tls(url, "bb", "geheim", true, false);
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "curl_64");
    channel->destroy(ctx);
    assert_false(maildir_has(&s, 1));
    sink_stop(&s);
}

/* The plug-in verifies the server: a certificate no trusted CA signed is
 * refused before anything is sent (libcurl's CURLE_PEER_FAILED_VERIFICATION,
 * 60), on STARTTLS and on smtps:// alike. */
static void test_send_tls_untrusted_cert(void **state)
{
    static struct tls_sink t; /* static: tls_teardown may stop it after the case */
    char url[64];
    void *ctx;
    struct outcome o;

    tls_sink_start(&t, "starttls");
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", t.s.port);
    ctx = plugin_init_tls(url, "bb", "geheim", true, false);
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "curl_60");
    channel->destroy(ctx);
    assert_false(maildir_has(&t.s, 1));
    tls_sink_stop(&t);

    tls_sink_start(&t, "smtps");
    snprintf(url, sizeof(url), "smtps://127.0.0.1:%d", t.s.port);
    ctx = plugin_init_tls(url, "bb", "geheim", false, false);
    o = send_one(ctx, "lezer@example.net");
    assert_int_equal(o.status, BB_SEND_RETRY);
    assert_string_equal(o.reason, "curl_60");
    channel->destroy(ctx);
    assert_false(maildir_has(&t.s, 1));
    tls_sink_stop(&t);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_local_time),
        cmocka_unit_test(test_auth_needs_tls),       cmocka_unit_test(test_same_delivery_same_ids),
        cmocka_unit_test(test_locales),       cmocka_unit_test(test_anonymous),
        cmocka_unit_test(test_html_escaping), cmocka_unit_test(test_subject_2047),
        cmocka_unit_test(test_long_lines),    cmocka_unit_test(test_digest),
        cmocka_unit_test(test_bad_address),   cmocka_unit_test(test_init_checks),
#ifdef BB_SMTP_SINK
        cmocka_unit_test(test_send),          cmocka_unit_test(test_send_bad_password),
        cmocka_unit_test_teardown(test_send_starttls_auth, tls_teardown),
        cmocka_unit_test_teardown(test_send_smtps, tls_teardown),
        cmocka_unit_test_teardown(test_send_tls_wrong_password, tls_teardown),
        cmocka_unit_test_teardown(test_send_tls_required_plain_refused, tls_teardown),
        cmocka_unit_test_teardown(test_send_tls_untrusted_cert, tls_teardown),
        cmocka_unit_test(test_send_starttls_not_offered),
#endif
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
