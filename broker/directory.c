/* The routing index (see directory.h for the threading contract).
 *
 * Everything is built from two mechanisms:
 *   - a table: slots in copy-on-write chunks of 256 elements, found by id
 *     through an open-addressing map of slot numbers (4 bytes a bucket, the
 *     key read back from the element), with freed slots reused only after an
 *     epoch grace period;
 *   - struct bb_slots: an immutable sorted array of slots, replaced whole.
 * Users are 32-byte elements of a table; groups, cells, mutes and follows are
 * pointers in tables. Retired memory goes through ck_epoch. */
#include "directory.h"

#include <ck_epoch.h>
#include <ck_pr.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "directory.pb-c.h"
#include "log.h"
#include "tsan.h"
#include "tz.h"

#define CHUNK_SHIFT 8
#define CHUNK_LEN (1u << CHUNK_SHIFT)
#define MAP_EMPTY 0u
#define MAP_TOMB UINT32_MAX
#define DEFAULT_ZONE "Europe/Amsterdam"
#define ZONE_WINDOW_BEFORE (2 * 86400LL)
#define ZONE_WINDOW_AFTER (3 * 366 * 86400LL)

/* ---- epoch retirement -------------------------------------------------------------------- */

struct retired {
    ck_epoch_entry_t ep;
    void (*fn)(void *ctx, void *ptr);
    void *ctx;
    void *ptr;
};

struct chunkdir {
    uint32_t n;
    void *c[];
};

/* Any size, not only powers of two, so the map can be sized to its load:
 * a bucket is picked by multiply-shift instead of a mask. */
struct slotmap {
    uint32_t size;
    uint32_t b[];
};

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline uint32_t map_home(const struct slotmap *m, uint64_t key)
{
    return (uint32_t)(((mix64(key) >> 32) * (uint64_t)m->size) >> 32);
}

static inline uint32_t map_next(const struct slotmap *m, uint32_t h)
{
    return h + 1 == m->size ? 0 : h + 1;
}

struct table {
    struct bb_dir *dir;
    size_t esz;
    bool ptrs;                            /* elements are pointers to objects */
    uint64_t (*key_of)(const void *item); /* of an element, or of an object; 0: empty */
    struct chunkdir *chunks;              /* published */
    struct slotmap *map;                  /* published */
    uint32_t nslots;                      /* slots ever handed out */
    uint32_t used, tombs;
    uint32_t *free;
    uint32_t nfree, freecap;
};

struct mute_ent {
    uint64_t author_id;
    struct bb_slots *users;
};

struct follow_ent {
    uint64_t hash;
    char *report_id;
    struct bb_slots *users;
};

/* Writer-only: what a user muted, so an upsert can undo the previous set. */
struct umute_ent {
    uint64_t user_id;
    uint32_t nauthors, ngroups;
    uint64_t ids[]; /* authors, then groups */
};

struct bb_dir {
    struct bb_dir_params params;
    ck_epoch_t epoch;
    ck_epoch_record_t wrec;
    unsigned nreaders;
    struct bb_dir_reader *readers; /* every reader ever made, for bb_dir_free */
    struct table users, groups, cells, mutes, follows, umutes;
    struct chunkdir *caps; /* _Atomic uint32_t[CHUNK_LEN] per chunk */
    uint32_t cell_prec_count[BB_GEOHASH_MAX_PRECISION + 1];
    uint32_t cell_precisions;
    size_t memberships, watch_cells, nmutes, nfollows;
    char *locales[BB_LOCALES_MAX];
    unsigned nlocales;
    struct bb_tz *zones[BB_ZONES_MAX];
    unsigned nzones;
};

/* ck_epoch never forgets a record: an unregistered one stays in its list
 * for ck_epoch_recycle. So readers are never freed before the directory;
 * a freed reader's record is recycled by the next bb_dir_reader_new. */
struct bb_dir_reader {
    ck_epoch_record_t rec; /* first: recycled records map back to readers */
    struct bb_dir *dir;
    ck_epoch_section_t section;
    struct bb_dir_reader *next_all;
};

/* ThreadSanitizer does not see the fences inside Concurrency Kit (inline
 * assembly), so it takes a free after the grace period for a race with the
 * readers' sections. These annotations state what ck_epoch guarantees: every
 * read section that ended happens before a retired object is freed. */
static char tsan_grace; /* the synchronisation object */
#define TSAN_SECTION_ENDED() BB_TSAN_RELEASE(&tsan_grace)
#define TSAN_GRACE_PASSED() BB_TSAN_ACQUIRE(&tsan_grace)

static void retired_cb(ck_epoch_entry_t *e)
{
    TSAN_GRACE_PASSED();
    struct retired *r = (struct retired *)e;
    r->fn(r->ctx, r->ptr);
    free(r);
}

static void free_ptr(void *ctx, void *ptr)
{
    free(ptr);
}

/* Hands ptr to fn once no reader can see it. Without readers, at once. */
static void retire(struct bb_dir *dir, void *ptr, void (*fn)(void *, void *), void *ctx)
{
    if (!ptr) {
        return;
    }
    if (dir->nreaders == 0) {
        fn(ctx, ptr);
        return;
    }
    struct retired *r = malloc(sizeof(*r));
    if (!r) {
        /* Leaking beats freeing under a reader. */
        bb_error("retire: out of memory, leaking", NULL);
        return;
    }
    r->fn = fn;
    r->ctx = ctx;
    r->ptr = ptr;
    ck_epoch_call(&dir->wrec, &r->ep, retired_cb);
}

static void retire_mem(struct bb_dir *dir, void *ptr)
{
    retire(dir, ptr, free_ptr, NULL);
}

/* Publication: a release store orders the object's initialisation before
 * the pointer that makes it reachable; readers load with acquire. */
#define publish(field, value)                                                                      \
    atomic_store_explicit((_Atomic(void *) *)&(field), (value), memory_order_release)
#define fetch(field) atomic_load_explicit((_Atomic(void *) *)&(field), memory_order_acquire)

/* ---- slots ------------------------------------------------------------------------------- */

static size_t slots_size(uint32_t n)
{
    return sizeof(struct bb_slots) + (size_t)n * sizeof(uint32_t);
}

static uint32_t slots_pos(const struct bb_slots *s, uint32_t slot)
{
    uint32_t lo = 0, hi = s ? s->n : 0;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (s->v[mid] < slot) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

bool bb_slots_has(const struct bb_slots *s, uint32_t slot)
{
    uint32_t p = slots_pos(s, slot);
    return s && p < s->n && s->v[p] == slot;
}

/* A copy of s with slot added (*out = NULL and 0 if it was there). */
static int slots_with(const struct bb_slots *s, uint32_t slot, struct bb_slots **out)
{
    *out = NULL;
    uint32_t n = s ? s->n : 0, p = slots_pos(s, slot);
    if (p < n && s->v[p] == slot) {
        return BB_OK;
    }
    struct bb_slots *t = malloc(slots_size(n + 1));
    if (!t) {
        return BB_ENOMEM;
    }
    t->n = n + 1;
    t->cap = n + 1;
    if (p) {
        memcpy(t->v, s->v, p * sizeof(uint32_t));
    }
    t->v[p] = slot;
    if (n > p) {
        memcpy(t->v + p + 1, s->v + p, (n - p) * sizeof(uint32_t));
    }
    *out = t;
    return BB_OK;
}

/* A copy of s without slot; *changed says whether it was there. An empty
 * result is NULL. */
static int slots_without(const struct bb_slots *s, uint32_t slot, struct bb_slots **out,
                         bool *changed)
{
    *out = NULL;
    *changed = false;
    uint32_t p = slots_pos(s, slot);
    if (!s || p >= s->n || s->v[p] != slot) {
        return BB_OK;
    }
    *changed = true;
    if (s->n == 1) {
        return BB_OK;
    }
    struct bb_slots *t = malloc(slots_size(s->n - 1));
    if (!t) {
        return BB_ENOMEM;
    }
    t->n = s->n - 1;
    t->cap = t->n;
    memcpy(t->v, s->v, p * sizeof(uint32_t));
    memcpy(t->v + p, s->v + p + 1, (s->n - p - 1) * sizeof(uint32_t));
    *out = t;
    return BB_OK;
}

/* Without readers a list grows in place, doubling: building an index of
 * millions must not copy a 5,000-member list per member. */
static int field_add_unshared(struct bb_slots **field, uint32_t slot)
{
    struct bb_slots *s = *field;
    uint32_t n = s ? s->n : 0, p = slots_pos(s, slot);
    if (p < n && s->v[p] == slot) {
        return BB_OK;
    }
    if (!s || s->n == s->cap) {
        uint32_t cap = s ? s->cap * 2 : 4;
        struct bb_slots *g = realloc(s, slots_size(cap));
        if (!g) {
            return BB_ENOMEM;
        }
        g->n = n;
        g->cap = cap;
        s = g;
    }
    memmove(s->v + p + 1, s->v + p, (n - p) * sizeof(uint32_t));
    s->v[p] = slot;
    s->n = n + 1;
    *field = s;
    return BB_OK;
}

/* Adds slot to the slots published at *field. */
static int field_add(struct bb_dir *dir, struct bb_slots **field, uint32_t slot)
{
    if (dir->nreaders == 0) {
        return field_add_unshared(field, slot);
    }
    struct bb_slots *old = fetch(*field), *nw;
    int rc = slots_with(old, slot, &nw);
    if (rc != BB_OK || !nw) {
        return rc;
    }
    publish(*field, nw);
    retire_mem(dir, old);
    return BB_OK;
}

static int field_remove(struct bb_dir *dir, struct bb_slots **field, uint32_t slot, bool *changed)
{
    struct bb_slots *old = fetch(*field), *nw;
    bool ch;
    int rc = slots_without(old, slot, &nw, &ch);
    if (changed) {
        *changed = ch;
    }
    if (rc != BB_OK || !ch) {
        return rc;
    }
    publish(*field, nw);
    retire_mem(dir, old);
    return BB_OK;
}

/* ---- tables ------------------------------------------------------------------------------ */

static void table_init(struct table *t, struct bb_dir *dir, size_t esz, bool ptrs,
                       uint64_t (*key_of)(const void *))
{
    memset(t, 0, sizeof(*t));
    t->dir = dir;
    t->esz = esz;
    t->ptrs = ptrs;
    t->key_of = key_of;
}

static inline void *table_at(const struct table *t, uint32_t slot)
{
    struct chunkdir *cd = fetch(((struct table *)t)->chunks);
    if (!cd || (slot >> CHUNK_SHIFT) >= cd->n) {
        return NULL;
    }
    char *c = fetch(cd->c[slot >> CHUNK_SHIFT]);
    return c ? c + (size_t)(slot & (CHUNK_LEN - 1)) * t->esz : NULL;
}

/* For pointer tables: the object in a slot. */
static inline void *table_obj(const struct table *t, uint32_t slot)
{
    void **p = table_at(t, slot);
    return p ? fetch(*p) : NULL;
}

/* What a slot holds: the element itself, or for pointer tables the object
 * it points to (loaded once). */
static inline void *table_item(const struct table *t, uint32_t slot)
{
    void *e = table_at(t, slot);
    return e && t->ptrs ? fetch(*(void **)e) : e;
}

/* The item with this key, and its slot. Returns the very item whose key was
 * checked: a reader must not load the slot a second time, since the writer
 * may have replaced it in between. */
static void *table_get(const struct table *t, uint64_t key, uint32_t *slot)
{
    const struct slotmap *m = fetch(((struct table *)t)->map);
    if (!m || key == 0) {
        return NULL;
    }
    for (uint32_t h = map_home(m, key);; h = map_next(m, h)) {
        uint32_t v = atomic_load_explicit((_Atomic uint32_t *)&m->b[h], memory_order_acquire);
        if (v == MAP_EMPTY) {
            return NULL;
        }
        if (v == MAP_TOMB) {
            continue;
        }
        void *item = table_item(t, v - 1);
        if (item && t->key_of(item) == key) {
            if (slot) {
                *slot = v - 1;
            }
            return item;
        }
    }
}

static bool table_find(const struct table *t, uint64_t key, uint32_t *slot)
{
    return table_get(t, key, slot) != NULL;
}

static void map_put(struct slotmap *m, uint64_t key, uint32_t slot, bool *reused_tomb)
{
    uint32_t h = map_home(m, key);
    for (;; h = map_next(m, h)) {
        uint32_t v = m->b[h];
        if (v == MAP_EMPTY || v == MAP_TOMB) {
            if (reused_tomb) {
                *reused_tomb = v == MAP_TOMB;
            }
            atomic_store_explicit((_Atomic uint32_t *)&m->b[h], slot + 1, memory_order_release);
            return;
        }
    }
}

static int map_grow(struct table *t)
{
    uint64_t want = (uint64_t)(t->used + 1) * 8 / 5 + 16; /* load ~0.62 after a grow */
    if (want > UINT32_MAX - 1) {
        return BB_EFULL;
    }
    struct slotmap *m = calloc(1, sizeof(*m) + (size_t)want * sizeof(uint32_t));
    if (!m) {
        return BB_ENOMEM;
    }
    m->size = (uint32_t)want;
    struct slotmap *old = t->map;
    if (old) {
        for (uint32_t i = 0; i < old->size; i++) {
            uint32_t v = old->b[i];
            if (v != MAP_EMPTY && v != MAP_TOMB) {
                map_put(m, t->key_of(table_item(t, v - 1)), v - 1, NULL);
            }
        }
    }
    t->tombs = 0;
    publish(t->map, m);
    retire_mem(t->dir, old);
    return BB_OK;
}

static int chunks_ensure(struct bb_dir *dir, struct chunkdir **cdp, uint32_t slot,
                         size_t chunk_bytes)
{
    uint32_t ci = slot >> CHUNK_SHIFT;
    struct chunkdir *cd = *cdp;
    if (!cd || ci >= cd->n) {
        uint32_t n = cd ? cd->n : 0, nn = n ? n : 4;
        while (nn <= ci) {
            nn *= 2;
        }
        struct chunkdir *ncd = calloc(1, sizeof(*ncd) + nn * sizeof(void *));
        if (!ncd) {
            return BB_ENOMEM;
        }
        ncd->n = nn;
        if (cd) {
            memcpy(ncd->c, cd->c, n * sizeof(void *));
        }
        publish(*cdp, ncd);
        retire_mem(dir, cd);
        cd = ncd;
    }
    if (!cd->c[ci]) {
        void *c = calloc(1, chunk_bytes);
        if (!c) {
            return BB_ENOMEM;
        }
        publish(cd->c[ci], c);
    }
    return BB_OK;
}

/* Writes elem into slot: in place while no reader exists, else by
 * replacing the slot's chunk. */
static int table_write(struct table *t, uint32_t slot, const void *elem)
{
    int rc = chunks_ensure(t->dir, &t->chunks, slot, CHUNK_LEN * t->esz);
    if (rc != BB_OK) {
        return rc;
    }
    struct chunkdir *cd = t->chunks;
    char *c = cd->c[slot >> CHUNK_SHIFT];
    size_t off = (size_t)(slot & (CHUNK_LEN - 1)) * t->esz;
    if (t->dir->nreaders == 0) {
        memcpy(c + off, elem, t->esz);
        return BB_OK;
    }
    char *nc = malloc(CHUNK_LEN * t->esz);
    if (!nc) {
        return BB_ENOMEM;
    }
    memcpy(nc, c, CHUNK_LEN * t->esz);
    memcpy(nc + off, elem, t->esz);
    publish(cd->c[slot >> CHUNK_SHIFT], nc);
    retire_mem(t->dir, c);
    return BB_OK;
}

/* Pointer tables swap one pointer in place: an aligned pointer store is atomic. */
static int table_write_ptr(struct table *t, uint32_t slot, void *obj)
{
    int rc = chunks_ensure(t->dir, &t->chunks, slot, CHUNK_LEN * sizeof(void *));
    if (rc != BB_OK) {
        return rc;
    }
    void **p = (void **)((char *)t->chunks->c[slot >> CHUNK_SHIFT] +
                         (size_t)(slot & (CHUNK_LEN - 1)) * sizeof(void *));
    publish(*p, obj);
    return BB_OK;
}

static int table_alloc_slot(struct table *t, uint32_t *slot)
{
    if (t->nfree) {
        *slot = t->free[--t->nfree];
        return BB_OK;
    }
    if (t->nslots == UINT32_MAX - 1) {
        return BB_EFULL;
    }
    *slot = t->nslots++;
    return BB_OK;
}

/* Makes key findable at slot (the element must already hold key). */
static int table_index(struct table *t, uint64_t key, uint32_t slot)
{
    if (!t->map || (uint64_t)(t->used + t->tombs + 1) * 4 > (uint64_t)t->map->size * 3) {
        int rc = map_grow(t);
        if (rc != BB_OK) {
            return rc;
        }
    }
    bool tomb = false;
    map_put(t->map, key, slot, &tomb);
    t->used++;
    if (tomb) {
        t->tombs--;
    }
    return BB_OK;
}

/* Puts a new object under key in a pointer table. On failure nothing is
 * indexed and the caller still owns obj. */
static int table_insert_ptr(struct table *t, uint64_t key, void *obj, uint32_t *slot)
{
    int rc = table_alloc_slot(t, slot);
    if (rc == BB_OK) {
        rc = table_write_ptr(t, *slot, obj);
    }
    if (rc == BB_OK) {
        rc = table_index(t, key, *slot);
    }
    if (rc != BB_OK && *slot < t->nslots) {
        table_write_ptr(t, *slot, NULL);
    }
    return rc;
}

static void slot_free_cb(void *ctx, void *ptr)
{
    struct table *t = ctx;
    uint32_t slot = (uint32_t)(uintptr_t)ptr - 1;
    if (t->nfree == t->freecap) {
        uint32_t nc = t->freecap ? t->freecap * 2 : 64;
        uint32_t *f = realloc(t->free, nc * sizeof(*f));
        if (!f) {
            return; /* the slot stays unused: a small leak, never a wrong reuse */
        }
        t->free = f;
        t->freecap = nc;
    }
    t->free[t->nfree++] = slot;
}

/* Removes key from the map; the slot is reused after a grace period. The
 * caller has already emptied the element. */
static void table_unindex(struct table *t, uint64_t key, uint32_t slot)
{
    struct slotmap *m = t->map;
    if (!m) {
        return;
    }
    for (uint32_t h = map_home(m, key);; h = map_next(m, h)) {
        uint32_t v = m->b[h];
        if (v == MAP_EMPTY) {
            return;
        }
        if (v == slot + 1) {
            atomic_store_explicit((_Atomic uint32_t *)&m->b[h], MAP_TOMB, memory_order_release);
            t->used--;
            t->tombs++;
            retire(t->dir, (void *)(uintptr_t)(slot + 1), slot_free_cb, t);
            return;
        }
    }
}

static void table_destroy(struct table *t, void (*free_obj)(void *))
{
    struct chunkdir *cd = t->chunks;
    if (cd) {
        for (uint32_t i = 0; i < cd->n; i++) {
            if (cd->c[i] && free_obj) {
                void **p = cd->c[i];
                for (uint32_t j = 0; j < CHUNK_LEN; j++) {
                    if (p[j]) {
                        free_obj(p[j]);
                    }
                }
            }
            free(cd->c[i]);
        }
    }
    free(cd);
    free(t->map);
    free(t->free);
}

static uint64_t user_key(const void *e)
{
    return ((const struct bb_user *)e)->id;
}

static uint64_t group_key(const void *o)
{
    return ((const struct bb_group *)o)->id;
}

static uint64_t cell_key(const void *o)
{
    return ((const struct bb_cellent *)o)->code;
}

static uint64_t mute_key(const void *o)
{
    return ((const struct mute_ent *)o)->author_id;
}

static uint64_t follow_key(const void *o)
{
    return ((const struct follow_ent *)o)->hash;
}

static uint64_t umute_key(const void *o)
{
    return ((const struct umute_ent *)o)->user_id;
}

/* ---- construction ------------------------------------------------------------------------ */

static int locale_index(struct bb_dir *dir, const char *name, unsigned *idx)
{
    if (!name || !*name) {
        *idx = 0;
        return BB_OK;
    }
    size_t len = strlen(name);
    if (len > 15) {
        return BB_EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_')) {
            return BB_EINVAL;
        }
    }
    for (unsigned i = 0; i < dir->nlocales; i++) {
        if (strcasecmp(dir->locales[i], name) == 0) {
            *idx = i;
            return BB_OK;
        }
    }
    if (dir->nlocales == BB_LOCALES_MAX) {
        return BB_EFULL;
    }
    char *copy = strdup(name);
    if (!copy) {
        return BB_ENOMEM;
    }
    for (char *p = copy; *p; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    publish(dir->locales[dir->nlocales], copy);
    *idx = dir->nlocales++;
    return BB_OK;
}

static unsigned zone_index(struct bb_dir *dir, const char *name)
{
    if (!name || !*name) {
        return 0;
    }
    for (unsigned i = 0; i < dir->nzones; i++) {
        if (strcmp(bb_tz_name(dir->zones[i]), name) == 0) {
            return i;
        }
    }
    if (dir->nzones == BB_ZONES_MAX) {
        bb_warn("too many time zones, using the default", "zone=%s", name);
        return 0;
    }
    int64_t now = (int64_t)time(NULL);
    struct bb_tz *tz = bb_tz_load(name, now - ZONE_WINDOW_BEFORE, now + ZONE_WINDOW_AFTER);
    if (!tz) {
        bb_warn("unknown time zone, using the default", "zone=%s", name);
        return 0;
    }
    publish(dir->zones[dir->nzones], tz);
    return dir->nzones++;
}

struct bb_dir *bb_dir_new(const struct bb_dir_params *params)
{
    struct bb_dir *dir = calloc(1, sizeof(*dir));
    if (!dir) {
        return NULL;
    }
    dir->params = *params;
    if (dir->params.default_precision < 1 || dir->params.default_precision > 12) {
        dir->params.default_precision = 7;
    }
    if (dir->params.watch_max_cells < 4) {
        dir->params.watch_max_cells = 4;
    }
    if (dir->params.watch_max_cells > 32) {
        dir->params.watch_max_cells = 32;
    }
    if (dir->params.max_radius_m == 0 || dir->params.max_radius_m > 65535) {
        dir->params.max_radius_m = 65535;
    }
    ck_epoch_init(&dir->epoch);
    ck_epoch_register(&dir->epoch, &dir->wrec, NULL);
    table_init(&dir->users, dir, sizeof(struct bb_user), false, user_key);
    table_init(&dir->groups, dir, sizeof(void *), true, group_key);
    table_init(&dir->cells, dir, sizeof(void *), true, cell_key);
    table_init(&dir->mutes, dir, sizeof(void *), true, mute_key);
    table_init(&dir->follows, dir, sizeof(void *), true, follow_key);
    table_init(&dir->umutes, dir, sizeof(void *), true, umute_key);
    unsigned idx;
    if (locale_index(dir, "nl", &idx) != BB_OK) {
        goto fail;
    }
    int64_t now = (int64_t)time(NULL);
    dir->zones[0] = bb_tz_load(DEFAULT_ZONE, now - ZONE_WINDOW_BEFORE, now + ZONE_WINDOW_AFTER);
    if (!dir->zones[0]) {
        dir->zones[0] = bb_tz_load("UTC", now - ZONE_WINDOW_BEFORE, now + ZONE_WINDOW_AFTER);
        bb_warn("time zone database lacks the default zone, using UTC", "zone=%s", DEFAULT_ZONE);
    }
    if (!dir->zones[0]) {
        goto fail;
    }
    dir->nzones = 1;
    return dir;

fail:
    bb_dir_free(dir);
    return NULL;
}

static void group_free(void *p)
{
    struct bb_group *g = p;
    free(g->members);
    free(g->muted_by);
    free(g->cells);
    free(g->name);
    free(g);
}

static void cell_free(void *p)
{
    struct bb_cellent *c = p;
    free(c->groups);
    free(c->users);
    free(c);
}

static void mute_free(void *p)
{
    struct mute_ent *m = p;
    free(m->users);
    free(m);
}

static void follow_free(void *p)
{
    struct follow_ent *f = p;
    free(f->users);
    free(f->report_id);
    free(f);
}

void bb_dir_free(struct bb_dir *dir)
{
    if (!dir) {
        return;
    }
    /* No reader is in a section now (see directory.h): run every deferred free. */
    ck_epoch_barrier(&dir->wrec);
    table_destroy(&dir->users, NULL);
    table_destroy(&dir->groups, group_free);
    table_destroy(&dir->cells, cell_free);
    table_destroy(&dir->mutes, mute_free);
    table_destroy(&dir->follows, follow_free);
    table_destroy(&dir->umutes, free);
    if (dir->caps) {
        for (uint32_t i = 0; i < dir->caps->n; i++) {
            free(dir->caps->c[i]);
        }
        free(dir->caps);
    }
    for (unsigned i = 0; i < dir->nlocales; i++) {
        free(dir->locales[i]);
    }
    for (unsigned i = 0; i < dir->nzones; i++) {
        bb_tz_free(dir->zones[i]);
    }
    while (dir->readers) {
        struct bb_dir_reader *r = dir->readers;
        dir->readers = r->next_all;
        free(r);
    }
    free(dir);
}

/* ---- compaction (before readers) --------------------------------------------------------- */

static int cap_ensure(struct bb_dir *dir, uint32_t slot);

struct order {
    uint64_t key;
    uint32_t slot;
};

static int order_cmp(const void *a, const void *b)
{
    const struct order *x = a, *y = b;
    if (x->key != y->key) {
        return x->key < y->key ? -1 : 1;
    }
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Renumbers (remap non-NULL) and trims one list. */
static void slots_rewrite(struct bb_slots **field, const uint32_t *remap)
{
    struct bb_slots *s = *field;
    if (!s) {
        return;
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t v = remap ? remap[s->v[i]] : s->v[i];
        if (v != UINT32_MAX) {
            s->v[n++] = v;
        }
    }
    if (remap) {
        qsort(s->v, n, sizeof(uint32_t), u32_cmp);
    }
    s->n = n;
    if (n == 0) {
        free(s);
        *field = NULL;
        return;
    }
    struct bb_slots *t = realloc(s, slots_size(n));
    s = t ? t : s;
    s->cap = n;
    *field = s;
}

static void chunks_free(struct chunkdir *cd)
{
    for (uint32_t i = 0; cd && i < cd->n; i++) {
        free(cd->c[i]);
    }
    free(cd);
}

int bb_dir_compact(struct bb_dir *dir)
{
    if (dir->nreaders) {
        return BB_EINVAL;
    }
    struct table *t = &dir->users;
    uint32_t n = t->nslots, k = 0;
    struct order *ord = malloc((n ? n : 1) * sizeof(*ord));
    uint32_t *remap = malloc((n ? n : 1) * sizeof(*remap));
    struct chunkdir *cd = NULL;
    if (!ord || !remap) {
        goto fail;
    }
    for (uint32_t slot = 0; slot < n; slot++) {
        const struct bb_user *u = table_at(t, slot);
        remap[slot] = UINT32_MAX;
        if (u && u->id) {
            /* People without a watch area go last, in id order. */
            uint64_t key = u->radius_m ? bb_geohash_encode(u->lat, u->lon, 12) : UINT64_MAX;
            ord[k++] = (struct order){key, slot};
        }
    }
    qsort(ord, k, sizeof(*ord), order_cmp);
    uint32_t nchunks = (k + CHUNK_LEN - 1) / CHUNK_LEN;
    cd = calloc(1, sizeof(*cd) + (nchunks ? nchunks : 1) * sizeof(void *));
    if (!cd) {
        goto fail;
    }
    cd->n = nchunks ? nchunks : 1;
    for (uint32_t c = 0; c < cd->n; c++) {
        if (!(cd->c[c] = calloc(CHUNK_LEN, t->esz))) {
            goto fail;
        }
    }
    for (uint32_t i = 0; i < k; i++) {
        remap[ord[i].slot] = i;
        memcpy((char *)cd->c[i >> CHUNK_SHIFT] + (size_t)(i & (CHUNK_LEN - 1)) * t->esz,
               table_at(t, ord[i].slot), t->esz);
    }
    /* From here on nothing can fail but the map, which is rebuilt below. */
    chunks_free(t->chunks);
    t->chunks = cd;
    cd = NULL;
    chunks_free(dir->caps);
    dir->caps = NULL;
    for (uint32_t i = 0; i < k; i += CHUNK_LEN) {
        if (cap_ensure(dir, i) != BB_OK) {
            goto fail_map;
        }
    }
    free(t->map);
    t->map = NULL;
    t->used = t->tombs = 0;
    t->nslots = k;
    t->nfree = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (table_index(t, ((struct bb_user *)table_at(t, i))->id, i) != BB_OK) {
            goto fail_map;
        }
    }
    for (uint32_t gs = 0; gs < dir->groups.nslots; gs++) {
        struct bb_group *g = table_obj(&dir->groups, gs);
        if (g) {
            slots_rewrite(&g->members, remap);
            slots_rewrite(&g->muted_by, remap);
        }
    }
    for (uint32_t cs = 0; cs < dir->cells.nslots; cs++) {
        struct bb_cellent *c = table_obj(&dir->cells, cs);
        if (c) {
            slots_rewrite(&c->users, remap);
            slots_rewrite(&c->groups, NULL);
        }
    }
    for (uint32_t ms = 0; ms < dir->mutes.nslots; ms++) {
        struct mute_ent *m = table_obj(&dir->mutes, ms);
        if (m) {
            slots_rewrite(&m->users, remap);
        }
    }
    for (uint32_t fs = 0; fs < dir->follows.nslots; fs++) {
        struct follow_ent *f = table_obj(&dir->follows, fs);
        if (f) {
            slots_rewrite(&f->users, remap);
        }
    }
    free(ord);
    free(remap);
    return BB_OK;

fail_map:
    /* The records moved but lookups are gone: this index is unusable. */
    bb_error("out of memory while compacting the index", NULL);
fail:
    chunks_free(cd);
    free(ord);
    free(remap);
    return BB_ENOMEM;
}

void bb_dir_reclaim(struct bb_dir *dir)
{
    ck_epoch_poll(&dir->wrec);
}

void bb_dir_reclaim_all(struct bb_dir *dir)
{
    ck_epoch_barrier(&dir->wrec);
}

/* ---- readers ----------------------------------------------------------------------------- */

struct bb_dir_reader *bb_dir_reader_new(struct bb_dir *dir)
{
    ck_epoch_record_t *rec = ck_epoch_recycle(&dir->epoch, NULL);
    if (rec) {
        return (struct bb_dir_reader *)rec;
    }
    struct bb_dir_reader *r = calloc(1, sizeof(*r));
    if (!r) {
        return NULL;
    }
    r->dir = dir;
    r->next_all = dir->readers;
    dir->readers = r;
    ck_epoch_register(&dir->epoch, &r->rec, NULL);
    /* From here on every change goes through copy-on-write. Set by the
     * writer's thread before readers start (see directory.h). */
    dir->nreaders++;
    return r;
}

void bb_dir_reader_free(struct bb_dir_reader *r)
{
    if (!r) {
        return;
    }
    ck_epoch_unregister(&r->rec); /* the memory goes with the directory */
}

void bb_dir_read_begin(struct bb_dir_reader *r)
{
    ck_epoch_begin(&r->rec, &r->section);
}

void bb_dir_read_end(struct bb_dir_reader *r)
{
    TSAN_SECTION_ENDED();
    ck_epoch_end(&r->rec, &r->section);
}

const struct bb_user *bb_dir_user_at(const struct bb_dir *dir, uint32_t slot)
{
    const struct bb_user *u = table_at(&dir->users, slot);
    return u && u->id ? u : NULL;
}

const struct bb_user *bb_dir_user_find(const struct bb_dir *dir, uint64_t id, uint32_t *slot)
{
    return table_get(&dir->users, id, slot);
}

const struct bb_group *bb_dir_group_at(const struct bb_dir *dir, uint32_t slot)
{
    return table_obj(&dir->groups, slot);
}

const struct bb_group *bb_dir_group_find(const struct bb_dir *dir, uint64_t id, uint32_t *slot)
{
    return table_get(&dir->groups, id, slot);
}

const struct bb_cellent *bb_dir_cell_find(const struct bb_dir *dir, bb_cell code)
{
    return table_get(&dir->cells, code, NULL);
}

uint32_t bb_dir_cell_precisions(const struct bb_dir *dir)
{
    return atomic_load_explicit((_Atomic uint32_t *)&dir->cell_precisions, memory_order_acquire);
}

const struct bb_slots *bb_dir_muted_author(const struct bb_dir *dir, uint64_t author_id)
{
    struct mute_ent *m = table_get(&dir->mutes, author_id, NULL);
    return m ? fetch(m->users) : NULL;
}

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a, then mixed */
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    h = mix64(h);
    return h ? h : 1;
}

const struct bb_slots *bb_dir_followers(const struct bb_dir *dir, const char *report_id)
{
    struct follow_ent *f = table_get(&dir->follows, str_hash(report_id), NULL);
    if (!f || strcmp(f->report_id, report_id) != 0) {
        return NULL;
    }
    return fetch(f->users);
}

const struct bb_slots *bb_group_members(const struct bb_group *g)
{
    return fetch(((struct bb_group *)g)->members);
}

const struct bb_slots *bb_group_muted_by(const struct bb_group *g)
{
    return fetch(((struct bb_group *)g)->muted_by);
}

const struct bb_slots *bb_cell_groups(const struct bb_cellent *c)
{
    return fetch(((struct bb_cellent *)c)->groups);
}

const struct bb_slots *bb_cell_users(const struct bb_cellent *c)
{
    return fetch(((struct bb_cellent *)c)->users);
}

bool bb_dir_cap_take(const struct bb_dir *dir, uint32_t slot, uint32_t hour, unsigned max)
{
    struct chunkdir *cd = fetch(((struct bb_dir *)dir)->caps);
    if (!cd || (slot >> CHUNK_SHIFT) >= cd->n || !cd->c[slot >> CHUNK_SHIFT]) {
        return true;
    }
    _Atomic uint32_t *ctr =
        (_Atomic uint32_t *)cd->c[slot >> CHUNK_SHIFT] + (slot & (CHUNK_LEN - 1));
    uint32_t cur = atomic_load_explicit(ctr, memory_order_relaxed);
    for (;;) {
        uint32_t h = hour & 0xffff;
        uint32_t count = (cur >> 16) == h ? (cur & 0xffff) : 0;
        if (count >= max) {
            return false;
        }
        uint32_t next = (h << 16) | (count + 1);
        if (atomic_compare_exchange_weak_explicit(ctr, &cur, next, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            return true;
        }
    }
}

unsigned bb_dir_default_precision(const struct bb_dir *dir)
{
    return dir->params.default_precision;
}

const char *bb_dir_locale_name(const struct bb_dir *dir, unsigned idx)
{
    const char *n = idx < BB_LOCALES_MAX ? fetch(((struct bb_dir *)dir)->locales[idx]) : NULL;
    return n ? n : "nl";
}

const struct bb_tz *bb_dir_zone(const struct bb_dir *dir, unsigned idx)
{
    const struct bb_tz *z = idx < BB_ZONES_MAX ? fetch(((struct bb_dir *)dir)->zones[idx]) : NULL;
    return z ? z : dir->zones[0];
}

/* ---- writer: cells ----------------------------------------------------------------------- */

static void cell_prec_count(struct bb_dir *dir, bb_cell code, int delta)
{
    unsigned p = bb_cell_precision(code);
    dir->cell_prec_count[p] = (uint32_t)((int)dir->cell_prec_count[p] + delta);
    uint32_t mask = 0;
    for (unsigned i = 1; i <= BB_GEOHASH_MAX_PRECISION; i++) {
        if (dir->cell_prec_count[i]) {
            mask |= 1u << i;
        }
    }
    atomic_store_explicit((_Atomic uint32_t *)&dir->cell_precisions, mask, memory_order_release);
}

static int cell_get(struct bb_dir *dir, bb_cell code, bool create, struct bb_cellent **out,
                    uint32_t *slotp)
{
    uint32_t slot;
    *out = NULL;
    if (table_find(&dir->cells, code, &slot)) {
        *out = table_obj(&dir->cells, slot);
        *slotp = slot;
        return BB_OK;
    }
    if (!create) {
        return BB_OK;
    }
    struct bb_cellent *c = calloc(1, sizeof(*c));
    if (!c) {
        return BB_ENOMEM;
    }
    c->code = code;
    int rc = table_insert_ptr(&dir->cells, code, c, &slot);
    if (rc != BB_OK) {
        free(c);
        return rc;
    }
    cell_prec_count(dir, code, +1);
    *out = c;
    *slotp = slot;
    return BB_OK;
}

static void cell_drop_if_empty(struct bb_dir *dir, struct bb_cellent *c, uint32_t slot)
{
    if (c->groups || c->users) {
        return;
    }
    table_write_ptr(&dir->cells, slot, NULL); /* chunk exists: cannot fail */
    table_unindex(&dir->cells, c->code, slot);
    cell_prec_count(dir, c->code, -1);
    retire(dir, c, free_ptr, NULL);
}

/* which: 0 = groups, 1 = users. */
static int cell_add(struct bb_dir *dir, bb_cell code, int which, uint32_t slot)
{
    struct bb_cellent *c;
    uint32_t cs;
    int rc = cell_get(dir, code, true, &c, &cs);
    if (rc != BB_OK) {
        return rc;
    }
    return field_add(dir, which ? &c->users : &c->groups, slot);
}

static void cell_remove(struct bb_dir *dir, bb_cell code, int which, uint32_t slot)
{
    struct bb_cellent *c;
    uint32_t cs;
    if (cell_get(dir, code, false, &c, &cs) != BB_OK || !c) {
        return;
    }
    bool changed;
    if (field_remove(dir, which ? &c->users : &c->groups, slot, &changed) == BB_OK) {
        cell_drop_if_empty(dir, c, cs);
    }
}

/* ---- writer: users ----------------------------------------------------------------------- */

#define WHY(...) (snprintf(why, whylen, __VA_ARGS__), BB_EINVAL)

static bool latlon_ok(double lat, double lon)
{
    return isfinite(lat) && isfinite(lon) && lat >= -90.0 && lat <= 90.0 && lon >= -180.0 &&
           lon <= 180.0;
}

static uint8_t channel_bits(const Bb__ChannelSet *cs, uint8_t def)
{
    if (!cs) {
        return def;
    }
    uint8_t bits = 0;
    for (size_t i = 0; i < cs->n_channels; i++) {
        int c = cs->channels[i];
        if (c >= BB__CHANNEL__CHANNEL_PUSH && c <= BB__CHANNEL__CHANNEL_DIGEST) {
            bits |= (uint8_t)(1u << (c - 1));
        }
    }
    return bits;
}

static int prefs_apply(struct bb_user *u, const Bb__Preferences *p, char *why, size_t whylen)
{
    u->categories = 0xffff;
    u->min_urgency = 1;
    u->chan[0] = BB_CH_INBOX | BB_CH_DIGEST; /* informational */
    u->chan[1] = BB_CH_PUSH | BB_CH_INBOX;   /* recent */
    u->chan[2] = BB_CH_PUSH | BB_CH_INBOX;   /* in progress */
    u->quiet_from = u->quiet_to = 0;
    u->max_per_hour = 0;
    if (!p) {
        return BB_OK;
    }
    if (p->n_categories) {
        u->categories = 0;
        for (size_t i = 0; i < p->n_categories; i++) {
            int c = p->categories[i];
            if (c < 1 || c > BB_CATEGORY_MAX) {
                return WHY("unknown_category");
            }
            u->categories |= (uint16_t)(1u << c);
        }
    }
    if (p->min_urgency > BB__URGENCY__URGENCY_IN_PROGRESS) {
        return WHY("unknown_urgency");
    }
    u->min_urgency = p->min_urgency ? (uint8_t)p->min_urgency : 1;
    u->chan[0] = channel_bits(p->informational, u->chan[0]);
    u->chan[1] = channel_bits(p->recent, u->chan[1]);
    u->chan[2] = channel_bits(p->in_progress, u->chan[2]);
    if (p->quiet) {
        if (p->quiet->from_minute >= 1440 || p->quiet->to_minute >= 1440) {
            return WHY("bad_quiet_hours");
        }
        u->quiet_from = (uint16_t)p->quiet->from_minute;
        u->quiet_to = (uint16_t)p->quiet->to_minute;
    }
    u->max_per_hour = p->max_per_hour > 255 ? 255 : (uint8_t)p->max_per_hour;
    return BB_OK;
}

static unsigned watch_cells(const struct bb_dir *dir, const struct bb_user *u, bb_cell *cells)
{
    if (!u->radius_m) {
        return 0;
    }
    return bb_geohash_cover_circle(u->lat, u->lon, u->radius_m, dir->params.watch_max_cells, cells);
}

static int mute_target_add(struct bb_dir *dir, uint64_t author, uint64_t group, uint32_t uslot)
{
    uint32_t s;
    if (group) {
        struct bb_group *g;
        if (!table_find(&dir->groups, group, &s) || !(g = table_obj(&dir->groups, s))) {
            return BB_OK; /* muting a group that does not exist (yet) changes nothing */
        }
        return field_add(dir, &g->muted_by, uslot);
    }
    struct mute_ent *m;
    if (table_find(&dir->mutes, author, &s)) {
        m = table_obj(&dir->mutes, s);
    } else {
        m = calloc(1, sizeof(*m));
        if (!m) {
            return BB_ENOMEM;
        }
        m->author_id = author;
        int rc = table_insert_ptr(&dir->mutes, author, m, &s);
        if (rc != BB_OK) {
            free(m);
            return rc;
        }
    }
    bool had = bb_slots_has(m->users, uslot);
    int rc = field_add(dir, &m->users, uslot);
    dir->nmutes += rc == BB_OK && !had;
    return rc;
}

static void mute_target_remove(struct bb_dir *dir, uint64_t author, uint64_t group, uint32_t uslot)
{
    uint32_t s;
    if (group) {
        struct bb_group *g;
        if (table_find(&dir->groups, group, &s) && (g = table_obj(&dir->groups, s))) {
            field_remove(dir, &g->muted_by, uslot, NULL);
        }
        return;
    }
    if (!table_find(&dir->mutes, author, &s)) {
        return;
    }
    struct mute_ent *m = table_obj(&dir->mutes, s);
    bool changed;
    field_remove(dir, &m->users, uslot, &changed);
    if (changed) {
        dir->nmutes--;
    }
    if (!m->users) {
        table_write_ptr(&dir->mutes, s, NULL);
        table_unindex(&dir->mutes, author, s);
        retire(dir, m, free_ptr, NULL);
    }
}

/* Replaces the user's writer-side mute record and the reader-side mute lists. */
static int umute_set(struct bb_dir *dir, uint64_t user_id, uint32_t uslot, const uint64_t *authors,
                     size_t na, const uint64_t *groups, size_t ng)
{
    uint32_t s;
    struct umute_ent *old = NULL;
    bool have = table_find(&dir->umutes, user_id, &s);
    if (have) {
        old = table_obj(&dir->umutes, s);
        for (uint32_t i = 0; i < old->nauthors; i++) {
            mute_target_remove(dir, old->ids[i], 0, uslot);
        }
        for (uint32_t i = 0; i < old->ngroups; i++) {
            mute_target_remove(dir, 0, old->ids[old->nauthors + i], uslot);
        }
    }
    struct umute_ent *nw = NULL;
    if (na + ng) {
        nw = malloc(sizeof(*nw) + (na + ng) * sizeof(uint64_t));
        if (!nw) {
            return BB_ENOMEM;
        }
        nw->user_id = user_id;
        nw->nauthors = (uint32_t)na;
        nw->ngroups = (uint32_t)ng;
        if (na) {
            memcpy(nw->ids, authors, na * sizeof(uint64_t));
        }
        if (ng) {
            memcpy(nw->ids + na, groups, ng * sizeof(uint64_t));
        }
    }
    if (have) {
        table_write_ptr(&dir->umutes, s, nw);
        if (!nw) {
            table_unindex(&dir->umutes, user_id, s);
        }
        free(old); /* writer-only: no reader can hold it */
    } else if (nw) {
        int rc = table_insert_ptr(&dir->umutes, user_id, nw, &s);
        if (rc != BB_OK) {
            free(nw);
            return rc;
        }
    }
    for (size_t i = 0; i < na; i++) {
        int rc = mute_target_add(dir, authors[i], 0, uslot);
        if (rc != BB_OK) {
            return rc;
        }
    }
    for (size_t i = 0; i < ng; i++) {
        int rc = mute_target_add(dir, 0, groups[i], uslot);
        if (rc != BB_OK) {
            return rc;
        }
    }
    return BB_OK;
}

static int cap_ensure(struct bb_dir *dir, uint32_t slot)
{
    return chunks_ensure(dir, &dir->caps, slot, CHUNK_LEN * sizeof(uint32_t));
}

int bb_dir_upsert_user(struct bb_dir *dir, const Bb__User *in, char *why, size_t whylen)
{
    if (!in || in->id == 0) {
        return WHY("missing_field:id");
    }
    struct bb_user u = {.id = in->id};
    if (in->watch && in->watch->radius_m) {
        if (!latlon_ok(in->watch->lat, in->watch->lon)) {
            return WHY("bad_location");
        }
        if (in->watch->radius_m > dir->params.max_radius_m) {
            return WHY("radius_too_large");
        }
        u.lat = (float)in->watch->lat;
        u.lon = (float)in->watch->lon;
        u.radius_m = (uint16_t)in->watch->radius_m;
    }
    int rc = prefs_apply(&u, in->prefs, why, whylen);
    if (rc != BB_OK) {
        return rc;
    }
    unsigned loc;
    if (locale_index(dir, in->locale, &loc) != BB_OK) {
        return WHY("bad_locale");
    }
    u.locale = (uint8_t)loc;
    u.tz = (uint8_t)zone_index(dir, in->time_zone);

    uint32_t slot;
    bool existed = table_find(&dir->users, u.id, &slot);
    struct bb_user old = {0};
    if (existed) {
        old = *(struct bb_user *)table_at(&dir->users, slot);
    } else if ((rc = table_alloc_slot(&dir->users, &slot)) != BB_OK) {
        return rc;
    }
    if ((rc = cap_ensure(dir, slot)) != BB_OK ||
        (rc = table_write(&dir->users, slot, &u)) != BB_OK) {
        return rc;
    }
    if (!existed) {
        /* A reused slot must not inherit the previous person's count. */
        _Atomic uint32_t *ctr =
            (_Atomic uint32_t *)dir->caps->c[slot >> CHUNK_SHIFT] + (slot & (CHUNK_LEN - 1));
        atomic_store_explicit(ctr, 0, memory_order_relaxed);
        if ((rc = table_index(&dir->users, u.id, slot)) != BB_OK) {
            return rc;
        }
    }

    /* The watch area: move the user between cells where it changed. */
    bb_cell oc[32], nc[32];
    unsigned on = existed ? watch_cells(dir, &old, oc) : 0, nn = watch_cells(dir, &u, nc);
    for (unsigned i = 0; i < on; i++) {
        bool keep = false;
        for (unsigned j = 0; j < nn && !keep; j++) {
            keep = oc[i] == nc[j];
        }
        if (!keep) {
            cell_remove(dir, oc[i], 1, slot);
            dir->watch_cells--;
        }
    }
    for (unsigned j = 0; j < nn; j++) {
        bool had = false;
        for (unsigned i = 0; i < on && !had; i++) {
            had = oc[i] == nc[j];
        }
        if (!had) {
            if ((rc = cell_add(dir, nc[j], 1, slot)) != BB_OK) {
                return rc;
            }
            dir->watch_cells++;
        }
    }
    return umute_set(dir, u.id, slot, in->muted_authors, in->n_muted_authors, in->muted_groups,
                     in->n_muted_groups);
}

static int user_prefs(struct bb_dir *dir, const Bb__PreferencesUpdate *pu, char *why, size_t whylen)
{
    uint32_t slot;
    if (!pu || !table_find(&dir->users, pu->user_id, &slot)) {
        return WHY("unknown_user");
    }
    struct bb_user u = *(struct bb_user *)table_at(&dir->users, slot);
    int rc = prefs_apply(&u, pu->prefs, why, whylen);
    if (rc != BB_OK) {
        return rc;
    }
    return table_write(&dir->users, slot, &u);
}

static void follows_remove_user(struct bb_dir *dir, uint32_t uslot);

static int user_erase(struct bb_dir *dir, uint64_t id, char *why, size_t whylen)
{
    uint32_t slot;
    if (!table_find(&dir->users, id, &slot)) {
        return BB_OK; /* erasing twice is fine */
    }
    struct bb_user u = *(struct bb_user *)table_at(&dir->users, slot);
    bb_cell cells[32];
    unsigned n = watch_cells(dir, &u, cells);
    for (unsigned i = 0; i < n; i++) {
        cell_remove(dir, cells[i], 1, slot);
        dir->watch_cells--;
    }
    for (uint32_t gs = 0; gs < dir->groups.nslots; gs++) {
        struct bb_group *g = table_obj(&dir->groups, gs);
        if (g) {
            bool changed;
            field_remove(dir, &g->members, slot, &changed);
            dir->memberships -= changed;
        }
    }
    umute_set(dir, id, slot, NULL, 0, NULL, 0);
    /* Others' mutes of this user as an author go too: the id is gone. */
    uint32_t ms;
    if (table_find(&dir->mutes, id, &ms)) {
        struct mute_ent *m = table_obj(&dir->mutes, ms);
        dir->nmutes -= m->users ? m->users->n : 0;
        table_write_ptr(&dir->mutes, ms, NULL);
        table_unindex(&dir->mutes, id, ms);
        retire_mem(dir, m->users);
        retire_mem(dir, m);
    }
    follows_remove_user(dir, slot);
    struct bb_user empty = {0};
    int rc = table_write(&dir->users, slot, &empty);
    if (rc != BB_OK) {
        return rc;
    }
    table_unindex(&dir->users, id, slot);
    return BB_OK;
}

/* ---- writer: groups ---------------------------------------------------------------------- */

static void group_retire_cb(void *ctx, void *p)
{
    struct bb_group *g = p;
    free(g->cells);
    free(g->name);
    free(g);
}

static int group_upsert(struct bb_dir *dir, const Bb__Group *in, char *why, size_t whylen)
{
    if (!in || in->id == 0) {
        return WHY("missing_field:id");
    }
    if (in->location_precision > BB_GEOHASH_MAX_PRECISION) {
        return WHY("bad_precision");
    }
    struct bb_group *g = calloc(1, sizeof(*g));
    if (!g) {
        return BB_ENOMEM;
    }
    g->id = in->id;
    g->precision = in->location_precision ? (uint8_t)in->location_precision
                                          : (uint8_t)dir->params.default_precision;
    g->name = strdup(in->name ? in->name : "");
    g->cells = calloc(in->n_cells ? in->n_cells : 1, sizeof(bb_cell));
    if (!g->name || !g->cells) {
        group_retire_cb(NULL, g);
        return BB_ENOMEM;
    }
    for (size_t i = 0; i < in->n_cells; i++) {
        bb_cell c;
        if (bb_geohash_parse(in->cells[i], strlen(in->cells[i]), &c) != BB_OK) {
            group_retire_cb(NULL, g);
            return WHY("bad_cell");
        }
        bool dup = false;
        for (uint32_t j = 0; j < g->ncells && !dup; j++) {
            dup = g->cells[j] == c;
        }
        if (!dup) {
            g->cells[g->ncells++] = c;
        }
    }
    g->categories = 0xffff;
    g->sources = 0xff;
    g->min_urgency = 1;
    const Bb__Policy *p = in->policy;
    if (p) {
        if (p->n_categories) {
            g->categories = 0;
            for (size_t i = 0; i < p->n_categories; i++) {
                if (p->categories[i] < 1 || p->categories[i] > BB_CATEGORY_MAX) {
                    group_retire_cb(NULL, g);
                    return WHY("unknown_category");
                }
                g->categories |= (uint16_t)(1u << p->categories[i]);
            }
        }
        if (p->n_sources) {
            g->sources = 0;
            for (size_t i = 0; i < p->n_sources; i++) {
                if (p->sources[i] < 1 || p->sources[i] > BB_SOURCE_MAX) {
                    group_retire_cb(NULL, g);
                    return WHY("unknown_source");
                }
                g->sources |= (uint8_t)(1u << p->sources[i]);
            }
        }
        if (p->min_urgency > BB__URGENCY__URGENCY_IN_PROGRESS) {
            group_retire_cb(NULL, g);
            return WHY("unknown_urgency");
        }
        g->min_urgency = p->min_urgency ? (uint8_t)p->min_urgency : 1;
        g->public_posting = p->public_posting;
    }

    uint32_t slot;
    struct bb_group *old = NULL;
    int rc;
    if (table_find(&dir->groups, g->id, &slot)) {
        old = table_obj(&dir->groups, slot);
        g->members = old->members;
        g->muted_by = old->muted_by;
    } else if ((rc = table_alloc_slot(&dir->groups, &slot)) != BB_OK) {
        group_retire_cb(NULL, g);
        return rc;
    }
    if ((rc = table_write_ptr(&dir->groups, slot, g)) != BB_OK) {
        group_retire_cb(NULL, g);
        return rc;
    }
    if (!old && (rc = table_index(&dir->groups, g->id, slot)) != BB_OK) {
        return rc;
    }
    /* The area: move the group between cells where it changed. */
    for (uint32_t i = 0; old && i < old->ncells; i++) {
        bool keep = false;
        for (uint32_t j = 0; j < g->ncells && !keep; j++) {
            keep = old->cells[i] == g->cells[j];
        }
        if (!keep) {
            cell_remove(dir, old->cells[i], 0, slot);
        }
    }
    for (uint32_t j = 0; j < g->ncells; j++) {
        bool had = false;
        for (uint32_t i = 0; old && i < old->ncells && !had; i++) {
            had = old->cells[i] == g->cells[j];
        }
        if (!had && (rc = cell_add(dir, g->cells[j], 0, slot)) != BB_OK) {
            return rc;
        }
    }
    if (old) {
        /* members and muted_by moved to the new record */
        retire(dir, old, group_retire_cb, NULL);
        return BB_OK;
    }
    /* A new group: users may have muted it before it existed. */
    for (uint32_t s = 0; s < dir->umutes.nslots; s++) {
        const struct umute_ent *um = table_obj(&dir->umutes, s);
        uint32_t us;
        for (uint32_t i = 0; um && i < um->ngroups; i++) {
            if (um->ids[um->nauthors + i] == g->id && table_find(&dir->users, um->user_id, &us) &&
                (rc = field_add(dir, &g->muted_by, us)) != BB_OK) {
                return rc;
            }
        }
    }
    return BB_OK;
}

int bb_dir_upsert_group(struct bb_dir *dir, const Bb__Group *g, char *why, size_t whylen)
{
    return group_upsert(dir, g, why, whylen);
}

static int group_delete(struct bb_dir *dir, uint64_t id)
{
    uint32_t slot;
    if (!table_find(&dir->groups, id, &slot)) {
        return BB_OK;
    }
    struct bb_group *g = table_obj(&dir->groups, slot);
    for (uint32_t i = 0; i < g->ncells; i++) {
        cell_remove(dir, g->cells[i], 0, slot);
    }
    dir->memberships -= g->members ? g->members->n : 0;
    table_write_ptr(&dir->groups, slot, NULL);
    table_unindex(&dir->groups, id, slot);
    retire_mem(dir, g->members);
    retire_mem(dir, g->muted_by);
    retire(dir, g, group_retire_cb, NULL);
    return BB_OK;
}

static int membership(struct bb_dir *dir, uint64_t uid, uint64_t gid, bool add, char *why,
                      size_t whylen)
{
    uint32_t us, gs;
    if (!table_find(&dir->users, uid, &us)) {
        return add ? WHY("unknown_user") : BB_OK;
    }
    if (!table_find(&dir->groups, gid, &gs)) {
        return add ? WHY("unknown_group") : BB_OK;
    }
    struct bb_group *g = table_obj(&dir->groups, gs);
    if (add) {
        bool had = bb_slots_has(g->members, us);
        int rc = field_add(dir, &g->members, us);
        dir->memberships += rc == BB_OK && !had;
        return rc;
    }
    bool changed;
    int rc = field_remove(dir, &g->members, us, &changed);
    dir->memberships -= changed;
    return rc;
}

int bb_dir_add_member(struct bb_dir *dir, uint64_t user_id, uint64_t group_id, char *why,
                      size_t whylen)
{
    return membership(dir, user_id, group_id, true, why, whylen);
}

/* ---- writer: mutes and follows ----------------------------------------------------------- */

static int mute_event(struct bb_dir *dir, const Bb__Mute *m, bool on, char *why, size_t whylen)
{
    uint32_t us;
    if (!m || (!m->author_id == !m->group_id)) {
        return WHY("bad_mute");
    }
    if (!table_find(&dir->users, m->user_id, &us)) {
        return WHY("unknown_user");
    }
    /* Rebuild the user's mute record with this one target added or removed. */
    uint32_t s;
    const struct umute_ent *old =
        table_find(&dir->umutes, m->user_id, &s) ? table_obj(&dir->umutes, s) : NULL;
    size_t na = old ? old->nauthors : 0, ng = old ? old->ngroups : 0;
    uint64_t *a = malloc((na + 1) * sizeof(uint64_t)), *g = malloc((ng + 1) * sizeof(uint64_t));
    if (!a || !g) {
        free(a);
        free(g);
        return BB_ENOMEM;
    }
    size_t an = 0, gn = 0;
    uint64_t target = m->author_id ? m->author_id : m->group_id;
    for (size_t i = 0; i < na; i++) {
        if (!(m->author_id && old->ids[i] == target)) {
            a[an++] = old->ids[i];
        }
    }
    for (size_t i = 0; i < ng; i++) {
        if (!(m->group_id && old->ids[na + i] == target)) {
            g[gn++] = old->ids[na + i];
        }
    }
    if (on && m->author_id) {
        a[an++] = target;
    } else if (on) {
        g[gn++] = target;
    }
    int rc = umute_set(dir, m->user_id, us, a, an, g, gn);
    free(a);
    free(g);
    return rc;
}

int bb_dir_add_follow(struct bb_dir *dir, uint64_t user_id, const char *report_id, char *why,
                      size_t whylen)
{
    uint32_t us, s;
    if (!report_id || !*report_id || strlen(report_id) > 64) {
        return WHY("bad_report_id");
    }
    if (!table_find(&dir->users, user_id, &us)) {
        return WHY("unknown_user");
    }
    uint64_t h = str_hash(report_id);
    struct follow_ent *f;
    if (table_find(&dir->follows, h, &s)) {
        f = table_obj(&dir->follows, s);
        if (strcmp(f->report_id, report_id) != 0) {
            return WHY("report_id_collision");
        }
    } else {
        f = calloc(1, sizeof(*f));
        if (!f || !(f->report_id = strdup(report_id))) {
            free(f);
            return BB_ENOMEM;
        }
        f->hash = h;
        int rc = table_insert_ptr(&dir->follows, h, f, &s);
        if (rc != BB_OK) {
            follow_free(f);
            return rc;
        }
    }
    bool had = bb_slots_has(f->users, us);
    int rc = field_add(dir, &f->users, us);
    dir->nfollows += rc == BB_OK && !had;
    return rc;
}

static void follow_retire_cb(void *ctx, void *p)
{
    struct follow_ent *f = p;
    free(f->report_id);
    free(f);
}

static void follow_remove_at(struct bb_dir *dir, uint32_t s, uint32_t uslot)
{
    struct follow_ent *f = table_obj(&dir->follows, s);
    bool changed;
    if (!f) {
        return;
    }
    field_remove(dir, &f->users, uslot, &changed);
    dir->nfollows -= changed;
    if (!f->users) {
        table_write_ptr(&dir->follows, s, NULL);
        table_unindex(&dir->follows, f->hash, s);
        retire(dir, f, follow_retire_cb, NULL);
    }
}

static int unfollow(struct bb_dir *dir, uint64_t user_id, const char *report_id)
{
    uint32_t us, s;
    if (!report_id || !table_find(&dir->users, user_id, &us) ||
        !table_find(&dir->follows, str_hash(report_id), &s)) {
        return BB_OK;
    }
    follow_remove_at(dir, s, us);
    return BB_OK;
}

static void follows_remove_user(struct bb_dir *dir, uint32_t uslot)
{
    for (uint32_t s = 0; s < dir->follows.nslots; s++) {
        follow_remove_at(dir, s, uslot);
    }
}

/* ---- events ------------------------------------------------------------------------------ */

int bb_dir_apply(struct bb_dir *dir, const Bb__DirectoryEvent *ev, char *why, size_t whylen)
{
    switch (ev->change_case) {
    case BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT:
        return bb_dir_upsert_user(dir, ev->user_upsert, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_USER_ERASE:
        return user_erase(dir, ev->user_erase, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT:
        return group_upsert(dir, ev->group_upsert, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE:
        return group_delete(dir, ev->group_delete);
    case BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD:
    case BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE: {
        const Bb__Membership *m = ev->change_case == BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD
                                      ? ev->member_add
                                      : ev->member_remove;
        if (!m) {
            return WHY("missing_field:membership");
        }
        return membership(dir, m->user_id, m->group_id,
                          ev->change_case == BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD, why, whylen);
    }
    case BB__DIRECTORY_EVENT__CHANGE_PREFERENCES:
        return user_prefs(dir, ev->preferences, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_MUTE:
        return mute_event(dir, ev->mute, true, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_UNMUTE:
        return mute_event(dir, ev->unmute, false, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_FOLLOW:
        if (!ev->follow) {
            return WHY("missing_field:follow");
        }
        return bb_dir_add_follow(dir, ev->follow->user_id, ev->follow->report_id, why, whylen);
    case BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW:
        if (!ev->unfollow) {
            return WHY("missing_field:unfollow");
        }
        return unfollow(dir, ev->unfollow->user_id, ev->unfollow->report_id);
    case BB__DIRECTORY_EVENT__CHANGE_CONTACT_GONE:
        return BB_OK; /* addresses are not in the index */
    default:
        return WHY("unknown_change");
    }
}

void bb_dir_stats(const struct bb_dir *dir, struct bb_dir_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->users = dir->users.used;
    out->groups = dir->groups.used;
    out->cells = dir->cells.used;
    out->memberships = dir->memberships;
    out->watch_cells = dir->watch_cells;
    out->mutes = dir->nmutes;
    out->follows = dir->nfollows;
    size_t user_chunks = (dir->users.nslots + CHUNK_LEN - 1) / CHUNK_LEN;
    size_t map = dir->users.map ? (size_t)dir->users.map->size * 4 : 0;
    out->bytes_users = user_chunks * CHUNK_LEN * (sizeof(struct bb_user) + sizeof(uint32_t)) + map +
                       (dir->memberships + dir->watch_cells) * sizeof(uint32_t);
    size_t other = 0;
    const struct table *ptabs[] = {&dir->groups, &dir->cells, &dir->mutes, &dir->follows};
    for (size_t i = 0; i < 4; i++) {
        const struct table *t = ptabs[i];
        other += ((t->nslots + CHUNK_LEN - 1) / CHUNK_LEN) * CHUNK_LEN * sizeof(void *);
        other += t->map ? (size_t)t->map->size * 4 : 0;
    }
    other += dir->groups.used * (sizeof(struct bb_group) + 32) +
             dir->cells.used * (sizeof(struct bb_cellent) + 2 * sizeof(struct bb_slots) + 16);
    out->bytes_total = out->bytes_users + other;
}
