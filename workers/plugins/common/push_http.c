/* One HTTP/2 POST through the host's helper or the plug-in's own libcurl
 * easy handle (push_http.h).
 *
 * Threads: the host's event-loop thread. */
#include "push_http.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buurtbus/curl_reason.h"

#define MAX_RESPONSE (64 * 1024) /* provider answers are small JSON */

struct push_xfer {
    const struct bb_host_api *host;
    bb_http_done_fn *done;
    void *arg;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    size_t len, cap;
    long retry_after_s;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct push_xfer *x = arg;
    size_t len = size * n;
    if (x->len + len > MAX_RESPONSE) {
        return 0; /* aborts: CURLE_WRITE_ERROR */
    }
    if (x->len + len + 1 > x->cap) {
        size_t cap = x->cap ? x->cap : 1024;
        while (cap < x->len + len + 1) {
            cap *= 2;
        }
        char *b = x->host->realloc(x->body, cap);
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

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct push_xfer *x = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        const char *v = p + 12;
        while (v < p + len && isspace((unsigned char)*v)) {
            v++;
        }
        /* Seconds only; an HTTP date falls back to the host's backoff. */
        if (v < p + len && isdigit((unsigned char)*v)) {
            x->retry_after_s = strtol(v, NULL, 10);
        }
    }
    return len;
}

static void xfer_free(struct push_xfer *x)
{
    curl_slist_free_all(x->headers);
    if (x->easy) {
        curl_easy_cleanup(x->easy);
    }
    x->host->free(x->body);
    x->host->free(x);
}

static void on_curl_done(void *arg, void *easy, int code)
{
    struct push_xfer *x = arg;
    struct bb_http_response res = {.struct_size = sizeof(res), .retry_after_s = x->retry_after_s};
    char errbuf[24];
    if (code == CURLE_OK) {
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &res.status);
        res.error = "";
    } else {
        res.error = bb_curl_reason((CURLcode)code, errbuf, sizeof(errbuf));
    }
    res.body = x->body ? x->body : "";
    res.body_len = x->len;
    x->done(x->arg, &res);
    xfer_free(x);
}

static int post_own(const struct bb_host_api *host, const struct push_http_req *req,
                    bb_http_done_fn *done, void *arg)
{
    struct push_xfer *x = host->alloc(sizeof(*x));
    if (!x) {
        return -1;
    }
    memset(x, 0, sizeof(*x));
    x->host = host;
    x->done = done;
    x->arg = arg;
    x->retry_after_s = -1;
    x->easy = curl_easy_init();
    if (!x->easy) {
        goto fail;
    }
    for (size_t i = 0; i < req->nheaders; i++) {
        char line[2048];
        snprintf(line, sizeof(line), "%s: %s", req->headers[i].name, req->headers[i].value);
        struct curl_slist *l = curl_slist_append(x->headers, line);
        memset(line, 0, sizeof(line)); /* may hold a credential */
        if (!l) {
            goto fail;
        }
        x->headers = l;
    }
    CURL *e = x->easy;
    int cleartext = strncmp(req->url, "http://", 7) == 0;
    if (curl_easy_setopt(e, CURLOPT_URL, req->url) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                         cleartext ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                                   : CURL_HTTP_VERSION_2TLS) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 10000L) !=
            CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_WRITEDATA, x) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HEADERDATA, x) != CURLE_OK) {
        goto fail;
    }
    if (host->curl(host->host, e, on_curl_done, x) != 0) {
        goto fail;
    }
    return 0;
fail:
    xfer_free(x);
    return -1;
}

int push_http_post(const struct bb_host_api *host, const struct push_http_req *req,
                   bb_http_done_fn *done, void *arg)
{
    if (req->ca_file && req->ca_file[0]) {
        return post_own(host, req, done, arg);
    }
    struct bb_http_request r = {
        .struct_size = sizeof(r),
        .method = "POST",
        .url = req->url,
        .headers = req->headers,
        .nheaders = req->nheaders,
        .body = req->body,
        .body_len = req->body_len,
        .timeout_ms = req->timeout_ms,
        .http2 = 1,
        .pool = req->pool,
    };
    return host->http(host->host, &r, done, arg);
}
