/* What a bb:out entry and the notification in it must be before the worker
 * hands anything of them to a plug-in. Shared with the fuzz targets
 * (tests/fuzz), which feed the worker's input path.
 *
 * Threads: any (pure functions). */
#include <string.h>

#include "delivery.pb-c.h"
#include "host.h"
#include "wire.h"

bool bb_entry_key_valid(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > 80) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (key[i] < 0x21 || key[i] > 0x7e) {
            return false;
        }
    }
    return true;
}

bool bb_notification_valid(const struct Bb__Notification *n)
{
    const char *strs[] = {n->report_id, n->status_id, n->locale, n->title,
                          n->text,      n->author,    n->cell,   n->group_name};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        if (!bb_utf8_is_valid(strs[i], strlen(strs[i]))) {
            return false;
        }
    }
    for (size_t i = 0; i < n->n_media; i++) {
        if (!n->media[i] || !bb_utf8_is_valid(n->media[i]->url, strlen(n->media[i]->url)) ||
            !bb_utf8_is_valid(n->media[i]->mime_type, strlen(n->media[i]->mime_type))) {
            return false;
        }
    }
    return true;
}
