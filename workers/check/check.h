/* buurtbus-plugin-check internals: the report (report.c), the host it plays
 * for the plug-in under test (host.c), the deliveries it generates
 * (deliveries.c) and the checks themselves (checks.c).
 *
 * Threads: one. The tool's main thread runs the event loop and calls every
 * plug-in callback; host.c notes (and reports) any call from another one. */
#ifndef BB_CHECK_H
#define BB_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buurtbus/channel.h"

struct event_base;

/* ---- report.c ------------------------------------------------------------------------------ */

enum bb_check_result { BB_CHECK_OK, BB_CHECK_FAIL, BB_CHECK_SKIP };

/* Starts check name (e.g. "send/http_503"); until it ends, a crash inside
 * the plug-in is reported against it. Returns its index. */
size_t bb_check_begin(const char *name);
/* Ends check i (the last begun) with a result and a reason (printf). A
 * check already failed (bb_check_fail) stays failed. */
void bb_check_end(size_t i, enum bb_check_result r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Fails check i now, also after it ended (a late second done()). The first
 * reason is kept. */
void bb_check_fail(size_t i, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The check running now, or SIZE_MAX between checks. */
size_t bb_check_current(void);
/* Prints every check (text or JSON) to stdout; returns the exit code
 * (0 all ok or skipped, 1 a failure). */
int bb_check_report(bool json, const char *plugin_path);
/* Check i's result and reason (for a forked child to pass back), and
 * setting them as they are (in the parent). */
enum bb_check_result bb_check_get(size_t i, char *reason, size_t cap);
void bb_check_set(size_t i, enum bb_check_result r, const char *reason);
/* Back to the default signal actions (a forked child dies of its crash). */
void bb_check_uncatch_crashes(void);
/* Catches SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT: the running check
 * fails with "crashed", the report is printed and the tool exits 1. */
void bb_check_catch_crashes(bool json, const char *plugin_path);

/* ---- host.c -------------------------------------------------------------------------------- */

/* One scripted provider answer to http(). */
struct bb_script {
    const char *name;   /* the check's suffix: "http_503" */
    long status;        /* 0: transport error */
    const char *error;  /* with status 0 */
    long retry_after_s; /* -1 none */
    long delay_ms;      /* 0: the next loop iteration (as the real host: never inside http()) */
};

struct bb_check_host_opts {
    const char *plugin_name;
    const char *redis; /* host:port, or NULL: redis() fails every command (NULL reply) */
    bool live;         /* curl(): run transfers for real; else they fail to connect */
};

/* The host the plug-in sees. Counts memory from its allocator, answers
 * http() from the current script, runs curl() easy handles on a curl multi
 * handle and redis() on a hiredis connection (or stubs, see above). */
int bb_check_host_init(struct event_base *base, const struct bb_check_host_opts *o, char *err,
                       size_t errlen);
/* Before destroy(): drops every answer not yet delivered and takes the
 * plug-in's easy handles off the multi handle, without calling done, as
 * the real host does (bb_host_abandon). */
void bb_check_host_abandon(void);
void bb_check_host_shutdown(void);
const struct bb_host_api *bb_check_host_api(void);
void bb_check_host_set_script(const struct bb_script *s);
/* --fixture PREFIX=STATUS:BODY (or STATUS:@file): http() requests whose URL
 * starts with PREFIX get this answer instead of the script's (a token
 * endpoint a plug-in calls before the provider). Before init. 0 or -1. */
int bb_check_host_add_fixture(const char *spec);

/* What the plug-in used since the last reset. */
struct bb_check_usage {
    unsigned http, curl, redis;
    unsigned http_pending, curl_pending, redis_pending; /* answers not yet delivered */
    unsigned bad_free;   /* host->free/realloc of memory not from host->alloc */
    unsigned off_thread; /* host calls from another thread */
    unsigned log_leaks;  /* log lines that carried a marked personal string */
    unsigned log_lines;
    unsigned bad_request; /* http() requests without method/url or with a short struct */
    unsigned http2;       /* http() requests asking for HTTP/2 */
    unsigned needle_hits; /* http() requests carrying the needle in a header or the body */
    unsigned fixture;     /* http() requests answered by a --fixture */
};
void bb_check_host_usage_reset(void);
/* http() requests are searched for s (borrowed; NULL: none), e.g. a
 * delivery id that should be the idempotency key. */
void bb_check_host_set_needle(const char *s);
const struct bb_check_host_opts *bb_check_host_opts(void);
struct bb_check_usage bb_check_host_usage(void);

/* Host allocator balance: live allocations and bytes. */
size_t bb_check_alloc_live(size_t *bytes);
/* True if p is a live block from host->alloc; *size gets its size. */
bool bb_check_alloc_owns(const void *p, size_t *size);
/* Strings that must never appear in a plug-in's log lines (the contacts'
 * addresses, tokens and the notification text of the generated deliveries). */
void bb_check_host_mark_private(const char *s);
/* Log lines over the whole run, and those that carried a marked string;
 * add_log_totals adds a forked child's. */
void bb_check_host_log_totals(unsigned *lines, unsigned *leaks);
void bb_check_host_add_log_totals(unsigned lines, unsigned leaks);
bool bb_check_on_loop_thread(void);

/* ---- deliveries.c -------------------------------------------------------------------------- */

struct bb_case {
    const char *name; /* "report_urgent", "hostile_long_text" */
    bool hostile;
    uint32_t need_caps; /* skip unless the plug-in has these */
    struct bb_delivery d;
};

/* The generated deliveries (valid ones first); built once, static. */
const struct bb_case *bb_cases(size_t *n);
/* A plain valid delivery for sends, with its own delivery_id (to a group
 * when caps has BB_CAP_PUBLIC). */
const struct bb_delivery *bb_send_delivery(unsigned i, uint32_t caps);
/* True if s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
bool bb_utf8_valid(const char *s, size_t len);
/* --contact NAME=VALUE: a contact field of the valid deliveries (email,
 * push_token, push_platform, locale, screen_name, unsubscribe_url,
 * endpoint); "@file" reads the value from a file. Returns 0 or -1. */
int bb_cases_set_contact(const char *name, const char *value);
void bb_cases_free(void);

/* ---- checks.c ------------------------------------------------------------------------------ */

struct bb_check_opts {
    const char *path;
    const char *const *sets; /* "name=value" */
    size_t nsets;
    const char *config;
    const char *instance;
    long timeout_ms; /* for done() */
    unsigned batch;  /* sends in flight for BB_CAP_BATCH */
};

/* Runs every check against the plug-in at o->path. */
void bb_check_run(struct event_base *base, const struct bb_check_opts *o);

#endif
