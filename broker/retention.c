/* Stream retention: every trim_interval, for each stream the broker reads
 * or writes (bb:reports, bb:report-status, bb:out:*), one script trims the
 * entries every consumer group has both read and acked, and nothing else:
 * the bound is the smallest over the groups of the oldest pending entry,
 * or the last delivered one when none is pending. A stream no group reads
 * yet is left whole. So the output streams hold only what is still to be
 * delivered (which keeps the backpressure check on XLEN meaningful), and
 * a lagging or stopped consumer never loses an entry to trimming.
 *
 * The same script watches for entries removed by anything else (an XTRIM
 * by hand, a MAXLEN set by another program): a group whose lag (Redis 7
 * counts what was added after the group's read position) exceeds the
 * stream's length had unread entries removed. That is reported once per
 * stream, group and size of the loss (bb:trim-alerts remembers it across
 * brokers): an error in the log, the metric
 * bb_broker_trimmed_unread_total, and a dead letter
 * `entries_trimmed_unread` naming the stream, the group, its read position
 * and the least number of entries lost. Pending entries trimmed away are
 * reported by the consumers that own them (entry_trimmed, entry_deleted).
 *
 * Threads: the I/O thread only (the broker's commands connection). */
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "directory.h"
#include "internal.h"
#include "log.h"

#define DEAD_STREAM "bb:dead"

/* KEYS[1] the stream, KEYS[2] bb:trim-alerts. Returns {entries trimmed,
 * {{group, last delivered id, entries lost at least}, ...}}. allow-oom:
 * trimming is what frees memory when Redis is full. */
static const char retention_lua[] =
    "#!lua flags=allow-oom\n"
    "local s = KEYS[1]\n"
    "if redis.call('EXISTS', s) == 0 then return {0, {}} end\n"
    "local groups = redis.call('XINFO', 'GROUPS', s)\n"
    "if #groups == 0 then return {0, {}} end\n"
    "local function less(a, b)\n"
    "  local am, as = string.match(a, '^(%d+)-(%d+)$')\n"
    "  local bm, bs = string.match(b, '^(%d+)-(%d+)$')\n"
    "  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)\n"
    "  return am < bm or (am == bm and as < bs)\n"
    "end\n"
    "local len = redis.call('XLEN', s)\n"
    "local bound, alerts = nil, {}\n"
    "for _, g in ipairs(groups) do\n"
    "  local f = {}\n"
    "  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end\n"
    "  local b = f['last-delivered-id']\n"
    "  if f['pending'] > 0 then\n"
    "    local p = redis.call('XPENDING', s, f['name'])\n"
    "    if less(p[2], b) then b = p[2] end\n"
    "  end\n"
    "  if bound == nil or less(b, bound) then bound = b end\n"
    "  local lag = f['lag']\n"
    "  if type(lag) == 'number' and lag > len then\n"
    "    local key = s .. ' ' .. f['name']\n"
    "    local seen = tonumber(redis.call('HGET', KEYS[2], key) or '0')\n"
    "    if lag - len > seen then\n"
    "      redis.call('HSET', KEYS[2], key, lag - len)\n"
    "      alerts[#alerts + 1] = {f['name'], f['last-delivered-id'], lag - len}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {redis.call('XTRIM', s, 'MINID', '~', bound), alerts}\n";

#define NSTREAMS (2 + BB_CHANNELS)

struct bb_retention {
    struct bb_conn *commands;
    const struct bb_broker_config *cfg;
    struct event *ev;
    const char *streams[NSTREAMS];
    unsigned outstanding;
};

struct call {
    struct bb_retention *r;
    const char *stream;
};

static void on_trimmed(struct bb_conn *conn, redisReply *rep, void *priv)
{
    struct call *call = priv;
    struct bb_retention *r = call->r;
    const char *stream = call->stream;
    free(call);
    r->outstanding--;
    if (!rep) {
        return; /* connection gone; the next tick tries again */
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        bb_warn("stream retention failed", "stream=%s err=\"%.160s\"", stream, rep->str);
        return;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
        rep->element[0]->type != REDIS_REPLY_INTEGER ||
        rep->element[1]->type != REDIS_REPLY_ARRAY) {
        return;
    }
    if (rep->element[0]->integer > 0) {
        atomic_fetch_add(&bb_metrics.trimmed, (uint64_t)rep->element[0]->integer);
        bb_debug("stream trimmed", "stream=%s entries=%lld", stream,
                 (long long)rep->element[0]->integer);
    }
    const redisReply *alerts = rep->element[1];
    for (size_t i = 0; i < alerts->elements; i++) {
        const redisReply *a = alerts->element[i];
        if (a->type != REDIS_REPLY_ARRAY || a->elements != 3 ||
            a->element[0]->type != REDIS_REPLY_STRING ||
            a->element[1]->type != REDIS_REPLY_STRING ||
            a->element[2]->type != REDIS_REPLY_INTEGER) {
            continue;
        }
        atomic_fetch_add(&bb_metrics.trimmed_unread, 1);
        bb_error("unread entries were removed from a stream (trimmed outside buurtbus?)",
                 "stream=%s group=%s read_up_to=%s lost_at_least=%lld", stream, a->element[0]->str,
                 a->element[1]->str, (long long)a->element[2]->integer);
        char lost[24];
        snprintf(lost, sizeof(lost), "%lld", (long long)a->element[2]->integer);
        const char *argv[] = {"XADD",
                              DEAD_STREAM,
                              "*",
                              "reason",
                              "entries_trimmed_unread",
                              "stream",
                              stream,
                              "group",
                              a->element[0]->str,
                              "after",
                              a->element[1]->str,
                              "lost",
                              lost,
                              "broker",
                              r->cfg->name};
        bb_conn_command(r->commands, NULL, NULL, 15, argv, NULL);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_retention *r = arg;
    (void)fd;
    (void)what;
    if (r->outstanding || !bb_conn_is_ready(r->commands)) {
        return;
    }
    for (size_t i = 0; i < NSTREAMS; i++) {
        struct call *call = malloc(sizeof(*call));
        if (!call) {
            return;
        }
        *call = (struct call){r, r->streams[i]};
        const char *argv[] = {"EVAL", retention_lua, "2", r->streams[i], "bb:trim-alerts"};
        if (bb_conn_command(r->commands, on_trimmed, call, 5, argv, NULL) != BB_OK) {
            free(call);
            return;
        }
        r->outstanding++;
    }
}

struct bb_retention *bb_retention_new(struct event_base *base, struct bb_conn *commands,
                                      const struct bb_broker_config *cfg)
{
    if (cfg->trim_interval_ms <= 0) {
        return NULL;
    }
    struct bb_retention *r = calloc(1, sizeof(*r));
    if (!r) {
        return NULL;
    }
    r->commands = commands;
    r->cfg = cfg;
    r->streams[0] = "bb:reports";
    r->streams[1] = "bb:report-status";
    for (unsigned ch = 0; ch < BB_CHANNELS; ch++) {
        r->streams[2 + ch] = bb_out_stream(ch);
    }
    r->ev = event_new(base, -1, EV_PERSIST, on_tick, r);
    struct timeval tv = {(time_t)(cfg->trim_interval_ms / 1000),
                         (suseconds_t)(cfg->trim_interval_ms % 1000 * 1000)};
    if (!r->ev || event_add(r->ev, &tv) != 0) {
        bb_retention_free(r);
        return NULL;
    }
    return r;
}

void bb_retention_free(struct bb_retention *r)
{
    if (!r) {
        return;
    }
    if (r->ev) {
        event_free(r->ev);
    }
    free(r);
}
