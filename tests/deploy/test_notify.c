/* The daemons' systemd notifications (common/notify.c), end to end: the
 * built buurtbus-broker and buurtbus-worker run as children against the
 * harness' redis-server with $NOTIFY_SOCKET pointing at a unix datagram
 * socket this test owns, as systemd would for a Type=notify unit. Checked:
 * READY=1 once the program can work (the broker's consumer is reading, the
 * worker's commands connection is up), RELOADING=1 then READY=1 around
 * SIGHUP, STOPPING=1 on SIGTERM and a clean exit, and WATCHDOG=1 when
 * $WATCHDOG_USEC asks for it.
 *
 *   test_notify notify          the test above
 *   test_notify scrape DIR      start both, wait for READY=1, save each
 *                               one's /metrics in DIR/broker.metrics and
 *                               DIR/worker.metrics (for check_grafana.py)
 *
 * Threads: the test's main thread; the programs are child processes. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static const struct bb_redis_server *srv;
static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A datagram socket like the one systemd passes in $NOTIFY_SOCKET. */
static int notify_socket(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (fd < 0 || strlen(path) >= sizeof(sa.sun_path)) {
        return -1;
    }
    strcpy(sa.sun_path, path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads datagrams until one has the line want (e.g. "READY=1"), for up to
 * timeout_ms. Every line seen is printed, so a failure shows the story. */
static bool wait_for(int fd, const char *who, const char *want, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            return false;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0) {
            continue;
        }
        char buf[1024];
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0) {
            continue;
        }
        buf[n] = '\0';
        bool found = false;
        for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            if (strncmp(line, "WATCHDOG=", 9) != 0 || strcmp(want, "WATCHDOG=1") == 0) {
                printf("  %s: %s\n", who, line);
            }
            found = found || strcmp(line, want) == 0;
        }
        if (found) {
            return true;
        }
    }
}

/* Starts prog -c conf with NOTIFY_SOCKET (and, if watchdog_usec, the
 * watchdog variables for this child), stderr to log. */
static pid_t spawn(const char *prog, const char *conf, const char *sock, const char *log,
                   long watchdog_usec)
{
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        setenv("NOTIFY_SOCKET", sock, 1);
        if (watchdog_usec) {
            char v[32];
            snprintf(v, sizeof(v), "%ld", watchdog_usec);
            setenv("WATCHDOG_USEC", v, 1);
            snprintf(v, sizeof(v), "%ld", (long)getpid());
            setenv("WATCHDOG_PID", v, 1);
        }
        execl(prog, prog, "-c", conf, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* SIGTERM, then the exit status (or -1 after 20 s, and SIGKILL). */
static int stop(pid_t pid)
{
    kill(pid, SIGTERM);
    for (long long deadline = now_ms() + 20000; now_ms() < deadline;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        bb_harness_sleep_ms(50);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void write_confs(char *bconf, char *wconf, size_t cap, int bport, int wport)
{
    char text[2048], out[512];
    snprintf(text, sizeof(text),
             "redis %s\nname notify-broker\nrouter_threads 1\nblock 200ms\n"
             "metrics_addr 127.0.0.1:%d\nlog_level info\n",
             srv->addr, bport);
    bb_harness_write_file(bconf, cap, "broker.conf", text);
    bb_harness_path(out, sizeof(out), "file.jsonl");
    snprintf(text, sizeof(text),
             "redis %s\nname notify-worker\nplugin_dir %s\nblock 200ms\nclaim_interval 500ms\n"
             "log_level info\n"
             "metrics_addr 127.0.0.1:%d\nchannels file\nchannel.file.plugin file\n"
             "channel.file.stream bb:out:push\nchannel.file.path %s\n",
             srv->addr, BB_PLUGIN_DIR, wport, out);
    bb_harness_write_file(wconf, cap, "worker.conf", text);
}

/* One program's life: ready, reload, stop. */
static void life(const char *who, const char *prog, const char *conf, long watchdog_usec)
{
    char sockpath[512], log[512], name[64];
    snprintf(name, sizeof(name), "%s.notify", who);
    bb_harness_path(sockpath, sizeof(sockpath), name);
    snprintf(name, sizeof(name), "%s.log", who);
    bb_harness_path(log, sizeof(log), name);
    int fd = notify_socket(sockpath);
    CHECK(fd >= 0, "cannot create %s", sockpath);
    if (fd < 0) {
        return;
    }
    printf("%s:\n", who);
    pid_t pid = spawn(prog, conf, sockpath, log, watchdog_usec);
    CHECK(wait_for(fd, who, "READY=1", 20000), "%s: no READY=1 (log %s)", who, log);
    if (watchdog_usec) {
        CHECK(wait_for(fd, who, "WATCHDOG=1", 5000), "%s: no WATCHDOG=1", who);
    }
    kill(pid, SIGHUP);
    CHECK(wait_for(fd, who, "RELOADING=1", 10000), "%s: no RELOADING=1 after SIGHUP", who);
    CHECK(wait_for(fd, who, "READY=1", 10000), "%s: no READY=1 after the reload", who);
    kill(pid, SIGTERM);
    CHECK(wait_for(fd, who, "STOPPING=1", 10000), "%s: no STOPPING=1 after SIGTERM", who);
    int st = stop(pid);
    CHECK(st == 0, "%s: exit status %d after SIGTERM", who, st);
    close(fd);
}

static bool save_metrics(const char *who, int port, const char *path)
{
    static char buf[1 << 20];
    int code = bb_harness_http_get(port, "/metrics", buf, sizeof(buf));
    char *body = strstr(buf, "\r\n\r\n");
    FILE *f = fopen(path, "w");
    if (code != 200 || !body || !f) {
        fprintf(stderr, "%s: GET /metrics gave %d\n", who, code);
        if (f) {
            fclose(f);
        }
        return false;
    }
    fputs(body + 4, f);
    fclose(f);
    return true;
}

/* Both programs up (READY=1), each one's /metrics saved in dir. */
static void scrape(const char *bconf, const char *wconf, int bport, int wport, const char *dir)
{
    char sockpath[512], path[1024], blog[512], wlog[512];
    bb_harness_path(sockpath, sizeof(sockpath), "scrape.notify");
    bb_harness_path(blog, sizeof(blog), "broker.log");
    bb_harness_path(wlog, sizeof(wlog), "worker.log");
    int fd = notify_socket(sockpath);
    CHECK(fd >= 0, "cannot create %s", sockpath);
    pid_t b = spawn(BB_BROKER_PATH, bconf, sockpath, blog, 0);
    CHECK(wait_for(fd, "broker", "READY=1", 20000), "broker: no READY=1 (log %s)", blog);
    pid_t w = spawn(BB_WORKER_PATH, wconf, sockpath, wlog, 0);
    CHECK(wait_for(fd, "worker", "READY=1", 20000), "worker: no READY=1 (log %s)", wlog);
    /* Past one round of each program's stream poll (the broker's every
     * 2 s, the worker's every claim_interval), so the gauges it fills are
     * in the scrape. */
    bb_harness_sleep_ms(2500);
    snprintf(path, sizeof(path), "%s/broker.metrics", dir);
    CHECK(save_metrics("broker", bport, path), "broker metrics");
    snprintf(path, sizeof(path), "%s/worker.metrics", dir);
    CHECK(save_metrics("worker", wport, path), "worker metrics");
    CHECK(stop(w) == 0, "worker exit");
    CHECK(stop(b) == 0, "broker exit");
    close(fd);
}

int main(int argc, char **argv)
{
    bool scrape_mode = argc == 3 && strcmp(argv[1], "scrape") == 0;
    if (!scrape_mode && !(argc == 2 && strcmp(argv[1], "notify") == 0)) {
        fprintf(stderr, "usage: test_notify notify | test_notify scrape DIR\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    srv = bb_harness_redis_start();
    if (!srv) {
        return 1;
    }
    /* The worker's stream, with one undecodable entry: the worker sends
     * it to bb:dead, so its counters and gauges have something to say. */
    redisContext *rc = bb_harness_redis_connect(srv);
    if (rc) {
        freeReplyObject(redisCommand(rc, "XADD bb:out:push * p x"));
        redisFree(rc);
    }
    char bconf[512], wconf[512];
    int bport = bb_harness_free_port(), wport = bb_harness_free_port();
    write_confs(bconf, wconf, sizeof(bconf), bport, wport);
    if (scrape_mode) {
        scrape(bconf, wconf, bport, wport, argv[2]);
    } else {
        life("broker", BB_BROKER_PATH, bconf, 0);
        life("worker", BB_WORKER_PATH, wconf, 600000);
    }
    printf("%s\n", failures ? "FAILED" : "ok");
    bb_harness_finish(failures != 0);
    return failures ? 1 : 0;
}
