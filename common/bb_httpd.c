/* The operators' HTTP endpoint (see bb_httpd.h). */
#include "bb_httpd.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bb_httpd {
    struct evhttp *http;
    bb_httpd_metrics_fn *metrics;
    bb_httpd_ready_fn *ready;
    void *arg;
};

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_printf(b, "%s\n", text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Service Unavailable", b);
    evbuffer_free(b);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    struct bb_httpd *h = arg;
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
    reply_text(req, 200, "ok");
}

static void on_readyz(struct evhttp_request *req, void *arg)
{
    struct bb_httpd *h = arg;
    bool ready = h->ready ? h->ready(h->arg) : true;
    reply_text(req, ready ? 200 : 503, ready ? "ready" : "not ready");
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
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_cb(h->http, "/metrics", on_metrics, h);
    evhttp_set_cb(h->http, "/healthz", on_healthz, h);
    evhttp_set_cb(h->http, "/readyz", on_readyz, h);
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
