/* Unit tests of the webpush plug-in's message encryption
 * (workers/plugins/webpush/ece.c, compiled into this test): RFC 8291
 * Appendix A's example byte for byte, a fresh-key message opened again
 * with the subscription's private key, and the size limits.
 * Single-threaded. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ece.h"

/* RFC 8291 Appendix A (published test data), base64url turned into hex. */
#define RFC_PLAINTEXT "When I grow up, I want to be a watermelon"
#define RFC_AS_PUBLIC                                                                              \
    "04fe33f4ab0dea71914db55823f73b54948f41306d920732dbb9a59a53286482200e597a7b7bc260ba1c227998"   \
    "580992e93973002f3012a28ae8f06bbb78e5ec0f"
#define RFC_AS_PRIVATE "c9f58f89813e9f8e872e71f42aa64e1757c9254dcc62b72ddc010bb4043ea11c"
#define RFC_UA_PUBLIC                                                                              \
    "042571b2becdfde360551aaf1ed0f4cd366c11cebe555f89bcb7b186a53339173168ece2ebe018597bd30479b8"   \
    "6e3c8f8eced577ca59187e9246990db682008b0e"
#define RFC_UA_PRIVATE "ab5757a70dd4a53e553a6bbf71ffefea2874ec07a6b379e3c48f895a02dc33de"
#define RFC_SALT "0c6bfaadad67958803092d454676f397"
#define RFC_AUTH "05305932a1c7eabe13b6cec9fda48882"
#define RFC_BODY                                                                                   \
    "0c6bfaadad67958803092d454676f397000010004104fe33f4ab0dea71914db55823f73b54948f41306d920732"   \
    "dbb9a59a53286482200e597a7b7bc260ba1c227998580992e93973002f3012a28ae8f06bbb78e5ec0ff297de5b"   \
    "429bba7153d3a4ae0caa091fd425f3b4b5414add8ab37a19c1bbb05cf5cb5b2a2e0562d558635641ec52812c6c"   \
    "8ff42e95ccb86be7cd"

static size_t unhex(const char *hex, unsigned char *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
    return n;
}

static void hkdf(const unsigned char *salt, size_t saltlen, const unsigned char *ikm, size_t ikmlen,
                 const void *info, size_t infolen, unsigned char *out, size_t outlen)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *k = EVP_KDF_CTX_new(kdf);
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen),
        OSSL_PARAM_construct_end(),
    };
    assert_int_equal(EVP_KDF_derive(k, out, outlen, p), 1);
    EVP_KDF_CTX_free(k);
    EVP_KDF_free(kdf);
}

/* The receiving side (what the browser does): returns the plaintext length, writes it to pt. */
static size_t open_body(const unsigned char *body, size_t len, const unsigned char *ua_public,
                        const unsigned char *ua_private, const unsigned char *auth,
                        unsigned char *pt)
{
    assert_true(len > BB_ECE_HEADER_LEN + BB_ECE_TAG_LEN);
    assert_int_equal(body[20], 65);
    EVP_PKEY *ua = bb_ece_p256_key(ua_public, ua_private);
    EVP_PKEY *as = bb_ece_p256_key(body + 21, NULL);
    assert_non_null(ua);
    assert_non_null(as);
    unsigned char secret[32], ikm[32], cek[16], nonce[12];
    size_t slen = sizeof(secret);
    EVP_PKEY_CTX *d = EVP_PKEY_CTX_new_from_pkey(NULL, ua, NULL);
    assert_int_equal(EVP_PKEY_derive_init(d), 1);
    assert_int_equal(EVP_PKEY_derive_set_peer(d, as), 1);
    assert_int_equal(EVP_PKEY_derive(d, secret, &slen), 1);
    EVP_PKEY_CTX_free(d);
    unsigned char info[14 + 130];
    memcpy(info, "WebPush: info", 14);
    memcpy(info + 14, ua_public, 65);
    memcpy(info + 79, body + 21, 65);
    hkdf(auth, 16, secret, 32, info, sizeof(info), ikm, 32);
    hkdf(body, 16, ikm, 32, "Content-Encoding: aes128gcm", 28, cek, 16);
    hkdf(body, 16, ikm, 32, "Content-Encoding: nonce", 24, nonce, 12);
    size_t ctlen = len - BB_ECE_HEADER_LEN - BB_ECE_TAG_LEN;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, f = 0;
    assert_int_equal(EVP_DecryptInit_ex(c, EVP_aes_128_gcm(), NULL, cek, nonce), 1);
    assert_int_equal(EVP_DecryptUpdate(c, pt, &n, body + BB_ECE_HEADER_LEN, (int)ctlen), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16,
                                         (void *)(body + BB_ECE_HEADER_LEN + ctlen)),
                     1);
    assert_int_equal(EVP_DecryptFinal_ex(c, pt + n, &f), 1); /* the tag verifies */
    EVP_CIPHER_CTX_free(c);
    EVP_PKEY_free(ua);
    EVP_PKEY_free(as);
    /* The last record: plaintext, 0x02, zero padding. */
    size_t end = (size_t)(n + f);
    while (end > 0 && pt[end - 1] == 0) {
        end--;
    }
    assert_true(end > 0);
    assert_int_equal(pt[end - 1], 0x02);
    return end - 1;
}

static void rfc8291_appendix_a(void **state)
{
    unsigned char as_pub[65], as_priv[32], ua_pub[65], salt[16], auth[16], want[256], out[256];
    unhex(RFC_AS_PUBLIC, as_pub, sizeof(as_pub));
    unhex(RFC_AS_PRIVATE, as_priv, sizeof(as_priv));
    unhex(RFC_UA_PUBLIC, ua_pub, sizeof(ua_pub));
    unhex(RFC_SALT, salt, sizeof(salt));
    unhex(RFC_AUTH, auth, sizeof(auth));
    size_t wantlen = unhex(RFC_BODY, want, sizeof(want));
    EVP_PKEY *as = bb_ece_p256_key(as_pub, as_priv), *ua = bb_ece_p256_key(ua_pub, NULL);
    assert_non_null(as);
    assert_non_null(ua);
    size_t n = bb_ece_encrypt_with(as, salt, ua, auth, RFC_PLAINTEXT, strlen(RFC_PLAINTEXT), out,
                                   sizeof(out));
    EVP_PKEY_free(as);
    EVP_PKEY_free(ua);
    assert_int_equal(n, wantlen);
    assert_int_equal(n, BB_ECE_BODY_LEN(strlen(RFC_PLAINTEXT)));
    assert_memory_equal(out, want, wantlen);
}

static void fresh_key_round_trip(void **state)
{
    unsigned char ua_pub[65], ua_priv[32], auth[16], a[512], b[512], pt[512];
    unhex(RFC_UA_PUBLIC, ua_pub, sizeof(ua_pub));
    unhex(RFC_UA_PRIVATE, ua_priv, sizeof(ua_priv));
    unhex(RFC_AUTH, auth, sizeof(auth));
    const char *msg = "{\"title\":\"Inbraak\",\"report_id\":\"n1\"}";
    EVP_PKEY *ua = bb_ece_p256_key(ua_pub, NULL);
    assert_non_null(ua);
    size_t na = bb_ece_encrypt(ua, auth, msg, strlen(msg), a, sizeof(a));
    size_t nb = bb_ece_encrypt(ua, auth, msg, strlen(msg), b, sizeof(b));
    EVP_PKEY_free(ua);
    assert_int_equal(na, BB_ECE_BODY_LEN(strlen(msg)));
    assert_int_equal(nb, na);
    /* rs = 4096, idlen = 65, the key id an uncompressed point. */
    assert_memory_equal(a + 16, "\x00\x00\x10\x00\x41\x04", 6);
    /* A fresh salt and key pair every time. */
    assert_memory_not_equal(a, b, 16);
    assert_memory_not_equal(a + 21, b + 21, 65);
    size_t n = open_body(a, na, ua_pub, ua_priv, auth, pt);
    assert_int_equal(n, strlen(msg));
    assert_memory_equal(pt, msg, n);
}

static void limits(void **state)
{
    unsigned char ua_pub[65], auth[16], pt[BB_ECE_MAX_PLAINTEXT + 1];
    static unsigned char out[BB_ECE_RS + 64];
    unhex(RFC_UA_PUBLIC, ua_pub, sizeof(ua_pub));
    unhex(RFC_AUTH, auth, sizeof(auth));
    memset(pt, 'x', sizeof(pt));
    EVP_PKEY *ua = bb_ece_p256_key(ua_pub, NULL);
    assert_non_null(ua);
    assert_int_equal(BB_ECE_MAX_PLAINTEXT, 3993);
    /* 3,993 bytes fill exactly one 4,096-byte record. */
    assert_int_equal(bb_ece_encrypt(ua, auth, pt, BB_ECE_MAX_PLAINTEXT, out, sizeof(out)), 4096);
    assert_int_equal(bb_ece_encrypt(ua, auth, pt, BB_ECE_MAX_PLAINTEXT + 1, out, sizeof(out)), 0);
    assert_int_equal(bb_ece_encrypt(ua, auth, pt, 10, out, BB_ECE_BODY_LEN(10) - 1), 0);
    EVP_PKEY_free(ua);
    /* Not P-256. */
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    assert_non_null(p384);
    assert_int_equal(bb_ece_encrypt(p384, auth, pt, 10, out, sizeof(out)), 0);
    EVP_PKEY_free(p384);
    /* Not a point on the curve, not uncompressed, the point at infinity. */
    unsigned char bad[65];
    memcpy(bad, ua_pub, 65);
    bad[64] ^= 1;
    assert_null(bb_ece_p256_key(bad, NULL));
    memcpy(bad, ua_pub, 65);
    bad[0] = 0x03;
    assert_null(bb_ece_p256_key(bad, NULL));
    memset(bad, 0, sizeof(bad));
    assert_null(bb_ece_p256_key(bad, NULL));
    bad[0] = 0x04;
    assert_null(bb_ece_p256_key(bad, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc8291_appendix_a),
        cmocka_unit_test(fresh_key_round_trip),
        cmocka_unit_test(limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
