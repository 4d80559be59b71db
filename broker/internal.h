/* Shared internals of the buurtbus-broker daemon (not of the routing core,
 * which has its own headers and no I/O). */
#ifndef BB_BROKER_INTERNAL_H
#define BB_BROKER_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bb_conn.h"
#include "config.h"
#include "output.h"

struct event_base;
struct bb_dir;
struct bb_zdict;
struct bb_httpd;

/* ---- config.c ---------------------------------------------------------------------------- */

struct bb_broker_config {
    char *redis;          /* "127.0.0.1:6379" or a unix socket path */
    char *redis_user;     /* ACL user for AUTH; "" = the default user */
    char *redis_password; /* from redis_password_file */
    char *name;           /* consumer name; "" = hostname-pid */
    char *group;          /* consumer group of the input streams */
    int64_t router_threads;
    int64_t read_count;
    int64_t block_ms;
    int64_t max_inflight;
    int64_t claim_idle_ms;
    int64_t claim_interval_ms;
    int64_t connect_timeout_ms;
    int64_t command_timeout_ms;
    int64_t reconnect_min_ms;
    int64_t reconnect_max_ms;
    int64_t keepalive_s;
    int64_t batch_size;
    int64_t zstd_level;
    int64_t dict_check_ms;
    int64_t max_text;
    int64_t max_media;
    int64_t max_url;
    int64_t default_precision;
    int64_t watch_max_cells;
    int64_t max_radius_m;
    int64_t out_high_watermark;
    int64_t out_low_watermark;
    int64_t backpressure_check_ms;
    int64_t trim_interval_ms; /* stream retention (retention.c); 0: never trim */
    int64_t shutdown_grace_ms;
    char *metrics_addr;
    char *log_level;
    bool console;        /* the operator console on metrics_addr (console.c) */
    char *console_token; /* from console_token_file */
};

extern const struct bb_opt bb_broker_opts[];
extern const size_t bb_broker_nopts;

/* ---- dispatch.c: router threads and the lanes to them ------------------------------------ */

enum bb_job_kind { BB_JOB_REPORT = 1, BB_JOB_STATUS, BB_JOB_SET_DICT, BB_JOB_STOP };
enum bb_job_result { BB_RESULT_OK = 0, BB_RESULT_DEAD, BB_RESULT_RETRY };

struct bb_job {
    uint8_t kind;
    uint8_t src; /* input stream index */
    uint8_t result;
    char id[48]; /* stream entry id */
    int64_t entry_ms;
    uint8_t *payload; /* owned */
    size_t len;
    const char *reason; /* BB_RESULT_DEAD: static, machine-readable */
    char detail[160];
    struct bb_out out;
    struct bb_zdict *dict; /* BB_JOB_SET_DICT */
    uint64_t route_ns;
    uint32_t recipients;
    uint64_t decisions;
    /* I/O thread bookkeeping */
    void *owner;  /* the consumer, for reply callbacks */
    bool reroute; /* waiting to go back to a router (it ran out of memory) */
    struct bb_job *next;
    unsigned attempts;
    int64_t retry_at_ms;
};

struct bb_dispatch;
typedef void bb_done_fn(struct bb_job *job, void *arg);

struct bb_dispatch *bb_dispatch_new(struct event_base *base, struct bb_dir *dir,
                                    const struct bb_broker_config *cfg, bb_done_fn *done,
                                    void *arg);
/* Stops and joins the router threads; frees what is left. */
void bb_dispatch_free(struct bb_dispatch *d);
/* Hands a job to a router thread (I/O thread only). */
void bb_dispatch_submit(struct bb_dispatch *d, struct bb_job *job);
/* Gives every router the dictionary (a reference is taken). */
void bb_dispatch_set_dict(struct bb_dispatch *d, struct bb_zdict *dict);
void bb_job_free(struct bb_job *job);

/* ---- metrics.c --------------------------------------------------------------------------- */

#define BB_LAT_BUCKETS 24
#define BB_RCPT_BUCKETS 16

struct bb_metrics {
    _Atomic uint64_t reports_in, status_in, reports_routed, dead_letters, commits, commit_retries,
        commits_skipped, deliveries, batches, recipients, decisions, directory_events,
        directory_errors, claimed, trimmed, trimmed_unread, route_ns, bytes_out, raw_bytes,
        zstd_bytes;
    _Atomic uint64_t deliveries_by_channel[BB_CHANNELS];
    _Atomic uint64_t latency_le[BB_LAT_BUCKETS]; /* report entry -> committed, cumulative ms */
    _Atomic uint64_t latency_count, latency_sum_us;
    _Atomic int64_t inflight, backlog_max;
    _Atomic int ready, paused;
    _Atomic uint64_t users, groups;
    _Atomic uint64_t rcpt_le[BB_RCPT_BUCKETS], rcpt_sum; /* recipients per routed report */
};

extern struct bb_metrics bb_metrics;
void bb_metrics_latency(int64_t us);
void bb_metrics_recipients(uint64_t n);
/* Upper bound of latency bucket i in microseconds (the last is INT64_MAX). */
int64_t bb_metrics_latency_bound_us(int bucket);

/* Streams and their consumer groups, polled on the I/O thread. */
#define BB_STREAMS_MAX 8
#define BB_GROUPS_MAX 8
#define BB_CONSUMERS_MAX 16
struct bb_consumer_info {
    char name[64];
    int64_t pending, idle_ms;
};
struct bb_group_info {
    char name[64];
    char last_id[48];
    int64_t consumers, pending, lag, entries_read; /* -1: unknown */
    unsigned nc;
    struct bb_consumer_info c[BB_CONSUMERS_MAX];
};
struct bb_stream_info {
    const char *name;
    int64_t length; /* -1: unknown */
    unsigned ng;
    struct bb_group_info g[BB_GROUPS_MAX];
};
struct bb_streams {
    int64_t at_ms; /* wall clock of the last complete poll; 0: none yet */
    unsigned n;
    struct bb_stream_info s[BB_STREAMS_MAX];
};
/* Polls the streams every interval_ms on commands (I/O thread). */
int bb_metrics_streams_start(struct event_base *base, struct bb_conn *commands,
                             int64_t interval_ms);
void bb_metrics_streams_stop(void);
/* Also each group's consumers (XINFO CONSUMERS) and bb:dead's length: the
 * console's view, which needs more of the ACL (console.c). */
void bb_metrics_streams_detail(bool on);
const struct bb_streams *bb_metrics_streams(void); /* I/O thread */
/* The HTTP server bb_metrics_listen started (NULL: metrics off). */
struct bb_httpd *bb_metrics_httpd(void);
/* Serves /metrics, /healthz and /readyz on addr ("host:port"); NULL/"" = off. */
int bb_metrics_listen(struct event_base *base, const char *addr);
void bb_metrics_close(void);

/* ---- consumer.c -------------------------------------------------------------------------- */

struct bb_consumer;
struct bb_consumer *bb_consumer_new(struct event_base *base, struct bb_dir *dir,
                                    const struct bb_broker_config *cfg,
                                    const char *directory_last_id);
void bb_consumer_free(struct bb_consumer *c);
/* The commands connection (for the stream poll and the console). */
struct bb_conn *bb_consumer_commands(struct bb_consumer *c);

/* ---- console.c: the operator console (HTTP API + page on metrics_addr) ------------------- */

struct bb_console;
/* Refuses "console yes" without a usable token. */
int bb_console_check(const struct bb_broker_config *cfg, char *err, size_t errlen);
/* NULL when the console is off or cannot start (logged; *failed set then). */
struct bb_console *bb_console_new(struct event_base *base, struct bb_httpd *httpd,
                                  struct bb_conn *commands, const struct bb_broker_config *cfg,
                                  bool *failed);
/* Waits for an explanation in progress, then frees. NULL is a no-op. */
void bb_console_free(struct bb_console *con);

/* ---- retention.c: trimming what every group has read and acked -------------------------- */

struct bb_retention;
/* NULL when trim_interval is 0 (or out of memory). Free it after the
 * commands connection (whose pending callbacks still reach it). */
struct bb_retention *bb_retention_new(struct event_base *base, struct bb_conn *commands,
                                      const struct bb_broker_config *cfg);
void bb_retention_free(struct bb_retention *r);
/* Starts draining: no more reads; calls event_base_loopexit when everything
 * in flight is committed or the grace period is over. */
void bb_consumer_shutdown(struct bb_consumer *c);
/* Re-reads the dictionary (SIGHUP). */
void bb_consumer_reload(struct bb_consumer *c);

#endif
