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

struct bb_chan_conf {
    char *instance;
    char *plugin;          /* channel.<inst>.plugin (required) */
    char *stream;          /* channel.<inst>.stream, default bb:out:<inst> */
    struct bb_chan_kv *kv; /* the plug-in's own options */
    size_t nkv;
};

struct bb_worker_config {
    char *redis;
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
    int64_t max_payload;
    int64_t shutdown_grace_ms;
    int64_t http_timeout_ms;
    char *metrics_addr;
    /* Filled by bb_worker_config_load, not options of their own. */
    struct bb_chan_conf *chans;
    size_t nchans;
};

/* Defaults, then the file (may be NULL), then the overrides ("name=value"). */
int bb_worker_config_load(struct bb_worker_config *cfg, const char *path, const char *const *sets,
                          size_t nsets, char *err, size_t errlen);
void bb_worker_config_dump(const struct bb_worker_config *cfg);
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

/* Checks conf against the plug-in's option table and builds the values
 * init() reads. Returns NULL with a message in err. */
struct bb_channel_config *bb_plugin_config_new(const struct bb_channel *ch,
                                               const struct bb_chan_conf *conf, char *err,
                                               size_t errlen);
void bb_plugin_config_free(struct bb_channel_config *cfg);

/* ---- hostapi.c --------------------------------------------------------------------------- */

/* The services plug-ins get: allocator, log, HTTP and libcurl on the
 * loop (curl multi-socket), Redis on the host's command connection. */
struct bb_host *bb_host_new(struct event_base *base, struct bb_conn *commands,
                            long http_timeout_ms);
void bb_host_free(struct bb_host *h);
/* Drops every transfer still running without calling its done (before the
 * plug-ins are destroyed: their easy handles leave the multi handle first). */
void bb_host_abandon(struct bb_host *h);
const struct bb_host_api *bb_host_api_get(struct bb_host *h);
/* Transfers still running on the curl multi handle. */
unsigned bb_host_http_inflight(const struct bb_host *h);

/* ---- stream.c ---------------------------------------------------------------------------- */

struct bb_stream;

/* One channel instance: reads its stream through the consumer group and
 * drives the plug-in. */
struct bb_stream *bb_stream_new(struct event_base *base, const struct bb_worker_config *cfg,
                                const struct bb_chan_conf *conf, const struct bb_channel *ch,
                                void *plugin_ctx, struct bb_conn *commands);
void bb_stream_free(struct bb_stream *s);
/* The commands connection came up (again): create the group. */
void bb_stream_commands_ready(struct bb_stream *s);
/* Stops reading; deliveries in flight go on. */
void bb_stream_stop(struct bb_stream *s);
/* Batches read and not yet acked. */
unsigned bb_stream_inflight(const struct bb_stream *s);

/* What a channel did, for /metrics (event-loop thread). */
struct bb_stream_stats {
    uint64_t outcome[5]; /* receipts by Outcome: 1 ok, 2 retry, 3 permanent, 4 duplicate */
    uint64_t batches;    /* batch entries taken */
    uint64_t dead_batches;
};
const struct bb_stream_stats *bb_stream_stats(const struct bb_stream *s);
const char *bb_stream_instance(const struct bb_stream *s);

#endif
