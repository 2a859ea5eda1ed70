/*
 * faultshim: an LD_PRELOAD fault injector for socket I/O, for testing eploop (or any server).
 *
 * It interposes the libc symbols a Rust or C event loop calls (send, sendto, sendmsg, write,
 * writev, recv, recvfrom, recvmsg, read, readv, accept, accept4, epoll_wait, epoll_pwait) and,
 * with a seeded PRNG, makes them misbehave the way the kernel is allowed to:
 *
 *   FS_SEED=n          PRNG seed (default 1): the same seed gives the same fault decisions
 *   FS_SHORT_WRITE=p   percent of socket writes truncated to 1..7 bytes
 *   FS_SHORT_READ=p    percent of socket reads limited to 1..7 bytes
 *   FS_EAGAIN=p        percent of socket reads/writes that start an EAGAIN storm
 *   FS_STORM=n         longest EAGAIN storm, in calls on that fd (default 8)
 *   FS_EINTR=p         percent of socket reads/writes failing with EINTR
 *   FS_RESET=p         percent of socket reads/writes after which the connection is "reset":
 *                      that call and every later one on the fd fail with ECONNRESET (reads)
 *                      or EPIPE (writes) until the fd is closed
 *   FS_EMFILE=p        percent of accept calls failing with EMFILE
 *   FS_EPOLL_EINTR=p   percent of epoll waits failing with EINTR
 *   FS_EPOLL_SHRINK=p  percent of epoll waits limited to 1 event
 *   FS_STATS=path      at exit, append one line of fault counters to this file
 *
 * Only sockets are faulted (never pipes, ttys, eventfds, or the log on stdout). A faked EAGAIN
 * or EINTR is followed by a readiness event for that fd on the next epoll wait (the shim tracks
 * epoll_ctl), so an edge-triggered loop is not starved by a lie the kernel would never tell;
 * the same follows a faked short count (a loop may take a short read or write to mean "drained"
 * or "full", as it does mean on Linux TCP); a faked reset raises EPOLLIN|EPOLLERR|EPOLLHUP.
 * A read on a socket with a reset or hangup already queued is never given a fake EAGAIN or
 * EINTR (the kernel could not say that then). Percentages may be fractional.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536

typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*recv_fn)(int, void *, size_t, int);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*readv_fn)(int, const struct iovec *, int);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*epoll_wait_fn)(int, struct epoll_event *, int, int);
typedef int (*epoll_pwait_fn)(int, struct epoll_event *, int, int, const sigset_t *);
typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);
typedef int (*close_fn)(int);

static struct {
    send_fn send;
    sendto_fn sendto;
    sendmsg_fn sendmsg;
    write_fn write;
    writev_fn writev;
    recv_fn recv;
    recvfrom_fn recvfrom;
    recvmsg_fn recvmsg;
    read_fn read;
    readv_fn readv;
    accept_fn accept;
    accept4_fn accept4;
    epoll_wait_fn epoll_wait;
    epoll_pwait_fn epoll_pwait;
    epoll_ctl_fn epoll_ctl;
    close_fn close;
} real;

#define RESOLVE(name)                                                        \
    do {                                                                     \
        if (!real.name) *(void **)&real.name = dlsym(RTLD_NEXT, #name);       \
    } while (0)

static struct {
    double short_write, short_read, eagain, eintr, reset, emfile, epoll_eintr, epoll_shrink;
    unsigned storm;
    const char *stats_path;
    int enabled;
} cfg;

static struct {
    unsigned long short_writes, short_reads, eagain, eintr, resets, emfile, epoll_eintr, epoll_shrink,
        injected_events, socket_calls;
} count;

/* Per-fd state. kind: 0 unknown, 1 socket, 2 not a socket. */
struct fdstate {
    signed char kind;
    unsigned char storm_left;
    int dead_errno;        /* nonzero: faked reset, fail every call with this */
    uint32_t owed;         /* events to report on the next epoll wait */
    int epfd;              /* epoll instance it is registered with, -1 if none */
    uint32_t reg_events;
    uint64_t reg_data;
};
static struct fdstate fds[MAX_FD];
static int owed_list[MAX_FD]; /* fds with owed events, each once */
static int n_owed;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double env_pct(const char *name) {
    const char *v = getenv(name);
    return v ? strtod(v, NULL) : 0.0;
}

__attribute__((constructor)) static void shim_init(void) {
    const char *seed = getenv("FS_SEED");
    rng_state ^= seed ? strtoull(seed, NULL, 10) * 0xD1B54A32D192ED03ull : 1;
    if (rng_state == 0) rng_state = 1;
    cfg.short_write = env_pct("FS_SHORT_WRITE");
    cfg.short_read = env_pct("FS_SHORT_READ");
    cfg.eagain = env_pct("FS_EAGAIN");
    cfg.eintr = env_pct("FS_EINTR");
    cfg.reset = env_pct("FS_RESET");
    cfg.emfile = env_pct("FS_EMFILE");
    cfg.epoll_eintr = env_pct("FS_EPOLL_EINTR");
    cfg.epoll_shrink = env_pct("FS_EPOLL_SHRINK");
    const char *storm = getenv("FS_STORM");
    cfg.storm = storm ? (unsigned)atoi(storm) : 8;
    if (cfg.storm < 1) cfg.storm = 1;
    if (cfg.storm > 255) cfg.storm = 255;
    cfg.stats_path = getenv("FS_STATS");
    cfg.enabled = 1;
    for (int i = 0; i < MAX_FD; i++) fds[i].epfd = -1;
}

__attribute__((destructor)) static void shim_fini(void) {
    if (!cfg.stats_path) return;
    FILE *f = fopen(cfg.stats_path, "a");
    if (!f) return;
    fprintf(f,
            "short_writes=%lu short_reads=%lu eagain=%lu eintr=%lu resets=%lu emfile=%lu "
            "epoll_eintr=%lu epoll_shrink=%lu injected_events=%lu socket_calls=%lu\n",
            count.short_writes, count.short_reads, count.eagain, count.eintr, count.resets, count.emfile,
            count.epoll_eintr, count.epoll_shrink, count.injected_events, count.socket_calls);
    fclose(f);
}

static uint64_t rng_next(void) {
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static int chance(double pct) {
    if (pct <= 0.0) return 0;
    return (double)(rng_next() >> 11) * (100.0 / 9007199254740992.0) < pct;
}

static size_t small_len(void) { return 1 + (size_t)(rng_next() % 7); }

static struct fdstate *socket_state(int fd) {
    if (!cfg.enabled || fd < 0 || fd >= MAX_FD) return NULL;
    struct fdstate *s = &fds[fd];
    if (s->kind == 0) {
        struct stat st;
        s->kind = (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) ? 1 : 2;
    }
    return s->kind == 1 ? s : NULL;
}

static void forget_fd(int fd) {
    if (fd < 0 || fd >= MAX_FD) return;
    if (fds[fd].owed) {
        for (int i = 0; i < n_owed; i++)
            if (owed_list[i] == fd) {
                owed_list[i] = owed_list[--n_owed];
                break;
            }
    }
    fds[fd].kind = 0;
    fds[fd].storm_left = 0;
    fds[fd].dead_errno = 0;
    fds[fd].owed = 0;
    fds[fd].epfd = -1;
}

static void owe(struct fdstate *s, uint32_t ev) {
    if (!s->owed) owed_list[n_owed++] = (int)(s - fds);
    s->owed |= ev;
}

/* A reset or hangup is already queued on fd. Then a read cannot honestly say EAGAIN: the kernel
   hands over the remaining bytes and then the error or EOF, with nothing left to race with. */
static int hangup_pending(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP));
}

/*
 * Decide the fate of one socket I/O call before it reaches the kernel.
 * Returns -1 (errno set) to fail the call, 0 to let it through with *len possibly reduced.
 */
static int before_io(int fd, int is_write, size_t *len) {
    struct fdstate *s = socket_state(fd);
    if (!s) return 0;
    count.socket_calls++;
    uint32_t ready = is_write ? EPOLLOUT : EPOLLIN;
    if (s->dead_errno) {
        errno = is_write ? EPIPE : ECONNRESET;
        return -1;
    }
    int read_after_hangup = !is_write && (s->storm_left || cfg.eagain > 0 || cfg.eintr > 0) && hangup_pending(fd);
    if (read_after_hangup) s->storm_left = 0;
    if (s->storm_left) {
        s->storm_left--;
        count.eagain++;
        owe(s, ready);
        errno = EAGAIN;
        return -1;
    }
    if (chance(cfg.reset)) {
        count.resets++;
        s->dead_errno = 1;
        owe(s, EPOLLIN | EPOLLERR | EPOLLHUP);
        errno = is_write ? EPIPE : ECONNRESET;
        return -1;
    }
    if (!read_after_hangup && chance(cfg.eagain)) {
        s->storm_left = (unsigned char)(rng_next() % cfg.storm);
        count.eagain++;
        owe(s, ready);
        errno = EAGAIN;
        return -1;
    }
    if (!read_after_hangup && chance(cfg.eintr)) {
        count.eintr++;
        owe(s, ready);
        errno = EINTR;
        return -1;
    }
    if (*len > 1 && chance(is_write ? cfg.short_write : cfg.short_read)) {
        size_t n = small_len();
        if (n < *len) {
            /* A real short count means the buffer was full (or drained) at that moment, and an
               edge follows when that changes; a loop may rely on it, so deliver that edge. */
            *len = n;
            owe(s, ready);
            if (is_write) count.short_writes++;
            else count.short_reads++;
        }
    }
    return 0;
}

/* Truncate an iovec array to at most limit bytes, into out (which holds iovcnt entries). */
static int clip_iov(const struct iovec *iov, int iovcnt, size_t limit, struct iovec *out) {
    int n = 0;
    for (int i = 0; i < iovcnt && limit > 0; i++) {
        out[n] = iov[i];
        if (out[n].iov_len > limit) out[n].iov_len = limit;
        limit -= out[n].iov_len;
        n++;
    }
    return n;
}

static size_t iov_total(const struct iovec *iov, int iovcnt) {
    size_t t = 0;
    for (int i = 0; i < iovcnt; i++) t += iov[i].iov_len;
    return t;
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    RESOLVE(send);
    if (before_io(fd, 1, &len) < 0) return -1;
    return real.send(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen) {
    RESOLVE(sendto);
    if (before_io(fd, 1, &len) < 0) return -1;
    return real.sendto(fd, buf, len, flags, addr, alen);
}

ssize_t write(int fd, const void *buf, size_t len) {
    RESOLVE(write);
    if (before_io(fd, 1, &len) < 0) return -1;
    return real.write(fd, buf, len);
}

ssize_t recv(int fd, void *buf, size_t len, int flags) {
    RESOLVE(recv);
    if (before_io(fd, 0, &len) < 0) return -1;
    return real.recv(fd, buf, len, flags);
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr, socklen_t *alen) {
    RESOLVE(recvfrom);
    if (before_io(fd, 0, &len) < 0) return -1;
    return real.recvfrom(fd, buf, len, flags, addr, alen);
}

ssize_t read(int fd, void *buf, size_t len) {
    RESOLVE(read);
    if (before_io(fd, 0, &len) < 0) return -1;
    return real.read(fd, buf, len);
}

#define IOV_LOCAL 64

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    RESOLVE(writev);
    size_t total = iov_total(iov, iovcnt), len = total;
    if (before_io(fd, 1, &len) < 0) return -1;
    if (len == total || iovcnt > IOV_LOCAL) return real.writev(fd, iov, iovcnt);
    struct iovec clipped[IOV_LOCAL];
    return real.writev(fd, clipped, clip_iov(iov, iovcnt, len, clipped));
}

ssize_t readv(int fd, const struct iovec *iov, int iovcnt) {
    RESOLVE(readv);
    size_t total = iov_total(iov, iovcnt), len = total;
    if (before_io(fd, 0, &len) < 0) return -1;
    if (len == total || iovcnt > IOV_LOCAL) return real.readv(fd, iov, iovcnt);
    struct iovec clipped[IOV_LOCAL];
    return real.readv(fd, clipped, clip_iov(iov, iovcnt, len, clipped));
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    RESOLVE(sendmsg);
    size_t total = iov_total(msg->msg_iov, (int)msg->msg_iovlen), len = total;
    if (before_io(fd, 1, &len) < 0) return -1;
    if (len == total || msg->msg_iovlen > IOV_LOCAL) return real.sendmsg(fd, msg, flags);
    struct iovec clipped[IOV_LOCAL];
    struct msghdr m = *msg;
    m.msg_iov = clipped;
    m.msg_iovlen = (size_t)clip_iov(msg->msg_iov, (int)msg->msg_iovlen, len, clipped);
    return real.sendmsg(fd, &m, flags);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    RESOLVE(recvmsg);
    size_t total = iov_total(msg->msg_iov, (int)msg->msg_iovlen), len = total;
    if (before_io(fd, 0, &len) < 0) return -1;
    if (len == total || msg->msg_iovlen > IOV_LOCAL) return real.recvmsg(fd, msg, flags);
    struct iovec clipped[IOV_LOCAL];
    struct iovec *orig = msg->msg_iov;
    size_t orig_len = msg->msg_iovlen;
    msg->msg_iovlen = (size_t)clip_iov(orig, (int)orig_len, len, clipped);
    msg->msg_iov = clipped;
    ssize_t r = real.recvmsg(fd, msg, flags);
    msg->msg_iov = orig;
    msg->msg_iovlen = orig_len;
    return r;
}

static int fake_emfile(int fd) {
    struct fdstate *s = socket_state(fd);
    if (!s || !chance(cfg.emfile)) return 0;
    count.emfile++;
    owe(s, EPOLLIN);
    errno = EMFILE;
    return 1;
}

int accept(int fd, struct sockaddr *addr, socklen_t *alen) {
    RESOLVE(accept);
    if (fake_emfile(fd)) return -1;
    int r = real.accept(fd, addr, alen);
    if (r >= 0) forget_fd(r);
    return r;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *alen, int flags) {
    RESOLVE(accept4);
    if (fake_emfile(fd)) return -1;
    int r = real.accept4(fd, addr, alen, flags);
    if (r >= 0) forget_fd(r);
    return r;
}

int close(int fd) {
    RESOLVE(close);
    forget_fd(fd);
    return real.close(fd);
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    RESOLVE(epoll_ctl);
    int r = real.epoll_ctl(epfd, op, fd, ev);
    if (r == 0 && fd >= 0 && fd < MAX_FD) {
        if (op == EPOLL_CTL_DEL) fds[fd].epfd = -1; else if (ev) {
            fds[fd].epfd = epfd;
            fds[fd].reg_events = ev->events;
            fds[fd].reg_data = ev->data.u64;
        }
    }
    return r;
}

/* What the kernel would report for fd now (poll with zero timeout), as epoll bits. The owed
   event carries that real readiness, so e.g. an EPOLLRDHUP swallowed by a faked EAGAIN comes
   back with it. A faked reset adds the error bits the kernel does not know about. */
static uint32_t real_readiness(int fd, const struct fdstate *s) {
    struct pollfd p = {fd, POLLIN | POLLOUT | POLLRDHUP, 0};
    uint32_t ev = 0;
    if (poll(&p, 1, 0) == 1) {
        if (p.revents & POLLIN) ev |= EPOLLIN;
        if (p.revents & POLLOUT) ev |= EPOLLOUT;
        if (p.revents & POLLRDHUP) ev |= EPOLLRDHUP;
        if (p.revents & POLLERR) ev |= EPOLLERR;
        if (p.revents & POLLHUP) ev |= EPOLLHUP;
    }
    if (s->dead_errno) ev |= EPOLLIN | EPOLLERR | EPOLLHUP;
    return ev;
}

/* An owed event is only reported if the registration asks for it (a paused reader gets none:
   re-arming with epoll_ctl makes the kernel report real readiness anyway). */
static uint32_t deliverable(const struct fdstate *s, int epfd) {
    if (s->epfd != epfd) return 0;
    uint32_t asked = (s->reg_events & (EPOLLIN | EPOLLOUT | EPOLLRDHUP)) | EPOLLERR | EPOLLHUP;
    return real_readiness((int)(s - fds), s) & asked;
}

static int owed_for(int epfd) {
    for (int i = 0; i < n_owed; i++)
        if (deliverable(&fds[owed_list[i]], epfd)) return 1;
    return 0;
}

/* Merge owed events for epfd into the n events the kernel returned; returns the new count. */
static int add_owed(int epfd, struct epoll_event *events, int n, int maxevents) {
    int kept = 0;
    for (int i = 0; i < n_owed; i++) {
        int fd = owed_list[i];
        struct fdstate *s = &fds[fd];
        if (s->epfd != epfd && s->epfd >= 0) {
            owed_list[kept++] = fd; /* belongs to another epoll instance */
            continue;
        }
        uint32_t ev = deliverable(s, epfd);
        int placed = ev == 0;
        for (int j = 0; !placed && j < n; j++)
            if (events[j].data.u64 == s->reg_data) {
                events[j].events |= ev;
                placed = 1;
            }
        if (!placed && n < maxevents) {
            events[n].events = ev;
            events[n].data.u64 = s->reg_data;
            n++;
            placed = 1;
        }
        if (!placed) {
            owed_list[kept++] = fd;
            continue;
        }
        if (ev) count.injected_events++;
        s->owed = 0;
    }
    n_owed = kept;
    return n;
}

static int epoll_common(int epfd, struct epoll_event *events, int maxevents, int timeout, const sigset_t *mask,
                        int pwait) {
    if (cfg.enabled && chance(cfg.epoll_eintr)) {
        count.epoll_eintr++;
        errno = EINTR;
        return -1;
    }
    int max = maxevents;
    if (max > 1 && chance(cfg.epoll_shrink)) {
        count.epoll_shrink++;
        max = 1;
    }
    if (n_owed && owed_for(epfd)) timeout = 0;
    int n = pwait ? real.epoll_pwait(epfd, events, max, timeout, mask) : real.epoll_wait(epfd, events, max, timeout);
    if (n < 0) return n;
    return add_owed(epfd, events, n, max);
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout) {
    RESOLVE(epoll_wait);
    return epoll_common(epfd, events, maxevents, timeout, NULL, 0);
}

int epoll_pwait(int epfd, struct epoll_event *events, int maxevents, int timeout, const sigset_t *mask) {
    RESOLVE(epoll_pwait);
    return epoll_common(epfd, events, maxevents, timeout, mask, 1);
}
