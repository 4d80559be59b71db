/* base64url and compact JWS signing (jwt.h).
 *
 * Threads: none of its own; every function works on the caller's buffers. */
#include "jwt.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/pem.h>
#include <string.h>

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t bb_b64url_encode(const void *in, size_t len, char *out, size_t cap)
{
    const unsigned char *p = in;
    size_t need = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
    if (!out || cap < need + 1) {
        return 0;
    }
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)p[i] << 16;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18 & 63];
        out[o++] = b64url_alphabet[v >> 12 & 63];
        out[o++] = b64url_alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

static int b64url_value(unsigned char ch)
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
    if (ch == '-') {
        return 62;
    }
    if (ch == '_') {
        return 63;
    }
    return -1;
}

int bb_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *outlen)
{
    /* Padding is optional, but only at the end and only as much as the
     * length calls for. */
    size_t pad = 0;
    while (len > 0 && in[len - 1] == '=' && pad < 2) {
        len--;
        pad++;
    }
    if (len % 4 == 1 || (pad && (len + pad) % 4 != 0)) {
        return -1;
    }
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (need > cap) {
        return -1;
    }
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0) {
            return -1;
        }
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits & 0xff);
        }
    }
    /* Leftover bits must be zero (canonical encoding). */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        return -1;
    }
    if (outlen) {
        *outlen = o;
    }
    return 0;
}

EVP_PKEY *bb_pem_private_key(const char *pem, size_t len)
{
    if (!pem || len == 0 || len > 1 << 20) {
        return NULL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) {
        return NULL;
    }
    /* PEM_read_bio_PrivateKey reads PKCS#8 ("PRIVATE KEY") and the
     * traditional "RSA PRIVATE KEY" / "EC PRIVATE KEY" forms. */
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return key;
}

/* DER ECDSA-Sig-Value to the fixed-width r||s of JWS (32 bytes each). */
static int ecdsa_der_to_raw(const unsigned char *der, size_t len, unsigned char raw[64])
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    if (!sig) {
        return -1;
    }
    const BIGNUM *r = NULL;
    const BIGNUM *s = NULL;
    ECDSA_SIG_get0(sig, &r, &s);
    int rc = BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32 ? 0 : -1;
    ECDSA_SIG_free(sig);
    return rc;
}

size_t bb_jwt_sign(EVP_PKEY *key, const char *alg, const char *header_json, const char *claims_json,
                   char *out, size_t cap)
{
    if (!key || !alg || !header_json || !claims_json || !out) {
        return 0;
    }
    int es256 = strcmp(alg, "ES256") == 0;
    if (es256) {
        if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC || EVP_PKEY_get_bits(key) != 256) {
            return 0;
        }
    } else if (strcmp(alg, "RS256") == 0) {
        if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
            return 0;
        }
    } else {
        return 0;
    }

    size_t hl = bb_b64url_encode(header_json, strlen(header_json), out, cap);
    if (hl == 0 || hl + 1 >= cap) {
        return 0;
    }
    out[hl] = '.';
    size_t cl = bb_b64url_encode(claims_json, strlen(claims_json), out + hl + 1, cap - hl - 1);
    if (cl == 0) {
        return 0;
    }
    size_t signing_len = hl + 1 + cl;

    size_t result = 0;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md) {
        return 0;
    }
    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)out, signing_len) != 1) {
        goto free_md;
    }
    sig = OPENSSL_malloc(siglen);
    if (!sig || EVP_DigestSign(md, sig, &siglen, (const unsigned char *)out, signing_len) != 1) {
        goto free_sig;
    }
    unsigned char raw[64];
    const unsigned char *s = sig;
    size_t slen = siglen;
    if (es256) {
        if (ecdsa_der_to_raw(sig, siglen, raw) != 0) {
            goto free_sig;
        }
        s = raw;
        slen = sizeof(raw);
    }
    if (signing_len + 1 >= cap) {
        goto free_sig;
    }
    out[signing_len] = '.';
    size_t sl = bb_b64url_encode(s, slen, out + signing_len + 1, cap - signing_len - 1);
    if (sl == 0) {
        goto free_sig;
    }
    result = signing_len + 1 + sl;
free_sig:
    OPENSSL_free(sig);
free_md:
    EVP_MD_CTX_free(md);
    if (result == 0 && cap > 0) {
        out[0] = '\0';
    }
    return result;
}
