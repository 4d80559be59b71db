/* bb-smtp-sink: a small ESMTP server that stands in for a mail provider in
 * the smtp plug-in's tests and the e-mail benchmarks.
 *
 * One thread, one libevent loop, one bufferevent per connection. It speaks
 * what libcurl needs (EHLO/HELO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA with
 * dot-unstuffing, RSET, NOOP, QUIT) and answers pipelined commands in
 * order. Messages are written to a directory (<n>.eml, envelope prepended
 * as X-Envelope-From/To) or only counted. Failures for tests: --reject-rcpt
 * answers 550 to matching recipients (hard bounce), --fail-rate N answers
 * 451 to every Nth message (transient). SIGTERM/SIGINT print one stats
 * line on stdout and exit.
 *
 * Usage: bb-smtp-sink [--port N] [--maildir DIR | --count-only]
 *                     [--user U --password P | --any-auth]
 *                     [--reject-rcpt SUBSTRING] [--fail-rate N] */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define SINK_MAX_LINE 4096           /* command lines; RFC 5321 says 512 */
#define SINK_MAX_DATA_LINE (1 << 20) /* a message line without CRLF */
#define SINK_MAX_SIZE (50L << 20)    /* advertised SIZE */
#define SINK_MAX_RCPT 1000

enum sink_state {
    ST_CMD = 0,
    ST_DATA,
    ST_AUTH_PLAIN,      /* waiting for the PLAIN response after 334 */
    ST_AUTH_LOGIN_USER, /* waiting for the base64 user name */
    ST_AUTH_LOGIN_PASS, /* waiting for the base64 password */
};

struct sink_opts {
    const char *maildir;
    bool count_only;
    const char *user;
    const char *password;
    bool any_auth;
    const char *reject_rcpt;
    unsigned long fail_rate;
};

struct sink_stats {
    uint64_t messages;    /* accepted with 250 after DATA */
    uint64_t bytes;       /* message bytes of accepted messages, after unstuffing */
    uint64_t connections; /* accepted connections */
    uint64_t attempts;    /* DATA transfers completed, accepted or not */
    uint64_t failed;      /* answered 451 by --fail-rate */
    uint64_t rejected;    /* recipients answered 550 */
};

struct sink_conn {
    struct bufferevent *bev;
    enum sink_state state;
    bool greeted;
    bool authed;
    bool quitting;
    char *from;
    char **rcpt;
    size_t nrcpt;
    char *login_user;
    struct evbuffer *msg; /* message body while in ST_DATA (unless count_only) */
    uint64_t msg_bytes;
};

static struct sink_opts opts;
static struct sink_stats stats;
static struct event_base *base;

static void conn_reset_tx(struct sink_conn *c)
{
    free(c->from);
    c->from = NULL;
    for (size_t i = 0; i < c->nrcpt; i++) {
        free(c->rcpt[i]);
    }
    c->nrcpt = 0;
    if (c->msg != NULL) {
        evbuffer_drain(c->msg, evbuffer_get_length(c->msg));
    }
    c->msg_bytes = 0;
}

static void conn_free(struct sink_conn *c)
{
    conn_reset_tx(c);
    free(c->rcpt);
    free(c->login_user);
    if (c->msg != NULL) {
        evbuffer_free(c->msg);
    }
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
    }
    free(c);
}

static void reply(struct sink_conn *c, const char *line)
{
    evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\r\n", line);
}

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z') {
        return ch - 'A';
    }
    if (ch >= 'a' && ch <= 'z') {
        return ch - 'a' + 26;
    }
    if (ch >= '0' && ch <= '9') {
        return ch - '0' + 52;
    }
    if (ch == '+') {
        return 62;
    }
    if (ch == '/') {
        return 63;
    }
    return -1;
}

/* Decodes base64 into a malloc'd buffer (NUL-terminated, *outlen excludes
 * it); NULL on bad input. */
static char *b64decode(const char *in, size_t *outlen)
{
    size_t len = strlen(in);
    char *out = malloc(len / 4 * 3 + 4);
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;

    if (out == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=') {
            break;
        }
        int v = b64val((unsigned char)in[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[n] = '\0';
    *outlen = n;
    return out;
}

static bool credentials_ok(const char *user, const char *pass)
{
    if (opts.any_auth || opts.user == NULL) {
        return true;
    }
    return strcmp(user, opts.user) == 0 && opts.password != NULL &&
           strcmp(pass, opts.password) == 0;
}

/* PLAIN response: authzid NUL authcid NUL passwd. */
static void auth_plain(struct sink_conn *c, const char *b64)
{
    size_t n = 0;
    char *raw = b64decode(b64, &n);
    const char *user;
    const char *pass;
    char *nul1;
    char *nul2;

    c->state = ST_CMD;
    if (raw == NULL) {
        reply(c, "501 5.5.2 bad base64");
        return;
    }
    nul1 = memchr(raw, '\0', n);
    nul2 = nul1 != NULL ? memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - raw)) : NULL;
    if (nul2 == NULL) {
        reply(c, "501 5.5.2 bad PLAIN response");
        goto out_free;
    }
    user = nul1 + 1;
    pass = nul2 + 1;
    if (credentials_ok(user, pass)) {
        c->authed = true;
        reply(c, "235 2.7.0 authenticated");
    } else {
        reply(c, "535 5.7.8 authentication failed");
    }
out_free:
    free(raw);
}

static void auth_login_user(struct sink_conn *c, const char *b64)
{
    size_t n = 0;

    free(c->login_user);
    c->login_user = b64decode(b64, &n);
    if (c->login_user == NULL) {
        c->state = ST_CMD;
        reply(c, "501 5.5.2 bad base64");
        return;
    }
    c->state = ST_AUTH_LOGIN_PASS;
    reply(c, "334 UGFzc3dvcmQ6");
}

static void auth_login_pass(struct sink_conn *c, const char *b64)
{
    size_t n = 0;
    char *pass = b64decode(b64, &n);

    c->state = ST_CMD;
    if (pass == NULL) {
        reply(c, "501 5.5.2 bad base64");
        return;
    }
    if (credentials_ok(c->login_user, pass)) {
        c->authed = true;
        reply(c, "235 2.7.0 authenticated");
    } else {
        reply(c, "535 5.7.8 authentication failed");
    }
    free(pass);
}

/* The address inside <...> after "FROM:" or "TO:", malloc'd; NULL if malformed. */
static char *path_arg(const char *arg)
{
    const char *lt = strchr(arg, '<');
    const char *gt = lt != NULL ? strchr(lt, '>') : NULL;

    if (gt == NULL) {
        return NULL;
    }
    return strndup(lt + 1, (size_t)(gt - lt - 1));
}

static bool verb_is(const char *line, const char *verb)
{
    size_t n = strlen(verb);

    return strncasecmp(line, verb, n) == 0 && (line[n] == '\0' || line[n] == ' ');
}

static int write_maildir(struct sink_conn *c, uint64_t num)
{
    char tmp[4096];
    char path[4096];
    FILE *f;
    int rc = -1;

    snprintf(tmp, sizeof(tmp), "%s/.%llu.tmp", opts.maildir, (unsigned long long)num);
    snprintf(path, sizeof(path), "%s/%llu.eml", opts.maildir, (unsigned long long)num);
    f = fopen(tmp, "wb");
    if (f == NULL) {
        return -1;
    }
    fprintf(f, "X-Envelope-From: <%s>\r\nX-Envelope-To: ", c->from);
    for (size_t i = 0; i < c->nrcpt; i++) {
        fprintf(f, "%s<%s>", i > 0 ? ", " : "", c->rcpt[i]);
    }
    fputs("\r\n", f);
    while (evbuffer_get_length(c->msg) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(c->msg, -1, NULL, &v, 1) < 1) {
            break;
        }
        if (fwrite(v.iov_base, 1, v.iov_len, f) != v.iov_len) {
            goto out_close;
        }
        evbuffer_drain(c->msg, v.iov_len);
    }
    if (fflush(f) != 0) {
        goto out_close;
    }
    rc = 0;
out_close:
    if (fclose(f) != 0) {
        rc = -1;
    }
    /* rename last, so a reader never sees half a message */
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
    }
    if (rc != 0) {
        unlink(tmp);
    }
    return rc;
}

static void data_done(struct sink_conn *c)
{
    uint64_t attempt = ++stats.attempts;

    c->state = ST_CMD;
    if (opts.fail_rate > 0 && attempt % opts.fail_rate == 0) {
        stats.failed++;
        reply(c, "451 4.3.0 temporary failure, try again");
        goto out_reset;
    }
    if (opts.maildir != NULL && !opts.count_only) {
        if (write_maildir(c, stats.messages + 1) != 0) {
            reply(c, "452 4.3.1 cannot store message");
            goto out_reset;
        }
    }
    stats.messages++;
    stats.bytes += c->msg_bytes;
    evbuffer_add_printf(bufferevent_get_output(c->bev), "250 2.0.0 Ok: queued as %llu\r\n",
                        (unsigned long long)stats.messages);
out_reset:
    conn_reset_tx(c);
}

static void data_line(struct sink_conn *c, const char *line, size_t len)
{
    if (len == 1 && line[0] == '.') {
        data_done(c);
        return;
    }
    if (line[0] == '.') {
        line++;
        len--;
    }
    c->msg_bytes += len + 2;
    if (c->msg != NULL) {
        evbuffer_add(c->msg, line, len);
        evbuffer_add(c->msg, "\r\n", 2);
    }
}

static void command(struct sink_conn *c, char *line)
{
    if (verb_is(line, "EHLO")) {
        c->greeted = true;
        conn_reset_tx(c);
        evbuffer_add_printf(bufferevent_get_output(c->bev),
                            "250-bb-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                            "250-SIZE %ld\r\n250-AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES\r\n",
                            SINK_MAX_SIZE);
    } else if (verb_is(line, "HELO")) {
        c->greeted = true;
        conn_reset_tx(c);
        reply(c, "250 bb-smtp-sink");
    } else if (verb_is(line, "AUTH")) {
        const char *mech = line + 4;
        while (*mech == ' ') {
            mech++;
        }
        if (c->authed) {
            reply(c, "503 5.5.1 already authenticated");
        } else if (strncasecmp(mech, "PLAIN", 5) == 0 && (mech[5] == '\0' || mech[5] == ' ')) {
            if (mech[5] == ' ' && mech[6] != '\0') {
                auth_plain(c, mech + 6);
            } else {
                c->state = ST_AUTH_PLAIN;
                reply(c, "334 ");
            }
        } else if (strncasecmp(mech, "LOGIN", 5) == 0 && (mech[5] == '\0' || mech[5] == ' ')) {
            if (mech[5] == ' ' && mech[6] != '\0') {
                auth_login_user(c, mech + 6);
            } else {
                c->state = ST_AUTH_LOGIN_USER;
                reply(c, "334 VXNlcm5hbWU6");
            }
        } else {
            reply(c, "504 5.5.4 mechanism not supported");
        }
    } else if (verb_is(line, "MAIL")) {
        if (opts.user != NULL && !opts.any_auth && !c->authed) {
            reply(c, "530 5.7.0 authentication required");
        } else if (c->from != NULL) {
            reply(c, "503 5.5.1 nested MAIL");
        } else if (strncasecmp(line + 5, "FROM:", 5) != 0 ||
                   (c->from = path_arg(line + 10)) == NULL) {
            reply(c, "501 5.5.4 syntax: MAIL FROM:<address>");
        } else {
            reply(c, "250 2.1.0 Ok");
        }
    } else if (verb_is(line, "RCPT")) {
        char *to = NULL;
        if (c->from == NULL) {
            reply(c, "503 5.5.1 need MAIL first");
        } else if (strncasecmp(line + 5, "TO:", 3) != 0 || (to = path_arg(line + 8)) == NULL) {
            reply(c, "501 5.5.4 syntax: RCPT TO:<address>");
        } else if (opts.reject_rcpt != NULL && strstr(to, opts.reject_rcpt) != NULL) {
            stats.rejected++;
            reply(c, "550 5.1.1 user unknown");
            free(to);
        } else if (c->nrcpt >= SINK_MAX_RCPT) {
            reply(c, "452 4.5.3 too many recipients");
            free(to);
        } else {
            c->rcpt[c->nrcpt++] = to;
            reply(c, "250 2.1.5 Ok");
        }
    } else if (verb_is(line, "DATA")) {
        if (c->from == NULL || c->nrcpt == 0) {
            reply(c, "503 5.5.1 need MAIL and RCPT first");
        } else {
            c->state = ST_DATA;
            c->msg_bytes = 0;
            reply(c, "354 end data with <CR><LF>.<CR><LF>");
        }
    } else if (verb_is(line, "RSET")) {
        conn_reset_tx(c);
        reply(c, "250 2.0.0 Ok");
    } else if (verb_is(line, "NOOP")) {
        reply(c, "250 2.0.0 Ok");
    } else if (verb_is(line, "QUIT")) {
        reply(c, "221 2.0.0 bye");
        c->quitting = true;
    } else if (verb_is(line, "STARTTLS")) {
        reply(c, "454 4.7.0 TLS not available");
    } else {
        reply(c, "502 5.5.2 command not recognised");
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct sink_conn *c = arg;

    if (c->quitting) {
        conn_free(c);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sink_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    while (!c->quitting) {
        size_t len = 0;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF_STRICT);
        if (line == NULL) {
            size_t max = c->state == ST_DATA ? SINK_MAX_DATA_LINE : SINK_MAX_LINE;
            if (evbuffer_get_length(in) > max) {
                reply(c, "500 5.5.6 line too long");
                c->quitting = true;
            }
            break;
        }
        switch (c->state) {
        case ST_DATA:
            data_line(c, line, len);
            break;
        case ST_AUTH_PLAIN:
            auth_plain(c, line);
            break;
        case ST_AUTH_LOGIN_USER:
            auth_login_user(c, line);
            break;
        case ST_AUTH_LOGIN_PASS:
            auth_login_pass(c, line);
            break;
        default:
            command(c, line);
            break;
        }
        free(line);
    }
    if (c->quitting) {
        evbuffer_drain(in, evbuffer_get_length(in));
        bufferevent_disable(bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
            conn_free(c);
        }
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        conn_free(arg);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct sink_conn *c = calloc(1, sizeof(*c));
    int one = 1;

    if (c == NULL) {
        evutil_closesocket(fd);
        return;
    }
    c->rcpt = calloc(SINK_MAX_RCPT, sizeof(*c->rcpt));
    if (c->rcpt == NULL) {
        goto err_free;
    }
    if (!opts.count_only && opts.maildir != NULL) {
        c->msg = evbuffer_new();
        if (c->msg == NULL) {
            goto err_free;
        }
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        goto err_free;
    }
    stats.connections++;
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    reply(c, "220 bb-smtp-sink ESMTP ready");
    return;

err_free:
    if (c->bev == NULL) {
        evutil_closesocket(fd);
    }
    conn_free(c);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    printf("stats messages=%llu bytes=%llu connections=%llu attempts=%llu failed=%llu "
           "rejected_rcpt=%llu\n",
           (unsigned long long)stats.messages, (unsigned long long)stats.bytes,
           (unsigned long long)stats.connections, (unsigned long long)stats.attempts,
           (unsigned long long)stats.failed, (unsigned long long)stats.rejected);
    fflush(stdout);
    event_base_loopbreak(base);
}

static void usage(FILE *out)
{
    fputs("usage: bb-smtp-sink [--port N] [--maildir DIR | --count-only]\n"
          "                    [--user U --password P | --any-auth]\n"
          "                    [--reject-rcpt SUBSTRING] [--fail-rate N]\n",
          out);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"maildir", required_argument, NULL, 'm'},
        {"count-only", no_argument, NULL, 'c'},
        {"user", required_argument, NULL, 'u'},
        {"password", required_argument, NULL, 'P'},
        {"any-auth", no_argument, NULL, 'a'},
        {"reject-rcpt", required_argument, NULL, 'r'},
        {"fail-rate", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct sockaddr_in sin;
    socklen_t slen = sizeof(sin);
    struct evconnlistener *listener = NULL;
    struct event *sigterm = NULL;
    struct event *sigint = NULL;
    long port = 2525;
    int ch;
    int rc = 1;

    while ((ch = getopt_long(argc, argv, "p:m:cu:P:ar:f:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            port = strtol(optarg, NULL, 10);
            break;
        case 'm':
            opts.maildir = optarg;
            break;
        case 'c':
            opts.count_only = true;
            break;
        case 'u':
            opts.user = optarg;
            break;
        case 'P':
            opts.password = optarg;
            break;
        case 'a':
            opts.any_auth = true;
            break;
        case 'r':
            opts.reject_rcpt = optarg;
            break;
        case 'f':
            opts.fail_rate = strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (port < 0 || port > 65535) {
        fprintf(stderr, "bb-smtp-sink: bad port\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    base = event_base_new();
    if (base == NULL) {
        fprintf(stderr, "bb-smtp-sink: event_base_new failed\n");
        return 1;
    }
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)port);
    listener =
        evconnlistener_new_bind(base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                1024, (struct sockaddr *)&sin, sizeof(sin));
    if (listener == NULL) {
        fprintf(stderr, "bb-smtp-sink: cannot listen on 127.0.0.1:%ld: %s\n", port,
                strerror(errno));
        goto out_base;
    }
    if (getsockname(evconnlistener_get_fd(listener), (struct sockaddr *)&sin, &slen) != 0) {
        fprintf(stderr, "bb-smtp-sink: getsockname: %s\n", strerror(errno));
        goto out_listener;
    }
    sigterm = evsignal_new(base, SIGTERM, on_signal, NULL);
    sigint = evsignal_new(base, SIGINT, on_signal, NULL);
    if (sigterm == NULL || sigint == NULL || evsignal_add(sigterm, NULL) != 0 ||
        evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "bb-smtp-sink: cannot install signal handlers\n");
        goto out_signals;
    }
    printf("listening 127.0.0.1:%u\n", (unsigned)ntohs(sin.sin_port));
    fflush(stdout);
    event_base_dispatch(base);
    rc = 0;

out_signals:
    if (sigint != NULL) {
        event_free(sigint);
    }
    if (sigterm != NULL) {
        event_free(sigterm);
    }
out_listener:
    evconnlistener_free(listener);
out_base:
    /* connections still open are left to exit() */
    event_base_free(base);
    return rc;
}
