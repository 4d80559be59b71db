/* The operators' HTTP endpoint (see bb_httpd.h).
 *
 * Threads: the thread that runs the event base. */
#include "bb_httpd.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROUTES 16
#define MAX_PATH 1024
#define DEFAULT_MAX_BODY (64 * 1024)

struct route {
    char prefix[128];
    size_t plen;
    unsigned methods;
    bb_httpd_handler_fn *fn;
    void *arg;
};

struct bb_httpd {
    struct evhttp *http;
    bb_httpd_metrics_fn *metrics;
    bb_httpd_ready_fn *ready;
    void *arg;
    struct route routes[MAX_ROUTES];
    unsigned nroutes;
};

static const char *reason_phrase(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    default:
        return "";
    }
}

void bb_httpd_reply(struct evhttp_request *req, int code, const char *content_type,
                    const void *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (!b || (len && evbuffer_add(b, body, len) != 0)) {
        if (b) {
            evbuffer_free(b);
        }
        evhttp_send_error(req, 500, NULL);
        return;
    }
    if (content_type) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", content_type);
    }
    evhttp_send_reply(req, code, reason_phrase(code), b);
    evbuffer_free(b);
}

void bb_httpd_reply_json(struct evhttp_request *req, int code, const char *json)
{
    bb_httpd_reply(req, code, "application/json; charset=utf-8", json, strlen(json));
}

void bb_httpd_reply_error(struct evhttp_request *req, int code, const char *reason)
{
    char buf[160];
    snprintf(buf, sizeof(buf), "{\"error\":\"%s\"}", reason);
    bb_httpd_reply_json(req, code, buf);
}

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "%s\n", text);
    bb_httpd_reply(req, code, "text/plain", buf, (size_t)n);
}

unsigned bb_httpd_method(struct evhttp_request *req)
{
    switch (evhttp_request_get_command(req)) {
    case EVHTTP_REQ_GET:
        return BB_HTTP_GET;
    case EVHTTP_REQ_HEAD:
        return BB_HTTP_HEAD;
    case EVHTTP_REQ_POST:
        return BB_HTTP_POST;
    default:
        return 0;
    }
}

const char *bb_httpd_header(struct evhttp_request *req, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(req), name);
}

const char *bb_httpd_body(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    if (evbuffer_add(in, "", 1) != 0) {
        return NULL;
    }
    return (const char *)evbuffer_pullup(in, -1);
}

char *bb_httpd_query(struct evhttp_request *req, const char *name)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    struct evkeyvalq kv;
    char *v = NULL;
    if (!q || evhttp_parse_query_str(q, &kv) != 0) {
        return NULL;
    }
    const char *found = evhttp_find_header(&kv, name);
    if (found) {
        v = strdup(found);
    }
    evhttp_clear_headers(&kv);
    return v;
}

/* The built-in pages answer GET and HEAD only. */
static bool get_or_head(struct evhttp_request *req)
{
    if (bb_httpd_method(req) & (BB_HTTP_GET | BB_HTTP_HEAD)) {
        return true;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
    reply_text(req, 405, "method not allowed");
    return false;
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    struct bb_httpd *h = arg;
    if (!get_or_head(req)) {
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    h->metrics(b, h->arg);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void on_healthz(struct evhttp_request *req, void *arg)
{
    if (get_or_head(req)) {
        reply_text(req, 200, "ok");
    }
}

static void on_readyz(struct evhttp_request *req, void *arg)
{
    struct bb_httpd *h = arg;
    if (!get_or_head(req)) {
        return;
    }
    bool ready = h->ready ? h->ready(h->arg) : true;
    reply_text(req, ready ? 200 : 503, ready ? "ready" : "not ready");
}

/* Everything the fixed pages do not take: the routes. */
static void on_other(struct evhttp_request *req, void *arg)
{
    struct bb_httpd *h = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *p = uri ? evhttp_uri_get_path(uri) : NULL;
    char path[MAX_PATH];
    if (!p || !*p) {
        p = "/";
    }
    if (strlen(p) >= sizeof(path)) {
        reply_text(req, 404, "not found");
        return;
    }
    snprintf(path, sizeof(path), "%s", p);
    const struct route *best = NULL;
    for (unsigned i = 0; i < h->nroutes; i++) {
        const struct route *r = &h->routes[i];
        if (strncmp(path, r->prefix, r->plen) == 0 &&
            (path[r->plen] == '\0' || path[r->plen] == '/') && (!best || r->plen > best->plen)) {
            best = r;
        }
    }
    if (!best) {
        reply_text(req, 404, "not found");
        return;
    }
    if (!(bb_httpd_method(req) & best->methods)) {
        char allow[32];
        snprintf(allow, sizeof(allow), "%s%s%s", best->methods & BB_HTTP_GET ? "GET, HEAD" : "",
                 (best->methods & BB_HTTP_GET) && (best->methods & BB_HTTP_POST) ? ", " : "",
                 best->methods & BB_HTTP_POST ? "POST" : "");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
        bb_httpd_reply_error(req, 405, "method_not_allowed");
        return;
    }
    best->fn(req, path, best->arg);
}

int bb_httpd_route(struct bb_httpd *h, unsigned methods, const char *prefix,
                   bb_httpd_handler_fn *fn, void *arg)
{
    if (h->nroutes == MAX_ROUTES || strlen(prefix) >= sizeof(h->routes[0].prefix)) {
        return -1;
    }
    struct route *r = &h->routes[h->nroutes++];
    snprintf(r->prefix, sizeof(r->prefix), "%s", prefix);
    r->plen = strlen(r->prefix);
    while (r->plen > 1 && r->prefix[r->plen - 1] == '/') {
        r->prefix[--r->plen] = '\0';
    }
    /* GET routes answer HEAD too. */
    r->methods = methods & BB_HTTP_GET ? methods | BB_HTTP_HEAD : methods;
    r->fn = fn;
    r->arg = arg;
    return 0;
}

void bb_httpd_set_max_body(struct bb_httpd *h, size_t max)
{
    evhttp_set_max_body_size(h->http, (ev_ssize_t)max);
}

struct bb_httpd *bb_httpd_new(struct event_base *base, const char *addr,
                              bb_httpd_metrics_fn *metrics, bb_httpd_ready_fn *ready, void *arg,
                              char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof(host) || !colon[1]) {
        snprintf(err, errlen, "metrics address must be host:port, got '%s'", addr);
        return NULL;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct bb_httpd *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->metrics = metrics;
    h->ready = ready;
    h->arg = arg;
    h->http = evhttp_new(base);
    if (!h->http) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (evhttp_bind_socket(h->http, host, (uint16_t)atoi(colon + 1)) != 0) {
        snprintf(err, errlen, "cannot listen on %s", addr);
        goto fail;
    }
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    /* A body over the cap is read and dropped before the 413 goes out, so
     * the client is not reset while still sending. */
    evhttp_set_flags(h->http, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_max_body_size(h->http, DEFAULT_MAX_BODY);
    evhttp_set_timeout(h->http, 30);
    evhttp_set_cb(h->http, "/metrics", on_metrics, h);
    evhttp_set_cb(h->http, "/healthz", on_healthz, h);
    evhttp_set_cb(h->http, "/readyz", on_readyz, h);
    evhttp_set_gencb(h->http, on_other, h);
    return h;

fail:
    bb_httpd_free(h);
    return NULL;
}

void bb_httpd_free(struct bb_httpd *h)
{
    if (!h) {
        return;
    }
    if (h->http) {
        evhttp_free(h->http);
    }
    free(h);
}

void bb_prom_counter(struct evbuffer *b, const char *name, const char *help, uint64_t v)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name,
                        name, v);
}

void bb_prom_gauge(struct evbuffer *b, const char *name, const char *help, int64_t v)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %" PRId64 "\n", name, help, name,
                        name, v);
}

void bb_prom_label(struct evbuffer *b, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\' || *p == '"') {
            evbuffer_add_printf(b, "\\%c", *p);
        } else if (*p == '\n') {
            evbuffer_add(b, "\\n", 2);
        } else {
            evbuffer_add(b, p, 1);
        }
    }
}
