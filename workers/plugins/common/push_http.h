/* One HTTP/2 POST for the push plug-ins (fcm, apns; compiled into both).
 *
 * Without a CA file the request goes through the host's HTTP helper
 * (host->http, http2 = 1, connections pooled per name). With one, the
 * plug-in prepares its own libcurl easy handle (CURLOPT_CAINFO = that
 * file, HTTP/2 over TLS by ALPN) and runs it on the host's multi handle
 * (host->curl), so it still multiplexes with the host's other transfers:
 * for a provider behind a private CA, and for tests whose stand-in
 * provider has a self-signed certificate. Both ways end in the same
 * bb_http_done_fn with a struct bb_http_response (status, error,
 * body, retry_after_s).
 *
 * Threads: the host's event-loop thread. */
#ifndef BB_PUSH_HTTP_H
#define BB_PUSH_HTTP_H

#include <stddef.h>

#include "buurtbus/channel.h"

struct push_http_req {
    const char *url;
    const struct bb_http_header *headers;
    size_t nheaders;
    const void *body;
    size_t body_len;
    long timeout_ms;     /* 0: 10 s */
    const char *ca_file; /* NULL or "": the host's helper and the system CAs */
    const char *pool;
};

/* Starts the POST; done runs once, on the loop, unless this returns
 * non-zero. The body and headers are copied. */
int push_http_post(const struct bb_host_api *host, const struct push_http_req *req,
                   bb_http_done_fn *done, void *arg);

#endif
