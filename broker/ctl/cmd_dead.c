/* buurtbusctl dead list|replay|purge and directory snapshot: bb:dead and
 * the directory as a starting broker loads it. Main thread.
 *
 * Dead letters come in kinds (docs/contracts.md, "Dead letters"):
 *   broker      field broker; p = the original bb:reports / bb:report-status /
 *               bb:directory entry's payload. Replay: XADD it there again.
 *   batch       field worker, p = a DeliveryBatch; with field delivery one
 *               failed delivery of it. Replay: DEL bb:sent:<instance>:<delivery>
 *               (if any), XADD the batch to its stream again; the batch's
 *               other deliveries are skipped by their records while those
 *               live (sent_ttl), so older entries are refused without --force.
 *   job         field worker, p = a retry's PendingDelivery (with its
 *               notification). Replay: park it again in bb:later:<instance>,
 *               due now, attempts 0, its bb:sent record deleted.
 *   none        no payload (entries_trimmed_unread, entry_trimmed,
 *               entry_deleted, missing_payload), or one that cannot work again
 *               (bad_job, bad_item, a digest's job): refused.
 * Each replay is one MULTI/EXEC with the XDEL of the dead letter. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "config.h"
#include "ctl.h"
#include "delivery.pb-c.h"
#include "directory.h"
#include "snapshot.h"

#define DEFAULT_SENT_TTL_MS (7LL * 24 * 3600 * 1000)
#define PAGE 500

/* The fields of a bb:dead entry (borrowed from the reply). */
struct dead {
    const char *id;
    const redisReply *reason, *detail, *stream, *src_id, *p, *broker, *worker, *instance, *delivery,
        *group, *after, *lost;
};

enum kind { KIND_NONE, KIND_BROKER, KIND_BATCH, KIND_JOB };
static const char *const kind_names[] = {"none", "broker", "batch", "job"};

static bool dead_parse(const redisReply *e, struct dead *d)
{
    memset(d, 0, sizeof(*d));
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY) {
        return false;
    }
    d->id = e->element[0]->str;
    const redisReply *f = e->element[1];
    d->reason = ctl_field(f, "reason");
    d->detail = ctl_field(f, "detail");
    d->stream = ctl_field(f, "stream");
    d->src_id = ctl_field(f, "id");
    d->p = ctl_field(f, "p");
    d->broker = ctl_field(f, "broker");
    d->worker = ctl_field(f, "worker");
    d->instance = ctl_field(f, "instance");
    d->delivery = ctl_field(f, "delivery");
    d->group = ctl_field(f, "group");
    d->after = ctl_field(f, "after");
    d->lost = ctl_field(f, "lost");
    return true;
}

static bool is_broker_stream(const char *s)
{
    return strcmp(s, "bb:reports") == 0 || strcmp(s, "bb:report-status") == 0 ||
           strcmp(s, "bb:directory") == 0;
}

/* What a dead letter is and whether replay can put it back; *why says
 * why not. A worker's payload is a DeliveryBatch (always has its zstd
 * frame) or a PendingDelivery; the two differ in wire types, so a payload
 * decodes as at most one of them. */
static enum kind classify(const struct dead *d, const char **why)
{
    const char *reason = ctl_str(d->reason, "");
    const char *stream = ctl_str(d->stream, "");
    size_t plen = d->p && d->p->type == REDIS_REPLY_STRING ? d->p->len : 0;
    *why = NULL;
    if (plen == 0) {
        *why = "it carries no payload (nothing to put back)";
        return KIND_NONE;
    }
    if (d->broker) {
        if (!is_broker_stream(stream)) {
            *why = "a broker dead letter from an unknown stream";
            return KIND_NONE;
        }
        return KIND_BROKER;
    }
    if (!d->worker || !d->instance || !*stream || is_broker_stream(stream) ||
        strncmp(stream, "bb:", 3) != 0 || strcmp(stream, "bb:dead") == 0 ||
        strcmp(stream, "bb:receipts") == 0) {
        *why = "neither a broker's nor a worker's dead letter";
        return KIND_NONE;
    }
    if (strcmp(reason, "bad_job") == 0) {
        *why = "an unreadable job (bad_job): it would fail again";
        return KIND_NONE;
    }
    if (strcmp(reason, "bad_item") == 0) {
        *why = "an unreadable collection item (bad_item): the item is not in the dead letter";
        return KIND_NONE;
    }
    const uint8_t *p = (const uint8_t *)d->p->str;
    Bb__DeliveryBatch *b = bb__delivery_batch__unpack(NULL, plen, p);
    if (b) {
        bool ok = b->notification_zstd.len > 0;
        bb__delivery_batch__free_unpacked(b, NULL);
        if (ok) {
            return KIND_BATCH;
        }
    }
    Bb__PendingDelivery *pd = bb__pending_delivery__unpack(NULL, plen, p);
    if (!pd) {
        *why = "its payload is neither a DeliveryBatch nor a PendingDelivery";
        return KIND_NONE;
    }
    bool retry = pd->notification.len > 0;
    bb__pending_delivery__free_unpacked(pd, NULL);
    if (!retry || !d->delivery || strncmp(ctl_str(d->delivery, ""), "c:", 2) == 0) {
        *why = "a digest's job: its items are not in the dead letter";
        return KIND_NONE;
    }
    return KIND_JOB;
}

static struct json_object *jstr(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? json_object_new_string(r->str) : NULL;
}

static void print_dead(const struct dead *d, struct json_object *arr)
{
    char when[40];
    const char *why;
    enum kind k = classify(d, &why);
    int64_t ms = ctl_stream_id_ms(d->id);
    ctl_format_ms(ms, when, sizeof(when));
    size_t bytes = d->p && d->p->type == REDIS_REPLY_STRING ? d->p->len : 0;
    if (arr) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(d->id));
        json_object_object_add(o, "time", json_object_new_string(when));
        json_object_object_add(o, "time_ms", json_object_new_int64(ms));
        json_object_object_add(o, "reason", json_object_new_string(ctl_str(d->reason, "")));
        json_object_object_add(o, "detail", json_object_new_string(ctl_str(d->detail, "")));
        json_object_object_add(o, "stream", json_object_new_string(ctl_str(d->stream, "")));
        json_object_object_add(o, "source_id", json_object_new_string(ctl_str(d->src_id, "")));
        json_object_object_add(o, "bytes", json_object_new_int64((int64_t)bytes));
        json_object_object_add(o, "broker", json_object_new_string(ctl_str(d->broker, "")));
        json_object_object_add(o, "worker", jstr(d->worker));
        json_object_object_add(o, "instance", jstr(d->instance));
        json_object_object_add(o, "delivery", jstr(d->delivery));
        json_object_object_add(o, "group", jstr(d->group));
        json_object_object_add(o, "after", jstr(d->after));
        json_object_object_add(o, "lost", jstr(d->lost));
        json_object_object_add(o, "kind", json_object_new_string(kind_names[k]));
        json_object_object_add(o, "replayable", json_object_new_boolean(k != KIND_NONE));
        json_object_array_add(arr, o);
        return;
    }
    const char *detail = ctl_str(d->detail, "");
    char who[200];
    if (d->broker) {
        snprintf(who, sizeof(who), "broker=%s", ctl_str(d->broker, "?"));
    } else if (d->worker) {
        snprintf(who, sizeof(who), "worker=%s instance=%s%s%s", ctl_str(d->worker, "?"),
                 ctl_str(d->instance, "?"), d->delivery ? " delivery=" : "",
                 ctl_str(d->delivery, ""));
    } else if (d->group) {
        snprintf(who, sizeof(who), "group=%s after=%s lost=%s", ctl_str(d->group, "?"),
                 ctl_str(d->after, "?"), ctl_str(d->lost, "?"));
    } else {
        snprintf(who, sizeof(who), "?");
    }
    printf("%s  %s  %-20s %s %s  %zu B  %s  %s%s%s\n", when, d->id, ctl_str(d->reason, "?"),
           ctl_str(d->stream, "?"), ctl_str(d->src_id, "?"), bytes, who,
           k == KIND_NONE ? "not replayable" : kind_names[k], *detail ? "  " : "", detail);
}

/* Calls fn on every bb:dead entry, newest first, until it returns false
 * or fails (< 0). Returns 0 or 1 after printing why. */
typedef int dead_fn(struct ctl *ctl, const struct dead *d, void *arg);

static int each_dead(struct ctl *ctl, dead_fn *fn, void *arg)
{
    char end[BB_STREAM_ID_MAX + 1] = "+";
    for (;;) {
        redisReply *r = ctl_redis(ctl, "XREVRANGE bb:dead %s - COUNT %d", end, PAGE);
        if (!r) {
            return CTL_ERR;
        }
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        for (size_t i = 0; i < n; i++) {
            struct dead d;
            if (!dead_parse(r->element[i], &d)) {
                continue;
            }
            snprintf(end, sizeof(end), "(%s", d.id);
            int rc = fn(ctl, &d, arg);
            if (rc != 1) {
                freeReplyObject(r);
                return rc < 0 ? CTL_ERR : CTL_OK;
            }
        }
        freeReplyObject(r);
        if (n < PAGE) {
            return CTL_OK;
        }
    }
}

/* ---- list -------------------------------------------------------------------------------- */

struct list_args {
    long count, shown;
    const char *reason, *stream;
    struct json_object *arr;
};

static int list_one(struct ctl *ctl, const struct dead *d, void *arg)
{
    (void)ctl;
    struct list_args *a = arg;
    if ((a->reason && strcmp(ctl_str(d->reason, ""), a->reason) != 0) ||
        (a->stream && strcmp(ctl_str(d->stream, ""), a->stream) != 0)) {
        return 1;
    }
    print_dead(d, a->arr);
    return ++a->shown < a->count ? 1 : 0;
}

int cmd_dead_list(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"count", required_argument, NULL, 'n'},
        {"reason", required_argument, NULL, 'r'},
        {"stream", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    struct list_args a = {.count = 20};
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'n') {
            if (ctl_parse_long(cmd, "--count", optarg, 1, 1000000, &a.count) != CTL_OK) {
                return CTL_USAGE;
            }
        } else if (opt == 'r') {
            a.reason = optarg;
        } else if (opt == 's') {
            a.stream = optarg;
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
    a.arr = ctl->json ? json_object_new_array() : NULL;
    rc = each_dead(ctl, list_one, &a);
    if (rc != CTL_OK) {
        json_object_put(a.arr);
        return rc;
    }
    if (a.arr) {
        ctl_print_json(a.arr);
    } else if (a.shown == 0) {
        printf("no dead letters%s\n", a.reason || a.stream ? " that match" : "");
    }
    return CTL_OK;
}

/* ---- replay ------------------------------------------------------------------------------ */

struct replay_args {
    const char *reason;
    bool all, force, dry_run;
    int64_t sent_ttl_ms;
    char **ids; /* explicit ids, or NULL */
    int nids;
    long replayed, refused, failed;
    struct json_object *arr;
};

/* The replies of queued commands ending with EXEC. Returns 0, 1 after
 * printing why, or 3 when EXEC returned nil (a watched key changed). */
#define CTL_ABORTED 3
static int exec_reply(struct ctl *ctl, int queued, const char *what)
{
    int rc = CTL_OK;
    for (int i = 0; i < queued; i++) {
        redisReply *r = NULL;
        if (redisGetReply(ctl->c, (void **)&r) != REDIS_OK || !r) {
            return ctl_error("redis: %s", ctl->c->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR && rc == CTL_OK) {
            rc = ctl_error("%s: %s", what, r->str);
        }
        if (i == queued - 1 && r->type == REDIS_REPLY_NIL && rc == CTL_OK) {
            rc = CTL_ABORTED;
        }
        if (i == queued - 1 && r->type == REDIS_REPLY_ARRAY) {
            for (size_t k = 0; k < r->elements; k++) {
                if (r->element[k]->type == REDIS_REPLY_ERROR && rc == CTL_OK) {
                    rc = ctl_error("%s: %s", what, r->element[k]->str);
                }
            }
        }
        freeReplyObject(r);
    }
    return rc;
}

/* What a replay writes: the stream entry again, or the job parked again. */
struct put_back {
    const char *stream;            /* XADD here, or NULL */
    const char *sent_key;          /* UNLINK first, or "" */
    const char *instance, *member; /* a job: bb:later:<instance>, member */
    const uint8_t *blob;           /* the entry's p or the job */
    size_t len;
    int64_t due;
};

/* Under WATCH bb:dead: the dead letter is still there, then one MULTI with
 * the writes and its XDEL. Two operators replaying the same dead letter
 * put it back once. */
static int put_back(struct ctl *ctl, const char *dead_id, const struct put_back *pb)
{
    for (int attempt = 0; attempt < 32; attempt++) {
        redisReply *r = ctl_redis(ctl, "WATCH bb:dead");
        if (!r) {
            return CTL_ERR;
        }
        freeReplyObject(r);
        if (!(r = ctl_redis(ctl, "XRANGE bb:dead %s %s", dead_id, dead_id))) {
            return CTL_ERR;
        }
        bool there = r->type == REDIS_REPLY_ARRAY && r->elements == 1;
        freeReplyObject(r);
        if (!there) {
            if ((r = ctl_redis(ctl, "UNWATCH"))) {
                freeReplyObject(r);
            }
            return ctl_error("dead letter %s is gone (replayed or purged meanwhile)", dead_id);
        }
        int q = 0;
        redisAppendCommand(ctl->c, "MULTI"), q++;
        if (pb->sent_key[0]) {
            redisAppendCommand(ctl->c, "UNLINK %s", pb->sent_key), q++;
        }
        if (pb->stream) {
            redisAppendCommand(ctl->c, "XADD %s * p %b", pb->stream, pb->blob, pb->len), q++;
        } else {
            redisAppendCommand(ctl->c, "HSET bb:later:%s:jobs %s %b", pb->instance, pb->member,
                               pb->blob, pb->len),
                q++;
            redisAppendCommand(ctl->c, "ZADD bb:later:%s %lld %s", pb->instance, (long long)pb->due,
                               pb->member),
                q++;
        }
        redisAppendCommand(ctl->c, "XDEL bb:dead %s", dead_id), q++;
        redisAppendCommand(ctl->c, "EXEC"), q++;
        int rc = exec_reply(ctl, q, "replaying");
        if (rc != CTL_ABORTED) {
            return rc;
        }
    }
    return ctl_error("bb:dead changes too fast to replay %s; try again", dead_id);
}

/* A retry job: parked again, due now, attempts 0, first try now. */
static int replay_job(struct ctl *ctl, const struct dead *d, const char *sent_key, char *msg,
                      size_t msglen)
{
    Bb__PendingDelivery *pd =
        bb__pending_delivery__unpack(NULL, d->p->len, (const uint8_t *)d->p->str);
    if (!pd) {
        return ctl_error("%s: the job does not decode", d->id);
    }
    int64_t now = ctl_now_ms();
    char *old_reason = pd->last_reason;
    pd->attempts = 0;
    pd->first_ms = now;
    pd->last_reason = "replayed";
    size_t len = bb__pending_delivery__get_packed_size(pd);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        pd->last_reason = old_reason;
        bb__pending_delivery__free_unpacked(pd, NULL);
        return ctl_error("out of memory");
    }
    bb__pending_delivery__pack(pd, buf);
    pd->last_reason = old_reason; /* unpack's, freed with it */
    bb__pending_delivery__free_unpacked(pd, NULL);
    char member[300];
    snprintf(member, sizeof(member), "r:%s", ctl_str(d->delivery, ""));
    struct put_back pb = {.sent_key = sent_key,
                          .instance = ctl_str(d->instance, ""),
                          .member = member,
                          .blob = buf,
                          .len = len,
                          .due = now};
    int rc = put_back(ctl, d->id, &pb);
    free(buf);
    snprintf(msg, msglen, "parked again as %s in bb:later:%s, due now; deleted %s", member,
             pb.instance, sent_key);
    return rc;
}

static int replay_one(struct ctl *ctl, const struct dead *d, struct replay_args *a)
{
    const char *why;
    enum kind kind = classify(d, &why), k = kind;
    char msg[512] = "", sent_key[400] = "";
    const char *stream = ctl_str(d->stream, "");
    int rc = CTL_OK;
    if (k == KIND_BATCH || k == KIND_JOB) {
        if (d->delivery) {
            snprintf(sent_key, sizeof(sent_key), "bb:sent:%s:%s", ctl_str(d->instance, ""),
                     ctl_str(d->delivery, ""));
        }
    }
    if (k == KIND_BATCH && !a->force) {
        /* The batch's other deliveries (and other instances reading the
         * stream) are skipped only while their bb:sent records live. */
        int64_t src_ms = ctl_stream_id_ms(ctl_str(d->src_id, ""));
        int64_t since = src_ms >= 0 ? src_ms : ctl_stream_id_ms(d->id);
        if (since < 0 || ctl_now_ms() - since > a->sent_ttl_ms) {
            k = KIND_NONE;
            why = "the batch is older than the bb:sent records (--sent-ttl): every recipient "
                  "would get it again (--force to do it anyway)";
        }
    }
    if (k == KIND_NONE) {
        a->refused++;
        if (!a->arr) {
            fprintf(stderr, "buurtbusctl: dead letter %s (%s) not replayed: %s\n", d->id,
                    ctl_str(d->reason, "?"), why);
        }
    } else if (a->dry_run) {
        snprintf(msg, sizeof(msg), "would replay to %s%s%s", stream,
                 sent_key[0] ? ", deleting " : "", sent_key);
    } else if (k == KIND_JOB) {
        rc = replay_job(ctl, d, sent_key, msg, sizeof(msg));
    } else {
        struct put_back pb = {.stream = stream,
                              .sent_key = sent_key,
                              .blob = (const uint8_t *)d->p->str,
                              .len = d->p->len};
        rc = put_back(ctl, d->id, &pb);
        snprintf(msg, sizeof(msg), "added to %s again%s%s", stream, sent_key[0] ? "; deleted " : "",
                 sent_key);
    }
    if (k != KIND_NONE) {
        if (rc == CTL_OK) {
            a->replayed++;
        } else {
            a->failed++;
        }
    }
    if (a->arr) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(d->id));
        json_object_object_add(o, "reason", json_object_new_string(ctl_str(d->reason, "")));
        json_object_object_add(o, "kind", json_object_new_string(kind_names[kind]));
        json_object_object_add(o, "stream", json_object_new_string(stream));
        json_object_object_add(
            o, "replayed", json_object_new_boolean(k != KIND_NONE && rc == CTL_OK && !a->dry_run));
        json_object_object_add(o, k == KIND_NONE ? "refused" : "done",
                               json_object_new_string(k == KIND_NONE ? why : msg));
        json_object_array_add(a->arr, o);
    } else if (k != KIND_NONE && rc == CTL_OK) {
        printf("%s (%s): %s\n", d->id, ctl_str(d->reason, "?"), msg);
    }
    return rc;
}

static int replay_selected(struct ctl *ctl, const struct dead *d, void *arg)
{
    struct replay_args *a = arg;
    const char *why;
    if (a->reason && strcmp(ctl_str(d->reason, ""), a->reason) != 0) {
        return 1;
    }
    if (classify(d, &why) == KIND_NONE) {
        a->refused++; /* a bulk replay passes over what cannot go back */
        return 1;
    }
    return replay_one(ctl, d, a) == CTL_OK ? 1 : -1;
}

int cmd_dead_replay(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"reason", required_argument, NULL, 'r'},
        {"all", no_argument, NULL, 'a'},
        {"force", no_argument, NULL, 'f'},
        {"sent-ttl", required_argument, NULL, 't'},
        {"dry-run", no_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    struct replay_args a = {.sent_ttl_ms = DEFAULT_SENT_TTL_MS};
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'r') {
            a.reason = optarg;
        } else if (opt == 'a') {
            a.all = true;
        } else if (opt == 'f') {
            a.force = true;
        } else if (opt == 'n') {
            a.dry_run = true;
        } else if (opt == 't') {
            if (bb_parse_duration_ms(optarg, &a.sent_ttl_ms) != BB_OK || a.sent_ttl_ms <= 0) {
                return ctl_usage(cmd, "--sent-ttl: expected a duration (7d, 12h), got '%s'",
                                 optarg);
            }
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    a.ids = argv + optind;
    a.nids = argc - optind;
    if (a.nids > 0 && (a.reason || a.all)) {
        return ctl_usage(cmd, "give dead letter ids, or --reason/--all, not both");
    }
    if (a.nids == 0 && !a.reason && !a.all) {
        return ctl_usage(cmd, "which dead letters? Give their ids, --reason R or --all");
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    a.arr = ctl->json ? json_object_new_array() : NULL;
    rc = CTL_OK;
    if (a.nids > 0) {
        for (int i = 0; i < a.nids && rc == CTL_OK; i++) {
            if (ctl_stream_id_ms(a.ids[i]) < 0) {
                json_object_put(a.arr);
                return ctl_usage(cmd, "'%s' is not a stream entry id", a.ids[i]);
            }
            redisReply *r = ctl_redis(ctl, "XRANGE bb:dead %s %s", a.ids[i], a.ids[i]);
            if (!r) {
                rc = CTL_ERR;
                break;
            }
            struct dead d;
            if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
                !dead_parse(r->element[0], &d)) {
                ctl_error("no dead letter %s in bb:dead", a.ids[i]);
                a.failed++;
            } else {
                rc = replay_one(ctl, &d, &a);
            }
            freeReplyObject(r);
        }
    } else {
        rc = each_dead(ctl, replay_selected, &a);
    }
    if (a.arr) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "replayed", json_object_new_int64(a.replayed));
        json_object_object_add(o, "refused", json_object_new_int64(a.refused));
        json_object_object_add(o, "failed", json_object_new_int64(a.failed));
        json_object_object_add(o, "dry_run", json_object_new_boolean(a.dry_run));
        json_object_object_add(o, "entries", a.arr);
        ctl_print_json(o);
    } else {
        printf("%s%ld replayed, %ld refused, %ld failed\n", a.dry_run ? "dry run: " : "",
               a.replayed, a.refused, a.failed);
    }
    /* Named ids that could not go back are an error; a bulk replay's
     * refusals are only counted. */
    if (rc != CTL_OK || a.failed || (a.nids > 0 && a.refused)) {
        return CTL_ERR;
    }
    return CTL_OK;
}

/* ---- purge ------------------------------------------------------------------------------- */

struct purge_args {
    const char *reason;
    int64_t before_ms; /* -1: any age */
    bool dry_run;
    long purged;
    char **batch;
    size_t nbatch;
};

static int purge_flush(struct ctl *ctl, struct purge_args *a)
{
    if (a->nbatch == 0) {
        return CTL_OK;
    }
    if (!a->dry_run) {
        const char **argv = malloc((a->nbatch + 2) * sizeof(*argv));
        if (!argv) {
            return ctl_error("out of memory");
        }
        argv[0] = "XDEL";
        argv[1] = "bb:dead";
        for (size_t i = 0; i < a->nbatch; i++) {
            argv[2 + i] = a->batch[i];
        }
        redisReply *r = redisCommandArgv(ctl->c, (int)a->nbatch + 2, argv, NULL);
        free(argv);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            int rc = ctl_error("XDEL bb:dead: %s", r ? r->str : ctl->c->errstr);
            if (r) {
                freeReplyObject(r);
            }
            return rc;
        }
        a->purged += r->type == REDIS_REPLY_INTEGER ? (long)r->integer : 0;
        freeReplyObject(r);
    } else {
        a->purged += (long)a->nbatch;
    }
    for (size_t i = 0; i < a->nbatch; i++) {
        free(a->batch[i]);
    }
    a->nbatch = 0;
    return CTL_OK;
}

static int purge_one(struct ctl *ctl, const struct dead *d, void *arg)
{
    struct purge_args *a = arg;
    if (a->before_ms >= 0 && ctl_stream_id_ms(d->id) >= a->before_ms) {
        return 1;
    }
    if (a->reason && strcmp(ctl_str(d->reason, ""), a->reason) != 0) {
        return 1;
    }
    if (!(a->batch[a->nbatch] = strdup(d->id))) {
        return -1;
    }
    /* Deleting while paging backwards is safe: the next page starts
     * before the entries seen. */
    if (++a->nbatch == PAGE && purge_flush(ctl, a) != CTL_OK) {
        return -1;
    }
    return 1;
}

int cmd_dead_purge(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"reason", required_argument, NULL, 'r'},
        {"older-than", required_argument, NULL, 'o'},
        {"all", no_argument, NULL, 'a'},
        {"dry-run", no_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    struct purge_args a = {.before_ms = -1};
    bool all = false;
    int64_t older = -1;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'r') {
            a.reason = optarg;
        } else if (opt == 'a') {
            all = true;
        } else if (opt == 'n') {
            a.dry_run = true;
        } else if (opt == 'o') {
            if (bb_parse_duration_ms(optarg, &older) != BB_OK || older < 0) {
                return ctl_usage(cmd, "--older-than: expected a duration (1h, 7d), got '%s'",
                                 optarg);
            }
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return ctl_usage(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (!all && !a.reason && older < 0) {
        return ctl_usage(cmd, "which dead letters? Give --reason R, --older-than D, or --all");
    }
    if (all && (a.reason || older >= 0)) {
        return ctl_usage(cmd, "--all deletes every dead letter; it takes no --reason or "
                              "--older-than");
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    rc = CTL_OK;
    if (older >= 0) {
        a.before_ms = ctl_now_ms() - older;
    }
    if ((all || !a.reason) && !a.dry_run) {
        /* By age or everything: one XTRIM (MINID is exclusive of the bound). */
        redisReply *r = all ? ctl_redis(ctl, "XTRIM bb:dead MAXLEN 0")
                            : ctl_redis(ctl, "XTRIM bb:dead MINID %lld-0", (long long)a.before_ms);
        if (!r) {
            return CTL_ERR;
        }
        a.purged = r->type == REDIS_REPLY_INTEGER ? (long)r->integer : 0;
        freeReplyObject(r);
    } else {
        a.batch = calloc(PAGE + 1, sizeof(char *));
        if (!a.batch) {
            return ctl_error("out of memory");
        }
        /* By reason (or a dry run): XDEL what matches, a page at a time. */
        rc = each_dead(ctl, purge_one, &a);
        if (rc == CTL_OK) {
            rc = purge_flush(ctl, &a);
        }
        for (size_t i = 0; i < a.nbatch; i++) {
            free(a.batch[i]);
        }
        free(a.batch);
    }
    if (ctl->json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "purged", json_object_new_int64(a.purged));
        json_object_object_add(o, "dry_run", json_object_new_boolean(a.dry_run));
        ctl_print_json(o);
    } else {
        printf("%s %ld dead letter%s\n", a.dry_run ? "would purge" : "purged", a.purged,
               a.purged == 1 ? "" : "s");
    }
    return rc;
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
