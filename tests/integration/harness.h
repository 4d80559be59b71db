/* Integration test harness: a real redis-server per test program, and a
 * way to run the built programs (buurtbusctl, buurtbus-broker) against it.
 *
 * The server listens on a free loopback port in a fresh temporary
 * directory, without persistence. It is always stopped: by
 * bb_harness_finish, or by an atexit handler if the test exits some other
 * way; the server also gets SIGTERM if the test process dies
 * (PR_SET_PDEATHSIG). The temporary directory (redis.log, anything a test
 * writes with bb_harness_path) is removed after a passing run, kept after
 * a failing one or when BB_KEEP_TMP=1, and its path is printed.
 *
 * What the worker end-to-end tests share on top of this (cmocka checks,
 * DeliveryBatch packing, the worker as a child, receipts) is in
 * worker_kit.h.
 *
 * Threads: call everything from the test's main thread. */
#ifndef BB_HARNESS_H
#define BB_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

struct bb_redis_server {
    pid_t pid;
    int port;
    char host[16];  /* "127.0.0.1" */
    char addr[32];  /* "127.0.0.1:port", for --redis */
    char dir[256];  /* the temporary directory */
    char sock[300]; /* its unix socket, inside dir */
};

/* Creates the temporary directory and starts redis-server (from
 * $BB_REDIS_SERVER, the PATH or /usr/bin), retrying on another port if the
 * chosen one was taken, and waits until it answers PING (10 s). Returns the
 * server (owned by the harness) or NULL after printing why. */
const struct bb_redis_server *bb_harness_redis_start(void);

/* As bb_harness_redis_start, with the config file conf (NULL: none) read
 * first and the NULL-terminated extra arguments (NULL: none; at most 32,
 * e.g. "--aclfile", path) after the harness' own, so they override them.
 * Both are borrowed until the server has started. A server that answers
 * PING with NOAUTH (default user off) counts as started. */
const struct bb_redis_server *bb_harness_redis_start_ex(const char *conf,
                                                        const char *const extra[]);

/* A new synchronous connection to the server (caller frees with
 * redisFree); NULL after printing why. */
redisContext *bb_harness_redis_connect(const struct bb_redis_server *s);

/* Stops the server (SIGTERM, SIGKILL after 5 s) and removes the temporary
 * directory unless failed or BB_KEEP_TMP=1. Idempotent. */
void bb_harness_finish(bool failed);

/* Writes the path of name inside the temporary directory into buf and
 * returns buf. */
char *bb_harness_path(char *buf, size_t cap, const char *name);

/* Writes text to a file in the temporary directory; returns its path in
 * buf, or NULL. */
char *bb_harness_write_file(char *buf, size_t cap, const char *name, const char *text);

/* The outcome of a program run. out and err are NUL-terminated, owned by
 * the caller (free with bb_run_result_free). */
struct bb_run_result {
    int status; /* exit status 0..255; 128 + signal if killed; -1 if it could not run */
    char *out;
    size_t outlen;
    char *err;
    size_t errlen;
};

/* Runs argv[0] with argv (NULL-terminated), stdin from in (may be NULL:
 * /dev/null), capturing stdout and stderr; kills it after timeout_s.
 * Returns 0 if it ran (see res->status), -1 if it could not be started. */
int bb_harness_run(const char *const argv[], const char *in, int timeout_s,
                   struct bb_run_result *res);
void bb_run_result_free(struct bb_run_result *res);

/* Starts a stand-in provider: `python3 script portfile logfile`, a server
 * that picks its own port and writes it to portfile. Waits up to 10 s for
 * the port. Returns the server's pid with the port in *port, or -1. */
pid_t bb_harness_start_stand_in(const char *script, const char *portfile, const char *logfile,
                                int *port);

/* A loopback TCP port nobody listens on right now (bind to 0, read, close),
 * or -1. */
int bb_harness_free_port(void);
/* GET path from 127.0.0.1:port over HTTP/1.0; the whole response (status
 * line, headers, body) NUL-terminated in buf. Returns the status code, or
 * -1 if nothing answered. */
int bb_harness_http_get(int port, const char *path, char *buf, size_t cap);

/* Sleeps ms milliseconds. */
void bb_harness_sleep_ms(int ms);

/* Entries of stream that its consumer group has not read (lag) or not
 * acked (pending); a stream without the group counts as 1. */
long long bb_harness_stream_unfinished(redisContext *c, const char *stream, const char *group);

/* What a worker's channel instance has not finished: entries of stream its
 * consumer group has not read (lag) or not acked (pending), plus jobs in
 * bb:later:<instance> (waiting retries and collections). 0 when all is
 * done; a stream without the group counts as unfinished. */
long long bb_harness_worker_unfinished(redisContext *c, const char *stream, const char *group,
                                       const char *instance);

#endif
