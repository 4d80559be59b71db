/* bb-h2-sink: a small HTTP server that stands in for a push provider (FCM,
 * APNs, a Web Push service, a webhook receiver) in plug-in tests and in
 * the worker benchmark (bench/run_worker.sh).
 *
 * It speaks HTTP/2 over cleartext with prior knowledge (h2c, what libcurl
 * does for http:// with CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE) and, on the
 * same port, minimal HTTP/1.1 (keep-alive requests with Content-Length);
 * the first bytes of a connection decide which (the HTTP/2 client
 * preface). With --tls-cert/--tls-key it speaks TLS instead, offering h2
 * and http/1.1 by ALPN, as the real providers do (libcurl 7.88 cannot
 * reuse an h2c prior-knowledge connection, curl#10634, so load over one
 * multiplexed connection needs TLS). Every request is answered once its body is complete:
 *
 *   1. a request header x-sink-status: N (and x-sink-retry-after: S) wins;
 *   2. else the first --rule whose substring is in the path (or, for
 *      "body:" rules, in the request body) gives status, Retry-After, body;
 *   3. else --status (default 200) with --body, by default FCM's
 *      {"name":"projects/p/messages/<n>"}.
 * A request's apns-id header is echoed back, as APNs does.
 *
 * Counts connections, requests, HTTP/2 streams, request body bytes and
 * answers per status; --stats-file gets them as one JSON object on SIGUSR1
 * (and the sink goes on) and on SIGTERM/SIGINT (and the sink exits).
 * --log appends one line per request: "<method> <path> <status> <value of
 * --log-header or ->", flushed at once, for tests to read.
 *
 * Threads: one thread, one libevent loop; one bufferevent and (for HTTP/2)
 * one nghttp2 server session per connection, SETTINGS_MAX_CONCURRENT_STREAMS
 * 1000.
 *
 * Usage: bb-h2-sink [--bind ADDR] [--port N] [--port-file F] [--stats-file F]
 *                   [--status N] [--body TEXT] [--delay-ms N]
 *                   [--rule '[body:]SUBSTR=STATUS[:RETRY_AFTER[:BODY]]']...
 *                   [--token-path SUBSTR] [--log F] [--log-header NAME]
 *                   [--tls-cert PEM --tls-key PEM] */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define SINK_MAX_RULES 64
#define SINK_BODY_KEEP 16384    /* request body bytes kept for body: rules */
#define SINK_MAX_HEADER_LINE 8192
#define SINK_MAX_H1_BODY (16L << 20)
#define SINK_MAX_STREAMS 1000
/* The connection's receive window. Streams keep the default 64 KiB:
 * libcurl 7.88 fails ("Error in the HTTP2 framing layer") on a reused
 * connection whose SETTINGS_INITIAL_WINDOW_SIZE was raised. */
#define SINK_WINDOW (1 << 24)
#define SINK_OUT_HIGH (4 << 20) /* stop reading a connection above this much unsent output */
#define SINK_TOKEN_BODY "{\"access_token\":\"sink-access-token\",\"expires_in\":3600,\"token_type\":\"Bearer\"}"

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN (sizeof(h2_preface) - 1)

struct sink_rule {
    bool in_body;      /* match the request body instead of the path */
    char *substr;
    int status;
    long retry_after;  /* seconds; -1: no Retry-After */
    const char *body;  /* NULL: the default body for the status */
};

struct sink_opts {
    const char *bind;
    long port;
    const char *port_file;
    const char *stats_file;
    int status;
    const char *body;
    long delay_ms;
    struct sink_rule rules[SINK_MAX_RULES];
    size_t nrules;
    const char *log_path;
    const char *log_header;
    const char *tls_cert;
    const char *tls_key;
};

struct sink_stats {
    uint64_t connections;
    uint64_t h2_connections;
    uint64_t h1_connections;
    uint64_t requests;    /* answered requests, both protocols */
    uint64_t h2_streams;  /* HTTP/2 streams opened by clients */
    uint64_t h1_requests;
    uint64_t bytes_in;    /* request body bytes */
    uint64_t bytes_out;   /* response body bytes */
    uint64_t protocol_errors;
    uint64_t by_status[600];
};

/* One request being read, either protocol. */
struct sink_req {
    char method[16];
    char path[1024];
    char logval[256];  /* value of --log-header */
    char apns_id[64];
    int forced_status; /* x-sink-status, 0 when absent */
    long forced_retry;
    char *body;        /* the first SINK_BODY_KEEP bytes */
    size_t body_len;
    uint64_t body_total;
};

/* Its answer. */
struct sink_resp {
    int status;
    long retry_after;
    char *body; /* malloc'd */
    size_t len;
    size_t off; /* HTTP/2: bytes already handed to nghttp2 */
};

enum conn_proto { PROTO_UNKNOWN = 0, PROTO_H2, PROTO_H1 };

struct sink_conn;

struct h2_stream {
    struct sink_conn *conn;
    int32_t id;
    struct sink_req req;
    struct sink_resp resp;
    struct event *delay; /* --delay-ms timer, NULL when answered at once */
    struct h2_stream *prev, *next; /* the connection's open streams */
};

struct sink_conn {
    struct bufferevent *bev;
    enum conn_proto proto;
    nghttp2_session *h2;
    struct h2_stream *streams; /* nghttp2_session_del does not close them */
    /* HTTP/1.1 state */
    bool h1_in_body;
    bool h1_close;
    long h1_content_length;
    struct sink_req h1_req;
    bool closing; /* close once the output is flushed */
    struct sink_conn *prev, *next; /* all open connections, freed at exit */
};

static struct sink_opts opts = {.bind = "127.0.0.1", .port = 0, .status = 200, .delay_ms = 0};
static struct sink_stats stats;
static struct event_base *base;
static FILE *log_file;
static SSL_CTX *tls_ctx; /* NULL: cleartext */
static struct sink_conn *conns;
static uint64_t message_seq;
static bool body_rules; /* some --rule matches bodies: keep them */

/* ---- answers ----------------------------------------------------------------------------- */

static void req_reset(struct sink_req *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Keeps the first SINK_BODY_KEEP body bytes, only when a body: rule needs them. */
static void req_add_body(struct sink_req *r, const uint8_t *p, size_t n)
{
    r->body_total += n;
    stats.bytes_in += n;
    if (!body_rules || r->body_len >= SINK_BODY_KEEP) {
        return;
    }
    size_t take = n < SINK_BODY_KEEP - r->body_len ? n : SINK_BODY_KEEP - r->body_len;
    char *b = realloc(r->body, r->body_len + take + 1);
    if (b == NULL) {
        return;
    }
    r->body = b;
    memcpy(r->body + r->body_len, p, take);
    r->body_len += take;
    r->body[r->body_len] = '\0';
}

static void req_header(struct sink_req *r, const char *name, size_t namelen, const char *value,
                       size_t valuelen)
{
#define COPY_TO(field)                                                                             \
    do {                                                                                           \
        size_t n_ = valuelen < sizeof(field) - 1 ? valuelen : sizeof(field) - 1;                   \
        memcpy(field, value, n_);                                                                  \
        field[n_] = '\0';                                                                          \
    } while (0)
    char num[32];
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        COPY_TO(r->method);
    } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
        COPY_TO(r->path);
    } else if (namelen == 7 && strncasecmp(name, "apns-id", 7) == 0) {
        COPY_TO(r->apns_id);
    } else if (namelen == 13 && strncasecmp(name, "x-sink-status", 13) == 0) {
        COPY_TO(num);
        r->forced_status = atoi(num);
    } else if (namelen == 18 && strncasecmp(name, "x-sink-retry-after", 18) == 0) {
        COPY_TO(num);
        r->forced_retry = atol(num);
    }
    if (opts.log_header != NULL && strlen(opts.log_header) == namelen &&
        strncasecmp(name, opts.log_header, namelen) == 0) {
        COPY_TO(r->logval);
    }
#undef COPY_TO
}

static char *dup_text(const char *s, size_t *len)
{
    *len = strlen(s);
    char *d = malloc(*len + 1);
    if (d != NULL) {
        memcpy(d, s, *len + 1);
    }
    return d;
}

/* Decides the answer to a complete request and counts it. */
static void decide(const struct sink_req *r, struct sink_resp *out)
{
    const char *body = NULL;
    char buf[256];

    out->status = opts.status;
    out->retry_after = -1;
    out->off = 0;
    if (r->forced_status >= 100 && r->forced_status <= 599) {
        out->status = r->forced_status;
        out->retry_after = r->forced_retry > 0 ? r->forced_retry : -1;
    } else {
        for (size_t i = 0; i < opts.nrules; i++) {
            const struct sink_rule *rule = &opts.rules[i];
            const char *hay = rule->in_body ? (r->body != NULL ? r->body : "") : r->path;
            if (strstr(hay, rule->substr) != NULL) {
                out->status = rule->status;
                out->retry_after = rule->retry_after;
                body = rule->body;
                break;
            }
        }
    }
    if (body == NULL) {
        if (out->status >= 200 && out->status < 300) {
            if (opts.body != NULL) {
                body = opts.body;
            } else {
                snprintf(buf, sizeof(buf), "{\"name\":\"projects/p/messages/%" PRIu64 "\"}",
                         ++message_seq);
                body = buf;
            }
        } else {
            snprintf(buf, sizeof(buf), "{\"error\":{\"code\":%d,\"message\":\"bb-h2-sink\"}}",
                     out->status);
            body = buf;
        }
    }
    out->body = dup_text(body, &out->len);
    if (out->body == NULL) {
        out->len = 0;
    }
    stats.requests++;
    stats.bytes_out += out->len;
    if (out->status >= 100 && out->status < 600) {
        stats.by_status[out->status]++;
    }
    if (log_file != NULL) {
        fprintf(log_file, "%s %s %d %s\n", r->method[0] ? r->method : "-",
                r->path[0] ? r->path : "-", out->status, r->logval[0] ? r->logval : "-");
        fflush(log_file);
    }
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

/* ---- connections ------------------------------------------------------------------------- */

static void stream_free(struct h2_stream *s)
{
    struct sink_conn *c = s->conn;
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        c->streams = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    if (s->delay != NULL) {
        event_free(s->delay);
    }
    req_reset(&s->req);
    free(s->resp.body);
    free(s);
}

static void conn_free(struct sink_conn *c)
{
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (c->h2 != NULL) {
        nghttp2_session_del(c->h2);
    }
    while (c->streams != NULL) {
        stream_free(c->streams);
    }
    req_reset(&c->h1_req);
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
    }
    free(c);
}

/* After output was produced: closes the connection if it is done, or
 * pauses reading while the peer does not take what it is sent. */
static void conn_after_io(struct sink_conn *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (c->proto == PROTO_H2 && c->h2 != NULL && !c->closing &&
        !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
        c->closing = true;
    }
    if (c->closing) {
        bufferevent_disable(c->bev, EV_READ);
        if (evbuffer_get_length(out) == 0) {
            conn_free(c);
        }
        return;
    }
    if (evbuffer_get_length(out) > SINK_OUT_HIGH) {
        bufferevent_disable(c->bev, EV_READ);
    } else {
        bufferevent_enable(c->bev, EV_READ);
    }
}

/* ---- HTTP/2 ------------------------------------------------------------------------------ */

static ssize_t h2_send_cb(nghttp2_session *session, const uint8_t *data, size_t length, int flags,
                          void *user_data)
{
    struct sink_conn *c = user_data;
    if (bufferevent_write(c->bev, data, length) != 0) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)length;
}

static ssize_t h2_read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data)
{
    struct h2_stream *s = source->ptr;
    size_t left = s->resp.len - s->resp.off;
    size_t n = left < length ? left : length;
    if (n > 0) {
        memcpy(buf, s->resp.body + s->resp.off, n);
    }
    s->resp.off += n;
    if (s->resp.off == s->resp.len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

static int h2_submit(struct h2_stream *s)
{
    char status[8], clen[24], retry[24];
    nghttp2_nv nv[5];
    size_t n = 0;
#define NV(k, v)                                                                                   \
    do {                                                                                           \
        nv[n].name = (uint8_t *)(k);                                                               \
        nv[n].namelen = strlen(k);                                                                 \
        nv[n].value = (uint8_t *)(v);                                                              \
        nv[n].valuelen = strlen(v);                                                                \
        nv[n].flags = NGHTTP2_NV_FLAG_NONE;                                                        \
        n++;                                                                                       \
    } while (0)
    snprintf(status, sizeof(status), "%d", s->resp.status);
    snprintf(clen, sizeof(clen), "%zu", s->resp.len);
    NV(":status", status);
    NV("content-type", "application/json");
    NV("content-length", clen);
    if (s->resp.retry_after >= 0) {
        snprintf(retry, sizeof(retry), "%ld", s->resp.retry_after);
        NV("retry-after", retry);
    }
    if (s->req.apns_id[0]) {
        NV("apns-id", s->req.apns_id);
    }
#undef NV
    nghttp2_data_provider dp = {.source = {.ptr = s}, .read_callback = h2_read_body};
    return nghttp2_submit_response(s->conn->h2, s->id, nv, n, s->resp.len > 0 ? &dp : NULL);
}

static void h2_flush(struct sink_conn *c)
{
    if (nghttp2_session_send(c->h2) != 0) {
        c->closing = true;
    }
    conn_after_io(c);
}

static void h2_delay_done(evutil_socket_t fd, short what, void *arg)
{
    struct h2_stream *s = arg;
    struct sink_conn *c = s->conn;
    event_free(s->delay);
    s->delay = NULL;
    if (h2_submit(s) != 0) {
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    }
    h2_flush(c);
}

static int h2_request_complete(struct sink_conn *c, struct h2_stream *s)
{
    decide(&s->req, &s->resp);
    if (opts.delay_ms > 0) {
        struct timeval tv = {opts.delay_ms / 1000, (opts.delay_ms % 1000) * 1000};
        s->delay = evtimer_new(base, h2_delay_done, s);
        if (s->delay != NULL && evtimer_add(s->delay, &tv) == 0) {
            return 0;
        }
        if (s->delay != NULL) {
            event_free(s->delay);
            s->delay = NULL;
        }
    }
    if (h2_submit(s) != 0) {
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    }
    return 0;
}

static int h2_on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    struct sink_conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    struct h2_stream *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    s->conn = c;
    s->id = frame->hd.stream_id;
    s->next = c->streams;
    if (c->streams != NULL) {
        c->streams->prev = s;
    }
    c->streams = s;
    stats.h2_streams++;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

static int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user_data)
{
    if (frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s != NULL) {
        req_header(&s->req, (const char *)name, namelen, (const char *)value, valuelen);
    }
    return 0;
}

static int h2_on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                            const uint8_t *data, size_t len, void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s != NULL) {
        req_add_body(&s->req, data, len);
    }
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct sink_conn *c = user_data;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        return 0;
    }
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL) {
        return 0;
    }
    return h2_request_complete(c, s);
}

static int h2_on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                              void *user_data)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s == NULL) {
        return 0;
    }
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    stream_free(s);
    return 0;
}

static int h2_start(struct sink_conn *c)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        return -1;
    }
    nghttp2_session_callbacks_set_send_callback(cb, h2_send_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, h2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_stream_close);
    int rv = nghttp2_session_server_new(&c->h2, cb, c);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) {
        c->h2 = NULL;
        return -1;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, SINK_MAX_STREAMS},
    };
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, SINK_WINDOW) != 0) {
        return -1;
    }
    stats.h2_connections++;
    c->proto = PROTO_H2;
    return 0;
}

/* Feeds the input to nghttp2 chunk by chunk (no pullup copy). */
static void h2_read(struct sink_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[16];
    while (!c->closing && evbuffer_get_length(in) > 0) {
        int nv = evbuffer_peek(in, -1, NULL, v, 16);
        size_t used = 0;
        for (int i = 0; i < nv && i < 16; i++) {
            ssize_t n = nghttp2_session_mem_recv(c->h2, v[i].iov_base, v[i].iov_len);
            if (n < 0) {
                stats.protocol_errors++;
                c->closing = true;
                used = evbuffer_get_length(in);
                break;
            }
            used += (size_t)n;
        }
        evbuffer_drain(in, used);
    }
    h2_flush(c);
}

/* ---- HTTP/1.1 ---------------------------------------------------------------------------- */

static void h1_respond(struct sink_conn *c)
{
    struct sink_resp resp;
    struct evbuffer *out = bufferevent_get_output(c->bev);

    decide(&c->h1_req, &resp);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
                        resp.status, reason_phrase(resp.status), resp.len);
    if (resp.retry_after >= 0) {
        evbuffer_add_printf(out, "Retry-After: %ld\r\n", resp.retry_after);
    }
    if (c->h1_req.apns_id[0]) {
        evbuffer_add_printf(out, "apns-id: %s\r\n", c->h1_req.apns_id);
    }
    if (c->h1_close) {
        evbuffer_add_printf(out, "Connection: close\r\n");
        c->closing = true;
    }
    evbuffer_add(out, "\r\n", 2);
    evbuffer_add(out, resp.body, resp.len);
    free(resp.body);
    stats.h1_requests++;
    req_reset(&c->h1_req);
    c->h1_in_body = false;
    c->h1_close = false;
}

/* Parses the request line and headers of one request; returns 1 when they
 * are complete, 0 when more bytes are needed, -1 on a bad request. */
static int h1_head(struct sink_conn *c, struct evbuffer *in)
{
    for (;;) {
        size_t n = 0;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (line == NULL) {
            return evbuffer_get_length(in) > SINK_MAX_HEADER_LINE ? -1 : 0;
        }
        if (c->h1_req.method[0] == '\0') {
            if (n == 0) { /* tolerated empty line before a request */
                free(line);
                continue;
            }
            char *sp1 = strchr(line, ' ');
            char *sp2 = sp1 != NULL ? strchr(sp1 + 1, ' ') : NULL;
            if (sp1 == NULL || sp2 == NULL) {
                free(line);
                return -1;
            }
            req_header(&c->h1_req, ":method", 7, line, (size_t)(sp1 - line));
            req_header(&c->h1_req, ":path", 5, sp1 + 1, (size_t)(sp2 - sp1 - 1));
            c->h1_content_length = 0;
            c->h1_close = strcmp(sp2 + 1, "HTTP/1.0") == 0;
            free(line);
            continue;
        }
        if (n == 0) {
            free(line);
            return 1;
        }
        char *colon = strchr(line, ':');
        if (colon == NULL) {
            free(line);
            return -1;
        }
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        size_t namelen = (size_t)(colon - line);
        if (namelen == 14 && strncasecmp(line, "content-length", 14) == 0) {
            char *end;
            errno = 0;
            c->h1_content_length = strtol(v, &end, 10);
            if (errno || c->h1_content_length < 0 || c->h1_content_length > SINK_MAX_H1_BODY) {
                free(line);
                return -1;
            }
        } else if (namelen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            free(line); /* chunked bodies are not supported */
            return -1;
        } else if (namelen == 10 && strncasecmp(line, "connection", 10) == 0) {
            c->h1_close = strcasecmp(v, "close") == 0;
        } else {
            req_header(&c->h1_req, line, namelen, v, strlen(v));
        }
        free(line);
    }
}

static void h1_read(struct sink_conn *c, struct evbuffer *in)
{
    while (!c->closing) {
        if (!c->h1_in_body) {
            int rv = h1_head(c, in);
            if (rv < 0) {
                stats.protocol_errors++;
                evbuffer_add_printf(bufferevent_get_output(c->bev),
                                    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                    "Connection: close\r\n\r\n");
                c->closing = true;
                break;
            }
            if (rv == 0) {
                break;
            }
            c->h1_in_body = true;
        }
        size_t have = evbuffer_get_length(in);
        if (have < (size_t)c->h1_content_length) {
            break;
        }
        size_t n = (size_t)c->h1_content_length;
        if (n > 0) {
            req_add_body(&c->h1_req, evbuffer_pullup(in, (ssize_t)n), n);
            evbuffer_drain(in, n);
        }
        h1_respond(c);
    }
    conn_after_io(c);
}

/* ---- libevent glue ----------------------------------------------------------------------- */

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sink_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (c->proto == PROTO_UNKNOWN) {
        size_t have = evbuffer_get_length(in);
        size_t cmp = have < H2_PREFACE_LEN ? have : H2_PREFACE_LEN;
        const unsigned char *p = evbuffer_pullup(in, (ssize_t)cmp);
        if (memcmp(p, h2_preface, cmp) != 0) {
            c->proto = PROTO_H1;
            stats.h1_connections++;
        } else if (have < H2_PREFACE_LEN) {
            return; /* could still be the preface */
        } else if (h2_start(c) != 0) {
            conn_free(c);
            return;
        }
    }
    if (c->proto == PROTO_H2) {
        h2_read(c, in);
    } else {
        h1_read(c, in);
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct sink_conn *c = arg;
    if (c->proto == PROTO_H2 && !c->closing) {
        h2_flush(c);
        return;
    }
    conn_after_io(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct sink_conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        conn_free(c);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct sink_conn *c = calloc(1, sizeof(*c));
    int one = 1;
    if (c == NULL) {
        evutil_closesocket(fd);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (tls_ctx != NULL) {
        SSL *ssl = SSL_new(tls_ctx);
        if (ssl == NULL) {
            evutil_closesocket(fd);
            free(c);
            return;
        }
        /* On failure the bufferevent has taken neither the SSL nor fd. */
        c->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (c->bev == NULL) {
            SSL_free(ssl);
        } else {
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        }
    } else {
        c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (c->bev == NULL) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    stats.connections++;
    c->next = conns;
    if (conns != NULL) {
        conns->prev = c;
    }
    conns = c;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

/* ALPN: h2 when the client offers it, else http/1.1. */
static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                           const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char prefs[] = "\x02h2\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, prefs, sizeof(prefs) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *tls_ctx_new(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        ERR_print_errors_fp(stderr);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    return ctx;
}

/* ---- stats, signals, options ------------------------------------------------------------- */

static int write_file_atomic(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        return -1;
    }
    int bad = fputs(text, f) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void write_stats(void)
{
    char buf[16384];
    size_t n = 0;
    n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                          "{\"connections\":%" PRIu64 ",\"h2_connections\":%" PRIu64
                          ",\"h1_connections\":%" PRIu64 ",\"requests\":%" PRIu64
                          ",\"h2_streams\":%" PRIu64 ",\"h1_requests\":%" PRIu64
                          ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
                          ",\"protocol_errors\":%" PRIu64 ",\"status\":{",
                          stats.connections, stats.h2_connections, stats.h1_connections,
                          stats.requests, stats.h2_streams, stats.h1_requests, stats.bytes_in,
                          stats.bytes_out, stats.protocol_errors);
    bool first = true;
    for (int s = 100; s < 600 && n < sizeof(buf) - 64; s++) {
        if (stats.by_status[s] != 0) {
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s\"%d\":%" PRIu64, first ? "" : ",",
                                  s, stats.by_status[s]);
            first = false;
        }
    }
    snprintf(buf + n, sizeof(buf) - n, "}}\n");
    if (opts.stats_file != NULL) {
        if (write_file_atomic(opts.stats_file, buf) != 0) {
            fprintf(stderr, "bb-h2-sink: cannot write %s: %s\n", opts.stats_file, strerror(errno));
        }
    } else {
        fputs(buf, stdout);
        fflush(stdout);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    write_stats();
    if (sig != SIGUSR1) {
        event_base_loopbreak(base);
    }
}

static void usage(void)
{
    fputs("usage: bb-h2-sink [--bind ADDR] [--port N] [--port-file F] [--stats-file F]\n"
          "                  [--status N] [--body TEXT] [--delay-ms N]\n"
          "                  [--rule '[body:]SUBSTR=STATUS[:RETRY_AFTER[:BODY]]']...\n"
          "                  [--token-path SUBSTR] [--log F] [--log-header NAME]\n"
          "                  [--tls-cert PEM --tls-key PEM]\n",
          stderr);
}

/* [body:]SUBSTR=STATUS[:RETRY_AFTER[:BODY]]; BODY is the rest of the text. */
static int add_rule(const char *text, const char *fixed_body)
{
    if (opts.nrules == SINK_MAX_RULES) {
        return -1;
    }
    struct sink_rule *r = &opts.rules[opts.nrules];
    memset(r, 0, sizeof(*r));
    if (strncmp(text, "body:", 5) == 0) {
        r->in_body = true;
        body_rules = true;
        text += 5;
    }
    const char *eq = strchr(text, '=');
    if (eq == NULL || eq == text) {
        return -1;
    }
    char *end;
    long status = strtol(eq + 1, &end, 10);
    if (status < 100 || status > 599 || (*end != '\0' && *end != ':')) {
        return -1;
    }
    r->status = (int)status;
    r->retry_after = -1;
    r->body = fixed_body;
    if (*end == ':') {
        const char *p = end + 1;
        if (*p != ':' && *p != '\0') {
            r->retry_after = strtol(p, &end, 10);
            if (r->retry_after < 0 || (*end != '\0' && *end != ':')) {
                return -1;
            }
            p = end;
        }
        if (*p == ':') {
            r->body = p + 1;
        }
    }
    r->substr = strndup(text, (size_t)(eq - text));
    if (r->substr == NULL) {
        return -1;
    }
    opts.nrules++;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"bind", required_argument, NULL, 'b'},
        {"port", required_argument, NULL, 'p'},
        {"port-file", required_argument, NULL, 'P'},
        {"stats-file", required_argument, NULL, 's'},
        {"status", required_argument, NULL, 'S'},
        {"body", required_argument, NULL, 'B'},
        {"delay-ms", required_argument, NULL, 'd'},
        {"rule", required_argument, NULL, 'r'},
        {"token-path", required_argument, NULL, 't'},
        {"log", required_argument, NULL, 'l'},
        {"log-header", required_argument, NULL, 'H'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch, rc = 1;
    char rule[1200];

    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'b': opts.bind = optarg; break;
        case 'p': opts.port = strtol(optarg, NULL, 10); break;
        case 'P': opts.port_file = optarg; break;
        case 's': opts.stats_file = optarg; break;
        case 'S': opts.status = atoi(optarg); break;
        case 'B': opts.body = optarg; break;
        case 'd': opts.delay_ms = strtol(optarg, NULL, 10); break;
        case 'r':
            if (add_rule(optarg, NULL) != 0) {
                fprintf(stderr, "bb-h2-sink: bad --rule %s\n", optarg);
                return 2;
            }
            break;
        case 't':
            snprintf(rule, sizeof(rule), "%s=200", optarg);
            if (add_rule(rule, SINK_TOKEN_BODY) != 0) {
                fprintf(stderr, "bb-h2-sink: bad --token-path %s\n", optarg);
                return 2;
            }
            break;
        case 'l': opts.log_path = optarg; break;
        case 'H': opts.log_header = optarg; break;
        case 'c': opts.tls_cert = optarg; break;
        case 'k': opts.tls_key = optarg; break;
        case 'h': usage(); return 0;
        default: usage(); return 2;
        }
    }
    if (opts.port < 0 || opts.port > 65535 || opts.status < 100 || opts.status > 599 ||
        opts.delay_ms < 0 || (opts.tls_cert == NULL) != (opts.tls_key == NULL)) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opts.port)};
    if (inet_pton(AF_INET, opts.bind, &sin.sin_addr) != 1) {
        fprintf(stderr, "bb-h2-sink: --bind takes an IPv4 address\n");
        return 2;
    }
    if (opts.log_path != NULL) {
        log_file = fopen(opts.log_path, "a");
        if (log_file == NULL) {
            fprintf(stderr, "bb-h2-sink: cannot open %s: %s\n", opts.log_path, strerror(errno));
            return 1;
        }
    }
    if (opts.tls_cert != NULL) {
        tls_ctx = tls_ctx_new(opts.tls_cert, opts.tls_key);
        if (tls_ctx == NULL) {
            fprintf(stderr, "bb-h2-sink: cannot load %s / %s\n", opts.tls_cert, opts.tls_key);
            goto out_log;
        }
    }
    base = event_base_new();
    if (base == NULL) {
        goto out_tls;
    }
    struct evconnlistener *l = evconnlistener_new_bind(
        base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 1024,
        (struct sockaddr *)&sin, sizeof(sin));
    if (l == NULL) {
        fprintf(stderr, "bb-h2-sink: cannot listen on %s:%ld: %s\n", opts.bind, opts.port,
                strerror(errno));
        goto out_base;
    }
    socklen_t slen = sizeof(sin);
    getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &slen);
    unsigned port = ntohs(sin.sin_port);

    struct event *sigs[3] = {
        evsignal_new(base, SIGTERM, on_signal, NULL),
        evsignal_new(base, SIGINT, on_signal, NULL),
        evsignal_new(base, SIGUSR1, on_signal, NULL),
    };
    for (int i = 0; i < 3; i++) {
        if (sigs[i] == NULL || evsignal_add(sigs[i], NULL) != 0) {
            fprintf(stderr, "bb-h2-sink: cannot install signal handlers\n");
            goto out_signals;
        }
    }
    if (opts.port_file != NULL) {
        char text[16];
        snprintf(text, sizeof(text), "%u\n", port);
        if (write_file_atomic(opts.port_file, text) != 0) {
            fprintf(stderr, "bb-h2-sink: cannot write %s: %s\n", opts.port_file, strerror(errno));
            goto out_signals;
        }
    }
    fprintf(stderr, "bb-h2-sink: listening %s:%u\n", opts.bind, port);
    event_base_dispatch(base);
    while (conns != NULL) {
        conn_free(conns);
    }
    rc = 0;
out_signals:
    for (int i = 0; i < 3; i++) {
        if (sigs[i] != NULL) {
            event_free(sigs[i]);
        }
    }
    evconnlistener_free(l);
out_base:
    event_base_free(base);
out_tls:
    SSL_CTX_free(tls_ctx);
out_log:
    if (log_file != NULL) {
        fclose(log_file);
    }
    for (size_t i = 0; i < opts.nrules; i++) {
        free(opts.rules[i].substr);
    }
    return rc;
}
