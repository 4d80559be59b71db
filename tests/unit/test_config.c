/* Unit tests for common/config.c: every option type, units, bounds, quoting,
 * comments, error messages with file:line, secret files, and dump -> load
 * round trips. Single-threaded; files live in a private temporary directory. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bb_err.h"
#include "config.h"

struct cfg {
    int64_t port;
    int64_t workers;
    bool daemonize;
    bool tls;
    char *redis_host;
    char *motd;
    char *note;
    int64_t redis_timeout;
    int64_t retry_max;
    int64_t max_message;
    int64_t queue_limit;
    char *redis_password;
};

#define OPT(name, type, field, def, min, max, help)                                                \
    {                                                                                              \
        name, type, offsetof(struct cfg, field), def, min, max, help                               \
    }

static const struct bb_opt opts[] = {
    OPT("port", BB_OPT_INT, port, "6379", 1, 65535, "TCP port to listen on"),
    OPT("workers", BB_OPT_INT, workers, "-1", 0, 0, "worker threads, -1 = one per CPU"),
    OPT("daemonize", BB_OPT_BOOL, daemonize, "no", 0, 0, "run in the background"),
    OPT("tls", BB_OPT_BOOL, tls, NULL, 0, 0, "use TLS towards Redis"),
    OPT("redis_host", BB_OPT_STRING, redis_host, "127.0.0.1", 0, 0, "Redis host"),
    OPT("motd", BB_OPT_STRING, motd, "", 0, 0, "message of the day"),
    OPT("note", BB_OPT_STRING, note, NULL, 0, 0, NULL),
    OPT("redis_timeout", BB_OPT_DURATION_MS, redis_timeout, "500ms", 1, 60000,
        "Redis command timeout"),
    OPT("retry_max", BB_OPT_DURATION_MS, retry_max, "1h", 0, 0, "longest retry delay"),
    OPT("max_message", BB_OPT_BYTES, max_message, "64kb", 1, 16 * 1024 * 1024,
        "largest notification accepted"),
    OPT("queue_limit", BB_OPT_BYTES, queue_limit, NULL, 0, 0, "per-worker queue, 0 = none"),
    OPT("redis_password_file", BB_OPT_SECRET_FILE, redis_password, NULL, 0, 0,
        "file holding the Redis password"),
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static char tmpdir[64];
static char errbuf[512];

/* ---- helpers ----------------------------------------------------------- */

static int group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/bb-test-config-XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int group_teardown(void **state)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes content to tmpdir/name; returns the path in a static-per-call buffer. */
static const char *write_file(const char *name, const char *content)
{
    static char paths[4][256];
    static int next;
    char *path = paths[next++ % 4];
    FILE *f;

    snprintf(path, 256, "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(content, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void cfg_defaults(struct cfg *c)
{
    memset(c, 0xAB, sizeof(*c)); /* defaults must not read what was there */
    errbuf[0] = '\0';
    if (bb_config_defaults(opts, NOPTS, c, errbuf, sizeof(errbuf)) != 0) {
        fail_msg("defaults: %s", errbuf);
    }
}

static void cfg_load(struct cfg *c, const char *name, const char *content)
{
    const char *path = write_file(name, content);

    errbuf[0] = '\0';
    if (bb_config_load_file(opts, NOPTS, c, path, errbuf, sizeof(errbuf)) != 0) {
        fail_msg("load %s: %s", name, errbuf);
    }
}

static void cfg_free(struct cfg *c)
{
    bb_config_free(opts, NOPTS, c);
}

/* Loads content expecting failure; the message must contain want. */
static void expect_load_error(const char *content, const char *want)
{
    struct cfg c;
    const char *path = write_file("bad.conf", content);
    int rc;

    cfg_defaults(&c);
    errbuf[0] = '\0';
    rc = bb_config_load_file(opts, NOPTS, &c, path, errbuf, sizeof(errbuf));
    if (rc != BB_ECONFIG || strstr(errbuf, want) == NULL) {
        fail_msg("content [%s]: rc %d, error [%s], wanted [%s]", content, rc, errbuf, want);
    }
    if (strncmp(errbuf, path, strlen(path)) != 0) {
        fail_msg("error [%s] does not start with the file name", errbuf);
    }
    cfg_free(&c);
}

/* ---- tests ------------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    assert_int_equal(c.port, 6379);
    assert_int_equal(c.workers, -1);
    assert_false(c.daemonize);
    assert_false(c.tls);
    assert_string_equal(c.redis_host, "127.0.0.1");
    assert_string_equal(c.motd, "");
    assert_null(c.note);
    assert_int_equal(c.redis_timeout, 500);
    assert_int_equal(c.retry_max, 3600 * 1000);
    assert_int_equal(c.max_message, 64 * 1024);
    assert_int_equal(c.queue_limit, 0);
    assert_null(c.redis_password);
    cfg_free(&c);
    assert_null(c.redis_host);
    assert_null(c.motd);
}

static void test_load_every_type(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    cfg_load(&c, "all.conf",
             "# buurtbus broker\n"
             "\n"
             "port 7000\n"
             "workers=4\n"
             "  daemonize   =   yes   # spaces everywhere\n"
             "\ttls\ttrue\n"
             "redis_host redis.internal\n"
             "motd \"Welkom in de buurt # geen commentaar\"  # wel commentaar\n"
             "note \"\"\n"
             "redis_timeout 2s\n"
             "retry_max = 5m\n"
             "max_message 1mb\n"
             "queue_limit 10k\n");
    assert_int_equal(c.port, 7000);
    assert_int_equal(c.workers, 4);
    assert_true(c.daemonize);
    assert_true(c.tls);
    assert_string_equal(c.redis_host, "redis.internal");
    assert_string_equal(c.motd, "Welkom in de buurt # geen commentaar");
    assert_non_null(c.note);
    assert_string_equal(c.note, "");
    assert_int_equal(c.redis_timeout, 2000);
    assert_int_equal(c.retry_max, 300000);
    assert_int_equal(c.max_message, 1024 * 1024);
    assert_int_equal(c.queue_limit, 10000);
    cfg_free(&c);
}

static void test_quoting_and_comments(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    cfg_load(&c, "quotes.conf",
             "   # indented comment\n"
             "#port 1\n"
             "redis_host = \"a \\\"quoted\\\" \\\\ path\"\n"
             "motd host#1\n"
             "note \"  padded\t\"\n"
             "port 1234 # trailing comment\n");
    assert_string_equal(c.redis_host, "a \"quoted\" \\ path");
    assert_string_equal(c.motd, "host#1"); /* '#' only starts a comment after a blank */
    assert_string_equal(c.note, "  padded\t");
    assert_int_equal(c.port, 1234);
    cfg_free(&c);
}

static void test_later_lines_override(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    cfg_load(&c, "override.conf",
             "redis_host first\nport 1\nredis_host second\nport 2\nredis_host third\n");
    assert_string_equal(c.redis_host, "third");
    assert_int_equal(c.port, 2);
    /* A second file over the first one's values. */
    cfg_load(&c, "override2.conf", "redis_host fourth\n");
    assert_string_equal(c.redis_host, "fourth");
    assert_int_equal(c.port, 2);
    cfg_free(&c);
}

static void test_crlf_and_bom(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    cfg_load(&c, "dos.conf", "\xEF\xBB\xBFport 4321\r\nredis_host \"dos\"\r\n\r\n");
    assert_int_equal(c.port, 4321);
    assert_string_equal(c.redis_host, "dos");
    cfg_free(&c);
}

static void test_parse_duration(void **state)
{
    static const struct {
        const char *s;
        int rc;
        int64_t v;
    } cases[] = {
        {"0", 0, 0},
        {"500", 0, 500},
        {"500ms", 0, 500},
        {"10MS", 0, 10},
        {"5s", 0, 5000},
        {"5S", 0, 5000},
        {"2m", 0, 120000},
        {"1h", 0, 3600000},
        {"1d", 0, 86400000},
        {"007s", 0, 7000},
        {"9223372036854775807", 0, INT64_MAX},
        {"9223372036854775807ms", 0, INT64_MAX},
        {"106751991167d", 0, 106751991167LL * 86400000},
        {"9223372036854775808", BB_EINVAL, 0},
        {"9223372036854775807s", BB_EINVAL, 0},
        {"106751991168d", BB_EINVAL, 0},
        {"99999999999999999999999ms", BB_EINVAL, 0},
        {"", BB_EINVAL, 0},
        {"s", BB_EINVAL, 0},
        {"-5s", BB_EINVAL, 0},
        {"+5s", BB_EINVAL, 0},
        {" 5s", BB_EINVAL, 0},
        {"5s ", BB_EINVAL, 0},
        {"5 s", BB_EINVAL, 0},
        {"1.5s", BB_EINVAL, 0},
        {"1e3", BB_EINVAL, 0},
        {"5sec", BB_EINVAL, 0},
        {"5x", BB_EINVAL, 0},
        {"5w", BB_EINVAL, 0},
        {"soon", BB_EINVAL, 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t v = -42;
        int rc = bb_parse_duration_ms(cases[i].s, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].v) || (rc != 0 && v != -42)) {
            fail_msg("duration '%s': rc %d value %lld", cases[i].s, rc, (long long)v);
        }
    }
    assert_int_equal(bb_parse_duration_ms(NULL, &(int64_t){0}), BB_EINVAL);
}

static void test_parse_bytes(void **state)
{
    static const struct {
        const char *s;
        int rc;
        int64_t v;
    } cases[] = {
        {"0", 0, 0},
        {"512", 0, 512},
        {"1k", 0, 1000},
        {"1K", 0, 1000},
        {"1kb", 0, 1024},
        {"1KB", 0, 1024},
        {"1kB", 0, 1024},
        {"64kb", 0, 65536},
        {"1m", 0, 1000000},
        {"1mb", 0, 1048576},
        {"16MB", 0, 16777216},
        {"1g", 0, 1000000000},
        {"1gb", 0, 1073741824},
        {"2GB", 0, 2147483648LL},
        {"8589934591gb", 0, 8589934591LL * 1073741824},
        {"8589934592gb", BB_EINVAL, 0},
        {"9223372036854775808", BB_EINVAL, 0},
        {"", BB_EINVAL, 0},
        {"kb", BB_EINVAL, 0},
        {"-1", BB_EINVAL, 0},
        {"-1kb", BB_EINVAL, 0},
        {"1 kb", BB_EINVAL, 0},
        {"1kib", BB_EINVAL, 0},
        {"1t", BB_EINVAL, 0},
        {"1b", BB_EINVAL, 0},
        {"1.5mb", BB_EINVAL, 0},
        {"0x10", BB_EINVAL, 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t v = -42;
        int rc = bb_parse_bytes(cases[i].s, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].v) || (rc != 0 && v != -42)) {
            fail_msg("bytes '%s': rc %d value %lld", cases[i].s, rc, (long long)v);
        }
    }
}

static void test_parse_bool(void **state)
{
    static const struct {
        const char *s;
        int rc;
        int v;
    } cases[] = {
        {"yes", 0, 1},
        {"YES", 0, 1},
        {"true", 0, 1},
        {"True", 0, 1},
        {"on", 0, 1},
        {"1", 0, 1},
        {"no", 0, 0},
        {"No", 0, 0},
        {"false", 0, 0},
        {"off", 0, 0},
        {"OFF", 0, 0},
        {"0", 0, 0},
        {"", BB_EINVAL, 0},
        {"y", BB_EINVAL, 0},
        {"2", BB_EINVAL, 0},
        {"yes ", BB_EINVAL, 0},
        {"enabled", BB_EINVAL, 0},
        {"01", BB_EINVAL, 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int v = -1;
        int rc = bb_parse_bool(cases[i].s, &v);
        if (rc != cases[i].rc || (rc == 0 && v != cases[i].v)) {
            fail_msg("bool '%s': rc %d value %d", cases[i].s, rc, v);
        }
    }
}

static void test_bounds(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    cfg_load(&c, "edge.conf", "port 1\nredis_timeout 1ms\nmax_message 16mb\n");
    assert_int_equal(c.port, 1);
    assert_int_equal(c.redis_timeout, 1);
    assert_int_equal(c.max_message, 16 * 1024 * 1024);
    cfg_load(&c, "edge2.conf", "port 65535\nredis_timeout 1m\nmax_message 1\n");
    assert_int_equal(c.port, 65535);
    assert_int_equal(c.redis_timeout, 60000);
    cfg_free(&c);

    expect_load_error("port 0\n", ":1: port: 0 is out of range, expected 1 to 65535");
    expect_load_error("\nport 65536\n", ":2: port: 65536 is out of range");
    expect_load_error("redis_timeout 0\n", "redis_timeout: 0 is out of range, expected 1ms to 1m");
    expect_load_error("redis_timeout 61s\n", "redis_timeout: 61s is out of range");
    expect_load_error("max_message 17mb\n",
                      "max_message: 17mb is out of range, expected 1 to 16mb");
    expect_load_error("max_message 0\n", "max_message: 0 is out of range");
    /* No bounds: the whole int64 range. */
    cfg_defaults(&c);
    cfg_load(&c, "wide.conf", "workers -9223372036854775808\nretry_max 9223372036854775807\n");
    assert_true(c.workers == INT64_MIN);
    assert_true(c.retry_max == INT64_MAX);
    cfg_free(&c);
}

static void test_errors_name_file_and_line(void **state)
{
    static const struct {
        const char *content;
        const char *want;
    } cases[] = {
        {"port 1\n\n# ok so far\nbogus 3\n", ":4: unknown option 'bogus'"},
        {"prot 6379\n", ":1: unknown option 'prot' (did you mean 'port'?)"},
        {"redis_timeout soon\n",
         ":1: redis_timeout: expected a duration like 500ms or 5s, got 'soon'"},
        {"redis_timeout -5s\n", ":1: redis_timeout: must not be negative, got '-5s'"},
        {"max_message -1\n", "max_message: must not be negative"},
        {"max_message lots\n", "max_message: expected a size like 64kb or 16mb, got 'lots'"},
        {"max_message 99999999999gb\n", "max_message: '99999999999gb' is too large"},
        {"port 99999999999999999999\n", "port: '99999999999999999999' does not fit in 64 bits"},
        {"port abc\n", "port: expected an integer, got 'abc'"},
        {"port 1.5\n", "port: expected an integer, got '1.5'"},
        {"port 0x10\n", "expected an integer"},
        {"port +1\n", "expected an integer"},
        {"port\n", ":1: port: missing value"},
        {"port =\n", ":1: port: missing value"},
        {"port # nothing\n", ":1: port: missing value"},
        {"port=#\n", "port: expected an integer, got '#'"},
        {"daemonize maybe\n", "daemonize: expected yes or no, got 'maybe'"},
        {"redis_host \"unterminated\n", ":1: unterminated quoted value"},
        {"redis_host \"a\" b\n", ":1: unexpected text after the value"},
        {"redis_host a b\n", "quote values that contain spaces"},
        {"redis_host \"a\\nb\"\n", "unknown escape"},
        {"!port 1\n", ":1: expected an option name"},
        {"\"port\" 1\n", ":1: expected an option name"},
        {"po!rt 1\n", ":1: invalid character in option name"},
        {"redis_host \"tab\x01\"\n", "redis_host: control characters are not allowed"},
        {"tls yes\ntls yes\nport 1\nport 2\nport x\n", ":5: port:"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        expect_load_error(cases[i].content, cases[i].want);
    }
}

static void test_unreadable_file(void **state)
{
    struct cfg c;
    char path[128];

    cfg_defaults(&c);
    snprintf(path, sizeof(path), "%s/does-not-exist.conf", tmpdir);
    assert_int_equal(bb_config_load_file(opts, NOPTS, &c, path, errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_non_null(strstr(errbuf, path));
    assert_non_null(strstr(errbuf, "cannot open"));
    /* A directory opens but cannot be read. */
    assert_int_equal(bb_config_load_file(opts, NOPTS, &c, tmpdir, errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_non_null(strstr(errbuf, tmpdir));
    /* A tiny error buffer is still NUL-terminated. */
    assert_int_equal(bb_config_load_file(opts, NOPTS, &c, path, errbuf, 8), BB_ECONFIG);
    assert_int_equal(strlen(errbuf), 7);
    assert_int_equal(bb_config_load_file(opts, NOPTS, &c, path, NULL, 0), BB_ECONFIG);
    cfg_free(&c);
}

static void test_secret_file(void **state)
{
    struct cfg c;
    char conf[512], abs[300];
    const char *secret_path;
    char *dump = NULL;
    size_t dumplen = 0;
    FILE *f;

    write_file("redis.pass", "hunter2-Zw8q\nsecond line is ignored\n");
    cfg_defaults(&c);
    /* Relative to the config file's directory. */
    cfg_load(&c, "secret.conf", "redis_password_file redis.pass\n");
    assert_string_equal(c.redis_password, "hunter2-Zw8q");

    /* From a stream (the worker reads a copy of its file): relative to the
     * directory of the path it is named by, not of the copy. */
    {
        char named[300];
        snprintf(named, sizeof(named), "%s/streamed.conf", tmpdir);
        FILE *mf = fmemopen((void *)"redis_password_file redis.pass\n", 31, "r");
        assert_non_null(mf);
        cfg_free(&c);
        cfg_defaults(&c);
        assert_int_equal(bb_config_load_stream(opts, NOPTS, &c, mf, named, errbuf, sizeof(errbuf)),
                         0);
        fclose(mf);
        assert_string_equal(c.redis_password, "hunter2-Zw8q");
    }

    /* CRLF, no final newline, absolute path, via bb_config_set. */
    secret_path = write_file("crlf.pass", "s3cr3t\r\n");
    snprintf(abs, sizeof(abs), "%s", secret_path);
    assert_int_equal(
        bb_config_set(opts, NOPTS, &c, "redis_password_file", abs, errbuf, sizeof(errbuf)), 0);
    assert_string_equal(c.redis_password, "s3cr3t");
    write_file("nonl.pass", "no-newline");
    snprintf(conf, sizeof(conf), "redis_password_file \"%s/nonl.pass\"\n", tmpdir);
    cfg_load(&c, "secret2.conf", conf);
    assert_string_equal(c.redis_password, "no-newline");

    /* Never printed by dump. */
    f = open_memstream(&dump, &dumplen);
    assert_non_null(f);
    bb_config_dump(opts, NOPTS, &c, f);
    fclose(f);
    assert_null(strstr(dump, "no-newline"));
    assert_non_null(strstr(dump, "# redis_password_file <hidden>\n"));
    free(dump);

    /* Errors name the file, never its contents. */
    expect_load_error("redis_password_file missing.pass\n",
                      ":1: redis_password_file: cannot open secret file");
    write_file("empty.pass", "");
    expect_load_error("redis_password_file empty.pass\n", "is empty");
    write_file("emptyline.pass", "\nhunter3\n");
    expect_load_error("redis_password_file emptyline.pass\n", "is empty");
    assert_null(strstr(errbuf, "hunter3"));
    expect_load_error("redis_password_file \"\"\n", "expected the name of a file");
    expect_load_error("redis_password_file .\n", "not a regular file");
    cfg_free(&c);
    assert_null(c.redis_password);
}

static void test_dump_roundtrips(void **state)
{
    struct cfg a, b;
    char *dump1 = NULL, *dump2 = NULL;
    size_t len1 = 0, len2 = 0;
    FILE *f;

    cfg_defaults(&a);
    write_file("rt.pass", "pw\n");
    cfg_load(&a, "rt.conf",
             "port 8080\nworkers 0\ndaemonize yes\ntls on\n"
             "redis_host \"host with spaces # and hash\"\n"
             "motd \"she said \\\"hoi\\\" \\\\ bye\"\n"
             "redis_timeout 1500\nretry_max 90s\n"
             "max_message 3000\nqueue_limit 2mb\n"
             "redis_password_file rt.pass\n");

    f = open_memstream(&dump1, &len1);
    assert_non_null(f);
    bb_config_dump(opts, NOPTS, &a, f);
    fclose(f);
    assert_non_null(strstr(dump1, "# TCP port to listen on\nport 8080\n"));
    assert_non_null(strstr(dump1, "redis_timeout 1500ms\n"));
    assert_non_null(strstr(dump1, "retry_max 90s\n"));
    assert_non_null(strstr(dump1, "max_message 3k\n"));
    assert_non_null(strstr(dump1, "queue_limit 2mb\n"));
    assert_non_null(strstr(dump1, "daemonize yes\n"));
    assert_non_null(strstr(dump1, "# note (not set)\n"));
    assert_non_null(strstr(dump1, "motd \"she said \\\"hoi\\\" \\\\ bye\"\n"));

    cfg_defaults(&b);
    cfg_load(&b, "dumped.conf", dump1);
    assert_int_equal(b.port, a.port);
    assert_int_equal(b.workers, a.workers);
    assert_int_equal(b.daemonize, a.daemonize);
    assert_int_equal(b.tls, a.tls);
    assert_string_equal(b.redis_host, a.redis_host);
    assert_string_equal(b.motd, a.motd);
    assert_null(b.note);
    assert_int_equal(b.redis_timeout, a.redis_timeout);
    assert_int_equal(b.retry_max, a.retry_max);
    assert_int_equal(b.max_message, a.max_message);
    assert_int_equal(b.queue_limit, a.queue_limit);
    assert_null(b.redis_password); /* the file name is not kept: left commented out */

    /* The defaults round-trip too, and dumping again is stable. */
    cfg_free(&b);
    cfg_defaults(&b);
    f = open_memstream(&dump2, &len2);
    bb_config_dump(opts, NOPTS, &b, f);
    fclose(f);
    cfg_free(&b);
    cfg_defaults(&b);
    cfg_load(&b, "dumped2.conf", dump2);
    assert_int_equal(b.retry_max, 3600 * 1000);
    assert_non_null(strstr(dump2, "retry_max 1h\n"));
    assert_non_null(strstr(dump2, "max_message 64kb\n"));
    assert_non_null(strstr(dump2, "motd \"\"\n"));
    assert_non_null(strstr(dump2, "workers -1\n"));
    free(dump1);
    free(dump2);
    cfg_free(&a);
    cfg_free(&b);
}

static void test_set(void **state)
{
    struct cfg c;

    cfg_defaults(&c);
    assert_int_equal(bb_config_set(opts, NOPTS, &c, "port", "8080", errbuf, sizeof(errbuf)), 0);
    assert_int_equal(c.port, 8080);
    assert_int_equal(bb_config_set(opts, NOPTS, &c, "redis_timeout", "3s", errbuf, sizeof(errbuf)),
                     0);
    assert_int_equal(c.redis_timeout, 3000);
    assert_int_equal(bb_config_set(opts, NOPTS, &c, "motd", "", errbuf, sizeof(errbuf)), 0);
    assert_string_equal(c.motd, "");
    assert_int_equal(
        bb_config_set(opts, NOPTS, &c, "motd", "# not a comment here", errbuf, sizeof(errbuf)), 0);
    assert_string_equal(c.motd, "# not a comment here");

    assert_int_equal(bb_config_set(opts, NOPTS, &c, "port", "x", errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_string_equal(errbuf, "port: expected an integer, got 'x'");
    assert_int_equal(c.port, 8080); /* unchanged on error */
    assert_int_equal(bb_config_set(opts, NOPTS, &c, "bogus_option", "1", errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_string_equal(errbuf, "unknown option 'bogus_option'");
    assert_int_equal(bb_config_set(opts, NOPTS, &c, "redis_host", "a\nb", errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_string_equal(c.redis_host, "127.0.0.1");
    assert_int_equal(bb_config_set(opts, NOPTS, &c, "port", NULL, errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    cfg_free(&c);
    cfg_free(&c); /* idempotent */
}

static void test_bad_tables(void **state)
{
    struct cfg c;
    static const struct bb_opt bad_default[] = {
        OPT("port", BB_OPT_INT, port, "6379", 1, 65535, NULL),
        OPT("redis_host", BB_OPT_STRING, redis_host, "h", 0, 0, NULL),
        OPT("redis_timeout", BB_OPT_DURATION_MS, redis_timeout, "five", 0, 0, NULL),
    };
    static const struct bb_opt out_of_bounds[] = {
        OPT("port", BB_OPT_INT, port, "0", 1, 65535, NULL),
    };
    static const struct bb_opt twice[] = {
        OPT("port", BB_OPT_INT, port, NULL, 0, 0, NULL),
        OPT("port", BB_OPT_INT, workers, NULL, 0, 0, NULL),
    };

    memset(&c, 0xAB, sizeof(c));
    assert_int_equal(bb_config_defaults(bad_default, 3, &c, errbuf, sizeof(errbuf)), BB_ECONFIG);
    assert_string_equal(errbuf, "built-in default: redis_timeout: expected a duration like "
                                "500ms or 5s, got 'five'");
    bb_config_free(bad_default, 3, &c); /* safe after a failed defaults */
    assert_int_equal(bb_config_defaults(out_of_bounds, 1, &c, errbuf, sizeof(errbuf)), BB_ECONFIG);
    assert_non_null(strstr(errbuf, "out of range"));
    assert_int_equal(bb_config_defaults(twice, 2, &c, errbuf, sizeof(errbuf)), BB_ECONFIG);
    assert_string_equal(errbuf, "option 'port' is defined twice");
}

/* The daemons' shared command line: options collected, --set applied after
 * the file, errors for malformed overrides and stray arguments. */
static void test_cmdline(void **state)
{
    char *argv[] = {"prog", "-c", "a.conf", "--set", "port=9000", "--check-config",
                    "--set", "redis_timeout=2s", NULL};
    struct bb_cmdline cl;
    assert_int_equal(bb_cmdline_parse(8, argv, &cl), BB_OK);
    assert_string_equal(cl.config, "a.conf");
    assert_true(cl.check_only);
    assert_false(cl.dump);
    assert_int_equal(cl.nsets, 2);
    struct cfg c;
    cfg_defaults(&c);
    assert_int_equal(bb_config_apply_sets(opts, NOPTS, &c, cl.sets, cl.nsets, errbuf,
                                          sizeof(errbuf)),
                     BB_OK);
    assert_int_equal(c.port, 9000);
    assert_int_equal(c.redis_timeout, 2000);
    bb_cmdline_free(&cl);

    const char *bad[] = {"port"};
    assert_int_equal(bb_config_apply_sets(opts, NOPTS, &c, bad, 1, errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_string_equal(errbuf, "--set expects NAME=VALUE, got 'port'");
    const char *unknown[] = {"nope=1"};
    assert_int_equal(bb_config_apply_sets(opts, NOPTS, &c, unknown, 1, errbuf, sizeof(errbuf)),
                     BB_ECONFIG);
    assert_non_null(strstr(errbuf, "unknown option 'nope'"));
    bb_config_free(opts, NOPTS, &c);

    char *stray[] = {"prog", "extra", NULL};
    assert_int_equal(bb_cmdline_parse(2, stray, &cl), BB_EINVAL);
    bb_cmdline_free(&cl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_load_every_type),
        cmocka_unit_test(test_quoting_and_comments),
        cmocka_unit_test(test_later_lines_override),
        cmocka_unit_test(test_crlf_and_bom),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_bytes),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_errors_name_file_and_line),
        cmocka_unit_test(test_unreadable_file),
        cmocka_unit_test(test_secret_file),
        cmocka_unit_test(test_dump_roundtrips),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_bad_tables),
        cmocka_unit_test(test_cmdline),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
