/* The smtp channel plug-in's shared internals: its context, the message
 * renderer (smtp_format.c) and HMAC-SHA-256 (smtp_hmac.c). Everything here
 * runs on the worker host's event-loop thread. Not installed; nothing
 * outside workers/plugins/smtp/ includes it. */
#ifndef BB_SMTP_INTERNAL_H
#define BB_SMTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <buurtbus/channel.h>

#define SMTP_HMAC_LEN 32

/* One configured instance ("channel.email"). Strings come from host->alloc
 * and are owned by the context. Single-threaded: only the loop thread. */
struct smtp_ctx {
    const struct bb_host_api *host;
    char *url;       /* smtp://host:port or smtps://host:port */
    char *from;      /* envelope and header sender address */
    char *from_name; /* display name, may be "" */
    char *username;  /* "" when the server needs no AUTH */
    char *password;
    char *unsubscribe_base; /* "" when not configured */
    char *unsubscribe_key;  /* HMAC key for the opaque unsubscribe token, "" when unset */
    char *ca_file;   /* PEM CA bundle for the server certificate, "" = system CAs */
    bool starttls;
    long timeout_ms;
};

/* Renders d as a complete RFC 5322 message with CRLF line endings into
 * memory from ctx->host->alloc (caller frees with host->free). now: the
 * Date header's time (seconds since the epoch). Returns 0, -1 on a
 * delivery that cannot become an e-mail (no or bad address), -2 when out
 * of memory. */
int smtp_render(const struct smtp_ctx *ctx, const struct bb_delivery *d, int64_t now, char **out,
                size_t *outlen);

/* HMAC-SHA-256 (RFC 2104, FIPS 180-4). */
void smtp_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                      uint8_t out[SMTP_HMAC_LEN]);

#endif
