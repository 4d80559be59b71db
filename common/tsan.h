/* Annotations for ThreadSanitizer where synchronisation happens inside
 * code it cannot see (Concurrency Kit's fences are inline assembly): a
 * release by one thread and an acquire of the same address by another
 * tell it what ck_ring and ck_epoch guarantee. Empty in other builds.
 *
 * Threads: any. */
#ifndef BB_TSAN_H
#define BB_TSAN_H

#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define BB_TSAN_ACQUIRE(p) __tsan_acquire((void *)(p))
#define BB_TSAN_RELEASE(p) __tsan_release((void *)(p))
#else
#define BB_TSAN_ACQUIRE(p) ((void)(p))
#define BB_TSAN_RELEASE(p) ((void)(p))
#endif

#endif
