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
/* Large-response mode (--body FILE / --sendfile FILE): every keep-alive response is a header
 * and the file's bytes, held in memory (--body) or sent from the file each time (--sendfile). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct http_large {
    int on;        /* --body or --sendfile given */
    int from_file; /* --sendfile: `fd` is open, `body` is NULL */
    int fd;
    char *body;
    size_t len;
    char header[128];
    size_t header_len;
};

/* Recognises argv[*i] as --body/--sendfile FILE (advancing *i); 1 if it was one. Exits on error. */
static inline int http_large_option(struct http_large *l, int argc, char **argv, int *i) {
    int from_file = !strcmp(argv[*i], "--sendfile");
    if (!from_file && strcmp(argv[*i], "--body"))
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s needs a FILE\n", argv[*i]);
        exit(2);
    }
    const char *path = argv[++*i];
    struct stat st;
    l->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (l->fd < 0 || fstat(l->fd, &st) != 0) {
        perror(path);
        exit(1);
    }
    l->on = 1;
    l->from_file = from_file;
    l->len = (size_t)st.st_size;
    if (!from_file) {
        l->body = malloc(l->len ? l->len : 1);
        if (!l->body || pread(l->fd, l->body, l->len, 0) != (ssize_t)l->len) {
            perror(path);
            exit(1);
        }
        close(l->fd);
        l->fd = -1;
    }
    l->header_len = (size_t)snprintf(l->header, sizeof l->header,
                                     "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                     "Content-Length: %zu\r\n\r\n",
                                     l->len);
    return 1;
}
#endif
