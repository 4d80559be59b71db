/* The report of buurtbus-plugin-check: one line per check (ok / FAIL /
 * skip and why), or a JSON document with --json. A crash inside the plug-in
 * is caught and reported against the check that was running.
 *
 * Threads: the tool's main thread; the crash handler runs on whichever
 * thread crashed, prints and exits. */
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

#define MAX_CHECKS 512

struct check {
    char name[64];
    enum bb_check_result result;
    bool ended;
    char reason[256];
};

static struct check checks[MAX_CHECKS];
static size_t nchecks;
static size_t current = SIZE_MAX;
static bool crash_json;
static const char *crash_path;

size_t bb_check_begin(const char *name)
{
    if (nchecks == MAX_CHECKS) {
        nchecks--; /* never reached with the generated cases; keeps the last slot */
    }
    struct check *c = &checks[nchecks];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    current = nchecks;
    return nchecks++;
}

void bb_check_end(size_t i, enum bb_check_result r, const char *fmt, ...)
{
    struct check *c = &checks[i];
    c->ended = true;
    current = SIZE_MAX;
    if (c->result == BB_CHECK_FAIL) {
        return;
    }
    c->result = r;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
    va_end(ap);
}

void bb_check_fail(size_t i, const char *fmt, ...)
{
    if (i >= nchecks) {
        return;
    }
    struct check *c = &checks[i];
    if (c->result == BB_CHECK_FAIL) {
        return;
    }
    c->result = BB_CHECK_FAIL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
    va_end(ap);
}

size_t bb_check_current(void)
{
    return current;
}

enum bb_check_result bb_check_get(size_t i, char *reason, size_t cap)
{
    snprintf(reason, cap, "%s", checks[i].reason);
    return checks[i].result;
}

void bb_check_set(size_t i, enum bb_check_result r, const char *reason)
{
    checks[i].result = r;
    checks[i].ended = true;
    snprintf(checks[i].reason, sizeof(checks[i].reason), "%s", reason);
    if (current == i) {
        current = SIZE_MAX;
    }
}

static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            fprintf(f, "\\%c", *p);
        } else if (*p < 0x20) {
            fprintf(f, "\\u%04x", *p);
        } else {
            fputc(*p, f);
        }
    }
    fputc('"', f);
}

static const char *result_word(enum bb_check_result r)
{
    return r == BB_CHECK_OK ? "ok" : r == BB_CHECK_FAIL ? "FAIL" : "skip";
}

int bb_check_report(bool json, const char *plugin_path)
{
    size_t n[3] = {0, 0, 0};
    for (size_t i = 0; i < nchecks; i++) {
        n[checks[i].result]++;
    }
    if (json) {
        printf("{\"plugin\":");
        json_string(stdout, plugin_path);
        printf(",\"ok\":%zu,\"fail\":%zu,\"skip\":%zu,\"checks\":[", n[0], n[1], n[2]);
        for (size_t i = 0; i < nchecks; i++) {
            printf("%s{\"check\":", i ? "," : "");
            json_string(stdout, checks[i].name);
            printf(",\"result\":\"%s\",\"reason\":", checks[i].result == BB_CHECK_OK     ? "ok"
                                                     : checks[i].result == BB_CHECK_FAIL ? "fail"
                                                                                         : "skip");
            json_string(stdout, checks[i].reason);
            printf("}");
        }
        printf("]}\n");
    } else {
        printf("buurtbus-plugin-check %s\n", plugin_path);
        for (size_t i = 0; i < nchecks; i++) {
            printf("%-4s  %-32s %s\n", result_word(checks[i].result), checks[i].name,
                   checks[i].reason);
        }
        printf("%zu ok, %zu failed, %zu skipped\n", n[0], n[1], n[2]);
        printf("hint: build this tool and the plug-in with -fsanitize=address for full leak and "
               "memory-error checking (LeakSanitizer)\n");
    }
    fflush(stdout);
    return n[BB_CHECK_FAIL] ? 1 : 0;
}

static void on_crash(int sig)
{
    /* Not async-signal-safe; the process is going down anyway and the
     * report is what the author needs. */
    signal(sig, SIG_DFL);
    if (current != SIZE_MAX) {
        bb_check_fail(current, "crashed (%s)", strsignal(sig));
        checks[current].ended = true;
    } else {
        size_t i = bb_check_begin("crash");
        bb_check_fail(i, "crashed between checks (%s)", strsignal(sig));
    }
    bb_check_report(crash_json, crash_path);
    _exit(1);
}

void bb_check_uncatch_crashes(void)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        signal(sigs[i], SIG_DFL);
    }
}

void bb_check_catch_crashes(bool json, const char *plugin_path)
{
    crash_json = json;
    crash_path = plugin_path;
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        signal(sigs[i], on_crash);
    }
}
