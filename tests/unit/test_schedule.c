/* When collections are sent (workers/host/schedule.c): a user's digest
 * hour in their own zone, across daylight-saving changes, weekly on
 * Monday, and fixed intervals. Times from Python's datetime in UTC. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "host.h"

#define H 3600000LL

static void daily_in_amsterdam_winter(void **state)
{
    int64_t now = 1768471200000LL; /* 2026-01-15 10:00 UTC = 11:00 CET */
    assert_int_equal(bb_next_local_hour_ms("Europe/Amsterdam", 18, false, now),
                     1768496400000LL); /* 17:00 UTC the same day */
    assert_int_equal(bb_next_local_hour_ms("Europe/Amsterdam", 9, false, now),
                     1768550400000LL); /* 08:00 UTC the next day */
    /* Exactly at the hour: the next day's. */
    assert_int_equal(bb_next_local_hour_ms("Europe/Amsterdam", 18, false, 1768496400000LL),
                     1768496400000LL + 24 * H);
}

static void across_daylight_saving(void **state)
{
    /* Clocks go forward on 2026-03-29 at 01:00 UTC: 09:00 is then 07:00 UTC. */
    assert_int_equal(bb_next_local_hour_ms("Europe/Amsterdam", 9, false, 1774728000000LL),
                     1774767600000LL);
    /* And back on 2026-10-25 at 01:00 UTC: 09:00 CET is 08:00 UTC. */
    assert_int_equal(bb_next_local_hour_ms("Europe/Amsterdam", 9, false, 1792879200000LL),
                     1792915200000LL);
}

static void weekly_on_monday(void **state)
{
    /* Thursday 2026-01-15: the next Monday is the 19th. */
    assert_int_equal(bb_next_local_hour_ms("Europe/Amsterdam", 18, true, 1768471200000LL),
                     1768842000000LL);
}

static void other_zones(void **state)
{
    int64_t now = 1782883800000LL; /* 2026-07-01 05:30 UTC */
    assert_int_equal(bb_next_local_hour_ms("UTC", 6, false, now), 1782885600000LL);
    /* Unknown or empty: Europe/Amsterdam (07:30 CEST now, so 08:00 CEST = 06:00 UTC). */
    assert_int_equal(bb_next_local_hour_ms("Mars/Olympus_Mons", 8, false, now), 1782885600000LL);
    assert_int_equal(bb_next_local_hour_ms("", 8, false, now), 1782885600000LL);
    /* New York is UTC-4 in July: 06:00 EDT = 10:00 UTC. */
    assert_int_equal(bb_next_local_hour_ms("America/New_York", 6, false, now), now + 4 * H + H / 2);
}

static void intervals(void **state)
{
    assert_int_equal(bb_next_interval_ms(H, 1782883800000LL), 1782885600000LL);
    assert_int_equal(bb_next_interval_ms(H, 1782885600000LL), 1782885600000LL + H);
}

static int cleanup(void **state)
{
    bb_schedule_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(daily_in_amsterdam_winter), cmocka_unit_test(across_daylight_saving),
        cmocka_unit_test(weekly_on_monday),          cmocka_unit_test(other_zones),
        cmocka_unit_test(intervals),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
