/* Structured logging (logfmt) to stderr; see log.h.
 *
 * Any thread may call any function here at any time; bb_log_init is meant to
 * run once at start, before other threads log. A line is built in a buffer on
 * the caller's stack and written with one write(2), so lines from different
 * threads never interleave. errno is preserved across bb_log.
 *
 * Rate limit: a fixed table of token buckets (RATE_BURST lines, refilled at
 * RATE_PER_SEC lines per second) keyed by the msg pointer, each slot guarded
 * by a one-byte spinlock held for a few instructions. No allocation. If the
 * table is full (more than RATE_SLOTS distinct messages collide), a message
 * is simply not rate-limited: we never drop a line we cannot account for. */

#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

enum {
    LINE_MAX_BYTES = 4096, /* a whole line, newline included */
    TAIL_RESERVE = 64,     /* '"' " truncated=true" " suppressed=<u64>" '\n' */
    RATE_SLOTS = 256,      /* power of two */
    RATE_PROBES = 8,
    RATE_BURST = 10,   /* lines let through back to back */
    RATE_PER_SEC = 10, /* sustained lines per second */
    TOKEN = 1000,      /* one line, in milli-tokens */
};

static _Atomic(const char *) log_prog = "buurtbus";
static atomic_int log_level = BB_LOG_INFO;

struct rate_slot {
    _Alignas(64) _Atomic uintptr_t key; /* msg pointer; 0 = free */
    atomic_bool locked;
    int64_t last_ms;     /* under locked: last refill time (monotonic) */
    int64_t debt;        /* under locked: milli-tokens spent; 0 = full bucket */
    uint64_t suppressed; /* under locked: dropped since the last line through */
};

static struct rate_slot rate_table[RATE_SLOTS];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void bb_log_init(const char *program, enum bb_log_level level)
{
    if (program != NULL) {
        atomic_store_explicit(&log_prog, program, memory_order_release);
    }
    bb_log_set_level(level);
}

void bb_log_set_level(enum bb_log_level level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

bool bb_log_enabled(enum bb_log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

int bb_log_level_parse(const char *s)
{
    if (s == NULL) {
        return -1;
    }
    for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

/* ---- rate limiting ---------------------------------------------------- */

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rate_slot_lock(struct rate_slot *s)
{
    while (atomic_exchange_explicit(&s->locked, true, memory_order_acquire)) {
        while (atomic_load_explicit(&s->locked, memory_order_relaxed)) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
}

static void rate_slot_unlock(struct rate_slot *s)
{
    atomic_store_explicit(&s->locked, false, memory_order_release);
}

static struct rate_slot *rate_slot_find(uintptr_t key)
{
    size_t h = (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 56);

    for (size_t i = 0; i < RATE_PROBES; i++) {
        struct rate_slot *s = &rate_table[(h + i) & (RATE_SLOTS - 1)];
        uintptr_t k = atomic_load_explicit(&s->key, memory_order_acquire);
        if (k == 0) {
            uintptr_t expected = 0;
            if (atomic_compare_exchange_strong_explicit(
                    &s->key, &expected, key, memory_order_acq_rel, memory_order_acquire)) {
                return s;
            }
            k = expected;
        }
        if (k == key) {
            return s;
        }
    }
    return NULL;
}

/* True if a line with this msg may be written now; *suppressed gets the
 * number of lines dropped since the previous one that got through. */
static bool rate_admit(const char *msg, uint64_t *suppressed)
{
    struct rate_slot *s;
    int64_t now, elapsed;
    bool pass;

    *suppressed = 0;
    s = rate_slot_find((uintptr_t)msg);
    if (s == NULL) {
        return true;
    }
    now = monotonic_ms();
    rate_slot_lock(s);
    elapsed = now - s->last_ms;
    if (elapsed > 0) {
        s->last_ms = now;
        if (elapsed >= (int64_t)RATE_BURST * 1000) {
            s->debt = 0;
        } else {
            s->debt -= elapsed * RATE_PER_SEC;
            if (s->debt < 0) {
                s->debt = 0;
            }
        }
    }
    pass = s->debt + TOKEN <= (int64_t)RATE_BURST * TOKEN;
    if (pass) {
        s->debt += TOKEN;
        *suppressed = s->suppressed;
        s->suppressed = 0;
    } else {
        s->suppressed++;
    }
    rate_slot_unlock(s);
    return pass;
}

/* ---- line building ---------------------------------------------------- */

struct line {
    char *buf;
    size_t len, cap;
    bool full;      /* something did not fit; nothing more is added */
    bool in_quote;  /* inside a quoted value (to close it after truncation) */
    bool in_escape; /* a caller's '\' inside quotes was the last byte copied */
};

/* Appends n raw bytes, all or nothing. */
static void line_put(struct line *l, const char *s, size_t n)
{
    if (l->full || n > l->cap - l->len) {
        l->full = true;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void line_puts(struct line *l, const char *s)
{
    line_put(l, s, strlen(s));
}

/* Length of the valid-looking UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    size_t k;

    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        k = 2;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        k = 3;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        k = 4;
    } else {
        return 0;
    }
    if (k > n) {
        return 0;
    }
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
    }
    return k;
}

/* Appends s[0..n) so the line stays one line: control bytes and invalid
 * UTF-8 become \n, \r, \t or \xNN. With quoted, '"' and '\' are escaped too
 * (for msg="..."); otherwise they are the caller's quoting and are tracked
 * so a truncated line can still be closed properly. Stops at the first
 * escape or character that does not fit whole. */
static void line_put_escaped(struct line *l, const char *s, size_t n, bool quoted)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < n && !l->full) {
        unsigned char c = p[i];
        char esc[5];
        size_t k;

        if (c == '\n' || c == '\r' || c == '\t') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            line_put(l, esc, 2);
            l->in_escape = false;
            i++;
        } else if (c < 0x20 || c == 0x7F || (c >= 0x80 && utf8_seq_len(p + i, n - i) == 0)) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            line_put(l, esc, 4);
            l->in_escape = false;
            i++;
        } else if (c >= 0x80) {
            k = utf8_seq_len(p + i, n - i);
            line_put(l, s + i, k);
            l->in_escape = false;
            i += k;
        } else if (quoted && (c == '"' || c == '\\')) {
            esc[0] = '\\';
            esc[1] = (char)c;
            line_put(l, esc, 2);
            i++;
        } else {
            line_put(l, s + i, 1);
            if (l->full) {
                break;
            }
            if (!quoted) {
                if (l->in_escape) {
                    l->in_escape = false;
                } else if (l->in_quote && c == '\\') {
                    l->in_escape = true;
                } else if (c == '"') {
                    l->in_quote = !l->in_quote;
                }
            }
            i++;
        }
    }
}

static void line_put_ts(struct line *l)
{
    struct timespec ts;
    struct tm tm;
    char buf[64];
    int n;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (gmtime_r(&ts.tv_sec, &tm) == NULL) {
        memset(&tm, 0, sizeof(tm));
    }
    n = snprintf(buf, sizeof(buf), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (int)(ts.tv_nsec / 1000000));
    if (n > 0 && (size_t)n < sizeof(buf)) {
        line_put(l, buf, (size_t)n);
    }
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void bb_log(enum bb_log_level level, const char *msg, const char *kvfmt, ...)
{
    char buf[LINE_MAX_BYTES];
    char kv[LINE_MAX_BYTES];
    struct line l = {.buf = buf, .cap = LINE_MAX_BYTES - TAIL_RESERVE};
    uint64_t suppressed = 0;
    int saved_errno = errno;
    int lv = (int)level;
    const char *prog;

    if (!bb_log_enabled(level)) {
        return;
    }
    if (msg != NULL && !rate_admit(msg, &suppressed)) {
        errno = saved_errno;
        return;
    }
    if (lv < BB_LOG_DEBUG) {
        lv = BB_LOG_DEBUG;
    } else if (lv > BB_LOG_ERROR) {
        lv = BB_LOG_ERROR;
    }

    prog = atomic_load_explicit(&log_prog, memory_order_acquire);
    line_put_ts(&l);
    line_puts(&l, " level=");
    line_puts(&l, level_names[lv]);
    line_puts(&l, " prog=");
    line_put_escaped(&l, prog, strlen(prog), true);
    line_puts(&l, " msg=\"");
    if (!l.full) {
        l.in_quote = true;
        if (msg != NULL) {
            line_put_escaped(&l, msg, strlen(msg), true);
        }
        line_puts(&l, "\"");
        if (!l.full) {
            l.in_quote = false;
        }
    }
    if (kvfmt != NULL && !l.full) {
        va_list ap;
        int n;

        va_start(ap, kvfmt);
        n = vsnprintf(kv, sizeof(kv), kvfmt, ap);
        va_end(ap);
        if (n > 0) {
            size_t kn = (size_t)n < sizeof(kv) ? (size_t)n : sizeof(kv) - 1;
            line_puts(&l, " ");
            line_put_escaped(&l, kv, kn, false);
            if ((size_t)n >= sizeof(kv)) {
                l.full = true;
            }
        }
    }

    /* The tail always fits: TAIL_RESERVE was held back for it. */
    l.cap = LINE_MAX_BYTES;
    if (l.full) {
        l.full = false;
        if (l.in_escape) {
            l.len--;
        }
        if (l.in_quote) {
            line_puts(&l, "\"");
        }
        line_puts(&l, " truncated=true");
    }
    if (suppressed > 0) {
        char tail[40];
        int n = snprintf(tail, sizeof(tail), " suppressed=%llu", (unsigned long long)suppressed);
        line_put(&l, tail, (size_t)n);
    }
    line_puts(&l, "\n");
    write_all(buf, l.len);
    errno = saved_errno;
}

const char *bb_log_quote(char *buf, size_t cap, const char *s)
{
    struct line l;
    bool bare = s != NULL && s[0] != '\0';

    if (buf == NULL || cap == 0) {
        return "";
    }
    if (s == NULL) {
        s = "";
    }
    for (const char *p = s; bare && *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        bare = c > 0x20 && c < 0x7F && c != '"' && c != '=' && c != '\\';
    }
    if (bare) {
        snprintf(buf, cap, "%s", s);
        return buf;
    }
    if (cap < 3) {
        buf[0] = '\0';
        return buf;
    }
    l = (struct line){.buf = buf, .len = 1, .cap = cap - 2};
    buf[0] = '"';
    line_put_escaped(&l, s, strlen(s), true);
    buf[l.len++] = '"';
    buf[l.len] = '\0';
    return buf;
}
