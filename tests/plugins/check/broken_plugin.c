/* Deliberately broken channel plug-ins for buurtbus-plugin-check's own
 * tests. One source, built once per fault (CMakeLists.txt defines
 * BROKEN_NAME and one BROKEN_* macro); without a fault it is a correct
 * plug-in that POSTs each delivery through the host's http() helper:
 *
 *   BROKEN_DONE_TWICE  calls done() twice per send
 *   BROKEN_NO_DONE     never calls done()
 *   BROKEN_LEAK        keeps every send's host->alloc block
 *   BROKEN_OPTIONS     a malformed option table (duplicate, bad type, no help)
 *   BROKEN_OK_ON_503   reports 5xx answers as sent
 *   BROKEN_CRASH       format() crashes on an empty delivery_id
 *   BROKEN_OFF_THREAD  calls done() from a thread of its own
 *   BROKEN_BAD_REASON  a reason with spaces ("503 Service Unavailable")
 *   BROKEN_REFUSE_DONE send() returns non-zero and still calls done() later
 *   BROKEN_STATIC_OUT  format() hands out a static buffer, not host->alloc memory
 *
 * Threads: the host's event-loop thread. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "buurtbus/channel.h"

#ifndef BROKEN_NAME
#define BROKEN_NAME "broken"
#endif

struct broken_ctx {
    const struct bb_host_api *host;
    char url[256];
};

struct broken_op {
    struct broken_ctx *c;
    bb_send_done_fn *done;
    void *token;
};

static const struct bb_channel_option broken_options[] = {
    {"url", BB_OPTION_STRING, NULL, "where deliveries are POSTed"},
#ifdef BROKEN_OPTIONS
    {"url", BB_OPTION_STRING, "http://x", "the same name again"},
    {"mode", 42, "fast", "a type that does not exist"},
    {"retries", BB_OPTION_INT, "3", ""},
#endif
    {NULL, 0, NULL, NULL},
};

static int broken_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                       void **ctx, char *err, size_t errlen)
{
    const char *url = cfg->value(cfg, "url");
    if (!url || !url[0]) {
        snprintf(err, errlen, "url: required");
        return -1;
    }
    struct broken_ctx *c = host->alloc(sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->host = host;
    snprintf(c->url, sizeof(c->url), "%s", url);
    *ctx = c;
    return 0;
}

static int broken_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct broken_ctx *c = ctx;
#ifdef BROKEN_STATIC_OUT
    static char fixed[] = "delivery\n";
    *out = fixed;
    *outlen = sizeof(fixed) - 1;
    return 0;
#endif
#ifdef BROKEN_CRASH
    /* A crash without undefined behaviour, so UBSan builds see the signal too. */
    if (!d->delivery_id[0]) {
        raise(SIGSEGV);
    }
#endif
    size_t n = strlen(d->delivery_id) + 16;
    char *p = c->host->alloc(n);
    if (!p) {
        return -1;
    }
    *outlen = (size_t)snprintf(p, n, "delivery %s\n", d->delivery_id);
    *out = p;
    return 0;
}

#ifdef BROKEN_OFF_THREAD
struct call {
    bb_send_done_fn *done;
    void *token;
    int status;
    unsigned after;
    const char *reason;
};

static void *call_done(void *arg)
{
    struct call *k = arg;
    k->done(k->token, k->status, k->after, k->reason);
    return NULL;
}
#endif

static void on_response(void *arg, const struct bb_http_response *res)
{
    struct broken_op *op = arg;
    char reason[32];
    int status;
    if (res->status >= 200 && res->status < 300) {
        status = BB_SEND_OK;
        reason[0] = '\0';
    } else if (res->status == 0) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "%s", res->error[0] ? res->error : "http");
    } else {
        snprintf(reason, sizeof(reason), "http_%ld", res->status);
        status = res->status == 429 || res->status >= 500 ? BB_SEND_RETRY
                 : res->status == 410                     ? BB_SEND_GONE
                                                          : BB_SEND_PERMANENT;
#ifdef BROKEN_OK_ON_503
        if (res->status >= 500) {
            status = BB_SEND_OK;
        }
#endif
    }
    unsigned after =
        status == BB_SEND_RETRY && res->retry_after_s > 0 ? (unsigned)res->retry_after_s : 0;
    bb_send_done_fn *done = op->done;
    void *token = op->token;
#ifndef BROKEN_LEAK
    op->c->host->free(op);
#endif
#ifdef BROKEN_BAD_REASON
    snprintf(reason, sizeof(reason), "%ld Service Unavailable", res->status);
#endif
#if defined(BROKEN_OFF_THREAD)
    struct call k = {done, token, status, after, reason};
    pthread_t t;
    if (pthread_create(&t, NULL, call_done, &k) == 0) {
        pthread_join(t, NULL);
    }
#elif !defined(BROKEN_NO_DONE)
    done(token, status, after, reason);
#endif
#ifdef BROKEN_DONE_TWICE
    done(token, status, after, reason);
#endif
    (void)done;
    (void)token;
    (void)after;
}

static int broken_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct broken_ctx *c = ctx;
    struct broken_op *op = c->host->alloc(sizeof(*op));
    if (!op) {
        return -1;
    }
    *op = (struct broken_op){c, done, token};
    struct bb_http_header h[] = {{"Idempotency-Key", d->delivery_id}};
    struct bb_http_request req = {
        .struct_size = sizeof(req),
        .method = "POST",
        .url = c->url,
        .headers = h,
        .nheaders = 1,
        .body = d->delivery_id,
        .body_len = strlen(d->delivery_id),
        .pool = BROKEN_NAME,
    };
    if (c->host->http(c->host->host, &req, on_response, op) != 0) {
        c->host->free(op);
        return -1;
    }
#ifdef BROKEN_REFUSE_DONE
    return -1;
#endif
    return 0;
}

static void broken_destroy(void *ctx)
{
    struct broken_ctx *c = ctx;
    if (c) {
        c->host->free(c);
    }
}

static const struct bb_channel broken_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = BROKEN_NAME,
    .description = "test: a plug-in with one deliberate fault",
    .caps = BB_CAP_BATCH | BB_CAP_IDEMPOTENCY_KEY,
    .options = broken_options,
    .init = broken_init,
    .send = broken_send,
    .format = broken_format,
    .destroy = broken_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &broken_channel : NULL;
}
