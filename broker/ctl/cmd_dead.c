/* buurtbusctl dead and snapshot: read-only views of bb:dead and of the
 * directory as a starting broker loads it. Main thread. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "ctl.h"
#include "directory.h"
#include "snapshot.h"

/* The fields the broker writes into a bb:dead entry. */
struct dead {
    const char *id;
    const redisReply *reason, *detail, *stream, *src_id, *p, *broker;
};

static const char *str_or(const redisReply *r, const char *dflt)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : dflt;
}

static bool dead_parse(const redisReply *e, struct dead *d)
{
    memset(d, 0, sizeof(*d));
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY) {
        return false;
    }
    d->id = e->element[0]->str;
    const redisReply *f = e->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const char *k = f->element[i]->type == REDIS_REPLY_STRING ? f->element[i]->str : "";
        const redisReply *v = f->element[i + 1];
        if (strcmp(k, "reason") == 0) {
            d->reason = v;
        } else if (strcmp(k, "detail") == 0) {
            d->detail = v;
        } else if (strcmp(k, "stream") == 0) {
            d->stream = v;
        } else if (strcmp(k, "id") == 0) {
            d->src_id = v;
        } else if (strcmp(k, "p") == 0) {
            d->p = v;
        } else if (strcmp(k, "broker") == 0) {
            d->broker = v;
        }
    }
    return true;
}

int cmd_dead(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"count", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    long count = 20;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'n') {
            if (ctl_parse_long(cmd, "--count", optarg, 1, 100000, &count) != CTL_OK) {
                return CTL_USAGE;
            }
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return ctl_usage(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    redisReply *r = redisCommand(ctl->c, "XREVRANGE bb:dead + - COUNT %ld", count);
    if (!r) {
        return ctl_error("redis: %s", ctl->c->errstr);
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        rc = ctl_error("XREVRANGE bb:dead: %s",
                       r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        return rc;
    }
    struct json_object *arr = ctl->json ? json_object_new_array() : NULL;
    if (!arr && r->elements == 0) {
        printf("no dead letters\n");
    }
    for (size_t i = 0; i < r->elements; i++) {
        struct dead d;
        char when[40];
        if (!dead_parse(r->element[i], &d)) {
            continue;
        }
        int64_t ms = ctl_stream_id_ms(d.id);
        ctl_format_ms(ms, when, sizeof(when));
        size_t bytes = d.p && d.p->type == REDIS_REPLY_STRING ? d.p->len : 0;
        if (arr) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "id", json_object_new_string(d.id));
            json_object_object_add(o, "time", json_object_new_string(when));
            json_object_object_add(o, "time_ms", json_object_new_int64(ms));
            json_object_object_add(o, "reason", json_object_new_string(str_or(d.reason, "")));
            json_object_object_add(o, "detail", json_object_new_string(str_or(d.detail, "")));
            json_object_object_add(o, "stream", json_object_new_string(str_or(d.stream, "")));
            json_object_object_add(o, "source_id", json_object_new_string(str_or(d.src_id, "")));
            json_object_object_add(o, "bytes", json_object_new_int64((int64_t)bytes));
            json_object_object_add(o, "broker", json_object_new_string(str_or(d.broker, "")));
            json_object_array_add(arr, o);
        } else {
            const char *detail = str_or(d.detail, "");
            printf("%s  %s  %-20s %s %s  %zu B  broker=%s%s%s\n", when, d.id, str_or(d.reason, "?"),
                   str_or(d.stream, "?"), str_or(d.src_id, "?"), bytes, str_or(d.broker, "?"),
                   *detail ? "  " : "", detail);
        }
    }
    if (arr) {
        ctl_print_json(arr);
    }
    freeReplyObject(r);
    return CTL_OK;
}

int cmd_snapshot(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {CTL_COMMON_OPTS, {NULL, 0, NULL, 0}};
    struct bb_dir_params params = {CTL_DEFAULT_PRECISION, CTL_WATCH_MAX_CELLS, CTL_MAX_RADIUS_M};
    struct bb_snapshot_stats st;
    struct bb_dir_stats ds;
    char last_id[BB_STREAM_ID_MAX], err[512];
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return ctl_usage(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    struct bb_dir *dir = bb_dir_new(&params);
    if (!dir) {
        return ctl_error("out of memory");
    }
    if (bb_snapshot_load(ctl->c, dir, last_id, sizeof(last_id), &st, err, sizeof(err)) != BB_OK) {
        bb_dir_free(dir);
        return ctl_error("loading the directory: %s", err);
    }
    bb_dir_stats(dir, &ds);
    uint64_t skipped = st.bad_users + st.bad_groups + st.bad_memberships + st.bad_follows;
    if (ctl->json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "last_id", json_object_new_string(last_id));
        json_object_object_add(o, "users", json_object_new_uint64(st.users));
        json_object_object_add(o, "groups", json_object_new_uint64(st.groups));
        json_object_object_add(o, "memberships", json_object_new_uint64(st.memberships));
        json_object_object_add(o, "follows", json_object_new_uint64(st.follows));
        json_object_object_add(o, "bad_users", json_object_new_uint64(st.bad_users));
        json_object_object_add(o, "bad_groups", json_object_new_uint64(st.bad_groups));
        json_object_object_add(o, "bad_memberships", json_object_new_uint64(st.bad_memberships));
        json_object_object_add(o, "bad_follows", json_object_new_uint64(st.bad_follows));
        json_object_object_add(o, "cells", json_object_new_int64((int64_t)ds.cells));
        json_object_object_add(o, "mutes", json_object_new_int64((int64_t)ds.mutes));
        json_object_object_add(o, "bytes", json_object_new_int64((int64_t)ds.bytes_total));
        json_object_object_add(o, "seconds", json_object_new_double(st.seconds));
        ctl_print_json(o);
    } else {
        printf("directory up to bb:directory %s, loaded in %.2f s\n", last_id, st.seconds);
        printf("  users %" PRIu64 ", groups %" PRIu64 ", memberships %" PRIu64 ", follows %" PRIu64
               ", mutes %zu, cells %zu\n",
               st.users, st.groups, st.memberships, st.follows, ds.mutes, ds.cells);
        printf("  index %.1f MB (%.1f B per user)\n", (double)ds.bytes_total / 1e6,
               ds.users ? (double)ds.bytes_users / (double)ds.users : 0.0);
        printf("  skipped %" PRIu64 " (users %" PRIu64 ", groups %" PRIu64 ", memberships %" PRIu64
               ", follows %" PRIu64 ")%s\n",
               skipped, st.bad_users, st.bad_groups, st.bad_memberships, st.bad_follows,
               skipped ? ": see the warnings above" : "");
    }
    bb_dir_free(dir);
    return CTL_OK;
}
