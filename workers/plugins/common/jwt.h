/* base64url and compact JWS (JWT) signing for channel plug-ins that
 * authenticate with signed tokens: FCM's OAuth2 JWT-bearer grant (RS256),
 * APNs provider tokens and Web Push VAPID (ES256). Compiled into each
 * plug-in that needs it and linked with libcrypto (OpenSSL 3 EVP).
 *
 * Threads: no state of its own; call from any thread, each EVP_PKEY used
 * by one thread at a time. */
#ifndef BB_PLUGIN_JWT_H
#define BB_PLUGIN_JWT_H

#include <openssl/evp.h>
#include <stddef.h>

/* base64url without padding (RFC 7515 §2). Returns the length written (a
 * NUL follows), 0 if cap is too small. */
size_t bb_b64url_encode(const void *in, size_t len, char *out, size_t cap);

/* Decodes base64url, with or without padding. Returns 0, -1 on bad input
 * or small cap. */
int bb_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *outlen);

/* A private key from PEM text (PKCS#8 or traditional, RSA or EC). NULL on
 * error. The caller owns the key (EVP_PKEY_free). */
EVP_PKEY *bb_pem_private_key(const char *pem, size_t len);

/* Compact JWS of header_json.claims_json signed with key: alg "RS256" (RSA,
 * PKCS#1 v1.5 SHA-256) or "ES256" (P-256, the raw 64-byte r||s of RFC 7518
 * §3.4, not DER). The JSON texts are used as given (the caller writes the
 * "alg" into header_json). Returns the length written (NUL-terminated), 0
 * on error. */
size_t bb_jwt_sign(EVP_PKEY *key, const char *alg, const char *header_json, const char *claims_json,
                   char *out, size_t cap);

#endif
