/* Fuzz target: the worker host's input path (workers/host/stream.c) for a
 * bb:out:* entry — DeliveryBatch decoding, the notification key check
 * (printable ASCII, at most 80 bytes), the frame's dictionary id,
 * decompression (with the fuzzers' dictionary when the frame names it, else
 * none; at most 256 KiB out), Notification decoding, UTF-8 of every string,
 * a delivery id per recipient. Every input is also tried as a bare zstd
 * frame of a Notification (the half after the batch is unwrapped), and as a
 * PendingDelivery (a bb:later retry job, notification uncompressed).
 *
 * Threads: libFuzzer's one thread (the decompression context belongs to it). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "delivery.pb-c.h"
#include "fuzz_common.h"
#include "wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct bb_zdict *dict;
static struct bb_zdec *zdec;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    dict = fuzz_dict_new();
    zdec = bb_zdec_new(FUZZ_MAX_OUT);
    if (!zdec) {
        fuzz_fail("bb_zdec_new");
    }
    return 0;
}

static void pending(const uint8_t *data, size_t size)
{
    Bb__PendingDelivery *pd = bb__pending_delivery__unpack(NULL, size, data);
    if (!pd) {
        return;
    }
    Bb__Notification *n =
        bb__notification__unpack(NULL, pd->notification.len, pd->notification.data);
    if (n) {
        bool ok = bb_utf8_is_valid(n->text, strlen(n->text)) &&
                  bb_utf8_is_valid(n->title, strlen(n->title));
        char did[192];
        if (ok && bb_delivery_id(did, sizeof(did), pd->notification_key, (int)pd->channel,
                                 pd->recipient) > sizeof(did)) {
            fuzz_fail("bb_delivery_id longer than its buffer");
        }
        bb__notification__free_unpacked(n, NULL);
    }
    bb__pending_delivery__free_unpacked(pd, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t recipients[] = {1001, 0, UINT64_MAX};
    (void)fuzz_worker_take(zdec, dict, data, size);
    (void)fuzz_worker_decode(zdec, dict, data, size, "r:fuzz-1", (int)(size % 7) - 1, recipients,
                             sizeof(recipients) / sizeof(recipients[0]));
    pending(data, size);
    return 0;
}
