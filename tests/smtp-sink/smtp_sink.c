/* bb-smtp-sink: a small ESMTP server that stands in for a mail provider in
 * the smtp plug-in's tests and the e-mail benchmarks.
 *
 * One thread, one libevent loop, one bufferevent per connection. It speaks
 * what libcurl needs (EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN, MAIL, RCPT,
 * DATA with dot-unstuffing, RSET, NOOP, QUIT) and answers pipelined
 * commands in order. Messages are written to a directory (<n>.eml, envelope
 * prepended as X-Envelope-From/To) or only counted. Failures for tests:
 * --reject-rcpt answers 550 to matching recipients (hard bounce),
 * --fail-rate N answers 451 to every Nth message (transient). SIGTERM/SIGINT
 * print one stats line on stdout and exit.
 *
 * TLS (OpenSSL through libevent's bufferevent_openssl): with --tls-cert and
 * --tls-key the sink offers STARTTLS (RFC 3207): after "220 ready" it drops
 * whatever plaintext the client pipelined behind STARTTLS, frees the plain
 * socket bufferevent once the 220 is written, puts a TLS one on the same
 * socket and forgets the session (EHLO, AUTH), so the client must say EHLO
 * again. --smtps speaks TLS from the first byte (port 465 style). When TLS
 * is configured, AUTH is offered and accepted only inside TLS;
 * --require-tls refuses MAIL before TLS with 530. --log FILE appends one
 * line per accepted message saying whether the session was TLS (and which
 * version) and which user authenticated, for tests to assert.
 *
 * Usage: bb-smtp-sink [--port N] [--maildir DIR | --count-only]
 *                     [--user U --password P | --auth U:P | --any-auth]
 *                     [--reject-rcpt SUBSTRING] [--fail-rate N]
 *                     [--tls-cert FILE --tls-key FILE [--smtps] [--require-tls]]
 *                     [--log FILE] */
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
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

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
    const char *tls_cert; /* PEM chain; with tls_key enables STARTTLS */
    const char *tls_key;
    bool smtps;       /* TLS on connect instead of STARTTLS */
    bool require_tls; /* 530 to MAIL outside TLS */
    const char *log_path;
};

struct sink_stats {
    uint64_t messages;    /* accepted with 250 after DATA */
    uint64_t bytes;       /* message bytes of accepted messages, after unstuffing */
    uint64_t connections; /* accepted connections */
    uint64_t attempts;    /* DATA transfers completed, accepted or not */
    uint64_t failed;      /* answered 451 by --fail-rate */
    uint64_t rejected;    /* recipients answered 550 */
    uint64_t tls;         /* TLS handshakes completed (STARTTLS or --smtps) */
    uint64_t auth_failed; /* AUTH answered 535 */
};

struct sink_conn {
    struct bufferevent *bev; /* plain socket, or TLS (owns the socket) once tls */
    evutil_socket_t fd;
    bool fd_owned; /* the plain bufferevent does not close fd: conn_free does */
    enum sink_state state;
    bool greeted;
    bool authed;
    bool quitting;
    bool tls;          /* the connection runs inside TLS (handshake may still be going) */
    bool need_ehlo;    /* STARTTLS reset the session: EHLO before anything else */
    bool starttls_now; /* 220 queued: switch to TLS once it is written */
    char *auth_user;   /* who authenticated in this session, NULL if nobody */
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
static SSL_CTX *ssl_ctx; /* NULL: no TLS configured */
static FILE *log_file;   /* --log, NULL without */

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
    free(c->auth_user);
    if (c->msg != NULL) {
        evbuffer_free(c->msg);
    }
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
    }
    if (c->fd_owned) {
        evutil_closesocket(c->fd);
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

/* Answers AUTH with 235 or 535 and remembers who got in. */
static void auth_result(struct sink_conn *c, const char *user, const char *pass)
{
    if (credentials_ok(user, pass)) {
        c->authed = true;
        free(c->auth_user);
        c->auth_user = strdup(user);
        reply(c, "235 2.7.0 authenticated");
    } else {
        stats.auth_failed++;
        reply(c, "535 5.7.8 authentication failed");
    }
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
    auth_result(c, user, pass);
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
    auth_result(c, c->login_user, pass);
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

/* The TLS version of the session ("TLSv1.3"), or "no". */
static const char *conn_tls_version(struct sink_conn *c)
{
    SSL *ssl = c->tls ? bufferevent_openssl_get_ssl(c->bev) : NULL;

    return ssl != NULL ? SSL_get_version(ssl) : "no";
}

/* One --log line per accepted message: number, TLS, user; no addresses. */
static void log_message(struct sink_conn *c)
{
    if (log_file == NULL) {
        return;
    }
    fprintf(log_file, "message=%llu tls=%s user=%s rcpt=%zu bytes=%llu\n",
            (unsigned long long)stats.messages, conn_tls_version(c),
            c->auth_user != NULL ? c->auth_user : "-", c->nrcpt, (unsigned long long)c->msg_bytes);
    fflush(log_file);
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
    log_message(c);
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

/* AUTH is offered in plaintext only when no TLS is configured. */
static bool auth_offered(const struct sink_conn *c)
{
    return ssl_ctx == NULL || c->tls;
}

static void command(struct sink_conn *c, char *line)
{
    bool ehlo_first = c->need_ehlo && !verb_is(line, "EHLO") && !verb_is(line, "HELO") &&
                      !verb_is(line, "QUIT") && !verb_is(line, "NOOP") && !verb_is(line, "RSET");

    if (ehlo_first) {
        /* RFC 3207 4.2: the TLS session starts from scratch */
        reply(c, "503 5.5.1 EHLO first after STARTTLS");
    } else if (verb_is(line, "EHLO")) {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        c->greeted = true;
        c->need_ehlo = false;
        conn_reset_tx(c);
        evbuffer_add_printf(out,
                            "250-bb-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                            "250-SIZE %ld\r\n",
                            SINK_MAX_SIZE);
        if (ssl_ctx != NULL && !c->tls) {
            evbuffer_add_printf(out, "250-STARTTLS\r\n");
        }
        if (auth_offered(c)) {
            evbuffer_add_printf(out, "250-AUTH PLAIN LOGIN\r\n");
        }
        evbuffer_add_printf(out, "250 ENHANCEDSTATUSCODES\r\n");
    } else if (verb_is(line, "HELO")) {
        c->greeted = true;
        c->need_ehlo = false;
        conn_reset_tx(c);
        reply(c, "250 bb-smtp-sink");
    } else if (verb_is(line, "AUTH") && !auth_offered(c)) {
        reply(c, "538 5.7.11 encryption required for authentication");
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
        if (opts.require_tls && !c->tls) {
            reply(c, "530 5.7.0 must issue a STARTTLS command first");
        } else if (opts.user != NULL && !opts.any_auth && !c->authed) {
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
        if (ssl_ctx == NULL) {
            reply(c, "454 4.7.0 TLS not available");
        } else if (c->tls) {
            reply(c, "503 5.5.1 TLS already active");
        } else if (line[8] != '\0') {
            reply(c, "501 5.5.4 STARTTLS takes no argument");
        } else {
            reply(c, "220 2.0.0 ready to start TLS");
            c->starttls_now = true;
        }
    } else {
        reply(c, "502 5.5.2 command not recognised");
    }
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* "220 ready" has been written: the plain bufferevent goes, a TLS one
 * takes over the socket (the client's ClientHello waits in the kernel),
 * and the session starts over. A TLS filter stacked on the plain
 * bufferevent would do too, but its write callback fires before the
 * bytes leave, so the 221 after QUIT could be lost. */
static int conn_start_tls(struct sink_conn *c)
{
    SSL *ssl = SSL_new(ssl_ctx);
    struct bufferevent *tls;

    bufferevent_free(c->bev);
    c->bev = NULL;
    if (ssl == NULL) {
        return -1;
    }
    /* From here the TLS bufferevent owns the socket; on failure libevent
     * frees ssl (and with it may close fd): leak rather than close twice. */
    c->fd_owned = false;
    tls = bufferevent_openssl_socket_new(base, c->fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (tls == NULL) {
        return -1;
    }
    c->bev = tls;
    c->tls = true;
    c->need_ehlo = true;
    c->greeted = false;
    c->authed = false;
    free(c->auth_user);
    c->auth_user = NULL;
    c->state = ST_CMD;
    conn_reset_tx(c);
    bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
    bufferevent_setcb(tls, on_read, on_write, on_event, c);
    bufferevent_enable(tls, EV_READ | EV_WRITE);
    return 0;
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct sink_conn *c = arg;

    if (c->starttls_now) {
        c->starttls_now = false;
        if (conn_start_tls(c) != 0) {
            fprintf(stderr, "bb-smtp-sink: cannot start TLS\n");
            conn_free(c);
        }
    } else if (c->quitting) {
        conn_free(c);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct sink_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    while (!c->quitting && !c->starttls_now) {
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
    if (c->starttls_now) {
        /* RFC 3207 5: plaintext pipelined behind STARTTLS must not reach
         * the TLS session; read nothing more until on_write switches */
        evbuffer_drain(in, evbuffer_get_length(in));
        bufferevent_disable(bev, EV_READ);
        return;
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
    struct sink_conn *c = arg;

    if (what & BEV_EVENT_CONNECTED) {
        stats.tls++; /* only TLS bufferevents report this: the handshake is done */
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        unsigned long e;
        while (c->tls && (e = bufferevent_get_openssl_error(bev)) != 0) {
            char buf[256];
            if (ERR_GET_LIB(e) == 0) {
                continue; /* a bare errno, not an OpenSSL reason */
            }
            ERR_error_string_n(e, buf, sizeof(buf));
            fprintf(stderr, "bb-smtp-sink: TLS: %s\n", buf);
        }
        conn_free(c);
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
    c->fd = fd;
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
    if (opts.smtps) {
        SSL *ssl = SSL_new(ssl_ctx);
        if (ssl == NULL) {
            goto err_free;
        }
        /* on failure libevent frees ssl itself (BEV_OPT_CLOSE_ON_FREE) */
        c->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (c->bev != NULL) {
            bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
            c->tls = true;
        }
    } else {
        /* no BEV_OPT_CLOSE_ON_FREE: STARTTLS hands the socket on */
        c->bev = bufferevent_socket_new(base, fd, 0);
        c->fd_owned = c->bev != NULL;
    }
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
           "rejected_rcpt=%llu tls=%llu auth_failed=%llu\n",
           (unsigned long long)stats.messages, (unsigned long long)stats.bytes,
           (unsigned long long)stats.connections, (unsigned long long)stats.attempts,
           (unsigned long long)stats.failed, (unsigned long long)stats.rejected,
           (unsigned long long)stats.tls, (unsigned long long)stats.auth_failed);
    fflush(stdout);
    event_base_loopbreak(base);
}

static void usage(FILE *out)
{
    fputs("usage: bb-smtp-sink [--port N] [--maildir DIR | --count-only]\n"
          "                    [--user U --password P | --auth U:P | --any-auth]\n"
          "                    [--reject-rcpt SUBSTRING] [--fail-rate N]\n"
          "                    [--tls-cert FILE --tls-key FILE [--smtps] [--require-tls]]\n"
          "                    [--log FILE]\n",
          out);
}

/* The server context for --tls-cert/--tls-key: TLS 1.2 or newer. */
static SSL_CTX *tls_context(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        goto err;
    }
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* a client that closes without close_notify (libcurl after QUIT) just hung up */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        goto err_ctx;
    }
    return ctx;

err_ctx:
    SSL_CTX_free(ctx);
err:
    fprintf(stderr, "bb-smtp-sink: TLS setup: %s\n", ERR_error_string(ERR_get_error(), NULL));
    return NULL;
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
        {"auth", required_argument, NULL, 'A'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"smtps", no_argument, NULL, 'S'},
        {"require-tls", no_argument, NULL, 'T'},
        {"log", required_argument, NULL, 'l'},
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
        char *colon;
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
        case 'A':
            colon = strchr(optarg, ':');
            if (colon == NULL || colon == optarg) {
                fprintf(stderr, "bb-smtp-sink: --auth wants USER:PASS\n");
                return 2;
            }
            *colon = '\0';
            opts.user = optarg;
            opts.password = colon + 1;
            break;
        case 'C':
            opts.tls_cert = optarg;
            break;
        case 'K':
            opts.tls_key = optarg;
            break;
        case 'S':
            opts.smtps = true;
            break;
        case 'T':
            opts.require_tls = true;
            break;
        case 'l':
            opts.log_path = optarg;
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
    if ((opts.tls_cert == NULL) != (opts.tls_key == NULL) ||
        ((opts.smtps || opts.require_tls) && opts.tls_cert == NULL)) {
        fprintf(stderr, "bb-smtp-sink: --tls-cert and --tls-key go together, and --smtps and "
                        "--require-tls need them\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (opts.tls_cert != NULL) {
        ssl_ctx = tls_context(opts.tls_cert, opts.tls_key);
        if (ssl_ctx == NULL) {
            return 1;
        }
    }
    if (opts.log_path != NULL) {
        log_file = fopen(opts.log_path, "a");
        if (log_file == NULL) {
            fprintf(stderr, "bb-smtp-sink: %s: %s\n", opts.log_path, strerror(errno));
            goto out_tls;
        }
    }

    base = event_base_new();
    if (base == NULL) {
        fprintf(stderr, "bb-smtp-sink: event_base_new failed\n");
        goto out_log;
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
out_log:
    if (log_file != NULL) {
        fclose(log_file);
    }
out_tls:
    SSL_CTX_free(ssl_ctx);
    return rc;
}
