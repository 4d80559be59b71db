/* Worker test kit: what the end-to-end tests of buurtbus-worker and its
 * plug-ins (tests/plugins/) share, on top of the harness' redis-server.
 *
 * - the cmocka group fixtures (bb_kit_setup, bb_kit_teardown);
 * - Redis commands that must succeed (bb_kit_cmd, bb_kit_int);
 * - a DeliveryBatch written as the broker would: a standard report
 *   (bb_kit_report) that a test changes where it needs to, zstd-packed
 *   into a batch (bb_kit_batch) and added to a stream (bb_kit_add_batch);
 * - the built worker and a stand-in provider as child processes
 *   (bb_kit_spawn_worker, bb_kit_stand_in, bb_kit_stop) and
 *   --check-config runs (bb_kit_check_config, bb_kit_check_configs);
 * - what the worker left behind: receipts in bb:receipts and dead letters
 *   in bb:dead, counted by outcome, delivery id and reason.
 *
 * Every function checks with cmocka: a failure ends the running test
 * case, so call them only from inside one (or its setup).
 *
 * Threads: the test's main thread only. */
#ifndef BB_WORKER_KIT_H
#define BB_WORKER_KIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#include "delivery.pb-c.h"
#include "harness.h"
#include "wire.h"

/* How long bb_kit_stop waits for a child after the signal, in ms. */
#define BB_KIT_STOP_MS 10000

/* The standard report's text: quotes, a line break, a backslash, non-ASCII. */
#define BB_KIT_TEXT "Twee mannen \"kijken\" bij\nde ramen \\ ç — klaar"

/* ---- fixtures ---------------------------------------------------------------------------- */

/* A group setup: starts the harness' redis-server and connects to it.
 * Returns 0, or -1 (after printing why) for cmocka to skip the group. */
int bb_kit_setup(const struct bb_redis_server **srv, redisContext **rc);

/* A group teardown: SIGKILLs the worker and SIGTERMs the stand-in still
 * running (pids <= 0 are not; either pointer may be NULL), frees *rc;
 * sets them to 0 and NULL. */
void bb_kit_teardown(redisContext **rc, pid_t *worker, pid_t *stand_in);

/* ---- Redis ------------------------------------------------------------------------------- */

/* Runs a command (hiredis format); asserts a reply that is not an error.
 * The caller frees it with freeReplyObject. */
redisReply *bb_kit_cmd(redisContext *c, const char *fmt, ...);

/* Runs a command; asserts an integer reply and returns it. */
long long bb_kit_int(redisContext *c, const char *fmt, ...);

/* XADD stream * p <p>: one entry as the broker writes it. */
void bb_kit_xadd(redisContext *c, const char *stream, const void *p, size_t len);

/* ---- DeliveryBatch ----------------------------------------------------------------------- */

/* Fills nt with the standard report: schema 1, a report with id
 * report_id (borrowed), 2024-11-28 13:20 UTC (1732800000000), burglary,
 * in progress, from a resident, locale "nl", title "Inbraak",
 * BB_KIT_TEXT, author "Jan", cell "u1hbcq7" at 51.69, 5.30; no group,
 * no media. The test sets any other field afterwards. */
void bb_kit_report(Bb__Notification *nt, const char *report_id);

/* What a batch carries besides its notification. Fields left 0 take the
 * default named. */
struct bb_kit_batch {
    int channel;                 /* Bb__Channel (required) */
    int recipient_kind;          /* Bb__RecipientKind; 0: user */
    uint64_t first;              /* recipients first .. first + n - 1 */
    size_t n;                    /* how many (at most 512) */
    const char *key;             /* notification key; NULL: "r:<report_id>" */
    const struct bb_zdict *dict; /* compressed with it; NULL: no dictionary */
    int64_t source_time_ms;      /* 0: not set */
};

/* Packs a DeliveryBatch (schema 1, locale "nl", batch_count 1, the
 * notification's urgency) of nt, zstd-compressed (level 3), into out;
 * asserts it fits in cap and returns its length. */
size_t bb_kit_batch(uint8_t *out, size_t cap, const Bb__Notification *nt,
                    const struct bb_kit_batch *b);

/* bb_kit_batch, then bb_kit_xadd to stream. */
void bb_kit_add_batch(redisContext *c, const char *stream, const Bb__Notification *nt,
                      const struct bb_kit_batch *b);

/* ---- the worker -------------------------------------------------------------------------- */

/* Writes conf to conf_name in the harness' directory and starts
 * `program -c <that file>` with stderr appended to log_name there (a
 * broker, a worker). Asserts the fork; returns the child's pid. */
pid_t bb_kit_spawn(const char *program, const char *conf_name, const char *conf,
                   const char *log_name);

/* Writes conf to worker.conf in the harness' directory and starts
 * `worker -c <that file>` with stderr appended to log_name there (NULL:
 * "worker.log"). Asserts the fork; returns the child's pid. */
pid_t bb_kit_spawn_worker(const char *worker, const char *conf, const char *log_name);

/* Starts the stand-in provider script (bb_harness_start_stand_in) with
 * its log at log_name in the harness' directory (removed first; its path
 * written to log) and its port file beside it (<log_name>.port). Asserts
 * it started; returns its pid, its port in *port. */
pid_t bb_kit_stand_in(const char *script, const char *log_name, char *log, size_t cap, int *port);

/* Sends sig to *pid and waits up to timeout_ms for it to end, then
 * SIGKILLs and reaps it. Sets *pid to 0. Returns the wait status, or -1
 * if *pid was not running (<= 0) or had to be killed. */
int bb_kit_stop(pid_t *pid, int sig, int timeout_ms);

/* One --check-config case: the options after "redis 127.0.0.1:1" and
 * the plug-in folder, what the worker must exit with and say. */
struct bb_kit_check {
    const char *options;
    int status;
    const char *says;
};

/* Runs `worker -c check.conf --check-config`, the configuration being
 * Redis at 127.0.0.1:1 (never reached), plugin_dir and c->options;
 * asserts the exit status and that stdout or stderr holds c->says
 * (printing both when not). */
void bb_kit_check_config(const char *worker, const char *plugin_dir, const struct bb_kit_check *c);

/* bb_kit_check_config for each of n cases. */
void bb_kit_check_configs(const char *worker, const char *plugin_dir,
                          const struct bb_kit_check *cases, size_t n);

/* ---- what the worker left ---------------------------------------------------------------- */

/* The receipts in bb:receipts, unpacked in stream order (each entry's
 * field is asserted to be "p"); *out is owned by the caller, freed with
 * bb_kit_receipts_free. Returns how many. */
size_t bb_kit_receipts_read(redisContext *c, Bb__Receipt ***out);
void bb_kit_receipts_free(Bb__Receipt **rs, size_t n);

/* Receipts with outcome (a Bb__Outcome), delivery id and reason; NULL
 * delivery or reason: any. */
unsigned bb_kit_receipts(redisContext *c, int outcome, const char *delivery, const char *reason);

/* Dead letters in bb:dead whose reason (asserted to be each entry's first
 * field) is reason; NULL: any. */
unsigned bb_kit_dead(redisContext *c, const char *reason);

#endif
