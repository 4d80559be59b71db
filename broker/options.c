/* The broker's options: names, defaults, bounds and one line of help each.
 * deploy/broker.conf is the commented sample; keep the two in step. */
#include <stddef.h>

#include "config.h"
#include "internal.h"

#define OPT(name, type, field, def, min, max, help)                                                \
    {                                                                                              \
        name, type, offsetof(struct bb_broker_config, field), def, min, max, help                  \
    }

const struct bb_opt bb_broker_opts[] = {
    OPT("redis", BB_OPT_STRING, redis, "127.0.0.1:6379", 0, 0,
        "Redis address: IP:port (an IP literal: name lookups would block) or a unix socket path"),
    OPT("redis_user", BB_OPT_STRING, redis_user, "", 0, 0,
        "Redis ACL user sent with AUTH (deploy/redis/); empty: the default user"),
    OPT("redis_password_file", BB_OPT_SECRET_FILE, redis_password, NULL, 0, 0,
        "file holding the Redis password (AUTH); empty: no AUTH"),
    OPT("name", BB_OPT_STRING, name, "", 0, 0,
        "consumer name, unique per broker; empty: hostname-pid"),
    OPT("group", BB_OPT_STRING, group, "bb-brokers", 0, 0, "consumer group of the input streams"),
    OPT("router_threads", BB_OPT_INT, router_threads, "1", 1, 64, "router threads"),
    OPT("read_count", BB_OPT_INT, read_count, "256", 1, 10000, "entries per XREADGROUP"),
    OPT("block", BB_OPT_DURATION_MS, block_ms, "1s", 10, 60000, "XREADGROUP/XREAD BLOCK time"),
    OPT("max_inflight", BB_OPT_INT, max_inflight, "4096", 1, 1000000,
        "entries read and not yet committed, at most"),
    OPT("claim_idle", BB_OPT_DURATION_MS, claim_idle_ms, "30s", 1000, 86400000,
        "claim entries another consumer left pending this long"),
    OPT("claim_interval", BB_OPT_DURATION_MS, claim_interval_ms, "5s", 100, 3600000,
        "how often to look for idle entries"),
    OPT("connect_timeout", BB_OPT_DURATION_MS, connect_timeout_ms, "2s", 100, 60000,
        "Redis connect timeout"),
    OPT("command_timeout", BB_OPT_DURATION_MS, command_timeout_ms, "5s", 100, 600000,
        "a connection with no reply this long is dropped and reconnected"),
    OPT("reconnect_min", BB_OPT_DURATION_MS, reconnect_min_ms, "100ms", 10, 60000,
        "first reconnect backoff (doubles, with jitter)"),
    OPT("reconnect_max", BB_OPT_DURATION_MS, reconnect_max_ms, "5s", 10, 600000,
        "largest reconnect backoff"),
    OPT("tcp_keepalive", BB_OPT_INT, keepalive_s, "15", 0, 3600,
        "TCP keepalive: 0 off, else on (hiredis 0.14 fixes the interval at 15 s)"),
    OPT("batch_size", BB_OPT_INT, batch_size, "256", 1, 10000,
        "recipients per output stream entry"),
    OPT("zstd_level", BB_OPT_INT, zstd_level, "12", 1, 19,
        "zstd level; the payload is compressed once per report and locale, so a high level is "
        "cheap"),
    OPT("dict_check", BB_OPT_DURATION_MS, dict_check_ms, "60s", 1000, 86400000,
        "how often to look for a new dictionary at bb:zdict:current"),
    OPT("max_text", BB_OPT_BYTES, max_text, "4kb", 0, 1048576, "longest report text"),
    OPT("max_media", BB_OPT_INT, max_media, "8", 0, 64, "media items per report"),
    OPT("max_url", BB_OPT_BYTES, max_url, "2kb", 16, 65536, "longest media URL"),
    OPT("default_precision", BB_OPT_INT, default_precision, "7", 1, 12,
        "geohash precision of the location shown when a group sets none (7 ~ 150 m)"),
    OPT("watch_max_cells", BB_OPT_INT, watch_max_cells, "8", 4, 32,
        "geohash cells covering one personal watch area"),
    OPT("max_radius", BB_OPT_INT, max_radius_m, "5000", 1, 65535,
        "largest personal watch radius in metres"),
    OPT("out_high_watermark", BB_OPT_INT, out_high_watermark, "1000000", 1, 1000000000,
        "pause input when an output stream holds this many entries"),
    OPT("out_low_watermark", BB_OPT_INT, out_low_watermark, "500000", 0, 1000000000,
        "resume input when every output stream is down to this"),
    OPT("backpressure_check", BB_OPT_DURATION_MS, backpressure_check_ms, "200ms", 10, 60000,
        "how often to measure output streams"),
    OPT("trim_interval", BB_OPT_DURATION_MS, trim_interval_ms, "2s", 0, 3600000,
        "how often to trim from bb:reports and bb:out:* what every consumer group has read "
        "and acked (0: never; the streams then grow until trimmed by hand)"),
    OPT("shutdown_grace", BB_OPT_DURATION_MS, shutdown_grace_ms, "10s", 0, 600000,
        "on SIGTERM, how long to finish work in flight"),
    OPT("metrics_addr", BB_OPT_STRING, metrics_addr, "127.0.0.1:9464", 0, 0,
        "host:port for /metrics, /healthz, /readyz; empty: off"),
    OPT("log_level", BB_OPT_STRING, log_level, "info", 0, 0, "debug, info, warn or error"),
    OPT("console", BB_OPT_BOOL, console, "no", 0, 0,
        "serve the operator console (/console) on metrics_addr; needs console_token_file. "
        "metrics_addr is loopback by default: binding it elsewhere exposes the console too"),
    OPT("console_token_file", BB_OPT_SECRET_FILE, console_token, NULL, 0, 0,
        "file holding the console's bearer token (at least 16 characters)"),
};

const size_t bb_broker_nopts = sizeof(bb_broker_opts) / sizeof(bb_broker_opts[0]);
