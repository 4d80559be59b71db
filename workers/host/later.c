/* Work a channel instance keeps in Redis for later: deliveries waiting for
 * their next try, and collections (a digest, an aggregated public post)
 * waiting for their send time. One mechanism for both: a sorted set of
 * jobs by due time with leases, so a worker that dies holding a job only
 * delays it.
 *
 *   bb:later:<inst>                  sorted set: member -> due time (ms); while a worker
 *                                    holds a job, its score is the lease's end
 *   bb:later:<inst>:jobs             hash: member -> PendingDelivery
 *   bb:collect:<inst>:<who>          hash: delivery id -> packed Notification (collecting)
 *   bb:collect:<inst>:<who>:sending  the same, frozen when its send starts: items that
 *                                    arrive meanwhile go to a fresh collection
 *
 * Members: "r:<delivery id>" a retry, "c:<u|g><id>" a user's or group's
 * collection (<who> above is "<u|g><id>").
 *
 * Taking due jobs is one script (due -> leased, collections frozen), and
 * so is each change after a send, so two workers never hold one job and a
 * crash at any point leaves either the old state or the new one. What is
 * held by a worker that dies comes back when the lease (claim_idle) ends;
 * the bb:sent record then keeps it from being sent twice.
 *
 * Erasure: the scripts that add a person's data (collect, park) are given
 * bb:user:<id> for a user recipient and refuse when it no longer exists,
 * with USER_GONE and nothing written (a refused park also drops the job
 * and the delivery's record). Erasure deletes bb:user:<id> first and then
 * sweeps these keys (buurtbusctl erase-user), so whatever a worker wrote
 * before is swept and nothing comes back after. A group recipient (the
 * social channel) has no such key and is never refused.
 *
 * Threads: the event-loop thread only. */
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_conn.h"
#include "bb_err.h"
#include "delivery.pb-c.h"
#include "host.h"
#include "log.h"

#define TAKE_MAX 64

/* collect_lua's and park_lua's "return 2": BB_LATER_USER_GONE (host.h). */
#define USER_GONE BB_LATER_USER_GONE

/* KEYS: zset jobs; ARGV: now lease_until count collect_prefix */
static const char take_lua[] =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])\n"
    "local out = {}\n"
    "for _, m in ipairs(due) do\n"
    "  redis.call('ZADD', KEYS[1], ARGV[2], m)\n"
    "  local items = {}\n"
    "  if string.sub(m, 1, 2) == 'c:' then\n"
    "    local live = ARGV[4] .. string.sub(m, 3)\n"
    "    local sending = live .. ':sending'\n"
    "    if redis.call('EXISTS', sending) == 0 and redis.call('EXISTS', live) == 1 then\n"
    "      redis.call('RENAME', live, sending)\n"
    "    end\n"
    "    items = redis.call('HGETALL', sending)\n"
    "  end\n"
    "  out[#out + 1] = {m, redis.call('HGET', KEYS[2], m) or '', items}\n"
    "end\n"
    "return out\n";

/* KEYS: zset jobs record [user]; ARGV: member due blob. KEYS[4] (a user
 * recipient's bb:user:<id>) gone: the job and the record dropped, USER_GONE. */
static const char park_lua[] = "if #KEYS == 4 and redis.call('EXISTS', KEYS[4]) == 0 then\n"
                               "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
                               "  redis.call('HDEL', KEYS[2], ARGV[1])\n"
                               "  redis.call('DEL', KEYS[3])\n"
                               "  return 2\n"
                               "end\n"
                               "redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n"
                               "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])\n"
                               "redis.call('DEL', KEYS[3])\n"
                               "return 1\n";

/* KEYS: zset jobs; ARGV: member */
static const char finish_lua[] = "redis.call('ZREM', KEYS[1], ARGV[1])\n"
                                 "redis.call('HDEL', KEYS[2], ARGV[1])\n"
                                 "return 1\n";

/* KEYS: zset jobs live [user]; ARGV: member field item due blob max.
 * KEYS[4] (a user recipient's bb:user:<id>) gone: USER_GONE, nothing written. */
static const char collect_lua[] =
    "if #KEYS == 4 and redis.call('EXISTS', KEYS[4]) == 0 then return 2 end\n"
    "if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 and\n"
    "   redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[6]) then return 0 end\n"
    "redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])\n"
    "if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then\n"
    "  redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])\n"
    "  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])\n"
    "end\n"
    "return 1\n";

/* KEYS: zset jobs live sending; ARGV: member next_due next_blob */
static const char flushed_lua[] = "redis.call('DEL', KEYS[4])\n"
                                  "if redis.call('EXISTS', KEYS[3]) == 1 then\n"
                                  "  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])\n"
                                  "  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])\n"
                                  "else\n"
                                  "  redis.call('ZREM', KEYS[1], ARGV[1])\n"
                                  "  redis.call('HDEL', KEYS[2], ARGV[1])\n"
                                  "end\n"
                                  "return 1\n";

struct bb_later {
    struct bb_conn *commands;
    char zset[200], jobs[210], prefix[200];
    int64_t poll_ms, lease_ms;
    bb_later_job_fn *on_job;
    bb_later_room_fn *room;
    void *arg;
    struct event *tick;
    bool taking, stopped;
    bool more;      /* the last take got all it asked for: more may be due */
    unsigned asked; /* how many the take in flight asked for */
};

struct call {
    bb_later_done_fn *done;
    void *arg;
};

static void arm(struct bb_later *l, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(l->tick, &tv);
}

static void on_take(struct bb_conn *c, redisReply *r, void *priv)
{
    struct bb_later *l = priv;
    l->taking = false;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR) {
            bb_warn("taking due jobs failed", "zset=%s err=\"%.120s\"", l->zset, r->str);
        }
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 3 ||
            e->element[0]->type != REDIS_REPLY_STRING) {
            continue;
        }
        struct bb_later_job job = {
            .member = e->element[0]->str,
            .blob = e->element[1]->type == REDIS_REPLY_STRING ? e->element[1]->str : "",
            .bloblen = e->element[1]->type == REDIS_REPLY_STRING ? e->element[1]->len : 0,
            .items = e->element[2]->type == REDIS_REPLY_ARRAY ? e->element[2] : NULL,
        };
        l->on_job(l->arg, &job);
    }
    l->more = r->elements > 0 && r->elements == l->asked;
    if (l->more && !l->stopped && l->room(l->arg) > 0) {
        arm(l, 0); /* more may be due */
    }
}

void bb_later_kick(struct bb_later *l)
{
    if (l && l->more && !l->taking && !l->stopped) {
        l->more = false;
        arm(l, 0);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_later *l = arg;
    if (l->stopped) {
        return;
    }
    arm(l, l->poll_ms);
    unsigned room = l->room(l->arg);
    if (l->taking || room == 0 || !bb_conn_is_ready(l->commands)) {
        return;
    }
    int64_t now = bb_now_ms();
    char snow[24], slease[24], scount[16];
    snprintf(snow, sizeof(snow), "%" PRId64, now);
    snprintf(slease, sizeof(slease), "%" PRId64, now + l->lease_ms);
    l->asked = room < TAKE_MAX ? room : TAKE_MAX;
    snprintf(scount, sizeof(scount), "%u", l->asked);
    const char *argv[] = {"EVAL", take_lua, "2", l->zset, l->jobs, snow, slease, scount, l->prefix};
    if (bb_conn_command(l->commands, on_take, l, 9, argv, NULL) == BB_OK) {
        l->taking = true;
    }
}

struct bb_later *bb_later_new(struct event_base *base, struct bb_conn *commands,
                              const char *instance, int64_t poll_ms, int64_t lease_ms,
                              bb_later_job_fn *on_job, bb_later_room_fn *room, void *arg)
{
    struct bb_later *l = calloc(1, sizeof(*l));
    if (!l) {
        return NULL;
    }
    l->commands = commands;
    snprintf(l->zset, sizeof(l->zset), "bb:later:%s", instance);
    snprintf(l->jobs, sizeof(l->jobs), "%s:jobs", l->zset);
    snprintf(l->prefix, sizeof(l->prefix), "bb:collect:%s:", instance);
    l->poll_ms = poll_ms;
    l->lease_ms = lease_ms;
    l->on_job = on_job;
    l->room = room;
    l->arg = arg;
    l->tick = evtimer_new(base, on_tick, l);
    if (!l->tick) {
        free(l);
        return NULL;
    }
    arm(l, poll_ms);
    return l;
}

void bb_later_stop(struct bb_later *l)
{
    if (l) {
        l->stopped = true;
        evtimer_del(l->tick);
    }
}

void bb_later_free(struct bb_later *l)
{
    if (l) {
        event_free(l->tick);
        free(l);
    }
}

static void on_call(struct bb_conn *c, redisReply *r, void *priv)
{
    struct call *k = priv;
    bool ok = r && r->type == REDIS_REPLY_INTEGER;
    if (r && r->type == REDIS_REPLY_ERROR) {
        bb_warn("later script failed", "err=\"%.160s\"", r->str);
    }
    bb_later_done_fn *done = k->done;
    void *arg = k->arg;
    long long v = ok ? r->integer : -1;
    free(k);
    if (done) {
        done(arg, v);
    }
}

/* Runs script with nkeys keys then the other args; done(arg, integer reply or -1). */
static int eval(struct bb_later *l, const char *script, int nkeys, int nargs, const char **args,
                const size_t *lens, bb_later_done_fn *done, void *arg)
{
    const char *argv[16];
    size_t len[16];
    char snkeys[4];
    snprintf(snkeys, sizeof(snkeys), "%d", nkeys);
    argv[0] = "EVAL";
    argv[1] = script;
    argv[2] = snkeys;
    len[0] = 4;
    len[1] = strlen(script);
    len[2] = strlen(snkeys);
    for (int i = 0; i < nargs; i++) {
        argv[3 + i] = args[i];
        len[3 + i] = lens && lens[i] != (size_t)-1 ? lens[i] : strlen(args[i]);
    }
    struct call *k = malloc(sizeof(*k));
    if (!k) {
        return BB_ENOMEM;
    }
    *k = (struct call){done, arg};
    int rc = bb_conn_command(l->commands, on_call, k, 3 + nargs, argv, len);
    if (rc != BB_OK) {
        free(k);
    }
    return rc;
}

#define TEXT ((size_t)-1)

/* The key whose absence means the job's recipient was erased: bb:user:<id>
 * for a user, from the job's PendingDelivery; false for a group (or a blob
 * that does not decode, which the job's reader dead-letters). */
static bool guard_key(const void *blob, size_t len, char *out, size_t cap)
{
    Bb__PendingDelivery *pd = bb__pending_delivery__unpack(NULL, len, blob);
    bool user =
        pd && pd->recipient_kind != BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP && pd->recipient != 0;
    if (user) {
        snprintf(out, cap, "bb:user:%" PRIu64, pd->recipient);
    }
    if (pd) {
        bb__pending_delivery__free_unpacked(pd, NULL);
    }
    return user;
}

int bb_later_park(struct bb_later *l, const char *member, int64_t due_ms, const void *blob,
                  size_t len, const char *record_key, bb_later_done_fn *done, void *arg)
{
    char due[24], user[40];
    bool guarded = guard_key(blob, len, user, sizeof(user));
    snprintf(due, sizeof(due), "%" PRId64, due_ms);
    if (!guarded) {
        const char *args[] = {l->zset, l->jobs, record_key, member, due, blob};
        const size_t lens[] = {TEXT, TEXT, TEXT, TEXT, TEXT, len};
        return eval(l, park_lua, 3, 6, args, lens, done, arg);
    }
    const char *args[] = {l->zset, l->jobs, record_key, user, member, due, blob};
    const size_t lens[] = {TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, len};
    return eval(l, park_lua, 4, 7, args, lens, done, arg);
}

int bb_later_finish(struct bb_later *l, const char *member, bb_later_done_fn *done, void *arg)
{
    const char *args[] = {l->zset, l->jobs, member};
    return eval(l, finish_lua, 2, 3, args, NULL, done, arg);
}

/* The collection keys of a "c:<who>" member. */
static void collection_keys(const struct bb_later *l, const char *member, char *live, size_t cap,
                            char *sending, size_t scap)
{
    snprintf(live, cap, "%s%s", l->prefix, member + 2);
    snprintf(sending, scap, "%s%s:sending", l->prefix, member + 2);
}

int bb_later_collect(struct bb_later *l, const char *member, const char *field, const void *item,
                     size_t itemlen, int64_t due_ms, const void *blob, size_t bloblen, int64_t max,
                     bb_later_done_fn *done, void *arg)
{
    char live[300], sending[320], due[24], smax[24], user[40];
    bool guarded = guard_key(blob, bloblen, user, sizeof(user));
    collection_keys(l, member, live, sizeof(live), sending, sizeof(sending));
    snprintf(due, sizeof(due), "%" PRId64, due_ms);
    snprintf(smax, sizeof(smax), "%" PRId64, max);
    if (!guarded) {
        const char *args[] = {l->zset, l->jobs, live, member, field, item, due, blob, smax};
        const size_t lens[] = {TEXT, TEXT, TEXT, TEXT, TEXT, itemlen, TEXT, bloblen, TEXT};
        return eval(l, collect_lua, 3, 9, args, lens, done, arg);
    }
    const char *args[] = {l->zset, l->jobs, live, user, member, field, item, due, blob, smax};
    const size_t lens[] = {TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, itemlen, TEXT, bloblen, TEXT};
    return eval(l, collect_lua, 4, 10, args, lens, done, arg);
}

int bb_later_flushed(struct bb_later *l, const char *member, int64_t next_due_ms, const void *blob,
                     size_t bloblen, bb_later_done_fn *done, void *arg)
{
    char live[300], sending[320], due[24];
    collection_keys(l, member, live, sizeof(live), sending, sizeof(sending));
    snprintf(due, sizeof(due), "%" PRId64, next_due_ms);
    const char *args[] = {l->zset, l->jobs, live, sending, member, due, blob};
    const size_t lens[] = {TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, bloblen};
    return eval(l, flushed_lua, 4, 7, args, lens, done, arg);
}
