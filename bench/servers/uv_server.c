/* libuv anchor server, written the way a careful libuv user would.
 *
 *   uv_server PORT [--echo | --http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]
 *
 * Large responses (--body): one uv_write of two buffers, the header and the body held in memory
 * (no copy: libuv keeps the pointers until the write callback). --sendfile FILE: the header with
 * uv_write, then the body with uv_fs_sendfile from the file, one response at a time per
 * connection. uv_fs_sendfile runs on libuv's thread pool; on Linux it first tries
 * copy_file_range, which refuses a socket (EINVAL), and then falls back to its emulation, a loop
 * of 8 KiB pread + write that waits in poll() when the non-blocking socket is full. So libuv
 * never calls sendfile(2) into a TCP stream: every byte is copied through user space, on a pool
 * thread (the process's CPU time counts those threads too). While a sendfile is in flight the
 * socket stays open (a pool thread is using its descriptor): a close waits for it, after a
 * shutdown() that wakes a thread waiting in poll(). SIGPIPE is ignored (the pool's write() to a
 * reset peer has no MSG_NOSIGNAL), as every libuv program that writes to sockets must.
 *
 * One static read buffer (alloc_cb hands out the same block: libuv calls read_cb before the next
 * alloc_cb), uv_try_write first and uv_write (with a heap copy) only for what the kernel refused,
 * uv_shutdown so queued output is flushed before an echo connection closes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <uv.h>

#include "http_common.h"

#define READ_BUF_SIZE (64 * 1024)

struct client {
    uv_tcp_t tcp;
    char *in; /* http: incomplete request carried between reads */
    size_t in_len;
    size_t pending_writes;
    int closing;
    /* --sendfile: responses go out one at a time (header, then the file) */
    uv_fs_t fs;
    size_t queued;      /* requests waiting for their response */
    int responding;     /* a response's header write or sendfile is under way */
    int fs_busy;        /* a uv_fs_sendfile is in flight: the socket must stay open */
    int eof;            /* the peer sent EOF: close once the queued responses are out */
    int64_t file_off;   /* how much of the file this response has sent */
};

struct write_req {
    uv_write_t req;
    uv_buf_t buf;
};

static uv_loop_t *loop;
static uv_tcp_t server;
static int quiet, http_mode, keep_alive;
static char read_buf[READ_BUF_SIZE];
static uv_signal_t sigint_watcher, sigterm_watcher;
static struct http_large large;

static void client_close(struct client *c, const char *reason, int err);
static void file_next(struct client *c);

static void on_large_written(uv_write_t *req, int status) {
    struct client *c = (struct client *)req->handle;
    free(req);
    c->pending_writes--;
    if (status < 0)
        client_close(c, status == UV_ECONNRESET || status == UV_EPIPE ? "peer_reset" : "error",
                     -status);
}

static void log_close(struct client *c, const char *reason, int err) {
    if (!quiet)
        printf("close %p %s %d\n", (void *)c, reason, err);
}

static void on_closed(uv_handle_t *h) {
    struct client *c = (struct client *)h;
    free(c->in);
    free(c);
}

static void client_close(struct client *c, const char *reason, int err) {
    if (c->closing)
        return;
    c->closing = 1;
    log_close(c, reason, err);
    if (c->fs_busy) {
        /* A pool thread is writing into the socket: on_file_sent closes it. shutdown() makes a
         * thread waiting in poll() for room return (its write fails with EPIPE). */
        uv_os_fd_t fd;
        uv_read_stop((uv_stream_t *)&c->tcp);
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            shutdown(fd, SHUT_RDWR);
        return;
    }
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static const char *reset_or_error(ssize_t status) {
    return status == UV_ECONNRESET || status == UV_EPIPE ? "peer_reset" : "error";
}

/* --sendfile: the current response's body, from file_off on, on the thread pool. */
static void file_send(struct client *c);

static void on_file_sent(uv_fs_t *req) {
    struct client *c = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    c->fs_busy = 0;
    if (c->closing) { /* a close waited for this sendfile */
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    if (n <= 0) { /* libuv's emulation reports a reset peer as EPIPE, ECONNRESET or EIO */
        c->responding = 0;
        client_close(c, n == UV_EIO ? "peer_reset" : reset_or_error(n), n ? (int)-n : EIO);
        return;
    }
    c->file_off += n;
    if ((size_t)c->file_off < large.len) {
        file_send(c);
        return;
    }
    c->responding = 0;
    file_next(c);
}

static void file_send(struct client *c) {
    uv_os_fd_t fd;
    int rc = uv_fileno((uv_handle_t *)&c->tcp, &fd);
    if (rc == 0) {
        c->fs.data = c;
        rc = uv_fs_sendfile(loop, &c->fs, fd, large.fd, c->file_off,
                            large.len - (size_t)c->file_off, on_file_sent);
    }
    if (rc < 0) {
        c->responding = 0;
        client_close(c, "error", -rc);
        return;
    }
    c->fs_busy = 1;
}

static void on_file_header_written(uv_write_t *req, int status) {
    struct client *c = (struct client *)req->handle;
    free(req);
    c->pending_writes--;
    if (status < 0 || c->closing) {
        c->responding = 0;
        client_close(c, reset_or_error(status), -status);
        return;
    }
    c->file_off = 0;
    file_send(c);
}

/* --sendfile: starts the next queued response unless one is under way. */
static void file_next(struct client *c) {
    if (c->responding || c->closing)
        return;
    if (c->queued == 0) {
        if (c->eof)
            client_close(c, "peer_eof", 0);
        return;
    }
    c->queued--;
    c->responding = 1;
    uv_write_t *req = malloc(sizeof *req);
    uv_buf_t header = uv_buf_init(large.header, (unsigned)large.header_len);
    c->pending_writes++;
    int rc = uv_write(req, (uv_stream_t *)&c->tcp, &header, 1, on_file_header_written);
    if (rc < 0) {
        free(req);
        c->pending_writes--;
        c->responding = 0;
        client_close(c, reset_or_error(rc), -rc);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(read_buf, sizeof read_buf);
}

static void on_write_done(uv_write_t *req, int status) {
    struct write_req *wr = (struct write_req *)req;
    struct client *c = (struct client *)req->handle;
    free(wr->buf.base);
    free(wr);
    c->pending_writes--;
    if (status < 0) {
        client_close(c, status == UV_ECONNRESET || status == UV_EPIPE ? "peer_reset" : "error",
                     -status);
        return;
    }
    /* HTTP/1.0: the response has left; close. */
    if (http_mode && !keep_alive && c->pending_writes == 0)
        client_close(c, "local", 0);
}

/* Writes now; queues a copy of what the kernel did not take. */
static int client_write(struct client *c, const uv_buf_t *bufs, unsigned nbufs) {
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    int n = c->pending_writes ? UV_EAGAIN : uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0) {
        client_close(c, n == UV_ECONNRESET || n == UV_EPIPE ? "peer_reset" : "error", -n);
        return -1;
    }
    if ((size_t)n == total)
        return 0;
    struct write_req *wr = malloc(sizeof *wr);
    char *copy = malloc(total - (size_t)n);
    size_t off = 0, skip = (size_t)n;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(copy + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    wr->buf = uv_buf_init(copy, (unsigned)off);
    c->pending_writes++;
    uv_write(&wr->req, (uv_stream_t *)&c->tcp, &wr->buf, 1, on_write_done);
    return 1;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    struct client *c = (struct client *)req->handle;
    free(req);
    client_close(c, "peer_eof", 0);
}

static void handle_http(struct client *c, const char *data, size_t len) {
    const char *buf = data;
    size_t buf_len = len;
    char *joined = NULL;
    if (c->in) {
        joined = realloc(c->in, c->in_len + len);
        memcpy(joined + c->in_len, data, len);
        buf = joined;
        buf_len = c->in_len + len;
        c->in = NULL;
        c->in_len = 0;
    }
    size_t consumed = 0;
    size_t requests = http_count_requests(buf, buf_len, &consumed, keep_alive ? 0 : 1);
    size_t rest = buf_len - consumed;
    if (rest > HTTP_MAX_REQUEST) {
        free(joined);
        client_close(c, "error", EMSGSIZE);
        return;
    }
    if (rest && keep_alive) {
        c->in = malloc(rest);
        memcpy(c->in, buf + consumed, rest);
        c->in_len = rest;
    } else if (rest && !requests) {
        c->in = malloc(rest);
        memcpy(c->in, buf + consumed, rest);
        c->in_len = rest;
    }
    free(joined);
    if (!requests)
        return;
    if (!keep_alive) {
        uv_buf_t b = uv_buf_init((char *)HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_CLOSE_LEN);
        uv_read_stop((uv_stream_t *)&c->tcp);
        if (client_write(c, &b, 1) == 0)
            client_close(c, "local", 0);
        return;
    }
    if (large.from_file) {
        c->queued += requests;
        file_next(c);
        return;
    }
    while (large.on && requests > 0) {
        requests--;
        uv_write_t *req = malloc(sizeof *req);
        uv_buf_t two[2] = {uv_buf_init(large.header, (unsigned)large.header_len),
                           uv_buf_init(large.body, (unsigned)large.len)};
        c->pending_writes++;
        uv_write(req, (uv_stream_t *)&c->tcp, two, 2, on_large_written);
    }
    uv_buf_t bufs[64];
    while (requests > 0) {
        unsigned batch = requests < 64 ? (unsigned)requests : 64;
        for (unsigned i = 0; i < batch; i++)
            bufs[i] = uv_buf_init((char *)HTTP_RESPONSE_KEEPALIVE, HTTP_RESPONSE_KEEPALIVE_LEN);
        if (client_write(c, bufs, batch) < 0)
            return;
        requests -= batch;
    }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct client *c = (struct client *)stream;
    if (nread > 0) {
        if (http_mode) {
            handle_http(c, buf->base, (size_t)nread);
        } else {
            uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
            client_write(c, &b, 1);
        }
        return;
    }
    if (nread == UV_EOF && large.from_file) {
        c->eof = 1; /* answer what was asked, then close (file_next) */
        uv_read_stop(stream);
        file_next(c);
    } else if (nread == UV_EOF) {
        if (c->pending_writes) {
            uv_read_stop(stream);
            uv_shutdown_t *req = malloc(sizeof *req);
            uv_shutdown(req, stream, on_shutdown);
        } else {
            client_close(c, "peer_eof", 0);
        }
    } else if (nread < 0) {
        client_close(c, nread == UV_ECONNRESET ? "peer_reset" : "error", (int)-nread);
    }
}

static void on_connection(uv_stream_t *srv, int status) {
    if (status < 0)
        return;
    struct client *c = calloc(1, sizeof *c);
    uv_tcp_init(loop, &c->tcp);
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (!quiet) {
        struct sockaddr_storage peer;
        int plen = sizeof peer;
        char ip[64] = "?";
        uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen);
        uv_ip4_name((struct sockaddr_in *)&peer, ip, sizeof ip);
        printf("accept %p %s:%u\n", (void *)c, ip,
               ntohs(((struct sockaddr_in *)&peer)->sin_port));
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void close_walk(uv_handle_t *h, void *arg) {
    (void)arg;
    if (uv_is_closing(h))
        return;
    if (h->type == UV_TCP && h != (uv_handle_t *)&server)
        client_close((struct client *)h, "loop_freed", 0);
    else
        uv_close(h, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    uv_walk(loop, close_walk, NULL);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr,
                "usage: %s PORT [--echo|--http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]\n",
                argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-q"))
            quiet = 1;
        else if (!strcmp(argv[i], "--http"))
            http_mode = 1;
        else if (!strcmp(argv[i], "--echo"))
            http_mode = 0;
        else if (!strcmp(argv[i], "--keep-alive"))
            keep_alive = 1;
        else if (!http_large_option(&large, argc, argv, &i)) {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    loop = uv_default_loop();
    uv_tcp_init(loop, &server);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", port, &addr);
    int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&server, SOMAXCONN, on_connection);
    if (rc != 0) {
        fprintf(stderr, "listen: %s\n", uv_strerror(rc));
        return 1;
    }
    int alen = sizeof addr;
    uv_tcp_getsockname(&server, (struct sockaddr *)&addr, &alen);
    printf("listening %u\n", ntohs(addr.sin_port));

    uv_signal_init(loop, &sigint_watcher);
    uv_signal_start(&sigint_watcher, on_signal, SIGINT);
    uv_signal_init(loop, &sigterm_watcher);
    uv_signal_start(&sigterm_watcher, on_signal, SIGTERM);
    uv_unref((uv_handle_t *)&sigint_watcher);
    uv_unref((uv_handle_t *)&sigterm_watcher);

    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return 0;
}
