/* Router threads and the lanes between them and the I/O thread.
 *
 * Who owns what:
 *   - The I/O thread (libevent loop) owns every job from the moment a
 *     stream entry is read until its batches are committed to Redis. It
 *     hands a job to router thread i through lane in[i] and takes it back
 *     from lane out[i]. While a job is in a lane or in a router's hands,
 *     the I/O thread does not touch it.
 *   - Router thread i owns its bb_router (scratch), its bb_encoder (zstd
 *     context, dictionary reference) and the job it is working on. It reads
 *     the directory lock-free through its epoch record and never talks to
 *     Redis.
 *   - Each lane is a Concurrency Kit SPSC ring of job pointers: in[i] has
 *     the I/O thread as its only producer and router i as its only
 *     consumer; out[i] the other way round. Lanes are sized so they can
 *     never fill (the I/O thread keeps at most max_inflight jobs out).
 *
 * Order: jobs of one router come back in the order it got them; across
 * routers there is no order. Nothing downstream relies on order: each job
 * commits on its own.
 *
 * Wake-ups: a router spins on its lane briefly before it sleeps on an
 * eventfd (waking a sleeping thread costs ~40 us, a spin ~0.1 us); the I/O
 * thread writes that eventfd only when the router said it sleeps. Routers
 * wake the I/O thread through one eventfd in its event loop, written only
 * when the I/O thread has not been told already. */
#include <ck_pr.h>
#include <ck_ring.h>
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "directory.h"
#include "internal.h"
#include "log.h"
#include "report.pb-c.h"
#include "tsan.h"
#include "route.h"
#include "validate.h"
#include "wire.h"

#define SPIN_ROUNDS 4000

struct lane {
    ck_ring_t ring;
    ck_ring_buffer_t *buf;
};

/* One producer, one consumer. The ring's fences order the job's contents
 * before the pointer; the annotations say so to ThreadSanitizer. */
static bool lane_put(struct lane *l, struct bb_job *job)
{
    BB_TSAN_RELEASE(l);
    return ck_ring_enqueue_spsc(&l->ring, l->buf, job);
}

static bool lane_get(struct lane *l, struct bb_job **job)
{
    if (!l->buf || !ck_ring_dequeue_spsc(&l->ring, l->buf, job)) {
        return false;
    }
    BB_TSAN_ACQUIRE(l);
    return true;
}

struct router_thread {
    struct bb_dispatch *d;
    unsigned idx;
    pthread_t tid;
    struct lane in, out;
    int wake_fd; /* eventfd the router sleeps on */
    _Atomic int sleeping;
    struct bb_router *router;
    struct bb_encoder *enc;
    bool started;
};

struct bb_dispatch {
    struct event_base *base;
    struct bb_dir *dir;
    const struct bb_broker_config *cfg;
    struct bb_limits limits;
    bb_done_fn *done;
    void *arg;
    unsigned n;
    unsigned next; /* round robin */
    struct router_thread *t;
    int io_fd; /* eventfd in the I/O loop */
    _Atomic int io_told;
    struct event *io_ev;
};

void bb_job_free(struct bb_job *job)
{
    if (!job) {
        return;
    }
    free(job->payload);
    bb_out_free(&job->out);
    bb_zdict_unref(job->dict);
    free(job);
}

static int lane_init(struct lane *l, unsigned size)
{
    unsigned n = 4;
    while (n < size + 1) { /* a ring of n holds n - 1 */
        n <<= 1;
    }
    l->buf = calloc(n, sizeof(ck_ring_buffer_t));
    if (!l->buf) {
        return BB_ENOMEM;
    }
    ck_ring_init(&l->ring, n); /* does not check for a power of two: n is one */
    return BB_OK;
}

static void wake_io(struct bb_dispatch *d)
{
    /* The exchange orders our enqueue before the flag test; the I/O thread
     * clears the flag before it drains, so either it sees the job or we
     * write the eventfd. */
    if (atomic_exchange(&d->io_told, 1) == 0) {
        uint64_t one = 1;
        ssize_t w = write(d->io_fd, &one, sizeof(one));
        (void)w;
    }
}

static void dead(struct bb_job *job, const char *reason, const char *detail)
{
    job->result = BB_RESULT_DEAD;
    job->reason = reason;
    snprintf(job->detail, sizeof(job->detail), "%s", detail ? detail : "");
}

/* Decode, validate, route, encode: everything between read and write. */
static void process(struct router_thread *t, struct bb_job *job)
{
    struct bb_dispatch *d = t->d;
    const struct bb_route_result *res;
    uint64_t t0 = bb_mono_ns();
    job->result = BB_RESULT_OK;
    bb_out_reset(&job->out);
    if (job->kind == BB_JOB_REPORT) {
        Bb__Report *rep = bb__report__unpack(NULL, job->len, job->payload);
        if (!rep) {
            dead(job, "decode_error", "not a Report protobuf");
            return;
        }
        const char *why = bb_validate_report(rep, &d->limits);
        int rc = why ? BB_EINVAL : bb_route_report(t->router, rep, NULL, &res);
        if (why) {
            dead(job, why, rep->id);
        } else if (rc == BB_ENOTFOUND) {
            dead(job, "unknown_group", rep->id);
        } else if (rc != BB_OK) {
            job->result = BB_RESULT_RETRY;
        } else if (bb_encode_report(t->enc, d->dir, rep, res, job->entry_ms, &job->out) != BB_OK) {
            job->result = BB_RESULT_RETRY;
        } else {
            job->recipients = res->recipients;
            job->decisions = res->decisions;
        }
        bb__report__free_unpacked(rep, NULL);
    } else {
        Bb__ReportStatus *st = bb__report_status__unpack(NULL, job->len, job->payload);
        if (!st) {
            dead(job, "decode_error", "not a ReportStatus protobuf");
            return;
        }
        const char *why = bb_validate_status(st, &d->limits);
        if (why) {
            dead(job, why, st->id);
        } else if (bb_route_status(t->router, st, NULL, &res) != BB_OK ||
                   bb_encode_status(t->enc, d->dir, st, res, job->entry_ms, &job->out) != BB_OK) {
            job->result = BB_RESULT_RETRY;
        } else {
            job->recipients = res->recipients;
            job->decisions = res->decisions;
        }
        bb__report_status__free_unpacked(st, NULL);
    }
    job->route_ns = bb_mono_ns() - t0;
}

static struct bb_job *take(struct router_thread *t)
{
    struct bb_job *job;
    for (;;) {
        for (int i = 0; i < SPIN_ROUNDS; i++) {
            if (lane_get(&t->in, &job)) {
                return job;
            }
            ck_pr_stall();
        }
        /* Say we sleep, then look once more: the I/O thread enqueues, then
         * reads "sleeping"; with both sides sequentially consistent one of
         * us sees the other. */
        atomic_store(&t->sleeping, 1);
        if (lane_get(&t->in, &job)) {
            atomic_store(&t->sleeping, 0);
            return job;
        }
        uint64_t v;
        ssize_t r = read(t->wake_fd, &v, sizeof(v));
        (void)r;
        atomic_store(&t->sleeping, 0);
    }
}

static void *router_main(void *arg)
{
    struct router_thread *t = arg;
    for (;;) {
        struct bb_job *job = take(t);
        if (job->kind == BB_JOB_STOP) {
            bb_job_free(job);
            break;
        }
        if (job->kind == BB_JOB_SET_DICT) {
            bb_encoder_set_dict(t->enc, job->dict);
            bb_job_free(job);
            continue;
        }
        process(t, job);
        /* The ring's release orders the job's contents before the pointer. */
        while (!lane_put(&t->out, job)) {
            ck_pr_stall(); /* cannot happen: sized for every job in flight */
        }
        wake_io(t->d);
    }
    return NULL;
}

static void drain(struct bb_dispatch *d)
{
    for (unsigned i = 0; i < d->n; i++) {
        struct bb_job *job;
        while (lane_get(&d->t[i].out, &job)) {
            d->done(job, d->arg);
        }
    }
}

static void on_io_wake(evutil_socket_t fd, short what, void *arg)
{
    struct bb_dispatch *d = arg;
    uint64_t v;
    ssize_t r = read(d->io_fd, &v, sizeof(v));
    (void)r;
    atomic_store(&d->io_told, 0);
    drain(d);
}

static void push(struct router_thread *t, struct bb_job *job)
{
    while (!lane_put(&t->in, job)) {
        ck_pr_stall();
    }
    if (atomic_load(&t->sleeping)) {
        uint64_t one = 1;
        ssize_t w = write(t->wake_fd, &one, sizeof(one));
        (void)w;
    }
}

struct bb_dispatch *bb_dispatch_new(struct event_base *base, struct bb_dir *dir,
                                    const struct bb_broker_config *cfg, bb_done_fn *done, void *arg)
{
    struct bb_dispatch *d = calloc(1, sizeof(*d));
    if (!d) {
        return NULL;
    }
    d->base = base;
    d->dir = dir;
    d->cfg = cfg;
    d->done = done;
    d->arg = arg;
    d->limits =
        (struct bb_limits){(size_t)cfg->max_text, (size_t)cfg->max_media, (size_t)cfg->max_url};
    d->n = (unsigned)cfg->router_threads;
    d->io_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    d->t = calloc(d->n, sizeof(*d->t));
    if (d->io_fd < 0 || !d->t) {
        goto fail;
    }
    for (unsigned i = 0; i < d->n; i++) {
        d->t[i].wake_fd = -1;
    }
    d->io_ev = event_new(base, d->io_fd, EV_READ | EV_PERSIST, on_io_wake, d);
    if (!d->io_ev || event_add(d->io_ev, NULL) != 0) {
        goto fail;
    }
    /* +n: stop jobs and dictionary jobs ride the same lanes. */
    unsigned lane = (unsigned)cfg->max_inflight + 8;
    for (unsigned i = 0; i < d->n; i++) {
        struct router_thread *t = &d->t[i];
        t->d = d;
        t->idx = i;
        t->wake_fd = eventfd(0, EFD_CLOEXEC);
        t->router = bb_router_new(dir);
        t->enc = bb_encoder_new((int)cfg->zstd_level, (unsigned)cfg->batch_size);
        if (t->wake_fd < 0 || !t->router || !t->enc || lane_init(&t->in, lane) != BB_OK ||
            lane_init(&t->out, lane) != BB_OK) {
            goto fail;
        }
    }
    for (unsigned i = 0; i < d->n; i++) {
        if (pthread_create(&d->t[i].tid, NULL, router_main, &d->t[i]) != 0) {
            goto fail;
        }
        d->t[i].started = true;
    }
    return d;

fail:
    bb_error("cannot start router threads", "errno=%d", errno);
    bb_dispatch_free(d);
    return NULL;
}

void bb_dispatch_free(struct bb_dispatch *d)
{
    if (!d) {
        return;
    }
    for (unsigned i = 0; d->t && i < d->n; i++) {
        if (d->t[i].started) {
            struct bb_job *stop = calloc(1, sizeof(*stop));
            if (stop) {
                stop->kind = BB_JOB_STOP;
                push(&d->t[i], stop);
                pthread_join(d->t[i].tid, NULL);
            }
        }
    }
    for (unsigned i = 0; d->t && i < d->n; i++) {
        struct router_thread *t = &d->t[i];
        struct bb_job *job;
        while (lane_get(&t->out, &job)) {
            bb_job_free(job);
        }
        while (lane_get(&t->in, &job)) {
            bb_job_free(job);
        }
        bb_router_free(t->router);
        bb_encoder_free(t->enc);
        free(t->in.buf);
        free(t->out.buf);
        if (t->wake_fd >= 0) {
            close(t->wake_fd);
        }
    }
    if (d->io_ev) {
        event_free(d->io_ev);
    }
    if (d->io_fd >= 0) {
        close(d->io_fd);
    }
    free(d->t);
    free(d);
}

void bb_dispatch_submit(struct bb_dispatch *d, struct bb_job *job)
{
    struct router_thread *t = &d->t[d->next];
    d->next = (d->next + 1) % d->n;
    push(t, job);
}

void bb_dispatch_set_dict(struct bb_dispatch *d, struct bb_zdict *dict)
{
    for (unsigned i = 0; i < d->n; i++) {
        struct bb_job *job = calloc(1, sizeof(*job));
        if (!job) {
            bb_error("dictionary not handed to a router: out of memory", "router=%u", i);
            continue;
        }
        job->kind = BB_JOB_SET_DICT;
        job->dict = dict ? bb_zdict_ref(dict) : NULL;
        push(&d->t[i], job);
    }
}
