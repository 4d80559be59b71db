/* What the host offers plug-ins (struct bb_host_api): the allocator, the
 * log, HTTP and raw libcurl transfers on one curl multi handle driven by
 * the event loop (curl's multi-socket API, as in its hiperfifo example),
 * and Redis commands on the host's command connection.
 *
 * Threads: the event-loop thread only; every callback runs there. */
#include <ctype.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_conn.h"
#include "buurtbus/curl_reason.h"
#include "bb_err.h"
#include "host.h"
#include "log.h"

#define MAX_RESPONSE (16u << 20)

struct bb_host {
    struct bb_host_api api;
    struct event_base *base;
    struct bb_conn *commands;
    CURLM *multi;
    struct event *timer;
    int running;
    unsigned inflight;
    long http_timeout_ms;
    struct xfer *xfers; /* running, so bb_host_free can abandon them */
    struct sock *socks;
};

/* One transfer on the multi handle: a helper request (http) or a
 * plug-in's own easy handle (curl). */
struct xfer {
    struct bb_host *h;
    struct xfer *prev, *next;
    CURL *easy;
    bool owned; /* the helper made the handle */
    bb_http_done_fn *http_done;
    bb_curl_done_fn *curl_done;
    void *arg;
    struct curl_slist *headers;
    char *body;
    size_t len, cap;
    long retry_after_s;
    /* The last response's header lines, "name\0value\0" each. */
    char *hdr;
    size_t hlen, hcap;
    unsigned nhdr;
    char errbuf[CURL_ERROR_SIZE];
};

#define MAX_HEADERS 64

/* Per socket curl watches. */
struct sock {
    struct bb_host *h;
    struct sock *prev, *next;
    curl_socket_t fd;
    struct event *ev;
};

/* ---- logging and memory ------------------------------------------------------------------ */

static void host_log(struct bb_host *h, int level, const char *msg, const char *kvfmt, ...)
{
    char kv[1024] = "";
    if (kvfmt) {
        va_list ap;
        va_start(ap, kvfmt);
        vsnprintf(kv, sizeof(kv), kvfmt, ap);
        va_end(ap);
    }
    char m[256];
    bb_log_quote(m, sizeof(m), msg);
    int lvl = level < BB_LOG_DEBUG ? BB_LOG_DEBUG : level > BB_LOG_ERROR ? BB_LOG_ERROR : level;
    /* The plug-in's message is data here; a fixed literal keys the rate limit. */
    bb_log((enum bb_log_level)lvl, "plug-in", "what=%s %s", m, kv);
}

/* ---- curl multi on libevent -------------------------------------------------------------- */

static void xfer_unlink(struct bb_host *h, struct xfer *x)
{
    if (x->prev) {
        x->prev->next = x->next;
    } else if (h->xfers == x) {
        h->xfers = x->next;
    }
    if (x->next) {
        x->next->prev = x->prev;
    }
    x->prev = x->next = NULL;
}

static void xfer_free(struct xfer *x)
{
    if (x->owned) {
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->headers);
    free(x->body);
    free(x->hdr);
    free(x);
}

static void sock_free(struct bb_host *h, struct sock *s)
{
    if (s->prev) {
        s->prev->next = s->next;
    } else if (h->socks == s) {
        h->socks = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    if (s->ev) {
        event_free(s->ev);
    }
    free(s);
}

static void check_done(struct bb_host *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *easy = m->easy_handle;
        CURLcode code = m->data.result;
        struct xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(h->multi, easy);
        h->inflight--;
        if (!x) {
            continue;
        }
        xfer_unlink(h, x);
        if (x->curl_done) {
            x->curl_done(x->arg, easy, (int)code);
        } else {
            struct bb_http_response res = {.struct_size = sizeof(res), .retry_after_s = -1};
            char errbuf[24];
            if (code == CURLE_OK) {
                curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.status);
                res.error = "";
            } else {
                res.error = bb_curl_reason(code, errbuf, sizeof(errbuf));
                bb_debug("http transfer failed", "code=%d what=\"%s\"", (int)code,
                         curl_easy_strerror(code));
            }
            res.body = x->body ? x->body : "";
            res.body_len = x->len;
            res.retry_after_s = x->retry_after_s;
            struct bb_http_header hv[MAX_HEADERS];
            const char *q = x->hdr;
            for (unsigned i = 0; i < x->nhdr; i++) {
                hv[i].name = q;
                q += strlen(q) + 1;
                hv[i].value = q;
                q += strlen(q) + 1;
            }
            res.headers = hv;
            res.nheaders = x->nhdr;
            x->http_done(x->arg, &res);
        }
        xfer_free(x);
    }
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct bb_host *h = arg;
    int flags =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(h->multi, fd, flags, &h->running);
    check_done(h);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct bb_host *h = arg;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &h->running);
    check_done(h);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *arg)
{
    struct bb_host *h = arg;
    if (timeout_ms < 0) {
        evtimer_del(h->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(h->timer, &tv);
    return 0;
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *arg, void *sockp)
{
    struct bb_host *h = arg;
    struct sock *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_free(h, s);
            curl_multi_assign(h->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) {
            return -1;
        }
        s->h = h;
        s->fd = fd;
        s->next = h->socks;
        if (h->socks) {
            h->socks->prev = s;
        }
        h->socks = s;
        curl_multi_assign(h->multi, fd, s);
    } else if (s->ev) {
        event_free(s->ev);
        s->ev = NULL;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                         ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    s->ev = event_new(h->base, fd, kind, on_socket_event, h);
    if (!s->ev) {
        return -1;
    }
    event_add(s->ev, NULL);
    return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    if (x->len + len > MAX_RESPONSE) {
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (x->len + len + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 1024;
        while (cap < x->len + len + 1) {
            cap *= 2;
        }
        char *b = realloc(x->body, cap);
        if (!b) {
            return 0;
        }
        x->body = b;
        x->cap = cap;
    }
    memcpy(x->body + x->len, p, len);
    x->len += len;
    x->body[x->len] = '\0';
    return len;
}

/* Keeps "name: value" (trimmed) for the response; a status line starts a
 * new response (after 100 Continue or a redirect). */
static void keep_header(struct xfer *x, const char *p, size_t len)
{
    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
        x->hlen = 0;
        x->nhdr = 0;
        x->retry_after_s = -1;
        return;
    }
    const char *colon = memchr(p, ':', len);
    if (!colon || colon == p || x->nhdr == MAX_HEADERS) {
        return;
    }
    const char *v = colon + 1, *end = p + len;
    while (v < end && (*v == ' ' || *v == '\t')) {
        v++;
    }
    while (end > v && isspace((unsigned char)end[-1])) {
        end--;
    }
    size_t nlen = (size_t)(colon - p), vlen = (size_t)(end - v), need = x->hlen + nlen + vlen + 2;
    if (need > 65536) {
        return;
    }
    if (need > x->hcap) {
        size_t cap = x->hcap ? x->hcap * 2 : 1024;
        while (cap < need) {
            cap *= 2;
        }
        char *nh = realloc(x->hdr, cap);
        if (!nh) {
            return;
        }
        x->hdr = nh;
        x->hcap = cap;
    }
    memcpy(x->hdr + x->hlen, p, nlen);
    x->hdr[x->hlen + nlen] = '\0';
    memcpy(x->hdr + x->hlen + nlen + 1, v, vlen);
    x->hdr[x->hlen + nlen + 1 + vlen] = '\0';
    x->hlen = need;
    x->nhdr++;
    if (nlen == 11 && strncasecmp(p, "retry-after", 11) == 0) {
        char val[64];
        snprintf(val, sizeof(val), "%.*s", (int)(vlen < 63 ? vlen : 63), v);
        if (isdigit((unsigned char)val[0])) {
            x->retry_after_s = strtol(val, NULL, 10);
        } else {
            /* An HTTP date: seconds from now. */
            time_t t = curl_getdate(val, NULL);
            time_t now = time(NULL);
            if (t > 0) {
                x->retry_after_s = t > now ? (long)(t - now) : 0;
            }
        }
    }
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    size_t len = size * n;
    keep_header(arg, p, len);
    return len;
}

static int start(struct bb_host *h, struct xfer *x)
{
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    if (curl_multi_add_handle(h->multi, x->easy) != CURLM_OK) {
        return BB_EIO;
    }
    h->inflight++;
    x->next = h->xfers;
    if (h->xfers) {
        h->xfers->prev = x;
    }
    h->xfers = x;
    return BB_OK;
}

static int host_http(struct bb_host *h, const struct bb_http_request *req, bb_http_done_fn *done,
                     void *arg)
{
    if (!req || !req->url || !done) {
        return BB_EINVAL;
    }
    struct xfer *x = calloc(1, sizeof(*x));
    if (!x) {
        return BB_ENOMEM;
    }
    x->h = h;
    x->owned = true;
    x->http_done = done;
    x->arg = arg;
    x->retry_after_s = -1;
    x->easy = curl_easy_init();
    if (!x->easy) {
        free(x);
        return BB_ENOMEM;
    }
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                     req->timeout_ms > 0 ? req->timeout_ms : h->http_timeout_ms);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    if (req->http2) {
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                         strncmp(req->url, "http://", 7) == 0 ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                                                              : CURL_HTTP_VERSION_2TLS);
    }
    if (req->method) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    }
    if (req->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body);
    }
    for (size_t i = 0; i < req->nheaders; i++) {
        char line[2048];
        snprintf(line, sizeof(line), "%s: %s", req->headers[i].name, req->headers[i].value);
        struct curl_slist *l = curl_slist_append(x->headers, line);
        if (!l) {
            goto fail;
        }
        x->headers = l;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    if (start(h, x) != BB_OK) {
        goto fail;
    }
    return BB_OK;

fail:
    curl_slist_free_all(x->headers);
    curl_easy_cleanup(x->easy);
    free(x);
    return BB_EIO;
}

static int host_curl(struct bb_host *h, void *easy, bb_curl_done_fn *done, void *arg)
{
    if (!easy || !done) {
        return BB_EINVAL;
    }
    struct xfer *x = calloc(1, sizeof(*x));
    if (!x) {
        return BB_ENOMEM;
    }
    x->h = h;
    x->easy = easy;
    x->curl_done = done;
    x->arg = arg;
    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
    if (start(h, x) != BB_OK) {
        free(x);
        return BB_EIO;
    }
    return BB_OK;
}

/* ---- Redis ------------------------------------------------------------------------------- */

struct redis_call {
    bb_redis_done_fn *done;
    void *arg;
};

static void on_redis(struct bb_conn *c, struct redisReply *r, void *priv)
{
    struct redis_call *rc = priv;
    rc->done(rc->arg, r);
    free(rc);
}

static int host_redis(struct bb_host *h, bb_redis_done_fn *done, void *arg, int argc,
                      const char **argv, const size_t *argvlen)
{
    if (!h->commands) {
        return BB_AGAIN; /* --check-config: no connection */
    }
    if (!done) {
        return bb_conn_command(h->commands, NULL, NULL, argc, argv, argvlen);
    }
    struct redis_call *rc = malloc(sizeof(*rc));
    if (!rc) {
        return BB_ENOMEM;
    }
    rc->done = done;
    rc->arg = arg;
    int r = bb_conn_command(h->commands, on_redis, rc, argc, argv, argvlen);
    if (r != BB_OK) {
        free(rc);
    }
    return r;
}

/* ---- the host ---------------------------------------------------------------------------- */

static int32_t host_utc_offset_s(struct bb_host *h, const char *tz, int64_t unix_s)
{
    return bb_utc_offset_s(tz ? tz : "", unix_s);
}

struct bb_host *bb_host_new(struct event_base *base, struct bb_conn *commands, long http_timeout_ms,
                            long max_host_connections)
{
    struct bb_host *h = calloc(1, sizeof(*h));
    if (!h) {
        return NULL;
    }
    h->base = base;
    h->commands = commands;
    h->http_timeout_ms = http_timeout_ms;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        goto free_host;
    }
    h->multi = curl_multi_init();
    h->timer = evtimer_new(base, on_timer, h);
    if (!h->multi || !h->timer) {
        goto free_all;
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    /* More transfers to one host wait for a connection (HTTP/2 multiplexes
     * them on one; SMTP takes one per message). */
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_host_connections);
    h->api = (struct bb_host_api){
        .struct_size = sizeof(struct bb_host_api),
        .abi_version = BB_CHANNEL_ABI_VERSION,
        .host = h,
        .base = base,
        .alloc = malloc,
        .realloc = realloc,
        .free = free,
        .log = host_log,
        .http = host_http,
        .curl = host_curl,
        .redis = host_redis,
        .utc_offset_s = host_utc_offset_s,
    };
    return h;

free_all:
    if (h->timer) {
        event_free(h->timer);
    }
    if (h->multi) {
        curl_multi_cleanup(h->multi);
    }
    curl_global_cleanup();
free_host:
    free(h);
    return NULL;
}

void bb_host_abandon(struct bb_host *h)
{
    /* Their deliveries stay unacked and are retried by the next run. */
    while (h && h->xfers) {
        struct xfer *x = h->xfers;
        xfer_unlink(h, x);
        curl_multi_remove_handle(h->multi, x->easy);
        h->inflight--;
        xfer_free(x);
    }
}

void bb_host_free(struct bb_host *h)
{
    if (!h) {
        return;
    }
    bb_host_abandon(h);
    curl_multi_cleanup(h->multi);
    while (h->socks) {
        sock_free(h, h->socks);
    }
    event_free(h->timer);
    curl_global_cleanup();
    free(h);
}

const struct bb_host_api *bb_host_api_get(struct bb_host *h)
{
    return &h->api;
}

unsigned bb_host_http_inflight(const struct bb_host *h)
{
    return h->inflight;
}
