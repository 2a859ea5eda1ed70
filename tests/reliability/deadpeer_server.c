/*
 * deadpeer_server — a server written as a user would from the README, for the dead-peer tests
 * (test_rel_deadpeer.py): it sets one of eploop's dead-peer detectors on every connection it
 * accepts, and either echoes or keeps sending, so a peer that vanishes can be seen going away.
 *
 * usage: deadpeer_server PORT [--host ADDR] [--idle-timeout MS] [--keepalive IDLE,INTVL,CNT]
 *                             [--user-timeout MS] [--stream] [--tick MS]
 *   --stream     after accepting, send pattern bytes without end, flow-controlled: send until
 *                ep_send() says "stop producing" (1), go on from on_writable
 *   --tick MS    every MS, send 4 KiB to every open connection whatever ep_send() returns
 *                (a heartbeat that ignores flow control); otherwise the server echoes
 *
 * stdout, line-buffered: the event log of the README (section "A complete echo server in C") (listening/accept/close) plus
 *   set <id> <what> <rc>        the return code of each ep_set_* call on the connection
 *   sendrc <id> <rc>            a negative ep_send() return (never expected: one channel)
 * SIGINT/SIGTERM stop the loop; ep_loop_free() then closes what is open (loop_freed); exit 0.
 */
#include <eploop.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_CONNS 64

static ep_loop *g_loop;
static ep_id g_listener;
static long g_idle_ms = -1, g_user_ms = -1, g_ka[3] = {-1, -1, -1};
static int g_stream;
static ep_id g_open[MAX_CONNS];
static uint8_t g_chunk[64 * 1024];

static void note_send(ep_id conn, int rc) {
  if (rc < 0) printf("sendrc %" PRIu64 " %d\n", conn, rc);
}

static void stream_more(ep_loop *loop, ep_id conn) {
  for (;;) {
    int rc = ep_send(loop, conn, g_chunk, sizeof g_chunk);
    note_send(conn, rc);
    if (rc != 0) return; /* 1: above high water (or the peer is gone): wait for on_writable */
  }
}

static void on_accept(ep_loop *loop, ep_id listener, ep_id conn, void *user) {
  (void)listener;
  (void)user;
  char ip[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  struct sockaddr_storage sa;
  socklen_t len = sizeof sa;
  if (getpeername(ep_fd(loop, conn), (struct sockaddr *)&sa, &len) == 0) {
    if (sa.ss_family == AF_INET) {
      struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
      inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
      port = ntohs(s4->sin_port);
    } else {
      struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa;
      inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
      port = ntohs(s6->sin6_port);
    }
  }
  printf("accept %" PRIu64 " %s:%u\n", conn, ip, port);
  if (g_idle_ms >= 0)
    printf("set %" PRIu64 " idle_timeout %d\n", conn, ep_set_idle_timeout(loop, conn, (uint32_t)g_idle_ms));
  if (g_ka[0] >= 0)
    printf("set %" PRIu64 " keepalive %d\n", conn,
           ep_set_keepalive(loop, conn, (int)g_ka[0], (int)g_ka[1], (int)g_ka[2]));
  if (g_user_ms >= 0)
    printf("set %" PRIu64 " user_timeout %d\n", conn, ep_set_user_timeout(loop, conn, (uint32_t)g_user_ms));
  for (int i = 0; i < MAX_CONNS; i++) {
    if (g_open[i] == 0) {
      g_open[i] = conn;
      break;
    }
  }
  if (g_stream) stream_more(loop, conn);
}

static void on_data(ep_loop *loop, ep_id conn, const uint8_t *data, size_t len, void *user) {
  (void)user;
  if (!g_stream) note_send(conn, ep_send(loop, conn, data, len)); /* echo */
}

static void on_writable(ep_loop *loop, ep_id conn, void *user) {
  (void)user;
  if (g_stream) stream_more(loop, conn);
}

static void on_close(ep_loop *loop, ep_id id, ep_close_reason reason, int err, void *user) {
  (void)loop;
  (void)user;
  if (id == g_listener) return;
  for (int i = 0; i < MAX_CONNS; i++)
    if (g_open[i] == id) g_open[i] = 0;
  printf("close %" PRIu64 " %s %d\n", id, ep_close_reason_name((int)reason), err);
}

static void on_tick(ep_loop *loop, ep_id timer, void *user) {
  (void)timer;
  (void)user;
  for (int i = 0; i < MAX_CONNS; i++)
    if (g_open[i]) note_send(g_open[i], ep_send(loop, g_open[i], g_chunk, 4096));
}

static void on_signal(int signo) {
  (void)signo;
  ep_stop(g_loop);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  long tick_ms = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: deadpeer_server PORT [options]\n");
    return 2;
  }
  int port = atoi(argv[1]);
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--stream")) {
      g_stream = 1;
    } else if (v && !strcmp(a, "--host")) {
      host = v, i++;
    } else if (v && !strcmp(a, "--idle-timeout")) {
      g_idle_ms = atol(v), i++;
    } else if (v && !strcmp(a, "--user-timeout")) {
      g_user_ms = atol(v), i++;
    } else if (v && !strcmp(a, "--tick")) {
      tick_ms = atol(v), i++;
    } else if (v && !strcmp(a, "--keepalive") && sscanf(v, "%ld,%ld,%ld", &g_ka[0], &g_ka[1], &g_ka[2]) == 3) {
      i++;
    } else {
      fprintf(stderr, "deadpeer_server: bad argument %s\n", a);
      return 2;
    }
  }
  for (size_t k = 0; k < sizeof g_chunk; k++) g_chunk[k] = (uint8_t)(k * 7 + 3);
  setvbuf(stdout, NULL, _IOLBF, 0);

  g_loop = ep_loop_new();
  static const ep_callbacks cbs = {on_accept, on_data, on_writable, on_close};
  int64_t lid = ep_listen(g_loop, host, (uint16_t)port, 0, 0, &cbs, NULL);
  if (lid < 0) {
    fprintf(stderr, "deadpeer_server: listen on %s: %s\n", host, ep_strerror((int)lid));
    return 1;
  }
  g_listener = (ep_id)lid;
  if (tick_ms > 0) ep_timer_start(g_loop, (uint64_t)tick_ms, (uint64_t)tick_ms, on_tick, NULL);
  printf("listening %d\n", ep_local_port(g_loop, g_listener));

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  ep_run(g_loop);
  ep_loop_free(g_loop);
  return 0;
}
