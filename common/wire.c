/* The wire codec: zstd frames with trained dictionaries, delivery ids and
 * UTF-8 validation; see wire.h.
 *
 * Threads: a bb_zdict is immutable after bb_zdict_new and may be used by any
 * number of threads at once (its CDict and DDict are read-only; the refcount
 * is atomic). A bb_zenc or bb_zdec belongs to one thread at a time. The
 * remaining functions are pure.
 *
 * Only the stable zstd API is used. Every frame we write has a content
 * checksum, the dictionary id and the content size; on input we insist on
 * the checksum and the dictionary id, and accept frames of unknown content
 * size (other producers) through streaming decompression capped at max_out. */

#include "wire.h"

#include "bb_err.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zdict.h>
#include <zstd.h>
#include <zstd_errors.h>

enum {
    ZDEC_MIN_BUF = 4096,
    /* Smallest window a streaming frame may ask for regardless of max_out:
     * 8 MiB covers any zstd level up to 19 without a size hint. */
    ZDEC_MIN_WINDOW_LOG = 23,
};

struct bb_zdict {
    atomic_uint refs;
    uint32_t id;
    int level;
    size_t len;
    void *bytes;
    ZSTD_CDict *cdict;
    ZSTD_DDict *ddict;
};

struct bb_zenc {
    ZSTD_CCtx *cctx;
};

struct bb_zdec {
    ZSTD_DCtx *dctx;
    size_t max_out;
    uint8_t *buf;
    size_t cap;
};

/* ---- dictionaries ------------------------------------------------------ */

struct bb_zdict *bb_zdict_new(const void *dict, size_t len, int level)
{
    struct bb_zdict *d;
    uint32_t id;

    if (dict == NULL || len == 0) {
        return NULL;
    }
    id = ZSTD_getDictID_fromDict(dict, len); /* 0 unless it has the zstd dictionary header */
    if (id == 0) {
        return NULL;
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return NULL;
    }
    d->bytes = malloc(len);
    if (d->bytes == NULL) {
        goto free_d;
    }
    memcpy(d->bytes, dict, len);
    d->len = len;
    d->id = id;
    d->level = level;
    d->cdict = ZSTD_createCDict(d->bytes, len, level);
    if (d->cdict == NULL) {
        goto free_bytes;
    }
    d->ddict = ZSTD_createDDict(d->bytes, len);
    if (d->ddict == NULL) {
        goto free_cdict;
    }
    if (ZSTD_getDictID_fromCDict(d->cdict) != id || ZSTD_getDictID_fromDDict(d->ddict) != id) {
        goto free_ddict;
    }
    atomic_init(&d->refs, 1);
    return d;

free_ddict:
    ZSTD_freeDDict(d->ddict);
free_cdict:
    ZSTD_freeCDict(d->cdict);
free_bytes:
    free(d->bytes);
free_d:
    free(d);
    return NULL;
}

struct bb_zdict *bb_zdict_ref(struct bb_zdict *d)
{
    if (d != NULL) {
        atomic_fetch_add_explicit(&d->refs, 1, memory_order_relaxed);
    }
    return d;
}

void bb_zdict_unref(struct bb_zdict *d)
{
    if (d == NULL || atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    ZSTD_freeDDict(d->ddict);
    ZSTD_freeCDict(d->cdict);
    free(d->bytes);
    free(d);
}

uint32_t bb_zdict_id(const struct bb_zdict *d)
{
    return d != NULL ? d->id : 0;
}

const void *bb_zdict_bytes(const struct bb_zdict *d, size_t *len)
{
    if (len != NULL) {
        *len = d != NULL ? d->len : 0;
    }
    return d != NULL ? d->bytes : NULL;
}

int bb_zdict_train(const void *samples, const size_t *sizes, unsigned nsamples, void *dict,
                   size_t cap, size_t *len)
{
    size_t r;

    if (len != NULL) {
        *len = 0;
    }
    if (samples == NULL || sizes == NULL || nsamples == 0 || dict == NULL || len == NULL) {
        return BB_EINVAL;
    }
    r = ZDICT_trainFromBuffer(dict, cap, samples, sizes, nsamples);
    if (ZDICT_isError(r)) {
        return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? BB_ENOMEM : BB_EINVAL;
    }
    *len = r;
    return 0;
}

/* ---- compression ------------------------------------------------------- */

struct bb_zenc *bb_zenc_new(int level)
{
    struct bb_zenc *z = calloc(1, sizeof(*z));

    if (z == NULL) {
        return NULL;
    }
    z->cctx = ZSTD_createCCtx();
    if (z->cctx == NULL) {
        goto free_z;
    }
    /* Sticky parameters: they survive ZSTD_reset_session_only. */
    if (ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 1)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_dictIDFlag, 1)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_contentSizeFlag, 1))) {
        goto free_cctx;
    }
    return z;

free_cctx:
    ZSTD_freeCCtx(z->cctx);
free_z:
    free(z);
    return NULL;
}

void bb_zenc_free(struct bb_zenc *z)
{
    if (z != NULL) {
        ZSTD_freeCCtx(z->cctx);
        free(z);
    }
}

size_t bb_zbound(size_t n)
{
    size_t b = ZSTD_compressBound(n);

    return ZSTD_isError(b) ? 0 : b; /* 0: n is beyond what zstd accepts */
}

int bb_zenc_compress(struct bb_zenc *z, const struct bb_zdict *dict, const void *src, size_t n,
                     void *dst, size_t cap, size_t *outlen)
{
    size_t r;

    if (outlen != NULL) {
        *outlen = 0;
    }
    if (z == NULL || (src == NULL && n > 0) || dst == NULL || outlen == NULL) {
        return BB_EINVAL;
    }
    if (src == NULL) {
        src = "";
    }
    /* A failed call can leave the context mid-frame, where refCDict is refused:
     * reset the session first, then (re)attach this call's dictionary or none.
     * With a CDict its own level applies. */
    if (ZSTD_isError(ZSTD_CCtx_reset(z->cctx, ZSTD_reset_session_only)) ||
        ZSTD_isError(ZSTD_CCtx_refCDict(z->cctx, dict != NULL ? dict->cdict : NULL))) {
        return BB_EIO;
    }
    r = ZSTD_compress2(z->cctx, dst, cap, src, n);
    if (ZSTD_isError(r)) {
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? BB_ETOOBIG : BB_EIO;
    }
    *outlen = r;
    return 0;
}

/* ---- decompression ----------------------------------------------------- */

struct bb_zdec *bb_zdec_new(size_t max_out)
{
    struct bb_zdec *z = calloc(1, sizeof(*z));
    ZSTD_bounds wb;
    int wlog = 0;

    if (z == NULL) {
        return NULL;
    }
    z->max_out = max_out;
    z->dctx = ZSTD_createDCtx();
    if (z->dctx == NULL) {
        goto free_z;
    }
    /* Streaming frames allocate a window as large as they declare: allow
     * what max_out needs, but never less than ZDEC_MIN_WINDOW_LOG. */
    while (wlog < 63 && ((size_t)1 << wlog) < max_out) {
        wlog++;
    }
    if (wlog < ZDEC_MIN_WINDOW_LOG) {
        wlog = ZDEC_MIN_WINDOW_LOG;
    }
    wb = ZSTD_dParam_getBounds(ZSTD_d_windowLogMax);
    if (!ZSTD_isError(wb.error) && wlog > wb.upperBound) {
        wlog = wb.upperBound;
    }
    if (ZSTD_isError(ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax, wlog))) {
        goto free_dctx;
    }
    return z;

free_dctx:
    ZSTD_freeDCtx(z->dctx);
free_z:
    free(z);
    return NULL;
}

void bb_zdec_free(struct bb_zdec *z)
{
    if (z != NULL) {
        ZSTD_freeDCtx(z->dctx);
        free(z->buf);
        free(z);
    }
}

uint32_t bb_zframe_dict_id(const void *src, size_t n)
{
    if (src == NULL || n == 0) {
        return 0;
    }
    return ZSTD_getDictID_fromFrame(src, n);
}

static int zdec_map_error(size_t r)
{
    switch (ZSTD_getErrorCode(r)) {
    case ZSTD_error_memory_allocation:
        return BB_ENOMEM;
    case ZSTD_error_frameParameter_windowTooLarge:
        return BB_ETOOBIG;
    default:
        return BB_EINVAL;
    }
}

/* Makes the buffer hold at least need bytes (need <= max_out, or 1). */
static int zdec_reserve(struct bb_zdec *z, size_t need)
{
    size_t cap;
    uint8_t *buf;

    if (need <= z->cap) {
        return 0;
    }
    cap = z->cap > z->max_out / 2 ? z->max_out : z->cap * 2;
    if (cap < ZDEC_MIN_BUF) {
        cap = ZDEC_MIN_BUF < z->max_out ? ZDEC_MIN_BUF : z->max_out;
    }
    if (cap < need) {
        cap = need;
    }
    buf = realloc(z->buf, cap);
    if (buf == NULL) {
        return BB_ENOMEM;
    }
    z->buf = buf;
    z->cap = cap;
    return 0;
}

/* RFC 8878 frame header: magic, then the descriptor byte; bit 2 = checksum. */
static bool frame_has_checksum(const uint8_t *p, size_t n)
{
    uint32_t magic;

    if (n < 5) {
        return false;
    }
    magic = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return magic == ZSTD_MAGICNUMBER && (p[4] & 0x04) != 0;
}

static int zdec_known_size(struct bb_zdec *z, const void *src, size_t n, size_t size)
{
    size_t r;
    int rc;

    rc = zdec_reserve(z, size > 0 ? size : 1);
    if (rc != 0) {
        return rc;
    }
    r = ZSTD_decompressDCtx(z->dctx, z->buf, size, src, n);
    if (ZSTD_isError(r)) {
        return zdec_map_error(r);
    }
    return r == size ? 0 : BB_EINVAL;
}

/* Unknown content size: stream into a buffer that grows up to max_out. */
static int zdec_streaming(struct bb_zdec *z, const void *src, size_t n, size_t *size)
{
    ZSTD_inBuffer in = {src, n, 0};
    ZSTD_outBuffer out;
    int rc;

    rc = zdec_reserve(z,
                      z->max_out < ZDEC_MIN_BUF ? (z->max_out > 0 ? z->max_out : 1) : ZDEC_MIN_BUF);
    if (rc != 0) {
        return rc;
    }
    out = (ZSTD_outBuffer){z->buf, z->cap < z->max_out ? z->cap : z->max_out, 0};
    for (;;) {
        size_t in_pos = in.pos, out_pos = out.pos, r;

        if (out.pos == out.size && out.size < z->max_out) {
            rc = zdec_reserve(z, out.size + 1);
            if (rc != 0) {
                return rc;
            }
            out.dst = z->buf;
            out.size = z->cap < z->max_out ? z->cap : z->max_out;
        }
        r = ZSTD_decompressStream(z->dctx, &out, &in);
        if (ZSTD_isError(r)) {
            return zdec_map_error(r);
        }
        if (r == 0) {
            break; /* frame complete, checksum verified */
        }
        if (in.pos == in_pos && out.pos == out_pos) {
            /* Stuck: the output is full at max_out, or the input ended early. */
            return out.pos == out.size ? BB_ETOOBIG : BB_EINVAL;
        }
    }
    if (in.pos != in.size) {
        return BB_EINVAL;
    }
    *size = out.pos;
    return 0;
}

int bb_zdec_decompress(struct bb_zdec *z, const struct bb_zdict *dict, const void *src, size_t n,
                       const uint8_t **out, size_t *outlen)
{
    unsigned long long content;
    size_t fsize, size = 0;
    int rc;

    if (out != NULL) {
        *out = NULL;
    }
    if (outlen != NULL) {
        *outlen = 0;
    }
    if (z == NULL || src == NULL || out == NULL || outlen == NULL) {
        return BB_EINVAL;
    }
    if (!frame_has_checksum(src, n)) {
        return BB_EINVAL;
    }
    if (ZSTD_getDictID_fromFrame(src, n) != bb_zdict_id(dict)) {
        return BB_EINVAL;
    }
    fsize = ZSTD_findFrameCompressedSize(src, n);
    if (ZSTD_isError(fsize) || fsize != n) {
        return BB_EINVAL; /* truncated, or something after the frame */
    }
    content = ZSTD_getFrameContentSize(src, n);
    if (content == ZSTD_CONTENTSIZE_ERROR) {
        return BB_EINVAL;
    }
    if (content != ZSTD_CONTENTSIZE_UNKNOWN && content > z->max_out) {
        return BB_ETOOBIG;
    }
    if (ZSTD_isError(ZSTD_DCtx_reset(z->dctx, ZSTD_reset_session_only)) ||
        ZSTD_isError(ZSTD_DCtx_refDDict(z->dctx, dict != NULL ? dict->ddict : NULL))) {
        return BB_EINVAL;
    }
    if (content != ZSTD_CONTENTSIZE_UNKNOWN) {
        size = (size_t)content;
        rc = zdec_known_size(z, src, n, size);
    } else {
        rc = zdec_streaming(z, src, n, &size);
    }
    if (rc != 0) {
        return rc;
    }
    *out = z->buf;
    *outlen = size;
    return 0;
}

/* ---- delivery ids and UTF-8 -------------------------------------------- */

size_t bb_delivery_id(char *buf, size_t cap, const char *notification_key, int channel,
                      uint64_t recipient)
{
    int n;

    if (buf == NULL || cap == 0) {
        return 0;
    }
    buf[0] = '\0';
    if (notification_key == NULL) {
        return 0;
    }
    n = snprintf(buf, cap, "%s:%d:%llu", notification_key, channel, (unsigned long long)recipient);
    if (n < 0 || (size_t)n >= cap) {
        buf[0] = '\0';
        return 0;
    }
    return (size_t)n;
}

bool bb_utf8_is_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *end;

    if (s == NULL) {
        return n == 0;
    }
    end = p + n;
    while (p < end) {
        unsigned char c;
        unsigned lo = 0x80, hi = 0xBF;
        size_t more;

        /* ASCII fast path, eight bytes at a time. */
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, sizeof(w));
            if ((w & 0x8080808080808080ull) != 0) {
                break;
            }
            p += 8;
        }
        if (p == end) {
            break;
        }
        c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        /* RFC 3629 section 4: the second byte's range depends on the first. */
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c == 0xE0) {
            more = 2;
            lo = 0xA0; /* no overlongs */
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            more = 2;
        } else if (c == 0xED) {
            more = 2;
            hi = 0x9F; /* no surrogates */
        } else if (c == 0xF0) {
            more = 3;
            lo = 0x90; /* no overlongs */
        } else if (c >= 0xF1 && c <= 0xF3) {
            more = 3;
        } else if (c == 0xF4) {
            more = 3;
            hi = 0x8F; /* <= U+10FFFF */
        } else {
            return false; /* continuation byte, C0, C1 or F5..FF */
        }
        if ((size_t)(end - p) <= more || p[1] < lo || p[1] > hi) {
            return false;
        }
        for (size_t i = 2; i <= more; i++) {
            if ((p[i] & 0xC0) != 0x80) {
                return false;
            }
        }
        p += more + 1;
    }
    return true;
}
