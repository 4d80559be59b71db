/* VAPID (RFC 8292): the application server identifies itself to a push
 * service with an ES256 JWT per push service origin and its public key:
 *   Authorization: vapid t=<JWT {aud: origin, exp, sub: subject}>, k=<public key>
 * One signed token is kept per origin and reused until an hour before it
 * expires. Internal to the webpush plug-in.
 *
 * Threads: the host's event-loop thread (one struct bb_vapid per plug-in
 * context, never shared). */
#ifndef BB_WEBPUSH_VAPID_H
#define BB_WEBPUSH_VAPID_H

#include <openssl/evp.h>
#include <time.h>

#include "buurtbus/channel.h"

#define BB_VAPID_LIFETIME_S (12 * 3600) /* exp - now; RFC 8292 §2 allows up to 24 h */
#define BB_VAPID_REFRESH_S 3600         /* a cached token is replaced this long before exp */
#define BB_VAPID_ORIGIN_MAX 256         /* longest origin ("https://host:port") accepted */
#define BB_VAPID_CACHE_SLOTS 16         /* origins cached; push services are few */

struct bb_vapid;

/* A signer for key (a P-256 private key; taken over, freed with the
 * signer, also on failure) and subject (a "mailto:" or "https:" contact,
 * copied). Memory from host->alloc. NULL if the key is not P-256 or out of
 * memory. */
struct bb_vapid *bb_vapid_new(const struct bb_host_api *host, EVP_PKEY *key, const char *subject);

/* Frees v and its cache; bb_vapid_free(NULL) does nothing. */
void bb_vapid_free(struct bb_vapid *v);

/* The public key as base64url of its uncompressed point (87 characters):
 * the applicationServerKey browsers subscribe with. Owned by v. */
const char *bb_vapid_public_key(const struct bb_vapid *v);

/* The Authorization header value for a push service origin (scheme://host
 * [:port], at most BB_VAPID_ORIGIN_MAX - 1 characters, no '"' or '\\') at
 * time now. Owned by v, valid until the next call. NULL on error. */
const char *bb_vapid_authorization(struct bb_vapid *v, const char *origin, time_t now);

#endif
