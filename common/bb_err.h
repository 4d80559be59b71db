/* buurtbus error codes shared by broker, workers and tools.
 *
 * 0 is success. BB_AGAIN and BB_RETRY are outcomes, not failures: "not now,
 * call again when ready" and "failed for now, try later" (like nginx
 * NGX_AGAIN and Fluent Bit FLB_RETRY). */
#ifndef BB_ERR_H
#define BB_ERR_H

enum bb_err {
    BB_OK = 0,
    BB_AGAIN = 1,      /* would block; retry when ready */
    BB_RETRY = 2,      /* transient failure; retry later */
    BB_ENOMEM = -1,    /* allocation failed */
    BB_EINVAL = -2,    /* invalid argument or input */
    BB_ERANGE = -3,    /* value out of range */
    BB_ENOTFOUND = -4, /* no such key, user, group, ... */
    BB_EIO = -5,       /* I/O or connection failure */
    BB_EPROTO = -6,    /* peer spoke something we do not understand */
    BB_EFULL = -7,     /* bounded queue or buffer full */
    BB_ETOOBIG = -8,   /* input over a configured limit */
    BB_ECONFIG = -9,   /* bad configuration */
    BB_EPERM = -10,    /* permanent failure, do not retry */
};

/* A static, human-readable name for err ("ok", "out of memory", ...). */
const char *bb_strerror(int err);

#endif
