/* One Redis connection on a libevent loop, for the broker and the workers:
 * hiredis async, connect and command timeouts from libevent timers
 * (hiredis 0.14 has none), TCP keepalive, AUTH, and reconnection with
 * jittered exponential backoff. Also the clocks both use.
 *
 * Threads: a bb_conn lives on the thread that runs its event base. */
#ifndef BB_CONN_H
#define BB_CONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct redisReply;

struct bb_conn;
typedef void bb_conn_ready_fn(struct bb_conn *c, void *arg);
/* reply is NULL when the command failed with the connection (timeout, drop). */
typedef void bb_reply_fn(struct bb_conn *c, struct redisReply *reply, void *priv);

struct bb_conn_opts {
    const char *name; /* for logs: "reader", "commands", "directory" */
    const char *addr;
    const char *user;     /* ACL user; NULL or "": the default user (AUTH <password>) */
    const char *password; /* NULL or "": no AUTH */
    int64_t connect_timeout_ms, command_timeout_ms, reconnect_min_ms, reconnect_max_ms;
    int keepalive_s;
    bb_conn_ready_fn *on_ready; /* after connect + AUTH; also after every reconnect */
    bb_conn_ready_fn *on_down;
    void *arg;
};

struct bb_conn *bb_conn_new(struct event_base *base, const struct bb_conn_opts *o);
void bb_conn_free(struct bb_conn *c);
bool bb_conn_is_ready(const struct bb_conn *c);
unsigned bb_conn_outstanding(const struct bb_conn *c);
/* Sends a command; cb gets the reply (hiredis frees it after cb returns).
 * Returns 0 or BB_AGAIN when the connection is not ready. */
int bb_conn_command(struct bb_conn *c, bb_reply_fn *cb, void *priv, int argc, const char **argv,
                    const size_t *argvlen);
int bb_conn_commandf(struct bb_conn *c, bb_reply_fn *cb, void *priv, const char *fmt, ...);
/* Closes the connection and reconnects after backoff (used on protocol errors). */
void bb_conn_reset(struct bb_conn *c, const char *why);

/* The checks and defaults both daemons apply to their Redis settings.
 * Returns 0, or BB_ECONFIG with the message in err. */
int bb_conn_check_settings(const char *addr, const char *group, char *err, size_t errlen);
/* The AUTH settings: a user name (may be NULL or "") needs a password, and
 * holds no white space or control character (AUTH would split it).
 * Returns 0, or BB_ECONFIG with the message in err (never the password). */
int bb_conn_check_auth(const char *user, const char *password, char *err, size_t errlen);
/* If *name is empty, replaces it (heap string) with "<hostname>-<pid>".
 * Returns 0 or BB_ENOMEM. */
int bb_consumer_name_default(char **name);

/* Connections lost, all bb_conns of the process together (for metrics). */
extern _Atomic uint64_t bb_conn_reconnects;

int64_t bb_now_ms(void);  /* wall clock, Unix ms */
int64_t bb_mono_ms(void); /* monotonic */
uint64_t bb_mono_ns(void);

#endif
