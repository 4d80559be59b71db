/* Latency histogram and /proc readings for the benchmarks (stats.h). */
#include "stats.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void bb_hist_add(struct bb_hist *h, uint64_t us)
{
    unsigned p = 0, sub = (unsigned)us;
    if (us >= BB_HIST_SUB) {
        p = (63u - (unsigned)__builtin_clzll(us)) - 5;
        sub = (unsigned)(us >> p);
    }
    if (p >= BB_HIST_POW) {
        p = BB_HIST_POW - 1;
        sub = BB_HIST_SUB - 1;
    }
    h->b[p][sub]++;
    h->n++;
    if (us > h->max) {
        h->max = us;
    }
}

double bb_hist_pct(const struct bb_hist *h, double q)
{
    uint64_t want = (uint64_t)ceil(q * (double)h->n), seen_n = 0;
    for (unsigned p = 0; p < BB_HIST_POW; p++) {
        for (unsigned s = 0; s < BB_HIST_SUB; s++) {
            seen_n += h->b[p][s];
            if (h->n && seen_n >= want && h->b[p][s]) {
                double edge = p ? (double)((((uint64_t)s + 1) << p) - 1) : (double)s;
                return edge < (double)h->max ? edge : (double)h->max;
            }
        }
    }
    return (double)h->max;
}

int64_t bb_bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

double bb_bench_cpu_seconds(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return -1;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
        return -1;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

long bb_bench_rss_kb(int pid, int peak)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, peak ? "VmHWM: %ld" : "VmRSS: %ld", &kb) == 1) {
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return kb;
}
