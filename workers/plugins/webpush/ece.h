/* Web Push message encryption (RFC 8291) in the aes128gcm content coding
 * (RFC 8188), one record: what the webpush plug-in sends as a push
 * message's body, readable only by the subscribed browser. Internal to the
 * plug-in; the unit test (tests/plugins/webpush/test_webpush_ece.c)
 * compiles this file too and checks it against RFC 8291 Appendix A.
 *
 * Threads: no state of its own; call from any thread, each EVP_PKEY used
 * by one thread at a time. */
#ifndef BB_WEBPUSH_ECE_H
#define BB_WEBPUSH_ECE_H

#include <openssl/evp.h>
#include <stddef.h>

#define BB_ECE_POINT_LEN 65 /* an uncompressed P-256 point: 0x04 || x || y */
#define BB_ECE_AUTH_LEN 16  /* the subscription's auth secret */
#define BB_ECE_SALT_LEN 16
#define BB_ECE_TAG_LEN 16
#define BB_ECE_RS 4096 /* the record size written into the header */
/* salt(16) || rs(4) || idlen(1) || keyid = the sender's public point(65) */
#define BB_ECE_HEADER_LEN (BB_ECE_SALT_LEN + 4 + 1 + BB_ECE_POINT_LEN)
/* The most plaintext that fits one 4,096-byte push message body (RFC 8291
 * §4): 4096 - 86 header - 1 padding delimiter - 16 tag = 3993. */
#define BB_ECE_MAX_PLAINTEXT (BB_ECE_RS - BB_ECE_HEADER_LEN - 1 - BB_ECE_TAG_LEN)
/* The body for len bytes of plaintext. */
#define BB_ECE_BODY_LEN(len) (BB_ECE_HEADER_LEN + (len) + 1 + BB_ECE_TAG_LEN)

/* A P-256 key from its uncompressed point (checked to be on the curve:
 * a subscription's p256dh, a message's key id), and with priv (32 bytes, big endian) the key pair;
 * NULL on bad input. The caller owns the key (EVP_PKEY_free). */
EVP_PKEY *bb_ece_p256_key(const unsigned char pub[BB_ECE_POINT_LEN], const unsigned char *priv);

/* Writes key's public point, uncompressed. Returns 0, -1 if key is not a
 * P-256 key. */
int bb_ece_p256_point(EVP_PKEY *key, unsigned char out[BB_ECE_POINT_LEN]);

/* Encrypts len bytes of plaintext for the subscription whose public key
 * is ua_key (from bb_ece_p256_key) and auth secret auth, with a fresh
 * ephemeral key pair and a random salt. Writes the whole body (header,
 * ciphertext, tag) to out. Returns its length (BB_ECE_BODY_LEN(len)), 0 on
 * error: len over BB_ECE_MAX_PLAINTEXT, cap too small, not a P-256 key, or
 * a libcrypto failure. */
size_t bb_ece_encrypt(EVP_PKEY *ua_key, const unsigned char auth[BB_ECE_AUTH_LEN],
                      const void *plaintext, size_t len, unsigned char *out, size_t cap);

/* The same with the application server's key pair (as_key) and the salt
 * given: deterministic, for test vectors. Never reuse either for real
 * messages. */
size_t bb_ece_encrypt_with(EVP_PKEY *as_key, const unsigned char salt[BB_ECE_SALT_LEN],
                           EVP_PKEY *ua_key, const unsigned char auth[BB_ECE_AUTH_LEN],
                           const void *plaintext, size_t len, unsigned char *out, size_t cap);

#endif
