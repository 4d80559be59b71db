/* The checks of buurtbus-plugin-check, in the order a host uses a
 * plug-in: load (dlopen, handshake, the table), config (init with missing
 * and with the given values, built as the host builds them: chanconfig.c),
 * format() on generated deliveries (each in a forked child), send() against
 * scripted provider answers, destroy() and the allocator balance.
 *
 * Each send gets a token from a fixed pool that lives until the tool
 * exits, so a done() arriving late or twice is still attributed to the
 * check that made the send; the delivery itself is a heap copy that is
 * poisoned and freed when done() comes, so a plug-in that keeps using it
 * crashes here (or trips AddressSanitizer) rather than in production.
 *
 * Threads: the tool's main thread, which runs the event loop. */
#include <dlfcn.h>
#include <errno.h>
#include <event2/event.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "chanconfig.h"
#include "config.h"

#define MAX_TOKENS 4096
#define MAX_OPTIONS 256
#define MAX_KV 128
#define FORMAT_LIMIT_S 10

/* ---- send tokens and done() ---------------------------------------------------------------- */

struct token {
    size_t check;
    unsigned done;
    int status;
    unsigned retry_after_s;
    char reason[72];
    bool send_returned, send_failed;
    struct bb_delivery *d; /* the plug-in's until done() */
};

static struct token tokens[MAX_TOKENS];
static size_t ntokens;
static unsigned outstanding; /* sends started and not yet done */

static bool reason_ok(const char *r)
{
    if (!r) {
        return false;
    }
    size_t n = strlen(r);
    if (n > 64) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (r[i] <= ' ' || r[i] > '~') {
            return false;
        }
    }
    return true;
}

static void on_done(void *tok, int status, unsigned retry_after_s, const char *reason)
{
    struct token *t = tok;
    if (t < tokens || t >= tokens + ntokens) {
        size_t cur = bb_check_current();
        bb_check_fail(cur, "done() called with a token the host never gave out");
        return;
    }
    t->done++;
    if (t->done > 1) {
        bb_check_fail(t->check, "done() called %u times for one send", t->done);
        return;
    }
    if (t->send_returned && t->send_failed) {
        bb_check_fail(t->check, "done() called after send() returned non-zero");
        return; /* not outstanding: the refused send was written off */
    }
    outstanding--;
    if (!bb_check_on_loop_thread()) {
        bb_check_fail(t->check, "done() called from a thread other than the event loop's");
    }
    if (status < BB_SEND_OK || status > BB_SEND_GONE) {
        bb_check_fail(t->check, "done() status %d is not an enum bb_send_status", status);
    }
    if (!reason_ok(reason)) {
        char shown[40];
        snprintf(shown, sizeof(shown), "%s", reason ? reason : "(null)");
        for (char *p = shown; *p; p++) {
            *p = *p < ' ' || *p > '~' ? '?' : *p;
        }
        bb_check_fail(t->check,
                      "reason \"%s\" is not short machine-readable text (printable ASCII, no "
                      "spaces, <= 64 chars)",
                      shown);
    }
    t->status = status;
    t->retry_after_s = retry_after_s;
    snprintf(t->reason, sizeof(t->reason), "%s", reason_ok(reason) ? reason : "?");
    if (t->d) {
        memset(t->d, 0xa5, sizeof(*t->d)); /* the delivery is no longer the plug-in's */
        free(t->d);
        t->d = NULL;
    }
}

/* ---- the event loop ------------------------------------------------------------------------ */

static struct event_base *base;
static struct event *tick; /* wakes EVLOOP_ONCE so deadlines are seen */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until every send is done and the host has no answers
 * pending, or until timeout_ms; then grace_ms more to catch a second
 * done(). */
static void run_loop(long timeout_ms, long grace_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        struct bb_check_usage u = bb_check_host_usage();
        bool idle = outstanding == 0 && u.http_pending + u.curl_pending + u.redis_pending == 0;
        if (idle || now_ms() >= deadline) {
            break;
        }
        event_base_loop(base, EVLOOP_ONCE);
    }
    int64_t end = now_ms() + grace_ms;
    while (now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE);
    }
}

/* ---- per check: what the host saw ---------------------------------------------------------- */

static const struct bb_check_opts *opts;
static const struct bb_channel *ch;
static char plugin_name[128];

/* Host misuse seen since the last reset fails check i. */
static void host_violations(size_t i)
{
    struct bb_check_usage u = bb_check_host_usage();
    if (u.bad_free) {
        bb_check_fail(i,
                      "host->free/realloc of memory not from host->alloc (or freed twice), %u "
                      "time(s)",
                      u.bad_free);
    }
    if (u.off_thread) {
        bb_check_fail(i, "%u host call(s) from a thread other than the event loop's", u.off_thread);
    }
    if (u.bad_request) {
        bb_check_fail(i,
                      "%u http() request(s) malformed (struct_size, method, url, headers or "
                      "body missing)",
                      u.bad_request);
    }
    if (u.log_leaks) {
        bb_check_fail(i, "logged a contact address, token or message text (%u line(s))",
                      u.log_leaks);
    }
}

static bool balance_same(size_t i, size_t blocks0, size_t bytes0, const char *when)
{
    size_t bytes;
    size_t blocks = bb_check_alloc_live(&bytes);
    if (blocks > blocks0) {
        bb_check_fail(i, "%s: %zu block(s), %zu byte(s) from host->alloc never freed", when,
                      blocks - blocks0, bytes - bytes0);
        return false;
    }
    return true;
}

/* ---- load ---------------------------------------------------------------------------------- */

static bool name_chars_ok(const char *s, const char *extra)
{
    if (!s || !s[0]) {
        return false;
    }
    for (const char *p = s; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr(extra, *p))) {
            return false;
        }
    }
    return true;
}

static bool default_ok(const struct bb_channel_option *o)
{
    int64_t iv;
    int b;
    char *end;
    switch (o->type) {
    case BB_OPTION_INT:
        errno = 0;
        (void)strtoll(o->def, &end, 10);
        return !errno && end != o->def && !*end;
    case BB_OPTION_BOOL:
        return bb_parse_bool(o->def, &b) == 0;
    case BB_OPTION_DURATION_MS:
        return bb_parse_duration_ms(o->def, &iv) == 0;
    default:
        return true;
    }
}

/* Appends one problem to the check's reason ("; "-separated). */
__attribute__((format(printf, 3, 4))) static void problem(char *buf, size_t cap, const char *fmt,
                                                          ...)
{
    size_t n = strlen(buf);
    if (n && n + 2 < cap) {
        memcpy(buf + n, "; ", 3);
        n += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, cap - n, fmt, ap);
    va_end(ap);
}

static void check_options(void)
{
    size_t i = bb_check_begin("load/options");
    const struct bb_channel_option *t = ch->options;
    if (!t) {
        bb_check_end(i, BB_CHECK_OK, "no options");
        return;
    }
    size_t n = 0;
    while (n < MAX_OPTIONS && t[n].name) {
        n++;
    }
    if (n == MAX_OPTIONS) {
        bb_check_end(i, BB_CHECK_FAIL, "no terminating {NULL} entry within %d options",
                     MAX_OPTIONS);
        return;
    }
    char why[256] = "";
    for (size_t k = 0; k < n; k++) {
        const struct bb_channel_option *o = &t[k];
        if (!name_chars_ok(o->name, "_")) {
            problem(why, sizeof(why), "option %zu: name '%s' is not [a-z0-9_]+", k, o->name);
        } else if (strcmp(o->name, "plugin") == 0 || strcmp(o->name, "stream") == 0) {
            problem(why, sizeof(why), "'%s' is the host's own key channel.<inst>.%s", o->name,
                    o->name);
        }
        for (size_t j = 0; j < k; j++) {
            if (strcmp(t[j].name, o->name) == 0) {
                problem(why, sizeof(why), "'%s' declared twice", o->name);
            }
        }
        if (o->type < BB_OPTION_STRING || o->type > BB_OPTION_SECRET_FILE) {
            problem(why, sizeof(why), "'%s': type %d is not an enum bb_option_type", o->name,
                    o->type);
        } else if (o->def && !default_ok(o)) {
            problem(why, sizeof(why), "'%s': default '%s' does not parse as its type", o->name,
                    o->def);
        }
        if (!o->help || !o->help[0]) {
            problem(why, sizeof(why), "'%s': no help text", o->name);
        }
    }
    if (why[0]) {
        bb_check_end(i, BB_CHECK_FAIL, "%s", why);
    } else {
        bb_check_end(i, BB_CHECK_OK, "%zu option(s)", n);
    }
}

/* Returns the handle, or NULL when nothing further can run. */
static void *check_load(void)
{
    size_t i = bb_check_begin("load/dlopen");
    void *dl = dlopen(opts->path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        bb_check_end(i, BB_CHECK_FAIL, "%s", dlerror());
        return NULL;
    }
    bb_check_end(i, BB_CHECK_OK, "loaded with RTLD_NOW (every symbol resolved)");

    i = bb_check_begin("load/entry_symbol");
    bb_channel_entry_fn *entry;
    *(void **)&entry = dlsym(dl, "bb_channel_entry");
    if (!entry) {
        bb_check_end(i, BB_CHECK_FAIL, "no exported bb_channel_entry (BB_CHANNEL_EXPORT?)");
        return dl;
    }
    bb_check_end(i, BB_CHECK_OK, "exported");

    i = bb_check_begin("load/entry");
    ch = entry(BB_CHANNEL_ABI_VERSION);
    if (!ch) {
        bb_check_end(i, BB_CHECK_FAIL, "bb_channel_entry(%d) returned NULL",
                     BB_CHANNEL_ABI_VERSION);
        return dl;
    }
    bb_check_end(i, BB_CHECK_OK, "bb_channel_entry(%d) returned a table", BB_CHANNEL_ABI_VERSION);

    i = bb_check_begin("load/future_abi");
    const struct bb_channel *future = entry(999);
    bb_check_end(i, BB_CHECK_OK, "bb_channel_entry(999) returned %s",
                 future ? "a table (the host checks its abi_version)" : "NULL");

    i = bb_check_begin("load/abi_version");
    if (ch->abi_version != BB_CHANNEL_ABI_VERSION) {
        bb_check_end(i, BB_CHECK_FAIL, "abi_version %u; this host speaks %d", ch->abi_version,
                     BB_CHANNEL_ABI_VERSION);
        ch = NULL;
        return dl;
    }
    bb_check_end(i, BB_CHECK_OK, "%u", ch->abi_version);

    i = bb_check_begin("load/struct_size");
    if (ch->struct_size < sizeof(struct bb_channel)) {
        bb_check_end(i, BB_CHECK_FAIL, "struct_size %u < sizeof(struct bb_channel) v1 = %zu",
                     ch->struct_size, sizeof(struct bb_channel));
        if (ch->struct_size < offsetof(struct bb_channel, reserved)) {
            ch = NULL; /* reading the callbacks would read past the table */
            return dl;
        }
    } else {
        bb_check_end(i, BB_CHECK_OK, "%u", ch->struct_size);
    }

    i = bb_check_begin("load/name");
    char file[512];
    snprintf(file, sizeof(file), "%s", opts->path);
    const char *fname = basename(file);
    char want[300];
    snprintf(want, sizeof(want), "bb-channel-%s.so", ch->name ? ch->name : "");
    if (!name_chars_ok(ch->name, "_-")) {
        bb_check_end(i, BB_CHECK_FAIL, "name '%s' is not [a-z0-9_-]+",
                     ch->name ? ch->name : "(null)");
    } else if (strcmp(fname, want) != 0) {
        bb_check_end(i, BB_CHECK_FAIL, "name '%s' but the file is %s (the host loads %s)", ch->name,
                     fname, want);
    } else {
        bb_check_end(i, BB_CHECK_OK, "'%s' matches %s", ch->name, fname);
    }
    snprintf(plugin_name, sizeof(plugin_name), "%s", ch->name ? ch->name : "?");

    i = bb_check_begin("load/caps");
    uint32_t known =
        BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY | BB_CAP_HTTP2 | BB_CAP_DIGEST | BB_CAP_PUBLIC;
    if (ch->caps & ~known) {
        bb_check_end(i, BB_CHECK_FAIL, "unknown capability bits 0x%x", ch->caps & ~known);
    } else {
        bb_check_end(
            i, BB_CHECK_OK, "0x%x%s%s%s%s%s", ch->caps, ch->caps & BB_CAP_BATCH ? " batch" : "",
            ch->caps & BB_CAP_IDEMPOTENCY_KEY ? " idempotency_key" : "",
            ch->caps & BB_CAP_HTTP2 ? " http2" : "", ch->caps & BB_CAP_DIGEST ? " digest" : "",
            ch->caps & BB_CAP_PUBLIC ? " public" : "");
    }

    check_options();

    i = bb_check_begin("load/callbacks");
    if (!ch->init || !ch->send || !ch->destroy) {
        bb_check_end(i, BB_CHECK_FAIL, "missing:%s%s%s", ch->init ? "" : " init",
                     ch->send ? "" : " send", ch->destroy ? "" : " destroy");
        ch = NULL;
        return dl;
    }
    bb_check_end(i, BB_CHECK_OK, "init, send, destroy%s", ch->format ? ", format" : "");

    i = bb_check_begin("load/reserved");
    if (ch->struct_size < sizeof(struct bb_channel)) {
        bb_check_end(i, BB_CHECK_SKIP, "table too small to hold the reserved slots");
    } else {
        size_t set = 0;
        for (size_t k = 0; k < sizeof(ch->reserved) / sizeof(ch->reserved[0]); k++) {
            set += ch->reserved[k] != NULL;
        }
        if (set) {
            bb_check_end(i, BB_CHECK_FAIL, "%zu reserved slot(s) not NULL", set);
        } else {
            bb_check_end(i, BB_CHECK_OK, "all NULL");
        }
    }
    return dl;
}

/* ---- config -------------------------------------------------------------------------------- */

static struct bb_check_kv kv[MAX_KV];
static size_t nkv;

static int add_kv(const char *key, const char *value, const char *source)
{
    if (nkv == MAX_KV) {
        return -1;
    }
    kv[nkv] = (struct bb_check_kv){strdup(key), strdup(value), source};
    if (!kv[nkv].key || !kv[nkv].value) {
        return -1;
    }
    nkv++;
    return 0;
}

/* "name value", "name=value" or "channel.<inst>.name value" lines. */
static int read_config(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "--config %s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *k = line + strspn(line, " \t");
        if (!*k || *k == '#') {
            continue;
        }
        char *sep = k + strcspn(k, " \t=");
        char *v = sep;
        if (*sep) {
            *sep = '\0';
            v = sep + 1 + strspn(sep + 1, " \t=");
        }
        if (strncmp(k, "channel.", 8) == 0 && strchr(k + 8, '.')) {
            k = strchr(k + 8, '.') + 1;
        }
        if (strcmp(k, "plugin") == 0 || strcmp(k, "stream") == 0) {
            continue; /* the host's keys, not the plug-in's */
        }
        if (add_kv(k, v, path) != 0) {
            fclose(f);
            snprintf(err, errlen, "--config %s: too many lines", path);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

static int collect_kv(char *err, size_t errlen)
{
    if (opts->config && read_config(opts->config, err, errlen) != 0) {
        return -1;
    }
    for (size_t k = 0; k < opts->nsets; k++) {
        const char *eq = strchr(opts->sets[k], '=');
        char key[256];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - opts->sets[k]), opts->sets[k]);
        if (add_kv(key, eq + 1, "--set") != 0) {
            snprintf(err, errlen, "too many --set");
            return -1;
        }
    }
    return 0;
}

static void free_kv(void)
{
    for (size_t k = 0; k < nkv; k++) {
        free(kv[k].key);
        free(kv[k].value);
    }
    nkv = 0;
}

/* Calls init with the values the host would build from kv (plus one
 * override); the err buffer has a guard zone after errlen. */
static int call_init(const char *override_key, const char *override_value, size_t check, void **ctx,
                     char *err, size_t errlen, bool *host_refused)
{
    struct bb_check_kv all[MAX_KV + 1];
    memcpy(all, kv, nkv * sizeof(kv[0]));
    size_t n = nkv;
    if (override_key) {
        all[n++] = (struct bb_check_kv){(char *)override_key, (char *)override_value, "check"};
    }
    const char *instance = opts->instance ? opts->instance : plugin_name;
    struct bb_channel_config *cfg = bb_chanconfig_new(ch, instance, all, n, err, errlen);
    if (!cfg) {
        *host_refused = true;
        return -1;
    }
    *host_refused = false;
    char buf[512];
    size_t small = 128;
    memset(buf, 0x5a, sizeof(buf));
    buf[0] = '\0';
    *ctx = NULL;
    int rc = ch->init(bb_check_host_api(), cfg, ctx, buf, small);
    bb_chanconfig_free(cfg);
    for (size_t k = small; k < sizeof(buf); k++) {
        if ((unsigned char)buf[k] != 0x5a) {
            bb_check_fail(check, "init() wrote past errlen into err");
            break;
        }
    }
    if (!memchr(buf, '\0', small)) {
        bb_check_fail(check, "init() left err without a terminating NUL");
        buf[small - 1] = '\0';
    }
    snprintf(err, errlen, "%s", buf);
    return rc;
}

static void check_missing(void)
{
    const struct bb_channel_option *t = ch->options;
    bool any = false;
    for (size_t k = 0; t && k < MAX_OPTIONS && t[k].name; k++) {
        const struct bb_channel_option *o = &t[k];
        if (o->def || (o->type != BB_OPTION_STRING && o->type != BB_OPTION_SECRET_FILE)) {
            continue; /* the host refuses a missing or empty number itself */
        }
        any = true;
        char name[128];
        snprintf(name, sizeof(name), "config/missing_%s", o->name);
        size_t i = bb_check_begin(name);
        bb_check_host_usage_reset();
        size_t bytes0;
        size_t blocks0 = bb_check_alloc_live(&bytes0);
        void *ctx = NULL;
        char err[512];
        bool refused;
        int rc = call_init(o->name, "", i, &ctx, err, sizeof(err), &refused);
        if (refused) {
            bb_check_end(i, BB_CHECK_SKIP, "cannot build the rest of the config: %s", err);
            continue;
        }
        if (rc == 0) {
            ch->destroy(ctx);
            run_loop(0, 0);
            balance_same(i, blocks0, bytes0, "init+destroy");
            host_violations(i);
            bb_check_end(i, BB_CHECK_SKIP,
                         "init() accepted an empty '%s'; fine only if it may be empty", o->name);
            continue;
        }
        if (!err[0]) {
            bb_check_fail(i, "init() failed without a message in err");
        }
        balance_same(i, blocks0, bytes0, "failed init");
        host_violations(i);
        bb_check_end(i, BB_CHECK_OK, "init() refused an empty '%s': %s", o->name, err);
    }
    if (!any) {
        size_t i = bb_check_begin("config/missing");
        bb_check_end(i, BB_CHECK_SKIP, "no required string or secret-file options");
    }
}

/* ---- format -------------------------------------------------------------------------------- */

/* One format() case, check i. */
static void format_case(void *ctx, const struct bb_case *c, size_t i)
{
    bb_check_host_usage_reset();
    size_t bytes0;
    size_t blocks0 = bb_check_alloc_live(&bytes0);
    char *out = NULL;
    size_t outlen = (size_t)-1;
    int rc = ch->format(ctx, &c->d, &out, &outlen);
    struct bb_check_usage u = bb_check_host_usage();
    if (u.http || u.curl || u.redis) {
        bb_check_fail(i, "format() did I/O through the host (http %u, curl %u, redis %u)", u.http,
                      u.curl, u.redis);
    }
    size_t block = 0;
    if (rc == 0) {
        if (!out) {
            bb_check_fail(i, "format() returned 0 with out NULL");
        } else if (!bb_check_alloc_owns(out, &block)) {
            bb_check_fail(i, "format() output is not a block from host->alloc");
            out = NULL; /* not ours to free */
        } else if (outlen > block) {
            bb_check_fail(i, "outlen %zu is larger than the %zu-byte block", outlen, block);
        } else if (!bb_utf8_valid(out, outlen)) {
            bb_check_fail(i, "output (%zu bytes) is not valid UTF-8", outlen);
        } else if (!c->hostile && outlen == 0) {
            bb_check_fail(i, "empty output for a valid delivery");
        }
        if (out) {
            bb_check_host_api()->free(out);
        }
    } else if (!c->hostile) {
        bb_check_fail(i, "format() refused a valid delivery (rc %d)", rc);
    }
    balance_same(i, blocks0, bytes0, "format");
    host_violations(i);
    if (rc == 0) {
        bb_check_end(i, BB_CHECK_OK, "%zu bytes of UTF-8", outlen);
    } else {
        bb_check_end(i, BB_CHECK_OK, "refused (rc %d), cleanly", rc);
    }
}

/* What a forked format case sends back. */
struct case_result {
    int result;
    unsigned log_lines, log_leaks;
    char reason[256];
};

/* Runs one case in a child process, so that a crash fails this case and
 * the run goes on; format() must not change the context anyway. */
static void format_case_forked(void *ctx, const struct bb_case *c, size_t i)
{
    int fds[2];
    fflush(NULL);
    pid_t pid = pipe(fds) == 0 ? fork() : -1;
    if (pid < 0) {
        format_case(ctx, c, i); /* no isolation, same checks */
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        bb_check_uncatch_crashes();
        alarm(FORMAT_LIMIT_S); /* a format() that never returns dies of SIGALRM */
        unsigned lines0, leaks0;
        bb_check_host_log_totals(&lines0, &leaks0);
        format_case(ctx, c, i);
        struct case_result r = {0};
        r.result = (int)bb_check_get(i, r.reason, sizeof(r.reason));
        bb_check_host_log_totals(&r.log_lines, &r.log_leaks);
        r.log_lines -= lines0;
        r.log_leaks -= leaks0;
        ssize_t w = write(fds[1], &r, sizeof(r));
        _exit(w == (ssize_t)sizeof(r) ? 0 : 3);
    }
    close(fds[1]);
    struct case_result r;
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = read(fds[0], (char *)&r + got, sizeof(r) - got);
        if (n <= 0 && !(n < 0 && errno == EINTR)) {
            break;
        }
        got += n > 0 ? (size_t)n : 0;
    }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    char why[160];
    if (got == sizeof(r)) {
        bb_check_set(i, (enum bb_check_result)r.result, r.reason);
        bb_check_host_add_log_totals(r.log_lines, r.log_leaks);
    } else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) {
        snprintf(why, sizeof(why), "format() did not return within %d s", FORMAT_LIMIT_S);
        bb_check_set(i, BB_CHECK_FAIL, why);
    } else if (WIFSIGNALED(st)) {
        snprintf(why, sizeof(why), "crashed (%s)", strsignal(WTERMSIG(st)));
        bb_check_set(i, BB_CHECK_FAIL, why);
    } else {
        snprintf(why, sizeof(why),
                 "format() ended the process (exit status %d; a sanitizer report on stderr?)",
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        bb_check_set(i, BB_CHECK_FAIL, why);
    }
}

static void check_format(void *ctx)
{
    if (!ch->format) {
        size_t i = bb_check_begin("format");
        bb_check_end(i, BB_CHECK_SKIP, "the plug-in has no format()");
        return;
    }
    size_t ncases;
    const struct bb_case *cases = bb_cases(&ncases);
    for (size_t k = 0; k < ncases; k++) {
        const struct bb_case *c = &cases[k];
        char name[96];
        snprintf(name, sizeof(name), "format/%s", c->name);
        size_t i = bb_check_begin(name);
        if ((ch->caps & c->need_caps) != c->need_caps) {
            bb_check_end(i, BB_CHECK_SKIP, "needs %s",
                         c->need_caps == BB_CAP_DIGEST ? "BB_CAP_DIGEST" : "BB_CAP_PUBLIC");
            continue;
        }
        format_case_forked(ctx, c, i);
    }
}

/* ---- send ---------------------------------------------------------------------------------- */

enum expect { EXPECT_ANY, EXPECT_OK, EXPECT_RETRY, EXPECT_NOT_OK };

static const char *status_name(int s)
{
    static const char *const names[] = {"OK", "RETRY", "PERMANENT", "GONE"};
    return s >= 0 && s <= 3 ? names[s] : "?";
}

/* Starts n sends for check i; returns how many send() refused. */
static unsigned start_sends(void *ctx, size_t i, unsigned n, size_t *first)
{
    unsigned refused = 0;
    *first = ntokens;
    for (unsigned k = 0; k < n && ntokens < MAX_TOKENS; k++) {
        struct token *t = &tokens[ntokens++];
        memset(t, 0, sizeof(*t));
        t->check = i;
        t->d = malloc(sizeof(*t->d));
        if (!t->d) {
            abort();
        }
        *t->d = *bb_send_delivery((unsigned)ntokens, ch->caps);
        bb_check_host_set_needle(n == 1 ? t->d->delivery_id : NULL);
        outstanding++;
        int rc = ch->send(ctx, t->d, on_done, t);
        t->send_returned = true;
        if (rc != 0) {
            t->send_failed = true;
            refused++;
            if (t->done) {
                bb_check_fail(i, "send() returned non-zero after calling done()");
            } else {
                outstanding--;
                free(t->d); /* not handed over: the host keeps it */
                t->d = NULL;
            }
        }
    }
    return refused;
}

/* One check: n sends against the current script; the contract, then what
 * the status should be. */
static void send_check(void *ctx, const char *name, const struct bb_script *s, enum expect ex,
                       unsigned n, struct bb_check_usage *used)
{
    size_t i = bb_check_begin(name);
    bb_check_host_set_script(s);
    bb_check_host_usage_reset();
    size_t first;
    unsigned refused = start_sends(ctx, i, n, &first);
    unsigned inflight = outstanding;
    struct bb_check_usage u;
    run_loop(opts->timeout_ms, 100);
    u = bb_check_host_usage();
    if (used) {
        *used = u;
    }
    host_violations(i);
    unsigned never = 0, counts[4] = {0, 0, 0, 0};
    struct token *bad = NULL;
    for (size_t k = first; k < ntokens; k++) {
        struct token *t = &tokens[k];
        if (t->send_failed) {
            continue;
        }
        if (!t->done) {
            never++;
            continue;
        }
        if (t->status >= 0 && t->status <= 3) {
            counts[t->status]++;
        }
        bool wrong = (ex == EXPECT_OK && t->status != BB_SEND_OK) ||
                     (ex == EXPECT_RETRY && t->status != BB_SEND_RETRY) ||
                     (ex == EXPECT_NOT_OK && t->status == BB_SEND_OK);
        if (wrong && !bad) {
            bad = t;
        }
        if (s && s->retry_after_s > 0 && t->status == BB_SEND_RETRY && t->retry_after_s &&
            t->retry_after_s != (unsigned)s->retry_after_s) {
            bb_check_fail(i, "retry_after_s %u but the provider said Retry-After: %ld",
                          t->retry_after_s, s->retry_after_s);
        }
    }
    if (never) {
        bb_check_fail(i, "done() never called for %u of %u send(s) within %ld ms", never, n,
                      opts->timeout_ms);
    }
    if (bad) {
        const char *want = ex == EXPECT_OK ? "OK" : ex == EXPECT_RETRY ? "RETRY" : "not OK";
        bb_check_fail(i, "reported %s (reason \"%s\"), expected %s", status_name(bad->status),
                      bad->reason, want);
    }
    struct token *t0 = &tokens[first];
    char detail[160] = "";
    if (n == 1 && !t0->send_failed && t0->done) {
        snprintf(detail, sizeof(detail), "%s reason=%s retry_after_s=%u", status_name(t0->status),
                 t0->reason[0] ? t0->reason : "\"\"", t0->retry_after_s);
        if (s && s->retry_after_s > 0 && t0->status == BB_SEND_RETRY && !t0->retry_after_s) {
            strncat(detail, " (Retry-After not passed on)", sizeof(detail) - strlen(detail) - 1);
        }
    } else if (n == 1) {
        snprintf(detail, sizeof(detail), "send() returned non-zero (the host retries)");
    } else {
        snprintf(detail, sizeof(detail),
                 "%u sends, %u in flight at once: %u OK %u RETRY %u "
                 "PERMANENT %u GONE, %u refused by send()",
                 n, inflight, counts[0], counts[1], counts[2], counts[3], refused);
    }
    bb_check_end(i, BB_CHECK_OK, "%s", detail);
}

static const struct bb_script scripts[] = {
    {"http_200", 200, "", -1, 0}, {"http_201", 201, "", -1, 0},     {"http_400", 400, "", -1, 0},
    {"http_401", 401, "", -1, 0}, {"http_404", 404, "", -1, 0},     {"http_410", 410, "", -1, 0},
    {"http_413", 413, "", -1, 0}, {"http_429", 429, "", 7, 0},      {"http_500", 500, "", -1, 0},
    {"http_503", 503, "", -1, 0}, {"timeout", 0, "timeout", -1, 0}, {"late_200", 200, "", -1, 300},
};

static enum expect expect_for(const struct bb_script *s)
{
    if (s->status >= 200 && s->status < 300) {
        return EXPECT_OK;
    }
    if (s->status == 0 || s->status == 429 || s->status >= 500) {
        return EXPECT_RETRY;
    }
    return EXPECT_NOT_OK;
}

static void skip(const char *name, const char *fmt, const char *arg)
{
    size_t i = bb_check_begin(name);
    bb_check_end(i, BB_CHECK_SKIP, fmt, arg);
}

static void check_send(void *ctx)
{
    const struct bb_check_host_opts *ho = bb_check_host_opts();
    struct bb_check_usage u;
    /* The first send shows which host service the plug-in uses. */
    send_check(ctx, "send/first", &scripts[0], EXPECT_ANY, 1, &u);
    bool http = u.http > 0, curl = u.curl > 0, redis = u.redis > 0;
    size_t nscripts = sizeof(scripts) / sizeof(scripts[0]);
    if (http) {
        size_t i = bb_check_begin("send/http2");
        if (ch->caps & BB_CAP_HTTP2 && !u.http2) {
            bb_check_end(i, BB_CHECK_FAIL, "BB_CAP_HTTP2 but the request did not set http2");
        } else {
            bb_check_end(i, BB_CHECK_OK, "%s", u.http2 ? "HTTP/2 requested" : "HTTP/1.1");
        }
        i = bb_check_begin("send/idempotency_key");
        if (!(ch->caps & BB_CAP_IDEMPOTENCY_KEY)) {
            bb_check_end(i, BB_CHECK_SKIP, "no BB_CAP_IDEMPOTENCY_KEY");
        } else if (!u.needle_hits) {
            bb_check_end(i, BB_CHECK_SKIP,
                         "not confirmed: the request carries no delivery_id verbatim (fine if "
                         "the provider's key is derived from it)");
        } else {
            bb_check_end(i, BB_CHECK_OK, "the request carries the delivery_id");
        }
        for (size_t k = 0; k < nscripts; k++) {
            char name[64];
            snprintf(name, sizeof(name), "send/%s", scripts[k].name);
            send_check(ctx, name, &scripts[k], expect_for(&scripts[k]), 1, NULL);
        }
    } else {
        skip("send/http", "%s", "the plug-in made no http() request");
    }
    if (curl && !ho->live) {
        static const struct bb_script none = {"curl_refused", 0, "connect", -1, 0};
        send_check(ctx, "send/curl_refused", &none, EXPECT_RETRY, 1, NULL);
        skip("send/curl_live", "%s",
             "uses curl(); run with --live and the plug-in's endpoint options pointing at a test "
             "server to send for real");
    } else if (curl) {
        send_check(ctx, "send/curl_live", &scripts[0], EXPECT_ANY, 1, NULL);
    }
    if (redis && !ho->redis) {
        static const struct bb_script none = {"redis_down", 0, "connect", -1, 0};
        send_check(ctx, "send/redis_down", &none, EXPECT_RETRY, 1, NULL);
        skip("send/redis_live", "%s", "uses redis(); pass --redis host:port to send for real");
    } else if (redis) {
        send_check(ctx, "send/redis_live", &scripts[0], EXPECT_OK, 1, NULL);
    }
    if (!(ch->caps & BB_CAP_BATCH)) {
        skip("send/batch", "%s", "no BB_CAP_BATCH: one send at a time");
    } else {
        char name[64];
        snprintf(name, sizeof(name), "send/batch_%u", opts->batch);
        send_check(ctx, name, &scripts[0], http ? EXPECT_OK : EXPECT_ANY, opts->batch, NULL);
    }
}

/* ---- the run ------------------------------------------------------------------------------- */

void bb_check_run(struct event_base *b, const struct bb_check_opts *o)
{
    base = b;
    opts = o;
    tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);

    void *dl = check_load();
    if (!ch) {
        goto unload;
    }
    char err[512];
    if (collect_kv(err, sizeof(err)) != 0) {
        size_t i = bb_check_begin("config/values");
        bb_check_end(i, BB_CHECK_FAIL, "%s", err);
        goto unload;
    }
    check_missing();

    size_t i = bb_check_begin("config/init");
    bb_check_host_usage_reset();
    size_t bytes0;
    size_t blocks0 = bb_check_alloc_live(&bytes0);
    void *ctx = NULL;
    bool refused;
    int rc = call_init(NULL, NULL, i, &ctx, err, sizeof(err), &refused);
    if (refused) {
        bb_check_end(i, BB_CHECK_SKIP, "the host would refuse these values: %s", err);
        skip("format", "%s", "needs init() with the plug-in's options (--set name=value)");
        skip("send", "%s", "needs init() with the plug-in's options (--set name=value)");
        goto unload;
    }
    if (rc != 0) {
        balance_same(i, blocks0, bytes0, "failed init");
        bb_check_end(i, BB_CHECK_FAIL, "init() failed with the given values: %s",
                     err[0] ? err : "(no message in err)");
        goto unload;
    }
    host_violations(i);
    bb_check_end(i, BB_CHECK_OK, "init() succeeded");

    check_format(ctx);
    check_send(ctx);

    i = bb_check_begin("destroy/leaks");
    unsigned abandoned = outstanding;
    bb_check_host_abandon();
    bb_check_host_usage_reset();
    ch->destroy(ctx);
    run_loop(0, 50);
    host_violations(i);
    char when[160];
    snprintf(when, sizeof(when), "after destroy()%s",
             abandoned ? " with sends abandoned in flight "
                         "(destroy() must free their state)"
                       : "");
    if (balance_same(i, blocks0, bytes0, when)) {
        bb_check_end(i, BB_CHECK_OK, "host allocator balanced%s",
                     abandoned ? ", also with sends abandoned in flight" : "");
    } else {
        bb_check_end(i, BB_CHECK_FAIL, "-");
    }

    i = bb_check_begin("log/personal_data");
    unsigned lines, leaks;
    bb_check_host_log_totals(&lines, &leaks);
    if (leaks) {
        bb_check_end(i, BB_CHECK_FAIL,
                     "%u of %u log line(s) carried a contact address, token or message text", leaks,
                     lines);
    } else {
        bb_check_end(i, BB_CHECK_OK, "%u log line(s), none with an address, token or message text",
                     lines);
    }

unload:
    free_kv();
    event_free(tick);
    /* Tokens of sends that never completed still own their delivery. */
    for (size_t k = 0; k < ntokens; k++) {
        free(tokens[k].d);
        tokens[k].d = NULL;
    }
    /* The plug-in stays mapped: its code may still be referenced by
     * libraries it used (OpenSSL, libcurl atexit handlers). */
    (void)dl;
}
