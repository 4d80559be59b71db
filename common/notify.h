/* notify: telling systemd (sd_notify, libsystemd) where a daemon is in its
 * life — ready, reloading, stopping, a one-line status — and keeping its
 * watchdog fed. Every call is a no-op when $NOTIFY_SOCKET is unset (not
 * started by systemd, or a unit that is not Type=notify), so the programs
 * call these unconditionally.
 *
 * Readiness is polled, not pushed: bb_notify_start arms a timer on the
 * event loop that asks ready(arg) until it first says yes, then sends
 * READY=1 once. The same timer sends WATCHDOG=1 when the unit sets
 * WatchdogSec=, so a loop that stops turning gets the process restarted.
 *
 * Threads: the thread that runs the event loop given to bb_notify_start
 * (the broker's I/O thread, the worker's only thread); signal callbacks
 * run there too. Not for other threads. */
#ifndef BB_NOTIFY_H
#define BB_NOTIFY_H

#include <stdbool.h>

struct event_base;

/* Arms the readiness and watchdog timer on base (nothing without
 * $NOTIFY_SOCKET). ready(arg) is asked every 100 ms until it returns true,
 * then every second; READY=1 is sent the first time (unless stopping was
 * announced first), STATUS= lines as readiness changes after that. The
 * timer also sends WATCHDOG=1 at a third of $WATCHDOG_USEC or faster.
 * Call once, after the event loop and what ready() looks at exist. */
void bb_notify_start(struct event_base *base, bool (*ready)(void *arg), void *arg);

/* Sends READY=1 now (start-up done, or a reload finished). */
void bb_notify_ready(void);

/* SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as systemd >= 253 wants) before
 * the configuration is read again ... */
void bb_notify_reloading(void);
/* ... and READY=1 after it, if start-up had already been announced
 * (otherwise the timer announces it when ready() first says yes). */
void bb_notify_reloaded(void);

/* SIGTERM/SIGINT: STOPPING=1; READY=1 is never sent after it. */
void bb_notify_stopping(void);

/* STATUS=<text>, printf-style; shown by systemctl status. */
void bb_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Frees the timer; call before freeing the event base. Idempotent. */
void bb_notify_stop(void);

#endif
