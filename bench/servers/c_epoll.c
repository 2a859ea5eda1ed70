/* Hand-written C epoll server: the practical limit the benchmark measures eploop against.
 *
 *   c_epoll PORT [--echo | --http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]
 *
 * Large responses (--body/--sendfile): each connection counts the responses it owes and how far
 * into the current one it is; writev(header, body) from memory, or sendfile(2) for the body,
 * until EAGAIN, then EPOLLOUT. No copy of the body.
 *
 * Single-threaded, level-triggered, one read buffer for the whole process, writes go straight
 * to the socket and only what the kernel refuses is queued (then, and only then, EPOLLOUT is
 * armed). Per idle connection the server owns nothing but a 16-byte slot in an fd-indexed
 * table. Prints `listening <port>`, and unless -q, `accept`/`close` lines as in DESIGN.md §4.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "http_common.h"

#define READ_BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256
#define PAUSE_READ_ABOVE (1024 * 1024)

struct conn {
    char *out;          /* bytes the kernel did not take yet; NULL when nothing is pending */
    uint32_t out_len;
    uint32_t out_off;
    char *in;           /* http: an incomplete request carried over between reads */
    uint32_t in_len;
    uint8_t open;
    uint8_t close_after_flush;
};

static struct conn *conns;
static int conns_cap;
static int epfd;
static int quiet;
static int http_mode;
static int keep_alive;
static volatile sig_atomic_t stop_requested;
static char read_buf[READ_BUF_SIZE];
static struct http_large large;
/* Large mode only (its own table: the idle connections of the other modes stay 24 bytes). */
static struct owed {
    uint32_t responses; /* responses owed, the current one included */
    uint64_t off;       /* bytes of the current response (header + body) already sent */
} *owed;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void log_close(int fd, const char *reason, int err) {
    if (!quiet)
        printf("close %d %s %d\n", fd, reason, err);
}

static void conn_close(int fd, const char *reason, int err) {
    struct conn *c = &conns[fd];
    if (owed)
        owed[fd] = (struct owed){0, 0};
    free(c->out);
    free(c->in);
    memset(c, 0, sizeof *c);
    close(fd); /* also removes it from the epoll set */
    log_close(fd, reason, err);
}

static const char *reason_for_errno(int err) {
    return (err == ECONNRESET || err == EPIPE || err == ECONNABORTED) ? "peer_reset" : "error";
}

static void set_events(int fd, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

/* Appends bytes the kernel did not accept; arms EPOLLOUT when the queue goes non-empty. */
static int queue_output(int fd, const char *data, size_t len) {
    struct conn *c = &conns[fd];
    int was_empty = c->out == NULL;
    size_t pending = c->out_len - c->out_off;
    char *grown = malloc(pending + len);
    if (!grown)
        return -1;
    if (pending)
        memcpy(grown, c->out + c->out_off, pending);
    memcpy(grown + pending, data, len);
    free(c->out);
    c->out = grown;
    c->out_off = 0;
    c->out_len = (uint32_t)(pending + len);
    if (c->out_len > PAUSE_READ_ABOVE)
        set_events(fd, EPOLLOUT);
    else if (was_empty)
        set_events(fd, EPOLLIN | EPOLLOUT);
    return 0;
}

/* Sends at once when nothing is queued; returns 0, or -1 after closing the connection. */
static int send_or_queue(int fd, const char *data, size_t len) {
    if (conns[fd].out)
        return queue_output(fd, data, len) == 0 ? 0 : (conn_close(fd, "error", ENOMEM), -1);
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN) {
            int err = errno;
            conn_close(fd, reason_for_errno(err), err);
            return -1;
        }
        n = 0;
    }
    if ((size_t)n < len && queue_output(fd, data + n, len - (size_t)n) != 0) {
        conn_close(fd, "error", ENOMEM);
        return -1;
    }
    return 0;
}

/* Sends `count` copies of the canned response with one writev per IOV_MAX copies. */
static int send_responses(int fd, const char *resp, size_t resp_len, size_t count) {
    struct iovec iov[64];
    while (count > 0) {
        size_t batch = count < 64 ? count : 64;
        for (size_t i = 0; i < batch; i++)
            iov[i] = (struct iovec){.iov_base = (void *)resp, .iov_len = resp_len};
        size_t total = batch * resp_len;
        ssize_t n = 0;
        if (!conns[fd].out) {
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = batch};
            n = sendmsg(fd, &msg, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN) {
                    int err = errno;
                    conn_close(fd, reason_for_errno(err), err);
                    return -1;
                }
                n = 0;
            }
        }
        for (size_t i = 0; i < batch && (size_t)n < total; i++) {
            size_t start = i * resp_len, end = start + resp_len;
            if ((size_t)n >= end)
                continue;
            size_t skip = (size_t)n > start ? (size_t)n - start : 0;
            if (queue_output(fd, resp + skip, resp_len - skip) != 0) {
                conn_close(fd, "error", ENOMEM);
                return -1;
            }
        }
        count -= batch;
    }
    return 0;
}

/* Large mode: sends what is owed until the kernel says EAGAIN (then EPOLLOUT) or nothing is
 * owed (then EPOLLIN again). Returns -1 after closing the connection. */
static int large_pump(int fd) {
    struct owed *o = &owed[fd];
    size_t total = large.header_len + large.len;
    while (o->responses > 0) {
        ssize_t n;
        if (o->off < large.header_len || !large.from_file) {
            struct iovec iov[2];
            int cnt = 0;
            if (o->off < large.header_len)
                iov[cnt++] = (struct iovec){large.header + o->off, large.header_len - o->off};
            size_t body_off = o->off > large.header_len ? o->off - large.header_len : 0;
            if (!large.from_file)
                iov[cnt++] = (struct iovec){large.body + body_off, large.len - body_off};
            struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
            n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        } else {
            off_t file_off = (off_t)(o->off - large.header_len);
            n = sendfile(fd, large.fd, &file_off, total - o->off);
        }
        if (n < 0) {
            if (errno == EAGAIN) {
                set_events(fd, EPOLLOUT);
                return 0;
            }
            int err = errno;
            conn_close(fd, reason_for_errno(err), err);
            return -1;
        }
        o->off += (uint64_t)n;
        if (o->off == total) {
            o->off = 0;
            o->responses--;
        }
    }
    set_events(fd, EPOLLIN);
    return 0;
}

/* Peer finished sending: flush what is queued, then close. */
static void peer_eof(int fd) {
    struct conn *c = &conns[fd];
    if (c->out) {
        c->close_after_flush = 1;
        set_events(fd, EPOLLOUT);
    } else {
        conn_close(fd, "peer_eof", 0);
    }
}

static void handle_http(int fd, const char *data, size_t len) {
    struct conn *c = &conns[fd];
    const char *buf = data;
    size_t buf_len = len;
    char *joined = NULL;
    if (c->in) {
        joined = realloc(c->in, c->in_len + len);
        if (!joined) {
            conn_close(fd, "error", ENOMEM);
            return;
        }
        memcpy(joined + c->in_len, data, len);
        c->in = NULL;
        buf = joined;
        buf_len = c->in_len + len;
        c->in_len = 0;
    }
    size_t consumed = 0;
    size_t requests = http_count_requests(buf, buf_len, &consumed, keep_alive ? 0 : 1);
    if (keep_alive && large.on && requests) {
        int idle = owed[fd].responses == 0;
        owed[fd].responses += (uint32_t)requests;
        if (idle && large_pump(fd) != 0) {
            free(joined);
            return;
        }
        requests = 0;
    }
    if (keep_alive) {
        if (requests && send_responses(fd, HTTP_RESPONSE_KEEPALIVE, HTTP_RESPONSE_KEEPALIVE_LEN,
                                       requests) != 0) {
            free(joined);
            return;
        }
        if (consumed < buf_len) {
            if (buf_len - consumed > HTTP_MAX_REQUEST) {
                free(joined);
                conn_close(fd, "error", EMSGSIZE);
                return;
            }
            c->in = malloc(buf_len - consumed);
            if (!c->in) {
                free(joined);
                conn_close(fd, "error", ENOMEM);
                return;
            }
            memcpy(c->in, buf + consumed, buf_len - consumed);
            c->in_len = (uint32_t)(buf_len - consumed);
        }
        free(joined);
        return;
    }
    /* HTTP/1.0 answer-then-close: one response, then close once it has left. */
    if (requests) {
        free(joined);
        if (send_or_queue(fd, HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_CLOSE_LEN) != 0)
            return;
        if (c->out) {
            c->close_after_flush = 1;
            set_events(fd, EPOLLOUT);
        } else {
            conn_close(fd, "local", 0);
        }
        return;
    }
    if (buf_len > HTTP_MAX_REQUEST) {
        free(joined);
        conn_close(fd, "error", EMSGSIZE);
        return;
    }
    c->in = joined ? joined : malloc(buf_len);
    if (!c->in) {
        conn_close(fd, "error", ENOMEM);
        return;
    }
    if (!joined)
        memcpy(c->in, buf, buf_len);
    c->in_len = (uint32_t)buf_len;
}

static void on_readable(int fd) {
    /* Level-triggered: one read per wake-up keeps connections fair; a full buffer reads again. */
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t n = recv(fd, read_buf, sizeof read_buf, 0);
        if (n > 0) {
            if (http_mode)
                handle_http(fd, read_buf, (size_t)n);
            else if (send_or_queue(fd, read_buf, (size_t)n) != 0)
                return;
            if (!conns[fd].open || conns[fd].close_after_flush)
                return;
            if ((size_t)n < sizeof read_buf || conns[fd].out_len > PAUSE_READ_ABOVE)
                return;
            continue;
        }
        if (n == 0) {
            peer_eof(fd);
        } else if (errno != EAGAIN && errno != EINTR) {
            int err = errno;
            conn_close(fd, reason_for_errno(err), err);
        }
        return;
    }
}

static void on_writable(int fd) {
    struct conn *c = &conns[fd];
    if (owed && owed[fd].responses) {
        large_pump(fd);
        return;
    }
    while (c->out_off < c->out_len) {
        ssize_t n = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            int err = errno;
            conn_close(fd, reason_for_errno(err), err);
            return;
        }
        c->out_off += (uint32_t)n;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    if (c->close_after_flush)
        conn_close(fd, http_mode ? "local" : "peer_eof", 0);
    else
        set_events(fd, EPOLLIN);
}

static int reserve_fd = -1;

static void on_acceptable(int lfd) {
    for (;;) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* Shed one pending connection instead of spinning on a full accept queue. */
                close(reserve_fd);
                fd = accept(lfd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return; /* EAGAIN, or a transient error: wait for the next readiness */
        }
        if (fd >= conns_cap) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }
        conns[fd].open = 1;
        if (!quiet) {
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
            printf("accept %d %s:%u\n", fd, ip, ntohs(peer.sin_port));
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [--echo|--http] [--keep-alive] [-q]\n", argv[0]);
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
        else if (http_large_option(&large, argc, argv, &i))
            continue;
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    conns_cap = (int)(rl.rlim_cur > 1048576 ? 1048576 : rl.rlim_cur);
    conns = calloc((size_t)conns_cap, sizeof *conns);
    if (large.on)
        owed = calloc((size_t)conns_cap, sizeof *owed);
    reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* sendfile(2) has no MSG_NOSIGNAL: a peer that reset mid-file would kill the process. */
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, SOMAXCONN) != 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("listening %u\n", ntohs(addr.sin_port));

    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);

    struct epoll_event events[MAX_EVENTS];
    while (!stop_requested) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            uint32_t e = events[i].events;
            if (fd == lfd) {
                on_acceptable(lfd);
                continue;
            }
            /* A connection closed earlier in this batch may have had its fd reused. */
            if (!conns[fd].open)
                continue;
            if (e & EPOLLOUT)
                on_writable(fd);
            if (conns[fd].open && !conns[fd].close_after_flush &&
                (e & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                on_readable(fd);
        }
    }
    for (int fd = 0; fd < conns_cap; fd++)
        if (conns[fd].open)
            conn_close(fd, "loop_freed", 0);
    close(lfd);
    close(epfd);
    free(conns);
    free(owed);
    return 0;
}
