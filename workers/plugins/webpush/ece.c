/* Web Push message encryption (RFC 8291, aes128gcm of RFC 8188), one
 * record per message; see ece.h.
 *
 * The key schedule, with ECDH between the application server's (here:
 * ephemeral) key and the subscription's key:
 *   IKM   = HKDF(salt = auth, ikm = ecdh, info = "WebPush: info\0" || ua_public || as_public, 32)
 *   CEK   = HKDF(salt, IKM, "Content-Encoding: aes128gcm\0", 16)
 *   NONCE = HKDF(salt, IKM, "Content-Encoding: nonce\0", 12)
 * and the record is AES-128-GCM(CEK, NONCE) of plaintext || 0x02 (the last
 * record's padding delimiter, no padding). The one record's sequence
 * number is 0, so the nonce is used as derived.
 *
 * Threads: no state of its own (see ece.h). */
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <string.h>

#include "ece.h"

#define ECDH_LEN 32
#define CEK_LEN 16
#define NONCE_LEN 12

EVP_PKEY *bb_ece_p256_key(const unsigned char pub[BB_ECE_POINT_LEN], const unsigned char *priv)
{
    if (pub[0] != 0x04) {
        return NULL; /* only the uncompressed form is a valid p256dh / keyid */
    }
    EVP_PKEY *key = NULL;
    BIGNUM *d = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bld) {
        return NULL;
    }
    if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, BB_ECE_POINT_LEN)) {
        goto free_bld;
    }
    if (priv) {
        d = BN_bin2bn(priv, 32, NULL);
        if (!d || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d)) {
            goto free_bn;
        }
    }
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &key, priv ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        key = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
free_bn:
    BN_clear_free(d);
free_bld:
    OSSL_PARAM_BLD_free(bld);
    return key;
}

int bb_ece_p256_point(EVP_PKEY *key, unsigned char out[BB_ECE_POINT_LEN])
{
    char group[32];
    size_t len = 0;
    if (!EVP_PKEY_is_a(key, "EC") ||
        !EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                        NULL) ||
        strcmp(group, "prime256v1") != 0) {
        return -1;
    }
    /* The encoded public key of an EC key is the uncompressed point unless
     * the key says otherwise; check rather than trust. */
    if (!EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out,
                                         BB_ECE_POINT_LEN, &len) ||
        len != BB_ECE_POINT_LEN || out[0] != 0x04) {
        return -1;
    }
    return 0;
}

/* HKDF-SHA256, extract then expand (RFC 5869). */
static int hkdf(EVP_KDF *kdf, const unsigned char *salt, size_t saltlen, const unsigned char *ikm,
                size_t ikmlen, const void *info, size_t infolen, unsigned char *out, size_t outlen)
{
    EVP_KDF_CTX *kctx = EVP_KDF_CTX_new(kdf);
    if (!kctx) {
        return -1;
    }
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen),
        OSSL_PARAM_construct_end(),
    };
    int rc = EVP_KDF_derive(kctx, out, outlen, p) > 0 ? 0 : -1;
    EVP_KDF_CTX_free(kctx);
    return rc;
}

static int ecdh(EVP_PKEY *as_key, EVP_PKEY *ua_key, unsigned char out[ECDH_LEN])
{
    size_t len = ECDH_LEN;
    int rc = -1;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, as_key, NULL);
    /* No second validation of the peer (it would cost two thirds of the
     * derivation): bb_ece_p256_key already refused points off the curve,
     * and P-256 has cofactor 1, so every point on it is in the group. */
    if (ctx && EVP_PKEY_derive_init(ctx) > 0 && EVP_PKEY_derive_set_peer_ex(ctx, ua_key, 0) > 0 &&
        EVP_PKEY_derive(ctx, out, &len) > 0 && len == ECDH_LEN) {
        rc = 0;
    }
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

/* CEK and NONCE for this message (the key schedule above). */
static int derive(EVP_PKEY *as_key, const unsigned char as_public[BB_ECE_POINT_LEN],
                  const unsigned char salt[BB_ECE_SALT_LEN], EVP_PKEY *ua_key,
                  const unsigned char ua_public[BB_ECE_POINT_LEN],
                  const unsigned char auth[BB_ECE_AUTH_LEN], unsigned char cek[CEK_LEN],
                  unsigned char nonce[NONCE_LEN])
{
    static const char info_prefix[] = "WebPush: info"; /* and its NUL */
    static const char cek_info[] = "Content-Encoding: aes128gcm";
    static const char nonce_info[] = "Content-Encoding: nonce";
    unsigned char secret[ECDH_LEN], ikm[32];
    unsigned char info[sizeof(info_prefix) + 2 * BB_ECE_POINT_LEN];
    int rc = -1;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (!kdf || ecdh(as_key, ua_key, secret) != 0) {
        goto free_kdf;
    }
    memcpy(info, info_prefix, sizeof(info_prefix));
    memcpy(info + sizeof(info_prefix), ua_public, BB_ECE_POINT_LEN);
    memcpy(info + sizeof(info_prefix) + BB_ECE_POINT_LEN, as_public, BB_ECE_POINT_LEN);
    if (hkdf(kdf, auth, BB_ECE_AUTH_LEN, secret, sizeof(secret), info, sizeof(info), ikm,
             sizeof(ikm)) != 0 ||
        hkdf(kdf, salt, BB_ECE_SALT_LEN, ikm, sizeof(ikm), cek_info, sizeof(cek_info), cek,
             CEK_LEN) != 0 ||
        hkdf(kdf, salt, BB_ECE_SALT_LEN, ikm, sizeof(ikm), nonce_info, sizeof(nonce_info), nonce,
             NONCE_LEN) != 0) {
        goto cleanse;
    }
    rc = 0;
cleanse:
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(ikm, sizeof(ikm));
free_kdf:
    EVP_KDF_free(kdf);
    return rc;
}

/* AES-128-GCM of plaintext || 0x02 into out, then the tag. */
static int seal(const unsigned char cek[CEK_LEN], const unsigned char nonce[NONCE_LEN],
                const void *plaintext, size_t len, unsigned char *out)
{
    static const unsigned char delimiter = 0x02;
    int n = 0, m = 0, f = 0, rc = -1;
    EVP_CIPHER_CTX *cc = EVP_CIPHER_CTX_new();
    if (!cc) {
        return -1;
    }
    /* GCM's default IV length is the 12 bytes of NONCE. */
    if (EVP_EncryptInit_ex(cc, EVP_aes_128_gcm(), NULL, cek, nonce) <= 0 ||
        EVP_EncryptUpdate(cc, out, &n, plaintext, (int)len) <= 0 ||
        EVP_EncryptUpdate(cc, out + n, &m, &delimiter, 1) <= 0 ||
        EVP_EncryptFinal_ex(cc, out + n + m, &f) <= 0 || (size_t)(n + m + f) != len + 1) {
        goto free_ctx;
    }
    if (EVP_CIPHER_CTX_ctrl(cc, EVP_CTRL_GCM_GET_TAG, BB_ECE_TAG_LEN, out + len + 1) <= 0) {
        goto free_ctx;
    }
    rc = 0;
free_ctx:
    EVP_CIPHER_CTX_free(cc);
    return rc;
}

size_t bb_ece_encrypt_with(EVP_PKEY *as_key, const unsigned char salt[BB_ECE_SALT_LEN],
                           EVP_PKEY *ua_key, const unsigned char auth[BB_ECE_AUTH_LEN],
                           const void *plaintext, size_t len, unsigned char *out, size_t cap)
{
    unsigned char as_public[BB_ECE_POINT_LEN], ua_public[BB_ECE_POINT_LEN];
    unsigned char cek[CEK_LEN], nonce[NONCE_LEN];
    if (len > BB_ECE_MAX_PLAINTEXT || cap < BB_ECE_BODY_LEN(len) ||
        bb_ece_p256_point(as_key, as_public) != 0 || bb_ece_p256_point(ua_key, ua_public) != 0 ||
        derive(as_key, as_public, salt, ua_key, ua_public, auth, cek, nonce) != 0) {
        return 0;
    }
    /* The header: salt, rs (big endian), idlen, keyid = as_public. */
    unsigned char *p = out;
    memcpy(p, salt, BB_ECE_SALT_LEN);
    p += BB_ECE_SALT_LEN;
    *p++ = (unsigned char)(BB_ECE_RS >> 24);
    *p++ = (unsigned char)(BB_ECE_RS >> 16);
    *p++ = (unsigned char)(BB_ECE_RS >> 8);
    *p++ = (unsigned char)BB_ECE_RS;
    *p++ = BB_ECE_POINT_LEN;
    memcpy(p, as_public, BB_ECE_POINT_LEN);
    p += BB_ECE_POINT_LEN;
    int rc = seal(cek, nonce, plaintext, len, p);
    OPENSSL_cleanse(cek, sizeof(cek));
    OPENSSL_cleanse(nonce, sizeof(nonce));
    return rc == 0 ? BB_ECE_BODY_LEN(len) : 0;
}

size_t bb_ece_encrypt(EVP_PKEY *ua_key, const unsigned char auth[BB_ECE_AUTH_LEN],
                      const void *plaintext, size_t len, unsigned char *out, size_t cap)
{
    unsigned char salt[BB_ECE_SALT_LEN];
    if (RAND_bytes(salt, sizeof(salt)) != 1) {
        return 0;
    }
    /* A fresh key pair per message: its ECDH secret is never reused. */
    EVP_PKEY *as_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!as_key) {
        return 0;
    }
    size_t n = bb_ece_encrypt_with(as_key, salt, ua_key, auth, plaintext, len, out, cap);
    EVP_PKEY_free(as_key);
    return n;
}
