/* A small HTTP endpoint for operators, on a daemon's event loop: /metrics
 * (Prometheus text, rendered by the daemon), /healthz (the process runs)
 * and /readyz (the daemon can do work), plus routes a daemon adds (method
 * set + path prefix → handler), e.g. the broker's console. libevent's evhttp.
 *
 * Handlers may reply later (after a Redis reply or another thread's work,
 * handed back to the loop): evhttp keeps a request whose client went away
 * until the reply is sent, then frees it.
 *
 * Threads: the thread that runs the event base. */
#ifndef BB_HTTPD_H
#define BB_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct evhttp_request;

typedef void bb_httpd_metrics_fn(struct evbuffer *out, void *arg);
typedef bool bb_httpd_ready_fn(void *arg);

struct bb_httpd;

/* Listens on addr ("host:port"; host an IP literal). Returns NULL with the
 * reason in err. */
struct bb_httpd *bb_httpd_new(struct event_base *base, const char *addr,
                              bb_httpd_metrics_fn *metrics, bb_httpd_ready_fn *ready, void *arg,
                              char *err, size_t errlen);
void bb_httpd_free(struct bb_httpd *h); /* NULL is a no-op; pending replies are dropped */

/* ---- routes ------------------------------------------------------------------------------ */

enum { BB_HTTP_GET = 1, BB_HTTP_HEAD = 2, BB_HTTP_POST = 4 };

/* A handler: path is the request's path (no query), at most 1 KiB. It must
 * answer the request exactly once, now or later. */
typedef void bb_httpd_handler_fn(struct evhttp_request *req, const char *path, void *arg);

/* Requests whose path equals prefix or starts with prefix + "/" go to fn;
 * the longest matching prefix wins. A path that matches with a method not
 * in methods gets 405; a path nobody serves gets 404. Returns 0, or -1
 * when the table is full (16 routes). */
int bb_httpd_route(struct bb_httpd *h, unsigned methods, const char *prefix,
                   bb_httpd_handler_fn *fn, void *arg);
/* Request bodies over max bytes are refused with 413 (the body is read and
 * dropped first, so the client sees the answer). Default: 64 KiB. */
void bb_httpd_set_max_body(struct bb_httpd *h, size_t max);

/* Request helpers. */
unsigned bb_httpd_method(struct evhttp_request *req);                      /* BB_HTTP_*, 0: other */
const char *bb_httpd_header(struct evhttp_request *req, const char *name); /* NULL: absent */
/* The body, NUL-terminated (a copy the request owns until it is answered);
 * *len its length without the NUL. NULL when out of memory. */
const char *bb_httpd_body(struct evhttp_request *req, size_t *len);
/* The value of a query parameter (decoded, heap copy the caller frees); NULL: absent. */
char *bb_httpd_query(struct evhttp_request *req, const char *name);

/* Replies. Headers added to evhttp_request_get_output_headers(req) before
 * these go out with them. */
void bb_httpd_reply(struct evhttp_request *req, int code, const char *content_type,
                    const void *body, size_t len);
void bb_httpd_reply_json(struct evhttp_request *req, int code, const char *json);
/* {"error":"<reason>"}: reason is a short machine-readable string. */
void bb_httpd_reply_error(struct evhttp_request *req, int code, const char *reason);

/* Prometheus text helpers. */
void bb_prom_counter(struct evbuffer *b, const char *name, const char *help, uint64_t v);
void bb_prom_gauge(struct evbuffer *b, const char *name, const char *help, int64_t v);
/* A label value with \, " and newlines escaped, appended to b. */
void bb_prom_label(struct evbuffer *b, const char *value);

#endif
