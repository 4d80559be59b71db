/* The reason a libcurl transfer failed, as the short machine-readable
 * string the host's http() helper reports in bb_http_response.error and
 * plug-ins pass on to done(): "timeout", "connect", "resolve",
 * "empty_reply", "send_error", "recv_error", "tls_error", "tls_verify",
 * "http2_error", else "curl_<code>". For plug-ins that drive libcurl
 * themselves on the host's multi handle, so that their reasons match.
 * Header only; include <curl/curl.h> first.
 *
 * Threads: any (pure). */
#ifndef BUURTBUS_CURL_REASON_H
#define BUURTBUS_CURL_REASON_H

#include <stdio.h>

static inline const char *bb_curl_reason(CURLcode code, char *buf, size_t cap)
{
    switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
        return "resolve";
    case CURLE_GOT_NOTHING:
        return "empty_reply";
    case CURLE_SEND_ERROR:
        return "send_error";
    case CURLE_RECV_ERROR:
        return "recv_error";
    case CURLE_SSL_CONNECT_ERROR:
        return "tls_error";
    case CURLE_PEER_FAILED_VERIFICATION:
        return "tls_verify";
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return "http2_error";
    default:
        snprintf(buf, cap, "curl_%d", (int)code);
        return buf;
    }
}

#endif
