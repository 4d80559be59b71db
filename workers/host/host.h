/* buurtbus-worker internals shared by the host's modules: configuration,
 * loaded plug-ins, the host API and the per-channel stream readers.
 *
 * Threads: everything here lives on the one event-loop thread (main.c). */
#ifndef BB_WORKER_HOST_H
#define BB_WORKER_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buurtbus/channel.h"

struct event_base;
struct bb_conn;

/* ---- options.c --------------------------------------------------------------------------- */

/* One "channel.<inst>.<key> value" line of the config file. */
struct bb_chan_kv {
    char *key; /* after "channel.<inst>." */
    char *value;
    const char *source; /* the file (borrowed from the caller) or "--set" */
    int line;
};

/* The host's own per-instance options (channel.<inst>.<name>; the table
 * is in options.c). Everything else under channel.<inst>. belongs to the
 * plug-ins: "<option>" with one plug-in, "<plug-in>.<option>" with several. */
struct bb_chan_opts {
    char *plugin;  /* one plug-in, or several separated by commas or spaces: then each
                      recipient goes to the one its push_platform names */
    char *stream;  /* default bb:out:<inst> */
    char *group;   /* consumer group; "" = the worker's group */
    char *collect; /* "": send at once; "user": collect per recipient, send at the user's
                      digest hour; a duration: collect, send every interval */
    int64_t collect_max;
    int64_t rate; /* sends started per second; 0: no limit */
    int64_t burst;
    int64_t concurrency; /* sends in flight; 0: max_unconfirmed */
    int64_t breaker_failures;
    int64_t breaker_cooldown_ms;
};

struct bb_chan_conf {
    char *instance;
    struct bb_chan_opts o;
    char *plugin;       /* = o.plugin */
    char *stream;       /* = o.stream, filled in */
    char *group;        /* = o.group, filled in */
    int64_t collect_ms; /* collect: -1 off, 0 per user, else the interval */
    char **plugins;     /* o.plugin split */
    size_t nplugins;
    struct bb_chan_kv *kv; /* the plug-ins' own options */
    size_t nkv;
};

struct bb_worker_config {
    char *redis;
    char *redis_user; /* ACL user for AUTH; "" = the default user */
    char *redis_password;
    char *name;
    char *group;
    char *plugin_dir;
    char *channels;
    char *log_level;
    int64_t read_count;
    int64_t block_ms;
    int64_t max_inflight;
    int64_t connect_timeout_ms, command_timeout_ms, reconnect_min_ms, reconnect_max_ms;
    int64_t keepalive_s;
    int64_t claim_idle_ms, claim_interval_ms;
    int64_t sent_ttl_ms;
    int64_t max_unconfirmed;
    int64_t max_attempts;
    int64_t retry_min_ms, retry_max_ms, retry_budget_ms;
    int64_t later_poll_ms;
    int64_t max_payload;
    int64_t shutdown_grace_ms;
    int64_t http_timeout_ms;
    int64_t max_host_connections;
    char *metrics_addr;
    /* Filled by bb_worker_config_load, not options of their own. */
    struct bb_chan_conf *chans;
    size_t nchans;
};

/* Defaults, then the file (may be NULL), then the overrides ("name=value"). */
int bb_worker_config_load(struct bb_worker_config *cfg, const char *path, const char *const *sets,
                          size_t nsets, char *err, size_t errlen);
void bb_worker_config_dump(const struct bb_worker_config *cfg);
/* SIGHUP: applies to running what may change live in fresh (a newly loaded
 * and checked configuration): log_level, the retry options and each
 * instance's limits (rate, burst, concurrency, collect_max, breaker_*);
 * logs every other change as needing a restart. Returns how many were
 * applied; the caller sets the log level from running->log_level. */
int bb_worker_config_reload(struct bb_worker_config *running, const struct bb_worker_config *fresh);
void bb_worker_config_free(struct bb_worker_config *cfg);

/* ---- plugin.c ---------------------------------------------------------------------------- */

struct bb_plugin {
    void *dl;
    const struct bb_channel *ch;
};

/* Loads bb-channel-<name>.so from dir and checks its table. Returns 0 or
 * BB_ECONFIG (message in err). */
int bb_plugin_load(struct bb_plugin *p, const char *dir, const char *name, char *err,
                   size_t errlen);
void bb_plugin_unload(struct bb_plugin *p);

/* One loaded plug-in of a channel instance, with the context its init made. */
struct bb_chan_plugin {
    struct bb_plugin pl;
    void *ctx;
};

/* Checks conf's options for ch against its option table and builds the
 * values init() reads. prefix: NULL when ch is the instance's only
 * plug-in, else its name (only "<prefix>.<option>" keys are its own).
 * Returns NULL with a message in err. */
struct bb_channel_config *bb_plugin_config_new(const struct bb_channel *ch,
                                               const struct bb_chan_conf *conf, const char *prefix,
                                               char *err, size_t errlen);
void bb_plugin_config_free(struct bb_channel_config *cfg);

/* ---- hostapi.c --------------------------------------------------------------------------- */

/* The services plug-ins get: allocator, log, HTTP and libcurl on the
 * loop (curl multi-socket), Redis on the host's command connection. */
struct bb_host *bb_host_new(struct event_base *base, struct bb_conn *commands, long http_timeout_ms,
                            long max_host_connections);
void bb_host_free(struct bb_host *h);
/* Drops every transfer still running without calling its done (before the
 * plug-ins are destroyed: their easy handles leave the multi handle first). */
void bb_host_abandon(struct bb_host *h);
const struct bb_host_api *bb_host_api_get(struct bb_host *h);
/* Transfers still running on the curl multi handle. */
unsigned bb_host_http_inflight(const struct bb_host *h);

/* ---- later.c: retries and collections kept in Redis ------------------------------------- */

struct bb_later;
struct redisReply;

/* A job taken (leased) from bb:later:<inst>; everything borrowed for the call. */
struct bb_later_job {
    const char *member; /* "r:<delivery id>" or "c:<u|g><id>" */
    const char *blob;   /* PendingDelivery, bloblen 0 when missing */
    size_t bloblen;
    const struct redisReply *items; /* collections: field, value, ... (may be empty) */
};
typedef void bb_later_job_fn(void *arg, const struct bb_later_job *job);
/* How many more jobs the caller can take now. */
typedef unsigned bb_later_room_fn(void *arg);
/* result: the script's integer reply, -1 when it did not run (Redis down). */
typedef void bb_later_done_fn(void *arg, long long result);

/* Polls every poll_ms for due jobs, holds each for lease_ms. */
struct bb_later *bb_later_new(struct event_base *base, struct bb_conn *commands,
                              const char *instance, int64_t poll_ms, int64_t lease_ms,
                              bb_later_job_fn *on_job, bb_later_room_fn *room, void *arg);
void bb_later_stop(struct bb_later *l);
/* Room for jobs was freed: take more now if the last take was full, instead
 * of waiting for the next poll (a backlog of retries drains at the pace the
 * jobs finish, not one page per poll). */
void bb_later_kick(struct bb_later *l);
void bb_later_free(struct bb_later *l);
/* The result of bb_later_park and bb_later_collect when the recipient is a
 * user whose bb:user:<id> is gone (erased): nothing was written (a refused
 * park still drops the job and the record). Treat it as an unknown user. */
#define BB_LATER_USER_GONE 2
/* Stores member's job, due at due_ms, and deletes record_key (the delivery's
 * bb:sent record, so that the next try may send), in one step. */
int bb_later_park(struct bb_later *l, const char *member, int64_t due_ms, const void *blob,
                  size_t len, const char *record_key, bb_later_done_fn *done, void *arg);
/* The job is done: removed. */
int bb_later_finish(struct bb_later *l, const char *member, bb_later_done_fn *done, void *arg);
/* Adds item under field to member's collection ("c:<who>"), and schedules
 * the collection at due_ms with blob unless it is already scheduled or
 * being sent. result 0: the collection holds max items already. */
int bb_later_collect(struct bb_later *l, const char *member, const char *field, const void *item,
                     size_t itemlen, int64_t due_ms, const void *blob, size_t bloblen, int64_t max,
                     bb_later_done_fn *done, void *arg);
/* The frozen collection was sent (or given up): drops it; if items came
 * in meanwhile, schedules the collection again at next_due_ms with blob. */
int bb_later_flushed(struct bb_later *l, const char *member, int64_t next_due_ms, const void *blob,
                     size_t bloblen, bb_later_done_fn *done, void *arg);

/* ---- schedule.c -------------------------------------------------------------------------- */

/* The next time after now_ms (Unix ms) that is hour:00 local time in the
 * IANA zone tz ("" or unknown: Europe/Amsterdam), on a Monday if weekly.
 * Across a daylight-saving change the local hour is kept. */
int64_t bb_next_local_hour_ms(const char *tz, unsigned hour, bool weekly, int64_t now_ms);
/* The next multiple of every_ms after now_ms. */
int64_t bb_next_interval_ms(int64_t every_ms, int64_t now_ms);
/* UTC offset (s) of zone tz at unix_s ("" or unknown: Europe/Amsterdam). */
int32_t bb_utc_offset_s(const char *tz, int64_t unix_s);
void bb_schedule_cleanup(void);

/* ---- entry.c: what an entry must be before a plug-in sees it --------------------------- */

struct Bb__Notification;
/* "r:{report id}" or "s:{status id}": printable ASCII without spaces, 1..80
 * bytes (short enough for a delivery id). */
bool bb_entry_key_valid(const char *key);
/* Every string of the notification and its media is valid UTF-8. */
bool bb_notification_valid(const struct Bb__Notification *n);

/* ---- stream.c ---------------------------------------------------------------------------- */

struct bb_stream;

/* One channel instance: reads its stream through the consumer group and
 * drives the plug-in. */
struct bb_stream *bb_stream_new(struct event_base *base, const struct bb_worker_config *cfg,
                                const struct bb_chan_conf *conf,
                                const struct bb_chan_plugin *plugins, size_t nplugins,
                                struct bb_conn *commands);
void bb_stream_free(struct bb_stream *s);
/* The commands connection came up (again): create the group. */
void bb_stream_commands_ready(struct bb_stream *s);
/* Stops reading; deliveries in flight go on. */
void bb_stream_stop(struct bb_stream *s);
/* Batches read and not yet acked, plus jobs taken from bb:later. */
unsigned bb_stream_inflight(const struct bb_stream *s);

/* Upper bounds (ms) of the delivery latency histogram's buckets. */
#define BB_LATENCY_BUCKETS 14
extern const double bb_latency_bounds_ms[BB_LATENCY_BUCKETS];

/* What a channel did, for /metrics (event-loop thread). */
struct bb_stream_stats {
    uint64_t outcome[5]; /* receipts by Outcome: 1 ok, 2 retry, 3 permanent, 4 duplicate */
    uint64_t batches;    /* batch entries taken */
    uint64_t dead_batches;
    uint64_t parked;         /* deliveries whose next try waits in bb:later */
    uint64_t parked_open;    /* of those, parked unsent because the breaker was open */
    uint64_t collected;      /* deliveries added to a collection (digest) */
    uint64_t gone;           /* addresses removed (unregistered token, hard bounce) */
    uint64_t breaker_opened; /* times the circuit breaker opened */
    /* Deliveries found recorded but unconfirmed (a worker died mid-send):
     * resent to an idempotent plug-in, or skipped as possibly lost. */
    uint64_t resent, unconfirmed;
    uint64_t in_flight_elsewhere; /* deliveries that waited for another try in flight */
    /* Report entering bb:reports -> provider accepted, for deliveries sent
     * (not collected) from a batch: counts per bucket, the last one +Inf. */
    uint64_t latency[BB_LATENCY_BUCKETS + 1];
    double latency_sum_ms;
    /* Backlog, read every claim_interval (-1 until known): entries of the
     * stream the group has not read, read and not acked, jobs in bb:later. */
    int64_t lag, pending, later;
};
const struct bb_stream_stats *bb_stream_stats(const struct bb_stream *s);
const char *bb_stream_instance(const struct bb_stream *s);

#endif
