/* The HTTP side shared by the C anchor servers: canned responses and request framing.
 * A request is everything up to and including the blank line "\r\n\r\n" (GET, no body). */
#ifndef BENCH_HTTP_COMMON_H
#define BENCH_HTTP_COMMON_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <string.h>

#define HTTP_BODY "Hello, world!"
/* The seeds' response (with their fixed Date), as c-examples/http_server.c sends it. */
#define HTTP_HEADERS                                                                               \
    "Date: Mon, 1 Jan 1996 01:01:01 GMT\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n"
#define HTTP_RESPONSE_KEEPALIVE "HTTP/1.1 200 OK\r\n" HTTP_HEADERS HTTP_BODY
#define HTTP_RESPONSE_CLOSE "HTTP/1.0 200 OK\r\n" HTTP_HEADERS HTTP_BODY
#define HTTP_RESPONSE_KEEPALIVE_LEN (sizeof(HTTP_RESPONSE_KEEPALIVE) - 1)
#define HTTP_RESPONSE_CLOSE_LEN (sizeof(HTTP_RESPONSE_CLOSE) - 1)
#define HTTP_MAX_REQUEST (64 * 1024)

/* Counts the complete requests in buf (at most `limit`, 0 = no limit) and stores in *consumed
 * the offset just past the last one counted. */
static inline size_t http_count_requests(const char *buf, size_t len, size_t *consumed,
                                         size_t limit) {
    size_t count = 0, pos = 0;
    while (pos < len && (limit == 0 || count < limit)) {
        const char *end = memmem(buf + pos, len - pos, "\r\n\r\n", 4);
        if (!end)
            break;
        pos = (size_t)(end - buf) + 4;
        count++;
    }
    *consumed = pos;
    return count;
}
#endif
