/* The host buurtbus-plugin-check plays for the plug-in under test: a
 * struct bb_host_api as the worker's (workers/host/hostapi.c) offers it,
 * but instrumented. The allocator counts every block, so memory a plug-in
 * keeps after destroy() shows as a leak, a host->free() of foreign memory
 * is caught instead of done, and a libc free() of a host block aborts.
 * http() does no network and answers from a script (always from the event
 * loop, never inside http(), as the real host); curl() runs the plug-in's
 * easy handle on a curl multi handle only with --live (else the transfer
 * fails to connect); redis() talks to --redis through hiredis async, else
 * fails each command with a NULL reply. Log lines go to stderr as logfmt
 * with the plug-in's name, and are scanned for the personal strings of the
 * generated deliveries. *
 * Threads: the tool's main thread runs the loop and owns everything here;
 * the allocator takes a mutex because a misbehaving plug-in may allocate
 * from a thread of its own (counted as off_thread). */
#include <ctype.h>
#include <curl/curl.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "log.h"

/* ---- the counting allocator ---------------------------------------------------------------- */

/* Open addressing on the block address; 0 empty, 1 deleted. */
struct slot {
    uintptr_t p;
    size_t size;
};

static pthread_mutex_t alloc_mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot *slots;
static size_t cap, used, tombs, live_bytes;

static pthread_t loop_thread;
static struct bb_check_usage usage;

bool bb_check_on_loop_thread(void)
{
    return pthread_equal(pthread_self(), loop_thread);
}

static size_t slot_of(uintptr_t p, size_t c)
{
    uint64_t h = (uint64_t)p * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 17) & (c - 1);
}

static int table_grow(void)
{
    size_t nc = cap ? cap * 2 : 1024;
    while (used * 2 >= nc) {
        nc *= 2;
    }
    struct slot *ns = calloc(nc, sizeof(*ns));
    if (!ns) {
        return -1;
    }
    for (size_t i = 0; i < cap; i++) {
        if (slots[i].p > 1) {
            size_t k = slot_of(slots[i].p, nc);
            while (ns[k].p) {
                k = (k + 1) & (nc - 1);
            }
            ns[k] = slots[i];
        }
    }
    free(slots);
    slots = ns;
    cap = nc;
    tombs = 0;
    return 0;
}

/* The slot holding p, or NULL. Caller holds alloc_mu. */
static struct slot *table_find(const void *p)
{
    if (!cap || !p) {
        return NULL;
    }
    for (size_t k = slot_of((uintptr_t)p, cap);; k = (k + 1) & (cap - 1)) {
        if (slots[k].p == (uintptr_t)p) {
            return &slots[k];
        }
        if (slots[k].p == 0) {
            return NULL;
        }
    }
}

static int table_add(void *p, size_t size)
{
    if ((used + tombs + 1) * 2 > cap && table_grow() != 0) {
        return -1;
    }
    size_t k = slot_of((uintptr_t)p, cap);
    while (slots[k].p > 1) {
        k = (k + 1) & (cap - 1);
    }
    if (slots[k].p == 1) {
        tombs--;
    }
    slots[k] = (struct slot){(uintptr_t)p, size};
    used++;
    live_bytes += size;
    return 0;
}

static void table_remove(struct slot *s)
{
    live_bytes -= s->size;
    s->p = 1;
    s->size = 0;
    used--;
    tombs++;
}

static void note_thread(void)
{
    if (!bb_check_on_loop_thread()) {
        __atomic_add_fetch(&usage.off_thread, 1, __ATOMIC_RELAXED);
    }
}

/* Blocks start BLOCK_PAD bytes into what malloc gave (alignment kept), so
 * that libc free() of host memory aborts in the check that does it instead
 * of passing silently, as it would with the real host's plain malloc. */
#define BLOCK_PAD 16

static void *host_alloc(size_t n)
{
    note_thread();
    char *b = malloc(n + BLOCK_PAD);
    if (!b) {
        return NULL;
    }
    void *p = b + BLOCK_PAD;
    pthread_mutex_lock(&alloc_mu);
    int rc = table_add(p, n);
    pthread_mutex_unlock(&alloc_mu);
    if (rc != 0) {
        free(b);
        return NULL;
    }
    return p;
}

static void host_free(void *p)
{
    if (!p) {
        return;
    }
    note_thread();
    pthread_mutex_lock(&alloc_mu);
    struct slot *s = table_find(p);
    if (s) {
        table_remove(s);
    } else {
        usage.bad_free++; /* not ours (or freed twice): never hand it to free() */
    }
    pthread_mutex_unlock(&alloc_mu);
    if (s) {
        free((char *)p - BLOCK_PAD);
    }
}

static void *host_realloc(void *p, size_t n)
{
    if (!p) {
        return host_alloc(n);
    }
    note_thread();
    pthread_mutex_lock(&alloc_mu);
    struct slot *s = table_find(p);
    if (!s) {
        usage.bad_free++;
        pthread_mutex_unlock(&alloc_mu);
        return NULL;
    }
    char *b = realloc((char *)p - BLOCK_PAD, n + BLOCK_PAD);
    void *q = b ? b + BLOCK_PAD : NULL;
    if (q) {
        table_remove(s);
        if (table_add(q, n) != 0) {
            /* The block moved but cannot be tracked: keep the books honest. */
            live_bytes += n;
        }
    }
    pthread_mutex_unlock(&alloc_mu);
    return q;
}

size_t bb_check_alloc_live(size_t *bytes)
{
    pthread_mutex_lock(&alloc_mu);
    size_t n = used;
    if (bytes) {
        *bytes = live_bytes;
    }
    pthread_mutex_unlock(&alloc_mu);
    return n;
}

bool bb_check_alloc_owns(const void *p, size_t *size)
{
    pthread_mutex_lock(&alloc_mu);
    struct slot *s = table_find(p);
    if (s && size) {
        *size = s->size;
    }
    pthread_mutex_unlock(&alloc_mu);
    return s != NULL;
}

/* ---- log ----------------------------------------------------------------------------------- */

static const char *private_strings[64];
static size_t nprivate;
static struct bb_check_host_opts opts;
static unsigned log_lines_total, log_leaks_total;

void bb_check_host_log_totals(unsigned *lines, unsigned *leaks)
{
    *lines = log_lines_total;
    *leaks = log_leaks_total;
}

void bb_check_host_add_log_totals(unsigned lines, unsigned leaks)
{
    log_lines_total += lines;
    log_leaks_total += leaks;
}

void bb_check_host_mark_private(const char *s)
{
    if (s && s[0] && nprivate < sizeof(private_strings) / sizeof(private_strings[0])) {
        private_strings[nprivate++] = s;
    }
}

static void host_log(struct bb_host *h, int level, const char *msg, const char *kvfmt, ...)
{
    note_thread();
    char kv[1024] = "";
    if (kvfmt) {
        va_list ap;
        va_start(ap, kvfmt);
        vsnprintf(kv, sizeof(kv), kvfmt, ap);
        va_end(ap);
    }
    usage.log_lines++;
    log_lines_total++;
    for (size_t i = 0; i < nprivate; i++) {
        if (strstr(kv, private_strings[i]) || (msg && strstr(msg, private_strings[i]))) {
            usage.log_leaks++;
            log_leaks_total++;
            break;
        }
    }
    char m[256];
    bb_log_quote(m, sizeof(m), msg);
    int lvl = level < BB_LOG_DEBUG ? BB_LOG_DEBUG : level > BB_LOG_ERROR ? BB_LOG_ERROR : level;
    bb_log((enum bb_log_level)lvl, "plug-in", "plugin=%s what=%s %s", opts.plugin_name, m, kv);
}

/* ---- http(): answers from the script ------------------------------------------------------- */

static struct event_base *loop;
static const struct bb_script *script;

struct pending {
    struct pending *prev, *next;
    struct event *ev;
    int kind; /* 0 http, 1 curl stub, 2 redis stub */
    bb_http_done_fn *http_done;
    bb_curl_done_fn *curl_done;
    bb_redis_done_fn *redis_done;
    void *arg;
    void *easy;
    struct bb_script s;
    const char *body; /* a fixture's, else NULL: the script's small JSON */
};

/* --fixture: requests to a URL prefix get a fixed answer. */
struct fixture {
    char *prefix;
    long status;
    char *body;
};
static struct fixture fixtures[8];
static size_t nfixtures;

static struct pending *pendings;

static void pending_unlink(struct pending *p)
{
    if (p->prev) {
        p->prev->next = p->next;
    } else {
        pendings = p->next;
    }
    if (p->next) {
        p->next->prev = p->prev;
    }
    event_free(p->ev);
}

static void on_answer(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    pending_unlink(p);
    if (p->kind == 0) {
        usage.http_pending--;
        char ra[32];
        snprintf(ra, sizeof(ra), "%ld", p->s.retry_after_s);
        struct bb_http_header hdr[] = {{"content-type", "application/json"}, {"retry-after", ra}};
        char small[96];
        snprintf(small, sizeof(small), "{\"status\":%ld,\"by\":\"buurtbus-plugin-check\"}",
                 p->s.status);
        const char *body = p->body ? p->body : p->s.status ? small : "";
        struct bb_http_response res = {
            .struct_size = sizeof(res),
            .status = p->s.status,
            .error = p->s.status ? "" : p->s.error,
            .body = body,
            .body_len = strlen(body),
            .retry_after_s = p->s.retry_after_s,
            .headers = hdr,
            .nheaders = p->s.retry_after_s >= 0 ? 2 : 1,
        };
        p->http_done(p->arg, &res);
    } else if (p->kind == 1) {
        usage.curl_pending--;
        p->curl_done(p->arg, p->easy, CURLE_COULDNT_CONNECT);
    } else {
        usage.redis_pending--;
        if (p->redis_done) {
            p->redis_done(p->arg, NULL);
        }
    }
    free(p);
}

static int schedule(struct pending *p, long delay_ms)
{
    p->ev = evtimer_new(loop, on_answer, p);
    if (!p->ev) {
        free(p);
        return -1;
    }
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(p->ev, &tv);
    p->next = pendings;
    if (pendings) {
        pendings->prev = p;
    }
    pendings = p;
    return 0;
}

static const char *needle;

void bb_check_host_set_needle(const char *s)
{
    needle = s;
}

/* What the checks want to know about a request. */
static void inspect(const struct bb_http_request *req)
{
    if (req->struct_size < offsetof(struct bb_http_request, pool) + sizeof(req->pool) ||
        !req->method || !req->method[0] || !req->url[0] || (req->nheaders && !req->headers) ||
        (req->body_len && !req->body)) {
        usage.bad_request++;
        return;
    }
    usage.http2 += req->http2 != 0;
    if (!needle || !needle[0]) {
        return;
    }
    bool hit = req->body && memmem(req->body, req->body_len, needle, strlen(needle));
    for (size_t i = 0; !hit && i < req->nheaders; i++) {
        hit = req->headers[i].value && strstr(req->headers[i].value, needle);
    }
    usage.needle_hits += hit;
}

static int host_http(struct bb_host *h, const struct bb_http_request *req, bb_http_done_fn *done,
                     void *arg)
{
    note_thread();
    usage.http++;
    if (!req || !req->url || !done || !script) {
        usage.bad_request++;
        return -1;
    }
    inspect(req);
    struct pending *p = calloc(1, sizeof(*p));
    if (!p) {
        return -1;
    }
    p->kind = 0;
    p->http_done = done;
    p->arg = arg;
    p->s = *script;
    for (size_t i = 0; i < nfixtures; i++) {
        if (strncmp(req->url, fixtures[i].prefix, strlen(fixtures[i].prefix)) == 0) {
            p->s = (struct bb_script){"fixture", fixtures[i].status, "", -1, 0};
            p->body = fixtures[i].body;
            usage.fixture++;
            break;
        }
    }
    if (schedule(p, p->s.delay_ms) != 0) {
        return -1;
    }
    usage.http_pending++;
    return 0;
}

int bb_check_host_add_fixture(const char *spec)
{
    /* PREFIX=STATUS:BODY or PREFIX=STATUS:@file */
    const char *eq = strchr(spec, '=');
    while (eq && !(isdigit((unsigned char)eq[1]) && isdigit((unsigned char)eq[2]) &&
                   isdigit((unsigned char)eq[3]) && eq[4] == ':')) {
        eq = strchr(eq + 1, '='); /* the URL itself may hold '=' */
    }
    if (!eq || eq == spec || nfixtures == sizeof(fixtures) / sizeof(fixtures[0])) {
        return -1;
    }
    const char *colon = eq + 4;
    long status = strtol(eq + 1, NULL, 10);
    if (status < 100 || status > 599) {
        return -1;
    }
    char *body;
    if (colon[1] == '@') {
        FILE *f = fopen(colon + 2, "r");
        if (!f) {
            return -1;
        }
        body = calloc(1, 1 << 20);
        size_t n = body ? fread(body, 1, (1 << 20) - 1, f) : 0;
        (void)n;
        fclose(f);
    } else {
        body = strdup(colon + 1);
    }
    char *prefix = strndup(spec, (size_t)(eq - spec));
    if (!body || !prefix) {
        free(body);
        free(prefix);
        return -1;
    }
    fixtures[nfixtures++] = (struct fixture){prefix, status, body};
    return 0;
}

/* ---- curl(): a real multi handle with --live ------------------------------------------------ */

struct live_xfer {
    struct live_xfer *prev, *next;
    CURL *easy;
    bb_curl_done_fn *done;
    void *arg;
};

static struct live_xfer *live_xfers; /* running, so they can be abandoned */

static void live_unlink(struct live_xfer *x)
{
    if (x->prev) {
        x->prev->next = x->next;
    } else {
        live_xfers = x->next;
    }
    if (x->next) {
        x->next->prev = x->prev;
    }
}

static CURLM *multi;
static struct event *multi_tick;

static void on_multi_tick(evutil_socket_t fd, short what, void *arg)
{
    int running = 0;
    curl_multi_perform(multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left))) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *easy = m->easy_handle;
        CURLcode code = m->data.result;
        struct live_xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(multi, easy);
        usage.curl_pending--;
        if (x) {
            live_unlink(x);
            x->done(x->arg, easy, (int)code);
            free(x);
        }
    }
}

static int host_curl(struct bb_host *h, void *easy, bb_curl_done_fn *done, void *arg)
{
    note_thread();
    usage.curl++;
    if (!easy || !done) {
        return -1;
    }
    if (!opts.live) {
        struct pending *p = calloc(1, sizeof(*p));
        if (!p) {
            return -1;
        }
        p->kind = 1;
        p->curl_done = done;
        p->arg = arg;
        p->easy = easy;
        if (schedule(p, 0) != 0) {
            return -1;
        }
        usage.curl_pending++;
        return 0;
    }
    struct live_xfer *x = malloc(sizeof(*x));
    if (!x) {
        return -1;
    }
    *x = (struct live_xfer){NULL, live_xfers, easy, done, arg};
    curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    if (curl_multi_add_handle(multi, easy) != CURLM_OK) {
        free(x);
        return -1;
    }
    if (live_xfers) {
        live_xfers->prev = x;
    }
    live_xfers = x;
    usage.curl_pending++;
    return 0;
}

/* ---- redis(): hiredis async with --redis ---------------------------------------------------- */

static redisAsyncContext *rac;
static bool shutting_down;

struct redis_call {
    bb_redis_done_fn *done;
    void *arg;
};

static void on_redis(redisAsyncContext *c, void *reply, void *priv)
{
    struct redis_call *rc = priv;
    usage.redis_pending--;
    if (rc->done && !shutting_down) {
        rc->done(rc->arg, reply);
    }
    free(rc);
}

static void on_redis_disconnect(const redisAsyncContext *c, int status)
{
    rac = NULL;
}

static int host_redis(struct bb_host *h, bb_redis_done_fn *done, void *arg, int argc,
                      const char **argv, const size_t *argvlen)
{
    note_thread();
    usage.redis++;
    if (argc <= 0 || !argv || !argvlen) {
        return -1;
    }
    if (!opts.redis || !rac) {
        struct pending *p = calloc(1, sizeof(*p));
        if (!p) {
            return -1;
        }
        p->kind = 2;
        p->redis_done = done;
        p->arg = arg;
        if (schedule(p, 0) != 0) {
            return -1;
        }
        usage.redis_pending++;
        return 0;
    }
    struct redis_call *rc = malloc(sizeof(*rc));
    if (!rc) {
        return -1;
    }
    rc->done = done;
    rc->arg = arg;
    if (redisAsyncCommandArgv(rac, on_redis, rc, argc, argv, argvlen) != REDIS_OK) {
        free(rc);
        return -1;
    }
    usage.redis_pending++;
    return 0;
}

/* ---- the host ------------------------------------------------------------------------------ */

static struct bb_host_api api;

int bb_check_host_init(struct event_base *base, const struct bb_check_host_opts *o, char *err,
                       size_t errlen)
{
    loop = base;
    loop_thread = pthread_self();
    opts = *o;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "curl_global_init failed");
        return -1;
    }
    if (opts.live) {
        multi = curl_multi_init();
        multi_tick = event_new(base, -1, EV_PERSIST, on_multi_tick, NULL);
        struct timeval tv = {0, 5000};
        if (!multi || !multi_tick || event_add(multi_tick, &tv) != 0) {
            snprintf(err, errlen, "cannot set up the curl multi handle");
            return -1;
        }
    }
    if (opts.redis) {
        char host[256];
        snprintf(host, sizeof(host), "%s", opts.redis);
        char *colon = strrchr(host, ':');
        int port = 6379;
        if (colon) {
            *colon = '\0';
            port = atoi(colon + 1);
        }
        rac = redisAsyncConnect(host, port);
        if (!rac || rac->err) {
            snprintf(err, errlen, "--redis %s: %s", opts.redis, rac ? rac->errstr : "no memory");
            if (rac) {
                redisAsyncFree(rac);
                rac = NULL;
            }
            return -1;
        }
        redisLibeventAttach(rac, base);
        redisAsyncSetDisconnectCallback(rac, on_redis_disconnect);
    }
    api = (struct bb_host_api){
        .struct_size = sizeof(struct bb_host_api),
        .abi_version = BB_CHANNEL_ABI_VERSION,
        .host = (struct bb_host *)&api, /* opaque to the plug-in; nothing reads it back */
        .base = base,
        .alloc = host_alloc,
        .realloc = host_realloc,
        .free = host_free,
        .log = host_log,
        .http = host_http,
        .curl = host_curl,
        .redis = host_redis,
    };
    return 0;
}

void bb_check_host_abandon(void)
{
    shutting_down = true; /* hiredis replies still due are not passed on */
    /* Answers never delivered: dropped, as the real host abandons transfers. */
    while (pendings) {
        struct pending *p = pendings;
        pending_unlink(p);
        usage.http_pending -= p->kind == 0;
        usage.curl_pending -= p->kind == 1;
        usage.redis_pending -= p->kind == 2;
        free(p);
    }
    /* The easy handles are the plug-in's: out of the multi handle before
     * destroy() frees them. */
    while (live_xfers) {
        struct live_xfer *x = live_xfers;
        live_unlink(x);
        curl_multi_remove_handle(multi, x->easy);
        usage.curl_pending--;
        free(x);
    }
}

void bb_check_host_shutdown(void)
{
    bb_check_host_abandon();
    if (multi) {
        event_free(multi_tick);
        curl_multi_cleanup(multi); /* the easy handles are the plug-in's */
        multi = NULL;
    }
    if (rac) {
        redisAsyncFree(rac);
        rac = NULL;
    }
    curl_global_cleanup();
    for (size_t i = 0; i < nfixtures; i++) {
        free(fixtures[i].prefix);
        free(fixtures[i].body);
    }
    nfixtures = 0;
    /* Blocks still live are the plug-in's leak, already reported: reclaim
     * them so LeakSanitizer reports only what bypassed host->alloc. */
    for (size_t i = 0; i < cap; i++) {
        if (slots[i].p > 1) {
            free((char *)slots[i].p - BLOCK_PAD);
        }
    }
    free(slots);
    slots = NULL;
    cap = used = tombs = live_bytes = 0;
}

const struct bb_host_api *bb_check_host_api(void)
{
    return &api;
}

void bb_check_host_set_script(const struct bb_script *s)
{
    script = s;
}

void bb_check_host_usage_reset(void)
{
    unsigned hp = usage.http_pending, cp = usage.curl_pending, rp = usage.redis_pending;
    memset(&usage, 0, sizeof(usage));
    usage.http_pending = hp;
    usage.curl_pending = cp;
    usage.redis_pending = rp;
}

struct bb_check_usage bb_check_host_usage(void)
{
    return usage;
}

const struct bb_check_host_opts *bb_check_host_opts(void)
{
    return &opts;
}
