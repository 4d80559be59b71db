/* Unit tests for workers/plugins/common/jwt.c: base64url round trips and
 * edge cases, and RS256/ES256 compact JWS checked with EVP_DigestVerify
 * (ES256's raw r||s turned back into DER first).
 *
 * Threads: the test's main thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "jwt.h"

static void test_b64url_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},          {"foob", "Zm9vYg"},
        {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}, {"\xfb\xff\xfe", "-__-"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[32];
        size_t n = bb_b64url_encode(cases[i].in, strlen(cases[i].in), out, sizeof(out));
        assert_int_equal(n, strlen(cases[i].out));
        assert_string_equal(out, cases[i].out);
        unsigned char back[32];
        size_t blen = 0;
        assert_int_equal(bb_b64url_decode(out, n, back, sizeof(back), &blen), 0);
        assert_int_equal(blen, strlen(cases[i].in));
        assert_memory_equal(back, cases[i].in, blen);
    }
}

static void test_b64url_round_trip(void **state)
{
    (void)state;
    unsigned char in[300];
    for (size_t i = 0; i < sizeof(in); i++) {
        in[i] = (unsigned char)(i * 37 + 11);
    }
    for (size_t len = 0; len <= sizeof(in); len++) {
        char enc[420];
        size_t n = bb_b64url_encode(in, len, enc, sizeof(enc));
        assert_int_equal(n, (len * 4 + 2) / 3);
        assert_null(strpbrk(enc, "+/="));
        unsigned char out[300];
        size_t olen = 99999;
        assert_int_equal(bb_b64url_decode(enc, n, out, sizeof(out), &olen), 0);
        assert_int_equal(olen, len);
        assert_memory_equal(out, in, len);
    }
}

static void test_b64url_edges(void **state)
{
    (void)state;
    char small[4];
    /* "foo" needs 4 characters and the NUL. */
    assert_int_equal(bb_b64url_encode("foo", 3, small, sizeof(small)), 0);
    unsigned char out[16];
    size_t olen = 0;
    /* Padding accepted. */
    assert_int_equal(bb_b64url_decode("Zg==", 4, out, sizeof(out), &olen), 0);
    assert_int_equal(olen, 1);
    assert_int_equal(out[0], 'f');
    assert_int_equal(bb_b64url_decode("Zm8=", 4, out, sizeof(out), &olen), 0);
    assert_int_equal(olen, 2);
    /* Wrong alphabet, bad lengths, bad padding, non-zero tail bits. */
    assert_int_equal(bb_b64url_decode("Zm9+", 4, out, sizeof(out), &olen), -1);
    assert_int_equal(bb_b64url_decode("Zm9/", 4, out, sizeof(out), &olen), -1);
    assert_int_equal(bb_b64url_decode("Z", 1, out, sizeof(out), &olen), -1);
    assert_int_equal(bb_b64url_decode("Zg=", 3, out, sizeof(out), &olen), -1);
    assert_int_equal(bb_b64url_decode("Z===", 4, out, sizeof(out), &olen), -1);
    assert_int_equal(bb_b64url_decode("Zh", 2, out, sizeof(out), &olen), -1);
    /* Too small an output. */
    assert_int_equal(bb_b64url_decode("Zm9vYmFy", 8, out, 5, &olen), -1);
    assert_int_equal(bb_b64url_decode("Zm9vYmFy", 8, out, 6, &olen), 0);
    assert_int_equal(olen, 6);
}

static EVP_PKEY *generate(const char *alg)
{
    if (strcmp(alg, "RS256") == 0) {
        return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    }
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* PEM text of key as PKCS#8, through a memory BIO; caller frees. */
static char *to_pem(EVP_PKEY *key, int traditional)
{
    BIO *bio = BIO_new(BIO_s_mem());
    int ok = traditional ? PEM_write_bio_PrivateKey_traditional(bio, key, NULL, NULL, 0, NULL, NULL)
                         : PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL);
    assert_int_equal(ok, 1);
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);
    char *s = malloc((size_t)n + 1);
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    BIO_free(bio);
    return s;
}

static int verify(EVP_PKEY *key, const char *alg, const char *jws)
{
    const char *dot2 = strrchr(jws, '.');
    assert_non_null(dot2);
    unsigned char sig[512];
    size_t siglen = 0;
    assert_int_equal(bb_b64url_decode(dot2 + 1, strlen(dot2 + 1), sig, sizeof(sig), &siglen), 0);
    unsigned char der[128];
    const unsigned char *s = sig;
    size_t slen = siglen;
    if (strcmp(alg, "ES256") == 0) {
        assert_int_equal(siglen, 64);
        ECDSA_SIG *es = ECDSA_SIG_new();
        ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
        unsigned char *p = der;
        int n = i2d_ECDSA_SIG(es, &p);
        ECDSA_SIG_free(es);
        assert_true(n > 0);
        s = der;
        slen = (size_t)n;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(md, s, slen, (const unsigned char *)jws, (size_t)(dot2 - jws)) == 1;
    EVP_MD_CTX_free(md);
    return ok;
}

static void sign_and_verify(const char *alg, int traditional)
{
    EVP_PKEY *gen = generate(alg);
    assert_non_null(gen);
    char *pem = to_pem(gen, traditional);
    EVP_PKEY *key = bb_pem_private_key(pem, strlen(pem));
    assert_non_null(key);
    char header[64];
    snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"kid\":\"K1\"}", alg);
    const char *claims = "{\"iss\":\"TEAM\",\"iat\":1700000000}";
    char jws[1024];
    size_t n = bb_jwt_sign(key, alg, header, claims, jws, sizeof(jws));
    assert_true(n > 0);
    assert_int_equal(n, strlen(jws));
    /* The first two parts decode back to the JSON given. */
    char *dot1 = strchr(jws, '.');
    char *dot2 = strrchr(jws, '.');
    assert_true(dot1 && dot2 > dot1);
    unsigned char part[256];
    size_t plen = 0;
    assert_int_equal(bb_b64url_decode(jws, (size_t)(dot1 - jws), part, sizeof(part), &plen), 0);
    assert_int_equal(plen, strlen(header));
    assert_memory_equal(part, header, plen);
    assert_int_equal(
        bb_b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), part, sizeof(part), &plen), 0);
    assert_memory_equal(part, claims, plen);
    /* The signature verifies with the generated key; a changed claim fails. */
    assert_true(verify(gen, alg, jws));
    jws[dot1 - jws + 3] ^= 1;
    assert_false(verify(gen, alg, jws));
    /* Too small a buffer, wrong algorithm for the key. */
    assert_int_equal(bb_jwt_sign(key, alg, header, claims, jws, 60), 0);
    assert_int_equal(bb_jwt_sign(key, strcmp(alg, "ES256") == 0 ? "RS256" : "ES256", header, claims,
                                 jws, sizeof(jws)),
                     0);
    assert_int_equal(bb_jwt_sign(key, "HS256", header, claims, jws, sizeof(jws)), 0);
    EVP_PKEY_free(key);
    EVP_PKEY_free(gen);
    free(pem);
}

static void test_rs256(void **state)
{
    (void)state;
    sign_and_verify("RS256", 0);
    sign_and_verify("RS256", 1);
}

static void test_es256(void **state)
{
    (void)state;
    /* Several rounds so that r or s with leading zero bytes come up. */
    for (int i = 0; i < 8; i++) {
        sign_and_verify("ES256", i & 1);
    }
}

static void test_pem_errors(void **state)
{
    (void)state;
    assert_null(bb_pem_private_key("", 0));
    const char *junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert_null(bb_pem_private_key(junk, strlen(junk)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors), cmocka_unit_test(test_b64url_round_trip),
        cmocka_unit_test(test_b64url_edges),   cmocka_unit_test(test_rs256),
        cmocka_unit_test(test_es256),          cmocka_unit_test(test_pem_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
