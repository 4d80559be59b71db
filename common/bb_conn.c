/* One Redis connection on an event loop (see bb_conn.h). hiredis frees a
 * reply after our callback returns; callbacks copy what they keep. */
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bb_err.h"
#include "bb_conn.h"
#include "log.h"

enum conn_state { CS_IDLE, CS_CONNECTING, CS_AUTH, CS_READY, CS_WAIT };

struct bb_conn {
    struct event_base *base;
    struct bb_conn_opts o;
    char *addr, *user, *password, *name;
    redisAsyncContext *ac;
    enum conn_state state;
    struct event *timer; /* connect deadline, reconnect backoff, command watchdog */
    struct event *watchdog;
    int64_t backoff_ms;
    int64_t progress_ms; /* last reply or send when idle */
    int64_t ready_ms;    /* when it last became ready */
    unsigned outstanding;
    uint64_t gen; /* bumps on every (re)connect; stale callbacks are ignored */
    /* While unreachable: since when, failed attempts, the last warning
     * (one at the loss, then one a minute; the attempts between at debug). */
    int64_t down_ms, warned_ms;
    unsigned attempts;
};

#define STILL_DOWN_WARN_MS 60000

_Atomic uint64_t bb_conn_reconnects;

struct pending {
    struct bb_conn *conn;
    uint64_t gen;
    bb_reply_fn *cb;
    void *priv;
};

int64_t bb_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t bb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t bb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void conn_start(struct bb_conn *c);

static void arm(struct event *ev, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(ev, &tv);
}

/* Drops the hiredis context (its pending callbacks run with NULL replies)
 * and schedules a reconnect. */
static void conn_drop(struct bb_conn *c, const char *why)
{
    bool was_ready = c->state == CS_READY;
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    c->state = CS_WAIT;
    c->gen++;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac); /* runs pending callbacks with NULL */
    }
    c->outstanding = 0;
    int64_t jitter = c->backoff_ms / 2 ? rand() % (c->backoff_ms / 2 + 1) : 0;
    int64_t wait = c->backoff_ms / 2 + jitter;
    int64_t now = bb_mono_ms();
    if (c->attempts++ == 0) {
        c->down_ms = c->warned_ms = now;
        bb_warn("redis connection lost", "conn=%s addr=%s reason=\"%s\" retry_ms=%lld", c->name,
                c->addr, why, (long long)wait);
    } else if (now - c->warned_ms >= STILL_DOWN_WARN_MS) {
        c->warned_ms = now;
        bb_warn("redis still unreachable", "conn=%s addr=%s reason=\"%s\" attempts=%u down_s=%lld",
                c->name, c->addr, why, c->attempts, (long long)((now - c->down_ms) / 1000));
    } else {
        bb_debug("redis reconnect failed", "conn=%s addr=%s reason=\"%s\" retry_ms=%lld", c->name,
                 c->addr, why, (long long)wait);
    }
    c->backoff_ms =
        c->backoff_ms * 2 > c->o.reconnect_max_ms ? c->o.reconnect_max_ms : c->backoff_ms * 2;
    atomic_fetch_add(&bb_conn_reconnects, 1);
    arm(c->timer, wait);
    if (was_ready && c->o.on_down) {
        c->o.on_down(c, c->o.arg);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct bb_conn *c = arg;
    if (c->state == CS_WAIT || c->state == CS_IDLE) {
        conn_start(c);
    } else if (c->state == CS_CONNECTING || c->state == CS_AUTH) {
        conn_drop(c, "connect timeout");
    }
}

/* Every 250 ms: a connection with commands outstanding and no reply for
 * longer than the command timeout is dead, even if TCP has not noticed. */
static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct bb_conn *c = arg;
    int64_t now = bb_mono_ms();
    if (c->state == CS_READY && now - c->ready_ms > 5000) {
        c->backoff_ms = c->o.reconnect_min_ms;
    }
    if (c->state == CS_READY && c->outstanding && now - c->progress_ms > c->o.command_timeout_ms) {
        conn_drop(c, "command timeout");
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct bb_conn *c = ac->data;
    if (!c) {
        return; /* we dropped it ourselves */
    }
    c->ac = NULL; /* hiredis frees the context after this callback */
    /* (the state stays: conn_drop tells on_down if it was ready) */
    conn_drop(c, status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
}

static void became_ready(struct bb_conn *c)
{
    c->state = CS_READY;
    /* The backoff resets only once the connection has stayed up a while
     * (watchdog): a server that accepts and then refuses us (full memory,
     * missing rights) must not be hammered at the shortest interval. */
    c->progress_ms = c->ready_ms = bb_mono_ms();
    evtimer_del(c->timer);
    if (c->attempts) {
        bb_info("redis connected", "conn=%s addr=%s user=%s attempts=%u down_ms=%lld", c->name,
                c->addr, c->user ? c->user : "default", c->attempts,
                (long long)(c->ready_ms - c->down_ms));
    } else {
        bb_info("redis connected", "conn=%s addr=%s user=%s", c->name, c->addr,
                c->user ? c->user : "default");
    }
    c->attempts = 0;
    if (c->o.on_ready) {
        c->o.on_ready(c, c->o.arg);
    }
}

static void on_auth(redisAsyncContext *ac, void *r, void *priv)
{
    struct bb_conn *c = ac->data;
    redisReply *reply = r;
    if (!c || c->state != CS_AUTH) {
        return;
    }
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        /* The server's reply ("WRONGPASS ...", "NOPERM ...") never holds
         * the password; the user name is not a secret. */
        bb_error("redis auth failed", "conn=%s addr=%s user=%s err=\"%s\"", c->name, c->addr,
                 c->user ? c->user : "default", reply ? reply->str : "no reply");
        conn_drop(c, "auth failed");
        return;
    }
    became_ready(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct bb_conn *c = ac->data;
    if (!c) {
        return;
    }
    if (status != REDIS_OK) {
        c->ac = NULL; /* hiredis frees it */
        c->state = CS_WAIT;
        conn_drop(c, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    if (c->password && *c->password) {
        c->state = CS_AUTH;
        if (c->user) {
            redisAsyncCommand(c->ac, on_auth, NULL, "AUTH %s %s", c->user, c->password);
        } else {
            redisAsyncCommand(c->ac, on_auth, NULL, "AUTH %s", c->password);
        }
        return;
    }
    became_ready(c);
}

static void conn_start(struct bb_conn *c)
{
    redisAsyncContext *ac;
    if (c->addr[0] == '/') {
        ac = redisAsyncConnectUnix(c->addr);
    } else {
        char host[256];
        const char *colon = strrchr(c->addr, ':');
        size_t hl = colon ? (size_t)(colon - c->addr) : strlen(c->addr);
        if (hl >= sizeof(host)) {
            hl = sizeof(host) - 1;
        }
        memcpy(host, c->addr, hl);
        host[hl] = '\0';
        ac = redisAsyncConnect(host, colon ? atoi(colon + 1) : 6379);
    }
    if (!ac || ac->err) {
        bb_warn("redis connect failed", "conn=%s addr=%s err=\"%s\"", c->name, c->addr,
                ac ? ac->errstr : "oom");
        if (ac) {
            redisAsyncFree(ac);
        }
        c->state = CS_WAIT;
        arm(c->timer, c->backoff_ms);
        c->backoff_ms =
            c->backoff_ms * 2 > c->o.reconnect_max_ms ? c->o.reconnect_max_ms : c->backoff_ms * 2;
        return;
    }
    c->ac = ac;
    ac->data = c;
    c->gen++;
    c->state = CS_CONNECTING;
    if (c->o.keepalive_s > 0 && c->addr[0] != '/') {
        /* hiredis 0.14 only has the fixed-interval form. */
        redisEnableKeepAlive(&ac->c);
    }
    redisLibeventAttach(ac, c->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    arm(c->timer, c->o.connect_timeout_ms);
}

struct bb_conn *bb_conn_new(struct event_base *base, const struct bb_conn_opts *o)
{
    struct bb_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->base = base;
    c->o = *o;
    c->addr = strdup(o->addr);
    c->user = o->user && *o->user ? strdup(o->user) : NULL;
    c->password = o->password ? strdup(o->password) : NULL;
    c->name = strdup(o->name);
    c->timer = evtimer_new(base, on_timer, c);
    c->watchdog = event_new(base, -1, EV_PERSIST, on_watchdog, c);
    if (!c->addr || !c->name || !c->timer || !c->watchdog || (o->password && !c->password) ||
        (o->user && *o->user && !c->user)) {
        bb_conn_free(c);
        return NULL;
    }
    c->backoff_ms = o->reconnect_min_ms > 0 ? o->reconnect_min_ms : 100;
    arm(c->watchdog, 250);
    conn_start(c);
    return c;
}

void bb_conn_free(struct bb_conn *c)
{
    if (!c) {
        return;
    }
    if (c->ac) {
        c->ac->data = NULL;
        redisAsyncFree(c->ac);
    }
    if (c->timer) {
        event_free(c->timer);
    }
    if (c->watchdog) {
        event_free(c->watchdog);
    }
    free(c->addr);
    free(c->user);
    free(c->password);
    free(c->name);
    free(c);
}

bool bb_conn_is_ready(const struct bb_conn *c)
{
    return c->state == CS_READY;
}

unsigned bb_conn_outstanding(const struct bb_conn *c)
{
    return c->outstanding;
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct pending *p = privdata;
    struct bb_conn *c = p->conn;
    bool live = ac->data == c && p->gen == c->gen;
    if (live) {
        c->outstanding--;
        c->progress_ms = bb_mono_ms();
    }
    /* A reply from a context we already dropped is NULL; pass it on so the
     * owner can retry. */
    if (p->cb) {
        p->cb(c, live ? r : NULL, p->priv);
    }
    free(p);
}

/* The bookkeeping every command carries to on_reply; NULL if not ready. */
static struct pending *pending_new(struct bb_conn *c, bb_reply_fn *cb, void *priv)
{
    if (c->state != CS_READY) {
        return NULL;
    }
    struct pending *p = malloc(sizeof(*p));
    if (!p) {
        return NULL;
    }
    *p = (struct pending){c, c->gen, cb, priv};
    if (!c->outstanding) {
        c->progress_ms = bb_mono_ms();
    }
    return p;
}

static int pending_sent(struct bb_conn *c, struct pending *p, int rc)
{
    if (rc != REDIS_OK) {
        free(p);
        return BB_EIO;
    }
    c->outstanding++;
    return BB_OK;
}

int bb_conn_command(struct bb_conn *c, bb_reply_fn *cb, void *priv, int argc, const char **argv,
                    const size_t *argvlen)
{
    struct pending *p = pending_new(c, cb, priv);
    if (!p) {
        return c->state != CS_READY ? BB_AGAIN : BB_ENOMEM;
    }
    return pending_sent(c, p, redisAsyncCommandArgv(c->ac, on_reply, p, argc, argv, argvlen));
}

int bb_conn_commandf(struct bb_conn *c, bb_reply_fn *cb, void *priv, const char *fmt, ...)
{
    struct pending *p = pending_new(c, cb, priv);
    if (!p) {
        return c->state != CS_READY ? BB_AGAIN : BB_ENOMEM;
    }
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(c->ac, on_reply, p, fmt, ap);
    va_end(ap);
    return pending_sent(c, p, rc);
}

void bb_conn_reset(struct bb_conn *c, const char *why)
{
    if (c->state == CS_READY || c->state == CS_CONNECTING || c->state == CS_AUTH) {
        conn_drop(c, why);
    }
}

int bb_conn_check_auth(const char *user, const char *password, char *err, size_t errlen)
{
    if (!user || !*user) {
        return BB_OK;
    }
    for (const char *p = user; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            snprintf(err, errlen, "redis_user: no spaces or control characters in a user name");
            return BB_ECONFIG;
        }
    }
    if (!password || !*password) {
        snprintf(err, errlen, "redis_user %s needs redis_password_file (an ACL user's password)",
                 user);
        return BB_ECONFIG;
    }
    return BB_OK;
}

int bb_conn_check_settings(const char *addr, const char *group, char *err, size_t errlen)
{
    /* hiredis 0.14 resolves host names with a blocking call on the loop. */
    if (!addr[0] ||
        (addr[0] != '/' && strspn(addr, "0123456789.:[]abcdefABCDEF") != strlen(addr))) {
        snprintf(err, errlen,
                 "redis: '%s' is not an IP literal or socket path (host names would be resolved "
                 "with a blocking call)",
                 addr);
        return BB_ECONFIG;
    }
    if (!group[0]) {
        snprintf(err, errlen, "group: must not be empty");
        return BB_ECONFIG;
    }
    return BB_OK;
}

int bb_consumer_name_default(char **name)
{
    if (*name && (*name)[0]) {
        return BB_OK;
    }
    char host[64] = "buurtbus", buf[128];
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(buf, sizeof(buf), "%s-%d", host, (int)getpid());
    char *copy = strdup(buf);
    if (!copy) {
        return BB_ENOMEM;
    }
    free(*name);
    *name = copy;
    return BB_OK;
}
