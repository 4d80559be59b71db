/* Unit tests for common/log.c: logfmt shape, UTC timestamps, levels,
 * escaping, truncation, bb_log_quote, the per-message rate limit and whole
 * lines under concurrency. stderr is captured through a pipe (dup2); nothing
 * is asserted while it is captured, so failures stay visible. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int saved_stderr = -1;
static int capture_fd = -1;

static void capture_start(void)
{
    int p[2];

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    /* Room for everything a broken rate limiter could write, and never block. */
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    assert_int_equal(fcntl(p[1], F_SETFL, O_NONBLOCK), 0);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(p[1], STDERR_FILENO) >= 0);
    close(p[1]);
    capture_fd = p[0];
}

/* Restores stderr and returns everything written meanwhile (caller frees). */
static char *capture_end(void)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    ssize_t r;

    assert_non_null(buf);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    for (;;) {
        if (len + 1 == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        r = read(capture_fd, buf + len, cap - 1 - len);
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
    }
    close(capture_fd);
    buf[len] = '\0';
    return buf;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;

    for (; *s != '\0'; s++) {
        n += *s == '\n';
    }
    return n;
}

static size_t count_substr(const char *s, const char *sub)
{
    size_t n = 0;

    while ((s = strstr(s, sub)) != NULL) {
        n++;
        s += strlen(sub);
    }
    return n;
}

static void assert_matches(const char *s, const char *pattern)
{
    regex_t re;

    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    if (regexec(&re, s, 0, NULL, 0) != 0) {
        regfree(&re);
        fail_msg("[%s] does not match /%s/", s, pattern);
    }
    regfree(&re);
}

static int setup(void **state)
{
    bb_log_init("testprog", BB_LOG_DEBUG);
    return 0;
}

/* ---- tests ------------------------------------------------------------- */

static void test_logfmt_shape(void **state)
{
    char *out;
    struct tm tm = {0};
    time_t logged, now;

    /* Far from UTC, so a localtime() slip would show. */
    setenv("TZ", "BB-14", 1); /* POSIX form: no tzdata needed */
    tzset();
    capture_start();
    errno = EAGAIN;
    bb_info("connected", "addr=%s port=%d", "127.0.0.1", 6379);
    assert_int_equal(errno, EAGAIN); /* logging keeps errno */
    out = capture_end();
    now = time(NULL);
    assert_matches(out, "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                        "level=info prog=testprog msg=\"connected\" addr=127\\.0\\.0\\.1 "
                        "port=6379\n$");
    assert_non_null(strptime(out, "ts=%Y-%m-%dT%H:%M:%S", &tm));
    logged = timegm(&tm);
    /* time() may run on the coarse clock, a tick behind the one the log
     * reads: a second's slack at a second boundary. */
    assert_true(logged <= now + 1 && now - logged <= 5);
    free(out);
    unsetenv("TZ");
    tzset();
}

static void test_levels(void **state)
{
    static const struct {
        const char *s;
        int level;
    } cases[] = {
        {"debug", BB_LOG_DEBUG},
        {"info", BB_LOG_INFO},
        {"warn", BB_LOG_WARN},
        {"error", BB_LOG_ERROR},
        {"INFO", BB_LOG_INFO},
        {"warning", -1},
        {"", -1},
        {"inf", -1},
        {"errors", -1},
    };
    char *out;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(bb_log_level_parse(cases[i].s), cases[i].level);
    }
    assert_int_equal(bb_log_level_parse(NULL), -1);

    bb_log_set_level(BB_LOG_WARN);
    assert_false(bb_log_enabled(BB_LOG_INFO));
    assert_true(bb_log_enabled(BB_LOG_WARN));
    capture_start();
    bb_debug("level test debug", NULL);
    bb_info("level test info", NULL);
    bb_warn("level test warn", NULL);
    bb_error("level test error", "code=%d", 7);
    out = capture_end();
    bb_log_set_level(BB_LOG_DEBUG);
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, "level=warn prog=testprog msg=\"level test warn\"\n"));
    assert_non_null(strstr(out, "level=error prog=testprog msg=\"level test error\" code=7\n"));
    assert_null(strstr(out, "level=info"));
    free(out);
}

static void test_escaping(void **state)
{
    char *out;

    capture_start();
    bb_warn("say \"hoi\"\nnu\\", "value=%s ctl=%s", "two\nlines", "\x01\x7f");
    bb_warn("caf\xc3\xa9 \xff", NULL);
    out = capture_end();
    assert_int_equal(count_lines(out), 2);
    assert_non_null(strstr(out, " msg=\"say \\\"hoi\\\"\\nnu\\\\\" value=two\\nlines "
                                "ctl=\\x01\\x7f\n"));
    /* Valid UTF-8 passes through, a stray byte is escaped. */
    assert_non_null(strstr(out, " msg=\"caf\xc3\xa9 \\xff\"\n"));
    free(out);
}

static void test_truncation(void **state)
{
    size_t n = 10000;
    char *big = malloc(n + 1), *out, *second;

    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    capture_start();
    bb_info("long bare value", "v=%s", big);
    bb_info("long quoted value", "k=1 v=\"%s\"", big);
    bb_info(big, "after=1"); /* a message that alone is too long */
    out = capture_end();
    assert_int_equal(count_lines(out), 3);
    for (char *line = out; *line != '\0'; line = strchr(line, '\n') + 1) {
        size_t len = (size_t)(strchr(line, '\n') - line) + 1;
        assert_true(len <= 4096);
        assert_true(len > 3000);
    }
    second = strchr(out, '\n') + 1;
    assert_matches(out, "^ts=[^\n]* msg=\"long bare value\" v=x+ truncated=true\n");
    /* A quoted value cut short is closed again. */
    assert_matches(second, "^ts=[^\n]* msg=\"long quoted value\" k=1 v=\"x+\" truncated=true\n");
    assert_matches(strchr(second, '\n') + 1, "^ts=[^\n]* msg=\"x+\" truncated=true\n$");
    free(out);
    free(big);
}

static void test_quote(void **state)
{
    static const struct {
        const char *in;
        size_t cap;
        const char *want;
    } cases[] = {
        {"simple", 64, "simple"},
        {"127.0.0.1:6379", 64, "127.0.0.1:6379"},
        {"two words", 64, "\"two words\""},
        {"", 64, "\"\""},
        {NULL, 64, "\"\""},
        {"a=b", 64, "\"a=b\""},
        {"say \"hi\"", 64, "\"say \\\"hi\\\"\""},
        {"back\\slash", 64, "\"back\\\\slash\""},
        {"tab\tnl\n", 64, "\"tab\\tnl\\n\""},
        {"caf\xc3\xa9", 64, "\"caf\xc3\xa9\""},
        {"hello world", 8, "\"hello\""},
        {"ab\"cd", 6, "\"ab\""}, /* an escape is never split */
        {"x y", 2, ""},
        {"simple", 4, "sim"},
    };
    char buf[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *r = bb_log_quote(buf, cases[i].cap, cases[i].in);
        assert_ptr_equal(r, buf);
        if (strcmp(buf, cases[i].want) != 0) {
            fail_msg("quote case %zu: got [%s], want [%s]", i, buf, cases[i].want);
        }
    }
    assert_string_equal(bb_log_quote(NULL, 0, "x"), "");
}

static void test_rate_limit(void **state)
{
    char *out, *last;
    size_t burst_lines;
    unsigned long long suppressed = 0;

    capture_start();
    for (int i = 0; i < 1000; i++) {
        bb_warn("queue full", "i=%d", i);
        if (i == 500) {
            bb_warn("other message", NULL); /* limits are per message */
        }
    }
    out = capture_end();
    burst_lines = count_substr(out, "msg=\"queue full\"");
    print_message("log: 1000 identical messages -> %zu lines\n", burst_lines);
    assert_true(burst_lines >= 1 && burst_lines <= 20);
    assert_int_equal(count_substr(out, "msg=\"other message\""), 1);
    assert_null(strstr(out, "suppressed="));
    free(out);

    usleep(250 * 1000); /* the bucket refills */
    capture_start();
    bb_warn("queue full", "i=%d", 1000);
    out = capture_end();
    assert_int_equal(count_lines(out), 1);
    assert_matches(out, "msg=\"queue full\" i=1000 suppressed=[0-9]+\n$");
    last = strstr(out, "suppressed=");
    assert_int_equal(sscanf(last, "suppressed=%llu", &suppressed), 1);
    assert_int_equal(suppressed, 1000 - burst_lines);
    free(out);

    /* Counted once: the next line through reports nothing. */
    capture_start();
    bb_warn("queue full", "i=%d", 1001);
    out = capture_end();
    assert_null(strstr(out, "suppressed="));
    free(out);
}

static const char *const thread_msgs[] = {"worker zero", "worker one", "worker two",
                                          "worker three"};

static void *log_thread(void *arg)
{
    const char *msg = thread_msgs[(intptr_t)arg];
    char pad[1500];

    memset(pad, 'a' + (int)(intptr_t)arg, sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (int i = 0; i < 10; i++) {
        bb_info(msg, "i=%d pad=%s end=1", i, pad);
    }
    return NULL;
}

static void test_threads_write_whole_lines(void **state)
{
    pthread_t t[4];
    char *out;
    size_t lines = 0;

    capture_start();
    for (intptr_t i = 0; i < 4; i++) {
        assert_int_equal(pthread_create(&t[i], NULL, log_thread, (void *)i), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
    }
    out = capture_end();
    for (char *line = out; *line != '\0'; lines++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        assert_matches(line, "^ts=[^ ]+ level=info prog=testprog msg=\"worker [a-z]+\" "
                             "i=[0-9] pad=(a+|b+|c+|d+) end=1$");
        line = nl + 1;
    }
    assert_int_equal(lines, 40);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logfmt_shape),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_quote),
        cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_threads_write_whole_lines),
    };

    return cmocka_run_group_tests(tests, setup, NULL);
}
