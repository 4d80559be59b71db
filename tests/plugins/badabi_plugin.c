/* A test plug-in that claims a future ABI version: the host must refuse it
 * with a clear log line. */
#include "buurtbus/channel.h"

static const struct bb_channel badabi_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION + 1,
    .name = "badabi",
    .description = "test: built for an ABI the host does not speak",
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return &badabi_channel;
}
