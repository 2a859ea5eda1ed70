/* Load generator for the echo benchmarks: one thread, one epoll, many connections.
 *
 *   loadgen echo    --port P --conns N --size S --duration SEC [--warmup SEC] [--pid PID]
 *   loadgen connreq --port P --conns N --size S --duration SEC [--warmup SEC] [--pid PID]
 *   loadgen idle    --port P --conns N [--size S] --pid PID
 *
 * echo:    N connections ping-pong an S-byte message (send, wait for all S bytes back, check
 *          them, send the next). Each message has a different byte pattern, so a server that
 *          mixes up, drops or reorders bytes is caught: the run fails (exit 3).
 * connreq: N concurrent slots, each: connect, send S bytes, read them back, close; repeat.
 *          Source addresses rotate over 127.0.0.2-127.0.0.201 so TIME_WAIT never runs out of
 *          ports.
 * idle:    opens N connections (at most 256 in flight), does one S-byte round trip on each so
 *          the server has really accepted and served it, then reports the server's RSS before
 *          and after (VmRSS, /proc/PID/status), holds 1 s, measures again, and closes them all.
 *
 * With --pid, the server's CPU time (utime+stime from /proc/PID/stat) is sampled at the start and
 * end of the measured window. Output: one JSON object on stdout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum mode { MODE_ECHO, MODE_CONNREQ, MODE_IDLE };
enum state { ST_FREE, ST_CONNECTING, ST_SENDING, ST_RECEIVING, ST_IDLE };

struct conn {
    int fd;
    enum state state;
    uint32_t seq;      /* message number: selects the byte pattern */
    uint32_t sent;     /* bytes of the current message written */
    uint32_t received; /* bytes of the current message read back and verified */
    uint64_t t_start;  /* ns: when the current operation began */
};

static enum mode mode;
static int port, nconns, msg_size = 64;
static double duration = 3.0, warmup = 0.5;
static int server_pid;
static int epfd;
static struct conn *conns;
static uint8_t *pattern; /* msg_size + 256 bytes; message k starts at offset k % 251 */
static uint8_t rbuf[256 * 1024];
static uint64_t *lat;
static size_t lat_len, lat_cap;
static uint64_t ops, connects;
static int measuring, done_phase;
static uint64_t t_window_start, t_window_end;
static unsigned src_rotation;
static int in_flight; /* idle mode: connections not yet idle */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Server CPU seconds so far: user time in *user, user+system returned; -1 if unreadable. */
static double server_cpu_s(double *user) {
    *user = 0;
    if (!server_pid)
        return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", server_pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long utime = 0, stime = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    *user = (double)utime / (double)sysconf(_SC_CLK_TCK);
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static long server_rss_kb(void) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", server_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static double client_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, int idx) {
    fprintf(stderr, "loadgen: %s (connection %d, errno %d: %s)\n", what, idx, errno,
            strerror(errno));
    exit(3);
}

static const uint8_t *message(const struct conn *c) {
    return pattern + ((c->seq * 7u + (uint32_t)(c - conns)) % 251u);
}

static void set_interest(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, op, c->fd, &ev) != 0)
        die("epoll_ctl", (int)(c - conns));
}

static void start_connect(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket", (int)(c - conns));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (mode == MODE_CONNREQ) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000002u + (src_rotation++ % 200u));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0)
            die("bind source address", (int)(c - conns));
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->t_start = now_ns();
    c->sent = c->received = 0;
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS)
        die("connect", (int)(c - conns));
    c->state = ST_CONNECTING;
    set_interest(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void record(uint64_t t_done, uint64_t t_start) {
    if (!measuring || t_done > t_window_end)
        return;
    ops++;
    if (lat_len == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 65536;
        lat = realloc(lat, lat_cap * sizeof *lat);
    }
    lat[lat_len++] = t_done - t_start;
}

/* Writes what is left of the current message; arms EPOLLOUT only if the kernel refused some. */
static void pump_send(struct conn *c) {
    while (c->sent < (uint32_t)msg_size) {
        ssize_t n = send(c->fd, message(c) + c->sent, (size_t)msg_size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (c->state != ST_SENDING) {
                    c->state = ST_SENDING;
                    set_interest(c, EPOLLOUT | EPOLLIN, EPOLL_CTL_MOD);
                }
                return;
            }
            die("send", (int)(c - conns));
        }
        c->sent += (uint32_t)n;
    }
    if (c->state != ST_RECEIVING) {
        int was_sending = c->state == ST_SENDING || c->state == ST_CONNECTING;
        c->state = ST_RECEIVING;
        if (was_sending)
            set_interest(c, EPOLLIN, EPOLL_CTL_MOD);
    }
}

static void begin_message(struct conn *c) {
    c->seq++;
    c->sent = c->received = 0;
    c->t_start = now_ns();
    pump_send(c);
}

static void finish_connection(struct conn *c) {
    close(c->fd);
    c->fd = -1;
    c->state = ST_FREE;
}

static void on_message_echoed(struct conn *c) {
    uint64_t t = now_ns();
    switch (mode) {
    case MODE_ECHO:
        record(t, c->t_start);
        if (!done_phase)
            begin_message(c);
        break;
    case MODE_CONNREQ:
        record(t, c->t_start);
        finish_connection(c);
        connects++;
        if (!done_phase)
            start_connect(c);
        break;
    case MODE_IDLE:
        c->state = ST_IDLE;
        set_interest(c, EPOLLIN, EPOLL_CTL_DEL);
        in_flight--;
        break;
    }
}

static void on_event(struct conn *c, uint32_t events) {
    int idx = (int)(c - conns);
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            errno = err;
            die("connect failed", idx);
        }
        pump_send(c);
        return;
    }
    if (c->state == ST_SENDING && (events & EPOLLOUT))
        pump_send(c);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->state == ST_FREE)
        return;
    size_t want = (size_t)msg_size - c->received;
    if (want == 0) {
        /* Bytes beyond the message: the server echoed more than it was sent. */
        ssize_t n = recv(c->fd, rbuf, sizeof rbuf, 0);
        if (n > 0) {
            fprintf(stderr, "loadgen: %zd unexpected bytes on connection %d\n", n, idx);
            exit(3);
        }
        if (n == 0)
            die("server closed the connection", idx);
        return;
    }
    ssize_t n = recv(c->fd, rbuf, want < sizeof rbuf ? want : sizeof rbuf, 0);
    if (n < 0) {
        if (errno == EAGAIN)
            return;
        die("recv", idx);
    }
    if (n == 0) {
        errno = 0;
        die("server closed the connection mid-message", idx);
    }
    if (memcmp(rbuf, message(c) + c->received, (size_t)n) != 0) {
        fprintf(stderr, "loadgen: echoed bytes differ from those sent (connection %d, message %u)\n",
                idx, c->seq);
        exit(3);
    }
    c->received += (uint32_t)n;
    if (c->received == (uint32_t)msg_size && c->sent == (uint32_t)msg_size)
        on_message_echoed(c);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_us(double p) {
    if (!lat_len)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)(lat_len - 1) + 0.5);
    return (double)lat[i] / 1000.0;
}

static void poll_events(int timeout_ms) {
    struct epoll_event evs[512];
    int n = epoll_wait(epfd, evs, 512, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait", -1);
    for (int i = 0; i < n; i++)
        on_event(&conns[evs[i].data.u32], evs[i].events);
}

static int run_idle(void) {
    long rss_before = server_rss_kb();
    int next = 0;
    uint64_t deadline = now_ns() + 120ull * 1000000000ull;
    while (next < nconns || in_flight > 0) {
        while (next < nconns && in_flight < 256) {
            start_connect(&conns[next++]);
            in_flight++;
        }
        poll_events(100);
        if (now_ns() > deadline) {
            fprintf(stderr, "loadgen: idle connections not all served within 120 s\n");
            return 3;
        }
    }
    struct timespec pause = {.tv_sec = 1};
    nanosleep(&pause, NULL);
    long rss_after = server_rss_kb();
    nanosleep(&pause, NULL);
    long rss_after2 = server_rss_kb();
    printf("{\"mode\":\"idle\",\"conns\":%d,\"size\":%d,\"rss_before_kb\":%ld,"
           "\"rss_after_kb\":%ld,\"rss_after_1s_kb\":%ld,\"bytes_per_conn\":%.1f}\n",
           nconns, msg_size, rss_before, rss_after, rss_after2,
           (double)(rss_after2 - rss_before) * 1024.0 / nconns);
    for (int i = 0; i < nconns; i++)
        close(conns[i].fd);
    return 0;
}

static int run_load(void) {
    int next = 0;
    uint64_t t0 = now_ns();
    double cpu0 = 0, ucpu0 = 0, ccpu0 = 0;
    /* Connect everything (256 at a time) before the warm-up clock starts. */
    while (next < nconns) {
        int limit = next + 256 < nconns ? next + 256 : nconns;
        while (next < limit)
            start_connect(&conns[next++]);
        poll_events(0);
    }
    uint64_t t_warm_end = now_ns() + (uint64_t)(warmup * 1e9);
    t_window_end = t_warm_end + (uint64_t)(duration * 1e9);
    for (;;) {
        uint64_t t = now_ns();
        if (!measuring && t >= t_warm_end) {
            measuring = 1;
            t_window_start = t;
            cpu0 = server_cpu_s(&ucpu0);
            ccpu0 = client_cpu_s();
            ops = 0;
        }
        if (t >= t_window_end)
            break;
        if (t - t0 > (uint64_t)((duration + warmup + 60) * 1e9))
            die("run did not end", -1);
        poll_events(10);
    }
    double ucpu1;
    double cpu1 = server_cpu_s(&ucpu1);
    double ccpu1 = client_cpu_s();
    done_phase = 1;
    double secs = (double)(t_window_end - t_window_start) / 1e9;
    qsort(lat, lat_len, sizeof *lat, cmp_u64);
    printf("{\"mode\":\"%s\",\"conns\":%d,\"size\":%d,\"duration_s\":%.3f,\"ops\":%llu,"
           "\"ops_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"server_cpu_s\":%.3f,"
           "\"server_user_s\":%.3f,"
           "\"client_cpu_s\":%.3f,\"connects\":%llu}\n",
           mode == MODE_ECHO ? "echo" : "connreq", nconns, msg_size, secs,
           (unsigned long long)ops, (double)ops / secs, percentile_us(50), percentile_us(99),
           server_pid ? cpu1 - cpu0 : -1.0, server_pid ? ucpu1 - ucpu0 : -1.0, ccpu1 - ccpu0, (unsigned long long)connects);
    fflush(stdout);
    for (int i = 0; i < nconns; i++)
        if (conns[i].state != ST_FREE)
            close(conns[i].fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: loadgen echo|connreq|idle --port P --conns N [--size S] "
                        "[--duration SEC] [--warmup SEC] [--pid PID]\n");
        return 2;
    }
    if (!strcmp(argv[1], "echo"))
        mode = MODE_ECHO;
    else if (!strcmp(argv[1], "connreq"))
        mode = MODE_CONNREQ;
    else if (!strcmp(argv[1], "idle"))
        mode = MODE_IDLE;
    else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port"))
            port = atoi(v);
        else if (!strcmp(k, "--conns"))
            nconns = atoi(v);
        else if (!strcmp(k, "--size"))
            msg_size = atoi(v);
        else if (!strcmp(k, "--duration"))
            duration = atof(v);
        else if (!strcmp(k, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(k, "--pid"))
            server_pid = atoi(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (port <= 0 || nconns <= 0 || msg_size <= 0 || (mode == MODE_IDLE && !server_pid)) {
        fprintf(stderr, "loadgen: --port, --conns (and --pid for idle) are required\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)nconns + 16 > rl.rlim_cur) {
        fprintf(stderr, "loadgen: %d connections need more fds than RLIMIT_NOFILE=%lu\n", nconns,
                (unsigned long)rl.rlim_cur);
        return 2;
    }
    pattern = malloc((size_t)msg_size + 256);
    for (int i = 0; i < msg_size + 256; i++)
        pattern[i] = (uint8_t)((i * 131u) ^ (i >> 8));
    conns = calloc((size_t)nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++)
        conns[i].fd = -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    return mode == MODE_IDLE ? run_idle() : run_load();
}
