/* Integration test harness (see harness.h): one redis-server per test
 * program on a free loopback port, and a runner for the built programs.
 * Main thread only; state is file-static because there is one server and
 * an atexit handler must find it. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_ATTEMPTS 5
#define READY_TIMEOUT_MS 10000
#define STOP_GRACE_MS 5000

static struct bb_redis_server srv;
static bool started, finished, at_exit_set;
/* bb_harness_redis_start_ex: a config file before the harness' arguments,
 * extra arguments after them (borrowed from the caller). */
static const char *start_conf;
static const char *const *start_extra;
#define MAX_EXTRA_ARGS 32

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void bb_harness_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool find_redis_server(char *out, size_t cap)
{
    const char *env = getenv("BB_REDIS_SERVER");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return access(out, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    if (path) {
        char *copy = strdup(path), *save = NULL;
        for (char *d = copy ? strtok_r(copy, ":", &save) : NULL; d;
             d = strtok_r(NULL, ":", &save)) {
            snprintf(out, cap, "%s/redis-server", *d ? d : ".");
            if (access(out, X_OK) == 0) {
                free(copy);
                return true;
            }
        }
        free(copy);
    }
    const char *fallback[] = {"/usr/bin/redis-server", "/usr/local/bin/redis-server"};
    for (size_t i = 0; i < sizeof(fallback) / sizeof(fallback[0]); i++) {
        if (access(fallback[i], X_OK) == 0) {
            snprintf(out, cap, "%s", fallback[i]);
            return true;
        }
    }
    return false;
}

/* A port the kernel just handed out; another process may still take it
 * before redis binds, hence the retries in the caller. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(a);
    int port = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
        port = ntohs(a.sin_port);
    }
    close(fd);
    return port;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

static void stop_server(void)
{
    int status;
    if (srv.pid <= 0) {
        return;
    }
    kill(srv.pid, SIGTERM);
    int64_t deadline = mono_ms() + STOP_GRACE_MS;
    while (waitpid(srv.pid, &status, WNOHANG) == 0) {
        if (mono_ms() > deadline) {
            fprintf(stderr, "harness: redis-server %d ignored SIGTERM, killing it\n", (int)srv.pid);
            kill(srv.pid, SIGKILL);
            waitpid(srv.pid, &status, 0);
            break;
        }
        bb_harness_sleep_ms(10);
    }
    srv.pid = 0;
}

void bb_harness_finish(bool failed)
{
    if (finished || !started) {
        return;
    }
    finished = true;
    stop_server();
    const char *keep = getenv("BB_KEEP_TMP");
    if (failed || (keep && strcmp(keep, "1") == 0)) {
        fprintf(stderr, "harness: kept %s (redis.log and test files)\n", srv.dir);
        return;
    }
    nftw(srv.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void at_exit(void)
{
    /* Reaching here without bb_harness_finish means the test did not end
     * normally: keep the directory. */
    bb_harness_finish(true);
}

static bool log_says_in_use(void)
{
    char path[300], line[512];
    bool in_use = false;
    snprintf(path, sizeof(path), "%s/redis.log", srv.dir);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f)) {
        in_use = in_use || strstr(line, "Address already in use") != NULL;
    }
    if (f) {
        fclose(f);
    }
    return in_use;
}

static pid_t spawn_redis(const char *bin, int port)
{
    char sport[16], logfile[300];
    snprintf(sport, sizeof(sport), "%d", port);
    snprintf(logfile, sizeof(logfile), "%s/redis.log", srv.dir);
    const char *base[] = {
        "--port",       sport,   "--bind",       "127.0.0.1", "--save",           "",
        "--appendonly", "no",    "--dir",        srv.dir,     "--daemonize",      "no",
        "--logfile",    logfile, "--unixsocket", srv.sock,    "--unixsocketperm", "700"};
    const char *argv[2 + sizeof(base) / sizeof(base[0]) + MAX_EXTRA_ARGS + 1];
    size_t n = 0;
    argv[n++] = bin;
    if (start_conf) {
        argv[n++] = start_conf;
    }
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
        argv[n++] = base[i];
    }
    for (size_t i = 0; start_extra && start_extra[i] && i < MAX_EXTRA_ARGS; i++) {
        argv[n++] = start_extra[i];
    }
    argv[n] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) {
            _exit(127);
        }
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "harness: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    return pid;
}

static bool wait_ready(int *exited)
{
    int64_t deadline = mono_ms() + READY_TIMEOUT_MS;
    *exited = 0;
    while (mono_ms() < deadline) {
        int status;
        if (waitpid(srv.pid, &status, WNOHANG) == srv.pid) {
            srv.pid = 0;
            *exited = 1;
            return false;
        }
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectWithTimeout(srv.host, srv.port, tv);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
            /* A server whose default user is off answers, but refuses. */
            ok = ok || (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0);
            if (r) {
                freeReplyObject(r);
            }
            redisFree(c);
            if (ok) {
                return true;
            }
        } else if (c) {
            redisFree(c);
        }
        bb_harness_sleep_ms(20);
    }
    return false;
}

const struct bb_redis_server *bb_harness_redis_start(void)
{
    char bin[512];
    const char *base = getenv("TMPDIR");

    if (started) {
        return finished ? NULL : &srv;
    }
    if (!find_redis_server(bin, sizeof(bin))) {
        fprintf(stderr, "harness: redis-server not found (PATH, /usr/bin; or set "
                        "BB_REDIS_SERVER)\n");
        return NULL;
    }
    snprintf(srv.dir, sizeof(srv.dir), "%s/bb-it-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(srv.dir)) {
        fprintf(stderr, "harness: mkdtemp %s: %s\n", srv.dir, strerror(errno));
        return NULL;
    }
    snprintf(srv.sock, sizeof(srv.sock), "%s/redis.sock", srv.dir);
    snprintf(srv.host, sizeof(srv.host), "127.0.0.1");
    started = true;
    if (!at_exit_set) {
        atexit(at_exit);
        at_exit_set = true;
    }
    for (int attempt = 0; attempt < START_ATTEMPTS; attempt++) {
        int exited;
        srv.port = free_port();
        if (srv.port <= 0) {
            fprintf(stderr, "harness: no free port: %s\n", strerror(errno));
            break;
        }
        snprintf(srv.addr, sizeof(srv.addr), "%s:%d", srv.host, srv.port);
        srv.pid = spawn_redis(bin, srv.port);
        if (srv.pid < 0) {
            fprintf(stderr, "harness: fork: %s\n", strerror(errno));
            srv.pid = 0;
            break;
        }
        if (wait_ready(&exited)) {
            fprintf(stderr, "harness: redis-server pid %d on %s, dir %s\n", (int)srv.pid, srv.addr,
                    srv.dir);
            return &srv;
        }
        if (exited && log_says_in_use()) {
            fprintf(stderr, "harness: port %d was taken, trying another\n", srv.port);
            continue;
        }
        fprintf(stderr,
                "harness: redis-server did not answer PING within %d ms (see %s/"
                "redis.log)\n",
                READY_TIMEOUT_MS, srv.dir);
        break;
    }
    bb_harness_finish(true);
    return NULL;
}

const struct bb_redis_server *bb_harness_redis_start_ex(const char *conf, const char *const extra[])
{
    start_conf = conf;
    start_extra = extra;
    return bb_harness_redis_start();
}

redisContext *bb_harness_redis_connect(const struct bb_redis_server *s)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
    if (!c || c->err) {
        fprintf(stderr, "harness: connect %s: %s\n", s->addr, c ? c->errstr : "out of memory");
        if (c) {
            redisFree(c);
        }
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

char *bb_harness_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", srv.dir, name);
    return buf;
}

char *bb_harness_write_file(char *buf, size_t cap, const char *name, const char *text)
{
    bb_harness_path(buf, cap, name);
    FILE *f = fopen(buf, "w");
    if (!f) {
        fprintf(stderr, "harness: %s: %s\n", buf, strerror(errno));
        return NULL;
    }
    bool ok = fputs(text, f) >= 0;
    ok = fclose(f) == 0 && ok;
    return ok ? buf : NULL;
}

/* ---- running programs -------------------------------------------------------------------- */

struct sink {
    char *buf;
    size_t len, cap;
};

static bool sink_read(struct sink *s, int fd)
{
    if (s->cap - s->len < 4097) {
        size_t nc = s->cap ? s->cap * 2 : 16384;
        char *b = realloc(s->buf, nc);
        if (!b) {
            return false;
        }
        s->buf = b;
        s->cap = nc;
        s->buf[s->len] = '\0'; /* a program that writes nothing: "" */
    }
    ssize_t n = read(fd, s->buf + s->len, s->cap - s->len - 1);
    if (n > 0) {
        s->len += (size_t)n;
        s->buf[s->len] = '\0';
        return true;
    }
    return n < 0 && (errno == EINTR || errno == EAGAIN);
}

void bb_run_result_free(struct bb_run_result *res)
{
    free(res->out);
    free(res->err);
    memset(res, 0, sizeof(*res));
}

int bb_harness_run(const char *const argv[], const char *in, int timeout_s,
                   struct bb_run_result *res)
{
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1};
    struct sink out = {0}, err = {0};
    size_t inlen = in ? strlen(in) : 0, inoff = 0;
    int rc = -1;

    memset(res, 0, sizeof(*res));
    res->status = -1;
    if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) {
        fprintf(stderr, "harness: pipe: %s\n", strerror(errno));
        goto close_pipes;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        goto close_pipes;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    pin[0] = pout[1] = perr[1] = -1;
    if (inlen == 0) {
        close(pin[1]);
        pin[1] = -1;
    } else {
        fcntl(pin[1], F_SETFL, O_NONBLOCK);
    }
    signal(SIGPIPE, SIG_IGN);
    int64_t deadline = mono_ms() + (int64_t)timeout_s * 1000;
    bool killed = false;
    while (pout[0] >= 0 || perr[0] >= 0) {
        struct pollfd p[3] = {{pout[0], POLLIN, 0}, {perr[0], POLLIN, 0}, {pin[1], POLLOUT, 0}};
        int64_t left = deadline - mono_ms();
        if (left <= 0 && !killed) {
            fprintf(stderr, "harness: %s ran over %d s, killing it\n", argv[0], timeout_s);
            kill(pid, SIGKILL);
            killed = true;
        }
        if (poll(p, 3, left > 0 ? (int)(left < 1000 ? left : 1000) : 100) < 0 && errno != EINTR) {
            break;
        }
        if (p[0].revents && !sink_read(&out, pout[0])) {
            close(pout[0]);
            pout[0] = -1;
        }
        if (p[1].revents && !sink_read(&err, perr[0])) {
            close(perr[0]);
            perr[0] = -1;
        }
        if (p[2].revents) {
            ssize_t n = (p[2].revents & POLLOUT) ? write(pin[1], in + inoff, inlen - inoff) : -1;
            if (n > 0) {
                inoff += (size_t)n;
            }
            if (n < 0 || inoff == inlen) {
                close(pin[1]);
                pin[1] = -1;
            }
        }
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    res->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    res->out = out.buf ? out.buf : strdup("");
    res->outlen = out.len;
    res->err = err.buf ? err.buf : strdup("");
    res->errlen = err.len;
    out.buf = err.buf = NULL;
    rc = 0;

close_pipes:
    for (int i = 0; i < 2; i++) {
        int *fds[] = {&pin[i], &pout[i], &perr[i]};
        for (int j = 0; j < 3; j++) {
            if (*fds[j] >= 0) {
                close(*fds[j]);
            }
        }
    }
    free(out.buf);
    free(err.buf);
    return rc;
}

/* A loopback port nobody listens on right now. */
int bb_harness_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0) {
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* GET path from 127.0.0.1:port; returns the status code, body in buf. */
int bb_harness_http_get(int port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = read(fd, buf + got, cap - 1 - got)) > 0) {
        got += (size_t)r;
    }
    buf[got] = '\0';
    close(fd);
    int code = 0;
    sscanf(buf, "HTTP/1.%*d %d", &code);
    return code;
}

pid_t bb_harness_start_stand_in(const char *script, const char *portfile, const char *logfile,
                                int *port)
{
    unlink(portfile);
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        execlp("python3", "python3", script, portfile, logfile, (char *)NULL);
        _exit(127);
    }
    *port = 0;
    for (int t = 0; t < 10000 && !*port; t += 50) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            if (fscanf(f, "%d", port) != 1) {
                *port = 0;
            }
            fclose(f);
        }
        if (!*port) {
            usleep(50 * 1000);
        }
    }
    if (!*port) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

long long bb_harness_stream_unfinished(redisContext *c, const char *stream, const char *group)
{
    redisReply *r = redisCommand(c, "XPENDING %s %s", stream, group);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r); /* no group yet */
        return 1;
    }
    long long pending =
        r->elements > 0 && r->element[0]->type == REDIS_REPLY_INTEGER ? r->element[0]->integer : 0;
    freeReplyObject(r);
    long long lag = -1;
    r = redisCommand(c, "XINFO GROUPS %s", stream);
    for (size_t g = 0; r && r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *gr = r->element[g];
        bool ours = false;
        long long l = -1;
        for (size_t k = 0; gr->type == REDIS_REPLY_ARRAY && k + 1 < gr->elements; k += 2) {
            const redisReply *key = gr->element[k], *v = gr->element[k + 1];
            if (key->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (strcmp(key->str, "name") == 0 && v->type == REDIS_REPLY_STRING) {
                ours = strcmp(v->str, group) == 0;
            } else if (strcmp(key->str, "lag") == 0 && v->type == REDIS_REPLY_INTEGER) {
                l = v->integer;
            }
        }
        if (ours) {
            lag = l;
        }
    }
    freeReplyObject(r);
    return (lag < 0 ? 1 : lag) + pending;
}

long long bb_harness_worker_unfinished(redisContext *c, const char *stream, const char *group,
                                       const char *instance)
{
    long long unread = bb_harness_stream_unfinished(c, stream, group);
    redisReply *r = redisCommand(c, "ZCARD bb:later:%s", instance);
    long long later = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 1;
    freeReplyObject(r);
    return unread + later;
}
