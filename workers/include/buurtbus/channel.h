/* buurtbus channel plug-in ABI, version 1.
 *
 * A channel plug-in is a shared object that turns deliveries into messages
 * people receive (an e-mail, a push, a post). The worker host
 * (buurtbus-worker) loads it by name from its plug-in directory, calls
 * bb_channel_entry() with the ABI version it speaks, and gets back a
 * struct bb_channel describing the plug-in and its callbacks. A plug-in
 * includes this header and nothing else of buurtbus.
 *
 * Threads: the host calls every callback on its one event-loop thread
 * (struct event_base in struct bb_host_api). A plug-in never blocks that
 * thread: network I/O goes through the host's HTTP helper or the plug-in's
 * own non-blocking sockets on the same event base.
 *
 * Memory: everything the host passes is borrowed for the duration of the
 * call, except a struct bb_delivery passed to send(), which stays valid
 * until the plug-in calls done() for it. Memory a plug-in hands to the
 * host (format() output) comes from the host's allocator (host->alloc).
 *
 * Compatibility: fields are only ever appended. Each struct carries its
 * size; read a field only if the struct is large enough to hold it
 * (BB_HAS_FIELD). A plug-in built against version N works with any host
 * that speaks N; the host refuses, with a clear log line, a plug-in whose
 * abi_version it does not support. */
#ifndef BUURTBUS_CHANNEL_H
#define BUURTBUS_CHANNEL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BB_CHANNEL_ABI_VERSION 1

#if defined(__GNUC__)
#define BB_CHANNEL_EXPORT __attribute__((visibility("default")))
#else
#define BB_CHANNEL_EXPORT
#endif

/* True if the struct at p (which starts with uint32_t struct_size) holds field. */
#define BB_HAS_FIELD(p, type, field)                                                               \
    ((p)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

struct event_base;

/* ---- what a plug-in is sent ---------------------------------------------------------------- */

enum bb_urgency { BB_URGENCY_INFORMATIONAL = 1, BB_URGENCY_RECENT = 2, BB_URGENCY_IN_PROGRESS = 3 };
enum bb_notification_kind { BB_KIND_REPORT = 1, BB_KIND_STATUS = 2, BB_KIND_DIGEST = 3 };
enum bb_recipient_kind { BB_RECIPIENT_USER = 1, BB_RECIPIENT_GROUP = 2 };

/* One media item of a notification. */
struct bb_media {
    const char *url;
    const char *mime_type;
    int publishable; /* may appear in public posts */
};

/* What a person is shown. Never a member's internal id, contact address or
 * token; the location is already coarse. Strings are UTF-8, never NULL
 * ("" when absent). */
struct bb_notification {
    uint32_t struct_size;
    int kind;               /* enum bb_notification_kind */
    const char *report_id;
    const char *status_id;  /* kind STATUS */
    int64_t time_ms;
    int category;           /* Category number (proto/report.proto) */
    const char *category_name; /* "burglary", "suspicious_person", ... */
    int urgency;            /* enum bb_urgency */
    int source;             /* Source number */
    const char *locale;     /* language of title, e.g. "nl" */
    const char *title;      /* short, localised */
    const char *text;
    const char *author;     /* screen name, "" when anonymous */
    int anonymous;          /* render "a neighbour" in the reader's language */
    const char *cell;       /* geohash of the coarse location */
    double lat, lon;        /* centre of cell */
    const char *group_name;
    int status;             /* Status number, kind STATUS */
    const struct bb_media *media;
    size_t nmedia;
};

/* How to reach the recipient, resolved by the host from Redis at send
 * time (bb:user:{id}); fields a channel does not need may be "". */
struct bb_contact {
    uint32_t struct_size;
    const char *email;
    const char *push_token;    /* FCM/APNs token or Web Push subscription JSON */
    const char *push_platform; /* "fcm", "apns", "webpush" */
    const char *locale;        /* the reader's language */
    const char *screen_name;
    const char *unsubscribe_url;
    const char *endpoint;      /* per-recipient target (e.g. a group's account or webhook) */
    const char *time_zone;     /* the reader's IANA zone ("" unknown); times are shown in it
                                  (host->utc_offset_s). Check BB_HAS_FIELD before reading. */
};

/* One delivery: one notification to one recipient on this channel. */
struct bb_delivery {
    uint32_t struct_size;
    const char *delivery_id; /* deterministic; pass it as the provider's idempotency key */
    uint64_t recipient;      /* user id, or group id for RECIPIENT_GROUP */
    int recipient_kind;      /* enum bb_recipient_kind */
    unsigned attempt;        /* 1 for the first try */
    const struct bb_notification *n;
    const struct bb_contact *contact;
    /* Digest mode: the notifications collected for this person (n is then
     * the digest's own header: kind BB_KIND_DIGEST, title, locale). */
    const struct bb_notification *const *items;
    size_t nitems;
    /* 1 when an earlier try of this delivery may have reached the provider:
     * a worker handed it over and died before it recorded the outcome. The
     * host resends such a delivery only to a plug-in with
     * BB_CAP_IDEMPOTENCY_KEY, which must then make sure it takes effect at
     * most once (the provider deduplicates on delivery_id, or the plug-in
     * checks its own sink). Read with BB_HAS_FIELD (added in ABI 1). */
    int maybe_sent;
};

/* ---- outcomes ------------------------------------------------------------------------------ */

enum bb_send_status {
    BB_SEND_OK = 0,        /* handed over; the host writes a receipt */
    BB_SEND_RETRY = 1,     /* try later (retry_after_s if the provider said, else backoff) */
    BB_SEND_PERMANENT = 2, /* never succeeds: the host writes a receipt and a dead letter */
    BB_SEND_GONE = 3,      /* permanent, and the address is gone (unregistered token, hard
                              bounce): the host also removes it from the directory */
};

/* Completes a send. Call it exactly once per send(), from the event-loop
 * thread, possibly before send() returns. reason: short, machine-readable
 * ("http_503", "unregistered"), borrowed for the call. */
typedef void bb_send_done_fn(void *token, int status, unsigned retry_after_s, const char *reason);

/* ---- what the host offers ------------------------------------------------------------------ */

enum bb_log_level_abi { BB_PLUGIN_DEBUG = 0, BB_PLUGIN_INFO, BB_PLUGIN_WARN, BB_PLUGIN_ERROR };

struct bb_http_header {
    const char *name;
    const char *value;
};

struct bb_http_request {
    uint32_t struct_size;
    const char *method; /* "POST", "GET", ... */
    const char *url;
    const struct bb_http_header *headers;
    size_t nheaders;
    const void *body;
    size_t body_len;
    long timeout_ms;  /* 0: the host's default */
    int http2;        /* 1: HTTP/2 over TLS or prior knowledge for http:// */
    const char *pool; /* connections and limits are shared per pool name (e.g. the provider) */
};

struct bb_http_response {
    uint32_t struct_size;
    long status;          /* HTTP status; 0 when no response (see error) */
    const char *error;    /* transport error ("timeout", "connect"), or "" */
    const char *body;
    size_t body_len;
    long retry_after_s;   /* parsed Retry-After, or -1 */
    const struct bb_http_header *headers;
    size_t nheaders;
};

typedef void bb_http_done_fn(void *arg, const struct bb_http_response *res);

/* A Redis reply as the host's hiredis gives it (struct redisReply *), NULL
 * when the command failed with the connection; borrowed for the call. */
typedef void bb_redis_done_fn(void *arg, const void *reply);
/* A finished libcurl easy handle (CURL *) and its CURLcode. The plug-in
 * still owns the handle. */
typedef void bb_curl_done_fn(void *arg, void *easy, int curlcode);

struct bb_host;

struct bb_host_api {
    uint32_t struct_size;
    uint32_t abi_version;
    struct bb_host *host;
    struct event_base *base; /* the event loop every callback runs on */
    void *(*alloc)(size_t n);
    void *(*realloc)(void *p, size_t n);
    void (*free)(void *p);
    /* logfmt line "msg" plus printf-formatted key=value pairs; never log
     * addresses, tokens or message text. */
    void (*log)(struct bb_host *host, int level, const char *msg, const char *kvfmt, ...)
        __attribute__((format(printf, 4, 5)));
    /* Starts an HTTP request on the host's libcurl multi handle (HTTP/2
     * multiplexing, connection reuse). done runs once, on the loop. */
    int (*http)(struct bb_host *host, const struct bb_http_request *req, bb_http_done_fn *done,
                void *arg);
    /* Runs a prepared libcurl easy handle (SMTP, or HTTP with options the
     * helper above lacks) on the host's multi handle; done runs once, on
     * the loop. */
    int (*curl)(struct bb_host *host, void *easy, bb_curl_done_fn *done, void *arg);
    /* A Redis command on the host's connection (for channels that live in
     * Redis, such as the in-app inbox). done may be NULL. */
    int (*redis)(struct bb_host *host, bb_redis_done_fn *done, void *arg, int argc,
                 const char **argv, const size_t *argvlen);
    /* UTC offset in seconds of the IANA zone tz at unix_s, from the host's
     * zone data ("" or unknown: Europe/Amsterdam). Check BB_HAS_FIELD. */
    int32_t (*utc_offset_s)(struct bb_host *host, const char *tz, int64_t unix_s);
    void *reserved[7];
};

/* ---- a plug-in's configuration ------------------------------------------------------------- */

enum bb_option_type {
    BB_OPTION_STRING = 1,
    BB_OPTION_INT,
    BB_OPTION_BOOL,
    BB_OPTION_DURATION_MS,
    BB_OPTION_SECRET_FILE, /* the value names a file; the plug-in gets its first line */
};

/* One entry of a plug-in's config table; the table ends with name NULL. */
struct bb_channel_option {
    const char *name; /* in the worker's config: channel.<plug-in name>.<name> */
    int type;         /* enum bb_option_type */
    const char *def;  /* default as text; NULL: required */
    const char *help;
};

/* The values the host parsed and checked against the table: value(name)
 * returns the text (defaults filled in, secret files read), NULL for an
 * unknown name. Borrowed for the duration of init. */
struct bb_channel_config {
    uint32_t struct_size;
    const char *instance; /* the channel's name in the worker config (e.g. "email") */
    const char *(*value)(const struct bb_channel_config *cfg, const char *name);
    int64_t (*integer)(const struct bb_channel_config *cfg, const char *name);
    void *opaque;
};

/* ---- the plug-in ----------------------------------------------------------------------------- */

enum bb_channel_caps {
    BB_CAP_BATCH = 1u << 0,           /* send() may be called many times before done() */
    BB_CAP_IDEMPOTENCY_KEY = 1u << 1, /* delivery_id makes a resend harmless (see maybe_sent) */
    BB_CAP_HTTP2 = 1u << 2,           /* uses HTTP/2 through the host */
    BB_CAP_DIGEST = 1u << 3,          /* understands digest deliveries (items) */
    BB_CAP_PUBLIC = 1u << 4,          /* posts publicly: gets group recipients only */
};

struct bb_channel {
    uint32_t struct_size;
    uint32_t abi_version; /* BB_CHANNEL_ABI_VERSION the plug-in was built with */
    const char *name;     /* "smtp", "fcm", ... (the file is bb-channel-<name>.so) */
    const char *description;
    uint32_t caps;        /* enum bb_channel_caps */
    const struct bb_channel_option *options;

    /* Creates the plug-in's context from its configuration. Returns 0, or
     * non-zero with a message in err. */
    int (*init)(const struct bb_host_api *host, const struct bb_channel_config *cfg, void **ctx,
                char *err, size_t errlen);
    /* Starts one delivery; completes through done(token, ...). Returns 0,
     * or non-zero if it could not even start (treated as BB_SEND_RETRY;
     * done must then not be called). */
    int (*send)(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token);
    /* Renders d as it would go out (e-mail source, JSON body) without any
     * network I/O, into memory from host->alloc. For tests and
     * buurtbus-plugin-check. Returns 0 or non-zero. */
    int (*format)(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen);
    /* Frees the context. Sends in flight have completed or are abandoned
     * (the host retries them). */
    void (*destroy)(void *ctx);

    void *reserved[8];
};

/* The one symbol a plug-in exports. host_abi: the version the host speaks.
 * Returns the plug-in's table, or NULL if it cannot work with that host. */
typedef const struct bb_channel *bb_channel_entry_fn(uint32_t host_abi);
BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi);

#ifdef __cplusplus
}
#endif

#endif
