/*
 * cmd_server: a scriptable eploop test server (in the spirit of libuv's test/echo-server.c).
 *
 * The peer drives it with newline-terminated commands sent in-band (see usage() and
 * tests/reliability/README.md). Every callback appends one line to the event log on stdout
 * (line-buffered): the event-log lines (listening/accept/close) plus
 *
 *   listener <id>                 the listening registration
 *   data <id> <n>                 on_data with n bytes (n = 0: EOF under --half-close)
 *   writable <id>                 on_writable
 *   queued <id> <total> <rc>      after WRITE/STREAM: bytes handed to ep_send so far, last rc
 *   cmd <id> <word> <rc>          a command that called the library, with its return code
 *   register <id> <fd>            a socketpair end registered by ABORTOTHERS REUSE
 *   closing <id> <fd>             fd of a connection being closed/aborted by *OTHERS
 *   stale <id> <ok|bad> ...       STALE: results of calls with an id after its on_close
 *   stats live=<n> ...            STATS
 *   nested <callback> <id> <depth>   a callback ran while another was running (must never happen)
 *   unknown <callback> <id>       a callback for an id that is not live (must never happen)
 *   baduser <callback> <id>       the user pointer does not belong to the id (must never happen)
 *   after_free <callback> <id>    a callback after ep_loop_free returned (must never happen)
 *   freed                         ep_loop_free returned
 *
 * SIGPIPE is deliberately left at its default: eploop must never raise it.
 * SIGINT/SIGTERM call ep_stop (async-signal-safe); then every connection is closed via
 * ep_loop_free (logged as loop_freed) and the process exits 0.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "eploop.h"

enum mode { MODE_CMD, MODE_SINK, MODE_ECHO };
enum action { ACT_NONE, ACT_CLOSE, ACT_ABORT, ACT_CLOSE_OTHERS, ACT_ABORT_OTHERS, ACT_SELF, ACT_WRITE };

#define LINE_MAX_LEN 256
#define CHUNK (64 * 1024)
#define STALE_RING 16
#define BUCKETS 65536
#define MAX_PAIRS 256

struct conn {
    ep_id id;
    enum mode mode;
    char line[LINE_MAX_LEN];
    size_t line_len;
    int discarding;       /* current line too long (or a '#' comment): skip to '\n' */
    int done;             /* this side called CLOSE/ABORT: ignore further input */
    int paused;
    int echo_blocked;     /* echo paused reading because ep_send returned 1 */
    uint64_t out_off;     /* pattern offset of the next byte we queue */
    uint64_t stream_left; /* STREAM bytes still to queue, flow-controlled */
    enum action on_writable;
    enum action on_close;
    struct conn *next_live, *prev_live;
    struct conn *next_hash;
};

static ep_loop *loop;
static ep_id listener_id;
static int depth;
static int loop_freed;
static int quiet;
static enum mode initial_mode = MODE_CMD;
static enum action accept_action = ACT_NONE;
static uint64_t accept_write_bytes;
static struct conn *live_head;
static struct conn *buckets[BUCKETS];
static unsigned long n_live, n_accepted, n_closed;
static ep_id stale_ring[STALE_RING];
static unsigned stale_count;
static int pair_fds[MAX_PAIRS];
static int n_pairs;
static uint8_t chunk_buf[CHUNK];
static uint32_t reg_flags;

static void on_accept(ep_loop *lp, ep_id listener, ep_id id, void *user);
static void on_data(ep_loop *lp, ep_id id, const uint8_t *data, size_t len, void *user);
static void on_writable(ep_loop *lp, ep_id id, void *user);
static void on_close(ep_loop *lp, ep_id id, ep_close_reason reason, int err, void *user);
static const ep_callbacks server_callbacks = {on_accept, on_data, on_writable, on_close};

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* Per-connection lines are silenced by -q; anomaly lines never are. */
#define LOGC(...) do { if (!quiet) logf_(__VA_ARGS__); } while (0)

static uint8_t pattern_byte(uint64_t k) { return (uint8_t)(k * 7 + (k / 251) * 11 + 3); }

static void fill_pattern(uint8_t *buf, uint64_t off, size_t n) {
    for (size_t i = 0; i < n; i++) buf[i] = pattern_byte(off + i);
}

static size_t bucket_of(ep_id id) { return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 48) % BUCKETS; }

static struct conn *lookup(ep_id id) {
    for (struct conn *c = buckets[bucket_of(id)]; c; c = c->next_hash)
        if (c->id == id) return c;
    return NULL;
}

static void insert(struct conn *c) {
    size_t b = bucket_of(c->id);
    c->next_hash = buckets[b];
    buckets[b] = c;
    c->next_live = live_head;
    c->prev_live = NULL;
    if (live_head) live_head->prev_live = c;
    live_head = c;
    n_live++;
}

static void remove_conn(struct conn *c) {
    struct conn **pp = &buckets[bucket_of(c->id)];
    while (*pp != c) pp = &(*pp)->next_hash;
    *pp = c->next_hash;
    if (c->prev_live) c->prev_live->next_live = c->next_live;
    else live_head = c->next_live;
    if (c->next_live) c->next_live->prev_live = c->prev_live;
    n_live--;
}

static const char *reason_name(ep_close_reason r) {
    switch (r) {
    case EP_CLOSE_PEER_EOF: return "peer_eof";
    case EP_CLOSE_PEER_RESET: return "peer_reset";
    case EP_CLOSE_ERROR: return "error";
    case EP_CLOSE_LOCAL: return "local";
    case EP_CLOSE_ABORT: return "abort";
    case EP_CLOSE_TIMEOUT: return "timeout";
    case EP_CLOSE_LOOP_FREED: return "loop_freed";
    }
    return "unknown_reason";
}

/* Entry check shared by every callback: nesting depth, use after free, id liveness. */
static struct conn *enter(const char *cb, ep_id id, void *user, int is_listener) {
    depth++;
    if (depth > 1) logf_("nested %s %" PRIu64 " %d", cb, id, depth);
    if (loop_freed) logf_("after_free %s %" PRIu64, cb, id);
    if (is_listener) {
        if (id != listener_id) logf_("unknown %s %" PRIu64, cb, id);
        return NULL;
    }
    struct conn *c = lookup(id);
    if (!c) logf_("unknown %s %" PRIu64, cb, id);
    else if (user != c) logf_("baduser %s %" PRIu64, cb, id);
    return c;
}

static void leave(void) { depth--; }

static void queue_pattern(struct conn *c, uint64_t n) {
    int rc = 0;
    while (n > 0) {
        size_t len = n < CHUNK ? (size_t)n : CHUNK;
        fill_pattern(chunk_buf, c->out_off, len);
        rc = ep_send(loop, c->id, chunk_buf, len);
        if (rc < 0) break;
        c->out_off += len;
        n -= len;
    }
    LOGC("queued %" PRIu64 " %" PRIu64 " %d", c->id, c->out_off, rc);
}

/* Flow-controlled writer: queue until ep_send says "above high water", resume on_writable. */
static void pump_stream(struct conn *c) {
    int rc = 0;
    while (c->stream_left > 0) {
        size_t len = c->stream_left < CHUNK ? (size_t)c->stream_left : CHUNK;
        fill_pattern(chunk_buf, c->out_off, len);
        rc = ep_send(loop, c->id, chunk_buf, len);
        if (rc < 0) {
            c->stream_left = 0;
            break;
        }
        c->out_off += len;
        c->stream_left -= len;
        if (rc == 1) break;
    }
    LOGC("queued %" PRIu64 " %" PRIu64 " %d", c->id, c->out_off, rc);
}

static void close_others(struct conn *self, int abort_them, int reuse) {
    int closed = 0;
    for (struct conn *o = live_head; o; o = o->next_live) {
        if (o == self || o->done) continue;
        LOGC("closing %" PRIu64 " %d", o->id, ep_fd(loop, o->id));
        int rc = abort_them ? ep_abort(loop, o->id) : ep_close(loop, o->id);
        LOGC("cmd %" PRIu64 " %s %d", o->id, abort_them ? "abort_other" : "close_other", rc);
        o->done = 1;
        closed++;
    }
    /* New fds now may take the numbers just released; events already fetched for the old
       ones must not reach these registrations. */
    for (int i = 0; reuse && i < closed && n_pairs + 2 <= MAX_PAIRS; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) break;
        struct conn *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->mode = MODE_SINK;
        int64_t id = ep_register(loop, sv[0], reg_flags & EP_EDGE, &server_callbacks, c);
        if (id <= 0) {
            logf_("register_failed %" PRId64, id);
            free(c);
            close(sv[0]);
            close(sv[1]);
            break;
        }
        c->id = (ep_id)id;
        insert(c);
        pair_fds[n_pairs++] = sv[1];
        LOGC("register %" PRIu64 " %d", c->id, sv[0]);
    }
}

static void check_stale(void) {
    unsigned n = stale_count < STALE_RING ? stale_count : STALE_RING;
    for (unsigned i = 0; i < n; i++) {
        ep_id id = stale_ring[i];
        uint8_t b = 0;
        int s = ep_send(loop, id, &b, 1);
        int cl = ep_close(loop, id);
        int ab = ep_abort(loop, id);
        int sh = ep_shutdown(loop, id);
        int fd = ep_fd(loop, id);
        int pr = ep_pause_reading(loop, id);
        int su = ep_set_user(loop, id, &b);
        void *u = ep_get_user(loop, id);
        int ok = s == EP_ESTALE && cl == EP_ESTALE && ab == EP_ESTALE && sh == EP_ESTALE &&
                 fd == EP_ESTALE && pr == EP_ESTALE && su == EP_ESTALE && u == NULL;
        logf_("stale %" PRIu64 " %s send=%d close=%d abort=%d shutdown=%d fd=%d pause=%d set_user=%d", id,
              ok ? "ok" : "bad", s, cl, ab, sh, fd, pr, su);
    }
}

static enum action parse_action(const char *w) {
    if (!strcmp(w, "close")) return ACT_CLOSE;
    if (!strcmp(w, "abort")) return ACT_ABORT;
    if (!strcmp(w, "closeothers")) return ACT_CLOSE_OTHERS;
    if (!strcmp(w, "abortothers")) return ACT_ABORT_OTHERS;
    if (!strcmp(w, "self")) return ACT_SELF;
    if (!strcmp(w, "write")) return ACT_WRITE;
    return ACT_NONE;
}

static void run_command(struct conn *c, char *line) {
    char word[32] = "", arg[32] = "", arg2[32] = "";
    if (sscanf(line, "%31s %31s %31s", word, arg, arg2) < 1) return;
    unsigned long long n = strtoull(arg, NULL, 10);
    ep_id id = c->id;
    if (!strcmp(word, "ECHO")) c->mode = MODE_ECHO;
    else if (!strcmp(word, "SINK")) c->mode = MODE_SINK;
    else if (!strcmp(word, "WRITE")) queue_pattern(c, n);
    else if (!strcmp(word, "STREAM")) {
        c->stream_left += n;
        pump_stream(c);
    } else if (!strcmp(word, "CLOSE")) {
        LOGC("cmd %" PRIu64 " CLOSE %d", id, ep_close(loop, id));
        c->done = 1;
    } else if (!strcmp(word, "ABORT")) {
        LOGC("cmd %" PRIu64 " ABORT %d", id, ep_abort(loop, id));
        c->done = 1;
    } else if (!strcmp(word, "SHUTWR")) {
        LOGC("cmd %" PRIu64 " SHUTWR %d", id, ep_shutdown(loop, id));
    } else if (!strcmp(word, "CLOSEOTHERS")) {
        close_others(c, 0, !strcmp(arg, "REUSE"));
    } else if (!strcmp(word, "ABORTOTHERS")) {
        close_others(c, 1, !strcmp(arg, "REUSE"));
    } else if (!strcmp(word, "PAUSE")) {
        c->paused = 1;
        LOGC("cmd %" PRIu64 " PAUSE %d", id, ep_pause_reading(loop, id));
    } else if (!strcmp(word, "RESUMEALL")) {
        for (struct conn *o = live_head; o; o = o->next_live)
            if (o->paused) {
                o->paused = 0;
                LOGC("cmd %" PRIu64 " RESUME %d", o->id, ep_resume_reading(loop, o->id));
            }
    } else if (!strcmp(word, "PAUSEACCEPT")) {
        LOGC("cmd %" PRIu64 " PAUSEACCEPT %d", id, ep_pause_reading(loop, listener_id));
    } else if (!strcmp(word, "RESUMEACCEPT")) {
        LOGC("cmd %" PRIu64 " RESUMEACCEPT %d", id, ep_resume_reading(loop, listener_id));
    } else if (!strcmp(word, "SLEEP")) {
        struct timespec ts = {(time_t)(n / 1000), (long)(n % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    } else if (!strcmp(word, "STOP")) {
        LOGC("cmd %" PRIu64 " STOP %d", id, ep_stop(loop));
    } else if (!strcmp(word, "ONACCEPT")) {
        accept_action = parse_action(arg);
        accept_write_bytes = strtoull(arg2, NULL, 10);
        LOGC("cmd %" PRIu64 " ONACCEPT %d", id, (int)accept_action);
    } else if (!strcmp(word, "ONWRITABLE")) {
        c->on_writable = parse_action(arg);
        LOGC("cmd %" PRIu64 " ONWRITABLE %d", id, (int)c->on_writable);
    } else if (!strcmp(word, "ONCLOSE")) {
        c->on_close = parse_action(arg);
        LOGC("cmd %" PRIu64 " ONCLOSE %d", id, (int)c->on_close);
    } else if (!strcmp(word, "WATERMARKS")) {
        LOGC("cmd %" PRIu64 " WATERMARKS %d", id,
             ep_set_watermarks(loop, id, (size_t)n, (size_t)strtoull(arg2, NULL, 10)));
    } else if (!strcmp(word, "RCVBUF")) {
        int size = (int)n, fd = ep_fd(loop, id);
        LOGC("cmd %" PRIu64 " RCVBUF %d", id, fd < 0 ? fd : setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size));
    } else if (!strcmp(word, "STALE")) {
        check_stale();
    } else if (!strcmp(word, "STATS")) {
        logf_("stats live=%lu accepted=%lu closed=%lu", n_live, n_accepted, n_closed);
    } else {
        LOGC("badcmd %" PRIu64, id);
    }
}

static void echo_bytes(struct conn *c, const uint8_t *data, size_t len) {
    int rc = ep_send(loop, c->id, data, len);
    if (rc == 1 && !c->echo_blocked) {
        c->echo_blocked = 1;
        ep_pause_reading(loop, c->id);
    } else if (rc < 0) {
        LOGC("cmd %" PRIu64 " ECHO %d", c->id, rc);
    }
}

static void on_data(ep_loop *lp, ep_id id, const uint8_t *data, size_t len, void *user) {
    (void)lp;
    struct conn *c = enter("data", id, user, 0);
    LOGC("data %" PRIu64 " %zu", id, len);
    if (c && data == NULL && len == 0) {
        /* --half-close: peer EOF; answer with a graceful close after the queued output. */
        if (!c->done) LOGC("cmd %" PRIu64 " CLOSE %d", id, ep_close(loop, id));
        c->done = 1;
    }
    size_t i = 0;
    while (c && !c->done && i < len) {
        if (c->mode == MODE_SINK) break;
        if (c->mode == MODE_ECHO) {
            echo_bytes(c, data + i, len - i);
            break;
        }
        uint8_t ch = data[i++];
        if (ch == '\n') {
            if (!c->discarding) {
                c->line[c->line_len] = '\0';
                run_command(c, c->line);
            }
            c->line_len = 0;
            c->discarding = 0;
        } else if (!c->discarding) {
            if ((c->line_len == 0 && ch == '#') || c->line_len + 1 >= LINE_MAX_LEN) c->discarding = 1;
            else c->line[c->line_len++] = (char)ch;
        }
    }
    leave();
}

static void on_writable(ep_loop *lp, ep_id id, void *user) {
    (void)lp;
    struct conn *c = enter("writable", id, user, 0);
    LOGC("writable %" PRIu64, id);
    if (c && !c->done) {
        if (c->on_writable == ACT_CLOSE || c->on_writable == ACT_ABORT) {
            int rc = c->on_writable == ACT_CLOSE ? ep_close(loop, id) : ep_abort(loop, id);
            LOGC("cmd %" PRIu64 " %s %d", id, c->on_writable == ACT_CLOSE ? "CLOSE" : "ABORT", rc);
            LOGC("queued %" PRIu64 " %" PRIu64 " %d", id, c->out_off, rc);
            c->done = 1;
        } else {
            if (c->stream_left) pump_stream(c);
            if (c->echo_blocked) {
                c->echo_blocked = 0;
                ep_resume_reading(loop, id);
            }
        }
    }
    leave();
}

static void on_close(ep_loop *lp, ep_id id, ep_close_reason reason, int err, void *user) {
    (void)lp;
    if (id == listener_id) {
        enter("close", id, user, 1);
        logf_("close %" PRIu64 " %s %d", id, reason_name(reason), err);
        listener_id = 0;
        leave();
        return;
    }
    struct conn *c = enter("close", id, user, 0);
    if (!quiet || !c) logf_("close %" PRIu64 " %s %d", id, reason_name(reason), err);
    if (c) {
        remove_conn(c);
        n_closed++;
        stale_ring[stale_count++ % STALE_RING] = id;
        if (c->on_close == ACT_CLOSE_OTHERS || c->on_close == ACT_ABORT_OTHERS)
            close_others(c, c->on_close == ACT_ABORT_OTHERS, 0);
        else if (c->on_close == ACT_SELF) {
            uint8_t b = 'x';
            LOGC("cmd %" PRIu64 " self send=%d close=%d abort=%d", id, ep_send(loop, id, &b, 1),
                 ep_close(loop, id), ep_abort(loop, id));
        }
        free(c);
    }
    leave();
}

static void on_accept(ep_loop *lp, ep_id listener, ep_id id, void *user) {
    (void)lp;
    enter("accept", listener, user, 1);
    struct conn *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->id = id;
    c->mode = initial_mode;
    insert(c);
    n_accepted++;
    int rc = ep_set_user(loop, id, c);
    if (rc != 0) logf_("set_user_failed %" PRIu64 " %d", id, rc);
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = ep_fd(loop, id);
    if (fd >= 0 && getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        }
    }
    LOGC("accept %" PRIu64 " %s:%u", id, host, port);
    switch (accept_action) {
    case ACT_WRITE:
        queue_pattern(c, accept_write_bytes);
        LOGC("cmd %" PRIu64 " CLOSE %d", id, ep_close(loop, id));
        c->done = 1;
        break;
    case ACT_CLOSE:
        LOGC("cmd %" PRIu64 " CLOSE %d", id, ep_close(loop, id));
        c->done = 1;
        break;
    case ACT_ABORT:
        LOGC("cmd %" PRIu64 " ABORT %d", id, ep_abort(loop, id));
        c->done = 1;
        break;
    default:
        break;
    }
    leave();
}

static void on_signal(int sig) {
    (void)sig;
    ep_stop(loop);
}

static void usage(void) {
    fprintf(stderr,
            "usage: cmd_server <port|0> [--edge] [--half-close] [--echo] [--host ADDR] [--linger MS] [--backlog N] [-q]\n"
            "  --echo: connections start in ECHO mode (a plain echo server, for conform.py)\n"
            "commands (one per line, from the peer): ECHO | SINK | WRITE n | STREAM n | CLOSE | ABORT |\n"
            "  SHUTWR | CLOSEOTHERS [REUSE] | ABORTOTHERS [REUSE] | PAUSE | RESUMEALL | PAUSEACCEPT |\n"
            "  RESUMEACCEPT | SLEEP ms | STOP | ONACCEPT none|close|abort|write n |\n"
            "  ONWRITABLE none|close|abort | ONCLOSE none|closeothers|abortothers|self |\n"
            "  WATERMARKS low high | RCVBUF bytes | STALE | STATS | #comment\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *host = "127.0.0.1";
    uint32_t flags = 0;
    long linger_ms = -1, backlog = 0;
    unsigned long port = strtoul(argv[1], NULL, 10);
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--edge")) flags |= EP_EDGE;
        else if (!strcmp(argv[i], "--half-close")) {
            flags |= EP_HALF_CLOSE;
        } else if (!strcmp(argv[i], "-q")) quiet = 1;
        else if (!strcmp(argv[i], "--echo")) initial_mode = MODE_ECHO;
        else if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--linger") && i + 1 < argc) linger_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--backlog") && i + 1 < argc) backlog = atol(argv[++i]);
        else usage();
    }
    reg_flags = flags;
    loop = ep_loop_new();
    if (!loop) {
        fprintf(stderr, "ep_loop_new failed\n");
        return 1;
    }
    if (linger_ms >= 0) ep_set_linger(loop, (uint32_t)linger_ms);
    int64_t lid = ep_listen(loop, host, (uint16_t)port, (int)backlog, flags, &server_callbacks, NULL);
    if (lid <= 0) {
        fprintf(stderr, "ep_listen: %s\n", ep_strerror((int)lid));
        return 1;
    }
    listener_id = (ep_id)lid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    logf_("listener %" PRIu64, listener_id);
    logf_("listening %d", ep_local_port(loop, listener_id));
    int rc;
    do rc = ep_run(loop);
    while (rc == -EINTR);
    logf_("stopping %d", rc);
    ep_loop_free(loop);
    loop_freed = 1;
    logf_("freed");
    for (int i = 0; i < n_pairs; i++) close(pair_fds[i]);
    if (rc < 0) {
        fprintf(stderr, "ep_run: %s\n", ep_strerror(rc));
        return 1;
    }
    return 0;
}
