#include "bb_err.h"

const char *bb_strerror(int err)
{
    switch (err) {
    case BB_OK:
        return "ok";
    case BB_AGAIN:
        return "try again";
    case BB_RETRY:
        return "retry later";
    case BB_ENOMEM:
        return "out of memory";
    case BB_EINVAL:
        return "invalid argument";
    case BB_ERANGE:
        return "out of range";
    case BB_ENOTFOUND:
        return "not found";
    case BB_EIO:
        return "i/o error";
    case BB_EPROTO:
        return "protocol error";
    case BB_EFULL:
        return "full";
    case BB_ETOOBIG:
        return "too big";
    case BB_ECONFIG:
        return "bad configuration";
    case BB_EPERM:
        return "permanent failure";
    }
    return "unknown error";
}
