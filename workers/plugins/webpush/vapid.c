/* VAPID tokens (RFC 8292) for the webpush plug-in; see vapid.h.
 *
 * The cache is a handful of slots, one per push service origin (FCM,
 * Mozilla autopush, Apple, WNS: a deployment sees a few). When every slot
 * is taken, the token closest to its refresh time gives way, so a stream
 * of subscriptions pointing at odd origins cannot grow memory.
 *
 * Threads: the host's event-loop thread (see vapid.h). */
#include <stdio.h>
#include <string.h>

#include "ece.h"
#include "jwt.h"
#include "vapid.h"

/* "vapid t=" + JWT + ", k=" + key: the JWT is < 1 KiB for any origin and
 * subject this plug-in accepts (both capped in length). */
#define AUTH_MAX 1536

struct vapid_slot {
    char origin[BB_VAPID_ORIGIN_MAX];
    char auth[AUTH_MAX];
    time_t refresh_at; /* 0: empty */
};

struct bb_vapid {
    const struct bb_host_api *host;
    EVP_PKEY *key;
    char subject[256];
    char public_key[96];
    struct vapid_slot slots[BB_VAPID_CACHE_SLOTS];
};

struct bb_vapid *bb_vapid_new(const struct bb_host_api *host, EVP_PKEY *key, const char *subject)
{
    unsigned char point[BB_ECE_POINT_LEN];
    if (!key || bb_ece_p256_point(key, point) != 0 || strlen(subject) >= 256) {
        EVP_PKEY_free(key);
        return NULL;
    }
    struct bb_vapid *v = host->alloc(sizeof(*v));
    if (!v) {
        EVP_PKEY_free(key);
        return NULL;
    }
    memset(v, 0, sizeof(*v));
    v->host = host;
    v->key = key;
    snprintf(v->subject, sizeof(v->subject), "%s", subject);
    if (bb_b64url_encode(point, sizeof(point), v->public_key, sizeof(v->public_key)) == 0) {
        bb_vapid_free(v);
        return NULL;
    }
    return v;
}

void bb_vapid_free(struct bb_vapid *v)
{
    if (!v) {
        return;
    }
    EVP_PKEY_free(v->key);
    v->host->free(v);
}

const char *bb_vapid_public_key(const struct bb_vapid *v)
{
    return v->public_key;
}

static int sign(struct bb_vapid *v, struct vapid_slot *s, const char *origin, time_t now)
{
    char claims[BB_VAPID_ORIGIN_MAX + 384], jwt[AUTH_MAX - 128];
    long long exp = (long long)now + BB_VAPID_LIFETIME_S;
    int n = snprintf(claims, sizeof(claims), "{\"aud\":\"%s\",\"exp\":%lld,\"sub\":\"%s\"}", origin,
                     exp, v->subject);
    if (n < 0 || (size_t)n >= sizeof(claims) ||
        bb_jwt_sign(v->key, "ES256", "{\"typ\":\"JWT\",\"alg\":\"ES256\"}", claims, jwt,
                    sizeof(jwt)) == 0) {
        return -1;
    }
    n = snprintf(s->auth, sizeof(s->auth), "vapid t=%s, k=%s", jwt, v->public_key);
    if (n < 0 || (size_t)n >= sizeof(s->auth)) {
        return -1;
    }
    snprintf(s->origin, sizeof(s->origin), "%s", origin);
    s->refresh_at = (time_t)(exp - BB_VAPID_REFRESH_S);
    return 0;
}

const char *bb_vapid_authorization(struct bb_vapid *v, const char *origin, time_t now)
{
    if (strlen(origin) >= BB_VAPID_ORIGIN_MAX || strpbrk(origin, "\"\\")) {
        return NULL;
    }
    struct vapid_slot *victim = &v->slots[0];
    for (size_t i = 0; i < BB_VAPID_CACHE_SLOTS; i++) {
        struct vapid_slot *s = &v->slots[i];
        if (s->refresh_at != 0 && strcmp(s->origin, origin) == 0) {
            if (now < s->refresh_at) {
                return s->auth;
            }
            victim = s; /* due for a new token: replace it in place */
            break;
        }
        if (s->refresh_at < victim->refresh_at) {
            victim = s; /* an empty slot (0) or the one expiring first */
        }
    }
    if (sign(v, victim, origin, now) != 0) {
        victim->refresh_at = 0;
        return NULL;
    }
    return victim->auth;
}
