/* What the end-to-end benchmarks measure the same way: a latency histogram
 * (log-linear, microseconds), wall-clock time, and a process's CPU time and
 * memory from /proc.
 *
 * Threads: a histogram belongs to its caller (lock it to share it). */
#ifndef BB_BENCH_STATS_H
#define BB_BENCH_STATS_H

#include <stdint.h>

#define BB_HIST_SUB 64 /* sub-buckets per power of two: < 1.6 % error */
#define BB_HIST_POW 40

struct bb_hist {
    uint64_t b[BB_HIST_POW][BB_HIST_SUB];
    uint64_t n, max;
};

/* Values below 64 us are exact; above, 32 sub-buckets per power of two. */
void bb_hist_add(struct bb_hist *h, uint64_t us);
/* The q-quantile in microseconds (the upper edge of its bucket, at most max). */
double bb_hist_pct(const struct bb_hist *h, double q);

/* Wall clock, microseconds since the epoch. */
int64_t bb_bench_now_us(void);
/* pid's user + system CPU seconds, -1 if it is gone. */
double bb_bench_cpu_seconds(int pid);
/* pid's resident set (VmRSS) or its peak (VmHWM) in kB, -1 if it is gone. */
long bb_bench_rss_kb(int pid, int peak);

#endif
