/* Unit tests for common/wire.c: zstd frames with and without dictionaries,
 * checksums, dictionary ids, max_out limits, delivery ids and UTF-8.
 * Single test process; one test starts its own threads. */

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "bb_err.h"
#include "wire.h"

#define NTRAIN 400
#define NEVAL 200
#define DICT_CAP (16 * 1024)
#define LEVEL 3

/* ---- synthetic notifications ------------------------------------------ */

static uint64_t rng_state;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

#define PICK(a) (a[rng() % (sizeof(a) / sizeof(a[0]))])

static const char *const soorten[] = {"afval", "verkeer",       "evenement", "veiligheid",
                                      "groen", "wateroverlast", "burenhulp"};
static const char *const buurten[] = {
    "Oosterpark",     "De Pijp",           "Jordaan",       "Transvaalbuurt", "Watergraafsmeer",
    "Indische Buurt", "Spaarndammerbuurt", "Rivierenbuurt", "Bos en Lommer",  "Oud-West"};
static const char *const straten[] = {
    "Linnaeusstraat",          "Ferdinand Bolstraat",    "Javastraat",
    "Eerste Oosterparkstraat", "Kinkerstraat",           "Middenweg",
    "Van Woustraat",           "Admiraal de Ruijterweg", "Dapperstraat"};
static const char *const titels[] = {
    "Grofvuil wordt morgen opgehaald",
    "Wegafsluiting wegens werkzaamheden",
    "Buurtbarbecue op zaterdag",
    "Verdachte situatie gemeld",
    "Bomen worden gesnoeid",
    "Lekkage in de hoofdleiding",
    "Wie kan er helpen met boodschappen?",
    "Café op de hoek heropend",
};
static const char *const zinnen[] = {
    "Zet uw grofvuil vóór 7:30 uur aan de straat.",
    "De straat is tussen 9:00 en 17:00 uur afgesloten voor alle verkeer.",
    "Iedereen is welkom, neem een salade of een toetje mee!",
    "Wees alert en bel bij twijfel 112 of de wijkagent.",
    "Parkeren is tijdelijk niet mogelijk aan de even kant.",
    "Excuses voor het ongemak, de gemeente werkt eraan.",
    "Meer informatie vindt u op de website van het stadsdeel.",
    "Heeft u vragen? Neem contact op met de coördinator van het buurtteam.",
    "Geïnteresseerden kunnen zich aanmelden bij het buurthuis.",
    "Let op: de container bij de ingang is vol, gebruik de andere.",
    "Fietsers worden omgeleid via de parallelweg.",
    "De brandweer is ter plaatse en heeft de situatie onder controle.",
};
static const char *const prioriteiten[] = {"laag", "normaal", "hoog"};

/* Writes one JSON-ish notification of roughly 300-500 bytes; returns its length. */
static size_t make_sample(char *buf, size_t cap)
{
    char tekst[512];
    int n = 0, sentences = 2 + (int)(rng() % 3);

    tekst[0] = '\0';
    for (int i = 0; i < sentences; i++) {
        n += snprintf(tekst + n, sizeof(tekst) - (size_t)n, "%s%s", i ? " " : "", PICK(zinnen));
    }
    n = snprintf(buf, cap,
                 "{\"v\":1,\"soort\":\"%s\",\"buurt\":\"%s\",\"titel\":\"%s\",\"tekst\":\"%s\","
                 "\"adres\":\"%s %u\",\"afzender\":%u,\"geohash\":\"u17%c%c%c\","
                 "\"tijd\":\"2026-%02u-%02uT%02u:%02u:%02uZ\",\"prioriteit\":\"%s\"}",
                 PICK(soorten), PICK(buurten), PICK(titels), tekst, PICK(straten), 1 + rng() % 300,
                 1000 + rng() % 90000, 'a' + (int)(rng() % 26), 'a' + (int)(rng() % 26),
                 '0' + (int)(rng() % 10), 1 + rng() % 12, 1 + rng() % 28, rng() % 24, rng() % 60,
                 rng() % 60, PICK(prioriteiten));
    return (size_t)n;
}

/* Samples laid end to end, as bb_zdict_train wants them. */
struct corpus {
    char *data;
    size_t *sizes;
    size_t total;
    unsigned n;
};

static void corpus_make(struct corpus *c, unsigned n, uint64_t seed)
{
    char one[1024];

    rng_state = seed;
    c->data = malloc((size_t)n * sizeof(one));
    c->sizes = calloc(n, sizeof(size_t));
    assert_non_null(c->data);
    assert_non_null(c->sizes);
    c->total = 0;
    c->n = n;
    for (unsigned i = 0; i < n; i++) {
        size_t len = make_sample(one, sizeof(one));
        memcpy(c->data + c->total, one, len);
        c->sizes[i] = len;
        c->total += len;
    }
}

static void corpus_free(struct corpus *c)
{
    free(c->data);
    free(c->sizes);
}

static struct bb_zdict *train_dict(uint64_t seed)
{
    struct corpus c;
    struct bb_zdict *d;
    void *buf = malloc(DICT_CAP);
    size_t len = 0;

    assert_non_null(buf);
    corpus_make(&c, NTRAIN, seed);
    assert_int_equal(bb_zdict_train(c.data, c.sizes, c.n, buf, DICT_CAP, &len), 0);
    assert_true(len > 0 && len <= DICT_CAP);
    d = bb_zdict_new(buf, len, LEVEL);
    assert_non_null(d);
    free(buf);
    corpus_free(&c);
    return d;
}

static struct bb_zdict *dict_a, *dict_b;

static int group_setup(void **state)
{
    dict_a = train_dict(0x1234567ull);
    /* A second dictionary, trained on different text, has another id. */
    dict_b = train_dict(0xfeedbeefull);
    return 0;
}

static int group_teardown(void **state)
{
    bb_zdict_unref(dict_a);
    bb_zdict_unref(dict_b);
    return 0;
}

/* ---- helpers ----------------------------------------------------------- */

struct frame {
    uint8_t *data;
    size_t len;
};

static struct frame compress_frame(struct bb_zenc *z, const struct bb_zdict *d, const void *src,
                                   size_t n)
{
    struct frame f;
    size_t cap = bb_zbound(n);

    f.data = malloc(cap);
    assert_non_null(f.data);
    assert_int_equal(bb_zenc_compress(z, d, src, n, f.data, cap, &f.len), 0);
    return f;
}

/* A frame without a content size, made by streaming without a pledged size. */
static struct frame compress_unknown_size_wlog(const struct bb_zdict *d, const void *src, size_t n,
                                               int window_log)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_inBuffer in = {src, n, 0};
    ZSTD_outBuffer out;
    struct frame f;
    size_t r;

    assert_non_null(cctx);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)));
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, window_log)));
    if (d != NULL) {
        size_t dlen;
        const void *dbytes = bb_zdict_bytes(d, &dlen);
        assert_false(ZSTD_isError(ZSTD_CCtx_loadDictionary(cctx, dbytes, dlen)));
    }
    f.data = malloc(ZSTD_compressBound(n) + 64);
    assert_non_null(f.data);
    out = (ZSTD_outBuffer){f.data, ZSTD_compressBound(n) + 64, 0};
    /* e_continue first: ending on the first call would pledge the size. */
    r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_continue);
    assert_false(ZSTD_isError(r));
    assert_int_equal(in.pos, n);
    do {
        ZSTD_inBuffer none = {NULL, 0, 0};
        r = ZSTD_compressStream2(cctx, &out, &none, ZSTD_e_end);
        assert_false(ZSTD_isError(r));
    } while (r != 0);
    f.len = out.pos;
    ZSTD_freeCCtx(cctx);
    assert_true(ZSTD_getFrameContentSize(f.data, f.len) == ZSTD_CONTENTSIZE_UNKNOWN);
    return f;
}

static struct frame compress_unknown_size(const struct bb_zdict *d, const void *src, size_t n)
{
    return compress_unknown_size_wlog(d, src, n, 0);
}

static void fill_text(uint8_t *buf, size_t n, uint64_t seed)
{
    char one[1024];
    size_t done = 0;

    rng_state = seed;
    while (done < n) {
        size_t len = make_sample(one, sizeof(one));
        if (len > n - done) {
            len = n - done;
        }
        memcpy(buf + done, one, len);
        done += len;
    }
}

static void fill_random(uint8_t *buf, size_t n, uint64_t seed)
{
    rng_state = seed;
    for (size_t i = 0; i < n; i++) {
        buf[i] = (uint8_t)rng();
    }
}

static void assert_roundtrip(struct bb_zdec *dec, const struct bb_zdict *d, struct frame f,
                             const void *src, size_t n)
{
    const uint8_t *out = NULL;
    size_t outlen = 0;

    assert_int_equal(bb_zdec_decompress(dec, d, f.data, f.len, &out, &outlen), 0);
    assert_int_equal(outlen, n);
    if (n > 0) {
        assert_memory_equal(out, src, n);
    }
}

static int decompress_rc(struct bb_zdec *dec, const struct bb_zdict *d, const void *src, size_t n)
{
    const uint8_t *out;
    size_t outlen;

    return bb_zdec_decompress(dec, d, src, n, &out, &outlen);
}

/* ---- tests ------------------------------------------------------------- */

static void test_roundtrip_no_dict(void **state)
{
    static const size_t sizes[] = {0, 1, 13, 300, 4096, 4097, 100000, 300000};
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1 << 20);
    uint8_t *src = malloc(300000);

    assert_non_null(enc);
    assert_non_null(dec);
    assert_non_null(src);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        fill_text(src, sizes[i], 42 + i);
        struct frame f = compress_frame(enc, NULL, src, sizes[i]);
        assert_int_equal(bb_zframe_dict_id(f.data, f.len), 0);
        assert_true(f.data[4] & 0x04); /* content checksum flag */
        assert_true(ZSTD_getFrameContentSize(f.data, f.len) == sizes[i]);
        assert_roundtrip(dec, NULL, f, src, sizes[i]);
        free(f.data);
    }
    free(src);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

static void test_dict_properties(void **state)
{
    size_t len = 0;
    const void *bytes = bb_zdict_bytes(dict_a, &len);
    struct bb_zdict *copy;

    assert_non_null(bytes);
    assert_true(len > 0);
    assert_int_not_equal(bb_zdict_id(dict_a), 0);
    assert_int_equal(bb_zdict_id(dict_a), ZSTD_getDictID_fromDict(bytes, len));
    assert_int_not_equal(bb_zdict_id(dict_a), bb_zdict_id(dict_b));

    /* The bytes make an equal dictionary again (as when loaded from Redis). */
    copy = bb_zdict_new(bytes, len, LEVEL);
    assert_non_null(copy);
    assert_int_equal(bb_zdict_id(copy), bb_zdict_id(dict_a));
    assert_ptr_equal(bb_zdict_ref(copy), copy);
    bb_zdict_unref(copy);
    bb_zdict_unref(copy);
    bb_zdict_unref(NULL);
    assert_null(bb_zdict_ref(NULL));
}

static void test_zdict_new_rejects(void **state)
{
    uint8_t junk[2048];

    fill_random(junk, sizeof(junk), 7);
    assert_null(bb_zdict_new(junk, sizeof(junk), LEVEL)); /* raw content, no header */
    assert_null(bb_zdict_new(NULL, 100, LEVEL));
    assert_null(bb_zdict_new(junk, 0, LEVEL));
    /* Right magic, garbage after it. */
    junk[0] = 0x37;
    junk[1] = 0xA4;
    junk[2] = 0x30;
    junk[3] = 0xEC;
    assert_null(bb_zdict_new(junk, sizeof(junk), LEVEL));
}

static void test_train_errors(void **state)
{
    char samples[40] = "abcdabcdabcdabcdabcdabcdabcdabcdabcdabc";
    size_t sizes[4] = {10, 10, 10, 9};
    uint8_t dict[4096];
    size_t len = 99;

    assert_int_equal(bb_zdict_train(samples, sizes, 4, dict, sizeof(dict), &len), BB_EINVAL);
    assert_int_equal(len, 0);
    assert_int_equal(bb_zdict_train(samples, sizes, 0, dict, sizeof(dict), &len), BB_EINVAL);
    assert_int_equal(bb_zdict_train(NULL, sizes, 4, dict, sizeof(dict), &len), BB_EINVAL);
    assert_int_equal(bb_zdict_train(samples, sizes, 4, dict, sizeof(dict), NULL), BB_EINVAL);
}

static void test_dict_improves_ratio(void **state)
{
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(64 * 1024);
    struct corpus c;
    size_t plain = 0, with_dict = 0, off = 0;
    uint8_t dst[2048];
    double ratio_plain, ratio_dict;

    assert_non_null(enc);
    assert_non_null(dec);
    corpus_make(&c, NEVAL, 0xabcdefull); /* not the training samples */
    for (unsigned i = 0; i < c.n; i++) {
        const char *s = c.data + off;
        size_t n = c.sizes[i], len;
        struct frame f;

        assert_true(n >= 250 && n <= 600);
        assert_true(bb_utf8_is_valid(s, n));
        assert_int_equal(bb_zenc_compress(enc, NULL, s, n, dst, sizeof(dst), &len), 0);
        plain += len;
        f = compress_frame(enc, dict_a, s, n);
        assert_int_equal(bb_zframe_dict_id(f.data, f.len), bb_zdict_id(dict_a));
        assert_true(f.data[4] & 0x04);
        assert_roundtrip(dec, dict_a, f, s, n);
        with_dict += f.len;
        free(f.data);
        off += n;
    }
    ratio_plain = (double)c.total / (double)plain;
    ratio_dict = (double)c.total / (double)with_dict;
    print_message("wire: %u samples, %zu bytes: ratio %.2f without dictionary, %.2f with\n", c.n,
                  c.total, ratio_plain, ratio_dict);
    assert_true(ratio_dict > 2.0 * ratio_plain);
    corpus_free(&c);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

static void test_checksum_detects_corruption(void **state)
{
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1 << 20);
    uint8_t src[1000];
    struct frame f;

    assert_non_null(enc);
    assert_non_null(dec);
    /* Random bytes are stored as a raw block: only the checksum can notice
     * a flipped byte in the payload. */
    fill_random(src, sizeof(src), 99);
    f = compress_frame(enc, NULL, src, sizeof(src));
    assert_true(f.len > sizeof(src));
    assert_roundtrip(dec, NULL, f, src, sizeof(src));
    f.data[f.len / 2] ^= 0x01;
    assert_int_equal(decompress_rc(dec, NULL, f.data, f.len), BB_EINVAL);
    f.data[f.len / 2] ^= 0x01;
    f.data[f.len - 1] ^= 0x80; /* the checksum itself */
    assert_int_equal(decompress_rc(dec, NULL, f.data, f.len), BB_EINVAL);
    f.data[f.len - 1] ^= 0x80;
    assert_roundtrip(dec, NULL, f, src, sizeof(src));
    free(f.data);

    /* Any single flipped bit in a dictionary frame: an error, never wrong data. */
    fill_text(src, 400, 5);
    f = compress_frame(enc, dict_a, src, 400);
    for (size_t i = 0; i < f.len; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            const uint8_t *out;
            size_t outlen;
            int rc;

            f.data[i] ^= (uint8_t)(1u << bit);
            rc = bb_zdec_decompress(dec, dict_a, f.data, f.len, &out, &outlen);
            if (rc == 0) {
                assert_int_equal(outlen, 400);
                assert_memory_equal(out, src, 400);
            } else {
                assert_true(rc == BB_EINVAL || rc == BB_ETOOBIG);
            }
            f.data[i] ^= (uint8_t)(1u << bit);
        }
    }
    free(f.data);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

static void test_frame_without_checksum_rejected(void **state)
{
    struct bb_zdec *dec = bb_zdec_new(1 << 20);
    const char src[] = "Grofvuil wordt morgen opgehaald";
    uint8_t dst[256];
    size_t len = ZSTD_compress(dst, sizeof(dst), src, sizeof(src), LEVEL); /* no checksum */

    assert_false(ZSTD_isError(len));
    assert_false(dst[4] & 0x04);
    assert_int_equal(decompress_rc(dec, NULL, dst, len), BB_EINVAL);
    bb_zdec_free(dec);
}

static void test_wrong_dictionary(void **state)
{
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1 << 20);
    uint8_t src[450];
    struct frame fa, fn;

    fill_text(src, sizeof(src), 77);
    fa = compress_frame(enc, dict_a, src, sizeof(src));
    fn = compress_frame(enc, NULL, src, sizeof(src));
    assert_int_equal(bb_zframe_dict_id(fa.data, fa.len), bb_zdict_id(dict_a));
    assert_int_equal(decompress_rc(dec, dict_b, fa.data, fa.len), BB_EINVAL);
    assert_int_equal(decompress_rc(dec, NULL, fa.data, fa.len), BB_EINVAL);
    assert_int_equal(decompress_rc(dec, dict_a, fn.data, fn.len), BB_EINVAL);
    /* The context is still good after the refusals. */
    assert_roundtrip(dec, dict_a, fa, src, sizeof(src));
    assert_roundtrip(dec, NULL, fn, src, sizeof(src));
    free(fa.data);
    free(fn.data);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

static void test_max_out_known_size(void **state)
{
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1000);
    uint8_t src[1001];
    struct frame f;

    fill_text(src, sizeof(src), 3);
    f = compress_frame(enc, NULL, src, 1000);
    assert_roundtrip(dec, NULL, f, src, 1000);
    free(f.data);
    f = compress_frame(enc, NULL, src, 1001);
    assert_int_equal(decompress_rc(dec, NULL, f.data, f.len), BB_ETOOBIG);
    free(f.data);
    f = compress_frame(enc, dict_a, src, 1001);
    assert_int_equal(decompress_rc(dec, dict_a, f.data, f.len), BB_ETOOBIG);
    free(f.data);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

static void test_max_out_unknown_size(void **state)
{
    enum { N = 300000 };
    uint8_t *src = malloc(N);
    struct bb_zdec *exact = bb_zdec_new(N);
    struct bb_zdec *small = bb_zdec_new(N - 1);
    struct bb_zdec *tiny = bb_zdec_new(100);
    struct bb_zdec *big = bb_zdec_new(4 * N);
    struct frame f, fd;

    assert_non_null(src);
    fill_text(src, N, 11);
    f = compress_unknown_size(NULL, src, N);
    assert_roundtrip(exact, NULL, f, src, N); /* exactly max_out is allowed */
    assert_roundtrip(big, NULL, f, src, N);   /* buffer grows past its first size */
    assert_int_equal(decompress_rc(small, NULL, f.data, f.len), BB_ETOOBIG);
    assert_int_equal(decompress_rc(tiny, NULL, f.data, f.len), BB_ETOOBIG);
    /* Same context after a refusal, smaller frame. */
    free(f.data);
    f = compress_unknown_size(NULL, src, 50);
    assert_roundtrip(tiny, NULL, f, src, 50);
    assert_roundtrip(small, NULL, f, src, 50);
    free(f.data);

    /* With a dictionary, and mixed with known-size frames on one context. */
    fd = compress_unknown_size(dict_a, src, 400);
    assert_int_equal(bb_zframe_dict_id(fd.data, fd.len), bb_zdict_id(dict_a));
    assert_roundtrip(big, dict_a, fd, src, 400);
    assert_int_equal(decompress_rc(tiny, dict_a, fd.data, fd.len), BB_ETOOBIG);
    assert_int_equal(decompress_rc(big, dict_b, fd.data, fd.len), BB_EINVAL);
    /* Truncated streaming frame. */
    assert_int_equal(decompress_rc(big, dict_a, fd.data, fd.len - 5), BB_EINVAL);
    free(fd.data);

    bb_zdec_free(exact);
    bb_zdec_free(small);
    bb_zdec_free(tiny);
    bb_zdec_free(big);
    free(src);
}

static void test_hostile_window(void **state)
{
    /* A small frame that asks for a 128 MiB window: refused before any
     * window is allocated, unless max_out needs such a window anyway. */
    uint8_t src[300];
    struct bb_zdec *dec = bb_zdec_new(64 * 1024);
    struct frame f;

    fill_text(src, sizeof(src), 21);
    f = compress_unknown_size_wlog(NULL, src, sizeof(src), 27);
    assert_int_equal(decompress_rc(dec, NULL, f.data, f.len), BB_ETOOBIG);
    free(f.data);
    f = compress_unknown_size_wlog(NULL, src, sizeof(src), 23);
    assert_roundtrip(dec, NULL, f, src, sizeof(src));
    free(f.data);
    bb_zdec_free(dec);
}

static void test_malformed_input(void **state)
{
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1 << 20);
    uint8_t src[500], junk[64];
    uint8_t *two;
    struct frame f;

    fill_text(src, sizeof(src), 8);
    f = compress_frame(enc, NULL, src, sizeof(src));
    two = malloc(2 * f.len + 1);
    assert_non_null(two);
    memcpy(two, f.data, f.len);
    two[f.len] = 'x';
    assert_int_equal(decompress_rc(dec, NULL, two, f.len + 1), BB_EINVAL); /* trailing byte */
    memcpy(two + f.len, f.data, f.len);
    assert_int_equal(decompress_rc(dec, NULL, two, 2 * f.len), BB_EINVAL); /* two frames */
    for (size_t cut = 0; cut < f.len; cut++) {
        assert_int_equal(decompress_rc(dec, NULL, f.data, cut), BB_EINVAL); /* truncated */
    }
    fill_random(junk, sizeof(junk), 1);
    assert_int_equal(decompress_rc(dec, NULL, junk, sizeof(junk)), BB_EINVAL);
    assert_int_equal(bb_zframe_dict_id(junk, sizeof(junk)), 0);
    assert_int_equal(bb_zframe_dict_id(NULL, 0), 0);
    assert_int_equal(decompress_rc(dec, NULL, f.data, 0), BB_EINVAL);
    assert_roundtrip(dec, NULL, f, src, sizeof(src));
    free(two);
    free(f.data);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

static void test_compress_small_buffer_then_reuse(void **state)
{
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1 << 20);
    uint8_t src[5000], dst[16];
    size_t len = 123;
    struct frame f;

    fill_random(src, sizeof(src), 4);
    assert_int_equal(bb_zenc_compress(enc, dict_a, src, sizeof(src), dst, sizeof(dst), &len),
                     BB_ETOOBIG);
    assert_int_equal(len, 0);
    /* The context recovers, and alternating dictionary/none stays correct. */
    for (int round = 0; round < 3; round++) {
        const struct bb_zdict *d = round == 1 ? NULL : dict_a;
        f = compress_frame(enc, d, src, sizeof(src));
        assert_int_equal(bb_zframe_dict_id(f.data, f.len), bb_zdict_id(d));
        assert_roundtrip(dec, d, f, src, sizeof(src));
        free(f.data);
        f = compress_frame(enc, NULL, src, 100);
        assert_int_equal(bb_zframe_dict_id(f.data, f.len), 0);
        assert_roundtrip(dec, NULL, f, src, 100);
        free(f.data);
    }
    assert_true(bb_zbound(1000) >= 1000);
    assert_true(bb_zbound(0) > 0);
    bb_zdec_free(dec);
    bb_zenc_free(enc);
}

struct thread_arg {
    uint64_t seed;
    int failures;
};

static void *roundtrip_thread(void *p)
{
    struct thread_arg *a = p;
    struct bb_zenc *enc = bb_zenc_new(LEVEL);
    struct bb_zdec *dec = bb_zdec_new(1 << 16);
    uint8_t src[600], dst[1024];

    for (int i = 0; i < 200 && enc != NULL && dec != NULL; i++) {
        const struct bb_zdict *d = i % 3 == 0 ? NULL : (i % 3 == 1 ? dict_a : dict_b);
        const uint8_t *out;
        size_t n = 200 + (size_t)i, len, outlen;

        for (size_t j = 0; j < n; j++) {
            src[j] = (uint8_t)("abcdefghij klmnop"[(a->seed + j * 7 + (size_t)i) % 17]);
        }
        if (bb_zenc_compress(enc, d, src, n, dst, sizeof(dst), &len) != 0 ||
            bb_zdec_decompress(dec, d, dst, len, &out, &outlen) != 0 || outlen != n ||
            memcmp(out, src, n) != 0) {
            a->failures++;
        }
    }
    if (enc == NULL || dec == NULL) {
        a->failures++;
    }
    bb_zdec_free(dec);
    bb_zenc_free(enc);
    return NULL;
}

static void test_threads_share_dictionaries(void **state)
{
    pthread_t t[4];
    struct thread_arg args[4];

    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){.seed = (uint64_t)i * 31};
        assert_int_equal(pthread_create(&t[i], NULL, roundtrip_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(args[i].failures, 0);
    }
}

static void test_delivery_id(void **state)
{
    char buf[64];

    assert_int_equal(bb_delivery_id(buf, sizeof(buf), "r:abc", 1, 1001), 12);
    assert_string_equal(buf, "r:abc:1:1001");
    assert_int_equal(bb_delivery_id(buf, 13, "r:abc", 1, 1001), 12); /* exact fit */
    assert_string_equal(buf, "r:abc:1:1001");
    assert_int_equal(bb_delivery_id(buf, 12, "r:abc", 1, 1001), 0); /* no room for NUL */
    assert_string_equal(buf, "");
    assert_int_equal(bb_delivery_id(buf, sizeof(buf), "k", -2, UINT64_MAX), 25);
    assert_string_equal(buf, "k:-2:18446744073709551615");
    assert_int_equal(bb_delivery_id(buf, sizeof(buf), "", 0, 0), 4);
    assert_string_equal(buf, ":0:0");
    assert_int_equal(bb_delivery_id(NULL, 0, "r:abc", 1, 1), 0);
    assert_int_equal(bb_delivery_id(buf, sizeof(buf), NULL, 1, 1), 0);
}

static void test_utf8(void **state)
{
    static const struct {
        const char *s;
        size_t n; /* 0: strlen */
        bool valid;
        const char *what;
    } cases[] = {
        {"", 0, true, "empty"},
        {"Grofvuil wordt morgen opgehaald, zet het buiten", 0, true, "long ASCII"},
        {"a\0b", 3, true, "NUL is U+0000"},
        {"\x7f", 0, true, "U+007F"},
        {"caf\xc3\xa9", 0, true, "2-byte U+00E9"},
        {"\xc2\x80", 0, true, "2-byte lowest U+0080"},
        {"\xdf\xbf", 0, true, "2-byte highest U+07FF"},
        {"\xe0\xa0\x80", 0, true, "3-byte lowest U+0800"},
        {"\xe2\x82\xac", 0, true, "3-byte euro sign"},
        {"\xed\x9f\xbf", 0, true, "U+D7FF below surrogates"},
        {"\xee\x80\x80", 0, true, "U+E000 above surrogates"},
        {"\xef\xbf\xbf", 0, true, "U+FFFF"},
        {"\xf0\x90\x80\x80", 0, true, "4-byte lowest U+10000"},
        {"\xf0\x9f\x9a\x8c bus", 0, true, "4-byte emoji"},
        {"\xf4\x8f\xbf\xbf", 0, true, "U+10FFFF"},
        {"12345678\xc3\xa9"
         "12345678",
         0, true, "multibyte after fast path"},
        {"\x80", 0, false, "lone continuation"},
        {"\xbf", 0, false, "lone continuation (high)"},
        {"\xc0\x80", 0, false, "overlong NUL"},
        {"\xc1\xbf", 0, false, "overlong 2-byte"},
        {"\xe0\x80\xaf", 0, false, "overlong 3-byte '/'"},
        {"\xe0\x9f\xbf", 0, false, "overlong 3-byte U+07FF"},
        {"\xf0\x80\x80\xaf", 0, false, "overlong 4-byte '/'"},
        {"\xf0\x8f\xbf\xbf", 0, false, "overlong 4-byte U+FFFF"},
        {"\xed\xa0\x80", 0, false, "high surrogate U+D800"},
        {"\xed\xbf\xbf", 0, false, "low surrogate U+DFFF"},
        {"\xed\xa0\xbd\xed\xb2\xa9", 0, false, "CESU-8 surrogate pair"},
        {"\xf4\x90\x80\x80", 0, false, "U+110000"},
        {"\xf5\x80\x80\x80", 0, false, "lead byte F5"},
        {"\xf8\x88\x80\x80\x80", 0, false, "5-byte form"},
        {"\xff", 0, false, "byte FF"},
        {"\xfe", 0, false, "byte FE"},
        {"\xc3", 0, false, "truncated 2-byte"},
        {"\xe2\x82", 0, false, "truncated 3-byte"},
        {"\xf0\x9f\x9a", 0, false, "truncated 4-byte"},
        {"abcdefgh\xf0\x9f\x9a", 0, false, "truncated after fast path"},
        {"\xc3(", 0, false, "bad continuation"},
        {"\xe2\x28\xa1", 0, false, "bad 2nd of 3"},
        {"\xe2\x82\x28", 0, false, "bad 3rd of 3"},
        {"\xf0\x9f\x9a\x28", 0, false, "bad 4th of 4"},
        {"abcdefghijklmnop\x80", 0, false, "continuation after 16 ASCII"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = cases[i].n ? cases[i].n : strlen(cases[i].s);
        if (bb_utf8_is_valid(cases[i].s, n) != cases[i].valid) {
            fail_msg("utf8 case %zu (%s): expected %s", i, cases[i].what,
                     cases[i].valid ? "valid" : "invalid");
        }
    }
    assert_true(bb_utf8_is_valid(NULL, 0));
    /* The whole input counts: a valid prefix does not make it valid. */
    assert_false(bb_utf8_is_valid("ok\xc3\xa9\xff", 6));
    assert_true(bb_utf8_is_valid("ok\xc3\xa9\xff", 4));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_no_dict),
        cmocka_unit_test(test_dict_properties),
        cmocka_unit_test(test_zdict_new_rejects),
        cmocka_unit_test(test_train_errors),
        cmocka_unit_test(test_dict_improves_ratio),
        cmocka_unit_test(test_checksum_detects_corruption),
        cmocka_unit_test(test_frame_without_checksum_rejected),
        cmocka_unit_test(test_wrong_dictionary),
        cmocka_unit_test(test_max_out_known_size),
        cmocka_unit_test(test_max_out_unknown_size),
        cmocka_unit_test(test_hostile_window),
        cmocka_unit_test(test_malformed_input),
        cmocka_unit_test(test_compress_small_buffer_then_reuse),
        cmocka_unit_test(test_threads_share_dictionaries),
        cmocka_unit_test(test_delivery_id),
        cmocka_unit_test(test_utf8),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
