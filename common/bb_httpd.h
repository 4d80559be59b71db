/* A small HTTP endpoint for operators, on a daemon's event loop: /metrics
 * (Prometheus text, rendered by the daemon), /healthz (the process runs)
 * and /readyz (the daemon can do work). libevent's evhttp; GET and HEAD.
 *
 * Threads: the thread that runs the event base. */
#ifndef BB_HTTPD_H
#define BB_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;

typedef void bb_httpd_metrics_fn(struct evbuffer *out, void *arg);
typedef bool bb_httpd_ready_fn(void *arg);

struct bb_httpd;

/* Listens on addr ("host:port"; host an IP literal). Returns NULL with the
 * reason in err. */
struct bb_httpd *bb_httpd_new(struct event_base *base, const char *addr,
                              bb_httpd_metrics_fn *metrics, bb_httpd_ready_fn *ready, void *arg,
                              char *err, size_t errlen);
void bb_httpd_free(struct bb_httpd *h); /* NULL is a no-op */

/* Prometheus text helpers. */
void bb_prom_counter(struct evbuffer *b, const char *name, const char *help, uint64_t v);
void bb_prom_gauge(struct evbuffer *b, const char *name, const char *help, int64_t v);

#endif
