/* Fuzz target: the broker's input path for a bb:report-status entry, as
 * broker/dispatch.c runs it — ReportStatus decoding, validation, routing to
 * the reporter and the report's followers, encoding — and then the worker's
 * checks on every entry written. Invariants: an update the broker accepts is
 * routed and encoded without error (anything else is retried for ever), and
 * every entry it writes is one the worker delivers.
 *
 * Threads: libFuzzer's one thread (the router and the encoder belong to it). */
#include <stddef.h>
#include <stdint.h>

#include "bb_err.h"
#include "directory.h"
#include "fuzz_common.h"
#include "output.h"
#include "route.h"
#include "validate.h"
#include "wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct bb_dir *dir;
static struct bb_router *router;
static struct bb_encoder *enc[2]; /* without and with the dictionary */
static struct bb_zdict *dict;
static struct bb_zdec *zdec;
static struct bb_out out;
static struct bb_explain ex;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    dir = fuzz_dir_new();
    router = bb_router_new(dir);
    dict = fuzz_dict_new();
    enc[0] = bb_encoder_new(3, 1);
    enc[1] = bb_encoder_new(3, 100);
    zdec = bb_zdec_new(FUZZ_MAX_OUT);
    if (!router || !enc[0] || !enc[1] || !zdec) {
        fuzz_fail("set-up");
    }
    bb_encoder_set_dict(enc[1], dict);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Bb__ReportStatus *st = bb__report_status__unpack(NULL, size, data);
    if (!st) {
        return 0;
    }
    if (bb_validate_status(st, &fuzz_limits) != NULL) {
        bb__report_status__free_unpacked(st, NULL);
        return 0;
    }
    const struct bb_route_result *res;
    int rc = bb_route_status(router, st, size % 2 ? &ex : NULL, &res);
    if (rc != BB_OK) {
        fuzz_fail("bb_route_status on a valid update: %d", rc);
    }
    bb_out_reset(&out);
    rc = bb_encode_status(enc[size % 3 == 0], dir, st, res, 1767229200000, &out);
    if (rc != BB_OK) {
        fuzz_fail("bb_encode_status on a routed update: %d", rc);
    }
    for (uint32_t i = 0; i < out.n; i++) {
        const char *why = fuzz_worker_take(zdec, dict, out.buf + out.e[i].off, out.e[i].len);
        if (why) {
            fuzz_fail("entry %u of status '%s' for %s: the worker says %s", i, st->id,
                      bb_out_stream(out.e[i].channel), why);
        }
    }
    bb__report_status__free_unpacked(st, NULL);
    return 0;
}
