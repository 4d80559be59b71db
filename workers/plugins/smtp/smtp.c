/* bb-channel-smtp: the e-mail channel plug-in (ABI version 1).
 *
 * Every callback runs on the worker host's event-loop thread. send()
 * renders the message (smtp_format.c), prepares a libcurl SMTP easy handle
 * that uploads it from memory and hands it to host->curl(); the host's
 * multi handle keeps connections open across messages, so a steady stream
 * of deliveries costs one SMTP transaction each, not one TCP+TLS+AUTH
 * handshake. The outcome is mapped from the SMTP reply:
 *   2xx                    -> BB_SEND_OK
 *   4xx, no reply, timeout -> BB_SEND_RETRY
 *   550/551/553 on RCPT    -> BB_SEND_GONE (hard bounce: the address is gone)
 *   530/535 (auth)         -> BB_SEND_RETRY (the operator's credentials, not the message)
 *   other 5xx              -> BB_SEND_PERMANENT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "smtp_internal.h"

static const struct bb_channel_option smtp_options[] = {
    {"url", BB_OPTION_STRING, NULL,
     "smtp://host:port (STARTTLS with starttls) or smtps://host:port"},
    {"from", BB_OPTION_STRING, NULL, "sender address, envelope and From header"},
    {"from_name", BB_OPTION_STRING, "Buurtbus", "sender display name"},
    {"username", BB_OPTION_STRING, "", "SMTP AUTH user; empty: no AUTH"},
    {"password_file", BB_OPTION_SECRET_FILE, "", "file whose first line is the SMTP password"},
    {"starttls", BB_OPTION_BOOL, "false", "require STARTTLS on smtp:// URLs"},
    {"ca_file", BB_OPTION_STRING, "",
     "PEM CA bundle the server's certificate is checked against; empty: the system CAs"},
    {"unsubscribe_base", BB_OPTION_STRING, "",
     "unsubscribe endpoint; the link is <base>?u=<HMAC token of the recipient>"},
    {"unsubscribe_key_file", BB_OPTION_SECRET_FILE, "",
     "file with the HMAC key for unsubscribe tokens and Message-IDs (required with "
     "unsubscribe_base)"},
    {"timeout", BB_OPTION_DURATION_MS, "30000", "whole SMTP transaction timeout"},
    {NULL, 0, NULL, NULL},
};

/* One send in flight; owns the easy handle and the rendered message. */
struct smtp_send {
    struct smtp_ctx *ctx;
    CURL *easy;
    struct curl_slist *rcpt;
    char *msg;
    size_t len;
    size_t off;
    bb_send_done_fn *done;
    void *token;
    char errbuf[CURL_ERROR_SIZE];
};

static char *host_strdup(const struct bb_host_api *host, const char *s)
{
    size_t n = strlen(s != NULL ? s : "");
    char *p = host->alloc(n + 1);

    if (p != NULL) {
        memcpy(p, s != NULL ? s : "", n);
        p[n] = '\0';
    }
    return p;
}

static bool parse_bool(const char *v)
{
    return v != NULL && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 ||
                         strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0);
}

/* "30000", "30000ms", "30s", "1m" -> milliseconds; -1 when malformed. */
static long parse_ms(const char *v)
{
    char *end = NULL;
    long n;

    if (v == NULL || v[0] == '\0') {
        return -1;
    }
    n = strtol(v, &end, 10);
    if (end == v || n < 0) {
        return -1;
    }
    if (*end == '\0' || strcmp(end, "ms") == 0) {
        return n;
    }
    if (strcmp(end, "s") == 0) {
        return n * 1000;
    }
    if (strcmp(end, "m") == 0) {
        return n * 60000;
    }
    return -1;
}

static void smtp_destroy(void *vctx)
{
    struct smtp_ctx *ctx = vctx;
    const struct bb_host_api *host;

    if (ctx == NULL) {
        return;
    }
    host = ctx->host;
    host->free(ctx->url);
    host->free(ctx->from);
    host->free(ctx->from_name);
    host->free(ctx->username);
    if (ctx->password != NULL) {
        memset(ctx->password, 0, strlen(ctx->password));
    }
    host->free(ctx->password);
    host->free(ctx->unsubscribe_base);
    if (ctx->unsubscribe_key != NULL) {
        memset(ctx->unsubscribe_key, 0, strlen(ctx->unsubscribe_key));
    }
    host->free(ctx->unsubscribe_key);
    host->free(ctx->ca_file);
    host->free(ctx);
}

static const char *cfg_str(const struct bb_channel_config *cfg, const char *name)
{
    const char *v = cfg->value(cfg, name);

    return v != NULL ? v : "";
}

static int smtp_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                     void **out, char *err, size_t errlen)
{
    struct smtp_ctx *ctx;
    const char *url = cfg_str(cfg, "url");
    const char *from = cfg_str(cfg, "from");

    if (!BB_HAS_FIELD(host, struct bb_host_api, curl) || host->curl == NULL) {
        snprintf(err, errlen, "host offers no curl helper");
        return -1;
    }
    if (strncmp(url, "smtp://", 7) != 0 && strncmp(url, "smtps://", 8) != 0) {
        snprintf(err, errlen, "url must start with smtp:// or smtps://");
        return -1;
    }
    if (strchr(from, '@') == NULL || strpbrk(from, "<>\r\n \",") != NULL) {
        snprintf(err, errlen, "from is not a plain address");
        return -1;
    }
    ctx = host->alloc(sizeof(*ctx));
    if (ctx == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(ctx, 0, sizeof(*ctx));
    ctx->host = host;
    ctx->url = host_strdup(host, url);
    ctx->from = host_strdup(host, from);
    ctx->from_name = host_strdup(host, cfg_str(cfg, "from_name"));
    ctx->username = host_strdup(host, cfg_str(cfg, "username"));
    ctx->password = host_strdup(host, cfg_str(cfg, "password_file"));
    ctx->unsubscribe_base = host_strdup(host, cfg_str(cfg, "unsubscribe_base"));
    ctx->unsubscribe_key = host_strdup(host, cfg_str(cfg, "unsubscribe_key_file"));
    ctx->starttls = parse_bool(cfg->value(cfg, "starttls"));
    ctx->ca_file = host_strdup(host, cfg_str(cfg, "ca_file"));
    ctx->timeout_ms = parse_ms(cfg->value(cfg, "timeout"));
    if (ctx->url == NULL || ctx->from == NULL || ctx->from_name == NULL || ctx->username == NULL ||
        ctx->password == NULL || ctx->unsubscribe_base == NULL || ctx->unsubscribe_key == NULL ||
        ctx->ca_file == NULL) {
        snprintf(err, errlen, "out of memory");
        goto err_ctx;
    }
    if (ctx->timeout_ms <= 0) {
        snprintf(err, errlen, "timeout must be a positive duration");
        goto err_ctx;
    }
    /* A password never crosses the network in clear text: AUTH needs TLS,
     * except to a server on this machine. */
    if (ctx->username[0] != '\0' && !ctx->starttls && strncmp(url, "smtps://", 8) != 0 &&
        strncmp(url, "smtp://127.", 11) != 0 && strncmp(url, "smtp://localhost", 16) != 0 &&
        strncmp(url, "smtp://[::1]", 12) != 0) {
        snprintf(err, errlen, "username needs starttls yes or an smtps:// url (the password "
                              "would go in clear text)");
        goto err_ctx;
    }
    if (ctx->from_name[0] != '\0' && strpbrk(ctx->from_name, "\r\n") != NULL) {
        snprintf(err, errlen, "from_name must be one line");
        goto err_ctx;
    }
    if (ctx->unsubscribe_base[0] != '\0') {
        if (strncmp(ctx->unsubscribe_base, "https://", 8) != 0 &&
            strncmp(ctx->unsubscribe_base, "http://", 7) != 0) {
            snprintf(err, errlen, "unsubscribe_base must be an http(s) URL");
            goto err_ctx;
        }
        if (strpbrk(ctx->unsubscribe_base, " <>\"\r\n") != NULL ||
            strlen(ctx->unsubscribe_base) > 800) {
            snprintf(err, errlen, "unsubscribe_base is not a plain URL");
            goto err_ctx;
        }
        if (strlen(ctx->unsubscribe_key) < 16) {
            snprintf(err, errlen, "unsubscribe_base needs unsubscribe_key_file (16+ bytes)");
            goto err_ctx;
        }
    }
    *out = ctx;
    return 0;

err_ctx:
    smtp_destroy(ctx);
    return -1;
}

static int smtp_format(void *vctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct smtp_ctx *ctx = vctx;

    return smtp_render(ctx, d, (int64_t)time(NULL), out, outlen) == 0 ? 0 : -1;
}

static size_t read_cb(char *buf, size_t size, size_t nitems, void *arg)
{
    struct smtp_send *s = arg;
    size_t room = size * nitems;
    size_t n = s->len - s->off < room ? s->len - s->off : room;

    memcpy(buf, s->msg + s->off, n);
    s->off += n;
    return n;
}

static void send_free(struct smtp_send *s)
{
    const struct bb_host_api *host = s->ctx->host;

    if (s->easy != NULL) {
        curl_easy_cleanup(s->easy);
    }
    curl_slist_free_all(s->rcpt);
    if (s->msg != NULL) {
        host->free(s->msg);
    }
    host->free(s);
}

/* What the host's multi handle reports for one message. */
static void done_cb(void *arg, void *easy, int curlcode)
{
    struct smtp_send *s = arg;
    long code = 0;
    int status;
    char reason[48];

    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code);
    if (curlcode == CURLE_OK) {
        status = BB_SEND_OK;
        snprintf(reason, sizeof(reason), "ok");
    } else if (code >= 400 && code < 500) {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "smtp_%ld", code);
    } else if (code >= 500 && code < 600) {
        /* libcurl words a refused recipient "RCPT failed: <code>" */
        bool rcpt = strncmp(s->errbuf, "RCPT failed", 11) == 0;
        /* The server refused our credentials or our connection's security:
         * the operator's to fix, the message is fine. */
        if (code == 530 || code == 534 || code == 535 || code == 538 ||
            curlcode == CURLE_LOGIN_DENIED) {
            status = BB_SEND_RETRY;
            s->ctx->host->log(s->ctx->host->host, BB_PLUGIN_ERROR, "smtp auth refused", "code=%ld",
                              code);
        } else if (rcpt && (code == 550 || code == 551 || code == 553)) {
            status = BB_SEND_GONE;
        } else {
            status = BB_SEND_PERMANENT;
        }
        snprintf(reason, sizeof(reason), "smtp_%ld", code);
    } else {
        status = BB_SEND_RETRY;
        snprintf(reason, sizeof(reason), "curl_%d", curlcode);
    }
    if (status != BB_SEND_OK) {
        s->ctx->host->log(s->ctx->host->host, BB_PLUGIN_DEBUG, "smtp send failed",
                          "reason=%s curl=%d", reason, curlcode);
    }
    s->done(s->token, status, 0, reason);
    send_free(s);
}

static int smtp_send(void *vctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct smtp_ctx *ctx = vctx;
    const struct bb_host_api *host = ctx->host;
    struct smtp_send *s;
    char addr[300];
    int rc;

    s = host->alloc(sizeof(*s));
    if (s == NULL) {
        return -1;
    }
    memset(s, 0, sizeof(*s));
    s->ctx = ctx;
    s->done = done;
    s->token = token;
    rc = smtp_render(ctx, d, (int64_t)time(NULL), &s->msg, &s->len);
    if (rc == -1) {
        /* no usable address: this delivery can never become an e-mail */
        host->free(s);
        done(token, BB_SEND_PERMANENT, 0, "bad_address");
        return 0;
    }
    if (rc != 0) {
        goto err_send;
    }
    s->easy = curl_easy_init();
    if (s->easy == NULL) {
        goto err_send;
    }
    snprintf(addr, sizeof(addr), "<%s>", d->contact->email);
    s->rcpt = curl_slist_append(NULL, addr);
    if (s->rcpt == NULL) {
        goto err_send;
    }
    snprintf(addr, sizeof(addr), "<%s>", ctx->from);
    curl_easy_setopt(s->easy, CURLOPT_URL, ctx->url);
    curl_easy_setopt(s->easy, CURLOPT_MAIL_FROM, addr);
    curl_easy_setopt(s->easy, CURLOPT_MAIL_RCPT, s->rcpt);
    curl_easy_setopt(s->easy, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(s->easy, CURLOPT_READFUNCTION, read_cb);
    curl_easy_setopt(s->easy, CURLOPT_READDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)s->len);
    curl_easy_setopt(s->easy, CURLOPT_ERRORBUFFER, s->errbuf);
    curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, ctx->timeout_ms);
    curl_easy_setopt(s->easy, CURLOPT_CONNECTTIMEOUT_MS,
                     ctx->timeout_ms < 10000 ? ctx->timeout_ms : 10000L);
    if (ctx->starttls) {
        curl_easy_setopt(s->easy, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    }
    if (ctx->ca_file[0] != '\0') {
        curl_easy_setopt(s->easy, CURLOPT_CAINFO, ctx->ca_file);
    }
    if (ctx->username[0] != '\0') {
        curl_easy_setopt(s->easy, CURLOPT_USERNAME, ctx->username);
        curl_easy_setopt(s->easy, CURLOPT_PASSWORD, ctx->password);
    }
    if (host->curl(host->host, s->easy, done_cb, s) != 0) {
        goto err_send;
    }
    return 0;

err_send:
    send_free(s);
    return -1;
}

static const struct bb_channel smtp_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "smtp",
    .description = "e-mail over SMTP (libcurl), single and digest",
    .caps = BB_CAP_BATCH | BB_CAP_DIGEST,
    .options = smtp_options,
    .init = smtp_init,
    .send = smtp_send,
    .format = smtp_format,
    .destroy = smtp_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    if (host_abi != BB_CHANNEL_ABI_VERSION) {
        return NULL;
    }
    return &smtp_channel;
}
