/* libevent anchor server using bufferevents, the library's idiomatic connection API.
 *
 *   event_server PORT [--echo | --http] [--keep-alive] [-q]
 *
 * Reads and writes up to 64 KiB per call (the 2.1 default is 4 KiB). Echo moves the input evbuffer into the output evbuffer (no copy); HTTP frames requests with
 * evbuffer_search and appends the canned response by reference. bufferevent delivers a
 * write-done callback when the output drains, which closes HTTP/1.0 and half-closed echo
 * connections after their last byte has left.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "http_common.h"

static struct event_base *base;
static int quiet, http_mode, keep_alive;

/* Every live connection, so a signal can close them all (and log it). */
struct conn {
    struct bufferevent *bev;
    struct conn *prev, *next;
    int close_when_flushed;
};
static struct conn *live;

static void conn_free(struct conn *c, const char *reason, int err) {
    if (!quiet)
        printf("close %p %s %d\n", (void *)c, reason, err);
    if (c->prev)
        c->prev->next = c->next;
    else
        live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    bufferevent_free(c->bev);
    free(c);
}

static void on_write(struct bufferevent *bev, void *arg) {
    (void)bev;
    struct conn *c = arg;
    if (c->close_when_flushed)
        conn_free(c, http_mode ? "local" : "peer_eof", 0);
}

static void on_read(struct bufferevent *bev, void *arg) {
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer *out = bufferevent_get_output(bev);
    if (!http_mode) {
        evbuffer_add_buffer(out, in);
        return;
    }
    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0) {
            if (evbuffer_get_length(in) > HTTP_MAX_REQUEST)
                conn_free(c, "error", EMSGSIZE);
            return;
        }
        evbuffer_drain(in, (size_t)end.pos + 4);
        if (!keep_alive) {
            evbuffer_add_reference(out, HTTP_RESPONSE_CLOSE, HTTP_RESPONSE_CLOSE_LEN, NULL, NULL);
            c->close_when_flushed = 1;
            bufferevent_disable(bev, EV_READ);
            return;
        }
        evbuffer_add_reference(out, HTTP_RESPONSE_KEEPALIVE, HTTP_RESPONSE_KEEPALIVE_LEN, NULL,
                               NULL);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
    struct conn *c = arg;
    if (what & BEV_EVENT_EOF) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
            c->close_when_flushed = 1;
            bufferevent_disable(bev, EV_READ);
            return;
        }
        conn_free(c, "peer_eof", 0);
    } else if (what & BEV_EVENT_ERROR) {
        int err = EVUTIL_SOCKET_ERROR();
        conn_free(c, err == ECONNRESET || err == EPIPE ? "peer_reset" : "error", err);
    }
}

static void on_accept(struct evconnlistener *listener, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg) {
    (void)listener;
    (void)socklen;
    (void)arg;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = calloc(1, sizeof *c);
    c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->next = live;
    if (live)
        live->prev = c;
    live = c;
    /* libevent 2.1 reads and writes at most 4 KiB per call unless told otherwise. */
    bufferevent_set_max_single_read(c->bev, 64 * 1024);
    bufferevent_set_max_single_write(c->bev, 64 * 1024);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_enable(c->bev, EV_READ);
    if (!quiet) {
        struct sockaddr_in *peer = (struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof ip);
        printf("accept %p %s:%u\n", (void *)c, ip, ntohs(peer->sin_port));
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)sig;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
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
        else {
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

    base = event_base_new();
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *listener =
        evconnlistener_new_bind(base, on_accept, NULL, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE,
                                SOMAXCONN, (struct sockaddr *)&addr, sizeof addr);
    if (!listener) {
        perror("listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(evconnlistener_get_fd(listener), (struct sockaddr *)&addr, &alen);
    printf("listening %u\n", ntohs(addr.sin_port));

    struct event *sigint_ev = evsignal_new(base, SIGINT, on_signal, NULL);
    struct event *sigterm_ev = evsignal_new(base, SIGTERM, on_signal, NULL);
    event_add(sigint_ev, NULL);
    event_add(sigterm_ev, NULL);

    event_base_dispatch(base);
    while (live)
        conn_free(live, "loop_freed", 0);
    evconnlistener_free(listener);
    event_free(sigint_ev);
    event_free(sigterm_ev);
    event_base_free(base);
    return 0;
}
