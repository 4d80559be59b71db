/* Synthetic population (see popgen.h). Everything derives from one splitmix64 stream, and every
 * sort breaks ties by index, so a seed gives the same population on every machine. */
#include "popgen.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "report.pb-c.h"

#define M_PER_DEG 111195.08 /* mean Earth radius 6371008.8 m */
#define PI 3.14159265358979323846
/* Room per resident for group indexes while building: their groups and a town group. */
#define UG_STRIDE (PG_MAX_GROUPS_PER_USER + 1)

const struct pg_town pg_towns[] = {
    {"'s-Hertogenbosch", 51.6978, 5.3037, 157, 2800}, {"Den Haag", 52.0705, 4.3007, 552, 3500},
    {"Tilburg", 51.5555, 5.0913, 225, 2800},          {"Breda", 51.5719, 4.7683, 185, 2800},
    {"Zaltbommel", 51.8100, 5.2486, 30, 1200},        {"Maasdriel", 51.7683, 5.3208, 25, 1500},
};
const unsigned pg_ntowns = sizeof(pg_towns) / sizeof(pg_towns[0]);

/* Neighbourhoods (wijken, dorpen) of the towns above: approximate centres,
 * the share of the town's residents (percent, per town summing to 100) and
 * how far homes spread around the centre. */
const struct pg_area pg_areas[] = {
    /* 's-Hertogenbosch */
    {0, "Centrum", 51.6894, 5.3034, 9, 700},
    {0, "Noord", 51.7120, 5.3080, 17, 900},
    {0, "Oost", 51.6980, 5.3290, 13, 800},
    {0, "West", 51.6990, 5.2760, 11, 900},
    {0, "Zuid", 51.6780, 5.3060, 8, 800},
    {0, "Zuidoost", 51.6770, 5.3380, 12, 900},
    {0, "Rosmalen", 51.7160, 5.3650, 21, 1200},
    {0, "Maaspoort", 51.7240, 5.3000, 6, 700},
    {0, "Empel", 51.7300, 5.3280, 3, 600},
    /* Den Haag */
    {1, "Centrum", 52.0780, 4.3110, 20, 1100},
    {1, "Scheveningen", 52.1040, 4.2790, 11, 1000},
    {1, "Segbroek", 52.0750, 4.2700, 11, 900},
    {1, "Loosduinen", 52.0540, 4.2380, 9, 1100},
    {1, "Escamp", 52.0470, 4.2730, 22, 1300},
    {1, "Laak", 52.0600, 4.3290, 7, 800},
    {1, "Haagse Hout", 52.0920, 4.3380, 8, 1000},
    {1, "Leidschenveen-Ypenburg", 52.0520, 4.3820, 12, 1200},
    /* Tilburg */
    {2, "Centrum", 51.5560, 5.0900, 15, 800},
    {2, "Noord", 51.5800, 5.0820, 15, 1000},
    {2, "Oud-Noord", 51.5670, 5.0880, 11, 700},
    {2, "Oost", 51.5600, 5.1150, 10, 900},
    {2, "Zuid", 51.5400, 5.0800, 11, 900},
    {2, "West", 51.5560, 5.0500, 11, 900},
    {2, "Reeshof", 51.5750, 5.0200, 19, 1200},
    {2, "Berkel-Enschot", 51.5830, 5.1400, 5, 700},
    {2, "Udenhout", 51.6100, 5.1430, 3, 600},
    /* Breda */
    {3, "Centrum", 51.5890, 4.7760, 14, 800},
    {3, "Noord", 51.6060, 4.7700, 14, 900},
    {3, "Oost", 51.5900, 4.8000, 15, 1000},
    {3, "Zuidoost", 51.5700, 4.8000, 13, 900},
    {3, "Zuid", 51.5680, 4.7700, 12, 900},
    {3, "West", 51.5880, 4.7400, 12, 900},
    {3, "Princenhage", 51.5780, 4.7280, 10, 900},
    {3, "Haagse Beemden", 51.6160, 4.7400, 10, 900},
    /* Zaltbommel */
    {4, "Zaltbommel", 51.8100, 5.2450, 65, 900},
    {4, "Brakel", 51.8170, 5.0930, 12, 500},
    {4, "Nederhemert", 51.7770, 5.1700, 10, 500},
    {4, "Aalst", 51.7810, 5.1290, 13, 500},
    /* Maasdriel */
    {5, "Kerkdriel", 51.7700, 5.3350, 35, 700},
    {5, "Hedel", 51.7440, 5.2620, 20, 600},
    {5, "Ammerzoden", 51.7470, 5.2230, 20, 600},
    {5, "Velddriel", 51.7540, 5.3010, 15, 500},
    {5, "Heerewaarden", 51.8150, 5.3900, 10, 500},
};
const unsigned pg_nareas = sizeof(pg_areas) / sizeof(pg_areas[0]);

uint64_t pg_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double pg_uniform(uint64_t *s)
{
    return (double)(pg_rand(s) >> 11) / 9007199254740992.0;
}

static unsigned below(uint64_t *s, unsigned n)
{
    return (unsigned)(pg_rand(s) % n);
}

/* A standard normal value, cut at 3 (Box-Muller, one of the pair). */
static double gauss(uint64_t *s)
{
    for (;;) {
        double u = pg_uniform(s), v = pg_uniform(s);
        double z = sqrt(-2.0 * log(u > 0 ? u : 1e-300)) * cos(2 * PI * v);
        if (fabs(z) <= 3.0) {
            return z;
        }
    }
}

static double log_uniform(uint64_t *s, double lo, double hi)
{
    return lo * exp(pg_uniform(s) * log(hi / lo));
}

/* Picks an index by weights (percent, summing to 100). */
static unsigned pick(uint64_t *s, const unsigned *pct, unsigned n)
{
    unsigned r = below(s, 100), acc = 0;
    for (unsigned i = 0; i < n; i++) {
        acc += pct[i];
        if (r < acc) {
            return i;
        }
    }
    return n - 1;
}

void pg_params_default(struct pg_params *p)
{
    memset(p, 0, sizeof(*p));
    p->seed = 1;
    p->users = 200000;
    p->watch_percent = 80;
    p->radius_min_m = 200;
    p->radius_max_m = 1000;
}

void pg_free(struct pg_pop *pop)
{
    free(pop->users);
    free(pop->groups);
    free(pop->members);
    free(pop->ugroups);
    free(pop->ufirst);
    free(pop->zorder);
    memset(pop, 0, sizeof(*pop));
}

struct zkey {
    uint64_t key;
    uint32_t idx;
};

static int zkey_cmp(const void *a, const void *b)
{
    const struct zkey *x = a, *y = b;
    if (x->key != y->key) {
        return x->key < y->key ? -1 : 1;
    }
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

struct block {
    bb_cell cell;
    uint32_t n;
};

static int block_cmp(const void *a, const void *b)
{
    const struct block *x = a, *y = b;
    if (x->n != y->n) {
        return x->n > y->n ? -1 : 1;
    }
    return x->cell < y->cell ? -1 : x->cell > y->cell;
}

/* The group's area: at the finest precision from start down to 4, the fewest cells holding 95 %
 * of its run of residents, if that takes at most limit cells (members may live just outside
 * their group's area, as the street next door does). Sorted by geohash, the residents of one
 * cell are next to each other at every precision, so a cell is one block of the run. */
static int run_cells(const struct zkey *order, uint32_t a, uint32_t b, unsigned start,
                     unsigned limit, struct pg_group *g)
{
    struct block *bl = malloc((size_t)(b - a) * sizeof(*bl));
    if (!bl) {
        return BB_ENOMEM;
    }
    for (unsigned p = start;; p--) {
        uint32_t nb = 0;
        for (uint32_t i = a; i < b; i++) {
            bb_cell c = bb_cell_parent((bb_cell)order[i].key, p);
            if (nb == 0 || bl[nb - 1].cell != c) {
                bl[nb++] = (struct block){c, 0};
            }
            bl[nb - 1].n++;
        }
        qsort(bl, nb, sizeof(*bl), block_cmp);
        uint32_t want = (uint32_t)(((uint64_t)(b - a) * 95 + 99) / 100), got = 0;
        unsigned k = 0;
        while (got < want && k < nb) {
            got += bl[k++].n;
        }
        if (k <= limit || p == 4) {
            k = k < PG_MAX_CELLS ? k : PG_MAX_CELLS;
            for (unsigned i = 0; i < k; i++) {
                g->cells[i] = bl[i].cell;
            }
            g->ncells = (uint8_t)k;
            g->precision = (uint8_t)p;
            free(bl);
            return BB_OK;
        }
    }
}

static bool has_group(const uint32_t *ug, unsigned n, uint32_t g)
{
    for (unsigned i = 0; i < n; i++) {
        if (ug[i] == g) {
            return true;
        }
    }
    return false;
}

int pg_generate(const struct pg_params *p, struct pg_pop *pop)
{
    uint64_t s = p->seed * 0x2545f4914f6cdd1dull + 1;
    const uint32_t n = p->users;
    int rc = BB_ENOMEM;
    struct zkey *order = NULL;
    uint32_t *ug = NULL, *fine_of = NULL, *count = NULL;
    uint8_t *ugn = NULL;

    memset(pop, 0, sizeof(*pop));
    pop->params = *p;
    pop->nusers = n;
    pop->users = calloc(n ? n : 1, sizeof(*pop->users));
    order = malloc((n ? n : 1) * sizeof(*order));
    ug = malloc((size_t)(n ? n : 1) * UG_STRIDE * sizeof(*ug));
    ugn = calloc(n ? n : 1, 1);
    fine_of = malloc((n ? n : 1) * sizeof(*fine_of));
    if (!pop->users || !order || !ug || !ugn || !fine_of) {
        goto out;
    }

    /* Residents. */
    double wsum = 0;
    for (unsigned t = 0; t < pg_ntowns; t++) {
        wsum += pg_towns[t].weight;
    }
    static const unsigned locale_pct[] = {90, 7, 3};
    static const unsigned prefs_pct[] = {70, 12, 8, 5, 5};
    static const unsigned groups_pct[] = {44, 38, 13, 5};
    /* Usage: 39 % open the app less than once a month, 16 % three or more times a week. */
    static const unsigned activity_pct[] = {39, 45, 16};
    for (uint32_t i = 0; i < n; i++) {
        struct pg_user *u = &pop->users[i];
        double r = pg_uniform(&s) * wsum, acc = 0;
        unsigned t = 0;
        for (; t + 1 < pg_ntowns; t++) {
            acc += pg_towns[t].weight;
            if (r < acc) {
                break;
            }
        }
        /* A neighbourhood of the town, by its share of residents. */
        const struct pg_area *ar = NULL;
        double ra = pg_uniform(&s) * 100, aacc = 0;
        for (unsigned k = 0; k < pg_nareas; k++) {
            if (pg_areas[k].town == t) {
                ar = &pg_areas[k];
                aacc += ar->weight;
                if (ra < aacc) {
                    break;
                }
            }
        }
        double lat = ar->lat + gauss(&s) * ar->sigma_m / M_PER_DEG;
        double lon = ar->lon + gauss(&s) * ar->sigma_m / (M_PER_DEG * cos(lat * PI / 180.0));
        u->lat = (float)lat;
        u->lon = (float)lon;
        u->town = (uint8_t)t;
        if (below(&s, 100) < p->watch_percent) {
            unsigned steps = (p->radius_max_m - p->radius_min_m) / 50 + 1;
            u->radius_m = (uint16_t)(p->radius_min_m + 50 * below(&s, steps));
        }
        u->locale = (uint8_t)pick(&s, locale_pct, 3);
        u->activity = (uint8_t)pick(&s, activity_pct, 3);
        u->prefs = (uint8_t)pick(&s, prefs_pct, 5);
        unsigned k = pick(&s, groups_pct, 4) + 1;
        u->ngroups = (uint8_t)(k < 4 ? k : 4 + below(&s, PG_MAX_GROUPS_PER_USER - 3));
        order[i] = (struct zkey){bb_geohash_encode(u->lat, u->lon, BB_GEOHASH_MAX_PRECISION), i};
    }
    qsort(order, n, sizeof(*order), zkey_cmp);

    /* Groups: street and neighbourhood runs over everyone, district runs over everyone (members:
     * those in two or more groups). Runs of fewer than 20 join the run before. */
    uint32_t cap = n / 10 + 64 + pg_ntowns;
    pop->groups = calloc(cap, sizeof(*pop->groups));
    uint32_t *run_a = malloc(cap * sizeof(uint32_t)), *run_b = malloc(cap * sizeof(uint32_t));
    if (!pop->groups || !run_a || !run_b) {
        free(run_a);
        free(run_b);
        goto out;
    }
    for (int pass = 0; pass < 2; pass++) {
        uint32_t pos = 0;
        while (pos < n) {
            uint32_t len;
            uint8_t kind;
            if (pass == 0) {
                bool street = below(&s, 100) < 60;
                len = (uint32_t)(street ? log_uniform(&s, 20, 150) : log_uniform(&s, 150, 1000));
                kind = street ? PG_STREET : PG_NEIGHBOURHOOD;
            } else {
                len = (uint32_t)log_uniform(&s, 2000, 9000);
                kind = PG_DISTRICT;
            }
            if (n - pos < len + 20) {
                len = n - pos; /* the tail joins this run */
            }
            struct pg_group *g = &pop->groups[pop->ngroups];
            g->kind = kind;
            run_a[pop->ngroups] = pos;
            run_b[pop->ngroups] = pos + len;
            static const unsigned limit[] = {4, 8, 24};
            if (run_cells(order, pos, pos + len, kind == PG_DISTRICT ? 6 : 7, limit[kind], g)) {
                free(run_a);
                free(run_b);
                goto out;
            }
            if (kind == PG_DISTRICT) {
                g->public_posting = below(&s, 100) < 25;
                g->policy = below(&s, 100) < 15 ? PG_POLICY_BURGLARY : PG_POLICY_OPEN;
            } else {
                unsigned r = below(&s, 100);
                g->policy = r < 8    ? PG_POLICY_POLICE
                            : r < 16 ? PG_POLICY_HETERDAAD
                                     : PG_POLICY_OPEN;
                g->public_posting = below(&s, 100) < 5;
            }
            for (uint32_t i = pos; i < pos + len; i++) {
                uint32_t u = order[i].idx;
                if (pass == 0) {
                    fine_of[i] = pop->ngroups;
                    ug[(size_t)u * UG_STRIDE + ugn[u]++] = pop->ngroups;
                } else if (pop->users[u].ngroups >= 2) {
                    ug[(size_t)u * UG_STRIDE + ugn[u]++] = pop->ngroups;
                }
            }
            pop->nkind[kind]++;
            pop->ngroups++;
            pos += len;
        }
    }
    free(run_a);
    free(run_b);

    /* Third and further groups: street groups of neighbours along the curve. A muted author:
     * someone a few doors down. */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u = order[i].idx;
        struct pg_user *pu = &pop->users[u];
        uint32_t *mine = &ug[(size_t)u * UG_STRIDE];
        for (unsigned tries = 0; ugn[u] < pu->ngroups && tries < 64; tries++) {
            int64_t off = (int64_t)log_uniform(&s, 200, 20000);
            int64_t j = (int64_t)i + (below(&s, 2) ? off : -off);
            if (j < 0 || j >= (int64_t)n) {
                continue;
            }
            uint32_t g = fine_of[j];
            if (!has_group(mine, ugn[u], g)) {
                mine[ugn[u]++] = g;
            }
        }
        pu->ngroups = ugn[u];
        if (below(&s, 100) < 2 && n > 1) {
            int64_t j = (int64_t)i + 1 + below(&s, 50);
            if (j >= (int64_t)n) {
                j = i > 0 ? (int64_t)i - 1 : 1;
            }
            pu->muted = order[j].idx + 1;
        }
    }

    /* Town groups (only when asked): everyone of a town, after all other groups, without
     * drawing from the random stream. */
    if (p->town_groups) {
        for (unsigned t = 0; t < pg_ntowns; t++) {
            struct pg_group *g = &pop->groups[pop->ngroups];
            g->kind = PG_TOWN;
            g->policy = PG_POLICY_POLICE;
            pop->town_group[t] = pop->ngroups;
            pop->nkind[PG_TOWN]++;
            pop->ngroups++;
        }
        for (uint32_t u = 0; u < n; u++) {
            ug[(size_t)u * UG_STRIDE + ugn[u]++] = pop->town_group[pop->users[u].town];
        }
    }

    /* Members by group (ascending user index), groups by user. */
    count = calloc(pop->ngroups + 1, sizeof(*count));
    pop->ufirst = malloc(((size_t)n + 1) * sizeof(*pop->ufirst));
    pop->zorder = malloc((n ? n : 1) * sizeof(*pop->zorder));
    if (!count || !pop->ufirst || !pop->zorder) {
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        pop->zorder[i] = order[i].idx;
    }
    size_t total = 0;
    for (uint32_t u = 0; u < n; u++) {
        pop->ufirst[u] = (uint32_t)total;
        total += ugn[u];
        pop->hist[pop->users[u].ngroups]++;
        for (unsigned k = 0; k < ugn[u]; k++) {
            count[ug[(size_t)u * UG_STRIDE + k]]++;
        }
    }
    pop->ufirst[n] = (uint32_t)total;
    pop->nmembers = total;
    pop->members = malloc((total ? total : 1) * sizeof(*pop->members));
    pop->ugroups = malloc((total ? total : 1) * sizeof(*pop->ugroups));
    if (!pop->members || !pop->ugroups) {
        goto out;
    }
    uint32_t acc = 0;
    for (uint32_t g = 0; g < pop->ngroups; g++) {
        pop->groups[g].first = acc;
        acc += count[g];
        count[g] = pop->groups[g].first; /* now: next free place */
    }
    for (uint32_t u = 0; u < n; u++) {
        for (unsigned k = 0; k < ugn[u]; k++) {
            uint32_t g = ug[(size_t)u * UG_STRIDE + k];
            pop->members[count[g]++] = u;
            pop->ugroups[pop->ufirst[u] + k] = g;
        }
    }
    for (uint32_t g = 0; g < pop->ngroups; g++) {
        pop->groups[g].n = count[g] - pop->groups[g].first;
    }
    rc = BB_OK;

out:
    free(order);
    free(ug);
    free(ugn);
    free(fine_of);
    free(count);
    if (rc != BB_OK) {
        pg_free(pop);
    }
    return rc;
}

/* ---- loading ----------------------------------------------------------------------------- */

struct profile {
    Bb__Preferences p;
    Bb__QuietHours q;
    Bb__ChannelSet recent, info;
    Bb__Channel recent_ch[2], info_ch[1];
    Bb__Category cats[4];
};

static void profiles_init(struct profile *pr)
{
    for (int i = 0; i <= PG_PREFS_CAPPED; i++) {
        bb__preferences__init(&pr[i].p);
    }
    bb__quiet_hours__init(&pr[PG_PREFS_QUIET].q);
    pr[PG_PREFS_QUIET].q.from_minute = 23 * 60;
    pr[PG_PREFS_QUIET].q.to_minute = 7 * 60;
    pr[PG_PREFS_QUIET].p.quiet = &pr[PG_PREFS_QUIET].q;

    struct profile *e = &pr[PG_PREFS_EMAIL];
    bb__channel_set__init(&e->recent);
    bb__channel_set__init(&e->info);
    e->recent_ch[0] = BB__CHANNEL__CHANNEL_EMAIL;
    e->recent_ch[1] = BB__CHANNEL__CHANNEL_INBOX;
    e->recent.channels = e->recent_ch;
    e->recent.n_channels = 2;
    e->info_ch[0] = BB__CHANNEL__CHANNEL_DIGEST;
    e->info.channels = e->info_ch;
    e->info.n_channels = 1;
    e->p.recent = &e->recent;
    e->p.informational = &e->info;

    struct profile *nr = &pr[PG_PREFS_NARROW];
    nr->cats[0] = BB__CATEGORY__CATEGORY_BURGLARY;
    nr->cats[1] = BB__CATEGORY__CATEGORY_SUSPICIOUS_PERSON;
    nr->cats[2] = BB__CATEGORY__CATEGORY_SUSPICIOUS_VEHICLE;
    nr->cats[3] = BB__CATEGORY__CATEGORY_FIRE;
    nr->p.categories = nr->cats;
    nr->p.n_categories = 4;
    nr->p.min_urgency = BB__URGENCY__URGENCY_RECENT;

    pr[PG_PREFS_CAPPED].p.max_per_hour = 4;
}

static const char *const locale_names[] = {"nl", "en", "de"};

int pg_emit(const struct pg_pop *pop, bool zorder, pg_emit_fn emit, void *arg, char *why,
            size_t whylen)
{
    int rc;
    Bb__Category burglary_cats[4] = {
        BB__CATEGORY__CATEGORY_BURGLARY, BB__CATEGORY__CATEGORY_SUSPICIOUS_PERSON,
        BB__CATEGORY__CATEGORY_SUSPICIOUS_VEHICLE, BB__CATEGORY__CATEGORY_FIRE};
    Bb__Source police_sources[2] = {BB__SOURCE__SOURCE_POLICE, BB__SOURCE__SOURCE_MUNICIPALITY};
    for (uint32_t gi = 0; gi < pop->ngroups; gi++) {
        const struct pg_group *pg = &pop->groups[gi];
        Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
        Bb__Group g = BB__GROUP__INIT;
        Bb__Policy pol = BB__POLICY__INIT;
        char name[32], cellbuf[PG_MAX_CELLS][13];
        char *cells[PG_MAX_CELLS];
        for (unsigned c = 0; c < pg->ncells; c++) {
            bb_geohash_format(pg->cells[c], cellbuf[c]);
            cells[c] = cellbuf[c];
        }
        snprintf(name, sizeof(name), "%s %u",
                 pg->kind == PG_TOWN       ? "Stad"
                 : pg->kind == PG_DISTRICT ? "Wijk"
                 : pg->kind == PG_STREET   ? "Straat"
                                           : "Buurt",
                 gi + 1);
        switch (pg->policy) {
        case PG_POLICY_POLICE:
            pol.sources = police_sources;
            pol.n_sources = 2;
            break;
        case PG_POLICY_HETERDAAD:
            pol.min_urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
            break;
        case PG_POLICY_BURGLARY:
            pol.categories = burglary_cats;
            pol.n_categories = 4;
            break;
        default:
            break;
        }
        pol.public_posting = pg->public_posting;
        g.id = gi + 1;
        g.name = name;
        g.cells = cells;
        g.n_cells = pg->ncells;
        g.policy = &pol;
        ev.schema_version = 1;
        ev.change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
        ev.group_upsert = &g;
        if ((rc = emit(arg, &ev, why, whylen)) != BB_OK) {
            return rc;
        }
    }

    struct profile prof[PG_PREFS_CAPPED + 1];
    profiles_init(prof);
    for (uint32_t k = 0; k < pop->nusers; k++) {
        uint32_t i = zorder ? pop->zorder[k] : k;
        const struct pg_user *pu = &pop->users[i];
        Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
        Bb__User u = BB__USER__INIT;
        Bb__WatchArea w = BB__WATCH_AREA__INIT;
        char name[24];
        uint64_t muted = pu->muted;
        snprintf(name, sizeof(name), "buur%u", i + 1);
        u.id = i + 1;
        u.screen_name = name;
        u.locale = (char *)locale_names[pu->locale];
        if (pu->radius_m) {
            w.lat = pu->lat;
            w.lon = pu->lon;
            w.radius_m = pu->radius_m;
            u.watch = &w;
        }
        if (pu->prefs != PG_PREFS_DEFAULT) {
            u.prefs = &prof[pu->prefs].p;
        }
        if (muted) {
            u.muted_authors = &muted;
            u.n_muted_authors = 1;
        }
        ev.schema_version = 1;
        ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
        ev.user_upsert = &u;
        if ((rc = emit(arg, &ev, why, whylen)) != BB_OK) {
            return rc;
        }
    }

    for (uint32_t gi = 0; gi < pop->ngroups; gi++) {
        const struct pg_group *pg = &pop->groups[gi];
        for (uint32_t k = 0; k < pg->n; k++) {
            Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
            Bb__Membership m = BB__MEMBERSHIP__INIT;
            m.user_id = (uint64_t)pop->members[pg->first + k] + 1;
            m.group_id = gi + 1;
            ev.schema_version = 1;
            ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
            ev.member_add = &m;
            if ((rc = emit(arg, &ev, why, whylen)) != BB_OK) {
                return rc;
            }
        }
    }
    return BB_OK;
}

static int apply_to_dir(void *arg, const Bb__DirectoryEvent *ev, char *why, size_t whylen)
{
    return bb_dir_apply(arg, ev, why, whylen);
}

int pg_load(const struct pg_pop *pop, struct bb_dir *dir, bool zorder, char *why, size_t whylen)
{
    return pg_emit(pop, zorder, apply_to_dir, dir, why, whylen);
}

/* ---- reports ----------------------------------------------------------------------------- */

static const char *const phrases[] = {
    "Twee personen lopen langs de achterdeuren.",
    "Onbekende auto rijdt al een half uur rondjes.",
    "Iemand probeert fietsen open te breken bij het station.",
    "Rookontwikkeling bij de garageboxen.",
    "Harde knal gehoord, politie is gebeld.",
    "Man in donkere kleding kijkt bij ramen naar binnen.",
    "Bestelbus zonder kenteken bij de school.",
    "Inbraak in de schuur op nummer 14.",
};

void pg_report(const struct pg_pop *pop, uint64_t *rng, uint64_t seq, int64_t time_ms,
               struct pg_report *r, struct Bb__Media *media, struct Bb__Media **media_list)
{
    static const unsigned cat_pct[] = {25, 25, 20, 5, 10, 5, 2, 5, 2, 1};
    static const unsigned urg_pct[] = {30, 50, 20};
    static const unsigned src_pct[] = {85, 10, 3, 2};
    Bb__Report *rep = r->rep;
    bb__report__init(rep);
    /* Authors by usage: an active resident (three times a week or more)
     * reports 16 times as often as one who looks in less than monthly. */
    static const unsigned activity_weight[] = {1, 4, 16};
    uint32_t a;
    do {
        a = (uint32_t)(pg_rand(rng) % pop->nusers);
    } while (below(rng, 16) >= activity_weight[pop->users[a].activity]);
    const struct pg_user *au = &pop->users[a];
    double lat = au->lat + gauss(rng) * 250.0 / M_PER_DEG;
    double lon = au->lon + gauss(rng) * 250.0 / (M_PER_DEG * cos(lat * PI / 180.0));
    snprintf(r->id, sizeof(r->id), "r-%llu", (unsigned long long)seq);
    snprintf(r->name, sizeof(r->name), "buur%u", a + 1);
    unsigned nph = 1 + below(rng, 3);
    r->text[0] = '\0';
    for (unsigned i = 0; i < nph; i++) {
        const char *ph = phrases[below(rng, sizeof(phrases) / sizeof(phrases[0]))];
        if (strlen(r->text) + strlen(ph) + 2 < sizeof(r->text)) {
            strcat(r->text, i ? " " : "");
            strcat(r->text, ph);
        }
    }
    rep->schema_version = 1;
    rep->id = r->id;
    rep->time_ms = time_ms;
    rep->author_id = a + 1;
    rep->author_screen_name = r->name;
    /* A town group (the last of a resident's groups, when there are any) is not for residents'
     * reports: its policy refuses them. */
    unsigned g = below(rng, 100),
             ng = pop->ufirst[a + 1] - pop->ufirst[a] - (pop->params.town_groups ? 1 : 0);
    if (g < 50 && ng >= 1) {
        rep->group_id = pop->ugroups[pop->ufirst[a]] + 1;
    } else if (g < 65 && ng >= 2) {
        rep->group_id = pop->ugroups[pop->ufirst[a] + 1] + 1;
    }
    rep->lat = lat;
    rep->lon = lon;
    rep->category = (Bb__Category)(pick(rng, cat_pct, 10) + 1);
    rep->urgency = (Bb__Urgency)(pick(rng, urg_pct, 3) + 1);
    rep->source = (Bb__Source)(pick(rng, src_pct, 4) + 1);
    rep->text = r->text;
    rep->anonymity =
        below(rng, 2) ? BB__ANONYMITY__ANONYMITY_NEIGHBOUR : BB__ANONYMITY__ANONYMITY_SCREEN_NAME;
    rep->locale = "nl";
    if (below(rng, 100) < 30) {
        bb__media__init(media);
        snprintf(r->url, sizeof(r->url), "https://media.buurtbus.example/%llu.jpg",
                 (unsigned long long)seq);
        media->url = r->url;
        media->mime_type = "image/jpeg";
        media->publishable = below(rng, 2);
        media_list[0] = media;
        rep->media = media_list;
        rep->n_media = 1;
    }
}

/* ---- directory churn --------------------------------------------------------------------- */

#define CHURN_RING 65536

struct pg_churn {
    const struct pg_pop *pop;
    uint64_t rng;
    uint32_t ring_u[CHURN_RING], ring_g[CHURN_RING]; /* who left which group, oldest first */
    uint32_t head, n;
    struct profile prof[PG_PREFS_CAPPED + 1];
    Bb__DirectoryEvent ev;
    Bb__Membership m;
    Bb__PreferencesUpdate pu;
};

struct pg_churn *pg_churn_new(const struct pg_pop *pop, uint64_t seed)
{
    struct pg_churn *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->pop = pop;
    c->rng = seed * 0x9e3779b97f4a7c15ull + 3;
    profiles_init(c->prof);
    return c;
}

void pg_churn_free(struct pg_churn *c)
{
    free(c);
}

int pg_churn_next(struct pg_churn *c, const Bb__DirectoryEvent **ev)
{
    static const unsigned kind_pct[] = {40, 40, 20};
    const struct pg_pop *pop = c->pop;
    unsigned kind = pick(&c->rng, kind_pct, 3);
    if (kind == PG_CHURN_JOIN && c->n == 0) {
        kind = PG_CHURN_LEAVE;
    } else if (kind == PG_CHURN_LEAVE && c->n == CHURN_RING) {
        kind = PG_CHURN_JOIN;
    }
    bb__directory_event__init(&c->ev);
    c->ev.schema_version = 1;
    bb__membership__init(&c->m);
    if (kind == PG_CHURN_JOIN) {
        uint32_t i = c->head;
        c->head = (c->head + 1) % CHURN_RING;
        c->n--;
        c->m.user_id = (uint64_t)c->ring_u[i] + 1;
        c->m.group_id = (uint64_t)c->ring_g[i] + 1;
        c->ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
        c->ev.member_add = &c->m;
    } else if (kind == PG_CHURN_LEAVE) {
        uint32_t u = 0, k = 0;
        for (int tries = 0; tries < 64 && k == 0; tries++) {
            u = (uint32_t)(pg_rand(&c->rng) % pop->nusers);
            k = pop->ufirst[u + 1] - pop->ufirst[u] - (pop->params.town_groups ? 1 : 0);
        }
        uint32_t g = pop->ugroups[pop->ufirst[u] + (k ? below(&c->rng, k) : 0)];
        uint32_t i = (c->head + c->n) % CHURN_RING;
        c->ring_u[i] = u;
        c->ring_g[i] = g;
        c->n++;
        c->m.user_id = (uint64_t)u + 1;
        c->m.group_id = (uint64_t)g + 1;
        c->ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE;
        c->ev.member_remove = &c->m;
    } else {
        bb__preferences_update__init(&c->pu);
        c->pu.user_id = pg_rand(&c->rng) % pop->nusers + 1;
        c->pu.prefs = &c->prof[below(&c->rng, PG_PREFS_CAPPED + 1)].p;
        c->ev.change_case = BB__DIRECTORY_EVENT__CHANGE_PREFERENCES;
        c->ev.preferences = &c->pu;
    }
    *ev = &c->ev;
    return (int)kind;
}
