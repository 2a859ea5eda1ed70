/* eploop from C, with exactly the application logic of the other anchor servers (c_epoll.c,
 * uv_server.c, event_server.c): echo, or HTTP framed on "\r\n\r\n" with canned responses. So the
 * benchmark compares event loops, not request parsers. (c-examples/http_server.c parses headers
 * and is measured separately as eploop-c-example.)
 *
 *   eploop_server PORT [--echo | --http] [--keep-alive] [--body FILE | --sendfile FILE] [-q]
 *
 * Large responses: header and body (held in memory) with one ep_sendv (one sendmsg; only what
 * the kernel does not take is copied), or the header (ep_send) and the file (ep_send_file).
 * (ep_send of the header then ep_send_nocopy of the body costs two sendto calls and two TCP
 * pushes per response: measured 1.3x the CPU and half the throughput; see bench/README.md.)
 */

#include <eploop.h>

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "http_common.h"

#define BATCH 64 /* responses per ep_send when many pipelined requests arrive at once */

static int quiet, http_mode, keep_alive;
static ep_loop *g_loop;
static ep_id g_listener;
static char batch_responses[BATCH * HTTP_RESPONSE_KEEPALIVE_LEN];
static struct http_large large;

/* http: an incomplete request carried between reads (NULL user pointer when there is none) */
struct partial {
    size_t len;
    char data[];
};

static const char *reason_name(ep_close_reason r) {
    static const char *names[] = {"?", "peer_eof", "peer_reset", "error", "local", "abort", "timeout", "loop_freed"};
    return (unsigned)r < sizeof names / sizeof *names ? names[r] : "?";
}

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
    (void)listener;
    (void)user;
    /* (TCP_NODELAY: eploop sets it on accepted connections, as uvloop does; libuv needs
     * uv_tcp_nodelay, the hand-written servers setsockopt) */
    ep_set_user(loop, conn, NULL);
    if (!quiet)
        printf("accept %" PRIu64 " ?\n", conn);
}

static void send_or_abort(ep_loop *loop, ep_id conn, const void *buf, size_t len) {
    int rc = ep_send(loop, conn, buf, len);
    if (rc == 1)
        rc = ep_pause_reading(loop, conn); /* resumed in on_writable */
    if (rc < 0)
        ep_abort(loop, conn);
}

static void on_http(ep_loop *loop, ep_id conn, const char *data, size_t len, struct partial *p) {
    const char *buf = data;
    size_t buf_len = len;
    if (p) {
        p = realloc(p, sizeof *p + p->len + len);
        memcpy(p->data + p->len, data, len);
        p->len += len;
        buf = p->data;
        buf_len = p->len;
    }
    size_t consumed = 0;
    size_t requests = http_count_requests(buf, buf_len, &consumed, keep_alive ? 0 : 1);
    if (requests && !keep_alive) {
        free(p);
        ep_set_user(loop, conn, NULL);
        send_or_abort(loop, conn, HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_CLOSE_LEN);
        ep_close(loop, conn);
        return;
    }
    while (large.on && requests > 0) {
        requests--;
        int rc;
        if (large.from_file) {
            rc = ep_send(loop, conn, large.header, large.header_len);
            if (rc >= 0)
                rc = ep_send_file(loop, conn, large.fd, 0, large.len);
        } else {
            struct iovec iov[2] = {{large.header, large.header_len}, {large.body, large.len}};
            rc = ep_sendv(loop, conn, iov, 2);
        }
        if (rc == 1)
            rc = ep_pause_reading(loop, conn); /* resumed in on_writable */
        if (rc < 0)
            ep_abort(loop, conn);
    }
    while (requests > 0) {
        size_t n = requests < BATCH ? requests : BATCH;
        send_or_abort(loop, conn, batch_responses, n * HTTP_RESPONSE_KEEPALIVE_LEN);
        requests -= n;
    }
    size_t rest = buf_len - consumed;
    if (rest > HTTP_MAX_REQUEST) {
        free(p);
        ep_set_user(loop, conn, NULL);
        ep_abort(loop, conn);
        return;
    }
    struct partial *keep = NULL;
    if (rest) {
        keep = malloc(sizeof *keep + rest);
        keep->len = rest;
        memcpy(keep->data, buf + consumed, rest);
    }
    free(p);
    ep_set_user(loop, conn, keep);
}

static void on_data(ep_loop *loop, ep_id conn, const uint8_t *data, size_t len, void *user) {
    if (http_mode)
        on_http(loop, conn, (const char *)data, len, user);
    else
        send_or_abort(loop, conn, data, len);
}

static void on_writable(ep_loop *loop, ep_id conn, void *user) {
    (void)user;
    ep_resume_reading(loop, conn);
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
    (void)loop;
    if (id == g_listener)
        return;
    free(user);
    if (!quiet)
        printf("close %" PRIu64 " %s %d\n", id, reason_name(reason), err);
}

static void on_signal(int sig) {
    (void)sig;
    ep_stop(g_loop);
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
    for (int i = 0; i < BATCH; i++)
        memcpy(batch_responses + i * HTTP_RESPONSE_KEEPALIVE_LEN, HTTP_RESPONSE_KEEPALIVE,
               HTTP_RESPONSE_KEEPALIVE_LEN);

    g_loop = ep_loop_new();
    const ep_callbacks cbs = {.on_accept = on_accept, .on_data = on_data, .on_writable = on_writable,
                              .on_close = on_close};
    int64_t listener = ep_listen(g_loop, "127.0.0.1", (uint16_t)port, 0, 0, &cbs, NULL);
    if (listener < 0) {
        fprintf(stderr, "listen: %s\n", ep_strerror((int)listener));
        return 1;
    }
    g_listener = (ep_id)listener;
    printf("listening %d\n", ep_local_port(g_loop, g_listener));

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int rc;
    do
        rc = ep_run(g_loop);
    while (rc == -EINTR);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    ep_loop_free(g_loop);
    return rc < 0 ? 1 : 0;
}
