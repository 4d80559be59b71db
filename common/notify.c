/* notify: sd_notify(3) for the daemons (see notify.h). libsystemd's
 * sd_notify is already a no-op without $NOTIFY_SOCKET; this file adds the
 * readiness poll, the watchdog and the order rules (no READY=1 after
 * STOPPING=1, READY=1 after a reload only once start-up was announced).
 *
 * Threads: the event-loop thread given to bb_notify_start; all state here
 * is that thread's. */
#include "notify.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"

static struct {
    struct event *timer;
    bool (*ready)(void *arg);
    void *arg;
    bool announced; /* READY=1 sent for start-up */
    bool stopping;
    int last_ready; /* what ready() said last time: -1 never asked */
    uint64_t watchdog_usec;
} n = {.last_ready = -1};

static void notify_send(const char *msg)
{
    int rc = sd_notify(0, msg);
    if (rc < 0) {
        bb_warn("sd_notify failed", "errno=%d", -rc);
    }
}

void bb_notify_ready(void)
{
    if (n.stopping) {
        return;
    }
    n.announced = true;
    notify_send("READY=1\nSTATUS=ready");
}

void bb_notify_status(const char *fmt, ...)
{
    char msg[256];
    int len = snprintf(msg, sizeof(msg), "STATUS=");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + len, sizeof(msg) - (size_t)len, fmt, ap);
    va_end(ap);
    notify_send(msg);
}

void bb_notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify_send(msg);
}

void bb_notify_reloaded(void)
{
    if (n.announced) {
        bb_notify_ready();
    } else if (!n.stopping) {
        notify_send("STATUS=starting");
    }
}

void bb_notify_stopping(void)
{
    n.stopping = true;
    notify_send("STOPPING=1\nSTATUS=stopping");
}

static void schedule(void)
{
    int64_t us = n.announced ? 1000000 : 100000;
    /* Three pings per watchdog period: one late tick is not a restart. */
    if (n.watchdog_usec && (int64_t)(n.watchdog_usec / 3) < us) {
        us = (int64_t)(n.watchdog_usec / 3);
    }
    struct timeval tv = {us / 1000000, us % 1000000};
    evtimer_add(n.timer, &tv);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    if (n.watchdog_usec) {
        notify_send("WATCHDOG=1");
    }
    if (!n.stopping) {
        int r = n.ready(n.arg) ? 1 : 0;
        if (r && !n.announced) {
            bb_notify_ready();
        } else if (r != n.last_ready) {
            notify_send(r ? "STATUS=ready" : "STATUS=waiting for redis");
        }
        n.last_ready = r;
    }
    schedule();
}

void bb_notify_start(struct event_base *base, bool (*ready)(void *arg), void *arg)
{
    /* Not under systemd (or not Type=notify): nothing would listen. */
    if (n.timer || !getenv("NOTIFY_SOCKET")) {
        return;
    }
    n.ready = ready;
    n.arg = arg;
    n.timer = evtimer_new(base, on_tick, NULL);
    if (!n.timer) {
        bb_warn("cannot start the systemd notification timer", NULL);
        return;
    }
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0) {
        n.watchdog_usec = usec;
        bb_info("systemd watchdog on", "usec=%llu", (unsigned long long)usec);
    }
    on_tick(-1, 0, NULL);
}

void bb_notify_stop(void)
{
    if (n.timer) {
        event_free(n.timer);
        n.timer = NULL;
    }
}
