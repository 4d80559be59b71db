/* hello: a complete buurtbus channel plug-in, small enough to read in one
 * sitting. It "delivers" by writing one log line per delivery through the
 * host, and renders a delivery as "title: text" for tests.
 *
 * It includes the installed ABI header and nothing else of buurtbus. Every
 * callback runs on the host's event-loop thread. */
#include <buurtbus/channel.h>

#include <stdio.h>
#include <string.h>

struct hello {
    const struct bb_host_api *host; /* borrowed for the plug-in's lifetime */
    char greeting[64];
};

static const struct bb_channel_option options[] = {
    {"greeting", BB_OPTION_STRING, "hello", "word that starts every log line"},
    {NULL, 0, NULL, NULL},
};

static int hello_init(const struct bb_host_api *host, const struct bb_channel_config *cfg,
                      void **ctx, char *err, size_t errlen)
{
    struct hello *h = host->alloc(sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->host = host;
    snprintf(h->greeting, sizeof(h->greeting), "%s", cfg->value(cfg, "greeting"));
    *ctx = h;
    return 0;
}

static int hello_send(void *ctx, const struct bb_delivery *d, bb_send_done_fn *done, void *token)
{
    struct hello *h = ctx;
    /* Ids and titles only: never addresses, tokens or message text in logs. */
    h->host->log(h->host->host, BB_PLUGIN_INFO, "delivered", "greeting=%s delivery=%s title=\"%s\"",
                 h->greeting, d->delivery_id, d->n->title);
    done(token, BB_SEND_OK, 0, NULL); /* may complete before send() returns */
    return 0;
}

static int hello_format(void *ctx, const struct bb_delivery *d, char **out, size_t *outlen)
{
    struct hello *h = ctx;
    size_t n = strlen(d->n->title) + strlen(d->n->text) + 3;
    char *s = h->host->alloc(n);
    if (!s) {
        return -1;
    }
    snprintf(s, n, "%s: %s", d->n->title, d->n->text);
    *out = s;
    *outlen = n - 1;
    return 0;
}

static void hello_destroy(void *ctx)
{
    struct hello *h = ctx;
    if (h) {
        h->host->free(h);
    }
}

static const struct bb_channel hello_channel = {
    .struct_size = sizeof(struct bb_channel),
    .abi_version = BB_CHANNEL_ABI_VERSION,
    .name = "hello",
    .description = "logs one line per delivery (the plug-in guide's example)",
    .caps = BB_CAP_BATCH,
    .options = options,
    .init = hello_init,
    .send = hello_send,
    .format = hello_format,
    .destroy = hello_destroy,
};

BB_CHANNEL_EXPORT const struct bb_channel *bb_channel_entry(uint32_t host_abi)
{
    return host_abi == BB_CHANNEL_ABI_VERSION ? &hello_channel : NULL;
}
